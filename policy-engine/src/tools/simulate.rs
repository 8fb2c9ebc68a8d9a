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

mod probes;
mod render;
mod result;
mod simulation;
#[cfg(test)]
mod tests;

use std::io::{BufRead, Write};
use std::path::PathBuf;

use super::{html, probe};
use super::{write_err, Input, Output, ToolError};
use crate::manifest::Location;
use crate::model::Snapshot;

pub use probes::{all_pairs, parse_probe, parse_probe_line, read_probes, Probe, ProbeLine};
pub use result::ProbeResult;
pub use simulation::Simulation;

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

/// Runs `simulate` as the CLI does: loads the manifests (invalid policies
/// are errors), reads probes (stdin for `-`), writes results.
pub fn run(opts: &Options, out: &mut impl Write) -> Result<Outcome, ToolError> {
    let probes = super::open_probes(opts.probes.as_deref())?;
    run_with(opts, probes, out)
}

/// Runs `simulate` on a snapshot read elsewhere (the API server) instead
/// of `opts.input`, with `warnings` from reading it.
pub fn run_on(
    snapshot: Snapshot,
    warnings: Vec<String>,
    opts: &Options,
    out: &mut impl Write,
) -> Result<Outcome, ToolError> {
    let probes = super::open_probes(opts.probes.as_deref())?;
    judge_all(snapshot, warnings, opts, probes, out)
}

/// One probe's answer: judged, or why it could not be.
pub(crate) enum Answer {
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
    judge_all(loaded.snapshot, loaded.warnings, opts, probes, out)
}

/// Judges the probes (`None` = all pod pairs) on `snapshot` and writes
/// the answers.
fn judge_all(
    snapshot: Snapshot,
    warnings: Vec<String>,
    opts: &Options,
    probes: Option<impl BufRead>,
    out: &mut impl Write,
) -> Result<Outcome, ToolError> {
    let mut outcome = Outcome {
        warnings,
        ..Outcome::default()
    };
    let sim = Simulation::new(snapshot);
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
    if opts.output == Output::Html {
        let cells = answers
            .iter()
            .filter_map(|a| match a {
                Answer::Judged(r) => Some(html::Cell::judged(&sim, r)),
                Answer::Failed { .. } => None,
            })
            .collect();
        let page = html::Page {
            title: "Palisade: simulate".into(),
            whatif: false,
            cells,
            notes: outcome.warnings.clone(),
        };
        page.write(out).map_err(write_err)?;
        return Ok(outcome);
    }
    render::write_answers(&answers, opts.output, matrix, outcome.skipped_pods, out)
        .map_err(write_err)?;
    Ok(outcome)
}
