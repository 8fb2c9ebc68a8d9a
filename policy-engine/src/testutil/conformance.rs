//! The upstream NetworkPolicy conformance cases (Kubernetes e2e
//! `test/e2e/network/netpol`) as data, on the full x/y/z × a/b/c model of
//! [`super::xyz_model`]: policies to apply, labels to change, and the truth
//! tables expected after each change, stated the way the upstream suite
//! does (everything allowed, then overrides). Loopback pairs are not judged
//! (upstream ignores them too).
//!
//! Shared by policy-engine's own conformance test (which runs them through
//! the incremental compiler and the lookup model) and by the test bed's
//! (which runs them with real packets through the agent and eBPF), so that
//! both are held to the same truth.

use std::collections::BTreeMap;

use crate::model::Protocol;

use super::{xyz_ip, XYZ_NAMESPACES, XYZ_PODS};

/// Every model pod, `ns/pod`.
pub fn all_pods() -> Vec<String> {
    XYZ_NAMESPACES
        .iter()
        .flat_map(|ns| XYZ_PODS.iter().map(move |p| format!("{ns}/{p}")))
        .collect()
}

/// `*` = every pod, `x` = every pod of namespace x, `x/a` = one pod.
pub fn sel_matches(sel: &str, pod: &str) -> bool {
    sel == "*" || sel == pod || pod.split('/').next() == Some(sel)
}

/// Expected reachability, (from, to) → allowed, for every ordered pair of
/// distinct model pods.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Truth(pub BTreeMap<(String, String), bool>);

impl Truth {
    /// Everything allowed.
    pub fn all_allowed() -> Self {
        let mut m = BTreeMap::new();
        for f in all_pods() {
            for t in all_pods() {
                if f != t {
                    m.insert((f.clone(), t), true);
                }
            }
        }
        Truth(m)
    }

    /// Sets every pair `from` → `to` (selectors as in [`sel_matches`]) to `v`.
    pub fn peer(mut self, from: &str, to: &str, v: bool) -> Self {
        for ((f, t), val) in self.0.iter_mut() {
            if sel_matches(from, f) && sel_matches(to, t) {
                *val = v;
            }
        }
        self
    }

    /// Sets everything into `pod` to `v`.
    pub fn all_ingress(self, pod: &str, v: bool) -> Self {
        self.peer("*", pod, v)
    }

    /// Sets everything out of `pod` to `v`.
    pub fn all_egress(self, pod: &str, v: bool) -> Self {
        self.peer(pod, "*", v)
    }

    /// The verdict expected for `from` → `to`, if the pair is judged.
    pub fn get(&self, from: &str, to: &str) -> Option<bool> {
        self.0.get(&(from.to_string(), to.to_string())).copied()
    }

    /// A 9×9 grid (rows: from, columns: to; `.` allowed, `X` denied, `-`
    /// not judged), with `other`'s verdicts where they differ shown as `!`
    /// followed by a list of the differing pairs. For failure messages.
    pub fn diff(&self, other: &Truth) -> String {
        let pods = all_pods();
        let mut out = String::from("from\\to ");
        for t in &pods {
            out.push_str(&format!("{t:>4}"));
        }
        out.push('\n');
        let mut wrong = Vec::new();
        for f in &pods {
            out.push_str(&format!("{f:>7} "));
            for t in &pods {
                let cell = match (self.get(f, t), other.get(f, t)) {
                    (None, _) => "-",
                    (Some(a), Some(b)) if a != b => {
                        wrong.push(format!("{f} -> {t}: expected {a}, got {b}"));
                        "!"
                    }
                    (Some(true), _) => ".",
                    (Some(false), _) => "X",
                };
                out.push_str(&format!("{cell:>4}"));
            }
            out.push('\n');
        }
        out.push_str("(. allowed, X denied, ! differs)\n");
        out.push_str(&wrong.join("\n"));
        out
    }
}

/// One step of a case, applied to the cluster in order.
#[derive(Clone, Debug)]
pub enum Step {
    /// Creates or updates a policy.
    Apply {
        /// Its namespace.
        namespace: String,
        /// Its name.
        name: String,
        /// The spec in YAML, each line indented by two spaces.
        spec: String,
    },
    /// Deletes every policy.
    DeletePolicies,
    /// Sets a label on a pod (`ns/pod`).
    LabelPod {
        /// The pod, `ns/pod`.
        pod: String,
        /// Label key.
        key: String,
        /// Label value.
        value: String,
    },
    /// Sets a label on a namespace.
    LabelNs {
        /// The namespace.
        namespace: String,
        /// Label key.
        key: String,
        /// Label value.
        value: String,
    },
    /// The truth table expected now on `port`/`protocol`.
    Expect {
        /// Destination port.
        port: u16,
        /// Transport protocol.
        protocol: Protocol,
        /// Expected verdicts.
        truth: Truth,
    },
}

impl Step {
    /// Applies a [`Step::LabelPod`] or [`Step::LabelNs`] to `snapshot`
    /// (returns false for other steps). Panics if the pod or namespace is
    /// not in the model: the cases only relabel what the model has.
    pub fn relabel(&self, snapshot: &mut crate::model::Snapshot) -> bool {
        let labels = match self {
            Step::LabelPod { pod, .. } => {
                let r: crate::model::PodRef = pod.parse().expect("case names a pod as ns/name");
                &mut snapshot
                    .pods
                    .get_mut(&r)
                    .expect("case relabels a model pod")
                    .labels
            }
            Step::LabelNs { namespace, .. } => {
                &mut snapshot
                    .namespaces
                    .get_mut(namespace)
                    .expect("case relabels a model namespace")
                    .labels
            }
            _ => return false,
        };
        if let Step::LabelPod { key, value, .. } | Step::LabelNs { key, value, .. } = self {
            labels.insert(key.clone(), value.clone());
        }
        true
    }

    /// The policy as a YAML document (`metadata` and `spec`, no `kind`), for
    /// [`Step::Apply`].
    pub fn policy_yaml(namespace: &str, name: &str, spec: &str) -> String {
        format!("metadata: {{name: {name}, namespace: {namespace}}}\nspec:\n{spec}")
    }
}

/// A case: steps applied to a fresh x/y/z model with no policies.
#[derive(Clone, Debug)]
pub struct Case {
    /// The conformance test it belongs to (one test may hold several cases,
    /// e.g. one per protocol).
    pub group: &'static str,
    /// Unique name: the group, plus a suffix when the group has several.
    pub name: String,
    /// The steps.
    pub steps: Vec<Step>,
}

impl Case {
    fn new(group: &'static str) -> Self {
        Case {
            group,
            name: group.to_string(),
            steps: Vec::new(),
        }
    }

    fn named(group: &'static str, suffix: &str) -> Self {
        Case {
            name: format!("{group}/{suffix}"),
            ..Case::new(group)
        }
    }

    fn apply(mut self, namespace: &str, name: &str, spec: &str) -> Self {
        self.steps.push(Step::Apply {
            namespace: namespace.into(),
            name: name.into(),
            spec: spec.into(),
        });
        self
    }

    fn delete_policies(mut self) -> Self {
        self.steps.push(Step::DeletePolicies);
        self
    }

    fn label_pod(mut self, pod: &str, key: &str, value: &str) -> Self {
        self.steps.push(Step::LabelPod {
            pod: pod.into(),
            key: key.into(),
            value: value.into(),
        });
        self
    }

    fn label_ns(mut self, namespace: &str, key: &str, value: &str) -> Self {
        self.steps.push(Step::LabelNs {
            namespace: namespace.into(),
            key: key.into(),
            value: value.into(),
        });
        self
    }

    fn expect(mut self, port: u16, proto: &str, truth: Truth) -> Self {
        self.steps.push(Step::Expect {
            port,
            protocol: proto.parse().expect("protocol"),
            truth,
        });
        self
    }

    /// The protocols its expectations are stated on.
    pub fn protocols(&self) -> Vec<Protocol> {
        let mut out: Vec<Protocol> = self
            .steps
            .iter()
            .filter_map(|s| match s {
                Step::Expect { protocol, .. } => Some(*protocol),
                _ => None,
            })
            .collect();
        out.sort();
        out.dedup();
        out
    }
}

/// Conformance checks that are not truth tables on the fixed model, with
/// why: they stay hand-written in policy-engine's conformance test.
pub const NOT_TABULATED: &[(&str, &str)] = &[(
    "pod_deleted_and_added",
    "creates and deletes pods (and probes a deleted pod's address)",
)];

fn all() -> Truth {
    Truth::all_allowed()
}

const DENY_INGRESS: &str = "  podSelector: {}\n  policyTypes: [Ingress]\n";
const DENY_ALL: &str = "  podSelector: {}\n  policyTypes: [Ingress, Egress]\n";
const POD_A: &str = "  podSelector: {matchLabels: {pod: a}}\n";

/// Every case, in a stable order (names are unique).
pub fn cases() -> Vec<Case> {
    let mut out = Vec::new();

    for proto in ["TCP", "UDP", "SCTP"] {
        out.push(
            Case::named("default_deny_ingress_tcp_udp_sctp", proto)
                .apply("x", "deny-ingress", DENY_INGRESS)
                .expect(80, proto, all().peer("*", "x", false)),
        );
    }

    out.push(
        Case::new("default_deny_all")
            .apply("x", "deny-all", DENY_ALL)
            .expect(80, "TCP", all().peer("*", "x", false).peer("x", "*", false)),
    );

    out.push(
        Case::new("allow_from_pods_in_server_namespace_by_pod_selector")
            .apply(
                "x",
                "x-a-allows-x-b",
                &format!(
                    "{POD_A}  ingress: [{{from: [{{podSelector: {{matchLabels: {{pod: b}}}}}}]}}]\n"
                ),
            )
            .expect(
                80,
                "TCP",
                all().all_ingress("x/a", false).peer("x/b", "x/a", true),
            ),
    );

    out.push(
        Case::new("allow_ingress_for_a_target")
            .apply("x", "deny-all", DENY_INGRESS)
            .apply(
                "x",
                "allow-all-to-a",
                &format!(
                    "{POD_A}  ingress: [{{from: [{{podSelector: {{}}, namespaceSelector: {{}}}}]}}]\n"
                ),
            )
            .expect(
                80,
                "TCP",
                all().peer("*", "x", false).all_ingress("x/a", true),
            ),
    );

    out.push(
        Case::new("allow_ingress_from_all_namespaces")
            .apply(
                "x",
                "allow-from-another-ns",
                &format!(
                    "{POD_A}  ingress: [{{from: [{{namespaceSelector: {{matchLabels: {{}}}}}}]}}]\n"
                ),
            )
            .expect(80, "TCP", all()),
    );

    let denied = all().peer("x", "x/a", false).peer("z", "x/a", false);
    for (i, sel) in [
        "{matchLabels: {ns: y}}",
        "{matchExpressions: [{key: ns, operator: In, values: [y]}]}",
        "{matchLabels: {kubernetes.io/metadata.name: y}}",
    ]
    .into_iter()
    .enumerate()
    {
        out.push(
            Case::named(
                "allow_only_from_other_namespace_by_namespace_selector",
                ["match-labels", "match-expressions", "metadata-name"][i],
            )
            .apply(
                "x",
                "p",
                &format!("{POD_A}  ingress: [{{from: [{{namespaceSelector: {sel}}}]}}]\n"),
            )
            .expect(80, "TCP", denied.clone()),
        );
    }

    out.push(
        Case::new("pod_selector_with_match_expressions")
            .apply("x", "p", &format!("{POD_A}  ingress: [{{from: [{{podSelector: {{matchExpressions: [{{key: pod, operator: In, values: [b]}}]}}}}]}}]\n"))
            .expect(80, "TCP", all().all_ingress("x/a", false).peer("x/b", "x/a", true)),
    );

    out.push(
        Case::new("pod_selector_or_namespace_selector")
            .apply("x", "p", &format!("{POD_A}  ingress:\n  - from:\n    - namespaceSelector: {{matchExpressions: [{{key: ns, operator: NotIn, values: [x]}}]}}\n    - podSelector: {{matchLabels: {{pod: b}}}}\n"))
            .expect(80, "TCP", all().peer("x/c", "x/a", false)),
    );

    out.push(
        Case::new("pod_selector_and_namespace_selector")
            .apply("x", "p", &format!("{POD_A}  ingress:\n  - from:\n    - namespaceSelector: {{matchExpressions: [{{key: ns, operator: NotIn, values: [x]}}]}}\n      podSelector: {{matchLabels: {{pod: b}}}}\n"))
            .expect(
                80,
                "TCP",
                all()
                    .all_ingress("x/a", false)
                    .peer("y/b", "x/a", true)
                    .peer("z/b", "x/a", true),
            ),
    );

    out.push(
        Case::new("multiple_pod_selectors_and_namespace_selectors")
            .apply("x", "p", &format!("{POD_A}  ingress:\n  - from:\n    - namespaceSelector: {{matchExpressions: [{{key: ns, operator: NotIn, values: [x]}}]}}\n      podSelector: {{matchExpressions: [{{key: pod, operator: In, values: [b, c]}}]}}\n"))
            .expect(
                80,
                "TCP",
                all()
                    .all_ingress("x/a", false)
                    .peer("y/b", "x/a", true)
                    .peer("y/c", "x/a", true)
                    .peer("z/b", "x/a", true)
                    .peer("z/c", "x/a", true),
            ),
    );

    out.push(
        Case::new("any_pod_selectors")
            .apply("x", "p", &format!("{POD_A}  ingress: [{{from: [{{podSelector: {{matchLabels: {{pod: b}}}}}}, {{podSelector: {{matchLabels: {{pod: c}}}}}}]}}]\n"))
            .expect(
                80,
                "TCP",
                all().all_ingress("x/a", false).peer("x/b", "x/a", true).peer("x/c", "x/a", true),
            ),
    );

    for proto in ["TCP", "UDP", "SCTP"] {
        out.push(
            Case::named("pod_in_other_namespace_by_pod_and_namespace_selector_all_protocols", proto)
                .apply("x", "p", &format!("{POD_A}  ingress: [{{from: [{{namespaceSelector: {{matchLabels: {{ns: y}}}}, podSelector: {{matchLabels: {{pod: a}}}}}}]}}]\n"))
                .expect(80, proto, all().all_ingress("x/a", false).peer("y/a", "x/a", true)),
        );
    }

    for proto in ["TCP", "UDP", "SCTP"] {
        let port81 = all().peer("x", "x/a", false).peer("z", "x/a", false);
        out.push(
            Case::named("ports_and_stacked_policies", proto)
                .apply("x", "allow-81", &format!("{POD_A}  ingress: [{{from: [{{namespaceSelector: {{matchLabels: {{ns: y}}}}}}], ports: [{{port: 81, protocol: {proto}}}]}}]\n"))
                .expect(81, proto, port81.clone())
                .expect(80, proto, all().all_ingress("x/a", false))
                .apply("x", "allow-80", &format!("{POD_A}  ingress: [{{from: [{{namespaceSelector: {{matchLabels: {{ns: y}}}}}}], ports: [{{port: 80, protocol: {proto}}}]}}]\n"))
                .expect(80, proto, port81),
        );
    }

    out.push(
        Case::new("allow_all_policy")
            .apply("x", "allow-all", "  podSelector: {}\n  ingress: [{}]\n")
            .expect(80, "TCP", all())
            .expect(81, "TCP", all()),
    );

    out.push(
        Case::new("ingress_on_one_named_port")
            .apply(
                "x",
                "allow-all",
                "  podSelector: {}\n  ingress: [{ports: [{port: serve-81-tcp}]}]\n",
            )
            .expect(81, "TCP", all())
            .expect(80, "TCP", all().peer("*", "x", false))
            .expect(81, "UDP", all().peer("*", "x", false)),
    );

    out.push(
        Case::new("ingress_from_namespace_on_one_named_port")
            .apply("x", "p", &format!("{POD_A}  ingress: [{{from: [{{namespaceSelector: {{matchLabels: {{ns: y}}}}}}], ports: [{{port: serve-80-tcp, protocol: TCP}}]}}]\n"))
            .expect(80, "TCP", all().peer("x", "x/a", false).peer("z", "x/a", false))
            .expect(81, "TCP", all().all_ingress("x/a", false)),
    );

    out.push(
        Case::new("egress_on_one_named_port")
            .apply("x", "allow-egress", "  podSelector: {}\n  policyTypes: [Egress]\n  egress: [{ports: [{port: serve-80-tcp}]}]\n")
            .expect(80, "TCP", all())
            .expect(81, "TCP", all().peer("x", "*", false)),
    );

    out.push(
        Case::new("updated_policy")
            .apply(
                "x",
                "allow-all-mutate-to-deny-all",
                "  podSelector: {}\n  ingress: [{}]\n",
            )
            .expect(81, "TCP", all())
            .apply(
                "x",
                "allow-all-mutate-to-deny-all",
                "  podSelector: {}\n  ingress: []\n",
            )
            .expect(81, "TCP", all().peer("*", "x", false)),
    );

    out.push(
        Case::new("ingress_from_updated_namespace")
            .apply("x", "p", &format!("{POD_A}  ingress: [{{from: [{{namespaceSelector: {{matchLabels: {{ns2: updated}}}}}}]}}]\n"))
            .expect(80, "TCP", all().all_ingress("x/a", false))
            .label_ns("y", "ns2", "updated")
            .expect(80, "TCP", all().all_ingress("x/a", false).peer("y", "*", true)),
    );

    out.push(
        Case::new("ingress_from_updated_pod")
            .apply("x", "p", &format!("{POD_A}  ingress: [{{from: [{{podSelector: {{matchLabels: {{pod: b, pod2: updated}}}}}}]}}]\n"))
            .expect(80, "TCP", all().all_ingress("x/a", false))
            .label_pod("x/b", "pod2", "updated")
            .expect(80, "TCP", all().all_ingress("x/a", false).peer("x/b", "x/a", true)),
    );

    out.push(
        Case::new("deny_ingress_from_other_namespaces")
            .apply(
                "x",
                "deny-empty-policy",
                "  podSelector: {}\n  ingress: [{from: [{podSelector: {matchLabels: {}}}]}]\n",
            )
            .expect(80, "TCP", all().peer("y", "x", false).peer("z", "x", false)),
    );

    out.push(
        Case::new("deny_ingress_to_updated_pod")
            .apply(
                "x",
                "p",
                "  podSelector: {matchLabels: {target: isolated}}\n  policyTypes: [Ingress]\n",
            )
            .expect(80, "TCP", all())
            .label_pod("x/a", "target", "isolated")
            .expect(80, "TCP", all().all_ingress("x/a", false)),
    );

    out.push(
        Case::named("deny_egress_by_pod_selector_and_namespace", "pod")
            .apply("x", "p", &format!("{POD_A}  policyTypes: [Egress]\n"))
            .expect(80, "TCP", all().all_egress("x/a", false)),
    );
    out.push(
        Case::named("deny_egress_by_pod_selector_and_namespace", "namespace")
            .apply("x", "p", "  podSelector: {}\n  policyTypes: [Egress]\n")
            .expect(80, "TCP", all().peer("x", "*", false)),
    );

    out.push(
        Case::new("ingress_and_egress_together")
            .apply("x", "p", &format!("{POD_A}  policyTypes: [Egress, Ingress]\n  ingress: [{{from: [{{podSelector: {{matchLabels: {{pod: b}}}}}}]}}]\n  egress: [{{ports: [{{port: 80}}]}}]\n"))
            .expect(80, "TCP", all().all_ingress("x/a", false).peer("x/b", "x/a", true))
            .expect(
                81,
                "TCP",
                all()
                    .all_ingress("x/a", false)
                    .all_egress("x/a", false)
                    .peer("x/b", "x/a", true),
            ),
    );

    out.push(
        Case::new("client_side_egress_denies_even_if_server_allows")
            .apply("x", "allow-to-ns-y-pod-a", &format!("{POD_A}  policyTypes: [Egress]\n  egress: [{{to: [{{namespaceSelector: {{matchLabels: {{ns: y}}}}, podSelector: {{matchLabels: {{pod: a}}}}}}]}}]\n"))
            .apply("y", "allow-from-xa-on-ya", &format!("{POD_A}  ingress: [{{from: [{{namespaceSelector: {{matchLabels: {{ns: x}}}}, podSelector: {{matchLabels: {{pod: a}}}}}}]}}]\n"))
            .apply("y", "allow-from-xa-on-yb", "  podSelector: {matchLabels: {pod: b}}\n  ingress: [{from: [{namespaceSelector: {matchLabels: {ns: x}}, podSelector: {matchLabels: {pod: a}}}]}]\n")
            .expect(
                80,
                "TCP",
                all()
                    .peer("x/a", "*", false)
                    .peer("*", "y/a", false)
                    .peer("x/a", "y/a", true)
                    .peer("*", "y/b", false),
            ),
    );

    out.push(
        Case::new("egress_to_server_in_other_namespace")
            .apply("x", "p", &format!("{POD_A}  policyTypes: [Egress]\n  egress: [{{to: [{{namespaceSelector: {{matchLabels: {{ns: y}}}}, podSelector: {{matchLabels: {{pod: a}}}}}}]}}]\n"))
            .expect(80, "TCP", all().all_egress("x/a", false).peer("x/a", "y/a", true)),
    );

    out.push(
        Case::new("ingress_any_port_on_one_protocol")
            .apply(
                "x",
                "p",
                &format!("{POD_A}  ingress: [{{ports: [{{protocol: TCP}}]}}]\n"),
            )
            .expect(80, "TCP", all())
            .expect(80, "UDP", all().all_ingress("x/a", false)),
    );

    out.push(
        Case::named("allow_all_takes_precedence_ingress_and_egress", "ingress")
            .apply(
                "x",
                "allow-80",
                "  podSelector: {}\n  ingress: [{ports: [{port: 80}]}]\n",
            )
            .expect(81, "TCP", all().peer("*", "x", false))
            .apply("x", "allow-all", "  podSelector: {}\n  ingress: [{}]\n")
            .expect(81, "TCP", all()),
    );
    out.push(
        Case::named("allow_all_takes_precedence_ingress_and_egress", "egress")
            .apply(
                "x",
                "allow-80",
                "  podSelector: {}\n  policyTypes: [Egress]\n  egress: [{ports: [{port: 80}]}]\n",
            )
            .expect(81, "TCP", all().peer("x", "*", false))
            .apply(
                "x",
                "allow-all",
                "  podSelector: {}\n  policyTypes: [Egress]\n  egress: [{}]\n",
            )
            .expect(81, "TCP", all()),
    );

    out.push(
        Case::new("stop_enforcing_after_delete")
            .apply("x", "deny-all", DENY_ALL)
            .expect(80, "TCP", all().peer("x", "*", false).peer("*", "x", false))
            .delete_policies()
            .expect(80, "TCP", all()),
    );

    let yb = xyz_ip("y", "b");
    out.push(
        Case::new("egress_to_server_in_cidr_block")
            .apply("x", "p", &format!("{POD_A}  policyTypes: [Egress]\n  egress: [{{to: [{{ipBlock: {{cidr: {yb}/32}}}}]}}]\n"))
            .expect(80, "TCP", all().all_egress("x/a", false).peer("x/a", "y/b", true)),
    );

    let xb = xyz_ip("x", "b");
    out.push(
        Case::named("except_clause_and_overlap", "update")
            .apply("x", "p", &format!("{POD_A}  policyTypes: [Egress]\n  egress: [{{to: [{{ipBlock: {{cidr: 10.0.0.0/8, except: [{xb}/32]}}}}]}}]\n"))
            .expect(80, "TCP", all().peer("x/a", "x/b", false))
            .apply("x", "p", &format!("{POD_A}  policyTypes: [Egress]\n  egress: [{{to: [{{ipBlock: {{cidr: {xb}/32}}}}]}}]\n"))
            .expect(80, "TCP", all().all_egress("x/a", false).peer("x/a", "x/b", true)),
    );
    // Both at once (two policies): the /32 allows what the other excepts.
    out.push(
        Case::named("except_clause_and_overlap", "both")
            .apply("x", "p", &format!("{POD_A}  policyTypes: [Egress]\n  egress: [{{to: [{{ipBlock: {{cidr: 10.0.0.0/8, except: [{xb}/32]}}}}]}}]\n"))
            .apply("x", "q", &format!("{POD_A}  policyTypes: [Egress]\n  egress: [{{to: [{{ipBlock: {{cidr: {xb}/32}}}}]}}]\n"))
            .expect(80, "TCP", all()),
    );

    out.push(
        Case::new("ingress_and_egress_controlled_independently")
            .apply(
                "x",
                "allow-egress-for-target",
                &format!("{POD_A}  policyTypes: [Egress]\n  egress: [{{}}]\n"),
            )
            .expect(80, "TCP", all())
            .apply(
                "x",
                "deny-ingress",
                &format!("{POD_A}  policyTypes: [Ingress]\n"),
            )
            .expect(80, "TCP", all().all_ingress("x/a", false)),
    );

    out.push(
        Case::named("sctp_or_udp_is_never_tcp", "sctp-81")
            .apply("x", "deny-ingress", DENY_INGRESS)
            .apply(
                "x",
                "allow-sctp-81",
                &format!("{POD_A}  ingress: [{{ports: [{{port: 81, protocol: SCTP}}]}}]\n"),
            )
            .expect(81, "TCP", all().peer("*", "x", false))
            .expect(
                81,
                "SCTP",
                all().peer("*", "x", false).all_ingress("x/a", true),
            ),
    );
    out.push(
        Case::named("sctp_or_udp_is_never_tcp", "sctp-80")
            .apply(
                "x",
                "allow-sctp-80",
                &format!("{POD_A}  ingress: [{{ports: [{{port: 80, protocol: SCTP}}]}}]\n"),
            )
            .expect(81, "TCP", all().all_ingress("x/a", false)),
    );
    out.push(
        Case::named("sctp_or_udp_is_never_tcp", "udp-81")
            .apply(
                "x",
                "allow-udp-81",
                &format!("{POD_A}  ingress: [{{ports: [{{port: 81, protocol: UDP}}]}}]\n"),
            )
            .expect(81, "TCP", all().all_ingress("x/a", false))
            .expect(81, "UDP", all()),
    );

    out.push(
        Case::new("egress_namespace_not_in_by_default_label")
            .apply("x", "p", &format!("{POD_A}  policyTypes: [Egress]\n  egress: [{{to: [{{namespaceSelector: {{matchExpressions: [{{key: kubernetes.io/metadata.name, operator: NotIn, values: [y]}}]}}}}]}}]\n"))
            .expect(80, "TCP", all().peer("x/a", "y", false)),
    );

    out.push(
        Case::named("end_port_ranges", "tcp-udp")
            .apply("x", "p", &format!("{POD_A}  ingress: [{{from: [{{namespaceSelector: {{matchLabels: {{ns: y}}}}}}], ports: [{{port: 80, endPort: 81}}]}}]\n"))
            .expect(80, "TCP", all().peer("x", "x/a", false).peer("z", "x/a", false))
            .expect(81, "TCP", all().peer("x", "x/a", false).peer("z", "x/a", false))
            .expect(81, "UDP", all().all_ingress("x/a", false)),
    );
    out.push(
        Case::named("end_port_ranges", "sctp")
            .apply("x", "p", "  podSelector: {}\n  policyTypes: [Egress]\n  egress: [{ports: [{port: 81, endPort: 90, protocol: SCTP}]}]\n")
            .expect(81, "SCTP", all())
            .expect(80, "SCTP", all().peer("x", "*", false)),
    );

    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn case_names_are_unique_and_every_case_expects_something() {
        let cases = cases();
        let mut names: Vec<&str> = cases.iter().map(|c| c.name.as_str()).collect();
        names.sort();
        let before = names.len();
        names.dedup();
        assert_eq!(before, names.len(), "duplicate case names");
        for c in &cases {
            assert!(!c.protocols().is_empty(), "{} expects nothing", c.name);
        }
    }

    #[test]
    fn truth_selectors_and_diff() {
        let t = Truth::all_allowed().peer("x", "y/a", false);
        assert_eq!(t.0.len(), 72);
        assert_eq!(t.get("x/b", "y/a"), Some(false));
        assert_eq!(t.get("z/b", "y/a"), Some(true));
        assert_eq!(t.get("x/a", "x/a"), None);
        let d = t.diff(&Truth::all_allowed());
        assert!(d.contains("x/c -> y/a: expected false, got true"), "{d}");
        assert_eq!(t.diff(&t).matches('!').count(), 1, "only the legend");
    }
}
