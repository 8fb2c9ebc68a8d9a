//! The cluster snapshot the compiler reads: namespaces, pods and
//! NetworkPolicies, built from the Kubernetes API objects with API-server
//! defaulting applied.
//!
//! Sources of cluster state (the agent's watchers, manifest files) feed a
//! [`Snapshot`] through its `upsert_*`/`remove_*` methods; nothing else
//! about them reaches the compiler.

pub mod addr;
pub mod policy;
pub mod selector;

use std::collections::BTreeMap;
use std::net::IpAddr;
use std::str::FromStr;

use k8s_openapi::api::core::v1::{Namespace, Pod};
use k8s_openapi::api::networking::v1::NetworkPolicy;

pub use policy::{Direction, IpBlock, Peer, Policy, PolicyIssue, PortRef, PortSpec, Rule};
pub use selector::{Labels, Requirement, Selector};

/// The label the API server puts on every namespace (rule 11).
pub const NAMESPACE_NAME_LABEL: &str = "kubernetes.io/metadata.name";

/// Problems turning an API object into snapshot entries.
#[derive(Debug, thiserror::Error, Clone, PartialEq, Eq)]
pub enum ModelError {
    /// The object has no `metadata.name` (or no namespace for a namespaced
    /// kind).
    #[error("{kind} without {field}")]
    MissingName {
        /// Object kind.
        kind: &'static str,
        /// `metadata.name` or `metadata.namespace`.
        field: &'static str,
    },
    /// A field holds a value that cannot be used.
    #[error("{kind} {object}: {field}: {message}")]
    InvalidField {
        /// Object kind.
        kind: &'static str,
        /// `namespace/name`.
        object: String,
        /// Path of the field.
        field: String,
        /// What is wrong.
        message: String,
    },
    /// A `namespace/name` reference could not be parsed.
    #[error("invalid object reference {input:?}: expected namespace/name")]
    BadRef {
        /// The text given.
        input: String,
    },
    /// A protocol name other than TCP, UDP or SCTP.
    #[error("unknown protocol {input:?} (expected TCP, UDP or SCTP)")]
    UnknownProtocol {
        /// The text given.
        input: String,
    },
}

/// A namespaced object's name: `namespace/name`. Used for pods and, as
/// [`PolicyRef`], for policies.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct PodRef {
    /// Namespace.
    pub namespace: String,
    /// Name.
    pub name: String,
}

/// A NetworkPolicy's `namespace/name`.
pub type PolicyRef = PodRef;

impl PodRef {
    /// Builds a reference.
    pub fn new(namespace: impl Into<String>, name: impl Into<String>) -> Self {
        Self {
            namespace: namespace.into(),
            name: name.into(),
        }
    }
}

impl std::fmt::Display for PodRef {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}/{}", self.namespace, self.name)
    }
}

impl FromStr for PodRef {
    type Err = ModelError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s.split_once('/') {
            Some((ns, name)) if !ns.is_empty() && !name.is_empty() && !name.contains('/') => {
                Ok(PodRef::new(ns, name))
            }
            _ => Err(ModelError::BadRef { input: s.into() }),
        }
    }
}

/// An L4 protocol NetworkPolicy can name.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Protocol {
    /// TCP (the default).
    Tcp,
    /// UDP.
    Udp,
    /// SCTP.
    Sctp,
}

impl Protocol {
    /// All protocols.
    pub const ALL: [Protocol; 3] = [Protocol::Tcp, Protocol::Udp, Protocol::Sctp];

    /// IP protocol number.
    pub fn number(self) -> u8 {
        match self {
            Protocol::Tcp => policy_common::proto::TCP,
            Protocol::Udp => policy_common::proto::UDP,
            Protocol::Sctp => policy_common::proto::SCTP,
        }
    }

    /// From an IP protocol number.
    pub fn from_number(n: u8) -> Option<Self> {
        Protocol::ALL.into_iter().find(|p| p.number() == n)
    }
}

impl std::fmt::Display for Protocol {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Protocol::Tcp => "TCP",
            Protocol::Udp => "UDP",
            Protocol::Sctp => "SCTP",
        })
    }
}

impl FromStr for Protocol {
    type Err = ModelError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "TCP" => Ok(Protocol::Tcp),
            "UDP" => Ok(Protocol::Udp),
            "SCTP" => Ok(Protocol::Sctp),
            _ => Err(ModelError::UnknownProtocol { input: s.into() }),
        }
    }
}

/// One declared container port.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct ContainerPort {
    /// Port name (what named ports in policies refer to).
    pub name: Option<String>,
    /// Port number.
    pub port: u16,
    /// Protocol (defaulted to TCP).
    pub protocol: Protocol,
}

/// What the engine knows about a pod.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct PodInfo {
    /// Pod labels.
    pub labels: BTreeMap<String, String>,
    /// Pod IPs (IPv4 and/or IPv6), normalised.
    pub ips: Vec<IpAddr>,
    /// Declared container ports of all containers.
    pub ports: Vec<ContainerPort>,
    /// `spec.hostNetwork`: never selected, never enforced (rule 12).
    pub host_network: bool,
}

impl PodInfo {
    /// Builds the snapshot entry of a pod object. Terminated pods
    /// (`Succeeded`/`Failed`) give `Ok(None)`: they hold no IP any more.
    pub fn from_pod(pod: &Pod) -> Result<Option<(PodRef, PodInfo)>, ModelError> {
        let name = pod.metadata.name.clone().ok_or(ModelError::MissingName {
            kind: "Pod",
            field: "metadata.name",
        })?;
        let namespace = pod
            .metadata
            .namespace
            .clone()
            .unwrap_or_else(|| "default".into());
        let r = PodRef::new(namespace, name);
        let invalid = |field: String, message: String| ModelError::InvalidField {
            kind: "Pod",
            object: r.to_string(),
            field,
            message,
        };
        let status = pod.status.clone().unwrap_or_default();
        if matches!(status.phase.as_deref(), Some("Succeeded" | "Failed")) {
            return Ok(None);
        }
        let mut ips = Vec::new();
        let listed: Vec<(String, String)> = match &status.pod_ips {
            Some(list) if !list.is_empty() => list
                .iter()
                .enumerate()
                .map(|(i, p)| (format!("status.podIPs[{i}].ip"), p.ip.clone()))
                .collect(),
            _ => status
                .pod_ip
                .iter()
                .map(|ip| ("status.podIP".to_string(), ip.clone()))
                .collect(),
        };
        for (field, text) in listed {
            let ip = text
                .trim()
                .parse::<IpAddr>()
                .map_err(|e| invalid(field, format!("invalid IP {text:?}: {e}")))?;
            let ip = addr::normalize_ip(ip);
            if !ips.contains(&ip) {
                ips.push(ip);
            }
        }
        let spec = pod.spec.clone().unwrap_or_default();
        let mut ports = Vec::new();
        for (ci, c) in spec.containers.iter().enumerate() {
            for (pi, p) in c.ports.iter().flatten().enumerate() {
                let field = format!("spec.containers[{ci}].ports[{pi}]");
                let port = u16::try_from(p.container_port)
                    .ok()
                    .filter(|n| *n != 0)
                    .ok_or_else(|| {
                        invalid(
                            format!("{field}.containerPort"),
                            format!("port {} is outside 1-65535", p.container_port),
                        )
                    })?;
                let protocol = match p.protocol.as_deref() {
                    None => Protocol::Tcp,
                    Some(s) => s.parse().map_err(|e: ModelError| {
                        invalid(format!("{field}.protocol"), e.to_string())
                    })?,
                };
                ports.push(ContainerPort {
                    name: p.name.clone().filter(|n| !n.is_empty()),
                    port,
                    protocol,
                });
            }
        }
        let info = PodInfo {
            labels: pod.metadata.labels.clone().unwrap_or_default(),
            ips,
            ports,
            host_network: spec.host_network.unwrap_or(false),
        };
        Ok(Some((r, info)))
    }

    /// Ports declared under `name` for `protocol` (named-port resolution).
    pub fn named_port(&self, name: &str, protocol: Protocol) -> impl Iterator<Item = u16> + '_ {
        let name = name.to_string();
        self.ports
            .iter()
            .filter(move |p| p.protocol == protocol && p.name.as_deref() == Some(name.as_str()))
            .map(|p| p.port)
    }
}

/// What the engine knows about a namespace.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct NamespaceInfo {
    /// Namespace labels, always including `kubernetes.io/metadata.name`.
    pub labels: BTreeMap<String, String>,
}

impl NamespaceInfo {
    /// The labels a namespace the snapshot has not seen is assumed to carry.
    pub fn implicit(name: &str) -> Self {
        let mut labels = BTreeMap::new();
        labels.insert(NAMESPACE_NAME_LABEL.to_string(), name.to_string());
        NamespaceInfo { labels }
    }
}

/// Everything the compiler reads.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Snapshot {
    /// Namespaces by name.
    pub namespaces: BTreeMap<String, NamespaceInfo>,
    /// Pods.
    pub pods: BTreeMap<PodRef, PodInfo>,
    /// NetworkPolicies, parsed.
    pub policies: BTreeMap<PolicyRef, Policy>,
    /// Addresses of the node itself (identity HOST: kubelet probes).
    pub host_addrs: Vec<IpAddr>,
}

impl Snapshot {
    /// Inserts or replaces a namespace; returns its name.
    pub fn upsert_namespace(&mut self, ns: &Namespace) -> Result<String, ModelError> {
        let name = ns.metadata.name.clone().ok_or(ModelError::MissingName {
            kind: "Namespace",
            field: "metadata.name",
        })?;
        let mut labels = ns.metadata.labels.clone().unwrap_or_default();
        labels.insert(NAMESPACE_NAME_LABEL.to_string(), name.clone());
        self.namespaces
            .insert(name.clone(), NamespaceInfo { labels });
        Ok(name)
    }

    /// Removes a namespace (its pods and policies stay until removed).
    pub fn remove_namespace(&mut self, name: &str) -> bool {
        self.namespaces.remove(name).is_some()
    }

    /// Labels of namespace `name` (implicit ones if unknown).
    pub fn namespace_labels(&self, name: &str) -> std::borrow::Cow<'_, Labels> {
        match self.namespaces.get(name) {
            Some(ns) => std::borrow::Cow::Borrowed(&ns.labels),
            None => std::borrow::Cow::Owned(NamespaceInfo::implicit(name).labels),
        }
    }

    /// Inserts or replaces a pod; a terminated pod is removed. Returns the
    /// pod's reference.
    pub fn upsert_pod(&mut self, pod: &Pod) -> Result<PodRef, ModelError> {
        match PodInfo::from_pod(pod)? {
            Some((r, info)) => {
                self.pods.insert(r.clone(), info);
                Ok(r)
            }
            None => {
                let r = PodRef::new(
                    pod.metadata
                        .namespace
                        .clone()
                        .unwrap_or_else(|| "default".into()),
                    pod.metadata.name.clone().unwrap_or_default(),
                );
                self.pods.remove(&r);
                Ok(r)
            }
        }
    }

    /// Inserts or replaces a pod entry directly.
    pub fn insert_pod(&mut self, pod: PodRef, info: PodInfo) {
        self.pods.insert(pod, info);
    }

    /// Removes a pod.
    pub fn remove_pod(&mut self, pod: &PodRef) -> bool {
        self.pods.remove(pod).is_some()
    }

    /// Overrides a pod's IPs (the agent uses what CNI reported). Unknown
    /// pods are ignored.
    pub fn set_pod_ips(&mut self, pod: &PodRef, ips: Vec<IpAddr>) {
        if let Some(info) = self.pods.get_mut(pod) {
            info.ips = ips.into_iter().map(addr::normalize_ip).collect();
        }
    }

    /// Inserts or replaces a NetworkPolicy (invalid ones are kept, with
    /// their issues, and fail closed). Returns its reference.
    pub fn upsert_policy(&mut self, np: &NetworkPolicy) -> Result<PolicyRef, ModelError> {
        let name = np.metadata.name.clone().ok_or(ModelError::MissingName {
            kind: "NetworkPolicy",
            field: "metadata.name",
        })?;
        let namespace = np
            .metadata
            .namespace
            .clone()
            .unwrap_or_else(|| "default".into());
        let r = PolicyRef::new(namespace, name);
        let mut np = np.clone();
        np.metadata.namespace = Some(r.namespace.clone());
        self.policies.insert(r.clone(), Policy::from_object(&np));
        Ok(r)
    }

    /// Removes a NetworkPolicy.
    pub fn remove_policy(&mut self, policy: &PolicyRef) -> bool {
        self.policies.remove(policy).is_some()
    }

    /// The pod owning `ip`, if any (hostNetwork pods excluded).
    pub fn pod_by_ip(&self, ip: IpAddr) -> Option<&PodRef> {
        let ip = addr::normalize_ip(ip);
        self.pods
            .iter()
            .find(|(_, p)| !p.host_network && p.ips.contains(&ip))
            .map(|(r, _)| r)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pod_ref_round_trips() {
        let r: PodRef = "ns/pod".parse().unwrap();
        assert_eq!(r, PodRef::new("ns", "pod"));
        assert_eq!(r.to_string(), "ns/pod");
        assert!("nopod".parse::<PodRef>().is_err());
        assert!("a/b/c".parse::<PodRef>().is_err());
    }

    #[test]
    fn protocol_names() {
        for p in Protocol::ALL {
            assert_eq!(p.to_string().parse::<Protocol>().unwrap(), p);
            assert_eq!(Protocol::from_number(p.number()), Some(p));
        }
        assert!("tcp".parse::<Protocol>().is_err());
    }

    #[test]
    fn namespace_gets_name_label() {
        let mut s = Snapshot::default();
        let mut ns = Namespace::default();
        ns.metadata.name = Some("x".into());
        s.upsert_namespace(&ns).unwrap();
        assert_eq!(s.namespaces["x"].labels[NAMESPACE_NAME_LABEL], "x");
    }
}
