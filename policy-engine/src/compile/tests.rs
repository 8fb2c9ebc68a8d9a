//! One test per NetworkPolicy rule of the design (1–8, 10–12; 9, 13 and 14
//! are the datapath's), plus state-shape checks.

use std::collections::BTreeMap;

use policy_common::identity::{ANY, HOST};

use super::*;
use crate::model::addr::to_prefix;
use crate::testutil::ClusterBuilder;

/// x/y/z-style base: namespace `x` with pods a, b (app=a, app=b) and
/// namespace `y` with pod c (app=c); all declare TCP 80 "http" and UDP 53.
fn base() -> ClusterBuilder {
    let ports: &[(&str, u16, &str)] = &[("http", 80, "TCP"), ("dns", 53, "UDP")];
    ClusterBuilder::new()
        .ns("x", &[("ns", "x")])
        .ns("y", &[("ns", "y")])
        .pod_with_ports("x/a", &[("app", "a")], &["10.0.0.1"], ports)
        .pod_with_ports("x/b", &[("app", "b")], &["10.0.0.2"], ports)
        .pod_with_ports("y/c", &[("app", "c")], &["10.0.1.1"], ports)
}

#[test]
fn rule1_isolation_only_for_selected_pods_and_types() {
    let sim = base()
        .policy("metadata: {name: p, namespace: x}\nspec:\n  podSelector: {matchLabels: {app: a}}\n  policyTypes: [Ingress]\n")
        .sim();
    assert!(!sim.tcp("x/b", "x/a", 80), "a isolated for ingress");
    assert!(
        sim.tcp("x/a", "x/b", 80),
        "a not isolated for egress, b not isolated"
    );
    assert!(sim.tcp("y/c", "x/b", 80));
    let ep_a = sim.endpoints[&"x/a".parse().unwrap()];
    assert_eq!(
        sim.compiled.state.endpoints[&ep_a],
        policy_common::ep_flags::ISOLATED_INGRESS
    );
}

#[test]
fn rule2_policy_types_defaulting() {
    // No egress section → Ingress only.
    let sim = base()
        .policy("metadata: {name: p, namespace: x}\nspec:\n  podSelector: {}\n  ingress: [{}]\n")
        .sim();
    assert!(sim.tcp("x/a", "y/c", 80));
    // An egress section → Egress too (here: deny all egress).
    let sim = base()
        .policy("metadata: {name: p, namespace: x}\nspec:\n  podSelector: {}\n  egress: []\n")
        .sim();
    assert!(
        sim.tcp("x/a", "y/c", 80),
        "egress: [] is not an egress section"
    );
    let sim = base()
        .policy("metadata: {name: p, namespace: x}\nspec:\n  podSelector: {}\n  egress: [{ports: [{port: 53, protocol: UDP}]}]\n")
        .sim();
    assert!(!sim.tcp("x/a", "y/c", 80));
    assert!(sim.allowed("x/a", "y/c", 53, "UDP"));
    assert!(
        !sim.tcp("y/c", "x/a", 80),
        "and ingress isolated by default"
    );
}

#[test]
fn rule3_policies_are_additive_and_order_free() {
    let p1 = "metadata: {name: p1, namespace: x}\nspec:\n  podSelector: {matchLabels: {app: a}}\n  ingress: [{from: [{podSelector: {matchLabels: {app: b}}}]}]\n";
    let p2 = "metadata: {name: p2, namespace: x}\nspec:\n  podSelector: {matchLabels: {app: a}}\n  ingress: [{from: [{namespaceSelector: {matchLabels: {ns: y}}}]}]\n";
    let s1 = base().policy(p1).policy(p2).sim();
    let s2 = base().policy(p2).policy(p1).sim();
    assert_eq!(s1.compiled.state, s2.compiled.state);
    assert!(s1.tcp("x/b", "x/a", 80));
    assert!(s1.tcp("y/c", "x/a", 80));
}

#[test]
fn rule4_both_ends_must_agree() {
    let sim = base()
        .policy("metadata: {name: deny-egress, namespace: x}\nspec:\n  podSelector: {matchLabels: {app: b}}\n  policyTypes: [Egress]\n")
        .policy("metadata: {name: allow-in, namespace: x}\nspec:\n  podSelector: {matchLabels: {app: a}}\n  ingress: [{}]\n")
        .sim();
    assert!(
        !sim.tcp("x/b", "x/a", 80),
        "a's ingress allows, b's egress denies"
    );
    assert!(sim.tcp("y/c", "x/a", 80));
}

#[test]
fn rule5_peer_selectors() {
    let and = "metadata: {name: p, namespace: x}\nspec:\n  podSelector: {matchLabels: {app: a}}\n  ingress:\n  - from:\n    - namespaceSelector: {matchLabels: {ns: y}}\n      podSelector: {matchLabels: {app: b}}\n";
    let sim = base()
        .pod("y/b", &[("app", "b")], &["10.0.1.2"])
        .policy(and)
        .sim();
    assert!(sim.tcp("y/b", "x/a", 80));
    assert!(!sim.tcp("x/b", "x/a", 80), "AND: wrong namespace");
    assert!(!sim.tcp("y/c", "x/a", 80), "AND: wrong pod");
    let or = "metadata: {name: p, namespace: x}\nspec:\n  podSelector: {matchLabels: {app: a}}\n  ingress:\n  - from:\n    - namespaceSelector: {matchLabels: {ns: y}}\n    - podSelector: {matchLabels: {app: b}}\n";
    let sim = base()
        .pod("y/b", &[("app", "b")], &["10.0.1.2"])
        .policy(or)
        .sim();
    assert!(sim.tcp("y/b", "x/a", 80));
    assert!(sim.tcp("x/b", "x/a", 80));
    assert!(sim.tcp("y/c", "x/a", 80));
    // matchExpressions ANDed with matchLabels.
    let expr = "metadata: {name: p, namespace: x}\nspec:\n  podSelector: {matchLabels: {app: a}}\n  ingress:\n  - from:\n    - namespaceSelector: {matchExpressions: [{key: ns, operator: NotIn, values: [x]}]}\n      podSelector: {matchLabels: {app: c}, matchExpressions: [{key: app, operator: Exists}]}\n";
    let sim = base().policy(expr).sim();
    assert!(sim.tcp("y/c", "x/a", 80));
    assert!(!sim.tcp("x/b", "x/a", 80));
    // Empty selectors match everything in scope.
    let all_ns = "metadata: {name: p, namespace: x}\nspec:\n  podSelector: {matchLabels: {app: a}}\n  ingress: [{from: [{namespaceSelector: {}}]}]\n";
    let sim = base().policy(all_ns).sim();
    assert!(sim.tcp("y/c", "x/a", 80));
    assert!(
        !sim.tcp("198.51.100.1", "x/a", 80),
        "namespaceSelector {{}} = pods only"
    );
    let same_ns = "metadata: {name: p, namespace: x}\nspec:\n  podSelector: {matchLabels: {app: a}}\n  ingress: [{from: [{podSelector: {}}]}]\n";
    let sim = base().policy(same_ns).sim();
    assert!(sim.tcp("x/b", "x/a", 80));
    assert!(!sim.tcp("y/c", "x/a", 80));
}

#[test]
fn rule5_ipblock_with_except() {
    let p = "metadata: {name: p, namespace: x}\nspec:\n  podSelector: {matchLabels: {app: a}}\n  ingress:\n  - from: [{ipBlock: {cidr: 198.51.100.0/24, except: [198.51.100.128/25]}}]\n";
    let sim = base().policy(p).sim();
    assert!(sim.tcp("198.51.100.5", "x/a", 80));
    assert!(!sim.tcp("198.51.100.200", "x/a", 80));
    assert!(!sim.tcp("203.0.113.1", "x/a", 80));
    // Another policy's longer prefix inside the allowed part still allowed.
    let p2 = "metadata: {name: q, namespace: x}\nspec:\n  podSelector: {matchLabels: {app: b}}\n  ingress:\n  - from: [{ipBlock: {cidr: 198.51.100.0/28}}]\n";
    let sim = base().policy(p).policy(p2).sim();
    assert!(sim.tcp("198.51.100.5", "x/a", 80));
    assert!(sim.tcp("198.51.100.20", "x/a", 80));
    assert!(!sim.tcp("198.51.100.20", "x/b", 80));
}

#[test]
fn rule6_empty_from_and_ports_mean_any() {
    let sim = base()
        .policy("metadata: {name: p, namespace: x}\nspec:\n  podSelector: {matchLabels: {app: a}}\n  ingress: [{ports: [{port: 80}]}]\n")
        .sim();
    assert!(sim.tcp("203.0.113.9", "x/a", 80));
    assert!(sim.tcp("y/c", "x/a", 80));
    assert!(!sim.tcp("y/c", "x/a", 81));
    let sim = base()
        .policy("metadata: {name: p, namespace: x}\nspec:\n  podSelector: {matchLabels: {app: a}}\n  ingress: [{from: [{podSelector: {}}]}]\n")
        .sim();
    assert!(sim.allowed("x/b", "x/a", 9999, "SCTP"));
    let sim = base()
        .policy("metadata: {name: p, namespace: x}\nspec:\n  podSelector: {matchLabels: {app: a}}\n  ingress: []\n")
        .sim();
    assert!(!sim.tcp("x/b", "x/a", 80));
    assert!(!sim.allowed("x/b", "x/a", 53, "UDP"));
}

#[test]
fn rule7_named_ports_protocols_and_ranges() {
    // Ingress named port resolved against the destination itself.
    let sim = base()
        .pod_with_ports("x/d", &[("app", "d")], &["10.0.0.4"], &[("http", 8080, "TCP")])
        .policy("metadata: {name: p, namespace: x}\nspec:\n  podSelector: {}\n  ingress: [{ports: [{port: http}]}]\n")
        .sim();
    assert!(sim.tcp("y/c", "x/a", 80));
    assert!(!sim.tcp("y/c", "x/a", 8080));
    assert!(sim.tcp("y/c", "x/d", 8080));
    assert!(!sim.tcp("y/c", "x/d", 80));
    // Named port with the wrong protocol does not resolve.
    let sim = base()
        .policy("metadata: {name: p, namespace: x}\nspec:\n  podSelector: {}\n  ingress: [{ports: [{port: dns, protocol: TCP}]}]\n")
        .sim();
    assert!(!sim.tcp("y/c", "x/a", 53));
    // Egress named port resolved against each destination pod.
    let sim = base()
        .pod_with_ports("y/d", &[("app", "d")], &["10.0.1.4"], &[("http", 8080, "TCP")])
        .policy("metadata: {name: p, namespace: x}\nspec:\n  podSelector: {matchLabels: {app: a}}\n  egress: [{ports: [{port: http}]}]\n")
        .sim();
    assert!(sim.tcp("x/a", "y/c", 80));
    assert!(!sim.tcp("x/a", "y/c", 8080));
    assert!(sim.tcp("x/a", "y/d", 8080));
    assert!(!sim.tcp("x/a", "y/d", 80));
    assert!(
        !sim.tcp("x/a", "203.0.113.1", 80),
        "outside hosts have no named ports"
    );
    // UDP, SCTP, endPort.
    let sim = base()
        .policy("metadata: {name: p, namespace: x}\nspec:\n  podSelector: {}\n  ingress: [{ports: [{port: 53, protocol: UDP}, {protocol: SCTP}, {port: 8000, endPort: 8100}]}]\n")
        .sim();
    assert!(sim.allowed("y/c", "x/a", 53, "UDP"));
    assert!(!sim.tcp("y/c", "x/a", 53));
    assert!(sim.allowed("y/c", "x/a", 12345, "SCTP"));
    assert!(sim.tcp("y/c", "x/a", 8000));
    assert!(sim.tcp("y/c", "x/a", 8057));
    assert!(sim.tcp("y/c", "x/a", 8100));
    assert!(!sim.tcp("y/c", "x/a", 7999));
    assert!(!sim.tcp("y/c", "x/a", 8101));
    assert!(!sim.allowed("y/c", "x/a", 8050, "UDP"));
}

#[test]
fn rule8_ipblock_matches_pod_ips() {
    let sim = base()
        .policy("metadata: {name: p, namespace: x}\nspec:\n  podSelector: {matchLabels: {app: a}}\n  ingress: [{from: [{ipBlock: {cidr: 10.0.1.0/24}}]}]\n  egress: [{to: [{ipBlock: {cidr: 10.0.0.0/16, except: [10.0.0.2/32]}}]}]\n")
        .sim();
    assert!(sim.tcp("y/c", "x/a", 80));
    assert!(!sim.tcp("x/b", "x/a", 80));
    assert!(sim.tcp("x/a", "y/c", 80));
    assert!(!sim.tcp("x/a", "x/b", 80), "excepted pod IP");
}

#[test]
fn rule10_ipv6_and_dual_stack() {
    let sim = ClusterBuilder::new()
        .ns("x", &[])
        .pod("x/a", &[("app", "a")], &["10.0.0.1", "2001:db8::1"])
        .pod("x/b", &[("app", "b")], &["10.0.0.2", "2001:db8::2"])
        .policy("metadata: {name: p, namespace: x}\nspec:\n  podSelector: {matchLabels: {app: a}}\n  ingress: [{from: [{podSelector: {matchLabels: {app: b}}}, {ipBlock: {cidr: '2001:db8:1::/48'}}, {ipBlock: {cidr: 0.0.0.0/0, except: [192.0.2.0/24]}}]}]\n")
        .sim();
    assert!(sim.tcp("x/b", "x/a", 80));
    assert!(sim.tcp("2001:db8::2", "x/a", 80), "b's v6 address");
    assert!(sim.tcp("2001:db8:1::9", "x/a", 80));
    assert!(
        !sim.tcp("2001:db8:2::9", "x/a", 80),
        "0.0.0.0/0 must not allow IPv6"
    );
    assert!(sim.tcp("203.0.113.1", "x/a", 80));
    assert!(!sim.tcp("192.0.2.1", "x/a", 80));
    let v6all = "metadata: {name: p, namespace: x}\nspec:\n  podSelector: {matchLabels: {app: a}}\n  ingress: [{from: [{ipBlock: {cidr: '::/0'}}]}]\n";
    let sim = ClusterBuilder::new()
        .pod("x/a", &[("app", "a")], &["10.0.0.1", "2001:db8::1"])
        .policy(v6all)
        .sim();
    assert!(sim.tcp("2001:db8:5::1", "x/a", 80));
    assert!(
        !sim.tcp("203.0.113.1", "x/a", 80),
        "::/0 must not allow IPv4"
    );
}

#[test]
fn rule11_namespace_name_label() {
    let sim = base()
        .policy("metadata: {name: p, namespace: x}\nspec:\n  podSelector: {}\n  ingress: [{from: [{namespaceSelector: {matchLabels: {kubernetes.io/metadata.name: y}}}]}]\n")
        .sim();
    assert!(sim.tcp("y/c", "x/a", 80));
    assert!(!sim.tcp("x/b", "x/a", 80));
}

#[test]
fn rule12_host_network_and_node_traffic() {
    let sim = base()
        .host_addr("192.168.0.10")
        .host_pod("kube-system/kubelet-ish", "192.168.0.10")
        .policy("metadata: {name: p, namespace: kube-system}\nspec:\n  podSelector: {}\n")
        .policy("metadata: {name: q, namespace: x}\nspec:\n  podSelector: {}\n  ingress: []\n")
        .sim();
    assert!(
        sim.tcp("192.168.0.10", "x/a", 80),
        "node → local pod stays allowed"
    );
    assert!(!sim.tcp("y/c", "x/a", 80));
    assert!(
        sim.tcp("y/c", "kube-system/kubelet-ish", 80),
        "hostNetwork pods are not selected"
    );
    assert!(!sim
        .endpoints
        .contains_key(&"kube-system/kubelet-ish".parse().unwrap()));
    let mut eps = sim.endpoints.clone();
    eps.insert("kube-system/kubelet-ish".parse().unwrap(), 999);
    let c = compile(&sim.snapshot, &eps, &mut Allocator::new());
    assert!(!c.state.endpoints.contains_key(&999), "never an endpoint");
    assert_eq!(
        c.state.ipcache[&to_addr(crate::testutil::ip("192.168.0.10"))],
        HOST
    );
}

#[test]
fn invalid_policies_fail_closed_and_are_reported() {
    let cases = [
        ("ingress: [{from: [{ipBlock: {cidr: 10.0.0.0/33}}]}]", "spec.ingress[0].from[0].ipBlock.cidr"),
        ("ingress: [{from: [{ipBlock: {cidr: 10.0.0.0/24, except: [10.1.0.0/24]}}]}]", "spec.ingress[0].from[0].ipBlock.except[0]"),
        ("ingress: [{ports: [{port: http, endPort: 90}]}]", "spec.ingress[0].ports[0].endPort"),
        ("ingress: [{ports: [{port: 90, endPort: 80}]}]", "spec.ingress[0].ports[0].endPort"),
        ("ingress: [{ports: [{port: 90, protocol: ICMP}]}]", "spec.ingress[0].ports[0].protocol"),
        ("ingress: [{from: [{podSelector: {matchExpressions: [{key: a, operator: Like, values: [b]}]}}]}]", "spec.ingress[0].from[0].podSelector.matchExpressions[0].operator"),
    ];
    for (spec, field) in cases {
        let yaml = format!("metadata: {{name: bad, namespace: x}}\nspec:\n  podSelector: {{matchLabels: {{app: a}}}}\n  {spec}\n");
        let sim = base()
            .policy(&yaml)
            .policy("metadata: {name: good, namespace: x}\nspec:\n  podSelector: {matchLabels: {app: b}}\n  ingress: [{}]\n")
            .sim();
        assert_eq!(sim.compiled.errors.len(), 1, "{spec}");
        let CompileError::InvalidPolicy {
            policy, field: f, ..
        } = &sim.compiled.errors[0]
        else {
            panic!("{:?}", sim.compiled.errors);
        };
        assert_eq!(policy.to_string(), "x/bad");
        assert_eq!(f, field);
        assert!(!sim.tcp("x/b", "x/a", 80), "fail closed: {spec}");
        assert!(!sim.tcp("203.0.113.1", "x/a", 90), "fail closed: {spec}");
        assert!(sim.tcp("x/a", "x/b", 80), "other policies still work");
    }
}

#[test]
fn identities_group_pods_and_world_prefixes_exist() {
    let sim = ClusterBuilder::new()
        .pod("x/a1", &[("app", "a")], &["10.0.0.1"])
        .pod("x/a2", &[("app", "a")], &["10.0.0.2"])
        .pod("y/a3", &[("app", "a")], &["10.0.0.3"])
        .sim();
    let st = &sim.compiled.state;
    let ids: Vec<u32> = st.ipcache.values().copied().collect();
    assert_eq!(ids[0], ids[1]);
    assert_ne!(ids[0], ids[2]);
    assert!(st
        .cidrs
        .contains_key(&to_prefix(&crate::model::addr::world_v4())));
    assert!(st
        .cidrs
        .contains_key(&to_prefix(&crate::model::addr::world_v6())));
    assert!(st.policy.is_empty());
    assert!(st.endpoints.values().all(|f| *f == 0));
}

#[test]
fn allow_all_uses_one_wildcard_entry() {
    let sim = base()
        .policy("metadata: {name: p, namespace: x}\nspec:\n  podSelector: {matchLabels: {app: a}}\n  ingress: [{}]\n")
        .sim();
    let entries: Vec<_> = sim.compiled.state.policy.keys().collect();
    assert_eq!(entries.len(), 1);
    assert_eq!(entries[0].identity, ANY);
    assert_eq!(entries[0].ports, PortMatch::AnyProtocol);
    let rule = sim.compiled.state.policy.values().next().unwrap().rule;
    assert_eq!(
        sim.compiled.rules[&rule].to_string(),
        "NetworkPolicy x/p spec.ingress[0]"
    );
}

#[test]
fn engine_diffs_are_small_and_reach_the_full_compile() {
    let mut snap = base()
        .policy("metadata: {name: p, namespace: x}\nspec:\n  podSelector: {matchLabels: {app: a}}\n  ingress: [{from: [{podSelector: {matchLabels: {app: b}}}]}]\n")
        .build();
    let eps = all_endpoints(&snap);
    let mut engine = Engine::new();
    let first = engine.update(&snap, &eps);
    assert!(!first.is_empty());
    assert!(engine.update(&snap, &eps).is_empty(), "no change, no ops");
    let before = engine.current().state.clone();
    // Relabel b so it no longer matches.
    let b: PodRef = "x/b".parse().unwrap();
    snap.pods
        .get_mut(&b)
        .unwrap()
        .labels
        .insert("app".into(), "z".into());
    let ops = engine.update(&snap, &eps);
    let mut applied = before;
    applied.apply(&ops);
    assert_eq!(applied, engine.current().state);
    assert!(ops.len() <= 4, "{ops:?}");
    let _: BTreeMap<PodRef, u32> = eps;
}

/// Prefixes that exactly the same rules allow share one identity: a rule
/// with a thousand ipBlocks costs one identity and one entry per port, and
/// every one of its prefixes is still in the CIDR map (longest-prefix
/// match), while a prefix another rule also allows stays apart.
#[test]
fn prefixes_allowed_by_the_same_rules_share_an_identity() {
    let mut from = String::new();
    for i in 0..1000u32 {
        let [_, _, c, d] = (i * 4).to_be_bytes();
        from += &format!("{{ipBlock: {{cidr: 100.64.{c}.{d}/30}}}},");
    }
    let p = format!(
        "metadata: {{name: p, namespace: x}}\nspec:\n  podSelector: {{matchLabels: {{app: a}}}}\n  ingress:\n  - from: [{from}]\n    ports: [{{port: 80}}, {{port: 443}}]\n  - from: [{{ipBlock: {{cidr: 100.64.0.0/30}}}}]\n    ports: [{{port: 8080}}]\n"
    );
    let sim = base().policy(&p).sim();
    let st = &sim.compiled.state;
    let id_of = |s: &str| st.cidrs[&to_prefix(&s.parse().unwrap())];
    let shared = id_of("100.64.0.4/30");
    assert_eq!(id_of("100.64.15.156/30"), shared);
    assert_ne!(
        id_of("100.64.0.0/30"),
        shared,
        "also allowed by the second rule"
    );
    assert_eq!(st.cidrs.len(), 1000 + 2, "every prefix plus the two worlds");
    let ep_a = sim.endpoints[&"x/a".parse().unwrap()];
    let entries = st.policy.keys().filter(|e| e.ep_id == ep_a).count();
    // Shared identity: 80 and 443; 100.64.0.0/30: 80, 443 and 8080.
    assert_eq!(entries, 5);
    assert!(sim.tcp("100.64.10.1", "x/a", 443));
    assert!(!sim.tcp("100.64.10.1", "x/a", 8080));
    assert!(sim.tcp("100.64.0.1", "x/a", 8080));
    let desc = sim.compiled.identities[&shared].to_string();
    assert!(desc.contains("and 996 more prefixes"), "{desc}");
}

/// An address two pods list (reused while the old pod's object lingers,
/// terminating) belongs to the live one in the ipcache, whichever name
/// sorts last, in the full compile and in the engine's incremental path;
/// once the live pod is gone the lingering one has it back, and once both
/// are gone nobody does.
#[test]
fn a_reused_address_belongs_to_the_running_pod() {
    let ip = crate::testutil::ip("10.0.0.9");
    for (old, new) in [("x/a-old", "x/b-new"), ("x/z-old", "x/b-new")] {
        let (old, new): (PodRef, PodRef) = (old.parse().unwrap(), new.parse().unwrap());
        let mut snap = ClusterBuilder::new()
            .ns("x", &[])
            .pod(&old.to_string(), &[("app", "old")], &["10.0.0.9"])
            .pod(&new.to_string(), &[("app", "new")], &["10.0.0.9"])
            .build();
        snap.pods.get_mut(&old).unwrap().terminating = true;
        let eps = BTreeMap::new();
        let owner = |c: &Compiled| -> Option<String> {
            let id = c.state.ipcache.get(&to_addr(ip))?;
            match &c.identities[id] {
                IdentityDesc::Pods { group, .. } => group.labels.get("app").cloned(),
                other => Some(other.to_string()),
            }
        };
        let full = compile(&snap, &eps, &mut Allocator::new());
        assert_eq!(owner(&full).as_deref(), Some("new"), "{old} vs {new}");

        // Incrementally: the new pod arrives after the old one.
        let mut engine = Engine::new();
        let mut inc = snap.clone();
        inc.remove_pod(&new);
        engine.update(&inc, &eps);
        assert_eq!(owner(engine.current()).as_deref(), Some("old"));
        // The old pod starts terminating first, then the new one appears.
        inc.pods.get_mut(&old).unwrap().terminating = false;
        engine.pod_changed(&inc, &old);
        inc.pods.get_mut(&old).unwrap().terminating = true;
        engine.pod_changed(&inc, &old);
        inc.insert_pod(new.clone(), snap.pods[&new].clone());
        engine.pod_changed(&inc, &new);
        assert_eq!(owner(engine.current()).as_deref(), Some("new"));
        // A pending claimant beats a terminating one, loses to a running one.
        inc.pods.get_mut(&new).unwrap().phase = crate::model::PodPhase::Pending;
        engine.pod_changed(&inc, &new);
        assert_eq!(owner(engine.current()).as_deref(), Some("new"));
        inc.pods.get_mut(&new).unwrap().phase = crate::model::PodPhase::Running;
        engine.pod_changed(&inc, &new);
        // The lingering pod changing does not take it back.
        inc.pods
            .get_mut(&old)
            .unwrap()
            .labels
            .insert("v".into(), "2".into());
        engine.pod_changed(&inc, &old);
        assert_eq!(owner(engine.current()).as_deref(), Some("new"));
        assert_eq!(
            owner(engine.current()),
            owner(&compile(&inc, &eps, &mut Allocator::new())),
            "the incremental owner is the full compile's"
        );
        // The live pod goes: the lingering one has it back; then nobody.
        inc.remove_pod(&new);
        engine.pod_changed(&inc, &new);
        assert_eq!(owner(engine.current()).as_deref(), Some("old"));
        inc.remove_pod(&old);
        engine.pod_changed(&inc, &old);
        assert_eq!(owner(engine.current()), None);
    }
}
mod budget;

#[test]
fn isolating_policies_follow_endpoints_as_they_come_and_go() {
    let snap = base()
        .policy("metadata: {name: deny, namespace: x}\nspec:\n  podSelector: {}\n  policyTypes: [Ingress]\n")
        .policy("metadata: {name: allow-b, namespace: x}\nspec:\n  podSelector: {matchLabels: {app: a}}\n  ingress: [{from: [{podSelector: {matchLabels: {app: b}}}]}]\n")
        .build();
    let a: PodRef = "x/a".parse().unwrap();
    let b: PodRef = "x/b".parse().unwrap();
    let mut engine = Engine::new();
    engine.update(&snap, &BTreeMap::new());
    let one: BTreeMap<PodRef, u32> = [(a.clone(), 1)].into();
    engine.endpoints_changed(&snap, &one);
    let two: BTreeMap<PodRef, u32> = [(a.clone(), 1), (b.clone(), 2)].into();
    engine.endpoints_changed(&snap, &two);
    let names = |engine: &Engine, ep: u32, dir: Direction| -> Vec<String> {
        engine
            .current()
            .isolating(ep, dir)
            .map(|p| p.to_string())
            .collect()
    };
    assert_eq!(
        names(&engine, 1, Direction::Ingress),
        ["x/allow-b", "x/deny"]
    );
    assert_eq!(names(&engine, 2, Direction::Ingress), ["x/deny"]);
    assert!(names(&engine, 1, Direction::Egress).is_empty());
    let st = &engine.current().state.endpoints;
    assert_eq!(st[&1], policy_common::ep_flags::ISOLATED_INGRESS);
    assert_eq!(st[&2], policy_common::ep_flags::ISOLATED_INGRESS);
    let full = compile(&snap, &two, &mut Allocator::new());
    assert_eq!(engine.current().isolation, full.isolation);
    // a goes: its policies no longer name it.
    engine.endpoints_changed(&snap, &[(b.clone(), 2)].into());
    assert!(names(&engine, 1, Direction::Ingress).is_empty());
}

/// `policy.palisade.dev/mode: audit`: the enforced state leaves the
/// policy out; the endpoints it isolates carry the audit bit and the
/// as-enforced entries; the lookup model reports what it would drop.
#[test]
fn audited_policies_are_compiled_as_enforced_but_not_enforced() {
    let deny = "metadata: {name: deny, namespace: x, annotations: {policy.palisade.dev/mode: audit}}\nspec:\n  podSelector: {matchLabels: {app: a}}\n  ingress: [{from: [{podSelector: {matchLabels: {app: b}}}], ports: [{port: 80}]}]\n";
    let sim = base().policy(deny).sim();
    let a = sim.endpoints[&"x/a".parse().unwrap()];
    let flags = sim.compiled.state.endpoints[&a];
    assert_eq!(
        flags,
        policy_common::ep_flags::AUDIT_INGRESS,
        "not isolated, audited"
    );
    // Enforced: everything passes.
    assert!(sim.tcp("y/c", "x/a", 80));
    assert!(sim.tcp("x/b", "x/a", 80));
    let names: Vec<String> = sim
        .compiled
        .audit_isolating(a, Direction::Ingress)
        .map(|p| p.to_string())
        .collect();
    assert_eq!(names, ["x/deny"]);
    assert_eq!(sim.compiled.isolating(a, Direction::Ingress).count(), 0);
    // As enforced: c would be dropped, b on 80 not, b on 81 would.
    let wd = |from: &str, port: u16| {
        crate::lookup::would_drop(
            &sim.compiled.state,
            a,
            policy_common::dir::INGRESS,
            from.parse().unwrap(),
            policy_common::proto::TCP,
            port,
        )
    };
    assert!(wd("10.0.1.1", 80), "c would be dropped");
    assert!(!wd("10.0.0.2", 80), "b allowed as enforced");
    assert!(wd("10.0.0.2", 81));
    // Other endpoints: no bit, no audit entries.
    let b = sim.endpoints[&"x/b".parse().unwrap()];
    assert_eq!(sim.compiled.state.endpoints[&b], 0);
    assert!(sim
        .compiled
        .state
        .policy
        .keys()
        .all(|e| e.dir != policy_common::dir::AUDIT_EGRESS
            && (e.dir != policy_common::dir::AUDIT_INGRESS || e.ep_id == a)));

    // Next to an enforced policy: its entries are in the view too.
    let sim = base()
        .policy(deny)
        .policy("metadata: {name: allow-c, namespace: x}\nspec:\n  podSelector: {matchLabels: {app: a}}\n  ingress: [{from: [{namespaceSelector: {matchLabels: {ns: y}}}]}]\n")
        .sim();
    let a = sim.endpoints[&"x/a".parse().unwrap()];
    assert_eq!(
        sim.compiled.state.endpoints[&a],
        policy_common::ep_flags::ISOLATED_INGRESS | policy_common::ep_flags::AUDIT_INGRESS
    );
    assert!(sim.tcp("y/c", "x/a", 80));
    assert!(!sim.tcp("x/b", "x/a", 80), "enforced: only c");
    let wd = |from: &str, port: u16| {
        crate::lookup::would_drop(
            &sim.compiled.state,
            a,
            policy_common::dir::INGRESS,
            from.parse().unwrap(),
            policy_common::proto::TCP,
            port,
        )
    };
    assert!(
        !wd("10.0.1.1", 80),
        "c allowed by the enforced policy, as enforced too"
    );

    // The annotation gone: enforced as a normal policy.
    let sim = base()
        .policy(&deny.replace(", annotations: {policy.palisade.dev/mode: audit}", ""))
        .sim();
    assert!(!sim.tcp("y/c", "x/a", 80));
    assert!(sim.tcp("x/b", "x/a", 80));
    let a = sim.endpoints[&"x/a".parse().unwrap()];
    assert_eq!(
        sim.compiled.state.endpoints[&a],
        policy_common::ep_flags::ISOLATED_INGRESS
    );
}

#[test]
fn the_engine_follows_a_policy_into_and_out_of_audit_mode() {
    let audited = "metadata: {name: deny, namespace: x, annotations: {policy.palisade.dev/mode: audit}}\nspec:\n  podSelector: {matchLabels: {app: a}}\n  policyTypes: [Ingress]\n";
    let enforced = audited.replace(", annotations: {policy.palisade.dev/mode: audit}", "");
    let plain = base().build();
    let with_audit = base().policy(audited).build();
    let with_enforced = base().policy(&enforced).build();
    let deny: PolicyRef = "x/deny".parse().unwrap();
    let eps = all_endpoints(&plain);
    let mut engine = Engine::new();
    engine.update(&plain, &eps);
    for snap in [&with_audit, &with_enforced, &with_audit, &plain] {
        let before = engine.current().state.clone();
        let ops = engine.policy_changed(snap, &deny);
        let full = compile(snap, &eps, &mut engine.allocator().clone());
        assert_eq!(engine.current().state, full.state);
        assert_eq!(engine.current().audit_isolation, full.audit_isolation);
        let mut applied = before;
        applied.apply(&ops);
        assert_eq!(applied, full.state);
    }
}
