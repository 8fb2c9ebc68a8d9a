//! The boundary between the agent and the kernel: a small trait with a
//! kernel implementation (`kernel`, aya) and an in-memory one ([`fake`])
//! used to test everything above the dataplane without a kernel.

use std::collections::{BTreeMap, BTreeSet};

use policy_common::{Addr, CtCount};
use policy_engine::capacity::Capacity;
use policy_engine::state::MapState;

pub mod kernel;

/// Opens the kernel dataplane with default options, pinning under
/// `pin_dir` (e.g. `/sys/fs/bpf/palisade/<instance>`) and adopting what a
/// previous agent pinned there. See [`kernel::KernelDataplane::open`] for
/// the options.
pub fn open_kernel(pin_dir: &std::path::Path) -> Result<kernel::KernelDataplane, DataplaneError> {
    kernel::KernelDataplane::open(kernel::KernelOptions::new(pin_dir))
}

/// Failures of a dataplane operation; each names what it was doing.
#[derive(Debug, thiserror::Error)]
pub enum DataplaneError {
    /// Loading, attaching, pinning or map access failed.
    #[error("{what}: {source}")]
    Kernel {
        /// What was being done, naming the interface/map.
        what: String,
        /// Cause.
        #[source]
        source: Box<dyn std::error::Error + Send + Sync>,
    },
    /// The interface does not exist (in the agent's network namespace).
    #[error("interface {ifname} not found")]
    NoSuchInterface {
        /// Interface name.
        ifname: String,
    },
}

/// One endpoint's use of its conntrack budget.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct ConntrackUsage {
    /// Entries of flows that entered the pod first (as last counted).
    pub entries_ingress: u64,
    /// Entries of flows the pod started.
    pub entries_egress: u64,
    /// New flows into the pod dropped because it held its budget.
    pub refused_ingress: u64,
    /// New flows of the pod dropped because it held its budget.
    pub refused_egress: u64,
}

/// A walk of the conntrack map that holds its own handle on the map, so
/// it runs without the dataplane (outside the agent's lock): each
/// endpoint's live entries, by endpoint id.
pub type ConntrackWalk = Box<dyn FnOnce() -> BTreeMap<u32, CtCount> + Send>;

/// What the agent needs from a dataplane.
pub trait Dataplane: Send {
    /// Attaches the programs to `ifname` (a pod's host-side veth) and maps
    /// it to `ep_id`. Until a state containing `ep_id` is applied, the
    /// endpoint's packets are dropped (fail closed).
    fn attach_endpoint(&mut self, ifname: &str, ep_id: u32) -> Result<(), DataplaneError>;

    /// Takes back an endpoint a previous agent enforced, before the first
    /// state is applied. By default the same as
    /// [`attach_endpoint`](Self::attach_endpoint); a dataplane taking over
    /// from an agent of another map layout only registers the endpoint
    /// here and attaches once a state has been applied (so the pod is
    /// never checked against empty maps).
    fn restore_endpoint(&mut self, ifname: &str, ep_id: u32) -> Result<(), DataplaneError> {
        self.attach_endpoint(ifname, ep_id)
    }

    /// Detaches from `ifname` if it still exists and forgets the endpoint.
    fn detach_endpoint(&mut self, ifname: &str, ep_id: u32) -> Result<(), DataplaneError>;

    /// Makes the kernel enforce `state`, atomically for every packet.
    fn apply(&mut self, state: &MapState) -> Result<(), DataplaneError>;

    /// Source validation: makes endpoint id → the addresses its pod may
    /// send from exactly `sources` (a packet leaving a pod from any other
    /// address is dropped). Called before [`apply`](Self::apply), so an
    /// endpoint's addresses are in place before it becomes ready.
    fn set_sources(
        &mut self,
        sources: &BTreeMap<u32, BTreeSet<Addr>>,
    ) -> Result<(), DataplaneError>;

    /// Attaches the node-device check (`node_egress`) to `ifname`, the
    /// node's overlay device toward other nodes (Flannel's `flannel.1`),
    /// so local pods' egress to Service backends on other nodes is judged
    /// there after kube-proxy's translation. Idempotent; a dataplane
    /// without such a check does nothing.
    fn attach_node_device(&mut self, ifname: &str) -> Result<(), DataplaneError> {
        let _ = ifname;
        Ok(())
    }

    /// Attaches the external-device check (`node_ingress`) to `ifname`, one
    /// of the node's devices toward the world (its uplink), so NodePort
    /// clients that kube-proxy masquerades are judged as themselves.
    /// Idempotent; a dataplane without such a check does nothing.
    fn attach_external_device(&mut self, ifname: &str) -> Result<(), DataplaneError> {
        let _ = ifname;
        Ok(())
    }

    /// Packets dropped so far, by `policy_common::reason` code (exact
    /// counters, unlike the events). Empty when the dataplane keeps none.
    fn drop_counts(&self) -> BTreeMap<u8, u64> {
        BTreeMap::new()
    }

    /// Each endpoint's conntrack entries and refused new flows, by
    /// endpoint id (see `kernel::ct_budget`).
    fn conntrack_usage(&self) -> BTreeMap<u32, ConntrackUsage> {
        BTreeMap::new()
    }

    /// The walk of a recount of the conntrack map (entries evicted or
    /// expired untouched are still counted until one), to run outside the
    /// agent's lock: on a full map it takes long, and nothing else of the
    /// agent needs to wait for it. `None`: nothing to recount. What it
    /// finds goes to [`correct_conntrack`](Self::correct_conntrack).
    fn conntrack_walk(&mut self) -> Option<ConntrackWalk> {
        None
    }

    /// Writes what the last [`conntrack_walk`](Self::conntrack_walk)
    /// found as the endpoints' counts, except for endpoints forgotten
    /// since it began (their ids may be another pod's by now).
    fn correct_conntrack(&mut self, live: &BTreeMap<u32, CtCount>) -> Result<(), DataplaneError> {
        let _ = live;
        Ok(())
    }

    /// Room per generation in the maps a compiled state fills, as the
    /// maps really are (adopted maps keep the size they were created
    /// with); `None` when unbounded. The agent fits every state into it
    /// before [`apply`](Self::apply) (see `policy_engine::capacity`).
    fn capacity(&self) -> Option<Capacity> {
        None
    }

    /// Whether interface `ifname` still exists (a sandbox whose host veth
    /// is gone is dead, whether or not its CNI DEL came).
    fn interface_exists(&self, _ifname: &str) -> bool {
        true
    }
}

/// In-memory dataplane: remembers what it was told.
pub mod fake {
    use std::collections::{BTreeMap, BTreeSet};
    use std::sync::Arc;

    use policy_common::CtCount;

    use super::{
        Addr, Capacity, ConntrackUsage, ConntrackWalk, Dataplane, DataplaneError, MapState,
    };

    /// What [`Dataplane::conntrack_walk`] runs in a [`FakeDataplane`].
    #[derive(Clone)]
    pub struct WalkHook(pub Arc<dyn Fn() -> BTreeMap<u32, CtCount> + Send + Sync>);

    impl std::fmt::Debug for WalkHook {
        fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
            f.write_str("WalkHook")
        }
    }

    /// Records attachments and the last applied state.
    #[derive(Debug, Default)]
    pub struct FakeDataplane {
        /// ifname → ep_id.
        pub endpoints: BTreeMap<String, u32>,
        /// Last applied state.
        pub state: MapState,
        /// Number of successful `apply` calls.
        pub applies: usize,
        /// Last source addresses set, by endpoint id.
        pub sources: BTreeMap<u32, BTreeSet<Addr>>,
        /// What [`Dataplane::drop_counts`] reports.
        pub drops: BTreeMap<u8, u64>,
        /// When set, `apply` fails with this message (and keeps the old
        /// state), as a kernel refusing a map write would.
        pub fail_applies: Option<String>,
        /// What [`Dataplane::capacity`] reports (unbounded when `None`).
        pub capacity: Option<Capacity>,
        /// Interfaces [`Dataplane::interface_exists`] says are gone.
        pub vanished: BTreeSet<String>,
        /// What [`Dataplane::conntrack_usage`] reports.
        pub conntrack: BTreeMap<u32, ConntrackUsage>,
        /// What [`Dataplane::conntrack_walk`] runs (none: no walk).
        pub walk: Option<WalkHook>,
        /// Every [`Dataplane::correct_conntrack`] call's counts, in order.
        pub corrected: Vec<BTreeMap<u32, CtCount>>,
    }

    impl Dataplane for FakeDataplane {
        fn attach_endpoint(&mut self, ifname: &str, ep_id: u32) -> Result<(), DataplaneError> {
            self.endpoints.insert(ifname.to_string(), ep_id);
            Ok(())
        }

        fn detach_endpoint(&mut self, ifname: &str, _ep_id: u32) -> Result<(), DataplaneError> {
            self.endpoints.remove(ifname);
            Ok(())
        }

        fn apply(&mut self, state: &MapState) -> Result<(), DataplaneError> {
            if let Some(message) = &self.fail_applies {
                return Err(DataplaneError::Kernel {
                    what: "writing the maps".into(),
                    source: message.clone().into(),
                });
            }
            self.state = state.clone();
            self.applies += 1;
            Ok(())
        }

        fn set_sources(
            &mut self,
            sources: &BTreeMap<u32, BTreeSet<Addr>>,
        ) -> Result<(), DataplaneError> {
            self.sources = sources.clone();
            Ok(())
        }

        fn drop_counts(&self) -> BTreeMap<u8, u64> {
            self.drops.clone()
        }

        fn conntrack_usage(&self) -> BTreeMap<u32, ConntrackUsage> {
            self.conntrack.clone()
        }

        fn capacity(&self) -> Option<Capacity> {
            self.capacity
        }

        fn interface_exists(&self, ifname: &str) -> bool {
            !self.vanished.contains(ifname)
        }

        fn conntrack_walk(&mut self) -> Option<ConntrackWalk> {
            let hook = self.walk.clone()?;
            Some(Box::new(move || (hook.0)()))
        }

        fn correct_conntrack(
            &mut self,
            live: &BTreeMap<u32, CtCount>,
        ) -> Result<(), DataplaneError> {
            self.corrected.push(live.clone());
            Ok(())
        }
    }
}
