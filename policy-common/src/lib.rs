//! Map layouts shared by Palisade's eBPF programs (`policy-ebpf`) and user
//! space (`policy-engine`, `policy-agent`).
//!
//! Every struct here is `#[repr(C)]`, has no implicit padding and is `Copy`,
//! so the kernel side and user space see the same bytes. The `user` feature
//! adds `unsafe impl aya::Pod` for user space.
//!
//! # Layout versioning
//!
//! [`LAYOUT_VERSION`] changes whenever any struct or map here changes shape.
//! It is written into the [`Config`] map and into the pin folder name, so an
//! agent never adopts maps it does not understand.
//!
//! # Generations
//!
//! Everything the compiler produces (endpoint flags, ipcache, CIDRs, policy
//! entries) is keyed by a generation bit `gen` (0 or 1). The datapath reads
//! the active generation from [`Config::active_gen`] once per packet and only
//! looks at entries of that generation. User space fills the inactive
//! generation, then flips `active_gen` with one map write: a policy change is
//! atomic for every packet, with no transient verdict that neither the old
//! nor the new state gives.
#![no_std]
#![deny(missing_docs)]

/// Version of every map layout in this crate; bump on any change.
pub const LAYOUT_VERSION: u32 = 7;

/// Traffic direction as seen from the endpoint (the pod).
pub mod dir {
    /// Packets entering the pod (checked at tc egress of the host-side veth).
    pub const INGRESS: u8 = 0;
    /// Packets leaving the pod (checked at tc ingress of the host-side veth).
    pub const EGRESS: u8 = 1;
    /// Not a packet direction: the `dir` of the as-enforced allow entries
    /// of an endpoint's ingress that an audited policy isolates (see
    /// [`crate::ep_flags::AUDIT_INGRESS`]).
    pub const AUDIT_INGRESS: u8 = 3;
    /// As [`AUDIT_INGRESS`], for egress.
    pub const AUDIT_EGRESS: u8 = 4;

    /// The audit pseudo-direction of a packet direction.
    #[inline(always)]
    pub const fn audit(dir: u8) -> u8 {
        if dir == EGRESS {
            AUDIT_EGRESS
        } else {
            AUDIT_INGRESS
        }
    }
}

/// IP protocol numbers Palisade understands.
pub mod proto {
    /// ICMP.
    pub const ICMP: u8 = 1;
    /// TCP.
    pub const TCP: u8 = 6;
    /// UDP.
    pub const UDP: u8 = 17;
    /// ICMPv6.
    pub const ICMPV6: u8 = 58;
    /// SCTP.
    pub const SCTP: u8 = 132;
}

/// Reserved security identities. Dynamic identities start at
/// [`identity::FIRST_DYNAMIC`].
pub mod identity {
    /// Wildcard peer in a policy entry: matches every peer (`from`/`to`
    /// omitted). Never assigned to an address.
    pub const ANY: u32 = 0;
    /// The node itself (kubelet probes); always allowed to reach local pods.
    pub const HOST: u32 = 1;
    /// Addresses no pod and no ipBlock prefix covers (`0.0.0.0/0`, `::/0`).
    pub const WORLD: u32 = 2;
    /// First identity the compiler may allocate.
    pub const FIRST_DYNAMIC: u32 = 256;
}

/// Flags in [`EndpointPolicy::flags`].
pub mod ep_flags {
    /// At least one policy selects the endpoint for ingress.
    pub const ISOLATED_INGRESS: u32 = 1 << 0;
    /// At least one policy selects the endpoint for egress.
    pub const ISOLATED_EGRESS: u32 = 1 << 1;
    /// A policy in audit mode (`policy.palisade.dev/mode: audit`) isolates
    /// the endpoint for ingress: a new flow the enforced view lets in is
    /// looked up once more in the as-enforced view (entries under
    /// [`crate::dir::AUDIT_INGRESS`]); no entry there means the audited
    /// policies would drop it, reported as [`crate::verdict::WOULD_DROP`]
    /// while the packet passes.
    pub const AUDIT_INGRESS: u32 = 1 << 4;
    /// As [`AUDIT_INGRESS`], for egress ([`crate::dir::AUDIT_EGRESS`]).
    pub const AUDIT_EGRESS: u32 = 1 << 5;
}

/// Flags in [`EndpointInfo::flags`].
pub mod ep_info {
    /// [`EndpointInfo::mac`](crate::EndpointInfo::mac) holds the MAC of
    /// the pod's interface (the host veth's peer): a frame leaving the pod
    /// with another Ethernet source, or an ARP packet with another sender
    /// hardware address, is dropped. The agent always sets it (it refuses
    /// to attach to a veth whose peer's MAC it cannot read); only frames
    /// run through `BPF_PROG_TEST_RUN` for tests may be registered without
    /// it.
    pub const MAC: u32 = 1 << 0;
}

/// Flags in [`PolicyValue::flags`], derived from the entry's key when it
/// is written (the datapath's longest-prefix lookup returns the value, not
/// the prefix that matched).
pub mod policy_flags {
    /// The entry names a port or port block (not every port).
    pub const PORT: u32 = 1 << 0;
    /// The entry's answer is drop: ClusterNetworkPolicy tiers compiled a
    /// Deny (or a NetworkPolicy isolation beneath a Pass) into it. The
    /// compiler folds every tier into each entry, so the first entry the
    /// lookup finds is final, allow or deny.
    pub const DENY: u32 = 1 << 1;
}

/// The overlay's encapsulation ports: VXLAN as Linux and Flannel use it
/// (8472) and as IANA assigns it (4789). A pod's UDP to one of them at an
/// address that is no pod's (a node's, or outside the cluster) would be
/// decapsulated by a node and its inner packet trusted as coming from
/// another node's pod: it passes only where a policy entry for an ipBlock
/// naming the port explicitly allows it, never because the pod's egress is
/// not isolated, nor through a rule that allows every port or every peer.
pub const ENCAP_PORTS: [u16; 2] = [8472, 4789];

/// Bits of [`Config::flags`].
pub mod config_flags {
    /// Also report allowed new flows as events (drops are always reported).
    pub const EVENTS_ALLOWED: u32 = 1 << 0;
    /// The node's overlay device carries the `node_egress` check, so
    /// packets to Services with backends on other nodes can be deferred.
    pub const NODE_HOOK: u32 = 1 << 1;
}

/// Flags in the values of [`maps::SERVICES`].
pub mod service_flags {
    /// Every backend of the Service is a local endpoint: the backend's hook
    /// on this node always sees the translated packet.
    pub const ALL_LOCAL: u32 = 1 << 0;
    /// Some backend of the ClusterIP is no pod (a node address: the API
    /// server, a hostNetwork pod; an address outside the cluster): no hook
    /// would see its translated packet, so the sender's hook judges the
    /// packet to the ClusterIP itself, on the allow entries the compiler
    /// wrote for it under [`POLICY_DIR`] (see `compile::services`).
    pub const AT_SENDER: u32 = 1 << 1;
    /// The value's bits from here up hold the ClusterIP's Service id (for
    /// [`AT_SENDER`] ClusterIPs; below [`MAX_ID`], unique per generation).
    pub const ID_SHIFT: u32 = 8;
    /// Service ids are below this.
    pub const MAX_ID: u32 = 1 << (32 - ID_SHIFT);
    /// The `dir` of the allow entries in `maps::POLICY` that let an
    /// endpoint reach an [`AT_SENDER`] ClusterIP: identity is the Service
    /// id, the port the ClusterIP's (not the backend's) port. Not a packet
    /// direction: entries of both directions never match it.
    pub const POLICY_DIR: u8 = 2;

    /// The Service id in a value.
    #[inline(always)]
    pub const fn id(value: u32) -> u32 {
        value >> ID_SHIFT
    }
}

/// The packet mark `node_ingress` sets on a packet arriving from outside
/// the node, so that a pod's check can still judge it on its client's
/// address after kube-proxy masqueraded it (NodePort, `externalTrafficPolicy:
/// Cluster`, backend on the node that received it). kube-proxy uses bits
/// 14 and 15; Palisade uses bits 16 to 28.
pub mod client_mark {
    /// Set when the bits below name a slot of [`crate::maps::CLIENTS`].
    pub const FLAG: u32 = 1 << 28;
    /// Where the slot index sits.
    pub const SHIFT: u32 = 16;
    /// Slots of [`crate::maps::CLIENTS`] (a power of two).
    pub const SLOTS: u32 = 4096;
    /// Every bit Palisade owns in the mark.
    pub const MASK: u32 = FLAG | ((SLOTS - 1) << SHIFT);
}

/// Value of [`maps::CLIENTS`]: who sent a packet that arrived from
/// outside the node.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct ClientSlot {
    /// The client's address.
    pub addr: Addr,
    /// What NAT leaves alone: the IPv4 total length and identification,
    /// or the IPv6 flow label and payload length.
    pub check: u32,
    /// IP protocol.
    pub proto: u8,
    /// Padding.
    pub pad: [u8; 3],
}

/// Maps by name, as declared in the eBPF object and pinned under the agent's
/// bpffs folder.
pub mod maps {
    /// `Array<Config>`, one entry.
    pub const CONFIG: &str = "PALISADE_CONFIG";
    /// `HashMap<u32 ifindex, EndpointInfo>`: host-side veth → endpoint.
    pub const ENDPOINTS: &str = "PALISADE_ENDPOINTS";
    /// `HashMap<EndpointPolicyKey, EndpointPolicy>`.
    pub const EP_POLICY: &str = "PALISADE_EP_POLICY";
    /// `HashMap<IpcacheKey, IdentityValue>`: exact pod IPs.
    pub const IPCACHE: &str = "PALISADE_IPCACHE";
    /// `LpmTrie<CidrKey, IdentityValue>`: ipBlock prefixes.
    pub const CIDRS: &str = "PALISADE_CIDRS";
    /// `LpmTrie<PolicyKey, PolicyValue>`: per-endpoint allow entries.
    pub const POLICY: &str = "PALISADE_POLICY";
    /// `LruHashMap<CtKey, CtValue>`: connection tracking.
    pub const CONNTRACK: &str = "PALISADE_CT";
    /// `RingBuf` of [`crate::VerdictEvent`].
    pub const EVENTS: &str = "PALISADE_EVENTS";
    /// `HashMap<SourceKey, u32>`: the addresses each endpoint may send from
    /// (source validation; not generation-keyed, see [`crate::SourceKey`]).
    pub const SOURCES: &str = "PALISADE_SOURCES";
    /// `LruPerCpuHashMap<u32, EventBudget>`: each endpoint's drop event
    /// budget.
    pub const EVENT_BUDGET: &str = "PALISADE_EVENT_BUDGET";
    /// `LruHashMap<FragKey, u32>`: datagrams whose first fragment passed,
    /// so that their later fragments (which carry no ports) follow it.
    pub const FRAGMENTS: &str = "PALISADE_FRAGMENTS";
    /// `PerCpuArray<u64>` indexed by [`crate::reason`]: packets dropped for
    /// each reason, counted even when the event is not sent.
    pub const DROPS: &str = "PALISADE_DROPS";
    /// `HashMap<IpcacheKey, u32>`: Service ClusterIPs → [`crate::service_flags`]. A pod's
    /// packet to one is *deferred*: kube-proxy translates it after the
    /// pod's own hook, and the hook that sees the backend judges it.
    pub const SERVICES: &str = "PALISADE_SERVICES";
    /// `HashMap<IpcacheKey, u32>`: address of a local endpoint → its
    /// endpoint id (to judge a translated packet's sender).
    pub const LOCAL_ADDRS: &str = "PALISADE_LOCAL";
    /// `PerCpuArray<ClientSlot>` of [`crate::client_mark::SLOTS`]: the
    /// client of a packet that arrived from outside, by the slot its mark
    /// names, a ring per CPU.
    pub const CLIENTS: &str = "PALISADE_CLIENTS";
    /// `LruHashMap<CtKey, Addr>`: the client a conntrack entry was judged
    /// on when it was not the packet's source (a masqueraded NodePort
    /// client), for judging it again after a policy change.
    pub const CT_CLIENTS: &str = "PALISADE_CT_CLIENTS";
    /// `LruHashMap<u32, CtCount>`: conntrack entries each endpoint holds,
    /// by direction (its budget, see [`crate::Config::ct_limit`]).
    pub const CT_COUNT: &str = "PALISADE_CT_COUNT";
    /// `LruPerCpuHashMap<u32, CtRefused>`: new flows of each endpoint
    /// dropped because it held its conntrack budget.
    pub const CT_REFUSED: &str = "PALISADE_CT_REFUSED";
}

/// Entries of [`maps::DROPS`] (one per possible [`reason`] code).
pub const DROP_REASONS: u32 = 16;

/// IPv4 addresses are stored IPv4-mapped (`::ffff:a.b.c.d`) so one map
/// serves both families. Bytes are in network order.
pub type Addr = [u8; 16];

/// Builds the IPv4-mapped form of an IPv4 address given in network order.
#[inline(always)]
pub const fn v4_mapped(v4: [u8; 4]) -> Addr {
    [
        0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0xff, 0xff, v4[0], v4[1], v4[2], v4[3],
    ]
}

/// Bits of an [`Addr`] that an IPv4 prefix length is offset by.
pub const V4_MAPPED_PREFIX_BITS: u32 = 96;

/// Global datapath configuration (single entry of [`maps::CONFIG`]).
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Config {
    /// Must equal [`LAYOUT_VERSION`]; 0 means "not configured yet" and every
    /// endpoint packet is dropped (fail closed).
    pub layout_version: u32,
    /// Generation (0 or 1) the datapath reads.
    pub active_gen: u32,
    /// Policy revision, bumped on every flip. Conntrack entries admitted
    /// under an older revision are judged again on their next packet.
    pub revision: u32,
    /// Reserved for datapath options (event sampling etc.).
    pub flags: u32,
    /// Most conntrack entries one endpoint may hold per direction (see
    /// [`CtCount`]); a new flow over it is not tracked and is dropped
    /// ([`reason::CT_BUDGET`]). 0: no bound.
    pub ct_limit: u32,
    /// Always zero.
    pub pad: u32,
}

/// Value of [`maps::ENDPOINTS`], keyed by the host-side veth's ifindex.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct EndpointInfo {
    /// Endpoint id the compiled state uses for this pod.
    pub ep_id: u32,
    /// [`ep_info`] bits.
    pub flags: u32,
    /// The MAC of the pod's interface (with [`ep_info::MAC`]).
    pub mac: [u8; 6],
    /// Always zero.
    pub pad: [u8; 2],
}

/// Key of [`maps::SOURCES`]: one address an endpoint may send from. A
/// packet leaving a pod whose source is not one of its endpoint's entries
/// is dropped ([`reason::SPOOFED`]). Not keyed by generation: user space
/// writes an endpoint's addresses before the flip that makes it ready and
/// removes them after the flip that retires it.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct SourceKey {
    /// Endpoint id.
    pub ep_id: u32,
    /// Address, IPv4-mapped for IPv4.
    pub addr: Addr,
}

/// Key of [`maps::EP_POLICY`].
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct EndpointPolicyKey {
    /// Generation, 0 or 1.
    pub gen: u32,
    /// Endpoint id.
    pub ep_id: u32,
}

/// Value of [`maps::EP_POLICY`]. An endpoint without an entry in the active
/// generation has no computed policy yet: its packets are dropped.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct EndpointPolicy {
    /// [`ep_flags`] bits.
    pub flags: u32,
}

/// Key of [`maps::IPCACHE`]: an exact address.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct IpcacheKey {
    /// Generation, 0 or 1.
    pub gen: u32,
    /// Address, IPv4-mapped for IPv4.
    pub addr: Addr,
}

/// Value of [`maps::IPCACHE`] and [`maps::CIDRS`].
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct IdentityValue {
    /// Security identity.
    pub identity: u32,
    /// Reserved.
    pub flags: u32,
}

/// Data part of an LPM key in [`maps::CIDRS`]. The LPM prefix length covers
/// `gen` and `pad` (32 bits, always matched) plus the address prefix:
/// `prefix_len = 32 + addr_bits` (IPv4 `/n` is `96 + n` address bits).
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct CidrKey {
    /// Generation, 0 or 1.
    pub gen: u8,
    /// Always zero.
    pub pad: [u8; 3],
    /// Address (prefix bits significant), IPv4-mapped for IPv4.
    pub addr: Addr,
}

/// Bits of [`CidrKey`] before the address (always fully matched).
pub const CIDR_KEY_HEAD_BITS: u32 = 32;

/// Data part of an LPM key in [`maps::POLICY`].
///
/// Field order is the wildcard order: a prefix that stops after `identity`
/// matches every protocol and port, one that stops after `pad2` matches
/// every port of `proto`, and a prefix inside `dport` is a port range
/// (`endPort` ranges are split into aligned power-of-two blocks). Peer
/// wildcards use [`identity::ANY`] and are a separate lookup.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct PolicyKey {
    /// Generation, 0 or 1.
    pub gen: u8,
    /// [`dir`] value.
    pub dir: u8,
    /// Always zero.
    pub pad: [u8; 2],
    /// Endpoint id, big-endian.
    pub ep_id: [u8; 4],
    /// Peer identity, big-endian.
    pub identity: [u8; 4],
    /// IP protocol.
    pub proto: u8,
    /// Always zero.
    pub pad2: u8,
    /// Destination port, big-endian.
    pub dport: [u8; 2],
}

/// LPM prefix length of a [`PolicyKey`] entry that matches any protocol.
pub const POLICY_PREFIX_ANY_PROTO: u32 = 96;
/// LPM prefix length of a [`PolicyKey`] entry that matches any port of one
/// protocol.
pub const POLICY_PREFIX_ANY_PORT: u32 = 112;
/// LPM prefix length of a [`PolicyKey`] entry for one exact port.
pub const POLICY_PREFIX_FULL: u32 = 128;

impl PolicyKey {
    /// Builds the data part of a policy key.
    #[inline(always)]
    pub const fn new(gen: u8, dir: u8, ep_id: u32, identity: u32, proto: u8, dport: u16) -> Self {
        Self {
            gen,
            dir,
            pad: [0; 2],
            ep_id: ep_id.to_be_bytes(),
            identity: identity.to_be_bytes(),
            proto,
            pad2: 0,
            dport: dport.to_be_bytes(),
        }
    }
}

/// Value of [`maps::POLICY`]: every entry allows.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct PolicyValue {
    /// Opaque reference to the rule that produced the entry (reported in
    /// verdict events; resolved by user space).
    pub rule: u32,
    /// [`policy_flags`] bits.
    pub flags: u32,
}

/// Key of [`maps::CONNTRACK`]: a flow as first seen at one endpoint in one
/// direction (`saddr`/`sport` is the initiator).
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct CtKey {
    /// Endpoint id the flow was judged for.
    pub ep_id: u32,
    /// [`dir`] of the first packet, relative to the endpoint.
    pub dir: u8,
    /// IP protocol.
    pub proto: u8,
    /// Source port (ICMP echo: identifier), network order.
    pub sport: [u8; 2],
    /// Destination port (ICMP echo: 0), network order.
    pub dport: [u8; 2],
    /// Always zero.
    pub pad: [u8; 2],
    /// Initiator address.
    pub saddr: Addr,
    /// Responder address.
    pub daddr: Addr,
}

/// Value of [`maps::CONNTRACK`].
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct CtValue {
    /// `bpf_ktime_get_ns` of the last packet.
    pub last_seen_ns: u64,
    /// [`Config::revision`] the flow was last judged under.
    pub revision: u32,
    /// Protocol state bits (datapath-defined).
    pub state: u32,
    /// How often `last_seen_ns` was refreshed. Established packets write
    /// the entry only when its state changes or `last_seen_ns` is older
    /// than the refresh interval, not on every packet (the entry is shared
    /// by every CPU the flow's packets run on).
    pub refreshes: u64,
}

/// Value of [`maps::CT_COUNT`], keyed by endpoint id: the conntrack
/// entries the endpoint holds, by the direction of their flow's first
/// packet. The datapath adds one for each entry it creates and takes one
/// off for each it removes (atomically, shared by every CPU); entries the
/// map evicts or that expire untouched are not taken off there, so user
/// space walks the conntrack map now and then and writes the live counts
/// it found. 64 bits wide because the eBPF target has no 32-bit atomics.
/// Signed: a count corrected under a concurrent removal may dip
/// below zero, which is under any budget, never over it.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct CtCount {
    /// Entries of flows that entered the pod first.
    pub ingress: i64,
    /// Entries of flows the pod started.
    pub egress: i64,
}

/// Value of [`maps::CT_REFUSED`] (per CPU, keyed by endpoint id): new
/// flows dropped because the endpoint held [`Config::ct_limit`] entries
/// in that direction.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct CtRefused {
    /// Flows that would have entered the pod.
    pub ingress: u64,
    /// Flows the pod started.
    pub egress: u64,
}

/// Bits of [`CtValue::state`] and how long an entry lives, shared by the
/// datapath (which expires entries on their next packet) and user space
/// (which counts the live entries of each endpoint, see [`CtCount`]).
pub mod ct_state {
    use crate::proto;

    /// A reply has been seen.
    pub const REPLIED: u32 = 1 << 0;
    /// The flow is over: RST (TCP), ABORT/SHUTDOWN COMPLETE (SCTP), or
    /// both sides closed. Entries then expire after [`CLOSING_NS`].
    pub const CLOSING: u32 = 1 << 1;

    const SEC: u64 = 1_000_000_000;
    /// TCP or SCTP with a reply seen.
    pub const ESTABLISHED_NS: u64 = 6 * 3600 * SEC;
    /// TCP or SCTP without a reply yet.
    pub const OPENING_NS: u64 = 60 * SEC;
    /// TCP or SCTP after [`CLOSING`].
    pub const CLOSING_NS: u64 = 10 * SEC;
    /// UDP.
    pub const UDP_NS: u64 = 60 * SEC;
    /// ICMP echo.
    pub const ICMP_NS: u64 = 30 * SEC;
    /// Any other protocol.
    pub const OTHER_NS: u64 = 60 * SEC;

    /// How long an entry of `proto_nr` in `state` lives after its last
    /// packet.
    #[inline(always)]
    pub const fn timeout_ns(proto_nr: u8, state: u32) -> u64 {
        match proto_nr {
            proto::TCP | proto::SCTP => {
                if state & CLOSING != 0 {
                    CLOSING_NS
                } else if state & REPLIED != 0 {
                    ESTABLISHED_NS
                } else {
                    OPENING_NS
                }
            }
            proto::UDP => UDP_NS,
            proto::ICMP | proto::ICMPV6 => ICMP_NS,
            _ => OTHER_NS,
        }
    }
}

/// Key of [`maps::FRAGMENTS`]: one fragmented datagram as first seen at one
/// endpoint in one direction.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct FragKey {
    /// Endpoint id.
    pub ep_id: u32,
    /// IP identification (IPv4: 16 bits; IPv6 fragment header: 32 bits).
    pub id: u32,
    /// [`dir`] of the packet.
    pub dir: u8,
    /// IP protocol.
    pub proto: u8,
    /// Always zero.
    pub pad: [u8; 2],
    /// Source address.
    pub saddr: Addr,
    /// Destination address.
    pub daddr: Addr,
}

/// Verdicts in [`VerdictEvent::verdict`].
pub mod verdict {
    /// The packet was allowed (a new flow).
    pub const ALLOWED: u8 = 0;
    /// The packet was dropped.
    pub const DROPPED: u8 = 1;
    /// The packet passed (a new flow), but the policies in audit mode
    /// isolating the endpoint would have dropped it.
    pub const WOULD_DROP: u8 = 2;
}

/// Reasons in [`VerdictEvent::reason`].
pub mod reason {
    /// Allowed by a policy entry.
    pub const POLICY_ALLOW: u8 = 0;
    /// Direction not isolated.
    pub const NOT_ISOLATED: u8 = 1;
    /// Isolated and no entry allows the peer/port.
    pub const NO_RULE: u8 = 2;
    /// The endpoint has no computed policy yet (fail closed).
    pub const NOT_READY: u8 = 3;
    /// An established flow was cut after a policy revision.
    pub const REVISION_DENIED: u8 = 4;
    /// Malformed or truncated headers.
    pub const MALFORMED: u8 = 5;
    /// A non-first IPv4 fragment without a tracked flow.
    pub const FRAGMENT: u8 = 6;
    /// Allowed as part of a tracked flow.
    pub const ESTABLISHED: u8 = 7;
    /// A packet leaving a pod with a source address that is not the pod's
    /// (IP source, Ethernet source, ARP sender addresses, the target of a
    /// neighbour advertisement), or a router advertisement or redirect
    /// from a pod.
    pub const SPOOFED: u8 = 8;
    /// A new flow of an endpoint that already holds its conntrack budget
    /// in that direction ([`crate::Config::ct_limit`]): not tracked.
    pub const CT_BUDGET: u8 = 9;
    /// With [`crate::verdict::WOULD_DROP`]: no as-enforced entry allows
    /// the new flow (an audited policy isolates the endpoint).
    pub const AUDIT_NO_RULE: u8 = 12;
    /// Dropped by a policy entry carrying [`crate::policy_flags::DENY`]:
    /// a ClusterNetworkPolicy Deny, or (entry rule 0) NetworkPolicy
    /// isolation that a tier passed the connection to.
    pub const TIER_DENY: u8 = 10;
}

/// One verdict, sent to user space through [`maps::EVENTS`].
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct VerdictEvent {
    /// `bpf_ktime_get_ns`.
    pub ts_ns: u64,
    /// Endpoint id.
    pub ep_id: u32,
    /// Host-side veth ifindex.
    pub ifindex: u32,
    /// Peer identity (pod identity if known, else CIDR identity).
    pub peer_identity: u32,
    /// Rule reference of the allowing entry (0 if none).
    pub rule: u32,
    /// [`dir`].
    pub dir: u8,
    /// IP protocol.
    pub proto: u8,
    /// [`verdict`].
    pub verdict: u8,
    /// [`reason`].
    pub reason: u8,
    /// Source port, host order.
    pub sport: u16,
    /// Destination port, host order.
    pub dport: u16,
    /// Source address.
    pub saddr: Addr,
    /// Destination address.
    pub daddr: Addr,
    /// Drops of this endpoint not reported since its previous event (the
    /// event budget, see [`EventBudget`]): "this one and N more".
    pub suppressed: u32,
    /// Always zero.
    pub pad: u32,
}

/// Drop events an endpoint may send per CPU and [`EVENT_WINDOW_NS`]; the
/// rest are counted into the next event's [`VerdictEvent::suppressed`], so
/// a flood costs a bounded number of ring buffer writes.
pub const EVENT_BUDGET: u32 = 64;
/// The event budget's window.
pub const EVENT_WINDOW_NS: u64 = 1_000_000_000;

/// Value of [`maps::EVENT_BUDGET`] (per CPU, keyed by endpoint id).
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct EventBudget {
    /// Start of the current window.
    pub window_ns: u64,
    /// Events sent in the window.
    pub sent: u32,
    /// Drops not reported since the last event.
    pub suppressed: u32,
    /// Digest of the last reported drop: a repeat of it within the window
    /// is counted, not sent again.
    pub last: u32,
    /// Always zero.
    pub pad: u32,
}

#[cfg(feature = "user")]
mod pod_impls {
    use super::*;
    // SAFETY: all of these are #[repr(C)], Copy, and made only of integers and
    // byte arrays laid out without implicit padding.
    unsafe impl aya::Pod for Config {}
    unsafe impl aya::Pod for ClientSlot {}
    unsafe impl aya::Pod for EndpointInfo {}
    unsafe impl aya::Pod for EndpointPolicyKey {}
    unsafe impl aya::Pod for EndpointPolicy {}
    unsafe impl aya::Pod for IpcacheKey {}
    unsafe impl aya::Pod for IdentityValue {}
    unsafe impl aya::Pod for CidrKey {}
    unsafe impl aya::Pod for PolicyKey {}
    unsafe impl aya::Pod for PolicyValue {}
    unsafe impl aya::Pod for CtKey {}
    unsafe impl aya::Pod for CtValue {}
    unsafe impl aya::Pod for VerdictEvent {}
    unsafe impl aya::Pod for SourceKey {}
    unsafe impl aya::Pod for FragKey {}
    unsafe impl aya::Pod for EventBudget {}
    unsafe impl aya::Pod for CtCount {}
    unsafe impl aya::Pod for CtRefused {}
}

#[cfg(test)]
mod tests {
    use super::*;
    use core::mem::size_of;

    #[test]
    fn layouts_have_no_padding() {
        assert_eq!(size_of::<Config>(), 24);
        assert_eq!(size_of::<CtCount>(), 16);
        assert_eq!(size_of::<CtRefused>(), 16);
        assert_eq!(size_of::<EndpointInfo>(), 16);
        assert_eq!(size_of::<EndpointPolicyKey>(), 8);
        assert_eq!(size_of::<IpcacheKey>(), 20);
        assert_eq!(size_of::<CidrKey>(), 20);
        assert_eq!(size_of::<PolicyKey>() * 8, POLICY_PREFIX_FULL as usize);
        assert_eq!(size_of::<CtKey>(), 44);
        assert_eq!(size_of::<CtValue>(), 24);
        assert_eq!(size_of::<VerdictEvent>(), 72);
        assert_eq!(size_of::<EventBudget>(), 24);
        assert_eq!(size_of::<SourceKey>(), 20);
        assert_eq!(size_of::<FragKey>(), 44);
    }

    #[test]
    fn policy_key_is_big_endian() {
        let k = PolicyKey::new(1, dir::EGRESS, 0x0102_0304, 7, proto::TCP, 80);
        assert_eq!(k.ep_id, [1, 2, 3, 4]);
        assert_eq!(k.identity, [0, 0, 0, 7]);
        assert_eq!(k.dport, [0, 80]);
    }
}
