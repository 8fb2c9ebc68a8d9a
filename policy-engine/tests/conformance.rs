//! The upstream NetworkPolicy conformance cases (Kubernetes e2e
//! `test/e2e/network/netpol`), reproduced as our own table-driven tests on
//! the full x/y/z × a/b/c model. The cases themselves (policies, relabels,
//! truth tables) live in `policy_engine::testutil::conformance`, shared with
//! the test bed's conformance test that runs them with real packets; here
//! one test per upstream test runs the cases of its group. Loopback pairs
//! are not judged (upstream ignores them too).
//!
//! Cases with updates run through [`Engine`]: the verdicts are taken from
//! the previous state with the diff applied, so the incremental path is
//! what is checked.

use std::collections::BTreeMap;

use policy_engine::compile::{all_endpoints, Engine};
use policy_engine::model::{PodRef, Protocol, Snapshot};
use policy_engine::state::MapState;
use policy_engine::testutil::conformance::{cases, Step, Truth};
use policy_engine::testutil::{policy_yaml, xyz_ip, xyz_model};
use policy_engine::tools::probe::{connection, End};

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
        let yaml = Step::policy_yaml(ns, name, spec);
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

    fn relabel(&mut self, step: &Step) -> &mut Self {
        assert!(step.relabel(&mut self.snapshot), "not a relabel: {step:?}");
        self.sync();
        self
    }

    fn expect(&mut self, case: &str, port: u16, protocol: Protocol, truth: &Truth) -> &mut Self {
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
        assert!(
            wrong.is_empty(),
            "{case}: {port}/{protocol}:\n{}",
            wrong.join("\n")
        );
        self
    }
}

/// Runs every shared case of `group` on a fresh cluster each.
fn run(group: &str) {
    let cases: Vec<_> = cases().into_iter().filter(|c| c.group == group).collect();
    assert!(!cases.is_empty(), "no conformance case in group {group}");
    for case in cases {
        let mut c = Cluster::new();
        for step in &case.steps {
            match step {
                Step::Apply {
                    namespace,
                    name,
                    spec,
                } => c.apply(namespace, name, spec),
                Step::DeletePolicies => c.delete_policies(),
                Step::LabelPod { .. } | Step::LabelNs { .. } => c.relabel(step),
                Step::Expect {
                    port,
                    protocol,
                    truth,
                } => c.expect(&case.name, *port, *protocol, truth),
            };
        }
    }
}

#[test]
fn default_deny_ingress_tcp_udp_sctp() {
    run("default_deny_ingress_tcp_udp_sctp");
}

#[test]
fn default_deny_all() {
    run("default_deny_all");
}

#[test]
fn allow_from_pods_in_server_namespace_by_pod_selector() {
    run("allow_from_pods_in_server_namespace_by_pod_selector");
}

#[test]
fn allow_ingress_for_a_target() {
    run("allow_ingress_for_a_target");
}

#[test]
fn allow_ingress_from_all_namespaces() {
    run("allow_ingress_from_all_namespaces");
}

#[test]
fn allow_only_from_other_namespace_by_namespace_selector() {
    run("allow_only_from_other_namespace_by_namespace_selector");
}

#[test]
fn pod_selector_with_match_expressions() {
    run("pod_selector_with_match_expressions");
}

#[test]
fn pod_selector_or_namespace_selector() {
    run("pod_selector_or_namespace_selector");
}

#[test]
fn pod_selector_and_namespace_selector() {
    run("pod_selector_and_namespace_selector");
}

#[test]
fn multiple_pod_selectors_and_namespace_selectors() {
    run("multiple_pod_selectors_and_namespace_selectors");
}

#[test]
fn any_pod_selectors() {
    run("any_pod_selectors");
}

#[test]
fn pod_in_other_namespace_by_pod_and_namespace_selector_all_protocols() {
    run("pod_in_other_namespace_by_pod_and_namespace_selector_all_protocols");
}

#[test]
fn ports_and_stacked_policies() {
    run("ports_and_stacked_policies");
}

#[test]
fn allow_all_policy() {
    run("allow_all_policy");
}

#[test]
fn ingress_on_one_named_port() {
    run("ingress_on_one_named_port");
}

#[test]
fn ingress_from_namespace_on_one_named_port() {
    run("ingress_from_namespace_on_one_named_port");
}

#[test]
fn egress_on_one_named_port() {
    run("egress_on_one_named_port");
}

#[test]
fn updated_policy() {
    run("updated_policy");
}

#[test]
fn ingress_from_updated_namespace() {
    run("ingress_from_updated_namespace");
}

#[test]
fn ingress_from_updated_pod() {
    run("ingress_from_updated_pod");
}

#[test]
fn deny_ingress_from_other_namespaces() {
    run("deny_ingress_from_other_namespaces");
}

#[test]
fn deny_ingress_to_updated_pod() {
    run("deny_ingress_to_updated_pod");
}

#[test]
fn deny_egress_by_pod_selector_and_namespace() {
    run("deny_egress_by_pod_selector_and_namespace");
}

#[test]
fn ingress_and_egress_together() {
    run("ingress_and_egress_together");
}

#[test]
fn client_side_egress_denies_even_if_server_allows() {
    run("client_side_egress_denies_even_if_server_allows");
}

#[test]
fn egress_to_server_in_other_namespace() {
    run("egress_to_server_in_other_namespace");
}

#[test]
fn ingress_any_port_on_one_protocol() {
    run("ingress_any_port_on_one_protocol");
}

#[test]
fn allow_all_takes_precedence_ingress_and_egress() {
    run("allow_all_takes_precedence_ingress_and_egress");
}

#[test]
fn stop_enforcing_after_delete() {
    run("stop_enforcing_after_delete");
}

#[test]
fn egress_to_server_in_cidr_block() {
    run("egress_to_server_in_cidr_block");
}

#[test]
fn except_clause_and_overlap() {
    run("except_clause_and_overlap");
}

#[test]
fn ingress_and_egress_controlled_independently() {
    run("ingress_and_egress_controlled_independently");
}

#[test]
fn sctp_or_udp_is_never_tcp() {
    run("sctp_or_udp_is_never_tcp");
}

#[test]
fn egress_namespace_not_in_by_default_label() {
    run("egress_namespace_not_in_by_default_label");
}

#[test]
fn end_port_ranges() {
    run("end_port_ranges");
}

/// Every group of shared cases has its test above.
#[test]
fn every_case_group_is_run() {
    const GROUPS: &[&str] = &[
        "default_deny_ingress_tcp_udp_sctp",
        "default_deny_all",
        "allow_from_pods_in_server_namespace_by_pod_selector",
        "allow_ingress_for_a_target",
        "allow_ingress_from_all_namespaces",
        "allow_only_from_other_namespace_by_namespace_selector",
        "pod_selector_with_match_expressions",
        "pod_selector_or_namespace_selector",
        "pod_selector_and_namespace_selector",
        "multiple_pod_selectors_and_namespace_selectors",
        "any_pod_selectors",
        "pod_in_other_namespace_by_pod_and_namespace_selector_all_protocols",
        "ports_and_stacked_policies",
        "allow_all_policy",
        "ingress_on_one_named_port",
        "ingress_from_namespace_on_one_named_port",
        "egress_on_one_named_port",
        "updated_policy",
        "ingress_from_updated_namespace",
        "ingress_from_updated_pod",
        "deny_ingress_from_other_namespaces",
        "deny_ingress_to_updated_pod",
        "deny_egress_by_pod_selector_and_namespace",
        "ingress_and_egress_together",
        "client_side_egress_denies_even_if_server_allows",
        "egress_to_server_in_other_namespace",
        "ingress_any_port_on_one_protocol",
        "allow_all_takes_precedence_ingress_and_egress",
        "stop_enforcing_after_delete",
        "egress_to_server_in_cidr_block",
        "except_clause_and_overlap",
        "ingress_and_egress_controlled_independently",
        "sctp_or_udp_is_never_tcp",
        "egress_namespace_not_in_by_default_label",
        "end_port_ranges",
    ];
    for case in cases() {
        assert!(
            GROUPS.contains(&case.group),
            "case {} has no test here",
            case.name
        );
    }
}

#[test]
fn pod_deleted_and_added() {
    let mut c = Cluster::new();
    c.apply(
        "x",
        "p",
        "  podSelector: {matchLabels: {pod: a}}\n  ingress: [{from: [{podSelector: {matchLabels: {pod: b}}}]}]\n",
    )
    .expect(
        "pod_deleted_and_added",
        80,
        Protocol::Tcp,
        &Truth::all_allowed()
            .all_ingress("x/a", false)
            .peer("x/b", "x/a", true),
    );
    // A new pod matching the peer selector is admitted at once.
    let mut info = c.snapshot.pods[&"x/b".parse::<PodRef>().unwrap()].clone();
    info.ips = vec!["10.244.1.19".parse().unwrap()];
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
