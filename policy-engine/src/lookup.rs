//! The datapath's decision, in user space: exactly the lookups the eBPF
//! programs do, over a [`MapState`]. `simulate` and `explain` use it, and
//! the dataplane tests compare the kernel against it.
//!
//! 1. No endpoint entry → drop (not ready, fail closed).
//! 2. Direction not isolated → allow.
//! 3. Ingress from the node itself (ipcache says HOST) → allow. The
//!    datapath grants this only to packets the node's own stack sent; a
//!    forwarded packet that merely carries a node address (a NodePort
//!    client kube-proxy masqueraded) goes on to step 4. This model judges
//!    node-originated traffic.
//! 4. For each peer identity in order — the exact ipcache match, the
//!    longest CIDR prefix match, then `identity::ANY` — allow if a policy
//!    entry for (endpoint, direction, identity) matches any protocol, any
//!    port of the protocol, or a port block covering the port.
//! 5. Otherwise drop.
//!
//! The first entry found decides: one whose value carries
//! `policy_flags::DENY` drops (ClusterNetworkPolicy tiers fold their
//! final answer into every entry, see `compile::tiers`).
//!
//! Before step 2: a pod's UDP to the overlay's encapsulation port of an
//! address that is no pod's ([`is_tunnel`]) is allowed only by an entry of
//! the peer's CIDR identity that names the port, isolated or not.
//!
//! IPv4 is looked up IPv4-mapped; ICMP uses port 0 and only matches
//! any-protocol entries (the compiler never emits ICMP entries).

use std::net::IpAddr;

use policy_common::identity::{ANY, HOST};

use crate::compile::ports::block_covers;
use crate::model::addr::{mask, to_addr};
use crate::state::{CidrPrefix, MapState, PolicyEntry, PortMatch};

/// Why a verdict was reached.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Reason {
    /// The endpoint has no computed policy (dropped).
    NotReady,
    /// The direction is not isolated (allowed).
    NotIsolated,
    /// Ingress from the node itself (allowed).
    Host,
    /// A policy entry allows it.
    PolicyAllow,
    /// Isolated, and no entry allows it (dropped).
    NoRule,
    /// The first matching entry carries `policy_flags::DENY` (dropped):
    /// a ClusterNetworkPolicy tier decided so.
    TierDeny,
}

impl Reason {
    /// Short text for tool output.
    pub fn as_str(self) -> &'static str {
        match self {
            Reason::NotReady => "not-ready",
            Reason::NotIsolated => "not-isolated",
            Reason::Host => "host",
            Reason::PolicyAllow => "policy",
            Reason::NoRule => "no-rule",
            Reason::TierDeny => "tier-deny",
        }
    }
}

impl std::fmt::Display for Reason {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// One direction's decision.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Verdict {
    /// Whether the packet passes.
    pub allowed: bool,
    /// Why.
    pub reason: Reason,
    /// The allowing entry's `PolicyValue::rule` (with [`Reason::PolicyAllow`]).
    pub rule: Option<u32>,
    /// The peer identity that matched (with [`Reason::PolicyAllow`]).
    pub identity: Option<u32>,
    /// The allowing entry.
    pub entry: Option<PolicyEntry>,
}

impl Verdict {
    fn plain(allowed: bool, reason: Reason) -> Self {
        Verdict {
            allowed,
            reason,
            rule: None,
            identity: None,
            entry: None,
        }
    }
}

/// Peer identities the datapath would try, in order: exact ipcache match,
/// longest CIDR prefix, then ANY.
pub fn peer_identities(state: &MapState, peer: IpAddr) -> Vec<u32> {
    let addr = to_addr(peer);
    let mut ids = Vec::with_capacity(3);
    if let Some(id) = state.ipcache.get(&addr) {
        ids.push(*id);
    }
    if let Some(id) = longest_prefix(state, peer) {
        ids.push(id);
    }
    ids.push(ANY);
    ids
}

/// The CIDR map's longest prefix match for `peer`.
pub fn longest_prefix(state: &MapState, peer: IpAddr) -> Option<u32> {
    let addr = to_addr(peer);
    (0..=128u8).rev().find_map(|len| {
        state
            .cidrs
            .get(&CidrPrefix {
                prefix_len: len,
                addr: mask(addr, len),
            })
            .copied()
    })
}

/// The datapath verdict for a packet at endpoint `ep_id` in direction `dir`
/// (`policy_common::dir`), from/to `peer`, protocol `proto`, destination
/// port `dport`.
pub fn verdict(
    state: &MapState,
    ep_id: u32,
    dir: u8,
    peer: IpAddr,
    proto: u8,
    dport: u16,
) -> Verdict {
    let ids = peer_identities(state, peer);
    judge(state, ep_id, dir, Some(peer), &ids, proto, Some(dport))
}

/// [`verdict`] for a packet without ports: a later fragment of a datagram
/// (no L4 header), which the datapath judges with the port part of the
/// key left out, so only entries allowing every port of `proto` (or every
/// protocol) match.
pub fn verdict_any_port(state: &MapState, ep_id: u32, dir: u8, peer: IpAddr, proto: u8) -> Verdict {
    let ids = peer_identities(state, peer);
    judge(state, ep_id, dir, Some(peer), &ids, proto, None)
}

/// The verdict for a peer known only by its identity (a pod without an
/// address of the packet's family, as `simulate` reports it): what the
/// policies say of its labels and namespace, without ipBlock matches.
pub fn verdict_for_identity(
    state: &MapState,
    ep_id: u32,
    dir: u8,
    identity: Option<u32>,
    proto: u8,
    dport: u16,
) -> Verdict {
    let ids: Vec<u32> = identity.into_iter().chain([ANY]).collect();
    judge(state, ep_id, dir, None, &ids, proto, Some(dport))
}

fn judge(
    state: &MapState,
    ep_id: u32,
    dir: u8,
    peer: Option<IpAddr>,
    identities: &[u32],
    proto: u8,
    dport: Option<u16>,
) -> Verdict {
    let Some(flags) = state.endpoints.get(&ep_id) else {
        return Verdict::plain(false, Reason::NotReady);
    };
    let isolated = if dir == policy_common::dir::INGRESS {
        policy_common::ep_flags::ISOLATED_INGRESS
    } else {
        policy_common::ep_flags::ISOLATED_EGRESS
    };
    if let (Some(peer), Some(port)) = (peer, dport) {
        if is_tunnel(state, dir, peer, proto, port) {
            return judge_tunnel(state, ep_id, dir, peer, proto, port);
        }
    }
    if flags & isolated == 0 {
        return Verdict::plain(true, Reason::NotIsolated);
    }
    let from_host = peer.is_some_and(|p| state.ipcache.get(&to_addr(p)) == Some(&HOST));
    if dir == policy_common::dir::INGRESS && from_host {
        return Verdict::plain(true, Reason::Host);
    }
    entry_match(state, ep_id, dir, identities, proto, dport)
        .unwrap_or_else(|| Verdict::plain(false, Reason::NoRule))
}

/// Whether the policies in audit mode would drop a packet that
/// [`verdict`] allows (the datapath's `audit_denies`): the endpoint
/// carries the `ep_flags::AUDIT_*` bit of `dir` and no as-enforced entry
/// (under `dir::audit(dir)`) matches. Never for the node's own traffic
/// nor for the tunnel check.
pub fn would_drop(
    state: &MapState,
    ep_id: u32,
    dir: u8,
    peer: IpAddr,
    proto: u8,
    dport: u16,
) -> bool {
    let Some(flags) = state.endpoints.get(&ep_id) else {
        return false;
    };
    let bit = if dir == policy_common::dir::INGRESS {
        policy_common::ep_flags::AUDIT_INGRESS
    } else {
        policy_common::ep_flags::AUDIT_EGRESS
    };
    let from_host = state.ipcache.get(&to_addr(peer)) == Some(&HOST);
    if flags & bit == 0
        || (dir == policy_common::dir::INGRESS && from_host)
        || is_tunnel(state, dir, peer, proto, dport)
        || !verdict(state, ep_id, dir, peer, proto, dport).allowed
    {
        return false;
    }
    let ids = peer_identities(state, peer);
    let audit = policy_common::dir::audit(dir);
    entry_match(state, ep_id, audit, &ids, proto, Some(dport)).is_none()
}

/// The first entry under (`ep_id`, `dir`) allowing one of `identities`
/// (in order) on `proto`/`dport` (`None`: a packet without ports).
fn entry_match(
    state: &MapState,
    ep_id: u32,
    dir: u8,
    identities: &[u32],
    proto: u8,
    dport: Option<u16>,
) -> Option<Verdict> {
    for &identity in identities {
        let key = |ports| PolicyEntry {
            ep_id,
            dir,
            identity,
            ports,
        };
        // Most specific first, as the datapath's longest-prefix match
        // (it matters once entries can deny).
        let mut candidates = Vec::with_capacity(19);
        // Without a port only the block of every port (prefix 0, which
        // the datapath's key cannot tell from "any port") can match.
        let (blocks, dport) = match dport {
            Some(p) => (0..=16u8, p),
            None => (0..=0, 0),
        };
        for prefix_len in blocks.rev() {
            let shift = 16 - u32::from(prefix_len);
            let port = if shift >= 16 {
                0
            } else {
                ((u32::from(dport) >> shift) << shift) as u16
            };
            debug_assert!(block_covers(port, prefix_len, dport));
            candidates.push(key(PortMatch::Ports {
                proto,
                port,
                prefix_len,
            }));
        }
        candidates.push(key(PortMatch::AnyPort { proto }));
        candidates.push(key(PortMatch::AnyProtocol));
        for e in candidates {
            if let Some(v) = state.policy.get(&e) {
                return Some(hit(e, *v, identity));
            }
        }
    }
    None
}

/// The verdict of the first entry found.
fn hit(e: PolicyEntry, v: policy_common::PolicyValue, identity: u32) -> Verdict {
    let denied = v.flags & policy_common::policy_flags::DENY != 0;
    Verdict {
        allowed: !denied,
        reason: if denied {
            Reason::TierDeny
        } else {
            Reason::PolicyAllow
        },
        rule: Some(v.rule),
        identity: Some(identity),
        entry: Some(e),
    }
}

/// Whether a packet is a pod's UDP to the overlay's encapsulation port of
/// an address that is no pod's (`policy_common::ENCAP_PORTS`): a node's,
/// or outside the pod network.
pub fn is_tunnel(state: &MapState, dir: u8, peer: IpAddr, proto: u8, dport: u16) -> bool {
    dir == policy_common::dir::EGRESS
        && proto == policy_common::proto::UDP
        && policy_common::ENCAP_PORTS.contains(&dport)
        && state
            .ipcache
            .get(&to_addr(peer))
            .is_none_or(|id| *id == HOST)
}

/// The verdict on a packet [`is_tunnel`] says goes to an encapsulation
/// port: allowed only by an entry of the peer's CIDR identity that names
/// the port (a port or a port block, not every port), whether or not the
/// endpoint is isolated.
fn judge_tunnel(
    state: &MapState,
    ep_id: u32,
    dir: u8,
    peer: IpAddr,
    proto: u8,
    dport: u16,
) -> Verdict {
    let Some(identity) = longest_prefix(state, peer) else {
        return Verdict::plain(false, Reason::NoRule);
    };
    for prefix_len in (1..=16u8).rev() {
        let shift = 16 - u32::from(prefix_len);
        let port = ((u32::from(dport) >> shift) << shift) as u16;
        let e = PolicyEntry {
            ep_id,
            dir,
            identity,
            ports: PortMatch::Ports {
                proto,
                port,
                prefix_len,
            },
        };
        if let Some(v) = state.policy.get(&e) {
            return hit(e, *v, identity);
        }
    }
    Verdict::plain(false, Reason::NoRule)
}
