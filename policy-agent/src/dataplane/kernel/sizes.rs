//! Map capacities: the `--map-size-*` flags, their bounds, and what each
//! map is created with.

use super::*;

/// Map capacities, set before the maps are created (adopted maps keep the
/// size they were created with). Per-generation sizes are doubled for the
/// maps that hold both generations.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct MapSizes {
    /// Attached interfaces; the endpoint-policy map gets twice this.
    pub endpoints: u32,
    /// Exact pod addresses per generation.
    pub ipcache: u32,
    /// CIDR prefixes per generation.
    pub cidrs: u32,
    /// Policy entries per generation (all endpoints together).
    pub policy: u32,
    /// Conntrack entries (LRU).
    pub conntrack: u32,
    /// Event ring buffer size in bytes (a power of two, ≥ one page).
    pub events_bytes: u32,
}

impl Default for MapSizes {
    /// 1,024 interfaces, 32,768 addresses, 16,384 CIDRs and 131,072 policy
    /// entries (1,000 per endpoint for ~130 endpoints) per generation,
    /// 131,072 tracked flows, 256 KiB of events.
    fn default() -> Self {
        Self {
            endpoints: 1024,
            ipcache: 32_768,
            cidrs: 16_384,
            policy: 131_072,
            conntrack: 131_072,
            events_bytes: 256 * 1024,
        }
    }
}

impl MapSizes {
    /// Sizes `endpoints` accepts (`--map-size-endpoints`).
    pub const ENDPOINTS: std::ops::RangeInclusive<u32> = 4..=16_384;
    /// Sizes `ipcache` accepts (`--map-size-ipcache`).
    pub const IPCACHE: std::ops::RangeInclusive<u32> = 16..=1_048_576;
    /// Sizes `cidrs` accepts (`--map-size-cidrs`).
    pub const CIDRS: std::ops::RangeInclusive<u32> = 16..=4_194_304;
    /// Sizes `policy` accepts (`--map-size-policy`).
    pub const POLICY: std::ops::RangeInclusive<u32> = 16..=4_194_304;
    /// Sizes `conntrack` accepts (`--map-size-conntrack`).
    pub const CONNTRACK: std::ops::RangeInclusive<u32> = 1_024..=4_194_304;

    /// Every bounded size: (what, value, accepted range).
    pub(super) fn bounded(&self) -> [(&'static str, u32, std::ops::RangeInclusive<u32>); 5] {
        [
            ("endpoints", self.endpoints, Self::ENDPOINTS),
            ("ipcache", self.ipcache, Self::IPCACHE),
            ("cidrs", self.cidrs, Self::CIDRS),
            ("policy", self.policy, Self::POLICY),
            ("conntrack", self.conntrack, Self::CONNTRACK),
        ]
    }

    /// Checks every size against its bounds (and the ring buffer: a power
    /// of two of at least one page).
    pub fn validate(&self) -> Result<(), String> {
        for (what, v, range) in self.bounded() {
            if !range.contains(&v) {
                return Err(format!(
                    "{what} map size {v} is out of bounds ({}..={})",
                    range.start(),
                    range.end()
                ));
            }
        }
        if !self.events_bytes.is_power_of_two() || self.events_bytes < 4096 {
            return Err(format!(
                "event ring buffer size {} is not a power of two of at least 4096 bytes",
                self.events_bytes
            ));
        }
        Ok(())
    }

    /// max_entries of each map these sizes create, by map name (the ring
    /// buffer left out: its size is not an entry count).
    pub fn max_entries(&self) -> [(&'static str, u32); 12] {
        [
            (names::ENDPOINTS, self.endpoints),
            (names::EP_POLICY, self.endpoints.saturating_mul(2)),
            (names::IPCACHE, self.ipcache.saturating_mul(2)),
            (names::CIDRS, self.cidrs.saturating_mul(2)),
            (names::POLICY, self.policy.saturating_mul(2)),
            (names::CONNTRACK, self.conntrack),
            (
                names::SOURCES,
                self.endpoints.saturating_mul(SOURCES_PER_ENDPOINT),
            ),
            (names::EVENT_BUDGET, self.endpoints),
            // An endpoint id per attached interface, and room for the ids
            // of endpoints just gone.
            (names::CT_COUNT, self.endpoints.saturating_mul(2)),
            (names::CT_REFUSED, self.endpoints),
            // Per generation: every ClusterIP (at most one per pod address
            // would be a lot), and each local pod's addresses.
            (names::SERVICES, self.ipcache.saturating_mul(2)),
            (names::LOCAL_ADDRS, self.endpoints.saturating_mul(4)),
        ]
    }
}
