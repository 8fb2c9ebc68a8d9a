//! Taking Palisade off a node, and keeping it chained while it is on.
//!
//! While the agent runs with `--cni-conf-dir`, a [`ChainKeeper`] puts
//! `palisade-cni` back as the last plugin whenever the network plugin
//! rewrites its conflist (Flannel does when it restarts). It writes the
//! entry only once the agent has shown it enforces (its first ready state,
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

use cni_bin::install::{self, InstallError, UninstallOptions, Uninstalled};
use k8s_openapi::api::apps::v1::DaemonSet;

use crate::dataplane::kernel::KernelDataplane;
use crate::dataplane::DataplaneError;

pub mod owner;

pub use owner::{decide, Owner, OwnerWatch, Seen, Sightings};

/// How often the chain entry is checked.
pub const CHAIN_CHECK_EVERY: Duration = Duration::from_secs(10);

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

    /// Checks now and then every [`CHAIN_CHECK_EVERY`] until the task is
    /// aborted (when the agent stops).
    pub fn spawn(self) -> tokio::task::JoinHandle<()> {
        tokio::spawn(async move {
            let mut tick = tokio::time::interval(CHAIN_CHECK_EVERY);
            loop {
                tick.tick().await;
                match self.check() {
                    Ok(true) => tracing::warn!(
                        dir = %self.conflist_dir.display(),
                        "palisade-cni was missing from the active conflist: chained it again"
                    ),
                    Ok(false) => {}
                    Err(e) => tracing::error!(error = %e, "cannot keep palisade-cni chained"),
                }
            }
        })
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
