//! Loading a cluster snapshot from manifest files: YAML (multi-document) or
//! JSON, single files or directories of them, plain objects or `List`s.
//!
//! Only Namespaces, Pods (with `status.podIP`/`status.podIPs`, as the API
//! server reports them), Services, Endpoints and NetworkPolicies matter;
//! other kinds are skipped with a warning.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use k8s_openapi::api::core::v1::{Endpoints, Namespace, Pod, Service};
use k8s_openapi::api::networking::v1::NetworkPolicy;
use serde::Deserialize;
use serde_json::Value;

use crate::model::{ModelError, PolicyRef, Snapshot};

/// Problems loading manifests. Every variant names the file.
#[derive(Debug, thiserror::Error)]
pub enum ManifestError {
    /// A file or directory could not be read.
    #[error("{path}: {source}")]
    Io {
        /// The path.
        path: PathBuf,
        /// The cause.
        #[source]
        source: std::io::Error,
    },
    /// A YAML document could not be parsed.
    #[error("{path}: document {document}: invalid YAML: {source}")]
    Yaml {
        /// The file.
        path: PathBuf,
        /// Index of the document in the file (0-based).
        document: usize,
        /// The cause.
        #[source]
        source: serde_norway::Error,
    },
    /// A JSON file could not be parsed.
    #[error("{path}: invalid JSON: {source}")]
    Json {
        /// The file.
        path: PathBuf,
        /// The cause.
        #[source]
        source: serde_json::Error,
    },
    /// An object does not have the shape of its kind.
    #[error("{path}: {kind} {object}: {source}")]
    Shape {
        /// The file.
        path: PathBuf,
        /// Object kind.
        kind: String,
        /// `namespace/name` (or name) as far as it could be read.
        object: String,
        /// The cause.
        #[source]
        source: serde_json::Error,
    },
    /// An object has a field whose value cannot be used.
    #[error("{path}: {source}")]
    Object {
        /// The file.
        path: PathBuf,
        /// The cause (names kind, object and field).
        #[source]
        source: ModelError,
    },
    /// A NetworkPolicy is invalid (see [`Loaded::strict`]).
    #[error("{path}: NetworkPolicy {object}: {field}: {message}")]
    InvalidPolicy {
        /// The file.
        path: PathBuf,
        /// `namespace/name`.
        object: String,
        /// Path of the field.
        field: String,
        /// What is wrong.
        message: String,
    },
}

/// What [`load_paths`] read.
#[derive(Clone, Debug, Default)]
pub struct Loaded {
    /// The snapshot built from every object.
    pub snapshot: Snapshot,
    /// Things skipped (other kinds, empty documents that are not objects...).
    pub warnings: Vec<String>,
    /// File each object came from, keyed `Kind namespace/name` (`Namespace
    /// name` for namespaces).
    pub sources: BTreeMap<String, PathBuf>,
}

impl Loaded {
    /// The file a NetworkPolicy came from.
    pub fn policy_source(&self, policy: &PolicyRef) -> Option<&Path> {
        self.sources
            .get(&format!("NetworkPolicy {policy}"))
            .map(PathBuf::as_path)
    }

    /// Fails on the first invalid NetworkPolicy (for tools, where bad input
    /// is an error rather than something to fail closed on).
    pub fn strict(self) -> Result<Self, ManifestError> {
        for (r, p) in &self.snapshot.policies {
            if let Some(issue) = p.issues.first() {
                return Err(ManifestError::InvalidPolicy {
                    path: self
                        .policy_source(r)
                        .map(Path::to_path_buf)
                        .unwrap_or_default(),
                    object: r.to_string(),
                    field: issue.field.clone(),
                    message: issue.message.clone(),
                });
            }
        }
        Ok(self)
    }
}

/// Loads every manifest in `paths` (files, or directories whose `*.yaml`,
/// `*.yml` and `*.json` files are read in name order).
pub fn load_paths(paths: &[PathBuf]) -> Result<Loaded, ManifestError> {
    let mut loaded = Loaded::default();
    for path in paths {
        let meta = std::fs::metadata(path).map_err(|source| ManifestError::Io {
            path: path.clone(),
            source,
        })?;
        if meta.is_dir() {
            let mut files = Vec::new();
            let entries = std::fs::read_dir(path).map_err(|source| ManifestError::Io {
                path: path.clone(),
                source,
            })?;
            for entry in entries {
                let entry = entry.map_err(|source| ManifestError::Io {
                    path: path.clone(),
                    source,
                })?;
                let p = entry.path();
                let ext = p.extension().and_then(|e| e.to_str()).unwrap_or_default();
                if p.is_file() && matches!(ext, "yaml" | "yml" | "json") {
                    files.push(p);
                }
            }
            files.sort();
            for f in files {
                load_file(&f, &mut loaded)?;
            }
        } else {
            load_file(path, &mut loaded)?;
        }
    }
    Ok(loaded)
}

/// Loads manifests from text (YAML or JSON); `path` is only used in
/// messages.
pub fn load_str(text: &str, path: &Path, loaded: &mut Loaded) -> Result<(), ManifestError> {
    let is_json = path.extension().and_then(|e| e.to_str()) == Some("json");
    if is_json {
        let v: Value = serde_json::from_str(text).map_err(|source| ManifestError::Json {
            path: path.to_path_buf(),
            source,
        })?;
        return add_object(v, path, loaded);
    }
    for (document, doc) in serde_norway::Deserializer::from_str(text).enumerate() {
        let v = Value::deserialize(doc).map_err(|source| ManifestError::Yaml {
            path: path.to_path_buf(),
            document,
            source,
        })?;
        if v.is_null() {
            continue;
        }
        add_object(v, path, loaded)?;
    }
    Ok(())
}

fn load_file(path: &Path, loaded: &mut Loaded) -> Result<(), ManifestError> {
    let text = std::fs::read_to_string(path).map_err(|source| ManifestError::Io {
        path: path.to_path_buf(),
        source,
    })?;
    load_str(&text, path, loaded)
}

fn add_object(v: Value, path: &Path, loaded: &mut Loaded) -> Result<(), ManifestError> {
    let kind = v
        .get("kind")
        .and_then(Value::as_str)
        .unwrap_or_default()
        .to_string();
    let name = v
        .pointer("/metadata/name")
        .and_then(Value::as_str)
        .unwrap_or("<unnamed>")
        .to_string();
    let namespace = v
        .pointer("/metadata/namespace")
        .and_then(Value::as_str)
        .unwrap_or("default")
        .to_string();
    let object = format!("{namespace}/{name}");
    let shape = |kind: &str, source| ManifestError::Shape {
        path: path.to_path_buf(),
        kind: kind.to_string(),
        object: object.clone(),
        source,
    };
    let model = |source| ManifestError::Object {
        path: path.to_path_buf(),
        source,
    };
    match kind.as_str() {
        "Namespace" => {
            let ns: Namespace = serde_json::from_value(v).map_err(|e| shape("Namespace", e))?;
            let n = loaded.snapshot.upsert_namespace(&ns).map_err(model)?;
            loaded
                .sources
                .insert(format!("Namespace {n}"), path.to_path_buf());
        }
        "Pod" => {
            let pod: Pod = serde_json::from_value(v).map_err(|e| shape("Pod", e))?;
            let r = loaded.snapshot.upsert_pod(&pod).map_err(model)?;
            loaded
                .sources
                .insert(format!("Pod {r}"), path.to_path_buf());
        }
        "NetworkPolicy" => {
            let np: NetworkPolicy =
                serde_json::from_value(v).map_err(|e| shape("NetworkPolicy", e))?;
            let r = loaded.snapshot.upsert_policy(&np).map_err(model)?;
            loaded
                .sources
                .insert(format!("NetworkPolicy {r}"), path.to_path_buf());
        }
        "Service" => {
            let svc: Service = serde_json::from_value(v).map_err(|e| shape("Service", e))?;
            let r = loaded.snapshot.upsert_service(&svc).map_err(model)?;
            loaded
                .sources
                .insert(format!("Service {r}"), path.to_path_buf());
        }
        "Endpoints" => {
            let ep: Endpoints = serde_json::from_value(v).map_err(|e| shape("Endpoints", e))?;
            let r = loaded.snapshot.upsert_endpoints(&ep).map_err(model)?;
            loaded
                .sources
                .insert(format!("Endpoints {r}"), path.to_path_buf());
        }
        k if k == "List" || k.ends_with("List") => {
            let items = match v.get("items") {
                Some(Value::Array(items)) => items.clone(),
                _ => Vec::new(),
            };
            for item in items {
                add_object(item, path, loaded)?;
            }
        }
        "" => loaded.warnings.push(format!(
            "{}: skipped a document without kind",
            path.display()
        )),
        other => loaded.warnings.push(format!(
            "{}: skipped {other} {object}: Palisade reads only Namespace, Pod, Service, Endpoints and NetworkPolicy",
            path.display()
        )),
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::{PodRef, Protocol};

    fn load(text: &str, name: &str) -> Result<Loaded, ManifestError> {
        let mut l = Loaded::default();
        load_str(text, Path::new(name), &mut l).map(|()| l)
    }

    const YAML: &str = r#"
apiVersion: v1
kind: Namespace
metadata: {name: prod, labels: {team: a}}
---
apiVersion: v1
kind: Pod
metadata: {name: web, namespace: prod, labels: {app: web}}
spec:
  containers:
  - name: c
    image: x
    ports: [{containerPort: 80, name: http}, {containerPort: 53, protocol: UDP}]
status:
  podIP: 10.0.0.1
  podIPs: [{ip: 10.0.0.1}, {ip: "2001:db8::1"}]
---
apiVersion: v1
kind: ConfigMap
metadata: {name: s}
---
apiVersion: v1
kind: Service
metadata: {name: web, namespace: prod}
spec: {clusterIP: 10.96.0.8, selector: {app: web}, ports: [{port: 8000, targetPort: http}]}
---
apiVersion: networking.k8s.io/v1
kind: NetworkPolicy
metadata: {name: p, namespace: prod}
spec:
  podSelector: {}
  egress: [{}]
"#;

    #[test]
    fn loads_yaml_with_defaults() {
        let l = load(YAML, "c.yaml").unwrap();
        let s = &l.snapshot;
        assert_eq!(
            s.namespaces["prod"].labels["kubernetes.io/metadata.name"],
            "prod"
        );
        let pod = &s.pods[&PodRef::new("prod", "web")];
        assert_eq!(pod.ips.len(), 2);
        assert_eq!(pod.ports[0].name.as_deref(), Some("http"));
        assert_eq!(pod.ports[1].protocol, Protocol::Udp);
        let p = &s.policies[&PodRef::new("prod", "p")];
        assert!(p.ingress.is_some() && p.egress.is_some());
        assert_eq!(l.warnings.len(), 1);
        let svc = PodRef::new("prod", "web");
        let sp = s.services[&svc].port(8000, Protocol::Tcp).unwrap();
        let b = s.backends(&svc, sp);
        assert_eq!((b[0].port, b.len()), (80, 2), "{b:?}");
    }

    #[test]
    fn loads_json_list() {
        let json = r#"{"kind":"List","items":[{"kind":"Pod","metadata":{"name":"a","namespace":"x"},
            "status":{"podIP":"10.0.0.2"}}]}"#;
        let l = load(json, "l.json").unwrap();
        assert_eq!(l.snapshot.pods.len(), 1);
    }

    #[test]
    fn errors_name_file_object_and_field() {
        let bad = "kind: Pod\nmetadata: {name: a, namespace: x}\nstatus: {podIP: 10.0.0.300}\n";
        let e = load(bad, "bad.yaml").unwrap_err().to_string();
        assert!(
            e.contains("bad.yaml") && e.contains("x/a") && e.contains("status.podIP"),
            "{e}"
        );
        let bad = "kind: NetworkPolicy\nmetadata: {name: p, namespace: x}\nspec:\n  ingress:\n  - from: [{ipBlock: {cidr: 10.0.0.0/33}}]\n";
        let mut l = load(bad, "np.yaml").unwrap();
        l.sources
            .insert("NetworkPolicy x/p".into(), "np.yaml".into());
        let e = l.strict().unwrap_err().to_string();
        assert!(
            e.contains("np.yaml")
                && e.contains("x/p")
                && e.contains("spec.ingress[0].from[0].ipBlock.cidr"),
            "{e}"
        );
    }
}
