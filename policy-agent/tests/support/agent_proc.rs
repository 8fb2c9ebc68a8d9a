//! The real `policy-agent run` in a node namespace: a scratch folder for
//! its manifests, socket and log, the process (SIGKILLed on drop) and
//! calls on its socket. Needs the `netns` support module beside it.

#![allow(dead_code)]

use std::{
    fs::File,
    os::unix::process::CommandExt,
    path::{Path, PathBuf},
    process::{Child, Command, Stdio},
    time::{Duration, Instant},
};

use agent_api::{Request, Response};

use super::netns::NetNs;

/// A scratch folder (manifests, socket, logs), removed on drop.
pub struct Scratch(pub PathBuf);

impl Scratch {
    /// A fresh folder named after the process and `tag`.
    pub fn new(tag: &str) -> Self {
        let p = std::env::temp_dir().join(format!("palisade-t{}-{tag}", std::process::id()));
        let _ = std::fs::remove_dir_all(&p);
        std::fs::create_dir_all(&p).unwrap();
        Self(p)
    }
}

impl Drop for Scratch {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// A running `policy-agent run`, SIGKILLed on drop.
pub struct AgentProc {
    pub child: Child,
    pub log: PathBuf,
}

impl AgentProc {
    /// Starts the agent in `node` on the manifests `scratch/cluster.yaml`,
    /// the socket [`socket`]`(scratch)` and the pins `pins`, with `extra`
    /// arguments; returns once its socket answers ready.
    pub fn start(
        node: &NetNs,
        scratch: &Path,
        pins: &Path,
        generation: u32,
        extra: &[&str],
    ) -> Self {
        Self::spawn(node, scratch, pins, generation, extra, None)
    }

    /// [`Self::start`] with at most `nofile` open descriptors.
    pub fn start_limited(
        node: &NetNs,
        scratch: &Path,
        pins: &Path,
        extra: &[&str],
        nofile: u64,
    ) -> Self {
        Self::spawn(node, scratch, pins, 1, extra, Some(nofile))
    }

    fn spawn(
        node: &NetNs,
        scratch: &Path,
        pins: &Path,
        generation: u32,
        extra: &[&str],
        nofile: Option<u64>,
    ) -> Self {
        let log = scratch.join(format!("agent-{generation}.log"));
        let out = File::create(&log).unwrap();
        let err = out.try_clone().unwrap();
        // prlimit and nsenter exec: the child's pid is the agent's.
        let mut command = match nofile {
            Some(n) => {
                let mut c = Command::new("prlimit");
                c.arg(format!("--nofile={n}:{n}")).arg("nsenter");
                c
            }
            None => Command::new("nsenter"),
        };
        let child = command
            .arg(format!("--net={}", node.path()))
            .arg(env!("CARGO_BIN_EXE_policy-agent"))
            .arg("run")
            .arg("--manifests")
            .arg(scratch.join("cluster.yaml"))
            .arg("--cni-socket")
            .arg(socket(scratch))
            .arg("--bpffs-dir")
            .arg(pins)
            .args(extra)
            .stdin(Stdio::null())
            .stdout(out)
            .stderr(err)
            .process_group(0)
            .spawn()
            .unwrap();
        let mut agent = Self { child, log };
        agent.wait_ready(scratch);
        agent
    }

    /// Waits until the socket answers STATUS with ready (30 s at most).
    pub fn wait_ready(&mut self, scratch: &Path) {
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            self.assert_running();
            if matches!(
                agent_api::call(&socket(scratch), &Request::Status, Duration::from_secs(1)),
                Ok(Response::Ok)
            ) {
                return;
            }
            if Instant::now() > deadline {
                panic!("agent not ready in 30 s:\n{}", self.log_text());
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// Panics with the log if the agent has exited.
    pub fn assert_running(&mut self) {
        if let Ok(Some(st)) = self.child.try_wait() {
            panic!("agent exited ({st}):\n{}", self.log_text());
        }
    }

    /// Its process id (nsenter execs the agent).
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// What it logged so far.
    pub fn log_text(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// SIGKILLs it and reaps it.
    pub fn kill(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Drop for AgentProc {
    fn drop(&mut self) {
        self.kill();
    }
}

/// The agent's socket in `scratch`.
pub fn socket(scratch: &Path) -> PathBuf {
    scratch.join("cni.sock")
}

/// A request on the agent's socket (15 s at most), or a panic naming it.
pub fn call(scratch: &Path, req: &Request) -> Response {
    agent_api::call(&socket(scratch), req, Duration::from_secs(15))
        .unwrap_or_else(|e| panic!("{req:?}: {e}"))
}
