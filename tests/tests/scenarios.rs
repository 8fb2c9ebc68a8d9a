//! The public scenarios through the netns test bed: with Palisade every probe
//! must get the verdict NetworkPolicy semantics require; without it (the
//! plain bridge, as Flannel gives) the policies are ignored and everything
//! is allowed — which is also what makes the first kind of test able to fail.
//!
//! Needs root, bpffs at /sys/fs/bpf, and the `policy-agent` and
//! `palisade-cni` binaries (see `palisade_tests::bin_dir`).

use palisade_tests::{run_scenario, scenarios};
use testbed::{mismatches, report};

fn enforced(name: &str) {
    for scenario in scenarios(name) {
        let (_, seen) = run_scenario(&scenario, true);
        assert!(
            seen.iter().all(|o| o.allowed.is_some()),
            "{}: some probes could not run:\n{}",
            scenario.label,
            report::table(&seen)
        );
        assert_eq!(
            mismatches(&seen),
            0,
            "{} with Palisade:\n{}",
            scenario.label,
            report::table(&seen)
        );
    }
}

fn ignored_without_palisade(name: &str) {
    for scenario in scenarios(name) {
        let (probes, seen) = run_scenario(&scenario, false);
        assert!(
            seen.iter().all(|o| o.allowed == Some(true)),
            "{} on the plain bridge every probe should get through:\n{}",
            scenario.label,
            report::table(&seen)
        );
        let expected_denials = probes.iter().filter(|p| p.expected == Some(false)).count();
        assert!(
            expected_denials > 0,
            "{}: nothing to enforce",
            scenario.label
        );
        assert_eq!(
            mismatches(&seen),
            expected_denials,
            "{}: every expected denial is a mismatch without Palisade",
            scenario.label
        );
    }
}

#[test]
fn service_abc_enforced_with_palisade() {
    enforced("service-abc");
}

#[test]
fn apod_enforced_with_palisade() {
    enforced("apod");
}

#[test]
fn db_backup_enforced_with_palisade() {
    enforced("db-backup");
}

#[test]
fn service_abc_ignored_on_plain_bridge() {
    ignored_without_palisade("service-abc");
}

#[test]
fn apod_ignored_on_plain_bridge() {
    ignored_without_palisade("apod");
}

#[test]
fn db_backup_ignored_on_plain_bridge() {
    ignored_without_palisade("db-backup");
}
