//! Crafted frames for BPF_PROG_TEST_RUN (checksums are not checked there).

#![allow(dead_code)]

pub const TCP: u8 = 6;
pub const UDP: u8 = 17;
pub const SCTP: u8 = 132;
pub const ICMP: u8 = 1;
pub const ICMPV6: u8 = 58;

pub const SYN: u8 = 0x02;
pub const ACK: u8 = 0x10;
pub const FIN: u8 = 0x01;
pub const RST: u8 = 0x04;

/// An IP address for the builders: 4 or 16 bytes.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Ip {
    V4([u8; 4]),
    V6([u8; 16]),
}

impl Ip {
    pub fn mapped(self) -> [u8; 16] {
        match self {
            Ip::V4(a) => policy_common::v4_mapped(a),
            Ip::V6(a) => a,
        }
    }
}

pub fn v4(a: u8, b: u8, c: u8, d: u8) -> Ip {
    Ip::V4([a, b, c, d])
}

/// `2001:db8::<last>`.
pub fn v6(last: u16) -> Ip {
    let mut a = [0u8; 16];
    a[0] = 0x20;
    a[1] = 0x01;
    a[2] = 0x0d;
    a[3] = 0xb8;
    a[14..16].copy_from_slice(&last.to_be_bytes());
    Ip::V6(a)
}

pub fn tcp(sport: u16, dport: u16, flags: u8) -> (u8, Vec<u8>) {
    let mut h = vec![0u8; 20];
    h[0..2].copy_from_slice(&sport.to_be_bytes());
    h[2..4].copy_from_slice(&dport.to_be_bytes());
    h[12] = 5 << 4;
    h[13] = flags;
    (TCP, h)
}

pub fn udp(sport: u16, dport: u16) -> (u8, Vec<u8>) {
    let mut h = vec![0u8; 8];
    h[0..2].copy_from_slice(&sport.to_be_bytes());
    h[2..4].copy_from_slice(&dport.to_be_bytes());
    h[4..6].copy_from_slice(&8u16.to_be_bytes());
    (UDP, h)
}

/// SCTP common header plus one chunk of type `chunk` (1 = INIT).
pub fn sctp(sport: u16, dport: u16, chunk: u8) -> (u8, Vec<u8>) {
    let mut h = vec![0u8; 12 + 20];
    h[0..2].copy_from_slice(&sport.to_be_bytes());
    h[2..4].copy_from_slice(&dport.to_be_bytes());
    h[12] = chunk;
    h[14..16].copy_from_slice(&20u16.to_be_bytes());
    (SCTP, h)
}

/// ICMP(v6) message: type, code, then `rest` (id/seq or the quoted packet
/// after 4 unused bytes).
pub fn icmp(v6: bool, ty: u8, code: u8, rest: &[u8]) -> (u8, Vec<u8>) {
    let mut h = vec![ty, code, 0, 0];
    h.extend_from_slice(rest);
    (if v6 { ICMPV6 } else { ICMP }, h)
}

pub fn echo(v6: bool, request: bool, id: u16) -> (u8, Vec<u8>) {
    let ty = match (v6, request) {
        (false, true) => 8,
        (false, false) => 0,
        (true, true) => 128,
        (true, false) => 129,
    };
    let mut rest = id.to_be_bytes().to_vec();
    rest.extend_from_slice(&[0, 1]);
    icmp(v6, ty, 0, &rest)
}

/// An ICMP error quoting `inner` (an IP packet without Ethernet header).
pub fn icmp_error(v6: bool, ty: u8, code: u8, inner: &[u8]) -> (u8, Vec<u8>) {
    let mut rest = vec![0u8; 4];
    rest.extend_from_slice(inner);
    icmp(v6, ty, code, &rest)
}

/// IPv4 header (no options) + payload; `frag` is the raw flags/offset word.
pub fn ipv4(src: [u8; 4], dst: [u8; 4], proto: u8, payload: &[u8], frag: u16) -> Vec<u8> {
    let mut h = vec![0u8; 20];
    h[0] = 0x45;
    let len = (20 + payload.len()) as u16;
    h[2..4].copy_from_slice(&len.to_be_bytes());
    h[6..8].copy_from_slice(&frag.to_be_bytes());
    h[8] = 64;
    h[9] = proto;
    h[12..16].copy_from_slice(&src);
    h[16..20].copy_from_slice(&dst);
    h.extend_from_slice(payload);
    h
}

/// IPv6 header, then the extension headers `ext` (type, total length in
/// bytes, a multiple of 8), then the payload of protocol `proto`.
pub fn ipv6(
    src: [u8; 16],
    dst: [u8; 16],
    ext: &[(u8, usize)],
    proto: u8,
    payload: &[u8],
) -> Vec<u8> {
    let mut body = Vec::new();
    for (i, (_, len)) in ext.iter().enumerate() {
        let next = ext.get(i + 1).map_or(proto, |e| e.0);
        let mut e = vec![0u8; *len];
        e[0] = next;
        e[1] = (*len / 8 - 1) as u8;
        body.extend_from_slice(&e);
    }
    body.extend_from_slice(payload);
    let first = ext.first().map_or(proto, |e| e.0);
    let mut h = vec![0u8; 40];
    h[0] = 0x60;
    h[4..6].copy_from_slice(&(body.len() as u16).to_be_bytes());
    h[6] = first;
    h[7] = 64;
    h[8..24].copy_from_slice(&src);
    h[24..40].copy_from_slice(&dst);
    h.extend_from_slice(&body);
    h
}

/// IPv6 fragment extension header (8 bytes) for a raw `offset_flags` word.
pub fn ipv6_fragment(
    src: [u8; 16],
    dst: [u8; 16],
    proto: u8,
    offset_flags: u16,
    payload: &[u8],
) -> Vec<u8> {
    let mut frag = vec![proto, 0];
    frag.extend_from_slice(&offset_flags.to_be_bytes());
    frag.extend_from_slice(&[0, 0, 0, 1]);
    frag.extend_from_slice(payload);
    let mut h = vec![0u8; 40];
    h[0] = 0x60;
    h[4..6].copy_from_slice(&(frag.len() as u16).to_be_bytes());
    h[6] = 44;
    h[7] = 64;
    h[8..24].copy_from_slice(&src);
    h[24..40].copy_from_slice(&dst);
    h.extend_from_slice(&frag);
    h
}

/// An IP packet (no Ethernet) from `src` to `dst` carrying `l4`.
pub fn ip(src: Ip, dst: Ip, l4: &(u8, Vec<u8>)) -> Vec<u8> {
    match (src, dst) {
        (Ip::V4(s), Ip::V4(d)) => ipv4(s, d, l4.0, &l4.1, 0),
        (Ip::V6(s), Ip::V6(d)) => ipv6(s, d, &[], l4.0, &l4.1),
        _ => panic!("mixed address families"),
    }
}

/// Ethernet frame around an IP packet.
pub fn eth(ip_packet: &[u8]) -> Vec<u8> {
    let ethertype: u16 = if ip_packet.first().is_some_and(|b| b >> 4 == 6) {
        0x86dd
    } else {
        0x0800
    };
    eth_raw(ethertype, ip_packet)
}

pub fn eth_raw(ethertype: u16, payload: &[u8]) -> Vec<u8> {
    let mut f = vec![0x02, 0, 0, 0, 0, 1, 0x02, 0, 0, 0, 0, 2];
    f.extend_from_slice(&ethertype.to_be_bytes());
    f.extend_from_slice(payload);
    f
}

/// Ethernet frame of `l4` from `src` to `dst`.
pub fn frame(src: Ip, dst: Ip, l4: &(u8, Vec<u8>)) -> Vec<u8> {
    eth(&ip(src, dst, l4))
}
