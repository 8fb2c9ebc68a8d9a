//! NetworkPolicies parsed and validated once, when they enter the snapshot.
//!
//! A policy with problems (bad CIDR, `except` outside its CIDR, bad
//! `endPort`, unknown protocol or operator...) is kept: it still isolates the
//! pods it selects in its directions, but contributes no allow rule (fail
//! closed). Its [`Policy::issues`] say what is wrong and where.

use ipnet::IpNet;
use k8s_openapi::api::networking::v1::{
    NetworkPolicy, NetworkPolicyPeer, NetworkPolicyPort, NetworkPolicySpec,
};
use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;

use super::addr::normalize_net;
use super::selector::Selector;
use super::Protocol;

/// What is wrong with one field of a policy.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct PolicyIssue {
    /// Path of the field, e.g. `spec.ingress[0].from[1].ipBlock.cidr`.
    pub field: String,
    /// What is wrong with it.
    pub message: String,
}

impl PolicyIssue {
    /// Builds an issue.
    pub fn new(field: impl Into<String>, message: impl Into<String>) -> Self {
        Self {
            field: field.into(),
            message: message.into(),
        }
    }
}

impl std::fmt::Display for PolicyIssue {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}: {}", self.field, self.message)
    }
}

/// Traffic direction relative to the selected pod.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Direction {
    /// Traffic entering the pod (`spec.ingress`, peers in `from`).
    Ingress,
    /// Traffic leaving the pod (`spec.egress`, peers in `to`).
    Egress,
}

impl Direction {
    /// Both directions.
    pub const BOTH: [Direction; 2] = [Direction::Ingress, Direction::Egress];

    /// The `policy_common::dir` value.
    pub fn dir(self) -> u8 {
        match self {
            Direction::Ingress => policy_common::dir::INGRESS,
            Direction::Egress => policy_common::dir::EGRESS,
        }
    }

    /// From a `policy_common::dir` value (anything but EGRESS is ingress).
    pub fn from_dir(dir: u8) -> Self {
        if dir == policy_common::dir::EGRESS {
            Direction::Egress
        } else {
            Direction::Ingress
        }
    }

    /// The `policy_common::ep_flags` isolation bit.
    pub fn isolation_flag(self) -> u32 {
        match self {
            Direction::Ingress => policy_common::ep_flags::ISOLATED_INGRESS,
            Direction::Egress => policy_common::ep_flags::ISOLATED_EGRESS,
        }
    }

    /// `ingress` / `egress` (the spec field name).
    pub fn field(self) -> &'static str {
        match self {
            Direction::Ingress => "ingress",
            Direction::Egress => "egress",
        }
    }

    /// `from` / `to` (the rule's peer field name).
    pub fn peers_field(self) -> &'static str {
        match self {
            Direction::Ingress => "from",
            Direction::Egress => "to",
        }
    }
}

impl std::fmt::Display for Direction {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.field())
    }
}

/// An `ipBlock` peer, normalised (IPv4-mapped IPv6 written as IPv4, host
/// bits cleared).
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct IpBlock {
    /// `cidr`.
    pub cidr: IpNet,
    /// `except`, each inside `cidr`.
    pub except: Vec<IpNet>,
}

/// One peer of a rule.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Peer {
    /// Pods chosen by selectors. `namespaces: None` = the policy's own
    /// namespace; `pods: None` = every pod of the chosen namespaces.
    Pods {
        /// `namespaceSelector`.
        namespaces: Option<Selector>,
        /// `podSelector`.
        pods: Option<Selector>,
    },
    /// Addresses.
    IpBlock(IpBlock),
}

/// Port of a [`PortSpec`].
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum PortRef {
    /// A port number.
    Number(u16),
    /// A named container port, resolved against the destination pod.
    Name(String),
}

impl std::fmt::Display for PortRef {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            PortRef::Number(n) => write!(f, "{n}"),
            PortRef::Name(n) => write!(f, "{n:?}"),
        }
    }
}

/// One entry of a rule's `ports`.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct PortSpec {
    /// `protocol` (defaulted to TCP).
    pub protocol: Protocol,
    /// `port`; `None` = every port of the protocol.
    pub port: Option<PortRef>,
    /// `endPort` (only with a numeric `port`, ≥ it).
    pub end_port: Option<u16>,
}

impl std::fmt::Display for PortSpec {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match (&self.port, self.end_port) {
            (None, _) => write!(f, "any {} port", self.protocol),
            (Some(p), None) => write!(f, "{p}/{}", self.protocol),
            (Some(p), Some(e)) => write!(f, "{p}-{e}/{}", self.protocol),
        }
    }
}

/// One ingress or egress rule. Empty `peers` = any peer; empty `ports` =
/// any port and protocol.
#[derive(Clone, Debug, Default, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Rule {
    /// `from` / `to`.
    pub peers: Vec<Peer>,
    /// `ports`.
    pub ports: Vec<PortSpec>,
}

/// A NetworkPolicy with API-server defaulting applied, parsed.
#[derive(Clone, Debug, PartialEq)]
pub struct Policy {
    /// The object as stored (with `policyTypes` and port protocols
    /// defaulted).
    pub object: NetworkPolicy,
    /// `spec.podSelector`; `None` if it is invalid, in which case the policy
    /// isolates every pod of its namespace (fail closed).
    pub pod_selector: Option<Selector>,
    /// Ingress rules if the policy isolates for ingress (`Some(vec![])` =
    /// deny all ingress).
    pub ingress: Option<Vec<Rule>>,
    /// Egress rules if the policy isolates for egress.
    pub egress: Option<Vec<Rule>>,
    /// Validation problems; non-empty = the policy allows nothing.
    pub issues: Vec<PolicyIssue>,
    /// Annotated [`MODE_ANNOTATION`]`: audit`: compiled, but not enforced;
    /// what it alone would drop passes and is reported (`would-drop`).
    pub audit: bool,
}

/// The annotation that puts a NetworkPolicy in audit mode (value
/// [`MODE_AUDIT`]); any other value, or none, enforces it.
pub const MODE_ANNOTATION: &str = "policy.palisade.dev/mode";
/// The value of [`MODE_ANNOTATION`] for audit mode.
pub const MODE_AUDIT: &str = "audit";

impl Policy {
    /// The rules of one direction, if the policy applies to it.
    pub fn rules(&self, dir: Direction) -> Option<&[Rule]> {
        match dir {
            Direction::Ingress => self.ingress.as_deref(),
            Direction::Egress => self.egress.as_deref(),
        }
    }

    /// Whether this policy is valid (contributes its rules).
    pub fn is_valid(&self) -> bool {
        self.issues.is_empty()
    }

    /// The snapshot entry of a NetworkPolicy object (namespace defaulted to
    /// `default`). Of the metadata only the name, namespace and creation
    /// time (which orders policies for the CIDR map's room) are kept, and
    /// of the annotations only [`MODE_ANNOTATION`], so two versions that
    /// differ only in bookkeeping (resourceVersion, managedFields, other
    /// annotations) compare equal.
    pub fn from_network_policy(
        np: &NetworkPolicy,
    ) -> Result<(super::PolicyRef, Policy), super::ModelError> {
        let name = np
            .metadata
            .name
            .clone()
            .ok_or(super::ModelError::MissingName {
                kind: "NetworkPolicy",
                field: "metadata.name",
            })?;
        let namespace = np
            .metadata
            .namespace
            .clone()
            .unwrap_or_else(|| "default".into());
        let slim = NetworkPolicy {
            metadata: k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta {
                name: Some(name.clone()),
                namespace: Some(namespace.clone()),
                creation_timestamp: np.metadata.creation_timestamp.clone(),
                annotations: np
                    .metadata
                    .annotations
                    .as_ref()
                    .and_then(|a| a.get(MODE_ANNOTATION))
                    .map(|v| [(MODE_ANNOTATION.to_string(), v.clone())].into()),
                ..Default::default()
            },
            spec: np.spec.clone(),
        };
        Ok((
            super::PolicyRef::new(namespace, name),
            Policy::from_object(&slim),
        ))
    }

    /// Parses and validates `np` (defaulting applied first).
    pub fn from_object(np: &NetworkPolicy) -> Self {
        let object = default_policy(np);
        let mut issues = Vec::new();
        let spec = object.spec.clone().unwrap_or_default();
        let pod_selector = match Selector::parse(
            &spec.pod_selector.clone().unwrap_or_default(),
            "spec.podSelector",
        ) {
            Ok(s) => Some(s),
            Err(e) => {
                issues.push(e);
                None
            }
        };
        let types = spec.policy_types.clone().unwrap_or_default();
        for (i, t) in types.iter().enumerate() {
            if t != "Ingress" && t != "Egress" {
                issues.push(PolicyIssue::new(
                    format!("spec.policyTypes[{i}]"),
                    format!("unknown policy type {t:?} (expected Ingress or Egress)"),
                ));
            }
        }
        let ingress = types.iter().any(|t| t == "Ingress").then(|| {
            let raw = spec.ingress.clone().unwrap_or_default();
            raw.iter()
                .enumerate()
                .map(|(i, r)| {
                    parse_rule(
                        r.from.as_deref().unwrap_or_default(),
                        r.ports.as_deref().unwrap_or_default(),
                        &format!("spec.ingress[{i}]"),
                        "from",
                        &mut issues,
                    )
                })
                .collect()
        });
        let egress = types.iter().any(|t| t == "Egress").then(|| {
            let raw = spec.egress.clone().unwrap_or_default();
            raw.iter()
                .enumerate()
                .map(|(i, r)| {
                    parse_rule(
                        r.to.as_deref().unwrap_or_default(),
                        r.ports.as_deref().unwrap_or_default(),
                        &format!("spec.egress[{i}]"),
                        "to",
                        &mut issues,
                    )
                })
                .collect()
        });
        let audit = object
            .metadata
            .annotations
            .as_ref()
            .and_then(|a| a.get(MODE_ANNOTATION))
            .is_some_and(|v| v == MODE_AUDIT);
        Policy {
            object,
            pod_selector,
            ingress,
            egress,
            issues,
            audit,
        }
    }
}

/// API-server defaulting: `policyTypes` (rule 2) and port protocol TCP.
pub fn default_policy(np: &NetworkPolicy) -> NetworkPolicy {
    let mut np = np.clone();
    let spec = np.spec.get_or_insert_with(NetworkPolicySpec::default);
    if spec.policy_types.as_ref().is_none_or(|t| t.is_empty()) {
        let mut types = vec!["Ingress".to_string()];
        // As the API server does: `egress: []` is no egress section.
        if spec.egress.as_ref().is_some_and(|e| !e.is_empty()) {
            types.push("Egress".to_string());
        }
        spec.policy_types = Some(types);
    }
    let ports = spec
        .ingress
        .iter_mut()
        .flatten()
        .flat_map(|r| r.ports.iter_mut().flatten())
        .chain(
            spec.egress
                .iter_mut()
                .flatten()
                .flat_map(|r| r.ports.iter_mut().flatten()),
        );
    for p in ports {
        p.protocol.get_or_insert_with(|| "TCP".to_string());
    }
    np
}

fn parse_rule(
    peers: &[NetworkPolicyPeer],
    ports: &[NetworkPolicyPort],
    field: &str,
    peers_field: &str,
    issues: &mut Vec<PolicyIssue>,
) -> Rule {
    let mut rule = Rule::default();
    for (i, p) in peers.iter().enumerate() {
        match parse_peer(p, &format!("{field}.{peers_field}[{i}]")) {
            Ok(peer) => rule.peers.push(peer),
            Err(e) => issues.push(e),
        }
    }
    for (i, p) in ports.iter().enumerate() {
        match parse_port(p, &format!("{field}.ports[{i}]")) {
            Ok(spec) => rule.ports.push(spec),
            Err(e) => issues.push(e),
        }
    }
    rule
}

fn parse_peer(p: &NetworkPolicyPeer, field: &str) -> Result<Peer, PolicyIssue> {
    if let Some(b) = &p.ip_block {
        if p.pod_selector.is_some() || p.namespace_selector.is_some() {
            return Err(PolicyIssue::new(
                field,
                "ipBlock cannot be combined with podSelector or namespaceSelector in one peer",
            ));
        }
        let cidr_field = format!("{field}.ipBlock.cidr");
        let cidr = parse_cidr(&b.cidr, &cidr_field)?;
        let mut except = Vec::new();
        let written = parse_net(&b.cidr, &cidr_field)?;
        for (i, e) in b.except.iter().flatten().enumerate() {
            let f = format!("{field}.ipBlock.except[{i}]");
            // Containment as the API server checks it: on the prefixes as
            // written (an IPv4-mapped except inside `::/0` is inside it),
            // and strictly (an except equal to the cidr is rejected).
            let net = parse_net(e, &f)?;
            if !strictly_inside(&net, &written) {
                return Err(PolicyIssue::new(
                    f,
                    format!("except {e} must be a strict subset of cidr {}", b.cidr),
                ));
            }
            let net = normalize_net(&net);
            // What is left after normalising is what the datapath sees: an
            // IPv4-mapped except of an IPv6 cidr excepts addresses the cidr
            // never matches (IPv4 peers are not in IPv6 blocks), so it is
            // dropped rather than kept as a prefix of the other family.
            if same_family(&net, &cidr) {
                except.push(net);
            }
        }
        return Ok(Peer::IpBlock(IpBlock { cidr, except }));
    }
    if p.pod_selector.is_none() && p.namespace_selector.is_none() {
        return Err(PolicyIssue::new(
            field,
            "peer must set podSelector, namespaceSelector or ipBlock",
        ));
    }
    let namespaces = p
        .namespace_selector
        .as_ref()
        .map(|s| Selector::parse(s, &format!("{field}.namespaceSelector")))
        .transpose()?;
    let pods = p
        .pod_selector
        .as_ref()
        .map(|s| Selector::parse(s, &format!("{field}.podSelector")))
        .transpose()?;
    Ok(Peer::Pods { namespaces, pods })
}

fn parse_net(s: &str, field: &str) -> Result<IpNet, PolicyIssue> {
    s.trim()
        .parse::<IpNet>()
        .map_err(|e| PolicyIssue::new(field, format!("invalid CIDR {s:?}: {e}")))
}

fn parse_cidr(s: &str, field: &str) -> Result<IpNet, PolicyIssue> {
    parse_net(s, field).map(|n| normalize_net(&n))
}

fn same_family(a: &IpNet, b: &IpNet) -> bool {
    matches!(
        (a, b),
        (IpNet::V4(_), IpNet::V4(_)) | (IpNet::V6(_), IpNet::V6(_))
    )
}

/// `inner` lies inside `outer` and is a longer prefix.
fn strictly_inside(inner: &IpNet, outer: &IpNet) -> bool {
    same_family(inner, outer)
        && outer.contains(&inner.network())
        && inner.prefix_len() > outer.prefix_len()
}

fn parse_port(p: &NetworkPolicyPort, field: &str) -> Result<PortSpec, PolicyIssue> {
    let protocol = match p.protocol.as_deref() {
        None => Protocol::Tcp,
        Some(s) => s
            .parse::<Protocol>()
            .map_err(|e| PolicyIssue::new(format!("{field}.protocol"), e.to_string()))?,
    };
    let port = match &p.port {
        None => None,
        Some(IntOrString::Int(n)) => {
            Some(PortRef::Number(valid_port(*n, &format!("{field}.port"))?))
        }
        // As the API server: a string is a port name (IANA_SVC_NAME), so
        // `"80"` is rejected rather than read as a number.
        Some(IntOrString::String(s)) => {
            super::validate::port_name(s)
                .map_err(|m| PolicyIssue::new(format!("{field}.port"), m))?;
            Some(PortRef::Name(s.clone()))
        }
    };
    let end_port = match p.end_port {
        None => None,
        Some(e) => {
            let f = format!("{field}.endPort");
            let e = valid_port(e, &f)?;
            match &port {
                Some(PortRef::Number(start)) if e >= *start => Some(e),
                Some(PortRef::Number(start)) => {
                    return Err(PolicyIssue::new(
                        f,
                        format!("endPort {e} is less than port {start}"),
                    ))
                }
                Some(PortRef::Name(n)) => {
                    return Err(PolicyIssue::new(
                        f,
                        format!("endPort cannot be used with the named port {n:?}"),
                    ))
                }
                None => return Err(PolicyIssue::new(f, "endPort needs a numeric port")),
            }
        }
    };
    Ok(PortSpec {
        protocol,
        port,
        end_port,
    })
}

fn valid_port(n: i32, field: &str) -> Result<u16, PolicyIssue> {
    u16::try_from(n)
        .ok()
        .filter(|p| *p != 0)
        .ok_or_else(|| PolicyIssue::new(field, format!("port {n} is outside 1-65535")))
}
