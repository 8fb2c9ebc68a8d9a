//! Tier semantics through the compiled state and the datapath's lookup.
#![allow(clippy::unwrap_used)]

use crate::testutil::{xyz_ip, xyz_model, ClusterBuilder};

const ALLOW_Y_TO_X: &str = r#"
apiVersion: networking.k8s.io/v1
kind: NetworkPolicy
metadata: {name: from-y, namespace: x}
spec:
  podSelector: {}
  ingress: [{from: [{namespaceSelector: {matchLabels: {ns: y}}}]}]
"#;

fn admin(name: &str, priority: u32, body: &str) -> String {
    format!("metadata: {{name: {name}}}\nspec:\n  tier: Admin\n  priority: {priority}\n{body}")
}

fn baseline(name: &str, priority: u32, body: &str) -> String {
    format!("metadata: {{name: {name}}}\nspec:\n  tier: Baseline\n  priority: {priority}\n{body}")
}

#[test]
fn admin_deny_wins_over_a_network_policy_allow_and_only_on_its_ports() {
    let sim = xyz_model()
        .policy(ALLOW_Y_TO_X)
        .cnp(&admin(
            "no-80",
            5,
            r#"  subject: {namespaces: {matchLabels: {ns: x}}}
  ingress:
  - {name: deny-80, action: Deny, from: [{namespaces: {}}], protocols: [{tcp: {destinationPort: {number: 80}}}]}
"#,
        ))
        .sim();
    assert!(!sim.tcp("y/b", "x/a", 80));
    assert!(sim.tcp("y/b", "x/a", 81));
    assert!(sim.allowed("y/b", "x/a", 80, "UDP"));
    // NetworkPolicy still isolates x for the rest.
    assert!(!sim.tcp("z/b", "x/a", 81));
    // Outside x nothing changes.
    assert!(sim.tcp("z/b", "y/a", 80));
}

#[test]
fn pass_hands_over_to_network_policy_and_baseline_only_reaches_pods_it_leaves_alone() {
    let sim = xyz_model()
        .policy(ALLOW_Y_TO_X)
        .cnp(&admin(
            "pass-y",
            1,
            r#"  subject: {namespaces: {}}
  ingress:
  - {name: pass-y, action: Pass, from: [{namespaces: {matchLabels: {ns: y}}}]}
"#,
        ))
        .cnp(&admin(
            "deny-y",
            2,
            r#"  subject: {namespaces: {}}
  ingress:
  - {name: deny-y, action: Deny, from: [{namespaces: {matchLabels: {ns: y}}}]}
"#,
        ))
        .cnp(&baseline(
            "isolate",
            1,
            r#"  subject: {namespaces: {}}
  ingress:
  - {name: deny-all, action: Deny, from: [{namespaces: {}}]}
"#,
        ))
        .sim();
    // Passed over the Admin Deny to the NetworkPolicy of x, which allows.
    assert!(sim.tcp("y/b", "x/a", 80));
    // z is not passed: the NetworkPolicy of x decides (no rule: denied).
    assert!(!sim.tcp("z/b", "x/a", 80));
    // In z no NetworkPolicy: the Baseline tier denies.
    assert!(!sim.tcp("y/b", "z/a", 80));
    assert!(!sim.tcp("x/b", "z/a", 80));
}

#[test]
fn equal_priorities_go_by_name_and_lower_priority_values_first() {
    let deny = r#"  subject: {namespaces: {matchLabels: {ns: x}}}
  ingress: [{action: Deny, from: [{namespaces: {}}]}]
"#;
    let accept = r#"  subject: {namespaces: {matchLabels: {ns: x}}}
  ingress: [{action: Accept, from: [{namespaces: {}}]}]
"#;
    let sim = xyz_model()
        .cnp(&admin("a-deny", 7, deny))
        .cnp(&admin("b-accept", 7, accept))
        .sim();
    assert!(!sim.tcp("y/a", "x/a", 80));
    let sim = xyz_model()
        .cnp(&admin("a-deny", 8, deny))
        .cnp(&admin("b-accept", 7, accept))
        .policy(ALLOW_Y_TO_X)
        .sim();
    // Accept also overrides the NetworkPolicy that would not admit z.
    assert!(sim.tcp("z/a", "x/a", 80));
}

#[test]
fn networks_match_pod_addresses_and_a_pass_for_pods_keeps_them_out() {
    let egress = r#"  subject: {namespaces: {matchLabels: {ns: x}}}
  egress:
  - {name: pods, action: Pass, to: [{namespaces: {}}]}
  - {name: world, action: Deny, to: [{networks: ["0.0.0.0/0"]}]}
"#;
    let sim = xyz_model().cnp(&admin("egress", 1, egress)).sim();
    assert!(sim.tcp("x/a", "y/b", 80));
    assert!(!sim.tcp("x/a", "192.0.2.1", 80));
    // Without the Pass, 0.0.0.0/0 covers the pods too.
    let deny_all = r#"  subject: {namespaces: {matchLabels: {ns: x}}}
  egress:
  - {name: world, action: Deny, to: [{networks: ["0.0.0.0/0"]}]}
"#;
    let sim = xyz_model().cnp(&admin("egress", 1, deny_all)).sim();
    assert!(!sim.tcp("x/a", "y/b", 80));
    assert!(sim.tcp("y/a", "y/b", 80));
    // A /32 of one pod: that pod only, whatever its identity shares.
    let one = format!(
        "  subject: {{namespaces: {{matchLabels: {{ns: x}}}}}}\n  egress:\n  - {{action: Deny, to: [{{networks: [\"{}/32\"]}}]}}\n",
        xyz_ip("y", "b")
    );
    let sim = xyz_model().cnp(&admin("one", 1, &one)).sim();
    assert!(!sim.tcp("x/a", "y/b", 80));
    assert!(sim.tcp("x/a", "z/b", 80));
}

#[test]
fn network_policy_ip_blocks_still_match_pods_under_tiers() {
    let np = r#"
apiVersion: networking.k8s.io/v1
kind: NetworkPolicy
metadata: {name: block, namespace: x}
spec:
  podSelector: {}
  policyTypes: [Egress]
  egress: [{to: [{ipBlock: {cidr: 10.244.1.0/24}}]}]
"#;
    let pass = r#"  subject: {namespaces: {}}
  egress: [{action: Pass, to: [{namespaces: {}}]}]
"#;
    let sim = xyz_model().policy(np).cnp(&admin("pass", 1, pass)).sim();
    // y/b is 10.244.1.14 (node 1), y/a 10.244.1.13? whichever: check by
    // address.
    for (ns, pod) in [("y", "a"), ("y", "b"), ("z", "c")] {
        let on_node1 = xyz_ip(ns, pod).starts_with("10.244.1.");
        assert_eq!(
            sim.tcp("x/a", &format!("{ns}/{pod}"), 80),
            on_node1,
            "{ns}/{pod}"
        );
    }
}

#[test]
fn nodes_peers_are_the_selected_nodes_addresses() {
    let sim = xyz_model()
        .node("n1", &[("role", "control-plane")], &["192.0.2.10"])
        .node("n2", &[("role", "worker")], &["192.0.2.11"])
        .cnp(&admin(
            "no-cp",
            1,
            r#"  subject: {namespaces: {}}
  egress: [{action: Deny, to: [{nodes: {matchLabels: {role: control-plane}}}]}]
"#,
        ))
        .sim();
    assert!(!sim.tcp("x/a", "192.0.2.10", 6443));
    assert!(sim.tcp("x/a", "192.0.2.11", 6443));
}

#[test]
fn named_ports_resolve_on_the_destination_pod() {
    let sim = xyz_model()
        .cnp(&admin(
            "named",
            1,
            r#"  subject: {namespaces: {matchLabels: {ns: x}}}
  egress: [{action: Deny, to: [{namespaces: {}}], protocols: [{destinationNamedPort: serve-81-udp}]}]
  ingress: [{action: Deny, from: [{namespaces: {}}], protocols: [{destinationNamedPort: serve-80-tcp}]}]
"#,
        ))
        .sim();
    assert!(!sim.allowed("x/a", "y/b", 81, "UDP"));
    assert!(sim.allowed("x/a", "y/b", 81, "TCP"));
    assert!(!sim.tcp("y/b", "x/a", 80));
    assert!(sim.tcp("y/b", "x/a", 81));
}

#[test]
fn domain_names_never_widen_and_invalid_policies_fail_closed() {
    let sim = xyz_model()
        .cnp(&admin(
            "dns",
            1,
            r#"  subject: {namespaces: {}}
  egress: [{action: Accept, to: [{domainNames: [example.com]}]}]
"#,
        ))
        .cnp(&baseline(
            "deny-out",
            1,
            r#"  subject: {namespaces: {}}
  egress: [{action: Deny, to: [{networks: ["0.0.0.0/0"]}]}]
"#,
        ))
        .sim();
    assert!(!sim.tcp("x/a", "192.0.2.1", 443));
    let sim = ClusterBuilder::new()
        .ns("x", &[])
        .pod("x/a", &[], &["10.0.0.1"])
        .pod("x/b", &[], &["10.0.0.2"])
        .cnp(&admin(
            "broken",
            1,
            r#"  subject: {namespaces: {}}
  ingress: [{action: Accept, from: [{namespaces: {}}], protocols: [{tcp: {destinationPort: {range: {start: 90, end: 80}}}}]}]
"#,
        ))
        .sim();
    assert!(!sim.tcp("x/a", "x/b", 80));
    // Egress has no rules: untouched.
    assert!(sim.tcp("x/a", "192.0.2.1", 80));
    assert!(sim
        .compiled
        .errors
        .iter()
        .any(|e| e.to_string().contains("ClusterNetworkPolicy broken")));
}
