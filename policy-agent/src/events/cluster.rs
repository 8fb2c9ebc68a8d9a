//! `policy-agent status --kube`: the cluster's enforcement as the API
//! shows it, per node: whether its agent's pod (of the agent's DaemonSet)
//! is Ready, its last apply (the newest `Enforced` Event it wrote), and
//! the policies it could not enforce as written (the policies whose newest
//! Event from that node is a Warning). Read with the user's credentials;
//! Events of policies deleted since are left out.

use std::collections::{BTreeMap, BTreeSet};

use k8s_openapi::api::apps::v1::DaemonSet;
use k8s_openapi::api::core::v1::{Node, Pod};
use k8s_openapi::api::events::v1::Event;
use k8s_openapi::api::networking::v1::NetworkPolicy;
use kube::api::ListParams;
use kube::{Api, Client};
use serde::Serialize;

use super::{CONTROLLER, ENFORCED};

/// Prefix of `reportingInstance`: `policy-agent-<node>`.
pub const INSTANCE_PREFIX: &str = "policy-agent-";

/// One event as the summary reads it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct Seen {
    /// `namespace/name` of the policy.
    pub policy: String,
    /// `reason`.
    pub reason: String,
    /// `note`.
    pub note: String,
    /// How many times it happened (`series.count`, else 1).
    pub count: i32,
    /// When it last happened (RFC 3339).
    pub time: String,
}

/// One node's line.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct NodeSummary {
    /// The node.
    pub node: String,
    /// `ready`, `not ready`, or `no agent pod` (no pod of the DaemonSet
    /// there, or no DaemonSet).
    pub agent: String,
    /// The newest `Enforced` Event of this node.
    pub last_apply: Option<Seen>,
    /// Policies whose newest Event from this node is a Warning.
    pub warnings: Vec<Seen>,
}

/// The cluster's lines, one per node.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize)]
pub struct ClusterSummary {
    /// By node name.
    pub nodes: Vec<NodeSummary>,
}

impl ClusterSummary {
    /// Whether every node's agent is ready and none has a warning.
    pub fn healthy(&self) -> bool {
        self.nodes
            .iter()
            .all(|n| n.agent != "not ready" && n.warnings.is_empty())
    }
}

/// Failures reading the cluster.
#[derive(Debug, thiserror::Error)]
pub enum ClusterError {
    /// A list or get the API server refused or could not answer.
    #[error("reading {what} from the API server: {source}")]
    Api {
        /// What was read.
        what: &'static str,
        /// Cause.
        #[source]
        source: kube::Error,
    },
}

fn api(what: &'static str) -> impl FnOnce(kube::Error) -> ClusterError {
    move |source| ClusterError::Api { what, source }
}

/// Every object `api` lists with `params`.
async fn list<K>(
    api_of: Api<K>,
    params: &ListParams,
    what: &'static str,
) -> Result<Vec<K>, ClusterError>
where
    K: Clone + serde::de::DeserializeOwned + std::fmt::Debug,
{
    Ok(api_of.list(params).await.map_err(api(what))?.items)
}

/// Reads nodes, the agent DaemonSet `namespace/name`'s pods, the
/// NetworkPolicies and the agents' Events, and summarizes them.
pub async fn read(
    client: Client,
    namespace: &str,
    daemonset: &str,
) -> Result<ClusterSummary, ClusterError> {
    let all = ListParams::default();
    let nodes: Vec<String> = list(Api::<Node>::all(client.clone()), &all, "nodes")
        .await?
        .into_iter()
        .filter_map(|n| n.metadata.name)
        .collect();
    let ds = Api::<DaemonSet>::namespaced(client.clone(), namespace)
        .get_opt(daemonset)
        .await
        .map_err(api("the agent's DaemonSet"))?;
    let mut pods = Vec::new();
    if let Some(labels) = ds
        .and_then(|d| d.spec)
        .and_then(|s| s.selector.match_labels)
        .filter(|l| !l.is_empty())
    {
        let selector: Vec<String> = labels.iter().map(|(k, v)| format!("{k}={v}")).collect();
        let params = ListParams::default().labels(&selector.join(","));
        let api_of = Api::<Pod>::namespaced(client.clone(), namespace);
        pods = list(api_of, &params, "the agent's pods").await?;
    }
    let api_of = Api::<NetworkPolicy>::all(client.clone());
    let policies: BTreeSet<String> = list(api_of, &all, "NetworkPolicies")
        .await?
        .into_iter()
        .filter_map(|p| p.metadata.uid)
        .collect();
    let events = list(Api::<Event>::all(client), &all, "Events").await?;
    Ok(summarize(&nodes, &pods, &policies, &events))
}

/// When an event last happened.
fn last_time(e: &Event) -> Option<k8s_openapi::jiff::Timestamp> {
    e.series
        .as_ref()
        .map(|s| s.last_observed_time.0)
        .or(e.event_time.as_ref().map(|t| t.0))
}

/// The summary of `nodes`, the agent's `pods`, the uids of the existing
/// `policies` and `events` (the agents' are picked out).
pub fn summarize(
    nodes: &[String],
    pods: &[Pod],
    policies: &BTreeSet<String>,
    events: &[Event],
) -> ClusterSummary {
    let mut agent: BTreeMap<String, String> = nodes
        .iter()
        .map(|n| (n.clone(), "no agent pod".to_string()))
        .collect();
    for p in pods {
        let Some(node) = p.spec.as_ref().and_then(|s| s.node_name.clone()) else {
            continue;
        };
        let ready = p
            .status
            .as_ref()
            .and_then(|s| s.conditions.as_ref())
            .into_iter()
            .flatten()
            .any(|c| c.type_ == "Ready" && c.status == "True");
        agent.insert(node, if ready { "ready" } else { "not ready" }.into());
    }
    // Per node and policy, the newest event.
    let mut newest: BTreeMap<(String, String), &Event> = BTreeMap::new();
    for e in events {
        if e.reporting_controller.as_deref() != Some(CONTROLLER) {
            continue;
        }
        let Some(node) = e
            .reporting_instance
            .as_deref()
            .and_then(|i| i.strip_prefix(INSTANCE_PREFIX))
        else {
            continue;
        };
        let Some(r) = e.regarding.as_ref() else {
            continue;
        };
        if !r.uid.as_ref().is_some_and(|u| policies.contains(u)) {
            continue; // the policy is gone
        }
        agent
            .entry(node.to_string())
            .or_insert_with(|| "no agent pod".into());
        let key = (node.to_string(), r.uid.clone().unwrap_or_default());
        match newest.get(&key) {
            Some(old) if last_time(old) >= last_time(e) => {}
            _ => {
                newest.insert(key, e);
            }
        }
    }
    let seen = |e: &Event| {
        let r = e.regarding.clone().unwrap_or_default();
        Seen {
            policy: format!(
                "{}/{}",
                r.namespace.unwrap_or_default(),
                r.name.unwrap_or_default()
            ),
            reason: e.reason.clone().unwrap_or_default(),
            note: e.note.clone().unwrap_or_default(),
            count: e.series.as_ref().map_or(1, |s| s.count),
            time: last_time(e).map(|t| t.to_string()).unwrap_or_default(),
        }
    };
    let nodes = agent
        .into_iter()
        .map(|(node, agent)| {
            let mine: Vec<&Event> = newest
                .iter()
                .filter(|((n, _), _)| *n == node)
                .map(|(_, e)| *e)
                .collect();
            let last_apply = mine
                .iter()
                .filter(|e| e.reason.as_deref() == Some(ENFORCED))
                .max_by_key(|e| last_time(e))
                .map(|e| seen(e));
            let warnings = mine
                .iter()
                .filter(|e| e.type_.as_deref() == Some("Warning"))
                .map(|e| seen(e))
                .collect();
            NodeSummary {
                node,
                agent,
                last_apply,
                warnings,
            }
        })
        .collect();
    ClusterSummary { nodes }
}
