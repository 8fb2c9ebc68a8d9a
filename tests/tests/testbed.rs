//! The test bed itself, on the plain bridge (no Palisade binaries needed):
//! bad input is reported as such, unserved ports are refused, the default
//! probe matrix runs in parallel, and nothing is left behind.

use std::path::Path;
use std::time::{Duration, Instant};

use palisade_tests::scenarios;
use testbed::{
    default_probes, load_snapshot, parse_probes, report, Testbed, TestbedError, TestbedOptions,
};

#[test]
fn unknown_pod_in_a_probe_is_bad_input() {
    let scenario = &scenarios("service-abc")[0];
    let probes = parse_probes(
        r#"{"from": "default/nope", "to": "default/servicea", "port": 80}"#,
        Path::new("inline.jsonl"),
    )
    .unwrap();
    let err = Testbed::start(TestbedOptions {
        manifests: vec![scenario.cluster.clone()],
        probes,
        ..Default::default()
    })
    .unwrap_err();
    assert!(err.is_bad_input(), "{err}");
    assert_eq!(err.exit_code(), 2);
    assert!(err.to_string().contains("default/nope"), "{err}");
}

#[test]
fn missing_manifest_is_bad_input() {
    let err = Testbed::start(TestbedOptions {
        manifests: vec!["/nonexistent/cluster.yaml".into()],
        ..Default::default()
    })
    .unwrap_err();
    assert!(matches!(err, TestbedError::Manifest { .. }), "{err}");
    assert_eq!(err.exit_code(), 2);
}

#[test]
fn default_matrix_runs_in_parallel_and_cleans_up() {
    let scenario = &scenarios("db-backup")[0];
    let snapshot = load_snapshot(std::slice::from_ref(&scenario.cluster)).unwrap();
    let mut probes = default_probes(&snapshot);
    assert!(!probes.is_empty());
    // Plus one unserved port: refused, so a probe can come back denied.
    probes.extend(
        parse_probes(
            r#"{"from": "prod/db", "to": "dev/api-pod", "port": 9999, "allowed": false}"#,
            Path::new("inline.jsonl"),
        )
        .unwrap(),
    );
    let bed = Testbed::start(TestbedOptions {
        manifests: vec![scenario.cluster.clone()],
        ..Default::default()
    })
    .unwrap();
    // Served only the declared ports: the extra probe was not announced.
    let t0 = Instant::now();
    let seen = bed.probe(&probes);
    assert!(t0.elapsed() < Duration::from_secs(5), "{:?}", t0.elapsed());
    let (last, matrix) = seen.split_last().unwrap();
    assert!(
        matrix.iter().all(|o| o.allowed == Some(true)),
        "{}",
        report::table(&seen)
    );
    assert_eq!(last.allowed, Some(false), "{}", report::table(&seen));
    let names: Vec<String> = bed
        .pods()
        .values()
        .map(|w| w.netns.clone())
        .chain([bed.node_netns().to_string()])
        .collect();
    drop(bed);
    for ns in names {
        assert!(
            !Path::new("/run/netns").join(&ns).exists(),
            "{ns} left behind"
        );
    }
}

#[test]
fn an_agent_that_dies_fails_start_with_its_log_and_leaves_nothing() {
    let bin = std::env::temp_dir().join(format!("pal-fake-bin-{}", std::process::id()));
    std::fs::create_dir_all(&bin).unwrap();
    let agent = bin.join(testbed::AGENT_BINARY);
    std::fs::write(
        &agent,
        "#!/bin/sh\necho 'fake agent: cannot load programs' >&2\nexit 3\n",
    )
    .unwrap();
    std::fs::write(bin.join(testbed::PLUGIN_BINARY), "#!/bin/sh\nexit 1\n").unwrap();
    for f in [testbed::AGENT_BINARY, testbed::PLUGIN_BINARY] {
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(bin.join(f), std::fs::Permissions::from_mode(0o755)).unwrap();
    }
    let scenario = &scenarios("service-abc")[0];
    let err = Testbed::start(TestbedOptions {
        manifests: vec![scenario.cluster.clone()],
        palisade: true,
        bin_dir: bin.clone(),
        probes: vec![],
        nodes: 1,
        agent_args: Vec::new(),
    })
    .unwrap_err();
    std::fs::remove_dir_all(&bin).unwrap();
    let TestbedError::Agent { log, .. } = &err else {
        panic!("expected an agent error, got: {err}");
    };
    assert_eq!(err.exit_code(), 1);
    assert!(
        err.to_string().contains("fake agent: cannot load programs"),
        "{err}"
    );
    // Everything of that bed is gone: its state folder (which held the log),
    // its node namespace, its bpffs folder.
    let state = log.parent().unwrap();
    let id = state.file_name().unwrap().to_string_lossy().into_owned();
    assert!(!state.exists(), "{} left behind", state.display());
    assert!(!Path::new("/run/netns").join(format!("{id}-node")).exists());
    assert!(!Path::new(testbed::BPFFS_ROOT)
        .join(format!("palisade-tb-{id}"))
        .exists());
}

#[test]
fn host_network_pods_share_the_node() {
    let dir = std::env::temp_dir().join(format!("pal-hostnet-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let cluster = dir.join("cluster.yaml");
    std::fs::write(
        &cluster,
        r#"apiVersion: v1
kind: Pod
metadata: {name: web, namespace: default}
spec:
  containers: [{name: web, image: x, ports: [{containerPort: 80}]}]
status: {podIP: 10.244.0.5}
---
apiVersion: v1
kind: Pod
metadata: {name: agent, namespace: kube-system}
spec:
  hostNetwork: true
  containers: [{name: a, image: x, ports: [{containerPort: 9100}]}]
status: {podIP: 192.168.1.10}
"#,
    )
    .unwrap();
    let probes = parse_probes(
        r#"{"from": "kube-system/agent", "to": "default/web", "port": 80, "allowed": true}
{"from": "default/web", "to": "kube-system/agent", "port": 9100, "allowed": true}"#,
        Path::new("inline.jsonl"),
    )
    .unwrap();
    let bed = Testbed::start(TestbedOptions {
        manifests: vec![cluster],
        probes: probes.clone(),
        ..Default::default()
    });
    std::fs::remove_dir_all(&dir).unwrap();
    let bed = bed.unwrap();
    let agent = &bed.pods()[&"kube-system/agent".parse().unwrap()];
    assert!(agent.host_network);
    assert_eq!(agent.netns, bed.node_netns());
    assert_eq!(agent.ip, bed.node_addr());
    let seen = bed.probe(&probes);
    assert!(
        seen.iter().all(|o| o.allowed == Some(true)),
        "{}",
        report::table(&seen)
    );
}
