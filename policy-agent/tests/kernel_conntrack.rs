//! Connection tracking in the tc programs (BPF_PROG_TEST_RUN): replies of
//! allowed flows pass, policy changes cut established flows, ICMP errors
//! related to a flow pass, and per-endpoint entries never let one pod's
//! check stand in for another's. Needs root.

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
use policy_common::{dir, ep_flags, reason};
use TestVerdict::{Allow, Drop};

const A: u32 = 1;
const B: u32 = 2;
const ID_A: u32 = 300;
const ID_B: u32 = 301;
const BOTH: u32 = ep_flags::ISOLATED_INGRESS | ep_flags::ISOLATED_EGRESS;

fn a() -> Ip {
    v4(10, 0, 0, 1)
}
fn b() -> Ip {
    v4(10, 0, 0, 2)
}
fn outside() -> Ip {
    v4(203, 0, 113, 5)
}

fn run(dp: &mut KernelDataplane, prog: &str, ifindex: u32, f: &[u8]) -> TestVerdict {
    dp.test_run(prog, f, ifindex)
        .unwrap_or_else(|e| panic!("test run: {e}"))
}

fn expect(what: &str, got: TestVerdict, want: TestVerdict) {
    if got != want {
        panic!("{what}: got {got:?}, want {want:?}");
    }
}

fn addrs() -> StateBuilder {
    StateBuilder::default()
        .ip(a().mapped(), ID_A)
        .ip(b().mapped(), ID_B)
        .cidr([0; 16], 0, policy_common::identity::WORLD)
}

#[test]
fn replies_of_allowed_flows_pass() {
    let (mut dp, _pins) = open("ct-replies");
    // A: ingress isolated with no rule, egress open.
    dp.apply(&addrs().endpoint(A, ep_flags::ISOLATED_INGRESS).build())
        .unwrap();
    in_netns(1, |idx| {
        let i = idx[0];
        dp.register_endpoint(i, A).unwrap();
        kernel::sources(&mut dp, &[(A, &[a().mapped(), v6(1).mapped()])]);
        let eg =
            |dp: &mut KernelDataplane, l4| run(dp, PROG_POD_EGRESS, i, &frame(a(), outside(), &l4));
        let ing = |dp: &mut KernelDataplane, l4| {
            run(dp, PROG_POD_INGRESS, i, &frame(outside(), a(), &l4))
        };
        expect(
            "unsolicited syn-ack",
            ing(&mut dp, tcp(443, 40000, SYN | ACK)),
            Drop,
        );
        expect("syn out", eg(&mut dp, tcp(40000, 443, SYN)), Allow);
        expect(
            "syn-ack back",
            ing(&mut dp, tcp(443, 40000, SYN | ACK)),
            Allow,
        );
        expect("data back", ing(&mut dp, tcp(443, 40000, ACK)), Allow);
        expect("other port back", ing(&mut dp, tcp(443, 40001, ACK)), Drop);
        expect("udp out", eg(&mut dp, udp(5353, 53)), Allow);
        expect("udp back", ing(&mut dp, udp(53, 5353)), Allow);
        expect("udp from other port", ing(&mut dp, udp(54, 5353)), Drop);
        expect("sctp init out", eg(&mut dp, sctp(7000, 3868, 1)), Allow);
        expect(
            "sctp init-ack back",
            ing(&mut dp, sctp(3868, 7000, 2)),
            Allow,
        );
        expect("ping out", eg(&mut dp, echo(false, true, 77)), Allow);
        expect("pong back", ing(&mut dp, echo(false, false, 77)), Allow);
        expect("pong other id", ing(&mut dp, echo(false, false, 78)), Drop);
        expect("ping in", ing(&mut dp, echo(false, true, 79)), Drop);
    });
}

#[test]
fn policy_change_cuts_established_flows() {
    let (mut dp, _pins) = open("ct-revision");
    let mut events = dp.take_event_reader().expect("event reader");
    let allowing = addrs()
        .endpoint(A, ep_flags::ISOLATED_INGRESS)
        .port(A, dir::INGRESS, ID_B, TCP, 80)
        .build();
    let denying = addrs().endpoint(A, ep_flags::ISOLATED_INGRESS).build();
    dp.apply(&allowing).unwrap();
    in_netns(1, |idx| {
        let i = idx[0];
        dp.register_endpoint(i, A).unwrap();
        kernel::sources(&mut dp, &[(A, &[a().mapped(), v6(1).mapped()])]);
        let ing =
            |dp: &mut KernelDataplane, l4| run(dp, PROG_POD_INGRESS, i, &frame(b(), a(), &l4));
        let eg = |dp: &mut KernelDataplane, l4| run(dp, PROG_POD_EGRESS, i, &frame(a(), b(), &l4));
        expect("syn in", ing(&mut dp, tcp(40000, 80, SYN)), Allow);
        expect("syn-ack out", eg(&mut dp, tcp(80, 40000, SYN | ACK)), Allow);
        expect("ack in", ing(&mut dp, tcp(40000, 80, ACK)), Allow);
        // Same policy again (new revision): the flow is judged again and
        // still allowed.
        dp.apply(&allowing).unwrap();
        expect(
            "data in after same policy",
            ing(&mut dp, tcp(40000, 80, ACK)),
            Allow,
        );
        // The rule goes away: the next packet of the flow is dropped and
        // the entry removed.
        dp.apply(&denying).unwrap();
        expect(
            "data in after deny",
            ing(&mut dp, tcp(40000, 80, ACK)),
            Drop,
        );
        expect("data in again", ing(&mut dp, tcp(40000, 80, ACK)), Drop);
        // A reply-direction packet also re-judges the flow's origin.
        dp.apply(&allowing).unwrap();
        expect("new syn in", ing(&mut dp, tcp(40001, 80, SYN)), Allow);
        dp.apply(&denying).unwrap();
        expect(
            "A's reply is cut too",
            eg(&mut dp, tcp(80, 40001, ACK)),
            Drop,
        );
        expect("and B's data in", ing(&mut dp, tcp(40001, 80, ACK)), Drop);
    });
    let evs = events.poll(Duration::from_secs(1)).unwrap();
    if !evs
        .iter()
        .any(|e| e.reason == reason::REVISION_DENIED && e.sport == 40000)
    {
        panic!("no REVISION_DENIED event in {evs:?}");
    }
}

#[test]
fn icmp_errors_of_tracked_flows_pass() {
    let (mut dp, _pins) = open("ct-icmp");
    let state = addrs()
        .endpoint(A, BOTH)
        .port(A, dir::EGRESS, policy_common::identity::ANY, UDP, 53)
        .build();
    dp.apply(&state).unwrap();
    in_netns(1, |idx| {
        let i = idx[0];
        dp.register_endpoint(i, A).unwrap();
        kernel::sources(&mut dp, &[(A, &[a().mapped(), v6(1).mapped()])]);
        let router = v4(198, 51, 100, 1);
        let query = ip(a(), outside(), &udp(5353, 53));
        let unrelated = ip(a(), v4(203, 0, 113, 6), &udp(5353, 53));
        let unreach = |inner: &[u8]| frame(router, a(), &icmp_error(false, 3, 3, inner));
        expect(
            "error before any flow",
            run(&mut dp, PROG_POD_INGRESS, i, &unreach(&query)),
            Drop,
        );
        expect(
            "query out",
            run(&mut dp, PROG_POD_EGRESS, i, &eth(&query)),
            Allow,
        );
        expect(
            "port unreachable back",
            run(&mut dp, PROG_POD_INGRESS, i, &unreach(&query)),
            Allow,
        );
        expect(
            "error for another flow",
            run(&mut dp, PROG_POD_INGRESS, i, &unreach(&unrelated)),
            Drop,
        );
        // IPv6: packet too big for a tracked flow.
        let (a6, o6) = (v6(1), v6(5));
        let state6 = StateBuilder(state.clone()).ip(a6.mapped(), ID_A).build();
        dp.apply(&state6).unwrap();
        let q6 = ip(a6, o6, &udp(5353, 53));
        let too_big = frame(v6(99), a6, &icmp_error(true, 2, 0, &q6));
        expect(
            "v6 too big before flow",
            run(&mut dp, PROG_POD_INGRESS, i, &too_big),
            Drop,
        );
        expect(
            "v6 query out",
            run(&mut dp, PROG_POD_EGRESS, i, &eth(&q6)),
            Allow,
        );
        expect(
            "v6 too big back",
            run(&mut dp, PROG_POD_INGRESS, i, &too_big),
            Allow,
        );
    });
}

#[test]
fn each_pod_checks_its_own_side() {
    let (mut dp, _pins) = open("ct-local");
    // A may send to B on 80; B accepts nothing yet; both fully isolated.
    let base = addrs()
        .endpoint(A, BOTH)
        .endpoint(B, BOTH)
        .port(A, dir::EGRESS, ID_B, TCP, 80);
    dp.apply(&base.clone().build()).unwrap();
    in_netns(2, |idx| {
        let (ia, ib) = (idx[0], idx[1]);
        dp.register_endpoint(ia, A).unwrap();
        dp.register_endpoint(ib, B).unwrap();
        kernel::sources(&mut dp, &[(A, &[a().mapped()]), (B, &[b().mapped()])]);
        let syn = frame(a(), b(), &tcp(40000, 80, SYN));
        let synack = frame(b(), a(), &tcp(80, 40000, SYN | ACK));
        expect("A egress", run(&mut dp, PROG_POD_EGRESS, ia, &syn), Allow);
        expect(
            "B ingress without a rule",
            run(&mut dp, PROG_POD_INGRESS, ib, &syn),
            Drop,
        );
        expect(
            "B cannot answer (no B ingress entry)",
            run(&mut dp, PROG_POD_EGRESS, ib, &synack),
            Drop,
        );
        dp.apply(&base.clone().port(B, dir::INGRESS, ID_A, TCP, 80).build())
            .unwrap();
        expect(
            "A egress again",
            run(&mut dp, PROG_POD_EGRESS, ia, &syn),
            Allow,
        );
        expect(
            "B ingress with the rule",
            run(&mut dp, PROG_POD_INGRESS, ib, &syn),
            Allow,
        );
        expect(
            "B's reply leaves B",
            run(&mut dp, PROG_POD_EGRESS, ib, &synack),
            Allow,
        );
        expect(
            "B's reply enters A",
            run(&mut dp, PROG_POD_INGRESS, ia, &synack),
            Allow,
        );
        // B may not start its own connection to A.
        let b_syn = frame(b(), a(), &tcp(40001, 80, SYN));
        expect(
            "B-initiated",
            run(&mut dp, PROG_POD_EGRESS, ib, &b_syn),
            Drop,
        );
    });
}

/// A fragment of `payload` (the L4 header and data of one datagram): the
/// IPv4 header carries identification `id`, the offset in 8-byte units
/// and the more-fragments bit.
fn v4_fragment(src: Ip, dst: Ip, id: u16, offset8: u16, more: bool, part: &[u8]) -> Vec<u8> {
    let (Ip::V4(s), Ip::V4(d)) = (src, dst) else {
        panic!("IPv4 only");
    };
    let word = offset8 | if more { 0x2000 } else { 0 };
    let mut p = ipv4(s, d, UDP, part, word);
    p[4..6].copy_from_slice(&id.to_be_bytes());
    eth(&p)
}

/// Fragments follow their datagram's first fragment: a fragmented UDP
/// reply to an ingress-isolated pod (admitted by conntrack), and a
/// fragmented datagram out of an egress-isolated pod allowed by a port
/// rule. Later fragments of other datagrams, and of a datagram whose
/// first fragment was dropped, are still dropped.
#[test]
fn fragments_of_passed_datagrams_follow_them() {
    let (mut dp, _pins) = open("ct-fragments");
    let state = addrs()
        .endpoint(A, BOTH)
        .port(A, dir::EGRESS, policy_common::identity::ANY, UDP, 53)
        .build();
    dp.apply(&state).unwrap();
    in_netns(1, |idx| {
        let i = idx[0];
        dp.register_endpoint(i, A).unwrap();
        kernel::sources(&mut dp, &[(A, &[a().mapped()])]);
        // The query: one packet; the reply: two fragments.
        let query = frame(a(), outside(), &udp(5353, 53));
        expect("query out", run(&mut dp, PROG_POD_EGRESS, i, &query), Allow);
        let reply = udp(53, 5353).1;
        let mut first = reply.clone();
        first.extend_from_slice(&[0xab; 1472]);
        let rest = vec![0xcd; 600];
        let in1 = v4_fragment(outside(), a(), 0x4242, 0, true, &first);
        let in2 = v4_fragment(outside(), a(), 0x4242, 1480 / 8, false, &rest);
        let other = v4_fragment(outside(), a(), 0x4243, 1480 / 8, false, &rest);
        expect(
            "other datagram's fragment",
            run(&mut dp, PROG_POD_INGRESS, i, &other),
            Drop,
        );
        expect(
            "reply, first fragment",
            run(&mut dp, PROG_POD_INGRESS, i, &in1),
            Allow,
        );
        expect(
            "reply, second fragment",
            run(&mut dp, PROG_POD_INGRESS, i, &in2),
            Allow,
        );
        expect(
            "still no other datagram's fragment",
            run(&mut dp, PROG_POD_INGRESS, i, &other),
            Drop,
        );

        // Out of A: allowed to UDP 53 by a port rule, denied to 54.
        let mut big53 = udp(6000, 53).1;
        big53.extend_from_slice(&[0x11; 1472]);
        let mut big54 = udp(6001, 54).1;
        big54.extend_from_slice(&[0x11; 1472]);
        let out1 = v4_fragment(a(), outside(), 0x0101, 0, true, &big53);
        let out2 = v4_fragment(a(), outside(), 0x0101, 1480 / 8, false, &rest);
        let bad1 = v4_fragment(a(), outside(), 0x0102, 0, true, &big54);
        let bad2 = v4_fragment(a(), outside(), 0x0102, 1480 / 8, false, &rest);
        expect(
            "egress, first fragment",
            run(&mut dp, PROG_POD_EGRESS, i, &out1),
            Allow,
        );
        expect(
            "egress, second fragment",
            run(&mut dp, PROG_POD_EGRESS, i, &out2),
            Allow,
        );
        expect(
            "denied port, first fragment",
            run(&mut dp, PROG_POD_EGRESS, i, &bad1),
            Drop,
        );
        expect(
            "denied port, second fragment",
            run(&mut dp, PROG_POD_EGRESS, i, &bad2),
            Drop,
        );

        // IPv6: the fragment header's 32-bit identification.
        let (a6, o6) = (v6(1), v6(5));
        let state6 = StateBuilder(state.clone()).ip(a6.mapped(), ID_A).build();
        dp.apply(&state6).unwrap();
        kernel::sources(&mut dp, &[(A, &[a().mapped(), a6.mapped()])]);
        let (Ip::V6(s6), Ip::V6(d6)) = (a6, o6) else {
            unreachable!()
        };
        let with_id = |mut p: Vec<u8>, id: u32| {
            p[44..48].copy_from_slice(&id.to_be_bytes());
            eth(&p)
        };
        let f1 = with_id(ipv6_fragment(s6, d6, UDP, 0x0001, &big53), 7);
        let f2 = with_id(ipv6_fragment(s6, d6, UDP, 1480, &rest), 7);
        let g2 = with_id(ipv6_fragment(s6, d6, UDP, 1480, &rest), 8);
        expect(
            "v6 first fragment",
            run(&mut dp, PROG_POD_EGRESS, i, &f1),
            Allow,
        );
        expect(
            "v6 second fragment",
            run(&mut dp, PROG_POD_EGRESS, i, &f2),
            Allow,
        );
        expect(
            "v6 other datagram",
            run(&mut dp, PROG_POD_EGRESS, i, &g2),
            Drop,
        );
    });
}

/// Reads the conntrack entry of a flow `A` started.
fn ct_entry(pins: &std::path::Path, key: &policy_common::CtKey) -> Option<policy_common::CtValue> {
    use aya::maps::{HashMap, Map, MapData};
    let path =
        policy_agent::dataplane::kernel::PinPaths::new(pins).map(policy_common::maps::CONNTRACK);
    let map: HashMap<MapData, policy_common::CtKey, policy_common::CtValue> =
        HashMap::try_from(Map::LruHashMap(MapData::from_pin(&path).unwrap())).unwrap();
    map.get(key, 0).ok()
}

/// Established packets do not write the shared entry every time; a
/// half-closed TCP connection keeps its long timeout while the other side
/// goes on sending; both FINs (or an RST) close it.
#[test]
fn established_packets_leave_the_entry_alone_and_half_close_keeps_the_reply_path() {
    let (mut dp, pins) = open("ct-writes");
    dp.apply(&addrs().endpoint(A, ep_flags::ISOLATED_INGRESS).build())
        .unwrap();
    in_netns(1, |idx| {
        let i = idx[0];
        dp.register_endpoint(i, A).unwrap();
        kernel::sources(&mut dp, &[(A, &[a().mapped()])]);
        let out = |l4| frame(a(), outside(), &l4);
        let back = |l4| frame(outside(), a(), &l4);
        expect(
            "syn",
            run(&mut dp, PROG_POD_EGRESS, i, &out(tcp(40000, 443, SYN))),
            Allow,
        );
        let key = policy_common::CtKey {
            ep_id: A,
            dir: dir::EGRESS,
            proto: TCP,
            sport: 40000u16.to_be_bytes(),
            dport: 443u16.to_be_bytes(),
            pad: [0; 2],
            saddr: a().mapped(),
            daddr: outside().mapped(),
        };
        expect(
            "syn-ack",
            run(
                &mut dp,
                PROG_POD_INGRESS,
                i,
                &back(tcp(443, 40000, SYN | ACK)),
            ),
            Allow,
        );
        let after_reply = ct_entry(&pins.0, &key).expect("entry");
        // 10,000 established packets each way in well under a second.
        let (v, _) = dp
            .test_run_timed(PROG_POD_EGRESS, &out(tcp(40000, 443, ACK)), i, 10_000)
            .unwrap();
        expect("data out", v, Allow);
        let (v, _) = dp
            .test_run_timed(PROG_POD_INGRESS, &back(tcp(443, 40000, ACK)), i, 10_000)
            .unwrap();
        expect("data back", v, Allow);
        let later = ct_entry(&pins.0, &key).expect("entry");
        assert!(
            later.refreshes <= after_reply.refreshes + 2,
            "the entry was written {} times for 20,000 established packets",
            later.refreshes - after_reply.refreshes
        );
        // The client half-closes; the server keeps sending.
        expect(
            "fin out",
            run(
                &mut dp,
                PROG_POD_EGRESS,
                i,
                &out(tcp(40000, 443, FIN | ACK)),
            ),
            Allow,
        );
        expect(
            "data after half-close",
            run(&mut dp, PROG_POD_INGRESS, i, &back(tcp(443, 40000, ACK))),
            Allow,
        );
        let half = ct_entry(&pins.0, &key).expect("entry");
        assert_eq!(
            half.state & 0b10,
            0,
            "a half-close put the entry on the closing timeout: {half:?}"
        );
        expect(
            "fin back",
            run(
                &mut dp,
                PROG_POD_INGRESS,
                i,
                &back(tcp(443, 40000, FIN | ACK)),
            ),
            Allow,
        );
        let closed = ct_entry(&pins.0, &key).expect("entry");
        assert_ne!(
            closed.state & 0b10,
            0,
            "both FINs did not close the entry: {closed:?}"
        );
    });
}
