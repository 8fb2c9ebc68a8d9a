//! The findings that need the compiled state: policies that add nothing,
//! and pods that can reach no DNS server. One compile serves every policy:
//! one endpoint per pod group (pods with the same namespace, labels and
//! ports get the same entries), and each policy's contribution to it.

use std::collections::BTreeMap;

use policy_common::identity::ANY;

use super::index::Index;
use super::{Finding, Severity};
use crate::compile::{compile_with_contributions, Allocator, Compiled, PolicyContribution};
use crate::lookup;
use crate::model::{Direction, PodRef, Policy, PolicyRef, Protocol, Snapshot};
use crate::state::{PolicyEntry, PortMatch};

/// Labels of the cluster DNS pods (kube-dns and CoreDNS both use
/// `k8s-app=kube-dns`; some distributions label CoreDNS `k8s-app=coredns`).
const DNS_POD_LABELS: [(&str, &str); 2] = [("k8s-app", "kube-dns"), ("k8s-app", "coredns")];

/// The compile lint reads.
pub struct LintCompile {
    compiled: Compiled,
    contrib: BTreeMap<PolicyRef, PolicyContribution>,
    /// Endpoint id → the pods it stands for.
    members: BTreeMap<u32, Vec<PodRef>>,
}

impl LintCompile {
    /// Compiles `s` with one endpoint per pod group of `ix`.
    pub fn new(s: &Snapshot, ix: &Index<'_>) -> Self {
        let mut endpoints = BTreeMap::new();
        let mut members = BTreeMap::new();
        let mut id = 0u32;
        for groups in ix.by_ns.values() {
            for g in groups {
                if let Some(first) = g.pods.first() {
                    id += 1;
                    endpoints.insert((*first).clone(), id);
                    members.insert(id, g.pods.iter().map(|p| (*p).clone()).collect());
                }
            }
        }
        let (compiled, contrib) = compile_with_contributions(s, &endpoints, &mut Allocator::new());
        LintCompile {
            compiled,
            contrib,
            members,
        }
    }

    /// Policies whose removal changes nothing: every endpoint they isolate
    /// is isolated by another policy, and each of their allow entries is
    /// also allowed (as it is, or by a broader entry) by another policy.
    /// Of two policies that cover each other only the later one (in name
    /// order) is reported. Policies without rules (pure isolation) and
    /// policies that select nothing are never reported.
    pub fn redundant(&self, s: &Snapshot) -> Vec<Finding> {
        // How many policies (still counted) set each isolation bit and
        // contribute each entry.
        let mut flags: BTreeMap<(u32, u32), u32> = BTreeMap::new();
        let mut all: Vec<PolicyEntry> = Vec::new();
        for c in self.contrib.values() {
            for (ep, f) in &c.flags {
                for bit in bits(*f) {
                    *flags.entry((*ep, bit)).or_default() += 1;
                }
            }
            all.extend(c.entries.iter().copied());
        }
        all.sort_unstable();
        let mut counts: Vec<(PolicyEntry, u32)> = Vec::new();
        for e in all {
            match counts.last_mut() {
                Some((last, n)) if *last == e => *n += 1,
                _ => counts.push((e, 1)),
            }
        }
        let count = |counts: &[(PolicyEntry, u32)], e: &PolicyEntry| {
            counts
                .binary_search_by(|(k, _)| k.cmp(e))
                .map_or(0, |i| counts[i].1)
        };
        let mut out = Vec::new();
        for (r, c) in self.contrib.iter().rev() {
            let Some(p) = s.policies.get(r) else { continue };
            if !p.is_valid() || !has_rules(p) || c.flags.is_empty() {
                continue;
            }
            let own = |e: &PolicyEntry| u32::from(c.entries.binary_search(e).is_ok());
            let isolation_shared = c.flags.iter().all(|(ep, f)| {
                bits(*f).all(|bit| flags.get(&(*ep, bit)).copied().unwrap_or(0) > 1)
            });
            let entries_shared = isolation_shared
                && c.entries
                    .iter()
                    .all(|e| broader(e).any(|k| count(&counts, &k) > own(&k)));
            if !entries_shared {
                continue;
            }
            // Reported: it no longer counts for the policies after it.
            for (ep, f) in &c.flags {
                for bit in bits(*f) {
                    if let Some(n) = flags.get_mut(&(*ep, bit)) {
                        *n -= 1;
                    }
                }
            }
            for e in &c.entries {
                if let Ok(i) = counts.binary_search_by(|(k, _)| k.cmp(e)) {
                    counts[i].1 -= 1;
                }
            }
            let others: Vec<String> = s
                .policies
                .keys()
                .filter(|o| o.namespace == r.namespace && *o != r)
                .filter(|o| {
                    self.contrib.get(*o).is_some_and(|oc| {
                        c.entries
                            .iter()
                            .any(|e| broader(e).any(|k| oc.entries.binary_search(&k).is_ok()))
                    })
                })
                .take(3)
                .map(|o| o.to_string())
                .collect();
            out.push(Finding {
                severity: Severity::Warning,
                policy: r.clone(),
                field: "spec".into(),
                message: format!(
                    "adds nothing: every connection it allows is already allowed, and every pod it isolates already isolated (by {})",
                    if others.is_empty() {
                        "other policies".to_string()
                    } else {
                        others.join(", ")
                    }
                ),
                fix: "delete it, or narrow the broader policy if this one states the intent".into(),
            });
        }
        out
    }

    /// Pods isolated for egress that can reach no DNS server on port 53
    /// (UDP or TCP): the cluster DNS pods when the snapshot has them,
    /// anything otherwise. Reported on each policy isolating them for
    /// egress: an error when they may reach something else (DNS was
    /// forgotten), a warning when all their egress is denied.
    pub fn dns(&self, s: &Snapshot) -> Vec<Finding> {
        let dns_pods: Vec<&PodRef> = s
            .pods
            .iter()
            .filter(|(_, p)| {
                !p.host_network
                    && DNS_POD_LABELS
                        .iter()
                        .any(|(k, v)| p.labels.get(*k).map(String::as_str) == Some(*v))
            })
            .map(|(r, _)| r)
            .collect();
        let dns_ips: Vec<std::net::IpAddr> = dns_pods
            .iter()
            .filter_map(|r| s.pods.get(*r))
            .flat_map(|p| p.ips.iter().copied())
            .collect();
        let state = &self.compiled.state;
        let egress = policy_common::dir::EGRESS;
        let mut blocked: BTreeMap<u32, bool> = BTreeMap::new();
        for (&ep, &f) in &state.endpoints {
            if f & Direction::Egress.isolation_flag() == 0 {
                continue;
            }
            let reaches_dns = if dns_ips.is_empty() {
                state.entries(ep, egress).any(|e| {
                    [Protocol::Udp, Protocol::Tcp]
                        .iter()
                        .any(|p| port_allows(e.ports, p.number(), 53))
                })
            } else {
                dns_ips.iter().any(|ip| {
                    [Protocol::Udp, Protocol::Tcp]
                        .iter()
                        .any(|p| lookup::verdict(state, ep, egress, *ip, p.number(), 53).allowed)
                })
            };
            if !reaches_dns {
                let anything = state.entries(ep, egress).next().is_some();
                blocked.insert(ep, anything);
            }
        }
        let mut out = Vec::new();
        for (r, c) in &self.contrib {
            let hit: Vec<(u32, bool)> = c
                .flags
                .iter()
                .filter(|(_, f)| **f & Direction::Egress.isolation_flag() != 0)
                .filter_map(|(ep, _)| blocked.get(ep).map(|a| (*ep, *a)))
                .collect();
            if hit.is_empty() {
                continue;
            }
            let pods: Vec<&PodRef> = hit
                .iter()
                .filter_map(|(ep, _)| self.members.get(ep))
                .flatten()
                .collect();
            let shown: Vec<String> = pods.iter().take(3).map(|p| p.to_string()).collect();
            let some_egress = hit.iter().any(|(_, a)| *a);
            let target = if dns_pods.is_empty() {
                "any address".to_string()
            } else {
                format!(
                    "the cluster DNS pods ({})",
                    dns_pods
                        .iter()
                        .take(2)
                        .map(|p| p.to_string())
                        .collect::<Vec<_>>()
                        .join(", ")
                )
            };
            out.push(Finding {
                severity: if some_egress { Severity::Error } else { Severity::Warning },
                policy: r.clone(),
                field: "spec.egress".into(),
                message: format!(
                    "{} pod(s) it isolates for egress ({}{}) cannot resolve names: no egress rule of the policies selecting them allows port 53/UDP or 53/TCP to {target}{}",
                    pods.len(),
                    shown.join(", "),
                    if pods.len() > 3 { ", ..." } else { "" },
                    if some_egress { "" } else { " (all their egress is denied)" }
                ),
                fix: "add an egress rule to port 53 UDP and TCP of the DNS pods: `to: [{namespaceSelector: {matchLabels: {kubernetes.io/metadata.name: kube-system}}, podSelector: {matchLabels: {k8s-app: kube-dns}}}]`".into(),
            });
        }
        out
    }
}

fn bits(f: u32) -> impl Iterator<Item = u32> {
    Direction::BOTH
        .into_iter()
        .map(Direction::isolation_flag)
        .filter(move |b| f & b != 0)
}

fn has_rules(p: &Policy) -> bool {
    Direction::BOTH
        .iter()
        .any(|d| p.rules(*d).is_some_and(|r| !r.is_empty()))
}

/// Whether `ports` admits `proto`/`port`.
fn port_allows(ports: PortMatch, proto: u8, port: u16) -> bool {
    match ports {
        PortMatch::AnyProtocol => true,
        PortMatch::AnyPort { proto: p } => p == proto,
        PortMatch::Ports {
            proto: p,
            port: base,
            prefix_len,
        } => p == proto && crate::compile::ports::block_covers(base, prefix_len, port),
    }
}

/// `e` and every entry that allows at least what `e` allows: the same or
/// the ANY identity, with the same or broader ports.
fn broader(e: &PolicyEntry) -> impl Iterator<Item = PolicyEntry> + '_ {
    let ports: Vec<PortMatch> = match e.ports {
        PortMatch::AnyProtocol => vec![PortMatch::AnyProtocol],
        PortMatch::AnyPort { proto } => vec![PortMatch::AnyProtocol, PortMatch::AnyPort { proto }],
        PortMatch::Ports {
            proto,
            port,
            prefix_len,
        } => {
            let mut v = vec![PortMatch::AnyProtocol, PortMatch::AnyPort { proto }];
            for len in 0..=prefix_len {
                let shift = 16 - u32::from(len);
                let base = if shift >= 16 {
                    0
                } else {
                    ((u32::from(port) >> shift) << shift) as u16
                };
                v.push(PortMatch::Ports {
                    proto,
                    port: base,
                    prefix_len: len,
                });
            }
            v
        }
    };
    let ids: Vec<u32> = if e.identity == ANY {
        vec![ANY]
    } else {
        vec![e.identity, ANY]
    };
    ids.into_iter().flat_map(move |identity| {
        ports.clone().into_iter().map(move |ports| PolicyEntry {
            identity,
            ports,
            ..*e
        })
    })
}
