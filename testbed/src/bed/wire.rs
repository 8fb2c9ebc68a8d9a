//! Wiring the bed's network: the nodes joined by the overlay, each pod's
//! namespace through its node's CNI chain, and the outside hosts.

use std::collections::BTreeMap;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

use super::{WiredPod, OUTSIDE_LINK};
use crate::cleanup::Tracked;
use crate::cni::Network;
use crate::controlplane::cluster::KubeCluster;
use crate::error::TestbedError;
use crate::layout::Layout;
use crate::netns::{self, ip_in, sysctl_in};
use crate::node::{no_dad, BedNode};
use crate::overlay;
use crate::probe::{PodRef, Snapshot};

/// On several nodes every agent reads the same manifests, so a pod's
/// address is known on the other nodes only when the manifest gives it.
pub(super) fn require_addresses(snapshot: &Snapshot, layout: &Layout) -> Result<(), TestbedError> {
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

/// Joins several nodes as Flannel's vxlan backend joins them: each node
/// plugged into the underlay namespace `underlay`, the VXLAN device, and
/// every peer learnt.
pub(super) fn join_nodes(
    underlay: &str,
    nodes: &[BedNode],
    dual: bool,
    kube: bool,
    resources: &Tracked,
) -> Result<(), TestbedError> {
    resources.with(|r| r.netns.push(underlay.to_string()));
    overlay::create_underlay(underlay)?;
    // In kube mode each node's eth0 joins the control plane.
    let ifname = if kube {
        overlay::KUBE_UNDERLAY_IF
    } else {
        overlay::UNDERLAY_IF
    };
    for (i, node) in nodes.iter().enumerate() {
        overlay::plug_node(underlay, &node.netns, i, dual, ifname)?;
        overlay::attach_node(&node.netns, i, overlay::underlay(i, dual), ifname)?;
    }
    for (i, node) in nodes.iter().enumerate() {
        for (j, peer) in nodes.iter().enumerate().filter(|(j, _)| *j != i) {
            overlay::learn_peer(&node.netns, j, overlay::underlay(j, dual), &peer.net)?;
        }
    }
    Ok(())
}

/// Wires each pod of `layout` through its node's CNI chain (hostNetwork
/// pods share their node's namespace); in kube mode creates each Pod
/// object first and reports it running after.
pub(super) fn wire_pods(
    id: &str,
    layout: &Layout,
    nodes: &[BedNode],
    networks: &[Network],
    cluster: Option<&KubeCluster>,
    manifest_addresses: bool,
    resources: &Tracked,
) -> Result<BTreeMap<PodRef, WiredPod>, TestbedError> {
    let mut pods = BTreeMap::new();
    for (i, plan) in layout.pods.iter().enumerate() {
        let name = format!("{}/{}", plan.pod.namespace, plan.pod.name);
        let node = &nodes[plan.node];
        if let Some(c) = cluster {
            c.create_pod(&plan.pod, &node.name)?;
        }
        if plan.host_network {
            if let Some(c) = cluster {
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
        if cluster.is_some() && !manifest_addresses {
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
            return Err(no_address(&name, "IPv6 address on a dual-stack bed"));
        }
        let ip = ip.ok_or_else(|| no_address(&name, "IPv4 address"))?;
        if let Some(c) = cluster {
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
    Ok(pods)
}

/// The outside hosts' namespace, wired to the node (one node) or to the
/// underlay (several), when some probe names an outside host.
pub(super) fn outside(
    id: &str,
    layout: &Layout,
    nodes: &[BedNode],
    underlay: &str,
    resources: &Tracked,
) -> Result<Option<String>, TestbedError> {
    let count = nodes.len();
    Ok(if layout.outside.is_empty() && layout.outside6.is_empty() {
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
            overlay::wire_outside(underlay, &ns, &on_nodes, &v4, &v6)?;
        } else {
            wire_outside(
                &nodes[0].netns,
                &ns,
                layout.outside.keys().copied(),
                layout.outside6.keys().copied(),
            )?;
        }
        Some(ns)
    })
}

/// CNI ADD of pod `name` answered without `what` (an address the bed needs).
pub(super) fn no_address(name: &str, what: &str) -> TestbedError {
    TestbedError::Cni {
        command: "ADD",
        pod: name.to_string(),
        plugin: "bridge".into(),
        message: format!("the result holds no {what}"),
        stderr: String::new(),
    }
}
