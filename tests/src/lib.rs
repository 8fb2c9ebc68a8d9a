//! Shared helpers of Palisade's integration tests (`tests/tests/*.rs`):
//! where the binaries and the scenarios are. The tests themselves need root
//! and a real kernel; they build network namespaces through the `testbed`
//! crate and clean them up on drop.
#![deny(missing_docs)]

use std::path::{Path, PathBuf};

use testbed::{read_probes, Observation, Probe, Testbed, TestbedOptions};

/// The workspace root.
pub fn workspace_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .map(Path::to_path_buf)
        .unwrap_or_else(|| PathBuf::from(".."))
}

/// Where `policy-agent` and `palisade-cni` are: `$PALISADE_BIN_DIR` (set by
/// `cargo xtask test`), else the profile folder this test binary was built
/// into (`<target>/debug`, which honours `CARGO_TARGET_DIR`) if it holds
/// them, else `<workspace>/target/debug`. Panics with a clear message when
/// either binary is missing.
pub fn bin_dir() -> PathBuf {
    let bins = [testbed::AGENT_BINARY, testbed::PLUGIN_BINARY];
    let has_bins = |d: &Path| bins.iter().all(|b| d.join(b).is_file());
    let dir = match std::env::var_os("PALISADE_BIN_DIR") {
        Some(d) => PathBuf::from(d),
        None => std::env::current_exe()
            .ok()
            .and_then(|exe| Some(exe.parent()?.parent()?.to_path_buf()))
            .filter(|d| has_bins(d))
            .unwrap_or_else(|| workspace_root().join("target").join("debug")),
    };
    for bin in bins {
        let path = dir.join(bin);
        assert!(
            path.is_file(),
            "{} is missing: build it (`cargo build -p policy-agent -p cni-bin`, or run the tests \
             through `cargo xtask test`) or point PALISADE_BIN_DIR at the folder holding \
             policy-agent and palisade-cni",
            path.display()
        );
    }
    dir
}

/// One scenario: a cluster manifest and its probes with expected verdicts.
#[derive(Clone, Debug)]
pub struct Scenario {
    /// Where it comes from, for messages (`shared/service-abc`, ...).
    pub label: String,
    /// The cluster manifest.
    pub cluster: PathBuf,
    /// The probes (JSON lines).
    pub probes: PathBuf,
}

/// The public scenario `name` from `/work/shared/scenarios` (found as
/// `../../shared/scenarios` from this crate) and the repository's own copy
/// under `examples/<name>/`, whichever exist (at least one must).
pub fn scenarios(name: &str) -> Vec<Scenario> {
    let shared = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../shared/scenarios");
    let examples = workspace_root().join("examples").join(name);
    let candidates = [
        Scenario {
            label: format!("shared/{name}"),
            cluster: shared.join(format!("{name}.yaml")),
            probes: shared.join(format!("{name}.expect.jsonl")),
        },
        Scenario {
            label: format!("examples/{name}"),
            cluster: examples.join("cluster.yaml"),
            probes: examples.join("probes.jsonl"),
        },
    ];
    let found: Vec<Scenario> = candidates
        .into_iter()
        .filter(|s| s.cluster.is_file() && s.probes.is_file())
        .collect();
    assert!(!found.is_empty(), "scenario {name} not found");
    found
}

/// Builds a test bed for `scenario` (with or without Palisade), runs its
/// probes and returns them with what was observed. Panics on setup errors,
/// with the agent's log in the message.
pub fn run_scenario(scenario: &Scenario, palisade: bool) -> (Vec<Probe>, Vec<Observation>) {
    let probes =
        read_probes(&scenario.probes).unwrap_or_else(|e| panic!("{}: {e}", scenario.label));
    let bed = Testbed::start(TestbedOptions {
        manifests: vec![scenario.cluster.clone()],
        palisade,
        bin_dir: if palisade { bin_dir() } else { PathBuf::new() },
        probes: probes.clone(),
    })
    .unwrap_or_else(|e| panic!("{} (palisade={palisade}): {e}", scenario.label));
    let seen = bed.probe(&probes);
    eprintln!("{}", testbed::report::table(&seen));
    if palisade && testbed::mismatches(&seen) > 0 {
        eprintln!(
            "--- agent log tail for {} ---\n{}",
            scenario.label,
            bed.agent_log_tail(40)
        );
    }
    (probes, seen)
}
