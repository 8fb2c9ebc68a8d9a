//! CIDR identities: every prefix any policy names goes into the CIDR map
//! (longest-prefix match), and prefixes that exactly the same rule groups
//! allow share one identity.
//!
//! A packet's CIDR identity is that of its longest matching prefix, and an
//! identity's policy entries are those of the rules whose ipBlocks cover
//! the prefix (contain it and do not except it). Rules of one policy and
//! direction with the same `ports` give the same entries to the same
//! endpoints, so they are merged into one *group* first: a prefix is
//! covered by the group when some block of some of its rules covers it.
//! Two prefixes covered by the same groups get the same entries, so one
//! identity serves both: a rule listing a million ipBlocks costs one
//! identity and one entry per port, and so do a thousand rules
//! `0.0.0.0/0 except <one /32 each>` (their union is the whole world).
//! Single pod addresses that named ports resolve against keep an identity
//! per pod (the port number is looked up on that pod).
//!
//! The classes are found in one walk over the sorted prefixes (a preorder
//! of the prefix trie): entering a prefix applies the blocks whose cidr or
//! except it is, leaving it undoes them, and the set of covering groups is
//! kept with a keyed 128-bit hash, so a prefix costs O(1) plus its own
//! events. Listing a class's groups costs their number, and that is what
//! its policy entries cost too: the work is that of the state produced,
//! never (prefixes × rules). A policy whose groups would cover more
//! (group, class) pairs than [`Limits::policy_entries`](super::Limits) is
//! left out (it fails closed, see [`Excluded`]) and the walk runs once
//! more without it.
//!
//! The CIDR map's room ([`Limits::cidr_prefixes`](super::Limits)) is given
//! out policy by policy, oldest first (creation time, then namespace and
//! name; never endpoint ids): a policy whose new prefixes no longer fit is
//! left out and fails closed, the others keep theirs.

use std::collections::hash_map::RandomState;
use std::collections::{BTreeMap, BTreeSet, HashMap, HashSet};
use std::hash::BuildHasher;
use std::net::IpAddr;
use std::sync::Arc;

use ipnet::IpNet;

use super::identity::{Allocator, CidrClass, IdentityDesc, RuleRef};
use super::{CompileError, Compiled, Limits};
use crate::model::addr::{net_within, to_prefix, world_v4, world_v6};
use crate::model::{
    Direction, IpBlock, Peer, PodInfo, PodRef, Policy, PolicyRef, PortSpec, Snapshot,
};

/// Why a policy's rules were left out of the CIDR identities (it then
/// isolates its pods and allows nothing).
#[derive(Clone, Debug, PartialEq, Eq)]
pub(super) enum Excluded {
    /// Its new prefixes did not fit the CIDR map's room.
    CidrRoom { needed: usize, free: usize },
    /// Its rule groups would cover more (group, class) pairs than the
    /// per-policy budget.
    Classes { budget: usize },
}

impl Excluded {
    /// The error reported for policy `policy`.
    pub(super) fn error(&self, policy: &PolicyRef) -> CompileError {
        match self {
            Excluded::CidrRoom { needed, free } => CompileError::OverBudget {
                policy: policy.clone(),
                message: format!(
                    "its ipBlocks need {needed} more prefixes in the CIDR map and only {free} are \
                     free after older policies (raise --map-size-cidrs)"
                ),
            },
            Excluded::Classes { budget } => CompileError::OverBudget {
                policy: policy.clone(),
                message: format!(
                    "its ipBlocks split the addresses into more than {budget} (rule group, \
                     address class) pairs, the per-policy budget"
                ),
            },
        }
    }
}

/// What the rest of the compile needs of the CIDR identities.
#[derive(Clone, Debug, Default)]
pub(super) struct CidrIndex {
    /// The first rule of each rule group with ipBlock peers → the
    /// identities of the prefixes the group covers (the group's other
    /// rules add them through this one).
    pub by_rule: HashMap<RuleRef, Vec<u32>>,
    /// Identities of single pod addresses → that pod (named ports of
    /// ipBlock peers resolve against it).
    pub host_pods: BTreeMap<u32, PodRef>,
    /// Policies left out, and why.
    pub excluded: BTreeMap<PolicyRef, Excluded>,
    /// (Group, class) pairs listed by the walks (the work done).
    pub pairs: usize,
}

/// One group: rules of one policy and direction with the same ports.
struct Group<'a> {
    first: Arc<RuleRef>,
    blocks: Vec<&'a IpBlock>,
}

/// A valid policy's ipBlock groups and prefixes.
struct PolicyBlocks<'a> {
    pref: &'a PolicyRef,
    groups: Vec<Group<'a>>,
    nets: BTreeSet<IpNet>,
}

/// Prefixes that are not NetworkPolicy ipBlocks: ClusterNetworkPolicy
/// `networks` and `nodes` peers (one group per rule, under a reference no
/// NetworkPolicy has: an empty namespace, see `compile::tiers`), and host
/// prefixes of pod addresses those policies need resolved per pod.
#[derive(Clone, Debug)]
pub(super) struct ExtraBlocks {
    /// Reference of the owner (admission and budget are per owner).
    pub pref: PolicyRef,
    /// Per rule, the blocks it covers.
    pub rules: Vec<(RuleRef, Vec<IpBlock>)>,
    /// Host prefixes to add.
    pub hosts: Vec<IpNet>,
}

/// Admission order of policies: oldest first, then by name.
fn order_key<'a>(pref: &'a PolicyRef, p: &'a Policy) -> impl Ord + 'a {
    let created = p.object.metadata.creation_timestamp.as_ref().map(|t| t.0);
    (created.is_none(), created, pref)
}

/// Fills the CIDR map and the identity descriptions of `out` with every
/// prefix of `snapshot`'s valid policies (and the host prefixes `hosts`
/// gives per policy), and indexes their ipBlock rules.
pub(super) fn build(
    snapshot: &Snapshot,
    extra: &[ExtraBlocks],
    hosts: &dyn Fn(&Policy) -> Vec<IpNet>,
    pod_by_ip: &BTreeMap<IpAddr, (&PodRef, &PodInfo)>,
    limits: &Limits,
    alloc: &mut Allocator,
    out: &mut Compiled,
) -> CidrIndex {
    let mut policies: Vec<(&PolicyRef, &Policy)> = snapshot
        .policies
        .iter()
        .filter(|(_, p)| p.is_valid())
        .collect();
    policies.sort_by_cached_key(|(r, p)| order_key(r, p));
    let mut all = Vec::new();
    for (pref, policy) in policies {
        let mut groups: Vec<Group> = Vec::new();
        let mut by_key: HashMap<(Direction, &[PortSpec]), usize> = HashMap::new();
        let mut nets = BTreeSet::new();
        for dir in Direction::BOTH {
            for (index, rule) in policy.rules(dir).into_iter().flatten().enumerate() {
                for peer in &rule.peers {
                    let Peer::IpBlock(b) = peer else { continue };
                    let g = *by_key.entry((dir, &rule.ports)).or_insert_with(|| {
                        groups.push(Group {
                            first: Arc::new(RuleRef {
                                policy: pref.clone(),
                                dir,
                                index,
                            }),
                            blocks: Vec::new(),
                        });
                        groups.len() - 1
                    });
                    groups[g].blocks.push(b);
                    nets.insert(b.cidr);
                    nets.extend(b.except.iter().copied());
                }
            }
        }
        nets.extend(hosts(policy));
        if !nets.is_empty() {
            all.push(PolicyBlocks { pref, groups, nets });
        }
    }
    // After every NetworkPolicy: they keep the room they had without
    // ClusterNetworkPolicies.
    for x in extra {
        let mut groups = Vec::new();
        let mut nets: BTreeSet<IpNet> = x.hosts.iter().copied().collect();
        for (rref, blocks) in &x.rules {
            nets.extend(blocks.iter().map(|b| b.cidr));
            groups.push(Group {
                first: Arc::new(rref.clone()),
                blocks: blocks.iter().collect(),
            });
        }
        if !nets.is_empty() {
            all.push(PolicyBlocks {
                pref: &x.pref,
                groups,
                nets,
            });
        }
    }
    let mut excluded = BTreeMap::new();
    // The CIDR map's room, oldest policy first.
    if let Some(room) = limits.cidr_prefixes {
        let mut admitted: HashSet<IpNet> = [world_v4(), world_v6()].into();
        for p in &all {
            let new: Vec<&IpNet> = p.nets.iter().filter(|n| !admitted.contains(n)).collect();
            let free = room.saturating_sub(admitted.len());
            if new.len() > free {
                excluded.insert(
                    p.pref.clone(),
                    Excluded::CidrRoom {
                        needed: new.len(),
                        free,
                    },
                );
            } else {
                admitted.extend(new.into_iter().copied());
            }
        }
    }
    let hasher = (RandomState::new(), RandomState::new());
    let mut walk = Walk::new(&all, &excluded, pod_by_ip, &hasher);
    let over = walk.run(limits.policy_entries);
    let mut work = walk.pairs;
    if !over.is_empty() {
        for i in over {
            excluded.insert(
                all[i].pref.clone(),
                Excluded::Classes {
                    budget: limits.policy_entries,
                },
            );
        }
        walk = Walk::new(&all, &excluded, pod_by_ip, &hasher);
        // Leaving policies out only merges classes: nobody else goes over.
        let _ = walk.run(usize::MAX);
        work += walk.pairs;
    }
    let mut ix = walk.finish(alloc, out, excluded);
    ix.pairs = work;
    ix
}

/// Disjoint, sorted form of a set of prefixes (those inside another go).
fn normalize(nets: &[IpNet]) -> Vec<IpNet> {
    let mut sorted: Vec<IpNet> = nets.to_vec();
    sorted.sort_unstable();
    sorted.dedup();
    let mut out: Vec<IpNet> = Vec::with_capacity(sorted.len());
    for n in sorted {
        if out.last().is_some_and(|l| net_within(&n, l)) {
            continue;
        }
        out.push(n);
    }
    out
}

/// The addresses in both `a` and `b` (each disjoint and sorted), as a
/// disjoint sorted list: linear in their lengths.
fn intersect(a: &[IpNet], b: &[IpNet]) -> Vec<IpNet> {
    let (mut i, mut j) = (0, 0);
    let mut out = Vec::new();
    while i < a.len() && j < b.len() {
        let (x, y) = (&a[i], &b[j]);
        if net_within(x, y) {
            out.push(*x);
            i += 1;
        } else if net_within(y, x) {
            out.push(*y);
            j += 1;
        } else if key(x.broadcast()) < key(y.broadcast()) {
            i += 1;
        } else {
            j += 1;
        }
    }
    out
}

/// Sort key of an address: family first, as `IpNet` sorts.
fn key(addr: IpAddr) -> (bool, u128) {
    match addr {
        IpAddr::V4(a) => (false, u128::from(u32::from(a))),
        IpAddr::V6(a) => (true, u128::from(a)),
    }
}

/// One walk over the sorted prefixes of the included policies.
struct Walk<'a, 'p> {
    all: &'p [PolicyBlocks<'a>],
    nets: Vec<IpNet>,
    /// (net index, group, +1 entering a cidr / -1 entering an except),
    /// sorted by net index, +1 first.
    events: Vec<(usize, usize, i32)>,
    /// Global group number → (policy index, group index in it).
    groups: Vec<(usize, usize)>,
    group_hash: Vec<u128>,
    /// Per prefix, its host pod (pod addresses named ports resolve on).
    hosts: Vec<Option<&'p PodRef>>,
    /// Classes: their groups (sorted) and host pod.
    classes: Vec<(Vec<usize>, Option<&'p PodRef>)>,
    class_of: Vec<usize>,
    pairs: usize,
}

impl<'a, 'p> Walk<'a, 'p> {
    fn new(
        all: &'p [PolicyBlocks<'a>],
        excluded: &BTreeMap<PolicyRef, Excluded>,
        pod_by_ip: &'p BTreeMap<IpAddr, (&'p PodRef, &'p PodInfo)>,
        hasher: &(RandomState, RandomState),
    ) -> Self {
        let included: Vec<usize> = (0..all.len())
            .filter(|i| !excluded.contains_key(all[*i].pref))
            .collect();
        let mut nets: BTreeSet<IpNet> = [world_v4(), world_v6()].into();
        for i in &included {
            nets.extend(all[*i].nets.iter().copied());
        }
        let nets: Vec<IpNet> = nets.into_iter().collect();
        let index_of = |n: &IpNet| nets.binary_search(n).ok();
        let mut events = Vec::new();
        let mut groups = Vec::new();
        let mut group_hash = Vec::new();
        for i in included {
            for (gi, g) in all[i].groups.iter().enumerate() {
                let gn = groups.len();
                groups.push((i, gi));
                group_hash.push(
                    u128::from(hasher.0.hash_one(gn)) << 64 | u128::from(hasher.1.hash_one(gn)),
                );
                // Blocks of one cidr: a prefix escapes them only when every
                // one of them excepts it.
                let mut by_cidr: BTreeMap<IpNet, Vec<IpNet>> = BTreeMap::new();
                for b in &g.blocks {
                    let ex = normalize(&b.except);
                    match by_cidr.entry(b.cidr) {
                        std::collections::btree_map::Entry::Vacant(v) => {
                            v.insert(ex);
                        }
                        std::collections::btree_map::Entry::Occupied(mut o) => {
                            let both = intersect(o.get(), &ex);
                            o.insert(both);
                        }
                    }
                }
                for (cidr, ex) in by_cidr {
                    if let Some(c) = index_of(&cidr) {
                        events.push((c, gn, 1));
                    }
                    for e in ex {
                        if let Some(x) = index_of(&e) {
                            events.push((x, gn, -1));
                        }
                    }
                }
            }
        }
        events.sort_unstable_by_key(|(n, g, d)| (*n, std::cmp::Reverse(*d), *g));
        let hosts = nets
            .iter()
            .map(|n| {
                (n.prefix_len() == n.max_prefix_len())
                    .then(|| pod_by_ip.get(&n.addr()).map(|(r, _)| *r))
                    .flatten()
            })
            .collect();
        Walk {
            all,
            nets,
            events,
            groups,
            group_hash,
            hosts,
            classes: Vec::new(),
            class_of: Vec::new(),
            pairs: 0,
        }
    }

    /// Walks the prefixes, forming the classes. Returns the policies
    /// (indexes into `all`) whose pairs went over `budget`; their groups
    /// are dropped from the rest of the walk (a second walk without them
    /// makes the classes consistent).
    fn run(&mut self, budget: usize) -> Vec<usize> {
        let mut count = vec![0i32; self.groups.len()];
        // The groups covering the current prefix, with positions, and the
        // sum of their hashes.
        let mut active: Vec<usize> = Vec::new();
        let mut pos: Vec<usize> = vec![usize::MAX; self.groups.len()];
        let mut sum: u128 = 0;
        let mut dropped = vec![false; self.all.len()];
        let mut pairs_of = vec![0usize; self.all.len()];
        let mut over = Vec::new();
        let mut seen: HashMap<(u128, Option<&PodRef>), usize> = HashMap::new();
        // Prefixes entered and not left, with their events' range.
        let mut stack: Vec<(usize, std::ops::Range<usize>)> = Vec::new();
        let mut next = 0usize;
        let change = |g: usize,
                      d: i32,
                      count: &mut Vec<i32>,
                      active: &mut Vec<usize>,
                      pos: &mut Vec<usize>,
                      sum: &mut u128,
                      dropped: &[bool]| {
            if dropped[self.groups[g].0] {
                return;
            }
            let before = count[g] > 0;
            count[g] += d;
            let after = count[g] > 0;
            if !before && after {
                pos[g] = active.len();
                active.push(g);
                *sum = sum.wrapping_add(self.group_hash[g]);
            } else if before && !after {
                remove(active, pos, g);
                *sum = sum.wrapping_sub(self.group_hash[g]);
            }
        };
        self.classes.clear();
        self.class_of.clear();
        self.pairs = 0;
        for i in 0..self.nets.len() {
            while let Some((top, range)) = stack.last() {
                if net_within(&self.nets[i], &self.nets[*top]) {
                    break;
                }
                for k in range.clone().rev() {
                    let (_, g, d) = self.events[k];
                    change(g, -d, &mut count, &mut active, &mut pos, &mut sum, &dropped);
                }
                stack.pop();
            }
            let start = next;
            while next < self.events.len() && self.events[next].0 == i {
                let (_, g, d) = self.events[next];
                change(g, d, &mut count, &mut active, &mut pos, &mut sum, &dropped);
                next += 1;
            }
            stack.push((i, start..next));
            let host = self.hosts[i];
            let class = match seen.get(&(sum, host)) {
                Some(c) => *c,
                None => {
                    let mut gs = active.clone();
                    gs.sort_unstable();
                    self.pairs += gs.len();
                    for g in &gs {
                        let p = self.groups[*g].0;
                        pairs_of[p] += 1;
                        if pairs_of[p] > budget && !dropped[p] {
                            dropped[p] = true;
                            over.push(p);
                        }
                    }
                    // Drop the groups of policies that went over.
                    for g in active.clone() {
                        if dropped[self.groups[g].0] {
                            remove(&mut active, &mut pos, g);
                            sum = sum.wrapping_sub(self.group_hash[g]);
                        }
                    }
                    let c = self.classes.len();
                    self.classes.push((gs, host));
                    seen.insert((sum, host), c);
                    c
                }
            };
            self.class_of.push(class);
        }
        over
    }

    /// Numbers the classes and fills the CIDR map.
    fn finish(
        self,
        alloc: &mut Allocator,
        out: &mut Compiled,
        excluded: BTreeMap<PolicyRef, Excluded>,
    ) -> CidrIndex {
        let mut ids = Vec::with_capacity(self.classes.len());
        let mut by_group: Vec<Vec<u32>> = vec![Vec::new(); self.groups.len()];
        let mut host_pods = BTreeMap::new();
        for (gs, host) in &self.classes {
            let mut rules: Vec<Arc<RuleRef>> = gs
                .iter()
                .map(|g| {
                    let (p, gi) = self.groups[*g];
                    self.all[p].groups[gi].first.clone()
                })
                .collect();
            rules.sort_unstable();
            let id = alloc.cidr_identity(CidrClass {
                rules,
                host: host.cloned(),
            });
            for g in gs {
                by_group[*g].push(id);
            }
            if let Some(pod) = host {
                host_pods.insert(id, (*pod).clone());
            }
            ids.push(id);
        }
        let mut members: BTreeMap<u32, Vec<IpNet>> = BTreeMap::new();
        for (net, class) in self.nets.iter().zip(&self.class_of) {
            let id = ids[*class];
            out.state.cidrs.insert(to_prefix(net), id);
            members.entry(id).or_default().push(*net);
        }
        for (id, nets) in members {
            out.identities.insert(id, IdentityDesc::Cidrs(nets));
        }
        let mut by_rule = HashMap::new();
        for (g, mut ids) in by_group.into_iter().enumerate() {
            ids.sort_unstable();
            ids.dedup();
            let (p, gi) = self.groups[g];
            by_rule.insert((*self.all[p].groups[gi].first).clone(), ids);
        }
        CidrIndex {
            by_rule,
            host_pods,
            excluded,
            pairs: self.pairs,
        }
    }
}

/// Removes `g` from the active list in O(1).
fn remove(active: &mut Vec<usize>, pos: &mut [usize], g: usize) {
    let at = pos[g];
    if at >= active.len() || active[at] != g {
        return;
    }
    active.swap_remove(at);
    if let Some(moved) = active.get(at) {
        pos[*moved] = at;
    }
    pos[g] = usize::MAX;
}

#[cfg(test)]
mod tests {
    use super::*;

    fn net(s: &str) -> IpNet {
        s.parse().unwrap()
    }

    fn nets(s: &[&str]) -> Vec<IpNet> {
        s.iter().map(|s| net(s)).collect()
    }

    #[test]
    fn except_lists_intersect_as_address_sets() {
        let a = normalize(&nets(&[
            "10.0.0.0/8",
            "10.1.0.0/16",
            "192.0.2.1/32",
            "::1/128",
        ]));
        assert_eq!(a, nets(&["10.0.0.0/8", "192.0.2.1/32", "::1/128"]));
        let b = normalize(&nets(&["10.2.0.0/16", "192.0.2.0/24", "11.0.0.0/8"]));
        assert_eq!(intersect(&a, &b), nets(&["10.2.0.0/16", "192.0.2.1/32"]));
        assert!(intersect(&nets(&["192.0.2.1/32"]), &nets(&["192.0.2.2/32"])).is_empty());
        assert_eq!(
            intersect(&nets(&["10.0.0.1/32", "::1/128"]), &nets(&["::/0"])),
            nets(&["::1/128"])
        );
    }
}
