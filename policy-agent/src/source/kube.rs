//! Cluster state from the Kubernetes API server (`policy-agent run --kube`):
//! kube-rs watchers and reflectors on Pods, Namespaces and NetworkPolicies,
//! all namespaces (peers on other nodes matter too).
//!
//! Every change marks the state dirty; a builder turns the three stores into
//! a [`Snapshot`] at most every [`DEBOUNCE`], so a burst of events costs one
//! compile. An object the model rejects is reported, naming it, and skipped;
//! everything else keeps working.

use std::time::Duration;

use futures::{Stream, StreamExt};
use k8s_openapi::api::core::v1::{Namespace, Pod};
use k8s_openapi::api::networking::v1::NetworkPolicy;
use kube::runtime::reflector::{self, Store};
use kube::runtime::{watcher, WatchStreamExt};
use kube::{Api, Client, Resource};
use policy_engine::model::Snapshot;
use serde::de::DeserializeOwned;
use tokio::sync::{mpsc, watch};

/// Logged with every state built from the API server, with the count and
/// newest `resourceVersion` of each kind (`pods=3 pods_rv=1234 ...`).
pub const STATE_LOG: &str = "cluster state from the API server";

/// Quiet time between a change and the snapshot it produces.
pub const DEBOUNCE: Duration = Duration::from_millis(100);

/// Failures starting the source.
#[derive(Debug, thiserror::Error)]
pub enum KubeSourceError {
    /// No kubeconfig / in-cluster config could be used.
    #[error("cannot build a Kubernetes client: {0}")]
    Client(#[source] kube::Error),
}

/// Connects (in-cluster config or kubeconfig) and starts watching. The
/// channel holds `None` until all three kinds have been listed once.
pub async fn spawn() -> Result<super::SnapshotRx, KubeSourceError> {
    let client = Client::try_default()
        .await
        .map_err(KubeSourceError::Client)?;
    let (tx, rx) = watch::channel(None);
    let (dirty_tx, dirty_rx) = mpsc::channel::<()>(1);
    let pods = reflect::<Pod>(Api::all(client.clone()), dirty_tx.clone());
    let namespaces = reflect::<Namespace>(Api::all(client.clone()), dirty_tx.clone());
    let policies = reflect::<NetworkPolicy>(Api::all(client), dirty_tx);
    tokio::spawn(build_loop(pods, namespaces, policies, dirty_rx, tx));
    Ok(rx)
}

/// Starts one reflector; returns its store. Each event pings `dirty`.
fn reflect<K>(api: Api<K>, dirty: mpsc::Sender<()>) -> Store<K>
where
    K: Resource<DynamicType = ()>
        + Clone
        + DeserializeOwned
        + std::fmt::Debug
        + Send
        + Sync
        + 'static,
{
    let (store, writer) = reflector::store();
    let stream = watcher(api, watcher::Config::default())
        .default_backoff()
        .modify(|o: &mut K| o.meta_mut().managed_fields = None)
        .reflect(writer);
    tokio::spawn(drive(stream, dirty, std::any::type_name::<K>()));
    store
}

async fn drive<S, T, E>(stream: S, dirty: mpsc::Sender<()>, kind: &'static str)
where
    S: Stream<Item = Result<T, E>>,
    E: std::fmt::Display,
{
    futures::pin_mut!(stream);
    while let Some(event) = stream.next().await {
        match event {
            Ok(_) => {
                let _ = dirty.try_send(());
            }
            Err(e) => tracing::warn!(kind, error = %e, "watch error (retrying with backoff)"),
        }
    }
}

async fn build_loop(
    pods: Store<Pod>,
    namespaces: Store<Namespace>,
    policies: Store<NetworkPolicy>,
    mut dirty: mpsc::Receiver<()>,
    tx: watch::Sender<Option<Snapshot>>,
) {
    if pods.wait_until_ready().await.is_err()
        || namespaces.wait_until_ready().await.is_err()
        || policies.wait_until_ready().await.is_err()
    {
        tracing::error!("a watcher stopped before its first list completed");
        return;
    }
    loop {
        tokio::time::sleep(DEBOUNCE).await;
        let snapshot = build(&pods, &namespaces, &policies);
        // What the test bed waits for before it probes: per kind, how many
        // objects and the newest resourceVersion this state was built from.
        let (p, n, np) = (summary(&pods), summary(&namespaces), summary(&policies));
        tracing::info!(
            pods = p.0,
            pods_rv = p.1,
            namespaces = n.0,
            namespaces_rv = n.1,
            policies = np.0,
            policies_rv = np.1,
            "{STATE_LOG}"
        );
        if tx.send(Some(snapshot)).is_err() || dirty.recv().await.is_none() {
            return;
        }
    }
}

/// How many objects `store` holds and the newest `resourceVersion` among
/// them (etcd revisions, compared as numbers; 0 when none parses).
fn summary<K: Resource<DynamicType = ()> + Clone>(store: &Store<K>) -> (usize, u64) {
    let state = store.state();
    let newest = state
        .iter()
        .filter_map(|o| o.meta().resource_version.as_deref()?.parse::<u64>().ok())
        .max()
        .unwrap_or(0);
    (state.len(), newest)
}

/// Builds a snapshot from the stores, reporting and skipping what the model
/// rejects.
fn build(
    pods: &Store<Pod>,
    namespaces: &Store<Namespace>,
    policies: &Store<NetworkPolicy>,
) -> Snapshot {
    let mut snap = Snapshot::default();
    for ns in namespaces.state() {
        if let Err(e) = snap.upsert_namespace(&ns) {
            tracing::error!(error = %e, "namespace skipped");
        }
    }
    for pod in pods.state() {
        if let Err(e) = snap.upsert_pod(&pod) {
            tracing::error!(error = %e, "pod skipped");
        }
    }
    for np in policies.state() {
        if let Err(e) = snap.upsert_policy(&np) {
            tracing::error!(error = %e, "network policy skipped");
        }
    }
    snap
}
