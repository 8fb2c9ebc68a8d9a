//! The task that writes the agent's [`Notice`]s as `events.k8s.io/v1`
//! Events (served since Kubernetes 1.19), so that a thousand nodes and a
//! busy cluster make no event storm:
//!
//! - **coalesced**: one notice per policy waits at a time; a newer one for
//!   the same policy replaces it (the note says how many were merged);
//! - **per policy**: at most one event per policy every [`Limits::per_policy`];
//! - **global**: a token bucket of [`Limits::burst`] events refilled at
//!   [`Limits::per_second`];
//! - **series**: a notice equal to one already written (same policy,
//!   reason and note) patches that Event's `series` (count and
//!   `lastObservedTime`) instead of creating another, as client-go's event
//!   recorder does;
//! - **bounded**: the queue in front ([`super::QUEUE`]), the waiting
//!   notices and the series cache all have a size; what does not fit is
//!   dropped and counted (`palisade_api_events_total{outcome}`).
//!
//! An Event for a policy deleted meanwhile is skipped quietly (the agent
//! sends [`Message::Forget`]; a namespace gone by the time of the write
//! answers 404 or 403, logged at debug). kube-rs's `Recorder` was not
//! used: it merges every event with the same reason into one series and
//! keeps the first note, so `describe` would show the first change's pod
//! count and latency for every later change (the API makes a note
//! immutable).

use std::collections::{BTreeMap, HashMap};
use std::time::{Duration, Instant, SystemTime};

use k8s_openapi::api::core::v1::ObjectReference;
use k8s_openapi::api::events::v1::Event;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{MicroTime, ObjectMeta};
use kube::api::{Patch, PatchParams, PostParams};
use kube::{Api, Client};
use tokio::sync::mpsc;

use super::{cluster, Message, Notice, ACTION, CONTROLLER};

/// The writer's bounds.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Limits {
    /// Events written per second, on average.
    pub per_second: f64,
    /// Events written at once after a quiet time.
    pub burst: f64,
    /// Least time between two events of one policy.
    pub per_policy: Duration,
    /// Most notices waiting (one per policy).
    pub waiting: usize,
    /// Most written events remembered to merge repeats into.
    pub series: usize,
}

impl Default for Limits {
    fn default() -> Self {
        Self {
            per_second: 2.0,
            burst: 20.0,
            per_policy: Duration::from_secs(5),
            waiting: 4096,
            series: 4096,
        }
    }
}

/// A notice waiting, with how many earlier ones it replaced.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Waiting {
    /// The newest notice for its policy.
    pub notice: Notice,
    /// Older notices for the same policy it replaced.
    pub merged: u32,
}

/// The pure half of the writer: which notice may be written when.
#[derive(Debug)]
pub struct Queue {
    limits: Limits,
    tokens: f64,
    refilled: Instant,
    /// By policy uid.
    waiting: BTreeMap<String, Waiting>,
    /// By policy uid: when an event of it was last written.
    last: HashMap<String, Instant>,
}

impl Queue {
    /// An empty queue with a full bucket.
    pub fn new(limits: Limits, now: Instant) -> Self {
        Self {
            limits,
            tokens: limits.burst,
            refilled: now,
            waiting: BTreeMap::new(),
            last: HashMap::new(),
        }
    }

    /// Takes a message in; `false` when a notice had to be dropped.
    pub fn take(&mut self, message: Message) -> bool {
        match message {
            Message::Forget(policy) => {
                self.waiting.retain(|_, w| w.notice.policy != policy);
                true
            }
            Message::Notice(notice) => {
                let merged = match self.waiting.remove(&notice.uid) {
                    Some(old) => old.merged + 1,
                    None if self.waiting.len() >= self.limits.waiting => return false,
                    None => 0,
                };
                self.waiting
                    .insert(notice.uid.clone(), Waiting { notice, merged });
                true
            }
        }
    }

    /// Notices waiting.
    pub fn len(&self) -> usize {
        self.waiting.len()
    }

    /// Whether nothing waits.
    pub fn is_empty(&self) -> bool {
        self.waiting.is_empty()
    }

    fn refill(&mut self, now: Instant) {
        let dt = now.saturating_duration_since(self.refilled).as_secs_f64();
        self.tokens = (self.tokens + dt * self.limits.per_second).min(self.limits.burst);
        self.refilled = now;
    }

    fn allowed_at(&self, uid: &str) -> Option<Instant> {
        self.last.get(uid).map(|t| *t + self.limits.per_policy)
    }

    /// When the next waiting notice may be written (`None`: nothing
    /// waits).
    pub fn due(&mut self, now: Instant) -> Option<Instant> {
        self.refill(now);
        let policy = self
            .waiting
            .keys()
            .map(|uid| self.allowed_at(uid).unwrap_or(now).max(now))
            .min()?;
        let token = if self.tokens >= 1.0 {
            now
        } else {
            now + Duration::from_secs_f64((1.0 - self.tokens) / self.limits.per_second)
        };
        Some(policy.max(token))
    }

    /// A notice that may be written now, if any (it spends a token).
    pub fn pop(&mut self, now: Instant) -> Option<Waiting> {
        self.refill(now);
        if self.tokens < 1.0 {
            return None;
        }
        let uid = self
            .waiting
            .keys()
            .find(|uid| self.allowed_at(uid).is_none_or(|t| t <= now))?
            .clone();
        let w = self.waiting.remove(&uid)?;
        self.tokens -= 1.0;
        if self.last.len() >= self.limits.waiting {
            let per_policy = self.limits.per_policy;
            self.last
                .retain(|_, t| now.saturating_duration_since(*t) < per_policy);
        }
        self.last.insert(uid, now);
        Some(w)
    }
}

/// One written Event that a repeat may extend.
#[derive(Clone, Debug)]
struct Written {
    policy: policy_engine::model::PolicyRef,
    name: String,
    count: i32,
    at: SystemTime,
}

/// Writes notices for the agent of `node` until the channel closes.
pub async fn run(client: Client, node: String, mut rx: mpsc::Receiver<Message>, limits: Limits) {
    let mut queue = Queue::new(limits, Instant::now());
    let mut written: HashMap<(String, &'static str, String), Written> = HashMap::new();
    loop {
        let due = queue.due(Instant::now());
        tokio::select! {
            message = rx.recv() => match message {
                None => return,
                Some(m) => {
                    if let Message::Forget(policy) = &m {
                        written.retain(|_, w| &w.policy != policy);
                    }
                    if !queue.take(m) {
                        crate::health::metrics().api_event("dropped");
                    }
                }
            },
            _ = tokio::time::sleep_until(due.unwrap_or_else(Instant::now).into()), if due.is_some() => {
                if let Some(w) = queue.pop(Instant::now()) {
                    write(&client, &node, &mut written, w, limits.series).await;
                }
            }
        }
    }
}

/// The note as written: the notice's, with how many were merged into it.
fn note(w: &Waiting) -> String {
    let mut note = w.notice.note.clone();
    if w.merged > 0 {
        note.push_str(&format!(
            " ({} earlier apply(s) of it merged into this event)",
            w.merged
        ));
    }
    // The API's limit is 1 kB.
    if note.len() > 1000 {
        let mut end = 1000;
        while !note.is_char_boundary(end) {
            end -= 1;
        }
        note.truncate(end);
    }
    note
}

async fn write(
    client: &Client,
    node: &str,
    written: &mut HashMap<(String, &'static str, String), Written>,
    w: Waiting,
    cap: usize,
) {
    let note = note(&w);
    let n = &w.notice;
    let key = (n.uid.clone(), n.reason, note.clone());
    let api: Api<Event> = Api::namespaced(client.clone(), &n.policy.namespace);
    let now = SystemTime::now();
    let result = match written.get_mut(&key) {
        Some(prev) => {
            prev.count += 1;
            prev.at = now;
            let patch = serde_json::json!({
                "series": {
                    "count": prev.count,
                    "lastObservedTime": micro(now),
                }
            });
            api.patch(&prev.name, &PatchParams::default(), &Patch::Merge(&patch))
                .await
                .map(|_| "merged")
        }
        None => {
            let event = new_event(node, n, &note, now);
            let name = event.metadata.name.clone().unwrap_or_default();
            let r = api.create(&PostParams::default(), &event).await;
            if r.is_ok() {
                if written.len() >= cap {
                    // The oldest goes: a repeat of it makes a new Event.
                    if let Some(oldest) = written
                        .iter()
                        .min_by_key(|(_, v)| v.at)
                        .map(|(k, _)| k.clone())
                    {
                        written.remove(&oldest);
                    }
                }
                written.insert(
                    key.clone(),
                    Written {
                        policy: n.policy.clone(),
                        name,
                        count: 1,
                        at: now,
                    },
                );
            }
            r.map(|_| "written")
        }
    };
    match result {
        Ok(outcome) => crate::health::metrics().api_event(outcome),
        Err(kube::Error::Api(s)) if s.code == 404 || s.code == 403 => {
            // The namespace (or the Event we would extend) is gone.
            written.remove(&key);
            crate::health::metrics().api_event("skipped");
            tracing::debug!(policy = %n.policy, code = s.code, message = %s.message, "event not written");
        }
        Err(e) => {
            crate::health::metrics().api_event("failed");
            tracing::warn!(policy = %n.policy, error = %e, "event not written");
        }
    }
}

fn micro(t: SystemTime) -> serde_json::Value {
    serde_json::to_value(MicroTime(timestamp(t))).unwrap_or_default()
}

fn timestamp(t: SystemTime) -> k8s_openapi::jiff::Timestamp {
    k8s_openapi::jiff::Timestamp::try_from(t).unwrap_or(k8s_openapi::jiff::Timestamp::UNIX_EPOCH)
}

/// The Event a first notice makes.
pub fn new_event(node: &str, n: &Notice, note: &str, now: SystemTime) -> Event {
    let nanos = now
        .duration_since(SystemTime::UNIX_EPOCH)
        .unwrap_or_default()
        .as_nanos();
    // Unique across nodes writing at the same instant.
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for b in node.bytes() {
        h = (h ^ u64::from(b)).wrapping_mul(0x100_0000_01b3);
    }
    let mut name = format!("{}.{:x}{:08x}", n.policy.name, nanos, h as u32);
    name.truncate(253);
    let mut instance = format!("{}{node}", cluster::INSTANCE_PREFIX);
    instance.truncate(128);
    Event {
        action: Some(ACTION.into()),
        reason: Some(n.reason.into()),
        note: Some(note.into()),
        type_: Some(if n.warning { "Warning" } else { "Normal" }.into()),
        event_time: Some(MicroTime(timestamp(now))),
        reporting_controller: Some(CONTROLLER.into()),
        reporting_instance: Some(instance),
        regarding: Some(ObjectReference {
            api_version: Some("networking.k8s.io/v1".into()),
            kind: Some("NetworkPolicy".into()),
            namespace: Some(n.policy.namespace.clone()),
            name: Some(n.policy.name.clone()),
            uid: Some(n.uid.clone()),
            ..Default::default()
        }),
        metadata: ObjectMeta {
            name: Some(name),
            namespace: Some(n.policy.namespace.clone()),
            ..Default::default()
        },
        ..Default::default()
    }
}
