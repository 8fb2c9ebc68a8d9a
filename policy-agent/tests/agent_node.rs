//! The real agent on a node that changes under it, or cannot run it:
//!
//! - the node's addresses are followed: a bridge that gets its gateway
//!   address after the agent started (Flannel's `cni0` at the node's first
//!   pod) is the node's, so the kubelet's probes from it reach an
//!   ingress-isolated pod; and the chain entry is written once the agent
//!   enforces, not before;
//! - an agent that cannot load its programs (here: no `CAP_BPF`) chains
//!   nothing, so the node's pods keep starting without Palisade, and says
//!   why in its log, `/readyz`, `/metrics`, `status` and its answers to
//!   CNI requests.
//!
//! Needs root and `setpriv` (util-linux).

#[path = "support/agent_proc.rs"]
mod agent_proc;
#[path = "support/kernel.rs"]
mod kernel;
#[path = "support/netns.rs"]
mod netns;

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use agent_api::{Attachment, Request, Response};
use agent_proc::{http_get, AgentProc, Scratch};
use kernel::PinDir;
use netns::{udp_gets_through, veth, NetNs, VethSpec};

const MANIFESTS: &str = "\
apiVersion: v1
kind: Namespace
metadata:
  name: na
  labels:
    kubernetes.io/metadata.name: na
---
apiVersion: v1
kind: Pod
metadata:
  name: server
  namespace: na
  labels:
    app: server
spec:
  containers:
  - name: s
    image: example
status:
  podIP: 10.97.1.2
  podIPs:
  - ip: 10.97.1.2
---
apiVersion: networking.k8s.io/v1
kind: NetworkPolicy
metadata:
  name: deny-in
  namespace: na
spec:
  podSelector: {}
  policyTypes: [Ingress]
";

/// A network plugin's conflist, as it wrote it.
const CONFLIST: &str = r#"{
  "cniVersion": "1.0.0",
  "name": "cbr0",
  "plugins": [
    { "type": "bridge", "bridge": "cni0", "isGateway": true,
      "ipam": { "type": "host-local", "subnet": "10.97.1.0/24" } }
  ]
}
"#;

/// The agent's health address inside the node namespace.
const HEALTH: &str = "127.0.0.1:9969";

fn conflist_dir(scratch: &Scratch) -> std::path::PathBuf {
    let dir = scratch.0.join("net.d");
    std::fs::create_dir_all(&dir).unwrap();
    std::fs::write(dir.join("10-cbr0.conflist"), CONFLIST).unwrap();
    dir
}

#[test]
fn a_node_address_that_appears_after_start_is_the_nodes() {
    kernel::require_root();
    let scratch = Scratch::new("node-addrs");
    std::fs::write(scratch.0.join("cluster.yaml"), MANIFESTS).unwrap();
    let netd = conflist_dir(&scratch);
    let pins = PinDir::new("node-addrs");
    let node = NetNs::new("anode");
    let server = NetNs::new("aserver");
    veth(
        Some(&node),
        &server,
        &VethSpec {
            host: "na-h",
            host_cidr: "10.97.1.1/24",
            pod_if: "eth0",
            pod_cidr: "10.97.1.2/24",
            gateway: Some("10.97.1.1"),
        },
    );
    // The gateway address comes later, as on a fresh node.
    node.exec(&["ip", "addr", "del", "10.97.1.1/24", "dev", "na-h"]);

    let mut agent = AgentProc::spawn(
        &node,
        &scratch.0,
        &[],
        &[
            "--manifests",
            &scratch.0.join("cluster.yaml").display().to_string(),
            "--bpffs-dir",
            &pins.0.display().to_string(),
            "--cni-conf-dir",
            &netd.display().to_string(),
        ],
    );
    agent.wait_ready(&scratch.0);
    // Chained once it enforces (the init container no longer does it).
    let conflist = netd.join("10-cbr0.conflist");
    agent.wait_for(
        "the agent chains the conflist",
        Duration::from_secs(10),
        || {
            std::fs::read_to_string(&conflist)
                .unwrap()
                .contains("palisade-cni")
        },
    );
    let add = Request::Add(Attachment {
        container_id: "sandbox-server".into(),
        netns: server.path(),
        ifname: "eth0".into(),
        pod_namespace: "na".into(),
        pod_name: "server".into(),
        host_interfaces: vec!["na-h".into()],
        ips: vec!["10.97.1.2".into()],
    });
    let answer = agent_api::call(&scratch.socket(), &add, Duration::from_secs(15)).unwrap();
    assert_eq!(answer, Response::Ok, "ADD\n{}", agent.log_text());

    node.exec(&["ip", "addr", "add", "10.97.1.1/24", "dev", "na-h"]);
    let probe = SocketAddr::from(([10, 97, 1, 2], 7001));
    let deadline = Instant::now() + Duration::from_secs(15);
    while !udp_gets_through(&node, [10, 97, 1, 1], &server, probe) {
        assert!(
            Instant::now() < deadline,
            "a probe from the node's new address stays denied\n{}",
            agent.log_text()
        );
    }
    assert!(agent.log_text().contains("the node's addresses changed"));
}

#[test]
fn an_agent_that_cannot_load_chains_nothing_and_says_why() {
    kernel::require_root();
    let scratch = Scratch::new("unloadable");
    std::fs::write(scratch.0.join("cluster.yaml"), MANIFESTS).unwrap();
    let netd = conflist_dir(&scratch);
    let pins = PinDir::new("unloadable");
    let node = NetNs::new("unode");
    // No CAP_BPF (nor CAP_SYS_ADMIN, which would imply it): a runtime that
    // does not grant it.
    let caps = "-all,+net_admin,+perfmon";
    let mut agent = AgentProc::spawn(
        &node,
        &scratch.0,
        &[
            "setpriv",
            "--bounding-set",
            caps,
            "--inh-caps",
            caps,
            "--ambient-caps",
            caps,
            "--",
        ],
        &[
            "--manifests",
            &scratch.0.join("cluster.yaml").display().to_string(),
            "--bpffs-dir",
            &pins.0.display().to_string(),
            "--cni-conf-dir",
            &netd.display().to_string(),
            "--health-addr",
            HEALTH,
        ],
    );
    let health: SocketAddr = HEALTH.parse().unwrap();
    agent.wait_for("/readyz answers", Duration::from_secs(30), || {
        http_get(&node, health, "/readyz").is_some()
    });
    let log = agent.log_text();
    let (code, body) = http_get(&node, health, "/readyz").unwrap();
    assert_eq!(code, 503, "{body}");
    assert!(body.contains("cannot enforce"), "{body}");
    assert_eq!(http_get(&node, health, "/healthz").map(|r| r.0), Some(200));
    let (code, metrics) = http_get(&node, health, "/metrics").unwrap();
    assert_eq!(code, 200);
    assert!(metrics.contains("palisade_dataplane_loaded 0"), "{metrics}");
    assert!(metrics.contains("palisade_ready 0"), "{metrics}");
    assert!(log.contains("cannot load the eBPF programs"), "{log}");

    let status = std::process::Command::new(env!("CARGO_BIN_EXE_policy-agent"))
        .args(["status", "--socket"])
        .arg(scratch.socket())
        .output()
        .unwrap();
    assert_eq!(status.status.code(), Some(1), "{status:?}");
    assert!(
        String::from_utf8_lossy(&status.stderr).contains("cannot enforce"),
        "{status:?}"
    );
    // A chain entry left by an earlier agent would fail closed, saying why.
    let answer =
        agent_api::call(&scratch.socket(), &Request::Status, Duration::from_secs(5)).unwrap();
    assert!(
        matches!(&answer, Response::Error { message } if message.contains("cannot enforce")),
        "{answer:?}"
    );
    // And no entry is written: the node's pods start without Palisade.
    std::thread::sleep(Duration::from_secs(3));
    assert_eq!(
        std::fs::read_to_string(netd.join("10-cbr0.conflist")).unwrap(),
        CONFLIST
    );
    assert!(
        agent.child.try_wait().unwrap().is_none(),
        "the agent exited"
    );
}

/// Programs attached with TCX at `hook` of `ifname` in `node`.
fn tcx_programs(node: &NetNs, ifname: &str, hook: aya::programs::TcAttachType) -> usize {
    netns::in_ns(node, || {
        aya::programs::SchedClassifier::query_tcx(ifname, hook)
            .map(|(_, progs)| progs.len())
            .unwrap_or(0)
    })
}

#[test]
fn auto_devices_are_the_vxlan_overlay_and_the_holder_of_the_node_address() {
    use aya::programs::TcAttachType;
    kernel::require_root();
    let scratch = Scratch::new("auto-devices");
    std::fs::write(scratch.0.join("cluster.yaml"), MANIFESTS).unwrap();
    let pins = PinDir::new("auto-devices");
    let node = NetNs::new("dnode");
    // A kubeadm VM's uplink is not `eth0`: it is whatever holds the
    // node's address.
    // (veths: this kernel has no dummy module)
    node.exec(&[
        "ip", "link", "add", "ens3", "type", "veth", "peer", "name", "ens3p",
    ]);
    node.exec(&["ip", "addr", "add", "192.0.2.10/24", "dev", "ens3"]);
    node.exec(&["ip", "link", "set", "ens3", "up"]);
    node.exec(&[
        "ip", "link", "add", "other0", "type", "veth", "peer", "name", "other0p",
    ]);
    node.exec(&["ip", "link", "set", "other0", "up"]);
    let mut agent = AgentProc::spawn(
        &node,
        &scratch.0,
        &[],
        &[
            "--manifests",
            &scratch.0.join("cluster.yaml").display().to_string(),
            "--bpffs-dir",
            &pins.0.display().to_string(),
            "--node-device",
            "auto",
            "--external-device",
            "auto",
            "--node-ip",
            "192.0.2.10",
        ],
    );
    agent.wait_ready(&scratch.0);
    agent.wait_for(
        "the uplink holding the node address gets the external check",
        Duration::from_secs(10),
        || tcx_programs(&node, "ens3", TcAttachType::Ingress) == 1,
    );
    // The overlay comes after the agent (Flannel starts its own later).
    node.exec(&[
        "ip",
        "link",
        "add",
        "flannel.1",
        "type",
        "vxlan",
        "id",
        "1",
        "dstport",
        "8472",
        "dev",
        "ens3",
    ]);
    node.exec(&["ip", "link", "set", "flannel.1", "up"]);
    agent.wait_for(
        "the VXLAN device gets the node check",
        Duration::from_secs(10),
        || tcx_programs(&node, "flannel.1", TcAttachType::Egress) == 1,
    );
    assert_eq!(tcx_programs(&node, "other0", TcAttachType::Ingress), 0);
    assert_eq!(tcx_programs(&node, "other0", TcAttachType::Egress), 0);
}
