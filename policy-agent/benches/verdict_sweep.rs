//! The cost of one verdict of the pod ingress program as the state grows:
//! ipBlock CIDRs (10 → 10,000 → 1,000,000), policy entries of the endpoint
//! (10 → 1,000) and identities in the ipcache (10 → 5,000), each swept
//! with the others at their smallest. Measured with `BPF_PROG_TEST_RUN`
//! repeated in the kernel, minus what an empty classifier costs on the same
//! frame (the test run's own overhead). Two packets per step: a new flow
//! the policy denies (judged in full on every run: no conntrack entry is
//! made for it) and a packet of an established, allowed flow.
//!
//! Prints one JSON object per step on stdout (`cargo xtask bench` reads
//! them) and a table on stderr. Needs root. `--quick`: fewer repeats.

#[path = "../tests/support/kernel.rs"]
mod kernel;
#[path = "../tests/support/packets.rs"]
mod packets;

use std::time::Duration;

use kernel::{in_netns, PinDir, StateBuilder};
use packets::*;
use policy_agent::dataplane::{
    kernel::{
        empty_classifier_cost, KernelDataplane, KernelOptions, MapSizes, TestVerdict,
        PROG_POD_INGRESS,
    },
    Dataplane,
};
use policy_common::{dir, ep_flags};

const EP: u32 = 10;
const PEER_ID: u32 = 300;
const CIDR_ID: u32 = 400;

fn pod() -> Ip {
    v4(10, 0, 0, 10)
}
fn peer() -> Ip {
    v4(10, 0, 0, 20)
}

/// The i-th CIDR: /30s from 100.64.0.0 up (as the bench's manifests).
fn cidr(i: u32) -> Ip {
    let [a, b, c, d] = (u32::from_be_bytes([100, 64, 0, 0]) + 4 * i).to_be_bytes();
    v4(a, b, c, d)
}

/// The i-th extra identity's address, in 10.128.0.0/9.
fn member(i: u32) -> Ip {
    let [_, x, y, z] = (i + 1).to_be_bytes();
    v4(10, 128 | x, y, z)
}

/// What is swept.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Swept {
    Cidrs,
    Entries,
    Identities,
}

impl Swept {
    fn name(self) -> &'static str {
        match self {
            Self::Cidrs => "cidrs",
            Self::Entries => "entries",
            Self::Identities => "identities",
        }
    }
}

/// One step of the sweep: the sizes of the state.
struct Step {
    swept: Swept,
    n: u32,
    cidrs: u32,
    entries: u32,
    identities: u32,
}

impl Step {
    fn new(swept: Swept, n: u32) -> Self {
        let mut s = Step {
            swept,
            n,
            cidrs: 10,
            entries: 10,
            identities: 10,
        };
        match swept {
            Swept::Cidrs => s.cidrs = n,
            Swept::Entries => s.entries = n,
            Swept::Identities => s.identities = n,
        }
        s
    }

    /// An ingress-isolated endpoint allowing TCP/80 from the peer, plus the
    /// step's entries, identities and CIDRs.
    fn state(&self) -> StateBuilder {
        let mut b = StateBuilder::default()
            .endpoint(EP, ep_flags::ISOLATED_INGRESS)
            .ip(pod().mapped(), 299)
            .ip(peer().mapped(), PEER_ID)
            .port(EP, dir::INGRESS, PEER_ID, TCP, 80);
        for i in 0..self.entries.saturating_sub(1) {
            b = b.port(
                EP,
                dir::INGRESS,
                PEER_ID + 1 + i / 60_000,
                TCP,
                1000 + (i % 60_000) as u16,
            );
        }
        for i in 0..self.identities.saturating_sub(2) {
            b = b.ip(member(i).mapped(), 1000 + i);
        }
        for i in 0..self.cidrs {
            b = b.cidr(cidr(i).mapped(), 96 + 30, CIDR_ID + i % 7);
        }
        b
    }

    /// The denied packet's source: in the middle CIDR, the middle
    /// identity, or the peer.
    fn source(&self) -> Ip {
        match self.swept {
            Swept::Cidrs => cidr(self.cidrs / 2),
            Swept::Identities => member(self.identities / 2),
            Swept::Entries => peer(),
        }
    }
}

fn fail(what: String) -> ! {
    eprintln!("verdict_sweep: {what}");
    std::process::exit(1);
}

fn main() {
    let quick = std::env::args().any(|a| a == "--quick");
    let repeat: u32 = if quick { 20_000 } else { 200_000 };
    let sweeps = [
        (Swept::Cidrs, [10, 10_000, 1_000_000].as_slice()),
        (Swept::Entries, [10, 1_000].as_slice()),
        (Swept::Identities, [10, 5_000].as_slice()),
    ];
    kernel::require_root();
    let pins = PinDir::new("verdict-sweep");
    let mut opts = KernelOptions::new(&pins.0);
    opts.sizes = MapSizes {
        cidrs: *MapSizes::CIDRS.end(),
        ..MapSizes::default()
    };
    let mut dp = KernelDataplane::open(opts)
        .unwrap_or_else(|e| fail(format!("opening the kernel dataplane: {e}")));
    eprintln!(
        "{:<12} {:>9} {:>14} {:>16} {:>10}",
        "swept", "n", "new flow ns", "established ns", "empty ns"
    );
    for (swept, ns) in sweeps {
        for &n in ns {
            let step = Step::new(swept, n);
            if let Err(e) = dp.apply(&step.state().build()) {
                fail(format!("applying {}={n}: {e}", swept.name()));
            }
            let (new_ns, est_ns, empty_ns) =
                in_netns(1, |idx| measure(&mut dp, idx[0], &step, repeat));
            eprintln!(
                "{:<12} {:>9} {:>14.1} {:>16.1} {:>10.1}",
                swept.name(),
                n,
                new_ns,
                est_ns,
                empty_ns
            );
            println!(
                "{{\"swept\": \"{}\", \"n\": {n}, \"new_flow_ns\": {new_ns:.1}, \"established_ns\": {est_ns:.1}, \"empty_ns\": {empty_ns:.1}}}",
                swept.name()
            );
        }
    }
}

/// (denied new flow, established flow, empty classifier), ns per packet,
/// the first two with the third subtracted; each the best of three runs
/// (the least disturbed by the rest of the machine).
fn measure(dp: &mut KernelDataplane, ifindex: u32, step: &Step, repeat: u32) -> (f64, f64, f64) {
    if let Err(e) = dp.register_endpoint(ifindex, EP) {
        fail(format!("registering the endpoint: {e}"));
    }
    let mut run = |f: &[u8], repeat: u32, want: TestVerdict| -> Duration {
        match dp.test_run_timed(PROG_POD_INGRESS, f, ifindex, repeat) {
            Ok((v, d)) if v == want => d,
            Ok((v, _)) => fail(format!(
                "{}={}: want {want:?}, got {v:?}",
                step.swept.name(),
                step.n
            )),
            Err(e) => fail(format!("test run: {e}")),
        }
    };
    let best = |f: &mut dyn FnMut() -> Duration| (0..3).map(|_| f()).min().unwrap_or_default();
    let denied = frame(step.source(), pod(), &tcp(40000, 9, SYN));
    let new = best(&mut || run(&denied, repeat, TestVerdict::Drop));
    run(
        &frame(peer(), pod(), &tcp(41000, 80, SYN)),
        1,
        TestVerdict::Allow,
    );
    let ack = frame(peer(), pod(), &tcp(41000, 80, ACK));
    let est = best(&mut || run(&ack, repeat, TestVerdict::Allow));
    let empty = best(&mut || {
        empty_classifier_cost(&denied, repeat)
            .unwrap_or_else(|e| fail(format!("the empty classifier: {e}")))
    });
    let ns = |d: Duration| d.as_secs_f64() * 1e9;
    (ns(new) - ns(empty), ns(est) - ns(empty), ns(empty))
}
