//! Verdicts of the tc programs on crafted frames (BPF_PROG_TEST_RUN), one
//! per rule of the verdict algorithm, for TCP, UDP, SCTP, ICMP, IPv4 and
//! IPv6 (with extension headers), fragments and malformed headers.
//! Needs root.

#[path = "support/kernel.rs"]
mod kernel;
#[path = "support/packets.rs"]
mod packets;

use std::time::Duration;

use kernel::{in_netns, open, StateBuilder};
use packets::*;
use policy_agent::dataplane::{
    kernel::{KernelDataplane, TestVerdict, PROG_POD_EGRESS, PROG_POD_INGRESS},
    Dataplane,
};
use policy_common::{dir, ep_flags, identity, reason, verdict};
use policy_engine::state::PortMatch;

const EP: u32 = 10;
const PEER_ID: u32 = 300;
const BOTH: u32 = ep_flags::ISOLATED_INGRESS | ep_flags::ISOLATED_EGRESS;

fn pod() -> Ip {
    v4(10, 0, 0, 10)
}
fn peer() -> Ip {
    v4(10, 0, 0, 20)
}
fn stranger() -> Ip {
    v4(10, 0, 0, 30)
}

/// Ingress-isolated endpoint: TCP/80, UDP any port, SCTP/3868 from PEER_ID.
fn base() -> StateBuilder {
    StateBuilder::default()
        .endpoint(EP, ep_flags::ISOLATED_INGRESS)
        .ip(pod().mapped(), 299)
        .ip(peer().mapped(), PEER_ID)
        .ip(stranger().mapped(), 301)
        .port(EP, dir::INGRESS, PEER_ID, TCP, 80)
        .allow(
            EP,
            dir::INGRESS,
            PEER_ID,
            PortMatch::AnyPort { proto: UDP },
            7,
        )
        .port(EP, dir::INGRESS, PEER_ID, SCTP, 3868)
}

/// Maps `ifindex` to the endpoint, which sends from `pod()` and `v6(10)`.
fn register(dp: &mut KernelDataplane, ifindex: u32) {
    dp.register_endpoint(ifindex, EP).unwrap();
    kernel::sources(dp, &[(EP, &[pod().mapped(), v6(10).mapped()])]);
}

/// A non-first fragment of another datagram than the first fragments the
/// tests send (those carry identification 0 for IPv4, 1 for IPv6).
fn other_datagram(mut p: Vec<u8>) -> Vec<u8> {
    if p[0] >> 4 == 4 {
        p[4..6].copy_from_slice(&0x7777u16.to_be_bytes());
    } else {
        p[44..48].copy_from_slice(&0x7777u32.to_be_bytes());
    }
    p
}

/// Who has 10.0.0.10? Tell 10.0.0.20 (Ethernet, IPv4).
const ARP_REQUEST: [u8; 28] = [
    0, 1, 8, 0, 6, 4, 0, 1, 2, 0, 0, 0, 0, 2, 10, 0, 0, 20, 0, 0, 0, 0, 0, 0, 10, 0, 0, 10,
];

fn ingress(dp: &mut KernelDataplane, ifindex: u32, f: &[u8]) -> TestVerdict {
    dp.test_run(PROG_POD_INGRESS, f, ifindex)
        .unwrap_or_else(|e| panic!("test run of a {}-byte frame: {e}", f.len()))
}

fn egress(dp: &mut KernelDataplane, ifindex: u32, f: &[u8]) -> TestVerdict {
    dp.test_run(PROG_POD_EGRESS, f, ifindex)
        .unwrap_or_else(|e| panic!("test run: {e}"))
}

fn expect(what: &str, got: TestVerdict, want: TestVerdict) {
    if got != want {
        panic!("{what}: got {got:?}, want {want:?}");
    }
}

use TestVerdict::{Allow, Drop};

#[test]
fn fail_closed_until_policy_is_applied() {
    let (mut dp, _pins) = open("fail-closed");
    in_netns(1, |idx| {
        let f = frame(peer(), pod(), &tcp(40000, 80, SYN));
        // Unknown interface.
        expect("unknown ifindex", ingress(&mut dp, idx[0], &f), Drop);
        register(&mut dp, idx[0]);
        // Known interface, no state for the endpoint.
        expect("no state", ingress(&mut dp, idx[0], &f), Drop);
        dp.apply(&base().build()).unwrap();
        expect("after apply", ingress(&mut dp, idx[0], &f), Allow);
        // A state without the endpoint makes it not ready again.
        dp.apply(&StateBuilder::default().endpoint(EP + 1, 0).build())
            .unwrap();
        expect(
            "endpoint gone",
            ingress(&mut dp, idx[0], &frame(peer(), pod(), &tcp(40001, 80, SYN))),
            Drop,
        );
    });
}

#[test]
fn tcp_udp_sctp_by_port_and_peer() {
    let (mut dp, _pins) = open("ports");
    dp.apply(&base().build()).unwrap();
    in_netns(1, |idx| {
        let i = idx[0];
        register(&mut dp, i);
        expect(
            "tcp/80 from peer",
            ingress(&mut dp, i, &frame(peer(), pod(), &tcp(40000, 80, SYN))),
            Allow,
        );
        expect(
            "tcp/81 from peer",
            ingress(&mut dp, i, &frame(peer(), pod(), &tcp(40000, 81, SYN))),
            Drop,
        );
        expect(
            "tcp/80 from stranger",
            ingress(&mut dp, i, &frame(stranger(), pod(), &tcp(40000, 80, SYN))),
            Drop,
        );
        expect(
            "udp/any from peer",
            ingress(&mut dp, i, &frame(peer(), pod(), &udp(5000, 9999))),
            Allow,
        );
        expect(
            "udp from stranger",
            ingress(&mut dp, i, &frame(stranger(), pod(), &udp(5000, 9999))),
            Drop,
        );
        expect(
            "sctp INIT/3868",
            ingress(&mut dp, i, &frame(peer(), pod(), &sctp(7000, 3868, 1))),
            Allow,
        );
        expect(
            "sctp INIT/3869",
            ingress(&mut dp, i, &frame(peer(), pod(), &sctp(7000, 3869, 1))),
            Drop,
        );
        expect(
            "sctp DATA/3869",
            ingress(&mut dp, i, &frame(peer(), pod(), &sctp(7001, 3869, 0))),
            Drop,
        );
        // Egress is not isolated.
        expect(
            "egress not isolated",
            egress(&mut dp, i, &frame(pod(), stranger(), &tcp(40000, 443, SYN))),
            Allow,
        );
    });
}

#[test]
fn port_ranges_cidrs_any_peer_and_host() {
    let (mut dp, _pins) = open("lpm");
    let world = v4(203, 0, 113, 9);
    let state = base()
        .endpoint(EP, BOTH)
        .ip(v4(10, 0, 0, 1).mapped(), identity::HOST)
        // 198.51.100.0/24 → 400; egress to it on 8000-8007 (one block).
        .cidr(v4(198, 51, 100, 0).mapped(), 96 + 24, 400)
        .cidr([0; 16], 0, identity::WORLD)
        .allow(
            EP,
            dir::EGRESS,
            400,
            PortMatch::Ports {
                proto: TCP,
                port: 8000,
                prefix_len: 13,
            },
            9,
        )
        // Egress to anyone on UDP/53.
        .port(EP, dir::EGRESS, identity::ANY, UDP, 53)
        .build();
    dp.apply(&state).unwrap();
    in_netns(1, |idx| {
        let i = idx[0];
        register(&mut dp, i);
        let net = v4(198, 51, 100, 7);
        expect(
            "8000 in block",
            egress(&mut dp, i, &frame(pod(), net, &tcp(40000, 8000, SYN))),
            Allow,
        );
        expect(
            "8007 in block",
            egress(&mut dp, i, &frame(pod(), net, &tcp(40001, 8007, SYN))),
            Allow,
        );
        expect(
            "8008 outside",
            egress(&mut dp, i, &frame(pod(), net, &tcp(40002, 8008, SYN))),
            Drop,
        );
        expect(
            "block to world",
            egress(&mut dp, i, &frame(pod(), world, &tcp(40003, 8000, SYN))),
            Drop,
        );
        expect(
            "dns to world",
            egress(&mut dp, i, &frame(pod(), world, &udp(5353, 53))),
            Allow,
        );
        expect(
            "dns to cidr",
            egress(&mut dp, i, &frame(pod(), net, &udp(5354, 53))),
            Allow,
        );
        expect(
            "host ingress",
            ingress(
                &mut dp,
                i,
                &frame(v4(10, 0, 0, 1), pod(), &tcp(40004, 9999, SYN)),
            ),
            Allow,
        );
        expect(
            "world ingress",
            ingress(&mut dp, i, &frame(world, pod(), &tcp(40005, 80, SYN))),
            Drop,
        );
        // ICMP uses port 0: only any-protocol entries match.
        expect(
            "ping peer (egress isolated, no any-proto)",
            egress(&mut dp, i, &frame(pod(), peer(), &echo(false, true, 7))),
            Drop,
        );
    });
    let with_any = StateBuilder(state)
        .allow(EP, dir::EGRESS, PEER_ID, PortMatch::AnyProtocol, 11)
        .build();
    dp.apply(&with_any).unwrap();
    in_netns(1, |idx| {
        let i = idx[0];
        register(&mut dp, i);
        expect(
            "ping peer (any-proto)",
            egress(&mut dp, i, &frame(pod(), peer(), &echo(false, true, 8))),
            Allow,
        );
        expect(
            "sctp to peer (any-proto)",
            egress(&mut dp, i, &frame(pod(), peer(), &sctp(1, 2, 1))),
            Allow,
        );
    });
}

#[test]
fn ipv6_with_extension_headers() {
    let (mut dp, _pins) = open("ipv6");
    let pod6 = v6(10);
    let peer6 = v6(20);
    let state = base()
        .ip(pod6.mapped(), 299)
        .ip(peer6.mapped(), PEER_ID)
        .build();
    dp.apply(&state).unwrap();
    in_netns(1, |idx| {
        let i = idx[0];
        register(&mut dp, i);
        let (s, d) = match (peer6, pod6) {
            (Ip::V6(s), Ip::V6(d)) => (s, d),
            _ => unreachable!(),
        };
        let t80 = tcp(40000, 80, SYN);
        let t81 = tcp(40000, 81, SYN);
        expect(
            "plain v6 tcp/80",
            ingress(&mut dp, i, &frame(peer6, pod6, &t80)),
            Allow,
        );
        expect(
            "plain v6 tcp/81",
            ingress(&mut dp, i, &frame(peer6, pod6, &t81)),
            Drop,
        );
        let exts = [(0u8, 8usize), (60, 16), (43, 24)];
        expect(
            "ext headers tcp/80",
            ingress(&mut dp, i, &eth(&ipv6(s, d, &exts, TCP, &t80.1))),
            Allow,
        );
        expect(
            "ext headers tcp/81",
            ingress(
                &mut dp,
                i,
                &eth(&ipv6(s, d, &exts, TCP, &tcp(40001, 81, SYN).1)),
            ),
            Drop,
        );
        // More extension headers than the program walks: dropped, even to
        // an allowed port.
        let many = [(60u8, 8usize); 9];
        expect(
            "too many ext headers",
            ingress(&mut dp, i, &eth(&ipv6(s, d, &many, TCP, &t80.1))),
            Drop,
        );
        // Extension header longer than the packet.
        let mut cut = ipv6(s, d, &[(60, 16)], TCP, &[]);
        cut.truncate(40 + 8);
        expect(
            "truncated ext header",
            ingress(&mut dp, i, &eth(&cut)),
            Drop,
        );
        // Neighbour discovery always passes.
        let ns = icmp(true, 135, 0, &[0; 20]);
        expect(
            "neighbour solicitation",
            ingress(&mut dp, i, &frame(v6(99), pod6, &ns)),
            Allow,
        );
        // So does multicast listener discovery (MLDv2 report, MLD query).
        for (what, ty) in [("mldv2 report", 143u8), ("mld query", 130)] {
            let mld = icmp(true, ty, 0, &[0; 20]);
            expect(what, ingress(&mut dp, i, &frame(v6(99), pod6, &mld)), Allow);
        }
        expect(
            "v6 ping from stranger",
            ingress(&mut dp, i, &frame(v6(99), pod6, &echo(true, true, 1))),
            Drop,
        );
        // v6 first fragment carries ports; non-first fragments need an
        // any-port entry (UDP has one, TCP has not).
        expect(
            "v6 first fragment tcp/80",
            ingress(&mut dp, i, &eth(&ipv6_fragment(s, d, TCP, 0x0001, &t80.1))),
            Allow,
        );
        expect(
            "v6 non-first fragment tcp",
            ingress(
                &mut dp,
                i,
                &eth(&other_datagram(ipv6_fragment(s, d, TCP, 0x0100, &[0; 16]))),
            ),
            Drop,
        );
        expect(
            "v6 non-first fragment udp",
            ingress(
                &mut dp,
                i,
                &eth(&other_datagram(ipv6_fragment(s, d, UDP, 0x0100, &[0; 16]))),
            ),
            Allow,
        );
    });
}

#[test]
fn fragments_and_malformed_headers_never_pass_a_denied_flow() {
    let (mut dp, _pins) = open("malformed");
    dp.apply(&base().build()).unwrap();
    in_netns(1, |idx| {
        let i = idx[0];
        register(&mut dp, i);
        let (Ip::V4(s), Ip::V4(d)) = (peer(), pod()) else {
            unreachable!()
        };
        let t80 = tcp(40000, 80, SYN).1;
        // First fragment (MF set, offset 0) is judged on its ports.
        expect(
            "first fragment 80",
            ingress(&mut dp, i, &eth(&ipv4(s, d, TCP, &t80, 0x2000))),
            Allow,
        );
        expect(
            "first fragment 81",
            ingress(
                &mut dp,
                i,
                &eth(&ipv4(s, d, TCP, &tcp(1, 81, SYN).1, 0x2000)),
            ),
            Drop,
        );
        // Non-first fragments of a datagram whose first fragment was not
        // seen: only any-port entries can allow them.
        expect(
            "tcp non-first fragment",
            ingress(
                &mut dp,
                i,
                &eth(&other_datagram(ipv4(s, d, TCP, &[0; 16], 0x0010))),
            ),
            Drop,
        );
        expect(
            "udp non-first fragment",
            ingress(
                &mut dp,
                i,
                &eth(&other_datagram(ipv4(s, d, UDP, &[0; 16], 0x0010))),
            ),
            Allow,
        );
        expect(
            "udp non-first fragment, stranger",
            ingress(
                &mut dp,
                i,
                &eth(&other_datagram(ipv4(
                    [10, 0, 0, 30],
                    d,
                    UDP,
                    &[0; 16],
                    0x0010,
                ))),
            ),
            Drop,
        );
        // Truncated TCP header (ports present, flags missing).
        let mut cut = ipv4(s, d, TCP, &t80, 0);
        cut.truncate(20 + 10);
        expect("truncated tcp", ingress(&mut dp, i, &eth(&cut)), Drop);
        // Tiny first fragment without the full L4 header.
        let tiny = ipv4(s, d, TCP, &t80[..4], 0x2000);
        expect(
            "tiny first fragment",
            ingress(&mut dp, i, &eth(&tiny)),
            Drop,
        );
        // Bad IHL and bad version.
        let mut bad = ipv4(s, d, TCP, &t80, 0);
        bad[0] = 0x44;
        expect("ihl 4", ingress(&mut dp, i, &eth(&bad)), Drop);
        bad[0] = 0x55;
        expect("version 5", ingress(&mut dp, i, &eth(&bad)), Drop);
        // IPv4 header for TCP with no TCP header at all (the kernel's test
        // run refuses frames shorter than an IPv4 header).
        expect(
            "no l4 header",
            ingress(&mut dp, i, &eth(&ipv4(s, d, TCP, &[], 0))),
            Drop,
        );
        // Other ethertypes are dropped; ARP passes.
        expect(
            "vlan tagged",
            ingress(&mut dp, i, &eth_raw(0x8100, &[0; 46])),
            Drop,
        );
        expect(
            "arp",
            ingress(&mut dp, i, &eth_raw(0x0806, &ARP_REQUEST)),
            Allow,
        );
    });
}

#[test]
fn drops_are_reported_as_events() {
    let (mut dp, _pins) = open("events");
    let mut events = dp.take_event_reader().expect("event reader");
    dp.apply(&base().build()).unwrap();
    in_netns(1, |idx| {
        let i = idx[0];
        register(&mut dp, i);
        expect(
            "denied",
            ingress(&mut dp, i, &frame(peer(), pod(), &tcp(40000, 81, SYN))),
            Drop,
        );
    });
    let evs = events.poll(Duration::from_secs(1)).unwrap();
    let ev = evs
        .iter()
        .find(|e| e.dport == 81)
        .unwrap_or_else(|| panic!("no event for the drop in {evs:?}"));
    assert_eq!(ev.verdict, verdict::DROPPED);
    assert_eq!(ev.reason, reason::NO_RULE);
    assert_eq!(ev.ep_id, EP);
    assert_eq!(ev.dir, dir::INGRESS);
    assert_eq!(ev.peer_identity, PEER_ID);
    assert_eq!(ev.saddr, peer().mapped());
    assert_eq!(ev.sport, 40000);
}

#[test]
fn allowed_new_flows_are_reported_when_asked() {
    let (mut dp, _pins) = open("events-allowed");
    let mut events = dp.take_event_reader().expect("event reader");
    dp.apply(&base().build()).unwrap();
    dp.set_events_for_allowed(true).unwrap();
    in_netns(1, |idx| {
        let i = idx[0];
        register(&mut dp, i);
        let syn = frame(peer(), pod(), &tcp(40100, 80, SYN));
        expect("allowed", ingress(&mut dp, i, &syn), Allow);
        // Established packets are not reported.
        let ack = frame(peer(), pod(), &tcp(40100, 80, ACK));
        expect("established", ingress(&mut dp, i, &ack), Allow);
    });
    let evs = events.poll(Duration::from_secs(1)).unwrap();
    let allowed: Vec<_> = evs.iter().filter(|e| e.sport == 40100).collect();
    if allowed.len() != 1 || allowed[0].verdict != verdict::ALLOWED {
        panic!("want one ALLOWED event for the new flow, got {allowed:?}");
    }
    assert_eq!(allowed[0].reason, reason::POLICY_ALLOW);
    assert_eq!(allowed[0].rule, 80);
    dp.set_events_for_allowed(false).unwrap();
    in_netns(1, |idx| {
        register(&mut dp, idx[0]);
        let syn = frame(peer(), pod(), &tcp(40101, 80, SYN));
        expect("allowed, quiet", ingress(&mut dp, idx[0], &syn), Allow);
    });
    let evs = events.poll(Duration::from_millis(200)).unwrap();
    if evs.iter().any(|e| e.sport == 40101) {
        panic!("allowed flow reported with reporting off: {evs:?}");
    }
}

#[test]
fn verdict_cost_with_large_maps() {
    let (mut dp, _pins) = open("cost");
    let mut b = base();
    // 1,000 entries for the endpoint and 10,000 CIDRs.
    for port in 1000..2000u16 {
        b = b.port(EP, dir::INGRESS, PEER_ID + 1, TCP, port);
    }
    for n in 0..10_000u32 {
        let [_, x, y, _] = n.to_be_bytes();
        b = b.cidr(v4(100, x, y, 0).mapped(), 96 + 24, 500 + n % 7);
    }
    dp.apply(&b.build()).unwrap();
    in_netns(1, |idx| {
        let i = idx[0];
        register(&mut dp, i);
        // A denied packet is judged in full on every run (no conntrack
        // entry is created for it).
        let denied = frame(v4(100, 0, 7, 9), pod(), &tcp(40000, 1500, SYN));
        let (v, per_run) = dp
            .test_run_timed(PROG_POD_INGRESS, &denied, i, 20_000)
            .unwrap();
        expect("denied", v, Drop);
        println!("full verdict: {per_run:?} per packet");
        if per_run > Duration::from_micros(20) {
            panic!("a verdict took {per_run:?}");
        }
    });
}

/// The generation a packet reads is derived from the revision it reads
/// (one 32-bit load), never taken from a separate field that a concurrent
/// write of the config entry could leave mixed: a config whose
/// `active_gen` disagrees with its revision is read by the revision.
#[test]
fn generation_follows_the_revision() {
    use aya::maps::{Array, Map, MapData};
    use policy_agent::dataplane::kernel::PinPaths;
    use policy_common::{maps as names, Config};

    let (mut dp, pins) = open("gen-from-revision");
    let allows = base().build();
    let denies = StateBuilder::default()
        .endpoint(EP, ep_flags::ISOLATED_INGRESS)
        .ip(peer().mapped(), PEER_ID)
        .build();
    dp.apply(&allows).unwrap();
    dp.apply(&denies).unwrap();
    let cfg = dp.config();
    assert_eq!(cfg.active_gen, cfg.revision & 1);
    in_netns(1, |idx| {
        let i = idx[0];
        register(&mut dp, i);
        let syn = |sport| frame(peer(), pod(), &tcp(sport, 80, SYN));
        expect(
            "under the denying state",
            ingress(&mut dp, i, &syn(41000)),
            Drop,
        );
        // What a torn write would leave: the new revision with the old
        // generation bit.
        let path = PinPaths::new(&pins.0).map(names::CONFIG);
        let mut config: Array<MapData, Config> =
            Array::try_from(Map::Array(MapData::from_pin(&path).unwrap())).unwrap();
        let torn = Config {
            active_gen: cfg.active_gen ^ 1,
            ..cfg
        };
        config.set(0, torn, 0).unwrap();
        expect(
            "stale generation bit, current revision",
            ingress(&mut dp, i, &syn(41001)),
            Drop,
        );
        // The revision alone moves the generation.
        let back = Config {
            revision: cfg.revision.wrapping_sub(1),
            ..cfg
        };
        config.set(0, back, 0).unwrap();
        expect("previous revision", ingress(&mut dp, i, &syn(41002)), Allow);
    });
}
