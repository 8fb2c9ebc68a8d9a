//! Fitting a compiled [`MapState`] into maps of bounded size.
//!
//! The kernel maps hold both generations at once, so each generation may
//! use half of a map: a state that fits its half can always be written
//! while the other generation is live. [`fit`] checks a state against that
//! room before anything is written:
//!
//! - the maps every endpoint shares (endpoint flags, the ipcache of every
//!   pod address, the CIDR prefixes) cannot be cut per endpoint: a state
//!   that overflows one is refused ([`Exceeded`]) and the dataplane keeps
//!   what it holds;
//! - the policy entries belong to one endpoint each: endpoints are admitted
//!   one by one and one whose entries no longer fit is *denied*: its
//!   entries are left out and it is isolated in both directions, so it
//!   gets no traffic but the node's (deny-all, never allow-all). The order
//!   never depends on endpoint ids: first the endpoints admitted last time
//!   that need no more entries than they had then (together they fitted
//!   then, so they fit now: a pod enforced exactly stays so), then the
//!   others in the order they arrived. A pod whose policy grows, or a new
//!   sandbox, can only be denied itself, never push an admitted pod out.
//!
//! The CIDR map is shared, but its prefixes belong to policies: the
//! compiler gives its room out oldest policy first and fails closed the
//! policies that do not fit (see [`crate::compile::Limits`]), so a state
//! refused here for its CIDRs means the compiler was not told the room.

use std::borrow::Cow;
use std::collections::BTreeMap;

use policy_common::ep_flags;

use crate::state::MapState;

/// A map whose size is checked.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum MapKind {
    /// Endpoint flags, one entry per local endpoint.
    Endpoints,
    /// Exact pod addresses of the whole cluster.
    Ipcache,
    /// ipBlock prefixes.
    Cidrs,
    /// Per-endpoint allow entries.
    Policy,
}

impl MapKind {
    /// Every kind, in the order they are checked.
    pub const ALL: [MapKind; 4] = [
        MapKind::Endpoints,
        MapKind::Ipcache,
        MapKind::Cidrs,
        MapKind::Policy,
    ];

    /// The map's short name (metric label, log field).
    pub fn name(self) -> &'static str {
        match self {
            MapKind::Endpoints => "endpoints",
            MapKind::Ipcache => "ipcache",
            MapKind::Cidrs => "cidrs",
            MapKind::Policy => "policy",
        }
    }

    /// The agent flag that sizes the map.
    pub fn flag(self) -> &'static str {
        match self {
            MapKind::Endpoints => "--map-size-endpoints",
            MapKind::Ipcache => "--map-size-ipcache",
            MapKind::Cidrs => "--map-size-cidrs",
            MapKind::Policy => "--map-size-policy",
        }
    }
}

impl std::fmt::Display for MapKind {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.name())
    }
}

/// Entries each map has room for in one generation.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Capacity {
    /// Endpoint flags entries.
    pub endpoints: usize,
    /// Exact addresses.
    pub ipcache: usize,
    /// CIDR prefixes.
    pub cidrs: usize,
    /// Policy allow entries, all endpoints together.
    pub policy: usize,
}

impl Capacity {
    /// Room in `map`.
    pub fn of(&self, map: MapKind) -> usize {
        match map {
            MapKind::Endpoints => self.endpoints,
            MapKind::Ipcache => self.ipcache,
            MapKind::Cidrs => self.cidrs,
            MapKind::Policy => self.policy,
        }
    }
}

/// A shared map the state does not fit: nothing of it may be written.
#[derive(Clone, Copy, Debug, PartialEq, Eq, thiserror::Error)]
#[error(
    "the {map} map needs {needed} entries per generation and has room for {capacity} (raise {})",
    map.flag()
)]
pub struct Exceeded {
    /// The map.
    pub map: MapKind,
    /// Entries the state needs in it.
    pub needed: usize,
    /// Entries it has room for.
    pub capacity: usize,
}

/// An endpoint denied because its entries did not fit.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Denied {
    /// The map that is full.
    pub map: MapKind,
    /// Entries the endpoint needs in it.
    pub needed: usize,
    /// Entries that were still free when its turn came.
    pub free: usize,
}

/// What [`fit`] made of a state.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Fitted<'a> {
    /// The state to write: the input, with denied endpoints' entries left
    /// out and those endpoints isolated both ways (borrowed when nothing
    /// was denied).
    pub state: Cow<'a, MapState>,
    /// Denied endpoints by id.
    pub denied: BTreeMap<u32, Denied>,
    /// Per map: entries the input state needs (before any denial).
    pub needed: BTreeMap<MapKind, usize>,
}

/// Fits `state` into `cap` (see the module documentation). `admitted`
/// are the endpoints the previous fit admitted, with the entries they had:
/// those that need no more go first, so an endpoint enforced correctly
/// stays so when another one's policy grows. `arrival` orders the others
/// (the order their endpoints arrived; endpoints it lacks go last).
pub fn fit<'a>(
    state: &'a MapState,
    cap: &Capacity,
    admitted: &BTreeMap<u32, usize>,
    arrival: &BTreeMap<u32, u64>,
) -> Result<Fitted<'a>, Exceeded> {
    let mut per_ep: BTreeMap<u32, usize> = BTreeMap::new();
    for entry in state.policy.keys() {
        *per_ep.entry(entry.ep_id).or_default() += 1;
    }
    let needed: BTreeMap<MapKind, usize> = [
        (MapKind::Endpoints, state.endpoints.len()),
        (MapKind::Ipcache, state.ipcache.len()),
        (MapKind::Cidrs, state.cidrs.len()),
        (MapKind::Policy, state.policy.len()),
    ]
    .into_iter()
    .collect();
    for map in [MapKind::Endpoints, MapKind::Ipcache, MapKind::Cidrs] {
        let n = needed.get(&map).copied().unwrap_or(0);
        if n > cap.of(map) {
            return Err(Exceeded {
                map,
                needed: n,
                capacity: cap.of(map),
            });
        }
    }
    let mut order: Vec<u32> = per_ep.keys().copied().collect();
    // Admitted ones that did not grow first, then by arrival.
    order.sort_by_key(|ep| {
        let need = per_ep.get(ep).copied().unwrap_or(0);
        let kept = admitted.get(ep).is_some_and(|had| need <= *had);
        (!kept, arrival.get(ep).copied().unwrap_or(u64::MAX), *ep)
    });
    let mut used = 0usize;
    let mut denied = BTreeMap::new();
    for ep in order {
        let n = per_ep.get(&ep).copied().unwrap_or(0);
        if used + n <= cap.policy {
            used += n;
        } else {
            denied.insert(
                ep,
                Denied {
                    map: MapKind::Policy,
                    needed: n,
                    free: cap.policy - used,
                },
            );
        }
    }
    let state = if denied.is_empty() {
        Cow::Borrowed(state)
    } else {
        let mut out = state.clone();
        out.policy.retain(|e, _| !denied.contains_key(&e.ep_id));
        for ep in denied.keys() {
            out.endpoints
                .insert(*ep, ep_flags::ISOLATED_INGRESS | ep_flags::ISOLATED_EGRESS);
        }
        Cow::Owned(out)
    };
    Ok(Fitted {
        state,
        denied,
        needed,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::state::{PolicyEntry, PortMatch};
    use policy_common::{dir, PolicyValue};

    fn state(entries: &[(u32, usize)]) -> MapState {
        let mut s = MapState::default();
        for (ep, n) in entries {
            s.endpoints.insert(*ep, ep_flags::ISOLATED_INGRESS);
            for i in 0..*n {
                s.policy.insert(
                    PolicyEntry {
                        ep_id: *ep,
                        dir: dir::INGRESS,
                        identity: 300 + i as u32,
                        ports: PortMatch::AnyProtocol,
                    },
                    PolicyValue { rule: 1, flags: 0 },
                );
            }
        }
        s.ipcache.insert([1; 16], 300);
        s
    }

    fn cap(policy: usize) -> Capacity {
        Capacity {
            endpoints: 8,
            ipcache: 8,
            cidrs: 8,
            policy,
        }
    }

    #[test]
    fn a_state_that_fits_is_unchanged() {
        let s = state(&[(1, 2), (2, 2)]);
        let f = fit(&s, &cap(4), &BTreeMap::new(), &BTreeMap::new()).unwrap();
        assert_eq!(*f.state, s);
        assert!(matches!(f.state, Cow::Borrowed(_)));
        assert!(f.denied.is_empty());
        assert_eq!(f.needed[&MapKind::Policy], 4);
    }

    #[test]
    fn the_endpoint_that_overflows_is_denied_both_ways_and_the_rest_kept() {
        let s = state(&[(1, 2), (2, 5), (3, 1)]);
        let f = fit(&s, &cap(4), &BTreeMap::new(), &BTreeMap::new()).unwrap();
        assert_eq!(
            f.denied.keys().copied().collect::<Vec<_>>(),
            [2],
            "{:?}",
            f.denied
        );
        assert_eq!(
            f.denied[&2],
            Denied {
                map: MapKind::Policy,
                needed: 5,
                free: 2
            }
        );
        // Denied: isolated both ways, no allow entry (deny-all, never
        // allow-all).
        assert_eq!(
            f.state.endpoints[&2],
            ep_flags::ISOLATED_INGRESS | ep_flags::ISOLATED_EGRESS
        );
        assert!(f.state.policy.keys().all(|e| e.ep_id != 2));
        // The others keep exactly their entries and flags.
        for ep in [1, 3] {
            assert_eq!(f.state.endpoints[&ep], s.endpoints[&ep]);
            let want: Vec<_> = s.policy.iter().filter(|(e, _)| e.ep_id == ep).collect();
            let got: Vec<_> = f
                .state
                .policy
                .iter()
                .filter(|(e, _)| e.ep_id == ep)
                .collect();
            assert_eq!(got, want);
        }
        assert!(f.state.policy.len() <= 4);
    }

    #[test]
    fn an_admitted_endpoint_that_grows_cannot_push_another_out() {
        // Both were admitted with 2 entries; endpoint 1 (the lower id, the
        // first arrival) grew to 3: it is the one denied.
        let s = state(&[(1, 3), (2, 2)]);
        let admitted = [(1, 2), (2, 2)].into_iter().collect();
        let arrival = [(1, 0), (2, 1)].into_iter().collect();
        let f = fit(&s, &cap(4), &admitted, &arrival).unwrap();
        assert_eq!(f.denied.keys().copied().collect::<Vec<_>>(), [1]);
        // New endpoints go by arrival, not by id.
        let s = state(&[(1, 3), (2, 3)]);
        let arrival = [(1, 9), (2, 3)].into_iter().collect();
        let f = fit(&s, &cap(4), &BTreeMap::new(), &arrival).unwrap();
        assert_eq!(f.denied.keys().copied().collect::<Vec<_>>(), [1]);
    }

    #[test]
    fn shared_maps_that_overflow_refuse_the_state() {
        let mut s = state(&[(1, 1)]);
        for i in 0..9u8 {
            s.ipcache.insert([i + 10; 16], 300);
        }
        let e = fit(&s, &cap(4), &BTreeMap::new(), &BTreeMap::new()).unwrap_err();
        assert_eq!(e.map, MapKind::Ipcache);
        assert_eq!(e.needed, 10);
        assert!(e.to_string().contains("--map-size-ipcache"), "{e}");
    }
}
