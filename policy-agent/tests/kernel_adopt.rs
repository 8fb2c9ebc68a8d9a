//! A restarted agent adopts what the previous one pinned: same maps (same
//! kernel ids), same active generation and contents, links still attached
//! and re-pointed at the new programs. Needs root.

#[path = "support/kernel.rs"]
mod kernel;
#[path = "support/packets.rs"]
mod packets;

use aya::programs::{SchedClassifier, TcAttachType};
use kernel::{in_netns, PinDir, StateBuilder};
use packets::*;
use policy_agent::dataplane::{
    kernel::{KernelDataplane, KernelOptions, TestVerdict, PROG_POD_INGRESS},
    Dataplane,
};
use policy_common::{dir, ep_flags};

const EP: u32 = 3;

fn tcx_programs(ifname: &str, t: TcAttachType) -> usize {
    SchedClassifier::query_tcx(ifname, t)
        .unwrap_or_else(|e| panic!("query tcx {ifname}: {e}"))
        .1
        .len()
}

#[test]
fn restart_adopts_maps_links_and_state() {
    kernel::require_root();
    let pins = PinDir::new("adopt");
    let state = StateBuilder::default()
        .endpoint(EP, ep_flags::ISOLATED_INGRESS)
        .ip(v4(10, 0, 0, 3).mapped(), 300)
        .ip(v4(10, 0, 0, 4).mapped(), 301)
        .cidr(v4(198, 51, 100, 0).mapped(), 120, 400)
        .port(EP, dir::INGRESS, 301, TCP, 80)
        .build();
    in_netns(1, |idx| {
        let ifname = policy_agent::dataplane::kernel::ifname_of(idx[0]).expect("ifname");
        let (ids, cfg) = {
            let mut dp = KernelDataplane::open(KernelOptions::new(&pins.0)).unwrap();
            assert!(!dp.adopted(), "a fresh folder has nothing to adopt");
            dp.attach_endpoint(&ifname, EP).unwrap();
            dp.apply(&state).unwrap();
            let counts = dp.counts();
            assert_eq!(counts.endpoints, 1);
            assert_eq!(counts.policy, 1);
            let pinned = policy_agent::dataplane::kernel::MapCounts::read_pinned(&pins.0).unwrap();
            assert_eq!(pinned, counts, "counts read from the pins differ");
            (dp.map_ids().unwrap(), dp.config())
        };
        // The agent is gone: the programs keep filtering.
        assert_eq!(tcx_programs(&ifname, TcAttachType::Ingress), 1);
        assert_eq!(tcx_programs(&ifname, TcAttachType::Egress), 1);

        let mut dp = KernelDataplane::open(KernelOptions::new(&pins.0)).unwrap();
        assert!(dp.adopted(), "pinned maps were not adopted");
        assert_eq!(dp.map_ids().unwrap(), ids, "maps were recreated");
        assert_eq!(dp.config(), cfg);
        assert_eq!(dp.active_state().unwrap(), state);
        let attached = dp.attached().get(&ifname).copied();
        assert_eq!(attached.map(|a| a.ep_id), Some(EP), "link not adopted");
        // Re-pointing did not add programs.
        assert_eq!(tcx_programs(&ifname, TcAttachType::Ingress), 1);
        assert_eq!(tcx_programs(&ifname, TcAttachType::Egress), 1);
        // Enforcement goes on with the adopted state.
        let ok = frame(v4(10, 0, 0, 4), v4(10, 0, 0, 3), &tcp(40000, 80, SYN));
        let bad = frame(v4(10, 0, 0, 4), v4(10, 0, 0, 3), &tcp(40000, 81, SYN));
        assert_eq!(
            dp.test_run(PROG_POD_INGRESS, &ok, idx[0]).unwrap(),
            TestVerdict::Allow
        );
        assert_eq!(
            dp.test_run(PROG_POD_INGRESS, &bad, idx[0]).unwrap(),
            TestVerdict::Drop
        );
        // Applying after adoption diffs against what the kernel holds.
        let next = StateBuilder(state.clone())
            .port(EP, dir::INGRESS, 301, TCP, 81)
            .build();
        dp.apply(&next).unwrap();
        dp.apply(&next).unwrap();
        assert_eq!(dp.active_state().unwrap(), next);
        assert_eq!(
            dp.test_run(PROG_POD_INGRESS, &bad, idx[0]).unwrap(),
            TestVerdict::Allow
        );
        // Detaching removes the programs.
        dp.detach_endpoint(&ifname, EP).unwrap();
        assert_eq!(tcx_programs(&ifname, TcAttachType::Ingress), 0);
        assert_eq!(tcx_programs(&ifname, TcAttachType::Egress), 0);
    });
}
