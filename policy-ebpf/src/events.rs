//! Verdict events to user space through the ring buffer. A full ring
//! buffer loses the event, never the verdict.

use aya_ebpf::helpers::bpf_ktime_get_ns;
use policy_common::VerdictEvent;

use crate::{maps::EVENTS, packet::Flow, pipeline::PacketCtx, policy::Verdict};

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

/// Sends one event (lost silently if the ring buffer is full).
#[inline(never)]
pub fn emit(info: &EventInfo<'_>) {
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
    }
    entry.submit(0);
}
