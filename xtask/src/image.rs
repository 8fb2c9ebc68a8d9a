//! `cargo xtask image`: builds the container image of the root `Dockerfile`
//! (policy-agent and palisade-cni) where a Docker engine exists, and says
//! exactly what is missing where it does not.

use std::process::{Command, ExitCode};

use anyhow::Result;

use crate::cmd;
use crate::prereq::{self, Tool};

/// The tag the manifests and the kind matrix use.
pub const DEFAULT_TAG: &str = "palisade:dev";

/// `cargo xtask image --tag TAG`.
pub fn run(tag: &str) -> Result<ExitCode> {
    prereq::require("cargo xtask image", &[Tool::Docker])?;
    build(tag)?;
    Ok(ExitCode::SUCCESS)
}

/// `docker build -t tag` on the workspace root (docker already checked).
pub fn build(tag: &str) -> Result<()> {
    let root = cmd::workspace_root();
    cmd::run(
        Command::new("docker")
            .arg("build")
            .arg("-t")
            .arg(tag)
            .arg(&root),
    )
}

#[cfg(test)]
mod tests {
    use crate::setup;

    fn dockerfile() -> String {
        std::fs::read_to_string(crate::cmd::workspace_root().join("Dockerfile")).unwrap()
    }

    /// The value of `ARG name=value` in the Dockerfile.
    fn arg(text: &str, name: &str) -> String {
        let prefix = format!("ARG {name}=");
        text.lines()
            .find_map(|l| l.strip_prefix(&prefix))
            .unwrap_or_else(|| panic!("Dockerfile has no ARG {name}"))
            .trim()
            .to_string()
    }

    #[test]
    fn the_image_builds_with_the_toolchains_setup_pins() {
        let text = dockerfile();
        assert_eq!(arg(&text, "EBPF_TOOLCHAIN"), setup::EBPF_TOOLCHAIN);
        assert_eq!(arg(&text, "BPF_LINKER_SERIES"), setup::BPF_LINKER_SERIES);
        let workspace =
            std::fs::read_to_string(crate::cmd::workspace_root().join("Cargo.toml")).unwrap();
        let rust_version = workspace
            .lines()
            .find_map(|l| l.strip_prefix("rust-version = "))
            .unwrap()
            .trim_matches('"')
            .to_string();
        assert!(
            arg(&text, "RUST_VERSION").starts_with(&format!("{rust_version}.")),
            "Dockerfile's RUST_VERSION is not the workspace's rust-version {rust_version}"
        );
        // The LLVM packages bpf-linker links against, as setup installs them.
        for pkg in setup::APT_PACKAGES.iter().filter(|p| p.contains("-22-")) {
            assert!(text.contains(pkg), "Dockerfile does not install {pkg}");
        }
    }

    #[test]
    fn the_final_image_holds_both_binaries_and_no_toolchain() {
        let text = dockerfile();
        let stages: Vec<&str> = text.split("\nFROM ").collect();
        assert_eq!(stages.len(), 3, "two stages expected: build and final");
        let last = stages[2];
        assert!(last.starts_with("debian:"), "final stage: {last}");
        for bin in crate::tasks::BINARIES {
            assert!(
                last.contains(&format!("/out/{bin}")),
                "final stage lacks {bin}"
            );
        }
        assert!(!last.contains("cargo") && !last.contains("rustup"));
        // The init containers' shell commands need sh, grep and mount: the
        // slim Debian image has them, a distroless one would not.
        assert!(last.contains("-slim"));
    }
}
