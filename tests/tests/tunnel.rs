//! Tunnel injection on the two-node bed (issue 23, item 4): a pod on node0
//! hand-makes a VXLAN frame (VNI 1, UDP 8472, addressed to node1's
//! underlay address) whose inner packet claims to come from a pod node1's
//! isolated pod admits. Decapsulated on node1, that inner packet would be
//! judged as the admitted pod; the sender's egress check drops it first,
//! while the admitted pod's own datagrams still arrive.
//!
//! Needs root, bpffs and the binaries (see `palisade_tests::bin_dir`).

use std::net::{IpAddr, Ipv4Addr, SocketAddr, UdpSocket};
use std::sync::mpsc;
use std::thread;
use std::time::{Duration, Instant};

use palisade_tests::{in_named_netns, pod_named, start_palisade_bed};
use testbed::overlay::{underlay_addr, VXLAN_PORT};

const CLUSTER: &str = r#"
apiVersion: v1
kind: Namespace
metadata: {name: app, labels: {kubernetes.io/metadata.name: app}}
---
apiVersion: v1
kind: Pod
metadata: {name: vault, namespace: app, labels: {app: vault}}
spec: {nodeName: node1, containers: [{name: v, image: x}]}
status: {podIP: 10.244.1.10, podIPs: [{ip: 10.244.1.10}]}
---
apiVersion: v1
kind: Pod
metadata: {name: friend, namespace: app, labels: {app: friend}}
spec: {nodeName: node0, containers: [{name: f, image: x}]}
status: {podIP: 10.244.0.11, podIPs: [{ip: 10.244.0.11}]}
---
apiVersion: v1
kind: Pod
metadata: {name: mallory, namespace: app, labels: {app: mallory}}
spec: {nodeName: node0, containers: [{name: m, image: x}]}
status: {podIP: 10.244.0.12, podIPs: [{ip: 10.244.0.12}]}
---
apiVersion: networking.k8s.io/v1
kind: NetworkPolicy
metadata: {name: vault, namespace: app}
spec:
  podSelector: {matchLabels: {app: vault}}
  ingress:
  - from: [{podSelector: {matchLabels: {app: friend}}}]
    ports: [{port: 9100, protocol: UDP}]
"#;

const PORT: u16 = 9100;

/// A VXLAN payload (header, VNI 1) carrying an Ethernet frame from node0's
/// VXLAN device to node1's, with an IPv4/UDP datagram `src` → `dst`:`PORT`.
fn vxlan_frame(src: Ipv4Addr, dst: Ipv4Addr, body: &[u8]) -> Vec<u8> {
    let mut f = vec![0x08, 0, 0, 0, 0, 0, 1, 0];
    // The bed's VXLAN MACs (`0e:50:4c:00:00:<node>`).
    f.extend_from_slice(&[0x0e, 0x50, 0x4c, 0, 0, 1]);
    f.extend_from_slice(&[0x0e, 0x50, 0x4c, 0, 0, 0]);
    f.extend_from_slice(&[0x08, 0x00]);
    let total = (20 + 8 + body.len()) as u16;
    let mut ip = vec![0x45, 0];
    ip.extend_from_slice(&total.to_be_bytes());
    ip.extend_from_slice(&[0, 1, 0, 0, 64, 17, 0, 0]);
    ip.extend_from_slice(&src.octets());
    ip.extend_from_slice(&dst.octets());
    let mut sum: u32 = ip
        .chunks(2)
        .map(|w| u32::from(u16::from_be_bytes([w[0], w[1]])))
        .sum();
    while sum > 0xffff {
        sum = (sum & 0xffff) + (sum >> 16);
    }
    ip[10..12].copy_from_slice(&(!(sum as u16)).to_be_bytes());
    f.extend_from_slice(&ip);
    f.extend_from_slice(&40000u16.to_be_bytes());
    f.extend_from_slice(&PORT.to_be_bytes());
    f.extend_from_slice(&((8 + body.len()) as u16).to_be_bytes());
    f.extend_from_slice(&[0, 0]);
    f.extend_from_slice(body);
    f
}

#[test]
fn a_pod_cannot_inject_vxlan_into_another_node() {
    let bed = start_palisade_bed("tunnel", CLUSTER, 2);
    let pod = |name: &str| pod_named(&bed, name);
    let (vault, friend, mallory) = (pod("vault"), pod("friend"), pod("mallory"));

    // The isolated pod on node1 collects what arrives.
    let (ready_tx, ready) = mpsc::channel();
    let vault_ns = vault.netns.clone();
    let receiver = thread::spawn(move || {
        in_named_netns(&vault_ns, || {
            let s = UdpSocket::bind(("0.0.0.0", PORT)).unwrap();
            s.set_read_timeout(Some(Duration::from_millis(200)))
                .unwrap();
            ready_tx.send(()).unwrap();
            let mut got: Vec<String> = Vec::new();
            let mut buf = [0u8; 256];
            let started = Instant::now();
            while started.elapsed() < Duration::from_secs(6) {
                if let Ok((n, _)) = s.recv_from(&mut buf) {
                    got.push(String::from_utf8_lossy(&buf[..n]).into_owned());
                }
            }
            got
        })
    });
    ready.recv().unwrap();

    // friend's own datagrams: the path works.
    in_named_netns(&friend.netns, || {
        let s = UdpSocket::bind((friend.ip, 0)).unwrap();
        for _ in 0..5 {
            s.send_to(b"honest", (vault.ip, PORT)).unwrap();
            thread::sleep(Duration::from_millis(20));
        }
    });
    // mallory's VXLAN frames to node1, the inner packet claiming friend.
    let node1 = SocketAddr::new(IpAddr::V4(underlay_addr(1)), VXLAN_PORT);
    let forged = vxlan_frame(friend.ip, vault.ip, b"forged");
    in_named_netns(&mallory.netns, || {
        let s = UdpSocket::bind((mallory.ip, 0)).unwrap();
        for _ in 0..20 {
            // A drop at the sender's own hook may surface as EPERM.
            let _ = s.send_to(&forged, node1);
            thread::sleep(Duration::from_millis(20));
        }
    });
    let got = receiver.join().unwrap();
    assert!(
        got.iter().filter(|m| *m == "honest").count() >= 5,
        "friend's datagrams did not arrive: {got:?}\n{}",
        bed.agent_log_tail(20)
    );
    assert!(
        !got.iter().any(|m| m == "forged"),
        "a decapsulated forgery reached the isolated pod: {got:?}"
    );
    drop(bed);
}
