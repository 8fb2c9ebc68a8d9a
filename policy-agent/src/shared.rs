//! The agent as its tasks share it ([`SharedAgent`]), and the view of it
//! that `/metrics` and `/readyz` read without taking its lock
//! ([`AgentView`]): a publisher task takes the lock once every
//! [`VIEW_EVERY`], however many requests the HTTP endpoint gets, so a
//! flood of scrapes cannot queue in front of a CNI ADD or an apply.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::{watch, Mutex};

use crate::dataplane::{ConntrackUsage, Dataplane};
use crate::reconcile::{Agent, FitReport};

/// Shared handle on the agent.
pub type SharedAgent<D> = Arc<Mutex<Agent<D>>>;

/// How often the [`AgentView`] is taken from the agent.
pub const VIEW_EVERY: Duration = Duration::from_secs(1);

/// How often the endpoints' conntrack counts are corrected from the
/// conntrack map, by the publisher: the walk ([`Dataplane::conntrack_walk`])
/// outside the agent's lock, then the lock only to write the counts
/// ([`Dataplane::correct_conntrack`]).
pub const RECOUNT_CONNTRACK_EVERY: u32 = 10;

/// What the agent's HTTP endpoint reports, as of the last publication.
#[derive(Clone, Debug)]
pub struct AgentView {
    /// Local endpoints.
    pub endpoints: usize,
    /// The pods of the local endpoints (`namespace/name`).
    pub live_pods: BTreeSet<String>,
    /// The policies isolating some local pod (`namespace/name`): those
    /// whose per-policy counters are kept.
    pub live_policies: BTreeSet<String>,
    /// Compiled states written.
    pub applies: u64,
    /// Policies that failed to compile.
    pub invalid_policies: usize,
    /// Packets dropped, by reason code.
    pub drops: BTreeMap<u8, u64>,
    /// Running local pods without an endpoint.
    pub unenforced: usize,
    /// Host veths isolated both ways because no pod is known for them
    /// (see [`crate::reconcile::quarantine`]).
    pub quarantined: usize,
    /// How the last compiled state fitted the maps.
    pub fit: FitReport,
    /// Policies over their budget (they fail closed for their pods).
    pub over_budget: Vec<policy_engine::model::PolicyRef>,
    /// Each local pod's conntrack entries and refused new flows
    /// (`namespace/name`; a pod's sandboxes added up).
    pub conntrack: BTreeMap<String, ConntrackUsage>,
    /// [`Agent::readiness`] then.
    pub readiness: Result<(), String>,
}

impl Default for AgentView {
    fn default() -> Self {
        Self {
            endpoints: 0,
            live_pods: BTreeSet::new(),
            live_policies: BTreeSet::new(),
            applies: 0,
            invalid_policies: 0,
            drops: BTreeMap::new(),
            unenforced: 0,
            quarantined: 0,
            fit: FitReport::default(),
            over_budget: Vec::new(),
            conntrack: BTreeMap::new(),
            readiness: Err("the agent has not published its state yet".into()),
        }
    }
}

impl AgentView {
    /// The view of `agent` now.
    pub fn of<D: Dataplane>(agent: &Agent<D>) -> Self {
        let quarantined = agent.quarantined().len();
        let usage = agent.dataplane().conntrack_usage();
        let mut conntrack: BTreeMap<String, ConntrackUsage> = BTreeMap::new();
        for e in agent.endpoints().iter() {
            if crate::reconcile::quarantine::is_quarantined(e) {
                continue;
            }
            let u = usage.get(&e.ep_id).copied().unwrap_or_default();
            let sum = conntrack.entry(e.pod.to_string()).or_default();
            sum.entries_ingress += u.entries_ingress;
            sum.entries_egress += u.entries_egress;
            sum.refused_ingress += u.refused_ingress;
            sum.refused_egress += u.refused_egress;
        }
        Self {
            endpoints: agent.endpoints().len().saturating_sub(quarantined),
            live_pods: agent
                .endpoints()
                .iter()
                .filter(|e| !crate::reconcile::quarantine::is_quarantined(e))
                .map(|e| e.pod.to_string())
                .collect(),
            live_policies: agent
                .compiled()
                .isolation
                .values()
                .flatten()
                .flatten()
                .map(ToString::to_string)
                .collect(),
            applies: agent.applies(),
            invalid_policies: agent.invalid_policies(),
            drops: agent.dataplane().drop_counts(),
            unenforced: agent.unenforced().len(),
            quarantined,
            fit: agent.fit_report().clone(),
            over_budget: agent
                .over_budget_policies()
                .iter()
                .map(|e| e.policy().clone())
                .collect(),
            conntrack,
            readiness: agent.readiness(),
        }
    }
}

/// Where the latest [`AgentView`] is read.
pub type ViewRx = watch::Receiver<Arc<AgentView>>;

/// A channel holding the default (not ready) view until the first
/// publication.
pub fn view_channel() -> (watch::Sender<Arc<AgentView>>, ViewRx) {
    watch::channel(Arc::new(AgentView::default()))
}

/// Corrects the conntrack counts: the map walked on a blocking thread
/// with the agent's lock free (CNI ADDs and applies go on meanwhile), the
/// lock taken again only to write what the walk found.
async fn recount_conntrack<D: Dataplane + 'static>(agent: &SharedAgent<D>) {
    let Some(walk) = agent.lock().await.dataplane_mut().conntrack_walk() else {
        return;
    };
    match tokio::task::spawn_blocking(walk).await {
        Ok(live) => {
            if let Err(e) = agent.lock().await.dataplane_mut().correct_conntrack(&live) {
                tracing::warn!(error = %e, "conntrack counts not corrected");
            }
        }
        Err(e) => tracing::warn!(error = %e, "the conntrack walk failed"),
    }
}

/// Publishes the agent's view now and then every [`VIEW_EVERY`] until
/// the task is aborted or nobody reads it any more.
pub fn spawn_publisher<D: Dataplane + 'static>(
    agent: SharedAgent<D>,
    tx: watch::Sender<Arc<AgentView>>,
) -> tokio::task::JoinHandle<()> {
    tokio::spawn(async move {
        let mut round: u32 = 0;
        loop {
            if round.is_multiple_of(RECOUNT_CONNTRACK_EVERY) {
                recount_conntrack(&agent).await;
            }
            round = round.wrapping_add(1);
            let guard = agent.lock().await;
            let view = AgentView::of(&*guard);
            drop(guard);
            if tx.send(Arc::new(view)).is_err() {
                return;
            }
            tokio::time::sleep(VIEW_EVERY).await;
        }
    })
}

#[cfg(test)]
mod tests {
    use std::sync::mpsc;

    use policy_common::CtCount;

    use super::*;
    use crate::dataplane::fake::{FakeDataplane, WalkHook};

    /// The recount's walk of the conntrack map (long on a full map) runs
    /// with the agent's lock free; only the correction takes it.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn the_conntrack_walk_runs_outside_the_agents_lock() {
        let (walking_tx, walking_rx) = mpsc::channel::<()>();
        let (go_tx, go_rx) = mpsc::channel::<()>();
        let go_rx = std::sync::Mutex::new(go_rx);
        let live = BTreeMap::from([(
            7_u32,
            CtCount {
                ingress: 3,
                egress: 1,
            },
        )]);
        let found = live.clone();
        let dataplane = FakeDataplane {
            walk: Some(WalkHook(Arc::new(move || {
                let _ = walking_tx.send(());
                if let Ok(rx) = go_rx.lock() {
                    let _ = rx.recv_timeout(Duration::from_secs(10));
                }
                found.clone()
            }))),
            ..FakeDataplane::default()
        };
        let agent: SharedAgent<FakeDataplane> =
            Arc::new(Mutex::new(Agent::new(dataplane, Vec::new())));
        let (tx, _rx) = view_channel();
        let publisher = spawn_publisher(Arc::clone(&agent), tx);
        tokio::task::spawn_blocking(move || walking_rx.recv_timeout(Duration::from_secs(10)))
            .await
            .unwrap_or_else(|e| panic!("{e}"))
            .unwrap_or_else(|e| panic!("the walk never began: {e}"));
        // The walk is under way: the lock is free for a CNI ADD.
        let guard = tokio::time::timeout(Duration::from_secs(2), agent.lock())
            .await
            .unwrap_or_else(|_| panic!("the agent's lock is held during the conntrack walk"));
        assert!(guard.dataplane().corrected.is_empty(), "not written yet");
        drop(guard);
        let _ = go_tx.send(());
        let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
        loop {
            if agent.lock().await.dataplane().corrected.first() == Some(&live) {
                break;
            }
            assert!(
                tokio::time::Instant::now() < deadline,
                "the walk's counts were never written"
            );
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        publisher.abort();
    }
}
