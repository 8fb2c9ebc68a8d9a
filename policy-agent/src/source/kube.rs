//! Cluster state from the Kubernetes API server (`policy-agent run --kube`):
//! one kube-rs watcher each on Pods, Namespaces, NetworkPolicies, Services
//! and EndpointSlices, all namespaces (peers on other nodes matter too;
//! Services and their EndpointSlices tell which ClusterIPs kube-proxy
//! translates, and to what, so a pod's egress to one is judged on the
//! backend). EndpointSlices are read as `discovery.k8s.io/v1` where the API
//! server serves it and as `v1beta1` otherwise (Kubernetes 1.20 and
//! older); unlike core `v1` Endpoints they do not stop at 1,000
//! addresses.
//!
//! Each watch event is turned into the model's entry at once (a pod
//! becomes a [`PodInfo`]: labels, IPs, named ports, node, hostNetwork,
//! phase) and sent on as a [`Change`]; the API object is dropped there, so
//! the agent never holds a cache of whole objects. A list (the first one,
//! or a relist after a `410 Gone` or a lost watch) ends with
//! [`Change::Listed`] naming every object it returned, which is how the
//! agent learns what disappeared meanwhile; the objects themselves reach
//! it as ordinary changes, and those equal to what it holds cost nothing.
//!
//! A watch error (API server unreachable, `403` because RBAC no longer
//! allows the agent's ServiceAccount, ...) is logged naming the resource
//! and the reason and sent as [`Change::Lost`]; the watcher is then started
//! again from a list, with exponential backoff, until a list succeeds. A
//! `410 Gone` only relists (at once, and without making the agent not
//! ready): the state it had is still the last one the API server gave.
//!
//! An object the model rejects is reported, naming it and the field, and
//! skipped (its last good version stays); everything else keeps working.

use std::collections::BTreeSet;
use std::time::Duration;

use futures::StreamExt;
use k8s_openapi::api::core::v1::{Namespace, Pod, Service};
use k8s_openapi::api::discovery::v1::EndpointSlice;
use k8s_openapi::api::networking::v1::NetworkPolicy;
use kube::runtime::watcher::{self, Event};
use kube::{Api, Client, Resource};
use policy_engine::model::slices::{slice_from, slice_ref, SliceRef};
use policy_engine::model::{ModelError, NamespaceInfo, PodInfo, PodRef, Policy, ServiceInfo};
use serde::de::DeserializeOwned;

use super::{Change, ChangeRx, ChangeTx, Kind, Listed};

/// First wait before starting a failed watcher again.
pub const BACKOFF_MIN: Duration = Duration::from_millis(250);
/// Longest wait between two attempts.
pub const BACKOFF_MAX: Duration = Duration::from_secs(15);
/// The message the agent logs with every state it has enforced from the API
/// server, with how many objects of each kind the API server holds and the
/// newest `resourceVersion` seen of each (`pods=3 pods_rv=1234
/// namespaces=.. namespaces_rv=.. policies=.. policies_rv=..`): once every
/// count matches and no `resourceVersion` is older than the API server's, the
/// agent has caught up (the test bed waits for that line).
pub const STATE_LOG: &str = "cluster state from the API server";

/// Objects per list page, client-go's default. Measured at 10,000 pods
/// and 2,000 policies (`cargo xtask bench --only kube`): pages of 2,000 doubled
/// the agent's peak memory (115 against 63 MiB) and slowed its first sync
/// (2.4 against 1.1 s); pages of 250 saved 10 MiB more but cost round
/// trips (1.8 s).
pub const PAGE_SIZE: u32 = 500;

/// Failures starting the source.
#[derive(Debug, thiserror::Error)]
pub enum KubeSourceError {
    /// No kubeconfig / in-cluster config could be used.
    #[error("cannot build a Kubernetes client: {0}")]
    Client(#[source] kube::Error),
}

/// Connects (in-cluster config or kubeconfig) and starts the five
/// watchers. The agent compiles nothing until each kind has been listed
/// once.
pub async fn spawn() -> Result<ChangeRx, KubeSourceError> {
    let client = Client::try_default()
        .await
        .map_err(KubeSourceError::Client)?;
    Ok(spawn_with(client))
}

/// Starts the five watchers on `client`.
pub fn spawn_with(client: Client) -> ChangeRx {
    let (tx, rx) = super::channel();
    tokio::spawn(watch::<Pod>(Api::all(client.clone()), tx.clone()));
    tokio::spawn(watch::<Namespace>(Api::all(client.clone()), tx.clone()));
    tokio::spawn(watch::<NetworkPolicy>(Api::all(client.clone()), tx.clone()));
    tokio::spawn(watch::<Service>(Api::all(client.clone()), tx.clone()));
    tokio::spawn(watch_slices(client, tx));
    rx
}

/// `discovery.k8s.io/v1beta1` EndpointSlices (served by Kubernetes 1.17 to
/// 1.24; the only version 1.20 serves), read into the `v1` type: the
/// fields Palisade reads (address type, addresses, the ready condition,
/// the target, the ports) are the same in both.
#[derive(Clone, Debug)]
pub struct EndpointSliceV1Beta1(pub EndpointSlice);

impl k8s_openapi::Resource for EndpointSliceV1Beta1 {
    const API_VERSION: &'static str = "discovery.k8s.io/v1beta1";
    const GROUP: &'static str = "discovery.k8s.io";
    const KIND: &'static str = "EndpointSlice";
    const VERSION: &'static str = "v1beta1";
    const URL_PATH_SEGMENT: &'static str = "endpointslices";
    type Scope = k8s_openapi::NamespaceResourceScope;
}

impl k8s_openapi::Metadata for EndpointSliceV1Beta1 {
    type Ty = k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
    fn metadata(&self) -> &Self::Ty {
        &self.0.metadata
    }
    fn metadata_mut(&mut self) -> &mut Self::Ty {
        &mut self.0.metadata
    }
}

impl<'de> serde::Deserialize<'de> for EndpointSliceV1Beta1 {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let mut v = serde_json::Value::deserialize(d)?;
        if let Some(o) = v.as_object_mut() {
            // The v1 type checks these against its own version.
            o.remove("apiVersion");
            o.remove("kind");
        }
        serde_json::from_value(v)
            .map(EndpointSliceV1Beta1)
            .map_err(serde::de::Error::custom)
    }
}

/// Whether the API server serves `discovery.k8s.io/v1`; retried with
/// backoff until it answers.
async fn serves_slices_v1(client: &Client) -> bool {
    let mut backoff = BACKOFF_MIN;
    loop {
        match client.list_api_groups().await {
            Ok(groups) => {
                return groups
                    .groups
                    .iter()
                    .filter(|g| g.name == "discovery.k8s.io")
                    .flat_map(|g| g.versions.iter())
                    .any(|v| v.version == "v1");
            }
            Err(e) => {
                tracing::error!(error = %e, retry_in = ?backoff, "cannot list the API groups");
                tokio::time::sleep(backoff).await;
                backoff = (backoff * 2).min(BACKOFF_MAX);
            }
        }
    }
}

/// Watches EndpointSlices in the newest version the API server serves.
async fn watch_slices(client: Client, tx: ChangeTx) {
    if serves_slices_v1(&client).await {
        watch::<EndpointSlice>(Api::all(client), tx).await;
    } else {
        tracing::info!(
            "the API server serves no discovery.k8s.io/v1: reading EndpointSlices as v1beta1"
        );
        watch::<EndpointSliceV1Beta1>(Api::all(client), tx).await;
    }
}

/// A kind the agent watches, and how its objects become changes.
pub trait Watched: Resource<DynamicType = ()> + Clone + DeserializeOwned + std::fmt::Debug {
    /// Which kind.
    const KIND: Kind;
    /// How the model names one object.
    type Key: Ord + Clone + std::fmt::Display;
    /// The object's name, if it has one.
    fn key(&self) -> Option<Self::Key>;
    /// Its name and the change it makes, added or updated (a terminated
    /// pod makes a removal).
    fn upsert(&self) -> Result<(Self::Key, Change), ModelError>;
    /// The change its deletion makes.
    fn removal(key: Self::Key) -> Change;
    /// The end of a list that returned `keys`.
    fn listed(keys: BTreeSet<Self::Key>) -> Listed;
    /// What to send after the change an added or updated object makes,
    /// besides it (`listed`: it came from a list, not as a live change).
    fn origin(&self, _listed: bool) -> Option<Change> {
        None
    }
}

fn pod_ref<K: Resource>(obj: &K) -> Option<PodRef> {
    let meta = obj.meta();
    Some(PodRef::new(
        meta.namespace.clone().unwrap_or_else(|| "default".into()),
        meta.name.clone()?,
    ))
}

impl Watched for Pod {
    const KIND: Kind = Kind::Pods;
    type Key = PodRef;
    fn key(&self) -> Option<PodRef> {
        pod_ref(self)
    }
    fn upsert(&self) -> Result<(PodRef, Change), ModelError> {
        match PodInfo::from_pod(self)? {
            Some((r, info)) => Ok((r.clone(), Change::Pod(r, Some(info)))),
            None => {
                let r = pod_ref(self).ok_or(ModelError::MissingName {
                    kind: "Pod",
                    field: "metadata.name",
                })?;
                Ok((r.clone(), Change::Pod(r, None)))
            }
        }
    }
    fn removal(key: PodRef) -> Change {
        Change::Pod(key, None)
    }
    fn listed(keys: BTreeSet<PodRef>) -> Listed {
        Listed::Pods(keys)
    }
}

impl Watched for Namespace {
    const KIND: Kind = Kind::Namespaces;
    type Key = String;
    fn key(&self) -> Option<String> {
        self.metadata.name.clone()
    }
    fn upsert(&self) -> Result<(String, Change), ModelError> {
        let (name, info) = NamespaceInfo::from_namespace(self)?;
        Ok((name.clone(), Change::Namespace(name, Some(info))))
    }
    fn removal(key: String) -> Change {
        Change::Namespace(key, None)
    }
    fn listed(keys: BTreeSet<String>) -> Listed {
        Listed::Namespaces(keys)
    }
}

impl Watched for NetworkPolicy {
    const KIND: Kind = Kind::NetworkPolicies;
    type Key = PodRef;
    fn key(&self) -> Option<PodRef> {
        pod_ref(self)
    }
    fn upsert(&self) -> Result<(PodRef, Change), ModelError> {
        let (r, policy) = Policy::from_network_policy(self)?;
        Ok((r.clone(), Change::Policy(r, Box::new(Some(policy)))))
    }
    fn removal(key: PodRef) -> Change {
        Change::Policy(key, Box::new(None))
    }
    fn origin(&self, listed: bool) -> Option<Change> {
        let origin = crate::events::Origin {
            uid: self.metadata.uid.clone()?,
            generation: self.metadata.generation.unwrap_or_default(),
            seen: std::time::SystemTime::now(),
            listed,
        };
        Some(Change::PolicyOrigin(pod_ref(self)?, origin))
    }
    fn listed(keys: BTreeSet<PodRef>) -> Listed {
        Listed::NetworkPolicies(keys)
    }
}

impl Watched for Service {
    const KIND: Kind = Kind::Services;
    type Key = PodRef;
    fn key(&self) -> Option<PodRef> {
        pod_ref(self)
    }
    fn upsert(&self) -> Result<(PodRef, Change), ModelError> {
        let (r, info) = ServiceInfo::from_service(self)?;
        Ok((r.clone(), Change::Service(r, Some(info))))
    }
    fn removal(key: PodRef) -> Change {
        Change::Service(key, None)
    }
    fn listed(keys: BTreeSet<PodRef>) -> Listed {
        Listed::Services(keys)
    }
}

impl Watched for EndpointSlice {
    const KIND: Kind = Kind::EndpointSlices;
    type Key = SliceRef;
    fn key(&self) -> Option<SliceRef> {
        slice_ref(self)
    }
    fn upsert(&self) -> Result<(SliceRef, Change), ModelError> {
        let (r, subset) = slice_from(self)?;
        Ok((r.clone(), Change::EndpointSlice(r, Some(subset))))
    }
    fn removal(key: SliceRef) -> Change {
        Change::EndpointSlice(key, None)
    }
    fn listed(keys: BTreeSet<SliceRef>) -> Listed {
        Listed::EndpointSlices(keys)
    }
}

impl Watched for EndpointSliceV1Beta1 {
    const KIND: Kind = Kind::EndpointSlices;
    type Key = SliceRef;
    fn key(&self) -> Option<SliceRef> {
        slice_ref(&self.0)
    }
    fn upsert(&self) -> Result<(SliceRef, Change), ModelError> {
        self.0.upsert()
    }
    fn removal(key: SliceRef) -> Change {
        Change::EndpointSlice(key, None)
    }
    fn listed(keys: BTreeSet<SliceRef>) -> Listed {
        Listed::EndpointSlices(keys)
    }
}

/// Turns one kind's watch events into changes. Holds the names of the
/// objects the API server has (to count them, and to tell a relist what
/// is gone), never the objects.
#[derive(Debug)]
pub struct Translator<K: Watched> {
    /// What the API server holds, as far as the watch has told.
    known: BTreeSet<K::Key>,
    /// The names a list in progress has returned so far.
    listing: Option<BTreeSet<K::Key>>,
    /// Newest `resourceVersion` seen.
    newest: u64,
}

impl<K: Watched> Default for Translator<K> {
    fn default() -> Self {
        Self {
            known: BTreeSet::new(),
            listing: None,
            newest: 0,
        }
    }
}

impl<K: Watched> Translator<K> {
    /// The change `event` makes, if any.
    pub fn event(&mut self, event: Event<K>) -> Option<Change> {
        match event {
            Event::Init => {
                self.listing = Some(BTreeSet::new());
                None
            }
            Event::InitApply(obj) => {
                self.saw(&obj);
                if let (Some(listing), Some(key)) = (self.listing.as_mut(), obj.key()) {
                    listing.insert(key);
                }
                Self::upsert(&obj)
            }
            Event::Apply(obj) => {
                self.saw(&obj);
                if let Some(key) = obj.key() {
                    self.known.insert(key);
                }
                Self::upsert(&obj)
            }
            Event::Delete(obj) => {
                self.saw(&obj);
                let key = obj.key()?;
                self.known.remove(&key);
                Some(K::removal(key))
            }
            Event::InitDone => {
                let keys = self.listing.take().unwrap_or_default();
                self.known.clone_from(&keys);
                Some(Change::Listed(K::listed(keys)))
            }
        }
    }

    /// How far this watch has got ([`Change::Seen`]).
    pub fn progress(&self) -> Change {
        Change::Seen {
            kind: K::KIND,
            count: self.known.len(),
            newest: self.newest,
        }
    }

    fn saw(&mut self, obj: &K) {
        if let Some(rv) = obj
            .meta()
            .resource_version
            .as_deref()
            .and_then(|v| v.parse::<u64>().ok())
        {
            self.newest = self.newest.max(rv);
        }
    }

    fn upsert(obj: &K) -> Option<Change> {
        match obj.upsert() {
            Ok((_, change)) => Some(change),
            Err(e) => {
                tracing::error!(resource = %K::KIND, error = %e, "object skipped; its last good version stays");
                None
            }
        }
    }
}

/// What a watch error means for the agent.
#[derive(Debug, PartialEq, Eq)]
pub enum Failure {
    /// `410 Gone`: the resourceVersion is too old; relist at once, still
    /// ready.
    Gone,
    /// Anything else: not ready until listed again.
    Lost(String),
}

/// Classifies a watcher error, with the API server's own message when it
/// sent one (a 403 names the ServiceAccount and the verb RBAC refused).
pub fn classify(error: &watcher::Error) -> Failure {
    let status = match error {
        watcher::Error::InitialListFailed(e)
        | watcher::Error::WatchStartFailed(e)
        | watcher::Error::WatchFailed(e) => match e {
            kube::Error::Api(status) => Some(status.as_ref()),
            _ => None,
        },
        watcher::Error::WatchError(status) => Some(status.as_ref()),
        watcher::Error::NoResourceVersion => None,
    };
    match status {
        Some(s) if s.code == 410 => Failure::Gone,
        Some(s) => Failure::Lost(format!("{} {}: {}", s.code, s.reason, s.message)),
        None => Failure::Lost(error.to_string()),
    }
}

/// Watches one kind forever, restarting from a list after every error.
async fn watch<K: Watched + Send + Sync + 'static>(api: Api<K>, tx: ChangeTx) {
    let config = watcher::Config::default().page_size(PAGE_SIZE);
    let mut backoff = BACKOFF_MIN;
    let mut translator = Translator::<K>::default();
    loop {
        let stream = watcher::watcher(api.clone(), config.clone());
        futures::pin_mut!(stream);
        let failure = loop {
            match stream.next().await {
                Some(Ok(event)) => {
                    if matches!(event, Event::InitDone) {
                        backoff = BACKOFF_MIN;
                    }
                    let during_list = !matches!(event, Event::Apply(_) | Event::Delete(_));
                    let origin = match &event {
                        Event::Apply(obj) => obj.origin(false),
                        Event::InitApply(obj) => obj.origin(true),
                        _ => None,
                    };
                    let change = translator.event(event);
                    // Only for an object the model took.
                    let origin = origin.filter(|_| change.is_some());
                    // Progress is worth telling once the list is complete,
                    // and with every later event.
                    let progress = (!during_list || translator.listing.is_none())
                        .then(|| translator.progress());
                    for c in change.into_iter().chain(origin).chain(progress) {
                        if tx.send(c).await.is_err() {
                            return; // the agent is gone
                        }
                    }
                }
                Some(Err(e)) => {
                    crate::health::metrics().watch_error(&K::KIND.to_string());
                    break classify(&e);
                }
                None => break Failure::Lost("watch stream ended".into()),
            }
        };
        match failure {
            Failure::Gone => {
                tracing::info!(resource = %K::KIND, "410 Gone: resourceVersion too old, relisting");
            }
            Failure::Lost(reason) => {
                tracing::error!(
                    resource = %K::KIND,
                    %reason,
                    retry_in = ?backoff,
                    "watch lost: not ready until it is listed again; the last state stays enforced"
                );
                let lost = Change::Lost {
                    kind: K::KIND,
                    reason,
                };
                if tx.send(lost).await.is_err() {
                    return;
                }
                tokio::time::sleep(backoff).await;
                backoff = (backoff * 2).min(BACKOFF_MAX);
            }
        }
    }
}

#[cfg(test)]
mod tests;
