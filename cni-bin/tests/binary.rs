//! The built `palisade-cni` binary answers as a runtime invokes it.

use std::io::Write;
use std::process::{Command, Stdio};

fn invoke(env: &[(&str, &str)], stdin: &str) -> (i32, String) {
    let mut child = Command::new(env!("CARGO_BIN_EXE_palisade-cni"))
        .env_clear()
        .envs(env.iter().copied())
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    // VERSION exits without reading stdin: a broken pipe here is expected.
    if let Some(mut pipe) = child.stdin.take() {
        let _ = pipe.write_all(stdin.as_bytes());
    }
    let out = child.wait_with_output().unwrap();
    (
        out.status.code().unwrap(),
        String::from_utf8(out.stdout).unwrap(),
    )
}

#[test]
fn version_over_the_real_process_interface() {
    let (code, out) = invoke(&[("CNI_COMMAND", "VERSION")], "{}");
    assert_eq!(code, 0);
    let doc: serde_json::Value = serde_json::from_str(&out).unwrap();
    assert_eq!(doc["cniVersion"], "1.1.0");
}

#[test]
fn add_with_agent_missing_exits_1_with_a_cni_error() {
    let conf = r#"{"cniVersion":"1.0.0","name":"n","type":"palisade-cni",
        "agentSocket":"/nonexistent/palisade/cni.sock",
        "prevResult":{"ips":[{"address":"10.244.0.5/24"}],"interfaces":[{"name":"veth1"}]}}"#;
    let env = [
        ("CNI_COMMAND", "ADD"),
        ("CNI_CONTAINERID", "abc"),
        ("CNI_NETNS", "/run/netns/x"),
        ("CNI_IFNAME", "eth0"),
        ("CNI_PATH", "/opt/cni/bin"),
        ("CNI_ARGS", "K8S_POD_NAMESPACE=default;K8S_POD_NAME=p"),
    ];
    let (code, out) = invoke(&env, conf);
    assert_eq!(code, 1);
    let doc: serde_json::Value = serde_json::from_str(&out).unwrap();
    assert_eq!(doc["code"], 11);
    assert_eq!(doc["cniVersion"], "1.0.0");
}

/// `palisade-cni install` then `palisade-cni uninstall`, as the DaemonSet
/// and an operator run them: the node's conflist comes back byte for
/// byte, the binary goes, and a second uninstall is a no-op.
#[test]
fn install_then_uninstall_leaves_the_node_as_it_was() {
    let dir = tempfile::Builder::new()
        .prefix("palisade-cni-bin-test-")
        .tempdir()
        .unwrap();
    let (netd, bin) = (dir.path().join("net.d"), dir.path().join("bin"));
    std::fs::create_dir_all(&netd).unwrap();
    let original = include_str!("../src/install/testdata/flannel.conflist");
    let conflist = netd.join("10-flannel.conflist");
    std::fs::write(&conflist, original).unwrap();
    let cli = |args: &[&str]| {
        let out = Command::new(env!("CARGO_BIN_EXE_palisade-cni"))
            .args(args)
            .arg("--conflist-dir")
            .arg(&netd)
            .arg("--bin-dir")
            .arg(&bin)
            .output()
            .unwrap();
        assert!(out.status.success(), "{args:?}: {out:?}");
        String::from_utf8(out.stdout).unwrap()
    };
    // The DaemonSet's init container: the binary only, the conflist as it
    // was (the agent chains it once it enforces).
    cli(&["install", "--binary-only"]);
    assert!(bin.join("palisade-cni").is_file());
    assert_eq!(std::fs::read_to_string(&conflist).unwrap(), original);
    cli(&["install"]);
    assert!(bin.join("palisade-cni").is_file());
    assert!(std::fs::read_to_string(&conflist)
        .unwrap()
        .contains("palisade-cni"));
    let said = cli(&["uninstall"]);
    assert!(said.contains("removed palisade-cni from"), "{said}");
    assert_eq!(std::fs::read_to_string(&conflist).unwrap(), original);
    assert!(!bin.join("palisade-cni").exists());
    let again = cli(&["uninstall"]);
    assert!(again.contains("nothing to do"), "{again}");
    assert_eq!(std::fs::read_to_string(&conflist).unwrap(), original);
}
