//! The network configuration the runtime writes on stdin.

use std::path::PathBuf;
use std::time::Duration;

use serde::Deserialize;
use serde_json::Value;

/// CNI spec versions this plugin speaks. Chaining (`prevResult`) exists since
/// 0.3.0; STATUS and GC since 1.1.0.
pub const SUPPORTED_VERSIONS: &[&str] = &["0.3.0", "0.3.1", "0.4.0", "1.0.0", "1.1.0"];

/// The newest version in [`SUPPORTED_VERSIONS`], used when the runtime's
/// version is not known (VERSION, unreadable stdin).
pub const LATEST_VERSION: &str = "1.1.0";

/// How long ADD waits for the agent by default: the agent answers only once
/// the pod's policy is in the maps.
pub const DEFAULT_AGENT_TIMEOUT: Duration = Duration::from_secs(30);

/// The part of the network configuration this plugin reads; every other
/// field (including `type`, `runtimeConfig`, `args`) is ignored.
#[derive(Clone, Debug, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct NetConf {
    /// `cniVersion`, set by the runtime from the conflist.
    pub cni_version: String,
    /// Network name.
    #[serde(default)]
    pub name: String,
    /// Path of the agent's unix socket (default
    /// [`agent_api::DEFAULT_SOCKET`]).
    #[serde(default)]
    pub agent_socket: Option<PathBuf>,
    /// How long to wait for the agent, in seconds (default 30).
    #[serde(default)]
    pub agent_timeout_seconds: Option<u64>,
    /// The result of the previous plugin in the chain (required for ADD and
    /// CHECK), kept as raw JSON so it is passed on untouched.
    #[serde(default)]
    pub prev_result: Option<Value>,
    /// GC: the attachments the runtime still has (required for GC).
    #[serde(default, rename = "cni.dev/valid-attachments")]
    pub valid_attachments: Option<Vec<agent_api::Sandbox>>,
}

impl NetConf {
    /// The agent's socket path.
    pub fn socket(&self) -> PathBuf {
        self.agent_socket
            .clone()
            .unwrap_or_else(|| PathBuf::from(agent_api::DEFAULT_SOCKET))
    }

    /// How long to wait for the agent.
    pub fn timeout(&self) -> Duration {
        self.agent_timeout_seconds
            .map(Duration::from_secs)
            .unwrap_or(DEFAULT_AGENT_TIMEOUT)
    }

    /// Whether [`Self::cni_version`] is one this plugin speaks.
    pub fn version_supported(&self) -> bool {
        SUPPORTED_VERSIONS.contains(&self.cni_version.as_str())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_apply_and_unknown_fields_are_ignored() {
        let c: NetConf = serde_json::from_str(
            r#"{"cniVersion":"1.0.0","name":"cbr0","type":"palisade-cni","runtimeConfig":{"x":1}}"#,
        )
        .unwrap();
        assert_eq!(c.socket(), PathBuf::from(agent_api::DEFAULT_SOCKET));
        assert_eq!(c.timeout(), DEFAULT_AGENT_TIMEOUT);
        assert!(c.version_supported());
        assert!(c.prev_result.is_none());
    }

    /// Found by the `cni_input` fuzz target: bytes that are not UTF-8 in a
    /// field the plugin ignores do not stop it from reading its own (serde
    /// skips ignored strings unchecked); what it passes on, `prevResult`,
    /// is still checked.
    #[test]
    fn non_utf8_in_an_ignored_field_is_read_and_in_prev_result_refused() {
        let ignored = b"{\"cniVersion\":\"1.0.0\",\"type\":\"pali\x9b\xd2sade\",\"prevResult\":{}}";
        let c: NetConf = serde_json::from_slice(ignored).unwrap();
        assert!(c.prev_result.is_some());
        let passed_on = b"{\"cniVersion\":\"1.0.0\",\"prevResult\":{\"name\":\"\x9b\"}}";
        assert!(serde_json::from_slice::<NetConf>(passed_on).is_err());
    }

    #[test]
    fn socket_timeout_and_unknown_version() {
        let c: NetConf = serde_json::from_str(
            r#"{"cniVersion":"9.9.9","agentSocket":"/tmp/a.sock","agentTimeoutSeconds":2}"#,
        )
        .unwrap();
        assert_eq!(c.socket(), PathBuf::from("/tmp/a.sock"));
        assert_eq!(c.timeout(), Duration::from_secs(2));
        assert!(!c.version_supported());
    }
}
