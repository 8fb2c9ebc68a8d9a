//! The control-plane figures on a real node (`testbed::runtime`: containerd
//! and the kubelet), with the agent as users run it: the release build's
//! image (`cargo xtask image`'s archive of the binaries the bench was
//! built with), installed with `kubectl apply -k overlays/testbed`, in
//! its DaemonSet pod with the shipped securityContext.
//!
//! - change → enforced: from just before the API write to the state line
//!   the agent logs once the state holding that write is in the maps,
//!   read from the agent container's log file as containerd writes it
//!   under the node's `/var/log/pods` (what `kubectl logs` serves; the
//!   agent's own timestamp, not containerd's). The `Enforced on NODE`
//!   Events are not used: they time from the watch event's arrival, not
//!   from the API write, and a pod relabel makes none.
//! - full sync: the bulk pods (bound to a Node object that never reports,
//!   Running with an address each, as the played bed makes them) and
//!   policies, then `kubectl rollout restart daemonset`; from the new
//!   agent process's start (its `/proc` start time) to its first state
//!   line holding everything, and from the restart command to the same
//!   line. Memory: the process's peak RSS, and the container's cgroup
//!   peak (what its limit of 256 MiB is held against).

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use anyhow::{anyhow, bail, Context, Result};
use k8s_openapi::api::core::v1::Pod;
use k8s_openapi::api::networking::v1::NetworkPolicy;
use testbed::controlplane::{bulk, kubelet, sync, ControlPlane, ControlPlaneOptions};
use testbed::runtime::cluster::{RealCluster, RealClusterOptions};
use testbed::runtime::containers::{self, cri_log_text};
use testbed::runtime::images::{ImageArchive, AGNHOST_IMAGE};
use testbed::runtime::node::RealNode;

use super::figures::{
    change_to_enforced, peak_rss_mib, sync_breakdown, wait_for_state, Change, ControlPlaneFigures,
    Subject, Sync,
};
use super::Sizes;
use crate::cmd;
use crate::e2e_upstream::{AGENT_DAEMONSET, NODE_IMAGE_NAME};

/// The agent's container in its pod.
const AGENT_CONTAINER: &str = "agent";
/// The agent pods' labels.
const AGENT_SELECTOR: &str = "app.kubernetes.io/name=palisade,app.kubernetes.io/component=agent";
/// What the agent logs once its programs are loaded or taken over
/// (`reused`, `ms`).
const PROGRAMS_LOADED_LOG: &str = "programs loaded";
/// The node the bulk pods are bound to (a Node object, no kubelet).
const ABSENT_NODE: &str = "elsewhere";
/// How long the restarted agent's pod may take to start its container.
const RESTART_TIMEOUT: Duration = Duration::from_secs(180);

/// The agent container running now on one node.
struct Agent {
    /// Its pod's uid.
    pod_uid: String,
    /// containerd's ID of the container.
    id: String,
    /// Its log file, as seen from the machine.
    log: PathBuf,
}

impl Agent {
    /// The agent container of `node`'s DaemonSet pod whose uid is not
    /// `not`, once it has started.
    fn find(cluster: &RealCluster, node: &str, not: Option<&str>) -> Result<Option<Self>> {
        let (ns, _) = AGENT_DAEMONSET;
        let real = cluster
            .nodes()
            .iter()
            .find(|n| n.name() == node)
            .ok_or_else(|| anyhow!("no node {node}"))?;
        for pod in cluster.pods_on(ns, AGENT_SELECTOR, node)? {
            let uid = pod.metadata.uid.clone().unwrap_or_default();
            if Some(uid.as_str()) == not || pod.metadata.deletion_timestamp.is_some() {
                continue;
            }
            let (Some(id), Some(log)) = (
                containers::container_id(&pod, AGENT_CONTAINER),
                containers::container_log(&pod, AGENT_CONTAINER),
            ) else {
                continue;
            };
            return Ok(Some(Agent {
                pod_uid: uid,
                id,
                log: real.path(&log),
            }));
        }
        Ok(None)
    }

    /// What the agent has logged so far.
    fn text(&self) -> String {
        cri_log_text(&std::fs::read_to_string(&self.log).unwrap_or_default())
    }
}

/// Runs the figures on one real node and returns them.
pub fn run(bin_dir: &Path, sizes: &Sizes) -> Result<ControlPlaneFigures> {
    let path = bin_dir.join(crate::image::ARCHIVE_NAME);
    crate::image::write_archive(bin_dir, crate::image::DEFAULT_TAG, &path)?;
    let image = ImageArchive {
        path,
        name: NODE_IMAGE_NAME.into(),
    };
    let flannel_plugin =
        crate::tasks::build_host_bin("testbed", testbed::runtime::flannel::PLUGIN_BINARY)?;
    let clock = Instant::now();
    let mut cluster = RealCluster::start(RealClusterOptions {
        nodes: 1,
        flannel_plugin,
        images: vec![image],
        control_plane: ControlPlaneOptions::default(),
    })?;
    let (ns, ds) = AGENT_DAEMONSET;
    cluster.install(
        &cmd::workspace_root().join("overlays").join("testbed"),
        ns,
        ds,
    )?;
    let node = cluster
        .nodes()
        .first()
        .map(|n| n.name().to_string())
        .ok_or_else(|| anyhow!("the cluster has no node"))?;
    eprintln!(
        "bench: a real node Ready, Palisade installed on it, in {:.1} s",
        clock.elapsed().as_secs_f64()
    );
    let cp = cluster.control_plane();
    kubelet::ensure_namespace(cp, "bench", &BTreeMap::new())?;
    // An agnhost pod on the node (created through the played kubelet's
    // helper only for its wait on the new namespace's ServiceAccount).
    let sleep: Pod = serde_json::from_value(serde_json::json!({
        "metadata": {"name": "sleep", "namespace": "bench"},
        "spec": {
            "terminationGracePeriodSeconds": 0,
            "containers": [{
                "name": "pause",
                "image": AGNHOST_IMAGE,
                "imagePullPolicy": "Never",
                "args": ["pause"],
            }],
        },
    }))?;
    kubelet::create_pod(cp, &sleep, &node)?;
    cluster.wait_pod_ready("bench", "sleep", Duration::from_secs(120))?;
    // What the relabels turn on and off: `web` admits `client`.
    let policy: NetworkPolicy = serde_json::from_value(serde_json::json!({
        "metadata": {"name": "web-from-client", "namespace": "bench"},
        "spec": {
            "podSelector": {"matchLabels": {"app": "web"}},
            "ingress": [{"from": [{"podSelector": {"matchLabels": {"app": "client"}}}]}],
        }
    }))?;
    kubelet::apply_policy(cp, &policy)?;
    let agent =
        Agent::find(&cluster, &node, None)?.ok_or_else(|| anyhow!("no agent runs on {node}"))?;
    let read = || agent.text();
    caught_up(cp, &read)?;
    let subject = Subject {
        namespace: "bench",
        pod: "sleep",
        apps: ["web", "client"],
        policy_app: "web",
    };
    let relabel = change_to_enforced(cp, &read, &subject, sizes.samples, Change::Relabel)?;
    let policy = change_to_enforced(cp, &read, &subject, sizes.samples, Change::Policy)?;
    let sync = full_sync(&cluster, &node, &agent, sizes)?;
    Ok(ControlPlaneFigures {
        relabel,
        policy,
        sync,
        pods: sizes.pods,
        policies: sizes.policies,
    })
}

/// Waits until the agent has logged a state holding what the API server
/// holds now.
fn caught_up(cp: &ControlPlane, read: &dyn Fn() -> String) -> Result<()> {
    let target = sync::api_state(cp)?;
    wait_for_state(read, |s| s.caught_up_with(&target)).map(drop)
}

/// Fills the cluster, restarts the DaemonSet, and measures the new
/// agent's first sync.
fn full_sync(cluster: &RealCluster, node: &str, old: &Agent, sizes: &Sizes) -> Result<Sync> {
    let cp = cluster.control_plane();
    let filling = Instant::now();
    bulk::register_absent_node(cp, ABSENT_NODE)?;
    kubelet::ensure_namespace(cp, "bulk", &BTreeMap::new())?;
    bulk::create_running_pods(cp, "bulk", sizes.pods, ABSENT_NODE)?;
    bulk::create_policies(cp, "bulk", sizes.policies)?;
    eprintln!(
        "bench: {} pods and {} policies created in {:.1?}",
        sizes.pods,
        sizes.policies,
        filling.elapsed()
    );
    caught_up(cp, &|| old.text())?;
    let (ns, ds) = AGENT_DAEMONSET;
    let restarted = jiff::Timestamp::now();
    cp.kubectl(&["rollout", "restart", "-n", ns, &format!("daemonset/{ds}")])?;
    let deadline = Instant::now() + RESTART_TIMEOUT;
    let agent = loop {
        if let Some(a) = Agent::find(cluster, node, Some(&old.pod_uid))? {
            if a.log.is_file() {
                break a;
            }
        }
        if Instant::now() > deadline {
            bail!("no new agent on {node} {RESTART_TIMEOUT:?} after the rollout restart");
        }
        std::thread::sleep(Duration::from_millis(50));
    };
    let read = || agent.text();
    let synced = wait_for_state(&read, |s| {
        s.pods.count >= sizes.pods && s.policies.count >= sizes.policies
    })?;
    let real = cluster
        .nodes()
        .iter()
        .find(|n| n.name() == node)
        .ok_or_else(|| anyhow!("no node {node}"))?;
    let (pid, cgroup_peak_mib) = container_process(real, &agent.id)?;
    let started = process_start(pid)?;
    // Whether it took the pinned programs over or loaded them again.
    let text = read();
    if let Some(line) = text.lines().find(|l| l.contains(PROGRAMS_LOADED_LOG)) {
        eprintln!("bench: the new agent: {}", sync::strip_ansi(line));
    }
    let ms = |from: jiff::Timestamp| synced.duration_since(from).as_secs_f64() * 1000.0;
    let (dataplane_ms, compile_ms, apply_ms) = sync_breakdown(&read(), started);
    Ok(Sync {
        total_ms: ms(started),
        dataplane_ms,
        compile_ms,
        apply_ms,
        rss_mib: peak_rss_mib(pid)?,
        from_restart_ms: Some(ms(restarted)),
        cgroup_peak_mib: Some(cgroup_peak_mib),
    })
}

/// The process of container `id` on `node` (the machine's pid) and the
/// container's memory peak in MiB (cgroup v1 `memory.max_usage_in_bytes`,
/// or v2 `memory.peak`).
fn container_process(node: &RealNode, id: &str) -> Result<(u32, f64)> {
    for (controller, peak) in [
        ("memory", "memory.max_usage_in_bytes"),
        ("unified", "memory.peak"),
    ] {
        let Some(cgroup) = node.container_cgroup(controller, id) else {
            continue;
        };
        let Some(&pid) = containers::cgroup_pids(&cgroup).first() else {
            bail!(
                "container {id}'s cgroup {} holds no process",
                cgroup.display()
            );
        };
        let file = cgroup.join(peak);
        let bytes: f64 = std::fs::read_to_string(&file)
            .with_context(|| format!("reading {}", file.display()))?
            .trim()
            .parse()
            .with_context(|| format!("{} is not a number", file.display()))?;
        return Ok((pid, bytes / (1024.0 * 1024.0)));
    }
    bail!(
        "no memory cgroup of container {id} under node {}'s cgroup root",
        node.name()
    )
}

/// When process `pid` started: its start time in clock ticks since boot
/// (`/proc/<pid>/stat`), against the uptime now.
fn process_start(pid: u32) -> Result<jiff::Timestamp> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat"))?;
    // Fields after the command's closing parenthesis start at field 3;
    // `starttime` is field 22.
    let ticks: f64 = stat
        .rsplit_once(')')
        .and_then(|(_, rest)| rest.split_whitespace().nth(19)?.parse().ok())
        .ok_or_else(|| anyhow!("no start time in /proc/{pid}/stat"))?;
    let uptime: f64 = std::fs::read_to_string("/proc/uptime")?
        .split_whitespace()
        .next()
        .and_then(|v| v.parse().ok())
        .ok_or_else(|| anyhow!("no uptime in /proc/uptime"))?;
    let now = jiff::Timestamp::now();
    // SAFETY: sysconf reads a constant of the system.
    let hz = unsafe { libc::sysconf(libc::_SC_CLK_TCK) } as f64;
    let ago = jiff::SignedDuration::from_secs_f64(uptime - ticks / hz);
    now.checked_sub(ago)
        .with_context(|| format!("start of process {pid}"))
}
