//! Adopting local pods that run without an endpoint (rule 16: started
//! before Palisade was installed, or while the chain entry was missing).
//! [`crate::coverage`] finds them; [`crate::links::find_pod_veths`] proves
//! which host veth is theirs; here they become endpoints like any other,
//! under a container id of their own ([`ADOPTED_PREFIX`]) since the
//! runtime never told us theirs. CNI GC leaves them alone (the runtime does
//! not know them by that id); a later ADD for the pod (a new sandbox)
//! replaces them, and they go when the pod stops running here.

use std::collections::BTreeMap;
use std::net::IpAddr;

use policy_engine::model::{PodPhase, PodRef};

use super::{Agent, AgentError};
use crate::dataplane::Dataplane;
use crate::endpoints::Endpoint;
use crate::links::FoundVeth;

/// Container id prefix of adopted endpoints (`adopted/<ns>/<name>`).
pub const ADOPTED_PREFIX: &str = "adopted/";

/// Whether `ep` was adopted rather than reported by CNI.
pub fn is_adopted(ep: &Endpoint) -> bool {
    ep.container_id.starts_with(ADOPTED_PREFIX)
}

impl<D: Dataplane> Agent<D> {
    /// The local pods without an endpoint (see [`crate::coverage`]) and
    /// their addresses in the cluster state: what to look for on the node.
    pub fn adoption_candidates(&self) -> BTreeMap<PodRef, Vec<IpAddr>> {
        if !self.compiled {
            return BTreeMap::new();
        }
        let Some(node) = &self.node else {
            return BTreeMap::new();
        };
        crate::coverage::unenforced(&self.snapshot, node, &self.registry)
            .into_iter()
            .filter_map(|r| {
                let ips = self.snapshot.pods.get(&r)?.ips.clone();
                Some((r, ips))
            })
            .collect()
    }

    /// Enforces on `veth` for `pod`, a running local pod without an
    /// endpoint, as if CNI had reported it; a no-op if it has one by now
    /// or the veth already serves another endpoint.
    pub fn adopt(&mut self, pod: PodRef, veth: &FoundVeth) -> Result<bool, AgentError> {
        if !self.adoption_candidates().contains_key(&pod) {
            return Ok(false);
        }
        self.take_over_quarantine(&veth.ifname);
        if let Some(other) = self.registry.iter().find(|e| e.ifname == veth.ifname) {
            tracing::warn!(%pod, ifname = %veth.ifname, other = %other.pod, "not adopting: the veth already serves another endpoint");
            return Ok(false);
        }
        let ips = self
            .snapshot
            .pods
            .get(&pod)
            .map(|p| p.ips.clone())
            .unwrap_or_default();
        let ep_id = self.registry.allocate_id();
        let ep = Endpoint {
            container_id: format!("{ADOPTED_PREFIX}{pod}"),
            pod: pod.clone(),
            ifname: veth.ifname.clone(),
            pod_ifname: String::new(),
            ep_id,
            ips,
        };
        self.record_and_attach(&ep)?;
        tracing::warn!(%pod, ifname = %ep.ifname, "adopted a running pod that had no endpoint (started before Palisade or without its chain entry); now enforced");
        self.recompile()?;
        Ok(true)
    }

    /// Forgets adopted endpoints whose pod no longer runs here (deleted,
    /// finished, moved) or has a CNI-reported endpoint now; returns how
    /// many.
    pub fn prune_adopted(&mut self) -> Result<usize, AgentError> {
        let node = self.node.clone();
        let stale: Vec<Endpoint> = self
            .registry
            .iter()
            .filter(|ep| is_adopted(ep))
            .filter(|ep| {
                let reported = self
                    .registry
                    .iter()
                    .any(|o| o.pod == ep.pod && !is_adopted(o));
                let here = self.snapshot.pods.get(&ep.pod).is_some_and(|p| {
                    p.phase == PodPhase::Running && p.node.is_some() && p.node == node
                });
                reported || !here
            })
            .cloned()
            .collect();
        for ep in &stale {
            tracing::info!(pod = %ep.pod, ifname = %ep.ifname, "adopted endpoint forgotten: the pod no longer runs here without CNI");
            self.detach(ep);
            self.registry.remove(&ep.container_id);
        }
        if !stale.is_empty() {
            self.persist();
            self.recompile()?;
        }
        Ok(stale.len())
    }
}
