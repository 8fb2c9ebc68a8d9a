//! Removing Palisade from a node, with the real API server and the real
//! kernel: the agent runs as the DaemonSet runs it (`--cni-conf-dir`,
//! `--cni-bin-dir`, `--uninstall-when-deleted`), keeps a Flannel conflist
//! chained, and when it stops
//!
//! - while its DaemonSet exists (a rolling update, a restart): leaves the
//!   chain entry, the binary and the pinned programs, which keep enforcing
//!   with no agent running, for the next agent to adopt;
//! - once the DaemonSet is deleted: takes all of it off the node — the
//!   conflist is byte for byte what Flannel wrote, the binary and the pins
//!   are gone, and the pods' traffic is no longer judged.
//!
//! `policy-agent cleanup` then finds nothing left to do. And when
//! `kubectl delete -k manifests/` deletes the RBAC, the ServiceAccount and
//! the namespace in the same command, so that the stopping agent can no
//! longer ask the API server anything, it still takes itself off the node
//! from what its watches saw, and a new pod starts through the network
//! plugin's own chain. Needs root and the Kubernetes binaries `cargo xtask
//! setup` builds.

use std::path::Path;
use std::time::Duration;

use palisade_tests::{bin_dir, scenarios, start_kube_bed, wait_until, workspace_root};
use testbed::Observation;

/// Flannel's conflist as it writes it on a node.
const FLANNEL: &str = include_str!("../../cni-bin/src/install/testdata/flannel.conflist");

/// A scratch folder removed on drop, even when the test fails.
fn scratch(what: &str) -> tempfile::TempDir {
    tempfile::Builder::new()
        .prefix(&format!("palisade-uninstall-{what}-"))
        .tempdir()
        .unwrap()
}

fn denied(seen: &[Observation]) -> Vec<String> {
    seen.iter()
        .filter(|o| o.allowed == Some(false))
        .map(|o| format!("{:?}", o.probe.key()))
        .collect()
}

#[test]
fn the_agent_leaves_the_node_as_it_was_once_its_daemonset_is_deleted() {
    let scenario = &scenarios("apod")[0];
    let conf = scratch("netd");
    let bin = scratch("bin");
    let conflist = conf.path().join("10-flannel.conflist");
    std::fs::write(&conflist, FLANNEL).unwrap();
    let plugin = bin.path().join("palisade-cni");
    std::fs::copy(bin_dir().join("palisade-cni"), &plugin).unwrap();
    let (ns, ds) = testbed::controlplane::cluster::AGENT_SERVICE_ACCOUNT;
    let agent_args = vec![
        "--cni-conf-dir".to_string(),
        conf.path().display().to_string(),
        "--cni-bin-dir".into(),
        bin.path().display().to_string(),
        "--uninstall-when-deleted".into(),
        format!("{ns}/{ds}"),
    ];
    let (bed, probes) = start_kube_bed(scenario, 1, agent_args);
    let node = &bed.nodes()[0];
    let pins = node.bpffs_dir.clone().unwrap();
    let chained = || {
        std::fs::read_to_string(&conflist)
            .unwrap()
            .contains("palisade-cni")
    };

    // The agent chains the node's conflist (the init container's job too,
    // and again whenever the network plugin rewrites the file).
    wait_until(
        "the agent chains the conflist",
        Duration::from_secs(15),
        chained,
    );
    let enforced = bed.probe(&probes);
    let must_deny = denied(&enforced);
    assert!(
        !must_deny.is_empty(),
        "apod denies some probes under Palisade"
    );
    assert!(
        enforced
            .iter()
            .all(|o| o.matches_expectation() != Some(false)),
        "{enforced:?}"
    );
    // Flannel restarts and rewrites its file: the entry comes back.
    std::fs::write(&conflist, FLANNEL).unwrap();
    wait_until(
        "the agent re-chains the conflist",
        Duration::from_secs(15),
        chained,
    );

    // A stop with the DaemonSet in place (a rolling update): everything
    // stays, and the pinned programs keep enforcing without an agent.
    bed.stop_agents();
    assert!(chained(), "a restart must not unchain");
    assert!(plugin.is_file());
    assert!(pins.is_dir());
    assert_eq!(
        denied(&bed.probe(&probes)),
        must_deny,
        "enforcement stopped with the agent"
    );
    bed.restart_agents()
        .unwrap_or_else(|e| panic!("restart: {e}\n{}", bed.agent_log_tail(30)));

    // `kubectl delete -k manifests/` removes the DaemonSet before its pods.
    let cluster = bed.kube().expect("kube mode");
    cluster
        .control_plane()
        .kubectl(&["-n", ns, "delete", "daemonset", ds])
        .unwrap();
    bed.stop_agents();
    let log = bed.agent_log_tail(40);
    assert_eq!(
        std::fs::read_to_string(&conflist).unwrap(),
        FLANNEL,
        "the conflist is not what Flannel wrote\n{log}"
    );
    assert!(
        !plugin.exists(),
        "palisade-cni left in the bin folder\n{log}"
    );
    assert!(!pins.exists(), "pins left under {}\n{log}", pins.display());
    let after = bed.probe(&probes);
    assert!(
        after.iter().all(|o| o.allowed == Some(true)),
        "traffic is still judged after the uninstall: {:?}\n{log}",
        denied(&after)
    );

    // Nothing left for the cleanup command (it refuses only while an agent
    // holds the node lock).
    let out = std::process::Command::new("ip")
        .args(["netns", "exec", &node.netns])
        .arg(bin_dir().join("policy-agent"))
        .arg("cleanup")
        .arg("--cni-conf-dir")
        .arg(conf.path())
        .arg("--cni-bin-dir")
        .arg(bin.path())
        .arg("--bpffs-dir")
        .arg(&pins)
        .arg("--cni-socket")
        .arg(node.agent_socket.as_deref().unwrap_or(Path::new("")))
        .output()
        .unwrap();
    assert!(out.status.success(), "{out:?}");
    let said = String::from_utf8_lossy(&out.stdout);
    assert!(!said.contains("removed palisade-cni from"), "{said}");
    assert!(
        !said.contains(&format!("removed {}", plugin.display())),
        "{said}"
    );
    assert_eq!(std::fs::read_to_string(&conflist).unwrap(), FLANNEL);
}

/// A network namespace for one more pod, deleted on drop.
struct PodNs(String);

impl PodNs {
    fn new(tag: &str) -> Self {
        let name = format!("palisade-t{}-{tag}", std::process::id());
        let _ = std::process::Command::new("ip")
            .args(["netns", "del", &name])
            .status();
        let ok = std::process::Command::new("ip")
            .args(["netns", "add", &name])
            .status()
            .unwrap();
        assert!(ok.success(), "ip netns add {name}");
        PodNs(name)
    }
}

impl Drop for PodNs {
    fn drop(&mut self) {
        let _ = std::process::Command::new("ip")
            .args(["netns", "del", &self.0])
            .status();
    }
}

#[test]
fn kubectl_delete_k_with_its_rbac_leaves_the_node_to_its_network_plugin() {
    let scenario = &scenarios("apod")[0];
    let conf = scratch("netd");
    let bin = scratch("bin");
    let ipam = scratch("ipam");
    // The network plugin's own chain, byte for byte as it wrote it: a
    // bridge of its own beside the bed's, so a pod can be wired through it.
    let original = format!(
        r#"{{
  "cniVersion": "1.0.0",
  "name": "plugin-net",
  "plugins": [
    {{
      "type": "bridge",
      "bridge": "cni9",
      "isGateway": true,
      "ipam": {{
        "type": "host-local",
        "subnet": "10.250.0.0/24",
        "dataDir": "{}"
      }}
    }}
  ]
}}
"#,
        ipam.path().display()
    );
    let conflist = conf.path().join("10-plugin.conflist");
    std::fs::write(&conflist, &original).unwrap();
    let plugin = bin.path().join("palisade-cni");
    std::fs::copy(bin_dir().join("palisade-cni"), &plugin).unwrap();
    let (ns, ds) = testbed::controlplane::cluster::AGENT_SERVICE_ACCOUNT;
    let agent_args = vec![
        "--cni-conf-dir".to_string(),
        conf.path().display().to_string(),
        "--cni-bin-dir".into(),
        bin.path().display().to_string(),
        "--uninstall-when-deleted".into(),
        format!("{ns}/{ds}"),
    ];
    let (bed, _probes) = start_kube_bed(scenario, 1, agent_args);
    let node = &bed.nodes()[0];
    let pins = node.bpffs_dir.clone().unwrap();
    wait_until(
        "the agent chains the conflist",
        Duration::from_secs(15),
        || {
            std::fs::read_to_string(&conflist)
                .unwrap()
                .contains("palisade-cni")
        },
    );

    // The whole install in one command, RBAC and ServiceAccount included
    // (not waiting: nothing plays the DaemonSet's kubelet here).
    let cluster = bed.kube().expect("kube mode");
    let cp = cluster.control_plane();
    let manifests = workspace_root().join("manifests");
    cp.kubectl(&[
        "delete",
        "-k",
        &manifests.display().to_string(),
        "--wait=false",
    ])
    .unwrap();
    // The agent's own credentials are refused from now on.
    wait_until(
        "the agent's token is refused",
        Duration::from_secs(30),
        || {
            cp.kubectl_with(cluster.agent_kubeconfig(), &["get", "pods", "-A"])
                .is_err()
        },
    );
    bed.stop_agents();
    let log = bed.agent_log_tail(40);
    assert_eq!(
        std::fs::read_to_string(&conflist).unwrap(),
        original,
        "the conflist is not what the network plugin wrote\n{log}"
    );
    assert!(
        !plugin.exists(),
        "palisade-cni left in the bin folder\n{log}"
    );
    assert!(!pins.exists(), "pins left under {}\n{log}", pins.display());

    // A new pod starts through the plugin's chain, with no agent running.
    let network = testbed::cni::Network {
        conflist: serde_json::from_str(&original).unwrap(),
        cni_path: vec![
            bin.path().to_path_buf(),
            testbed::cni::SYSTEM_CNI_DIR.into(),
        ],
        node_netns: node.netns.clone(),
    };
    let pod = PodNs::new("after-uninstall");
    let att = network
        .add(
            "default/late",
            "default",
            "late",
            "late-sandbox",
            &pod.0,
            &[],
        )
        .unwrap_or_else(|e| panic!("a new pod does not start after the uninstall: {e}\n{log}"));
    assert!(att.ipv4().is_some(), "{:?}", att.result);
    network.del(&att).unwrap();
}
