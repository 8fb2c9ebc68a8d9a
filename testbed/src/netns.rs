//! Named network namespaces (`ip netns`), commands run inside them
//! (`nsenter --net`, which unlike `ip netns exec` keeps /sys and bpffs), and
//! sockets created inside them (`setns` from a short-lived thread: a socket
//! keeps the namespace it was created in).

use std::fs::File;
use std::io::Read;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use nix::sched::{setns, CloneFlags};

use crate::error::TestbedError;

/// Path of a named namespace's handle.
pub fn netns_path(name: &str) -> PathBuf {
    Path::new("/run/netns").join(name)
}

/// Runs `program args...` and fails with its stderr when it exits non-zero.
pub(crate) fn run(program: &str, args: &[&str]) -> Result<String, TestbedError> {
    let command = format!("{program} {}", args.join(" "));
    let out = Command::new(program)
        .args(args)
        .stdin(Stdio::null())
        .output()
        .map_err(|source| TestbedError::Spawn {
            command: command.clone(),
            source,
        })?;
    if !out.status.success() {
        return Err(TestbedError::Command {
            command,
            status: out.status.to_string(),
            stderr: String::from_utf8_lossy(&out.stderr).trim().to_string(),
        });
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

/// `ip <args>` inside namespace `ns` (`ip -n ns ...`).
pub(crate) fn ip_in(ns: &str, args: &[&str]) -> Result<String, TestbedError> {
    let mut full = vec!["-n", ns];
    full.extend_from_slice(args);
    run("ip", &full)
}

/// Creates a named namespace with its loopback up. A namespace already
/// holding the name is a leftover of a dead process that had our pid (names
/// carry the pid), so it is deleted first.
pub(crate) fn create(name: &str) -> Result<(), TestbedError> {
    if netns_path(name).exists() {
        tracing::warn!("removing stale network namespace {name}");
        delete(name);
    }
    run("ip", &["netns", "add", name])?;
    ip_in(name, &["link", "set", "lo", "up"])?;
    Ok(())
}

/// Deletes a named namespace (its links go with it); logs failures.
pub(crate) fn delete(name: &str) {
    if let Err(e) = run("ip", &["netns", "delete", name]) {
        tracing::warn!("cleanup: {e}");
    }
}

/// Sets a sysctl inside namespace `ns`.
pub(crate) fn sysctl_in(ns: &str, key_value: &str) -> Result<(), TestbedError> {
    let net = format!("--net={}", netns_path(ns).display());
    run("nsenter", &[&net, "sysctl", "-q", "-w", key_value]).map(drop)
}

/// Runs `f` on a fresh thread that first joins namespace `ns`; sockets `f`
/// creates belong to `ns` for their whole life, whatever thread uses them.
pub(crate) fn in_netns<T, F>(ns: &str, f: F) -> Result<T, TestbedError>
where
    T: Send,
    F: FnOnce() -> std::io::Result<T> + Send,
{
    let path = netns_path(ns);
    let netns_err = |source| TestbedError::Netns {
        name: ns.to_string(),
        source,
    };
    std::thread::scope(|s| {
        s.spawn(|| {
            let handle = File::open(&path).map_err(netns_err)?;
            setns(&handle, CloneFlags::CLONE_NEWNET)
                .map_err(|e| netns_err(std::io::Error::from(e)))?;
            f().map_err(netns_err)
        })
        .join()
        .unwrap_or_else(|_| Err(netns_err(std::io::Error::other("socket thread panicked"))))
    })
}

/// Output of a child process run with a deadline.
pub(crate) struct Finished {
    /// Exit status, rendered.
    pub status: std::process::ExitStatus,
    /// Everything written to stdout.
    pub stdout: Vec<u8>,
    /// Everything written to stderr.
    pub stderr: Vec<u8>,
}

/// Runs `cmd` with `stdin` fed in, killing it after `timeout`.
pub(crate) fn run_with_input(
    mut cmd: Command,
    stdin: &[u8],
    timeout: Duration,
    what: &str,
) -> Result<Finished, TestbedError> {
    use std::io::Write;
    let spawn_err = |source| TestbedError::Spawn {
        command: what.to_string(),
        source,
    };
    let mut child = cmd
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .map_err(spawn_err)?;
    if let Some(mut input) = child.stdin.take() {
        // A plugin that exits without reading its config is its own error.
        let _ = input.write_all(stdin);
    }
    let drain = |pipe: Option<Box<dyn Read + Send>>| {
        std::thread::spawn(move || {
            let mut buf = Vec::new();
            if let Some(mut p) = pipe {
                let _ = p.read_to_end(&mut buf);
            }
            buf
        })
    };
    let out = drain(
        child
            .stdout
            .take()
            .map(|p| Box::new(p) as Box<dyn Read + Send>),
    );
    let err = drain(
        child
            .stderr
            .take()
            .map(|p| Box::new(p) as Box<dyn Read + Send>),
    );
    let deadline = Instant::now() + timeout;
    // Short first waits: a CNI plugin takes milliseconds, and a fixed 10 ms
    // poll added up to 10 ms to every timed ADD.
    let mut nap = Duration::from_micros(200);
    let status = loop {
        match child.try_wait().map_err(spawn_err)? {
            Some(status) => break status,
            None if Instant::now() >= deadline => {
                let _ = child.kill();
                let _ = child.wait();
                return Err(TestbedError::Timeout {
                    what: what.to_string(),
                    after: timeout,
                });
            }
            None => {
                std::thread::sleep(nap);
                nap = (nap * 2).min(Duration::from_millis(10));
            }
        }
    };
    Ok(Finished {
        status,
        stdout: out.join().unwrap_or_default(),
        stderr: err.join().unwrap_or_default(),
    })
}
