//! A map layout change under traffic: an "old" agent (the current object
//! pinned in a folder named for another layout version) enforces a policy
//! between two pods; a new agent opens the same base, restores the
//! endpoints as `Agent::restore` does, applies its first state and so takes
//! over. No allowed datagram may be lost (restored pods must not meet empty
//! maps), no denied one may pass, and afterwards each hook runs exactly one
//! program — the new one — and the old folder is gone. Needs root.

#[path = "support/kernel.rs"]
mod kernel;
#[path = "support/netns.rs"]
mod netns;
#[path = "support/packets.rs"]
mod packets;

use std::{
    net::SocketAddr,
    sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering},
    time::{Duration, Instant},
};

use aya::programs::{SchedClassifier, TcAttachType};
use kernel::{PinDir, StateBuilder};
use netns::{
    in_ns, rcvbuf_errors_at_stop, send_paced, serve_udp_in, udp_gets_through, veth, NetNs,
    Received, StopOnDrop, VethSpec,
};
use packets::{v4, UDP};
use policy_agent::dataplane::{
    kernel::{KernelDataplane, KernelOptions, PinPaths},
    Dataplane,
};
use policy_common::{dir, ep_flags, LAYOUT_VERSION};
use policy_engine::state::MapState;

const CLIENT: [u8; 4] = [10, 97, 1, 2];
const SERVER: [u8; 4] = [10, 97, 2, 2];
const EP_CLIENT: u32 = 1;
const EP_SERVER: u32 = 2;
const ID_CLIENT: u32 = 300;
const ID_SERVER: u32 = 301;
/// Allowed from the client to the server.
const X: u16 = 7101;
/// Denied from the client to the server (until the last step).
const Y: u16 = 7102;
const GAP: Duration = Duration::from_micros(200);
const HOSTS: [(&str, u32); 2] = [("ua-h", EP_CLIENT), ("ub-h", EP_SERVER)];

/// The folder version the "old agent" pins under.
fn old_version() -> u32 {
    LAYOUT_VERSION.wrapping_sub(1)
}

/// Source validation: each pod sends from its own address.
fn pod_sources(dp: &mut KernelDataplane) {
    kernel::sources(
        dp,
        &[
            (EP_CLIENT, &[v4(10, 97, 1, 2).mapped()]),
            (EP_SERVER, &[v4(10, 97, 2, 2).mapped()]),
        ],
    );
}

fn state(open_y: bool) -> MapState {
    let mut b = StateBuilder::default()
        .endpoint(EP_CLIENT, 0)
        .endpoint(EP_SERVER, ep_flags::ISOLATED_INGRESS)
        .ip(v4(10, 97, 1, 2).mapped(), ID_CLIENT)
        .ip(v4(10, 97, 2, 2).mapped(), ID_SERVER)
        .port(EP_SERVER, dir::INGRESS, ID_CLIENT, UDP, X);
    if open_y {
        b = b.port(EP_SERVER, dir::INGRESS, ID_CLIENT, UDP, Y);
    }
    b.build()
}

/// Ids of the programs on the two host veths (ingress, egress each); call
/// inside the node namespace.
fn program_ids() -> Vec<Vec<u32>> {
    let mut out = Vec::new();
    for (ifname, _) in HOSTS {
        for t in [TcAttachType::Ingress, TcAttachType::Egress] {
            let progs = SchedClassifier::query_tcx(ifname, t)
                .unwrap_or_else(|e| panic!("query tcx {ifname}: {e}"))
                .1;
            out.push(progs.iter().map(|p| p.id()).collect());
        }
    }
    out
}

fn link_pins(paths: &PinPaths) -> usize {
    std::fs::read_dir(paths.links_dir())
        .map(|d| d.count())
        .unwrap_or(0)
}

#[test]
fn layout_upgrade_under_traffic() {
    kernel::require_root();
    let pins = PinDir::new("upgrade");
    let node = NetNs::new("unode");
    let client = NetNs::new("uclient");
    let server = NetNs::new("userver");
    node.exec(&["sysctl", "-q", "-w", "net.ipv4.ip_forward=1"]);
    for (ns, host, net) in [(&client, "ua-h", 1), (&server, "ub-h", 2)] {
        veth(
            Some(&node),
            ns,
            &VethSpec {
                host,
                host_cidr: &format!("10.97.{net}.1/24"),
                pod_if: "eth0",
                pod_cidr: &format!("10.97.{net}.2/24"),
                gateway: Some(&format!("10.97.{net}.1")),
            },
        );
    }
    let old_paths = PinPaths::with_version(&pins.0, old_version());
    let new_paths = PinPaths::new(&pins.0);

    // The old agent: enforces, then exits leaving its pins behind.
    let old_ids = in_ns(&node, || {
        let mut old =
            KernelDataplane::open(KernelOptions::new(&pins.0).with_version_folder(old_version()))
                .unwrap();
        assert!(!old.upgrade_pending());
        for (ifname, ep) in HOSTS {
            old.attach_endpoint(ifname, ep).unwrap();
        }
        pod_sources(&mut old);
        old.apply(&state(false)).unwrap();
        program_ids()
    });
    assert!(old_ids.iter().all(|ids| ids.len() == 1), "{old_ids:?}");
    assert_eq!(link_pins(&old_paths), 4, "old links not pinned");

    let (x, y) = (Received::default(), Received::default());
    let (stop_rx, stop_tx) = (AtomicBool::new(false), AtomicBool::new(false));
    let (bound, rounds) = (AtomicUsize::new(0), AtomicU64::new(0));
    let (xr, yr, stop_rx, stop_tx, bound, rounds) = (&x, &y, &stop_rx, &stop_tx, &bound, &rounds);
    let (server_ns, client_ns, node_ns) = (&server, &client, &node);
    let mut timeline = Vec::new();
    let (sent, rcvbuf_errors, mut dp) = std::thread::scope(|s| {
        for (port, into) in [(X, xr), (Y, yr)] {
            let addr = SocketAddr::from((SERVER, port));
            s.spawn(move || serve_udp_in(server_ns, addr, into, stop_rx, bound));
        }
        let errors = s.spawn(move || rcvbuf_errors_at_stop(server_ns, stop_rx));
        let sender = s.spawn(move || {
            let dsts = [SocketAddr::from((SERVER, X)), SocketAddr::from((SERVER, Y))];
            send_paced(client_ns, CLIENT, &dsts, GAP, stop_tx, (bound, 2), rounds)
        });
        let stop = StopOnDrop([stop_tx, stop_rx]);
        let t0 = Instant::now();
        assert!(
            xr.wait_first(Duration::from_secs(5)),
            "no allowed datagram arrived through the old agent"
        );
        let mark = |what: &str, tl: &mut Vec<String>| {
            tl.push(format!(
                "{:>6} ms  {what}: x received {}",
                t0.elapsed().as_millis(),
                xr.count()
            ))
        };
        // The new agent: opens, restores, waits a while (a restored pod
        // checked against the still empty new maps would lose datagrams
        // now), applies, which switches over.
        let mut dp = in_ns(node_ns, || {
            let mut dp = KernelDataplane::open(KernelOptions::new(&pins.0)).unwrap();
            assert!(!dp.adopted(), "a new layout folder has nothing to adopt");
            assert!(
                dp.upgrade_pending(),
                "the old layout folder was not noticed"
            );
            for (ifname, ep) in HOSTS {
                dp.restore_endpoint(ifname, ep).unwrap();
            }
            assert_eq!(dp.pending_endpoints().len(), 2);
            assert_eq!(program_ids(), old_ids, "restore attached before the apply");
            dp
        });
        mark("restored", &mut timeline);
        std::thread::sleep(Duration::from_millis(400));
        mark("apply", &mut timeline);
        in_ns(node_ns, || {
            pod_sources(&mut dp);
            dp.apply(&state(false)).unwrap()
        });
        mark("applied", &mut timeline);
        assert!(!dp.upgrade_pending(), "the upgrade did not finish");
        std::thread::sleep(Duration::from_millis(600));
        mark("stop", &mut timeline);
        stop_tx.store(true, Ordering::SeqCst);
        let sent = sender.join().unwrap();
        xr.settle();
        yr.settle();
        drop(stop);
        (sent, errors.join().unwrap(), dp)
    });
    let report = format!(
        "timeline:\n{}\nsent x={} y={}, received x={} y={}",
        timeline.join("\n"),
        sent[0],
        sent[1],
        x.count(),
        y.count()
    );
    eprintln!("{report}");
    assert_eq!(rcvbuf_errors, 0, "receive buffers overflowed\n{report}");
    let missing = x.missing(sent[0]);
    assert!(
        missing.is_empty(),
        "{} of {} allowed datagrams lost (first {:?}, last {:?})\n{report}",
        missing.len(),
        sent[0],
        missing.first(),
        missing.last()
    );
    assert_eq!(y.count(), 0, "denied datagrams passed\n{report}");

    // Exactly one program per hook, not the old one; old pins gone, new
    // links pinned.
    let new_ids = in_ns(&node, program_ids);
    for (old, new) in old_ids.iter().zip(&new_ids) {
        assert_eq!(
            new.len(),
            1,
            "programs per hook after the upgrade: {new_ids:?}"
        );
        assert_ne!(old, new, "the old program is still attached");
    }
    assert!(
        !old_paths.version_dir().exists(),
        "the old layout folder is still there"
    );
    assert_eq!(link_pins(&new_paths), 4, "new links not pinned");

    // The new agent alone decides now: opening Y reaches the pods (the
    // old program, with its frozen maps, would still drop it).
    in_ns(&node, || dp.apply(&state(true)).unwrap());
    assert!(
        udp_gets_through(&client, CLIENT, &server, SocketAddr::from((SERVER, Y))),
        "policy change not enforced"
    );
}

/// The agent's own start sequence over a layout change: `Agent::restore`
/// only registers (the old programs stay alone on the veths), the first
/// `set_snapshot` applies and switches over.
#[test]
fn agent_restore_defers_attach_until_first_apply() {
    use policy_agent::{endpoints::Endpoint, reconcile::Agent};
    use policy_engine::model::{PodRef, Snapshot};

    kernel::require_root();
    let pins = PinDir::new("upgrade-agent");
    kernel::in_netns(2, |idx| {
        let names: Vec<String> = idx
            .iter()
            .map(|i| policy_agent::dataplane::kernel::ifname_of(*i).unwrap())
            .collect();
        let tcx = |ifname: &str| -> Vec<Vec<u32>> {
            [TcAttachType::Ingress, TcAttachType::Egress]
                .into_iter()
                .map(|t| {
                    SchedClassifier::query_tcx(ifname, t)
                        .unwrap()
                        .1
                        .iter()
                        .map(|p| p.id())
                        .collect()
                })
                .collect()
        };
        let old_paths = PinPaths::with_version(&pins.0, old_version());
        let old_ids: Vec<_> = {
            let mut old = KernelDataplane::open(
                KernelOptions::new(&pins.0).with_version_folder(old_version()),
            )
            .unwrap();
            for (n, ifname) in names.iter().enumerate() {
                old.attach_endpoint(ifname, n as u32 + 1).unwrap();
            }
            old.apply(&MapState::default()).unwrap();
            names.iter().map(|n| tcx(n)).collect()
        };

        let dp = KernelDataplane::open(KernelOptions::new(&pins.0)).unwrap();
        assert!(dp.upgrade_pending());
        let mut agent = Agent::new(dp, Vec::new());
        agent.restore(
            names
                .iter()
                .enumerate()
                .map(|(n, ifname)| Endpoint {
                    container_id: format!("sandbox-{n}"),
                    pod: PodRef {
                        namespace: "up".into(),
                        name: format!("pod-{n}"),
                    },
                    ifname: ifname.clone(),
                    pod_ifname: "eth0".into(),
                    ep_id: n as u32 + 1,
                    ips: Vec::new(),
                })
                .collect(),
        );
        assert_eq!(
            agent.endpoints().iter().count(),
            2,
            "endpoints not restored"
        );
        assert_eq!(agent.dataplane().pending_endpoints().len(), 2);
        let now: Vec<_> = names.iter().map(|n| tcx(n)).collect();
        assert_eq!(now, old_ids, "restore attached before the first apply");
        assert!(old_paths.version_dir().exists());

        agent.set_snapshot(Snapshot::default()).unwrap();
        assert!(!agent.dataplane().upgrade_pending(), "upgrade not finished");
        let now: Vec<_> = names.iter().map(|n| tcx(n)).collect();
        for (old, new) in old_ids.iter().flatten().zip(now.iter().flatten()) {
            assert_eq!(new.len(), 1, "programs per hook: {now:?}");
            assert_ne!(old, new, "old program still attached");
        }
        assert!(!old_paths.version_dir().exists(), "old folder left");
        let attached = agent.dataplane().attached();
        assert_eq!(attached.len(), 2);
        // A later same-layout restart adopts as before.
        drop(agent);
        let dp = KernelDataplane::open(KernelOptions::new(&pins.0)).unwrap();
        assert!(dp.adopted());
        assert!(!dp.upgrade_pending());
        assert_eq!(dp.attached().len(), 2);
    });
}
