//! The service-related parts of the compiled state: which addresses are
//! Service ClusterIPs, which addresses belong to local endpoints, and which
//! ClusterIPs an egress-isolated endpoint may reach when their translated
//! packets are judged nowhere else.
//!
//! kube-proxy translates a ClusterIP in netfilter, after the sending pod's
//! own hook has seen the packet. So that hook must not judge a packet to a
//! ClusterIP on the ClusterIP: the datapath lets it on as *deferred*, and
//! the hook that sees it translated — the backend's host-side veth for a
//! local backend — judges the sender's egress there, on the backend's
//! address and port, finding the sender's endpoint through `local_addrs`.
//! A ClusterIP is therefore never itself matched against an ipBlock.
//!
//! A Service with a backend on another node is deferred only where the
//! node's overlay device carries the check too (`Config` flag
//! `NODE_HOOK`); without it an egress-isolated pod's packet to it is
//! dropped at the pod's hook (fail closed), since no hook of this node
//! would see the translated packet. Each ClusterIP carries
//! `service_flags::ALL_LOCAL` when every backend is a local endpoint.
//!
//! A backend that is no pod's address (a node: the API server, a
//! hostNetwork pod; an address outside the cluster, from Endpoints written
//! by hand) is never seen translated by any hook: the packet is delivered
//! to the node's own stack or leaves through the node's uplink. Such a
//! ClusterIP carries `service_flags::AT_SENDER` and a Service id, and the
//! sender's hook judges the packet to the ClusterIP itself: on an allow
//! entry (direction `service_flags::POLICY_DIR`, identity the Service id,
//! the ClusterIP's protocol and port) written here for each local
//! endpoint whose egress allows *every* backend that port can translate to
//! (every backend of the ClusterIP's family, judged on its address and
//! target port exactly as the datapath judges a packet to it). Which
//! backend kube-proxy picks is not visible at that hook, so a Service whose
//! backends the endpoint may reach only in part is denied as a whole
//! (fail closed). Whether an address is a pod's is taken from the pods'
//! own addresses, never from an Endpoints `targetRef`, which whoever writes
//! the Endpoints chooses.

use std::collections::{BTreeMap, BTreeSet, HashSet};
use std::net::IpAddr;

use policy_common::{dir, ep_flags, service_flags, Addr, PolicyValue};

use crate::lookup;
use crate::model::addr::to_addr;
use crate::model::{PodRef, ServiceRef, Snapshot};
use crate::state::{MapState, PolicyEntry, PortMatch};

/// Fills `state.services` and `state.local_addrs` from `snapshot` for the
/// local `endpoints`.
pub fn fill(snapshot: &Snapshot, endpoints: &BTreeMap<PodRef, u32>, state: &mut MapState) {
    state.local_addrs = endpoints
        .iter()
        .filter_map(|(r, ep)| snapshot.pods.get(r).map(|p| (p, *ep)))
        .filter(|(p, _)| !p.host_network)
        .flat_map(|(p, ep)| p.ips.iter().map(move |ip| (to_addr(*ip), ep)))
        .collect();
    state.services = BTreeMap::new();
    let mut pod_ips: Option<HashSet<IpAddr>> = None;
    let mut at_sender: Vec<Addr> = Vec::new();
    for (r, info) in &snapshot.services {
        if info.cluster_ips.is_empty() {
            continue;
        }
        let mut all_local = true;
        let mut hidden = false;
        for sp in &info.ports {
            for b in snapshot.backends(r, sp) {
                let local = state.local_addrs.contains_key(&to_addr(b.ip));
                all_local &= local;
                if !local {
                    let pods = pod_ips.get_or_insert_with(|| pod_addresses(snapshot));
                    hidden |= !pods.contains(&b.ip);
                }
            }
        }
        let flags = if hidden {
            service_flags::AT_SENDER
        } else if all_local {
            service_flags::ALL_LOCAL
        } else {
            0
        };
        for ip in &info.cluster_ips {
            state.services.insert(to_addr(*ip), flags);
            if hidden {
                at_sender.push(to_addr(*ip));
            }
        }
    }
    // Ids in address order: the same set of ClusterIPs always gets the
    // same ids, whatever order the Services came in.
    at_sender.sort_unstable();
    let mut taken = BTreeSet::new();
    for addr in at_sender {
        let id = service_id(&addr, &taken);
        taken.insert(id);
        if let Some(v) = state.services.get_mut(&addr) {
            *v |= id << service_flags::ID_SHIFT;
        }
    }
}

/// The addresses of every pod that is not hostNetwork: the backends whose
/// translated packets a Palisade hook sees (a pod's veth, or the overlay).
fn pod_addresses(snapshot: &Snapshot) -> HashSet<IpAddr> {
    snapshot
        .pods
        .values()
        .filter(|p| !p.host_network)
        .flat_map(|p| p.ips.iter().copied())
        .collect()
}

/// A Service id for `addr` not in `taken`: a hash of the address in
/// `1..MAX_ID`, the next free one on a collision.
fn service_id(addr: &Addr, taken: &BTreeSet<u32>) -> u32 {
    let mut h: u32 = 0x811c_9dc5;
    for b in addr {
        h ^= u32::from(*b);
        h = h.wrapping_mul(0x0100_0193);
    }
    let span = service_flags::MAX_ID - 1;
    let mut id = h % span + 1;
    while taken.contains(&id) {
        id = id % span + 1;
    }
    id
}

/// The allow entries of the ClusterIPs judged at the sender
/// (`service_flags::AT_SENDER` in `state.services`): one per egress-isolated
/// local endpoint (`state.local_addrs`, `state.endpoints`), ClusterIP and
/// Service port whose every backend of the ClusterIP's family the
/// endpoint's egress allows in `state` (its ipcache, prefixes and allow
/// entries, as the datapath would judge a packet to that backend).
pub fn sender_entries(snapshot: &Snapshot, state: &MapState) -> BTreeMap<PolicyEntry, PolicyValue> {
    let mut out = BTreeMap::new();
    let hidden: Vec<(Addr, u32)> = state
        .services
        .iter()
        .filter(|(_, v)| **v & service_flags::AT_SENDER != 0)
        .map(|(a, v)| (*a, service_flags::id(*v)))
        .collect();
    if hidden.is_empty() {
        return out;
    }
    let isolated: BTreeSet<u32> = state
        .local_addrs
        .values()
        .copied()
        .filter(|ep| {
            state
                .endpoints
                .get(ep)
                .is_some_and(|f| f & ep_flags::ISOLATED_EGRESS != 0)
        })
        .collect();
    if isolated.is_empty() {
        return out;
    }
    for (r, info) in &snapshot.services {
        for ip in &info.cluster_ips {
            let Some((_, id)) = hidden.iter().find(|(a, _)| *a == to_addr(*ip)) else {
                continue;
            };
            add_service(snapshot, state, r, *ip, *id, &isolated, &mut out);
        }
    }
    out
}

fn add_service(
    snapshot: &Snapshot,
    state: &MapState,
    r: &ServiceRef,
    cluster_ip: IpAddr,
    id: u32,
    isolated: &BTreeSet<u32>,
    out: &mut BTreeMap<PolicyEntry, PolicyValue>,
) {
    let Some(info) = snapshot.services.get(r) else {
        return;
    };
    for sp in &info.ports {
        let backends: Vec<_> = snapshot
            .backends(r, sp)
            .into_iter()
            .filter(|b| b.ip.is_ipv4() == cluster_ip.is_ipv4())
            .collect();
        if backends.is_empty() {
            // kube-proxy rejects what it cannot translate.
            continue;
        }
        let proto = sp.protocol.number();
        for ep in isolated {
            let allowed = backends
                .iter()
                .all(|b| lookup::verdict(state, *ep, dir::EGRESS, b.ip, proto, b.port).allowed);
            if allowed {
                let entry = PolicyEntry {
                    ep_id: *ep,
                    dir: service_flags::POLICY_DIR,
                    identity: id,
                    ports: PortMatch::Ports {
                        proto,
                        port: sp.port,
                        prefix_len: 16,
                    },
                };
                out.insert(entry, PolicyValue::default());
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::compile::{compile, Allocator, Engine};
    use crate::manifest::{load_str, Loaded};

    const CLUSTER: &str = "
kind: Pod
metadata: {name: a, namespace: x, labels: {app: a}}
status: {podIP: 10.0.0.1, podIPs: [{ip: 10.0.0.1}, {ip: 'fd00::1'}]}
---
kind: Pod
metadata: {name: b, namespace: x, labels: {app: b}}
status: {podIP: 10.0.0.2}
---
kind: Service
metadata: {name: a, namespace: x}
spec: {clusterIP: 10.96.0.1, clusterIPs: [10.96.0.1, 'fd00:96::1'], selector: {app: a}, ports: [{port: 80}]}
";

    fn snapshot(text: &str) -> Snapshot {
        let mut l = Loaded::default();
        load_str(text, std::path::Path::new("c.yaml"), &mut l).unwrap();
        l.snapshot
    }

    #[test]
    fn cluster_ips_and_local_addresses() {
        let s = snapshot(CLUSTER);
        let eps = BTreeMap::from([(PodRef::new("x", "a"), 7)]);
        let c = compile(&s, &eps, &mut Allocator::new());
        let ip = |t: &str| to_addr(t.parse().unwrap());
        assert_eq!(
            c.state.services,
            BTreeMap::from([
                (ip("10.96.0.1"), service_flags::ALL_LOCAL),
                (ip("fd00:96::1"), service_flags::ALL_LOCAL)
            ])
        );
        // b's pod is not local: a Service in front of it is not all local.
        let mut s = s;
        s.upsert_service(&serde_json::from_value(serde_json::json!({
            "metadata": {"name": "b", "namespace": "x"},
            "spec": {"clusterIP": "10.96.0.2", "selector": {"app": "b"}, "ports": [{"port": 80}]}
        })).unwrap()).unwrap();
        let c = compile(&s, &eps, &mut Allocator::new());
        assert_eq!(c.state.services[&ip("10.96.0.2")], 0);
        assert_eq!(
            c.state.local_addrs,
            BTreeMap::from([(ip("10.0.0.1"), 7), (ip("fd00::1"), 7)])
        );
    }

    #[test]
    fn engine_follows_service_and_pod_changes() {
        let mut s = snapshot(CLUSTER);
        let eps = BTreeMap::from([(PodRef::new("x", "a"), 7), (PodRef::new("x", "b"), 8)]);
        let mut e = Engine::new();
        e.update(&s, &eps);
        s.remove_service(&PodRef::new("x", "a"));
        let ops = e.service_changed(&s);
        assert_eq!(ops.len(), 2, "{ops:?}");
        s.set_pod_ips(&PodRef::new("x", "b"), vec!["10.0.0.9".parse().unwrap()]);
        e.pod_changed(&s, &PodRef::new("x", "b"));
        let full = compile(&s, &eps, &mut e.allocator().clone());
        assert_eq!(e.current().state, full.state);
    }
    /// a (egress denied to all), b (egress not isolated), both local; the
    /// `kubernetes` Service on a node address, `db` a selector-less Service
    /// on an outside host whose Endpoints name pod b as their target, and
    /// `mixed` with a pod backend and an outside one.
    const HIDDEN: &str = "
kind: Pod
metadata: {name: a, namespace: x, labels: {app: a}}
status: {podIP: 10.0.0.1}
---
kind: Pod
metadata: {name: b, namespace: x, labels: {app: b}}
status: {podIP: 10.0.0.2}
---
kind: NetworkPolicy
metadata: {name: deny, namespace: x}
spec: {podSelector: {matchLabels: {app: a}}, policyTypes: [Egress]}
---
kind: Service
metadata: {name: kubernetes, namespace: default}
spec: {clusterIP: 10.96.0.1, ports: [{name: https, port: 443, targetPort: 6443}]}
---
kind: Endpoints
metadata: {name: kubernetes, namespace: default}
subsets: [{addresses: [{ip: 192.168.0.10}], ports: [{name: https, port: 6443}]}]
---
kind: Service
metadata: {name: db, namespace: x}
spec: {clusterIP: 10.96.0.5, ports: [{port: 5432}]}
---
kind: Endpoints
metadata: {name: db, namespace: x}
subsets: [{addresses: [{ip: 203.0.113.5, targetRef: {kind: Pod, name: b}}], ports: [{port: 5432}]}]
---
kind: Service
metadata: {name: mixed, namespace: x}
spec: {clusterIP: 10.96.0.6, ports: [{port: 80}]}
---
kind: Endpoints
metadata: {name: mixed, namespace: x}
subsets: [{addresses: [{ip: 10.0.0.2}, {ip: 203.0.113.5}], ports: [{port: 8080}]}]
";

    const ALLOW_DB: &str = "
kind: NetworkPolicy
metadata: {name: to-db, namespace: x}
spec:
  podSelector: {matchLabels: {app: a}}
  policyTypes: [Egress]
  egress: [{to: [{ipBlock: {cidr: 203.0.113.5/32}}], ports: [{port: 5432}, {port: 8080}]}]
";

    const ALLOW_B: &str = "
kind: NetworkPolicy
metadata: {name: to-b, namespace: x}
spec:
  podSelector: {matchLabels: {app: a}}
  policyTypes: [Egress]
  egress: [{to: [{podSelector: {matchLabels: {app: b}}}], ports: [{port: 8080}]}]
";

    fn hidden_entries(state: &MapState) -> Vec<(u32, u32, u16)> {
        state
            .policy
            .keys()
            .filter(|e| e.dir == service_flags::POLICY_DIR)
            .map(|e| match e.ports {
                PortMatch::Ports { port, .. } => (e.ep_id, e.identity, port),
                _ => (e.ep_id, e.identity, 0),
            })
            .collect()
    }

    #[test]
    fn backends_no_hook_sees_are_judged_at_the_sender() {
        let s = snapshot(HIDDEN);
        let eps = BTreeMap::from([(PodRef::new("x", "a"), 7), (PodRef::new("x", "b"), 8)]);
        let c = compile(&s, &eps, &mut Allocator::new());
        let ip = |t: &str| to_addr(t.parse().unwrap());
        let flags = |t: &str| c.state.services[&ip(t)];
        // A node address, an outside address (whatever its targetRef
        // says), and a Service mixing one with a pod: all at the sender,
        // each ClusterIP with an id of its own.
        for vip in ["10.96.0.1", "10.96.0.5", "10.96.0.6"] {
            assert_eq!(flags(vip) & 0xff, service_flags::AT_SENDER, "{vip}");
            assert_ne!(service_flags::id(flags(vip)), 0, "{vip}");
        }
        let ids: BTreeSet<u32> = ["10.96.0.1", "10.96.0.5", "10.96.0.6"]
            .iter()
            .map(|v| service_flags::id(flags(v)))
            .collect();
        assert_eq!(ids.len(), 3);
        // a's egress allows nothing: no entry; b is not isolated: none
        // needed (the datapath lets it on).
        assert_eq!(hidden_entries(&c.state), []);

        // An ipBlock over the outside host opens db, and mixed only once
        // its pod backend is allowed too; never the API server.
        let mut s2 = s.clone();
        let mut l = Loaded::default();
        load_str(ALLOW_DB, std::path::Path::new("p.yaml"), &mut l).unwrap();
        s2.policies.extend(l.snapshot.policies);
        let c = compile(&s2, &eps, &mut Allocator::new());
        let id = |t: &str| service_flags::id(c.state.services[&ip(t)]);
        assert_eq!(hidden_entries(&c.state), [(7, id("10.96.0.5"), 5432)]);
        let mut l = Loaded::default();
        load_str(ALLOW_B, std::path::Path::new("q.yaml"), &mut l).unwrap();
        s2.policies.extend(l.snapshot.policies);
        let c = compile(&s2, &eps, &mut Allocator::new());
        let mut want = vec![(7, id("10.96.0.5"), 5432), (7, id("10.96.0.6"), 80)];
        want.sort();
        let mut got = hidden_entries(&c.state);
        got.sort();
        assert_eq!(got, want);
    }

    #[test]
    fn engine_keeps_sender_entries_as_a_full_compile_does() {
        let mut s = snapshot(HIDDEN);
        let eps = BTreeMap::from([(PodRef::new("x", "a"), 7), (PodRef::new("x", "b"), 8)]);
        let mut e = Engine::new();
        // What the dataplane holds: the engine's operations applied.
        let mut held = MapState::default();
        held.apply(&e.update(&s, &eps));
        for text in [ALLOW_DB, ALLOW_B] {
            let mut l = Loaded::default();
            load_str(text, std::path::Path::new("p.yaml"), &mut l).unwrap();
            for (r, p) in l.snapshot.policies {
                s.policies.insert(r.clone(), p);
                held.apply(&e.policy_changed(&s, &r));
                assert_eq!(held, e.current().state);
            }
        }
        let full = compile(&s, &eps, &mut e.allocator().clone());
        assert_eq!(e.current().state, full.state);
        assert_eq!(hidden_entries(&full.state).len(), 2);
        // The outside host's Endpoints go away: its entry with them.
        s.remove_endpoints(&PodRef::new("x", "db"));
        let ops = e.service_changed(&s);
        held.apply(&ops);
        assert_eq!(held, e.current().state);
        assert!(
            ops.iter().any(|o| matches!(o, crate::state::MapOp::DelPolicy(p) if p.dir == service_flags::POLICY_DIR)),
            "{ops:?}"
        );
        let full = compile(&s, &eps, &mut e.allocator().clone());
        assert_eq!(e.current().state, full.state);
    }
}
