//! The cluster snapshot the compiler reads: namespaces, pods and
//! NetworkPolicies, built from the Kubernetes API objects with API-server
//! defaulting applied.
//!
//! Sources of cluster state (the agent's watchers, manifest files) feed a
//! [`Snapshot`] through its `upsert_*`/`remove_*` methods; nothing else
//! about them reaches the compiler.

pub mod addr;
pub mod cluster_policy;
pub mod policy;
pub mod selector;
pub mod service;
pub mod slices;
pub mod validate;

use std::collections::BTreeMap;
use std::net::IpAddr;
use std::str::FromStr;

use k8s_openapi::api::core::v1::{Namespace, Pod};
use k8s_openapi::api::networking::v1::NetworkPolicy;

pub use policy::{Direction, IpBlock, Peer, Policy, PolicyIssue, PortRef, PortSpec, Rule};
pub use selector::{Labels, Requirement, Selector};
pub use service::{Backend, ServiceInfo, ServicePort, ServiceRef, TargetPort};

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

    /// From a name in any case (`tcp`, `Udp`), for what users type; the
    /// API's own fields take only upper case ([`FromStr`]).
    pub fn from_any_case(s: &str) -> Result<Self, ModelError> {
        s.trim()
            .to_ascii_uppercase()
            .parse()
            .map_err(|_| ModelError::UnknownProtocol { input: s.into() })
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
    /// `spec.nodeName`: the node the pod is bound to (`None` while it is
    /// unscheduled, and for pods read from files without one).
    pub node: Option<String>,
    /// `status.phase`. Terminated pods never reach the snapshot (see
    /// [`PodInfo::from_pod`]); the compiler uses the phase only to settle
    /// an address several pods claim ([`PodInfo::address_claim`]).
    pub phase: PodPhase,
    /// `metadata.deletionTimestamp` is set: the pod is shutting down (it
    /// may still run through its grace period, and stays enforced), but
    /// its address may already have been handed to another pod, which then
    /// owns it in the ipcache (see [`PodInfo::address_claim`]).
    pub terminating: bool,
}

/// The phases of a pod the snapshot can hold (`Succeeded` and `Failed`
/// pods are dropped: they are no peer any more and their address may
/// already be another pod's).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum PodPhase {
    /// Running, or no phase given (manifest files describe running pods).
    #[default]
    Running,
    /// Accepted, not all containers started yet (often without an address).
    Pending,
    /// The node stopped reporting the pod's state.
    Unknown,
}

impl PodPhase {
    /// From `status.phase`; `None` for the terminal phases. An absent phase
    /// is [`PodPhase::Running`], a phase this version does not know is
    /// [`PodPhase::Unknown`].
    pub fn from_status(phase: Option<&str>) -> Option<Self> {
        match phase {
            None | Some("Running") => Some(PodPhase::Running),
            Some("Pending") => Some(PodPhase::Pending),
            Some("Succeeded" | "Failed") => None,
            Some(_) => Some(PodPhase::Unknown),
        }
    }
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
        let empty = Default::default();
        let status = pod.status.as_ref().unwrap_or(&empty);
        let Some(phase) = PodPhase::from_status(status.phase.as_deref()) else {
            return Ok(None);
        };
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
        let empty = Default::default();
        let spec = pod.spec.as_ref().unwrap_or(&empty);
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
            node: spec.node_name.clone().filter(|n| !n.is_empty()),
            phase,
            terminating: pod.metadata.deletion_timestamp.is_some(),
        };
        Ok(Some((r, info)))
    }

    /// How strong this pod's claim on its addresses is when several pods
    /// list the same one (an address reused while the old pod's object
    /// lingers): the higher claim owns it in the ipcache, and a tie goes to
    /// the pod last in name order. A running pod that is not terminating
    /// beats a pending or unknown one, which beats a terminating one; a
    /// terminating pod keeps its address only while no live pod claims it
    /// (pods in a terminal phase never reach the snapshot).
    pub fn address_claim(&self) -> u8 {
        match (self.terminating, self.phase) {
            (true, _) => 0,
            (false, PodPhase::Running) => 2,
            (false, PodPhase::Pending | PodPhase::Unknown) => 1,
        }
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
    /// The snapshot entry of a namespace object: its labels plus
    /// `kubernetes.io/metadata.name` (API servers before 1.21 do not add it).
    pub fn from_namespace(ns: &Namespace) -> Result<(String, NamespaceInfo), ModelError> {
        let name = ns.metadata.name.clone().ok_or(ModelError::MissingName {
            kind: "Namespace",
            field: "metadata.name",
        })?;
        let mut labels = ns.metadata.labels.clone().unwrap_or_default();
        labels.insert(NAMESPACE_NAME_LABEL.to_string(), name.clone());
        Ok((name, NamespaceInfo { labels }))
    }

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
    /// Services (what ClusterIPs translate to; never policy peers).
    pub services: BTreeMap<ServiceRef, ServiceInfo>,
    /// Each Service's Endpoints subsets, when known (see [`service`]; from
    /// its EndpointSlices when they are known, see [`slices`]).
    pub service_endpoints: BTreeMap<ServiceRef, Vec<service::EndpointSubset>>,
    /// Each Service's EndpointSlices by name, when the source reads slices.
    pub endpoint_slices: BTreeMap<ServiceRef, slices::Slices>,
    /// ClusterNetworkPolicies by name, parsed.
    pub cluster_policies: BTreeMap<String, cluster_policy::ClusterPolicy>,
    /// Nodes by name (labels and addresses, for ClusterNetworkPolicy
    /// `nodes` peers).
    pub nodes: BTreeMap<String, cluster_policy::NodeInfo>,
}

impl Snapshot {
    /// Counts the policies in audit mode as enforced (the tools'
    /// `--as-enforced` view).
    pub fn enforce_audited(&mut self) {
        for p in self.policies.values_mut() {
            p.audit = false;
        }
    }

    /// Inserts or replaces a ClusterNetworkPolicy (kept even when invalid:
    /// it fails closed); returns its name.
    pub fn upsert_cluster_policy(&mut self, cnp: &cluster_policy::ClusterNetworkPolicy) -> String {
        let policy = cluster_policy::ClusterPolicy::from_object(cnp);
        let name = policy.name().to_string();
        self.cluster_policies.insert(name.clone(), policy);
        name
    }

    /// Inserts or replaces a Node (labels and `status.addresses` that
    /// parse as IP addresses); returns its name.
    pub fn upsert_node(
        &mut self,
        node: &k8s_openapi::api::core::v1::Node,
    ) -> Result<String, ModelError> {
        let name = node.metadata.name.clone().ok_or(ModelError::MissingName {
            kind: "Node",
            field: "metadata.name",
        })?;
        let addrs = node
            .status
            .iter()
            .flat_map(|s| s.addresses.iter().flatten())
            .filter(|a| a.type_ == "InternalIP" || a.type_ == "ExternalIP")
            .filter_map(|a| a.address.parse().ok())
            .collect();
        let info = cluster_policy::NodeInfo {
            labels: node.metadata.labels.clone().unwrap_or_default(),
            addrs,
        };
        self.nodes.insert(name.clone(), info);
        Ok(name)
    }

    /// Inserts or replaces a namespace; returns its name.
    pub fn upsert_namespace(&mut self, ns: &Namespace) -> Result<String, ModelError> {
        let (name, info) = NamespaceInfo::from_namespace(ns)?;
        self.namespaces.insert(name.clone(), info);
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
        let (r, policy) = Policy::from_network_policy(np)?;
        self.policies.insert(r.clone(), policy);
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

    fn pod_json(extra: serde_json::Value) -> Pod {
        let mut doc = serde_json::json!({
            "metadata": {"name": "p", "namespace": "ns", "labels": {"app": "a"}},
            "spec": {"nodeName": "node-1", "containers": [{"name": "c"}]},
        });
        if let (Some(d), Some(e)) = (doc.as_object_mut(), extra.as_object()) {
            d.extend(e.clone());
        }
        serde_json::from_value(doc).unwrap()
    }

    #[test]
    fn pod_keeps_node_and_phase() {
        let pod = pod_json(serde_json::json!({"status": {"phase": "Pending"}}));
        let (r, info) = PodInfo::from_pod(&pod).unwrap().unwrap();
        assert_eq!(r, PodRef::new("ns", "p"));
        assert_eq!(info.node.as_deref(), Some("node-1"));
        assert_eq!(info.phase, PodPhase::Pending);
        // Pending without an address: known, with nothing to put in the
        // ipcache.
        assert!(info.ips.is_empty());
        let running = pod_json(serde_json::json!({
            "status": {"phase": "Running", "podIP": "10.0.0.1"}
        }));
        let (_, info) = PodInfo::from_pod(&running).unwrap().unwrap();
        assert_eq!(info.phase, PodPhase::Running);
        assert_eq!(info.ips, vec!["10.0.0.1".parse::<IpAddr>().unwrap()]);
        let odd = pod_json(serde_json::json!({"status": {"phase": "Rebooting"}}));
        assert_eq!(
            PodInfo::from_pod(&odd).unwrap().unwrap().1.phase,
            PodPhase::Unknown
        );
    }

    #[test]
    fn terminated_pods_leave_the_snapshot() {
        let mut s = Snapshot::default();
        s.upsert_pod(&pod_json(serde_json::json!({
            "status": {"phase": "Running", "podIP": "10.0.0.1"}
        })))
        .unwrap();
        assert_eq!(s.pods.len(), 1);
        for phase in ["Succeeded", "Failed"] {
            let done = pod_json(serde_json::json!({
                "status": {"phase": phase, "podIP": "10.0.0.1"}
            }));
            assert_eq!(PodInfo::from_pod(&done).unwrap(), None);
            let mut s = s.clone();
            s.upsert_pod(&done).unwrap();
            assert!(s.pods.is_empty(), "{phase} pod still in the snapshot");
        }
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
