//! Services through the netns test bed with kube-proxy's iptables rules in
//! the node namespace (issue 9): a pod's egress to a ClusterIP is judged on
//! the backend and its target port, never on the ClusterIP; an ipBlock
//! covering the Service range reaches no backend; an established flow
//! through a ClusterIP is cut on its next packet when a change denies the
//! backend; and a NodePort client is judged on its own address where
//! kube-proxy keeps it (`externalTrafficPolicy: Local`) and never gets the
//! node's exemption where kube-proxy masquerades it (`Cluster`).
//!
//! Needs root, bpffs at /sys/fs/bpf, and the `policy-agent` and
//! `palisade-cni` binaries (see `palisade_tests::bin_dir`).

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use palisade_tests::{bin_dir, reload_mark, wait_for_agent_reload, write_atomically};
use testbed::{parse_probes, report, Observation, PodRef, Testbed, TestbedOptions};

const CLUSTER: &str = "
apiVersion: v1
kind: Namespace
metadata: {name: shop, labels: {kubernetes.io/metadata.name: shop}}
---
apiVersion: v1
kind: Pod
metadata: {name: client, namespace: shop, labels: {app: client}}
spec: {containers: [{name: c, image: i}]}
status: {podIP: 10.244.0.10}
---
apiVersion: v1
kind: Pod
metadata: {name: other, namespace: shop, labels: {app: other}}
spec: {containers: [{name: c, image: i}]}
status: {podIP: 10.244.0.11}
---
apiVersion: v1
kind: Pod
metadata: {name: web, namespace: shop, labels: {app: web}}
spec:
  containers:
  - name: c
    image: i
    ports: [{containerPort: 8080, name: http}, {containerPort: 8080, protocol: UDP, name: http-udp}]
status: {podIP: 10.244.0.20}
---
apiVersion: v1
kind: Service
metadata: {name: web, namespace: shop}
spec:
  clusterIP: 10.96.0.20
  selector: {app: web}
  ports:
  - {name: tcp, port: 80, targetPort: http}
  - {name: udp, port: 80, targetPort: http-udp, protocol: UDP}
";

/// `client` may only send to the Service range: no backend is in it.
const EGRESS_SERVICE_RANGE: &str = "
---
apiVersion: networking.k8s.io/v1
kind: NetworkPolicy
metadata: {name: client-egress, namespace: shop}
spec:
  podSelector: {matchLabels: {app: client}}
  policyTypes: [Egress]
  egress: [{to: [{ipBlock: {cidr: 10.96.0.0/12}}]}]
";

/// `client` may reach the web pods on TCP and UDP 8080 (the target port).
const EGRESS_TO_WEB: &str = "
---
apiVersion: networking.k8s.io/v1
kind: NetworkPolicy
metadata: {name: client-egress, namespace: shop}
spec:
  podSelector: {matchLabels: {app: client}}
  policyTypes: [Egress]
  egress:
  - to: [{podSelector: {matchLabels: {app: web}}}]
    ports: [{port: 8080}, {port: 8080, protocol: UDP}]
";

/// `client` may reach the web pods on TCP 8080 only.
const EGRESS_TO_WEB_TCP: &str = "
---
apiVersion: networking.k8s.io/v1
kind: NetworkPolicy
metadata: {name: client-egress, namespace: shop}
spec:
  podSelector: {matchLabels: {app: client}}
  policyTypes: [Egress]
  egress:
  - to: [{podSelector: {matchLabels: {app: web}}}]
    ports: [{port: http}]
";

struct Bed {
    bed: Testbed,
    manifest: PathBuf,
    _dir: tempfile::TempDir,
}

fn start(policies: &str, probes: &str) -> Bed {
    let dir = tempfile::tempdir().unwrap();
    let manifest = dir.path().join("cluster.yaml");
    std::fs::write(&manifest, format!("{CLUSTER}{policies}")).unwrap();
    let bed = Testbed::start(TestbedOptions {
        manifests: vec![manifest.clone()],
        palisade: true,
        bin_dir: bin_dir(),
        probes: parse_probes(probes, Path::new("inline.jsonl")).unwrap(),
    })
    .unwrap_or_else(|e| panic!("test bed: {e}"));
    Bed {
        bed,
        manifest,
        _dir: dir,
    }
}

impl Bed {
    fn probe(&self, probes: &str) -> Vec<Observation> {
        let probes = parse_probes(probes, Path::new("inline.jsonl")).unwrap();
        let seen = self.bed.probe(&probes);
        eprintln!("{}", report::table(&seen));
        seen
    }

    fn expect(&self, probes: &str) {
        let seen = self.probe(probes);
        assert!(
            seen.iter().all(|o| o.matches_expectation() == Some(true)),
            "{}\n--- agent log ---\n{}",
            report::table(&seen),
            self.bed.agent_log_tail(30)
        );
    }

    fn rewrite(&self, policies: &str) {
        let mark = reload_mark(&self.bed);
        write_atomically(&self.manifest, &format!("{CLUSTER}{policies}")).unwrap();
        wait_for_agent_reload(
            &self.bed,
            mark,
            Duration::from_millis(100),
            Duration::from_secs(20),
        )
        .unwrap();
    }
}

const PROBES: &str = r#"
{"from": "shop/client", "to": "svc:shop/web", "port": 80, "protocol": "TCP"}
{"from": "shop/client", "to": "svc:shop/web", "port": 80, "protocol": "UDP"}
{"from": "shop/other", "to": "svc:shop/web", "port": 80, "protocol": "TCP"}
{"from": "shop/client", "to": "shop/web", "port": 8080, "protocol": "TCP"}
"#;

/// Starts following the agent's dropped flows of `pod`.
fn follow_drops(bed: &Testbed, pod: &str) -> std::sync::mpsc::Receiver<agent_api::FlowRecord> {
    let socket = bed.agent_socket().expect("palisade is on").to_path_buf();
    let (tx, rx) = std::sync::mpsc::channel();
    let request = agent_api::Request::Flows {
        pod: Some(pod.into()),
        verdict: Some("dropped".into()),
    };
    std::thread::spawn(move || {
        let _ = agent_api::stream_flows(&socket, &request, |r| tx.send(r).is_ok());
    });
    std::thread::sleep(Duration::from_millis(300));
    rx
}

#[test]
fn egress_to_the_service_range_reaches_no_backend() {
    let bed = start(EGRESS_SERVICE_RANGE, PROBES);
    let drops = follow_drops(&bed.bed, "shop/client");
    bed.expect(
        r#"
{"from": "shop/client", "to": "svc:shop/web", "port": 80, "protocol": "TCP", "allowed": false}
{"from": "shop/client", "to": "svc:shop/web", "port": 80, "protocol": "UDP", "allowed": false}
{"from": "shop/other", "to": "svc:shop/web", "port": 80, "protocol": "TCP", "allowed": true}
{"from": "shop/client", "to": "shop/web", "port": 8080, "protocol": "TCP", "allowed": false}
"#,
    );
    // `flows` names the Service and the backend of the denied connection.
    std::thread::sleep(Duration::from_millis(500));
    let via: Vec<agent_api::FlowRecord> =
        drops.try_iter().filter(|r| r.service.is_some()).collect();
    let tcp = via
        .iter()
        .find(|r| r.protocol == "TCP")
        .unwrap_or_else(|| panic!("no TCP drop named with its Service: {via:?}"));
    assert_eq!(
        (
            tcp.direction.as_str(),
            tcp.service.as_deref(),
            tcp.peer.as_deref()
        ),
        ("egress", Some("shop/web"), Some("shop/web")),
        "{tcp:?}"
    );
    assert_eq!(
        (tcp.dst.as_str(), tcp.dport),
        ("10.244.0.20", 8080),
        "{tcp:?}"
    );
    // Allowing the backend pod (by its target port's name) opens the
    // ClusterIP on that protocol only.
    bed.rewrite(EGRESS_TO_WEB_TCP);
    bed.expect(
        r#"
{"from": "shop/client", "to": "svc:shop/web", "port": 80, "protocol": "TCP", "allowed": true}
{"from": "shop/client", "to": "svc:shop/web", "port": 80, "protocol": "UDP", "allowed": false}
{"from": "shop/client", "to": "shop/web", "port": 8080, "protocol": "TCP", "allowed": true}
"#,
    );
}

/// Sends `n` on `sock` to `to` and waits for the echo.
fn echoed(sock: &std::net::UdpSocket, to: SocketAddr, n: u8) -> bool {
    let payload = [b'p', b'a', b'l', n];
    sock.send_to(&payload, to).unwrap();
    let mut buf = [0u8; 64];
    loop {
        match sock.recv_from(&mut buf) {
            Ok((len, from)) if from == to && buf[..len] == payload => return true,
            Ok(_) => continue,
            Err(_) => return false,
        }
    }
}

#[test]
fn established_flow_through_a_cluster_ip_is_cut_when_the_backend_is_denied() {
    let bed = start(EGRESS_TO_WEB, PROBES);
    let client = PodRef::new("shop", "client");
    let vip = bed.bed.cluster_ip(&PodRef::new("shop", "web")).unwrap();
    let to = SocketAddr::new(vip, 80);
    let sock = bed.bed.udp_socket(&client).unwrap();
    sock.set_read_timeout(Some(Duration::from_millis(800)))
        .unwrap();
    assert!(
        (0..5).any(|i| echoed(&sock, to, i)),
        "no echo through the ClusterIP while allowed\n{}",
        bed.bed.agent_log_tail(30)
    );
    assert!(
        echoed(&sock, to, 9),
        "the established flow stopped by itself"
    );
    bed.rewrite(EGRESS_SERVICE_RANGE);
    assert!(
        !echoed(&sock, to, 10) && !echoed(&sock, to, 11),
        "the established flow through the ClusterIP survived a change that denies its backend"
    );
}

/// web exposed through two NodePorts: 30080 (`Cluster`: kube-proxy
/// masquerades the client to the node's address) and 30081 (`Local`: the
/// client's address is kept). web accepts 203.0.113.0/24 only.
const NODE_PORTS: &str = "
---
apiVersion: v1
kind: Service
metadata: {name: web-cluster, namespace: shop}
spec:
  type: NodePort
  clusterIP: 10.96.0.21
  selector: {app: web}
  ports: [{port: 80, targetPort: http, nodePort: 30080}]
---
apiVersion: v1
kind: Service
metadata: {name: web-local, namespace: shop}
spec:
  type: NodePort
  clusterIP: 10.96.0.22
  externalTrafficPolicy: Local
  selector: {app: web}
  ports: [{port: 80, targetPort: http, nodePort: 30081}]
---
apiVersion: networking.k8s.io/v1
kind: NetworkPolicy
metadata: {name: web-ingress, namespace: shop}
spec:
  podSelector: {matchLabels: {app: web}}
  ingress: [{from: [{ipBlock: {cidr: 203.0.113.0/24}}], ports: [{port: http}]}]
";

#[test]
fn node_port_clients_are_judged_on_their_own_address_or_not_exempt() {
    // The node's address is the bed's gateway, the first of the subnet.
    let probes = r#"
{"from": "203.0.113.10", "to": "10.244.0.1", "port": 30081, "protocol": "TCP", "allowed": true}
{"from": "198.51.100.7", "to": "10.244.0.1", "port": 30081, "protocol": "TCP", "allowed": false}
{"from": "203.0.113.10", "to": "10.244.0.1", "port": 30080, "protocol": "TCP", "allowed": false}
{"from": "198.51.100.7", "to": "10.244.0.1", "port": 30080, "protocol": "TCP", "allowed": false}
{"from": "203.0.113.10", "to": "shop/web", "port": 8080, "protocol": "TCP", "allowed": true}
"#;
    let bed = start(NODE_PORTS, probes);
    assert_eq!(
        bed.bed.node_addr().to_string(),
        "10.244.0.1",
        "the probes assume the node's address"
    );
    bed.expect(probes);
}
