//! Header parsing. Every read goes through `bpf_skb_load_bytes`
//! (`TcContext::load`), so a truncated packet makes a read fail and the
//! packet is reported as [`Parsed::Malformed`] — never as a flow that could
//! slip past a verdict.

use aya_ebpf::programs::TcContext;
use policy_common::{proto, Addr};

const ETH_HLEN: usize = 14;
const ETH_P_IP: u16 = 0x0800;
const ETH_P_IPV6: u16 = 0x86DD;
const ETH_P_ARP: u16 = 0x0806;

/// IPv6 extension headers walked before giving up (the packet is then
/// malformed for us and dropped).
const MAX_IPV6_EXT_HEADERS: usize = 8;

const IPV6_HOP_BY_HOP: u8 = 0;
const IPV6_ROUTING: u8 = 43;
const IPV6_FRAGMENT: u8 = 44;
const IPV6_AUTH: u8 = 51;
const IPV6_DEST_OPTS: u8 = 60;

const TCP_FIN: u8 = 0x01;
const TCP_SYN: u8 = 0x02;
const TCP_RST: u8 = 0x04;
const TCP_ACK: u8 = 0x10;

const SCTP_ABORT: u8 = 6;
const SCTP_SHUTDOWN: u8 = 7;
const SCTP_SHUTDOWN_ACK: u8 = 8;
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
const ICMPV6_ND_FIRST: u8 = 133;
const ICMPV6_ND_LAST: u8 = 137;
const ICMPV6_NEIGHBOUR_ADVERT: u8 = 136;
/// Multicast listener discovery (query, v1 report, done; v2 report): link
/// control traffic like neighbour discovery, never subject to policy.
const ICMPV6_MLD_FIRST: u8 = 130;
const ICMPV6_MLD_LAST: u8 = 132;
const ICMPV6_MLD2_REPORT: u8 = 143;

/// One packet's flow identity, as far as policy and conntrack need it.
///
/// Eight-byte aligned, so that its addresses are written and cleared with
/// word stores: the compiler turns byte-wise zeroing into calls to a
/// byte-at-a-time `memset` subprogram, which cost more than the rest of an
/// established packet's path.
#[derive(Clone, Copy)]
#[repr(C, align(8))]
pub struct Flow {
    /// Source address (IPv4-mapped for IPv4).
    pub saddr: Addr,
    /// Destination address.
    pub daddr: Addr,
    /// Conntrack source port (ICMP echo request: identifier; reply: 0).
    pub sport: u16,
    /// Conntrack destination port (ICMP echo reply: identifier).
    pub dport: u16,
    /// Port the policy is judged on (TCP/UDP/SCTP destination port, else 0).
    pub policy_dport: u16,
    /// IP protocol.
    pub proto: u8,
    /// False for non-first fragments: no L4 header in this packet.
    pub ports_known: bool,
    /// Whether an allowed packet without a conntrack entry creates one.
    pub create: bool,
    /// TCP SYN without ACK / SCTP INIT: a connection (re)starts.
    pub opening: bool,
    /// TCP FIN, SCTP SHUTDOWN/SHUTDOWN ACK: this side is done sending.
    pub closing: bool,
    /// TCP RST, SCTP ABORT/SHUTDOWN COMPLETE: the flow is over.
    pub reset: bool,
    /// [`frag`] position of the packet in its datagram.
    pub frag: u8,
    /// IP identification of a fragment (0 otherwise).
    pub frag_id: u32,
}

/// Where a packet sits in a fragmented datagram ([`Flow::frag`]).
pub mod frag {
    /// Not fragmented.
    pub const NONE: u8 = 0;
    /// The first fragment (it carries the L4 header).
    pub const FIRST: u8 = 1;
    /// A later fragment (no L4 header).
    pub const LATER: u8 = 2;
}

/// What the parser made of a packet (return value of [`parse`]).
pub mod kind {
    /// Link control (ARP, IPv6 neighbour discovery and multicast listener
    /// discovery): never subject to policy. The outer flow's `saddr` is the
    /// sender's address (ARP: the sender protocol address), which source
    /// validation still checks; for ICMPv6, `sport` is the ICMPv6 type and
    /// a neighbour advertisement's `daddr` is its target address.
    pub const LINK: u8 = 0;
    /// Unparseable, truncated or not IP/ARP: dropped.
    pub const MALFORMED: u8 = 1;
    /// An IP packet, described by the outer flow.
    pub const FLOW: u8 = 2;
    /// An ICMP error: the outer flow is the error, the inner one the quoted
    /// packet.
    pub const ICMP_ERROR: u8 = 3;
}

// The word stores of `Flow::clear` and `set_v4` need 8-byte aligned
// addresses.
const _: () = assert!(core::mem::offset_of!(Flow, saddr) % 8 == 0);
const _: () = assert!(core::mem::offset_of!(Flow, daddr) % 8 == 0);

/// Writes the IPv4-mapped form of `v4` to `dst` with two word stores.
///
/// # Safety
///
/// `dst` must be valid for writes and 8-byte aligned.
#[inline(always)]
unsafe fn set_v4(dst: *mut Addr, v4: [u8; 4]) {
    let w = dst.cast::<u64>();
    // SAFETY: the caller's contract; volatile so that the zero word is not
    // merged with neighbouring zero stores into a `memset` call.
    unsafe {
        core::ptr::write_volatile(w, 0);
        core::ptr::write_volatile(
            w.add(1),
            u64::from_ne_bytes([0, 0, 0xff, 0xff, v4[0], v4[1], v4[2], v4[3]]),
        );
    }
}

/// Clears `*f` to [`Flow::empty`] with one store per field.
///
/// # Safety
///
/// `f` must be valid for writes and aligned.
#[inline(always)]
unsafe fn clear_raw(f: *mut Flow) {
    use core::ptr::{addr_of_mut, write_volatile as w};
    // SAFETY: the caller's contract. Volatile stores: the compiler would
    // merge plain zero stores into a call to a byte-at-a-time `memset`.
    unsafe {
        let a = addr_of_mut!((*f).saddr).cast::<u64>();
        w(a, 0);
        w(a.add(1), 0);
        let a = addr_of_mut!((*f).daddr).cast::<u64>();
        w(a, 0);
        w(a.add(1), 0);
        w(addr_of_mut!((*f).sport), 0);
        w(addr_of_mut!((*f).dport), 0);
        w(addr_of_mut!((*f).policy_dport), 0);
        w(addr_of_mut!((*f).proto), 0);
        w(addr_of_mut!((*f).ports_known), true);
        w(addr_of_mut!((*f).create), true);
        w(addr_of_mut!((*f).opening), false);
        w(addr_of_mut!((*f).closing), false);
        w(addr_of_mut!((*f).reset), false);
        w(addr_of_mut!((*f).frag), frag::NONE);
        w(addr_of_mut!((*f).frag_id), 0);
    }
}

impl Flow {
    /// Initialises `slot` as an empty flow (as [`Flow::empty`], without the
    /// `memset` call the compiler makes of that) and returns it.
    #[inline(always)]
    pub fn init(slot: &mut core::mem::MaybeUninit<Flow>) -> &mut Flow {
        // SAFETY: `slot` is valid, aligned and writable; every field is
        // written before it is assumed initialised.
        unsafe {
            clear_raw(slot.as_mut_ptr());
            slot.assume_init_mut()
        }
    }

    /// Makes `self` empty again (see [`Flow::init`]).
    #[inline(always)]
    pub fn clear(&mut self) {
        // SAFETY: a reference is valid, aligned and writable.
        unsafe { clear_raw(self) }
    }

    /// An empty flow, to be filled by [`parse`].
    #[inline(always)]
    pub const fn empty() -> Self {
        Self {
            saddr: [0; 16],
            daddr: [0; 16],
            sport: 0,
            dport: 0,
            policy_dport: 0,
            proto: 0,
            ports_known: true,
            create: true,
            opening: false,
            closing: false,
            reset: false,
            frag: frag::NONE,
            frag_id: 0,
        }
    }
}

/// Parses the packet in `ctx` into `outer` (and, for ICMP errors, the
/// quoted packet into `inner`, which is cleared first; it is left alone,
/// and meaningless, for every other kind); returns a [`kind`].
#[inline(never)]
pub fn parse(ctx: &TcContext, outer: &mut Flow, inner: &mut Flow) -> u8 {
    match try_parse(ctx, outer, inner) {
        Ok(k) => k,
        Err(()) => kind::MALFORMED,
    }
}

#[inline(always)]
fn load<T>(ctx: &TcContext, off: usize) -> Result<T, ()> {
    ctx.load::<T>(off).map_err(|_| ())
}

#[inline(always)]
fn try_parse(ctx: &TcContext, outer: &mut Flow, inner: &mut Flow) -> Result<u8, ()> {
    let ethertype: [u8; 2] = load(ctx, 12)?;
    match u16::from_be_bytes(ethertype) {
        ETH_P_ARP => parse_arp(ctx, outer),
        ETH_P_IP => parse_v4(ctx, ETH_HLEN, outer, inner),
        ETH_P_IPV6 => parse_v6(ctx, ETH_HLEN, outer, inner),
        _ => Ok(kind::MALFORMED),
    }
}

/// ARP over Ethernet for IPv4: the sender protocol address goes to
/// `flow.saddr` (IPv4-mapped). Any other ARP is malformed for us.
#[inline(always)]
fn parse_arp(ctx: &TcContext, flow: &mut Flow) -> Result<u8, ()> {
    // htype, ptype, hlen, plen, oper, sha[6], spa[4].
    let a: [u8; 18] = load(ctx, ETH_HLEN)?;
    if u16::from_be_bytes([a[2], a[3]]) != ETH_P_IP || a[4] != 6 || a[5] != 4 {
        return Err(());
    }
    // SAFETY: a field of a `Flow`, 8-byte aligned (asserted above).
    unsafe { set_v4(&mut flow.saddr, [a[14], a[15], a[16], a[17]]) };
    Ok(kind::LINK)
}

/// Reads an IPv4 header at `off` into `flow`; returns the L4 offset, or
/// `None` for a non-first fragment.
#[inline(always)]
fn ipv4_header(ctx: &TcContext, off: usize, flow: &mut Flow) -> Result<Option<usize>, ()> {
    let h: [u8; 20] = load(ctx, off)?;
    if h[0] >> 4 != 4 {
        return Err(());
    }
    let ihl = usize::from(h[0] & 0x0f) * 4;
    if ihl < 20 {
        return Err(());
    }
    // SAFETY: fields of a `Flow`, 8-byte aligned (asserted above).
    unsafe {
        set_v4(&mut flow.saddr, [h[12], h[13], h[14], h[15]]);
        set_v4(&mut flow.daddr, [h[16], h[17], h[18], h[19]]);
    }
    flow.proto = h[9];
    let frag_word = u16::from_be_bytes([h[6], h[7]]);
    let more_fragments = frag_word & 0x2000 != 0;
    if frag_word & 0x1fff != 0 {
        flow.frag = frag::LATER;
    } else if more_fragments {
        flow.frag = frag::FIRST;
    }
    if flow.frag != frag::NONE {
        flow.frag_id = u32::from(u16::from_be_bytes([h[4], h[5]]));
    }
    if flow.frag == frag::LATER {
        return Ok(None);
    }
    Ok(Some(off + ihl))
}

#[inline(always)]
fn parse_v4(ctx: &TcContext, off: usize, flow: &mut Flow, inner: &mut Flow) -> Result<u8, ()> {
    let l4 = match ipv4_header(ctx, off, flow)? {
        Some(l4) => l4,
        None => {
            flow.ports_known = false;
            flow.create = false;
            return Ok(kind::FLOW);
        }
    };
    if flow.proto != proto::ICMP {
        l4_ports(ctx, l4, flow)?;
        return Ok(kind::FLOW);
    }
    let icmp: [u8; 8] = load(ctx, l4)?;
    let id = u16::from_be_bytes([icmp[4], icmp[5]]);
    match icmp[0] {
        ICMP_ECHO_REQUEST => flow.sport = id,
        ICMP_ECHO_REPLY => {
            flow.dport = id;
            flow.create = false;
        }
        ICMP_DEST_UNREACH | ICMP_TIME_EXCEEDED | ICMP_PARAM_PROBLEM => {
            flow.create = false;
            inner.clear();
            if inner_v4(ctx, l4 + 8, inner).is_ok() {
                return Ok(kind::ICMP_ERROR);
            }
        }
        _ => flow.create = false,
    }
    Ok(kind::FLOW)
}

#[inline(always)]
fn parse_v6(ctx: &TcContext, off: usize, flow: &mut Flow, inner: &mut Flow) -> Result<u8, ()> {
    let h: [u8; 8] = load(ctx, off)?;
    if h[0] >> 4 != 6 {
        return Err(());
    }
    flow.saddr = load(ctx, off + 8)?;
    flow.daddr = load(ctx, off + 24)?;
    let mut nh = h[6];
    let mut cur = off + 40;
    let mut done = false;
    for _ in 0..MAX_IPV6_EXT_HEADERS {
        match nh {
            IPV6_HOP_BY_HOP | IPV6_ROUTING | IPV6_DEST_OPTS => {
                let e: [u8; 2] = load(ctx, cur)?;
                nh = e[0];
                cur += (usize::from(e[1]) + 1) * 8;
            }
            IPV6_AUTH => {
                let e: [u8; 2] = load(ctx, cur)?;
                nh = e[0];
                cur += (usize::from(e[1]) + 2) * 4;
            }
            IPV6_FRAGMENT => {
                let e: [u8; 8] = load(ctx, cur)?;
                nh = e[0];
                cur += 8;
                let word = u16::from_be_bytes([e[2], e[3]]);
                flow.frag_id = u32::from_be_bytes([e[4], e[5], e[6], e[7]]);
                if word >> 3 != 0 {
                    flow.frag = frag::LATER;
                    flow.proto = nh;
                    flow.ports_known = false;
                    flow.create = false;
                    return Ok(kind::FLOW);
                }
                if word & 1 != 0 {
                    flow.frag = frag::FIRST;
                }
            }
            _ => {
                done = true;
                break;
            }
        }
    }
    if !done {
        return Err(());
    }
    flow.proto = nh;
    if flow.proto != proto::ICMPV6 {
        l4_ports(ctx, cur, flow)?;
        return Ok(kind::FLOW);
    }
    let icmp: [u8; 8] = load(ctx, cur)?;
    let id = u16::from_be_bytes([icmp[4], icmp[5]]);
    match icmp[0] {
        ICMPV6_ND_FIRST..=ICMPV6_ND_LAST
        | ICMPV6_MLD_FIRST..=ICMPV6_MLD_LAST
        | ICMPV6_MLD2_REPORT => {
            // For the link checks (`crate::link::nd_ok`): the type, and
            // the address a neighbour advertisement claims.
            flow.sport = u16::from(icmp[0]);
            if icmp[0] == ICMPV6_NEIGHBOUR_ADVERT {
                flow.daddr = load(ctx, cur + 8)?;
            }
            return Ok(kind::LINK);
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
            inner.clear();
            if inner_v6(ctx, cur + 8, inner).is_ok() {
                return Ok(kind::ICMP_ERROR);
            }
        }
        _ => flow.create = false,
    }
    Ok(kind::FLOW)
}

/// Reads ports and connection state of TCP/UDP/SCTP; other protocols keep
/// ports 0.
#[inline(always)]
fn l4_ports(ctx: &TcContext, l4: usize, flow: &mut Flow) -> Result<(), ()> {
    match flow.proto {
        proto::TCP => {
            let t: [u8; 14] = load(ctx, l4)?;
            flow.sport = u16::from_be_bytes([t[0], t[1]]);
            flow.dport = u16::from_be_bytes([t[2], t[3]]);
            let flags = t[13];
            flow.opening = flags & TCP_SYN != 0 && flags & TCP_ACK == 0;
            flow.closing = flags & TCP_FIN != 0;
            flow.reset = flags & TCP_RST != 0;
            // A tracked pickup: an allowed mid-stream packet (no SYN) also
            // creates an entry, so flows established before an agent
            // restart, a layout upgrade or the adoption of a running pod
            // keep their reply path. It admits nothing a SYN would not:
            // the packet was judged by policy in its own direction.
            flow.create = !flow.reset;
        }
        proto::UDP => {
            let u: [u8; 4] = load(ctx, l4)?;
            flow.sport = u16::from_be_bytes([u[0], u[1]]);
            flow.dport = u16::from_be_bytes([u[2], u[3]]);
        }
        proto::SCTP => {
            // Common header (12 bytes) and the first chunk's type.
            let s: [u8; 13] = load(ctx, l4)?;
            flow.sport = u16::from_be_bytes([s[0], s[1]]);
            flow.dport = u16::from_be_bytes([s[2], s[3]]);
            let chunk = s[12];
            flow.opening = chunk == 1;
            flow.closing = matches!(chunk, SCTP_SHUTDOWN | SCTP_SHUTDOWN_ACK);
            flow.reset = matches!(chunk, SCTP_ABORT | SCTP_SHUTDOWN_COMPLETE);
            flow.create = !flow.reset;
        }
        _ => return Ok(()),
    }
    flow.policy_dport = flow.dport;
    Ok(())
}

/// Ports of a quoted packet (first 8 bytes of its L4 header).
#[inline(always)]
fn inner_ports(
    ctx: &TcContext,
    l4: usize,
    flow: &mut Flow,
    echo_req: u8,
    echo_reply: u8,
) -> Result<(), ()> {
    let p: [u8; 8] = load(ctx, l4)?;
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
                return Err(());
            }
        }
        _ => {}
    }
    Ok(())
}

#[inline(always)]
fn inner_v4(ctx: &TcContext, off: usize, flow: &mut Flow) -> Result<(), ()> {
    let l4 = ipv4_header(ctx, off, flow)?.ok_or(())?;
    flow.create = false;
    inner_ports(ctx, l4, flow, ICMP_ECHO_REQUEST, ICMP_ECHO_REPLY)
}

#[inline(always)]
fn inner_v6(ctx: &TcContext, off: usize, flow: &mut Flow) -> Result<(), ()> {
    let h: [u8; 8] = load(ctx, off)?;
    if h[0] >> 4 != 6 {
        return Err(());
    }
    flow.saddr = load(ctx, off + 8)?;
    flow.daddr = load(ctx, off + 24)?;
    flow.proto = h[6];
    flow.create = false;
    inner_ports(ctx, off + 40, flow, ICMPV6_ECHO_REQUEST, ICMPV6_ECHO_REPLY)
}
