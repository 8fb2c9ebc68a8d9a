use std::collections::HashMap;
use std::io::{BufRead, BufReader, Write};
use std::os::unix::net::UnixListener;
use std::path::PathBuf;
use std::sync::mpsc;
use std::thread::JoinHandle;

use agent_api::{Request, Response};
use serde_json::{json, Value};

use crate::plugin::{run, Streams};

/// A fresh, unique socket path in a directory removed on drop.
struct TempDir(tempfile::TempDir);

impl TempDir {
    fn new() -> Self {
        Self(
            tempfile::Builder::new()
                .prefix("palisade-cni-test-")
                .tempdir()
                .unwrap(),
        )
    }
    fn socket(&self) -> PathBuf {
        self.0.path().join("agent.sock")
    }
}

/// An agent that answers `answer` to one request and reports what it got.
struct FakeAgent {
    dir: TempDir,
    thread: Option<JoinHandle<()>>,
    seen: mpsc::Receiver<Request>,
}

impl FakeAgent {
    fn answering(answer: Response) -> Self {
        let dir = TempDir::new();
        let listener = UnixListener::bind(dir.socket()).unwrap();
        let (tx, seen) = mpsc::channel();
        let thread = std::thread::spawn(move || {
            let (stream, _) = listener.accept().unwrap();
            let mut line = String::new();
            BufReader::new(&stream).read_line(&mut line).unwrap();
            tx.send(serde_json::from_str::<Request>(&line).unwrap())
                .unwrap();
            let mut out = serde_json::to_vec(&answer).unwrap();
            out.push(b'\n');
            (&stream).write_all(&out).unwrap();
        });
        Self {
            dir,
            thread: Some(thread),
            seen,
        }
    }

    /// The one request the agent received.
    fn request(mut self) -> Request {
        if let Some(t) = self.thread.take() {
            t.join().unwrap();
        }
        self.seen.try_recv().unwrap()
    }
}

struct Outcome {
    code: i32,
    stdout: String,
    stderr: String,
}

impl Outcome {
    fn json(&self) -> Value {
        serde_json::from_str(&self.stdout).unwrap()
    }
    fn error_code(&self) -> u64 {
        assert_eq!(self.code, 1, "stdout: {}", self.stdout);
        self.json()["code"].as_u64().unwrap()
    }
}

fn invoke(command: &str, extra_env: &[(&str, &str)], stdin: &str) -> Outcome {
    let mut env: HashMap<String, String> = [
        ("CNI_COMMAND", command),
        ("CNI_CONTAINERID", "c0ffee"),
        ("CNI_NETNS", "/run/netns/pod-a"),
        ("CNI_IFNAME", "eth0"),
        ("CNI_PATH", "/opt/cni/bin"),
        (
            "CNI_ARGS",
            "IgnoreUnknown=1;K8S_POD_NAMESPACE=default;K8S_POD_NAME=web-0",
        ),
    ]
    .into_iter()
    .map(|(k, v)| (k.to_string(), v.to_string()))
    .collect();
    for (k, v) in extra_env {
        if v.is_empty() {
            env.remove(*k);
        } else {
            env.insert(k.to_string(), v.to_string());
        }
    }
    let (mut out, mut err) = (Vec::new(), Vec::new());
    let code = run(
        &env,
        Streams {
            stdin: &mut stdin.as_bytes(),
            stdout: &mut out,
            stderr: &mut err,
        },
    );
    Outcome {
        code,
        stdout: String::from_utf8(out).unwrap(),
        stderr: String::from_utf8(err).unwrap(),
    }
}

fn prev_result() -> Value {
    json!({
        "cniVersion": "1.0.0",
        "interfaces": [
            {"name": "cni0", "mac": "00:11:22:33:44:55"},
            {"name": "veth3243", "mac": "55:44:33:22:11:11", "sandbox": ""},
            {"name": "eth0", "mac": "99:88:77:66:55:44", "sandbox": "/run/netns/pod-a"}
        ],
        "ips": [
            {"address": "10.244.0.20/24", "gateway": "10.244.0.1", "interface": 2},
            {"address": "2001:db8::14/64", "interface": 2}
        ],
        "routes": [{"dst": "0.0.0.0/0"}],
        "dns": {"nameservers": ["10.96.0.10"]},
        "someFutureField": {"kept": true}
    })
}

fn config(socket: &std::path::Path, prev: Option<Value>) -> String {
    let mut c = json!({
        "cniVersion": "1.1.0",
        "name": "cbr0",
        "type": "palisade-cni",
        "agentSocket": socket,
        "agentTimeoutSeconds": 5,
    });
    if let Some(p) = prev {
        c["prevResult"] = p;
    }
    c.to_string()
}

fn missing_socket() -> (TempDir, PathBuf) {
    let dir = TempDir::new();
    let path = dir.socket();
    (dir, path)
}

#[test]
fn version_lists_every_supported_version() {
    let out = invoke("VERSION", &[], "{\"cniVersion\":\"1.1.0\"}");
    assert_eq!(out.code, 0);
    let doc = out.json();
    assert_eq!(doc["cniVersion"], "1.1.0");
    let versions: Vec<&str> = doc["supportedVersions"]
        .as_array()
        .unwrap()
        .iter()
        .map(|v| v.as_str().unwrap())
        .collect();
    assert_eq!(versions, ["0.3.0", "0.3.1", "0.4.0", "1.0.0", "1.1.0"]);
}

#[test]
fn add_sends_the_attachment_and_passes_prev_result_through() {
    let agent = FakeAgent::answering(Response::Ok);
    let out = invoke(
        "ADD",
        &[],
        &config(&agent.dir.socket(), Some(prev_result())),
    );
    assert_eq!(out.code, 0, "stderr: {}", out.stderr);
    let mut expected = prev_result();
    expected["cniVersion"] = json!("1.1.0");
    assert_eq!(out.json(), expected);
    match agent.request() {
        Request::Add(a) => {
            assert_eq!(a.container_id, "c0ffee");
            assert_eq!(a.netns, "/run/netns/pod-a");
            assert_eq!(a.ifname, "eth0");
            assert_eq!(a.pod_namespace, "default");
            assert_eq!(a.pod_name, "web-0");
            assert_eq!(a.host_interfaces, ["cni0", "veth3243"]);
            assert_eq!(a.ips, ["10.244.0.20", "2001:db8::14"]);
        }
        other => panic!("expected Add, got {other:?}"),
    }
}

#[test]
fn add_fails_closed_when_the_agent_is_unreachable() {
    let (_dir, socket) = missing_socket();
    let out = invoke("ADD", &[], &config(&socket, Some(prev_result())));
    assert_eq!(out.error_code(), 11);
    let doc = out.json();
    assert_eq!(doc["cniVersion"], "1.1.0");
    assert!(doc["details"].as_str().unwrap().contains("agent.sock"));
    assert!(doc.get("ips").is_none(), "no result may leak on failure");
}

#[test]
fn add_fails_when_the_agent_refuses() {
    let agent = FakeAgent::answering(Response::Error {
        message: "default/web-0: no host veth".into(),
    });
    let out = invoke(
        "ADD",
        &[],
        &config(&agent.dir.socket(), Some(prev_result())),
    );
    assert_eq!(out.error_code(), 100);
    assert!(out.json()["details"]
        .as_str()
        .unwrap()
        .contains("no host veth"));
}

#[test]
fn add_without_prev_result_is_an_invalid_config() {
    let (_dir, socket) = missing_socket();
    let out = invoke("ADD", &[], &config(&socket, None));
    assert_eq!(out.error_code(), 7);
}

#[test]
fn add_without_any_address_is_refused() {
    let (_dir, socket) = missing_socket();
    let mut prev = prev_result();
    prev["ips"] = json!([]);
    assert_eq!(
        invoke("ADD", &[], &config(&socket, Some(prev))).error_code(),
        7
    );
    let mut prev = prev_result();
    prev["ips"] = json!([{"address": "not-an-ip/24"}]);
    assert_eq!(
        invoke("ADD", &[], &config(&socket, Some(prev))).error_code(),
        7
    );
}

#[test]
fn add_needs_the_pod_identity_and_the_netns() {
    let (_dir, socket) = missing_socket();
    let conf = config(&socket, Some(prev_result()));
    let out = invoke("ADD", &[("CNI_ARGS", "K8S_POD_NAMESPACE=default")], &conf);
    assert_eq!(out.error_code(), 4);
    assert!(out.stdout.contains("K8S_POD_NAME"));
    let out = invoke("ADD", &[("CNI_NETNS", "")], &conf);
    assert_eq!(out.error_code(), 4);
    assert!(out.stdout.contains("CNI_NETNS"));
}

#[test]
fn undecodable_config_and_unknown_version_are_reported() {
    assert_eq!(invoke("ADD", &[], "{not json").error_code(), 6);
    let out = invoke("ADD", &[], r#"{"cniVersion":"0.2.0","name":"x"}"#);
    assert_eq!(out.error_code(), 1);
}

#[test]
fn missing_or_unknown_command_is_an_environment_error() {
    assert_eq!(invoke("", &[], "{}").error_code(), 4);
    assert_eq!(invoke("FROB", &[], "{}").error_code(), 4);
}

#[test]
fn del_tells_the_agent() {
    let agent = FakeAgent::answering(Response::Ok);
    let out = invoke("DEL", &[], &config(&agent.dir.socket(), None));
    assert_eq!(out.code, 0);
    assert!(out.stdout.is_empty());
    assert_eq!(
        agent.request(),
        Request::Del {
            container_id: "c0ffee".into()
        }
    );
}

#[test]
fn del_succeeds_when_the_agent_is_unreachable() {
    let (_dir, socket) = missing_socket();
    let out = invoke("DEL", &[("CNI_NETNS", "")], &config(&socket, None));
    assert_eq!(out.code, 0, "stdout: {}", out.stdout);
    assert!(out.stdout.is_empty());
    assert!(out.stderr.contains("ignored"));
}

#[test]
fn check_asks_the_agent_and_reports_its_refusal() {
    let agent = FakeAgent::answering(Response::Ok);
    let out = invoke(
        "CHECK",
        &[],
        &config(&agent.dir.socket(), Some(prev_result())),
    );
    assert_eq!(out.code, 0);
    assert!(out.stdout.is_empty());
    assert_eq!(
        agent.request(),
        Request::Check {
            container_id: "c0ffee".into()
        }
    );

    let agent = FakeAgent::answering(Response::Error {
        message: "endpoint not enforced".into(),
    });
    let out = invoke(
        "CHECK",
        &[],
        &config(&agent.dir.socket(), Some(prev_result())),
    );
    assert_eq!(out.error_code(), 100);
}

#[test]
fn status_reflects_the_agent() {
    let agent = FakeAgent::answering(Response::Ok);
    let out = invoke(
        "STATUS",
        &[("CNI_CONTAINERID", "")],
        &config(&agent.dir.socket(), None),
    );
    assert_eq!(out.code, 0);
    assert!(out.stdout.is_empty());
    assert_eq!(agent.request(), Request::Status);

    let agent = FakeAgent::answering(Response::Error {
        message: "still syncing".into(),
    });
    let out = invoke("STATUS", &[], &config(&agent.dir.socket(), None));
    assert_eq!(out.error_code(), 50);
    assert!(out.stdout.contains("still syncing"));

    let (_dir, socket) = missing_socket();
    assert_eq!(
        invoke("STATUS", &[], &config(&socket, None)).error_code(),
        50
    );
}

#[test]
fn gc_succeeds_without_the_agent() {
    let (_dir, socket) = missing_socket();
    let mut conf: Value = serde_json::from_str(&config(&socket, None)).unwrap();
    conf["cni.dev/valid-attachments"] = json!([{"containerID": "c0ffee", "ifname": "eth0"}]);
    let out = invoke("GC", &[("CNI_CONTAINERID", "")], &conf.to_string());
    assert_eq!(out.code, 0);
    assert!(out.stdout.is_empty());
}

#[test]
fn gc_hands_the_valid_attachments_to_the_agent() {
    let agent = FakeAgent::answering(Response::Ok);
    let mut conf: Value = serde_json::from_str(&config(&agent.dir.socket(), None)).unwrap();
    conf["cni.dev/valid-attachments"] = json!([
        {"containerID": "c0ffee", "ifname": "eth0"},
        {"containerID": "beef", "ifname": "net1"}
    ]);
    let out = invoke("GC", &[], &conf.to_string());
    assert_eq!(out.code, 0, "{}", out.stdout);
    let sandbox = |c: &str, i: &str| agent_api::Sandbox {
        container_id: c.into(),
        ifname: i.into(),
    };
    assert_eq!(
        agent.request(),
        Request::Gc {
            valid: vec![sandbox("c0ffee", "eth0"), sandbox("beef", "net1")]
        }
    );
}

#[test]
fn gc_without_the_valid_list_is_an_invalid_config() {
    let (_dir, socket) = missing_socket();
    assert_eq!(invoke("GC", &[], &config(&socket, None)).error_code(), 7);
}
