//! A full map fails closed for the endpoint that overflows it, on the real
//! kernel: with room for 16 policy entries per generation, pod `a`'s policy
//! (20 ports) does not fit; `a` is denied all traffic both ways while pod
//! `b` keeps its exact policy, the metric and `/readyz` say so, and `a` is
//! enforced once its policy shrinks. A cluster with more pod addresses
//! than the ipcache holds is refused whole. Pinned maps of other sizes are
//! taken over like another layout's. Needs root.

#[path = "support/agent_bed.rs"]
mod agent_bed;
#[path = "support/kernel.rs"]
mod kernel;
#[path = "support/netns.rs"]
mod netns;

use agent_bed::{metrics, Bed};
use policy_agent::dataplane::{
    kernel::{KernelDataplane, KernelOptions, MapSizes, PinPaths},
    Dataplane,
};
use policy_engine::{model::Snapshot, state::MapState, testutil::ClusterBuilder};

/// Allowed from `c` to `a` and `b`.
const X: u16 = 7201;
/// Denied from `c` to `b` (and to `a` once its policy shrinks).
const Y: u16 = 7202;
const NET: u8 = 95;

fn small() -> MapSizes {
    MapSizes {
        policy: 16,
        ..MapSizes::default()
    }
}

fn ingress_from_c(name: &str, app: &str, ports: &[u16]) -> String {
    let ports: String = ports
        .iter()
        .map(|p| format!("    - port: {p}\n      protocol: UDP\n"))
        .collect();
    format!(
        "apiVersion: networking.k8s.io/v1
kind: NetworkPolicy
metadata:
  name: {name}
  namespace: mf
spec:
  podSelector:
    matchLabels:
      app: {app}
  policyTypes: [Ingress]
  ingress:
  - from:
    - podSelector:
        matchLabels:
          app: c
    ports:
{ports}"
    )
}

/// `a` allows `c` on X and on `extra` more ports; `b` allows `c` on X.
fn cluster(extra: u16) -> ClusterBuilder {
    let a_ports: Vec<u16> = std::iter::once(X)
        .chain((0..extra).map(|i| 7300 + i))
        .collect();
    ClusterBuilder::new()
        .ns("mf", &[])
        .pod("mf/a", &[("app", "a")], &["10.95.1.2"])
        .pod("mf/b", &[("app", "b")], &["10.95.2.2"])
        .pod("mf/c", &[("app", "c")], &["10.95.3.2"])
        .policy(&ingress_from_c("a-in", "a", &a_ports))
        .policy(&ingress_from_c("b-in", "b", &[X]))
}

fn bed(tag: &str) -> Bed {
    let mut bed = Bed::new(tag, NET);
    for (name, subnet) in [("a", 1), ("b", 2), ("c", 3)] {
        bed.pod(name, &format!("mf{name}-h"), subnet);
    }
    bed
}

#[test]
fn an_overflowing_endpoint_is_denied_both_ways_and_the_others_enforced() {
    kernel::require_root();
    let bed = bed("mapfull");
    let mut agent = bed.agent(small());
    assert_eq!(agent.dataplane().capacity().unwrap().policy, 16);
    bed.on_node(|| {
        agent.set_snapshot(cluster(19).build()).unwrap();
        for name in ["a", "b", "c"] {
            agent
                .add(bed.endpoint("mf", name, name, &format!("sandbox-{name}")))
                .unwrap();
        }
    });
    let denied = &agent.fit_report().denied;
    assert_eq!(
        denied
            .values()
            .map(|(p, _)| p.to_string())
            .collect::<Vec<_>>(),
        ["mf/a"],
        "{denied:?}"
    );
    // b keeps its exact policy.
    assert!(bed.reaches("c", "b", X), "b's allowed port blocked");
    assert!(!bed.reaches("c", "b", Y), "b's denied port passed");
    // a is denied both ways: its allowed port and its (unisolated) egress.
    assert!(
        !bed.reaches("c", "a", X),
        "an overflowing pod was reachable"
    );
    assert!(!bed.reaches("a", "c", X), "an overflowing pod could send");
    let why = agent.readiness().unwrap_err();
    assert!(
        why.contains("mf/a")
            && why.contains("policy map is full")
            && why.contains("--map-size-policy"),
        "{why}"
    );
    let (text, mut agent) = metrics(agent);
    assert!(
        text.contains(r#"palisade_map_full_endpoints{map="policy"} 1"#),
        "{text}"
    );
    assert!(
        text.contains(r#"palisade_map_capacity{map="policy"} 16"#),
        "{text}"
    );
    assert!(
        text.contains(r#"palisade_map_entries{map="policy"} 21"#),
        "{text}"
    );
    assert!(text.contains("palisade_ready 0"), "{text}");

    // a's policy shrinks: a is enforced as its policy says, b unchanged.
    bed.on_node(|| agent.set_snapshot(cluster(2).build()).unwrap());
    assert!(agent.fit_report().denied.is_empty());
    assert_eq!(agent.readiness(), Ok(()));
    assert!(bed.reaches("c", "a", X), "a not enforced after shrinking");
    assert!(!bed.reaches("c", "a", Y), "a's denied port passed");
    assert!(bed.reaches("a", "c", X), "a's egress still denied");
    assert!(bed.reaches("c", "b", X));
    let (text, _agent) = metrics(agent);
    assert!(
        text.contains(r#"palisade_map_full_endpoints{map="policy"} 0"#),
        "{text}"
    );
    assert!(text.contains("palisade_ready 1"), "{text}");
}

/// The ipcache holds every pod of the cluster: a cluster with more pod
/// addresses than it has room for is refused whole (nothing written, the
/// last good state enforced, not ready, the message names the flag).
#[test]
fn an_ipcache_too_small_for_the_cluster_keeps_the_last_state_and_is_not_ready() {
    kernel::require_root();
    let bed = bed("ipcachefull");
    let mut agent = bed.agent(MapSizes {
        ipcache: 16,
        ..MapSizes::default()
    });
    bed.on_node(|| {
        agent.set_snapshot(cluster(0).build()).unwrap();
        agent
            .add(bed.endpoint("mf", "b", "b", "sandbox-b"))
            .unwrap();
    });
    let revision = agent.dataplane().config().revision;
    let mut big: Snapshot = cluster(0).build();
    let mut more = ClusterBuilder::new().ns("mf", &[]);
    for i in 0..20 {
        more = more.pod(
            &format!("mf/p{i}"),
            &[("app", "p")],
            &[&format!("10.95.9.{}", i + 10)],
        );
    }
    big.pods.extend(more.build().pods);
    let e = bed
        .on_node(|| agent.set_snapshot(big))
        .unwrap_err()
        .to_string();
    assert!(
        e.contains("ipcache") && e.contains("--map-size-ipcache"),
        "{e}"
    );
    assert_eq!(
        agent.dataplane().config().revision,
        revision,
        "something was written"
    );
    let why = agent.readiness().unwrap_err();
    assert!(why.contains("ipcache"), "{why}");
    // b's last good policy is still enforced.
    assert!(bed.reaches("c", "b", X));
    assert!(!bed.reaches("c", "b", Y));
}

/// An agent started with other sizes over pinned maps: the old folder is
/// moved aside and taken over from like another layout's (restored
/// endpoints stay on the old programs until the first apply), and the maps
/// then have the new sizes.
#[test]
fn pinned_maps_of_other_sizes_are_replaced_like_a_layout_upgrade() {
    kernel::require_root();
    let bed = bed("resize");
    let host = bed.get("b").host.clone();
    let paths = PinPaths::new(&bed.pins.0);
    bed.on_node(|| {
        let mut opts = KernelOptions::new(&bed.pins.0);
        opts.sizes = small();
        let mut old = KernelDataplane::open(opts).unwrap();
        old.attach_endpoint(&host, 1).unwrap();
        old.apply(&MapState::default()).unwrap();
    });
    let dp = bed.on_node(|| {
        let mut dp = KernelDataplane::open(KernelOptions::new(&bed.pins.0)).unwrap();
        assert!(!dp.adopted(), "maps of other sizes were adopted");
        assert!(dp.upgrade_pending(), "no switch-over from the resized maps");
        dp.restore_endpoint(&host, 1).unwrap();
        assert_eq!(dp.pending_endpoints().len(), 1);
        dp.apply(&MapState::default()).unwrap();
        assert!(!dp.upgrade_pending());
        dp
    });
    assert_eq!(
        dp.capacity().unwrap().policy,
        MapSizes::default().policy as usize,
        "the maps do not have the new size"
    );
    let left: Vec<String> = paths
        .other_versions()
        .unwrap()
        .iter()
        .map(PinPaths::dir_name)
        .collect();
    assert!(left.is_empty(), "old folders left: {left:?}");
    assert_eq!(dp.attached().len(), 1, "the endpoint was not switched over");
    drop(dp);
    // The same sizes again: adopted.
    bed.on_node(|| {
        let dp = KernelDataplane::open(KernelOptions::new(&bed.pins.0)).unwrap();
        assert!(dp.adopted());
        assert!(!dp.upgrade_pending());
    });
}
