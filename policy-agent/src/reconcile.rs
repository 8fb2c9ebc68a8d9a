//! The agent's core: cluster snapshot + local endpoints → compile → apply.
//!
//! Everything here is synchronous and kernel-free (the dataplane is behind
//! the [`Dataplane`] trait), so it is tested with the in-memory dataplane.

use std::collections::{BTreeMap, BTreeSet};
use std::net::IpAddr;
use std::path::PathBuf;

use policy_engine::model::addr::to_addr;
use policy_engine::model::{PodRef, Snapshot};

use crate::dataplane::{Dataplane, DataplaneError};
use crate::endpoints::{Endpoint, Registry};

/// Failures of an agent operation; each names the pod or object involved.
#[derive(Debug, thiserror::Error)]
pub enum AgentError {
    /// The pod is not (yet) in the cluster state.
    #[error("pod {pod} is not in the cluster state the agent sees")]
    UnknownPod {
        /// The pod.
        pod: PodRef,
    },
    /// An address CNI reported does not parse.
    #[error("pod {pod}: CNI reported an invalid IP address {value:?}")]
    BadAddress {
        /// The pod.
        pod: PodRef,
        /// The text.
        value: String,
    },
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
    /// Addresses CNI gave the pod.
    pub ips: Vec<IpAddr>,
}

/// The node agent's state.
pub struct Agent<D: Dataplane> {
    snapshot: Snapshot,
    node_addrs: Vec<IpAddr>,
    registry: Registry,
    engine: policy_engine::compile::Engine,
    dataplane: D,
    reported: BTreeSet<String>,
    applies: u64,
    state_file: Option<PathBuf>,
    /// This node's name: its running pods must all be enforced.
    node: Option<String>,
    coverage: crate::coverage::Coverage,
}

impl<D: Dataplane> Agent<D> {
    /// An agent enforcing nothing yet, with the node's own addresses (traffic
    /// from them to local pods is always allowed).
    pub fn new(dataplane: D, node_addrs: Vec<IpAddr>) -> Self {
        Self {
            snapshot: Snapshot::default(),
            node_addrs,
            registry: Registry::default(),
            engine: policy_engine::compile::Engine::new(),
            dataplane,
            reported: BTreeSet::new(),
            applies: 0,
            state_file: None,
            node: None,
            coverage: crate::coverage::Coverage::default(),
        }
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
            if let Err(e) = crate::endpoints::save(path, self.registry.iter()) {
                tracing::error!(error = %e, "cannot save the endpoint list");
            }
        }
    }

    /// The dataplane (for tests and status).
    pub fn dataplane(&self) -> &D {
        &self.dataplane
    }

    /// The local endpoints.
    pub fn endpoints(&self) -> &Registry {
        &self.registry
    }

    /// The cluster state as the source last gave it.
    pub fn snapshot(&self) -> &Snapshot {
        &self.snapshot
    }

    /// A policy rule reference from the maps, in words.
    pub fn describe_rule(&self, rule: u32) -> Option<String> {
        self.engine
            .current()
            .rules
            .get(&rule)
            .map(|r| r.to_string())
    }

    /// Number of policies the last compile found invalid.
    pub fn invalid_policies(&self) -> usize {
        self.reported.len()
    }

    /// Number of successful applies so far.
    pub fn applies(&self) -> u64 {
        self.applies
    }

    /// Replaces the cluster state and enforces it.
    pub fn set_snapshot(&mut self, snapshot: Snapshot) -> Result<(), AgentError> {
        self.snapshot = snapshot;
        self.sync()
    }

    /// Enforces policy on a newly wired pod; returns once its policy is in
    /// the maps. Until then its packets are dropped.
    pub fn add(&mut self, new: NewEndpoint) -> Result<(), AgentError> {
        if !self.snapshot.pods.contains_key(&new.pod) {
            return Err(AgentError::UnknownPod { pod: new.pod });
        }
        if let Some(old) = self.registry.get(&new.container_id).cloned() {
            // A repeated ADD for the same sandbox: start over.
            self.detach(&old);
            self.registry.remove(&old.container_id);
        }
        // Recorded (and saved) before the attach: an agent killed in between
        // restores the endpoint instead of handing its id to another pod
        // while the old interface still carries it.
        let ep_id = self.registry.allocate_id();
        let ep = Endpoint {
            container_id: new.container_id,
            pod: new.pod,
            ifname: new.ifname,
            ep_id,
            ips: new.ips,
        };
        self.registry.insert(ep.clone());
        self.persist();
        if let Err(source) = self.dataplane.attach_endpoint(&ep.ifname, ep_id) {
            self.registry.remove(&ep.container_id);
            self.persist();
            return Err(AgentError::Dataplane {
                pod: ep.pod.to_string(),
                source,
            });
        }
        self.sync()
    }

    /// Forgets a sandbox's endpoint (idempotent).
    pub fn del(&mut self, container_id: &str) -> Result<(), AgentError> {
        let Some(ep) = self.registry.remove(container_id) else {
            return Ok(());
        };
        self.detach(&ep);
        self.persist();
        self.sync()
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

    /// The snapshot the compiler sees: the source's, with the addresses CNI
    /// reported for local pods and the node's own addresses.
    fn effective_snapshot(&self) -> Snapshot {
        let mut snap = self.snapshot.clone();
        for ep in self.registry.iter() {
            if !ep.ips.is_empty() {
                snap.set_pod_ips(&ep.pod, ep.ips.clone());
            }
        }
        for addr in &self.node_addrs {
            if !snap.host_addrs.contains(addr) {
                snap.host_addrs.push(*addr);
            }
        }
        snap
    }

    /// The addresses each endpoint's pod may send from: what CNI reported
    /// for the sandbox, else the pod's addresses in the cluster state.
    fn sources(&self, snap: &Snapshot) -> BTreeMap<u32, BTreeSet<policy_common::Addr>> {
        self.registry
            .iter()
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

    /// Compiles for the local endpoints and applies the result (the
    /// endpoints' source addresses first, so an endpoint that becomes
    /// ready already has them).
    fn sync(&mut self) -> Result<(), AgentError> {
        let snap = self.effective_snapshot();
        let sources = self.sources(&snap);
        self.dataplane
            .set_sources(&sources)
            .map_err(|source| AgentError::Dataplane {
                pod: "-".into(),
                source,
            })?;
        self.engine.update(&snap, &self.registry.assignment());
        let compiled = self.engine.current();
        let mut now = BTreeSet::new();
        for err in &compiled.errors {
            let text = err.to_string();
            if !self.reported.contains(&text) {
                tracing::error!(error = %text, "invalid policy: the pods it selects are isolated and it allows nothing");
            }
            now.insert(text);
        }
        self.reported = now;
        self.dataplane
            .apply(&compiled.state)
            .map_err(|source| AgentError::Dataplane {
                pod: "-".into(),
                source,
            })?;
        self.applies += 1;
        self.update_coverage();
        Ok(())
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
