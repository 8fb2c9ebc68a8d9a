//! The service-related parts of the compiled state: which addresses are
//! Service ClusterIPs, and which addresses belong to local endpoints.
//!
//! kube-proxy translates a ClusterIP in netfilter, after the sending pod's
//! own hook has seen the packet. So that hook must not judge a packet to a
//! ClusterIP: the datapath lets it on as *deferred*, and the hook that sees
//! it translated — the backend's host-side veth for a local backend —
//! judges the sender's egress there, on the backend's address and port,
//! finding the sender's endpoint through `local_addrs`. A ClusterIP is
//! therefore never itself matched against an ipBlock.
//!
//! A Service with a backend on another node is deferred only where the
//! node's overlay device carries the check too (`Config` flag
//! `NODE_HOOK`); without it an egress-isolated pod's packet to it is
//! dropped at the pod's hook (fail closed), since no hook of this node
//! would see the translated packet. Each ClusterIP carries
//! `service_flags::ALL_LOCAL` when every backend is a local endpoint.

use std::collections::BTreeMap;

use policy_common::service_flags;

use crate::model::addr::to_addr;
use crate::model::{PodRef, Snapshot};
use crate::state::MapState;

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
    for (r, info) in &snapshot.services {
        let all_local = info.ports.iter().all(|sp| {
            snapshot
                .backends(r, sp)
                .iter()
                .all(|b| state.local_addrs.contains_key(&to_addr(b.ip)))
        });
        let flags = if all_local {
            service_flags::ALL_LOCAL
        } else {
            0
        };
        for ip in &info.cluster_ips {
            state.services.insert(to_addr(*ip), flags);
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
}
