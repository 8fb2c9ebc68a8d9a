//! The kubelet's part (there is no kubelet in the bed) and the other
//! writes a cluster's users make: a Node object per bed node (so the
//! EndpointSlice controller fills slices), Namespaces (with the
//! `kubernetes.io/metadata.name` label the 1.20 API server does not add),
//! Pods bound to a node (`spec.nodeName`, no status: the runtime has not
//! wired them yet), then their status once CNI ADD has given them
//! addresses (IPs, phase Running, Ready), NetworkPolicies and Services.
//!
//! Every function takes the [`ControlPlane`] and writes as its admin.

use std::collections::BTreeMap;
use std::net::IpAddr;
use std::time::{Duration, Instant};

use k8s_openapi::api::core::v1::{Namespace, Node, Pod, Service};
use k8s_openapi::api::networking::v1::NetworkPolicy;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
use kube::api::{DeleteParams, Patch, PatchParams, PostParams};
use kube::{Api, Resource};
use serde_json::json;

use super::{kube_err, ControlPlane, NodeLink};
use crate::error::TestbedError;

/// The label every namespace carries from Kubernetes 1.21 on.
pub const NAMESPACE_NAME_LABEL: &str = "kubernetes.io/metadata.name";
/// How long a Pod create is retried while its namespace's ServiceAccount
/// (and its token) does not exist yet (the ServiceAccount admission plugin
/// refuses the Pod until the controllers have made them).
const SERVICE_ACCOUNT_WAIT: Duration = Duration::from_secs(30);

/// A user's copy of an object's metadata, without what the server sets.
fn clean_meta(meta: &ObjectMeta) -> ObjectMeta {
    ObjectMeta {
        name: meta.name.clone(),
        namespace: meta.namespace.clone(),
        labels: meta.labels.clone(),
        annotations: meta.annotations.clone(),
        ..Default::default()
    }
}

fn name_of<K: Resource>(obj: &K) -> String {
    let meta = obj.meta();
    format!(
        "{}/{}",
        meta.namespace.as_deref().unwrap_or("default"),
        meta.name.as_deref().unwrap_or("<unnamed>")
    )
}

/// Registers Node `node.name` as a kubelet does: `podCIDR`, the
/// `kubernetes.io/hostname` label, then a status with its InternalIP and
/// condition Ready.
pub fn register_node(
    cp: &ControlPlane,
    node: &NodeLink,
    pod_cidr: &str,
) -> Result<(), TestbedError> {
    let client = cp.client();
    let (name, addr, cidr) = (node.name.clone(), node.addr, pod_cidr.to_string());
    let object: Node = serde_json::from_value(json!({
        "apiVersion": "v1",
        "kind": "Node",
        "metadata": {"name": name, "labels": {"kubernetes.io/hostname": name, "kubernetes.io/os": "linux"}},
        "spec": {"podCIDR": cidr, "podCIDRs": [cidr]},
    }))
    .map_err(|e| TestbedError::Kube {
        what: format!("building Node {}", node.name),
        source: Box::new(e),
    })?;
    let status = json!({"status": {
        "addresses": [
            {"type": "InternalIP", "address": addr.to_string()},
            {"type": "Hostname", "address": name},
        ],
        "conditions": [{
            "type": "Ready", "status": "True", "reason": "KubeletReady",
            "message": "the test bed plays the kubelet",
            "lastHeartbeatTime": now(), "lastTransitionTime": now(),
        }],
    }});
    cp.run(async move {
        let api: Api<Node> = Api::all(client);
        api.create(&PostParams::default(), &object).await?;
        api.patch_status(&name, &PatchParams::default(), &Patch::Merge(&status))
            .await
            .map(drop)
    })
    .map_err(kube_err(format!("registering Node {}", node.name)))
}

fn now() -> String {
    k8s_openapi::jiff::Timestamp::now().to_string()
}

/// Creates namespace `name` with `labels` plus [`NAMESPACE_NAME_LABEL`], or
/// (`default` and friends exist from the start) merges the labels into it.
pub fn ensure_namespace(
    cp: &ControlPlane,
    name: &str,
    labels: &BTreeMap<String, String>,
) -> Result<(), TestbedError> {
    let mut labels = labels.clone();
    labels.insert(NAMESPACE_NAME_LABEL.into(), name.into());
    let client = cp.client();
    let object = Namespace {
        metadata: ObjectMeta {
            name: Some(name.to_string()),
            labels: Some(labels.clone()),
            ..Default::default()
        },
        ..Default::default()
    };
    let ns = name.to_string();
    cp.run(async move {
        let api: Api<Namespace> = Api::all(client);
        if api.get_opt(&ns).await?.is_some() {
            let patch = json!({"metadata": {"labels": labels}});
            api.patch(&ns, &PatchParams::default(), &Patch::Merge(&patch))
                .await
                .map(drop)
        } else {
            api.create(&PostParams::default(), &object).await.map(drop)
        }
    })
    .map_err(kube_err(format!("creating Namespace {name}")))
}

/// A JSON merge patch turning labels `old` into exactly `new` (removed
/// keys set to null).
fn labels_patch(
    old: Option<&BTreeMap<String, String>>,
    new: &BTreeMap<String, String>,
) -> serde_json::Value {
    let mut labels = serde_json::Map::new();
    for key in old.into_iter().flat_map(BTreeMap::keys) {
        if !new.contains_key(key) {
            labels.insert(key.clone(), serde_json::Value::Null);
        }
    }
    for (k, v) in new {
        labels.insert(k.clone(), json!(v));
    }
    json!({"metadata": {"labels": labels}})
}

/// Sets namespace `name`'s labels to exactly `labels` (plus
/// [`NAMESPACE_NAME_LABEL`]).
pub fn relabel_namespace(
    cp: &ControlPlane,
    name: &str,
    labels: &BTreeMap<String, String>,
) -> Result<(), TestbedError> {
    let mut labels = labels.clone();
    labels.insert(NAMESPACE_NAME_LABEL.into(), name.into());
    let (client, n) = (cp.client(), name.to_string());
    cp.run(async move {
        let api: Api<Namespace> = Api::all(client);
        let old = api.get(&n).await?;
        let patch = labels_patch(old.metadata.labels.as_ref(), &labels);
        api.patch(&n, &PatchParams::default(), &Patch::Merge(&patch))
            .await
            .map(drop)
    })
    .map_err(kube_err(format!("relabelling Namespace {name}")))
}

/// Sets pod `namespace/name`'s labels to exactly `labels`; returns the
/// pod's new `resourceVersion`.
pub fn relabel_pod(
    cp: &ControlPlane,
    namespace: &str,
    name: &str,
    labels: &BTreeMap<String, String>,
) -> Result<u64, TestbedError> {
    let (client, ns, n, labels) = (
        cp.client(),
        namespace.to_string(),
        name.to_string(),
        labels.clone(),
    );
    cp.run(async move {
        let api: Api<Pod> = Api::namespaced(client, &ns);
        let old = api.get(&n).await?;
        let patch = labels_patch(old.metadata.labels.as_ref(), &labels);
        api.patch(&n, &PatchParams::default(), &Patch::Merge(&patch))
            .await
            .map(|p| revision(&p.metadata))
    })
    .map_err(kube_err(format!("relabelling Pod {namespace}/{name}")))
}

/// An object's `resourceVersion` as the etcd revision it is (0 if none).
fn revision(meta: &ObjectMeta) -> u64 {
    meta.resource_version
        .as_deref()
        .and_then(|v| v.parse().ok())
        .unwrap_or(0)
}

/// Creates `pod` bound to node `node` (`spec.nodeName`), without its
/// manifest's status: the API knows no address yet, as on a real node
/// before the runtime has run CNI ADD. Retries while the namespace's
/// `default` ServiceAccount token is not there yet.
pub fn create_pod(cp: &ControlPlane, pod: &Pod, node: &str) -> Result<Pod, TestbedError> {
    let mut object = Pod {
        metadata: clean_meta(&pod.metadata),
        spec: pod.spec.clone(),
        status: None,
    };
    let spec = object.spec.get_or_insert_with(Default::default);
    spec.node_name = Some(node.to_string());
    let what = format!("creating Pod {}", name_of(pod));
    let ns = object
        .metadata
        .namespace
        .clone()
        .unwrap_or_else(|| "default".into());
    let deadline = Instant::now() + SERVICE_ACCOUNT_WAIT;
    loop {
        let (client, object, ns) = (cp.client(), object.clone(), ns.clone());
        let created = cp.run(async move {
            let api: Api<Pod> = Api::namespaced(client, &ns);
            api.create(&PostParams::default(), &object).await
        });
        match created {
            Ok(pod) => return Ok(pod),
            // "error looking up service account" / "no API token found for
            // service account": the controllers are not done yet.
            // (403, or 500 "No API token found" with a retry-after).
            Err(kube::Error::Api(status))
                if (status.code == 403 || status.code == 500)
                    && status.message.contains("service account")
                    && Instant::now() < deadline =>
            {
                std::thread::sleep(Duration::from_millis(100));
            }
            Err(e) => return Err(kube_err(what)(e)),
        }
    }
}

/// Reports pod `namespace/name` running as the kubelet does once the
/// runtime has wired it: `podIP`/`podIPs`, `hostIP`, phase Running and the
/// Ready conditions (status subresource).
pub fn set_pod_running(
    cp: &ControlPlane,
    namespace: &str,
    name: &str,
    host_ip: IpAddr,
    ips: &[IpAddr],
) -> Result<(), TestbedError> {
    let ready = |kind: &str| json!({"type": kind, "status": "True", "lastTransitionTime": now()});
    let status = json!({"status": {
        "phase": "Running",
        "hostIP": host_ip.to_string(),
        "podIP": ips.first().map(ToString::to_string),
        "podIPs": ips.iter().map(|ip| json!({"ip": ip.to_string()})).collect::<Vec<_>>(),
        "startTime": now(),
        "conditions": [ready("Initialized"), ready("Ready"), ready("ContainersReady"), ready("PodScheduled")],
    }});
    let (client, ns, n) = (cp.client(), namespace.to_string(), name.to_string());
    cp.run(async move {
        let api: Api<Pod> = Api::namespaced(client, &ns);
        api.patch_status(&n, &PatchParams::default(), &Patch::Merge(&status))
            .await
            .map(drop)
    })
    .map_err(kube_err(format!(
        "reporting Pod {namespace}/{name} running"
    )))
}

/// Deletes pod `namespace/name` at once (grace period 0), as a kubelet
/// confirms a deletion once the containers are gone.
pub fn delete_pod(cp: &ControlPlane, namespace: &str, name: &str) -> Result<(), TestbedError> {
    let (client, ns, n) = (cp.client(), namespace.to_string(), name.to_string());
    cp.run(async move {
        let api: Api<Pod> = Api::namespaced(client, &ns);
        api.delete(&n, &DeleteParams::default().grace_period(0))
            .await
            .map(drop)
    })
    .map_err(kube_err(format!("deleting Pod {namespace}/{name}")))
}

/// Creates `policy`, or replaces the one of that name.
/// Returns the policy's new `resourceVersion`.
pub fn apply_policy(cp: &ControlPlane, policy: &NetworkPolicy) -> Result<u64, TestbedError> {
    let object = NetworkPolicy {
        metadata: clean_meta(&policy.metadata),
        spec: policy.spec.clone(),
    };
    apply_object(cp, object, format!("NetworkPolicy {}", name_of(policy)))
}

/// Creates `service`, or replaces the one of that name (its ClusterIP,
/// if the manifest names one, is kept: it must lie in the Service range).
/// Returns the Service's new `resourceVersion`.
pub fn apply_service(cp: &ControlPlane, service: &Service) -> Result<u64, TestbedError> {
    let mut spec = service.spec.clone();
    // Server-side apply of 1.20 keys Service ports by port and protocol
    // and does not default the protocol first: say TCP, the API's default.
    for port in spec.iter_mut().flat_map(|s| s.ports.iter_mut().flatten()) {
        port.protocol.get_or_insert_with(|| "TCP".to_string());
    }
    let object = Service {
        metadata: clean_meta(&service.metadata),
        spec,
        status: None,
    };
    apply_object(cp, object, format!("Service {}", name_of(service)))
}

/// Creates (or replaces) Endpoints written by hand, as a user writes those
/// of a selector-less Service (an outside database, a node's port).
pub fn apply_endpoints(
    cp: &ControlPlane,
    endpoints: &k8s_openapi::api::core::v1::Endpoints,
) -> Result<u64, TestbedError> {
    let object = k8s_openapi::api::core::v1::Endpoints {
        metadata: clean_meta(&endpoints.metadata),
        subsets: endpoints.subsets.clone(),
    };
    apply_object(cp, object, format!("Endpoints {}", name_of(endpoints)))
}

/// Every Service's ClusterIPs as the API server assigned them (headless
/// Services and unparsable addresses left out), by `namespace/name`.
pub fn service_ips(
    cp: &ControlPlane,
) -> Result<BTreeMap<crate::probe::PodRef, Vec<IpAddr>>, TestbedError> {
    let client = cp.client();
    let list = cp
        .run(async move {
            Api::<Service>::all(client)
                .list(&kube::api::ListParams::default())
                .await
        })
        .map_err(kube_err("listing Services".to_string()))?;
    let mut out = BTreeMap::new();
    for svc in list.items {
        let spec = svc.spec.unwrap_or_default();
        let mut ips: Vec<IpAddr> = spec
            .cluster_ips
            .unwrap_or_default()
            .iter()
            .chain(spec.cluster_ip.iter())
            .filter_map(|ip| ip.parse().ok())
            .collect();
        ips.dedup();
        if ips.is_empty() {
            continue;
        }
        let r = crate::probe::PodRef {
            namespace: svc.metadata.namespace.unwrap_or_else(|| "default".into()),
            name: svc.metadata.name.unwrap_or_default(),
        };
        out.insert(r, ips);
    }
    Ok(out)
}

/// The Services whose Endpoints hold at least one ready address (what
/// kube-proxy then translates), by `namespace/name`.
pub fn services_with_endpoints(
    cp: &ControlPlane,
) -> Result<std::collections::BTreeSet<crate::probe::PodRef>, TestbedError> {
    let client = cp.client();
    let list = cp
        .run(async move {
            Api::<k8s_openapi::api::core::v1::Endpoints>::all(client)
                .list(&kube::api::ListParams::default())
                .await
        })
        .map_err(kube_err("listing Endpoints".to_string()))?;
    Ok(list
        .items
        .into_iter()
        .filter(|e| {
            e.subsets
                .iter()
                .flatten()
                .any(|s| s.addresses.as_ref().is_some_and(|a| !a.is_empty()))
        })
        .map(|e| crate::probe::PodRef {
            namespace: e.metadata.namespace.unwrap_or_else(|| "default".into()),
            name: e.metadata.name.unwrap_or_default(),
        })
        .collect())
}

/// Deletes NetworkPolicy `namespace/name`.
pub fn delete_policy(cp: &ControlPlane, namespace: &str, name: &str) -> Result<(), TestbedError> {
    let (client, ns, n) = (cp.client(), namespace.to_string(), name.to_string());
    cp.run(async move {
        let api: Api<NetworkPolicy> = Api::namespaced(client, &ns);
        api.delete(&n, &DeleteParams::default()).await.map(drop)
    })
    .map_err(kube_err(format!(
        "deleting NetworkPolicy {namespace}/{name}"
    )))
}

/// Server-side apply of a namespaced object (creates or replaces the
/// fields the test bed owns).
fn apply_object<K>(cp: &ControlPlane, object: K, what: String) -> Result<u64, TestbedError>
where
    K: Resource<DynamicType = (), Scope = k8s_openapi::NamespaceResourceScope>
        + Clone
        + serde::Serialize
        + serde::de::DeserializeOwned
        + std::fmt::Debug
        + Send
        + Sync
        + 'static,
{
    let client = cp.client();
    let ns = object
        .meta()
        .namespace
        .clone()
        .unwrap_or_else(|| "default".into());
    let name = object.meta().name.clone().unwrap_or_default();
    cp.run(async move {
        let api: Api<K> = Api::namespaced(client, &ns);
        let params = PatchParams::apply("palisade-testbed").force();
        api.patch(&name, &params, &Patch::Apply(&object))
            .await
            .map(|o| revision(o.meta()))
    })
    .map_err(kube_err(format!("applying {what}")))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_labels_patch_removes_what_is_gone_and_sets_the_rest() {
        let old = BTreeMap::from([("a".to_string(), "1".to_string()), ("b".into(), "2".into())]);
        let new = BTreeMap::from([("b".to_string(), "3".to_string()), ("c".into(), "4".into())]);
        assert_eq!(
            labels_patch(Some(&old), &new),
            json!({"metadata": {"labels": {"a": null, "b": "3", "c": "4"}}})
        );
    }
}
