//! Probes: "can A reach B on port P/proto?", read from JSON lines or derived
//! from a cluster snapshot, and what the test bed observed for them.

use std::collections::BTreeSet;
use std::fmt;
use std::net::IpAddr;
use std::path::{Path, PathBuf};

use serde_json::{Map, Value};

pub use policy_engine::model::{PodRef, Protocol, Snapshot};

/// One end of a probe: a pod of the cluster or a host outside it.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum End {
    /// A pod, written `namespace/name`.
    Pod(PodRef),
    /// A host given by its address (outside the cluster, or a pod's IP).
    Ip(IpAddr),
    /// A Service, written `svc:namespace/name` (destination only): probed
    /// through its ClusterIP on the Service port.
    Service(PodRef),
}

impl fmt::Display for End {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            End::Pod(p) => write!(f, "{}/{}", p.namespace, p.name),
            End::Ip(ip) => write!(f, "{ip}"),
            End::Service(p) => write!(f, "svc:{}/{}", p.namespace, p.name),
        }
    }
}

impl std::str::FromStr for End {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        if let Ok(ip) = s.parse::<IpAddr>() {
            return Ok(End::Ip(ip));
        }
        let (service, rest) = match s.strip_prefix("svc:") {
            Some(rest) => (true, rest),
            None => (false, s),
        };
        match rest.split_once('/') {
            Some((ns, name)) if !ns.is_empty() && !name.is_empty() && !name.contains('/') => {
                let r = PodRef {
                    namespace: ns.to_string(),
                    name: name.to_string(),
                };
                Ok(if service {
                    End::Service(r)
                } else {
                    End::Pod(r)
                })
            }
            _ => Err(format!(
                "{s:?} is neither \"namespace/pod\" nor an IP address"
            )),
        }
    }
}

/// A connection attempt to make, with the verdict expected (if known).
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct Probe {
    /// Who connects.
    pub from: End,
    /// Who is connected to.
    pub to: End,
    /// Destination port.
    pub port: u16,
    /// Transport protocol.
    pub protocol: Protocol,
    /// The verdict NetworkPolicy semantics require, when known.
    pub expected: Option<bool>,
}

impl Probe {
    /// The probe's identity without its expectation: used to line up the
    /// same probe across runs (before/after tables).
    pub fn key(&self) -> (End, End, u16, &'static str) {
        (
            self.from.clone(),
            self.to.clone(),
            self.port,
            protocol_name(self.protocol),
        )
    }
}

impl fmt::Display for Probe {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{} -> {} {}/{}",
            self.from,
            self.to,
            self.port,
            protocol_name(self.protocol)
        )
    }
}

/// What the test bed saw for one probe.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Observation {
    /// The probe.
    pub probe: Probe,
    /// `Some(true)`: the echo came back; `Some(false)`: it did not (refused
    /// or no answer within the timeout); `None`: the probe could not be run
    /// here (SCTP, an end the test bed did not set up) — not a verdict.
    pub allowed: Option<bool>,
    /// How the verdict was reached ("echoed", "timeout", "refused",
    /// "skipped: ...").
    pub detail: String,
}

impl Observation {
    /// `Some(true)` when observed and expected agree, `Some(false)` when they
    /// differ, `None` when there is no expectation or no observation.
    pub fn matches_expectation(&self) -> Option<bool> {
        match (self.probe.expected, self.allowed) {
            (Some(e), Some(a)) => Some(e == a),
            _ => None,
        }
    }
}

/// The wire name of a protocol (`"TCP"`, `"UDP"`, `"SCTP"`).
pub fn protocol_name(p: Protocol) -> &'static str {
    match p {
        Protocol::Tcp => "TCP",
        Protocol::Udp => "UDP",
        Protocol::Sctp => "SCTP",
    }
}

/// Bad probe input: each variant names the file, the line and the field.
#[derive(Debug, thiserror::Error)]
pub enum ProbeError {
    /// The probe file could not be read.
    #[error("cannot read probe file {file}: {source}")]
    Read {
        /// The file.
        file: PathBuf,
        /// Cause.
        #[source]
        source: std::io::Error,
    },
    /// A line is not a JSON object.
    #[error("{file}:{line}: not a JSON object: {source}")]
    Json {
        /// The file.
        file: PathBuf,
        /// 1-based line number.
        line: usize,
        /// Cause.
        #[source]
        source: serde_json::Error,
    },
    /// A field is missing, has the wrong type or an invalid value.
    #[error("{file}:{line}: field {field:?}: {reason}")]
    Field {
        /// The file.
        file: PathBuf,
        /// 1-based line number.
        line: usize,
        /// The offending field.
        field: String,
        /// What is wrong with it.
        reason: String,
    },
    /// A probe names a pod or Service the cluster manifests do not declare.
    #[error("probe {probe}: field {field:?}: {pod} is not in the cluster manifests (a Service can only be a destination)")]
    UnknownPod {
        /// The probe, rendered.
        probe: String,
        /// `"from"` or `"to"`.
        field: &'static str,
        /// The pod, `namespace/name`.
        pod: String,
    },
}

/// Reads probes from a JSON-lines file (blank lines and lines starting with
/// `#` are skipped).
pub fn read_probes(path: &Path) -> Result<Vec<Probe>, ProbeError> {
    let text = std::fs::read_to_string(path).map_err(|source| ProbeError::Read {
        file: path.to_path_buf(),
        source,
    })?;
    parse_probes(&text, path)
}

/// [`read_probes`], leaving out the probes to `svc:` targets (their
/// ClusterIPs are translated by kube-proxy, which only a bed in kube mode
/// runs); returns the probes and how many were left out. Line numbers in errors stay the file's.
pub fn read_probes_without_services(path: &Path) -> Result<(Vec<Probe>, usize), ProbeError> {
    let text = std::fs::read_to_string(path).map_err(|source| ProbeError::Read {
        file: path.to_path_buf(),
        source,
    })?;
    let mut skipped = 0;
    let kept: Vec<&str> = text
        .lines()
        .map(|l| {
            if l.contains("\"svc:") {
                skipped += 1;
                ""
            } else {
                l
            }
        })
        .collect();
    Ok((parse_probes(&kept.join("\n"), path)?, skipped))
}

/// Parses probes from JSON lines; `file` is only used in error messages.
///
/// Each line: `{"from": "ns/pod"|"IP", "to": ..., "port": 80,
/// "protocol": "TCP"|"UDP"|"SCTP" (default TCP), "allowed": true|false
/// (optional)}`. The fields `detail` and `expected` written by
/// [`crate::report::json_line`] are accepted and ignored, so an output file
/// can be read back.
pub fn parse_probes(text: &str, file: &Path) -> Result<Vec<Probe>, ProbeError> {
    let mut out = Vec::new();
    for (i, raw) in text.lines().enumerate() {
        let line = i + 1;
        let trimmed = raw.trim();
        if trimmed.is_empty() || trimmed.starts_with('#') {
            continue;
        }
        let value: Value = serde_json::from_str(trimmed).map_err(|source| ProbeError::Json {
            file: file.to_path_buf(),
            line,
            source,
        })?;
        let field_err = |field: &str, reason: String| ProbeError::Field {
            file: file.to_path_buf(),
            line,
            field: field.to_string(),
            reason,
        };
        let Value::Object(obj) = value else {
            return Err(field_err("", "the line is not a JSON object".into()));
        };
        out.push(probe_from_object(&obj).map_err(|(f, r)| field_err(f, r))?);
    }
    Ok(out)
}

fn probe_from_object(obj: &Map<String, Value>) -> Result<Probe, (&'static str, String)> {
    for key in obj.keys() {
        if !matches!(
            key.as_str(),
            "from" | "to" | "port" | "protocol" | "allowed" | "detail" | "expected"
        ) {
            return Err((
                "",
                format!("unknown field {key:?} (expected from, to, port, protocol, allowed)"),
            ));
        }
    }
    let end = |field: &'static str| -> Result<End, (&'static str, String)> {
        match obj.get(field) {
            Some(Value::String(s)) => s.parse().map_err(|e| (field, e)),
            Some(other) => Err((field, format!("expected a string, found {other}"))),
            None => Err((field, "missing".into())),
        }
    };
    let from = end("from")?;
    let to = end("to")?;
    let port = match obj.get("port") {
        Some(Value::Number(n)) => match n.as_u64() {
            Some(p @ 1..=65535) => p as u16,
            _ => return Err(("port", format!("{n} is not a port number (1-65535)"))),
        },
        Some(other) => return Err(("port", format!("expected a number, found {other}"))),
        None => return Err(("port", "missing".into())),
    };
    let protocol = match obj.get("protocol") {
        None => Protocol::Tcp,
        Some(Value::String(s)) => match s.as_str() {
            "TCP" => Protocol::Tcp,
            "UDP" => Protocol::Udp,
            "SCTP" => Protocol::Sctp,
            other => return Err(("protocol", format!("{other:?} is not TCP, UDP or SCTP"))),
        },
        Some(other) => return Err(("protocol", format!("expected a string, found {other}"))),
    };
    let expected = match obj.get("allowed") {
        None | Some(Value::Null) => None,
        Some(Value::Bool(b)) => Some(*b),
        Some(other) => return Err(("allowed", format!("expected true or false, found {other}"))),
    };
    Ok(Probe {
        from,
        to,
        port,
        protocol,
        expected,
    })
}

/// Every ordered pair of distinct pods (hostNetwork pods excluded, they are
/// never enforced), on every port the destination declares, without
/// expectation: the "connectivity matrix" of a cluster.
pub fn default_probes(snapshot: &Snapshot) -> Vec<Probe> {
    let mut out = Vec::new();
    for (src, _) in snapshot.pods.iter().filter(|(_, p)| !p.host_network) {
        for (dst, info) in snapshot.pods.iter().filter(|(_, p)| !p.host_network) {
            if src == dst {
                continue;
            }
            let ports: BTreeSet<(u16, &'static str, Protocol)> = info
                .ports
                .iter()
                .map(|cp| (cp.port, protocol_name(cp.protocol), cp.protocol))
                .collect();
            for (port, _, protocol) in ports {
                out.push(Probe {
                    from: End::Pod(src.clone()),
                    to: End::Pod(dst.clone()),
                    port,
                    protocol,
                    expected: None,
                });
            }
        }
    }
    out
}

/// [`default_probes`] over IPv6: every ordered pair of distinct pods that
/// both have an IPv6 address in `status.podIPs` (hostNetwork pods
/// excluded), on every port the destination declares, with the destination
/// written as its IPv6 address — which makes the test bed run the probe
/// over IPv6 (a probe runs over the family of the address it names; pod
/// names alone mean IPv4). The source stays a pod name.
pub fn default_probes_v6(snapshot: &Snapshot) -> Vec<Probe> {
    let v6_of = |p: &policy_engine::model::PodInfo| p.ips.iter().copied().find(IpAddr::is_ipv6);
    let with_v6: BTreeSet<&PodRef> = snapshot
        .pods
        .iter()
        .filter(|(_, p)| !p.host_network && v6_of(p).is_some())
        .map(|(r, _)| r)
        .collect();
    default_probes(snapshot)
        .into_iter()
        .filter_map(|mut probe| {
            let (End::Pod(src), End::Pod(dst)) = (&probe.from, &probe.to) else {
                return None;
            };
            if !with_v6.contains(src) {
                return None;
            }
            let ip = v6_of(snapshot.pods.get(dst)?)?;
            probe.to = End::Ip(ip);
            Some(probe)
        })
        .collect()
}

/// Checks that every pod a probe names exists in the snapshot.
pub fn validate_probes(snapshot: &Snapshot, probes: &[Probe]) -> Result<(), ProbeError> {
    for p in probes {
        for (field, end) in [("from", &p.from), ("to", &p.to)] {
            let known = match end {
                End::Pod(pod) => snapshot.pods.contains_key(pod),
                End::Service(svc) => field == "to" && snapshot.services.contains_key(svc),
                End::Ip(_) => true,
            };
            if !known {
                return Err(ProbeError::UnknownPod {
                    probe: p.to_string(),
                    field,
                    pod: end.to_string(),
                });
            }
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_scenario_lines() {
        let text = r#"
{"from": "default/serviceb", "to": "default/servicea", "port": 80, "protocol": "TCP", "allowed": true}
# comment
{"from": "192.0.2.10", "to": "default/servicea", "port": 53, "protocol": "UDP"}
"#;
        let probes = parse_probes(text, Path::new("x.jsonl")).unwrap();
        assert_eq!(probes.len(), 2);
        assert_eq!(
            probes[0].to_string(),
            "default/serviceb -> default/servicea 80/TCP"
        );
        assert_eq!(probes[0].expected, Some(true));
        assert_eq!(probes[1].from, End::Ip("192.0.2.10".parse().unwrap()));
        assert_eq!(probes[1].protocol, Protocol::Udp);
        assert_eq!(probes[1].expected, None);
    }

    #[test]
    fn v6_matrix_targets_ipv6_addresses_of_dual_stack_pods() {
        use policy_engine::model::{ContainerPort, PodInfo};
        let mut s = Snapshot::default();
        for (name, ips) in [
            ("a/x", vec!["10.244.0.10", "fd00:10:244::10"]),
            ("a/y", vec!["10.244.0.11", "fd00:10:244::11"]),
            ("a/v4only", vec!["10.244.0.12"]),
        ] {
            s.pods.insert(
                name.parse().unwrap(),
                PodInfo {
                    ips: ips.iter().map(|i| i.parse().unwrap()).collect(),
                    ports: vec![ContainerPort {
                        name: None,
                        port: 80,
                        protocol: Protocol::Tcp,
                    }],
                    ..Default::default()
                },
            );
        }
        let v6: Vec<String> = default_probes_v6(&s)
            .iter()
            .map(|p| p.to_string())
            .collect();
        assert_eq!(
            v6,
            [
                "a/x -> fd00:10:244::11 80/TCP",
                "a/y -> fd00:10:244::10 80/TCP"
            ]
        );
        assert_eq!(default_probes(&s).len(), 6);
    }

    #[test]
    fn errors_name_file_line_and_field() {
        let cases = [
            (r#"{"from": "a", "to": "b/c", "port": 1}"#, "from"),
            (r#"{"from": "a/b", "to": "b/c", "port": 0}"#, "port"),
            (r#"{"from": "a/b", "to": "b/c"}"#, "port"),
            (
                r#"{"from": "a/b", "to": "b/c", "port": 1, "protocol": "ICMP"}"#,
                "protocol",
            ),
            (
                r#"{"from": "a/b", "to": "b/c", "port": 1, "allowed": "yes"}"#,
                "allowed",
            ),
        ];
        for (line, field) in cases {
            let text = format!("\n{line}\n");
            let err = parse_probes(&text, Path::new("p.jsonl")).unwrap_err();
            let msg = err.to_string();
            assert!(msg.starts_with("p.jsonl:2:"), "{msg}");
            assert!(msg.contains(&format!("field {field:?}")), "{msg}");
        }
        let err = parse_probes("{nope", Path::new("p.jsonl")).unwrap_err();
        assert!(matches!(err, ProbeError::Json { line: 1, .. }));
    }
}
