//! `lint` on 20,000 pods / 2,000 policies (target: under 10 s on 2 cores),
//! against one full compile of the same snapshot with every pod an endpoint
//! (what `simulate` does), measured in the same run: the ratio holds on a
//! noisy machine where absolute times do not.

use std::hint::black_box;
use std::time::{Duration, Instant};

use policy_engine::compile::{all_endpoints, compile, Allocator};
use policy_engine::testutil::lint_cluster;
use policy_engine::tools::lint::lint;

/// From the issue: lint of the 20,000-pod snapshot.
const TARGET: Duration = Duration::from_secs(10);

fn main() {
    // `cargo bench` passes `--bench`; a filter that excludes us skips.
    if std::env::args()
        .skip(1)
        .any(|a| !a.starts_with('-') && !"lint".contains(a.as_str()))
    {
        return;
    }
    let (pods, policies) = (20_000, 2_000);
    let snap = lint_cluster(pods, policies);
    let t = Instant::now();
    let eps = all_endpoints(&snap);
    black_box(compile(&snap, &eps, &mut Allocator::new()));
    let baseline = t.elapsed();
    let t = Instant::now();
    let findings = black_box(lint(&snap));
    let took = t.elapsed();
    println!(
        "[lint] {pods} pods / {} policies: {} findings in {took:?} vs one full compile {baseline:?} (baseline) = {:.2}x; target {TARGET:?}: {}",
        snap.policies.len(),
        findings.len(),
        took.as_secs_f64() / baseline.as_secs_f64().max(f64::EPSILON),
        if took <= TARGET { "met" } else { "MISSED" }
    );
}
