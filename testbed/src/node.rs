//! One node of the test bed: its network namespace (forwarding on), the
//! CNI network its pods are wired through (bridge `cni0` + host-local over
//! the node's pod subnet, `palisade-cni` chained when enabled) and, with
//! Palisade, its own agent (socket, bpffs folder and log of its own).

use std::net::IpAddr;
use std::path::{Path, PathBuf};

use crate::agent::{Agent, AgentPaths, AgentSource};
use crate::cleanup::Tracked;
use crate::cni::{self, Network};
use crate::controlplane::cluster::{KubeCluster, KubeOptions};
use crate::error::TestbedError;
use crate::netns::{self, sysctl_in};
use crate::placement::NodeNet;
use crate::{AGENT_BINARY, BPFFS_ROOT};

/// A node as the test bed keeps it.
#[derive(Clone, Debug)]
pub struct BedNode {
    /// Its name (`node0`, ...), what `spec.nodeName` refers to.
    pub name: String,
    /// Its network namespace (the bridge `cni0` and the agent live there).
    pub netns: String,
    /// Its pod network.
    pub net: NodeNet,
    /// Its agent's log file (Palisade on).
    pub agent_log: Option<PathBuf>,
    /// Its agent's CNI socket (Palisade on).
    pub agent_socket: Option<PathBuf>,
    /// Its agent's bpffs folder (Palisade on).
    pub bpffs_dir: Option<PathBuf>,
}

/// What starting a node needs from the bed.
pub(crate) struct NodeSpec<'a> {
    /// The bed's id (prefix of every name it creates).
    pub id: &'a str,
    /// Index of the node.
    pub index: usize,
    /// Its pod network.
    pub net: &'a NodeNet,
    /// The bed's state folder.
    pub state_dir: &'a Path,
    /// Palisade on: the folder holding the binaries; `None`: plain bridge.
    pub palisade: Option<&'a Path>,
    /// The folder holding the CNI plugins besides the system's.
    pub bin_dir: &'a Path,
    /// Manifests the agent reads.
    pub manifests: &'a [PathBuf],
    /// Extra arguments of the agent.
    pub agent_args: &'a [String],
    /// MTU of the pods' interfaces (`None`: the bridge plugin's default).
    pub mtu: Option<u32>,
    /// Kube mode: join this node to a real control plane started for it
    /// (or to `join`'s), and run its agent `--kube` as Palisade's
    /// ServiceAccount.
    pub kube: Option<&'a KubeOptions>,
    /// Kube mode, nodes after the first: the cluster node 0 started.
    pub join: Option<&'a KubeCluster>,
}

/// The namespace of node `i` of bed `id` (node 0 keeps the one-node name).
pub(crate) fn netns_name(id: &str, i: usize) -> String {
    if i == 0 {
        format!("{id}-node")
    } else {
        format!("{id}-node{i}")
    }
}

/// Turns duplicate address detection off in namespace `ns` (for links made
/// later), so that IPv6 addresses are usable at once instead of staying
/// "tentative" (failing bind and connect) for a second or two.
pub(crate) fn no_dad(ns: &str) -> Result<(), TestbedError> {
    sysctl_in(ns, "net.ipv6.conf.all.accept_dad=0")?;
    sysctl_in(ns, "net.ipv6.conf.default.accept_dad=0")
}

/// Creates the node's namespace and, with Palisade, starts its agent;
/// returns the node, the CNI network to wire its pods through and, in kube
/// mode, the cluster it joined. Everything made is registered in
/// `resources` (the cluster stops when dropped).
/// An agent to start once the pods are wired (see
/// `KubeOptions::agent_after_pods`).
#[derive(Debug)]
pub(crate) struct PendingAgent {
    paths: AgentPaths,
    netns: String,
    source: AgentSource,
    node_addrs: Vec<String>,
    args: Vec<String>,
}

impl PendingAgent {
    /// Starts it and registers it in `resources`.
    pub(crate) fn start(self, resources: &Tracked) -> Result<(), TestbedError> {
        let agent = Agent::start(
            self.paths,
            &self.netns,
            &self.source,
            &self.node_addrs,
            &self.args,
        )?;
        resources.with(|r| r.agents.push(agent));
        Ok(())
    }
}

/// What [`start`] made.
pub(crate) type Started = (BedNode, Network, Option<KubeCluster>, Option<PendingAgent>);

pub(crate) fn start(spec: &NodeSpec<'_>, resources: &Tracked) -> Result<Started, TestbedError> {
    let netns = netns_name(spec.id, spec.index);
    resources.with(|r| r.netns.push(netns.clone()));
    netns::create(&netns)?;
    sysctl_in(&netns, "net.ipv4.ip_forward=1")?;
    let dual = spec.net.subnet6.is_some();
    if dual {
        sysctl_in(&netns, "net.ipv6.conf.all.forwarding=1")?;
        no_dad(&netns)?;
    }
    let (net, len) = spec.net.subnet;
    let pod_cidr = format!("{net}/{len}");
    let cluster = match (spec.kube, spec.join) {
        (Some(k), None) => Some(KubeCluster::start(
            k,
            &netns,
            &spec.net.name,
            &pod_cidr,
            spec.manifests,
        )?),
        _ => None,
    };
    let joined = match spec.join {
        Some(c) => Some(c.join_node(&netns, &spec.net.name, &pod_cidr)?),
        None => None,
    };
    // The node's address on the control plane's underlay, and how its agent
    // reads the cluster.
    let kube_node: Option<(IpAddr, AgentSource)> = match (&cluster, spec.join, &joined) {
        (Some(c), _, _) => Some((IpAddr::V4(c.node().addr), c.agent_source())),
        (None, Some(c), Some(link)) => {
            Some((IpAddr::V4(link.addr), c.agent_source_for(&spec.net.name)))
        }
        _ => None,
    };
    // Node 0 keeps the one-node bed's file names.
    let dir = if spec.index == 0 {
        spec.state_dir.to_path_buf()
    } else {
        spec.state_dir.join(&spec.net.name)
    };
    std::fs::create_dir_all(&dir).map_err(|source| TestbedError::Io {
        path: dir.clone(),
        source,
    })?;
    let mut node = BedNode {
        name: spec.net.name.clone(),
        netns: netns.clone(),
        net: spec.net.clone(),
        agent_log: None,
        agent_socket: None,
        bpffs_dir: None,
    };
    let mut pending = None;
    if let Some(bin_dir) = spec.palisade {
        let suffix = if spec.index == 0 {
            String::new()
        } else {
            format!("-{}", spec.net.name)
        };
        let paths = AgentPaths {
            binary: bin_dir.join(AGENT_BINARY),
            socket: dir.join("cni.sock"),
            bpffs_dir: Path::new(BPFFS_ROOT).join(format!("palisade-tb-{}{suffix}", spec.id)),
            log: dir.join("agent.log"),
        };
        // A leftover of a dead process with our pid: not to be adopted.
        let _ = std::fs::remove_dir_all(&paths.bpffs_dir);
        resources.with(|r| r.dirs.push(paths.bpffs_dir.clone()));
        let node_addrs: Vec<String> = [Some(IpAddr::V4(spec.net.gateway))]
            .into_iter()
            .chain([spec.net.gateway6.map(IpAddr::V6)])
            .chain([kube_node.as_ref().map(|(addr, _)| *addr)])
            .flatten()
            .map(|a| a.to_string())
            .collect();
        let source = match &kube_node {
            Some((_, source)) => source.clone(),
            None => AgentSource::Manifests(spec.manifests.to_vec()),
        };
        let later = PendingAgent {
            paths: paths.clone(),
            netns: netns.clone(),
            source,
            node_addrs,
            args: {
                // As the DaemonSet says on a Flannel node: the overlay
                // devices, attached once the bed creates them.
                let mut args = spec.agent_args.to_vec();
                if spec.mtu.is_some() {
                    for dev in [crate::overlay::VXLAN_IF, crate::overlay::VXLAN6_IF] {
                        args.extend(["--node-device".to_string(), dev.to_string()]);
                    }
                }
                // Where outside hosts' packets arrive: the underlay link on
                // several nodes, the outside host's veth on one.
                let external = match (spec.mtu.is_some(), spec.kube.is_some()) {
                    (true, true) => crate::overlay::KUBE_UNDERLAY_IF,
                    (true, false) => crate::overlay::UNDERLAY_IF,
                    (false, _) => crate::bed::OUTSIDE_LINK,
                };
                args.extend(["--external-device".to_string(), external.to_string()]);
                args
            },
        };
        if spec.kube.is_some_and(|k| k.agent_after_pods) {
            pending = Some(later);
        } else {
            later.start(resources)?;
        }
        node.agent_log = Some(paths.log);
        node.agent_socket = Some(paths.socket);
        node.bpffs_dir = Some(paths.bpffs_dir);
    }
    let mut conflist = cni::conflist_dual(
        spec.id,
        spec.net.subnet,
        spec.net.gateway,
        spec.net.subnet6.zip(spec.net.gateway6),
        &dir,
        // Not chained while the agent is not there yet (installed later).
        node.agent_socket.as_deref().filter(|_| pending.is_none()),
    );
    if let Some(mtu) = spec.mtu {
        conflist["plugins"][0]["mtu"] = mtu.into();
    }
    let network = Network {
        conflist,
        cni_path: vec![
            PathBuf::from(cni::SYSTEM_CNI_DIR),
            spec.bin_dir.to_path_buf(),
        ],
        node_netns: netns,
    };
    resources.with(|r| r.networks.push(network.clone()));
    Ok((node, network, cluster, pending))
}
