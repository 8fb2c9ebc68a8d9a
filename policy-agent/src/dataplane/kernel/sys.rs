//! The one place that calls `bpf(2)` directly, for the few commands aya
//! has no API for (a map-in-map grace check in [`super::rcu`], and
//! detaching a pinned link at once in [`super::attach`]).

use std::io;
use std::os::fd::{FromRawFd, OwnedFd};

/// Runs `bpf(cmd, attr, size_of::<A>())` and returns what it returned (an
/// fd for the commands that make one).
///
/// # Safety
///
/// `attr` must be a valid prefix of `union bpf_attr` for `cmd`, laid out as
/// the kernel's, and every pointer in it must stay valid for what the
/// command reads or writes until the call returns.
pub(super) unsafe fn bpf<A>(cmd: libc::c_long, attr: &A) -> io::Result<i64> {
    // SAFETY: the caller upholds the contract above; the size passed is
    // the size of `attr`.
    let r = unsafe {
        libc::syscall(
            libc::SYS_bpf,
            cmd,
            attr as *const A,
            std::mem::size_of::<A>(),
        )
    };
    if r < 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(r)
}

/// Takes ownership of the fd a `bpf(2)` command just returned.
pub(super) fn owned_fd(r: i64) -> io::Result<OwnedFd> {
    let raw = i32::try_from(r).map_err(|_| io::Error::other("fd out of range"))?;
    if raw < 0 {
        return Err(io::Error::other("negative fd"));
    }
    // SAFETY: the kernel just returned this fd to us; nothing else owns it.
    Ok(unsafe { OwnedFd::from_raw_fd(raw) })
}
