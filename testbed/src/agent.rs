//! The node agent (`policy-agent run`) as a child process inside the node
//! namespace, started before any CNI ADD and stopped with SIGTERM.

use std::fs::File;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use agent_api::{Request, Response};
use nix::sys::signal::{kill, Signal};
use nix::unistd::Pid;

use crate::error::TestbedError;
use crate::netns::netns_path;

/// How long the agent may take to answer `Status`.
const READY_TIMEOUT: Duration = Duration::from_secs(30);
/// How long the agent gets to exit after SIGTERM before SIGKILL.
const STOP_GRACE: Duration = Duration::from_secs(3);

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

/// A running agent.
#[derive(Debug)]
pub struct Agent {
    child: Child,
    paths: AgentPaths,
}

/// The last `lines` lines of a log file.
pub fn log_tail(path: &Path, lines: usize) -> String {
    let text = std::fs::read_to_string(path).unwrap_or_default();
    let all: Vec<&str> = text.lines().collect();
    all[all.len().saturating_sub(lines)..].join("\n")
}

impl Agent {
    /// Starts the agent in `node_netns` (told the node's addresses, one
    /// `--node-addr` each) and waits until it answers `Status` with `Ok`;
    /// on failure the child is stopped and the error carries the log's tail.
    pub fn start(
        paths: AgentPaths,
        node_netns: &str,
        manifests: &[PathBuf],
        node_addrs: &[String],
    ) -> Result<Agent, TestbedError> {
        if !paths.binary.is_file() {
            return Err(TestbedError::MissingBinary {
                what: "policy-agent".into(),
                path: paths.binary.clone(),
            });
        }
        let io_err = |source| TestbedError::Io {
            path: paths.log.clone(),
            source,
        };
        let log = File::create(&paths.log).map_err(io_err)?;
        let log2 = log.try_clone().map_err(io_err)?;
        let mut cmd = Command::new("nsenter");
        cmd.arg(format!("--net={}", netns_path(node_netns).display()))
            .arg(&paths.binary)
            .arg("run");
        for m in manifests {
            // Absolute, so the agent does not depend on our working folder.
            let m = std::fs::canonicalize(m).unwrap_or_else(|_| m.clone());
            cmd.arg("--manifests").arg(m);
        }
        cmd.arg("--cni-socket")
            .arg(&paths.socket)
            .arg("--bpffs-dir")
            .arg(&paths.bpffs_dir);
        for addr in node_addrs {
            cmd.arg("--node-addr").arg(addr);
        }
        cmd.stdin(Stdio::null())
            .stdout(log)
            .stderr(log2)
            // Own process group: a terminal's Ctrl-C reaches us, and we stop
            // the agent after the CNI DELs, not before.
            .process_group(0);
        let child = cmd.spawn().map_err(|source| TestbedError::Spawn {
            command: format!("{cmd:?}"),
            source,
        })?;
        let mut agent = Agent { child, paths };
        agent.wait_ready()?;
        Ok(agent)
    }

    fn failure(&self, reason: String) -> TestbedError {
        TestbedError::Agent {
            reason,
            log: self.paths.log.clone(),
            log_tail: log_tail(&self.paths.log, 30),
        }
    }

    fn wait_ready(&mut self) -> Result<(), TestbedError> {
        let deadline = Instant::now() + READY_TIMEOUT;
        let mut last = String::from("socket not created yet");
        loop {
            if let Ok(Some(status)) = self.child.try_wait() {
                return Err(self.failure(format!("exited before becoming ready ({status})")));
            }
            if self.paths.socket.exists() {
                match agent_api::call(&self.paths.socket, &Request::Status, Duration::from_secs(1))
                {
                    Ok(Response::Ok) => return Ok(()),
                    Ok(Response::Error { message }) => last = format!("Status answered: {message}"),
                    #[allow(unreachable_patterns)]
                    Ok(other) => last = format!("Status answered {other:?}"),
                    Err(e) => last = e.to_string(),
                }
            }
            if Instant::now() >= deadline {
                let err =
                    self.failure(format!("not ready within {READY_TIMEOUT:?} (last: {last})"));
                self.stop();
                return Err(err);
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// SIGTERM, then SIGKILL after a grace period; idempotent.
    pub fn stop(&mut self) {
        if let Ok(Some(_)) = self.child.try_wait() {
            return;
        }
        if let Ok(raw) = i32::try_from(self.child.id()) {
            let _ = kill(Pid::from_raw(raw), Signal::SIGTERM);
        }
        let deadline = Instant::now() + STOP_GRACE;
        while Instant::now() < deadline {
            if let Ok(Some(_)) = self.child.try_wait() {
                return;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        tracing::warn!("policy-agent ignored SIGTERM for {STOP_GRACE:?}; killing it");
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Drop for Agent {
    fn drop(&mut self) {
        self.stop();
    }
}
