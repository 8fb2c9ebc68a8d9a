//! Palisade as it ships, on real nodes: two nodes running containerd and
//! the kubelet (`testbed::runtime`), Flannel's conflist, Palisade's image
//! imported and `manifests/` applied with `kubectl apply -k` (through
//! `overlays/testbed`, which changes only the image's name and pull
//! policy), then the unmodified upstream e2e suite's NetworkPolicy specs.
//!
//! This runs a named subset (one spec of each kind of check: a
//! default-deny, a named port, an ipBlock with except, a pod and
//! namespace selector, the API); `cargo xtask e2e-upstream` runs all 30.
//! Needs root, `cargo xtask setup`'s Kubernetes cache, and Palisade's
//! image archive (`PALISADE_IMAGE`, set by `cargo xtask test`; else
//! `target/palisade-image.oci.tar` as `cargo xtask image` writes it).

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use testbed::controlplane::ControlPlaneOptions;
use testbed::runtime::cluster::{RealCluster, RealClusterOptions};
use testbed::runtime::e2e::{run_suite, SuiteOptions};
use testbed::runtime::flannel;
use testbed::runtime::images::ImageArchive;

/// The upstream specs this test runs, and how many there are.
const SUBSET: &str = "support a 'default-deny-ingress' policy|allow ingress access on one named port|enforce except clause while egress access|should enforce policy based on PodSelector and NamespaceSelector|NetworkPolicy API should support creating";
const SUBSET_SPECS: usize = 5;

fn workspace() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .map(Path::to_path_buf)
        .unwrap_or_else(|| PathBuf::from(".."))
}

fn palisade_image() -> ImageArchive {
    let path = std::env::var_os("PALISADE_IMAGE")
        .map(PathBuf::from)
        .unwrap_or_else(|| workspace().join("target").join("palisade-image.oci.tar"));
    assert!(
        path.is_file(),
        "Palisade's image archive {} is missing: run `cargo xtask image`, or the tests through \
         `cargo xtask test`, or point PALISADE_IMAGE at it",
        path.display()
    );
    ImageArchive {
        path,
        name: "docker.io/library/palisade:dev".into(),
    }
}

fn two_nodes() -> RealCluster {
    RealCluster::start(RealClusterOptions {
        nodes: 2,
        flannel_plugin: PathBuf::from(env!("CARGO_BIN_EXE_palisade-testbed-flannel")),
        images: vec![palisade_image()],
        control_plane: ControlPlaneOptions::default(),
    })
    .unwrap_or_else(|e| panic!("real nodes: {e}"))
}

fn overlay() -> PathBuf {
    workspace().join("overlays").join("testbed")
}

#[test]
fn upstream_network_policy_specs_pass_with_palisade_installed_from_manifests() {
    let mut cluster = two_nodes();
    let flannel_only = flannel::conflist().as_bytes().to_vec();
    for node in cluster.nodes() {
        assert_eq!(
            node.read_file(flannel::CONFLIST_PATH).unwrap(),
            flannel_only,
            "{}: Flannel's conflist before the install",
            node.name()
        );
    }
    cluster
        .install(&overlay(), "palisade-system", "palisade-agent")
        .unwrap_or_else(|e| panic!("kubectl apply -k overlays/testbed: {e}"));
    for node in cluster.nodes() {
        let chained = String::from_utf8(node.read_file(flannel::CONFLIST_PATH).unwrap()).unwrap();
        assert!(
            chained.contains("palisade-cni"),
            "{}: the install did not chain palisade-cni:\n{chained}",
            node.name()
        );
        assert!(node.path("/opt/cni/bin/palisade-cni").is_file());
    }
    let report_dir = cluster.control_plane().dir().join("e2e-report");
    let log = cluster.control_plane().dir().join("ginkgo.log");
    let result = run_suite(
        cluster.control_plane(),
        2,
        &SuiteOptions {
            focus: SUBSET.into(),
            skip: None,
            parallel: 3,
            report_dir,
        },
        &log,
    )
    .unwrap_or_else(|e| panic!("running the suite: {e}"));
    let ginkgo = std::fs::read_to_string(&log).unwrap_or_default();
    assert!(
        result.success && result.failed.is_empty() && result.passed == SUBSET_SPECS,
        "upstream specs: {} passed, failed {:?} (want {SUBSET_SPECS} passed)\n--- ginkgo ---\n{}",
        result.passed,
        result.failed,
        ginkgo
    );
}

/// `kubectl delete -k` removes the RBAC, the ServiceAccount and the
/// DaemonSet in one command, as users uninstall: every node must be left
/// with Flannel's conflist exactly as it was and go on starting pods.
#[test]
fn kubectl_delete_k_leaves_every_node_starting_pods_with_flannels_conflist() {
    let mut cluster = two_nodes();
    let before: Vec<Vec<u8>> = cluster
        .nodes()
        .iter()
        .map(|n| n.read_file(flannel::CONFLIST_PATH).unwrap())
        .collect();
    cluster
        .install(&overlay(), "palisade-system", "palisade-agent")
        .unwrap_or_else(|e| panic!("kubectl apply -k overlays/testbed: {e}"));
    let path = overlay().display().to_string();
    cluster
        .control_plane()
        .kubectl(&["delete", "-k", &path, "--wait=false"])
        .unwrap_or_else(|e| panic!("kubectl delete -k overlays/testbed: {e}"));
    let deadline = Instant::now() + Duration::from_secs(90);
    for (node, before) in cluster.nodes().iter().zip(&before) {
        loop {
            let now = node.read_file(flannel::CONFLIST_PATH).unwrap_or_default();
            if &now == before {
                break;
            }
            assert!(
                Instant::now() < deadline,
                "{}: the conflist still differs from Flannel's after the uninstall:\n{}",
                node.name(),
                String::from_utf8_lossy(&now)
            );
            std::thread::sleep(Duration::from_millis(500));
        }
    }
    for (i, node) in cluster.nodes().iter().enumerate() {
        cluster
            .run_pod(
                "default",
                &format!("after-uninstall-{i}"),
                node.name(),
                Duration::from_secs(60),
            )
            .unwrap_or_else(|e| panic!("a new pod after the uninstall: {e}"));
    }
}
