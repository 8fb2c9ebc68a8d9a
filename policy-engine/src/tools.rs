//! User-facing tools on top of the engine: `simulate` (and its what-if,
//! [`whatif`]), `explain`, `lint`.
//! The CLI wiring lives in `policy-agent`; these are library functions that
//! write to any `Write` and return a [`ToolError`] whose
//! [`ToolError::exit_code`] the CLI uses.

pub mod explain;
pub mod html;
pub mod lint;
pub mod probe;
pub mod simulate;
pub mod table;
pub mod whatif;

use std::path::PathBuf;
use std::str::FromStr;

use crate::manifest::ManifestError;
use crate::model::ModelError;

/// Output format, as kubectl's `-o`/`--output`.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum Output {
    /// A table with a header line (the default).
    #[default]
    Table,
    /// The table with more columns.
    Wide,
    /// JSON (one object a line for streams of results).
    Json,
    /// YAML.
    Yaml,
    /// One self-contained HTML page (`simulate` only; the other tools
    /// write their table).
    Html,
}

impl FromStr for Output {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s.to_ascii_lowercase().as_str() {
            "table" | "text" => Ok(Output::Table),
            "wide" => Ok(Output::Wide),
            "json" => Ok(Output::Json),
            "yaml" => Ok(Output::Yaml),
            "html" => Ok(Output::Html),
            _ => Err(format!(
                "unknown output format {s:?} (expected table, wide, json, yaml or html)"
            )),
        }
    }
}

/// Where the tools read manifests from (`-f`/`--filename`).
#[derive(Clone, Debug, Default)]
pub struct Input {
    /// Files, folders, or `-` for stdin.
    pub paths: Vec<PathBuf>,
    /// Descend into subfolders (`-R`).
    pub recursive: bool,
    /// Unknown fields are warnings, not errors (`--lenient`).
    pub lenient: bool,
    /// Policies in audit mode (`policy.palisade.dev/mode: audit`) count as
    /// enforced (`--as-enforced`): the view they are audited against.
    /// Without it, the tools show what the datapath enforces, without
    /// them.
    pub as_enforced: bool,
    /// The namespace of namespaced objects that name none (kubectl's
    /// `--namespace`); `None` = `default`.
    pub namespace: Option<String>,
}

impl Input {
    /// Reads the manifests; invalid objects and (unless lenient) unknown
    /// fields are errors.
    pub fn load(&self) -> Result<crate::manifest::Loaded, ToolError> {
        let mut loaded = crate::manifest::load_inputs_in(
            &self.paths,
            self.recursive,
            self.namespace.as_deref(),
        )?
        .checked(self.lenient)?;
        if self.as_enforced {
            loaded.snapshot.enforce_audited();
        }
        Ok(loaded)
    }
}

impl From<Vec<PathBuf>> for Input {
    fn from(paths: Vec<PathBuf>) -> Self {
        Input {
            paths,
            ..Input::default()
        }
    }
}

/// Whether a tool failed only because its reader went away (`| head`):
/// the CLI ends quietly then.
pub fn is_broken_pipe(e: &ToolError) -> bool {
    matches!(e, ToolError::Write { source } if source.kind() == std::io::ErrorKind::BrokenPipe)
}

/// Errors of the tools.
#[derive(Debug, thiserror::Error)]
pub enum ToolError {
    /// The manifests could not be loaded or contain an invalid policy
    /// (names file, line, object and field).
    #[error(transparent)]
    Manifest(#[from] ManifestError),
    /// A probe line is not valid JSON or lacks a field.
    #[error("{path}:{line}: invalid probe: {message}")]
    BadProbe {
        /// The probes file (`-` for stdin).
        path: PathBuf,
        /// 1-based line number.
        line: usize,
        /// What is wrong.
        message: String,
    },
    /// A probe names something the cluster does not have.
    #[error("{path}:{line}: {source}")]
    Probe {
        /// The probes file (`-` for stdin).
        path: PathBuf,
        /// 1-based line number.
        line: usize,
        /// The cause.
        #[source]
        source: probe::ProbeError,
    },
    /// A command-line argument is invalid (`--from`, `--port`...).
    #[error("invalid {arg}: {source}")]
    Argument {
        /// The argument.
        arg: &'static str,
        /// The cause.
        #[source]
        source: ModelError,
    },
    /// A `--from`/`--to` end cannot be judged.
    #[error("{source}")]
    End {
        /// The cause.
        #[source]
        source: probe::ProbeError,
    },
    /// Reading the probes failed.
    #[error("reading {path}: {source}")]
    Read {
        /// The file.
        path: PathBuf,
        /// The cause.
        #[source]
        source: std::io::Error,
    },
    /// Writing the output failed.
    #[error("writing output: {source}")]
    Write {
        /// The cause.
        #[source]
        source: std::io::Error,
    },
    /// `--delete` names a NetworkPolicy the cluster does not have.
    #[error("--delete {policy}: the cluster has no NetworkPolicy {policy}")]
    NoSuchPolicy {
        /// The policy named.
        policy: crate::model::PolicyRef,
    },
}

impl ToolError {
    /// Process exit code: 2 for bad input (manifests, probes, arguments),
    /// 1 for I/O failures on the output.
    pub fn exit_code(&self) -> i32 {
        match self {
            ToolError::Write { .. } => 1,
            _ => 2,
        }
    }
}

pub(crate) fn write_err(source: std::io::Error) -> ToolError {
    ToolError::Write { source }
}

/// Opens a probes file (`-` for stdin); `None` for none.
pub(crate) fn open_probes(
    path: Option<&std::path::Path>,
) -> Result<Option<Box<dyn std::io::BufRead>>, ToolError> {
    match path {
        None => Ok(None),
        Some(p) if p == std::path::Path::new("-") => Ok(Some(Box::new(std::io::stdin().lock()))),
        Some(p) => {
            let f = std::fs::File::open(p).map_err(|source| ToolError::Read {
                path: p.to_path_buf(),
                source,
            })?;
            Ok(Some(Box::new(std::io::BufReader::new(f))))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Without `--as-enforced` the tools judge as the datapath enforces
    /// (the audited policy left out); with it, as if it were enforced.
    #[test]
    fn as_enforced_counts_audited_policies() {
        let dir = std::env::temp_dir().join(format!("palisade-as-enforced-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let file = dir.join("cluster.yaml");
        std::fs::write(
            &file,
            "apiVersion: v1
kind: Pod
metadata: {name: a, namespace: default, labels: {app: a}}
spec: {containers: [{name: c, image: x}]}
status: {podIP: 10.0.0.1, podIPs: [{ip: 10.0.0.1}]}
---
apiVersion: v1
kind: Pod
metadata: {name: b, namespace: default, labels: {app: b}}
spec: {containers: [{name: c, image: x}]}
status: {podIP: 10.0.0.2, podIPs: [{ip: 10.0.0.2}]}
---
apiVersion: networking.k8s.io/v1
kind: NetworkPolicy
metadata: {name: deny, namespace: default, annotations: {policy.palisade.dev/mode: audit}}
spec: {podSelector: {matchLabels: {app: a}}, policyTypes: [Ingress]}
",
        )
        .unwrap();
        let allowed = |as_enforced: bool| {
            let opts = explain::Options {
                input: Input {
                    paths: vec![file.clone()],
                    as_enforced,
                    ..Input::default()
                },
                from: "default/b".into(),
                to: "default/a".into(),
                port: "80".into(),
                output: Output::Table,
            };
            explain::run(&opts, &mut Vec::new()).map(|e| e.allowed)
        };
        let (enforced, as_enforced) = (allowed(false), allowed(true));
        let _ = std::fs::remove_dir_all(&dir);
        assert!(enforced.unwrap(), "audited: not enforced");
        assert!(!as_enforced.unwrap(), "as enforced: denied");
    }
}
