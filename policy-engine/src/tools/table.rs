//! Plain-text tables with a header line, columns padded to the widest
//! cell (as `kubectl get`), and YAML/JSON rendering of tool results.

use std::io::Write;

use serde_json::Value;

/// Writes `rows` under `headers`, two spaces between columns, trailing
/// blanks trimmed.
pub fn write(out: &mut impl Write, headers: &[&str], rows: &[Vec<String>]) -> std::io::Result<()> {
    let mut widths: Vec<usize> = headers.iter().map(|h| h.len()).collect();
    for row in rows {
        for (i, cell) in row.iter().enumerate() {
            if let Some(w) = widths.get_mut(i) {
                *w = (*w).max(cell.chars().count());
            }
        }
    }
    let line = |cells: &mut dyn Iterator<Item = &str>| {
        let mut s = String::new();
        for (i, c) in cells.enumerate() {
            if i > 0 {
                s.push_str("  ");
            }
            s.push_str(c);
            let pad = widths
                .get(i)
                .copied()
                .unwrap_or(0)
                .saturating_sub(c.chars().count());
            s.push_str(&" ".repeat(pad));
        }
        s.trim_end().to_string()
    };
    writeln!(out, "{}", line(&mut headers.iter().copied()))?;
    for row in rows {
        writeln!(out, "{}", line(&mut row.iter().map(String::as_str)))?;
    }
    Ok(())
}

/// Writes `value` as YAML (a document).
pub fn write_yaml(out: &mut impl Write, value: &Value) -> std::io::Result<()> {
    let text = serde_norway::to_string(value).map_err(std::io::Error::other)?;
    out.write_all(text.as_bytes())
}

/// Writes `value` as pretty JSON, one document.
pub fn write_json(out: &mut impl Write, value: &Value) -> std::io::Result<()> {
    let text = serde_json::to_string_pretty(value).map_err(std::io::Error::other)?;
    writeln!(out, "{text}")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn columns_line_up_under_headers() {
        let mut out = Vec::new();
        write(
            &mut out,
            &["FROM", "TO", "VERDICT"],
            &[
                vec!["x/a".into(), "x/bbbbbb".into(), "allowed".into()],
                vec!["x/cccccc".into(), "x/d".into(), "".into()],
            ],
        )
        .unwrap();
        assert_eq!(
            String::from_utf8(out).unwrap(),
            "FROM      TO        VERDICT\nx/a       x/bbbbbb  allowed\nx/cccccc  x/d\n"
        );
    }
}
