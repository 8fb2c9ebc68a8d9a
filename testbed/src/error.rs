//! The test bed's errors.

use std::path::PathBuf;
use std::time::Duration;

use crate::probe::ProbeError;

/// Why the test bed could not be built or used.
#[derive(Debug, thiserror::Error)]
pub enum TestbedError {
    /// The probes are malformed or name pods that do not exist (bad input).
    #[error(transparent)]
    Probes(#[from] ProbeError),
    /// The cluster manifests could not be loaded (bad input).
    #[error("loading the cluster manifests: {source}")]
    Manifest {
        /// The loader's error (names file, object and field).
        #[source]
        source: policy_engine::manifest::ManifestError,
    },
    /// The cluster cannot be laid out on one bridge (bad input): e.g. an
    /// outside address inside the pod subnet, or no room for the pods.
    #[error("cannot lay out the cluster: {reason}")]
    Layout {
        /// What does not fit.
        reason: String,
    },
    /// A needed program is not where it should be.
    #[error("{what} not found at {path} (build it first, or set PALISADE_BIN_DIR)")]
    MissingBinary {
        /// Which program.
        what: String,
        /// Where it was looked for.
        path: PathBuf,
    },
    /// The machine lacks something the test bed needs (e.g. bpffs mounted
    /// at /sys/fs/bpf, root).
    #[error("environment: {reason}")]
    Environment {
        /// What is missing.
        reason: String,
    },
    /// A helper command could not be started.
    #[error("cannot run `{command}`: {source}")]
    Spawn {
        /// The command line.
        command: String,
        /// Cause.
        #[source]
        source: std::io::Error,
    },
    /// A helper command failed.
    #[error("`{command}` failed ({status}): {stderr}")]
    Command {
        /// The command line.
        command: String,
        /// Its exit status.
        status: String,
        /// What it wrote on stderr.
        stderr: String,
    },
    /// A helper did not finish in time.
    #[error("{what} did not finish within {after:?}")]
    Timeout {
        /// What was waited for.
        what: String,
        /// The limit.
        after: Duration,
    },
    /// A namespace could not be entered or a socket made inside it.
    #[error("network namespace {name}: {source}")]
    Netns {
        /// The namespace.
        name: String,
        /// Cause.
        #[source]
        source: std::io::Error,
    },
    /// A CNI plugin failed for a pod.
    #[error("CNI {command} of pod {pod} failed in plugin {plugin}: {message}{}", stderr_suffix(.stderr))]
    Cni {
        /// `ADD` or `DEL`.
        command: &'static str,
        /// The pod, `namespace/name`.
        pod: String,
        /// The plugin type.
        plugin: String,
        /// The plugin's error message (its CNI error `msg`/`details`).
        message: String,
        /// What the plugin wrote on stderr.
        stderr: String,
    },
    /// The agent did not come up, or died.
    #[error("policy-agent: {reason}\n--- agent log tail ({log}) ---\n{log_tail}")]
    Agent {
        /// What went wrong.
        reason: String,
        /// The agent's log file.
        log: PathBuf,
        /// Its last lines.
        log_tail: String,
    },
    /// A control-plane process (etcd, kube-apiserver,
    /// kube-controller-manager, kube-proxy) did not come up, or died.
    #[error("{name}: {reason}\n--- {name} log tail ({log}) ---\n{log_tail}")]
    Daemon {
        /// Which process.
        name: String,
        /// What went wrong.
        reason: String,
        /// Its log file.
        log: PathBuf,
        /// Its last lines.
        log_tail: String,
    },
    /// The Kubernetes API refused or failed a request of the test bed.
    #[error("Kubernetes API: {what}: {source}")]
    Kube {
        /// What the test bed was doing (names the object).
        what: String,
        /// Cause.
        #[source]
        source: Box<dyn std::error::Error + Send + Sync>,
    },
    /// A file or folder the test bed owns could not be written.
    #[error("{path}: {source}")]
    Io {
        /// The path.
        path: PathBuf,
        /// Cause.
        #[source]
        source: std::io::Error,
    },
    /// The async runtime for servers and probes could not start.
    #[error("cannot start the probe runtime: {source}")]
    Runtime {
        /// Cause.
        #[source]
        source: std::io::Error,
    },
}

fn stderr_suffix(stderr: &str) -> String {
    if stderr.trim().is_empty() {
        String::new()
    } else {
        format!(" (stderr: {})", stderr.trim())
    }
}

impl TestbedError {
    /// Whether the error is the user's input (probes, manifests, layout)
    /// rather than the machine or the code.
    pub fn is_bad_input(&self) -> bool {
        matches!(
            self,
            TestbedError::Probes(_) | TestbedError::Manifest { .. } | TestbedError::Layout { .. }
        )
    }

    /// The process exit status a CLI should use: 2 for bad input, 1 for
    /// anything else (1 is also what [`crate::mismatches`] > 0 maps to).
    pub fn exit_code(&self) -> i32 {
        if self.is_bad_input() {
            2
        } else {
            1
        }
    }
}
