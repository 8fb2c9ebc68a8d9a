//! Services through the real kube-proxy (issue 9), on a two-node kube bed:
//! the API server, the endpoints controller and kube-proxy in each node,
//! Palisade's agents `--kube`. A pod's egress to a ClusterIP is judged on
//! the backend kube-proxy picked and its target port, never on the
//! ClusterIP: DNS through the kube-dns ClusterIP resolves with a real DNS
//! server (dnsmasq) and glibc's resolver, another port of the same
//! ClusterIP is denied, a pod without the DNS rule is denied, an ipBlock
//! covering the Service range reaches no backend, an established flow
//! through a ClusterIP is cut on its next packet when a change denies the
//! backend, and `flows` names the Service and the backend of a denied
//! connection. NodePort clients from outside the cluster are judged on
//! their own address where kube-proxy keeps it (`externalTrafficPolicy:
//! Local`), and get no exemption as the node where it masquerades them
//! (`Cluster`).
//!
//! Needs root, bpffs, dnsmasq, the binaries (see `palisade_tests::bin_dir`)
//! and the Kubernetes binaries (`cargo xtask setup`).

use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::path::{Path, PathBuf};
use std::time::Duration;

use palisade_tests::{bin_dir, kube_options};
use testbed::{parse_probes, report, Observation, PodRef, Testbed, TestbedOptions};

const CLUSTER: &str = "
apiVersion: v1
kind: Namespace
metadata: {name: shop, labels: {kubernetes.io/metadata.name: shop}}
---
apiVersion: v1
kind: Namespace
metadata: {name: kube-system, labels: {kubernetes.io/metadata.name: kube-system}}
---
apiVersion: v1
kind: Pod
metadata: {name: kube-dns-0, namespace: kube-system, labels: {k8s-app: kube-dns}}
spec:
  containers:
  - name: dns
    image: i
    # Port 53 is dnsmasq's (started by the test), not the bed's echo
    # server's: only the metrics port is declared, and served.
    ports:
    - {containerPort: 9153, protocol: TCP, name: metrics}
status: {podIP: 10.244.0.53}
---
apiVersion: v1
kind: Service
metadata: {name: kube-dns, namespace: kube-system}
spec:
  clusterIP: 10.96.0.10
  selector: {k8s-app: kube-dns}
  ports:
  - {name: dns, port: 53, protocol: UDP, targetPort: 53}
  - {name: dns-tcp, port: 53, protocol: TCP, targetPort: 53}
  - {name: metrics, port: 9153, protocol: TCP, targetPort: metrics}
---
apiVersion: v1
kind: Pod
metadata: {name: client, namespace: shop, labels: {app: client}}
spec: {containers: [{name: c, image: i}]}
status: {podIP: 10.244.0.10}
---
apiVersion: v1
kind: Pod
metadata: {name: nodns, namespace: shop, labels: {app: nodns}}
spec: {containers: [{name: c, image: i}]}
status: {podIP: 10.244.0.11}
---
apiVersion: v1
kind: Pod
metadata: {name: ranger, namespace: shop, labels: {app: ranger}}
spec: {containers: [{name: c, image: i}]}
status: {podIP: 10.244.0.12}
---
apiVersion: v1
kind: Pod
metadata: {name: web, namespace: shop, labels: {app: web}}
spec:
  containers:
  - name: c
    image: i
    ports:
    - {containerPort: 8080, name: http}
    - {containerPort: 8080, protocol: UDP, name: http-udp}
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
";

/// client: DNS to kube-dns and the web pods on the target port (TCP and
/// UDP); nodns: the web pods only; ranger: only the Service range.
/// web: from client pods and from 203.0.113.0/24, on http.
const POLICIES: &str = "
---
apiVersion: networking.k8s.io/v1
kind: NetworkPolicy
metadata: {name: client-egress, namespace: shop}
spec:
  podSelector: {matchLabels: {app: client}}
  policyTypes: [Egress]
  egress:
  - to:
    - namespaceSelector: {matchLabels: {kubernetes.io/metadata.name: kube-system}}
      podSelector: {matchLabels: {k8s-app: kube-dns}}
    ports: [{port: 53, protocol: UDP}, {port: 53, protocol: TCP}]
  - to: [{podSelector: {matchLabels: {app: web}}}]
    ports: [{port: 8080, protocol: TCP}, {port: 8080, protocol: UDP}]
---
apiVersion: networking.k8s.io/v1
kind: NetworkPolicy
metadata: {name: nodns-egress, namespace: shop}
spec:
  podSelector: {matchLabels: {app: nodns}}
  policyTypes: [Egress]
  egress:
  - to: [{podSelector: {matchLabels: {app: web}}}]
---
apiVersion: networking.k8s.io/v1
kind: NetworkPolicy
metadata: {name: ranger-egress, namespace: shop}
spec:
  podSelector: {matchLabels: {app: ranger}}
  policyTypes: [Egress]
  egress: [{to: [{ipBlock: {cidr: 10.96.0.0/12}}]}]
---
apiVersion: networking.k8s.io/v1
kind: NetworkPolicy
metadata: {name: web-ingress, namespace: shop}
spec:
  podSelector: {matchLabels: {app: web}}
  ingress:
  - from: [{podSelector: {matchLabels: {app: client}}}, {podSelector: {matchLabels: {app: nodns}}}]
  - from: [{ipBlock: {cidr: 203.0.113.0/24}}]
    ports: [{port: http}]
";

/// The client-egress policy without the rule to web.
const CLIENT_WITHOUT_WEB: &str = "
apiVersion: networking.k8s.io/v1
kind: NetworkPolicy
metadata: {name: client-egress, namespace: shop}
spec:
  podSelector: {matchLabels: {app: client}}
  policyTypes: [Egress]
  egress:
  - to:
    - namespaceSelector: {matchLabels: {kubernetes.io/metadata.name: kube-system}}
      podSelector: {matchLabels: {k8s-app: kube-dns}}
    ports: [{port: 53, protocol: UDP}, {port: 53, protocol: TCP}]
";

/// The probes the bed serves (ports on the pods, outside hosts).
const START_PROBES: &str = r#"
{"from": "shop/client", "to": "svc:shop/web", "port": 80, "protocol": "TCP"}
{"from": "shop/client", "to": "svc:shop/web", "port": 80, "protocol": "UDP"}
{"from": "shop/client", "to": "svc:kube-system/kube-dns", "port": 9153, "protocol": "TCP"}
{"from": "203.0.113.10", "to": "shop/web", "port": 8080, "protocol": "TCP"}
{"from": "198.51.100.7", "to": "shop/web", "port": 8080, "protocol": "TCP"}
"#;

struct Bed {
    bed: Testbed,
    dir: tempfile::TempDir,
}

fn start() -> Bed {
    let dir = tempfile::tempdir().unwrap();
    let manifest = dir.path().join("cluster.yaml");
    std::fs::write(&manifest, format!("{CLUSTER}{POLICIES}")).unwrap();
    let manifests = vec![manifest];
    let snapshot = testbed::load_snapshot(&manifests).unwrap();
    let bed = Testbed::start_with_kube(
        TestbedOptions {
            manifests,
            palisade: true,
            bin_dir: bin_dir(),
            probes: parse_probes(START_PROBES, Path::new("inline.jsonl")).unwrap(),
            nodes: 2,
            agent_args: Vec::new(),
        },
        &snapshot,
        &kube_options(),
    )
    .unwrap_or_else(|e| panic!("test bed: {e}"));
    Bed { bed, dir }
}

impl Bed {
    fn pod(&self, name: &str) -> &testbed::WiredPod {
        &self.bed.pods()[&name.parse::<PodRef>().unwrap()]
    }

    fn expect(&self, probes: &str) -> Vec<agent_api::FlowRecord> {
        let probes = parse_probes(probes, Path::new("inline.jsonl")).unwrap();
        let (seen, drops) = self.bed.probe_collecting_drops(&probes);
        eprintln!("{}", report::table(&seen));
        assert!(
            seen.iter()
                .all(|o: &Observation| o.matches_expectation() == Some(true)),
            "{}\n--- agent logs ---\n{}",
            report::table(&seen),
            self.bed.agent_log_tail(30)
        );
        drops
    }

    fn kubectl_apply(&self, yaml: &str) {
        let file = self.dir.path().join("apply.yaml");
        std::fs::write(&file, yaml).unwrap();
        let cp = self.bed.kube().expect("kube mode").control_plane();
        cp.kubectl(&["apply", "-f", &file.display().to_string()])
            .unwrap_or_else(|e| panic!("kubectl apply: {e}"));
        self.bed
            .wait_for_agent_sync()
            .unwrap_or_else(|e| panic!("agents did not catch up: {e}"));
    }

    fn resolve(&self, pod: &str, name: &str, tcp: bool) -> Result<Vec<Ipv4Addr>, String> {
        let scratch: PathBuf = self
            .dir
            .path()
            .join(format!("resolv-{}.conf", pod.replace('/', "-")));
        testbed::dns::resolve(
            &self.pod(pod).netns,
            IpAddr::V4(Ipv4Addr::new(10, 96, 0, 10)),
            name,
            tcp,
            &scratch,
        )
    }
}

#[test]
fn services_are_judged_on_their_backends() {
    let bed = start();
    let on = |p: &str| bed.pod(p).node;
    eprintln!(
        "nodes: kube-dns {} client {} nodns {} ranger {} web {}",
        on("kube-system/kube-dns-0"),
        on("shop/client"),
        on("shop/nodns"),
        on("shop/ranger"),
        on("shop/web")
    );
    let dns = bed.pod("kube-system/kube-dns-0");
    let server = testbed::dns::DnsServer::start(
        &dns.netns,
        dns.ip,
        &[("web.shop.svc.cluster.local", Ipv4Addr::new(10, 96, 0, 20))],
        &bed.dir.path().join("dnsmasq.log"),
    )
    .unwrap_or_else(|e| panic!("dnsmasq: {e}"));

    // DNS through the kube-dns ClusterIP: client resolves over UDP and
    // TCP; nodns (no DNS rule) and ranger (only the Service range) get no
    // answer.
    for tcp in [false, true] {
        let got = bed.resolve("shop/client", "web.shop.svc.cluster.local", tcp);
        assert_eq!(
            got,
            Ok(vec![Ipv4Addr::new(10, 96, 0, 20)]),
            "client (tcp: {tcp})\n--- dnsmasq ---\n{}\n--- agents ---\n{}",
            server.log(),
            bed.bed.agent_log_tail(20)
        );
        for denied in ["shop/nodns", "shop/ranger"] {
            let got = bed.resolve(denied, "web.shop.svc.cluster.local", tcp);
            assert!(got.is_err(), "{denied} resolved (tcp: {tcp}): {got:?}");
        }
    }

    // Another port of the kube-dns ClusterIP is denied; the web Service is
    // reached on the backend's target port; the Service range is no
    // backend; nodns reaches web (any port) but not through DNS.
    let drops = bed.expect(
        r#"
{"from": "shop/client", "to": "svc:kube-system/kube-dns", "port": 9153, "protocol": "TCP", "allowed": false}
{"from": "shop/client", "to": "svc:shop/web", "port": 80, "protocol": "TCP", "allowed": true}
{"from": "shop/client", "to": "svc:shop/web", "port": 80, "protocol": "UDP", "allowed": true}
{"from": "shop/nodns", "to": "svc:shop/web", "port": 80, "protocol": "TCP", "allowed": true}
{"from": "shop/ranger", "to": "svc:shop/web", "port": 80, "protocol": "TCP", "allowed": false}
{"from": "shop/ranger", "to": "svc:shop/web", "port": 80, "protocol": "UDP", "allowed": false}
{"from": "shop/client", "to": "shop/web", "port": 8080, "protocol": "TCP", "allowed": true}
"#,
    );
    // `flows` names the Service and the backend of a denied ClusterIP
    // connection (reported by the agent of the sender's node).
    let dns_backend = dns.ip.to_string();
    assert!(
        drops.iter().any(|r| r.pod == "shop/client"
            && r.direction == "egress"
            && r.service.as_deref() == Some("kube-system/kube-dns")
            && r.dst == dns_backend
            && r.dport == 9153
            && r.peer.as_deref() == Some("kube-system/kube-dns-0")),
        "no denied flow naming kube-system/kube-dns and its backend: {drops:#?}"
    );
    assert!(
        drops.iter().any(|r| r.pod == "shop/ranger"
            && r.service.as_deref() == Some("shop/web")
            && r.peer.as_deref() == Some("shop/web")),
        "no denied flow of ranger naming shop/web: {drops:#?}"
    );

    // An established UDP flow through the ClusterIP is cut on its next
    // packet once a change denies the backend.
    let client = bed.pod("shop/client");
    let sock = bed.bed.udp_socket(&"shop/client".parse().unwrap()).unwrap();
    sock.set_read_timeout(Some(Duration::from_millis(500)))
        .unwrap();
    let to = SocketAddr::new(IpAddr::V4(Ipv4Addr::new(10, 96, 0, 20)), 80);
    assert!(
        echoed(&sock, to, 1),
        "no echo through the ClusterIP while allowed (client on node {})",
        client.node
    );
    assert!(echoed(&sock, to, 2), "the flow did not stay up");
    bed.kubectl_apply(CLIENT_WITHOUT_WEB);
    assert!(
        !echoed(&sock, to, 3) && !echoed(&sock, to, 4),
        "the established flow through the ClusterIP survived a change that denies its backend"
    );
    drop(server);
}

/// Sends datagram `n` to `to` and waits for its echo.
fn echoed(sock: &std::net::UdpSocket, to: SocketAddr, n: u8) -> bool {
    let msg = [b'p', n];
    if sock.send_to(&msg, to).is_err() {
        return false;
    }
    let mut buf = [0u8; 64];
    let deadline = std::time::Instant::now() + Duration::from_millis(800);
    while std::time::Instant::now() < deadline {
        match sock.recv_from(&mut buf) {
            Ok((len, _)) if buf[..len].ends_with(&msg) => return true,
            Ok(_) => continue,
            Err(_) => return false,
        }
    }
    false
}

/// NodePort clients from outside (web accepts 203.0.113.0/24 on http):
/// - `externalTrafficPolicy: Local` on the backend's node: kube-proxy keeps
///   the client's address, which is judged;
/// - `Cluster` on the backend's node: kube-proxy masquerades the client as
///   the node, and the agent's check on the node's external device has
///   remembered the client, which is judged;
/// - `Cluster` on the other node: the client is masqueraded as that node
///   before it crosses to the backend, so the backend sees a node, which
///   gets no exemption: no outside client is answered.
#[test]
fn node_port_clients_are_judged_on_their_own_address_or_not_exempt() {
    let bed = start();
    let web_node = bed.pod("shop/web").node;
    let here = bed.bed.nodes()[web_node].net.gateway;
    let there = bed.bed.nodes()[1 - web_node].net.gateway;
    let probes = format!(
        r#"
{{"from": "203.0.113.10", "to": "{here}", "port": 30081, "protocol": "TCP", "allowed": true}}
{{"from": "198.51.100.7", "to": "{here}", "port": 30081, "protocol": "TCP", "allowed": false}}
{{"from": "203.0.113.10", "to": "{here}", "port": 30080, "protocol": "TCP", "allowed": true}}
{{"from": "198.51.100.7", "to": "{here}", "port": 30080, "protocol": "TCP", "allowed": false}}
{{"from": "203.0.113.10", "to": "{there}", "port": 30080, "protocol": "TCP", "allowed": false}}
{{"from": "198.51.100.7", "to": "{there}", "port": 30080, "protocol": "TCP", "allowed": false}}
{{"from": "203.0.113.10", "to": "shop/web", "port": 8080, "protocol": "TCP", "allowed": true}}
{{"from": "198.51.100.7", "to": "shop/web", "port": 8080, "protocol": "TCP", "allowed": false}}
"#
    );
    bed.expect(&probes);
}
