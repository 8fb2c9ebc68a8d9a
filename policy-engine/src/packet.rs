//! The eBPF programs' packet parser (`policy-ebpf/src/packet.rs`) and the
//! way a classifier treats the first packet of a flow
//! (`policy-ebpf/src/pipeline.rs`), in user space. The kernel tests and the
//! packet fuzz target run frames through the real programs with
//! `BPF_PROG_TEST_RUN` and compare the verdict with [`first_packet`].
//!
//! Parsing mirrors the kernel byte for byte: every read is a bounded load
//! that fails past the end of the frame, and a failed read makes the whole
//! frame [`Parsed::Malformed`] (dropped). Ethernet, then ARP (link
//! control), IPv4 (any header length ≥ 20; a later fragment has no ports)
//! or IPv6 (hop-by-hop, routing, destination options, authentication and
//! fragment headers, at most [`MAX_IPV6_EXT_HEADERS`] of them); every other
//! ethertype is malformed.

use std::collections::BTreeSet;
use std::net::IpAddr;

use policy_common::{dir, proto, v4_mapped, Addr};

use crate::lookup::{self, Reason};
use crate::model::addr::from_addr;
use crate::state::MapState;

const ETH_HLEN: usize = 14;
const ETH_P_IP: u16 = 0x0800;
const ETH_P_IPV6: u16 = 0x86DD;
const ETH_P_ARP: u16 = 0x0806;

/// IPv6 extension headers walked before the packet counts as malformed.
pub const MAX_IPV6_EXT_HEADERS: usize = 8;

const IPV6_HOP_BY_HOP: u8 = 0;
const IPV6_ROUTING: u8 = 43;
const IPV6_FRAGMENT: u8 = 44;
const IPV6_AUTH: u8 = 51;
const IPV6_DEST_OPTS: u8 = 60;

const TCP_RST: u8 = 0x04;
const SCTP_ABORT: u8 = 6;
const SCTP_SHUTDOWN_COMPLETE: u8 = 14;

const ICMP_ECHO_REPLY: u8 = 0;
const ICMP_DEST_UNREACH: u8 = 3;
const ICMP_ECHO_REQUEST: u8 = 8;
const ICMP_TIME_EXCEEDED: u8 = 11;
const ICMP_PARAM_PROBLEM: u8 = 12;

const ICMPV6_DEST_UNREACH: u8 = 1;
const ICMPV6_PACKET_TOO_BIG: u8 = 2;
const ICMPV6_TIME_EXCEEDED: u8 = 3;
const ICMPV6_PARAM_PROBLEM: u8 = 4;
const ICMPV6_ECHO_REQUEST: u8 = 128;
const ICMPV6_ECHO_REPLY: u8 = 129;
const ND_ROUTER_ADVERT: u8 = 134;
const ND_NEIGHBOUR_ADVERT: u8 = 136;
const ND_REDIRECT: u8 = 137;

/// Where a packet sits in a fragmented datagram.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum Frag {
    /// Not fragmented.
    #[default]
    None,
    /// The first fragment (it carries the L4 header).
    First,
    /// A later fragment (no L4 header).
    Later,
}

/// One packet's flow identity, as the kernel's `Flow` holds it.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Flow {
    /// Source address (IPv4-mapped for IPv4).
    pub saddr: Addr,
    /// Destination address.
    pub daddr: Addr,
    /// Conntrack source port (ICMP echo request: its identifier).
    pub sport: u16,
    /// Conntrack destination port (ICMP echo reply: its identifier).
    pub dport: u16,
    /// The port policy is judged on (TCP/UDP/SCTP destination port, else 0).
    pub policy_dport: u16,
    /// IP protocol.
    pub proto: u8,
    /// False for a later fragment: no L4 header in this packet.
    pub ports_known: bool,
    /// Whether an allowed packet creates a conntrack entry.
    pub create: bool,
    /// Position in a fragmented datagram.
    pub frag: Frag,
    /// IP identification of a fragment.
    pub frag_id: u32,
}

impl Flow {
    fn empty() -> Self {
        Flow {
            ports_known: true,
            create: true,
            ..Flow::default()
        }
    }
}

/// What the parser makes of a frame.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Parsed {
    /// ARP, IPv6 neighbour discovery or multicast listener discovery:
    /// never subject to policy; `saddr` is the sender's address (source
    /// validation still applies).
    Link {
        /// The sender's address (IPv4-mapped for ARP).
        saddr: Addr,
        /// The ICMPv6 type (0 for ARP).
        icmp6_type: u8,
        /// The address a neighbour advertisement claims (zero otherwise).
        target: Addr,
    },
    /// Truncated, unparseable, or neither IP nor ARP: dropped.
    Malformed,
    /// An IP packet.
    Flow(Flow),
    /// An ICMP error (`outer`) quoting a packet (`inner`).
    IcmpError {
        /// The error itself.
        outer: Flow,
        /// The quoted packet.
        inner: Flow,
    },
}

/// A failed bounded read: the frame is malformed.
struct Short;

fn load<const N: usize>(frame: &[u8], off: usize) -> Result<[u8; N], Short> {
    let end = off.checked_add(N).ok_or(Short)?;
    frame
        .get(off..end)
        .and_then(|b| b.try_into().ok())
        .ok_or(Short)
}

/// Parses an Ethernet frame as the kernel programs do.
pub fn parse(frame: &[u8]) -> Parsed {
    try_parse(frame).unwrap_or(Parsed::Malformed)
}

fn try_parse(frame: &[u8]) -> Result<Parsed, Short> {
    let ethertype = load::<2>(frame, 12)?;
    let mut outer = Flow::empty();
    let mut inner = Flow::empty();
    match u16::from_be_bytes(ethertype) {
        ETH_P_ARP => parse_arp(frame),
        ETH_P_IP => parse_v4(frame, ETH_HLEN, &mut outer, &mut inner),
        ETH_P_IPV6 => parse_v6(frame, ETH_HLEN, &mut outer, &mut inner),
        _ => Ok(Parsed::Malformed),
    }
}

fn parse_arp(frame: &[u8]) -> Result<Parsed, Short> {
    let a = load::<18>(frame, ETH_HLEN)?;
    if u16::from_be_bytes([a[2], a[3]]) != ETH_P_IP || a[4] != 6 || a[5] != 4 {
        return Err(Short);
    }
    Ok(Parsed::Link {
        saddr: v4_mapped([a[14], a[15], a[16], a[17]]),
        icmp6_type: 0,
        target: [0; 16],
    })
}

/// Reads an IPv4 header at `off`; the L4 offset, or `None` for a later
/// fragment.
fn ipv4_header(frame: &[u8], off: usize, flow: &mut Flow) -> Result<Option<usize>, Short> {
    let h = load::<20>(frame, off)?;
    if h[0] >> 4 != 4 {
        return Err(Short);
    }
    let ihl = usize::from(h[0] & 0x0f) * 4;
    if ihl < 20 {
        return Err(Short);
    }
    flow.saddr = v4_mapped([h[12], h[13], h[14], h[15]]);
    flow.daddr = v4_mapped([h[16], h[17], h[18], h[19]]);
    flow.proto = h[9];
    let frag_word = u16::from_be_bytes([h[6], h[7]]);
    if frag_word & 0x1fff != 0 {
        flow.frag = Frag::Later;
    } else if frag_word & 0x2000 != 0 {
        flow.frag = Frag::First;
    }
    if flow.frag != Frag::None {
        flow.frag_id = u32::from(u16::from_be_bytes([h[4], h[5]]));
    }
    if flow.frag == Frag::Later {
        return Ok(None);
    }
    Ok(Some(off + ihl))
}

fn parse_v4(frame: &[u8], off: usize, flow: &mut Flow, inner: &mut Flow) -> Result<Parsed, Short> {
    let Some(l4) = ipv4_header(frame, off, flow)? else {
        flow.ports_known = false;
        flow.create = false;
        return Ok(Parsed::Flow(*flow));
    };
    if flow.proto != proto::ICMP {
        l4_ports(frame, l4, flow)?;
        return Ok(Parsed::Flow(*flow));
    }
    let icmp = load::<8>(frame, l4)?;
    let id = u16::from_be_bytes([icmp[4], icmp[5]]);
    match icmp[0] {
        ICMP_ECHO_REQUEST => flow.sport = id,
        ICMP_ECHO_REPLY => {
            flow.dport = id;
            flow.create = false;
        }
        ICMP_DEST_UNREACH | ICMP_TIME_EXCEEDED | ICMP_PARAM_PROBLEM => {
            flow.create = false;
            if inner_v4(frame, l4 + 8, inner).is_ok() {
                return Ok(Parsed::IcmpError {
                    outer: *flow,
                    inner: *inner,
                });
            }
        }
        _ => flow.create = false,
    }
    Ok(Parsed::Flow(*flow))
}

fn parse_v6(frame: &[u8], off: usize, flow: &mut Flow, inner: &mut Flow) -> Result<Parsed, Short> {
    let h = load::<8>(frame, off)?;
    if h[0] >> 4 != 6 {
        return Err(Short);
    }
    flow.saddr = load::<16>(frame, off + 8)?;
    flow.daddr = load::<16>(frame, off + 24)?;
    let mut nh = h[6];
    let mut cur = off + 40;
    let mut done = false;
    for _ in 0..MAX_IPV6_EXT_HEADERS {
        match nh {
            IPV6_HOP_BY_HOP | IPV6_ROUTING | IPV6_DEST_OPTS => {
                let e = load::<2>(frame, cur)?;
                nh = e[0];
                cur += (usize::from(e[1]) + 1) * 8;
            }
            IPV6_AUTH => {
                let e = load::<2>(frame, cur)?;
                nh = e[0];
                cur += (usize::from(e[1]) + 2) * 4;
            }
            IPV6_FRAGMENT => {
                let e = load::<8>(frame, cur)?;
                nh = e[0];
                cur += 8;
                let word = u16::from_be_bytes([e[2], e[3]]);
                flow.frag_id = u32::from_be_bytes([e[4], e[5], e[6], e[7]]);
                if word >> 3 != 0 {
                    flow.frag = Frag::Later;
                    flow.proto = nh;
                    flow.ports_known = false;
                    flow.create = false;
                    return Ok(Parsed::Flow(*flow));
                }
                if word & 1 != 0 {
                    flow.frag = Frag::First;
                }
            }
            _ => {
                done = true;
                break;
            }
        }
    }
    if !done {
        return Err(Short);
    }
    flow.proto = nh;
    if flow.proto != proto::ICMPV6 {
        l4_ports(frame, cur, flow)?;
        return Ok(Parsed::Flow(*flow));
    }
    let icmp = load::<8>(frame, cur)?;
    let id = u16::from_be_bytes([icmp[4], icmp[5]]);
    match icmp[0] {
        // Neighbour discovery (133–137) and multicast listener discovery
        // (130–132, 143).
        130..=137 | 143 => {
            let target = if icmp[0] == ND_NEIGHBOUR_ADVERT {
                load::<16>(frame, cur + 8)?
            } else {
                [0; 16]
            };
            return Ok(Parsed::Link {
                saddr: flow.saddr,
                icmp6_type: icmp[0],
                target,
            });
        }
        ICMPV6_ECHO_REQUEST => flow.sport = id,
        ICMPV6_ECHO_REPLY => {
            flow.dport = id;
            flow.create = false;
        }
        ICMPV6_DEST_UNREACH
        | ICMPV6_PACKET_TOO_BIG
        | ICMPV6_TIME_EXCEEDED
        | ICMPV6_PARAM_PROBLEM => {
            flow.create = false;
            if inner_v6(frame, cur + 8, inner).is_ok() {
                return Ok(Parsed::IcmpError {
                    outer: *flow,
                    inner: *inner,
                });
            }
        }
        _ => flow.create = false,
    }
    Ok(Parsed::Flow(*flow))
}

fn l4_ports(frame: &[u8], l4: usize, flow: &mut Flow) -> Result<(), Short> {
    match flow.proto {
        proto::TCP => {
            let t = load::<14>(frame, l4)?;
            flow.sport = u16::from_be_bytes([t[0], t[1]]);
            flow.dport = u16::from_be_bytes([t[2], t[3]]);
            flow.create = t[13] & TCP_RST == 0;
        }
        proto::UDP => {
            let u = load::<4>(frame, l4)?;
            flow.sport = u16::from_be_bytes([u[0], u[1]]);
            flow.dport = u16::from_be_bytes([u[2], u[3]]);
        }
        proto::SCTP => {
            let s = load::<13>(frame, l4)?;
            flow.sport = u16::from_be_bytes([s[0], s[1]]);
            flow.dport = u16::from_be_bytes([s[2], s[3]]);
            flow.create = !matches!(s[12], SCTP_ABORT | SCTP_SHUTDOWN_COMPLETE);
        }
        _ => return Ok(()),
    }
    flow.policy_dport = flow.dport;
    Ok(())
}

fn inner_ports(
    frame: &[u8],
    l4: usize,
    flow: &mut Flow,
    echo_req: u8,
    echo_reply: u8,
) -> Result<(), Short> {
    let p = load::<8>(frame, l4)?;
    match flow.proto {
        proto::TCP | proto::UDP | proto::SCTP => {
            flow.sport = u16::from_be_bytes([p[0], p[1]]);
            flow.dport = u16::from_be_bytes([p[2], p[3]]);
        }
        proto::ICMP | proto::ICMPV6 => {
            let id = u16::from_be_bytes([p[4], p[5]]);
            if p[0] == echo_req {
                flow.sport = id;
            } else if p[0] == echo_reply {
                flow.dport = id;
            } else {
                return Err(Short);
            }
        }
        _ => {}
    }
    Ok(())
}

fn inner_v4(frame: &[u8], off: usize, flow: &mut Flow) -> Result<(), Short> {
    let l4 = ipv4_header(frame, off, flow)?.ok_or(Short)?;
    flow.create = false;
    inner_ports(frame, l4, flow, ICMP_ECHO_REQUEST, ICMP_ECHO_REPLY)
}

fn inner_v6(frame: &[u8], off: usize, flow: &mut Flow) -> Result<(), Short> {
    let h = load::<8>(frame, off)?;
    if h[0] >> 4 != 6 {
        return Err(Short);
    }
    flow.saddr = load::<16>(frame, off + 8)?;
    flow.daddr = load::<16>(frame, off + 24)?;
    flow.proto = h[6];
    flow.create = false;
    inner_ports(
        frame,
        off + 40,
        flow,
        ICMPV6_ECHO_REQUEST,
        ICMPV6_ECHO_REPLY,
    )
}

/// Why [`first_packet`] passes or drops a frame.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum FrameReason {
    /// Link control: passes without policy.
    Link,
    /// Unparseable: dropped.
    Malformed,
    /// Leaving the pod from an address that is not the pod's: dropped.
    Spoofed,
    /// The lookup model's verdict on the flow.
    Policy(Reason),
}

/// What the classifier for endpoint `ep_id`, direction `d`
/// (`policy_common::dir`), does with `frame` when it is the first packet of
/// its flow, sent by the node's own stack, on a dataplane holding `state`
/// with no Services, no tracked flows and no passed fragments; `sources`
/// are the addresses the endpoint may send from (IPv4-mapped). The
/// endpoint is registered without a MAC (as `BPF_PROG_TEST_RUN` tests
/// register it), see [`first_packet_with_mac`]. Returns whether it passes,
/// and why.
pub fn first_packet(
    state: &MapState,
    sources: &BTreeSet<Addr>,
    ep_id: u32,
    d: u8,
    frame: &[u8],
) -> (bool, FrameReason) {
    first_packet_with_mac(state, sources, None, ep_id, d, frame)
}

/// [`first_packet`] for an endpoint whose pod's MAC is `mac` (as the agent
/// registers every endpoint): a frame leaving the pod must carry it as its
/// Ethernet source and, for ARP, as its sender hardware address.
pub fn first_packet_with_mac(
    state: &MapState,
    sources: &BTreeSet<Addr>,
    mac: Option<[u8; 6]>,
    ep_id: u32,
    d: u8,
    frame: &[u8],
) -> (bool, FrameReason) {
    let parsed = parse(frame);
    if d == dir::EGRESS && parsed != Parsed::Malformed && !link_ok(sources, mac, &parsed, frame) {
        return (false, FrameReason::Spoofed);
    }
    let flow = match parsed {
        Parsed::Malformed => return (false, FrameReason::Malformed),
        Parsed::Flow(f) | Parsed::IcmpError { outer: f, .. } => f,
        Parsed::Link { .. } => return (true, FrameReason::Link),
    };
    let peer: IpAddr = from_addr(if d == dir::EGRESS {
        flow.daddr
    } else {
        flow.saddr
    });
    let v = if flow.ports_known {
        lookup::verdict(state, ep_id, d, peer, flow.proto, flow.policy_dport)
    } else {
        lookup::verdict_any_port(state, ep_id, d, peer, flow.proto)
    };
    (v.allowed, FrameReason::Policy(v.reason))
}

/// The kernel's source validation of a parsed frame leaving a pod: its
/// source address ([`source_ok`]), its Ethernet source and ARP sender
/// hardware address (with a MAC), and what its neighbour discovery claims:
/// no router advertisement or redirect, a neighbour advertisement only for
/// one of the pod's addresses or its EUI-64 link-local one.
fn link_ok(sources: &BTreeSet<Addr>, mac: Option<[u8; 6]>, parsed: &Parsed, frame: &[u8]) -> bool {
    let (saddr, link) = match parsed {
        Parsed::Malformed => return false,
        Parsed::Link { saddr, .. } => (*saddr, true),
        Parsed::Flow(f) | Parsed::IcmpError { outer: f, .. } => (f.saddr, false),
    };
    if !source_ok(sources, &saddr, link) {
        return false;
    }
    if let Some(mac) = mac {
        if frame.get(6..12) != Some(&mac[..]) {
            return false;
        }
        let arp = frame.get(12..14) == Some(&ETH_P_ARP.to_be_bytes()[..]);
        if arp && frame.get(22..28) != Some(&mac[..]) {
            return false;
        }
    }
    match parsed {
        Parsed::Link {
            icmp6_type: ND_ROUTER_ADVERT | ND_REDIRECT,
            ..
        } => false,
        Parsed::Link {
            icmp6_type: ND_NEIGHBOUR_ADVERT,
            target,
            ..
        } => sources.contains(target) || mac.is_some_and(|m| *target == eui64_link_local(m)),
        _ => true,
    }
}

/// `fe80::/64` with the modified EUI-64 interface identifier of `mac`.
pub fn eui64_link_local(mac: [u8; 6]) -> Addr {
    let mut a = [0u8; 16];
    a[0] = 0xfe;
    a[1] = 0x80;
    a[8..16].copy_from_slice(&[
        mac[0] ^ 0x02,
        mac[1],
        mac[2],
        0xff,
        0xfe,
        mac[3],
        mac[4],
        mac[5],
    ]);
    a
}

/// The kernel's source validation: one of the endpoint's addresses, or for
/// link control also the unspecified address or an IPv6 link-local one.
fn source_ok(sources: &BTreeSet<Addr>, saddr: &Addr, link: bool) -> bool {
    let unspecified = *saddr == [0; 16] || *saddr == v4_mapped([0; 4]);
    let link_local = saddr[0] == 0xfe && saddr[1] & 0xc0 == 0x80;
    (link && (unspecified || link_local)) || sources.contains(saddr)
}

#[cfg(test)]
mod tests;
