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
    kernel::{KernelDataplane, KernelOptions, PinPaths, TestVerdict, PROG_POD_INGRESS},
    Dataplane,
};
use policy_common::{dir, ep_flags};

const EP: u32 = 3;

/// Ids of the TCX programs on `ifname`'s hook `t`.
fn tcx_program_ids(ifname: &str, t: TcAttachType) -> Vec<u32> {
    SchedClassifier::query_tcx(ifname, t)
        .unwrap_or_else(|e| panic!("query tcx {ifname}: {e}"))
        .1
        .iter()
        .map(|p| p.id())
        .collect()
}

fn tcx_programs(ifname: &str, t: TcAttachType) -> usize {
    tcx_program_ids(ifname, t).len()
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

/// The one build folder under `pins`' programs folder.
fn program_builds(pins: &PinDir) -> Vec<String> {
    let dir = PinPaths::new(&pins.0).programs_dir();
    let mut builds: Vec<String> = std::fs::read_dir(&dir)
        .unwrap_or_else(|e| panic!("reading {}: {e}", dir.display()))
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    builds.sort();
    builds
}

/// The id of the one TCX program on `ifname`'s hook `t`.
fn tcx_program_id(ifname: &str, t: TcAttachType) -> u32 {
    let ids = tcx_program_ids(ifname, t);
    assert_eq!(ids.len(), 1, "{ifname}: {ids:?}");
    ids[0]
}

#[test]
fn restart_of_the_same_build_takes_the_pinned_programs_over() {
    kernel::require_root();
    let pins = PinDir::new("adopt-progs");
    let state = StateBuilder::default()
        .endpoint(EP, ep_flags::ISOLATED_INGRESS)
        .ip(v4(10, 0, 0, 4).mapped(), 301)
        .port(EP, dir::INGRESS, 301, TCP, 80)
        .build();
    let ok = frame(v4(10, 0, 0, 4), v4(10, 0, 0, 3), &tcp(40000, 80, SYN));
    let bad = frame(v4(10, 0, 0, 4), v4(10, 0, 0, 3), &tcp(40000, 81, SYN));
    in_netns(1, |idx| {
        let ifname = policy_agent::dataplane::kernel::ifname_of(idx[0]).expect("ifname");
        let first = {
            let mut dp = KernelDataplane::open(KernelOptions::new(&pins.0)).unwrap();
            dp.attach_endpoint(&ifname, EP).unwrap();
            dp.apply(&state).unwrap();
            dp.program_ids().unwrap()
        };
        assert_eq!(first.len(), 4);
        let builds = program_builds(&pins);
        assert_eq!(builds.len(), 1, "{builds:?}");

        // The same build: the very programs, still the ones attached.
        let second = {
            let mut dp = KernelDataplane::open(KernelOptions::new(&pins.0)).unwrap();
            let ids = dp.program_ids().unwrap();
            assert_eq!(ids, first, "the programs were loaded again");
            assert_eq!(
                tcx_program_id(&ifname, TcAttachType::Egress),
                ids[PROG_POD_INGRESS]
            );
            assert_eq!(
                dp.test_run(PROG_POD_INGRESS, &ok, idx[0]).unwrap(),
                TestVerdict::Allow
            );
            assert_eq!(
                dp.test_run(PROG_POD_INGRESS, &bad, idx[0]).unwrap(),
                TestVerdict::Drop
            );
            ids
        };

        // Pins of another build: loaded again, links moved to the new
        // programs, the other build's pins removed.
        let dir = PinPaths::new(&pins.0).programs_dir();
        std::fs::rename(dir.join(&builds[0]), dir.join("0000000000000000")).unwrap();
        let mut dp = KernelDataplane::open(KernelOptions::new(&pins.0)).unwrap();
        let third = dp.program_ids().unwrap();
        for (name, id) in &third {
            assert_ne!(second[name], *id, "{name} of another build was taken over");
        }
        assert_eq!(program_builds(&pins), builds);
        assert_eq!(
            tcx_program_id(&ifname, TcAttachType::Egress),
            third[PROG_POD_INGRESS]
        );
        assert_eq!(
            dp.test_run(PROG_POD_INGRESS, &bad, idx[0]).unwrap(),
            TestVerdict::Drop
        );
    });
}

#[test]
fn pinned_programs_reading_other_maps_are_not_taken_over() {
    kernel::require_root();
    let a = PinDir::new("adopt-progs-a");
    let b = PinDir::new("adopt-progs-b");
    let allow_all = StateBuilder::default().endpoint(EP, 0).build();
    let deny_all = StateBuilder::default()
        .endpoint(EP, ep_flags::ISOLATED_INGRESS)
        .build();
    let syn = frame(v4(10, 0, 0, 4), v4(10, 0, 0, 3), &tcp(40000, 80, SYN));
    in_netns(1, |idx| {
        let ifname = policy_agent::dataplane::kernel::ifname_of(idx[0]).expect("ifname");
        let mut dp_a = KernelDataplane::open(KernelOptions::new(&a.0)).unwrap();
        dp_a.register_endpoint(idx[0], EP).unwrap();
        dp_a.apply(&allow_all).unwrap();
        let a_ids = dp_a.program_ids().unwrap();
        let b_ids = {
            let mut dp_b = KernelDataplane::open(KernelOptions::new(&b.0)).unwrap();
            dp_b.attach_endpoint(&ifname, EP).unwrap();
            dp_b.apply(&deny_all).unwrap();
            dp_b.program_ids().unwrap()
        };
        // B's program pins now hold A's programs, which read A's maps.
        let (pa, pb) = (PinPaths::new(&a.0), PinPaths::new(&b.0));
        let build = program_builds(&b).remove(0);
        for name in a_ids.keys() {
            let target = pb.program(&build, name);
            std::fs::remove_file(&target).unwrap();
            SchedClassifier::from_pin(pa.program(&build, name))
                .unwrap()
                .pin(&target)
                .unwrap();
        }
        let mut dp_b = KernelDataplane::open(KernelOptions::new(&b.0)).unwrap();
        let ids = dp_b.program_ids().unwrap();
        for (name, id) in &ids {
            assert_ne!(a_ids[name], *id, "{name} reading A's maps was taken over");
            assert_ne!(b_ids[name], *id);
        }
        // B's state still holds: its own maps deny.
        assert_eq!(
            dp_b.test_run(PROG_POD_INGRESS, &syn, idx[0]).unwrap(),
            TestVerdict::Drop
        );
        assert_eq!(
            dp_a.test_run(PROG_POD_INGRESS, &syn, idx[0]).unwrap(),
            TestVerdict::Allow
        );
    });
}
