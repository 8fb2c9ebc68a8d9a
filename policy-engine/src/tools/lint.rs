//! `lint`: NetworkPolicy mistakes that are valid YAML but almost certainly
//! not what the author meant. Each finding names the policy, the field
//! (with `file:line` when read from manifests), a severity and a fix.
//!
//! The snapshot is indexed once ([`index`]) and compiled once
//! ([`compiled`]): no check compiles or scans the cluster per policy, so a
//! cluster of tens of thousands of pods is linted in seconds.

mod compiled;
mod index;
mod tiers;

use std::io::Write;

use serde_json::{json, Value};

use super::{table, write_err, Output, ToolError};
use crate::manifest::Location;
use crate::model::{Direction, Peer, PolicyRef, PortRef, Snapshot};
use index::{Group, Index};

/// What to lint.
#[derive(Clone, Debug, Default)]
pub struct Options {
    /// Manifests.
    pub input: super::Input,
    /// Output format.
    pub output: Output,
}

/// How bad a finding is (`--fail-on`).
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Severity {
    /// Probably a mistake, possibly intended.
    Warning,
    /// The policy cannot do what it says (dead rules, DNS cut off while
    /// other egress is allowed).
    Error,
}

impl std::fmt::Display for Severity {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Severity::Warning => "warning",
            Severity::Error => "error",
        })
    }
}

/// One finding.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub struct Finding {
    /// How bad.
    pub severity: Severity,
    /// The policy.
    pub policy: PolicyRef,
    /// Path of the field.
    pub field: String,
    /// What looks wrong.
    pub message: String,
    /// What to do about it.
    pub fix: String,
}

impl Finding {
    /// `NetworkPolicy namespace/name`, or `ClusterNetworkPolicy name` (a
    /// reference without namespace).
    pub fn object(&self) -> String {
        if self.policy.namespace.is_empty() {
            format!("ClusterNetworkPolicy {}", self.policy.name)
        } else {
            format!("NetworkPolicy {}", self.policy)
        }
    }
}

impl std::fmt::Display for Finding {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "{}: {} {}: {}\n  fix: {}",
            self.severity,
            self.object(),
            self.field,
            self.message,
            self.fix
        )
    }
}

/// What `lint` found.
#[derive(Clone, Debug, Default)]
pub struct Report {
    /// The findings, worst first.
    pub findings: Vec<Finding>,
    /// Manifest warnings (skipped kinds, duplicates...).
    pub warnings: Vec<String>,
}

/// Runs `lint` as the CLI does and writes the findings.
pub fn run(opts: &Options, out: &mut impl Write) -> Result<Report, ToolError> {
    let loaded = opts.input.load()?;
    let findings = lint(&loaded.snapshot);
    let located: Vec<(Option<Location>, &Finding)> = findings
        .iter()
        .map(|f| (loaded.locate(&f.object(), &f.field), f))
        .collect();
    write_findings(&located, opts.output, out).map_err(write_err)?;
    Ok(Report {
        findings,
        warnings: loaded.warnings,
    })
}

fn write_findings(
    findings: &[(Option<Location>, &Finding)],
    output: Output,
    out: &mut impl Write,
) -> std::io::Result<()> {
    let count = |s: Severity| findings.iter().filter(|(_, f)| f.severity == s).count();
    let (errors, warnings) = (count(Severity::Error), count(Severity::Warning));
    let loc = |l: &Option<Location>| l.as_ref().map_or("-".to_string(), |l| l.to_string());
    match output {
        Output::Table | Output::Wide | Output::Html => {
            let wide = output == Output::Wide;
            let rows: Vec<Vec<String>> = findings
                .iter()
                .map(|(l, f)| {
                    let mut row = vec![
                        f.severity.to_string().to_uppercase(),
                        loc(l),
                        f.object(),
                        f.field.clone(),
                        f.message.clone(),
                    ];
                    if wide {
                        row.push(f.fix.clone());
                    }
                    row
                })
                .collect();
            let mut head = vec!["SEVERITY", "LOCATION", "OBJECT", "FIELD", "MESSAGE"];
            if wide {
                head.push("FIX");
            }
            if !rows.is_empty() {
                table::write(out, &head, &rows)?;
            }
            writeln!(out, "{errors} error(s), {warnings} warning(s)")
        }
        Output::Json | Output::Yaml => {
            let list: Vec<Value> = findings
                .iter()
                .map(|(l, f)| {
                    json!({
                        "severity": f.severity.to_string(),
                        "location": l.as_ref().map(|l| l.to_string()),
                        "object": f.object(),
                        "field": f.field,
                        "message": f.message,
                        "fix": f.fix,
                    })
                })
                .collect();
            let doc = json!({"findings": list, "errors": errors, "warnings": warnings});
            if output == Output::Json {
                table::write_json(out, &doc)
            } else {
                table::write_yaml(out, &doc)
            }
        }
    }
}

/// All findings for a snapshot, worst first.
pub fn lint(s: &Snapshot) -> Vec<Finding> {
    let ix = Index::new(s);
    let mut out = Vec::new();
    for (r, p) in &s.policies {
        if !p.is_valid() {
            continue;
        }
        let mut push = |severity: Severity, field: String, message: String, fix: &str| {
            out.push(Finding {
                severity,
                policy: r.clone(),
                field,
                message,
                fix: fix.to_string(),
            })
        };
        let selected: Vec<&Group> = ix.selected(&r.namespace, p.pod_selector.as_ref()).collect();
        if selected.is_empty() {
            push(
                Severity::Warning,
                "spec.podSelector".into(),
                format!(
                    "selects no pod in namespace {} ({})",
                    r.namespace,
                    p.pod_selector.as_ref().map(|x| x.to_string()).unwrap_or_default()
                ),
                "check the labels against `kubectl get pods --show-labels`, or the policy's namespace",
            );
        }
        let spec = p.object.spec.clone().unwrap_or_default();
        let types = spec.policy_types.clone().unwrap_or_default();
        let written = [
            (
                Direction::Ingress,
                spec.ingress.as_ref().is_some_and(|r| !r.is_empty()),
            ),
            (
                Direction::Egress,
                spec.egress.as_ref().is_some_and(|r| !r.is_empty()),
            ),
        ];
        for (dir, has_rules) in written {
            let name = if dir == Direction::Ingress {
                "Ingress"
            } else {
                "Egress"
            };
            if has_rules && !types.iter().any(|t| t == name) {
                push(
                    Severity::Error,
                    format!("spec.{}", dir.field()),
                    format!(
                        "policyTypes [{}] leaves out {name}, so these {} rules are ignored",
                        types.join(", "),
                        dir.field()
                    ),
                    &format!("add {name} to spec.policyTypes, or delete the rules"),
                );
            }
        }
        for dir in Direction::BOTH {
            for (i, rule) in p.rules(dir).unwrap_or_default().iter().enumerate() {
                let base = format!("spec.{}[{i}]", dir.field());
                lint_peers(&ix, r, dir, &base, &rule.peers, &mut push);
                lint_named_ports(&ix, dir, &base, rule, &selected, &mut push);
            }
        }
    }
    let compiled = compiled::LintCompile::new(s, &ix);
    out.extend(compiled.dns(s));
    out.extend(compiled.redundant(s));
    out.extend(tiers::findings(s));
    out.sort_by(|a, b| {
        (
            std::cmp::Reverse(a.severity),
            &a.policy,
            &a.field,
            &a.message,
        )
            .cmp(&(
                std::cmp::Reverse(b.severity),
                &b.policy,
                &b.field,
                &b.message,
            ))
    });
    out
}

type Push<'a> = dyn FnMut(Severity, String, String, &str) + 'a;

fn lint_peers(
    ix: &Index<'_>,
    r: &PolicyRef,
    dir: Direction,
    base: &str,
    peers: &[Peer],
    push: &mut Push<'_>,
) {
    let pf = dir.peers_field();
    for (j, peer) in peers.iter().enumerate() {
        let field = format!("{base}.{pf}[{j}]");
        match peer {
            Peer::Pods { namespaces, pods } => {
                if let Some(sel) = namespaces {
                    let any_ns = ix.namespaces.values().any(|l| sel.matches(l));
                    if !sel.is_empty() && !any_ns {
                        push(
                            Severity::Warning,
                            format!("{field}.namespaceSelector"),
                            format!("no namespace carries the labels {sel}"),
                            "label the namespace (`kubectl label namespace NAME key=value`) or select it by `kubernetes.io/metadata.name: NAME`",
                        );
                        continue;
                    }
                }
                if ix.in_scope(&r.namespace, namespaces, pods).is_empty() {
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
                        Severity::Warning,
                        field.clone(),
                        format!("{what}: this peer admits nothing today"),
                        "check the labels (a podSelector without namespaceSelector only looks in the policy's own namespace)",
                    );
                }
            }
            Peer::IpBlock(b) => {
                if b.cidr.prefix_len() == 0 {
                    continue;
                }
                let covered = ix.covered_by(b);
                if !covered.is_empty() {
                    let shown: Vec<String> =
                        covered.iter().take(3).map(|p| p.to_string()).collect();
                    push(
                        Severity::Warning,
                        format!("{field}.ipBlock.cidr"),
                        format!(
                            "{} covers the IPs of {} pod(s) ({}{}); pod IPs change when pods restart",
                            b.cidr,
                            covered.len(),
                            shown.join(", "),
                            if covered.len() > 3 { ", ..." } else { "" }
                        ),
                        "select pods with podSelector/namespaceSelector, and keep ipBlock for addresses outside the cluster (or except the pod CIDR)",
                    );
                }
            }
        }
    }
    // A peer with only a namespaceSelector next to one with only a
    // podSelector (also with ipBlock items between them): ORed, where one
    // ANDed item is usual.
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
    let selectors: Vec<(usize, Option<bool>)> = peers
        .iter()
        .enumerate()
        .filter(|(_, p)| !matches!(p, Peer::IpBlock(_)))
        .map(|(j, p)| (j, only(p)))
        .collect();
    for pair in selectors.windows(2) {
        let ((j, a), (k, b)) = (pair[0], pair[1]);
        if let (Some(a), Some(b)) = (a, b) {
            if a != b {
                push(
                    Severity::Warning,
                    format!("{base}.{pf}[{j}..{k}]"),
                    "namespaceSelector and podSelector are two separate peers (OR): every pod of the selected namespaces is admitted, plus the selected pods of this namespace".into(),
                    "if you meant \"these pods in those namespaces\", put both selectors in ONE peer item (drop the `-` before the second selector)",
                );
            }
        }
    }
}

fn lint_named_ports(
    ix: &Index<'_>,
    dir: Direction,
    base: &str,
    rule: &crate::model::Rule,
    selected: &[&Group<'_>],
    push: &mut Push<'_>,
) {
    for (k, port) in rule.ports.iter().enumerate() {
        let Some(PortRef::Name(name)) = &port.port else {
            continue;
        };
        let (ok, whom) = match dir {
            Direction::Ingress => (
                selected.iter().any(|g| g.declares(name, port.protocol)),
                "the pods this policy selects",
            ),
            Direction::Egress => (
                ix.named_ports.contains(&(name.as_str(), port.protocol)),
                "any pod",
            ),
        };
        if !ok {
            push(
                Severity::Error,
                format!("{base}.ports[{k}].port"),
                format!(
                    "named port {name:?} ({}) is declared by none of {whom}, so this port matches nothing",
                    port.protocol
                ),
                "use the containerPort name exactly (and its protocol), or a port number",
            );
        }
    }
}

#[cfg(test)]
mod tests;
