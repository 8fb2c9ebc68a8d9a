//! Has the agent caught up with the API server? The agent logs, with every
//! state it builds from its watches, how many Pods, Namespaces and
//! NetworkPolicies it holds and the newest `resourceVersion` of each kind
//! (`policy-agent`'s `source::kube::STATE_LOG` line). The harness lists
//! the same kinds and waits for a logged state that holds as many objects
//! of each kind and nothing older; then a CNI CHECK call, answered under
//! the lock the agent applies states under, makes sure that state is in
//! the kernel.

use std::path::Path;
use std::time::{Duration, Instant};

use k8s_openapi::api::core::v1::{Namespace, Pod, Service};
use k8s_openapi::api::networking::v1::NetworkPolicy;
use kube::api::ListParams;
use kube::{Api, Client, Resource};

use super::{kube_err, ControlPlane};
use crate::daemon::log_tail;
use crate::error::TestbedError;

/// The message of the agent's state line (`policy-agent`'s
/// `source::kube::STATE_LOG`).
pub const AGENT_STATE_LOG: &str = "cluster state from the API server";

/// What the agent logs once the state of its `--manifests` files is in the
/// maps (`policy-agent`'s `source::file::APPLIED_LOG`): file mode's
/// counterpart of [`AGENT_STATE_LOG`].
pub const AGENT_APPLIED_LOG: &str = "manifests applied";

/// What the agent logs once a CNI ADD's endpoint is enforced, with where
/// the time went (`policy-agent`'s `cni_server::ENDPOINT_ENFORCED_LOG`).
pub const AGENT_ENDPOINT_ENFORCED_LOG: &str = "endpoint enforced";

/// What the agent logs once its programs and maps are loaded
/// (`policy-agent run`).
pub const AGENT_DATAPLANE_READY_LOG: &str = "dataplane ready";

/// What the agent logs after a full compile, with `compile_ms` and
/// `apply_ms` (`policy-agent`'s `reconcile::changes::FULL_COMPILE_LOG`).
pub const AGENT_FULL_COMPILE_LOG: &str = "full compile applied";

/// The number of field `name` (`name=value`) in one line of the agent's
/// log (colour codes around the name, as a terminal log has them, are
/// skipped).
pub fn log_number(line: &str, name: &str) -> Option<f64> {
    field_value(&strip_ansi(line), name)?.parse().ok()
}

/// The value of field `name` in a log line already free of colour codes.
fn field_value<'a>(plain: &'a str, name: &str) -> Option<&'a str> {
    plain
        .split_whitespace()
        .find_map(|w| w.strip_prefix(name)?.strip_prefix('='))
}

/// The timestamp of one line of the agent's log: its first word, RFC 3339,
/// as the agent writes it (colour codes removed).
pub fn log_stamp(line: &str) -> String {
    strip_ansi(line)
        .split_whitespace()
        .next()
        .unwrap_or_default()
        .to_string()
}

/// How long a settled state may take to reach the kernel after the agent
/// logged it (the CHECK barrier follows).
const SETTLE: Duration = Duration::from_millis(150);

/// Per kind: how many objects, and the newest `resourceVersion`.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct KindState {
    /// Number of objects.
    pub count: usize,
    /// Newest `resourceVersion` (an etcd revision).
    pub newest: u64,
}

/// What a cluster state holds, per kind the agent watches.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct ClusterState {
    /// Pods.
    pub pods: KindState,
    /// Namespaces.
    pub namespaces: KindState,
    /// NetworkPolicies.
    pub policies: KindState,
    /// Services.
    pub services: KindState,
    /// EndpointSlices.
    pub endpointslices: KindState,
}

impl ClusterState {
    /// Whether `self` (the agent's) has caught up with `api`: the same
    /// number of objects of each kind, none older.
    pub fn caught_up_with(&self, api: &ClusterState) -> bool {
        let kind = |a: KindState, b: KindState| a.count == b.count && a.newest >= b.newest;
        kind(self.pods, api.pods)
            && kind(self.namespaces, api.namespaces)
            && kind(self.policies, api.policies)
            && kind(self.services, api.services)
            && kind(self.endpointslices, api.endpointslices)
    }
}

async fn kind_state<K>(api: Api<K>) -> Result<KindState, kube::Error>
where
    K: Resource + Clone + serde::de::DeserializeOwned + std::fmt::Debug,
{
    let list = api.list_metadata(&ListParams::default()).await?;
    let newest = list
        .items
        .iter()
        .filter_map(|o| o.metadata.resource_version.as_deref()?.parse::<u64>().ok())
        .max()
        .unwrap_or(0);
    Ok(KindState {
        count: list.items.len(),
        newest,
    })
}

/// EndpointSlices in the newest version the API server serves (`v1`, or
/// `v1beta1` on 1.20), as the agent reads them.
async fn slices_api(client: Client) -> Result<Api<kube::api::DynamicObject>, kube::Error> {
    let groups = client.list_api_groups().await?;
    let v1 = groups
        .groups
        .iter()
        .filter(|g| g.name == "discovery.k8s.io")
        .flat_map(|g| g.versions.iter())
        .any(|v| v.version == "v1");
    let gvk = kube::api::GroupVersionKind::gvk(
        "discovery.k8s.io",
        if v1 { "v1" } else { "v1beta1" },
        "EndpointSlice",
    );
    let resource = kube::api::ApiResource::from_gvk_with_plural(&gvk, "endpointslices");
    Ok(Api::all_with(client, &resource))
}

/// What the API server holds now.
pub fn api_state(cp: &ControlPlane) -> Result<ClusterState, TestbedError> {
    let client: Client = cp.client();
    cp.run(async move {
        Ok(ClusterState {
            pods: kind_state(Api::<Pod>::all(client.clone())).await?,
            namespaces: kind_state(Api::<Namespace>::all(client.clone())).await?,
            policies: kind_state(Api::<NetworkPolicy>::all(client.clone())).await?,
            services: kind_state(Api::<Service>::all(client.clone())).await?,
            endpointslices: kind_state(slices_api(client).await?).await?,
        })
    })
    .map_err(kube_err(
        "listing Pods, Namespaces, NetworkPolicies, Services and EndpointSlices",
    ))
}

/// Removes terminal colour sequences (`ESC [ ... letter`), as the agent's
/// log carries them.
pub fn strip_ansi(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    let mut chars = s.chars();
    while let Some(c) = chars.next() {
        if c == '\u{1b}' {
            for c in chars.by_ref() {
                if c.is_ascii_alphabetic() {
                    break;
                }
            }
        } else {
            out.push(c);
        }
    }
    out
}

/// The states the agent has logged, oldest first.
pub fn agent_states(log: &str) -> Vec<ClusterState> {
    agent_states_timed(log)
        .into_iter()
        .map(|(_, s)| s)
        .collect()
}

/// [`agent_states`] with each line's timestamp (its first word, RFC 3339,
/// as the agent's log writes it), oldest first.
pub fn agent_states_timed(log: &str) -> Vec<(String, ClusterState)> {
    log.lines()
        .filter(|l| l.contains(AGENT_STATE_LOG))
        .map(|line| {
            let stamp = log_stamp(line);
            let line = strip_ansi(line);
            let field = |key: &str| -> u64 {
                field_value(&line, key)
                    .and_then(|v| v.parse().ok())
                    .unwrap_or(0)
            };
            let kind = |name: &str| KindState {
                count: usize::try_from(field(name)).unwrap_or(usize::MAX),
                newest: field(&format!("{name}_rv")),
            };
            let state = ClusterState {
                pods: kind("pods"),
                namespaces: kind("namespaces"),
                policies: kind("policies"),
                services: kind("services"),
                endpointslices: kind("endpointslices"),
            };
            (stamp, state)
        })
        .collect()
}

/// Waits until the agent (logging to `agent_log`, serving `agent_socket`)
/// has applied what the API server holds now; the error carries the log's
/// tail.
pub fn wait_for_agent(
    cp: &ControlPlane,
    agent_log: &Path,
    agent_socket: &Path,
    timeout: Duration,
) -> Result<(), TestbedError> {
    let target = api_state(cp)?;
    let deadline = Instant::now() + timeout;
    let failure = |reason: String| TestbedError::Agent {
        reason,
        log: agent_log.to_path_buf(),
        log_tail: log_tail(agent_log, 30),
    };
    loop {
        let log = std::fs::read_to_string(agent_log).unwrap_or_default();
        if agent_states(&log).iter().any(|s| s.caught_up_with(&target)) {
            break;
        }
        if Instant::now() >= deadline {
            return Err(failure(format!(
                "did not catch up with the API server within {timeout:?} (the API holds {target:?}; last logged: {:?})",
                agent_states(&log).last()
            )));
        }
        std::thread::sleep(Duration::from_millis(25));
    }
    std::thread::sleep(SETTLE);
    let check = agent_api::Request::Check {
        container_id: "palisade-testbed-sync-barrier".into(),
    };
    agent_api::call(agent_socket, &check, timeout)
        .map(drop)
        .map_err(|e| failure(format!("no answer to the CHECK barrier: {e}")))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_agent_state_line_parses_with_or_without_colours() {
        let log = "2026-12-01T09:00:00Z  INFO policy_agent::source::kube: cluster state from the API server pods=3 pods_rv=120 namespaces=5 namespaces_rv=80 policies=2 policies_rv=110\n\
                   unrelated line pods=9\n\
                   \u{1b}[2m2026\u{1b}[0m \u{1b}[32m INFO\u{1b}[0m cluster state from the API server \u{1b}[3mpods\u{1b}[0m\u{1b}[2m=\u{1b}[0m4 \u{1b}[3mpods_rv\u{1b}[0m\u{1b}[2m=\u{1b}[0m130 namespaces=5 namespaces_rv=80 policies=2 policies_rv=110\n";
        let states = agent_states(log);
        assert_eq!(states.len(), 2);
        assert_eq!(
            states[0].pods,
            KindState {
                count: 3,
                newest: 120
            }
        );
        assert_eq!(
            states[1].pods,
            KindState {
                count: 4,
                newest: 130
            }
        );
        let api = ClusterState {
            pods: KindState {
                count: 4,
                newest: 125,
            },
            ..states[1]
        };
        assert!(!states[0].caught_up_with(&api));
        assert!(states[1].caught_up_with(&api));
        // A deletion: fewer objects, the agent has seen newer ones.
        let after_delete = ClusterState {
            pods: KindState {
                count: 3,
                newest: 100,
            },
            ..api
        };
        assert!(!states[1].caught_up_with(&after_delete));
    }
}
