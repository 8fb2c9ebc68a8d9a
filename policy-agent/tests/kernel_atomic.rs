//! Atomic updates under traffic: while 1,000 applies alternate between two
//! states, a flow both states allow loses no packet and a flow both deny
//! passes none. The two states disagree on everything else they can (the
//! sender's identity, the entries allowing the first flow, a trap entry
//! that would let the second flow through if a packet mixed the ipcache of
//! one generation with the policy of the other), so any torn read shows up
//! as a lost or leaked datagram. 100 more applies follow back to back
//! under the same traffic. Needs root.

#[path = "support/kernel.rs"]
mod kernel;
#[path = "support/netns.rs"]
mod netns;

use std::{
    net::SocketAddr,
    sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering},
    time::{Duration, Instant},
};

use kernel::{open, StateBuilder};
use netns::{
    rcvbuf_errors_at_stop, serve_udp, veth, wait_bound, NetNs, Received, Sender, StopOnDrop,
    VethSpec,
};
use policy_agent::dataplane::{
    kernel::{EventReader, KernelDataplane},
    Dataplane,
};
use policy_common::{
    dir, ep_flags, proto::UDP, reason, v4_mapped, verdict, VerdictEvent, EVENT_WINDOW_NS,
};
use policy_engine::state::MapState;

const EP: u32 = 11;
const NODE: [u8; 4] = [10, 97, 0, 1];
const POD: [u8; 4] = [10, 97, 0, 2];
/// Allowed by both states.
const X: u16 = 7001;
/// Denied by both states.
const Y: u16 = 7002;
/// Allowed by A only.
const Z: u16 = 7003;
const UPDATES: usize = 1000;
/// Updates applied back to back after the paced ones.
const BURST: usize = 100;
/// Gap between two paced updates.
const APPLY_GAP: Duration = Duration::from_micros(1000);
/// Gap between two rounds of the sender (one datagram per flow).
const GAP: Duration = Duration::from_micros(50);

fn base() -> StateBuilder {
    StateBuilder::default().endpoint(EP, ep_flags::ISOLATED_INGRESS)
}

/// A: the node is identity 300; 300 may send to X and Z; the trap lets 301
/// send to Y.
fn state_a() -> MapState {
    base()
        .ip(v4_mapped(NODE), 300)
        .port(EP, dir::INGRESS, 300, UDP, X)
        .port(EP, dir::INGRESS, 300, UDP, Z)
        .port(EP, dir::INGRESS, 301, UDP, Y)
        .build()
}

/// B: the node is identity 301; 301 may send to X; the trap lets 300 send
/// to Y.
fn state_b() -> MapState {
    base()
        .ip(v4_mapped(NODE), 301)
        .port(EP, dir::INGRESS, 301, UDP, X)
        .port(EP, dir::INGRESS, 300, UDP, Y)
        .build()
}

/// `state` plus an entry that changes with `i` (a documentation address
/// with its own identity, allowed to an unused port), so every apply of
/// the alternation writes the inactive generation, not just flips.
fn with_churn(state: &MapState, i: usize) -> MapState {
    let id = 1000 + i as u32;
    StateBuilder(state.clone())
        .ip(v4_mapped([203, 0, 113, (i % 250) as u8]), id)
        .port(EP, dir::INGRESS, id, UDP, 9000)
        .build()
}

/// C: like B without X (the sanity check that X can be dropped).
fn state_c() -> MapState {
    base()
        .ip(v4_mapped(NODE), 301)
        .port(EP, dir::INGRESS, 300, UDP, Y)
        .build()
}

fn dst(port: u16) -> SocketAddr {
    SocketAddr::from((POD, port))
}

fn drain(events: &mut EventReader, into: &mut Vec<VerdictEvent>) {
    while let Some(ev) = events.try_next() {
        into.push(ev);
    }
}

fn drops_to(events: &[VerdictEvent], port: u16) -> usize {
    events
        .iter()
        .filter(|e| e.verdict == verdict::DROPPED && e.dport == port)
        .count()
}

struct Flows {
    x: Received,
    y: Received,
    z: Received,
}

impl Flows {
    fn clear(&self) {
        self.x.clear();
        self.y.clear();
        self.z.clear();
    }
}

/// Sends `rounds` datagrams to each of X, Y and Z and returns what arrived
/// (x, y, z).
fn burst(flows: &Flows, rounds: u64) -> (usize, usize, usize) {
    flows.clear();
    let mut s = Sender::new(NODE, &[dst(X), dst(Y), dst(Z)]);
    for _ in 0..rounds {
        s.round();
        Sender::pace(GAP);
    }
    (flows.x.settle(), flows.y.settle(), flows.z.settle())
}

#[test]
fn no_transient_verdict_under_1000_updates() {
    let started = Instant::now();
    let (mut dp, _pins) = open("atomic");
    let mut events = dp.take_event_reader().expect("event reader");
    let node = NetNs::new("anode");
    let pod = NetNs::new("apod");
    veth(
        Some(&node),
        &pod,
        &VethSpec {
            host: "pa0",
            host_cidr: "10.97.0.1/24",
            pod_if: "eth0",
            pod_cidr: "10.97.0.2/24",
            gateway: None,
        },
    );
    let flows = Flows {
        x: Received::default(),
        y: Received::default(),
        z: Received::default(),
    };
    let stop_rx = AtomicBool::new(false);
    let stop_tx = AtomicBool::new(false);
    let rounds = AtomicU64::new(0);
    let bound = &AtomicUsize::new(0);
    let (flows, stop_rx, stop_tx, rounds) = (&flows, &stop_rx, &stop_tx, &rounds);
    let (pod, node) = (&pod, &node);
    std::thread::scope(|s| {
        for (port, into) in [(X, &flows.x), (Y, &flows.y), (Z, &flows.z)] {
            s.spawn(move || {
                pod.enter();
                serve_udp(dst(port), into, stop_rx, bound);
            });
        }
        let rcvbuf_errors = s.spawn(move || rcvbuf_errors_at_stop(pod, stop_rx));
        let dp = &mut dp;
        let result = s
            .spawn(move || {
                // Stops the receivers and the sender even if this panics.
                let _stop = StopOnDrop([stop_tx, stop_rx]);
                node.enter();
                dp.attach_endpoint("pa0", EP).unwrap();
                kernel::sources(dp, &[(EP, &[v4_mapped(POD)])]);
                // A datagram reaching an unbound port would be lost to the test.
                wait_bound(bound, 3);

                // The states do what they claim, and X can be dropped.
                dp.apply(&state_a()).unwrap();
                assert_eq!(burst(flows, 50), (50, 0, 50), "under A (x, y, z)");
                dp.apply(&state_b()).unwrap();
                assert_eq!(burst(flows, 50), (50, 0, 0), "under B (x, y, z)");
                let mut evs = Vec::new();
                drain(&mut events, &mut evs);
                let no_rule = |dp: &KernelDataplane| {
                    dp.drop_counts().get(&reason::NO_RULE).copied().unwrap_or(0)
                };
                let before = no_rule(dp);
                // The drops of Y and Z so far may have spent this window's
                // event budget (EVENT_BUDGET per endpoint, CPU and window):
                // start C on a fresh window so X's drops get events.
                std::thread::sleep(Duration::from_nanos(EVENT_WINDOW_NS) + Duration::from_millis(100));
                dp.apply(&state_c()).unwrap();
                assert_eq!(burst(flows, 50), (0, 0, 0), "under C (x, y, z)");
                drain(&mut events, &mut evs);
                // Reported (rate-limited: repeats of one flow are counted,
                // not sent again) and counted exactly.
                assert!(drops_to(&evs, X) >= 1, "dropped X packets were not reported");
                assert!(
                    no_rule(dp) - before >= 150,
                    "drops not counted: {}",
                    no_rule(dp) - before
                );

                // Alternate A and B under continuous X and Y traffic.
                dp.apply(&state_a()).unwrap();
                drain(&mut events, &mut Vec::new());
                flows.clear();
                let (a, b) = (state_a(), state_b());
                let states: Vec<MapState> = (0..UPDATES)
                    .map(|i| with_churn(if i % 2 == 0 { &b } else { &a }, i))
                    .collect();
                let sender = s.spawn(move || {
                    node.enter();
                    let mut snd = Sender::new(NODE, &[dst(X), dst(Y)]);
                    while !stop_tx.load(Ordering::SeqCst) {
                        snd.round();
                        rounds.fetch_add(1, Ordering::SeqCst);
                        Sender::pace(GAP);
                    }
                    snd.sent
                });
                let wait = Instant::now();
                while flows.x.count() == 0 && wait.elapsed() < Duration::from_secs(5) {
                    std::thread::sleep(Duration::from_millis(5));
                }
                let mut evs = Vec::new();
                let first = rounds.load(Ordering::SeqCst);
                let flipping = Instant::now();
                for (i, state) in states.iter().enumerate() {
                    dp.apply(state).unwrap();
                    if i % 50 == 0 {
                        drain(&mut events, &mut evs);
                    }
                    // Spread the updates over the traffic (an apply alone
                    // takes an RCU grace period, a few milliseconds).
                    Sender::pace(APPLY_GAP);
                }
                let flip_time = flipping.elapsed();
                let during = rounds.load(Ordering::SeqCst) - first;
                // Then back to back, so the next write to a generation
                // follows the flip away from it as closely as apply lets
                // it (one RCU grace period; a packet still judged against
                // that generation would see it change). Few of them: each
                // waits for a grace period.
                let bursting = Instant::now();
                for i in 0..BURST {
                    dp.apply(&states[i % UPDATES]).unwrap();
                    if i % 500 == 0 {
                        drain(&mut events, &mut evs);
                    }
                }
                let burst_time = bursting.elapsed();
                // Every apply but the first waited for a grace period since
                // the flip before it, with the kernel's help.
                let grace = dp.grace_stats();
                eprintln!("grace periods: {grace:?}");
                assert!(dp.grace_uses_kernel());
                assert!(grace.waits >= (UPDATES + BURST - 1) as u64, "{grace:?}");
                std::thread::sleep(Duration::from_millis(100));
                stop_tx.store(true, Ordering::SeqCst);
                let sent = sender.join().unwrap();
                let (x, y) = (flows.x.settle(), flows.y.settle());
                drain(&mut events, &mut evs);
                eprintln!(
                    "{UPDATES} applies in {flip_time:?}; {during} rounds sent meanwhile; \
                     {BURST} back to back in {burst_time:?}; sent x={} y={}, received x={x} y={y}; drop events: x={} y={}",
                    sent[0],
                    sent[1],
                    drops_to(&evs, X),
                    drops_to(&evs, Y)
                );
                let missing = flows.x.missing(sent[0]);
                (sent, x, y, during, evs, missing)
            })
            .join();
        stop_rx.store(true, Ordering::SeqCst);
        let rcvbuf_errors = rcvbuf_errors.join().unwrap();
        let (sent, x, y, during, evs, missing) = match result {
            Ok(r) => r,
            Err(p) => std::panic::resume_unwind(p),
        };
        assert!(
            during >= UPDATES as u64,
            "only {during} rounds of traffic overlapped the updates"
        );
        assert_eq!(
            rcvbuf_errors, 0,
            "the pod's UDP receive buffers overflowed: counts are not about policy"
        );
        assert_eq!(
            drops_to(&evs, X),
            0,
            "X (allowed by both states) was dropped"
        );
        assert!(
            missing.is_empty(),
            "{} of {} X datagrams lost (first: {:?})",
            missing.len(),
            sent[0],
            &missing[..missing.len().min(10)]
        );
        assert_eq!(x as u64, sent[0], "X received vs sent");
        assert_eq!(y, 0, "Y (denied by both states) passed {y} times");
        assert!(drops_to(&evs, Y) > 0, "no drop event for Y at all");
    });
    eprintln!("wall time {:?}", started.elapsed());
}
