//! The compiled dataplane state: what the compiler produces and what the
//! dataplane writes into the kernel maps (with a generation added).
//!
//! This is the contract between `compile` and `dataplane`. It is
//! generation-free: the dataplane writes it into the inactive generation and
//! flips (see `policy_common`). Every collection is ordered so that two
//! states compare and diff deterministically.

use std::collections::{BTreeMap, BTreeSet};

use policy_common::{Addr, PolicyValue};

/// One allow entry of the per-endpoint policy LPM map.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct PolicyEntry {
    /// Endpoint id.
    pub ep_id: u32,
    /// `policy_common::dir` value.
    pub dir: u8,
    /// Peer identity (`policy_common::identity::ANY` for any peer).
    pub identity: u32,
    /// Protocol and ports this entry allows.
    pub ports: PortMatch,
}

/// The L4 part of a [`PolicyEntry`].
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum PortMatch {
    /// Every protocol, every port.
    AnyProtocol,
    /// Every port of one protocol.
    AnyPort {
        /// IP protocol number.
        proto: u8,
    },
    /// An aligned block of ports: the `prefix_len` high bits of `port`
    /// (16 = exactly `port`).
    Ports {
        /// IP protocol number.
        proto: u8,
        /// First port of the block.
        port: u16,
        /// Significant high bits of `port`, 0..=16.
        prefix_len: u8,
    },
}

impl PolicyEntry {
    /// The LPM key (prefix length, data) for generation `gen`.
    pub fn lpm_key(&self, gen: u8) -> (u32, policy_common::PolicyKey) {
        use policy_common::{PolicyKey, POLICY_PREFIX_ANY_PORT, POLICY_PREFIX_ANY_PROTO};
        match self.ports {
            PortMatch::AnyProtocol => (
                POLICY_PREFIX_ANY_PROTO,
                PolicyKey::new(gen, self.dir, self.ep_id, self.identity, 0, 0),
            ),
            PortMatch::AnyPort { proto } => (
                POLICY_PREFIX_ANY_PORT,
                PolicyKey::new(gen, self.dir, self.ep_id, self.identity, proto, 0),
            ),
            PortMatch::Ports {
                proto,
                port,
                prefix_len,
            } => (
                POLICY_PREFIX_ANY_PORT + u32::from(prefix_len),
                PolicyKey::new(gen, self.dir, self.ep_id, self.identity, proto, port),
            ),
        }
    }
}

/// A CIDR prefix in the ipcache LPM map: IPv4 stored IPv4-mapped, so
/// `prefix_len` counts bits of the 128-bit form (IPv4 `/n` is `96 + n`).
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct CidrPrefix {
    /// Significant bits of `addr`, 0..=128.
    pub prefix_len: u8,
    /// Address with the bits past `prefix_len` zeroed.
    pub addr: Addr,
}

/// Everything the datapath needs, for every endpoint the compile was asked
/// about.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct MapState {
    /// Endpoint id → `policy_common::ep_flags` bits. An endpoint present here
    /// is "ready": its policy has been computed.
    pub endpoints: BTreeMap<u32, u32>,
    /// Exact pod address → identity.
    pub ipcache: BTreeMap<Addr, u32>,
    /// ipBlock prefixes (and the world prefixes) → identity.
    pub cidrs: BTreeMap<CidrPrefix, u32>,
    /// Allow entries.
    pub policy: BTreeMap<PolicyEntry, PolicyValue>,
    /// Service ClusterIPs → `policy_common::service_flags`: a pod's packet
    /// to one of these is translated by kube-proxy after the pod's own
    /// hook, so its egress is judged where the backend is visible (see
    /// `compile::services`).
    pub services: BTreeMap<Addr, u32>,
    /// Address of a local endpoint → its endpoint id: lets the hook that
    /// sees a translated packet judge the sending pod's egress.
    pub local_addrs: BTreeMap<Addr, u32>,
}

/// One change to one map.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum MapOp {
    /// Insert or overwrite an endpoint's flags.
    SetEndpoint(u32, u32),
    /// Remove an endpoint's flags.
    DelEndpoint(u32),
    /// Insert or overwrite an exact address.
    SetIpcache(Addr, u32),
    /// Remove an exact address.
    DelIpcache(Addr),
    /// Insert or overwrite a prefix.
    SetCidr(CidrPrefix, u32),
    /// Remove a prefix.
    DelCidr(CidrPrefix),
    /// Insert or overwrite a policy entry.
    SetPolicy(PolicyEntry, PolicyValue),
    /// Remove a policy entry.
    DelPolicy(PolicyEntry),
    /// Insert or overwrite a Service ClusterIP and its flags.
    SetService(Addr, u32),
    /// Remove a Service ClusterIP.
    DelService(Addr),
    /// Insert or overwrite a local endpoint's address.
    SetLocalAddr(Addr, u32),
    /// Remove a local endpoint's address.
    DelLocalAddr(Addr),
}

/// The minimal list of operations that turns `old` into `new`: additions
/// and overwrites first (so that nothing `new` needs is ever missing), then
/// removals.
pub fn diff(old: &MapState, new: &MapState) -> Vec<MapOp> {
    let mut sets = Vec::new();
    let mut dels = Vec::new();
    diff_map(
        &old.endpoints,
        &new.endpoints,
        &mut sets,
        &mut dels,
        MapOp::SetEndpoint,
        MapOp::DelEndpoint,
    );
    diff_map(
        &old.ipcache,
        &new.ipcache,
        &mut sets,
        &mut dels,
        MapOp::SetIpcache,
        MapOp::DelIpcache,
    );
    diff_map(
        &old.cidrs,
        &new.cidrs,
        &mut sets,
        &mut dels,
        MapOp::SetCidr,
        MapOp::DelCidr,
    );
    diff_map(
        &old.policy,
        &new.policy,
        &mut sets,
        &mut dels,
        MapOp::SetPolicy,
        MapOp::DelPolicy,
    );
    diff_services(old, new, &mut sets, &mut dels);
    sets.extend(dels);
    sets
}

/// The operations for the two service-related parts (ClusterIPs and local
/// addresses), appended to `sets` and `dels`.
pub fn diff_services(old: &MapState, new: &MapState, sets: &mut Vec<MapOp>, dels: &mut Vec<MapOp>) {
    diff_map(
        &old.services,
        &new.services,
        sets,
        dels,
        MapOp::SetService,
        MapOp::DelService,
    );
    diff_map(
        &old.local_addrs,
        &new.local_addrs,
        sets,
        dels,
        MapOp::SetLocalAddr,
        MapOp::DelLocalAddr,
    );
}

fn diff_map<K: Ord + Copy, V: PartialEq + Copy>(
    old: &BTreeMap<K, V>,
    new: &BTreeMap<K, V>,
    sets: &mut Vec<MapOp>,
    dels: &mut Vec<MapOp>,
    set: impl Fn(K, V) -> MapOp,
    del: impl Fn(K) -> MapOp,
) {
    for (k, v) in new {
        if old.get(k) != Some(v) {
            sets.push(set(*k, *v));
        }
    }
    for k in old.keys() {
        if !new.contains_key(k) {
            dels.push(del(*k));
        }
    }
}

impl MapState {
    /// The allow entries of endpoint `ep` in direction `dir`
    /// ([`policy_common::dir`]), in key order.
    pub fn entries(&self, ep: u32, dir: u8) -> impl Iterator<Item = &PolicyEntry> + '_ {
        let lo = PolicyEntry {
            ep_id: ep,
            dir,
            identity: 0,
            ports: PortMatch::AnyProtocol,
        };
        self.policy
            .range(lo..)
            .map(|(k, _)| k)
            .take_while(move |k| k.ep_id == ep && k.dir == dir)
    }

    /// Applies `ops` (as produced by [`diff`]) to this state.
    pub fn apply(&mut self, ops: &[MapOp]) {
        for op in ops {
            match *op {
                MapOp::SetEndpoint(k, v) => {
                    self.endpoints.insert(k, v);
                }
                MapOp::DelEndpoint(k) => {
                    self.endpoints.remove(&k);
                }
                MapOp::SetIpcache(k, v) => {
                    self.ipcache.insert(k, v);
                }
                MapOp::DelIpcache(k) => {
                    self.ipcache.remove(&k);
                }
                MapOp::SetCidr(k, v) => {
                    self.cidrs.insert(k, v);
                }
                MapOp::DelCidr(k) => {
                    self.cidrs.remove(&k);
                }
                MapOp::SetPolicy(k, v) => {
                    self.policy.insert(k, v);
                }
                MapOp::DelPolicy(k) => {
                    self.policy.remove(&k);
                }
                MapOp::SetService(k, v) => {
                    self.services.insert(k, v);
                }
                MapOp::DelService(k) => {
                    self.services.remove(&k);
                }
                MapOp::SetLocalAddr(k, v) => {
                    self.local_addrs.insert(k, v);
                }
                MapOp::DelLocalAddr(k) => {
                    self.local_addrs.remove(&k);
                }
            }
        }
    }

    /// Identities referenced as peers by policy entries (for sizing/metrics).
    pub fn peer_identities(&self) -> BTreeSet<u32> {
        self.policy.keys().map(|e| e.identity).collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn entry(ep: u32, port: u16) -> PolicyEntry {
        PolicyEntry {
            ep_id: ep,
            dir: policy_common::dir::INGRESS,
            identity: 300,
            ports: PortMatch::Ports {
                proto: policy_common::proto::TCP,
                port,
                prefix_len: 16,
            },
        }
    }

    #[test]
    fn diff_then_apply_reaches_new_state() {
        let mut a = MapState::default();
        a.endpoints.insert(1, 1);
        a.policy.insert(entry(1, 80), PolicyValue::default());
        let mut b = MapState::default();
        b.endpoints.insert(1, 3);
        b.policy.insert(entry(1, 443), PolicyValue::default());
        let ops = diff(&a, &b);
        assert_eq!(ops.len(), 3);
        assert!(matches!(ops.last(), Some(MapOp::DelPolicy(_))));
        let mut c = a.clone();
        c.apply(&ops);
        assert_eq!(c, b);
        assert!(diff(&b, &b).is_empty());
    }

    #[test]
    fn lpm_prefix_lengths() {
        let e = entry(1, 80);
        assert_eq!(e.lpm_key(0).0, 128);
        let any = PolicyEntry {
            ports: PortMatch::AnyProtocol,
            ..e
        };
        assert_eq!(any.lpm_key(1).0, 96);
    }
}
