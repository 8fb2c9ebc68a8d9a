//! One packet's way through a classifier: endpoint, config, parse,
//! conntrack, verdict, events.

use core::mem::MaybeUninit;

use aya_ebpf::{
    bindings::{TC_ACT_SHOT, TC_ACT_UNSPEC},
    programs::TcContext,
};
use policy_common::{
    config_flags, dir, reason, v4_mapped, verdict, Addr, SourceKey, LAYOUT_VERSION,
};

use crate::{
    conntrack,
    events::{emit, EventInfo},
    link,
    maps::{CONFIG, DROPS, ENDPOINTS, SCRATCH, SOURCES},
    packet::{kind, parse, Flow},
    policy::{judge, Query, Verdict},
    service::{self, sender_denies},
};

/// Let the packet go on (the next tcx program, or the stack).
pub const ALLOW: i32 = TC_ACT_UNSPEC;
/// Drop the packet.
const DROP: i32 = TC_ACT_SHOT as i32;

/// What every stage needs to know about the packet's endpoint.
pub struct PacketCtx {
    /// Configuration read once for this packet (the generation is
    /// derived from the revision, see [`read_config`]).
    pub cfg: PacketConfig,
    /// Host-side veth ifindex.
    pub ifindex: u32,
    /// Endpoint id.
    pub ep_id: u32,
    /// Direction relative to the pod.
    pub dir: u8,
    /// Active generation.
    pub gen: u8,
    /// The node's own stack sent the packet (no ingress interface): the
    /// only case where a node address is exempt from ingress policy.
    pub local_origin: bool,
    /// The packet is at the node's overlay device (`node_egress`), already
    /// translated: never deferred again.
    pub node_hook: bool,
}

/// Runs the pipeline for a packet of the endpoint behind this veth, in
/// direction `d` relative to the pod.
#[inline(always)]
pub fn run(ctx: &TcContext, d: u8) -> i32 {
    // SAFETY: reading fields of the context the kernel passed us.
    let (ifindex, ingress_ifindex) =
        unsafe { ((*ctx.skb.skb).ifindex, (*ctx.skb.skb).ingress_ifindex) };
    // The endpoint and the configuration are read before the context is
    // built, so that it is built from them in one go: clearing it first
    // and filling it in would be a `memset` call.
    // SAFETY: a map value, read for this packet only.
    let ep = unsafe { ENDPOINTS.get(&ifindex) };
    let ep_id = ep.map(|ep| ep.ep_id);
    let cfg = match ep_id {
        Some(_) => read_config(),
        None => None,
    };
    let (Some(ep), Some(ep_id), Some(cfg)) = (ep, ep_id, cfg) else {
        return not_ready(ifindex, ep_id.unwrap_or(0), d, ingress_ifindex == 0);
    };
    let pkt = PacketCtx {
        cfg,
        ifindex,
        ep_id,
        dir: d,
        gen: (cfg.revision & 1) as u8,
        local_origin: ingress_ifindex == 0,
        node_hook: false,
    };
    let mut outer = MaybeUninit::<Flow>::uninit();
    let outer = Flow::init(&mut outer);
    let mut v = Verdict::empty();
    // The quoted packet of an ICMP error lives in per-CPU scratch space,
    // not on the stack: the verifier's 512-byte limit covers the deepest
    // call chain (this frame, `on_flow`, conntrack, `judge`). `parse`
    // clears it when it has one to write.
    let Some(inner) = SCRATCH.get_ptr_mut(0) else {
        v.reason = reason::MALFORMED;
        return drop(&pkt, outer, &v);
    };
    // SAFETY: this CPU's scratch entry; tc programs do not nest on a CPU.
    let inner = unsafe { &mut *inner };
    // The Ethernet source is checked before parsing, so that the endpoint
    // entry is not kept across it (the verifier's 512-byte stack): its
    // verdict waits in `v.reason`.
    if d == dir::EGRESS && !link::mac_ok(ctx, ep) {
        v.reason = reason::SPOOFED;
    }
    let k = parse(ctx, outer, inner);
    if d == dir::EGRESS
        && k != kind::MALFORMED
        && (v.reason == reason::SPOOFED
            || !source_ok(pkt.ep_id, &outer.saddr, k)
            || (k == kind::LINK && !link::nd_ok(ifindex, outer)))
    {
        v.reason = reason::SPOOFED;
        return drop(&pkt, outer, &v);
    }
    if d == dir::INGRESS && (k == kind::FLOW || k == kind::ICMP_ERROR) {
        // Also for an ICMP error (whose client it clears): one judged as a
        // flow must not take the previous packet's client.
        crate::client::note(ctx);
    }
    match k {
        kind::LINK => ALLOW,
        kind::FLOW => on_flow(&pkt, outer, &mut v),
        kind::ICMP_ERROR => {
            if related(&pkt, outer, inner) {
                ALLOW
            } else {
                on_flow(&pkt, outer, &mut v)
            }
        }
        _ => {
            v.reason = reason::MALFORMED;
            drop(&pkt, outer, &v)
        }
    }
}

/// Drops a packet of an endpoint that is not ready (no endpoint entry:
/// `ep_id` 0; or the maps not configured for this layout), reported with
/// an empty flow and configuration.
#[inline(never)]
fn not_ready(ifindex: u32, ep_id: u32, d: u8, local_origin: bool) -> i32 {
    let pkt = PacketCtx {
        cfg: PacketConfig::default(),
        ifindex,
        ep_id,
        dir: d,
        gen: 0,
        local_origin,
        node_hook: false,
    };
    let outer = Flow::empty();
    let mut v = Verdict::empty();
    v.reason = reason::NOT_READY;
    drop(&pkt, &outer, &v)
}

/// What a packet needs of the configuration (read once per packet).
#[derive(Clone, Copy, Default)]
pub struct PacketConfig {
    /// `Config::revision`.
    pub revision: u32,
    /// `Config::flags`.
    pub flags: u32,
}

/// Reads the configuration; `None` when the maps are not configured for
/// this layout. The generation is derived from the revision
/// (`revision & 1`, which user space keeps equal to `active_gen`), so the
/// pair a packet uses comes from one aligned 32-bit load and can never mix
/// an old generation with a new revision, even if user space's write of
/// the entry is not atomic as a whole. (Not the whole `Config`: the packet
/// context sits on the entry frame, whose stack the verifier bounds.)
#[inline(always)]
pub fn read_config() -> Option<PacketConfig> {
    let c = CONFIG.get_ptr(0)?;
    // SAFETY: a pointer to the array's single, always present entry; each
    // field is read once with its own aligned load.
    let (layout, revision, flags) = unsafe {
        (
            core::ptr::read_volatile(&(*c).layout_version),
            core::ptr::read_volatile(&(*c).revision),
            core::ptr::read_volatile(&(*c).flags),
        )
    };
    if layout != LAYOUT_VERSION {
        return None;
    }
    Some(PacketConfig { revision, flags })
}

/// Source validation of a packet leaving the pod: its source must be one
/// of the endpoint's addresses. Link control ([`kind::LINK`]) may also use
/// the unspecified address (ARP probes, IPv6 duplicate address detection)
/// or an IPv6 link-local one (neighbour and router solicitations, MLD).
#[inline(never)]
fn source_ok(ep_id: u32, saddr: &Addr, k: u8) -> bool {
    if k == kind::LINK
        && (*saddr == [0; 16]
            || *saddr == v4_mapped([0; 4])
            || (saddr[0] == 0xfe && saddr[1] & 0xc0 == 0x80))
    {
        return true;
    }
    let key = SourceKey {
        ep_id,
        addr: *saddr,
    };
    // SAFETY: only presence is used.
    unsafe { SOURCES.get(&key) }.is_some()
}

/// Whether the ICMP error `outer`, quoting `inner`, belongs to a tracked
/// flow. The quoted packet travelled the other way: it is a packet of a
/// flow that started in opposite(d), or a reply of one that started in d.
/// As Linux conntrack requires, the error must go back to the quoted
/// packet's sender (its destination is the quoted source); its source may
/// be any router on the way.
#[inline(never)]
pub fn related(pkt: &PacketCtx, outer: &Flow, inner: &Flow) -> bool {
    if outer.daddr != inner.saddr {
        return false;
    }
    let back = conntrack::opposite(pkt.dir);
    conntrack::exists(&conntrack::forward_key(pkt.ep_id, back, inner))
        || conntrack::exists(&conntrack::reverse_key(pkt.ep_id, back, inner))
}

#[inline(never)]
pub fn on_flow(pkt: &PacketCtx, flow: &Flow, v: &mut Verdict) -> i32 {
    if !flow.ports_known && conntrack::fragment_follows(pkt, flow) {
        // A later fragment of a datagram whose first fragment passed.
        return ALLOW;
    }
    if flow.ports_known {
        match conntrack::lookup(pkt, flow, v) {
            conntrack::PASS => {
                conntrack::fragment_passed(pkt, flow);
                return ALLOW;
            }
            conntrack::DENIED => {
                v.reason = reason::REVISION_DENIED;
                return drop(pkt, flow, v);
            }
            r @ (conntrack::CHECK_SENDER | conntrack::CHECK_SENDER_REPLY) => {
                let reply = r == conntrack::CHECK_SENDER_REPLY;
                let sender = sender_denies(pkt.gen, flow, reply, v);
                if sender == 0 {
                    conntrack::fragment_passed(pkt, flow);
                    return ALLOW;
                }
                conntrack::forget(pkt, flow, reply);
                v.reason = reason::REVISION_DENIED;
                return drop_for_sender(pkt, flow, v, sender);
            }
            _ => {}
        }
    }
    if pkt.dir == dir::EGRESS {
        let to = service::to(flow.proto, flow.policy_dport);
        match service::defer(pkt.gen, pkt.ep_id, &flow.daddr, to, pkt.cfg.flags) {
            service::DEFER if !pkt.node_hook => {
                // To a ClusterIP: judged where the translated packet shows up.
                if flow.create && !conntrack::create(pkt, flow, conntrack::ST_DEFERRED) {
                    return over_budget(pkt, flow, v);
                }
                return ALLOW;
            }
            service::NOT_SERVICE => {}
            _ => {
                // Fail closed, or (at the overlay) never translated.
                v.reason = reason::NO_RULE;
                return drop(pkt, flow, v);
            }
        }
    }
    judge_packet(pkt, flow, v);
    if !v.allow {
        if !flow.ports_known && v.reason == reason::NO_RULE {
            v.reason = reason::FRAGMENT;
        }
        return drop(pkt, flow, v);
    }
    conntrack::fragment_passed(pkt, flow);
    if pkt.dir == dir::INGRESS {
        let sender = sender_denies(pkt.gen, flow, false, v);
        if sender != 0 {
            return drop_for_sender(pkt, flow, v, sender);
        }
    }
    if flow.create {
        let state = if pkt.local_origin {
            conntrack::ST_LOCAL_ORIGIN
        } else {
            0
        };
        if !conntrack::create(pkt, flow, state) {
            return over_budget(pkt, flow, v);
        }
        if pkt.cfg.flags & config_flags::EVENTS_ALLOWED != 0 {
            report(pkt, flow, v, verdict::ALLOWED);
        }
        if v.audit {
            would_drop(pkt, flow, v);
        }
    }
    ALLOW
}

/// Reports a new flow the policies in audit mode would drop (it passes).
/// A frame of its own, off [`on_flow`]'s.
#[inline(never)]
fn would_drop(pkt: &PacketCtx, flow: &Flow, v: &Verdict) {
    let mut w = *v;
    w.reason = reason::AUDIT_NO_RULE;
    w.rule = 0;
    report(pkt, flow, &w, verdict::WOULD_DROP);
}

/// Drops a new flow of an endpoint that holds its conntrack budget (a
/// frame of its own: one more inlined drop would grow [`on_flow`]'s
/// frame past the verifier's stack).
#[inline(never)]
fn over_budget(pkt: &PacketCtx, flow: &Flow, v: &mut Verdict) -> i32 {
    v.allow = false;
    v.reason = reason::CT_BUDGET;
    drop(pkt, flow, v)
}

/// The endpoint's own verdict on the packet (its query built here, off
/// [`on_flow`]'s stack frame).
#[inline(never)]
fn judge_packet(pkt: &PacketCtx, flow: &Flow, v: &mut Verdict) {
    let q = Query {
        peer: if pkt.dir == dir::EGRESS {
            flow.daddr
        } else {
            // A masqueraded NodePort client is judged as itself.
            crate::client::current().unwrap_or(flow.saddr)
        },
        ep_id: pkt.ep_id,
        dport: flow.policy_dport,
        gen: pkt.gen,
        dir: pkt.dir,
        proto: flow.proto,
        ports_known: flow.ports_known,
        local_origin: pkt.local_origin,
    };
    judge(&q, v);
    if v.allow && v.audit {
        v.audit = crate::policy::audit_denies(&q);
    } else {
        v.audit = false;
    }
}

/// Drops a packet that the sending local endpoint's egress denies (judged
/// at the receiver's hook, after translation): reported as that
/// endpoint's egress drop.
#[inline(never)]
fn drop_for_sender(pkt: &PacketCtx, flow: &Flow, v: &Verdict, sender: u32) -> i32 {
    let as_sender = PacketCtx {
        cfg: pkt.cfg,
        ifindex: pkt.ifindex,
        ep_id: sender,
        dir: dir::EGRESS,
        gen: pkt.gen,
        local_origin: false,
        node_hook: pkt.node_hook,
    };
    drop(&as_sender, flow, v)
}

#[inline(always)]
fn drop(pkt: &PacketCtx, flow: &Flow, v: &Verdict) -> i32 {
    count_drop(v.reason);
    report(pkt, flow, v, verdict::DROPPED);
    DROP
}

/// Counts a drop by reason (per CPU, so no atomic is needed).
#[inline(never)]
fn count_drop(reason: u8) {
    if let Some(n) = DROPS.get_ptr_mut(u32::from(reason)) {
        // SAFETY: a pointer to this CPU's slot of an array entry.
        unsafe { *n += 1 };
    }
}

#[inline(always)]
fn report(pkt: &PacketCtx, flow: &Flow, v: &Verdict, verdict: u8) {
    emit(&EventInfo {
        pkt,
        flow,
        verdict: v,
        outcome: verdict,
    });
}
