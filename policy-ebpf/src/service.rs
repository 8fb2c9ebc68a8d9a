//! Services: deciding a pod's egress where the backend is visible.
//!
//! A pod's packet to a Service ClusterIP still carries the ClusterIP at the
//! pod's own hook: kube-proxy's DNAT happens later, in netfilter. So the
//! pod's hook *defers* such a packet (lets it on and tracks the flow, so
//! replies from the ClusterIP pass as replies), and the hook that sees the
//! translated packet judges the sender's egress: the backend's host-side
//! veth for a local backend ([`sender_denies`] at the ingress check), the
//! overlay device for a pod on another node (`node_egress`). A ClusterIP
//! is thus never matched against an ipBlock.
//!
//! A ClusterIP with a backend that is no pod (a node address, an address
//! outside the cluster) is delivered to the node's own stack or leaves
//! through a device no Palisade hook is on, so it is judged here, at the
//! sender's hook ([`service_flags::AT_SENDER`]): the compiler wrote an
//! entry for each (endpoint, ClusterIP, port) whose every backend the
//! endpoint's egress allows, and an egress-isolated endpoint without one
//! is dropped.

use aya_ebpf::maps::lpm_trie::Key;
use policy_common::{
    config_flags, dir, ep_flags, proto, service_flags, Addr, EndpointPolicyKey, IpcacheKey,
    PolicyKey, POLICY_PREFIX_FULL,
};

use crate::{
    maps::{EP_POLICY, LOCAL_ADDRS, POLICY, SERVICES},
    packet::Flow,
    policy::{judge, Query, Verdict},
};

/// [`defer`]: not a ClusterIP, judge the packet as usual.
pub const NOT_SERVICE: u8 = 0;
/// [`defer`]: a ClusterIP whose translated packets a hook of this node
/// judges: let it on.
pub const DEFER: u8 = 1;
/// [`defer`]: a ClusterIP with backends no hook of this node would judge,
/// from an egress-isolated endpoint: drop (fail closed).
pub const DENY: u8 = 2;

/// Protocol and destination port in one argument of [`defer`] (a BPF call
/// takes five at most).
#[inline(always)]
pub const fn to(proto_nr: u8, dport: u16) -> u32 {
    (proto_nr as u32) << 16 | dport as u32
}

/// What endpoint `ep_id`'s packet to `addr` (protocol and port as [`to`]
/// packs them; port 0 when unknown) is, in generation `gen` under config
/// flags `cfg_flags` ([`NOT_SERVICE`], [`DEFER`] or [`DENY`]).
#[inline(never)]
pub fn defer(gen: u8, ep_id: u32, addr: &Addr, to: u32, cfg_flags: u32) -> u8 {
    let key = IpcacheKey {
        gen: u32::from(gen),
        addr: *addr,
    };
    // SAFETY: copied out at once.
    let Some(flags) = (unsafe { SERVICES.get(&key) }).copied() else {
        return NOT_SERVICE;
    };
    let at_sender = flags & service_flags::AT_SENDER != 0;
    if !at_sender
        && (flags & service_flags::ALL_LOCAL != 0 || cfg_flags & config_flags::NODE_HOOK != 0)
    {
        return DEFER;
    }
    let ep_key = EndpointPolicyKey {
        gen: u32::from(gen),
        ep_id,
    };
    // SAFETY: copied out at once.
    match unsafe { EP_POLICY.get(&ep_key) } {
        Some(p) if p.flags & ep_flags::ISOLATED_EGRESS == 0 => DEFER,
        Some(_) if at_sender => {
            let key = Key::new(
                POLICY_PREFIX_FULL,
                PolicyKey::new(
                    gen,
                    service_flags::POLICY_DIR,
                    ep_id,
                    service_flags::id(flags),
                    (to >> 16) as u8,
                    to as u16,
                ),
            );
            if POLICY.get(&key).is_some() {
                DEFER
            } else {
                DENY
            }
        }
        _ => DENY,
    }
}

/// The endpoint id of the local endpoint owning `addr` (0: none).
#[inline(always)]
pub fn local_ep(gen: u8, addr: &Addr) -> u32 {
    let key = IpcacheKey {
        gen: u32::from(gen),
        addr: *addr,
    };
    // SAFETY: copied out at once.
    unsafe { LOCAL_ADDRS.get(&key) }.copied().unwrap_or(0)
}

/// Judges the egress of the local endpoint that sent `flow` (when its
/// source is a local endpoint) toward the translated destination, in
/// generation `gen`; with `reply`, `flow` is a reply and the sender is its
/// destination. Returns the sender's endpoint id when its egress denies the
/// connection (`out` then holds the verdict), 0 when it allows it or the
/// sender is not local.
///
/// For a packet the sender addressed to the pod directly this repeats the
/// check its own hook made, with the same answer; for a packet it sent to a
/// ClusterIP this is the only egress check. `out` keeps its verdict unless
/// the sender denies (then it holds the sender's).
#[inline(never)]
pub fn sender_denies(gen: u8, flow: &Flow, reply: bool, out: &mut Verdict) -> u32 {
    let (saddr, daddr, dport) = if reply {
        let dport = match flow.proto {
            proto::TCP | proto::UDP | proto::SCTP => flow.sport,
            _ => 0,
        };
        (&flow.daddr, flow.saddr, dport)
    } else {
        (&flow.saddr, flow.daddr, flow.policy_dport)
    };
    let ep_id = local_ep(gen, saddr);
    if ep_id == 0 {
        return 0;
    }
    let q = Query {
        peer: daddr,
        ep_id,
        dport,
        gen,
        dir: dir::EGRESS,
        proto: flow.proto,
        ports_known: flow.ports_known,
        local_origin: false,
    };
    // The receiver's own verdict (its allowing rule) is what an allowed
    // flow is reported with: the sender's check only replaces it when it
    // denies.
    let own = *out;
    judge(&q, out);
    if out.allow {
        *out = own;
        0
    } else {
        ep_id
    }
}
