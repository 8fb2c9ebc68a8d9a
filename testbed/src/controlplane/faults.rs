//! Faults a real cluster has, on demand: the API server going away and
//! coming back, and etcd compacting the history a watcher would resume
//! from.

use serde_json::Value;

use super::{ControlPlane, API_READY_TIMEOUT, ETCD_PORT};
use crate::daemon::Daemon;
use crate::error::TestbedError;
use crate::netns::{self, netns_path};

const APISERVER: &str = "kube-apiserver";

impl ControlPlane {
    /// Stops kube-apiserver (SIGTERM, as a restart or an upgrade does);
    /// etcd, the controllers and kube-proxy keep running. Idempotent.
    pub fn stop_apiserver(&self) {
        self.resources.with(|r| {
            for d in r.daemons.iter_mut().filter(|d| d.name() == APISERVER) {
                d.stop();
            }
            r.daemons.retain(|d| d.name() != APISERVER);
        });
    }

    /// Starts kube-apiserver again as it was first started (same port,
    /// certificates and etcd) and waits until it is ready.
    pub fn start_apiserver(&self) -> Result<(), TestbedError> {
        let daemon = Daemon::start(self.apiserver.clone())?;
        self.resources.with(|r| r.daemons.push(daemon));
        self.wait_ready(APISERVER, API_READY_TIMEOUT, |cp| cp.api_ready())
    }

    /// [`Self::stop_apiserver`] then [`Self::start_apiserver`].
    pub fn restart_apiserver(&self) -> Result<(), TestbedError> {
        self.stop_apiserver();
        self.start_apiserver()
    }

    /// Compacts etcd's history up to its current revision (physically, as
    /// the API server's periodic compaction does), through etcd's JSON
    /// gateway inside the control-plane namespace. A watch resumed from an
    /// older resourceVersion then gets `410 Gone`. Returns the revision.
    pub fn compact_etcd(&self) -> Result<u64, TestbedError> {
        let range = self.etcd_call("range", r#"{"key":"AA=="}"#)?;
        let revision = range["header"]["revision"]
            .as_str()
            .and_then(|r| r.parse::<u64>().ok())
            .ok_or_else(|| TestbedError::Environment {
                reason: format!("etcd answered a range without a revision: {range}"),
            })?;
        self.etcd_call(
            "compaction",
            &format!(r#"{{"revision":"{revision}","physical":true}}"#),
        )?;
        Ok(revision)
    }

    /// POSTs `body` to etcd's `/v3/kv/<call>` and returns the answer.
    fn etcd_call(&self, call: &str, body: &str) -> Result<Value, TestbedError> {
        let net = format!("--net={}", netns_path(&self.netns).display());
        let url = format!("http://127.0.0.1:{ETCD_PORT}/v3/kv/{call}");
        let out = netns::run(
            "nsenter",
            &[
                &net, "curl", "-sS", "--fail", "-X", "POST", &url, "-d", body,
            ],
        )?;
        serde_json::from_str(&out).map_err(|e| TestbedError::Environment {
            reason: format!("etcd's answer to {call} is not JSON ({e}): {out}"),
        })
    }
}
