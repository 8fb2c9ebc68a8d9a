//! CIDR identities: every prefix any policy names goes into the CIDR map
//! (longest-prefix match), and prefixes that exactly the same rules allow
//! share one identity.
//!
//! A packet's CIDR identity is that of its longest matching prefix, and an
//! identity's policy entries are those of the rules whose ipBlocks cover
//! the prefix (contain it and do not except it). Two prefixes covered by
//! the same set of rules would get the same entries, so one identity
//! serves both: a rule listing a million ipBlocks costs one identity and
//! one entry per port, not a million of each. Single pod addresses that
//! named ports resolve against keep an identity per pod (the port number
//! is looked up on that pod).
//!
//! Prefixes are kept sorted (family, address, length), so the prefixes an
//! ipBlock covers are found by a binary search and a scan of its range:
//! building the index costs O(n log n) in the prefixes plus the
//! (prefix, rule) pairs that cover each other, not O(n²).

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::net::IpAddr;

use ipnet::IpNet;

use super::identity::{Allocator, CidrClass, IdentityDesc, RuleRef};
use super::Compiled;
use crate::model::addr::{net_within, to_prefix};
use crate::model::{Direction, IpBlock, Peer, PodInfo, PodRef, Snapshot};

/// What the rest of the compile needs of the CIDR identities.
#[derive(Clone, Debug, Default)]
pub(super) struct CidrIndex {
    /// Each distinct ipBlock → the identities of the prefixes it covers.
    pub by_block: HashMap<IpBlock, Vec<u32>>,
    /// Identities of single pod addresses → that pod (named ports of
    /// ipBlock peers resolve against it).
    pub host_pods: BTreeMap<u32, PodRef>,
}

/// Fills the CIDR map and the identity descriptions of `out` with every
/// prefix of `nets`, and indexes the ipBlocks of `snapshot`'s valid
/// policies.
pub(super) fn build(
    snapshot: &Snapshot,
    nets: BTreeSet<IpNet>,
    pod_by_ip: &BTreeMap<IpAddr, (&PodRef, &PodInfo)>,
    alloc: &mut Allocator,
    out: &mut Compiled,
) -> CidrIndex {
    let nets: Vec<IpNet> = nets.into_iter().collect();
    // Every rule with an ipBlock peer, and its blocks.
    let mut rules: Vec<RuleRef> = Vec::new();
    let mut blocks: Vec<(u32, &IpBlock)> = Vec::new();
    for (pref, policy) in snapshot.policies.iter().filter(|(_, p)| p.is_valid()) {
        for dir in Direction::BOTH {
            for (index, rule) in policy.rules(dir).into_iter().flatten().enumerate() {
                let mut numbered = None;
                for peer in &rule.peers {
                    if let Peer::IpBlock(b) = peer {
                        let r = *numbered.get_or_insert_with(|| {
                            rules.push(RuleRef {
                                policy: pref.clone(),
                                dir,
                                index,
                            });
                            (rules.len() - 1) as u32
                        });
                        blocks.push((r, b));
                    }
                }
            }
        }
    }
    // Which rules cover each prefix.
    let mut covering: Vec<Vec<u32>> = vec![Vec::new(); nets.len()];
    for (r, b) in &blocks {
        for i in covered(&nets, b) {
            covering[i].push(*r);
        }
    }
    // One identity per (set of rules, pod behind a host prefix).
    let mut classes: HashMap<(Vec<u32>, Option<&PodRef>), u32> = HashMap::new();
    let mut class_of = Vec::with_capacity(nets.len());
    let mut members: BTreeMap<u32, Vec<IpNet>> = BTreeMap::new();
    let mut host_pods = BTreeMap::new();
    for (net, mut by) in nets.iter().zip(covering) {
        by.sort_unstable();
        by.dedup();
        let host = (net.prefix_len() == net.max_prefix_len())
            .then(|| pod_by_ip.get(&net.addr()).map(|(r, _)| *r))
            .flatten();
        let id = *classes.entry((by, host)).or_insert_with_key(|(by, host)| {
            alloc.cidr_identity(CidrClass {
                rules: by.iter().map(|r| rules[*r as usize].clone()).collect(),
                host: host.cloned(),
            })
        });
        if let Some(pod) = host {
            host_pods.insert(id, pod.clone());
        }
        out.state.cidrs.insert(to_prefix(net), id);
        members.entry(id).or_default().push(*net);
        class_of.push(id);
    }
    for (id, nets) in members {
        out.identities.insert(id, IdentityDesc::Cidrs(nets));
    }
    let mut by_block: HashMap<IpBlock, Vec<u32>> = HashMap::new();
    for (_, b) in blocks {
        if by_block.contains_key(b) {
            continue;
        }
        let mut ids: Vec<u32> = covered(&nets, b).map(|i| class_of[i]).collect();
        ids.sort_unstable();
        ids.dedup();
        by_block.insert(b.clone(), ids);
    }
    CidrIndex {
        by_block,
        host_pods,
    }
}

/// Sort key of a prefix's address: family first, as `IpNet` sorts.
fn key(addr: IpAddr) -> (bool, u128) {
    match addr {
        IpAddr::V4(a) => (false, u128::from(u32::from(a))),
        IpAddr::V6(a) => (true, u128::from(a)),
    }
}

/// Indexes into `nets` (sorted) of the prefixes `b` covers: inside its
/// CIDR and inside none of its excepts.
fn covered<'a>(nets: &'a [IpNet], b: &'a IpBlock) -> impl Iterator<Item = usize> + 'a {
    let lo = nets.partition_point(|n| key(n.addr()) < key(b.cidr.network()));
    let hi = nets.partition_point(|n| key(n.addr()) <= key(b.cidr.broadcast()));
    (lo..hi).filter(move |&i| {
        let n = &nets[i];
        net_within(n, &b.cidr) && !b.except.iter().any(|e| net_within(n, e))
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn net(s: &str) -> IpNet {
        s.parse().unwrap()
    }

    #[test]
    fn an_ipblock_covers_the_prefixes_inside_it_but_not_its_excepts() {
        let nets: Vec<IpNet> = [
            "0.0.0.0/0",
            "10.0.0.0/8",
            "10.0.0.0/16",
            "10.1.0.0/16",
            "10.1.2.0/24",
            "11.0.0.0/8",
            "::/0",
            "fd00::/8",
        ]
        .iter()
        .map(|s| net(s))
        .collect::<BTreeSet<_>>()
        .into_iter()
        .collect();
        let block = IpBlock {
            cidr: net("10.0.0.0/8"),
            except: vec![net("10.1.0.0/16")],
        };
        let got: Vec<IpNet> = covered(&nets, &block).map(|i| nets[i]).collect();
        assert_eq!(got, vec![net("10.0.0.0/8"), net("10.0.0.0/16")]);
        let world = IpBlock {
            cidr: net("0.0.0.0/0"),
            except: vec![],
        };
        assert_eq!(covered(&nets, &world).count(), 6);
        let v6 = IpBlock {
            cidr: net("fd00::/8"),
            except: vec![],
        };
        let got: Vec<IpNet> = covered(&nets, &v6).map(|i| nets[i]).collect();
        assert_eq!(got, vec![net("fd00::/8")]);
    }
}
