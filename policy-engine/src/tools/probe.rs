//! One connection A → B judged the way the datapath judges it: A's egress
//! (if A is a local pod) and B's ingress (if B is a local pod), both from
//! [`lookup::verdict`] over the compiled state (rule 4: both must allow).

use std::collections::BTreeMap;
use std::net::IpAddr;
use std::str::FromStr;

use crate::lookup::{self, Verdict};
use crate::model::addr::normalize_ip;
use crate::model::{ModelError, PodRef, Protocol, Snapshot};
use crate::state::MapState;

/// One end of a connection.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum End {
    /// A pod, `namespace/name`.
    Pod(PodRef),
    /// An address (outside the cluster unless it is a pod's).
    Ip(IpAddr),
}

impl FromStr for End {
    type Err = ModelError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
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
