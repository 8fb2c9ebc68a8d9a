//! One packet's way through a classifier: endpoint, config, parse,
//! conntrack, verdict, events.

use aya_ebpf::{
    bindings::{TC_ACT_SHOT, TC_ACT_UNSPEC},
    programs::TcContext,
};
use policy_common::{dir, reason, verdict, Config, LAYOUT_VERSION};

use crate::{
    conntrack,
    events::{emit, EventInfo},
    maps::{CONFIG, ENDPOINTS},
    packet::{kind, parse, Flow},
    policy::{judge, Query, Verdict},
};

/// Let the packet go on (the next tcx program, or the stack).
const ALLOW: i32 = TC_ACT_UNSPEC;
/// Drop the packet.
const DROP: i32 = TC_ACT_SHOT as i32;

/// Event flag in `Config::flags`: also report allowed new flows.
const CFG_EVENTS_ALLOWED: u32 = 1 << 0;

/// What every stage needs to know about the packet's endpoint.
pub struct PacketCtx {
    /// Configuration read once for this packet.
    pub cfg: Config,
    /// Host-side veth ifindex.
    pub ifindex: u32,
    /// Endpoint id.
    pub ep_id: u32,
    /// Direction relative to the pod.
    pub dir: u8,
    /// Active generation.
    pub gen: u8,
}

/// Runs the pipeline for a packet of the endpoint behind this veth, in
/// direction `d` relative to the pod.
#[inline(always)]
pub fn run(ctx: &TcContext, d: u8) -> i32 {
    // SAFETY: reading a field of the context the kernel passed us.
    let ifindex = unsafe { (*ctx.skb.skb).ifindex };
    let mut pkt = PacketCtx {
        cfg: Config::default(),
        ifindex,
        ep_id: 0,
        dir: d,
        gen: 0,
    };
    let mut outer = Flow::empty();
    let mut v = Verdict::empty();
    // SAFETY: copied out at once.
    match unsafe { ENDPOINTS.get(&ifindex) } {
        Some(ep) => pkt.ep_id = ep.ep_id,
        None => {
            v.reason = reason::NOT_READY;
            return drop(&pkt, &outer, &v);
        }
    }
    match CONFIG.get(0) {
        Some(c) if c.layout_version == LAYOUT_VERSION => pkt.cfg = *c,
        _ => {
            v.reason = reason::NOT_READY;
            return drop(&pkt, &outer, &v);
        }
    }
    pkt.gen = (pkt.cfg.active_gen & 1) as u8;
    let mut inner = Flow::empty();
    match parse(ctx, &mut outer, &mut inner) {
        kind::PASS => ALLOW,
        kind::FLOW => on_flow(&pkt, &outer, &mut v),
        kind::ICMP_ERROR => {
            if related(&pkt, &inner) {
                ALLOW
            } else {
                on_flow(&pkt, &outer, &mut v)
            }
        }
        _ => {
            v.reason = reason::MALFORMED;
            drop(&pkt, &outer, &v)
        }
    }
}

/// Whether the packet quoted by an ICMP error belongs to a tracked flow.
/// The quoted packet travelled the other way: it is a packet of a flow
/// that started in opposite(d), or a reply of one that started in d.
#[inline(never)]
fn related(pkt: &PacketCtx, inner: &Flow) -> bool {
    let back = conntrack::opposite(pkt.dir);
    conntrack::exists(&conntrack::forward_key(pkt.ep_id, back, inner))
        || conntrack::exists(&conntrack::reverse_key(pkt.ep_id, back, inner))
}

#[inline(never)]
fn on_flow(pkt: &PacketCtx, flow: &Flow, v: &mut Verdict) -> i32 {
    if flow.ports_known {
        match conntrack::lookup(pkt, flow, v) {
            conntrack::PASS => return ALLOW,
            conntrack::DENIED => {
                v.reason = reason::REVISION_DENIED;
                return drop(pkt, flow, v);
            }
            _ => {}
        }
    }
    let q = Query {
        peer: if pkt.dir == dir::EGRESS {
            flow.daddr
        } else {
            flow.saddr
        },
        ep_id: pkt.ep_id,
        dport: flow.policy_dport,
        gen: pkt.gen,
        dir: pkt.dir,
        proto: flow.proto,
        ports_known: flow.ports_known,
    };
    judge(&q, v);
    if !v.allow {
        if !flow.ports_known && v.reason == reason::NO_RULE {
            v.reason = reason::FRAGMENT;
        }
        return drop(pkt, flow, v);
    }
    if flow.create {
        conntrack::create(pkt, flow);
        if pkt.cfg.flags & CFG_EVENTS_ALLOWED != 0 {
            report(pkt, flow, v, verdict::ALLOWED);
        }
    }
    ALLOW
}

#[inline(always)]
fn drop(pkt: &PacketCtx, flow: &Flow, v: &Verdict) -> i32 {
    report(pkt, flow, v, verdict::DROPPED);
    DROP
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
