//! Enforcement made visible from the API: Kubernetes Events on each
//! NetworkPolicy once this node's agent enforces a change of it
//! (`Enforced on node-a: 3 pods, 41 ms after the change`), and Warnings
//! when it fails closed (an invalid field, over its budget).
//!
//! Three parts, each on its own side of the reconcile loop:
//!
//! - the kube source sends an [`Origin`] after each NetworkPolicy change
//!   (its uid, `metadata.generation`, and when the watch event arrived);
//! - [`Tracker`], inside the agent, turns the origins taken since the
//!   last apply into [`Notice`]s once an apply has succeeded (the maps
//!   every later packet is judged against hold the change), at most one
//!   per policy version (uid and generation) in the agent's life;
//! - [`writer`], a task of its own fed through a bounded channel
//!   ([`EventSender::send`] never waits: a full queue drops the notice and
//!   counts it), coalesces, rate-limits and writes `events.k8s.io/v1`
//!   Events, merging repeats into the Event's `series`.
//!
//! The writer only observes applies: nothing it does, or fails to do,
//! feeds back into what is enforced.

pub mod cluster;
mod tracker;
pub mod writer;

use std::time::SystemTime;

use policy_engine::model::PolicyRef;
use tokio::sync::mpsc;

pub use tracker::Tracker;

/// Which version of a NetworkPolicy a change was, and when the agent
/// learnt of it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Origin {
    /// `metadata.uid` (an Event names the object by it).
    pub uid: String,
    /// `metadata.generation`: the API server bumps it on every change of
    /// the spec, and only then.
    pub generation: i64,
    /// When its watch event reached this agent: "after the change" is
    /// measured from here.
    pub seen: SystemTime,
    /// It came from a list (the agent's start, a relist), not as a live
    /// change: no `Enforced` event for it (every node would report every
    /// policy at each restart), but a failure is still reported.
    pub listed: bool,
}

/// `reason` of the Normal event: the change is enforced.
pub const ENFORCED: &str = "Enforced";
/// `reason` of the Warning for a policy with an invalid field.
pub const INVALID: &str = "InvalidPolicy";
/// `reason` of the Warning for a policy over its budget.
pub const OVER_BUDGET: &str = "OverBudget";
/// `action` of every event the agent writes.
pub const ACTION: &str = "Enforce";
/// `reportingController` of every event the agent writes.
pub const CONTROLLER: &str = "palisade.dev/policy-agent";

/// One event to write about one policy, from this node.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Notice {
    /// The policy.
    pub policy: PolicyRef,
    /// Its uid.
    pub uid: String,
    /// A Warning (the policy fails closed), or Normal.
    pub warning: bool,
    /// [`ENFORCED`], [`INVALID`] or [`OVER_BUDGET`].
    pub reason: &'static str,
    /// What `kubectl describe` shows as the message.
    pub note: String,
}

/// What the agent tells the writer.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Message {
    /// An event to write.
    Notice(Notice),
    /// The policy is gone: whatever is queued for it is dropped.
    Forget(PolicyRef),
}

/// How many messages may wait for the writer; past that they are dropped
/// (counted in `palisade_api_events_total{outcome="dropped"}`).
pub const QUEUE: usize = 1024;

/// The agent's end of the writer's channel.
#[derive(Clone, Debug)]
pub struct EventSender {
    tx: mpsc::Sender<Message>,
}

impl EventSender {
    /// Queues `message` without waiting: when the queue is full it is
    /// dropped and counted, so the reconcile loop never waits for the API
    /// server.
    pub fn send(&self, message: Message) {
        match self.tx.try_send(message) {
            Ok(()) => {}
            Err(mpsc::error::TrySendError::Full(_)) => {
                crate::health::metrics().api_event("dropped");
            }
            Err(mpsc::error::TrySendError::Closed(_)) => {}
        }
    }
}

/// A channel of `capacity` messages.
pub fn channel(capacity: usize) -> (EventSender, mpsc::Receiver<Message>) {
    let (tx, rx) = mpsc::channel(capacity);
    (EventSender { tx }, rx)
}

/// The tracker and the writer's channel, as the agent holds them.
#[derive(Debug)]
pub struct Reporter {
    /// What has been taken and not reported yet.
    pub tracker: Tracker,
    /// Where notices go.
    pub sender: EventSender,
}

#[cfg(test)]
mod tests;
