//! The compiler: a pure function from a cluster [`Snapshot`] (and which pods
//! are local endpoints) to the [`MapState`] the datapath reads.
//!
//! - Pods are grouped into identities by what selectors can see
//!   (namespace, labels, named ports); the ipcache maps each pod IP to its
//!   identity and the node's own addresses to `identity::HOST`.
//! - Every distinct ipBlock prefix (cidrs and excepts), plus the IPv4 and
//!   IPv6 world prefixes, gets an identity in the CIDR LPM map. An ipBlock
//!   allows prefix identity P iff P is in the same family as its cidr C,
//!   P ⊆ C and P is inside none of the excepts: exact, because the datapath
//!   takes the longest matching prefix.
//! - Each rule becomes allow entries (endpoint, direction, peer identity,
//!   ports); named ports are resolved per destination pod; `endPort` ranges
//!   become aligned port blocks.
//! - Invalid policies still isolate the pods they select but allow nothing
//!   (fail closed); their problems come back as [`CompileError`]s.
//! - So do policies over their budget ([`Limits`]): more allow entries
//!   than [`Limits::policy_entries`], ipBlocks that split the addresses
//!   into more classes than that, or prefixes that no longer fit the CIDR
//!   map's room after older policies'. Compile work and memory follow
//!   the state produced; a policy that would produce too much is stopped
//!   at its budget and fails closed for its own pods only.

pub mod audit;
mod cidr_classes;
mod engine;
pub mod identity;
pub mod ports;
pub mod services;
pub mod tiers;

use std::collections::{BTreeMap, BTreeSet};

use ipnet::IpNet;
use policy_common::identity::{ANY, HOST};
use policy_common::PolicyValue;

use crate::model::addr::{net_within, to_addr};
use crate::model::{
    Direction, Peer, PodInfo, PodRef, Policy, PolicyRef, PortRef, PortSpec, Protocol, Rule,
    Snapshot,
};
use crate::state::{MapState, PolicyEntry, PortMatch};

pub use engine::Engine;
pub use identity::{Allocator, IdentityDesc, PodGroup, RuleRef};

/// A problem found while compiling. The compile itself never fails.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum CompileError {
    /// A policy is invalid: it isolates its pods but allows nothing.
    #[error("NetworkPolicy {policy}: {field}: {message}")]
    InvalidPolicy {
        /// The policy.
        policy: PolicyRef,
        /// Path of the offending field.
        field: String,
        /// What is wrong.
        message: String,
    },
    /// A ClusterNetworkPolicy is invalid: it denies its subject's traffic
    /// in the directions it has rules for.
    #[error("ClusterNetworkPolicy {name}: {field}: {message}")]
    InvalidClusterPolicy {
        /// The policy's name.
        name: String,
        /// Path of the offending field.
        field: String,
        /// What is wrong.
        message: String,
    },
    /// The prefixes of ClusterNetworkPolicies did not fit the CIDR map:
    /// every endpoint they select is isolated and allows nothing.
    #[error("ClusterNetworkPolicy prefixes ({name}): over budget, every endpoint a ClusterNetworkPolicy selects fails closed: {message}")]
    ClusterPolicyOverBudget {
        /// The policy's name (empty: the host prefixes of pods).
        name: String,
        /// Which budget, and by how much.
        message: String,
    },
    /// A policy is over its budget ([`Limits`]): like an invalid one, it
    /// isolates its pods but allows nothing.
    #[error("NetworkPolicy {policy}: over budget, fails closed (its pods are isolated and it allows nothing): {message}")]
    OverBudget {
        /// The policy.
        policy: PolicyRef,
        /// Which budget, and by how much.
        message: String,
    },
}

impl CompileError {
    /// The policy the problem is about.
    pub fn policy(&self) -> &PolicyRef {
        match self {
            CompileError::InvalidPolicy { policy, .. }
            | CompileError::OverBudget { policy, .. } => policy,
            CompileError::InvalidClusterPolicy { .. }
            | CompileError::ClusterPolicyOverBudget { .. } => &NO_POLICY,
        }
    }
}

/// What [`CompileError::policy`] names for ClusterNetworkPolicy problems.
static NO_POLICY: PolicyRef = PolicyRef {
    namespace: String::new(),
    name: String::new(),
};

/// Per-policy allow entries (and ipBlock address classes) a policy may
/// produce by default: half the default policy map.
pub const DEFAULT_POLICY_ENTRIES: usize = 65_536;

/// Bounds on what one policy may cost; a policy over them fails closed.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Limits {
    /// Allow entries one policy may produce on this node, and (rule group,
    /// address class) pairs its ipBlocks may form.
    pub policy_entries: usize,
    /// Room in the CIDR map (per generation), given out to policies oldest
    /// first; `None`: unbounded.
    pub cidr_prefixes: Option<usize>,
}

impl Default for Limits {
    fn default() -> Self {
        Self {
            policy_entries: DEFAULT_POLICY_ENTRIES,
            cidr_prefixes: None,
        }
    }
}

/// The result of a compile: the state plus what explains it.
#[derive(Clone, Debug, Default)]
pub struct Compiled {
    /// What the maps must hold.
    pub state: MapState,
    /// Problems found (invalid policies, which fail closed).
    pub errors: Vec<CompileError>,
    /// Identity number → what it stands for.
    pub identities: BTreeMap<u32, IdentityDesc>,
    /// `PolicyValue::rule` → which policy rule.
    pub rules: BTreeMap<u32, RuleRef>,
    /// Endpoint → the policies isolating it, `[ingress, egress]` (in
    /// [`Direction::BOTH`] order): the policies a drop for lack of a rule
    /// is reported against. Endpoints no policy isolates have no entry.
    pub isolation: BTreeMap<u32, [BTreeSet<PolicyRef>; 2]>,
    /// As [`Compiled::isolation`], for the policies in audit mode (which
    /// the enforced state leaves out; see [`audit`]): the policies a
    /// would-drop is reported against.
    pub audit_isolation: BTreeMap<u32, [BTreeSet<PolicyRef>; 2]>,
    /// `PolicyValue::rule` → which ClusterNetworkPolicy rule.
    pub cnp_rules: BTreeMap<u32, tiers::TierRuleInfo>,
}

impl Compiled {
    /// The policies isolating endpoint `ep` in `dir` (empty: not isolated).
    pub fn isolating(&self, ep: u32, dir: Direction) -> impl Iterator<Item = &PolicyRef> + '_ {
        self.isolation
            .get(&ep)
            .map(|sides| &sides[dir_index(dir)])
            .into_iter()
            .flatten()
    }

    /// The policies in audit mode isolating endpoint `ep` in `dir`.
    pub fn audit_isolating(
        &self,
        ep: u32,
        dir: Direction,
    ) -> impl Iterator<Item = &PolicyRef> + '_ {
        self.audit_isolation
            .get(&ep)
            .map(|sides| &sides[dir_index(dir)])
            .into_iter()
            .flatten()
    }
}

/// Index of `dir` in [`Direction::BOTH`] (and in [`Compiled::isolation`]).
pub fn dir_index(dir: Direction) -> usize {
    match dir {
        Direction::Ingress => 0,
        Direction::Egress => 1,
    }
}

/// Adds (`add`) or takes off policy `pref`'s isolation of the endpoints in
/// `flags` (endpoint → isolation bits) in `isolation`.
fn mark_isolation(
    isolation: &mut BTreeMap<u32, [BTreeSet<PolicyRef>; 2]>,
    pref: &PolicyRef,
    flags: &BTreeMap<u32, u32>,
    add: bool,
) {
    for (ep, f) in flags {
        let sides = isolation.entry(*ep).or_default();
        for dir in Direction::BOTH {
            if f & dir.isolation_flag() != 0 {
                let side = &mut sides[dir_index(dir)];
                if add {
                    side.insert(pref.clone());
                } else {
                    side.remove(pref);
                }
            }
        }
        if sides.iter().all(BTreeSet::is_empty) {
            isolation.remove(ep);
        }
    }
}

/// Every non-hostNetwork pod as an endpoint, numbered 1, 2, ... in name
/// order (what `simulate` uses).
pub fn all_endpoints(snapshot: &Snapshot) -> BTreeMap<PodRef, u32> {
    snapshot
        .pods
        .iter()
        .filter(|(_, p)| !p.host_network)
        .zip(1u32..)
        .map(|((r, _), id)| (r.clone(), id))
        .collect()
}

/// Compiles `snapshot` for the local `endpoints` (pod → endpoint id),
/// numbering identities and rules with `alloc`.
pub fn compile(
    snapshot: &Snapshot,
    endpoints: &BTreeMap<PodRef, u32>,
    alloc: &mut Allocator,
) -> Compiled {
    compile_with_limits(snapshot, endpoints, &Limits::default(), alloc)
}

/// [`compile`] with explicit per-policy [`Limits`].
pub fn compile_with_limits(
    snapshot: &Snapshot,
    endpoints: &BTreeMap<PodRef, u32>,
    limits: &Limits,
    alloc: &mut Allocator,
) -> Compiled {
    let full = build(snapshot, endpoints, limits, alloc);
    alloc.sweep();
    full.compiled
}

/// What one policy adds to a compile.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct PolicyContribution {
    /// Endpoint → the isolation bits the policy sets on it.
    pub flags: BTreeMap<u32, u32>,
    /// The allow entries its rules produce, sorted, each once.
    pub entries: Vec<PolicyEntry>,
}

/// [`compile`], also returning what each policy contributes (so questions
/// about one policy, such as lint's "does it add anything", need no
/// compile of their own).
pub fn compile_with_contributions(
    snapshot: &Snapshot,
    endpoints: &BTreeMap<PodRef, u32>,
    alloc: &mut Allocator,
) -> (Compiled, BTreeMap<PolicyRef, PolicyContribution>) {
    let full = build(snapshot, endpoints, &Limits::default(), alloc);
    alloc.sweep();
    let contrib = full
        .contrib
        .into_iter()
        .map(|(r, c)| {
            let entries = c.entries.into_iter().map(|(e, _)| e).collect();
            (
                r,
                PolicyContribution {
                    flags: c.flags,
                    entries,
                },
            )
        })
        .collect();
    (full.compiled, contrib)
}

/// Local endpoints by namespace: (endpoint id, pod).
type Local = BTreeMap<String, Vec<(u32, PodRef)>>;

/// What one policy adds to the state.
#[derive(Clone, Debug, Default)]
struct Contribution {
    /// Endpoint → isolation bits this policy sets.
    flags: BTreeMap<u32, u32>,
    /// Allow entries (with this policy's lowest rule id), sorted by entry,
    /// each entry once.
    entries: Vec<(PolicyEntry, PolicyValue)>,
    /// Rule ids this policy's rules carry.
    rules: Vec<(u32, RuleRef)>,
    /// Set when its entries went over [`Limits::policy_entries`] (then it
    /// has none).
    over_budget: Option<CompileError>,
}

/// A full compile, with the intermediate results the incremental
/// [`Engine`] keeps.
struct Full {
    compiled: Compiled,
    index: Index,
    local: Local,
    contrib: BTreeMap<PolicyRef, Contribution>,
}

fn local_endpoints(snapshot: &Snapshot, endpoints: &BTreeMap<PodRef, u32>) -> Local {
    let mut local = Local::new();
    for (r, ep) in endpoints {
        if snapshot.pods.get(r).is_some_and(|p| !p.host_network) {
            local
                .entry(r.namespace.clone())
                .or_default()
                .push((*ep, r.clone()));
        }
    }
    local
}

/// Every problem, policy by policy: its validation issues, else why it
/// is over budget.
fn policy_errors(
    snapshot: &Snapshot,
    ix: &Index,
    contrib: &BTreeMap<PolicyRef, Contribution>,
) -> Vec<CompileError> {
    let mut errors = Vec::new();
    for (pref, policy) in &snapshot.policies {
        for issue in &policy.issues {
            errors.push(CompileError::InvalidPolicy {
                policy: pref.clone(),
                field: issue.field.clone(),
                message: issue.message.clone(),
            });
        }
        if let Some(x) = ix.cidrs.excluded.get(pref) {
            errors.push(x.error(pref));
        } else if let Some(e) = contrib.get(pref).and_then(|c| c.over_budget.clone()) {
            errors.push(e);
        }
    }
    errors
}

fn build(
    snapshot: &Snapshot,
    endpoints: &BTreeMap<PodRef, u32>,
    limits: &Limits,
    alloc: &mut Allocator,
) -> Full {
    let mut out = Compiled::default();
    let ix = Index::build(snapshot, limits, alloc, &mut out);
    let local = local_endpoints(snapshot, endpoints);
    for eps in local.values() {
        for (ep, _) in eps {
            out.state.endpoints.insert(*ep, 0);
        }
    }
    let mut contrib = BTreeMap::new();
    let mut all: Vec<(PolicyEntry, PolicyValue)> = Vec::new();
    let mut audited: Vec<(PolicyEntry, PolicyValue)> = Vec::new();
    for (pref, policy) in &snapshot.policies {
        let c = contribution(&ix, snapshot, pref, policy, &local, alloc);
        if policy.audit {
            // Left out of the enforced state (see `audit`).
            mark_isolation(&mut out.audit_isolation, pref, &c.flags, true);
            audited.extend(c.entries.iter().copied());
        } else {
            for (ep, f) in &c.flags {
                if let Some(flags) = out.state.endpoints.get_mut(ep) {
                    *flags |= f;
                }
            }
            mark_isolation(&mut out.isolation, pref, &c.flags, true);
            all.extend(c.entries.iter().copied());
        }
        for (id, r) in &c.rules {
            out.rules.insert(*id, r.clone());
        }
        contrib.insert(pref.clone(), c);
    }
    // One entry per key with the lowest rule id; building the map from a
    // sorted sequence is linear.
    sort_min_rule(&mut all);
    let view = audit::view(&mut out, &all, audited);
    all.extend(view);
    out.state.policy = all.into_iter().collect();
    out.errors = policy_errors(snapshot, &ix, &contrib);
    tiers::apply(snapshot, &ix, &local, alloc, &mut out);
    services::fill(snapshot, endpoints, &mut out.state);
    let at_sender = services::sender_entries(snapshot, &out.state);
    out.state.policy.extend(at_sender);
    Full {
        compiled: out,
        index: ix,
        local,
        contrib,
    }
}

/// Sorts entries and keeps, for each key, the one with the lowest rule id.
fn sort_min_rule(entries: &mut Vec<(PolicyEntry, PolicyValue)>) {
    entries.sort_unstable_by(|a, b| a.0.cmp(&b.0).then(a.1.rule.cmp(&b.1.rule)));
    entries.dedup_by(|later, first| later.0 == first.0);
}

/// Everything one policy adds: isolation of the pods it selects, and (if
/// valid) its rules' allow entries.
fn contribution(
    ix: &Index,
    snapshot: &Snapshot,
    pref: &PolicyRef,
    policy: &Policy,
    local: &Local,
    alloc: &mut Allocator,
) -> Contribution {
    let mut c = Contribution::default();
    let selected: Vec<(u32, &PodInfo)> = local
        .get(pref.namespace.as_str())
        .into_iter()
        .flatten()
        .filter_map(|(ep, r)| snapshot.pods.get(r).map(|p| (*ep, p)))
        .filter(|(_, pod)| {
            policy
                .pod_selector
                .as_ref()
                .is_none_or(|s| s.matches(&pod.labels))
        })
        .collect();
    for dir in Direction::BOTH {
        let Some(rules) = policy.rules(dir) else {
            continue;
        };
        for (ep, _) in &selected {
            *c.flags.entry(*ep).or_default() |= dir.isolation_flag();
        }
        if !policy.is_valid() || ix.cidrs.excluded.contains_key(pref) {
            continue;
        }
        for (index, rule) in rules.iter().enumerate() {
            let rref = RuleRef {
                policy: pref.clone(),
                dir,
                index,
            };
            let rule_id = alloc.rule(&rref);
            c.rules.push((rule_id, rref));
            if !selected.is_empty() && c.over_budget.is_none() {
                let fits = ix.add_rule(
                    snapshot,
                    &c.rules[c.rules.len() - 1].1,
                    rule,
                    rule_id,
                    &selected,
                    &mut c.entries,
                );
                if !fits {
                    c.entries = Vec::new();
                    c.over_budget = Some(CompileError::OverBudget {
                        policy: pref.clone(),
                        message: format!(
                            "it gives its {} local pod(s) more than {} allow entries, the \
                             per-policy budget",
                            selected.len(),
                            ix.limits.policy_entries
                        ),
                    });
                }
            }
        }
    }
    sort_min_rule(&mut c.entries);
    c
}

/// Peers a rule admits.
enum Peers {
    /// Everyone (`from`/`to` empty).
    Any,
    /// These identities.
    Ids(Vec<u32>),
}

/// Identities indexed for rule resolution (owned, so the incremental
/// [`Engine`] can keep and update it).
#[derive(Clone, Debug, Default)]
struct Index {
    /// Namespace → pod identities in it.
    by_ns: BTreeMap<String, BTreeSet<u32>>,
    /// Pod identity → its group.
    groups: BTreeMap<u32, PodGroup>,
    /// Pod identity → its members.
    members: BTreeMap<u32, BTreeSet<PodRef>>,
    /// Pod → its identity and addresses.
    pods: BTreeMap<PodRef, (u32, Vec<std::net::IpAddr>)>,
    /// Address → the pods listing it (more than one when an address was
    /// reused while the old pod's object lingers).
    claimants: BTreeMap<std::net::IpAddr, BTreeSet<PodRef>>,
    /// CIDR identities.
    cidrs: cidr_classes::CidrIndex,
    /// Pod identities some pod of which has an address in a CIDR a policy
    /// names, while ClusterNetworkPolicies exist (see `tiers`).
    covered: BTreeSet<u32>,
    /// The budgets it was built with.
    limits: Limits,
}

/// The identity key of a pod.
fn pod_group(r: &PodRef, pod: &PodInfo) -> PodGroup {
    PodGroup {
        namespace: r.namespace.clone(),
        labels: pod.labels.clone(),
        named_ports: pod
            .ports
            .iter()
            .filter_map(|p| p.name.clone().map(|n| (n, p.protocol, p.port)))
            .collect(),
    }
}

impl Index {
    fn build(
        snapshot: &Snapshot,
        limits: &Limits,
        alloc: &mut Allocator,
        out: &mut Compiled,
    ) -> Self {
        let mut by_ns: BTreeMap<String, BTreeSet<u32>> = BTreeMap::new();
        let mut groups: BTreeMap<u32, PodGroup> = BTreeMap::new();
        let mut members: BTreeMap<u32, BTreeSet<PodRef>> = BTreeMap::new();
        let mut pods = BTreeMap::new();
        // The claim of each address's owner so far (see
        // `PodInfo::address_claim`).
        let mut owners: BTreeMap<policy_common::Addr, u8> = BTreeMap::new();
        let mut claimants: BTreeMap<std::net::IpAddr, BTreeSet<PodRef>> = BTreeMap::new();
        for (r, pod) in &snapshot.pods {
            if pod.host_network {
                continue;
            }
            let group = pod_group(r, pod);
            let id = alloc.pod_identity(&group);
            if let std::collections::btree_map::Entry::Vacant(slot) = groups.entry(id) {
                by_ns.entry(r.namespace.clone()).or_default().insert(id);
                slot.insert(group);
            }
            members.entry(id).or_default().insert(r.clone());
            pods.insert(r.clone(), (id, pod.ips.clone()));
            for ip in &pod.ips {
                claimants.entry(*ip).or_default().insert(r.clone());
                // Name order: a later claim of equal strength wins.
                let claim = pod.address_claim();
                let a = to_addr(*ip);
                if owners.get(&a).is_none_or(|c| claim >= *c) {
                    owners.insert(a, claim);
                    out.state.ipcache.insert(a, id);
                }
            }
        }
        for addr in &snapshot.host_addrs {
            out.state.ipcache.insert(to_addr(*addr), HOST);
        }
        out.identities.insert(HOST, IdentityDesc::Host);
        for (id, group) in &groups {
            out.identities.insert(
                *id,
                IdentityDesc::Pods {
                    group: group.clone(),
                    members: members
                        .get(id)
                        .map(|m| m.iter().cloned().collect())
                        .unwrap_or_default(),
                },
            );
        }

        // Egress named ports towards ipBlock peers resolve per destination
        // pod: give each such pod address its own host prefix, so the
        // longest-prefix match singles it out.
        // An address several pods list is the ipcache owner's.
        let mut pod_by_ip: BTreeMap<std::net::IpAddr, (&PodRef, &PodInfo)> = BTreeMap::new();
        for (r, p) in snapshot.pods.iter().filter(|(_, p)| !p.host_network) {
            for ip in &p.ips {
                if pod_by_ip
                    .get(ip)
                    .is_none_or(|(_, o)| p.address_claim() >= o.address_claim())
                {
                    pod_by_ip.insert(*ip, (r, p));
                }
            }
        }
        let hosts = |policy: &Policy| -> Vec<IpNet> {
            policy
                .egress
                .iter()
                .flatten()
                .flat_map(|rule| named_port_hosts(rule, &pod_by_ip))
                .collect()
        };
        let covering = tiers::covering_nets(snapshot);
        let covered: BTreeSet<u32> = pods
            .values()
            .filter(|(_, ips)| {
                ips.iter()
                    .any(|ip| covering.iter().any(|n: &IpNet| n.contains(ip)))
            })
            .map(|(id, _)| *id)
            .collect();
        let covered_ips: Vec<std::net::IpAddr> = pods
            .values()
            .filter(|(id, _)| covered.contains(id))
            .flat_map(|(_, ips)| ips.iter().copied())
            .collect();
        let extra = tiers::extra_blocks(snapshot, covered_ips);
        let cidrs = cidr_classes::build(snapshot, &extra, &hosts, &pod_by_ip, limits, alloc, out);
        Index {
            covered,
            by_ns,
            groups,
            members,
            pods,
            claimants,
            cidrs,
            limits: *limits,
        }
    }

    /// Whether some egress rule resolves named ports behind ipBlock peers
    /// (then pod changes can move host prefixes: the engine recompiles).
    fn has_host_prefixes(&self) -> bool {
        !self.cidrs.host_pods.is_empty()
    }

    fn peers(&self, snapshot: &Snapshot, rref: &RuleRef, rule: &Rule) -> Peers {
        let namespace = rref.policy.namespace.as_str();
        if rule.peers.is_empty() {
            return Peers::Any;
        }
        let mut ids = BTreeSet::new();
        for peer in &rule.peers {
            match peer {
                Peer::Pods { namespaces, pods } => {
                    let matches_pod = |id: &u32| {
                        pods.as_ref().is_none_or(|s| {
                            self.groups.get(id).is_some_and(|g| s.matches(&g.labels))
                        })
                    };
                    match namespaces {
                        None => ids.extend(
                            self.by_ns
                                .get(namespace)
                                .into_iter()
                                .flatten()
                                .filter(|id| matches_pod(id)),
                        ),
                        Some(nsel) => {
                            // Both maps are sorted by name: walk them
                            // together instead of looking each one up.
                            let mut known = snapshot.namespaces.iter().peekable();
                            for (ns, nids) in &self.by_ns {
                                while known.next_if(|(k, _)| k.as_str() < ns.as_str()).is_some() {}
                                let hit = match known.peek() {
                                    Some((k, info)) if *k == ns => nsel.matches(&info.labels),
                                    _ => nsel
                                        .matches(&crate::model::NamespaceInfo::implicit(ns).labels),
                                };
                                if hit {
                                    ids.extend(nids.iter().filter(|id| matches_pod(id)));
                                }
                            }
                        }
                    }
                }
                // The prefixes the rule's group covers, given once, by the
                // group's first rule (the others have the same ports).
                Peer::IpBlock(_) => {
                    ids.extend(self.cidrs.by_rule.get(rref).into_iter().flatten().copied())
                }
            }
        }
        Peers::Ids(ids.into_iter().collect())
    }

    /// Adds the allow entries of `rule` for the `selected` endpoints;
    /// `false` (and stops) when the policy's entries would go over
    /// [`Limits::policy_entries`].
    fn add_rule(
        &self,
        snapshot: &Snapshot,
        rref: &RuleRef,
        rule: &Rule,
        rule_id: u32,
        selected: &[(u32, &PodInfo)],
        entries: &mut Vec<(PolicyEntry, PolicyValue)>,
    ) -> bool {
        let dir = rref.dir;
        let peers = self.peers(snapshot, rref, rule);
        let d = dir.dir();
        let budget = self.limits.policy_entries;
        // Duplicates count until they are sorted out: sort when the list
        // reaches `check`, and give up when the distinct ones are over.
        let mut check = entries.len().max(budget).saturating_add(1);
        let mut add = |ep_id: u32, identity: u32, ports: PortMatch| -> bool {
            let e = PolicyEntry {
                ep_id,
                dir: d,
                identity,
                ports,
            };
            entries.push((
                e,
                PolicyValue {
                    rule: rule_id,
                    flags: 0,
                },
            ));
            if entries.len() >= check {
                sort_min_rule(entries);
                if entries.len() > budget {
                    return false;
                }
                check = entries.len().saturating_add(budget).saturating_add(1);
            }
            true
        };
        let peer_ids: Vec<u32> = match &peers {
            Peers::Any => vec![ANY],
            Peers::Ids(ids) => ids.clone(),
        };
        if rule.ports.is_empty() {
            for (ep, _) in selected {
                for id in &peer_ids {
                    if !add(*ep, *id, PortMatch::AnyProtocol) {
                        return false;
                    }
                }
            }
            return true;
        }
        // Ports that do not depend on the destination pod.
        let fixed: Vec<PortMatch> = rule.ports.iter().flat_map(fixed_matches).collect();
        let named = named_ports(rule);
        for (ep, pod) in selected {
            for id in &peer_ids {
                for m in &fixed {
                    if !add(*ep, *id, *m) {
                        return false;
                    }
                }
            }
            if named.is_empty() {
                continue;
            }
            match dir {
                // The destination is the endpoint itself.
                Direction::Ingress => {
                    for (name, proto) in &named {
                        for port in pod.named_port(name, *proto) {
                            for id in &peer_ids {
                                if !add(*ep, *id, exact(*proto, port)) {
                                    return false;
                                }
                            }
                        }
                    }
                }
                // The destination is the peer: resolve against each peer
                // identity's named ports (CIDR peers have none). Any peer
                // means every pod identity.
                Direction::Egress => {
                    let dests: Box<dyn Iterator<Item = &u32>> = match &peers {
                        Peers::Any => Box::new(self.groups.keys()),
                        Peers::Ids(ids) => Box::new(ids.iter()),
                    };
                    for id in dests {
                        if let Some(pod) = self
                            .cidrs
                            .host_pods
                            .get(id)
                            .and_then(|r| snapshot.pods.get(r))
                        {
                            for (name, proto) in &named {
                                for port in pod.named_port(name, *proto) {
                                    if !add(*ep, *id, exact(*proto, port)) {
                                        return false;
                                    }
                                }
                            }
                        }
                        let Some(group) = self.groups.get(id) else {
                            continue;
                        };
                        for (name, proto) in &named {
                            for (n, p, port) in &group.named_ports {
                                if n == name && p == proto && !add(*ep, *id, exact(*proto, *port)) {
                                    return false;
                                }
                            }
                        }
                    }
                }
            }
        }
        true
    }
}

/// Host prefixes of the pods an egress rule's ipBlock peers reach on one of
/// its named ports.
fn named_port_hosts<'p>(
    rule: &'p Rule,
    pod_by_ip: &'p BTreeMap<std::net::IpAddr, (&PodRef, &PodInfo)>,
) -> impl Iterator<Item = IpNet> + 'p {
    let named = named_ports(rule);
    let blocks: Vec<&crate::model::IpBlock> = rule
        .peers
        .iter()
        .filter_map(|p| match p {
            Peer::IpBlock(b) => Some(b),
            Peer::Pods { .. } => None,
        })
        .collect();
    let active = !named.is_empty() && !blocks.is_empty();
    pod_by_ip
        .iter()
        .filter(move |_| active)
        .filter(move |(ip, (_, pod))| {
            let host = IpNet::from(**ip);
            named
                .iter()
                .any(|(n, proto)| pod.named_port(n, *proto).next().is_some())
                && blocks.iter().any(|b| {
                    net_within(&host, &b.cidr) && !b.except.iter().any(|e| net_within(&host, e))
                })
        })
        .map(|(ip, _)| IpNet::from(*ip))
}

/// The named ports of a rule's port specs, with their protocols.
fn named_ports(rule: &Rule) -> Vec<(&str, Protocol)> {
    rule.ports
        .iter()
        .filter_map(|p| match &p.port {
            Some(PortRef::Name(n)) => Some((n.as_str(), p.protocol)),
            _ => None,
        })
        .collect()
}

fn exact(proto: Protocol, port: u16) -> PortMatch {
    PortMatch::Ports {
        proto: proto.number(),
        port,
        prefix_len: 16,
    }
}

/// Matches of a port spec that do not need named-port resolution.
fn fixed_matches(spec: &PortSpec) -> Vec<PortMatch> {
    let proto = spec.protocol.number();
    match (&spec.port, spec.end_port) {
        (None, _) => vec![PortMatch::AnyPort { proto }],
        (Some(PortRef::Number(p)), None) => vec![exact(spec.protocol, *p)],
        (Some(PortRef::Number(p)), Some(e)) => ports::split_range(*p, e)
            .into_iter()
            .map(|(port, prefix_len)| PortMatch::Ports {
                proto,
                port,
                prefix_len,
            })
            .collect(),
        (Some(PortRef::Name(_)), _) => Vec::new(),
    }
}

#[cfg(test)]
mod tests;
