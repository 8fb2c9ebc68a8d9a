//! The bed's underlay: the control plane's network namespace holds a bridge
//! (`ul0`, [`API_ADDR`]/24) that every node namespace joins by a veth
//! (`eth0` inside the node, [`node_addr`]`(index)`), as nodes join a LAN.
//! The API server listens on the bridge address, so agents and kube-proxy
//! in the node namespaces reach it; nodes reach each other over the same
//! LAN (the VXLAN overlay between nodes runs on it). Nothing here touches
//! the machine's own namespace.

use std::net::Ipv4Addr;

use crate::error::TestbedError;
use crate::netns::{self, ip_in};

/// The underlay bridge inside the control-plane namespace.
pub const BRIDGE: &str = "ul0";
/// The control plane's address on the underlay (the API server's).
pub const API_ADDR: Ipv4Addr = Ipv4Addr::new(172, 30, 0, 1);
/// The underlay's prefix length.
pub const PREFIX: u8 = 24;
/// The node side of a node's underlay veth.
pub const NODE_IFNAME: &str = "eth0";

/// Node `index`'s address on the underlay (172.30.0.10, .11, ...).
pub fn node_addr(index: u8) -> Ipv4Addr {
    Ipv4Addr::new(172, 30, 0, 10u8.saturating_add(index))
}

/// A node's place on the underlay.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct NodeLink {
    /// The node's name (its Node object's name too).
    pub name: String,
    /// The node's network namespace.
    pub netns: String,
    /// Its index on the underlay (0 for the first node).
    pub index: u8,
    /// Its interface on the underlay (inside `netns`).
    pub ifname: String,
    /// Its underlay address (the Node's InternalIP).
    pub addr: Ipv4Addr,
}

/// Creates the bridge with [`API_ADDR`] in the (existing) control-plane
/// namespace `cp`.
pub(crate) fn create_bridge(cp: &str) -> Result<(), TestbedError> {
    ip_in(cp, &["link", "add", BRIDGE, "type", "bridge"])?;
    let addr = format!("{API_ADDR}/{PREFIX}");
    ip_in(cp, &["addr", "add", &addr, "dev", BRIDGE])?;
    ip_in(cp, &["link", "set", BRIDGE, "up"])?;
    Ok(())
}

/// Joins node namespace `node_netns` to the underlay of `cp` as node
/// `index`: a veth `ul0-nN` on the bridge, `eth0` with [`node_addr`] in the
/// node. The veth goes with either namespace.
pub(crate) fn attach(
    cp: &str,
    node_netns: &str,
    name: &str,
    index: u8,
) -> Result<NodeLink, TestbedError> {
    let host_side = format!("ul0-n{index}");
    ip_in(
        cp,
        &[
            "link",
            "add",
            &host_side,
            "type",
            "veth",
            "peer",
            "name",
            NODE_IFNAME,
            "netns",
            node_netns,
        ],
    )?;
    ip_in(cp, &["link", "set", &host_side, "master", BRIDGE, "up"])?;
    let addr = node_addr(index);
    let cidr = format!("{addr}/{PREFIX}");
    ip_in(node_netns, &["addr", "add", &cidr, "dev", NODE_IFNAME])?;
    ip_in(node_netns, &["link", "set", NODE_IFNAME, "up"])?;
    Ok(NodeLink {
        name: name.to_string(),
        netns: node_netns.to_string(),
        index,
        ifname: NODE_IFNAME.to_string(),
        addr,
    })
}

/// Creates the control-plane namespace `cp` with its loopback up.
pub(crate) fn create_namespace(cp: &str) -> Result<(), TestbedError> {
    netns::create(cp)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn node_addresses_are_on_the_underlay_and_distinct() {
        assert_eq!(node_addr(0), Ipv4Addr::new(172, 30, 0, 10));
        assert_eq!(node_addr(1), Ipv4Addr::new(172, 30, 0, 11));
        assert_ne!(node_addr(0), API_ADDR);
    }
}
