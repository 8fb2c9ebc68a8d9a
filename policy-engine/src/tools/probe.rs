//! One connection A → B judged the way the datapath judges it: A's egress
//! (if A is a local pod) and B's ingress (if B is a local pod), both from
//! [`lookup::verdict`] over the compiled state (rule 4: both must allow).

use std::collections::BTreeMap;
use std::net::IpAddr;
use std::str::FromStr;

use crate::lookup::{self, Verdict};
use crate::model::addr::normalize_ip;
use crate::model::{Backend, ModelError, PodRef, Protocol, Snapshot};
use crate::state::MapState;

/// One end of a connection.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum End {
    /// A pod, `namespace/name`.
    Pod(PodRef),
    /// An address (outside the cluster unless it is a pod's).
    Ip(IpAddr),
    /// A Service, `svc:namespace/name` (destination only): probed on the
    /// Service port through its ClusterIP, judged on each backend.
    Service(PodRef),
}

/// The prefix that names a Service end.
pub const SERVICE_PREFIX: &str = "svc:";

impl FromStr for End {
    type Err = ModelError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        if let Some(svc) = s.trim().strip_prefix(SERVICE_PREFIX) {
            return svc.parse().map(End::Service);
        }
        match s.trim().parse::<IpAddr>() {
            Ok(ip) => Ok(End::Ip(normalize_ip(ip))),
            Err(_) => s.trim().parse().map(End::Pod),
        }
    }
}

impl std::fmt::Display for End {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            End::Pod(p) => p.fmt(f),
            End::Ip(ip) => ip.fmt(f),
            End::Service(s) => write!(f, "{SERVICE_PREFIX}{s}"),
        }
    }
}

/// Why a probe could not be judged.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ProbeError {
    /// The pod is not in the snapshot.
    #[error("unknown pod {pod}")]
    UnknownPod {
        /// The pod named.
        pod: PodRef,
    },
    /// The Service is not in the snapshot.
    #[error("unknown Service {service}")]
    UnknownService {
        /// The Service named.
        service: PodRef,
    },
    /// The Service has no such port.
    #[error("Service {service} has no port {port}/{protocol}")]
    NoServicePort {
        /// The Service.
        service: PodRef,
        /// The port asked for.
        port: u16,
        /// Its protocol.
        protocol: Protocol,
    },
    /// A Service was given where only a pod or an address can be.
    #[error("a Service ({service}) can only be a destination")]
    ServiceSource {
        /// The Service named.
        service: PodRef,
    },
    /// The pod has no IP (of the family needed).
    #[error("pod {pod} has no {family} address")]
    NoAddress {
        /// The pod.
        pod: PodRef,
        /// "IPv4", "IPv6" or "IP".
        family: &'static str,
    },
}

/// The decision for one connection.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Connection {
    /// Source address used.
    pub src_ip: IpAddr,
    /// Destination address used.
    pub dst_ip: IpAddr,
    /// The source pod if the source is a pod.
    pub src_pod: Option<PodRef>,
    /// The destination pod if the destination is a pod.
    pub dst_pod: Option<PodRef>,
    /// The source endpoint's egress verdict (None: not a local endpoint).
    pub egress: Option<Verdict>,
    /// The destination endpoint's ingress verdict (None: not a local
    /// endpoint).
    pub ingress: Option<Verdict>,
}

impl Connection {
    /// Both ends allow it.
    pub fn allowed(&self) -> bool {
        self.egress.is_none_or(|v| v.allowed) && self.ingress.is_none_or(|v| v.allowed)
    }

    /// A short reason: `allowed`, `denied-egress:no-rule`, ...
    pub fn reason(&self) -> String {
        match (self.egress, self.ingress) {
            (Some(e), _) if !e.allowed => format!("egress:{}", e.reason),
            (_, Some(i)) if !i.allowed => format!("ingress:{}", i.reason),
            (e, i) => {
                let part = |v: Option<Verdict>| v.map_or("-".to_string(), |v| v.reason.to_string());
                format!("egress:{},ingress:{}", part(e), part(i))
            }
        }
    }
}

/// Resolves an end to (pod, addresses).
fn resolve(snapshot: &Snapshot, end: &End) -> Result<(Option<PodRef>, Vec<IpAddr>), ProbeError> {
    match end {
        End::Pod(p) => {
            let info = snapshot
                .pods
                .get(p)
                .ok_or_else(|| ProbeError::UnknownPod { pod: p.clone() })?;
            Ok((Some(p.clone()), info.ips.clone()))
        }
        End::Ip(ip) => {
            let ip = normalize_ip(*ip);
            let pod = snapshot
                .pods
                .iter()
                .find(|(_, i)| i.ips.contains(&ip))
                .map(|(r, _)| r.clone());
            Ok((pod, vec![ip]))
        }
        End::Service(service) => Err(ProbeError::ServiceSource {
            service: service.clone(),
        }),
    }
}

/// Picks one address each, of one family (IPv4 preferred).
fn pick(
    src: &(Option<PodRef>, Vec<IpAddr>),
    dst: &(Option<PodRef>, Vec<IpAddr>),
) -> Result<(IpAddr, IpAddr), ProbeError> {
    for want_v4 in [true, false] {
        let s = src.1.iter().find(|ip| ip.is_ipv4() == want_v4);
        let d = dst.1.iter().find(|ip| ip.is_ipv4() == want_v4);
        if let (Some(s), Some(d)) = (s, d) {
            return Ok((*s, *d));
        }
    }
    let (pod, family) = if src.1.is_empty() || dst.1.is_empty() {
        let p = if src.1.is_empty() { &src.0 } else { &dst.0 };
        (p.clone(), "IP")
    } else if dst.0.is_some() {
        let fam = if src.1[0].is_ipv4() { "IPv4" } else { "IPv6" };
        (dst.0.clone(), fam)
    } else {
        let fam = if dst.1[0].is_ipv4() { "IPv4" } else { "IPv6" };
        (src.0.clone(), fam)
    };
    Err(ProbeError::NoAddress {
        pod: pod.unwrap_or_else(|| PodRef::new("?", "?")),
        family,
    })
}

/// Judges `from → to` on `protocol`/`port` against `state` compiled for
/// `endpoints`.
pub fn connection(
    snapshot: &Snapshot,
    state: &MapState,
    endpoints: &BTreeMap<PodRef, u32>,
    from: &End,
    to: &End,
    protocol: Protocol,
    port: u16,
) -> Result<Connection, ProbeError> {
    let src = resolve(snapshot, from)?;
    let dst = resolve(snapshot, to)?;
    let (src_ip, dst_ip) = pick(&src, &dst)?;
    let ep_of = |p: &Option<PodRef>| p.as_ref().and_then(|p| endpoints.get(p)).copied();
    let egress = ep_of(&src.0).map(|ep| {
        lookup::verdict(
            state,
            ep,
            policy_common::dir::EGRESS,
            dst_ip,
            protocol.number(),
            port,
        )
    });
    let ingress = ep_of(&dst.0).map(|ep| {
        lookup::verdict(
            state,
            ep,
            policy_common::dir::INGRESS,
            src_ip,
            protocol.number(),
            port,
        )
    });
    Ok(Connection {
        src_ip,
        dst_ip,
        src_pod: src.0,
        dst_pod: dst.0,
        egress,
        ingress,
    })
}

/// One backend of a Service probe and the decision for it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct BackendConnection {
    /// Where kube-proxy may send the connection.
    pub backend: Backend,
    /// The decision for `from → backend` on the backend's port.
    pub connection: Connection,
}

/// Judges `from → service` on the Service port `protocol`/`port`: one
/// [`Connection`] per backend of the source's address family, each judged
/// on the backend's address and target port (the ClusterIP is never a
/// peer, so never an ipBlock match).
pub fn service_connections(
    snapshot: &Snapshot,
    state: &MapState,
    endpoints: &BTreeMap<PodRef, u32>,
    from: &End,
    service: &PodRef,
    protocol: Protocol,
    port: u16,
) -> Result<Vec<BackendConnection>, ProbeError> {
    let info = snapshot
        .services
        .get(service)
        .ok_or_else(|| ProbeError::UnknownService {
            service: service.clone(),
        })?;
    let sp = info
        .port(port, protocol)
        .ok_or_else(|| ProbeError::NoServicePort {
            service: service.clone(),
            port,
            protocol,
        })?;
    let (_, src_ips) = resolve(snapshot, from)?;
    let backends = snapshot.backends(service, sp);
    let family = [true, false].into_iter().find(|v4| {
        src_ips.iter().any(|ip| ip.is_ipv4() == *v4)
            && backends.iter().any(|b| b.ip.is_ipv4() == *v4)
    });
    let mut out = Vec::new();
    for b in backends {
        if family != Some(b.ip.is_ipv4()) {
            continue;
        }
        let connection = connection(
            snapshot,
            state,
            endpoints,
            from,
            &End::Ip(b.ip),
            protocol,
            b.port,
        )?;
        out.push(BackendConnection {
            backend: b,
            connection,
        });
    }
    Ok(out)
}
