//! Audit mode per policy (`policy.palisade.dev/mode: audit`).
//!
//! The enforced state is compiled from the snapshot *without* the audited
//! policies. For the endpoints an audited policy isolates, the compiler
//! adds the as-enforced view (the state the snapshot *with* them would
//! give) for those directions only: an `ep_flags::AUDIT_*` bit on the
//! endpoint, and allow entries under the pseudo-directions
//! `dir::AUDIT_INGRESS`/`AUDIT_EGRESS` in the same policy map — the
//! endpoint's enforced entries of that direction plus the audited
//! policies' own. As-enforced, such an endpoint is isolated in that
//! direction (an audited policy selects it), so the datapath asks one
//! question more for a new flow the enforced view lets pass: does an
//! as-enforced entry allow it? If not, the flow is reported as a
//! would-drop and passes. Endpoints no audited policy selects get no
//! bit and no entry, and cost nothing more.

use std::collections::BTreeSet;

use policy_common::{dir, ep_flags, PolicyValue};

use super::{dir_index, sort_min_rule, Compiled};
use crate::model::Direction;
use crate::state::PolicyEntry;

/// The `ep_flags` audit bit of `direction`.
pub fn audit_flag(direction: Direction) -> u32 {
    match direction {
        Direction::Ingress => ep_flags::AUDIT_INGRESS,
        Direction::Egress => ep_flags::AUDIT_EGRESS,
    }
}

/// Adds the as-enforced view to `out` (whose `audit_isolation` is filled):
/// the audit bits on its endpoints, and the allow entries under the
/// pseudo-directions, from the `enforced` entries (sorted, one per key)
/// and the `audited` policies' entries. Returns the view's entries,
/// sorted, one per key (lowest rule id).
pub(super) fn view(
    out: &mut Compiled,
    enforced: &[(PolicyEntry, PolicyValue)],
    audited: Vec<(PolicyEntry, PolicyValue)>,
) -> Vec<(PolicyEntry, PolicyValue)> {
    let mut sides: BTreeSet<(u32, u8)> = BTreeSet::new();
    for (ep, by) in &out.audit_isolation {
        for direction in Direction::BOTH {
            if by[dir_index(direction)].is_empty() {
                continue;
            }
            if let Some(flags) = out.state.endpoints.get_mut(ep) {
                *flags |= audit_flag(direction);
                sides.insert((*ep, direction.dir()));
            }
        }
    }
    if sides.is_empty() {
        return Vec::new();
    }
    let mut entries: Vec<(PolicyEntry, PolicyValue)> = enforced
        .iter()
        .filter(|(e, _)| sides.contains(&(e.ep_id, e.dir)))
        .chain(audited.iter())
        .map(|(e, v)| {
            (
                PolicyEntry {
                    dir: dir::audit(e.dir),
                    ..*e
                },
                *v,
            )
        })
        .collect();
    sort_min_rule(&mut entries);
    entries
}
