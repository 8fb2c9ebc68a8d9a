//! A flood of drops costs bounded work: drop events are rate-limited per
//! endpoint, repeats are counted instead of sent, and what was held back
//! is reported with the next event, while the per-reason drop counters
//! stay exact. BPF_PROG_TEST_RUN on crafted frames; needs root.

#[path = "support/kernel.rs"]
mod kernel;
#[path = "support/packets.rs"]
mod packets;

use std::time::Duration;

use kernel::{in_netns, open, StateBuilder};
use packets::*;
use policy_agent::dataplane::{
    kernel::{EventReader, TestVerdict, PROG_POD_INGRESS},
    Dataplane,
};
use policy_common::{ep_flags, reason, verdict, VerdictEvent, EVENT_BUDGET};

const EP: u32 = 5;

fn drain(events: &mut EventReader) -> Vec<VerdictEvent> {
    let mut out = Vec::new();
    loop {
        let got = events.poll(Duration::from_millis(300)).unwrap();
        if got.is_empty() {
            return out;
        }
        out.extend(
            got.into_iter()
                .filter(|e| e.ep_id == EP && e.verdict == verdict::DROPPED),
        );
    }
}

#[test]
fn a_flood_of_drops_is_reported_in_bounded_events() {
    let (mut dp, pins) = open("events-flood");
    let mut events = EventReader::open(&pins.0).unwrap();
    let pod = v4(10, 0, 0, 10);
    let attacker = v4(10, 0, 0, 66);
    dp.apply(
        &StateBuilder::default()
            .endpoint(EP, ep_flags::ISOLATED_INGRESS)
            .ip(attacker.mapped(), 300)
            .build(),
    )
    .unwrap();
    in_netns(1, |idx| {
        // One CPU: the budget is per CPU, and the held-back count must be
        // on the CPU of the event that reports it.
        // SAFETY: a zeroed cpu_set_t with one bit set, for this thread.
        unsafe {
            let mut set: libc::cpu_set_t = std::mem::zeroed();
            libc::CPU_SET(0, &mut set);
            assert_eq!(
                libc::sched_setaffinity(0, std::mem::size_of_val(&set), &set),
                0
            );
        }
        let i = idx[0];
        dp.register_endpoint(i, EP).unwrap();
        kernel::sources(&mut dp, &[(EP, &[pod.mapped()])]);

        // 200,000 copies of one denied packet.
        const FLOOD: u32 = 200_000;
        let f = frame(attacker, pod, &udp(4444, 80));
        let (v, per_packet) = dp.test_run_timed(PROG_POD_INGRESS, &f, i, FLOOD).unwrap();
        assert_eq!(v, TestVerdict::Drop);
        let seen = drain(&mut events);
        assert!(
            !seen.is_empty() && seen.len() <= 4,
            "{} events for one repeated drop",
            seen.len()
        );
        assert_eq!(
            dp.drop_counts().get(&reason::NO_RULE).copied(),
            Some(u64::from(FLOOD)),
            "the counters must stay exact"
        );
        eprintln!("{per_packet:?} per dropped packet, {} events", seen.len());

        // Distinct denied packets: at most the budget per window and CPU.
        let distinct = 4 * EVENT_BUDGET as u16;
        for port in 0..distinct {
            let f = frame(attacker, pod, &udp(5000, 1000 + port));
            assert_eq!(
                dp.test_run(PROG_POD_INGRESS, &f, i).unwrap(),
                TestVerdict::Drop
            );
        }
        let seen = drain(&mut events);
        assert!(
            seen.len() <= 2 * EVENT_BUDGET as usize,
            "{} events for {distinct} drops in one window",
            seen.len()
        );
        assert!(seen.len() < usize::from(distinct), "no drop was held back");

        // After the window, the next event says how many were held back.
        std::thread::sleep(Duration::from_millis(1100));
        let mut carried = 0u64;
        for port in 0..2 {
            let f = frame(attacker, pod, &udp(6000, 9000 + port));
            dp.test_run(PROG_POD_INGRESS, &f, i).unwrap();
        }
        for ev in drain(&mut events) {
            carried += u64::from(ev.suppressed);
        }
        assert!(carried > 0, "held-back drops were never reported");
    });
}
