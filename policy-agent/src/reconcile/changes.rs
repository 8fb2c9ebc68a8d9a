//! Changes from the source, one at a time through the engine's incremental
//! paths: each is compared with what the agent holds first, so one that
//! changes nothing costs a comparison.

use std::collections::BTreeSet;

use policy_engine::model::service::EndpointSubset;
use policy_engine::model::slices::SliceRef;
use policy_engine::model::{
    NamespaceInfo, PodInfo, PodRef, Policy, PolicyRef, ServiceInfo, ServiceRef, Snapshot,
};
use policy_engine::state::MapOp;

use super::{Agent, AgentError};
use crate::dataplane::Dataplane;
use crate::source::{Change, Kind, Listed};

/// A batch larger than this is compiled in full instead of change by
/// change (a relist after a long outage, say): one full compile is cheaper
/// than thousands of incremental ones, and as exact.
pub const FULL_COMPILE_ABOVE: usize = 2000;

/// What the agent logs after each full compile, with how long the
/// compile and the write to the dataplane took (`compile_ms`,
/// `apply_ms`).
pub const FULL_COMPILE_LOG: &str = "full compile applied";

/// What a batch of changes did.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Applied {
    /// Changes that changed the agent's state (the others were equal to it).
    pub effective: usize,
    /// Map operations the engine returned.
    pub ops: usize,
    /// Whether the dataplane was written.
    pub written: bool,
}

/// A change to the snapshot the engine still has to see.
enum Touched {
    Pod(PodRef),
    Namespace(String),
    Policy(PolicyRef),
    /// A Service or its Endpoints (only the ClusterIP maps can change).
    Service,
}

impl<D: Dataplane> Agent<D> {
    /// Takes in a batch of changes from the source and enforces the result:
    /// every effective change goes through the engine's incremental path
    /// (a `Replace`, the first complete sync or a batch of more than
    /// [`FULL_COMPILE_ABOVE`] through one full compile), and the dataplane
    /// is written once, only if the diff is not empty. Nothing is compiled
    /// before every kind has been listed once.
    pub fn apply_changes(&mut self, changes: Vec<Change>) -> Result<Applied, AgentError> {
        let mut full = changes.len() > FULL_COMPILE_ABOVE;
        let mut out = Applied::default();
        let mut progressed = false;
        let mut replaced = false;
        let mut ops: Vec<MapOp> = Vec::new();
        for change in changes {
            let touched = match change {
                Change::Replace(snapshot) => {
                    self.replace(snapshot);
                    replaced = true;
                    for kind in Kind::ALL {
                        self.sync.listed(kind);
                    }
                    full = true;
                    out.effective += 1;
                    continue;
                }
                Change::Listed(listed) => {
                    let kind = listed.kind();
                    let gone = self.unlisted(listed);
                    if self.sync.listed(kind) {
                        full = true;
                    }
                    gone
                }
                Change::PolicyOrigin(policy, origin) => {
                    if let Some(r) = self.enforcement.as_mut() {
                        r.tracker.origin(policy, origin);
                    }
                    continue;
                }
                Change::Lost { kind, reason } => {
                    self.sync.lost(kind, reason);
                    continue;
                }
                Change::Seen {
                    kind,
                    count,
                    newest,
                } => {
                    self.progress.insert(kind, (count, newest));
                    progressed = true;
                    continue;
                }
                Change::Pod(pod, info) => self.set_pod(pod, info).into_iter().collect(),
                Change::Namespace(name, info) => {
                    self.set_namespace(name, info).into_iter().collect()
                }
                Change::Policy(policy, spec) => {
                    self.set_policy(policy, *spec).into_iter().collect()
                }
                Change::Service(svc, info) => self.set_service(svc, info).into_iter().collect(),
                Change::EndpointSlice(slice, subset) => self
                    .set_endpoint_slice(&slice, subset)
                    .into_iter()
                    .collect(),
            };
            out.effective += touched.len();
            if self.compiled && !full {
                for t in touched {
                    ops.extend(self.incremental(&t));
                }
            }
        }
        if !self.sync.ever_complete() {
            return Ok(out);
        }
        let full_compile = (full || !self.compiled).then(std::time::Instant::now);
        if full_compile.is_some() {
            ops.extend(
                self.engine
                    .update(&self.snapshot, &self.registry.assignment()),
            );
            self.compiled = true;
        }
        out.ops = ops.len();
        let before = self.applies;
        let applying = std::time::Instant::now();
        self.apply(&ops)?;
        out.written = self.applies > before;
        self.report_enforced();
        if let Some(started) = full_compile {
            tracing::info!(
                pods = self.snapshot.pods.len(),
                policies = self.snapshot.policies.len(),
                ops = out.ops,
                compile_ms = (applying - started).as_millis() as u64,
                apply_ms = applying.elapsed().as_millis() as u64,
                "{FULL_COMPILE_LOG}"
            );
        }
        if replaced {
            tracing::info!(
                policies = self.snapshot.policies.len(),
                ops = out.ops,
                "{}",
                crate::source::file::APPLIED_LOG
            );
        }
        if progressed {
            self.log_progress();
        }
        Ok(out)
    }

    /// Logs [`crate::source::kube::STATE_LOG`] for the state now enforced.
    fn log_progress(&self) {
        let of = |k: Kind| self.progress.get(&k).copied().unwrap_or_default();
        let (pods, namespaces, policies) = (
            of(Kind::Pods),
            of(Kind::Namespaces),
            of(Kind::NetworkPolicies),
        );
        let (services, slices) = (of(Kind::Services), of(Kind::EndpointSlices));
        tracing::info!(
            pods = pods.0,
            pods_rv = pods.1,
            namespaces = namespaces.0,
            namespaces_rv = namespaces.1,
            policies = policies.0,
            policies_rv = policies.1,
            services = services.0,
            services_rv = services.1,
            endpointslices = slices.0,
            endpointslices_rv = slices.1,
            "{}",
            crate::source::kube::STATE_LOG
        );
    }

    fn incremental(&mut self, touched: &Touched) -> Vec<MapOp> {
        match touched {
            Touched::Pod(r) => self.engine.pod_changed(&self.snapshot, r),
            Touched::Namespace(n) => self.engine.namespace_changed(&self.snapshot, n),
            Touched::Policy(r) => self.engine.policy_changed(&self.snapshot, r),
            Touched::Service => self.engine.service_changed(&self.snapshot),
        }
    }

    /// Takes a whole new state, keeping the node's addresses and the
    /// addresses CNI reported for local pods.
    fn replace(&mut self, mut snapshot: Snapshot) {
        for addr in &self.node_addrs {
            if !snapshot.host_addrs.contains(addr) {
                snapshot.host_addrs.push(*addr);
            }
        }
        for ep in self.registry.iter() {
            if !ep.ips.is_empty() {
                snapshot.set_pod_ips(&ep.pod, ep.ips.clone());
            }
        }
        self.snapshot = snapshot;
    }

    fn set_pod(&mut self, pod: PodRef, mut info: Option<PodInfo>) -> Option<Touched> {
        if let (Some(info), Some(ips)) = (info.as_mut(), self.cni_ips(&pod)) {
            info.ips = ips
                .iter()
                .copied()
                .map(policy_engine::model::addr::normalize_ip)
                .collect();
        }
        let old = self.snapshot.pods.get(&pod);
        if old == info.as_ref() {
            return None;
        }
        // Node and phase are kept, but the compiler reads neither: a change
        // of only those (pending → running) is no change to compile.
        let compiled_same = match (old, info.as_ref()) {
            (Some(a), Some(b)) => {
                a.labels == b.labels
                    && a.ips == b.ips
                    && a.ports == b.ports
                    && a.host_network == b.host_network
            }
            _ => false,
        };
        match info {
            Some(info) => self.snapshot.insert_pod(pod.clone(), info),
            None => {
                self.snapshot.remove_pod(&pod);
            }
        }
        (!compiled_same).then_some(Touched::Pod(pod))
    }

    fn set_namespace(&mut self, name: String, info: Option<NamespaceInfo>) -> Option<Touched> {
        set_entry(&mut self.snapshot.namespaces, name.clone(), info)
            .then_some(Touched::Namespace(name))
    }

    /// Tells the event writer what the apply that just succeeded enforced
    /// (never waits for it).
    pub(super) fn report_enforced(&mut self) {
        let Some(r) = self.enforcement.as_mut() else {
            return;
        };
        let local = self.registry.assignment();
        let notices = r.tracker.applied(
            &self.snapshot,
            local.keys(),
            &self.engine.current().errors,
            std::time::SystemTime::now(),
        );
        for n in notices {
            r.sender.send(crate::events::Message::Notice(n));
        }
    }

    fn set_policy(&mut self, policy: PolicyRef, spec: Option<Policy>) -> Option<Touched> {
        if spec.is_none() {
            if let Some(r) = self.enforcement.as_mut() {
                r.tracker.forget(&policy);
                r.sender
                    .send(crate::events::Message::Forget(policy.clone()));
            }
        }
        set_entry(&mut self.snapshot.policies, policy.clone(), spec)
            .then_some(Touched::Policy(policy))
    }

    fn set_service(&mut self, svc: ServiceRef, info: Option<ServiceInfo>) -> Option<Touched> {
        set_entry(&mut self.snapshot.services, svc, info).then_some(Touched::Service)
    }

    fn set_endpoint_slice(
        &mut self,
        slice: &SliceRef,
        subset: Option<EndpointSubset>,
    ) -> Option<Touched> {
        self.snapshot
            .set_endpoint_slice(slice, subset)
            .then_some(Touched::Service)
    }

    /// Removes what a finished list no longer returned.
    fn unlisted(&mut self, listed: Listed) -> Vec<Touched> {
        fn absent<K: Ord + Clone, V>(
            held: &std::collections::BTreeMap<K, V>,
            listed: &BTreeSet<K>,
        ) -> Vec<K> {
            held.keys()
                .filter(|k| !listed.contains(k))
                .cloned()
                .collect()
        }
        match listed {
            Listed::Pods(keys) => absent(&self.snapshot.pods, &keys)
                .into_iter()
                .filter_map(|r| self.set_pod(r, None))
                .collect(),
            Listed::Namespaces(keys) => absent(&self.snapshot.namespaces, &keys)
                .into_iter()
                .filter_map(|n| self.set_namespace(n, None))
                .collect(),
            Listed::NetworkPolicies(keys) => absent(&self.snapshot.policies, &keys)
                .into_iter()
                .filter_map(|r| self.set_policy(r, None))
                .collect(),
            Listed::Services(keys) => absent(&self.snapshot.services, &keys)
                .into_iter()
                .filter_map(|r| self.set_service(r, None))
                .collect(),
            Listed::EndpointSlices(keys) => self
                .snapshot
                .endpoint_slice_refs()
                .into_iter()
                .filter(|r| !keys.contains(r))
                .filter_map(|r| self.set_endpoint_slice(&r, None))
                .collect(),
        }
    }
}

/// Makes `map[key]` `value` (`None`: absent); whether that changed it.
fn set_entry<K: Ord, V: PartialEq>(
    map: &mut std::collections::BTreeMap<K, V>,
    key: K,
    value: Option<V>,
) -> bool {
    if map.get(&key) == value.as_ref() {
        return false;
    }
    match value {
        Some(v) => map.insert(key, v),
        None => map.remove(&key),
    };
    true
}

#[cfg(test)]
mod tests;
