//! Where the kernel dataplane keeps its state on bpffs — the one place to
//! read (and, in tests, override through the base folder) where state
//! lives.
//!
//! ```text
//! <base>/v<LAYOUT_VERSION>/maps/<MAP NAME>          every map (policy_common::maps)
//! <base>/v<LAYOUT_VERSION>/links/<ifindex>_<hook>   one TCX link per veth and hook
//! <base>/v<LAYOUT_VERSION>/programs/<build>/<PROG>  the loaded programs, per build of the object
//! ```
//!
//! A restarted agent of the same build takes the pinned programs over
//! instead of loading (and verifying) them again (`kernel::programs`).
//!
//! The layout version in the path means an agent never adopts maps of a
//! layout it does not understand: a new layout starts a new folder. Maps
//! of this layout but other sizes than the agent asks for are moved aside
//! to `v<LAYOUT_VERSION>-<tag>` and taken over from in the same way. The
//! old folder's links keep enforcing until the new agent's first apply has
//! filled the new maps; then the new programs are attached, the old links
//! detached and the old folder removed (`KernelDataplane::finish_upgrade`).

use std::path::{Path, PathBuf};

use policy_common::LAYOUT_VERSION;

/// Default base folder of the agent (one instance per node).
pub const DEFAULT_BASE: &str = "/sys/fs/bpf/palisade/default";
/// Sub-folder of the version folder holding the pinned maps.
pub const MAPS_DIR: &str = "maps";
/// Sub-folder of the version folder holding the pinned links.
pub const LINKS_DIR: &str = "links";
/// Sub-folder of the version folder holding the pinned programs, one
/// folder per build of the eBPF object.
pub const PROGRAMS_DIR: &str = "programs";
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
    version: u32,
    /// Set on a folder moved aside (`v<version>-<tag>`; bpffs refuses
    /// names with a dot).
    tag: Option<String>,
}

impl PinPaths {
    /// Paths under `base` (e.g. `/sys/fs/bpf/palisade/<instance>`).
    pub fn new(base: impl Into<PathBuf>) -> Self {
        Self::with_version(base, LAYOUT_VERSION)
    }

    /// Paths of the version folder `v<version>` under `base`: those of
    /// another layout (an older agent's folder during an upgrade, or a
    /// test faking one).
    #[doc(hidden)]
    pub fn with_version(base: impl Into<PathBuf>, version: u32) -> Self {
        Self {
            base: base.into(),
            version,
            tag: None,
        }
    }

    /// The same version folder moved aside under `v<version>-<tag>`
    /// (`tag` of ASCII letters, digits and `-`).
    pub fn tagged(&self, tag: &str) -> Self {
        Self {
            tag: Some(tag.to_string()),
            ..self.clone()
        }
    }

    /// The folder's name under the base.
    pub fn dir_name(&self) -> String {
        match &self.tag {
            None => format!("v{}", self.version),
            Some(tag) => format!("v{}-{tag}", self.version),
        }
    }

    /// The layout version of the version folder.
    pub fn version(&self) -> u32 {
        self.version
    }

    /// Parses a version folder name (`v<N>`, or `v<N>-<tag>` for one
    /// moved aside) back into `N`.
    pub fn parse_version_dir(name: &str) -> Option<u32> {
        Self::parse_dir_name(name).map(|(v, _)| v)
    }

    fn parse_dir_name(name: &str) -> Option<(u32, Option<&str>)> {
        let rest = name.strip_prefix('v')?;
        let (digits, tag) = match rest.split_once('-') {
            Some((d, t)) => (d, Some(t)),
            None => (rest, None),
        };
        if digits.is_empty() || !digits.bytes().all(|b| b.is_ascii_digit()) {
            return None;
        }
        if let Some(t) = tag {
            if t.is_empty() || !t.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-') {
                return None;
            }
        }
        Some((digits.parse().ok()?, tag))
    }

    /// Version folders under the base other than this one (left by an
    /// agent of another layout), sorted by version.
    pub fn other_versions(&self) -> std::io::Result<Vec<PinPaths>> {
        let entries = match std::fs::read_dir(&self.base) {
            Ok(entries) => entries,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
            Err(e) => return Err(e),
        };
        let mut out = Vec::new();
        for entry in entries {
            let entry = entry?;
            if !entry.file_type()?.is_dir() {
                continue;
            }
            let name = entry.file_name();
            let Some((v, tag)) = name.to_str().and_then(Self::parse_dir_name) else {
                continue;
            };
            let other = Self {
                base: self.base.clone(),
                version: v,
                tag: tag.map(str::to_string),
            };
            if other.dir_name() != self.dir_name() {
                out.push(other);
            }
        }
        out.sort_by(|a, b| (a.version, &a.tag).cmp(&(b.version, &b.tag)));
        Ok(out)
    }

    /// The base folder.
    pub fn base(&self) -> &Path {
        &self.base
    }

    /// `<base>/v<LAYOUT_VERSION>` (or the version given to
    /// [`with_version`](Self::with_version)).
    pub fn version_dir(&self) -> PathBuf {
        self.base.join(self.dir_name())
    }

    /// Folder of the pinned maps.
    pub fn maps_dir(&self) -> PathBuf {
        self.version_dir().join(MAPS_DIR)
    }

    /// Folder of the pinned links.
    pub fn links_dir(&self) -> PathBuf {
        self.version_dir().join(LINKS_DIR)
    }

    /// Folder of the pinned programs (one sub-folder per build).
    pub fn programs_dir(&self) -> PathBuf {
        self.version_dir().join(PROGRAMS_DIR)
    }

    /// Pin path of program `name` of eBPF object build `build` (a hex
    /// digest of the object).
    pub fn program(&self, build: &str, name: &str) -> PathBuf {
        self.programs_dir().join(build).join(name)
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
        assert_eq!(
            p.program("00ff", "pod_egress"),
            PathBuf::from(format!("{v}/programs/00ff/pod_egress"))
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

    #[test]
    fn version_dirs_parse() {
        assert_eq!(PinPaths::parse_version_dir("v0"), Some(0));
        assert_eq!(PinPaths::parse_version_dir("v12"), Some(12));
        assert_eq!(PinPaths::parse_version_dir("v"), None);
        assert_eq!(PinPaths::parse_version_dir("v1x"), None);
        assert_eq!(PinPaths::parse_version_dir("v+1"), None);
        assert_eq!(PinPaths::parse_version_dir("maps"), None);
        assert_eq!(PinPaths::parse_version_dir("v2-resized-1-2"), Some(2));
        assert_eq!(PinPaths::parse_version_dir("v2-"), None);
        assert_eq!(PinPaths::parse_version_dir("v2-a.b"), None);
        let aside = PinPaths::with_version("/b", 2).tagged("resized-1");
        assert_eq!(aside.map("M"), PathBuf::from("/b/v2-resized-1/maps/M"));
        let old = PinPaths::with_version("/b", 0);
        assert_eq!(old.map("M"), PathBuf::from("/b/v0/maps/M"));
        assert_eq!(old.version(), 0);
    }

    #[test]
    fn other_versions_lists_sibling_version_folders() {
        let tmp = std::env::temp_dir().join(format!("palisade-pins-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&tmp);
        let aside = format!("v{LAYOUT_VERSION}-resized-9");
        for d in ["v0", "v7", "vx", &format!("v{LAYOUT_VERSION}"), &aside] {
            std::fs::create_dir_all(tmp.join(d)).unwrap();
        }
        std::fs::write(tmp.join("v9"), b"").unwrap();
        let found: Vec<String> = PinPaths::new(&tmp)
            .other_versions()
            .unwrap()
            .iter()
            .map(PinPaths::dir_name)
            .collect();
        std::fs::remove_dir_all(&tmp).unwrap();
        let mut want: Vec<String> = ["v0", "v7"]
            .into_iter()
            .map(String::from)
            .filter(|d| *d != format!("v{LAYOUT_VERSION}"))
            .collect();
        want.push(aside);
        want.sort_by_key(|d| PinPaths::parse_version_dir(d));
        assert_eq!(found, want);
        assert!(PinPaths::new(tmp.join("none"))
            .other_versions()
            .unwrap()
            .is_empty());
    }
}
