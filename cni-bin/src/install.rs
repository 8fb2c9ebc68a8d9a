//! `palisade-cni install`: puts the plugin on a node. Copies the binary into
//! the CNI bin dir and appends `{"type":"palisade-cni"}` as the last plugin
//! of the node's active .conflist (the one the runtime loads: the first
//! `.conf`/`.conflist`/`.json` file by name). Both steps are idempotent and
//! write through a temporary file and a rename, so the runtime never reads a
//! half-written file. The conflist is edited as text ([`conflist`]), so
//! [`ensure_unchained`] gives back the original bytes.

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use serde_json::{json, Value};

pub mod conflist;

/// The plugin's `type`, i.e. its binary name.
pub const PLUGIN_TYPE: &str = "palisade-cni";

/// Options of `palisade-cni install`.
#[derive(Clone, Debug, clap::Args)]
pub struct InstallOptions {
    /// Directory holding the runtime's CNI network configurations.
    #[arg(long, default_value = "/etc/cni/net.d")]
    pub conflist_dir: PathBuf,
    /// Directory the runtime looks plugin binaries up in.
    #[arg(long, default_value = "/opt/cni/bin")]
    pub bin_dir: PathBuf,
    /// Binary to install (default: this executable).
    #[arg(long)]
    pub source: Option<PathBuf>,
    /// `agentSocket` to put in the chained entry (default: none, the plugin
    /// then uses the agent's default socket).
    #[arg(long)]
    pub agent_socket: Option<PathBuf>,
    /// Wait up to this many seconds for the main plugin (e.g. Flannel) to
    /// write its .conflist.
    #[arg(long, default_value_t = 0)]
    pub wait_seconds: u64,
    /// Keep running and re-chain every N seconds (a main plugin that rewrites
    /// its .conflist drops our entry).
    #[arg(long)]
    pub watch_seconds: Option<u64>,
    /// Only copy the binary; leave the conflist alone. The DaemonSet's
    /// init container runs this: the agent chains the entry itself once it
    /// enforces, so an agent that cannot load its programs never makes
    /// every pod's ADD fail.
    #[arg(long, conflicts_with_all = ["wait_seconds", "watch_seconds", "agent_socket"])]
    pub binary_only: bool,
}

/// Failures of the installer.
#[derive(Debug, thiserror::Error)]
pub enum InstallError {
    /// A file operation failed.
    #[error("cannot {action} {path}: {source}")]
    Io {
        /// What was being done ("read", "write", ...).
        action: &'static str,
        /// The file or directory.
        path: PathBuf,
        /// Cause.
        #[source]
        source: std::io::Error,
    },
    /// A configuration file cannot be edited (malformed JSON, no plugin
    /// list...). The file is left as it was.
    #[error("{path}: {source} (file left unchanged)")]
    Malformed {
        /// The file.
        path: PathBuf,
        /// What is wrong with it.
        #[source]
        source: conflist::EditError,
    },
    /// No network configuration in the directory.
    #[error("no CNI network configuration in {dir} (waited {waited_seconds}s): install the main CNI plugin (e.g. Flannel) first")]
    NoConflist {
        /// The directory searched.
        dir: PathBuf,
        /// How long we waited.
        waited_seconds: u64,
    },
}

fn io_err(action: &'static str, path: &Path) -> impl FnOnce(std::io::Error) -> InstallError {
    let path = path.to_path_buf();
    move |source| InstallError::Io {
        action,
        path,
        source,
    }
}

/// Runs the whole installer as `palisade-cni install` does, printing what it
/// changes.
pub fn run(opts: &InstallOptions) -> Result<(), InstallError> {
    let source = match &opts.source {
        Some(s) => s.clone(),
        None => std::env::current_exe().map_err(io_err("locate", Path::new("/proc/self/exe")))?,
    };
    let entry = chained_entry(opts.agent_socket.as_deref());
    let target = opts.bin_dir.join(PLUGIN_TYPE);
    report_binary(install_binary(&source, &opts.bin_dir)?, &target);
    if opts.binary_only {
        return Ok(());
    }
    let conflist = wait_for_config(&opts.conflist_dir, Duration::from_secs(opts.wait_seconds))?;
    report_chain(ensure_chained(&conflist, &entry)?, &conflist);
    let Some(every) = opts.watch_seconds else {
        return Ok(());
    };
    loop {
        std::thread::sleep(Duration::from_secs(every.max(1)));
        let pass = install_binary(&source, &opts.bin_dir).and_then(|changed| {
            if changed {
                report_binary(true, &target);
            }
            let conflist = wait_for_config(&opts.conflist_dir, Duration::ZERO)?;
            if ensure_chained(&conflist, &entry)? {
                report_chain(true, &conflist);
            }
            Ok(())
        });
        if let Err(e) = pass {
            eprintln!("palisade-cni install: {e} (retrying in {every}s)");
        }
    }
}

fn report_binary(changed: bool, target: &Path) {
    if changed {
        println!("installed {}", target.display());
    } else {
        println!("{} is up to date", target.display());
    }
}

fn report_chain(changed: bool, conflist: &Path) {
    if changed {
        println!("chained {PLUGIN_TYPE} last into {}", conflist.display());
    } else {
        println!("{} already chains {PLUGIN_TYPE} last", conflist.display());
    }
}

/// The plugin entry to chain.
pub fn chained_entry(agent_socket: Option<&Path>) -> Value {
    let mut entry = json!({ "type": PLUGIN_TYPE });
    if let Some(socket) = agent_socket {
        entry["agentSocket"] = json!(socket);
    }
    entry
}

/// Copies `source` to `bin_dir/palisade-cni` (mode 0755) unless it is already
/// there with the same content. Returns whether it changed anything.
pub fn install_binary(source: &Path, bin_dir: &Path) -> Result<bool, InstallError> {
    use std::os::unix::fs::PermissionsExt;
    let bytes = std::fs::read(source).map_err(io_err("read", source))?;
    let target = bin_dir.join(PLUGIN_TYPE);
    if let Ok(existing) = std::fs::read(&target) {
        let mode = std::fs::metadata(&target).map(|m| m.permissions().mode() & 0o777);
        if existing == bytes && matches!(mode, Ok(0o755)) {
            return Ok(false);
        }
    }
    std::fs::create_dir_all(bin_dir).map_err(io_err("create", bin_dir))?;
    write_atomically(&target, &bytes, 0o755)?;
    Ok(true)
}

/// The configuration file the runtime loads from `dir`: the first `.conf`,
/// `.conflist` or `.json` file by name, if any.
pub fn active_config(dir: &Path) -> Result<Option<PathBuf>, InstallError> {
    Ok(config_files(dir)?.into_iter().next())
}

/// Every `.conf`, `.conflist` or `.json` file of `dir`, by name (none when
/// `dir` does not exist).
pub fn config_files(dir: &Path) -> Result<Vec<PathBuf>, InstallError> {
    let entries = match std::fs::read_dir(dir) {
        Ok(e) => e,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
        Err(e) => return Err(io_err("list", dir)(e)),
    };
    let mut files = Vec::new();
    for entry in entries {
        let path = entry.map_err(io_err("list", dir))?.path();
        let is_config = path
            .extension()
            .and_then(|e| e.to_str())
            .is_some_and(|e| matches!(e, "conf" | "conflist" | "json"));
        if is_config && path.is_file() {
            files.push(path);
        }
    }
    files.sort();
    Ok(files)
}

fn wait_for_config(dir: &Path, patience: Duration) -> Result<PathBuf, InstallError> {
    let start = Instant::now();
    loop {
        if let Some(path) = active_config(dir)? {
            return Ok(path);
        }
        if start.elapsed() >= patience {
            return Err(InstallError::NoConflist {
                dir: dir.to_path_buf(),
                waited_seconds: patience.as_secs(),
            });
        }
        std::thread::sleep(Duration::from_secs(1));
    }
}

/// Chains `entry` last into the conflist file at `path` (see
/// [`conflist::chain`]), rewriting the file only if it changes. Returns
/// whether it did.
pub fn ensure_chained(path: &Path, entry: &Value) -> Result<bool, InstallError> {
    edit(path, |text| conflist::chain(text, entry))
}

/// Removes every `palisade-cni` entry from the conflist file at `path` (see
/// [`conflist::unchain`]), keeping every other byte. Returns whether it
/// changed the file.
pub fn ensure_unchained(path: &Path) -> Result<bool, InstallError> {
    edit(path, conflist::unchain)
}

/// Options of `palisade-cni uninstall`.
#[derive(Clone, Debug, clap::Args)]
pub struct UninstallOptions {
    /// Directory holding the runtime's CNI network configurations.
    #[arg(long, default_value = "/etc/cni/net.d")]
    pub conflist_dir: PathBuf,
    /// Directory the runtime looks plugin binaries up in.
    #[arg(long, default_value = "/opt/cni/bin")]
    pub bin_dir: PathBuf,
    /// Leave the `palisade-cni` binary in the bin dir.
    #[arg(long)]
    pub keep_binary: bool,
}

/// What [`uninstall`] changed.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Uninstalled {
    /// Configuration files our entry was removed from.
    pub unchained: Vec<PathBuf>,
    /// The binary, if it was removed.
    pub binary: Option<PathBuf>,
}

/// Removes every `palisade-cni` entry from every network configuration in
/// `conflist_dir` (each file keeps every other byte and is replaced
/// atomically), then, unless told to keep it, the binary from `bin_dir`:
/// in that order, so no configuration ever names a missing plugin.
/// Idempotent: a second run changes nothing. A malformed file is reported
/// and left as it was, after the others are done.
pub fn uninstall(opts: &UninstallOptions) -> Result<Uninstalled, InstallError> {
    let mut done = Uninstalled::default();
    let mut first_error = None;
    for path in config_files(&opts.conflist_dir)? {
        match ensure_unchained(&path) {
            Ok(true) => done.unchained.push(path),
            Ok(false) => {}
            // A file that is not a conflist (a single-plugin .conf) cannot
            // hold our entry: nothing to do there.
            Err(InstallError::Malformed {
                source: conflist::EditError::NotAConflist,
                ..
            }) => {}
            Err(e) => {
                first_error.get_or_insert(e);
            }
        }
    }
    if let Some(e) = first_error {
        return Err(e);
    }
    if !opts.keep_binary {
        let target = opts.bin_dir.join(PLUGIN_TYPE);
        match std::fs::remove_file(&target) {
            Ok(()) => done.binary = Some(target),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => return Err(io_err("remove", &target)(e)),
        }
    }
    Ok(done)
}

/// Runs [`uninstall`] as `palisade-cni uninstall` does, printing what it
/// changes.
pub fn run_uninstall(opts: &UninstallOptions) -> Result<(), InstallError> {
    let done = uninstall(opts)?;
    for path in &done.unchained {
        println!("removed {PLUGIN_TYPE} from {}", path.display());
    }
    if let Some(binary) = &done.binary {
        println!("removed {}", binary.display());
    }
    if done == Uninstalled::default() {
        println!(
            "{PLUGIN_TYPE} is not installed in {} (nothing to do)",
            opts.conflist_dir.display()
        );
    }
    Ok(())
}

/// Reads `path`, applies `change` to its text and, if that gives a new text,
/// writes it back atomically with the file's own permissions.
fn edit(
    path: &Path,
    change: impl FnOnce(&str) -> Result<Option<String>, conflist::EditError>,
) -> Result<bool, InstallError> {
    use std::os::unix::fs::PermissionsExt;
    let raw = std::fs::read(path).map_err(io_err("read", path))?;
    let malformed = |source| InstallError::Malformed {
        path: path.to_path_buf(),
        source,
    };
    let text = std::str::from_utf8(&raw).map_err(|e| malformed(conflist::EditError::NotUtf8(e)))?;
    let Some(new) = change(text).map_err(malformed)? else {
        return Ok(false);
    };
    let mode = std::fs::metadata(path)
        .map(|m| m.permissions().mode() & 0o7777)
        .map_err(io_err("stat", path))?;
    write_atomically(path, new.as_bytes(), mode)?;
    Ok(true)
}

/// Writes through a hidden temporary file in the same directory (with an
/// extension the runtime ignores) and renames it over `target`.
fn write_atomically(target: &Path, bytes: &[u8], mode: u32) -> Result<(), InstallError> {
    use std::io::Write;
    use std::os::unix::fs::PermissionsExt;
    let dir = target.parent().unwrap_or(Path::new("."));
    let name = target
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    let tmp = dir.join(format!(".{name}.palisade-tmp"));
    let written = (|| {
        let mut file = std::fs::File::create(&tmp)?;
        file.write_all(bytes)?;
        file.set_permissions(std::fs::Permissions::from_mode(mode))?;
        file.sync_all()
    })();
    if let Err(e) = written {
        let _ = std::fs::remove_file(&tmp);
        return Err(io_err("write", &tmp)(e));
    }
    std::fs::rename(&tmp, target).map_err(|e| {
        let _ = std::fs::remove_file(&tmp);
        io_err("rename into place", target)(e)
    })
}

#[cfg(test)]
mod tests;
