//! Layer-2 source validation on crafted frames (BPF_PROG_TEST_RUN): a frame
//! leaving a pod must carry the pod's MAC (as its Ethernet source and, for
//! ARP, its sender hardware address); its neighbour advertisements may name
//! only its own addresses; router advertisements and redirects from a pod
//! are dropped. Also ICMP errors: "related" only when the error goes back
//! to the quoted packet's sender, and never judged on a previous packet's
//! NodePort client. Needs root.

#[path = "support/kernel.rs"]
mod kernel;
#[path = "support/packets.rs"]
mod packets;

use std::time::Duration;

use kernel::{in_netns, open, run, sources, StateBuilder};
use packets::*;
use policy_agent::dataplane::{
    kernel::{
        peer_mac, KernelDataplane, TestVerdict, PROG_NODE_INGRESS, PROG_POD_EGRESS,
        PROG_POD_INGRESS,
    },
    Dataplane,
};
use policy_common::{client_mark, dir, ep_flags, reason, verdict};
use policy_engine::state::PortMatch;

use TestVerdict::{Allow, Drop};

const EP: u32 = 3;
/// The source MAC of the frame builders (`packets::eth_raw`).
const POD_MAC: [u8; 6] = [0x02, 0, 0, 0, 0, 2];
const VICTIM_MAC: [u8; 6] = [0x02, 0, 0, 0, 0, 9];

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

fn egress(dp: &mut KernelDataplane, ifindex: u32, f: &[u8]) -> TestVerdict {
    dp.test_run(PROG_POD_EGRESS, f, ifindex)
        .unwrap_or_else(|e| panic!("test run: {e}"))
}

fn expect(what: &str, got: TestVerdict, want: TestVerdict) {
    assert_eq!(got, want, "{what}");
}

/// `f` with its Ethernet source replaced by `mac`.
fn with_src(mut f: Vec<u8>, mac: [u8; 6]) -> Vec<u8> {
    f[6..12].copy_from_slice(&mac);
    f
}

/// An ARP packet (Ethernet, IPv4) with sender addresses `sha` and `spa`.
fn arp(op: u16, sha: [u8; 6], spa: [u8; 4], tpa: [u8; 4]) -> Vec<u8> {
    let mut a = vec![0, 1, 0x08, 0x00, 6, 4];
    a.extend_from_slice(&op.to_be_bytes());
    a.extend_from_slice(&sha);
    a.extend_from_slice(&spa);
    a.extend_from_slice(&[0; 6]);
    a.extend_from_slice(&tpa);
    eth_raw(0x0806, &a)
}

fn link_local(iid: [u8; 8]) -> Ip {
    let mut a = [0u8; 16];
    a[0] = 0xfe;
    a[1] = 0x80;
    a[8..].copy_from_slice(&iid);
    Ip::V6(a)
}

/// The pod's EUI-64 link-local address.
fn pod_link_local() -> Ip {
    Ip::V6(policy_engine::packet::eui64_link_local(POD_MAC))
}

/// A neighbour advertisement from `src` (solicited, override) for `target`.
fn na(src: Ip, target: Ip) -> Vec<u8> {
    let mut rest = vec![0x60, 0, 0, 0];
    rest.extend_from_slice(&target.mapped());
    frame(src, v6(0x1), &icmp(true, 136, 0, &rest))
}

/// A dataplane where the pod (its MAC known) may send anywhere, and an
/// egress-isolated one for the ICMP tests.
fn setup(dp: &mut KernelDataplane, egress_isolated: bool) {
    sources(dp, &[(EP, &[pod().mapped(), pod6().mapped()])]);
    let flags = if egress_isolated {
        ep_flags::ISOLATED_EGRESS
    } else {
        0
    };
    let state = StateBuilder::default()
        .endpoint(EP, flags)
        .ip(pod().mapped(), 300)
        .ip(pod6().mapped(), 300)
        .ip(peer().mapped(), 301)
        .ip(peer6().mapped(), 301)
        .build();
    dp.apply(&state).unwrap();
}

#[test]
fn frames_leaving_a_pod_must_carry_its_mac() {
    let (mut dp, pins) = open("link-mac");
    let mut events = policy_agent::dataplane::kernel::EventReader::open(&pins.0).unwrap();
    setup(&mut dp, false);
    in_netns(1, |idx| {
        let i = idx[0];
        dp.register_endpoint_with_mac(i, EP, POD_MAC).unwrap();
        let own = frame(pod(), peer(), &udp(5000, 53));
        expect("own MAC", egress(&mut dp, i, &own), Allow);
        expect(
            "the victim's MAC on a packet with the pod's own address",
            egress(&mut dp, i, &with_src(own.clone(), VICTIM_MAC)),
            Drop,
        );
        let own6 = frame(pod6(), peer6(), &udp(5000, 53));
        expect(
            "the victim's MAC, IPv6",
            egress(&mut dp, i, &with_src(own6, VICTIM_MAC)),
            Drop,
        );
        // The measured attack: broadcast ARP with the victim's MAC and the
        // attacker's own address.
        let garp = arp(1, VICTIM_MAC, [10, 0, 0, 10], [10, 0, 0, 10]);
        expect(
            "gratuitous ARP with the victim's MAC",
            egress(&mut dp, i, &with_src(garp, VICTIM_MAC)),
            Drop,
        );
        expect(
            "ARP naming the victim's MAC as sender in a frame from the pod's",
            egress(
                &mut dp,
                i,
                &arp(2, VICTIM_MAC, [10, 0, 0, 10], [10, 0, 0, 1]),
            ),
            Drop,
        );
        expect(
            "ARP naming another pod's address with the pod's MAC",
            egress(&mut dp, i, &arp(2, POD_MAC, [10, 0, 0, 20], [10, 0, 0, 1])),
            Drop,
        );
        expect(
            "the pod's own ARP",
            egress(&mut dp, i, &arp(1, POD_MAC, [10, 0, 0, 10], [10, 0, 0, 1])),
            Allow,
        );
        expect(
            "an ARP probe",
            egress(&mut dp, i, &arp(1, POD_MAC, [0; 4], [10, 0, 0, 10])),
            Allow,
        );
        // Frames delivered to the pod come from other MACs.
        let to_pod = with_src(frame(peer(), pod(), &udp(53, 5000)), VICTIM_MAC);
        expect(
            "ingress from another MAC",
            dp.test_run(PROG_POD_INGRESS, &to_pod, i).unwrap(),
            Allow,
        );
    });
    // Reported (repeats of one flow are counted into the next event, so
    // fewer events than drops) and counted exactly.
    let reported = events
        .poll(Duration::from_millis(500))
        .unwrap()
        .into_iter()
        .filter(|e| {
            e.dir == dir::EGRESS && e.verdict == verdict::DROPPED && e.reason == reason::SPOOFED
        })
        .count();
    assert!(reported >= 1);
    assert_eq!(dp.drop_counts().get(&reason::SPOOFED), Some(&5));
}

#[test]
fn neighbour_discovery_from_a_pod_names_only_its_own_addresses() {
    let (mut dp, _pins) = open("link-nd");
    setup(&mut dp, false);
    in_netns(1, |idx| {
        let i = idx[0];
        dp.register_endpoint_with_mac(i, EP, POD_MAC).unwrap();
        let ll = pod_link_local();
        expect(
            "NA for the pod's own address",
            egress(&mut dp, i, &na(pod6(), pod6())),
            Allow,
        );
        expect(
            "NA for the pod's link-local address",
            egress(&mut dp, i, &na(ll, ll)),
            Allow,
        );
        expect(
            "NA for another pod's address",
            egress(&mut dp, i, &na(pod6(), peer6())),
            Drop,
        );
        expect(
            "NA for another pod's address, from the link-local address",
            egress(&mut dp, i, &na(ll, peer6())),
            Drop,
        );
        expect(
            "NA for another link-local address",
            egress(
                &mut dp,
                i,
                &na(ll, link_local([0, 0, 0, 0xff, 0xfe, 0, 0, 9])),
            ),
            Drop,
        );
        let mut short = na(ll, ll);
        short.truncate(short.len() - 8);
        expect("a truncated NA", egress(&mut dp, i, &short), Drop);
        // Router advertisement (134) and redirect (137).
        let ra = frame(
            ll,
            v6(0x1),
            &icmp(true, 134, 0, &[64, 0, 0x07, 0x08, 0, 0, 0, 0, 0, 0, 0, 0]),
        );
        expect("RA from a pod", egress(&mut dp, i, &ra), Drop);
        let mut redirect_body = vec![0u8; 4];
        redirect_body.extend_from_slice(&peer6().mapped());
        redirect_body.extend_from_slice(&v6(0x30).mapped());
        let redirect = frame(ll, v6(0x1), &icmp(true, 137, 0, &redirect_body));
        expect("redirect from a pod", egress(&mut dp, i, &redirect), Drop);
        // Solicitations keep working; an RA coming from the node does too.
        let ns = frame(ll, v6(0x1), &icmp(true, 135, 0, &[0; 20]));
        expect("NS", egress(&mut dp, i, &ns), Allow);
        let rs = frame(ll, v6(0x2), &icmp(true, 133, 0, &[0; 4]));
        expect("RS", egress(&mut dp, i, &rs), Allow);
        expect(
            "RA to the pod",
            dp.test_run(PROG_POD_INGRESS, &ra, i).unwrap(),
            Allow,
        );
    });
}

#[test]
fn the_mac_is_read_from_the_veth_peer() {
    in_netns(1, |idx| {
        run(&["ip", "link", "set", "pt0p", "address", "02:aa:bb:cc:dd:ee"]);
        assert_eq!(
            peer_mac(idx[0]).unwrap(),
            [0x02, 0xaa, 0xbb, 0xcc, 0xdd, 0xee]
        );
        // Not a veth: no peer, no MAC, no endpoint.
        assert!(peer_mac(1).is_err());
    });
}

/// Port unreachable (type 3, code 3) quoting `inner`, from `src` to `dst`.
fn unreachable(src: Ip, dst: Ip, inner: &[u8]) -> Vec<u8> {
    frame(src, dst, &icmp_error(false, 3, 3, inner))
}

#[test]
fn an_icmp_error_is_related_only_when_it_goes_back_to_the_quoted_sender() {
    let (mut dp, _pins) = open("link-icmp");
    // The pod's egress is isolated and allows nothing; its ingress is open.
    setup(&mut dp, true);
    in_netns(1, |idx| {
        let i = idx[0];
        dp.register_endpoint(i, EP).unwrap();
        // The peer's datagram to the pod: a tracked flow.
        let query = ipv4([10, 0, 0, 20], [10, 0, 0, 10], UDP, &udp(40000, 53).1, 0);
        expect(
            "the peer's datagram",
            dp.test_run(PROG_POD_INGRESS, &eth(&query), i).unwrap(),
            Allow,
        );
        expect(
            "port unreachable back to the peer",
            egress(&mut dp, i, &unreachable(pod(), peer(), &query)),
            Allow,
        );
        expect(
            "the same error sent elsewhere",
            egress(&mut dp, i, &unreachable(pod(), v4(10, 0, 0, 30), &query)),
            Drop,
        );
    });
}

#[test]
fn an_unrelated_icmp_error_is_not_judged_on_the_previous_packets_client() {
    let (mut dp, _pins) = open("link-slot");
    const NODE_IF: u32 = 1;
    let node = v4(10, 0, 0, 1);
    let client = v4(203, 0, 113, 7);
    // The pod admits the client's prefix only (every protocol).
    sources(&mut dp, &[(EP, &[pod().mapped()])]);
    let state = StateBuilder::default()
        .endpoint(EP, ep_flags::ISOLATED_INGRESS)
        .ip(pod().mapped(), 300)
        .cidr(v4(203, 0, 113, 0).mapped(), 120, 400)
        .allow(EP, dir::INGRESS, 400, PortMatch::AnyProtocol, 1)
        .build();
    dp.apply(&state).unwrap();
    // The client slot is per CPU: keep every run on one.
    // SAFETY: a zeroed set with one CPU added, for this thread.
    unsafe {
        let mut set: libc::cpu_set_t = std::mem::zeroed();
        libc::CPU_SET(0, &mut set);
        assert_eq!(
            libc::sched_setaffinity(0, std::mem::size_of::<libc::cpu_set_t>(), &set),
            0
        );
    }
    in_netns(1, |idx| {
        let i = idx[0];
        dp.register_endpoint(i, EP).unwrap();
        // A NodePort client's packet reaches the node: slot 0 of this CPU
        // (a fresh map) holds the client.
        let arriving = frame(client, node, &udp(40000, 30053));
        expect(
            "node_ingress",
            dp.test_run(PROG_NODE_INGRESS, &arriving, NODE_IF).unwrap(),
            Allow,
        );
        // kube-proxy masquerades it as the node: the pod judges the client.
        let masqueraded = frame(node, pod(), &udp(40000, 53));
        let mark = client_mark::FLAG;
        expect(
            "the masqueraded client",
            dp.test_run_marked(PROG_POD_INGRESS, &masqueraded, i, NODE_IF, mark)
                .unwrap(),
            Allow,
        );
        // An ICMP error from an address the pod does not admit, quoting a
        // packet no flow knows: judged as itself.
        let quoted = ipv4([10, 0, 0, 10], [198, 51, 100, 9], UDP, &udp(1, 2).1, 0);
        let error = unreachable(v4(198, 51, 100, 9), pod(), &quoted);
        expect(
            "an unrelated error",
            dp.test_run_forwarded(PROG_POD_INGRESS, &error, i, NODE_IF)
                .unwrap(),
            Drop,
        );
    });
}
