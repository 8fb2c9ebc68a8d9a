//! `policy-agent mount-bpffs`, the DaemonSet's privileged init container
//! (the image has no shell): the real binary, run as root in a private
//! mount namespace of its own (`unshare --mount --propagation private`),
//! so nothing it mounts reaches the machine's mount table.

use std::process::Command;

const AGENT: &str = env!("CARGO_BIN_EXE_policy-agent");

/// Runs `script` with `sh` in a new private mount namespace, with `$AGENT`
/// and `$DIR` set; returns (exit status success, stdout, stderr).
fn in_private_mount_ns(dir: &std::path::Path, script: &str) -> (bool, String, String) {
    let out = Command::new("unshare")
        .args(["--mount", "--propagation", "private", "sh", "-c", script])
        .env("AGENT", AGENT)
        .env("DIR", dir)
        .output()
        .expect("unshare (util-linux) runs");
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

#[test]
fn mounts_bpffs_once_and_then_leaves_it_alone() {
    let dir = tempfile::tempdir().unwrap();
    // Mountpoints in /proc/self/mountinfo are field 5.
    let (ok, out, err) = in_private_mount_ns(
        dir.path(),
        r#"set -e
"$AGENT" mount-bpffs --path "$DIR"
"$AGENT" mount-bpffs --path "$DIR"
echo "type=$(stat -f -c %T "$DIR")"
echo "mounts=$(awk -v d="$DIR" '$5 == d' /proc/self/mountinfo | wc -l)"
"#,
    );
    assert!(ok, "stdout: {out}\nstderr: {err}");
    let lines: Vec<&str> = out.lines().collect();
    assert!(lines[0].starts_with("mounted bpffs at "), "{out}");
    assert!(lines[1].starts_with("bpffs already at "), "{out}");
    assert_eq!(lines[2], "type=bpf_fs", "{out}");
    // A second run must not stack a second bpffs over the first (pins made
    // in the first would vanish from view).
    assert_eq!(lines[3], "mounts=1", "{out}");
}

#[test]
fn a_missing_folder_is_an_error_naming_it() {
    let dir = tempfile::tempdir().unwrap();
    let missing = dir.path().join("absent");
    let (ok, out, err) = in_private_mount_ns(&missing, r#""$AGENT" mount-bpffs --path "$DIR""#);
    assert!(!ok, "stdout: {out}");
    assert!(
        err.contains("cannot inspect") && err.contains("absent"),
        "{err}"
    );
}
