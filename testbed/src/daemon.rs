//! Long-running child processes of a test bed (the agent, etcd, the API
//! server, the controller manager, kube-proxy): started inside a network
//! namespace with `nsenter --net` (which execs the program, so the pid we
//! hold is the program's own), logging to a file, in a process group of
//! their own (a terminal's Ctrl-C reaches us, and we stop them in order),
//! and stopped by their pid: SIGTERM, then SIGKILL after a grace period.

use std::ffi::OsString;
use std::fs::File;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::time::{Duration, Instant};

use nix::sys::signal::{kill, Signal};
use nix::unistd::Pid;

use crate::error::TestbedError;
use crate::netns::netns_path;

/// How long a daemon gets to exit after SIGTERM before SIGKILL.
const STOP_GRACE: Duration = Duration::from_secs(3);

/// What to start.
#[derive(Clone, Debug)]
pub(crate) struct DaemonSpec {
    /// A short name for messages (`etcd`, `kube-apiserver`, ...).
    pub name: String,
    /// The program.
    pub program: PathBuf,
    /// Its arguments.
    pub args: Vec<OsString>,
    /// Extra environment.
    pub env: Vec<(OsString, OsString)>,
    /// The network namespace it runs in.
    pub netns: String,
    /// A real node's process (its namespaces' init): when set, the daemon
    /// runs in every namespace of that process (network, mount, UTS, PID)
    /// instead of `netns` alone. `nsenter` then forks, so the pid held is
    /// nsenter's; the node's PID namespace ends everything in it anyway.
    pub node_init: Option<u32>,
    /// Its stdout and stderr.
    pub log: PathBuf,
}

impl DaemonSpec {
    /// A spec for `program` in `netns`, logging to `log`, without arguments.
    pub fn new(name: &str, program: &Path, netns: &str, log: &Path) -> Self {
        DaemonSpec {
            name: name.to_string(),
            program: program.to_path_buf(),
            args: Vec::new(),
            env: Vec::new(),
            netns: netns.to_string(),
            node_init: None,
            log: log.to_path_buf(),
        }
    }

    /// A spec for `program` inside the namespaces of a real node whose
    /// init process is `init_pid` (see [`DaemonSpec::node_init`]).
    pub fn in_node(name: &str, program: &Path, init_pid: u32, log: &Path) -> Self {
        DaemonSpec {
            node_init: Some(init_pid),
            ..DaemonSpec::new(name, program, "", log)
        }
    }

    /// Appends arguments.
    pub fn args<I, S>(mut self, args: I) -> Self
    where
        I: IntoIterator<Item = S>,
        S: Into<OsString>,
    {
        self.args.extend(args.into_iter().map(Into::into));
        self
    }

    /// Sets an environment variable.
    pub fn env(mut self, key: impl Into<OsString>, value: impl Into<OsString>) -> Self {
        self.env.push((key.into(), value.into()));
        self
    }
}

/// A running daemon; dropping it stops it.
#[derive(Debug)]
pub(crate) struct Daemon {
    child: Child,
    name: String,
    log: PathBuf,
}

/// The last `lines` lines of a log file.
pub fn log_tail(path: &Path, lines: usize) -> String {
    let text = std::fs::read_to_string(path).unwrap_or_default();
    let all: Vec<&str> = text.lines().collect();
    all[all.len().saturating_sub(lines)..].join("\n")
}

impl Daemon {
    /// Starts `spec` (fails if the program is missing or cannot start).
    pub fn start(spec: DaemonSpec) -> Result<Daemon, TestbedError> {
        if !spec.program.is_file() {
            return Err(TestbedError::MissingBinary {
                what: spec.name.clone(),
                path: spec.program.clone(),
            });
        }
        let io_err = |source| TestbedError::Io {
            path: spec.log.clone(),
            source,
        };
        let log = File::create(&spec.log).map_err(io_err)?;
        let log2 = log.try_clone().map_err(io_err)?;
        let mut cmd = Command::new("nsenter");
        match spec.node_init {
            Some(pid) => cmd.args(["-t", &pid.to_string(), "-n", "-m", "-u", "-p", "--"]),
            None => cmd.arg(format!("--net={}", netns_path(&spec.netns).display())),
        };
        cmd.arg(&spec.program)
            .args(&spec.args)
            .envs(spec.env.iter().map(|(k, v)| (k, v)))
            .stdin(Stdio::null())
            .stdout(log)
            .stderr(log2)
            .process_group(0);
        let child = cmd.spawn().map_err(|source| TestbedError::Spawn {
            command: format!("{cmd:?}"),
            source,
        })?;
        Ok(Daemon {
            child,
            name: spec.name,
            log: spec.log,
        })
    }

    /// Its name.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// Its process id.
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// `Some(status)` once it has exited.
    pub fn exited(&mut self) -> Option<ExitStatus> {
        self.child.try_wait().ok().flatten()
    }

    /// SIGTERM, then SIGKILL after a grace period; idempotent.
    pub fn stop(&mut self) {
        if self.exited().is_some() {
            return;
        }
        if let Ok(raw) = i32::try_from(self.child.id()) {
            let _ = kill(Pid::from_raw(raw), Signal::SIGTERM);
        }
        let deadline = Instant::now() + STOP_GRACE;
        while Instant::now() < deadline {
            if self.exited().is_some() {
                return;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        tracing::warn!(
            "{} ignored SIGTERM for {STOP_GRACE:?}; killing it",
            self.name
        );
        let _ = self.child.kill();
        let _ = self.child.wait();
    }

    /// Waits until `ready()` says so, failing early if the daemon exits
    /// and after `timeout`; the error names the daemon and carries its
    /// log's tail.
    pub fn wait_until(
        &mut self,
        timeout: Duration,
        ready: impl FnMut() -> Result<bool, String>,
    ) -> Result<(), TestbedError> {
        wait_until(timeout, || self.exited(), ready).map_err(|reason| self.failure(reason))
    }

    /// An error about this daemon, with its log's tail.
    pub fn failure(&self, reason: String) -> TestbedError {
        TestbedError::Daemon {
            name: self.name.clone(),
            reason,
            log: self.log.clone(),
            log_tail: log_tail(&self.log, 30),
        }
    }
}

impl Drop for Daemon {
    fn drop(&mut self) {
        self.stop();
    }
}

/// Polls `ready()` every 50 ms until it answers `Ok(true)`; fails with the
/// reason when `exited()` reports an exit status or after `timeout` (with
/// the last error `ready()` gave).
pub(crate) fn wait_until(
    timeout: Duration,
    mut exited: impl FnMut() -> Option<ExitStatus>,
    mut ready: impl FnMut() -> Result<bool, String>,
) -> Result<(), String> {
    let deadline = Instant::now() + timeout;
    let mut last = String::from("not ready yet");
    loop {
        if let Some(status) = exited() {
            return Err(format!("exited before becoming ready ({status})"));
        }
        match ready() {
            Ok(true) => return Ok(()),
            Ok(false) => {}
            Err(e) => last = e,
        }
        if Instant::now() >= deadline {
            return Err(format!("not ready within {timeout:?} (last: {last})"));
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}
