//! Waiting for an RCU grace period from user space.
//!
//! tc programs run inside an RCU read-side critical section, so once a
//! grace period has passed after the generation flip, no program can still
//! be reading the generation the flip left: writing it is then invisible to
//! packets. User space has no direct `synchronize_rcu()`, but the kernel
//! calls it before returning from a successful `BPF_MAP_UPDATE_ELEM` on a
//! map-in-map (`maybe_wait_bpf_programs` in `kernel/bpf/syscall.c`), so
//! that user space knows no program still uses the old inner map.
//! [`GraceWaiter`] keeps a private one-slot `BPF_MAP_TYPE_ARRAY_OF_MAPS`
//! (not pinned, not part of the eBPF object, used by no program) and
//! stores the same inner map into it to wait.
//!
//! A grace period costs milliseconds (about 12 ms on average on the test
//! machines, over 100 ms at worst), so the writer does not wait for it
//! inline: [`GraceWaiter::start`] begins one on a thread of its own right
//! after a flip, and the next write only joins it, by which time it has
//! usually passed (a CNI ADD no longer pays one).

use std::{
    io,
    os::fd::{AsRawFd, OwnedFd},
    sync::Arc,
    thread::JoinHandle,
    time::{Duration, Instant},
};

use super::{kernel_error, DataplaneError};

/// How long [`GraceWaiter`] sleeps when the kernel refuses map-in-maps: far
/// above a grace period on an idle system (a few milliseconds), and
/// conservative rather than exact.
pub const FALLBACK_SLEEP: Duration = Duration::from_millis(50);

/// `BPF_MAP_CREATE` command.
const BPF_MAP_CREATE: libc::c_long = 0;
/// `BPF_MAP_UPDATE_ELEM` command.
const BPF_MAP_UPDATE_ELEM: libc::c_long = 2;
/// `BPF_MAP_TYPE_ARRAY`.
const BPF_MAP_TYPE_ARRAY: u32 = 2;
/// `BPF_MAP_TYPE_ARRAY_OF_MAPS`.
const BPF_MAP_TYPE_ARRAY_OF_MAPS: u32 = 12;
/// `BPF_ANY` update flag.
const BPF_ANY: u64 = 0;

/// The `BPF_MAP_CREATE` part of `union bpf_attr`, up to and including
/// `map_name` (the kernel zero-fills what follows the size we pass).
#[repr(C)]
#[derive(Default)]
struct MapCreateAttr {
    map_type: u32,
    key_size: u32,
    value_size: u32,
    max_entries: u32,
    map_flags: u32,
    inner_map_fd: u32,
    numa_node: u32,
    map_name: [u8; 16],
}

/// The `BPF_MAP_*_ELEM` part of `union bpf_attr`.
#[repr(C)]
struct MapElemAttr {
    map_fd: u32,
    /// Padding before the 8-byte aligned `key` (zero).
    _pad: u32,
    key: u64,
    value: u64,
    flags: u64,
}

/// Waits for RCU grace periods (see the module documentation).
#[derive(Debug)]
pub struct GraceWaiter {
    how: Arc<How>,
}

/// A grace period begun by [`GraceWaiter::start`]; [`PendingGrace::wait`]
/// returns once it has passed.
#[derive(Debug)]
pub struct PendingGrace {
    run: Run,
}

#[derive(Debug)]
enum Run {
    /// On a thread of its own.
    Thread(JoinHandle<Result<Duration, DataplaneError>>),
    /// No thread could be started: waited for when joined.
    Inline(Arc<How>),
}

impl PendingGrace {
    /// Blocks until the grace period has passed; returns how long this
    /// call blocked. Errors as [`GraceWaiter::wait`] (after sleeping).
    pub fn wait(self) -> Result<Duration, DataplaneError> {
        let start = Instant::now();
        match self.run {
            Run::Thread(handle) => match handle.join() {
                Ok(r) => r.map(|_| start.elapsed()),
                Err(_) => {
                    std::thread::sleep(FALLBACK_SLEEP);
                    Err(kernel_error(
                        "grace-period thread",
                        "panicked (slept instead)",
                    ))
                }
            },
            Run::Inline(how) => how.wait(),
        }
    }
}

#[derive(Debug)]
enum How {
    /// Outer map-in-map and its inner map.
    MapInMap { outer: OwnedFd, inner: OwnedFd },
    /// The kernel refused the map-in-map: sleep instead.
    Sleep(Duration),
}

impl GraceWaiter {
    /// A waiter using a private map-in-map, or sleeping
    /// [`FALLBACK_SLEEP`] if the kernel refuses to create one (logged).
    pub fn new() -> Self {
        match Self::map_in_map() {
            Ok(w) => w,
            Err(e) => {
                tracing::warn!(
                    error = %e,
                    sleep = ?FALLBACK_SLEEP,
                    "cannot create a map-in-map to wait for RCU grace periods: sleeping instead before reusing a generation"
                );
                Self::sleeping(FALLBACK_SLEEP)
            }
        }
    }

    /// A waiter using a private map-in-map; fails if the kernel refuses
    /// to create it.
    pub fn map_in_map() -> Result<Self, DataplaneError> {
        let inner = create_map(&MapCreateAttr {
            map_type: BPF_MAP_TYPE_ARRAY,
            key_size: 4,
            value_size: 4,
            max_entries: 1,
            map_name: map_name(b"palisade_gp_in"),
            ..MapCreateAttr::default()
        })
        .map_err(|e| kernel_error("creating the grace-period inner map", e))?;
        let outer = create_map(&MapCreateAttr {
            map_type: BPF_MAP_TYPE_ARRAY_OF_MAPS,
            key_size: 4,
            value_size: 4,
            max_entries: 1,
            inner_map_fd: fd_u32(&inner),
            map_name: map_name(b"palisade_gp"),
            ..MapCreateAttr::default()
        })
        .map_err(|e| kernel_error("creating the grace-period map-in-map", e))?;
        Ok(Self {
            how: Arc::new(How::MapInMap { outer, inner }),
        })
    }

    /// A waiter that sleeps `interval` instead of asking the kernel.
    pub fn sleeping(interval: Duration) -> Self {
        Self {
            how: Arc::new(How::Sleep(interval)),
        }
    }

    /// Whether this waiter asks the kernel (rather than sleeping).
    pub fn uses_kernel(&self) -> bool {
        matches!(*self.how, How::MapInMap { .. })
    }

    /// Begins waiting for a grace period in the background: it passes
    /// after this call began. If no thread can be started, the wait
    /// happens when [`PendingGrace::wait`] is called, which is later and so
    /// still correct.
    pub fn start(&self) -> PendingGrace {
        let how = self.how.clone();
        let run = match std::thread::Builder::new()
            .name("palisade-rcu".into())
            .spawn(move || how.wait())
        {
            Ok(handle) => Run::Thread(handle),
            Err(e) => {
                tracing::warn!(error = %e, "cannot start a grace-period thread; waiting inline");
                Run::Inline(self.how.clone())
            }
        };
        PendingGrace { run }
    }

    /// Returns once an RCU grace period has passed since the call began
    /// (every BPF program running then has finished); returns the time it
    /// took. On a failed update it sleeps [`FALLBACK_SLEEP`] before
    /// reporting the error, so a caller may go on either way.
    pub fn wait(&self) -> Result<Duration, DataplaneError> {
        self.how.wait()
    }
}

impl How {
    fn wait(&self) -> Result<Duration, DataplaneError> {
        let start = Instant::now();
        match self {
            How::Sleep(d) => std::thread::sleep(*d),
            How::MapInMap { outer, inner } => {
                if let Err(e) = update_u32(outer, 0, fd_u32(inner)) {
                    std::thread::sleep(FALLBACK_SLEEP);
                    return Err(kernel_error(
                        "updating the grace-period map-in-map (slept instead)",
                        e,
                    ));
                }
            }
        }
        Ok(start.elapsed())
    }
}

impl Default for GraceWaiter {
    fn default() -> Self {
        Self::new()
    }
}

/// `fd` as the kernel's `__u32` fd fields take it (a valid fd is ≥ 0).
fn fd_u32(fd: &OwnedFd) -> u32 {
    fd.as_raw_fd() as u32
}

/// A NUL-padded map name (at most 15 bytes are used).
fn map_name(name: &[u8]) -> [u8; 16] {
    let mut out = [0u8; 16];
    let n = name.len().min(15);
    out[..n].copy_from_slice(&name[..n]);
    out
}

/// Runs `BPF_MAP_UPDATE_ELEM` (`BPF_ANY`) storing `value` at `key` in
/// `map`, whose keys and values are `u32`s.
fn update_u32(map: &OwnedFd, key: u32, value: u32) -> io::Result<()> {
    let attr = MapElemAttr {
        map_fd: fd_u32(map),
        _pad: 0,
        key: &key as *const u32 as u64,
        value: &value as *const u32 as u64,
        flags: BPF_ANY,
    };
    // SAFETY: `attr` is a valid `bpf_attr` prefix for BPF_MAP_UPDATE_ELEM,
    // its pointers point at `key` and `value`, which outlive the call. The
    // kernel only reads them.
    unsafe { super::sys::bpf(BPF_MAP_UPDATE_ELEM, &attr) }.map(drop)
}

/// Runs `BPF_MAP_CREATE` with `attr`.
fn create_map(attr: &MapCreateAttr) -> io::Result<OwnedFd> {
    // SAFETY: `attr` is a valid `bpf_attr` prefix for BPF_MAP_CREATE (no
    // pointers in it).
    let r = unsafe { super::sys::bpf(BPF_MAP_CREATE, attr) }?;
    super::sys::owned_fd(r)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn attr_layouts_match_the_kernel() {
        // Offsets of `union bpf_attr` (include/uapi/linux/bpf.h).
        assert_eq!(std::mem::offset_of!(MapCreateAttr, inner_map_fd), 20);
        assert_eq!(std::mem::offset_of!(MapCreateAttr, map_name), 28);
        assert_eq!(std::mem::size_of::<MapCreateAttr>(), 44);
        assert_eq!(std::mem::offset_of!(MapElemAttr, key), 8);
        assert_eq!(std::mem::offset_of!(MapElemAttr, value), 16);
        assert_eq!(std::mem::offset_of!(MapElemAttr, flags), 24);
        assert_eq!(std::mem::size_of::<MapElemAttr>(), 32);
    }

    #[test]
    fn map_names_are_nul_terminated() {
        assert_eq!(&map_name(b"ab")[..3], b"ab\0");
        assert_eq!(map_name(b"0123456789abcdefgh")[15], 0);
    }

    #[test]
    fn sleeping_waiter_sleeps() {
        let w = GraceWaiter::sleeping(Duration::from_millis(5));
        assert!(!w.uses_kernel());
        assert!(w.wait().unwrap() >= Duration::from_millis(5));
    }

    #[test]
    fn a_started_grace_period_runs_while_the_caller_works() {
        let w = GraceWaiter::sleeping(Duration::from_millis(30));
        let pending = w.start();
        std::thread::sleep(Duration::from_millis(40));
        let blocked = pending.wait().unwrap();
        assert!(blocked < Duration::from_millis(20), "blocked {blocked:?}");
        let start = Instant::now();
        w.start().wait().unwrap();
        assert!(start.elapsed() >= Duration::from_millis(30));
    }

    /// Needs root (CAP_BPF), like the kernel tests.
    #[test]
    fn kernel_waiter_waits_for_a_grace_period() {
        let w = GraceWaiter::map_in_map().unwrap();
        assert!(w.uses_kernel());
        let mut times: Vec<Duration> = (0..20).map(|_| w.wait().unwrap()).collect();
        times.sort();
        let median = times[times.len() / 2];
        eprintln!(
            "grace period: min {:?}, median {median:?}, max {:?}",
            times[0],
            times[times.len() - 1]
        );
        // A plain array update costs a microsecond or so; a grace period
        // costs far more: a wait that cost as little did not wait.
        let How::MapInMap { inner, .. } = &*w.how else {
            unreachable!()
        };
        let mut plain: Vec<Duration> = (0..20)
            .map(|i| {
                let start = Instant::now();
                update_u32(inner, 0, i).unwrap_or_else(|e| panic!("{e}"));
                start.elapsed()
            })
            .collect();
        plain.sort();
        let plain_median = plain[plain.len() / 2];
        eprintln!("plain array update: median {plain_median:?}");
        assert!(
            median > plain_median * 10 && median >= Duration::from_micros(20),
            "grace wait {median:?} vs plain update {plain_median:?}"
        );
    }
}
