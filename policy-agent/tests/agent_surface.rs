//! The agent's attack surface on a node: its CNI socket is root's only
//! (mode 0600, and the peer's uid is checked), a request cannot be
//! arbitrarily large, and a second agent refuses to start instead of
//! taking the socket from the first. Needs root (to run a client as
//! another user); no kernel dataplane (the in-memory one serves).

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
