use std::path::{Path, PathBuf};

use serde_json::{json, Value};

use super::*;

/// A scratch folder with `net.d/` and `bin/`, removed on drop.
struct TempDir(tempfile::TempDir);

impl TempDir {
    fn new() -> Self {
        let dir = tempfile::Builder::new()
            .prefix("palisade-install-test-")
            .tempdir()
            .unwrap();
        std::fs::create_dir_all(dir.path().join("net.d")).unwrap();
        std::fs::create_dir_all(dir.path().join("bin")).unwrap();
        Self(dir)
    }
    fn join(&self, p: &str) -> PathBuf {
        self.0.path().join(p)
    }
    fn netd(&self) -> PathBuf {
        self.join("net.d")
    }
    fn bin(&self) -> PathBuf {
        self.join("bin")
    }
}

fn flannel_conflist() -> Value {
    json!({
        "name": "cbr0",
        "cniVersion": "0.3.1",
        "plugins": [
            {"type": "flannel", "delegate": {"hairpinMode": true, "isDefaultGateway": true}},
            {"type": "portmap", "capabilities": {"portMappings": true}}
        ]
    })
}

fn write(path: &Path, doc: &Value) {
    std::fs::write(path, serde_json::to_vec_pretty(doc).unwrap()).unwrap();
}

fn read(path: &Path) -> Value {
    serde_json::from_slice(&std::fs::read(path).unwrap()).unwrap()
}

fn options(t: &TempDir, source: &Path) -> InstallOptions {
    InstallOptions {
        conflist_dir: t.netd(),
        bin_dir: t.bin(),
        source: Some(source.to_path_buf()),
        agent_socket: None,
        wait_seconds: 0,
        watch_seconds: None,
    }
}

#[test]
fn chains_last_and_is_idempotent() {
    let mut doc = flannel_conflist();
    let entry = chained_entry(None);
    assert_eq!(chain(&mut doc, &entry), Some(true));
    let types: Vec<&str> = doc["plugins"]
        .as_array()
        .unwrap()
        .iter()
        .map(|p| p["type"].as_str().unwrap())
        .collect();
    assert_eq!(types, ["flannel", "portmap", "palisade-cni"]);
    let before = doc.clone();
    assert_eq!(chain(&mut doc, &entry), Some(false));
    assert_eq!(doc, before);
}

#[test]
fn moves_a_misplaced_entry_to_the_end_and_updates_it() {
    let mut doc = flannel_conflist();
    doc["plugins"]
        .as_array_mut()
        .unwrap()
        .insert(0, json!({"type": "palisade-cni"}));
    let entry = chained_entry(Some(Path::new("/run/palisade/other.sock")));
    assert_eq!(chain(&mut doc, &entry), Some(true));
    let plugins = doc["plugins"].as_array().unwrap();
    assert_eq!(plugins.len(), 3);
    assert_eq!(plugins[2], entry);
    assert_eq!(plugins[0]["type"], "flannel");
}

#[test]
fn a_single_plugin_conf_is_refused() {
    let mut doc = json!({"cniVersion": "1.0.0", "name": "x", "type": "bridge"});
    assert_eq!(chain(&mut doc, &chained_entry(None)), None);
}

#[test]
fn the_runtime_loads_the_first_config_by_name() {
    let t = TempDir::new();
    assert_eq!(active_config(&t.netd()).unwrap(), None);
    write(&t.netd().join("20-other.conflist"), &flannel_conflist());
    write(&t.netd().join("10-flannel.conflist"), &flannel_conflist());
    std::fs::write(t.netd().join("00-notes.txt"), "ignored").unwrap();
    assert_eq!(
        active_config(&t.netd()).unwrap(),
        Some(t.netd().join("10-flannel.conflist"))
    );
    assert_eq!(active_config(&t.join("missing")).unwrap(), None);
}

#[test]
fn install_copies_the_binary_and_chains_once() {
    let t = TempDir::new();
    let source = t.join("palisade-cni-build");
    std::fs::write(&source, b"#!/bin/sh\nexit 0\n").unwrap();
    let conflist = t.netd().join("10-flannel.conflist");
    write(&conflist, &flannel_conflist());

    run(&options(&t, &source)).unwrap();
    assert_eq!(
        std::fs::read(t.bin().join("palisade-cni")).unwrap(),
        b"#!/bin/sh\nexit 0\n"
    );
    let doc = read(&conflist);
    assert_eq!(doc["plugins"][2]["type"], "palisade-cni");
    assert_eq!(doc["plugins"][0], flannel_conflist()["plugins"][0]);
    assert_eq!(doc["cniVersion"], "0.3.1");

    // Second run: nothing changes (not even the file's modification time).
    let mtime = std::fs::metadata(&conflist).unwrap().modified().unwrap();
    assert!(!install_binary(&source, &t.bin()).unwrap());
    assert!(!ensure_chained(&conflist, &chained_entry(None)).unwrap());
    run(&options(&t, &source)).unwrap();
    assert_eq!(
        std::fs::metadata(&conflist).unwrap().modified().unwrap(),
        mtime
    );
    assert_eq!(read(&conflist)["plugins"].as_array().unwrap().len(), 3);
    // No temporary files left behind for the runtime to trip over.
    let leftovers: Vec<_> = std::fs::read_dir(t.netd())
        .unwrap()
        .map(|e| e.unwrap().file_name())
        .collect();
    assert_eq!(leftovers.len(), 1, "{leftovers:?}");
}

#[test]
fn a_changed_binary_is_replaced() {
    let t = TempDir::new();
    let source = t.join("build");
    std::fs::write(&source, b"v1").unwrap();
    assert!(install_binary(&source, &t.bin()).unwrap());
    std::fs::write(&source, b"v2").unwrap();
    assert!(install_binary(&source, &t.bin()).unwrap());
    assert_eq!(std::fs::read(t.bin().join("palisade-cni")).unwrap(), b"v2");
}

#[test]
fn no_config_is_an_error_naming_the_dir() {
    let t = TempDir::new();
    let source = t.join("build");
    std::fs::write(&source, b"v1").unwrap();
    let err = run(&options(&t, &source)).unwrap_err();
    assert!(matches!(err, InstallError::NoConflist { .. }));
    assert!(err.to_string().contains("net.d"));
}
