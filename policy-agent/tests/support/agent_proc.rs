//! The real `policy-agent run` in a node namespace: a scratch folder for
//! its manifests, socket and log, the process (SIGKILLed on drop), started
//! with any wrapper (`setpriv`, `prlimit`) and arguments or the usual way
//! ([`AgentProc::start`]: manifests and pins, waiting until it is ready),
//! calls on its socket and HTTP GETs on its health port. Needs the `netns`
//! support module beside it.

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

    /// The agent's socket in it.
    pub fn socket(&self) -> PathBuf {
        socket(&self.0)
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
    /// arguments, logging to `scratch/agent-<generation>.log`; returns
    /// once its socket answers ready.
    pub fn start(
        node: &NetNs,
        scratch: &Path,
        pins: &Path,
        generation: u32,
        extra: &[&str],
    ) -> Self {
        Self::start_wrapped(node, scratch, pins, generation, &[], extra)
    }

    /// [`Self::start`] with at most `nofile` open descriptors.
    pub fn start_limited(
        node: &NetNs,
        scratch: &Path,
        pins: &Path,
        extra: &[&str],
        nofile: u64,
    ) -> Self {
        let limit = format!("--nofile={nofile}:{nofile}");
        Self::start_wrapped(node, scratch, pins, 1, &["prlimit", &limit], extra)
    }

    fn start_wrapped(
        node: &NetNs,
        scratch: &Path,
        pins: &Path,
        generation: u32,
        wrapper: &[&str],
        extra: &[&str],
    ) -> Self {
        let manifests = scratch.join("cluster.yaml").display().to_string();
        let pins = pins.display().to_string();
        let mut args = vec!["--manifests", &manifests, "--bpffs-dir", &pins];
        args.extend_from_slice(extra);
        let log = format!("agent-{generation}.log");
        let mut agent = Self::spawn_logging(node, scratch, &log, wrapper, &args);
        agent.wait_ready(scratch);
        agent
    }

    /// `wrapper... policy-agent run --cni-socket SCRATCH/cni.sock ARGS` in
    /// `node`'s namespace (`wrapper`: e.g. `setpriv` and its options),
    /// logging to `SCRATCH/agent.log`. Returns at once.
    pub fn spawn(node: &NetNs, scratch: &Path, wrapper: &[&str], args: &[&str]) -> Self {
        Self::spawn_logging(node, scratch, "agent.log", wrapper, args)
    }

    fn spawn_logging(
        node: &NetNs,
        scratch: &Path,
        log: &str,
        wrapper: &[&str],
        args: &[&str],
    ) -> Self {
        let log = scratch.join(log);
        let out = File::create(&log).unwrap();
        let err = out.try_clone().unwrap();
        // nsenter and the wrappers exec: the child's pid is the agent's.
        let child = Command::new("nsenter")
            .arg(format!("--net={}", node.path()))
            .args(wrapper)
            .arg(env!("CARGO_BIN_EXE_policy-agent"))
            .arg("run")
            .arg("--cni-socket")
            .arg(socket(scratch))
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
            self.assert_running();
            if Instant::now() > deadline {
                panic!("{what}: not within {patience:?}:\n{}", self.log_text());
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// Waits until the socket in `scratch` answers STATUS with ready (30 s
    /// at most).
    pub fn wait_ready(&mut self, scratch: &Path) {
        let socket = socket(scratch);
        self.wait_for("the agent is ready", Duration::from_secs(30), || {
            matches!(
                agent_api::call(&socket, &Request::Status, Duration::from_secs(1)),
                Ok(Response::Ok)
            )
        });
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
