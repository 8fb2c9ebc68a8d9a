//! One container on a real node as the node itself knows it: its log as
//! containerd writes it (what `kubectl logs` serves), its cgroup under the
//! kubelet's cgroup root, and its processes. The bench reads the agent
//! container's log and memory through these.

use std::path::{Path, PathBuf};

use k8s_openapi::api::core::v1::Pod;
use kube::api::{Api, ListParams};

use crate::controlplane::kube_err;
use crate::error::TestbedError;

use super::cluster::RealCluster;
use super::node::RealNode;

/// Where the kubelet has containerd write containers' logs, per pod
/// (`<namespace>_<name>_<uid>/<container>/<restart count>.log`).
pub const POD_LOG_DIR: &str = "/var/log/pods";

impl RealCluster {
    /// The pods in `namespace` matching `selector` (a label selector)
    /// bound to node `node`, as the API has them now.
    pub fn pods_on(
        &self,
        namespace: &str,
        selector: &str,
        node: &str,
    ) -> Result<Vec<Pod>, TestbedError> {
        let cp = self.control_plane();
        let client = cp.client();
        let ns = namespace.to_string();
        let params = ListParams::default()
            .labels(selector)
            .fields(&format!("spec.nodeName={node}"));
        cp.run(async move { Api::<Pod>::namespaced(client, &ns).list(&params).await })
            .map(|list| list.items)
            .map_err(kube_err(format!(
                "listing pods {selector} in {namespace} on {node}"
            )))
    }

    /// What container `container` of the pod matching `selector` in
    /// `namespace` on `node` that is not being deleted has logged so far
    /// (its current run); `None` before it started.
    pub fn current_log(
        &self,
        namespace: &str,
        selector: &str,
        node: &str,
        container: &str,
    ) -> Result<Option<String>, TestbedError> {
        let Some(real) = self.nodes().iter().find(|n| n.name() == node) else {
            return Ok(None);
        };
        Ok(self
            .pods_on(namespace, selector, node)?
            .iter()
            .filter(|p| p.metadata.deletion_timestamp.is_none())
            .find_map(|p| container_log(p, container))
            .map(|log| cri_log_text(&std::fs::read_to_string(real.path(&log)).unwrap_or_default())))
    }
}

/// The ID containerd knows container `container` of `pod` by, once it has
/// been started (`containerStatuses[].containerID` without its
/// `containerd://`).
pub fn container_id(pod: &Pod, container: &str) -> Option<String> {
    pod.status
        .as_ref()?
        .container_statuses
        .as_ref()?
        .iter()
        .find(|s| s.name == container)?
        .container_id
        .as_deref()
        .map(|id| id.rsplit("://").next().unwrap_or(id).to_string())
}

/// The log file of the current run of container `container` of `pod`,
/// inside the node (see [`POD_LOG_DIR`]); `None` before it started.
pub fn container_log(pod: &Pod, container: &str) -> Option<String> {
    let meta = &pod.metadata;
    let restarts = pod
        .status
        .as_ref()?
        .container_statuses
        .as_ref()?
        .iter()
        .find(|s| s.name == container)?
        .restart_count;
    Some(format!(
        "{POD_LOG_DIR}/{}_{}_{}/{container}/{restarts}.log",
        meta.namespace.as_deref()?,
        meta.name.as_deref()?,
        meta.uid.as_deref()?
    ))
}

/// The lines a container wrote, from its log file in the CRI format
/// (`<time> <stream> <P|F> <text>`: a line longer than the runtime's
/// buffer is split into partial `P` records ended by an `F` one). A last
/// record not yet complete is left out.
pub fn cri_log_text(raw: &str) -> String {
    let mut out = String::with_capacity(raw.len());
    let mut partial = String::new();
    for record in raw.split_inclusive('\n') {
        let Some(record) = record.strip_suffix('\n') else {
            break; // still being written
        };
        let mut fields = record.splitn(4, ' ');
        let (Some(_time), Some(_stream), Some(tag)) = (fields.next(), fields.next(), fields.next())
        else {
            continue;
        };
        let text = fields.next().unwrap_or("");
        partial.push_str(text);
        if tag != "P" {
            out.push_str(&partial);
            out.push('\n');
            partial.clear();
        }
    }
    out
}

impl RealNode {
    /// The cgroup of container `id` in the machine's hierarchy
    /// `controller` (`memory`, `pids`, ...; `unified` for cgroup v2),
    /// found under the node's cgroup root; `None` if it has none there.
    pub fn container_cgroup(&self, controller: &str, id: &str) -> Option<PathBuf> {
        let top = Path::new("/sys/fs/cgroup")
            .join(controller)
            .join(&self.link().netns);
        // kubepods/<qos>/pod<uid>/<id>: a few levels, a few dozen folders.
        let mut stack = vec![(top, 0)];
        while let Some((dir, depth)) = stack.pop() {
            if dir.file_name().is_some_and(|n| n == id) {
                return Some(dir);
            }
            if depth >= 5 {
                continue;
            }
            for e in std::fs::read_dir(&dir).into_iter().flatten().flatten() {
                if e.file_type().is_ok_and(|t| t.is_dir()) {
                    stack.push((e.path(), depth + 1));
                }
            }
        }
        None
    }
}

/// The processes in `cgroup` (the machine's process ids).
pub fn cgroup_pids(cgroup: &Path) -> Vec<u32> {
    std::fs::read_to_string(cgroup.join("cgroup.procs"))
        .unwrap_or_default()
        .lines()
        .filter_map(|l| l.trim().parse().ok())
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cri_records_become_the_lines_the_container_wrote() {
        let raw = "2026-12-07T23:00:00.1Z stderr F first line\n\
                   2026-12-07T23:00:00.2Z stderr P a long li\n\
                   2026-12-07T23:00:00.2Z stderr F ne, joined\n\
                   2026-12-07T23:00:00.3Z stdout F \n\
                   2026-12-07T23:00:00.4Z stderr F not yet compl";
        assert_eq!(cri_log_text(raw), "first line\na long line, joined\n\n");
    }

    #[test]
    fn the_log_path_and_id_come_from_the_pod_status() {
        let pod: Pod = serde_json::from_value(serde_json::json!({
            "metadata": {"name": "agent-x", "namespace": "palisade-system", "uid": "u-1"},
            "status": {"containerStatuses": [{
                "name": "agent", "restartCount": 2, "ready": true, "image": "i", "imageID": "",
                "containerID": "containerd://abc123"
            }]}
        }))
        .unwrap();
        assert_eq!(
            container_log(&pod, "agent").as_deref(),
            Some("/var/log/pods/palisade-system_agent-x_u-1/agent/2.log")
        );
        assert_eq!(container_id(&pod, "agent").as_deref(), Some("abc123"));
        assert_eq!(container_id(&pod, "other"), None);
    }
}
