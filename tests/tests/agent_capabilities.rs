//! The agent works with exactly the capabilities the DaemonSet grants it
//! (`manifests/20-daemonset.yaml`, container `agent`), needs every one of
//! them, and stays within the memory limit written there.
//!
//! The real `policy-agent` runs in a test-bed node namespace under
//! `setpriv`, which leaves it only the listed capabilities (bounding,
//! inheritable and ambient sets, as a container runtime's root process
//! gets). Needs root, a BPF-capable kernel and `setpriv` (util-linux).

use std::collections::BTreeSet;
use std::path::Path;
use std::time::{Duration, Instant};

use palisade_tests::{bin_dir, cluster_manifest, workspace_root};
use policy_engine::testutil::xyz_model;
use testbed::{parse_probes, Testbed, TestbedError, TestbedOptions};

/// The agent container of the DaemonSet, as JSON.
fn agent_container() -> serde_json::Value {
    let path = workspace_root().join("manifests/20-daemonset.yaml");
    let text = std::fs::read_to_string(&path).unwrap();
    let ds: serde_json::Value = serde_norway::from_str(&text).unwrap();
    ds["spec"]["template"]["spec"]["containers"]
        .as_array()
        .unwrap()
        .iter()
        .find(|c| c["name"] == "agent")
        .cloned()
        .expect("a container named agent")
}

/// The capabilities the manifest adds to the agent (`NET_ADMIN`, ...).
fn documented_caps() -> Vec<String> {
    let c = agent_container();
    assert_eq!(c["securityContext"]["capabilities"]["drop"][0], "ALL");
    c["securityContext"]["capabilities"]["add"]
        .as_array()
        .unwrap()
        .iter()
        .map(|v| v.as_str().unwrap().to_string())
        .collect()
}

/// `256Mi` → bytes.
fn quantity_bytes(q: &str) -> u64 {
    let (num, unit) = q.split_at(q.find(|c: char| !c.is_ascii_digit()).unwrap_or(q.len()));
    let n: u64 = num.parse().unwrap();
    n * match unit {
        "Ki" => 1 << 10,
        "Mi" => 1 << 20,
        "Gi" => 1 << 30,
        "" => 1,
        other => panic!("unit {other}"),
    }
}

/// A bin dir whose `policy-agent` runs the real one with only `caps`
/// (and records its pid), and whose `palisade-cni` is the real one (the
/// runtime runs the plugin, not the DaemonSet).
struct Confined {
    dir: tempfile::TempDir,
}

impl Confined {
    fn new(caps: &[String]) -> Self {
        use std::os::unix::fs::PermissionsExt;
        let real = bin_dir();
        let dir = tempfile::Builder::new()
            .prefix("palisade-caps-")
            .tempdir()
            .unwrap();
        let set: Vec<String> = caps
            .iter()
            .map(|c| format!("+{}", c.to_lowercase()))
            .collect();
        let set = if set.is_empty() {
            "-all".to_string()
        } else {
            format!("-all,{}", set.join(","))
        };
        let script = format!(
            "#!/bin/sh\necho $$ > '{pid}'\nexec setpriv --bounding-set {set} --inh-caps {set} --ambient-caps {set} -- '{agent}' \"$@\"\n",
            pid = dir.path().join("agent.pid").display(),
            agent = real.join(testbed::AGENT_BINARY).display(),
        );
        let wrapper = dir.path().join(testbed::AGENT_BINARY);
        std::fs::write(&wrapper, script).unwrap();
        std::fs::set_permissions(&wrapper, std::fs::Permissions::from_mode(0o755)).unwrap();
        std::os::unix::fs::symlink(
            real.join(testbed::PLUGIN_BINARY),
            dir.path().join(testbed::PLUGIN_BINARY),
        )
        .unwrap();
        Confined { dir }
    }

    fn pid(&self) -> u32 {
        std::fs::read_to_string(self.dir.path().join("agent.pid"))
            .unwrap()
            .trim()
            .parse()
            .unwrap()
    }
}

/// What one confined run showed.
struct Run {
    mismatches: usize,
    drops_reported: usize,
    /// The agent's effective capability mask while it ran.
    cap_eff: String,
    /// Peak resident memory (VmHWM) in bytes.
    peak_rss: u64,
    /// User + system CPU time.
    cpu: Duration,
    /// Wall time from start to the end of the probes.
    wall: Duration,
    /// Restarted, the agent took the programs it had pinned over (with
    /// only its capabilities) instead of loading them again.
    took_over: bool,
}

const PROBES: &str = r#"{"from": "y/a", "to": "x/a", "port": 80, "protocol": "TCP", "allowed": true}
{"from": "z/a", "to": "x/a", "port": 80, "protocol": "TCP", "allowed": false}
{"from": "y/b", "to": "x/b", "port": 80, "protocol": "UDP", "allowed": false}
{"from": "x/a", "to": "y/a", "port": 81, "protocol": "UDP", "allowed": true}
{"from": "z/c", "to": "y/c", "port": 80, "protocol": "TCP", "allowed": true}
"#;

fn status_field(pid: u32, field: &str) -> Option<String> {
    let text = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    text.lines()
        .find_map(|l| l.strip_prefix(&format!("{field}:")))
        .map(|v| v.trim().to_string())
}

fn cpu_time(pid: u32) -> Duration {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
    // Fields after the command (which may hold spaces) start at state.
    let after = stat.rsplit_once(") ").map(|(_, a)| a).unwrap_or("");
    let f: Vec<u64> = after
        .split(' ')
        .skip(11)
        .take(2)
        .filter_map(|v| v.parse().ok())
        .collect();
    // In clock ticks, USER_HZ: 100 per second on every Linux ABI we run on.
    Duration::from_millis(f.iter().sum::<u64>() * 10)
}

/// A bed of the x/y/z model (ingress of x denied, y may reach x/a on TCP
/// 80) with the agent confined to `caps`.
fn run_confined(caps: &[String]) -> Result<Run, TestbedError> {
    let confined = Confined::new(caps);
    let manifest = confined.dir.path().join("cluster.yaml");
    let policies = [
        "metadata: {name: deny, namespace: x}\nspec:\n  podSelector: {}\n  policyTypes: [Ingress]\n"
            .to_string(),
        "metadata: {name: allow-y, namespace: x}\nspec:\n  podSelector: {matchLabels: {pod: a}}\n  ingress: [{from: [{namespaceSelector: {matchLabels: {ns: y}}}], ports: [{port: 80}]}]\n"
            .to_string(),
    ];
    std::fs::write(&manifest, cluster_manifest(&xyz_model().build(), &policies)).unwrap();
    let probes = parse_probes(PROBES, Path::new("probes")).unwrap();
    let started = Instant::now();
    let bed = Testbed::start(TestbedOptions {
        manifests: vec![manifest],
        palisade: true,
        bin_dir: confined.dir.path().to_path_buf(),
        probes: probes.clone(),
        nodes: 1,
        agent_args: Vec::new(),
    })?;
    let pid = confined.pid();
    let (seen, drops) = bed.probe_collecting_drops(&probes);
    let mismatches = testbed::mismatches(&seen);
    if mismatches > 0 {
        eprintln!("{}", testbed::report::table(&seen));
        eprintln!("{}", bed.agent_log_tail(30));
    }
    let kb = |v: Option<String>| {
        v.and_then(|s| s.split_whitespace().next()?.parse::<u64>().ok())
            .unwrap_or(0)
            * 1024
    };
    let run = Run {
        mismatches,
        drops_reported: drops.len(),
        cap_eff: status_field(pid, "CapEff").unwrap_or_default(),
        peak_rss: kb(status_field(pid, "VmHWM")),
        cpu: cpu_time(pid),
        wall: started.elapsed(),
        took_over: false,
    };
    // A restart (as a rolling update's) takes the pinned programs over.
    let restarted = bed.restart_agents();
    let log = bed
        .agent_log()
        .and_then(|p| std::fs::read_to_string(p).ok())
        .unwrap_or_default();
    drop(bed);
    restarted?;
    let run = Run {
        took_over: log.contains("programs taken over from their pins"),
        ..run
    };
    Ok(run)
}

/// The kernel's bit of a capability name.
fn cap_bit(name: &str) -> u32 {
    match name {
        "NET_ADMIN" => 12,
        "SYS_ADMIN" => 21,
        "SYS_RESOURCE" => 24,
        "PERFMON" => 38,
        "BPF" => 39,
        other => panic!("unknown capability {other}: add its bit"),
    }
}

#[test]
fn the_documented_capabilities_are_enough_and_the_memory_limit_holds() {
    let caps = documented_caps();
    let run = run_confined(&caps).unwrap_or_else(|e| panic!("agent with {caps:?}: {e}"));
    let want: u64 = caps.iter().map(|c| 1u64 << cap_bit(c)).sum();
    assert_eq!(
        u64::from_str_radix(&run.cap_eff, 16).unwrap(),
        want,
        "the agent ran with CapEff {} instead of exactly {caps:?}",
        run.cap_eff
    );
    assert_eq!(run.mismatches, 0, "enforcement failed with {caps:?}");
    assert!(
        run.drops_reported > 0,
        "no drop reached `flows` (ring buffer) with {caps:?}"
    );
    let limits = &agent_container()["resources"];
    let limit = quantity_bytes(limits["limits"]["memory"].as_str().unwrap());
    let request = quantity_bytes(limits["requests"]["memory"].as_str().unwrap());
    eprintln!(
        "agent (x/y/z model, 9 pods, 2 policies): peak RSS {:.1} MiB, CPU {:?} over {:?}; \
         manifest request {} MiB, limit {} MiB",
        run.peak_rss as f64 / f64::from(1 << 20),
        run.cpu,
        run.wall,
        request >> 20,
        limit >> 20
    );
    assert!(
        run.took_over,
        "the restarted agent loaded its programs again instead of taking its pins over with {caps:?}"
    );
    assert!(run.peak_rss > 0, "VmHWM not read");
    assert!(
        run.peak_rss < limit,
        "peak RSS {} over the manifest's limit {limit}",
        run.peak_rss
    );
}

#[test]
fn each_documented_capability_is_needed() {
    let caps = documented_caps();
    let mut unneeded = BTreeSet::new();
    for cap in &caps {
        let fewer: Vec<String> = caps.iter().filter(|c| *c != cap).cloned().collect();
        match run_confined(&fewer) {
            Err(e) => eprintln!("without {cap}: the agent does not start: {e}"),
            Ok(run) if run.mismatches > 0 || run.drops_reported == 0 => eprintln!(
                "without {cap}: {} mismatches, {} drops reported",
                run.mismatches, run.drops_reported
            ),
            Ok(_) => {
                unneeded.insert(cap.clone());
            }
        }
    }
    assert!(
        unneeded.is_empty(),
        "the agent works without {unneeded:?}: drop them from the DaemonSet"
    );
}
