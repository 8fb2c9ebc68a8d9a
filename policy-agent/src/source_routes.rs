//! The kernel settings Palisade's verdicts rely on for packets that name
//! more than one destination. A pod's packet is judged on its destination
//! address; an IPv4 source-route option or an IPv6 routing header makes
//! the host it reaches forward it on to another address, which no policy
//! judged. Linux refuses both while `accept_source_route` (IPv4) is off
//! and segment routing (`seg6_enabled`) and RPL (`rpl_seg_enabled`) are
//! off for IPv6 — the kernel's defaults. The agent checks them at start,
//! for the interfaces pods get (`default`, which new veths copy, together
//! with `all`), and warns when they are on; it changes nothing itself.

use std::path::Path;

/// Where the kernel exposes the network settings of the agent's (the
/// node's: the DaemonSet is `hostNetwork`) namespace.
pub const PROC_SYS_NET: &str = "/proc/sys/net";

fn on(root: &Path, key: &str) -> bool {
    std::fs::read_to_string(root.join(key))
        .ok()
        .and_then(|v| v.trim().parse::<i64>().ok())
        .is_some_and(|v| v > 0)
}

/// The settings under `root` (a `/proc/sys/net`) that let a new pod
/// interface accept source-routed packets, each named as `sysctl` names
/// it with what it opens. Empty on a kernel with the defaults (or where
/// a setting does not exist, as on a kernel built without IPv6).
pub fn warnings(root: &Path) -> Vec<String> {
    let mut out = Vec::new();
    // IPv4: an interface accepts source-routed packets only when both
    // `all` and its own setting say so.
    if on(root, "ipv4/conf/all/accept_source_route")
        && on(root, "ipv4/conf/default/accept_source_route")
    {
        out.push(
            "net.ipv4.conf.all.accept_source_route and net.ipv4.conf.default.accept_source_route are on: \
             a pod's packet carrying a source-route option can be forwarded past its egress policy"
                .to_string(),
        );
    }
    // IPv6 segment routing and RPL: either `all` or the interface turns
    // them on.
    for (key, what) in [
        ("seg6_enabled", "segment routing header"),
        ("rpl_seg_enabled", "RPL source routing header"),
    ] {
        for scope in ["all", "default"] {
            if on(root, &format!("ipv6/conf/{scope}/{key}")) {
                out.push(format!(
                    "net.ipv6.conf.{scope}.{key} is on: a pod's packet carrying a {what} can be forwarded past its egress policy"
                ));
            }
        }
    }
    out
}

/// Logs [`warnings`] for the node's own settings; returns them.
pub fn check() -> Vec<String> {
    let found = warnings(Path::new(PROC_SYS_NET));
    for w in &found {
        tracing::warn!("{w}");
    }
    found
}

#[cfg(test)]
mod tests {
    use super::*;

    fn set(root: &Path, key: &str, v: &str) {
        let p = root.join(key);
        std::fs::create_dir_all(p.parent().unwrap()).unwrap();
        std::fs::write(p, v).unwrap();
    }

    #[test]
    fn the_kernel_defaults_give_no_warning() {
        let root = tempfile::tempdir().unwrap();
        for scope in ["all", "default"] {
            set(
                root.path(),
                &format!("ipv4/conf/{scope}/accept_source_route"),
                "0\n",
            );
            set(
                root.path(),
                &format!("ipv6/conf/{scope}/seg6_enabled"),
                "0\n",
            );
            set(
                root.path(),
                &format!("ipv6/conf/{scope}/rpl_seg_enabled"),
                "0\n",
            );
        }
        assert_eq!(warnings(root.path()), Vec::<String>::new());
        // A kernel without IPv6 (no such files) is no warning either.
        assert_eq!(warnings(&root.path().join("missing")), Vec::<String>::new());
    }

    #[test]
    fn source_routing_turned_on_for_new_interfaces_is_named() {
        let root = tempfile::tempdir().unwrap();
        set(root.path(), "ipv4/conf/all/accept_source_route", "1\n");
        set(root.path(), "ipv4/conf/default/accept_source_route", "0\n");
        assert_eq!(
            warnings(root.path()),
            Vec::<String>::new(),
            "IPv4 needs both"
        );
        set(root.path(), "ipv4/conf/default/accept_source_route", "1\n");
        set(root.path(), "ipv6/conf/default/seg6_enabled", "1\n");
        let w = warnings(root.path());
        assert_eq!(w.len(), 2, "{w:?}");
        assert!(
            w[0].contains("net.ipv4.conf.all.accept_source_route"),
            "{w:?}"
        );
        assert!(w[1].contains("net.ipv6.conf.default.seg6_enabled"), "{w:?}");
    }
}
