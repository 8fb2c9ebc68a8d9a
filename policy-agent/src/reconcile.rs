//! The agent's core: cluster state + local endpoints → compile → apply.
//!
//! The agent holds one [`Snapshot`] (the model's slim entries, with the
//! addresses CNI reported for local pods and the node's own addresses) and
//! an incremental [`Engine`](policy_engine::compile::Engine). Changes from
//! the source ([`changes`]) that change nothing are dropped; the others go
//! through the engine's incremental paths, and the dataplane is written
//! only when the resulting diff is not empty, so a no-op never bumps the
//! policy revision. [`readiness`] says whether the agent may call itself
//! ready.
//!
//! Everything here is synchronous and kernel-free (the dataplane is behind
//! the [`Dataplane`] trait), so it is tested with the in-memory dataplane.

pub mod adopt;
mod changes;
pub mod quarantine;
pub mod readiness;

use std::collections::{BTreeMap, BTreeSet};
use std::net::IpAddr;
use std::path::PathBuf;

use policy_engine::capacity::{self, Denied, Exceeded, MapKind};
use policy_engine::compile::CompileError;
use policy_engine::model::addr::to_addr;
use policy_engine::model::{PodRef, PolicyRef, Snapshot};
use policy_engine::state::MapOp;

use crate::dataplane::{Dataplane, DataplaneError};
use crate::endpoints::{Endpoint, Registry};
pub use changes::Applied;
use readiness::SyncState;

/// Failures of an agent operation; each names the pod or object involved.
#[derive(Debug, thiserror::Error)]
pub enum AgentError {
    /// The pod is not (yet) in the cluster state.
    #[error("pod {pod} is not in the cluster state the agent sees")]
    UnknownPod {
        /// The pod.
        pod: PodRef,
    },
    /// The cluster state has not been listed completely yet: nothing can be
    /// enforced correctly before it is.
    #[error("pod {pod}: the cluster state is not synced yet ({why})")]
    NotSynced {
        /// The pod.
        pod: PodRef,
        /// What is missing.
        why: String,
    },
    /// An address CNI reported does not parse.
    #[error("pod {pod}: CNI reported an invalid IP address {value:?}")]
    BadAddress {
        /// The pod.
        pod: PodRef,
        /// The text.
        value: String,
    },
    /// A map every endpoint shares is too small for the cluster state:
    /// nothing was written, the last good state stays enforced.
    #[error("{0}; the last good state stays enforced")]
    MapFull(#[from] Exceeded),
    /// The kernel side failed.
    #[error("pod {pod}: {source}")]
    Dataplane {
        /// The pod, or `-` for a global apply.
        pod: String,
        /// Cause.
        #[source]
        source: DataplaneError,
    },
}

/// A pod wired by CNI, as the agent needs it.
#[derive(Clone, Debug)]
pub struct NewEndpoint {
    /// `CNI_CONTAINERID`.
    pub container_id: String,
    /// The pod.
    pub pod: PodRef,
    /// Host-side veth (already checked to be a veth).
    pub ifname: String,
    /// `CNI_IFNAME` (the interface inside the pod).
    pub pod_ifname: String,
    /// Addresses CNI gave the pod.
    pub ips: Vec<IpAddr>,
}

/// The node agent's state.
pub struct Agent<D: Dataplane> {
    /// The cluster state as the compiler sees it: the source's, with the
    /// addresses CNI reported for local pods and the node's own addresses.
    snapshot: Snapshot,
    node_addrs: Vec<IpAddr>,
    registry: Registry,
    engine: policy_engine::compile::Engine,
    dataplane: D,
    reported: BTreeSet<String>,
    applies: u64,
    /// When the last compiled state was written.
    last_apply: Option<std::time::SystemTime>,
    state_file: Option<PathBuf>,
    /// This node's name: its running pods must all be enforced.
    node: Option<String>,
    coverage: crate::coverage::Coverage,
    sync: SyncState,
    /// The engine has compiled the complete cluster state once.
    compiled: bool,
    /// Why the last apply failed (the dataplane lags the engine until an
    /// apply succeeds).
    apply_failed: Option<String>,
    /// Per kind, the source's last [`Change::Seen`](crate::source::Change::Seen):
    /// objects in the API server and newest resourceVersion.
    progress: std::collections::BTreeMap<crate::source::Kind, (usize, u64)>,
    /// How the last written state fitted the maps.
    fit: FitReport,
    /// Where the last successful [`Agent::add`] spent its time.
    last_add: AddTimings,
    /// Reports enforced policy changes as Kubernetes Events (`--kube`).
    enforcement: Option<crate::events::Reporter>,
}

/// Where one [`Agent::add`] spent its time (logged with each CNI ADD, and
/// read by the benchmarks).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct AddTimings {
    /// Recording the endpoint and attaching the programs to its veth.
    pub attach: std::time::Duration,
    /// Compiling what the endpoint changes.
    pub compile: std::time::Duration,
    /// Writing the maps and flipping to them.
    pub apply: std::time::Duration,
}

/// How the compiled state fitted the dataplane's maps (see
/// [`policy_engine::capacity`]).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct FitReport {
    /// Room per generation, when the dataplane has bounds.
    pub capacity: Option<capacity::Capacity>,
    /// Entries per generation the last compiled state needs, per map.
    pub needed: BTreeMap<MapKind, usize>,
    /// Endpoints denied all traffic because their entries do not fit, with
    /// their pod.
    pub denied: BTreeMap<u32, (PodRef, Denied)>,
    /// Endpoints whose policy entries are in the maps, with how many.
    pub admitted: BTreeMap<u32, usize>,
    /// A shared map too small for the state (nothing written).
    pub exceeded: Option<Exceeded>,
}

impl<D: Dataplane> Agent<D> {
    /// An agent enforcing nothing yet, with the node's own addresses (traffic
    /// from them to local pods is always allowed).
    pub fn new(dataplane: D, node_addrs: Vec<IpAddr>) -> Self {
        let mut engine = policy_engine::compile::Engine::new();
        engine.set_limits(policy_engine::compile::Limits {
            cidr_prefixes: dataplane.capacity().map(|c| c.cidrs),
            ..policy_engine::compile::Limits::default()
        });
        Self {
            snapshot: Snapshot {
                host_addrs: node_addrs.clone(),
                ..Snapshot::default()
            },
            node_addrs,
            registry: Registry::default(),
            engine,
            dataplane,
            reported: BTreeSet::new(),
            applies: 0,
            last_apply: None,
            state_file: None,
            sync: SyncState::default(),
            compiled: false,
            apply_failed: None,
            progress: Default::default(),
            fit: FitReport::default(),
            last_add: AddTimings::default(),
            node: None,
            coverage: crate::coverage::Coverage::default(),
            enforcement: None,
        }
    }

    /// Reports every policy change it enforces, and every policy that fails
    /// closed, to `sender` as this node's (see [`crate::events`]).
    pub fn with_events(mut self, node: &str, sender: crate::events::EventSender) -> Self {
        self.enforcement = Some(crate::events::Reporter {
            tracker: crate::events::Tracker::new(node),
            sender,
        });
        self
    }

    /// Names the node the agent runs on: its running pods without an
    /// endpoint are reported as unenforced (see [`crate::coverage`]).
    pub fn with_node(mut self, node: Option<String>) -> Self {
        self.node = node;
        self
    }

    /// Local pods that should be enforced and are not, with since when.
    pub fn unenforced(&self) -> &BTreeMap<PodRef, std::time::Instant> {
        self.coverage.pods()
    }

    /// Local pods unenforced for longer than [`crate::coverage::GRACE`]:
    /// while there is one, the agent is not ready.
    pub fn overdue_unenforced(&self) -> Vec<PodRef> {
        self.coverage
            .overdue(std::time::Instant::now(), crate::coverage::GRACE)
    }

    fn update_coverage(&mut self) {
        if let Some(node) = &self.node {
            let pods = crate::coverage::unenforced(&self.snapshot, node, &self.registry);
            for p in &pods {
                if !self.coverage.pods().contains_key(p) {
                    tracing::warn!(pod = %p, "local pod without enforcement (no endpoint)");
                }
            }
            self.coverage.update(std::time::Instant::now(), pods);
        }
    }

    /// The node the agent runs on, if it was told.
    pub fn node(&self) -> Option<&str> {
        self.node.as_deref()
    }

    /// The last compile (state, identities, rules).
    pub fn compiled(&self) -> &policy_engine::compile::Compiled {
        self.engine.current()
    }

    /// When the last compiled state was written.
    pub fn last_apply(&self) -> Option<std::time::SystemTime> {
        self.last_apply
    }

    /// Keeps the endpoint list in `path` (rewritten on every ADD and DEL) so
    /// a restarted agent can [`Agent::restore`] it.
    pub fn with_state_file(mut self, path: PathBuf) -> Self {
        self.state_file = Some(path);
        self
    }

    /// Takes back endpoints a previous agent enforced (from the state file),
    /// before the first state is applied: their pinned programs and map
    /// entries are adopted as they are, so their pods never see a gap
    /// (after a map layout change the new programs are attached only once
    /// the first state is applied, see [`Dataplane::restore_endpoint`]).
    /// Endpoints whose interface is gone are forgotten.
    pub fn restore(&mut self, endpoints: Vec<Endpoint>) {
        for ep in endpoints {
            match self.dataplane.restore_endpoint(&ep.ifname, ep.ep_id) {
                Ok(()) => {
                    tracing::info!(pod = %ep.pod, ifname = %ep.ifname, "endpoint adopted");
                    self.registry.insert(ep);
                }
                Err(e) => {
                    tracing::warn!(pod = %ep.pod, ifname = %ep.ifname, error = %e, "endpoint not adopted")
                }
            }
        }
        self.persist();
    }

    fn persist(&self) {
        if let Some(path) = &self.state_file {
            if let Err(e) = crate::endpoints::save(path, self.registry.iter_oldest_first()) {
                tracing::error!(error = %e, "cannot save the endpoint list");
            }
        }
    }

    /// The dataplane (for tests and status).
    pub fn dataplane(&self) -> &D {
        &self.dataplane
    }

    /// Attaches the node-device check to `ifname` (see
    /// [`Dataplane::attach_node_device`]).
    pub fn attach_node_device(&mut self, ifname: &str) -> Result<(), DataplaneError> {
        self.dataplane.attach_node_device(ifname)
    }

    /// Attaches the external-device check to `ifname` (see
    /// [`Dataplane::attach_external_device`]).
    pub fn attach_external_device(&mut self, ifname: &str) -> Result<(), DataplaneError> {
        self.dataplane.attach_external_device(ifname)
    }

    /// The dataplane, mutably (for tests).
    pub fn dataplane_mut(&mut self) -> &mut D {
        &mut self.dataplane
    }

    /// The local endpoints.
    pub fn endpoints(&self) -> &Registry {
        &self.registry
    }

    /// The cluster state the compiler sees: the source's, with the
    /// addresses CNI reported for local pods and the node's own addresses.
    pub fn snapshot(&self) -> &Snapshot {
        &self.snapshot
    }

    /// Number of policies the last compile found invalid.
    pub fn invalid_policies(&self) -> usize {
        let mut invalid: BTreeSet<&PolicyRef> = BTreeSet::new();
        for e in &self.engine.current().errors {
            if let CompileError::InvalidPolicy { policy, .. } = e {
                invalid.insert(policy);
            }
        }
        invalid.len()
    }

    /// The policies over their budget in the last compile (they fail
    /// closed for the pods they select), each with why.
    pub fn over_budget_policies(&self) -> Vec<&CompileError> {
        self.engine
            .current()
            .errors
            .iter()
            .filter(|e| matches!(e, CompileError::OverBudget { .. }))
            .collect()
    }

    /// Gives the engine the budgets the dataplane's maps imply (the CIDR
    /// map's room); when they change, compiles everything again with them.
    fn sync_limits(&mut self) {
        let limits = policy_engine::compile::Limits {
            cidr_prefixes: self.dataplane.capacity().map(|c| c.cidrs),
            ..*self.engine.limits()
        };
        if limits != *self.engine.limits() {
            self.engine.set_limits(limits);
            if self.compiled {
                let _ = self
                    .engine
                    .update(&self.snapshot, &self.registry.assignment());
            }
        }
    }

    /// Number of successful applies so far (one per change that changed
    /// the compiled state, not one per event).
    pub fn applies(&self) -> u64 {
        self.applies
    }

    /// Whether the agent enforces a complete cluster state: every kind
    /// listed and in sync, compiled and written without failure. Weaker
    /// than [`readiness`](Self::readiness) (a pod denied by a full map or
    /// not adopted yet does not count against it): what the chain entry
    /// waits for (see [`crate::uninstall::ChainKeeper`]).
    pub fn enforces(&self) -> bool {
        self.compiled && self.apply_failed.is_none() && self.sync.problems().is_empty()
    }

    /// `Ok` while the agent may say it is ready (`/readyz`, CNI STATUS):
    /// every kind listed and in sync, and the last apply succeeded;
    /// otherwise why not, in words.
    pub fn readiness(&self) -> Result<(), String> {
        let mut why = self.sync.problems();
        if let Some(e) = &self.apply_failed {
            why.push(format!("the last apply failed: {e}"));
        }
        if !self.fit.denied.is_empty() {
            let names: Vec<String> = self
                .fit
                .denied
                .values()
                .map(|(pod, d)| {
                    format!(
                        "{pod} (the {} map is full: needs {} entries, {} free; raise {})",
                        d.map,
                        d.needed,
                        d.free,
                        d.map.flag()
                    )
                })
                .collect();
            why.push(format!("pods denied all traffic: {}", names.join(", ")));
        }
        let overdue = self.overdue_unenforced();
        if !overdue.is_empty() {
            let names: Vec<String> = overdue.iter().map(ToString::to_string).collect();
            why.push(format!(
                "local pods without enforcement: {}",
                names.join(", ")
            ));
        }
        if why.is_empty() && !self.compiled {
            why.push("nothing compiled yet".into());
        }
        if why.is_empty() {
            Ok(())
        } else {
            Err(why.join("; "))
        }
    }

    /// Replaces the cluster state and enforces it.
    pub fn set_snapshot(&mut self, snapshot: Snapshot) -> Result<(), AgentError> {
        self.apply_changes(vec![crate::source::Change::Replace(snapshot)])
            .map(|_| ())
    }

    /// Enforces policy on a newly wired pod; returns once its policy is in
    /// the maps. Until then its packets are dropped.
    pub fn add(&mut self, new: NewEndpoint) -> Result<(), AgentError> {
        // Sandboxes that died without a DEL (an earlier sandbox of this
        // pod, typically) go first.
        self.forget_vanished()?;
        if !self.compiled {
            return Err(AgentError::NotSynced {
                pod: new.pod,
                why: self.readiness().err().unwrap_or_default(),
            });
        }
        if !self.snapshot.pods.contains_key(&new.pod) {
            return Err(AgentError::UnknownPod { pod: new.pod });
        }
        if let Some(old) = self.registry.get(&new.container_id).cloned() {
            // A repeated ADD for the same sandbox: start over.
            self.detach(&old);
            self.registry.remove(&old.container_id);
        }
        // A pod adopted before CNI told us about it: the sandbox CNI
        // reports now is the one to enforce.
        let adopted: Vec<Endpoint> = self
            .registry
            .iter()
            .filter(|e| e.pod == new.pod && adopt::is_adopted(e))
            .cloned()
            .collect();
        for old in adopted {
            if old.ifname != new.ifname {
                self.detach(&old);
            }
            self.registry.remove(&old.container_id);
        }
        // A veth quarantined before its ADD came: the attach replaces it.
        self.take_over_quarantine(&new.ifname);
        // Recorded (and saved) before the attach: an agent killed in between
        // restores the endpoint instead of handing its id to another pod
        // while the old interface still carries it.
        let ep_id = self.registry.allocate_id();
        let ep = Endpoint {
            container_id: new.container_id,
            pod: new.pod,
            ifname: new.ifname,
            pod_ifname: new.pod_ifname,
            ep_id,
            ips: new.ips,
        };
        let started = std::time::Instant::now();
        self.record_and_attach(&ep)?;
        let attached = std::time::Instant::now();
        let mut ops = Vec::new();
        if !ep.ips.is_empty() {
            let before = self.snapshot.pods.get(&ep.pod).map(|p| p.ips.clone());
            self.snapshot.set_pod_ips(&ep.pod, ep.ips.clone());
            let after = self.snapshot.pods.get(&ep.pod).map(|p| &p.ips);
            if before.as_ref() != after {
                // CNI knew the addresses before the API server did.
                ops = self.engine.pod_changed(&self.snapshot, &ep.pod);
            }
        }
        ops.extend(
            self.engine
                .endpoints_changed(&self.snapshot, &self.registry.assignment()),
        );
        let compiled = std::time::Instant::now();
        self.apply(&ops)?;
        self.last_add = AddTimings {
            attach: attached - started,
            compile: compiled - attached,
            apply: compiled.elapsed(),
        };
        Ok(())
    }

    /// Where the last successful [`Agent::add`] spent its time.
    pub fn last_add_timings(&self) -> AddTimings {
        self.last_add
    }

    /// Records `ep` (saved before the attach, see [`Self::add`]) and
    /// attaches it; on failure forgets it again, leaving no debris.
    fn record_and_attach(&mut self, ep: &Endpoint) -> Result<(), AgentError> {
        self.registry.insert(ep.clone());
        self.persist();
        if let Err(source) = self.dataplane.attach_endpoint(&ep.ifname, ep.ep_id) {
            self.registry.remove(&ep.container_id);
            self.persist();
            return Err(AgentError::Dataplane {
                pod: ep.pod.to_string(),
                source,
            });
        }
        Ok(())
    }

    /// Forgets a sandbox's endpoint (idempotent).
    pub fn del(&mut self, container_id: &str) -> Result<(), AgentError> {
        let Some(ep) = self.registry.remove(container_id) else {
            return Ok(());
        };
        self.detach(&ep);
        self.persist();
        self.recompile()
    }

    /// CNI GC: forgets every endpoint whose sandbox (container id and
    /// `CNI_IFNAME`) is not in `valid`, then enforces the rest. Returns how
    /// many were forgotten.
    pub fn gc(&mut self, valid: &[agent_api::Sandbox]) -> Result<usize, AgentError> {
        let stale: Vec<Endpoint> = self
            .registry
            .iter()
            // Adopted endpoints and quarantined veths are not the
            // runtime's sandboxes.
            .filter(|ep| !adopt::is_adopted(ep) && !quarantine::is_quarantined(ep))
            .filter(|ep| {
                !valid.iter().any(|v| {
                    v.container_id == ep.container_id
                        && (ep.pod_ifname.is_empty() || v.ifname == ep.pod_ifname)
                })
            })
            .cloned()
            .collect();
        if stale.is_empty() {
            return Ok(0);
        }
        for ep in &stale {
            tracing::info!(pod = %ep.pod, container = %ep.container_id, ifname = %ep.ifname, "GC: sandbox no longer valid, endpoint forgotten");
            self.detach(ep);
            self.registry.remove(&ep.container_id);
        }
        self.persist();
        self.recompile()?;
        Ok(stale.len())
    }

    /// Forgets every endpoint whose host veth is gone (its sandbox died
    /// and the DEL was lost), detaching what is left of it, then enforces
    /// the rest. Returns how many were forgotten.
    pub fn forget_vanished(&mut self) -> Result<usize, AgentError> {
        let gone: Vec<Endpoint> = self
            .registry
            .iter()
            .filter(|ep| !self.dataplane.interface_exists(&ep.ifname))
            .cloned()
            .collect();
        if gone.is_empty() {
            return Ok(0);
        }
        for ep in &gone {
            tracing::info!(pod = %ep.pod, container = %ep.container_id, ifname = %ep.ifname, "host veth gone without a CNI DEL: endpoint forgotten");
            self.detach(ep);
            self.registry.remove(&ep.container_id);
        }
        self.persist();
        self.recompile()?;
        Ok(gone.len())
    }

    /// True when the sandbox has an enforced endpoint.
    pub fn check(&self, container_id: &str) -> bool {
        self.registry.get(container_id).is_some()
    }

    fn detach(&mut self, ep: &Endpoint) {
        if let Err(e) = self.dataplane.detach_endpoint(&ep.ifname, ep.ep_id) {
            tracing::warn!(pod = %ep.pod, ifname = %ep.ifname, error = %e, "detach failed");
        }
    }

    /// The addresses CNI reported for `pod`, if it is a local endpoint
    /// (the newest sandbox's, as in [`Registry::assignment`]).
    fn cni_ips(&self, pod: &PodRef) -> Option<&Vec<IpAddr>> {
        self.registry
            .newest(pod, |ep| !ep.ips.is_empty())
            .map(|ep| &ep.ips)
    }

    /// The addresses each endpoint's pod may send from: what CNI reported
    /// for the sandbox, else the pod's addresses in the cluster state.
    fn sources(&self, snap: &Snapshot) -> BTreeMap<u32, BTreeSet<policy_common::Addr>> {
        self.registry
            .iter()
            .filter(|ep| !quarantine::is_quarantined(ep))
            .map(|ep| {
                let ips = if ep.ips.is_empty() {
                    snap.pods
                        .get(&ep.pod)
                        .map(|p| p.ips.clone())
                        .unwrap_or_default()
                } else {
                    ep.ips.clone()
                };
                (ep.ep_id, ips.into_iter().map(to_addr).collect())
            })
            .collect()
    }

    /// Compiles what the current endpoint set changed (only the endpoints
    /// that came or went), then applies it.
    fn recompile(&mut self) -> Result<(), AgentError> {
        if !self.compiled {
            return Ok(());
        }
        let ops = self
            .engine
            .endpoints_changed(&self.snapshot, &self.registry.assignment());
        self.apply(&ops)
    }

    /// The node's own addresses now (traffic the node originates from
    /// them reaches local pods, rule 12).
    pub fn node_addrs(&self) -> &[IpAddr] {
        &self.node_addrs
    }

    /// Takes the node's addresses as they are now (a network plugin adds
    /// its bridge's gateway address at the node's first pod, often after
    /// the agent started: the kubelet's probes come from it) and, once a
    /// state is compiled, enforces them (a full compile: host addresses
    /// change the ipcache of every peer). Returns whether they changed.
    pub fn set_node_addrs(&mut self, mut addrs: Vec<IpAddr>) -> Result<bool, AgentError> {
        addrs.sort();
        addrs.dedup();
        if addrs == self.node_addrs {
            return Ok(false);
        }
        let old = std::mem::replace(&mut self.node_addrs, addrs);
        self.snapshot.host_addrs.retain(|a| !old.contains(a));
        for a in &self.node_addrs {
            if !self.snapshot.host_addrs.contains(a) {
                self.snapshot.host_addrs.push(*a);
            }
        }
        if self.compiled {
            let ops = self
                .engine
                .update(&self.snapshot, &self.registry.assignment());
            self.apply(&ops)?;
        }
        Ok(true)
    }

    /// How the last compiled state fitted the maps: the endpoints denied
    /// because a map is full, entries needed per map, room per map.
    pub fn fit_report(&self) -> &FitReport {
        &self.fit
    }

    /// Whether the last apply failed (the last good state stays
    /// enforced until [`Self::retry_apply`] or the next change succeeds).
    pub fn apply_failed(&self) -> bool {
        self.apply_failed.is_some()
    }

    /// Writes the current compiled state again after a failed apply; a
    /// no-op when the last one succeeded.
    pub fn retry_apply(&mut self) -> Result<(), AgentError> {
        if self.apply_failed.is_none() {
            return Ok(());
        }
        self.apply(&[])?;
        self.report_enforced();
        Ok(())
    }

    /// Writes the engine's state to the dataplane, unless `ops` is empty
    /// and the dataplane already holds it (then nothing is written and the
    /// policy revision stays).
    fn apply(&mut self, ops: &[MapOp]) -> Result<(), AgentError> {
        if ops.is_empty() && self.apply_failed.is_none() && self.applies > 0 {
            return Ok(());
        }
        // The endpoints' source addresses first, so an endpoint that
        // becomes ready already has them.
        let sources = self.sources(&self.snapshot);
        if let Err(source) = self.dataplane.set_sources(&sources) {
            self.apply_failed = Some(source.to_string());
            return Err(AgentError::Dataplane {
                pod: "-".into(),
                source,
            });
        }
        self.sync_limits();
        let compiled = self.engine.current();
        let mut now = BTreeSet::new();
        for err in &compiled.errors {
            let text = err.to_string();
            if !self.reported.contains(&text) {
                match err {
                    CompileError::InvalidPolicy { policy, .. } => {
                        tracing::error!(%policy, error = %text, "invalid policy: the pods it selects are isolated and it allows nothing")
                    }
                    CompileError::OverBudget { policy, .. } => {
                        tracing::error!(%policy, error = %text, "policy over budget: the pods it selects are isolated and it allows nothing; every other policy is enforced")
                    }
                    CompileError::InvalidClusterPolicy { name, .. } => {
                        tracing::error!(cluster_network_policy = %name, error = %text, "invalid ClusterNetworkPolicy: it denies its subject's traffic in the directions it has rules for")
                    }
                    CompileError::ClusterPolicyOverBudget { name, .. } => {
                        tracing::error!(cluster_network_policy = %name, error = %text, "ClusterNetworkPolicy prefixes over budget: every pod a ClusterNetworkPolicy selects is isolated and allows nothing")
                    }
                }
            }
            now.insert(text);
        }
        self.reported = now;
        let cap = self.dataplane.capacity();
        self.fit.capacity = cap;
        let fitted = match cap {
            Some(cap) => capacity::fit(
                &compiled.state,
                &cap,
                &self.fit.admitted,
                &self.registry.arrivals(),
            ),
            None => Ok(capacity::Fitted {
                state: std::borrow::Cow::Borrowed(&compiled.state),
                denied: BTreeMap::new(),
                needed: BTreeMap::new(),
            }),
        };
        let fitted = match fitted {
            Ok(f) => f,
            Err(e) => {
                if self.fit.exceeded != Some(e) {
                    tracing::error!(map = %e.map, needed = e.needed, capacity = e.capacity, "{e}: nothing written, the last good state stays enforced");
                }
                self.fit.exceeded = Some(e);
                self.fit.needed.insert(e.map, e.needed);
                self.apply_failed = Some(e.to_string());
                return Err(AgentError::MapFull(e));
            }
        };
        match self.dataplane.apply(&fitted.state) {
            Ok(()) => {
                let mut denied = BTreeMap::new();
                for (ep_id, d) in &fitted.denied {
                    let pod = self
                        .registry
                        .iter()
                        .find(|e| e.ep_id == *ep_id)
                        .map(|e| e.pod.clone())
                        .unwrap_or_else(|| PodRef::new("-", format!("endpoint-{ep_id}")));
                    if !self.fit.denied.contains_key(ep_id) {
                        tracing::error!(%pod, map = %d.map, needed = d.needed, free = d.free, flag = d.map.flag(), "the pod's policy does not fit the {} map: it is denied all traffic both ways until it does", d.map);
                    }
                    denied.insert(*ep_id, (pod, *d));
                }
                for (ep_id, (pod, d)) in &self.fit.denied {
                    if !denied.contains_key(ep_id) {
                        tracing::info!(%pod, map = %d.map, "the pod's policy fits again: enforced");
                    }
                }
                if self.fit.exceeded.take().is_some() {
                    tracing::info!("the cluster state fits the maps again");
                }
                let mut admitted: BTreeMap<u32, usize> = BTreeMap::new();
                for e in compiled.state.policy.keys() {
                    if !denied.contains_key(&e.ep_id) {
                        *admitted.entry(e.ep_id).or_default() += 1;
                    }
                }
                self.fit.admitted = admitted;
                self.fit.denied = denied;
                self.fit.needed = fitted.needed;
                if self.apply_failed.take().is_some() {
                    tracing::info!("apply succeeded again");
                }
                self.applies += 1;
                self.last_apply = Some(std::time::SystemTime::now());
                self.update_coverage();
                Ok(())
            }
            Err(source) => {
                self.apply_failed = Some(source.to_string());
                Err(AgentError::Dataplane {
                    pod: "-".into(),
                    source,
                })
            }
        }
    }
}

#[cfg(test)]
mod tests;

/// Parses the addresses a CNI result reported (with or without prefix).
pub fn parse_ips(pod: &PodRef, ips: &[String]) -> Result<Vec<IpAddr>, AgentError> {
    ips.iter()
        .map(|s| {
            let bare = s.split('/').next().unwrap_or(s);
            bare.parse().map_err(|_| AgentError::BadAddress {
                pod: pod.clone(),
                value: s.clone(),
            })
        })
        .collect()
}
