//! What runs on a cluster of real nodes, as the upstream e2e suite drives
//! it: objects applied with kubectl, pods waited for until Ready, and
//! connections tried from inside a pod's own container with
//! `agnhost connect` through `kubectl exec`.

use std::time::{Duration, Instant};

use k8s_openapi::api::core::v1::Pod;
use kube::Api;

use crate::controlplane::kube_err;
use crate::error::TestbedError;

use super::cluster::RealCluster;

/// What `agnhost connect` saw.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Connect {
    /// The connection was made.
    Allowed,
    /// It was not: agnhost's one-word reason (`TIMEOUT`, `REFUSED`, ...).
    Denied(String),
}

impl RealCluster {
    /// `kubectl apply -f` of `yaml`, written under the control plane's
    /// folder as `name.yaml`.
    pub fn apply_yaml(&self, name: &str, yaml: &str) -> Result<String, TestbedError> {
        let cp = self.control_plane();
        let path = cp.dir().join(format!("{name}.yaml"));
        std::fs::write(&path, yaml).map_err(|source| TestbedError::Io {
            path: path.clone(),
            source,
        })?;
        cp.kubectl(&["apply", "-f", &path.display().to_string()])
    }

    /// Pod `namespace/name` as the API has it now (`None`: there is none).
    pub(crate) fn pod(&self, namespace: &str, name: &str) -> Result<Option<Pod>, TestbedError> {
        let cp = self.control_plane();
        let client = cp.client();
        let (ns, n) = (namespace.to_string(), name.to_string());
        cp.run(async move { Api::<Pod>::namespaced(client, &ns).get_opt(&n).await })
            .map_err(kube_err(format!("reading pod {namespace}/{name}")))
    }

    /// Waits until pod `namespace/name` is Ready (every container's
    /// readiness probe passed) and returns its address; fails with
    /// `kubectl describe` of it after `timeout`.
    pub fn wait_pod_ready(
        &self,
        namespace: &str,
        name: &str,
        timeout: Duration,
    ) -> Result<String, TestbedError> {
        let deadline = Instant::now() + timeout;
        loop {
            let status = self.pod(namespace, name)?.and_then(|p| p.status);
            let ready = status
                .as_ref()
                .and_then(|s| s.conditions.as_ref())
                .is_some_and(|c| c.iter().any(|c| c.type_ == "Ready" && c.status == "True"));
            let ip = status.as_ref().and_then(|s| s.pod_ip.clone());
            if let (true, Some(ip)) = (ready, ip) {
                return Ok(ip);
            }
            if Instant::now() > deadline {
                let describe = self
                    .control_plane()
                    .kubectl(&["describe", "pod", "-n", namespace, name])
                    .unwrap_or_else(|e| e.to_string());
                return Err(TestbedError::Environment {
                    reason: format!(
                        "pod {namespace}/{name} not Ready after {timeout:?}:\n{describe}"
                    ),
                });
            }
            std::thread::sleep(Duration::from_millis(250));
        }
    }

    /// `agnhost connect ip:port` (TCP) from inside pod `namespace/pod`,
    /// giving up after `timeout`. An error is a failure of the exec itself
    /// (the API server, the kubelet, the runtime), never a verdict.
    pub fn connect(
        &self,
        namespace: &str,
        pod: &str,
        ip: &str,
        port: u16,
        timeout: Duration,
    ) -> Result<Connect, TestbedError> {
        let dest = if ip.contains(':') {
            format!("[{ip}]:{port}")
        } else {
            format!("{ip}:{port}")
        };
        self.connect_to(namespace, pod, &dest, timeout)
    }

    /// [`Self::connect`] to `dest`, an `address:port` as agnhost takes it.
    pub fn connect_to(
        &self,
        namespace: &str,
        pod: &str,
        dest: &str,
        timeout: Duration,
    ) -> Result<Connect, TestbedError> {
        let timeout = format!("--timeout={}ms", timeout.as_millis());
        let args = [
            "exec",
            "-n",
            namespace,
            pod,
            "--",
            "/agnhost",
            "connect",
            dest,
            "--protocol=tcp",
            timeout.as_str(),
        ];
        match self.control_plane().kubectl(&args) {
            Ok(_) => Ok(Connect::Allowed),
            Err(TestbedError::Command { stderr, status, .. }) => {
                // agnhost prints its failure as a line starting with a
                // fixed word and exits 1; anything else is kubectl's or
                // the kubelet's failure, not a verdict.
                let line = stderr.lines().map(str::trim).find(|l| {
                    ["TIMEOUT", "REFUSED", "DNS", "OTHER"]
                        .iter()
                        .any(|w| l.starts_with(w))
                });
                match line {
                    Some(l) => Ok(Connect::Denied(l.to_string())),
                    None => Err(TestbedError::Environment {
                        reason: format!(
                            "kubectl exec {namespace}/{pod} -- agnhost connect {dest}: {status}: {}",
                            stderr.trim()
                        ),
                    }),
                }
            }
            Err(e) => Err(e),
        }
    }

    /// [`Self::connect`], retried over exec failures until `deadline`.
    pub fn connect_until(
        &self,
        namespace: &str,
        pod: &str,
        ip: &str,
        port: u16,
        deadline: Instant,
    ) -> Result<Connect, TestbedError> {
        loop {
            match self.connect(namespace, pod, ip, port, Duration::from_secs(2)) {
                Ok(seen) => return Ok(seen),
                Err(e) if Instant::now() > deadline => return Err(e),
                Err(_) => std::thread::sleep(Duration::from_millis(500)),
            }
        }
    }
}
