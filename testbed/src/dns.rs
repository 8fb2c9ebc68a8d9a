//! A real DNS server in a pod (dnsmasq, answering fixed records, as
//! kube-dns answers Service names) and the real resolver of a pod (glibc's,
//! through `getent`, with a `resolv.conf` of the pod's own), for tests of
//! DNS through the kube-dns ClusterIP.
//!
//! The resolver runs in a private mount namespace inside the pod's network
//! namespace, where its `resolv.conf` is bind-mounted over
//! `/etc/resolv.conf`: nothing of the machine's own files changes.

use std::net::{IpAddr, Ipv4Addr};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use crate::daemon::{Daemon, DaemonSpec};
use crate::error::TestbedError;
use crate::netns::netns_path;

/// Where Debian's `dnsmasq-base` installs the server.
pub const DNSMASQ: &str = "/usr/sbin/dnsmasq";

/// A dnsmasq serving fixed A records on port 53 (UDP and TCP) of one
/// address; stopped when dropped.
#[derive(Debug)]
pub struct DnsServer {
    daemon: Daemon,
    log: PathBuf,
}

impl DnsServer {
    /// Starts dnsmasq in `netns`, listening on `addr`:53, answering each
    /// `(name, address)` of `records` and refusing to forward anything else.
    pub fn start(
        netns: &str,
        addr: Ipv4Addr,
        records: &[(&str, Ipv4Addr)],
        log: &Path,
    ) -> Result<DnsServer, TestbedError> {
        let mut args = vec![
            "--keep-in-foreground".to_string(),
            "--no-resolv".into(),
            "--no-hosts".into(),
            "--no-poll".into(),
            "--bind-interfaces".into(),
            format!("--listen-address={addr}"),
            "--port=53".into(),
            "--user=root".into(),
            "--group=root".into(),
            "--pid-file=".into(),
            "--log-queries".into(),
            "--log-facility=-".into(),
        ];
        for (name, ip) in records {
            args.push(format!("--host-record={name},{ip}"));
        }
        let spec = DaemonSpec::new("dnsmasq", Path::new(DNSMASQ), netns, log).args(args);
        let daemon = Daemon::start(spec)?;
        let server = DnsServer {
            daemon,
            log: log.to_path_buf(),
        };
        // Listening once it logs that it started.
        let deadline = std::time::Instant::now() + Duration::from_secs(10);
        loop {
            let text = std::fs::read_to_string(&server.log).unwrap_or_default();
            if text.contains("started, version") {
                return Ok(server);
            }
            if std::time::Instant::now() > deadline {
                return Err(TestbedError::Layout {
                    reason: format!("dnsmasq did not start:\n{text}"),
                });
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// The server's log (each query it answered, with `--log-queries`).
    pub fn log(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// Its process id.
    pub fn pid(&self) -> u32 {
        self.daemon.pid()
    }
}

/// Resolves `name` (IPv4) in `netns` with glibc's resolver asking
/// `server` only, over TCP when `tcp` (`options use-vc`), one attempt of
/// one second (three at most over TCP); `resolv_conf` is a scratch file for the pod's
/// `resolv.conf`. Returns the addresses, or what `getent` said.
pub fn resolve(
    netns: &str,
    server: IpAddr,
    name: &str,
    tcp: bool,
    resolv_conf: &Path,
) -> Result<Vec<Ipv4Addr>, String> {
    let options = if tcp {
        "options timeout:1 attempts:1 use-vc"
    } else {
        "options timeout:1 attempts:1"
    };
    std::fs::write(resolv_conf, format!("nameserver {server}\n{options}\n"))
        .map_err(|e| format!("writing {}: {e}", resolv_conf.display()))?;
    let script = format!(
        // glibc's TCP connect waits out the kernel's SYN retries: 3 s at
        // most, as a resolver's own timeout would give up.
        "mount --bind {} /etc/resolv.conf && exec timeout 3 getent ahostsv4 {name}",
        resolv_conf.display()
    );
    let out = Command::new("nsenter")
        .arg(format!("--net={}", netns_path(netns).display()))
        .args(["unshare", "--mount", "--propagation", "private", "sh", "-c"])
        .arg(&script)
        .output()
        .map_err(|e| format!("running getent: {e}"))?;
    if !out.status.success() {
        return Err(format!(
            "getent ahostsv4 {name} via {server} ({}): exit {:?} {}",
            if tcp { "TCP" } else { "UDP" },
            out.status.code(),
            String::from_utf8_lossy(&out.stderr).trim()
        ));
    }
    let mut ips: Vec<Ipv4Addr> = String::from_utf8_lossy(&out.stdout)
        .lines()
        .filter_map(|l| l.split_whitespace().next()?.parse().ok())
        .collect();
    ips.dedup();
    Ok(ips)
}
