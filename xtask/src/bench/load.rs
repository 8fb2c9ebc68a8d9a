//! The load: iperf3 (throughput), sockperf ping-pong (request/response
//! latency) and a native connection-rate client (connect, one round trip
//! over the test bed's echo server, close), each run between two pods'
//! namespaces of a test bed.

use std::io::{Read, Write};
use std::net::{IpAddr, SocketAddr, TcpStream};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{anyhow, bail, Context, Result};

/// A server process inside a namespace, killed on drop.
pub struct Server(Child);

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn in_ns(netns: &str, program: &str) -> Command {
    let mut c = Command::new("ip");
    c.args(["netns", "exec", netns, program]);
    c
}

/// Starts `iperf3 -s` and `sockperf sr` on `ip` inside `netns`.
pub fn start_servers(
    netns: &str,
    ip: std::net::Ipv4Addr,
    iperf: u16,
    sockperf: u16,
) -> Result<Vec<Server>> {
    let mut out = Vec::new();
    for (program, args) in [
        (
            "iperf3",
            vec![
                "-s".to_string(),
                "-B".into(),
                ip.to_string(),
                "-p".into(),
                iperf.to_string(),
            ],
        ),
        (
            "sockperf",
            vec![
                "sr".into(),
                "--tcp".into(),
                "-i".into(),
                ip.to_string(),
                "-p".into(),
                sockperf.to_string(),
            ],
        ),
    ] {
        let child = in_ns(netns, program)
            .args(&args)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .with_context(|| format!("cannot start {program} in {netns}"))?;
        out.push(Server(child));
    }
    // Both listen within a few milliseconds; give them a moment.
    std::thread::sleep(Duration::from_millis(300));
    Ok(out)
}

fn output(mut c: Command, what: &str) -> Result<String> {
    let out = c.output().with_context(|| format!("cannot run {what}"))?;
    if !out.status.success() {
        bail!(
            "{what} failed ({}): {}",
            out.status,
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

/// TCP throughput in Gbit/s from `netns` to `server` (iperf3, the first
/// second left out as slow start).
pub fn throughput(netns: &str, server: IpAddr, port: u16, secs: u32) -> Result<f64> {
    let mut c = in_ns(netns, "iperf3");
    c.args([
        "-c",
        &server.to_string(),
        "-p",
        &port.to_string(),
        "-J",
        "-O",
        "1",
    ])
    .args(["-t", &secs.to_string()]);
    let text = output(c, "iperf3 -c")?;
    let v: serde_json::Value = serde_json::from_str(&text).context("iperf3 -J output")?;
    v["end"]["sum_received"]["bits_per_second"]
        .as_f64()
        .map(|b| b / 1e9)
        .ok_or_else(|| anyhow!("iperf3 printed no end.sum_received.bits_per_second"))
}

/// Request/response latency (µs) from `netns` to `server`: sockperf
/// ping-pong's `(p50, p99)` over `secs` seconds.
pub fn ping_pong(netns: &str, server: IpAddr, port: u16, secs: u32) -> Result<(f64, f64)> {
    let mut c = in_ns(netns, "sockperf");
    c.args([
        "pp",
        "--tcp",
        "-i",
        &server.to_string(),
        "-p",
        &port.to_string(),
    ])
    .args(["-t", &secs.to_string()]);
    let text = output(c, "sockperf pp")?;
    let at = |p: &str| {
        text.lines()
            .find_map(|l| {
                l.split_once(&format!("percentile {p} ="))
                    .map(|(_, v)| v.trim().parse::<f64>())
            })
            .ok_or_else(|| anyhow!("sockperf printed no percentile {p}:\n{text}"))?
            .with_context(|| format!("sockperf percentile {p}"))
    };
    Ok((at("50.000")?, at("99.000")?))
}

/// What the connection-rate client measured.
#[derive(Clone, Debug)]
pub struct ConnRate {
    /// Connections completed per second.
    pub per_sec: f64,
    /// Latency of each (connect + one round trip + close), µs.
    pub latencies_us: Vec<f64>,
}

/// Opens connections to `server` one after another for `duration`: each
/// connects, sends one byte, reads the echo and closes. Runs on the calling
/// thread, which must be in the client's namespace (see
/// `Testbed::in_pod`). The client's namespace should reuse TIME_WAIT
/// ports (`net.ipv4.tcp_tw_reuse`), or a long run runs out of them.
pub fn conn_rate(server: SocketAddr, duration: Duration) -> std::io::Result<ConnRate> {
    let mut latencies_us = Vec::new();
    let start = Instant::now();
    let mut buf = [0u8; 1];
    while start.elapsed() < duration {
        let t = Instant::now();
        let mut s = TcpStream::connect_timeout(&server, Duration::from_secs(2))?;
        s.set_nodelay(true)?;
        s.write_all(b"x")?;
        s.read_exact(&mut buf)?;
        drop(s);
        latencies_us.push(t.elapsed().as_secs_f64() * 1e6);
    }
    let per_sec = latencies_us.len() as f64 / start.elapsed().as_secs_f64();
    Ok(ConnRate {
        per_sec,
        latencies_us,
    })
}
