//! Stable numbering of identities and rules across compiles.
//!
//! An [`Allocator`] lives as long as the agent: the same pod group, prefix
//! or rule keeps its number from one compile to the next, so a small
//! cluster change gives a small map diff. Numbers are never reused within
//! one allocator's life (u32 is plenty), and keys that disappear are
//! forgotten after each compile so memory stays bounded.

use std::collections::{BTreeMap, BTreeSet};

use ipnet::IpNet;
use policy_common::identity::FIRST_DYNAMIC;

use crate::model::{Direction, Labels, PodRef, PolicyRef, Protocol};

/// What selectors can see of a pod: pods that agree on all of it share one
/// identity.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct PodGroup {
    /// Namespace (determines the namespace labels).
    pub namespace: String,
    /// Pod labels.
    pub labels: Labels,
    /// Named ports: (name, protocol, port).
    pub named_ports: BTreeSet<(String, Protocol, u16)>,
}

/// One rule of one policy.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct RuleRef {
    /// The policy.
    pub policy: PolicyRef,
    /// Its direction.
    pub dir: Direction,
    /// Index in `spec.ingress` / `spec.egress`.
    pub index: usize,
}

impl RuleRef {
    /// The rule within its policy, as a field path: `spec.ingress[0]`.
    pub fn field(&self) -> String {
        format!("spec.{}[{}]", self.dir.field(), self.index)
    }
}

impl std::fmt::Display for RuleRef {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "NetworkPolicy {} spec.{}[{}]",
            self.policy,
            self.dir.field(),
            self.index
        )
    }
}

/// What the prefixes sharing one CIDR identity have in common: the rule
/// groups whose ipBlocks cover them, and the pod behind a single pod
/// address (named ports resolve against it).
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct CidrClass {
    /// The covering rule groups (rules of one policy and direction with
    /// the same ports), each named by its first rule, sorted.
    pub rules: Vec<std::sync::Arc<RuleRef>>,
    /// The pod whose address the prefix is, for host prefixes of pods.
    pub host: Option<PodRef>,
}

/// What an identity number stands for.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum IdentityDesc {
    /// The node itself.
    Host,
    /// A group of pods.
    Pods {
        /// The group's key.
        group: PodGroup,
        /// Its members.
        members: Vec<PodRef>,
    },
    /// Addresses whose longest matching prefix is one of these (sorted;
    /// prefixes the same rules allow share an identity).
    Cidrs(Vec<IpNet>),
}

impl std::fmt::Display for IdentityDesc {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            IdentityDesc::Host => f.write_str("the node itself"),
            IdentityDesc::Pods { group, members } => {
                let labels: Vec<String> = group
                    .labels
                    .iter()
                    .map(|(k, v)| format!("{k}={v}"))
                    .collect();
                write!(
                    f,
                    "pods in namespace {} with labels {{{}}} ({} pod(s))",
                    group.namespace,
                    labels.join(","),
                    members.len()
                )
            }
            IdentityDesc::Cidrs(nets) => {
                let shown: Vec<String> = nets.iter().take(3).map(ToString::to_string).collect();
                let more = match nets.len().saturating_sub(3) {
                    0 => String::new(),
                    n => format!(" and {n} more prefixes"),
                };
                if nets.iter().all(|n| n.prefix_len() == 0) {
                    write!(f, "addresses outside the cluster ({})", shown.join(", "))
                } else {
                    write!(f, "addresses in {}{more}", shown.join(", "))
                }
            }
        }
    }
}

/// Keeps identity and rule numbers stable across compiles.
#[derive(Clone, Debug)]
pub struct Allocator {
    next_identity: u32,
    next_rule: u32,
    pods: BTreeMap<PodGroup, u32>,
    cidrs: BTreeMap<CidrClass, u32>,
    rules: BTreeMap<RuleRef, u32>,
    used_pods: BTreeSet<u32>,
    used_cidrs: BTreeSet<u32>,
    used_rules: BTreeSet<u32>,
}

impl Default for Allocator {
    fn default() -> Self {
        Self {
            next_identity: FIRST_DYNAMIC,
            next_rule: 1,
            pods: BTreeMap::new(),
            cidrs: BTreeMap::new(),
            rules: BTreeMap::new(),
            used_pods: BTreeSet::new(),
            used_cidrs: BTreeSet::new(),
            used_rules: BTreeSet::new(),
        }
    }
}

impl Allocator {
    /// A fresh allocator.
    pub fn new() -> Self {
        Self::default()
    }

    /// Identity of a pod group.
    pub fn pod_identity(&mut self, group: &PodGroup) -> u32 {
        let id = match self.pods.get(group) {
            Some(id) => *id,
            None => {
                let id = self.next_identity;
                self.next_identity = self.next_identity.saturating_add(1);
                self.pods.insert(group.clone(), id);
                id
            }
        };
        self.used_pods.insert(id);
        id
    }

    /// Identity of a class of CIDR prefixes.
    pub fn cidr_identity(&mut self, class: CidrClass) -> u32 {
        let next = &mut self.next_identity;
        let id = *self.cidrs.entry(class).or_insert_with(|| {
            let id = *next;
            *next = next.saturating_add(1);
            id
        });
        self.used_cidrs.insert(id);
        id
    }

    /// Reference number of a rule (never 0).
    pub fn rule(&mut self, rule: &RuleRef) -> u32 {
        let id = match self.rules.get(rule) {
            Some(id) => *id,
            None => {
                let id = self.next_rule;
                self.next_rule = self.next_rule.saturating_add(1);
                self.rules.insert(rule.clone(), id);
                id
            }
        };
        self.used_rules.insert(id);
        id
    }

    /// Forgets a pod group (its number is not reused).
    pub fn forget_pod_group(&mut self, group: &PodGroup) {
        self.pods.remove(group);
    }

    /// Forgets a rule (its number is not reused).
    pub fn forget_rule(&mut self, rule: &RuleRef) {
        self.rules.remove(rule);
    }

    /// Forgets everything not used since the last call.
    pub fn sweep(&mut self) {
        let (up, uc, ur) = (
            std::mem::take(&mut self.used_pods),
            std::mem::take(&mut self.used_cidrs),
            std::mem::take(&mut self.used_rules),
        );
        self.pods.retain(|_, id| up.contains(id));
        self.cidrs.retain(|_, id| uc.contains(id));
        self.rules.retain(|_, id| ur.contains(id));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn numbers_are_stable_and_not_reused() {
        let mut a = Allocator::new();
        let g = |ns: &str| PodGroup {
            namespace: ns.into(),
            labels: Labels::new(),
            named_ports: BTreeSet::new(),
        };
        let x = a.pod_identity(&g("x"));
        let y = a.pod_identity(&g("y"));
        assert_eq!(x, FIRST_DYNAMIC);
        a.sweep();
        assert_eq!(a.pod_identity(&g("x")), x);
        a.sweep();
        // y was not used in the last round: forgotten, and its number is
        // not handed out again.
        let y2 = a.pod_identity(&g("y"));
        assert_ne!(y2, y);
        assert_ne!(y2, x);
    }
}
