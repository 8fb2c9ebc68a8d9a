//! Presenting observations: JSON lines, a readable table, a before/after
//! comparison, and the mismatch count behind the exit status.

use std::collections::BTreeMap;
use std::fmt::Write as _;

use serde_json::{json, Value};

use crate::probe::{protocol_name, Observation};

/// How many observations contradict their expectation (exit status 1 when
/// non-zero). Skipped probes and probes without expectation never count.
pub fn mismatches(observations: &[Observation]) -> usize {
    observations
        .iter()
        .filter(|o| o.matches_expectation() == Some(false))
        .count()
}

/// One observation as a JSON object: the probe's fields with `allowed` set
/// to what was observed (`null` when skipped), `expected` when the probe had
/// an expectation, and `detail`.
pub fn json_value(o: &Observation) -> Value {
    let mut v = json!({
        "from": o.probe.from.to_string(),
        "to": o.probe.to.to_string(),
        "port": o.probe.port,
        "protocol": protocol_name(o.probe.protocol),
        "allowed": o.allowed,
    });
    if let Some(e) = o.probe.expected {
        v["expected"] = json!(e);
    }
    v["detail"] = json!(o.detail);
    v
}

/// [`json_value`] on one line (no trailing newline).
pub fn json_line(o: &Observation) -> String {
    json_value(o).to_string()
}

/// All observations as JSON lines (each line ends with a newline).
pub fn json_lines(observations: &[Observation]) -> String {
    observations.iter().map(|o| json_line(o) + "\n").collect()
}

fn verdict(allowed: Option<bool>) -> &'static str {
    match allowed {
        Some(true) => "allowed",
        Some(false) => "denied",
        None => "skipped",
    }
}

fn render(header: &[&str], rows: &[Vec<String>]) -> String {
    let mut widths: Vec<usize> = header.iter().map(|h| h.len()).collect();
    for r in rows {
        for (w, c) in widths.iter_mut().zip(r) {
            *w = (*w).max(c.chars().count());
        }
    }
    let mut out = String::new();
    let mut line = |cells: &[String]| {
        let mut s = String::new();
        for (i, (c, w)) in cells.iter().zip(&widths).enumerate() {
            if i + 1 == cells.len() {
                s.push_str(c);
            } else {
                let _ = write!(s, "{c:<w$}  ");
            }
        }
        out.push_str(s.trim_end());
        out.push('\n');
    };
    line(&header.iter().map(|h| h.to_string()).collect::<Vec<_>>());
    for r in rows {
        line(r);
    }
    out
}

/// A readable table: one row per probe with expected and observed verdicts
/// and `ok` / `MISMATCH` / `skipped`, then a summary line.
pub fn table(observations: &[Observation]) -> String {
    let rows: Vec<Vec<String>> = observations
        .iter()
        .map(|o| {
            let result = match (o.allowed, o.matches_expectation()) {
                (None, _) => "skipped".to_string(),
                (_, Some(true)) => "ok".to_string(),
                (_, Some(false)) => "MISMATCH".to_string(),
                (_, None) => String::new(),
            };
            vec![
                o.probe.from.to_string(),
                o.probe.to.to_string(),
                format!("{}/{}", o.probe.port, protocol_name(o.probe.protocol)),
                o.probe
                    .expected
                    .map(|e| verdict(Some(e)))
                    .unwrap_or("-")
                    .to_string(),
                verdict(o.allowed).to_string(),
                result,
                o.detail.clone(),
            ]
        })
        .collect();
    let mut out = render(
        &[
            "FROM", "TO", "PORT", "EXPECTED", "OBSERVED", "RESULT", "DETAIL",
        ],
        &rows,
    );
    let skipped = observations.iter().filter(|o| o.allowed.is_none()).count();
    let _ = writeln!(
        out,
        "{} probes, {} mismatches, {} skipped",
        observations.len(),
        mismatches(observations),
        skipped
    );
    out
}

/// A before/after table (e.g. without and with Palisade): one row per probe
/// (matched by from, to, port and protocol), the two observed verdicts, the
/// expectation, and `<- changed` on rows whose verdict changed.
pub fn comparison_table(before: &[Observation], after: &[Observation]) -> String {
    let mut order = Vec::new();
    let mut rows: BTreeMap<_, (Option<&Observation>, Option<&Observation>)> = BTreeMap::new();
    for (side, list) in [(0, before), (1, after)] {
        for o in list {
            let key = o.probe.key();
            let entry = rows.entry(key.clone()).or_insert_with(|| {
                order.push(key);
                (None, None)
            });
            if side == 0 {
                entry.0 = Some(o);
            } else {
                entry.1 = Some(o);
            }
        }
    }
    let cell = |o: Option<&Observation>| o.map_or("-", |o| verdict(o.allowed)).to_string();
    let mut changed = 0;
    let table_rows: Vec<Vec<String>> = order
        .iter()
        .filter_map(|k| rows.get(k))
        .map(|(b, a)| {
            let probe = &b.or(*a).map(|o| o.probe.clone());
            let probe = probe.as_ref();
            let expected = b
                .and_then(|o| o.probe.expected)
                .or(a.and_then(|o| o.probe.expected));
            let diff = matches!((b, a), (Some(b), Some(a)) if b.allowed != a.allowed);
            changed += usize::from(diff);
            vec![
                probe.map(|p| p.from.to_string()).unwrap_or_default(),
                probe.map(|p| p.to.to_string()).unwrap_or_default(),
                probe
                    .map(|p| format!("{}/{}", p.port, protocol_name(p.protocol)))
                    .unwrap_or_default(),
                cell(*b),
                cell(*a),
                expected
                    .map(|e| verdict(Some(e)))
                    .unwrap_or("-")
                    .to_string(),
                if diff {
                    "<- changed".into()
                } else {
                    String::new()
                },
            ]
        })
        .collect();
    let mut out = render(
        &["FROM", "TO", "PORT", "BEFORE", "AFTER", "EXPECTED", ""],
        &table_rows,
    );
    let _ = writeln!(out, "{} probes, {changed} changed", table_rows.len());
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::probe::parse_probes;

    fn obs(allowed: &[Option<bool>]) -> Vec<Observation> {
        let probes = parse_probes(
            r#"{"from": "a/x", "to": "a/y", "port": 80, "allowed": true}
{"from": "a/x", "to": "a/y", "port": 81, "allowed": false}
{"from": "a/x", "to": "a/y", "port": 82, "protocol": "SCTP", "allowed": false}"#,
            std::path::Path::new("t"),
        )
        .unwrap();
        probes
            .into_iter()
            .zip(allowed)
            .map(|(probe, a)| Observation {
                probe,
                allowed: *a,
                detail: "d".into(),
            })
            .collect()
    }

    #[test]
    fn mismatches_ignore_skipped() {
        assert_eq!(mismatches(&obs(&[Some(true), Some(false), None])), 0);
        assert_eq!(mismatches(&obs(&[Some(true), Some(true), None])), 1);
        assert_eq!(mismatches(&obs(&[Some(false), Some(true), None])), 2);
    }

    #[test]
    fn json_line_round_trips_through_the_parser() {
        let o = obs(&[Some(false), Some(false), None]);
        let line = json_line(&o[0]);
        let v: Value = serde_json::from_str(&line).unwrap();
        assert_eq!(
            v,
            json!({"from": "a/x", "to": "a/y", "port": 80, "protocol": "TCP",
                   "allowed": false, "expected": true, "detail": "d"})
        );
        let back = parse_probes(&json_lines(&o), std::path::Path::new("t")).unwrap();
        assert_eq!(back[0].expected, Some(false));
        assert_eq!(back[2].expected, None);
    }

    #[test]
    fn tables_mark_mismatches_and_changes() {
        let before = obs(&[Some(true), Some(true), None]);
        let after = obs(&[Some(true), Some(false), None]);
        let t = table(&before);
        assert!(t.contains("MISMATCH"), "{t}");
        assert!(t.ends_with("3 probes, 1 mismatches, 1 skipped\n"), "{t}");
        let c = comparison_table(&before, &after);
        assert_eq!(c.matches("<- changed").count(), 1, "{c}");
        assert!(c.lines().nth(2).unwrap().ends_with("<- changed"), "{c}");
    }
}
