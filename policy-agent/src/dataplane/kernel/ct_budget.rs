//! The endpoints' conntrack budgets from user space (the datapath side is
//! `policy-ebpf`'s `ct_budget`): the limit written into the configuration,
//! the counts read for the metrics, and the periodic recount that
//! corrects them. The datapath counts each entry it creates and removes;
//! entries the LRU map evicts, or that expire without another packet, are
//! not taken off there, so [`KernelDataplane::recount_conntrack`] walks the
//! conntrack map, counts each endpoint's live entries (by the datapath's
//! own timeouts) and writes those counts.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;

use aya::maps::{HashMap, MapData, MapError, PerCpuHashMap};
use policy_common::{ct_state, dir, CtCount, CtKey, CtRefused, CtValue};

use super::{kernel_error, DataplaneError, KernelDataplane};
use crate::dataplane::ConntrackUsage;

/// Conntrack entries one endpoint may hold per direction by default
/// (`--conntrack-per-endpoint`): an eighth of the default conntrack map,
/// so one pod flooding new flows takes at most that share (both
/// directions: a quarter) and eight such pods cannot fill the map.
pub const DEFAULT_PER_ENDPOINT: u32 = 16_384;

/// `CLOCK_MONOTONIC` in nanoseconds, the clock of `bpf_ktime_get_ns`.
pub fn monotonic_ns() -> u64 {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: `ts` is a valid timespec to write into.
    unsafe { libc::clock_gettime(libc::CLOCK_MONOTONIC, &mut ts) };
    u64::try_from(ts.tv_sec)
        .unwrap_or(0)
        .saturating_mul(1_000_000_000)
        .saturating_add(u64::try_from(ts.tv_nsec).unwrap_or(0))
}

/// The live entries of `conntrack` at `now_ns`, by endpoint and direction
/// (an entry is live while its last packet is younger than its timeout,
/// as the datapath judges it).
pub fn live_counts(
    conntrack: &HashMap<MapData, CtKey, CtValue>,
    now_ns: u64,
) -> BTreeMap<u32, CtCount> {
    let mut out: BTreeMap<u32, CtCount> = BTreeMap::new();
    for item in conntrack.iter() {
        // The datapath changes the map while it is walked: an entry gone
        // meanwhile is simply not counted.
        let Ok((key, value)) = item else {
            continue;
        };
        if now_ns.saturating_sub(value.last_seen_ns) > ct_state::timeout_ns(key.proto, value.state)
        {
            continue;
        }
        let c = out.entry(key.ep_id).or_default();
        if key.dir == dir::INGRESS {
            c.ingress = c.ingress.saturating_add(1);
        } else {
            c.egress = c.egress.saturating_add(1);
        }
    }
    out
}

/// Writes `live` as the counts of `counts` (and zero for an endpoint
/// counted there that holds no live entry any more), leaving the
/// endpoints in `skip` as they are. A flow created between the walk and
/// this write is not counted until the next recount: an endpoint may go
/// over its budget by what it creates in that time.
pub fn correct(
    counts: &mut HashMap<MapData, u32, CtCount>,
    live: &BTreeMap<u32, CtCount>,
    skip: &BTreeSet<u32>,
) -> Result<(), DataplaneError> {
    let stale: Vec<u32> = counts
        .keys()
        .filter_map(Result::ok)
        .filter(|ep| !live.contains_key(ep) && !skip.contains(ep))
        .collect();
    for ep in stale {
        match counts.insert(ep, CtCount::default(), 0) {
            Ok(()) | Err(MapError::KeyNotFound) => {}
            Err(e) => {
                return Err(kernel_error(
                    format!("correcting the conntrack count of endpoint {ep}"),
                    e,
                ))
            }
        }
    }
    for (ep, c) in live.iter().filter(|(ep, _)| !skip.contains(ep)) {
        counts.insert(ep, c, 0).map_err(|e| {
            kernel_error(
                format!("correcting the conntrack count of endpoint {ep}"),
                e,
            )
        })?;
    }
    Ok(())
}

/// Each endpoint's counts and refusals as the maps hold them now.
pub fn usage(
    counts: &HashMap<MapData, u32, CtCount>,
    refused: &PerCpuHashMap<MapData, u32, CtRefused>,
) -> BTreeMap<u32, ConntrackUsage> {
    let mut out: BTreeMap<u32, ConntrackUsage> = BTreeMap::new();
    for (ep, c) in counts.iter().filter_map(Result::ok) {
        let u = out.entry(ep).or_default();
        u.entries_ingress = u64::try_from(c.ingress).unwrap_or(0);
        u.entries_egress = u64::try_from(c.egress).unwrap_or(0);
    }
    for (ep, per_cpu) in refused.iter().filter_map(Result::ok) {
        let u = out.entry(ep).or_default();
        for r in per_cpu.iter() {
            u.refused_ingress = u.refused_ingress.saturating_add(r.ingress);
            u.refused_egress = u.refused_egress.saturating_add(r.egress);
        }
    }
    out
}

impl KernelDataplane {
    /// Walks the conntrack map and writes each endpoint's live entries as
    /// its count (see the module docs); returns the counts written. The
    /// agent does the same in two steps, the walk outside its lock
    /// ([`Self::begin_conntrack_walk`], [`Self::end_conntrack_walk`]).
    pub fn recount_conntrack(&mut self) -> Result<BTreeMap<u32, CtCount>, DataplaneError> {
        let walk = self.begin_conntrack_walk();
        let live = walk();
        self.end_conntrack_walk(&live)?;
        Ok(live)
    }

    /// A walk of the conntrack map through its second handle, which runs
    /// without `self`; from now until [`Self::end_conntrack_walk`] the
    /// endpoints forgotten are remembered, so that their ids are not
    /// given the counts the walk finds for them.
    pub fn begin_conntrack_walk(&mut self) -> Box<dyn FnOnce() -> BTreeMap<u32, CtCount> + Send> {
        self.ct_forgotten = Some(BTreeSet::new());
        let map = Arc::clone(&self.maps.conntrack_walker);
        Box::new(move || live_counts(&map, monotonic_ns()))
    }

    /// Writes what a walk found (see [`correct`]), except for the
    /// endpoints forgotten since it began.
    pub fn end_conntrack_walk(
        &mut self,
        live: &BTreeMap<u32, CtCount>,
    ) -> Result<(), DataplaneError> {
        let forgotten = self.ct_forgotten.take().unwrap_or_default();
        correct(&mut self.maps.ct_count, live, &forgotten)
    }

    /// Forgets an endpoint's count and refusals (it is gone; its id may
    /// be given to another pod).
    pub(super) fn forget_conntrack_budget(&mut self, ep_id: u32) {
        let _ = self.maps.ct_count.remove(&ep_id);
        let _ = self.maps.ct_refused.remove(&ep_id);
        if let Some(forgotten) = &mut self.ct_forgotten {
            forgotten.insert(ep_id);
        }
    }

    /// Sets the conntrack entries one endpoint may hold per direction
    /// (0: no bound).
    pub fn set_conntrack_per_endpoint(&mut self, limit: u32) -> Result<(), DataplaneError> {
        if limit != self.cfg.ct_limit {
            let cfg = policy_common::Config {
                ct_limit: limit,
                ..self.cfg
            };
            self.maps.set_config(cfg)?;
            self.cfg = cfg;
        }
        Ok(())
    }
}
