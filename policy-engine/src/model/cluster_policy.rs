//! ClusterNetworkPolicy (`policy.networking.k8s.io/v1alpha2`): the cluster
//! administrator's policies around NetworkPolicy, in two tiers (Admin
//! before NetworkPolicy, Baseline after it).
//!
//! [`ClusterNetworkPolicy`] is the object as it is written (our own serde
//! types of the published schema); [`ClusterPolicy`] is it parsed and
//! validated once, when it enters the snapshot. The API server of
//! Kubernetes 1.20 ignores the schema's CEL rules (`x-kubernetes-validations`:
//! range start below end, `isCIDR`, no named port towards networks or
//! nodes), and files read by the tools never met an API server at all, so
//! every rule of the schema is checked here. An invalid policy is kept
//! and fails closed: in each direction it has rules for, it denies its
//! subject's traffic at its own tier and priority ([`ClusterPolicy::issues`]
//! say what is wrong and where).

use std::collections::BTreeSet;

use ipnet::IpNet;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{LabelSelector, ObjectMeta};
use serde::{Deserialize, Serialize};

use super::addr::normalize_net;
use super::policy::{Direction, PolicyIssue};
use super::selector::Selector;
use super::Protocol;

/// Most rules per direction, peers per rule, protocols per rule, networks
/// and domain names per peer (the schema's `maxItems`).
pub const MAX_ITEMS: usize = 25;
/// Highest priority value (lowest precedence).
pub const MAX_PRIORITY: i32 = 1000;

/// A ClusterNetworkPolicy as written.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ClusterNetworkPolicy {
    /// `policy.networking.k8s.io/v1alpha2`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub api_version: Option<String>,
    /// `ClusterNetworkPolicy`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub kind: Option<String>,
    /// Metadata (cluster-scoped: no namespace).
    #[serde(default)]
    pub metadata: ObjectMeta,
    /// The policy.
    pub spec: CnpSpec,
    /// Status, written by implementations; not read.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub status: Option<serde_json::Value>,
}

/// `spec`.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct CnpSpec {
    /// `Admin` or `Baseline`.
    pub tier: String,
    /// 0 to 1000, lower first.
    pub priority: i32,
    /// The pods the policy applies to.
    pub subject: CnpSubjectSpec,
    /// Ingress rules, in precedence order.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ingress: Option<Vec<CnpRuleSpec>>,
    /// Egress rules, in precedence order.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub egress: Option<Vec<CnpRuleSpec>>,
}

/// `spec.subject`: exactly one field.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct CnpSubjectSpec {
    /// Every pod of the namespaces selected.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub namespaces: Option<LabelSelector>,
    /// Pods selected in the namespaces selected.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pods: Option<NamespacedPodSpec>,
}

/// `pods`: namespace AND pod selector.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct NamespacedPodSpec {
    /// Namespaces (empty: all).
    #[serde(default)]
    pub namespace_selector: LabelSelector,
    /// Pods in them (empty: all).
    pub pod_selector: LabelSelector,
}

/// One ingress or egress rule (`from` for ingress, `to` for egress).
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct CnpRuleSpec {
    /// Name (at most 100 characters), shown by the tools.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
    /// `Accept`, `Deny` or `Pass`.
    pub action: String,
    /// Ingress peers.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub from: Option<Vec<CnpPeerSpec>>,
    /// Egress peers.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub to: Option<Vec<CnpPeerSpec>>,
    /// Protocols and ports (omitted: all).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub protocols: Option<Vec<CnpProtocolSpec>>,
}

/// One peer: exactly one field (ingress peers have only `namespaces` and
/// `pods`).
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct CnpPeerSpec {
    /// Every pod of the namespaces selected.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub namespaces: Option<LabelSelector>,
    /// Pods selected in the namespaces selected.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pods: Option<NamespacedPodSpec>,
    /// Nodes by label: their addresses (egress only, experimental).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub nodes: Option<LabelSelector>,
    /// CIDRs (egress only).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub networks: Option<Vec<String>>,
    /// Domain names (egress only, experimental; not supported).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub domain_names: Option<Vec<String>>,
}

/// One protocol entry: exactly one field.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct CnpProtocolSpec {
    /// TCP.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tcp: Option<CnpL4Spec>,
    /// UDP.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub udp: Option<CnpL4Spec>,
    /// SCTP.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sctp: Option<CnpL4Spec>,
    /// A container port name of the destination pod (any protocol).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub destination_named_port: Option<String>,
}

/// `tcp` / `udp` / `sctp`: `destinationPort` is required.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct CnpL4Spec {
    /// The port or range.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub destination_port: Option<CnpPortSpec>,
}

/// A port: exactly one of `number` and `range`.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct CnpPortSpec {
    /// One port, 1 to 65535.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub number: Option<i32>,
    /// A range, start below end.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub range: Option<CnpRangeSpec>,
}

/// `range`.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct CnpRangeSpec {
    /// First port.
    pub start: i32,
    /// Last port (included).
    pub end: i32,
}

/// The tier a ClusterNetworkPolicy sits in.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Tier {
    /// Before NetworkPolicy.
    Admin,
    /// After NetworkPolicy.
    Baseline,
}

impl Tier {
    /// The name as written.
    pub fn as_str(self) -> &'static str {
        match self {
            Tier::Admin => "Admin",
            Tier::Baseline => "Baseline",
        }
    }
}

/// What a rule does with the traffic it matches.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Action {
    /// Allowed; nothing below is asked (the other end still judges).
    Accept,
    /// Dropped; nothing below is asked.
    Deny,
    /// The rest of this tier is skipped: the next tier decides.
    Pass,
}

impl Action {
    /// The name as written.
    pub fn as_str(self) -> &'static str {
        match self {
            Action::Accept => "Accept",
            Action::Deny => "Deny",
            Action::Pass => "Pass",
        }
    }
}

/// Pods chosen by namespace labels and pod labels.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct PodsSelector {
    /// Namespace selector (empty: all).
    pub namespaces: Selector,
    /// Pod selector (empty: all); `None` for `namespaces` subjects/peers.
    pub pods: Option<Selector>,
}

impl PodsSelector {
    /// Whether a pod with `pod_labels` in a namespace with `ns_labels` is
    /// chosen.
    pub fn matches(&self, ns_labels: &super::Labels, pod_labels: &super::Labels) -> bool {
        self.namespaces.matches(ns_labels)
            && self.pods.as_ref().is_none_or(|p| p.matches(pod_labels))
    }
}

/// One peer, parsed.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub enum CnpPeer {
    /// Pods (of `namespaces` or `pods`).
    Pods(PodsSelector),
    /// Node addresses by node labels.
    Nodes(Selector),
    /// CIDRs (normalized).
    Networks(Vec<IpNet>),
    /// Domain names: not supported, matches nothing.
    DomainNames(Vec<String>),
}

/// Ports of one protocol entry, parsed.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub enum CnpPort {
    /// `start..=end` of one protocol.
    Range {
        /// Protocol.
        protocol: Protocol,
        /// First port.
        start: u16,
        /// Last port.
        end: u16,
    },
    /// A container port name of the destination pod, any protocol.
    Named(String),
}

/// One rule, parsed.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct CnpRule {
    /// `name` (empty when omitted).
    pub name: String,
    /// The action.
    pub action: Action,
    /// Peers (any of them).
    pub peers: Vec<CnpPeer>,
    /// Ports; empty means every protocol and port.
    pub ports: Vec<CnpPort>,
}

/// A ClusterNetworkPolicy, parsed and validated.
#[derive(Clone, Debug, PartialEq)]
pub struct ClusterPolicy {
    /// The object as read.
    pub object: ClusterNetworkPolicy,
    /// Tier (Admin when the field is invalid: an invalid policy fails
    /// closed at the highest tier).
    pub tier: Tier,
    /// Priority (clamped into 0..=1000 when invalid).
    pub priority: u16,
    /// Subject; `None` when it could not be read (then the policy selects
    /// nothing).
    pub subject: Option<PodsSelector>,
    /// Ingress rules.
    pub ingress: Vec<CnpRule>,
    /// Egress rules.
    pub egress: Vec<CnpRule>,
    /// What is wrong; when not empty the rules are ignored and the policy
    /// denies its subject's traffic in [`ClusterPolicy::fail_dirs`].
    pub issues: Vec<PolicyIssue>,
}

impl ClusterPolicy {
    /// The policy's name.
    pub fn name(&self) -> &str {
        self.object.metadata.name.as_deref().unwrap_or_default()
    }

    /// Whether it has no issues.
    pub fn is_valid(&self) -> bool {
        self.issues.is_empty()
    }

    /// Rules of one direction.
    pub fn rules(&self, dir: Direction) -> &[CnpRule] {
        match dir {
            Direction::Ingress => &self.ingress,
            Direction::Egress => &self.egress,
        }
    }

    /// Directions an invalid policy denies (those it lists rules for).
    pub fn fail_dirs(&self) -> Vec<Direction> {
        let s = &self.object.spec;
        let mut dirs = Vec::new();
        if s.ingress.as_ref().is_some_and(|r| !r.is_empty()) {
            dirs.push(Direction::Ingress);
        }
        if s.egress.as_ref().is_some_and(|r| !r.is_empty()) {
            dirs.push(Direction::Egress);
        }
        dirs
    }

    /// Whether some egress peer names domains (unsupported: never matches).
    pub fn uses_domain_names(&self) -> bool {
        self.object
            .spec
            .egress
            .iter()
            .flatten()
            .flat_map(|r| r.to.iter().flatten())
            .any(|p| p.domain_names.is_some())
    }

    /// Parses and validates `object`.
    pub fn from_object(object: &ClusterNetworkPolicy) -> Self {
        let mut issues = Vec::new();
        let spec = &object.spec;
        match object.metadata.name.as_deref() {
            None | Some("") => issues.push(PolicyIssue::new("metadata.name", "is required")),
            Some(n) => {
                if let Err(m) = super::validate::dns1123_subdomain(n) {
                    issues.push(PolicyIssue::new("metadata.name", m));
                }
            }
        }
        let tier = match spec.tier.as_str() {
            "Admin" => Tier::Admin,
            "Baseline" => Tier::Baseline,
            other => {
                issues.push(PolicyIssue::new(
                    "spec.tier",
                    format!("{other:?}: must be \"Admin\" or \"Baseline\""),
                ));
                Tier::Admin
            }
        };
        if !(0..=MAX_PRIORITY).contains(&spec.priority) {
            issues.push(PolicyIssue::new(
                "spec.priority",
                format!("{}: must be between 0 and {MAX_PRIORITY}", spec.priority),
            ));
        }
        let priority = spec.priority.clamp(0, MAX_PRIORITY) as u16;
        let subject = parse_subject(&spec.subject, &mut issues);
        let mut rules = |dir: Direction, list: &Option<Vec<CnpRuleSpec>>| -> Vec<CnpRule> {
            let list = list.as_deref().unwrap_or_default();
            let field = format!("spec.{}", dir.field());
            if list.len() > MAX_ITEMS {
                issues.push(PolicyIssue::new(
                    &field,
                    format!("{} rules: at most {MAX_ITEMS}", list.len()),
                ));
            }
            list.iter()
                .enumerate()
                .filter_map(|(i, r)| parse_rule(dir, r, &format!("{field}[{i}]"), &mut issues))
                .collect()
        };
        let ingress = rules(Direction::Ingress, &spec.ingress);
        let egress = rules(Direction::Egress, &spec.egress);
        ClusterPolicy {
            object: object.clone(),
            tier,
            priority,
            subject,
            ingress,
            egress,
            issues,
        }
    }
}

fn exactly_one(count: usize, field: &str, names: &str, issues: &mut Vec<PolicyIssue>) -> bool {
    if count == 1 {
        true
    } else {
        issues.push(PolicyIssue::new(
            field,
            format!("exactly one of {names} must be set ({count} are)"),
        ));
        false
    }
}

fn selector(sel: &LabelSelector, field: &str, issues: &mut Vec<PolicyIssue>) -> Option<Selector> {
    match Selector::parse(sel, field) {
        Ok(s) => Some(s),
        Err(e) => {
            issues.push(e);
            None
        }
    }
}

fn namespaced(
    p: &NamespacedPodSpec,
    field: &str,
    issues: &mut Vec<PolicyIssue>,
) -> Option<PodsSelector> {
    let ns = selector(
        &p.namespace_selector,
        &format!("{field}.namespaceSelector"),
        issues,
    );
    let pods = selector(&p.pod_selector, &format!("{field}.podSelector"), issues);
    Some(PodsSelector {
        namespaces: ns?,
        pods: Some(pods?),
    })
}

fn parse_subject(s: &CnpSubjectSpec, issues: &mut Vec<PolicyIssue>) -> Option<PodsSelector> {
    let count = usize::from(s.namespaces.is_some()) + usize::from(s.pods.is_some());
    if !exactly_one(count, "spec.subject", "namespaces, pods", issues) {
        return None;
    }
    if let Some(ns) = &s.namespaces {
        return Some(PodsSelector {
            namespaces: selector(ns, "spec.subject.namespaces", issues)?,
            pods: None,
        });
    }
    namespaced(s.pods.as_ref()?, "spec.subject.pods", issues)
}

fn parse_rule(
    dir: Direction,
    r: &CnpRuleSpec,
    field: &str,
    issues: &mut Vec<PolicyIssue>,
) -> Option<CnpRule> {
    let before = issues.len();
    let name = r.name.clone().unwrap_or_default();
    if name.chars().count() > 100 {
        issues.push(PolicyIssue::new(
            format!("{field}.name"),
            "at most 100 characters",
        ));
    }
    let action = match r.action.as_str() {
        "Accept" => Some(Action::Accept),
        "Deny" => Some(Action::Deny),
        "Pass" => Some(Action::Pass),
        other => {
            issues.push(PolicyIssue::new(
                format!("{field}.action"),
                format!("{other:?}: must be \"Accept\", \"Deny\" or \"Pass\""),
            ));
            None
        }
    };
    let (key, own, other) = match dir {
        Direction::Ingress => ("from", &r.from, &r.to),
        Direction::Egress => ("to", &r.to, &r.from),
    };
    if other.is_some() {
        let wrong = if key == "from" { "to" } else { "from" };
        issues.push(PolicyIssue::new(
            format!("{field}.{wrong}"),
            format!("not a field of {} rules", dir.field()),
        ));
    }
    let peers_field = format!("{field}.{key}");
    let peers_spec = own.as_deref().unwrap_or_default();
    if peers_spec.is_empty() || peers_spec.len() > MAX_ITEMS {
        issues.push(PolicyIssue::new(
            &peers_field,
            format!("{} peers: must have 1 to {MAX_ITEMS}", peers_spec.len()),
        ));
    }
    let mut peers = Vec::new();
    for (i, p) in peers_spec.iter().enumerate() {
        if let Some(peer) = parse_peer(dir, p, &format!("{peers_field}[{i}]"), issues) {
            peers.push(peer);
        }
    }
    let mut ports = Vec::new();
    if let Some(protocols) = &r.protocols {
        let pf = format!("{field}.protocols");
        if protocols.is_empty() || protocols.len() > MAX_ITEMS {
            issues.push(PolicyIssue::new(
                &pf,
                format!("{} entries: must have 1 to {MAX_ITEMS}", protocols.len()),
            ));
        }
        for (i, p) in protocols.iter().enumerate() {
            if let Some(port) = parse_protocol(p, &format!("{pf}[{i}]"), issues) {
                ports.push(port);
            }
        }
    }
    // The schema's CEL rule (ignored by 1.20 API servers): named ports
    // exist on pods only.
    let named = ports.iter().any(|p| matches!(p, CnpPort::Named(_)));
    let non_pod = peers.iter().any(|p| !matches!(p, CnpPeer::Pods(_)));
    if named && non_pod {
        issues.push(PolicyIssue::new(
            field,
            "networks/nodes/domainNames peers cannot be set with destinationNamedPort (only pods have named ports)",
        ));
    }
    if issues.len() > before {
        return None;
    }
    Some(CnpRule {
        name,
        action: action?,
        peers,
        ports,
    })
}

fn parse_peer(
    dir: Direction,
    p: &CnpPeerSpec,
    field: &str,
    issues: &mut Vec<PolicyIssue>,
) -> Option<CnpPeer> {
    let count = [
        p.namespaces.is_some(),
        p.pods.is_some(),
        p.nodes.is_some(),
        p.networks.is_some(),
        p.domain_names.is_some(),
    ]
    .iter()
    .filter(|b| **b)
    .count();
    let names = match dir {
        Direction::Ingress => "namespaces, pods",
        Direction::Egress => "namespaces, pods, nodes, networks, domainNames",
    };
    if !exactly_one(count, field, names, issues) {
        return None;
    }
    if dir == Direction::Ingress {
        for (set, name) in [
            (p.nodes.is_some(), "nodes"),
            (p.networks.is_some(), "networks"),
            (p.domain_names.is_some(), "domainNames"),
        ] {
            if set {
                issues.push(PolicyIssue::new(
                    format!("{field}.{name}"),
                    "not a field of ingress peers",
                ));
                return None;
            }
        }
    }
    if let Some(ns) = &p.namespaces {
        return Some(CnpPeer::Pods(PodsSelector {
            namespaces: selector(ns, &format!("{field}.namespaces"), issues)?,
            pods: None,
        }));
    }
    if let Some(pods) = &p.pods {
        return namespaced(pods, &format!("{field}.pods"), issues).map(CnpPeer::Pods);
    }
    if let Some(nodes) = &p.nodes {
        return selector(nodes, &format!("{field}.nodes"), issues).map(CnpPeer::Nodes);
    }
    if let Some(nets) = &p.networks {
        let nf = format!("{field}.networks");
        items(nets, &nf, issues);
        let mut out = Vec::new();
        for (i, n) in nets.iter().enumerate() {
            let f = format!("{nf}[{i}]");
            if n.len() > 43 {
                issues.push(PolicyIssue::new(&f, "at most 43 characters"));
            }
            match n.parse::<IpNet>() {
                Ok(net) => out.push(normalize_net(&net)),
                Err(_) => issues.push(PolicyIssue::new(
                    &f,
                    format!("{n:?}: invalid CIDR format provided"),
                )),
            }
        }
        return Some(CnpPeer::Networks(out));
    }
    if let Some(names) = &p.domain_names {
        let df = format!("{field}.domainNames");
        items(names, &df, issues);
        for (i, n) in names.iter().enumerate() {
            if !domain_name_ok(n) {
                issues.push(PolicyIssue::new(
                    format!("{df}[{i}]"),
                    format!("{n:?}: not a domain name"),
                ));
            }
        }
        return Some(CnpPeer::DomainNames(names.clone()));
    }
    None
}

/// A set-typed list: 1 to 25 items, no duplicates.
fn items(list: &[String], field: &str, issues: &mut Vec<PolicyIssue>) {
    if list.is_empty() || list.len() > MAX_ITEMS {
        issues.push(PolicyIssue::new(
            field,
            format!("{} items: must have 1 to {MAX_ITEMS}", list.len()),
        ));
    }
    let mut seen = BTreeSet::new();
    for (i, n) in list.iter().enumerate() {
        if !seen.insert(n) {
            issues.push(PolicyIssue::new(
                format!("{field}[{i}]"),
                format!("duplicate value {n:?}"),
            ));
        }
    }
}

/// The schema's pattern: an optional `*.` then dot-separated labels of
/// letters, digits, `-` and `_` (not at either end), optional final dot.
fn domain_name_ok(n: &str) -> bool {
    let n = n.strip_prefix("*.").unwrap_or(n);
    let n = n.strip_suffix('.').unwrap_or(n);
    let labels: Vec<&str> = n.split('.').collect();
    labels.len() >= 2
        && labels.iter().all(|l| {
            let b = l.as_bytes();
            match (b.first(), b.last()) {
                (Some(f), Some(e)) => {
                    f.is_ascii_alphanumeric()
                        && e.is_ascii_alphanumeric()
                        && b.iter()
                            .all(|c| c.is_ascii_alphanumeric() || *c == b'-' || *c == b'_')
                }
                _ => false,
            }
        })
}

fn parse_protocol(
    p: &CnpProtocolSpec,
    field: &str,
    issues: &mut Vec<PolicyIssue>,
) -> Option<CnpPort> {
    let count = [
        p.tcp.is_some(),
        p.udp.is_some(),
        p.sctp.is_some(),
        p.destination_named_port.is_some(),
    ]
    .iter()
    .filter(|b| **b)
    .count();
    if !exactly_one(count, field, "tcp, udp, sctp, destinationNamedPort", issues) {
        return None;
    }
    if let Some(name) = &p.destination_named_port {
        if name.is_empty() {
            issues.push(PolicyIssue::new(
                format!("{field}.destinationNamedPort"),
                "must not be empty",
            ));
            return None;
        }
        return Some(CnpPort::Named(name.clone()));
    }
    let (protocol, l4, key) = match (&p.tcp, &p.udp, &p.sctp) {
        (Some(l4), _, _) => (Protocol::Tcp, l4, "tcp"),
        (_, Some(l4), _) => (Protocol::Udp, l4, "udp"),
        (_, _, Some(l4)) => (Protocol::Sctp, l4, "sctp"),
        _ => return None,
    };
    let lf = format!("{field}.{key}");
    let Some(port) = &l4.destination_port else {
        issues.push(PolicyIssue::new(
            format!("{lf}.destinationPort"),
            "is required",
        ));
        return None;
    };
    let pf = format!("{lf}.destinationPort");
    let count = usize::from(port.number.is_some()) + usize::from(port.range.is_some());
    if !exactly_one(count, &pf, "number, range", issues) {
        return None;
    }
    let valid = |v: i32, f: String, issues: &mut Vec<PolicyIssue>| -> Option<u16> {
        match u16::try_from(v) {
            Ok(p) if p >= 1 => Some(p),
            _ => {
                issues.push(PolicyIssue::new(
                    f,
                    format!("{v}: must be between 1 and 65535"),
                ));
                None
            }
        }
    };
    if let Some(n) = port.number {
        let p = valid(n, format!("{pf}.number"), issues)?;
        return Some(CnpPort::Range {
            protocol,
            start: p,
            end: p,
        });
    }
    let r = port.range.as_ref()?;
    let start = valid(r.start, format!("{pf}.range.start"), issues);
    let end = valid(r.end, format!("{pf}.range.end"), issues);
    let (start, end) = (start?, end?);
    if start >= end {
        issues.push(PolicyIssue::new(
            format!("{pf}.range"),
            format!("start {start} must be less than end {end}"),
        ));
        return None;
    }
    Some(CnpPort::Range {
        protocol,
        start,
        end,
    })
}

/// A node: its labels and addresses (`status.addresses`), for `nodes`
/// peers.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct NodeInfo {
    /// Labels.
    pub labels: super::Labels,
    /// Addresses (InternalIP, ExternalIP).
    pub addrs: Vec<std::net::IpAddr>,
}

#[cfg(test)]
mod tests;
