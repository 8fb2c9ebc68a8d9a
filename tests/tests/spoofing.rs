//! Source validation with real packets on a simulated node (rule 15): a
//! pod that may not reach an isolated pod forges its source address — an
//! allowed peer's IPv4, the node's bridge address (which the isolated pod
//! would accept as "the node"), an allowed peer's IPv6 — and sends UDP
//! datagrams to it. None is delivered, the drops are reported as `spoofed
//! source`, and honest traffic (the allowed peer's own datagrams, ARP and
//! neighbour discovery) keeps working.
//!
//! The forger really sends from the forged address: the address is put on
//! its interface and the victim's MAC is a permanent neighbour entry, so
//! no ARP or neighbour solicitation (which would carry the forged address
//! too) is needed first.
//!
//! Needs root, bpffs and the binaries (see `palisade_tests::bin_dir`).

use std::net::{IpAddr, SocketAddr, UdpSocket};
use std::process::Command;
use std::sync::mpsc;
use std::thread;
use std::time::{Duration, Instant};

use agent_api::{FlowRecord, Request};
use palisade_tests::{in_named_netns, pod_named, start_palisade_bed};

const CLUSTER: &str = r#"
apiVersion: v1
kind: Namespace
metadata: {name: app, labels: {kubernetes.io/metadata.name: app}}
---
apiVersion: v1
kind: Pod
metadata: {name: vault, namespace: app, labels: {app: vault}}
spec: {containers: [{name: v, image: x}]}
status:
  podIP: 10.244.0.10
  podIPs: [{ip: 10.244.0.10}, {ip: "fd00:10:244::10"}]
---
apiVersion: v1
kind: Pod
metadata: {name: friend, namespace: app, labels: {app: friend}}
spec: {containers: [{name: f, image: x}]}
status:
  podIP: 10.244.0.11
  podIPs: [{ip: 10.244.0.11}, {ip: "fd00:10:244::11"}]
---
apiVersion: v1
kind: Pod
metadata: {name: mallory, namespace: app, labels: {app: mallory}}
spec: {containers: [{name: m, image: x}]}
status:
  podIP: 10.244.0.12
  podIPs: [{ip: 10.244.0.12}, {ip: "fd00:10:244::12"}]
---
# vault: UDP 9100 from friend only (and, as always, from the node).
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
const DATAGRAMS: usize = 20;

fn ip(args: &[&str]) -> String {
    let out = Command::new("ip")
        .args(args)
        .output()
        .unwrap_or_else(|e| panic!("ip {args:?}: {e}"));
    assert!(
        out.status.success(),
        "ip {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

fn mac_of(ns: &str, ifname: &str) -> String {
    let text = ip(&["-n", ns, "-o", "link", "show", ifname]);
    text.split_whitespace()
        .skip_while(|w| *w != "link/ether")
        .nth(1)
        .unwrap_or_else(|| panic!("no MAC in {text}"))
        .to_string()
}

/// Sends `DATAGRAMS` datagrams from `src` (bound, port 0) to `dst`.
fn send_from(ns: &str, src: IpAddr, dst: SocketAddr) {
    in_named_netns(ns, || {
        let s = UdpSocket::bind(SocketAddr::new(src, 0))
            .unwrap_or_else(|e| panic!("bind {src} in {ns}: {e}"));
        for i in 0..DATAGRAMS {
            s.send_to(format!("{src} #{i}").as_bytes(), dst)
                .unwrap_or_else(|e| panic!("send {src} -> {dst}: {e}"));
            thread::sleep(Duration::from_millis(2));
        }
    });
}

/// Makes `ns` (interface eth0) able to send from `forged` to `victim`
/// without resolving `victim` first.
fn forge(ns: &str, forged: IpAddr, victim: IpAddr, victim_mac: &str) {
    let forged = forged.to_string();
    let victim = victim.to_string();
    if forged.contains(':') {
        let a = format!("{forged}/128");
        ip(&["-n", ns, "addr", "add", &a, "dev", "eth0", "nodad"]);
    } else {
        let a = format!("{forged}/32");
        ip(&["-n", ns, "addr", "add", &a, "dev", "eth0"]);
    }
    ip(&[
        "-n",
        ns,
        "neigh",
        "replace",
        &victim,
        "lladdr",
        victim_mac,
        "dev",
        "eth0",
        "nud",
        "permanent",
    ]);
}

#[test]
fn forged_sources_never_reach_an_isolated_pod() {
    let bed = start_palisade_bed("spoof", CLUSTER, 1);
    let pod = |name: &str| pod_named(&bed, name);
    let (vault, friend, mallory) = (pod("vault"), pod("friend"), pod("mallory"));
    let vault6 = vault.ip6.expect("dual-stack bed");
    let friend6 = friend.ip6.expect("dual-stack bed");
    let node = IpAddr::V4(bed.node_addr());

    // Drops of mallory's egress, as `policy-agent flows` shows them.
    let socket = bed.agent_socket().expect("palisade is on").to_path_buf();
    let (tx, flows) = mpsc::channel::<FlowRecord>();
    thread::spawn(move || {
        let request = Request::Flows {
            pod: Some("app/mallory".into()),
            verdict: Some("dropped".into()),
        };
        let _ = agent_api::stream_flows(&socket, &request, |r| tx.send(r).is_ok());
    });
    thread::sleep(Duration::from_millis(300));

    // The isolated pod counts what arrives, by source address.
    let (ready_tx, ready) = mpsc::channel();
    let vault_ns = vault.netns.clone();
    let receiver = thread::spawn(move || {
        in_named_netns(&vault_ns, || {
            let s = UdpSocket::bind(("::", PORT)).unwrap();
            s.set_read_timeout(Some(Duration::from_millis(200)))
                .unwrap();
            ready_tx.send(()).unwrap();
            let mut got: Vec<IpAddr> = Vec::new();
            let mut buf = [0u8; 256];
            let mut idle_since = Instant::now();
            let started = Instant::now();
            while started.elapsed() < Duration::from_secs(20) {
                match s.recv_from(&mut buf) {
                    Ok((_, from)) => {
                        got.push(canonical(from.ip()));
                        idle_since = Instant::now();
                    }
                    Err(_) if idle_since.elapsed() > Duration::from_secs(3) => break,
                    Err(_) => {}
                }
            }
            got
        })
    });
    ready.recv().unwrap();

    let vault_mac = mac_of(&vault.netns, "eth0");
    let forgeries = [
        ("friend's IPv4", IpAddr::V4(friend.ip), IpAddr::V4(vault.ip)),
        ("the node's address", node, IpAddr::V4(vault.ip)),
        ("friend's IPv6", IpAddr::V6(friend6), IpAddr::V6(vault6)),
    ];
    for (_, forged, victim) in &forgeries {
        forge(&mallory.netns, *forged, *victim, &vault_mac);
    }
    // Honest traffic first: friend is allowed over both families, mallory
    // from its own address is denied by the policy.
    send_from(
        &friend.netns,
        IpAddr::V4(friend.ip),
        SocketAddr::new(IpAddr::V4(vault.ip), PORT),
    );
    send_from(
        &friend.netns,
        IpAddr::V6(friend6),
        SocketAddr::new(IpAddr::V6(vault6), PORT),
    );
    send_from(
        &mallory.netns,
        IpAddr::V4(mallory.ip),
        SocketAddr::new(IpAddr::V4(vault.ip), PORT),
    );
    for (_, forged, victim) in &forgeries {
        send_from(&mallory.netns, *forged, SocketAddr::new(*victim, PORT));
    }
    let got = receiver.join().unwrap();

    let from = |a: IpAddr| got.iter().filter(|x| **x == a).count();
    // The receiver works: friend's own datagrams arrive (both families).
    assert!(
        from(IpAddr::V4(friend.ip)) + from(IpAddr::V6(friend6)) >= DATAGRAMS * 2,
        "friend's datagrams did not all arrive: {got:?}\n{}",
        bed.agent_log_tail(20)
    );
    // ...and only those: every forged datagram would carry friend's or the
    // node's address, so anything beyond friend's own is a forgery.
    assert_eq!(
        from(IpAddr::V4(friend.ip)) + from(IpAddr::V6(friend6)),
        DATAGRAMS * 2,
        "forged datagrams reached the isolated pod: {got:?}"
    );
    assert_eq!(
        from(node),
        0,
        "the node's forged address got through: {got:?}"
    );
    assert_eq!(from(IpAddr::V4(mallory.ip)), 0, "{got:?}");

    // Reported: spoofed-source drops for each forged address.
    let mut spoofed = std::collections::BTreeSet::new();
    let deadline = Instant::now() + Duration::from_secs(5);
    while spoofed.len() < forgeries.len() && Instant::now() < deadline {
        if let Ok(r) = flows.recv_timeout(Duration::from_millis(200)) {
            if r.reason == "spoofed source" && r.direction == "egress" && r.protocol == "UDP" {
                spoofed.insert(r.src.clone());
            }
        }
    }
    for (what, forged, _) in &forgeries {
        assert!(
            spoofed.contains(&forged.to_string()),
            "no spoofed-source drop reported for {what} ({forged}); seen {spoofed:?}"
        );
    }
    drop(bed);
}

/// The name, in the node's namespace, of the host veth whose peer is
/// `eth0` of `pod_ns` (`eth0@ifN` names its index).
fn host_port(node_ns: &str, pod_ns: &str) -> String {
    let text = ip(&["-n", pod_ns, "-o", "link", "show", "eth0"]);
    let index = text
        .split_whitespace()
        .nth(1)
        .and_then(|w| w.split("@if").nth(1))
        .map(|w| w.trim_end_matches(':').to_string())
        .unwrap_or_else(|| panic!("no peer index in {text}"));
    let links = ip(&["-n", node_ns, "-o", "link", "show"]);
    links
        .lines()
        .find(|l| l.starts_with(&format!("{index}: ")))
        .and_then(|l| l.split_whitespace().nth(1))
        .map(|n| {
            n.trim_end_matches(':')
                .split('@')
                .next()
                .unwrap_or(n)
                .to_string()
        })
        .unwrap_or_else(|| panic!("no link {index} in {links}"))
}

/// The ports of bridge `cni0` that its forwarding table holds `mac` on.
fn fdb_ports(node_ns: &str, mac: &str) -> Vec<String> {
    let out = Command::new("bridge")
        .args(["-n", node_ns, "fdb", "show", "br", "cni0"])
        .output()
        .unwrap_or_else(|e| panic!("bridge fdb: {e}"));
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .filter(|l| l.starts_with(mac))
        .filter_map(|l| {
            let mut w = l.split_whitespace();
            w.find(|x| *x == "dev").and(w.next()).map(str::to_string)
        })
        .collect()
}

/// Layer 2 (issue 23, item 3): a pod that sends frames with another pod's
/// MAC (the measured attack: broadcast frames carrying the victim's MAC
/// and the attacker's own address) does not move the victim's entry in
/// the bridge's forwarding table to its own port.
#[test]
fn a_forged_mac_does_not_move_the_victims_forwarding_entry() {
    let bed = start_palisade_bed("l2", CLUSTER, 1);
    let pod = |name: &str| pod_named(&bed, name);
    let (vault, friend, mallory) = (pod("vault"), pod("friend"), pod("mallory"));
    let node_ns = bed.node_netns().to_string();
    let vault_port = host_port(&node_ns, &vault.netns);
    let mallory_port = host_port(&node_ns, &mallory.netns);
    let vault_mac = mac_of(&vault.netns, "eth0");

    // The bridge learns the victim's MAC on its port.
    send_from(
        &vault.netns,
        IpAddr::V4(vault.ip),
        SocketAddr::new(IpAddr::V4(friend.ip), PORT),
    );
    assert_eq!(fdb_ports(&node_ns, &vault_mac), vec![vault_port.clone()]);

    // The attacker takes the victim's MAC and broadcasts from its own
    // address (ARP for the broadcast goes out with that MAC too).
    ip(&[
        "-n",
        &mallory.netns,
        "link",
        "set",
        "eth0",
        "address",
        &vault_mac,
    ]);
    in_named_netns(&mallory.netns, || {
        let s = UdpSocket::bind(SocketAddr::new(IpAddr::V4(mallory.ip), 0)).unwrap();
        s.set_broadcast(true).unwrap();
        for i in 0..30 {
            let _ = s.send_to(format!("#{i}").as_bytes(), ("255.255.255.255", PORT));
            thread::sleep(Duration::from_millis(5));
        }
    });
    thread::sleep(Duration::from_millis(200));
    let ports = fdb_ports(&node_ns, &vault_mac);
    assert!(
        !ports.contains(&mallory_port),
        "the victim's entry moved to the attacker's port {mallory_port}: {ports:?}"
    );
    assert_eq!(ports, vec![vault_port], "{}", bed.agent_log_tail(20));
    drop(bed);
}

/// IPv4-mapped IPv6 (what a dual-stack socket reports) as IPv4.
fn canonical(a: IpAddr) -> IpAddr {
    match a {
        IpAddr::V6(v6) => v6.to_ipv4_mapped().map_or(a, IpAddr::V4),
        v4 => v4,
    }
}
