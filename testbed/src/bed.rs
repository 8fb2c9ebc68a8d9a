//! The test bed: node namespaces with a bridge each (several joined by a
//! VXLAN overlay, see [`crate::overlay`]), one namespace per pod wired by
//! the real CNI plugins on its node, an "outside" namespace for off-cluster
//! hosts, echo servers everywhere, and (optionally) the Palisade plugin and
//! one agent per node.

use std::collections::BTreeMap;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicUsize, Ordering};

use crate::agent::{log_tail, Agent};
use crate::cleanup::Tracked;
use crate::controlplane::cluster::{KubeCluster, KubeOptions};
use crate::echo;
use crate::error::TestbedError;
use crate::layout::Layout;
use crate::netns::{self, ip_in, sysctl_in};
use crate::node::{self, no_dad, BedNode, NodeSpec};
use crate::overlay;
use crate::probe::{validate_probes, End, Observation, PodRef, Probe, Snapshot};
use crate::prober::{self, Route};

mod timing;

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

    fn start_inner(
        opts: TestbedOptions,
        snapshot: &Snapshot,
        kube: Option<&KubeOptions>,
    ) -> Result<Testbed, TestbedError> {
        validate_probes(snapshot, &opts.probes)?;
        let count = opts.nodes.max(1);
        // In kube mode IPAM picks the addresses, unless told to ask for the
        // manifests' (then they say where each pod goes, as in file mode).
        let by_address = kube.is_none_or(|k| k.manifest_addresses);
        let layout = Layout::on_nodes(snapshot, &opts.probes, count, by_address)?;
        // File mode: every agent learns the other nodes' pod addresses from
        // the manifests alone. Kube mode: from the API server.
        if count > 1 && kube.is_none() {
            require_addresses(snapshot, &layout)?;
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
        let id = format!(
            "pal-{}-{}",
            std::process::id(),
            COUNTER.fetch_add(1, Ordering::Relaxed)
        );
        let resources = Tracked::new();

        let state_dir = std::env::temp_dir().join(&id);
        // Names carry our pid: anything already there is a dead process's.
        let _ = std::fs::remove_dir_all(&state_dir);
        std::fs::create_dir_all(&state_dir).map_err(|source| TestbedError::Io {
            path: state_dir.clone(),
            source,
        })?;
        resources.with(|r| r.dirs.push(state_dir.clone()));

        if opts.palisade {
            let plugin = opts.bin_dir.join(PLUGIN_BINARY);
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
        }

        let mut nodes = Vec::new();
        let mut networks = Vec::new();
        let mut cluster = None;
        let mut pending_agents = Vec::new();
        for (index, net) in layout.nodes.iter().enumerate() {
            let spec = NodeSpec {
                id: &id,
                index,
                net,
                state_dir: &state_dir,
                palisade: opts.palisade.then_some(opts.bin_dir.as_path()),
                bin_dir: &opts.bin_dir,
                manifests: &opts.manifests,
                agent_args: &opts.agent_args,
                mtu: (count > 1).then_some(overlay::OVERLAY_MTU),
                kube,
                join: if index == 0 { None } else { cluster.as_ref() },
            };
            let (node, network, node_cluster, pending) = node::start(&spec, &resources)?;
            if node_cluster.is_some() {
                cluster = node_cluster;
            }
            pending_agents.extend(pending);
            nodes.push(node);
            networks.push(network);
        }
        let underlay = format!("{id}-ul");
        if count > 1 {
            resources.with(|r| r.netns.push(underlay.clone()));
            overlay::create_underlay(&underlay)?;
            let dual = layout.dual_stack();
            // In kube mode each node's eth0 joins the control plane.
            let ifname = if cluster.is_some() {
                overlay::KUBE_UNDERLAY_IF
            } else {
                overlay::UNDERLAY_IF
            };
            for (i, node) in nodes.iter().enumerate() {
                overlay::plug_node(&underlay, &node.netns, i, dual, ifname)?;
                overlay::attach_node(&node.netns, i, overlay::underlay(i, dual), ifname)?;
            }
            for (i, node) in nodes.iter().enumerate() {
                for (j, peer) in nodes.iter().enumerate().filter(|(j, _)| *j != i) {
                    overlay::learn_peer(&node.netns, j, overlay::underlay(j, dual), &peer.net)?;
                }
            }
        }

        let mut pods = BTreeMap::new();
        for (i, plan) in layout.pods.iter().enumerate() {
            let name = format!("{}/{}", plan.pod.namespace, plan.pod.name);
            let node = &nodes[plan.node];
            if let Some(c) = &cluster {
                c.create_pod(&plan.pod, &node.name)?;
            }
            if plan.host_network {
                if let Some(c) = &cluster {
                    c.pod_running(&plan.pod, &[IpAddr::V4(node.net.gateway)], &node.name)?;
                }
                pods.insert(
                    plan.pod.clone(),
                    WiredPod {
                        netns: node.netns.clone(),
                        node: plan.node,
                        ip: node.net.gateway,
                        ip6: node.net.gateway6,
                        host_network: true,
                    },
                );
                continue;
            }
            let ns = format!("{id}-p{i}");
            resources.with(|r| r.netns.push(ns.clone()));
            netns::create(&ns)?;
            let mut requested: Vec<IpAddr> = plan.requested.iter().map(|a| (*a).into()).collect();
            if layout.dual_stack() {
                no_dad(&ns)?;
                requested.extend(plan.requested6.map(IpAddr::V6));
            }
            if cluster.is_some() && !kube.is_some_and(|k| k.manifest_addresses) {
                // As on a real node: the API holds no address yet, IPAM
                // picks one.
                requested.clear();
            }
            let container_id = format!("{id}-c{i}");
            let att = networks[plan.node].add_ips(
                &name,
                &plan.pod.namespace,
                &plan.pod.name,
                &container_id,
                &ns,
                &requested,
            )?;
            let ip = att.ipv4();
            let ip6 = att.ipv6();
            resources.with(|r| r.attachments.push((plan.node, att)));
            if layout.dual_stack() && ip6.is_none() {
                return Err(TestbedError::Cni {
                    command: "ADD",
                    pod: name.clone(),
                    plugin: "bridge".into(),
                    message: "the result holds no IPv6 address on a dual-stack bed".into(),
                    stderr: String::new(),
                });
            }
            let ip = ip.ok_or_else(|| TestbedError::Cni {
                command: "ADD",
                pod: name.clone(),
                plugin: "bridge".into(),
                message: "the result holds no IPv4 address".into(),
                stderr: String::new(),
            })?;
            if let Some(c) = &cluster {
                let ips: Vec<IpAddr> = [Some(IpAddr::V4(ip)), ip6.map(IpAddr::V6)]
                    .into_iter()
                    .flatten()
                    .collect();
                c.pod_running(&plan.pod, &ips, &nodes[plan.node].name)?;
            }
            pods.insert(
                plan.pod.clone(),
                WiredPod {
                    netns: ns,
                    node: plan.node,
                    ip,
                    ip6,
                    host_network: false,
                },
            );
        }

        let mut pod_services = BTreeMap::new();
        if let (Some(c), true) = (&cluster, kube.is_some_and(|k| k.via_services)) {
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
        let services = match &cluster {
            Some(c) => {
                let ips = c.service_ips()?;
                c.wait_for_services(&ips, KUBE_SYNC_TIMEOUT)?;
                ips
            }
            None => BTreeMap::new(),
        };

        let outside = if layout.outside.is_empty() && layout.outside6.is_empty() {
            None
        } else {
            let ns = format!("{id}-out");
            resources.with(|r| r.netns.push(ns.clone()));
            if count > 1 {
                let on_nodes: Vec<_> = nodes
                    .iter()
                    .map(|n| (n.netns.clone(), n.net.clone()))
                    .collect();
                let v4: Vec<_> = layout.outside.keys().copied().collect();
                let v6: Vec<_> = layout.outside6.keys().copied().collect();
                overlay::wire_outside(&underlay, &ns, &on_nodes, &v4, &v6)?;
            } else {
                wire_outside(
                    &nodes[0].netns,
                    &ns,
                    layout.outside.keys().copied(),
                    layout.outside6.keys().copied(),
                )?;
            }
            Some(ns)
        };

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

    fn start_servers(&mut self) -> Result<(), TestbedError> {
        let Some(rt) = &self.runtime else {
            return Ok(());
        };
        let handle = rt.handle().clone();
        // Dual-stack: `[::]` with IPV6_V6ONLY off serves both families.
        let any = if self.layout.dual_stack() {
            IpAddr::V6(Ipv6Addr::UNSPECIFIED)
        } else {
            IpAddr::V4(Ipv4Addr::UNSPECIFIED)
        };
        for plan in self.layout.pods.iter().filter(|p| !p.host_network) {
            if let Some(w) = self.pods.get(&plan.pod) {
                let addrs: Vec<_> = plan.ports.iter().map(|p| (any, *p)).collect();
                echo::serve(&handle, &w.netns, &addrs)?;
            }
        }
        let node: Vec<_> = self.layout.node_ports.iter().map(|p| (any, *p)).collect();
        for n in &self.nodes {
            echo::serve(&handle, &n.netns, &node)?;
        }
        if let Some(out) = &self.outside {
            let v4 = self
                .layout
                .outside
                .iter()
                .flat_map(|(ip, ports)| ports.iter().map(move |p| (IpAddr::V4(*ip), *p)));
            let v6 = self
                .layout
                .outside6
                .iter()
                .flat_map(|(ip, ports)| ports.iter().map(move |p| (IpAddr::V6(*ip), *p)));
            let addrs: Vec<_> = v4.chain(v6).collect();
            echo::serve(&handle, out, &addrs)?;
        }
        Ok(())
    }

    /// The IPv4 ClusterIP of Service `svc`, if it has one.
    pub fn cluster_ip(&self, svc: &PodRef) -> Option<IpAddr> {
        self.services
            .get(svc)
            .and_then(|ips| ips.iter().copied().find(IpAddr::is_ipv4))
    }

    /// A UDP socket inside `pod`'s namespace, bound to an ephemeral IPv4
    /// port: for tests that need one flow (one 5-tuple) across a change.
    pub fn udp_socket(&self, pod: &PodRef) -> Result<std::net::UdpSocket, TestbedError> {
        let w = self.pods.get(pod).ok_or_else(|| TestbedError::Layout {
            reason: format!("pod {}/{} is not in the test bed", pod.namespace, pod.name),
        })?;
        netns::in_netns(&w.netns, || {
            std::net::UdpSocket::bind(SocketAddr::new(IpAddr::V4(Ipv4Addr::UNSPECIFIED), 0))
        })
    }

    /// Where `end` is, reached over the family `v6` selects: (namespace,
    /// address, whether it is an outside host).
    fn locate(&self, end: &End, v6: bool) -> Result<(String, IpAddr, bool), String> {
        match end {
            End::Service(svc) => {
                let ip = self
                    .services
                    .get(svc)
                    .and_then(|ips| ips.iter().find(|ip| ip.is_ipv6() == v6))
                    .ok_or_else(|| {
                        format!("Service {end} has no ClusterIP of the probe's family")
                    })?;
                Ok((self.nodes[0].netns.clone(), *ip, false))
            }
            End::Pod(p) => {
                let w = self
                    .pods
                    .get(p)
                    .ok_or_else(|| format!("pod {end} is not in the test bed"))?;
                if !v6 {
                    return Ok((w.netns.clone(), IpAddr::V4(w.ip), false));
                }
                let ip6 = w.ip6.ok_or_else(|| {
                    format!("pod {end} has no IPv6 address (the test bed is IPv4 only)")
                })?;
                Ok((w.netns.clone(), IpAddr::V6(ip6), false))
            }
            End::Ip(IpAddr::V6(ip)) => {
                if let Some((w, ip6)) = self
                    .layout
                    .pod_by_ip6(*ip)
                    .and_then(|i| self.pods.get(&self.layout.pods[i].pod))
                    .filter(|w| !w.host_network)
                    .and_then(|w| Some((w, w.ip6?)))
                {
                    Ok((w.netns.clone(), IpAddr::V6(ip6), false))
                } else if let Some(w) = self
                    .pods
                    .values()
                    .find(|w| w.ip6 == Some(*ip) && !w.host_network)
                {
                    Ok((w.netns.clone(), IpAddr::V6(*ip), false))
                } else if let Some(n) = self.nodes.iter().find(|n| n.net.gateway6 == Some(*ip)) {
                    Ok((n.netns.clone(), IpAddr::V6(*ip), false))
                } else if let (Some(out), true) =
                    (&self.outside, self.layout.outside6.contains_key(ip))
                {
                    Ok((out.clone(), IpAddr::V6(*ip), true))
                } else {
                    Err(format!(
                        "host {ip} was not set up (only addresses of the probes given at start are)"
                    ))
                }
            }
            End::Ip(IpAddr::V4(ip)) => {
                if let Some(w) = self
                    .layout
                    .pod_by_ip(*ip)
                    .and_then(|i| self.pods.get(&self.layout.pods[i].pod))
                    .filter(|w| !w.host_network)
                {
                    // The pod the manifest gave this address (in kube mode
                    // IPAM may have given it another).
                    Ok((w.netns.clone(), IpAddr::V4(w.ip), false))
                } else if let Some(w) = self.pods.values().find(|w| w.ip == *ip && !w.host_network)
                {
                    Ok((w.netns.clone(), IpAddr::V4(*ip), false))
                } else if let Some(n) = self.nodes.iter().find(|n| n.net.gateway == *ip) {
                    Ok((n.netns.clone(), IpAddr::V4(*ip), false))
                } else if let (Some(out), true) =
                    (&self.outside, self.layout.outside.contains_key(ip))
                {
                    Ok((out.clone(), IpAddr::V4(*ip), true))
                } else {
                    Err(format!(
                        "host {ip} was not set up (only addresses of the probes given at start are)"
                    ))
                }
            }
        }
    }

    fn route(&self, probe: &Probe) -> Result<Route, String> {
        let v6 = probe_family_v6(probe)?;
        let (src_ns, src_ip, outside) = self.locate(&probe.from, v6)?;
        let to = match &probe.to {
            End::Pod(p) => self
                .pod_services
                .get(p)
                .map_or_else(|| probe.to.clone(), |svc| End::Service(svc.clone())),
            other => other.clone(),
        };
        let (_, dst_ip, _) = self.locate(&to, v6)?;
        Ok(Route {
            src_ns,
            bind: outside.then_some(src_ip),
            dst: SocketAddr::new(dst_ip, probe.port),
        })
    }

    /// [`Self::probe`], also collecting the drops every node's agent
    /// reports on its flow stream while the probes run (none when Palisade
    /// is off).
    pub fn probe_collecting_drops(
        &self,
        probes: &[Probe],
    ) -> (Vec<Observation>, Vec<agent_api::FlowRecord>) {
        self.collecting_drops(|| self.probe(probes))
    }

    /// Runs `f`, collecting the drops every node's agent reports on its
    /// flow stream meanwhile (none when Palisade is off).
    pub fn collecting_drops<T>(&self, f: impl FnOnce() -> T) -> (T, Vec<agent_api::FlowRecord>) {
        let drops = std::sync::Arc::new(std::sync::Mutex::new(Vec::new()));
        let sockets: Vec<PathBuf> = self
            .nodes
            .iter()
            .filter_map(|n| n.agent_socket.clone())
            .collect();
        for socket in &sockets {
            let (socket, sink) = (socket.clone(), drops.clone());
            let request = agent_api::Request::Flows {
                pod: None,
                verdict: Some("dropped".into()),
            };
            std::thread::spawn(move || {
                let _ = agent_api::stream_flows(&socket, &request, |r| {
                    sink.lock().map(|mut v| v.push(r)).is_ok()
                });
            });
        }
        if !sockets.is_empty() {
            std::thread::sleep(std::time::Duration::from_millis(200));
        }
        let out = f();
        std::thread::sleep(std::time::Duration::from_millis(300));
        let drops = drops.lock().map(|v| v.clone()).unwrap_or_default();
        (out, drops)
    }

    /// Runs the probes in parallel and returns one observation per probe,
    /// in order. Blocks the calling thread (about one probe timeout when
    /// some are denied); fine to call from inside an async runtime's
    /// blocking section, not from an async task.
    pub fn probe(&self, probes: &[Probe]) -> Vec<Observation> {
        let Some(rt) = &self.runtime else {
            return Vec::new();
        };
        let handle = rt.handle().clone();
        let items: Vec<_> = probes.iter().map(|p| (p.clone(), self.route(p))).collect();
        std::thread::scope(|s| {
            s.spawn(move || prober::run(&handle, items))
                .join()
                .unwrap_or_default()
        })
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

    /// Node 0's agent's log file (palisade on).
    pub fn agent_log(&self) -> Option<&Path> {
        self.nodes[0].agent_log.as_deref()
    }

    /// Installs Palisade on the running bed of
    /// `KubeOptions::agent_after_pods`: starts each node's agent (the pods
    /// are wired and running already, and the chain has no `palisade-cni`)
    /// and waits until it has caught up with the API server. A no-op once
    /// the agents run.
    pub fn start_pending_agents(&mut self) -> Result<(), TestbedError> {
        for agent in std::mem::take(&mut self.pending_agents) {
            agent.start(&self.resources)?;
        }
        self.wait_for_agent_sync()
    }

    /// A TCP connection from pod `from` to `to`'s address on `port` (an
    /// echo server there answers every write), made inside `from`'s
    /// namespace: for tests of connections that outlive a change.
    pub fn connect(
        &self,
        from: &PodRef,
        to: &PodRef,
        port: u16,
    ) -> Result<std::net::TcpStream, TestbedError> {
        let (Some(src), Some(dst)) = (self.pods.get(from), self.pods.get(to)) else {
            return Err(TestbedError::Environment {
                reason: format!("no wired pod {from} or {to}"),
            });
        };
        let addr = SocketAddr::new(IpAddr::V4(dst.ip), port);
        netns::in_netns(&src.netns, || {
            std::net::TcpStream::connect_timeout(&addr, std::time::Duration::from_secs(2))
        })
    }

    /// Stops every node's agent (SIGTERM, as the kubelet stops a pod),
    /// waiting for each to exit; the rest of the bed stays up. Idempotent.
    pub fn stop_agents(&self) {
        self.resources.with(|r| {
            for agent in r.agents.iter_mut() {
                agent.stop();
            }
        });
    }

    /// Restarts every node's agent as it was started (after
    /// [`Self::stop_agents`], or under a running one), waiting until each
    /// answers.
    pub fn restart_agents(&self) -> Result<(), TestbedError> {
        self.resources
            .with(|r| r.agents.iter_mut().try_for_each(Agent::restart))
    }

    /// [`Self::restart_agents`], waiting only until each answers, ready or
    /// not.
    pub fn restart_agents_unready(&self) -> Result<(), TestbedError> {
        self.resources
            .with(|r| r.agents.iter_mut().try_for_each(Agent::restart_unready))
    }

    /// Each node's agent's process id.
    pub fn agent_pids(&self) -> Vec<u32> {
        self.resources
            .with(|r| r.agents.iter().map(Agent::pid).collect())
    }

    /// Each node's agent's answer to `Status` (see [`Agent::status`]).
    pub fn agent_status(&self) -> Vec<Result<(), String>> {
        self.resources
            .with(|r| r.agents.iter().map(Agent::status).collect())
    }

    /// The last `lines` lines of each agent's log ("" when palisade is
    /// off), headed by the node's name on a bed of several nodes.
    pub fn agent_log_tail(&self, lines: usize) -> String {
        let tails: Vec<String> = self
            .nodes
            .iter()
            .filter_map(|n| Some((n, n.agent_log.as_deref()?)))
            .map(|(n, log)| {
                if self.nodes.len() == 1 {
                    log_tail(log, lines)
                } else {
                    format!("--- {} ---\n{}", n.name, log_tail(log, lines))
                }
            })
            .collect();
        tails.join("\n")
    }

    /// Kube mode: the cluster in the control plane (the API server, the
    /// node, the agent's credentials).
    pub fn kube(&self) -> Option<&KubeCluster> {
        self.cluster.as_ref()
    }

    /// Kube mode: a pod created through the API after start, as on a real
    /// node: the Pod object (bound to the node), a namespace wired by CNI
    /// ADD, its status (IPs, Running, Ready), echo servers on its declared
    /// container ports; returns once the agent has applied it. Probes may
    /// name it from then on.
    pub fn add_pod(
        &mut self,
        pod: &k8s_openapi::api::core::v1::Pod,
    ) -> Result<WiredPod, TestbedError> {
        let Some(cluster) = &self.cluster else {
            return Err(TestbedError::Environment {
                reason: "pods can be added only in kube mode".into(),
            });
        };
        let pod_ref = PodRef {
            namespace: pod
                .metadata
                .namespace
                .clone()
                .unwrap_or_else(|| "default".into()),
            name: pod.metadata.name.clone().unwrap_or_default(),
        };
        let name = format!("{}/{}", pod_ref.namespace, pod_ref.name);
        if self.pods.contains_key(&pod_ref) {
            return Err(TestbedError::Layout {
                reason: format!("pod {name} is already in the test bed"),
            });
        }
        let network = self
            .resources
            .with(|r| r.networks.first().cloned())
            .ok_or_else(|| TestbedError::Environment {
                reason: "the test bed has no CNI network".into(),
            })?;
        crate::controlplane::kubelet::create_pod(
            cluster.control_plane(),
            pod,
            &cluster.node().name,
        )?;
        let i = self.added;
        self.added += 1;
        let ns = format!("{}-a{i}", self.id);
        self.resources.with(|r| r.netns.push(ns.clone()));
        netns::create(&ns)?;
        if self.layout.dual_stack() {
            no_dad(&ns)?;
        }
        let container_id = format!("{}-ca{i}", self.id);
        let att = network.add_ips(
            &name,
            &pod_ref.namespace,
            &pod_ref.name,
            &container_id,
            &ns,
            &[],
        )?;
        let (ip, ip6) = (att.ipv4(), att.ipv6());
        self.resources.with(|r| r.attachments.push((0, att)));
        let ip = ip.ok_or_else(|| TestbedError::Cni {
            command: "ADD",
            pod: name.clone(),
            plugin: "bridge".into(),
            message: "the result holds no IPv4 address".into(),
            stderr: String::new(),
        })?;
        let ips: Vec<IpAddr> = [Some(IpAddr::V4(ip)), ip6.map(IpAddr::V6)]
            .into_iter()
            .flatten()
            .collect();
        cluster.pod_running(&pod_ref, &ips, &cluster.node().name)?;
        let ports: std::collections::BTreeSet<u16> = pod
            .spec
            .iter()
            .flat_map(|s| &s.containers)
            .flat_map(|c| c.ports.iter().flatten())
            .filter_map(|p| u16::try_from(p.container_port).ok())
            .collect();
        if let Some(rt) = &self.runtime {
            let any = if self.layout.dual_stack() {
                IpAddr::V6(Ipv6Addr::UNSPECIFIED)
            } else {
                IpAddr::V4(Ipv4Addr::UNSPECIFIED)
            };
            let addrs: Vec<_> = ports.iter().map(|p| (any, *p)).collect();
            echo::serve(rt.handle(), &ns, &addrs)?;
        }
        let wired = WiredPod {
            netns: ns,
            node: 0,
            ip,
            ip6,
            host_network: false,
        };
        self.pods.insert(pod_ref, wired.clone());
        self.wait_for_agent_sync()?;
        Ok(wired)
    }

    /// Kube mode: waits until the agent has applied what the API server
    /// holds now (after changes made through [`Self::kube`]).
    pub fn wait_for_agent_sync(&self) -> Result<(), TestbedError> {
        if self.nodes.len() > 1 {
            self.wait_for_node_devices()?;
        }
        for node in &self.nodes {
            if let (Some(c), Some(log), Some(socket)) =
                (&self.cluster, &node.agent_log, &node.agent_socket)
            {
                c.wait_for_agent(log, socket, KUBE_SYNC_TIMEOUT)?;
            }
        }
        Ok(())
    }

    /// Waits until every running agent has attached its check to the
    /// node's VXLAN device (the bed creates it after the agents start; until
    /// then, Services with backends on other nodes fail closed).
    fn wait_for_node_devices(&self) -> Result<(), TestbedError> {
        let deadline = std::time::Instant::now() + KUBE_SYNC_TIMEOUT;
        let attached = format!("device={}", crate::overlay::VXLAN_IF);
        for log in self.nodes.iter().filter_map(|n| n.agent_log.as_ref()) {
            loop {
                let text = crate::controlplane::sync::strip_ansi(
                    &std::fs::read_to_string(log).unwrap_or_default(),
                );
                if text
                    .lines()
                    .any(|l| l.contains("node device check attached") && l.contains(&attached))
                {
                    break;
                }
                if std::time::Instant::now() > deadline {
                    return Err(TestbedError::Layout {
                        reason: format!(
                            "the agent did not attach to {} within {KUBE_SYNC_TIMEOUT:?}:\n{}",
                            crate::overlay::VXLAN_IF,
                            log_tail(log, 20)
                        ),
                    });
                }
                std::thread::sleep(std::time::Duration::from_millis(100));
            }
        }
        Ok(())
    }

    /// Node 0's agent's CNI socket (palisade on).
    pub fn agent_socket(&self) -> Option<&Path> {
        self.nodes[0].agent_socket.as_deref()
    }
}

/// On several nodes every agent reads the same manifests, so a pod's
/// address is known on the other nodes only when the manifest gives it.
fn require_addresses(snapshot: &Snapshot, layout: &Layout) -> Result<(), TestbedError> {
    for plan in layout.pods.iter().filter(|p| !p.host_network) {
        let ips = snapshot
            .pods
            .get(&plan.pod)
            .map(|p| p.ips.len())
            .unwrap_or(0);
        if plan.requested.is_none() || (layout.dual_stack() && ips < 2) {
            return Err(TestbedError::Layout {
                reason: format!(
                    "pod {}/{}: on several nodes in file mode every pod needs its addresses in \
                     status.podIPs (one of each family on a dual-stack bed): the other nodes' \
                     agents learn them from nothing else",
                    plan.pod.namespace, plan.pod.name
                ),
            });
        }
    }
    Ok(())
}

impl Drop for Testbed {
    fn drop(&mut self) {
        if let Some(rt) = self.runtime.take() {
            rt.shutdown_background();
        }
        self.resources.cleanup();
    }
}

/// Which family a probe runs over: the family of the address it names
/// (`true` = IPv6); IPv4 when both ends are pods. Naming an IPv4 and an
/// IPv6 address in one probe is an error.
pub(crate) fn probe_family_v6(probe: &Probe) -> Result<bool, String> {
    let family = |e: &End| match e {
        End::Ip(ip) => Some(ip.is_ipv6()),
        End::Pod(_) | End::Service(_) => None,
    };
    match (family(&probe.from), family(&probe.to)) {
        (Some(a), Some(b)) if a != b => Err(format!(
            "{} and {} are of different address families",
            probe.from, probe.to
        )),
        (Some(v6), _) | (None, Some(v6)) => Ok(v6),
        (None, None) => Ok(false),
    }
}

/// The link-local address of the node's end of the outside link: the
/// outside hosts' IPv6 default gateway.
const OUTSIDE_GATEWAY6: Ipv6Addr = Ipv6Addr::new(0xfe80, 0, 0, 0, 0, 0, 0, 1);

/// Connects the outside namespace to the node by a veth (`out0` on the
/// node, `eth0` outside) holding every outside address as a /32 (IPv4) or
/// /128 (IPv6); the node routes each to it, answers ARP for the pods (proxy
/// ARP) and is the outside hosts' IPv6 default gateway at `fe80::1`. No NAT.
fn wire_outside(
    node: &str,
    outside: &str,
    addrs: impl Iterator<Item = Ipv4Addr>,
    addrs6: impl Iterator<Item = Ipv6Addr>,
) -> Result<(), TestbedError> {
    netns::create(outside)?;
    let addrs6: Vec<Ipv6Addr> = addrs6.collect();
    if !addrs6.is_empty() {
        no_dad(outside)?;
    }
    ip_in(
        node,
        &[
            "link",
            "add",
            OUTSIDE_LINK,
            "type",
            "veth",
            "peer",
            "name",
            "eth0",
            "netns",
            outside,
        ],
    )?;
    ip_in(node, &["link", "set", OUTSIDE_LINK, "up"])?;
    sysctl_in(node, "net.ipv4.conf.out0.proxy_arp=1")?;
    // Proxy ARP answers after a random delay of up to 0.8 s by default.
    sysctl_in(node, "net.ipv4.neigh.out0.proxy_delay=0")?;
    ip_in(outside, &["link", "set", "eth0", "up"])?;
    for ip in addrs {
        let host = format!("{ip}/32");
        ip_in(outside, &["addr", "add", &host, "dev", "eth0"])?;
        ip_in(node, &["route", "add", &host, "dev", OUTSIDE_LINK])?;
    }
    ip_in(outside, &["route", "add", "default", "dev", "eth0"])?;
    if !addrs6.is_empty() {
        let gw = format!("{OUTSIDE_GATEWAY6}/64");
        ip_in(
            node,
            &["-6", "addr", "add", &gw, "dev", OUTSIDE_LINK, "nodad"],
        )?;
        for ip in &addrs6 {
            let host = format!("{ip}/128");
            ip_in(
                outside,
                &["-6", "addr", "add", &host, "dev", "eth0", "nodad"],
            )?;
            ip_in(node, &["-6", "route", "add", &host, "dev", OUTSIDE_LINK])?;
        }
        let gw = OUTSIDE_GATEWAY6.to_string();
        ip_in(
            outside,
            &["-6", "route", "add", "default", "via", &gw, "dev", "eth0"],
        )?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::layout::{self, tests::snapshot};
    use crate::probe::parse_probes;

    /// A bed for `snapshot` serving what `probes` need.
    fn start(probes: &[Probe], snapshot: &Snapshot) -> Testbed {
        Testbed::start_with_snapshot(
            TestbedOptions {
                probes: probes.to_vec(),
                ..Default::default()
            },
            snapshot,
        )
        .unwrap()
    }

    #[test]
    fn plain_bridge_end_to_end() {
        let snapshot = snapshot(&[
            ("prod/db", Some("10.244.1.10"), &[3306]),
            ("prod/api", Some("10.244.1.11"), &[8080]),
            ("dev/api", Some("10.244.2.11"), &[8080]),
            ("dev/dyn", None, &[80]),
        ]);
        let probes = parse_probes(
            r#"{"from": "prod/api", "to": "prod/db", "port": 3306, "allowed": true}
{"from": "dev/api", "to": "prod/db", "port": 3306, "protocol": "UDP", "allowed": true}
{"from": "203.0.113.10", "to": "prod/db", "port": 3306, "allowed": true}
{"from": "prod/db", "to": "203.0.113.10", "port": 80, "allowed": true}
{"from": "prod/db", "to": "203.0.113.11", "port": 443, "protocol": "UDP", "allowed": true}
{"from": "dev/dyn", "to": "prod/api", "port": 8080, "allowed": true}
{"from": "prod/api", "to": "dev/dyn", "port": 80, "allowed": true}
{"from": "prod/api", "to": "prod/db", "port": 9, "protocol": "SCTP", "allowed": false}"#,
            Path::new("t"),
        )
        .unwrap();
        let bed = start(&probes, &snapshot);
        let t0 = std::time::Instant::now();
        let seen = bed.probe(&probes);
        eprintln!("{}", crate::report::table(&seen));
        assert_eq!(crate::report::mismatches(&seen), 0);
        assert_eq!(seen[7].allowed, None);
        // A port nobody serves is refused quickly: the test can fail.
        let closed = parse_probes(
            r#"{"from": "prod/api", "to": "prod/db", "port": 3307, "allowed": true}"#,
            Path::new("t"),
        )
        .unwrap();
        assert_eq!(bed.probe(&closed)[0].allowed, Some(false));
        eprintln!("probing took {:?}", t0.elapsed());
        let node = bed.node_netns().to_string();
        drop(bed);
        assert!(!netns::netns_path(&node).exists());
    }

    #[test]
    fn probe_family_follows_the_named_address() {
        let probes = parse_probes(
            r#"{"from": "a/x", "to": "a/y", "port": 80}
{"from": "a/x", "to": "fd00::1", "port": 80}
{"from": "2001:db8::1", "to": "a/y", "port": 80}
{"from": "192.0.2.1", "to": "a/y", "port": 80}
{"from": "192.0.2.1", "to": "fd00::1", "port": 80}"#,
            Path::new("t"),
        )
        .unwrap();
        let fam: Vec<_> = probes.iter().map(probe_family_v6).collect();
        assert_eq!(fam[..4], [Ok(false), Ok(true), Ok(true), Ok(false)]);
        assert!(fam[4].is_err());
    }

    #[test]
    fn plain_bridge_dual_stack_end_to_end() {
        let mut snapshot = snapshot(&[
            ("prod/db", Some("10.244.1.10"), &[3306]),
            ("dev/api", Some("10.244.1.11"), &[8080]),
            ("dev/dyn", None, &[80]),
        ]);
        for (p, ip) in [
            ("prod/db", "fd00:10:244::10"),
            ("dev/api", "fd00:10:244::11"),
        ] {
            let p: PodRef = p.parse().unwrap();
            snapshot
                .pods
                .get_mut(&p)
                .unwrap()
                .ips
                .push(ip.parse().unwrap());
        }
        let probes = parse_probes(
            r#"{"from": "dev/api", "to": "fd00:10:244::10", "port": 3306, "allowed": true}
{"from": "dev/api", "to": "fd00:10:244::10", "port": 3306, "protocol": "UDP", "allowed": true}
{"from": "dev/api", "to": "prod/db", "port": 3306, "allowed": true}
{"from": "fd00:10:244::10", "to": "dev/api", "port": 8080, "allowed": true}
{"from": "2001:db8::10", "to": "prod/db", "port": 3306, "allowed": true}
{"from": "2001:db8::10", "to": "prod/db", "port": 3306, "protocol": "UDP", "allowed": true}
{"from": "prod/db", "to": "2001:db8::11", "port": 443, "allowed": true}
{"from": "dev/dyn", "to": "fd00:10:244::11", "port": 8080, "allowed": true}
{"from": "203.0.113.10", "to": "prod/db", "port": 3306, "allowed": true}
{"from": "192.0.2.1", "to": "fd00:10:244::10", "port": 3306}"#,
            Path::new("t"),
        )
        .unwrap();
        let bed = start(&probes, &snapshot);
        assert!(bed.dual_stack());
        let db = &bed.pods()[&"prod/db".parse().unwrap()];
        assert_eq!(db.ip6, Some("fd00:10:244::10".parse().unwrap()));
        let dyn_pod = &bed.pods()[&"dev/dyn".parse().unwrap()];
        let dyn6 = dyn_pod.ip6.expect("IPAM gives every pod an IPv6 address");
        assert!(layout::in_subnet6(dyn6, bed.pod_subnet6().unwrap()));
        let t0 = std::time::Instant::now();
        let seen = bed.probe(&probes);
        eprintln!("{}", crate::report::table(&seen));
        eprintln!("probing took {:?}", t0.elapsed());
        assert_eq!(crate::report::mismatches(&seen), 0);
        assert!(seen[..9].iter().all(|o| o.allowed.is_some()));
        // Mixed families cannot run.
        assert_eq!(seen[9].allowed, None, "{}", seen[9].detail);
        // A port nobody serves is refused over IPv6 too: the test can fail.
        let closed = parse_probes(
            r#"{"from": "fd00:10:244::10", "to": "dev/api", "port": 8081}"#,
            Path::new("t"),
        )
        .unwrap();
        let closed = bed.probe(&closed);
        assert_eq!(closed[0].allowed, Some(false), "{}", closed[0].detail);
    }
}
