//! Sources of cluster state, behind one boundary: each source publishes
//! whole [`Snapshot`]s on a `tokio::sync::watch` channel; the agent only ever
//! reads that channel. Today: manifest files ([`file`]). The kube-rs
//! watcher source plugs in here.

pub mod file;
pub mod kube;

use policy_engine::model::Snapshot;
use tokio::sync::watch;

/// The receiving end every source feeds: `None` until the first complete
/// state has been read (the agent serves no ADD before that).
pub type SnapshotRx = watch::Receiver<Option<Snapshot>>;
