//! What the kernel must offer before the agent loads anything, checked at
//! start so that a node that cannot run Palisade says which kernel it has
//! and what is missing, instead of an `EPERM` from deep inside a map
//! creation.
//!
//! - **BTF** (`/sys/kernel/btf/vmlinux`, `CONFIG_DEBUG_INFO_BTF`): the
//!   loader relocates the programs against it.
//! - **Kernel 5.8** or newer: the BPF ring buffer carries the verdict
//!   events.
//! - **Memory accounting**: before 5.11 the kernel charges BPF maps to the
//!   process's `RLIMIT_MEMLOCK`, which container runtimes often set to
//!   64 KiB. On such a kernel the agent raises the limit to unlimited
//!   (possible when the runtime's hard limit allows it, or with
//!   `CAP_SYS_RESOURCE`, which the install does not grant) and refuses to
//!   start when it cannot. From 5.11 on maps are charged to the cgroup and
//!   the limit does not matter.
//! - **TCX** (6.6 or newer) only when `--attach-mode tcx` asks for it;
//!   `auto` falls back to tc's netlink interface.
//!
//! Tested on 6.x kernels only; the older branches are exercised by
//! [`check`]'s unit tests on the facts they depend on.

use std::path::Path;

use crate::dataplane::kernel::AttachMode;

/// Where the kernel exposes its own BTF.
pub const VMLINUX_BTF: &str = "/sys/kernel/btf/vmlinux";

/// The oldest kernel with the BPF ring buffer.
pub const MIN_KERNEL: (u32, u32) = (5, 8);
/// The first kernel that charges BPF maps to the cgroup, not to
/// `RLIMIT_MEMLOCK`.
pub const MEMCG_ACCOUNTING: (u32, u32) = (5, 11);
/// The first kernel with TCX links.
pub const TCX: (u32, u32) = (6, 6);

/// What [`check`] looks at.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct KernelFacts {
    /// `uname -r`.
    pub release: String,
    /// Whether [`VMLINUX_BTF`] exists.
    pub btf: bool,
    /// The soft `RLIMIT_MEMLOCK` (`None`: unlimited), after the agent
    /// tried to raise it.
    pub memlock: Option<u64>,
}

/// What a node lacks; each names the kernel and how to fix it.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum Missing {
    /// The release string could not be read as `MAJOR.MINOR`.
    #[error("cannot tell the kernel version from {release:?}")]
    UnknownRelease {
        /// `uname -r`.
        release: String,
    },
    /// Older than [`MIN_KERNEL`].
    #[error("kernel {release} is older than 5.8 and has no BPF ring buffer: Palisade needs 5.8 or newer (5.11 or newer without an unlimited memlock limit)")]
    TooOld {
        /// `uname -r`.
        release: String,
    },
    /// No kernel BTF.
    #[error("kernel {release} exposes no BTF ({VMLINUX_BTF} is missing): Palisade needs a kernel built with CONFIG_DEBUG_INFO_BTF=y")]
    NoBtf {
        /// `uname -r`.
        release: String,
    },
    /// Before 5.11 with a limited memlock the agent could not raise.
    #[error("kernel {release} charges BPF maps to RLIMIT_MEMLOCK (kernels before 5.11), which is limited to {limit} bytes here and cannot be raised: give the container an unlimited memlock limit (the runtime's default ulimits, or the SYS_RESOURCE capability), or use kernel 5.11 or newer")]
    Memlock {
        /// `uname -r`.
        release: String,
        /// The limit in bytes.
        limit: u64,
    },
    /// `--attach-mode tcx` on a kernel without TCX.
    #[error("kernel {release} has no TCX links (6.6 or newer) and --attach-mode tcx asks for them: use --attach-mode auto or netlink")]
    NoTcx {
        /// `uname -r`.
        release: String,
    },
}

/// `MAJOR.MINOR` of a release string (`6.18.0-1-amd64` → `(6, 18)`).
pub fn version(release: &str) -> Option<(u32, u32)> {
    let mut parts = release.split(|c: char| !c.is_ascii_digit());
    let major = parts.next()?.parse().ok()?;
    let minor = parts.next()?.parse().ok()?;
    Some((major, minor))
}

/// Whether a node with `facts` can run the agent in `mode`.
pub fn check(facts: &KernelFacts, mode: AttachMode) -> Result<(), Missing> {
    let release = facts.release.clone();
    let Some(v) = version(&facts.release) else {
        return Err(Missing::UnknownRelease { release });
    };
    if v < MIN_KERNEL {
        return Err(Missing::TooOld { release });
    }
    if !facts.btf {
        return Err(Missing::NoBtf { release });
    }
    if v < MEMCG_ACCOUNTING {
        if let Some(limit) = facts.memlock {
            return Err(Missing::Memlock { release, limit });
        }
    }
    if mode == AttachMode::Tcx && v < TCX {
        return Err(Missing::NoTcx { release });
    }
    Ok(())
}

/// `RLIMIT_MEMLOCK` as (soft, hard).
fn memlock_limits() -> Option<(u64, u64)> {
    let mut limit = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: getrlimit writes the struct it is given.
    let ok = unsafe { libc::getrlimit(libc::RLIMIT_MEMLOCK, &mut limit) } == 0;
    ok.then_some((limit.rlim_cur, limit.rlim_max))
}

fn set_memlock(soft: u64, hard: u64) -> bool {
    let limit = libc::rlimit {
        rlim_cur: soft,
        rlim_max: hard,
    };
    // SAFETY: setrlimit reads the struct it is given.
    unsafe { libc::setrlimit(libc::RLIMIT_MEMLOCK, &limit) == 0 }
}

/// The soft `RLIMIT_MEMLOCK` (`None`: unlimited).
fn memlock() -> Option<u64> {
    let (soft, _) = memlock_limits().unwrap_or((0, 0));
    (soft != libc::RLIM_INFINITY).then_some(soft)
}

/// Raises `RLIMIT_MEMLOCK` to unlimited, or failing that the soft limit to
/// the hard one (no capability needed for that).
fn raise_memlock() {
    if set_memlock(libc::RLIM_INFINITY, libc::RLIM_INFINITY) {
        return;
    }
    if let Some((_, hard)) = memlock_limits() {
        set_memlock(hard, hard);
    }
}

/// Reads this node's facts, raising the memlock limit first on kernels
/// that charge maps to it.
pub fn gather() -> KernelFacts {
    let release = std::fs::read_to_string("/proc/sys/kernel/osrelease")
        .map(|r| r.trim().to_string())
        .unwrap_or_default();
    if version(&release).is_some_and(|v| v < MEMCG_ACCOUNTING) {
        raise_memlock();
    }
    KernelFacts {
        release,
        btf: Path::new(VMLINUX_BTF).exists(),
        memlock: memlock(),
    }
}

/// [`gather`] then [`check`].
pub fn run(mode: AttachMode) -> Result<KernelFacts, Missing> {
    let facts = gather();
    check(&facts, mode)?;
    Ok(facts)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn facts(release: &str, btf: bool, memlock: Option<u64>) -> KernelFacts {
        KernelFacts {
            release: release.into(),
            btf,
            memlock,
        }
    }

    #[test]
    fn versions_parse_from_release_strings() {
        assert_eq!(version("6.18.0-1-amd64"), Some((6, 18)));
        assert_eq!(version("5.10.0"), Some((5, 10)));
        assert_eq!(version("5.4.0-150-generic"), Some((5, 4)));
        assert_eq!(version("linux"), None);
    }

    #[test]
    fn each_missing_feature_names_the_kernel() {
        let auto = AttachMode::Auto;
        assert_eq!(check(&facts("6.18.0", true, Some(65536)), auto), Ok(()));
        assert_eq!(
            check(&facts("6.1.0", true, None), AttachMode::Netlink),
            Ok(())
        );
        assert_eq!(check(&facts("5.10.0", true, None), auto), Ok(()));
        let e = check(&facts("5.10.0-28", true, Some(65536)), auto).unwrap_err();
        assert_eq!(
            e,
            Missing::Memlock {
                release: "5.10.0-28".into(),
                limit: 65536
            }
        );
        assert!(e.to_string().contains("5.10.0-28") && e.to_string().contains("RLIMIT_MEMLOCK"));
        let e = check(&facts("6.18.0", false, None), auto).unwrap_err();
        assert!(matches!(e, Missing::NoBtf { .. }), "{e}");
        assert!(e.to_string().contains("6.18.0") && e.to_string().contains("BTF"));
        let e = check(&facts("5.4.0", true, None), auto).unwrap_err();
        assert!(matches!(e, Missing::TooOld { .. }), "{e}");
        let e = check(&facts("6.1.0", true, None), AttachMode::Tcx).unwrap_err();
        assert!(matches!(e, Missing::NoTcx { .. }), "{e}");
        assert!(check(&facts("6.6.0", true, None), AttachMode::Tcx).is_ok());
    }
}
