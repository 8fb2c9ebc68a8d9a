//! Palisade's tc programs, attached to each pod's host-side veth.
//!
//! - `pod_egress` runs at tc **ingress** of the host-side veth: packets the
//!   pod sends.
//! - `pod_ingress` runs at tc **egress** of the host-side veth: packets
//!   delivered to the pod.
//! - `node_egress` runs at tc **egress** of the node's overlay device:
//!   local pods' packets to other nodes, after kube-proxy's translation.
//! - `node_ingress` runs at tc **ingress** of the node's external devices:
//!   it remembers who sent each arriving packet, so a NodePort client
//!   kube-proxy masquerades is still judged on its own address.
//!
//! Both look the endpoint up by the veth's ifindex, read the active
//! generation from the config map, parse the packet, consult conntrack and,
//! for new flows (or flows admitted under an older policy revision), run the
//! verdict algorithm of [`policy::judge`] — the same algorithm as the
//! user-space lookup model in `policy-engine`.
//!
//! On the host this crate builds as an empty stub so that `cargo build
//! --workspace` works; the real object is built for the bpf target by
//! `policy-agent`'s build script.
#![cfg_attr(target_arch = "bpf", no_std)]
#![cfg_attr(target_arch = "bpf", no_main)]
// The conntrack budget's shared counters need an atomic add, which the
// eBPF target's core offers only as an intrinsic.
#![cfg_attr(target_arch = "bpf", feature(core_intrinsics))]
#![cfg_attr(target_arch = "bpf", allow(internal_features))]

#[cfg(target_arch = "bpf")]
mod client;
#[cfg(target_arch = "bpf")]
mod conntrack;
#[cfg(target_arch = "bpf")]
mod ct_budget;
#[cfg(target_arch = "bpf")]
mod events;
#[cfg(target_arch = "bpf")]
mod link;
#[cfg(target_arch = "bpf")]
mod maps;
#[cfg(target_arch = "bpf")]
mod node;
#[cfg(target_arch = "bpf")]
mod packet;
#[cfg(target_arch = "bpf")]
mod pipeline;
#[cfg(target_arch = "bpf")]
mod policy;
#[cfg(target_arch = "bpf")]
mod service;

#[cfg(target_arch = "bpf")]
mod entry {
    use aya_ebpf::{macros::classifier, programs::TcContext};
    use policy_common::dir;

    use crate::pipeline;

    /// Packets leaving the pod (tc ingress of the host-side veth).
    #[classifier]
    pub fn pod_egress(ctx: TcContext) -> i32 {
        pipeline::run(&ctx, dir::EGRESS)
    }

    /// Packets entering the pod (tc egress of the host-side veth).
    #[classifier]
    pub fn pod_ingress(ctx: TcContext) -> i32 {
        pipeline::run(&ctx, dir::INGRESS)
    }

    /// Local pods' packets leaving the node through its overlay device (tc
    /// egress): their egress, judged after kube-proxy's translation.
    #[classifier]
    pub fn node_egress(ctx: TcContext) -> i32 {
        crate::node::run(&ctx)
    }

    /// Packets arriving at the node from outside (tc ingress of its
    /// external devices): their clients, for NodePort connections
    /// kube-proxy masquerades. Never drops.
    #[classifier]
    pub fn node_ingress(ctx: TcContext) -> i32 {
        crate::client::node_ingress(&ctx)
    }
}

#[cfg(target_arch = "bpf")]
#[panic_handler]
fn panic(_: &core::panic::PanicInfo) -> ! {
    loop {}
}

/// The kernel only lets GPL-compatible programs call some helpers.
#[cfg(target_arch = "bpf")]
#[unsafe(link_section = "license")]
#[unsafe(no_mangle)]
static LICENSE: [u8; 13] = *b"Dual MIT/GPL\0";

#[cfg(not(target_arch = "bpf"))]
fn main() {}
