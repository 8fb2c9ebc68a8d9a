//! The cls_bpf (netlink) attach mode: filters appear on both hooks, a
//! second attach replaces rather than duplicates, detach removes them.
//! Needs root.

#[path = "support/kernel.rs"]
mod kernel;

use std::process::Command;

use kernel::{in_netns, PinDir};
use policy_agent::dataplane::{
    kernel::{pins as kernel_pins, AttachMode, KernelDataplane, KernelOptions},
    Dataplane,
};

fn filters(ifname: &str, hook: &str, prog: &str) -> usize {
    let out = Command::new("tc")
        .args(["filter", "show", "dev", ifname, hook])
        .output()
        .unwrap_or_else(|e| panic!("tc: {e}"));
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .filter(|l| l.contains(prog))
        .count()
}

#[test]
fn netlink_attach_replace_detach() {
    kernel::require_root();
    let pins = PinDir::new("netlink");
    in_netns(1, |idx| {
        let ifname = policy_agent::dataplane::kernel::ifname_of(idx[0]).expect("ifname");
        let mut opts = KernelOptions::new(&pins.0);
        opts.attach_mode = AttachMode::Netlink;
        let mut dp = KernelDataplane::open(opts).unwrap();
        dp.attach_endpoint(&ifname, 4).unwrap();
        assert_eq!(filters(&ifname, "ingress", "pod_egress"), 1);
        assert_eq!(filters(&ifname, "egress", "pod_ingress"), 1);
        dp.attach_endpoint(&ifname, 4).unwrap();
        assert_eq!(
            filters(&ifname, "ingress", "pod_egress"),
            1,
            "second attach duplicated"
        );
        assert_eq!(
            filters(&ifname, "egress", "pod_ingress"),
            1,
            "second attach duplicated"
        );
        drop(dp);
        // Filters outlive the agent.
        assert_eq!(filters(&ifname, "ingress", "pod_egress"), 1);
        let mut opts = KernelOptions::new(&pins.0);
        opts.attach_mode = AttachMode::Netlink;
        let mut dp = KernelDataplane::open(opts).unwrap();
        dp.detach_endpoint(&ifname, 4).unwrap();
        assert_eq!(filters(&ifname, "ingress", "pod_egress"), 0);
        assert_eq!(filters(&ifname, "egress", "pod_ingress"), 0);
    });
}

/// TCX link pins of the test's pin folder.
fn tcx_pins(pins: &std::path::Path) -> usize {
    let Ok(versions) = std::fs::read_dir(pins) else {
        return 0;
    };
    versions
        .flatten()
        .filter_map(|v| std::fs::read_dir(v.path().join(kernel_pins::LINKS_DIR)).ok())
        .map(|links| links.count())
        .sum()
}

#[test]
fn switching_attach_mode_leaves_only_the_new_modes_programs() {
    kernel::require_root();
    let pins = PinDir::new("switch-mode");
    in_netns(1, |idx| {
        let ifname = policy_agent::dataplane::kernel::ifname_of(idx[0]).expect("ifname");
        let open = |mode| {
            let mut opts = KernelOptions::new(&pins.0);
            opts.attach_mode = mode;
            KernelDataplane::open(opts).unwrap()
        };
        let mut dp = open(AttachMode::Tcx);
        dp.attach_endpoint(&ifname, 4).unwrap();
        assert_eq!(tcx_pins(&pins.0), 2);
        assert_eq!(filters(&ifname, "ingress", "pod_egress"), 0);
        drop(dp);

        // The next agent restores the endpoint with netlink: the TCX links
        // go.
        let mut dp = open(AttachMode::Netlink);
        dp.restore_endpoint(&ifname, 4).unwrap();
        assert_eq!(filters(&ifname, "ingress", "pod_egress"), 1);
        assert_eq!(filters(&ifname, "egress", "pod_ingress"), 1);
        assert_eq!(tcx_pins(&pins.0), 0, "TCX links left beside the filters");
        drop(dp);

        // And back: the filters go.
        let mut dp = open(AttachMode::Auto);
        dp.restore_endpoint(&ifname, 4).unwrap();
        assert_eq!(tcx_pins(&pins.0), 2);
        assert_eq!(
            filters(&ifname, "ingress", "pod_egress"),
            0,
            "filters left beside the links"
        );
        assert_eq!(filters(&ifname, "egress", "pod_ingress"), 0);
    });
}
