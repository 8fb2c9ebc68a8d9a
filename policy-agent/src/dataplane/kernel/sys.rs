//! The one place that calls `bpf(2)` directly, for the few commands aya
//! has no API for (a map-in-map grace check in [`super::rcu`], detaching
//! a pinned link at once in [`super::attach`], the empty classifier
//! benchmarks measure against in [`super::testrun`], and the maps of a
//! pinned program read without `CAP_SYS_ADMIN`, [`prog_map_ids`]).

use std::io;
use std::os::fd::{AsRawFd, BorrowedFd, FromRawFd, OwnedFd};

/// `BPF_OBJ_GET_INFO_BY_FD`.
const BPF_OBJ_GET_INFO_BY_FD: libc::c_long = 15;

/// The head of `struct bpf_prog_info`, up to its map ids: the kernel
/// copies no more than the length it is given.
#[repr(C)]
#[derive(Default)]
struct ProgInfoHead {
    prog_type: u32,
    id: u32,
    tag: [u8; 8],
    jited_prog_len: u32,
    xlated_prog_len: u32,
    jited_prog_insns: u64,
    xlated_prog_insns: u64,
    load_time: u64,
    created_by_uid: u32,
    nr_map_ids: u32,
    map_ids: u64,
}

/// The `info` member of `union bpf_attr`.
#[repr(C)]
struct InfoAttr {
    bpf_fd: u32,
    info_len: u32,
    info: u64,
}

/// The ids of the maps the program behind `prog` uses, read through that
/// descriptor. aya's `ProgramInfo::map_ids` opens the program again by
/// its id, which takes `CAP_SYS_ADMIN`: the DaemonSet's agent has
/// `CAP_BPF` only, and would never take its pinned programs over.
pub(super) fn prog_map_ids(prog: BorrowedFd<'_>) -> io::Result<Vec<u32>> {
    let mut ids: Vec<u32> = Vec::new();
    // Twice: the count, then the ids (a program's maps never change).
    for _ in 0..2 {
        let mut info = ProgInfoHead {
            nr_map_ids: u32::try_from(ids.len()).map_err(io::Error::other)?,
            map_ids: ids.as_mut_ptr() as u64,
            ..ProgInfoHead::default()
        };
        let attr = InfoAttr {
            bpf_fd: u32::try_from(prog.as_raw_fd()).map_err(io::Error::other)?,
            info_len: std::mem::size_of::<ProgInfoHead>() as u32,
            info: (&mut info as *mut ProgInfoHead) as u64,
        };
        // SAFETY: `attr` is the `info` member of `union bpf_attr`; the
        // kernel writes at most `info_len` bytes into `info` and at most
        // `nr_map_ids` ids into `ids`, both alive until the call returns.
        unsafe { bpf(BPF_OBJ_GET_INFO_BY_FD, &attr) }?;
        let count = info.nr_map_ids as usize;
        if count <= ids.len() {
            ids.truncate(count);
            return Ok(ids);
        }
        ids = vec![0; count];
    }
    Err(io::Error::other("the program's map count changed"))
}

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
