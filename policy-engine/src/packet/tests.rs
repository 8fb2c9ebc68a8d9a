use super::*;

fn eth(ethertype: u16, payload: &[u8]) -> Vec<u8> {
    let mut f = vec![0x02, 0, 0, 0, 0, 1, 0x02, 0, 0, 0, 0, 2];
    f.extend_from_slice(&ethertype.to_be_bytes());
    f.extend_from_slice(payload);
    f
}

fn ipv4(ihl_words: u8, frag: u16, proto: u8, l4: &[u8]) -> Vec<u8> {
    let ihl = usize::from(ihl_words) * 4;
    let mut h = vec![0u8; ihl.max(20)];
    h[0] = 0x40 | ihl_words;
    h[6..8].copy_from_slice(&frag.to_be_bytes());
    h[9] = proto;
    h[12..16].copy_from_slice(&[10, 0, 0, 1]);
    h[16..20].copy_from_slice(&[10, 0, 0, 2]);
    h.extend_from_slice(l4);
    eth(ETH_P_IP, &h)
}

fn ipv6(next: u8, rest: &[u8]) -> Vec<u8> {
    let mut h = vec![0u8; 40];
    h[0] = 0x60;
    h[6] = next;
    h[8] = 0x20;
    h[24] = 0x20;
    h.extend_from_slice(rest);
    eth(ETH_P_IPV6, &h)
}

fn tcp(dport: u16) -> Vec<u8> {
    let mut t = vec![0u8; 20];
    t[0..2].copy_from_slice(&1234u16.to_be_bytes());
    t[2..4].copy_from_slice(&dport.to_be_bytes());
    t[13] = 0x02;
    t
}

fn flow(p: Parsed) -> Flow {
    match p {
        Parsed::Flow(f) => f,
        other => panic!("not a flow: {other:?}"),
    }
}

#[test]
fn short_frames_and_other_ethertypes_are_malformed() {
    assert_eq!(parse(&[]), Parsed::Malformed);
    assert_eq!(parse(&[0; 13]), Parsed::Malformed);
    assert_eq!(parse(&eth(0x88cc, &[0; 40])), Parsed::Malformed);
    // TCP header cut before its flags byte.
    let mut f = ipv4(5, 0, proto::TCP, &tcp(80));
    f.truncate(14 + 20 + 13);
    assert_eq!(parse(&f), Parsed::Malformed);
}

#[test]
fn arp_is_link_control_with_its_sender() {
    let mut a = vec![0, 1, 8, 0, 6, 4, 0, 1, 2, 0, 0, 0, 0, 1, 10, 1, 0, 7];
    assert_eq!(
        parse(&eth(ETH_P_ARP, &a)),
        Parsed::Link {
            saddr: v4_mapped([10, 1, 0, 7]),
            icmp6_type: 0,
            target: [0; 16],
        }
    );
    a[5] = 16;
    assert_eq!(parse(&eth(ETH_P_ARP, &a)), Parsed::Malformed);
}

#[test]
fn ipv4_options_move_the_ports_and_a_later_fragment_has_none() {
    let f = flow(parse(&ipv4(7, 0, proto::TCP, &tcp(443))));
    assert_eq!((f.policy_dport, f.ports_known), (443, true));
    assert_eq!(parse(&ipv4(4, 0, proto::TCP, &tcp(443))), Parsed::Malformed);
    let later = flow(parse(&ipv4(5, 0x0010, proto::TCP, &[])));
    assert_eq!(
        (later.frag, later.ports_known, later.create),
        (Frag::Later, false, false)
    );
    let first = flow(parse(&ipv4(5, 0x2000, proto::UDP, &[0, 1, 0, 53])));
    assert_eq!((first.frag, first.policy_dport), (Frag::First, 53));
}

#[test]
fn ipv6_extension_headers_are_walked_up_to_the_limit() {
    // Hop-by-hop then TCP.
    let mut rest = vec![proto::TCP, 0, 0, 0, 0, 0, 0, 0];
    rest.extend_from_slice(&tcp(22));
    assert_eq!(flow(parse(&ipv6(IPV6_HOP_BY_HOP, &rest))).policy_dport, 22);
    // Eight destination-options headers: no room for the ninth look.
    let mut rest = Vec::new();
    for _ in 0..MAX_IPV6_EXT_HEADERS {
        rest.extend_from_slice(&[IPV6_DEST_OPTS, 0, 0, 0, 0, 0, 0, 0]);
    }
    rest.extend_from_slice(&tcp(22));
    assert_eq!(parse(&ipv6(IPV6_DEST_OPTS, &rest)), Parsed::Malformed);
    // A later fragment.
    let later = flow(parse(&ipv6(
        IPV6_FRAGMENT,
        &[proto::UDP, 0, 0, 0x08, 0, 0, 0, 9],
    )));
    assert_eq!(
        (later.frag, later.frag_id, later.ports_known),
        (Frag::Later, 9, false)
    );
}

#[test]
fn neighbour_discovery_is_link_control() {
    let p = parse(&ipv6(proto::ICMPV6, &[135, 0, 0, 0, 0, 0, 0, 0]));
    assert!(matches!(p, Parsed::Link { .. }));
}

#[test]
fn first_packet_checks_the_source_then_the_policy() {
    let mut state = MapState::default();
    state.endpoints.insert(1, 0);
    let sources = BTreeSet::from([v4_mapped([10, 0, 0, 1])]);
    let f = ipv4(5, 0, proto::TCP, &tcp(80));
    assert_eq!(
        first_packet(&state, &sources, 1, dir::EGRESS, &f),
        (true, FrameReason::Policy(Reason::NotIsolated))
    );
    assert_eq!(
        first_packet(&state, &BTreeSet::new(), 1, dir::EGRESS, &f),
        (false, FrameReason::Spoofed)
    );
    assert_eq!(
        first_packet(&state, &sources, 2, dir::INGRESS, &f),
        (false, FrameReason::Policy(Reason::NotReady))
    );
}
