//! Sandboxes of one pod, on the real kernel with the agent core: a pod's
//! second sandbox (a new CNI ADD, new container id, new netns) gets the
//! pod's policy even when it is given a lower endpoint id than the old one;
//! the old sandbox, in no state, is dropped until it is collected by its
//! veth vanishing (a lost DEL) or by CNI GC; a failed attach leaves no
//! endpoint, map entry, link, pin or program behind. Needs root.

#[path = "support/agent_bed.rs"]
mod agent_bed;
#[path = "support/kernel.rs"]
mod kernel;
#[path = "support/netns.rs"]
mod netns;

use agent_bed::Bed;
use aya::programs::{SchedClassifier, TcAttachType};
use policy_agent::dataplane::kernel::{KernelDataplane, MapSizes, PinPaths};
use policy_agent::reconcile::Agent;
use policy_engine::testutil::ClusterBuilder;

/// Allowed from `c` to pod `p`.
const X: u16 = 7501;
/// Denied from `c` to pod `p`.
const Y: u16 = 7502;
const NET: u8 = 93;

/// Pod `sb/p` (at `p_ip`) admits `c` on X only; `sb/q` and `sb/c` are
/// not isolated.
fn cluster(p_ip: &str) -> policy_engine::model::Snapshot {
    ClusterBuilder::new()
        .ns("sb", &[])
        .pod("sb/p", &[("app", "p")], &[p_ip])
        .pod("sb/q", &[("app", "q")], &["10.93.4.2"])
        .pod("sb/c", &[("app", "c")], &["10.93.3.2"])
        .policy(&format!(
            "apiVersion: networking.k8s.io/v1
kind: NetworkPolicy
metadata:
  name: p-in
  namespace: sb
spec:
  podSelector:
    matchLabels:
      app: p
  policyTypes: [Ingress]
  ingress:
  - from:
    - podSelector:
        matchLabels:
          app: c
    ports:
    - port: {X}
      protocol: UDP
"
        ))
        .build()
}

/// Programs attached to `ifname` at both hooks (call in the node
/// namespace); 0 when the interface is gone.
fn programs(ifname: &str) -> usize {
    [TcAttachType::Ingress, TcAttachType::Egress]
        .into_iter()
        .map(|t| {
            SchedClassifier::query_tcx(ifname, t)
                .map(|(_, progs)| progs.len())
                .unwrap_or(0)
        })
        .sum()
}

/// Link pins under the agent's folder.
fn link_pins(bed: &Bed) -> Vec<String> {
    let dir = PinPaths::new(&bed.pins.0).links_dir();
    let mut out: Vec<String> = std::fs::read_dir(dir)
        .map(|d| {
            d.flatten()
                .map(|e| e.file_name().to_string_lossy().into_owned())
                .collect()
        })
        .unwrap_or_default();
    out.sort();
    out
}

/// Two sandboxes of `sb/p` (`p1` old, `p2` new with the lower endpoint
/// id), plus the client `c`.
fn two_sandboxes(tag: &str) -> (Bed, Agent<KernelDataplane>) {
    let mut bed = Bed::new(tag, NET);
    bed.pod("p1", "sb1-h", 1);
    bed.pod("q", "sbq-h", 4);
    bed.pod("c", "sbc-h", 3);
    let mut agent = bed.agent(MapSizes::default());
    bed.on_node(|| {
        agent.set_snapshot(cluster("10.93.1.2")).unwrap();
        agent
            .add(bed.endpoint("sb", "q", "q", "sandbox-q"))
            .unwrap();
        agent
            .add(bed.endpoint("sb", "p", "p1", "sandbox-p1"))
            .unwrap();
    });
    assert!(
        bed.reaches("c", "p1", X),
        "the first sandbox is not enforced"
    );
    assert!(!bed.reaches("c", "p1", Y));
    // q goes: its endpoint id (the lowest) is free again.
    bed.on_node(|| agent.del("sandbox-q").unwrap());
    bed.pod("p2", "sb2-h", 2);
    bed.on_node(|| {
        agent
            .add(bed.endpoint("sb", "p", "p2", "sandbox-p2"))
            .unwrap()
    });
    let ids: Vec<(String, u32)> = agent
        .endpoints()
        .iter()
        .map(|e| (e.container_id.clone(), e.ep_id))
        .collect();
    assert_eq!(
        ids,
        [("sandbox-p1".to_string(), 2), ("sandbox-p2".to_string(), 1)],
        "the new sandbox should get the freed lower id"
    );
    (bed, agent)
}

#[test]
fn a_second_sandbox_gets_the_policy_and_a_vanished_one_is_collected() {
    kernel::require_root();
    let (mut bed, mut agent) = two_sandboxes("sbx");
    assert!(bed.reaches("c", "p2", X), "the new sandbox is not enforced");
    assert!(
        !bed.reaches("c", "p2", Y),
        "the new sandbox's denied port passed"
    );
    // The old sandbox is in no state: dropped, never allowed unjudged.
    assert!(!bed.reaches("c", "p1", X), "the old sandbox still passes");
    assert_eq!(bed.on_node(|| programs("sb1-h")), 2);

    // The old sandbox dies without a DEL: its veth goes, and the
    // agent's periodic sweep collects it.
    let old_ifindex = agent.dataplane().attached()["sb1-h"].ifindex;
    bed.kill("p1");
    assert_eq!(bed.on_node(|| agent.forget_vanished()).unwrap(), 1);
    let left: Vec<&str> = agent
        .endpoints()
        .iter()
        .map(|e| e.container_id.as_str())
        .collect();
    assert_eq!(left, ["sandbox-p2"]);
    assert!(!agent.dataplane().attached().contains_key("sb1-h"));
    assert!(
        link_pins(&bed)
            .iter()
            .all(|p| !p.starts_with(&format!("{old_ifindex}_"))),
        "the old sandbox's link pins are left: {:?}",
        link_pins(&bed)
    );
    assert_eq!(
        agent.dataplane().counts().endpoints,
        1,
        "endpoint entries left"
    );
    assert!(bed.reaches("c", "p2", X), "the new sandbox lost its policy");
}

#[test]
fn a_lost_del_is_collected_by_cni_gc() {
    kernel::require_root();
    let (bed, mut agent) = two_sandboxes("sbgc");
    let valid = [agent_api::Sandbox {
        container_id: "sandbox-p2".into(),
        ifname: "eth0".into(),
    }];
    assert_eq!(bed.on_node(|| agent.gc(&valid)).unwrap(), 1);
    let left: Vec<&str> = agent
        .endpoints()
        .iter()
        .map(|e| e.container_id.as_str())
        .collect();
    assert_eq!(left, ["sandbox-p2"]);
    // The old sandbox's veth is still there, with nothing of ours on it.
    assert_eq!(bed.on_node(|| programs("sb1-h")), 0);
    assert_eq!(link_pins(&bed).len(), 2, "{:?}", link_pins(&bed));
    assert_eq!(agent.dataplane().counts().endpoints, 1);
    assert!(bed.reaches("c", "p2", X));
    assert!(!bed.reaches("c", "p2", Y));
}

#[test]
fn a_failed_attach_leaves_no_debris() {
    kernel::require_root();
    let mut bed = Bed::new("sbfail", NET);
    bed.pod("p1", "sbf1-h", 1);
    bed.pod("c", "sbfc-h", 3);
    let mut agent = bed.agent(MapSizes::default());
    let state = tempfile::tempdir().unwrap();
    let state_file = state.path().join("endpoints.json");
    let saved = || std::fs::read_to_string(&state_file).unwrap_or_default();
    // The veth "vanishes" after the first of its two hooks.
    agent.dataplane_mut().fail_next_attach_after(1);
    agent = agent.with_state_file(state_file.clone());
    let err = bed.on_node(|| {
        agent.set_snapshot(cluster("10.93.1.2")).unwrap();
        agent.add(bed.endpoint("sb", "p", "p1", "sandbox-p1"))
    });
    assert!(err.is_err(), "the injected failure did not fail the ADD");
    assert!(agent.endpoints().is_empty(), "an endpoint is left");
    assert!(
        !saved().contains("sandbox-p1"),
        "the state file lists it: {}",
        saved()
    );
    assert!(agent.dataplane().attached().is_empty());
    assert_eq!(
        agent.dataplane().counts().endpoints,
        0,
        "an endpoint entry is left"
    );
    assert!(
        link_pins(&bed).is_empty(),
        "pins left: {:?}",
        link_pins(&bed)
    );
    assert_eq!(bed.on_node(|| programs("sbf1-h")), 0, "a program is left");

    // A veth gone before the attach: refused, nothing left either.
    bed.kill("p1");
    let gone = policy_agent::reconcile::NewEndpoint {
        container_id: "sandbox-p1b".into(),
        pod: policy_engine::model::PodRef::new("sb", "p"),
        ifname: "sbf1-h".into(),
        pod_ifname: "eth0".into(),
        ips: vec!["10.93.1.2".parse().unwrap()],
    };
    let err = bed.on_node(|| agent.add(gone));
    assert!(err.is_err());
    assert!(agent.endpoints().is_empty());
    assert_eq!(agent.dataplane().counts().endpoints, 0);
    assert!(link_pins(&bed).is_empty());

    // The next ADD of the pod on a live veth works.
    bed.pod("p2", "sbf2-h", 2);
    bed.on_node(|| {
        agent
            .add(bed.endpoint("sb", "p", "p2", "sandbox-p2"))
            .unwrap()
    });
    assert!(bed.reaches("c", "p2", X));
    assert!(!bed.reaches("c", "p2", Y));
}
