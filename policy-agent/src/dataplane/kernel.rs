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

pub mod carry;
pub mod events;
pub mod maps;
mod node_device;
pub mod pins;
pub mod rcu;
mod resize;

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
use policy_common::{maps as names, Addr, Config, EndpointInfo, LAYOUT_VERSION};
use policy_engine::capacity::Capacity;
use policy_engine::state::{diff, MapOp, MapState};

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
pub const ALL_MAPS: [&str; 16] = [
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

/// How programs are attached to interfaces.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum AttachMode {
    /// TCX where the kernel has it, netlink otherwise: each attach tries
    /// [`Tcx`](Self::Tcx) until the kernel once refuses TCX links (see
    /// [`tcx_refused`]), then uses [`Netlink`](Self::Netlink) (logged
    /// once).
    #[default]
    Auto,
    /// TCX links (kernel ≥ 6.6), pinned so they outlive the agent.
    Tcx,
    /// Classic cls_bpf filters on a clsact qdisc (netlink), with a fixed
    /// priority/handle ([`NETLINK_PRIORITY`], [`NETLINK_HANDLE`]); they
    /// stay until detached or the interface goes away.
    Netlink,
}

/// Map capacities, set before the maps are created (adopted maps keep the
/// size they were created with). Per-generation sizes are doubled for the
/// maps that hold both generations.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct MapSizes {
    /// Attached interfaces; the endpoint-policy map gets twice this.
    pub endpoints: u32,
    /// Exact pod addresses per generation.
    pub ipcache: u32,
    /// CIDR prefixes per generation.
    pub cidrs: u32,
    /// Policy entries per generation (all endpoints together).
    pub policy: u32,
    /// Conntrack entries (LRU).
    pub conntrack: u32,
    /// Event ring buffer size in bytes (a power of two, ≥ one page).
    pub events_bytes: u32,
}

impl Default for MapSizes {
    /// 1,024 interfaces, 32,768 addresses, 16,384 CIDRs and 131,072 policy
    /// entries (1,000 per endpoint for ~130 endpoints) per generation,
    /// 131,072 tracked flows, 256 KiB of events.
    fn default() -> Self {
        Self {
            endpoints: 1024,
            ipcache: 32_768,
            cidrs: 16_384,
            policy: 131_072,
            conntrack: 131_072,
            events_bytes: 256 * 1024,
        }
    }
}

impl MapSizes {
    /// Sizes `endpoints` accepts (`--map-size-endpoints`).
    pub const ENDPOINTS: std::ops::RangeInclusive<u32> = 4..=16_384;
    /// Sizes `ipcache` accepts (`--map-size-ipcache`).
    pub const IPCACHE: std::ops::RangeInclusive<u32> = 16..=1_048_576;
    /// Sizes `cidrs` accepts (`--map-size-cidrs`).
    pub const CIDRS: std::ops::RangeInclusive<u32> = 16..=4_194_304;
    /// Sizes `policy` accepts (`--map-size-policy`).
    pub const POLICY: std::ops::RangeInclusive<u32> = 16..=4_194_304;
    /// Sizes `conntrack` accepts (`--map-size-conntrack`).
    pub const CONNTRACK: std::ops::RangeInclusive<u32> = 1_024..=4_194_304;

    /// Every bounded size: (what, value, accepted range).
    fn bounded(&self) -> [(&'static str, u32, std::ops::RangeInclusive<u32>); 5] {
        [
            ("endpoints", self.endpoints, Self::ENDPOINTS),
            ("ipcache", self.ipcache, Self::IPCACHE),
            ("cidrs", self.cidrs, Self::CIDRS),
            ("policy", self.policy, Self::POLICY),
            ("conntrack", self.conntrack, Self::CONNTRACK),
        ]
    }

    /// Checks every size against its bounds (and the ring buffer: a power
    /// of two of at least one page).
    pub fn validate(&self) -> Result<(), String> {
        for (what, v, range) in self.bounded() {
            if !range.contains(&v) {
                return Err(format!(
                    "{what} map size {v} is out of bounds ({}..={})",
                    range.start(),
                    range.end()
                ));
            }
        }
        if !self.events_bytes.is_power_of_two() || self.events_bytes < 4096 {
            return Err(format!(
                "event ring buffer size {} is not a power of two of at least 4096 bytes",
                self.events_bytes
            ));
        }
        Ok(())
    }

    /// max_entries of each map these sizes create, by map name (the ring
    /// buffer left out: its size is not an entry count).
    pub fn max_entries(&self) -> [(&'static str, u32); 10] {
        [
            (names::ENDPOINTS, self.endpoints),
            (names::EP_POLICY, self.endpoints.saturating_mul(2)),
            (names::IPCACHE, self.ipcache.saturating_mul(2)),
            (names::CIDRS, self.cidrs.saturating_mul(2)),
            (names::POLICY, self.policy.saturating_mul(2)),
            (names::CONNTRACK, self.conntrack),
            (
                names::SOURCES,
                self.endpoints.saturating_mul(SOURCES_PER_ENDPOINT),
            ),
            (names::EVENT_BUDGET, self.endpoints),
            // Per generation: every ClusterIP (at most one per pod address
            // would be a lot), and each local pod's addresses.
            (names::SERVICES, self.ipcache.saturating_mul(2)),
            (names::LOCAL_ADDRS, self.endpoints.saturating_mul(4)),
        ]
    }
}

/// Options of [`KernelDataplane::open`].
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct KernelOptions {
    /// Base bpffs folder, e.g. `/sys/fs/bpf/palisade/<instance>` (see
    /// [`pins`] for what goes inside).
    pub pin_dir: PathBuf,
    /// Map capacities for maps created now.
    pub sizes: MapSizes,
    /// How to attach programs.
    pub attach_mode: AttachMode,
    /// Also report allowed new flows as events (drops are always reported).
    pub events_for_allowed: bool,
    /// Layout version naming the version folder (tests fake an older
    /// agent's folder with it).
    version_folder: u32,
}

impl KernelOptions {
    /// Defaults with the given base pin folder.
    pub fn new(pin_dir: impl Into<PathBuf>) -> Self {
        Self {
            pin_dir: pin_dir.into(),
            sizes: MapSizes::default(),
            attach_mode: AttachMode::default(),
            events_for_allowed: false,
            version_folder: LAYOUT_VERSION,
        }
    }

    /// Pins under `v<version>` instead of `v<LAYOUT_VERSION>`: only for
    /// tests that fake the folder an agent of another layout left behind.
    #[doc(hidden)]
    pub fn with_version_folder(mut self, version: u32) -> Self {
        self.version_folder = version;
        self
    }
}

/// A program's verdict on a test-run frame.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum TestVerdict {
    /// `TC_ACT_UNSPEC`: the packet goes on.
    Allow,
    /// `TC_ACT_SHOT`.
    Drop,
    /// Anything else (a bug).
    Other(u32),
}

impl TestVerdict {
    fn from_retval(v: u32) -> Self {
        match v as i32 {
            -1 => Self::Allow,
            2 => Self::Drop,
            _ => Self::Other(v),
        }
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

/// Whether a TCX link create failed because the kernel has no TCX (a
/// kernel before 6.6 rejects the unknown attach type with `EINVAL`; some
/// builds answer `EOPNOTSUPP`/`ENOTSUPP`, or `E2BIG` for the larger
/// attribute), as opposed to a failure netlink would share (no interface,
/// no permission, out of memory).
pub fn tcx_refused(e: &aya::programs::ProgramError) -> bool {
    /// The kernel-internal `ENOTSUPP` some BPF paths leak to user space.
    const ENOTSUPP: i32 = 524;
    match e {
        aya::programs::ProgramError::SyscallError(aya::sys::SyscallError { io_error, .. }) => {
            matches!(
                io_error.raw_os_error(),
                Some(libc::EINVAL | libc::EOPNOTSUPP | ENOTSUPP | libc::E2BIG)
            )
        }
        _ => false,
    }
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
    ebpf: Ebpf,
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
    /// The active generation may have changed since the last grace period
    /// waited for: programs may still read the inactive one.
    flipped_since_grace: bool,
    /// Grace periods waited for and their cost.
    grace_stats: GraceStats,
    /// Room per generation, from the maps as they are.
    capacity: Capacity,
    /// Test hook: see [`KernelDataplane::fail_next_attach_after`].
    fail_attach_after: Option<usize>,
}

/// Grace periods [`KernelDataplane::apply`] waited for before writing the
/// inactive generation.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct GraceStats {
    /// How many.
    pub waits: u64,
    /// Their total time.
    pub total: std::time::Duration,
    /// The longest.
    pub max: std::time::Duration,
}

impl KernelDataplane {
    /// Loads the programs and opens (or creates) the pinned maps under
    /// `opts.pin_dir`. Maps already pinned there with the same layout are
    /// adopted: reused as they are, their active generation and contents
    /// read back, and pinned links re-pointed at the new programs.
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
        for prog in HOOKS
            .map(|(p, _, _)| p)
            .into_iter()
            .chain([PROG_NODE_EGRESS, PROG_NODE_INGRESS])
        {
            program(&mut ebpf, prog)?
                .load()
                .map_err(|e| kernel_error(format!("loading program {prog}"), e))?;
        }
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
            ebpf,
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
            flipped_since_grace: false,
            grace_stats: GraceStats::default(),
            capacity,
            fail_attach_after: None,
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
            dp.flipped_since_grace = true;
            dp.cfg = cfg;
            dp.adopt_links()?;
        } else {
            dp.mirrors = [Some(MapState::default()), Some(MapState::default())];
            dp.cfg = Config {
                layout_version: LAYOUT_VERSION,
                active_gen: 0,
                revision: 0,
                flags,
            };
            dp.maps.set_config(dp.cfg)?;
        }
        dp.set_events_for_allowed(opts.events_for_allowed)?;
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

    /// Whether a switch from another layout's pins is still to finish
    /// (see [`open`](Self::open)).
    pub fn upgrade_pending(&self) -> bool {
        self.upgrade.is_some()
    }

    /// Restored endpoints waiting for the first apply to be attached.
    pub fn pending_endpoints(&self) -> BTreeMap<String, AttachedEndpoint> {
        self.upgrade
            .as_ref()
            .map(|u| u.pending.clone())
            .unwrap_or_default()
    }

    /// Finishes a layout upgrade (called by [`apply`](Dataplane::apply)
    /// once a state is in the new maps): attaches the new programs to every
    /// restored endpoint, then detaches that interface's old links, then
    /// detaches whatever the old folders still hold and removes them. An
    /// endpoint whose interface is gone is forgotten; one that fails to
    /// attach stays pending (its old links stay too) and the old folders
    /// stay until a later call succeeds. No-op without an upgrade.
    pub fn finish_upgrade(&mut self) -> Result<(), DataplaneError> {
        let Some(mut up) = self.upgrade.take() else {
            return Ok(());
        };
        let mut failure = None;
        // Tracked flows first, so the new programs know every established
        // flow from their first packet; again once all are switched, for
        // flows the old programs started meanwhile.
        let carried = self.carry_conntrack(&up.old);
        for (ifname, ep) in std::mem::take(&mut up.pending) {
            match self.attach_endpoint(&ifname, ep.ep_id) {
                Ok(()) => {
                    let now = self.attached.get(&ifname).map(|a| a.ifindex);
                    if now != Some(ep.ifindex) {
                        // The interface was replaced since restore.
                        let _ = self.maps.endpoints.remove(&ep.ifindex);
                    }
                    for old in &up.old {
                        for (_, _, hook) in HOOKS {
                            if let Err(e) = detach_pinned_link(&old.link(ep.ifindex, hook)) {
                                // Removing the old folder below retries it.
                                failure.get_or_insert(e);
                            }
                        }
                    }
                }
                Err(DataplaneError::NoSuchInterface { .. }) => {
                    let _ = self.maps.endpoints.remove(&ep.ifindex);
                    tracing::info!(%ifname, "restored interface gone before the upgrade finished");
                }
                Err(e) => {
                    up.pending.insert(ifname, ep);
                    failure.get_or_insert(e);
                }
            }
        }
        let carried = carried + self.carry_conntrack(&up.old);
        tracing::info!(carried, "tracked flows carried over to the new maps");
        if failure.is_none() {
            for old in &up.old {
                if let Err(e) = remove_version_folder(old) {
                    failure.get_or_insert(e);
                }
            }
        }
        if let Some(e) = failure {
            // Kept for the next try; what already switched over is not
            // pending any more.
            self.upgrade = Some(up);
            return Err(e);
        }
        tracing::info!("map layout upgrade finished: old links detached, old pins removed");
        Ok(())
    }

    /// Copies the old folders' tracked flows into the new conntrack map
    /// (see [`carry`]); a failure is logged, not fatal (those flows' replies
    /// are then judged as new packets).
    fn carry_conntrack(&mut self, old: &[PinPaths]) -> usize {
        let mut n = 0;
        for folder in old {
            match carry::conntrack(folder, &mut self.maps.conntrack, self.cfg.revision) {
                Ok(copied) => n += copied,
                Err(e) => tracing::warn!(error = %e, "tracked flows not carried over"),
            }
        }
        n
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

    /// The state the active generation holds (read back from the maps if
    /// not known).
    pub fn active_state(&mut self) -> Result<MapState, DataplaneError> {
        let gen = (self.cfg.revision & 1) as u8;
        self.generation(gen).cloned()
    }

    /// Interfaces attached by this agent or adopted from pins.
    pub fn attached(&self) -> &BTreeMap<String, AttachedEndpoint> {
        &self.attached
    }

    /// Grace periods waited for so far (see [`apply`](Dataplane::apply)).
    pub fn grace_stats(&self) -> GraceStats {
        self.grace_stats
    }

    /// Whether grace periods are waited for with the kernel's help (a
    /// map-in-map update) rather than by sleeping
    /// [`rcu::FALLBACK_SLEEP`].
    pub fn grace_uses_kernel(&self) -> bool {
        self.grace.uses_kernel()
    }

    /// Waits for an RCU grace period if the active generation may have
    /// changed since the last one: then no program still reads the
    /// inactive generation (tc programs run in an RCU read-side section,
    /// and read `Config` once per packet).
    fn wait_until_inactive_unused(&mut self) {
        if !self.flipped_since_grace {
            return;
        }
        match self.grace.wait() {
            Ok(took) => {
                tracing::debug!(
                    ?took,
                    "RCU grace period before writing the inactive generation"
                );
                let s = &mut self.grace_stats;
                s.waits += 1;
                s.total += took;
                s.max = s.max.max(took);
            }
            // `wait` slept instead: good enough to go on.
            Err(e) => tracing::warn!(error = %e, "waiting for an RCU grace period"),
        }
        self.flipped_since_grace = false;
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

    /// Maps `ifindex` to `ep_id` without attaching anything: for frames run
    /// through [`test_run`](Self::test_run). `attach_endpoint` does this
    /// and attaches.
    pub fn register_endpoint(&mut self, ifindex: u32, ep_id: u32) -> Result<(), DataplaneError> {
        self.maps
            .endpoints
            .insert(ifindex, EndpointInfo { ep_id, flags: 0 }, 0)
            .map_err(|e| {
                kernel_error(
                    format!("registering ifindex {ifindex} as endpoint {ep_id}"),
                    e,
                )
            })
    }

    /// Runs one Ethernet frame through program `prog` ([`PROG_POD_EGRESS`]
    /// or [`PROG_POD_INGRESS`]) with `BPF_PROG_TEST_RUN`, as if it were
    /// seen on interface `ifindex` — which must exist in the calling
    /// thread's network namespace (1, the loopback, always does). Returns
    /// the program's verdict; maps are read and written as for a real
    /// packet.
    pub fn test_run(
        &mut self,
        prog: &str,
        frame: &[u8],
        ifindex: u32,
    ) -> Result<TestVerdict, DataplaneError> {
        self.test_run_timed(prog, frame, ifindex, 1).map(|(v, _)| v)
    }

    /// [`test_run`](Self::test_run) for a packet the node forwarded (it
    /// arrived on interface `ingress_ifindex`, not from the node's own
    /// stack): what a masqueraded NodePort client's packet looks like.
    pub fn test_run_forwarded(
        &mut self,
        prog: &str,
        frame: &[u8],
        ifindex: u32,
        ingress_ifindex: u32,
    ) -> Result<TestVerdict, DataplaneError> {
        self.run_ctx(prog, frame, ifindex, ingress_ifindex, 1)
            .map(|(v, _)| v)
    }

    /// [`test_run`](Self::test_run) repeated `repeat` times in the kernel;
    /// also returns the mean time per run (the cost of one verdict, for
    /// benchmarks). Conntrack state carries over between repeats, so after
    /// the first run a new flow is an established one.
    pub fn test_run_timed(
        &mut self,
        prog: &str,
        frame: &[u8],
        ifindex: u32,
        repeat: u32,
    ) -> Result<(TestVerdict, std::time::Duration), DataplaneError> {
        self.run_ctx(prog, frame, ifindex, 0, repeat)
    }

    fn run_ctx(
        &mut self,
        prog: &str,
        frame: &[u8],
        ifindex: u32,
        ingress_ifindex: u32,
        repeat: u32,
    ) -> Result<(TestVerdict, std::time::Duration), DataplaneError> {
        use aya::{TestRun, TestRunOptions};
        // `struct __sk_buff` up to and including `ifindex` (offset 40);
        // the kernel takes the device from it when it is above 1, and
        // `ingress_ifindex` (offset 36) becomes the packet's input device.
        let mut ctx = [0u8; 44];
        ctx[36..40].copy_from_slice(&ingress_ifindex.to_ne_bytes());
        ctx[40..44].copy_from_slice(&ifindex.to_ne_bytes());
        let mut opts = TestRunOptions::new();
        opts.data_in = Some(frame);
        opts.ctx_in = Some(&ctx);
        opts.repeat = repeat.max(1);
        let p = program(&mut self.ebpf, prog)?;
        let r = p
            .test_run(opts)
            .map_err(|e| kernel_error(format!("test run of {prog}"), e))?;
        Ok((TestVerdict::from_retval(r.return_value), r.duration))
    }

    /// Detaches every program and removes every pin under `base`, of every
    /// layout version (the uninstall path, and test cleanup). Missing pins
    /// are not an error.
    pub fn remove_pins(base: impl AsRef<Path>) -> Result<(), DataplaneError> {
        let base = base.as_ref();
        let current = PinPaths::new(base);
        let mut folders = current.other_versions().unwrap_or_default();
        folders.push(current);
        for folder in &folders {
            if let Ok(entries) = fs::read_dir(folder.links_dir()) {
                for entry in entries.flatten() {
                    detach_pinned_link(&entry.path())?;
                }
            }
        }
        match fs::remove_dir_all(base) {
            Ok(()) => Ok(()),
            Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(()),
            Err(e) => Err(kernel_error(format!("removing {}", base.display()), e)),
        }
    }

    /// The whole node side of an uninstall: [`Self::remove_pins`], then
    /// Palisade's netlink filters (a kernel without TCX: they are not
    /// pinned) on every interface of this network namespace. Only filters
    /// running Palisade's programs are touched. Idempotent.
    pub fn remove_from_node(base: impl AsRef<Path>) -> Result<(), DataplaneError> {
        Self::remove_pins(base)?;
        let Ok(entries) = fs::read_dir("/sys/class/net") else {
            return Ok(());
        };
        for entry in entries.flatten() {
            let ifname = entry.file_name().to_string_lossy().into_owned();
            // No clsact qdisc or no filter of ours: nothing to remove.
            if let Err(e) = detach_netlink(&ifname) {
                tracing::debug!(%ifname, error = %e, "no netlink filter removed");
            }
        }
        Ok(())
    }

    fn generation(&mut self, gen: u8) -> Result<&MapState, DataplaneError> {
        let slot = usize::from(gen & 1);
        if self.mirrors[slot].is_none() {
            self.mirrors[slot] = Some(self.maps.read_generation(gen)?);
        }
        self.mirrors[slot]
            .as_ref()
            .ok_or_else(|| kernel_error("generation mirror", "missing after read-back"))
    }

    /// Re-points pinned links at the freshly loaded programs and forgets
    /// pins of interfaces that are gone.
    fn adopt_links(&mut self) -> Result<(), DataplaneError> {
        let dir = self.paths.links_dir();
        let entries = fs::read_dir(&dir)
            .map_err(|e| kernel_error(format!("reading {}", dir.display()), e))?;
        for entry in entries {
            let entry = entry.map_err(|e| kernel_error(format!("reading {}", dir.display()), e))?;
            let file = entry.file_name();
            let Some((ifindex, hook)) = file.to_str().and_then(PinPaths::parse_link_name) else {
                continue;
            };
            let path = entry.path();
            let Some(ifname) = ifname_of(ifindex) else {
                remove_file(&path)?;
                let _ = self.maps.endpoints.remove(&ifindex);
                continue;
            };
            let Some((prog, _, _)) = HOOKS.iter().copied().find(|(_, _, h)| *h == hook) else {
                continue;
            };
            let replaced = PinnedLink::from_pin(&path)
                .map_err(|e| kernel_error(format!("opening {}", path.display()), e))
                .and_then(|pinned| {
                    let link = SchedClassifierLink::try_from(FdLink::from(pinned))
                        .map_err(|e| kernel_error(format!("adopting {}", path.display()), e))?;
                    let p = program(&mut self.ebpf, prog)?;
                    let id = p
                        .attach_to_link(link)
                        .map_err(|e| kernel_error(format!("updating {}", path.display()), e))?;
                    // Dropping our handle only closes the fd: the pin keeps
                    // the link.
                    drop(p.take_link(id));
                    Ok(())
                });
            if replaced.is_err() {
                // A defunct link (its interface was replaced): forget it.
                remove_file(&path)?;
                continue;
            }
            if let Ok(info) = self.maps.endpoints.get(&ifindex, 0) {
                self.attached.insert(
                    ifname,
                    AttachedEndpoint {
                        ifindex,
                        ep_id: info.ep_id,
                    },
                );
            }
        }
        Ok(())
    }

    /// Detaches this layout's links of `ifindex`; true if any pin was there.
    fn detach_tcx(&self, ifindex: u32) -> Result<bool, DataplaneError> {
        let mut found = false;
        for (_, _, hook) in HOOKS {
            let pin = self.paths.link(ifindex, hook);
            found |= pin.exists();
            detach_pinned_link(&pin)?;
        }
        Ok(found)
    }

    /// Attaches (or re-points) both TCX links of `ifname`. With `probe`,
    /// returns `Ok(false)` instead of an error when the kernel refuses the
    /// first TCX link ([`tcx_refused`]), nothing being attached then.
    fn attach_tcx(
        &mut self,
        ifname: &str,
        ifindex: u32,
        probe: bool,
    ) -> Result<bool, DataplaneError> {
        for (n, (prog, attach_type, hook)) in HOOKS.into_iter().enumerate() {
            if self.fail_attach_after == Some(n) {
                self.fail_attach_after = None;
                return Err(kernel_error(
                    format!("attaching {prog} to {ifname}"),
                    "injected failure (test)",
                ));
            }
            let pin = self.paths.link(ifindex, hook);
            let p = program(&mut self.ebpf, prog)?;
            if pin.exists() {
                let updated = PinnedLink::from_pin(&pin)
                    .ok()
                    .and_then(|l| SchedClassifierLink::try_from(FdLink::from(l)).ok())
                    .and_then(|l| p.attach_to_link(l).ok());
                if let Some(id) = updated {
                    drop(p.take_link(id));
                    continue;
                }
                remove_file(&pin)?;
            }
            let what = || format!("attaching {prog} to {ifname}");
            let id = match p.attach_with_options(
                ifname,
                attach_type,
                TcAttachOptions::TcxOrder(LinkOrder::default()),
            ) {
                Ok(id) => id,
                Err(e) if probe && n == 0 && tcx_refused(&e) => {
                    tracing::debug!(%ifname, error = %e, "TCX link refused");
                    return Ok(false);
                }
                Err(e) => return Err(kernel_error(what(), e)),
            };
            let link = p.take_link(id).map_err(|e| kernel_error(what(), e))?;
            let fd = FdLink::try_from(link).map_err(|e| kernel_error(what(), e))?;
            fd.pin(&pin)
                .map_err(|e| kernel_error(format!("pinning {}", pin.display()), e))?;
        }
        Ok(true)
    }

    /// Registers `ifname` as `ep_id` and attaches both hooks (see
    /// [`Dataplane::attach_endpoint`], which undoes a failed first attach).
    fn attach_endpoint_inner(&mut self, ifname: &str, ep_id: u32) -> Result<(), DataplaneError> {
        let ifindex = ifindex_of(ifname).ok_or_else(|| DataplaneError::NoSuchInterface {
            ifname: ifname.to_string(),
        })?;
        // The endpoint is known before the programs see its first packet;
        // until a state with `ep_id` is applied its packets are dropped.
        self.maps
            .endpoints
            .insert(ifindex, EndpointInfo { ep_id, flags: 0 }, 0)
            .map_err(|e| kernel_error(format!("registering {ifname} as endpoint {ep_id}"), e))?;
        match self.mode {
            AttachMode::Tcx => {
                self.attach_tcx(ifname, ifindex, false)?;
            }
            AttachMode::Netlink => self.attach_netlink(ifname)?,
            AttachMode::Auto if self.tcx_refused => self.attach_netlink(ifname)?,
            AttachMode::Auto => {
                if !self.attach_tcx(ifname, ifindex, true)? {
                    tracing::warn!(
                        %ifname,
                        "the kernel refuses TCX links: attaching with netlink (cls_bpf) from now on"
                    );
                    self.tcx_refused = true;
                    self.attach_netlink(ifname)?;
                }
            }
        }
        self.attached
            .insert(ifname.to_string(), AttachedEndpoint { ifindex, ep_id });
        Ok(())
    }

    /// Takes off whatever a failed first attach of `ifname` put in place:
    /// its links and pins, its netlink filters, its endpoint entry.
    fn undo_attach(&mut self, ifname: &str, ifindex: u32) {
        if let Err(e) = self.detach_tcx(ifindex) {
            tracing::warn!(%ifname, error = %e, "undoing a failed attach: links");
        }
        if self.mode != AttachMode::Tcx {
            if let Err(e) = detach_netlink(ifname) {
                tracing::debug!(%ifname, error = %e, "undoing a failed attach: no netlink filter");
            }
        }
        let _ = self.maps.endpoints.remove(&ifindex);
    }

    /// Makes the next attach fail after `hooks` of its two hooks are
    /// attached, as a veth vanishing mid-attach would: only for tests of
    /// what a failed attach leaves behind.
    #[doc(hidden)]
    pub fn fail_next_attach_after(&mut self, hooks: usize) {
        self.fail_attach_after = Some(hooks);
    }

    fn attach_netlink(&mut self, ifname: &str) -> Result<(), DataplaneError> {
        // EEXIST when the qdisc is already there; a real failure shows up
        // in the attach below.
        let _ = tc::qdisc_add_clsact(ifname);
        for (prog, attach_type, _) in HOOKS {
            let what = || format!("attaching {prog} to {ifname} (netlink)");
            let p = program(&mut self.ebpf, prog)?;
            let opts = || {
                TcAttachOptions::Netlink(NlOptions {
                    priority: NETLINK_PRIORITY,
                    handle: NETLINK_HANDLE,
                    classid: None,
                })
            };
            let id = match p.attach_with_options(ifname, attach_type, opts()) {
                Ok(id) => id,
                Err(_) => {
                    // Our filter is already there (a previous agent): replace
                    // its program in place.
                    let link = SchedClassifierLink::attached(
                        ifname,
                        attach_type,
                        NETLINK_PRIORITY,
                        NETLINK_HANDLE,
                        None,
                    )
                    .map_err(|e| kernel_error(what(), e))?;
                    p.attach_to_link(link)
                        .map_err(|e| kernel_error(what(), e))?
                }
            };
            let link = p.take_link(id).map_err(|e| kernel_error(what(), e))?;
            // The filter must outlive this handle (and the agent): dropping
            // the handle would detach it.
            std::mem::forget(link);
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
            // Same layout (or links of this layout already there): adopt.
            return self.attach_endpoint(ifname, ep_id);
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

    fn detach_endpoint(&mut self, ifname: &str, _ep_id: u32) -> Result<(), DataplaneError> {
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

    fn capacity(&self) -> Option<Capacity> {
        Some(self.capacity)
    }

    /// Writes the inactive generation, then flips to it with one write of
    /// `Config`. If a flip happened since the last grace period, first
    /// waits for one (see [`rcu`]): a packet judged against the generation
    /// active before the last flip must not see it change under it.
    fn apply(&mut self, state: &MapState) -> Result<(), DataplaneError> {
        self.wait_until_inactive_unused();
        // The datapath derives the generation from the revision (one
        // 32-bit read): the next revision names the target generation.
        let revision = self.cfg.revision.wrapping_add(1);
        let target = (revision & 1) as u8;
        let mut ops = diff(self.generation(target)?, state);
        // Removals first: the target generation then never holds more than
        // the larger of its old and new contents, so a state that fits its
        // half of a map can be written while the other half is live.
        ops.sort_by_key(|op| !is_removal(op));
        let slot = usize::from(target);
        if let Err(e) = self.maps.write(target, &ops) {
            self.mirrors[slot] = None;
            return Err(e);
        }
        self.mirrors[slot] = Some(state.clone());
        let cfg = Config {
            layout_version: LAYOUT_VERSION,
            active_gen: u32::from(target),
            revision,
            flags: self.cfg.flags,
        };
        // Even a failed write may have flipped.
        self.flipped_since_grace = true;
        self.maps.set_config(cfg)?;
        self.cfg = cfg;
        if self.upgrade.is_some() {
            // The state is applied either way; what did not switch over
            // yet stays enforced by the old programs and is retried on the
            // next apply.
            if let Err(e) = self.finish_upgrade() {
                tracing::error!(error = %e, "map layout upgrade not finished; retrying on the next apply");
            }
        }
        Ok(())
    }
}

fn is_removal(op: &MapOp) -> bool {
    matches!(
        op,
        MapOp::DelEndpoint(_) | MapOp::DelIpcache(_) | MapOp::DelCidr(_) | MapOp::DelPolicy(_)
    )
}

/// Removes Palisade's netlink filters from `ifname` if it still exists (a
/// missing filter is fine).
fn detach_netlink(ifname: &str) -> Result<(), DataplaneError> {
    if ifindex_of(ifname).is_none() {
        return Ok(());
    }
    for (prog, attach_type, _) in HOOKS {
        match tc::qdisc_detach_program(ifname, attach_type, prog) {
            Ok(()) => {}
            Err(tc::TcError::IoError(e)) if e.kind() == io::ErrorKind::NotFound => {}
            Err(e) => return Err(kernel_error(format!("detaching {prog} from {ifname}"), e)),
        }
    }
    Ok(())
}

/// Detaches every link pinned in the version folder `old` and removes the
/// folder (its maps go once nothing uses them).
fn remove_version_folder(old: &PinPaths) -> Result<(), DataplaneError> {
    if let Ok(entries) = fs::read_dir(old.links_dir()) {
        for entry in entries.flatten() {
            detach_pinned_link(&entry.path())?;
        }
    }
    let dir = old.version_dir();
    match fs::remove_dir_all(&dir) {
        Ok(()) => Ok(()),
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(()),
        Err(e) => Err(kernel_error(format!("removing {}", dir.display()), e)),
    }
}

fn program<'a>(ebpf: &'a mut Ebpf, name: &str) -> Result<&'a mut SchedClassifier, DataplaneError> {
    let prog = ebpf.program_mut(name).ok_or_else(|| {
        kernel_error(
            format!("eBPF object has no program {name}"),
            "missing program",
        )
    })?;
    prog.try_into()
        .map_err(|e| kernel_error(format!("program {name} is not a classifier"), e))
}

/// Refuses a pin folder whose config map has another layout (it would not
/// be understood).
fn check_pinned_layout(paths: &PinPaths) -> Result<(), DataplaneError> {
    let path = paths.map(names::CONFIG);
    if !path.exists() {
        return Ok(());
    }
    let what = || format!("checking {}", path.display());
    let data = MapData::from_pin(&path).map_err(|e| kernel_error(what(), e))?;
    let config: Array<MapData, Config> =
        Array::try_from(Map::Array(data)).map_err(|e| kernel_error(what(), e))?;
    let cfg = config.get(&0, 0).map_err(|e| kernel_error(what(), e))?;
    if cfg.layout_version != 0 && cfg.layout_version != LAYOUT_VERSION {
        return Err(kernel_error(
            what(),
            format!(
                "pinned maps have layout version {}, this agent understands {LAYOUT_VERSION}",
                cfg.layout_version
            ),
        ));
    }
    Ok(())
}

/// Detaches the link pinned at `path` at once (`BPF_LINK_DETACH`; merely
/// removing the pin would release it only after an RCU grace period), then
/// removes the pin. A missing pin or an already defunct link is fine.
fn detach_pinned_link(path: &Path) -> Result<(), DataplaneError> {
    use std::os::{
        fd::{AsRawFd, FromRawFd, OwnedFd},
        unix::ffi::OsStrExt,
    };
    const BPF_OBJ_GET: libc::c_long = 7;
    const BPF_LINK_DETACH: libc::c_long = 34;
    #[repr(C)]
    struct ObjGet {
        pathname: u64,
        bpf_fd: u32,
        file_flags: u32,
    }
    #[repr(C)]
    struct LinkDetach {
        link_fd: u32,
    }
    let c = CString::new(path.as_os_str().as_bytes())
        .map_err(|e| kernel_error(format!("link pin path {}", path.display()), e))?;
    let get = ObjGet {
        pathname: c.as_ptr() as u64,
        bpf_fd: 0,
        file_flags: 0,
    };
    // SAFETY: a valid bpf_attr prefix for BPF_OBJ_GET; `c` outlives the call.
    let fd = unsafe {
        libc::syscall(
            libc::SYS_bpf,
            BPF_OBJ_GET,
            &get as *const ObjGet,
            std::mem::size_of::<ObjGet>(),
        )
    };
    if let Ok(raw) = i32::try_from(fd) {
        if raw >= 0 {
            // SAFETY: the kernel just returned this fd to us.
            let link = unsafe { OwnedFd::from_raw_fd(raw) };
            let detach = LinkDetach {
                link_fd: link.as_raw_fd() as u32,
            };
            // SAFETY: a valid bpf_attr prefix for BPF_LINK_DETACH. A failure
            // means the link is already defunct, which is what we want.
            let _ = unsafe {
                libc::syscall(
                    libc::SYS_bpf,
                    BPF_LINK_DETACH,
                    &detach as *const LinkDetach,
                    std::mem::size_of::<LinkDetach>(),
                )
            };
        }
    }
    remove_file(path)
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
