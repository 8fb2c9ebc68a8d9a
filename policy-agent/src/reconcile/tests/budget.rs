//! Budgets through what the agent does: a tenant whose policy does not
//! fit fails closed for its own pods, never the node, and no endpoint id
//! decides who keeps their place.

use policy_common::ep_flags;
use policy_engine::capacity::Capacity;
use policy_engine::model::{PodRef, Snapshot};
use policy_engine::testutil::ClusterBuilder;

use super::super::*;
use crate::dataplane::fake::FakeDataplane;
use crate::source::Change;

/// Tenant `ns`'s policy `name`, created at second `at`: its pods (all of
/// the namespace) admit `n` /32 ipBlocks (from index `from`), each on a
/// port of its own (one CIDR prefix and one policy entry each).
fn tenant_policy(ns: &str, name: &str, at: u32, from: u32, n: u32) -> String {
    let rules: String = (from..from + n)
        .map(|i| {
            format!(
                "  - from: [{{ipBlock: {{cidr: 198.51.100.{i}/32}}}}]\n    ports: [{{port: {}}}]\n",
                8000 + i
            )
        })
        .collect();
    format!("metadata: {{name: {name}, namespace: {ns}, creationTimestamp: '2026-01-01T00:00:{at:02}Z'}}\nspec:\n  podSelector: {{}}\n  ingress:\n{rules}")
}

/// Two tenants, one pod each: t1/a (10.244.0.10), t2/b (10.244.0.11).
fn tenants(policies: &[String]) -> Snapshot {
    let mut b = ClusterBuilder::new()
        .ns("t1", &[])
        .ns("t2", &[])
        .pod("t1/a", &[("app", "a")], &["10.244.0.10"])
        .pod("t2/b", &[("app", "b")], &["10.244.0.11"]);
    for p in policies {
        b = b.policy(p);
    }
    b.build()
}

fn ep(cid: &str, pod: &str, ip: &str) -> NewEndpoint {
    let pod: PodRef = pod.parse().unwrap();
    NewEndpoint {
        container_id: cid.into(),
        ifname: format!("veth-{}", pod.name),
        pod,
        pod_ifname: "eth0".into(),
        ips: vec![ip.parse().unwrap()],
    }
}

fn agent(cap: Capacity) -> Agent<FakeDataplane> {
    Agent::new(
        FakeDataplane {
            capacity: Some(cap),
            ..FakeDataplane::default()
        },
        Vec::new(),
    )
}

/// The entries endpoint of `veth` has in the dataplane.
fn entries(agent: &Agent<FakeDataplane>, veth: &str) -> usize {
    let id = agent.dataplane().endpoints[veth];
    agent
        .dataplane()
        .state
        .policy
        .keys()
        .filter(|e| e.ep_id == id)
        .count()
}

fn policy_change(yaml: &str) -> Change {
    let s = ClusterBuilder::new().policy(yaml).build();
    let (r, p) = s.policies.into_iter().next().unwrap();
    Change::Policy(r, Box::new(Some(p)))
}

#[test]
fn a_policy_beyond_the_cidr_room_fails_closed_for_its_own_pods_only() {
    // Room: the two worlds and 6 prefixes. t1's policy (older) takes 4;
    // t2's policy (newer) grows from 2 to 5 prefixes and no longer fits.
    let mut agent = agent(Capacity {
        endpoints: 8,
        ipcache: 8,
        cidrs: 8,
        policy: 64,
    });
    let t1 = tenant_policy("t1", "p", 1, 0, 4);
    agent
        .set_snapshot(tenants(&[t1.clone(), tenant_policy("t2", "p", 2, 10, 2)]))
        .unwrap();
    // t2's pod arrives first: the lower endpoint id.
    agent.add(ep("c2", "t2/b", "10.244.0.11")).unwrap();
    agent.add(ep("c1", "t1/a", "10.244.0.10")).unwrap();
    assert!(agent.dataplane().endpoints["veth-b"] < agent.dataplane().endpoints["veth-a"]);
    assert!(agent.over_budget_policies().is_empty());
    assert_eq!(entries(&agent, "veth-a"), 4);
    assert_eq!(entries(&agent, "veth-b"), 2);

    // t2 grows its policy (a watch event, the incremental path).
    agent
        .apply_changes(vec![policy_change(&tenant_policy("t2", "p", 2, 10, 5))])
        .unwrap();
    let over: Vec<String> = agent
        .over_budget_policies()
        .iter()
        .map(|e| e.policy().to_string())
        .collect();
    assert_eq!(over, ["t2/p"]);
    // The node still works: the state was written, the agent is ready,
    // and t1 keeps its exact policy.
    assert!(agent.fit_report().exceeded.is_none());
    assert_eq!(agent.readiness(), Ok(()));
    assert_eq!(entries(&agent, "veth-a"), 4);
    // t2's pod: isolated, nothing allowed (fail closed).
    let b = agent.dataplane().endpoints["veth-b"];
    assert_eq!(
        agent.dataplane().state.endpoints[&b],
        ep_flags::ISOLATED_INGRESS
    );
    assert_eq!(entries(&agent, "veth-b"), 0);
    // Named in status.
    let st = crate::status::status(&agent);
    assert_eq!(st.over_budget_policies.len(), 1);
    assert!(
        st.over_budget_policies[0].contains("t2/p")
            && st.over_budget_policies[0].contains("--map-size-cidrs"),
        "{:?}",
        st.over_budget_policies
    );

    // t2 churns its pod (DEL, ADD: a fresh endpoint, maybe a low id) and
    // a new pod of t1 arrives: CNI ADDs succeed, t1 keeps its place.
    agent.del("c2").unwrap();
    agent.add(ep("c3", "t2/b", "10.244.0.11")).unwrap();
    assert_eq!(entries(&agent, "veth-a"), 4);
    assert_eq!(entries(&agent, "veth-b"), 0);
    assert_eq!(agent.over_budget_policies().len(), 1);

    // t2 shrinks back: enforced as written again.
    agent
        .apply_changes(vec![policy_change(&tenant_policy("t2", "p", 2, 10, 2))])
        .unwrap();
    assert!(agent.over_budget_policies().is_empty());
    assert_eq!(entries(&agent, "veth-b"), 2);
    assert_eq!(entries(&agent, "veth-a"), 4);
}

#[test]
fn a_tenant_whose_entries_grow_cannot_push_an_admitted_pod_out() {
    // Policy map: 8 entries. t2's pod arrives first (lower endpoint id)
    // with 3 entries, t1's with 4; then t2's policy grows to 6.
    let mut agent = agent(Capacity {
        endpoints: 8,
        ipcache: 8,
        cidrs: 64,
        policy: 8,
    });
    agent
        .set_snapshot(tenants(&[
            tenant_policy("t1", "p", 1, 0, 4),
            tenant_policy("t2", "p", 2, 10, 3),
        ]))
        .unwrap();
    agent.add(ep("c2", "t2/b", "10.244.0.11")).unwrap();
    agent.add(ep("c1", "t1/a", "10.244.0.10")).unwrap();
    assert!(agent.fit_report().denied.is_empty());
    assert_eq!(entries(&agent, "veth-a"), 4);
    agent
        .apply_changes(vec![policy_change(&tenant_policy("t2", "p", 2, 10, 6))])
        .unwrap();
    // The one that grew is denied; t1's pod keeps its exact policy.
    let denied: Vec<String> = agent
        .fit_report()
        .denied
        .values()
        .map(|(p, _)| p.to_string())
        .collect();
    assert_eq!(denied, ["t2/b"]);
    assert_eq!(entries(&agent, "veth-a"), 4);
    // t2 churns its pod for a fresh endpoint: it arrives last, and still
    // cannot push t1's pod out.
    agent.del("c2").unwrap();
    agent.add(ep("c3", "t2/b", "10.244.0.11")).unwrap();
    assert_eq!(entries(&agent, "veth-a"), 4);
    let denied: Vec<String> = agent
        .fit_report()
        .denied
        .values()
        .map(|(p, _)| p.to_string())
        .collect();
    assert_eq!(denied, ["t2/b"]);
}
