//! The CNI plugin's whole invocation: `CNI_*` environment, `CNI_ARGS`,
//! the network configuration on stdin (raw bytes, or JSON shaped like a
//! runtime's with fuzzed fields) and the agent's answer. The plugin must
//! never panic, must exit 0 or 1, and must print either nothing, a result,
//! or a CNI error document; an ADD that succeeds returns the previous
//! result with only `cniVersion` set, and only after the agent said yes.
#![no_main]

use std::cell::RefCell;
use std::collections::HashMap;
use std::path::Path;
use std::time::Duration;

use agent_api::{ClientError, Request, Response};
use arbitrary::{Arbitrary, Unstructured};
use cni_bin::{run_with, AgentClient, Streams};
use libfuzzer_sys::fuzz_target;
use serde_json::{json, Value};

const COMMANDS: [&str; 7] = ["ADD", "DEL", "CHECK", "STATUS", "GC", "VERSION", "add"];
const VARS: [&str; 5] = [
    "CNI_CONTAINERID",
    "CNI_NETNS",
    "CNI_IFNAME",
    "CNI_PATH",
    "CNI_COMMAND",
];
const VERSIONS: [&str; 5] = ["1.1.0", "1.0.0", "0.3.1", "0.2.0", ""];

#[derive(Arbitrary, Debug)]
enum Answer {
    Ok,
    Error(String),
    Counters,
    Unreachable,
    Unreadable,
}

#[derive(Arbitrary, Debug)]
struct Ip {
    address: String,
    known: Option<([u8; 4], u8)>,
}

#[derive(Arbitrary, Debug)]
struct Iface {
    name: String,
    sandbox: Option<String>,
}

#[derive(Arbitrary, Debug)]
enum Stdin {
    Raw(Vec<u8>),
    Conf {
        version: u8,
        raw_version: Option<String>,
        name: Option<String>,
        timeout: Option<u64>,
        prev: Option<Prev>,
        valid: Option<Vec<(String, String)>>,
        extra: Option<(String, String)>,
    },
}

#[derive(Arbitrary, Debug)]
enum Prev {
    NotAnObject(String),
    Result {
        ips: Option<Vec<Ip>>,
        interfaces: Vec<Iface>,
    },
}

#[derive(Arbitrary, Debug)]
struct Input {
    command: Result<u8, String>,
    vars: Vec<(u8, String)>,
    pod: Option<(String, String)>,
    cni_args: Option<String>,
    stdin: Stdin,
    answer: Answer,
}

struct FakeAgent {
    answer: Answer,
    asked: RefCell<Vec<Request>>,
}

impl AgentClient for FakeAgent {
    fn call(&self, socket: &Path, request: &Request, _: Duration) -> Result<Response, ClientError> {
        self.asked.borrow_mut().push(request.clone());
        let path = socket.display().to_string();
        match &self.answer {
            Answer::Ok => Ok(Response::Ok),
            Answer::Error(message) => Ok(Response::Error {
                message: message.clone(),
            }),
            Answer::Counters => Ok(Response::Counters {
                counters: Vec::new(),
            }),
            Answer::Unreachable => Err(ClientError::Connect {
                path,
                source: std::io::Error::from(std::io::ErrorKind::NotFound),
            }),
            Answer::Unreadable => Err(ClientError::Decode {
                path,
                source: serde_json::from_str::<Value>("{").unwrap_err(),
            }),
        }
    }
}

fn stdin_bytes(stdin: &Stdin) -> Vec<u8> {
    let Stdin::Conf {
        version,
        raw_version,
        name,
        timeout,
        prev,
        valid,
        extra,
    } = stdin
    else {
        let Stdin::Raw(bytes) = stdin else {
            return Vec::new();
        };
        return bytes.clone();
    };
    let mut conf = json!({
        "cniVersion": raw_version.clone().unwrap_or_else(
            || VERSIONS[usize::from(*version) % VERSIONS.len()].to_string()),
        "type": "palisade-cni",
    });
    if let Some(n) = name {
        conf["name"] = json!(n);
    }
    if let Some(t) = timeout {
        conf["agentTimeoutSeconds"] = json!(t);
    }
    if let Some((k, v)) = extra {
        conf[k.as_str()] = json!(v);
    }
    match prev {
        None => {}
        Some(Prev::NotAnObject(s)) => conf["prevResult"] = json!(s),
        Some(Prev::Result { ips, interfaces }) => {
            let mut p = json!({
                "interfaces": interfaces.iter().map(|i| match &i.sandbox {
                    Some(s) => json!({"name": i.name, "sandbox": s}),
                    None => json!({"name": i.name}),
                }).collect::<Vec<_>>(),
            });
            if let Some(ips) = ips {
                p["ips"] = ips
                    .iter()
                    .map(|ip| match ip.known {
                        Some((a, len)) => json!({"address": format!(
                            "{}.{}.{}.{}/{len}", a[0], a[1], a[2], a[3])}),
                        None => json!({"address": ip.address}),
                    })
                    .collect();
            }
            conf["prevResult"] = p;
        }
    }
    if let Some(v) = valid {
        conf["cni.dev/valid-attachments"] = v
            .iter()
            .map(|(c, i)| json!({"containerID": c, "ifname": i}))
            .collect();
    }
    serde_json::to_vec(&conf).unwrap_or_default()
}

/// A structured input: environment, configuration and answer chosen by
/// `arbitrary`.
fn structured(input: Input) -> (HashMap<String, String>, Vec<u8>, Answer) {
    let command = match &input.command {
        Ok(i) => COMMANDS[usize::from(*i) % COMMANDS.len()].to_string(),
        Err(raw) => raw.clone(),
    };
    let mut env: HashMap<String, String> = HashMap::new();
    env.insert("CNI_COMMAND".into(), command);
    for (i, value) in &input.vars {
        env.insert(VARS[usize::from(*i) % VARS.len()].into(), value.clone());
    }
    let mut args = input.cni_args.clone().unwrap_or_default();
    if let Some((ns, name)) = &input.pod {
        args.push_str(&format!(";K8S_POD_NAMESPACE={ns};K8S_POD_NAME={name}"));
    }
    env.insert("CNI_ARGS".into(), args);
    (env, stdin_bytes(&input.stdin), input.answer)
}

/// A written input: `KEY=VALUE` lines (the environment, and `ANSWER=` for
/// the agent: ok, error, counters, unreachable, unreadable), a blank line,
/// then stdin as is. The seeds are written so.
fn written(data: &[u8]) -> (HashMap<String, String>, Vec<u8>, Answer) {
    let split = data
        .windows(2)
        .position(|w| w == b"\n\n")
        .map_or((data, &[][..]), |i| (&data[..i], &data[i + 2..]));
    let mut env = HashMap::new();
    let mut answer = Answer::Ok;
    for line in String::from_utf8_lossy(split.0).lines() {
        let Some((k, v)) = line.split_once('=') else {
            continue;
        };
        if k == "ANSWER" {
            answer = match v {
                "ok" => Answer::Ok,
                "counters" => Answer::Counters,
                "unreachable" => Answer::Unreachable,
                "unreadable" => Answer::Unreadable,
                other => Answer::Error(other.to_string()),
            };
        } else {
            env.insert(k.to_string(), v.to_string());
        }
    }
    (env, split.1.to_vec(), answer)
}

fuzz_target!(|data: &[u8]| {
    // A leading zero byte: structured; anything else: written.
    let (env, stdin, answer) = match data.split_first() {
        Some((0, rest)) => match Input::arbitrary_take_rest(Unstructured::new(rest)) {
            Ok(input) => structured(input),
            Err(_) => return,
        },
        _ => written(data),
    };
    let command = env.get("CNI_COMMAND").cloned().unwrap_or_default();
    let agent = FakeAgent {
        answer,
        asked: RefCell::new(Vec::new()),
    };
    let (mut out, mut err) = (Vec::new(), Vec::new());
    let code = run_with(
        &env,
        Streams {
            stdin: &mut &stdin[..],
            stdout: &mut out,
            stderr: &mut err,
        },
        &agent,
    );
    assert!(code == 0 || code == 1, "exit code {code}");
    let printed: Option<Value> = if out.is_empty() {
        None
    } else {
        assert_eq!(out.last(), Some(&b'\n'), "stdout ends with a newline");
        Some(serde_json::from_slice(&out).expect("stdout is one JSON document"))
    };
    if code == 1 {
        let doc = printed.expect("an error document on failure");
        assert!(doc["code"].is_u64(), "error code: {doc}");
        assert!(doc["msg"].is_string(), "error msg: {doc}");
        assert!(doc["cniVersion"].is_string(), "error version: {doc}");
        return;
    }
    let asked = agent.asked.borrow();
    if command == "ADD" {
        // Only after the agent said yes, with addresses that are IPs.
        assert!(matches!(agent.answer, Answer::Ok));
        let Some(Request::Add(att)) = asked.first() else {
            panic!("ADD succeeded without asking the agent: {asked:?}");
        };
        assert!(!att.ips.is_empty());
        for ip in &att.ips {
            ip.parse::<std::net::IpAddr>().expect("an IP address");
        }
        // The plugin reads only its own fields, so bytes that are not UTF-8
        // elsewhere (in a field it ignores) do not stop it; the document is
        // then no `Value`, and only the version is checked.
        let Ok(conf) = serde_json::from_slice::<Value>(&stdin) else {
            let printed = printed.unwrap_or_default();
            assert!(printed["cniVersion"].is_string(), "{printed}");
            return;
        };
        let mut want = conf["prevResult"].clone();
        want["cniVersion"] = conf["cniVersion"].clone();
        assert_eq!(printed, Some(want), "ADD passes prevResult on unchanged");
    }
});
