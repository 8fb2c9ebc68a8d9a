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
}

/// The decision for one connection.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Connection {
    /// Source address used (`None`: the source pod has no address of the
    /// probe's family, see [`Connection::note`]).
    pub src_ip: Option<IpAddr>,
    /// Destination address used (`None` likewise).
    pub dst_ip: Option<IpAddr>,
    /// The source pod if the source is a pod.
    pub src_pod: Option<PodRef>,
    /// The destination pod if the destination is a pod.
    pub dst_pod: Option<PodRef>,
    /// The source endpoint's egress verdict (None: not a local endpoint).
    pub egress: Option<Verdict>,
    /// The destination endpoint's ingress verdict (None: not a local
    /// endpoint).
    pub ingress: Option<Verdict>,
    /// Why the packet could not be sent as written (a pod without an
    /// address of the family, a Pending pod); the verdict is still the
    /// policies' (by the pod's identity, without ipBlock matches).
    pub note: Option<String>,
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

/// One end resolved: the pod (if it is one), its addresses, and whether it
/// was written as an address.
struct Resolved {
    pod: Option<PodRef>,
    ips: Vec<IpAddr>,
    literal: bool,
}

fn resolve(snapshot: &Snapshot, end: &End) -> Result<Resolved, ProbeError> {
    match end {
        End::Pod(p) => {
            let info = snapshot
                .pods
                .get(p)
                .ok_or_else(|| ProbeError::UnknownPod { pod: p.clone() })?;
            Ok(Resolved {
                pod: Some(p.clone()),
                ips: info.ips.clone(),
                literal: false,
            })
        }
        End::Ip(ip) => {
            let ip = normalize_ip(*ip);
            Ok(Resolved {
                pod: snapshot
                    .pods
                    .iter()
                    .find(|(_, i)| i.ips.contains(&ip))
                    .map(|(r, _)| r.clone()),
                ips: vec![ip],
                literal: true,
            })
        }
        End::Service(service) => Err(ProbeError::ServiceSource {
            service: service.clone(),
        }),
    }
}

fn family(v4: bool) -> &'static str {
    if v4 {
        "IPv4"
    } else {
        "IPv6"
    }
}

/// Picks one address each, of one family: IPv4 if both ends have one, else
/// IPv6 if both have one; otherwise the family of an end written as an
/// address (or of the end that has one), leaving the other end without.
fn pick(src: &Resolved, dst: &Resolved) -> (Option<IpAddr>, Option<IpAddr>, Option<String>) {
    let of = |r: &Resolved, v4: bool| r.ips.iter().copied().find(|ip| ip.is_ipv4() == v4);
    for v4 in [true, false] {
        if let (Some(s), Some(d)) = (of(src, v4), of(dst, v4)) {
            return (Some(s), Some(d), None);
        }
    }
    let want_v4 = [src, dst]
        .into_iter()
        .find(|r| r.literal)
        .or_else(|| [src, dst].into_iter().find(|r| !r.ips.is_empty()))
        .and_then(|r| r.ips.first())
        .is_none_or(|ip| ip.is_ipv4());
    let (s, d) = (of(src, want_v4), of(dst, want_v4));
    let missing: Vec<String> = [(src, s), (dst, d)]
        .iter()
        .filter(|(_, ip)| ip.is_none())
        .map(|(r, _)| {
            let who = r
                .pod
                .as_ref()
                .map_or_else(|| "?".to_string(), |p| p.to_string());
            if r.ips.is_empty() {
                format!("{who} has no IP address (Pending?)")
            } else {
                format!("{who} has no {} address", family(want_v4))
            }
        })
        .collect();
    let note = format!(
        "{}: the packet cannot be sent as written; verdict by pod identity (ipBlock rules not applied)",
        missing.join(", ")
    );
    (s, d, Some(note))
}

/// Identity numbers of the pods, from a compile's identity table.
pub fn pod_identities(
    identities: &BTreeMap<u32, crate::compile::IdentityDesc>,
) -> BTreeMap<PodRef, u32> {
    let mut out = BTreeMap::new();
    for (id, desc) in identities {
        if let crate::compile::IdentityDesc::Pods { members, .. } = desc {
            for m in members {
                out.insert(m.clone(), *id);
            }
        }
    }
    out
}

/// What a connection is judged against: the compiled state, the local
/// endpoints and the pods' identities.
pub struct Judge<'a> {
    /// The cluster.
    pub snapshot: &'a Snapshot,
    /// The compiled state.
    pub state: &'a MapState,
    /// Local endpoints.
    pub endpoints: &'a BTreeMap<PodRef, u32>,
    /// Pod identities ([`pod_identities`]); used for ends without an
    /// address.
    pub identities: &'a BTreeMap<PodRef, u32>,
}

impl Judge<'_> {
    /// Judges `from → to` on `protocol`/`port`. Only an unknown pod is an
    /// error: an end without a usable address still gets the policies'
    /// verdict, with [`Connection::note`] saying why it cannot be sent.
    pub fn connection(
        &self,
        from: &End,
        to: &End,
        protocol: Protocol,
        port: u16,
    ) -> Result<Connection, ProbeError> {
        let src = resolve(self.snapshot, from)?;
        let dst = resolve(self.snapshot, to)?;
        let (src_ip, dst_ip, note) = pick(&src, &dst);
        let ep_of = |p: &Option<PodRef>| p.as_ref().and_then(|p| self.endpoints.get(p)).copied();
        let side = |ep: u32, dir: u8, peer: &Resolved, ip: Option<IpAddr>| match ip {
            Some(ip) => lookup::verdict(self.state, ep, dir, ip, protocol.number(), port),
            None => lookup::verdict_for_identity(
                self.state,
                ep,
                dir,
                peer.pod
                    .as_ref()
                    .and_then(|p| self.identities.get(p))
                    .copied(),
                protocol.number(),
                port,
            ),
        };
        let egress = ep_of(&src.pod).map(|ep| side(ep, policy_common::dir::EGRESS, &dst, dst_ip));
        let ingress = ep_of(&dst.pod).map(|ep| side(ep, policy_common::dir::INGRESS, &src, src_ip));
        Ok(Connection {
            src_ip,
            dst_ip,
            src_pod: src.pod,
            dst_pod: dst.pod,
            egress,
            ingress,
            note,
        })
    }
}

/// One backend of a Service probe and the decision for it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct BackendConnection {
    /// Where kube-proxy may send the connection.
    pub backend: Backend,
    /// The decision for `from → backend` on the backend's port.
    pub connection: Connection,
}

impl Judge<'_> {
    /// Judges `from → service` on the Service port `protocol`/`port`: one
    /// [`Connection`] per backend, each judged on the backend's address and
    /// target port (the ClusterIP is never a peer, so never an ipBlock
    /// match). Only backends of one family are kept, the first family the
    /// source and a backend share (kube-proxy never translates across
    /// families); a source sharing none (a Pending pod, an IPv4-only pod
    /// to an IPv6-only Service) is judged on every backend, each
    /// connection with its [`Connection::note`].
    pub fn service_connections(
        &self,
        from: &End,
        service: &PodRef,
        protocol: Protocol,
        port: u16,
    ) -> Result<Vec<BackendConnection>, ProbeError> {
        let info =
            self.snapshot
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
        let src = resolve(self.snapshot, from)?;
        let backends = self.snapshot.backends(service, sp);
        let family = [true, false].into_iter().find(|v4| {
            src.ips.iter().any(|ip| ip.is_ipv4() == *v4)
                && backends.iter().any(|b| b.ip.is_ipv4() == *v4)
        });
        let mut out = Vec::new();
        for b in backends {
            if family.is_some_and(|v4| v4 != b.ip.is_ipv4()) {
                continue;
            }
            let connection = self.connection(from, &End::Ip(b.ip), protocol, b.port)?;
            out.push(BackendConnection {
                backend: b,
                connection,
            });
        }
        Ok(out)
    }
}

/// Judges `from → to` on `protocol`/`port` against `state` compiled for
/// `endpoints` (ends without an address are judged by identity only if
/// their pod is a member of an identity of `state`'s compile; use
/// [`Judge`] with the compile's identities for that).
pub fn connection(
    snapshot: &Snapshot,
    state: &MapState,
    endpoints: &BTreeMap<PodRef, u32>,
    from: &End,
    to: &End,
    protocol: Protocol,
    port: u16,
) -> Result<Connection, ProbeError> {
    let identities = BTreeMap::new();
    Judge {
        snapshot,
        state,
        endpoints,
        identities: &identities,
    }
    .connection(from, to, protocol, port)
}
