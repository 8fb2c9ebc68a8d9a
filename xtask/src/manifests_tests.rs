//! The install manifests parse and stay least-privilege.

use std::path::{Path, PathBuf};

use serde::Deserialize;
use serde_json::Value;

fn yaml_files(dir: &Path, out: &mut Vec<PathBuf>) {
    for entry in std::fs::read_dir(dir).unwrap() {
        let path = entry.unwrap().path();
        if path.is_dir() {
            yaml_files(&path, out);
        } else if path.extension().is_some_and(|e| e == "yaml" || e == "yml") {
            out.push(path);
        }
    }
}

/// Every document of every YAML file under manifests/, with its file.
fn documents() -> Vec<(PathBuf, Value)> {
    let mut files = Vec::new();
    yaml_files(&crate::cmd::workspace_root().join("manifests"), &mut files);
    files.sort();
    assert!(!files.is_empty(), "no manifests found");
    let mut docs = Vec::new();
    for file in files {
        let text = std::fs::read_to_string(&file).unwrap();
        for doc in serde_norway::Deserializer::from_str(&text) {
            let v = Value::deserialize(doc)
                .unwrap_or_else(|e| panic!("{}: invalid YAML: {e}", file.display()));
            if !v.is_null() {
                docs.push((file.clone(), v));
            }
        }
    }
    docs
}

fn of_kind<'a>(docs: &'a [(PathBuf, Value)], kind: &str) -> Vec<&'a Value> {
    docs.iter()
        .filter(|(_, d)| d["kind"] == kind)
        .map(|(_, d)| d)
        .collect()
}

#[test]
fn every_manifest_parses_and_names_its_kind() {
    let docs = documents();
    for (file, d) in &docs {
        assert!(
            d["apiVersion"].is_string(),
            "{}: no apiVersion",
            file.display()
        );
        assert!(d["kind"].is_string(), "{}: no kind", file.display());
    }
    for kind in [
        "Namespace",
        "ServiceAccount",
        "ClusterRole",
        "ClusterRoleBinding",
        "DaemonSet",
        "Cluster",
    ] {
        assert_eq!(of_kind(&docs, kind).len(), 1, "expected one {kind}");
    }
}

#[test]
fn the_cluster_role_only_reads_what_policies_depend_on() {
    let docs = documents();
    let role = of_kind(&docs, "ClusterRole")[0];
    let mut granted = Vec::new();
    for rule in role["rules"].as_array().unwrap() {
        for verb in rule["verbs"].as_array().unwrap() {
            assert!(
                ["get", "list", "watch"].contains(&verb.as_str().unwrap()),
                "write verb {verb} granted"
            );
        }
        for group in rule["apiGroups"].as_array().unwrap() {
            for res in rule["resources"].as_array().unwrap() {
                granted.push(format!(
                    "{}/{}",
                    group.as_str().unwrap(),
                    res.as_str().unwrap()
                ));
            }
        }
    }
    granted.sort();
    assert_eq!(
        granted,
        ["/namespaces", "/pods", "networking.k8s.io/networkpolicies"]
    );
}

#[test]
fn only_the_bpffs_mount_is_privileged_and_capabilities_are_minimal() {
    let docs = documents();
    let ds = of_kind(&docs, "DaemonSet")[0];
    let spec = &ds["spec"]["template"]["spec"];
    assert_eq!(spec["hostNetwork"], true);
    assert_eq!(spec["serviceAccountName"], "palisade-agent");
    let containers = spec["initContainers"]
        .as_array()
        .unwrap()
        .iter()
        .chain(spec["containers"].as_array().unwrap());
    for c in containers {
        let name = c["name"].as_str().unwrap();
        let sc = &c["securityContext"];
        if name == "mount-bpffs" {
            continue;
        }
        assert_ne!(sc["privileged"], true, "{name} is privileged");
        let added: Vec<&str> = sc["capabilities"]["add"]
            .as_array()
            .map(|a| a.iter().map(|v| v.as_str().unwrap()).collect())
            .unwrap_or_default();
        for cap in &added {
            assert!(
                ["NET_ADMIN", "BPF", "PERFMON", "SYS_ADMIN"].contains(cap),
                "{name} adds {cap}"
            );
        }
        if name != "agent" {
            assert!(added.is_empty(), "{name} needs no capabilities");
        }
        assert_eq!(sc["capabilities"]["drop"][0], "ALL", "{name}");
    }
    let agent = spec["containers"]
        .as_array()
        .unwrap()
        .iter()
        .find(|c| c["name"] == "agent")
        .unwrap();
    assert_eq!(agent["livenessProbe"]["httpGet"]["path"], "/healthz");
    assert_eq!(agent["readinessProbe"]["httpGet"]["path"], "/readyz");
    assert_eq!(agent["livenessProbe"]["httpGet"]["port"], 9090);
    let cmd: Vec<&str> = agent["command"]
        .as_array()
        .unwrap()
        .iter()
        .map(|v| v.as_str().unwrap())
        .collect();
    assert!(cmd.windows(2).any(|w| w == ["--node-name", "$(NODE_NAME)"]));
    assert!(cmd.contains(&"--kube"));
}

#[test]
fn the_kind_cluster_has_no_default_cni() {
    let docs = documents();
    let kind = of_kind(&docs, "Cluster")[0];
    assert_eq!(kind["networking"]["disableDefaultCNI"], true);
    assert_eq!(kind["networking"]["podSubnet"], "10.244.0.0/16");
}
