//! The opt-in ClusterNetworkPolicy component against the test bed's real
//! API server (Kubernetes 1.20.2): the CRD is accepted (apiextensions.k8s.io/v1)
//! and established, objects the schema forbids are refused, objects only the
//! published CEL rules would refuse are stored (1.20 does not run CEL: the
//! agent validates those), and the agent's ServiceAccount may read
//! ClusterNetworkPolicies and Nodes. Needs root and the Kubernetes binaries.

use palisade_tests::workspace_root;
use testbed::controlplane::{ControlPlane, ControlPlaneOptions};

const CRD: &str =
    "customresourcedefinition.apiextensions.k8s.io/clusternetworkpolicies.policy.networking.k8s.io";

fn path(sub: &str) -> String {
    workspace_root().join(sub).display().to_string()
}

fn cnp(name: &str, priority: &str, protocols: &str) -> String {
    format!(
        "apiVersion: policy.networking.k8s.io/v1alpha2\nkind: ClusterNetworkPolicy\nmetadata: {{name: {name}}}\nspec:\n  tier: Admin\n  priority: {priority}\n  subject: {{namespaces: {{matchLabels: {{kubernetes.io/metadata.name: kube-system}}}}}}\n  ingress:\n  - name: deny-all\n    action: Deny\n    from: [{{namespaces: {{}}}}]\n{protocols}"
    )
}

fn apply_text(cp: &ControlPlane, name: &str, text: &str) -> Result<String, String> {
    let file =
        std::env::temp_dir().join(format!("palisade-cnp-{}-{name}.yaml", std::process::id()));
    std::fs::write(&file, text).unwrap();
    let out = cp
        .kubectl(&["apply", "-f", &file.display().to_string()])
        .map_err(|e| e.to_string());
    let _ = std::fs::remove_file(&file);
    out
}

#[test]
fn the_component_installs_on_1_20_and_the_agent_may_read_what_it_needs() {
    let cp = ControlPlane::start(ControlPlaneOptions::default())
        .unwrap_or_else(|e| panic!("control plane: {e}"));
    cp.kubectl(&["apply", "-f", &path("manifests/00-namespace.yaml")])
        .unwrap();
    cp.kubectl(&["apply", "-k", &path("manifests")]).unwrap();
    let out = cp
        .kubectl(&[
            "apply",
            "-k",
            &path("manifests/components/cluster-network-policy"),
        ])
        .unwrap_or_else(|e| panic!("apply -k component: {e}"));
    assert!(out.contains(&format!("{CRD} created")), "{out}");
    cp.kubectl(&["wait", "--for=condition=established", "--timeout=60s", CRD])
        .unwrap_or_else(|e| panic!("CRD not established: {e}"));

    // A valid policy is stored.
    let ok = apply_text(&cp, "ok", &cnp("protect-kube-system", "1", "")).unwrap();
    assert!(ok.contains("created"), "{ok}");
    // The structural schema is enforced by 1.20.
    for (name, priority, protocols) in [
        ("priority", "1001", ""),
        ("two-protocols", "1", "    protocols: [{tcp: {destinationPort: {number: 80}}, udp: {destinationPort: {number: 53}}}]\n"),
        ("port-zero", "1", "    protocols: [{tcp: {destinationPort: {number: 0}}}]\n"),
    ] {
        let refused = apply_text(&cp, name, &cnp(name, priority, protocols));
        assert!(refused.is_err(), "{name} was accepted: {refused:?}");
    }
    // CEL-only rules are not run by 1.20: stored, and left to the agent.
    let cel = apply_text(
        &cp,
        "range",
        &cnp(
            "backwards-range",
            "1",
            "    protocols: [{tcp: {destinationPort: {range: {start: 90, end: 80}}}}]\n",
        ),
    )
    .unwrap_or_else(|e| panic!("a CEL-only violation was refused by 1.20: {e}"));
    assert!(cel.contains("created"), "{cel}");

    let who = "--as=system:serviceaccount:palisade-system:palisade-agent";
    for resource in ["clusternetworkpolicies.policy.networking.k8s.io", "nodes"] {
        for verb in ["get", "list", "watch"] {
            let args = [verb, resource, who];
            assert!(
                cp.can_i(cp.admin_kubeconfig(), &args).unwrap(),
                "the agent cannot {verb} {resource}"
            );
        }
    }
    let args = [
        "create",
        "clusternetworkpolicies.policy.networking.k8s.io",
        who,
    ];
    assert!(!cp.can_i(cp.admin_kubeconfig(), &args).unwrap());
}
