//! Which of the node's devices get the node-device checks, when the
//! install does not name them (`--node-device auto`,
//! `--external-device auto`; the DaemonSet's default), so one DaemonSet
//! serves Flannel nodes, kubeadm VMs whose uplink is `ens3` and nodes
//! whose devices differ:
//!
//! - **overlay**: every VXLAN device in the node's namespace (Flannel's
//!   `flannel.1` and `flannel-v6.1`, and any other VXLAN overlay). A
//!   network plugin without one (kindnet, `host-gw`) has none: see
//!   docs/install.md for what that costs;
//! - **external**: the device holding the node's own address (its
//!   InternalIP, the downward API's `status.hostIP`, `--node-ip`): the
//!   uplink where NodePort clients arrive.
//!
//! Both are read again every few seconds, so devices that appear or are
//! replaced later are followed.

use std::net::IpAddr;

use futures::TryStreamExt;
use rtnetlink::packet_route::link::{InfoKind, LinkAttribute, LinkInfo};

use crate::links::LinkError;

/// A device named on the command line, or found by the agent.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum DeviceArg {
    /// This interface.
    Named(String),
    /// Whatever [`overlay_devices`] or [`external_device`] finds.
    Auto,
}

impl std::str::FromStr for DeviceArg {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "" => Err("an empty device name".into()),
            "auto" => Ok(DeviceArg::Auto),
            name => Ok(DeviceArg::Named(name.to_string())),
        }
    }
}

/// The device holding `node_ip` among `addrs` (interface name, address),
/// if any.
pub fn external_device(node_ip: IpAddr, addrs: &[(String, IpAddr)]) -> Option<String> {
    addrs
        .iter()
        .find(|(_, a)| *a == node_ip)
        .map(|(name, _)| name.clone())
}

/// Every (interface name, address) of the agent's network namespace.
pub fn interface_addresses() -> Vec<(String, IpAddr)> {
    let mut out = Vec::new();
    if let Ok(addrs) = nix::ifaddrs::getifaddrs() {
        for ifa in addrs {
            let Some(addr) = ifa.address else { continue };
            let ip = if let Some(v4) = addr.as_sockaddr_in() {
                IpAddr::V4(v4.ip())
            } else if let Some(v6) = addr.as_sockaddr_in6() {
                IpAddr::V6(v6.ip())
            } else {
                continue;
            };
            out.push((ifa.interface_name, ip));
        }
    }
    out
}

/// The names of every VXLAN device in the agent's network namespace.
pub async fn overlay_devices() -> Result<Vec<String>, LinkError> {
    let (connection, handle, _) = rtnetlink::new_connection().map_err(LinkError::Socket)?;
    let task = tokio::spawn(connection);
    let mut links = handle.link().get().execute();
    let mut out = Vec::new();
    let result = loop {
        match links.try_next().await {
            Ok(Some(msg)) => {
                let mut name = None;
                let mut vxlan = false;
                for a in &msg.attributes {
                    match a {
                        LinkAttribute::IfName(n) => name = Some(n.clone()),
                        LinkAttribute::LinkInfo(infos) => {
                            vxlan |= infos
                                .iter()
                                .any(|i| matches!(i, LinkInfo::Kind(InfoKind::Vxlan)));
                        }
                        _ => {}
                    }
                }
                if let (true, Some(name)) = (vxlan, name) {
                    out.push(name);
                }
            }
            Ok(None) => break Ok(out),
            Err(e) => break Err(LinkError::Netlink(e.to_string())),
        }
    };
    task.abort();
    let mut out = result?;
    out.sort();
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn auto_and_names_parse() {
        assert_eq!("auto".parse::<DeviceArg>(), Ok(DeviceArg::Auto));
        assert_eq!(
            "flannel.1".parse::<DeviceArg>(),
            Ok(DeviceArg::Named("flannel.1".into()))
        );
        assert!("".parse::<DeviceArg>().is_err());
    }

    #[test]
    fn the_external_device_holds_the_node_address() {
        let addrs = vec![
            ("lo".to_string(), "127.0.0.1".parse().unwrap()),
            ("ens3".to_string(), "192.0.2.10".parse().unwrap()),
            ("cni0".to_string(), "10.244.0.1".parse().unwrap()),
            ("ens3".to_string(), "2001:db8::10".parse().unwrap()),
        ];
        assert_eq!(
            external_device("192.0.2.10".parse().unwrap(), &addrs),
            Some("ens3".into())
        );
        assert_eq!(
            external_device("2001:db8::10".parse().unwrap(), &addrs),
            Some("ens3".into())
        );
        assert_eq!(
            external_device("198.51.100.1".parse().unwrap(), &addrs),
            None
        );
    }
}
