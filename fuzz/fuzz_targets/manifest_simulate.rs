//! Manifests through the tools' whole path: read (`manifest::load_str`,
//! strict, as `simulate -f` does), compile and simulate. Input is either a
//! cluster built from structured choices (namespaces, pods with labels,
//! addresses and named ports, NetworkPolicies with every kind of peer and
//! port, valid or not) written out as YAML documents (input starting with
//! a zero byte), or raw text (anything else). Any
//! input must either be refused with an error or give a simulation whose
//! every verdict between pods and outside addresses agrees with the
//! independent reference evaluator (`policy_engine::testutil::reference`).
#![no_main]

use std::net::IpAddr;

use arbitrary::{Arbitrary, Unstructured};
use libfuzzer_sys::fuzz_target;
use policy_engine::manifest::{load_str, Loaded};
use policy_engine::model::{Protocol, Snapshot};
use policy_engine::testutil::reference::reference;
use policy_engine::tools::probe::End;
use policy_engine::tools::simulate::{Probe, Simulation};
use serde_json::{json, Value};

const NAMESPACES: [&str; 3] = ["x", "y", "z"];
const APPS: [&str; 3] = ["a", "b", "c"];
const PORT_NAMES: [&str; 3] = ["http", "dns", "Bad_Name"];
const PORTS: [u16; 6] = [80, 81, 53, 8080, 7, 0];
const PROTOCOLS: [&str; 4] = ["TCP", "UDP", "SCTP", "ICMP"];
const CIDRS: [&str; 10] = [
    "10.0.0.0/24",
    "10.0.0.0/30",
    "10.0.0.4/31",
    "0.0.0.0/0",
    "198.51.100.0/24",
    "2001:db8::/64",
    "2001:db8::2/127",
    "::/0",
    "10.0.0.1/24",
    "not-a-cidr",
];
const OUTSIDE: [&str; 4] = ["198.51.100.7", "203.0.113.1", "2001:db8::1:5", "10.0.0.200"];
const PROBE_PORTS: [(Protocol, u16); 6] = [
    (Protocol::Tcp, 80),
    (Protocol::Tcp, 85),
    (Protocol::Tcp, 8080),
    (Protocol::Udp, 53),
    (Protocol::Sctp, 7),
    (Protocol::Udp, 81),
];

#[derive(Arbitrary, Debug)]
enum Sel {
    Empty,
    App(u8),
    NotIn(u8),
    In(Vec<u8>),
    TierExists,
    TierDoesNotExist,
    Team,
}

/// `{key: value}`.
fn obj(key: &str, value: Value) -> Value {
    Value::Object([(key.to_string(), value)].into_iter().collect())
}

impl Sel {
    fn json(&self, ns: bool) -> Value {
        let key = if ns { "team" } else { "app" };
        let value = |i: &u8| {
            if ns {
                "blue".to_string()
            } else {
                APPS[usize::from(*i) % APPS.len()].to_string()
            }
        };
        let expr = |operator: &str, values: Vec<String>| {
            let mut e = json!({"operator": operator});
            e["key"] = json!(key);
            if !values.is_empty() {
                e["values"] = json!(values);
            }
            json!({"matchExpressions": [e]})
        };
        match self {
            Sel::Empty => json!({}),
            Sel::App(i) => json!({"matchLabels": obj(key, json!(value(i)))}),
            Sel::NotIn(i) => expr("NotIn", vec![value(i)]),
            Sel::In(v) => expr("In", v.iter().take(4).map(&value).collect()),
            Sel::TierExists => json!({"matchExpressions": [{"key": "tier", "operator": "Exists"}]}),
            Sel::TierDoesNotExist => {
                json!({"matchExpressions": [{"key": "tier", "operator": "DoesNotExist"}]})
            }
            Sel::Team => json!({"matchLabels": {"kubernetes.io/metadata.name":
                NAMESPACES[usize::from(ns)]}}),
        }
    }
}

#[derive(Arbitrary, Debug)]
enum PeerSpec {
    Pods(Sel),
    Namespaces(Sel),
    Both(Sel, Sel),
    IpBlock(u8, Vec<u8>),
}

#[derive(Arbitrary, Debug)]
enum PortValue {
    Number(u8),
    Any(u16),
    Name(u8),
}

#[derive(Arbitrary, Debug)]
struct PortSpec {
    protocol: Option<u8>,
    port: Option<PortValue>,
    end_port: Option<u8>,
}

#[derive(Arbitrary, Debug)]
struct RuleSpec {
    peers: Option<Vec<PeerSpec>>,
    ports: Option<Vec<PortSpec>>,
}

#[derive(Arbitrary, Debug)]
struct PolicySpec {
    namespace: u8,
    selector: Sel,
    types: u8,
    ingress: Option<Vec<RuleSpec>>,
    egress: Option<Vec<RuleSpec>>,
}

#[derive(Arbitrary, Debug)]
struct PodSpec {
    namespace: u8,
    app: u8,
    tier: bool,
    v4: bool,
    v6: bool,
    ports: Vec<(Option<u8>, u8, u8)>,
    host_network: bool,
    pending: bool,
}

#[derive(Arbitrary, Debug)]
struct Cluster {
    blue: [bool; 3],
    pods: Vec<PodSpec>,
    policies: Vec<PolicySpec>,
}

fn port_json(p: &PortSpec) -> Value {
    let mut o = json!({});
    if let Some(i) = p.protocol {
        o["protocol"] = json!(PROTOCOLS[usize::from(i) % PROTOCOLS.len()]);
    }
    match &p.port {
        None => {}
        Some(PortValue::Number(i)) => o["port"] = json!(PORTS[usize::from(*i) % PORTS.len()]),
        Some(PortValue::Any(n)) => o["port"] = json!(n),
        Some(PortValue::Name(i)) => {
            o["port"] = json!(PORT_NAMES[usize::from(*i) % PORT_NAMES.len()])
        }
    }
    if let Some(e) = p.end_port {
        o["endPort"] = json!(PORTS[usize::from(e) % PORTS.len()] + u16::from(e >> 4));
    }
    o
}

fn peer_json(p: &PeerSpec) -> Value {
    match p {
        PeerSpec::Pods(s) => json!({"podSelector": s.json(false)}),
        PeerSpec::Namespaces(s) => json!({"namespaceSelector": s.json(true)}),
        PeerSpec::Both(n, s) => {
            json!({"namespaceSelector": n.json(true), "podSelector": s.json(false)})
        }
        PeerSpec::IpBlock(c, except) => {
            let cidr = |i: &u8| CIDRS[usize::from(*i) % CIDRS.len()];
            let mut b = json!({"cidr": cidr(c)});
            if !except.is_empty() {
                b["except"] = except.iter().take(3).map(cidr).collect();
            }
            json!({"ipBlock": b})
        }
    }
}

fn rules_json(rules: &[RuleSpec], key: &str) -> Value {
    rules
        .iter()
        .take(3)
        .map(|r| {
            let mut o = json!({});
            if let Some(peers) = &r.peers {
                o[key] = peers.iter().take(3).map(peer_json).collect();
            }
            if let Some(ports) = &r.ports {
                o["ports"] = ports.iter().take(3).map(port_json).collect();
            }
            o
        })
        .collect()
}

fn cluster_yaml(c: &Cluster) -> String {
    let mut docs: Vec<Value> = Vec::new();
    for (i, ns) in NAMESPACES.iter().enumerate() {
        let mut labels = json!({"kubernetes.io/metadata.name": ns});
        if c.blue[i] {
            labels["team"] = json!("blue");
        }
        docs.push(json!({"apiVersion": "v1", "kind": "Namespace",
            "metadata": {"name": ns, "labels": labels}}));
    }
    for (i, p) in c.pods.iter().take(6).enumerate() {
        let mut labels = json!({"app": APPS[usize::from(p.app) % APPS.len()]});
        if p.tier {
            labels["tier"] = json!("1");
        }
        let mut ips = Vec::new();
        if p.v4 || !p.v6 {
            ips.push(format!("10.0.0.{}", i + 1));
        }
        if p.v6 {
            ips.push(format!("2001:db8::{:x}", i + 1));
        }
        let ports: Vec<Value> = p
            .ports
            .iter()
            .take(3)
            .map(|(name, port, proto)| {
                let mut o = json!({
                    "containerPort": PORTS[usize::from(*port) % PORTS.len()],
                    "protocol": PROTOCOLS[usize::from(*proto) % 3],
                });
                if let Some(n) = name {
                    o["name"] = json!(PORT_NAMES[usize::from(*n) % PORT_NAMES.len()]);
                }
                o
            })
            .collect();
        let mut status = json!({
            "podIP": ips[0],
            "podIPs": ips.iter().map(|ip| json!({"ip": ip})).collect::<Vec<_>>(),
        });
        if p.pending {
            status["phase"] = json!("Pending");
        }
        docs.push(json!({"apiVersion": "v1", "kind": "Pod",
            "metadata": {"name": format!("p{i}"),
                "namespace": NAMESPACES[usize::from(p.namespace) % NAMESPACES.len()],
                "labels": labels},
            "spec": {"hostNetwork": p.host_network,
                "containers": [{"name": "c", "image": "i", "ports": ports}]},
            "status": status}));
    }
    for (i, p) in c.policies.iter().take(4).enumerate() {
        let mut spec = json!({"podSelector": p.selector.json(false)});
        if let Some(r) = &p.ingress {
            spec["ingress"] = rules_json(r, "from");
        }
        if let Some(r) = &p.egress {
            spec["egress"] = rules_json(r, "to");
        }
        match p.types % 5 {
            0 => {}
            1 => spec["policyTypes"] = json!(["Ingress"]),
            2 => spec["policyTypes"] = json!(["Egress"]),
            3 => spec["policyTypes"] = json!(["Ingress", "Egress"]),
            _ => spec["policyTypes"] = json!([]),
        }
        docs.push(
            json!({"apiVersion": "networking.k8s.io/v1", "kind": "NetworkPolicy",
            "metadata": {"name": format!("np{i}"),
                "namespace": NAMESPACES[usize::from(p.namespace) % NAMESPACES.len()]},
            "spec": spec}),
        );
    }
    docs.iter()
        .map(|d| d.to_string())
        .collect::<Vec<_>>()
        .join("\n---\n")
}

/// Every pair of ends among the pods and some outside addresses, on a few
/// ports; pods on the node's network are left out (their policy is not
/// defined by the API, and the reference does not model it).
fn probes(s: &Snapshot) -> Vec<Probe> {
    let mut ends: Vec<End> = s
        .pods
        .iter()
        .filter(|(_, p)| !p.host_network)
        .map(|(r, _)| End::Pod(r.clone()))
        .take(8)
        .collect();
    for ip in OUTSIDE {
        if let Ok(ip) = ip.parse::<IpAddr>() {
            if s.pods.values().all(|p| !p.ips.contains(&ip)) {
                ends.push(End::Ip(ip));
            }
        }
    }
    let mut out = Vec::new();
    for from in &ends {
        for to in &ends {
            if from == to || (matches!(from, End::Ip(_)) && matches!(to, End::Ip(_))) {
                continue;
            }
            for (protocol, port) in PROBE_PORTS {
                out.push(Probe {
                    from: from.clone(),
                    to: to.clone(),
                    port,
                    protocol,
                });
            }
        }
    }
    out
}

fuzz_target!(|data: &[u8]| {
    // A leading zero byte: a cluster from structured choices; anything
    // else is manifest text (so the seeds are plain YAML files).
    let text = match data.split_first() {
        Some((0, rest)) => {
            let Ok(c) = Cluster::arbitrary_take_rest(Unstructured::new(rest)) else {
                return;
            };
            cluster_yaml(&c)
        }
        _ => String::from_utf8_lossy(data).into_owned(),
    };
    let mut loaded = Loaded::default();
    if load_str(&text, "fuzz.yaml".as_ref(), &mut loaded).is_err() {
        return;
    }
    let Ok(loaded) = loaded.strict() else {
        return;
    };
    let sim = Simulation::new(loaded.snapshot);
    for probe in probes(&sim.snapshot) {
        let want = reference(
            &sim.snapshot,
            &probe.from,
            &probe.to,
            probe.protocol,
            probe.port,
        );
        let got = sim.judge(&probe);
        match want {
            // Not sendable as written: still answered, with a note.
            None => assert!(
                got.as_ref().is_ok_and(|r| r.note().is_some()),
                "{probe}: reference says unsendable, simulate {got:?}\n{text}"
            ),
            Some(w) => assert_eq!(
                got.as_ref().ok().map(|r| r.allowed()),
                Some(w),
                "{probe}: simulate {got:?}\n{text}"
            ),
        }
    }
});
