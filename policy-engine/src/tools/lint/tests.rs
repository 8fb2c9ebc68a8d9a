//! Lint's findings, and its one-compile checks against the naive way
//! (scan every pod, recompile without each policy) on small clusters.

use std::collections::BTreeSet;

use super::*;
use crate::compile::{all_endpoints, compile, Allocator};
use crate::model::addr::net_within;
use crate::testutil::conformance::{cases, Step};
use crate::testutil::{synthetic_cluster, xyz_model, ClusterBuilder};

fn base() -> ClusterBuilder {
    ClusterBuilder::new()
        .ns("x", &[("team", "blue")])
        .ns("y", &[])
        .pod_with_ports(
            "x/a",
            &[("app", "a")],
            &["10.0.0.1"],
            &[("http", 80, "TCP")],
        )
        .pod("x/b", &[("app", "b")], &["10.0.0.2"])
        .pod("y/c", &[("app", "c")], &["10.0.1.1"])
}

fn fields(s: &Snapshot) -> Vec<String> {
    lint(s)
        .into_iter()
        .map(|f| format!("{} {} {}", f.severity, f.field, f.message))
        .collect()
}

#[test]
fn clean_policy_has_no_findings() {
    let s = base()
        .policy("metadata: {name: p, namespace: x}\nspec:\n  podSelector: {matchLabels: {app: a}}\n  ingress: [{from: [{podSelector: {matchLabels: {app: b}}}], ports: [{port: http}]}]\n")
        .build();
    assert!(lint(&s).is_empty(), "{:?}", lint(&s));
}

#[test]
fn finds_the_usual_mistakes() {
    let s = base()
        .policy("metadata: {name: p, namespace: x}\nspec:\n  podSelector: {matchLabels: {app: a}}\n  ingress:\n  - from:\n    - namespaceSelector: {matchLabels: {team: red}}\n    - namespaceSelector: {matchLabels: {team: blue}}\n    - podSelector: {matchLabels: {app: b}}\n    - podSelector: {matchLabels: {app: zzz}}\n    - ipBlock: {cidr: 10.0.0.0/24}\n    ports: [{port: htp}]\n")
        .policy("metadata: {name: q, namespace: x}\nspec:\n  podSelector: {matchLabels: {app: nope}}\n  ingress: [{}]\n")
        .build();
    let f = fields(&s).join("\n");
    for want in [
        "warning spec.ingress[0].from[0].namespaceSelector no namespace carries",
        "warning spec.ingress[0].from[1..2] namespaceSelector and podSelector are two separate peers",
        "warning spec.ingress[0].from[3] podSelector app=zzz matches no pod",
        "warning spec.ingress[0].from[4].ipBlock.cidr 10.0.0.0/24 covers the IPs of 2 pod(s)",
        "error spec.ingress[0].ports[0].port named port \"htp\"",
        "warning spec.podSelector selects no pod",
    ] {
        assert!(f.contains(want), "{want}\n{f}");
    }
    // A policy selecting nothing is not "already allowed".
    assert!(!f.contains("adds nothing"), "{f}");
}

#[test]
fn and_or_mistake_with_an_ipblock_between() {
    let s = base()
        .policy("metadata: {name: p, namespace: x}\nspec:\n  podSelector: {matchLabels: {app: a}}\n  ingress:\n  - from:\n    - namespaceSelector: {matchLabels: {team: blue}}\n    - ipBlock: {cidr: 192.0.2.0/24}\n    - podSelector: {matchLabels: {app: b}}\n")
        .build();
    let f = fields(&s).join("\n");
    assert!(
        f.contains("spec.ingress[0].from[0..2] namespaceSelector and podSelector"),
        "{f}"
    );
}

#[test]
fn policy_types_that_ignore_rules() {
    let s = base()
        .policy("metadata: {name: p, namespace: x}\nspec:\n  podSelector: {matchLabels: {app: a}}\n  policyTypes: [Ingress]\n  ingress: [{}]\n  egress: [{ports: [{port: 53, protocol: UDP}]}]\n")
        .build();
    let f = fields(&s).join("\n");
    assert!(
        f.contains("error spec.egress policyTypes [Ingress] leaves out Egress, so these egress rules are ignored"),
        "{f}"
    );
}

#[test]
fn finds_policies_that_add_nothing() {
    let s = base()
        .policy("metadata: {name: broad, namespace: x}\nspec:\n  podSelector: {}\n  ingress: [{}]\n")
        .policy("metadata: {name: narrow, namespace: x}\nspec:\n  podSelector: {matchLabels: {app: a}}\n  ingress: [{ports: [{port: 80}]}]\n")
        .build();
    let f = lint(&s);
    assert_eq!(f.len(), 1, "{f:?}");
    assert_eq!(f[0].object(), "NetworkPolicy x/narrow");
    assert!(f[0].message.contains("x/broad"));
    // Two identical policies: only one is told to go.
    let twin = "spec:\n  podSelector: {matchLabels: {app: a}}\n  ingress: [{from: [{podSelector: {matchLabels: {app: b}}}]}]\n";
    let s = base()
        .policy(&format!("metadata: {{name: one, namespace: x}}\n{twin}"))
        .policy(&format!("metadata: {{name: two, namespace: x}}\n{twin}"))
        .build();
    let f = lint(&s);
    assert_eq!(f.len(), 1, "{f:?}");
    assert_eq!(f[0].object(), "NetworkPolicy x/two");
    assert!(f[0].message.contains("x/one"), "{}", f[0].message);
}

#[test]
fn egress_without_dns() {
    let egress = |rules: &str| {
        base()
            .policy(&format!("metadata: {{name: p, namespace: x}}\nspec:\n  podSelector: {{matchLabels: {{app: a}}}}\n  policyTypes: [Egress]\n  egress: {rules}\n"))
    };
    let dns = |s: &Snapshot| -> Vec<String> {
        lint(s)
            .into_iter()
            .filter(|f| f.message.contains("cannot resolve names"))
            .map(|f| format!("{} {} {}", f.severity, f.object(), f.field))
            .collect()
    };
    // Other egress allowed, DNS forgotten: an error.
    let s = egress("[{to: [{podSelector: {matchLabels: {app: b}}}], ports: [{port: 80}]}]").build();
    assert_eq!(dns(&s), ["error NetworkPolicy x/p spec.egress"]);
    // Deny all egress: a warning.
    assert_eq!(
        dns(&egress("[]").build()),
        ["warning NetworkPolicy x/p spec.egress"]
    );
    // DNS to anything: fine.
    let s = egress("[{ports: [{port: 53, protocol: UDP}]}, {to: [{podSelector: {}}]}]").build();
    assert!(dns(&s).is_empty(), "{:?}", dns(&s));
    // With cluster DNS pods, port 53 must reach them.
    let with_dns = |rules: &str| {
        egress(rules)
            .ns("kube-system", &[])
            .pod(
                "kube-system/coredns-1",
                &[("k8s-app", "kube-dns")],
                &["10.0.9.9"],
            )
            .build()
    };
    let s =
        with_dns("[{to: [{ipBlock: {cidr: 203.0.113.0/24}}], ports: [{port: 53, protocol: UDP}]}]");
    assert_eq!(dns(&s), ["error NetworkPolicy x/p spec.egress"]);
    let s = with_dns("[{to: [{namespaceSelector: {}, podSelector: {matchLabels: {k8s-app: kube-dns}}}], ports: [{port: 53, protocol: UDP}, {port: 53}]}]");
    assert!(dns(&s).is_empty(), "{:?}", dns(&s));
}

/// The checks that used to scan every pod and recompile once per policy,
/// done that way.
fn naive(s: &Snapshot) -> BTreeSet<(String, String)> {
    let mut out = BTreeSet::new();
    let pods = |ns: Option<&str>,
                nsel: Option<&crate::model::Selector>,
                psel: Option<&crate::model::Selector>| {
        s.pods
            .iter()
            .filter(|(r, i)| {
                !i.host_network
                    && ns.is_none_or(|n| r.namespace == n)
                    && nsel.is_none_or(|sel| sel.matches(&s.namespace_labels(&r.namespace)))
                    && psel.is_none_or(|sel| sel.matches(&i.labels))
            })
            .count()
    };
    for (r, p) in &s.policies {
        if !p.is_valid() {
            continue;
        }
        if pods(Some(&r.namespace), None, p.pod_selector.as_ref()) == 0 {
            out.insert((r.to_string(), "spec.podSelector".into()));
        }
        for dir in Direction::BOTH {
            for (i, rule) in p.rules(dir).unwrap_or_default().iter().enumerate() {
                for (j, peer) in rule.peers.iter().enumerate() {
                    let field = format!("spec.{}[{i}].{}[{j}]", dir.field(), dir.peers_field());
                    match peer {
                        Peer::Pods {
                            namespaces,
                            pods: ps,
                        } => {
                            let ns = if namespaces.is_none() {
                                Some(r.namespace.as_str())
                            } else {
                                None
                            };
                            let no_ns = namespaces.as_ref().is_some_and(|sel| {
                                !sel.is_empty()
                                    && !s.namespaces.values().any(|n| sel.matches(&n.labels))
                            });
                            if no_ns {
                                out.insert((r.to_string(), format!("{field}.namespaceSelector")));
                            } else if pods(ns, namespaces.as_ref(), ps.as_ref()) == 0 {
                                out.insert((r.to_string(), field));
                            }
                        }
                        Peer::IpBlock(b) if b.cidr.prefix_len() > 0 => {
                            let hit = s.pods.values().filter(|i| !i.host_network).any(|i| {
                                i.ips.iter().any(|ip| {
                                    let h = ipnet::IpNet::from(*ip);
                                    net_within(&h, &b.cidr)
                                        && !b.except.iter().any(|e| net_within(&h, e))
                                })
                            });
                            if hit {
                                out.insert((r.to_string(), format!("{field}.ipBlock.cidr")));
                            }
                        }
                        Peer::IpBlock(_) => {}
                    }
                }
            }
        }
    }
    // Redundancy: a policy adds nothing when the compile without it (and
    // without the ones already reported, later names first) has the same
    // isolation and allows everything the compile with it allows.
    let eps = all_endpoints(s);
    let mut pool = s.clone();
    for (r, p) in s.policies.iter().rev() {
        let has_rules = Direction::BOTH
            .iter()
            .any(|d| p.rules(*d).is_some_and(|r| !r.is_empty()));
        if !p.is_valid() || !has_rules {
            continue;
        }
        let with = compile(&pool, &eps, &mut Allocator::new()).state;
        let selects = with.endpoints.iter().any(|(ep, _)| {
            let pod = eps.iter().find(|(_, id)| *id == ep).map(|(r, _)| r);
            pod.and_then(|pr| s.pods.get(pr)).is_some_and(|i| {
                pr_ns(pod) == Some(r.namespace.as_str())
                    && p.pod_selector
                        .as_ref()
                        .is_none_or(|sel| sel.matches(&i.labels))
            })
        });
        if !selects {
            continue;
        }
        let mut without = pool.clone();
        without.policies.remove(r);
        let st = compile(&without, &eps, &mut Allocator::new()).state;
        // Compare verdicts on every (endpoint, direction, peer, port) the
        // state with it allows.
        let same = st.endpoints == with.endpoints
            && with.policy.keys().all(|e| {
                st.policy.contains_key(e)
                    || st.policy.keys().any(|k| {
                        k.ep_id == e.ep_id
                            && k.dir == e.dir
                            && (k.identity == e.identity
                                || k.identity == policy_common::identity::ANY)
                            && covers(k.ports, e.ports)
                    })
            });
        if same {
            out.insert((r.to_string(), "spec".into()));
            pool = without;
        }
    }
    out
}

fn pr_ns(p: Option<&crate::model::PodRef>) -> Option<&str> {
    p.map(|p| p.namespace.as_str())
}

fn covers(a: crate::state::PortMatch, b: crate::state::PortMatch) -> bool {
    use crate::state::PortMatch::*;
    match (a, b) {
        (AnyProtocol, _) => true,
        (AnyPort { proto }, AnyPort { proto: p2 } | Ports { proto: p2, .. }) => proto == p2,
        (
            Ports {
                proto,
                port,
                prefix_len,
            },
            Ports {
                proto: p2,
                port: port2,
                prefix_len: l2,
            },
        ) => {
            proto == p2
                && prefix_len <= l2
                && crate::compile::ports::block_covers(port, prefix_len, port2)
        }
        _ => false,
    }
}

fn checked(s: &Snapshot) -> BTreeSet<(String, String)> {
    lint(s)
        .into_iter()
        .filter(|f| {
            f.message.contains("selects no pod")
                || f.message.contains("admits nothing")
                || f.message.contains("no namespace carries")
                || f.message.contains("covers the IPs")
                || f.message.contains("adds nothing")
        })
        .map(|f| (f.policy.to_string(), f.field))
        .collect()
}

#[test]
fn same_findings_as_the_naive_checks() {
    let mut compared = 0;
    for case in cases() {
        let mut b = xyz_model();
        for step in &case.steps {
            if let Step::Apply {
                namespace,
                name,
                spec,
            } = step
            {
                b = b.policy(&Step::policy_yaml(namespace, name, spec));
            }
        }
        let s = b.build();
        assert_eq!(checked(&s), naive(&s), "{}", case.name);
        compared += 1;
    }
    let s = synthetic_cluster(6, 60, 40);
    let want = naive(&s);
    assert!(
        want.iter().any(|(_, f)| f == "spec"),
        "the synthetic cluster has redundant policies: {want:?}"
    );
    assert_eq!(checked(&s), want);
    assert!(compared > 20);
}
