//! ClusterNetworkPolicy tiers, compiled into the same policy entries the
//! datapath already looks up.
//!
//! A connection is judged, per direction, Admin tier → NetworkPolicy →
//! Baseline tier → allowed. Within a tier the policies go by `priority`
//! (lower first; equal priorities by name, so the answer is stable), then
//! their rules in order; the first rule whose peers and ports match
//! decides: `Accept` allows, `Deny` drops, `Pass` skips the rest of the tier.
//! NetworkPolicy decides for an endpoint it isolates (allowed iff some rule
//! allows), and is skipped otherwise.
//!
//! The datapath stays a fixed number of lookups: for an endpoint and
//! direction some ClusterNetworkPolicy selects, every entry this pass
//! writes holds the *final* answer for its key (the value's
//! `policy_flags::DENY` bit says drop). The datapath takes the first
//! identity that has a matching entry — the address's pod identity, then
//! its longest CIDR prefix — and within it the most specific port key, so:
//!
//! - keys are the union of every tier's port keys for the peer, each
//!   judged by the rules whose ports contain the whole key (port blocks
//!   nest or are disjoint, so that is exact for every port the key is
//!   the most specific match of), plus a key for every protocol that
//!   holds the answer for all other traffic;
//! - a pod identity gets entries only when no address of its pods lies in
//!   any CIDR some policy names (NetworkPolicy ipBlocks or `networks`):
//!   then selectors alone decide. The pods of the other identities get a
//!   host prefix per address (see [`extra_blocks`]), so their CIDR
//!   identity names both the pod (for selectors) and the prefixes that
//!   cover the address (for ipBlocks and `networks`), and is judged there;
//! - every CIDR identity gets entries, so the lookup never reaches the
//!   any-peer identity.
//!
//! `nodes` peers become the host prefixes of the selected Nodes'
//! addresses; `domainNames` match nothing (unsupported, reported). An
//! invalid policy, or one whose prefixes did not fit the CIDR map, denies
//! everything its subject sends or receives in the directions it has rules
//! for, at its own tier and priority (fail closed).

use std::collections::{BTreeMap, BTreeSet};
use std::net::IpAddr;

use ipnet::IpNet;
use policy_common::{policy_flags, PolicyValue};

use super::cidr_classes::ExtraBlocks;
use super::identity::{Allocator, IdentityDesc, PodGroup, RuleRef};
use super::ports::{block_covers, split_range};
use super::{CompileError, Compiled, Index, Local};
use crate::model::cluster_policy::{Action, ClusterPolicy, CnpPeer, CnpPort, CnpRule, Tier};
use crate::model::{
    Direction, IpBlock, Labels, NamespaceInfo, Peer, PodRef, PolicyRef, Protocol, Snapshot,
};
use crate::state::{PolicyEntry, PortMatch};

/// The namespace of the references ClusterNetworkPolicies get among
/// NetworkPolicies' (none has an empty namespace).
const NAMESPACE: &str = "";

/// The reference a ClusterNetworkPolicy's prefixes and rules are kept
/// under.
pub(super) fn cnp_ref(name: &str) -> PolicyRef {
    PolicyRef::new(NAMESPACE, name)
}

/// Index of the rule an invalid policy fails closed with.
pub const FAIL_CLOSED: usize = usize::MAX;

/// One ClusterNetworkPolicy rule, for tools and events.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TierRuleInfo {
    /// The policy's name.
    pub policy: String,
    /// Its tier.
    pub tier: Tier,
    /// Its priority.
    pub priority: u16,
    /// The rule's direction.
    pub dir: Direction,
    /// The rule's index ([`FAIL_CLOSED`] for an invalid policy's deny).
    pub index: usize,
    /// The rule's `name`.
    pub name: String,
    /// Its action.
    pub action: Action,
}

impl std::fmt::Display for TierRuleInfo {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let what = match self.action {
            Action::Accept => "allowed",
            Action::Deny => "Deny",
            Action::Pass => "Pass",
        };
        if self.index == FAIL_CLOSED {
            return write!(
                f,
                "[{}] Deny by cnp/{}: invalid, fails closed",
                self.tier.as_str(),
                self.policy
            );
        }
        write!(f, "[{}] {what} by cnp/{}", self.tier.as_str(), self.policy)?;
        if self.name.is_empty() {
            write!(f, " spec.{}[{}]", self.dir.field(), self.index)
        } else {
            write!(f, " rule {:?}", self.name)
        }
    }
}

fn rule_ref(name: &str, dir: Direction, index: usize) -> RuleRef {
    RuleRef {
        policy: cnp_ref(name),
        dir,
        index,
    }
}

fn ns_labels(snapshot: &Snapshot, ns: &str) -> Labels {
    snapshot
        .namespaces
        .get(ns)
        .map(|n| n.labels.clone())
        .unwrap_or_else(|| NamespaceInfo::implicit(ns).labels)
}

/// The prefixes ClusterNetworkPolicies add to the CIDR map: their
/// `networks` and selected nodes' addresses (one group per rule), and a
/// host prefix for every address of the pods of `covered` identities.
pub(super) fn extra_blocks(snapshot: &Snapshot, covered_ips: Vec<IpAddr>) -> Vec<ExtraBlocks> {
    let mut out = Vec::new();
    for (name, p) in &snapshot.cluster_policies {
        if !p.is_valid() {
            continue;
        }
        let mut rules = Vec::new();
        for dir in Direction::BOTH {
            for (index, rule) in p.rules(dir).iter().enumerate() {
                let blocks: Vec<IpBlock> = rule_nets(snapshot, rule)
                    .into_iter()
                    .map(|cidr| IpBlock {
                        cidr,
                        except: Vec::new(),
                    })
                    .collect();
                if !blocks.is_empty() {
                    rules.push((rule_ref(name, dir, index), blocks));
                }
            }
        }
        if !rules.is_empty() {
            out.push(ExtraBlocks {
                pref: cnp_ref(name),
                rules,
                hosts: Vec::new(),
            });
        }
    }
    if !covered_ips.is_empty() {
        out.push(ExtraBlocks {
            pref: cnp_ref(""),
            rules: Vec::new(),
            hosts: covered_ips.into_iter().map(IpNet::from).collect(),
        });
    }
    out
}

/// The prefixes a rule's `networks` and `nodes` peers name.
fn rule_nets(snapshot: &Snapshot, rule: &CnpRule) -> Vec<IpNet> {
    let mut nets = Vec::new();
    for peer in &rule.peers {
        match peer {
            CnpPeer::Networks(n) => nets.extend(n.iter().copied()),
            CnpPeer::Nodes(sel) => nets.extend(
                snapshot
                    .nodes
                    .values()
                    .filter(|n| sel.matches(&n.labels))
                    .flat_map(|n| n.addrs.iter().map(|a| IpNet::from(*a))),
            ),
            CnpPeer::Pods(_) | CnpPeer::DomainNames(_) => {}
        }
    }
    nets
}

/// Every CIDR some policy names (a pod address in one is judged on its
/// host prefix).
pub(super) fn covering_nets(snapshot: &Snapshot) -> Vec<IpNet> {
    if snapshot.cluster_policies.is_empty() {
        return Vec::new();
    }
    let mut nets: BTreeSet<IpNet> = BTreeSet::new();
    for p in snapshot.policies.values().filter(|p| p.is_valid()) {
        for dir in Direction::BOTH {
            for rule in p.rules(dir).into_iter().flatten() {
                for peer in &rule.peers {
                    if let Peer::IpBlock(b) = peer {
                        nets.insert(b.cidr);
                    }
                }
            }
        }
    }
    for p in snapshot.cluster_policies.values().filter(|p| p.is_valid()) {
        for dir in Direction::BOTH {
            for rule in p.rules(dir) {
                nets.extend(rule_nets(snapshot, rule));
            }
        }
    }
    nets.into_iter().collect()
}

/// One rule in tier order.
struct TierRule<'a> {
    policy: &'a ClusterPolicy,
    /// `None`: the fail-closed deny of an invalid policy.
    rule: Option<&'a CnpRule>,
    rref: RuleRef,
    id: u32,
}

impl TierRule<'_> {
    fn action(&self) -> Action {
        self.rule.map_or(Action::Deny, |r| r.action)
    }
}

/// What the peer of one identity is.
struct Level<'a> {
    id: u32,
    /// The pod behind it (selectors, named ports).
    pod: Option<(&'a PodGroup, Labels)>,
    /// The CIDR identity (networks, nodes).
    cidr: Option<u32>,
    /// Identities whose NetworkPolicy entries apply.
    np_ids: Vec<u32>,
}

/// Whether port key `outer` contains all of `inner`.
fn contains(outer: &PortMatch, inner: &PortMatch) -> bool {
    match (outer, inner) {
        (PortMatch::AnyProtocol, _) => true,
        (PortMatch::AnyPort { proto }, PortMatch::AnyPort { proto: p })
        | (PortMatch::AnyPort { proto }, PortMatch::Ports { proto: p, .. }) => proto == p,
        (
            PortMatch::Ports {
                proto,
                port,
                prefix_len,
            },
            PortMatch::Ports {
                proto: p,
                port: q,
                prefix_len: l,
            },
        ) => proto == p && l >= prefix_len && block_covers(*port, *prefix_len, *q),
        _ => false,
    }
}

/// A rule's port keys towards a destination with `named` ports (`None`:
/// the destination has no named ports).
fn rule_ports(rule: &CnpRule, named: &[(String, Protocol, u16)]) -> Vec<PortMatch> {
    if rule.ports.is_empty() {
        return vec![PortMatch::AnyProtocol];
    }
    let mut out = Vec::new();
    for p in &rule.ports {
        match p {
            CnpPort::Range {
                protocol,
                start,
                end,
            } => out.extend(
                split_range(*start, *end)
                    .into_iter()
                    .map(|(port, prefix_len)| PortMatch::Ports {
                        proto: protocol.number(),
                        port,
                        prefix_len,
                    }),
            ),
            CnpPort::Named(name) => out.extend(named.iter().filter(|(n, _, _)| n == name).map(
                |(_, proto, port)| PortMatch::Ports {
                    proto: proto.number(),
                    port: *port,
                    prefix_len: 16,
                },
            )),
        }
    }
    out
}

/// Sets isolation and writes the tiered entries of every local endpoint a
/// ClusterNetworkPolicy selects (see the module docs).
pub(super) fn apply(
    snapshot: &Snapshot,
    ix: &Index,
    local: &Local,
    alloc: &mut Allocator,
    out: &mut Compiled,
) {
    if snapshot.cluster_policies.is_empty() {
        return;
    }
    // The prefixes did not all fit: nothing tiered can be trusted.
    let unfit: Vec<&PolicyRef> = ix
        .cidrs
        .excluded
        .keys()
        .filter(|r| r.namespace == NAMESPACE)
        .collect();
    let mut policies: Vec<&ClusterPolicy> = snapshot.cluster_policies.values().collect();
    policies.sort_by_key(|p| (p.tier, p.priority, p.name()));
    let mut rules: [Vec<TierRule>; 2] = [Vec::new(), Vec::new()];
    for p in &policies {
        let broken = !p.is_valid() || ix.cidrs.excluded.contains_key(&cnp_ref(p.name()));
        for dir in Direction::BOTH {
            let list = &mut rules[usize::from(dir.dir())];
            if broken {
                if p.fail_dirs().contains(&dir) {
                    let rref = rule_ref(p.name(), dir, FAIL_CLOSED);
                    let id = alloc.rule(&rref);
                    list.push(TierRule {
                        policy: p,
                        rule: None,
                        rref,
                        id,
                    });
                }
                continue;
            }
            for (index, rule) in p.rules(dir).iter().enumerate() {
                let rref = rule_ref(p.name(), dir, index);
                let id = alloc.rule(&rref);
                list.push(TierRule {
                    policy: p,
                    rule: Some(rule),
                    rref,
                    id,
                });
            }
        }
    }
    for list in &rules {
        for r in list {
            out.cnp_rules.insert(
                r.id,
                TierRuleInfo {
                    policy: r.policy.name().to_string(),
                    tier: r.policy.tier,
                    priority: r.policy.priority,
                    dir: r.rref.dir,
                    index: r.rref.index,
                    name: r.rule.map(|x| x.name.clone()).unwrap_or_default(),
                    action: r.action(),
                },
            );
        }
    }
    for (name, p) in &snapshot.cluster_policies {
        for issue in &p.issues {
            out.errors.push(CompileError::InvalidClusterPolicy {
                name: name.clone(),
                field: issue.field.clone(),
                message: issue.message.clone(),
            });
        }
    }
    for r in &unfit {
        if let CompileError::OverBudget { message, .. } = ix.cidrs.excluded[*r].error(r) {
            out.errors.push(CompileError::ClusterPolicyOverBudget {
                name: r.name.clone(),
                message,
            });
        }
    }
    let levels = levels(snapshot, ix, out);
    for (ns, eps) in local {
        let nsl = ns_labels(snapshot, ns);
        for (ep, pref) in eps {
            let Some(pod) = snapshot.pods.get(pref) else {
                continue;
            };
            for dir in Direction::BOTH {
                let mine: Vec<&TierRule> = rules[usize::from(dir.dir())]
                    .iter()
                    .filter(|r| {
                        r.policy
                            .subject
                            .as_ref()
                            .is_some_and(|s| s.matches(&nsl, &pod.labels))
                    })
                    .collect();
                if mine.is_empty() {
                    continue;
                }
                let flag = dir.isolation_flag();
                let ep_flags = out.state.endpoints.entry(*ep).or_default();
                let np_isolated = *ep_flags & flag != 0;
                *ep_flags |= flag;
                let np = take_entries(&mut out.state.policy, *ep, dir.dir());
                if !unfit.is_empty() {
                    continue;
                }
                let own_named: Vec<(String, Protocol, u16)> = pod
                    .ports
                    .iter()
                    .filter_map(|p| p.name.clone().map(|n| (n, p.protocol, p.port)))
                    .collect();
                for level in &levels {
                    let named: Vec<(String, Protocol, u16)> = match dir {
                        Direction::Ingress => own_named.clone(),
                        Direction::Egress => level
                            .pod
                            .as_ref()
                            .map(|(g, _)| g.named_ports.iter().cloned().collect())
                            .unwrap_or_default(),
                    };
                    let ctx = Judge {
                        ix,
                        level,
                        named: &named,
                        np_isolated,
                        np: &np,
                    };
                    for (ports, value) in ctx.entries(&mine) {
                        out.state.policy.insert(
                            PolicyEntry {
                                ep_id: *ep,
                                dir: dir.dir(),
                                identity: level.id,
                                ports,
                            },
                            value,
                        );
                    }
                }
            }
        }
    }
}

/// Removes and returns the NetworkPolicy entries of one endpoint and
/// direction: identity → (ports, rule).
fn take_entries(
    policy: &mut BTreeMap<PolicyEntry, PolicyValue>,
    ep: u32,
    dir: u8,
) -> BTreeMap<u32, Vec<(PortMatch, u32)>> {
    let lo = PolicyEntry {
        ep_id: ep,
        dir,
        identity: 0,
        ports: PortMatch::AnyProtocol,
    };
    let keys: Vec<PolicyEntry> = policy
        .range(lo..)
        .take_while(|(e, _)| e.ep_id == ep && e.dir == dir)
        .map(|(e, _)| *e)
        .collect();
    let mut out: BTreeMap<u32, Vec<(PortMatch, u32)>> = BTreeMap::new();
    for k in keys {
        if let Some(v) = policy.remove(&k) {
            out.entry(k.identity).or_default().push((k.ports, v.rule));
        }
    }
    out
}

/// The identities a tiered endpoint gets entries for: pod identities whose
/// addresses no policy CIDR covers, and every CIDR identity.
fn levels<'a>(snapshot: &Snapshot, ix: &'a Index, out: &Compiled) -> Vec<Level<'a>> {
    let mut levels = Vec::new();
    for (id, group) in &ix.groups {
        if ix.covered.contains(id) {
            continue;
        }
        levels.push(Level {
            id: *id,
            pod: Some((group, ns_labels(snapshot, &group.namespace))),
            cidr: None,
            np_ids: vec![*id, policy_common::identity::ANY],
        });
    }
    for (id, desc) in &out.identities {
        if !matches!(desc, IdentityDesc::Cidrs(_)) {
            continue;
        }
        let host: Option<(u32, &PodGroup)> = ix
            .cidrs
            .host_pods
            .get(id)
            .and_then(|r: &PodRef| ix.pods.get(r))
            .and_then(|(pid, _)| ix.groups.get(pid).map(|g| (*pid, g)));
        let mut np_ids = vec![*id];
        if let Some((pid, _)) = host {
            np_ids.push(pid);
        }
        np_ids.push(policy_common::identity::ANY);
        levels.push(Level {
            id: *id,
            pod: host.map(|(_, g)| (g, ns_labels(snapshot, &g.namespace))),
            cidr: Some(*id),
            np_ids,
        });
    }
    levels
}

/// Judging the keys of one level for one endpoint and direction.
struct Judge<'a> {
    ix: &'a Index,
    level: &'a Level<'a>,
    named: &'a [(String, Protocol, u16)],
    np_isolated: bool,
    np: &'a BTreeMap<u32, Vec<(PortMatch, u32)>>,
}

impl Judge<'_> {
    fn peer_matches(&self, r: &TierRule) -> bool {
        let Some(rule) = r.rule else {
            return true;
        };
        rule.peers.iter().any(|p| match p {
            CnpPeer::Pods(sel) => self
                .level
                .pod
                .as_ref()
                .is_some_and(|(g, nsl)| sel.matches(nsl, &g.labels)),
            CnpPeer::Networks(_) | CnpPeer::Nodes(_) => self.level.cidr.is_some_and(|c| {
                self.ix
                    .cidrs
                    .by_rule
                    .get(&r.rref)
                    .is_some_and(|ids| ids.binary_search(&c).is_ok())
            }),
            CnpPeer::DomainNames(_) => false,
        })
    }

    fn np_entries(&self) -> impl Iterator<Item = &(PortMatch, u32)> {
        self.level
            .np_ids
            .iter()
            .filter_map(|id| self.np.get(id))
            .flatten()
    }

    /// The entries of this level: every key of every tier, each with its
    /// final answer.
    fn entries(&self, rules: &[&TierRule]) -> Vec<(PortMatch, PolicyValue)> {
        let matching: Vec<(&TierRule, Vec<PortMatch>)> = rules
            .iter()
            .filter(|r| self.peer_matches(r))
            .map(|r| {
                let ports = match r.rule {
                    Some(rule) => rule_ports(rule, self.named),
                    None => vec![PortMatch::AnyProtocol],
                };
                (*r, ports)
            })
            .collect();
        let mut keys: BTreeSet<PortMatch> = [PortMatch::AnyProtocol].into();
        for (_, ports) in &matching {
            keys.extend(ports.iter().copied());
        }
        if self.np_isolated {
            keys.extend(self.np_entries().map(|(p, _)| *p));
        }
        keys.into_iter()
            .map(|k| (k, self.judge(&matching, &k)))
            .collect()
    }

    fn judge(&self, matching: &[(&TierRule, Vec<PortMatch>)], key: &PortMatch) -> PolicyValue {
        let allow = |rule| PolicyValue { rule, flags: 0 };
        let deny = |rule| PolicyValue {
            rule,
            flags: policy_flags::DENY,
        };
        let hits = |tier: Tier| {
            matching
                .iter()
                .filter(move |(r, _)| r.policy.tier == tier)
                .filter(|(_, ports)| ports.iter().any(|p| contains(p, key)))
        };
        if let Some((r, _)) = hits(Tier::Admin).next() {
            match r.action() {
                Action::Accept => return allow(r.id),
                Action::Deny => return deny(r.id),
                Action::Pass => {}
            }
        }
        if self.np_isolated {
            // The lowest rule id that allows, as without tiers.
            return match self
                .np_entries()
                .filter(|(p, _)| contains(p, key))
                .map(|(_, rule)| *rule)
                .min()
            {
                Some(rule) => allow(rule),
                None => deny(0),
            };
        }
        if let Some((r, _)) = hits(Tier::Baseline).next() {
            return match r.action() {
                Action::Accept | Action::Pass => allow(r.id),
                Action::Deny => deny(r.id),
            };
        }
        allow(0)
    }
}

#[cfg(test)]
mod tests;
