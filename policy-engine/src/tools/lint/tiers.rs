//! Mistakes administrators make with ClusterNetworkPolicy tiers: a Pass (or
//! any rule) below a Deny of the same peers and ports, two policies at one
//! priority that disagree, an Admin Accept that leaves a NetworkPolicy
//! nothing to decide, and `domainNames`, which Palisade does not support.

use crate::model::cluster_policy::{Action, ClusterPolicy, CnpPeer, Tier};
use crate::model::{Direction, NamespaceInfo, PodRef, PolicyRef, Snapshot};

use super::{Finding, Severity};

/// Pods a policy's subject selects.
fn subject_pods<'s>(
    s: &'s Snapshot,
    p: &'s ClusterPolicy,
) -> impl Iterator<Item = &'s PodRef> + 's {
    s.pods.iter().filter_map(move |(r, info)| {
        let ns = s
            .namespaces
            .get(&r.namespace)
            .map(|n| n.labels.clone())
            .unwrap_or_else(|| NamespaceInfo::implicit(&r.namespace).labels);
        let hit = !info.host_network
            && p.subject
                .as_ref()
                .is_some_and(|sub| sub.matches(&ns, &info.labels));
        hit.then_some(r)
    })
}

fn finding(name: &str, field: String, message: String, fix: &str) -> Finding {
    Finding {
        severity: Severity::Warning,
        policy: PolicyRef::new("", name),
        field,
        message,
        fix: fix.to_string(),
    }
}

/// The findings about ClusterNetworkPolicies.
pub(super) fn findings(s: &Snapshot) -> Vec<Finding> {
    let mut out = Vec::new();
    let valid: Vec<&ClusterPolicy> = s
        .cluster_policies
        .values()
        .filter(|p| p.is_valid())
        .collect();
    for p in &valid {
        for dir in Direction::BOTH {
            let rules = p.rules(dir);
            for (j, later) in rules.iter().enumerate() {
                let base = format!("spec.{}[{j}]", dir.field());
                for (k, peer) in later.peers.iter().enumerate() {
                    if matches!(peer, CnpPeer::DomainNames(_)) {
                        out.push(finding(
                            p.name(),
                            format!("{base}.to[{k}].domainNames"),
                            "domainNames are not supported by Palisade: this peer matches nothing"
                                .into(),
                            "use networks with the addresses the names resolve to",
                        ));
                    }
                }
                let shadow = rules[..j].iter().position(|earlier| {
                    earlier.action == Action::Deny
                        && earlier.peers == later.peers
                        && (earlier.ports.is_empty() || earlier.ports == later.ports)
                });
                if let Some(i) = shadow {
                    if later.action != Action::Deny {
                        out.push(finding(
                            p.name(),
                            base.clone(),
                            format!(
                                "this {} never applies: rule {i} denies the same peers and ports first",
                                later.action.as_str()
                            ),
                            "move it above the Deny, or remove it",
                        ));
                    }
                }
            }
        }
    }
    for (n, a) in valid.iter().enumerate() {
        for b in &valid[n + 1..] {
            if a.tier != b.tier || a.priority != b.priority {
                continue;
            }
            let shared = subject_pods(s, a).any(|r| subject_pods(s, b).any(|x| x == r));
            let disagree = Direction::BOTH.iter().any(|d| {
                a.rules(*d).iter().any(|x| {
                    b.rules(*d).iter().any(|y| {
                        x.action != y.action && x.peers.iter().any(|p| y.peers.contains(p))
                    })
                })
            });
            if shared && disagree {
                out.push(finding(
                    b.name(),
                    "spec.priority".into(),
                    format!(
                        "same {} priority {} as cnp/{} over the same pods, with rules that disagree on the same peers: the API leaves the order open (Palisade takes cnp/{} first, by name)",
                        a.tier.as_str(),
                        a.priority,
                        a.name(),
                        a.name()
                    ),
                    "give the policies different priorities",
                ));
            }
        }
    }
    for p in valid.iter().filter(|p| p.tier == Tier::Admin) {
        for dir in Direction::BOTH {
            for (i, rule) in p.rules(dir).iter().enumerate() {
                let everyone = rule.action == Action::Accept
                    && rule.ports.is_empty()
                    && rule.peers.iter().any(|x| {
                        matches!(x, CnpPeer::Pods(sel) if sel.namespaces.is_empty() && sel.pods.as_ref().is_none_or(|s| s.is_empty()))
                    });
                if !everyone {
                    continue;
                }
                let pods: Vec<&PodRef> = subject_pods(s, p).collect();
                for (r, np) in &s.policies {
                    let isolates = np.rules(dir).is_some()
                        && pods.iter().any(|pod| {
                            pod.namespace == r.namespace
                                && s.pods.get(*pod).is_some_and(|info| {
                                    np.pod_selector
                                        .as_ref()
                                        .is_none_or(|sel| sel.matches(&info.labels))
                                })
                        });
                    if isolates {
                        out.push(finding(
                            p.name(),
                            format!("spec.{}[{i}]", dir.field()),
                            format!(
                                "accepts every pod's {dir} traffic of pods NetworkPolicy {r} isolates: that policy no longer restricts traffic between pods"
                            ),
                            "narrow the Accept (peers or protocols), or use Pass to let the NetworkPolicy decide",
                        ));
                    }
                }
            }
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use crate::testutil::ClusterBuilder;

    #[test]
    fn finds_the_tier_mistakes() {
        let s = ClusterBuilder::new()
            .ns("x", &[])
            .pod("x/a", &[], &["10.0.0.1"])
            .policy("metadata: {name: np, namespace: x}\nspec:\n  podSelector: {}\n  ingress: [{from: [{podSelector: {}}]}]\n")
            .cnp("metadata: {name: a}\nspec:\n  tier: Admin\n  priority: 5\n  subject: {namespaces: {}}\n  ingress:\n  - {action: Deny, from: [{namespaces: {}}]}\n  - {action: Pass, from: [{namespaces: {}}]}\n  - {action: Accept, from: [{namespaces: {}}]}\n  egress: [{action: Accept, to: [{domainNames: [example.com]}]}]\n")
            .cnp("metadata: {name: b}\nspec:\n  tier: Admin\n  priority: 5\n  subject: {namespaces: {}}\n  ingress: [{action: Accept, from: [{namespaces: {}}]}]\n")
            .build();
        let f: Vec<String> = super::findings(&s)
            .iter()
            .map(|f| format!("{} {} {}", f.object(), f.field, f.message))
            .collect();
        let has = |obj: &str, field: &str, text: &str| {
            f.iter()
                .any(|l| l.starts_with(&format!("{obj} {field} ")) && l.contains(text))
        };
        assert!(
            has(
                "ClusterNetworkPolicy a",
                "spec.ingress[1]",
                "Pass never applies: rule 0 denies"
            ),
            "{f:#?}"
        );
        assert!(
            has(
                "ClusterNetworkPolicy a",
                "spec.egress[0].to[0].domainNames",
                "not supported"
            ),
            "{f:#?}"
        );
        assert!(
            has(
                "ClusterNetworkPolicy b",
                "spec.priority",
                "same Admin priority 5 as cnp/a"
            ),
            "{f:#?}"
        );
        assert!(
            has(
                "ClusterNetworkPolicy b",
                "spec.ingress[0]",
                "NetworkPolicy x/np isolates"
            ),
            "{f:#?}"
        );
    }
}
