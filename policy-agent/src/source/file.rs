//! Cluster state from manifest files (`policy-agent run --manifests`), as
//! the test bed and the demo use: re-read whenever a file changes and sent
//! whole ([`Change::Replace`]; the agent compiles it in full, and applies
//! nothing if nothing changed).
//!
//! A file that fails to load is reported and the last good state is kept:
//! bad input never loses state.

use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime};

use policy_engine::model::Snapshot;

use super::Change;

/// The message the agent logs once a state read from the files is in the
/// maps (benchmarks wait for it after rewriting a file).
pub const APPLIED_LOG: &str = "manifests applied";

/// How often the files are checked for changes.
pub const POLL_INTERVAL: Duration = Duration::from_millis(500);

/// Loads `paths` once (failing if they cannot be read), then keeps watching
/// them in a background task. Returns the channel the agent reads, with the
/// first state already in it.
pub fn spawn(
    paths: Vec<PathBuf>,
) -> Result<super::ChangeRx, policy_engine::manifest::ManifestError> {
    let first = load(&paths)?;
    let (tx, rx) = super::channel();
    // The channel is empty and has room: this cannot fail.
    let _ = tx.try_send(Change::Replace(first));
    tokio::spawn(async move {
        let mut seen = fingerprint(&paths);
        loop {
            tokio::time::sleep(POLL_INTERVAL).await;
            let now = fingerprint(&paths);
            if now == seen {
                continue;
            }
            seen = now;
            match load(&paths) {
                Ok(snapshot) => {
                    tracing::info!("manifests changed, recompiling");
                    if tx.send(Change::Replace(snapshot)).await.is_err() {
                        return;
                    }
                }
                Err(e) => {
                    tracing::error!(error = %e, "manifests changed but cannot be loaded; keeping the last good state")
                }
            }
        }
    });
    Ok(rx)
}

fn load(paths: &[PathBuf]) -> Result<Snapshot, policy_engine::manifest::ManifestError> {
    let loaded = policy_engine::manifest::load_paths(paths)?;
    for w in &loaded.warnings {
        tracing::warn!(warning = %w, "manifest");
    }
    Ok(loaded.snapshot)
}

/// Names, sizes and modification times of every file under `paths`.
fn fingerprint(paths: &[PathBuf]) -> Vec<(PathBuf, u64, Option<SystemTime>)> {
    let mut out = Vec::new();
    for p in paths {
        collect(p, &mut out);
    }
    out.sort();
    out
}

fn collect(path: &Path, out: &mut Vec<(PathBuf, u64, Option<SystemTime>)>) {
    let Ok(meta) = std::fs::metadata(path) else {
        out.push((path.to_path_buf(), 0, None));
        return;
    };
    if meta.is_dir() {
        if let Ok(entries) = std::fs::read_dir(path) {
            for e in entries.flatten() {
                collect(&e.path(), out);
            }
        }
    } else {
        out.push((path.to_path_buf(), meta.len(), meta.modified().ok()));
    }
}
