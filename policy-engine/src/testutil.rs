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
        let endpoints = compile::all_endpoints(&snapshot);
        let compiled = compile::compile(&snapshot, &endpoints, &mut Allocator::new());
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
