use std::net::IpAddr;

use policy_common::{dir, ep_flags, proto};
use policy_engine::lookup::verdict;
use policy_engine::model::PodRef;
use policy_engine::testutil::ClusterBuilder;

use super::*;
use crate::dataplane::fake::FakeDataplane;

const DENY_ALL: &str = r#"
apiVersion: networking.k8s.io/v1
kind: NetworkPolicy
metadata: {name: deny, namespace: default}
spec:
  podSelector: {}
"#;

fn cluster(policies: &[&str]) -> Snapshot {
    let mut b = ClusterBuilder::new()
        .ns("default", &[])
        .pod("default/a", &[("app", "a")], &["10.244.0.10"])
        .pod("default/b", &[("app", "b")], &["10.244.0.11"]);
    for p in policies {
        b = b.policy(p);
    }
    b.build()
}

fn pod(name: &str) -> PodRef {
    PodRef::new("default", name)
}

fn new_ep(cid: &str, name: &str, ip: &str) -> NewEndpoint {
    NewEndpoint {
        container_id: cid.into(),
        pod: pod(name),
        ifname: format!("veth-{name}"),
        pod_ifname: "eth0".into(),
        ips: vec![ip.parse().unwrap()],
    }
}

fn ingress_allowed(agent: &Agent<FakeDataplane>, ifname: &str, from: &str) -> bool {
    let ep = agent.dataplane().endpoints[ifname];
    let peer: IpAddr = from.parse().unwrap();
    verdict(
        &agent.dataplane().state,
        ep,
        dir::INGRESS,
        peer,
        proto::TCP,
        80,
    )
    .allowed
}

#[test]
fn add_attaches_and_applies_policy_for_the_pod() {
    let mut agent = Agent::new(
        FakeDataplane::default(),
        vec!["10.244.0.1".parse().unwrap()],
    );
    agent.set_snapshot(cluster(&[])).unwrap();
    agent.add(new_ep("c1", "a", "10.244.0.10")).unwrap();
    let ep = agent.dataplane().endpoints["veth-a"];
    assert_eq!(agent.dataplane().state.endpoints.get(&ep), Some(&0));
    assert!(ingress_allowed(&agent, "veth-a", "10.244.0.11"));

    // A deny-all policy arriving later isolates the running pod...
    agent.set_snapshot(cluster(&[DENY_ALL])).unwrap();
    let flags = agent.dataplane().state.endpoints[&ep];
    assert_ne!(flags & ep_flags::ISOLATED_INGRESS, 0);
    assert!(!ingress_allowed(&agent, "veth-a", "10.244.0.11"));
    // ...but the node itself still reaches it (kubelet probes).
    assert!(ingress_allowed(&agent, "veth-a", "10.244.0.1"));
}

#[test]
fn a_node_address_that_appears_later_reaches_isolated_pods() {
    // The agent started before the bridge had its gateway address.
    let mut agent = Agent::new(FakeDataplane::default(), vec![]);
    agent.set_snapshot(cluster(&[DENY_ALL])).unwrap();
    agent.add(new_ep("c1", "a", "10.244.0.10")).unwrap();
    assert!(!ingress_allowed(&agent, "veth-a", "10.244.0.1"));
    let applies = agent.dataplane().applies;
    let gw: IpAddr = "10.244.0.1".parse().unwrap();
    assert!(agent.set_node_addrs(vec![gw]).unwrap());
    assert!(ingress_allowed(&agent, "veth-a", "10.244.0.1"));
    assert!(agent.dataplane().applies > applies);
    // The same set again changes nothing.
    assert!(!agent.set_node_addrs(vec![gw, gw]).unwrap());
    // An address the node loses is no longer the node's.
    assert!(agent.set_node_addrs(vec![]).unwrap());
    assert!(!ingress_allowed(&agent, "veth-a", "10.244.0.1"));
    // Still denied to a peer all along.
    assert!(!ingress_allowed(&agent, "veth-a", "10.244.0.11"));
}

#[test]
fn unknown_pod_is_refused_and_nothing_is_attached() {
    let mut agent = Agent::new(FakeDataplane::default(), vec![]);
    agent.set_snapshot(cluster(&[])).unwrap();
    let err = agent.add(new_ep("c9", "ghost", "10.244.0.99")).unwrap_err();
    assert!(matches!(err, AgentError::UnknownPod { .. }), "{err}");
    assert!(agent.dataplane().endpoints.is_empty());
}

#[test]
fn cni_address_overrides_the_manifest_and_del_forgets_the_endpoint() {
    let mut agent = Agent::new(FakeDataplane::default(), vec![]);
    agent.set_snapshot(cluster(&[])).unwrap();
    agent.add(new_ep("c1", "a", "10.244.0.50")).unwrap();
    let addr = policy_engine::model::addr::to_addr("10.244.0.50".parse().unwrap());
    assert!(agent.dataplane().state.ipcache.contains_key(&addr));
    assert!(agent.check("c1"));
    agent.del("c1").unwrap();
    agent.del("c1").unwrap();
    assert!(!agent.check("c1"));
    assert!(agent.dataplane().endpoints.is_empty());
    assert!(agent.dataplane().state.endpoints.is_empty());
}

#[test]
fn invalid_policy_isolates_its_pods_and_the_rest_keeps_working() {
    let bad = r#"
apiVersion: networking.k8s.io/v1
kind: NetworkPolicy
metadata: {name: bad, namespace: default}
spec:
  podSelector: {matchLabels: {app: a}}
  ingress:
  - from:
    - ipBlock: {cidr: 10.0.0.0/8, except: [192.0.2.0/24]}
"#;
    let mut agent = Agent::new(FakeDataplane::default(), vec![]);
    agent.set_snapshot(cluster(&[bad])).unwrap();
    agent.add(new_ep("c1", "a", "10.244.0.10")).unwrap();
    agent.add(new_ep("c2", "b", "10.244.0.11")).unwrap();
    assert!(!ingress_allowed(&agent, "veth-a", "10.244.0.11"));
    assert!(ingress_allowed(&agent, "veth-b", "10.244.0.10"));
}

#[test]
fn a_restarted_agent_restores_its_endpoints_before_the_first_apply() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("endpoints.json");
    let mut first = Agent::new(FakeDataplane::default(), vec![]).with_state_file(file.clone());
    first.set_snapshot(cluster(&[DENY_ALL])).unwrap();
    first.add(new_ep("c1", "a", "10.244.0.10")).unwrap();
    let ep = first.dataplane().endpoints["veth-a"];

    let mut second = Agent::new(FakeDataplane::default(), vec![]).with_state_file(file.clone());
    second.restore(
        crate::endpoints::load(&file)
            .unwrap()
            .into_iter()
            .map(|s| s.endpoint)
            .collect(),
    );
    assert_eq!(second.dataplane().endpoints.get("veth-a"), Some(&ep));
    second.set_snapshot(cluster(&[DENY_ALL])).unwrap();
    assert_eq!(second.dataplane().state, first.dataplane().state);
    assert!(second.check("c1"));
}

#[test]
fn each_endpoint_may_send_only_from_its_own_addresses() {
    use policy_engine::model::addr::to_addr;
    let mut agent = Agent::new(FakeDataplane::default(), vec![]);
    agent.set_snapshot(cluster(&[])).unwrap();
    // CNI reported an address: that one, not the manifest's.
    agent.add(new_ep("c1", "a", "10.244.0.50")).unwrap();
    // CNI reported none: the pod's addresses from the cluster state.
    let mut b = new_ep("c2", "b", "10.244.0.11");
    b.ips.clear();
    agent.add(b).unwrap();
    let ep = |ifname: &str| agent.dataplane().endpoints[ifname];
    let (ea, eb) = (ep("veth-a"), ep("veth-b"));
    let sources = &agent.dataplane().sources;
    assert_eq!(
        sources.get(&ea),
        Some(&[to_addr("10.244.0.50".parse().unwrap())].into())
    );
    assert_eq!(
        sources.get(&eb),
        Some(&[to_addr("10.244.0.11".parse().unwrap())].into())
    );
    // Gone with the endpoint.
    agent.del("c1").unwrap();
    assert!(!agent.dataplane().sources.contains_key(&ea));
}

#[test]
fn gc_forgets_only_the_sandboxes_the_runtime_no_longer_lists() {
    let mut agent = Agent::new(FakeDataplane::default(), vec![]);
    agent.set_snapshot(cluster(&[DENY_ALL])).unwrap();
    agent.add(new_ep("c1", "a", "10.244.0.10")).unwrap();
    agent.add(new_ep("c2", "b", "10.244.0.11")).unwrap();
    let sandbox = |c: &str, i: &str| agent_api::Sandbox {
        container_id: c.into(),
        ifname: i.into(),
    };
    // c2's container is still there, but not with the interface Palisade
    // enforces: stale too.
    let gone = agent
        .gc(&[sandbox("c1", "eth0"), sandbox("c2", "net1")])
        .unwrap();
    assert_eq!(gone, 1);
    assert!(agent.check("c1"));
    assert!(!agent.check("c2"));
    assert_eq!(
        agent.dataplane().endpoints.keys().collect::<Vec<_>>(),
        ["veth-a"]
    );
    assert_eq!(agent.dataplane().state.endpoints.len(), 1);
    let applies = agent.dataplane().applies;
    assert_eq!(agent.gc(&[sandbox("c1", "eth0")]).unwrap(), 0);
    assert_eq!(
        agent.dataplane().applies,
        applies,
        "nothing to collect, nothing written"
    );
}

/// `cluster` with both pods running on node `n1`, minus `gone`.
fn on_node(policies: &[&str], gone: &[&str]) -> Snapshot {
    let mut snap = cluster(policies);
    for p in snap.pods.values_mut() {
        p.node = Some("n1".into());
    }
    for g in gone {
        snap.pods.remove(&pod(g));
    }
    snap
}

#[test]
fn running_pods_without_an_endpoint_are_adopted_kept_from_gc_and_replaced_by_cni() {
    let mut agent = Agent::new(FakeDataplane::default(), Vec::new()).with_node(Some("n1".into()));
    agent.set_snapshot(on_node(&[DENY_ALL], &[])).unwrap();
    agent.add(new_ep("c1", "a", "10.244.0.10")).unwrap();
    // b runs but CNI never told us: it is the one candidate, with its
    // address from the API.
    let candidates = agent.adoption_candidates();
    assert_eq!(
        candidates.into_iter().collect::<Vec<_>>(),
        vec![(pod("b"), vec!["10.244.0.11".parse::<IpAddr>().unwrap()])]
    );
    let veth = crate::links::FoundVeth {
        ifname: "veth-found".into(),
        index: 42,
    };
    // A veth that already serves another endpoint is refused.
    let taken = crate::links::FoundVeth {
        ifname: "veth-a".into(),
        index: 7,
    };
    assert!(!agent.adopt(pod("b"), &taken).unwrap());
    assert!(agent.adopt(pod("b"), &veth).unwrap());
    assert!(agent.adoption_candidates().is_empty());
    assert!(agent.unenforced().is_empty());
    // Enforced like any endpoint: deny-all isolates it.
    let ep = agent.dataplane().endpoints["veth-found"];
    assert_ne!(
        agent.dataplane().state.endpoints[&ep] & ep_flags::ISOLATED_INGRESS,
        0
    );
    assert!(!ingress_allowed(&agent, "veth-found", "10.244.0.10"));
    // Adopting again is a no-op.
    assert!(!agent.adopt(pod("b"), &veth).unwrap());

    // CNI GC lists only the runtime's sandboxes: the adopted one stays.
    let valid = [agent_api::Sandbox {
        container_id: "c1".into(),
        ifname: "eth0".into(),
    }];
    assert_eq!(agent.gc(&valid).unwrap(), 0);
    assert!(agent.dataplane().endpoints.contains_key("veth-found"));

    // A new sandbox of b reported by CNI replaces the adopted endpoint.
    agent.add(new_ep("c2", "b", "10.244.0.11")).unwrap();
    assert!(!agent.dataplane().endpoints.contains_key("veth-found"));
    assert_eq!(agent.prune_adopted().unwrap(), 0);

    // An adopted pod that goes away is forgotten.
    agent.del("c2").unwrap();
    assert!(agent.adopt(pod("b"), &veth).unwrap());
    agent.set_snapshot(on_node(&[DENY_ALL], &["b"])).unwrap();
    assert_eq!(agent.prune_adopted().unwrap(), 1);
    assert!(!agent.dataplane().endpoints.contains_key("veth-found"));
    assert!(agent.endpoints().iter().all(|e| !adopt::is_adopted(e)));
}

#[test]
fn a_failed_apply_is_retried_and_the_state_reaches_the_dataplane() {
    let mut agent = Agent::new(FakeDataplane::default(), Vec::new());
    agent.set_snapshot(cluster(&[])).unwrap();
    agent.add(new_ep("c1", "a", "10.244.0.10")).unwrap();
    assert!(ingress_allowed(&agent, "veth-a", "10.244.0.11"));
    // The dataplane refuses: the deny-all policy is not enforced yet, the
    // last good state is, and the agent says it is not ready.
    agent.dataplane.fail_applies = Some("map full".into());
    assert!(agent.set_snapshot(cluster(&[DENY_ALL])).is_err());
    assert!(agent.apply_failed());
    assert!(agent.readiness().is_err());
    assert!(ingress_allowed(&agent, "veth-a", "10.244.0.11"));
    assert!(agent.retry_apply().is_err(), "still refused");
    // Once the dataplane takes it, the retry writes the current state.
    agent.dataplane.fail_applies = None;
    agent.retry_apply().unwrap();
    assert!(!agent.apply_failed());
    assert!(!ingress_allowed(&agent, "veth-a", "10.244.0.11"));
    assert!(agent.readiness().is_ok());
    // Nothing to retry now.
    let applies = agent.dataplane().applies;
    agent.retry_apply().unwrap();
    assert_eq!(agent.dataplane().applies, applies);
}

/// `a` admits `b` on `ports` ports (one policy entry each).
fn ports_for_a(ports: u16) -> String {
    let list: String = (0..ports)
        .map(|i| format!("    - port: {}\n", 8000 + i))
        .collect();
    format!(
        "apiVersion: networking.k8s.io/v1
kind: NetworkPolicy
metadata: {{name: a-in, namespace: default}}
spec:
  podSelector: {{matchLabels: {{app: a}}}}
  ingress:
  - from:
    - podSelector: {{matchLabels: {{app: b}}}}
    ports:
{list}"
    )
}

#[test]
fn a_pod_whose_entries_do_not_fit_is_denied_both_ways_until_they_do() {
    let dataplane = FakeDataplane {
        capacity: Some(policy_engine::capacity::Capacity {
            endpoints: 8,
            ipcache: 8,
            cidrs: 8,
            policy: 4,
        }),
        ..FakeDataplane::default()
    };
    let mut agent = Agent::new(dataplane, Vec::new());
    agent.set_snapshot(cluster(&[&ports_for_a(6)])).unwrap();
    agent.add(new_ep("c1", "a", "10.244.0.10")).unwrap();
    agent.add(new_ep("c2", "b", "10.244.0.11")).unwrap();
    let a = agent.dataplane().endpoints["veth-a"];
    let b = agent.dataplane().endpoints["veth-b"];
    let state = &agent.dataplane().state;
    assert_eq!(
        state.endpoints[&a],
        ep_flags::ISOLATED_INGRESS | ep_flags::ISOLATED_EGRESS,
        "denied, and never allowed all"
    );
    assert!(state.policy.keys().all(|e| e.ep_id != a));
    assert_eq!(state.endpoints[&b], 0, "b keeps its (open) policy");
    let why = agent.readiness().unwrap_err();
    assert!(
        why.contains("default/a") && why.contains("policy map is full"),
        "{why}"
    );
    // The policy shrinks: a is enforced as written, the agent ready.
    agent.set_snapshot(cluster(&[&ports_for_a(2)])).unwrap();
    assert!(agent.fit_report().denied.is_empty());
    assert_eq!(
        agent.dataplane().state.endpoints[&a],
        ep_flags::ISOLATED_INGRESS
    );
    assert_eq!(agent.readiness(), Ok(()));
}

#[test]
fn endpoints_whose_veth_vanished_are_forgotten() {
    let mut agent = Agent::new(FakeDataplane::default(), Vec::new());
    agent.set_snapshot(cluster(&[])).unwrap();
    agent.add(new_ep("c1", "a", "10.244.0.10")).unwrap();
    agent.add(new_ep("c2", "b", "10.244.0.11")).unwrap();
    assert_eq!(agent.forget_vanished().unwrap(), 0);
    agent.dataplane.vanished.insert("veth-a".into());
    assert_eq!(agent.forget_vanished().unwrap(), 1);
    assert!(agent.registry.get("c1").is_none());
    assert!(!agent.dataplane().endpoints.contains_key("veth-a"));
    assert_eq!(agent.dataplane().state.endpoints.len(), 1);
}

#[test]
fn endpoint_changes_write_what_a_full_compile_gives() {
    let allow_b_to_a = r#"
apiVersion: networking.k8s.io/v1
kind: NetworkPolicy
metadata: {name: a-from-b, namespace: default}
spec:
  podSelector: {matchLabels: {app: a}}
  ingress: [{from: [{podSelector: {matchLabels: {app: b}}}]}]
"#;
    let mut agent = Agent::new(
        FakeDataplane::default(),
        vec!["10.244.0.1".parse().unwrap()],
    );
    agent.set_snapshot(cluster(&[allow_b_to_a])).unwrap();
    let full = |agent: &Agent<FakeDataplane>| {
        policy_engine::compile::compile(
            &agent.snapshot,
            &agent.registry.assignment(),
            &mut agent.engine.allocator().clone(),
        )
        .state
    };
    // b's CNI address is not the one the cluster state had yet.
    type Step<'s> = &'s dyn Fn(&mut Agent<FakeDataplane>);
    let steps: [Step; 5] = [
        &|a| a.add(new_ep("c1", "a", "10.244.0.10")).unwrap(),
        &|a| a.add(new_ep("c2", "b", "10.244.0.60")).unwrap(),
        &|a| a.del("c1").unwrap(),
        &|a| a.add(new_ep("c3", "a", "10.244.0.10")).unwrap(),
        &|a| {
            a.gc(&[]).unwrap();
        },
    ];
    for (i, step) in steps.iter().enumerate() {
        step(&mut agent);
        assert_eq!(agent.dataplane().state, full(&agent), "after step {i}");
    }
    // The incremental path was exact and still enforces the policy.
    agent.add(new_ep("c4", "a", "10.244.0.10")).unwrap();
    agent.add(new_ep("c5", "b", "10.244.0.60")).unwrap();
    assert!(ingress_allowed(&agent, "veth-a", "10.244.0.60"));
    assert!(!ingress_allowed(&agent, "veth-a", "10.244.0.99"));
}

/// A quarantined veth gets programs under an endpoint id no state entry
/// names (the datapath drops both ways), is no endpoint to the compiler,
/// GC or `status`, and ends when its pod is known by CNI or adoption,
/// or when released.
#[test]
fn quarantined_veths_drop_everything_until_their_pod_is_known() {
    let mut agent = Agent::new(FakeDataplane::default(), Vec::new()).with_node(Some("n1".into()));
    agent.set_snapshot(on_node(&[], &[])).unwrap();
    agent.add(new_ep("c1", "a", "10.244.0.10")).unwrap();
    let veth = |name: &str| crate::links::FoundVeth {
        ifname: name.into(),
        index: 9,
    };
    assert!(
        !agent.quarantine(&veth("veth-a")).unwrap(),
        "a served veth is never quarantined"
    );
    assert!(agent.quarantine(&veth("veth-x")).unwrap());
    assert!(agent.quarantine(&veth("veth-y")).unwrap());
    assert!(!agent.quarantine(&veth("veth-x")).unwrap(), "once");
    let held = agent.dataplane().endpoints["veth-x"];
    assert!(
        !agent.dataplane().state.endpoints.contains_key(&held),
        "no endpoint entry: not ready, dropped both ways"
    );
    assert!(!agent.dataplane().sources.contains_key(&held));
    assert_eq!(agent.quarantined().len(), 2);
    assert_eq!(agent.unenforced().len(), 1, "b is still counted");
    let st = crate::status::status(&agent);
    assert_eq!(st.quarantined, ["veth-x", "veth-y"]);
    assert_eq!(st.endpoints.len(), 1);
    let valid = [agent_api::Sandbox {
        container_id: "c1".into(),
        ifname: "eth0".into(),
    }];
    assert_eq!(agent.gc(&valid).unwrap(), 0, "GC leaves quarantines alone");
    // b's CNI ADD names veth-x: its policy replaces the quarantine there.
    let mut b = new_ep("c2", "b", "10.244.0.11");
    b.ifname = "veth-x".into();
    agent.add(b).unwrap();
    let ep_b = agent.dataplane().endpoints["veth-x"];
    assert!(agent.dataplane().state.endpoints.contains_key(&ep_b));
    assert_eq!(agent.quarantined().len(), 1);
    // Nobody left to find: the rest is released (detached).
    assert_eq!(agent.release_quarantine(), 1);
    assert!(!agent.dataplane().endpoints.contains_key("veth-y"));
    assert!(agent.quarantined().is_empty());
}
mod budget;
