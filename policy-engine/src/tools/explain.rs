//! `explain`: why A may or may not reach B, in plain words.
//!
//! The verdict comes from the datapath lookup model (as in `simulate`); the
//! words come from walking the policies that select each end: which isolate
//! it, which rule admits the connection, or, when denied, the rules that came
//! closest and what did not match.

use std::io::Write;
use std::net::IpAddr;

use serde_json::{json, Value};

use super::probe::{End, ProbeError};
use super::simulate::Simulation;
use super::{table, write_err, Input, Output, ToolError};
use crate::lookup::{Reason, Verdict};
use crate::model::{
    Direction, ModelError, Peer, PodInfo, PodRef, PortRef, Protocol, Rule, Snapshot,
};

/// What to explain.
#[derive(Clone, Debug, Default)]
pub struct Options {
    /// Manifests.
    pub input: Input,
    /// Source: `ns/pod` or an IP.
    pub from: String,
    /// Destination: `ns/pod`, an IP or `svc:ns/name`.
    pub to: String,
    /// `80`, `80/TCP`, `53/UDP`, `9/SCTP`.
    pub port: String,
    /// Output format (`table` and `wide` print the text).
    pub output: Output,
}

/// The explanation.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Explanation {
    /// The datapath's verdict.
    pub allowed: bool,
    /// The text, one line per entry.
    pub lines: Vec<String>,
    /// The connection as judged (for a Service: the first backend's, see
    /// `backends`).
    pub connection: super::probe::Connection,
    /// For a Service: each backend and the connection judged on it.
    pub backends: Vec<super::probe::BackendConnection>,
}

impl Explanation {
    /// The explanation as data (`-o json`/`-o yaml`).
    pub fn to_json(&self, from: &End, to: &End, port: u16, proto: Protocol) -> Value {
        let c = &self.connection;
        let side = |v: Option<Verdict>| match v {
            None => Value::Null,
            Some(v) => json!({"allowed": v.allowed, "reason": v.reason.as_str()}),
        };
        json!({
            "from": from.to_string(),
            "to": to.to_string(),
            "port": port,
            "protocol": proto.to_string(),
            "allowed": self.allowed,
            "srcIP": c.src_ip.map(|i| i.to_string()),
            "dstIP": c.dst_ip.map(|i| i.to_string()),
            "egress": side(c.egress),
            "ingress": side(c.ingress),
            "note": c.note,
            "backends": self.backends.iter().map(|b| json!({
                "backend": b.backend.to_string(),
                "allowed": b.connection.allowed(),
                "reason": b.connection.reason(),
                "note": b.connection.note,
            })).collect::<Vec<_>>(),
            "explanation": self.lines.iter().filter(|l| !l.is_empty()).collect::<Vec<_>>(),
        })
    }
}

/// Parses `80`, `80/TCP`, `53/udp`.
pub fn parse_port(s: &str) -> Result<(u16, Protocol), ModelError> {
    let (num, proto) = match s.split_once('/') {
        Some((n, p)) => (n, Protocol::from_any_case(p)?),
        None => (s, Protocol::Tcp),
    };
    let port = num
        .trim()
        .parse::<u16>()
        .map_err(|_| ModelError::InvalidField {
            kind: "argument",
            object: s.to_string(),
            field: "port".into(),
            message: "expected PORT or PORT/PROTOCOL".into(),
        })?;
    Ok((port, proto))
}

/// Runs `explain` as the CLI does.
pub fn run(opts: &Options, out: &mut impl Write) -> Result<Explanation, ToolError> {
    let loaded = opts.input.load()?;
    run_on(loaded.snapshot, None, opts, out)
}

/// Runs `explain` on a snapshot read elsewhere (the API server) instead of
/// `opts.input`. With `before` (a what-if: `snapshot` is the state after
/// the change), the verdict before the change is told first (`before` in
/// JSON).
pub fn run_on(
    snapshot: Snapshot,
    before: Option<Snapshot>,
    opts: &Options,
    out: &mut impl Write,
) -> Result<Explanation, ToolError> {
    let sim = Simulation::new(snapshot);
    let from: End = opts.from.parse().map_err(|source| ToolError::Argument {
        arg: "--from",
        source,
    })?;
    let to: End = opts.to.parse().map_err(|source| ToolError::Argument {
        arg: "--to",
        source,
    })?;
    let (port, proto) = parse_port(&opts.port).map_err(|source| ToolError::Argument {
        arg: "--port",
        source,
    })?;
    let mut e =
        explain(&sim, &from, &to, proto, port).map_err(|source| ToolError::End { source })?;
    let probe = super::simulate::Probe {
        from: from.clone(),
        to: to.clone(),
        port,
        protocol: proto,
    };
    let before = match before {
        Some(b) => Some(
            Simulation::new(b)
                .judge(&probe)
                .map_err(|source| ToolError::End { source })?,
        ),
        None => None,
    };
    if let Some(b) = &before {
        let word = |a: bool| if a { "ALLOWED" } else { "DENIED" };
        e.lines.insert(
            1,
            format!(
                "Before the change: {} ({}); after it: {}.",
                word(b.allowed()),
                b.reason(),
                word(e.allowed)
            ),
        );
    }
    let doc = || {
        let mut v = e.to_json(&from, &to, port, proto);
        if let Some(b) = &before {
            v["before"] = serde_json::json!({"allowed": b.allowed(), "reason": b.reason()});
        }
        v
    };
    match opts.output {
        Output::Table | Output::Wide | Output::Html => {
            for l in &e.lines {
                writeln!(out, "{l}").map_err(write_err)?;
            }
        }
        Output::Json => table::write_json(out, &doc()).map_err(write_err)?,
        Output::Yaml => table::write_yaml(out, &doc()).map_err(write_err)?,
    }
    Ok(e)
}

/// Explains `from → to` on `port`/`proto`.
pub fn explain(
    sim: &Simulation,
    from: &End,
    to: &End,
    proto: Protocol,
    port: u16,
) -> Result<Explanation, ProbeError> {
    if let End::Service(svc) = to {
        return explain_service(sim, from, svc, proto, port);
    }
    let c = sim.judge(&super::simulate::Probe {
        from: from.clone(),
        to: to.clone(),
        port,
        protocol: proto,
    })?;
    let conn = &c.connection;
    let allowed = conn.allowed();
    let name = |pod: &Option<PodRef>, ip: Option<IpAddr>| match (pod, ip) {
        (Some(p), Some(ip)) => format!("{p} ({ip})"),
        (Some(p), None) => format!("{p} (no address)"),
        (None, Some(ip)) => format!("{ip} (outside the cluster)"),
        (None, None) => "?".to_string(),
    };
    let mut lines = vec![format!(
        "{} -> {} on {port}/{proto}: {}",
        name(&conn.src_pod, conn.src_ip),
        name(&conn.dst_pod, conn.dst_ip),
        if allowed { "ALLOWED" } else { "DENIED" }
    )];
    if let Some(note) = &conn.note {
        lines.push(format!("Note: {note}."));
    }
    let snapshot = &sim.snapshot;
    let ends = [
        (
            Direction::Egress,
            &conn.src_pod,
            conn.egress,
            conn.dst_ip,
            &conn.dst_pod,
        ),
        (
            Direction::Ingress,
            &conn.dst_pod,
            conn.ingress,
            conn.src_ip,
            &conn.src_pod,
        ),
    ];
    for (dir, pod, verdict, peer_ip, peer_pod) in ends {
        lines.push(String::new());
        let Some(pod) = pod else {
            lines.push(format!(
                "{}: the {} is not a pod here; nothing is enforced on that side.",
                dir_title(dir),
                if dir == Direction::Egress {
                    "source"
                } else {
                    "destination"
                }
            ));
            continue;
        };
        let Some(v) = verdict else {
            lines.push(format!(
                "{} at {pod}: a hostNetwork pod (or not a local endpoint); never enforced.",
                dir_title(dir)
            ));
            continue;
        };
        let dest = if dir == Direction::Ingress {
            snapshot.pods.get(pod)
        } else {
            peer_pod.as_ref().and_then(|p| snapshot.pods.get(p))
        };
        let ctx = Side {
            sim,
            pod,
            dir,
            peer_ip,
            peer_pod: peer_pod.as_ref(),
            dest,
            proto,
            port,
        };
        ctx.describe(v, &mut lines);
    }
    if !allowed {
        lines.push(String::new());
        let side = match (conn.egress, conn.ingress) {
            (Some(e), Some(i)) if !e.allowed && !i.allowed => {
                "both the source's egress and the destination's ingress deny it"
            }
            (Some(e), _) if !e.allowed => "the source's egress denies it",
            _ => "the destination's ingress denies it",
        };
        lines.push(format!(
            "Verdict: DENIED because {side} (both ends must allow a connection)."
        ));
    } else {
        lines.push(String::new());
        lines.push("Verdict: ALLOWED (both ends allow it).".into());
    }
    Ok(Explanation {
        allowed,
        lines,
        connection: c.connection.clone(),
        backends: Vec::new(),
    })
}

/// Explains `from → svc` on the Service port: the backends kube-proxy may
/// pick, then each backend's explanation on its target port (the verdict
/// the datapath gives, since it judges the translated connection).
fn explain_service(
    sim: &Simulation,
    from: &End,
    svc: &PodRef,
    proto: Protocol,
    port: u16,
) -> Result<Explanation, ProbeError> {
    let r = sim.judge(&super::simulate::Probe {
        from: from.clone(),
        to: End::Service(svc.clone()),
        port,
        protocol: proto,
    })?;
    let allowed = r.allowed();
    let ips: Vec<String> = sim.snapshot.services[svc]
        .cluster_ips
        .iter()
        .map(ToString::to_string)
        .collect();
    let names: Vec<String> = r.backends.iter().map(|b| b.backend.to_string()).collect();
    let mut lines = vec![format!(
        "{from} -> Service {svc} (ClusterIP {}) on {port}/{proto}: {}",
        if ips.is_empty() {
            "none".to_string()
        } else {
            ips.join(", ")
        },
        if allowed { "ALLOWED" } else { "DENIED" }
    )];
    lines.push(
        "A Service is judged on the backend kube-proxy picks: the source's egress on the \
         backend's address and target port, the backend's ingress on the source's address. \
         The ClusterIP itself is never a peer (no ipBlock matches it)."
            .into(),
    );
    if r.backends.is_empty() {
        lines.push(String::new());
        lines.push(format!(
            "Verdict: DENIED: {svc} has no ready backend for {port}/{proto} (kube-proxy rejects the connection)."
        ));
        return Ok(Explanation {
            allowed,
            lines,
            connection: r.connection,
            backends: r.backends,
        });
    }
    for b in &r.backends {
        let e = explain(sim, from, &End::Ip(b.backend.ip), proto, b.backend.port)?;
        lines.push(String::new());
        lines.push(format!("Backend {}:", b.backend));
        lines.extend(
            e.lines
                .into_iter()
                .map(|l| if l.is_empty() { l } else { format!("  {l}") }),
        );
    }
    lines.push(String::new());
    if r.backends_agree() {
        lines.push(format!(
            "Verdict: {} on every backend ({}).",
            if allowed { "ALLOWED" } else { "DENIED" },
            names.join(", ")
        ));
    } else {
        for b in &r.backends {
            lines.push(format!(
                "Verdict for {}: {}",
                b.backend,
                if b.connection.allowed() {
                    "ALLOWED"
                } else {
                    "DENIED"
                }
            ));
        }
    }
    Ok(Explanation {
        allowed,
        lines,
        connection: r.connection,
        backends: r.backends,
    })
}

fn dir_title(dir: Direction) -> &'static str {
    match dir {
        Direction::Ingress => "Ingress",
        Direction::Egress => "Egress",
    }
}

struct Side<'a> {
    sim: &'a Simulation,
    pod: &'a PodRef,
    dir: Direction,
    peer_ip: Option<IpAddr>,
    peer_pod: Option<&'a PodRef>,
    dest: Option<&'a PodInfo>,
    proto: Protocol,
    port: u16,
}

impl Side<'_> {
    /// The verdict told per tier, when a ClusterNetworkPolicy selects the
    /// pod in this direction (`None` otherwise).
    fn tiers(&self, v: &Verdict, info: &PodInfo, isolating: &[&PodRef]) -> Option<String> {
        let s = &self.sim.snapshot;
        let ns_labels = s
            .namespaces
            .get(&self.pod.namespace)
            .map(|n| n.labels.clone())
            .unwrap_or_else(|| crate::model::NamespaceInfo::implicit(&self.pod.namespace).labels);
        let tiered = s.cluster_policies.values().any(|p| {
            !p.fail_dirs().is_empty()
                && p.subject
                    .as_ref()
                    .is_some_and(|sub| sub.matches(&ns_labels, &info.labels))
                && p.object
                    .spec
                    .ingress
                    .as_ref()
                    .filter(|_| self.dir == Direction::Ingress)
                    .or(p
                        .object
                        .spec
                        .egress
                        .as_ref()
                        .filter(|_| self.dir == Direction::Egress))
                    .is_some_and(|r| !r.is_empty())
        });
        if !tiered {
            return None;
        }
        let rule = v.rule.unwrap_or(0);
        if let Some(t) = self.sim.compiled.cnp_rules.get(&rule) {
            return Some(match t.action {
                crate::model::cluster_policy::Action::Pass => {
                    format!("{t} → no NetworkPolicy isolates it → allowed by default.")
                }
                _ => format!("{t}."),
            });
        }
        let np = if isolating.is_empty() {
            "no NetworkPolicy isolates it".to_string()
        } else {
            let names: Vec<String> = isolating.iter().map(|r| r.to_string()).collect();
            format!("isolated by NetworkPolicy {}", names.join(", "))
        };
        let head = "[Admin] Pass or no rule matches → [NetworkPolicy]";
        Some(if !v.allowed {
            format!(
                "{head} {np}, no rule admits {} on {}/{}: dropped.",
                self.peer_name(),
                self.port,
                self.proto
            )
        } else if let Some(r) = self.sim.compiled.rules.get(&rule) {
            format!("{head} allowed by {r}.")
        } else {
            format!("{head} {np} → [Baseline] no rule matches → allowed by default.")
        })
    }

    /// The peer as it reads best: its address, else its pod.
    fn peer_name(&self) -> String {
        match (self.peer_ip, self.peer_pod) {
            (Some(ip), _) => ip.to_string(),
            (None, Some(p)) => p.to_string(),
            (None, None) => "?".into(),
        }
    }

    fn describe(&self, v: Verdict, lines: &mut Vec<String>) {
        let s = &self.sim.snapshot;
        let title = format!("{} at {}", dir_title(self.dir), self.pod);
        let Some(info) = s.pods.get(self.pod) else {
            return;
        };
        let isolating: Vec<&PodRef> = self.sim.isolating(self.pod, self.dir);
        if let Some(line) = self.tiers(&v, info, &isolating) {
            lines.push(format!("{title}: {line}"));
            return;
        }
        match v.reason {
            Reason::NotIsolated => {
                lines.push(format!(
                    "{title}: not isolated (no NetworkPolicy in {} selects it for {}), so everything is allowed.",
                    self.pod.namespace, self.dir
                ));
                return;
            }
            Reason::NotReady => {
                lines.push(format!(
                    "{title}: no computed policy (endpoint not ready): dropped."
                ));
                return;
            }
            Reason::Host => {
                lines.push(format!(
                    "{title}: traffic from the node itself is always allowed."
                ));
                return;
            }
            _ => {}
        }
        let names: Vec<String> = isolating.iter().map(|r| r.to_string()).collect();
        lines.push(format!(
            "{title}: isolated by NetworkPolicy {}.",
            names.join(", ")
        ));
        if v.allowed {
            let rule = v
                .rule
                .and_then(|r| self.sim.compiled.rules.get(&r))
                .map(|r| r.to_string())
                .unwrap_or_else(|| "a rule".into());
            let peer = v
                .identity
                .and_then(|id| self.sim.compiled.identities.get(&id))
                .map(|d| d.to_string())
                .unwrap_or_else(|| "any peer".into());
            let peer = if v.identity == Some(policy_common::identity::ANY) {
                "any peer".to_string()
            } else {
                peer
            };
            lines.push(format!("  allowed by {rule} (peer matched as {peer})."));
            return;
        }
        lines.push(format!(
            "  denied: no {} rule of these policies admits {} on {}/{}.",
            self.dir,
            self.peer_name(),
            self.port,
            self.proto
        ));
        let mut closest = Vec::new();
        for r in &isolating {
            let Some(p) = s.policies.get(*r) else {
                continue;
            };
            if !p.is_valid() {
                closest.push((
                    0,
                    format!(
                        "  - NetworkPolicy {r} is invalid and allows nothing: {}",
                        p.issues
                            .iter()
                            .map(|i| i.to_string())
                            .collect::<Vec<_>>()
                            .join("; ")
                    ),
                ));
                continue;
            }
            if let Some(e) = self.sim.compiled.errors.iter().find(|e| {
                matches!(e, crate::compile::CompileError::OverBudget { .. }) && e.policy() == *r
            }) {
                closest.push((0, format!("  - {e}")));
                continue;
            }
            let rules = p.rules(self.dir).unwrap_or_default();
            if rules.is_empty() {
                closest.push((
                    0,
                    format!(
                        "  - NetworkPolicy {r} has no {} rules: it only denies.",
                        self.dir
                    ),
                ));
            }
            for (i, rule) in rules.iter().enumerate() {
                let (peer_ok, peer_why) = self.peer_reason(s, &r.namespace, rule);
                let (port_ok, port_why) = self.port_reason(rule);
                let score = usize::from(peer_ok) + usize::from(port_ok);
                let at = format!("NetworkPolicy {r} spec.{}[{i}]", self.dir.field());
                let text = match (peer_ok, port_ok) {
                    (true, false) => {
                        format!("  - {at}: the peer matches ({peer_why}), but {port_why}.")
                    }
                    (false, true) => {
                        format!("  - {at}: the port matches ({port_why}), but {peer_why}.")
                    }
                    _ => format!("  - {at}: {peer_why}; and {port_why}."),
                };
                closest.push((score, text));
            }
        }
        closest.sort_by_key(|c| std::cmp::Reverse(c.0));
        if !closest.is_empty() {
            lines.push("  closest rules:".into());
            lines.extend(closest.into_iter().take(5).map(|(_, t)| t));
        }
    }

    fn peer_reason(&self, s: &Snapshot, policy_ns: &str, rule: &Rule) -> (bool, String) {
        if rule.peers.is_empty() {
            return (
                true,
                format!("any peer ({} omitted)", self.dir.peers_field()),
            );
        }
        let mut why = Vec::new();
        for (i, peer) in rule.peers.iter().enumerate() {
            let f = format!("{}[{i}]", self.dir.peers_field());
            match peer {
                Peer::IpBlock(b) => {
                    let Some(peer_ip) = self.peer_ip else {
                        why.push(format!(
                            "{f}: ipBlock {} needs an address, and {} has none of this family",
                            b.cidr,
                            self.peer_name()
                        ));
                        continue;
                    };
                    let host = ipnet::IpNet::from(peer_ip);
                    let inside = crate::model::addr::net_within(&host, &b.cidr);
                    let except = b
                        .except
                        .iter()
                        .find(|e| crate::model::addr::net_within(&host, e));
                    match (inside, except) {
                        (true, None) => return (true, format!("{f} ipBlock {}", b.cidr)),
                        (true, Some(e)) => why.push(format!(
                            "{f}: {peer_ip} is excepted ({e}) from ipBlock {}",
                            b.cidr
                        )),
                        (false, _) => {
                            why.push(format!("{f}: {peer_ip} is outside ipBlock {}", b.cidr))
                        }
                    }
                }
                Peer::Pods { namespaces, pods } => {
                    let Some(peer) = self.peer_pod.and_then(|p| s.pods.get(p).map(|i| (p, i)))
                    else {
                        why.push(format!(
                            "{f}: selects pods, and {} is not a pod",
                            self.peer_name()
                        ));
                        continue;
                    };
                    let (pr, pinfo) = peer;
                    let ns_ok = match namespaces {
                        None => pr.namespace == policy_ns,
                        Some(sel) => sel.matches(&s.namespace_labels(&pr.namespace)),
                    };
                    let pod_ok = pods.as_ref().is_none_or(|sel| sel.matches(&pinfo.labels));
                    if ns_ok && pod_ok {
                        return (true, format!("{f} selects {pr}"));
                    }
                    if !ns_ok {
                        match namespaces {
                            None => why.push(format!("{f}: podSelector only looks in namespace {policy_ns}, and {pr} is in {}", pr.namespace)),
                            Some(sel) => why.push(format!("{f}: namespaceSelector {sel} does not match namespace {}", pr.namespace)),
                        }
                    } else if let Some(sel) = pods {
                        let labels: Vec<String> = pinfo
                            .labels
                            .iter()
                            .map(|(k, v)| format!("{k}={v}"))
                            .collect();
                        why.push(format!(
                            "{f}: podSelector {sel} does not match {pr} labels {{{}}}",
                            labels.join(",")
                        ));
                    }
                }
            }
        }
        (false, format!("no peer matches ({})", why.join("; ")))
    }

    fn port_reason(&self, rule: &Rule) -> (bool, String) {
        if rule.ports.is_empty() {
            return (true, "any port (ports omitted)".into());
        }
        let list: Vec<String> = rule.ports.iter().map(|p| p.to_string()).collect();
        for p in &rule.ports {
            if p.protocol != self.proto {
                continue;
            }
            let ok = match (&p.port, p.end_port) {
                (None, _) => true,
                (Some(PortRef::Number(n)), None) => *n == self.port,
                (Some(PortRef::Number(n)), Some(e)) => *n <= self.port && self.port <= e,
                (Some(PortRef::Name(name)), _) => self
                    .dest
                    .is_some_and(|d| d.named_port(name, self.proto).any(|x| x == self.port)),
            };
            if ok {
                return (true, format!("{p}"));
            }
        }
        let named: Vec<String> = rule
            .ports
            .iter()
            .filter_map(|p| match &p.port {
                Some(PortRef::Name(n)) => {
                    let res: Vec<String> = self
                        .dest
                        .map(|d| d.named_port(n, p.protocol).map(|x| x.to_string()).collect())
                        .unwrap_or_default();
                    Some(if res.is_empty() {
                        format!("named port {n:?} is not declared by the destination")
                    } else {
                        format!("named port {n:?} is {} on the destination", res.join(","))
                    })
                }
                _ => None,
            })
            .collect();
        let mut why = format!(
            "{}/{} is not in [{}]",
            self.port,
            self.proto,
            list.join(", ")
        );
        if !named.is_empty() {
            why.push_str(&format!(" ({})", named.join("; ")));
        }
        (false, why)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::testutil::ClusterBuilder;

    fn sim() -> Simulation {
        let b = ClusterBuilder::new()
            .ns("x", &[])
            .pod_with_ports("x/a", &[("app", "a")], &["10.0.0.1"], &[("http", 80, "TCP")])
            .pod("x/b", &[("app", "b")], &["10.0.0.2"])
            .pod("x/c", &[("app", "c")], &["10.0.0.3"])
            .policy("metadata: {name: web, namespace: x}\nspec:\n  podSelector: {matchLabels: {app: a}}\n  ingress: [{from: [{podSelector: {matchLabels: {app: b}}}], ports: [{port: http}]}]\n");
        Simulation::new(b.build())
    }

    #[test]
    fn explains_allow_and_deny() {
        let s = sim();
        let e = explain(
            &s,
            &"x/b".parse().unwrap(),
            &"x/a".parse().unwrap(),
            Protocol::Tcp,
            80,
        )
        .unwrap();
        assert!(e.allowed);
        let text = e.lines.join("\n");
        assert!(
            text.contains("allowed by NetworkPolicy x/web spec.ingress[0]"),
            "{text}"
        );
        let e = explain(
            &s,
            &"x/c".parse().unwrap(),
            &"x/a".parse().unwrap(),
            Protocol::Tcp,
            80,
        )
        .unwrap();
        assert!(!e.allowed);
        let text = e.lines.join("\n");
        assert!(
            text.contains("podSelector app=b does not match x/c"),
            "{text}"
        );
        assert!(text.contains("destination's ingress denies"), "{text}");
        let e = explain(
            &s,
            &"x/b".parse().unwrap(),
            &"x/a".parse().unwrap(),
            Protocol::Tcp,
            81,
        )
        .unwrap();
        let text = e.lines.join("\n");
        assert!(
            text.contains("the peer matches") && text.contains("81/TCP is not in"),
            "{text}"
        );
    }

    #[test]
    fn explains_per_tier() {
        let b = crate::testutil::ClusterBuilder::new()
            .ns("kube-system", &[])
            .ns("x", &[])
            .pod("kube-system/dns", &[("app", "dns")], &["10.0.0.9"])
            .pod("x/a", &[], &["10.0.0.1"])
            .pod("x/b", &[], &["10.0.0.2"])
            .policy("metadata: {name: from-a, namespace: x}\nspec:\n  podSelector: {}\n  ingress: [{from: [{podSelector: {}}]}]\n")
            .cnp("metadata: {name: protect-kube-system}\nspec:\n  tier: Admin\n  priority: 1\n  subject: {namespaces: {matchLabels: {kubernetes.io/metadata.name: kube-system}}}\n  ingress: [{name: deny-all, action: Deny, from: [{namespaces: {}}]}]\n")
            .cnp("metadata: {name: pass-x}\nspec:\n  tier: Admin\n  priority: 2\n  subject: {namespaces: {matchLabels: {kubernetes.io/metadata.name: x}}}\n  ingress: [{name: pass, action: Pass, from: [{namespaces: {}}]}]\n");
        let s = Simulation::new(b.build());
        let text = |from: &str, to: &str| {
            explain(
                &s,
                &from.parse().unwrap(),
                &to.parse().unwrap(),
                Protocol::Tcp,
                53,
            )
            .unwrap()
            .lines
            .join("\n")
        };
        let t = text("x/a", "kube-system/dns");
        assert!(
            t.contains("[Admin] Deny by cnp/protect-kube-system rule \"deny-all\""),
            "{t}"
        );
        let t = text("x/a", "x/b");
        assert!(
            t.contains("[Admin] Pass or no rule matches → [NetworkPolicy] allowed by NetworkPolicy x/from-a spec.ingress[0]"),
            "{t}"
        );
    }

    #[test]
    fn port_argument() {
        assert_eq!(parse_port("80").unwrap(), (80, Protocol::Tcp));
        assert_eq!(parse_port("53/udp").unwrap(), (53, Protocol::Udp));
        assert!(parse_port("x/TCP").is_err());
        assert!(parse_port("80/ICMP").is_err());
    }
}
