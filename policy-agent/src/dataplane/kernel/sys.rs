//! The one place that calls `bpf(2)` directly, for the few commands aya
//! has no API for (a map-in-map grace check in [`super::rcu`], detaching
//! a pinned link at once in [`super::attach`], and the empty classifier
//! benchmarks measure against in [`super::testrun`]).

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
    // SAFETY: the caller upholds the contract above; for these commands
    // the kernel only reads `attr`.
    unsafe { raw(cmd, (attr as *const A).cast(), std::mem::size_of::<A>()) }
}

/// [`bpf`] for commands that write results back into `attr` (test runs).
///
/// # Safety
///
/// As for [`bpf`].
pub(super) unsafe fn bpf_mut<A>(cmd: libc::c_long, attr: &mut A) -> io::Result<i64> {
    // SAFETY: as for `bpf`; the kernel writes only inside `attr`, which is
    // borrowed mutably for the call.
    unsafe {
        raw(
            cmd,
            (attr as *mut A).cast_const().cast(),
            std::mem::size_of::<A>(),
        )
    }
}

/// `bpf(cmd, attr, size)`.
///
/// # Safety
///
/// As for [`bpf`], with `size` the size of what `attr` points at.
unsafe fn raw(cmd: libc::c_long, attr: *const libc::c_void, size: usize) -> io::Result<i64> {
    // SAFETY: the callers uphold the contract of `bpf`.
    let r = unsafe { libc::syscall(libc::SYS_bpf, cmd, attr, size) };
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
