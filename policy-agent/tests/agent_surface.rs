//! The agent's attack surface on a node: its CNI socket is root's only
//! (mode 0600, and the peer's uid is checked), a request cannot be
//! arbitrarily large, and a second agent refuses to start instead of
//! taking the socket from the first; its logs are JSON lines when asked.
//! Needs root (to run a client as another user); the socket tests serve
//! with the in-memory dataplane, the log test runs the real agent.

use std::os::unix::fs::PermissionsExt;
use std::os::unix::process::CommandExt;
use std::path::Path;
use std::process::Command;
use std::sync::Arc;
use std::time::{Duration, Instant};

use agent_api::{Request, Response};
use policy_agent::dataplane::fake::FakeDataplane;
use policy_agent::flows::FlowHub;
use policy_agent::reconcile::Agent;

const AGENT: &str = env!("CARGO_BIN_EXE_policy-agent");
/// `nobody`.
const OTHER_UID: u32 = 65534;

fn require_root() {
    // SAFETY: no preconditions.
    assert_eq!(unsafe { libc::geteuid() }, 0, "this test needs root");
}

/// Serves `socket` with an in-memory agent on a runtime of its own.
fn serve(socket: &Path) -> tokio::runtime::Runtime {
    let rt = tokio::runtime::Runtime::new().unwrap();
    let mut agent = Agent::new(FakeDataplane::default(), vec![]);
    // A synced (empty) cluster state, so STATUS answers ready.
    agent
        .set_snapshot(policy_engine::model::Snapshot::default())
        .unwrap();
    let agent = Arc::new(tokio::sync::Mutex::new(agent));
    let path = socket.to_path_buf();
    rt.spawn(async move {
        let _ = policy_agent::cni_server::serve(&path, agent, FlowHub::new()).await;
    });
    let deadline = Instant::now() + Duration::from_secs(10);
    while !socket.exists() {
        assert!(Instant::now() < deadline, "socket not bound");
        std::thread::sleep(Duration::from_millis(20));
    }
    rt
}

/// `policy-agent flows --counters` against `socket` as user `uid`.
fn counters_as(uid: u32, socket: &Path) -> std::process::Output {
    Command::new(AGENT)
        .args(["flows", "--counters", "--socket"])
        .arg(socket)
        .uid(uid)
        .output()
        .unwrap()
}

#[test]
fn the_socket_answers_root_only_and_refuses_oversized_requests() {
    require_root();
    let dir = tempfile::tempdir().unwrap();
    std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o755)).unwrap();
    let socket = dir.path().join("cni.sock");
    let _rt = serve(&socket);

    let mode = std::fs::metadata(&socket).unwrap().permissions().mode() & 0o777;
    assert_eq!(mode, 0o600, "socket mode {mode:o}");
    assert!(counters_as(0, &socket).status.success(), "root is refused");
    let other = counters_as(OTHER_UID, &socket);
    assert!(!other.status.success(), "another user got an answer");

    // Even if the mode is loosened, the peer check refuses other users.
    std::fs::set_permissions(&socket, std::fs::Permissions::from_mode(0o666)).unwrap();
    let other = counters_as(OTHER_UID, &socket);
    assert!(
        !other.status.success(),
        "another user got an answer through a 0666 socket: {}",
        String::from_utf8_lossy(&other.stdout)
    );
    assert!(counters_as(0, &socket).status.success());

    // An oversized request line is refused without being read to its end.
    use std::io::{Read, Write};
    let mut s = std::os::unix::net::UnixStream::connect(&socket).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    let huge = vec![b' '; 128 * 1024];
    let _ = s.write_all(&huge);
    let mut answer = String::new();
    let _ = s.read_to_string(&mut answer);
    let response: Response = serde_json::from_str(answer.trim()).unwrap_or_else(|e| {
        panic!("no answer to an oversized request ({e}): {answer:?}");
    });
    match response {
        Response::Error { message } => assert!(message.contains("larger than"), "{message}"),
        other => panic!("oversized request answered {other:?}"),
    }
    // A normal request still works afterwards.
    let ok = agent_api::call(&socket, &Request::Status, Duration::from_secs(5)).unwrap();
    assert!(matches!(ok, Response::Ok), "{ok:?}");
}

#[test]
fn a_second_agent_refuses_to_start() {
    require_root();
    let dir = tempfile::tempdir().unwrap();
    let socket = dir.path().join("cni.sock");
    // The first agent: holds the node lock and serves the socket.
    let _lock = policy_agent::lock::acquire(&policy_agent::lock::lock_file_for(&socket)).unwrap();
    let _rt = serve(&socket);
    let manifest = dir.path().join("cluster.yaml");
    std::fs::write(&manifest, "").unwrap();
    let out = Command::new(AGENT)
        .arg("run")
        .arg("--manifests")
        .arg(&manifest)
        .arg("--cni-socket")
        .arg(&socket)
        .arg("--bpffs-dir")
        .arg(dir.path().join("bpffs"))
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "the second agent started: {stderr}");
    assert!(stderr.contains("another policy-agent"), "{stderr}");
    assert!(
        !dir.path().join("bpffs").exists(),
        "the second agent touched the pins"
    );
    // The first agent's socket is untouched and still answers.
    let ok = agent_api::call(&socket, &Request::Status, Duration::from_secs(5)).unwrap();
    assert!(matches!(ok, Response::Ok), "{ok:?}");
}

/// `--log-format json`: every line the agent logs is one JSON object (as
/// log collectors ingest them), with its level, message and fields. The
/// real agent, on the real kernel, with a bpffs folder of its own.
#[test]
fn logs_are_json_lines_with_log_format_json() {
    use std::io::{BufRead, BufReader};
    require_root();
    let dir = tempfile::tempdir().unwrap();
    let manifest = dir.path().join("cluster.yaml");
    std::fs::write(&manifest, "").unwrap();
    let bpffs = Path::new("/sys/fs/bpf").join(format!("palisade-logjson-{}", std::process::id()));
    struct Pins<'a>(&'a Path);
    impl Drop for Pins<'_> {
        fn drop(&mut self) {
            let _ = policy_agent::dataplane::kernel::KernelDataplane::remove_pins(self.0);
        }
    }
    let _pins = Pins(&bpffs);
    let mut child = Command::new(AGENT)
        .args(["--log-format", "json", "run", "--manifests"])
        .arg(&manifest)
        .arg("--cni-socket")
        .arg(dir.path().join("cni.sock"))
        .arg("--bpffs-dir")
        .arg(&bpffs)
        .env("RUST_LOG", "info")
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let stderr = child.stderr.take().unwrap();
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(stderr).lines().map_while(Result::ok) {
            if tx.send(line).is_err() {
                break;
            }
        }
    });
    let deadline = Instant::now() + Duration::from_secs(30);
    let mut seen = Vec::new();
    let ready = loop {
        let left = deadline.saturating_duration_since(Instant::now());
        let Ok(line) = rx.recv_timeout(left) else {
            break None;
        };
        let v: serde_json::Value = serde_json::from_str(&line)
            .unwrap_or_else(|e| panic!("a log line is not JSON ({e}): {line}"));
        seen.push(line);
        if v["fields"]["message"] == "dataplane ready" {
            break Some(v);
        }
    };
    let _ = Command::new("kill").arg(child.id().to_string()).status();
    let _ = child.wait();
    let v = ready.unwrap_or_else(|| panic!("no \"dataplane ready\" line: {seen:#?}"));
    assert_eq!(v["level"], "INFO", "{v}");
    assert_eq!(v["fields"]["bpffs"], bpffs.display().to_string(), "{v}");
    assert!(v["timestamp"].is_string(), "{v}");
}
