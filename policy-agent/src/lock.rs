//! One agent per node: `run` holds an exclusive lock on a file beside the
//! CNI socket for its whole life. A second agent (a stuck rollout, a
//! developer's manual start) refuses to start instead of taking the socket
//! and re-pointing the pinned programs under the first one's feet.
//!
//! The lock is `flock(2)` on an open file: the kernel drops it when the
//! holder exits, however it exits, so a crashed agent never blocks its
//! successor.

use std::fs::{File, OpenOptions};
use std::path::{Path, PathBuf};

use nix::fcntl::{Flock, FlockArg};

/// Failures taking the node lock.
#[derive(Debug, thiserror::Error)]
pub enum LockError {
    /// Another process holds the lock.
    #[error("another policy-agent already runs on this node (it holds {path}); refusing to start")]
    Held {
        /// The lock file.
        path: PathBuf,
    },
    /// The lock file cannot be opened or locked.
    #[error("cannot lock {path}: {source}")]
    Io {
        /// The lock file.
        path: PathBuf,
        /// Cause.
        #[source]
        source: std::io::Error,
    },
}

/// The held lock; released when dropped (or when the process exits).
#[derive(Debug)]
pub struct NodeLock {
    _lock: Flock<File>,
    path: PathBuf,
}

impl NodeLock {
    /// The lock file.
    pub fn path(&self) -> &Path {
        &self.path
    }
}

/// The lock file of the agent serving `cni_socket`: `agent.lock` beside it.
pub fn lock_file_for(cni_socket: &Path) -> PathBuf {
    cni_socket.with_file_name("agent.lock")
}

/// Takes the lock at `path` (creating the file and its folder, mode 0600)
/// without waiting: [`LockError::Held`] if another process has it.
pub fn acquire(path: &Path) -> Result<NodeLock, LockError> {
    use std::os::unix::fs::OpenOptionsExt;
    let io = |source| LockError::Io {
        path: path.to_path_buf(),
        source,
    };
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir).map_err(io)?;
    }
    let file = OpenOptions::new()
        .create(true)
        .truncate(false)
        .write(true)
        .mode(0o600)
        .open(path)
        .map_err(io)?;
    match Flock::lock(file, FlockArg::LockExclusiveNonblock) {
        Ok(lock) => Ok(NodeLock {
            _lock: lock,
            path: path.to_path_buf(),
        }),
        Err((_, nix::errno::Errno::EWOULDBLOCK)) => Err(LockError::Held {
            path: path.to_path_buf(),
        }),
        Err((_, e)) => Err(io(std::io::Error::from(e))),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_second_holder_is_refused_until_the_first_lets_go() {
        let dir = tempfile::tempdir().unwrap();
        let path = lock_file_for(&dir.path().join("run").join("cni.sock"));
        let first = acquire(&path).unwrap();
        assert_eq!(first.path(), path);
        // Another open file description of the same file: what a second
        // agent process gets.
        let err = acquire(&path).unwrap_err();
        assert!(matches!(err, LockError::Held { .. }), "{err}");
        assert!(err.to_string().contains("another policy-agent"), "{err}");
        drop(first);
        acquire(&path).unwrap();
    }
}
