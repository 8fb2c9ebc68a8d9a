//! A cluster of real nodes: the control plane with kube-scheduler and the
//! Node authorizer, N nodes each running containerd, the kubelet and
//! kube-proxy, Flannel's part played on them, and — as a user installs it —
//! Palisade applied with `kubectl apply -k`.

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use k8s_openapi::api::apps::v1::{DaemonSet, DaemonSetStatus};
use k8s_openapi::api::core::v1::{Node, Pod};
use kube::Api;

use crate::cleanup::Tracked;
use crate::controlplane::{kube_err, ControlPlane, ControlPlaneOptions, SERVICE_CIDR};
use crate::error::TestbedError;
use crate::netns::{self, ip_in, sysctl_in};
use crate::overlay::UnderlayAddr;
use crate::placement::{node_nets, NodeNet, MAX_NODES};

use super::flannel;
use super::images::{self, ImageArchive};
use super::node::{RealNode, RealNodeSpec};

/// Debian's CNI plugins (`containernetworking-plugins`).
pub const DEBIAN_CNI_DIR: &str = "/usr/lib/cni";
/// How long nodes may take to become Ready (about 20 s on an idle
/// machine: the kubelet's first status update after the CNI is there).
const NODES_READY_TIMEOUT: Duration = Duration::from_secs(120);
/// How long Palisade's DaemonSet may take to be ready on every node.
const DAEMONSET_READY_TIMEOUT: Duration = Duration::from_secs(180);

/// What to start.
#[derive(Clone, Debug)]
pub struct RealClusterOptions {
    /// How many nodes (at least 1).
    pub nodes: usize,
    /// The bed's Flannel CNI plugin ([`flannel::PLUGIN_BINARY`]).
    pub flannel_plugin: PathBuf,
    /// More images every node imports (Palisade's).
    pub images: Vec<ImageArchive>,
    /// The control plane (its `real_nodes` are filled in here).
    pub control_plane: ControlPlaneOptions,
}

/// A running cluster of real nodes; dropping it ends everything.
#[derive(Debug)]
pub struct RealCluster {
    // Dropped in this order: nodes, then the namespaces and folders,
    // then the control plane.
    nodes: Vec<RealNode>,
    nets: Vec<NodeNet>,
    resources: Tracked,
    cp: ControlPlane,
}

impl RealCluster {
    /// Starts the control plane and the nodes, plays Flannel on them, and
    /// waits until every node is Ready.
    pub fn start(opts: RealClusterOptions) -> Result<RealCluster, TestbedError> {
        let count = opts.nodes.clamp(1, MAX_NODES);
        let plugin = opts.flannel_plugin.clone();
        if !plugin.is_file() {
            return Err(TestbedError::MissingBinary {
                what: flannel::PLUGIN_BINARY.into(),
                path: plugin,
            });
        }
        let nets = node_nets(count, false);
        let mut cp_opts = opts.control_plane.clone();
        cp_opts.real_nodes = nets.iter().map(|n| n.name.clone()).collect();
        let prefix = cp_opts.name.clone();
        let mut images = images::test_images()?;
        images.extend(opts.images.iter().cloned());
        let cp = ControlPlane::start(cp_opts)?;
        let resources = Tracked::new();
        let mut cluster = RealCluster {
            nodes: Vec::new(),
            nets: nets.clone(),
            resources,
            cp,
        };
        let mut plugins = vec![("flannel".to_string(), plugin)];
        for entry in std::fs::read_dir(DEBIAN_CNI_DIR)
            .map_err(|source| TestbedError::Io {
                path: DEBIAN_CNI_DIR.into(),
                source,
            })?
            .flatten()
        {
            if let Some(name) = entry.file_name().to_str() {
                plugins.push((name.to_string(), entry.path()));
            }
        }
        for net in &nets {
            let ns = format!("{prefix}-{}", net.name);
            cluster.resources.with(|r| r.netns.push(ns.clone()));
            netns::create(&ns)?;
            sysctl_in(&ns, "net.ipv4.ip_forward=1")?;
            let link = cluster.cp.attach_node(&ns, &net.name)?;
            // The Service range through the control plane's side of the
            // LAN, as a node's default route would carry it: hostNetwork
            // pods (Palisade's agent) reach the API server at its
            // ClusterIP, which kube-proxy translates in OUTPUT only once
            // a route exists. No default route: the kubelet's cloud
            // credential lookups would wait on it.
            let via = crate::controlplane::underlay::API_ADDR.to_string();
            ip_in(
                &ns,
                &[
                    "route",
                    "add",
                    SERVICE_CIDR,
                    "via",
                    &via,
                    "dev",
                    &link.ifname,
                ],
            )?;
            let dir = cluster.cp.dir().join(&net.name);
            let node = RealNode::start(
                RealNodeSpec {
                    cp: &cluster.cp,
                    link,
                    dir,
                    cni_plugins: plugins.clone(),
                    images: images.clone(),
                },
                &cluster.resources,
            )?;
            cluster.nodes.push(node);
        }
        let peers: Vec<UnderlayAddr> = cluster
            .nodes
            .iter()
            .map(|n| UnderlayAddr {
                v4: n.link().addr,
                v6: None,
            })
            .collect();
        for (i, node) in cluster.nodes.iter().enumerate() {
            flannel::start(node, i, &nets, &peers)?;
            cluster.cp.start_kube_proxy(node.link())?;
        }
        cluster.wait_nodes_ready(NODES_READY_TIMEOUT)?;
        Ok(cluster)
    }

    /// The control plane.
    pub fn control_plane(&self) -> &ControlPlane {
        &self.cp
    }

    /// The nodes, in order (`node0`, `node1`, ...).
    pub fn nodes(&self) -> &[RealNode] {
        &self.nodes
    }

    /// Node `i`'s pod network.
    pub fn net(&self, i: usize) -> Option<&NodeNet> {
        self.nets.get(i)
    }

    fn check_alive(&self) -> Result<(), TestbedError> {
        for node in &self.nodes {
            let dead = node.dead();
            if let Some(name) = dead.first() {
                return Err(TestbedError::Daemon {
                    name: name.clone(),
                    reason: "exited".into(),
                    log: node.dir().join("kubelet.log"),
                    log_tail: node.kubelet_log_tail(30),
                });
            }
        }
        Ok(())
    }

    /// Waits until every node's Ready condition is True.
    pub fn wait_nodes_ready(&mut self, timeout: Duration) -> Result<(), TestbedError> {
        let deadline = Instant::now() + timeout;
        let want = self.nodes.len();
        loop {
            self.check_alive()?;
            let client = self.cp.client();
            let nodes = self
                .cp
                .run(async move { Api::<Node>::all(client).list(&Default::default()).await })
                .map_err(kube_err("listing nodes"))?;
            let ready = nodes.items.iter().filter(|n| node_ready(n)).count();
            if ready >= want {
                return Ok(());
            }
            if Instant::now() > deadline {
                let tail = self
                    .nodes
                    .first()
                    .map(|n| n.kubelet_log_tail(30))
                    .unwrap_or_default();
                return Err(TestbedError::Environment {
                    reason: format!(
                        "{ready} of {want} nodes Ready after {timeout:?}; first kubelet's log:\n{tail}"
                    ),
                });
            }
            std::thread::sleep(Duration::from_millis(500));
        }
    }

    /// `kubectl apply -k folder` as the admin, then waits until DaemonSet
    /// `namespace/name` is ready on every node.
    pub fn install(
        &mut self,
        folder: &Path,
        namespace: &str,
        name: &str,
    ) -> Result<String, TestbedError> {
        let path = folder.display().to_string();
        let out = self.cp.kubectl(&["apply", "-k", &path])?;
        self.wait_daemonset_ready(namespace, name, DAEMONSET_READY_TIMEOUT)?;
        Ok(out)
    }

    /// Waits until DaemonSet `namespace/name` has an up-to-date, ready pod
    /// on every node.
    pub fn wait_daemonset_ready(
        &mut self,
        namespace: &str,
        name: &str,
        timeout: Duration,
    ) -> Result<(), TestbedError> {
        let deadline = Instant::now() + timeout;
        let want = self.nodes.len();
        loop {
            self.check_alive()?;
            let (ready, status) = self.daemonset_status(namespace, name)?;
            if ready {
                return Ok(());
            }
            if Instant::now() > deadline {
                let mut pods = self
                    .cp
                    .kubectl(&["get", "pods", "-A", "-o", "wide"])
                    .unwrap_or_default();
                // What the DaemonSet's containers said last.
                let logs = self.cp.kubectl(&[
                    "logs",
                    "-n",
                    namespace,
                    &format!("daemonset/{name}"),
                    "--all-containers",
                    "--tail=40",
                ]);
                pods.push_str(&logs.unwrap_or_else(|e| e.to_string()));
                return Err(TestbedError::Environment {
                    reason: format!(
                        "DaemonSet {namespace}/{name} not ready on {want} nodes after {timeout:?} \
                         (status {status:?}); pods:\n{pods}"
                    ),
                });
            }
            std::thread::sleep(Duration::from_millis(500));
        }
    }
}

impl RealCluster {
    /// Whether DaemonSet `namespace/name` has an up-to-date, ready pod on
    /// every node now (its controller has seen its latest generation).
    pub fn daemonset_ready(&self, namespace: &str, name: &str) -> Result<bool, TestbedError> {
        self.daemonset_status(namespace, name)
            .map(|(ready, _)| ready)
    }

    fn daemonset_status(
        &self,
        namespace: &str,
        name: &str,
    ) -> Result<(bool, Option<DaemonSetStatus>), TestbedError> {
        let want = i32::try_from(self.nodes.len()).unwrap_or(i32::MAX);
        let client = self.cp.client();
        let (ns, n) = (namespace.to_string(), name.to_string());
        let ds = self
            .cp
            .run(async move { Api::<DaemonSet>::namespaced(client, &ns).get_opt(&n).await })
            .map_err(kube_err(format!("reading DaemonSet {namespace}/{name}")))?;
        let status = ds.as_ref().and_then(|d| d.status.clone());
        let generation = ds.as_ref().and_then(|d| d.metadata.generation);
        let ready = status.as_ref().is_some_and(|s| {
            s.number_ready == want
                && s.updated_number_scheduled.unwrap_or(0) == want
                && s.observed_generation == generation
        });
        Ok((ready, status))
    }

    /// Starts an agnhost pod (`pause`) named `namespace/name` on node
    /// `node` and waits until it runs: the node's CNI chain answered its
    /// ADD. Fails with the pod's events when it does not within `timeout`.
    pub fn run_pod(
        &self,
        namespace: &str,
        name: &str,
        node: &str,
        timeout: Duration,
    ) -> Result<(), TestbedError> {
        let pod: Pod = serde_json::from_value(serde_json::json!({
            "apiVersion": "v1",
            "kind": "Pod",
            "metadata": {"name": name, "namespace": namespace},
            "spec": {
                "nodeName": node,
                "terminationGracePeriodSeconds": 0,
                "containers": [{
                    "name": "pause",
                    "image": images::AGNHOST_IMAGE,
                    "imagePullPolicy": "Never",
                    "args": ["pause"],
                }],
            },
        }))
        .map_err(|e| TestbedError::Environment {
            reason: format!("pod {namespace}/{name}: {e}"),
        })?;
        let client = self.cp.client();
        let ns = namespace.to_string();
        self.cp
            .run(async move {
                Api::<Pod>::namespaced(client, &ns)
                    .create(&Default::default(), &pod)
                    .await
            })
            .map_err(kube_err(format!("creating pod {namespace}/{name}")))?;
        let deadline = Instant::now() + timeout;
        loop {
            let phase = self
                .pod(namespace, name)?
                .ok_or_else(|| TestbedError::Environment {
                    reason: format!("pod {namespace}/{name} on {node} is gone"),
                })?
                .status
                .and_then(|s| s.phase);
            if phase.as_deref() == Some("Running") {
                return Ok(());
            }
            if Instant::now() > deadline {
                let events = self
                    .cp
                    .kubectl(&["describe", "pod", "-n", namespace, name])
                    .unwrap_or_else(|e| e.to_string());
                return Err(TestbedError::Environment {
                    reason: format!(
                        "pod {namespace}/{name} on {node} not running after {timeout:?} (phase {phase:?}):\n{events}"
                    ),
                });
            }
            std::thread::sleep(Duration::from_millis(250));
        }
    }
}

fn node_ready(node: &Node) -> bool {
    node.status
        .as_ref()
        .and_then(|s| s.conditions.as_ref())
        .is_some_and(|c| c.iter().any(|c| c.type_ == "Ready" && c.status == "True"))
}

impl Drop for RealCluster {
    fn drop(&mut self) {
        // The nodes first (then their namespaces), the control plane last.
        self.resources.cleanup();
    }
}
