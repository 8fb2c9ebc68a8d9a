//! `simulate -o html` (issue 21, item 5) in a real headless browser
//! (Debian's chromium): the built `policy-agent` writes the page for each
//! example cluster, the browser renders it and runs its script, and the
//! counts the script wrote into the DOM (allowed, denied, changed cells)
//! match the JSON output of the same simulate. The what-if page is checked
//! against the live cluster in `whatif_kube.rs`. Needs the binaries (see
//! `palisade_tests::bin_dir`) and chromium.

use std::path::Path;

use palisade_tests::browser::{counted, rendered_dom};
use palisade_tests::{bin_dir, workspace_root};

fn simulate(cluster: &Path, output: &str) -> String {
    let agent = bin_dir().join(testbed::AGENT_BINARY);
    let out = std::process::Command::new(&agent)
        .arg("simulate")
        .arg("-f")
        .arg(cluster)
        .args(["-o", output])
        .output()
        .unwrap_or_else(|e| panic!("{}: {e}", agent.display()));
    assert!(
        out.status.success(),
        "simulate -f {} -o {output}: {}",
        cluster.display(),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).unwrap()
}

#[test]
fn the_page_renders_and_its_counts_match_the_json() {
    let dir = tempfile::tempdir().unwrap();
    let mut clusters: Vec<_> = std::fs::read_dir(workspace_root().join("examples"))
        .unwrap()
        .map(|e| e.unwrap().path().join("cluster.yaml"))
        .filter(|p| p.is_file())
        .collect();
    clusters.sort();
    assert!(clusters.len() >= 2, "{clusters:?}");
    for cluster in &clusters {
        let (mut allowed, mut denied) = (0, 0);
        for line in simulate(cluster, "json").lines() {
            let v: serde_json::Value = serde_json::from_str(line).unwrap();
            match v["allowed"].as_bool() {
                Some(true) => allowed += 1,
                Some(false) => denied += 1,
                None => panic!("{}: {line}", cluster.display()),
            }
        }
        let page = dir.path().join("page.html");
        std::fs::write(&page, simulate(cluster, "html")).unwrap();
        let dom = rendered_dom(&page);
        assert_eq!(
            (
                counted(&dom, "count-allowed"),
                counted(&dom, "count-denied"),
                counted(&dom, "count-changed")
            ),
            (allowed, denied, 0),
            "{}",
            cluster.display()
        );
        assert!(dom.contains("data-counted=\"yes\""), "{dom}");
    }
}
