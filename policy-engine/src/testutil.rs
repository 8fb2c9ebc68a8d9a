//! Test fixtures: cluster builders and a one-call "would A reach B?".
//! Compiled only for tests and with the `test-util` feature.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::collections::BTreeMap;
use std::net::IpAddr;

use k8s_openapi::api::core::v1::Namespace;
use k8s_openapi::api::networking::v1::NetworkPolicy;

use crate::compile::{self, Allocator, Compiled};
use crate::model::{ContainerPort, PodInfo, PodRef, Protocol, Snapshot};
use crate::tools::probe::{self, End};

pub mod cnp_conformance;
pub mod conformance;
pub mod reference;

/// Parses a NetworkPolicy written in YAML. Panics on bad YAML.
pub fn policy_yaml(text: &str) -> NetworkPolicy {
    serde_norway::from_str(text).expect("policy YAML")
}

/// Builds snapshots fluently.
#[derive(Clone, Debug, Default)]
pub struct ClusterBuilder {
    /// The snapshot being built.
    pub snapshot: Snapshot,
}

impl ClusterBuilder {
    /// An empty cluster.
    pub fn new() -> Self {
        Self::default()
    }

    /// Adds a namespace with labels (`kubernetes.io/metadata.name` added).
    pub fn ns(mut self, name: &str, labels: &[(&str, &str)]) -> Self {
        let mut ns = Namespace::default();
        ns.metadata.name = Some(name.into());
        ns.metadata.labels = Some(
            labels
                .iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect(),
        );
        self.snapshot.upsert_namespace(&ns).unwrap();
        self
    }

    /// Adds a pod with labels and IPs (text) and no ports.
    pub fn pod(self, pod: &str, labels: &[(&str, &str)], ips: &[&str]) -> Self {
        self.pod_with_ports(pod, labels, ips, &[])
    }

    /// Adds a pod with labels, IPs and container ports
    /// `(name or "", port, "TCP"|"UDP"|"SCTP")`.
    pub fn pod_with_ports(
        mut self,
        pod: &str,
        labels: &[(&str, &str)],
        ips: &[&str],
        ports: &[(&str, u16, &str)],
    ) -> Self {
        let r: PodRef = pod.parse().unwrap();
        let info = PodInfo {
            labels: labels
                .iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect(),
            ips: ips.iter().map(|s| s.parse().unwrap()).collect(),
            ports: ports
                .iter()
                .map(|(n, p, proto)| ContainerPort {
                    name: (!n.is_empty()).then(|| n.to_string()),
                    port: *p,
                    protocol: proto.parse().unwrap(),
                })
                .collect(),
            host_network: false,
            ..PodInfo::default()
        };
        self.snapshot.insert_pod(r, info);
        self
    }

    /// Adds a hostNetwork pod with the node's address.
    pub fn host_pod(mut self, pod: &str, ip: &str) -> Self {
        let info = PodInfo {
            ips: vec![ip.parse().unwrap()],
            host_network: true,
            ..PodInfo::default()
        };
        self.snapshot.insert_pod(pod.parse().unwrap(), info);
        self
    }

    /// Adds a ClusterNetworkPolicy written in YAML (`metadata`, `spec`).
    pub fn cnp(mut self, yaml: &str) -> Self {
        let obj: crate::model::cluster_policy::ClusterNetworkPolicy =
            serde_norway::from_str(yaml).expect("ClusterNetworkPolicy YAML");
        self.snapshot.upsert_cluster_policy(&obj);
        self
    }

    /// Adds a Node with labels and addresses.
    pub fn node(mut self, name: &str, labels: &[(&str, &str)], addrs: &[&str]) -> Self {
        self.snapshot.nodes.insert(
            name.into(),
            crate::model::cluster_policy::NodeInfo {
                labels: labels
                    .iter()
                    .map(|(k, v)| (k.to_string(), v.to_string()))
                    .collect(),
                addrs: addrs.iter().map(|a| a.parse().unwrap()).collect(),
            },
        );
        self
    }

    /// Adds the node's own address.
    pub fn host_addr(mut self, ip: &str) -> Self {
        self.snapshot.host_addrs.push(ip.parse().unwrap());
        self
    }

    /// Adds a policy written in YAML.
    pub fn policy(mut self, yaml: &str) -> Self {
        self.snapshot.upsert_policy(&policy_yaml(yaml)).unwrap();
        self
    }

    /// The finished snapshot.
    pub fn build(self) -> Snapshot {
        self.snapshot
    }

    /// Compiled with every pod an endpoint.
    pub fn sim(self) -> Sim {
        Sim::new(self.snapshot)
    }
}

/// A snapshot compiled with every pod a local endpoint.
#[derive(Clone, Debug)]
pub struct Sim {
    /// The snapshot.
    pub snapshot: Snapshot,
    /// Endpoint ids.
    pub endpoints: BTreeMap<PodRef, u32>,
    /// The compile.
    pub compiled: Compiled,
}

impl Sim {
    /// Compiles `snapshot` with a fresh allocator.
    pub fn new(snapshot: Snapshot) -> Self {
        Self::with_limits(snapshot, &compile::Limits::default())
    }

    /// Compiles `snapshot` with a fresh allocator and these budgets.
    pub fn with_limits(snapshot: Snapshot, limits: &compile::Limits) -> Self {
        let endpoints = compile::all_endpoints(&snapshot);
        let compiled =
            compile::compile_with_limits(&snapshot, &endpoints, limits, &mut Allocator::new());
        Sim {
            snapshot,
            endpoints,
            compiled,
        }
    }

    /// Whether `from` (`ns/pod` or IP) reaches `to` on `port`/`proto`
    /// ("TCP", "UDP", "SCTP"). Panics on unknown ends.
    pub fn allowed(&self, from: &str, to: &str, port: u16, proto: &str) -> bool {
        let p: Protocol = proto.parse().unwrap();
        probe::connection(
            &self.snapshot,
            &self.compiled.state,
            &self.endpoints,
            &from.parse::<End>().unwrap(),
            &to.parse::<End>().unwrap(),
            p,
            port,
        )
        .unwrap()
        .allowed()
    }

    /// [`Sim::allowed`] on TCP.
    pub fn tcp(&self, from: &str, to: &str, port: u16) -> bool {
        self.allowed(from, to, port, "TCP")
    }
}

/// Parses an IP (panics on bad input).
pub fn ip(s: &str) -> IpAddr {
    s.parse().unwrap()
}

/// Namespaces of the upstream conformance model.
pub const XYZ_NAMESPACES: [&str; 3] = ["x", "y", "z"];
/// Pods of each namespace in the upstream conformance model.
pub const XYZ_PODS: [&str; 3] = ["a", "b", "c"];

/// Address of model pod `ns/pod`, laid out as on a two-node Flannel
/// cluster (10.244.0.0/24 on node 0, 10.244.1.0/24 on node 1): the pods,
/// numbered k = 0..8 in x/a, x/b, ..., z/c order, alternate between the
/// nodes (k even → node 0) and get host number 10 + k, so every namespace
/// has pods on both nodes (x/a 10.244.0.10, x/b 10.244.1.11, ...,
/// z/c 10.244.0.18). A one-node test bed serves them all from 10.244.0.0/23.
pub fn xyz_ip(ns: &str, pod: &str) -> String {
    let n = XYZ_NAMESPACES.iter().position(|x| *x == ns).unwrap_or(0);
    let p = XYZ_PODS.iter().position(|x| *x == pod).unwrap_or(0);
    let k = n * XYZ_PODS.len() + p;
    format!("10.244.{}.{}", k % 2, 10 + k)
}

/// The upstream conformance model: namespaces x, y, z (label `ns=<name>`)
/// each with pods a, b, c (label `pod=<name>`) serving ports 80 and 81 on
/// TCP, UDP and SCTP, named `serve-<port>-<proto>`.
pub fn xyz_model() -> ClusterBuilder {
    let mut b = ClusterBuilder::new();
    for ns in XYZ_NAMESPACES {
        b = b.ns(ns, &[("ns", ns)]);
        for pod in XYZ_PODS {
            let mut ports = Vec::new();
            for port in [80u16, 81] {
                for proto in ["TCP", "UDP", "SCTP"] {
                    ports.push(ContainerPort {
                        name: Some(format!("serve-{port}-{}", proto.to_lowercase())),
                        port,
                        protocol: proto.parse().unwrap(),
                    });
                }
            }
            let info = PodInfo {
                labels: [("pod".to_string(), pod.to_string())].into(),
                ips: vec![xyz_ip(ns, pod).parse().unwrap()],
                ports,
                host_network: false,
                ..PodInfo::default()
            };
            b.snapshot.insert_pod(PodRef::new(ns, pod), info);
        }
    }
    b
}

/// A synthetic cluster for benchmarks: `namespaces` namespaces (label
/// `team=t<i % 10>`), `pods` pods spread evenly (labels `app=app<i % 5>`,
/// `tier=<i % 3>`, named port `http` 8080/TCP, IPs 10.x.y.z), and
/// `policies` policies cycling through four shapes: default deny, same-
/// namespace pod selector on a port, namespace selector on a named port,
/// and egress to an ipBlock with except on a port range.
pub fn synthetic_cluster(namespaces: usize, pods: usize, policies: usize) -> Snapshot {
    let mut b = ClusterBuilder::new();
    for n in 0..namespaces {
        let team = format!("t{}", n % 10);
        b = b.ns(&format!("ns{n}"), &[("team", team.as_str())]);
    }
    for i in 0..pods {
        let ns = format!("ns{}", i % namespaces.max(1));
        let info = PodInfo {
            labels: [
                ("app".to_string(), format!("app{}", i % 5)),
                ("tier".to_string(), format!("{}", i % 3)),
            ]
            .into(),
            ips: vec![IpAddr::from([10, (i >> 16) as u8, (i >> 8) as u8, i as u8])],
            ports: vec![ContainerPort {
                name: Some("http".into()),
                port: 8080,
                protocol: Protocol::Tcp,
            }],
            host_network: false,
            ..PodInfo::default()
        };
        b.snapshot
            .insert_pod(PodRef::new(ns, format!("pod{i}")), info);
    }
    for text in synthetic_policies(namespaces, policies) {
        b = b.policy(&text);
    }
    b.build()
}

/// The policies of [`synthetic_cluster`], as YAML (metadata and spec).
fn synthetic_policies(namespaces: usize, policies: usize) -> Vec<String> {
    let mut out = Vec::with_capacity(policies);
    for p in 0..policies {
        let ns = format!("ns{}", p % namespaces.max(1));
        let name = format!("pol{p}");
        let spec = match (p / namespaces.max(1)) % 4 {
            0 => "  podSelector: {}\n  policyTypes: [Ingress]\n".to_string(),
            1 => format!(
                "  podSelector: {{matchLabels: {{app: app{}}}}}\n  ingress: [{{from: [{{podSelector: {{matchLabels: {{app: app{}}}}}}}], ports: [{{port: 80}}, {{port: 443}}]}}]\n",
                p % 5,
                (p + 1) % 5
            ),
            2 => format!(
                "  podSelector: {{matchExpressions: [{{key: tier, operator: In, values: ['{}']}}]}}\n  ingress: [{{from: [{{namespaceSelector: {{matchLabels: {{team: t{}}}}}, podSelector: {{matchLabels: {{app: app{}}}}}}}], ports: [{{port: http}}]}}]\n",
                p % 3,
                p % 10,
                p % 5
            ),
            _ => format!(
                "  podSelector: {{matchLabels: {{app: app{}}}}}\n  policyTypes: [Egress]\n  egress: [{{to: [{{ipBlock: {{cidr: 172.{}.0.0/16, except: [172.{}.1.0/24]}}}}], ports: [{{port: 8000, endPort: 8100}}]}}, {{ports: [{{port: 53, protocol: UDP}}]}}]\n",
                p % 5,
                p % 32,
                p % 32
            ),
        };
        out.push(format!(
            "metadata: {{name: {name}, namespace: {ns}}}\nspec:\n{spec}"
        ));
    }
    out
}

/// The cluster `lint` is measured on: [`synthetic_cluster`] with
/// `pods / 20` namespaces, plus cluster DNS pods in `kube-system` and, in
/// every tenth namespace, a copy of that namespace's first policy (so the
/// redundancy and DNS checks have work to do).
pub fn lint_cluster(pods: usize, policies: usize) -> Snapshot {
    let namespaces = (pods / 20).max(1);
    let mut s = synthetic_cluster(namespaces, pods, policies);
    let mut ns = Namespace::default();
    ns.metadata.name = Some("kube-system".into());
    s.upsert_namespace(&ns).ok();
    for i in 0..2u8 {
        let info = PodInfo {
            labels: [("k8s-app".to_string(), "kube-dns".to_string())].into(),
            ips: vec![IpAddr::from([10, 255, 255, i + 1])],
            ..PodInfo::default()
        };
        s.insert_pod(PodRef::new("kube-system", format!("coredns-{i}")), info);
    }
    let copies: Vec<(PodRef, crate::model::Policy)> = s
        .policies
        .iter()
        .filter(|(r, _)| {
            r.name
                .trim_start_matches("pol")
                .parse::<usize>()
                .is_ok_and(|n| n % 10 == 0)
        })
        .map(|(r, p)| {
            (
                PodRef::new(r.namespace.clone(), format!("{}-copy", r.name)),
                p.clone(),
            )
        })
        .collect();
    for (r, p) in copies {
        s.policies.insert(r, p);
    }
    s
}

/// [`lint_cluster`] as the manifests a user would lint: one YAML stream of
/// Namespaces, Pods (with their status) and NetworkPolicies that loads to
/// the same snapshot, so the bench can time `lint` from a file.
pub fn lint_manifests(pods: usize, policies: usize) -> String {
    let s = lint_cluster(pods, policies);
    let mut out = String::new();
    for (name, ns) in &s.namespaces {
        let doc = serde_json::json!({
            "apiVersion": "v1",
            "kind": "Namespace",
            "metadata": {"name": name, "labels": ns.labels},
        });
        out.push_str(&format!("---\n{doc}\n"));
    }
    for (r, p) in &s.pods {
        let ports: Vec<serde_json::Value> = p
            .ports
            .iter()
            .map(|c| {
                serde_json::json!({
                    "containerPort": c.port,
                    "name": c.name,
                    "protocol": c.protocol.to_string(),
                })
            })
            .collect();
        let ips: Vec<serde_json::Value> = p
            .ips
            .iter()
            .map(|ip| serde_json::json!({"ip": ip.to_string()}))
            .collect();
        let doc = serde_json::json!({
            "apiVersion": "v1",
            "kind": "Pod",
            "metadata": {"name": r.name, "namespace": r.namespace, "labels": p.labels},
            "spec": {"containers": [{"name": "c", "image": "i", "ports": ports}]},
            "status": {"phase": "Running", "podIP": p.ips.first().map(ToString::to_string), "podIPs": ips},
        });
        out.push_str(&format!("---\n{doc}\n"));
    }
    let namespaces = (pods / 20).max(1);
    for (i, text) in synthetic_policies(namespaces, policies).iter().enumerate() {
        let head = "---\napiVersion: networking.k8s.io/v1\nkind: NetworkPolicy\n";
        out.push_str(head);
        out.push_str(text);
        if i % 10 == 0 {
            out.push_str(head);
            out.push_str(&text.replacen(
                &format!("name: pol{i},"),
                &format!("name: pol{i}-copy,"),
                1,
            ));
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lint_manifests_load_to_the_lint_cluster() {
        let mut loaded = crate::manifest::Loaded::default();
        crate::manifest::load_str(
            &lint_manifests(400, 40),
            std::path::Path::new("lint.yaml"),
            &mut loaded,
        )
        .unwrap();
        let loaded = loaded.checked(false).unwrap();
        let want = lint_cluster(400, 40);
        assert_eq!(loaded.snapshot.namespaces, want.namespaces);
        assert_eq!(loaded.snapshot.pods, want.pods);
        // The rules as compiled (the objects differ in what the API server
        // would default, e.g. a rule's `protocol`).
        let rules = |s: &Snapshot| -> Vec<_> {
            s.policies
                .iter()
                .map(|(r, p)| {
                    (
                        r.clone(),
                        p.pod_selector.clone(),
                        p.ingress.clone(),
                        p.egress.clone(),
                    )
                })
                .collect()
        };
        assert_eq!(rules(&loaded.snapshot), rules(&want));
    }
}
