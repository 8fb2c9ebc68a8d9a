//! The SVG plot: per-verdict cost and connection rate against the number
//! of ipBlock CIDRs, log-scaled, one line per enforcer.

use std::fmt::Write as _;

use super::datapath::Enforcer;
use super::{SweepPoint, Verdict};

const W: f64 = 460.0;
const H: f64 = 320.0;
const PAD: f64 = 56.0;

/// A line of a panel.
struct Series {
    name: String,
    colour: &'static str,
    points: Vec<(f64, f64)>,
}

fn colour(e: Enforcer) -> &'static str {
    match e {
        Enforcer::None => "#888888",
        Enforcer::Palisade => "#1f5fbf",
        Enforcer::Iptables => "#c0392b",
        Enforcer::Ipset => "#e69500",
    }
}

/// Both panels side by side.
pub fn svg(verdicts: &[Verdict], sweep: &[SweepPoint]) -> String {
    let cidrs: Vec<&Verdict> = verdicts.iter().filter(|v| v.swept == "cidrs").collect();
    let verdict_series = vec![
        Series {
            name: "palisade, new flow".into(),
            colour: colour(Enforcer::Palisade),
            points: cidrs.iter().map(|v| (v.n as f64, v.new_flow_ns)).collect(),
        },
        Series {
            name: "palisade, established".into(),
            colour: "#6fa8dc",
            points: cidrs
                .iter()
                .map(|v| (v.n as f64, v.established_ns))
                .collect(),
        },
    ];
    let rate_series = Enforcer::ALL
        .iter()
        .map(|&e| Series {
            name: e.name().into(),
            colour: colour(e),
            points: sweep
                .iter()
                .filter_map(|p| {
                    p.rates
                        .iter()
                        .find(|(x, _)| *x == e)
                        .map(|(_, r)| (p.cidrs as f64, *r))
                })
                .collect(),
        })
        .collect::<Vec<_>>();
    let mut s = String::new();
    let _ = writeln!(
        s,
        r#"<svg xmlns="http://www.w3.org/2000/svg" width="{}" height="{H}" font-family="sans-serif" font-size="11">"#,
        2.0 * W
    );
    let _ = writeln!(s, r#"<rect width="100%" height="100%" fill="white"/>"#);
    panel(
        &mut s,
        0.0,
        "ns per verdict (BPF_PROG_TEST_RUN)",
        &verdict_series,
    );
    panel(&mut s, W, "connections per second", &rate_series);
    s.push_str("</svg>\n");
    s
}

fn panel(s: &mut String, x0: f64, title: &str, series: &[Series]) {
    let pts = || series.iter().flat_map(|l| l.points.iter());
    let (xmin, xmax) = pts().fold((f64::MAX, f64::MIN), |(a, b), p| (a.min(p.0), b.max(p.0)));
    let ymax = pts().fold(0.0f64, |m, p| m.max(p.1)) * 1.15;
    if !(xmin > 0.0 && xmax > xmin && ymax > 0.0) {
        let _ = writeln!(
            s,
            r#"<text x="{}" y="{}">{title}: no data</text>"#,
            x0 + PAD,
            H / 2.0
        );
        return;
    }
    let (lx0, lx1) = (xmin.log10(), xmax.log10());
    let px = |x: f64| x0 + PAD + (x.log10() - lx0) / (lx1 - lx0) * (W - 2.0 * PAD);
    let py = |y: f64| H - PAD - y / ymax * (H - 2.0 * PAD);
    let _ = writeln!(
        s,
        r#"<text x="{}" y="20" font-size="13">{title}</text>"#,
        x0 + PAD
    );
    let _ = writeln!(
        s,
        r##"<path d="M{a},{b} V{c} H{d}" fill="none" stroke="#333"/>"##,
        a = x0 + PAD,
        b = PAD,
        c = H - PAD,
        d = x0 + W - PAD
    );
    let mut decade = 10f64.powf(lx0.floor());
    while decade <= xmax * 1.0001 {
        if decade >= xmin * 0.9999 {
            let x = px(decade);
            let _ = writeln!(
                s,
                r#"<text x="{x}" y="{}" text-anchor="middle">{}</text>"#,
                H - PAD + 16.0,
                human(decade)
            );
        }
        decade *= 10.0;
    }
    let _ = writeln!(
        s,
        r#"<text x="{}" y="{}" text-anchor="middle">ipBlock CIDRs in the policy</text>"#,
        x0 + W / 2.0,
        H - PAD + 34.0
    );
    for i in 0..=4 {
        let y = ymax / 4.0 * f64::from(i);
        let _ = writeln!(
            s,
            r#"<text x="{}" y="{}" text-anchor="end">{}</text>"#,
            x0 + PAD - 6.0,
            py(y) + 4.0,
            human(y)
        );
    }
    for (i, l) in series.iter().enumerate() {
        if l.points.is_empty() {
            continue;
        }
        let d: Vec<String> = l
            .points
            .iter()
            .map(|&(x, y)| format!("{:.1},{:.1}", px(x), py(y)))
            .collect();
        let _ = writeln!(
            s,
            r#"<polyline points="{}" fill="none" stroke="{}" stroke-width="2"/>"#,
            d.join(" "),
            l.colour
        );
        for &(x, y) in &l.points {
            let _ = writeln!(
                s,
                r#"<circle cx="{:.1}" cy="{:.1}" r="3" fill="{}"/>"#,
                px(x),
                py(y),
                l.colour
            );
        }
        let ly = PAD + 4.0 + 14.0 * i as f64;
        let _ = writeln!(
            s,
            r#"<text x="{}" y="{ly}" fill="{}">{}</text>"#,
            x0 + W - PAD - 130.0,
            l.colour,
            l.name
        );
    }
}

/// 10, 10k, 1M, 1.5k …
fn human(v: f64) -> String {
    if v >= 1e6 {
        format!("{}M", trim(v / 1e6))
    } else if v >= 1e3 {
        format!("{}k", trim(v / 1e3))
    } else {
        trim(v)
    }
}

fn trim(v: f64) -> String {
    let s = format!("{v:.1}");
    s.strip_suffix(".0").map_or(s.clone(), str::to_string)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_plot_has_a_line_per_enforcer_with_data() {
        let v = |n, ns| Verdict {
            swept: "cidrs".into(),
            n,
            new_flow_ns: ns,
            established_ns: ns / 2.0,
            empty_ns: 10.0,
        };
        let sweep = vec![
            SweepPoint {
                cidrs: 10,
                rates: vec![(Enforcer::None, 3000.0), (Enforcer::Iptables, 2900.0)],
            },
            SweepPoint {
                cidrs: 10_000,
                rates: vec![(Enforcer::None, 3000.0), (Enforcer::Iptables, 900.0)],
            },
        ];
        let s = svg(&[v(10, 100.0), v(1_000_000, 120.0)], &sweep);
        assert_eq!(s.matches("<polyline").count(), 4);
        assert!(s.contains(">1M<") && s.contains(">10k<"));
        assert_eq!(human(1500.0), "1.5k");
    }
}
