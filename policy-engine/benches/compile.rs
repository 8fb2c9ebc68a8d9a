//! Compile and change-diff times on a synthetic cluster of 10,000 pods in
//! 500 namespaces with 2,000 policies, seen from one node (100 local
//! endpoints) and from everywhere (every pod an endpoint, as `simulate`).

use std::collections::BTreeMap;
use std::hint::black_box;

use criterion::{criterion_group, criterion_main, Criterion};
use policy_engine::compile::{all_endpoints, compile, Allocator, Engine};
use policy_engine::model::{PodRef, Snapshot};
use policy_engine::testutil::{policy_yaml, synthetic_cluster};

fn node_endpoints(s: &Snapshot, n: usize) -> BTreeMap<PodRef, u32> {
    // Every 100th pod: local pods spread over many namespaces.
    s.pods
        .keys()
        .step_by((s.pods.len() / n).max(1))
        .take(n)
        .cloned()
        .zip(1u32..)
        .collect()
}

fn approx_bytes(st: &policy_engine::state::MapState) -> usize {
    // BTreeMap node overhead is roughly one key+value more per entry.
    let e = std::mem::size_of::<(u32, u32)>();
    let i = std::mem::size_of::<([u8; 16], u32)>();
    let c = std::mem::size_of::<(policy_engine::state::CidrPrefix, u32)>();
    let p = std::mem::size_of::<(
        policy_engine::state::PolicyEntry,
        policy_common::PolicyValue,
    )>();
    2 * (st.endpoints.len() * e + st.ipcache.len() * i + st.cidrs.len() * c + st.policy.len() * p)
}

/// Target for one change (pod relabel, policy change), from the issue.
const TARGET_CHANGE: std::time::Duration = std::time::Duration::from_millis(2);

/// Prints the incremental path against its baseline measured in the same
/// run: a full recompile and diff (`Engine::update`) of the same change.
/// Ratios stay meaningful on a noisy machine where absolute times do not.
fn report_ratio(
    label: &str,
    what: &str,
    target: std::time::Duration,
    before: &Snapshot,
    after: &Snapshot,
    eps: &BTreeMap<PodRef, u32>,
    incremental: impl Fn(&mut Engine, &Snapshot) -> usize,
) {
    const ROUNDS: u32 = 6;
    let mut engine = Engine::new();
    engine.update(before, eps);
    let (mut inc, mut full) = (std::time::Duration::ZERO, std::time::Duration::ZERO);
    for round in 0..ROUNDS {
        let s = if round % 2 == 0 { after } else { before };
        let t = std::time::Instant::now();
        black_box(incremental(&mut engine, s));
        inc += t.elapsed();
        let t = std::time::Instant::now();
        black_box(engine.update(if round % 2 == 0 { before } else { after }, eps));
        full += t.elapsed();
        // Leave the engine where the incremental step expects it.
        engine.update(s, eps);
    }
    let (inc, full) = (inc / ROUNDS, full / ROUNDS);
    println!(
        "[{label}] {what}: incremental {inc:?} vs full recompile+diff {full:?} (baseline) = {:.3}x; target {target:?}: {}",
        inc.as_secs_f64() / full.as_secs_f64().max(f64::EPSILON),
        if inc <= target { "met" } else { "MISSED" }
    );
}

fn bench(c: &mut Criterion) {
    let snap = synthetic_cluster(500, 10_000, 2_000);
    for (label, eps) in [
        ("node-100", node_endpoints(&snap, 100)),
        ("all-10000", all_endpoints(&snap)),
    ] {
        let mut alloc = Allocator::new();
        let t = std::time::Instant::now();
        let compiled = compile(&snap, &eps, &mut alloc);
        let st = &compiled.state;
        println!(
            "[{label}] endpoints={} ipcache={} cidrs={} policy={} errors={} identities={} ~{:.1} MiB, one compile {:?}",
            st.endpoints.len(),
            st.ipcache.len(),
            st.cidrs.len(),
            st.policy.len(),
            compiled.errors.len(),
            compiled.identities.len(),
            approx_bytes(st) as f64 / (1024.0 * 1024.0),
            t.elapsed()
        );

        let mut g = c.benchmark_group(label);
        g.sample_size(10);
        g.bench_function("full compile", |b| {
            let mut alloc = Allocator::new();
            b.iter(|| black_box(compile(&snap, &eps, &mut alloc)))
        });

        // One pod relabelled: compile + diff against the previous state.
        let mut engine = Engine::new();
        engine.update(&snap, &eps);
        let pod = eps
            .keys()
            .next()
            .cloned()
            .unwrap_or_else(|| PodRef::new("ns0", "pod0"));
        let mut relabelled = snap.clone();
        if let Some(p) = relabelled.pods.get_mut(&pod) {
            p.labels.insert("app".into(), "app-moved".into());
        }
        let mut flip = false;
        g.bench_function("pod relabel diff", |b| {
            b.iter(|| {
                flip = !flip;
                let s = if flip { &relabelled } else { &snap };
                black_box(engine.pod_changed(s, &pod))
            })
        });
        let ops = {
            let mut e = Engine::new();
            e.update(&snap, &eps);
            e.pod_changed(&relabelled, &pod).len()
        };
        println!("[{label}] pod relabel: {ops} map ops");
        report_ratio(
            label,
            "pod relabel",
            TARGET_CHANGE,
            &snap,
            &relabelled,
            &eps,
            |e, s| e.pod_changed(s, &pod).len(),
        );

        // One policy changed: the first one in a namespace with a local
        // endpoint.
        let target = snap
            .policies
            .keys()
            .find(|r| r.namespace == pod.namespace)
            .cloned()
            .unwrap_or_else(|| PodRef::new("ns0", "pol0"));
        let mut changed = snap.clone();
        let yaml = format!(
            "metadata: {{name: {}, namespace: {}}}\nspec:\n  podSelector: {{}}\n  ingress: [{{ports: [{{port: 9090}}]}}]\n",
            target.name, target.namespace
        );
        changed.upsert_policy(&policy_yaml(&yaml)).ok();
        let mut engine = Engine::new();
        engine.update(&snap, &eps);
        let mut flip = false;
        g.bench_function("policy change diff", |b| {
            b.iter(|| {
                flip = !flip;
                let s = if flip { &changed } else { &snap };
                black_box(engine.policy_changed(s, &target))
            })
        });
        let ops = {
            let mut e = Engine::new();
            e.update(&snap, &eps);
            e.policy_changed(&changed, &target).len()
        };
        println!("[{label}] policy change: {ops} map ops");
        report_ratio(
            label,
            "policy change",
            TARGET_CHANGE,
            &snap,
            &changed,
            &eps,
            |e, s| e.policy_changed(s, &target).len(),
        );
        g.finish();
    }
}

criterion_group!(benches, bench);
criterion_main!(benches);
