//! The real `policy-agent run` as a process in a node namespace, started
//! with any wrapper (`setpriv`, `prlimit`) and arguments, with its scratch
//! folder (manifests, socket, log), killed on drop; for `agent_node.rs`.
//! Needs the `netns` support module beside it. It overlaps
//! `agent_proc.rs`, which starts the agent in the machine's namespace:
//! the two are to be folded into one.

#![allow(dead_code)]

use std::{
    fs::File,
    os::unix::process::CommandExt,
    path::{Path, PathBuf},
    process::{Child, Command, Stdio},
    time::{Duration, Instant},
};

use super::netns::NetNs;

/// A scratch folder, removed on drop.
pub struct Scratch(pub PathBuf);

impl Scratch {
    /// `palisade-t<pid>-<tag>` under the temporary folder.
    pub fn new(tag: &str) -> Self {
        let p = std::env::temp_dir().join(format!("palisade-t{}-{tag}", std::process::id()));
        let _ = std::fs::remove_dir_all(&p);
        std::fs::create_dir_all(&p).unwrap();
        Self(p)
    }

    /// The agent's socket in it.
    pub fn socket(&self) -> PathBuf {
        self.0.join("cni.sock")
    }
}

impl Drop for Scratch {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// A running agent, SIGKILLed on drop.
pub struct AgentProc {
    pub child: Child,
    pub log: PathBuf,
}

impl AgentProc {
    /// `wrapper... policy-agent run --cni-socket SCRATCH/cni.sock ARGS` in
    /// `node`'s namespace (`wrapper`: e.g. `setpriv` and its options),
    /// logging to `SCRATCH/agent.log`. Returns at once.
    pub fn spawn(node: &NetNs, scratch: &Scratch, wrapper: &[&str], args: &[&str]) -> Self {
        let log = scratch.0.join("agent.log");
        let out = File::create(&log).unwrap();
        let err = out.try_clone().unwrap();
        let child = Command::new("nsenter")
            .arg(format!("--net={}", node.path()))
            .args(wrapper)
            .arg(env!("CARGO_BIN_EXE_policy-agent"))
            .arg("run")
            .arg("--cni-socket")
            .arg(scratch.socket())
            .args(args)
            .stdin(Stdio::null())
            .stdout(out)
            .stderr(err)
            .process_group(0)
            .spawn()
            .unwrap();
        Self { child, log }
    }

    /// Waits until `ok` holds, panicking with the log if the agent exits or
    /// `patience` passes.
    pub fn wait_for(&mut self, what: &str, patience: Duration, mut ok: impl FnMut() -> bool) {
        let deadline = Instant::now() + patience;
        loop {
            if ok() {
                return;
            }
            if let Ok(Some(st)) = self.child.try_wait() {
                panic!("agent exited ({st}) before {what}:\n{}", self.log_text());
            }
            if Instant::now() > deadline {
                panic!("{what}: not within {patience:?}:\n{}", self.log_text());
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// Waits until the agent answers `Status` on `socket` with `Ok`.
    pub fn wait_ready(&mut self, socket: &Path) {
        self.wait_for("the agent is ready", Duration::from_secs(30), || {
            matches!(
                agent_api::call(socket, &agent_api::Request::Status, Duration::from_secs(1)),
                Ok(agent_api::Response::Ok)
            )
        });
    }

    /// Everything the agent logged so far.
    pub fn log_text(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }
}

impl Drop for AgentProc {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// An HTTP/1.0 GET of `path` on `addr` from inside `ns`: (status code,
/// body), or `None` when nothing answers.
pub fn http_get(ns: &NetNs, addr: std::net::SocketAddr, path: &str) -> Option<(u16, String)> {
    use std::io::{Read, Write};
    super::netns::in_ns(ns, || {
        let mut s = std::net::TcpStream::connect_timeout(&addr, Duration::from_secs(1)).ok()?;
        s.set_read_timeout(Some(Duration::from_secs(2))).ok()?;
        write!(s, "GET {path} HTTP/1.0\r\nHost: agent\r\n\r\n").ok()?;
        let mut text = String::new();
        s.read_to_string(&mut text).ok()?;
        let code = text.split_whitespace().nth(1)?.parse().ok()?;
        let body = text.split_once("\r\n\r\n").map(|(_, b)| b.to_string())?;
        Some((code, body))
    })
}
