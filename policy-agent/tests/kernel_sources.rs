//! Source validation on crafted frames (BPF_PROG_TEST_RUN): a packet
//! leaving a pod must come from one of the pod's addresses, whatever its
//! protocol, fragment or family; ARP and IPv6 neighbour discovery keep
//! working but cannot claim another address; drops are reported with
//! reason `SPOOFED` and counted per reason. Needs root.

#[path = "support/kernel.rs"]
mod kernel;
#[path = "support/packets.rs"]
mod packets;

use std::collections::{BTreeMap, BTreeSet};
use std::time::Duration;

use kernel::{in_netns, open, StateBuilder};
use packets::*;
use policy_agent::dataplane::{
    kernel::{KernelDataplane, TestVerdict, PROG_POD_EGRESS, PROG_POD_INGRESS},
    Dataplane,
};
use policy_common::{dir, ep_flags, identity, reason, v4_mapped, verdict};

use TestVerdict::{Allow, Drop};

const EP: u32 = 3;
const OTHER_EP: u32 = 4;

fn pod() -> Ip {
    v4(10, 0, 0, 10)
}
fn pod6() -> Ip {
    v6(0x10)
}
fn peer() -> Ip {
    v4(10, 0, 0, 20)
}
fn peer6() -> Ip {
    v6(0x20)
}
fn node() -> Ip {
    v4(10, 0, 0, 1)
}

/// The pod may send anywhere (egress not isolated); its ingress admits the
/// node (identity HOST) and nothing else.
fn state() -> StateBuilder {
    StateBuilder::default()
        .endpoint(EP, ep_flags::ISOLATED_INGRESS)
        .endpoint(OTHER_EP, ep_flags::ISOLATED_INGRESS)
        .ip(pod().mapped(), 300)
        .ip(pod6().mapped(), 300)
        .ip(peer().mapped(), 301)
        .ip(peer6().mapped(), 301)
        .ip(node().mapped(), identity::HOST)
}

fn sources(dp: &mut KernelDataplane) {
    let mut s: BTreeMap<u32, BTreeSet<[u8; 16]>> = BTreeMap::new();
    s.insert(EP, [pod().mapped(), pod6().mapped()].into());
    s.insert(OTHER_EP, [peer().mapped(), peer6().mapped()].into());
    dp.set_sources(&s).unwrap();
}

fn egress(dp: &mut KernelDataplane, ifindex: u32, f: &[u8]) -> TestVerdict {
    dp.test_run(PROG_POD_EGRESS, f, ifindex)
        .unwrap_or_else(|e| panic!("test run: {e}"))
}

fn expect(what: &str, got: TestVerdict, want: TestVerdict) {
    assert_eq!(got, want, "{what}");
}

/// An ARP packet (Ethernet, IPv4) with sender address `spa`.
fn arp(op: u16, spa: [u8; 4], tpa: [u8; 4]) -> Vec<u8> {
    let mut a = vec![0, 1, 0x08, 0x00, 6, 4];
    a.extend_from_slice(&op.to_be_bytes());
    a.extend_from_slice(&[0x02, 0, 0, 0, 0, 2]);
    a.extend_from_slice(&spa);
    a.extend_from_slice(&[0; 6]);
    a.extend_from_slice(&tpa);
    eth_raw(0x0806, &a)
}

fn link_local(last: u8) -> Ip {
    let mut a = [0u8; 16];
    a[0] = 0xfe;
    a[1] = 0x80;
    a[15] = last;
    Ip::V6(a)
}

#[test]
fn packets_leaving_a_pod_must_carry_its_own_address() {
    let (mut dp, pins) = open("sources");
    let mut events = policy_agent::dataplane::kernel::EventReader::open(&pins.0).unwrap();
    sources(&mut dp);
    dp.apply(&state().build()).unwrap();
    in_netns(2, |idx| {
        let (i, other) = (idx[0], idx[1]);
        dp.register_endpoint(i, EP).unwrap();
        dp.register_endpoint(other, OTHER_EP).unwrap();

        // Honest traffic of both families passes.
        let own = frame(pod(), peer(), &udp(5000, 53));
        expect("own IPv4", egress(&mut dp, i, &own), Allow);
        let own6 = frame(pod6(), peer6(), &udp(5000, 53));
        expect("own IPv6", egress(&mut dp, i, &own6), Allow);
        // The peer's own veth lets the peer use its address.
        let peers = frame(peer(), pod(), &udp(5000, 53));
        expect(
            "peer on its own veth",
            egress(&mut dp, other, &peers),
            Allow,
        );

        // Forged peer, forged node address, forged IPv6, on every
        // protocol the parser knows and on a non-first fragment.
        let forged = [
            (
                "forged peer (UDP)",
                frame(peer(), v4(10, 0, 0, 30), &udp(5000, 53)),
            ),
            (
                "forged peer (TCP SYN)",
                frame(peer(), v4(10, 0, 0, 30), &tcp(5000, 80, SYN)),
            ),
            ("forged node address", frame(node(), peer(), &udp(5000, 53))),
            (
                "forged node address (ICMP)",
                frame(node(), peer(), &echo(false, true, 7)),
            ),
            ("forged IPv6 peer", frame(peer6(), v6(0x30), &udp(5000, 53))),
            (
                "forged IPv6, TCP",
                frame(peer6(), v6(0x30), &tcp(5000, 80, SYN)),
            ),
            (
                "forged source on a non-first fragment",
                eth(&ipv4([10, 0, 0, 20], [10, 0, 0, 30], UDP, &[0; 16], 0x0010)),
            ),
            (
                "IPv6 link-local source outside neighbour discovery",
                frame(link_local(9), v6(0x30), &udp(5000, 53)),
            ),
        ];
        for (what, f) in &forged {
            expect(what, egress(&mut dp, i, f), Drop);
        }

        // ARP keeps working for the pod's own address and probes; an ARP
        // claiming another address (cache poisoning) is a forgery too.
        expect(
            "ARP request",
            egress(&mut dp, i, &arp(1, [10, 0, 0, 10], [10, 0, 0, 1])),
            Allow,
        );
        expect(
            "ARP reply",
            egress(&mut dp, i, &arp(2, [10, 0, 0, 10], [10, 0, 0, 1])),
            Allow,
        );
        expect(
            "ARP probe",
            egress(&mut dp, i, &arp(1, [0; 4], [10, 0, 0, 10])),
            Allow,
        );
        expect(
            "ARP claiming the gateway",
            egress(&mut dp, i, &arp(2, [10, 0, 0, 1], [10, 0, 0, 20])),
            Drop,
        );
        // Neighbour discovery from the link-local, the unspecified (DAD)
        // and the pod's own address.
        let ns = |src: Ip| frame(src, v6(0x1), &icmp(true, 135, 0, &[0; 20]));
        expect(
            "NS from link-local",
            egress(&mut dp, i, &ns(link_local(9))),
            Allow,
        );
        expect(
            "NS for DAD",
            egress(&mut dp, i, &ns(Ip::V6([0; 16]))),
            Allow,
        );
        expect(
            "NS from own address",
            egress(&mut dp, i, &ns(pod6())),
            Allow,
        );
        expect(
            "NS from a forged address",
            egress(&mut dp, i, &ns(peer6())),
            Drop,
        );

        // Ingress is not source-validated here (the sender's veth did it):
        // the node reaching the pod still passes.
        let from_node = frame(node(), pod(), &tcp(40000, 8080, SYN));
        expect(
            "node to pod (ingress)",
            dp.test_run(PROG_POD_INGRESS, &from_node, i).unwrap(),
            Allow,
        );

        // A forgery on the peer's veth of the pod's address is refused too.
        expect(
            "peer forging the pod",
            egress(&mut dp, other, &frame(pod(), peer(), &udp(1, 2))),
            Drop,
        );
    });

    // Every forgery was reported as such and counted.
    let mut seen = Vec::new();
    for ev in events.poll(Duration::from_millis(500)).unwrap() {
        if ev.dir == dir::EGRESS && ev.verdict == verdict::DROPPED {
            seen.push(ev);
        }
    }
    let spoofed: Vec<_> = seen
        .iter()
        .filter(|e| e.reason == reason::SPOOFED)
        .collect();
    // 8 forged IP packets, 1 ARP, 1 NS on the pod's veth; 1 on the peer's.
    assert_eq!(spoofed.len(), 11, "{seen:?}");
    assert!(spoofed
        .iter()
        .any(|e| e.saddr == v4_mapped([10, 0, 0, 1]) && e.ep_id == EP));
    let counts = dp.drop_counts();
    assert_eq!(counts.get(&reason::SPOOFED), Some(&11), "{counts:?}");
}

#[test]
fn addresses_follow_the_endpoints() {
    let (mut dp, _pins) = open("sources-change");
    dp.apply(&state().build()).unwrap();
    in_netns(1, |idx| {
        let i = idx[0];
        dp.register_endpoint(i, EP).unwrap();
        let own = frame(pod(), peer(), &udp(5000, 53));
        // No addresses yet: nothing leaves (fail closed).
        expect("before any source is set", egress(&mut dp, i, &own), Drop);
        sources(&mut dp);
        expect("once set", egress(&mut dp, i, &own), Allow);
        // The endpoint's addresses change (a new sandbox got the id): the
        // old ones are gone at once.
        let mut s: BTreeMap<u32, BTreeSet<[u8; 16]>> = BTreeMap::new();
        s.insert(EP, [v4(10, 0, 0, 40).mapped()].into());
        dp.set_sources(&s).unwrap();
        expect("old address", egress(&mut dp, i, &own), Drop);
        let new = frame(v4(10, 0, 0, 40), peer(), &udp(5000, 53));
        expect("new address", egress(&mut dp, i, &new), Allow);
        dp.set_sources(&BTreeMap::new()).unwrap();
        expect("endpoint gone", egress(&mut dp, i, &new), Drop);
    });
}
