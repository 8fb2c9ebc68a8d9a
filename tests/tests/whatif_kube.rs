//! What-if against the live cluster (issue 21, item 4), against the bed's
//! real API server (Kubernetes 1.20.2): a cluster is made through the API
//! (pods reported running as the kubelet reports them, the policy applied
//! with kubectl), then the built `policy-agent simulate --kube` and
//! `explain --kube` run with the admin's kubeconfig, as a user or a CI job
//! runs them, with candidate files and deletions laid over the cluster.
//! Needs root and the binaries (see `palisade_tests::bin_dir`).

use std::collections::BTreeMap;
use std::net::IpAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use k8s_openapi::api::core::v1::Pod;
use palisade_tests::browser::{counted, rendered_dom};
use palisade_tests::{bin_dir, wait_until};
use serde_json::{json, Value};
use testbed::controlplane::kubelet::{create_pod, ensure_namespace, set_pod_running};
use testbed::controlplane::{ControlPlane, ControlPlaneOptions};

/// x/p lets only app=b into app=a, on 80.
const POLICY: &str = "apiVersion: networking.k8s.io/v1
kind: NetworkPolicy
metadata: {name: p, namespace: x}
spec:
  podSelector: {matchLabels: {app: a}}
  ingress: [{from: [{podSelector: {matchLabels: {app: b}}}], ports: [{port: 80}]}]
";

/// A candidate without a namespace (`-n x` places it): isolates x/c.
const DENY_C: &str = "apiVersion: networking.k8s.io/v1
kind: NetworkPolicy
metadata: {name: deny-c}
spec:
  podSelector: {matchLabels: {app: c}}
  policyTypes: [Ingress]
";

/// The node the pods are bound to (the EndpointSlice controller reads
/// it for the slices' topology and leaves out pods on unknown nodes).
const NODE: &str = "apiVersion: v1
kind: Node
metadata: {name: node-a, labels: {kubernetes.io/hostname: node-a}}
";

/// A Service in front of x/a.
const SERVICE: &str = "apiVersion: v1
kind: Service
metadata: {name: web, namespace: x}
spec: {selector: {app: a}, ports: [{port: 80}]}
";

struct Bed {
    cp: ControlPlane,
    bins: PathBuf,
    dir: tempfile::TempDir,
}

impl Bed {
    /// x/a, x/b, x/c serving 80, running; x/p applied with kubectl.
    fn start() -> Bed {
        let bins = bin_dir();
        let cp = ControlPlane::start(ControlPlaneOptions::default())
            .unwrap_or_else(|e| panic!("control plane: {e}"));
        ensure_namespace(&cp, "x", &BTreeMap::new()).unwrap();
        let host: IpAddr = "192.0.2.10".parse().unwrap();
        for (i, name) in ["a", "b", "c"].iter().enumerate() {
            let pod: Pod = serde_json::from_value(json!({
                "metadata": {"name": name, "namespace": "x", "labels": {"app": name}},
                "spec": {"containers": [{"name": "c", "image": "i", "ports": [{"containerPort": 80}]}]},
            }))
            .unwrap();
            create_pod(&cp, &pod, "node-a").unwrap_or_else(|e| panic!("{e}"));
            let ip: IpAddr = format!("10.244.0.{}", i + 2).parse().unwrap();
            set_pod_running(&cp, "x", name, host, &[ip]).unwrap_or_else(|e| panic!("{e}"));
        }
        let dir = tempfile::tempdir().unwrap();
        let bed = Bed { cp, bins, dir };
        let policy = bed.file("policy.yaml", POLICY);
        let node = bed.file("node.yaml", NODE);
        bed.cp
            .apply(&[node, policy])
            .unwrap_or_else(|e| panic!("kubectl apply: {e}"));
        bed
    }

    fn file(&self, name: &str, text: &str) -> PathBuf {
        let p = self.dir.path().join(name);
        std::fs::write(&p, text).unwrap();
        p
    }

    /// `policy-agent ARGS` with `kubeconfig`: stdout, stderr, exit code.
    fn agent_with(&self, kubeconfig: &Path, args: &[&str]) -> (String, String, i32) {
        let out = self
            .cp
            .policy_agent(&self.bins, kubeconfig, args)
            .unwrap_or_else(|e| panic!("policy-agent {args:?}: {e}"));
        (
            String::from_utf8_lossy(&out.stdout).into_owned(),
            String::from_utf8_lossy(&out.stderr).into_owned(),
            out.status.code().unwrap_or(-1),
        )
    }

    /// `policy-agent ARGS` as the admin.
    fn agent(&self, args: &[&str]) -> (String, String, i32) {
        self.agent_with(self.cp.admin_kubeconfig(), args)
    }
}

fn json_lines(out: &str) -> Vec<Value> {
    out.lines()
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("{e}: {l}")))
        .collect()
}

fn find<'a>(lines: &'a [Value], from: &str, to: &str) -> &'a Value {
    lines
        .iter()
        .find(|l| l["from"] == from && l["to"] == to)
        .unwrap_or_else(|| panic!("no {from} -> {to} in {lines:?}"))
}

#[test]
fn simulate_and_explain_judge_the_live_cluster_and_a_change_to_it() {
    let bed = Bed::start();

    // The live cluster alone: every pair, as the API server has it.
    let (out, err, code) = bed.agent(&["simulate", "--kube", "-o", "json"]);
    assert_eq!(code, 0, "{out}\n{err}");
    let lines = json_lines(&out);
    assert_eq!(lines.len(), 6, "{out}");
    assert_eq!(find(&lines, "x/b", "x/a")["allowed"], true);
    assert_eq!(find(&lines, "x/c", "x/a")["allowed"], false);
    assert_eq!(find(&lines, "x/c", "x/a")["reason"], "ingress:no-rule");
    assert_eq!(find(&lines, "x/a", "x/c")["allowed"], true);
    let allowed_now = lines.iter().filter(|l| l["allowed"] == true).count();

    // A candidate that isolates x/c, in -n x: a CI gate fails on it.
    let deny = bed.file("deny-c.yaml", DENY_C);
    let deny = deny.to_str().unwrap();
    let args = [
        "simulate",
        "--kube",
        "-n",
        "x",
        "-f",
        deny,
        "--fail-on-deny",
        "-o",
        "json",
    ];
    let (out, err, code) = bed.agent(&args);
    assert_eq!(code, 1, "{out}\n{err}");
    assert!(err.contains("would deny 2 connection(s)"), "{err}");
    let lines = json_lines(&out);
    assert_eq!(lines.len(), 2, "{out}");
    for from in ["x/a", "x/b"] {
        let l = find(&lines, from, "x/c");
        assert_eq!(l["before"]["allowed"], true, "{l}");
        assert_eq!(l["after"]["allowed"], false, "{l}");
        assert_eq!(l["change"], "denied", "{l}");
    }
    // The page of the same what-if, rendered by a real browser: the
    // changed cells are the JSON's lines, the allowed cells what stays
    // allowed, and the new policy is named on hover.
    let (page, err, code) = bed.agent(&["simulate", "--kube", "-n", "x", "-f", deny, "-o", "html"]);
    assert_eq!(code, 0, "{err}");
    let dom = rendered_dom(&bed.file("whatif.html", &page));
    assert_eq!(
        (
            counted(&dom, "count-changed"),
            counted(&dom, "count-allowed"),
            counted(&dom, "count-denied")
        ),
        (
            lines.len(),
            allowed_now - lines.len(),
            6 - allowed_now + lines.len()
        ),
        "{dom}"
    );
    assert!(
        dom.contains("isolated by x/deny-c; no rule matches"),
        "{dom}"
    );
    // Without --fail-on-deny the same change is only reported.
    let (out2, err, code) = bed.agent(
        &args[..6]
            .iter()
            .chain(&["-o", "json"])
            .copied()
            .collect::<Vec<_>>(),
    );
    assert_eq!((code, out2.as_str()), (0, out.as_str()), "{err}");
    // As a table.
    let (table, err, code) = bed.agent(&["simulate", "--kube", "-n", "x", "-f", deny]);
    assert_eq!(code, 0, "{err}");
    assert!(
        table.contains("2 of 6 probe(s) change: 2 newly denied, 0 newly allowed."),
        "{table}"
    );
    assert!(table.contains("DENIED"), "{table}");
    // As YAML.
    let (yaml, err, code) = bed.agent(&["simulate", "--kube", "-n", "x", "-f", deny, "-o", "yaml"]);
    assert_eq!(code, 0, "{err}");
    assert_eq!(yaml.matches("change: denied").count(), 2, "{yaml}");

    // Deleting x/p opens what it isolated: x/c -> x/a, and nothing
    // is denied, so the gate passes.
    let (out, err, code) = bed.agent(&[
        "simulate",
        "--kube",
        "--delete",
        "x/p",
        "--fail-on-deny",
        "-o",
        "json",
    ]);
    assert_eq!(code, 0, "{out}\n{err}");
    let lines = json_lines(&out);
    assert_eq!(lines.len(), 1, "{out}");
    let l = find(&lines, "x/c", "x/a");
    assert_eq!(
        (&l["before"]["allowed"], &l["after"]["allowed"]),
        (&json!(false), &json!(true))
    );
    // A policy the cluster does not have is bad input.
    let (_, err, code) = bed.agent(&["simulate", "--kube", "--delete", "x/nope"]);
    assert_eq!(code, 2, "{err}");
    assert!(err.contains("no NetworkPolicy x/nope"), "{err}");

    // explain --kube: one probe on the live cluster, then with the change.
    let (out, err, code) = bed.agent(&[
        "explain", "--kube", "--from", "x/c", "--to", "x/a", "--port", "80", "-o", "json",
    ]);
    assert_eq!(code, 0, "{err}");
    let e: Value = serde_json::from_str(&out).unwrap();
    assert_eq!(e["allowed"], false, "{e}");
    assert!(e["explanation"].to_string().contains("x/p"), "{e}");
    let (out, err, code) = bed.agent(&[
        "explain", "--kube", "--from", "x/c", "--to", "x/a", "--port", "80", "--delete", "p", "-n",
        "x", "-o", "json",
    ]);
    assert_eq!(code, 0, "{err}");
    let e: Value = serde_json::from_str(&out).unwrap();
    assert_eq!(
        (&e["allowed"], &e["before"]["allowed"]),
        (&json!(true), &json!(false)),
        "{e}"
    );

    // Services and their EndpointSlices come from the API too: a probe to
    // the Service is judged on x/a, its backend (the slice controller
    // fills the slice once the Service is there).
    let svc = bed.file("svc.yaml", SERVICE);
    bed.cp.apply(&[svc]).unwrap_or_else(|e| panic!("{e}"));
    wait_until(
        "the Service's EndpointSlice lists x/a",
        Duration::from_secs(60),
        || {
            bed.cp
                .kubectl(&["get", "endpointslices", "-n", "x", "-o", "json"])
                .is_ok_and(|s| s.contains("10.244.0.2"))
        },
    );
    let probes = bed.file(
        "probes.jsonl",
        "{\"from\":\"x/c\",\"to\":\"svc:x/web\",\"port\":80}\n{\"from\":\"x/b\",\"to\":\"svc:x/web\",\"port\":80}\n",
    );
    let probes = probes.to_str().unwrap();
    let (out, err, code) = bed.agent(&["simulate", "--kube", "--probes", probes, "-o", "json"]);
    assert_eq!(code, 0, "{err}");
    let lines = json_lines(&out);
    assert_eq!(
        (
            &lines[0]["allowed"],
            &lines[0]["reason"],
            &lines[0]["backends"]
        ),
        (&json!(false), &json!("ingress:no-rule"), &json!(["x/a:80"])),
        "{out}"
    );
    assert_eq!(lines[1]["allowed"], true, "{out}");
}

#[test]
fn the_kubeconfig_is_found_as_kubectl_finds_it() {
    let bed = Bed::start();
    // A kubeconfig whose current context points nowhere reachable, and a
    // second context, "bed", that is the admin's.
    let admin: Value =
        serde_norway::from_str(&std::fs::read_to_string(bed.cp.admin_kubeconfig()).unwrap())
            .unwrap();
    let mut config = admin.clone();
    let context = admin["contexts"][0]["context"].clone();
    let cluster = admin["clusters"][0]["cluster"].clone();
    let mut nowhere = cluster.clone();
    nowhere["server"] = json!("https://192.0.2.1:6443");
    config["clusters"] = json!([
        {"name": "bed", "cluster": cluster},
        {"name": "nowhere", "cluster": nowhere},
    ]);
    let mut bed_context = context.clone();
    bed_context["cluster"] = json!("bed");
    bed_context["namespace"] = json!("x");
    let mut nowhere_context = context;
    nowhere_context["cluster"] = json!("nowhere");
    config["contexts"] = json!([
        {"name": "bed", "context": bed_context},
        {"name": "nowhere", "context": nowhere_context},
    ]);
    config["current-context"] = json!("nowhere");
    let path = bed.file("kubeconfig", &config.to_string());
    // --context bed, whose namespace (x) places the candidate and --delete.
    let deny = bed.file("deny-c.yaml", DENY_C);
    let (out, err, code) = bed.agent_with(
        &path,
        &[
            "simulate",
            "--kube",
            "--context",
            "bed",
            "-f",
            deny.to_str().unwrap(),
            "--delete",
            "p",
            "-o",
            "json",
        ],
    );
    assert_eq!(code, 0, "{out}\n{err}");
    // x/c loses a and b; x/a opens to x/c.
    assert_eq!(json_lines(&out).len(), 3, "{out}");
    // A context the kubeconfig lacks is an error naming it.
    let (_, err, code) = bed.agent_with(&path, &["simulate", "--kube", "--context", "nope"]);
    assert_eq!(code, 2, "{err}");
    assert!(err.contains("nope"), "{err}");
}
