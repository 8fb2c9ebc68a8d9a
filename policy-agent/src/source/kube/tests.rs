use kube::core::Status;
use serde_json::json;

use super::*;

fn pod(name: &str, labels: serde_json::Value, status: serde_json::Value) -> Pod {
    serde_json::from_value(json!({
        "metadata": {"name": name, "namespace": "ns", "labels": labels, "resourceVersion": "7"},
        "spec": {"nodeName": "n1", "containers": [{"name": "c", "ports": [{"name": "http", "containerPort": 80}]}]},
        "status": status,
    }))
    .unwrap()
}

fn running(ip: &str) -> serde_json::Value {
    json!({"phase": "Running", "podIP": ip})
}

#[test]
fn a_pod_event_carries_only_the_model_entry() {
    let mut t = Translator::<Pod>::default();
    let change = t
        .event(Event::Apply(pod(
            "a",
            json!({"app": "a"}),
            running("10.0.0.1"),
        )))
        .unwrap();
    let Change::Pod(r, Some(info)) = change else {
        panic!("{change:?}")
    };
    assert_eq!(r, PodRef::new("ns", "a"));
    assert_eq!(info.node.as_deref(), Some("n1"));
    assert_eq!(info.labels["app"], "a");
    assert_eq!(info.ports[0].name.as_deref(), Some("http"));
}

#[test]
fn a_terminated_or_deleted_pod_is_a_removal() {
    let mut t = Translator::<Pod>::default();
    let done = pod(
        "a",
        json!({}),
        json!({"phase": "Succeeded", "podIP": "10.0.0.1"}),
    );
    assert_eq!(
        t.event(Event::Apply(done.clone())),
        Some(Change::Pod(PodRef::new("ns", "a"), None))
    );
    assert_eq!(
        t.event(Event::Delete(done)),
        Some(Change::Pod(PodRef::new("ns", "a"), None))
    );
}

/// A terminating pod stays (it may run through its grace period and is
/// still enforced) but is marked, so an address reused meanwhile goes to
/// the running pod; the same pod finished is a removal.
#[test]
fn a_terminating_pod_is_marked_and_a_finished_one_removed() {
    let mut t = Translator::<Pod>::default();
    let mut going = pod("a", json!({}), running("10.0.0.1"));
    going.metadata.deletion_timestamp = Some(k8s_openapi::apimachinery::pkg::apis::meta::v1::Time(
        "2026-01-01T00:00:00Z".parse().unwrap(),
    ));
    let Some(Change::Pod(_, Some(info))) = t.event(Event::Apply(going.clone())) else {
        panic!("a terminating pod is kept")
    };
    assert!(info.terminating);
    let Some(Change::Pod(_, Some(live))) =
        t.event(Event::Apply(pod("b", json!({}), running("10.0.0.1"))))
    else {
        panic!("a running pod is kept")
    };
    assert!(!live.terminating);
    assert!(live.address_claim() > info.address_claim());
    going.status.as_mut().unwrap().phase = Some("Failed".into());
    assert_eq!(
        t.event(Event::Apply(going)),
        Some(Change::Pod(PodRef::new("ns", "a"), None))
    );
}

#[test]
fn two_versions_differing_only_in_bookkeeping_give_equal_changes() {
    let mut t = Translator::<Pod>::default();
    let a = pod("a", json!({"app": "a"}), running("10.0.0.1"));
    let mut b = a.clone();
    b.metadata.resource_version = Some("8".into());
    b.metadata.annotations = Some([("x".to_string(), "y".to_string())].into());
    if let Some(s) = b.status.as_mut() {
        s.conditions = Some(vec![Default::default()]);
    }
    assert_eq!(t.event(Event::Apply(a)), t.event(Event::Apply(b)));

    let mut t = Translator::<NetworkPolicy>::default();
    let np: NetworkPolicy = serde_json::from_value(json!({
        "metadata": {"name": "p", "namespace": "ns", "resourceVersion": "1"},
        "spec": {"podSelector": {}},
    }))
    .unwrap();
    let mut np2 = np.clone();
    np2.metadata.resource_version = Some("2".into());
    np2.metadata.generation = Some(3);
    assert_eq!(t.event(Event::Apply(np)), t.event(Event::Apply(np2)));
}

#[test]
fn a_list_ends_with_every_name_it_returned() {
    let mut t = Translator::<Pod>::default();
    assert_eq!(t.event(Event::Init), None);
    for name in ["a", "b"] {
        assert!(matches!(
            t.event(Event::InitApply(pod(name, json!({}), running("10.0.0.1")))),
            Some(Change::Pod(_, Some(_)))
        ));
    }
    assert_eq!(
        t.event(Event::InitDone),
        Some(Change::Listed(Listed::Pods(
            [PodRef::new("ns", "a"), PodRef::new("ns", "b")].into()
        )))
    );
    // The next list starts from nothing.
    t.event(Event::Init);
    assert_eq!(
        t.event(Event::InitDone),
        Some(Change::Listed(Listed::Pods(BTreeSet::new())))
    );
}

#[test]
fn an_invalid_object_is_skipped_but_still_listed() {
    let mut t = Translator::<Pod>::default();
    t.event(Event::Init);
    let bad = pod("bad", json!({}), running("not-an-ip"));
    assert_eq!(t.event(Event::InitApply(bad.clone())), None);
    assert_eq!(t.event(Event::Apply(bad)), None);
    // Listed, so the last good version it had is not dropped.
    assert_eq!(
        t.event(Event::InitDone),
        Some(Change::Listed(Listed::Pods(
            [PodRef::new("ns", "bad")].into()
        )))
    );
}

#[test]
fn namespaces_get_their_name_label() {
    let mut t = Translator::<Namespace>::default();
    let ns: Namespace = serde_json::from_value(json!({"metadata": {"name": "x"}})).unwrap();
    let Some(Change::Namespace(name, Some(info))) = t.event(Event::Apply(ns)) else {
        panic!()
    };
    assert_eq!(name, "x");
    assert_eq!(info.labels["kubernetes.io/metadata.name"], "x");
}

fn status(code: u16, reason: &str, message: &str) -> Box<Status> {
    Box::new(Status::failure(message, reason).with_code(code))
}

#[test]
fn errors_are_classified_with_the_api_servers_words() {
    let forbidden = watcher::Error::InitialListFailed(kube::Error::Api(status(
        403,
        "Forbidden",
        "pods is forbidden: User \"system:serviceaccount:palisade:palisade\" cannot list resource \"pods\"",
    )));
    let Failure::Lost(reason) = classify(&forbidden) else {
        panic!()
    };
    assert!(
        reason.starts_with("403 Forbidden: pods is forbidden"),
        "{reason}"
    );
    assert_eq!(
        classify(&watcher::Error::WatchError(status(
            410, "Expired", "too old"
        ))),
        Failure::Gone
    );
    assert!(matches!(
        classify(&watcher::Error::NoResourceVersion),
        Failure::Lost(_)
    ));
}

#[test]
fn progress_counts_what_the_api_server_holds_with_the_newest_version() {
    let mut t = Translator::<Pod>::default();
    let with_rv = |name: &str, rv: &str, status: serde_json::Value| {
        let mut p = pod(name, json!({}), status);
        p.metadata.resource_version = Some(rv.into());
        p
    };
    t.event(Event::Init);
    t.event(Event::InitApply(with_rv("a", "10", running("10.0.0.1"))));
    // Terminated: not in the model, still an object of the API server.
    t.event(Event::InitApply(with_rv(
        "b",
        "12",
        json!({"phase": "Failed"}),
    )));
    t.event(Event::InitDone);
    let seen = |count, newest| Change::Seen {
        kind: Kind::Pods,
        count,
        newest,
    };
    assert_eq!(t.progress(), seen(2, 12));
    t.event(Event::Apply(with_rv("c", "15", running("10.0.0.3"))));
    assert_eq!(t.progress(), seen(3, 15));
    t.event(Event::Delete(with_rv("a", "16", running("10.0.0.1"))));
    assert_eq!(t.progress(), seen(2, 16));
}
