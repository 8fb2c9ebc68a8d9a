//! Layer-2 checks of frames leaving a pod (source validation below IP).
//!
//! A pod sits on a learning bridge (Flannel's `cni0`): one frame with a
//! victim's Ethernet source moves the victim's forwarding entry to the
//! sender's port, and IPv6 neighbour discovery or ARP naming a victim's
//! address moves its neighbour entries. So a frame leaving a pod must carry
//! the pod's own MAC (and an ARP packet name it as its sender hardware
//! address); a neighbour advertisement may name only the pod's own
//! addresses; router advertisements and redirects from a pod are dropped.

use aya_ebpf::programs::TcContext;
use policy_common::{ep_info, proto, Addr, EndpointInfo, SourceKey};

use crate::{
    maps::{ENDPOINTS, SOURCES},
    packet::Flow,
};

const ETH_P_ARP: u16 = 0x0806;
/// Offset of an ARP packet's sender hardware address in the frame
/// (Ethernet header, then htype, ptype, hlen, plen, oper).
const ARP_SHA: usize = 14 + 8;

const ND_ROUTER_ADVERT: u16 = 134;
const ND_NEIGHBOUR_ADVERT: u16 = 136;
const ND_REDIRECT: u16 = 137;

/// Compares two MACs byte by byte (no `bcmp` call).
#[inline(always)]
fn same_mac(a: &[u8], b: &[u8; 6]) -> bool {
    a.len() >= 6
        && (a[0] ^ b[0])
            | (a[1] ^ b[1])
            | (a[2] ^ b[2])
            | (a[3] ^ b[3])
            | (a[4] ^ b[4])
            | (a[5] ^ b[5])
            == 0
}

/// Whether the frame's Ethernet source, and an ARP packet's sender
/// hardware address, are the endpoint's MAC (always true for an endpoint
/// registered without one, see [`ep_info::MAC`]).
#[inline(never)]
pub fn mac_ok(ctx: &TcContext, ep: &EndpointInfo) -> bool {
    if ep.flags & ep_info::MAC == 0 {
        return true;
    }
    // Source MAC and ethertype.
    let Ok(e) = ctx.load::<[u8; 8]>(6) else {
        return false;
    };
    if !same_mac(&e, &ep.mac) {
        return false;
    }
    if u16::from_be_bytes([e[6], e[7]]) != ETH_P_ARP {
        return true;
    }
    match ctx.load::<[u8; 6]>(ARP_SHA) {
        Ok(sha) => same_mac(&sha, &ep.mac),
        Err(_) => false,
    }
}

/// Neighbour discovery a pod may send ([`crate::packet::kind::LINK`]
/// frames, whose flow holds the ICMPv6 type in `sport` and a neighbour
/// advertisement's target in `daddr`): no router advertisement, no
/// redirect, and a neighbour advertisement only for one of the pod's own
/// addresses or its EUI-64 link-local address. ARP passes here (its
/// sender addresses are checked by source validation and [`mac_ok`]).
///
/// The endpoint entry is looked up again here, by the host veth's
/// `ifindex`: neighbour discovery is rare, and keeping the entry from the
/// start of the packet would not fit the verifier's stack.
#[inline(never)]
pub fn nd_ok(ifindex: u32, flow: &Flow) -> bool {
    if flow.proto != proto::ICMPV6 {
        return true;
    }
    // SAFETY: a map value, read for this packet only.
    let Some(ep) = (unsafe { ENDPOINTS.get(&ifindex) }) else {
        return false;
    };
    match flow.sport {
        ND_ROUTER_ADVERT | ND_REDIRECT => false,
        ND_NEIGHBOUR_ADVERT => {
            if ep.flags & ep_info::MAC != 0 && is_eui64_link_local(&flow.daddr, &ep.mac) {
                return true;
            }
            let key = SourceKey {
                ep_id: ep.ep_id,
                addr: flow.daddr,
            };
            // SAFETY: only presence is used.
            unsafe { SOURCES.get(&key) }.is_some()
        }
        _ => true,
    }
}

/// Whether `a` is `fe80::/64` with the modified EUI-64 interface
/// identifier of `mac` (the link-local address Linux gives an interface
/// by default).
#[inline(always)]
fn is_eui64_link_local(a: &Addr, mac: &[u8; 6]) -> bool {
    let head = (a[0] ^ 0xfe) | (a[1] ^ 0x80) | a[2] | a[3] | a[4] | a[5] | a[6] | a[7];
    let iid = (a[8] ^ mac[0] ^ 0x02)
        | (a[9] ^ mac[1])
        | (a[10] ^ mac[2])
        | (a[11] ^ 0xff)
        | (a[12] ^ 0xfe)
        | (a[13] ^ mac[3])
        | (a[14] ^ mac[4])
        | (a[15] ^ mac[5]);
    head | iid == 0
}
