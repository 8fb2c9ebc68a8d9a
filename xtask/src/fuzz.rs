//! `cargo xtask fuzz`: the cargo-fuzz targets under `fuzz/`, one after
//! another, each for a fixed time, with a summary per target (how long it
//! ran, how many inputs it executed, what it found).
//!
//! The targets are built once, with the pinned nightly (libFuzzer's
//! coverage instrumentation needs nightly; it is the toolchain that builds
//! the eBPF object too) and without a sanitizer: the code fuzzed is safe
//! Rust, where AddressSanitizer finds nothing a panic would not, and it
//! would double the cost of building k8s-openapi and kube. Each target
//! starts from its committed seed corpus (`fuzz/corpus/<target>`, kept
//! small) and writes what it learns to a working corpus in the target
//! directory, so a later run goes on from there and the repository stays
//! as it is. A crash leaves its input in `<fuzz target dir>/artifacts/`
//! (the summary names it);
//! minimise it (`cargo fuzz tmin`), fix the cause, add a unit test with it
//! and copy it into the seed corpus.

use std::path::{Path, PathBuf};
use std::process::{Command, ExitCode, Stdio};
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};

use crate::cmd;
use crate::setup::{self, EBPF_TOOLCHAIN};

/// Every fuzz target, in the order they run.
pub const TARGETS: &[&str] = &[
    "cni_input",
    "agent_socket",
    "manifest_simulate",
    "packet_verdict",
];

/// Seconds per target of the smoke run inside `cargo xtask test`.
pub const SMOKE_SECONDS: u64 = 15;

/// Targets that load eBPF programs (root only).
const NEEDS_ROOT: &[&str] = &["packet_verdict"];

/// What one target's run came to.
#[derive(Debug)]
pub struct TargetRun {
    /// The target.
    pub target: String,
    /// Wall-clock time it ran.
    pub elapsed: Duration,
    /// Inputs executed (libFuzzer's count), when it said.
    pub executions: Option<u64>,
    /// The crash or mismatch found, if any: the input's path and the
    /// panic's first line.
    pub finding: Option<String>,
}

/// `cargo xtask fuzz`: every target (or only `target`) for `seconds`
/// each; fails if any target found something.
pub fn run(seconds: u64, target: Option<&str>) -> Result<ExitCode> {
    setup::run()?;
    let runs = fuzz(seconds, target)?;
    Ok(if runs.iter().any(|r| r.finding.is_some()) {
        ExitCode::FAILURE
    } else {
        ExitCode::SUCCESS
    })
}

/// Builds the targets and runs them; prints a summary, and returns the
/// runs (an error only when a target cannot be built or started).
pub fn fuzz(seconds: u64, target: Option<&str>) -> Result<Vec<TargetRun>> {
    let targets: Vec<&str> = match target {
        Some(t) if TARGETS.contains(&t) => vec![t],
        Some(t) => bail!("no fuzz target {t:?} (targets: {})", TARGETS.join(", ")),
        None => TARGETS.to_vec(),
    };
    let root = cmd::workspace_root();
    let target_dir = target_dir(&root);
    build(&target_dir)?;
    let mut runs = Vec::new();
    for t in targets {
        if NEEDS_ROOT.contains(&t) && !setup::is_root() {
            bail!("fuzz target {t} loads eBPF programs and needs root");
        }
        runs.push(run_target(&root, &target_dir, t, seconds)?);
    }
    eprintln!("fuzz: summary");
    for r in &runs {
        eprintln!(
            "fuzz: {:<18} {:>5.0} s {:>10} executions  {}",
            r.target,
            r.elapsed.as_secs_f64(),
            r.executions
                .map_or_else(|| "?".to_string(), |n| n.to_string()),
            r.finding.as_deref().unwrap_or("nothing found"),
        );
    }
    Ok(runs)
}

/// Where the fuzz builds and working corpora live: `PALISADE_FUZZ_TARGET_DIR`,
/// else a cache outside the repository (as for the Kubernetes binaries)
/// when we may write there, else `fuzz/` below the main target directory.
/// A cold build of the instrumented targets (kube, k8s-openapi, aya, ...
/// under the pinned nightly) takes about 10 minutes of both cores; CI
/// runs in a fresh clone on the same machine, so a cache outside the clone
/// makes every run after the first rebuild only Palisade's crates (about
/// 2 minutes).
fn target_dir(root: &Path) -> PathBuf {
    if let Some(dir) = std::env::var_os("PALISADE_FUZZ_TARGET_DIR") {
        return PathBuf::from(dir);
    }
    let cache = PathBuf::from(FUZZ_CACHE);
    if std::fs::create_dir_all(&cache).is_ok() {
        return cache;
    }
    std::env::var_os("CARGO_TARGET_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| root.join("target"))
        .join("fuzz")
}

/// The fuzz build cache (see [`target_dir`]).
const FUZZ_CACHE: &str = "/var/cache/palisade/fuzz-target";

fn build(target_dir: &Path) -> Result<()> {
    // `rustup run`, not `cargo +toolchain`: the `cargo` first on our PATH
    // may be the stable toolchain's own binary, which knows no `+`.
    let mut c = Command::new("rustup");
    c.current_dir(cmd::workspace_root())
        .env_remove("RUSTUP_TOOLCHAIN")
        .env_remove("RUSTC");
    cmd::run(
        c.args(["run", EBPF_TOOLCHAIN, "cargo"])
            .args(["fuzz", "build", "--sanitizer", "none"])
            // Faster builds of the big crates; the run-time cost is small.
            .args(["--codegen-units", "16"])
            .arg("--target-dir")
            .arg(target_dir),
    )
    .context("building the fuzz targets")
}

fn run_target(root: &Path, target_dir: &Path, target: &str, seconds: u64) -> Result<TargetRun> {
    let exe = target_dir
        .join("x86_64-unknown-linux-gnu/release")
        .join(target);
    let seeds = root.join("fuzz/corpus").join(target);
    let work = target_dir.join("corpus").join(target);
    let artifacts = target_dir.join("artifacts").join(target);
    let logs = target_dir.join("logs");
    for d in [&work, &artifacts, &logs] {
        std::fs::create_dir_all(d).with_context(|| format!("creating {}", d.display()))?;
    }
    let log_path = logs.join(format!("{target}.log"));
    let log = std::fs::File::create(&log_path)
        .with_context(|| format!("creating {}", log_path.display()))?;
    let mut c = Command::new(&exe);
    c.arg(&work)
        .arg(&seeds)
        .arg(format!("-max_total_time={seconds}"))
        .arg(format!("-artifact_prefix={}/", artifacts.display()))
        // One input taking this long is a finding (a hang) too.
        .arg("-timeout=20")
        .arg("-rss_limit_mb=4096")
        .arg("-print_final_stats=1")
        // Frames up to an Ethernet MTU; manifests and requests of a few KiB.
        .arg(format!(
            "-max_len={}",
            if target == "packet_verdict" {
                1515
            } else {
                8192
            }
        ))
        .stdout(Stdio::null())
        .stderr(log);
    eprintln!(
        "fuzz: {target} for {seconds} s (log: {})",
        log_path.display()
    );
    let started = Instant::now();
    let status = c
        .status()
        .with_context(|| format!("cannot start {}", exe.display()))?;
    let elapsed = started.elapsed();
    let text = std::fs::read_to_string(&log_path).unwrap_or_default();
    let executions = executions(&text);
    let finding = (!status.success()).then(|| {
        let tail: Vec<&str> = text.lines().rev().take(40).collect();
        eprintln!("fuzz: {target} failed ({status}); the end of its log:");
        for l in tail.iter().rev() {
            eprintln!("  {l}");
        }
        let input = text
            .lines()
            .find_map(|l| l.split_once("Test unit written to ").map(|(_, p)| p.trim()))
            .unwrap_or("no input written");
        let panic = text
            .lines()
            .find(|l| l.contains("panicked at"))
            .unwrap_or("")
            .trim();
        format!("FOUND: {input} {panic}")
    });
    Ok(TargetRun {
        target: target.to_string(),
        elapsed,
        executions,
        finding,
    })
}

/// libFuzzer's count of executed inputs from its final stats (or its
/// `Done N runs` line).
fn executions(log: &str) -> Option<u64> {
    log.lines()
        .find_map(|l| l.strip_prefix("stat::number_of_executed_units:"))
        .and_then(|n| n.trim().parse().ok())
        .or_else(|| {
            log.lines().rev().find_map(|l| {
                let rest = l.strip_prefix("Done ")?;
                rest.split_whitespace().next()?.parse().ok()
            })
        })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn executions_come_from_the_final_stats() {
        let log =
            "#2\tINITED\nDone 1234 runs in 16 second(s)\nstat::number_of_executed_units: 1240\n";
        assert_eq!(executions(log), Some(1240));
        assert_eq!(executions("Done 77 runs in 1 second(s)\n"), Some(77));
        assert_eq!(executions("==1== ERROR: libFuzzer: deadly signal\n"), None);
    }

    #[test]
    fn every_target_has_a_seed_corpus() {
        let root = cmd::workspace_root();
        for t in TARGETS {
            let dir = root.join("fuzz/corpus").join(t);
            let seeds = std::fs::read_dir(&dir)
                .map(|d| d.count())
                .unwrap_or_default();
            assert!(seeds > 0, "{} has no seeds", dir.display());
        }
    }
}
