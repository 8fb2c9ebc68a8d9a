//! Palisade as it ships, on real nodes: two nodes running containerd and
//! the kubelet (`testbed::runtime`), Flannel's conflist, Palisade's image
//! imported and `manifests/` applied with `kubectl apply -k` (through
//! `overlays/testbed`, which changes only the image's name and pull
//! policy). One cluster lives through a user's whole story, phase by
//! phase (starting a cluster costs about a minute): pods running before
//! the install, an agent that cannot load, the install, the kubelet's
//! probes, Flannel rewriting its conflist, the unmodified upstream e2e
//! suite's NetworkPolicy specs, a rolling restart under traffic, and the
//! uninstall.
//!
//! The upstream specs run here are a named subset (one spec of each kind
//! of check: a default-deny, a named port, an ipBlock with except, a pod
//! and namespace selector, the API); `cargo xtask e2e-upstream` runs all
//! 30. Needs root, `cargo xtask setup`'s Kubernetes cache, and Palisade's
//! image archive (`PALISADE_IMAGE`, set by `cargo xtask test`; else
//! `target/palisade-image.oci.tar` as `cargo xtask image` writes it).

use std::path::PathBuf;
use std::time::{Duration, Instant};

use testbed::controlplane::ControlPlaneOptions;
use testbed::runtime::cluster::{RealCluster, RealClusterOptions};
use testbed::runtime::e2e::{run_suite, SuiteOptions};
use testbed::runtime::flannel;
use testbed::runtime::images::{palisade_image_for_tests, workspace_dir};
use testbed::runtime::workload::Connect;

/// The upstream specs this test runs, and how many there are.
const SUBSET: &str = "support a 'default-deny-ingress' policy|allow ingress access on one named port|enforce except clause while egress access|should enforce policy based on PodSelector and NamespaceSelector|NetworkPolicy API should support creating";
const SUBSET_SPECS: usize = 5;

fn two_nodes() -> RealCluster {
    RealCluster::start(RealClusterOptions {
        nodes: 2,
        flannel_plugin: PathBuf::from(env!("CARGO_BIN_EXE_palisade-testbed-flannel")),
        images: vec![palisade_image_for_tests().unwrap_or_else(|e| panic!("{e}"))],
        control_plane: ControlPlaneOptions::default(),
    })
    .unwrap_or_else(|e| panic!("real nodes: {e}"))
}

fn overlay() -> PathBuf {
    workspace_dir().join("overlays").join("testbed")
}

/// The namespace of the story's own pods.
const NS: &str = "life";
/// The port `web` serves on.
const WEB_PORT: u16 = 8080;

/// A server, two clients on the same node, and the policies that judge
/// them: `web` admits only `role=client`; pods labelled `sealed=true` may
/// send nothing. Applied before Palisade, so the pods run before it.
const WORKLOAD: &str = r#"apiVersion: v1
kind: Namespace
metadata:
  name: life
---
apiVersion: networking.k8s.io/v1
kind: NetworkPolicy
metadata:
  name: web-from-clients
  namespace: life
spec:
  podSelector:
    matchLabels: {app: web}
  ingress:
    - from:
        - podSelector:
            matchLabels: {role: client}
      ports:
        - port: 8080
---
apiVersion: networking.k8s.io/v1
kind: NetworkPolicy
metadata:
  name: sealed
  namespace: life
spec:
  podSelector:
    matchLabels: {sealed: "true"}
  policyTypes: [Egress]
---
apiVersion: v1
kind: Pod
metadata:
  name: web
  namespace: life
  labels: {app: web}
spec:
  nodeName: node0
  terminationGracePeriodSeconds: 0
  containers:
    - name: netexec
      image: k8s.gcr.io/e2e-test-images/agnhost:2.21
      imagePullPolicy: Never
      args: ["netexec", "--http-port=8080"]
"#;

/// A pod `name` in `life` running `agnhost pause` on `node` with `labels`
/// (a YAML flow mapping).
fn client_pod(name: &str, node: &str, labels: &str) -> String {
    format!(
        r#"---
apiVersion: v1
kind: Pod
metadata:
  name: {name}
  namespace: life
  labels: {labels}
spec:
  nodeName: {node}
  terminationGracePeriodSeconds: 0
  containers:
    - name: pause
      image: k8s.gcr.io/e2e-test-images/agnhost:2.21
      imagePullPolicy: Never
      args: ["pause"]
"#
    )
}

/// An ingress-isolated namespace whose pod has a readiness probe: the
/// kubelet probes from the node (Flannel's bridge gateway address, which
/// node1 gets at its first pod ADD, after the agent started there).
const PROBED: &str = r#"apiVersion: v1
kind: Namespace
metadata:
  name: probed
---
apiVersion: networking.k8s.io/v1
kind: NetworkPolicy
metadata:
  name: deny-all-ingress
  namespace: probed
spec:
  podSelector: {}
  policyTypes: [Ingress]
---
apiVersion: v1
kind: Pod
metadata:
  name: server
  namespace: probed
spec:
  nodeName: node1
  terminationGracePeriodSeconds: 0
  containers:
    - name: netexec
      image: k8s.gcr.io/e2e-test-images/agnhost:2.21
      imagePullPolicy: Never
      args: ["netexec", "--http-port=8080"]
      readinessProbe:
        httpGet:
          path: /
          port: 8080
        periodSeconds: 2
"#;

/// The DaemonSet without `CAP_BPF`: its agent cannot load its programs.
const WITHOUT_BPF: &str = r#"apiVersion: apps/v1
kind: DaemonSet
metadata:
  name: palisade-agent
  namespace: palisade-system
spec:
  template:
    spec:
      containers:
        - name: agent
          securityContext:
            capabilities:
              add: ["NET_ADMIN", "PERFMON"]
"#;

const DAEMONSET: &str = "palisade-agent";
/// The agent pods' labels.
const AGENT_SELECTOR: &str = "app.kubernetes.io/name=palisade,app.kubernetes.io/component=agent";
const SYSTEM_NS: &str = "palisade-system";
const POD_START: Duration = Duration::from_secs(120);

/// A user's whole story with Palisade on one cluster of real nodes.
#[test]
fn palisade_on_real_nodes_from_install_to_uninstall() {
    let mut cluster = two_nodes();
    let flannel_only = flannel::conflist().as_bytes().to_vec();
    let before: Vec<Vec<u8>> = cluster
        .nodes()
        .iter()
        .map(|n| n.read_file(flannel::CONFLIST_PATH).unwrap())
        .collect();
    for (node, conflist) in cluster.nodes().iter().zip(&before) {
        assert_eq!(
            conflist,
            &flannel_only,
            "{}: Flannel's conflist",
            node.name()
        );
    }

    // A cluster whose network plugin ignores NetworkPolicy accepts the
    // policies and enforces nothing.
    let mut workload = WORKLOAD.to_string();
    workload.push_str(&client_pod("client", "node0", "{role: client}"));
    workload.push_str(&client_pod("other", "node0", "{}"));
    cluster
        .apply_yaml("workload", &workload)
        .unwrap_or_else(|e| panic!("kubectl apply: {e}"));
    let web = ready(&cluster, NS, "web");
    ready(&cluster, NS, "client");
    ready(&cluster, NS, "other");
    expect(&cluster, "before the install", "other", &web, true);

    an_agent_that_cannot_load_leaves_the_nodes_to_flannel(&mut cluster, &before);

    // The install: the pods that were running are adopted, then enforced.
    cluster
        .install(&overlay(), SYSTEM_NS, DAEMONSET)
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
    eventually(&cluster, "after the install", "other", &web, false);
    expect(&cluster, "after the install", "client", &web, true);

    // node1 had no pod yet: its bridge gets its gateway address now,
    // after the agent started, and the kubelet probes from it.
    cluster
        .apply_yaml("probed", PROBED)
        .unwrap_or_else(|e| panic!("kubectl apply: {e}"));
    ready(&cluster, "probed", "server");
    status_kube_shows_every_node(&cluster, "probed/deny-all-ingress");
    // Across the overlay: identities of node1's pods judged on node0.
    let remote = client_pod("remote-client", "node1", "{role: client}")
        + &client_pod("remote-other", "node1", "{}");
    cluster
        .apply_yaml("remote", &remote)
        .unwrap_or_else(|e| panic!("kubectl apply: {e}"));
    ready(&cluster, NS, "remote-client");
    ready(&cluster, NS, "remote-other");
    expect(&cluster, "across nodes", "remote-client", &web, true);
    expect(&cluster, "across nodes", "remote-other", &web, false);

    flannel_rewriting_its_conflist_is_chained_again_at_once(&cluster, &web);
    upstream_specs_pass(&cluster);
    a_rolling_restart_under_traffic(&mut cluster, &web);
    kubectl_delete_k_leaves_every_node_starting_pods(&cluster, &before);
}

/// A DaemonSet whose agent cannot load (here: no `CAP_BPF`) chains
/// nothing, so the nodes go on starting pods without Palisade, and says
/// why: not ready, and its log names the cause.
fn an_agent_that_cannot_load_leaves_the_nodes_to_flannel(
    cluster: &mut RealCluster,
    before: &[Vec<u8>],
) {
    let cp = cluster.control_plane();
    let dir = cp.dir().join("without-bpf");
    std::fs::create_dir_all(&dir).unwrap();
    std::fs::write(dir.join("without-bpf.yaml"), WITHOUT_BPF).unwrap();
    // kubectl 1.20's kustomize takes bases by relative path only.
    let up = "../".repeat(dir.components().count().saturating_sub(1));
    let base = format!(
        "{up}{}",
        overlay().display().to_string().trim_start_matches('/')
    );
    std::fs::write(
        dir.join("kustomization.yaml"),
        format!(
            "apiVersion: kustomize.config.k8s.io/v1beta1\nkind: Kustomization\nbases:\n  - {base}\npatchesStrategicMerge:\n  - without-bpf.yaml\n"
        ),
    )
    .unwrap();
    cp.kubectl(&["apply", "-k", &dir.display().to_string()])
        .unwrap_or_else(|e| panic!("kubectl apply -k (without CAP_BPF): {e}"));
    let deadline = Instant::now() + Duration::from_secs(120);
    loop {
        let logs = cp
            .kubectl(&[
                "logs",
                "-n",
                SYSTEM_NS,
                "-l",
                "app.kubernetes.io/component=agent",
                "-c",
                "agent",
                "--tail=100",
            ])
            .unwrap_or_default();
        if logs.matches("cannot load the eBPF programs").count() >= cluster.nodes().len() {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "the agents without CAP_BPF did not say why they do not enforce; their logs:\n{logs}"
        );
        std::thread::sleep(Duration::from_secs(1));
    }
    let pods = cp
        .kubectl(&[
            "get",
            "pods",
            "-n",
            SYSTEM_NS,
            "-o",
            "jsonpath={range .items[*]}{.metadata.name} {.status.conditions[?(@.type==\"Ready\")].status}{\"\\n\"}{end}",
        ])
        .unwrap_or_else(|e| panic!("kubectl get pods: {e}"));
    assert!(
        !pods.contains("True"),
        "an agent that cannot load must not be Ready:\n{pods}"
    );
    for (node, before) in cluster.nodes().iter().zip(before) {
        assert_eq!(
            &node.read_file(flannel::CONFLIST_PATH).unwrap(),
            before,
            "{}: an agent that cannot load chained palisade-cni",
            node.name()
        );
    }
    cluster
        .run_pod("default", "while-unloaded", "node0", POD_START)
        .unwrap_or_else(|e| panic!("a pod while the agent cannot load: {e}"));
}

/// Flannel writes its conflist anew on every start (a new file renamed
/// over the old one): the agent chains itself again at once, and a pod
/// created right after is enforced.
fn flannel_rewriting_its_conflist_is_chained_again_at_once(cluster: &RealCluster, web: &str) {
    for round in 0..3 {
        for node in cluster.nodes() {
            flannel::write_conflist(node).unwrap();
        }
        if round == 0 {
            let sealed = client_pod("sealed", "node1", r#"{role: client, sealed: "true"}"#);
            cluster
                .apply_yaml("sealed", &sealed)
                .unwrap_or_else(|e| panic!("kubectl apply: {e}"));
        }
        // The poll this replaced took up to 10 s.
        let deadline = Instant::now() + Duration::from_secs(2);
        for node in cluster.nodes() {
            loop {
                let text = node.read_file(flannel::CONFLIST_PATH).unwrap_or_default();
                if String::from_utf8_lossy(&text).contains("palisade-cni") {
                    break;
                }
                assert!(
                    Instant::now() < deadline,
                    "Flannel's rewrite {round}: {} not chained again within 2 s",
                    node.name()
                );
                std::thread::sleep(Duration::from_millis(20));
            }
        }
    }
    ready(cluster, NS, "sealed");
    expect(
        cluster,
        "a pod created while Flannel rewrote",
        "sealed",
        web,
        false,
    );
}

/// The upstream e2e suite's NetworkPolicy specs (a named subset).
fn upstream_specs_pass(cluster: &RealCluster) {
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

/// `kubectl rollout restart` of the DaemonSet while connections are
/// tried all along: nothing allowed is refused, nothing denied gets
/// through, and pods created while the agents restart start and are
/// enforced.
fn a_rolling_restart_under_traffic(cluster: &mut RealCluster, web: &str) {
    let cp = cluster.control_plane();
    cp.kubectl(&[
        "rollout",
        "restart",
        "-n",
        SYSTEM_NS,
        &format!("daemonset/{DAEMONSET}"),
    ])
    .unwrap_or_else(|e| panic!("kubectl rollout restart: {e}"));
    let late = client_pod("late-client", "node0", "{role: client}")
        + &client_pod("late-sealed", "node1", r#"{role: client, sealed: "true"}"#);
    cluster
        .apply_yaml("late", &late)
        .unwrap_or_else(|e| panic!("kubectl apply: {e}"));
    let deadline = Instant::now() + Duration::from_secs(240);
    let (mut rounds, mut after_rollout) = (0, 0);
    while after_rollout < 2 {
        for (from, want) in [("client", true), ("other", false), ("remote-client", true)] {
            match cluster.connect(NS, from, web, WEB_PORT, Duration::from_secs(2)) {
                Ok(seen) => assert_eq!(
                    seen == Connect::Allowed,
                    want,
                    "during the rolling restart (round {rounds}): {from} → web: {seen:?}"
                ),
                // The exec path (API server, kubelet) is not what is
                // under test: try again next round.
                Err(e) => eprintln!("round {rounds}: {from}: {e}"),
            }
        }
        rounds += 1;
        if after_rollout > 0
            || cluster
                .daemonset_ready(SYSTEM_NS, DAEMONSET)
                .unwrap_or(false)
        {
            after_rollout += 1;
        }
        assert!(
            Instant::now() < deadline,
            "the rolling restart did not finish within 240 s"
        );
    }
    eprintln!("rolling restart: {rounds} rounds of probes");
    // The restarted agents took the programs their predecessors pinned
    // over instead of verifying them again: with only CAP_BPF, reading a
    // pinned program's maps must not need CAP_SYS_ADMIN.
    for node in ["node0", "node1"] {
        let log = cluster
            .current_log(SYSTEM_NS, AGENT_SELECTOR, node, "agent")
            .unwrap_or_else(|e| panic!("the agent's log on {node}: {e}"))
            .unwrap_or_default();
        assert!(
            log.contains("programs taken over from their pins"),
            "the restarted agent on {node} loaded its programs again:\n{log}"
        );
    }
    ready(cluster, NS, "late-client");
    ready(cluster, NS, "late-sealed");
    expect(
        cluster,
        "a pod created during the restart",
        "late-client",
        web,
        true,
    );
    expect(
        cluster,
        "a pod created during the restart",
        "late-sealed",
        web,
        false,
    );
}

/// `kubectl delete -k` removes the RBAC, the ServiceAccount and the
/// DaemonSet in one command, as users uninstall: every node must be left
/// with Flannel's conflist exactly as it was and go on starting pods.
fn kubectl_delete_k_leaves_every_node_starting_pods(cluster: &RealCluster, before: &[Vec<u8>]) {
    let path = overlay().display().to_string();
    cluster
        .control_plane()
        .kubectl(&["delete", "-k", &path, "--wait=false"])
        .unwrap_or_else(|e| panic!("kubectl delete -k overlays/testbed: {e}"));
    let deadline = Instant::now() + Duration::from_secs(90);
    for (node, before) in cluster.nodes().iter().zip(before) {
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
                POD_START,
            )
            .unwrap_or_else(|e| panic!("a new pod after the uninstall: {e}"));
    }
}

/// `policy-agent status --kube`, as an admin runs it from anywhere: every
/// node's agent is a Ready pod of the DaemonSet, and each node's newest
/// `Enforced` Event is on `policy` (applied after the install).
fn status_kube_shows_every_node(cluster: &RealCluster, policy: &str) {
    let cp = cluster.control_plane();
    let bin_dir = std::env::var_os("PALISADE_BIN_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| workspace_dir().join("target").join("debug"));
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let seen = cp.status_kube(&bin_dir);
        let doc = seen.as_ref().map_or(&serde_json::Value::Null, |(d, _)| d);
        let nodes = doc["nodes"].as_array().cloned().unwrap_or_default();
        let good = nodes.len() == cluster.nodes().len()
            && nodes.iter().all(|n| {
                n["agent"] == "ready"
                    && n["last_apply"]["policy"] == policy
                    && n["last_apply"]["note"]
                        .as_str()
                        .is_some_and(|note| note.starts_with("Enforced on"))
            });
        if good {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "status --kube does not show every node's agent ready with {policy} enforced:\n{seen:?}"
        );
        std::thread::sleep(Duration::from_secs(1));
    }
}

/// Waits until pod `namespace/name` is Ready; returns its address.
fn ready(cluster: &RealCluster, namespace: &str, name: &str) -> String {
    cluster
        .wait_pod_ready(namespace, name, POD_START)
        .unwrap_or_else(|e| panic!("{e}"))
}

/// One connection from `from` (in `life`) to `web`: allowed or not.
fn expect(cluster: &RealCluster, phase: &str, from: &str, web: &str, allowed: bool) {
    let seen = cluster
        .connect_until(
            NS,
            from,
            web,
            WEB_PORT,
            Instant::now() + Duration::from_secs(60),
        )
        .unwrap_or_else(|e| panic!("{phase}: {e}"));
    assert_eq!(
        seen == Connect::Allowed,
        allowed,
        "{phase}: {from} → web:{WEB_PORT}: {seen:?}"
    );
}

/// As [`expect`], for a verdict that may take a few seconds to hold (a
/// pod being adopted).
fn eventually(cluster: &RealCluster, phase: &str, from: &str, web: &str, allowed: bool) {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let seen = cluster
            .connect_until(NS, from, web, WEB_PORT, deadline)
            .unwrap_or_else(|e| panic!("{phase}: {e}"));
        if (seen == Connect::Allowed) == allowed {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "{phase}: {from} → web:{WEB_PORT} still {seen:?} after 30 s"
        );
        std::thread::sleep(Duration::from_millis(500));
    }
}
