//! `policy-agent flows` on a simulated node: the drops a policy causes come
//! back from the kernel's ring buffer resolved to pod names, and are counted.
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
}
