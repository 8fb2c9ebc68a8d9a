//! Verdict events: read from the dataplane's ring buffer, resolved to pod
//! names, counted, and fanned out to `policy-agent flows` clients.

use std::collections::BTreeMap;
use std::net::IpAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use agent_api::{CounterRow, FlowRecord};
use policy_common::{dir, proto, reason, verdict, VerdictEvent};
use policy_engine::model::addr::from_addr;
use tokio::sync::broadcast;

use crate::dataplane::{Dataplane, DataplaneError};
use crate::reconcile::Agent;

/// Where verdict events come from (the kernel ring buffer, or a test).
pub trait EventSource: Send + 'static {
    /// Waits up to `timeout` and returns what arrived (maybe nothing).
    fn poll(&mut self, timeout: Duration) -> Result<Vec<VerdictEvent>, DataplaneError>;
}

impl EventSource for Box<dyn EventSource> {
    fn poll(&mut self, timeout: Duration) -> Result<Vec<VerdictEvent>, DataplaneError> {
        (**self).poll(timeout)
    }
}

impl EventSource for crate::dataplane::kernel::events::EventReader {
    fn poll(&mut self, timeout: Duration) -> Result<Vec<VerdictEvent>, DataplaneError> {
        crate::dataplane::kernel::events::EventReader::poll(self, timeout)
    }
}

/// Resolved flows: a broadcast to live clients plus counters.
#[derive(Debug)]
pub struct FlowHub {
    tx: broadcast::Sender<FlowRecord>,
    counters: Mutex<BTreeMap<(String, String, String), u64>>,
    policies: Mutex<BTreeMap<(String, String), u64>>,
}

/// One per-policy counter: connections a NetworkPolicy allowed, or
/// dropped while it isolated the pod.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PolicyCounter {
    /// The policy, `namespace/name`.
    pub policy: String,
    /// `allowed` or `dropped`.
    pub verdict: String,
    /// Connections (events, with the drops they stand for).
    pub count: u64,
}

/// Records a slow client may fall behind by before it misses some.
const BACKLOG: usize = 4096;

impl FlowHub {
    /// An empty hub.
    pub fn new() -> Arc<Self> {
        let (tx, _) = broadcast::channel(BACKLOG);
        Arc::new(Self {
            tx,
            counters: Mutex::new(BTreeMap::new()),
            policies: Mutex::new(BTreeMap::new()),
        })
    }

    /// Counts a record and hands it to every subscriber.
    pub fn publish(&self, record: FlowRecord) {
        if let Ok(mut c) = self.counters.lock() {
            *c.entry((
                record.pod.clone(),
                record.direction.clone(),
                record.verdict.clone(),
            ))
            .or_default() += 1 + u64::from(record.suppressed);
        }
        if let Ok(mut c) = self.policies.lock() {
            // An allowed connection counts for the policy whose rule
            // allowed it; a drop for each policy isolating the pod (none
            // of them admitted it), so the per-policy drops add up to more
            // than the drops when several policies isolate one pod.
            let n = 1 + u64::from(record.suppressed);
            for p in record.policy.iter().chain(&record.isolated_by) {
                *c.entry((p.clone(), record.verdict.clone())).or_default() += n;
            }
        }
        let _ = self.tx.send(record);
    }

    /// Drops the per-policy counters of policies `live` does not hold
    /// (policies deleted, or no longer isolating a pod of the node), so
    /// their series stay bounded by the policies that select local pods.
    pub fn retain_policies(&self, live: &std::collections::BTreeSet<String>) {
        if let Ok(mut c) = self.policies.lock() {
            c.retain(|(policy, _), _| live.contains(policy));
        }
    }

    /// Every per-policy counter so far.
    pub fn policy_counters(&self) -> Vec<PolicyCounter> {
        let Ok(c) = self.policies.lock() else {
            return Vec::new();
        };
        c.iter()
            .map(|((policy, verdict), count)| PolicyCounter {
                policy: policy.clone(),
                verdict: verdict.clone(),
                count: *count,
            })
            .collect()
    }

    /// A live feed of records published from now on.
    pub fn subscribe(&self) -> broadcast::Receiver<FlowRecord> {
        self.tx.subscribe()
    }

    /// Drops the counters of pods `live` does not hold (pods gone from the
    /// node), so per-pod series stay bounded by the pods on the node.
    pub fn retain_pods(&self, live: &std::collections::BTreeSet<String>) {
        if let Ok(mut c) = self.counters.lock() {
            c.retain(|(pod, _, _), _| live.contains(pod));
        }
    }

    /// Every counter so far.
    pub fn counters(&self) -> Vec<CounterRow> {
        let Ok(c) = self.counters.lock() else {
            return Vec::new();
        };
        c.iter()
            .map(|((pod, direction, verdict), count)| CounterRow {
                pod: pod.clone(),
                direction: direction.clone(),
                verdict: verdict.clone(),
                count: *count,
            })
            .collect()
    }
}

/// Reads `source` on a thread of its own until the agent goes away,
/// resolving each event with the agent's current state.
pub fn spawn_reader<D: Dataplane + 'static>(
    mut source: impl EventSource,
    agent: crate::shared::SharedAgent<D>,
    hub: Arc<FlowHub>,
) -> std::thread::JoinHandle<()> {
    std::thread::spawn(move || loop {
        if Arc::strong_count(&agent) == 1 {
            return;
        }
        match source.poll(Duration::from_millis(200)) {
            Ok(events) if events.is_empty() => {}
            Ok(events) => {
                let agent = agent.blocking_lock();
                for ev in events {
                    hub.publish(resolve(&agent, &ev));
                }
            }
            Err(e) => {
                tracing::warn!(error = %e, "reading verdict events failed");
                std::thread::sleep(Duration::from_secs(1));
            }
        }
    })
}

/// Turns a kernel event into names a person reads.
pub fn resolve<D: Dataplane>(agent: &Agent<D>, ev: &VerdictEvent) -> FlowRecord {
    let src = from_addr(ev.saddr);
    let dst = from_addr(ev.daddr);
    let pod = agent
        .endpoints()
        .iter()
        .find(|e| e.ep_id == ev.ep_id)
        .map(|e| e.pod.to_string())
        .unwrap_or_else(|| format!("endpoint {}", ev.ep_id));
    let (direction, peer_ip) = if ev.dir == dir::INGRESS {
        ("ingress", src)
    } else {
        ("egress", dst)
    };
    let ports = matches!(ev.proto, proto::TCP | proto::UDP | proto::SCTP);
    let (allowing, isolated_by) = attribution(agent.compiled(), ev);
    FlowRecord {
        time_ns: ev.ts_ns,
        pod,
        direction: direction.into(),
        verdict: verdict_text(ev.verdict).into(),
        reason: reason_text(ev.reason).into(),
        protocol: protocol_name(ev.proto),
        src: src.to_string(),
        sport: if ports { ev.sport } else { 0 },
        dst: dst.to_string(),
        dport: if ports { ev.dport } else { 0 },
        peer: pod_at(agent, peer_ip),
        policy: allowing.map(|r| r.policy.to_string()),
        rule: allowing.map(|r| r.field()),
        isolated_by,
        suppressed: ev.suppressed,
        service: through_service(agent, ev, dst),
    }
}

/// Who a verdict is attributed to, from the compile the agent enforces:
/// for an allowed new connection the rule whose entry allowed it (the
/// cookie the datapath read from the policy map), for a drop because no
/// rule matched (or a connection cut after a change) the policies
/// isolating the endpoint in that direction.
pub fn attribution<'c>(
    compiled: &'c policy_engine::compile::Compiled,
    ev: &VerdictEvent,
) -> (Option<&'c policy_engine::compile::RuleRef>, Vec<String>) {
    let direction = policy_engine::model::Direction::from_dir(ev.dir);
    match (ev.verdict, ev.reason) {
        (verdict::ALLOWED, reason::POLICY_ALLOW) => (compiled.rules.get(&ev.rule), Vec::new()),
        (verdict::DROPPED, reason::NO_RULE | reason::REVISION_DENIED) => (
            None,
            compiled
                .isolating(ev.ep_id, direction)
                .map(ToString::to_string)
                .collect(),
        ),
        // The policies in audit mode isolating the endpoint would drop it.
        (verdict::WOULD_DROP, _) => (
            None,
            compiled
                .audit_isolating(ev.ep_id, direction)
                .map(ToString::to_string)
                .collect(),
        ),
        _ => (None, Vec::new()),
    }
}

/// The Services a connection went through, for an egress verdict taken
/// after kube-proxy's translation: the datapath judges a pod's egress to a
/// ClusterIP at the backend's interface, so an egress event reported from
/// an interface other than the pod's own is one; the Services are those
/// that have the destination (address and port) as a backend.
fn through_service<D: Dataplane>(
    agent: &Agent<D>,
    ev: &VerdictEvent,
    dst: IpAddr,
) -> Option<String> {
    if ev.dir != dir::EGRESS {
        return None;
    }
    let own = agent.endpoints().iter().find(|e| e.ep_id == ev.ep_id)?;
    if nix::net::if_::if_nametoindex(own.ifname.as_str()).ok() == Some(ev.ifindex) {
        return None;
    }
    let protocol = policy_engine::model::Protocol::from_number(ev.proto)?;
    let snapshot = agent.snapshot();
    let names: Vec<String> = snapshot
        .services
        .iter()
        .filter(|(r, info)| {
            info.ports
                .iter()
                .filter(|p| p.protocol == protocol)
                .any(|sp| {
                    snapshot
                        .backends(r, sp)
                        .iter()
                        .any(|b| b.ip == dst && b.port == ev.dport)
                })
        })
        .map(|(r, _)| r.to_string())
        .collect();
    (!names.is_empty()).then(|| names.join(","))
}

fn pod_at<D: Dataplane>(agent: &Agent<D>, ip: IpAddr) -> Option<String> {
    if let Some(ep) = agent.endpoints().iter().find(|e| e.ips.contains(&ip)) {
        return Some(ep.pod.to_string());
    }
    agent.snapshot().pod_by_ip(ip).map(|p| p.to_string())
}

/// `allowed`, `dropped` or `would-drop` for a [`verdict`] code.
pub fn verdict_text(code: u8) -> &'static str {
    match code {
        verdict::DROPPED => "dropped",
        verdict::WOULD_DROP => "would-drop",
        _ => "allowed",
    }
}

/// A word or two for a [`reason`] code.
pub fn reason_text(code: u8) -> &'static str {
    match code {
        reason::POLICY_ALLOW => "policy",
        reason::NOT_ISOLATED => "not isolated",
        reason::NO_RULE => "no rule",
        reason::NOT_READY => "not ready",
        reason::REVISION_DENIED => "policy revision",
        reason::MALFORMED => "malformed",
        reason::FRAGMENT => "fragment",
        reason::ESTABLISHED => "established",
        reason::SPOOFED => "spoofed source",
        reason::CT_BUDGET => "conntrack budget",
        reason::AUDIT_NO_RULE => "audit: no rule",
        reason::TIER_DENY => "tier deny",
        _ => "unknown",
    }
}

fn protocol_name(p: u8) -> String {
    match p {
        proto::TCP => "TCP".into(),
        proto::UDP => "UDP".into(),
        proto::SCTP => "SCTP".into(),
        proto::ICMP => "ICMP".into(),
        proto::ICMPV6 => "ICMPv6".into(),
        n => n.to_string(),
    }
}

/// True when `record` passes a client's filters (verdict `audit` stands
/// for `would-drop`).
pub fn matches(record: &FlowRecord, pod: Option<&str>, verdict: Option<&str>) -> bool {
    pod.is_none_or(|p| record.pod == p || record.peer.as_deref() == Some(p))
        && verdict
            .is_none_or(|v| record.verdict == v || (v == "audit" && record.verdict == "would-drop"))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::dataplane::fake::FakeDataplane;
    use crate::reconcile::NewEndpoint;
    use policy_engine::model::PodRef;
    use policy_engine::testutil::ClusterBuilder;

    #[test]
    fn drop_events_name_both_pods_and_are_counted() {
        let (agent, ep_id) = attributed_agent(&[]);
        let ev = VerdictEvent {
            ep_id,
            dir: dir::INGRESS,
            proto: proto::TCP,
            verdict: verdict::DROPPED,
            reason: reason::NO_RULE,
            sport: 40000,
            dport: 80,
            saddr: policy_common::v4_mapped([10, 244, 0, 11]),
            daddr: policy_common::v4_mapped([10, 244, 0, 10]),
            ..Default::default()
        };
        let rec = resolve(&agent, &ev);
        assert_eq!(rec.pod, "default/a");
        assert_eq!(rec.peer.as_deref(), Some("default/b"));
        assert_eq!(
            (rec.direction.as_str(), rec.verdict.as_str()),
            ("ingress", "dropped")
        );
        assert_eq!((rec.src.as_str(), rec.dport), ("10.244.0.11", 80));
        assert!(matches(&rec, Some("default/b"), Some("dropped")));
        assert!(!matches(&rec, None, Some("allowed")));

        let hub = FlowHub::new();
        let mut rx = hub.subscribe();
        hub.publish(rec.clone());
        hub.publish(rec);
        assert_eq!(
            rx.try_recv().map(|r| r.pod).ok().as_deref(),
            Some("default/a")
        );
        let counters = hub.counters();
        assert_eq!(counters.len(), 1);
        assert_eq!(counters[0].count, 2);
    }

    const DENY_ALL: &str = "apiVersion: networking.k8s.io/v1
kind: NetworkPolicy
metadata: {name: default-deny, namespace: default}
spec:
  podSelector: {}
  policyTypes: [Ingress]
";
    const ALLOW_WEB: &str = "apiVersion: networking.k8s.io/v1
kind: NetworkPolicy
metadata: {name: allow-web, namespace: default}
spec:
  podSelector: {matchLabels: {app: a}}
  ingress:
  - from: [{podSelector: {matchLabels: {app: c}}}]
  - from: [{podSelector: {matchLabels: {app: b}}}]
    ports: [{port: 80}]
";

    /// The agent with pod `default/a` local (`default/b` remote), isolated
    /// by `policies` (e.g. `default-deny` and `allow-web`, whose second
    /// rule admits b on 80).
    fn attributed_agent(policies: &[&str]) -> (Agent<FakeDataplane>, u32) {
        let mut b = ClusterBuilder::new()
            .ns("default", &[])
            .pod("default/a", &[("app", "a")], &["10.244.0.10"])
            .pod("default/b", &[("app", "b")], &["10.244.0.11"]);
        for p in policies {
            b = b.policy(p);
        }
        let mut agent = Agent::new(FakeDataplane::default(), vec![]);
        agent.set_snapshot(b.build()).unwrap();
        agent
            .add(NewEndpoint {
                container_id: "c1".into(),
                pod: PodRef::new("default", "a"),
                ifname: "veth-a".into(),
                pod_ifname: "eth0".into(),
                ips: vec!["10.244.0.10".parse().unwrap()],
            })
            .unwrap();
        let ep_id = agent.dataplane().endpoints["veth-a"];
        (agent, ep_id)
    }

    fn event(ep_id: u32, verdict: u8, reason: u8, dport: u16, rule: u32) -> VerdictEvent {
        VerdictEvent {
            ep_id,
            rule,
            dir: dir::INGRESS,
            proto: proto::TCP,
            verdict,
            reason,
            sport: 40000,
            dport,
            saddr: policy_common::v4_mapped([10, 244, 0, 11]),
            daddr: policy_common::v4_mapped([10, 244, 0, 10]),
            ..Default::default()
        }
    }

    #[test]
    fn verdicts_name_the_allowing_rule_and_the_isolating_policies() {
        let (agent, ep_id) = attributed_agent(&[DENY_ALL, ALLOW_WEB]);
        // The cookie the datapath reads for b → a:80 is the one the
        // compiler wrote in that entry.
        let cookie = agent
            .compiled()
            .state
            .policy
            .iter()
            .find(|(e, _)| e.ep_id == ep_id && e.dir == dir::INGRESS)
            .map(|(_, v)| v.rule)
            .unwrap();
        let allowed = resolve(
            &agent,
            &event(ep_id, verdict::ALLOWED, reason::POLICY_ALLOW, 80, cookie),
        );
        assert_eq!(allowed.policy.as_deref(), Some("default/allow-web"));
        assert_eq!(allowed.rule.as_deref(), Some("spec.ingress[1]"));
        assert!(allowed.isolated_by.is_empty());

        let dropped = resolve(
            &agent,
            &event(ep_id, verdict::DROPPED, reason::NO_RULE, 81, 0),
        );
        assert_eq!(dropped.policy, None);
        assert_eq!(dropped.rule, None);
        assert_eq!(
            dropped.isolated_by,
            vec![
                "default/allow-web".to_string(),
                "default/default-deny".into()
            ]
        );
        // Not a policy's doing: no attribution.
        let not_ready = resolve(
            &agent,
            &event(ep_id, verdict::DROPPED, reason::NOT_READY, 81, 0),
        );
        assert!(not_ready.isolated_by.is_empty());

        // Counted per policy; a policy gone takes its series with it.
        let hub = FlowHub::new();
        hub.publish(allowed);
        hub.publish(dropped);
        let rows: Vec<(String, String, u64)> = hub
            .policy_counters()
            .into_iter()
            .map(|c| (c.policy, c.verdict, c.count))
            .collect();
        assert_eq!(
            rows,
            vec![
                ("default/allow-web".into(), "allowed".into(), 1),
                ("default/allow-web".into(), "dropped".into(), 1),
                ("default/default-deny".into(), "dropped".into(), 1),
            ]
        );
        let (agent, _) = attributed_agent(&[DENY_ALL]);
        let live = crate::shared::AgentView::of(&agent).live_policies;
        assert_eq!(live, ["default/default-deny".to_string()].into());
        hub.retain_policies(&live);
        assert_eq!(hub.policy_counters().len(), 1);
    }
}
