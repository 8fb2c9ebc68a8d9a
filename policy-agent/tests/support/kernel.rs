//! A kernel dataplane in a throwaway pin folder and network namespace.

#![allow(dead_code)]

use std::{
    path::PathBuf,
    process::Command,
    sync::atomic::{AtomicUsize, Ordering},
};

use policy_agent::dataplane::{
    kernel::{KernelDataplane, KernelOptions},
    Dataplane,
};
use policy_common::PolicyValue;
use policy_engine::state::{CidrPrefix, MapState, PolicyEntry, PortMatch};

static COUNTER: AtomicUsize = AtomicUsize::new(0);

/// Root of every test pin folder.
pub const TEST_PIN_ROOT: &str = "/sys/fs/bpf/palisade-test";

pub fn require_root() {
    // SAFETY: no preconditions.
    if unsafe { libc::geteuid() } != 0 {
        panic!("kernel tests need root (CAP_BPF, CAP_NET_ADMIN)");
    }
}

/// A unique pin folder, removed (with everything pinned in it) on drop.
pub struct PinDir(pub PathBuf);

impl PinDir {
    pub fn new(name: &str) -> Self {
        let n = COUNTER.fetch_add(1, Ordering::SeqCst);
        Self(PathBuf::from(format!(
            "{TEST_PIN_ROOT}/{}-{n}-{name}",
            std::process::id()
        )))
    }
}

impl Drop for PinDir {
    fn drop(&mut self) {
        let _ = KernelDataplane::remove_pins(&self.0);
    }
}

/// Opens a dataplane pinned under a fresh folder.
pub fn open(name: &str) -> (KernelDataplane, PinDir) {
    open_with(name, |_| {})
}

/// [`open`] with options `set` changes (map sizes, budgets).
pub fn open_with(name: &str, set: impl FnOnce(&mut KernelOptions)) -> (KernelDataplane, PinDir) {
    require_root();
    let dir = PinDir::new(name);
    let mut opts = KernelOptions::new(&dir.0);
    set(&mut opts);
    let dp =
        KernelDataplane::open(opts).unwrap_or_else(|e| panic!("opening the kernel dataplane: {e}"));
    (dp, dir)
}

/// The verdict of program `prog` on `frame` seen on `ifindex`
/// (`BPF_PROG_TEST_RUN`), or a panic naming the failure.
pub fn verdict(
    dp: &mut KernelDataplane,
    prog: &str,
    ifindex: u32,
    frame: &[u8],
) -> policy_agent::dataplane::kernel::TestVerdict {
    dp.test_run(prog, frame, ifindex)
        .unwrap_or_else(|e| panic!("test run: {e}"))
}

/// Source validation: endpoint → the addresses (IPv4-mapped for IPv4) its
/// pod may send from; every other endpoint may send from none.
pub fn sources(dp: &mut KernelDataplane, eps: &[(u32, &[[u8; 16]])]) {
    let map = eps
        .iter()
        .map(|(ep, addrs)| (*ep, addrs.iter().copied().collect()))
        .collect();
    dp.set_sources(&map)
        .unwrap_or_else(|e| panic!("setting source addresses: {e}"));
}

/// Runs `f` on a thread that lives in a fresh, anonymous network namespace
/// (gone when the thread ends) with `dummies` veth interfaces (the
/// machine has no dummy driver) whose ifindexes are passed to `f`.
pub fn in_netns<T: Send>(dummies: usize, f: impl FnOnce(&[u32]) -> T + Send) -> T {
    std::thread::scope(|s| {
        s.spawn(|| {
            // SAFETY: unshare affects only this thread.
            if unsafe { libc::unshare(libc::CLONE_NEWNET) } != 0 {
                panic!("unshare(CLONE_NEWNET): {}", std::io::Error::last_os_error());
            }
            let mut idx = Vec::new();
            for i in 0..dummies {
                let name = format!("pt{i}");
                let peer = format!("pt{i}p");
                run(&[
                    "ip", "link", "add", &name, "type", "veth", "peer", "name", &peer,
                ]);
                run(&["ip", "link", "set", &name, "up"]);
                idx.push(policy_agent::dataplane::kernel::ifindex_of(&name).expect("veth ifindex"));
            }
            f(&idx)
        })
        .join()
        .expect("netns thread panicked")
    })
}

pub fn run(args: &[&str]) {
    let st = Command::new(args[0])
        .args(&args[1..])
        .status()
        .unwrap_or_else(|e| panic!("{args:?}: {e}"));
    if !st.success() {
        panic!("{args:?} failed: {st}");
    }
}

/// MapState builder.
#[derive(Default, Clone)]
pub struct StateBuilder(pub MapState);

impl StateBuilder {
    pub fn endpoint(mut self, ep: u32, flags: u32) -> Self {
        self.0.endpoints.insert(ep, flags);
        self
    }
    pub fn ip(mut self, addr: [u8; 16], identity: u32) -> Self {
        self.0.ipcache.insert(addr, identity);
        self
    }
    pub fn cidr(mut self, addr: [u8; 16], prefix_len: u8, identity: u32) -> Self {
        self.0
            .cidrs
            .insert(CidrPrefix { prefix_len, addr }, identity);
        self
    }
    pub fn allow(mut self, ep: u32, dir: u8, identity: u32, ports: PortMatch, rule: u32) -> Self {
        self.0.policy.insert(
            PolicyEntry {
                ep_id: ep,
                dir,
                identity,
                ports,
            },
            PolicyValue { rule, flags: 0 },
        );
        self
    }
    pub fn port(self, ep: u32, dir: u8, identity: u32, proto: u8, port: u16) -> Self {
        self.allow(
            ep,
            dir,
            identity,
            PortMatch::Ports {
                proto,
                port,
                prefix_len: 16,
            },
            u32::from(port),
        )
    }
    pub fn build(self) -> MapState {
        self.0
    }
}
