//! `cargo xtask image`: Palisade's container image as one archive file,
//! built without Docker, without a registry and without a base image. The
//! image holds the two static release binaries (policy-agent,
//! palisade-cni) and nothing else: no shell, no C library. The
//! DaemonSet's init containers run subcommands of those binaries
//! (`policy-agent mount-bpffs`, `palisade-cni install`).
//!
//! The archive is an OCI image layout with a Docker `manifest.json` beside
//! it ([`oci`]), so each runtime loads the same file:
//!
//! ```text
//! ctr -n k8s.io images import palisade-image.oci.tar        # containerd
//! k3s ctr images import palisade-image.oci.tar              # k3s
//! kind load image-archive palisade-image.oci.tar            # kind
//! docker load -i palisade-image.oci.tar                     # Docker
//! ```
//!
//! The root `Dockerfile` builds the same files for those who build with
//! Docker; a test holds its final stage to [`files`].

mod elf;
mod oci;

pub use elf::require_static;
#[cfg(test)]
mod tests;

use std::path::{Path, PathBuf};
use std::process::ExitCode;

use anyhow::{Context, Result};

use crate::{setup, tasks};

/// The tag the manifests and the kind matrix use.
pub const DEFAULT_TAG: &str = "palisade:dev";

/// Where the image holds the binaries.
pub const IMAGE_BIN_DIR: &str = "/usr/local/bin";

/// The archive's file name, in cargo's target folder unless `--output`.
pub const ARCHIVE_NAME: &str = "palisade-image.oci.tar";

/// The OCI architecture of [`setup::STATIC_TARGET`].
const ARCHITECTURE: &str = "amd64";

/// Every file of the image, by absolute path: [`tasks::BINARIES`] under
/// [`IMAGE_BIN_DIR`].
pub fn files() -> Vec<String> {
    tasks::BINARIES
        .iter()
        .map(|b| format!("{IMAGE_BIN_DIR}/{b}"))
        .collect()
}

/// The image's entrypoint (the DaemonSet names a command for every
/// container anyway).
pub fn entrypoint() -> Vec<String> {
    vec![format!("{IMAGE_BIN_DIR}/policy-agent")]
}

/// `cargo xtask image [--tag TAG] [--output PATH] [--debug]`: builds the
/// release (or, with `debug`, the faster debug) binaries and writes the
/// archive; prints its path (the only line on stdout), so
/// `ARCHIVE=$(cargo xtask image)` works.
pub fn run(tag: &str, output: Option<&Path>, debug: bool) -> Result<ExitCode> {
    setup::run_only(setup::BUILD_STEPS)?;
    let archive = build(tag, output, !debug)?;
    println!("{}", archive.display());
    Ok(ExitCode::SUCCESS)
}

/// Builds the (release or debug) binaries and writes the image archive of
/// `tag` to `output` (default: [`ARCHIVE_NAME`] in cargo's target folder);
/// returns its path.
pub fn build(tag: &str, output: Option<&Path>, release: bool) -> Result<PathBuf> {
    let bin_dir = tasks::build_binaries(release)?;
    let archive = match output {
        Some(path) => path.to_path_buf(),
        None => default_archive(&bin_dir),
    };
    write_archive(&bin_dir, tag, &archive)?;
    eprintln!(
        "image {} written to {}",
        oci::Reference::parse(tag)?.full(),
        archive.display()
    );
    Ok(archive)
}

/// cargo's target folder is two levels above `<target>/<triple>/release`.
fn default_archive(bin_dir: &Path) -> PathBuf {
    bin_dir
        .ancestors()
        .nth(2)
        .unwrap_or(bin_dir)
        .join(ARCHIVE_NAME)
}

/// Writes the image of [`tasks::BINARIES`] in `bin_dir`, named `tag`, to
/// `archive` (through a temporary file and a rename). Refuses a binary
/// that is not static.
pub fn write_archive(bin_dir: &Path, tag: &str, archive: &Path) -> Result<()> {
    let reference = oci::Reference::parse(tag)?;
    let mut files = Vec::new();
    for (bin, path) in tasks::BINARIES.iter().zip(self::files()) {
        let source = bin_dir.join(bin);
        let data =
            std::fs::read(&source).with_context(|| format!("cannot read {}", source.display()))?;
        elf::require_static(&data).with_context(|| format!("{}", source.display()))?;
        files.push(oci::File {
            path,
            mode: 0o755,
            data,
        });
    }
    let bytes = oci::archive(&oci::Image {
        reference,
        files,
        entrypoint: entrypoint(),
        env: vec!["PATH=/usr/local/bin:/usr/bin:/bin".to_string()],
        architecture: ARCHITECTURE.to_string(),
    })?;
    if let Some(parent) = archive.parent().filter(|p| !p.as_os_str().is_empty()) {
        std::fs::create_dir_all(parent)
            .with_context(|| format!("cannot create {}", parent.display()))?;
    }
    let partial = archive.with_extension("tar.partial");
    std::fs::write(&partial, &bytes)
        .with_context(|| format!("cannot write {}", partial.display()))?;
    std::fs::rename(&partial, archive)
        .with_context(|| format!("cannot rename to {}", archive.display()))?;
    Ok(())
}
