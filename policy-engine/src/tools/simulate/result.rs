//! One judged probe and its JSON form.

use serde_json::{json, Value};

use super::Probe;
use crate::tools::probe::{BackendConnection, Connection, End};

/// One judged probe.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ProbeResult {
    /// The probe.
    pub probe: Probe,
    /// The datapath's decision. For a probe to a Service: the one for its
    /// first backend (see `backends`; without backends, a connection to
    /// the ClusterIP that no endpoint judges).
    pub connection: Connection,
    /// For a probe to a Service: the decision for each backend. Empty for
    /// probes to pods and addresses.
    pub backends: Vec<BackendConnection>,
}

impl ProbeResult {
    /// Whether the probe passes: for a Service, on every backend (a Service
    /// without backends answers nothing: denied).
    pub fn allowed(&self) -> bool {
        match self.probe.to {
            End::Service(_) => {
                !self.backends.is_empty() && self.backends.iter().all(|b| b.connection.allowed())
            }
            _ => self.connection.allowed(),
        }
    }

    /// Whether every backend of a Service probe gets the same verdict.
    pub fn backends_agree(&self) -> bool {
        self.backends
            .windows(2)
            .all(|w| w[0].connection.allowed() == w[1].connection.allowed())
    }

    /// A short reason (see [`Connection::reason`]; `no-backends` for a
    /// Service without any).
    pub fn reason(&self) -> String {
        match self.probe.to {
            End::Service(_) if self.backends.is_empty() => "no-backends".into(),
            End::Service(_) => match self.backends.iter().find(|b| !b.connection.allowed()) {
                Some(b) => b.connection.reason(),
                None => self.connection.reason(),
            },
            _ => self.connection.reason(),
        }
    }

    /// Why the packet could not be sent as written, if it could not (for a
    /// Service: the first backend's note; see [`Connection::note`]).
    pub fn note(&self) -> Option<&str> {
        match self.probe.to {
            End::Service(_) => self
                .backends
                .iter()
                .find_map(|b| b.connection.note.as_deref()),
            _ => self.connection.note.as_deref(),
        }
    }

    /// The JSON lines for this result: one, or for a Service whose backends
    /// disagree, one per backend (each with `backend`). A probe that cannot
    /// be sent as written carries `note`.
    pub fn to_json_lines(&self) -> Vec<Value> {
        let head = json!({
            "from": self.probe.from.to_string(),
            "to": self.probe.to.to_string(),
            "port": self.probe.port,
            "protocol": self.probe.protocol.to_string(),
        });
        let line = |allowed: bool, reason: String, note: Option<&str>| {
            let mut v = head.clone();
            v["allowed"] = allowed.into();
            v["reason"] = reason.into();
            if let Some(note) = note {
                v["note"] = note.into();
            }
            v
        };
        if !matches!(self.probe.to, End::Service(_)) || self.backends_agree() {
            let mut v = line(self.allowed(), self.reason(), self.note());
            if matches!(self.probe.to, End::Service(_)) {
                v["backends"] = self
                    .backends
                    .iter()
                    .map(|b| Value::from(b.backend.to_string()))
                    .collect();
            }
            return vec![v];
        }
        self.backends
            .iter()
            .map(|b| {
                let c = &b.connection;
                let mut v = line(c.allowed(), c.reason(), c.note.as_deref());
                v["backend"] = b.backend.to_string().into();
                v
            })
            .collect()
    }

    /// The JSON line for this result (the first of [`Self::to_json_lines`]).
    pub fn to_json(&self) -> Value {
        self.to_json_lines().swap_remove(0)
    }
}
