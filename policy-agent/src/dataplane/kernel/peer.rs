//! The MAC of a pod's interface: the peer of its host-side veth, read over
//! netlink (`RTM_GETLINK` in the namespace the kernel names by
//! `IFLA_LINK_NETNSID`, without entering it). Written into the endpoint's
//! entry before its first packet, so frames leaving the pod with another
//! Ethernet source are dropped (layer-2 spoofing on the bridge).

use rtnetlink::packet_core::{
    NetlinkHeader, NetlinkMessage, NetlinkPayload, NLM_F_ACK, NLM_F_REQUEST,
};
use rtnetlink::packet_route::link::{LinkAttribute, LinkMessage};
use rtnetlink::packet_route::RouteNetlinkMessage;
use rtnetlink::sys::{protocols::NETLINK_ROUTE, Socket, SocketAddr};

/// Why a pod's MAC could not be read.
#[derive(Debug, thiserror::Error)]
pub enum PeerMacError {
    /// A netlink socket or request failed.
    #[error("netlink: {0}")]
    Netlink(#[source] std::io::Error),
    /// The kernel's answer could not be read.
    #[error("netlink answer: {0}")]
    Decode(String),
    /// The interface is not a veth with a peer (no `IFLA_LINK`).
    #[error("interface {ifindex} has no peer")]
    NoPeer {
        /// The host-side interface.
        ifindex: u32,
    },
    /// The peer has no 6-byte hardware address.
    #[error("the peer of interface {ifindex} has no Ethernet address")]
    NoMac {
        /// The host-side interface.
        ifindex: u32,
    },
}

/// The MAC of the other end of host veth `ifindex`.
pub fn peer_mac(ifindex: u32) -> Result<[u8; 6], PeerMacError> {
    let mut socket = Socket::new(NETLINK_ROUTE).map_err(PeerMacError::Netlink)?;
    socket.bind_auto().map_err(PeerMacError::Netlink)?;
    socket
        .connect(&SocketAddr::new(0, 0))
        .map_err(PeerMacError::Netlink)?;
    let host = get_link(&socket, ifindex, None)?;
    let (mut peer, mut netnsid) = (None, None);
    for a in &host {
        match a {
            LinkAttribute::Link(i) => peer = Some(*i),
            LinkAttribute::LinkNetNsId(id) => netnsid = Some(*id),
            _ => {}
        }
    }
    let peer = peer.ok_or(PeerMacError::NoPeer { ifindex })?;
    let attrs = get_link(&socket, peer, netnsid)?;
    attrs
        .iter()
        .find_map(|a| match a {
            LinkAttribute::Address(m) => <[u8; 6]>::try_from(m.as_slice()).ok(),
            _ => None,
        })
        .ok_or(PeerMacError::NoMac { ifindex })
}

/// `RTM_GETLINK` of interface `index`, in the namespace `netnsid` names
/// (`IFLA_TARGET_NETNSID`) or the agent's own.
fn get_link(
    socket: &Socket,
    index: u32,
    netnsid: Option<i32>,
) -> Result<Vec<LinkAttribute>, PeerMacError> {
    let mut msg = LinkMessage::default();
    msg.header.index = index;
    if let Some(id) = netnsid {
        msg.attributes.push(LinkAttribute::IfNetnsId(id));
    }
    let mut header = NetlinkHeader::default();
    header.flags = NLM_F_REQUEST | NLM_F_ACK;
    header.sequence_number = index;
    let mut req = NetlinkMessage::new(
        header,
        NetlinkPayload::InnerMessage(RouteNetlinkMessage::GetLink(msg)),
    );
    req.finalize();
    let mut buf = vec![0u8; req.buffer_len()];
    req.serialize(&mut buf);
    socket.send(&buf, 0).map_err(PeerMacError::Netlink)?;
    let mut found = None;
    loop {
        let (data, _) = socket.recv_from_full().map_err(PeerMacError::Netlink)?;
        let mut off = 0;
        while off < data.len() {
            let msg = NetlinkMessage::<RouteNetlinkMessage>::deserialize(&data[off..])
                .map_err(|e| PeerMacError::Decode(e.to_string()))?;
            let len = msg.header.length as usize;
            match msg.payload {
                NetlinkPayload::InnerMessage(RouteNetlinkMessage::NewLink(link)) => {
                    found = Some(link.attributes);
                }
                NetlinkPayload::Error(e) => {
                    return match e.code {
                        None => found.ok_or_else(|| PeerMacError::Decode("no link".into())),
                        Some(_) => Err(PeerMacError::Netlink(e.to_io())),
                    };
                }
                NetlinkPayload::Done(_) => {
                    return found.ok_or_else(|| PeerMacError::Decode("no link".into()));
                }
                _ => {}
            }
            if len == 0 {
                break;
            }
            off += (len + 3) & !3;
        }
    }
}
