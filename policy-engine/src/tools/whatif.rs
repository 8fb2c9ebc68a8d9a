//! What-if: what a change would do to a cluster's connections, before it
//! is applied (`simulate --kube -f candidate.yaml --delete ns/name`).
//!
//! The cluster's state (read from the API server by the CLI, or from
//! files) is the *before*; the [`Overlay`] — candidate objects that add to
//! or replace the cluster's of the same kind and name, and NetworkPolicies
//! to delete — makes the *after*. Both are compiled and every probe (every
//! pod pair on every declared port of either state, or a probes file) is
//! judged in both with the datapath's lookup model; [`diff`] is that pure
//! comparison, and the output lists the probes whose verdict differs. A
//! probe judged in only one state (a pod the candidate adds, a port it
//! declares) is counted, not listed: it has no verdict to change from.

#[cfg(test)]
mod tests;

use std::io::{BufRead, Write};
use std::path::PathBuf;

use serde_json::{json, Value};

use super::html;
use super::simulate::{all_pairs, read_probes, Mismatch, Probe, ProbeResult, Simulation};
use super::{table, write_err, Output, ToolError};
use crate::manifest::Location;
use crate::model::{PolicyRef, Snapshot};

/// The change to try: objects to add or replace, policies to delete.
#[derive(Clone, Debug, Default)]
pub struct Overlay {
    /// Candidate objects (`-f`): each replaces the cluster's object of its
    /// kind and name, or is added. A candidate Service's Endpoints replace
    /// the cluster's EndpointSlices of that Service.
    pub candidate: Snapshot,
    /// NetworkPolicies to delete (`--delete ns/name`).
    pub delete: Vec<PolicyRef>,
}

impl Overlay {
    /// Whether the overlay changes nothing at all (no candidate object, no
    /// deletion).
    pub fn is_empty(&self) -> bool {
        let c = &self.candidate;
        self.delete.is_empty()
            && c.namespaces.is_empty()
            && c.pods.is_empty()
            && c.policies.is_empty()
            && c.services.is_empty()
            && c.service_endpoints.is_empty()
    }

    /// `base` with the overlay applied. Deleting a policy `base` does not
    /// have is an error (a typo must not pass a CI gate unnoticed).
    pub fn apply(&self, base: &Snapshot) -> Result<Snapshot, ToolError> {
        let mut s = base.clone();
        let c = &self.candidate;
        s.namespaces
            .extend(c.namespaces.iter().map(|(k, v)| (k.clone(), v.clone())));
        s.pods
            .extend(c.pods.iter().map(|(k, v)| (k.clone(), v.clone())));
        s.policies
            .extend(c.policies.iter().map(|(k, v)| (k.clone(), v.clone())));
        s.services
            .extend(c.services.iter().map(|(k, v)| (k.clone(), v.clone())));
        for (svc, subsets) in &c.service_endpoints {
            s.endpoint_slices.remove(svc);
            s.service_endpoints.insert(svc.clone(), subsets.clone());
        }
        for p in &self.delete {
            if s.policies.remove(p).is_none() {
                return Err(ToolError::NoSuchPolicy { policy: p.clone() });
            }
        }
        Ok(s)
    }
}

/// One probe judged before and after the change (`None`: it cannot be
/// judged in that state, e.g. a pod only one of them has).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Pair {
    /// The probe.
    pub probe: Probe,
    /// Its result before the change.
    pub before: Option<ProbeResult>,
    /// Its result after the change.
    pub after: Option<ProbeResult>,
}

impl Pair {
    /// Whether it is judged in both states with different verdicts.
    pub fn changed(&self) -> bool {
        matches!((&self.before, &self.after), (Some(b), Some(a)) if b.allowed() != a.allowed())
    }

    /// Whether the change denies what was allowed.
    pub fn newly_denied(&self) -> bool {
        self.changed() && self.before.as_ref().is_some_and(ProbeResult::allowed)
    }

    /// The JSON line of a changed probe.
    pub fn to_json(&self) -> Value {
        let side = |r: &Option<ProbeResult>| match r {
            Some(r) => json!({"allowed": r.allowed(), "reason": r.reason()}),
            None => Value::Null,
        };
        let change = if self.newly_denied() {
            "denied"
        } else {
            "allowed"
        };
        json!({
            "from": self.probe.from.to_string(),
            "to": self.probe.to.to_string(),
            "port": self.probe.port,
            "protocol": self.probe.protocol.to_string(),
            "before": side(&self.before),
            "after": side(&self.after),
            "change": change,
        })
    }
}

/// Every probe judged in both states.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Diff {
    /// Each probe with its results, in probe order.
    pub pairs: Vec<Pair>,
    /// Probes judged in neither state, with why.
    pub errors: Vec<(Probe, String)>,
}

impl Diff {
    /// The probes whose verdict differs.
    pub fn changes(&self) -> impl Iterator<Item = &Pair> {
        self.pairs.iter().filter(|p| p.changed())
    }

    /// How many allowed connections the change denies.
    pub fn newly_denied(&self) -> usize {
        self.pairs.iter().filter(|p| p.newly_denied()).count()
    }
}

/// Judges `probes` in `before` and in `after`: a pure function of the two
/// compiled states.
pub fn diff(before: &Simulation, after: &Simulation, probes: &[Probe]) -> Diff {
    let mut out = Diff::default();
    for p in probes {
        let b = before.judge(p);
        let a = after.judge(p);
        match (b, a) {
            (Err(e), Err(_)) => out.errors.push((p.clone(), e.to_string())),
            (b, a) => out.pairs.push(Pair {
                probe: p.clone(),
                before: b.ok(),
                after: a.ok(),
            }),
        }
    }
    out
}

/// Every pod pair on every declared port of either state, once.
pub fn all_pairs_of_both(before: &Snapshot, after: &Snapshot) -> Vec<Probe> {
    let mut probes = all_pairs(before);
    probes.extend(all_pairs(after));
    probes.sort_by(|a, b| {
        (a.port, a.protocol, &a.from, &a.to).cmp(&(b.port, b.protocol, &b.from, &b.to))
    });
    probes.dedup();
    probes
}

/// What to compare and how to show it.
#[derive(Clone, Debug, Default)]
pub struct Options {
    /// Probes file (JSON lines), `-` for stdin; `None` = all pod pairs of
    /// both states. A probe's `allowed` field is checked against the
    /// state after the change.
    pub probes: Option<PathBuf>,
    /// Output format.
    pub output: Output,
    /// Exit 1 when the change denies a connection that was allowed.
    pub fail_on_deny: bool,
}

/// Summary of a what-if.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Outcome {
    /// Probes judged in at least one state.
    pub probes: usize,
    /// Probes whose verdict differs.
    pub changed: usize,
    /// Of those, allowed before and denied after.
    pub newly_denied: usize,
    /// Probes judged only before the change, or only after it.
    pub one_sided: usize,
    /// Probes judged in neither state, with why.
    pub errors: Vec<String>,
    /// Probes whose verdict after the change differs from their
    /// `allowed` field.
    pub mismatches: Vec<Mismatch>,
    /// Warnings (reading the state, the compiles).
    pub warnings: Vec<String>,
}

impl Outcome {
    /// The CLI's exit code: 2 if a probe could not be judged, 1 on a
    /// mismatch with an expected verdict or, with `fail_on_deny`, when
    /// the change denies what was allowed; 0 otherwise.
    pub fn exit_code(&self, fail_on_deny: bool) -> i32 {
        if !self.errors.is_empty() {
            2
        } else if !self.mismatches.is_empty() || (fail_on_deny && self.newly_denied > 0) {
            1
        } else {
            0
        }
    }
}

/// Compares `before` with `after` as the CLI does (probes from
/// `opts.probes`, stdin for `-`) and writes the changes.
pub fn run(
    before: Snapshot,
    after: Snapshot,
    warnings: Vec<String>,
    opts: &Options,
    out: &mut impl Write,
) -> Result<Outcome, ToolError> {
    let probes = super::open_probes(opts.probes.as_deref())?;
    run_with(before, after, warnings, opts, probes, out)
}

/// [`run`] with the probes coming from `probes` (`None` = all pod pairs).
pub fn run_with(
    before: Snapshot,
    after: Snapshot,
    warnings: Vec<String>,
    opts: &Options,
    probes: Option<impl BufRead>,
    out: &mut impl Write,
) -> Result<Outcome, ToolError> {
    let mut outcome = Outcome {
        warnings,
        ..Outcome::default()
    };
    let (before, after) = (Simulation::new(before), Simulation::new(after));
    for (state, sim) in [("before", &before), ("after", &after)] {
        outcome.warnings.extend(
            sim.compiled
                .errors
                .iter()
                .map(|e| format!("{state} the change: {e}")),
        );
    }
    let probe_path = opts.probes.clone().unwrap_or_else(|| PathBuf::from("-"));
    let lines: Vec<(Option<Location>, Probe, Option<bool>)> = match probes {
        Some(r) => read_probes(r, &probe_path)?
            .into_iter()
            .map(|p| (Some(p.location), p.probe, p.expected))
            .collect(),
        None => all_pairs_of_both(&before.snapshot, &after.snapshot)
            .into_iter()
            .map(|p| (None, p, None))
            .collect(),
    };
    let list: Vec<Probe> = lines.iter().map(|(_, p, _)| p.clone()).collect();
    let d = diff(&before, &after, &list);
    for (p, e) in &d.errors {
        let at = lines
            .iter()
            .find(|(_, q, _)| q == p)
            .and_then(|(l, _, _)| l.as_ref())
            .map(|l| format!("{l}: "))
            .unwrap_or_default();
        outcome.errors.push(format!("{at}{p}: {e}"));
    }
    for (location, p, expected) in &lines {
        let (Some(at), Some(want)) = (location, expected) else {
            continue;
        };
        let judged = d.pairs.iter().find(|q| &q.probe == p);
        if let Some(r) = judged.and_then(|q| q.after.as_ref()) {
            if r.allowed() != *want {
                outcome.mismatches.push(Mismatch {
                    location: at.clone(),
                    probe: p.clone(),
                    expected: *want,
                    reason: r.reason(),
                });
            }
        }
    }
    outcome.probes = d.pairs.len();
    outcome.changed = d.changes().count();
    outcome.newly_denied = d.newly_denied();
    outcome.one_sided = d
        .pairs
        .iter()
        .filter(|p| p.before.is_none() || p.after.is_none())
        .count();
    write(&d, &before, &after, opts.output, &outcome, out).map_err(write_err)?;
    Ok(outcome)
}

fn write(
    d: &Diff,
    before: &Simulation,
    after: &Simulation,
    output: Output,
    outcome: &Outcome,
    out: &mut impl Write,
) -> std::io::Result<()> {
    match output {
        Output::Json => {
            for p in d.changes() {
                writeln!(out, "{}", p.to_json())?;
            }
            Ok(())
        }
        Output::Yaml => {
            let list: Vec<Value> = d.changes().map(Pair::to_json).collect();
            table::write_yaml(out, &Value::Array(list))
        }
        Output::Html => {
            let cell = |p: &Pair| html::Cell {
                from: p.probe.from.to_string(),
                to: p.probe.to.to_string(),
                port: p.probe.port,
                protocol: p.probe.protocol,
                after: p.after.as_ref().map(|r| html::CellVerdict::of(after, r)),
                before: p.before.as_ref().map(|r| html::CellVerdict::of(before, r)),
            };
            html::Page {
                title: "Palisade: what-if".into(),
                whatif: true,
                cells: d.pairs.iter().map(cell).collect(),
                notes: outcome.warnings.clone(),
            }
            .write(out)
        }
        Output::Table | Output::Wide => {
            let wide = output == Output::Wide;
            let word = |r: &Option<ProbeResult>| match r {
                Some(r) if r.allowed() => "allowed",
                Some(_) => "DENIED",
                None => "-",
            };
            let reason = |r: &Option<ProbeResult>| r.as_ref().map_or("-".into(), |r| r.reason());
            let rows: Vec<Vec<String>> = d
                .changes()
                .map(|p| {
                    let mut row = vec![
                        p.probe.from.to_string(),
                        p.probe.to.to_string(),
                        format!("{}/{}", p.probe.port, p.probe.protocol),
                        word(&p.before).to_string(),
                        word(&p.after).to_string(),
                        reason(&p.after),
                    ];
                    if wide {
                        row.push(reason(&p.before));
                    }
                    row
                })
                .collect();
            if rows.is_empty() {
                writeln!(
                    out,
                    "No probe changes its verdict ({} probe(s) judged).",
                    outcome.probes
                )?;
            } else {
                let mut head = vec!["FROM", "TO", "PORT", "BEFORE", "AFTER", "REASON"];
                if wide {
                    head.push("BEFORE-REASON");
                }
                table::write(out, &head, &rows)?;
                writeln!(
                    out,
                    "{} of {} probe(s) change: {} newly denied, {} newly allowed.",
                    outcome.changed,
                    outcome.probes,
                    outcome.newly_denied,
                    outcome.changed - outcome.newly_denied
                )?;
            }
            if outcome.one_sided > 0 {
                writeln!(
                    out,
                    "({} probe(s) judged only before or only after the change: a pod or port \
                     one state lacks)",
                    outcome.one_sided
                )?;
            }
            Ok(())
        }
    }
}
