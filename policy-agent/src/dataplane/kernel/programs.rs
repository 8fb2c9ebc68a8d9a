//! The programs the dataplane attaches: loaded from the embedded object,
//! or taken over from the pins a previous agent of the same build left.
//!
//! Loading means the kernel's verifier walks every program, which takes
//! most of an agent's start (about 0.6 s here, with the four loads in
//! parallel). The programs are pinned under a folder named for a digest
//! of the object, so a restarted agent of the same build finds them and
//! uses them as they are; any other build loads its own and removes the
//! older builds' pins (links and filters still using an old program keep
//! it alive until they are moved to the new one).

use std::os::fd::AsFd;
use std::time::Instant;

use aya::maps::MapInfo;

use super::attach::classifier;
use super::*;

/// The loaded programs, by name.
pub(super) type Programs = BTreeMap<&'static str, SchedClassifier>;

/// Every program of the object.
pub(super) const ALL_PROGRAMS: [&str; 4] = [
    PROG_POD_EGRESS,
    PROG_POD_INGRESS,
    PROG_NODE_EGRESS,
    PROG_NODE_INGRESS,
];

/// A name for this build of the object: its FNV-1a digest (64 bits, in
/// hex), the same for every agent binary that embeds the same bytes.
pub(super) fn build_id(object: &[u8]) -> String {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for b in object {
        h ^= u64::from(*b);
        h = h.wrapping_mul(0x0000_0100_0000_01b3);
    }
    format!("{h:016x}")
}

/// The programs of build `build`: taken over from their pins when all are
/// there and read this folder's maps ([`take_over`]), else loaded from
/// `ebpf` and pinned. Pins of other builds are removed; which way it went
/// is logged.
pub(super) fn open(
    ebpf: &mut Ebpf,
    paths: &PinPaths,
    build: &str,
) -> Result<Programs, DataplaneError> {
    let started = Instant::now();
    let (programs, reused) = match take_over(paths, build) {
        Some(p) => (p, true),
        None => (load_and_pin(ebpf, paths, build)?, false),
    };
    remove_other_builds(paths, build)?;
    tracing::info!(
        build,
        reused,
        ms = started.elapsed().as_millis() as u64,
        "{}",
        if reused {
            "programs taken over from their pins"
        } else {
            "programs loaded"
        }
    );
    Ok(programs)
}

/// The pinned programs of `build`, if every one is there and, between
/// them, they read every map pinned in this folder. Programs loaded
/// against other instances of those maps (a map pin removed and created
/// again since) would not: they would enforce what the old maps hold.
/// The programs' own unpinned maps (per-CPU scratch space, read-only
/// data) are theirs to keep.
fn take_over(paths: &PinPaths, build: &str) -> Option<Programs> {
    let ours: BTreeSet<u32> = ALL_MAPS
        .iter()
        .filter_map(|m| MapInfo::from_pin(paths.map(m)).ok())
        .map(|info| info.id())
        .collect();
    if ours.len() != ALL_MAPS.len() {
        tracing::info!(
            found = ours.len(),
            want = ALL_MAPS.len(),
            "not every map is pinned yet; loading the programs"
        );
        return None;
    }
    let mut out = Programs::new();
    let mut used = BTreeSet::new();
    for name in ALL_PROGRAMS {
        let path = paths.program(build, name);
        if !path.exists() {
            tracing::info!(path = %path.display(), "no pinned program of this build; loading the programs");
            return None;
        }
        let p = match SchedClassifier::from_pin(&path) {
            Ok(p) => p,
            Err(e) => {
                tracing::warn!(path = %path.display(), error = %e, "pinned program unusable; loading again");
                return None;
            }
        };
        let ids = match p.fd().map(|fd| super::sys::prog_map_ids(fd.as_fd())) {
            Ok(Ok(ids)) => ids,
            Ok(Err(e)) => {
                tracing::warn!(path = %path.display(), error = %e, "cannot read the pinned program's maps; loading again");
                return None;
            }
            Err(e) => {
                tracing::warn!(path = %path.display(), error = %e, "pinned program without a descriptor; loading again");
                return None;
            }
        };
        used.extend(ids.into_iter().filter(|id| ours.contains(id)));
        out.insert(name, p);
    }
    if used != ours {
        tracing::warn!(
            dir = %paths.programs_dir().join(build).display(),
            "pinned programs do not read this folder's maps; loading again"
        );
        return None;
    }
    Some(out)
}

/// Loads the programs of `ebpf`, pins them for `build` and opens the pins.
fn load_and_pin(
    ebpf: &mut Ebpf,
    paths: &PinPaths,
    build: &str,
) -> Result<Programs, DataplaneError> {
    load_programs(ebpf)?;
    let dir = paths.programs_dir().join(build);
    fs::create_dir_all(&dir).map_err(|e| kernel_error(format!("creating {}", dir.display()), e))?;
    let mut out = Programs::new();
    for name in ALL_PROGRAMS {
        let path = paths.program(build, name);
        // A pin left by an agent that stopped half-way through pinning.
        remove_file(&path)?;
        let p = ebpf
            .program_mut(name)
            .ok_or_else(|| kernel_error("loading the eBPF object", format!("it lacks {name}")))?;
        p.pin(&path)
            .map_err(|e| kernel_error(format!("pinning {}", path.display()), e))?;
        let pinned = SchedClassifier::from_pin(&path)
            .map_err(|e| kernel_error(format!("opening {}", path.display()), e))?;
        out.insert(name, pinned);
    }
    Ok(out)
}

/// Loads the four programs, each on a thread of its own: the kernel's
/// verifier takes most of the agent's start (about a second here when
/// done one after another) and runs on the calling CPU, so the loads
/// share the node's cores.
fn load_programs(ebpf: &mut Ebpf) -> Result<(), DataplaneError> {
    let mut progs = Vec::new();
    for (name, p) in ebpf.programs_mut() {
        if ALL_PROGRAMS.contains(&name) {
            progs.push((name, classifier(name, p)?));
        }
    }
    if progs.len() != ALL_PROGRAMS.len() {
        return Err(kernel_error(
            "loading the eBPF object",
            format!("it lacks one of the programs {ALL_PROGRAMS:?}"),
        ));
    }
    std::thread::scope(|scope| {
        let loads: Vec<_> = progs
            .into_iter()
            .map(|(name, p)| (name, scope.spawn(move || p.load())))
            .collect();
        for (name, load) in loads {
            match load.join() {
                Ok(Ok(())) => {}
                Ok(Err(e)) => return Err(kernel_error(format!("loading program {name}"), e)),
                Err(_) => {
                    return Err(kernel_error(
                        format!("loading program {name}"),
                        "the loading thread panicked",
                    ))
                }
            }
        }
        Ok(())
    })
}

/// Removes the pinned programs of every build but `build`.
fn remove_other_builds(paths: &PinPaths, build: &str) -> Result<(), DataplaneError> {
    let dir = paths.programs_dir();
    let entries = match fs::read_dir(&dir) {
        Ok(e) => e,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(()),
        Err(e) => return Err(kernel_error(format!("reading {}", dir.display()), e)),
    };
    for entry in entries.flatten() {
        if entry.file_name() != build {
            let path = entry.path();
            fs::remove_dir_all(&path)
                .map_err(|e| kernel_error(format!("removing {}", path.display()), e))?;
        }
    }
    Ok(())
}

/// Program `name`.
pub(super) fn program<'a>(
    programs: &'a mut Programs,
    name: &str,
) -> Result<&'a mut SchedClassifier, DataplaneError> {
    programs.get_mut(name).ok_or_else(|| {
        kernel_error(
            format!("eBPF object has no program {name}"),
            "missing program",
        )
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_build_id_names_the_bytes() {
        assert_eq!(build_id(b""), "cbf29ce484222325");
        assert_eq!(build_id(b"a"), "af63dc4c8601ec8c");
        assert_ne!(build_id(b"ab"), build_id(b"ba"));
        assert_eq!(build_id(EBPF_OBJECT), build_id(EBPF_OBJECT));
    }
}
