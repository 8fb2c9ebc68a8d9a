//! The event → incremental path of the agent, without a kernel.

use policy_common::{dir, proto};
use policy_engine::lookup::verdict;
use policy_engine::model::Snapshot;
use policy_engine::testutil::ClusterBuilder;

use super::*;
use crate::dataplane::fake::FakeDataplane;
use crate::reconcile::NewEndpoint;

const ALLOW_FROM_B: &str = r#"
apiVersion: networking.k8s.io/v1
kind: NetworkPolicy
metadata: {name: from-b, namespace: default}
spec:
  podSelector: {matchLabels: {app: a}}
  ingress:
  - from:
    - podSelector: {matchLabels: {app: b}}
"#;

fn cluster() -> Snapshot {
    ClusterBuilder::new()
        .ns("default", &[])
        .ns("other", &[("team", "x")])
        .pod("default/a", &[("app", "a")], &["10.244.0.10"])
        .pod("default/b", &[("app", "b")], &["10.244.0.11"])
        .pod("default/c", &[("app", "c")], &["10.244.0.12"])
        .pod("other/d", &[("app", "b")], &["10.244.0.13"])
        .policy(ALLOW_FROM_B)
        .build()
}

/// What a watcher's first list of `s` sends, kind after kind.
fn listing(s: &Snapshot) -> Vec<Change> {
    let mut out: Vec<Change> = s
        .services
        .iter()
        .map(|(r, i)| Change::Service(r.clone(), Some(i.clone())))
        .collect();
    out.push(Change::Listed(Listed::Services(
        s.services.keys().cloned().collect(),
    )));
    // Each Service's subsets as slices of its own.
    let slices: Vec<(SliceRef, _)> = s
        .service_endpoints
        .iter()
        .flat_map(|(r, subsets)| {
            subsets.iter().enumerate().map(|(i, e)| {
                let slice = SliceRef {
                    service: r.clone(),
                    name: format!("{}-{i}", r.name),
                };
                (slice, e.clone())
            })
        })
        .collect();
    out.extend(
        slices
            .iter()
            .map(|(r, e)| Change::EndpointSlice(r.clone(), Some(e.clone()))),
    );
    out.push(Change::Listed(Listed::EndpointSlices(
        slices.into_iter().map(|(r, _)| r).collect(),
    )));
    out.extend(
        s.namespaces
            .iter()
            .map(|(n, i)| Change::Namespace(n.clone(), Some(i.clone()))),
    );
    out.push(Change::Listed(Listed::Namespaces(
        s.namespaces.keys().cloned().collect(),
    )));
    out.extend(
        s.pods
            .iter()
            .map(|(r, i)| Change::Pod(r.clone(), Some(i.clone()))),
    );
    out.push(Change::Listed(Listed::Pods(
        s.pods.keys().cloned().collect(),
    )));
    out.extend(
        s.policies
            .iter()
            .map(|(r, p)| Change::Policy(r.clone(), Box::new(Some(p.clone())))),
    );
    out.push(Change::Listed(Listed::NetworkPolicies(
        s.policies.keys().cloned().collect(),
    )));
    out
}

/// An agent that listed `cluster()` and enforces pod `default/a`.
fn synced() -> Agent<FakeDataplane> {
    let mut agent = Agent::new(FakeDataplane::default(), vec![]);
    agent.apply_changes(listing(&cluster())).unwrap();
    agent
        .add(NewEndpoint {
            container_id: "c1".into(),
            pod: PodRef::new("default", "a"),
            ifname: "veth-a".into(),
            pod_ifname: "eth0".into(),
            ips: vec!["10.244.0.10".parse().unwrap()],
        })
        .unwrap();
    agent
}

fn a_admits(agent: &Agent<FakeDataplane>, from: &str) -> bool {
    let ep = agent.dataplane().endpoints["veth-a"];
    verdict(
        &agent.dataplane().state,
        ep,
        dir::INGRESS,
        from.parse().unwrap(),
        proto::TCP,
        80,
    )
    .allowed
}

fn pod_of(agent: &Agent<FakeDataplane>, name: &str) -> (PodRef, PodInfo) {
    let r: PodRef = name.parse().unwrap();
    let info = agent.snapshot().pods[&r].clone();
    (r, info)
}

#[test]
fn nothing_is_compiled_until_every_kind_is_listed() {
    let mut agent = Agent::new(FakeDataplane::default(), vec![]);
    let mut changes = listing(&cluster());
    let last = changes.pop().unwrap();
    let out = agent.apply_changes(changes).unwrap();
    assert!(!out.written);
    assert_eq!(agent.dataplane().applies, 0);
    let err = agent.readiness().unwrap_err();
    assert!(err.contains("not listed yet: networkpolicies"), "{err}");
    // An ADD meanwhile is told to wait, not enforced against half a state.
    let early = agent.add(NewEndpoint {
        container_id: "c1".into(),
        pod: PodRef::new("default", "a"),
        ifname: "veth-a".into(),
        pod_ifname: "eth0".into(),
        ips: vec![],
    });
    assert!(
        matches!(early, Err(AgentError::NotSynced { .. })),
        "{early:?}"
    );
    let out = agent.apply_changes(vec![last]).unwrap();
    assert!(out.written);
    assert_eq!(agent.dataplane().applies, 1);
    assert_eq!(agent.readiness(), Ok(()));
}

#[test]
fn an_event_that_changes_nothing_applies_nothing() {
    let mut agent = synced();
    let applies = agent.dataplane().applies;
    let state = agent.dataplane().state.clone();
    let (r, info) = pod_of(&agent, "default/b");
    // The same entry again: what a status heartbeat or a new
    // resourceVersion becomes once the source has dropped the object.
    let out = agent
        .apply_changes(vec![Change::Pod(r, Some(info))])
        .unwrap();
    assert_eq!(out, Applied::default());
    // A pending → running transition with the same address changes no map.
    let (r, mut info) = pod_of(&agent, "default/c");
    info.phase = policy_engine::model::PodPhase::Pending;
    let out = agent
        .apply_changes(vec![Change::Pod(r, Some(info))])
        .unwrap();
    assert_eq!(out, Applied::default());
    assert_eq!(agent.dataplane().applies, applies);
    assert_eq!(agent.dataplane().state, state);
}

#[test]
fn a_relabel_is_one_small_diff() {
    let mut agent = synced();
    assert!(!a_admits(&agent, "10.244.0.12"));
    let applies = agent.dataplane().applies;
    let (r, mut info) = pod_of(&agent, "default/c");
    info.labels.insert("app".into(), "b".into());
    let out = agent
        .apply_changes(vec![Change::Pod(r, Some(info))])
        .unwrap();
    assert!(out.written);
    // c joins b's identity: one ipcache entry changes, nothing else.
    assert_eq!(out.ops, 1, "{out:?}");
    assert_eq!(agent.dataplane().applies, applies + 1);
    assert!(a_admits(&agent, "10.244.0.12"));
}

#[test]
fn a_relist_of_the_same_objects_applies_nothing_and_one_gone_is_removed() {
    let mut agent = synced();
    let applies = agent.dataplane().applies;
    let out = agent.apply_changes(listing(&cluster())).unwrap();
    assert_eq!((out.effective, out.written), (0, false));
    assert_eq!(agent.dataplane().applies, applies);

    // The relist after a 410 no longer returns pod b (deleted while the
    // watch was down): b's address leaves the ipcache.
    let mut now = cluster();
    now.pods.remove(&PodRef::new("default", "b"));
    assert!(a_admits(&agent, "10.244.0.11"));
    let out = agent.apply_changes(listing(&now)).unwrap();
    assert_eq!(out.effective, 1);
    assert!(out.written);
    assert!(!a_admits(&agent, "10.244.0.11"));
    assert!(!agent
        .snapshot()
        .pods
        .contains_key(&PodRef::new("default", "b")));
}

#[test]
fn a_lost_watch_makes_the_agent_not_ready_and_keeps_enforcing() {
    let mut agent = synced();
    let state = agent.dataplane().state.clone();
    agent
        .apply_changes(vec![Change::Lost {
            kind: Kind::Pods,
            reason: "403 Forbidden: pods is forbidden".into(),
        }])
        .unwrap();
    let why = agent.readiness().unwrap_err();
    assert!(why.contains("watch of pods lost: 403 Forbidden"), "{why}");
    assert_eq!(agent.dataplane().state, state, "the last state stays");
    // Policies still arrive and are enforced meanwhile.
    let (r, _) = agent.snapshot().policies.iter().next().unwrap();
    let r = r.clone();
    agent
        .apply_changes(vec![Change::Policy(r, Box::new(None))])
        .unwrap();
    assert!(a_admits(&agent, "10.244.0.12"));
    // The relist brings it back.
    let pods = agent.snapshot().pods.keys().cloned().collect();
    agent
        .apply_changes(vec![Change::Listed(Listed::Pods(pods))])
        .unwrap();
    assert_eq!(agent.readiness(), Ok(()));
}

#[test]
fn a_failed_apply_makes_the_agent_not_ready_until_one_succeeds() {
    let mut agent = synced();
    agent.dataplane.fail_applies = Some("no space left in map".into());
    let (r, mut info) = pod_of(&agent, "default/c");
    info.labels.insert("app".into(), "b".into());
    assert!(agent
        .apply_changes(vec![Change::Pod(r.clone(), Some(info.clone()))])
        .is_err());
    let why = agent.readiness().unwrap_err();
    assert!(why.contains("no space left in map"), "{why}");
    assert!(!a_admits(&agent, "10.244.0.12"));
    agent.dataplane.fail_applies = None;
    // The next batch writes the state even though it changes nothing.
    let out = agent
        .apply_changes(vec![Change::Pod(r, Some(info))])
        .unwrap();
    assert!(out.written);
    assert_eq!(agent.readiness(), Ok(()));
    assert!(a_admits(&agent, "10.244.0.12"));
}

#[test]
fn incremental_changes_end_where_a_full_compile_of_the_result_does() {
    let mut agent = synced();
    let (c, mut info) = pod_of(&agent, "default/c");
    info.labels.insert("app".into(), "b".into());
    let other = NamespaceInfo {
        labels: [
            (
                "kubernetes.io/metadata.name".to_string(),
                "other".to_string(),
            ),
            ("team".to_string(), "y".to_string()),
        ]
        .into(),
    };
    let wide = policy_engine::testutil::policy_yaml(
        r#"
apiVersion: networking.k8s.io/v1
kind: NetworkPolicy
metadata: {name: from-y, namespace: default}
spec:
  podSelector: {}
  ingress:
  - from:
    - namespaceSelector: {matchLabels: {team: y}}
"#,
    );
    let (wref, wide) = Policy::from_network_policy(&wide).unwrap();
    let changes = vec![
        Change::Pod(c, Some(info)),
        Change::Namespace("other".into(), Some(other)),
        Change::Policy(wref, Box::new(Some(wide))),
        Change::Pod(PodRef::new("default", "b"), None),
    ];
    for change in changes {
        agent.apply_changes(vec![change]).unwrap();
    }
    assert!(a_admits(&agent, "10.244.0.13"), "other/d is in team y now");
    let mut fresh = Agent::new(FakeDataplane::default(), vec![]);
    fresh.registry = std::mem::take(&mut agent.registry);
    fresh.set_snapshot(agent.snapshot().clone()).unwrap();
    for addr in [
        "10.244.0.10",
        "10.244.0.11",
        "10.244.0.12",
        "10.244.0.13",
        "192.0.2.1",
    ] {
        let ep = agent.dataplane().endpoints["veth-a"];
        let v = |a: &Agent<FakeDataplane>| {
            verdict(
                &a.dataplane().state,
                ep,
                dir::INGRESS,
                addr.parse().unwrap(),
                proto::TCP,
                80,
            )
            .allowed
        };
        assert_eq!(v(&agent), v(&fresh), "{addr}");
    }
}

const WEB_SERVICE: &str = r#"
apiVersion: v1
kind: Service
metadata: {name: web, namespace: default}
spec:
  clusterIP: 10.96.0.20
  selector: {app: a}
  ports: [{port: 80}]
"#;

const WEB_SLICE: &str = r#"
apiVersion: discovery.k8s.io/v1
kind: EndpointSlice
metadata: {name: web-x1, namespace: default, labels: {kubernetes.io/service-name: web}}
addressType: IPv4
endpoints: [{addresses: [10.244.0.10], conditions: {ready: true}}]
ports: [{port: 80}]
"#;

#[test]
fn services_and_endpoints_from_the_watch_reach_the_cluster_ip_map() {
    use policy_common::service_flags;
    use policy_engine::model::addr::to_addr;
    use policy_engine::model::slices::slice_from;
    use policy_engine::model::ServiceInfo;

    let mut agent = synced();
    let vip = to_addr("10.96.0.20".parse().unwrap());
    let svc: k8s_openapi::api::core::v1::Service = serde_norway::from_str(WEB_SERVICE).unwrap();
    let (r, info) = ServiceInfo::from_service(&svc).unwrap();
    let out = agent
        .apply_changes(vec![Change::Service(r.clone(), Some(info.clone()))])
        .unwrap();
    assert!(out.written);
    // No Endpoints yet: backends computed from the selector, a is local.
    assert_eq!(
        agent.dataplane().state.services.get(&vip),
        Some(&service_flags::ALL_LOCAL)
    );
    // The same Service again changes nothing.
    let out = agent
        .apply_changes(vec![Change::Service(r.clone(), Some(info))])
        .unwrap();
    assert_eq!(out.effective, 0);
    let slice: k8s_openapi::api::discovery::v1::EndpointSlice =
        serde_norway::from_str(WEB_SLICE).unwrap();
    let (sr, subset) = slice_from(&slice).unwrap();
    agent
        .apply_changes(vec![Change::EndpointSlice(sr.clone(), Some(subset))])
        .unwrap();
    assert!(agent.dataplane().state.services.contains_key(&vip));
    assert_eq!(agent.snapshot().service_endpoints[&sr.service].len(), 1);
    // A relist of the slices without it: the Service's backends are
    // computed from its selector again.
    agent
        .apply_changes(vec![Change::Listed(
            Listed::EndpointSlices(BTreeSet::new()),
        )])
        .unwrap();
    assert!(!agent.snapshot().service_endpoints.contains_key(&sr.service));
    // A relist without the Service removes its ClusterIP.
    agent
        .apply_changes(vec![Change::Listed(Listed::Services(BTreeSet::new()))])
        .unwrap();
    assert!(!agent.dataplane().state.services.contains_key(&vip));
}
