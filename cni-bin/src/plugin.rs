//! The CNI commands: read the parameters, talk to the agent, answer the
//! runtime.

use std::io::{Read, Write};
use std::net::IpAddr;
use std::path::Path;
use std::time::Duration;

use agent_api::{Attachment, ClientError, Request, Response};
use serde_json::{json, Value};

use crate::config::{NetConf, LATEST_VERSION, SUPPORTED_VERSIONS};
use crate::env::{parse_cni_args, Environment};
use crate::error::PluginError;

/// The standard streams of one invocation.
pub struct Streams<'a> {
    /// The network configuration comes in here.
    pub stdin: &'a mut dyn Read,
    /// Results and error documents go out here.
    pub stdout: &'a mut dyn Write,
    /// Free-form log lines go here.
    pub stderr: &'a mut dyn Write,
}

/// The commands of the CNI spec.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Command {
    Add,
    Del,
    Check,
    Status,
    Gc,
    Version,
}

impl Command {
    fn parse(raw: &str) -> Result<Self, PluginError> {
        Ok(match raw {
            "ADD" => Self::Add,
            "DEL" => Self::Del,
            "CHECK" => Self::Check,
            "STATUS" => Self::Status,
            "GC" => Self::Gc,
            "VERSION" => Self::Version,
            other => {
                return Err(PluginError::UnknownCommand {
                    command: other.to_string(),
                })
            }
        })
    }
}

/// How the plugin reaches the agent: [`SocketAgent`] in the real plugin,
/// something else in tests and fuzzing.
pub trait AgentClient {
    /// Sends `request` to the agent at `socket` and waits up to `timeout`
    /// for its answer.
    fn call(
        &self,
        socket: &Path,
        request: &Request,
        timeout: Duration,
    ) -> Result<Response, ClientError>;
}

/// The agent behind its unix socket ([`agent_api::call`]).
#[derive(Clone, Copy, Debug, Default)]
pub struct SocketAgent;

impl AgentClient for SocketAgent {
    fn call(
        &self,
        socket: &Path,
        request: &Request,
        timeout: Duration,
    ) -> Result<Response, ClientError> {
        agent_api::call(socket, request, timeout)
    }
}

/// Runs one CNI invocation and returns the process exit code: 0 on success
/// (with the result, if any, on stdout), 1 with a CNI error document on
/// stdout otherwise.
pub fn run(env: &dyn Environment, streams: Streams<'_>) -> i32 {
    run_with(env, streams, &SocketAgent)
}

/// [`run`], reaching the agent through `agent`.
pub fn run_with(env: &dyn Environment, streams: Streams<'_>, agent: &dyn AgentClient) -> i32 {
    let mut version = LATEST_VERSION.to_string();
    let outcome = dispatch(env, streams.stdin, streams.stderr, agent, &mut version);
    let (code, doc) = match outcome {
        Ok(None) => return 0,
        Ok(Some(doc)) => (0, doc),
        Err(e) => {
            // Best effort: the error document on stdout is what counts.
            let _ = writeln!(streams.stderr, "palisade-cni: {e}");
            (1, e.to_json(&version))
        }
    };
    match write_json(streams.stdout, &doc) {
        Ok(()) => code,
        Err(e) => {
            let _ = writeln!(streams.stderr, "palisade-cni: {e}");
            1
        }
    }
}

fn write_json(out: &mut dyn Write, doc: &Value) -> Result<(), PluginError> {
    let mut bytes = serde_json::to_vec(doc).map_err(|source| PluginError::WriteStdout {
        source: source.into(),
    })?;
    bytes.push(b'\n');
    out.write_all(&bytes)
        .and_then(|()| out.flush())
        .map_err(|source| PluginError::WriteStdout { source })
}

/// Runs the command; `version` is updated to the configuration's version once
/// it is known to be supported, so errors are reported in it.
fn dispatch(
    env: &dyn Environment,
    stdin: &mut dyn Read,
    stderr: &mut dyn Write,
    agent: &dyn AgentClient,
    version: &mut String,
) -> Result<Option<Value>, PluginError> {
    let command = Command::parse(&required(env, "CNI_COMMAND")?)?;
    if command == Command::Version {
        return Ok(Some(json!({
            "cniVersion": LATEST_VERSION,
            "supportedVersions": SUPPORTED_VERSIONS,
        })));
    }
    let conf = read_config(stdin)?;
    if !conf.version_supported() {
        return Err(PluginError::IncompatibleVersion {
            version: conf.cni_version.clone(),
            supported: SUPPORTED_VERSIONS.join(", "),
        });
    }
    version.clone_from(&conf.cni_version);
    match command {
        Command::Add => add(env, &conf, agent).map(Some),
        Command::Del => del(env, &conf, agent, stderr).map(|()| None),
        Command::Check => check(env, &conf, agent).map(|()| None),
        Command::Status => status(&conf, agent).map(|()| None),
        Command::Gc => gc(&conf, agent, stderr).map(|()| None),
        Command::Version => Ok(None),
    }
}

fn read_config(stdin: &mut dyn Read) -> Result<NetConf, PluginError> {
    let mut raw = Vec::new();
    stdin
        .read_to_end(&mut raw)
        .map_err(|source| PluginError::ReadStdin { source })?;
    serde_json::from_slice(&raw).map_err(|source| PluginError::Decode { source })
}

fn required(env: &dyn Environment, name: &'static str) -> Result<String, PluginError> {
    env.var(name)
        .filter(|v| !v.is_empty())
        .ok_or(PluginError::MissingEnv { name })
}

/// ADD: tell the agent, wait until it enforces, pass `prevResult` on.
fn add(
    env: &dyn Environment,
    conf: &NetConf,
    agent: &dyn AgentClient,
) -> Result<Value, PluginError> {
    let container_id = required(env, "CNI_CONTAINERID")?;
    let netns = required(env, "CNI_NETNS")?;
    let ifname = required(env, "CNI_IFNAME")?;
    let args = parse_cni_args(&env.var("CNI_ARGS").unwrap_or_default());
    let pod_arg = |name: &'static str| {
        args.get(name)
            .filter(|v| !v.is_empty())
            .cloned()
            .ok_or(PluginError::MissingEnv { name })
    };
    let pod_namespace = pod_arg("K8S_POD_NAMESPACE")?;
    let pod_name = pod_arg("K8S_POD_NAME")?;
    let prev = prev_result(conf)?;
    let attachment = Attachment {
        container_id,
        netns,
        ifname,
        pod_namespace,
        pod_name,
        host_interfaces: host_interfaces(prev),
        ips: pod_ips(prev)?,
    };
    ask_agent(conf, agent, &Request::Add(attachment))?;
    let mut result = prev.clone();
    if let Some(obj) = result.as_object_mut() {
        obj.insert("cniVersion".into(), Value::String(conf.cni_version.clone()));
    }
    Ok(result)
}

/// DEL: best effort. The agent also forgets endpoints whose pods are gone, and
/// DEL must succeed when repeated, so an unreachable agent is only logged.
fn del(
    env: &dyn Environment,
    conf: &NetConf,
    agent: &dyn AgentClient,
    stderr: &mut dyn Write,
) -> Result<(), PluginError> {
    let container_id = required(env, "CNI_CONTAINERID")?;
    if let Err(e) = ask_agent(
        conf,
        agent,
        &Request::Del {
            container_id: container_id.clone(),
        },
    ) {
        let _ = writeln!(
            stderr,
            "palisade-cni: DEL {container_id}: {e} (ignored: the agent cleans up on its own)"
        );
    }
    Ok(())
}

/// CHECK: the agent confirms the endpoint is still enforced.
fn check(
    env: &dyn Environment,
    conf: &NetConf,
    agent: &dyn AgentClient,
) -> Result<(), PluginError> {
    let container_id = required(env, "CNI_CONTAINERID")?;
    prev_result(conf)?;
    ask_agent(conf, agent, &Request::Check { container_id })
}

/// GC: the agent forgets every endpoint whose sandbox the runtime no
/// longer lists. An unreachable agent is only logged, as for DEL: a
/// starting agent drops endpoints whose interface is gone on its own.
fn gc(conf: &NetConf, agent: &dyn AgentClient, stderr: &mut dyn Write) -> Result<(), PluginError> {
    let valid = conf
        .valid_attachments
        .clone()
        .ok_or_else(|| PluginError::InvalidConfig {
            reason: "GC without cni.dev/valid-attachments".into(),
        })?;
    match ask_agent(conf, agent, &Request::Gc { valid }) {
        Err(PluginError::AgentUnavailable { source }) => {
            let _ = writeln!(
                stderr,
                "palisade-cni: GC: {source} (ignored: the agent cleans up on its own)"
            );
            Ok(())
        }
        other => other,
    }
}

/// STATUS: ready iff the agent says so.
fn status(conf: &NetConf, agent: &dyn AgentClient) -> Result<(), PluginError> {
    ask_agent(conf, agent, &Request::Status).map_err(|e| PluginError::NotReady {
        reason: match e {
            PluginError::AgentRefused { message } => message,
            other => other.to_string(),
        },
    })
}

fn ask_agent(
    conf: &NetConf,
    agent: &dyn AgentClient,
    request: &Request,
) -> Result<(), PluginError> {
    let answer = agent
        .call(&conf.socket(), request, conf.timeout())
        .map_err(|source| PluginError::AgentUnavailable { source })?;
    match answer {
        Response::Ok => Ok(()),
        Response::Error { message } => Err(PluginError::AgentRefused { message }),
        // Answers meant for other clients of the growing protocol are never
        // an "ok" (the allow keeps this building while there are none).
        #[allow(unreachable_patterns)]
        other => Err(PluginError::AgentRefused {
            message: format!("unexpected answer {other:?}"),
        }),
    }
}

fn prev_result(conf: &NetConf) -> Result<&Value, PluginError> {
    match &conf.prev_result {
        Some(v @ Value::Object(_)) => Ok(v),
        Some(_) => Err(PluginError::InvalidConfig {
            reason: "prevResult is not a JSON object".into(),
        }),
        None => Err(PluginError::InvalidConfig {
            reason: "no prevResult: palisade-cni must be chained after a main plugin \
                     (flannel, bridge, ...) in a .conflist"
                .into(),
        }),
    }
}

/// Names of the result's interfaces that live on the host (no `sandbox`).
fn host_interfaces(prev: &Value) -> Vec<String> {
    prev.get("interfaces")
        .and_then(Value::as_array)
        .into_iter()
        .flatten()
        .filter(|i| {
            i.get("sandbox")
                .and_then(Value::as_str)
                .is_none_or(str::is_empty)
        })
        .filter_map(|i| i.get("name").and_then(Value::as_str))
        .map(str::to_string)
        .collect()
}

/// The pod's addresses, without prefix length. A result without any address
/// cannot be enforced, so it is refused (fail closed).
fn pod_ips(prev: &Value) -> Result<Vec<String>, PluginError> {
    let invalid = |reason: String| PluginError::InvalidConfig { reason };
    let entries = prev
        .get("ips")
        .and_then(Value::as_array)
        .ok_or_else(|| invalid("prevResult has no \"ips\" list".into()))?;
    let mut ips = Vec::with_capacity(entries.len());
    for entry in entries {
        let address = entry
            .get("address")
            .and_then(Value::as_str)
            .ok_or_else(|| invalid(format!("prevResult ip entry without address: {entry}")))?;
        let bare = address.split_once('/').map_or(address, |(ip, _)| ip);
        let ip: IpAddr = bare
            .parse()
            .map_err(|_| invalid(format!("prevResult address {address:?} is not an IP")))?;
        ips.push(ip.to_string());
    }
    if ips.is_empty() {
        return Err(invalid("prevResult lists no IP address".into()));
    }
    Ok(ips)
}

#[cfg(test)]
mod tests;
