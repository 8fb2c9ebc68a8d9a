//! Each endpoint's conntrack budget (BPF_PROG_TEST_RUN): one pod opening
//! new flows as fast as it can fills its own share of the shared
//! conntrack map, never evicts another pod's tracked flows, and its
//! refused flows are counted. Needs root.

#[path = "support/kernel.rs"]
mod kernel;
#[path = "support/packets.rs"]
mod packets;

use kernel::{in_netns, open_with, verdict as run, StateBuilder};
use packets::*;
use policy_agent::dataplane::{
    kernel::{KernelDataplane, TestVerdict, PROG_POD_EGRESS, PROG_POD_INGRESS},
    Dataplane,
};
use policy_common::{ep_flags, reason};
use TestVerdict::{Allow, Drop};

const A: u32 = 1;
const B: u32 = 2;
/// The smallest conntrack map the agent accepts.
const CT_SIZE: u32 = 1024;
const BUDGET: u32 = 256;
/// New flows the flooding pod tries: four times the whole map.
const FLOOD: u16 = 4096;

/// The test's addresses: pods 10.0.0.x, and a host outside the cluster.
fn pod(last: u8) -> Ip {
    v4(10, 0, 0, last)
}
fn a() -> Ip {
    pod(1)
}
fn b() -> Ip {
    pod(2)
}
fn outside() -> Ip {
    v4(203, 0, 113, 5)
}

/// A dataplane with a conntrack map of [`CT_SIZE`] and `budget` entries
/// per endpoint and direction.
fn open(tag: &str, budget: u32) -> (KernelDataplane, kernel::PinDir) {
    open_with(tag, |o| {
        o.sizes.conntrack = CT_SIZE;
        o.conntrack_per_endpoint = budget;
    })
}

#[test]
fn a_flood_of_new_flows_from_one_pod_leaves_another_pods_flow_tracked() {
    let (mut dp, _pins) = open("ct-budget", BUDGET);
    // A: no policy at all (its flows are tracked all the same). B: isolated
    // for ingress with no rule, so replies reach it only through its
    // tracked flow.
    let state = StateBuilder::default()
        .ip(a().mapped(), 300)
        .ip(b().mapped(), 301)
        .cidr([0; 16], 0, policy_common::identity::WORLD)
        .endpoint(A, 0)
        .endpoint(B, ep_flags::ISOLATED_INGRESS)
        .build();
    dp.apply(&state).unwrap_or_else(|e| panic!("apply: {e}"));
    in_netns(2, |idx| {
        let (ia, ib) = (idx[0], idx[1]);
        dp.register_endpoint(ia, A)
            .unwrap_or_else(|e| panic!("{e}"));
        dp.register_endpoint(ib, B)
            .unwrap_or_else(|e| panic!("{e}"));
        kernel::sources(&mut dp, &[(A, &[a().mapped()]), (B, &[b().mapped()])]);
        let syn = frame(b(), outside(), &tcp(40000, 443, SYN));
        assert_eq!(
            run(&mut dp, PROG_POD_EGRESS, ib, &syn),
            Allow,
            "B's syn out"
        );

        let mut allowed = 0u32;
        for port in 0..FLOOD {
            let f = frame(a(), outside(), &udp(10_000 + port, 53));
            if run(&mut dp, PROG_POD_EGRESS, ia, &f) == Allow {
                allowed += 1;
            }
        }

        let syn_ack = frame(outside(), b(), &tcp(443, 40000, SYN | ACK));
        assert_eq!(
            run(&mut dp, PROG_POD_INGRESS, ib, &syn_ack),
            Allow,
            "B's reply after A's flood: its flow must still be tracked"
        );
        assert_eq!(allowed, BUDGET, "A's new flows tracked: exactly its budget");
        // A's own established flows are not affected, nor are B's new ones.
        let back = frame(outside(), a(), &udp(53, 10_000));
        assert_eq!(
            run(&mut dp, PROG_POD_INGRESS, ia, &back),
            Allow,
            "reply to A's first flow"
        );
        let more = frame(b(), outside(), &udp(5353, 53));
        assert_eq!(
            run(&mut dp, PROG_POD_EGRESS, ib, &more),
            Allow,
            "B's next new flow"
        );

        let refused = u64::from(FLOOD) - u64::from(BUDGET);
        let drops = dp.drop_counts();
        assert_eq!(
            drops.get(&reason::CT_BUDGET).copied(),
            Some(refused),
            "{drops:?}"
        );
        let usage = dp.conntrack_usage();
        let ua = usage.get(&A).copied().unwrap_or_default();
        assert_eq!(
            (ua.entries_egress, ua.refused_egress),
            (u64::from(BUDGET), refused),
            "{usage:?}"
        );
        let ub = usage.get(&B).copied().unwrap_or_default();
        assert_eq!((ub.entries_egress, ub.refused_egress), (2, 0), "{usage:?}");

        // The recount finds the same live entries and keeps A at its budget.
        let live = dp
            .recount_conntrack()
            .unwrap_or_else(|e| panic!("recount: {e}"));
        assert_eq!(
            live.get(&A).map(|c| c.egress),
            Some(i64::from(BUDGET)),
            "{live:?}"
        );
        let f = frame(a(), outside(), &udp(60_000, 53));
        assert_eq!(
            run(&mut dp, PROG_POD_EGRESS, ia, &f),
            Drop,
            "A still at its budget"
        );
    });
}

#[test]
fn a_recount_gives_back_what_the_map_lost() {
    let (mut dp, _pins) = open("ct-recount", 4);
    let state = StateBuilder::default()
        .ip(a().mapped(), 300)
        .cidr([0; 16], 0, policy_common::identity::WORLD)
        .endpoint(A, 0)
        .build();
    dp.apply(&state).unwrap_or_else(|e| panic!("apply: {e}"));
    in_netns(1, |idx| {
        let ia = idx[0];
        dp.register_endpoint(ia, A)
            .unwrap_or_else(|e| panic!("{e}"));
        kernel::sources(&mut dp, &[(A, &[a().mapped()])]);
        let new = |dp: &mut KernelDataplane, port| {
            run(
                dp,
                PROG_POD_EGRESS,
                ia,
                &frame(a(), outside(), &udp(port, 53)),
            )
        };
        for port in 0..4 {
            assert_eq!(new(&mut dp, 1000 + port), Allow);
        }
        assert_eq!(new(&mut dp, 2000), Drop, "over the budget");
        // Entries lost without the datapath seeing it (as the LRU evicts).
        dp.clear_conntrack().unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(new(&mut dp, 2001), Drop, "still counted until the recount");
        let live = dp
            .recount_conntrack()
            .unwrap_or_else(|e| panic!("recount: {e}"));
        assert_eq!(live.get(&A), None, "{live:?}");
        assert_eq!(new(&mut dp, 2002), Allow, "given back by the recount");
    });
}
