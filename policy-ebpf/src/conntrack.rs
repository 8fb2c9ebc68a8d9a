//! Connection tracking. Entries are per endpoint and per direction of the
//! flow's first packet, so the two checks of a local pod→pod connection
//! (A's egress, B's ingress) never share an entry.
//!
//! A packet at endpoint `E` in direction `D` is looked up as
//! `(E, D, src, dst)` (a packet of a flow `E` saw start in `D`) and then as
//! `(E, opposite(D), dst, src)` (a reply to a flow that started the other
//! way). An entry admitted under an older policy revision is judged again
//! in its original direction: allowed → its revision is updated; denied →
//! it is deleted and the packet dropped.

use aya_ebpf::helpers::bpf_ktime_get_ns;
use policy_common::{ct_state, dir, proto, CtKey, CtValue, FragKey};

use crate::{
    ct_budget,
    maps::{CONNTRACK, CT_CLIENTS, FRAGMENTS},
    packet::{frag, Flow},
    pipeline::PacketCtx,
    policy::{judge, Query, Verdict},
    service,
};

/// A reply has been seen.
const ST_REPLIED: u32 = ct_state::REPLIED;
/// The flow is over (see [`ct_state::CLOSING`]).
const ST_CLOSING: u32 = ct_state::CLOSING;
/// The initiator closed its side (FIN / SHUTDOWN): a half-close, the
/// responder may go on sending and its packets keep the reply path.
const ST_FIN_FWD: u32 = 1 << 2;
/// The responder closed its side.
const ST_FIN_REV: u32 = 1 << 3;

/// An established packet refreshes `last_seen_ns` (a write to an entry
/// every CPU of the flow shares) only when it is older than this; timeouts
/// are at least 10 s, so expiry is at most this much early.
const REFRESH_NS: u64 = SEC;
/// A pod's flow to a Service ClusterIP: its egress is judged (and judged
/// again after a policy change) where the translated packet shows up, never
/// here against the ClusterIP.
pub const ST_DEFERRED: u32 = 1 << 4;
/// The flow's first packet came from the node's own stack.
pub const ST_LOCAL_ORIGIN: u32 = 1 << 5;
/// The flow was judged on a client other than its source (a NodePort
/// client kube-proxy masqueraded), kept in [`CT_CLIENTS`].
pub const ST_CLIENT: u32 = 1 << 6;
/// Bits fixed when the entry is created.
const ST_ORIGIN_BITS: u32 = ST_DEFERRED | ST_LOCAL_ORIGIN | ST_CLIENT;

const SEC: u64 = 1_000_000_000;

/// The other direction.
#[inline(always)]
pub const fn opposite(d: u8) -> u8 {
    if d == dir::INGRESS {
        dir::EGRESS
    } else {
        dir::INGRESS
    }
}

/// Key of `flow` seen at `ep_id` in direction `d`, in forward orientation.
#[inline(always)]
pub fn forward_key(ep_id: u32, d: u8, flow: &Flow) -> CtKey {
    CtKey {
        ep_id,
        dir: d,
        proto: flow.proto,
        sport: flow.sport.to_be_bytes(),
        dport: flow.dport.to_be_bytes(),
        pad: [0; 2],
        saddr: flow.saddr,
        daddr: flow.daddr,
    }
}

/// Key of a flow that started in the opposite direction and of which
/// `flow` is a reply.
#[inline(always)]
pub fn reverse_key(ep_id: u32, d: u8, flow: &Flow) -> CtKey {
    CtKey {
        ep_id,
        dir: opposite(d),
        proto: flow.proto,
        sport: flow.dport.to_be_bytes(),
        dport: flow.sport.to_be_bytes(),
        pad: [0; 2],
        saddr: flow.daddr,
        daddr: flow.saddr,
    }
}

#[inline(always)]
fn now() -> u64 {
    // SAFETY: helper without preconditions.
    unsafe { bpf_ktime_get_ns() }
}

#[inline(always)]
fn timeout(proto_nr: u8, state: u32) -> u64 {
    ct_state::timeout_ns(proto_nr, state)
}

/// Whether a live (not expired) entry exists for `key`.
#[inline(never)]
pub fn exists(key: &CtKey) -> bool {
    match CONNTRACK.get_ptr(key) {
        Some(v) => {
            // SAFETY: a map value pointer from a successful lookup.
            let v = unsafe { &*v };
            now().saturating_sub(v.last_seen_ns) <= timeout(key.proto, v.state)
        }
        None => false,
    }
}

/// No live entry: judge the packet as a new flow.
pub const UNTRACKED: u8 = 0;
/// Part of a tracked flow that is still allowed.
pub const PASS: u8 = 1;
/// The flow's entry was judged again and is now denied (entry removed);
/// the verdict says why.
pub const DENIED: u8 = 2;
/// Judged again and allowed by the endpoint's ingress: the sender's
/// egress (if the sender is local) must be judged again too, on the packet
/// as it is ([`forget`] the entry if it denies).
pub const CHECK_SENDER: u8 = 3;
/// As [`CHECK_SENDER`], the packet being a reply of the tracked flow.
pub const CHECK_SENDER_REPLY: u8 = 4;

/// Looks `flow` up in both orientations and updates the entry found;
/// returns [`UNTRACKED`], [`PASS`] or [`DENIED`] (then `out` holds the
/// verdict).
#[inline(never)]
pub fn lookup(pkt: &PacketCtx, flow: &Flow, out: &mut Verdict) -> u8 {
    let mut key = forward_key(pkt.ep_id, pkt.dir, flow);
    let r = touch(pkt, &key, false, flow, out);
    if r != UNTRACKED {
        return r;
    }
    key = reverse_key(pkt.ep_id, pkt.dir, flow);
    touch(pkt, &key, true, flow, out)
}

#[inline(always)]
fn touch(pkt: &PacketCtx, key: &CtKey, reply: bool, flow: &Flow, out: &mut Verdict) -> u8 {
    let ptr = match CONNTRACK.get_ptr_mut(key) {
        Some(p) => p,
        None => return UNTRACKED,
    };
    // SAFETY: a map value pointer from a successful lookup; concurrent
    // updates of these counters may race, which only loses an update.
    let v = unsafe { &mut *ptr };
    let t = now();
    let mut recheck_sender = false;
    if t.saturating_sub(v.last_seen_ns) > timeout(key.proto, v.state) {
        remove(key);
        return UNTRACKED;
    }
    if v.revision != pkt.cfg.revision && v.state & ST_DEFERRED == 0 {
        let dport = match key.proto {
            proto::TCP | proto::UDP | proto::SCTP => u16::from_be_bytes(key.dport),
            _ => 0,
        };
        let q = Query {
            peer: if key.dir == dir::EGRESS {
                key.daddr
            } else if v.state & ST_CLIENT != 0 {
                // SAFETY: copied out at once.
                unsafe { CT_CLIENTS.get(key) }.copied().unwrap_or(key.saddr)
            } else {
                key.saddr
            },
            ep_id: key.ep_id,
            dport,
            gen: pkt.gen,
            dir: key.dir,
            proto: key.proto,
            ports_known: true,
            local_origin: v.state & ST_LOCAL_ORIGIN != 0,
        };
        judge(&q, out);
        if !out.allow {
            remove(key);
            return DENIED;
        }
        v.revision = pkt.cfg.revision;
        if key.dir == dir::INGRESS {
            // The sender's egress too, if it is local (by the caller: one
            // more nested call would not fit the verifier's stack).
            recheck_sender = true;
        }
    } else if v.revision != pkt.cfg.revision {
        let dport = match key.proto {
            proto::TCP | proto::UDP | proto::SCTP => u16::from_be_bytes(key.dport),
            _ => 0,
        };
        let to = service::to(key.proto, dport);
        if service::defer(pkt.gen, key.ep_id, &key.daddr, to, pkt.cfg.flags) == service::DENY {
            remove(key);
            return DENIED;
        }
        v.revision = pkt.cfg.revision;
    }
    let mut state = v.state;
    if !reply && flow.opening && state & (ST_CLOSING | ST_FIN_FWD | ST_FIN_REV) != 0 {
        // A new connection reusing the tuple of a closing one.
        state &= ST_ORIGIN_BITS;
    }
    if reply {
        state |= ST_REPLIED;
    }
    if flow.reset {
        state |= ST_CLOSING;
    } else if flow.closing {
        state |= if reply { ST_FIN_REV } else { ST_FIN_FWD };
        if state & (ST_FIN_FWD | ST_FIN_REV) == ST_FIN_FWD | ST_FIN_REV {
            state |= ST_CLOSING;
        }
    }
    // Write the shared entry only when something changed or the
    // timestamp is getting old, not on every packet.
    if state != v.state {
        v.state = state;
        v.last_seen_ns = t;
        v.refreshes += 1;
    } else if t.saturating_sub(v.last_seen_ns) > REFRESH_NS {
        v.last_seen_ns = t;
        v.refreshes += 1;
    }
    match (recheck_sender, reply) {
        (false, _) => PASS,
        (true, false) => CHECK_SENDER,
        (true, true) => CHECK_SENDER_REPLY,
    }
}

/// Removes the entry `flow` matched (`reply`: in reverse orientation).
#[inline(never)]
pub fn forget(pkt: &PacketCtx, flow: &Flow, reply: bool) {
    let key = if reply {
        reverse_key(pkt.ep_id, pkt.dir, flow)
    } else {
        forward_key(pkt.ep_id, pkt.dir, flow)
    };
    remove(&key);
}

/// Removes `key`'s entry and gives its budget entry back (a frame of its
/// own: inlined, it would grow [`lookup`]'s past the verifier's stack).
#[inline(never)]
fn remove(key: &CtKey) {
    if CONNTRACK.remove(key).is_ok() {
        ct_budget::give_back(key);
    }
}

/// Creates the entry of a new, allowed (or deferred) flow; `origin` holds
/// [`ST_DEFERRED`] and/or [`ST_LOCAL_ORIGIN`]. `false`: the endpoint holds
/// its conntrack budget in this direction, nothing was created and the
/// packet must be dropped (see [`ct_budget`]).
#[inline(never)]
pub fn create(pkt: &PacketCtx, flow: &Flow, origin: u32) -> bool {
    if !ct_budget::take(pkt) {
        return false;
    }
    let key = forward_key(pkt.ep_id, pkt.dir, flow);
    let mut origin = origin;
    if pkt.dir == dir::INGRESS {
        if let Some(client) = crate::client::current() {
            origin |= ST_CLIENT;
            let _ = CT_CLIENTS.insert(&key, &client, 0);
        }
    }
    let value = CtValue {
        last_seen_ns: now(),
        revision: pkt.cfg.revision,
        state: origin
            | if flow.reset {
                ST_CLOSING
            } else if flow.closing {
                ST_FIN_FWD
            } else {
                0
            },
        refreshes: 0,
    };
    let _ = CONNTRACK.insert(&key, &value, 0);
    true
}

#[inline(always)]
fn frag_key(pkt: &PacketCtx, flow: &Flow) -> FragKey {
    FragKey {
        ep_id: pkt.ep_id,
        id: flow.frag_id,
        dir: pkt.dir,
        proto: flow.proto,
        pad: [0; 2],
        saddr: flow.saddr,
        daddr: flow.daddr,
    }
}

/// Remembers that the first fragment of a datagram passed, so its later
/// fragments follow it.
#[inline(never)]
pub fn fragment_passed(pkt: &PacketCtx, flow: &Flow) {
    if flow.frag == frag::FIRST {
        let _ = FRAGMENTS.insert(&frag_key(pkt, flow), &1, 0);
    }
}

/// Whether `flow` is a later fragment of a datagram whose first fragment
/// passed here.
#[inline(never)]
pub fn fragment_follows(pkt: &PacketCtx, flow: &Flow) -> bool {
    flow.frag == frag::LATER && FRAGMENTS.get_ptr(&frag_key(pkt, flow)).is_some()
}
