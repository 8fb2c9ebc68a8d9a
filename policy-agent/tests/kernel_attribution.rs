//! Attribution with real packets: the agent core on the kernel dataplane,
//! pods wired by veth. A connection a rule allows is reported with that
//! policy and rule (the cookie the datapath read from the policy map's
//! value); a drop names the policies isolating the pod in that direction.
//! Needs root.

#[path = "support/agent_bed.rs"]
mod agent_bed;
#[path = "support/kernel.rs"]
mod kernel;
#[path = "support/netns.rs"]
mod netns;

use std::time::{Duration, Instant};

use agent_bed::Bed;
use policy_agent::dataplane::kernel::MapSizes;
use policy_agent::flows::resolve;
use policy_common::VerdictEvent;
use policy_engine::testutil::ClusterBuilder;

/// Allowed from `c` to pod `p` by `allow-c`'s second rule.
const X: u16 = 7601;
/// Denied from `c` to pod `p`.
const Y: u16 = 7602;
const NET: u8 = 96;

fn cluster() -> policy_engine::model::Snapshot {
    ClusterBuilder::new()
        .ns("at", &[])
        .pod("at/p", &[("app", "p")], &["10.96.1.2"])
        .pod("at/c", &[("app", "c")], &["10.96.2.2"])
        .policy(
            "apiVersion: networking.k8s.io/v1
kind: NetworkPolicy
metadata: {name: default-deny, namespace: at}
spec:
  podSelector: {}
  policyTypes: [Ingress]
",
        )
        .policy(&format!(
            "apiVersion: networking.k8s.io/v1
kind: NetworkPolicy
metadata: {{name: allow-c, namespace: at}}
spec:
  podSelector: {{matchLabels: {{app: p}}}}
  ingress:
  - from: [{{podSelector: {{matchLabels: {{app: nobody}}}}}}]
  - from: [{{podSelector: {{matchLabels: {{app: c}}}}}}]
    ports: [{{port: {X}, protocol: UDP}}]
"
        ))
        .build()
}

/// Events of UDP to `port` read within a few seconds.
fn events_to(
    reader: &mut policy_agent::dataplane::kernel::events::EventReader,
    port: u16,
) -> Vec<VerdictEvent> {
    let deadline = Instant::now() + Duration::from_secs(3);
    let mut out = Vec::new();
    while Instant::now() < deadline {
        let got = reader.poll(Duration::from_millis(200)).unwrap();
        out.extend(got.into_iter().filter(|e| e.dport == port));
        if !out.is_empty() {
            break;
        }
    }
    out
}

#[test]
fn allows_name_the_rule_and_drops_the_isolating_policies() {
    let mut bed = Bed::new("attr", NET);
    bed.pod("p", "atp-h", 1);
    bed.pod("c", "atc-h", 2);
    let mut agent = bed.agent(MapSizes::default());
    let mut reader = agent
        .dataplane_mut()
        .take_event_reader()
        .expect("event reader");
    bed.on_node(|| {
        agent.set_snapshot(cluster()).unwrap();
        agent
            .add(bed.endpoint("at", "p", "p", "sandbox-p"))
            .unwrap();
        agent
            .add(bed.endpoint("at", "c", "c", "sandbox-c"))
            .unwrap();
        agent.dataplane_mut().set_events_for_allowed(true).unwrap();
    });

    assert!(bed.reaches("c", "p", X), "c → p:{X} should be allowed");
    let allowed = events_to(&mut reader, X);
    let recs: Vec<_> = allowed.iter().map(|e| resolve(&agent, e)).collect();
    let rec = recs
        .iter()
        .find(|r| r.pod == "at/p" && r.verdict == "allowed")
        .cloned()
        .unwrap_or_else(|| panic!("no allowed event at p for port {X}: {recs:?}"));
    assert_eq!(rec.policy.as_deref(), Some("at/allow-c"), "{rec:?}");
    assert_eq!(rec.rule.as_deref(), Some("spec.ingress[1]"), "{rec:?}");
    assert!(rec.isolated_by.is_empty(), "{rec:?}");

    assert!(!bed.reaches("c", "p", Y), "c → p:{Y} should be dropped");
    let dropped = events_to(&mut reader, Y);
    let rec = dropped
        .iter()
        .map(|e| resolve(&agent, e))
        .find(|r| r.pod == "at/p" && r.verdict == "dropped")
        .unwrap_or_else(|| panic!("no drop event at p for port {Y}: {dropped:?}"));
    assert_eq!(rec.reason, "no rule", "{rec:?}");
    assert_eq!(rec.policy, None, "{rec:?}");
    assert_eq!(
        rec.isolated_by,
        vec!["at/allow-c".to_string(), "at/default-deny".to_string()],
        "{rec:?}"
    );
}
