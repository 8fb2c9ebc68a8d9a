//! The commands besides `setup`; each runs `setup` first.

use std::path::{Path, PathBuf};
use std::process::{ExitCode, Stdio};

use agent_api::FlowRecord;

use anyhow::{bail, Context, Result};
use serde_json::Value;

use testbed::controlplane::cluster::KubeOptions;
use testbed::report;
use testbed::scenario::{Demo, Kubelet, RealNodes, Scenario};

use crate::cmd::{self, cargo};
use crate::{setup, Format, Runtime};

/// The binaries `build` produces, the test bed runs and the image ships.
/// They are built once, statically for [`setup::STATIC_TARGET`], whatever
/// the profile: the test bed runs the same kind of executable the image
/// ships (and `palisade-cni` runs on hosts whose C library is not the
/// builder's).
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
    Ok(cargo_build(release, None)?.bin_dir)
}

/// What one `cargo build` produced.
pub struct Built {
    /// The directory holding [`BINARIES`].
    pub bin_dir: PathBuf,
    /// The executable of the benchmark target asked for, if one was.
    pub bench: Option<PathBuf>,
}

/// Builds [`BINARIES`] and, with `bench`, that benchmark target of
/// `policy-agent` too, in one cargo invocation: `cargo bench` would build
/// the crate again under the bench profile, eBPF object included.
pub fn cargo_build(release: bool, bench: Option<&str>) -> Result<Built> {
    let mut c = cargo();
    c.args(["build", "-p", "policy-agent", "-p", "cni-bin"])
        .args(["--target", setup::STATIC_TARGET])
        .arg("--message-format=json-render-diagnostics");
    if release {
        c.arg("--release");
    }
    if let Some(b) = bench {
        c.args(["--bins", "--bench", b]);
    }
    eprintln!(
        "$ cargo build -p policy-agent -p cni-bin --target {}{}{}",
        setup::STATIC_TARGET,
        if release { " --release" } else { "" },
        bench
            .map(|b| format!(" --bins --bench {b}"))
            .unwrap_or_default()
    );
    let out = c
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .output()
        .context("cannot start cargo build")?;
    if !out.status.success() {
        bail!("cargo build failed ({})", out.status);
    }
    let messages = String::from_utf8_lossy(&out.stdout);
    let bin_dir = bin_dir_from_messages(&messages)?;
    let bench = match bench {
        Some(b) => Some(bench_from_messages(&messages, b)?),
        None => None,
    };
    Ok(Built { bin_dir, bench })
}

/// Builds binary `bin` of package `package` for the machine itself (not
/// the static target: test-bed helpers run on the machine) and returns
/// its path.
pub fn build_host_bin(package: &str, bin: &str) -> Result<PathBuf> {
    eprintln!("$ cargo build -p {package} --bin {bin}");
    let out = cargo()
        .args(["build", "-p", package, "--bin", bin])
        .arg("--message-format=json-render-diagnostics")
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .output()
        .context("cannot start cargo build")?;
    if !out.status.success() {
        bail!(
            "cargo build -p {package} --bin {bin} failed ({})",
            out.status
        );
    }
    executables(&String::from_utf8_lossy(&out.stdout))
        .into_iter()
        .find(|(n, kinds, _)| n == bin && kinds.iter().any(|k| k == "bin"))
        .map(|(_, _, exe)| exe)
        .with_context(|| format!("cargo build did not report the binary {bin}"))
}

/// Executables of cargo's JSON messages: (target name, target kinds, path).
fn executables(messages: &str) -> Vec<(String, Vec<String>, PathBuf)> {
    let mut found = Vec::new();
    for line in messages.lines() {
        let Ok(msg) = serde_json::from_str::<Value>(line) else {
            continue;
        };
        let Some(exe) = msg.get("executable").and_then(Value::as_str) else {
            continue;
        };
        let target = msg.get("target");
        let name = target
            .and_then(|t| t.get("name"))
            .and_then(Value::as_str)
            .unwrap_or_default();
        let kinds = target
            .and_then(|t| t.get("kind"))
            .and_then(Value::as_array)
            .map(|k| {
                k.iter()
                    .filter_map(Value::as_str)
                    .map(String::from)
                    .collect()
            })
            .unwrap_or_default();
        found.push((name.to_string(), kinds, PathBuf::from(exe)));
    }
    found
}

/// The executable of benchmark target `name`, read from cargo's JSON
/// messages.
fn bench_from_messages(messages: &str, name: &str) -> Result<PathBuf> {
    executables(messages)
        .into_iter()
        .find(|(n, kinds, _)| n == name && kinds.iter().any(|k| k == "bench"))
        .map(|(_, _, exe)| exe)
        .with_context(|| format!("cargo build did not report the benchmark {name}"))
}

/// The directory of the built executables, read from cargo's JSON messages.
fn bin_dir_from_messages(messages: &str) -> Result<PathBuf> {
    let mut dir: Option<PathBuf> = None;
    let mut found = Vec::new();
    for (_, _, exe) in executables(messages) {
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
    // The real-node tests install Palisade from this image, made of the
    // same (static) binaries.
    let image = bin_dir.join(crate::image::ARCHIVE_NAME);
    crate::image::write_archive(&bin_dir, crate::image::DEFAULT_TAG, &image)?;
    println!("PALISADE_IMAGE={}", image.display());
    // nextest does not run doc tests: run them first.
    cmd::run(
        cargo()
            .args(["test", "--workspace", "--doc"])
            .env("PALISADE_BIN_DIR", &bin_dir),
    )?;
    // A short fuzz run of every target, before the suite so that the
    // test runner's summary stays the last thing printed. A crash fails
    // the command; `cargo xtask fuzz` runs them for longer.
    let smoke = crate::fuzz::fuzz(crate::fuzz::SMOKE_SECONDS, None)?;
    let found: Vec<&str> = smoke
        .iter()
        .filter(|r| r.finding.is_some())
        .map(|r| r.target.as_str())
        .collect();
    if !found.is_empty() {
        bail!(
            "fuzz smoke run: {} found a crash or a mismatch",
            found.join(", ")
        );
    }
    cmd::run(
        cargo()
            .args(["nextest", "run", "--workspace", "--no-fail-fast"])
            .env("PALISADE_BIN_DIR", &bin_dir)
            .env("PALISADE_IMAGE", &image)
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
    /// How many nodes.
    pub nodes: usize,
    /// Release binaries.
    pub release: bool,
    /// Against a real control plane.
    pub kube: bool,
    /// Who plays the kubelet (kube mode).
    pub runtime: Runtime,
    /// Kube mode: pods get their manifest addresses.
    pub manifest_addresses: bool,
    /// Kube mode: probes to pods go through each pod's own Service.
    pub via_services: bool,
}

/// The one place the CLI turns its flags into who plays the kubelet:
/// `kube` (the played kubelet's API mode, `None` for file mode) or real
/// nodes (which build the bed's Flannel plugin and, with Palisade, its
/// image).
fn kubelet(
    runtime: Runtime,
    kube: Option<KubeOptions>,
    palisade: bool,
    release: bool,
) -> Result<Kubelet> {
    Ok(match (runtime, kube) {
        (Runtime::Containerd, _) => Kubelet::Containerd(RealNodes {
            flannel_plugin: build_host_bin("testbed", testbed::runtime::flannel::PLUGIN_BINARY)?,
            palisade_image: if palisade {
                Some(crate::e2e_upstream::palisade_image(release)?)
            } else {
                None
            },
            overlay: cmd::workspace_root().join("overlays").join("testbed"),
        }),
        (Runtime::Bed, Some(k)) => Kubelet::PlayedWithApi(k),
        (Runtime::Bed, None) => Kubelet::Played,
    })
}

/// `cargo xtask testbed`: exit 1 if an observation contradicts an
/// expectation of the probe file, 2 on bad input.
pub fn testbed(args: TestbedArgs) -> Result<ExitCode> {
    if args.kube && args.runtime == Runtime::Bed && !args.palisade {
        eprintln!("xtask testbed: --kube with the bed's kubelet runs the agent: --no-palisade needs --runtime containerd");
        return Ok(exit_code(2));
    }
    setup::run()?;
    let bin_dir = build_binaries(args.release)?;
    testbed::install_signal_cleanup().context("cannot install the Ctrl-C cleanup")?;
    let kube = args.kube.then(|| KubeOptions {
        manifest_addresses: args.manifest_addresses,
        via_services: args.via_services,
        ..kube_options()
    });
    let kubelet = kubelet(args.runtime, kube, args.palisade, args.release)?;
    let scenario = Scenario {
        manifests: args.manifests,
        probes: args.probes,
        palisade: args.palisade,
        nodes: args.nodes,
        bin_dir,
    };
    let seen = match testbed::scenario::run(&scenario, &kubelet) {
        Ok(outcome) => {
            for note in &outcome.notes {
                eprintln!("   {note}");
            }
            outcome.observations
        }
        Err(e) => {
            eprintln!("xtask testbed: {e}");
            return Ok(exit_code(e.exit_code()));
        }
    };
    match args.format {
        Format::Json => print!("{}", report::json_lines(&seen)),
        Format::Table => print!("{}", report::table(&seen)),
    }
    Ok(exit_code(i32::from(report::mismatches(&seen) > 0)))
}

fn exit_code(code: i32) -> ExitCode {
    ExitCode::from(u8::try_from(code).unwrap_or(1))
}

/// Kube mode with the repository's install manifests.
pub(crate) fn kube_options() -> KubeOptions {
    KubeOptions {
        install: vec![cmd::workspace_root().join("manifests")],
        ..Default::default()
    }
}

/// One line per distinct dropped connection attempt, as `policy-agent flows`
/// names them.
fn drop_lines(drops: &[FlowRecord]) -> Vec<String> {
    let mut lines: Vec<String> = drops
        .iter()
        .map(|r| {
            let peer = r.peer.clone().unwrap_or_else(|| {
                if r.direction == "ingress" {
                    r.src.clone()
                } else {
                    r.dst.clone()
                }
            });
            let (from, to) = if r.direction == "ingress" {
                (peer, r.pod.clone())
            } else {
                (r.pod.clone(), peer)
            };
            // Which policies isolate the pod (none of their rules matched).
            let by = if r.isolated_by.is_empty() {
                String::new()
            } else {
                format!("; isolated by {}", r.isolated_by.join(", "))
            };
            format!(
                "   {from} -> {to}:{}/{} dropped at {}'s {} ({}{by})",
                r.dport, r.protocol, r.pod, r.direction, r.reason
            )
        })
        .collect();
    lines.sort();
    lines.dedup();
    lines
}

/// An example under examples/: a cluster and probes with expectations.
struct Example {
    name: String,
    cluster: PathBuf,
    probes: PathBuf,
}

fn examples(only: Option<&str>) -> Result<Vec<Example>> {
    let dir = cmd::workspace_root().join("examples");
    let mut found = Vec::new();
    for entry in
        std::fs::read_dir(&dir).with_context(|| format!("cannot list {}", dir.display()))?
    {
        let path = entry?.path();
        let (cluster, probes) = (path.join("cluster.yaml"), path.join("probes.jsonl"));
        let Some(name) = path.file_name().and_then(|n| n.to_str()) else {
            continue;
        };
        if cluster.is_file() && probes.is_file() && only.is_none_or(|o| o == name) {
            found.push(Example {
                name: name.to_string(),
                cluster,
                probes,
            });
        }
    }
    found.sort_by(|a, b| a.name.cmp(&b.name));
    if found.is_empty() {
        bail!(
            "no example{} under {} (each needs cluster.yaml and probes.jsonl)",
            only.map(|o| format!(" named {o:?}")).unwrap_or_default(),
            dir.display()
        );
    }
    Ok(found)
}

/// `cargo xtask demo`: each example's policies applied with kubectl on a
/// Flannel cluster (enforced by nobody), then with Palisade, side by side.
/// With the bed's kubelet, "before" is the plain bridge and "after" two
/// nodes against a real API server; on real nodes (`runtime`
/// `containerd`) both halves are one cluster, Palisade installed between
/// them with `kubectl apply -k`. Exit 1 if, with Palisade, a verdict
/// differs from the example's expectation.
pub fn demo(only: Option<&str>, release: bool, runtime: Runtime) -> Result<ExitCode> {
    setup::run()?;
    let bin_dir = build_binaries(release)?;
    testbed::install_signal_cleanup().context("cannot install the Ctrl-C cleanup")?;
    let (mut probes, mut changed, mut wrong) = (0, 0, 0);
    let list = examples(only)?;
    let kube = KubeOptions {
        policies_later: true,
        ..kube_options()
    };
    let kubelet = kubelet(runtime, Some(kube), true, release)?;
    for ex in &list {
        match runtime {
            Runtime::Bed => println!(
                "\n== {}: BEFORE (plain bridge, as Flannel gives), then two nodes and a real API server with Palisade",
                ex.name
            ),
            Runtime::Containerd => println!(
                "\n== {}: two real nodes (kubelet, containerd, Flannel): the policies applied, BEFORE; Palisade installed, AFTER",
                ex.name
            ),
        }
        let scenario = Scenario {
            manifests: ex.cluster.clone(),
            probes: Some(ex.probes.clone()),
            palisade: true,
            nodes: 2,
            bin_dir: bin_dir.clone(),
        };
        let Demo { before, after } = match testbed::scenario::demo(&scenario, &kubelet) {
            Ok(d) => d,
            Err(e) => {
                eprintln!("xtask demo: {}: {e}", ex.name);
                return Ok(exit_code(e.exit_code()));
            }
        };
        for note in &after.notes {
            println!("   {note}");
        }
        let after_drops = after.drops;
        let after = after.observations;
        println!(
            "   (BEFORE: the policies enforced by nobody, AFTER: Palisade enforcing the policies kubectl applied)"
        );
        print!("{}", report::comparison_table(&before, &after));
        let mismatched: Vec<_> = after
            .iter()
            .filter(|o| o.matches_expectation() == Some(false))
            .collect();
        for o in &mismatched {
            println!("   MISMATCH with Palisade: {} ({})", o.probe, o.detail);
        }
        if runtime == Runtime::Bed {
            println!("   drops the agent reported (policy-agent flows --verdict dropped):");
            for line in drop_lines(&after_drops) {
                println!("{line}");
            }
        }
        probes += after.len();
        // By probe: the plain-bridge half has no kube-proxy, so it leaves
        // the probes to Services out.
        changed += after
            .iter()
            .filter(|a| {
                before
                    .iter()
                    .any(|b| b.probe.key() == a.probe.key() && b.allowed != a.allowed)
            })
            .count();
        wrong += mismatched.len();
    }
    println!(
        "\ndemo: {} examples, {probes} probes, {changed} verdicts changed by the policies, {wrong} mismatches with Palisade",
        list.len()
    );
    Ok(exit_code(i32::from(wrong > 0)))
}

/// `cargo xtask bench`.
pub fn bench(engine: bool, opts: &crate::bench::Options, args: &[String]) -> Result<ExitCode> {
    setup::run()?;
    if engine {
        let mut c = cargo();
        c.args(["bench", "-p", "policy-engine"]);
        if !args.is_empty() {
            c.arg("--").args(args);
        }
        cmd::run(&mut c)?;
        return Ok(ExitCode::SUCCESS);
    }
    let built = cargo_build(true, Some(crate::bench::VERDICT_SWEEP))?;
    let sweep = built
        .bench
        .context("the verdict sweep benchmark was not built")?;
    crate::bench::run(&built.bin_dir, &sweep, opts)?;
    Ok(ExitCode::SUCCESS)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_bin_dir_comes_from_cargo_messages() {
        let messages = r#"{"reason":"compiler-artifact","executable":null}
{"reason":"compiler-artifact","executable":"/t/debug/policy-agent"}
not json
{"reason":"compiler-artifact","executable":"/t/debug/palisade-cni"}
{"reason":"build-finished","success":true}"#;
        assert_eq!(
            bin_dir_from_messages(messages).unwrap(),
            PathBuf::from("/t/debug")
        );
        let partial = r#"{"reason":"compiler-artifact","executable":"/t/debug/palisade-cni"}"#;
        assert!(bin_dir_from_messages(partial).is_err());
    }

    #[test]
    fn the_bench_executable_comes_from_cargo_messages() {
        let messages = r#"{"reason":"compiler-artifact","target":{"name":"policy-agent","kind":["bin"]},"executable":"/t/release/policy-agent"}
{"reason":"compiler-artifact","target":{"name":"verdict_sweep","kind":["bench"]},"executable":"/t/release/deps/verdict_sweep-0a1b"}"#;
        assert_eq!(
            bench_from_messages(messages, "verdict_sweep").unwrap(),
            PathBuf::from("/t/release/deps/verdict_sweep-0a1b")
        );
        assert!(bench_from_messages(messages, "policy-agent").is_err());
    }

    #[test]
    fn examples_need_a_cluster_and_probes() {
        let all = examples(None).unwrap();
        assert!(all.iter().any(|e| e.name == "apod"));
        assert!(all
            .iter()
            .all(|e| e.cluster.is_file() && e.probes.is_file()));
        assert_eq!(examples(Some("apod")).unwrap().len(), 1);
        assert!(examples(Some("no-such-example")).is_err());
    }
}
