//! A cluster manifest brought to life through the control plane, for the
//! test bed's kube mode: Palisade's install manifests applied with kubectl,
//! the agent's ServiceAccount token, the manifest's Namespaces,
//! NetworkPolicies and Services created through the API, a Node object and
//! kube-proxy per node, and each Pod created bound to its node before the
//! runtime wires it and reported running after.

use std::collections::BTreeMap;
use std::net::IpAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use k8s_openapi::api::core::v1::Pod;

use super::objects::ClusterObjects;
use super::{kubelet, sync, ControlPlane, ControlPlaneOptions, NodeLink};
use crate::agent::AgentSource;
use crate::error::TestbedError;
use crate::probe::PodRef;

/// The agent's ServiceAccount, as Palisade's install manifests declare it.
pub const AGENT_SERVICE_ACCOUNT: (&str, &str) = ("palisade-system", "palisade-agent");

/// How the kube mode runs.
#[derive(Clone, Debug, Default)]
pub struct KubeOptions {
    /// Palisade's install manifests (the repository's `manifests/` folder
    /// or its files), applied with kubectl: at least the Namespace,
    /// ServiceAccount, ClusterRole and ClusterRoleBinding of the agent.
    pub install: Vec<PathBuf>,
    /// The control plane to start.
    pub control_plane: ControlPlaneOptions,
    /// Leave the manifests' NetworkPolicies out at start; apply them later
    /// with [`KubeCluster::apply_policies_with_kubectl`] (the demo's
    /// "before" and "after").
    pub policies_later: bool,
    /// Ask IPAM for each pod's manifest address (`status.podIP`/`podIPs`),
    /// as a runtime with static-IP support does, instead of letting it
    /// pick one (what a real node does): for cases whose ipBlocks name the
    /// manifests' pod addresses.
    pub manifest_addresses: bool,
    /// Palisade installed on a running cluster: the pods are wired by the
    /// plain network (no `palisade-cni` in the chain) and reported running,
    /// and only then does the agent start, to find them on the node.
    pub agent_after_pods: bool,
    /// One ClusterIP Service per pod (`s-<namespace>-<pod>`, as upstream's
    /// e2e names them, selecting the pod by its labels, with each port the
    /// pod serves on TCP and UDP), and every probe to a pod sent through
    /// its Service's ClusterIP instead: kube-proxy translates, Palisade
    /// judges on the backend.
    pub via_services: bool,
}

/// The control plane with one bed's cluster in it.
#[derive(Debug)]
pub struct KubeCluster {
    cp: ControlPlane,
    objects: ClusterObjects,
    node: NodeLink,
    /// Nodes joined after the first ([`Self::join_node`]).
    others: std::sync::Mutex<Vec<NodeLink>>,
    agent_kubeconfig: PathBuf,
}

/// A Pod object's `namespace/name` (`default` when it names none).
pub(crate) fn pod_ref(pod: &Pod) -> PodRef {
    PodRef {
        namespace: pod
            .metadata
            .namespace
            .clone()
            .unwrap_or_else(|| "default".into()),
        name: pod.metadata.name.clone().unwrap_or_default(),
    }
}

impl KubeCluster {
    /// Starts the control plane, joins `node_netns` to it as node
    /// `node_name` (Node object with `pod_cidr`, kube-proxy), installs
    /// Palisade's RBAC, and creates the Namespaces, NetworkPolicies and
    /// Services of `manifests` (Pods come later, one by one, from
    /// [`Self::create_pod`]).
    pub fn start(
        opts: &KubeOptions,
        node_netns: &str,
        node_name: &str,
        pod_cidr: &str,
        manifests: &[PathBuf],
    ) -> Result<KubeCluster, TestbedError> {
        let objects = ClusterObjects::load(manifests)?;
        let cp = ControlPlane::start(opts.control_plane.clone())?;
        let node = cp.attach_node(node_netns, node_name)?;
        kubelet::register_node(&cp, &node, pod_cidr)?;
        cp.apply(&opts.install)?;
        let (ns, sa) = AGENT_SERVICE_ACCOUNT;
        let agent_kubeconfig = cp.service_account_kubeconfig(ns, sa)?;

        objects.create(&cp, !opts.policies_later)?;
        cp.start_kube_proxy(&node)?;
        Ok(KubeCluster {
            cp,
            objects,
            node,
            others: std::sync::Mutex::new(Vec::new()),
            agent_kubeconfig,
        })
    }

    /// Joins one more node, `node_netns` as node `node_name` with pod
    /// network `pod_cidr`: underlay link, Node object, kube-proxy.
    pub fn join_node(
        &self,
        node_netns: &str,
        node_name: &str,
        pod_cidr: &str,
    ) -> Result<NodeLink, TestbedError> {
        let node = self.cp.attach_node(node_netns, node_name)?;
        kubelet::register_node(&self.cp, &node, pod_cidr)?;
        self.cp.start_kube_proxy(&node)?;
        self.others
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .push(node.clone());
        Ok(node)
    }

    /// Node `name`'s place on the underlay.
    pub fn node_named(&self, name: &str) -> Option<NodeLink> {
        if self.node.name == name {
            return Some(self.node.clone());
        }
        self.others
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .iter()
            .find(|n| n.name == name)
            .cloned()
    }

    /// How node `name`'s agent reads the cluster: `--kube` as the Palisade
    /// ServiceAccount, told its node.
    pub fn agent_source_for(&self, name: &str) -> AgentSource {
        AgentSource::Kube {
            kubeconfig: self.agent_kubeconfig.clone(),
            node_name: name.to_string(),
        }
    }

    /// How the node's agent reads the cluster: `--kube` as the Palisade
    /// ServiceAccount.
    pub fn agent_source(&self) -> AgentSource {
        AgentSource::Kube {
            kubeconfig: self.agent_kubeconfig.clone(),
            node_name: self.node.name.clone(),
        }
    }

    /// The agent's kubeconfig (its ServiceAccount's token).
    pub fn agent_kubeconfig(&self) -> &Path {
        &self.agent_kubeconfig
    }

    /// The control plane.
    pub fn control_plane(&self) -> &ControlPlane {
        &self.cp
    }

    /// The node's place on the underlay.
    pub fn node(&self) -> &NodeLink {
        &self.node
    }

    /// Each Service's ClusterIPs, as the API server assigned them.
    pub fn service_ips(&self) -> Result<BTreeMap<PodRef, Vec<IpAddr>>, TestbedError> {
        kubelet::service_ips(&self.cp)
    }

    /// Creates `pod`'s own Service ([`KubeOptions::via_services`]):
    /// `s-<namespace>-<pod>`, selecting the pod by its labels (which must
    /// select no other pod of its namespace), with `ports` on TCP and UDP.
    pub fn create_pod_service(
        &self,
        pod: &PodRef,
        ports: &std::collections::BTreeSet<u16>,
    ) -> Result<PodRef, TestbedError> {
        let labels = |p: &Pod| p.metadata.labels.clone().unwrap_or_default();
        let object = self
            .objects
            .pods
            .iter()
            .find(|p| &pod_ref(p) == pod)
            .ok_or_else(|| TestbedError::Layout {
                reason: format!("pod {}/{} is not in the manifests", pod.namespace, pod.name),
            })?;
        let selector = labels(object);
        let shared = self.objects.pods.iter().any(|p| {
            let r = pod_ref(p);
            r != *pod
                && r.namespace == pod.namespace
                && selector.iter().all(|(k, v)| labels(p).get(k) == Some(v))
        });
        if selector.is_empty() || shared {
            return Err(TestbedError::Layout {
                reason: format!(
                    "pod {}/{}: its labels select other pods too, so it cannot have a Service of its own",
                    pod.namespace, pod.name
                ),
            });
        }
        let name: String = format!("s-{}-{}", pod.namespace, pod.name)
            .chars()
            .map(|c| {
                if c.is_ascii_alphanumeric() {
                    c.to_ascii_lowercase()
                } else {
                    '-'
                }
            })
            .take(63)
            .collect();
        let name = name.trim_end_matches('-').to_string();
        let mut service_ports = Vec::new();
        for port in ports {
            for proto in ["TCP", "UDP"] {
                service_ports.push(serde_json::json!({
                    "name": format!("p{port}-{}", proto.to_lowercase()),
                    "port": port,
                    "targetPort": port,
                    "protocol": proto,
                }));
            }
        }
        let service: k8s_openapi::api::core::v1::Service =
            serde_json::from_value(serde_json::json!({
                "metadata": {"name": name, "namespace": pod.namespace},
                "spec": {"selector": selector, "ports": service_ports},
            }))
            .map_err(|e| TestbedError::Layout {
                reason: format!("the Service of pod {}/{}: {e}", pod.namespace, pod.name),
            })?;
        kubelet::apply_service(&self.cp, &service)?;
        Ok(PodRef {
            namespace: pod.namespace.clone(),
            name,
        })
    }

    /// Waits until kube-proxy on every node translates every Service whose
    /// Endpoints hold a ready address (`ips`: each Service's ClusterIPs).
    pub fn wait_for_services(
        &self,
        ips: &BTreeMap<PodRef, Vec<IpAddr>>,
        timeout: Duration,
    ) -> Result<(), TestbedError> {
        let deadline = std::time::Instant::now() + timeout;
        let mut nodes = vec![self.node.clone()];
        nodes.extend(
            self.others
                .lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner)
                .iter()
                .cloned(),
        );
        loop {
            let ready = kubelet::services_with_endpoints(&self.cp)?;
            let wanted: Vec<IpAddr> = ips
                .iter()
                .filter(|(r, _)| ready.contains(r))
                .flat_map(|(_, ips)| ips.iter().copied())
                .collect();
            let mut all = true;
            for n in &nodes {
                all &= super::proxy::translates(&n.netns, &wanted)?;
            }
            if all {
                return Ok(());
            }
            if std::time::Instant::now() > deadline {
                return Err(TestbedError::Layout {
                    reason: format!(
                        "kube-proxy did not translate the Services with endpoints within {timeout:?}"
                    ),
                });
            }
            std::thread::sleep(Duration::from_millis(200));
        }
    }

    /// Creates `pod`'s object, from the manifests, bound to node `node`.
    pub fn create_pod(&self, pod: &PodRef, node: &str) -> Result<(), TestbedError> {
        let object = self
            .objects
            .pods
            .iter()
            .find(|p| &pod_ref(p) == pod)
            .ok_or_else(|| TestbedError::Layout {
                reason: format!("pod {}/{} is not in the manifests", pod.namespace, pod.name),
            })?;
        kubelet::create_pod(&self.cp, object, node).map(drop)
    }

    /// Reports `pod` running with `ips` on node `node`.
    pub fn pod_running(
        &self,
        pod: &PodRef,
        ips: &[IpAddr],
        node: &str,
    ) -> Result<(), TestbedError> {
        let host = self.node_named(node).ok_or_else(|| TestbedError::Layout {
            reason: format!("no node {node} in the cluster"),
        })?;
        kubelet::set_pod_running(
            &self.cp,
            &pod.namespace,
            &pod.name,
            IpAddr::V4(host.addr),
            ips,
        )
    }

    /// `kubectl apply -f` of the manifests' NetworkPolicies (written to one
    /// file in the data folder), as a user applies them; returns what
    /// kubectl printed.
    pub fn apply_policies_with_kubectl(&self) -> Result<String, TestbedError> {
        self.objects.apply_policies_with_kubectl(&self.cp)
    }

    /// Waits until the agent has applied what the API server holds now.
    pub fn wait_for_agent(
        &self,
        agent_log: &Path,
        agent_socket: &Path,
        timeout: Duration,
    ) -> Result<(), TestbedError> {
        sync::wait_for_agent(&self.cp, agent_log, agent_socket, timeout)
    }
}
