//! Services whose backends are no pods, through the real kube-proxy on a
//! two-node kube bed (security issue 23, item 1): the `kubernetes`
//! Service (the API server), a selector-less Service whose Endpoints,
//! written by hand, name an outside host, and one whose Endpoints are the
//! two nodes' own addresses (hostNetwork backends). No hook sees such a
//! translated packet (it is delivered to a node's own stack or leaves by
//! the underlay), so the sender's hook judges the packet to the ClusterIP
//! against every backend the Service can translate to: deny-all egress
//! reaches none of them, an ipBlock allowing the outside host reaches it
//! through the Service, an ipBlock allowing both nodes reaches the node
//! Service while one allowing a single node does not (kube-proxy's pick
//! is not visible there: fail closed), and a pod without egress isolation
//! still gets through.
//!
//! Needs root, bpffs, the binaries (see `palisade_tests::bin_dir`) and the
//! Kubernetes binaries (`cargo xtask setup`).

use std::net::{IpAddr, Ipv4Addr, SocketAddr, TcpListener};
use std::path::Path;
use std::time::Duration;

use palisade_tests::{bin_dir, kube_options};
use testbed::{parse_probes, report, Observation, PodRef, Testbed, TestbedOptions};

/// The port the test listens on at each node's underlay address.
const NODE_PORT: u16 = 9970;

const CLUSTER: &str = "
apiVersion: v1
kind: Namespace
metadata: {name: ext, labels: {kubernetes.io/metadata.name: ext}}
---
apiVersion: v1
kind: Pod
metadata: {name: locked, namespace: ext, labels: {app: locked}}
spec: {nodeName: node0, containers: [{name: c, image: i}]}
status: {podIP: 10.244.0.10}
---
apiVersion: v1
kind: Pod
metadata: {name: open, namespace: ext, labels: {app: open}}
spec: {nodeName: node1, containers: [{name: c, image: i}]}
status: {podIP: 10.244.1.10}
---
apiVersion: v1
kind: Pod
metadata: {name: db-client, namespace: ext, labels: {app: db-client}}
spec: {nodeName: node1, containers: [{name: c, image: i}]}
status: {podIP: 10.244.1.11}
---
apiVersion: v1
kind: Pod
metadata: {name: node-client, namespace: ext, labels: {app: node-client}}
spec: {nodeName: node0, containers: [{name: c, image: i}]}
status: {podIP: 10.244.0.11}
---
apiVersion: v1
kind: Pod
metadata: {name: half, namespace: ext, labels: {app: half}}
spec: {nodeName: node1, containers: [{name: c, image: i}]}
status: {podIP: 10.244.1.12}
---
apiVersion: networking.k8s.io/v1
kind: NetworkPolicy
metadata: {name: locked, namespace: ext}
spec: {podSelector: {matchLabels: {app: locked}}, policyTypes: [Egress]}
---
apiVersion: networking.k8s.io/v1
kind: NetworkPolicy
metadata: {name: db-client, namespace: ext}
spec:
  podSelector: {matchLabels: {app: db-client}}
  policyTypes: [Egress]
  egress: [{to: [{ipBlock: {cidr: 198.51.100.10/32}}], ports: [{port: 5432}]}]
---
apiVersion: networking.k8s.io/v1
kind: NetworkPolicy
metadata: {name: node-client, namespace: ext}
spec:
  podSelector: {matchLabels: {app: node-client}}
  policyTypes: [Egress]
  egress: [{to: [{ipBlock: {cidr: 172.30.0.0/24}}], ports: [{port: 9970}]}]
---
apiVersion: networking.k8s.io/v1
kind: NetworkPolicy
metadata: {name: half, namespace: ext}
spec:
  podSelector: {matchLabels: {app: half}}
  policyTypes: [Egress]
  egress: [{to: [{ipBlock: {cidr: 172.30.0.10/32}}], ports: [{port: 9970}]}]
---
apiVersion: v1
kind: Service
metadata: {name: db, namespace: ext}
spec:
  clusterIP: 10.96.0.50
  ports: [{port: 5432, protocol: TCP}]
---
apiVersion: v1
kind: Endpoints
metadata: {name: db, namespace: ext}
subsets: [{addresses: [{ip: 198.51.100.10}], ports: [{port: 5432, protocol: TCP}]}]
---
apiVersion: v1
kind: Service
metadata: {name: nodes, namespace: ext}
spec:
  clusterIP: 10.96.0.51
  ports: [{port: 80, targetPort: 9970, protocol: TCP}]
---
apiVersion: v1
kind: Endpoints
metadata: {name: nodes, namespace: ext}
subsets: [{addresses: [{ip: 172.30.0.10}, {ip: 172.30.0.11}], ports: [{port: 9970, protocol: TCP}]}]
";

/// Probes whose targets the bed serves: the outside host and its port.
const START_PROBES: &str = r#"
{"from": "ext/open", "to": "198.51.100.10", "port": 5432, "protocol": "TCP"}
"#;

fn start(dir: &Path) -> Testbed {
    let manifest = dir.join("cluster.yaml");
    std::fs::write(&manifest, CLUSTER).unwrap();
    let manifests = vec![manifest];
    let snapshot = testbed::load_snapshot(&manifests).unwrap();
    Testbed::start_with_kube(
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
    .unwrap_or_else(|e| panic!("test bed: {e}"))
}

/// TCP connections from `pod` to `to`, each a new flow (kube-proxy picks a
/// backend per connection): how many of `n` were accepted.
fn connects(bed: &Testbed, pod: &str, to: SocketAddr, n: usize) -> usize {
    let pod: PodRef = pod.parse().unwrap();
    (0..n)
        .filter(|_| {
            bed.in_pod(&pod, || {
                std::net::TcpStream::connect_timeout(&to, Duration::from_millis(1500))
            })
            .is_ok()
        })
        .count()
}

#[test]
fn backends_that_are_no_pods_are_judged_at_the_sender() {
    let dir = tempfile::tempdir().unwrap();
    let bed = start(dir.path());
    let kube = bed.kube().expect("kube mode");
    // Something listens on each node's own address, as a hostNetwork pod
    // would; the manifests' Endpoints name these addresses.
    let mut listeners = Vec::new();
    for (i, node) in bed.nodes().iter().enumerate() {
        let link = kube
            .node_named(&node.name)
            .unwrap_or_else(|| panic!("no underlay link for {}", node.name));
        assert_eq!(link.addr, Ipv4Addr::new(172, 30, 0, 10 + i as u8));
        let addr = SocketAddr::new(IpAddr::V4(link.addr), NODE_PORT);
        let l = bed
            .in_node(i, || TcpListener::bind(addr))
            .unwrap_or_else(|e| panic!("listening on {addr} in {}: {e}", node.netns));
        listeners.push(l);
    }

    // The outside host through the selector-less Service.
    let probes = parse_probes(
        r#"
{"from": "ext/open", "to": "svc:ext/db", "port": 5432, "protocol": "TCP", "allowed": true}
{"from": "ext/db-client", "to": "svc:ext/db", "port": 5432, "protocol": "TCP", "allowed": true}
{"from": "ext/locked", "to": "svc:ext/db", "port": 5432, "protocol": "TCP", "allowed": false}
{"from": "ext/half", "to": "svc:ext/db", "port": 5432, "protocol": "TCP", "allowed": false}
{"from": "ext/db-client", "to": "198.51.100.10", "port": 5432, "protocol": "TCP", "allowed": true}
"#,
        Path::new("inline.jsonl"),
    )
    .unwrap();
    let (seen, drops) = bed.probe_collecting_drops(&probes);
    eprintln!("{}", report::table(&seen));
    assert!(
        seen.iter()
            .all(|o: &Observation| o.matches_expectation() == Some(true)),
        "{}\n--- agent logs ---\n{}",
        report::table(&seen),
        bed.agent_log_tail(30)
    );
    assert!(
        drops
            .iter()
            .any(|r| r.pod == "ext/locked" && r.direction == "egress" && r.dport == 5432),
        "locked's connection to the outside host was not dropped by its agent: {drops:#?}"
    );

    // hostNetwork backends on both nodes.
    let nodes = SocketAddr::new(IpAddr::V4(Ipv4Addr::new(10, 96, 0, 51)), 80);
    for pod in ["ext/open", "ext/node-client"] {
        assert_eq!(
            connects(&bed, pod, nodes, 6),
            6,
            "{pod} to the Service on both nodes' addresses\n{}",
            bed.agent_log_tail(20)
        );
    }
    let (counts, drops) = bed.collecting_drops(|| {
        (
            connects(&bed, "ext/locked", nodes, 3),
            connects(&bed, "ext/half", nodes, 6),
        )
    });
    assert_eq!(counts, (0, 0), "(locked, half) to the node Service");
    for pod in ["ext/locked", "ext/half"] {
        assert!(
            drops
                .iter()
                .any(|r| r.pod == pod && r.direction == "egress" && r.dport == 80),
            "{pod}'s connection to the node Service was not dropped by its agent: {drops:#?}"
        );
    }

    // The API server through the `kubernetes` Service: locked's packet is
    // dropped by its own agent (the control plane has no route back to
    // the pods, so an allowed connection would not complete either: the
    // drop is what shows it).
    let api = SocketAddr::new(IpAddr::V4(Ipv4Addr::new(10, 96, 0, 1)), 443);
    let (n, drops) = bed.collecting_drops(|| connects(&bed, "ext/locked", api, 1));
    assert_eq!(n, 0);
    assert!(
        drops
            .iter()
            .any(|r| r.pod == "ext/locked" && r.direction == "egress" && r.dport == 443),
        "locked's connection to the kubernetes Service was not dropped: {drops:#?}"
    );
    drop(listeners);
}
