//! `simulate`'s output: JSON lines, YAML, rows, and the all-pairs matrix.

use std::collections::{BTreeMap, BTreeSet};
use std::io::Write;

use serde_json::{json, Value};

use super::{Answer, ProbeResult};
use crate::model::Protocol;
use crate::tools::probe::{Connection, End};
use crate::tools::{table, Output};

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

pub(super) fn write_answers(
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
        Output::Table | Output::Wide | Output::Html => {
            write_rows(answers, output == Output::Wide, out)?
        }
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
