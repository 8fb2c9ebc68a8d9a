//! One read of the cluster's state for the users' tools (`simulate
//! --kube`, `explain --kube`): the agent's own watchers
//! ([`super::kube::spawn_with`]) run until each kind has been listed once,
//! and their [`Change`]s fill a [`Snapshot`]. The API objects become the
//! model's entries by the very conversion the agent's watch makes, so the
//! tools judge the state an agent would enforce; objects the model
//! rejects are skipped and logged as the agent logs them.

use std::collections::BTreeSet;
use std::time::Duration;

use kube::Client;
use policy_engine::model::Snapshot;

use super::{Change, Kind};

/// How long the lists may take before the read gives up.
pub const READ_TIMEOUT: Duration = Duration::from_secs(120);

/// Why the cluster's state could not be read.
#[derive(Debug, thiserror::Error)]
pub enum ReadError {
    /// A list failed (API server unreachable, RBAC forbids it, ...).
    #[error("cannot list {kind}: {reason}")]
    Lost {
        /// The kind.
        kind: Kind,
        /// The API server's message, or the client's.
        reason: String,
    },
    /// Not every kind was listed within [`READ_TIMEOUT`].
    #[error("the API server did not list {missing} within {timeout:?}")]
    Timeout {
        /// The kinds not listed yet.
        missing: String,
        /// The time allowed.
        timeout: Duration,
    },
}

/// Lists Pods, Namespaces, NetworkPolicies, Services and EndpointSlices
/// once, all namespaces, into a snapshot.
pub async fn read(client: Client) -> Result<Snapshot, ReadError> {
    read_within(client, READ_TIMEOUT).await
}

/// [`read`] with another time limit.
pub async fn read_within(client: Client, timeout: Duration) -> Result<Snapshot, ReadError> {
    let mut rx = super::kube::spawn_with(client);
    let mut snapshot = Snapshot::default();
    let mut listed: BTreeSet<Kind> = BTreeSet::new();
    let deadline = tokio::time::Instant::now() + timeout;
    while listed.len() < Kind::ALL.len() {
        let change = match tokio::time::timeout_at(deadline, rx.recv()).await {
            Ok(Some(change)) => change,
            // The watchers ended (they do not): nothing more will come.
            Ok(None) | Err(_) => {
                let missing: Vec<String> = Kind::ALL
                    .iter()
                    .filter(|k| !listed.contains(k))
                    .map(ToString::to_string)
                    .collect();
                return Err(ReadError::Timeout {
                    missing: missing.join(", "),
                    timeout,
                });
            }
        };
        match change {
            Change::Lost { kind, reason } => return Err(ReadError::Lost { kind, reason }),
            Change::Listed(l) => {
                listed.insert(l.kind());
            }
            other => apply(&mut snapshot, other),
        }
    }
    Ok(snapshot)
}

/// Puts one change into `snapshot`.
pub fn apply(snapshot: &mut Snapshot, change: Change) {
    match change {
        Change::Replace(s) => *snapshot = s,
        Change::Pod(r, Some(info)) => snapshot.insert_pod(r, info),
        Change::Pod(r, None) => {
            snapshot.remove_pod(&r);
        }
        Change::Namespace(name, Some(info)) => {
            snapshot.namespaces.insert(name, info);
        }
        Change::Namespace(name, None) => {
            snapshot.remove_namespace(&name);
        }
        Change::Policy(r, policy) => match *policy {
            Some(p) => {
                snapshot.policies.insert(r, p);
            }
            None => {
                snapshot.remove_policy(&r);
            }
        },
        Change::Service(r, Some(info)) => {
            snapshot.services.insert(r, info);
        }
        Change::Service(r, None) => {
            snapshot.services.remove(&r);
        }
        Change::EndpointSlice(r, subset) => {
            snapshot.set_endpoint_slice(&r, subset);
        }
        Change::PolicyOrigin(..)
        | Change::Listed(_)
        | Change::Seen { .. }
        | Change::Lost { .. } => {}
    }
}
