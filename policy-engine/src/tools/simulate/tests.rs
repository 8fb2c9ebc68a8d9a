use super::*;
use serde_json::{json, Value};
use std::path::PathBuf;

const CLUSTER: &str = r#"
kind: Pod
metadata: {name: a, namespace: x, labels: {app: a}}
spec: {containers: [{name: c, image: i, ports: [{containerPort: 80}]}]}
status: {podIP: 10.0.0.1}
---
kind: Pod
metadata: {name: b, namespace: x, labels: {app: b}}
spec: {containers: [{name: c, image: i, ports: [{containerPort: 80}]}]}
status: {podIP: 10.0.0.2}
---
kind: NetworkPolicy
metadata: {name: p, namespace: x}
spec:
  podSelector: {matchLabels: {app: a}}
  ingress: [{from: [{podSelector: {matchLabels: {app: b}}}], ports: [{port: 80}]}]
"#;

/// The JSON lines a run wrote.
fn json_lines(out: Vec<u8>) -> Vec<Value> {
    String::from_utf8(out)
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect()
}

fn write_cluster(text: &str) -> (PathBuf, PathBuf) {
    let dir = std::env::temp_dir().join(format!(
        "palisade-sim-{}-{}",
        std::process::id(),
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_nanos())
            .unwrap_or_default()
    ));
    std::fs::create_dir_all(&dir).unwrap();
    let f = dir.join("cluster.yaml");
    std::fs::write(&f, text).unwrap();
    (dir, f)
}

#[test]
fn json_lines_in_probe_order() {
    let (dir, f) = write_cluster(CLUSTER);
    let opts = Options {
        input: vec![f].into(),
        probes: Some("probes.jsonl".into()),
        output: Output::Json,
    };
    let probes = "{\"from\":\"x/b\",\"to\":\"x/a\",\"port\":80,\"expected\":1}\n\n{\"from\":\"203.0.113.1\",\"to\":\"x/a\",\"port\":80,\"protocol\":\"UDP\"}\n";
    let mut out = Vec::new();
    let o = run_with(&opts, Some(probes.as_bytes()), &mut out).unwrap();
    assert_eq!((o.probes, o.allowed), (2, 1));
    let lines = json_lines(out);
    assert_eq!(lines[0]["allowed"], true);
    assert_eq!(lines[1]["allowed"], false);
    assert_eq!(lines[1]["reason"], "ingress:no-rule");
    std::fs::remove_dir_all(dir).unwrap();
}

const SERVICES: &str = "---
kind: Pod
metadata: {name: a2, namespace: x, labels: {svc: web}}
spec: {containers: [{name: c, image: i, ports: [{containerPort: 8080, name: http}]}]}
status: {podIP: 10.0.0.3}
---
kind: Service
metadata: {name: web, namespace: x}
spec: {clusterIP: 10.96.0.9, selector: {svc: web}, ports: [{port: 80, targetPort: 80}]}
---
kind: Service
metadata: {name: empty, namespace: x}
spec: {clusterIP: 10.96.0.10, selector: {app: none}, ports: [{port: 80}]}
";

fn service_cluster() -> String {
    format!(
        "{}{SERVICES}",
        CLUSTER.replace("labels: {app: a}", "labels: {app: a, svc: web}")
    )
}

#[test]
fn service_probes_answer_on_the_backends() {
    let (dir, f) = write_cluster(&service_cluster());
    let opts = Options {
        input: vec![f].into(),
        probes: Some("p.jsonl".into()),
        output: Output::Json,
    };
    // b is allowed into a on 80 by policy p; a2 is not isolated: agree.
    // 203.0.113.1 is allowed into a2 but not into a: one line each.
    let probes = "{\"from\":\"x/b\",\"to\":\"svc:x/web\",\"port\":80}\n\
                  {\"from\":\"203.0.113.1\",\"to\":\"svc:x/web\",\"port\":80}\n\
                  {\"from\":\"x/b\",\"to\":\"svc:x/empty\",\"port\":80}\n";
    let mut out = Vec::new();
    let o = run_with(&opts, Some(probes.as_bytes()), &mut out).unwrap();
    assert_eq!((o.probes, o.allowed), (3, 1));
    let lines = json_lines(out);
    assert_eq!(lines.len(), 4, "{lines:?}");
    assert_eq!(lines[0]["allowed"], true);
    assert_eq!(lines[0]["backends"], json!(["x/a:80", "x/a2:80"]));
    assert_eq!(
        (&lines[1]["backend"], &lines[1]["allowed"]),
        (&json!("x/a:80"), &json!(false))
    );
    assert_eq!(
        (&lines[2]["backend"], &lines[2]["allowed"]),
        (&json!("x/a2:80"), &json!(true))
    );
    assert_eq!(lines[3]["reason"], "no-backends");
    // A port the Service does not have: that probe is an error, the
    // batch goes on.
    let mut out = Vec::new();
    let o = run_with(
        &opts,
        Some(
            "{\"from\":\"x/b\",\"to\":\"svc:x/web\",\"port\":81}\n{\"from\":\"x/b\",\"to\":\"svc:x/nope\",\"port\":80}\n{\"from\":\"x/b\",\"to\":\"svc:x/web\",\"port\":80}\n"
                .as_bytes(),
        ),
        &mut out,
    )
    .unwrap();
    assert_eq!((o.probes, o.exit_code()), (1, 2));
    assert!(
        o.errors[0].contains("p.jsonl:1") && o.errors[0].contains("no port 81/TCP"),
        "{:?}",
        o.errors
    );
    assert!(
        o.errors[1].contains("unknown Service x/nope"),
        "{:?}",
        o.errors
    );
    assert_eq!(String::from_utf8(out).unwrap().lines().count(), 3);
    std::fs::remove_dir_all(dir).unwrap();
}

#[test]
fn service_probes_from_unsendable_sources_are_answered() {
    let (dir, f) = write_cluster(&format!("{}---{PENDING}", service_cluster()));
    let opts = Options {
        input: vec![f].into(),
        probes: Some("p.jsonl".into()),
        output: Output::Json,
    };
    let probes = [
        // A Pending pod labelled app: b: both backends admit it.
        r#"{"from":"x/pending","to":"svc:x/web","port":80,"allowed":true}"#,
        // An IPv6-only pod to an IPv4-only Service: a note, and policy
        // p does not admit app: c into x/a.
        r#"{"from":"x/v6","to":"svc:x/web","port":80,"allowed":true}"#,
    ]
    .join("\n");
    let mut out = Vec::new();
    let o = run_with(&opts, Some(probes.as_bytes()), &mut out).unwrap();
    assert!(o.errors.is_empty(), "{:?}", o.errors);
    let lines = json_lines(out);
    assert_eq!(lines.len(), 3, "{lines:?}");
    assert_eq!(lines[0]["allowed"], true);
    assert!(
        lines[0]["note"]
            .as_str()
            .is_some_and(|n| n.contains("x/pending has no IP address")),
        "{lines:?}"
    );
    assert_eq!(
        (&lines[1]["backend"], &lines[1]["allowed"]),
        (&json!("x/a:80"), &json!(false))
    );
    assert!(
        lines[1]["note"]
            .as_str()
            .is_some_and(|n| n.contains("x/v6 has no IPv4 address")),
        "{lines:?}"
    );
    assert_eq!(lines[2]["allowed"], true);
    // The expectation on the v6 probe fails on backend x/a: exit 1.
    assert_eq!(o.mismatches.len(), 1, "{:?}", o.mismatches);
    assert!(o.mismatches[0]
        .to_string()
        .starts_with("p.jsonl:2: x/v6 -> svc:x/web 80/TCP"));
    assert_eq!(o.exit_code(), 1);

    // Table and wide: one row per disagreeing backend, with headers.
    for (output, want) in [
        (Output::Table, "svc:x/web (x/a:80)"),
        (Output::Wide, "NOTE"),
        (Output::Yaml, "backend: x/a:80"),
    ] {
        let opts = Options {
            output,
            ..opts.clone()
        };
        let mut out = Vec::new();
        run_with(&opts, Some(probes.as_bytes()), &mut out).unwrap();
        let text = String::from_utf8(out).unwrap();
        assert!(text.contains(want), "{output:?}: {text}");
    }
    std::fs::remove_dir_all(dir).unwrap();
}

#[test]
fn a_policy_over_its_budget_is_named_and_fails_closed() {
    // 3,000 rules, each the world but one /32 on its own port: R²
    // entries, past the per-policy budget.
    let mut big = String::from("---\nkind: NetworkPolicy\nmetadata: {name: big, namespace: x}\nspec:\n  podSelector: {matchLabels: {app: b}}\n  policyTypes: [Egress]\n  egress:\n");
    for i in 0..3000u32 {
        big.push_str(&format!(
            "  - to: [{{ipBlock: {{cidr: 0.0.0.0/0, except: [100.64.{}.{}/32]}}}}]\n    ports: [{{port: {}}}]\n",
            i / 256,
            i % 256,
            1000 + i
        ));
    }
    let (dir, f) = write_cluster(&format!("{CLUSTER}{big}"));
    let opts = Options {
        input: vec![f].into(),
        probes: None,
        output: Output::Json,
    };
    let mut out = Vec::new();
    let o = run_with(&opts, None::<&[u8]>, &mut out).unwrap();
    assert!(
        o.warnings
            .iter()
            .any(|w| w.contains("x/big") && w.contains("budget")),
        "{:?}",
        o.warnings
    );
    // x/b's egress is isolated by x/big, which allows nothing.
    let lines = json_lines(out);
    let b_to_a = lines
        .iter()
        .find(|l| l["from"] == "x/b" && l["to"] == "x/a")
        .unwrap();
    assert_eq!(b_to_a["allowed"], false, "{b_to_a}");
    std::fs::remove_dir_all(dir).unwrap();
}

#[test]
fn table_matrix_for_all_pairs() {
    let (dir, f) = write_cluster(CLUSTER);
    let opts = Options {
        input: vec![f].into(),
        probes: None,
        output: Output::Table,
    };
    let mut out = Vec::new();
    let o = run_with(&opts, None::<&[u8]>, &mut out).unwrap();
    assert_eq!((o.probes, o.allowed), (2, 2));
    let text = String::from_utf8(out).unwrap();
    assert!(text.contains("80/TCP"), "{text}");
    std::fs::remove_dir_all(dir).unwrap();
}

#[test]
fn bad_input_is_exit_2_and_named() {
    let (dir, f) = write_cluster(CLUSTER);
    let opts = Options {
        input: vec![f.clone()].into(),
        probes: Some("p.jsonl".into()),
        output: Output::Json,
    };
    // An unknown pod: that probe is an error line, the batch goes on.
    let mut out = Vec::new();
    let o = run_with(
        &opts,
        Some("{\"from\":\"x/zz\",\"to\":\"x/a\",\"port\":80}\n{\"from\":\"x/b\",\"to\":\"x/a\",\"port\":80}\n".as_bytes()),
        &mut out,
    )
    .unwrap();
    assert_eq!(o.exit_code(), 2);
    assert_eq!(o.probes, 1);
    assert!(
        o.errors[0].contains("p.jsonl:1") && o.errors[0].contains("x/zz"),
        "{:?}",
        o.errors
    );
    let text = String::from_utf8(out).unwrap();
    assert_eq!(text.lines().count(), 2, "{text}");
    let e = run_with(
        &opts,
        Some("{\"from\":\"x/b\",\"to\":\"x/a\",\"port\":80,\"protocol\":\"ICMP\"}\n".as_bytes()),
        &mut Vec::new(),
    )
    .unwrap_err();
    assert_eq!(e.exit_code(), 2);
    let bad = CLUSTER.replace("ports: [{port: 80}]", "ports: [{port: 80, endPort: 70}]");
    std::fs::write(&f, bad).unwrap();
    let e = run_with(&opts, None::<&[u8]>, &mut Vec::new()).unwrap_err();
    assert_eq!(e.exit_code(), 2);
    let msg = e.to_string();
    assert!(
        msg.contains("cluster.yaml:16: NetworkPolicy x/p: spec.ingress[0].ports[0].endPort"),
        "{msg}"
    );
    std::fs::remove_dir_all(dir).unwrap();
}

const PENDING: &str = r#"
kind: Pod
metadata: {name: pending, namespace: x, labels: {app: b}}
status: {phase: Pending}
---
kind: Pod
metadata: {name: v6, namespace: x, labels: {app: c}}
spec: {containers: [{name: c, image: i, ports: [{containerPort: 80}]}]}
status: {podIP: "2001:db8::6"}
"#;

#[test]
fn every_probe_is_answered() {
    let (dir, f) = write_cluster(&format!("{CLUSTER}---{PENDING}"));
    let opts = Options {
        input: vec![f].into(),
        probes: Some("p.jsonl".into()),
        output: Output::Json,
    };
    let probes = [
        // A Pending pod: no address, but its labels admit it.
        r#"{"from":"x/pending","to":"x/a","port":80,"allowed":true}"#,
        // An IPv6 literal to an IPv4-only pod: not sendable, and the
        // ingress policy denies it anyway.
        r#"{"from":"2001:db8::99","to":"x/a","port":80,"allowed":false}"#,
        // IPv4-only to IPv6-only pods; lower-case protocol.
        r#"{"from":"x/b","to":"x/v6","port":80,"protocol":"tcp","allowed":false}"#,
    ]
    .join("\n");
    let mut out = Vec::new();
    let o = run_with(&opts, Some(probes.as_bytes()), &mut out).unwrap();
    assert_eq!(o.probes, 3);
    assert!(o.errors.is_empty(), "{:?}", o.errors);
    let lines = json_lines(out);
    assert_eq!(lines[0]["allowed"], true);
    assert!(lines[0]["note"]
        .as_str()
        .unwrap()
        .contains("x/pending has no IP address"));
    assert_eq!(lines[1]["allowed"], false);
    assert!(lines[1]["note"]
        .as_str()
        .unwrap()
        .contains("x/a has no IPv6 address"));
    assert_eq!(lines[2]["protocol"], "TCP");
    // x/v6 is not isolated: the verdict is allowed, the file said no.
    assert_eq!(lines[2]["allowed"], true);
    assert_eq!(o.mismatches.len(), 1);
    assert_eq!(o.exit_code(), 1);
    let m = o.mismatches[0].to_string();
    assert!(
        m.starts_with("p.jsonl:3: x/b -> x/v6 80/TCP: expected denied, simulated allowed"),
        "{m}"
    );

    // The matrix skips the pod without an address and says so.
    let opts = Options {
        probes: None,
        output: Output::Table,
        ..opts
    };
    let mut out = Vec::new();
    let o = run_with(&opts, None::<&[u8]>, &mut out).unwrap();
    assert_eq!(o.skipped_pods, 1);
    assert_eq!(o.exit_code(), 0);
    let text = String::from_utf8(out).unwrap();
    assert!(
        text.contains("1 pod(s) without an address skipped") && !text.contains("pending"),
        "{text}"
    );
    std::fs::remove_dir_all(dir).unwrap();
}
