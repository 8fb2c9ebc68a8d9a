//! Flannel's part on real nodes, played as Flannel plays it (Debian has no
//! Flannel): what its DaemonSet's init container installs, the CNI
//! configuration kube-flannel.yml ships, byte for byte in its shape
//! (`10-flannel.conflist`, network `cbr0`, `flannel` then `portmap`),
//! written atomically as Flannel's `cp` into place does; what flanneld
//! writes for its CNI plugin (`/run/flannel/subnet.env`); and flanneld's
//! vxlan backend (the `flannel.1` device and each peer's route, neighbour
//! and FDB entries, [`crate::overlay`]), with its masquerade of pod traffic
//! leaving the cluster network. The CNI plugin itself is the bed's
//! `palisade-testbed-flannel`, installed as `/opt/cni/bin/flannel`.

use crate::controlplane::CLUSTER_CIDR;
use crate::error::TestbedError;
use crate::netns::run;
use crate::overlay::{self, UnderlayAddr, OVERLAY_MTU};
use crate::placement::NodeNet;

use super::node::RealNode;

/// The file name kube-flannel.yml's init container writes.
pub const CONFLIST_NAME: &str = "10-flannel.conflist";
/// Where it goes on the node.
pub const CONFLIST_PATH: &str = "/etc/cni/net.d/10-flannel.conflist";
/// The bed's Flannel CNI plugin binary (installed as `flannel`).
pub const PLUGIN_BINARY: &str = "palisade-testbed-flannel";

/// The `cni-conf.json` of kube-flannel.yml, as its init container copies
/// it into `/etc/cni/net.d`.
pub fn conflist() -> &'static str {
    r#"{
  "name": "cbr0",
  "cniVersion": "0.3.1",
  "plugins": [
    {
      "type": "flannel",
      "delegate": {
        "hairpinMode": true,
        "isDefaultGateway": true
      }
    },
    {
      "type": "portmap",
      "capabilities": {
        "portMappings": true
      }
    }
  ]
}
"#
}

/// `/run/flannel/subnet.env` as flanneld writes it for node network `net`.
pub fn subnet_env(net: &NodeNet) -> String {
    format!(
        "FLANNEL_NETWORK={CLUSTER_CIDR}\nFLANNEL_SUBNET={}/{}\nFLANNEL_MTU={OVERLAY_MTU}\nFLANNEL_IPMASQ=true\n",
        net.gateway, net.subnet.1
    )
}

/// Does on `node` (the `i`th of `nets`) what flanneld and Flannel's init
/// container do: the VXLAN device over the node's underlay interface and
/// every peer's entries, the masquerade of pod traffic leaving the pod
/// network, `subnet.env`, and the conflist.
pub fn start(
    node: &RealNode,
    i: usize,
    nets: &[NodeNet],
    peers: &[UnderlayAddr],
) -> Result<(), TestbedError> {
    let link = node.link();
    let at = UnderlayAddr {
        v4: link.addr,
        v6: None,
    };
    overlay::attach_node(&link.netns, i, at, &link.ifname)?;
    for (j, (net, peer)) in nets.iter().zip(peers).enumerate().filter(|(j, _)| *j != i) {
        overlay::learn_peer(&link.netns, j, *peer, net)?;
    }
    // flanneld's --ip-masq: pod traffic to outside the cluster network
    // leaves as the node.
    let net = format!("--net={}", crate::netns::netns_path(&link.netns).display());
    run(
        "nsenter",
        &[
            &net,
            "iptables",
            "-w",
            "-t",
            "nat",
            "-A",
            "POSTROUTING",
            "-s",
            CLUSTER_CIDR,
            "!",
            "-d",
            CLUSTER_CIDR,
            "-j",
            "MASQUERADE",
        ],
    )?;
    node.write_file("/run/flannel/subnet.env", &subnet_env(&nets[i]))?;
    write_conflist(node)
}

/// Writes the conflist as Flannel's init container does: a temporary file
/// renamed over the old one (every Flannel start does this, dropping
/// whatever another plugin had chained into it).
pub fn write_conflist(node: &RealNode) -> Result<(), TestbedError> {
    node.write_file(CONFLIST_PATH, conflist())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_conflist_is_kube_flannels() {
        let v: serde_json::Value = serde_json::from_str(conflist()).unwrap();
        assert_eq!(v["name"], "cbr0");
        assert_eq!(v["cniVersion"], "0.3.1");
        assert_eq!(v["plugins"][0]["type"], "flannel");
        assert_eq!(v["plugins"][1]["type"], "portmap");
    }

    #[test]
    fn subnet_env_names_the_gateway_and_the_cluster() {
        let nets = crate::placement::node_nets(2, false);
        let env = subnet_env(&nets[1]);
        assert!(env.contains("FLANNEL_SUBNET=10.244.1.1/24\n"), "{env}");
        assert!(env.contains("FLANNEL_NETWORK=10.244.0.0/16\n"), "{env}");
    }
}
