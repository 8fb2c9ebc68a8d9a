//! What [`KernelDataplane::open`] is asked for: where the pins go, the map
//! sizes, how programs are attached and which events are reported.

use super::*;

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
    /// Conntrack entries one endpoint may hold per direction before its
    /// new flows are dropped (0: no bound; see `ct_budget`).
    pub conntrack_per_endpoint: u32,
    /// Layout version naming the version folder (tests fake an older
    /// agent's folder with it).
    pub(super) version_folder: u32,
}

impl KernelOptions {
    /// Defaults with the given base pin folder.
    pub fn new(pin_dir: impl Into<PathBuf>) -> Self {
        Self {
            pin_dir: pin_dir.into(),
            sizes: MapSizes::default(),
            attach_mode: AttachMode::default(),
            events_for_allowed: false,
            conntrack_per_endpoint: super::ct_budget::DEFAULT_PER_ENDPOINT,
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
