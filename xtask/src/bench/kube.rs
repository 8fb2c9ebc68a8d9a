//! `cargo xtask bench --only kube`: the figures against the test bed's
//! real API server and kube-proxy, each next to its target, in two beds
//! one after the other:
//!
//! 1. the played kubelet (our code creates the pods and runs the agent as
//!    a process of the release build):
//!    - through a ClusterIP: throughput, latency and connection rate with
//!      Palisade and with Palisade removed, in turn (the datapath figures
//!      stay here: on real nodes the pods' traffic is the same veths,
//!      bridge and kube-proxy rules);
//!    - change → enforced: from just before the API write (a pod relabel,
//!      a policy created) to the agent's log line saying the state holding
//!      that write is in the maps (it is logged after the apply, and the
//!      maps flip atomically, so the next packet sees it); p50 and p99;
//!    - full sync: an agent started against a cluster of N pods and M
//!      policies, from its start until it has listed everything and
//!      applied it (the same log line), and its peak resident memory then;
//! 2. a real node (containerd and the kubelet), the agent in its
//!    DaemonSet pod from the release build's image: the same
//!    control-plane figures, the sync after `kubectl rollout restart`,
//!    and the container's cgroup memory peak ([`real_nodes`]).
//!
//! The table prints each bed's figures under its own title; the JSON has
//! the played ones at the top level (the keys as before) and the real
//! node's under `real_nodes`.

mod figures;
mod real_nodes;

use std::collections::BTreeMap;
use std::path::Path;
use std::time::Instant;

use anyhow::{anyhow, bail, Context, Result};
use serde_json::{Map, Value};
use testbed::controlplane::{bulk, kubelet};
use testbed::{Testbed, TestbedOptions};

use super::{cluster, datapath, load, samples};
use crate::{cmd, Runtime};
use figures::{
    change_to_enforced, peak_rss_mib, sync_breakdown, wait_for_state, Change, ControlPlaneFigures,
    Subject, Sync,
};

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
pub fn run(
    bin_dir: &Path,
    quick: bool,
    plan: &Plan,
    runtime: Option<Runtime>,
    out: &mut Map<String, Value>,
) -> Result<()> {
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
    if runtime != Some(Runtime::Containerd) {
        played(bin_dir, &sizes, plan, out)?;
    }
    if runtime != Some(Runtime::Bed) {
        let started = Instant::now();
        let real = real_nodes::run(bin_dir, &sizes)?;
        real.print(
            "control plane on a real node (containerd, kubelet; the agent in its DaemonSet pod)",
        );
        let mut figures = Map::new();
        real.insert_json(&mut figures);
        out.insert("real_nodes".into(), Value::Object(figures));
        eprintln!(
            "bench: the real node's figures took {:.0} s",
            started.elapsed().as_secs_f64()
        );
    }
    Ok(())
}

/// The figures with the played kubelet.
fn played(bin_dir: &Path, sizes: &Sizes, plan: &Plan, out: &mut Map<String, Value>) -> Result<()> {
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
    let cluster = bed.kube().ok_or_else(|| anyhow!("kube mode"))?;
    let cp = cluster.control_plane();
    let log = bed.nodes()[0]
        .agent_log
        .clone()
        .ok_or_else(|| anyhow!("no agent log"))?;
    let read = || std::fs::read_to_string(&log).unwrap_or_default();
    let subject = Subject {
        namespace: "default",
        pod: "sleep",
        // Alternately lets `sleep` reach apod-api and not.
        apps: ["apod-web", "sleep"],
        policy_app: "apod-log",
    };
    let relabel = change_to_enforced(cp, &read, &subject, sizes.samples, Change::Relabel)?;
    let policy = change_to_enforced(cp, &read, &subject, sizes.samples, Change::Policy)?;
    let synced = full_sync(&bed, sizes)?;
    let figures = ControlPlaneFigures {
        relabel,
        policy,
        sync: synced,
        pods: sizes.pods,
        policies: sizes.policies,
    };
    figures.print("control plane, agent run by the bed as a process (played kubelet)");
    figures.insert_json(out);
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
    let read = || std::fs::read_to_string(&log).unwrap_or_default();
    // From the new agent's start: the old one's shutdown is not the sync.
    bed.stop_agents();
    let started = jiff::Timestamp::now();
    bed.restart_agents()?;
    let pods = sizes.pods + 4;
    let synced = wait_for_state(&read, |s| {
        s.pods.count >= pods && s.policies.count >= sizes.policies
    })?;
    let sync_ms = synced.duration_since(started).as_secs_f64() * 1000.0;
    let (dataplane_ms, compile_ms, apply_ms) = sync_breakdown(&read(), started);
    let pid = bed.agent_pids()[0];
    Ok(Sync {
        total_ms: sync_ms,
        dataplane_ms,
        compile_ms,
        apply_ms,
        rss_mib: peak_rss_mib(pid)?,
        from_restart_ms: None,
        cgroup_peak_mib: None,
    })
}
