//! The benchmark's cluster: a client and a server pod, and one ingress
//! policy on the server that allows the client (by podSelector) after
//! `cidrs` ipBlocks that match nobody, on the ports the load tools use.
//! Every enforcer is given this same manifest: Palisade reads it, the
//! comparators' rules are translated from it ([`super::rules`]).

use std::fmt::Write as _;
use std::net::Ipv4Addr;

/// Namespace of the benchmark's pods.
pub const NAMESPACE: &str = "bench";
/// The client pod.
pub const CLIENT: &str = "client";
/// The server pod.
pub const SERVER: &str = "server";
/// A pod the policy does not allow (each bed checks its enforcer drops it).
pub const STRANGER: &str = "stranger";
/// The client's address (file mode takes the manifest's).
pub const CLIENT_IP: Ipv4Addr = Ipv4Addr::new(10, 244, 0, 10);
/// The server's address.
pub const SERVER_IP: Ipv4Addr = Ipv4Addr::new(10, 244, 0, 11);
/// The stranger's address.
pub const STRANGER_IP: Ipv4Addr = Ipv4Addr::new(10, 244, 0, 12);
/// iperf3's port.
pub const IPERF_PORT: u16 = 5201;
/// sockperf's port.
pub const SOCKPERF_PORT: u16 = 11111;
/// The test bed's TCP echo port on the server (connection rate).
pub const ECHO_PORT: u16 = 8080;

/// The client pod's reference.
pub fn client() -> testbed::PodRef {
    testbed::PodRef {
        namespace: NAMESPACE.into(),
        name: CLIENT.into(),
    }
}

/// The stranger pod's reference.
pub fn stranger() -> testbed::PodRef {
    testbed::PodRef {
        namespace: NAMESPACE.into(),
        name: STRANGER.into(),
    }
}

/// The server pod's reference.
pub fn server() -> testbed::PodRef {
    testbed::PodRef {
        namespace: NAMESPACE.into(),
        name: SERVER.into(),
    }
}

/// The Service in front of the server (kube mode: a ClusterIP that
/// kube-proxy translates), its three ports.
pub fn service() -> String {
    format!(
        "---
apiVersion: v1
kind: Service
metadata:
  name: {SERVER}
  namespace: {NAMESPACE}
spec:
  selector:
    app: {SERVER}
  ports:
  - {{name: iperf, protocol: TCP, port: {IPERF_PORT}, targetPort: {IPERF_PORT}}}
  - {{name: sockperf, protocol: TCP, port: {SOCKPERF_PORT}, targetPort: {SOCKPERF_PORT}}}
  - {{name: echo, protocol: TCP, port: {ECHO_PORT}, targetPort: {ECHO_PORT}}}
"
    )
}

/// The `i`th of the ipBlocks: /30s from 100.64.0.0 up, 2^20 of them fit
/// in 100.64.0.0/10 (shared address space: never a test address).
pub fn cidr(i: usize) -> String {
    let a = u32::from(Ipv4Addr::new(100, 64, 0, 0)) + 4 * (i as u32);
    format!("{}/30", Ipv4Addr::from(a))
}

/// Pods `bench/<name>` without an address yet (what the API server holds
/// before their CNI ADD), to append to a manifest.
pub fn pending_pods(names: &[String]) -> String {
    names.iter().map(|n| pod(n, None, None)).collect()
}

/// [`manifest`] with the `count` pods `Testbed::time_cni_adds` adds
/// through Palisade's chain (`cni-w0`, `cni-w1`, ...), pending: the agent
/// refuses an ADD for a pod it does not know.
pub fn with_cni_pods(cidrs: usize, count: usize) -> String {
    let names: Vec<String> = (0..count).map(|i| format!("cni-w{i}")).collect();
    manifest(cidrs) + &pending_pods(&names)
}

/// One Pod document; with an address, labelled `app: <name>` and
/// running at it; with a port, declaring it.
fn pod(name: &str, ip: Option<Ipv4Addr>, port: Option<u16>) -> String {
    let labels = ip.map_or(String::new(), |_| format!("\n  labels:\n    app: {name}"));
    let ports = port.map_or(String::new(), |p| {
        format!("\n    ports:\n    - containerPort: {p}\n      protocol: TCP")
    });
    let status = ip.map_or(String::new(), |ip| {
        format!("status:\n  podIP: {ip}\n  podIPs:\n  - ip: {ip}\n")
    });
    format!(
        "---
apiVersion: v1
kind: Pod
metadata:
  name: {name}
  namespace: {NAMESPACE}{labels}
spec:
  containers:
  - name: main
    image: bench{ports}
{status}"
    )
}

/// The manifest with `cidrs` ipBlocks before the client's podSelector.
pub fn manifest(cidrs: usize) -> String {
    let mut y = String::with_capacity(64 * cidrs + 2048);
    let _ = write!(
        y,
        "apiVersion: v1
kind: Namespace
metadata:
  name: {NAMESPACE}
  labels:
    kubernetes.io/metadata.name: {NAMESPACE}
"
    );
    for (name, ip, port) in [
        (CLIENT, CLIENT_IP, None),
        (SERVER, SERVER_IP, Some(ECHO_PORT)),
        (STRANGER, STRANGER_IP, None),
    ] {
        y += &pod(name, Some(ip), port);
    }
    let _ = write!(
        y,
        "---
apiVersion: networking.k8s.io/v1
kind: NetworkPolicy
metadata:
  name: server-ingress
  namespace: {NAMESPACE}
spec:
  podSelector:
    matchLabels:
      app: {SERVER}
  policyTypes: [Ingress]
  ingress:
  - from:
"
    );
    for i in 0..cidrs {
        let _ = writeln!(y, "    - ipBlock: {{cidr: {}}}", cidr(i));
    }
    let _ = write!(
        y,
        "    - podSelector:
        matchLabels:
          app: {CLIENT}
    ports:
    - {{protocol: TCP, port: {IPERF_PORT}}}
    - {{protocol: TCP, port: {SOCKPERF_PORT}}}
    - {{protocol: TCP, port: {ECHO_PORT}}}
"
    );
    y
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_manifest_loads_with_its_cidrs() {
        let mut loaded = policy_engine::manifest::Loaded::default();
        policy_engine::manifest::load_str(&manifest(3), "bench.yaml".as_ref(), &mut loaded)
            .unwrap();
        let snap = loaded.snapshot;
        assert_eq!(snap.pods.len(), 3);
        let policy = snap.policies.values().next().unwrap();
        let rules = policy.ingress.as_ref().unwrap();
        assert_eq!(rules[0].peers.len(), 4);
        assert_eq!(rules[0].ports.len(), 3);
        let mut with_pending = policy_engine::manifest::Loaded::default();
        let text = manifest(3) + &pending_pods(&["cni-w0".to_string()]);
        policy_engine::manifest::load_str(&text, "bench.yaml".as_ref(), &mut with_pending).unwrap();
        let pending = &with_pending.snapshot.pods[&"bench/cni-w0".parse().unwrap()];
        assert!(pending.ips.is_empty() && pending.labels.is_empty());
        assert_eq!(cidr(0), "100.64.0.0/30");
        assert_eq!(cidr((1 << 20) - 1), "100.127.255.252/30");
    }
}
