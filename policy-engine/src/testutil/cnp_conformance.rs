//! The network-policy-api conformance suite for ClusterNetworkPolicy
//! (`conformance/tests` with the policies of `conformance/base`), as our
//! own data: the model cluster (four houses, two pods each), the policies
//! each test applies, the changes it makes between its subtests, and every
//! connection it expects to succeed or time out, in order.
//!
//! Shared by policy-engine's unit test (through the compiler and the
//! datapath's lookup, as `simulate` judges) and meant for the test bed.

use crate::model::cluster_policy::ClusterNetworkPolicy;
use crate::model::{ContainerPort, PodInfo, PodRef, Protocol, Snapshot};

use super::ClusterBuilder;

/// The houses (namespace `network-policy-conformance-<house>`, label
/// `conformance-house: <house>`) and their two pods' name stem.
pub const HOUSES: [(&str, &str); 4] = [
    ("gryffindor", "harry-potter"),
    ("slytherin", "draco-malfoy"),
    ("hufflepuff", "cedric-diggory"),
    ("ravenclaw", "luna-lovegood"),
];

/// The namespace of a house.
pub fn house_ns(house: &str) -> String {
    format!("network-policy-conformance-{house}")
}

/// `house/pod-N` → the pod's reference.
pub fn house_pod(short: &str) -> PodRef {
    let (house, pod) = short.split_once('/').unwrap_or((short, ""));
    PodRef::new(house_ns(house), pod)
}

/// The address of `house/pod-N` on a two-node cluster: pods numbered k in
/// house order alternate between 10.244.0.0/24 and 10.244.1.0/24, host
/// number 20 + k.
pub fn house_ip(short: &str) -> String {
    let (house, pod) = short.split_once('/').unwrap_or((short, ""));
    let h = HOUSES.iter().position(|(x, _)| *x == house).unwrap_or(0);
    let n = usize::from(pod.ends_with('1'));
    let k = h * 2 + n;
    format!("10.244.{}.{}", k % 2, 20 + k)
}

/// The model: every house's two pods, serving TCP 80 (named `web`) and
/// 8080, UDP 53 (named `dns`) and 5353, SCTP 9003 and 9005.
pub fn houses_model() -> ClusterBuilder {
    let mut b = ClusterBuilder::new();
    for (house, stem) in HOUSES {
        b = b.ns(&house_ns(house), &[("conformance-house", house)]);
        for n in 0..2 {
            let short = format!("{house}/{stem}-{n}");
            let port = |name: Option<&str>, port, protocol| ContainerPort {
                name: name.map(str::to_string),
                port,
                protocol,
            };
            let info = PodInfo {
                labels: [("conformance-house".to_string(), house.to_string())].into(),
                ips: vec![house_ip(&short)
                    .parse()
                    .unwrap_or(std::net::Ipv4Addr::UNSPECIFIED.into())],
                ports: vec![
                    port(Some("web"), 80, Protocol::Tcp),
                    port(None, 8080, Protocol::Tcp),
                    port(Some("dns"), 53, Protocol::Udp),
                    port(None, 5353, Protocol::Udp),
                    port(None, 9003, Protocol::Sctp),
                    port(None, 9005, Protocol::Sctp),
                ],
                ..PodInfo::default()
            };
            b.snapshot.insert_pod(house_pod(&short), info);
        }
    }
    b
}

/// One step of a case.
#[derive(Clone, Debug)]
pub enum Step {
    /// Create or replace an object (ClusterNetworkPolicy or NetworkPolicy).
    Apply(String),
    /// Swap two rules of a ClusterNetworkPolicy.
    Swap {
        /// Policy name.
        policy: &'static str,
        /// `ingress` or `egress`.
        egress: bool,
        /// Indexes.
        rules: (usize, usize),
    },
    /// Change a ClusterNetworkPolicy's priority.
    Priority(&'static str, i32),
    /// Change one rule's action.
    Action {
        /// Policy name.
        policy: &'static str,
        /// `ingress` or `egress`.
        egress: bool,
        /// Rule index.
        index: usize,
        /// New action.
        action: &'static str,
    },
    /// Insert an egress rule (YAML of the rule) at the front.
    PrependEgress(&'static str, String),
    /// Delete a NetworkPolicy (`house`, name).
    DeleteNetworkPolicy(&'static str, &'static str),
    /// Replace a house's namespace labels (the API server keeps
    /// `kubernetes.io/metadata.name`).
    LabelHouse(&'static str, &'static str),
    /// A connection and whether it succeeds.
    Expect {
        /// Client, `house/pod-N`.
        from: &'static str,
        /// Server, `house/pod-N`.
        to: &'static str,
        /// Protocol.
        proto: Protocol,
        /// Server port.
        port: u16,
        /// Whether it connects (false: it times out).
        allowed: bool,
    },
}

/// One upstream conformance test.
#[derive(Clone, Debug)]
pub struct Case {
    /// The upstream test's short name.
    pub name: &'static str,
    /// Its steps.
    pub steps: Vec<Step>,
}

impl Step {
    /// Applies a change step to `snapshot` (expectations do nothing); an
    /// object that does not parse or is invalid is an error.
    pub fn change(&self, snapshot: &mut Snapshot) -> Result<(), String> {
        let mut cnp = |name: &str, f: &mut dyn FnMut(&mut ClusterNetworkPolicy)| {
            if let Some(p) = snapshot.cluster_policies.get(name) {
                let mut obj = p.object.clone();
                f(&mut obj);
                snapshot.upsert_cluster_policy(&obj);
            }
        };
        match self {
            Step::Apply(yaml) => {
                let kind = serde_norway::from_str::<serde_json::Value>(yaml)
                    .ok()
                    .and_then(|v| v.get("kind").and_then(|k| k.as_str()).map(String::from));
                if kind.as_deref() == Some("NetworkPolicy") {
                    let np = serde_norway::from_str(yaml).map_err(|e| e.to_string())?;
                    snapshot.upsert_policy(&np).map_err(|e| e.to_string())?;
                } else {
                    let obj = serde_norway::from_str::<ClusterNetworkPolicy>(yaml)
                        .map_err(|e| format!("{e}: {yaml}"))?;
                    let name = snapshot.upsert_cluster_policy(&obj);
                    let issues = &snapshot.cluster_policies[&name].issues;
                    if !issues.is_empty() {
                        return Err(format!("{name}: {issues:?}"));
                    }
                }
            }
            Step::Swap {
                policy,
                egress,
                rules: (i, j),
            } => cnp(policy, &mut |o| {
                let list = if *egress {
                    o.spec.egress.as_mut()
                } else {
                    o.spec.ingress.as_mut()
                };
                if let Some(l) = list {
                    l.swap(*i, *j);
                }
            }),
            Step::Priority(policy, p) => cnp(policy, &mut |o| o.spec.priority = *p),
            Step::Action {
                policy,
                egress,
                index,
                action,
            } => cnp(policy, &mut |o| {
                let list = if *egress {
                    o.spec.egress.as_mut()
                } else {
                    o.spec.ingress.as_mut()
                };
                if let Some(r) = list.and_then(|l| l.get_mut(*index)) {
                    r.action = action.to_string();
                }
            }),
            Step::PrependEgress(policy, rule) => {
                let r = serde_norway::from_str::<crate::model::cluster_policy::CnpRuleSpec>(rule)
                    .map_err(|e| e.to_string())?;
                cnp(policy, &mut |o| {
                    o.spec
                        .egress
                        .get_or_insert_with(Vec::new)
                        .insert(0, r.clone())
                });
            }
            Step::DeleteNetworkPolicy(house, name) => {
                snapshot
                    .policies
                    .remove(&PodRef::new(house_ns(house), *name));
            }
            Step::LabelHouse(house, value) => {
                let ns = house_ns(house);
                if let Some(info) = snapshot.namespaces.get_mut(&ns) {
                    let keep = crate::model::NamespaceInfo::implicit(&ns).labels;
                    info.labels = keep;
                    info.labels
                        .insert("conformance-house".into(), value.to_string());
                }
            }
            Step::Expect { .. } => {}
        }
        Ok(())
    }
}

fn expect(from: &'static str, to: &'static str, proto: Protocol, port: u16, allowed: bool) -> Step {
    Step::Expect {
        from,
        to,
        proto,
        port,
        allowed,
    }
}

fn tcp(from: &'static str, to: &'static str, port: u16, allowed: bool) -> Step {
    expect(from, to, Protocol::Tcp, port, allowed)
}

/// A `namespaces` selector of one house by its name label.
fn by_name(house: &str) -> String {
    format!(
        "{{namespaces: {{matchLabels: {{kubernetes.io/metadata.name: {}}}}}}}",
        house_ns(house)
    )
}

/// A `pods` selector of one house's pods by the house label.
fn house_pods(house: &str) -> String {
    format!(
        "{{pods: {{namespaceSelector: {{matchLabels: {{conformance-house: {house}}}}}, podSelector: {{matchLabels: {{conformance-house: {house}}}}}}}}}"
    )
}

fn cnp(name: &str, tier: &str, priority: u32, subject: &str, rules: &str) -> String {
    format!(
        "apiVersion: policy.networking.k8s.io/v1alpha2\nkind: ClusterNetworkPolicy\nmetadata: {{name: {name}}}\nspec:\n  tier: {tier}\n  priority: {priority}\n  subject: {subject}\n{rules}"
    )
}

/// CNPAdminTierIngressTCP: rule order and ports in one Admin policy,
/// reordered between subtests.
fn admin_ingress_tcp() -> Case {
    let (rav, sly, huf) = (
        by_name("ravenclaw"),
        by_name("slytherin"),
        by_name("hufflepuff"),
    );
    let p80 = "protocols: [{tcp: {destinationPort: {number: 80}}}]";
    let rules = format!(
        "  ingress:\n  - {{name: allow-from-ravenclaw-everything, action: Accept, from: [{rav}]}}\n  - {{name: deny-from-ravenclaw-everything, action: Deny, from: [{rav}]}}\n  - {{name: pass-from-ravenclaw-everything, action: Pass, from: [{rav}]}}\n  - {{name: deny-from-slytherin-at-port-80, action: Deny, from: [{sly}], {p80}}}\n  - {{name: pass-from-slytherin-at-port-80, action: Pass, from: [{sly}], {p80}}}\n  - {{name: allow-from-hufflepuff-at-port-80, action: Accept, from: [{huf}], {p80}}}\n  - {{name: deny-from-hufflepuff-everything-else, action: Deny, from: [{huf}]}}\n"
    );
    let subject = format!(
        "{{namespaces: {{matchLabels: {{kubernetes.io/metadata.name: {}}}}}}}",
        house_ns("gryffindor")
    );
    Case {
        name: "CNPAdminTierIngressTCP",
        steps: vec![
            Step::Apply(cnp("ingress-tcp", "Admin", 3, &subject, &rules)),
            tcp(
                "ravenclaw/luna-lovegood-0",
                "gryffindor/harry-potter-0",
                80,
                true,
            ),
            tcp(
                "ravenclaw/luna-lovegood-1",
                "gryffindor/harry-potter-0",
                8080,
                true,
            ),
            tcp(
                "hufflepuff/cedric-diggory-0",
                "gryffindor/harry-potter-1",
                80,
                true,
            ),
            tcp(
                "hufflepuff/cedric-diggory-1",
                "gryffindor/harry-potter-1",
                8080,
                false,
            ),
            Step::Swap {
                policy: "ingress-tcp",
                egress: false,
                rules: (0, 1),
            },
            tcp(
                "ravenclaw/luna-lovegood-0",
                "gryffindor/harry-potter-1",
                80,
                false,
            ),
            tcp(
                "ravenclaw/luna-lovegood-1",
                "gryffindor/harry-potter-1",
                8080,
                false,
            ),
            tcp(
                "slytherin/draco-malfoy-0",
                "gryffindor/harry-potter-0",
                80,
                false,
            ),
            tcp(
                "slytherin/draco-malfoy-1",
                "gryffindor/harry-potter-0",
                8080,
                true,
            ),
            Step::Swap {
                policy: "ingress-tcp",
                egress: false,
                rules: (0, 2),
            },
            tcp(
                "ravenclaw/luna-lovegood-0",
                "gryffindor/harry-potter-0",
                80,
                true,
            ),
            tcp(
                "ravenclaw/luna-lovegood-1",
                "gryffindor/harry-potter-0",
                8080,
                true,
            ),
            Step::Swap {
                policy: "ingress-tcp",
                egress: false,
                rules: (3, 4),
            },
            tcp(
                "slytherin/draco-malfoy-0",
                "gryffindor/harry-potter-0",
                80,
                true,
            ),
            tcp(
                "slytherin/draco-malfoy-1",
                "gryffindor/harry-potter-0",
                8080,
                true,
            ),
        ],
    }
}

/// CNPAdminTierPriorityField: a lower priority value takes precedence.
fn admin_priority() -> Case {
    let (gry, sly) = (house_pods("gryffindor"), house_pods("slytherin"));
    let subject = gry;
    let gress = |action: &str, what: &str| {
        format!(
            "  ingress: [{{name: {what}-all-ingress-from-slytherin, action: {action}, from: [{sly}]}}]\n  egress: [{{name: {what}-all-egress-to-slytherin, action: {action}, to: [{sly}]}}]\n"
        )
    };
    Case {
        name: "CNPAdminTierPriorityField",
        steps: vec![
            Step::Apply(cnp(
                "priority-50-example",
                "Admin",
                50,
                &subject,
                &gress("Deny", "deny"),
            )),
            Step::Apply(cnp(
                "old-priority-60-new-priority-40-example",
                "Admin",
                60,
                &subject,
                &gress("Pass", "pass"),
            )),
            Step::Apply(cnp(
                "default",
                "Baseline",
                10,
                &subject,
                &gress("Accept", "allow"),
            )),
            tcp(
                "slytherin/draco-malfoy-0",
                "gryffindor/harry-potter-0",
                80,
                false,
            ),
            tcp(
                "slytherin/draco-malfoy-1",
                "gryffindor/harry-potter-0",
                8080,
                false,
            ),
            tcp(
                "gryffindor/harry-potter-0",
                "slytherin/draco-malfoy-0",
                80,
                false,
            ),
            tcp(
                "gryffindor/harry-potter-1",
                "slytherin/draco-malfoy-0",
                8080,
                false,
            ),
            Step::Priority("old-priority-60-new-priority-40-example", 40),
            tcp(
                "slytherin/draco-malfoy-0",
                "gryffindor/harry-potter-0",
                80,
                true,
            ),
            tcp(
                "slytherin/draco-malfoy-1",
                "gryffindor/harry-potter-0",
                8080,
                true,
            ),
            tcp(
                "gryffindor/harry-potter-0",
                "slytherin/draco-malfoy-0",
                80,
                true,
            ),
            tcp(
                "gryffindor/harry-potter-1",
                "slytherin/draco-malfoy-0",
                8080,
                true,
            ),
        ],
    }
}

/// CNPAPIIntegration: Admin Deny, then Pass to a NetworkPolicy that
/// allows, then (the NetworkPolicy deleted) to a Baseline Deny.
fn integration() -> Case {
    let subject = "{namespaces: {matchLabels: {conformance-house: gryffindor}}}";
    let sly = "{namespaces: {matchLabels: {conformance-house: slytherin}}}";
    let gress = |action: &str| {
        format!(
            "  ingress: [{{name: deny-all-ingress-from-slytherin, action: {action}, from: [{sly}]}}]\n  egress: [{{name: deny-all-egress-to-slytherin, action: {action}, to: [{sly}]}}]\n"
        )
    };
    let np = format!(
        "apiVersion: networking.k8s.io/v1\nkind: NetworkPolicy\nmetadata: {{name: allow-gress-from-to-slytherin-to-gryffindor, namespace: {}}}\nspec:\n  podSelector: {{}}\n  policyTypes: [Ingress, Egress]\n  ingress: [{{from: [{{namespaceSelector: {{matchLabels: {{conformance-house: slytherin}}}}}}]}}]\n  egress: [{{to: [{{namespaceSelector: {{matchLabels: {{conformance-house: slytherin}}}}}}]}}]\n",
        house_ns("gryffindor")
    );
    Case {
        name: "CNPAPIIntegration",
        steps: vec![
            Step::Apply(cnp("pass-example", "Admin", 10, subject, &gress("Deny"))),
            Step::Apply(np),
            Step::Apply(cnp("default", "Baseline", 10, subject, &gress("Deny"))),
            tcp(
                "slytherin/draco-malfoy-0",
                "gryffindor/harry-potter-0",
                80,
                false,
            ),
            tcp(
                "slytherin/draco-malfoy-1",
                "gryffindor/harry-potter-0",
                8080,
                false,
            ),
            tcp(
                "gryffindor/harry-potter-0",
                "slytherin/draco-malfoy-0",
                80,
                false,
            ),
            tcp(
                "gryffindor/harry-potter-1",
                "slytherin/draco-malfoy-0",
                8080,
                false,
            ),
            Step::Action {
                policy: "pass-example",
                egress: false,
                index: 0,
                action: "Pass",
            },
            tcp(
                "slytherin/draco-malfoy-0",
                "gryffindor/harry-potter-0",
                80,
                true,
            ),
            tcp(
                "slytherin/draco-malfoy-1",
                "gryffindor/harry-potter-0",
                8080,
                true,
            ),
            Step::Action {
                policy: "pass-example",
                egress: true,
                index: 0,
                action: "Pass",
            },
            tcp(
                "gryffindor/harry-potter-0",
                "slytherin/draco-malfoy-0",
                80,
                true,
            ),
            tcp(
                "gryffindor/harry-potter-1",
                "slytherin/draco-malfoy-0",
                8080,
                true,
            ),
            Step::DeleteNetworkPolicy("gryffindor", "allow-gress-from-to-slytherin-to-gryffindor"),
            tcp(
                "slytherin/draco-malfoy-0",
                "gryffindor/harry-potter-0",
                80,
                false,
            ),
            tcp(
                "slytherin/draco-malfoy-1",
                "gryffindor/harry-potter-0",
                8080,
                false,
            ),
            tcp(
                "gryffindor/harry-potter-0",
                "slytherin/draco-malfoy-0",
                80,
                false,
            ),
            tcp(
                "gryffindor/harry-potter-1",
                "slytherin/draco-malfoy-0",
                8080,
                false,
            ),
        ],
    }
}

/// The three protocols the CIDR test probes, each on its served port.
fn all_protocols(from: &'static str, to: &'static str, allowed: bool) -> Vec<Step> {
    vec![
        expect(from, to, Protocol::Tcp, 80, allowed),
        expect(from, to, Protocol::Udp, 53, allowed),
        expect(from, to, Protocol::Sctp, 9003, allowed),
    ]
}

/// CNPAdminTierEgressInlineCIDRPeers: Accept to slytherin's pods before a
/// Deny to 0.0.0.0/0 and ::/0 (which covers pods too); a relabel that
/// stops matching; then an Accept of two pod addresses in front.
fn admin_egress_inline_cidr() -> Case {
    let gry = house_pods("gryffindor");
    let sly = house_pods("slytherin");
    let rules = format!(
        "  egress:\n  - {{name: allow-egress-to-slytherin, action: Accept, to: [{sly}]}}\n  - {{name: deny-egress-to-internet, action: Deny, to: [{{networks: [0.0.0.0/0, \"::/0\"]}}]}}\n"
    );
    let hp1 = "gryffindor/harry-potter-1";
    let mut steps = vec![Step::Apply(cnp(
        "inline-cidr-as-peers-example",
        "Admin",
        85,
        &gry,
        &rules,
    ))];
    steps.extend(all_protocols(hp1, "ravenclaw/luna-lovegood-0", false));
    steps.extend(all_protocols(hp1, "hufflepuff/cedric-diggory-0", false));
    steps.extend(all_protocols(hp1, "slytherin/draco-malfoy-0", true));
    steps.push(Step::LabelHouse("slytherin", "denied-namespace-label"));
    steps.extend(all_protocols(hp1, "slytherin/draco-malfoy-0", false));
    steps.push(Step::LabelHouse("slytherin", "slytherin"));
    steps.extend(all_protocols(hp1, "slytherin/draco-malfoy-0", true));
    steps.push(Step::PrependEgress(
        "inline-cidr-as-peers-example",
        format!(
            "{{name: allow-egress-to-specific-podIPs, action: Accept, to: [{{networks: [{}/32, {}/32]}}]}}",
            house_ip("ravenclaw/luna-lovegood-0"),
            house_ip("hufflepuff/cedric-diggory-0")
        ),
    ));
    steps.extend(all_protocols(hp1, "ravenclaw/luna-lovegood-0", true));
    steps.extend(all_protocols(hp1, "hufflepuff/cedric-diggory-0", true));
    steps.extend(all_protocols(hp1, "ravenclaw/luna-lovegood-1", false));
    steps.extend(all_protocols(hp1, "hufflepuff/cedric-diggory-1", false));
    Case {
        name: "CNPAdminTierEgressInlineCIDRPeers",
        steps,
    }
}

/// Every transcribed case.
pub fn cases() -> Vec<Case> {
    vec![
        admin_ingress_tcp(),
        admin_priority(),
        integration(),
        admin_egress_inline_cidr(),
    ]
}

/// Runs `case` from the model, asking `judge` for each expectation;
/// returns the expectations that did not hold.
pub fn run(case: &Case, judge: &dyn Fn(&Snapshot, &Step) -> Option<bool>) -> Vec<String> {
    let mut snapshot = houses_model().build();
    let mut failures = Vec::new();
    for (i, step) in case.steps.iter().enumerate() {
        if let Err(e) = step.change(&mut snapshot) {
            failures.push(format!("{} step {i}: {e}", case.name));
        }
        if let Step::Expect {
            from,
            to,
            proto,
            port,
            allowed,
        } = step
        {
            let got = judge(&snapshot, step);
            if got != Some(*allowed) {
                failures.push(format!(
                    "{} step {i}: {from} -> {to} {proto:?}/{port}: expected {}, got {got:?}",
                    case.name,
                    if *allowed { "connect" } else { "time out" }
                ));
            }
        }
    }
    failures
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::testutil::Sim;

    /// Every transcribed expectation, through the compiler and the
    /// datapath's lookup (both ends judged, as `simulate` does).
    #[test]
    fn every_transcribed_case_passes() {
        let mut failures = Vec::new();
        for case in cases() {
            failures.extend(run(&case, &|snapshot, step| {
                let Step::Expect {
                    from,
                    to,
                    proto,
                    port,
                    ..
                } = step
                else {
                    return None;
                };
                let sim = Sim::new(snapshot.clone());
                let (f, t) = (house_pod(from), house_pod(to));
                Some(sim.allowed(
                    &f.to_string(),
                    &t.to_string(),
                    *port,
                    match proto {
                        Protocol::Tcp => "TCP",
                        Protocol::Udp => "UDP",
                        Protocol::Sctp => "SCTP",
                    },
                ))
            }));
        }
        assert!(failures.is_empty(), "{}", failures.join("\n"));
    }

    #[test]
    fn the_model_is_laid_out_on_two_nodes() {
        assert_eq!(house_ip("gryffindor/harry-potter-0"), "10.244.0.20");
        assert_eq!(house_ip("ravenclaw/luna-lovegood-1"), "10.244.1.27");
        let n: usize = cases()
            .iter()
            .map(|c| {
                c.steps
                    .iter()
                    .filter(|s| matches!(s, Step::Expect { .. }))
                    .count()
            })
            .sum();
        assert_eq!(n, 12 + 8 + 12 + 27);
    }
}
