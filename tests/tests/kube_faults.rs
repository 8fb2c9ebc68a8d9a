//! Faults of a real control plane, with the agent on its kube path and
//! real packets: the API server restarted mid-watch, etcd compacted under
//! the agent's resourceVersion while the API server restarts, the agent's
//! ClusterRoleBinding deleted, and the agent started while the API server
//! is away. In each, the last good state stays enforced throughout, the
//! agent says whether it is ready (CNI STATUS) and why not, and once the
//! fault is over a change made through the API is enforced.
//!
//! The change: pod `sleep` relabelled `app: apod-web`, which the `apod`
//! scenario's policy lets reach `apod-api` on its named port.

use std::collections::BTreeMap;
use std::time::Duration;

use palisade_tests::{scenarios, start_kube_bed, wait_until};
use testbed::controlplane::kubelet;
use testbed::{Observation, Probe, Testbed};

/// How long the agent may take to enforce a change once the API server
/// is back (its watch backoff is at most a few seconds).
const CONVERGE: Duration = Duration::from_secs(30);

struct Bed {
    bed: Testbed,
    probes: Vec<Probe>,
    /// `sleep` → `apod-api` on port 80: denied before the change.
    change: Vec<Probe>,
}

fn start() -> Bed {
    let (bed, probes) = start_kube_bed(&scenarios("apod")[0], 1, Vec::new());
    let change: Vec<Probe> = probes
        .iter()
        .filter(|p| p.from.to_string() == "default/sleep" && p.to.to_string() == "default/apod-api")
        .cloned()
        .collect();
    assert_eq!(change.len(), 1, "apod probes sleep -> apod-api once");
    let b = Bed {
        bed,
        probes,
        change,
    };
    b.assert_as_expected("at start");
    b
}

impl Bed {
    fn cp(&self) -> &testbed::controlplane::ControlPlane {
        self.bed.kube().expect("kube mode").control_plane()
    }

    /// Every probe as the scenario expects (the last good state).
    fn assert_as_expected(&self, when: &str) {
        let seen = self.bed.probe(&self.probes);
        let wrong: Vec<&Observation> = seen
            .iter()
            .filter(|o| o.matches_expectation() == Some(false))
            .collect();
        assert!(
            wrong.is_empty(),
            "{when}: not the last good state: {wrong:?}\n{}",
            self.bed.agent_log_tail(30)
        );
    }

    fn ready(&self) -> Result<(), String> {
        self.bed.agent_status().into_iter().collect()
    }

    fn wait_ready(&self, when: &str) {
        wait_until(&format!("the agent is ready {when}"), CONVERGE, || {
            self.ready().is_ok()
        });
    }

    /// Relabels `sleep` through the API and waits until packets see it.
    fn change_is_enforced(&self, when: &str) {
        let labels = BTreeMap::from([("app".to_string(), "apod-web".to_string())]);
        kubelet::relabel_pod(self.cp(), "default", "sleep", &labels).unwrap();
        let start = std::time::Instant::now();
        loop {
            if self.bed.probe(&self.change)[0].allowed == Some(true) {
                return;
            }
            assert!(
                start.elapsed() < CONVERGE,
                "{when}: the relabel was not enforced\n{}",
                self.bed.agent_log_tail(40)
            );
            std::thread::sleep(Duration::from_millis(200));
        }
    }

    fn log_mentions(&self, text: &str) -> bool {
        self.bed.agent_log_tail(400).contains(text)
    }
}

#[test]
fn api_server_restarted_mid_watch() {
    let b = start();
    b.cp().stop_apiserver();
    // Enforcement does not depend on the API server.
    b.assert_as_expected("with the API server down");
    b.cp().start_apiserver().unwrap();
    b.wait_ready("after the API server came back");
    b.assert_as_expected("after the relist");
    b.change_is_enforced("after the restart");
}

/// The agent's watches resume from a fresh list after a lost watch (and
/// relist at once on `410 Gone`, see `source::kube`'s unit tests), so
/// history compacted away while the API server was down is never needed:
/// it converges on what etcd holds now.
#[test]
fn etcd_compacted_under_the_agents_resource_version() {
    let b = start();
    // Events after the agent's last resourceVersion, then compacted away.
    for i in 0..5 {
        let labels = BTreeMap::from([("churn".to_string(), i.to_string())]);
        kubelet::relabel_pod(b.cp(), "default", "apod-log", &labels).unwrap();
    }
    b.cp().stop_apiserver();
    b.cp().compact_etcd().unwrap();
    b.cp().start_apiserver().unwrap();
    b.wait_ready("after the relist");
    b.assert_as_expected("after the relist");
    b.change_is_enforced("after the compaction");
    assert!(
        b.log_mentions("watch lost"),
        "the agent did not say it lost its watch\n{}",
        b.bed.agent_log_tail(40)
    );
}

#[test]
fn cluster_role_binding_deleted_then_restored() {
    let b = start();
    let binding = "clusterrolebinding.rbac.authorization.k8s.io/palisade-agent";
    b.cp().kubectl(&["delete", binding]).unwrap();
    // Open watches are not re-authorised: the agent meets the 403 when it
    // lists again, here after an API server restart.
    b.cp().restart_apiserver().unwrap();
    wait_until("the agent reports the lost permission", CONVERGE, || {
        b.ready().is_err() && b.log_mentions("403")
    });
    let why = b.ready().unwrap_err();
    assert!(!why.is_empty());
    assert!(
        b.log_mentions("forbidden"),
        "the log does not say why\n{}",
        b.bed.agent_log_tail(40)
    );
    b.assert_as_expected("without permission");
    let rbac = palisade_tests::workspace_root().join("manifests/10-rbac.yaml");
    b.cp()
        .kubectl(&["apply", "-f", &rbac.display().to_string()])
        .unwrap();
    b.wait_ready("once the binding is back");
    b.change_is_enforced("after the binding came back");
}

#[test]
fn agent_started_while_the_api_server_is_away() {
    let b = start();
    b.bed.stop_agents();
    b.cp().stop_apiserver();
    b.bed.restart_agents_unready().unwrap();
    // Not ready, but the pinned state it adopted keeps enforcing.
    std::thread::sleep(Duration::from_secs(2));
    assert!(b.ready().is_err(), "ready without an API server");
    b.assert_as_expected("agent up, API server down");
    b.cp().start_apiserver().unwrap();
    b.wait_ready("once the API server is reachable");
    b.assert_as_expected("after the first sync");
    b.change_is_enforced("after the late start");
}
