//! `policy-agent mount-bpffs`: the DaemonSet's privileged init container.
//! Mounts the BPF filesystem at a folder unless one is already there, so
//! pinned maps and links outlive the agent. It replaces a shell one-liner
//! (`grep ... /proc/mounts || mount -t bpf ...`), so the image needs no
//! shell, no grep and no mount binary: two static executables only.

use std::path::{Path, PathBuf};

use nix::mount::MsFlags;
use nix::sys::statfs::{statfs, BPF_FS_MAGIC};

/// Why the BPF filesystem could not be checked or mounted.
#[derive(Debug, thiserror::Error)]
pub enum BpffsError {
    /// `statfs(2)` on the folder failed (it does not exist, or no access).
    #[error("cannot inspect {path}: {source}")]
    Inspect {
        /// The folder.
        path: PathBuf,
        /// The errno.
        #[source]
        source: nix::Error,
    },
    /// `mount(2)` failed (no CAP_SYS_ADMIN, or not a folder).
    #[error("cannot mount bpffs at {path}: {source}")]
    Mount {
        /// The folder.
        path: PathBuf,
        /// The errno.
        #[source]
        source: nix::Error,
    },
}

/// What [`ensure_mounted`] found or did.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Outcome {
    /// A BPF filesystem was already mounted there: nothing done.
    AlreadyMounted,
    /// It was not: one was mounted.
    Mounted,
}

/// Whether `path` is the root of (or inside) a BPF filesystem.
pub fn is_bpffs(path: &Path) -> Result<bool, BpffsError> {
    let fs = statfs(path).map_err(|source| BpffsError::Inspect {
        path: path.to_path_buf(),
        source,
    })?;
    Ok(fs.filesystem_type() == BPF_FS_MAGIC)
}

/// Mounts a BPF filesystem at `path` unless `path` already is one.
/// Idempotent: a second call finds the first one's mount and does nothing.
pub fn ensure_mounted(path: &Path) -> Result<Outcome, BpffsError> {
    if is_bpffs(path)? {
        return Ok(Outcome::AlreadyMounted);
    }
    nix::mount::mount(
        Some("bpf"),
        path,
        Some("bpf"),
        MsFlags::empty(),
        None::<&str>,
    )
    .map_err(|source| BpffsError::Mount {
        path: path.to_path_buf(),
        source,
    })?;
    Ok(Outcome::Mounted)
}
