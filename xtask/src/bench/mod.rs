//! `cargo xtask bench`: Palisade next to no enforcement and to two
//! iptables enforcers, every figure a ratio against a baseline measured in
//! the same run, variants interleaved and medians reported.
//!
//! Sections (all by default, or one with `--only`):
//! - `datapath`: two pods through the test bed — iperf3 throughput,
//!   sockperf ping-pong p50/p99, connection rate (see [`datapath`]);
//! - `sweep`: the connection rate as the policy grows to 10, 10,000 and
//!   1,000,000 ipBlock CIDRs, and the cost of one verdict in the kernel as
//!   CIDRs, policy entries and identities grow (`policy-agent`'s
//!   `verdict_sweep` benchmark);
//! - `cni`: CNI ADD latency with and without `palisade-cni` in the chain;
//! - `compile`: what one tenant's large ipBlock policy costs the compiler
//!   (time and peak memory of the release `simulate`, R up to 10,000, the
//!   merged and the per-port variant; see [`compile_cost`]);
//! - `kube`: against the real control plane, through a ClusterIP with
//!   kube-proxy's DNAT in the path, and the control-plane figures
//!   (change → enforced, full sync, agent memory), with the played kubelet
//!   and again on a real node with the agent in its DaemonSet pod
//!   (`--runtime` picks one; see [`kube`]).
//!
//! Results: a table on stdout, `--json FILE` with the keys the README
//! lists, `--plot FILE` an SVG of verdict cost and connection rate against
//! the number of CIDRs.

mod cluster;
mod cni;
mod compile_cost;
mod datapath;
pub mod kube;
mod load;
mod plot;
mod rules;
mod samples;
mod stats;

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use anyhow::{anyhow, Context, Result};
use clap::ValueEnum;
use serde_json::{json, Map, Value};

use datapath::{Enforcer, Lanes};
use samples::{Rounds, Sample};
use stats::percentile;

/// A section of the benchmarks.
#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub enum Section {
    /// Throughput, latency and connection rate between two pods.
    Datapath,
    /// Connection rate and verdict cost against policy size.
    Sweep,
    /// CNI ADD latency.
    Cni,
    /// Compile time and memory of one tenant's large ipBlock policy.
    Compile,
    /// Through a ClusterIP, and the control-plane figures.
    Kube,
}

/// What to run.
pub struct Options {
    /// Fewer rounds, shorter runs, smaller clusters.
    pub quick: bool,
    /// Only this section.
    pub only: Option<Section>,
    /// Where to write the JSON figures.
    pub json: Option<PathBuf>,
    /// Where to write the SVG plot.
    pub plot: Option<PathBuf>,
    /// The kube section's bed (`None`: both, the played one first).
    pub runtime: Option<crate::Runtime>,
}

/// Sizes of one run.
struct Plan {
    rounds: usize,
    secs: u32,
    cidr_steps: Vec<usize>,
    cni_pods: usize,
}

impl Plan {
    fn new(quick: bool) -> Self {
        if quick {
            Plan {
                rounds: 4,
                secs: 1,
                cidr_steps: vec![10, 10_000, 100_000],
                cni_pods: 50,
            }
        } else {
            Plan {
                rounds: 5,
                secs: 2,
                cidr_steps: vec![10, 10_000, 1_000_000],
                cni_pods: 200,
            }
        }
    }
}

/// A comparator whose rules take longer than this to load is left out of
/// the larger sweep steps.
const RULE_LOAD_LIMIT: Duration = Duration::from_secs(60);

/// `policy-agent`'s benchmark target that times single verdicts.
pub const VERDICT_SWEEP: &str = "verdict_sweep";

/// Runs the benchmarks; `verdict_sweep` is the built [`VERDICT_SWEEP`]
/// executable. Each section's wall time is printed after it, and the
/// whole run's at the end.
pub fn run(bin_dir: &Path, verdict_sweep: &Path, opts: &Options) -> Result<()> {
    testbed::install_signal_cleanup().context("cannot install the Ctrl-C cleanup")?;
    let started = Instant::now();
    let plan = Plan::new(opts.quick);
    let wants = |s: Section| opts.only.is_none_or(|o| o == s);
    let mut out = Map::new();
    let mut sweep_points = Vec::new();
    if wants(Section::Datapath) || wants(Section::Sweep) || wants(Section::Cni) {
        let mut clock = Instant::now();
        let mut lanes = Lanes::start(bin_dir, plan.cidr_steps[0])?;
        took("bed set-up", &mut clock);
        if wants(Section::Datapath) {
            let m = lanes.measure(plan.rounds, plan.secs, true)?;
            datapath_figures(&m, &mut out);
            print_samples(
                "two pods, one node (medians; median ratio to no enforcement, round by round)",
                &m,
                "none",
            );
            took("datapath", &mut clock);
        }
        if wants(Section::Cni) {
            let (with, without, logged) = lanes.time_cni_adds(plan.cni_pods)?;
            cni::figures(&with, &without, &mut out);
            let netlink_logged = cni::netlink_mode(bin_dir, plan.cni_pods, &mut out)?;
            cni::agent_breakdown(&logged, "cni_add_agent_us", &mut out);
            cni::agent_breakdown(&netlink_logged, "cni_add_agent_netlink_us", &mut out);
            took("cni", &mut clock);
        }
        if wants(Section::Sweep) {
            sweep_points = sweep(&mut lanes, &plan, &mut out)?;
            took("connection-rate sweep", &mut clock);
        }
    }
    if wants(Section::Sweep) {
        let mut clock = Instant::now();
        let verdicts = run_verdict_sweep(verdict_sweep, opts.quick)?;
        print_verdicts(&verdicts);
        out.insert("per_verdict_ns".into(), per_verdict_json(&verdicts));
        if let Some(path) = &opts.plot {
            std::fs::write(path, plot::svg(&verdicts, &sweep_points))
                .with_context(|| format!("writing {}", path.display()))?;
            println!("plot: {}", path.display());
        }
        took("verdict sweep", &mut clock);
    }
    if wants(Section::Compile) {
        let mut clock = Instant::now();
        compile_cost::run(bin_dir, opts.quick, &mut out)?;
        took("compile cost", &mut clock);
    }
    if wants(Section::Kube) {
        let mut clock = Instant::now();
        kube::run(
            bin_dir,
            opts.quick,
            &plan_kube(&plan),
            opts.runtime,
            &mut out,
        )?;
        took("kube", &mut clock);
    }
    let text = serde_json::to_string_pretty(&Value::Object(out))?;
    if let Some(path) = &opts.json {
        std::fs::write(path, &text).with_context(|| format!("writing {}", path.display()))?;
        println!("figures: {}", path.display());
    } else {
        println!("{text}");
    }
    eprintln!(
        "bench: done in {:.0} s (the build before it not counted)",
        started.elapsed().as_secs_f64()
    );
    Ok(())
}

/// Prints the time since `clock` against `what` and restarts it.
fn took(what: &str, clock: &mut Instant) {
    eprintln!("bench: {what} took {:.0} s", clock.elapsed().as_secs_f64());
    *clock = Instant::now();
}

fn plan_kube(plan: &Plan) -> kube::Plan {
    kube::Plan {
        rounds: plan.rounds,
        secs: plan.secs,
    }
}

/// The enforcers other than the baseline, as JSON object keys, each with
/// its ratio to the baseline ([`Rounds::ratio`]).
fn per_enforcer(m: &Rounds, f: impl Fn(&Sample) -> f64 + Copy) -> Value {
    let mut o = Map::new();
    for e in m.0.keys() {
        if *e != Enforcer::None {
            o.insert(e.name().into(), json!(round3(m.ratio(*e, f))));
        }
    }
    Value::Object(o)
}

/// Rounded to three decimals (NaN becomes null in JSON).
fn round3(v: f64) -> f64 {
    (v * 1000.0).round() / 1000.0
}

/// The four ratio keys of `m` (each enforcer against `none`).
fn ratio_figures(m: &Rounds, out: &mut Map<String, Value>) {
    out.insert("throughput_ratio".into(), per_enforcer(m, |s| s.throughput));
    out.insert("rr_p50_ratio".into(), per_enforcer(m, |s| s.rr_p50));
    out.insert("rr_p99_ratio".into(), per_enforcer(m, |s| s.rr_p99));
    out.insert("conn_rate_ratio".into(), per_enforcer(m, |s| s.conn_rate));
}

fn datapath_figures(m: &Rounds, out: &mut Map<String, Value>) {
    ratio_figures(m, out);
    let mut raw = Map::new();
    for (e, s) in &m.medians() {
        raw.insert(
            e.name().into(),
            json!({
                "throughput_gbps": round3(s.throughput),
                "rr_p50_us": round3(s.rr_p50),
                "rr_p99_us": round3(s.rr_p99),
                "conn_per_s": s.conn_rate.round(),
                "conn_p50_us": round3(percentile(&s.conn_latencies, 50)),
                "conn_p99_us": round3(percentile(&s.conn_latencies, 99)),
            }),
        );
    }
    out.insert("datapath".into(), Value::Object(raw));
}

/// A table of `m`'s medians, each with its ratio to the baseline
/// (`Enforcer::None`, shown as `baseline`; [`Rounds::ratio`]).
fn print_samples(title: &str, m: &Rounds, baseline: &str) {
    println!();
    println!("{title}");
    println!(
        "{:<10} {:>16} {:>16} {:>16} {:>18} {:>14}",
        "enforcer", "Gbit/s", "rr p50 µs", "rr p99 µs", "connections/s", "conn p99 µs"
    );
    for (e, s) in &m.medians() {
        let r = |v: f64, f: fn(&Sample) -> f64| format!("{v:.1} ({:.2})", m.ratio(*e, f));
        let name = if *e == Enforcer::None {
            baseline
        } else {
            e.name()
        };
        println!(
            "{:<10} {:>16} {:>16} {:>16} {:>18} {:>14.0}",
            name,
            r(s.throughput, |s| s.throughput),
            r(s.rr_p50, |s| s.rr_p50),
            r(s.rr_p99, |s| s.rr_p99),
            format!("{:.0} ({:.2})", s.conn_rate, m.ratio(*e, |s| s.conn_rate)),
            percentile(&s.conn_latencies, 99)
        );
    }
}

/// One step of the connection-rate sweep, for the plot.
pub struct SweepPoint {
    /// CIDRs in the policy.
    pub cidrs: usize,
    /// Connections per second, per enforcer (absent: skipped).
    pub rates: Vec<(Enforcer, f64)>,
}

fn sweep(lanes: &mut Lanes, plan: &Plan, out: &mut Map<String, Value>) -> Result<Vec<SweepPoint>> {
    let mut points = Vec::new();
    let mut steps = Map::new();
    println!();
    println!("connection rate against ipBlock CIDRs (medians; median ratio to no enforcement, round by round)");
    println!(
        "{:>10} {:>18} {:>18} {:>18} {:>18}",
        "CIDRs", "none", "palisade", "iptables", "ipset"
    );
    for (i, &cidrs) in plan.cidr_steps.iter().enumerate() {
        let loads = if i == 0 {
            Default::default()
        } else {
            lanes.set_cidrs(cidrs, RULE_LOAD_LIMIT)?
        };
        let rounds = lanes.measure(plan.rounds, plan.secs, false)?;
        let m = rounds.medians();
        let mut row = format!("{cidrs:>10}");
        let mut step = Map::new();
        let mut rates = Vec::new();
        for e in Enforcer::ALL {
            match m.get(&e) {
                Some(s) => {
                    row += &format!(
                        " {:>18}",
                        format!(
                            "{:.0} ({:.2})",
                            s.conn_rate,
                            rounds.ratio(e, |s| s.conn_rate)
                        )
                    );
                    rates.push((e, s.conn_rate));
                    let mut o = json!({
                        "conn_per_s": s.conn_rate.round(),
                        "conn_rate_ratio": round3(rounds.ratio(e, |s| s.conn_rate)),
                        "conn_p99_us": round3(percentile(&s.conn_latencies, 99)),
                    });
                    if let Some(t) = loads.get(&e) {
                        o["load_s"] = json!(round3(*t));
                    }
                    step.insert(e.name().into(), o);
                }
                None => {
                    row += &format!(" {:>18}", "skipped");
                    if let Some(why) = lanes.skipped(e) {
                        step.insert(e.name().into(), json!({ "skipped": why }));
                    }
                }
            }
        }
        println!("{row}");
        steps.insert(format!("cidrs_{cidrs}"), Value::Object(step));
        points.push(SweepPoint { cidrs, rates });
    }
    out.insert("conn_rate_sweep".into(), Value::Object(steps));
    Ok(points)
}

/// One line of `verdict_sweep`'s output.
#[derive(Clone, Debug, serde::Deserialize)]
pub struct Verdict {
    /// `cidrs`, `entries` or `identities`.
    pub swept: String,
    /// Its size at this step.
    pub n: u64,
    /// A denied new flow, judged in full (ns, test-run overhead removed).
    pub new_flow_ns: f64,
    /// A packet of an established flow (ns).
    pub established_ns: f64,
    /// The empty classifier's cost that was subtracted (ns).
    pub empty_ns: f64,
}

fn run_verdict_sweep(exe: &Path, quick: bool) -> Result<Vec<Verdict>> {
    let mut c = std::process::Command::new(exe);
    if quick {
        c.arg("--quick");
    }
    eprintln!("$ {}{}", exe.display(), if quick { " --quick" } else { "" });
    let out = c
        .stderr(std::process::Stdio::inherit())
        .output()
        .with_context(|| format!("cannot run {}", exe.display()))?;
    if !out.status.success() {
        return Err(anyhow!("{VERDICT_SWEEP} failed ({})", out.status));
    }
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .filter(|l| l.starts_with('{'))
        .map(|l| serde_json::from_str(l).with_context(|| format!("{VERDICT_SWEEP} line {l:?}")))
        .collect()
}

fn per_verdict_json(v: &[Verdict]) -> Value {
    let mut o = Map::new();
    for s in v {
        o.insert(
            format!("{}_{}", s.swept, s.n),
            json!({
                "palisade": round3(s.new_flow_ns),
                "palisade_established": round3(s.established_ns),
                "empty_classifier": round3(s.empty_ns),
            }),
        );
    }
    Value::Object(o)
}

fn print_verdicts(v: &[Verdict]) {
    println!();
    println!("one verdict of the ingress program (BPF_PROG_TEST_RUN, an empty classifier's cost subtracted)");
    println!(
        "{:<12} {:>10} {:>16} {:>16} {:>18}",
        "swept", "n", "new flow ns", "established ns", "(subtracted ns)"
    );
    for s in v {
        println!(
            "{:<12} {:>10} {:>16.1} {:>16.1} {:>18.1}",
            s.swept, s.n, s.new_flow_ns, s.established_ns, s.empty_ns
        );
    }
}
