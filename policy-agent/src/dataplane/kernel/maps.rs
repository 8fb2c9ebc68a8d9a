//! Typed handles on the pinned maps, writing and reading one generation of
//! a [`MapState`].

use std::collections::{BTreeMap, BTreeSet};
use std::os::fd::AsFd as _;
use std::sync::Arc;

use aya::{
    maps::{
        lpm_trie::Key, Array, HashMap, LpmTrie, Map, MapData, MapError, PerCpuArray, PerCpuHashMap,
    },
    Ebpf,
};
use policy_common::{
    maps as names, Addr, CidrKey, Config, CtCount, CtKey, CtRefused, CtValue, EndpointInfo,
    EndpointPolicy, EndpointPolicyKey, IdentityValue, IpcacheKey, PolicyKey, PolicyValue,
    SourceKey, CIDR_KEY_HEAD_BITS, DROP_REASONS, POLICY_PREFIX_ANY_PORT, POLICY_PREFIX_ANY_PROTO,
    POLICY_PREFIX_FULL,
};
use policy_engine::state::{CidrPrefix, MapOp, MapState, PolicyEntry, PortMatch};

use super::{kernel_error, DataplaneError};

/// Every map the programs use, except the ring buffer (see `events`).
pub struct Maps {
    /// `Array<Config>`.
    pub config: Array<MapData, Config>,
    /// ifindex → endpoint.
    pub endpoints: HashMap<MapData, u32, EndpointInfo>,
    /// (gen, ep) → flags.
    pub ep_policy: HashMap<MapData, EndpointPolicyKey, EndpointPolicy>,
    /// (gen, addr) → identity.
    pub ipcache: HashMap<MapData, IpcacheKey, IdentityValue>,
    /// (gen, prefix) → identity.
    pub cidrs: LpmTrie<MapData, CidrKey, IdentityValue>,
    /// Allow entries.
    pub policy: LpmTrie<MapData, PolicyKey, PolicyValue>,
    /// Conntrack (LRU hash).
    pub conntrack: HashMap<MapData, CtKey, CtValue>,
    /// A second handle on the conntrack map (its own file descriptor),
    /// which the recount's walk takes along outside the agent's lock.
    pub conntrack_walker: Arc<HashMap<MapData, CtKey, CtValue>>,
    /// (endpoint, address) an endpoint may send from.
    pub sources: HashMap<MapData, SourceKey, u32>,
    /// Drops by reason, per CPU.
    pub drops: PerCpuArray<MapData, u64>,
    /// What `sources` holds; `None` until read back (adopted maps).
    sources_mirror: Option<BTreeSet<SourceKey>>,
    /// (gen, ClusterIP) → service flags.
    pub services: HashMap<MapData, IpcacheKey, u32>,
    /// (gen, local endpoint address) → endpoint id.
    pub local_addrs: HashMap<MapData, IpcacheKey, u32>,
    /// Endpoint → the conntrack entries it holds (its budget).
    pub ct_count: HashMap<MapData, u32, CtCount>,
    /// Endpoint → new flows refused for its budget, per CPU.
    pub ct_refused: PerCpuHashMap<MapData, u32, CtRefused>,
}

fn take(ebpf: &mut Ebpf, name: &str) -> Result<Map, DataplaneError> {
    ebpf.take_map(name).ok_or_else(|| DataplaneError::Kernel {
        what: format!("eBPF object has no map {name}"),
        source: "missing map".into(),
    })
}

fn typed<T>(name: &str, r: Result<T, MapError>) -> Result<T, DataplaneError> {
    r.map_err(|e| kernel_error(format!("opening map {name}"), e))
}

/// A handle of its own on hash map `map` (a duplicate of its descriptor).
fn second_handle<K: aya::Pod, V: aya::Pod>(
    map: &Map,
    name: &str,
) -> Result<HashMap<MapData, K, V>, DataplaneError> {
    let (Map::HashMap(data) | Map::LruHashMap(data)) = map else {
        return Err(kernel_error(
            format!("opening map {name} again"),
            "not a hash map",
        ));
    };
    let fd = data
        .fd()
        .as_fd()
        .try_clone_to_owned()
        .map_err(|e| kernel_error(format!("duplicating map {name}"), e))?;
    let again = typed(name, MapData::from_fd(fd))?;
    typed(name, HashMap::try_from(Map::LruHashMap(again)))
}

impl Maps {
    /// Takes the maps out of a loaded object.
    pub fn take(ebpf: &mut Ebpf) -> Result<Self, DataplaneError> {
        let conntrack = take(ebpf, names::CONNTRACK)?;
        Ok(Self {
            config: typed(names::CONFIG, Array::try_from(take(ebpf, names::CONFIG)?))?,
            endpoints: typed(
                names::ENDPOINTS,
                HashMap::try_from(take(ebpf, names::ENDPOINTS)?),
            )?,
            ep_policy: typed(
                names::EP_POLICY,
                HashMap::try_from(take(ebpf, names::EP_POLICY)?),
            )?,
            ipcache: typed(
                names::IPCACHE,
                HashMap::try_from(take(ebpf, names::IPCACHE)?),
            )?,
            cidrs: typed(names::CIDRS, LpmTrie::try_from(take(ebpf, names::CIDRS)?))?,
            policy: typed(names::POLICY, LpmTrie::try_from(take(ebpf, names::POLICY)?))?,
            conntrack_walker: Arc::new(second_handle(&conntrack, names::CONNTRACK)?),
            conntrack: typed(names::CONNTRACK, HashMap::try_from(conntrack))?,
            sources: typed(
                names::SOURCES,
                HashMap::try_from(take(ebpf, names::SOURCES)?),
            )?,
            drops: typed(
                names::DROPS,
                PerCpuArray::try_from(take(ebpf, names::DROPS)?),
            )?,
            sources_mirror: None,
            services: typed(
                names::SERVICES,
                HashMap::try_from(take(ebpf, names::SERVICES)?),
            )?,
            local_addrs: typed(
                names::LOCAL_ADDRS,
                HashMap::try_from(take(ebpf, names::LOCAL_ADDRS)?),
            )?,
            ct_count: typed(
                names::CT_COUNT,
                HashMap::try_from(take(ebpf, names::CT_COUNT)?),
            )?,
            ct_refused: typed(
                names::CT_REFUSED,
                PerCpuHashMap::try_from(take(ebpf, names::CT_REFUSED)?),
            )?,
        })
    }

    /// Makes the sources map hold exactly `sources` (endpoint id → the
    /// addresses it may send from): additions first, then removals.
    pub fn set_sources(
        &mut self,
        sources: &BTreeMap<u32, BTreeSet<Addr>>,
    ) -> Result<(), DataplaneError> {
        let want: BTreeSet<SourceKey> = sources
            .iter()
            .flat_map(|(ep_id, addrs)| {
                addrs.iter().map(|addr| SourceKey {
                    ep_id: *ep_id,
                    addr: *addr,
                })
            })
            .collect();
        let have = match self.sources_mirror.take() {
            Some(m) => m,
            None => {
                let mut keys = BTreeSet::new();
                for k in self.sources.keys() {
                    keys.insert(k.map_err(|e| kernel_error("reading the sources map", e))?);
                }
                keys
            }
        };
        let what = |k: &SourceKey, doing: &str| {
            format!(
                "{doing} source {} of endpoint {}",
                policy_engine::model::addr::from_addr(k.addr),
                k.ep_id
            )
        };
        for k in want.difference(&have) {
            self.sources
                .insert(k, 1, 0)
                .map_err(|e| kernel_error(what(k, "adding"), e))?;
        }
        for k in have.difference(&want) {
            match self.sources.remove(k) {
                Ok(()) | Err(MapError::KeyNotFound) => {}
                Err(e) => return Err(kernel_error(what(k, "removing"), e)),
            }
        }
        self.sources_mirror = Some(want);
        Ok(())
    }

    /// Packets dropped so far, by `policy_common::reason` (all CPUs).
    pub fn drop_counts(&self) -> BTreeMap<u8, u64> {
        let mut out = BTreeMap::new();
        for reason in 0..DROP_REASONS {
            if let Ok(per_cpu) = self.drops.get(&reason, 0) {
                let n: u64 = per_cpu.iter().sum();
                if n > 0 {
                    out.insert(u8::try_from(reason).unwrap_or(u8::MAX), n);
                }
            }
        }
        out
    }

    /// Reads the config entry.
    pub fn config(&self) -> Result<Config, DataplaneError> {
        self.config
            .get(&0, 0)
            .map_err(|e| kernel_error("reading the config map", e))
    }

    /// Writes the config entry (one map write: the generation flip).
    pub fn set_config(&mut self, cfg: Config) -> Result<(), DataplaneError> {
        self.config
            .set(0, cfg, 0)
            .map_err(|e| kernel_error("writing the config map", e))
    }

    /// Applies `ops` to generation `gen`.
    pub fn write(&mut self, gen: u8, ops: &[MapOp]) -> Result<(), DataplaneError> {
        for op in ops {
            self.write_one(gen, op)?;
        }
        Ok(())
    }

    fn write_one(&mut self, gen: u8, op: &MapOp) -> Result<(), DataplaneError> {
        let g = u32::from(gen);
        let r = match *op {
            MapOp::SetEndpoint(ep_id, flags) => self.ep_policy.insert(
                EndpointPolicyKey { gen: g, ep_id },
                EndpointPolicy { flags },
                0,
            ),
            MapOp::DelEndpoint(ep_id) => {
                self.ep_policy.remove(&EndpointPolicyKey { gen: g, ep_id })
            }
            MapOp::SetIpcache(addr, identity) => self.ipcache.insert(
                IpcacheKey { gen: g, addr },
                IdentityValue { identity, flags: 0 },
                0,
            ),
            MapOp::DelIpcache(addr) => self.ipcache.remove(&IpcacheKey { gen: g, addr }),
            MapOp::SetCidr(prefix, identity) => self.cidrs.insert(
                &cidr_key(gen, &prefix),
                IdentityValue { identity, flags: 0 },
                0,
            ),
            MapOp::DelCidr(prefix) => self.cidrs.remove(&cidr_key(gen, &prefix)),
            MapOp::SetPolicy(entry, value) => {
                let (len, data) = entry.lpm_key(gen);
                let mut value = value;
                // The datapath cannot see which prefix matched: say in the
                // value whether the entry names a port.
                if matches!(entry.ports, PortMatch::Ports { prefix_len, .. } if prefix_len > 0) {
                    value.flags |= policy_common::policy_flags::PORT;
                }
                self.policy.insert(&Key::new(len, data), value, 0)
            }
            MapOp::DelPolicy(entry) => {
                let (len, data) = entry.lpm_key(gen);
                self.policy.remove(&Key::new(len, data))
            }
            MapOp::SetService(addr, flags) => {
                self.services.insert(IpcacheKey { gen: g, addr }, flags, 0)
            }
            MapOp::DelService(addr) => self.services.remove(&IpcacheKey { gen: g, addr }),
            MapOp::SetLocalAddr(addr, ep_id) => {
                self.local_addrs
                    .insert(IpcacheKey { gen: g, addr }, ep_id, 0)
            }
            MapOp::DelLocalAddr(addr) => self.local_addrs.remove(&IpcacheKey { gen: g, addr }),
        };
        r.map_err(|e| kernel_error(format!("writing generation {gen}: {op:?}"), e))
    }

    /// Reads back what generation `gen` holds.
    pub fn read_generation(&self, gen: u8) -> Result<MapState, DataplaneError> {
        let g = u32::from(gen);
        let rd = |what: &str, e: MapError| {
            kernel_error(format!("reading {what} of generation {gen}"), e)
        };
        let mut s = MapState::default();
        for item in self.ep_policy.iter() {
            let (k, v) = item.map_err(|e| rd(names::EP_POLICY, e))?;
            if k.gen == g {
                s.endpoints.insert(k.ep_id, v.flags);
            }
        }
        for item in self.ipcache.iter() {
            let (k, v) = item.map_err(|e| rd(names::IPCACHE, e))?;
            if k.gen == g {
                s.ipcache.insert(k.addr, v.identity);
            }
        }
        for item in self.services.iter() {
            let (k, v) = item.map_err(|e| rd(names::SERVICES, e))?;
            if k.gen == g {
                s.services.insert(k.addr, v);
            }
        }
        for item in self.local_addrs.iter() {
            let (k, v) = item.map_err(|e| rd(names::LOCAL_ADDRS, e))?;
            if k.gen == g {
                s.local_addrs.insert(k.addr, v);
            }
        }
        for item in self.cidrs.iter() {
            let (k, v) = item.map_err(|e| rd(names::CIDRS, e))?;
            let data = k.data();
            if data.gen == gen {
                if let Some(prefix_len) = k.prefix_len().checked_sub(CIDR_KEY_HEAD_BITS) {
                    let prefix_len = u8::try_from(prefix_len).unwrap_or(128);
                    s.cidrs.insert(
                        CidrPrefix {
                            prefix_len,
                            addr: data.addr,
                        },
                        v.identity,
                    );
                }
            }
        }
        for item in self.policy.iter() {
            let (k, v) = item.map_err(|e| rd(names::POLICY, e))?;
            let data = k.data();
            if data.gen == gen {
                if let Some(entry) = policy_entry(k.prefix_len(), &data) {
                    let mut v = v;
                    v.flags &= !policy_common::policy_flags::PORT;
                    s.policy.insert(entry, v);
                }
            }
        }
        Ok(s)
    }

    /// Entries per map (walks every map: for status, not the hot path).
    pub fn counts(&self) -> MapCounts {
        MapCounts {
            endpoints: self.endpoints.keys().count(),
            ep_policy: self.ep_policy.keys().count(),
            ipcache: self.ipcache.keys().count(),
            cidrs: self.cidrs.keys().count(),
            policy: self.policy.keys().count(),
            conntrack: self.conntrack.keys().count(),
        }
    }
}

/// Number of entries in each map, both generations together.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct MapCounts {
    /// Attached interfaces.
    pub endpoints: usize,
    /// Endpoint flags entries.
    pub ep_policy: usize,
    /// Exact addresses.
    pub ipcache: usize,
    /// CIDR prefixes.
    pub cidrs: usize,
    /// Policy allow entries.
    pub policy: usize,
    /// Conntrack entries (including expired ones not yet evicted).
    pub conntrack: usize,
}

impl MapCounts {
    /// Counts the entries of the maps pinned under base folder `base` (what
    /// `KernelOptions::pin_dir` was), from any process: for `status`.
    pub fn read_pinned(base: &std::path::Path) -> Result<Self, DataplaneError> {
        let paths = super::pins::PinPaths::new(base);
        let open = |name: &str| {
            let path = paths.map(name);
            MapData::from_pin(&path)
                .map_err(|e| kernel_error(format!("opening {}", path.display()), e))
        };
        let endpoints: HashMap<MapData, u32, EndpointInfo> = typed(
            names::ENDPOINTS,
            HashMap::try_from(Map::HashMap(open(names::ENDPOINTS)?)),
        )?;
        let ep_policy: HashMap<MapData, EndpointPolicyKey, EndpointPolicy> = typed(
            names::EP_POLICY,
            HashMap::try_from(Map::HashMap(open(names::EP_POLICY)?)),
        )?;
        let ipcache: HashMap<MapData, IpcacheKey, IdentityValue> = typed(
            names::IPCACHE,
            HashMap::try_from(Map::HashMap(open(names::IPCACHE)?)),
        )?;
        let cidrs: LpmTrie<MapData, CidrKey, IdentityValue> = typed(
            names::CIDRS,
            LpmTrie::try_from(Map::LpmTrie(open(names::CIDRS)?)),
        )?;
        let policy: LpmTrie<MapData, PolicyKey, PolicyValue> = typed(
            names::POLICY,
            LpmTrie::try_from(Map::LpmTrie(open(names::POLICY)?)),
        )?;
        let conntrack: HashMap<MapData, CtKey, CtValue> = typed(
            names::CONNTRACK,
            HashMap::try_from(Map::LruHashMap(open(names::CONNTRACK)?)),
        )?;
        Ok(Self {
            endpoints: endpoints.keys().count(),
            ep_policy: ep_policy.keys().count(),
            ipcache: ipcache.keys().count(),
            cidrs: cidrs.keys().count(),
            policy: policy.keys().count(),
            conntrack: conntrack.keys().count(),
        })
    }
}

fn cidr_key(gen: u8, p: &CidrPrefix) -> Key<CidrKey> {
    Key::new(
        CIDR_KEY_HEAD_BITS + u32::from(p.prefix_len),
        CidrKey {
            gen,
            pad: [0; 3],
            addr: p.addr,
        },
    )
}

/// Inverse of [`PolicyEntry::lpm_key`].
fn policy_entry(prefix_len: u32, k: &PolicyKey) -> Option<PolicyEntry> {
    let ports = match prefix_len {
        POLICY_PREFIX_ANY_PROTO => PortMatch::AnyProtocol,
        POLICY_PREFIX_ANY_PORT => PortMatch::AnyPort { proto: k.proto },
        l if l > POLICY_PREFIX_ANY_PORT && l <= POLICY_PREFIX_FULL => PortMatch::Ports {
            proto: k.proto,
            port: u16::from_be_bytes(k.dport),
            prefix_len: u8::try_from(l - POLICY_PREFIX_ANY_PORT).ok()?,
        },
        _ => return None,
    };
    Some(PolicyEntry {
        ep_id: u32::from_be_bytes(k.ep_id),
        dir: k.dir,
        identity: u32::from_be_bytes(k.identity),
        ports,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn policy_keys_round_trip() {
        for ports in [
            PortMatch::AnyProtocol,
            PortMatch::AnyPort { proto: 17 },
            PortMatch::Ports {
                proto: 6,
                port: 8080,
                prefix_len: 16,
            },
            PortMatch::Ports {
                proto: 132,
                port: 1024,
                prefix_len: 6,
            },
        ] {
            let e = PolicyEntry {
                ep_id: 0x0102_0304,
                dir: 1,
                identity: 300,
                ports,
            };
            let (len, key) = e.lpm_key(1);
            assert_eq!(policy_entry(len, &key), Some(e));
        }
    }
}
