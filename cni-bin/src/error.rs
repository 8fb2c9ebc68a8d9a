//! Everything that can make a CNI command fail, and the one place that maps
//! each failure to a CNI error code.

use serde_json::{json, Value};

/// A failed CNI command.
#[derive(Debug, thiserror::Error)]
pub enum PluginError {
    /// A required `CNI_*` variable (or `CNI_ARGS` key) is missing or empty.
    #[error("the environment variable {name} is missing or empty")]
    MissingEnv {
        /// Variable (or `CNI_ARGS` key) name.
        name: &'static str,
    },
    /// `CNI_COMMAND` names no command of the spec.
    #[error("unknown CNI_COMMAND {command:?}")]
    UnknownCommand {
        /// What the runtime sent.
        command: String,
    },
    /// Reading the configuration from stdin failed.
    #[error("cannot read the network configuration from stdin: {source}")]
    ReadStdin {
        /// Cause.
        #[source]
        source: std::io::Error,
    },
    /// The configuration on stdin is not valid JSON of the expected shape.
    #[error("cannot decode the network configuration: {source}")]
    Decode {
        /// Cause.
        #[source]
        source: serde_json::Error,
    },
    /// The configuration's `cniVersion` is one this plugin does not speak.
    #[error("CNI version {version} is not supported (supported: {supported})")]
    IncompatibleVersion {
        /// Requested version.
        version: String,
        /// Comma-separated supported versions.
        supported: String,
    },
    /// The configuration is readable but unusable (e.g. no `prevResult`: the
    /// plugin was not chained after a main plugin).
    #[error("invalid network configuration: {reason}")]
    InvalidConfig {
        /// What is wrong.
        reason: String,
    },
    /// The agent could not be reached or did not answer in time.
    #[error("{source}")]
    AgentUnavailable {
        /// Cause.
        #[source]
        source: agent_api::ClientError,
    },
    /// STATUS: the agent is not ready to serve ADDs.
    #[error("the Palisade agent is not ready: {reason}")]
    NotReady {
        /// Why.
        reason: String,
    },
    /// The agent answered but refused (it could not enforce the pod's policy).
    #[error("the Palisade agent refused: {message}")]
    AgentRefused {
        /// The agent's message.
        message: String,
    },
    /// Writing the result to stdout failed.
    #[error("cannot write the result to stdout: {source}")]
    WriteStdout {
        /// Cause.
        #[source]
        source: std::io::Error,
    },
}

impl PluginError {
    /// The CNI error code: 0-99 are the spec's well-known codes, 100+ are
    /// Palisade's own.
    pub fn code(&self) -> u32 {
        match self {
            Self::IncompatibleVersion { .. } => 1,
            Self::MissingEnv { .. } | Self::UnknownCommand { .. } => 4,
            Self::ReadStdin { .. } | Self::WriteStdout { .. } => 5,
            Self::Decode { .. } => 6,
            Self::InvalidConfig { .. } => 7,
            // The agent may be starting (DaemonSet rollout): the runtime retries.
            Self::AgentUnavailable { .. } => 11,
            // STATUS: "plugin not available".
            Self::NotReady { .. } => 50,
            Self::AgentRefused { .. } => 100,
        }
    }

    /// A short message for the `msg` field.
    pub fn short(&self) -> &'static str {
        match self {
            Self::IncompatibleVersion { .. } => "incompatible CNI version",
            Self::MissingEnv { .. } | Self::UnknownCommand { .. } => {
                "invalid necessary environment variables"
            }
            Self::ReadStdin { .. } | Self::WriteStdout { .. } => "I/O failure",
            Self::Decode { .. } => "failed to decode content",
            Self::InvalidConfig { .. } => "invalid network config",
            Self::AgentUnavailable { .. } => "Palisade agent unavailable, try again later",
            Self::NotReady { .. } => "plugin not available",
            Self::AgentRefused { .. } => "Palisade agent could not enforce the pod's policy",
        }
    }

    /// The error document the spec wants on stdout.
    pub fn to_json(&self, cni_version: &str) -> Value {
        json!({
            "cniVersion": cni_version,
            "code": self.code(),
            "msg": self.short(),
            "details": self.to_string(),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn codes_follow_the_spec() {
        assert_eq!(PluginError::MissingEnv { name: "CNI_NETNS" }.code(), 4);
        let decode = serde_json::from_str::<Value>("{").unwrap_err();
        assert_eq!(PluginError::Decode { source: decode }.code(), 6);
        let e = PluginError::InvalidConfig {
            reason: "no prevResult".into(),
        };
        let doc = e.to_json("1.0.0");
        assert_eq!(doc["code"], 7);
        assert_eq!(doc["cniVersion"], "1.0.0");
        assert_eq!(doc["msg"], "invalid network config");
        assert!(doc["details"].as_str().unwrap().contains("no prevResult"));
        assert_eq!(
            PluginError::AgentRefused {
                message: "x".into()
            }
            .code(),
            100
        );
    }
}
