//! Many objects at once, for the scale figures: pods of a node that is not
//! in the bed (the agent watches them as peers, as it does every pod of a
//! cluster) and policies between them, created concurrently. On a cluster
//! of real nodes, [`register_absent_node`] gives that node a Node object,
//! so that the pod garbage collector leaves its pods alone.

use std::collections::BTreeMap;
use std::net::{IpAddr, Ipv4Addr};

use k8s_openapi::api::core::v1::{Container, Node, Pod, PodSpec, Toleration};
use k8s_openapi::api::networking::v1::{
    NetworkPolicy, NetworkPolicyIngressRule, NetworkPolicyPeer, NetworkPolicySpec,
};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{LabelSelector, ObjectMeta};
use kube::api::{Api, Patch, PatchParams, PostParams};
use serde_json::json;

use super::{kube_err, kubelet, ControlPlane};
use crate::error::TestbedError;

/// Requests in flight at once.
const IN_FLIGHT: usize = 16;
/// Distinct `app` labels the pods and policies use.
pub const APPS: usize = 100;

/// The address of bulk pod `i` (10.200.0.0/16: API data only, never on a
/// wire; the pods' node is not part of the bed).
fn address(i: usize) -> IpAddr {
    let i = u32::try_from(i).unwrap_or(u32::MAX);
    IpAddr::V4(Ipv4Addr::from(0x0ac8_0000 | (i & 0xffff)))
}

fn pod(namespace: &str, i: usize, node: &str) -> Pod {
    Pod {
        metadata: ObjectMeta {
            name: Some(format!("bulk-{i}")),
            namespace: Some(namespace.to_string()),
            labels: Some(BTreeMap::from([("app".into(), format!("b{}", i % APPS))])),
            ..Default::default()
        },
        spec: Some(PodSpec {
            node_name: Some(node.to_string()),
            containers: vec![Container {
                name: "c".into(),
                image: Some("bulk".into()),
                ..Default::default()
            }],
            // On a cluster of real nodes their node never reports: its
            // taints would have the pods evicted in the middle of a bench.
            tolerations: Some(vec![Toleration {
                operator: Some("Exists".into()),
                ..Default::default()
            }]),
            ..Default::default()
        }),
        status: None,
    }
}

/// Runs `requests`, at most [`IN_FLIGHT`] at once; the first failure
/// ends it.
async fn in_flight<F>(requests: impl Iterator<Item = F>) -> Result<(), kube::Error>
where
    F: std::future::Future<Output = Result<(), kube::Error>> + Send + 'static,
{
    let joined = |done: Result<Result<(), kube::Error>, tokio::task::JoinError>| {
        done.map_err(|e| kube::Error::Service(e.into()))?
    };
    let mut tasks = tokio::task::JoinSet::new();
    for request in requests {
        if tasks.len() >= IN_FLIGHT {
            if let Some(done) = tasks.join_next().await {
                joined(done)?;
            }
        }
        tasks.spawn(request);
    }
    while let Some(done) = tasks.join_next().await {
        joined(done)?;
    }
    Ok(())
}

/// Creates `count` pods named `bulk-<i>` in `namespace` (which must
/// exist), bound to `node` and reported Running with an address each, and
/// labelled `app: b<i % APPS>`.
pub fn create_running_pods(
    cp: &ControlPlane,
    namespace: &str,
    count: usize,
    node: &str,
) -> Result<(), TestbedError> {
    if count == 0 {
        return Ok(());
    }
    // The first one waits for the namespace's ServiceAccount.
    kubelet::create_pod(cp, &pod(namespace, 0, node), node)?;
    kubelet::set_pod_running(cp, namespace, "bulk-0", address(0), &[address(0)])?;
    let (client, ns, node) = (cp.client(), namespace.to_string(), node.to_string());
    cp.run(async move {
        let api: Api<Pod> = Api::namespaced(client, &ns);
        in_flight((1..count).map(|i| {
            let (api, object) = (api.clone(), pod(&ns, i, &node));
            async move {
                api.create(&PostParams::default(), &object).await?;
                let ip = address(i).to_string();
                let status =
                    json!({"status": {"phase": "Running", "podIP": ip, "podIPs": [{"ip": ip}]}});
                api.patch_status(
                    &format!("bulk-{i}"),
                    &PatchParams::default(),
                    &Patch::Merge(&status),
                )
                .await
                .map(drop)
            }
        }))
        .await
    })
    .map_err(kube_err(format!("creating {count} pods in {namespace}")))
}

/// Creates `count` policies `bulk-<i>` in `namespace`: pods `app:
/// b<i % APPS>` accept port 80 from `app: b<(i + 1) % APPS>`.
pub fn create_policies(
    cp: &ControlPlane,
    namespace: &str,
    count: usize,
) -> Result<(), TestbedError> {
    let app = |i: usize| LabelSelector {
        match_labels: Some(BTreeMap::from([("app".into(), format!("b{}", i % APPS))])),
        ..Default::default()
    };
    let (client, ns) = (cp.client(), namespace.to_string());
    cp.run(async move {
        let api: Api<NetworkPolicy> = Api::namespaced(client, &ns);
        in_flight((0..count).map(|i| {
            let object = NetworkPolicy {
                metadata: ObjectMeta {
                    name: Some(format!("bulk-{i}")),
                    namespace: Some(ns.clone()),
                    ..Default::default()
                },
                spec: Some(NetworkPolicySpec {
                    pod_selector: Some(app(i)),
                    ingress: Some(vec![NetworkPolicyIngressRule {
                        from: Some(vec![NetworkPolicyPeer {
                            pod_selector: Some(app(i + 1)),
                            ..Default::default()
                        }]),
                        ports: Some(vec![k8s_openapi::api::networking::v1::NetworkPolicyPort {
                            port: Some(
                                k8s_openapi::apimachinery::pkg::util::intstr::IntOrString::Int(80),
                            ),
                            ..Default::default()
                        }]),
                    }]),
                    ..Default::default()
                }),
            };
            let api = api.clone();
            async move { api.create(&PostParams::default(), &object).await.map(drop) }
        }))
        .await
    })
    .map_err(kube_err(format!(
        "creating {count} policies in {namespace}"
    )))
}

/// Creates Node `name` for pods bound to a node outside the bed (a
/// cluster of real nodes runs every controller: the pod garbage collector
/// deletes pods bound to no Node). Unschedulable, without the
/// `kubernetes.io/os` label (no DaemonSet selects it) and without
/// addresses; it never reports, so it goes NotReady and tainted, which
/// the bulk pods tolerate.
pub fn register_absent_node(cp: &ControlPlane, name: &str) -> Result<(), TestbedError> {
    let node: Node = serde_json::from_value(json!({
        "apiVersion": "v1",
        "kind": "Node",
        "metadata": {"name": name},
        "spec": {"unschedulable": true},
    }))
    .map_err(|e| TestbedError::Kube {
        what: format!("building Node {name}"),
        source: Box::new(e),
    })?;
    let client = cp.client();
    cp.run(async move {
        Api::<Node>::all(client)
            .create(&PostParams::default(), &node)
            .await
            .map(drop)
    })
    .map_err(kube_err(format!("creating Node {name}")))
}
