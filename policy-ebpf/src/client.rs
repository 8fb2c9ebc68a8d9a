//! The client behind a masqueraded NodePort connection.
//!
//! With `externalTrafficPolicy: Cluster`, kube-proxy masquerades a NodePort
//! client as the node (source address and, with `--random-fully`, source
//! port) before the packet reaches the backend's veth, so the pod's check
//! would see the node's address, which is never exempt there (the packet
//! did not come from the node's own stack) but is not the client either.
//!
//! `node_ingress`, at tc ingress of the node's external devices, writes
//! each arriving packet's client into the next slot of this CPU's ring in
//! [`CLIENTS`] and names the slot in the packet's mark, which netfilter's
//! NAT and forwarding keep. The way from the external device to a local
//! pod's veth is one synchronous call chain on one CPU, so the pod's check
//! finds the slot on its own CPU, 4096 packets before it could be reused.
//! The slot also holds what NAT does not change (the IPv4 identification
//! and total length, or the IPv6 flow label and payload length) and the
//! protocol; the client is used only when they match the packet, otherwise
//! the packet is judged as it is (as the node: fail closed). Only this
//! program sets these mark bits; a pod's own marks are cleared when its
//! packets leave its namespace.

use aya_ebpf::{bindings::TC_ACT_UNSPEC, programs::TcContext};
use policy_common::{client_mark, proto, Addr, ClientSlot};

use crate::maps::{CLIENTS, CLIENT_NEXT, CLIENT_NOW};

const ETH_HLEN: usize = 14;
const ETH_P_IP: u16 = 0x0800;
const ETH_P_IPV6: u16 = 0x86DD;

/// (protocol, NAT-invariant check, source address) of an IP packet with
/// TCP, UDP or SCTP.
#[inline(always)]
fn header(ctx: &TcContext) -> Option<(u8, u32, Addr)> {
    let ethertype: [u8; 2] = ctx.load(12).ok()?;
    let (proto_nr, check, saddr) = match u16::from_be_bytes(ethertype) {
        ETH_P_IP => {
            let h: [u8; 20] = ctx.load(ETH_HLEN).ok()?;
            // IPv4-mapped, built as one integer: zeroing an array and
            // filling it in becomes a byte-at-a-time `memset` call.
            let v4 = u32::from_be_bytes([h[12], h[13], h[14], h[15]]);
            let a = (0xffff_u128 << 32 | u128::from(v4)).to_be_bytes();
            let check = u32::from_be_bytes([h[2], h[3], h[4], h[5]]);
            (h[9], check, a)
        }
        ETH_P_IPV6 => {
            let h: [u8; 24] = ctx.load(ETH_HLEN).ok()?;
            let mut a = [0u8; 16];
            a.copy_from_slice(&h[8..24]);
            // Flow label (20 bits) and payload length.
            let label = u32::from_be_bytes([0, h[1] & 0x0f, h[2], h[3]]);
            let check = label ^ (u32::from(u16::from_be_bytes([h[4], h[5]])) << 20);
            (h[6], check, a)
        }
        _ => return None,
    };
    match proto_nr {
        proto::TCP | proto::UDP | proto::SCTP => Some((proto_nr, check, saddr)),
        _ => None,
    }
}

/// `node_ingress`: remembers the client of a packet arriving from outside
/// the node and names its slot in the mark. Never drops.
#[inline(always)]
pub fn node_ingress(ctx: &TcContext) -> i32 {
    let Some((proto_nr, check, saddr)) = header(ctx) else {
        return TC_ACT_UNSPEC;
    };
    let Some(next) = CLIENT_NEXT.get_ptr_mut(0) else {
        return TC_ACT_UNSPEC;
    };
    // SAFETY: this CPU's counter; tc programs do not nest on a CPU.
    let slot = unsafe {
        let n = *next;
        *next = n.wrapping_add(1);
        n & (client_mark::SLOTS - 1)
    };
    let Some(entry) = CLIENTS.get_ptr_mut(slot) else {
        return TC_ACT_UNSPEC;
    };
    // SAFETY: this CPU's copy of an always present array entry.
    unsafe {
        *entry = ClientSlot {
            addr: saddr,
            check,
            proto: proto_nr,
            // Not `[0; 3]`, which becomes a `memset` call.
            pad: [0, 0, 0],
        };
        let skb = ctx.skb.skb;
        (*skb).mark =
            ((*skb).mark & !client_mark::MASK) | client_mark::FLAG | (slot << client_mark::SHIFT);
    }
    TC_ACT_UNSPEC
}

/// At a pod's ingress check: notes in this CPU's [`CLIENT_NOW`] the client
/// the packet stands for, when its mark names a slot of this CPU that still
/// describes it and the client is not the packet's source already; clears
/// it otherwise.
#[inline(never)]
pub fn note(ctx: &TcContext) {
    let Some(now) = CLIENT_NOW.get_ptr_mut(0) else {
        return;
    };
    // SAFETY: reading a field of the context the kernel passed us.
    let mark = unsafe { (*ctx.skb.skb).mark };
    let mut found: Option<Addr> = None;
    if mark & client_mark::FLAG != 0 {
        let slot = (mark >> client_mark::SHIFT) & (client_mark::SLOTS - 1);
        if let (Some(c), Some((proto_nr, check, saddr))) = (CLIENTS.get(slot), header(ctx)) {
            if c.proto == proto_nr && c.check == check && c.addr != saddr {
                found = Some(c.addr);
            }
        }
    }
    // SAFETY: this CPU's entry; tc programs do not nest on a CPU.
    unsafe {
        match found {
            Some(addr) => {
                (*now).addr = addr;
                (*now).proto = 1;
            }
            None => (*now).proto = 0,
        }
    }
}

/// The client [`note`] found for the packet being judged on this CPU.
#[inline(always)]
pub fn current() -> Option<Addr> {
    let now = CLIENT_NOW.get(0)?;
    (now.proto != 0).then_some(now.addr)
}
