//! The upstream NetworkPolicy conformance cases (Kubernetes e2e
//! `test/e2e/network/netpol`), reproduced as our own table-driven tests on
//! the full x/y/z × a/b/c model. Each case states its truth table the way
//! the upstream suite does: everything allowed, then overrides. Loopback
//! pairs are not judged (upstream ignores them too).
//!
//! Cases with updates run through [`Engine`]: the verdicts are taken from
//! the previous state with the diff applied, so the incremental path is
//! what is checked.

use std::collections::BTreeMap;

use policy_engine::compile::{all_endpoints, Engine};
use policy_engine::model::{PodRef, Protocol, Snapshot};
use policy_engine::state::MapState;
use policy_engine::testutil::{policy_yaml, xyz_ip, xyz_model, XYZ_NAMESPACES, XYZ_PODS};
use policy_engine::tools::probe::{connection, End};

fn all_pods() -> Vec<String> {
    XYZ_NAMESPACES
        .iter()
        .flat_map(|ns| XYZ_PODS.iter().map(move |p| format!("{ns}/{p}")))
        .collect()
}

/// `*` = every pod, `x` = every pod of namespace x, `x/a` = one pod.
fn sel_matches(sel: &str, pod: &str) -> bool {
    sel == "*" || sel == pod || pod.split('/').next() == Some(sel)
}

/// Expected reachability, from → to.
#[derive(Clone)]
struct Truth(BTreeMap<(String, String), bool>);

impl Truth {
    fn all_allowed() -> Self {
        let mut m = BTreeMap::new();
        for f in all_pods() {
            for t in all_pods() {
                if f != t {
                    m.insert((f.clone(), t), true);
                }
            }
        }
        Truth(m)
    }
    fn peer(mut self, from: &str, to: &str, v: bool) -> Self {
        for ((f, t), val) in self.0.iter_mut() {
            if sel_matches(from, f) && sel_matches(to, t) {
                *val = v;
            }
        }
        self
    }
    fn all_ingress(self, pod: &str, v: bool) -> Self {
        self.peer("*", pod, v)
    }
    fn all_egress(self, pod: &str, v: bool) -> Self {
        self.peer(pod, "*", v)
    }
}

/// The cluster under test, compiled incrementally.
struct Cluster {
    snapshot: Snapshot,
    engine: Engine,
    state: MapState,
    endpoints: BTreeMap<PodRef, u32>,
}

impl Cluster {
    fn new() -> Self {
        let snapshot = xyz_model().build();
        let endpoints = all_endpoints(&snapshot);
        let mut c = Cluster {
            snapshot,
            engine: Engine::new(),
            state: MapState::default(),
            endpoints,
        };
        c.sync();
        c
    }

    fn sync(&mut self) {
        let ops = self.engine.update(&self.snapshot, &self.endpoints);
        self.absorb(ops);
    }

    /// Applies incremental ops and checks them against a full compile.
    fn absorb(&mut self, ops: Vec<policy_engine::state::MapOp>) {
        self.state.apply(&ops);
        let full = policy_engine::compile::compile(
            &self.snapshot,
            &self.endpoints,
            &mut self.engine.allocator().clone(),
        );
        assert_eq!(self.state, full.state);
        assert_eq!(self.state, self.engine.current().state);
        assert!(
            self.engine.current().errors.is_empty(),
            "{:?}",
            self.engine.current().errors
        );
    }

    /// Creates or updates a policy: `ns`, `name`, then the spec in YAML
    /// (indented by two spaces).
    fn apply(&mut self, ns: &str, name: &str, spec: &str) -> &mut Self {
        let yaml = format!("metadata: {{name: {name}, namespace: {ns}}}\nspec:\n{spec}");
        let r = self.snapshot.upsert_policy(&policy_yaml(&yaml)).unwrap();
        let ops = self.engine.policy_changed(&self.snapshot, &r);
        self.absorb(ops);
        self
    }

    fn delete_policies(&mut self) -> &mut Self {
        let all: Vec<PodRef> = self.snapshot.policies.keys().cloned().collect();
        for r in all {
            self.snapshot.remove_policy(&r);
            let ops = self.engine.policy_changed(&self.snapshot, &r);
            self.absorb(ops);
        }
        self
    }

    fn label_pod(&mut self, pod: &str, k: &str, v: &str) -> &mut Self {
        let r: PodRef = pod.parse().unwrap();
        self.snapshot
            .pods
            .get_mut(&r)
            .unwrap()
            .labels
            .insert(k.into(), v.into());
        self.sync();
        self
    }

    fn label_ns(&mut self, ns: &str, k: &str, v: &str) -> &mut Self {
        self.snapshot
            .namespaces
            .get_mut(ns)
            .unwrap()
            .labels
            .insert(k.into(), v.into());
        self.sync();
        self
    }

    #[track_caller]
    fn expect(&mut self, port: u16, proto: &str, truth: &Truth) -> &mut Self {
        let protocol: Protocol = proto.parse().unwrap();
        let mut wrong = Vec::new();
        for ((f, t), want) in &truth.0 {
            let c = connection(
                &self.snapshot,
                &self.state,
                &self.endpoints,
                &End::Pod(f.parse().unwrap()),
                &End::Pod(t.parse().unwrap()),
                protocol,
                port,
            )
            .unwrap();
            if c.allowed() != *want {
                wrong.push(format!(
                    "{f} -> {t}: want {want}, got {} ({})",
                    c.allowed(),
                    c.reason()
                ));
            }
        }
        assert!(wrong.is_empty(), "{port}/{proto}:\n{}", wrong.join("\n"));
        self
    }
}

fn all() -> Truth {
    Truth::all_allowed()
}

const DENY_INGRESS: &str = "  podSelector: {}\n  policyTypes: [Ingress]\n";
const DENY_ALL: &str = "  podSelector: {}\n  policyTypes: [Ingress, Egress]\n";
const POD_A: &str = "  podSelector: {matchLabels: {pod: a}}\n";

#[test]
fn default_deny_ingress_tcp_udp_sctp() {
    for proto in ["TCP", "UDP", "SCTP"] {
        Cluster::new()
            .apply("x", "deny-ingress", DENY_INGRESS)
            .expect(80, proto, &all().peer("*", "x", false));
    }
}

#[test]
fn default_deny_all() {
    Cluster::new().apply("x", "deny-all", DENY_ALL).expect(
        80,
        "TCP",
        &all().peer("*", "x", false).peer("x", "*", false),
    );
}

#[test]
fn allow_from_pods_in_server_namespace_by_pod_selector() {
    Cluster::new()
        .apply(
            "x",
            "x-a-allows-x-b",
            &format!(
                "{POD_A}  ingress: [{{from: [{{podSelector: {{matchLabels: {{pod: b}}}}}}]}}]\n"
            ),
        )
        .expect(
            80,
            "TCP",
            &all().all_ingress("x/a", false).peer("x/b", "x/a", true),
        );
}

#[test]
fn allow_ingress_for_a_target() {
    Cluster::new()
        .apply("x", "deny-all", DENY_INGRESS)
        .apply(
            "x",
            "allow-all-to-a",
            &format!(
                "{POD_A}  ingress: [{{from: [{{podSelector: {{}}, namespaceSelector: {{}}}}]}}]\n"
            ),
        )
        .expect(
            80,
            "TCP",
            &all().peer("*", "x", false).all_ingress("x/a", true),
        );
}

#[test]
fn allow_ingress_from_all_namespaces() {
    Cluster::new()
        .apply(
            "x",
            "allow-from-another-ns",
            &format!(
                "{POD_A}  ingress: [{{from: [{{namespaceSelector: {{matchLabels: {{}}}}}}]}}]\n"
            ),
        )
        .expect(80, "TCP", &all());
}

#[test]
fn allow_only_from_other_namespace_by_namespace_selector() {
    let denied = all().peer("x", "x/a", false).peer("z", "x/a", false);
    for sel in [
        "{matchLabels: {ns: y}}",
        "{matchExpressions: [{key: ns, operator: In, values: [y]}]}",
        "{matchLabels: {kubernetes.io/metadata.name: y}}",
    ] {
        Cluster::new()
            .apply(
                "x",
                "p",
                &format!("{POD_A}  ingress: [{{from: [{{namespaceSelector: {sel}}}]}}]\n"),
            )
            .expect(80, "TCP", &denied);
    }
}

#[test]
fn pod_selector_with_match_expressions() {
    Cluster::new()
        .apply("x", "p", &format!("{POD_A}  ingress: [{{from: [{{podSelector: {{matchExpressions: [{{key: pod, operator: In, values: [b]}}]}}}}]}}]\n"))
        .expect(80, "TCP", &all().all_ingress("x/a", false).peer("x/b", "x/a", true));
}

#[test]
fn pod_selector_or_namespace_selector() {
    Cluster::new()
        .apply("x", "p", &format!("{POD_A}  ingress:\n  - from:\n    - namespaceSelector: {{matchExpressions: [{{key: ns, operator: NotIn, values: [x]}}]}}\n    - podSelector: {{matchLabels: {{pod: b}}}}\n"))
        .expect(80, "TCP", &all().peer("x/c", "x/a", false));
}

#[test]
fn pod_selector_and_namespace_selector() {
    Cluster::new()
        .apply("x", "p", &format!("{POD_A}  ingress:\n  - from:\n    - namespaceSelector: {{matchExpressions: [{{key: ns, operator: NotIn, values: [x]}}]}}\n      podSelector: {{matchLabels: {{pod: b}}}}\n"))
        .expect(
            80,
            "TCP",
            &all()
                .all_ingress("x/a", false)
                .peer("y/b", "x/a", true)
                .peer("z/b", "x/a", true),
        );
}

#[test]
fn multiple_pod_selectors_and_namespace_selectors() {
    Cluster::new()
        .apply("x", "p", &format!("{POD_A}  ingress:\n  - from:\n    - namespaceSelector: {{matchExpressions: [{{key: ns, operator: NotIn, values: [x]}}]}}\n      podSelector: {{matchExpressions: [{{key: pod, operator: In, values: [b, c]}}]}}\n"))
        .expect(
            80,
            "TCP",
            &all()
                .all_ingress("x/a", false)
                .peer("y/b", "x/a", true)
                .peer("y/c", "x/a", true)
                .peer("z/b", "x/a", true)
                .peer("z/c", "x/a", true),
        );
}

#[test]
fn any_pod_selectors() {
    Cluster::new()
        .apply("x", "p", &format!("{POD_A}  ingress: [{{from: [{{podSelector: {{matchLabels: {{pod: b}}}}}}, {{podSelector: {{matchLabels: {{pod: c}}}}}}]}}]\n"))
        .expect(
            80,
            "TCP",
            &all().all_ingress("x/a", false).peer("x/b", "x/a", true).peer("x/c", "x/a", true),
        );
}

#[test]
fn pod_in_other_namespace_by_pod_and_namespace_selector_all_protocols() {
    for proto in ["TCP", "UDP", "SCTP"] {
        Cluster::new()
            .apply("x", "p", &format!("{POD_A}  ingress: [{{from: [{{namespaceSelector: {{matchLabels: {{ns: y}}}}, podSelector: {{matchLabels: {{pod: a}}}}}}]}}]\n"))
            .expect(80, proto, &all().all_ingress("x/a", false).peer("y/a", "x/a", true));
    }
}

#[test]
fn ports_and_stacked_policies() {
    for proto in ["TCP", "UDP", "SCTP"] {
        let port81 = all().peer("x", "x/a", false).peer("z", "x/a", false);
        let mut c = Cluster::new();
        c.apply("x", "allow-81", &format!("{POD_A}  ingress: [{{from: [{{namespaceSelector: {{matchLabels: {{ns: y}}}}}}], ports: [{{port: 81, protocol: {proto}}}]}}]\n"))
            .expect(81, proto, &port81)
            .expect(80, proto, &all().all_ingress("x/a", false));
        c.apply("x", "allow-80", &format!("{POD_A}  ingress: [{{from: [{{namespaceSelector: {{matchLabels: {{ns: y}}}}}}], ports: [{{port: 80, protocol: {proto}}}]}}]\n"))
            .expect(80, proto, &port81);
    }
}

#[test]
fn allow_all_policy() {
    Cluster::new()
        .apply("x", "allow-all", "  podSelector: {}\n  ingress: [{}]\n")
        .expect(80, "TCP", &all())
        .expect(81, "TCP", &all());
}

#[test]
fn ingress_on_one_named_port() {
    Cluster::new()
        .apply(
            "x",
            "allow-all",
            "  podSelector: {}\n  ingress: [{ports: [{port: serve-81-tcp}]}]\n",
        )
        .expect(81, "TCP", &all())
        .expect(80, "TCP", &all().peer("*", "x", false))
        .expect(81, "UDP", &all().peer("*", "x", false));
}

#[test]
fn ingress_from_namespace_on_one_named_port() {
    Cluster::new()
        .apply("x", "p", &format!("{POD_A}  ingress: [{{from: [{{namespaceSelector: {{matchLabels: {{ns: y}}}}}}], ports: [{{port: serve-80-tcp, protocol: TCP}}]}}]\n"))
        .expect(80, "TCP", &all().peer("x", "x/a", false).peer("z", "x/a", false))
        .expect(81, "TCP", &all().all_ingress("x/a", false));
}

#[test]
fn egress_on_one_named_port() {
    Cluster::new()
        .apply("x", "allow-egress", "  podSelector: {}\n  policyTypes: [Egress]\n  egress: [{ports: [{port: serve-80-tcp}]}]\n")
        .expect(80, "TCP", &all())
        .expect(81, "TCP", &all().peer("x", "*", false));
}

#[test]
fn updated_policy() {
    Cluster::new()
        .apply(
            "x",
            "allow-all-mutate-to-deny-all",
            "  podSelector: {}\n  ingress: [{}]\n",
        )
        .expect(81, "TCP", &all())
        .apply(
            "x",
            "allow-all-mutate-to-deny-all",
            "  podSelector: {}\n  ingress: []\n",
        )
        .expect(81, "TCP", &all().peer("*", "x", false));
}

#[test]
fn ingress_from_updated_namespace() {
    Cluster::new()
        .apply("x", "p", &format!("{POD_A}  ingress: [{{from: [{{namespaceSelector: {{matchLabels: {{ns2: updated}}}}}}]}}]\n"))
        .expect(80, "TCP", &all().all_ingress("x/a", false))
        .label_ns("y", "ns2", "updated")
        .expect(80, "TCP", &all().all_ingress("x/a", false).peer("y", "*", true));
}

#[test]
fn ingress_from_updated_pod() {
    Cluster::new()
        .apply("x", "p", &format!("{POD_A}  ingress: [{{from: [{{podSelector: {{matchLabels: {{pod: b, pod2: updated}}}}}}]}}]\n"))
        .expect(80, "TCP", &all().all_ingress("x/a", false))
        .label_pod("x/b", "pod2", "updated")
        .expect(80, "TCP", &all().all_ingress("x/a", false).peer("x/b", "x/a", true));
}

#[test]
fn deny_ingress_from_other_namespaces() {
    Cluster::new()
        .apply(
            "x",
            "deny-empty-policy",
            "  podSelector: {}\n  ingress: [{from: [{podSelector: {matchLabels: {}}}]}]\n",
        )
        .expect(
            80,
            "TCP",
            &all().peer("y", "x", false).peer("z", "x", false),
        );
}

#[test]
fn deny_ingress_to_updated_pod() {
    Cluster::new()
        .apply(
            "x",
            "p",
            "  podSelector: {matchLabels: {target: isolated}}\n  policyTypes: [Ingress]\n",
        )
        .expect(80, "TCP", &all())
        .label_pod("x/a", "target", "isolated")
        .expect(80, "TCP", &all().all_ingress("x/a", false));
}

#[test]
fn deny_egress_by_pod_selector_and_namespace() {
    Cluster::new()
        .apply("x", "p", &format!("{POD_A}  policyTypes: [Egress]\n"))
        .expect(80, "TCP", &all().all_egress("x/a", false));
    Cluster::new()
        .apply("x", "p", "  podSelector: {}\n  policyTypes: [Egress]\n")
        .expect(80, "TCP", &all().peer("x", "*", false));
}

#[test]
fn ingress_and_egress_together() {
    Cluster::new()
        .apply("x", "p", &format!("{POD_A}  policyTypes: [Egress, Ingress]\n  ingress: [{{from: [{{podSelector: {{matchLabels: {{pod: b}}}}}}]}}]\n  egress: [{{ports: [{{port: 80}}]}}]\n"))
        .expect(80, "TCP", &all().all_ingress("x/a", false).peer("x/b", "x/a", true))
        .expect(
            81,
            "TCP",
            &all()
                .all_ingress("x/a", false)
                .all_egress("x/a", false)
                .peer("x/b", "x/a", true),
        );
}

#[test]
fn client_side_egress_denies_even_if_server_allows() {
    Cluster::new()
        .apply("x", "allow-to-ns-y-pod-a", &format!("{POD_A}  policyTypes: [Egress]\n  egress: [{{to: [{{namespaceSelector: {{matchLabels: {{ns: y}}}}, podSelector: {{matchLabels: {{pod: a}}}}}}]}}]\n"))
        .apply("y", "allow-from-xa-on-ya", &format!("{POD_A}  ingress: [{{from: [{{namespaceSelector: {{matchLabels: {{ns: x}}}}, podSelector: {{matchLabels: {{pod: a}}}}}}]}}]\n"))
        .apply("y", "allow-from-xa-on-yb", "  podSelector: {matchLabels: {pod: b}}\n  ingress: [{from: [{namespaceSelector: {matchLabels: {ns: x}}, podSelector: {matchLabels: {pod: a}}}]}]\n")
        .expect(
            80,
            "TCP",
            &all()
                .peer("x/a", "*", false)
                .peer("*", "y/a", false)
                .peer("x/a", "y/a", true)
                .peer("*", "y/b", false),
        );
}

#[test]
fn egress_to_server_in_other_namespace() {
    Cluster::new()
        .apply("x", "p", &format!("{POD_A}  policyTypes: [Egress]\n  egress: [{{to: [{{namespaceSelector: {{matchLabels: {{ns: y}}}}, podSelector: {{matchLabels: {{pod: a}}}}}}]}}]\n"))
        .expect(80, "TCP", &all().all_egress("x/a", false).peer("x/a", "y/a", true));
}

#[test]
fn ingress_any_port_on_one_protocol() {
    Cluster::new()
        .apply(
            "x",
            "p",
            &format!("{POD_A}  ingress: [{{ports: [{{protocol: TCP}}]}}]\n"),
        )
        .expect(80, "TCP", &all())
        .expect(80, "UDP", &all().all_ingress("x/a", false));
}

#[test]
fn allow_all_takes_precedence_ingress_and_egress() {
    Cluster::new()
        .apply(
            "x",
            "allow-80",
            "  podSelector: {}\n  ingress: [{ports: [{port: 80}]}]\n",
        )
        .expect(81, "TCP", &all().peer("*", "x", false))
        .apply("x", "allow-all", "  podSelector: {}\n  ingress: [{}]\n")
        .expect(81, "TCP", &all());
    Cluster::new()
        .apply(
            "x",
            "allow-80",
            "  podSelector: {}\n  policyTypes: [Egress]\n  egress: [{ports: [{port: 80}]}]\n",
        )
        .expect(81, "TCP", &all().peer("x", "*", false))
        .apply(
            "x",
            "allow-all",
            "  podSelector: {}\n  policyTypes: [Egress]\n  egress: [{}]\n",
        )
        .expect(81, "TCP", &all());
}

#[test]
fn stop_enforcing_after_delete() {
    Cluster::new()
        .apply("x", "deny-all", DENY_ALL)
        .expect(
            80,
            "TCP",
            &all().peer("x", "*", false).peer("*", "x", false),
        )
        .delete_policies()
        .expect(80, "TCP", &all());
}

#[test]
fn egress_to_server_in_cidr_block() {
    let yb = xyz_ip("y", "b");
    Cluster::new()
        .apply("x", "p", &format!("{POD_A}  policyTypes: [Egress]\n  egress: [{{to: [{{ipBlock: {{cidr: {yb}/32}}}}]}}]\n"))
        .expect(80, "TCP", &all().all_egress("x/a", false).peer("x/a", "y/b", true));
}

#[test]
fn except_clause_and_overlap() {
    let xb = xyz_ip("x", "b");
    Cluster::new()
        .apply("x", "p", &format!("{POD_A}  policyTypes: [Egress]\n  egress: [{{to: [{{ipBlock: {{cidr: 10.0.0.0/8, except: [{xb}/32]}}}}]}}]\n"))
        .expect(80, "TCP", &all().peer("x/a", "x/b", false))
        .apply("x", "p", &format!("{POD_A}  policyTypes: [Egress]\n  egress: [{{to: [{{ipBlock: {{cidr: {xb}/32}}}}]}}]\n"))
        .expect(80, "TCP", &all().all_egress("x/a", false).peer("x/a", "x/b", true));
    // Both at once (two policies): the /32 allows what the other excepts.
    Cluster::new()
        .apply("x", "p", &format!("{POD_A}  policyTypes: [Egress]\n  egress: [{{to: [{{ipBlock: {{cidr: 10.0.0.0/8, except: [{xb}/32]}}}}]}}]\n"))
        .apply("x", "q", &format!("{POD_A}  policyTypes: [Egress]\n  egress: [{{to: [{{ipBlock: {{cidr: {xb}/32}}}}]}}]\n"))
        .expect(80, "TCP", &all());
}

#[test]
fn ingress_and_egress_controlled_independently() {
    Cluster::new()
        .apply(
            "x",
            "allow-egress-for-target",
            &format!("{POD_A}  policyTypes: [Egress]\n  egress: [{{}}]\n"),
        )
        .expect(80, "TCP", &all())
        .apply(
            "x",
            "deny-ingress",
            &format!("{POD_A}  policyTypes: [Ingress]\n"),
        )
        .expect(80, "TCP", &all().all_ingress("x/a", false));
}

#[test]
fn sctp_or_udp_is_never_tcp() {
    Cluster::new()
        .apply("x", "deny-ingress", DENY_INGRESS)
        .apply(
            "x",
            "allow-sctp-81",
            &format!("{POD_A}  ingress: [{{ports: [{{port: 81, protocol: SCTP}}]}}]\n"),
        )
        .expect(81, "TCP", &all().peer("*", "x", false))
        .expect(
            81,
            "SCTP",
            &all().peer("*", "x", false).all_ingress("x/a", true),
        );
    Cluster::new()
        .apply(
            "x",
            "allow-sctp-80",
            &format!("{POD_A}  ingress: [{{ports: [{{port: 80, protocol: SCTP}}]}}]\n"),
        )
        .expect(81, "TCP", &all().all_ingress("x/a", false));
    Cluster::new()
        .apply(
            "x",
            "allow-udp-81",
            &format!("{POD_A}  ingress: [{{ports: [{{port: 81, protocol: UDP}}]}}]\n"),
        )
        .expect(81, "TCP", &all().all_ingress("x/a", false))
        .expect(81, "UDP", &all());
}

#[test]
fn egress_namespace_not_in_by_default_label() {
    Cluster::new()
        .apply("x", "p", &format!("{POD_A}  policyTypes: [Egress]\n  egress: [{{to: [{{namespaceSelector: {{matchExpressions: [{{key: kubernetes.io/metadata.name, operator: NotIn, values: [y]}}]}}}}]}}]\n"))
        .expect(80, "TCP", &all().peer("x/a", "y", false));
}

#[test]
fn end_port_ranges() {
    Cluster::new()
        .apply("x", "p", &format!("{POD_A}  ingress: [{{from: [{{namespaceSelector: {{matchLabels: {{ns: y}}}}}}], ports: [{{port: 80, endPort: 81}}]}}]\n"))
        .expect(80, "TCP", &all().peer("x", "x/a", false).peer("z", "x/a", false))
        .expect(81, "TCP", &all().peer("x", "x/a", false).peer("z", "x/a", false))
        .expect(81, "UDP", &all().all_ingress("x/a", false));
    Cluster::new()
        .apply("x", "p", "  podSelector: {}\n  policyTypes: [Egress]\n  egress: [{ports: [{port: 81, endPort: 90, protocol: SCTP}]}]\n")
        .expect(81, "SCTP", &all())
        .expect(80, "SCTP", &all().peer("x", "*", false));
}

#[test]
fn pod_deleted_and_added() {
    let mut c = Cluster::new();
    c.apply(
        "x",
        "p",
        &format!("{POD_A}  ingress: [{{from: [{{podSelector: {{matchLabels: {{pod: b}}}}}}]}}]\n"),
    )
    .expect(
        80,
        "TCP",
        &all().all_ingress("x/a", false).peer("x/b", "x/a", true),
    );
    // A new pod matching the peer selector is admitted at once.
    let mut info = c.snapshot.pods[&"x/b".parse::<PodRef>().unwrap()].clone();
    info.ips = vec!["10.1.0.9".parse().unwrap()];
    c.snapshot.insert_pod("x/b2".parse().unwrap(), info);
    c.endpoints = all_endpoints(&c.snapshot);
    c.sync();
    let st = c.state.clone();
    let ok = connection(
        &c.snapshot,
        &st,
        &c.endpoints,
        &"x/b2".parse().unwrap(),
        &"x/a".parse().unwrap(),
        Protocol::Tcp,
        80,
    )
    .unwrap();
    assert!(ok.allowed());
    // Deleting x/b drops its address from the ipcache.
    c.snapshot.remove_pod(&"x/b".parse().unwrap());
    c.snapshot.remove_pod(&"x/b2".parse().unwrap());
    c.endpoints = all_endpoints(&c.snapshot);
    c.sync();
    let ip: std::net::IpAddr = xyz_ip("x", "b").parse().unwrap();
    let denied = connection(
        &c.snapshot,
        &c.state,
        &c.endpoints,
        &End::Ip(ip),
        &"x/a".parse().unwrap(),
        Protocol::Tcp,
        80,
    )
    .unwrap();
    assert!(!denied.allowed());
}
