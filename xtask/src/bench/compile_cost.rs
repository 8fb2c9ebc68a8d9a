//! `--only compile`: what one tenant's large policy costs the compiler.
//!
//! The release `policy-agent simulate` compiles a small cluster plus one
//! tenant's policy of R egress rules, each `0.0.0.0/0 except one unique
//! /32` (the input of security issue 23, item 2), in two variants: `same`
//! (no ports: the rules merge into one group, a handful of entries) and
//! `per_port` (rule i on its own port: the state itself would be R²
//! entries, so the per-policy budget fails the policy closed). Each step's
//! wall time and peak memory (the child's maximum resident set, from
//! `wait4`) are printed with their ratio to the baseline, the same cluster
//! without the tenant's policy, measured in the same run, interleaved.

use std::fmt::Write as _;
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::Instant;

use anyhow::{bail, Context, Result};
use serde_json::{json, Map, Value};

use super::round3;

/// Rule counts swept.
pub fn steps(quick: bool) -> Vec<usize> {
    if quick {
        vec![300, 3_000]
    } else {
        vec![300, 1_000, 3_000, 10_000]
    }
}

/// The small cluster every step shares: two namespaces, a pod each.
fn base() -> String {
    let mut y = String::new();
    for (ns, ip) in [("tenant", "10.244.0.10"), ("other", "10.244.0.11")] {
        let _ = write!(
            y,
            "---\napiVersion: v1\nkind: Namespace\nmetadata: {{name: {ns}}}\n---\napiVersion: v1\nkind: Pod\nmetadata: {{name: web, namespace: {ns}, labels: {{app: web}}}}\nspec:\n  containers: [{{name: c, image: x, ports: [{{containerPort: 80}}]}}]\nstatus: {{podIP: {ip}, podIPs: [{{ip: {ip}}}]}}\n"
        );
    }
    y += "---\napiVersion: networking.k8s.io/v1\nkind: NetworkPolicy\nmetadata: {name: web, namespace: other}\nspec:\n  podSelector: {}\n  ingress: [{from: [{ipBlock: {cidr: 10.0.0.0/8, except: [10.1.0.0/16]}}], ports: [{port: 80}]}]\n";
    y
}

/// The tenant's policy: `rules` egress rules, each the world but one
/// unique /32, on their own port with `per_port`.
fn tenant(rules: usize, per_port: bool) -> String {
    let mut y = String::with_capacity(80 * rules + 256);
    y += "---\napiVersion: networking.k8s.io/v1\nkind: NetworkPolicy\nmetadata: {name: big, namespace: tenant}\nspec:\n  podSelector: {}\n  policyTypes: [Egress]\n  egress:\n";
    for i in 0..rules {
        let _ = writeln!(
            y,
            "  - to: [{{ipBlock: {{cidr: 0.0.0.0/0, except: [100.{}.{}.{}/32]}}}}]",
            64 + i / 65_536,
            (i / 256) % 256,
            i % 256
        );
        if per_port {
            let _ = writeln!(y, "    ports: [{{port: {}}}]", 1000 + i % 60_000);
        }
    }
    y
}

/// One `simulate` run: wall seconds, peak resident KiB, and whether the
/// compile put the policy over its budget (simulate warns on stderr).
fn simulate(agent: &Path, manifest: &Path) -> Result<(f64, u64, bool)> {
    let err_path = manifest.with_extension("stderr");
    let err_file = std::fs::File::create(&err_path)
        .with_context(|| format!("creating {}", err_path.display()))?;
    let started = Instant::now();
    let child = Command::new(agent)
        .args(["simulate", "-o", "json", "-f"])
        .arg(manifest)
        .stdout(Stdio::null())
        .stderr(err_file)
        .spawn()
        .with_context(|| format!("cannot run {}", agent.display()))?;
    let pid = libc::pid_t::try_from(child.id()).context("pid out of range")?;
    let mut status = 0;
    // SAFETY: rusage is plain data, zeroed is a valid value; wait4 fills it.
    let mut usage: libc::rusage = unsafe { std::mem::zeroed() };
    // SAFETY: waits for our own child, pointers to live locals.
    let rc = unsafe { libc::wait4(pid, &mut status, 0, &mut usage) };
    let secs = started.elapsed().as_secs_f64();
    if rc != pid {
        bail!("wait4 failed: {}", std::io::Error::last_os_error());
    }
    let stderr = std::fs::read_to_string(&err_path).unwrap_or_default();
    let _ = std::fs::remove_file(&err_path);
    if !libc::WIFEXITED(status) || libc::WEXITSTATUS(status) != 0 {
        bail!("policy-agent simulate failed (status {status}): {stderr}");
    }
    Ok((
        secs,
        u64::try_from(usage.ru_maxrss).unwrap_or(0),
        stderr.contains("over budget"),
    ))
}

/// Runs the sweep with the built binaries in `bin_dir`.
pub fn run(bin_dir: &Path, quick: bool, out: &mut Map<String, Value>) -> Result<()> {
    let agent = bin_dir.join("policy-agent");
    let tmp = tempfile::tempdir().context("creating a folder for the manifests")?;
    let dir = tmp.path();
    let base_path = dir.join("base.yaml");
    std::fs::write(&base_path, base())?;
    println!();
    println!("compile cost of one tenant's policy: R rules `0.0.0.0/0 except one /32` (release simulate; ratio to the same cluster without it, same run)");
    println!(
        "{:>8} {:>10} {:>14} {:>16}  outcome",
        "R", "variant", "seconds", "peak MiB"
    );
    let mut figures = Map::new();
    for r in steps(quick) {
        for (variant, per_port) in [("same", false), ("per_port", true)] {
            let path = dir.join(format!("{variant}-{r}.yaml"));
            std::fs::write(&path, base() + &tenant(r, per_port))?;
            // Interleaved: baseline, step, baseline.
            let (b1, bm1, _) = simulate(&agent, &base_path)?;
            let (t, m, failed) = simulate(&agent, &path)?;
            let (b2, bm2, _) = simulate(&agent, &base_path)?;
            let (bt, bm) = ((b1 + b2) / 2.0, (bm1 + bm2) / 2);
            let tr = t / bt.max(1e-9);
            let mr = m as f64 / (bm.max(1)) as f64;
            let outcome = if failed {
                "over budget: the policy fails closed"
            } else {
                "compiled"
            };
            println!(
                "{r:>8} {variant:>10} {:>14} {:>16}  {outcome}",
                format!("{t:.3} ({tr:.1})"),
                format!("{:.1} ({mr:.1})", m as f64 / 1024.0),
            );
            figures.insert(
                format!("{variant}_{r}"),
                json!({
                    "seconds": round3(t),
                    "seconds_ratio": round3(tr),
                    "peak_mib": round3(m as f64 / 1024.0),
                    "peak_ratio": round3(mr),
                    "baseline_seconds": round3(bt),
                    "baseline_peak_mib": round3(bm as f64 / 1024.0),
                    "over_budget": failed,
                }),
            );
            let _ = std::fs::remove_file(&path);
        }
    }
    out.insert("compile_cost".into(), Value::Object(figures));
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_manifests_load() {
        let mut loaded = policy_engine::manifest::Loaded::default();
        let text = base() + &tenant(3, true);
        policy_engine::manifest::load_str(&text, "t.yaml".as_ref(), &mut loaded).unwrap();
        assert_eq!(loaded.snapshot.policies.len(), 2);
        assert_eq!(loaded.snapshot.pods.len(), 2);
    }
}
