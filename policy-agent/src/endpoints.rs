//! The local endpoints: pods on this node whose host-side veth the agent
//! enforces on, as reported by the CNI plugin.

use std::collections::{BTreeMap, BTreeSet};
use std::io::Write;
use std::net::IpAddr;
use std::path::Path;

use policy_engine::model::PodRef;
use serde::{Deserialize, Serialize};

/// One local endpoint.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Endpoint {
    /// `CNI_CONTAINERID` of the sandbox.
    pub container_id: String,
    /// The pod.
    pub pod: PodRef,
    /// Host-side veth name.
    pub ifname: String,
    /// `CNI_IFNAME`, the interface inside the pod (with the container id,
    /// what CNI GC names a sandbox by); empty when unknown (an endpoint
    /// saved by an older agent).
    pub pod_ifname: String,
    /// Endpoint id in the maps.
    pub ep_id: u32,
    /// Addresses CNI gave the pod.
    pub ips: Vec<IpAddr>,
}

/// Endpoints by container id, with endpoint-id allocation.
#[derive(Debug, Default)]
pub struct Registry {
    by_container: BTreeMap<String, Endpoint>,
    used_ids: BTreeSet<u32>,
    /// When each container was recorded (a counter): of two sandboxes of
    /// one pod the later one is the pod's. Ids are reused lowest first, so
    /// they say nothing about age.
    arrival: BTreeMap<String, u64>,
    next_arrival: u64,
}

/// Endpoint ids start here (0 is never used, so a zeroed key is never valid).
const FIRST_EP_ID: u32 = 1;

impl Registry {
    /// Reserves the lowest free endpoint id.
    pub fn allocate_id(&mut self) -> u32 {
        let mut id = FIRST_EP_ID;
        for used in self.used_ids.range(FIRST_EP_ID..) {
            if *used != id {
                break;
            }
            id += 1;
        }
        self.used_ids.insert(id);
        id
    }

    /// Releases an id reserved by [`Registry::allocate_id`] that was never
    /// inserted (e.g. the attach failed).
    pub fn release_id(&mut self, ep_id: u32) {
        if !self.by_container.values().any(|e| e.ep_id == ep_id) {
            self.used_ids.remove(&ep_id);
        }
    }

    /// Records an endpoint (its id must come from [`Registry::allocate_id`]).
    /// Returns the endpoint it replaces, if the container was known.
    pub fn insert(&mut self, ep: Endpoint) -> Option<Endpoint> {
        self.used_ids.insert(ep.ep_id);
        self.arrival
            .insert(ep.container_id.clone(), self.next_arrival);
        self.next_arrival += 1;
        let old = self.by_container.insert(ep.container_id.clone(), ep);
        if let Some(old) = &old {
            self.release_id(old.ep_id);
        }
        old
    }

    /// Forgets a container's endpoint and frees its id.
    pub fn remove(&mut self, container_id: &str) -> Option<Endpoint> {
        let ep = self.by_container.remove(container_id)?;
        self.arrival.remove(container_id);
        self.release_id(ep.ep_id);
        Some(ep)
    }

    /// Endpoint id → the order its endpoint arrived in (older first).
    pub fn arrivals(&self) -> BTreeMap<u32, u64> {
        self.by_container
            .values()
            .map(|e| (e.ep_id, self.arrival(&e.container_id)))
            .collect()
    }

    fn arrival(&self, container_id: &str) -> u64 {
        self.arrival.get(container_id).copied().unwrap_or(0)
    }

    /// The pod's newest sandbox (the last one recorded) among those `keep`
    /// accepts.
    pub fn newest(&self, pod: &PodRef, keep: impl Fn(&Endpoint) -> bool) -> Option<&Endpoint> {
        self.by_container
            .values()
            .filter(|e| &e.pod == pod && keep(e))
            .max_by_key(|e| self.arrival(&e.container_id))
    }

    /// All endpoints, oldest first (the order they are saved in, so a
    /// restarted agent, restoring them in order, knows which is newest).
    pub fn iter_oldest_first(&self) -> impl Iterator<Item = &Endpoint> {
        let mut all: Vec<&Endpoint> = self.by_container.values().collect();
        all.sort_by_key(|e| self.arrival(&e.container_id));
        all.into_iter()
    }

    /// The endpoint of a container.
    pub fn get(&self, container_id: &str) -> Option<&Endpoint> {
        self.by_container.get(container_id)
    }

    /// All endpoints, by container id.
    pub fn iter(&self) -> impl Iterator<Item = &Endpoint> {
        self.by_container.values()
    }

    /// Pod → endpoint id, the compiler's input. A pod with two sandboxes
    /// (a new one before the old one's DEL) is its newest sandbox; the
    /// older one is in no state, so its packets are dropped until its DEL,
    /// a CNI GC or the loss of its veth collects it.
    pub fn assignment(&self) -> BTreeMap<PodRef, u32> {
        let mut out: BTreeMap<PodRef, (u64, u32)> = BTreeMap::new();
        // Quarantined veths get no endpoint entry: they drop everything.
        for ep in self
            .by_container
            .values()
            .filter(|ep| !crate::reconcile::quarantine::is_quarantined(ep))
        {
            let arrived = self.arrival(&ep.container_id);
            let slot = out.entry(ep.pod.clone()).or_insert((arrived, ep.ep_id));
            if arrived >= slot.0 {
                *slot = (arrived, ep.ep_id);
            }
        }
        out.into_iter().map(|(pod, (_, id))| (pod, id)).collect()
    }

    /// Number of endpoints.
    pub fn len(&self) -> usize {
        self.by_container.len()
    }

    /// True when there is no endpoint.
    pub fn is_empty(&self) -> bool {
        self.by_container.is_empty()
    }
}

/// An endpoint as written to the agent's state file.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
struct SavedEndpoint {
    container_id: String,
    pod: String,
    ifname: String,
    /// The interface's index when saved: a veth of the same name created
    /// while the agent was down is another pod's, and is not adopted.
    #[serde(default)]
    ifindex: u32,
    #[serde(default)]
    pod_ifname: String,
    ep_id: u32,
    ips: Vec<IpAddr>,
}

/// The index of `ifname` in the agent's network namespace (0 if none).
fn ifindex_of(ifname: &str) -> u32 {
    nix::net::if_::if_nametoindex(ifname).unwrap_or(0)
}

/// Failures reading or writing the state file.
#[derive(Debug, thiserror::Error)]
pub enum StateFileError {
    /// I/O on the file.
    #[error("state file {path}: {source}")]
    Io {
        /// The file.
        path: String,
        /// Cause.
        #[source]
        source: std::io::Error,
    },
    /// The file is not what the agent writes.
    #[error("state file {path} is unreadable: {source}")]
    Decode {
        /// The file.
        path: String,
        /// Cause.
        #[source]
        source: serde_json::Error,
    },
}

/// Writes `endpoints` to `path` atomically (temporary file, then rename), so
/// a restarted agent knows which pinned endpoints are which pods.
pub fn save<'a>(
    path: &Path,
    endpoints: impl Iterator<Item = &'a Endpoint>,
) -> Result<(), StateFileError> {
    let io = |source| StateFileError::Io {
        path: path.display().to_string(),
        source,
    };
    let saved: Vec<SavedEndpoint> = endpoints
        .map(|e| SavedEndpoint {
            container_id: e.container_id.clone(),
            pod: e.pod.to_string(),
            ifname: e.ifname.clone(),
            ifindex: ifindex_of(&e.ifname),
            pod_ifname: e.pod_ifname.clone(),
            ep_id: e.ep_id,
            ips: e.ips.clone(),
        })
        .collect();
    let text = serde_json::to_vec_pretty(&saved).map_err(|source| StateFileError::Decode {
        path: path.display().to_string(),
        source,
    })?;
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir).map_err(io)?;
    }
    let tmp = path.with_extension("json.tmp");
    let mut f = std::fs::File::create(&tmp).map_err(io)?;
    f.write_all(&text).map_err(io)?;
    f.sync_all().map_err(io)?;
    std::fs::rename(&tmp, path).map_err(io)
}

/// An endpoint read back from the state file.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Saved {
    /// The endpoint.
    pub endpoint: Endpoint,
    /// Its interface's index when it was saved (0: unknown).
    pub ifindex: u32,
}

impl Saved {
    /// True when the interface still exists with the index it had: a veth
    /// of the same name created while the agent was down belongs to
    /// another pod and must not inherit this endpoint.
    pub fn interface_unchanged(&self) -> bool {
        let now = ifindex_of(&self.endpoint.ifname);
        now != 0 && (self.ifindex == 0 || self.ifindex == now)
    }
}

/// Reads what [`save`] wrote; a missing file is an empty list. Entries whose
/// pod name does not parse are skipped with a warning.
pub fn load(path: &Path) -> Result<Vec<Saved>, StateFileError> {
    let text = match std::fs::read(path) {
        Ok(t) => t,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
        Err(source) => {
            return Err(StateFileError::Io {
                path: path.display().to_string(),
                source,
            })
        }
    };
    let saved: Vec<SavedEndpoint> =
        serde_json::from_slice(&text).map_err(|source| StateFileError::Decode {
            path: path.display().to_string(),
            source,
        })?;
    Ok(saved
        .into_iter()
        .filter_map(|s| match s.pod.parse::<PodRef>() {
            Ok(pod) => Some(Saved {
                endpoint: Endpoint {
                    container_id: s.container_id,
                    pod,
                    ifname: s.ifname,
                    pod_ifname: s.pod_ifname,
                    ep_id: s.ep_id,
                    ips: s.ips,
                },
                ifindex: s.ifindex,
            }),
            Err(e) => {
                tracing::warn!(pod = %s.pod, error = %e, "state file entry skipped");
                None
            }
        })
        .collect())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ep(reg: &mut Registry, cid: &str, pod: &str) -> Endpoint {
        let ep_id = reg.allocate_id();
        Endpoint {
            container_id: cid.into(),
            pod: PodRef {
                namespace: "default".into(),
                name: pod.into(),
            },
            ifname: format!("veth{cid}"),
            pod_ifname: "eth0".into(),
            ep_id,
            ips: vec![],
        }
    }

    #[test]
    fn ids_are_reused_lowest_first() {
        let mut reg = Registry::default();
        let a = ep(&mut reg, "a", "pa");
        reg.insert(a);
        let b = ep(&mut reg, "b", "pb");
        assert_eq!(b.ep_id, 2);
        reg.insert(b);
        assert_eq!(reg.remove("a").map(|e| e.ep_id), Some(1));
        let c = ep(&mut reg, "c", "pc");
        assert_eq!(c.ep_id, 1);
        reg.insert(c);
        assert_eq!(reg.len(), 2);
        assert_eq!(reg.assignment().len(), 2);
    }

    #[test]
    fn state_file_round_trips() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("endpoints.json");
        assert!(load(&path).unwrap().is_empty());
        let mut reg = Registry::default();
        let mut a = ep(&mut reg, "a", "pa");
        a.ips = vec!["10.0.0.1".parse().unwrap()];
        reg.insert(a.clone());
        save(&path, reg.iter()).unwrap();
        let back = load(&path).unwrap();
        assert_eq!(back.len(), 1);
        assert_eq!(back[0].endpoint, a);
        // No such interface here: not to be restored.
        assert!(!back[0].interface_unchanged());
        std::fs::write(&path, b"not json").unwrap();
        assert!(matches!(load(&path), Err(StateFileError::Decode { .. })));
    }

    #[test]
    fn a_replaced_interface_is_not_restored() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("endpoints.json");
        let mut reg = Registry::default();
        let mut lo = ep(&mut reg, "a", "pa");
        lo.ifname = "lo".into();
        reg.insert(lo);
        save(&path, reg.iter()).unwrap();
        let mut back = load(&path).unwrap();
        assert!(back[0].interface_unchanged());
        back[0].ifindex += 1000;
        assert!(!back[0].interface_unchanged());
    }

    #[test]
    fn a_pods_newest_sandbox_is_the_last_recorded_even_with_a_lower_id() {
        let mut reg = Registry::default();
        let other = ep(&mut reg, "other", "q");
        reg.insert(other);
        let old = ep(&mut reg, "old", "p");
        assert_eq!(old.ep_id, 2);
        reg.insert(old);
        reg.remove("other");
        let new = ep(&mut reg, "new", "p");
        assert_eq!(new.ep_id, 1, "the freed lower id is reused");
        reg.insert(new);
        let p = PodRef::new("default", "p");
        assert_eq!(reg.assignment()[&p], 1, "the old sandbox's id won");
        assert_eq!(reg.newest(&p, |_| true).map(|e| e.ep_id), Some(1));
        let order: Vec<&str> = reg
            .iter_oldest_first()
            .map(|e| e.container_id.as_str())
            .collect();
        assert_eq!(order, ["old", "new"]);
    }

    #[test]
    fn released_unused_id_is_free_again() {
        let mut reg = Registry::default();
        let id = reg.allocate_id();
        reg.release_id(id);
        assert_eq!(reg.allocate_id(), id);
    }
}
