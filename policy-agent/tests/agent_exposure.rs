//! The real `policy-agent run` in a node namespace, exposed to a pod as
//! on a node (the health port on the node's address, reachable from any
//! pod without egress isolation): thousands of idle connections from the
//! pod neither end the agent nor delay a CNI ADD nor keep the node's own
//! probes out; running out of descriptors (`EMFILE`) ends neither the
//! health server nor the CNI socket. Needs root.

#[path = "support/agent_proc.rs"]
mod agent_proc;
#[path = "support/kernel.rs"]
mod kernel;
#[path = "support/netns.rs"]
mod netns;

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::time::{Duration, Instant};

use agent_api::{Attachment, Request, Response};
use agent_proc::{call, socket, AgentProc, Scratch};
use kernel::PinDir;
use netns::{in_ns, veth, NetNs, VethSpec};

const MANIFESTS: &str = "\
apiVersion: v1
kind: Namespace
metadata:
  name: ex
  labels:
    kubernetes.io/metadata.name: ex
---
apiVersion: v1
kind: Pod
metadata:
  name: client
  namespace: ex
spec:
  containers:
  - name: c
    image: example
status:
  podIP: 10.97.1.2
---
apiVersion: v1
kind: Pod
metadata:
  name: server
  namespace: ex
spec:
  containers:
  - name: s
    image: example
status:
  podIP: 10.97.2.2
";

/// The health port on the node's address toward the client pod.
const HEALTH: &str = "10.97.1.1:9969";

/// A node namespace with two pods, and the agent's scratch folder.
struct Node {
    node: NetNs,
    client: NetNs,
    server: NetNs,
    pins: PinDir,
    scratch: Scratch,
}

fn node(tag: &str) -> Node {
    kernel::require_root();
    let scratch = Scratch::new(tag);
    std::fs::write(scratch.0.join("cluster.yaml"), MANIFESTS).unwrap();
    let node = NetNs::new(&format!("{tag}n"));
    let client = NetNs::new(&format!("{tag}c"));
    let server = NetNs::new(&format!("{tag}s"));
    node.exec(&["sysctl", "-q", "-w", "net.ipv4.ip_forward=1"]);
    for (ns, host, net) in [(&client, "xa-h", 1), (&server, "xb-h", 2)] {
        veth(
            Some(&node),
            ns,
            &VethSpec {
                host,
                host_cidr: &format!("10.97.{net}.1/24"),
                pod_if: "eth0",
                pod_cidr: &format!("10.97.{net}.2/24"),
                gateway: Some(&format!("10.97.{net}.1")),
            },
        );
    }
    Node {
        node,
        client,
        server,
        pins: PinDir::new(tag),
        scratch,
    }
}

fn add_server(n: &Node) -> Response {
    call(
        &n.scratch.0,
        &Request::Add(Attachment {
            container_id: "sandbox-server".into(),
            netns: n.server.path(),
            ifname: "eth0".into(),
            pod_namespace: "ex".into(),
            pod_name: "server".into(),
            host_interfaces: vec!["xb-h".into()],
            ips: vec!["10.97.2.2".into()],
        }),
    )
}

/// `GET path` on the health port from namespace `ns`: the status line, or
/// why there is none (within 3 s).
fn get(ns: &NetNs, path: &str) -> Result<String, String> {
    in_ns(ns, || {
        let addr: SocketAddr = HEALTH.parse().unwrap();
        let mut s = TcpStream::connect_timeout(&addr, Duration::from_secs(3))
            .map_err(|e| format!("connect: {e}"))?;
        s.set_read_timeout(Some(Duration::from_secs(3))).unwrap();
        write!(
            s,
            "GET {path} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n"
        )
        .map_err(|e| format!("write: {e}"))?;
        let mut reply = String::new();
        s.read_to_string(&mut reply)
            .map_err(|e| format!("read: {e}"))?;
        Ok(reply)
    })
}

/// Thousands of idle connections from a pod, with the agent's descriptor
/// limit at the common 1024: the agent stays up, an ADD is not delayed
/// and the node's own probe is answered.
#[test]
fn idle_connections_from_a_pod_neither_end_the_agent_nor_delay_an_add() {
    let n = node("idle");
    let mut agent = AgentProc::start_limited(
        &n.node,
        &n.scratch.0,
        &n.pins.0,
        &["--health-addr", HEALTH],
        1024,
    );
    // The pod opens 3000 connections and sends nothing.
    let held: Vec<TcpStream> = in_ns(&n.client, || {
        let addr: SocketAddr = HEALTH.parse().unwrap();
        (0..3000)
            .filter_map(|_| TcpStream::connect_timeout(&addr, Duration::from_secs(1)).ok())
            .collect()
    });
    assert!(held.len() > 1500, "only {} connections opened", held.len());
    std::thread::sleep(Duration::from_millis(300));
    agent.assert_running();
    let started = Instant::now();
    assert_eq!(add_server(&n), Response::Ok, "{}", agent.log_text());
    let took = started.elapsed();
    assert!(
        took < Duration::from_secs(1),
        "ADD took {took:?} with the idle connections held"
    );
    // The kubelet's probe, from the node's own address.
    let reply = get(&n.node, "/healthz").unwrap_or_else(|e| panic!("/healthz: {e}"));
    assert!(reply.starts_with("HTTP/1.1 200"), "{reply}");
    let metrics = get(&n.node, "/metrics").unwrap_or_else(|e| panic!("/metrics: {e}"));
    assert!(
        metrics.contains("palisade_health_connections_refused_total"),
        "{metrics}"
    );
    drop(held);
    agent.assert_running();
}

/// Sets the soft descriptor limit of process `pid` (its hard limit
/// stays); returns the soft limit it had.
fn set_nofile(pid: u32, soft: u64) -> u64 {
    let pid = libc::pid_t::try_from(pid).unwrap();
    let mut old = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: a valid pointer to an rlimit to fill; no new limit.
    let rc = unsafe { libc::prlimit(pid, libc::RLIMIT_NOFILE, std::ptr::null(), &mut old) };
    assert_eq!(rc, 0, "prlimit: {}", std::io::Error::last_os_error());
    let new = libc::rlimit {
        rlim_cur: soft,
        rlim_max: old.rlim_max,
    };
    // SAFETY: a valid pointer to a filled rlimit; the old one not wanted.
    let rc = unsafe { libc::prlimit(pid, libc::RLIMIT_NOFILE, &new, std::ptr::null_mut()) };
    assert_eq!(rc, 0, "prlimit: {}", std::io::Error::last_os_error());
    old.rlim_cur
}

/// With no descriptor left, accepts fail with EMFILE on both servers:
/// both keep trying, and serve again once descriptors are free.
#[test]
fn running_out_of_descriptors_ends_neither_server() {
    let n = node("emfile");
    let mut agent = AgentProc::start(
        &n.node,
        &n.scratch.0,
        &n.pins.0,
        1,
        &["--health-addr", HEALTH],
    );
    let pid = agent.pid();
    let open = std::fs::read_dir(format!("/proc/{pid}/fd"))
        .unwrap()
        .count();
    let soft = set_nofile(pid, u64::try_from(open).unwrap());
    // Both servers meet EMFILE.
    let pending: Vec<TcpStream> = in_ns(&n.client, || {
        let addr: SocketAddr = HEALTH.parse().unwrap();
        (0..5)
            .filter_map(|_| TcpStream::connect_timeout(&addr, Duration::from_secs(1)).ok())
            .collect()
    });
    let _ = agent_api::call(
        &socket(&n.scratch.0),
        &Request::Status,
        Duration::from_secs(1),
    );
    std::thread::sleep(Duration::from_millis(1500));
    agent.assert_running();
    assert!(
        agent.log_text().contains("accepting a connection failed"),
        "{}",
        agent.log_text()
    );
    set_nofile(pid, soft);
    drop(pending);
    let started = Instant::now();
    assert_eq!(add_server(&n), Response::Ok, "{}", agent.log_text());
    assert!(started.elapsed() < Duration::from_secs(5));
    let reply = get(&n.node, "/healthz").unwrap_or_else(|e| panic!("/healthz: {e}"));
    assert!(reply.starts_with("HTTP/1.1 200"), "{reply}");
    agent.assert_running();
}
