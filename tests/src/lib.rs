//! Shared helpers of Palisade's integration tests (`tests/tests/*.rs`):
//! where the binaries and the scenarios are, and how to rewrite a running
//! test bed's cluster manifest and wait until the agent enforces it. The
//! tests themselves need root and a real kernel; they build network
//! namespaces through the `testbed` crate and clean them up on drop.
#![deny(missing_docs)]

pub mod browser;

use std::fmt::Write as _;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use testbed::probe::Snapshot;
use testbed::{read_probes, Observation, Probe, Testbed, TestbedOptions};

/// A test bed with Palisade on, started by [`start_palisade_bed`]; its
/// scratch folder is removed after the bed when it is dropped.
pub struct PalisadeBed {
    bed: Option<Testbed>,
    dir: PathBuf,
}

impl std::ops::Deref for PalisadeBed {
    type Target = Testbed;
    fn deref(&self) -> &Testbed {
        self.bed.as_ref().expect("the bed lives until dropped")
    }
}

impl Drop for PalisadeBed {
    fn drop(&mut self) {
        drop(self.bed.take());
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// Starts a bed of `nodes` nodes with Palisade on, holding the objects of
/// the manifest `cluster` (written into a scratch folder named by `tag`
/// and the process id). Panics with the bed's error.
pub fn start_palisade_bed(tag: &str, cluster: &str, nodes: usize) -> PalisadeBed {
    let dir = std::env::temp_dir().join(format!("palisade-{tag}-{}", std::process::id()));
    let manifest = dir.join("cluster.yaml");
    if let Err(e) = std::fs::create_dir_all(&dir).and_then(|()| std::fs::write(&manifest, cluster))
    {
        panic!("writing {}: {e}", manifest.display());
    }
    let bed = Testbed::start(TestbedOptions {
        manifests: vec![manifest],
        palisade: true,
        bin_dir: bin_dir(),
        probes: vec![],
        nodes,
        agent_args: Vec::new(),
    })
    .unwrap_or_else(|e| panic!("{nodes}-node test bed: {e}"));
    PalisadeBed {
        bed: Some(bed),
        dir,
    }
}

/// The wiring of `bed`'s pod called `name` (any namespace); panics when
/// there is none.
pub fn pod_named(bed: &Testbed, name: &str) -> testbed::WiredPod {
    bed.pods()
        .iter()
        .find(|(r, _)| r.name == name)
        .map(|(_, w)| w.clone())
        .unwrap_or_else(|| panic!("no pod {name}"))
}

/// Runs `f` on a thread inside the named network namespace `ns` (one of
/// the bed's, under `/run/netns`): sockets it opens belong to `ns`.
pub fn in_named_netns<T: Send>(ns: &str, f: impl FnOnce() -> T + Send) -> T {
    use std::os::fd::AsRawFd;
    std::thread::scope(|s| {
        s.spawn(|| {
            let handle = std::fs::File::open(format!("/run/netns/{ns}"))
                .unwrap_or_else(|e| panic!("opening netns {ns}: {e}"));
            // SAFETY: setns on a valid namespace fd; affects this thread only.
            let rc = unsafe { libc::setns(handle.as_raw_fd(), libc::CLONE_NEWNET) };
            assert_eq!(rc, 0, "setns {ns}: {}", std::io::Error::last_os_error());
            f()
        })
        .join()
        .expect("netns thread panicked")
    })
}

/// The workspace root.
pub fn workspace_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .map(Path::to_path_buf)
        .unwrap_or_else(|| PathBuf::from(".."))
}

/// Where `policy-agent` and `palisade-cni` are: `$PALISADE_BIN_DIR` (set by
/// `cargo xtask test`), else the profile folder this test binary was built
/// into (`<target>/debug`, which honours `CARGO_TARGET_DIR`) if it holds
/// them, else `<workspace>/target/debug`. Panics with a clear message when
/// either binary is missing.
pub fn bin_dir() -> PathBuf {
    let bins = [testbed::AGENT_BINARY, testbed::PLUGIN_BINARY];
    let has_bins = |d: &Path| bins.iter().all(|b| d.join(b).is_file());
    let dir = match std::env::var_os("PALISADE_BIN_DIR") {
        Some(d) => PathBuf::from(d),
        None => std::env::current_exe()
            .ok()
            .and_then(|exe| Some(exe.parent()?.parent()?.to_path_buf()))
            .filter(|d| has_bins(d))
            .unwrap_or_else(|| workspace_root().join("target").join("debug")),
    };
    for bin in bins {
        let path = dir.join(bin);
        assert!(
            path.is_file(),
            "{} is missing: build it (`cargo build -p policy-agent -p cni-bin`, or run the tests \
             through `cargo xtask test`) or point PALISADE_BIN_DIR at the folder holding \
             policy-agent and palisade-cni",
            path.display()
        );
    }
    dir
}

/// One scenario: a cluster manifest and its probes with expected verdicts.
#[derive(Clone, Debug)]
pub struct Scenario {
    /// Where it comes from, for messages (`shared/service-abc`, ...).
    pub label: String,
    /// The cluster manifest.
    pub cluster: PathBuf,
    /// The probes (JSON lines).
    pub probes: PathBuf,
}

/// The public scenario `name` from the shared folder beside the checkout,
/// if it is there (a user's clone has none).
pub fn shared_scenario(name: &str) -> Option<Scenario> {
    let shared = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../shared/scenarios");
    let s = Scenario {
        label: format!("shared/{name}"),
        cluster: shared.join(format!("{name}.yaml")),
        probes: shared.join(format!("{name}.expect.jsonl")),
    };
    (s.cluster.is_file() && s.probes.is_file()).then_some(s)
}

/// The public scenario `name` from the shared folder beside the checkout (found as
/// `../../shared/scenarios` from this crate) and the repository's own copy
/// under `examples/<name>/`, whichever exist (at least one must).
pub fn scenarios(name: &str) -> Vec<Scenario> {
    let shared = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../shared/scenarios");
    let examples = workspace_root().join("examples").join(name);
    let candidates = [
        Scenario {
            label: format!("shared/{name}"),
            cluster: shared.join(format!("{name}.yaml")),
            probes: shared.join(format!("{name}.expect.jsonl")),
        },
        Scenario {
            label: format!("examples/{name}"),
            cluster: examples.join("cluster.yaml"),
            probes: examples.join("probes.jsonl"),
        },
    ];
    let found: Vec<Scenario> = candidates
        .into_iter()
        .filter(|s| s.cluster.is_file() && s.probes.is_file())
        .collect();
    assert!(!found.is_empty(), "scenario {name} not found");
    found
}

/// Builds a test bed for `scenario` (with or without Palisade), runs its
/// probes and returns them with what was observed. Panics on setup errors,
/// with the agent's log in the message.
pub fn run_scenario(scenario: &Scenario, palisade: bool) -> (Vec<Probe>, Vec<Observation>) {
    let (probes, skipped) = read_probes_without_services(&scenario.probes);
    if skipped > 0 {
        eprintln!(
            "{}: {skipped} probes to svc: targets left out (kube-proxy runs in kube mode only; see tests/tests/kube.rs)",
            scenario.label
        );
    }
    let bed = Testbed::start(TestbedOptions {
        manifests: vec![scenario.cluster.clone()],
        palisade,
        bin_dir: if palisade { bin_dir() } else { PathBuf::new() },
        probes: probes.clone(),
        nodes: 1,
        agent_args: Vec::new(),
    })
    .unwrap_or_else(|e| panic!("{} (palisade={palisade}): {e}", scenario.label));
    let seen = bed.probe(&probes);
    eprintln!("{}", testbed::report::table(&seen));
    if palisade && testbed::mismatches(&seen) > 0 {
        eprintln!(
            "--- agent log tail for {} ---\n{}",
            scenario.label,
            bed.agent_log_tail(40)
        );
    }
    (probes, seen)
}

/// Kube mode with the repository's install manifests (`manifests/`).
pub fn kube_options() -> testbed::controlplane::cluster::KubeOptions {
    testbed::controlplane::cluster::KubeOptions {
        install: vec![workspace_root().join("manifests")],
        ..Default::default()
    }
}

/// Reads a probe file, leaving out probes to `svc:` targets (a Service's
/// ClusterIP is translated by kube-proxy, which only kube mode runs);
/// returns the probes and how many were left out.
pub fn read_probes_without_services(path: &Path) -> (Vec<Probe>, usize) {
    testbed::read_probes_without_services(path)
        .unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

/// A bed of `nodes` nodes for `scenario` in kube mode (the real API server, the
/// repository's install, the agent as the Palisade ServiceAccount, run
/// with `agent_args` besides the bed's own, kube-proxy in each node),
/// serving all the scenario's probes, those to Services through their
/// ClusterIPs too; returns the bed and the probes.
pub fn start_kube_bed(
    scenario: &Scenario,
    nodes: usize,
    agent_args: Vec<String>,
) -> (Testbed, Vec<Probe>) {
    let probes =
        read_probes(&scenario.probes).unwrap_or_else(|e| panic!("{}: {e}", scenario.label));
    let manifests = vec![scenario.cluster.clone()];
    let snapshot =
        testbed::load_snapshot(&manifests).unwrap_or_else(|e| panic!("{}: {e}", scenario.label));
    let bed = Testbed::start_with_kube(
        TestbedOptions {
            manifests,
            palisade: true,
            bin_dir: bin_dir(),
            probes: probes.clone(),
            nodes,
            agent_args,
        },
        &snapshot,
        &kube_options(),
    )
    .unwrap_or_else(|e| panic!("{} (kube mode): {e}", scenario.label));
    (bed, probes)
}

/// [`run_scenario`] in kube mode on two nodes, the pods spread over both
/// (see [`start_kube_bed`]).
pub fn run_scenario_kube(scenario: &Scenario) -> (Vec<Probe>, Vec<Observation>) {
    let t0 = Instant::now();
    let (bed, probes) = start_kube_bed(scenario, 2, Vec::new());
    let wired: Vec<usize> = bed
        .pods()
        .values()
        .filter(|p| !p.host_network)
        .map(|p| p.node)
        .collect();
    assert!(
        wired.len() < 2 || (wired.contains(&0) && wired.contains(&1)),
        "{}: pods on one node only",
        scenario.label
    );
    eprintln!("{}: kube bed up in {:?}", scenario.label, t0.elapsed());
    let seen = bed.probe(&probes);
    eprintln!("{}", testbed::report::table(&seen));
    if testbed::mismatches(&seen) > 0 {
        eprintln!(
            "--- agent log tail for {} ---\n{}",
            scenario.label,
            bed.agent_log_tail(40)
        );
    }
    (probes, seen)
}

/// A YAML string literal (double-quoted, escaped).
fn quoted(s: &str) -> String {
    let mut out = String::from("\"");
    for c in s.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            c if c.is_control() => {
                let _ = write!(out, "\\u{:04x}", u32::from(c));
            }
            c => out.push(c),
        }
    }
    out.push('"');
    out
}

fn labels_yaml(labels: &std::collections::BTreeMap<String, String>) -> String {
    let items: Vec<String> = labels
        .iter()
        .map(|(k, v)| format!("{}: {}", quoted(k), quoted(v)))
        .collect();
    format!("{{{}}}", items.join(", "))
}

/// The cluster manifest the test bed and the agent read: `snapshot`'s
/// namespaces and pods (labels, container ports, `status.podIP(s)`,
/// hostNetwork) as Namespace and Pod documents, then `policies`, each a
/// NetworkPolicy document without `apiVersion`/`kind` (`metadata:` and
/// `spec:`, as `policy_engine::testutil::conformance::Step::policy_yaml`
/// writes them). The snapshot's policies and host addresses are not
/// written.
pub fn cluster_manifest(snapshot: &Snapshot, policies: &[String]) -> String {
    let mut out = String::new();
    for (name, ns) in &snapshot.namespaces {
        let _ = writeln!(
            out,
            "---\napiVersion: v1\nkind: Namespace\nmetadata:\n  name: {}\n  labels: {}",
            quoted(name),
            labels_yaml(&ns.labels)
        );
    }
    for (pod, info) in &snapshot.pods {
        let _ = writeln!(
            out,
            "---\napiVersion: v1\nkind: Pod\nmetadata:\n  name: {}\n  namespace: {}\n  labels: {}\nspec:\n  hostNetwork: {}\n  containers:\n  - name: main\n    image: none",
            quoted(&pod.name),
            quoted(&pod.namespace),
            labels_yaml(&info.labels),
            info.host_network
        );
        if !info.ports.is_empty() {
            out.push_str("    ports:\n");
            for p in &info.ports {
                let _ = write!(
                    out,
                    "    - containerPort: {}\n      protocol: {}\n",
                    p.port, p.protocol
                );
                if let Some(n) = &p.name {
                    let _ = writeln!(out, "      name: {}", quoted(n));
                }
            }
        }
        if let Some(first) = info.ips.first() {
            let _ = writeln!(out, "status:\n  podIP: {first}\n  podIPs:");
            for ip in &info.ips {
                let _ = writeln!(out, "  - ip: {ip}");
            }
        }
    }
    for p in policies {
        let _ = writeln!(
            out,
            "---\napiVersion: networking.k8s.io/v1\nkind: NetworkPolicy\n{}",
            p.trim_end()
        );
    }
    out
}

/// Replaces `path` with `text` atomically (a sibling temporary file renamed
/// over it), so that a watcher never reads a half-written file.
pub fn write_atomically(path: &Path, text: &str) -> std::io::Result<()> {
    let tmp = path.with_extension(format!("tmp-{}", std::process::id()));
    std::fs::write(&tmp, text)?;
    std::fs::rename(&tmp, path)
}

/// What `policy-agent` logs each time it has re-read changed manifests and
/// hands the new state over to be compiled and applied.
pub const AGENT_RELOAD_LINE: &str = "manifests changed, recompiling";
/// What it logs when changed manifests cannot be loaded.
pub const AGENT_RELOAD_FAILED_LINE: &str = "manifests changed but cannot be loaded";

/// How often each agent's log says `line` so far, node by node (empty
/// without agents).
pub fn agent_log_count(bed: &Testbed, line: &str) -> Vec<usize> {
    bed.nodes()
        .iter()
        .filter_map(|n| n.agent_log.as_deref())
        .map(|p| std::fs::read_to_string(p).map_or(0, |t| t.matches(line).count()))
        .collect()
}

/// How far the agents' logs had got: take one before rewriting a manifest,
/// hand it to [`wait_for_agent_reload`] after.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ReloadMark {
    /// [`AGENT_RELOAD_LINE`]s so far, per node.
    pub reloads: Vec<usize>,
    /// [`AGENT_RELOAD_FAILED_LINE`]s so far, per node.
    pub failures: Vec<usize>,
}

/// The agents' logs' [`ReloadMark`] now.
pub fn reload_mark(bed: &Testbed) -> ReloadMark {
    ReloadMark {
        reloads: agent_log_count(bed, AGENT_RELOAD_LINE),
        failures: agent_log_count(bed, AGENT_RELOAD_FAILED_LINE),
    }
}

/// After the manifest has been rewritten: waits until every agent has
/// logged one more [`AGENT_RELOAD_LINE`] than at `mark` (each polls its
/// files every 500 ms), then `settle` more, then makes a CNI CHECK call to
/// each (for a container that does not exist; the answer is ignored) as a
/// barrier: an agent answers CHECK under the same lock it compiles and updates its maps
/// under, and that lock is handed out in turn, so the answer comes after
/// the new state is in the kernel. Errors (with the agent log's tail) when
/// it logs that it could not load the files, when the call fails, or after
/// `timeout`.
pub fn wait_for_agent_reload(
    bed: &Testbed,
    mark: ReloadMark,
    settle: Duration,
    timeout: Duration,
) -> Result<(), String> {
    let deadline = Instant::now() + timeout;
    let beyond = |now: &[usize], then: &[usize]| now.iter().zip(then).all(|(n, t)| n > t);
    let any_beyond = |now: &[usize], then: &[usize]| now.iter().zip(then).any(|(n, t)| n > t);
    loop {
        let now = reload_mark(bed);
        if beyond(&now.reloads, &mark.reloads) {
            std::thread::sleep(settle);
            let check = agent_api::Request::Check {
                container_id: "palisade-tests-reload-barrier".into(),
            };
            for socket in bed.nodes().iter().filter_map(|n| n.agent_socket.as_deref()) {
                agent_api::call(socket, &check, timeout).map_err(|e| {
                    format!(
                        "an agent did not answer after reloading: {e}\n{}",
                        bed.agent_log_tail(20)
                    )
                })?;
            }
            return Ok(());
        }
        if any_beyond(&now.failures, &mark.failures) {
            return Err(format!(
                "an agent could not load the rewritten manifest:\n{}",
                bed.agent_log_tail(20)
            ));
        }
        if Instant::now() >= deadline {
            return Err(format!(
                "the agents did not all reload the manifest within {timeout:?}:\n{}",
                bed.agent_log_tail(20)
            ));
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// Polls `done` every 100 ms until it holds; panics naming `what` after
/// `timeout`.
pub fn wait_until(what: &str, timeout: Duration, mut done: impl FnMut() -> bool) {
    let start = Instant::now();
    while !done() {
        assert!(start.elapsed() < timeout, "timed out waiting until {what}");
        std::thread::sleep(std::time::Duration::from_millis(100));
    }
}
