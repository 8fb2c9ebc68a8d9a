//! Probes: what `simulate` asks, read from JSON lines or made for every
//! pair of pods.

use std::collections::BTreeSet;
use std::io::BufRead;
use std::path::Path;

use serde_json::Value;

use crate::manifest::Location;
use crate::model::{PodRef, Protocol, Snapshot};
use crate::tools::probe::End;
use crate::tools::ToolError;

/// One probe.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Probe {
    /// Source.
    pub from: End,
    /// Destination.
    pub to: End,
    /// Destination port.
    pub port: u16,
    /// Protocol.
    pub protocol: Protocol,
}

impl std::fmt::Display for Probe {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "{} -> {} {}/{}",
            self.from, self.to, self.port, self.protocol
        )
    }
}

/// A probe as read from a probes file.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ProbeLine {
    /// Where it was read.
    pub location: Location,
    /// The probe.
    pub probe: Probe,
    /// Its `allowed` field: the verdict the author expects.
    pub expected: Option<bool>,
}

/// Parses one probe line. Extra fields are ignored; `protocol` defaults to
/// TCP and is read in any case.
pub fn parse_probe(line: &str) -> Result<Probe, String> {
    parse_probe_line(line).map(|(p, _)| p)
}

/// Parses one probe line with its expected verdict (`allowed`).
pub fn parse_probe_line(line: &str) -> Result<(Probe, Option<bool>), String> {
    let v: Value = serde_json::from_str(line).map_err(|e| e.to_string())?;
    let end = |k: &str| -> Result<End, String> {
        let s = v
            .get(k)
            .and_then(Value::as_str)
            .ok_or_else(|| format!("field {k:?} missing or not a string"))?;
        s.parse().map_err(|e| format!("field {k:?}: {e}"))
    };
    let port = v
        .get("port")
        .and_then(Value::as_u64)
        .and_then(|p| u16::try_from(p).ok())
        .ok_or_else(|| "field \"port\" missing or not a port number".to_string())?;
    let protocol = match v.get("protocol") {
        None | Some(Value::Null) => Protocol::Tcp,
        Some(Value::String(s)) => {
            Protocol::from_any_case(s).map_err(|e| format!("field \"protocol\": {e}"))?
        }
        Some(_) => return Err("field \"protocol\" is not a string".into()),
    };
    let expected = match v.get("allowed") {
        None | Some(Value::Null) => None,
        Some(Value::Bool(b)) => Some(*b),
        Some(_) => return Err("field \"allowed\" is not true or false".into()),
    };
    Ok((
        Probe {
            from: end("from")?,
            to: end("to")?,
            port,
            protocol,
        },
        expected,
    ))
}

/// Every ordered pair of distinct pods that have an address, on every port
/// the destination declares.
pub fn all_pairs(snapshot: &Snapshot) -> Vec<Probe> {
    let pods: Vec<(&PodRef, &crate::model::PodInfo)> = snapshot
        .pods
        .iter()
        .filter(|(_, p)| !p.ips.is_empty())
        .collect();
    let mut out = Vec::new();
    for (to, info) in &pods {
        let ports: BTreeSet<(u16, Protocol)> =
            info.ports.iter().map(|p| (p.port, p.protocol)).collect();
        for (from, _) in pods.iter().filter(|(f, _)| f != to) {
            for (port, protocol) in &ports {
                out.push(Probe {
                    from: End::Pod((*from).clone()),
                    to: End::Pod((*to).clone()),
                    port: *port,
                    protocol: *protocol,
                });
            }
        }
    }
    out.sort_by(|a, b| {
        (a.port, a.protocol, &a.from, &a.to).cmp(&(b.port, b.protocol, &b.from, &b.to))
    });
    out
}

/// Reads probe lines (blank lines and `#` comments skipped) with where
/// each was read.
pub fn read_probes(reader: impl BufRead, path: &Path) -> Result<Vec<ProbeLine>, ToolError> {
    let mut out = Vec::new();
    for (i, line) in reader.lines().enumerate() {
        let line = line.map_err(|source| ToolError::Read {
            path: path.to_path_buf(),
            source,
        })?;
        let t = line.trim();
        if t.is_empty() || t.starts_with('#') {
            continue;
        }
        let (probe, expected) = parse_probe_line(t).map_err(|message| ToolError::BadProbe {
            path: path.to_path_buf(),
            line: i + 1,
            message,
        })?;
        out.push(ProbeLine {
            location: Location {
                path: path.to_path_buf(),
                line: i + 1,
            },
            probe,
            expected,
        });
    }
    Ok(out)
}
