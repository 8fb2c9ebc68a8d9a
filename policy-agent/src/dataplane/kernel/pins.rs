//! Where the kernel dataplane keeps its state on bpffs — the one place to
//! read (and, in tests, override through the base folder) where state
//! lives.
//!
//! ```text
//! <base>/v<LAYOUT_VERSION>/maps/<MAP NAME>          every map (policy_common::maps)
//! <base>/v<LAYOUT_VERSION>/links/<ifindex>_<hook>   one TCX link per veth and hook
//! ```
//!
//! The layout version in the path means an agent never adopts maps of a
//! layout it does not understand: a new layout starts a new folder.

use std::path::{Path, PathBuf};

use policy_common::LAYOUT_VERSION;

/// Default base folder of the agent (one instance per node).
pub const DEFAULT_BASE: &str = "/sys/fs/bpf/palisade/default";
/// Sub-folder of the version folder holding the pinned maps.
pub const MAPS_DIR: &str = "maps";
/// Sub-folder of the version folder holding the pinned links.
pub const LINKS_DIR: &str = "links";
/// Link pin suffix of the program checking packets that leave the pod
/// (tc ingress of the host-side veth).
pub const HOOK_TC_INGRESS: &str = "tc_ingress";
/// Link pin suffix of the program checking packets that enter the pod
/// (tc egress of the host-side veth).
pub const HOOK_TC_EGRESS: &str = "tc_egress";

/// Pin paths under one base folder.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PinPaths {
    base: PathBuf,
}

impl PinPaths {
    /// Paths under `base` (e.g. `/sys/fs/bpf/palisade/<instance>`).
    pub fn new(base: impl Into<PathBuf>) -> Self {
        Self { base: base.into() }
    }

    /// The base folder.
    pub fn base(&self) -> &Path {
        &self.base
    }

    /// `<base>/v<LAYOUT_VERSION>`.
    pub fn version_dir(&self) -> PathBuf {
        self.base.join(format!("v{LAYOUT_VERSION}"))
    }

    /// Folder of the pinned maps.
    pub fn maps_dir(&self) -> PathBuf {
        self.version_dir().join(MAPS_DIR)
    }

    /// Folder of the pinned links.
    pub fn links_dir(&self) -> PathBuf {
        self.version_dir().join(LINKS_DIR)
    }

    /// Pin path of map `name` (one of `policy_common::maps`).
    pub fn map(&self, name: &str) -> PathBuf {
        self.maps_dir().join(name)
    }

    /// Pin path of the link of `hook` ([`HOOK_TC_INGRESS`] or
    /// [`HOOK_TC_EGRESS`]) on interface `ifindex`.
    pub fn link(&self, ifindex: u32, hook: &str) -> PathBuf {
        self.links_dir().join(format!("{ifindex}_{hook}"))
    }

    /// Parses a link pin file name back into `(ifindex, hook)`.
    pub fn parse_link_name(name: &str) -> Option<(u32, &str)> {
        let (ifindex, hook) = name.split_once('_')?;
        let hook = match hook {
            HOOK_TC_INGRESS => HOOK_TC_INGRESS,
            HOOK_TC_EGRESS => HOOK_TC_EGRESS,
            _ => return None,
        };
        Some((ifindex.parse().ok()?, hook))
    }
}

impl Default for PinPaths {
    fn default() -> Self {
        Self::new(DEFAULT_BASE)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn paths_carry_the_layout_version() {
        let p = PinPaths::new("/sys/fs/bpf/palisade/t");
        let v = format!("/sys/fs/bpf/palisade/t/v{LAYOUT_VERSION}");
        assert_eq!(
            p.map("PALISADE_CT"),
            PathBuf::from(format!("{v}/maps/PALISADE_CT"))
        );
        assert_eq!(
            p.link(7, HOOK_TC_EGRESS),
            PathBuf::from(format!("{v}/links/7_tc_egress"))
        );
    }

    #[test]
    fn link_names_round_trip() {
        assert_eq!(
            PinPaths::parse_link_name("12_tc_ingress"),
            Some((12, HOOK_TC_INGRESS))
        );
        assert_eq!(PinPaths::parse_link_name("12_tc_sideways"), None);
        assert_eq!(PinPaths::parse_link_name("x_tc_egress"), None);
    }
}
