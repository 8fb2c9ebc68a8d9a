//! The API server's validation of the objects Palisade reads, where the
//! typed objects do not already enforce it: names, labels, container,
//! Service and Endpoints port names and protocols, and pod addresses. NetworkPolicy fields are checked
//! by [`crate::model::Policy`] (its issues).

use std::collections::BTreeSet;
use std::net::IpAddr;

use k8s_openapi::api::core::v1::{Endpoints, Namespace, Pod, Service};
use k8s_openapi::api::networking::v1::NetworkPolicy;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;

use crate::model::validate;

/// A problem: (field path, message).
pub type Problem = (String, String);

fn meta(meta: &ObjectMeta, name_rule: fn(&str) -> Result<(), String>, out: &mut Vec<Problem>) {
    if let Some(name) = &meta.name {
        if let Err(m) = name_rule(name) {
            out.push(("metadata.name".into(), m));
        }
    }
    if let Some(ns) = &meta.namespace {
        if let Err(m) = validate::dns1123_label(ns) {
            out.push(("metadata.namespace".into(), m));
        }
    }
    if let Err(p) = validate::labels(meta.labels.iter().flatten(), "metadata.labels") {
        out.push(p);
    }
}

/// Problems of a Namespace.
pub fn namespace(ns: &Namespace) -> Vec<Problem> {
    let mut out = Vec::new();
    meta(&ns.metadata, validate::dns1123_label, &mut out);
    out
}

/// Problems of a NetworkPolicy's metadata (its spec is checked by the
/// model).
pub fn policy(np: &NetworkPolicy) -> Vec<Problem> {
    let mut out = Vec::new();
    meta(&np.metadata, validate::dns1123_subdomain, &mut out);
    out
}

/// Problems of a Pod: metadata, container ports, addresses.
pub fn pod(pod: &Pod) -> Vec<Problem> {
    let mut out = Vec::new();
    meta(&pod.metadata, validate::dns1123_subdomain, &mut out);
    let mut names = BTreeSet::new();
    for (ci, c) in pod
        .spec
        .iter()
        .flat_map(|s| s.containers.iter())
        .enumerate()
    {
        for (pi, p) in c.ports.iter().flatten().enumerate() {
            let field = format!("spec.containers[{ci}].ports[{pi}]");
            if let Some(name) = p.name.as_deref().filter(|n| !n.is_empty()) {
                if let Err(m) = validate::port_name(name) {
                    out.push((format!("{field}.name"), m));
                } else if !names.insert(name.to_string()) {
                    out.push((
                        format!("{field}.name"),
                        format!("duplicate port name {name:?} in the pod"),
                    ));
                }
            }
            protocol(p.protocol.as_deref(), &field, &mut out);
        }
    }
    if let Some(status) = &pod.status {
        let listed: Vec<&str> = status
            .pod_ips
            .iter()
            .flatten()
            .map(|p| p.ip.as_str())
            .collect();
        if let (Some(ip), Some(first)) = (status.pod_ip.as_deref(), listed.first()) {
            if ip.trim() != first.trim() {
                out.push((
                    "status.podIP".into(),
                    format!("{ip:?} must be equal to status.podIPs[0].ip ({first:?})"),
                ));
            }
        }
        if listed.len() > 2 {
            out.push((
                "status.podIPs".into(),
                "may hold at most two addresses (one of each family)".into(),
            ));
        }
        let parsed: Vec<IpAddr> = listed
            .iter()
            .filter_map(|s| s.trim().parse().ok())
            .collect();
        if parsed.len() == 2 && parsed[0].is_ipv4() == parsed[1].is_ipv4() {
            out.push((
                "status.podIPs[1].ip".into(),
                "a dual-stack pod has one address of each family".into(),
            ));
        }
    }
    out
}

/// The protocol of a port, spelled as the API server accepts it.
fn protocol(proto: Option<&str>, field: &str, out: &mut Vec<Problem>) {
    if let Some(proto) = proto {
        if !matches!(proto, "TCP" | "UDP" | "SCTP") {
            out.push((
                format!("{field}.protocol"),
                format!(
                    "unsupported value {proto:?}: supported values: \"SCTP\", \"TCP\", \"UDP\""
                ),
            ));
        }
    }
}

/// The names of a Service's or an Endpoints subset's ports: DNS-1123
/// labels, required when there is more than one port, unique.
fn port_names(names: &[Option<&str>], field: &str, out: &mut Vec<Problem>) {
    let many = names.len() > 1;
    let mut seen = BTreeSet::new();
    for (i, name) in names.iter().copied().enumerate() {
        let at = format!("{field}[{i}].name");
        match name.filter(|n| !n.is_empty()) {
            None if many => out.push((at, "is required when there is more than one port".into())),
            None => {}
            Some(n) => {
                if let Err(m) = validate::dns1123_label(n) {
                    out.push((at, m));
                } else if !seen.insert(n) {
                    out.push((at, format!("duplicate port name {n:?}")));
                }
            }
        }
    }
}

/// Problems of a Service: metadata (a DNS-1035 name), port names and
/// protocols, named target ports.
pub fn service(svc: &Service) -> Vec<Problem> {
    let mut out = Vec::new();
    meta(&svc.metadata, validate::dns1035_label, &mut out);
    let ports: Vec<_> = svc
        .spec
        .iter()
        .flat_map(|s| s.ports.iter().flatten())
        .collect();
    let names: Vec<_> = ports.iter().map(|p| p.name.as_deref()).collect();
    port_names(&names, "spec.ports", &mut out);
    for (i, p) in ports.iter().enumerate() {
        let field = format!("spec.ports[{i}]");
        protocol(p.protocol.as_deref(), &field, &mut out);
        if let Some(IntOrString::String(name)) = &p.target_port {
            if name.parse::<i32>().is_err() {
                if let Err(m) = validate::port_name(name) {
                    out.push((format!("{field}.targetPort"), m));
                }
            }
        }
    }
    out
}

/// Problems of an Endpoints object: metadata, each subset's port names and
/// protocols.
pub fn endpoints(ep: &Endpoints) -> Vec<Problem> {
    let mut out = Vec::new();
    meta(&ep.metadata, validate::dns1123_subdomain, &mut out);
    for (si, s) in ep.subsets.iter().flatten().enumerate() {
        let field = format!("subsets[{si}].ports");
        let ports: Vec<_> = s.ports.iter().flatten().collect();
        let names: Vec<_> = ports.iter().map(|p| p.name.as_deref()).collect();
        port_names(&names, &field, &mut out);
        for (pi, p) in ports.iter().enumerate() {
            protocol(p.protocol.as_deref(), &format!("{field}[{pi}]"), &mut out);
        }
    }
    out
}
