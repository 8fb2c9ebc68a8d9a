//! Joining node namespaces the way Flannel's vxlan backend joins nodes.
//!
//! The nodes sit on an *underlay*: a bridge `br0` in a namespace of its own
//! (the data-centre switch), each node plugged in by a veth whose node end
//! is `eth0` with the node's address (172.18.0.10 + i, and fd00:18::a + i on
//! a dual-stack bed). On top, each node has one VXLAN device, `flannel.1`
//! (VNI 1, UDP 8472, no learning, MTU 1450) holding the network address of
//! the node's pod subnet as a /32, and for every other node what flanneld
//! writes when it learns of it: a route to that node's /24 via its VXLAN
//! address, on-link through `flannel.1`; a permanent neighbour entry for
//! that address with that node's VXLAN MAC; and a permanent FDB entry
//! sending that MAC to that node's underlay address. Dual-stack beds get
//! the same over IPv6 on `flannel-v6.1`. Pod traffic between nodes keeps
//! its pod addresses: nothing is masqueraded or marked.
//!
//! Hosts outside the cluster (ipBlock peers) sit on the underlay too, in
//! the "outside" namespace: its `eth0` holds 172.18.0.254 (fd00:18::fe)
//! and every outside address as a /32 (/128); it routes each node's pod
//! subnet to that node, and every node routes the outside addresses to it.

use std::net::{Ipv4Addr, Ipv6Addr};

use crate::error::TestbedError;
use crate::netns::{self, ip_in, run, sysctl_in};
use crate::placement::{vtep_addr, vtep_addr6, NodeNet};

/// The bridge of the underlay namespace.
const SWITCH: &str = "br0";
/// The underlay interface in each node (and in the outside namespace).
pub const UNDERLAY_IF: &str = "eth0";
/// The underlay interface in each node of a kube-mode bed, whose `eth0`
/// joins the control plane.
pub const KUBE_UNDERLAY_IF: &str = "eth1";
/// The VXLAN device of each node, as flanneld names it for VNI 1.
pub const VXLAN_IF: &str = "flannel.1";
/// The IPv6 VXLAN device (flanneld's name for VNI 1 over IPv6).
pub const VXLAN6_IF: &str = "flannel-v6.1";
/// Flannel's VNI and UDP port (the Linux kernel's IANA default is 4789;
/// Flannel keeps the kernel's historical 8472).
pub const VNI: u32 = 1;
/// UDP port of the VXLAN traffic.
pub const VXLAN_PORT: u16 = 8472;
/// MTU of the VXLAN devices and the pods: the underlay's 1500 minus
/// VXLAN's 50 bytes.
pub const OVERLAY_MTU: u32 = 1450;
/// The underlay prefix (inside the bed's namespaces only).
const UNDERLAY_PREFIX: u8 = 24;

/// Node `i`'s underlay address.
pub fn underlay_addr(i: usize) -> Ipv4Addr {
    Ipv4Addr::new(172, 18, 0, 10 + i as u8)
}

/// Node `i`'s underlay IPv6 address.
pub fn underlay_addr6(i: usize) -> Ipv6Addr {
    Ipv6Addr::new(0xfd00, 0x18, 0, 0, 0, 0, 0, 10 + i as u16)
}

/// The outside namespace's own underlay address (its hosts' router).
const OUTSIDE_ROUTER: Ipv4Addr = Ipv4Addr::new(172, 18, 0, 254);
/// The outside namespace's own underlay IPv6 address.
const OUTSIDE_ROUTER6: Ipv6Addr = Ipv6Addr::new(0xfd00, 0x18, 0, 0, 0, 0, 0, 0xfe);

/// The MAC address of node `i`'s VXLAN device (`v6`: of its IPv6 one):
/// fixed, locally administered, so other nodes' entries can be written
/// before the device exists.
fn vtep_mac(i: usize, v6: bool) -> String {
    format!("0e:50:4c:00:{:02x}:{:02x}", u8::from(v6), i as u8)
}

/// Creates the underlay namespace `ns` with its switch.
pub(crate) fn create_underlay(ns: &str) -> Result<(), TestbedError> {
    netns::create(ns)?;
    ip_in(ns, &["link", "add", SWITCH, "type", "bridge"])?;
    ip_in(ns, &["link", "set", SWITCH, "up"])?;
    Ok(())
}

/// Plugs namespace `ns` into the underlay's switch (port `port`) as
/// interface `ifname` holding `addr` (and `addr6`).
fn plug(
    underlay: &str,
    ns: &str,
    port: &str,
    ifname: &str,
    addr: Ipv4Addr,
    addr6: Option<Ipv6Addr>,
) -> Result<(), TestbedError> {
    ip_in(
        underlay,
        &[
            "link", "add", port, "type", "veth", "peer", "name", ifname, "netns", ns,
        ],
    )?;
    ip_in(underlay, &["link", "set", port, "master", SWITCH, "up"])?;
    let cidr = format!("{addr}/{UNDERLAY_PREFIX}");
    ip_in(ns, &["addr", "add", &cidr, "dev", ifname])?;
    if let Some(a6) = addr6 {
        let cidr = format!("{a6}/64");
        ip_in(ns, &["-6", "addr", "add", &cidr, "dev", ifname, "nodad"])?;
    }
    ip_in(ns, &["link", "set", ifname, "up"])?;
    Ok(())
}

/// Plugs node `i` (namespace `node`) into the underlay as
/// [`underlay_addr`]`(i)` (and [`underlay_addr6`]`(i)` when `dual`), on
/// interface `ifname`.
pub(crate) fn plug_node(
    underlay: &str,
    node: &str,
    i: usize,
    dual: bool,
    ifname: &str,
) -> Result<(), TestbedError> {
    plug(
        underlay,
        node,
        &format!("n{i}"),
        ifname,
        underlay_addr(i),
        dual.then(|| underlay_addr6(i)),
    )
}

/// Where a node is on the underlay (its VXLAN traffic's source).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct UnderlayAddr {
    /// IPv4 (carries `flannel.1`).
    pub v4: Ipv4Addr,
    /// IPv6 (carries `flannel-v6.1` on a dual-stack bed).
    pub v6: Option<Ipv6Addr>,
}

/// Node `i`'s address on the bed's own underlay.
pub fn underlay(i: usize, dual: bool) -> UnderlayAddr {
    UnderlayAddr {
        v4: underlay_addr(i),
        v6: dual.then(|| underlay_addr6(i)),
    }
}

/// Creates node `i`'s VXLAN device(s) (namespace `node`, already on the
/// underlay at `at`, through interface `ifname`) with the node's VXLAN
/// address(es).
pub(crate) fn attach_node(
    node: &str,
    i: usize,
    at: UnderlayAddr,
    ifname: &str,
) -> Result<(), TestbedError> {
    vxlan(
        node,
        VXLAN_IF,
        &vtep_mac(i, false),
        &at.v4.to_string(),
        ifname,
    )?;
    let own = format!("{}/32", vtep_addr(i));
    ip_in(node, &["addr", "add", &own, "dev", VXLAN_IF])?;
    if let Some(v6) = at.v6 {
        vxlan(node, VXLAN6_IF, &vtep_mac(i, true), &v6.to_string(), ifname)?;
        let own = format!("{}/128", vtep_addr6(i));
        ip_in(
            node,
            &["-6", "addr", "add", &own, "dev", VXLAN6_IF, "nodad"],
        )?;
    }
    Ok(())
}

fn vxlan(
    node: &str,
    dev: &str,
    mac: &str,
    local: &str,
    underlay_if: &str,
) -> Result<(), TestbedError> {
    let vni = VNI.to_string();
    let port = VXLAN_PORT.to_string();
    let mtu = OVERLAY_MTU.to_string();
    ip_in(
        node,
        &[
            "link",
            "add",
            dev,
            "address",
            mac,
            "mtu",
            &mtu,
            "type",
            "vxlan",
            "id",
            &vni,
            "local",
            local,
            "dev",
            underlay_if,
            "dstport",
            &port,
            "nolearning",
        ],
    )?;
    ip_in(node, &["link", "set", dev, "up"])?;
    Ok(())
}

/// Writes into namespace `node` what flanneld writes when it learns of
/// node `peer` (on the underlay at `at`) with pod network `net`: route,
/// neighbour, FDB.
pub(crate) fn learn_peer(
    node: &str,
    peer: usize,
    at: UnderlayAddr,
    net: &NodeNet,
) -> Result<(), TestbedError> {
    let via = vtep_addr(peer).to_string();
    let mac = vtep_mac(peer, false);
    ip_in(
        node,
        &[
            "neigh",
            "replace",
            &via,
            "lladdr",
            &mac,
            "dev",
            VXLAN_IF,
            "nud",
            "permanent",
        ],
    )?;
    fdb(node, &mac, VXLAN_IF, &at.v4.to_string())?;
    let subnet = format!("{}/{}", net.subnet.0, net.subnet.1);
    ip_in(
        node,
        &[
            "route", "replace", &subnet, "via", &via, "dev", VXLAN_IF, "onlink",
        ],
    )?;
    if let (Some((net6, prefix6)), Some(under6)) = (net.subnet6, at.v6) {
        let via = vtep_addr6(peer).to_string();
        let mac = vtep_mac(peer, true);
        ip_in(
            node,
            &[
                "-6",
                "neigh",
                "replace",
                &via,
                "lladdr",
                &mac,
                "dev",
                VXLAN6_IF,
                "nud",
                "permanent",
            ],
        )?;
        fdb(node, &mac, VXLAN6_IF, &under6.to_string())?;
        let subnet = format!("{net6}/{prefix6}");
        ip_in(
            node,
            &[
                "-6", "route", "replace", &subnet, "via", &via, "dev", VXLAN6_IF, "onlink",
            ],
        )?;
    }
    Ok(())
}

fn fdb(node: &str, mac: &str, dev: &str, dst: &str) -> Result<(), TestbedError> {
    run(
        "bridge",
        &[
            "-n",
            node,
            "fdb",
            "append",
            mac,
            "dev",
            dev,
            "dst",
            dst,
            "self",
            "permanent",
        ],
    )
    .map(drop)
}

/// Creates the outside namespace `outside` on the underlay, holding every
/// outside address; routes each node's pod subnets (`nodes[i]` in namespace
/// `node_ns[i]`) to the node and the outside addresses from every node to
/// it. No NAT.
pub(crate) fn wire_outside(
    underlay: &str,
    outside: &str,
    nodes: &[(String, NodeNet)],
    addrs: &[Ipv4Addr],
    addrs6: &[Ipv6Addr],
) -> Result<(), TestbedError> {
    netns::create(outside)?;
    let dual = nodes.iter().any(|(_, n)| n.subnet6.is_some()) || !addrs6.is_empty();
    if dual {
        sysctl_in(outside, "net.ipv6.conf.all.accept_dad=0")?;
        sysctl_in(outside, "net.ipv6.conf.default.accept_dad=0")?;
    }
    plug(
        underlay,
        outside,
        "out",
        UNDERLAY_IF,
        OUTSIDE_ROUTER,
        dual.then_some(OUTSIDE_ROUTER6),
    )?;
    for ip in addrs {
        let host = format!("{ip}/32");
        ip_in(outside, &["addr", "add", &host, "dev", UNDERLAY_IF])?;
    }
    for ip in addrs6 {
        let host = format!("{ip}/128");
        ip_in(
            outside,
            &["-6", "addr", "add", &host, "dev", UNDERLAY_IF, "nodad"],
        )?;
    }
    let router = OUTSIDE_ROUTER.to_string();
    let router6 = OUTSIDE_ROUTER6.to_string();
    for (i, (ns, net)) in nodes.iter().enumerate() {
        let subnet = format!("{}/{}", net.subnet.0, net.subnet.1);
        let node = underlay_addr(i).to_string();
        ip_in(outside, &["route", "add", &subnet, "via", &node])?;
        for ip in addrs {
            let host = format!("{ip}/32");
            ip_in(ns, &["route", "add", &host, "via", &router])?;
        }
        if let Some((net6, prefix6)) = net.subnet6 {
            let subnet = format!("{net6}/{prefix6}");
            let node = underlay_addr6(i).to_string();
            ip_in(outside, &["-6", "route", "add", &subnet, "via", &node])?;
            for ip in addrs6 {
                let host = format!("{ip}/128");
                ip_in(ns, &["-6", "route", "add", &host, "via", &router6])?;
            }
        }
    }
    Ok(())
}
