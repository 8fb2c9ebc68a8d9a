//! Loading a cluster snapshot from manifest files: YAML (multi-document) or
//! JSON, single files, directories of them (optionally recursive) or stdin
//! (`-`), plain objects or `List`s.
//!
//! Only Namespaces, Pods (with `status.podIP`/`status.podIPs`, as the API
//! server reports them), Services, Endpoints and NetworkPolicies matter;
//! other kinds are skipped with a warning. Input is read the way `kubectl apply --validate=strict`
//! reads it: a field of the wrong type is an error naming its path, an
//! unknown field is recorded ([`Loaded::unknown_fields`]; an error under
//! [`Loaded::strict`], a warning under [`Loaded::lenient`]), and the API
//! server's own validation applies (names, labels, port names, addresses).
//! Every message names `file:line`, the object and the field.

mod check;
pub mod text;

use std::collections::BTreeMap;
use std::io::Read;
use std::net::IpAddr;
use std::path::{Path, PathBuf};

use k8s_openapi::api::core::v1::Node;
use k8s_openapi::api::networking::v1::NetworkPolicy;
use serde::de::DeserializeOwned;
use serde_json::Value;

use crate::model::cluster_policy::ClusterNetworkPolicy;
use crate::model::{ModelError, PolicyRef, Snapshot};
use text::{format_path, parse_path, Document, Segment};

/// Where something is: a file (`-` is stdin) and a 1-based line.
#[derive(Clone, Debug, Default, PartialEq, Eq, PartialOrd, Ord)]
pub struct Location {
    /// The file.
    pub path: PathBuf,
    /// 1-based line.
    pub line: usize,
}

impl std::fmt::Display for Location {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        if self.path == Path::new("-") {
            write!(f, "<stdin>:{}", self.line)
        } else {
            write!(f, "{}:{}", self.path.display(), self.line)
        }
    }
}

/// One problem with one field of one object.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub struct Diagnostic {
    /// Where the field (or the object) is.
    pub location: Location,
    /// `Kind namespace/name` (or `Kind name` for namespaces); empty when no
    /// object could be read.
    pub object: String,
    /// Path of the field (`spec.ingress[0].from`); empty for the whole
    /// document.
    pub field: String,
    /// What is wrong.
    pub message: String,
}

impl std::fmt::Display for Diagnostic {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}: ", self.location)?;
        if !self.object.is_empty() {
            write!(f, "{}: ", self.object)?;
        }
        if !self.field.is_empty() {
            write!(f, "{}: ", self.field)?;
        }
        f.write_str(&self.message)
    }
}

/// Problems loading manifests.
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
    /// Objects are invalid (syntax, types, unknown fields under
    /// [`Loaded::strict`], API validation, invalid NetworkPolicies): every
    /// problem found, each naming file, line, object and field.
    #[error("{}", join_lines(problems))]
    Invalid {
        /// The problems, in file order.
        problems: Vec<Diagnostic>,
    },
}

fn join_lines(problems: &[Diagnostic]) -> String {
    problems
        .iter()
        .map(|p| p.to_string())
        .collect::<Vec<_>>()
        .join("\n")
}

/// What [`load_paths`] read.
#[derive(Clone, Debug, Default)]
pub struct Loaded {
    /// The snapshot built from every object.
    pub snapshot: Snapshot,
    /// Things worth telling (skipped kinds, duplicate objects, pods sharing
    /// an address), each starting with `file:line`.
    pub warnings: Vec<String>,
    /// Where each object starts, keyed `Kind namespace/name` (`Namespace
    /// name` for namespaces).
    pub sources: BTreeMap<String, Location>,
    /// Fields the API does not know (typos such as `ingres`), which the
    /// objects were read without.
    pub unknown_fields: Vec<Diagnostic>,
    /// The problems of the invalid NetworkPolicies in the snapshot (they
    /// fail closed in the agent; the tools refuse them).
    pub invalid_policies: Vec<Diagnostic>,
    /// The texts read, and where each object is in them, to locate fields
    /// after loading ([`Loaded::locate`]).
    texts: Vec<std::sync::Arc<str>>,
    anchors: BTreeMap<String, Anchor>,
}

/// Where an object's text is: file text, document range, object start.
#[derive(Clone, Debug)]
struct Anchor {
    text: usize,
    doc: std::ops::Range<usize>,
    first_line: usize,
    anchor: usize,
    path: PathBuf,
}

impl Loaded {
    /// The file a NetworkPolicy came from.
    pub fn policy_source(&self, policy: &PolicyRef) -> Option<&Path> {
        self.policy_location(policy).map(|l| l.path.as_path())
    }

    /// Where a NetworkPolicy starts.
    pub fn policy_location(&self, policy: &PolicyRef) -> Option<&Location> {
        self.sources.get(&format!("NetworkPolicy {policy}"))
    }

    /// The `file:line` of `field` (`spec.egress[0].to`) of the object
    /// keyed `key` (as in [`Loaded::sources`]).
    pub fn locate(&self, key: &str, field: &str) -> Option<Location> {
        let a = self.anchors.get(key)?;
        let text = self.texts.get(a.text)?;
        let doc = Document {
            text: text.get(a.doc.clone())?,
            first_line: a.first_line,
            offset: a.doc.start,
        };
        Some(Location {
            path: a.path.clone(),
            line: doc.line_of(a.anchor, &parse_path(field)),
        })
    }

    /// For tools, as `kubectl apply --validate=strict`: unknown fields and
    /// invalid NetworkPolicies are errors.
    pub fn strict(self) -> Result<Self, ManifestError> {
        let mut problems = self.unknown_fields.clone();
        problems.extend(self.invalid_policies.iter().cloned());
        if problems.is_empty() {
            Ok(self)
        } else {
            problems.sort();
            Err(ManifestError::Invalid { problems })
        }
    }

    /// Like [`Loaded::strict`], but unknown fields are only warnings.
    pub fn lenient(mut self) -> Result<Self, ManifestError> {
        let unknown = std::mem::take(&mut self.unknown_fields);
        self.warnings
            .extend(unknown.iter().map(|d| format!("{d} (ignored)")));
        self.strict()
    }

    /// [`Loaded::strict`] or, with `lenient`, [`Loaded::lenient`].
    pub fn checked(self, lenient: bool) -> Result<Self, ManifestError> {
        if lenient {
            self.lenient()
        } else {
            self.strict()
        }
    }
}

/// Loads every manifest in `paths` (files, or directories whose `*.yaml`,
/// `*.yml` and `*.json` files are read in name order; `-` is stdin).
pub fn load_paths(paths: &[PathBuf]) -> Result<Loaded, ManifestError> {
    load_inputs(paths, false)
}

/// [`load_paths`], descending into subdirectories when `recursive` (as
/// `kubectl -R`).
pub fn load_inputs(paths: &[PathBuf], recursive: bool) -> Result<Loaded, ManifestError> {
    load_inputs_in(paths, recursive, None)
}

/// [`load_inputs`], with namespaced objects that name no namespace put in
/// `namespace` (as `kubectl apply -n`) instead of `default`.
pub fn load_inputs_in(
    paths: &[PathBuf],
    recursive: bool,
    namespace: Option<&str>,
) -> Result<Loaded, ManifestError> {
    let mut loader = Loader {
        namespace: namespace.map(str::to_string),
        ..Loader::default()
    };
    for path in paths {
        if path == Path::new("-") {
            let mut text = String::new();
            std::io::stdin()
                .read_to_string(&mut text)
                .map_err(|source| ManifestError::Io {
                    path: path.clone(),
                    source,
                })?;
            loader.text(&text, path);
            continue;
        }
        let mut files = Vec::new();
        collect_files(path, recursive, true, &mut files)?;
        for f in files {
            let text = std::fs::read_to_string(&f).map_err(|source| ManifestError::Io {
                path: f.clone(),
                source,
            })?;
            loader.text(&text, &f);
        }
    }
    loader.finish()
}

fn collect_files(
    path: &Path,
    recursive: bool,
    top: bool,
    out: &mut Vec<PathBuf>,
) -> Result<(), ManifestError> {
    let io = |source| ManifestError::Io {
        path: path.to_path_buf(),
        source,
    };
    let meta = std::fs::metadata(path).map_err(io)?;
    if !meta.is_dir() {
        out.push(path.to_path_buf());
        return Ok(());
    }
    if !top && !recursive {
        return Ok(());
    }
    let mut entries = Vec::new();
    for entry in std::fs::read_dir(path).map_err(io)? {
        entries.push(entry.map_err(io)?.path());
    }
    entries.sort();
    for p in entries {
        if p.is_dir() {
            collect_files(&p, recursive, false, out)?;
        } else {
            let ext = p.extension().and_then(|e| e.to_str()).unwrap_or_default();
            if matches!(ext, "yaml" | "yml" | "json") {
                out.push(p);
            }
        }
    }
    Ok(())
}

/// Loads manifests from text (YAML or JSON) into `loaded`; `path` is only
/// used in messages. Fails on the problems of this text.
pub fn load_str(text: &str, path: &Path, loaded: &mut Loaded) -> Result<(), ManifestError> {
    let mut loader = Loader {
        loaded: std::mem::take(loaded),
        ..Loader::default()
    };
    loader.text(text, path);
    let problems = std::mem::take(&mut loader.problems);
    *loaded = loader.loaded;
    if problems.is_empty() {
        Ok(())
    } else {
        Err(ManifestError::Invalid { problems })
    }
}

/// Loading state: what was read, and the problems so far (all reported).
#[derive(Default)]
struct Loader {
    loaded: Loaded,
    problems: Vec<Diagnostic>,
    /// The namespace of objects that name none (`None`: `default`).
    namespace: Option<String>,
}

/// Where an object's text is.
#[derive(Clone, Copy)]
struct Source<'a> {
    path: &'a Path,
    doc: Document<'a>,
    /// Byte offset in `doc` where the object starts.
    anchor: usize,
}

impl Source<'_> {
    fn at(&self, path: &[Segment]) -> Location {
        Location {
            path: self.path.to_path_buf(),
            line: self.doc.line_of(self.anchor, path),
        }
    }

    fn diagnostic(&self, object: &str, field: &str, message: String) -> Diagnostic {
        Diagnostic {
            location: self.at(&parse_path(field)),
            object: object.to_string(),
            field: field.to_string(),
            message,
        }
    }
}

impl Loader {
    fn text(&mut self, text: &str, path: &Path) {
        self.loaded.texts.push(std::sync::Arc::from(text));
        let trimmed = text.trim_start();
        let is_json = path.extension().and_then(|e| e.to_str()) == Some("json")
            || (path == Path::new("-") && trimmed.starts_with('{'));
        if is_json {
            let doc = Document {
                text,
                first_line: 1,
                offset: 0,
            };
            match serde_json::from_str::<Value>(text) {
                Ok(v) => self.object(
                    v,
                    Source {
                        path,
                        doc,
                        anchor: 0,
                    },
                ),
                Err(e) => self.problems.push(Diagnostic {
                    location: Location {
                        path: path.to_path_buf(),
                        line: e.line(),
                    },
                    object: String::new(),
                    field: String::new(),
                    message: format!("invalid JSON: {e}"),
                }),
            }
            return;
        }
        for doc in text::split_yaml(text) {
            match serde_norway::from_str::<Value>(doc.text) {
                Ok(Value::Null) => {}
                Ok(v) => {
                    let anchor = doc.content_start();
                    self.object(v, Source { path, doc, anchor });
                }
                Err(e) => {
                    let line = e.location().map_or(doc.first_line, |l| {
                        doc.first_line + l.line().saturating_sub(1)
                    });
                    self.problems.push(Diagnostic {
                        location: Location {
                            path: path.to_path_buf(),
                            line,
                        },
                        object: String::new(),
                        field: String::new(),
                        message: format!("invalid YAML: {e}"),
                    });
                }
            }
        }
    }

    fn warn(&mut self, at: &Location, text: String) {
        self.loaded.warnings.push(format!("{at}: {text}"));
    }

    fn object(&mut self, mut v: Value, src: Source<'_>) {
        let kind = v
            .get("kind")
            .and_then(Value::as_str)
            .unwrap_or_default()
            .to_string();
        if let Some(ns) = &self.namespace {
            let namespaced = matches!(
                kind.as_str(),
                "Pod" | "Service" | "Endpoints" | "NetworkPolicy"
            );
            if let Some(meta) = v.get_mut("metadata").and_then(Value::as_object_mut) {
                if namespaced && !meta.contains_key("namespace") {
                    meta.insert("namespace".into(), Value::from(ns.clone()));
                }
            }
        }
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
        let start = src.at(&[]);
        match kind.as_str() {
            "Namespace" => self.plain(
                v,
                &format!("Namespace {name}"),
                &src,
                check::namespace,
                |s, ns| s.upsert_namespace(ns).map(|n| format!("Namespace {n}")),
            ),
            "Pod" => self.plain(
                v,
                &format!("Pod {namespace}/{name}"),
                &src,
                check::pod,
                |s, pod| s.upsert_pod(pod).map(|r| format!("Pod {r}")),
            ),
            "Service" => self.plain(
                v,
                &format!("Service {namespace}/{name}"),
                &src,
                check::service,
                |s, svc| s.upsert_service(svc).map(|r| format!("Service {r}")),
            ),
            "Endpoints" => self.plain(
                v,
                &format!("Endpoints {namespace}/{name}"),
                &src,
                check::endpoints,
                |s, ep| s.upsert_endpoints(ep).map(|r| format!("Endpoints {r}")),
            ),
            "NetworkPolicy" => {
                let object = format!("NetworkPolicy {namespace}/{name}");
                let Some(np) = self.typed::<NetworkPolicy>(v, &object, &src) else {
                    return;
                };
                if self.validate(check::policy(&np), &object, &src) {
                    return;
                }
                match self.loaded.snapshot.upsert_policy(&np) {
                    Ok(r) => {
                        let object = format!("NetworkPolicy {r}");
                        self.loaded.invalid_policies.retain(|d| d.object != object);
                        let issues = self.loaded.snapshot.policies[&r].issues.clone();
                        for issue in issues {
                            let d = src.diagnostic(&object, &issue.field, issue.message);
                            self.loaded.invalid_policies.push(d);
                        }
                        self.record(object, start, &src);
                    }
                    Err(e) => self.model_error(e, &object, &src),
                }
            }
            "ClusterNetworkPolicy" => {
                let object = format!("ClusterNetworkPolicy {name}");
                let Some(cnp) = self.typed::<ClusterNetworkPolicy>(v, &object, &src) else {
                    return;
                };
                let name = self.loaded.snapshot.upsert_cluster_policy(&cnp);
                let object = format!("ClusterNetworkPolicy {name}");
                self.loaded.invalid_policies.retain(|d| d.object != object);
                let issues = self.loaded.snapshot.cluster_policies[&name].issues.clone();
                for issue in issues {
                    let d = src.diagnostic(&object, &issue.field, issue.message);
                    self.loaded.invalid_policies.push(d);
                }
                self.record(object, start, &src);
            }
            "Node" => self.plain(
                v,
                &format!("Node {name}"),
                &src,
                |_: &Node| Vec::new(),
                |s, node| s.upsert_node(node).map(|n| format!("Node {n}")),
            ),
            k if k == "List" || k.ends_with("List") => {
                let Some(Value::Array(items)) = v.get("items") else {
                    return;
                };
                for (i, item) in items.iter().enumerate() {
                    let at = [Segment::Key("items".into()), Segment::Index(i)];
                    let line = src.doc.line_of(src.anchor, &at);
                    // The item's own text starts at that line.
                    let anchor = offset_of_line(src.doc, line);
                    self.object(item.clone(), Source { anchor, ..src });
                }
            }
            "" => self.warn(&start, "skipped a document without kind".into()),
            other => self.warn(
                &start,
                format!("skipped {other} {namespace}/{name}: Palisade reads only Namespace, Pod, Node, Service, Endpoints, NetworkPolicy and ClusterNetworkPolicy"),
            ),
        }
    }

    /// Reads an object of a kind without issues of its own: typed (unknown
    /// fields recorded), validated by `check`, then put in the snapshot by
    /// `upsert`, which names the key it was recorded under.
    fn plain<T: DeserializeOwned>(
        &mut self,
        v: Value,
        object: &str,
        src: &Source<'_>,
        check: fn(&T) -> Vec<check::Problem>,
        upsert: impl FnOnce(&mut Snapshot, &T) -> Result<String, ModelError>,
    ) {
        let start = src.at(&[]);
        let Some(t) = self.typed::<T>(v, object, src) else {
            return;
        };
        if self.validate(check(&t), object, src) {
            return;
        }
        match upsert(&mut self.loaded.snapshot, &t) {
            Ok(key) => self.record(key, start, src),
            Err(e) => self.model_error(e, object, src),
        }
    }

    /// Reads `v` as `T`, recording unknown fields; a type error is a
    /// problem naming the field.
    fn typed<T: DeserializeOwned>(
        &mut self,
        v: Value,
        object: &str,
        src: &Source<'_>,
    ) -> Option<T> {
        let mut unknown: Vec<Vec<Segment>> = Vec::new();
        let mut note = |p: serde_ignored::Path<'_>| unknown.push(ignored_path(&p));
        // Ignored-field tracking outside, path tracking inside (the other
        // nesting loses fields of nested structs).
        let mut track = serde_path_to_error::Track::new();
        let result: Result<T, serde_json::Error> = serde_ignored::deserialize(
            serde_path_to_error::Deserializer::new(v, &mut track),
            &mut note,
        );
        for path in unknown {
            let field = format_path(&path);
            let leaf = match path.last() {
                Some(Segment::Key(k)) => k.clone(),
                _ => field.clone(),
            };
            self.loaded.unknown_fields.push(Diagnostic {
                location: src.at(&path),
                object: object.to_string(),
                field,
                message: format!("unknown field {leaf:?}"),
            });
        }
        match result {
            Ok(t) => Some(t),
            Err(e) => {
                let path: Vec<Segment> = track
                    .path()
                    .iter()
                    .filter_map(|s| match s {
                        serde_path_to_error::Segment::Seq { index } => Some(Segment::Index(*index)),
                        serde_path_to_error::Segment::Map { key } => {
                            Some(Segment::Key(key.clone()))
                        }
                        serde_path_to_error::Segment::Enum { variant } => {
                            Some(Segment::Key(variant.clone()))
                        }
                        serde_path_to_error::Segment::Unknown => None,
                    })
                    .collect();
                let field = format_path(&path);
                self.problems.push(Diagnostic {
                    location: src.at(&path),
                    object: object.to_string(),
                    field,
                    message: e.to_string(),
                });
                None
            }
        }
    }

    /// Records `problems` of an object; true if there were any.
    fn validate(&mut self, problems: Vec<check::Problem>, object: &str, src: &Source<'_>) -> bool {
        let any = !problems.is_empty();
        for (field, message) in problems {
            self.problems.push(src.diagnostic(object, &field, message));
        }
        any
    }

    fn model_error(&mut self, e: ModelError, object: &str, src: &Source<'_>) {
        let d = match e {
            ModelError::InvalidField { field, message, .. } => {
                src.diagnostic(object, &field, message)
            }
            ModelError::MissingName { field, .. } => {
                src.diagnostic(object, field, "is required".into())
            }
            other => src.diagnostic(object, "", other.to_string()),
        };
        self.problems.push(d);
    }

    /// Notes where an object starts; a second object of the same name
    /// replaces the first, with a warning naming both.
    fn record(&mut self, key: String, at: Location, src: &Source<'_>) {
        let file = self.loaded.texts.len().saturating_sub(1);
        let start = src.doc.offset;
        self.loaded.anchors.insert(
            key.clone(),
            Anchor {
                text: file,
                doc: start..start + src.doc.text.len(),
                first_line: src.doc.first_line,
                anchor: src.anchor,
                path: src.path.to_path_buf(),
            },
        );
        if let Some(first) = self.loaded.sources.get(&key).cloned() {
            self.warn(
                &at,
                format!("{key} is defined again (first at {first}); the later definition is used"),
            );
        }
        self.loaded.sources.insert(key, at);
    }

    fn finish(mut self) -> Result<Loaded, ManifestError> {
        self.shared_addresses();
        if self.problems.is_empty() {
            Ok(self.loaded)
        } else {
            Err(ManifestError::Invalid {
                problems: self.problems,
            })
        }
    }

    /// Two pods with one address: a stale export, or a pod the API server
    /// would never report; the tools cannot tell which one a packet is.
    fn shared_addresses(&mut self) {
        let mut by_ip: BTreeMap<IpAddr, Vec<String>> = BTreeMap::new();
        for (r, p) in &self.loaded.snapshot.pods {
            if p.host_network {
                continue;
            }
            for ip in &p.ips {
                by_ip.entry(*ip).or_default().push(r.to_string());
            }
        }
        for (ip, pods) in by_ip.into_iter().filter(|(_, p)| p.len() > 1) {
            let at = self
                .loaded
                .sources
                .get(&format!("Pod {}", pods[1]))
                .cloned()
                .unwrap_or_default();
            let first = self
                .loaded
                .sources
                .get(&format!("Pod {}", pods[0]))
                .cloned()
                .unwrap_or_default();
            self.warn(
                &at,
                format!(
                    "pods {} and {} (at {first}) both have IP {ip}; running pods never share an address, so one of them is stale",
                    pods[1], pods[0]
                ),
            );
        }
    }
}

/// Byte offset of 1-based file line `line` in `doc`.
fn offset_of_line(doc: Document<'_>, line: usize) -> usize {
    let skip = line.saturating_sub(doc.first_line);
    doc.text
        .split_inclusive('\n')
        .take(skip)
        .map(str::len)
        .sum()
}

fn ignored_path(p: &serde_ignored::Path<'_>) -> Vec<Segment> {
    let mut out = match p {
        serde_ignored::Path::Root => return Vec::new(),
        serde_ignored::Path::Seq { parent, .. }
        | serde_ignored::Path::Map { parent, .. }
        | serde_ignored::Path::Some { parent }
        | serde_ignored::Path::NewtypeStruct { parent }
        | serde_ignored::Path::NewtypeVariant { parent } => ignored_path(parent),
    };
    match p {
        serde_ignored::Path::Seq { index, .. } => out.push(Segment::Index(*index)),
        serde_ignored::Path::Map { key, .. } => out.push(Segment::Key(key.clone())),
        _ => {}
    }
    out
}

#[cfg(test)]
mod tests;
