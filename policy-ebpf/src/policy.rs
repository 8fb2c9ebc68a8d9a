//! The verdict algorithm. It must stay identical to the user-space lookup
//! model (`policy_engine::lookup::verdict`):
//!
//! 1. `EP_POLICY[gen, ep]` missing → drop (`NOT_READY`).
//! 2. The direction's isolated flag unset → allow (`NOT_ISOLATED`).
//! 3. Ingress from an address whose ipcache identity is `HOST` → allow, if
//!    the node itself sent the packet (`local_origin`): a forwarded packet
//!    that merely carries a node address (a NodePort client masqueraded by
//!    kube-proxy) gets no exemption and is judged like any other peer.
//! 4. For each peer identity in [ipcache, CIDR LPM, `ANY`] (those found),
//!    one POLICY LPM lookup with the full key; the first hit decides: it
//!    allows, unless its value carries `policy_flags::DENY` (the compiler
//!    folded a ClusterNetworkPolicy tier's drop into it: `TIER_DENY`).
//! 5. Otherwise drop (`NO_RULE`).
//!
//! After an allow (steps 2 to 4): when a policy in audit mode isolates the
//! endpoint in that direction (`ep_flags::AUDIT_*`), the caller asks
//! [`audit_denies`] the same question of the as-enforced entries; a new
//! flow they would drop passes and is reported as `verdict::WOULD_DROP`.
//!
//! Before step 2: egress UDP to an encapsulation port
//! (`policy_common::ENCAP_PORTS`) of an address whose ipcache identity is
//! none or `HOST` (a node, or outside the pod network) is allowed only by
//! the CIDR identity's entry naming the port (`policy_flags::PORT`), else
//! dropped (`NO_RULE`), isolated or not.

use aya_ebpf::maps::lpm_trie::Key;
use policy_common::{
    dir, ep_flags, identity, policy_flags, proto, reason, Addr, CidrKey, EndpointPolicyKey,
    IpcacheKey, PolicyKey, CIDR_KEY_HEAD_BITS, ENCAP_PORTS, POLICY_PREFIX_ANY_PORT,
    POLICY_PREFIX_FULL,
};

use crate::maps::{CIDRS, EP_POLICY, IPCACHE, POLICY};

/// Outcome of [`judge`].
#[derive(Clone, Copy)]
pub struct Verdict {
    /// Peer identity found (ipcache first, then CIDR; 0 if none).
    pub peer_identity: u32,
    /// Rule reference of the allowing entry (0 if none).
    pub rule: u32,
    /// Whether the packet may pass.
    pub allow: bool,
    /// `policy_common::reason` value.
    pub reason: u8,
    /// Set by [`judge`] when a policy in audit mode isolates the endpoint
    /// in this direction (the as-enforced view must be asked too, see
    /// [`audit_denies`]); then by the caller, whether it would drop.
    pub audit: bool,
}

impl Verdict {
    /// A drop without any lookup done yet.
    #[inline(always)]
    pub const fn empty() -> Self {
        Self {
            peer_identity: 0,
            rule: 0,
            allow: false,
            reason: reason::NO_RULE,
            audit: false,
        }
    }

    /// The answer of the first policy entry found: allow, or drop when the
    /// compiler marked it `DENY`.
    #[inline(always)]
    fn entry(&mut self, flags: u32, peer_identity: u32, rule: u32) {
        if flags & policy_flags::DENY != 0 {
            self.set(false, reason::TIER_DENY, peer_identity, rule);
        } else {
            self.set(true, reason::POLICY_ALLOW, peer_identity, rule);
        }
    }

    #[inline(always)]
    fn set(&mut self, allow: bool, reason: u8, peer_identity: u32, rule: u32) {
        self.allow = allow;
        self.reason = reason;
        self.peer_identity = peer_identity;
        self.rule = rule;
    }
}

/// One question for [`judge`].
pub struct Query {
    /// Peer address (destination for egress, source for ingress).
    pub peer: Addr,
    /// Endpoint id.
    pub ep_id: u32,
    /// Destination port (0 for port-less protocols).
    pub dport: u16,
    /// Generation to read.
    pub gen: u8,
    /// Direction.
    pub dir: u8,
    /// IP protocol.
    pub proto: u8,
    /// False for non-first fragments: only entries allowing every port of
    /// `proto` (or every protocol) can match.
    pub ports_known: bool,
    /// The node's own stack sent the packet (it was not forwarded).
    pub local_origin: bool,
}

/// Judges one packet (see the module documentation) into `out`.
#[inline(never)]
pub fn judge(q: &Query, out: &mut Verdict) {
    let gen = q.gen;
    out.audit = false;
    let ep_key = EndpointPolicyKey {
        gen: u32::from(gen),
        ep_id: q.ep_id,
    };
    // SAFETY: the value is copied out at once; a concurrent update may give
    // an old or new value, both of which are valid flag words.
    let flags = match unsafe { EP_POLICY.get(&ep_key) } {
        Some(v) => v.flags,
        None => return out.set(false, reason::NOT_READY, 0, 0),
    };
    let isolated = if q.dir == dir::INGRESS {
        ep_flags::ISOLATED_INGRESS
    } else {
        ep_flags::ISOLATED_EGRESS
    };
    let ipc_key = IpcacheKey {
        gen: u32::from(gen),
        addr: q.peer,
    };
    // SAFETY: as above, copied out at once.
    let ipc = unsafe { IPCACHE.get(&ipc_key) }.map(|v| v.identity);
    // A pod's UDP to the overlay's encapsulation port of an address that
    // is no pod's (a node's, or outside): only an ipBlock entry naming the
    // port allows it (see `policy_common::ENCAP_PORTS`).
    let tunnel = q.dir == dir::EGRESS
        && q.proto == proto::UDP
        && q.ports_known
        && (q.dport == ENCAP_PORTS[0] || q.dport == ENCAP_PORTS[1])
        && ipc.is_none_or(|i| i == identity::HOST);
    let audit = if q.dir == dir::INGRESS {
        ep_flags::AUDIT_INGRESS
    } else {
        ep_flags::AUDIT_EGRESS
    };
    // Not for the tunnel check (judged on its own rule) nor for the node's
    // own traffic (always allowed).
    out.audit = flags & audit != 0
        && !tunnel
        && !(q.dir == dir::INGRESS && q.local_origin && ipc == Some(identity::HOST));
    if flags & isolated == 0 && !tunnel {
        return out.set(true, reason::NOT_ISOLATED, ipc.unwrap_or(0), 0);
    }
    if q.dir == dir::INGRESS && q.local_origin && ipc == Some(identity::HOST) {
        return out.set(true, reason::POLICY_ALLOW, identity::HOST, 0);
    }
    let cidr_key = Key::new(
        CIDR_KEY_HEAD_BITS + 128,
        CidrKey {
            gen,
            // Not `[0; 3]`, which becomes a `memset` call.
            pad: [0, 0, 0],
            addr: q.peer,
        },
    );
    let cidr = CIDRS.get(&cidr_key).map(|v| v.identity);
    let (prefix, dport) = if q.ports_known {
        (POLICY_PREFIX_FULL, q.dport)
    } else {
        (POLICY_PREFIX_ANY_PORT, 0)
    };
    let peer_identity = match (ipc, cidr) {
        (Some(i), _) | (None, Some(i)) => i,
        (None, None) => 0,
    };
    let mut key = Key::new(
        prefix,
        PolicyKey::new(gen, q.dir, q.ep_id, identity::ANY, q.proto, dport),
    );
    if tunnel {
        // Only the CIDR identity's entry, and only when it names the port
        // (here, not in a function of its own: one more call level would
        // not fit the verifier's stack).
        if let Some(id) = cidr {
            key.data.identity = id.to_be_bytes();
            if let Some(v) = POLICY.get(&key) {
                if v.flags & policy_flags::PORT != 0 {
                    return out.entry(v.flags, id, v.rule);
                }
            }
        }
        return out.set(false, reason::NO_RULE, peer_identity, 0);
    }
    if let Some(id) = ipc {
        key.data.identity = id.to_be_bytes();
        if let Some(v) = POLICY.get(&key) {
            return out.entry(v.flags, id, v.rule);
        }
    }
    if let Some(id) = cidr {
        key.data.identity = id.to_be_bytes();
        if let Some(v) = POLICY.get(&key) {
            return out.entry(v.flags, id, v.rule);
        }
    }
    key.data.identity = identity::ANY.to_be_bytes();
    if let Some(v) = POLICY.get(&key) {
        return out.entry(v.flags, peer_identity, v.rule);
    }
    out.set(false, reason::NO_RULE, peer_identity, 0)
}

/// Whether the as-enforced view (the policies in audit mode counted as
/// enforced; entries under `dir::audit(q.dir)`) would drop the packet `q`
/// that the enforced view allows: the same peer identities, the same
/// longest-prefix lookups, under the pseudo-direction. Asked only for
/// endpoints with an `ep_flags::AUDIT_*` bit (see `Verdict::audit`).
#[inline(never)]
pub fn audit_denies(q: &Query) -> bool {
    let ipc_key = IpcacheKey {
        gen: u32::from(q.gen),
        addr: q.peer,
    };
    // SAFETY: copied out at once.
    let ipc = unsafe { IPCACHE.get(&ipc_key) }.map(|v| v.identity);
    let cidr_key = Key::new(
        CIDR_KEY_HEAD_BITS + 128,
        CidrKey {
            gen: q.gen,
            pad: [0, 0, 0],
            addr: q.peer,
        },
    );
    let cidr = CIDRS.get(&cidr_key).map(|v| v.identity);
    let (prefix, dport) = if q.ports_known {
        (POLICY_PREFIX_FULL, q.dport)
    } else {
        (POLICY_PREFIX_ANY_PORT, 0)
    };
    let mut key = Key::new(
        prefix,
        PolicyKey::new(
            q.gen,
            dir::audit(q.dir),
            q.ep_id,
            identity::ANY,
            q.proto,
            dport,
        ),
    );
    if let Some(id) = ipc {
        key.data.identity = id.to_be_bytes();
        if POLICY.get(&key).is_some() {
            return false;
        }
    }
    if let Some(id) = cidr {
        key.data.identity = id.to_be_bytes();
        if POLICY.get(&key).is_some() {
            return false;
        }
    }
    key.data.identity = identity::ANY.to_be_bytes();
    POLICY.get(&key).is_none()
}
