//! The kernel dataplane: loads Palisade's tc programs (aya), pins every map
//! and link under a bpffs folder so enforcement survives the agent, adopts
//! what a previous agent left there, and applies [`MapState`]s with a
//! generation flip.
//!
//! ```no_run
//! use policy_agent::dataplane::{kernel::{KernelDataplane, KernelOptions}, Dataplane};
//! # fn main() -> Result<(), policy_agent::dataplane::DataplaneError> {
//! let mut dp = KernelDataplane::open(KernelOptions::new("/sys/fs/bpf/palisade/default"))?;
//! dp.attach_endpoint("veth1234", 7)?;
//! dp.apply(&policy_engine::state::MapState::default())?;
//! # Ok(()) }
//! ```

mod attach;
pub mod carry;
pub mod ct_budget;
pub mod events;
mod generations;
pub mod maps;
mod node_device;
mod options;
mod peer;
pub mod pins;
mod programs;
pub mod rcu;
mod removal;
mod resize;
mod sizes;
mod sys;
mod testrun;
mod upgrade;

use std::{
    collections::{BTreeMap, BTreeSet},
    ffi::CString,
    fs, io,
    path::{Path, PathBuf},
};

use aya::{
    maps::{Array, Map, MapData, RingBuf},
    programs::{
        links::{FdLink, LinkOrder, PinnedLink},
        tc::{self, NlOptions, SchedClassifierLink, TcAttachOptions, TcHandle},
        SchedClassifier, TcAttachType,
    },
    Ebpf, EbpfLoader,
};
use policy_common::{ep_info, maps as names, Addr, Config, EndpointInfo, LAYOUT_VERSION};
use policy_engine::capacity::Capacity;
use policy_engine::state::{diff, MapOp, MapState};

pub use self::attach::tcx_refused;
use self::attach::{detach_netlink, detach_pinned_link};
pub use self::options::{AttachMode, KernelOptions};
pub use self::peer::{peer_mac, PeerMacError};
use self::programs::{program, Programs};
pub use self::sizes::MapSizes;
pub use self::testrun::{empty_classifier_cost, TestVerdict};
use self::upgrade::check_pinned_layout;
pub use self::{events::EventReader, maps::MapCounts, pins::PinPaths};
use self::{maps::Maps, rcu::GraceWaiter};
use super::{Dataplane, DataplaneError};

/// The eBPF object built by `build.rs` (bin `palisade-tc` of `policy-ebpf`).
static EBPF_OBJECT: &[u8] = aya::include_bytes_aligned!(concat!(env!("OUT_DIR"), "/palisade-tc"));

/// Program checking packets that leave the pod (attached at tc ingress of
/// the host-side veth).
pub const PROG_POD_EGRESS: &str = "pod_egress";
/// Program checking packets that enter the pod (attached at tc egress of
/// the host-side veth).
pub const PROG_POD_INGRESS: &str = "pod_ingress";
/// The program at tc egress of the node's overlay device.
pub const PROG_NODE_EGRESS: &str = "node_egress";
/// The program at tc ingress of the node's external devices.
pub const PROG_NODE_INGRESS: &str = "node_ingress";

/// Bit of `Config::flags`: the programs also report allowed new flows.
pub const CONFIG_FLAG_EVENTS_ALLOWED: u32 = policy_common::config_flags::EVENTS_ALLOWED;

/// Priority of Palisade's cls_bpf filters in [`AttachMode::Netlink`].
pub const NETLINK_PRIORITY: u16 = 0x5a1;
/// Handle of Palisade's cls_bpf filters in [`AttachMode::Netlink`].
pub const NETLINK_HANDLE: TcHandle = TcHandle::new(0, 0x5a1);

/// Every map of the object, all pinned (under [`PinPaths::map`]).
pub const ALL_MAPS: [&str; 18] = [
    names::CONFIG,
    names::ENDPOINTS,
    names::EP_POLICY,
    names::IPCACHE,
    names::CIDRS,
    names::POLICY,
    names::CONNTRACK,
    names::EVENTS,
    names::SOURCES,
    names::DROPS,
    names::FRAGMENTS,
    names::EVENT_BUDGET,
    names::SERVICES,
    names::LOCAL_ADDRS,
    names::CLIENTS,
    names::CT_CLIENTS,
    names::CT_COUNT,
    names::CT_REFUSED,
];

/// Source addresses the sources map holds room for, per endpoint (a
/// dual-stack pod has two).
pub const SOURCES_PER_ENDPOINT: u32 = 4;

/// (program, tc hook of the host-side veth, link pin suffix).
const HOOKS: [(&str, TcAttachType, &str); 2] = [
    (
        PROG_POD_EGRESS,
        TcAttachType::Ingress,
        pins::HOOK_TC_INGRESS,
    ),
    (PROG_POD_INGRESS, TcAttachType::Egress, pins::HOOK_TC_EGRESS),
];

/// Wraps any error into [`DataplaneError::Kernel`].
pub(crate) fn kernel_error(
    what: impl Into<String>,
    source: impl Into<Box<dyn std::error::Error + Send + Sync>>,
) -> DataplaneError {
    DataplaneError::Kernel {
        what: what.into(),
        source: source.into(),
    }
}

/// One attached interface.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct AttachedEndpoint {
    /// Interface index.
    pub ifindex: u32,
    /// Endpoint id.
    pub ep_id: u32,
}

/// A switch from an agent of another map layout in progress: its version
/// folders still hold its maps and links (still attached), and restored
/// endpoints wait to be attached until a state has been applied.
#[derive(Debug)]
struct Upgrade {
    /// The other layouts' folders.
    old: Vec<PinPaths>,
    /// Restored endpoints, registered in the new maps, not attached yet.
    pending: BTreeMap<String, AttachedEndpoint>,
}

/// The aya-backed [`Dataplane`].
pub struct KernelDataplane {
    /// The loaded object: never read again, but it holds the object's
    /// unpinned maps (read-only data) and the programs' first handles.
    _ebpf: Ebpf,
    /// The programs, loaded from `ebpf` or taken over from their pins.
    programs: Programs,
    maps: Maps,
    events: Option<RingBuf<MapData>>,
    paths: PinPaths,
    mode: AttachMode,
    cfg: Config,
    /// What each generation holds; `None` = unknown, read back before use.
    mirrors: [Option<MapState>; 2],
    attached: BTreeMap<String, AttachedEndpoint>,
    adopted: bool,
    upgrade: Option<Upgrade>,
    /// [`AttachMode::Auto`] found the kernel refusing TCX.
    tcx_refused: bool,
    /// Waits for the RCU grace period that makes a generation reusable.
    grace: GraceWaiter,
    /// The grace period begun after the last flip (the active generation
    /// may have changed since the last one waited for: programs may still
    /// read the inactive one until it has passed).
    pending_grace: Option<rcu::PendingGrace>,
    /// Grace periods waited for and what they cost the writer.
    grace_stats: GraceStats,
    /// Room per generation, from the maps as they are.
    capacity: Capacity,
    /// Test hook: see [`KernelDataplane::fail_next_attach_after`].
    fail_attach_after: Option<usize>,
    /// While a conntrack walk is out: the endpoints forgotten since it
    /// began (see [`KernelDataplane::begin_conntrack_walk`]).
    ct_forgotten: Option<BTreeSet<u32>>,
}

/// Grace periods [`KernelDataplane::apply`] waited for before writing the
/// inactive generation (each begun in the background at the flip before).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct GraceStats {
    /// How many.
    pub waits: u64,
    /// How long the writer was blocked on them in total.
    pub total: std::time::Duration,
    /// The longest block.
    pub max: std::time::Duration,
}

impl KernelDataplane {
    /// Loads the programs and opens (or creates) the pinned maps under
    /// `opts.pin_dir`. Maps already pinned there with the same layout are
    /// adopted: reused as they are, their active generation and contents
    /// read back, and pinned links re-pointed at the new programs. The
    /// programs a previous agent of the same build pinned are taken over
    /// instead of being loaded again (module `programs`).
    ///
    /// Version folders of another layout under the same base start an
    /// upgrade: [`restore_endpoint`](Dataplane::restore_endpoint) then only
    /// registers endpoints, and the first successful
    /// [`apply`](Dataplane::apply) attaches them, detaches the old links
    /// and removes the old folders ([`finish_upgrade`](Self::finish_upgrade)).
    pub fn open(opts: KernelOptions) -> Result<Self, DataplaneError> {
        let paths = PinPaths::with_version(&opts.pin_dir, opts.version_folder);
        for dir in [paths.maps_dir(), paths.links_dir()] {
            fs::create_dir_all(&dir)
                .map_err(|e| kernel_error(format!("creating {}", dir.display()), e))?;
        }
        check_pinned_layout(&paths)?;

        let s = opts.sizes;
        s.validate()
            .map_err(|e| kernel_error("checking the map sizes", e))?;
        // Pinned maps of other sizes would be reused as they are (the
        // loader opens a pin without comparing): move them aside and take
        // over from them as from another layout.
        if let Some(resized) = resize::set_aside(&paths, &s)? {
            tracing::info!(
                from = %resized.version_dir().display(),
                "pinned maps have other sizes than asked for: new maps, switching over after the first apply"
            );
            for dir in [paths.maps_dir(), paths.links_dir()] {
                fs::create_dir_all(&dir)
                    .map_err(|e| kernel_error(format!("creating {}", dir.display()), e))?;
            }
        }
        let mut loader = EbpfLoader::new();
        for name in ALL_MAPS {
            loader.map_pin_path(name, paths.map(name));
        }
        for (name, max) in s.max_entries() {
            loader.map_max_entries(name, max);
        }
        loader.map_max_entries(names::EVENTS, s.events_bytes);
        let mut ebpf = loader
            .load(EBPF_OBJECT)
            .map_err(|e| kernel_error("loading the eBPF object", e))?;
        let build = programs::build_id(EBPF_OBJECT);
        let programs = programs::open(&mut ebpf, &paths, &build)?;
        let maps = Maps::take(&mut ebpf)?;
        let capacity = resize::capacity(&paths)?;
        let events = match ebpf.take_map(names::EVENTS) {
            Some(m) => Some(
                RingBuf::try_from(m)
                    .map_err(|e| kernel_error("opening the event ring buffer", e))?,
            ),
            None => None,
        };

        let mut dp = Self {
            _ebpf: ebpf,
            programs,
            maps,
            events,
            paths,
            mode: opts.attach_mode,
            cfg: Config::default(),
            mirrors: [None, None],
            attached: BTreeMap::new(),
            adopted: false,
            upgrade: None,
            tcx_refused: false,
            grace: GraceWaiter::new(),
            pending_grace: None,
            grace_stats: GraceStats::default(),
            capacity,
            fail_attach_after: None,
            ct_forgotten: None,
        };
        let flags = if opts.events_for_allowed {
            CONFIG_FLAG_EVENTS_ALLOWED
        } else {
            0
        };
        let cfg = dp.maps.config()?;
        if cfg.layout_version == LAYOUT_VERSION {
            dp.adopted = true;
            // The previous agent may have flipped just before it stopped.
            dp.pending_grace = Some(dp.grace.start());
            dp.cfg = cfg;
            dp.adopt_links()?;
        } else {
            dp.mirrors = [Some(MapState::default()), Some(MapState::default())];
            dp.cfg = Config {
                layout_version: LAYOUT_VERSION,
                active_gen: 0,
                revision: 0,
                flags,
                ct_limit: opts.conntrack_per_endpoint,
                pad: 0,
            };
            dp.maps.set_config(dp.cfg)?;
        }
        dp.set_events_for_allowed(opts.events_for_allowed)?;
        dp.set_conntrack_per_endpoint(opts.conntrack_per_endpoint)?;
        let old = dp
            .paths
            .other_versions()
            .map_err(|e| kernel_error(format!("listing {}", dp.paths.base().display()), e))?;
        if !old.is_empty() {
            let versions: Vec<u32> = old.iter().map(PinPaths::version).collect();
            tracing::info!(
                ?versions,
                current = dp.paths.version(),
                "pins of another map layout found: restored endpoints switch over after the first apply"
            );
            dp.upgrade = Some(Upgrade {
                old,
                pending: BTreeMap::new(),
            });
        }
        Ok(dp)
    }

    /// Whether [`open`](Self::open) found and adopted pinned maps.
    pub fn adopted(&self) -> bool {
        self.adopted
    }

    /// The pin paths in use.
    pub fn paths(&self) -> &PinPaths {
        &self.paths
    }

    /// The configuration last written (active generation, revision, flags).
    pub fn config(&self) -> Config {
        self.cfg
    }

    /// Interfaces attached by this agent or adopted from pins.
    pub fn attached(&self) -> &BTreeMap<String, AttachedEndpoint> {
        &self.attached
    }

    /// Entries per map.
    pub fn counts(&self) -> MapCounts {
        self.maps.counts()
    }

    /// Kernel ids of every map (stable across adoption), by map name.
    pub fn map_ids(&self) -> Result<BTreeMap<&'static str, u32>, DataplaneError> {
        let mut ids = BTreeMap::new();
        for name in ALL_MAPS {
            let path = self.paths.map(name);
            let info = aya::maps::MapInfo::from_pin(&path)
                .map_err(|e| kernel_error(format!("reading {}", path.display()), e))?;
            ids.insert(name, info.id());
        }
        Ok(ids)
    }

    /// Kernel ids of the programs in use, by name (the same after a
    /// restart of the same build: see [`open`](Self::open)).
    pub fn program_ids(&self) -> Result<BTreeMap<&'static str, u32>, DataplaneError> {
        let mut ids = BTreeMap::new();
        for (name, p) in &self.programs {
            let info = p
                .info()
                .map_err(|e| kernel_error(format!("reading program {name}"), e))?;
            ids.insert(*name, info.id());
        }
        Ok(ids)
    }

    /// Takes the event reader (once; later calls return `None`). Another
    /// process can use [`EventReader::open`] on the pin folder instead.
    pub fn take_event_reader(&mut self) -> Option<EventReader> {
        self.events.take().map(EventReader::new)
    }

    /// Turns reporting of allowed new flows on or off.
    pub fn set_events_for_allowed(&mut self, on: bool) -> Result<(), DataplaneError> {
        let flags = if on {
            self.cfg.flags | CONFIG_FLAG_EVENTS_ALLOWED
        } else {
            self.cfg.flags & !CONFIG_FLAG_EVENTS_ALLOWED
        };
        if flags != self.cfg.flags {
            let cfg = Config { flags, ..self.cfg };
            self.maps.set_config(cfg)?;
            self.cfg = cfg;
        }
        Ok(())
    }
}

impl Dataplane for KernelDataplane {
    fn attach_node_device(&mut self, ifname: &str) -> Result<(), DataplaneError> {
        KernelDataplane::attach_node_device(self, ifname)
    }

    fn attach_external_device(&mut self, ifname: &str) -> Result<(), DataplaneError> {
        KernelDataplane::attach_external_device(self, ifname)
    }

    /// A first attach that fails part way (the veth vanished between the
    /// two hooks, say) is undone: no endpoint entry, no link, no pin is
    /// left. A failed re-attach of an interface already enforced leaves
    /// what enforces it.
    fn attach_endpoint(&mut self, ifname: &str, ep_id: u32) -> Result<(), DataplaneError> {
        let fresh = !self.attached.contains_key(ifname);
        let result = self.attach_endpoint_inner(ifname, ep_id);
        if let (Err(e), true) = (&result, fresh) {
            if let Some(ifindex) = ifindex_of(ifname) {
                tracing::warn!(%ifname, error = %e, "attach failed: undoing what it did");
                self.undo_attach(ifname, ifindex);
            }
        }
        result
    }

    fn interface_exists(&self, ifname: &str) -> bool {
        match (self.attached.get(ifname), ifindex_of(ifname)) {
            (_, None) => false,
            // Same name, another interface: the one attached is gone.
            (Some(a), Some(now)) => a.ifindex == now,
            (None, Some(_)) => true,
        }
    }

    fn restore_endpoint(&mut self, ifname: &str, ep_id: u32) -> Result<(), DataplaneError> {
        if self.upgrade.is_none() || self.attached.contains_key(ifname) {
            // Same layout (or links of this layout already there): adopt,
            // in this agent's attach mode only.
            self.attach_endpoint(ifname, ep_id)?;
            self.detach_other_mode(ifname);
            return Ok(());
        }
        let ifindex = ifindex_of(ifname).ok_or_else(|| DataplaneError::NoSuchInterface {
            ifname: ifname.to_string(),
        })?;
        // Known to the new maps (so the first apply covers it), but the
        // old programs keep checking its packets until then.
        self.register_endpoint(ifindex, ep_id)?;
        if let Some(up) = self.upgrade.as_mut() {
            up.pending
                .insert(ifname.to_string(), AttachedEndpoint { ifindex, ep_id });
        }
        Ok(())
    }

    fn detach_endpoint(&mut self, ifname: &str, ep_id: u32) -> Result<(), DataplaneError> {
        let pending = self.upgrade.as_mut().and_then(|u| u.pending.remove(ifname));
        let ifindex = self
            .attached
            .get(ifname)
            .map(|a| a.ifindex)
            .or(pending.map(|p| p.ifindex))
            .or_else(|| ifindex_of(ifname));
        if let (Some(up), Some(ifindex)) = (&self.upgrade, ifindex) {
            for old in &up.old {
                for (_, _, hook) in HOOKS {
                    detach_pinned_link(&old.link(ifindex, hook))?;
                }
            }
        }
        match self.mode {
            AttachMode::Tcx => {
                if let Some(ifindex) = ifindex {
                    self.detach_tcx(ifindex)?;
                }
            }
            AttachMode::Netlink => detach_netlink(ifname)?,
            AttachMode::Auto => {
                let had_links = match ifindex {
                    Some(ifindex) => self.detach_tcx(ifindex)?,
                    None => false,
                };
                if !had_links {
                    // Attached by netlink (a kernel without TCX), or not at
                    // all: a failure here is not worth failing the detach.
                    if let Err(e) = detach_netlink(ifname) {
                        tracing::debug!(%ifname, error = %e, "no netlink filter removed");
                    }
                }
            }
        }
        if let Some(ifindex) = ifindex {
            let _ = self.maps.endpoints.remove(&ifindex);
        }
        self.attached.remove(ifname);
        self.forget_conntrack_budget(ep_id);
        Ok(())
    }

    fn set_sources(
        &mut self,
        sources: &BTreeMap<u32, BTreeSet<Addr>>,
    ) -> Result<(), DataplaneError> {
        self.maps.set_sources(sources)
    }

    fn drop_counts(&self) -> BTreeMap<u8, u64> {
        self.maps.drop_counts()
    }

    fn conntrack_usage(&self) -> BTreeMap<u32, super::ConntrackUsage> {
        ct_budget::usage(&self.maps.ct_count, &self.maps.ct_refused)
    }

    fn conntrack_walk(&mut self) -> Option<super::ConntrackWalk> {
        Some(self.begin_conntrack_walk())
    }

    fn correct_conntrack(
        &mut self,
        live: &BTreeMap<u32, policy_common::CtCount>,
    ) -> Result<(), DataplaneError> {
        self.end_conntrack_walk(live)
    }

    fn capacity(&self) -> Option<Capacity> {
        Some(self.capacity)
    }

    fn apply(&mut self, state: &MapState) -> Result<(), DataplaneError> {
        self.apply_state(state)
    }
}

fn remove_file(path: &Path) -> Result<(), DataplaneError> {
    match fs::remove_file(path) {
        Ok(()) => Ok(()),
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(()),
        Err(e) => Err(kernel_error(format!("removing {}", path.display()), e)),
    }
}

/// Index of interface `ifname` in the agent's network namespace.
pub fn ifindex_of(ifname: &str) -> Option<u32> {
    let name = CString::new(ifname).ok()?;
    // SAFETY: a valid NUL-terminated string.
    let idx = unsafe { libc::if_nametoindex(name.as_ptr()) };
    (idx != 0).then_some(idx)
}

/// Name of interface `ifindex` in the agent's network namespace.
pub fn ifname_of(ifindex: u32) -> Option<String> {
    let mut buf = [0 as libc::c_char; libc::IF_NAMESIZE];
    // SAFETY: `buf` has IF_NAMESIZE bytes as the call requires.
    let p = unsafe { libc::if_indextoname(ifindex, buf.as_mut_ptr()) };
    if p.is_null() {
        return None;
    }
    // SAFETY: on success the buffer holds a NUL-terminated name.
    let name = unsafe { std::ffi::CStr::from_ptr(buf.as_ptr()) };
    name.to_str().ok().map(str::to_string)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn dataplane_is_send() {
        fn send<T: Send>() {}
        send::<KernelDataplane>();
        send::<EventReader>();
    }

    #[test]
    fn tcx_refusals_are_told_apart() {
        use aya::{programs::ProgramError, sys::SyscallError};
        let sys = |errno: i32| {
            ProgramError::SyscallError(SyscallError {
                call: "bpf_mprog_attach",
                io_error: io::Error::from_raw_os_error(errno),
            })
        };
        // No TCX in the kernel: fall back to netlink.
        for errno in [libc::EINVAL, libc::EOPNOTSUPP, 524, libc::E2BIG] {
            assert!(tcx_refused(&sys(errno)), "errno {errno}");
        }
        // Failures netlink would share: report them.
        for errno in [libc::EPERM, libc::ENODEV, libc::ENOMEM, libc::EEXIST] {
            assert!(!tcx_refused(&sys(errno)), "errno {errno}");
        }
        assert!(!tcx_refused(&ProgramError::NotLoaded));
        assert!(!tcx_refused(&ProgramError::TcError(
            tc::TcError::InvalidLinkOperation
        )));
    }

    #[test]
    fn auto_is_the_default_attach_mode() {
        assert_eq!(AttachMode::default(), AttachMode::Auto);
        assert_eq!(KernelOptions::new("/x").attach_mode, AttachMode::Auto);
    }

    #[test]
    fn object_is_embedded() {
        // Built by build.rs unless AYA_BUILD_SKIP is set.
        if std::env::var_os("AYA_BUILD_SKIP").is_none() {
            assert!(EBPF_OBJECT.starts_with(b"\x7fELF"));
        }
    }
}
