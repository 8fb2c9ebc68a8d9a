//! `policy-agent flows` on a simulated node: the drops a policy causes come
//! back from the kernel's ring buffer resolved to pod names, and are counted;
//! `policy-agent status` and `flows --counters` answer `-o json` from that
//! running agent.
//!
//! Needs root, bpffs and the binaries (see `palisade_tests::bin_dir`).

use std::sync::mpsc;
use std::thread;
use std::time::Duration;

use agent_api::{FlowRecord, Request, Response};
use palisade_tests::{bin_dir, scenarios};
use testbed::{read_probes, Testbed, TestbedOptions};

#[test]
fn drops_are_reported_with_pod_names_and_counted() {
    let scenario = scenarios("apod").remove(0);
    let probes = read_probes(&scenario.probes).unwrap();
    let bed = Testbed::start(TestbedOptions {
        manifests: vec![scenario.cluster.clone()],
        palisade: true,
        bin_dir: bin_dir(),
        probes: probes.clone(),
        nodes: 1,
        agent_args: Vec::new(),
    })
    .unwrap_or_else(|e| panic!("{}: {e}", scenario.label));
    let socket = bed.agent_socket().expect("palisade is on").to_path_buf();

    // Subscribe before any traffic, like `policy-agent flows --verdict dropped`.
    let (tx, rx) = mpsc::channel::<FlowRecord>();
    let sub = socket.clone();
    thread::spawn(move || {
        let request = Request::Flows {
            pod: Some("default/apod-api".into()),
            verdict: Some("dropped".into()),
        };
        let _ = agent_api::stream_flows(&sub, &request, |r| tx.send(r).is_ok());
    });
    thread::sleep(Duration::from_millis(300));

    // sleep → apod-api:80 is denied by the apod-api policy (ingress side).
    let denied: Vec<_> = probes
        .iter()
        .filter(|p| p.to.to_string() == "default/apod-api" && p.expected == Some(false))
        .cloned()
        .collect();
    assert!(!denied.is_empty());
    let seen = bed.probe(&denied);
    assert!(seen.iter().all(|o| o.allowed == Some(false)), "{seen:?}");

    // The probes are TCP; anything else on the link is not what we look for.
    let mut others = Vec::new();
    let record = loop {
        match rx.recv_timeout(Duration::from_secs(5)) {
            Ok(r) if r.protocol == "TCP" => break r,
            Ok(r) => others.push(r),
            Err(_) => panic!(
                "no TCP drop reported (other drops: {others:?}); agent log:\n{}",
                bed.agent_log_tail(30)
            ),
        }
    };
    assert_eq!(record.pod, "default/apod-api");
    assert_eq!(record.direction, "ingress");
    assert_eq!(record.verdict, "dropped");
    assert_eq!(record.reason, "no rule");
    // Attributed to the policy that isolates the pod.
    assert_eq!(record.isolated_by, vec!["default/apod-api".to_string()]);
    assert_eq!(record.policy, None);
    assert_eq!(record.protocol, "TCP");
    let peer = record.peer.clone().unwrap_or_default();
    assert!(
        denied.iter().any(|p| p.from.to_string() == peer),
        "peer {peer:?} is not one of the denied sources: {record:?}"
    );

    let Ok(Response::Counters { counters }) =
        agent_api::call(&socket, &Request::Counters, Duration::from_secs(5))
    else {
        panic!("no counters");
    };
    let drops = counters
        .iter()
        .find(|c| c.pod == "default/apod-api" && c.direction == "ingress" && c.verdict == "dropped")
        .map(|c| c.count)
        .unwrap_or(0);
    assert!(drops >= 1, "{counters:?}");

    // The CLI against the running agent: status and counters as JSON.
    let agent = bin_dir().join(testbed::AGENT_BINARY);
    let cli = |args: &[&str]| {
        let o = std::process::Command::new(&agent)
            .args(args)
            .arg("--socket")
            .arg(&socket)
            .args(["-o", "json"])
            .output()
            .unwrap();
        let out = String::from_utf8_lossy(&o.stdout).into_owned();
        // One document, or one object a line (a stream, as flows writes).
        let v: serde_json::Value = serde_json::from_str(&out)
            .or_else(|_| {
                out.lines()
                    .map(serde_json::from_str::<serde_json::Value>)
                    .collect::<Result<Vec<_>, _>>()
                    .map(serde_json::Value::Array)
            })
            .unwrap_or_else(|e| {
                panic!(
                    "{args:?}: not JSON ({e}): {out}{}",
                    String::from_utf8_lossy(&o.stderr)
                )
            });
        (o.status.code(), v)
    };
    let (code, status) = cli(&["status"]);
    assert_eq!(code, Some(0), "every local pod enforced: {status}");
    let endpoints = status["endpoints"].as_array().unwrap();
    assert_eq!(endpoints.len(), bed.pods().len(), "{status}");
    let api = endpoints
        .iter()
        .find(|e| e["pod"] == "default/apod-api")
        .unwrap_or_else(|| panic!("{status}"));
    assert_eq!(api["ingressIsolated"], true, "{api}");
    assert!(
        api["ingressRules"].as_u64().is_some_and(|n| n >= 1),
        "{api}"
    );
    assert!(api["identity"].is_u64(), "{api}");
    assert_eq!(
        api["policies"],
        serde_json::json!(["default/apod-api"]),
        "{api}"
    );
    assert!(status["lastApplyUnixMs"].is_u64(), "{status}");
    assert_eq!(status["unenforced"], serde_json::json!([]), "{status}");
    let (code, counters) = cli(&["flows", "--counters"]);
    assert_eq!(code, Some(0));
    // One row a line: a single row reads as one document.
    let rows = match &counters {
        serde_json::Value::Array(rows) => rows.clone(),
        row => vec![row.clone()],
    };
    assert!(
        rows.iter()
            .any(|r| r["pod"] == "default/apod-api" && r["verdict"] == "dropped"),
        "{counters}"
    );
}
