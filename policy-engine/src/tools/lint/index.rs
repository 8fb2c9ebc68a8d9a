//! The snapshot indexed once for lint: pods grouped by what selectors and
//! named ports see, namespaces with their labels, pod addresses sorted, so
//! each policy's checks look at groups of its namespace rather than at
//! every pod of the cluster.

use std::borrow::Cow;
use std::collections::{BTreeMap, BTreeSet};
use std::net::IpAddr;

use ipnet::IpNet;

use crate::model::addr::net_within;
use crate::model::{ContainerPort, IpBlock, Labels, PodRef, Protocol, Selector, Snapshot};

/// Pods of one namespace with the same labels and container ports.
pub struct Group<'a> {
    /// The labels.
    pub labels: &'a Labels,
    /// The ports.
    pub ports: &'a [ContainerPort],
    /// The member pods, in name order.
    pub pods: Vec<&'a PodRef>,
}

impl Group<'_> {
    /// Whether a member declares `name` for `protocol`.
    pub fn declares(&self, name: &str, protocol: Protocol) -> bool {
        self.ports
            .iter()
            .any(|p| p.protocol == protocol && p.name.as_deref() == Some(name))
    }
}

/// The index.
pub struct Index<'a> {
    /// Namespace → its pod groups (hostNetwork pods left out).
    pub by_ns: BTreeMap<&'a str, Vec<Group<'a>>>,
    /// Every namespace, with labels (implicit ones for namespaces only pods
    /// name).
    pub namespaces: BTreeMap<&'a str, Cow<'a, Labels>>,
    /// Pod addresses, sorted.
    ips: Vec<(IpAddr, &'a PodRef)>,
    /// Every declared (port name, protocol).
    pub named_ports: BTreeSet<(&'a str, Protocol)>,
}

impl<'a> Index<'a> {
    /// Indexes `s`.
    pub fn new(s: &'a Snapshot) -> Self {
        let mut keyed: BTreeMap<(&str, &Labels, &[ContainerPort]), Vec<&PodRef>> = BTreeMap::new();
        let mut ips = Vec::new();
        let mut named_ports = BTreeSet::new();
        let mut namespaces: BTreeMap<&str, Cow<Labels>> = s
            .namespaces
            .iter()
            .map(|(n, i)| (n.as_str(), Cow::Borrowed(&i.labels)))
            .collect();
        for (r, p) in &s.pods {
            namespaces
                .entry(r.namespace.as_str())
                .or_insert_with(|| s.namespace_labels(&r.namespace));
            if p.host_network {
                continue;
            }
            keyed
                .entry((r.namespace.as_str(), &p.labels, p.ports.as_slice()))
                .or_default()
                .push(r);
            ips.extend(p.ips.iter().map(|ip| (*ip, r)));
            named_ports.extend(
                p.ports
                    .iter()
                    .filter_map(|c| c.name.as_deref().map(|n| (n, c.protocol))),
            );
        }
        let mut by_ns: BTreeMap<&str, Vec<Group>> = BTreeMap::new();
        for ((ns, labels, ports), pods) in keyed {
            by_ns.entry(ns).or_default().push(Group {
                labels,
                ports,
                pods,
            });
        }
        ips.sort();
        Index {
            by_ns,
            namespaces,
            ips,
            named_ports,
        }
    }

    /// Groups of `namespace` that `selector` matches (`None`: all).
    pub fn selected<'s>(
        &'s self,
        namespace: &str,
        selector: Option<&'s Selector>,
    ) -> impl Iterator<Item = &'s Group<'a>> + 's {
        self.by_ns
            .get(namespace)
            .into_iter()
            .flatten()
            .filter(move |g| selector.is_none_or(|sel| sel.matches(g.labels)))
    }

    /// Groups a `Pods` peer of a policy in `policy_ns` admits.
    pub fn in_scope<'s>(
        &'s self,
        policy_ns: &'s str,
        namespaces: &'s Option<Selector>,
        pods: &'s Option<Selector>,
    ) -> Vec<&'s Group<'a>> {
        let ns: Vec<&str> = match namespaces {
            None => vec![policy_ns],
            Some(sel) => self
                .namespaces
                .iter()
                .filter(|(_, l)| sel.matches(l))
                .map(|(n, _)| *n)
                .collect(),
        };
        ns.into_iter()
            .flat_map(|n| self.selected(n, pods.as_ref()))
            .collect()
    }

    /// Pods with an address in `block` (and in none of its excepts).
    pub fn covered_by(&self, block: &IpBlock) -> Vec<&'a PodRef> {
        let (lo, hi) = match block.cidr {
            IpNet::V4(n) => (IpAddr::V4(n.network()), IpAddr::V4(n.broadcast())),
            IpNet::V6(n) => (IpAddr::V6(n.network()), IpAddr::V6(n.broadcast())),
        };
        let start = self.ips.partition_point(|(ip, _)| *ip < lo);
        let mut out: Vec<&PodRef> = self.ips[start..]
            .iter()
            .take_while(|(ip, _)| *ip <= hi)
            .filter(|(ip, _)| {
                let h = IpNet::from(*ip);
                !block.except.iter().any(|e| net_within(&h, e))
            })
            .map(|(_, r)| *r)
            .collect();
        out.sort();
        out.dedup();
        out
    }
}
