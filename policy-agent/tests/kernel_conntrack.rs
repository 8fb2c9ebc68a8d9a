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
