//! Everything a test bed creates, undone in reverse order — on drop, on an
//! error half-way through `start`, and on SIGINT/SIGTERM through a global
//! registry of live test beds.

use std::path::PathBuf;
use std::sync::{Arc, Mutex, MutexGuard, PoisonError, Weak};

use crate::agent::Agent;
use crate::cni::{Attachment, Network};
use crate::daemon::Daemon;
use crate::netns;

/// What one test bed holds on the machine.
#[derive(Debug, Default)]
pub(crate) struct Resources {
    /// Namespaces, in creation order (nodes first).
    pub netns: Vec<String>,
    /// Each node's CNI network, in node order, and the pods wired through
    /// them, each with its node's index (DEL before the namespaces go).
    pub networks: Vec<Network>,
    pub attachments: Vec<(usize, Attachment)>,
    /// The nodes' agents (stopped after the DELs).
    pub agents: Vec<Agent>,
    /// Real nodes (containerd, kubelet, their pods), ended after the
    /// agents and before the namespaces.
    pub nodes: Vec<crate::runtime::node::NodeTeardown>,
    /// Other processes (control plane, kube-proxy), stopped after the
    /// agents, last started first.
    pub daemons: Vec<Daemon>,
    /// Folders to remove (bpffs folder, state folder).
    pub dirs: Vec<PathBuf>,
    /// Set once cleaned: later additions are undone at once.
    pub cleaned: bool,
}

impl Resources {
    /// Undoes everything; idempotent.
    pub fn cleanup(&mut self) {
        self.cleaned = true;
        for (node, att) in self.attachments.drain(..).rev() {
            if let Some(network) = self.networks.get(node) {
                if let Err(e) = network.del(&att) {
                    tracing::warn!("cleanup: {e}");
                }
            }
        }
        for mut agent in self.agents.drain(..).rev() {
            agent.stop();
        }
        for mut node in self.nodes.drain(..).rev() {
            node.stop();
        }
        for mut daemon in self.daemons.drain(..).rev() {
            daemon.stop();
        }
        for name in self.netns.drain(..).rev() {
            netns::delete(&name);
        }
        for dir in self.dirs.drain(..).rev() {
            if dir.exists() {
                if let Err(e) = std::fs::remove_dir_all(&dir) {
                    tracing::warn!("cleanup: removing {}: {e}", dir.display());
                }
            }
        }
    }
}

impl Drop for Resources {
    fn drop(&mut self) {
        self.cleanup();
    }
}

/// Shared handle on a test bed's resources, registered for signal cleanup.
#[derive(Debug, Clone)]
pub(crate) struct Tracked(Arc<Mutex<Resources>>);

static LIVE: Mutex<Vec<Weak<Mutex<Resources>>>> = Mutex::new(Vec::new());

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(PoisonError::into_inner)
}

impl Tracked {
    /// A fresh, registered set.
    pub fn new() -> Self {
        let arc = Arc::new(Mutex::new(Resources::default()));
        let mut live = lock(&LIVE);
        live.retain(|w| w.strong_count() > 0);
        live.push(Arc::downgrade(&arc));
        Tracked(arc)
    }

    /// Runs `f` on the resources (short critical sections only).
    pub fn with<R>(&self, f: impl FnOnce(&mut Resources) -> R) -> R {
        let mut guard = lock(&self.0);
        let r = f(&mut guard);
        if guard.cleaned {
            // A signal cleaned up while we were adding: undo the addition.
            guard.cleanup();
        }
        r
    }

    /// Undoes everything now.
    pub fn cleanup(&self) {
        lock(&self.0).cleanup();
    }
}

/// Cleans up every live test bed of this process (namespaces, links,
/// agents, bpffs folders). Safe to call more than once, and from any
/// thread; test beds dropped afterwards have nothing left to do.
pub fn cleanup_all() {
    let live: Vec<_> = lock(&LIVE).iter().filter_map(Weak::upgrade).collect();
    for res in live {
        lock(&res).cleanup();
    }
}

/// Installs a SIGINT/SIGTERM handler (on a background thread) that runs
/// [`cleanup_all`] and exits with status 130 (SIGINT) or 143 (SIGTERM).
/// For CLIs; call once, early. Works whether or not the caller uses tokio.
pub fn install_signal_cleanup() -> std::io::Result<()> {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    let (tx, rx) = std::sync::mpsc::channel::<std::io::Result<()>>();
    std::thread::Builder::new()
        .name("testbed-signals".into())
        .spawn(move || {
            rt.block_on(async move {
                use tokio::signal::unix::{signal, SignalKind};
                let mut int = match signal(SignalKind::interrupt()) {
                    Ok(s) => s,
                    Err(e) => return drop(tx.send(Err(e))),
                };
                let mut term = match signal(SignalKind::terminate()) {
                    Ok(s) => s,
                    Err(e) => return drop(tx.send(Err(e))),
                };
                let _ = tx.send(Ok(()));
                let code = tokio::select! {
                    _ = int.recv() => 130,
                    _ = term.recv() => 143,
                };
                eprintln!("testbed: interrupted, cleaning up");
                cleanup_all();
                std::process::exit(code);
            })
        })?;
    rx.recv()
        .unwrap_or_else(|_| Err(std::io::Error::other("signal thread died")))
}
