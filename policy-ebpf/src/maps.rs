//! The maps, named as in `policy_common::maps` (the names are the contract
//! with user space, which pins and fills them). Sizes here are defaults;
//! the agent overrides them before load.

use aya_ebpf::{
    macros::map,
    maps::{Array, HashMap, LpmTrie, LruHashMap, LruPerCpuHashMap, PerCpuArray, RingBuf},
};
use policy_common::{
    CidrKey, Config, CtKey, CtValue, EndpointInfo, EndpointPolicy, EndpointPolicyKey, EventBudget,
    FragKey, IdentityValue, IpcacheKey, PolicyKey, PolicyValue, SourceKey, DROP_REASONS,
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
