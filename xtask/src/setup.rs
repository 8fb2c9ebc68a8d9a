//! `cargo xtask setup`: everything a fresh Debian 12 machine needs to build,
//! load and test Palisade (see shared/toolchain.md for why each version).
//! Each step first checks cheaply whether it is already done, so a second
//! run changes nothing and takes well under a second.

use std::process::Command;

use anyhow::{bail, Result};

use crate::cmd::{self, probe};

/// Debian packages: LLVM 22 for bpf-linker, bpftool for inspecting maps, the
/// reference CNI plugins, iptables and dnsmasq (kube-dns's part) for the
/// test bed; etcd, openssl (the
/// control plane's credentials), and Go 1.19, rsync and reflect2 1.0.2 to
/// build the Kubernetes binaries (see `kube_build`); chromium renders the
/// HTML view in its tests.
pub const APT_PACKAGES: &[&str] = &[
    "llvm-22-dev",
    "libpolly-22-dev",
    "zlib1g-dev",
    "libzstd-dev",
    "bpftool",
    "iproute2",
    "containernetworking-plugins",
    "iptables",
    "dnsmasq-base",
    "etcd-server",
    "openssl",
    "golang-1.19-go",
    "rsync",
    "golang-github-modern-go-reflect2-dev",
    // `cargo xtask bench`: the load tools and the ipset comparator.
    "iperf3",
    "sockperf",
    "ipset",
    // The real node: the container runtime, images made without Docker
    // (umoci, busybox for the test images), and a static libc for `pause`.
    "containerd",
    "runc",
    "umoci",
    "busybox-static",
    "libc6-dev",
    // The static (musl) build of the shipped binaries: ring's C and
    // assembly parts need musl's compiler wrapper.
    "musl-tools",
    // `simulate -o html` is tested in a real headless browser.
    "chromium",
];

/// The nightly that builds the eBPF object (LLVM 22; a newer nightly's LLVM 23
/// cannot be linked by bpf-linker built against Debian's LLVM 22).
pub const EBPF_TOOLCHAIN: &str = "nightly-2026-05-20";

/// bpf-linker's required major.minor.
pub const BPF_LINKER_SERIES: &str = "0.13";

const BPFFS: &str = "/sys/fs/bpf";

/// One thing setup makes sure of.
struct Step {
    name: &'static str,
    /// `Ok(None)` if done; `Ok(Some(what is missing))` otherwise.
    check: fn() -> Result<Option<String>>,
    fix: fn(&str) -> Result<()>,
}

const STEPS: &[Step] = &[
    Step {
        name: "apt packages",
        check: missing_packages,
        fix: install_packages,
    },
    Step {
        name: "rustfmt+clippy",
        check: lint_tools_missing,
        fix: install_lint_tools,
    },
    Step {
        name: "eBPF toolchain",
        check: toolchain_missing,
        fix: install_toolchain,
    },
    Step {
        name: "musl target",
        check: musl_target_missing,
        fix: install_musl_target,
    },
    Step {
        name: "bpf-linker",
        check: bpf_linker_missing,
        fix: install_bpf_linker,
    },
    Step {
        name: "bpffs",
        check: bpffs_missing,
        fix: mount_bpffs,
    },
    Step {
        name: "cargo-nextest",
        check: nextest_missing,
        fix: install_nextest,
    },
    Step {
        name: "cargo-fuzz",
        check: cargo_fuzz_missing,
        fix: install_cargo_fuzz,
    },
    Step {
        name: "kubernetes",
        check: crate::kube_build::missing,
        fix: crate::kube_build::build,
    },
];

/// What building the shipped binaries needs (`cargo xtask image`): the
/// toolchains and packages, not the test bed's Kubernetes or the test tools.
pub const BUILD_STEPS: &[&str] = &[
    "apt packages",
    "eBPF toolchain",
    "musl target",
    "bpf-linker",
];

/// Runs every step that is not done yet.
pub fn run() -> Result<()> {
    run_steps(STEPS.iter())
}

/// Runs the steps named in `names` that are not done yet.
pub fn run_only(names: &[&str]) -> Result<()> {
    run_steps(STEPS.iter().filter(|s| names.contains(&s.name)))
}

fn run_steps<'a>(steps: impl Iterator<Item = &'a Step>) -> Result<()> {
    let mut todo = Vec::new();
    for step in steps {
        match (step.check)()? {
            None => eprintln!("setup: {:<15} ok", step.name),
            Some(missing) => {
                eprintln!("setup: {:<15} missing: {missing}", step.name);
                todo.push((step, missing));
            }
        }
    }
    if todo.is_empty() {
        return Ok(());
    }
    if !is_root() {
        bail!(
            "setup must install {} and needs root: run `sudo -E cargo xtask setup` (or as root)",
            todo.iter()
                .map(|(s, _)| s.name)
                .collect::<Vec<_>>()
                .join(", ")
        );
    }
    for (step, missing) in todo {
        eprintln!("setup: installing {}: {missing}", step.name);
        (step.fix)(&missing)?;
        if let Some(still) = (step.check)()? {
            bail!("setup: {} still missing after install: {still}", step.name);
        }
    }
    eprintln!("setup: done");
    Ok(())
}

/// Whether we run as root.
pub(crate) fn is_root() -> bool {
    probe(Command::new("id").arg("-u")).is_some_and(|uid| uid.trim() == "0")
}

fn missing_packages() -> Result<Option<String>> {
    let out = Command::new("dpkg-query")
        .args(["-W", "-f=${Package} ${Status}\\n"])
        .args(APT_PACKAGES)
        .output();
    // dpkg-query exits 1 when some package is unknown, still listing the others.
    let listed = out
        .map(|o| String::from_utf8_lossy(&o.stdout).into_owned())
        .unwrap_or_default();
    let installed: Vec<&str> = listed
        .lines()
        .filter(|l| l.ends_with("install ok installed"))
        .filter_map(|l| l.split_whitespace().next())
        .map(|p| p.split(':').next().unwrap_or(p))
        .collect();
    let missing: Vec<&str> = APT_PACKAGES
        .iter()
        .copied()
        .filter(|p| !installed.contains(p))
        .collect();
    Ok((!missing.is_empty()).then(|| missing.join(" ")))
}

fn install_packages(missing: &str) -> Result<()> {
    let apt = || {
        let mut c = Command::new("apt-get");
        c.env("DEBIAN_FRONTEND", "noninteractive");
        c
    };
    cmd::run_to_stderr(apt().args(["update", "-q"]))?;
    cmd::run_to_stderr(
        apt()
            .args(["install", "-y", "-q", "--no-install-recommends"])
            .args(missing.split_whitespace()),
    )
}

fn lint_tools_missing() -> Result<Option<String>> {
    let missing: Vec<&str> = ["fmt", "clippy"]
        .into_iter()
        .filter(|tool| probe(cmd::cargo().args([tool, "--version"])).is_none())
        .collect();
    Ok((!missing.is_empty()).then(|| format!("cargo {}", missing.join(", cargo "))))
}

fn install_lint_tools(_: &str) -> Result<()> {
    // For the toolchain that builds user space (the directory's default).
    cmd::run_to_stderr(
        Command::new("rustup")
            .current_dir(cmd::workspace_root())
            .args(["component", "add", "rustfmt", "clippy"]),
    )
}

fn toolchain_missing() -> Result<Option<String>> {
    let listed = probe(Command::new("rustup").args(["toolchain", "list"])).unwrap_or_default();
    if !listed.lines().any(|l| l.starts_with(EBPF_TOOLCHAIN)) {
        return Ok(Some(format!("{EBPF_TOOLCHAIN} with rust-src")));
    }
    let components = probe(Command::new("rustup").args([
        "component",
        "list",
        "--installed",
        "--toolchain",
        EBPF_TOOLCHAIN,
    ]))
    .unwrap_or_default();
    if !components.lines().any(|l| l.starts_with("rust-src")) {
        return Ok(Some(format!("rust-src for {EBPF_TOOLCHAIN}")));
    }
    Ok(None)
}

fn install_toolchain(_: &str) -> Result<()> {
    cmd::run_to_stderr(Command::new("rustup").args([
        "toolchain",
        "install",
        EBPF_TOOLCHAIN,
        "--profile",
        "minimal",
        "--component",
        "rust-src",
    ]))
}

/// The target the shipped binaries are built for: static, so they run on
/// any host's C library (`palisade-cni` runs on the host).
pub const STATIC_TARGET: &str = "x86_64-unknown-linux-musl";

fn musl_target_missing() -> Result<Option<String>> {
    // For the toolchain that builds user space (the directory's default).
    let installed = probe(
        Command::new("rustup")
            .current_dir(cmd::workspace_root())
            .args(["target", "list", "--installed"]),
    )
    .unwrap_or_default();
    Ok((!installed.lines().any(|l| l.trim() == STATIC_TARGET))
        .then(|| format!("rust target {STATIC_TARGET}")))
}

fn install_musl_target(_: &str) -> Result<()> {
    cmd::run_to_stderr(
        Command::new("rustup")
            .current_dir(cmd::workspace_root())
            .args(["target", "add", STATIC_TARGET]),
    )
}

fn bpf_linker_missing() -> Result<Option<String>> {
    let version = probe(Command::new("bpf-linker").arg("--version")).unwrap_or_default();
    let want = format!("bpf-linker {BPF_LINKER_SERIES}.");
    if version.trim_start().starts_with(&want) {
        return Ok(None);
    }
    Ok(Some(if version.is_empty() {
        format!("bpf-linker {BPF_LINKER_SERIES} (not found)")
    } else {
        format!("bpf-linker {BPF_LINKER_SERIES} (found {})", version.trim())
    }))
}

fn install_bpf_linker(_: &str) -> Result<()> {
    // LLVM_PREFIX: the first llvm-config on PATH may be another LLVM.
    // `--features llvm-22`: the default bindings are for another LLVM major.
    cmd::run_to_stderr(
        cmd::cargo()
            .env("LLVM_PREFIX", "/usr/lib/llvm-22")
            .args(["install", "bpf-linker", "--locked", "--force"])
            .args(["--version", &format!("~{BPF_LINKER_SERIES}")])
            .args(["--no-default-features", "--features", "llvm-22"]),
    )
}

fn bpffs_missing() -> Result<Option<String>> {
    let mounts = std::fs::read_to_string("/proc/mounts").unwrap_or_default();
    let mounted = mounts.lines().any(|l| {
        let mut f = l.split_whitespace().skip(1);
        f.next() == Some(BPFFS) && f.next() == Some("bpf")
    });
    Ok((!mounted).then(|| format!("bpf filesystem at {BPFFS}")))
}

fn mount_bpffs(_: &str) -> Result<()> {
    cmd::run_to_stderr(Command::new("mount").args(["-t", "bpf", "bpf", BPFFS]))
}

fn nextest_missing() -> Result<Option<String>> {
    Ok(probe(cmd::cargo().args(["nextest", "--version"]))
        .is_none()
        .then(|| "cargo-nextest".to_string()))
}

fn install_nextest(_: &str) -> Result<()> {
    cmd::run_to_stderr(cmd::cargo().args(["install", "cargo-nextest", "--locked"]))
}

fn cargo_fuzz_missing() -> Result<Option<String>> {
    Ok(probe(cmd::cargo().args(["fuzz", "--version"]))
        .is_none()
        .then(|| "cargo-fuzz".to_string()))
}

/// cargo-fuzz itself builds on stable; the targets it builds need the
/// pinned nightly (`cargo xtask fuzz` asks for it).
fn install_cargo_fuzz(_: &str) -> Result<()> {
    cmd::run_to_stderr(cmd::cargo().args(["install", "cargo-fuzz", "--locked"]))
}
