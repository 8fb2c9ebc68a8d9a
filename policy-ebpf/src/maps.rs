//! The maps, named as in `policy_common::maps` (the names are the contract
//! with user space, which pins and fills them). Sizes here are defaults;
//! the agent overrides them before load.

use aya_ebpf::{
    macros::map,
    maps::{Array, HashMap, LpmTrie, LruHashMap, LruPerCpuHashMap, PerCpuArray, RingBuf},
};
use policy_common::{
    client_mark, Addr, CidrKey, ClientSlot, Config, CtCount, CtKey, CtRefused, CtValue,
    EndpointInfo, EndpointPolicy, EndpointPolicyKey, EventBudget, FragKey, IdentityValue,
    IpcacheKey, PolicyKey, PolicyValue, SourceKey, DROP_REASONS,
};

/// Global configuration, one entry.
#[map(name = "PALISADE_CONFIG")]
pub static CONFIG: Array<Config> = Array::with_max_entries(1, 0);

/// Host-side veth ifindex → endpoint.
#[map(name = "PALISADE_ENDPOINTS")]
pub static ENDPOINTS: HashMap<u32, EndpointInfo> = HashMap::with_max_entries(1024, 0);

/// (generation, endpoint) → isolation flags.
#[map(name = "PALISADE_EP_POLICY")]
pub static EP_POLICY: HashMap<EndpointPolicyKey, EndpointPolicy> =
    HashMap::with_max_entries(2048, 0);

/// (generation, exact address) → identity.
#[map(name = "PALISADE_IPCACHE")]
pub static IPCACHE: HashMap<IpcacheKey, IdentityValue> = HashMap::with_max_entries(65536, 0);

/// (generation, prefix) → identity.
#[map(name = "PALISADE_CIDRS")]
pub static CIDRS: LpmTrie<CidrKey, IdentityValue> = LpmTrie::with_max_entries(32768, 0);

/// Allow entries.
#[map(name = "PALISADE_POLICY")]
pub static POLICY: LpmTrie<PolicyKey, PolicyValue> = LpmTrie::with_max_entries(262144, 0);

/// Connection tracking.
#[map(name = "PALISADE_CT")]
pub static CONNTRACK: LruHashMap<CtKey, CtValue> = LruHashMap::with_max_entries(131072, 0);

/// (generation, Service ClusterIP) → 1.
#[map(name = "PALISADE_SERVICES")]
pub static SERVICES: HashMap<IpcacheKey, u32> = HashMap::with_max_entries(16384, 0);

/// (generation, local endpoint address) → endpoint id.
#[map(name = "PALISADE_LOCAL")]
pub static LOCAL_ADDRS: HashMap<IpcacheKey, u32> = HashMap::with_max_entries(4096, 0);

/// Clients of packets that arrived from outside the node, a ring per CPU,
/// by the slot their mark names (see `policy_common::client_mark`).
#[map(name = "PALISADE_CLIENTS")]
pub static CLIENTS: PerCpuArray<ClientSlot> = PerCpuArray::with_max_entries(client_mark::SLOTS, 0);

/// This CPU's next slot of [`CLIENTS`]. Private to the object.
#[map(name = "PALISADE_CLIENT_NEXT")]
pub static CLIENT_NEXT: PerCpuArray<u32> = PerCpuArray::with_max_entries(1, 0);

/// This CPU's packet's client, when it is not the packet's source
/// (`client::note`; `proto` 0: none). Private to the object.
#[map(name = "PALISADE_CLIENT_NOW")]
pub static CLIENT_NOW: PerCpuArray<ClientSlot> = PerCpuArray::with_max_entries(1, 0);

/// The client a conntrack entry was judged on, when not its source.
#[map(name = "PALISADE_CT_CLIENTS")]
pub static CT_CLIENTS: LruHashMap<CtKey, Addr> = LruHashMap::with_max_entries(16384, 0);

/// Endpoint id → the conntrack entries it holds (its budget).
#[map(name = "PALISADE_CT_COUNT")]
pub static CT_COUNT: LruHashMap<u32, CtCount> = LruHashMap::with_max_entries(2048, 0);

/// Endpoint id → new flows refused for its conntrack budget, per CPU.
#[map(name = "PALISADE_CT_REFUSED")]
pub static CT_REFUSED: LruPerCpuHashMap<u32, CtRefused> =
    LruPerCpuHashMap::with_max_entries(1024, 0);

/// Verdict events for user space.
#[map(name = "PALISADE_EVENTS")]
pub static EVENTS: RingBuf = RingBuf::with_byte_size(256 * 1024, 0);

/// (endpoint, address) → 1: the addresses each endpoint may send from.
#[map(name = "PALISADE_SOURCES")]
pub static SOURCES: HashMap<SourceKey, u32> = HashMap::with_max_entries(4096, 0);

/// Drops by reason, per CPU (exact, unlike the events).
#[map(name = "PALISADE_DROPS")]
pub static DROPS: PerCpuArray<u64> = PerCpuArray::with_max_entries(DROP_REASONS, 0);

/// Datagrams whose first fragment passed (their later fragments follow).
#[map(name = "PALISADE_FRAGMENTS")]
pub static FRAGMENTS: LruHashMap<FragKey, u32> = LruHashMap::with_max_entries(8192, 0);

/// Each endpoint's drop event budget, per CPU.
#[map(name = "PALISADE_EVENT_BUDGET")]
pub static EVENT_BUDGET: LruPerCpuHashMap<u32, EventBudget> =
    LruPerCpuHashMap::with_max_entries(1024, 0);

/// Per-CPU scratch space for a packet's second flow (the packet an ICMP
/// error quotes), to keep it off the 512-byte stack. Not pinned: nothing
/// outside one program run reads it.
#[map(name = "PALISADE_SCRATCH")]
pub static SCRATCH: PerCpuArray<crate::packet::Flow> = PerCpuArray::with_max_entries(1, 0);
