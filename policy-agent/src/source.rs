//! Sources of cluster state, behind one boundary: a source sends
//! [`Change`]s on a channel and the agent only ever reads that channel.
//!
//! Two sources exist:
//!
//! - [`kube`] (`run --kube`): watches on Pods, Namespaces,
//!   NetworkPolicies, Services and EndpointSlices in the API server. Every watch event becomes one
//!   [`Change`] carrying only what the compiler needs (the model's
//!   [`PodInfo`], [`NamespaceInfo`], [`Policy`]), never the API object; a
//!   finished list becomes [`Change::Listed`], a lost watch (an error, a
//!   403 from RBAC) [`Change::Lost`].
//! - [`file`] (`run --manifests`): manifest files, sent whole as
//!   [`Change::Replace`] whenever they change.
//!
//! [`once`] reads the API server's state a single time through the same
//! watchers, for the users' tools (`simulate --kube`, `explain --kube`).
//!
//! The agent compares each change with what it holds: a change that
//! changes nothing (a status heartbeat, a new resourceVersion, a relist of
//! the same objects) costs a comparison and no compile.

pub mod file;
pub mod kube;
pub mod once;

use std::collections::BTreeSet;

use policy_engine::model::service::EndpointSubset;
use policy_engine::model::slices::SliceRef;
use policy_engine::model::{
    NamespaceInfo, PodInfo, PodRef, Policy, PolicyRef, ServiceInfo, ServiceRef, Snapshot,
};
use tokio::sync::mpsc;

/// How many changes a source may queue before it waits for the agent.
pub const CHANNEL_CAPACITY: usize = 4096;

/// One change of cluster state.
#[derive(Clone, Debug, PartialEq)]
pub enum Change {
    /// The whole state, replacing everything (file mode). Every kind counts
    /// as listed afterwards.
    Replace(Snapshot),
    /// A pod appeared or changed (`Some`), or went away or terminated
    /// (`None`).
    Pod(PodRef, Option<PodInfo>),
    /// A namespace appeared or changed (`Some`), or went away (`None`).
    Namespace(String, Option<NamespaceInfo>),
    /// A NetworkPolicy appeared or changed (`Some`), or went away (`None`).
    Policy(PolicyRef, Box<Option<Policy>>),
    /// Which version of a NetworkPolicy the last [`Change::Policy`] for it
    /// was, and when its watch event arrived. Sent right *after* that
    /// change (so by the time the agent takes it, the policy is in its
    /// state); read only to report enforcement ([`crate::events`]), never
    /// compiled.
    PolicyOrigin(PolicyRef, crate::events::Origin),
    /// A Service appeared or changed (`Some`), or went away (`None`).
    Service(ServiceRef, Option<ServiceInfo>),
    /// One EndpointSlice of a Service (its ready backends) appeared or
    /// changed (`Some`), or went away (`None`).
    EndpointSlice(SliceRef, Option<EndpointSubset>),
    /// A (re)list of one kind finished: the objects of that kind not named
    /// here are gone, and the kind is in sync with the API server.
    Listed(Listed),
    /// How far the watch of `kind` has got: how many objects the API server
    /// holds (terminated pods and objects the model rejected included) and
    /// the newest `resourceVersion` seen. The agent logs it with every
    /// state it enforces ([`kube::STATE_LOG`]), so a harness can tell when
    /// it has caught up.
    Seen {
        /// The kind.
        kind: Kind,
        /// Objects of that kind the API server holds.
        count: usize,
        /// Newest `resourceVersion` seen (an etcd revision).
        newest: u64,
    },
    /// The watch of `kind` failed (API server unreachable, RBAC forbids it,
    /// ...): the agent is not ready until that kind is listed again, and
    /// keeps enforcing what it has meanwhile.
    Lost {
        /// The kind whose watch failed.
        kind: Kind,
        /// Why, in words (the API server's message when it gave one).
        reason: String,
    },
}

/// The kinds of objects the agent watches.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Kind {
    /// core/v1 Pods.
    Pods,
    /// core/v1 Namespaces.
    Namespaces,
    /// networking.k8s.io/v1 NetworkPolicies.
    NetworkPolicies,
    /// core/v1 Services (their ClusterIPs are translated by kube-proxy).
    Services,
    /// discovery.k8s.io EndpointSlices (the backends kube-proxy
    /// translates to; `v1`, or `v1beta1` where the API server serves no
    /// `v1`).
    EndpointSlices,
}

impl Kind {
    /// Every kind.
    pub const ALL: [Kind; 5] = [
        Kind::Pods,
        Kind::Namespaces,
        Kind::NetworkPolicies,
        Kind::Services,
        Kind::EndpointSlices,
    ];

    /// The API resource name (as RBAC and `kubectl` spell it).
    pub fn resource(self) -> &'static str {
        match self {
            Kind::Pods => "pods",
            Kind::Namespaces => "namespaces",
            Kind::NetworkPolicies => "networkpolicies",
            Kind::Services => "services",
            Kind::EndpointSlices => "endpointslices",
        }
    }
}

impl std::fmt::Display for Kind {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.resource())
    }
}

/// Everything a finished list returned, by kind.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Listed {
    /// The pods listed (terminated ones excluded).
    Pods(BTreeSet<PodRef>),
    /// The namespaces listed.
    Namespaces(BTreeSet<String>),
    /// The NetworkPolicies listed.
    NetworkPolicies(BTreeSet<PolicyRef>),
    /// The Services listed.
    Services(BTreeSet<ServiceRef>),
    /// The EndpointSlices listed.
    EndpointSlices(BTreeSet<SliceRef>),
}

impl Listed {
    /// The kind listed.
    pub fn kind(&self) -> Kind {
        match self {
            Listed::Pods(_) => Kind::Pods,
            Listed::Namespaces(_) => Kind::Namespaces,
            Listed::NetworkPolicies(_) => Kind::NetworkPolicies,
            Listed::Services(_) => Kind::Services,
            Listed::EndpointSlices(_) => Kind::EndpointSlices,
        }
    }
}

/// The receiving end every source feeds.
pub type ChangeRx = mpsc::Receiver<Change>;
/// The sending end a source holds.
pub type ChangeTx = mpsc::Sender<Change>;

/// A channel of [`CHANNEL_CAPACITY`] changes.
pub fn channel() -> (ChangeTx, ChangeRx) {
    mpsc::channel(CHANNEL_CAPACITY)
}
