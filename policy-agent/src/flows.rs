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
        let _ = self.tx.send(record);
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
    FlowRecord {
        time_ns: ev.ts_ns,
        pod,
        direction: direction.into(),
        verdict: if ev.verdict == verdict::DROPPED {
            "dropped"
        } else {
            "allowed"
        }
        .into(),
        reason: reason_text(ev.reason).into(),
        protocol: protocol_name(ev.proto),
        src: src.to_string(),
        sport: if ports { ev.sport } else { 0 },
        dst: dst.to_string(),
        dport: if ports { ev.dport } else { 0 },
        peer: pod_at(agent, peer_ip),
        rule: (ev.rule != 0)
            .then(|| agent.describe_rule(ev.rule))
            .flatten(),
        suppressed: ev.suppressed,
        service: through_service(agent, ev, dst),
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

/// True when `record` passes a client's filters.
pub fn matches(record: &FlowRecord, pod: Option<&str>, verdict: Option<&str>) -> bool {
    pod.is_none_or(|p| record.pod == p || record.peer.as_deref() == Some(p))
        && verdict.is_none_or(|v| record.verdict == v)
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
        let snap = ClusterBuilder::new()
            .ns("default", &[])
            .pod("default/a", &[("app", "a")], &["10.244.0.10"])
            .pod("default/b", &[("app", "b")], &["10.244.0.11"])
            .build();
        let mut agent = Agent::new(FakeDataplane::default(), vec![]);
        agent.set_snapshot(snap).unwrap();
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
}
