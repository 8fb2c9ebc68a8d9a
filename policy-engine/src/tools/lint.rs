//! `lint`: warnings for NetworkPolicy mistakes that are valid YAML but
//! almost certainly not what the author meant. Each names the object, the
//! field and a suggested fix.

use std::collections::BTreeMap;
use std::io::Write;
use std::path::PathBuf;

use ipnet::IpNet;

use super::{write_err, ToolError};
use crate::compile::{all_endpoints, compile, Allocator};
use crate::manifest;
use crate::model::addr::net_within;
use crate::model::{Direction, Peer, PodRef, Policy, PolicyRef, PortRef, Selector, Snapshot};
use crate::state::{PolicyEntry, PortMatch};

/// What to lint.
#[derive(Clone, Debug, Default)]
pub struct Options {
    /// Manifest files or directories.
    pub manifests: Vec<PathBuf>,
}

/// One finding.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub struct Finding {
    /// `NetworkPolicy namespace/name`.
    pub object: String,
    /// Path of the field.
    pub field: String,
    /// What looks wrong.
    pub message: String,
    /// What to do about it.
    pub fix: String,
}

impl std::fmt::Display for Finding {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "warning: {} {}: {}\n  fix: {}",
            self.object, self.field, self.message, self.fix
        )
    }
}

/// Runs `lint` as the CLI does; returns the findings (the CLI may exit 1
/// when there are any).
pub fn run(opts: &Options, out: &mut impl Write) -> Result<Vec<Finding>, ToolError> {
    let loaded = manifest::load_paths(&opts.manifests)?.strict()?;
    let findings = lint(&loaded.snapshot);
    for f in &findings {
        writeln!(out, "{f}").map_err(write_err)?;
    }
    let n = findings.len();
    writeln!(out, "{n} warning(s)").map_err(write_err)?;
    Ok(findings)
}

/// All findings for a snapshot.
pub fn lint(s: &Snapshot) -> Vec<Finding> {
    let mut out = Vec::new();
    for (r, p) in &s.policies {
        if !p.is_valid() {
            continue;
        }
        let object = format!("NetworkPolicy {r}");
        let mut push = |field: String, message: String, fix: String| {
            out.push(Finding {
                object: object.clone(),
                field,
                message,
                fix,
            })
        };
        let selected: Vec<&PodRef> = s
            .pods
            .iter()
            .filter(|(pr, info)| {
                pr.namespace == r.namespace
                    && !info.host_network
                    && p.pod_selector
                        .as_ref()
                        .is_none_or(|sel| sel.matches(&info.labels))
            })
            .map(|(pr, _)| pr)
            .collect();
        if selected.is_empty() {
            push(
                "spec.podSelector".into(),
                format!(
                    "selects no pod in namespace {} ({})",
                    r.namespace,
                    p.pod_selector.as_ref().map(|x| x.to_string()).unwrap_or_default()
                ),
                "check the labels against `kubectl get pods --show-labels`, or the policy's namespace".into(),
            );
        }
        for dir in Direction::BOTH {
            for (i, rule) in p.rules(dir).unwrap_or_default().iter().enumerate() {
                let base = format!("spec.{}[{i}]", dir.field());
                lint_peers(s, r, dir, &base, &rule.peers, &mut push);
                lint_named_ports(s, dir, &base, rule, &selected, &mut push);
            }
        }
    }
    out.extend(redundant_policies(s));
    out.sort();
    out
}

fn pods_in_scope<'a>(
    s: &'a Snapshot,
    policy_ns: &str,
    namespaces: &Option<Selector>,
    pods: &Option<Selector>,
) -> Vec<&'a PodRef> {
    s.pods
        .iter()
        .filter(|(pr, info)| {
            !info.host_network
                && match namespaces {
                    None => pr.namespace == policy_ns,
                    Some(sel) => sel.matches(&s.namespace_labels(&pr.namespace)),
                }
                && pods.as_ref().is_none_or(|sel| sel.matches(&info.labels))
        })
        .map(|(pr, _)| pr)
        .collect()
}

fn lint_peers(
    s: &Snapshot,
    r: &PolicyRef,
    dir: Direction,
    base: &str,
    peers: &[Peer],
    push: &mut impl FnMut(String, String, String),
) {
    let pf = dir.peers_field();
    for (j, peer) in peers.iter().enumerate() {
        let field = format!("{base}.{pf}[{j}]");
        match peer {
            Peer::Pods { namespaces, pods } => {
                if let Some(sel) = namespaces {
                    let any_ns = s.namespaces.values().any(|n| sel.matches(&n.labels));
                    if !sel.is_empty() && !any_ns {
                        push(
                            format!("{field}.namespaceSelector"),
                            format!("no namespace carries the labels {sel}"),
                            "label the namespace (`kubectl label namespace NAME key=value`) or select it by `kubernetes.io/metadata.name: NAME`".into(),
                        );
                        continue;
                    }
                }
                if pods_in_scope(s, &r.namespace, namespaces, pods).is_empty() {
                    let what = match (namespaces, pods) {
                        (None, Some(p)) => format!(
                            "podSelector {p} matches no pod in namespace {}",
                            r.namespace
                        ),
                        (Some(n), Some(p)) => {
                            format!("no pod matches podSelector {p} in namespaces matching {n}")
                        }
                        (Some(n), None) => format!("namespaces matching {n} have no pods"),
                        (None, None) => "matches nothing".into(),
                    };
                    push(
                        field.clone(),
                        format!("{what}: this peer admits nothing today"),
                        "check the labels (a podSelector without namespaceSelector only looks in the policy's own namespace)".into(),
                    );
                }
            }
            Peer::IpBlock(b) => {
                if b.cidr.prefix_len() == 0 {
                    continue;
                }
                let covered: Vec<String> = s
                    .pods
                    .iter()
                    .filter(|(_, i)| !i.host_network)
                    .filter(|(_, i)| {
                        i.ips.iter().any(|ip| {
                            let h = IpNet::from(*ip);
                            net_within(&h, &b.cidr) && !b.except.iter().any(|e| net_within(&h, e))
                        })
                    })
                    .map(|(pr, _)| pr.to_string())
                    .collect();
                if !covered.is_empty() {
                    let shown: Vec<String> = covered.iter().take(3).cloned().collect();
                    push(
                        format!("{field}.ipBlock.cidr"),
                        format!(
                            "{} covers the IPs of {} pod(s) ({}{}); pod IPs change when pods restart",
                            b.cidr,
                            covered.len(),
                            shown.join(", "),
                            if covered.len() > 3 { ", ..." } else { "" }
                        ),
                        "select pods with podSelector/namespaceSelector, and keep ipBlock for addresses outside the cluster (or except the pod CIDR)".into(),
                    );
                }
            }
        }
    }
    // Two items, one with only a namespaceSelector and the next with only a
    // podSelector (or the reverse): ORed, where one ANDed item is usual.
    for (j, pair) in peers.windows(2).enumerate() {
        let only = |p: &Peer| match p {
            Peer::Pods {
                namespaces: Some(_),
                pods: None,
            } => Some(true),
            Peer::Pods {
                namespaces: None,
                pods: Some(_),
            } => Some(false),
            _ => None,
        };
        if let (Some(a), Some(b)) = (only(&pair[0]), only(&pair[1])) {
            if a != b {
                push(
                    format!("{base}.{pf}[{j}..{}]", j + 1),
                    "namespaceSelector and podSelector are two separate peers (OR): every pod of the selected namespaces is admitted, plus the selected pods of this namespace".into(),
                    "if you meant \"these pods in those namespaces\", put both selectors in ONE peer item (drop the `-` before the second selector)".into(),
                );
            }
        }
    }
}

fn lint_named_ports(
    s: &Snapshot,
    dir: Direction,
    base: &str,
    rule: &crate::model::Rule,
    selected: &[&PodRef],
    push: &mut impl FnMut(String, String, String),
) {
    for (k, port) in rule.ports.iter().enumerate() {
        let Some(PortRef::Name(name)) = &port.port else {
            continue;
        };
        let declared = |pr: &&PodRef| {
            s.pods
                .get(*pr)
                .is_some_and(|i| i.named_port(name, port.protocol).next().is_some())
        };
        let (ok, whom) = match dir {
            Direction::Ingress => (
                selected.iter().any(declared),
                "the pods this policy selects",
            ),
            Direction::Egress => (s.pods.keys().any(|p| declared(&p)), "any pod"),
        };
        if !ok {
            push(
                format!("{base}.ports[{k}].port"),
                format!(
                    "named port {name:?} ({}) is declared by none of {whom}, so this port matches nothing",
                    port.protocol
                ),
                "use the containerPort name exactly (and its protocol), or a port number".into(),
            );
        }
    }
}

/// Policies whose removal changes nothing in the compiled state: another
/// policy already allows at least as much for the same pods.
fn redundant_policies(s: &Snapshot) -> Vec<Finding> {
    let eps = all_endpoints(s);
    let mut alloc = Allocator::new();
    let full = compile(s, &eps, &mut alloc);
    let mut out = Vec::new();
    for (r, p) in &s.policies {
        if !p.is_valid() || !has_rules(p) {
            continue;
        }
        let mut without = s.clone();
        without.policies.remove(r);
        let st = compile(&without, &eps, &mut alloc.clone()).state;
        let same_isolation: bool = st.endpoints == full.state.endpoints;
        if same_isolation
            && full
                .state
                .policy
                .keys()
                .all(|e| st.policy.contains_key(e) || covered(&st.policy, e))
        {
            let others: Vec<String> = s
                .policies
                .keys()
                .filter(|o| o.namespace == r.namespace && *o != r)
                .map(|o| o.to_string())
                .collect();
            out.push(Finding {
                object: format!("NetworkPolicy {r}"),
                field: "spec".into(),
                message: format!(
                    "adds nothing: every connection it allows is already allowed (by {})",
                    if others.is_empty() {
                        "other policies".to_string()
                    } else {
                        others.join(", ")
                    }
                ),
                fix: "delete it, or narrow the broader policy if this one states the intent".into(),
            });
        }
    }
    out
}

/// Whether some entry of `policy` already allows everything `e` allows.
fn covered(policy: &BTreeMap<PolicyEntry, policy_common::PolicyValue>, e: &PolicyEntry) -> bool {
    let lo = PolicyEntry {
        identity: policy_common::identity::ANY,
        ports: PortMatch::AnyProtocol,
        ..*e
    };
    policy
        .range(lo..)
        .take_while(|(k, _)| k.ep_id == e.ep_id && k.dir == e.dir)
        .any(|(k, _)| {
            (k.identity == e.identity || k.identity == policy_common::identity::ANY)
                && port_covers(k.ports, e.ports)
        })
}

fn port_covers(a: PortMatch, b: PortMatch) -> bool {
    match (a, b) {
        (PortMatch::AnyProtocol, _) => true,
        (PortMatch::AnyPort { proto }, PortMatch::AnyPort { proto: p2 }) => proto == p2,
        (PortMatch::AnyPort { proto }, PortMatch::Ports { proto: p2, .. }) => proto == p2,
        (
            PortMatch::Ports {
                proto,
                port,
                prefix_len,
            },
            PortMatch::Ports {
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

fn has_rules(p: &Policy) -> bool {
    Direction::BOTH
        .iter()
        .any(|d| p.rules(*d).is_some_and(|r| !r.is_empty()))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::testutil::ClusterBuilder;

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
            .map(|f| format!("{} {}", f.field, f.message))
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
        assert!(
            f.contains("spec.ingress[0].from[0].namespaceSelector no namespace carries"),
            "{f}"
        );
        assert!(f.contains("spec.ingress[0].from[1..2] namespaceSelector and podSelector are two separate peers"), "{f}");
        assert!(
            f.contains("spec.ingress[0].from[3] podSelector app=zzz matches no pod"),
            "{f}"
        );
        assert!(
            f.contains(
                "spec.ingress[0].from[4].ipBlock.cidr 10.0.0.0/24 covers the IPs of 2 pod(s)"
            ),
            "{f}"
        );
        assert!(
            f.contains("spec.ingress[0].ports[0].port named port \"htp\""),
            "{f}"
        );
        assert!(f.contains("spec.podSelector selects no pod"), "{f}");
    }

    #[test]
    fn finds_policies_that_add_nothing() {
        let s = base()
            .policy("metadata: {name: broad, namespace: x}\nspec:\n  podSelector: {}\n  ingress: [{}]\n")
            .policy("metadata: {name: narrow, namespace: x}\nspec:\n  podSelector: {matchLabels: {app: a}}\n  ingress: [{ports: [{port: 80}]}]\n")
            .build();
        let f = lint(&s);
        assert_eq!(f.len(), 1, "{f:?}");
        assert_eq!(f[0].object, "NetworkPolicy x/narrow");
        assert!(f[0].message.contains("x/broad"));
    }
}
