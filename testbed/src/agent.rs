//! The node agent (`policy-agent run`) as a child process inside the node
//! namespace, started before any CNI ADD and stopped with SIGTERM.

use std::path::{Path, PathBuf};
use std::time::Duration;

use agent_api::{Request, Response};

use crate::daemon::{Daemon, DaemonSpec};
use crate::error::TestbedError;

pub use crate::daemon::log_tail;

/// How long the agent may take to answer `Status`.
const READY_TIMEOUT: Duration = Duration::from_secs(30);

/// Where the agent is told to keep its state.
#[derive(Clone, Debug)]
pub struct AgentPaths {
    /// `policy-agent` binary.
    pub binary: PathBuf,
    /// Its unix socket for the CNI plugin.
    pub socket: PathBuf,
    /// Its bpffs folder (removed at cleanup).
    pub bpffs_dir: PathBuf,
    /// Its stdout+stderr.
    pub log: PathBuf,
}

/// Where the agent reads the cluster from.
#[derive(Clone, Debug)]
pub enum AgentSource {
    /// `--manifests` files (re-read on change).
    Manifests(Vec<PathBuf>),
    /// `--kube` with this kubeconfig (`KUBECONFIG`), as node `node_name`.
    Kube {
        /// The kubeconfig (the agent's ServiceAccount token).
        kubeconfig: PathBuf,
        /// The node it runs on (`NODE_NAME`).
        node_name: String,
    },
}

/// A running agent.
#[derive(Debug)]
pub struct Agent {
    daemon: Daemon,
    spec: DaemonSpec,
    paths: AgentPaths,
}

impl Agent {
    /// Starts the agent in `node_netns` (told the node's addresses, one
    /// `--node-addr` each, then `extra_args`) and waits until it answers `Status` with `Ok`;
    /// on failure the child is stopped and the error carries the log's tail.
    pub fn start(
        paths: AgentPaths,
        node_netns: &str,
        source: &AgentSource,
        node_addrs: &[String],
        extra_args: &[String],
    ) -> Result<Agent, TestbedError> {
        if !paths.binary.is_file() {
            return Err(TestbedError::MissingBinary {
                what: "policy-agent".into(),
                path: paths.binary.clone(),
            });
        }
        let mut spec =
            DaemonSpec::new("policy-agent", &paths.binary, node_netns, &paths.log).args(["run"]);
        match source {
            AgentSource::Manifests(manifests) => {
                for m in manifests {
                    // Absolute, so the agent does not depend on our working folder.
                    let m = std::fs::canonicalize(m).unwrap_or_else(|_| m.clone());
                    spec = spec.args([PathBuf::from("--manifests"), m]);
                }
            }
            AgentSource::Kube {
                kubeconfig,
                node_name,
            } => {
                spec = spec
                    .args(["--kube"])
                    .env("KUBECONFIG", kubeconfig)
                    .env("NODE_NAME", node_name);
            }
        }
        spec = spec
            .args([Path::new("--cni-socket"), &paths.socket])
            .args([Path::new("--bpffs-dir"), &paths.bpffs_dir]);
        for addr in node_addrs {
            spec = spec.args(["--node-addr", addr]);
        }
        spec = spec.args(extra_args);
        let daemon = Daemon::start(spec.clone())?;
        let mut agent = Agent {
            daemon,
            spec,
            paths,
        };
        if let Err(e) = agent.wait_ready(true) {
            agent.stop();
            return Err(e);
        }
        Ok(agent)
    }

    /// Waits until the agent answers `Status` with `Ok`, or (`ok_only`
    /// false) answers it at all.
    fn wait_ready(&mut self, ok_only: bool) -> Result<(), TestbedError> {
        let socket = self.paths.socket.clone();
        let ready = || {
            if !socket.exists() {
                return Err("socket not created yet".to_string());
            }
            match agent_api::call(&socket, &Request::Status, Duration::from_secs(1)) {
                Ok(Response::Ok) => Ok(true),
                Ok(Response::Error { .. }) if !ok_only => Ok(true),
                Ok(Response::Error { message }) => Err(format!("Status answered: {message}")),
                #[allow(unreachable_patterns)]
                Ok(other) => Err(format!("Status answered {other:?}")),
                Err(e) => Err(e.to_string()),
            }
        };
        self.daemon
            .wait_until(READY_TIMEOUT, ready)
            .map_err(|e| match e {
                TestbedError::Daemon {
                    reason,
                    log,
                    log_tail,
                    ..
                } => TestbedError::Agent {
                    reason,
                    log,
                    log_tail,
                },
                other => other,
            })
    }

    /// Stops the agent (see [`Self::stop`]) and starts it again as it was
    /// started, waiting until it answers.
    pub fn restart(&mut self) -> Result<(), TestbedError> {
        self.restart_inner(true)
    }

    /// [`Self::restart`], but waits only until the agent answers `Status`,
    /// ready or not (an agent started while the API server is away).
    pub fn restart_unready(&mut self) -> Result<(), TestbedError> {
        self.restart_inner(false)
    }

    fn restart_inner(&mut self, ok_only: bool) -> Result<(), TestbedError> {
        self.stop();
        self.daemon = Daemon::start(self.spec.clone())?;
        self.wait_ready(ok_only)
    }

    /// The agent's process id.
    pub fn pid(&self) -> u32 {
        self.daemon.pid()
    }

    /// The agent's answer to `Status`: `Ok(())` when ready, else why not.
    pub fn status(&self) -> Result<(), String> {
        match agent_api::call(&self.paths.socket, &Request::Status, Duration::from_secs(2)) {
            Ok(Response::Ok) => Ok(()),
            Ok(Response::Error { message }) => Err(message),
            #[allow(unreachable_patterns)]
            Ok(other) => Err(format!("Status answered {other:?}")),
            Err(e) => Err(e.to_string()),
        }
    }

    /// SIGTERM, then SIGKILL after a grace period; idempotent.
    pub fn stop(&mut self) {
        self.daemon.stop();
    }
}
