//! `simulate -o html`: one self-contained page (inline CSS and script, no
//! fetch of anything) with the verdict matrix per port: a row per source, a
//! column per destination, each cell allowed or denied, the policies
//! involved in its title (shown on hover), and for a what-if the cells
//! whose verdict the change makes differ highlighted, with both verdicts.
//!
//! The page's script counts the cells as the browser rendered them and
//! writes the counts into the page (`#count-allowed`, `#count-denied`,
//! `#count-changed`, `"?"` until it ran), so a headless browser's DOM
//! shows both that the page rendered and what it holds.

use std::collections::{BTreeMap, BTreeSet};
use std::io::Write;

use super::simulate::{ProbeResult, Simulation};
use crate::model::{Direction, Protocol};

/// One cell's verdict in one state.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct CellVerdict {
    /// Whether the connection passes.
    pub allowed: bool,
    /// The short reason (`ingress:no-rule`, ...).
    pub reason: String,
    /// The policies involved, a line per end: which isolate it and which
    /// rule allows the connection.
    pub involved: Vec<String>,
}

impl CellVerdict {
    /// The verdict of `r`, judged in `sim`, with the policies involved.
    pub fn of(sim: &Simulation, r: &ProbeResult) -> Self {
        CellVerdict {
            allowed: r.allowed(),
            reason: r.reason(),
            involved: involved(sim, r),
        }
    }
}

/// One probe in the matrix.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Cell {
    /// Source as written.
    pub from: String,
    /// Destination as written.
    pub to: String,
    /// Destination port.
    pub port: u16,
    /// Protocol.
    pub protocol: Protocol,
    /// The verdict (after the change, for a what-if); `None` when the
    /// probe cannot be judged in that state (a pod the change removes).
    pub after: Option<CellVerdict>,
    /// For a what-if: the verdict before the change (`None`: not judged
    /// then, or not a what-if).
    pub before: Option<CellVerdict>,
}

impl Cell {
    /// A cell for `r`, judged in `sim` (no what-if).
    pub fn judged(sim: &Simulation, r: &ProbeResult) -> Self {
        Cell {
            from: r.probe.from.to_string(),
            to: r.probe.to.to_string(),
            port: r.probe.port,
            protocol: r.probe.protocol,
            after: Some(CellVerdict::of(sim, r)),
            before: None,
        }
    }

    /// Whether the verdict differs before and after (both judged).
    pub fn changed(&self) -> bool {
        matches!((&self.before, &self.after), (Some(b), Some(a)) if a.allowed != b.allowed)
    }
}

/// The policies involved in `r`, a line per end that is a pod.
fn involved(sim: &Simulation, r: &ProbeResult) -> Vec<String> {
    let c = &r.connection;
    let mut lines = Vec::new();
    for (dir, pod, verdict) in [
        (Direction::Egress, &c.src_pod, c.egress),
        (Direction::Ingress, &c.dst_pod, c.ingress),
    ] {
        let Some(pod) = pod else {
            continue;
        };
        let Some(v) = verdict else {
            lines.push(format!("{dir} of {pod}: not enforced (hostNetwork)"));
            continue;
        };
        let isolating = sim.isolating(pod, dir);
        if isolating.is_empty() {
            lines.push(format!("{dir} of {pod}: not isolated"));
            continue;
        }
        let by: Vec<String> = isolating.iter().map(ToString::to_string).collect();
        let what = if v.allowed {
            match v.rule.and_then(|id| sim.compiled.rules.get(&id)) {
                Some(rule) => format!("allowed by {rule}"),
                None => "allowed".into(),
            }
        } else {
            format!("no rule matches ({})", v.reason)
        };
        lines.push(format!(
            "{dir} of {pod}: isolated by {}; {what}",
            by.join(", ")
        ));
    }
    lines
}

/// The page.
#[derive(Clone, Debug, Default)]
pub struct Page {
    /// Heading and `<title>`.
    pub title: String,
    /// Whether this is a what-if (a legend for changed cells, both
    /// verdicts in them).
    pub whatif: bool,
    /// Every probe judged.
    pub cells: Vec<Cell>,
    /// Lines shown under the heading (warnings).
    pub notes: Vec<String>,
}

const STYLE: &str = "
body { font: 14px/1.4 system-ui, sans-serif; margin: 1.5em; color: #222; }
h1 { font-size: 1.4em; } h2 { font-size: 1.1em; margin-top: 1.5em; }
table { border-collapse: collapse; }
th, td { border: 1px solid #ccc; padding: 2px 6px; text-align: center; }
th.from { text-align: right; font-weight: normal; }
th.to { writing-mode: vertical-rl; transform: rotate(180deg); font-weight: normal; }
td.allowed { background: #d8f3dc; }
td.denied { background: #ffccd5; }
td.changed { outline: 3px solid #f4a261; outline-offset: -3px; font-weight: bold; }
td.none { color: #aaa; }
#counts span { font-weight: bold; }
.notes { color: #8a5a00; }
";

/// Counts the cells as rendered and writes the counts into the page.
const SCRIPT: &str = "
(function () {
  var n = function (sel) { return document.querySelectorAll(sel).length; };
  document.getElementById('count-allowed').textContent = n('td.cell.allowed');
  document.getElementById('count-denied').textContent = n('td.cell.denied');
  document.getElementById('count-changed').textContent = n('td.cell.changed');
  document.body.setAttribute('data-counted', 'yes');
})();
";

/// Escapes text for HTML content and attribute values.
pub fn escape(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for ch in s.chars() {
        match ch {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '"' => out.push_str("&quot;"),
            '\'' => out.push_str("&#39;"),
            c => out.push(c),
        }
    }
    out
}

fn word(allowed: bool) -> &'static str {
    if allowed {
        "allowed"
    } else {
        "denied"
    }
}

fn mark(allowed: bool) -> &'static str {
    if allowed {
        "\u{2713}"
    } else {
        "\u{2717}"
    }
}

impl Cell {
    /// The cell's `<td>`.
    fn td(&self) -> String {
        let head = format!(
            "{} -> {} on {}/{}",
            self.from, self.to, self.port, self.protocol
        );
        let Some(after) = &self.after else {
            return format!(
                "<td class=\"none\" title=\"{}\">&ndash;</td>",
                escape(&format!("{head}: not judged after the change"))
            );
        };
        let mut title = vec![format!(
            "{head}: {} ({})",
            word(after.allowed).to_uppercase(),
            after.reason
        )];
        title.extend(after.involved.iter().cloned());
        let mut class = format!("cell {}", word(after.allowed));
        let mut text = mark(after.allowed).to_string();
        if let Some(before) = &self.before {
            title.push(format!(
                "before the change: {} ({})",
                word(before.allowed),
                before.reason
            ));
            if self.changed() {
                class.push_str(" changed");
                text = format!("{}&rarr;{}", mark(before.allowed), mark(after.allowed));
                title.extend(before.involved.iter().map(|l| format!("before: {l}")));
            }
        }
        format!(
            "<td class=\"{class}\" title=\"{}\">{text}</td>",
            escape(&title.join("\n"))
        )
    }
}

/// One port's cells by (from, to).
type PortCells<'a> = BTreeMap<(&'a str, &'a str), &'a Cell>;

impl Page {
    /// Writes the page.
    pub fn write(&self, out: &mut impl Write) -> std::io::Result<()> {
        let mut by_port: BTreeMap<(u16, Protocol), PortCells<'_>> = BTreeMap::new();
        for c in &self.cells {
            by_port
                .entry((c.port, c.protocol))
                .or_default()
                .insert((&c.from, &c.to), c);
        }
        let title = escape(&self.title);
        writeln!(
            out,
            "<!DOCTYPE html>\n<html lang=\"en\"><head><meta charset=\"utf-8\">"
        )?;
        writeln!(
            out,
            "<title>{title}</title><style>{STYLE}</style></head><body>"
        )?;
        writeln!(out, "<h1>{title}</h1>")?;
        for n in &self.notes {
            writeln!(out, "<p class=\"notes\">warning: {}</p>", escape(n))?;
        }
        let legend = if self.whatif {
            "&#x2713; allowed, &#x2717; denied after the change; outlined cells change \
             (before&rarr;after). Hover a cell for the policies involved."
        } else {
            "&#x2713; allowed, &#x2717; denied, &ndash; not probed. Hover a cell for the \
             policies involved."
        };
        writeln!(out, "<p>Rows: from; columns: to. {legend}</p>")?;
        writeln!(
            out,
            "<p id=\"counts\">allowed <span id=\"count-allowed\">?</span>, denied \
             <span id=\"count-denied\">?</span>, changed <span id=\"count-changed\">?</span> \
             of {} probe(s)</p>",
            self.cells.len()
        )?;
        for ((port, proto), cells) in &by_port {
            // Only the ends this port's probes name.
            let rows: BTreeSet<&str> = cells.keys().map(|(f, _)| *f).collect();
            let cols: BTreeSet<&str> = cells.keys().map(|(_, t)| *t).collect();
            writeln!(
                out,
                "<section class=\"port\" data-port=\"{port}/{proto}\"><h2>{port}/{proto}</h2><table>"
            )?;
            write!(out, "<tr><th></th>")?;
            for to in &cols {
                write!(out, "<th class=\"to\">{}</th>", escape(to))?;
            }
            writeln!(out, "</tr>")?;
            for from in &rows {
                write!(out, "<tr><th class=\"from\">{}</th>", escape(from))?;
                for to in &cols {
                    match cells.get(&(*from, *to)) {
                        Some(c) => write!(out, "{}", c.td())?,
                        None => write!(out, "<td class=\"none\">&ndash;</td>")?,
                    }
                }
                writeln!(out, "</tr>")?;
            }
            writeln!(out, "</table></section>")?;
        }
        writeln!(out, "<script>{SCRIPT}</script>\n</body></html>")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cell(from: &str, to: &str, after: bool, before: Option<bool>) -> Cell {
        let v = |allowed: bool| CellVerdict {
            allowed,
            reason: "r".into(),
            involved: vec!["ingress of x/<a>: isolated by x/p; no rule matches".into()],
        };
        Cell {
            from: from.into(),
            to: to.into(),
            port: 80,
            protocol: Protocol::Tcp,
            after: Some(v(after)),
            before: before.map(v),
        }
    }

    #[test]
    fn cells_carry_their_class_title_and_change() {
        let page = Page {
            title: "t <&>".into(),
            whatif: true,
            cells: vec![
                cell("x/b", "x/a", false, Some(true)),
                cell("x/a", "x/b", true, Some(true)),
            ],
            notes: vec![],
        };
        let mut out = Vec::new();
        page.write(&mut out).unwrap();
        let text = String::from_utf8(out).unwrap();
        assert!(text.contains("<title>t &lt;&amp;&gt;</title>"), "{text}");
        assert_eq!(text.matches("class=\"cell denied changed\"").count(), 1);
        assert_eq!(text.matches("class=\"cell allowed\"").count(), 1);
        // The policies involved, escaped, in the title.
        assert!(
            text.contains("ingress of x/&lt;a&gt;: isolated by x/p"),
            "{text}"
        );
        assert!(text.contains("before the change: allowed"), "{text}");
        // Nothing is fetched: no external reference at all.
        for external in ["src=", "href=", "http:", "https:", "@import", "url("] {
            assert!(!text.contains(external), "{external} in {text}");
        }
    }
}
