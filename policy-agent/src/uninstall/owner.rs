//! Is this an uninstall? What the agent sees of its own install while it
//! runs, and the decision it takes from that as it stops.
//!
//! `kubectl delete -k manifests/` deletes the agent's Namespace, its
//! ServiceAccount, its RBAC and its DaemonSet in one command, and only
//! then does the kubelet stop the agent. A question asked of the API server
//! at that moment gets `401` (the ServiceAccount, and so its token, is
//! gone) or `403` (the RBAC is gone), not an answer. So the agent does not
//! wait until it stops to ask: two watches, opened at start while RBAC
//! allows them, record what happens as it happens ([`OwnerWatch`]), and an
//! open watch keeps streaming after the RBAC objects are deleted (the API
//! server authorises a request when it starts):
//!
//! - its DaemonSet, by name (`metadata.name` field selector; RBAC grants
//!   `get`/`list`/`watch` on that one name only): present, being deleted
//!   (`deletionTimestamp`, foreground deletion) or gone;
//! - its own Namespace, by name: terminating (`deletionTimestamp`) or gone.
//!   A terminating namespace never comes back, and takes the DaemonSet with
//!   it, so it alone means "uninstall".
//!
//! At SIGTERM the agent asks once more with a `GET` when it still can
//! (`owner_removed`); an answer is the truth for the DaemonSet (a
//! DaemonSet deleted and created again is a re-install: keep). Without an
//! answer it decides from what the watches saw ([`decide`]). Nothing seen
//! and no answer (the API server unreachable as the agent stops) keeps
//! the node side: a wrong "uninstall" would leave the node unenforced,
//! while a wrong "keep" leaves a chain that `policy-agent cleanup` removes.

use std::time::Duration;

use futures::StreamExt;
use k8s_openapi::api::apps::v1::DaemonSet;
use k8s_openapi::api::core::v1::Namespace;
use kube::runtime::watcher::{self, Event};
use kube::runtime::WatchStreamExt;
use kube::{Api, Client};
use tokio::sync::watch;

/// `NAMESPACE/NAME` of the DaemonSet whose deletion means "uninstall".
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Owner {
    /// Its namespace.
    pub namespace: String,
    /// Its name.
    pub name: String,
}

impl std::str::FromStr for Owner {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s.split_once('/') {
            Some((ns, name)) if !ns.is_empty() && !name.is_empty() && !name.contains('/') => {
                Ok(Owner {
                    namespace: ns.to_string(),
                    name: name.to_string(),
                })
            }
            _ => Err(format!("{s:?} is not NAMESPACE/NAME")),
        }
    }
}

impl std::fmt::Display for Owner {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}/{}", self.namespace, self.name)
    }
}

/// The DaemonSet as a watch last saw it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Seen {
    /// There, not being deleted.
    Present,
    /// There with a `deletionTimestamp` (foreground deletion).
    Deleting,
    /// Deleted, or absent from a complete list.
    Gone,
}

/// What the watches have seen of the agent's install so far.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Sightings {
    /// The DaemonSet's last known state (`None`: no list has completed).
    pub daemonset: Option<Seen>,
    /// The agent's namespace was seen terminating or deleted.
    pub namespace_ending: bool,
}

impl Sightings {
    /// Whether what was seen alone says "uninstall".
    pub fn says_removed(&self) -> bool {
        self.namespace_ending || matches!(self.daemonset, Some(Seen::Deleting | Seen::Gone))
    }

    /// Takes one DaemonSet watch event; `listing` tracks whether the list in
    /// progress returned the DaemonSet.
    pub fn daemonset_event(&mut self, event: &Event<DaemonSet>, listing: &mut Option<bool>) {
        match event {
            Event::Init => *listing = Some(false),
            Event::InitApply(ds) | Event::Apply(ds) => {
                if let Some(found) = listing.as_mut() {
                    *found = true;
                }
                self.daemonset = Some(if ds.metadata.deletion_timestamp.is_some() {
                    Seen::Deleting
                } else {
                    Seen::Present
                });
            }
            Event::Delete(_) => self.daemonset = Some(Seen::Gone),
            Event::InitDone => {
                if listing.take() == Some(false) {
                    self.daemonset = Some(Seen::Gone);
                }
            }
        }
    }

    /// Takes one watch event of the agent's namespace.
    pub fn namespace_event(&mut self, event: &Event<Namespace>, listing: &mut Option<bool>) {
        match event {
            Event::Init => *listing = Some(false),
            Event::InitApply(ns) | Event::Apply(ns) => {
                if let Some(found) = listing.as_mut() {
                    *found = true;
                }
                let terminating = ns.metadata.deletion_timestamp.is_some()
                    || ns.status.as_ref().and_then(|s| s.phase.as_deref()) == Some("Terminating");
                // A namespace never stops terminating once it has started.
                self.namespace_ending |= terminating;
            }
            Event::Delete(_) => self.namespace_ending = true,
            Event::InitDone => {
                if listing.take() == Some(false) {
                    self.namespace_ending = true;
                }
            }
        }
    }
}

/// Whether to take Palisade off the node as the agent stops, from what the
/// watches saw and a fresh `GET` of the DaemonSet (`Some(removed)`, or
/// `None` when the API server did not answer: RBAC or the ServiceAccount
/// already deleted, or unreachable). See the module doc.
pub fn decide(seen: &Sightings, confirmed: Option<bool>) -> bool {
    if seen.namespace_ending {
        return true;
    }
    match confirmed {
        Some(removed) => removed,
        None => seen.says_removed(),
    }
}

/// The two watches of [`Sightings`], running until dropped.
#[derive(Debug)]
pub struct OwnerWatch {
    seen: watch::Receiver<Sightings>,
    tasks: Vec<tokio::task::JoinHandle<()>>,
}

impl Drop for OwnerWatch {
    fn drop(&mut self) {
        for t in &self.tasks {
            t.abort();
        }
    }
}

impl OwnerWatch {
    /// Starts watching `owner`'s DaemonSet and namespace with `client`.
    pub fn spawn(client: Client, owner: &Owner) -> Self {
        let (tx, rx) = watch::channel(Sightings::default());
        let by_name =
            |name: &str| watcher::Config::default().fields(&format!("metadata.name={name}"));
        let ds_api: Api<DaemonSet> = Api::namespaced(client.clone(), &owner.namespace);
        let ns_api: Api<Namespace> = Api::all(client);
        let ds_cfg = by_name(&owner.name);
        let ns_cfg = by_name(&owner.namespace);
        let ds_tx = tx.clone();
        let ds_owner = owner.clone();
        let ds_task = tokio::spawn(async move {
            let mut listing = None;
            let mut warned = false;
            let stream = watcher::watcher(ds_api, ds_cfg).default_backoff();
            futures::pin_mut!(stream);
            while let Some(item) = stream.next().await {
                match item {
                    Ok(event) => {
                        let before = *ds_tx.borrow();
                        ds_tx.send_modify(|s| s.daemonset_event(&event, &mut listing));
                        let after = *ds_tx.borrow();
                        if before.daemonset != after.daemonset {
                            tracing::info!(owner = %ds_owner, seen = ?after.daemonset, "the agent's DaemonSet");
                        }
                    }
                    Err(e) if !warned => {
                        warned = true;
                        tracing::warn!(owner = %ds_owner, error = %e, "watching the agent's DaemonSet failed (retrying; later failures are logged at debug level)")
                    }
                    Err(e) => {
                        tracing::debug!(owner = %ds_owner, error = %e, "watching the agent's DaemonSet")
                    }
                }
            }
        });
        let ns_owner = owner.clone();
        let ns_task = tokio::spawn(async move {
            let mut listing = None;
            let mut warned = false;
            let stream = watcher::watcher(ns_api, ns_cfg).default_backoff();
            futures::pin_mut!(stream);
            while let Some(item) = stream.next().await {
                match item {
                    Ok(event) => {
                        let before = tx.borrow().namespace_ending;
                        tx.send_modify(|s| s.namespace_event(&event, &mut listing));
                        if !before && tx.borrow().namespace_ending {
                            tracing::warn!(namespace = %ns_owner.namespace, "the agent's namespace is being deleted: Palisade comes off this node when the agent stops");
                        }
                    }
                    Err(e) if !warned => {
                        warned = true;
                        tracing::warn!(namespace = %ns_owner.namespace, error = %e, "watching the agent's namespace failed (retrying; later failures are logged at debug level)")
                    }
                    Err(e) => {
                        tracing::debug!(namespace = %ns_owner.namespace, error = %e, "watching the agent's namespace")
                    }
                }
            }
        });
        OwnerWatch {
            seen: rx,
            tasks: vec![ds_task, ns_task],
        }
    }

    /// What has been seen so far.
    pub fn seen(&self) -> Sightings {
        *self.seen.borrow()
    }

    /// Waits up to `patience` for the sightings to say "removed" (a watch
    /// event may still be on its way when SIGTERM arrives); returns the
    /// sightings then.
    pub async fn wait_for_removal(&mut self, patience: Duration) -> Sightings {
        let _ = tokio::time::timeout(patience, self.seen.wait_for(Sightings::says_removed)).await;
        self.seen()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;

    fn ds(deleting: bool) -> DaemonSet {
        let mut d = DaemonSet::default();
        d.metadata.name = Some("palisade-agent".into());
        if deleting {
            d.metadata.deletion_timestamp = Some(Time(Default::default()));
        }
        d
    }

    fn ns(phase: &str) -> Namespace {
        let mut n = Namespace::default();
        n.metadata.name = Some("palisade-system".into());
        n.status = Some(k8s_openapi::api::core::v1::NamespaceStatus {
            phase: Some(phase.into()),
            ..Default::default()
        });
        n
    }

    #[test]
    fn owners_parse_as_namespace_slash_name() {
        let o: Owner = "palisade-system/palisade-agent".parse().unwrap();
        assert_eq!(o.namespace, "palisade-system");
        assert_eq!(o.name, "palisade-agent");
        assert_eq!(o.to_string(), "palisade-system/palisade-agent");
        for bad in ["", "x", "/x", "x/", "a/b/c"] {
            assert!(bad.parse::<Owner>().is_err(), "{bad:?}");
        }
    }

    #[test]
    fn the_daemonset_watch_tells_present_deleting_and_gone() {
        let mut s = Sightings::default();
        let mut listing = None;
        s.daemonset_event(&Event::Init, &mut listing);
        s.daemonset_event(&Event::InitApply(ds(false)), &mut listing);
        s.daemonset_event(&Event::InitDone, &mut listing);
        assert_eq!(s.daemonset, Some(Seen::Present));
        assert!(!s.says_removed());
        s.daemonset_event(&Event::Apply(ds(true)), &mut listing);
        assert_eq!(s.daemonset, Some(Seen::Deleting));
        s.daemonset_event(&Event::Delete(ds(true)), &mut listing);
        assert_eq!(s.daemonset, Some(Seen::Gone));
        // Created again (a re-install): present again.
        s.daemonset_event(&Event::Apply(ds(false)), &mut listing);
        assert_eq!(s.daemonset, Some(Seen::Present));
        // A relist that does not return it: gone.
        s.daemonset_event(&Event::Init, &mut listing);
        s.daemonset_event(&Event::InitDone, &mut listing);
        assert_eq!(s.daemonset, Some(Seen::Gone));
    }

    #[test]
    fn a_terminating_namespace_stays_terminating() {
        let mut s = Sightings::default();
        let mut listing = None;
        s.namespace_event(&Event::Init, &mut listing);
        s.namespace_event(&Event::InitApply(ns("Active")), &mut listing);
        s.namespace_event(&Event::InitDone, &mut listing);
        assert!(!s.namespace_ending);
        s.namespace_event(&Event::Apply(ns("Terminating")), &mut listing);
        assert!(s.namespace_ending);
        s.namespace_event(&Event::Apply(ns("Active")), &mut listing);
        assert!(s.namespace_ending, "a namespace never stops terminating");
    }

    #[test]
    fn the_decision_trusts_an_answer_and_else_what_was_seen() {
        let present = Sightings {
            daemonset: Some(Seen::Present),
            namespace_ending: false,
        };
        let gone = Sightings {
            daemonset: Some(Seen::Gone),
            ..present
        };
        let ns_ending = Sightings {
            namespace_ending: true,
            ..present
        };
        // A rolling update or a restart: the DaemonSet is there.
        assert!(!decide(&present, Some(false)));
        assert!(!decide(&present, None));
        assert!(!decide(&Sightings::default(), None), "nothing known: keep");
        // `kubectl delete ds`, RBAC still there: the answer says so.
        assert!(decide(&present, Some(true)));
        // `kubectl delete -k`: RBAC gone, no answer; the watches saw it.
        assert!(decide(&gone, None));
        assert!(decide(&ns_ending, None));
        assert!(decide(
            &Sightings {
                daemonset: Some(Seen::Deleting),
                ..present
            },
            None
        ));
        // Deleted and created again: the answer wins.
        assert!(!decide(&gone, Some(false)));
        // A terminating namespace takes the DaemonSet with it.
        assert!(decide(&ns_ending, Some(false)));
    }
}
