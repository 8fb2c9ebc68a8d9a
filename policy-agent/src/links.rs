//! Looking at the node's links over netlink (rtnetlink): which of the
//! interfaces a CNI result names is the pod's host-side veth, and which
//! host veth belongs to a pod that runs without an endpoint (a pod started
//! before Palisade was installed).
//!
//! The second is proven, not guessed from names: a host veth's peer lives
//! in the pod's network namespace, which the kernel names by a netns id
//! (`IFLA_LINK_NETNSID`) and whose interface index it gives
//! (`IFLA_LINK`); the addresses of that namespace are read with
//! `IFA_TARGET_NETNSID` (strict checking), without entering it. A veth is
//! the pod's when its peer holds one of the pod's addresses. Two veths
//! whose peers both claim the address (a pod configuring another's) are
//! refused: the pod is not adopted and stays reported as unenforced.

use std::collections::{BTreeMap, BTreeSet};
use std::net::IpAddr;

use futures::TryStreamExt;
use rtnetlink::packet_route::address::AddressAttribute;
use rtnetlink::packet_route::link::{InfoKind, LinkAttribute, LinkInfo};

/// Failures while asking the kernel about links.
#[derive(Debug, thiserror::Error)]
pub enum LinkError {
    /// The netlink socket could not be opened.
    #[error("cannot open a netlink socket: {0}")]
    Socket(#[source] std::io::Error),
    /// A netlink request failed.
    #[error("netlink: {0}")]
    Netlink(String),
    /// Several host veths lead to a namespace holding the pod's address.
    #[error("the address {ip} is on the peers of several host veths ({ifnames:?}): not adopting")]
    Ambiguous {
        /// The contested address.
        ip: IpAddr,
        /// The host veths.
        ifnames: Vec<String>,
    },
    /// None of the candidates is a veth in this network namespace.
    #[error(
        "none of the host interfaces {candidates:?} is a veth in the agent's network namespace"
    )]
    NoVeth {
        /// The names that were looked at.
        candidates: Vec<String>,
    },
}

/// A link's index and kind.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct LinkFacts {
    /// Interface index.
    pub index: u32,
    /// True for a veth.
    pub is_veth: bool,
}

/// Whether `attr` says the link is a veth.
fn is_veth_kind(attr: &LinkAttribute) -> bool {
    match attr {
        LinkAttribute::LinkInfo(infos) => infos
            .iter()
            .any(|i| matches!(i, LinkInfo::Kind(InfoKind::Veth))),
        _ => false,
    }
}

/// Looks a link up by name; `Ok(None)` when it does not exist.
pub async fn link_by_name(name: &str) -> Result<Option<LinkFacts>, LinkError> {
    let (connection, handle, _) = rtnetlink::new_connection().map_err(LinkError::Socket)?;
    let task = tokio::spawn(connection);
    let result = handle
        .link()
        .get()
        .match_name(name.to_string())
        .execute()
        .try_next()
        .await;
    task.abort();
    let Ok(Some(msg)) = result else {
        return Ok(None);
    };
    let is_veth = msg.attributes.iter().any(is_veth_kind);
    Ok(Some(LinkFacts {
        index: msg.header.index,
        is_veth,
    }))
}

/// Picks the host-side veth among the interfaces of a CNI result that have
/// no sandbox (the bridge is one of them too).
pub async fn pick_host_veth(candidates: &[String]) -> Result<String, LinkError> {
    for name in candidates {
        if let Some(facts) = link_by_name(name).await? {
            if facts.is_veth {
                return Ok(name.clone());
            }
        }
    }
    Err(LinkError::NoVeth {
        candidates: candidates.to_vec(),
    })
}

/// A host-side veth found for a pod.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct FoundVeth {
    /// Its name.
    pub ifname: String,
    /// Its index.
    pub index: u32,
}

/// A host veth and where its peer is.
struct VethPeer {
    ifname: String,
    index: u32,
    netnsid: i32,
    peer_index: u32,
}

async fn host_veths(handle: &rtnetlink::Handle) -> Result<Vec<VethPeer>, LinkError> {
    let mut links = handle.link().get().execute();
    let mut out = Vec::new();
    while let Some(msg) = links
        .try_next()
        .await
        .map_err(|e| LinkError::Netlink(e.to_string()))?
    {
        let (mut name, mut veth, mut netnsid, mut peer) = (None, false, None, None);
        for a in &msg.attributes {
            match a {
                LinkAttribute::IfName(n) => name = Some(n.clone()),
                LinkAttribute::LinkInfo(_) => veth |= is_veth_kind(a),
                LinkAttribute::LinkNetNsId(id) => netnsid = Some(*id),
                LinkAttribute::Link(index) => peer = Some(*index),
                _ => {}
            }
        }
        if let (true, Some(ifname), Some(netnsid), Some(peer_index)) = (veth, name, netnsid, peer) {
            out.push(VethPeer {
                ifname,
                index: msg.header.index,
                netnsid,
                peer_index,
            });
        }
    }
    Ok(out)
}

/// The addresses of each interface of the namespace the node knows as
/// `netnsid`.
async fn addresses_in(
    handle: &rtnetlink::Handle,
    netnsid: i32,
) -> Result<BTreeMap<u32, Vec<IpAddr>>, LinkError> {
    let mut request = handle.address().get();
    request
        .message_mut()
        .attributes
        .push(AddressAttribute::TargetNetNsId(netnsid));
    let mut stream = request.execute();
    let mut out: BTreeMap<u32, Vec<IpAddr>> = BTreeMap::new();
    while let Some(msg) = stream
        .try_next()
        .await
        .map_err(|e| LinkError::Netlink(e.to_string()))?
    {
        for a in &msg.attributes {
            if let AddressAttribute::Address(ip) | AddressAttribute::Local(ip) = a {
                out.entry(msg.header.index).or_default().push(*ip);
            }
        }
    }
    Ok(out)
}

/// The links of this namespace holding one of `addrs`.
async fn links_holding(
    handle: &rtnetlink::Handle,
    addrs: &[IpAddr],
) -> Result<BTreeSet<u32>, LinkError> {
    if addrs.is_empty() {
        return Ok(BTreeSet::new());
    }
    let mut stream = handle.address().get().execute();
    let mut out = BTreeSet::new();
    while let Some(msg) = stream
        .try_next()
        .await
        .map_err(|e| LinkError::Netlink(e.to_string()))?
    {
        for a in &msg.attributes {
            if let AddressAttribute::Address(ip) | AddressAttribute::Local(ip) = a {
                if addrs.contains(ip) {
                    out.insert(msg.header.index);
                }
            }
        }
    }
    Ok(out)
}

/// For each pod (by its addresses), the host veth whose peer holds one of
/// them, if exactly one does (see the module doc). One netlink dump of the
/// links and one of the addresses per peer namespace serve every pod.
pub async fn find_pod_veths<K: Ord + Clone>(
    pods: &BTreeMap<K, Vec<IpAddr>>,
) -> Result<BTreeMap<K, Result<FoundVeth, LinkError>>, LinkError> {
    find_veths(pods, None, &BTreeSet::new()).await
}

/// [`find_pod_veths`] among the host veths not named in `skip` (those
/// serving other pods' endpoints: a pod that configures another's address
/// on its own interface then cannot make that pod's veth ambiguous).
pub async fn find_pod_veths_skipping<K: Ord + Clone>(
    pods: &BTreeMap<K, Vec<IpAddr>>,
    skip: &BTreeSet<String>,
) -> Result<BTreeMap<K, Result<FoundVeth, LinkError>>, LinkError> {
    find_veths(pods, None, skip).await
}

/// Every host veth whose peer lives in another network namespace, except
/// those named in `skip`.
pub async fn foreign_veths(
    skip: &BTreeSet<String>,
    protect: &[IpAddr],
) -> Result<Vec<FoundVeth>, LinkError> {
    let (connection, handle, _) =
        rtnetlink::new_connection_with_strict_check().map_err(LinkError::Socket)?;
    let task = tokio::spawn(connection);
    let result = async {
        let veths = host_veths(&handle).await?;
        let addressed = links_holding(&handle, protect).await?;
        Ok::<_, LinkError>((veths, addressed))
    }
    .await;
    task.abort();
    let (veths, addressed) = result?;
    Ok(veths
        .into_iter()
        .filter(|v| !skip.contains(&v.ifname))
        // The veth holding the node's own address is its uplink (a node
        // that is itself a container or a namespace, as on kind), never a
        // pod's host side.
        .filter(|v| !addressed.contains(&v.index))
        .map(|v| FoundVeth {
            ifname: v.ifname,
            index: v.index,
        })
        .collect())
}

/// [`find_pod_veths`] among the host veths named `among` only (those a
/// CNI result names): one address dump whatever the number of pods on the
/// node, and another pod claiming the same address on its own interface
/// cannot make the answer ambiguous.
pub async fn find_pod_veths_among<K: Ord + Clone>(
    pods: &BTreeMap<K, Vec<IpAddr>>,
    among: &[String],
) -> Result<BTreeMap<K, Result<FoundVeth, LinkError>>, LinkError> {
    find_veths(pods, Some(among), &BTreeSet::new()).await
}

async fn find_veths<K: Ord + Clone>(
    pods: &BTreeMap<K, Vec<IpAddr>>,
    among: Option<&[String]>,
    skip: &BTreeSet<String>,
) -> Result<BTreeMap<K, Result<FoundVeth, LinkError>>, LinkError> {
    let (connection, handle, _) =
        rtnetlink::new_connection_with_strict_check().map_err(LinkError::Socket)?;
    let task = tokio::spawn(connection);
    let result = async {
        let mut veths = host_veths(&handle).await?;
        if let Some(names) = among {
            veths.retain(|v| names.contains(&v.ifname));
        }
        veths.retain(|v| !skip.contains(&v.ifname));
        let mut by_ns: BTreeMap<i32, BTreeMap<u32, Vec<IpAddr>>> = BTreeMap::new();
        for v in &veths {
            if let std::collections::btree_map::Entry::Vacant(e) = by_ns.entry(v.netnsid) {
                e.insert(addresses_in(&handle, v.netnsid).await?);
            }
        }
        let holders = |ip: &IpAddr| -> Vec<&VethPeer> {
            veths
                .iter()
                .filter(|v| {
                    by_ns
                        .get(&v.netnsid)
                        .and_then(|ifs| ifs.get(&v.peer_index))
                        .is_some_and(|ips| ips.contains(ip))
                })
                .collect()
        };
        let mut out = BTreeMap::new();
        for (key, ips) in pods {
            let mut found: Option<Result<FoundVeth, LinkError>> = None;
            for ip in ips {
                let h = holders(ip);
                match h.as_slice() {
                    [] => continue,
                    [one] => {
                        let this = FoundVeth {
                            ifname: one.ifname.clone(),
                            index: one.index,
                        };
                        // Two addresses of one pod on two veths: refused too.
                        found = match found {
                            Some(Ok(prev)) if prev != this => Some(Err(LinkError::Ambiguous {
                                ip: *ip,
                                ifnames: vec![prev.ifname, this.ifname],
                            })),
                            Some(other) => Some(other),
                            None => Some(Ok(this)),
                        };
                    }
                    many => {
                        found = Some(Err(LinkError::Ambiguous {
                            ip: *ip,
                            ifnames: many.iter().map(|v| v.ifname.clone()).collect(),
                        }));
                    }
                }
            }
            if let Some(f) = found {
                out.insert(key.clone(), f);
            }
        }
        Ok(out)
    }
    .await;
    task.abort();
    result
}
