//! Builds the eBPF object (`policy-ebpf`, bin `palisade-tc`) for the bpf
//! target with the pinned nightly and leaves it in `OUT_DIR`, where
//! `dataplane::kernel` embeds it.
//!
//! `AYA_BUILD_SKIP=1` skips the eBPF build (aya-build honours it); the
//! agent then embeds an empty object and the kernel dataplane fails at load
//! time, while everything else builds on stable alone.

use std::{
    env, fs, io,
    path::{Path, PathBuf},
};

/// Toolchain that builds the eBPF object; `toolchain.md` in the shared
/// folder beside the checkout says why it is pinned by name.
const EBPF_TOOLCHAIN: &str = "nightly-2026-05-20";
const EBPF_PACKAGE: &str = "policy-ebpf";
const EBPF_BIN: &str = "palisade-tc";

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let manifest_dir = PathBuf::from(env::var("CARGO_MANIFEST_DIR")?);
    let workspace = manifest_dir
        .parent()
        .ok_or("policy-agent has no parent directory")?;
    let ebpf_dir = workspace.join(EBPF_PACKAGE);
    let common_dir = workspace.join("policy-common");
    // aya-build watches the eBPF crate; the shared layouts change the
    // object too.
    println!("cargo:rerun-if-changed={}", common_dir.display());

    let skip = env::var("AYA_BUILD_SKIP").is_ok_and(|v| v == "1" || v.eq_ignore_ascii_case("true"));
    if skip {
        let out = PathBuf::from(env::var("OUT_DIR")?).join(EBPF_BIN);
        if !out.exists() {
            fs::write(&out, [])?;
        }
    }
    let out_dir = PathBuf::from(env::var("OUT_DIR")?);
    if let Err(e) = share_ebpf_target_dir(&out_dir) {
        println!("cargo:warning=the eBPF build gets a folder of its own: {e}");
    }
    let ebpf_dir = ebpf_dir.to_str().ok_or("non-UTF-8 workspace path")?;
    aya_build::build_ebpf(
        [aya_build::Package {
            name: EBPF_PACKAGE,
            root_dir: ebpf_dir,
            ..Default::default()
        }],
        aya_build::Toolchain::Custom(EBPF_TOOLCHAIN),
    )?;
    Ok(())
}

/// Every configuration of this crate (clippy, tests, the static musl
/// build, ...) has an `OUT_DIR` of its own, and aya-build gives each its
/// own target folder for the eBPF crate: the same object, `core` built
/// from source each time, about a minute apiece. All of them share one
/// folder beside cargo's own instead (the inner cargo locks it), so only
/// the first builds. Left alone when aya-build's folder already exists.
fn share_ebpf_target_dir(out_dir: &Path) -> io::Result<()> {
    let Some(root) = out_dir
        .ancestors()
        .find(|d| d.join("CACHEDIR.TAG").is_file())
    else {
        return Ok(());
    };
    let link = out_dir.join("aya-build").join("target").join(EBPF_PACKAGE);
    if link.symlink_metadata().is_ok() {
        return Ok(());
    }
    let shared = root.join("palisade-ebpf");
    fs::create_dir_all(&shared)?;
    if let Some(parent) = link.parent() {
        fs::create_dir_all(parent)?;
    }
    std::os::unix::fs::symlink(&shared, &link)
}
