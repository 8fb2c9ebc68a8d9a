//! The incremental compiler the agent keeps: the allocator, the last state
//! and every policy's contribution, so that a change recomputes only the
//! policies it can affect.
//!
//! Each change method returns exactly the operations [`diff`] gives between
//! the previous state and a full compile of the new snapshot with the same
//! allocator (property-tested). Changes it does not handle incrementally —
//! host addresses, policies with ipBlocks, pods while named ports resolve
//! behind ipBlock peers, anything while ClusterNetworkPolicies exist — fall
//! back to a full compile and a diff, which is always correct, only slower.

use std::collections::{BTreeMap, BTreeSet};

use policy_common::identity::HOST;
use policy_common::{Addr, PolicyValue};

use super::{
    build, contribution, mark_isolation, pod_group, policy_errors, Allocator, Compiled,
    Contribution, IdentityDesc, Index, Limits, Local, PodGroup,
};
use crate::model::addr::to_addr;
use crate::model::{Direction, Labels, Peer, PodRef, Policy, PolicyRef, Snapshot};
use crate::state::{diff, MapOp, MapState, PolicyEntry};

/// Incremental compiler state (see the module docs).
#[derive(Clone, Debug, Default)]
pub struct Engine {
    alloc: Allocator,
    limits: Limits,
    index: Index,
    local: Local,
    endpoints: BTreeMap<PodRef, u32>,
    contrib: BTreeMap<PolicyRef, Contribution>,
    /// Policies with an ipBlock peer (their changes recompile fully).
    with_ipblocks: BTreeSet<PolicyRef>,
    /// Some egress rule has named ports and ipBlock peers: pod changes can
    /// add or remove host prefixes, so they recompile fully.
    named_ipblocks: bool,
    /// Policies whose rules can admit pods outside their own namespace
    /// (see [`sees_other_namespaces`]): with the policies of a pod group's
    /// own namespace, the only ones its birth or death can concern.
    wide_peers: BTreeSet<PolicyRef>,
    /// (Entry, rule id) → how many contributions carry it.
    entry_rules: EntryRules,
    current: Compiled,
    /// Some policy is in audit mode: every change compiles fully (the
    /// as-enforced view is derived from the whole enforced state).
    audited: bool,
    /// The allow entries of ClusterIPs judged at the sender in `current`
    /// (`service_flags::POLICY_DIR`; see `compile::services`).
    at_sender: BTreeSet<PolicyEntry>,
    compiled_once: bool,
    /// ClusterNetworkPolicies exist: their tiers fold every policy into
    /// each entry of the endpoints they select, so every change compiles
    /// fully.
    tiered: bool,
}

/// Old values of every key a change touched, to emit exactly `diff`'s ops.
#[derive(Default)]
struct Journal {
    endpoints: BTreeMap<u32, Option<u32>>,
    ipcache: BTreeMap<Addr, Option<u32>>,
    policy: BTreeMap<PolicyEntry, Option<PolicyValue>>,
}

fn has_ipblock(p: &Policy) -> bool {
    Direction::BOTH.iter().any(|d| {
        p.rules(*d)
            .unwrap_or_default()
            .iter()
            .any(|r| r.peers.iter().any(|x| matches!(x, Peer::IpBlock(_))))
    })
}

/// Whether some rule of `policy` can admit pods outside its own namespace:
/// a peer with a namespaceSelector, or an egress rule to anyone on a named
/// port (resolved against every pod identity). A superset of the policies
/// [`may_see`] can accept for a group of another namespace.
fn sees_other_namespaces(policy: &Policy) -> bool {
    Direction::BOTH.iter().any(|d| {
        policy.rules(*d).unwrap_or_default().iter().any(|rule| {
            (*d == Direction::Egress
                && rule.peers.is_empty()
                && rule
                    .ports
                    .iter()
                    .any(|p| matches!(p.port, Some(crate::model::PortRef::Name(_)))))
                || rule.peers.iter().any(|peer| {
                    matches!(
                        peer,
                        Peer::Pods {
                            namespaces: Some(_),
                            ..
                        }
                    )
                })
        })
    })
}

/// Whether `policy`'s rules could admit pods of `group` (so its birth or
/// death changes the policy's entries); `ns_labels` are the labels of the
/// group's namespace.
fn may_see(pref: &PolicyRef, policy: &Policy, group: &PodGroup, ns_labels: &Labels) -> bool {
    if !policy.is_valid() {
        return false;
    }
    Direction::BOTH.iter().any(|d| {
        policy.rules(*d).unwrap_or_default().iter().any(|rule| {
            let named = rule
                .ports
                .iter()
                .any(|p| matches!(p.port, Some(crate::model::PortRef::Name(_))));
            (*d == Direction::Egress && rule.peers.is_empty() && named)
                || rule.peers.iter().any(|peer| match peer {
                    Peer::Pods { namespaces, pods } => {
                        pods.as_ref().is_none_or(|s| s.matches(&group.labels))
                            && match namespaces {
                                None => group.namespace == pref.namespace,
                                Some(sel) => sel.matches(ns_labels),
                            }
                    }
                    Peer::IpBlock(_) => false,
                })
        })
    })
}

/// (Entry, rule id) → how many contributions carry that entry with that
/// rule. Flat keys: one map node holds many entries, where a map per entry
/// cost one small allocation each (half a million in a large view).
type EntryRules = BTreeMap<(PolicyEntry, u32), u32>;

/// One more (`add`) or one less contribution of `rule` to entry `e`.
fn bump(entry_rules: &mut EntryRules, e: &PolicyEntry, rule: u32, add: bool) {
    if add {
        *entry_rules.entry((*e, rule)).or_default() += 1;
        return;
    }
    if let Some(n) = entry_rules.get_mut(&(*e, rule)) {
        *n = n.saturating_sub(1);
        if *n == 0 {
            entry_rules.remove(&(*e, rule));
        }
    }
}

/// The lowest rule id some contribution carries entry `e` with.
fn lowest_rule(entry_rules: &EntryRules, e: &PolicyEntry) -> Option<u32> {
    entry_rules
        .range((*e, 0)..=(*e, u32::MAX))
        .next()
        .map(|((_, rule), _)| *rule)
}

fn count(entry_rules: &mut EntryRules, c: &Contribution) {
    for (e, v) in &c.entries {
        bump(entry_rules, e, v.rule, true);
    }
}

/// The entries of `map` whose key is in namespace `ns` (keys sort by
/// namespace first).
fn in_namespace<'m, V>(
    map: &'m BTreeMap<PodRef, V>,
    ns: &'m str,
) -> impl Iterator<Item = (&'m PodRef, &'m V)> + 'm {
    map.range(PodRef::new(ns, "")..)
        .take_while(move |(r, _)| r.namespace == ns)
}

impl Engine {
    /// Rebuilds the local endpoints of namespace `ns` only (what
    /// `local_endpoints` gives for it).
    fn refresh_local(&mut self, snapshot: &Snapshot, ns: &str) {
        let eps: Vec<(u32, PodRef)> = in_namespace(&self.endpoints, ns)
            .filter(|(r, _)| snapshot.pods.get(*r).is_some_and(|p| !p.host_network))
            .map(|(r, ep)| (*ep, r.clone()))
            .collect();
        if eps.is_empty() {
            self.local.remove(ns);
        } else {
            self.local.insert(ns.to_string(), eps);
        }
    }

    /// A fresh engine (empty state).
    pub fn new() -> Self {
        Self::default()
    }

    /// The last compile.
    pub fn current(&self) -> &Compiled {
        &self.current
    }

    /// Sets the per-policy budgets; they apply from the next full compile
    /// ([`Engine::update`]).
    pub fn set_limits(&mut self, limits: Limits) {
        self.limits = limits;
    }

    /// The per-policy budgets in force.
    pub fn limits(&self) -> &Limits {
        &self.limits
    }

    /// The allocator (a clone compiles with the same numbering).
    pub fn allocator(&self) -> &Allocator {
        &self.alloc
    }

    /// Full compile of `snapshot` for `endpoints` (also the way to change
    /// host addresses); returns the operations that turn the previous state
    /// into the new one.
    pub fn update(&mut self, snapshot: &Snapshot, endpoints: &BTreeMap<PodRef, u32>) -> Vec<MapOp> {
        // Free what the new compile replaces before compiling (only the old
        // map state is needed, for the diff): lower peak memory, and the
        // allocator reuses those many small blocks while compiling instead
        // of sorting them out during the next incremental change.
        self.index = Index::default();
        self.local = Local::new();
        self.contrib = BTreeMap::new();
        self.entry_rules = EntryRules::new();
        self.current.identities = BTreeMap::new();
        self.current.rules = BTreeMap::new();
        self.current.isolation = BTreeMap::new();
        self.current.audit_isolation = BTreeMap::new();
        self.current.errors = Vec::new();
        self.endpoints = endpoints.clone();
        let limits = self.limits;
        let full = build(snapshot, endpoints, &limits, &mut self.alloc);
        self.alloc.sweep();
        let ops = diff(&self.current.state, &full.compiled.state);
        for (r, c) in &full.contrib {
            if !snapshot.policies.get(r).is_some_and(|p| p.audit) {
                count(&mut self.entry_rules, c);
            }
        }
        self.audited = snapshot.policies.values().any(|p| p.audit);
        self.with_ipblocks = snapshot
            .policies
            .iter()
            .filter(|(_, p)| has_ipblock(p))
            .map(|(r, _)| r.clone())
            .collect();
        self.wide_peers = snapshot
            .policies
            .iter()
            .filter(|(_, p)| sees_other_namespaces(p))
            .map(|(r, _)| r.clone())
            .collect();
        self.named_ipblocks = snapshot.policies.values().any(|p| {
            p.is_valid()
                && p.egress.iter().flatten().any(|r| {
                    r.peers.iter().any(|x| matches!(x, Peer::IpBlock(_)))
                        && r.ports
                            .iter()
                            .any(|x| matches!(x.port, Some(crate::model::PortRef::Name(_))))
                })
        });
        self.index = full.index;
        self.local = full.local;
        self.contrib = full.contrib;
        self.current = full.compiled;
        self.at_sender = self
            .current
            .state
            .policy
            .keys()
            .filter(|e| e.dir == policy_common::service_flags::POLICY_DIR)
            .copied()
            .collect();
        self.compiled_once = true;
        self.tiered = !snapshot.cluster_policies.is_empty();
        ops
    }

    /// A ClusterNetworkPolicy was added, changed or removed in `snapshot`.
    pub fn cluster_policy_changed(&mut self, snapshot: &Snapshot) -> Vec<MapOp> {
        self.fallback(snapshot)
    }

    /// A Node (labels, addresses) changed in `snapshot`: only
    /// ClusterNetworkPolicy `nodes` peers read them.
    pub fn node_changed(&mut self, snapshot: &Snapshot) -> Vec<MapOp> {
        if self.compiled_once && !self.tiered {
            return Vec::new();
        }
        self.fallback(snapshot)
    }

    fn fallback(&mut self, snapshot: &Snapshot) -> Vec<MapOp> {
        let eps = self.endpoints.clone();
        self.update(snapshot, &eps)
    }

    fn set_ipcache(&mut self, j: &mut Journal, a: Addr, v: Option<u32>) {
        let st = &mut self.current.state.ipcache;
        j.ipcache.entry(a).or_insert_with(|| st.get(&a).copied());
        match v {
            Some(v) => st.insert(a, v),
            None => st.remove(&a),
        };
    }

    fn set_endpoint(&mut self, j: &mut Journal, ep: u32, v: Option<u32>) {
        let st = &mut self.current.state.endpoints;
        j.endpoints
            .entry(ep)
            .or_insert_with(|| st.get(&ep).copied());
        match v {
            Some(v) => st.insert(ep, v),
            None => st.remove(&ep),
        };
    }

    /// The identity owning `ip` in the ipcache: the pod with the strongest
    /// claim on it ([`crate::model::PodInfo::address_claim`]), the last in
    /// name order among equals, as the full compile picks it.
    fn address_owner(&self, snapshot: &Snapshot, ip: &std::net::IpAddr) -> Option<u32> {
        self.index
            .claimants
            .get(ip)?
            .iter()
            .filter_map(|r| {
                let claim = snapshot.pods.get(r)?.address_claim();
                let (id, _) = self.index.pods.get(r)?;
                Some(((claim, r), *id))
            })
            .max_by(|a, b| a.0.cmp(&b.0))
            .map(|(_, id)| id)
    }

    fn flags_of(&self, ep: u32) -> u32 {
        let Some(sides) = self.current.isolation.get(&ep) else {
            return 0;
        };
        Direction::BOTH
            .iter()
            .zip(sides)
            .filter(|(_, by)| !by.is_empty())
            .fold(0, |f, (d, _)| f | d.isolation_flag())
    }

    /// Recomputes the contributions of `policies` and records every state
    /// change in `j`.
    fn recompute(&mut self, snapshot: &Snapshot, policies: &BTreeSet<PolicyRef>, j: &mut Journal) {
        let mut touched_entries = BTreeSet::new();
        let mut touched_eps = BTreeSet::new();
        for pref in policies {
            let old = self.contrib.remove(pref).unwrap_or_default();
            for (id, _) in &old.rules {
                self.current.rules.remove(id);
            }
            let new = snapshot.policies.get(pref).map(|p| {
                contribution(&self.index, snapshot, pref, p, &self.local, &mut self.alloc)
            });
            for (_, r) in &old.rules {
                if new
                    .as_ref()
                    .is_none_or(|n| !n.rules.iter().any(|(_, x)| x == r))
                {
                    self.alloc.forget_rule(r);
                }
            }
            let empty = Contribution::default();
            let newc = new.as_ref().unwrap_or(&empty);
            // Only what differs between the old and new contribution
            // changes the counts (both entry lists are sorted).
            let (mut a, mut b) = (
                old.entries.iter().peekable(),
                newc.entries.iter().peekable(),
            );
            loop {
                let step = match (a.peek(), b.peek()) {
                    (None, None) => break,
                    (Some(_), None) => std::cmp::Ordering::Less,
                    (None, Some(_)) => std::cmp::Ordering::Greater,
                    (Some(x), Some(y)) => x.0.cmp(&y.0),
                };
                match step {
                    std::cmp::Ordering::Less => {
                        if let Some((e, v)) = a.next() {
                            bump(&mut self.entry_rules, e, v.rule, false);
                            touched_entries.insert(*e);
                        }
                    }
                    std::cmp::Ordering::Greater => {
                        if let Some((e, v)) = b.next() {
                            bump(&mut self.entry_rules, e, v.rule, true);
                            touched_entries.insert(*e);
                        }
                    }
                    std::cmp::Ordering::Equal => {
                        if let (Some((e, v)), Some((_, w))) = (a.next(), b.next()) {
                            if v.rule != w.rule {
                                bump(&mut self.entry_rules, e, v.rule, false);
                                bump(&mut self.entry_rules, e, w.rule, true);
                                touched_entries.insert(*e);
                            }
                        }
                    }
                }
            }
            if old.flags != newc.flags {
                mark_isolation(&mut self.current.isolation, pref, &old.flags, false);
                mark_isolation(&mut self.current.isolation, pref, &newc.flags, true);
                touched_eps.extend(old.flags.keys().copied());
                touched_eps.extend(newc.flags.keys().copied());
            }
            if let Some(new) = new {
                for (id, r) in &new.rules {
                    self.current.rules.insert(*id, r.clone());
                }
                self.contrib.insert(pref.clone(), new);
            }
        }
        for e in touched_entries {
            let v = lowest_rule(&self.entry_rules, &e).map(|rule| PolicyValue { rule, flags: 0 });
            let st = &mut self.current.state.policy;
            j.policy.entry(e).or_insert_with(|| st.get(&e).copied());
            match v {
                Some(v) => st.insert(e, v),
                None => st.remove(&e),
            };
        }
        for ep in touched_eps {
            if self.current.state.endpoints.contains_key(&ep) {
                let f = self.flags_of(ep);
                self.set_endpoint(j, ep, Some(f));
            }
        }
        self.current.errors = policy_errors(snapshot, &self.index, &self.contrib);
    }

    fn refresh_members(&mut self, id: u32) {
        if let (Some(group), Some(members)) =
            (self.index.groups.get(&id), self.index.members.get(&id))
        {
            self.current.identities.insert(
                id,
                IdentityDesc::Pods {
                    group: group.clone(),
                    members: members.iter().cloned().collect(),
                },
            );
        }
    }

    /// `pod` was added, changed (labels, IPs, ports) or removed in
    /// `snapshot`. Returns the map operations.
    pub fn pod_changed(&mut self, snapshot: &Snapshot, pod: &PodRef) -> Vec<MapOp> {
        if self.tiered
            || !self.compiled_once
            || self.audited
            || self.named_ipblocks
            || self.index.has_host_prefixes()
        {
            return self.fallback(snapshot);
        }
        let mut j = Journal::default();
        let mut changed_groups = Vec::new();
        let old = self.index.pods.remove(pod);
        let new_info = snapshot.pods.get(pod).filter(|p| !p.host_network);
        // The addresses whose owner may change.
        let mut touched_ips: BTreeSet<std::net::IpAddr> = BTreeSet::new();
        if let Some((old_id, old_ips)) = old {
            for ip in &old_ips {
                touched_ips.insert(*ip);
                if let Some(c) = self.index.claimants.get_mut(ip) {
                    c.remove(pod);
                    if c.is_empty() {
                        self.index.claimants.remove(ip);
                    }
                }
            }
            let now_empty = self.index.members.get_mut(&old_id).is_some_and(|m| {
                m.remove(pod);
                m.is_empty()
            });
            if now_empty {
                self.index.members.remove(&old_id);
                if let Some(g) = self.index.groups.remove(&old_id) {
                    if let Some(ids) = self.index.by_ns.get_mut(&g.namespace) {
                        ids.remove(&old_id);
                        if ids.is_empty() {
                            self.index.by_ns.remove(&g.namespace);
                        }
                    }
                    self.alloc.forget_pod_group(&g);
                    self.current.identities.remove(&old_id);
                    changed_groups.push(g);
                }
            } else {
                self.refresh_members(old_id);
            }
        }
        if let Some(info) = new_info {
            let group = pod_group(pod, info);
            let id = self.alloc.pod_identity(&group);
            if let std::collections::btree_map::Entry::Vacant(slot) = self.index.groups.entry(id) {
                slot.insert(group.clone());
                self.index
                    .by_ns
                    .entry(pod.namespace.clone())
                    .or_default()
                    .insert(id);
                changed_groups.push(group);
            }
            self.index
                .members
                .entry(id)
                .or_default()
                .insert(pod.clone());
            self.refresh_members(id);
            self.index.pods.insert(pod.clone(), (id, info.ips.clone()));
            for ip in &info.ips {
                touched_ips.insert(*ip);
                self.index
                    .claimants
                    .entry(*ip)
                    .or_default()
                    .insert(pod.clone());
            }
        }
        for ip in &touched_ips {
            let owner = self.address_owner(snapshot, ip);
            self.set_ipcache(&mut j, to_addr(*ip), owner);
        }
        for a in &snapshot.host_addrs {
            self.set_ipcache(&mut j, to_addr(*a), Some(HOST));
        }
        let mut policies = BTreeSet::new();
        if let Some(ep) = self.endpoints.get(pod).copied() {
            self.refresh_local(snapshot, &pod.namespace);
            if new_info.is_some() {
                let f = self.flags_of(ep);
                self.set_endpoint(&mut j, ep, Some(f));
            } else {
                self.set_endpoint(&mut j, ep, None);
            }
            policies
                .extend(in_namespace(&snapshot.policies, &pod.namespace).map(|(r, _)| r.clone()));
            policies.extend(in_namespace(&self.contrib, &pod.namespace).map(|(r, _)| r.clone()));
        }
        for g in &changed_groups {
            let ns_labels = snapshot.namespace_labels(&g.namespace);
            let own = in_namespace(&snapshot.policies, &g.namespace).map(|(r, _)| r);
            for r in own.chain(&self.wide_peers) {
                if let Some(p) = snapshot.policies.get(r) {
                    if may_see(r, p, g, &ns_labels) {
                        policies.insert(r.clone());
                    }
                }
            }
        }
        self.recompute(snapshot, &policies, &mut j);
        self.with_services(snapshot, j)
    }

    /// The local endpoint set became `endpoints` (a CNI ADD, DEL or GC, an
    /// adoption, a lost sandbox collected). Only the endpoints that came,
    /// went or changed id are recompiled: the policies of their namespaces
    /// that select them, old or new. Identities, the ipcache and the CIDR
    /// map do not depend on which pods are local, so they stay as they are.
    pub fn endpoints_changed(
        &mut self,
        snapshot: &Snapshot,
        endpoints: &BTreeMap<PodRef, u32>,
    ) -> Vec<MapOp> {
        if self.tiered || !self.compiled_once || self.audited {
            return self.update(snapshot, endpoints);
        }
        let changed: BTreeSet<PodRef> = self
            .endpoints
            .iter()
            .filter(|(r, ep)| endpoints.get(*r) != Some(ep))
            .chain(
                endpoints
                    .iter()
                    .filter(|(r, ep)| self.endpoints.get(*r) != Some(ep)),
            )
            .map(|(r, _)| r.clone())
            .collect();
        if changed.is_empty() {
            return Vec::new();
        }
        let mut j = Journal::default();
        let mut policies = BTreeSet::new();
        for pod in &changed {
            // What the old endpoint was given goes: the policies whose
            // contribution names it.
            if let Some(ep) = self.endpoints.get(pod).copied() {
                self.set_endpoint(&mut j, ep, None);
                policies.extend(
                    in_namespace(&self.contrib, &pod.namespace)
                        .filter(|(_, c)| c.flags.contains_key(&ep))
                        .map(|(r, _)| r.clone()),
                );
            }
            // The new one gets what the policies selecting its pod give.
            if endpoints.contains_key(pod) {
                if let Some(info) = snapshot.pods.get(pod).filter(|p| !p.host_network) {
                    policies.extend(
                        in_namespace(&snapshot.policies, &pod.namespace)
                            .filter(|(_, p)| {
                                p.pod_selector
                                    .as_ref()
                                    .is_none_or(|s| s.matches(&info.labels))
                            })
                            .map(|(r, _)| r.clone()),
                    );
                }
            }
        }
        self.endpoints = endpoints.clone();
        let namespaces: BTreeSet<&str> = changed.iter().map(|r| r.namespace.as_str()).collect();
        for ns in namespaces {
            self.refresh_local(snapshot, ns);
        }
        let arrived: Vec<u32> = changed
            .iter()
            .filter(|r| snapshot.pods.get(*r).is_some_and(|p| !p.host_network))
            .filter_map(|r| endpoints.get(r).copied())
            .collect();
        for ep in &arrived {
            self.set_endpoint(&mut j, *ep, Some(0));
        }
        self.recompute(snapshot, &policies, &mut j);
        for ep in &arrived {
            let f = self.flags_of(*ep);
            self.set_endpoint(&mut j, *ep, Some(f));
        }
        self.with_services(snapshot, j)
    }

    /// A Service or its Endpoints changed in `snapshot`: only the
    /// ClusterIP set can change (backends are judged as the pods they are).
    pub fn service_changed(&mut self, snapshot: &Snapshot) -> Vec<MapOp> {
        if !self.compiled_once {
            return self.fallback(snapshot);
        }
        self.with_services(snapshot, Journal::default())
    }

    /// The operations for everything `j` recorded plus the changes of the
    /// service-related parts of the state, in [`diff`]'s order (every set
    /// before every removal, services after the other maps in each).
    /// The allow entries of ClusterIPs judged at the sender are computed
    /// from the rest of the state, after it (see `compile::services`).
    fn with_services(&mut self, snapshot: &Snapshot, j: Journal) -> Vec<MapOp> {
        let (mut sets, mut dels) = self.journal_ops(j);
        let mut next = MapState::default();
        super::services::fill(snapshot, &self.endpoints, &mut next);
        crate::state::diff_services(&self.current.state, &next, &mut sets, &mut dels);
        self.current.state.services = next.services;
        self.current.state.local_addrs = next.local_addrs;
        let entries = super::services::sender_entries(snapshot, &self.current.state);
        let policy = &mut self.current.state.policy;
        for (e, v) in &entries {
            if policy.insert(*e, *v) != Some(*v) {
                sets.push(MapOp::SetPolicy(*e, *v));
            }
        }
        for e in std::mem::take(&mut self.at_sender) {
            if !entries.contains_key(&e) && policy.remove(&e).is_some() {
                dels.push(MapOp::DelPolicy(e));
            }
        }
        self.at_sender = entries.into_keys().collect();
        sets.extend(dels);
        sets
    }

    /// Policy `policy` was added, changed or removed in `snapshot`.
    pub fn policy_changed(&mut self, snapshot: &Snapshot, policy: &PolicyRef) -> Vec<MapOp> {
        let now_ipblock = snapshot.policies.get(policy).is_some_and(has_ipblock);
        let now_audited = snapshot.policies.get(policy).is_some_and(|p| p.audit);
        if self.tiered
            || !self.compiled_once
            || self.audited
            || now_audited
            || now_ipblock
            || self.with_ipblocks.contains(policy)
        {
            return self.fallback(snapshot);
        }
        match snapshot.policies.get(policy) {
            Some(p) if sees_other_namespaces(p) => self.wide_peers.insert(policy.clone()),
            _ => self.wide_peers.remove(policy),
        };
        let mut j = Journal::default();
        self.recompute(snapshot, &[policy.clone()].into(), &mut j);
        self.with_services(snapshot, j)
    }

    /// Namespace `name` was added, relabelled or removed in `snapshot`.
    pub fn namespace_changed(&mut self, snapshot: &Snapshot, name: &str) -> Vec<MapOp> {
        if self.tiered || !self.compiled_once || self.audited {
            return self.fallback(snapshot);
        }
        let _ = name;
        let policies: BTreeSet<PolicyRef> = snapshot
            .policies
            .iter()
            .filter(|(_, p)| {
                Direction::BOTH.iter().any(|d| {
                    p.rules(*d).unwrap_or_default().iter().any(|r| {
                        r.peers.iter().any(|x| {
                            matches!(
                                x,
                                Peer::Pods {
                                    namespaces: Some(_),
                                    ..
                                }
                            )
                        })
                    })
                })
            })
            .map(|(r, _)| r.clone())
            .collect();
        let mut j = Journal::default();
        self.recompute(snapshot, &policies, &mut j);
        self.with_services(snapshot, j)
    }

    /// The sets and the removals for everything `j` recorded, each in
    /// [`diff`]'s order.
    fn journal_ops(&self, j: Journal) -> (Vec<MapOp>, Vec<MapOp>) {
        let st = &self.current.state;
        let mut sets = Vec::new();
        let mut dels = Vec::new();
        for (k, old) in j.endpoints {
            match st.endpoints.get(&k) {
                Some(v) if old != Some(*v) => sets.push(MapOp::SetEndpoint(k, *v)),
                None if old.is_some() => dels.push(MapOp::DelEndpoint(k)),
                _ => {}
            }
        }
        for (k, old) in j.ipcache {
            match st.ipcache.get(&k) {
                Some(v) if old != Some(*v) => sets.push(MapOp::SetIpcache(k, *v)),
                None if old.is_some() => dels.push(MapOp::DelIpcache(k)),
                _ => {}
            }
        }
        for (k, old) in j.policy {
            match st.policy.get(&k) {
                Some(v) if old != Some(*v) => sets.push(MapOp::SetPolicy(k, *v)),
                None if old.is_some() => dels.push(MapOp::DelPolicy(k)),
                _ => {}
            }
        }
        (sets, dels)
    }
}
