//! Taking Palisade off a node, and keeping it chained while it is on.
//!
//! While the agent runs with `--cni-conf-dir`, a [`ChainKeeper`] puts
//! `palisade-cni` back as the last plugin whenever the network plugin
//! rewrites its conflist (Flannel does when it restarts, by writing a new
//! file and renaming it over the old one): it watches the folder with
//! inotify and checks the active conflist on every change there, so a pod
//! created meanwhile has a window of milliseconds, not seconds, to start
//! without the entry (such a pod is adopted, see
//! [`crate::reconcile::adopt`]). It writes the entry only once the agent
//! has shown it enforces (its first ready state,
//! [`ChainKeeper::enforcing`]): an agent that cannot load its programs (no
//! BTF, a seccomp profile refusing `bpf`, a runtime without `CAP_BPF`)
//! never chains, so the node's pods keep starting without Palisade while it
//! says why (log, `/readyz`, `palisade_dataplane_loaded`, `status`) instead
//! of failing every CNI ADD. An entry a previous agent wrote stays: once a
//! node has been enforced it stays fail-closed.
//!
//! When the agent stops because its DaemonSet is gone or being deleted, or
//! its namespace is terminating ([`owner`]: decided from watches opened at
//! start, so it works when `kubectl delete -k` has already deleted the RBAC
//! and the ServiceAccount), it takes the node side with it
//! ([`remove_from_node`]): first the chain entry (so no new pod waits for
//! an agent that will not come back), then the binary, then the programs
//! and pins. When it stops for any other reason (a rolling update, a
//! restart, a manual kill), it leaves all of that in place: the pinned
//! programs keep enforcing and the next agent adopts them.

use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use futures::StreamExt;
use inotify::{Inotify, WatchMask};

use cni_bin::install::{self, InstallError, UninstallOptions, Uninstalled};
use k8s_openapi::api::apps::v1::DaemonSet;

use crate::dataplane::kernel::KernelDataplane;
use crate::dataplane::DataplaneError;

pub mod owner;

pub use owner::{decide, Owner, OwnerWatch, Seen, Sightings};

/// How often the chain entry is checked besides on every change in the
/// folder (a safety net: inotify drops events when its queue overflows).
pub const CHAIN_CHECK_EVERY: Duration = Duration::from_secs(10);

/// How long to wait before watching the folder again when it cannot be
/// watched (it does not exist yet, say).
pub const WATCH_RETRY: Duration = Duration::from_secs(1);

/// What stays chained, and where.
#[derive(Clone, Debug)]
pub struct ChainKeeper {
    /// The runtime's CNI configuration folder.
    pub conflist_dir: PathBuf,
    /// The agent socket the entry names (`None`: the plugin's default).
    pub agent_socket: Option<PathBuf>,
    /// Set once the agent has enforced a complete state (it stays set):
    /// until then a missing entry is not written.
    pub enforcing: Arc<AtomicBool>,
}

impl ChainKeeper {
    /// Chains the entry into the active conflist if it is missing and the
    /// agent is [`enforcing`](Self::enforcing); `true` when it changed the
    /// file. No conflist yet is not an error (the network plugin has not
    /// written it).
    pub fn check(&self) -> Result<bool, InstallError> {
        if !self.enforcing.load(Ordering::Acquire) {
            return Ok(false);
        }
        let Some(active) = install::active_config(&self.conflist_dir)? else {
            return Ok(false);
        };
        install::ensure_chained(
            &active,
            &install::chained_entry(self.agent_socket.as_deref()),
        )
    }

    /// [`Self::check`], logging what it did.
    fn recheck(&self) {
        match self.check() {
            Ok(true) => tracing::warn!(
                dir = %self.conflist_dir.display(),
                "palisade-cni was missing from the active conflist: chained it again"
            ),
            Ok(false) => {}
            Err(e) => tracing::error!(error = %e, "cannot keep palisade-cni chained"),
        }
    }

    /// Checks now, on every change in the folder, and every
    /// [`CHAIN_CHECK_EVERY`] besides, until the task is aborted (when the
    /// agent stops). A folder that cannot be watched (not there yet) is
    /// checked every [`WATCH_RETRY`] until it can.
    pub fn spawn(self) -> tokio::task::JoinHandle<()> {
        tokio::spawn(async move {
            let mut failing = false;
            loop {
                match self.watch().await {
                    Ok(()) => failing = false,
                    Err(e) => {
                        if !failing {
                            tracing::warn!(dir = %self.conflist_dir.display(), error = %e, "cannot watch the CNI configuration folder; checking it every second until it can be");
                        }
                        failing = true;
                        self.recheck();
                        tokio::time::sleep(WATCH_RETRY).await;
                    }
                }
            }
        })
    }

    /// Watches the folder until the watch ends (the folder was removed or
    /// replaced), checking on each change.
    async fn watch(&self) -> std::io::Result<()> {
        let inotify = Inotify::init()?;
        inotify.watches().add(
            &self.conflist_dir,
            WatchMask::CREATE
                | WatchMask::CLOSE_WRITE
                | WatchMask::MOVED_TO
                | WatchMask::MOVED_FROM
                | WatchMask::DELETE
                | WatchMask::DELETE_SELF
                | WatchMask::MOVE_SELF,
        )?;
        let mut events = inotify.into_event_stream(vec![0u8; 4096])?;
        tracing::info!(dir = %self.conflist_dir.display(), "watching the CNI configuration for rewrites");
        // Anything before the watch was in place.
        self.recheck();
        let mut tick = tokio::time::interval(CHAIN_CHECK_EVERY);
        loop {
            tokio::select! {
                event = events.next() => match event {
                    Some(Ok(ev)) => {
                        self.recheck();
                        if ev.mask.intersects(
                            inotify::EventMask::IGNORED
                                | inotify::EventMask::DELETE_SELF
                                | inotify::EventMask::MOVE_SELF,
                        ) {
                            return Ok(());
                        }
                    }
                    Some(Err(e)) => return Err(e),
                    None => return Ok(()),
                },
                _ = tick.tick() => self.recheck(),
            }
        }
    }
}

/// What to take off the node.
#[derive(Clone, Debug)]
pub struct NodeSide {
    /// The runtime's CNI configuration folder (`None`: leave it alone).
    pub conflist_dir: Option<PathBuf>,
    /// The CNI bin folder holding `palisade-cni` (`None`: leave it).
    pub cni_bin_dir: Option<PathBuf>,
    /// The agent's bpffs folder.
    pub bpffs_dir: PathBuf,
}

/// Failures of an uninstall; each says how far it got.
#[derive(Debug, thiserror::Error)]
pub enum UninstallError {
    /// The chain entry or the binary could not be removed: the programs
    /// were left attached (pods would otherwise start unenforced while the
    /// entry still makes them wait for an agent).
    #[error("removing palisade-cni from the node: {0} (programs and pins left in place)")]
    Chain(#[from] InstallError),
    /// The programs or pins could not be removed.
    #[error("the chain entry is gone, but detaching the programs failed: {0}")]
    Dataplane(#[from] DataplaneError),
}

/// Removes the chain entry from every conflist, then the binary, then
/// every program and pin of the agent (see the module doc). Idempotent.
pub fn remove_from_node(side: &NodeSide) -> Result<Uninstalled, UninstallError> {
    let mut done = Uninstalled::default();
    if let Some(dir) = &side.conflist_dir {
        done = install::uninstall(&UninstallOptions {
            conflist_dir: dir.clone(),
            bin_dir: side.cni_bin_dir.clone().unwrap_or_default(),
            keep_binary: side.cni_bin_dir.is_none(),
        })?;
    }
    KernelDataplane::remove_from_node(&side.bpffs_dir)?;
    Ok(done)
}

/// Whether the DaemonSet `owner` is gone or being deleted: `kubectl
/// delete` removes it before its pods (background propagation) or marks it
/// deleted until they are gone (foreground). An error (the API server
/// unreachable, or `401`/`403` once the ServiceAccount or RBAC is deleted)
/// is returned as such: [`on_stop`] then decides from what its
/// [`OwnerWatch`] saw.
pub async fn owner_removed(client: kube::Client, owner: &Owner) -> Result<bool, kube::Error> {
    let api: kube::Api<DaemonSet> = kube::Api::namespaced(client, &owner.namespace);
    Ok(match api.get_opt(&owner.name).await? {
        None => true,
        Some(ds) => ds.metadata.deletion_timestamp.is_some(),
    })
}

/// How long the agent waits, as it stops, for a watch event that may
/// still be on its way when neither the watches nor the API server have
/// said "removed" yet.
pub const STOP_PATIENCE: Duration = Duration::from_secs(2);

/// What the agent does with the node side as it stops: removes it when
/// [`decide`] says so from what `watch` saw and a fresh `GET` of `owner`
/// (when the API server still answers), else leaves it. Returns whether it
/// removed it.
pub async fn on_stop(
    owner: &Owner,
    side: &NodeSide,
    watch: Option<&mut OwnerWatch>,
) -> anyhow::Result<bool> {
    let confirmed = match kube::Client::try_default().await {
        Ok(client) => {
            match tokio::time::timeout(Duration::from_secs(5), owner_removed(client, owner)).await {
                Ok(Ok(removed)) => Some(removed),
                Ok(Err(e)) => {
                    tracing::info!(%owner, error = %e, "cannot ask the API server for the DaemonSet (RBAC or ServiceAccount deleted?): deciding from what the watches saw");
                    None
                }
                Err(_) => {
                    tracing::info!(%owner, "asking the API server for the DaemonSet timed out: deciding from what the watches saw");
                    None
                }
            }
        }
        Err(e) => {
            tracing::info!(error = %e, "no API client: deciding from what the watches saw");
            None
        }
    };
    let seen = match watch {
        Some(w) if confirmed.is_none() => w.wait_for_removal(STOP_PATIENCE).await,
        Some(w) => w.seen(),
        None => Sightings::default(),
    };
    if !decide(&seen, confirmed) {
        tracing::info!(%owner, ?seen, ?confirmed, "not an uninstall: programs and chain entry stay for the next agent");
        return Ok(false);
    }
    tracing::warn!(%owner, ?seen, ?confirmed, "the DaemonSet or its namespace is being deleted: removing Palisade from this node");
    let done = remove_from_node(side)?;
    for path in &done.unchained {
        tracing::info!(path = %path.display(), "removed palisade-cni from the conflist");
    }
    tracing::info!(bpffs = %side.bpffs_dir.display(), "programs detached and pins removed");
    Ok(true)
}

#[cfg(test)]
mod tests {
    use super::*;

    const FLANNEL: &str = r#"{
  "name": "cbr0",
  "cniVersion": "0.3.1",
  "plugins": [
    {"type": "flannel", "delegate": {"hairpinMode": true, "isDefaultGateway": true}},
    {"type": "portmap", "capabilities": {"portMappings": true}}
  ]
}
"#;

    /// Writes the conflist as Flannel's init container does: a new file
    /// renamed over the old one.
    fn flannel_rewrites(dir: &std::path::Path) {
        let tmp = dir.join(".10-flannel.conflist.tmp");
        std::fs::write(&tmp, FLANNEL).unwrap();
        std::fs::rename(&tmp, dir.join("10-flannel.conflist")).unwrap();
    }

    fn chained(dir: &std::path::Path) -> bool {
        std::fs::read_to_string(dir.join("10-flannel.conflist"))
            .unwrap()
            .contains(cni_bin::install::PLUGIN_TYPE)
    }

    /// Each rewrite by rename is chained again within well under a second
    /// (the 10 s check alone would leave pods created meanwhile
    /// unenforced), and so is a conflist written once the keeper runs.
    #[tokio::test]
    async fn a_conflist_rewritten_by_rename_is_chained_again_at_once() {
        let dir = tempfile::tempdir().unwrap();
        let keeper = ChainKeeper {
            conflist_dir: dir.path().to_path_buf(),
            agent_socket: None,
            enforcing: Arc::new(AtomicBool::new(true)),
        }
        .spawn();
        // The keeper watches before the network plugin writes its file.
        tokio::time::sleep(Duration::from_millis(200)).await;
        for round in 0..5 {
            flannel_rewrites(dir.path());
            let started = std::time::Instant::now();
            while !chained(dir.path()) {
                assert!(
                    started.elapsed() < Duration::from_millis(500),
                    "round {round}: not chained again within 500 ms"
                );
                tokio::time::sleep(Duration::from_millis(5)).await;
            }
        }
        keeper.abort();
    }
}
