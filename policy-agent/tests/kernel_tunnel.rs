//! Tunnel injection (BPF_PROG_TEST_RUN): a pod's UDP to the overlay's
//! encapsulation ports (VXLAN 8472 and 4789) of an address that is no
//! pod's — the node's, another node's, anything outside — is dropped unless
//! an ipBlock rule naming the port allows it; the user-space model agrees
//! on every frame. Needs root.

#[path = "support/kernel.rs"]
mod kernel;
#[path = "support/packets.rs"]
mod packets;

use std::collections::BTreeSet;

use kernel::{in_netns, open, sources, StateBuilder};
use packets::*;
use policy_agent::dataplane::{
    kernel::{TestVerdict, PROG_POD_EGRESS},
    Dataplane,
};
use policy_common::{dir, ep_flags, identity};
use policy_engine::state::PortMatch;

use TestVerdict::{Allow, Drop};

/// Egress not isolated.
const OPEN_EP: u32 = 3;
/// Egress isolated; an ipBlock over the node's address, every UDP port.
const ANY_PORT_EP: u32 = 4;
/// Egress isolated; an ipBlock over the node's address, UDP 8472.
const NAMED_EP: u32 = 5;
/// Egress isolated; UDP 8472 and 4789 to every peer (`to` omitted).
const ANY_PEER_EP: u32 = 6;

const NODE_BLOCK: u32 = 400;

fn pod(ep: u32) -> Ip {
    v4(10, 244, 0, ep as u8)
}
fn node() -> Ip {
    v4(10, 0, 0, 1)
}
fn other_node() -> Ip {
    v4(10, 0, 1, 1)
}
fn peer_pod() -> Ip {
    v4(10, 244, 1, 9)
}

#[test]
fn pods_cannot_send_to_the_overlays_port_of_a_node_unless_a_policy_names_it() {
    let (mut dp, _pins) = open("tunnel");
    let eps = [OPEN_EP, ANY_PORT_EP, NAMED_EP, ANY_PEER_EP];
    let addrs: Vec<[u8; 16]> = eps.iter().map(|ep| pod(*ep).mapped()).collect();
    sources(
        &mut dp,
        &eps.iter()
            .zip(&addrs)
            .map(|(ep, a)| (*ep, std::slice::from_ref(a)))
            .collect::<Vec<_>>(),
    );
    let mut b = StateBuilder::default()
        .endpoint(OPEN_EP, 0)
        .endpoint(ANY_PORT_EP, ep_flags::ISOLATED_EGRESS)
        .endpoint(NAMED_EP, ep_flags::ISOLATED_EGRESS)
        .endpoint(ANY_PEER_EP, ep_flags::ISOLATED_EGRESS)
        .ip(node().mapped(), identity::HOST)
        .ip(peer_pod().mapped(), 301)
        .cidr([0; 16], 0, identity::WORLD)
        .cidr(v4(10, 0, 0, 0).mapped(), 96 + 16, NODE_BLOCK)
        .allow(
            ANY_PORT_EP,
            dir::EGRESS,
            NODE_BLOCK,
            PortMatch::AnyPort { proto: UDP },
            1,
        )
        .port(NAMED_EP, dir::EGRESS, NODE_BLOCK, UDP, 8472)
        .port(ANY_PEER_EP, dir::EGRESS, identity::ANY, UDP, 8472)
        .port(ANY_PEER_EP, dir::EGRESS, identity::ANY, UDP, 4789);
    for ep in eps {
        b = b.ip(pod(ep).mapped(), 300 + ep);
    }
    let state = b.build();
    dp.apply(&state).unwrap();

    let cases = [
        (OPEN_EP, node(), 8472, Drop, "to the node's VXLAN port"),
        (OPEN_EP, node(), 4789, Drop, "to the node's IANA VXLAN port"),
        (
            OPEN_EP,
            other_node(),
            8472,
            Drop,
            "to another node's VXLAN port",
        ),
        (
            OPEN_EP,
            v4(203, 0, 113, 5),
            8472,
            Drop,
            "to an outside VXLAN port",
        ),
        (OPEN_EP, node(), 53, Allow, "to another port of the node"),
        (OPEN_EP, peer_pod(), 8472, Allow, "to a pod's port 8472"),
        (
            ANY_PORT_EP,
            node(),
            8472,
            Drop,
            "an ipBlock allowing every port",
        ),
        (ANY_PORT_EP, node(), 53, Allow, "that ipBlock, another port"),
        (NAMED_EP, node(), 8472, Allow, "an ipBlock naming the port"),
        (
            NAMED_EP,
            other_node(),
            8472,
            Allow,
            "that ipBlock, another node",
        ),
        (
            NAMED_EP,
            node(),
            4789,
            Drop,
            "that ipBlock, the other VXLAN port",
        ),
        (ANY_PEER_EP, node(), 8472, Drop, "the port to every peer"),
        (
            ANY_PEER_EP,
            peer_pod(),
            8472,
            Allow,
            "the port to every peer, a pod",
        ),
    ];
    in_netns(4, |idx| {
        for (i, ep) in idx.iter().zip(eps) {
            dp.register_endpoint(*i, ep).unwrap();
        }
        for (ep, dst, port, want, what) in cases {
            let i = idx[eps.iter().position(|e| *e == ep).unwrap()];
            let f = frame(pod(ep), dst, &udp(40000, port));
            let got = dp.test_run(PROG_POD_EGRESS, &f, i).unwrap();
            assert_eq!(got, want, "endpoint {ep}: {what}");
            let own: BTreeSet<[u8; 16]> = [pod(ep).mapped()].into();
            let (allowed, why) =
                policy_engine::packet::first_packet(&state, &own, ep, dir::EGRESS, &f);
            assert_eq!(
                allowed,
                want == Allow,
                "model, endpoint {ep}: {what} ({why:?})"
            );
            dp.forget_flow(ep, dir::EGRESS, &f).unwrap();
        }
    });
}
