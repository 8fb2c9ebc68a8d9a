//! `simulate`: compile manifests and judge probes with the datapath's
//! lookup model (never by re-reading the policies).
//!
//! Probes are JSON lines `{"from": "ns/pod"|"IP", "to": ..., "port": 80,
//! "protocol": "TCP"}` (other fields ignored). Without probes, every ordered
//! pair of pods is probed on every container port the destination declares.

use std::collections::{BTreeMap, BTreeSet};
use std::io::{BufRead, Write};
use std::path::{Path, PathBuf};
use std::str::FromStr;

use serde_json::{json, Value};

use super::probe::{self, BackendConnection, Connection, End};
use super::{write_err, ToolError};
use crate::compile::{self, Allocator, Compiled};
use crate::manifest;
use crate::model::{PodRef, Protocol, Snapshot};

/// Output format.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum Format {
    /// One JSON object per probe per line.
    #[default]
    Json,
    /// A readable table (a matrix per port when probing all pairs).
    Table,
}

impl FromStr for Format {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "json" => Ok(Format::Json),
            "table" => Ok(Format::Table),
            _ => Err(format!("unknown format {s:?} (expected json or table)")),
        }
    }
}

/// What to simulate.
#[derive(Clone, Debug, Default)]
pub struct Options {
    /// Manifest files or directories.
    pub manifests: Vec<PathBuf>,
    /// Probes file (JSON lines), `-` for stdin; `None` = all pod pairs.
    pub probes: Option<PathBuf>,
    /// Output format.
    pub format: Format,
}

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

/// One judged probe.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ProbeResult {
    /// The probe.
    pub probe: Probe,
    /// The datapath's decision. For a probe to a Service: the one for its
    /// first backend (see `backends`; without backends, a connection to
    /// the ClusterIP that no endpoint judges).
    pub connection: Connection,
    /// For a probe to a Service: the decision for each backend. Empty for
    /// probes to pods and addresses.
    pub backends: Vec<BackendConnection>,
}

impl ProbeResult {
    /// Whether the probe passes: for a Service, on every backend (a Service
    /// without backends answers nothing: denied).
    pub fn allowed(&self) -> bool {
        match self.probe.to {
            End::Service(_) => {
                !self.backends.is_empty() && self.backends.iter().all(|b| b.connection.allowed())
            }
            _ => self.connection.allowed(),
        }
    }

    /// Whether every backend of a Service probe gets the same verdict.
    pub fn backends_agree(&self) -> bool {
        self.backends
            .windows(2)
            .all(|w| w[0].connection.allowed() == w[1].connection.allowed())
    }

    /// A short reason (see [`Connection::reason`]; `no-backends` for a
    /// Service without any).
    pub fn reason(&self) -> String {
        match self.probe.to {
            End::Service(_) if self.backends.is_empty() => "no-backends".into(),
            End::Service(_) => match self.backends.iter().find(|b| !b.connection.allowed()) {
                Some(b) => b.connection.reason(),
                None => self.connection.reason(),
            },
            _ => self.connection.reason(),
        }
    }

    /// The JSON lines for this result: one, or for a Service whose backends
    /// disagree, one per backend (each with `backend`).
    pub fn to_json_lines(&self) -> Vec<Value> {
        let mut head = json!({
            "from": self.probe.from.to_string(),
            "to": self.probe.to.to_string(),
            "port": self.probe.port,
            "protocol": self.probe.protocol.to_string(),
        });
        if !matches!(self.probe.to, End::Service(_)) || self.backends_agree() {
            head["allowed"] = self.allowed().into();
            head["reason"] = self.reason().into();
            if matches!(self.probe.to, End::Service(_)) {
                head["backends"] = self
                    .backends
                    .iter()
                    .map(|b| Value::from(b.backend.to_string()))
                    .collect();
            }
            return vec![head];
        }
        self.backends
            .iter()
            .map(|b| {
                let mut line = head.clone();
                line["backend"] = b.backend.to_string().into();
                line["allowed"] = b.connection.allowed().into();
                line["reason"] = b.connection.reason().into();
                line
            })
            .collect()
    }

    /// The JSON line for this result (the first of [`Self::to_json_lines`]).
    pub fn to_json(&self) -> Value {
        self.to_json_lines().swap_remove(0)
    }
}

/// Summary of a run.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Outcome {
    /// Probes judged.
    pub probes: usize,
    /// How many were allowed.
    pub allowed: usize,
    /// Manifest warnings (skipped kinds...).
    pub warnings: Vec<String>,
}

/// Parses one probe line. Extra fields are ignored; `protocol` defaults to
/// TCP.
pub fn parse_probe(line: &str) -> Result<Probe, String> {
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
        Some(Value::String(s)) => s.parse().map_err(|e| format!("field \"protocol\": {e}"))?,
        Some(_) => return Err("field \"protocol\" is not a string".into()),
    };
    Ok(Probe {
        from: end("from")?,
        to: end("to")?,
        port,
        protocol,
    })
}

/// Every ordered pair of distinct pods, on every port the destination
/// declares.
pub fn all_pairs(snapshot: &Snapshot) -> Vec<Probe> {
    let mut out = Vec::new();
    for (to, info) in &snapshot.pods {
        let ports: BTreeSet<(u16, Protocol)> =
            info.ports.iter().map(|p| (p.port, p.protocol)).collect();
        for from in snapshot.pods.keys().filter(|f| *f != to) {
            for (port, protocol) in &ports {
                out.push(Probe {
                    from: End::Pod(from.clone()),
                    to: End::Pod(to.clone()),
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

/// A snapshot compiled with every non-hostNetwork pod as an endpoint.
pub struct Simulation {
    /// The snapshot.
    pub snapshot: Snapshot,
    /// Endpoint ids.
    pub endpoints: BTreeMap<PodRef, u32>,
    /// The compile.
    pub compiled: Compiled,
}

impl Simulation {
    /// Compiles `snapshot`.
    pub fn new(snapshot: Snapshot) -> Self {
        let endpoints = compile::all_endpoints(&snapshot);
        let compiled = compile::compile(&snapshot, &endpoints, &mut Allocator::new());
        Simulation {
            snapshot,
            endpoints,
            compiled,
        }
    }

    /// Judges one probe.
    pub fn judge(&self, probe: &Probe) -> Result<ProbeResult, probe::ProbeError> {
        if let End::Service(svc) = &probe.to {
            return self.judge_service(probe, svc);
        }
        let connection = probe::connection(
            &self.snapshot,
            &self.compiled.state,
            &self.endpoints,
            &probe.from,
            &probe.to,
            probe.protocol,
            probe.port,
        )?;
        Ok(ProbeResult {
            probe: probe.clone(),
            connection,
            backends: Vec::new(),
        })
    }

    fn judge_service(&self, probe: &Probe, svc: &PodRef) -> Result<ProbeResult, probe::ProbeError> {
        let backends = probe::service_connections(
            &self.snapshot,
            &self.compiled.state,
            &self.endpoints,
            &probe.from,
            svc,
            probe.protocol,
            probe.port,
        )?;
        let connection = match backends.first() {
            Some(b) => b.connection.clone(),
            None => {
                let from = probe::connection(
                    &self.snapshot,
                    &self.compiled.state,
                    &self.endpoints,
                    &probe.from,
                    &probe.from,
                    probe.protocol,
                    probe.port,
                )?;
                let cluster_ip = self.snapshot.services[svc]
                    .cluster_ips
                    .first()
                    .copied()
                    .unwrap_or(from.dst_ip);
                Connection {
                    dst_ip: cluster_ip,
                    dst_pod: None,
                    egress: None,
                    ingress: None,
                    ..from
                }
            }
        };
        Ok(ProbeResult {
            probe: probe.clone(),
            connection,
            backends,
        })
    }
}

/// Reads probe lines (blank lines and `#` comments skipped) with their line
/// numbers.
pub fn read_probes(reader: impl BufRead, path: &Path) -> Result<Vec<(usize, Probe)>, ToolError> {
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
        let probe = parse_probe(t).map_err(|message| ToolError::BadProbe {
            path: path.to_path_buf(),
            line: i + 1,
            message,
        })?;
        out.push((i + 1, probe));
    }
    Ok(out)
}

/// Runs `simulate` as the CLI does: loads `opts.manifests` (invalid
/// policies are errors), reads probes (stdin for `-`), writes results.
pub fn run(opts: &Options, out: &mut impl Write) -> Result<Outcome, ToolError> {
    match opts.probes.as_deref() {
        Some(p) if p == Path::new("-") => {
            let stdin = std::io::stdin();
            let lock = stdin.lock();
            run_with(opts, Some(lock), out)
        }
        Some(p) => {
            let f = std::fs::File::open(p).map_err(|source| ToolError::Read {
                path: p.to_path_buf(),
                source,
            })?;
            run_with(opts, Some(std::io::BufReader::new(f)), out)
        }
        None => run_with(opts, None::<&[u8]>, out),
    }
}

/// [`run`] with the probes coming from `probes` instead of `opts.probes`
/// (`None` = all pod pairs).
pub fn run_with(
    opts: &Options,
    probes: Option<impl BufRead>,
    out: &mut impl Write,
) -> Result<Outcome, ToolError> {
    let loaded = manifest::load_paths(&opts.manifests)?.strict()?;
    let warnings = loaded.warnings.clone();
    let sim = Simulation::new(loaded.snapshot);
    let probe_path = opts.probes.clone().unwrap_or_else(|| PathBuf::from("-"));
    let matrix = probes.is_none();
    let list: Vec<(usize, Probe)> = match probes {
        Some(r) => read_probes(r, &probe_path)?,
        None => all_pairs(&sim.snapshot)
            .into_iter()
            .map(|p| (0, p))
            .collect(),
    };
    let mut results = Vec::with_capacity(list.len());
    for (line, p) in &list {
        let r = sim.judge(p).map_err(|source| ToolError::Probe {
            path: probe_path.clone(),
            line: *line,
            source,
        })?;
        results.push(r);
    }
    match opts.format {
        Format::Json => {
            for r in &results {
                for line in r.to_json_lines() {
                    writeln!(out, "{line}").map_err(write_err)?;
                }
            }
        }
        Format::Table if matrix => write_matrix(&results, out).map_err(write_err)?,
        Format::Table => write_rows(&results, out).map_err(write_err)?,
    }
    Ok(Outcome {
        probes: results.len(),
        allowed: results.iter().filter(|r| r.allowed()).count(),
        warnings,
    })
}

fn write_rows(results: &[ProbeResult], out: &mut impl Write) -> std::io::Result<()> {
    let rows: Vec<[String; 5]> = results
        .iter()
        .map(|r| {
            [
                r.probe.from.to_string(),
                r.probe.to.to_string(),
                format!("{}/{}", r.probe.port, r.probe.protocol),
                if r.allowed() { "allowed" } else { "DENIED" }.to_string(),
                r.reason(),
            ]
        })
        .collect();
    let head = ["FROM", "TO", "PORT", "VERDICT", "REASON"].map(String::from);
    let mut w = [0usize; 5];
    for row in std::iter::once(&head).chain(rows.iter()) {
        for (i, c) in row.iter().enumerate() {
            w[i] = w[i].max(c.len());
        }
    }
    for row in std::iter::once(&head).chain(rows.iter()) {
        let line = format!(
            "{:w0$}  {:w1$}  {:w2$}  {:w3$}  {}",
            row[0],
            row[1],
            row[2],
            row[3],
            row[4],
            w0 = w[0],
            w1 = w[1],
            w2 = w[2],
            w3 = w[3]
        );
        writeln!(out, "{}", line.trim_end())?;
    }
    Ok(())
}

fn write_matrix(results: &[ProbeResult], out: &mut impl Write) -> std::io::Result<()> {
    let mut by_port: BTreeMap<(u16, Protocol), BTreeMap<(String, String), bool>> = BTreeMap::new();
    let mut names: BTreeSet<String> = BTreeSet::new();
    for r in results {
        let (f, t) = (r.probe.from.to_string(), r.probe.to.to_string());
        names.insert(f.clone());
        names.insert(t.clone());
        by_port
            .entry((r.probe.port, r.probe.protocol))
            .or_default()
            .insert((f, t), r.allowed());
    }
    let names: Vec<String> = names.into_iter().collect();
    let width = names.iter().map(String::len).max().unwrap_or(4).max(4);
    for ((port, proto), cells) in by_port {
        writeln!(
            out,
            "{port}/{proto}  (rows: from, columns: to; . = allowed, X = denied, - = not probed)"
        )?;
        write!(out, "{:width$}", "")?;
        for (i, _) in names.iter().enumerate() {
            write!(out, " {:>3}", i + 1)?;
        }
        writeln!(out)?;
        for from in &names {
            write!(out, "{from:width$}")?;
            for to in &names {
                let c = match cells.get(&(from.clone(), to.clone())) {
                    Some(true) => ".",
                    Some(false) => "X",
                    None => "-",
                };
                write!(out, " {c:>3}")?;
            }
            writeln!(out)?;
        }
        for (i, n) in names.iter().enumerate() {
            writeln!(out, "  {:>3} = {n}", i + 1)?;
        }
        writeln!(out)?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    const CLUSTER: &str = r#"
kind: Pod
metadata: {name: a, namespace: x, labels: {app: a}}
spec: {containers: [{name: c, image: i, ports: [{containerPort: 80}]}]}
status: {podIP: 10.0.0.1}
---
kind: Pod
metadata: {name: b, namespace: x, labels: {app: b}}
spec: {containers: [{name: c, image: i, ports: [{containerPort: 80}]}]}
status: {podIP: 10.0.0.2}
---
kind: NetworkPolicy
metadata: {name: p, namespace: x}
spec:
  podSelector: {matchLabels: {app: a}}
  ingress: [{from: [{podSelector: {matchLabels: {app: b}}}], ports: [{port: 80}]}]
"#;

    fn write_cluster(text: &str) -> (PathBuf, PathBuf) {
        let dir = std::env::temp_dir().join(format!(
            "palisade-sim-{}-{}",
            std::process::id(),
            std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map(|d| d.as_nanos())
                .unwrap_or_default()
        ));
        std::fs::create_dir_all(&dir).unwrap();
        let f = dir.join("cluster.yaml");
        std::fs::write(&f, text).unwrap();
        (dir, f)
    }

    #[test]
    fn json_lines_in_probe_order() {
        let (dir, f) = write_cluster(CLUSTER);
        let opts = Options {
            manifests: vec![f],
            probes: Some("probes.jsonl".into()),
            format: Format::Json,
        };
        let probes = "{\"from\":\"x/b\",\"to\":\"x/a\",\"port\":80,\"expected\":1}\n\n{\"from\":\"203.0.113.1\",\"to\":\"x/a\",\"port\":80,\"protocol\":\"UDP\"}\n";
        let mut out = Vec::new();
        let o = run_with(&opts, Some(probes.as_bytes()), &mut out).unwrap();
        assert_eq!((o.probes, o.allowed), (2, 1));
        let lines: Vec<Value> = String::from_utf8(out)
            .unwrap()
            .lines()
            .map(|l| serde_json::from_str(l).unwrap())
            .collect();
        assert_eq!(lines[0]["allowed"], true);
        assert_eq!(lines[1]["allowed"], false);
        assert_eq!(lines[1]["reason"], "ingress:no-rule");
        std::fs::remove_dir_all(dir).unwrap();
    }

    #[test]
    fn service_probes_answer_on_the_backends() {
        let cluster = format!(
            "{}---
kind: Pod
metadata: {{name: a2, namespace: x, labels: {{svc: web}}}}
spec: {{containers: [{{name: c, image: i, ports: [{{containerPort: 8080, name: http}}]}}]}}
status: {{podIP: 10.0.0.3}}
---
kind: Service
metadata: {{name: web, namespace: x}}
spec: {{clusterIP: 10.96.0.9, selector: {{svc: web}}, ports: [{{port: 80, targetPort: 80}}]}}
---
kind: Service
metadata: {{name: empty, namespace: x}}
spec: {{clusterIP: 10.96.0.10, selector: {{app: none}}, ports: [{{port: 80}}]}}
",
            CLUSTER.replace("labels: {app: a}", "labels: {app: a, svc: web}")
        );
        let (dir, f) = write_cluster(&cluster);
        let opts = Options {
            manifests: vec![f],
            probes: Some("p.jsonl".into()),
            format: Format::Json,
        };
        // b is allowed into a on 80 by policy p; a2 is not isolated: agree.
        // 203.0.113.1 is allowed into a2 but not into a: one line each.
        let probes = "{\"from\":\"x/b\",\"to\":\"svc:x/web\",\"port\":80}\n\
                      {\"from\":\"203.0.113.1\",\"to\":\"svc:x/web\",\"port\":80}\n\
                      {\"from\":\"x/b\",\"to\":\"svc:x/empty\",\"port\":80}\n";
        let mut out = Vec::new();
        let o = run_with(&opts, Some(probes.as_bytes()), &mut out).unwrap();
        assert_eq!((o.probes, o.allowed), (3, 1));
        let lines: Vec<Value> = String::from_utf8(out)
            .unwrap()
            .lines()
            .map(|l| serde_json::from_str(l).unwrap())
            .collect();
        assert_eq!(lines.len(), 4, "{lines:?}");
        assert_eq!(lines[0]["allowed"], true);
        assert_eq!(lines[0]["backends"], json!(["x/a:80", "x/a2:80"]));
        assert_eq!(
            (&lines[1]["backend"], &lines[1]["allowed"]),
            (&json!("x/a:80"), &json!(false))
        );
        assert_eq!(
            (&lines[2]["backend"], &lines[2]["allowed"]),
            (&json!("x/a2:80"), &json!(true))
        );
        assert_eq!(lines[3]["reason"], "no-backends");
        let e = run_with(
            &opts,
            Some("{\"from\":\"x/b\",\"to\":\"svc:x/web\",\"port\":81}\n".as_bytes()),
            &mut Vec::new(),
        )
        .unwrap_err();
        assert!(e.to_string().contains("no port 81/TCP"), "{e}");
        std::fs::remove_dir_all(dir).unwrap();
    }

    #[test]
    fn table_matrix_for_all_pairs() {
        let (dir, f) = write_cluster(CLUSTER);
        let opts = Options {
            manifests: vec![f],
            probes: None,
            format: Format::Table,
        };
        let mut out = Vec::new();
        let o = run_with(&opts, None::<&[u8]>, &mut out).unwrap();
        assert_eq!((o.probes, o.allowed), (2, 2));
        let text = String::from_utf8(out).unwrap();
        assert!(text.contains("80/TCP"), "{text}");
        std::fs::remove_dir_all(dir).unwrap();
    }

    #[test]
    fn bad_input_is_exit_2_and_named() {
        let (dir, f) = write_cluster(CLUSTER);
        let opts = Options {
            manifests: vec![f.clone()],
            probes: Some("p.jsonl".into()),
            format: Format::Json,
        };
        let e = run_with(
            &opts,
            Some("{\"from\":\"x/zz\",\"to\":\"x/a\",\"port\":80}\n".as_bytes()),
            &mut Vec::new(),
        )
        .unwrap_err();
        assert_eq!(e.exit_code(), 2);
        assert!(
            e.to_string().contains("p.jsonl:1") && e.to_string().contains("x/zz"),
            "{e}"
        );
        let e = run_with(
            &opts,
            Some(
                "{\"from\":\"x/b\",\"to\":\"x/a\",\"port\":80,\"protocol\":\"ICMP\"}\n".as_bytes(),
            ),
            &mut Vec::new(),
        )
        .unwrap_err();
        assert_eq!(e.exit_code(), 2);
        let bad = CLUSTER.replace("ports: [{port: 80}]", "ports: [{port: 80, endPort: 70}]");
        std::fs::write(&f, bad).unwrap();
        let e = run_with(&opts, None::<&[u8]>, &mut Vec::new()).unwrap_err();
        assert_eq!(e.exit_code(), 2);
        let msg = e.to_string();
        assert!(
            msg.contains("cluster.yaml") && msg.contains("x/p") && msg.contains("endPort"),
            "{msg}"
        );
        std::fs::remove_dir_all(dir).unwrap();
    }
}
