//! Tracked flows carried over a switch of maps (a map layout upgrade, or
//! maps resized): the old folder's conntrack entries are copied into the
//! new conntrack map before the new programs see a packet, so replies of
//! established flows keep passing — a pod isolated for ingress gets its
//! replies only through conntrack. Each copied entry is marked with a
//! revision the new maps never had, so its next packet is judged again
//! against the new policy: what the new policy denies is cut, as after any
//! policy change.

use std::mem::size_of;

use aya::maps::{HashMap, Map, MapData, MapInfo};
use policy_common::{maps as names, CtKey, CtValue, LAYOUT_VERSION};

use super::{kernel_error, DataplaneError, PinPaths};

/// Layout versions whose conntrack entries ([`CtKey`], [`CtValue`] and the
/// datapath's state bits) are those of [`LAYOUT_VERSION`]. A layout that
/// changes them starts a new list with only itself; entries of a version
/// not listed together with the current one are not carried (replies of
/// flows established before such an upgrade are then judged as new
/// packets).
///
/// Layouts 3 and 4 (Services) only added state bits: an entry carried from
/// 1 or 2 has none of them, so it is neither deferred (it was judged on
/// its destination, as 1 and 2 judged everything) nor marked as sent by
/// the node's own stack; a flow from the node is then judged without the
/// node's exemption the next time a policy change re-judges it. Layout 5
/// (the pod's MAC in the endpoint entry) and layout 6 (each endpoint's
/// conntrack budget: its count and the limit in the configuration) left
/// the entries as they were; carried entries are counted against their
/// endpoint's budget from the first recount on. Layout 7 (audit mode:
/// endpoint flag bits, policy entries under pseudo-directions, a verdict
/// code; a deny flag in policy entries, for ClusterNetworkPolicy tiers)
/// left the conntrack entries as they were too.
pub const CONNTRACK_LAYOUTS: &[u32] = &[1, 2, 3, 4, 5, 6, 7];

/// `BPF_NOEXIST`: insert only if the key is absent.
const BPF_NOEXIST: u64 = 1;

/// Whether entries pinned by an agent of layout `version` can be carried.
pub fn compatible(version: u32) -> bool {
    CONNTRACK_LAYOUTS.contains(&version) && CONNTRACK_LAYOUTS.contains(&LAYOUT_VERSION)
}

/// Copies every entry of `old`'s conntrack map that `into` does not hold
/// yet, marked to be judged again (`revision` is the configuration's
/// current one). Returns how many were copied; 0 when `old` has no
/// conntrack map or one this layout cannot read.
pub(super) fn conntrack(
    old: &PinPaths,
    into: &mut HashMap<MapData, CtKey, CtValue>,
    revision: u32,
) -> Result<usize, DataplaneError> {
    let path = old.map(names::CONNTRACK);
    if !path.exists() {
        return Ok(0);
    }
    let what = || format!("carrying tracked flows over from {}", path.display());
    let info = MapInfo::from_pin(&path).map_err(|e| kernel_error(what(), e))?;
    let sizes_match = usize::try_from(info.key_size()).ok() == Some(size_of::<CtKey>())
        && usize::try_from(info.value_size()).ok() == Some(size_of::<CtValue>());
    if !compatible(old.version()) || !sizes_match {
        tracing::warn!(
            from = old.version(),
            to = LAYOUT_VERSION,
            "tracked flows not carried over: their layout differs; replies of established flows are judged as new packets"
        );
        return Ok(0);
    }
    let data = MapData::from_pin(&path).map_err(|e| kernel_error(what(), e))?;
    let from: HashMap<MapData, CtKey, CtValue> =
        HashMap::try_from(Map::LruHashMap(data)).map_err(|e| kernel_error(what(), e))?;
    // Never the current revision: the entry's next packet is judged again.
    let stale = revision.wrapping_sub(1);
    let mut copied = 0;
    for item in from.iter() {
        // The old programs may change the map while it is walked: an entry
        // gone meanwhile is simply not copied.
        let Ok((key, mut value)) = item else {
            continue;
        };
        value.revision = stale;
        // BPF_NOEXIST: an entry the new programs made already is newer.
        if into.insert(key, value, BPF_NOEXIST).is_ok() {
            copied += 1;
        }
    }
    Ok(copied)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_current_layout_says_whether_its_flows_carry() {
        // Bumping LAYOUT_VERSION means deciding whether tracked flows carry
        // over from the previous layout: list it here either way.
        assert!(
            CONNTRACK_LAYOUTS.contains(&LAYOUT_VERSION),
            "add LAYOUT_VERSION {LAYOUT_VERSION} to CONNTRACK_LAYOUTS (and drop the older \
             versions if CtKey, CtValue or the state bits changed)"
        );
        assert!(compatible(LAYOUT_VERSION));
        assert!(!compatible(0));
    }
}
