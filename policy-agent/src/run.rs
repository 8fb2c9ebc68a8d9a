//! `policy-agent run`: the long-running node agent.
//!
//! Wiring only: a source sends changes, the [`Agent`] takes them in
//! batches (whatever has queued up while it worked on the last one) and
//! applies what they change, the CNI server feeds it endpoints.

use std::net::IpAddr;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use tokio::sync::Mutex;

use crate::cni_server;
use crate::dataplane::Dataplane;
use crate::devices::DeviceArg;
use crate::flows::{self, EventSource, FlowHub};
use crate::health;
use crate::reconcile::Agent;
use crate::source::ChangeRx;

/// Most changes taken in one batch.
pub const MAX_BATCH: usize = 16 * 1024;

/// What `run` needs besides the dataplane.
#[derive(Clone, Debug)]
pub struct RunOptions {
    /// The CNI socket to serve.
    pub cni_socket: PathBuf,
    /// The node's own addresses (traffic from them to local pods is allowed).
    pub node_addrs: Vec<IpAddr>,
    /// Follow the node's addresses as they change (`--node-addr` not
    /// given; see [`crate::node_addrs`]).
    pub follow_node_addrs: bool,
    /// Where to serve `/healthz`, `/readyz` and `/metrics`, if anywhere.
    pub health_addr: Option<std::net::SocketAddr>,
    /// This node's name: its running pods without an endpoint are reported
    /// as unenforced (none when unknown).
    pub node_name: Option<String>,
    /// Keep `palisade-cni` chained in this node's CNI configuration while
    /// running (see [`crate::uninstall::ChainKeeper`]).
    pub chain: Option<crate::uninstall::ChainKeeper>,
    /// The node's overlay devices toward other nodes (Flannel:
    /// `flannel.1`; `auto`: every VXLAN device, see [`crate::devices`]):
    /// the node-device check is attached to each as soon as it exists, and
    /// again when it is replaced.
    pub node_devices: Vec<DeviceArg>,
    /// The node's devices toward the world (its uplink, `eth0`; `auto`:
    /// the one holding [`node_ip`](Self::node_ip)): the external-device
    /// check is attached to each the same way.
    pub external_devices: Vec<DeviceArg>,
    /// The node's own address (its InternalIP), for `--external-device
    /// auto`.
    pub node_ip: Option<IpAddr>,
    /// Where to report enforced policy changes as Kubernetes Events
    /// (`--kube` with a node name; see [`crate::events`]).
    pub events: Option<crate::events::EventSender>,
}

/// Runs until SIGINT/SIGTERM. Pinned programs and maps stay in place after
/// exit, so pods stay protected while the agent restarts.
pub async fn run<D: Dataplane + 'static>(
    opts: RunOptions,
    dataplane: D,
    events: Option<Box<dyn EventSource>>,
    mut changes: ChangeRx,
) -> anyhow::Result<()> {
    let state_file = state_file_for(&opts.cni_socket);
    let mut core = Agent::new(dataplane, opts.node_addrs.clone())
        .with_state_file(state_file.clone())
        .with_node(opts.node_name.clone());
    if let (Some(sender), Some(node)) = (opts.events.clone(), opts.node_name.as_deref()) {
        core = core.with_events(node, sender);
    }
    match crate::endpoints::load(&state_file) {
        Ok(previous) => core.restore(
            previous
                .into_iter()
                .filter(|s| {
                    let keep = s.interface_unchanged();
                    if !keep {
                        tracing::warn!(pod = %s.endpoint.pod, ifname = %s.endpoint.ifname, "interface gone or replaced; endpoint not restored");
                    }
                    keep
                })
                .map(|s| s.endpoint)
                .collect(),
        ),
        Err(e) => tracing::error!(error = %e, "previous endpoints not restored"),
    }
    let agent = Arc::new(Mutex::new(core));
    let hub = FlowHub::new();
    if let Some(events) = events {
        flows::spawn_reader(events, agent.clone(), hub.clone());
    }
    // What the source has ready now (the whole state, for files) is in
    // place before any ADD is served.
    let mut first = Vec::new();
    while let Ok(change) = changes.try_recv() {
        first.push(change);
    }
    if !first.is_empty() {
        agent.lock().await.apply_changes(first)?;
    }
    let feeder = {
        let agent = agent.clone();
        tokio::spawn(async move {
            while let Some(change) = changes.recv().await {
                // From the first change of a batch to its enforcement.
                let timer = health::Timer::new(&health::metrics().apply_latency);
                let mut batch = vec![change];
                while batch.len() < MAX_BATCH {
                    match changes.try_recv() {
                        Ok(change) => batch.push(change),
                        Err(_) => break,
                    }
                }
                if let Err(e) = agent.lock().await.apply_changes(batch) {
                    health::metrics().apply_failures.inc();
                    tracing::error!(error = %e, "applying the new cluster state failed; the last good state stays enforced");
                }
                drop(timer);
            }
        })
    };
    let retrier = tokio::spawn(retry_loop(agent.clone()));
    let ready = Arc::new(AtomicBool::new(false));
    let (view_tx, view) = crate::shared::view_channel();
    let publisher = crate::shared::spawn_publisher(agent.clone(), view_tx);
    if let Some(addr) = opts.health_addr {
        let state = health::HealthState {
            view,
            hub: hub.clone(),
            ready: ready.clone(),
        };
        tokio::spawn(async move {
            if let Err(e) = health::serve(addr, state).await {
                tracing::error!(%addr, error = %e, "health endpoint failed");
            }
        });
    }
    let server = {
        let agent = agent.clone();
        let socket = opts.cni_socket.clone();
        tokio::spawn(async move { cni_server::serve(&socket, agent, hub).await })
    };
    // Serving once the socket is bound; ready while also the agent says so.
    {
        let socket = opts.cni_socket.clone();
        let ready = ready.clone();
        tokio::spawn(async move {
            while !socket.exists() {
                tokio::time::sleep(std::time::Duration::from_millis(50)).await;
            }
            ready.store(true, Ordering::Relaxed);
        });
    }
    let keeper = opts.chain.clone().map(crate::uninstall::ChainKeeper::spawn);
    let addresses = opts
        .follow_node_addrs
        .then(|| tokio::spawn(crate::node_addrs::follow(agent.clone())));
    let chainer = opts
        .chain
        .clone()
        .map(|chain| tokio::spawn(chain_once_enforcing(agent.clone(), ready.clone(), chain)));
    let adopter = opts
        .node_name
        .is_some()
        .then(|| tokio::spawn(adopt_loop(agent.clone(), opts.node_ip)));
    let wanted = Wanted {
        overlay: opts.node_devices.clone(),
        external: opts.external_devices.clone(),
        node_ip: opts.node_ip,
    };
    let devices = (!wanted.overlay.is_empty() || !wanted.external.is_empty())
        .then(|| tokio::spawn(node_device_loop(agent.clone(), wanted)));
    let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())?;
    tokio::select! {
        _ = tokio::signal::ctrl_c() => tracing::info!("interrupted"),
        _ = term.recv() => tracing::info!("terminated"),
        r = server => match r {
            Ok(Err(e)) => return Err(anyhow::anyhow!("CNI socket {}: {e}", opts.cni_socket.display())),
            Ok(Ok(())) => {}
            Err(e) => return Err(e.into()),
        },
    }
    feeder.abort();
    retrier.abort();
    publisher.abort();
    if let Some(adopter) = adopter {
        adopter.abort();
    }
    if let Some(devices) = devices {
        devices.abort();
    }
    if let Some(addresses) = addresses {
        addresses.abort();
    }
    if let Some(chainer) = chainer {
        chainer.abort();
        let _ = chainer.await;
    }
    // Nothing re-chains once the agent has stopped (an uninstall may
    // follow).
    if let Some(keeper) = keeper {
        keeper.abort();
        let _ = keeper.await;
    }
    let _ = std::fs::remove_file(&opts.cni_socket);
    Ok(())
}

/// How often the agent looks whether it enforces yet, to chain
/// `palisade-cni` ([`chain_once_enforcing`]).
pub const CHAIN_WHEN_ENFORCING_EVERY: std::time::Duration = std::time::Duration::from_millis(200);

/// Waits until the CNI socket is bound and the agent enforces a complete
/// state ([`Agent::enforces`]), then lets `chain` write the entry (for
/// good) and writes it at once, without waiting for the keeper's next
/// check: the chain entry makes every pod's ADD wait for this agent, so
/// it is written only once the agent has shown it can answer them.
async fn chain_once_enforcing<D: Dataplane + 'static>(
    agent: Arc<Mutex<Agent<D>>>,
    socket_bound: Arc<AtomicBool>,
    chain: crate::uninstall::ChainKeeper,
) {
    loop {
        if socket_bound.load(Ordering::Relaxed) && agent.lock().await.enforces() {
            break;
        }
        tokio::time::sleep(CHAIN_WHEN_ENFORCING_EVERY).await;
    }
    chain.enforcing.store(true, Ordering::Release);
    match chain.check() {
        Ok(true) => {
            tracing::info!(dir = %chain.conflist_dir.display(), "the agent enforces: palisade-cni chained into the active conflist")
        }
        Ok(false) => {
            tracing::info!(dir = %chain.conflist_dir.display(), "the agent enforces: palisade-cni was already chained (or no conflist yet)")
        }
        Err(e) => tracing::error!(error = %e, "cannot chain palisade-cni"),
    }
}

/// First and longest wait before a failed apply is tried again.
pub const RETRY_MIN: std::time::Duration = std::time::Duration::from_secs(1);
/// See [`RETRY_MIN`].
pub const RETRY_MAX: std::time::Duration = std::time::Duration::from_secs(30);

/// Tries a failed apply again with exponential backoff ([`RETRY_MIN`] to
/// [`RETRY_MAX`]) until it succeeds, counting each failure
/// (`palisade_apply_failures_total`); a later change that applies resets
/// it. Meanwhile the last good state stays enforced and the agent is not
/// ready.
async fn retry_loop<D: Dataplane + 'static>(agent: Arc<Mutex<Agent<D>>>) {
    let mut backoff = RETRY_MIN;
    loop {
        tokio::time::sleep(backoff).await;
        let mut a = agent.lock().await;
        if !a.apply_failed() {
            backoff = RETRY_MIN;
            continue;
        }
        match a.retry_apply() {
            Ok(()) => {
                tracing::info!("a failed apply was retried and succeeded");
                backoff = RETRY_MIN;
            }
            Err(e) => {
                health::metrics().apply_failures.inc();
                backoff = (backoff * 2).min(RETRY_MAX);
                tracing::error!(error = %e, retry_in = ?backoff, "retrying the failed apply failed; the last good state stays enforced");
            }
        }
    }
}

/// How often local pods without an endpoint are looked for on the node.
pub const ADOPT_EVERY: std::time::Duration = std::time::Duration::from_secs(2);

/// Finds the host veth of every local pod running without an endpoint and
/// adopts it (see [`crate::reconcile::adopt`]); forgets adopted endpoints
/// whose pod no longer runs here, and endpoints whose host veth is gone
/// (a lost CNI DEL). Every [`ADOPT_EVERY`].
///
/// `node_ip` is the node's own address: the veth holding it is the node's
/// uplink (a node that is itself a container or a namespace, as on kind),
/// never quarantined.
async fn adopt_loop<D: Dataplane + 'static>(agent: Arc<Mutex<Agent<D>>>, node_ip: Option<IpAddr>) {
    let mut tick = tokio::time::interval(ADOPT_EVERY);
    let mut refused = std::collections::BTreeSet::new();
    loop {
        tick.tick().await;
        if let Err(e) = agent.lock().await.prune_adopted() {
            tracing::error!(error = %e, "forgetting adopted endpoints failed");
        }
        if let Err(e) = agent.lock().await.forget_vanished() {
            tracing::error!(error = %e, "forgetting endpoints whose veth is gone failed");
        }
        let candidates = agent.lock().await.adoption_candidates();
        if candidates.is_empty() {
            // Nobody is left to find: what is quarantined is no known pod's.
            agent.lock().await.release_quarantine();
            refused.clear();
            continue;
        }
        // Veths serving pods' endpoints are not candidates (quarantined
        // ones are: their pod may be found now).
        let served: std::collections::BTreeSet<String> = agent
            .lock()
            .await
            .endpoints()
            .iter()
            .filter(|e| !crate::reconcile::quarantine::is_quarantined(e))
            .map(|e| e.ifname.clone())
            .collect();
        let found = match crate::links::find_pod_veths_skipping(&candidates, &served).await {
            Ok(found) => found,
            Err(e) => {
                tracing::error!(error = %e, "cannot look for the veths of unenforced pods");
                continue;
            }
        };
        let mut lost = 0usize;
        for pod in candidates.keys() {
            match found.get(pod) {
                Some(Ok(veth)) => {
                    if let Err(e) = agent.lock().await.adopt(pod.clone(), veth) {
                        tracing::error!(%pod, error = %e, "adopting a running pod failed; it stays unenforced");
                    }
                }
                Some(Err(e)) => {
                    lost += 1;
                    if refused.insert(pod.clone()) {
                        tracing::error!(%pod, error = %e, "running pod not adopted by its address; its veth is among the quarantined");
                    }
                }
                None => {
                    lost += 1;
                    if refused.insert(pod.clone()) {
                        tracing::error!(%pod, "no host veth leads to the address of a running pod (removed, or not configured yet); unknown veths are quarantined");
                    }
                }
            }
        }
        if lost > 0 {
            quarantine_unknown(&agent, node_ip).await;
        }
    }
}

/// Isolates every host veth into another namespace that serves no
/// endpoint (see [`crate::reconcile::quarantine`]).
async fn quarantine_unknown<D: Dataplane + 'static>(
    agent: &Arc<Mutex<Agent<D>>>,
    node_ip: Option<IpAddr>,
) {
    let known: std::collections::BTreeSet<String> = agent
        .lock()
        .await
        .endpoints()
        .iter()
        .map(|e| e.ifname.clone())
        .collect();
    let protect: Vec<IpAddr> = node_ip.into_iter().collect();
    let veths = match crate::links::foreign_veths(&known, &protect).await {
        Ok(v) => v,
        Err(e) => {
            tracing::error!(error = %e, "cannot list host veths to quarantine");
            return;
        }
    };
    for veth in veths {
        if let Err(e) = agent.lock().await.quarantine(&veth) {
            tracing::error!(ifname = %veth.ifname, error = %e, "quarantining a host veth failed");
        }
    }
}

/// How often the node devices are checked (a network plugin may create or
/// replace its overlay device after the agent started).
pub const NODE_DEVICES_EVERY: std::time::Duration = std::time::Duration::from_secs(2);

/// What a node device is to the agent.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
enum DeviceRole {
    /// Toward other nodes (`--node-device`).
    Overlay,
    /// Toward the world (`--external-device`).
    External,
}

/// The node devices asked for.
struct Wanted {
    overlay: Vec<DeviceArg>,
    external: Vec<DeviceArg>,
    node_ip: Option<IpAddr>,
}

impl Wanted {
    /// The devices to check now: the named ones, and what `auto` finds
    /// (see [`crate::devices`]); `logged` remembers what was said once.
    async fn resolve(
        &self,
        logged: &mut std::collections::BTreeSet<String>,
    ) -> Vec<(String, DeviceRole)> {
        let mut out = Vec::new();
        for (args, role) in [
            (&self.overlay, DeviceRole::Overlay),
            (&self.external, DeviceRole::External),
        ] {
            for arg in args {
                match arg {
                    DeviceArg::Named(name) => out.push((name.clone(), role)),
                    DeviceArg::Auto => out.extend(self.find(role, logged).await),
                }
            }
        }
        out.sort();
        out.dedup();
        out
    }

    async fn find(
        &self,
        role: DeviceRole,
        logged: &mut std::collections::BTreeSet<String>,
    ) -> Vec<(String, DeviceRole)> {
        let found = match role {
            DeviceRole::Overlay => match crate::devices::overlay_devices().await {
                Ok(found) => found,
                Err(e) => {
                    tracing::error!(error = %e, "cannot list the node's overlay devices");
                    Vec::new()
                }
            },
            DeviceRole::External => self
                .node_ip
                .and_then(|ip| {
                    crate::devices::external_device(ip, &crate::devices::interface_addresses())
                })
                .into_iter()
                .collect(),
        };
        if found.is_empty() && logged.insert(format!("auto {role:?}")) {
            match role {
                DeviceRole::Overlay => tracing::warn!("no VXLAN overlay device on this node (yet): Services with backends on other nodes fail closed for egress-isolated pods until there is one"),
                DeviceRole::External => tracing::warn!(node_ip = ?self.node_ip, "no device holds the node's address (is --node-ip set?): masqueraded NodePort clients are judged as the node"),
            }
        }
        found.into_iter().map(|name| (name, role)).collect()
    }
}

/// Attaches each device's check once the device exists, and again
/// whenever its interface index changes (the device was replaced).
async fn node_device_loop<D: Dataplane + 'static>(agent: Arc<Mutex<Agent<D>>>, wanted: Wanted) {
    let mut attached: std::collections::BTreeMap<String, u32> = Default::default();
    let mut waiting_logged = std::collections::BTreeSet::new();
    let mut auto_logged = std::collections::BTreeSet::new();
    let mut tick = tokio::time::interval(NODE_DEVICES_EVERY);
    loop {
        tick.tick().await;
        let devices = wanted.resolve(&mut auto_logged).await;
        for (name, role) in &devices {
            let Ok(ifindex) = nix::net::if_::if_nametoindex(name.as_str()) else {
                if waiting_logged.insert(name.clone()) {
                    match role {
                        DeviceRole::Overlay => {
                            tracing::warn!(device = %name, "node device not there yet: Services with backends on other nodes fail closed for egress-isolated pods until it is")
                        }
                        DeviceRole::External => {
                            tracing::warn!(device = %name, "external device not there yet: masqueraded NodePort clients are judged as the node until it is")
                        }
                    }
                }
                attached.remove(name);
                continue;
            };
            if attached.get(name) == Some(&ifindex) {
                continue;
            }
            let result = match role {
                DeviceRole::Overlay => agent.lock().await.attach_node_device(name),
                DeviceRole::External => agent.lock().await.attach_external_device(name),
            };
            match result {
                Ok(()) => {
                    tracing::info!(device = %name, ifindex, role = ?role, "node device check attached");
                    attached.insert(name.clone(), ifindex);
                    waiting_logged.remove(name);
                }
                Err(e) => {
                    tracing::error!(device = %name, error = %e, "attaching the node device check failed; retrying")
                }
            }
        }
    }
}

/// The endpoint list lives beside the CNI socket (`/run/palisade/` on a
/// node): both are per boot, like the bpffs pins.
pub fn state_file_for(cni_socket: &std::path::Path) -> PathBuf {
    cni_socket.with_file_name("endpoints.json")
}

/// Every address of every interface in the agent's network namespace.
pub fn local_addresses() -> Vec<IpAddr> {
    let mut out = Vec::new();
    if let Ok(addrs) = nix::ifaddrs::getifaddrs() {
        for ifa in addrs {
            let Some(addr) = ifa.address else { continue };
            if let Some(v4) = addr.as_sockaddr_in() {
                out.push(IpAddr::V4(v4.ip()));
            } else if let Some(v6) = addr.as_sockaddr_in6() {
                out.push(IpAddr::V6(v6.ip()));
            }
        }
    }
    out.sort();
    out.dedup();
    out
}

/// Where a node's agent pins its maps and links unless told otherwise.
pub const DEFAULT_BPFFS_DIR: &str = "/sys/fs/bpf/palisade";
