//! Attribution and audit mode with real packets: the agent core on the
//! kernel dataplane, pods wired by veth. A connection a rule allows is
//! reported with that policy and rule (the cookie the datapath read from
//! the policy map's value); a drop names the policies isolating the pod in
//! that direction. A policy in audit mode drops nothing: what it would
//! drop passes and is reported as a would-drop; without the annotation it
//! is enforced, and a flow it let through is cut on its next packet.
//! Needs root.

#[path = "support/agent_bed.rs"]
mod agent_bed;
#[path = "support/kernel.rs"]
mod kernel;
#[path = "support/netns.rs"]
mod netns;

use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
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

/// Pod `au/p` isolated for ingress only by `lock-p` (which admits nobody
/// but `app: admin` on X), in audit mode when `audit`.
fn audit_cluster(audit: bool) -> policy_engine::model::Snapshot {
    let annotations = if audit {
        ", annotations: {policy.palisade.dev/mode: audit}"
    } else {
        ""
    };
    ClusterBuilder::new()
        .ns("au", &[])
        .pod("au/p", &[("app", "p")], &["10.97.1.2"])
        .pod("au/c", &[("app", "c")], &["10.97.2.2"])
        .policy(&format!(
            "apiVersion: networking.k8s.io/v1
kind: NetworkPolicy
metadata: {{name: lock-p, namespace: au{annotations}}}
spec:
  podSelector: {{matchLabels: {{app: p}}}}
  ingress:
  - from: [{{podSelector: {{matchLabels: {{app: admin}}}}}}]
    ports: [{{port: {X}, protocol: UDP}}]
"
        ))
        .build()
}

#[test]
fn audit_mode_reports_would_drops_and_drops_nothing_until_enforced() {
    let mut bed = Bed::new("audit", 97);
    bed.pod("p", "aup-h", 1);
    bed.pod("c", "auc-h", 2);
    let mut agent = bed.agent(MapSizes::default());
    let mut reader = agent
        .dataplane_mut()
        .take_event_reader()
        .expect("event reader");
    bed.on_node(|| {
        agent.set_snapshot(audit_cluster(true)).unwrap();
        agent
            .add(bed.endpoint("au", "p", "p", "sandbox-p"))
            .unwrap();
        agent
            .add(bed.endpoint("au", "c", "c", "sandbox-c"))
            .unwrap();
    });

    // One UDP flow c → p:X kept open across the change.
    let (p, c) = (bed.get("p"), bed.get("c"));
    let dst = SocketAddr::from((p.addr, X));
    let got = netns::Received::default();
    let (stop, bound) = (AtomicBool::new(false), AtomicUsize::new(0));
    std::thread::scope(|s| {
        let _guard = netns::StopOnDrop([&stop, &stop]);
        s.spawn(|| {
            p.ns.enter();
            netns::serve_udp(dst, &got, &stop, &bound);
        });
        netns::wait_bound(&bound, 1);
        let src = c.addr;
        let mut sender = netns::in_ns(&c.ns, || netns::Sender::new(src, &[dst]));
        for _ in 0..5 {
            sender.round();
            std::thread::sleep(Duration::from_millis(20));
        }
        assert_eq!(got.settle(), 5, "audit mode dropped something");
        let evs = events_to(&mut reader, X);
        let recs: Vec<_> = evs.iter().map(|e| resolve(&agent, e)).collect();
        assert!(
            recs.iter().all(|r| r.verdict != "dropped"),
            "a drop in audit mode: {recs:?}"
        );
        let would = recs
            .iter()
            .find(|r| r.pod == "au/p" && r.verdict == "would-drop")
            .unwrap_or_else(|| panic!("no would-drop reported at p: {recs:?}"));
        assert_eq!(would.direction, "ingress", "{would:?}");
        assert_eq!(
            would.isolated_by,
            vec!["au/lock-p".to_string()],
            "{would:?}"
        );
        assert!(
            policy_agent::flows::matches(would, None, Some("audit")),
            "flows --verdict audit shows it"
        );

        // The annotation goes: enforced as a normal update; the open flow
        // is cut on its next packet.
        bed.on_node(|| agent.set_snapshot(audit_cluster(false)).unwrap());
        got.clear();
        for _ in 0..5 {
            sender.round();
            std::thread::sleep(Duration::from_millis(20));
        }
        assert_eq!(got.settle(), 0, "the open flow was not cut once enforced");
        let evs = events_to(&mut reader, X);
        let recs: Vec<_> = evs.iter().map(|e| resolve(&agent, e)).collect();
        let cut = recs
            .iter()
            .find(|r| r.pod == "au/p" && r.verdict == "dropped")
            .unwrap_or_else(|| panic!("no drop reported once enforced: {recs:?}"));
        assert_eq!(cut.isolated_by, vec!["au/lock-p".to_string()], "{cut:?}");
        stop.store(true, Ordering::SeqCst);
    });
    assert!(!bed.reaches("c", "p", X), "a new flow passes once enforced");
}
