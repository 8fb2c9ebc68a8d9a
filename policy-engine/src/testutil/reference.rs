//! A reference evaluation of NetworkPolicies, straight from the policies:
//! no identities, no compiled maps, no lookup model. The property tests
//! and the fuzz targets compare the simulated (compiled + looked up)
//! verdicts with it, so it must stay independent of `compile` and
//! `lookup`.

use std::net::IpAddr;

use ipnet::IpNet;

use crate::model::{Direction, Peer, PodInfo, PodRef, Policy, PortRef, Protocol, Rule, Snapshot};
use crate::tools::probe::End;

fn net_contains(net: &IpNet, ip: IpAddr) -> bool {
    match (net, ip) {
        (IpNet::V4(n), IpAddr::V4(a)) => n.contains(&a),
        (IpNet::V6(n), IpAddr::V6(a)) => n.contains(&a),
        _ => false,
    }
}

/// Who the peer is: a pod (with its namespace labels) or just an address.
struct PeerView<'a> {
    pod: Option<(&'a PodRef, &'a PodInfo)>,
    ip: IpAddr,
}

fn peer_matches(s: &Snapshot, policy_ns: &str, peer: &Peer, who: &PeerView) -> bool {
    match peer {
        Peer::IpBlock(b) => {
            net_contains(&b.cidr, who.ip) && !b.except.iter().any(|e| net_contains(e, who.ip))
        }
        Peer::Pods { namespaces, pods } => {
            let Some((r, info)) = who.pod else {
                return false;
            };
            let ns_ok = match namespaces {
                None => r.namespace == policy_ns,
                Some(sel) => sel.matches(&s.namespace_labels(&r.namespace)),
            };
            ns_ok && pods.as_ref().is_none_or(|sel| sel.matches(&info.labels))
        }
    }
}

fn port_matches(rule: &Rule, dest: Option<&PodInfo>, proto: Protocol, port: u16) -> bool {
    rule.ports.is_empty()
        || rule.ports.iter().any(|p| {
            p.protocol == proto
                && match (&p.port, p.end_port) {
                    (None, _) => true,
                    (Some(PortRef::Number(n)), None) => *n == port,
                    (Some(PortRef::Number(n)), Some(e)) => *n <= port && port <= e,
                    (Some(PortRef::Name(name)), _) => dest.is_some_and(|d| {
                        d.ports.iter().any(|cp| {
                            cp.name.as_deref() == Some(name)
                                && cp.protocol == proto
                                && cp.port == port
                        })
                    }),
                }
        })
}

fn selecting<'a>(s: &'a Snapshot, pod: &PodRef, info: &PodInfo, dir: Direction) -> Vec<&'a Policy> {
    s.policies
        .iter()
        .filter(|(r, p)| {
            r.namespace == pod.namespace
                && p.rules(dir).is_some()
                && p.pod_selector
                    .as_ref()
                    .is_none_or(|sel| sel.matches(&info.labels))
        })
        .map(|(_, p)| p)
        .collect()
}

/// One direction's question: does `pod` (as `dir`'s end) accept `peer`?
struct Question<'a> {
    dir: Direction,
    peer: PeerView<'a>,
    dest: Option<&'a PodInfo>,
    proto: Protocol,
    port: u16,
}

fn direction_allows(s: &Snapshot, pod: &PodRef, info: &PodInfo, q: &Question) -> bool {
    let pols = selecting(s, pod, info, q.dir);
    pols.is_empty()
        || pols.iter().any(|p| {
            p.is_valid()
                && p.rules(q.dir).unwrap_or_default().iter().any(|rule| {
                    (rule.peers.is_empty()
                        || rule
                            .peers
                            .iter()
                            .any(|pe| peer_matches(s, &pod.namespace, pe, &q.peer)))
                        && port_matches(rule, q.dest, q.proto, q.port)
                })
        })
}

/// Whether the policies of `s` let `from` reach `to` on `port`/`proto`:
/// `None` when the packet cannot be sent as written (no address family
/// both ends have, a pod not in the snapshot). Services are outside this
/// reference: an end that names one gives `None` as well, so callers
/// compare only probes between pods and addresses.
pub fn reference(s: &Snapshot, from: &End, to: &End, proto: Protocol, port: u16) -> Option<bool> {
    type Resolved<'a> = (Option<(&'a PodRef, &'a PodInfo)>, Vec<IpAddr>);
    let resolve = |e: &End| -> Option<Resolved<'_>> {
        match e {
            End::Pod(r) => {
                let (r, i) = s.pods.get_key_value(r)?;
                Some((Some((r, i)), i.ips.clone()))
            }
            End::Ip(ip) => Some((s.pods.iter().find(|(_, i)| i.ips.contains(ip)), vec![*ip])),
            End::Service(_) => None,
        }
    };
    let (src, src_ips) = resolve(from)?;
    let (dst, dst_ips) = resolve(to)?;
    let (sip, dip) = [true, false].into_iter().find_map(|v4| {
        let a = src_ips.iter().find(|i| i.is_ipv4() == v4)?;
        let b = dst_ips.iter().find(|i| i.is_ipv4() == v4)?;
        Some((*a, *b))
    })?;
    let dest = dst.map(|(_, i)| i);
    let egress = src.is_none_or(|(r, i)| {
        let q = Question {
            dir: Direction::Egress,
            peer: PeerView { pod: dst, ip: dip },
            dest,
            proto,
            port,
        };
        direction_allows(s, r, i, &q)
    });
    let ingress = dst.is_none_or(|(r, i)| {
        let q = Question {
            dir: Direction::Ingress,
            peer: PeerView { pod: src, ip: sip },
            dest,
            proto,
            port,
        };
        direction_allows(s, r, i, &q)
    });
    Some(egress && ingress)
}
