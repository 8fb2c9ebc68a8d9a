//! The kind cluster side of `kind-e2e`: kind, docker and kubectl commands,
//! the x/y/z × a/b/c model as manifests, and probes with `agnhost connect`
//! run inside the client pod.

use std::collections::BTreeMap;
use std::io::Write;
use std::path::Path;
use std::process::{Command, Stdio};
use std::sync::Mutex;

use anyhow::{bail, Context, Result};
use policy_engine::model::Protocol;
use policy_engine::testutil::conformance::Truth;
use policy_engine::testutil::{XYZ_NAMESPACES, XYZ_PODS};

use crate::cmd;

/// Ports every model pod serves (as upstream's model).
pub const PORTS: [u16; 2] = [80, 81];

/// `kubectl` with the cluster's context.
pub fn kubectl(context: &str) -> Command {
    let mut c = Command::new("kubectl");
    c.arg("--context").arg(context);
    c
}

/// Runs `c` with `stdin` as its input; fails unless it exits 0.
pub fn run_with_input(c: &mut Command, stdin: &str) -> Result<()> {
    let what = format!("{:?}", c.get_program());
    let mut child = c
        .stdin(Stdio::piped())
        .spawn()
        .with_context(|| format!("cannot start {what}"))?;
    if let Some(mut input) = child.stdin.take() {
        input.write_all(stdin.as_bytes())?;
    }
    let status = child.wait()?;
    if !status.success() {
        bail!("{what} failed ({status})");
    }
    Ok(())
}

/// `kubectl apply -f -` of `yaml`.
pub fn apply(context: &str, yaml: &str) -> Result<()> {
    run_with_input(kubectl(context).args(["apply", "-f", "-"]), yaml)
}

/// Runs `c` and returns its stdout (fails unless it exits 0).
pub fn output(c: &mut Command) -> Result<String> {
    let out = c
        .output()
        .with_context(|| format!("cannot start {:?}", c.get_program()))?;
    if !out.status.success() {
        bail!(
            "{:?} failed: {}",
            c.get_args().collect::<Vec<_>>(),
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

/// The container serving `port`/`protocol` in every model pod.
fn container(port: u16, protocol: Protocol) -> String {
    format!("cont-{port}-{}", protocol.to_string().to_lowercase())
}

/// Namespaces, pods (one agnhost container per port and protocol, ports
/// named `serve-<port>-<proto>` as the engine's model) and one Service per
/// pod (`s-<ns>-<pod>`, as upstream) for the model.
pub fn model_manifest(agnhost: &str, protocols: &[Protocol]) -> String {
    let mut out = String::new();
    for ns in XYZ_NAMESPACES {
        out.push_str(&format!(
            "---\napiVersion: v1\nkind: Namespace\nmetadata:\n  name: {ns}\n  labels: {{ns: {ns}}}\n"
        ));
        for pod in XYZ_PODS {
            out.push_str(&format!(
                "---\napiVersion: v1\nkind: Pod\nmetadata:\n  name: {pod}\n  namespace: {ns}\n  labels: {{pod: {pod}}}\nspec:\n  terminationGracePeriodSeconds: 1\n  containers:\n"
            ));
            let mut svc_ports = String::new();
            for port in PORTS {
                for p in protocols {
                    let proto = p.to_string();
                    let lower = proto.to_lowercase();
                    out.push_str(&format!(
                        "    - name: {}\n      image: {agnhost}\n      imagePullPolicy: IfNotPresent\n      args: [serve-hostname, --{lower}, --http=false, --port, \"{port}\"]\n      ports: [{{containerPort: {port}, name: serve-{port}-{lower}, protocol: {proto}}}]\n",
                        container(port, *p)
                    ));
                    svc_ports.push_str(&format!(
                        "    - {{name: serve-{port}-{lower}, port: {port}, targetPort: {port}, protocol: {proto}}}\n"
                    ));
                }
            }
            out.push_str(&format!(
                "---\napiVersion: v1\nkind: Service\nmetadata:\n  name: s-{ns}-{pod}\n  namespace: {ns}\nspec:\n  selector: {{pod: {pod}}}\n  ports:\n{svc_ports}"
            ));
        }
    }
    out
}

/// Where each model pod is reached: its pod IP and its Service's ClusterIP.
#[derive(Clone, Debug, Default)]
pub struct Addresses {
    /// `ns/pod` → pod IP.
    pub pod_ip: BTreeMap<String, String>,
    /// `ns/pod` → ClusterIP of `s-<ns>-<pod>`.
    pub cluster_ip: BTreeMap<String, String>,
}

/// Reads the model pods' IPs and their Services' ClusterIPs.
pub fn addresses(context: &str) -> Result<Addresses> {
    let mut a = Addresses::default();
    for ns in XYZ_NAMESPACES {
        for pod in XYZ_PODS {
            let key = format!("{ns}/{pod}");
            let ip = output(kubectl(context).args([
                "-n",
                ns,
                "get",
                "pod",
                pod,
                "-o",
                "jsonpath={.status.podIP}",
            ]))?;
            let cip = output(kubectl(context).args([
                "-n",
                ns,
                "get",
                "service",
                &format!("s-{ns}-{pod}"),
                "-o",
                "jsonpath={.spec.clusterIP}",
            ]))?;
            if ip.trim().is_empty() || cip.trim().is_empty() {
                bail!("{key} has no pod IP or ClusterIP yet");
            }
            a.pod_ip.insert(key.clone(), ip.trim().to_string());
            a.cluster_ip.insert(key, cip.trim().to_string());
        }
    }
    Ok(a)
}

/// Whether `from` (`ns/pod`) connects to `addr:port` over `protocol`,
/// probed with `agnhost connect` inside `from`.
pub fn connects(context: &str, from: &str, addr: &str, port: u16, protocol: Protocol) -> bool {
    let (ns, pod) = from.split_once('/').unwrap_or(("default", from));
    kubectl(context)
        .args(["-n", ns, "exec", pod, "-c"])
        .arg(container(PORTS[0], Protocol::Tcp))
        .args(["--", "/agnhost", "connect"])
        .arg(format!("{addr}:{port}"))
        .arg("--timeout=1s")
        .arg(format!(
            "--protocol={}",
            protocol.to_string().to_lowercase()
        ))
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|s| s.success())
}

/// Probes every pair of `expected` (never a pod to itself) to the
/// destination's address in `to_addr`, `workers` at a time, and returns the
/// observed table.
pub fn probe_table(
    context: &str,
    expected: &Truth,
    to_addr: &BTreeMap<String, String>,
    port: u16,
    protocol: Protocol,
    workers: usize,
) -> Truth {
    let pairs: Vec<(String, String)> = expected.0.keys().cloned().collect();
    let next = Mutex::new(pairs.into_iter());
    let seen = Mutex::new(expected.clone());
    std::thread::scope(|s| {
        for _ in 0..workers.max(1) {
            s.spawn(|| loop {
                let Some((from, to)) = next.lock().ok().and_then(|mut it| it.next()) else {
                    return;
                };
                let ok = to_addr
                    .get(&to)
                    .is_some_and(|addr| connects(context, &from, addr, port, protocol));
                if let Ok(mut t) = seen.lock() {
                    t.0.insert((from, to), ok);
                }
            });
        }
    });
    seen.into_inner().unwrap_or_else(|e| e.into_inner())
}

/// Whether `from` resolves kube-dns by name and connects to it on TCP 53.
pub fn resolves(context: &str, from: &str) -> bool {
    connects(
        context,
        from,
        "kube-dns.kube-system.svc.cluster.local",
        53,
        Protocol::Tcp,
    )
}

/// Creates the kind cluster from `config` unless it exists.
pub fn create_cluster(name: &str, config: &Path) -> Result<()> {
    let existing = output(Command::new("kind").args(["get", "clusters"]))?;
    if existing.lines().any(|l| l.trim() == name) {
        println!("kind cluster {name} exists: reusing it");
        return Ok(());
    }
    cmd::run(
        Command::new("kind")
            .args(["create", "cluster", "--name", name, "--config"])
            .arg(config),
    )
}

/// The node containers of cluster `name`.
pub fn nodes(name: &str) -> Result<Vec<String>> {
    Ok(
        output(Command::new("kind").args(["get", "nodes", "--name", name]))?
            .lines()
            .map(|l| l.trim().to_string())
            .filter(|l| !l.is_empty())
            .collect(),
    )
}
