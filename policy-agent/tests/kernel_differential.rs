//! The kernel programs and the user-space lookup model
//! (`policy_engine::lookup::verdict`) agree on random states and random
//! packets. Every packet is a new flow (unique source ports), so conntrack
//! never answers in the model's place. Needs root.

#[path = "support/kernel.rs"]
mod kernel;
#[path = "support/packets.rs"]
mod packets;

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

use kernel::{in_netns, open};
use packets::*;
use policy_agent::dataplane::{
    kernel::{KernelDataplane, TestVerdict, PROG_POD_EGRESS, PROG_POD_INGRESS},
    Dataplane,
};
use policy_common::{dir, identity, PolicyValue};
use policy_engine::{
    lookup,
    state::{CidrPrefix, MapState, PolicyEntry, PortMatch},
};

/// xorshift64*: deterministic, no dependency.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }
    fn below(&mut self, n: u64) -> u64 {
        self.next() % n
    }
    fn pick<T: Copy>(&mut self, xs: &[T]) -> T {
        xs[self.below(xs.len() as u64) as usize]
    }
    fn chance(&mut self, percent: u64) -> bool {
        self.below(100) < percent
    }
}

const EPS: [u32; 3] = [1, 2, 3];
const IDS: [u32; 6] = [identity::HOST, identity::WORLD, 256, 257, 258, 259];
const PROTOS: [u8; 3] = [TCP, UDP, SCTP];

/// Peers: pod-ish addresses and outside documentation addresses, both
/// families.
fn peer_pool() -> Vec<IpAddr> {
    let mut v = Vec::new();
    for last in [1u8, 2, 3, 17, 130, 200] {
        v.push(IpAddr::V4(Ipv4Addr::new(10, 0, 0, last)));
        v.push(IpAddr::V4(Ipv4Addr::new(198, 51, 100, last)));
        v.push(IpAddr::V6(Ipv6Addr::new(
            0x2001,
            0xdb8,
            0,
            0,
            0,
            0,
            0,
            u16::from(last),
        )));
        v.push(IpAddr::V6(Ipv6Addr::new(
            0x2001,
            0xdb8,
            1,
            0,
            0,
            0,
            0,
            u16::from(last),
        )));
    }
    v
}

fn mapped(a: IpAddr) -> [u8; 16] {
    match a {
        IpAddr::V4(v) => policy_common::v4_mapped(v.octets()),
        IpAddr::V6(v) => v.octets(),
    }
}

fn mask(mut a: [u8; 16], len: u8) -> [u8; 16] {
    for (i, b) in a.iter_mut().enumerate() {
        let bits = (i32::from(len) - (i as i32) * 8).clamp(0, 8);
        *b &= if bits == 0 { 0 } else { 0xffu8 << (8 - bits) };
    }
    a
}

fn random_state(r: &mut Rng, peers: &[IpAddr], ports: &[u16]) -> MapState {
    let mut s = MapState::default();
    for ep in EPS {
        if r.chance(85) {
            s.endpoints.insert(ep, r.below(4) as u32);
        }
    }
    for p in peers {
        if r.chance(50) {
            s.ipcache.insert(mapped(*p), r.pick(&IDS));
        }
    }
    for _ in 0..r.below(6) {
        let p = mapped(r.pick(peers));
        let v4 = p[..12] == policy_common::v4_mapped([0; 4])[..12];
        let len = if v4 {
            96 + r.pick(&[0u8, 8, 16, 24, 28, 32])
        } else {
            r.pick(&[0u8, 32, 48, 64, 120, 128])
        };
        s.cidrs.insert(
            CidrPrefix {
                prefix_len: len,
                addr: mask(p, len),
            },
            r.pick(&IDS),
        );
    }
    for _ in 0..r.below(25) {
        let ports = match r.below(4) {
            0 => PortMatch::AnyProtocol,
            1 => PortMatch::AnyPort {
                proto: r.pick(&PROTOS),
            },
            _ => {
                let prefix_len = r.pick(&[16u8, 16, 15, 13, 10, 6]);
                let shift = 16 - u32::from(prefix_len);
                let port = ((u32::from(r.pick(ports)) >> shift) << shift) as u16;
                PortMatch::Ports {
                    proto: r.pick(&PROTOS),
                    port,
                    prefix_len,
                }
            }
        };
        let id = if r.chance(25) {
            identity::ANY
        } else {
            r.pick(&IDS)
        };
        s.policy.insert(
            PolicyEntry {
                ep_id: r.pick(&EPS),
                dir: r.pick(&[dir::INGRESS, dir::EGRESS]),
                identity: id,
                ports,
            },
            PolicyValue {
                rule: r.below(1000) as u32,
                flags: 0,
            },
        );
    }
    s
}

fn pod_addr(ep: u32, v6: bool) -> Ip {
    if v6 {
        packets::v6(0x100 + ep as u16)
    } else {
        v4(10, 1, 0, ep as u8)
    }
}

fn to_ip(a: IpAddr) -> Ip {
    match a {
        IpAddr::V4(v) => Ip::V4(v.octets()),
        IpAddr::V6(v) => Ip::V6(v.octets()),
    }
}

/// Registers every endpoint of `EPS` on its interface of `idx`, each
/// sending from its IPv4 and IPv6 pod address; returns those addresses.
fn register_all(dp: &mut KernelDataplane, idx: &[u32]) -> Vec<(u32, [[u8; 16]; 2])> {
    for (ep, ifindex) in EPS.iter().zip(idx) {
        dp.register_endpoint(*ifindex, *ep).unwrap();
    }
    let addrs: Vec<(u32, [[u8; 16]; 2])> = EPS
        .iter()
        .map(|ep| {
            (
                *ep,
                [pod_addr(*ep, false).mapped(), pod_addr(*ep, true).mapped()],
            )
        })
        .collect();
    let eps: Vec<(u32, &[[u8; 16]])> = addrs.iter().map(|(ep, a)| (*ep, &a[..])).collect();
    kernel::sources(dp, &eps);
    addrs
}

#[test]
fn kernel_agrees_with_the_lookup_model() {
    let (mut dp, _pins) = open("differential");
    let peers = peer_pool();
    let ports: Vec<u16> = vec![22, 53, 80, 443, 1024, 3868, 8080, 8443, 9000, 9999];
    let mut r = Rng(0x5eed_cafe_f00d_1234);
    let mut sport: u16 = 10_000;
    let mut checked = 0usize;
    let mut reasons = std::collections::BTreeMap::new();
    in_netns(EPS.len(), |idx| {
        register_all(&mut dp, idx);
        for round in 0..40 {
            let state = random_state(&mut r, &peers, &ports);
            dp.apply(&state).unwrap();
            for _ in 0..150 {
                let k = r.below(EPS.len() as u64) as usize;
                let (ep, ifindex) = (EPS[k], idx[k]);
                let d = r.pick(&[dir::INGRESS, dir::EGRESS]);
                let peer = r.pick(&peers);
                let pod = pod_addr(ep, peer.is_ipv6());
                let proto = r.pick(&[TCP, UDP, SCTP, ICMP]);
                let dport = if r.chance(80) {
                    let p = r.pick(&ports);
                    p.wrapping_add(r.below(3) as u16).wrapping_sub(1)
                } else {
                    r.below(65536) as u16
                };
                sport = if sport == u16::MAX { 10_000 } else { sport + 1 };
                let l4 = match proto {
                    TCP => tcp(sport, dport, SYN),
                    UDP => udp(sport, dport),
                    SCTP => sctp(sport, dport, 1),
                    _ => echo(peer.is_ipv6(), true, sport),
                };
                let (src, dst, prog) = if d == dir::INGRESS {
                    (to_ip(peer), pod, PROG_POD_INGRESS)
                } else {
                    (pod, to_ip(peer), PROG_POD_EGRESS)
                };
                let got = dp
                    .test_run(prog, &frame(src, dst, &l4), ifindex)
                    .unwrap_or_else(|e| panic!("test run: {e}"));
                let model_proto = if proto == ICMP && peer.is_ipv6() {
                    ICMPV6
                } else {
                    proto
                };
                let model_port = if proto == ICMP { 0 } else { dport };
                let want = lookup::verdict(&state, ep, d, peer, model_proto, model_port);
                let want_v = if want.allowed {
                    TestVerdict::Allow
                } else {
                    TestVerdict::Drop
                };
                if got != want_v {
                    panic!(
                        "round {round}: ep {ep} dir {d} peer {peer} proto {model_proto} dport {dport}: \
                         kernel {got:?}, model {want:?}\nstate: {state:#?}"
                    );
                }
                checked += 1;
                *reasons.entry(want.reason).or_insert(0usize) += 1;
            }
        }
    });
    assert_eq!(checked, 40 * 150);
    // The random states must exercise every outcome, or the comparison
    // proves little.
    for reason in [
        lookup::Reason::NotReady,
        lookup::Reason::NotIsolated,
        lookup::Reason::Host,
        lookup::Reason::PolicyAllow,
        lookup::Reason::NoRule,
    ] {
        let n = reasons.get(&reason).copied().unwrap_or(0);
        if n < 10 {
            panic!("only {n} packets with reason {reason}: {reasons:?}");
        }
    }
}

/// Frames the parser must get right beyond the plain ones above: IPv4
/// options and fragments, IPv6 extension headers (up to and past the
/// limit) and fragments, ICMP errors, link control, other ethertypes and
/// every truncation of a TCP packet, each judged as the first packet of
/// its flow (`policy_engine::packet::first_packet`, the model the packet
/// fuzz target uses too): what each frame leaves in conntrack is removed
/// after it.
#[test]
fn odd_frames_agree_with_the_packet_model() {
    let (mut dp, _pins) = open("differential-odd");
    let peers = peer_pool();
    let ports: Vec<u16> = vec![22, 53, 80, 443, 8080];
    let mut r = Rng(0x0ddf_4a3e_5eed_0001);
    in_netns(EPS.len(), |idx| {
        let addrs = register_all(&mut dp, idx);
        let sources: std::collections::BTreeMap<u32, std::collections::BTreeSet<[u8; 16]>> = addrs
            .iter()
            .map(|(ep, a)| (*ep, a.iter().copied().collect()))
            .collect();
        let mut checked = 0usize;
        for round in 0..10 {
            let state = random_state(&mut r, &peers, &ports);
            dp.apply(&state).unwrap();
            for (k, ep) in EPS.iter().enumerate() {
                for d in [dir::INGRESS, dir::EGRESS] {
                    let peer = to_ip(r.pick(&peers));
                    let v6 = matches!(peer, Ip::V6(_));
                    let pod = pod_addr(*ep, v6);
                    let (src, dst) = if d == dir::INGRESS {
                        (peer, pod)
                    } else {
                        (pod, peer)
                    };
                    let prog = if d == dir::INGRESS {
                        PROG_POD_INGRESS
                    } else {
                        PROG_POD_EGRESS
                    };
                    for frame in odd_frames(src, dst, r.pick(&ports)) {
                        let got = match dp.test_run(prog, &frame, idx[k]) {
                            Ok(v) => v,
                            // The test run refuses IP frames shorter than
                            // their IP header.
                            Err(_) if frame.len() < 14 + if v6 { 40 } else { 20 } => continue,
                            Err(e) => panic!("test run: {e}"),
                        };
                        dp.forget_flow(*ep, d, &frame).unwrap();
                        let (allowed, why) = policy_engine::packet::first_packet(
                            &state,
                            &sources[ep],
                            *ep,
                            d,
                            &frame,
                        );
                        let want = if allowed {
                            TestVerdict::Allow
                        } else {
                            TestVerdict::Drop
                        };
                        assert_eq!(
                            got, want,
                            "round {round} ep {ep} dir {d} frame {frame:02x?}: model {why:?}"
                        );
                        checked += 1;
                    }
                }
            }
        }
        assert!(checked > 1000, "{checked}");
    });
}

fn odd_frames(src: Ip, dst: Ip, dport: u16) -> Vec<Vec<u8>> {
    let syn = tcp(40_000, dport, SYN);
    let mut out = Vec::new();
    match (src, dst) {
        (Ip::V4(s), Ip::V4(d)) => {
            // Options: IHL 7, the TCP header after 8 bytes of options.
            let mut opt = ipv4(s, d, TCP, &[[0u8; 8].as_slice(), &syn.1].concat(), 0);
            opt[0] = 0x47;
            out.push(eth(&opt));
            let mut bad_ihl = ipv4(s, d, TCP, &syn.1, 0);
            bad_ihl[0] = 0x44;
            out.push(eth(&bad_ihl));
            out.push(eth(&ipv4(s, d, UDP, &udp(40_000, dport).1, 0x2000)));
            out.push(eth(&ipv4(s, d, UDP, &[0u8; 16], 0x0004)));
            out.push(eth(&ipv4(s, d, TCP, &[0u8; 16], 0x2010)));
            let quoted = ipv4(d, s, TCP, &tcp(dport, 40_000, ACK).1[..8], 0);
            out.push(frame(src, dst, &icmp_error(false, 3, 1, &quoted)));
            out.push(frame(src, dst, &icmp(false, 13, 0, &[0; 16])));
            let mut arp = vec![0, 1, 8, 0, 6, 4, 0, 1, 2, 0, 0, 0, 0, 1];
            arp.extend_from_slice(&s);
            arp.extend_from_slice(&[0; 6]);
            arp.extend_from_slice(&d);
            out.push(eth_raw(0x0806, &arp));
        }
        (Ip::V6(s), Ip::V6(d)) => {
            for ext in [
                vec![(0u8, 8usize)],
                vec![(43, 16), (60, 8)],
                vec![(60, 8); 7],
                vec![(60, 8); 8],
                vec![(51, 16)],
            ] {
                out.push(eth(&ipv6(s, d, &ext, TCP, &syn.1)));
            }
            out.push(eth(&ipv6_fragment(
                s,
                d,
                UDP,
                0x0001,
                &udp(40_000, dport).1,
            )));
            out.push(eth(&ipv6_fragment(s, d, UDP, 0x0010, &[0u8; 8])));
            let quoted = ipv6(d, s, &[], UDP, &udp(dport, 40_000).1);
            out.push(frame(src, dst, &icmp_error(true, 1, 0, &quoted)));
            out.push(frame(src, dst, &icmp(true, 135, 0, &[0; 20])));
            out.push(frame(src, dst, &icmp(true, 143, 0, &[0; 20])));
        }
        _ => {}
    }
    let full = frame(src, dst, &syn);
    for len in 14..full.len() {
        out.push(full[..len].to_vec());
    }
    out.push(eth_raw(0x88cc, &[0; 46]));
    let mut wrong_version = full.clone();
    wrong_version[14] = 0x55;
    out.push(wrong_version);
    out
}
