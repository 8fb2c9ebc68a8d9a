//! The offline tools as a user runs them: the real `policy-agent` binary,
//! its exit codes (0 fine, 1 a finding or a mismatch, 2 bad input), its
//! messages and its `-o` formats. No root, no kernel.

use std::io::{BufRead, BufReader, Write};
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};

use serde_json::Value;

const AGENT: &str = env!("CARGO_BIN_EXE_policy-agent");

/// A namespace `app` with a web pod, a worker, a Pending pod and an
/// IPv6-only pod; cluster DNS in kube-system; a policy that isolates the
/// worker for egress and lets it reach only web (the DNS mistake).
const CLUSTER: &str = "\
apiVersion: v1
kind: Namespace
metadata: {name: app}
---
apiVersion: v1
kind: Namespace
metadata: {name: kube-system}
---
apiVersion: v1
kind: Pod
metadata: {name: coredns, namespace: kube-system, labels: {k8s-app: kube-dns}}
spec: {containers: [{name: c, image: i, ports: [{containerPort: 53, protocol: UDP}]}]}
status: {podIP: 10.244.0.2}
---
apiVersion: v1
kind: Pod
metadata: {name: web, namespace: app, labels: {app: web}}
spec: {containers: [{name: c, image: i, ports: [{containerPort: 8080, name: http}]}]}
status: {podIP: 10.244.0.10}
---
apiVersion: v1
kind: Pod
metadata: {name: worker, namespace: app, labels: {app: worker}}
spec: {containers: [{name: c, image: i}]}
status: {podIP: 10.244.0.11}
---
apiVersion: v1
kind: Pod
metadata: {name: pending, namespace: app, labels: {app: worker}}
spec: {containers: [{name: c, image: i}]}
status: {phase: Pending}
---
apiVersion: v1
kind: Pod
metadata: {name: v6, namespace: app, labels: {app: v6}}
spec: {containers: [{name: c, image: i}]}
status: {podIP: \"2001:db8::6\"}
---
apiVersion: networking.k8s.io/v1
kind: NetworkPolicy
metadata: {name: worker-egress, namespace: app}
spec:
  podSelector: {matchLabels: {app: worker}}
  policyTypes: [Egress]
  egress:
  - to: [{podSelector: {matchLabels: {app: web}}}]
    ports: [{port: http}]
";

/// The fix: DNS to the cluster DNS pods.
const DNS_FIX: &str = "\
---
apiVersion: networking.k8s.io/v1
kind: NetworkPolicy
metadata: {name: worker-dns, namespace: app}
spec:
  podSelector: {matchLabels: {app: worker}}
  policyTypes: [Egress]
  egress:
  - to: [{namespaceSelector: {}, podSelector: {matchLabels: {k8s-app: kube-dns}}}]
    ports: [{port: 53, protocol: UDP}, {port: 53, protocol: TCP}]
";

fn write(dir: &Path, name: &str, text: &str) -> PathBuf {
    let p = dir.join(name);
    std::fs::write(&p, text).unwrap();
    p
}

fn run(args: &[&str], files: &[&Path]) -> Output {
    let mut c = Command::new(AGENT);
    c.args(args);
    for f in files {
        c.arg("-f").arg(f);
    }
    c.output().unwrap()
}

fn text(b: &[u8]) -> String {
    String::from_utf8_lossy(b).into_owned()
}

fn code(o: &Output) -> i32 {
    o.status.code().unwrap_or(-1)
}

fn json_lines(o: &Output) -> Vec<Value> {
    text(&o.stdout)
        .lines()
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("{e}: {l}")))
        .collect()
}

#[test]
fn lint_catches_the_dns_mistake_and_exits_by_fail_on() {
    let dir = tempfile::tempdir().unwrap();
    let f = write(dir.path(), "cluster.yaml", CLUSTER);
    let o = run(&["lint"], &[&f]);
    let out = text(&o.stdout);
    assert_eq!(code(&o), 1, "{out}{}", text(&o.stderr));
    assert!(out.starts_with("SEVERITY"), "a header: {out}");
    assert!(
        out.contains("NetworkPolicy app/worker-egress")
            && out.contains("spec.egress")
            && out.contains("cannot resolve names"),
        "{out}"
    );
    let o = run(&["lint", "-o", "json"], &[&f]);
    let v: Value = serde_json::from_str(&text(&o.stdout)).unwrap();
    let findings = v["findings"].as_array().unwrap_or_else(|| panic!("{v}"));
    assert!(
        findings.iter().any(|f| f["severity"] == "error"
            && f["field"] == "spec.egress"
            && f["location"]
                .as_str()
                .is_some_and(|l| l.contains("cluster.yaml:"))),
        "{v}"
    );

    // With DNS allowed, nothing at error level is left: exit 0.
    let fixed = write(dir.path(), "fixed.yaml", &format!("{CLUSTER}{DNS_FIX}"));
    let o = run(&["lint"], &[&fixed]);
    assert_eq!(code(&o), 0, "{}{}", text(&o.stdout), text(&o.stderr));
    // A warning only (a selector that matches no pod): 0 by default, 1
    // with --fail-on warning.
    let warn = write(
        dir.path(),
        "warn.yaml",
        &format!(
            "{CLUSTER}{DNS_FIX}---\nkind: NetworkPolicy\nmetadata: {{name: nobody, namespace: app}}\nspec:\n  podSelector: {{matchLabels: {{app: gone}}}}\n  ingress: [{{}}]\n"
        ),
    );
    let o = run(&["lint"], &[&warn]);
    assert_eq!(code(&o), 0, "{}", text(&o.stdout));
    assert!(
        text(&o.stdout).contains("selects no pod"),
        "{}",
        text(&o.stdout)
    );
    let o = run(&["lint", "--fail-on", "warning"], &[&warn]);
    assert_eq!(code(&o), 1, "{}", text(&o.stdout));
}

#[test]
fn a_typo_is_an_error_naming_the_field() {
    let dir = tempfile::tempdir().unwrap();
    let f = write(
        dir.path(),
        "np.yaml",
        "apiVersion: networking.k8s.io/v1\nkind: NetworkPolicy\nmetadata: {name: web, namespace: app}\nspec:\n  podSelector: {}\n  ingres:\n  - from: [{podSelector: {}}]\n",
    );
    for cmd in [&["lint"][..], &["simulate"]] {
        let o = run(cmd, &[&f]);
        let err = text(&o.stderr);
        assert_eq!(code(&o), 2, "{cmd:?}: {err}");
        assert!(
            err.contains("np.yaml:6: NetworkPolicy app/web: spec.ingres: unknown field \"ingres\""),
            "{cmd:?}: {err}"
        );
    }
    // --lenient: read as the API server without validation would, with a
    // warning naming the field.
    let o = run(&["lint", "--lenient"], &[&f]);
    assert_ne!(code(&o), 2, "{}", text(&o.stderr));
    assert!(
        text(&o.stderr).contains("spec.ingres"),
        "{}",
        text(&o.stderr)
    );
    // A type error names its path too.
    let f = write(
        dir.path(),
        "pod.yaml",
        "kind: Pod\nmetadata: {name: a, namespace: app}\nspec:\n  containers:\n  - name: c\n    ports: [{containerPort: eighty}]\n",
    );
    let o = run(&["lint"], &[&f]);
    assert_eq!(code(&o), 2);
    assert!(
        text(&o.stderr)
            .contains("pod.yaml:6: Pod app/a: spec.containers[0].ports[0].containerPort"),
        "{}",
        text(&o.stderr)
    );
}

#[test]
fn simulate_answers_every_probe_and_checks_expectations() {
    let dir = tempfile::tempdir().unwrap();
    let f = write(dir.path(), "cluster.yaml", CLUSTER);
    let probes = write(
        dir.path(),
        "probes.jsonl",
        "# worker may reach web, nothing else\n\
         {\"from\":\"app/worker\",\"to\":\"app/web\",\"port\":8080,\"allowed\":true}\n\
         {\"from\":\"app/pending\",\"to\":\"app/web\",\"port\":8080,\"allowed\":true}\n\
         {\"from\":\"app/v6\",\"to\":\"app/web\",\"port\":8080,\"protocol\":\"tcp\",\"allowed\":true}\n\
         {\"from\":\"app/worker\",\"to\":\"kube-system/coredns\",\"port\":53,\"protocol\":\"udp\",\"allowed\":true}\n",
    );
    let o = run(
        &[
            "simulate",
            "--probes",
            probes.to_str().unwrap(),
            "-o",
            "json",
        ],
        &[&f],
    );
    let err = text(&o.stderr);
    // The last probe is the DNS mistake: expected allowed, denied.
    assert_eq!(code(&o), 1, "{err}");
    assert!(
        err.contains("probes.jsonl:5: app/worker -> kube-system/coredns 53/UDP: expected allowed, simulated denied"),
        "{err}"
    );
    let lines = json_lines(&o);
    assert_eq!(lines.len(), 4, "every probe answered");
    assert_eq!(lines[1]["allowed"], true);
    assert!(
        lines[1]["note"]
            .as_str()
            .is_some_and(|n| n.contains("app/pending has no IP address")),
        "{:?}",
        lines[1]
    );
    assert!(
        lines[2]["note"]
            .as_str()
            .is_some_and(|n| n.contains("has no IPv")),
        "{:?}",
        lines[2]
    );
    assert_eq!(lines[3]["protocol"], "UDP");
    assert!(!err.contains("-:0:"), "{err}");

    // The all-pairs matrix skips the Pending pod and says so.
    let o = run(&["simulate"], &[&f]);
    assert_eq!(code(&o), 0, "{}", text(&o.stderr));
    assert!(
        text(&o.stdout).contains("1 pod(s) without an address skipped"),
        "{}",
        text(&o.stdout)
    );
}

#[test]
fn every_offline_command_takes_o_json_and_yaml_and_stdin() {
    let dir = tempfile::tempdir().unwrap();
    let f = write(dir.path(), "cluster.yaml", &format!("{CLUSTER}{DNS_FIX}"));
    let explain = [
        "explain",
        "--from",
        "app/worker",
        "--to",
        "app/web",
        "--port",
        "8080",
    ];
    for cmd in [&["lint"][..], &["simulate"], &explain] {
        let args: Vec<&str> = cmd.iter().copied().chain(["-o", "json"]).collect();
        let o = run(&args, &[&f]);
        assert_ne!(code(&o), 2, "{cmd:?}: {}", text(&o.stderr));
        let out = text(&o.stdout);
        // One document, or one object a line.
        let ok = serde_json::from_str::<Value>(&out).is_ok()
            || out
                .lines()
                .all(|l| serde_json::from_str::<Value>(l).is_ok());
        assert!(ok && !out.is_empty(), "{cmd:?}: not JSON: {out}");
        let args: Vec<&str> = cmd.iter().copied().chain(["-o", "yaml"]).collect();
        let o = run(&args, &[&f]);
        let out = text(&o.stdout);
        serde_norway::from_str::<serde_json::Value>(&out)
            .unwrap_or_else(|e| panic!("{cmd:?}: not YAML ({e}): {out}"));
    }
    let o = run(
        &explain
            .iter()
            .copied()
            .chain(["-o", "json"])
            .collect::<Vec<_>>(),
        &[&f],
    );
    let v: Value = serde_json::from_str(&text(&o.stdout)).unwrap();
    assert_eq!(
        (&v["allowed"], &v["protocol"]),
        (&Value::Bool(true), &Value::from("TCP"))
    );

    // `-f -` reads the manifests from stdin.
    let mut child = Command::new(AGENT)
        .args(["lint", "-f", "-", "-o", "json"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    child
        .stdin
        .take()
        .unwrap()
        .write_all(CLUSTER.as_bytes())
        .unwrap();
    let o = child.wait_with_output().unwrap();
    assert_eq!(code(&o), 1, "the DNS mistake, read from stdin");
    assert!(text(&o.stdout).contains("spec.egress"));
}

#[test]
fn a_broken_pipe_ends_quietly() {
    let dir = tempfile::tempdir().unwrap();
    // Enough pods that the all-pairs answer outgrows a pipe's buffer.
    let mut cluster = String::new();
    for i in 0..80 {
        cluster.push_str(&format!(
            "---\nkind: Pod\nmetadata: {{name: p{i}, namespace: app}}\nspec: {{containers: [{{name: c, image: i, ports: [{{containerPort: 80}}, {{containerPort: 443}}]}}]}}\nstatus: {{podIP: 10.244.1.{i}}}\n"
        ));
    }
    let f = write(dir.path(), "many.yaml", &cluster);
    let mut child = Command::new(AGENT)
        .args(["simulate", "-o", "json", "-f"])
        .arg(&f)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut first = String::new();
    BufReader::new(child.stdout.take().unwrap())
        .read_line(&mut first)
        .unwrap();
    // stdout is closed here, as `| head -1` closes it.
    assert!(first.contains("\"allowed\""), "{first}");
    let o = child.wait_with_output().unwrap();
    assert_eq!(code(&o), 0, "{}", text(&o.stderr));
    assert!(o.stderr.is_empty(), "{}", text(&o.stderr));
}

#[test]
fn html_is_simulate_s_alone_and_kube_flags_need_kube() {
    let dir = tempfile::tempdir().unwrap();
    let cluster = write(dir.path(), "c.yaml", CLUSTER);
    let o = run(&["simulate", "-o", "html"], &[&cluster]);
    assert_eq!(code(&o), 0, "{}", text(&o.stderr));
    let page = text(&o.stdout);
    assert!(page.starts_with("<!DOCTYPE html>"), "{page}");
    assert!(page.contains("isolated by app/worker-egress"), "{page}");
    for args in [
        &[
            "explain",
            "--from",
            "app/worker",
            "--to",
            "app/web",
            "--port",
            "8080",
            "-o",
            "html",
        ][..],
        &["lint", "-o", "html"][..],
    ] {
        let o = run(args, &[&cluster]);
        assert_eq!(code(&o), 2, "{args:?}");
        assert!(
            text(&o.stderr).contains("-o html is only for simulate"),
            "{args:?}"
        );
    }
    // What-if flags without --kube are refused by the parser.
    for flag in [
        &["--delete", "app/x"][..],
        &["--fail-on-deny"][..],
        &["--context", "c"][..],
    ] {
        let o = run(&[&["simulate"][..], flag].concat(), &[&cluster]);
        assert_eq!(code(&o), 2, "{flag:?}: {}", text(&o.stderr));
    }
}

#[test]
fn kube_without_a_kubeconfig_is_an_error_not_a_hang() {
    let dir = tempfile::tempdir().unwrap();
    let o = Command::new(AGENT)
        .args(["simulate", "--kube"])
        .env("KUBECONFIG", dir.path().join("none"))
        .env("HOME", dir.path())
        .env_remove("KUBERNETES_SERVICE_HOST")
        .output()
        .unwrap();
    assert_eq!(code(&o), 2, "{}", text(&o.stderr));
    assert!(
        text(&o.stderr).contains("reading the cluster"),
        "{}",
        text(&o.stderr)
    );
}
