//! The install, `kubectl apply -k manifests/`, against the test bed's real
//! API server (Kubernetes 1.20.2, RBAC on, Debian's kubectl 1.20 and its
//! built-in kustomize): server-side dry run, then for real, then again
//! (unchanged); then `kubectl auth can-i` as the agent's ServiceAccount
//! shows it may read exactly what it watches, write Events about
//! enforcement, and nothing else. Needs root
//! and the Kubernetes binaries `cargo xtask setup` builds.

use palisade_tests::workspace_root;
use testbed::controlplane::{ControlPlane, ControlPlaneOptions};

const NAMESPACE: &str = "palisade-system";
const SERVICE_ACCOUNT: &str = "palisade-agent";
/// What the kustomization creates besides its namespace.
const OBJECTS: [&str; 6] = [
    "serviceaccount/palisade-agent",
    "clusterrole.rbac.authorization.k8s.io/palisade-agent",
    "clusterrolebinding.rbac.authorization.k8s.io/palisade-agent",
    "role.rbac.authorization.k8s.io/palisade-agent",
    "rolebinding.rbac.authorization.k8s.io/palisade-agent",
    "daemonset.apps/palisade-agent",
];

fn start() -> ControlPlane {
    ControlPlane::start(ControlPlaneOptions::default())
        .unwrap_or_else(|e| panic!("control plane: {e}"))
}

fn manifests(sub: &str) -> String {
    workspace_root()
        .join("manifests")
        .join(sub)
        .display()
        .to_string()
}

/// `kubectl auth can-i VERB RESOURCE [NAME]` as the agent's
/// ServiceAccount (impersonated by the admin), cluster-wide or in
/// `namespace`.
fn agent_can(cp: &ControlPlane, verb: &str, resource: &str, namespace: Option<&str>) -> bool {
    let who = format!("--as=system:serviceaccount:{NAMESPACE}:{SERVICE_ACCOUNT}");
    let mut args = vec![verb, resource, who.as_str()];
    match namespace {
        Some(ns) => args.extend(["-n", ns]),
        None => args.push("--all-namespaces"),
    }
    cp.can_i(cp.admin_kubeconfig(), &args)
        .unwrap_or_else(|e| panic!("can-i {args:?}: {e}"))
}

#[test]
fn the_install_applies_and_grants_exactly_what_the_agent_reads() {
    let cp = start();
    let base = manifests("");

    // A server-side dry run creates nothing, so the namespaced objects of a
    // first install need their namespace to exist (seen on 1.20.2: "namespaces
    // \"palisade-system\" not found"): dry-run the namespace, create it, then
    // dry-run the whole kustomization.
    cp.kubectl(&[
        "apply",
        "-f",
        &manifests("00-namespace.yaml"),
        "--dry-run=server",
    ])
    .unwrap_or_else(|e| panic!("namespace dry run: {e}"));
    assert!(cp.kubectl(&["get", "namespace", NAMESPACE]).is_err());
    cp.kubectl(&["apply", "-f", &manifests("00-namespace.yaml")])
        .unwrap();
    let dry = cp
        .kubectl(&["apply", "-k", &base, "--dry-run=server"])
        .unwrap_or_else(|e| panic!("server-side dry run: {e}"));
    for object in OBJECTS {
        assert!(
            dry.contains(&format!("{object} created (server dry run)")),
            "{object} missing from the dry run:\n{dry}"
        );
    }
    // A dry run stores nothing.
    assert!(cp
        .kubectl(&["-n", NAMESPACE, "get", "daemonset", "palisade-agent"])
        .is_err());

    let applied = cp
        .kubectl(&["apply", "-k", &base])
        .unwrap_or_else(|e| panic!("apply -k: {e}"));
    assert_eq!(
        applied.matches(" created").count(),
        OBJECTS.len(),
        "{applied}"
    );
    let again = cp.kubectl(&["apply", "-k", &base]).unwrap();
    assert_eq!(
        again.matches(" unchanged").count(),
        OBJECTS.len() + 1,
        "{again}"
    );

    // What the API server stored is what the manifests say (defaulting
    // kept the security settings).
    let ds = cp
        .kubectl(&[
            "-n",
            NAMESPACE,
            "get",
            "daemonset",
            "palisade-agent",
            "-o",
            "jsonpath={.spec.template.spec.containers[?(@.name==\"agent\")].securityContext.capabilities.add}",
        ])
        .unwrap();
    for cap in ["BPF", "NET_ADMIN", "PERFMON"] {
        assert!(ds.contains(cap), "{ds}");
    }
    assert!(!ds.contains("SYS_ADMIN"), "{ds}");

    for resource in [
        "pods",
        "namespaces",
        "networkpolicies.networking.k8s.io",
        "services",
        "endpointslices.discovery.k8s.io",
    ] {
        for verb in ["get", "list", "watch"] {
            assert!(
                agent_can(&cp, verb, resource, None),
                "the agent cannot {verb} {resource}"
            );
        }
    }
    // Its one write: Events about enforcement (create, and patch to
    // extend a series), in the API group it uses.
    for verb in ["create", "patch"] {
        assert!(
            agent_can(&cp, verb, "events.events.k8s.io", None),
            "the agent cannot {verb} events.events.k8s.io"
        );
    }
    for (verb, resource) in [
        ("get", "events.events.k8s.io"),
        ("list", "events.events.k8s.io"),
        ("update", "events.events.k8s.io"),
        ("delete", "events.events.k8s.io"),
        ("create", "events.v1."),
        ("get", "secrets"),
        ("list", "secrets"),
        ("watch", "secrets"),
        ("list", "configmaps"),
        ("create", "services"),
        ("update", "endpoints"),
        ("list", "endpoints"),
        ("update", "endpointslices.discovery.k8s.io"),
        ("list", "nodes"),
        ("create", "pods"),
        ("delete", "pods"),
        ("patch", "pods"),
        ("update", "namespaces"),
        ("create", "networkpolicies.networking.k8s.io"),
        ("delete", "networkpolicies.networking.k8s.io"),
        ("patch", "daemonsets.apps"),
        ("create", "serviceaccounts/token"),
        ("*", "*"),
    ] {
        assert!(
            !agent_can(&cp, verb, resource, None),
            "the agent may {verb} {resource}"
        );
    }
    // In its own namespace too (a Role there would show up here).
    assert!(!agent_can(&cp, "get", "secrets", Some(NAMESPACE)));
    // Its own DaemonSet, read and watched by name only, to tell an
    // uninstall from a restart.
    for verb in ["get", "list", "watch"] {
        assert!(
            agent_can(&cp, verb, "daemonsets.apps/palisade-agent", Some(NAMESPACE)),
            "{verb} its own DaemonSet"
        );
    }
    for (verb, what, ns) in [
        ("get", "daemonsets.apps/other", NAMESPACE),
        ("get", "daemonsets.apps/palisade-agent", "default"),
        ("list", "daemonsets.apps", NAMESPACE),
        ("watch", "daemonsets.apps", NAMESPACE),
        ("watch", "daemonsets.apps/other", NAMESPACE),
        ("delete", "daemonsets.apps/palisade-agent", NAMESPACE),
        ("patch", "daemonsets.apps/palisade-agent", NAMESPACE),
    ] {
        assert!(
            !agent_can(&cp, verb, what, Some(ns)),
            "the agent may {verb} {what} in {ns}"
        );
    }

    // The overlay for k3s releases before the stable CNI folder renders
    // with kubectl 1.20's kustomize and is accepted (the current k3s
    // overlay uses newer kustomize fields: xtask's manifests tests render
    // it with a current kubectl).
    let legacy = workspace_root()
        .join("overlays/k3s-before-1.28.15")
        .display()
        .to_string();
    let k3s = cp
        .kubectl(&["apply", "-k", &legacy, "--dry-run=server"])
        .unwrap_or_else(|e| panic!("k3s overlay: {e}"));
    assert!(
        k3s.contains("daemonset.apps/palisade-agent configured (server dry run)"),
        "{k3s}"
    );
    let rendered = cp.kubectl(&["kustomize", &legacy]).unwrap();
    assert!(rendered.contains("path: /var/lib/rancher/k3s/agent/etc/cni/net.d"));
    assert!(rendered.contains("path: /var/lib/rancher/k3s/data/current/bin"));
    assert!(!rendered.contains("path: /etc/cni/net.d"));

    let deleted = cp
        .kubectl(&["delete", "-k", &base, "--wait=false"])
        .unwrap();
    assert_eq!(
        deleted.matches(" deleted").count(),
        OBJECTS.len() + 1,
        "{deleted}"
    );
}
