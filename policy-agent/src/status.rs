//! `policy-agent status`: what the running agent enforces, per local
//! endpoint (pod, identity, isolation per direction, allow entries, the
//! policies selecting it), and the pods of its node it does not enforce.

use agent_api::{AgentStatus, EndpointStatus};
use policy_common::dir;
use policy_engine::model::Direction;
use policy_engine::tools::probe::pod_identities;

use crate::dataplane::Dataplane;
use crate::reconcile::Agent;

/// The agent's status now.
pub fn status<D: Dataplane>(agent: &Agent<D>) -> AgentStatus {
    let compiled = agent.compiled();
    let state = &compiled.state;
    let identities = pod_identities(&compiled.identities);
    let snapshot = agent.snapshot();
    let mut endpoints: Vec<EndpointStatus> = agent
        .endpoints()
        .iter()
        .filter(|ep| !crate::reconcile::quarantine::is_quarantined(ep))
        .map(|ep| {
            // A pod denied because a map is full: what the datapath has.
            let map_full = agent
                .fit_report()
                .denied
                .get(&ep.ep_id)
                .map(|(_, d)| d.map.name().to_string());
            let flags = if map_full.is_some() {
                Direction::Ingress.isolation_flag() | Direction::Egress.isolation_flag()
            } else {
                state.endpoints.get(&ep.ep_id).copied().unwrap_or(0)
            };
            let rules = |d| {
                if map_full.is_some() {
                    0
                } else {
                    state.entries(ep.ep_id, d).count()
                }
            };
            let labels = snapshot.pods.get(&ep.pod).map(|p| &p.labels);
            let policies = snapshot
                .policies
                .iter()
                .filter(|(r, p)| {
                    r.namespace == ep.pod.namespace
                        && labels
                            .is_some_and(|l| p.pod_selector.as_ref().is_none_or(|s| s.matches(l)))
                })
                .map(|(r, _)| r.to_string())
                .collect();
            EndpointStatus {
                pod: ep.pod.to_string(),
                container_id: ep.container_id.clone(),
                interface: ep.ifname.clone(),
                endpoint_id: ep.ep_id,
                ips: ep.ips.iter().map(|i| i.to_string()).collect(),
                identity: identities.get(&ep.pod).copied(),
                ingress_isolated: flags & Direction::Ingress.isolation_flag() != 0,
                egress_isolated: flags & Direction::Egress.isolation_flag() != 0,
                ingress_rules: rules(dir::INGRESS),
                egress_rules: rules(dir::EGRESS),
                policies,
                map_full,
            }
        })
        .collect();
    endpoints.sort_by(|a, b| a.pod.cmp(&b.pod));
    // The agent's own account (see `crate::coverage`), the one its alarm
    // and `palisade_unenforced_pods` report.
    let unenforced = agent.unenforced().keys().map(ToString::to_string).collect();
    AgentStatus {
        node: agent.node().map(str::to_string),
        applies: agent.applies(),
        last_apply_unix_ms: agent
            .last_apply()
            .and_then(|t| t.duration_since(std::time::UNIX_EPOCH).ok())
            .and_then(|d| u64::try_from(d.as_millis()).ok()),
        invalid_policies: agent.invalid_policies(),
        over_budget_policies: agent
            .over_budget_policies()
            .iter()
            .map(|e| e.to_string())
            .collect(),
        endpoints,
        unenforced,
        quarantined: agent
            .quarantined()
            .iter()
            .map(|ep| ep.ifname.clone())
            .collect(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::dataplane::fake::FakeDataplane;
    use crate::reconcile::NewEndpoint;
    use policy_engine::model::PodRef;
    use policy_engine::testutil::ClusterBuilder;

    #[test]
    fn endpoints_isolation_rules_and_unenforced_pods() {
        let mut snap = ClusterBuilder::new()
            .ns("default", &[])
            .pod("default/a", &[("app", "a")], &["10.244.0.10"])
            .pod("default/b", &[("app", "b")], &["10.244.0.11"])
            .policy("metadata: {name: p, namespace: default}\nspec:\n  podSelector: {matchLabels: {app: a}}\n  ingress: [{from: [{podSelector: {matchLabels: {app: b}}}], ports: [{port: 80}]}]\n")
            .build();
        for p in snap.pods.values_mut() {
            p.node = Some("n1".into());
        }
        let mut agent = Agent::new(FakeDataplane::default(), vec![]).with_node(Some("n1".into()));
        agent.set_snapshot(snap).unwrap();
        agent
            .add(NewEndpoint {
                container_id: "c1".into(),
                pod: PodRef::new("default", "a"),
                ifname: "veth-a".into(),
                pod_ifname: "eth0".into(),
                ips: vec!["10.244.0.10".parse().unwrap()],
            })
            .unwrap();
        let st = status(&agent);
        assert_eq!(st.node.as_deref(), Some("n1"));
        assert!(st.applies >= 2 && st.last_apply_unix_ms.is_some());
        assert_eq!(st.endpoints.len(), 1);
        let ep = &st.endpoints[0];
        assert_eq!(
            (ep.pod.as_str(), ep.interface.as_str()),
            ("default/a", "veth-a")
        );
        assert!(ep.ingress_isolated && !ep.egress_isolated);
        assert_eq!((ep.ingress_rules, ep.egress_rules), (1, 0));
        assert_eq!(ep.policies, ["default/p"]);
        assert!(ep.identity.is_some());
        // b runs on this node without an endpoint: an alarm.
        assert_eq!(st.unenforced, ["default/b"]);
    }

    #[test]
    fn a_pod_denied_because_a_map_is_full_shows_what_the_datapath_enforces() {
        let snap = ClusterBuilder::new()
            .ns("default", &[])
            .pod("default/a", &[("app", "a")], &["10.244.0.10"])
            .pod("default/b", &[("app", "b")], &["10.244.0.11"])
            .policy("metadata: {name: p, namespace: default}\nspec:\n  podSelector: {matchLabels: {app: a}}\n  ingress: [{from: [{podSelector: {matchLabels: {app: b}}}], ports: [{port: 80}, {port: 81}]}]\n")
            .build();
        let dataplane = FakeDataplane {
            capacity: Some(policy_engine::capacity::Capacity {
                endpoints: 8,
                ipcache: 8,
                cidrs: 8,
                policy: 1,
            }),
            ..FakeDataplane::default()
        };
        let mut agent = Agent::new(dataplane, vec![]);
        agent.set_snapshot(snap).unwrap();
        agent
            .add(NewEndpoint {
                container_id: "c1".into(),
                pod: PodRef::new("default", "a"),
                ifname: "veth-a".into(),
                pod_ifname: "eth0".into(),
                ips: vec!["10.244.0.10".parse().unwrap()],
            })
            .unwrap();
        let ep = &status(&agent).endpoints[0];
        assert_eq!(ep.map_full.as_deref(), Some("policy"));
        assert!(ep.ingress_isolated && ep.egress_isolated);
        assert_eq!((ep.ingress_rules, ep.egress_rules), (0, 0));
    }
}
