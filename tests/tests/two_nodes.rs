//! Two nodes joined as Flannel's vxlan backend joins them: pods on each
//! node reach pods on the other through `flannel.1` (and `flannel-v6.1`)
//! with their own addresses, outside hosts are reachable from both nodes,
//! and with Palisade each node's agent judges traffic from and to the other
//! node's pods by the identities it knows from the cluster state (no
//! packet marking between nodes): egress at the sender's node, ingress at
//! the receiver's.
//!
//! The plain test needs root only; the Palisade one also bpffs and the
//! binaries (see `palisade_tests::bin_dir`).

use std::path::{Path, PathBuf};
use std::time::Instant;

use palisade_tests::{bin_dir, write_atomically};
use testbed::overlay::{VXLAN6_IF, VXLAN_IF};
use testbed::{parse_probes, report, Probe, Testbed, TestbedOptions};

/// A cluster manifest in a folder of our own, removed on drop.
struct Manifest(PathBuf);

impl Manifest {
    fn new(tag: &str, text: &str) -> Self {
        let dir =
            std::env::temp_dir().join(format!("palisade-two-nodes-{}-{tag}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("cluster.yaml");
        write_atomically(&path, text).unwrap();
        Manifest(path)
    }
}

impl Drop for Manifest {
    fn drop(&mut self) {
        if let Some(dir) = self.0.parent() {
            let _ = std::fs::remove_dir_all(dir);
        }
    }
}

/// Packets `dev` in namespace `ns` has sent so far.
fn tx_packets(ns: &str, dev: &str) -> u64 {
    let out = std::process::Command::new("ip")
        .args(["-n", ns, "-s", "-j", "link", "show", dev])
        .output()
        .unwrap();
    assert!(out.status.success(), "ip -s link show {dev} in {ns}");
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    v[0]["stats64"]["tx"]["packets"].as_u64().unwrap()
}

fn probes(text: &str) -> Vec<Probe> {
    parse_probes(text, Path::new("inline.jsonl")).unwrap()
}

fn start(manifest: &Manifest, probes: &[Probe], palisade: bool) -> Testbed {
    Testbed::start(TestbedOptions {
        manifests: vec![manifest.0.clone()],
        palisade,
        bin_dir: if palisade { bin_dir() } else { PathBuf::new() },
        probes: probes.to_vec(),
        nodes: 2,
        agent_args: Vec::new(),
    })
    .unwrap_or_else(|e| panic!("two-node test bed: {e}"))
}

/// Two pods with serving ports; `web` named to node1 (its address says
/// node0's subnet would be wrong, so it has node1's), `db` placed by its
/// address on node0, `cache` on node0 by address too.
const CLUSTER: &str = r#"
apiVersion: v1
kind: Namespace
metadata: {name: shop}
---
apiVersion: v1
kind: Pod
metadata: {name: web, namespace: shop, labels: {app: web}}
spec:
  nodeName: node1
  containers: [{name: c, image: none, ports: [{containerPort: 80}, {containerPort: 80, protocol: UDP}]}]
status: {podIP: 10.244.1.20, podIPs: [{ip: 10.244.1.20}, {ip: "fd00:10:244:1::20"}]}
---
apiVersion: v1
kind: Pod
metadata: {name: db, namespace: shop, labels: {app: db}}
spec:
  containers: [{name: c, image: none, ports: [{containerPort: 5432}, {containerPort: 5432, protocol: UDP}]}]
status: {podIP: 10.244.0.30, podIPs: [{ip: 10.244.0.30}, {ip: "fd00:10:244::30"}]}
---
apiVersion: v1
kind: Pod
metadata: {name: cache, namespace: shop, labels: {app: cache}}
spec:
  containers: [{name: c, image: none, ports: [{containerPort: 6379}]}]
status: {podIP: 10.244.0.31, podIPs: [{ip: 10.244.0.31}, {ip: "fd00:10:244::31"}]}
"#;

/// db accepts web only (TCP and UDP 5432, both families); web may talk
/// only to db and to 198.51.100.7 (and its IPv6 twin).
const POLICIES: &str = r#"
---
apiVersion: networking.k8s.io/v1
kind: NetworkPolicy
metadata: {name: db, namespace: shop}
spec:
  podSelector: {matchLabels: {app: db}}
  ingress: [{from: [{podSelector: {matchLabels: {app: web}}}], ports: [{port: 5432}, {port: 5432, protocol: UDP}]}]
---
apiVersion: networking.k8s.io/v1
kind: NetworkPolicy
metadata: {name: web, namespace: shop}
spec:
  podSelector: {matchLabels: {app: web}}
  policyTypes: [Egress]
  egress:
  - to: [{podSelector: {matchLabels: {app: db}}}]
  - to: [{ipBlock: {cidr: 198.51.100.7/32}}, {ipBlock: {cidr: "2001:db8::7/128"}}]
"#;

#[test]
fn plain_overlay_carries_pods_and_outside_hosts_over_both_families() {
    let t0 = Instant::now();
    let manifest = Manifest::new("plain", CLUSTER);
    let probes = probes(
        r#"{"from": "shop/web", "to": "shop/db", "port": 5432, "allowed": true}
{"from": "shop/web", "to": "shop/db", "port": 5432, "protocol": "UDP", "allowed": true}
{"from": "shop/db", "to": "shop/web", "port": 80, "allowed": true}
{"from": "shop/cache", "to": "shop/db", "port": 5432, "allowed": true}
{"from": "shop/web", "to": "fd00:10:244::30", "port": 5432, "allowed": true}
{"from": "shop/db", "to": "fd00:10:244:1::20", "port": 80, "protocol": "UDP", "allowed": true}
{"from": "198.51.100.7", "to": "shop/web", "port": 80, "allowed": true}
{"from": "198.51.100.7", "to": "shop/db", "port": 5432, "allowed": true}
{"from": "shop/web", "to": "198.51.100.7", "port": 443, "allowed": true}
{"from": "shop/db", "to": "198.51.100.8", "port": 443, "protocol": "UDP", "allowed": true}
{"from": "2001:db8::7", "to": "shop/web", "port": 80, "allowed": true}
{"from": "shop/db", "to": "2001:db8::7", "port": 443, "allowed": true}"#,
    );
    let bed = start(&manifest, &probes, false);
    eprintln!("two-node bed up in {:?}", t0.elapsed());
    let nodes = bed.nodes();
    assert_eq!(nodes.len(), 2);
    let web = &bed.pods()[&"shop/web".parse().unwrap()];
    let db = &bed.pods()[&"shop/db".parse().unwrap()];
    assert_eq!((web.node, db.node), (1, 0), "nodeName, then address");
    assert!(bed.dual_stack());
    let before = [
        tx_packets(&nodes[1].netns, VXLAN_IF),
        tx_packets(&nodes[1].netns, VXLAN6_IF),
    ];
    let seen = bed.probe(&probes[..6]);
    eprintln!("{}", report::table(&seen));
    assert_eq!(report::mismatches(&seen), 0);
    assert!(seen.iter().all(|o| o.allowed.is_some()));
    // web (node1) → db (node0) went through node1's VXLAN devices.
    let after = [
        tx_packets(&nodes[1].netns, VXLAN_IF),
        tx_packets(&nodes[1].netns, VXLAN6_IF),
    ];
    assert!(
        after[0] > before[0],
        "IPv4 pod traffic left node1 on {VXLAN_IF}"
    );
    assert!(
        after[1] > before[1],
        "IPv6 pod traffic left node1 on {VXLAN6_IF}"
    );
    // Outside hosts are reached from, and reach, both nodes' pods.
    let seen = bed.probe(&probes[6..]);
    eprintln!("{}", report::table(&seen));
    assert_eq!(report::mismatches(&seen), 0);
    assert!(seen.iter().all(|o| o.allowed.is_some()));
    // A port nobody serves on the other node is refused: the test can fail.
    let closed = bed.probe(&self::probes(
        r#"{"from": "shop/web", "to": "shop/db", "port": 5433}"#,
    ));
    assert_eq!(closed[0].allowed, Some(false), "{}", closed[0].detail);
    let names: Vec<String> = nodes.iter().map(|n| n.netns.clone()).collect();
    drop(bed);
    for n in names {
        assert!(!Path::new("/run/netns").join(n).exists());
    }
    eprintln!("plain two-node test: {:?}", t0.elapsed());
}

#[test]
fn each_node_judges_the_other_nodes_pods_by_identity() {
    let t0 = Instant::now();
    let manifest = Manifest::new("palisade", &format!("{CLUSTER}{POLICIES}"));
    let probes = probes(
        r#"{"from": "shop/web", "to": "shop/db", "port": 5432, "allowed": true}
{"from": "shop/web", "to": "shop/db", "port": 5432, "protocol": "UDP", "allowed": true}
{"from": "shop/web", "to": "fd00:10:244::30", "port": 5432, "allowed": true}
{"from": "shop/cache", "to": "shop/db", "port": 5432, "allowed": false}
{"from": "shop/db", "to": "shop/web", "port": 80, "allowed": true}
{"from": "shop/web", "to": "shop/cache", "port": 6379, "allowed": false}
{"from": "shop/web", "to": "198.51.100.7", "port": 443, "allowed": true}
{"from": "shop/web", "to": "2001:db8::7", "port": 443, "allowed": true}
{"from": "shop/web", "to": "198.51.100.8", "port": 443, "allowed": false}
{"from": "198.51.100.8", "to": "shop/db", "port": 5432, "allowed": false}
{"from": "198.51.100.8", "to": "shop/web", "port": 80, "allowed": true}"#,
    );
    let bed = start(&manifest, &probes, true);
    eprintln!("two-node bed with Palisade up in {:?}", t0.elapsed());
    assert!(bed.nodes().iter().all(|n| n.agent_socket.is_some()));
    let seen = bed.probe(&probes);
    eprintln!("{}", report::table(&seen));
    if report::mismatches(&seen) > 0 {
        eprintln!("{}", bed.agent_log_tail(30));
    }
    assert_eq!(report::mismatches(&seen), 0);
    assert!(seen.iter().all(|o| o.allowed.is_some()));
    eprintln!("Palisade two-node test: {:?}", t0.elapsed());
}
