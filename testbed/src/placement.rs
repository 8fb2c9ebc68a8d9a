//! Which node each pod lives on, and each node's pod subnet, on a test bed
//! of several nodes laid out as Flannel lays out a cluster: the cluster
//! network 10.244.0.0/16 cut into one /24 per node (node `i` gets
//! 10.244.i.0/24, its bridge 10.244.i.1, its VXLAN device 10.244.i.0), and
//! on a dual-stack bed fd00:10:244::/56 cut into one /64 per node
//! (fd00:10:244:i::/64, bridge `::1`).
//!
//! A pod goes to the node its manifest names (`spec.nodeName`), else to the
//! node whose subnet holds the address it asks for (`status.podIP`), else to
//! the node with the fewest pods so far. A pod whose address lies outside
//! its node's subnet, or on an address the node keeps for itself, is bad
//! input.

use std::collections::BTreeMap;
use std::net::{Ipv4Addr, Ipv6Addr};

use crate::error::TestbedError;
use crate::layout::{in_subnet, in_subnet6, PodPlan};
use crate::probe::PodRef;

/// The cluster network the node subnets are cut from (Flannel's default).
pub const CLUSTER_CIDR: (Ipv4Addr, u8) = (Ipv4Addr::new(10, 244, 0, 0), 16);
/// The IPv6 cluster network of a dual-stack bed of several nodes.
pub const CLUSTER_CIDR6: (Ipv6Addr, u8) = (Ipv6Addr::new(0xfd00, 0x10, 0x244, 0, 0, 0, 0, 0), 56);
/// At most this many nodes (one /24 of the /16 each, and names fit).
pub const MAX_NODES: usize = 16;

/// One node's name and pod network.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct NodeNet {
    /// Its name (`node0`, `node1`, ...): what `spec.nodeName` refers to.
    pub name: String,
    /// Its pod subnet (network address, prefix length).
    pub subnet: (Ipv4Addr, u8),
    /// Its bridge's address: the pods' gateway and the node's address.
    pub gateway: Ipv4Addr,
    /// Its IPv6 pod subnet on a dual-stack bed.
    pub subnet6: Option<(Ipv6Addr, u8)>,
    /// Its bridge's IPv6 address on a dual-stack bed.
    pub gateway6: Option<Ipv6Addr>,
}

/// The name of node `i`.
pub fn node_name(i: usize) -> String {
    format!("node{i}")
}

/// Node `i`'s IPv4 pod subnet.
pub fn node_subnet(i: usize) -> (Ipv4Addr, u8) {
    let [a, b, ..] = CLUSTER_CIDR.0.octets();
    (Ipv4Addr::new(a, b, i as u8, 0), 24)
}

/// Node `i`'s IPv6 pod subnet.
pub fn node_subnet6(i: usize) -> (Ipv6Addr, u8) {
    let net = u128::from(CLUSTER_CIDR6.0) | ((i as u128) << 64);
    (Ipv6Addr::from(net), 64)
}

/// The address node `i`'s VXLAN device holds (the network address of its
/// subnet, as flanneld assigns it): the next hop the other nodes route
/// node `i`'s pods through.
pub fn vtep_addr(i: usize) -> Ipv4Addr {
    node_subnet(i).0
}

/// The IPv6 address node `i`'s IPv6 VXLAN device holds.
pub fn vtep_addr6(i: usize) -> Ipv6Addr {
    node_subnet6(i).0
}

fn bad(reason: String) -> TestbedError {
    TestbedError::Layout { reason }
}

/// The nodes' networks for `count` nodes (dual-stack when `dual`).
pub fn node_nets(count: usize, dual: bool) -> Vec<NodeNet> {
    (0..count)
        .map(|i| {
            let subnet = node_subnet(i);
            let subnet6 = dual.then(|| node_subnet6(i));
            NodeNet {
                name: node_name(i),
                subnet,
                gateway: Ipv4Addr::from(u32::from(subnet.0) + 1),
                subnet6,
                gateway6: subnet6.map(|(net, _)| Ipv6Addr::from(u128::from(net) + 1)),
            }
        })
        .collect()
}

/// Places `pods` (in order) on `nodes`: sets each plan's `node`. `bound`
/// holds the nodes the manifests name. Fails on a node name the bed does
/// not have, on an address outside the pod's node's subnet or reserved by
/// the node, and when a node has no room left.
pub fn place(
    pods: &mut [PodPlan],
    nodes: &[NodeNet],
    bound: &BTreeMap<PodRef, String>,
) -> Result<(), TestbedError> {
    let mut load = vec![0usize; nodes.len()];
    let names: Vec<&str> = nodes.iter().map(|n| n.name.as_str()).collect();
    for plan in pods.iter_mut() {
        let pod = format!("{}/{}", plan.pod.namespace, plan.pod.name);
        let by_name = match bound.get(&plan.pod) {
            Some(name) => Some(names.iter().position(|n| n == name).ok_or_else(|| {
                bad(format!(
                    "pod {pod}: spec.nodeName {name:?} is not a node of the test bed ({})",
                    names.join(", ")
                ))
            })?),
            None => None,
        };
        let by_ip = plan
            .requested
            .and_then(|ip| nodes.iter().position(|n| in_subnet(ip, n.subnet)))
            .or_else(|| {
                let ip = plan.requested6?;
                nodes
                    .iter()
                    .position(|n| n.subnet6.is_some_and(|s| in_subnet6(ip, s)))
            });
        let least = (0..nodes.len()).min_by_key(|&i| (load[i], i)).unwrap_or(0);
        let i = by_name.or(by_ip).unwrap_or(least);
        let node = &nodes[i];
        if let Some(ip) = plan.requested {
            let (net, prefix) = node.subnet;
            if !in_subnet(ip, node.subnet) {
                return Err(bad(format!(
                    "pod {pod}: status.podIP {ip} is outside the pod subnet {net}/{prefix} of {}, \
                     its node",
                    node.name
                )));
            }
            let broadcast = Ipv4Addr::from(u32::from(net) | (u32::MAX >> prefix));
            if ip == net || ip == node.gateway || ip == broadcast {
                return Err(bad(format!(
                    "pod {pod}: status.podIP {ip} is reserved on {} (its VXLAN device, bridge or \
                     broadcast address)",
                    node.name
                )));
            }
        }
        if let (Some(ip), Some(s6)) = (plan.requested6, node.subnet6) {
            if !in_subnet6(ip, s6) || Some(ip) == node.gateway6 || ip == s6.0 {
                return Err(bad(format!(
                    "pod {pod}: IPv6 address {ip} is outside the IPv6 pod subnet {}/{} of {} or \
                     reserved there",
                    s6.0, s6.1, node.name
                )));
            }
        }
        if !plan.host_network {
            load[i] += 1;
            if load[i] > 250 {
                return Err(bad(format!("too many pods for {}", node.name)));
            }
        }
        plan.node = i;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::BTreeSet;

    fn plan(pod: &str, ip: Option<&str>) -> PodPlan {
        PodPlan {
            pod: pod.parse().unwrap(),
            requested: ip.map(|i| i.parse().unwrap()),
            requested6: None,
            host_network: false,
            ports: BTreeSet::new(),
            node: usize::MAX,
        }
    }

    #[test]
    fn node_networks_follow_flannel() {
        let nets = node_nets(2, true);
        assert_eq!(nets[1].name, "node1");
        assert_eq!(nets[1].subnet, (Ipv4Addr::new(10, 244, 1, 0), 24));
        assert_eq!(nets[1].gateway, Ipv4Addr::new(10, 244, 1, 1));
        assert_eq!(vtep_addr(1), Ipv4Addr::new(10, 244, 1, 0));
        assert_eq!(
            nets[1].subnet6,
            Some(("fd00:10:244:1::".parse().unwrap(), 64))
        );
        assert_eq!(nets[0].gateway6, Some("fd00:10:244::1".parse().unwrap()));
    }

    #[test]
    fn pods_go_by_name_then_address_then_load() {
        let nets = node_nets(2, false);
        let mut pods = vec![
            plan("a/named", Some("10.244.1.5")),
            plan("a/addr", Some("10.244.1.6")),
            plan("a/free1", None),
            plan("a/free2", None),
            plan("a/free3", None),
        ];
        let bound = BTreeMap::from([("a/named".parse().unwrap(), "node1".to_string())]);
        place(&mut pods, &nets, &bound).unwrap();
        let nodes: Vec<usize> = pods.iter().map(|p| p.node).collect();
        assert_eq!(nodes, [1, 1, 0, 0, 0]);
    }

    #[test]
    fn misplaced_addresses_and_unknown_nodes_are_bad_input() {
        let nets = node_nets(2, false);
        let bound = BTreeMap::from([("a/x".parse().unwrap(), "node0".to_string())]);
        let err = place(&mut [plan("a/x", Some("10.244.1.5"))], &nets, &bound).unwrap_err();
        assert!(
            err.is_bad_input() && err.to_string().contains("outside"),
            "{err}"
        );
        let err = place(
            &mut [plan("a/x", Some("10.9.0.5"))],
            &nets,
            &BTreeMap::new(),
        )
        .unwrap_err();
        assert!(err.to_string().contains("10.244.0.0/24"), "{err}");
        let err = place(
            &mut [plan("a/x", Some("10.244.0.1"))],
            &nets,
            &BTreeMap::new(),
        )
        .unwrap_err();
        assert!(err.to_string().contains("reserved"), "{err}");
        let bound = BTreeMap::from([("a/x".parse().unwrap(), "kind-worker".to_string())]);
        let err = place(&mut [plan("a/x", None)], &nets, &bound).unwrap_err();
        assert!(err.to_string().contains("kind-worker"), "{err}");
    }
}
