//! Host veths isolated both ways until their pod is known.
//!
//! Adoption ([`super::adopt`]) finds a pod's veth by the address its peer
//! holds. A pod that removed its own address, or whose address another
//! unenforced pod also holds, cannot be found that way. While such a pod
//! runs here, every host veth that leads into another network namespace
//! and serves no endpoint is *quarantined*: its programs are attached
//! under an endpoint id the compiler never gets, so the datapath drops
//! everything in both directions as not ready. The pod itself stays
//! counted as unenforced (`status`, `palisade_unenforced_pods`), the
//! veths as quarantined (`status`, `palisade_quarantined_veths`).
//!
//! A quarantine ends when the veth's pod becomes known (a CNI ADD naming
//! it, or adoption by address), when the veth goes, or when no pod is left
//! that cannot be found (then the remaining veths are nobody's the agent
//! knows of, and are released).

use policy_engine::model::PodRef;

use super::{Agent, AgentError};
use crate::dataplane::Dataplane;
use crate::endpoints::Endpoint;
use crate::links::FoundVeth;

/// Container id prefix of quarantined veths (`quarantine/<ifname>`).
pub const QUARANTINE_PREFIX: &str = "quarantine/";

/// Whether `ep` is a quarantined veth rather than a pod's endpoint.
pub fn is_quarantined(ep: &Endpoint) -> bool {
    ep.container_id.starts_with(QUARANTINE_PREFIX)
}

impl<D: Dataplane> Agent<D> {
    /// The quarantined veths.
    pub fn quarantined(&self) -> Vec<&Endpoint> {
        self.registry.iter().filter(|e| is_quarantined(e)).collect()
    }

    /// Isolates `veth` both ways (see the module doc); a no-op if it
    /// already serves an endpoint or is quarantined.
    pub fn quarantine(&mut self, veth: &FoundVeth) -> Result<bool, AgentError> {
        if self.registry.iter().any(|e| e.ifname == veth.ifname) {
            return Ok(false);
        }
        let ep_id = self.registry.allocate_id();
        let ep = Endpoint {
            container_id: format!("{QUARANTINE_PREFIX}{}", veth.ifname),
            // Not a pod name the API server accepts: never in the snapshot.
            pod: PodRef::new("", format!("{QUARANTINE_PREFIX}{}", veth.ifname)),
            ifname: veth.ifname.clone(),
            pod_ifname: String::new(),
            ep_id,
            ips: Vec::new(),
        };
        self.record_and_attach(&ep)?;
        tracing::warn!(ifname = %ep.ifname, "quarantined a host veth no known pod owns while a local pod cannot be found by its address: all its traffic is dropped until its pod is known");
        Ok(true)
    }

    /// Ends every quarantine (no pod is left that cannot be found);
    /// returns how many.
    pub fn release_quarantine(&mut self) -> usize {
        let held: Vec<Endpoint> = self.quarantined().into_iter().cloned().collect();
        for ep in &held {
            tracing::info!(ifname = %ep.ifname, "quarantine lifted: every local pod is found or enforced");
            self.detach(ep);
            self.registry.remove(&ep.container_id);
        }
        if !held.is_empty() {
            self.persist();
        }
        held.len()
    }

    /// Forgets the quarantine on `ifname` without detaching (a pod's
    /// endpoint is about to be attached there, replacing it).
    pub(super) fn take_over_quarantine(&mut self, ifname: &str) {
        let held: Vec<String> = self
            .registry
            .iter()
            .filter(|e| is_quarantined(e) && e.ifname == ifname)
            .map(|e| e.container_id.clone())
            .collect();
        for id in held {
            tracing::info!(%ifname, "quarantined veth now known: its pod's policy replaces the quarantine");
            self.registry.remove(&id);
        }
    }
}
