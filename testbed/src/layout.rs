//! How a cluster snapshot and its probes are laid out on one node: the pod
//! subnet and gateway, which pods are wired and with which address, which
//! outside hosts exist, and which ports every namespace serves.
//!
//! On a bed of several nodes every node has a /24 of its own (see
//! [`crate::placement`]) and each pod plan says which node it is on; a
//! one-node bed's subnet is the smallest covering the pods' addresses.
//!
//! Dual-stack when the cluster or the probes use IPv6: any pod with an
//! IPv6 address in `status.podIPs`, or any probe naming an IPv6 address,
//! adds an IPv6 range (the smallest prefix of at most /64 covering the
//! pods' IPv6 addresses, else [`DEFAULT_SUBNET6`]) to the same host-local
//! IPAM; every wired pod then gets an address of each family. Otherwise the
//! layout is IPv4 only, exactly as before.

use std::collections::{BTreeMap, BTreeSet};
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

use crate::error::TestbedError;
use crate::placement::{self, NodeNet, CLUSTER_CIDR, MAX_NODES};
use crate::probe::{End, PodRef, Probe, Snapshot};

/// The widest subnet used when no pod asks for an address.
const DEFAULT_SUBNET: (Ipv4Addr, u8) = (Ipv4Addr::new(10, 244, 0, 0), 24);
/// Pod subnets are never narrower than this (room for IPAM-assigned pods).
const MAX_PREFIX: u8 = 24;
/// The IPv6 pod range used when no pod has an IPv6 address (a ULA range,
/// never a documentation prefix: those are for outside hosts).
pub const DEFAULT_SUBNET6: (Ipv6Addr, u8) = (Ipv6Addr::new(0xfd00, 0x10, 0x244, 0, 0, 0, 0, 0), 64);
/// IPv6 pod subnets are never narrower than this.
const MAX_PREFIX6: u8 = 64;

/// A pod to wire.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PodPlan {
    /// The pod.
    pub pod: PodRef,
    /// The IPv4 address requested from IPAM (`status.podIP`), if any.
    pub requested: Option<Ipv4Addr>,
    /// The IPv6 address requested from IPAM (from `status.podIPs`), if any
    /// (only used when the layout is dual-stack).
    pub requested6: Option<Ipv6Addr>,
    /// hostNetwork pods are not wired: they share the node's namespace.
    pub host_network: bool,
    /// Ports to serve (TCP and UDP echo on each).
    pub ports: BTreeSet<u16>,
    /// Index of its node in [`Layout::nodes`].
    pub node: usize,
}

/// The whole layout.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Layout {
    /// The nodes and their pod networks (one on a one-node bed).
    pub nodes: Vec<NodeNet>,
    /// Pods, those with a requested address first (so that IPAM hands out
    /// the free ones around them).
    pub pods: Vec<PodPlan>,
    /// Outside hosts: address → ports served there.
    pub outside: BTreeMap<Ipv4Addr, BTreeSet<u16>>,
    /// Outside IPv6 hosts: address → ports served there.
    pub outside6: BTreeMap<Ipv6Addr, BTreeSet<u16>>,
    /// Ports served in every node namespace (for hostNetwork pods).
    pub node_ports: BTreeSet<u16>,
}

fn mask(prefix: u8) -> u32 {
    if prefix == 0 {
        0
    } else {
        u32::MAX << (32 - prefix)
    }
}

pub(crate) fn in_subnet(ip: Ipv4Addr, (net, prefix): (Ipv4Addr, u8)) -> bool {
    u32::from(ip) & mask(prefix) == u32::from(net)
}

fn mask6(prefix: u8) -> u128 {
    if prefix == 0 {
        0
    } else {
        u128::MAX << (128 - prefix)
    }
}

pub(crate) fn in_subnet6(ip: Ipv6Addr, (net, prefix): (Ipv6Addr, u8)) -> bool {
    u128::from(ip) & mask6(prefix) == u128::from(net)
}

impl Layout {
    /// Lays out `snapshot` on one node so that every probe can run.
    pub fn new(snapshot: &Snapshot, probes: &[Probe]) -> Result<Self, TestbedError> {
        Self::on_nodes(snapshot, probes, 1, true)
    }

    /// Lays out `snapshot` on `count` nodes so that every probe can run;
    /// a pod's `spec.nodeName` says which node it is on (ignored on one
    /// node, where every pod is on the only node).
    ///
    /// `by_address`: a pod without `spec.nodeName` goes to the node whose
    /// subnet holds its manifest address (file mode, where that address is
    /// the pod's); otherwise to the least loaded node (kube mode, where
    /// IPAM on the node picks the address).
    pub fn on_nodes(
        snapshot: &Snapshot,
        probes: &[Probe],
        count: usize,
        by_address: bool,
    ) -> Result<Self, TestbedError> {
        if !(1..=MAX_NODES).contains(&count) {
            return Err(TestbedError::Layout {
                reason: format!("{count} nodes: the test bed runs 1 to {MAX_NODES}"),
            });
        }
        let mut pods: Vec<PodPlan> = Vec::new();
        for (pod, info) in &snapshot.pods {
            let v4 = info.ips.iter().find_map(|ip| match ip {
                IpAddr::V4(v4) => Some(*v4),
                IpAddr::V6(_) => None,
            });
            let v6 = info.ips.iter().find_map(|ip| match ip {
                IpAddr::V6(v6) => Some(*v6),
                IpAddr::V4(_) => None,
            });
            let wired = !info.host_network;
            pods.push(PodPlan {
                pod: pod.clone(),
                requested: v4.filter(|_| wired),
                requested6: v6.filter(|_| wired),
                host_network: info.host_network,
                ports: info.ports.iter().map(|p| p.port).collect(),
                node: 0,
            });
        }
        // Pods asking for addresses first, so that IPAM hands out the free
        // ones around them.
        pods.sort_by_key(|p| {
            (
                p.requested.is_none() && p.requested6.is_none(),
                p.requested.is_none(),
                p.requested,
                p.requested6,
                p.pod.clone(),
            )
        });

        let requested: BTreeSet<Ipv4Addr> = pods.iter().filter_map(|p| p.requested).collect();
        let mut seen = BTreeMap::new();
        for p in &pods {
            if let Some(ip) = p.requested {
                if let Some(other) = seen.insert(ip, &p.pod) {
                    return Err(TestbedError::Layout {
                        reason: format!(
                            "pods {}/{} and {}/{} both have IP {ip}",
                            other.namespace, other.name, p.pod.namespace, p.pod.name
                        ),
                    });
                }
            }
        }
        let requested6: BTreeSet<Ipv6Addr> = pods.iter().filter_map(|p| p.requested6).collect();
        let mut seen6 = BTreeMap::new();
        for p in &pods {
            if let Some(ip) = p.requested6 {
                if let Some(other) = seen6.insert(ip, &p.pod) {
                    return Err(TestbedError::Layout {
                        reason: format!(
                            "pods {}/{} and {}/{} both have IP {ip}",
                            other.namespace, other.name, p.pod.namespace, p.pod.name
                        ),
                    });
                }
            }
        }
        let dual = !requested6.is_empty()
            || probes.iter().any(|p| {
                [&p.from, &p.to]
                    .iter()
                    .any(|e| matches!(e, End::Ip(IpAddr::V6(_))))
            });
        let nodes = if count == 1 {
            vec![one_node(&pods, &requested, &requested6, dual)?]
        } else {
            let nodes = placement::node_nets(count, dual);
            let bound: BTreeMap<PodRef, String> = snapshot
                .pods
                .iter()
                .filter_map(|(r, p)| Some((r.clone(), p.node.clone()?)))
                .collect();
            if by_address {
                placement::place(&mut pods, &nodes, &bound)?;
            } else {
                let asked: Vec<_> = pods
                    .iter_mut()
                    .map(|p| (p.requested.take(), p.requested6.take()))
                    .collect();
                placement::place(&mut pods, &nodes, &bound)?;
                for (p, (v4, v6)) in pods.iter_mut().zip(asked) {
                    (p.requested, p.requested6) = (v4, v6);
                }
            }
            nodes
        };
        let in_pod_subnet = |ip: Ipv4Addr| {
            nodes.iter().any(|n| in_subnet(ip, n.subnet))
                || (count > 1 && in_subnet(ip, CLUSTER_CIDR))
        };
        let in_pod_subnet6 = |ip: Ipv6Addr| {
            nodes
                .iter()
                .find_map(|n| n.subnet6.filter(|s6| in_subnet6(ip, *s6)))
                .or_else(|| {
                    (count > 1 && dual && in_subnet6(ip, placement::CLUSTER_CIDR6))
                        .then_some(placement::CLUSTER_CIDR6)
                })
        };
        let node_of_v4 = |ip: Ipv4Addr| nodes.iter().any(|n| n.gateway == ip);
        let node_of_v6 = |ip: Ipv6Addr| nodes.iter().any(|n| n.gateway6 == Some(ip));
        let mut layout = Layout {
            nodes: nodes.clone(),
            pods,
            outside: BTreeMap::new(),
            outside6: BTreeMap::new(),
            node_ports: BTreeSet::new(),
        };
        for probe in probes {
            for end in [&probe.from, &probe.to] {
                if let End::Ip(IpAddr::V4(ip)) = end {
                    if layout.pod_by_ip(*ip).is_none() && !node_of_v4(*ip) {
                        if in_pod_subnet(*ip) {
                            return Err(TestbedError::Layout {
                                reason: format!(
                                    "probe {probe}: outside address {ip} lies in the pod network ({})",
                                    layout.pod_networks()
                                ),
                            });
                        }
                        layout.outside.entry(*ip).or_default();
                    }
                }
                if let End::Ip(IpAddr::V6(ip)) = end {
                    if layout.pod_by_ip6(*ip).is_none() && !node_of_v6(*ip) {
                        if let Some(s6) = in_pod_subnet6(*ip) {
                            return Err(TestbedError::Layout {
                                reason: format!(
                                    "probe {probe}: outside address {ip} lies in the IPv6 pod subnet {}/{}",
                                    s6.0, s6.1
                                ),
                            });
                        }
                        layout.outside6.entry(*ip).or_default();
                    }
                }
            }
            match &probe.to {
                End::Pod(pod) => layout.serve_on_pod(pod, probe.port),
                End::Service(svc) => {
                    let info = snapshot.services.get(svc);
                    let sp = info.and_then(|i| i.port(probe.port, probe.protocol));
                    if let Some(sp) = sp {
                        for b in snapshot.backends(svc, sp) {
                            if let Some(pod) = &b.pod {
                                layout.serve_on_pod(pod, b.port);
                            }
                        }
                    }
                }
                End::Ip(IpAddr::V4(ip)) => {
                    let ip = *ip;
                    if let Some(i) = layout.pod_by_ip(ip) {
                        let pod = layout.pods[i].pod.clone();
                        layout.serve_on_pod(&pod, probe.port);
                    } else if node_of_v4(ip) {
                        layout.node_ports.insert(probe.port);
                    } else {
                        layout.outside.entry(ip).or_default().insert(probe.port);
                    }
                }
                End::Ip(IpAddr::V6(ip)) => {
                    let ip = *ip;
                    if let Some(i) = layout.pod_by_ip6(ip) {
                        let pod = layout.pods[i].pod.clone();
                        layout.serve_on_pod(&pod, probe.port);
                    } else if node_of_v6(ip) {
                        layout.node_ports.insert(probe.port);
                    } else {
                        layout.outside6.entry(ip).or_default().insert(probe.port);
                    }
                }
            }
        }
        let host_ports: Vec<u16> = layout
            .pods
            .iter()
            .filter(|p| p.host_network)
            .flat_map(|p| p.ports.iter().copied())
            .collect();
        layout.node_ports.extend(host_ports);
        Ok(layout)
    }

    fn serve_on_pod(&mut self, pod: &PodRef, port: u16) {
        if let Some(p) = self.pods.iter_mut().find(|p| &p.pod == pod) {
            if p.host_network {
                self.node_ports.insert(port);
            } else {
                p.ports.insert(port);
            }
        }
    }

    /// Index of the pod that requested `ip`.
    pub fn pod_by_ip(&self, ip: Ipv4Addr) -> Option<usize> {
        self.pods.iter().position(|p| p.requested == Some(ip))
    }

    /// Index of the pod that requested the IPv6 address `ip`.
    pub fn pod_by_ip6(&self, ip: Ipv6Addr) -> Option<usize> {
        self.pods.iter().position(|p| p.requested6 == Some(ip))
    }

    /// Whether pods get an IPv6 address too.
    pub fn dual_stack(&self) -> bool {
        self.nodes.iter().any(|n| n.subnet6.is_some())
    }

    /// The node a one-node bed has, or node 0 of a bed of several.
    pub fn first_node(&self) -> &NodeNet {
        &self.nodes[0]
    }

    /// The pod subnets, for messages (`10.244.0.0/24, 10.244.1.0/24`).
    fn pod_networks(&self) -> String {
        let nets: Vec<String> = self
            .nodes
            .iter()
            .map(|n| format!("{}/{}", n.subnet.0, n.subnet.1))
            .collect();
        nets.join(", ")
    }
}

/// The only node of a one-node bed: the smallest subnet covering the
/// requested addresses, its first free address as the gateway.
fn one_node(
    pods: &[PodPlan],
    requested: &BTreeSet<Ipv4Addr>,
    requested6: &BTreeSet<Ipv6Addr>,
    dual: bool,
) -> Result<NodeNet, TestbedError> {
    let (subnet6, gateway6) = if dual {
        let subnet6 = covering_subnet6(requested6);
        let first = u128::from(subnet6.0) + 1;
        let last = u128::from(subnet6.0) | !mask6(subnet6.1);
        let gateway6 = (first..last)
            .take(requested6.len() + 1)
            .map(Ipv6Addr::from)
            .find(|ip| !requested6.contains(ip))
            .ok_or_else(|| TestbedError::Layout {
                reason: format!(
                    "no free address for the IPv6 gateway in {}/{}",
                    subnet6.0, subnet6.1
                ),
            })?;
        (Some(subnet6), Some(gateway6))
    } else {
        (None, None)
    };
    let subnet = covering_subnet(requested);
    let gateway = ((u32::from(subnet.0) + 1)..(u32::from(subnet.0) | !mask(subnet.1)))
        .map(Ipv4Addr::from)
        .find(|ip| !requested.contains(ip))
        .ok_or_else(|| TestbedError::Layout {
            reason: format!(
                "no free address for the gateway in {}/{}",
                subnet.0, subnet.1
            ),
        })?;
    let hosts = (1u64 << (32 - subnet.1)).saturating_sub(3);
    if (pods.iter().filter(|p| !p.host_network).count() as u64) > hosts {
        return Err(TestbedError::Layout {
            reason: format!("too many pods for {}/{}", subnet.0, subnet.1),
        });
    }
    Ok(NodeNet {
        name: placement::node_name(0),
        subnet,
        gateway,
        subnet6,
        gateway6,
    })
}

/// The smallest subnet (at most /64) holding every requested IPv6 address.
fn covering_subnet6(ips: &BTreeSet<Ipv6Addr>) -> (Ipv6Addr, u8) {
    let (Some(first), Some(last)) = (ips.first(), ips.last()) else {
        return DEFAULT_SUBNET6;
    };
    let (a, b) = (u128::from(*first), u128::from(*last));
    let mut prefix = MAX_PREFIX6;
    while prefix > 0 && a & mask6(prefix) != b & mask6(prefix) {
        prefix -= 1;
    }
    (Ipv6Addr::from(a & mask6(prefix)), prefix)
}

/// The smallest subnet (at most /24) holding every requested address.
fn covering_subnet(ips: &BTreeSet<Ipv4Addr>) -> (Ipv4Addr, u8) {
    let (Some(first), Some(last)) = (ips.first(), ips.last()) else {
        return DEFAULT_SUBNET;
    };
    let (a, b) = (u32::from(*first), u32::from(*last));
    let mut prefix = MAX_PREFIX;
    while prefix > 0 && a & mask(prefix) != b & mask(prefix) {
        prefix -= 1;
    }
    (Ipv4Addr::from(a & mask(prefix)), prefix)
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use crate::probe::Protocol;
    use policy_engine::model::{ContainerPort, PodInfo};

    /// A snapshot of `namespace/name` pods with an optional address and
    /// TCP container ports.
    pub(crate) fn snapshot(pods: &[(&str, Option<&str>, &[u16])]) -> Snapshot {
        let mut s = Snapshot::default();
        for (name, ip, ports) in pods {
            let (ns, n) = name.split_once('/').unwrap();
            s.pods.insert(
                PodRef {
                    namespace: ns.into(),
                    name: n.into(),
                },
                PodInfo {
                    ips: ip.iter().map(|i| i.parse().unwrap()).collect(),
                    ports: ports
                        .iter()
                        .map(|p| ContainerPort {
                            name: None,
                            port: *p,
                            protocol: Protocol::Tcp,
                        })
                        .collect(),
                    ..Default::default()
                },
            );
        }
        s
    }

    #[test]
    fn subnet_covers_all_requested_and_gateway_is_free() {
        let s = snapshot(&[
            ("prod/db", Some("10.244.1.10"), &[3306]),
            ("prod/api", Some("10.244.1.11"), &[8080]),
            ("dev/api", Some("10.244.2.11"), &[8080]),
            ("dev/x", None, &[]),
        ]);
        let l = Layout::new(&s, &[]).unwrap();
        assert_eq!(l.nodes[0].subnet, (Ipv4Addr::new(10, 244, 0, 0), 22));
        assert_eq!(l.nodes[0].gateway, Ipv4Addr::new(10, 244, 0, 1));
        assert_eq!(l.pods.last().unwrap().pod.name, "x");

        let s = snapshot(&[
            ("a/a", Some("10.244.0.1"), &[]),
            ("a/b", Some("10.244.0.2"), &[]),
        ]);
        let l = Layout::new(&s, &[]).unwrap();
        assert_eq!(l.nodes[0].subnet, (Ipv4Addr::new(10, 244, 0, 0), 24));
        assert_eq!(l.nodes[0].gateway, Ipv4Addr::new(10, 244, 0, 3));
    }

    #[test]
    fn probes_add_outside_hosts_and_served_ports() {
        let s = snapshot(&[("default/a", Some("10.244.0.10"), &[80])]);
        let probes = crate::probe::parse_probes(
            r#"{"from": "192.0.2.10", "to": "default/a", "port": 8080}
{"from": "default/a", "to": "192.0.2.10", "port": 443}
{"from": "default/a", "to": "10.244.0.10", "port": 9000, "protocol": "UDP"}"#,
            std::path::Path::new("t"),
        )
        .unwrap();
        let l = Layout::new(&s, &probes).unwrap();
        assert_eq!(l.pods[0].ports, BTreeSet::from([80, 8080, 9000]));
        assert_eq!(
            l.outside,
            BTreeMap::from([(Ipv4Addr::new(192, 0, 2, 10), BTreeSet::from([443]))])
        );
    }

    #[test]
    fn ipv4_only_clusters_stay_ipv4_only() {
        let s = snapshot(&[("default/a", Some("10.244.0.10"), &[80])]);
        let l = Layout::new(&s, &[]).unwrap();
        assert!(!l.dual_stack());
        assert_eq!((l.nodes[0].subnet6, l.nodes[0].gateway6), (None, None));
    }

    #[test]
    fn ipv6_pod_addresses_make_it_dual_stack() {
        let mut s = snapshot(&[
            ("default/a", Some("10.244.0.10"), &[80]),
            ("default/b", Some("10.244.0.11"), &[80]),
            ("default/c", None, &[80]),
        ]);
        for (name, ip) in [("a", "fd00:10:244::1"), ("b", "fd00:10:244::2:b")] {
            let pod = PodRef {
                namespace: "default".into(),
                name: name.into(),
            };
            s.pods.get_mut(&pod).unwrap().ips.push(ip.parse().unwrap());
        }
        let probes = crate::probe::parse_probes(
            r#"{"from": "2001:db8::10", "to": "default/a", "port": 8080}
{"from": "default/a", "to": "2001:db8::11", "port": 443, "protocol": "UDP"}
{"from": "default/a", "to": "fd00:10:244::2:b", "port": 9000}"#,
            std::path::Path::new("t"),
        )
        .unwrap();
        let l = Layout::new(&s, &probes).unwrap();
        assert!(l.dual_stack());
        assert_eq!(
            l.nodes[0].subnet6,
            Some(("fd00:10:244::".parse().unwrap(), 64))
        );
        // ::1 is taken by pod a.
        assert_eq!(l.nodes[0].gateway6, Some("fd00:10:244::2".parse().unwrap()));
        assert_eq!(
            l.pods[0].requested6,
            Some("fd00:10:244::1".parse().unwrap())
        );
        assert_eq!(l.pods[2].pod.name, "c");
        assert_eq!(
            l.outside6,
            BTreeMap::from([
                ("2001:db8::10".parse().unwrap(), BTreeSet::new()),
                ("2001:db8::11".parse().unwrap(), BTreeSet::from([443])),
            ])
        );
        assert!(l.pods[1].ports.contains(&9000), "{:?}", l.pods[1]);
        assert!(l.outside.is_empty());

        // A probe naming an IPv6 address alone makes an IPv4 cluster dual-stack.
        let s = snapshot(&[("default/a", Some("10.244.0.10"), &[80])]);
        let l = Layout::new(&s, &probes[..1]).unwrap();
        assert_eq!(l.nodes[0].subnet6, Some(DEFAULT_SUBNET6));
        assert_eq!(l.nodes[0].gateway6, Some("fd00:10:244::1".parse().unwrap()));

        // An outside address inside the IPv6 pod range is bad input.
        let bad = crate::probe::parse_probes(
            r#"{"from": "fd00:10:244::99", "to": "default/a", "port": 80}"#,
            std::path::Path::new("t"),
        )
        .unwrap();
        assert!(Layout::new(&s, &bad).unwrap_err().is_bad_input());
    }

    #[test]
    fn two_nodes_get_a_subnet_each_and_pods_spread() {
        let s = snapshot(&[
            ("a/x", Some("10.244.1.10"), &[80]),
            ("a/y", None, &[80]),
            ("a/z", None, &[80]),
        ]);
        let probes = crate::probe::parse_probes(
            r#"{"from": "a/y", "to": "10.244.1.1", "port": 10250}
{"from": "a/y", "to": "192.0.2.1", "port": 443}"#,
            std::path::Path::new("t"),
        )
        .unwrap();
        let l = Layout::on_nodes(&s, &probes, 2, true).unwrap();
        assert_eq!(l.nodes.len(), 2);
        assert_eq!(l.nodes[1].subnet, (Ipv4Addr::new(10, 244, 1, 0), 24));
        let node: BTreeMap<String, usize> = l
            .pods
            .iter()
            .map(|p| (p.pod.name.clone(), p.node))
            .collect();
        assert_eq!(node["x"], 1);
        assert_eq!(node["y"], 0);
        assert_eq!(
            node["z"], 0,
            "fewest pods: node 0 has one, node 1 one, ties go low"
        );
        // Node 1's bridge address is a node address, not an outside host.
        assert!(l.node_ports.contains(&10250));
        assert_eq!(l.outside.len(), 1);
        // The rest of the cluster network is not "outside" either.
        let bad = crate::probe::parse_probes(
            r#"{"from": "10.244.7.9", "to": "a/x", "port": 80}"#,
            std::path::Path::new("t"),
        )
        .unwrap();
        let err = Layout::on_nodes(&s, &bad, 2, true).unwrap_err();
        assert!(err.is_bad_input(), "{err}");
        assert!(Layout::on_nodes(&s, &[], 0, true).is_err());
    }

    #[test]
    fn outside_address_in_pod_subnet_is_bad_input() {
        let s = snapshot(&[("default/a", Some("10.244.0.10"), &[80])]);
        let probes = crate::probe::parse_probes(
            r#"{"from": "10.244.0.99", "to": "default/a", "port": 80}"#,
            std::path::Path::new("t"),
        )
        .unwrap();
        let err = Layout::new(&s, &probes).unwrap_err();
        assert!(err.is_bad_input(), "{err}");
    }
}
