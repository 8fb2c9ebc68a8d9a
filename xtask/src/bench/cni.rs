//! CNI ADD latency with and without `palisade-cni` chained after the
//! bridge and host-local plugins (the bed's own chain, timed alternately by
//! `Testbed::time_cni_adds`).

use std::time::Duration;

use serde_json::{json, Map, Value};

use super::stats::percentile;

/// Prints the table rows and adds `cni_add_p99_overhead_ms` (and the
/// figures it comes from) to `out`.
pub fn figures(with: &[Duration], without: &[Duration], out: &mut Map<String, Value>) {
    let ms = |d: &[Duration]| {
        d.iter()
            .map(|d| d.as_secs_f64() * 1000.0)
            .collect::<Vec<_>>()
    };
    let (w, o) = (ms(with), ms(without));
    let (w50, w99, o50, o99) = (
        percentile(&w, 50),
        percentile(&w, 99),
        percentile(&o, 50),
        percentile(&o, 99),
    );
    println!();
    println!("CNI ADD over {} pods (ms)", w.len());
    println!("{:<28} {:>10} {:>10}", "chain", "p50", "p99");
    println!("{:<28} {:>10.2} {:>10.2}", "bridge + host-local", o50, o99);
    println!("{:<28} {:>10.2} {:>10.2}", "… + palisade-cni", w50, w99);
    out.insert(
        "cni_add_p99_overhead_ms".into(),
        json!(super::round3(w99 - o99)),
    );
    out.insert(
        "cni_add_ms".into(),
        json!({
            "pods": w.len(),
            "with_palisade": {"p50": super::round3(w50), "p99": super::round3(w99)},
            "without_palisade": {"p50": super::round3(o50), "p99": super::round3(o99)},
        }),
    );
}
