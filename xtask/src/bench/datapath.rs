//! Two pods through the test bed under each enforcer: throughput,
//! request/response latency and connection rate, and the connection rate
//! as the policy grows to many ipBlocks.
//!
//! Every enforcer gets a one-node bed of its own, started from the same
//! manifest ([`super::cluster`]): `none` (the plain bridge, as Flannel
//! gives), `palisade` (the agent reading the manifest file, rewritten for
//! each sweep step), `iptables` and `ipset` (the plain bridge with the
//! [`super::rules`] translation of the manifest in the node's FORWARD
//! chain). Measurements go round the beds in turn, several rounds, and
//! each figure is the median of its rounds; each ratio the median of the
//! rounds' ratios ([`Rounds::ratio`]).

use std::collections::BTreeMap;
use std::io::Write as _;
use std::net::{IpAddr, SocketAddr, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{anyhow, bail, Context, Result};
use testbed::controlplane::sync::AGENT_APPLIED_LOG;
use testbed::{Testbed, TestbedOptions};

use super::cluster::{self, ECHO_PORT, IPERF_PORT, SERVER_IP, SOCKPERF_PORT};
use super::load::{self, Server};
use super::rules::{self, Flavour};
use super::samples::{Rounds, Sample};

/// The enforcers compared, baseline first.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub enum Enforcer {
    /// No enforcement: the plain bridge.
    None,
    /// Palisade's agent and programs.
    Palisade,
    /// kube-router-style iptables rules, one per address.
    Iptables,
    /// kube-router-style iptables rules matching ipsets.
    Ipset,
}

impl Enforcer {
    /// All of them, baseline first.
    pub const ALL: [Enforcer; 4] = [Self::None, Self::Palisade, Self::Iptables, Self::Ipset];

    /// The name used in tables and JSON keys.
    pub fn name(self) -> &'static str {
        match self {
            Self::None => "none",
            Self::Palisade => "palisade",
            Self::Iptables => "iptables",
            Self::Ipset => "ipset",
        }
    }

    fn flavour(self) -> Option<Flavour> {
        match self {
            Self::Iptables => Some(Flavour::Linear),
            Self::Ipset => Some(Flavour::Ipset),
            _ => None,
        }
    }
}

/// One enforcer's bed and the servers in it.
struct Lane {
    enforcer: Enforcer,
    bed: Testbed,
    client_ns: String,
    /// What is loaded now (comparators): removed before the next load and
    /// on drop.
    loaded: Option<rules::Ruleset>,
    node_ns: String,
    _servers: Vec<Server>,
    /// Whether the comparator gave up (its load took too long).
    skipped: Option<String>,
    /// The last load of its rules: (CIDRs, seconds).
    last_load: Option<(usize, f64)>,
}

impl Drop for Lane {
    fn drop(&mut self) {
        unload(&self.node_ns, &mut self.loaded);
    }
}

/// The four beds.
pub struct Lanes {
    lanes: Vec<Lane>,
    manifest: PathBuf,
    /// CIDRs in the policy now.
    cidrs: usize,
    _dir: tempfile::TempDir,
}

impl Lanes {
    /// Starts the four beds with `cidrs` ipBlocks in the policy.
    pub fn start(bin_dir: &Path, cidrs: usize) -> Result<Lanes> {
        let dir = tempfile::Builder::new()
            .prefix("palisade-bench")
            .tempdir()?;
        let manifest = dir.path().join("palisade.yaml");
        write_atomic(&manifest, &cluster::manifest(cidrs))?;
        let fixed = dir.path().join("plain.yaml");
        write_atomic(&fixed, &cluster::manifest(cidrs))?;
        let mut lanes = Vec::new();
        for enforcer in Enforcer::ALL {
            let palisade = enforcer == Enforcer::Palisade;
            let bed = Testbed::start(TestbedOptions {
                manifests: vec![if palisade {
                    manifest.clone()
                } else {
                    fixed.clone()
                }],
                palisade,
                bin_dir: bin_dir.to_path_buf(),
                probes: Vec::new(),
                nodes: 1,
                // Room for the sweep's largest step (the maps are fitted to
                // half their size).
                agent_args: vec!["--map-size-cidrs".into(), (4 << 20).to_string()],
            })
            .with_context(|| format!("starting the {} bed", enforcer.name()))?;
            let (client, server) = (
                bed.pods().get(&cluster::client()).cloned(),
                bed.pods().get(&cluster::server()).cloned(),
            );
            let (Some(client), Some(server)) = (client, server) else {
                bail!("the {} bed lacks the client or the server", enforcer.name());
            };
            if server.ip != SERVER_IP {
                bail!(
                    "the server got {} instead of its manifest address {SERVER_IP}",
                    server.ip
                );
            }
            prepare_client(&client.netns)?;
            let servers = load::start_servers(&server.netns, server.ip, IPERF_PORT, SOCKPERF_PORT)?;
            let node_ns = bed.node_netns().to_string();
            lanes.push(Lane {
                enforcer,
                bed,
                client_ns: client.netns,
                loaded: None,
                node_ns,
                _servers: servers,
                skipped: None,
                last_load: None,
            });
        }
        let mut me = Lanes {
            lanes,
            manifest,
            cidrs,
            _dir: dir,
        };
        me.load_comparators(cidrs, None)?;
        me.check_enforced()?;
        Ok(me)
    }

    /// Rewrites the policy to `cidrs` ipBlocks for every enforcer: the
    /// manifest Palisade reads (waiting until the agent has applied it) and
    /// the comparators' rules (a comparator whose load takes longer than
    /// `limit` is skipped from then on). Returns each comparator's load
    /// time in seconds.
    pub fn set_cidrs(&mut self, cidrs: usize, limit: Duration) -> Result<BTreeMap<Enforcer, f64>> {
        let took = self.rewrite_palisade(&cluster::manifest(cidrs))?;
        self.cidrs = cidrs;
        let mut times = BTreeMap::from([(Enforcer::Palisade, took)]);
        times.extend(self.load_comparators(cidrs, Some(limit))?);
        self.check_enforced()?;
        Ok(times)
    }

    /// Times `count` CNI ADDs on the Palisade bed with and without
    /// `palisade-cni` (see `Testbed::time_cni_adds`). The pods are added
    /// to the manifest first, without addresses, as the API server holds
    /// them before their ADD: the agent refuses pods it does not know.
    /// Also returns what the agent logged meanwhile (its timing of each
    /// ADD).
    pub fn time_cni_adds(
        &mut self,
        count: usize,
    ) -> Result<(Vec<Duration>, Vec<Duration>, String)> {
        self.rewrite_palisade(&cluster::with_cni_pods(self.cidrs, count))?;
        let timed = super::cni::timed_adds(self.palisade_bed()?, count)?;
        self.rewrite_palisade(&cluster::manifest(self.cidrs))?;
        Ok(timed)
    }

    /// Rewrites the manifest Palisade's agent reads and waits until the
    /// agent has applied it; returns the seconds that took.
    fn rewrite_palisade(&mut self, text: &str) -> Result<f64> {
        rewrite_manifest(self.palisade_bed()?, &self.manifest, text)
    }

    /// Checks that each bed enforces what it should: the client reaches
    /// the server everywhere, the stranger only where nothing is enforced
    /// (a comparator whose rules were never evaluated would look free).
    pub fn check_enforced(&self) -> Result<()> {
        let to = SocketAddr::new(IpAddr::V4(SERVER_IP), ECHO_PORT);
        let connects = |bed: &Testbed, pod| {
            bed.in_pod(&pod, || {
                Ok(TcpStream::connect_timeout(&to, Duration::from_secs(1)).is_ok())
            })
        };
        for lane in self.lanes.iter().filter(|l| l.skipped.is_none()) {
            let name = lane.enforcer.name();
            if !connects(&lane.bed, cluster::client())? {
                bail!("{name}: the client cannot reach the server");
            }
            let stranger = connects(&lane.bed, cluster::stranger())?;
            if stranger != (lane.enforcer == Enforcer::None) {
                bail!(
                    "{name}: the stranger {} the server",
                    if stranger {
                        "reaches"
                    } else {
                        "does not reach"
                    }
                );
            }
        }
        Ok(())
    }

    fn load_comparators(
        &mut self,
        cidrs: usize,
        limit: Option<Duration>,
    ) -> Result<BTreeMap<Enforcer, f64>> {
        let snapshot = {
            let mut loaded = policy_engine::manifest::Loaded::default();
            policy_engine::manifest::load_str(
                &cluster::manifest(cidrs),
                "bench.yaml".as_ref(),
                &mut loaded,
            )?;
            loaded.snapshot
        };
        let mut times = BTreeMap::new();
        for lane in &mut self.lanes {
            let Some(flavour) = lane.enforcer.flavour() else {
                continue;
            };
            if lane.skipped.is_some() {
                continue;
            }
            let deadline = limit.unwrap_or(Duration::from_secs(3600));
            if let Some(why) = lane
                .last_load
                .and_then(|last| load_bound_exceeds(last, cidrs, deadline))
            {
                unload(&lane.node_ns, &mut lane.loaded);
                lane.skipped = Some(why);
                continue;
            }
            unload(&lane.node_ns, &mut lane.loaded);
            let ruleset = rules::translate(&snapshot, flavour)?;
            let started = Instant::now();
            if !ruleset.sets.is_empty() {
                feed(
                    &lane.node_ns,
                    &["ipset", "restore"],
                    &ruleset.sets,
                    deadline,
                )?;
            }
            let ok = feed(
                &lane.node_ns,
                &["iptables-restore", "--noflush"],
                &ruleset.install,
                deadline.saturating_sub(started.elapsed()),
            )?;
            let took = started.elapsed();
            if !ok {
                // iptables-restore commits at its end: killed before, it
                // left nothing; only the sets are there.
                destroy_sets(&lane.node_ns, &ruleset.set_names);
                lane.skipped = Some(format!(
                    "skipped from {cidrs} CIDRs on: loading its rules took over {:.0} s",
                    deadline.as_secs_f64()
                ));
                continue;
            }
            lane.loaded = Some(ruleset);
            lane.last_load = Some((cidrs, took.as_secs_f64()));
            times.insert(lane.enforcer, took.as_secs_f64());
        }
        Ok(times)
    }

    /// The bed running Palisade.
    pub fn palisade_bed(&self) -> Result<&Testbed> {
        self.lanes
            .iter()
            .find(|l| l.enforcer == Enforcer::Palisade)
            .map(|l| &l.bed)
            .ok_or_else(|| anyhow!("no palisade lane"))
    }

    /// Why an enforcer was left out, if it was.
    pub fn skipped(&self, e: Enforcer) -> Option<&str> {
        self.lanes
            .iter()
            .find(|l| l.enforcer == e)?
            .skipped
            .as_deref()
    }

    /// `rounds` rounds of every figure on every enforcer, in turn, after
    /// one warm-up round that is discarded.
    pub fn measure(&self, rounds: usize, secs: u32, full: bool) -> Result<Rounds> {
        let mut all: BTreeMap<Enforcer, Vec<Sample>> = BTreeMap::new();
        // Round 0 warms caches, sockets and CPU frequency up and is
        // discarded: it was the slowest round of every variant. One second
        // a figure is enough for that.
        for round in 0..=rounds {
            let secs = if round == 0 { 1 } else { secs };
            for lane in &self.lanes {
                if lane.skipped.is_some() {
                    continue;
                }
                let s = lane
                    .sample(secs, full)
                    .with_context(|| format!("round {round}, {}", lane.enforcer.name()))?;
                eprintln!(
                    "bench: round {round} {:<8} {:>6.2} Gbit/s  rr p50 {:>6.1} µs p99 {:>6.1} µs  {:>6.0} conn/s{}",
                    lane.enforcer.name(),
                    s.throughput,
                    s.rr_p50,
                    s.rr_p99,
                    s.conn_rate,
                    if round == 0 { "  (warm-up, discarded)" } else { "" }
                );
                if round > 0 {
                    all.entry(lane.enforcer).or_default().push(s);
                }
            }
        }
        Ok(Rounds(all))
    }
}

impl Lane {
    /// One sample; `full`: throughput and latency too, not only the
    /// connection rate.
    fn sample(&self, secs: u32, full: bool) -> Result<Sample> {
        sample(
            &self.bed,
            &self.client_ns,
            IpAddr::V4(SERVER_IP),
            secs,
            full,
        )
    }
}

/// One sample from the bench's client pod to `target` (the server's
/// address, or a ClusterIP in front of it); `full`: throughput and
/// latency too, not only the connection rate.
pub fn sample(
    bed: &Testbed,
    client_ns: &str,
    target: IpAddr,
    secs: u32,
    full: bool,
) -> Result<Sample> {
    let mut s = Sample::default();
    if full {
        s.throughput = load::throughput(client_ns, target, IPERF_PORT, secs + 1)?;
        (s.rr_p50, s.rr_p99) = load::ping_pong(client_ns, target, SOCKPERF_PORT, secs)?;
    }
    let to = SocketAddr::new(target, ECHO_PORT);
    let cr = bed.in_pod(&cluster::client(), || {
        load::conn_rate(to, Duration::from_secs(u64::from(secs)))
    })?;
    s.conn_rate = cr.per_sec;
    s.conn_latencies = cr.latencies_us;
    Ok(s)
}

/// Rewrites `manifest`, which the agent of file-mode bed `bed` reads, and
/// waits until the agent has applied it; returns the seconds that took.
pub fn rewrite_manifest(bed: &Testbed, manifest: &Path, text: &str) -> Result<f64> {
    let log = bed
        .agent_log()
        .ok_or_else(|| anyhow!("no agent log"))?
        .to_path_buf();
    let applied = |text: &str| text.matches(AGENT_APPLIED_LOG).count();
    let before = applied(&std::fs::read_to_string(&log).unwrap_or_default());
    let started = Instant::now();
    write_atomic(manifest, text)?;
    loop {
        if applied(&std::fs::read_to_string(&log).unwrap_or_default()) > before {
            return Ok(started.elapsed().as_secs_f64());
        }
        if started.elapsed() > Duration::from_secs(600) {
            bail!(
                "the agent did not apply the rewritten manifest in 10 min:\n{}",
                bed.agent_log_tail(20)
            );
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// Why a comparator whose rules took `secs` to load at `at` CIDRs is
/// skipped at `cidrs` without trying: its load time grows at least in
/// proportion to the rules (each CIDR is a rule or a set entry, parsed
/// and committed), so a proportional estimate above `limit` is a lower
/// bound above it. `None`: try it. Only estimates from 1,000 CIDRs up
/// count, where the load is more than its start-up cost.
fn load_bound_exceeds((at, secs): (usize, f64), cidrs: usize, limit: Duration) -> Option<String> {
    if at < 1_000 || cidrs <= at {
        return None;
    }
    let bound = secs * cidrs as f64 / at as f64;
    (bound > limit.as_secs_f64()).then(|| {
        format!(
            "skipped from {cidrs} CIDRs on: its rules took {secs:.1} s to load at {at} CIDRs, \
             so at least {bound:.0} s at {cidrs}, over the {:.0} s limit",
            limit.as_secs_f64()
        )
    })
}

/// Prepares a pod namespace for the connection-rate client: TIME_WAIT
/// ports reused, a wide ephemeral range.
pub fn prepare_client(netns: &str) -> Result<()> {
    for kv in [
        "net.ipv4.tcp_tw_reuse=1",
        "net.ipv4.ip_local_port_range=1024 65000",
    ] {
        sysctl(netns, kv)?;
    }
    Ok(())
}

/// Removes a loaded ruleset and its sets; errors are only logged (the
/// namespace goes with the bed anyway).
fn unload(node_ns: &str, loaded: &mut Option<rules::Ruleset>) {
    let Some(r) = loaded.take() else {
        return;
    };
    if let Err(e) = feed(
        node_ns,
        &["iptables-restore", "--noflush"],
        &r.remove,
        Duration::from_secs(600),
    ) {
        eprintln!("bench: removing rules: {e:#}");
    }
    destroy_sets(node_ns, &r.set_names);
}

/// Destroys ipsets of the node namespace (failures ignored: the namespace
/// goes with the bed anyway).
fn destroy_sets(node_ns: &str, names: &[String]) {
    for name in names {
        let _ = Command::new("ip")
            .args(["netns", "exec", node_ns, "ipset", "destroy", name])
            .status();
    }
}

/// Runs `argv` in `netns` with `input` on stdin; `Ok(false)` if it was
/// killed for running past `deadline`.
fn feed(netns: &str, argv: &[&str], input: &str, deadline: Duration) -> Result<bool> {
    let mut child = Command::new("ip")
        .args(["netns", "exec", netns])
        .args(argv)
        .stdin(Stdio::piped())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .with_context(|| format!("cannot run {argv:?}"))?;
    let started = Instant::now();
    if let Some(mut stdin) = child.stdin.take() {
        let input = input.to_string();
        // Written from a thread: a large input must not block the wait.
        std::thread::spawn(move || {
            let _ = stdin.write_all(input.as_bytes());
        });
    }
    loop {
        if let Some(status) = child.try_wait()? {
            if !status.success() {
                let mut err = String::new();
                if let Some(mut e) = child.stderr.take() {
                    let _ = std::io::Read::read_to_string(&mut e, &mut err);
                }
                bail!("{argv:?} in {netns} failed ({status}): {}", err.trim());
            }
            return Ok(true);
        }
        if started.elapsed() > deadline {
            let _ = child.kill();
            let _ = child.wait();
            return Ok(false);
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

fn sysctl(netns: &str, kv: &str) -> Result<()> {
    let ok = Command::new("ip")
        .args(["netns", "exec", netns, "sysctl", "-q", "-w", kv])
        .status()?
        .success();
    if !ok {
        bail!("sysctl {kv} in {netns} failed");
    }
    Ok(())
}

/// Writes `text` to `path` through a rename, so that a reader polling the
/// file never sees half of it.
fn write_atomic(path: &Path, text: &str) -> Result<()> {
    let tmp = path.with_extension("tmp");
    std::fs::write(&tmp, text)?;
    std::fs::rename(&tmp, path)?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_load_is_skipped_only_when_its_lower_bound_is_over_the_limit() {
        let limit = Duration::from_secs(60);
        // 2.6 s at 10,000: at least 260 s at 1,000,000.
        let why = load_bound_exceeds((10_000, 2.6), 1_000_000, limit).unwrap();
        assert!(why.contains("at least 260 s"), "{why}");
        // 0.1 s at 10,000: 10 s at 1,000,000, tried.
        assert!(load_bound_exceeds((10_000, 0.1), 1_000_000, limit).is_none());
        // Estimates from start-up-bound small loads do not count.
        assert!(load_bound_exceeds((10, 0.5), 10_000, limit).is_none());
    }
}
