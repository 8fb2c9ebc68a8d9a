//! Services in the tc programs, on crafted frames (BPF_PROG_TEST_RUN; SCTP
//! has no sockets on this kernel): a pod's packet to a ClusterIP is
//! deferred at its own hook, its egress is judged at the backend's hook on
//! the translated packet (backend address and target port), replies from
//! the ClusterIP pass as replies, a change that denies the backend cuts the
//! established flow, and a forwarded packet carrying a node address gets no
//! ingress exemption. Needs root.

#[path = "support/kernel.rs"]
mod kernel;
#[path = "support/packets.rs"]
mod packets;

use kernel::{in_netns, open, StateBuilder};
use packets::*;
use policy_agent::dataplane::{
    kernel::{KernelDataplane, TestVerdict, PROG_NODE_EGRESS, PROG_POD_EGRESS, PROG_POD_INGRESS},
    Dataplane,
};
use policy_common::{dir, ep_flags, identity};
use policy_engine::state::{MapState, PortMatch};

use TestVerdict::{Allow, Drop};

const CLIENT_EP: u32 = 10;
const WEB_EP: u32 = 11;
const CLIENT_ID: u32 = 299;
const WEB_ID: u32 = 300;
const RANGE_ID: u32 = 500;

fn client() -> Ip {
    v4(10, 244, 0, 10)
}
fn web() -> Ip {
    v4(10, 244, 0, 20)
}
fn vip() -> Ip {
    v4(10, 96, 0, 20)
}
fn node() -> Ip {
    v4(10, 244, 0, 1)
}

/// client: egress isolated, may send SCTP/3868 and TCP/8080 to web, and
/// anything to 10.96.0.0/12 (which must never match a ClusterIP). web:
/// ingress isolated, accepts any SCTP and TCP/8080 from client. The
/// ClusterIP is a Service; both pods are local endpoints.
fn state(client_to_web: bool) -> MapState {
    let mut b = StateBuilder::default()
        .endpoint(CLIENT_EP, ep_flags::ISOLATED_EGRESS)
        .endpoint(WEB_EP, ep_flags::ISOLATED_INGRESS)
        .ip(client().mapped(), CLIENT_ID)
        .ip(web().mapped(), WEB_ID)
        .ip(node().mapped(), identity::HOST)
        .cidr(v4(10, 96, 0, 0).mapped(), 96 + 12, RANGE_ID)
        .cidr([0; 16], 0, identity::WORLD)
        .allow(CLIENT_EP, dir::EGRESS, RANGE_ID, PortMatch::AnyProtocol, 1)
        .allow(
            WEB_EP,
            dir::INGRESS,
            CLIENT_ID,
            PortMatch::AnyPort { proto: SCTP },
            2,
        )
        .port(WEB_EP, dir::INGRESS, CLIENT_ID, TCP, 8080);
    if client_to_web {
        b = b.port(CLIENT_EP, dir::EGRESS, WEB_ID, SCTP, 3868).port(
            CLIENT_EP,
            dir::EGRESS,
            WEB_ID,
            TCP,
            8080,
        );
    }
    let mut s = b.build();
    s.services
        .insert(vip().mapped(), policy_common::service_flags::ALL_LOCAL);
    s.local_addrs.insert(client().mapped(), CLIENT_EP);
    s.local_addrs.insert(web().mapped(), WEB_EP);
    s
}

/// Registers client's and web's veths (`c`, `w`) with their addresses as
/// the only sources they may send from.
fn client_and_web(dp: &mut KernelDataplane, c: u32, w: u32) {
    endpoints(dp, (c, client()), (w, web()));
}

/// Registers veth `c` as client and `w` as web, each sending from its
/// address only.
fn endpoints(dp: &mut KernelDataplane, (c, client): (u32, Ip), (w, web): (u32, Ip)) {
    dp.register_endpoint(c, CLIENT_EP).unwrap();
    dp.register_endpoint(w, WEB_EP).unwrap();
    kernel::sources(
        dp,
        &[(CLIENT_EP, &[client.mapped()]), (WEB_EP, &[web.mapped()])],
    );
}

fn run(dp: &mut KernelDataplane, prog: &str, ifindex: u32, f: &[u8]) -> TestVerdict {
    dp.test_run(prog, f, ifindex)
        .unwrap_or_else(|e| panic!("test run: {e}"))
}

fn expect(what: &str, got: TestVerdict, want: TestVerdict) {
    assert_eq!(got, want, "{what}");
}

#[test]
fn cluster_ip_egress_is_judged_on_the_backend_for_sctp_and_tcp() {
    let (mut dp, _pins) = open("svc-backend");
    dp.apply(&state(true)).unwrap();
    in_netns(2, |idx| {
        let (c, w) = (idx[0], idx[1]);
        client_and_web(&mut dp, c, w);
        // At the client's hook the ClusterIP is deferred, whatever the port.
        for (what, l4) in [
            ("sctp INIT to the ClusterIP", sctp(7000, 3868, 1)),
            (
                "sctp INIT to the ClusterIP, other port",
                sctp(7001, 3869, 1),
            ),
            ("tcp SYN to the ClusterIP", tcp(40000, 80, SYN)),
        ] {
            expect(
                what,
                run(&mut dp, PROG_POD_EGRESS, c, &frame(client(), vip(), &l4)),
                Allow,
            );
        }
        // At web's hook, translated: client's egress on the target port.
        expect(
            "translated sctp/3868",
            run(
                &mut dp,
                PROG_POD_INGRESS,
                w,
                &frame(client(), web(), &sctp(7000, 3868, 1)),
            ),
            Allow,
        );
        expect(
            "translated sctp/3869: web accepts it, client's egress does not",
            run(
                &mut dp,
                PROG_POD_INGRESS,
                w,
                &frame(client(), web(), &sctp(7001, 3869, 1)),
            ),
            Drop,
        );
        expect(
            "translated tcp/8080",
            run(
                &mut dp,
                PROG_POD_INGRESS,
                w,
                &frame(client(), web(), &tcp(40000, 8080, SYN)),
            ),
            Allow,
        );
        // web answers; after reverse translation the reply comes from the
        // ClusterIP and passes the client's hook as a reply.
        expect(
            "web's INIT ACK leaves web",
            run(
                &mut dp,
                PROG_POD_EGRESS,
                w,
                &frame(web(), client(), &sctp(3868, 7000, 2)),
            ),
            Allow,
        );
        expect(
            "INIT ACK from the ClusterIP reaches client",
            run(
                &mut dp,
                PROG_POD_INGRESS,
                c,
                &frame(vip(), client(), &sctp(3868, 7000, 2)),
            ),
            Allow,
        );
        expect(
            "SYN-ACK from the ClusterIP reaches client",
            run(
                &mut dp,
                PROG_POD_INGRESS,
                c,
                &frame(vip(), client(), &tcp(80, 40000, SYN | ACK)),
            ),
            Allow,
        );
    });
}

#[test]
fn service_range_ipblock_reaches_no_backend() {
    let (mut dp, _pins) = open("svc-range");
    dp.apply(&state(false)).unwrap();
    in_netns(2, |idx| {
        let (c, w) = (idx[0], idx[1]);
        client_and_web(&mut dp, c, w);
        expect(
            "to the ClusterIP: deferred",
            run(
                &mut dp,
                PROG_POD_EGRESS,
                c,
                &frame(client(), vip(), &sctp(7000, 3868, 1)),
            ),
            Allow,
        );
        expect(
            "translated: 10.96.0.0/12 does not cover the backend",
            run(
                &mut dp,
                PROG_POD_INGRESS,
                w,
                &frame(client(), web(), &sctp(7000, 3868, 1)),
            ),
            Drop,
        );
        expect(
            "translated tcp",
            run(
                &mut dp,
                PROG_POD_INGRESS,
                w,
                &frame(client(), web(), &tcp(40000, 8080, SYN)),
            ),
            Drop,
        );
    });
}

#[test]
fn established_flow_through_a_cluster_ip_is_cut_by_a_change() {
    let (mut dp, _pins) = open("svc-cut");
    dp.apply(&state(true)).unwrap();
    in_netns(2, |idx| {
        let (c, w) = (idx[0], idx[1]);
        client_and_web(&mut dp, c, w);
        let to_vip = frame(client(), vip(), &sctp(7000, 3868, 0));
        let translated = frame(client(), web(), &sctp(7000, 3868, 0));
        expect(
            "open",
            run(
                &mut dp,
                PROG_POD_EGRESS,
                c,
                &frame(client(), vip(), &sctp(7000, 3868, 1)),
            ),
            Allow,
        );
        expect(
            "open, translated",
            run(
                &mut dp,
                PROG_POD_INGRESS,
                w,
                &frame(client(), web(), &sctp(7000, 3868, 1)),
            ),
            Allow,
        );
        expect(
            "DATA",
            run(&mut dp, PROG_POD_INGRESS, w, &translated),
            Allow,
        );
        // The change: client may no longer reach web.
        dp.apply(&state(false)).unwrap();
        expect(
            "DATA to the ClusterIP, client's hook",
            run(&mut dp, PROG_POD_EGRESS, c, &to_vip),
            Allow,
        );
        expect(
            "DATA, translated, after the change",
            run(&mut dp, PROG_POD_INGRESS, w, &translated),
            Drop,
        );
        expect(
            "and after",
            run(&mut dp, PROG_POD_INGRESS, w, &translated),
            Drop,
        );
    });
}

#[test]
fn node_address_is_exempt_only_when_the_node_sent_it() {
    let (mut dp, _pins) = open("svc-masq");
    dp.apply(&state(true)).unwrap();
    in_netns(2, |idx| {
        let (c, w) = (idx[0], idx[1]);
        dp.register_endpoint(w, WEB_EP).unwrap();
        kernel::sources(
            &mut dp,
            &[
                (CLIENT_EP, &[client().mapped()]),
                (WEB_EP, &[web().mapped()]),
            ],
        );
        let probe = frame(node(), web(), &tcp(40000, 9000, SYN));
        expect(
            "kubelet probe from the node's stack",
            run(&mut dp, PROG_POD_INGRESS, w, &probe),
            Allow,
        );
        let masqueraded = frame(node(), web(), &tcp(40001, 8080, SYN));
        let got = dp
            .test_run_forwarded(PROG_POD_INGRESS, &masqueraded, w, c)
            .unwrap();
        expect(
            "NodePort client masqueraded to the node's address",
            got,
            Drop,
        );
    });
}

#[test]
fn service_with_backends_elsewhere_fails_closed_without_the_node_hook() {
    let (mut dp, _pins) = open("svc-remote");
    let remote_vip = v4(10, 96, 0, 30);
    let mut s = state(true);
    s.services.insert(remote_vip.mapped(), 0);
    dp.apply(&s).unwrap();
    in_netns(2, |idx| {
        let (c, w) = (idx[0], idx[1]);
        client_and_web(&mut dp, c, w);
        expect(
            "egress-isolated client to a Service with remote backends",
            run(
                &mut dp,
                PROG_POD_EGRESS,
                c,
                &frame(client(), remote_vip, &tcp(40000, 80, SYN)),
            ),
            Drop,
        );
        expect(
            "web (egress not isolated) to the same Service",
            run(
                &mut dp,
                PROG_POD_EGRESS,
                w,
                &frame(web(), remote_vip, &tcp(40000, 80, SYN)),
            ),
            Allow,
        );
    });
}

/// The same over IPv6 (a dual-stack Service's IPv6 ClusterIP): deferred at
/// the client's hook whatever the port, the client's egress judged on the
/// backend's address and target port at the backend's hook, the reply from
/// the ClusterIP passing as a reply.
#[test]
fn cluster_ip_egress_is_judged_on_the_backend_over_ipv6() {
    let (client6, web6, vip6) = (v6(10), v6(20), v6(0x9620));
    let mut s = StateBuilder::default()
        .endpoint(CLIENT_EP, ep_flags::ISOLATED_EGRESS)
        .endpoint(WEB_EP, ep_flags::ISOLATED_INGRESS)
        .ip(client6.mapped(), CLIENT_ID)
        .ip(web6.mapped(), WEB_ID)
        .cidr([0; 16], 0, identity::WORLD)
        .allow(
            WEB_EP,
            dir::INGRESS,
            CLIENT_ID,
            PortMatch::AnyPort { proto: TCP },
            2,
        )
        .port(CLIENT_EP, dir::EGRESS, WEB_ID, TCP, 8080)
        .build();
    s.services
        .insert(vip6.mapped(), policy_common::service_flags::ALL_LOCAL);
    s.local_addrs.insert(client6.mapped(), CLIENT_EP);
    s.local_addrs.insert(web6.mapped(), WEB_EP);
    let (mut dp, _pins) = open("svc-v6");
    dp.apply(&s).unwrap();
    in_netns(2, |idx| {
        let (c, w) = (idx[0], idx[1]);
        endpoints(&mut dp, (c, client6), (w, web6));
        for (what, l4) in [
            ("SYN to the IPv6 ClusterIP", tcp(40000, 80, SYN)),
            ("SYN to another port of it", tcp(40001, 81, SYN)),
        ] {
            expect(
                what,
                run(&mut dp, PROG_POD_EGRESS, c, &frame(client6, vip6, &l4)),
                Allow,
            );
        }
        expect(
            "translated to 8080: client's egress allows it",
            run(
                &mut dp,
                PROG_POD_INGRESS,
                w,
                &frame(client6, web6, &tcp(40000, 8080, SYN)),
            ),
            Allow,
        );
        expect(
            "translated to 9090: web accepts it, client's egress does not",
            run(
                &mut dp,
                PROG_POD_INGRESS,
                w,
                &frame(client6, web6, &tcp(40001, 9090, SYN)),
            ),
            Drop,
        );
        expect(
            "web's SYN-ACK leaves web",
            run(
                &mut dp,
                PROG_POD_EGRESS,
                w,
                &frame(web6, client6, &tcp(8080, 40000, SYN | ACK)),
            ),
            Allow,
        );
        expect(
            "SYN-ACK from the IPv6 ClusterIP reaches client",
            run(
                &mut dp,
                PROG_POD_INGRESS,
                c,
                &frame(vip6, client6, &tcp(80, 40000, SYN | ACK)),
            ),
            Allow,
        );
    });
}

/// A backend on another node: with the overlay device's check attached
/// (`NODE_HOOK`), the client's packet to the ClusterIP is deferred at its
/// own hook and its egress judged at `node_egress` on the translated
/// packet (backend address and target port, TCP and SCTP); a packet still
/// addressed to the ClusterIP there is dropped, and packets whose source is
/// no local pod pass untouched.
#[test]
fn remote_backends_are_judged_at_the_overlay_device() {
    let (mut dp, _pins) = open("svc-overlay");
    let remote_vip = v4(10, 96, 0, 30);
    let remote_web = v4(10, 244, 1, 20);
    let mut s = state(true);
    s.services.insert(remote_vip.mapped(), 0);
    s.ipcache.insert(remote_web.mapped(), WEB_ID);
    dp.apply(&s).unwrap();
    in_netns(3, |idx| {
        let (c, w, overlay) = (idx[0], idx[1], idx[2]);
        client_and_web(&mut dp, c, w);
        let name = nix::net::if_::if_indextoname(overlay).unwrap();
        dp.attach_node_device(name.to_str().unwrap()).unwrap();
        expect(
            "egress-isolated client to a remote-backed ClusterIP, node hook on",
            run(
                &mut dp,
                PROG_POD_EGRESS,
                c,
                &frame(client(), remote_vip, &tcp(40000, 80, SYN)),
            ),
            Allow,
        );
        for (what, l4, want) in [
            ("translated tcp/8080", tcp(40000, 8080, SYN), Allow),
            ("translated tcp/9090", tcp(40002, 9090, SYN), Drop),
            ("translated sctp/3868", sctp(7000, 3868, 1), Allow),
            ("translated sctp/3869", sctp(7001, 3869, 1), Drop),
        ] {
            expect(
                what,
                run(
                    &mut dp,
                    PROG_NODE_EGRESS,
                    overlay,
                    &frame(client(), remote_web, &l4),
                ),
                want,
            );
        }
        expect(
            "still addressed to the ClusterIP at the overlay",
            run(
                &mut dp,
                PROG_NODE_EGRESS,
                overlay,
                &frame(client(), remote_vip, &tcp(40003, 80, SYN)),
            ),
            Drop,
        );
        expect(
            "a forwarded packet of no local pod",
            run(
                &mut dp,
                PROG_NODE_EGRESS,
                overlay,
                &frame(v4(10, 244, 2, 9), remote_web, &tcp(40004, 9090, SYN)),
            ),
            Allow,
        );
    });
}

/// `kubernetes` on 10.96.0.1:443: a Service whose backend is no pod (the
/// API server on a node address, an outside host), so no hook sees its
/// translated packet and the client's own hook judges the packet to the
/// ClusterIP, on the compiler's entry for (client, Service id, port).
fn at_sender_state(client_may: bool) -> (MapState, Ip, u32) {
    let api_vip = v4(10, 96, 0, 1);
    let id = 77;
    let mut s = state(true);
    s.services.insert(
        api_vip.mapped(),
        policy_common::service_flags::AT_SENDER | id << policy_common::service_flags::ID_SHIFT,
    );
    if client_may {
        s.policy.insert(
            policy_engine::state::PolicyEntry {
                ep_id: CLIENT_EP,
                dir: policy_common::service_flags::POLICY_DIR,
                identity: id,
                ports: PortMatch::Ports {
                    proto: TCP,
                    port: 443,
                    prefix_len: 16,
                },
            },
            policy_common::PolicyValue::default(),
        );
    }
    (s, api_vip, id)
}

/// With the overlay device's check on (which defers every other ClusterIP
/// with backends elsewhere), a ClusterIP whose backends no hook sees is
/// judged at the sender: an egress-isolated client without the entry is
/// dropped, with it passes on that port only (and its replies come back),
/// a client whose egress is not isolated passes, and a change that takes
/// the entry away cuts the established flow on its next packet.
#[test]
fn backends_no_hook_sees_are_judged_at_the_sender() {
    let (mut dp, _pins) = open("svc-at-sender");
    let (denied, api_vip, _) = at_sender_state(false);
    let (allowed, _, _) = at_sender_state(true);
    dp.apply(&denied).unwrap();
    in_netns(3, |idx| {
        let (c, w, overlay) = (idx[0], idx[1], idx[2]);
        client_and_web(&mut dp, c, w);
        let name = nix::net::if_::if_indextoname(overlay).unwrap();
        dp.attach_node_device(name.to_str().unwrap()).unwrap();
        let syn = |sport| frame(client(), api_vip, &tcp(sport, 443, SYN));
        expect(
            "egress-isolated client, no entry: dropped at its own hook",
            run(&mut dp, PROG_POD_EGRESS, c, &syn(40000)),
            Drop,
        );
        expect(
            "web (egress not isolated)",
            run(
                &mut dp,
                PROG_POD_EGRESS,
                w,
                &frame(web(), api_vip, &tcp(40000, 443, SYN)),
            ),
            Allow,
        );
        dp.apply(&allowed).unwrap();
        expect(
            "with the entry",
            run(&mut dp, PROG_POD_EGRESS, c, &syn(40001)),
            Allow,
        );
        expect(
            "the reply from the ClusterIP",
            run(
                &mut dp,
                PROG_POD_INGRESS,
                c,
                &frame(api_vip, client(), &tcp(443, 40001, SYN | ACK)),
            ),
            Allow,
        );
        expect(
            "another port of the ClusterIP",
            run(
                &mut dp,
                PROG_POD_EGRESS,
                c,
                &frame(client(), api_vip, &tcp(40002, 444, SYN)),
            ),
            Drop,
        );
        let data = frame(client(), api_vip, &tcp(40001, 443, ACK));
        expect(
            "established",
            run(&mut dp, PROG_POD_EGRESS, c, &data),
            Allow,
        );
        dp.apply(&denied).unwrap();
        expect(
            "established, after a change that takes the entry away",
            run(&mut dp, PROG_POD_EGRESS, c, &data),
            Drop,
        );
    });
}

/// `node_egress` derives the generation from the revision as the pod
/// hooks do: a config entry whose `active_gen` disagrees with its
/// revision (what a torn write would leave) is read by the revision.
#[test]
fn node_egress_reads_the_generation_from_the_revision() {
    use aya::maps::{Array, Map, MapData};
    use policy_agent::dataplane::kernel::PinPaths;
    use policy_common::{maps as names, Config};

    let (mut dp, pins) = open("svc-node-gen");
    let remote_vip = v4(10, 96, 0, 30);
    let remote_web = v4(10, 244, 1, 20);
    let mut s = state(true);
    s.services.insert(remote_vip.mapped(), 0);
    s.ipcache.insert(remote_web.mapped(), WEB_ID);
    dp.apply(&s).unwrap();
    let cfg = dp.config();
    in_netns(3, |idx| {
        let (c, w, overlay) = (idx[0], idx[1], idx[2]);
        client_and_web(&mut dp, c, w);
        let name = nix::net::if_::if_indextoname(overlay).unwrap();
        dp.attach_node_device(name.to_str().unwrap()).unwrap();
        let denied = |sport| frame(client(), remote_web, &tcp(sport, 9090, SYN));
        expect(
            "translated tcp/9090",
            run(&mut dp, PROG_NODE_EGRESS, overlay, &denied(40000)),
            Drop,
        );
        // The node device's attach wrote the config again: read it back.
        let path = PinPaths::new(&pins.0).map(names::CONFIG);
        let mut config: Array<MapData, Config> =
            Array::try_from(Map::Array(MapData::from_pin(&path).unwrap())).unwrap();
        let now = config.get(&0, 0).unwrap();
        assert_eq!(now.active_gen, cfg.active_gen);
        let torn = Config {
            active_gen: now.active_gen ^ 1,
            ..now
        };
        config.set(0, torn, 0).unwrap();
        expect(
            "stale generation bit, current revision",
            run(&mut dp, PROG_NODE_EGRESS, overlay, &denied(40001)),
            Drop,
        );
    });
}
