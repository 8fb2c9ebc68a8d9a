//! CNI ADD latency with and without `palisade-cni` chained after the
//! bridge and host-local plugins (the bed's own chain, timed alternately by
//! `Testbed::time_cni_adds`).

use std::path::Path;
use std::time::Duration;

use anyhow::{Context, Result};
use serde_json::{json, Map, Value};
use testbed::{Testbed, TestbedOptions};

use testbed::controlplane::sync::log_number;

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

/// `Testbed::time_cni_adds` on `bed`, with what its agent logged during
/// the ADDs (its timing of each; not the ADDs of the bed's own pods).
pub fn timed_adds(bed: &Testbed, count: usize) -> Result<(Vec<Duration>, Vec<Duration>, String)> {
    let read = || {
        bed.agent_log()
            .and_then(|p| std::fs::read_to_string(p).ok())
            .unwrap_or_default()
    };
    let before = read().len();
    let (with, without) = bed.time_cni_adds(count)?;
    let logged = read().get(before..).unwrap_or_default().to_string();
    Ok((with, without, logged))
}

/// Times `count` ADDs on a bed of its own whose agent attaches with
/// netlink filters (`--attach-mode netlink`) instead of TCX links; prints
/// the row, adds `cni_add_ms.with_palisade_netlink`, and returns what its
/// agent logged.
pub fn netlink_mode(bin_dir: &Path, count: usize, out: &mut Map<String, Value>) -> Result<String> {
    let dir = tempfile::Builder::new()
        .prefix("palisade-bench-netlink")
        .tempdir()?;
    let manifest = dir.path().join("cluster.yaml");
    // The bed wires every pod of the manifest it starts from: the pending
    // pods are added once it runs, as on the first bed, so the node holds
    // as many pods during the ADDs.
    std::fs::write(&manifest, super::cluster::manifest(10))?;
    let bed = Testbed::start(TestbedOptions {
        manifests: vec![manifest.clone()],
        palisade: true,
        bin_dir: bin_dir.to_path_buf(),
        probes: Vec::new(),
        nodes: 1,
        agent_args: vec!["--attach-mode".into(), "netlink".into()],
    })
    .context("starting the netlink-mode bed")?;
    super::datapath::rewrite_manifest(&bed, &manifest, &super::cluster::with_cni_pods(10, count))?;
    // The chain without palisade-cni is timed here too, though only the
    // first bed's figure is reported, so that both beds' ADDs come at the
    // same pace.
    let (with, _, logged) = timed_adds(&bed, count)?;
    let ms: Vec<f64> = with.iter().map(|d| d.as_secs_f64() * 1000.0).collect();
    let (p50, p99) = (percentile(&ms, 50), percentile(&ms, 99));
    println!(
        "{:<28} {:>10.2} {:>10.2}",
        "… --attach-mode netlink", p50, p99
    );
    if let Some(o) = out.get_mut("cni_add_ms").and_then(Value::as_object_mut) {
        o.insert(
            "with_palisade_netlink".into(),
            json!({"p50": super::round3(p50), "p99": super::round3(p99)}),
        );
    }
    Ok(logged)
}

/// The fields of the agent's ADD log line, in the order a request meets
/// them.
const PARTS: [&str; 6] = [
    "veth_us",
    "lock_us",
    "attach_us",
    "compile_us",
    "apply_us",
    "total_us",
];

/// Prints where the agent spent each ADD (p50/p99 of the fields of its
/// log lines in `logged`) and adds them as `key`.
pub fn agent_breakdown(logged: &str, key: &str, out: &mut Map<String, Value>) {
    let lines: Vec<&str> = logged
        .lines()
        .filter(|l| l.contains(testbed::controlplane::sync::AGENT_ENDPOINT_ENFORCED_LOG))
        .collect();
    if lines.is_empty() {
        println!("(the agent logged no ADD timings)");
        return;
    }
    println!(
        "inside the agent, per ADD ({key}, µs, {} ADDs)",
        lines.len()
    );
    println!("{:<28} {:>10} {:>10}", "part", "p50", "p99");
    let mut json_parts = Map::new();
    for part in PARTS {
        let values: Vec<f64> = lines.iter().filter_map(|l| log_number(l, part)).collect();
        if values.is_empty() {
            continue;
        }
        let (p50, p99) = (percentile(&values, 50), percentile(&values, 99));
        println!(
            "{:<28} {:>10.0} {:>10.0}",
            part.trim_end_matches("_us"),
            p50,
            p99
        );
        json_parts.insert(part.into(), json!({"p50": p50, "p99": p99}));
    }
    out.insert(key.into(), Value::Object(json_parts));
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn timings_are_read_from_the_agents_log_lines() {
        let line = "2026-12-01T21:00:00Z  INFO policy_agent::cni_server: endpoint enforced \
                    pod=bench/cni-w0 ifname=veth1 veth_us=120 lock_us=3 attach_us=900 \
                    compile_us=40 apply_us=2100 total_us=3200";
        assert_eq!(log_number(line, "apply_us"), Some(2100.0));
        assert_eq!(log_number(line, "total_us"), Some(3200.0));
        assert_eq!(log_number(line, "missing_us"), None);
        let mut out = Map::new();
        agent_breakdown(
            &format!("other line\n{line}\n"),
            "cni_add_agent_us",
            &mut out,
        );
        assert_eq!(out["cni_add_agent_us"]["attach_us"]["p50"], json!(900.0));
    }
}
