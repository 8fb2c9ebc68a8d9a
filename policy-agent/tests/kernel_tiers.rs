//! ClusterNetworkPolicy tiers in the kernel: a policy entry carrying
//! `policy_flags::DENY` drops (reason `TIER_DENY`), the most specific
//! entry decides, and a compiled snapshot of the transcribed conformance
//! model gets the same verdicts from the tc programs as from the lookup
//! model `simulate` uses (BPF_PROG_TEST_RUN). Needs root.

#[path = "support/kernel.rs"]
mod kernel;
#[path = "support/packets.rs"]
mod packets;

use std::collections::BTreeMap;
use std::net::IpAddr;

use kernel::{in_netns, open, StateBuilder};
use packets::*;
use policy_agent::dataplane::{
    kernel::{KernelDataplane, TestVerdict, PROG_POD_EGRESS, PROG_POD_INGRESS},
    Dataplane,
};
use policy_common::{dir, ep_flags, policy_flags, reason, PolicyValue};
use policy_engine::compile::{self, Allocator};
use policy_engine::lookup;
use policy_engine::model::PodRef;
use policy_engine::state::{PolicyEntry, PortMatch};
use policy_engine::testutil::cnp_conformance::{cases, houses_model, Step};

const EP: u32 = 10;
const PEER_ID: u32 = 300;

fn pod() -> Ip {
    v4(10, 0, 0, 10)
}
fn peer() -> Ip {
    v4(10, 0, 0, 20)
}

fn to_ip(a: IpAddr) -> Ip {
    match a {
        IpAddr::V4(v) => {
            let o = v.octets();
            v4(o[0], o[1], o[2], o[3])
        }
        IpAddr::V6(_) => panic!("the model is IPv4"),
    }
}

#[test]
fn a_deny_entry_drops_and_the_most_specific_entry_decides() {
    let (mut dp, _pins) = open("tier-deny");
    let mut state = StateBuilder::default()
        .endpoint(EP, ep_flags::ISOLATED_INGRESS)
        .ip(pod().mapped(), 299)
        .ip(peer().mapped(), PEER_ID)
        .allow(EP, dir::INGRESS, PEER_ID, PortMatch::AnyProtocol, 1)
        .build();
    // The peer may send anything but TCP 80; TCP 81 is allowed again by a
    // more specific entry inside a denied block 80..=81.
    let deny = |rule| PolicyValue {
        rule,
        flags: policy_flags::DENY,
    };
    let entry = |ports| PolicyEntry {
        ep_id: EP,
        dir: dir::INGRESS,
        identity: PEER_ID,
        ports,
    };
    state.policy.insert(
        entry(PortMatch::Ports {
            proto: TCP,
            port: 80,
            prefix_len: 15,
        }),
        deny(2),
    );
    state.policy.insert(
        entry(PortMatch::Ports {
            proto: TCP,
            port: 81,
            prefix_len: 16,
        }),
        PolicyValue { rule: 3, flags: 0 },
    );
    dp.apply(&state).unwrap();
    in_netns(1, |idx| {
        let i = idx[0];
        dp.register_endpoint(i, EP).unwrap();
        kernel::sources(&mut dp, &[(EP, &[pod().mapped()])]);
        let run = |dp: &mut KernelDataplane, f: &[u8]| {
            dp.test_run(PROG_POD_INGRESS, f, i)
                .unwrap_or_else(|e| panic!("test run: {e}"))
        };
        let cases = [
            ("tcp/80", tcp(40000, 80, SYN), TestVerdict::Drop),
            ("tcp/81", tcp(40001, 81, SYN), TestVerdict::Allow),
            ("tcp/82", tcp(40002, 82, SYN), TestVerdict::Allow),
            ("udp/80", udp(40003, 80), TestVerdict::Allow),
        ];
        for (what, l4, want) in cases {
            let got = run(&mut dp, &frame(peer(), pod(), &l4));
            assert_eq!(got, want, "{what}");
            let model = lookup::verdict(
                &state,
                EP,
                dir::INGRESS,
                "10.0.0.20".parse().unwrap(),
                if what.starts_with("tcp") { TCP } else { UDP },
                what[4..].parse().unwrap(),
            );
            assert_eq!(model.allowed, want == TestVerdict::Allow, "model {what}");
        }
        let drops = dp.drop_counts();
        assert_eq!(drops.get(&reason::TIER_DENY).copied(), Some(1), "{drops:?}");
    });
}

#[test]
fn the_kernel_agrees_with_simulate_on_every_transcribed_conformance_step() {
    let (mut dp, _pins) = open("tier-conf");
    let model = houses_model().build();
    let pods: Vec<PodRef> = model.pods.keys().cloned().collect();
    let endpoints: BTreeMap<PodRef, u32> = pods.iter().cloned().zip(1u32..).collect();
    in_netns(pods.len(), |idx| {
        let addrs: Vec<[u8; 16]> = pods
            .iter()
            .map(|p| to_ip(model.pods[p].ips[0]).mapped())
            .collect();
        let mut srcs = Vec::new();
        for (n, p) in pods.iter().enumerate() {
            dp.register_endpoint(idx[n], endpoints[p]).unwrap();
            srcs.push((endpoints[p], std::slice::from_ref(&addrs[n])));
        }
        let srcs: Vec<(u32, &[[u8; 16]])> = srcs.iter().map(|(e, a)| (*e, *a)).collect();
        kernel::sources(&mut dp, &srcs);
        let mut sport = 20000u16;
        let mut checked = 0;
        for case in cases() {
            let mut snapshot = model.clone();
            for step in &case.steps {
                step.change(&mut snapshot).unwrap();
                let Step::Expect { .. } = step else {
                    continue;
                };
                let compiled = compile::compile(&snapshot, &endpoints, &mut Allocator::new());
                dp.apply(&compiled.state).unwrap();
                // Every pair, both programs, on the ports the case probes.
                for (a, from) in pods.iter().enumerate() {
                    for (b, to) in pods.iter().enumerate() {
                        if a == b {
                            continue;
                        }
                        for (proto, port) in [(TCP, 80u16), (TCP, 8080), (UDP, 53), (SCTP, 9003)] {
                            sport = sport.wrapping_add(1).max(20000);
                            let l4 = match proto {
                                TCP => tcp(sport, port, SYN),
                                UDP => udp(sport, port),
                                _ => sctp(sport, port, 1),
                            };
                            let (fi, ti) = (model.pods[from].ips[0], model.pods[to].ips[0]);
                            let f = frame(to_ip(fi), to_ip(ti), &l4);
                            let out = dp.test_run(PROG_POD_EGRESS, &f, idx[a]).unwrap();
                            let sent = lookup::verdict(
                                &compiled.state,
                                endpoints[from],
                                dir::EGRESS,
                                ti,
                                proto,
                                port,
                            );
                            assert_eq!(
                                out == TestVerdict::Allow,
                                sent.allowed,
                                "{} {from} -> {to} {proto}/{port} egress: {sent:?}",
                                case.name
                            );
                            let inn = dp.test_run(PROG_POD_INGRESS, &f, idx[b]).unwrap();
                            let want = lookup::verdict(
                                &compiled.state,
                                endpoints[to],
                                dir::INGRESS,
                                fi,
                                proto,
                                port,
                            );
                            // The receiving hook also judges a local
                            // sender's egress (both ends must agree).
                            assert_eq!(
                                inn == TestVerdict::Allow,
                                sent.allowed && want.allowed,
                                "{} {from} -> {to} {proto}/{port} ingress: {want:?}",
                                case.name
                            );
                            checked += 1;
                        }
                    }
                }
            }
        }
        assert!(checked > 1000, "{checked}");
    });
}
