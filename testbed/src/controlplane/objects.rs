//! The objects of cluster manifests the test bed creates through the API:
//! Namespaces, Pods, NetworkPolicies, Services and Endpoints (those of
//! selector-less Services, written by hand; the EndpointSlice mirroring
//! controller makes their slices), as the API types, read
//! from the same files (YAML documents, JSON, `List`s) the file mode
//! reads. Other kinds are left out; the policy engine's loader reports them.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use k8s_openapi::api::core::v1::{Endpoints, Namespace, Pod, Service};
use k8s_openapi::api::networking::v1::NetworkPolicy;
use serde::Deserialize;
use serde_json::Value;

use super::{kubelet, ControlPlane};
use crate::error::TestbedError;

/// Everything the API should hold, in file order within each kind.
#[derive(Clone, Debug, Default)]
pub struct ClusterObjects {
    /// Namespaces declared by the manifests.
    pub namespaces: Vec<Namespace>,
    /// Pods (their `status` is the kubelet's to set, not the manifest's).
    pub pods: Vec<Pod>,
    /// NetworkPolicies.
    pub policies: Vec<NetworkPolicy>,
    /// Services.
    pub services: Vec<Service>,
    /// Endpoints written by hand (of selector-less Services).
    pub endpoints: Vec<Endpoints>,
}

fn bad(path: &Path, reason: String) -> TestbedError {
    TestbedError::Layout {
        reason: format!("{}: {reason}", path.display()),
    }
}

impl ClusterObjects {
    /// Reads `paths` (files, or folders whose `*.yaml`, `*.yml` and
    /// `*.json` files are read in name order).
    pub fn load(paths: &[PathBuf]) -> Result<Self, TestbedError> {
        let mut objects = ClusterObjects::default();
        for path in paths {
            let mut files = Vec::new();
            if path.is_dir() {
                let entries = std::fs::read_dir(path).map_err(|source| TestbedError::Io {
                    path: path.clone(),
                    source,
                })?;
                for entry in entries.flatten() {
                    let p = entry.path();
                    let ext = p.extension().and_then(|e| e.to_str()).unwrap_or_default();
                    if p.is_file() && matches!(ext, "yaml" | "yml" | "json") {
                        files.push(p);
                    }
                }
                files.sort();
            } else {
                files.push(path.clone());
            }
            for file in files {
                let text = std::fs::read_to_string(&file).map_err(|source| TestbedError::Io {
                    path: file.clone(),
                    source,
                })?;
                objects.add_text(&text, &file)?;
            }
        }
        Ok(objects)
    }

    /// Adds the documents of `text` (`path` names it in messages).
    pub fn add_text(&mut self, text: &str, path: &Path) -> Result<(), TestbedError> {
        if path.extension().and_then(|e| e.to_str()) == Some("json") {
            let v: Value =
                serde_json::from_str(text).map_err(|e| bad(path, format!("not JSON: {e}")))?;
            return self.add_value(v, path);
        }
        for (i, doc) in serde_norway::Deserializer::from_str(text).enumerate() {
            let v = Value::deserialize(doc)
                .map_err(|e| bad(path, format!("YAML document {i}: {e}")))?;
            if !v.is_null() {
                self.add_value(v, path)?;
            }
        }
        Ok(())
    }

    fn add_value(&mut self, v: Value, path: &Path) -> Result<(), TestbedError> {
        let kind = v
            .get("kind")
            .and_then(Value::as_str)
            .unwrap_or_default()
            .to_string();
        let shape = |e: serde_json::Error| bad(path, format!("a {kind} does not parse: {e}"));
        match kind.as_str() {
            "Namespace" => self
                .namespaces
                .push(serde_json::from_value(v).map_err(shape)?),
            "Pod" => self.pods.push(serde_json::from_value(v).map_err(shape)?),
            "NetworkPolicy" => self
                .policies
                .push(serde_json::from_value(v).map_err(shape)?),
            "Service" => self
                .services
                .push(serde_json::from_value(v).map_err(shape)?),
            "Endpoints" => self
                .endpoints
                .push(serde_json::from_value(v).map_err(shape)?),
            k if k.ends_with("List") => {
                if let Some(Value::Array(items)) = v.get("items") {
                    for item in items.clone() {
                        self.add_value(item, path)?;
                    }
                }
            }
            _ => {}
        }
        Ok(())
    }
}

impl ClusterObjects {
    /// Every namespace the objects declare or live in, with the labels the
    /// manifests give it (none for those only named).
    pub fn namespace_labels(&self) -> BTreeMap<String, BTreeMap<String, String>> {
        let mut namespaces: BTreeMap<String, BTreeMap<String, String>> = BTreeMap::new();
        for ns in &self.namespaces {
            if let Some(name) = &ns.metadata.name {
                namespaces.insert(name.clone(), ns.metadata.labels.clone().unwrap_or_default());
            }
        }
        let used = self
            .pods
            .iter()
            .map(|p| &p.metadata.namespace)
            .chain(self.policies.iter().map(|p| &p.metadata.namespace))
            .chain(self.services.iter().map(|s| &s.metadata.namespace));
        for ns in used {
            namespaces
                .entry(ns.clone().unwrap_or_else(|| "default".into()))
                .or_default();
        }
        namespaces
    }

    /// Creates the Namespaces, the NetworkPolicies (unless `policies` is
    /// false: the demo applies them later with kubectl), the Services and
    /// the hand-written Endpoints through the API, as the admin. Pods are
    /// the caller's: who plays the kubelet decides how they run.
    pub fn create(&self, cp: &ControlPlane, policies: bool) -> Result<(), TestbedError> {
        for (name, labels) in &self.namespace_labels() {
            kubelet::ensure_namespace(cp, name, labels)?;
        }
        if policies {
            for policy in &self.policies {
                kubelet::apply_policy(cp, policy)?;
            }
        }
        for service in &self.services {
            kubelet::apply_service(cp, service)?;
        }
        for endpoints in &self.endpoints {
            kubelet::apply_endpoints(cp, endpoints)?;
        }
        Ok(())
    }

    /// `kubectl apply -f` of the NetworkPolicies (written to one file in
    /// the control plane's data folder), as a user applies them; returns
    /// what kubectl printed.
    pub fn apply_policies_with_kubectl(&self, cp: &ControlPlane) -> Result<String, TestbedError> {
        let items: Vec<serde_json::Value> = self
            .policies
            .iter()
            .map(|p| {
                serde_json::json!({
                    "apiVersion": "networking.k8s.io/v1",
                    "kind": "NetworkPolicy",
                    "metadata": {
                        "name": p.metadata.name,
                        "namespace": p.metadata.namespace.as_deref().unwrap_or("default"),
                        "labels": p.metadata.labels,
                    },
                    "spec": p.spec,
                })
            })
            .collect();
        let path = cp.dir().join("policies.json");
        let list = serde_json::json!({"apiVersion": "v1", "kind": "List", "items": items});
        std::fs::write(&path, list.to_string()).map_err(|source| TestbedError::Io {
            path: path.clone(),
            source,
        })?;
        cp.apply(&[path])
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_the_kinds_the_bed_creates() {
        let mut o = ClusterObjects::default();
        o.add_text(
            "apiVersion: v1\nkind: Namespace\nmetadata: {name: a}\n---\n\
             apiVersion: v1\nkind: Pod\nmetadata: {name: p, namespace: a}\nspec: {containers: [{name: c, image: x}]}\n---\n\
             apiVersion: v1\nkind: Service\nmetadata: {name: s, namespace: a}\nspec: {ports: [{port: 80}]}\n---\n\
             apiVersion: v1\nkind: List\nitems:\n- apiVersion: networking.k8s.io/v1\n  kind: NetworkPolicy\n  metadata: {name: n, namespace: a}\n  spec: {podSelector: {}}\n---\n\
             apiVersion: v1\nkind: Endpoints\nmetadata: {name: s, namespace: a}\nsubsets: [{addresses: [{ip: 192.0.2.1}], ports: [{port: 80}]}]\n---\n\
             apiVersion: v1\nkind: ConfigMap\nmetadata: {name: c}\n",
            Path::new("t.yaml"),
        )
        .unwrap();
        assert_eq!(
            (
                o.namespaces.len(),
                o.pods.len(),
                o.services.len(),
                o.policies.len(),
                o.endpoints.len()
            ),
            (1, 1, 1, 1, 1)
        );
        let err = o
            .add_text("kind: Pod\nspec: 3\n", Path::new("t.yaml"))
            .unwrap_err();
        assert!(err.is_bad_input(), "{err}");
    }
}
