//! Random bytes as an Ethernet frame through the real eBPF programs
//! (`BPF_PROG_TEST_RUN`), the verdict compared with the user-space model
//! of the parser and pipeline (`policy_engine::packet::first_packet`, over
//! `policy_engine::lookup`). Needs root.
//!
//! The first input byte picks the endpoint (one isolated both ways, one
//! for ingress only, one not isolated, one without any policy: not ready)
//! and the direction; the rest is the frame. The programs are loaded once
//! per process into a pin folder of their own, with one fixed state; the
//! conntrack and fragment entries a frame leaves are removed after it, so
//! each frame is the first of its flow, as the model assumes.
#![no_main]

use std::collections::{BTreeMap, BTreeSet};
use std::path::PathBuf;
use std::sync::{Mutex, OnceLock};

use libfuzzer_sys::fuzz_target;
use policy_agent::dataplane::kernel::{
    KernelDataplane, KernelOptions, TestVerdict, PROG_POD_EGRESS, PROG_POD_INGRESS,
};
use policy_agent::dataplane::Dataplane;
use policy_common::{dir, ep_flags, identity, proto, v4_mapped, Addr, PolicyValue};
use policy_engine::packet::first_packet;
use policy_engine::state::{CidrPrefix, MapState, PolicyEntry, PortMatch};

/// Parent of every fuzz process's pin folder (removed when the process
/// that made it is gone).
const PIN_ROOT: &str = "/sys/fs/bpf/palisade-fuzz";
/// The frames run as if seen on the loopback (ifindex 1, present in every
/// network namespace); the endpoint behind it is re-registered per frame.
const IFINDEX: u32 = 1;
/// BPF_PROG_TEST_RUN takes frames from an Ethernet header up to about a
/// page.
const FRAME_LEN: std::ops::RangeInclusive<usize> = 14..=1514;

struct Bed {
    dp: KernelDataplane,
    state: MapState,
    sources: BTreeMap<u32, BTreeSet<Addr>>,
}

fn v6(last: u16) -> Addr {
    let mut a = [0u8; 16];
    a[..4].copy_from_slice(&[0x20, 0x01, 0x0d, 0xb8]);
    a[14..].copy_from_slice(&last.to_be_bytes());
    a
}

fn state() -> MapState {
    let mut s = MapState::default();
    s.endpoints
        .insert(1, ep_flags::ISOLATED_INGRESS | ep_flags::ISOLATED_EGRESS);
    s.endpoints.insert(2, ep_flags::ISOLATED_INGRESS);
    s.endpoints.insert(3, 0);
    for (addr, id) in [
        (v4_mapped([10, 0, 0, 1]), 256),
        (v4_mapped([10, 0, 0, 2]), identity::HOST),
        (v4_mapped([10, 1, 0, 1]), 258),
        (v6(1), 257),
        (v6(2), identity::HOST),
    ] {
        s.ipcache.insert(addr, id);
    }
    for (addr, prefix_len, id) in [
        (v4_mapped([10, 0, 0, 0]), 96 + 24, 259),
        (v4_mapped([192, 0, 2, 0]), 96 + 24, 260),
        (v4_mapped([0, 0, 0, 0]), 96, identity::WORLD),
        (v6(0), 64, 261),
    ] {
        s.cidrs.insert(CidrPrefix { prefix_len, addr }, id);
    }
    let mut allow = |ep_id, d, identity, ports| {
        s.policy.insert(
            PolicyEntry {
                ep_id,
                dir: d,
                identity,
                ports,
            },
            PolicyValue { rule: 1, flags: 0 },
        );
    };
    let tcp = |port, prefix_len| PortMatch::Ports {
        proto: proto::TCP,
        port,
        prefix_len,
    };
    allow(1, dir::INGRESS, 256, tcp(80, 16));
    allow(
        1,
        dir::INGRESS,
        259,
        PortMatch::AnyPort { proto: proto::UDP },
    );
    allow(1, dir::INGRESS, 261, tcp(0, 0));
    allow(1, dir::EGRESS, identity::ANY, tcp(8080, 13));
    allow(1, dir::EGRESS, 257, PortMatch::AnyProtocol);
    allow(
        1,
        dir::EGRESS,
        identity::WORLD,
        PortMatch::Ports {
            proto: proto::UDP,
            port: 53,
            prefix_len: 16,
        },
    );
    allow(
        2,
        dir::INGRESS,
        identity::ANY,
        PortMatch::Ports {
            proto: proto::SCTP,
            port: 3868,
            prefix_len: 16,
        },
    );
    allow(2, dir::INGRESS, 260, PortMatch::AnyProtocol);
    s
}

/// Removes the pin folders of fuzz processes that are gone.
fn sweep_stale_pins() {
    let Ok(entries) = std::fs::read_dir(PIN_ROOT) else {
        return;
    };
    for e in entries.flatten() {
        let name = e.file_name();
        let pid = name.to_string_lossy().parse::<u32>().ok();
        if pid.is_some_and(|p| !PathBuf::from(format!("/proc/{p}")).exists()) {
            let _ = KernelDataplane::remove_pins(e.path());
        }
    }
}

extern "C" fn remove_own_pins() {
    let _ = KernelDataplane::remove_pins(own_pins());
}

fn own_pins() -> PathBuf {
    PathBuf::from(format!("{PIN_ROOT}/{}", std::process::id()))
}

fn bed() -> &'static Mutex<Bed> {
    static BED: OnceLock<Mutex<Bed>> = OnceLock::new();
    BED.get_or_init(|| {
        sweep_stale_pins();
        let mut dp = KernelDataplane::open(KernelOptions::new(own_pins()))
            .unwrap_or_else(|e| panic!("loading the programs (needs root): {e}"));
        // SAFETY: registers a plain function to run at exit.
        unsafe { libc::atexit(remove_own_pins) };
        let state = state();
        dp.apply(&state)
            .unwrap_or_else(|e| panic!("writing the state: {e}"));
        let sources: BTreeMap<u32, BTreeSet<Addr>> = [
            (1, BTreeSet::from([v4_mapped([10, 1, 0, 1]), v6(0x101)])),
            (2, BTreeSet::from([v4_mapped([10, 1, 0, 2]), v6(0x102)])),
            (3, BTreeSet::from([v4_mapped([10, 1, 0, 3])])),
            (4, BTreeSet::from([v4_mapped([10, 1, 0, 4])])),
        ]
        .into();
        dp.set_sources(&sources)
            .unwrap_or_else(|e| panic!("writing the source addresses: {e}"));
        Mutex::new(Bed { dp, state, sources })
    })
}

/// An IPv4 or IPv6 frame shorter than its fixed IP header.
fn l3_header_cut(frame: &[u8]) -> bool {
    match frame.get(12..14) {
        Some([0x08, 0x00]) => frame.len() < 14 + 20,
        Some([0x86, 0xdd]) => frame.len() < 14 + 40,
        _ => false,
    }
}

fuzz_target!(|data: &[u8]| {
    let Some((&choice, frame)) = data.split_first() else {
        return;
    };
    if !FRAME_LEN.contains(&frame.len()) {
        return;
    }
    let ep = u32::from(choice & 3) + 1;
    let (d, prog) = if choice & 4 == 0 {
        (dir::INGRESS, PROG_POD_INGRESS)
    } else {
        (dir::EGRESS, PROG_POD_EGRESS)
    };
    let mut bed = bed().lock().unwrap_or_else(|e| e.into_inner());
    let Bed { dp, state, sources } = &mut *bed;
    dp.register_endpoint(IFINDEX, ep)
        .unwrap_or_else(|e| panic!("registering the endpoint: {e}"));
    let got = match dp.test_run(prog, frame, IFINDEX) {
        Ok(v) => v,
        // The kernel's test run refuses an IP frame shorter than its IP
        // header (a real veth would deliver it; the programs drop it as
        // malformed, see `policy_engine::packet`'s tests).
        Err(_) if l3_header_cut(frame) => return,
        Err(e) => panic!("test run of a {}-byte frame: {e}", frame.len()),
    };
    dp.forget_flow(ep, d, frame)
        .unwrap_or_else(|e| panic!("forgetting the flow: {e}"));
    let empty = BTreeSet::new();
    let (allowed, why) = first_packet(state, sources.get(&ep).unwrap_or(&empty), ep, d, frame);
    let want = if allowed {
        TestVerdict::Allow
    } else {
        TestVerdict::Drop
    };
    assert_eq!(
        got,
        want,
        "endpoint {ep} {} frame {frame:02x?}: kernel {got:?}, model {why:?} ({:?})",
        if d == dir::INGRESS {
            "ingress"
        } else {
            "egress"
        },
        policy_engine::packet::parse(frame)
    );
});
