//! Compile cost: rules merged before CIDR classes are formed, per-policy
//! budgets, and the CIDR map's room given out oldest policy first. The
//! checks count entries and work (pairs listed), never wall-clock time.

use std::collections::BTreeMap;

use crate::compile::{
    all_endpoints, build, compile_with_limits, Allocator, CompileError, Limits,
    DEFAULT_POLICY_ENTRIES,
};
use crate::model::addr::to_prefix;
use crate::testutil::{ClusterBuilder, Sim};

use super::base;

/// The unique /32 of rule `i`.
fn host(i: usize) -> String {
    format!("100.{}.{}.{}/32", 64 + i / 65_536, (i / 256) % 256, i % 256)
}

/// The input: `rules` egress rules of policy `ns/name` (selecting
/// app=a), each `{ipBlock: {cidr: 0.0.0.0/0, except: [one unique /32]}}`;
/// with `per_port`, rule i also has its own port 1000 + i.
fn world_minus_one(ns: &str, name: &str, rules: usize, per_port: bool) -> String {
    let mut y = format!(
        "metadata: {{name: {name}, namespace: {ns}}}\nspec:\n  podSelector: {{matchLabels: {{app: a}}}}\n  policyTypes: [Egress]\n  egress:\n"
    );
    for i in 0..rules {
        y += &format!(
            "  - to: [{{ipBlock: {{cidr: 0.0.0.0/0, except: [{}]}}}}]\n",
            host(i)
        );
        if per_port {
            y += &format!("    ports: [{{port: {}}}]\n", 1000 + i);
        }
    }
    y
}

/// Another namespace's policy, with an ipBlock of its own.
const KEEP: &str = "metadata: {name: keep, namespace: y}\nspec:\n  podSelector: {matchLabels: {app: c}}\n  ingress: [{from: [{namespaceSelector: {matchLabels: {ns: x}}, podSelector: {matchLabels: {app: b}}}], ports: [{port: 80}]}]\n  egress: [{to: [{ipBlock: {cidr: 10.0.0.0/8, except: [10.0.1.0/24]}}], ports: [{port: 443}]}]\n";

#[test]
fn rules_sharing_their_ports_merge_before_classes_are_formed() {
    // The input at R = 3,000: quadratic before (each except had a
    // covering set of R - 1 rules), a handful of entries now.
    let r = 3000;
    let snapshot = base().policy(&world_minus_one("x", "p", r, false)).build();
    let eps = all_endpoints(&snapshot);
    let full = build(&snapshot, &eps, &Limits::default(), &mut Allocator::new());
    let st = &full.compiled.state;
    let ep_a = eps[&"x/a".parse().unwrap()];
    let entries = st.policy.keys().filter(|e| e.ep_id == ep_a).count();
    assert!(entries <= 2, "{entries} entries for x/a");
    assert!(
        full.compiled.errors.is_empty(),
        "{:?}",
        full.compiled.errors
    );
    // Work: one class lists its one group; nothing per (except, rule).
    assert!(
        full.index.cidrs.pairs <= 4,
        "{} (group, class) pairs listed",
        full.index.cidrs.pairs
    );
    let classes: std::collections::BTreeSet<u32> = st.cidrs.values().copied().collect();
    assert!(classes.len() <= 2, "{} CIDR identities", classes.len());
    // Same verdicts as upstream: the union of the rules is the world.
    let sim = Sim::new(snapshot.clone());
    for to in ["203.0.113.7", "100.64.0.0", "100.64.11.183", "10.0.1.1"] {
        assert!(sim.tcp("x/a", to, 80), "x/a -> {to}");
    }
    assert!(
        !sim.tcp("x/a", "2001:db8::1", 80),
        "an IPv4 block allows no IPv6"
    );

    // One rule: the except is really denied (no merge across policies or
    // directions changes that).
    let one = base().policy(&world_minus_one("x", "p", 1, false)).sim();
    assert!(!one.tcp("x/a", "100.64.0.0", 80));
    assert!(one.tcp("x/a", "100.64.0.1", 80));
}

#[test]
fn merged_rules_keep_each_group_exact() {
    // Rules with different ports do not merge: rule 0 (port 1000) excepts
    // host(0), rule 1 (port 1001) excepts host(1).
    let sim = base().policy(&world_minus_one("x", "p", 2, true)).sim();
    assert!(!sim.tcp("x/a", "100.64.0.0", 1000));
    assert!(sim.tcp("x/a", "100.64.0.0", 1001));
    assert!(sim.tcp("x/a", "100.64.0.1", 1000));
    assert!(!sim.tcp("x/a", "100.64.0.1", 1001));
    assert!(sim.tcp("x/a", "203.0.113.1", 1001));
    // Blocks of one group with one cidr: an address escapes only when
    // every one of them excepts it.
    let p = "metadata: {name: p, namespace: x}\nspec:\n  podSelector: {matchLabels: {app: a}}\n  policyTypes: [Egress]\n  egress:\n  - to: [{ipBlock: {cidr: 10.0.0.0/8, except: [10.1.0.0/16, 10.2.0.0/16]}}]\n    ports: [{port: 80}]\n  - to: [{ipBlock: {cidr: 10.0.0.0/8, except: [10.1.2.0/24]}}]\n    ports: [{port: 80}]\n";
    let sim = base().policy(p).sim();
    assert!(!sim.tcp("x/a", "10.1.2.3", 80));
    assert!(sim.tcp("x/a", "10.1.3.3", 80));
    assert!(sim.tcp("x/a", "10.2.0.1", 80));
    assert!(!sim.tcp("x/a", "11.0.0.1", 80));
}

/// Entries of endpoint `pod` in `sim`, each with the rule it names.
fn entries_of(sim: &Sim, pod: &str) -> Vec<(crate::state::PolicyEntry, String)> {
    let ep = sim.endpoints[&pod.parse().unwrap()];
    sim.compiled
        .state
        .policy
        .iter()
        .filter(|(e, _)| e.ep_id == ep)
        .map(|(e, v)| (*e, sim.compiled.rules[&v.rule].to_string()))
        .collect()
}

#[test]
fn a_policy_over_its_budget_fails_closed_for_its_own_pods_only() {
    // The per-port variant: the state itself would be R² entries. At R =
    // 3,000 that is 9 million; the budget stops it.
    let r = 3000;
    let snapshot = base()
        .policy(KEEP)
        .policy(&world_minus_one("x", "big", r, true))
        .build();
    let eps = all_endpoints(&snapshot);
    let full = build(&snapshot, &eps, &Limits::default(), &mut Allocator::new());
    let errors = &full.compiled.errors;
    assert_eq!(errors.len(), 1, "{errors:?}");
    assert!(
        matches!(&errors[0], CompileError::OverBudget { policy, .. } if policy.to_string() == "x/big")
    );
    let text = errors[0].to_string();
    assert!(text.contains("x/big") && text.contains("budget"), "{text}");
    // Work stopped at the budget (plus the classes of the walk without
    // the policy), not at R².
    assert!(
        full.index.cidrs.pairs <= DEFAULT_POLICY_ENTRIES + 2 * r + 16,
        "{} pairs",
        full.index.cidrs.pairs
    );
    // The over-budget policy's prefixes are not in the CIDR map.
    assert!(!full
        .compiled
        .state
        .cidrs
        .contains_key(&to_prefix(&host(5).parse().unwrap())));

    let sim = Sim::new(snapshot);
    // Its pods: isolated for egress, nothing allowed.
    assert!(!sim.tcp("x/a", "203.0.113.1", 1005));
    assert!(!sim.tcp("x/a", "y/c", 80));
    assert!(entries_of(&sim, "x/a").is_empty());
    // Another namespace's pods keep their exact policy.
    let without = base().policy(KEEP).sim();
    assert_eq!(entries_of(&sim, "y/c"), entries_of(&without, "y/c"));
    assert!(sim.tcp("x/b", "y/c", 80));
    assert!(!sim.tcp("x/a", "y/c", 80), "x/a is isolated anyway");
    assert!(sim.tcp("y/c", "10.2.0.1", 443));
    assert!(!sim.tcp("y/c", "10.0.1.1", 443));
    // And pods the big policy does not select are untouched.
    assert!(sim.tcp("x/b", "203.0.113.1", 1005));
}

#[test]
fn a_policy_over_its_entry_budget_fails_closed() {
    // 40 ports to every pod identity of the cluster: 120 entries for x/a.
    let mut ports = String::new();
    for i in 0..40 {
        ports += &format!("{{port: {}}},", 2000 + i);
    }
    let big = format!("metadata: {{name: big, namespace: x}}\nspec:\n  podSelector: {{matchLabels: {{app: a}}}}\n  ingress: [{{from: [{{namespaceSelector: {{}}}}], ports: [{ports}]}}]\n");
    let limits = Limits {
        policy_entries: 100,
        ..Limits::default()
    };
    let snapshot = base().policy(&big).policy(KEEP).build();
    let sim = Sim::with_limits(snapshot.clone(), &limits);
    assert_eq!(sim.compiled.errors.len(), 1, "{:?}", sim.compiled.errors);
    assert_eq!(sim.compiled.errors[0].policy().to_string(), "x/big");
    assert!(!sim.tcp("x/b", "x/a", 2000));
    assert!(entries_of(&sim, "x/a").is_empty());
    let without = Sim::with_limits(base().policy(KEEP).build(), &limits);
    assert_eq!(entries_of(&sim, "y/c"), entries_of(&without, "y/c"));
    // Under a budget it fits: exact.
    let roomy = Sim::with_limits(snapshot, &Limits::default());
    assert!(roomy.compiled.errors.is_empty());
    assert!(roomy.tcp("x/b", "x/a", 2039));
}

/// A policy of namespace `ns` created at second `at` whose ingress admits
/// `n` /32s starting at index `from`.
fn hosts_policy(ns: &str, name: &str, at: u32, from: usize, n: usize) -> String {
    let mut peers = String::new();
    for i in from..from + n {
        peers += &format!("{{ipBlock: {{cidr: {}}}}},", host(i));
    }
    format!("metadata: {{name: {name}, namespace: {ns}, creationTimestamp: '2026-01-01T00:00:{at:02}Z'}}\nspec:\n  podSelector: {{}}\n  ingress: [{{from: [{peers}], ports: [{{port: 80}}]}}]\n")
}

#[test]
fn the_cidr_map_room_goes_to_the_oldest_policies() {
    // Room for 2 worlds + 10 prefixes. y/old (created first, named last)
    // takes 6, x/new (created last) wants 6 more and does not fit; x/small
    // (created in between) takes 3.
    let limits = Limits {
        cidr_prefixes: Some(12),
        ..Limits::default()
    };
    let snapshot = base()
        .policy(&hosts_policy("y", "old", 1, 0, 6))
        .policy(&hosts_policy("x", "small", 2, 100, 3))
        .policy(&hosts_policy("x", "new", 3, 200, 6))
        .build();
    let sim = Sim::with_limits(snapshot, &limits);
    let names: Vec<String> = sim
        .compiled
        .errors
        .iter()
        .map(|e| e.policy().to_string())
        .collect();
    assert_eq!(names, ["x/new"]);
    assert!(sim.compiled.errors[0]
        .to_string()
        .contains("--map-size-cidrs"));
    assert!(sim.compiled.state.cidrs.len() <= 12);
    // y's pods keep their exact policy.
    assert!(sim.tcp("100.64.0.5", "y/c", 80));
    assert!(!sim.tcp("100.64.0.6", "y/c", 80));
    // x's pods: x/small still allows, x/new allows nothing (fail closed).
    assert!(sim.tcp("100.64.0.100", "x/a", 80));
    assert!(!sim.tcp("100.64.0.200", "x/a", 80));
    // Unbounded: everything fits.
    let all = Sim::with_limits(sim.snapshot.clone(), &Limits::default());
    assert!(all.compiled.errors.is_empty());
    assert!(all.tcp("100.64.0.200", "x/a", 80));
}

#[test]
fn budgets_give_the_same_state_incrementally() {
    // The engine's incremental paths agree with a full compile when a
    // policy is over budget (its pods come and go as endpoints).
    let snapshot = base()
        .policy(KEEP)
        .policy(&world_minus_one("x", "big", 400, true))
        .build();
    let limits = Limits {
        policy_entries: 1000,
        ..Limits::default()
    };
    let mut engine = crate::compile::Engine::new();
    engine.set_limits(limits);
    let all = all_endpoints(&snapshot);
    let mut eps: BTreeMap<_, _> = all.clone();
    eps.remove(&"x/a".parse().unwrap());
    let mut state = crate::state::MapState::default();
    state.apply(&engine.update(&snapshot, &eps));
    state.apply(&engine.endpoints_changed(&snapshot, &all));
    let full = compile_with_limits(&snapshot, &all, &limits, &mut engine.allocator().clone());
    assert_eq!(state, full.state);
    assert_eq!(engine.current().errors, full.errors);
    assert_eq!(full.errors.len(), 1, "{:?}", full.errors);
}

#[test]
fn a_pod_selector_policy_past_its_entry_budget_is_stopped_early() {
    // Stopping is by count: the list never grows far past the budget.
    let mut ports = String::new();
    for i in 0..500 {
        ports += &format!("{{port: {}}},", 3000 + i);
    }
    let mut b = ClusterBuilder::new().ns("x", &[("ns", "x")]);
    for i in 0..60 {
        b = b.pod(
            &format!("x/p{i}"),
            &[("app", &format!("a{i}"))],
            &[&format!("10.0.2.{i}")],
        );
    }
    let big = format!("metadata: {{name: big, namespace: x}}\nspec:\n  podSelector: {{}}\n  ingress: [{{from: [{{podSelector: {{}}}}], ports: [{ports}]}}]\n");
    let limits = Limits {
        policy_entries: 5000,
        ..Limits::default()
    };
    // 60 endpoints × 60 identities × 500 ports = 1.8 million entries.
    let sim = Sim::with_limits(b.policy(&big).build(), &limits);
    assert_eq!(sim.compiled.errors.len(), 1);
    assert!(sim.compiled.state.policy.is_empty());
}
