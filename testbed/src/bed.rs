//! The test bed: node namespaces with a bridge each (several joined by a
//! VXLAN overlay, see [`crate::overlay`]), one namespace per pod wired by
//! the real CNI plugins on its node, an "outside" namespace for off-cluster
//! hosts, echo servers everywhere, and (optionally) the Palisade plugin and
//! one agent per node.

use std::collections::BTreeMap;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicUsize, Ordering};

use crate::cleanup::Tracked;
use crate::controlplane::cluster::{KubeCluster, KubeOptions};
use crate::error::TestbedError;
use crate::layout::Layout;
use crate::node::{self, BedNode, NodeSpec};
use crate::overlay;
use crate::probe::{validate_probes, PodRef, Probe, Snapshot};

mod agents;
mod kube;
mod probing;
mod timing;
mod wire;

/// Where Palisade's bpffs folders go (one per test bed).
pub const BPFFS_ROOT: &str = "/sys/fs/bpf";
/// Name of the chained plugin binary in `bin_dir`.
pub const PLUGIN_BINARY: &str = "palisade-cni";
/// Name of the agent binary in `bin_dir`.
pub const AGENT_BINARY: &str = "policy-agent";

/// How long the agent may take to catch up with the API server.
/// The node's end of the outside host's link on a one-node bed.
pub(crate) const OUTSIDE_LINK: &str = "out0";
const KUBE_SYNC_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(30);

static COUNTER: AtomicUsize = AtomicUsize::new(0);

/// What to build.
#[derive(Clone, Debug, Default)]
pub struct TestbedOptions {
    /// Cluster manifests (Namespaces, Pods with `status.podIP`,
    /// NetworkPolicies); also handed to the agent.
    pub manifests: Vec<PathBuf>,
    /// `false`: the plain bridge, what Flannel gives (policies ignored).
    /// `true`: `palisade-cni` chained after the bridge and `policy-agent`
    /// running in the node namespace.
    pub palisade: bool,
    /// Holds `policy-agent` and `palisade-cni` (used when `palisade`).
    pub bin_dir: PathBuf,
    /// Probes that will be run: their outside addresses become hosts and
    /// their destination ports get echo servers (declared container ports
    /// are always served).
    pub probes: Vec<Probe>,
    /// How many nodes (0 counts as 1). Several nodes are joined as
    /// Flannel's vxlan backend joins them, each with a /24 of 10.244.0.0/16
    /// and its own agent; pods go where `spec.nodeName` says, else where
    /// their `status.podIP` lies, else to the node with the fewest pods.
    /// Every agent reads the same manifests, so on several nodes every pod
    /// needs its `status.podIP` there (the other nodes' agents learn pod
    /// addresses from nothing else).
    pub nodes: usize,
    /// Extra arguments of every node's `policy-agent run` (after the bed's
    /// own).
    pub agent_args: Vec<String>,
}

/// A wired pod.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct WiredPod {
    /// Its namespace (the node's for hostNetwork pods).
    pub netns: String,
    /// Index of its node in [`Testbed::nodes`].
    pub node: usize,
    /// Its IPv4 address (the node's for hostNetwork pods).
    pub ip: Ipv4Addr,
    /// Its IPv6 address when the test bed is dual-stack (the node's IPv6
    /// gateway address for hostNetwork pods); `None` on an IPv4-only bed.
    pub ip6: Option<Ipv6Addr>,
    /// Whether it shares the node's namespace.
    pub host_network: bool,
}

/// A running test bed; dropping it removes everything it created.
#[derive(Debug)]
pub struct Testbed {
    runtime: Option<tokio::runtime::Runtime>,
    resources: Tracked,
    nodes: Vec<BedNode>,
    outside: Option<String>,
    layout: Layout,
    pods: BTreeMap<PodRef, WiredPod>,
    /// Kube mode: the control plane (dropped after `resources`).
    cluster: Option<KubeCluster>,
    /// Names and ids of this bed's namespaces and containers.
    id: String,
    /// Pods added after start (numbers their namespaces).
    added: usize,
    /// Agents not started yet (`KubeOptions::agent_after_pods`).
    pending_agents: Vec<node::PendingAgent>,
    /// Each Service's ClusterIPs, as the API server assigned them (what
    /// `svc:` probes connect to; kube mode only).
    services: BTreeMap<PodRef, Vec<IpAddr>>,
    /// Kube mode `via_services`: each pod's own Service, through which
    /// probes to the pod go.
    pod_services: BTreeMap<PodRef, PodRef>,
}

fn bpffs_mounted() -> bool {
    std::fs::read_to_string("/proc/self/mountinfo").is_ok_and(|m| {
        m.lines().any(|l| {
            let f: Vec<&str> = l.split_whitespace().collect();
            f.get(4) == Some(&BPFFS_ROOT)
                && f.iter()
                    .skip_while(|x| **x != "-")
                    .nth(1)
                    .is_some_and(|t| *t == "bpf")
        })
    })
}

/// Loads cluster manifests into a snapshot (bad input → [`TestbedError::Manifest`]).
/// Warnings (skipped objects) are logged.
pub fn load_snapshot(paths: &[PathBuf]) -> Result<Snapshot, TestbedError> {
    let loaded = policy_engine::manifest::load_paths(paths)
        .map_err(|source| TestbedError::Manifest { source })?;
    for w in &loaded.warnings {
        tracing::warn!("{w}");
    }
    Ok(loaded.snapshot)
}

impl Testbed {
    /// Loads `opts.manifests` and builds the test bed for them.
    pub fn start(opts: TestbedOptions) -> Result<Testbed, TestbedError> {
        let snapshot = load_snapshot(&opts.manifests)?;
        Self::start_with_snapshot(opts, &snapshot)
    }

    /// Builds the test bed for an already loaded `snapshot` (the agent, when
    /// enabled, still reads `opts.manifests`).
    pub fn start_with_snapshot(
        opts: TestbedOptions,
        snapshot: &Snapshot,
    ) -> Result<Testbed, TestbedError> {
        Self::start_inner(opts, snapshot, None)
    }

    /// Builds the test bed for `snapshot` (loaded from `opts.manifests`)
    /// against a real control plane (see [`crate::controlplane`]): the
    /// manifests' Namespaces, NetworkPolicies, Services and Pods are
    /// created through the API, the agent runs `--kube` as Palisade's
    /// ServiceAccount, kube-proxy runs in the node, and each pod's address
    /// comes from host-local IPAM (probes naming a pod's manifest address
    /// reach the pod at its real one). Needs `opts.palisade`.
    pub fn start_with_kube(
        opts: TestbedOptions,
        snapshot: &Snapshot,
        kube: &KubeOptions,
    ) -> Result<Testbed, TestbedError> {
        if !opts.palisade {
            return Err(TestbedError::Environment {
                reason: "kube mode runs the Palisade agent: it needs palisade on".into(),
            });
        }
        Self::start_inner(opts, snapshot, Some(kube))
    }

    /// The steps, in order: the layout, the nodes (and in kube mode the
    /// control plane), the overlay joining them, the pods wired by their
    /// node's CNI chain, the Services, the outside hosts, the servers; then
    /// the agents catch up.
    fn start_inner(
        opts: TestbedOptions,
        snapshot: &Snapshot,
        kube: Option<&KubeOptions>,
    ) -> Result<Testbed, TestbedError> {
        let layout = plan_layout(&opts, snapshot, kube)?;
        let count = layout.nodes.len();
        let id = format!(
            "pal-{}-{}",
            std::process::id(),
            COUNTER.fetch_add(1, Ordering::Relaxed)
        );
        let resources = Tracked::new();
        let state_dir = state_dir(&id, &resources)?;
        if opts.palisade {
            check_palisade(&opts.bin_dir)?;
        }
        let started = start_nodes(&opts, &layout, kube, &id, &state_dir, &resources)?;
        let StartedNodes {
            nodes,
            networks,
            cluster,
            pending_agents,
        } = started;
        let underlay = format!("{id}-ul");
        if count > 1 {
            wire::join_nodes(
                &underlay,
                &nodes,
                layout.dual_stack(),
                cluster.is_some(),
                &resources,
            )?;
        }
        let manifest_addresses = kube.is_some_and(|k| k.manifest_addresses);
        let pods = wire::wire_pods(
            &id,
            &layout,
            &nodes,
            &networks,
            cluster.as_ref(),
            manifest_addresses,
            &resources,
        )?;
        let (services, pod_services) = match &cluster {
            Some(c) => kube_services(c, &layout, kube.is_some_and(|k| k.via_services))?,
            None => (BTreeMap::new(), BTreeMap::new()),
        };
        let outside = wire::outside(&id, &layout, &nodes, &underlay, &resources)?;

        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .enable_all()
            .build()
            .map_err(|source| TestbedError::Runtime { source })?;
        let mut bed = Testbed {
            runtime: Some(runtime),
            resources,
            nodes,
            outside,
            layout,
            pods,
            cluster,
            id,
            added: 0,
            pending_agents,
            services,
            pod_services,
        };
        bed.start_servers()?;
        if bed.pending_agents.is_empty() {
            bed.wait_for_agent_sync()?;
        }
        Ok(bed)
    }

    /// The wired pods, their namespaces and addresses.
    pub fn pods(&self) -> &BTreeMap<PodRef, WiredPod> {
        &self.pods
    }

    /// The nodes, in order (`node0` first).
    pub fn nodes(&self) -> &[BedNode] {
        &self.nodes
    }

    /// Node 0's namespace (the bridge `cni0` and the agent live there).
    pub fn node_netns(&self) -> &str {
        &self.nodes[0].netns
    }

    /// The outside hosts' namespace, if any probe needed one.
    pub fn outside_netns(&self) -> Option<&str> {
        self.outside.as_deref()
    }

    /// Node 0's address on its bridge (its pods' gateway).
    pub fn node_addr(&self) -> Ipv4Addr {
        self.nodes[0].net.gateway
    }

    /// Node 0's pod subnet as `(network, prefix length)`.
    pub fn pod_subnet(&self) -> (Ipv4Addr, u8) {
        self.nodes[0].net.subnet
    }

    /// Node 0's IPv6 address on its bridge (its pods' IPv6 gateway), when
    /// the test bed is dual-stack.
    pub fn node_addr6(&self) -> Option<Ipv6Addr> {
        self.nodes[0].net.gateway6
    }

    /// Node 0's IPv6 pod subnet, when the test bed is dual-stack.
    pub fn pod_subnet6(&self) -> Option<(Ipv6Addr, u8)> {
        self.nodes[0].net.subnet6
    }

    /// Whether pods have an IPv6 address too (some pod has one in
    /// `status.podIPs`, or some probe given at start names an IPv6 address).
    pub fn dual_stack(&self) -> bool {
        self.layout.dual_stack()
    }

    /// Node 0's CNI network (its chain, as the runtime calls it).
    fn first_network(&self) -> Result<crate::cni::Network, TestbedError> {
        self.resources
            .with(|r| r.networks.first().cloned())
            .ok_or_else(|| TestbedError::Environment {
                reason: "the test bed has no CNI network".into(),
            })
    }
}

/// The nodes as [`node::start`] leaves them.
struct StartedNodes {
    nodes: Vec<BedNode>,
    networks: Vec<crate::cni::Network>,
    cluster: Option<KubeCluster>,
    pending_agents: Vec<node::PendingAgent>,
}

/// Checks the input and the machine and lays the scenario out on its
/// nodes.
fn plan_layout(
    opts: &TestbedOptions,
    snapshot: &Snapshot,
    kube: Option<&KubeOptions>,
) -> Result<Layout, TestbedError> {
    validate_probes(snapshot, &opts.probes)?;
    let count = opts.nodes.max(1);
    // In kube mode IPAM picks the addresses, unless told to ask for the
    // manifests' (then they say where each pod goes, as in file mode).
    let by_address = kube.is_none_or(|k| k.manifest_addresses);
    let layout = Layout::on_nodes(snapshot, &opts.probes, count, by_address)?;
    // File mode: every agent learns the other nodes' pod addresses from
    // the manifests alone. Kube mode: from the API server.
    if count > 1 && kube.is_none() {
        wire::require_addresses(snapshot, &layout)?;
    }
    if count > 1 && kube.is_some() && layout.dual_stack() {
        return Err(TestbedError::Environment {
            reason: "kube mode on several nodes is IPv4 only for now".into(),
        });
    }
    // SAFETY: geteuid has no preconditions and cannot fail.
    if unsafe { libc::geteuid() } != 0 {
        return Err(TestbedError::Environment {
            reason: "the test bed needs root (network namespaces, CNI plugins, bpffs)".into(),
        });
    }
    Ok(layout)
}

/// The bed's own folder (removed with it).
fn state_dir(id: &str, resources: &Tracked) -> Result<PathBuf, TestbedError> {
    let state_dir = std::env::temp_dir().join(id);
    // Names carry our pid: anything already there is a dead process's.
    let _ = std::fs::remove_dir_all(&state_dir);
    std::fs::create_dir_all(&state_dir).map_err(|source| TestbedError::Io {
        path: state_dir.clone(),
        source,
    })?;
    resources.with(|r| r.dirs.push(state_dir.clone()));

    Ok(state_dir)
}

/// What Palisade on the played kubelet needs: the plugin and bpffs.
fn check_palisade(bin_dir: &Path) -> Result<(), TestbedError> {
    let plugin = bin_dir.join(PLUGIN_BINARY);
    if !plugin.is_file() {
        return Err(TestbedError::MissingBinary {
            what: PLUGIN_BINARY.into(),
            path: plugin,
        });
    }
    if !bpffs_mounted() {
        return Err(TestbedError::Environment {
            reason: format!(
                "no bpffs at {BPFFS_ROOT} (mount -t bpf bpf {BPFFS_ROOT}, or run `cargo xtask setup`)"
            ),
        });
    }
    Ok(())
}

/// Starts each node of `layout` (node 0 starts the control plane in kube
/// mode, the others join it).
fn start_nodes(
    opts: &TestbedOptions,
    layout: &Layout,
    kube: Option<&KubeOptions>,
    id: &str,
    state_dir: &Path,
    resources: &Tracked,
) -> Result<StartedNodes, TestbedError> {
    let count = layout.nodes.len();
    let mut nodes = Vec::new();
    let mut networks = Vec::new();
    let mut cluster = None;
    let mut pending_agents = Vec::new();
    for (index, net) in layout.nodes.iter().enumerate() {
        let spec = NodeSpec {
            id,
            index,
            net,
            state_dir,
            palisade: opts.palisade.then_some(opts.bin_dir.as_path()),
            bin_dir: &opts.bin_dir,
            manifests: &opts.manifests,
            agent_args: &opts.agent_args,
            mtu: (count > 1).then_some(overlay::OVERLAY_MTU),
            kube,
            join: if index == 0 { None } else { cluster.as_ref() },
        };
        let (node, network, node_cluster, pending) = node::start(&spec, resources)?;
        if node_cluster.is_some() {
            cluster = node_cluster;
        }
        pending_agents.extend(pending);
        nodes.push(node);
        networks.push(network);
    }
    Ok(StartedNodes {
        nodes,
        networks,
        cluster,
        pending_agents,
    })
}

/// Kube mode: the Services' ClusterIPs once kube-proxy translates them,
/// and with `via_services` each pod's own Service.
#[allow(clippy::type_complexity)]
fn kube_services(
    c: &KubeCluster,
    layout: &Layout,
    via_services: bool,
) -> Result<(BTreeMap<PodRef, Vec<IpAddr>>, BTreeMap<PodRef, PodRef>), TestbedError> {
    let mut pod_services = BTreeMap::new();
    if via_services {
        for plan in layout
            .pods
            .iter()
            .filter(|p| !p.host_network && !p.ports.is_empty())
        {
            pod_services.insert(
                plan.pod.clone(),
                c.create_pod_service(&plan.pod, &plan.ports)?,
            );
        }
    }
    // What kube-proxy translates is what the API server assigned.
    let ips = c.service_ips()?;
    c.wait_for_services(&ips, KUBE_SYNC_TIMEOUT)?;
    Ok((ips, pod_services))
}

impl Drop for Testbed {
    fn drop(&mut self) {
        if let Some(rt) = self.runtime.take() {
            rt.shutdown_background();
        }
        self.resources.cleanup();
    }
}

#[cfg(test)]
mod tests;
