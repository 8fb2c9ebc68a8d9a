//! The commands besides `setup`; each runs `setup` first.

use std::path::{Path, PathBuf};
use std::process::{ExitCode, Stdio};

use anyhow::{bail, Context, Result};
use serde_json::Value;

use crate::cmd::{self, cargo};
use crate::{setup, Format};

/// The binaries `build` produces and the test bed runs.
pub const BINARIES: &[&str] = &["policy-agent", "palisade-cni"];

/// `cargo xtask build`.
pub fn build(release: bool) -> Result<ExitCode> {
    setup::run()?;
    let dir = build_binaries(release)?;
    println!("{}", dir.display());
    Ok(ExitCode::SUCCESS)
}

/// Builds [`BINARIES`] and returns the directory holding them.
pub fn build_binaries(release: bool) -> Result<PathBuf> {
    let mut c = cargo();
    c.args(["build", "-p", "policy-agent", "-p", "cni-bin"])
        .arg("--message-format=json-render-diagnostics");
    if release {
        c.arg("--release");
    }
    println!(
        "$ cargo build -p policy-agent -p cni-bin{}",
        if release { " --release" } else { "" }
    );
    let out = c
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .output()
        .context("cannot start cargo build")?;
    if !out.status.success() {
        bail!("cargo build failed ({})", out.status);
    }
    bin_dir_from_messages(&String::from_utf8_lossy(&out.stdout))
}

/// The directory of the built executables, read from cargo's JSON messages.
fn bin_dir_from_messages(messages: &str) -> Result<PathBuf> {
    let mut dir: Option<PathBuf> = None;
    let mut found = Vec::new();
    for line in messages.lines() {
        let Ok(msg) = serde_json::from_str::<Value>(line) else {
            continue;
        };
        let Some(exe) = msg.get("executable").and_then(Value::as_str) else {
            continue;
        };
        let exe = Path::new(exe);
        let Some(name) = exe.file_name().and_then(|n| n.to_str()) else {
            continue;
        };
        if BINARIES.contains(&name) {
            found.push(name.to_string());
            dir = exe.parent().map(Path::to_path_buf);
        }
    }
    match dir {
        Some(d) if found.len() == BINARIES.len() => Ok(d),
        _ => bail!("cargo build did not report all of {BINARIES:?} (got {found:?})"),
    }
}

/// `cargo xtask test`: formatting and lints first (CI proves the code is
/// clean), then every test with the built binaries; the test runner's
/// summary is the last thing printed.
pub fn test() -> Result<ExitCode> {
    setup::run()?;
    let root = cmd::workspace_root();
    cmd::run(cargo().args(["fmt", "--all", "--", "--check"]))
        .context("formatting differs: run `cargo fmt --all`")?;
    cmd::run(cargo().args([
        "clippy",
        "--workspace",
        "--all-targets",
        "--",
        "-D",
        "warnings",
    ]))?;
    let bin_dir = build_binaries(false)?;
    println!("PALISADE_BIN_DIR={}", bin_dir.display());
    // nextest does not run doc tests: run them first.
    cmd::run(
        cargo()
            .args(["test", "--workspace", "--doc"])
            .env("PALISADE_BIN_DIR", &bin_dir),
    )?;
    cmd::run(
        cargo()
            .args(["nextest", "run", "--workspace", "--no-fail-fast"])
            .env("PALISADE_BIN_DIR", &bin_dir)
            .current_dir(root),
    )?;
    Ok(ExitCode::SUCCESS)
}

/// Arguments of `cargo xtask testbed`.
pub struct TestbedArgs {
    /// Cluster manifest.
    pub manifests: PathBuf,
    /// Probe file.
    pub probes: Option<PathBuf>,
    /// Output format.
    pub format: Format,
    /// With Palisade (false: plain bridge).
    pub palisade: bool,
    /// Release binaries.
    pub release: bool,
}

/// `cargo xtask testbed`: exit 1 if an observation contradicts an
/// expectation, 2 on bad input.
pub fn testbed(args: TestbedArgs) -> Result<ExitCode> {
    setup::run()?;
    let _bin_dir = build_binaries(args.release)?;
    let _ = (args.manifests, args.probes, args.format, args.palisade);
    bail!("the testbed library is not wired in yet")
}

/// `cargo xtask demo`.
pub fn demo(_example: Option<&str>, release: bool) -> Result<ExitCode> {
    setup::run()?;
    let _bin_dir = build_binaries(release)?;
    bail!("the testbed library is not wired in yet")
}

/// `cargo xtask bench`.
pub fn bench(args: &[String]) -> Result<ExitCode> {
    setup::run()?;
    let mut c = cargo();
    c.args(["bench", "-p", "policy-engine"]);
    if !args.is_empty() {
        c.arg("--").args(args);
    }
    cmd::run(&mut c)?;
    Ok(ExitCode::SUCCESS)
}
