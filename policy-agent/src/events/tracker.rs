//! Which policy versions the agent has taken and not reported yet, and
//! the [`Notice`]s an apply that succeeded makes of them. Pure: the
//! agent calls it under its lock, with what it holds.

use std::collections::{BTreeMap, BTreeSet};
use std::time::SystemTime;

use policy_engine::compile::CompileError;
use policy_engine::model::{PodRef, PolicyRef, Snapshot};

use super::{Notice, Origin, ENFORCED, INVALID, OVER_BUDGET};

/// Per policy, the version taken and not reported yet, and the last one
/// reported (so each version is reported at most once by this agent).
#[derive(Debug)]
pub struct Tracker {
    node: String,
    pending: BTreeMap<PolicyRef, Origin>,
    reported: BTreeMap<PolicyRef, (String, i64)>,
}

impl Tracker {
    /// A tracker for the agent of node `node`.
    pub fn new(node: impl Into<String>) -> Self {
        Self {
            node: node.into(),
            pending: BTreeMap::new(),
            reported: BTreeMap::new(),
        }
    }

    /// The agent has taken `origin`'s version of `policy` into its state.
    pub fn origin(&mut self, policy: PolicyRef, origin: Origin) {
        let version = (origin.uid.clone(), origin.generation);
        if self.reported.get(&policy) == Some(&version) {
            return;
        }
        match self.pending.get(&policy) {
            // A later event of the same version (a label change, a relist)
            // does not move "the change" later.
            Some(p) if p.uid == origin.uid && p.generation == origin.generation => {}
            _ => {
                self.pending.insert(policy, origin);
            }
        }
    }

    /// `policy` is gone: nothing is reported for it.
    pub fn forget(&mut self, policy: &PolicyRef) {
        self.pending.remove(policy);
        self.reported.remove(policy);
    }

    /// Versions taken and not reported yet.
    pub fn pending(&self) -> usize {
        self.pending.len()
    }

    /// An apply has succeeded: the maps hold `snapshot` compiled for the
    /// local pods `local`, with `errors`. One notice per pending policy
    /// still in the snapshot: a Warning if it fails closed, else (unless it
    /// only came from a list) `Enforced` with how many local pods it
    /// selects and how long after its watch event arrived.
    pub fn applied<'a>(
        &mut self,
        snapshot: &Snapshot,
        local: impl Iterator<Item = &'a PodRef>,
        errors: &[CompileError],
        now: SystemTime,
    ) -> Vec<Notice> {
        if self.pending.is_empty() {
            return Vec::new();
        }
        let local: BTreeSet<&PodRef> = local.collect();
        let mut out = Vec::new();
        for (policy, origin) in std::mem::take(&mut self.pending) {
            let Some(spec) = snapshot.policies.get(&policy) else {
                continue; // deleted meanwhile: nothing to say
            };
            let pods = local
                .iter()
                .filter(|p| p.namespace == policy.namespace)
                .filter(|p| match (&spec.pod_selector, snapshot.pods.get(p)) {
                    (_, None) => false,
                    (_, Some(info)) if info.host_network => false,
                    // An invalid selector isolates the whole namespace.
                    (None, Some(_)) => true,
                    (Some(sel), Some(info)) => sel.matches(&info.labels),
                })
                .count();
            let pods = plural(pods, "pod");
            let failure = errors.iter().find(|e| e.policy() == &policy);
            let (warning, reason, note) = match failure {
                Some(CompileError::InvalidPolicy { field, message, .. }) => (
                    true,
                    INVALID,
                    format!(
                        "Failed closed on {}: {field}: {message}; its {pods} here are isolated \
                         and it allows nothing",
                        self.node
                    ),
                ),
                Some(CompileError::OverBudget { message, .. }) => (
                    true,
                    OVER_BUDGET,
                    format!(
                        "Failed closed on {}: {message}; its {pods} here are isolated and it \
                         allows nothing",
                        self.node
                    ),
                ),
                // Never about a NetworkPolicy (they name no namespace).
                Some(
                    CompileError::InvalidClusterPolicy { .. }
                    | CompileError::ClusterPolicyOverBudget { .. },
                ) => continue,
                None if origin.listed => {
                    self.reported
                        .insert(policy, (origin.uid, origin.generation));
                    continue;
                }
                None => {
                    let ms = now
                        .duration_since(origin.seen)
                        .unwrap_or_default()
                        .as_millis();
                    (
                        false,
                        ENFORCED,
                        format!(
                            "Enforced on {}: {pods}, {ms} ms after the change (generation {})",
                            self.node, origin.generation
                        ),
                    )
                }
            };
            self.reported
                .insert(policy.clone(), (origin.uid.clone(), origin.generation));
            out.push(Notice {
                policy,
                uid: origin.uid,
                warning,
                reason,
                note,
            });
        }
        out
    }
}

fn plural(n: usize, what: &str) -> String {
    if n == 1 {
        format!("1 {what}")
    } else {
        format!("{n} {what}s")
    }
}
