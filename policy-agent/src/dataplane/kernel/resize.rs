//! Map sizes as the kernel really has them: the room per generation the
//! agent fits states into, and pinned maps of other sizes than asked for.
//!
//! A pinned map is reopened as it is (the loader does not compare sizes),
//! so an agent started with new `--map-size-*` flags over an older agent's
//! pins would believe in room the maps do not have. Such a folder is moved
//! aside (renamed to `v<LAYOUT_VERSION>-resized-…`, which bpffs allows: the
//! pins, and the links still attached, stay valid) and the agent takes over
//! from it exactly as from another layout's folder: new maps of the asked
//! sizes, the old links enforcing until the first apply, then switched.

use aya::maps::MapInfo;
use policy_common::maps as names;
use policy_engine::capacity::Capacity;

use super::{kernel_error, DataplaneError, MapSizes, PinPaths};

/// max_entries of the map pinned at `name` in `paths`, `None` if no pin.
fn pinned_max_entries(paths: &PinPaths, name: &str) -> Result<Option<u32>, DataplaneError> {
    let path = paths.map(name);
    if !path.exists() {
        return Ok(None);
    }
    let info = MapInfo::from_pin(&path)
        .map_err(|e| kernel_error(format!("reading {}", path.display()), e))?;
    Ok(Some(info.max_entries()))
}

/// The maps pinned in `paths` whose size differs from what `sizes`
/// creates: (map, pinned, asked).
pub(super) fn mismatches(
    paths: &PinPaths,
    sizes: &MapSizes,
) -> Result<Vec<(&'static str, u32, u32)>, DataplaneError> {
    let mut out = Vec::new();
    for (name, want) in sizes.max_entries() {
        if let Some(have) = pinned_max_entries(paths, name)? {
            if have != want {
                out.push((name, have, want));
            }
        }
    }
    Ok(out)
}

/// Moves the version folder `paths` aside when its pinned maps have other
/// sizes than `sizes` asks for; returns where it went (an old folder for
/// the upgrade to take over from), or `None` when nothing had to move.
pub(super) fn set_aside(
    paths: &PinPaths,
    sizes: &MapSizes,
) -> Result<Option<PinPaths>, DataplaneError> {
    let differ = mismatches(paths, sizes)?;
    if differ.is_empty() {
        return Ok(None);
    }
    for (map, pinned, asked) in &differ {
        tracing::warn!(
            map,
            pinned,
            asked,
            "pinned map has another size than asked for"
        );
    }
    let secs = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0);
    let aside = paths.tagged(&format!("resized-{secs}-{}", std::process::id()));
    let (from, to) = (paths.version_dir(), aside.version_dir());
    std::fs::rename(&from, &to).map_err(|e| {
        kernel_error(
            format!("moving {} aside to {}", from.display(), to.display()),
            e,
        )
    })?;
    Ok(Some(aside))
}

/// Room per generation of the maps pinned in `paths` (each holds both
/// generations, so half of its max_entries).
pub(super) fn capacity(paths: &PinPaths) -> Result<Capacity, DataplaneError> {
    let half = |name: &str| -> Result<usize, DataplaneError> {
        let max = pinned_max_entries(paths, name)?.ok_or_else(|| {
            kernel_error(
                format!("reading the size of {name}"),
                "map not pinned after loading",
            )
        })?;
        Ok(usize::try_from(max / 2).unwrap_or(usize::MAX))
    };
    Ok(Capacity {
        endpoints: half(names::EP_POLICY)?,
        ipcache: half(names::IPCACHE)?,
        cidrs: half(names::CIDRS)?,
        policy: half(names::POLICY)?,
    })
}
