//! `node_egress`: the check on the node's overlay device (tc egress, e.g.
//! Flannel's `flannel.1`), where a local pod's packet to a backend on
//! another node shows up translated and not masqueraded. The sending pod's
//! egress is judged there, as the backend's hook does for local backends
//! (see [`crate::service`]); packets whose source is no local endpoint
//! (the node's own, other nodes' forwarded ones) pass untouched, and a
//! packet still addressed to a ClusterIP (a port kube-proxy does not
//! translate) is dropped: it has no backend.

use core::mem::MaybeUninit;

use aya_ebpf::programs::TcContext;
use policy_common::dir;

use crate::{
    maps::SCRATCH,
    packet::{kind, parse, Flow},
    pipeline::{self, PacketCtx, ALLOW},
    policy::Verdict,
    service,
};

/// Runs the check for one packet leaving through the overlay device.
#[inline(always)]
pub fn run(ctx: &TcContext) -> i32 {
    // SAFETY: reading a field of the context the kernel passed us.
    let ifindex = unsafe { (*ctx.skb.skb).ifindex };
    // The generation comes from the revision, read as the pipeline reads
    // it (one aligned load), never from a copy of the whole entry, which
    // could mix an old generation with a new revision.
    let Some(cfg) = pipeline::read_config() else {
        return ALLOW;
    };
    let mut pkt = PacketCtx {
        cfg,
        ifindex,
        ep_id: 0,
        dir: dir::EGRESS,
        gen: (cfg.revision & 1) as u8,
        local_origin: false,
        node_hook: true,
    };
    let mut outer = MaybeUninit::<Flow>::uninit();
    let outer = Flow::init(&mut outer);
    let Some(scratch) = SCRATCH.get_ptr_mut(0) else {
        return ALLOW;
    };
    // SAFETY: as in `pipeline::run`: this CPU's slot, one packet at a time
    // (`parse` clears it when it has a quoted packet to write).
    let inner = unsafe { &mut *scratch };
    let k = parse(ctx, outer, inner);
    if k != kind::FLOW && k != kind::ICMP_ERROR {
        return ALLOW;
    }
    pkt.ep_id = service::local_ep(pkt.gen, &outer.saddr);
    if pkt.ep_id == 0 {
        return ALLOW;
    }
    let mut v = Verdict::empty();
    if k == kind::ICMP_ERROR && pipeline::related(&pkt, outer, inner) {
        return ALLOW;
    }
    pipeline::on_flow(&pkt, outer, &mut v)
}
