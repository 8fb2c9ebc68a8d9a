//! A pod that runs without enforcement and cannot be found by its address
//! (it removed the address the cluster gave it and took another) is
//! isolated both ways by veth until it is known, and counted all along in
//! `status` and the metrics; once its address is back it is adopted and
//! the quarantine is lifted, even while another (enforced) pod claims
//! that address too. The real `policy-agent run` in a node
//! namespace. Needs root.

#[path = "support/agent_proc.rs"]
mod agent_proc;
#[path = "support/kernel.rs"]
mod kernel;
#[path = "support/netns.rs"]
mod netns;

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::time::{Duration, Instant};

use agent_api::{AgentStatus, Attachment, Request, Response};
use agent_proc::{call, AgentProc, Scratch};
use kernel::PinDir;
use netns::{in_ns, udp_gets_through, veth, NetNs, VethSpec};

const MANIFESTS: &str = "\
apiVersion: v1
kind: Namespace
metadata:
  name: qa
  labels:
    kubernetes.io/metadata.name: qa
---
apiVersion: v1
kind: Pod
metadata:
  name: lost
  namespace: qa
spec:
  nodeName: n1
  containers:
  - name: c
    image: example
status:
  phase: Running
  podIP: 10.96.1.2
---
apiVersion: v1
kind: Pod
metadata:
  name: peer
  namespace: qa
spec:
  nodeName: n1
  containers:
  - name: s
    image: example
status:
  phase: Running
  podIP: 10.96.2.2
";

const HEALTH: &str = "10.96.2.1:9969";
/// The address the lost pod takes instead of its own.
const OTHER: [u8; 4] = [10, 96, 1, 9];
const LOST: [u8; 4] = [10, 96, 1, 2];
const PEER: [u8; 4] = [10, 96, 2, 2];

fn status(scratch: &std::path::Path) -> AgentStatus {
    match call(scratch, &Request::AgentStatus) {
        Response::AgentStatus { status } => status,
        other => panic!("status answered {other:?}"),
    }
}

fn wait_for(what: &str, agent: &mut AgentProc, mut ok: impl FnMut() -> bool) {
    let deadline = Instant::now() + Duration::from_secs(15);
    while !ok() {
        agent.assert_running();
        assert!(
            Instant::now() < deadline,
            "{what}: not within 15 s\n{}",
            agent.log_text()
        );
        std::thread::sleep(Duration::from_millis(100));
    }
}

fn metrics(node: &NetNs) -> String {
    in_ns(node, || {
        let addr: SocketAddr = HEALTH.parse().unwrap();
        let mut s = TcpStream::connect_timeout(&addr, Duration::from_secs(3)).unwrap();
        s.set_read_timeout(Some(Duration::from_secs(3))).unwrap();
        write!(
            s,
            "GET /metrics HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n"
        )
        .unwrap();
        let mut reply = String::new();
        s.read_to_string(&mut reply).unwrap();
        reply
    })
}

#[test]
fn a_pod_without_its_address_is_isolated_by_veth_and_counted() {
    kernel::require_root();
    let scratch = Scratch::new("quarantine");
    std::fs::write(scratch.0.join("cluster.yaml"), MANIFESTS).unwrap();
    let pins = PinDir::new("quarantine");
    let node = NetNs::new("qnode");
    let lost = NetNs::new("qlost");
    let peer = NetNs::new("qpeer");
    node.exec(&["sysctl", "-q", "-w", "net.ipv4.ip_forward=1"]);
    for (ns, host, net) in [(&lost, "qa-h", 1), (&peer, "qb-h", 2)] {
        veth(
            Some(&node),
            ns,
            &VethSpec {
                host,
                host_cidr: &format!("10.96.{net}.1/24"),
                pod_if: "eth0",
                pod_cidr: &format!("10.96.{net}.2/24"),
                gateway: Some(&format!("10.96.{net}.1")),
            },
        );
    }
    // The pod started without the chain entry, then swapped its address
    // for one the cluster does not know.
    lost.exec(&["ip", "addr", "del", "10.96.1.2/24", "dev", "eth0"]);
    lost.exec(&["ip", "addr", "add", "10.96.1.9/24", "dev", "eth0"]);
    lost.exec(&["ip", "route", "add", "default", "via", "10.96.1.1"]);
    let peer_at = |port| SocketAddr::from((PEER, port));
    let other_at = |port| SocketAddr::from((OTHER, port));
    assert!(
        udp_gets_through(&lost, OTHER, &peer, peer_at(7001)),
        "without an agent the pod talks to its peer"
    );

    let mut agent = AgentProc::start(
        &node,
        &scratch.0,
        &pins.0,
        1,
        &["--node-name", "n1", "--health-addr", HEALTH],
    );
    let add = call(
        &scratch.0,
        &Request::Add(Attachment {
            container_id: "sandbox-peer".into(),
            netns: peer.path(),
            ifname: "eth0".into(),
            pod_namespace: "qa".into(),
            pod_name: "peer".into(),
            host_interfaces: vec!["qb-h".into()],
            ips: vec!["10.96.2.2".into()],
        }),
    );
    assert_eq!(add, Response::Ok);
    wait_for("the lost pod's veth quarantined", &mut agent, || {
        status(&scratch.0).quarantined == ["qa-h"]
    });
    let st = status(&scratch.0);
    assert_eq!(st.unenforced, ["qa/lost"], "still counted as unenforced");
    assert!(
        !udp_gets_through(&lost, OTHER, &peer, peer_at(7002)),
        "the quarantined pod still sends"
    );
    assert!(
        !udp_gets_through(&peer, PEER, &lost, other_at(7003)),
        "the quarantined pod still receives"
    );
    wait_for("the metrics count it", &mut agent, || {
        let m = metrics(&node);
        m.contains("palisade_unenforced_pods 1") && m.contains("palisade_quarantined_veths 1")
    });

    // Its own address back, while the enforced peer claims it too (on
    // its own interface, which serves the peer): adopted by it all the
    // same, and the quarantine lifted.
    peer.exec(&["ip", "addr", "add", "10.96.1.2/32", "dev", "eth0"]);
    lost.exec(&["ip", "addr", "add", "10.96.1.2/24", "dev", "eth0"]);
    wait_for("adopted, quarantine lifted", &mut agent, || {
        let st = status(&scratch.0);
        st.quarantined.is_empty()
            && st.unenforced.is_empty()
            && st
                .endpoints
                .iter()
                .any(|e| e.pod == "qa/lost" && e.interface == "qa-h")
    });
    // (A host takes no packet from its own address.)
    peer.exec(&["ip", "addr", "del", "10.96.1.2/32", "dev", "eth0"]);
    assert!(
        udp_gets_through(&lost, LOST, &peer, peer_at(7004)),
        "the adopted pod (no policy) talks to its peer again"
    );
}
