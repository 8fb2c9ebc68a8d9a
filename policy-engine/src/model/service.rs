//! Services and their Endpoints: which backend pods (address and port) a
//! ClusterIP or NodePort connection can reach after kube-proxy's DNAT.
//!
//! NetworkPolicy never names a Service: a connection through one is judged
//! on the backend pod kube-proxy picked (rule 13), so the engine needs the
//! translation, not the Service as a peer. A ClusterIP is never itself an
//! ipBlock match: ipBlocks are applied after translation.
//!
//! Backends come from the Service's core `v1` Endpoints object when the
//! snapshot has one (the API server's endpoints controller keeps it; it is
//! the truth kube-proxy programs). Without one (manifest files), they are
//! computed the way that controller does: the pods of the Service's
//! namespace its selector matches, with `targetPort` resolved per pod
//! (a named `targetPort` against the pod's container ports).

use std::collections::BTreeMap;
use std::net::IpAddr;

use k8s_openapi::api::core::v1::{Endpoints, ObjectReference, Service};
use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;

use super::addr::normalize_ip;
use super::{ModelError, PodRef, Protocol, Snapshot};

/// A Service's `namespace/name`.
pub type ServiceRef = PodRef;

/// Where a Service port sends traffic on the backend.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum TargetPort {
    /// A port number.
    Number(u16),
    /// A container port name, resolved per backend pod.
    Name(String),
}

/// One entry of `spec.ports`.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct ServicePort {
    /// Port name (required by the API server when there are several).
    pub name: Option<String>,
    /// Protocol (default TCP).
    pub protocol: Protocol,
    /// The port on the ClusterIP.
    pub port: u16,
    /// The port on the backend (default: `port`).
    pub target: TargetPort,
    /// The node port, for `NodePort` and `LoadBalancer` Services.
    pub node_port: Option<u16>,
}

/// What the engine knows about a Service.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct ServiceInfo {
    /// ClusterIPs (one per family; empty for headless and ExternalName
    /// Services, which kube-proxy does not translate).
    pub cluster_ips: Vec<IpAddr>,
    /// `spec.selector` (empty: Endpoints are managed by hand).
    pub selector: BTreeMap<String, String>,
    /// Ports.
    pub ports: Vec<ServicePort>,
    /// `spec.externalTrafficPolicy: Local` (node ports reach only local
    /// backends and keep the client's address).
    pub external_local: bool,
}

/// One address of an Endpoints subset.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct EndpointAddress {
    /// Backend address.
    pub ip: IpAddr,
    /// The pod behind it (`targetRef` of kind Pod), if named.
    pub pod: Option<PodRef>,
}

/// One port of an Endpoints subset.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct EndpointPort {
    /// Name (matches the Service port's name).
    pub name: Option<String>,
    /// Backend port.
    pub port: u16,
    /// Protocol.
    pub protocol: Protocol,
}

/// One subset of an Endpoints object: every address serves every port.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct EndpointSubset {
    /// Ready addresses (`notReadyAddresses` receive no traffic).
    pub addresses: Vec<EndpointAddress>,
    /// Ports.
    pub ports: Vec<EndpointPort>,
}

/// One place a Service port's traffic can land after translation.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Backend {
    /// The backend pod, when the address is a pod's.
    pub pod: Option<PodRef>,
    /// Backend address.
    pub ip: IpAddr,
    /// Backend port (the resolved `targetPort`).
    pub port: u16,
    /// Protocol.
    pub protocol: Protocol,
}

impl std::fmt::Display for Backend {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match &self.pod {
            Some(p) => write!(f, "{p}:{}", self.port),
            None => match self.ip {
                IpAddr::V6(v6) => write!(f, "[{v6}]:{}", self.port),
                IpAddr::V4(v4) => write!(f, "{v4}:{}", self.port),
            },
        }
    }
}

pub(super) fn object_ref(
    kind: &'static str,
    ns: Option<&String>,
    name: Option<&String>,
) -> Result<PodRef, ModelError> {
    let name = name.cloned().ok_or(ModelError::MissingName {
        kind,
        field: "metadata.name",
    })?;
    Ok(PodRef::new(
        ns.cloned().unwrap_or_else(|| "default".into()),
        name,
    ))
}

pub(super) fn port_number(
    kind: &'static str,
    object: &PodRef,
    field: String,
    n: i32,
) -> Result<u16, ModelError> {
    u16::try_from(n)
        .ok()
        .filter(|n| *n != 0)
        .ok_or_else(|| ModelError::InvalidField {
            kind,
            object: object.to_string(),
            field,
            message: format!("port {n} is outside 1-65535"),
        })
}

pub(super) fn protocol(
    kind: &'static str,
    object: &PodRef,
    field: String,
    p: Option<&str>,
) -> Result<Protocol, ModelError> {
    match p {
        None => Ok(Protocol::Tcp),
        Some(s) => s.parse().map_err(|e: ModelError| ModelError::InvalidField {
            kind,
            object: object.to_string(),
            field,
            message: e.to_string(),
        }),
    }
}

pub(super) fn parse_ip(
    kind: &'static str,
    object: &PodRef,
    field: String,
    text: &str,
) -> Result<IpAddr, ModelError> {
    text.trim()
        .parse::<IpAddr>()
        .map(normalize_ip)
        .map_err(|e| ModelError::InvalidField {
            kind,
            object: object.to_string(),
            field,
            message: format!("invalid IP {text:?}: {e}"),
        })
}

impl ServiceInfo {
    /// Builds the snapshot entry of a Service object.
    pub fn from_service(svc: &Service) -> Result<(ServiceRef, ServiceInfo), ModelError> {
        const KIND: &str = "Service";
        let r = object_ref(
            KIND,
            svc.metadata.namespace.as_ref(),
            svc.metadata.name.as_ref(),
        )?;
        let empty = Default::default();
        let spec = svc.spec.as_ref().unwrap_or(&empty);
        let listed: Vec<(String, &String)> = match &spec.cluster_ips {
            Some(ips) if !ips.is_empty() => ips
                .iter()
                .enumerate()
                .map(|(i, ip)| (format!("spec.clusterIPs[{i}]"), ip))
                .collect(),
            _ => spec
                .cluster_ip
                .iter()
                .map(|ip| ("spec.clusterIP".to_string(), ip))
                .collect(),
        };
        let mut cluster_ips = Vec::new();
        if spec.type_.as_deref() != Some("ExternalName") {
            for (field, text) in listed {
                if text.is_empty() || text == "None" {
                    continue;
                }
                let ip = parse_ip(KIND, &r, field, text)?;
                if !cluster_ips.contains(&ip) {
                    cluster_ips.push(ip);
                }
            }
        }
        let mut ports = Vec::new();
        for (i, p) in spec.ports.iter().flatten().enumerate() {
            let field = format!("spec.ports[{i}]");
            let port = port_number(KIND, &r, format!("{field}.port"), p.port)?;
            let target = match &p.target_port {
                None => TargetPort::Number(port),
                Some(IntOrString::Int(n)) => {
                    TargetPort::Number(port_number(KIND, &r, format!("{field}.targetPort"), *n)?)
                }
                Some(IntOrString::String(s)) => match s.parse::<i32>() {
                    Ok(n) => {
                        TargetPort::Number(port_number(KIND, &r, format!("{field}.targetPort"), n)?)
                    }
                    Err(_) if !s.is_empty() => TargetPort::Name(s.clone()),
                    Err(_) => TargetPort::Number(port),
                },
            };
            let node_port = match p.node_port {
                None | Some(0) => None,
                Some(n) => Some(port_number(KIND, &r, format!("{field}.nodePort"), n)?),
            };
            ports.push(ServicePort {
                name: p.name.clone().filter(|n| !n.is_empty()),
                protocol: protocol(KIND, &r, format!("{field}.protocol"), p.protocol.as_deref())?,
                port,
                target,
                node_port,
            });
        }
        let info = ServiceInfo {
            cluster_ips,
            selector: spec.selector.clone().unwrap_or_default(),
            ports,
            external_local: spec.external_traffic_policy.as_deref() == Some("Local"),
        };
        Ok((r, info))
    }

    /// The Service port `port`/`protocol` (on the ClusterIP).
    pub fn port(&self, port: u16, protocol: Protocol) -> Option<&ServicePort> {
        self.ports
            .iter()
            .find(|p| p.port == port && p.protocol == protocol)
    }
}

/// The pod an endpoint's `targetRef` names (none for other kinds); a
/// reference without a namespace is in `namespace`, the object's own.
pub(crate) fn pod_target(target: Option<&ObjectReference>, namespace: &str) -> Option<PodRef> {
    let t = target.filter(|t| t.kind.as_deref() == Some("Pod"))?;
    let name = t.name.clone()?;
    Some(PodRef::new(
        t.namespace.clone().unwrap_or_else(|| namespace.to_string()),
        name,
    ))
}

/// One port of an Endpoints subset or an EndpointSlice, checked; errors
/// name `kind`, the object `r` and `field`.
pub(crate) fn endpoint_port(
    kind: &'static str,
    r: &ServiceRef,
    field: &str,
    name: Option<&str>,
    port: i32,
    proto: Option<&str>,
) -> Result<EndpointPort, ModelError> {
    Ok(EndpointPort {
        name: name.filter(|n| !n.is_empty()).map(str::to_string),
        port: port_number(kind, r, format!("{field}.port"), port)?,
        protocol: protocol(kind, r, format!("{field}.protocol"), proto)?,
    })
}

/// Builds the snapshot entry of an Endpoints object (ready addresses only).
pub fn endpoints_from(ep: &Endpoints) -> Result<(ServiceRef, Vec<EndpointSubset>), ModelError> {
    const KIND: &str = "Endpoints";
    let r = object_ref(
        KIND,
        ep.metadata.namespace.as_ref(),
        ep.metadata.name.as_ref(),
    )?;
    let mut subsets = Vec::new();
    for (si, s) in ep.subsets.iter().flatten().enumerate() {
        let mut out = EndpointSubset::default();
        for (ai, a) in s.addresses.iter().flatten().enumerate() {
            let ip = parse_ip(KIND, &r, format!("subsets[{si}].addresses[{ai}].ip"), &a.ip)?;
            let pod = pod_target(a.target_ref.as_ref(), &r.namespace);
            out.addresses.push(EndpointAddress { ip, pod });
        }
        for (pi, p) in s.ports.iter().flatten().enumerate() {
            let field = format!("subsets[{si}].ports[{pi}]");
            out.ports.push(endpoint_port(
                KIND,
                &r,
                &field,
                p.name.as_deref(),
                p.port,
                p.protocol.as_deref(),
            )?);
        }
        subsets.push(out);
    }
    Ok((r, subsets))
}

impl Snapshot {
    /// Inserts or replaces a Service; returns its reference.
    pub fn upsert_service(&mut self, svc: &Service) -> Result<ServiceRef, ModelError> {
        let (r, info) = ServiceInfo::from_service(svc)?;
        self.services.insert(r.clone(), info);
        Ok(r)
    }

    /// Removes a Service.
    pub fn remove_service(&mut self, svc: &ServiceRef) -> bool {
        self.services.remove(svc).is_some()
    }

    /// Inserts or replaces a Service's Endpoints; returns the reference.
    pub fn upsert_endpoints(&mut self, ep: &Endpoints) -> Result<ServiceRef, ModelError> {
        let (r, subsets) = endpoints_from(ep)?;
        self.service_endpoints.insert(r.clone(), subsets);
        Ok(r)
    }

    /// Removes a Service's Endpoints.
    pub fn remove_endpoints(&mut self, svc: &ServiceRef) -> bool {
        self.service_endpoints.remove(svc).is_some()
    }

    /// Every ClusterIP of every Service.
    pub fn cluster_ips(&self) -> impl Iterator<Item = (&ServiceRef, IpAddr)> + '_ {
        self.services
            .iter()
            .flat_map(|(r, s)| s.cluster_ips.iter().map(move |ip| (r, *ip)))
    }

    /// The Service whose ClusterIP is `ip`.
    pub fn service_by_ip(&self, ip: IpAddr) -> Option<&ServiceRef> {
        let ip = normalize_ip(ip);
        self.cluster_ips().find(|(_, a)| *a == ip).map(|(r, _)| r)
    }

    /// Where traffic to Service port `sp` of `svc` can land: from the
    /// Service's Endpoints when known, else from its selector.
    pub fn backends(&self, svc: &ServiceRef, sp: &ServicePort) -> Vec<Backend> {
        let mut out = Vec::new();
        if let Some(subsets) = self.service_endpoints.get(svc) {
            for s in subsets {
                let Some(p) = s
                    .ports
                    .iter()
                    .find(|p| p.protocol == sp.protocol && p.name == sp.name)
                else {
                    continue;
                };
                for a in &s.addresses {
                    let pod = a.pod.clone().or_else(|| self.pod_by_ip(a.ip).cloned());
                    out.push(Backend {
                        pod,
                        ip: a.ip,
                        port: p.port,
                        protocol: sp.protocol,
                    });
                }
            }
        } else if let Some(info) = self.services.get(svc) {
            if info.selector.is_empty() {
                return out;
            }
            let pods = self
                .pods
                .range(PodRef::new(svc.namespace.clone(), "")..)
                .take_while(|(r, _)| r.namespace == svc.namespace);
            for (r, pod) in pods {
                let selected = info
                    .selector
                    .iter()
                    .all(|(k, v)| pod.labels.get(k) == Some(v));
                if !selected {
                    continue;
                }
                let port = match &sp.target {
                    TargetPort::Number(n) => Some(*n),
                    TargetPort::Name(name) => pod.named_port(name, sp.protocol).next(),
                };
                let Some(port) = port else { continue };
                for ip in &pod.ips {
                    out.push(Backend {
                        pod: Some(r.clone()),
                        ip: *ip,
                        port,
                        protocol: sp.protocol,
                    });
                }
            }
        }
        out.sort();
        out.dedup();
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn svc(yaml: &str) -> Service {
        let v: serde_json::Value = serde_norway::from_str(yaml).unwrap();
        serde_json::from_value(v).unwrap()
    }

    fn pod(
        name: &str,
        labels: &[(&str, &str)],
        ip: &str,
        ports: &[(&str, u16)],
    ) -> k8s_openapi::api::core::v1::Pod {
        let labels: serde_json::Map<String, serde_json::Value> = labels
            .iter()
            .map(|(k, v)| (k.to_string(), serde_json::Value::from(*v)))
            .collect();
        let ports: Vec<serde_json::Value> = ports
            .iter()
            .map(|(n, p)| serde_json::json!({"name": n, "containerPort": p}))
            .collect();
        serde_json::from_value(serde_json::json!({
            "metadata": {"name": name, "namespace": "x", "labels": labels},
            "spec": {"containers": [{"name": "c", "ports": ports}]},
            "status": {"podIP": ip},
        }))
        .unwrap()
    }

    #[test]
    fn selector_backends_resolve_named_target_ports_per_pod() {
        let mut s = Snapshot::default();
        s.upsert_pod(&pod("a", &[("app", "web")], "10.0.0.1", &[("http", 8080)]))
            .unwrap();
        s.upsert_pod(&pod("b", &[("app", "web")], "10.0.0.2", &[("http", 9090)]))
            .unwrap();
        s.upsert_pod(&pod("c", &[("app", "web")], "10.0.0.3", &[]))
            .unwrap();
        s.upsert_pod(&pod("d", &[("app", "db")], "10.0.0.4", &[("http", 1)]))
            .unwrap();
        let r = s
            .upsert_service(&svc(
                "metadata: {name: web, namespace: x}\nspec: {clusterIP: 10.96.0.7, selector: {app: web}, ports: [{port: 80, targetPort: http}]}",
            ))
            .unwrap();
        let info = s.services[&r].clone();
        assert_eq!(
            info.cluster_ips,
            vec!["10.96.0.7".parse::<IpAddr>().unwrap()]
        );
        let sp = info.port(80, Protocol::Tcp).unwrap();
        let b: Vec<String> = s.backends(&r, sp).iter().map(ToString::to_string).collect();
        assert_eq!(b, ["x/a:8080", "x/b:9090"]);
        assert_eq!(s.service_by_ip("10.96.0.7".parse().unwrap()), Some(&r));
        assert!(info.port(80, Protocol::Udp).is_none());
    }

    #[test]
    fn endpoints_object_wins_over_the_selector() {
        let mut s = Snapshot::default();
        s.upsert_pod(&pod("a", &[("app", "web")], "10.0.0.1", &[]))
            .unwrap();
        let r = s
            .upsert_service(&svc(
                "metadata: {name: web, namespace: x}\nspec: {clusterIP: 10.96.0.7, selector: {app: web}, ports: [{name: h, port: 80, targetPort: 8080}, {name: u, port: 53, protocol: UDP}]}",
            ))
            .unwrap();
        let ep: Endpoints = serde_json::from_value(serde_json::json!({
            "metadata": {"name": "web", "namespace": "x"},
            "subsets": [{"addresses": [{"ip": "10.0.0.9"}, {"ip": "10.0.0.1", "targetRef": {"kind": "Pod", "name": "a"}}],
                         "ports": [{"name": "h", "port": 8081}, {"name": "u", "port": 5353, "protocol": "UDP"}]}]
        }))
        .unwrap();
        s.upsert_endpoints(&ep).unwrap();
        let info = s.services[&r].clone();
        let b: Vec<String> = s
            .backends(&r, info.port(80, Protocol::Tcp).unwrap())
            .iter()
            .map(ToString::to_string)
            .collect();
        assert_eq!(b, ["10.0.0.9:8081", "x/a:8081"]);
        let b = s.backends(&r, info.port(53, Protocol::Udp).unwrap());
        assert_eq!(b.len(), 2);
        assert!(b.iter().all(|b| b.port == 5353));
    }

    #[test]
    fn headless_and_bad_fields() {
        let (_, info) = ServiceInfo::from_service(&svc(
            "metadata: {name: h, namespace: x}\nspec: {clusterIP: None, ports: [{port: 80}]}",
        ))
        .unwrap();
        assert!(info.cluster_ips.is_empty());
        let e = ServiceInfo::from_service(&svc(
            "metadata: {name: h, namespace: x}\nspec: {clusterIP: 10.96.0.1, ports: [{port: 80, targetPort: 70000}]}",
        ))
        .unwrap_err()
        .to_string();
        assert!(
            e.contains("x/h") && e.contains("spec.ports[0].targetPort"),
            "{e}"
        );
        let e = ServiceInfo::from_service(&svc(
            "metadata: {name: h, namespace: x}\nspec: {clusterIP: 10.96.0.300}",
        ))
        .unwrap_err()
        .to_string();
        assert!(e.contains("spec.clusterIP"), "{e}");
    }
}
