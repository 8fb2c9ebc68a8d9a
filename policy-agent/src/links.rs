//! Looking at the node's links over netlink (rtnetlink): which of the
//! interfaces a CNI result names is the pod's host-side veth.

use futures::TryStreamExt;
use rtnetlink::packet_route::link::{InfoKind, LinkAttribute, LinkInfo};

/// Failures while asking the kernel about links.
#[derive(Debug, thiserror::Error)]
pub enum LinkError {
    /// The netlink socket could not be opened.
    #[error("cannot open a netlink socket: {0}")]
    Socket(#[source] std::io::Error),
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
    let is_veth = msg.attributes.iter().any(|a| match a {
        LinkAttribute::LinkInfo(infos) => infos
            .iter()
            .any(|i| matches!(i, LinkInfo::Kind(InfoKind::Veth))),
        _ => false,
    });
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
