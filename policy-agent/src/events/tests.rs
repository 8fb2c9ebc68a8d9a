use std::time::{Duration, Instant, SystemTime};

use policy_engine::compile::CompileError;
use policy_engine::model::{PodRef, Snapshot};

use super::writer::{Limits, Queue};
use super::*;

const WEB_IN: &str = r#"
apiVersion: networking.k8s.io/v1
kind: NetworkPolicy
metadata: {name: web-in, namespace: shop}
spec:
  podSelector: {matchLabels: {app: web}}
"#;

fn snapshot() -> Snapshot {
    policy_engine::testutil::ClusterBuilder::new()
        .ns("shop", &[])
        .pod("shop/web", &[("app", "web")], &["10.0.0.2"])
        .pod("shop/db", &[("app", "db")], &["10.0.0.3"])
        .policy(WEB_IN)
        .build()
}

fn origin(generation: i64, listed: bool, seen: SystemTime) -> Origin {
    Origin {
        uid: "uid-1".into(),
        generation,
        seen,
        listed,
    }
}

fn web_in() -> PodRef {
    PodRef::new("shop", "web-in")
}

#[test]
fn an_enforced_change_is_reported_once_with_its_pods_and_latency() {
    let snap = snapshot();
    let local = [PodRef::new("shop", "web"), PodRef::new("shop", "db")];
    let mut t = Tracker::new("node-a");
    let t0 = SystemTime::UNIX_EPOCH + Duration::from_secs(1000);
    t.origin(web_in(), origin(3, false, t0));
    let n = t.applied(&snap, local.iter(), &[], t0 + Duration::from_millis(41));
    assert_eq!(n.len(), 1);
    assert!(!n[0].warning);
    assert_eq!(n[0].reason, ENFORCED);
    assert_eq!(
        n[0].note,
        "Enforced on node-a: 1 pod, 41 ms after the change (generation 3)"
    );
    // The same version again (a relist, a label change): nothing more.
    t.origin(web_in(), origin(3, false, t0));
    assert!(t.applied(&snap, local.iter(), &[], t0).is_empty());
    // A new version is reported.
    t.origin(web_in(), origin(4, false, t0));
    assert_eq!(t.applied(&snap, local.iter(), &[], t0).len(), 1);
}

#[test]
fn a_listed_policy_is_not_reported_unless_it_fails_closed() {
    let snap = snapshot();
    let mut t = Tracker::new("node-a");
    let now = SystemTime::now();
    t.origin(web_in(), origin(1, true, now));
    assert!(t.applied(&snap, std::iter::empty(), &[], now).is_empty());
    let err = CompileError::InvalidPolicy {
        policy: web_in(),
        field: "spec.ingress[0].ports[0].port".into(),
        message: "must be between 1 and 65535".into(),
    };
    t.origin(web_in(), origin(2, true, now));
    let n = t.applied(&snap, std::iter::empty(), &[err], now);
    assert_eq!(n.len(), 1);
    assert!(n[0].warning);
    assert_eq!(n[0].reason, INVALID);
    assert!(
        n[0].note.contains("spec.ingress[0].ports[0].port"),
        "{}",
        n[0].note
    );
}

#[test]
fn a_policy_deleted_before_the_apply_is_skipped() {
    let mut snap = snapshot();
    let mut t = Tracker::new("node-a");
    t.origin(web_in(), origin(1, false, SystemTime::now()));
    snap.policies.remove(&web_in());
    assert!(t
        .applied(&snap, std::iter::empty(), &[], SystemTime::now())
        .is_empty());
}

fn notice(uid: &str, note: &str) -> Message {
    Message::Notice(Notice {
        policy: PodRef::new("shop", uid),
        uid: uid.into(),
        warning: false,
        reason: ENFORCED,
        note: note.into(),
    })
}

/// 50 changes of one policy in a second: one event at once, then the
/// newest (with 48 merged into it) once the policy's interval is over.
#[test]
fn a_storm_of_one_policy_makes_two_events() {
    let limits = Limits::default();
    let t0 = Instant::now();
    let mut q = Queue::new(limits, t0);
    let mut written = Vec::new();
    for i in 0..50u64 {
        let now = t0 + Duration::from_millis(20 * i);
        assert!(q.take(notice("p", &format!("change {i}"))));
        while let Some(w) = q.pop(now) {
            written.push((now, w));
        }
    }
    let later = t0 + limits.per_policy + Duration::from_secs(1);
    assert_eq!(
        q.due(t0 + Duration::from_secs(1)),
        Some(t0 + limits.per_policy)
    );
    while let Some(w) = q.pop(later) {
        written.push((later, w));
    }
    let notes: Vec<(&str, u32)> = written
        .iter()
        .map(|(_, w)| (w.notice.note.as_str(), w.merged))
        .collect();
    assert_eq!(notes, vec![("change 0", 0), ("change 49", 48)]);
    assert!(q.is_empty());
}

#[test]
fn the_global_rate_holds_across_policies_and_a_full_queue_drops() {
    let limits = Limits {
        waiting: 100,
        ..Limits::default()
    };
    let t0 = Instant::now();
    let mut q = Queue::new(limits, t0);
    for i in 0..150 {
        let took = q.take(notice(&format!("p{i}"), "x"));
        assert_eq!(took, i < 100, "{i}");
    }
    let mut burst = 0;
    while q.pop(t0).is_some() {
        burst += 1;
    }
    assert_eq!(burst, limits.burst as usize);
    // Ten seconds later: twenty more, no more.
    let later = t0 + Duration::from_secs(10);
    let mut more = 0;
    while q.pop(later).is_some() {
        more += 1;
    }
    assert_eq!(more, 20);
    // A forgotten policy's notice is not written.
    q.take(Message::Forget(PodRef::new("shop", "p99")));
    assert_eq!(q.len(), 100 - 40 - 1);
}

/// Through the agent: a policy change and its origin in one batch make an
/// `Enforced` notice once applied; its deletion sends `Forget`; nothing
/// waits on the channel (a full one drops).
#[test]
fn the_agent_reports_what_it_applied_and_forgets_deleted_policies() {
    use crate::dataplane::fake::FakeDataplane;
    use crate::reconcile::Agent;
    use crate::source::Change;

    let (sender, mut rx) = channel(1);
    let mut agent = Agent::new(FakeDataplane::default(), vec![]).with_events("node-a", sender);
    let mut snap = snapshot();
    let spec = snap.policies.remove(&web_in()).unwrap();
    agent.apply_changes(vec![Change::Replace(snap)]).unwrap();
    assert!(rx.try_recv().is_err(), "nothing changed yet");
    agent
        .apply_changes(vec![
            Change::Policy(web_in(), Box::new(Some(spec.clone()))),
            Change::PolicyOrigin(web_in(), origin(1, false, SystemTime::now())),
        ])
        .unwrap();
    match rx.try_recv() {
        Ok(Message::Notice(n)) => {
            assert_eq!(n.reason, ENFORCED);
            assert!(
                n.note.starts_with("Enforced on node-a: 0 pods"),
                "{}",
                n.note
            );
        }
        other => panic!("{other:?}"),
    }
    // The channel holds one: a second notice while it is full is dropped,
    // and the agent goes on.
    agent
        .apply_changes(vec![Change::PolicyOrigin(
            web_in(),
            origin(2, false, SystemTime::now()),
        )])
        .unwrap();
    agent
        .apply_changes(vec![Change::PolicyOrigin(
            web_in(),
            origin(3, false, SystemTime::now()),
        )])
        .unwrap();
    assert!(matches!(rx.try_recv(), Ok(Message::Notice(_))));
    assert!(rx.try_recv().is_err());
    agent
        .apply_changes(vec![Change::Policy(web_in(), Box::new(None))])
        .unwrap();
    assert_eq!(rx.try_recv(), Ok(Message::Forget(web_in())));
}

#[test]
fn the_summary_keeps_each_nodes_newest_event_of_live_policies() {
    use k8s_openapi::api::events::v1::Event;
    let event = |node: &str, uid: &str, warning: bool, at: &str| -> Event {
        serde_json::from_value(serde_json::json!({
            "metadata": {"name": format!("{uid}.{node}.{at}"), "namespace": "shop"},
            "eventTime": at,
            "reportingController": CONTROLLER,
            "reportingInstance": format!("policy-agent-{node}"),
            "action": ACTION,
            "reason": if warning { INVALID } else { ENFORCED },
            "type": if warning { "Warning" } else { "Normal" },
            "note": format!("{uid} at {at}"),
            "regarding": {"kind": "NetworkPolicy", "namespace": "shop", "name": uid, "uid": uid},
        }))
        .unwrap()
    };
    let events = [
        event("a", "p1", true, "2026-01-01T00:00:01.000000Z"),
        // Fixed since: the newest is Normal.
        event("a", "p1", false, "2026-01-01T00:00:02.000000Z"),
        event("b", "p1", true, "2026-01-01T00:00:01.000000Z"),
        // Deleted policy: left out.
        event("b", "gone", true, "2026-01-01T00:00:03.000000Z"),
    ];
    let live = ["p1".to_string()].into_iter().collect();
    let s = cluster::summarize(&["a".into(), "b".into()], &[], &live, &events);
    assert_eq!(s.nodes.len(), 2);
    assert_eq!(s.nodes[0].node, "a");
    assert!(s.nodes[0].warnings.is_empty());
    assert_eq!(
        s.nodes[0].last_apply.as_ref().map(|l| l.note.as_str()),
        Some("p1 at 2026-01-01T00:00:02.000000Z")
    );
    assert_eq!(s.nodes[1].warnings.len(), 1);
    assert_eq!(s.nodes[1].warnings[0].policy, "shop/p1");
    assert_eq!(s.nodes[1].agent, "no agent pod");
    assert!(!s.healthy());
}
