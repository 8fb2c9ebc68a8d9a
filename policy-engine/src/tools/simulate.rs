//! `simulate`: compile manifests and judge probes with the datapath's
//! lookup model (never by re-reading the policies).
//!
//! Probes are JSON lines `{"from": "ns/pod"|"IP", "to": ...|"svc:ns/name", "port": 80,
//! "protocol": "TCP", "allowed": true}` (`protocol` in any case, default
//! TCP; `allowed`, when present, is the expected verdict; other fields are
//! ignored). Without probes, every ordered pair of pods with an address is
//! probed on every container port the destination declares.
//!
//! Every probe gets an answer: one that cannot be sent as written (a pod
//! without an address of the probe's family, a Pending pod) is judged by
//! the pods' identities and carries a note; a probe naming an unknown pod
//! is reported on its own line and the batch goes on.
//!
//! A probe to a Service (`svc:ns/name`, on the Service port) is judged on
//! each backend kube-proxy may pick, on the backend's address and target
//! port: one answer when the backends agree, one per backend otherwise.

use std::collections::{BTreeMap, BTreeSet};
use std::io::{BufRead, Write};
use std::path::{Path, PathBuf};

use serde_json::{json, Value};

use super::probe::{self, BackendConnection, Connection, End, Judge};
use super::{table, write_err, Input, Output, ToolError};
use crate::compile::{self, Allocator, Compiled};
use crate::manifest::Location;
use crate::model::{PodRef, Protocol, Snapshot};

/// What to simulate.
#[derive(Clone, Debug, Default)]
pub struct Options {
    /// Manifests.
    pub input: Input,
    /// Probes file (JSON lines), `-` for stdin; `None` = all pod pairs.
    pub probes: Option<PathBuf>,
    /// Output format.
    pub output: Output,
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

    /// Why the packet could not be sent as written, if it could not (for a
    /// Service: the first backend's note; see [`Connection::note`]).
    pub fn note(&self) -> Option<&str> {
        match self.probe.to {
            End::Service(_) => self
                .backends
                .iter()
                .find_map(|b| b.connection.note.as_deref()),
            _ => self.connection.note.as_deref(),
        }
    }

    /// The JSON lines for this result: one, or for a Service whose backends
    /// disagree, one per backend (each with `backend`). A probe that cannot
    /// be sent as written carries `note`.
    pub fn to_json_lines(&self) -> Vec<Value> {
        let head = json!({
            "from": self.probe.from.to_string(),
            "to": self.probe.to.to_string(),
            "port": self.probe.port,
            "protocol": self.probe.protocol.to_string(),
        });
        let line = |allowed: bool, reason: String, note: Option<&str>| {
            let mut v = head.clone();
            v["allowed"] = allowed.into();
            v["reason"] = reason.into();
            if let Some(note) = note {
                v["note"] = note.into();
            }
            v
        };
        if !matches!(self.probe.to, End::Service(_)) || self.backends_agree() {
            let mut v = line(self.allowed(), self.reason(), self.note());
            if matches!(self.probe.to, End::Service(_)) {
                v["backends"] = self
                    .backends
                    .iter()
                    .map(|b| Value::from(b.backend.to_string()))
                    .collect();
            }
            return vec![v];
        }
        self.backends
            .iter()
            .map(|b| {
                let c = &b.connection;
                let mut v = line(c.allowed(), c.reason(), c.note.as_deref());
                v["backend"] = b.backend.to_string().into();
                v
            })
            .collect()
    }

    /// The JSON line for this result (the first of [`Self::to_json_lines`]).
    pub fn to_json(&self) -> Value {
        self.to_json_lines().swap_remove(0)
    }
}

/// A probe whose verdict differs from its `allowed` field.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Mismatch {
    /// Where the probe is.
    pub location: Location,
    /// The probe.
    pub probe: Probe,
    /// What the file expects.
    pub expected: bool,
    /// Why the verdict is what it is.
    pub reason: String,
}

impl std::fmt::Display for Mismatch {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let word = |b: bool| if b { "allowed" } else { "denied" };
        write!(
            f,
            "{}: {}: expected {}, simulated {} ({})",
            self.location,
            self.probe,
            word(self.expected),
            word(!self.expected),
            self.reason
        )
    }
}

/// Summary of a run.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Outcome {
    /// Probes judged.
    pub probes: usize,
    /// How many were allowed.
    pub allowed: usize,
    /// Probes that could not be judged (an unknown pod), with the reason.
    pub errors: Vec<String>,
    /// Probes whose verdict differs from their `allowed` field.
    pub mismatches: Vec<Mismatch>,
    /// Pods left out of the all-pairs matrix for lack of an address.
    pub skipped_pods: usize,
    /// Manifest warnings (skipped kinds, duplicates...).
    pub warnings: Vec<String>,
}

impl Outcome {
    /// The CLI's exit code: 2 if a probe could not be judged (bad input),
    /// 1 on a mismatch with an expected verdict, 0 otherwise.
    pub fn exit_code(&self) -> i32 {
        if !self.errors.is_empty() {
            2
        } else if !self.mismatches.is_empty() {
            1
        } else {
            0
        }
    }
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

/// A snapshot compiled with every non-hostNetwork pod as an endpoint.
pub struct Simulation {
    /// The snapshot.
    pub snapshot: Snapshot,
    /// Endpoint ids.
    pub endpoints: BTreeMap<PodRef, u32>,
    /// The compile.
    pub compiled: Compiled,
    /// Each pod's identity in the compile.
    pub identities: BTreeMap<PodRef, u32>,
}

impl Simulation {
    /// Compiles `snapshot`.
    pub fn new(snapshot: Snapshot) -> Self {
        let endpoints = compile::all_endpoints(&snapshot);
        let compiled = compile::compile(&snapshot, &endpoints, &mut Allocator::new());
        let identities = probe::pod_identities(&compiled.identities);
        Simulation {
            snapshot,
            endpoints,
            compiled,
            identities,
        }
    }

    fn judge_with(&self) -> Judge<'_> {
        Judge {
            snapshot: &self.snapshot,
            state: &self.compiled.state,
            endpoints: &self.endpoints,
            identities: &self.identities,
        }
    }

    /// Judges one probe.
    pub fn judge(&self, probe: &Probe) -> Result<ProbeResult, probe::ProbeError> {
        if let End::Service(svc) = &probe.to {
            return self.judge_service(probe, svc);
        }
        let connection =
            self.judge_with()
                .connection(&probe.from, &probe.to, probe.protocol, probe.port)?;
        Ok(ProbeResult {
            probe: probe.clone(),
            connection,
            backends: Vec::new(),
        })
    }

    fn judge_service(&self, probe: &Probe, svc: &PodRef) -> Result<ProbeResult, probe::ProbeError> {
        let judge = self.judge_with();
        let backends = judge.service_connections(&probe.from, svc, probe.protocol, probe.port)?;
        let connection = match backends.first() {
            Some(b) => b.connection.clone(),
            None => {
                // No backend: a connection to the ClusterIP that no
                // endpoint judges (kube-proxy rejects it).
                let from =
                    judge.connection(&probe.from, &probe.from, probe.protocol, probe.port)?;
                Connection {
                    dst_ip: self.snapshot.services[svc].cluster_ips.first().copied(),
                    dst_pod: None,
                    egress: None,
                    ingress: None,
                    note: None,
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

/// Runs `simulate` as the CLI does: loads the manifests (invalid policies
/// are errors), reads probes (stdin for `-`), writes results.
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

/// One probe's answer: judged, or why it could not be.
enum Answer {
    Judged(ProbeResult),
    Failed {
        location: Option<Location>,
        probe: Probe,
        error: probe::ProbeError,
    },
}

/// [`run`] with the probes coming from `probes` instead of `opts.probes`
/// (`None` = all pod pairs).
pub fn run_with(
    opts: &Options,
    probes: Option<impl BufRead>,
    out: &mut impl Write,
) -> Result<Outcome, ToolError> {
    let loaded = opts.input.load()?;
    let mut outcome = Outcome {
        warnings: loaded.warnings.clone(),
        ..Outcome::default()
    };
    let sim = Simulation::new(loaded.snapshot);
    // A policy the compiler could not use fails closed in the agent as
    // here: the verdicts below show it, the warning says why.
    outcome
        .warnings
        .extend(sim.compiled.errors.iter().map(ToString::to_string));
    let probe_path = opts.probes.clone().unwrap_or_else(|| PathBuf::from("-"));
    let matrix = probes.is_none();
    let list: Vec<(Option<Location>, Probe, Option<bool>)> = match probes {
        Some(r) => read_probes(r, &probe_path)?
            .into_iter()
            .map(|p| (Some(p.location), p.probe, p.expected))
            .collect(),
        None => {
            outcome.skipped_pods = sim
                .snapshot
                .pods
                .values()
                .filter(|p| p.ips.is_empty())
                .count();
            all_pairs(&sim.snapshot)
                .into_iter()
                .map(|p| (None, p, None))
                .collect()
        }
    };
    let mut answers = Vec::with_capacity(list.len());
    for (location, p, expected) in list {
        match sim.judge(&p) {
            Ok(r) => {
                let allowed = r.allowed();
                outcome.probes += 1;
                outcome.allowed += usize::from(allowed);
                if let (Some(want), Some(at)) = (expected, &location) {
                    if want != allowed {
                        outcome.mismatches.push(Mismatch {
                            location: at.clone(),
                            probe: p.clone(),
                            expected: want,
                            reason: r.reason(),
                        });
                    }
                }
                answers.push(Answer::Judged(r));
            }
            Err(error) => {
                let at = location
                    .as_ref()
                    .map(|l| format!("{l}: "))
                    .unwrap_or_default();
                outcome.errors.push(format!("{at}{p}: {error}"));
                answers.push(Answer::Failed {
                    location,
                    probe: p,
                    error,
                });
            }
        }
    }
    write_answers(&answers, opts.output, matrix, outcome.skipped_pods, out).map_err(write_err)?;
    Ok(outcome)
}

fn answer_json(a: &Answer) -> Vec<Value> {
    match a {
        Answer::Judged(r) => r.to_json_lines(),
        Answer::Failed {
            location,
            probe,
            error,
        } => {
            let mut v = json!({
                "from": probe.from.to_string(),
                "to": probe.to.to_string(),
                "port": probe.port,
                "protocol": probe.protocol.to_string(),
                "error": error.to_string(),
            });
            if let Some(l) = location {
                v["line"] = json!(l.line);
            }
            vec![v]
        }
    }
}

fn write_answers(
    answers: &[Answer],
    output: Output,
    matrix: bool,
    skipped: usize,
    out: &mut impl Write,
) -> std::io::Result<()> {
    match output {
        Output::Json => {
            for v in answers.iter().flat_map(answer_json) {
                writeln!(out, "{v}")?;
            }
        }
        Output::Yaml => {
            let list: Vec<Value> = answers.iter().flat_map(answer_json).collect();
            table::write_yaml(out, &Value::Array(list))?;
        }
        Output::Table if matrix => {
            let results: Vec<&ProbeResult> = answers
                .iter()
                .filter_map(|a| match a {
                    Answer::Judged(r) => Some(r),
                    Answer::Failed { .. } => None,
                })
                .collect();
            write_matrix(&results, out)?;
        }
        Output::Table | Output::Wide => write_rows(answers, output == Output::Wide, out)?,
    }
    if matrix && skipped > 0 && matches!(output, Output::Table | Output::Wide) {
        writeln!(out, "({skipped} pod(s) without an address skipped)")?;
    }
    Ok(())
}

/// One table row of a judged probe: the destination as shown, the
/// connection judged, and for a Service the backends it stands for.
fn result_rows(r: &ProbeResult) -> Vec<(String, bool, String, Option<&str>, &Connection)> {
    let to = r.probe.to.to_string();
    if !matches!(r.probe.to, End::Service(_)) || r.backends_agree() {
        return vec![(to, r.allowed(), r.reason(), r.note(), &r.connection)];
    }
    r.backends
        .iter()
        .map(|b| {
            let c = &b.connection;
            (
                format!("{to} ({})", b.backend),
                c.allowed(),
                c.reason(),
                c.note.as_deref(),
                c,
            )
        })
        .collect()
}

fn write_rows(answers: &[Answer], wide: bool, out: &mut impl Write) -> std::io::Result<()> {
    let ip = |i: Option<std::net::IpAddr>| i.map_or("-".to_string(), |i| i.to_string());
    let mut rows: Vec<Vec<String>> = Vec::new();
    for a in answers {
        let (probe, lines) = match a {
            Answer::Judged(r) => (
                &r.probe,
                result_rows(r)
                    .into_iter()
                    .map(|(to, allowed, reason, note, c)| {
                        let verdict = if allowed { "allowed" } else { "DENIED" };
                        let note = note.unwrap_or_default().to_string();
                        (
                            to,
                            verdict.to_string(),
                            reason,
                            note,
                            ip(c.src_ip),
                            ip(c.dst_ip),
                        )
                    })
                    .collect(),
            ),
            Answer::Failed { probe, error, .. } => (
                probe,
                vec![(
                    probe.to.to_string(),
                    "ERROR".to_string(),
                    error.to_string(),
                    String::new(),
                    "-".into(),
                    "-".into(),
                )],
            ),
        };
        for (to, verdict, reason, note, src, dst) in lines {
            let mut row = vec![
                probe.from.to_string(),
                to,
                format!("{}/{}", probe.port, probe.protocol),
                verdict,
                reason,
            ];
            if wide {
                row.extend([src, dst, note]);
            } else if !note.is_empty() {
                row[4].push_str(" (not sendable)");
            }
            rows.push(row);
        }
    }
    let mut head = vec!["FROM", "TO", "PORT", "VERDICT", "REASON"];
    if wide {
        head.extend(["SRC-IP", "DST-IP", "NOTE"]);
    }
    table::write(out, &head, &rows)
}

fn write_matrix(results: &[&ProbeResult], out: &mut impl Write) -> std::io::Result<()> {
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

    /// The JSON lines a run wrote.
    fn json_lines(out: Vec<u8>) -> Vec<Value> {
        String::from_utf8(out)
            .unwrap()
            .lines()
            .map(|l| serde_json::from_str(l).unwrap())
            .collect()
    }

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
            input: vec![f].into(),
            probes: Some("probes.jsonl".into()),
            output: Output::Json,
        };
        let probes = "{\"from\":\"x/b\",\"to\":\"x/a\",\"port\":80,\"expected\":1}\n\n{\"from\":\"203.0.113.1\",\"to\":\"x/a\",\"port\":80,\"protocol\":\"UDP\"}\n";
        let mut out = Vec::new();
        let o = run_with(&opts, Some(probes.as_bytes()), &mut out).unwrap();
        assert_eq!((o.probes, o.allowed), (2, 1));
        let lines = json_lines(out);
        assert_eq!(lines[0]["allowed"], true);
        assert_eq!(lines[1]["allowed"], false);
        assert_eq!(lines[1]["reason"], "ingress:no-rule");
        std::fs::remove_dir_all(dir).unwrap();
    }

    const SERVICES: &str = "---
kind: Pod
metadata: {name: a2, namespace: x, labels: {svc: web}}
spec: {containers: [{name: c, image: i, ports: [{containerPort: 8080, name: http}]}]}
status: {podIP: 10.0.0.3}
---
kind: Service
metadata: {name: web, namespace: x}
spec: {clusterIP: 10.96.0.9, selector: {svc: web}, ports: [{port: 80, targetPort: 80}]}
---
kind: Service
metadata: {name: empty, namespace: x}
spec: {clusterIP: 10.96.0.10, selector: {app: none}, ports: [{port: 80}]}
";

    fn service_cluster() -> String {
        format!(
            "{}{SERVICES}",
            CLUSTER.replace("labels: {app: a}", "labels: {app: a, svc: web}")
        )
    }

    #[test]
    fn service_probes_answer_on_the_backends() {
        let (dir, f) = write_cluster(&service_cluster());
        let opts = Options {
            input: vec![f].into(),
            probes: Some("p.jsonl".into()),
            output: Output::Json,
        };
        // b is allowed into a on 80 by policy p; a2 is not isolated: agree.
        // 203.0.113.1 is allowed into a2 but not into a: one line each.
        let probes = "{\"from\":\"x/b\",\"to\":\"svc:x/web\",\"port\":80}\n\
                      {\"from\":\"203.0.113.1\",\"to\":\"svc:x/web\",\"port\":80}\n\
                      {\"from\":\"x/b\",\"to\":\"svc:x/empty\",\"port\":80}\n";
        let mut out = Vec::new();
        let o = run_with(&opts, Some(probes.as_bytes()), &mut out).unwrap();
        assert_eq!((o.probes, o.allowed), (3, 1));
        let lines = json_lines(out);
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
        // A port the Service does not have: that probe is an error, the
        // batch goes on.
        let mut out = Vec::new();
        let o = run_with(
            &opts,
            Some(
                "{\"from\":\"x/b\",\"to\":\"svc:x/web\",\"port\":81}\n{\"from\":\"x/b\",\"to\":\"svc:x/nope\",\"port\":80}\n{\"from\":\"x/b\",\"to\":\"svc:x/web\",\"port\":80}\n"
                    .as_bytes(),
            ),
            &mut out,
        )
        .unwrap();
        assert_eq!((o.probes, o.exit_code()), (1, 2));
        assert!(
            o.errors[0].contains("p.jsonl:1") && o.errors[0].contains("no port 81/TCP"),
            "{:?}",
            o.errors
        );
        assert!(
            o.errors[1].contains("unknown Service x/nope"),
            "{:?}",
            o.errors
        );
        assert_eq!(String::from_utf8(out).unwrap().lines().count(), 3);
        std::fs::remove_dir_all(dir).unwrap();
    }

    #[test]
    fn service_probes_from_unsendable_sources_are_answered() {
        let (dir, f) = write_cluster(&format!("{}---{PENDING}", service_cluster()));
        let opts = Options {
            input: vec![f].into(),
            probes: Some("p.jsonl".into()),
            output: Output::Json,
        };
        let probes = [
            // A Pending pod labelled app: b: both backends admit it.
            r#"{"from":"x/pending","to":"svc:x/web","port":80,"allowed":true}"#,
            // An IPv6-only pod to an IPv4-only Service: a note, and policy
            // p does not admit app: c into x/a.
            r#"{"from":"x/v6","to":"svc:x/web","port":80,"allowed":true}"#,
        ]
        .join("\n");
        let mut out = Vec::new();
        let o = run_with(&opts, Some(probes.as_bytes()), &mut out).unwrap();
        assert!(o.errors.is_empty(), "{:?}", o.errors);
        let lines = json_lines(out);
        assert_eq!(lines.len(), 3, "{lines:?}");
        assert_eq!(lines[0]["allowed"], true);
        assert!(
            lines[0]["note"]
                .as_str()
                .is_some_and(|n| n.contains("x/pending has no IP address")),
            "{lines:?}"
        );
        assert_eq!(
            (&lines[1]["backend"], &lines[1]["allowed"]),
            (&json!("x/a:80"), &json!(false))
        );
        assert!(
            lines[1]["note"]
                .as_str()
                .is_some_and(|n| n.contains("x/v6 has no IPv4 address")),
            "{lines:?}"
        );
        assert_eq!(lines[2]["allowed"], true);
        // The expectation on the v6 probe fails on backend x/a: exit 1.
        assert_eq!(o.mismatches.len(), 1, "{:?}", o.mismatches);
        assert!(o.mismatches[0]
            .to_string()
            .starts_with("p.jsonl:2: x/v6 -> svc:x/web 80/TCP"));
        assert_eq!(o.exit_code(), 1);

        // Table and wide: one row per disagreeing backend, with headers.
        for (output, want) in [
            (Output::Table, "svc:x/web (x/a:80)"),
            (Output::Wide, "NOTE"),
            (Output::Yaml, "backend: x/a:80"),
        ] {
            let opts = Options {
                output,
                ..opts.clone()
            };
            let mut out = Vec::new();
            run_with(&opts, Some(probes.as_bytes()), &mut out).unwrap();
            let text = String::from_utf8(out).unwrap();
            assert!(text.contains(want), "{output:?}: {text}");
        }
        std::fs::remove_dir_all(dir).unwrap();
    }

    #[test]
    fn a_policy_over_its_budget_is_named_and_fails_closed() {
        // 3,000 rules, each the world but one /32 on its own port: R²
        // entries, past the per-policy budget.
        let mut big = String::from("---\nkind: NetworkPolicy\nmetadata: {name: big, namespace: x}\nspec:\n  podSelector: {matchLabels: {app: b}}\n  policyTypes: [Egress]\n  egress:\n");
        for i in 0..3000u32 {
            big.push_str(&format!(
                "  - to: [{{ipBlock: {{cidr: 0.0.0.0/0, except: [100.64.{}.{}/32]}}}}]\n    ports: [{{port: {}}}]\n",
                i / 256,
                i % 256,
                1000 + i
            ));
        }
        let (dir, f) = write_cluster(&format!("{CLUSTER}{big}"));
        let opts = Options {
            input: vec![f].into(),
            probes: None,
            output: Output::Json,
        };
        let mut out = Vec::new();
        let o = run_with(&opts, None::<&[u8]>, &mut out).unwrap();
        assert!(
            o.warnings
                .iter()
                .any(|w| w.contains("x/big") && w.contains("budget")),
            "{:?}",
            o.warnings
        );
        // x/b's egress is isolated by x/big, which allows nothing.
        let lines = json_lines(out);
        let b_to_a = lines
            .iter()
            .find(|l| l["from"] == "x/b" && l["to"] == "x/a")
            .unwrap();
        assert_eq!(b_to_a["allowed"], false, "{b_to_a}");
        std::fs::remove_dir_all(dir).unwrap();
    }

    #[test]
    fn table_matrix_for_all_pairs() {
        let (dir, f) = write_cluster(CLUSTER);
        let opts = Options {
            input: vec![f].into(),
            probes: None,
            output: Output::Table,
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
            input: vec![f.clone()].into(),
            probes: Some("p.jsonl".into()),
            output: Output::Json,
        };
        // An unknown pod: that probe is an error line, the batch goes on.
        let mut out = Vec::new();
        let o = run_with(
            &opts,
            Some("{\"from\":\"x/zz\",\"to\":\"x/a\",\"port\":80}\n{\"from\":\"x/b\",\"to\":\"x/a\",\"port\":80}\n".as_bytes()),
            &mut out,
        )
        .unwrap();
        assert_eq!(o.exit_code(), 2);
        assert_eq!(o.probes, 1);
        assert!(
            o.errors[0].contains("p.jsonl:1") && o.errors[0].contains("x/zz"),
            "{:?}",
            o.errors
        );
        let text = String::from_utf8(out).unwrap();
        assert_eq!(text.lines().count(), 2, "{text}");
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
            msg.contains("cluster.yaml:16: NetworkPolicy x/p: spec.ingress[0].ports[0].endPort"),
            "{msg}"
        );
        std::fs::remove_dir_all(dir).unwrap();
    }

    const PENDING: &str = r#"
kind: Pod
metadata: {name: pending, namespace: x, labels: {app: b}}
status: {phase: Pending}
---
kind: Pod
metadata: {name: v6, namespace: x, labels: {app: c}}
spec: {containers: [{name: c, image: i, ports: [{containerPort: 80}]}]}
status: {podIP: "2001:db8::6"}
"#;

    #[test]
    fn every_probe_is_answered() {
        let (dir, f) = write_cluster(&format!("{CLUSTER}---{PENDING}"));
        let opts = Options {
            input: vec![f].into(),
            probes: Some("p.jsonl".into()),
            output: Output::Json,
        };
        let probes = [
            // A Pending pod: no address, but its labels admit it.
            r#"{"from":"x/pending","to":"x/a","port":80,"allowed":true}"#,
            // An IPv6 literal to an IPv4-only pod: not sendable, and the
            // ingress policy denies it anyway.
            r#"{"from":"2001:db8::99","to":"x/a","port":80,"allowed":false}"#,
            // IPv4-only to IPv6-only pods; lower-case protocol.
            r#"{"from":"x/b","to":"x/v6","port":80,"protocol":"tcp","allowed":false}"#,
        ]
        .join("\n");
        let mut out = Vec::new();
        let o = run_with(&opts, Some(probes.as_bytes()), &mut out).unwrap();
        assert_eq!(o.probes, 3);
        assert!(o.errors.is_empty(), "{:?}", o.errors);
        let lines = json_lines(out);
        assert_eq!(lines[0]["allowed"], true);
        assert!(lines[0]["note"]
            .as_str()
            .unwrap()
            .contains("x/pending has no IP address"));
        assert_eq!(lines[1]["allowed"], false);
        assert!(lines[1]["note"]
            .as_str()
            .unwrap()
            .contains("x/a has no IPv6 address"));
        assert_eq!(lines[2]["protocol"], "TCP");
        // x/v6 is not isolated: the verdict is allowed, the file said no.
        assert_eq!(lines[2]["allowed"], true);
        assert_eq!(o.mismatches.len(), 1);
        assert_eq!(o.exit_code(), 1);
        let m = o.mismatches[0].to_string();
        assert!(
            m.starts_with("p.jsonl:3: x/b -> x/v6 80/TCP: expected denied, simulated allowed"),
            "{m}"
        );

        // The matrix skips the pod without an address and says so.
        let opts = Options {
            probes: None,
            output: Output::Table,
            ..opts
        };
        let mut out = Vec::new();
        let o = run_with(&opts, None::<&[u8]>, &mut out).unwrap();
        assert_eq!(o.skipped_pods, 1);
        assert_eq!(o.exit_code(), 0);
        let text = String::from_utf8(out).unwrap();
        assert!(
            text.contains("1 pod(s) without an address skipped") && !text.contains("pending"),
            "{text}"
        );
        std::fs::remove_dir_all(dir).unwrap();
    }
}
