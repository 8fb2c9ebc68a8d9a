//! What `kind-e2e` applies and expects: the upstream conformance cases of
//! `policy_engine::testutil::conformance` (the same ones the engine's and
//! the test bed's conformance tests run), with the model's addresses in
//! ipBlocks replaced by the pods' real ones, plus DNS through kube-dns.
//! The tests below hold these tables to the policy engine.

use std::collections::BTreeMap;

use policy_engine::model::Protocol;
use policy_engine::testutil::conformance::{self, Case, Step, Truth};
use policy_engine::testutil::{xyz_ip, XYZ_NAMESPACES, XYZ_PODS};

/// The default policy set (issue 12): default deny, pod label, namespace
/// label, both, ipBlock with except, named port, endPort, egress deny. DNS
/// is [`dns_cases`].
pub const DEFAULT_CASES: &[&str] = &[
    "default_deny_ingress_tcp_udp_sctp/TCP",
    "default_deny_ingress_tcp_udp_sctp/UDP",
    "default_deny_all",
    "allow_from_pods_in_server_namespace_by_pod_selector",
    "allow_only_from_other_namespace_by_namespace_selector/match-labels",
    "allow_only_from_other_namespace_by_namespace_selector/metadata-name",
    "pod_selector_and_namespace_selector",
    "egress_to_server_in_cidr_block",
    "except_clause_and_overlap/both",
    "ingress_on_one_named_port",
    "end_port_ranges/tcp-udp",
    "deny_egress_by_pod_selector_and_namespace/pod",
    "client_side_egress_denies_even_if_server_allows",
    "ingress_from_updated_pod",
];

/// A DNS probe: `pod` resolves and connects to kube-dns by name
/// (`kube-dns.kube-system.svc.cluster.local`, TCP 53): it needs UDP 53 to
/// the kube-dns pods through the kube-dns ClusterIP, then TCP 53.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct DnsExpect {
    /// The client, `ns/pod`.
    pub pod: String,
    /// Whether resolution and connection must succeed.
    pub allowed: bool,
}

/// A case as kind-e2e runs it.
#[derive(Clone, Debug)]
pub struct KindCase {
    /// Policies, relabels and truth tables.
    pub case: Case,
    /// DNS probes after the last step.
    pub dns: Vec<DnsExpect>,
}

const DNS_RULE: &str = "  - to:\n    - namespaceSelector: {matchLabels: {kubernetes.io/metadata.name: kube-system}}\n      podSelector: {matchLabels: {k8s-app: kube-dns}}\n    ports: [{port: 53, protocol: UDP}, {port: 53, protocol: TCP}]\n";

fn dns_expect(allowed_in_x: bool) -> Vec<DnsExpect> {
    conformance::all_pods()
        .into_iter()
        .map(|pod| DnsExpect {
            allowed: allowed_in_x || !pod.starts_with("x/"),
            pod,
        })
        .collect()
}

/// Default-deny egress in x with DNS allowed to kube-dns (x resolves, and
/// reaches nothing else), and without the DNS rule (x does not resolve).
pub fn dns_cases() -> Vec<KindCase> {
    let deny_x = Truth::all_allowed().peer("x", "*", false);
    let with_dns = Case {
        group: "dns_allowed_through_kube_dns",
        name: "dns_allowed_through_kube_dns".into(),
        steps: vec![
            Step::Apply {
                namespace: "x".into(),
                name: "deny-egress-but-dns".into(),
                spec: format!(
                    "  podSelector: {{}}\n  policyTypes: [Egress]\n  egress:\n{DNS_RULE}"
                ),
            },
            Step::Expect {
                port: 80,
                protocol: Protocol::Tcp,
                truth: deny_x.clone(),
            },
        ],
    };
    let without = Case {
        group: "dns_denied_without_a_rule",
        name: "dns_denied_without_a_rule".into(),
        steps: vec![
            Step::Apply {
                namespace: "x".into(),
                name: "deny-egress".into(),
                spec: "  podSelector: {}\n  policyTypes: [Egress]\n".into(),
            },
            Step::Expect {
                port: 80,
                protocol: Protocol::Tcp,
                truth: deny_x,
            },
        ],
    };
    vec![
        KindCase {
            case: with_dns,
            dns: dns_expect(true),
        },
        KindCase {
            case: without,
            dns: dns_expect(false),
        },
    ]
}

/// The cases to run: the default set (or every conformance case with
/// `all`), without SCTP unless `sctp`, then the DNS cases; `only` keeps
/// those whose name contains it.
pub fn select(all: bool, sctp: bool, only: Option<&str>) -> Vec<KindCase> {
    let mut out: Vec<KindCase> = conformance::cases()
        .into_iter()
        .filter(|c| all || DEFAULT_CASES.contains(&c.name.as_str()))
        .filter(|c| sctp || !c.protocols().contains(&Protocol::Sctp))
        .map(|case| KindCase {
            case,
            dns: Vec::new(),
        })
        .collect();
    out.extend(dns_cases());
    out.retain(|c| only.is_none_or(|o| c.case.name.contains(o)));
    out
}

/// Model address → real address of every model pod.
pub type AddressMap = BTreeMap<String, String>;

/// The address map for pods `ns/pod` → real IP.
pub fn address_map(real: &BTreeMap<String, String>) -> AddressMap {
    let mut out = AddressMap::new();
    for ns in XYZ_NAMESPACES {
        for pod in XYZ_PODS {
            if let Some(ip) = real.get(&format!("{ns}/{pod}")) {
                out.insert(xyz_ip(ns, pod), ip.clone());
            }
        }
    }
    out
}

/// `spec` with every model pod address written as a prefix (`10.2.0.2/32`)
/// replaced by the pod's real address, in one pass (a replaced address is
/// never matched again). Other prefixes (`10.0.0.0/8`) stay.
pub fn localize(spec: &str, map: &AddressMap) -> String {
    let patterns: Vec<(String, &String)> = map.iter().map(|(m, r)| (format!("{m}/"), r)).collect();
    let mut out = String::with_capacity(spec.len());
    let mut rest = spec;
    'scan: while let Some(c) = rest.chars().next() {
        let at_boundary = !out.ends_with(|p: char| p.is_ascii_digit() || p == '.');
        if at_boundary {
            for (pattern, real) in &patterns {
                if let Some(tail) = rest.strip_prefix(pattern.as_str()) {
                    out.push_str(real);
                    out.push('/');
                    rest = tail;
                    continue 'scan;
                }
            }
        }
        out.push(c);
        rest = &rest[c.len_utf8()..];
    }
    out
}

/// A NetworkPolicy manifest for an [`Step::Apply`] with real addresses.
pub fn policy_manifest(namespace: &str, name: &str, spec: &str, map: &AddressMap) -> String {
    format!(
        "apiVersion: networking.k8s.io/v1\nkind: NetworkPolicy\n{}",
        Step::policy_yaml(namespace, name, &localize(spec, map))
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use policy_engine::model::{ContainerPort, PodInfo, PodRef, Snapshot};
    use policy_engine::testutil::{policy_yaml, xyz_model, Sim};

    /// Labels of the kube-dns pods (kind's CoreDNS, as kubeadm deploys it).
    const KUBE_DNS_LABEL: (&str, &str) = ("k8s-app", "kube-dns");

    /// Addresses as a kind cluster with Flannel hands them out: every pod
    /// in 10.244.0.0/16, spread over nodes, in no relation to the model's.
    fn kind_addresses() -> BTreeMap<String, String> {
        conformance::all_pods()
            .into_iter()
            .enumerate()
            .map(|(i, pod)| (pod, format!("10.244.{}.{}", 1 + i % 3, 7 + 5 * i)))
            .collect()
    }

    /// The model with kind's addresses and a CoreDNS pod.
    fn kind_cluster(real: &BTreeMap<String, String>) -> Snapshot {
        let mut snap = xyz_model().ns("kube-system", &[]).build();
        for (pod, ip) in real {
            let r: PodRef = pod.parse().unwrap();
            snap.pods.get_mut(&r).unwrap().ips = vec![ip.parse().unwrap()];
        }
        let coredns = PodInfo {
            labels: [(KUBE_DNS_LABEL.0.to_string(), KUBE_DNS_LABEL.1.to_string())].into(),
            ips: vec!["10.244.0.2".parse().unwrap()],
            ports: ["UDP", "TCP"]
                .iter()
                .map(|p| ContainerPort {
                    name: Some(format!("dns-{}", p.to_lowercase())),
                    port: 53,
                    protocol: p.parse().unwrap(),
                })
                .collect(),
            ..PodInfo::default()
        };
        snap.insert_pod(PodRef::new("kube-system", "coredns"), coredns);
        snap
    }

    /// Runs `case` as kind-e2e would (real addresses in the policies) and
    /// checks every table and DNS expectation against the engine.
    fn check(kc: &KindCase) {
        let real = kind_addresses();
        let map = address_map(&real);
        let mut snap = kind_cluster(&real);
        for step in &kc.case.steps {
            match step {
                Step::Apply {
                    namespace,
                    name,
                    spec,
                } => {
                    let yaml = policy_manifest(namespace, name, spec, &map);
                    snap.upsert_policy(&policy_yaml(&yaml)).unwrap();
                }
                Step::DeletePolicies => snap.policies.clear(),
                Step::LabelPod { .. } | Step::LabelNs { .. } => {
                    assert!(step.relabel(&mut snap));
                }
                Step::Expect {
                    port,
                    protocol,
                    truth,
                } => {
                    let sim = Sim::new(snap.clone());
                    let mut seen = truth.clone();
                    for ((f, t), v) in seen.0.iter_mut() {
                        *v = sim.allowed(f, t, *port, &protocol.to_string());
                    }
                    assert_eq!(
                        &seen,
                        truth,
                        "{} on {port}/{protocol}:\n{}",
                        kc.case.name,
                        truth.diff(&seen)
                    );
                }
            }
        }
        let sim = Sim::new(snap);
        for d in &kc.dns {
            for proto in ["UDP", "TCP"] {
                assert_eq!(
                    sim.allowed(&d.pod, "kube-system/coredns", 53, proto),
                    d.allowed,
                    "{}: {} -> kube-dns 53/{proto}",
                    kc.case.name,
                    d.pod
                );
            }
        }
    }

    #[test]
    fn every_expected_table_is_what_the_engine_computes_on_kind_addresses() {
        let all = select(true, true, None);
        assert!(all.len() > 40, "{}", all.len());
        for kc in &all {
            check(kc);
        }
    }

    #[test]
    fn the_default_set_covers_the_issues_policy_kinds() {
        let names: Vec<String> = select(false, false, None)
            .into_iter()
            .map(|c| c.case.name)
            .collect();
        // Every listed case exists (a renamed conformance case would
        // silently shrink the matrix).
        for want in DEFAULT_CASES {
            assert!(names.iter().any(|n| n == want), "no case {want}");
        }
        assert!(names.iter().any(|n| n.starts_with("dns_")));
        // No SCTP by default: kind's nodes may lack the module.
        assert!(select(false, false, None)
            .iter()
            .all(|c| !c.case.protocols().contains(&Protocol::Sctp)));
        assert_eq!(select(false, false, Some("dns_")).len(), 2);
    }

    #[test]
    fn model_addresses_in_ip_blocks_become_real_ones() {
        let real = kind_addresses();
        let map = address_map(&real);
        let spec = format!(
            "  egress: [{{to: [{{ipBlock: {{cidr: 10.0.0.0/8, except: [{}/32]}}}}, {{ipBlock: {{cidr: {}/32}}}}]}}]\n",
            xyz_ip("x", "b"),
            xyz_ip("y", "c")
        );
        let out = localize(&spec, &map);
        assert!(
            out.contains(&format!("except: [{}/32]", real["x/b"])),
            "{out}"
        );
        assert!(out.contains(&format!("cidr: {}/32", real["y/c"])), "{out}");
        assert!(out.contains("cidr: 10.0.0.0/8"), "{out}");
        let doc = policy_manifest("x", "p", "  podSelector: {}\n", &map);
        assert!(doc.starts_with("apiVersion: networking.k8s.io/v1\nkind: NetworkPolicy\n"));
        policy_yaml(&doc);
    }
}
