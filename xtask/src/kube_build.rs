//! The Kubernetes 1.20.2 binaries the test bed runs, built once from
//! Debian's `kubernetes` source package (the only full Kubernetes source in
//! the archive) into a cache outside the repository
//! (`testbed::controlplane::kube_bin_dir()`), plus Debian's 1.20 kubectl
//! extracted from `kubernetes-client` (not installed: it conflicts with
//! other kubectl packages a machine may have):
//!
//! - the control plane: kube-apiserver, kube-controller-manager,
//!   kube-scheduler, and kube-proxy for each node;
//! - the real node: kubelet, and `pause` (the sandbox image's only file,
//!   built static from the tree's `build/pause`);
//! - the upstream e2e suite: `e2e.test`, `ginkgo`, and `agnhost` (static,
//!   as upstream's image build makes it) with porter's test certificate.
//!
//! About 25 minutes of both cores the first time; a later setup finds the
//! cache and does nothing. The binaries are built in a scratch folder and
//! copied into a staging folder beside the cache, which is renamed into
//! place only when all four are there: a failed build names its step and
//! leaves no half-written cache.

use std::path::{Path, PathBuf};
use std::process::Command;

use anyhow::{anyhow, Context, Result};

use crate::cmd;

/// The binaries the cache holds.
pub const BINARIES: &[&str] = &[
    "kube-apiserver",
    "kube-controller-manager",
    "kube-scheduler",
    "kube-proxy",
    "kubelet",
    "kubectl",
    "e2e.test",
    "ginkgo",
    "agnhost",
    "pause",
    "localhost.crt",
    "localhost.key",
];

/// What `make WHAT=...` builds into `_output/bin` (besides agnhost, which
/// needs its own static build).
const MADE: &[&str] = &[
    "kube-apiserver",
    "kube-controller-manager",
    "kube-scheduler",
    "kube-proxy",
    "kubelet",
    "e2e.test",
    "ginkgo",
];

/// The Debian suite whose `kubernetes` source is the full 1.20.2 tree.
const SOURCE_SUITE: &str = "bookworm";
/// Debian's Go that builds it offline.
const GO_BIN: &str = "/usr/lib/go-1.19/bin";
/// Debian's reflect2 1.0.2: the vendored 1.0.1 panics under Go >= 1.18 on
/// the first map-typed JSON field (the API server then answers every
/// NetworkPolicy POST with an empty reply).
const REFLECT2: &str = "/usr/share/gocode/src/github.com/modern-go/reflect2";
const VENDORED_REFLECT2: &str = "vendor/github.com/modern-go/reflect2";
/// What `make WHAT=...` builds.
const TARGETS: &str = "cmd/kube-apiserver cmd/kube-proxy cmd/kube-controller-manager \
cmd/kube-scheduler cmd/kubelet test/e2e/e2e.test vendor/github.com/onsi/ginkgo/ginkgo";
/// porter's test certificate, which agnhost's image carries at its root.
const PORTER_DIR: &str = "test/images/agnhost/porter";

/// `Ok(None)` when the cache holds every binary, else what is missing.
pub fn missing() -> Result<Option<String>> {
    let dir = testbed::controlplane::kube_bin_dir();
    let absent: Vec<&str> = BINARIES
        .iter()
        .copied()
        .filter(|b| !dir.join(b).is_file())
        .collect();
    Ok((!absent.is_empty()).then(|| {
        format!(
            "{} in {} (built once from Debian's kubernetes source, ~25 min)",
            absent.join(", "),
            dir.display()
        )
    }))
}

/// Runs step `name`: prints it (on stderr, like every setup step), and
/// names it in the error.
fn step(name: &str, f: impl FnOnce() -> Result<()>) -> Result<()> {
    eprintln!("setup: kubernetes: {name}");
    f().with_context(|| format!("building the Kubernetes binaries: step {name:?} failed"))
}

/// The machine's Debian archive address (from its own apt sources), for
/// the private source list.
fn debian_uri() -> Result<String> {
    let deb822 =
        std::fs::read_to_string("/etc/apt/sources.list.d/debian.sources").unwrap_or_default();
    if let Some(uri) = deb822
        .lines()
        .find_map(|l| l.strip_prefix("URIs:"))
        .and_then(|u| u.split_whitespace().next())
    {
        return Ok(uri.to_string());
    }
    let list = std::fs::read_to_string("/etc/apt/sources.list").unwrap_or_default();
    list.lines()
        .map(str::trim)
        .filter(|l| l.starts_with("deb "))
        .find_map(|l| {
            l.split_whitespace()
                .find(|w| w.starts_with("http://") || w.starts_with("https://"))
        })
        .map(str::to_string)
        .ok_or_else(|| anyhow!("no Debian archive in the machine's apt sources"))
}

fn only_file(dir: &Path, prefix: &str, suffix: &str) -> Result<PathBuf> {
    std::fs::read_dir(dir)?
        .filter_map(|e| e.ok().map(|e| e.path()))
        .find(|p| {
            p.file_name()
                .and_then(|n| n.to_str())
                .is_some_and(|n| n.starts_with(prefix) && n.ends_with(suffix))
        })
        .ok_or_else(|| anyhow!("no {prefix}*{suffix} in {}", dir.display()))
}

/// Builds and installs the cache (see the module doc).
pub fn build(_: &str) -> Result<()> {
    let cache = testbed::controlplane::kube_bin_dir();
    let parent = cache
        .parent()
        .ok_or_else(|| anyhow!("{} has no parent folder", cache.display()))?
        .to_path_buf();
    std::fs::create_dir_all(&parent).with_context(|| format!("creating {}", parent.display()))?;
    let pid = std::process::id();
    let work = std::env::temp_dir().join(format!("palisade-kube-build-{pid}"));
    let staging = parent.join(format!(".bin.staging-{pid}"));
    let result = build_in(&work, &staging, &cache);
    // Scratch and staging go, whatever happened; the cache is either the
    // renamed staging folder or untouched.
    let _ = std::fs::remove_dir_all(&work);
    let _ = std::fs::remove_dir_all(&staging);
    result
}

fn build_in(work: &Path, staging: &Path, cache: &Path) -> Result<()> {
    let _ = std::fs::remove_dir_all(work);
    std::fs::create_dir_all(work.join("apt/lists/partial"))?;
    std::fs::create_dir_all(work.join("parts"))?;
    let apt = |args: &[&str]| {
        let mut c = Command::new("apt-get");
        c.env("DEBIAN_FRONTEND", "noninteractive")
            .current_dir(work)
            .args(args);
        c
    };
    step("download kubectl (kubernetes-client)", || {
        cmd::run_to_stderr(&mut apt(&["download", "-q", "kubernetes-client"]))?;
        let deb = only_file(work, "kubernetes-client_", ".deb")?;
        cmd::run_to_stderr(
            Command::new("dpkg")
                .arg("-x")
                .arg(&deb)
                .arg(work.join("kubectl")),
        )
    })?;
    let private = [
        "-o".to_string(),
        "Dir::Etc::SourceList=/dev/null".into(),
        "-o".into(),
        format!("Dir::Etc::SourceParts={}", work.join("parts").display()),
        "-o".into(),
        format!("Dir::State::Lists={}", work.join("apt/lists").display()),
    ];
    step("download the kubernetes source package", || {
        let sources = format!(
            "Types: deb-src\nURIs: {}\nSuites: {SOURCE_SUITE}\nComponents: main\nSigned-By: /usr/share/keyrings/debian-archive-keyring.gpg\n",
            debian_uri()?
        );
        std::fs::write(work.join("parts/kubernetes-src.sources"), sources)?;
        let private: Vec<&str> = private.iter().map(String::as_str).collect();
        let mut update = private.clone();
        update.extend(["update", "-q"]);
        cmd::run_to_stderr(&mut apt(&update))?;
        let mut source = private;
        source.extend(["source", "--download-only", "-q", "kubernetes"]);
        cmd::run_to_stderr(&mut apt(&source))
    })?;
    let src = work.join("src");
    step("unpack the source", || {
        let tarball = only_file(work, "kubernetes_", ".orig.tar.gz")?;
        std::fs::create_dir_all(&src)?;
        cmd::run_to_stderr(
            Command::new("tar")
                .arg("-xzf")
                .arg(&tarball)
                .arg("-C")
                .arg(&src)
                .arg("--strip-components=1"),
        )
    })?;
    step("swap the vendored reflect2 for Debian's 1.0.2", || {
        let vendored = src.join(VENDORED_REFLECT2);
        std::fs::remove_dir_all(&vendored)
            .with_context(|| format!("removing {}", vendored.display()))?;
        cmd::run_to_stderr(Command::new("cp").arg("-r").arg(REFLECT2).arg(&vendored))
    })?;
    let path = format!(
        "{GO_BIN}:{}",
        std::env::var("PATH").unwrap_or_else(|_| "/usr/bin:/bin".into())
    );
    let make = |args: &[&str]| {
        let mut c = Command::new("make");
        c.current_dir(&src)
            .env("PATH", &path)
            .env("GOPROXY", "off")
            .env_remove("GOFLAGS")
            .args(args);
        c
    };
    step("make gen_openapi", || {
        cmd::run_to_stderr(&mut make(&["gen_openapi"]))
    })?;
    step(&format!("make WHAT=\"{TARGETS}\""), || {
        cmd::run_to_stderr(&mut make(&[&format!("WHAT={TARGETS}")]))
    })?;
    // GOPATH mode, CGO off: a plain module-mode build fails under Go 1.19,
    // and the busybox image has no glibc.
    step("make WHAT=test/images/agnhost (static)", || {
        cmd::run_to_stderr(&mut make(&[
            "WHAT=test/images/agnhost",
            "KUBE_STATIC_OVERRIDES=agnhost",
        ]))
    })?;
    step("gcc -static build/pause", || {
        cmd::run_to_stderr(
            Command::new("gcc")
                .current_dir(&src)
                .args([
                    "-Os",
                    "-Wall",
                    "-Werror",
                    "-static",
                    "-DVERSION=v3.4-palisade",
                ])
                .args(["-o", "_output/bin/pause", "build/pause/linux/pause.c"]),
        )?;
        cmd::run_to_stderr(Command::new("strip").arg(src.join("_output/bin/pause")))
    })?;
    step("install into the cache", || {
        let _ = std::fs::remove_dir_all(staging);
        std::fs::create_dir_all(staging)?;
        for bin in MADE.iter().chain(&["agnhost", "pause"]) {
            std::fs::copy(src.join("_output/bin").join(bin), staging.join(bin))
                .with_context(|| format!("copying {bin}"))?;
        }
        for file in ["localhost.crt", "localhost.key"] {
            std::fs::copy(src.join(PORTER_DIR).join(file), staging.join(file))
                .with_context(|| format!("copying {file}"))?;
        }
        std::fs::copy(
            work.join("kubectl/usr/bin/kubectl"),
            staging.join("kubectl"),
        )
        .context("copying kubectl")?;
        // An older cache (fewer binaries) is replaced whole.
        if cache.exists() {
            let old = cache.with_extension(format!("old-{}", std::process::id()));
            std::fs::rename(cache, &old)
                .with_context(|| format!("moving the old {} aside", cache.display()))?;
            let _ = std::fs::remove_dir_all(&old);
        }
        std::fs::rename(staging, cache)
            .with_context(|| format!("renaming {} to {}", staging.display(), cache.display()))
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_failed_step_is_named() {
        let err = step("unpack the source", || anyhow::bail!("tar failed")).unwrap_err();
        let text = format!("{err:#}");
        assert!(text.contains("step \"unpack the source\" failed"), "{text}");
        assert!(text.contains("tar failed"), "{text}");
    }

    #[test]
    fn the_cache_lists_every_made_binary_and_kubectl() {
        for bin in MADE {
            assert!(BINARIES.contains(bin), "{bin}");
            let target = TARGETS.split_whitespace().any(|t| t.ends_with(bin));
            assert!(target, "{bin} is not among the make targets");
        }
        assert!(BINARIES.contains(&"kubectl"));
    }
}
