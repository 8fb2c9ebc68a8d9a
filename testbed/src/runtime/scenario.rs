//! A scenario (cluster manifests and probes) on real nodes: the manifests'
//! Namespaces, NetworkPolicies and Services created through the API, each
//! Pod a real container of the agnhost image with the manifest's labels and
//! ports (`porter` serving every port a probe names, as the upstream suite's
//! servers do), placed as the manifests say or spread over the nodes, and
//! each probe run inside its client pod with `kubectl exec ... /agnhost
//! connect`, as the upstream suite's clients connect.
//!
//! What real nodes cannot probe is reported as skipped, not judged: UDP
//! (agnhost 1.20's `connect` speaks TCP and SCTP only), SCTP (no SCTP on
//! this kernel), hosts outside the cluster, node addresses and hostNetwork
//! pods (the real nodes have no outside network, and their hosts run no
//! servers), IPv6 (the nodes are IPv4 only).

use std::collections::{BTreeMap, BTreeSet};
use std::net::IpAddr;
use std::path::PathBuf;
use std::time::{Duration, Instant};

use k8s_openapi::api::core::v1::Pod;
use kube::Api;

use super::cluster::{RealCluster, RealClusterOptions};
use super::images::{self, ImageArchive};
use super::workload::Connect;
use crate::controlplane::cluster::pod_ref;
use crate::controlplane::objects::ClusterObjects;
use crate::controlplane::{kube_err, kubelet, ControlPlaneOptions};
use crate::error::TestbedError;
use crate::layout::{Layout, PodPlan};
use crate::probe::{validate_probes, End, Observation, PodRef, Probe, Protocol, Snapshot};

/// Palisade's DaemonSet as `manifests/` declares it.
pub const AGENT_DAEMONSET: (&str, &str) = ("palisade-system", "palisade-agent");
/// How long the scenario's pods may take to be Ready.
const PODS_READY_TIMEOUT: Duration = Duration::from_secs(120);
/// How long `agnhost connect` waits for a connection.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(2);
/// How long a change (policies applied, Palisade installed) is given to
/// reach the datapath before probes judge it. The upstream suite starts a
/// client 2–4 s after its policy; this is inside that window.
pub const SETTLE: Duration = Duration::from_secs(2);
/// Probes expected to connect are tried this often before they count as
/// denied (the upstream suite tries 5 times): a pod's first connection may
/// race its readiness.
const ALLOWED_TRIES: usize = 3;
/// How many `kubectl exec` run at once (each is a process and a stream
/// through the API server and the kubelet).
const PARALLEL_EXECS: usize = 6;

/// What to start.
#[derive(Clone, Debug)]
pub struct ScenarioOptions {
    /// Cluster manifests (Namespaces, Pods, NetworkPolicies, Services).
    pub manifests: Vec<PathBuf>,
    /// The probes that will run: the ports they name are served too.
    pub probes: Vec<Probe>,
    /// How many nodes.
    pub nodes: usize,
    /// The bed's Flannel CNI plugin.
    pub flannel_plugin: PathBuf,
    /// Palisade's image, imported on every node (`None`: Flannel alone).
    pub palisade_image: Option<ImageArchive>,
    /// Leave the NetworkPolicies out at start (apply them later with
    /// [`RealScenario::apply_policies_with_kubectl`]).
    pub policies_later: bool,
}

/// A pod of the scenario, running.
#[derive(Clone, Debug)]
struct RunningPod {
    ip: IpAddr,
}

/// A scenario on running real nodes; dropping it ends the cluster.
#[derive(Debug)]
pub struct RealScenario {
    cluster: RealCluster,
    objects: ClusterObjects,
    layout: Layout,
    pods: BTreeMap<PodRef, RunningPod>,
    services: BTreeMap<PodRef, Vec<IpAddr>>,
}

impl RealScenario {
    /// Starts `opts.nodes` real nodes, creates the scenario's objects and
    /// pods, and waits until every pod is Ready. Palisade is not installed
    /// yet (see [`Self::install`]).
    pub fn start(opts: ScenarioOptions, snapshot: &Snapshot) -> Result<Self, TestbedError> {
        validate_probes(snapshot, &opts.probes)?;
        let objects = ClusterObjects::load(&opts.manifests)?;
        let layout = Layout::on_nodes(snapshot, &opts.probes, opts.nodes.max(1), false)?;
        let cluster = RealCluster::start(RealClusterOptions {
            nodes: layout.nodes.len(),
            flannel_plugin: opts.flannel_plugin,
            images: opts.palisade_image.into_iter().collect(),
            control_plane: ControlPlaneOptions::default(),
        })?;
        let cp = cluster.control_plane();
        objects.create(cp, !opts.policies_later)?;
        for plan in layout.pods.iter().filter(|p| !p.host_network) {
            let manifest = objects
                .pods
                .iter()
                .find(|p| pod_ref(p) == plan.pod)
                .ok_or_else(|| TestbedError::Layout {
                    reason: format!("pod {} is not in the manifests", plan.pod),
                })?;
            let node = &layout.nodes[plan.node].name;
            kubelet::create_pod(cp, &agnhost_pod(manifest, plan, node)?, node)?;
        }
        let mut scenario = RealScenario {
            cluster,
            objects,
            layout,
            pods: BTreeMap::new(),
            services: BTreeMap::new(),
        };
        scenario.wait_pods_ready(PODS_READY_TIMEOUT)?;
        scenario.services = kubelet::service_ips(scenario.cluster.control_plane())?;
        Ok(scenario)
    }

    /// The cluster.
    pub fn cluster(&self) -> &RealCluster {
        &self.cluster
    }

    /// Installs Palisade as a user does (`kubectl apply -k overlay`), waits
    /// until its DaemonSet is ready on every node, then [`SETTLE`]; returns
    /// what kubectl printed.
    pub fn install(&mut self, overlay: &std::path::Path) -> Result<String, TestbedError> {
        let (ns, name) = AGENT_DAEMONSET;
        let out = self.cluster.install(overlay, ns, name)?;
        std::thread::sleep(SETTLE);
        Ok(out)
    }

    /// `kubectl apply -f` of the manifests' NetworkPolicies, then
    /// [`SETTLE`]; returns what kubectl printed.
    pub fn apply_policies_with_kubectl(&self) -> Result<String, TestbedError> {
        let out = self
            .objects
            .apply_policies_with_kubectl(self.cluster.control_plane())?;
        std::thread::sleep(SETTLE);
        Ok(out)
    }

    fn wait_pods_ready(&mut self, timeout: Duration) -> Result<(), TestbedError> {
        let want: BTreeSet<PodRef> = self
            .layout
            .pods
            .iter()
            .filter(|p| !p.host_network)
            .map(|p| p.pod.clone())
            .collect();
        let deadline = Instant::now() + timeout;
        loop {
            let cp = self.cluster.control_plane();
            let client = cp.client();
            let list = cp
                .run(async move { Api::<Pod>::all(client).list(&Default::default()).await })
                .map_err(kube_err("listing pods"))?;
            self.pods = list
                .items
                .iter()
                .filter(|p| want.contains(&pod_ref(p)) && pod_ready(p))
                .filter_map(|p| {
                    let ip = p.status.as_ref()?.pod_ip.as_ref()?.parse().ok()?;
                    Some((pod_ref(p), RunningPod { ip }))
                })
                .collect();
            if self.pods.len() == want.len() {
                return Ok(());
            }
            if Instant::now() > deadline {
                let missing: Vec<String> = want
                    .iter()
                    .filter(|p| !self.pods.contains_key(p))
                    .map(ToString::to_string)
                    .collect();
                let pods = cp
                    .kubectl(&["get", "pods", "-A", "-o", "wide"])
                    .unwrap_or_else(|e| e.to_string());
                return Err(TestbedError::Environment {
                    reason: format!(
                        "pods {} not Ready after {timeout:?}:\n{pods}",
                        missing.join(", ")
                    ),
                });
            }
            std::thread::sleep(Duration::from_millis(500));
        }
    }

    /// Runs the probes from inside their client pods, a few at a time, and
    /// returns one observation per probe, in order. A probe expected to
    /// connect is tried up to 3 times; one expected to be denied is judged
    /// on its first try.
    pub fn probe(&self, probes: &[Probe]) -> Vec<Observation> {
        let mut seen: Vec<Observation> = Vec::with_capacity(probes.len());
        for chunk in probes.chunks(PARALLEL_EXECS) {
            let results: Vec<Observation> = std::thread::scope(|s| {
                let handles: Vec<_> = chunk
                    .iter()
                    .map(|p| s.spawn(move || self.probe_one(p)))
                    .collect();
                handles
                    .into_iter()
                    .zip(chunk)
                    .map(|(h, p)| {
                        h.join().unwrap_or_else(|_| Observation {
                            probe: p.clone(),
                            allowed: None,
                            detail: "skipped: the probe's thread panicked".into(),
                        })
                    })
                    .collect()
            });
            seen.extend(results);
        }
        seen
    }

    fn probe_one(&self, probe: &Probe) -> Observation {
        let observe = |allowed, detail: String| Observation {
            probe: probe.clone(),
            allowed,
            detail,
        };
        let (client, target) = match self.route(probe) {
            Ok(r) => r,
            Err(why) => return observe(None, format!("skipped: {why}")),
        };
        let tries = if probe.expected == Some(true) {
            ALLOWED_TRIES
        } else {
            1
        };
        let mut last = observe(None, String::new());
        for attempt in 1..=tries {
            last = match self.connect(&client, &target) {
                Ok(()) if attempt == 1 => observe(Some(true), "connected".into()),
                Ok(()) => observe(Some(true), format!("connected (try {attempt})")),
                Err(Verdict::Denied(why)) => observe(Some(false), why),
                Err(Verdict::NotRun(why)) => return observe(None, format!("skipped: {why}")),
            };
            if last.allowed == Some(true) {
                break;
            }
            if attempt < tries {
                std::thread::sleep(Duration::from_secs(1));
            }
        }
        last
    }

    /// `kubectl exec` into `client`: `agnhost connect target`.
    fn connect(&self, client: &PodRef, target: &str) -> Result<(), Verdict> {
        match self
            .cluster
            .connect_to(&client.namespace, &client.name, target, CONNECT_TIMEOUT)
        {
            Ok(Connect::Allowed) => Ok(()),
            Ok(Connect::Denied(line)) => Err(Verdict::Denied(line)),
            Err(e) => Err(Verdict::NotRun(format!("kubectl exec failed: {e}"))),
        }
    }

    /// The client pod and the `address:port` a probe connects to.
    fn route(&self, probe: &Probe) -> Result<(PodRef, String), String> {
        match probe.protocol {
            Protocol::Tcp => {}
            Protocol::Udp => {
                return Err("UDP: agnhost 1.20's connect speaks TCP and SCTP only".into())
            }
            Protocol::Sctp => return Err("SCTP: this kernel has no SCTP sockets".into()),
        }
        let from = match &probe.from {
            End::Pod(p) => p.clone(),
            End::Ip(ip) => self
                .pod_at(*ip)
                .ok_or_else(|| format!("{ip} is no pod's: real nodes have no outside hosts"))?,
            End::Service(_) => return Err("a Service cannot connect".into()),
        };
        if !self.pods.contains_key(&from) {
            return Err(format!(
                "{from} is not a running pod (hostNetwork pods are not probed on real nodes)"
            ));
        }
        let ip = match &probe.to {
            End::Pod(p) => self.pods.get(p).map(|r| r.ip).ok_or_else(|| {
                format!("{p} is not a running pod (hostNetwork pods are not probed on real nodes)")
            })?,
            End::Ip(ip) => self
                .pod_at(*ip)
                .and_then(|p| self.pods.get(&p))
                .map(|r| r.ip)
                .ok_or_else(|| {
                    format!("{ip} is no pod's: real nodes have no outside hosts or node servers")
                })?,
            End::Service(svc) => self
                .services
                .get(svc)
                .and_then(|ips| ips.iter().copied().find(IpAddr::is_ipv4))
                .ok_or_else(|| format!("Service {svc} has no IPv4 ClusterIP"))?,
        };
        if ip.is_ipv6() {
            return Err("IPv6: the real nodes are IPv4 only".into());
        }
        Ok((from, format!("{ip}:{}", probe.port)))
    }

    /// The pod an address names: its manifest address, or its real one.
    fn pod_at(&self, ip: IpAddr) -> Option<PodRef> {
        let by_manifest = match ip {
            IpAddr::V4(v4) => self.layout.pod_by_ip(v4),
            IpAddr::V6(v6) => self.layout.pod_by_ip6(v6),
        };
        by_manifest
            .map(|i| self.layout.pods[i].pod.clone())
            .or_else(|| {
                self.pods
                    .iter()
                    .find(|(_, r)| r.ip == ip)
                    .map(|(p, _)| p.clone())
            })
    }
}

enum Verdict {
    /// agnhost could not connect (timeout, refused, unreachable).
    Denied(String),
    /// The probe could not run.
    NotRun(String),
}

fn pod_ready(pod: &Pod) -> bool {
    pod.status
        .as_ref()
        .and_then(|s| s.conditions.as_ref())
        .is_some_and(|c| c.iter().any(|c| c.type_ == "Ready" && c.status == "True"))
}

/// The real pod standing in for `manifest`: its name, namespace and labels,
/// its containers' ports (names kept, for policies that name them) on one
/// agnhost container, `porter` serving TCP on every port of `plan` (the
/// declared ones and those probes name), Ready once porter listens.
pub fn agnhost_pod(manifest: &Pod, plan: &PodPlan, node: &str) -> Result<Pod, TestbedError> {
    let mut ports: Vec<serde_json::Value> = Vec::new();
    let mut seen = BTreeSet::new();
    for p in manifest
        .spec
        .iter()
        .flat_map(|s| &s.containers)
        .flat_map(|c| c.ports.iter().flatten())
    {
        let protocol = p.protocol.clone().unwrap_or_else(|| "TCP".into());
        if seen.insert((p.container_port, protocol.clone())) {
            ports.push(serde_json::json!({
                "containerPort": p.container_port,
                "name": p.name,
                "protocol": protocol,
            }));
        }
    }
    let env: Vec<serde_json::Value> = plan
        .ports
        .iter()
        .map(|p| serde_json::json!({"name": format!("SERVE_PORT_{p}"), "value": "porter"}))
        .collect();
    let (args, readiness) = match plan.ports.first() {
        Some(port) => (
            vec!["porter"],
            serde_json::json!({
                "exec": {"command": [
                    "/agnhost", "connect", "--protocol=tcp", "--timeout=1s",
                    format!("127.0.0.1:{port}"),
                ]},
                "periodSeconds": 1,
            }),
        ),
        None => (vec!["pause"], serde_json::Value::Null),
    };
    let value = serde_json::json!({
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {
            "name": manifest.metadata.name,
            "namespace": manifest.metadata.namespace.as_deref().unwrap_or("default"),
            "labels": manifest.metadata.labels,
        },
        "spec": {
            "nodeName": node,
            "terminationGracePeriodSeconds": 0,
            "containers": [{
                "name": "agnhost",
                "image": images::AGNHOST_IMAGE,
                "imagePullPolicy": "Never",
                "args": args,
                "env": env,
                "ports": ports,
                "readinessProbe": readiness,
            }],
        },
    });
    serde_json::from_value(value).map_err(|e| TestbedError::Environment {
        reason: format!("pod {}: {e}", plan.pod),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_agnhost_pod_keeps_labels_and_named_ports_and_serves_probed_ports() {
        let manifest: Pod = serde_json::from_value(serde_json::json!({
            "metadata": {"name": "api", "namespace": "prod", "labels": {"app": "api"}},
            "spec": {"containers": [
                {"name": "a", "image": "x", "ports": [{"containerPort": 80, "name": "http"}]},
                {"name": "b", "image": "y", "ports": [{"containerPort": 53, "protocol": "UDP"}]},
            ]},
        }))
        .unwrap();
        let plan = PodPlan {
            pod: "prod/api".parse().unwrap(),
            requested: None,
            requested6: None,
            host_network: false,
            ports: [80, 8080].into_iter().collect(),
            node: 1,
        };
        let pod = serde_json::to_value(agnhost_pod(&manifest, &plan, "node1").unwrap()).unwrap();
        assert_eq!(pod["metadata"]["labels"]["app"], "api");
        assert_eq!(pod["spec"]["nodeName"], "node1");
        let c = &pod["spec"]["containers"][0];
        assert_eq!(c["args"][0], "porter");
        assert_eq!(c["ports"][0]["name"], "http");
        assert_eq!(c["ports"][1]["protocol"], "UDP");
        let env: Vec<&str> = c["env"]
            .as_array()
            .unwrap()
            .iter()
            .map(|e| e["name"].as_str().unwrap())
            .collect();
        assert_eq!(env, ["SERVE_PORT_80", "SERVE_PORT_8080"]);
        assert_eq!(c["readinessProbe"]["exec"]["command"][4], "127.0.0.1:80");
        let idle = PodPlan {
            ports: BTreeSet::new(),
            ..plan
        };
        let pod = serde_json::to_value(agnhost_pod(&manifest, &idle, "node0").unwrap()).unwrap();
        assert_eq!(pod["spec"]["containers"][0]["args"][0], "pause");
    }
}
