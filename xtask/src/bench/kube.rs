//! `cargo xtask bench --only kube`: the figures against the test bed's
//! real API server and kube-proxy, each next to its target.
//!
//! - through a ClusterIP: throughput, latency and connection rate with
//!   Palisade and with Palisade removed, in turn;
//! - change → enforced: from just before the API write (a pod relabel, a
//!   policy created) to the agent's log line saying the state holding that
//!   write is in the maps (it is logged after the apply, and the maps flip
//!   atomically, so the next packet sees it); p50 and p99.
//! - full sync: an agent started against a cluster of N pods and M
//!   policies, from its start until it has listed everything and applied
//!   it (the same log line), and its peak resident memory then.

use std::collections::BTreeMap;
use std::path::Path;
use std::time::{Duration, Instant};

use anyhow::{anyhow, bail, Context, Result};
use k8s_openapi::api::networking::v1::NetworkPolicy;
use serde_json::{json, Map, Value};
use testbed::controlplane::{bulk, kubelet, sync};
use testbed::{Testbed, TestbedOptions};

use super::stats::percentile;
use super::{cluster, datapath, load, samples};
use crate::cmd;

/// Sizes of one run.
struct Sizes {
    samples: usize,
    pods: usize,
    policies: usize,
}

/// Rounds and run length of the ClusterIP figures.
pub struct Plan {
    /// Rounds (each: with Palisade, then without).
    pub rounds: usize,
    /// Seconds per run.
    pub secs: u32,
}

/// Runs the figures (`quick`: fewer samples, a tenth of the cluster),
/// printing a table and adding their keys to `out`.
pub fn run(bin_dir: &Path, quick: bool, plan: &Plan, out: &mut Map<String, Value>) -> Result<()> {
    let sizes = if quick {
        Sizes {
            samples: 20,
            pods: 1_000,
            policies: 200,
        }
    } else {
        Sizes {
            samples: 100,
            pods: 10_000,
            policies: 2_000,
        }
    };
    testbed::install_signal_cleanup().context("cannot install the Ctrl-C cleanup")?;
    let scratch = tempfile::Builder::new()
        .prefix("palisade-bench")
        .tempdir()?;
    let bench = scratch.path().join("bench.yaml");
    std::fs::write(&bench, cluster::manifest(10) + &cluster::service())?;
    let manifests = vec![
        cmd::workspace_root().join("examples/apod/cluster.yaml"),
        bench,
    ];
    let snapshot = testbed::load_snapshot(&manifests)?;
    let bed = Testbed::start_with_kube(
        TestbedOptions {
            manifests,
            palisade: true,
            bin_dir: bin_dir.to_path_buf(),
            probes: Vec::new(),
            nodes: 1,
            agent_args: Vec::new(),
        },
        &snapshot,
        &crate::tasks::kube_options(),
    )?;
    cluster_ip(&bed, bin_dir, plan, out)?;
    let relabel = change_to_enforced(&bed, sizes.samples, Change::Relabel)?;
    let policy = change_to_enforced(&bed, sizes.samples, Change::Policy)?;
    let synced = full_sync(&bed, &sizes)?;
    println!();
    println!(
        "{:<44} {:>10} {:>10}",
        "control plane", "measured", "target"
    );
    let row = |name: &str, v: f64, target: &str| println!("{name:<44} {v:>10.1} {target:>10}");
    for (what, ms) in [("pod relabel", &relabel), ("policy add", &policy)] {
        row(
            &format!("change→enforced p50 ms ({what})"),
            percentile(ms, 50),
            "",
        );
        row(
            &format!("change→enforced p99 ms ({what})"),
            percentile(ms, 99),
            "< 100",
        );
    }
    row(
        &format!(
            "full sync ms ({} pods, {} policies)",
            sizes.pods, sizes.policies
        ),
        synced.total_ms,
        "< 1000",
    );
    row(
        "  of which: start to eBPF loaded and adopted",
        synced.dataplane_ms,
        "",
    );
    row("  of which: the full compile", synced.compile_ms, "");
    row("  of which: its write to the maps", synced.apply_ms, "");
    row(
        "agent RSS MiB (peak, after the full sync)",
        synced.rss_mib,
        "< 64",
    );
    let all = [relabel, policy].concat();
    out.insert(
        "change_to_enforced_p99_ms".into(),
        json!(super::round3(percentile(&all, 99))),
    );
    out.insert("full_sync_ms".into(), json!(super::round3(synced.total_ms)));
    out.insert(
        "full_sync_dataplane_ms".into(),
        json!(super::round3(synced.dataplane_ms)),
    );
    out.insert(
        "full_sync_compile_ms".into(),
        json!(super::round3(synced.compile_ms)),
    );
    out.insert(
        "full_sync_apply_ms".into(),
        json!(super::round3(synced.apply_ms)),
    );
    out.insert("agent_rss_mib".into(), json!(super::round3(synced.rss_mib)));
    Ok(())
}

/// Throughput, latency and connection rate from the bench client to the
/// server's ClusterIP (kube-proxy's DNAT in the path), with Palisade
/// enforcing the server's policy and with Palisade removed from the node
/// (agent stopped, `policy-agent cleanup`: programs detached, pins gone),
/// in turn; the agent is restarted after each baseline run and adopts the
/// running pods again.
fn cluster_ip(
    bed: &Testbed,
    bin_dir: &Path,
    plan: &Plan,
    out: &mut Map<String, Value>,
) -> Result<()> {
    let vip = bed
        .cluster_ip(&cluster::server())
        .ok_or_else(|| anyhow!("the bench Service has no ClusterIP"))?;
    let (client, server) = (
        bed.pods().get(&cluster::client()).cloned(),
        bed.pods().get(&cluster::server()).cloned(),
    );
    let (Some(client), Some(server)) = (client, server) else {
        bail!("the kube bed lacks the bench client or server");
    };
    datapath::prepare_client(&client.netns)?;
    let _servers = load::start_servers(
        &server.netns,
        server.ip,
        cluster::IPERF_PORT,
        cluster::SOCKPERF_PORT,
    )?;
    let node = &bed.nodes()[0];
    let (Some(pins), Some(socket)) = (&node.bpffs_dir, &node.agent_socket) else {
        bail!("the kube bed's node has no agent");
    };
    let (mut with, mut without) = (Vec::new(), Vec::new());
    for round in 0..plan.rounds {
        with.push(datapath::sample(bed, &client.netns, vip, plan.secs, true)?);
        bed.stop_agents();
        let cleaned = std::process::Command::new("ip")
            .args(["netns", "exec", &node.netns])
            .arg(bin_dir.join(testbed::AGENT_BINARY))
            .arg("cleanup")
            .arg("--bpffs-dir")
            .arg(pins)
            .arg("--cni-socket")
            .arg(socket)
            .output()?;
        if !cleaned.status.success() {
            bail!(
                "policy-agent cleanup failed: {}",
                String::from_utf8_lossy(&cleaned.stderr)
            );
        }
        without.push(datapath::sample(bed, &client.netns, vip, plan.secs, true)?);
        bed.restart_agents()?;
        bed.wait_for_agent_sync()?;
        eprintln!(
            "bench: ClusterIP round {round}: {:.0} conn/s with Palisade, {:.0} without",
            with[round].conn_rate, without[round].conn_rate
        );
    }
    let m = samples::Rounds(
        [
            (datapath::Enforcer::None, without),
            (datapath::Enforcer::Palisade, with),
        ]
        .into(),
    );
    super::print_samples(
        "through a ClusterIP (kube-proxy DNAT; medians; median ratio to Palisade removed, round by round)",
        &m,
        "removed",
    );
    let mut figures = Map::new();
    super::ratio_figures(&m, &mut figures);
    out.insert("cluster_ip".into(), Value::Object(figures));
    Ok(())
}

#[derive(Clone, Copy)]
enum Change {
    Relabel,
    Policy,
}

/// `samples` changes of one kind, each waited for; their latencies in ms.
fn change_to_enforced(bed: &Testbed, samples: usize, change: Change) -> Result<Vec<f64>> {
    let cluster = bed.kube().ok_or_else(|| anyhow!("kube mode"))?;
    let cp = cluster.control_plane();
    let log = bed.nodes()[0]
        .agent_log
        .clone()
        .ok_or_else(|| anyhow!("no agent log"))?;
    // The policies there are besides the one each sample adds.
    let base = sync::agent_states(&std::fs::read_to_string(&log).unwrap_or_default())
        .last()
        .map_or(0, |s| s.policies.count);
    let mut out = Vec::with_capacity(samples);
    for i in 0..samples {
        let before = jiff::Timestamp::now();
        let rv = match change {
            // Alternately lets `sleep` reach apod-api and not.
            Change::Relabel => {
                let app = if i % 2 == 0 { "apod-web" } else { "sleep" };
                let labels = BTreeMap::from([("app".to_string(), app.to_string())]);
                kubelet::relabel_pod(cp, "default", "sleep", &labels)?
            }
            // A default-deny policy for apod-log, created and then deleted
            // (the deletion is waited for too, not measured).
            Change::Policy => {
                let policy: NetworkPolicy = serde_json::from_value(serde_json::json!({
                    "metadata": {"name": format!("bench-{i}"), "namespace": "default"},
                    "spec": {"podSelector": {"matchLabels": {"app": "apod-log"}}, "policyTypes": ["Ingress"]}
                }))?;
                kubelet::apply_policy(cp, &policy)?
            }
        };
        let at = wait_for_state(&log, |s| match change {
            Change::Relabel => s.pods.newest >= rv,
            Change::Policy => s.policies.newest >= rv && s.policies.count == base + 1,
        })?;
        out.push(at.duration_since(before).as_secs_f64() * 1000.0);
        if let Change::Policy = change {
            kubelet::delete_policy(cp, "default", &format!("bench-{i}"))?;
            wait_for_state(&log, |s| s.policies.count == base && s.policies.newest > rv)?;
        }
    }
    Ok(out)
}

/// Waits for the first state line matching `done` (the agent logs one per
/// applied batch), returns its timestamp.
fn wait_for_state(
    log: &Path,
    done: impl Fn(&sync::ClusterState) -> bool,
) -> Result<jiff::Timestamp> {
    let start = Instant::now();
    loop {
        let text = std::fs::read_to_string(log).unwrap_or_default();
        if let Some((stamp, _)) = sync::agent_states_timed(&text)
            .into_iter()
            .find(|(_, s)| done(s))
        {
            return stamp
                .parse()
                .with_context(|| format!("agent log timestamp {stamp:?}"));
        }
        if start.elapsed() > Duration::from_secs(60) {
            let last: Vec<String> = sync::agent_states_timed(&text)
                .into_iter()
                .rev()
                .take(3)
                .map(|(t, s)| format!("{t} {s:?}"))
                .collect();
            bail!(
                "the agent did not log the state in 60 s; its last states: {last:#?}\n{}",
                std::fs::read_to_string(log)
                    .unwrap_or_default()
                    .lines()
                    .rev()
                    .take(10)
                    .collect::<Vec<_>>()
                    .join("\n")
            );
        }
        std::thread::sleep(Duration::from_millis(2));
    }
}

/// A full sync's figures.
struct Sync {
    /// From the agent's start to the state holding everything applied.
    total_ms: f64,
    /// Of which: to its programs and maps ready.
    dataplane_ms: f64,
    /// Of which: its full compile.
    compile_ms: f64,
    /// Of which: that compile's write to the maps.
    apply_ms: f64,
    /// Peak resident memory.
    rss_mib: f64,
}

/// Fills the cluster, restarts the agent, and measures its first sync.
fn full_sync(bed: &Testbed, sizes: &Sizes) -> Result<Sync> {
    let cluster = bed.kube().ok_or_else(|| anyhow!("kube mode"))?;
    let cp = cluster.control_plane();
    let filling = Instant::now();
    kubelet::ensure_namespace(cp, "bulk", &BTreeMap::new())?;
    bulk::create_running_pods(cp, "bulk", sizes.pods, "elsewhere")?;
    bulk::create_policies(cp, "bulk", sizes.policies)?;
    eprintln!(
        "bench: {} pods and {} policies created in {:.1?}",
        sizes.pods,
        sizes.policies,
        filling.elapsed()
    );
    bed.wait_for_agent_sync()?;
    let log = bed.nodes()[0]
        .agent_log
        .clone()
        .ok_or_else(|| anyhow!("no agent log"))?;
    // From the new agent's start: the old one's shutdown is not the sync.
    bed.stop_agents();
    let started = jiff::Timestamp::now();
    bed.restart_agents()?;
    let pods = sizes.pods + 4;
    let synced = wait_for_state(&log, |s| {
        s.pods.count >= pods && s.policies.count >= sizes.policies
    })?;
    let sync_ms = synced.duration_since(started).as_secs_f64() * 1000.0;
    let text = std::fs::read_to_string(&log).unwrap_or_default();
    // The new agent's log: from its last "dataplane ready" line on.
    let since_ready = text
        .rfind(sync::AGENT_DATAPLANE_READY_LOG)
        .map_or("", |at| {
            &text[text[..at].rfind('\n').map_or(0, |n| n + 1)..]
        });
    let ready_ms = since_ready
        .lines()
        .next()
        .and_then(|l| sync::log_stamp(l).parse::<jiff::Timestamp>().ok())
        .map_or(f64::NAN, |t| {
            t.duration_since(started).as_secs_f64() * 1000.0
        });
    // Its full compile: its own time and its write's.
    let compiled = since_ready
        .lines()
        .rfind(|l| l.contains(sync::AGENT_FULL_COMPILE_LOG))
        .map(|l| {
            let field = |k: &str| sync::log_number(l, k).unwrap_or(f64::NAN);
            (field("compile_ms"), field("apply_ms"))
        })
        .unwrap_or((f64::NAN, f64::NAN));
    let pid = bed.agent_pids()[0];
    let status = std::fs::read_to_string(format!("/proc/{pid}/status"))?;
    let hwm_kib: f64 = status
        .lines()
        .find_map(|l| l.strip_prefix("VmHWM:"))
        .and_then(|v| v.split_whitespace().next()?.parse().ok())
        .ok_or_else(|| anyhow!("no VmHWM in /proc/{pid}/status"))?;
    Ok(Sync {
        total_ms: sync_ms,
        dataplane_ms: ready_ms,
        compile_ms: compiled.0,
        apply_ms: compiled.1,
        rss_mib: hwm_kib / 1024.0,
    })
}
