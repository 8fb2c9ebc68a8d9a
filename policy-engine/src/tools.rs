//! User-facing tools on top of the engine: `simulate`, `explain`, `lint`.
//! The CLI wiring lives in `policy-agent`; these are library functions that
//! write to any `Write` and return a [`ToolError`] whose
//! [`ToolError::exit_code`] the CLI uses.

pub mod explain;
pub mod lint;
pub mod probe;
pub mod simulate;

use std::path::PathBuf;

use crate::manifest::ManifestError;
use crate::model::ModelError;

/// Errors of the tools.
#[derive(Debug, thiserror::Error)]
pub enum ToolError {
    /// The manifests could not be loaded or contain an invalid policy
    /// (names file, object and field).
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
