//! The install (`kubectl apply -k manifests/`) stays least-privilege, and
//! says so truthfully: a policy over the rendered objects, held to the
//! tables of docs/install.md. No API server needed (the test bed's real one
//! checks the same install in `tests/tests/install_apiserver.rs`).

use std::path::Path;

use serde::Deserialize;
use serde_json::Value;

use crate::cmd::workspace_root;

fn yaml_documents(text: &str, what: &str) -> Vec<Value> {
    serde_norway::Deserializer::from_str(text)
        .map(|doc| Value::deserialize(doc).unwrap_or_else(|e| panic!("{what}: invalid YAML: {e}")))
        .filter(|v| !v.is_null())
        .collect()
}

/// What `kubectl apply -k dir` applies, rendered as kustomize v2.0.3 (the
/// one in kubectl 1.20) does for the features we use: each resource file's
/// documents in order, then `images` overrides.
pub fn render(dir: &Path) -> Vec<Value> {
    let k = std::fs::read_to_string(dir.join("kustomization.yaml")).unwrap();
    let k = &yaml_documents(&k, "kustomization.yaml")[0];
    let allowed = ["apiVersion", "kind", "resources", "images"];
    for key in k.as_object().unwrap().keys() {
        assert!(
            allowed.contains(&key.as_str()),
            "kustomization field {key}: keep to what kubectl 1.20's kustomize knows and this renderer renders"
        );
    }
    let mut docs = Vec::new();
    for r in k["resources"].as_array().unwrap() {
        let file = dir.join(r.as_str().unwrap());
        let text = std::fs::read_to_string(&file).unwrap();
        docs.extend(yaml_documents(&text, &file.display().to_string()));
    }
    for image in k["images"].as_array().into_iter().flatten() {
        for doc in &mut docs {
            retag(doc, image);
        }
    }
    docs
}

fn retag(doc: &mut Value, image: &Value) {
    let Some(spec) = doc.pointer_mut("/spec/template/spec") else {
        return;
    };
    for list in ["initContainers", "containers"] {
        let list = spec.get_mut(list).and_then(Value::as_array_mut);
        for c in list.into_iter().flatten() {
            let current = c["image"].as_str().unwrap_or("").to_string();
            let (name, tag) = current
                .split_once(':')
                .unwrap_or((current.as_str(), "latest"));
            if name != image["name"].as_str().unwrap_or("") {
                continue;
            }
            let name = image["newName"].as_str().unwrap_or(name);
            let tag = image["newTag"].as_str().unwrap_or(tag);
            c["image"] = Value::String(format!("{name}:{tag}"));
        }
    }
}

fn rendered() -> Vec<Value> {
    render(&workspace_root().join("manifests"))
}

fn of_kind<'a>(docs: &'a [Value], kind: &str) -> Vec<&'a Value> {
    docs.iter().filter(|d| d["kind"] == kind).collect()
}

fn pod_spec(docs: &[Value]) -> &Value {
    let ds = of_kind(docs, "DaemonSet");
    assert_eq!(ds.len(), 1);
    &ds[0]["spec"]["template"]["spec"]
}

fn containers(spec: &Value) -> Vec<&Value> {
    ["initContainers", "containers"]
        .iter()
        .flat_map(|l| spec[*l].as_array().into_iter().flatten())
        .collect()
}

fn strings(v: &Value) -> Vec<String> {
    v.as_array()
        .into_iter()
        .flatten()
        .map(|s| s.as_str().unwrap().to_string())
        .collect()
}

/// The first column (in backticks) of the rows of the table under the
/// heading `title` of docs/install.md.
fn documented(title: &str) -> Vec<String> {
    let text = std::fs::read_to_string(workspace_root().join("docs/install.md")).unwrap();
    let section = text
        .split("\n#")
        .find(|s| s.trim_start_matches('#').trim_start().starts_with(title))
        .unwrap_or_else(|| panic!("docs/install.md has no section {title:?}"));
    let mut out: Vec<String> = section
        .lines()
        .filter_map(|l| l.strip_prefix("| `"))
        .filter_map(|l| l.split_once('`').map(|(v, _)| v.to_string()))
        .collect();
    out.sort();
    out
}

#[test]
fn the_kustomization_renders_every_object_once() {
    let docs = rendered();
    for d in &docs {
        assert!(d["apiVersion"].is_string() && d["kind"].is_string(), "{d}");
    }
    for kind in [
        "Namespace",
        "ServiceAccount",
        "ClusterRole",
        "ClusterRoleBinding",
        "Role",
        "RoleBinding",
        "DaemonSet",
    ] {
        assert_eq!(of_kind(&docs, kind).len(), 1, "expected one {kind}");
    }
    let ns = of_kind(&docs, "Namespace")[0]["metadata"]["name"].clone();
    for d in &docs {
        if !["Namespace", "ClusterRole", "ClusterRoleBinding"]
            .contains(&d["kind"].as_str().unwrap())
        {
            assert_eq!(d["metadata"]["namespace"], ns, "{}", d["kind"]);
        }
    }
    for c in containers(pod_spec(&docs)) {
        assert_eq!(c["image"], "palisade:dev", "{}", c["name"]);
    }
}

#[test]
fn the_cluster_role_reads_exactly_what_the_docs_list() {
    let docs = rendered();
    let role = of_kind(&docs, "ClusterRole")[0];
    let mut granted = Vec::new();
    let mut writes = Vec::new();
    for rule in role["rules"].as_array().unwrap() {
        assert!(rule.get("resourceNames").is_none() && rule.get("nonResourceURLs").is_none());
        if strings(&rule["verbs"]) != ["get", "list", "watch"] {
            writes.push(rule.clone());
            continue;
        }
        for group in strings(&rule["apiGroups"]) {
            for res in strings(&rule["resources"]) {
                assert_ne!(res, "*");
                granted.push(if group.is_empty() {
                    res
                } else {
                    format!("{group}/{res}")
                });
            }
        }
    }
    granted.sort();
    assert_eq!(granted, documented("What the agent may read"));
    // Its one write: Events about enforcement, create and patch only.
    assert_eq!(writes.len(), 1, "{writes:?}");
    assert_eq!(strings(&writes[0]["apiGroups"]), ["events.k8s.io"]);
    assert_eq!(strings(&writes[0]["resources"]), ["events"]);
    assert_eq!(strings(&writes[0]["verbs"]), ["create", "patch"]);
    assert_eq!(
        documented("What the agent may write"),
        ["events.k8s.io/events"]
    );
    let binding = of_kind(&docs, "ClusterRoleBinding")[0];
    assert_eq!(binding["roleRef"]["name"], role["metadata"]["name"]);
    let sa = of_kind(&docs, "ServiceAccount")[0];
    assert_eq!(binding["subjects"][0]["name"], sa["metadata"]["name"]);
    assert_eq!(
        pod_spec(&docs)["serviceAccountName"],
        sa["metadata"]["name"]
    );
}

/// The one namespaced grant: `get`, `list` and `watch` on the agent's own
/// DaemonSet, by name, in its own namespace (to tell an uninstall from a
/// restart, watched from the start since `kubectl delete -k` deletes the
/// RBAC before the agent stops), and the agent is told that DaemonSet.
#[test]
fn the_role_reads_only_the_agents_own_daemonset() {
    let docs = rendered();
    let role = of_kind(&docs, "Role")[0];
    let ds = of_kind(&docs, "DaemonSet")[0];
    let rules = role["rules"].as_array().unwrap();
    assert_eq!(rules.len(), 1, "{role}");
    assert_eq!(strings(&rules[0]["verbs"]), ["get", "list", "watch"]);
    assert_eq!(strings(&rules[0]["apiGroups"]), ["apps"]);
    assert_eq!(strings(&rules[0]["resources"]), ["daemonsets"]);
    assert_eq!(
        strings(&rules[0]["resourceNames"]),
        [ds["metadata"]["name"].as_str().unwrap()]
    );
    assert_eq!(role["metadata"]["namespace"], ds["metadata"]["namespace"]);
    let binding = of_kind(&docs, "RoleBinding")[0];
    assert_eq!(binding["roleRef"]["kind"], "Role");
    assert_eq!(binding["roleRef"]["name"], role["metadata"]["name"]);
    let sa = of_kind(&docs, "ServiceAccount")[0];
    assert_eq!(binding["subjects"][0]["name"], sa["metadata"]["name"]);
    let agent = containers(pod_spec(&docs))
        .into_iter()
        .find(|c| c["name"] == "agent")
        .unwrap();
    let args = strings(&agent["command"]);
    let at = args
        .iter()
        .position(|a| a == "--uninstall-when-deleted")
        .expect("the agent is told its DaemonSet");
    assert_eq!(
        args[at + 1],
        format!(
            "$(POD_NAMESPACE)/{}",
            ds["metadata"]["name"].as_str().unwrap()
        )
    );
}

#[test]
fn no_privileged_agent_and_capabilities_exactly_as_documented() {
    let docs = rendered();
    let spec = pod_spec(&docs);
    assert_eq!(spec["hostNetwork"], true);
    assert_eq!(spec["priorityClassName"], "system-node-critical");
    assert_eq!(spec["tolerations"][0]["operator"], "Exists");
    assert_eq!(
        spec["securityContext"]["seccompProfile"]["type"],
        "RuntimeDefault"
    );
    for c in containers(spec) {
        let name = c["name"].as_str().unwrap();
        let sc = &c["securityContext"];
        assert!(
            sc["seccompProfile"].is_null(),
            "{name} overrides the pod's seccomp profile"
        );
        assert!(
            c["resources"]["requests"].is_object(),
            "{name} has no requests"
        );
        assert!(
            c["resources"]["limits"]["memory"].is_string(),
            "{name} has no memory limit"
        );
        if name == "mount-bpffs" {
            // The one exception: an init container with a fixed command
            // that only mounts bpffs on the host.
            assert!(spec["initContainers"].as_array().unwrap().contains(c));
            assert_eq!(
                strings(&c["command"]),
                [
                    "/usr/local/bin/policy-agent",
                    "mount-bpffs",
                    "--path",
                    "/sys/fs/bpf"
                ]
            );
            continue;
        }
        assert_ne!(sc["privileged"], true, "{name} is privileged");
        assert_eq!(sc["allowPrivilegeEscalation"], false, "{name}");
        assert_eq!(sc["readOnlyRootFilesystem"], true, "{name}");
        assert_eq!(strings(&sc["capabilities"]["drop"]), ["ALL"], "{name}");
        let mut added = strings(&sc["capabilities"]["add"]);
        added.sort();
        if name == "agent" {
            assert_eq!(added, documented("What the agent may do"));
        } else {
            assert!(added.is_empty(), "{name} needs no capabilities: {added:?}");
        }
    }
}

#[test]
fn host_paths_are_only_the_documented_folders() {
    let docs = rendered();
    let spec = pod_spec(&docs);
    let mut paths: Vec<String> = spec["volumes"]
        .as_array()
        .unwrap()
        .iter()
        .filter_map(|v| v["hostPath"]["path"].as_str().map(str::to_string))
        .collect();
    paths.sort();
    assert_eq!(paths, documented("Host folders"));
    assert!(
        spec["volumes"]
            .as_array()
            .unwrap()
            .iter()
            .all(|v| v["hostPath"].is_object()),
        "a volume that is not a documented hostPath"
    );
}

#[test]
fn the_agent_is_probed_and_told_its_node() {
    let docs = rendered();
    let spec = pod_spec(&docs);
    let agent = spec["containers"]
        .as_array()
        .unwrap()
        .iter()
        .find(|c| c["name"] == "agent")
        .unwrap();
    assert_eq!(agent["livenessProbe"]["httpGet"]["path"], "/healthz");
    assert_eq!(agent["readinessProbe"]["httpGet"]["path"], "/readyz");
    let cmd = strings(&agent["command"]);
    assert!(cmd.windows(2).any(|w| w == ["--node-name", "$(NODE_NAME)"]));
    assert!(cmd.contains(&"--kube".to_string()));
    assert_eq!(
        agent["env"][0]["valueFrom"]["fieldRef"]["fieldPath"],
        "spec.nodeName"
    );
    // Health and metrics on the node's own address and Palisade's port,
    // not every interface of the host network and not Prometheus's 9090.
    assert!(
        cmd.windows(2)
            .any(|w| w == ["--health-addr", "$(HOST_IP):9969"]),
        "{cmd:?}"
    );
    let host_ip = agent["env"]
        .as_array()
        .unwrap()
        .iter()
        .find(|e| e["name"] == "HOST_IP")
        .expect("HOST_IP from the downward API");
    assert_eq!(
        host_ip["valueFrom"]["fieldRef"]["fieldPath"],
        "status.hostIP"
    );
    for probe in ["livenessProbe", "readinessProbe"] {
        assert_eq!(agent[probe]["httpGet"]["port"], 9969, "{probe}");
    }
    assert_eq!(agent["ports"][0]["containerPort"], 9969);
    let text =
        std::fs::read_to_string(workspace_root().join("manifests/20-daemonset.yaml")).unwrap();
    assert!(
        !text.contains("0.0.0.0") && !text.contains("9090"),
        "the agent binds every interface or Prometheus's port"
    );
    let ds = of_kind(&docs, "DaemonSet")[0];
    assert_eq!(ds["spec"]["updateStrategy"]["type"], "RollingUpdate");
    // The installer init container copies the binary only and cannot
    // touch the conflist: the agent chains the entry itself once it
    // enforces (an agent that cannot load must not fail every ADD), in
    // the folder it is given.
    let installs = |c: &&Value| strings(&c["command"]).contains(&"install".to_string());
    let installer = spec["initContainers"]
        .as_array()
        .unwrap()
        .iter()
        .find(|c| installs(c))
        .expect("an installer init container");
    assert!(strings(&installer["command"]).contains(&"--binary-only".to_string()));
    assert!(
        installer["volumeMounts"]
            .as_array()
            .unwrap()
            .iter()
            .all(|m| m["name"] != "cni-conf"),
        "the installer mounts the CNI configuration folder"
    );
    assert!(cmd
        .windows(2)
        .any(|w| w == ["--cni-conf-dir", "/host/etc/cni/net.d"]));
    // The CNI bin folder is the installer's alone: an agent that could
    // write it could replace any plugin the runtime runs as root.
    assert!(
        agent["volumeMounts"]
            .as_array()
            .unwrap()
            .iter()
            .all(|m| m["name"] != "cni-bin"),
        "the agent mounts the CNI bin folder"
    );
    assert!(!cmd.contains(&"--cni-bin-dir".to_string()));
}

/// The image holds two static binaries and no shell (`cargo xtask image`):
/// every container must run one of them, and only on Linux nodes.
#[test]
fn every_container_runs_a_binary_of_the_image_on_linux_nodes() {
    let docs = rendered();
    let spec = pod_spec(&docs);
    assert_eq!(spec["nodeSelector"]["kubernetes.io/os"], "linux");
    let shipped = crate::image::files();
    for c in containers(spec) {
        let cmd = strings(&c["command"]);
        assert!(
            shipped.contains(&cmd[0]),
            "{} runs {}, which the image does not hold ({shipped:?})",
            c["name"],
            cmd[0]
        );
    }
}

#[test]
fn the_kind_cluster_has_no_default_cni() {
    let path = workspace_root().join("manifests/kind/kind-config.yaml");
    let docs = yaml_documents(&std::fs::read_to_string(&path).unwrap(), "kind-config");
    assert_eq!(docs[0]["kind"], "Cluster");
    assert_eq!(docs[0]["networking"]["disableDefaultCNI"], true);
    assert_eq!(docs[0]["networking"]["podSubnet"], "10.244.0.0/16");
    // The repository files its comments name exist.
    let text = std::fs::read_to_string(&path).unwrap();
    for word in text.split_whitespace() {
        let word = word.trim_matches(|c: char| "():,`'\"".contains(c));
        if word.contains('/') && [".sh", ".rs", ".yaml"].iter().any(|e| word.ends_with(e)) {
            assert!(
                workspace_root().join(word).exists(),
                "kind-config.yaml names {word}, which does not exist"
            );
        }
    }
}

/// `kubectl kustomize dir` with the kubectl at `kubectl`, as documents.
fn kubectl_kustomize(kubectl: &Path, dir: &Path) -> Vec<Value> {
    let out = std::process::Command::new(kubectl)
        .arg("kustomize")
        .arg(dir)
        .output()
        .unwrap_or_else(|e| panic!("cannot run {}: {e}", kubectl.display()));
    assert!(
        out.status.success(),
        "{} kustomize {}: {}",
        kubectl.display(),
        dir.display(),
        String::from_utf8_lossy(&out.stderr)
    );
    yaml_documents(&String::from_utf8_lossy(&out.stdout), "kubectl kustomize")
}

/// The DaemonSet of `docs` and the host paths of its `cni-bin` and
/// `cni-conf` volumes, which are then set to "" in the returned copy.
fn daemonset_and_cni_paths(docs: &[Value]) -> (Value, String, String) {
    let mut ds = of_kind(docs, "DaemonSet")[0].clone();
    let mut paths = Vec::new();
    for name in ["cni-bin", "cni-conf"] {
        let volumes = ds["spec"]["template"]["spec"]["volumes"]
            .as_array_mut()
            .unwrap();
        let v = volumes.iter_mut().find(|v| v["name"] == name).unwrap();
        paths.push(v["hostPath"]["path"].as_str().unwrap().to_string());
        v["hostPath"]["path"] = Value::String(String::new());
    }
    // A strategic merge may put the patched volumes first.
    if let Some(volumes) = ds["spec"]["template"]["spec"]["volumes"].as_array_mut() {
        volumes.sort_by_key(|v| v["name"].as_str().unwrap_or_default().to_string());
    }
    (ds, paths.remove(0), paths.remove(0))
}

/// Checks that `overlay`, rendered by `kubectl`, is the base with only the
/// two CNI folders changed, to these.
fn check_k3s_overlay(kubectl: &Path, overlay: &str, bin_dir: &str) {
    let root = workspace_root();
    let (base, _, _) =
        daemonset_and_cni_paths(&kubectl_kustomize(kubectl, &root.join("manifests")));
    let docs = kubectl_kustomize(kubectl, &root.join(overlay));
    let (ds, bin, conf) = daemonset_and_cni_paths(&docs);
    assert_eq!(bin, bin_dir, "{overlay} with {}", kubectl.display());
    assert_eq!(
        conf, "/var/lib/rancher/k3s/agent/etc/cni/net.d",
        "{overlay}"
    );
    assert_eq!(ds, base, "{overlay} changes more than the CNI folders");
    assert_eq!(docs.len(), rendered().len(), "{overlay}");
}

/// The major version of the kustomize built into `kubectl`, if it runs.
fn kustomize_major(kubectl: &Path) -> Option<u32> {
    let out = std::process::Command::new(kubectl)
        .args(["version", "--client", "-o", "json"])
        .output()
        .ok()?;
    let v: Value = serde_json::from_slice(&out.stdout).ok()?;
    v["kustomizeVersion"]
        .as_str()?
        .trim_start_matches('v')
        .split('.')
        .next()?
        .parse()
        .ok()
}

/// k3s's containerd takes plugins from `data/cni` since v1.28.15 /
/// v1.29.10 / v1.30.6 / v1.31.2, from `data/current/bin` before; each
/// overlay is rendered by a real kubectl of its era: the older one by
/// kubectl 1.20 (kustomize v2.0.3, the test bed's), the current one by
/// the kubectl on PATH when its kustomize is v4 or later (kubectl 1.21+).
#[test]
fn the_k3s_overlays_point_the_installer_at_k3s_cni_folders() {
    let old = testbed::controlplane::kube_bin_dir().join("kubectl");
    assert!(
        old.is_file(),
        "{} is missing: run `cargo xtask setup` (it builds Kubernetes 1.20.2)",
        old.display()
    );
    check_k3s_overlay(
        &old,
        "overlays/k3s-before-1.28.15",
        "/var/lib/rancher/k3s/data/current/bin",
    );
    let current = Path::new("kubectl");
    match kustomize_major(current) {
        Some(major) if major >= 4 => {
            check_k3s_overlay(current, "overlays/k3s", "/var/lib/rancher/k3s/data/cni");
            check_k3s_overlay(
                current,
                "overlays/k3s-before-1.28.15",
                "/var/lib/rancher/k3s/data/current/bin",
            );
        }
        other => eprintln!(
            "note: no kubectl with kustomize v4+ on PATH ({other:?}): overlays/k3s not rendered"
        ),
    }
}
