//! Replies in flight across a map layout upgrade: the client pod is
//! isolated for ingress, so the server's datagrams reach it only as
//! replies of the flow it opened (conntrack). While the server streams
//! replies, an "old" agent (the current object pinned in a folder named for
//! another layout version) is replaced by a new one that restores the
//! endpoints and applies its first state, switching the hooks to programs
//! with fresh maps. No reply may be lost (the old tracked flows are carried
//! over before the new programs see a packet), unsolicited datagrams to the
//! client stay dropped throughout, and a later policy change that denies
//! the flow cuts it. Needs root.

#[path = "support/kernel.rs"]
mod kernel;
#[path = "support/netns.rs"]
mod netns;
#[path = "support/packets.rs"]
mod packets;

use std::{
    net::SocketAddr,
    sync::atomic::{AtomicBool, AtomicUsize, Ordering},
    time::{Duration, Instant},
};

use kernel::{PinDir, StateBuilder};
use netns::{
    bind_udp, in_ns, rcvbuf_errors_at_stop, receive, veth, wait_bound, NetNs, Received, Sender,
    StopOnDrop, VethSpec,
};
use packets::{v4, UDP};
use policy_agent::dataplane::{
    kernel::{KernelDataplane, KernelOptions, PinPaths},
    Dataplane,
};
use policy_common::{dir, ep_flags, LAYOUT_VERSION};
use policy_engine::state::MapState;

const CLIENT: [u8; 4] = [10, 94, 1, 2];
const SERVER: [u8; 4] = [10, 94, 2, 2];
const EP_CLIENT: u32 = 1;
const EP_SERVER: u32 = 2;
const ID_CLIENT: u32 = 300;
const ID_SERVER: u32 = 301;
/// The server's port the client opens its flow to.
const X: u16 = 7401;
/// The client's port of the flow.
const FLOW_PORT: u16 = 7402;
/// A client port nobody opened a flow from: the server's datagrams to it
/// are not replies.
const UNSOLICITED_PORT: u16 = 7403;
const GAP: Duration = Duration::from_micros(250);
const HOSTS: [(&str, u32); 2] = [("ra-h", EP_CLIENT), ("rb-h", EP_SERVER)];

/// The client is isolated for ingress (nothing allowed: only replies
/// pass); its egress is allowed to the server on X, or isolated with
/// nothing allowed (`cut`).
fn state(cut: bool) -> MapState {
    let egress = if cut { ep_flags::ISOLATED_EGRESS } else { 0 };
    let mut b = StateBuilder::default()
        .endpoint(EP_CLIENT, ep_flags::ISOLATED_INGRESS | egress)
        .endpoint(EP_SERVER, ep_flags::ISOLATED_INGRESS)
        .ip(v4(10, 94, 1, 2).mapped(), ID_CLIENT)
        .ip(v4(10, 94, 2, 2).mapped(), ID_SERVER)
        .port(EP_SERVER, dir::INGRESS, ID_CLIENT, UDP, X);
    if !cut {
        b = b.port(EP_CLIENT, dir::EGRESS, ID_SERVER, UDP, X);
    }
    b.build()
}

fn sources(dp: &mut KernelDataplane) {
    kernel::sources(
        dp,
        &[
            (EP_CLIENT, &[v4(10, 94, 1, 2).mapped()]),
            (EP_SERVER, &[v4(10, 94, 2, 2).mapped()]),
        ],
    );
}

/// In `server`: waits for the client's first datagram on X, then streams
/// numbered datagrams back to it (replies) and, from another socket, to
/// the client's [`UNSOLICITED_PORT`], until `stop`. Returns the replies
/// sent.
fn stream_replies(server: &NetNs, stop: &AtomicBool, bound: &AtomicUsize) -> u64 {
    server.enter();
    let sock = bind_udp(SocketAddr::from((SERVER, X)));
    bound.fetch_add(1, Ordering::SeqCst);
    let mut buf = [0u8; 64];
    let deadline = Instant::now() + Duration::from_secs(10);
    let client = loop {
        match sock.recv_from(&mut buf) {
            Ok((_, from)) => break from,
            Err(_) if Instant::now() < deadline => {}
            Err(e) => panic!("the client's first datagram never came: {e}"),
        }
    };
    let mut unsolicited = Sender::new(SERVER, &[SocketAddr::from((CLIENT, UNSOLICITED_PORT))]);
    let mut seq = 0u64;
    while !stop.load(Ordering::SeqCst) {
        sock.send_to(&seq.to_be_bytes(), client)
            .unwrap_or_else(|e| panic!("reply to {client}: {e}"));
        seq += 1;
        unsolicited.round();
        Sender::pace(GAP);
    }
    seq
}

#[test]
fn replies_in_flight_survive_a_layout_upgrade() {
    kernel::require_root();
    let pins = PinDir::new("upgrade-replies");
    let node = NetNs::new("rnode");
    let client = NetNs::new("rclient");
    let server = NetNs::new("rserver");
    node.exec(&["sysctl", "-q", "-w", "net.ipv4.ip_forward=1"]);
    for (ns, host, net) in [(&client, "ra-h", 1), (&server, "rb-h", 2)] {
        veth(
            Some(&node),
            ns,
            &VethSpec {
                host,
                host_cidr: &format!("10.94.{net}.1/24"),
                pod_if: "eth0",
                pod_cidr: &format!("10.94.{net}.2/24"),
                gateway: Some(&format!("10.94.{net}.1")),
            },
        );
    }
    let old_version = LAYOUT_VERSION.wrapping_sub(1);
    // The old agent: enforces, then exits leaving its pins behind.
    in_ns(&node, || {
        let mut old =
            KernelDataplane::open(KernelOptions::new(&pins.0).with_version_folder(old_version))
                .unwrap();
        for (ifname, ep) in HOSTS {
            old.attach_endpoint(ifname, ep).unwrap();
        }
        sources(&mut old);
        old.apply(&state(false)).unwrap();
    });

    let (replies, unsolicited) = (Received::default(), Received::default());
    let (stop_rx, stop_tx) = (AtomicBool::new(false), AtomicBool::new(false));
    let (bound, server_bound) = (AtomicUsize::new(0), AtomicUsize::new(0));
    let (rr, ur, stop_rx, stop_tx, bound, server_bound) = (
        &replies,
        &unsolicited,
        &stop_rx,
        &stop_tx,
        &bound,
        &server_bound,
    );
    let (client_ns, server_ns, node_ns) = (&client, &server, &node);
    let mut timeline = Vec::new();
    let (sent, rcvbuf_errors, mut dp) = std::thread::scope(|s| {
        s.spawn(move || {
            client_ns.enter();
            let sock = bind_udp(SocketAddr::from((CLIENT, FLOW_PORT)));
            bound.fetch_add(1, Ordering::SeqCst);
            // Opens the flow: one datagram once the server listens, then
            // only listens.
            wait_bound(server_bound, 1);
            sock.send_to(b"open", SocketAddr::from((SERVER, X)))
                .unwrap();
            receive(&sock, rr, stop_rx);
        });
        s.spawn(move || {
            client_ns.enter();
            let sock = bind_udp(SocketAddr::from((CLIENT, UNSOLICITED_PORT)));
            bound.fetch_add(1, Ordering::SeqCst);
            receive(&sock, ur, stop_rx);
        });
        let errors = s.spawn(move || rcvbuf_errors_at_stop(client_ns, stop_rx));
        let streamer = s.spawn(move || {
            wait_bound(bound, 2);
            stream_replies(server_ns, stop_tx, server_bound)
        });
        let stop = StopOnDrop([stop_tx, stop_rx]);
        let t0 = Instant::now();
        assert!(
            rr.wait_first(Duration::from_secs(5)),
            "no reply reached the client through the old agent"
        );
        let mark = |what: &str, tl: &mut Vec<String>| {
            tl.push(format!(
                "{:>6} ms  {what}: replies received {}",
                t0.elapsed().as_millis(),
                rr.count()
            ))
        };
        std::thread::sleep(Duration::from_millis(200));
        let mut dp = in_ns(node_ns, || {
            let mut dp = KernelDataplane::open(KernelOptions::new(&pins.0)).unwrap();
            assert!(
                dp.upgrade_pending(),
                "the old layout folder was not noticed"
            );
            for (ifname, ep) in HOSTS {
                dp.restore_endpoint(ifname, ep).unwrap();
            }
            dp
        });
        mark("restored", &mut timeline);
        std::thread::sleep(Duration::from_millis(300));
        mark("apply", &mut timeline);
        in_ns(node_ns, || {
            sources(&mut dp);
            dp.apply(&state(false)).unwrap()
        });
        mark("applied", &mut timeline);
        assert!(!dp.upgrade_pending(), "the upgrade did not finish");
        std::thread::sleep(Duration::from_millis(600));
        mark("stop", &mut timeline);
        stop_tx.store(true, Ordering::SeqCst);
        let sent = streamer.join().unwrap();
        rr.settle();
        drop(stop);
        (sent, errors.join().unwrap(), dp)
    });
    let report = format!(
        "timeline:\n{}\nreplies sent {sent}, received {}; unsolicited received {}",
        timeline.join("\n"),
        replies.count(),
        unsolicited.count()
    );
    eprintln!("{report}");
    assert_eq!(rcvbuf_errors, 0, "receive buffers overflowed\n{report}");
    let missing = replies.missing(sent);
    assert!(
        missing.is_empty(),
        "{} of {sent} replies lost (first {:?}, last {:?})\n{report}",
        missing.len(),
        missing.first(),
        missing.last()
    );
    assert_eq!(
        unsolicited.count(),
        0,
        "datagrams that are not replies reached the isolated client\n{report}"
    );
    assert!(
        !PinPaths::with_version(&pins.0, old_version)
            .version_dir()
            .exists(),
        "the old layout folder is still there"
    );

    // The carried flow is judged again on a policy change: it passes
    // until a change denies the client's egress, then it is cut.
    assert!(
        reply_burst(&client, &server) > 0,
        "the carried flow's replies stopped"
    );
    in_ns(&node, || dp.apply(&state(true)).unwrap());
    assert_eq!(
        reply_burst(&client, &server),
        0,
        "the flow still passes after a change denied it"
    );
}

/// The server sends 200 datagrams from X to the client's flow port (the
/// tuple of the flow the client opened); returns how many arrived.
fn reply_burst(client: &NetNs, server: &NetNs) -> usize {
    let got = Received::default();
    let (stop, bound) = (AtomicBool::new(false), AtomicUsize::new(0));
    std::thread::scope(|s| {
        s.spawn(|| {
            client.enter();
            let sock = bind_udp(SocketAddr::from((CLIENT, FLOW_PORT)));
            bound.fetch_add(1, Ordering::SeqCst);
            receive(&sock, &got, &stop);
        });
        s.spawn(|| {
            server.enter();
            wait_bound(&bound, 1);
            let sock = bind_udp(SocketAddr::from((SERVER, X)));
            for seq in 0..200u64 {
                sock.send_to(&seq.to_be_bytes(), SocketAddr::from((CLIENT, FLOW_PORT)))
                    .unwrap();
                Sender::pace(GAP);
            }
            std::thread::sleep(Duration::from_millis(200));
            stop.store(true, Ordering::SeqCst);
        });
    });
    got.count()
}
