//! `lint` on 20,000 pods / 2,000 policies (target: under 10 s on 2 cores),
//! against one full compile of the same snapshot with every pod an endpoint
//! (what `simulate` does), measured in the same run: the ratio holds on a
//! noisy machine where absolute times do not. Then the whole tool as a user
//! runs it (`policy-agent lint -f cluster.yaml -o json`: read and check the
//! manifests, lint, write the findings), on the same cluster written out as
//! one YAML file, against the target.

use std::hint::black_box;
use std::time::{Duration, Instant};

use policy_engine::compile::{all_endpoints, compile, Allocator};
use policy_engine::testutil::{lint_cluster, lint_manifests};
use policy_engine::tools::lint::{self, lint};
use policy_engine::tools::Output;

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

    let dir = std::env::temp_dir().join(format!("palisade-lint-bench-{}", std::process::id()));
    let file = dir.join("cluster.yaml");
    let written = std::fs::create_dir_all(&dir)
        .and_then(|()| std::fs::write(&file, lint_manifests(pods, policies)));
    if let Err(e) = written {
        println!("[lint-file] skipped: cannot write {}: {e}", file.display());
        return;
    }
    let size = std::fs::metadata(&file).map(|m| m.len()).unwrap_or(0);
    let opts = lint::Options {
        input: vec![file.clone()].into(),
        output: Output::Json,
    };
    let mut sink = Vec::new();
    let t = Instant::now();
    let report = lint::run(&opts, &mut sink);
    let took = t.elapsed();
    let _ = std::fs::remove_dir_all(&dir);
    match report {
        Ok(r) => println!(
            "[lint-file] {pods} pods / {} policies from a {:.1} MiB file: {} findings in {took:?} vs one full compile {baseline:?} (baseline) = {:.2}x; target {TARGET:?}: {}",
            snap.policies.len(),
            size as f64 / (1024.0 * 1024.0),
            r.findings.len(),
            took.as_secs_f64() / baseline.as_secs_f64().max(f64::EPSILON),
            if took <= TARGET { "met" } else { "MISSED" }
        ),
        Err(e) => println!("[lint-file] FAILED: {e}"),
    }
}
