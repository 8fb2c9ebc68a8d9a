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
        binary_only: false,
        watch_seconds: None,
    }
}

/// The conflists of the main plugins Palisade chains after, as each writes
/// them on a node (layout included: tabs, compact keys, odd commas).
const REAL_CONFLISTS: &[(&str, &str)] = &[
    ("flannel", include_str!("testdata/flannel.conflist")),
    ("kindnet", include_str!("testdata/kindnet.conflist")),
    ("k3s-flannel", include_str!("testdata/k3s-flannel.conflist")),
    ("calico", include_str!("testdata/calico.conflist")),
];

fn plugin_values(text: &str) -> Vec<Value> {
    let doc: Value = serde_json::from_str(text).unwrap();
    doc["plugins"].as_array().unwrap().clone()
}

#[test]
fn real_conflists_are_chained_once_last_and_restored_byte_for_byte() {
    let entry = chained_entry(None);
    for (name, original) in REAL_CONFLISTS {
        let chained = conflist::chain(original, &entry)
            .unwrap()
            .unwrap_or_else(|| panic!("{name}: nothing chained"));
        let before = plugin_values(original);
        let after = plugin_values(&chained);
        assert_eq!(after.len(), before.len() + 1, "{name}");
        assert_eq!(
            &after[..before.len()],
            &before[..],
            "{name}: others changed"
        );
        assert_eq!(after.last(), Some(&entry), "{name}");
        // Everything outside the plugins array is untouched too.
        let (mut a, mut b): (Value, Value) = (
            serde_json::from_str(original).unwrap(),
            serde_json::from_str(&chained).unwrap(),
        );
        a["plugins"] = Value::Null;
        b["plugins"] = Value::Null;
        assert_eq!(a, b, "{name}");
        // Only bytes were added: the original is the chained text minus the
        // inserted span.
        assert!(chained.len() > original.len());
        assert_eq!(
            conflist::chain(&chained, &entry).unwrap(),
            None,
            "{name}: second chain changed the text"
        );
        assert_eq!(
            conflist::unchain(&chained).unwrap().as_deref(),
            Some(*original),
            "{name}: unchain is not byte-exact"
        );
        assert_eq!(conflist::unchain(original).unwrap(), None, "{name}");
    }
}

#[test]
fn the_entry_follows_the_arrays_own_separator() {
    let entry = chained_entry(None);
    let kind = conflist::chain(REAL_CONFLISTS[1].1, &entry)
        .unwrap()
        .unwrap();
    assert!(
        kind.contains("\t},\n\t{\"type\":\"palisade-cni\"}\n\t]"),
        "{kind}"
    );
    let compact = r#"{"cniVersion":"1.0.0","name":"n","plugins":[{"type":"bridge"}]}"#;
    assert_eq!(
        conflist::chain(compact, &entry).unwrap().unwrap(),
        r#"{"cniVersion":"1.0.0","name":"n","plugins":[{"type":"bridge"},{"type":"palisade-cni"}]}"#
    );
    for text in [
        r#"{"plugins": []}"#,
        "{\"plugins\": [\n  {\"type\": \"bridge\"}\n]}\n",
    ] {
        let chained = conflist::chain(text, &entry).unwrap().unwrap();
        assert_eq!(plugin_values(&chained).last(), Some(&entry));
        assert_eq!(conflist::unchain(&chained).unwrap().as_deref(), Some(text));
    }
}

#[test]
fn a_misplaced_or_stale_entry_is_replaced_by_one_last_entry() {
    let text = r#"{"plugins": [{"type": "palisade-cni"}, {"type": "flannel"}, {"type": "palisade-cni", "agentSocket": "/old.sock"}, {"type": "portmap"}]}"#;
    let entry = chained_entry(Some(Path::new("/run/palisade/other.sock")));
    let chained = conflist::chain(text, &entry).unwrap().unwrap();
    let types: Vec<String> = plugin_values(&chained)
        .iter()
        .map(|p| p["type"].as_str().unwrap().to_string())
        .collect();
    assert_eq!(types, ["flannel", "portmap", "palisade-cni"]);
    assert_eq!(plugin_values(&chained)[2], entry);
    assert_eq!(
        conflist::unchain(&chained).unwrap().unwrap(),
        r#"{"plugins": [{"type": "flannel"}, {"type": "portmap"}]}"#
    );
    // A changed agent socket rewrites the entry in place (still one, last).
    let moved = conflist::chain(&chained, &chained_entry(None))
        .unwrap()
        .unwrap();
    assert_eq!(plugin_values(&moved).len(), 3);
    assert_eq!(plugin_values(&moved)[2], chained_entry(None));
}

#[test]
fn malformed_documents_are_refused_with_the_reason() {
    let entry = chained_entry(None);
    let cases: &[(&str, &str)] = &[
        (r#"{"plugins": [{"type": "flannel"}"#, "not valid JSON"),
        ("", "not valid JSON"),
        ("[1, 2]", "not a JSON object"),
        (
            r#"{"cniVersion": "1.0.0", "name": "x", "type": "bridge"}"#,
            "not a plugin list",
        ),
        (
            r#"{"plugins": {"type": "bridge"}}"#,
            "\"plugins\" is not an array",
        ),
        (
            r#"{"plugins": [{"type": "bridge"}, 7]}"#,
            "plugins[1] is not a JSON object",
        ),
    ];
    for (text, why) in cases {
        let chain_err = conflist::chain(text, &entry).unwrap_err().to_string();
        assert!(chain_err.contains(why), "{text:?}: {chain_err}");
        let unchain_err = conflist::unchain(text).unwrap_err().to_string();
        assert!(unchain_err.contains(why), "{text:?}: {unchain_err}");
    }
}

#[test]
fn a_malformed_file_is_left_untouched_and_named() {
    let t = TempDir::new();
    let path = t.netd().join("10-flannel.conflist");
    let truncated = &REAL_CONFLISTS[0].1[..120];
    std::fs::write(&path, truncated).unwrap();
    let err = ensure_chained(&path, &chained_entry(None)).unwrap_err();
    let msg = err.to_string();
    assert!(matches!(err, InstallError::Malformed { .. }), "{msg}");
    assert!(
        msg.contains("10-flannel.conflist") && msg.contains("line"),
        "{msg}"
    );
    assert!(msg.contains("left unchanged"), "{msg}");
    assert_eq!(std::fs::read_to_string(&path).unwrap(), truncated);
    assert!(ensure_unchained(&path).is_err());
    std::fs::write(&path, b"\xff\xfe{}").unwrap();
    assert!(ensure_chained(&path, &chained_entry(None))
        .unwrap_err()
        .to_string()
        .contains("UTF-8"));
    assert_eq!(std::fs::read(&path).unwrap(), b"\xff\xfe{}");
    assert_eq!(std::fs::read_dir(t.netd()).unwrap().count(), 1);
}

#[test]
fn files_are_chained_and_unchained_atomically_keeping_their_mode() {
    use std::os::unix::fs::PermissionsExt;
    let t = TempDir::new();
    for (name, original) in REAL_CONFLISTS {
        let path = t.netd().join(format!("10-{name}.conflist"));
        std::fs::write(&path, original).unwrap();
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o600)).unwrap();
        let inode = |p: &Path| std::os::unix::fs::MetadataExt::ino(&std::fs::metadata(p).unwrap());
        let first = inode(&path);
        assert!(ensure_chained(&path, &chained_entry(None)).unwrap());
        // Replaced by a rename (a new inode), never rewritten in place.
        assert_ne!(inode(&path), first, "{name}");
        let chained = inode(&path);
        assert!(!ensure_chained(&path, &chained_entry(None)).unwrap());
        assert_eq!(inode(&path), chained, "{name}: rewritten though unchanged");
        assert!(ensure_unchained(&path).unwrap());
        assert!(!ensure_unchained(&path).unwrap());
        assert_eq!(std::fs::read_to_string(&path).unwrap(), *original, "{name}");
        let mode = std::fs::metadata(&path).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, 0o600, "{name}");
    }
    // No temporary files left behind for the runtime to trip over.
    assert_eq!(
        std::fs::read_dir(t.netd()).unwrap().count(),
        REAL_CONFLISTS.len()
    );
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
    assert_eq!(doc["plugins"][2], json!({"type": "palisade-cni"}));
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

fn uninstall_options(t: &TempDir) -> UninstallOptions {
    UninstallOptions {
        conflist_dir: t.netd(),
        bin_dir: t.bin(),
        keep_binary: false,
    }
}

#[test]
fn uninstall_restores_every_real_conflist_byte_for_byte_and_removes_the_binary() {
    for (name, original) in REAL_CONFLISTS {
        let t = TempDir::new();
        let source = t.join("build");
        std::fs::write(&source, b"v1").unwrap();
        let conflist = t.netd().join(format!("10-{name}.conflist"));
        std::fs::write(&conflist, original).unwrap();
        // A second configuration the runtime does not load, chained by an
        // earlier install when it was the active one.
        let stale = t.netd().join(format!("20-{name}.conflist"));
        std::fs::write(
            &stale,
            conflist::chain(original, &chained_entry(None))
                .unwrap()
                .unwrap(),
        )
        .unwrap();
        // A single-plugin .conf cannot hold our entry and is not an error.
        let single = t.netd().join("30-loopback.conf");
        std::fs::write(&single, r#"{"cniVersion":"0.3.1","type":"loopback"}"#).unwrap();
        run(&options(&t, &source)).unwrap();
        assert_ne!(std::fs::read_to_string(&conflist).unwrap(), *original);

        let done = uninstall(&uninstall_options(&t)).unwrap();
        assert_eq!(
            done.unchained,
            vec![conflist.clone(), stale.clone()],
            "{name}"
        );
        assert_eq!(done.binary, Some(t.bin().join(PLUGIN_TYPE)), "{name}");
        for path in [&conflist, &stale] {
            assert_eq!(
                std::fs::read_to_string(path).unwrap(),
                *original,
                "{name}: {} not restored byte for byte",
                path.display()
            );
        }
        assert!(!t.bin().join(PLUGIN_TYPE).exists());
        // Idempotent, and nothing else in the folder.
        assert_eq!(
            uninstall(&uninstall_options(&t)).unwrap(),
            Uninstalled::default()
        );
        let mut names: Vec<_> = std::fs::read_dir(t.netd())
            .unwrap()
            .map(|e| e.unwrap().file_name().into_string().unwrap())
            .collect();
        names.sort();
        assert_eq!(names.len(), 3, "{name}: {names:?}");
    }
}

#[test]
fn uninstall_leaves_a_malformed_file_untouched_names_it_and_still_cleans_the_others() {
    let t = TempDir::new();
    let good = t.netd().join("10-flannel.conflist");
    let chained = conflist::chain(REAL_CONFLISTS[0].1, &chained_entry(None))
        .unwrap()
        .unwrap();
    std::fs::write(&good, &chained).unwrap();
    let broken = t.netd().join("20-broken.conflist");
    std::fs::write(&broken, "{\"plugins\": [{\"type\": \"palisade-cni\"},").unwrap();
    std::fs::write(t.bin().join(PLUGIN_TYPE), b"v1").unwrap();

    let err = uninstall(&uninstall_options(&t)).unwrap_err();
    assert!(err.to_string().contains("20-broken.conflist"), "{err}");
    assert!(err.to_string().contains("left unchanged"), "{err}");
    assert_eq!(std::fs::read_to_string(&good).unwrap(), REAL_CONFLISTS[0].1);
    assert_eq!(
        std::fs::read_to_string(&broken).unwrap(),
        "{\"plugins\": [{\"type\": \"palisade-cni\"},"
    );
    // The binary stays while a file may still name it.
    assert!(t.bin().join(PLUGIN_TYPE).exists());
}

#[test]
fn uninstall_can_keep_the_binary_and_copes_with_missing_folders() {
    let t = TempDir::new();
    std::fs::write(t.bin().join(PLUGIN_TYPE), b"v1").unwrap();
    let keep = UninstallOptions {
        keep_binary: true,
        ..uninstall_options(&t)
    };
    assert_eq!(uninstall(&keep).unwrap(), Uninstalled::default());
    assert!(t.bin().join(PLUGIN_TYPE).exists());
    let nowhere = UninstallOptions {
        conflist_dir: t.join("missing"),
        bin_dir: t.join("missing-bin"),
        keep_binary: false,
    };
    assert_eq!(uninstall(&nowhere).unwrap(), Uninstalled::default());
}
