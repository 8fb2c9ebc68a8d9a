//! The test bed against a real control plane (etcd, kube-apiserver and
//! kube-controller-manager 1.20 built by `cargo xtask setup`, kube-proxy in
//! each node): the agents run `--kube` as Palisade's ServiceAccount, with
//! the ClusterRole the install manifests ship, and enforce the scenarios
//! with real packets on two nodes, each learning the other node's pods
//! from the API alone; RBAC is the real one.
//!
//! Needs root, bpffs, the binaries (see `palisade_tests::bin_dir`) and the
//! Kubernetes binaries (`cargo xtask setup`).

use palisade_tests::{run_scenario_kube, scenarios};
use testbed::{mismatches, report};

fn enforced_through_the_api(name: &str) {
    for scenario in scenarios(name) {
        let (_, seen) = run_scenario_kube(&scenario);
        assert!(
            seen.iter().all(|o| o.allowed.is_some()),
            "{}: some probes could not run:\n{}",
            scenario.label,
            report::table(&seen)
        );
        assert_eq!(
            mismatches(&seen),
            0,
            "{} in kube mode:\n{}",
            scenario.label,
            report::table(&seen)
        );
    }
}

#[test]
fn service_abc_enforced_through_the_api() {
    enforced_through_the_api("service-abc");
}

#[test]
fn apod_enforced_through_the_api() {
    enforced_through_the_api("apod");
}

#[test]
fn db_backup_enforced_through_the_api() {
    enforced_through_the_api("db-backup");
}

/// Its probes to Services go through their ClusterIPs, translated by the
/// real kube-proxy, and are judged on the backends.
#[test]
fn dns_egress_enforced_through_the_api() {
    if palisade_tests::shared_scenario("dns-egress").is_some() {
        enforced_through_the_api("dns-egress");
    } else {
        eprintln!("dns-egress is only in the shared folder beside the checkout: skipped");
    }
}

/// The agent's ServiceAccount has what the agent needs and no more:
/// asked as the ServiceAccount (impersonated by the admin) and with the
/// agent's own token.
#[test]
fn the_agent_service_account_reads_pods_but_not_secrets() {
    let scenario = &scenarios("service-abc")[0];
    let bed = start_kube(scenario);
    let cluster = bed.kube().expect("kube mode");
    let cp = cluster.control_plane();
    let (ns, name) = testbed::controlplane::cluster::AGENT_SERVICE_ACCOUNT;
    let who = format!("--as=system:serviceaccount:{ns}:{name}");
    let can = |args: &[&str], as_agent_token: bool| -> bool {
        let mut args = args.to_vec();
        let config = if as_agent_token {
            cluster.agent_kubeconfig()
        } else {
            args.push(&who);
            cp.admin_kubeconfig()
        };
        cp.can_i(config, &args)
            .unwrap_or_else(|e| panic!("kubectl auth can-i {args:?}: {e}"))
    };
    for token in [false, true] {
        for verb in ["list", "watch", "get"] {
            for what in [
                "pods",
                "namespaces",
                "networkpolicies.networking.k8s.io",
                "services",
                "endpointslices.discovery.k8s.io",
            ] {
                assert!(
                    can(&[verb, what, "--all-namespaces"], token),
                    "{verb} {what}"
                );
            }
        }
        for verb in ["create", "patch"] {
            assert!(
                can(&[verb, "events.events.k8s.io", "-n", "default"], token),
                "{verb} events"
            );
        }
        for denied in [
            &["get", "secrets", "--all-namespaces"][..],
            &["list", "events.events.k8s.io", "--all-namespaces"],
            &["delete", "events.events.k8s.io", "-n", "default"],
            &["create", "events.v1.", "-n", "default"],
            &["list", "secrets", "-n", ns],
            &["create", "pods", "-n", "default"],
            &[
                "update",
                "networkpolicies.networking.k8s.io",
                "-n",
                "default",
            ],
            &["delete", "pods", "-n", "default"],
            &["patch", "pods", "--subresource=status", "-n", "default"],
        ] {
            assert!(!can(denied, token), "{denied:?} (agent token: {token})");
        }
    }
    // And the admin can, so "no" above is RBAC, not a broken question.
    assert!(cp
        .can_i(
            cp.admin_kubeconfig(),
            &["get", "secrets", "--all-namespaces"]
        )
        .unwrap());
}

/// A bed for `scenario` in kube mode serving the probes of its file.
fn start_kube(scenario: &palisade_tests::Scenario) -> testbed::Testbed {
    palisade_tests::start_kube_bed(scenario, 1, Vec::new()).0
}

fn conntrack_max() -> Option<String> {
    std::fs::read_to_string("/proc/sys/net/netfilter/nf_conntrack_max").ok()
}

/// kube-proxy runs in the node against the same API server and programs
/// the manifests' Services (and `kubernetes`) into its `KUBE-SERVICES`
/// chain there, while the controllers fill the Services' Endpoints and
/// EndpointSlices with the pods' real addresses (the node is registered);
/// the machine's own conntrack limit is left alone.
#[test]
fn kube_proxy_and_the_controllers_see_the_services() {
    let before = conntrack_max();
    let Some(scenario) = palisade_tests::shared_scenario("dns-egress") else {
        eprintln!("dns-egress is only in the shared folder beside the checkout: skipped");
        return;
    };
    let bed = start_kube(&scenario);
    let cp = bed.kube().expect("kube mode").control_plane();
    let chain = testbed::controlplane::proxy::services_chain(bed.node_netns()).unwrap();
    let web_ip = cp
        .kubectl(&[
            "get",
            "service",
            "web",
            "-n",
            "blog",
            "-o",
            "jsonpath={.spec.clusterIP}",
        ])
        .unwrap();
    for ip in ["10.96.0.1", "10.96.0.10", web_ip.trim()] {
        assert!(
            chain.contains(&format!("{ip}/32")),
            "{ip} not in KUBE-SERVICES:\n{chain}"
        );
    }
    let pod_ip = bed.pods()[&"blog/web".parse().unwrap()].ip.to_string();
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(20);
    loop {
        let endpoints = cp
            .kubectl(&[
                "get",
                "endpoints",
                "web",
                "-n",
                "blog",
                "-o",
                "jsonpath={.subsets[*].addresses[*].ip}",
            ])
            .unwrap_or_default();
        let slices = cp
            .kubectl(&[
                "get",
                "endpointslices",
                "-n",
                "blog",
                "-o",
                "jsonpath={.items[*].endpoints[*].addresses[*]}",
            ])
            .unwrap_or_default();
        if endpoints.contains(&pod_ip) && slices.contains(&pod_ip) {
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "blog/web's address {pod_ip} not in its Endpoints ({endpoints:?}) and EndpointSlices ({slices:?})"
        );
        std::thread::sleep(std::time::Duration::from_millis(200));
    }
    // kube-proxy followed the Endpoints into a per-Service chain.
    let nat = std::process::Command::new("nsenter")
        .arg(format!("--net=/run/netns/{}", bed.node_netns()))
        .args(["iptables", "-w", "-t", "nat", "-S"])
        .output()
        .unwrap();
    let nat = String::from_utf8_lossy(&nat.stdout);
    assert!(
        nat.contains(&format!("{pod_ip}:8080")),
        "no DNAT to {pod_ip}:8080:\n{nat}"
    );
    drop(bed);
    assert_eq!(
        conntrack_max(),
        before,
        "the machine's nf_conntrack_max changed"
    );
}

/// A pod created through the API after the bed is up is enforced like the
/// others: denied by the namespace's default-deny until a policy allows it.
#[test]
fn a_pod_created_after_start_is_enforced() {
    let scenario = &scenarios("service-abc")[0];
    let mut bed = start_kube(scenario);
    let pod: k8s_openapi::api::core::v1::Pod = serde_json::from_value(serde_json::json!({
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {"name": "late", "namespace": "default", "labels": {"app": "ServiceB"}},
        "spec": {"containers": [{"name": "c", "image": "none", "ports": [{"containerPort": 80}]}]},
    }))
    .unwrap();
    let wired = bed.add_pod(&pod).unwrap_or_else(|e| panic!("{e}"));
    assert!(!wired.host_network);
    let probes = testbed::parse_probes(
        r#"{"from": "default/late", "to": "default/servicea", "port": 80, "allowed": true}
{"from": "default/servicec", "to": "default/late", "port": 80, "allowed": false}
{"from": "default/late", "to": "default/servicea", "port": 8080, "allowed": false}"#,
        std::path::Path::new("inline.jsonl"),
    )
    .unwrap();
    let seen = bed.probe(&probes);
    eprintln!("{}", report::table(&seen));
    assert_eq!(mismatches(&seen), 0, "{}", bed.agent_log_tail(30));
}
