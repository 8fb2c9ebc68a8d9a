//! The protocol between `palisade-cni` (the chained CNI plugin) and
//! `policy-agent` (the node agent): one JSON request and one JSON response,
//! each a single line, over the agent's unix socket.
//!
//! The plugin's ADD sends [`Request::Add`] and returns to the runtime only
//! after the agent answers [`Response::Ok`], which the agent does only once
//! the endpoint's programs are attached and its policy is in the maps (fail
//! closed: until then the endpoint's packets are dropped).
#![deny(missing_docs)]

use std::io::{BufRead, BufReader, Write};
use std::os::unix::net::UnixStream;
use std::path::Path;
use std::time::Duration;

use serde::{Deserialize, Serialize};

/// Default path of the agent's socket on a node.
pub const DEFAULT_SOCKET: &str = "/run/palisade/cni.sock";

/// A pod's network attachment as the CNI plugin saw it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Attachment {
    /// `CNI_CONTAINERID`.
    pub container_id: String,
    /// `CNI_NETNS`.
    pub netns: String,
    /// `CNI_IFNAME` (the interface inside the pod).
    pub ifname: String,
    /// `K8S_POD_NAMESPACE` from `CNI_ARGS`.
    pub pod_namespace: String,
    /// `K8S_POD_NAME` from `CNI_ARGS`.
    pub pod_name: String,
    /// Interfaces of the previous result without a sandbox: the host-side
    /// veth is among them (the agent picks the veth).
    pub host_interfaces: Vec<String>,
    /// The pod's addresses from the previous result, without prefix length.
    pub ips: Vec<String>,
}

/// What the plugin asks.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "op", rename_all = "camelCase", rename_all_fields = "camelCase")]
pub enum Request {
    /// A pod was wired: enforce its policy, answer when it is enforced.
    Add(Attachment),
    /// A pod is going away: forget its endpoint.
    Del {
        /// `CNI_CONTAINERID`.
        container_id: String,
    },
    /// Is the endpoint still enforced as the agent expects?
    Check {
        /// `CNI_CONTAINERID`.
        container_id: String,
    },
    /// Is the agent ready to serve ADDs (CNI STATUS)? [`Response::Ok`]
    /// only while its cluster state is in sync and its last apply
    /// succeeded; otherwise [`Response::Error`] says why.
    Status,
    /// CNI GC: forget every endpoint whose sandbox is not in `valid` (the
    /// runtime's `cni.dev/valid-attachments`).
    Gc {
        /// The attachments the runtime still has.
        valid: Vec<Sandbox>,
    },
    /// Stream verdicts: the agent answers with one [`FlowRecord`] a line
    /// until the client hangs up.
    Flows {
        /// Only flows of this pod (`namespace/name`), either direction.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        pod: Option<String>,
        /// Only this verdict (`allowed`, `dropped`, or `audit` for
        /// `would-drop`).
        #[serde(default, skip_serializing_if = "Option::is_none")]
        verdict: Option<String>,
    },
    /// Verdict counters per endpoint, direction and verdict.
    Counters,
    /// What the agent enforces (`policy-agent status`): answered with
    /// [`Response::AgentStatus`].
    AgentStatus,
}

/// One local endpoint as the agent enforces it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct EndpointStatus {
    /// The pod (`namespace/name`).
    pub pod: String,
    /// Its sandbox (`CNI_CONTAINERID`).
    pub container_id: String,
    /// Host-side veth.
    pub interface: String,
    /// Endpoint id in the maps.
    pub endpoint_id: u32,
    /// Addresses.
    pub ips: Vec<String>,
    /// The pod's identity number, when it has one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub identity: Option<u32>,
    /// Isolated for ingress (some policy selects it for Ingress).
    pub ingress_isolated: bool,
    /// Isolated for egress.
    pub egress_isolated: bool,
    /// Allow entries in the maps for its ingress.
    pub ingress_rules: usize,
    /// Allow entries in the maps for its egress.
    pub egress_rules: usize,
    /// The policies selecting it (`namespace/name`).
    pub policies: Vec<String>,
    /// The map its policy entries do not fit (`policy`): it is denied all
    /// traffic both ways until they do (isolation and rules above are then
    /// what the datapath enforces: isolated, no allow entry).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub map_full: Option<String>,
}

/// What `policy-agent status` shows.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct AgentStatus {
    /// The node the agent runs on, if it was told.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub node: Option<String>,
    /// Compiled states written to the dataplane so far.
    pub applies: u64,
    /// When the last one was written (Unix time, milliseconds).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_apply_unix_ms: Option<u64>,
    /// Policies the last compile found invalid (they fail closed).
    pub invalid_policies: usize,
    /// Policies over their budget (too many entries or address classes,
    /// or prefixes beyond the CIDR map's room): they fail closed for the
    /// pods they select, each with why.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub over_budget_policies: Vec<String>,
    /// The enforced endpoints, by pod.
    pub endpoints: Vec<EndpointStatus>,
    /// Pods of this node (with an address, not hostNetwork) that have no
    /// enforced endpoint: an alarm.
    pub unenforced: Vec<String>,
    /// Host veths the agent isolated both ways because it knows no pod
    /// for them while some local pod cannot be found by its address
    /// (one of them is likely that pod's).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub quarantined: Vec<String>,
}

/// One attachment the runtime still has, as CNI GC names it.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct Sandbox {
    /// `CNI_CONTAINERID` of the attachment.
    #[serde(rename = "containerID")]
    pub container_id: String,
    /// `CNI_IFNAME` of the attachment (the interface inside the pod).
    pub ifname: String,
}

/// One verdict, resolved to pod names by the agent.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct FlowRecord {
    /// Kernel monotonic time of the packet, nanoseconds.
    pub time_ns: u64,
    /// The local pod the verdict was taken for (`namespace/name`), or
    /// `endpoint <id>` if it is gone.
    pub pod: String,
    /// `ingress` (into `pod`) or `egress` (out of it).
    pub direction: String,
    /// `allowed`, `dropped` or `would-drop` (passed, but the policies in
    /// audit mode isolating the pod would drop it).
    pub verdict: String,
    /// Why, in a word or two (`no rule`, `not ready`, `policy revision`, ...).
    pub reason: String,
    /// `TCP`, `UDP`, `SCTP`, `ICMP`, `ICMPv6` or the number.
    pub protocol: String,
    /// Source address.
    pub src: String,
    /// Source port (0 for ICMP).
    pub sport: u16,
    /// Destination address.
    pub dst: String,
    /// Destination port (0 for ICMP).
    pub dport: u16,
    /// The other end as a pod (`namespace/name`), when it is one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub peer: Option<String>,
    /// For an allowed new connection, the NetworkPolicy
    /// (`namespace/name`) whose rule allowed it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub policy: Option<String>,
    /// That rule, as its field in the policy (`spec.ingress[0]`;
    /// NetworkPolicy rules carry no name).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rule: Option<String>,
    /// For a connection dropped because no rule matched (or cut after a
    /// policy change): the policies that isolate the pod in that
    /// direction (`namespace/name`), none of whose rules admits it; for a
    /// would-drop, the policies in audit mode isolating it.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub isolated_by: Vec<String>,
    /// Drops of the same pod held back since its previous record (drop
    /// reports are rate-limited per pod): this record stands for
    /// `1 + suppressed` drops.
    #[serde(default, skip_serializing_if = "is_zero")]
    pub suppressed: u32,
    /// For a connection to a Service ClusterIP judged on its backend: the
    /// Service (`namespace/name`, several comma-separated when the backend
    /// serves more than one); `dst`/`dport`/`peer` are then the backend.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub service: Option<String>,
}

fn is_zero(n: &u32) -> bool {
    *n == 0
}

/// One verdict counter.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct CounterRow {
    /// The pod (`namespace/name`).
    pub pod: String,
    /// `ingress` or `egress`.
    pub direction: String,
    /// `allowed` or `dropped`.
    pub verdict: String,
    /// Events counted since the agent started.
    pub count: u64,
}

/// What the agent answers.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "result", rename_all = "camelCase")]
pub enum Response {
    /// Done.
    Ok,
    /// Not done; `message` says why.
    Error {
        /// A sentence naming the pod and the cause.
        message: String,
    },
    /// The answer to [`Request::Counters`].
    Counters {
        /// Every counter, ordered by pod, direction, verdict.
        counters: Vec<CounterRow>,
    },
    /// The answer to [`Request::AgentStatus`].
    AgentStatus {
        /// The status.
        status: AgentStatus,
    },
}

/// Failures of [`call`].
#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    /// The socket could not be reached.
    #[error("cannot reach the Palisade agent at {path}: {source}")]
    Connect {
        /// Socket path.
        path: String,
        /// Cause.
        #[source]
        source: std::io::Error,
    },
    /// Sending or receiving failed (includes the timeout).
    #[error("talking to the Palisade agent at {path}: {source}")]
    Io {
        /// Socket path.
        path: String,
        /// Cause.
        #[source]
        source: std::io::Error,
    },
    /// The agent's answer was not a [`Response`].
    #[error("the Palisade agent at {path} answered something unreadable: {source}")]
    Decode {
        /// Socket path.
        path: String,
        /// Cause.
        #[source]
        source: serde_json::Error,
    },
}

/// Connects and writes `request` as one line; `timeout` bounds every later
/// read and write on the returned stream (`None`: no bound).
fn send(
    socket: &Path,
    request: &Request,
    timeout: Option<Duration>,
) -> Result<UnixStream, ClientError> {
    let path = socket.display().to_string();
    let io = |source| ClientError::Io {
        path: path.clone(),
        source,
    };
    let mut stream = UnixStream::connect(socket).map_err(|source| ClientError::Connect {
        path: path.clone(),
        source,
    })?;
    stream.set_read_timeout(timeout).map_err(io)?;
    stream.set_write_timeout(timeout).map_err(io)?;
    let mut line = serde_json::to_vec(request).map_err(|source| ClientError::Decode {
        path: path.clone(),
        source,
    })?;
    line.push(b'\n');
    stream.write_all(&line).map_err(io)?;
    Ok(stream)
}

/// Sends one request and waits up to `timeout` for the answer.
pub fn call(socket: &Path, request: &Request, timeout: Duration) -> Result<Response, ClientError> {
    let path = socket.display().to_string();
    let io = |source| ClientError::Io {
        path: path.clone(),
        source,
    };
    let stream = send(socket, request, Some(timeout))?;
    let mut answer = String::new();
    BufReader::new(stream).read_line(&mut answer).map_err(io)?;
    serde_json::from_str(&answer).map_err(|source| ClientError::Decode { path, source })
}

/// Sends [`Request::Flows`] and calls `each` for every record until the
/// agent hangs up or `each` returns `false`.
pub fn stream_flows(
    socket: &Path,
    request: &Request,
    mut each: impl FnMut(FlowRecord) -> bool,
) -> Result<(), ClientError> {
    let path = socket.display().to_string();
    let io = |source| ClientError::Io {
        path: path.clone(),
        source,
    };
    let stream = send(socket, request, None)?;
    for line in BufReader::new(stream).lines() {
        let line = line.map_err(io)?;
        if let Ok(Response::Error { message }) = serde_json::from_str::<Response>(&line) {
            return Err(ClientError::Io {
                path: path.clone(),
                source: std::io::Error::other(message),
            });
        }
        let record: FlowRecord =
            serde_json::from_str(&line).map_err(|source| ClientError::Decode {
                path: path.clone(),
                source,
            })?;
        if !each(record) {
            break;
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn wire_format_is_tagged_json() {
        let r = Request::Del {
            container_id: "abc".into(),
        };
        let s = serde_json::to_string(&r).unwrap();
        assert_eq!(s, r#"{"op":"del","containerId":"abc"}"#);
        let back: Request = serde_json::from_str(&s).unwrap();
        assert_eq!(back, r);
        let gc = Request::Gc {
            valid: vec![Sandbox {
                container_id: "abc".into(),
                ifname: "eth0".into(),
            }],
        };
        let s = serde_json::to_string(&gc).unwrap();
        assert_eq!(
            s,
            r#"{"op":"gc","valid":[{"containerID":"abc","ifname":"eth0"}]}"#
        );
        assert_eq!(serde_json::from_str::<Request>(&s).unwrap(), gc);
        let e: Response = serde_json::from_str(r#"{"result":"error","message":"x"}"#).unwrap();
        assert_eq!(
            e,
            Response::Error {
                message: "x".into()
            }
        );
    }
}
