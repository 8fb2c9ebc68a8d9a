//! Is every local pod enforced? (rule 16 of the design: a local pod
//! without enforcement is an alarm, never silence.)
//!
//! A pod of this node (`spec.nodeName`), running, with addresses and not
//! on the host network, must have an endpoint. One that has none (it was
//! running before Palisade was installed, or started while the chain entry
//! was missing) is *unenforced*: counted in the metrics, listed for
//! `status`, and once one has stayed unenforced past a grace period (a
//! fresh pod's ADD may still be on its way) the agent is not ready.

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use policy_engine::model::{PodPhase, PodRef, Snapshot};

use crate::endpoints::Registry;

/// How long a local pod may go without an endpoint before the agent is
/// not ready (the ADD of a starting pod normally arrives within seconds).
pub const GRACE: Duration = Duration::from_secs(30);

/// The local pods that must be enforced and are not, by name.
pub fn unenforced(snapshot: &Snapshot, node: &str, registry: &Registry) -> Vec<PodRef> {
    let enforced: std::collections::BTreeSet<&PodRef> = registry.iter().map(|e| &e.pod).collect();
    snapshot
        .pods
        .iter()
        .filter(|(r, p)| {
            p.node.as_deref() == Some(node)
                && p.phase == PodPhase::Running
                && !p.ips.is_empty()
                && !p.host_network
                && !enforced.contains(r)
        })
        .map(|(r, _)| r.clone())
        .collect()
}

/// Remembers since when each unenforced pod has been so.
#[derive(Debug, Default)]
pub struct Coverage {
    since: BTreeMap<PodRef, Instant>,
}

impl Coverage {
    /// Records the current list (pods no longer in it are forgotten).
    pub fn update(&mut self, now: Instant, pods: Vec<PodRef>) {
        let mut next = BTreeMap::new();
        for p in pods {
            let t = self.since.get(&p).copied().unwrap_or(now);
            next.insert(p, t);
        }
        self.since = next;
    }

    /// The unenforced pods and since when.
    pub fn pods(&self) -> &BTreeMap<PodRef, Instant> {
        &self.since
    }

    /// Pods unenforced for longer than `grace`.
    pub fn overdue(&self, now: Instant, grace: Duration) -> Vec<PodRef> {
        self.since
            .iter()
            .filter(|(_, t)| now.saturating_duration_since(**t) > grace)
            .map(|(p, _)| p.clone())
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::endpoints::Endpoint;
    use policy_engine::testutil::ClusterBuilder;

    #[test]
    fn only_running_local_pods_with_addresses_count() {
        let mut snap = ClusterBuilder::new()
            .ns("default", &[])
            .pod("default/here", &[], &["10.244.0.10"])
            .pod("default/enforced", &[], &["10.244.0.11"])
            .pod("default/elsewhere", &[], &["10.244.1.10"])
            .pod("default/pending", &[], &[])
            .pod("default/host", &[], &["192.0.2.1"])
            .build();
        for (name, node) in [
            ("here", "n1"),
            ("enforced", "n1"),
            ("elsewhere", "n2"),
            ("pending", "n1"),
            ("host", "n1"),
        ] {
            let p = snap.pods.get_mut(&PodRef::new("default", name)).unwrap();
            p.node = Some(node.into());
            if name == "pending" {
                p.phase = PodPhase::Pending;
            }
            if name == "host" {
                p.host_network = true;
            }
        }
        let mut reg = Registry::default();
        let ep_id = reg.allocate_id();
        reg.insert(Endpoint {
            container_id: "c".into(),
            pod: PodRef::new("default", "enforced"),
            ifname: "veth0".into(),
            pod_ifname: "eth0".into(),
            ep_id,
            ips: vec![],
        });
        assert_eq!(
            unenforced(&snap, "n1", &reg),
            vec![PodRef::new("default", "here")]
        );

        let mut cov = Coverage::default();
        let t0 = Instant::now();
        cov.update(t0, unenforced(&snap, "n1", &reg));
        assert!(cov.overdue(t0 + GRACE / 2, GRACE).is_empty());
        cov.update(t0 + GRACE / 2, unenforced(&snap, "n1", &reg));
        assert_eq!(
            cov.overdue(t0 + GRACE * 2, GRACE).len(),
            1,
            "the first sighting counts"
        );
        cov.update(t0 + GRACE * 2, Vec::new());
        assert!(cov.pods().is_empty());
    }
}
