//! A seed scenario (`examples/apod`) on real nodes, as `cargo xtask
//! testbed --kube --runtime containerd` runs it: two nodes running the
//! kubelet and containerd, Palisade installed from its image with `kubectl
//! apply -k overlays/testbed`, the scenario's pods as agnhost containers
//! with the manifest's labels and ports, each probe run inside its client
//! pod with `agnhost connect`. Every probe that can run on real nodes must
//! agree with its expectation; the denials among them fail without
//! Palisade (`--no-palisade` shows them as mismatches).
//!
//! Needs root, `cargo xtask setup`'s Kubernetes cache and Palisade's image
//! archive (`PALISADE_IMAGE`, set by `cargo xtask test`; else
//! `target/palisade-image.oci.tar` as `cargo xtask image` writes it).

use std::path::PathBuf;

use testbed::runtime::images::{palisade_image_for_tests, workspace_dir};
use testbed::scenario::{run, Kubelet, RealNodes, Scenario};

#[test]
fn apod_on_real_nodes_with_palisade_matches_every_expectation() {
    let example = workspace_dir().join("examples").join("apod");
    let scenario = Scenario {
        manifests: example.join("cluster.yaml"),
        probes: Some(example.join("probes.jsonl")),
        palisade: true,
        nodes: 2,
        bin_dir: PathBuf::new(),
    };
    let kubelet = Kubelet::Containerd(RealNodes {
        flannel_plugin: PathBuf::from(env!("CARGO_BIN_EXE_palisade-testbed-flannel")),
        palisade_image: Some(palisade_image_for_tests().unwrap_or_else(|e| panic!("{e}"))),
        overlay: workspace_dir().join("overlays").join("testbed"),
    });
    let outcome = run(&scenario, &kubelet).unwrap_or_else(|e| panic!("apod on real nodes: {e}"));
    let table = testbed::report::table(&outcome.observations);
    eprintln!("{}\n{table}", outcome.notes.join("\n"));
    assert_eq!(testbed::mismatches(&outcome.observations), 0, "{table}");
    // The probes between pods all ran (only the outside host's is
    // skipped: real nodes have no outside network), denials among them:
    // without enforcement those are the mismatches.
    let ran: Vec<_> = outcome
        .observations
        .iter()
        .filter(|o| o.allowed.is_some())
        .collect();
    assert_eq!(ran.len(), 7, "{table}");
    assert_eq!(
        ran.iter().filter(|o| o.allowed == Some(false)).count(),
        3,
        "{table}"
    );
}
