//! Verdict events to user space through the ring buffer. A full ring
//! buffer loses the event, never the verdict.
//!
//! Drop events are rate-limited per endpoint (and CPU): at most
//! [`EVENT_BUDGET`] a window, a repeat of the last reported drop is not
//! sent again within the window, and whatever is held back is reported as
//! a count in the endpoint's next event. A flood of drops thus costs a
//! bounded number of ring buffer writes; the exact numbers are in the drop
//! counters.

use aya_ebpf::helpers::bpf_ktime_get_ns;
use policy_common::{verdict, EventBudget, VerdictEvent, EVENT_BUDGET, EVENT_WINDOW_NS};

use crate::{
    maps::{EVENTS, EVENT_BUDGET as BUDGETS},
    packet::Flow,
    pipeline::PacketCtx,
    policy::Verdict,
};

/// What one event reports.
pub struct EventInfo<'a> {
    /// Endpoint and direction.
    pub pkt: &'a PacketCtx,
    /// The packet's flow (empty if it could not be parsed).
    pub flow: &'a Flow,
    /// The verdict and why.
    pub verdict: &'a Verdict,
    /// `policy_common::verdict` value.
    pub outcome: u8,
}

/// A digest of what a drop event would say (flow and reason).
#[inline(always)]
fn digest(info: &EventInfo<'_>) -> u32 {
    let f = info.flow;
    let mut h: u32 = 0x811c_9dc5;
    let mut mix = |x: u32| h = (h ^ x).wrapping_mul(0x0100_0193);
    mix(u32::from_ne_bytes([
        f.saddr[12],
        f.saddr[13],
        f.saddr[14],
        f.saddr[15],
    ]));
    mix(u32::from_ne_bytes([
        f.daddr[12],
        f.daddr[13],
        f.daddr[14],
        f.daddr[15],
    ]));
    mix(u32::from(f.sport) << 16 | u32::from(f.dport));
    mix(u32::from(f.proto) << 8 | u32::from(info.verdict.reason));
    h
}

/// Whether a drop event may be sent now; if so, how many drops of the
/// endpoint it also stands for.
#[inline(never)]
fn budget(info: &EventInfo<'_>) -> Option<u32> {
    let ep = info.pkt.ep_id;
    // SAFETY: helper without preconditions.
    let t = unsafe { bpf_ktime_get_ns() };
    let d = digest(info);
    let Some(b) = BUDGETS.get_ptr_mut(&ep) else {
        let fresh = EventBudget {
            window_ns: t,
            sent: 1,
            suppressed: 0,
            last: d,
            pad: 0,
        };
        let _ = BUDGETS.insert(&ep, &fresh, 0);
        return Some(0);
    };
    // SAFETY: this CPU's value of a per-CPU map entry.
    let b = unsafe { &mut *b };
    if t.saturating_sub(b.window_ns) > EVENT_WINDOW_NS {
        b.window_ns = t;
        b.sent = 0;
    } else if b.sent >= EVENT_BUDGET || b.last == d {
        b.suppressed = b.suppressed.saturating_add(1);
        return None;
    }
    b.sent += 1;
    b.last = d;
    let carried = b.suppressed;
    b.suppressed = 0;
    Some(carried)
}

/// Sends one event (lost silently if the ring buffer is full); drops and
/// would-drops go through the endpoint's event budget.
#[inline(never)]
pub fn emit(info: &EventInfo<'_>) {
    let suppressed = if info.outcome == verdict::DROPPED || info.outcome == verdict::WOULD_DROP {
        match budget(info) {
            Some(n) => n,
            None => return,
        }
    } else {
        0
    };
    let Some(mut entry) = EVENTS.reserve::<VerdictEvent>(0) else {
        return;
    };
    let ev = entry.as_mut_ptr();
    // SAFETY: `ev` points at a reserved, writable VerdictEvent in the ring
    // buffer; every field is written before submit.
    unsafe {
        (*ev).ts_ns = bpf_ktime_get_ns();
        (*ev).ep_id = info.pkt.ep_id;
        (*ev).ifindex = info.pkt.ifindex;
        (*ev).peer_identity = info.verdict.peer_identity;
        (*ev).rule = info.verdict.rule;
        (*ev).dir = info.pkt.dir;
        (*ev).proto = info.flow.proto;
        (*ev).verdict = info.outcome;
        (*ev).reason = info.verdict.reason;
        (*ev).sport = info.flow.sport;
        (*ev).dport = info.flow.dport;
        (*ev).saddr = info.flow.saddr;
        (*ev).daddr = info.flow.daddr;
        (*ev).suppressed = suppressed;
        (*ev).pad = 0;
    }
    entry.submit(0);
}
