//! The shared scenarios (and the copies under `examples/`): every probe's
//! verdict from `simulate` must equal the expected one.

use std::path::{Path, PathBuf};

use policy_engine::manifest::load_paths;
use policy_engine::tools::simulate::{parse_probe, Simulation};

fn check_scenario(cluster: &Path, expect: &Path) -> usize {
    let loaded = load_paths(&[cluster.to_path_buf()])
        .unwrap()
        .strict()
        .unwrap();
    let sim = Simulation::new(loaded.snapshot);
    let text = std::fs::read_to_string(expect).unwrap();
    let mut n = 0;
    for line in text.lines().filter(|l| !l.trim().is_empty()) {
        let probe = parse_probe(line).unwrap();
        let want: serde_json::Value = serde_json::from_str(line).unwrap();
        let got = sim.judge(&probe).unwrap();
        assert_eq!(
            Some(got.allowed()),
            want["allowed"].as_bool(),
            "{}: {line} (reason {})",
            cluster.display(),
            got.reason()
        );
        n += 1;
    }
    n
}

fn crate_dir() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

#[test]
fn shared_scenarios() {
    let dir = crate_dir().join("../../shared/scenarios");
    if !dir.exists() {
        eprintln!(
            "{} absent: skipped (the examples test covers the copies)",
            dir.display()
        );
        return;
    }
    let mut total = 0;
    for name in ["service-abc", "apod", "db-backup", "dns-egress"] {
        total += check_scenario(
            &dir.join(format!("{name}.yaml")),
            &dir.join(format!("{name}.expect.jsonl")),
        );
    }
    assert!(total >= 15, "only {total} probes");
}

#[test]
fn examples_in_repo() {
    let dir = crate_dir().join("../examples");
    let mut total = 0;
    for name in [
        "service-abc",
        "apod",
        "db-backup",
        "dns-egress",
        "protect-kube-system",
    ] {
        let d = dir.join(name);
        total += check_scenario(&d.join("cluster.yaml"), &d.join("probes.jsonl"));
    }
    assert!(total >= 15, "only {total} probes");
}
