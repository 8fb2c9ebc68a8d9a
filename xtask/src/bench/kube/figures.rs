//! The control-plane figures as both beds measure them: change →
//! enforced (from just before the API write to the agent's log line saying
//! the state holding it is in the maps), the full sync's breakdown from
//! the agent's log, and how they are printed and written.

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use anyhow::{anyhow, bail, Context, Result};
use k8s_openapi::api::networking::v1::NetworkPolicy;
use serde_json::{json, Map, Value};
use testbed::controlplane::{kubelet, sync, ControlPlane};

use crate::bench::stats::percentile;

/// The control-plane figures of one bed.
pub(in crate::bench) struct ControlPlaneFigures {
    /// change→enforced of the pod relabels (ms).
    pub relabel: Vec<f64>,
    /// change→enforced of the policies created (ms).
    pub policy: Vec<f64>,
    /// The full sync.
    pub sync: Sync,
    /// Pods the full sync had to list (the bulk ones).
    pub pods: usize,
    /// Policies it had to list (the bulk ones).
    pub policies: usize,
}

impl ControlPlaneFigures {
    /// Prints them as a table headed `title`, each next to its target.
    pub fn print(&self, title: &str) {
        println!();
        println!("{title}");
        println!("{:<52} {:>10} {:>10}", "figure", "measured", "target");
        let row = |name: &str, v: f64, target: &str| println!("{name:<52} {v:>10.1} {target:>10}");
        for (what, ms) in [("pod relabel", &self.relabel), ("policy add", &self.policy)] {
            row(
                &format!("change→enforced p50 ms ({what})"),
                percentile(ms, 50),
                "",
            );
            row(
                &format!("change→enforced p99 ms ({what})"),
                percentile(ms, 99),
                "< 100",
            );
        }
        let s = &self.sync;
        row(
            &format!(
                "full sync ms ({} pods, {} policies)",
                self.pods, self.policies
            ),
            s.total_ms,
            "< 1000",
        );
        row(
            "  of which: start to eBPF loaded and adopted",
            s.dataplane_ms,
            "",
        );
        row("  of which: the full compile", s.compile_ms, "");
        row("  of which: its write to the maps", s.apply_ms, "");
        if let Some(ms) = s.from_restart_ms {
            row("rollout restart to the new agent's full apply ms", ms, "");
        }
        row(
            "agent RSS MiB (peak, after the full sync)",
            s.rss_mib,
            "< 64",
        );
        if let Some(mib) = s.cgroup_peak_mib {
            row("agent container memory MiB (cgroup peak)", mib, "< 256");
        }
    }

    /// Adds their keys to `out`.
    pub fn insert_json(&self, out: &mut Map<String, Value>) {
        let r = crate::bench::round3;
        let all = [self.relabel.clone(), self.policy.clone()].concat();
        let s = &self.sync;
        out.insert(
            "change_to_enforced_p99_ms".into(),
            json!(r(percentile(&all, 99))),
        );
        for (what, ms) in [("relabel", &self.relabel), ("policy", &self.policy)] {
            for p in [50, 99] {
                out.insert(
                    format!("change_to_enforced_{what}_p{p}_ms"),
                    json!(r(percentile(ms, p))),
                );
            }
        }
        out.insert("full_sync_ms".into(), json!(r(s.total_ms)));
        out.insert("full_sync_dataplane_ms".into(), json!(r(s.dataplane_ms)));
        out.insert("full_sync_compile_ms".into(), json!(r(s.compile_ms)));
        out.insert("full_sync_apply_ms".into(), json!(r(s.apply_ms)));
        out.insert("agent_rss_mib".into(), json!(r(s.rss_mib)));
        if let Some(ms) = s.from_restart_ms {
            out.insert("full_sync_from_restart_ms".into(), json!(r(ms)));
        }
        if let Some(mib) = s.cgroup_peak_mib {
            out.insert("agent_cgroup_peak_mib".into(), json!(r(mib)));
        }
    }
}

/// What the change→enforced samples change.
pub(in crate::bench) struct Subject<'a> {
    /// The namespace of the pod and of the policies created.
    pub namespace: &'a str,
    /// The pod relabelled.
    pub pod: &'a str,
    /// The `app` labels it is given in turn.
    pub apps: [&'a str; 2],
    /// The `app` the policies created select (a default-deny of ingress).
    pub policy_app: &'a str,
}

/// A kind of change.
#[derive(Clone, Copy)]
pub(in crate::bench) enum Change {
    /// The subject pod's `app` label changed.
    Relabel,
    /// A policy created (and deleted again, unmeasured).
    Policy,
}

/// `samples` changes of one kind, each waited for in the agent's log
/// (`read` returns its text so far); their latencies in ms.
pub(in crate::bench) fn change_to_enforced(
    cp: &ControlPlane,
    read: &dyn Fn() -> String,
    subject: &Subject,
    samples: usize,
    change: Change,
) -> Result<Vec<f64>> {
    // The policies there are besides the one each sample adds.
    let base = sync::agent_states(&read())
        .last()
        .map_or(0, |s| s.policies.count);
    let ns = subject.namespace;
    let mut out = Vec::with_capacity(samples);
    for i in 0..samples {
        let before = jiff::Timestamp::now();
        let rv = match change {
            Change::Relabel => {
                let app = subject.apps[i % 2];
                let labels = BTreeMap::from([("app".to_string(), app.to_string())]);
                kubelet::relabel_pod(cp, ns, subject.pod, &labels)?
            }
            // A default-deny policy, created and then deleted (the
            // deletion is waited for too, not measured).
            Change::Policy => {
                let policy: NetworkPolicy = serde_json::from_value(serde_json::json!({
                    "metadata": {"name": format!("bench-{i}"), "namespace": ns},
                    "spec": {"podSelector": {"matchLabels": {"app": subject.policy_app}}, "policyTypes": ["Ingress"]}
                }))?;
                kubelet::apply_policy(cp, &policy)?
            }
        };
        let at = wait_for_state(read, |s| match change {
            Change::Relabel => s.pods.newest >= rv,
            Change::Policy => s.policies.newest >= rv && s.policies.count == base + 1,
        })?;
        out.push(at.duration_since(before).as_secs_f64() * 1000.0);
        if let Change::Policy = change {
            kubelet::delete_policy(cp, ns, &format!("bench-{i}"))?;
            wait_for_state(read, |s| s.policies.count == base && s.policies.newest > rv)?;
        }
    }
    Ok(out)
}

/// Waits for the first state line matching `done` in the agent's log
/// (`read` returns its text; the agent logs one line per applied batch),
/// returns its timestamp.
pub(in crate::bench) fn wait_for_state(
    read: &dyn Fn() -> String,
    done: impl Fn(&sync::ClusterState) -> bool,
) -> Result<jiff::Timestamp> {
    let start = Instant::now();
    loop {
        let text = read();
        if let Some((stamp, _)) = sync::agent_states_timed(&text)
            .into_iter()
            .find(|(_, s)| done(s))
        {
            return stamp
                .parse()
                .with_context(|| format!("agent log timestamp {stamp:?}"));
        }
        if start.elapsed() > Duration::from_secs(60) {
            let last: Vec<String> = sync::agent_states_timed(&text)
                .into_iter()
                .rev()
                .take(3)
                .map(|(t, s)| format!("{t} {s:?}"))
                .collect();
            bail!(
                "the agent did not log the state in 60 s; its last states: {last:#?}\n{}",
                text.lines().rev().take(10).collect::<Vec<_>>().join("\n")
            );
        }
        std::thread::sleep(Duration::from_millis(2));
    }
}

/// A full sync's figures.
pub(in crate::bench) struct Sync {
    /// From the agent's start to the state holding everything applied.
    pub total_ms: f64,
    /// Of which: to its programs and maps ready.
    pub dataplane_ms: f64,
    /// Of which: its full compile.
    pub compile_ms: f64,
    /// Of which: that compile's write to the maps.
    pub apply_ms: f64,
    /// Peak resident memory of the agent's process.
    pub rss_mib: f64,
    /// On real nodes: from `kubectl rollout restart` to the same state.
    pub from_restart_ms: Option<f64>,
    /// On real nodes: the agent container's cgroup memory peak.
    pub cgroup_peak_mib: Option<f64>,
}

/// The new agent's own figures in its log `text` (which may hold an
/// earlier agent's lines before): from `started` to its "dataplane
/// ready" line, and its full compile's time and write.
pub(in crate::bench) fn sync_breakdown(text: &str, started: jiff::Timestamp) -> (f64, f64, f64) {
    // The new agent's log: from its last "dataplane ready" line on.
    let since_ready = text
        .rfind(sync::AGENT_DATAPLANE_READY_LOG)
        .map_or("", |at| {
            &text[text[..at].rfind('\n').map_or(0, |n| n + 1)..]
        });
    let ready_ms = since_ready
        .lines()
        .next()
        .and_then(|l| sync::log_stamp(l).parse::<jiff::Timestamp>().ok())
        .map_or(f64::NAN, |t| {
            t.duration_since(started).as_secs_f64() * 1000.0
        });
    let (compile_ms, apply_ms) = since_ready
        .lines()
        .rfind(|l| l.contains(sync::AGENT_FULL_COMPILE_LOG))
        .map(|l| {
            let field = |k: &str| sync::log_number(l, k).unwrap_or(f64::NAN);
            (field("compile_ms"), field("apply_ms"))
        })
        .unwrap_or((f64::NAN, f64::NAN));
    (ready_ms, compile_ms, apply_ms)
}

/// Process `pid`'s peak resident memory (`VmHWM`), in MiB.
pub(in crate::bench) fn peak_rss_mib(pid: u32) -> Result<f64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status"))?;
    let hwm_kib: f64 = status
        .lines()
        .find_map(|l| l.strip_prefix("VmHWM:"))
        .and_then(|v| v.split_whitespace().next()?.parse().ok())
        .ok_or_else(|| anyhow!("no VmHWM in /proc/{pid}/status"))?;
    Ok(hwm_kib / 1024.0)
}
