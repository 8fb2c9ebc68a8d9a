//! The restart test: the real `policy-agent run` enforces a policy between
//! two pods (each in its own namespace, wired by veth to a node namespace);
//! under continuous traffic it is SIGKILLed and started again. No allowed
//! datagram may be lost, no denied one may pass, no map may be recreated,
//! the links stay attached, the restarted agent still knows the pods and
//! it enforces a policy change made after the restart.
//! Needs root.

#[path = "support/agent_proc.rs"]
mod agent_proc;
#[path = "support/kernel.rs"]
mod kernel;
#[path = "support/netns.rs"]
mod netns;

use std::{
    net::SocketAddr,
    path::Path,
    sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering},
    time::{Duration, Instant},
};

use agent_api::{Attachment, Request, Response};
use agent_proc::{call, AgentProc, Scratch};
use aya::programs::{SchedClassifier, TcAttachType};
use kernel::PinDir;
use netns::{
    rcvbuf_errors_at_stop, send_paced, serve_udp_in, udp_gets_through, veth, NetNs, Received,
    StopOnDrop, VethSpec,
};
use policy_agent::dataplane::kernel::{PinPaths, ALL_MAPS};

const CLIENT: [u8; 4] = [10, 98, 1, 2];
const SERVER: [u8; 4] = [10, 98, 2, 2];
/// Allowed from the client to the server.
const X: u16 = 7001;
/// Denied from the client to the server.
const Y: u16 = 7002;
const GAP: Duration = Duration::from_micros(200);
const NODE_ADDRS: &[&str] = &["--node-addr", "10.98.1.1", "--node-addr", "10.98.2.1"];

const MANIFESTS: &str = "\
apiVersion: v1
kind: Namespace
metadata:
  name: rt
  labels:
    kubernetes.io/metadata.name: rt
---
apiVersion: v1
kind: Pod
metadata:
  name: client
  namespace: rt
  labels:
    app: client
spec:
  containers:
  - name: c
    image: example
status:
  podIP: 10.98.1.2
  podIPs:
  - ip: 10.98.1.2
---
apiVersion: v1
kind: Pod
metadata:
  name: server
  namespace: rt
  labels:
    app: server
spec:
  containers:
  - name: s
    image: example
status:
  podIP: 10.98.2.2
  podIPs:
  - ip: 10.98.2.2
---
apiVersion: networking.k8s.io/v1
kind: NetworkPolicy
metadata:
  name: server-in
  namespace: rt
spec:
  podSelector:
    matchLabels:
      app: server
  policyTypes: [Ingress]
  ingress:
  - from:
    - podSelector:
        matchLabels:
          app: client
    ports:
    - protocol: UDP
      port: 7001
";

fn attachment(name: &str, netns: &NetNs, host_if: &str, ip: &str) -> Attachment {
    Attachment {
        container_id: format!("sandbox-{name}"),
        netns: netns.path(),
        ifname: "eth0".into(),
        pod_namespace: "rt".into(),
        pod_name: name.into(),
        host_interfaces: vec![host_if.into()],
        ips: vec![ip.into()],
    }
}

fn map_ids(pins: &Path) -> Vec<(&'static str, u32)> {
    let paths = PinPaths::new(pins);
    ALL_MAPS
        .iter()
        .map(|name| {
            let info = aya::maps::MapInfo::from_pin(paths.map(name))
                .unwrap_or_else(|e| panic!("map {name}: {e}"));
            (*name, info.id())
        })
        .collect()
}

/// Programs attached to the two host veths (ingress, egress each), seen
/// from the node namespace.
fn attached_programs(node: &NetNs) -> Vec<usize> {
    std::thread::scope(|s| {
        s.spawn(|| {
            node.enter();
            let mut out = Vec::new();
            for ifname in ["pa-h", "pb-h"] {
                for t in [TcAttachType::Ingress, TcAttachType::Egress] {
                    let n = SchedClassifier::query_tcx(ifname, t)
                        .unwrap_or_else(|e| panic!("query tcx {ifname}: {e}"))
                        .1
                        .len();
                    out.push(n);
                }
            }
            out
        })
        .join()
        .unwrap()
    })
}

#[test]
fn sigkill_and_restart_under_traffic() {
    kernel::require_root();
    let started = Instant::now();
    let scratch = Scratch::new("restart");
    std::fs::write(scratch.0.join("cluster.yaml"), MANIFESTS).unwrap();
    let pins = PinDir::new("restart");
    let node = NetNs::new("rnode");
    let client = NetNs::new("rclient");
    let server = NetNs::new("rserver");
    node.exec(&["sysctl", "-q", "-w", "net.ipv4.ip_forward=1"]);
    veth(
        Some(&node),
        &client,
        &VethSpec {
            host: "pa-h",
            host_cidr: "10.98.1.1/24",
            pod_if: "eth0",
            pod_cidr: "10.98.1.2/24",
            gateway: Some("10.98.1.1"),
        },
    );
    veth(
        Some(&node),
        &server,
        &VethSpec {
            host: "pb-h",
            host_cidr: "10.98.2.1/24",
            pod_if: "eth0",
            pod_cidr: "10.98.2.2/24",
            gateway: Some("10.98.2.1"),
        },
    );

    let mut agent = AgentProc::start(&node, &scratch.0, &pins.0, 1, NODE_ADDRS);
    for att in [
        attachment("client", &client, "pa-h", "10.98.1.2"),
        attachment("server", &server, "pb-h", "10.98.2.2"),
    ] {
        let name = att.pod_name.clone();
        let r = call(&scratch.0, &Request::Add(att));
        assert_eq!(r, Response::Ok, "ADD {name}");
    }
    let ids_before = map_ids(&pins.0);
    assert_eq!(attached_programs(&node), vec![1, 1, 1, 1]);

    let (x, y) = (Received::default(), Received::default());
    let stop_rx = AtomicBool::new(false);
    let stop_tx = AtomicBool::new(false);
    let rounds = AtomicU64::new(0);
    let bound = AtomicUsize::new(0);
    let (xr, yr, stop_rx, stop_tx, rounds) = (&x, &y, &stop_rx, &stop_tx, &rounds);
    let bound = &bound;
    let (server_ns, client_ns) = (&server, &client);
    let mut timeline = Vec::new();
    let (sent, rcvbuf_errors) = std::thread::scope(|s| {
        for (port, into) in [(X, xr), (Y, yr)] {
            let addr = SocketAddr::from((SERVER, port));
            s.spawn(move || serve_udp_in(server_ns, addr, into, stop_rx, bound));
        }
        let errors = s.spawn(move || rcvbuf_errors_at_stop(server_ns, stop_rx));
        let sender = s.spawn(move || {
            let dsts = [SocketAddr::from((SERVER, X)), SocketAddr::from((SERVER, Y))];
            send_paced(client_ns, CLIENT, &dsts, GAP, stop_tx, (bound, 2), rounds)
        });
        let stop = StopOnDrop([stop_tx, stop_rx]);
        let t0 = Instant::now();
        assert!(
            xr.wait_first(Duration::from_secs(5)),
            "no allowed datagram arrived before the kill"
        );
        std::thread::sleep(Duration::from_millis(300));
        let mark = |what: &str, tl: &mut Vec<String>| {
            tl.push(format!(
                "{:>6} ms  {what}: {} rounds sent, x received {}",
                t0.elapsed().as_millis(),
                rounds.load(Ordering::SeqCst),
                xr.count()
            ))
        };
        mark("SIGKILL", &mut timeline);
        agent.kill();
        std::thread::sleep(Duration::from_secs(1));
        mark("restart", &mut timeline);
        agent = AgentProc::start(&node, &scratch.0, &pins.0, 2, NODE_ADDRS);
        mark("ready", &mut timeline);
        std::thread::sleep(Duration::from_secs(1));
        mark("stop", &mut timeline);
        stop_tx.store(true, Ordering::SeqCst);
        let sent = sender.join().unwrap();
        xr.settle();
        yr.settle();
        drop(stop);
        (sent, errors.join().unwrap())
    });
    let report = format!(
        "timeline:\n{}\nsent x={} y={}, received x={} y={}\n--- restarted agent log ---\n{}",
        timeline.join("\n"),
        sent[0],
        sent[1],
        x.count(),
        y.count(),
        agent.log_text()
    );
    eprintln!("{report}");
    assert_eq!(rcvbuf_errors, 0, "receive buffers overflowed\n{report}");
    let missing = x.missing(sent[0]);
    assert!(
        missing.is_empty(),
        "{} of {} allowed datagrams lost (first {:?}, last {:?})\n{report}",
        missing.len(),
        sent[0],
        missing.first(),
        missing.last()
    );
    assert_eq!(y.count(), 0, "denied datagrams passed\n{report}");
    assert_eq!(map_ids(&pins.0), ids_before, "maps were recreated");
    assert_eq!(
        attached_programs(&node),
        vec![1, 1, 1, 1],
        "links not attached exactly once after the restart"
    );
    for pod in ["client", "server"] {
        let r = call(
            &scratch.0,
            &Request::Check {
                container_id: format!("sandbox-{pod}"),
            },
        );
        assert_eq!(
            r,
            Response::Ok,
            "the restarted agent forgot {pod}\n{report}"
        );
    }
    // The restarted agent is in charge, not merely leaving the maps as
    // they were: a policy change reaches the kernel (Y, denied all along
    // above, is opened).
    let opened = MANIFESTS.replace(
        "      port: 7001\n",
        "      port: 7001\n    - protocol: UDP\n      port: 7002\n",
    );
    assert_ne!(opened, MANIFESTS);
    std::fs::write(scratch.0.join("cluster.yaml"), opened).unwrap();
    assert!(
        udp_gets_through(&client, CLIENT, &server, SocketAddr::from((SERVER, Y))),
        "the restarted agent did not enforce a policy change\n{}",
        agent.log_text()
    );
    agent.kill();
    eprintln!("wall time {:?}", started.elapsed());
}
