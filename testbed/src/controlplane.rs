//! A real Kubernetes control plane for the test bed: etcd, kube-apiserver
//! and kube-controller-manager (Kubernetes 1.20, built from Debian's source
//! by `cargo xtask setup`), in a network namespace of their own, with
//! fresh credentials and a throwaway data folder per bed.
//!
//! - **Network**: the control-plane namespace holds etcd on its loopback
//!   and the API server on the underlay bridge ([`underlay::API_ADDR`]);
//!   each node namespace joins that bridge with [`ControlPlane::attach_node`],
//!   so the agents and kube-proxy inside the nodes reach the API server and
//!   the nodes reach each other. Every listener is inside the bed's own
//!   namespaces, so its ports cannot collide with anything else's.
//! - **Auth**: RBAC authorization; a static token file holds the harness's
//!   admin (`system:masters`), kube-controller-manager
//!   (`system:kube-controller-manager`, with per-controller ServiceAccount
//!   credentials as kubeadm runs it) and kube-proxy (`system:kube-proxy`,
//!   bound to `system:node-proxier` by the bootstrap RBAC). Everyone else
//!   uses real ServiceAccount tokens ([`ControlPlane::service_account_kubeconfig`],
//!   through the TokenRequest API). TLS is verified against a CA made for
//!   the bed ([`pki`]).
//! - **The harness's client**: the API server is not reachable from the
//!   machine's namespace, so the admin [`kube::Client`] runs on a tokio
//!   runtime whose threads have entered the control-plane namespace;
//!   [`ControlPlane::run`] runs a future there and waits for it.
//! - **Cleanup**: every process is stopped by its pid, the namespace and the
//!   data folders removed, on drop, on an error half-way through
//!   [`ControlPlane::start`] and on Ctrl-C (the test bed's cleanup registry).
//!
//! [`kubelet`] plays the kubelet's part (Node objects, Pods bound to a node,
//! their status), [`ControlPlane::start_kube_proxy`] runs kube-proxy in a
//! node namespace.
//!
//! ```no_run
//! # fn main() -> Result<(), testbed::TestbedError> {
//! use testbed::controlplane::{ControlPlane, ControlPlaneOptions};
//! let cp = ControlPlane::start(ControlPlaneOptions::default())?;
//! let client = cp.client();
//! let namespaces = cp.run(async move {
//!     let api: kube::Api<k8s_openapi::api::core::v1::Namespace> = kube::Api::all(client);
//!     api.list(&Default::default()).await
//! });
//! # Ok(()) }
//! ```

pub mod bulk;
pub mod cluster;
mod faults;
pub mod kubelet;
pub mod objects;
pub mod pki;
pub mod proxy;
pub mod sync;
pub mod underlay;

use std::ffi::OsString;
use std::fs::File;
use std::future::Future;
use std::net::Ipv4Addr;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use k8s_openapi::api::authentication::v1::{TokenRequest, TokenRequestSpec};
use k8s_openapi::api::core::v1::ServiceAccount;
use kube::api::PostParams;
use kube::config::{KubeConfigOptions, Kubeconfig};
use kube::{Api, Client, Config};
use nix::sched::{setns, unshare, CloneFlags};

use crate::cleanup::Tracked;
use crate::daemon::{self, Daemon, DaemonSpec};
use crate::error::TestbedError;
use crate::netns::{self, netns_path};

pub use underlay::NodeLink;

/// Where `cargo xtask setup` installs kube-apiserver, kube-proxy,
/// kube-controller-manager and kubectl (1.20.2) unless
/// [`KUBE_BIN_ENV`] says otherwise.
pub const DEFAULT_KUBE_BIN_DIR: &str = "/var/cache/palisade/kubernetes-1.20.2/bin";
/// The environment variable that overrides [`DEFAULT_KUBE_BIN_DIR`].
pub const KUBE_BIN_ENV: &str = "PALISADE_KUBE_BIN";
/// Debian's etcd.
pub const ETCD_BINARY: &str = "/usr/bin/etcd";
/// The Service ClusterIP range the API server allocates from.
pub const SERVICE_CIDR: &str = "10.96.0.0/12";
/// The `kubernetes` Service's ClusterIP (first of [`SERVICE_CIDR`]).
pub const KUBERNETES_SERVICE_IP: Ipv4Addr = Ipv4Addr::new(10, 96, 0, 1);
/// The cluster's pod range (kube-proxy's `--cluster-cidr`).
pub const CLUSTER_CIDR: &str = "10.244.0.0/16";
/// The API server's port on the underlay.
pub const API_PORT: u16 = 6443;
/// etcd's client port, on the control-plane namespace's loopback.
const ETCD_PORT: u16 = 2379;
/// etcd's peer port (a single member; loopback only).
const ETCD_PEER_PORT: u16 = 2380;

/// How long the API server may take to become ready (2 s when idle; the
/// machine may be busy).
const API_READY_TIMEOUT: Duration = Duration::from_secs(90);
/// How long the controller manager may take to make the `default`
/// ServiceAccount's token.
const CONTROLLERS_READY_TIMEOUT: Duration = Duration::from_secs(60);
/// How long a ServiceAccount token request may be valid.
const TOKEN_SECONDS: i64 = 24 * 3600;

static COUNTER: AtomicUsize = AtomicUsize::new(0);

/// The folder holding the Kubernetes binaries: `$PALISADE_KUBE_BIN`, else
/// [`DEFAULT_KUBE_BIN_DIR`].
pub fn kube_bin_dir() -> PathBuf {
    std::env::var_os(KUBE_BIN_ENV)
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(DEFAULT_KUBE_BIN_DIR))
}

/// What to start.
#[derive(Clone, Debug)]
pub struct ControlPlaneOptions {
    /// Prefix of the namespace and folder names (unique per process and
    /// call when left to [`Default`]).
    pub name: String,
    /// Holds `kube-apiserver`, `kube-controller-manager`, `kube-proxy` and
    /// `kubectl`.
    pub kube_bin: PathBuf,
    /// The etcd binary.
    pub etcd: PathBuf,
    /// Names of the real nodes whose kubelets will join (see
    /// [`crate::runtime`]). When not empty the control plane runs as a
    /// real cluster's does: each node gets a `system:node:<name>` token
    /// ([`ControlPlane::node_kubeconfig`]), the API server authorizes with
    /// `Node,RBAC` and admits with `NodeRestriction`, the controller
    /// manager runs every default controller (DaemonSets, ReplicaSets,
    /// ...), and kube-scheduler places the pods.
    pub real_nodes: Vec<String>,
}

impl Default for ControlPlaneOptions {
    fn default() -> Self {
        ControlPlaneOptions {
            name: format!(
                "palcp-{}-{}",
                std::process::id(),
                COUNTER.fetch_add(1, Ordering::Relaxed)
            ),
            kube_bin: kube_bin_dir(),
            etcd: PathBuf::from(ETCD_BINARY),
            real_nodes: Vec::new(),
        }
    }
}

/// A running control plane; dropping it stops everything it started.
pub struct ControlPlane {
    runtime: Option<tokio::runtime::Runtime>,
    resources: Tracked,
    netns: String,
    dir: PathBuf,
    pki: pki::Pki,
    kube_bin: PathBuf,
    admin_kubeconfig: PathBuf,
    proxy_kubeconfig: PathBuf,
    /// Each real node's kubeconfig (`system:node:<name>`), by node name.
    node_kubeconfigs: std::collections::BTreeMap<String, PathBuf>,
    client: Client,
    nodes: Mutex<Vec<NodeLink>>,
    /// How kube-apiserver is started (to start it again, see `faults`).
    apiserver: DaemonSpec,
}

impl std::fmt::Debug for ControlPlane {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ControlPlane")
            .field("netns", &self.netns)
            .field("dir", &self.dir)
            .field("server", &self.server())
            .finish_non_exhaustive()
    }
}

/// A multi-threaded runtime whose threads (workers and blocking ones) all
/// live in network namespace `ns`: every socket its tasks open is made
/// there. A thread that cannot enter `ns` moves to an empty namespace of
/// its own instead, so nothing it sends can leave the bed.
fn runtime_in_netns(ns: &str) -> Result<tokio::runtime::Runtime, TestbedError> {
    let path = netns_path(ns);
    let handle = Arc::new(File::open(&path).map_err(|source| TestbedError::Netns {
        name: ns.to_string(),
        source,
    })?);
    let name = ns.to_string();
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .thread_name("testbed-kube")
        .on_thread_start(move || {
            if let Err(e) = setns(&*handle, CloneFlags::CLONE_NEWNET) {
                tracing::error!("cannot enter network namespace {name}: {e}; isolating the thread");
                if let Err(e) = unshare(CloneFlags::CLONE_NEWNET) {
                    tracing::error!("cannot isolate the thread either: {e}");
                    std::process::abort();
                }
            }
        })
        .build()
        .map_err(|source| TestbedError::Runtime { source })
}

/// Wraps an API error with what was being done.
pub(crate) fn kube_err(what: impl Into<String>) -> impl FnOnce(kube::Error) -> TestbedError {
    let what = what.into();
    move |e| TestbedError::Kube {
        what,
        source: Box::new(e),
    }
}

fn io_err(path: &Path) -> impl FnOnce(std::io::Error) -> TestbedError + '_ {
    move |source| TestbedError::Io {
        path: path.to_path_buf(),
        source,
    }
}

/// A kubeconfig for `user` with bearer `token`, trusting `ca`.
fn kubeconfig_text(server: &str, ca: &Path, user: &str, token: &str) -> String {
    format!(
        "apiVersion: v1
kind: Config
clusters:
- name: palisade-testbed
  cluster:
    server: {server}
    certificate-authority: {ca}
users:
- name: {user}
  user:
    token: {token}
contexts:
- name: palisade-testbed
  context:
    cluster: palisade-testbed
    user: {user}
current-context: palisade-testbed
",
        ca = ca.display()
    )
}

impl ControlPlane {
    /// Starts etcd, kube-apiserver and kube-controller-manager and waits
    /// until the API server is ready and the controllers have made the
    /// `default` ServiceAccount's token (about 3 s on an idle machine).
    pub fn start(opts: ControlPlaneOptions) -> Result<ControlPlane, TestbedError> {
        // SAFETY: geteuid has no preconditions and cannot fail.
        if unsafe { libc::geteuid() } != 0 {
            return Err(TestbedError::Environment {
                reason: "the control plane needs root (network namespaces)".into(),
            });
        }
        for (what, path) in [
            ("kube-apiserver", opts.kube_bin.join("kube-apiserver")),
            (
                "kube-controller-manager",
                opts.kube_bin.join("kube-controller-manager"),
            ),
            ("kubectl", opts.kube_bin.join("kubectl")),
            ("etcd", opts.etcd.clone()),
        ] {
            if !path.is_file() {
                return Err(TestbedError::MissingBinary {
                    what: format!("{what} (run `cargo xtask setup`, or set {KUBE_BIN_ENV})"),
                    path,
                });
            }
        }
        let resources = Tracked::new();
        let dir = std::env::temp_dir().join(&opts.name);
        // Names carry our pid: anything already there is a dead process's.
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).map_err(io_err(&dir))?;
        resources.with(|r| r.dirs.push(dir.clone()));
        // etcd's data on tmpfs when there is one: fsyncs to disk dominate
        // its latency otherwise.
        let shm = Path::new("/dev/shm");
        let etcd_dir =
            if shm.is_dir() { shm } else { dir.as_path() }.join(format!("{}-etcd", opts.name));
        let _ = std::fs::remove_dir_all(&etcd_dir);
        resources.with(|r| r.dirs.push(etcd_dir.clone()));

        let ns = format!("{}-cp", opts.name);
        resources.with(|r| r.netns.push(ns.clone()));
        underlay::create_namespace(&ns)?;
        underlay::create_bridge(&ns)?;

        let pki = pki::Pki::create(&dir, &[underlay::API_ADDR, KUBERNETES_SERVICE_IP])?;
        let admin_token = pki::random_token()?;
        let kcm_token = pki::random_token()?;
        let proxy_token = pki::random_token()?;
        let scheduler_token = pki::random_token()?;
        let mut node_tokens = Vec::new();
        for node in &opts.real_nodes {
            node_tokens.push((node.clone(), pki::random_token()?));
        }
        let tokens = dir.join("tokens.csv");
        let mut token_lines = format!(
            "{admin_token},palisade-testbed-admin,palisade-testbed-admin,\"system:masters\"\n\
             {kcm_token},system:kube-controller-manager,system:kube-controller-manager\n\
             {proxy_token},system:kube-proxy,system:kube-proxy\n\
             {scheduler_token},system:kube-scheduler,system:kube-scheduler\n"
        );
        // The API server reads the file once: every node's token goes in
        // before it starts.
        for (node, token) in &node_tokens {
            token_lines.push_str(&format!(
                "{token},system:node:{node},node-{node},system:nodes\n"
            ));
        }
        std::fs::write(&tokens, token_lines).map_err(io_err(&tokens))?;
        let server = format!("https://{}:{API_PORT}", underlay::API_ADDR);
        let write_kubeconfig = |file: &str, user: &str, token: &str| {
            let path = dir.join(file);
            std::fs::write(&path, kubeconfig_text(&server, &pki.ca_cert, user, token))
                .map_err(io_err(&path))
                .map(|()| path)
        };
        let admin_kubeconfig = write_kubeconfig("admin.kubeconfig", "admin", &admin_token)?;
        let kcm_kubeconfig = write_kubeconfig(
            "controller-manager.kubeconfig",
            "system:kube-controller-manager",
            &kcm_token,
        )?;
        let proxy_kubeconfig =
            write_kubeconfig("kube-proxy.kubeconfig", "system:kube-proxy", &proxy_token)?;
        let scheduler_kubeconfig = write_kubeconfig(
            "kube-scheduler.kubeconfig",
            "system:kube-scheduler",
            &scheduler_token,
        )?;
        let mut node_kubeconfigs = std::collections::BTreeMap::new();
        for (node, token) in &node_tokens {
            let path = write_kubeconfig(
                &format!("node-{node}.kubeconfig"),
                &format!("system:node:{node}"),
                token,
            )?;
            node_kubeconfigs.insert(node.clone(), path);
        }
        let real = !opts.real_nodes.is_empty();

        let etcd_url = format!("http://127.0.0.1:{ETCD_PORT}");
        let peer_url = format!("http://127.0.0.1:{ETCD_PEER_PORT}");
        let etcd = DaemonSpec::new("etcd", &opts.etcd, &ns, &dir.join("etcd.log")).args([
            OsString::from("--data-dir"),
            etcd_dir.into_os_string(),
            "--name".into(),
            "palisade".into(),
            "--listen-client-urls".into(),
            etcd_url.clone().into(),
            "--advertise-client-urls".into(),
            etcd_url.clone().into(),
            "--listen-peer-urls".into(),
            peer_url.clone().into(),
            "--initial-advertise-peer-urls".into(),
            peer_url.clone().into(),
            "--initial-cluster".into(),
            format!("palisade={peer_url}").into(),
            "--log-level".into(),
            "warn".into(),
        ]);
        let etcd = Daemon::start(etcd)?;
        resources.with(|r| r.daemons.push(etcd));

        let p = |f: &Path| f.display().to_string();
        let apiserver = DaemonSpec::new(
            "kube-apiserver",
            &opts.kube_bin.join("kube-apiserver"),
            &ns,
            &dir.join("kube-apiserver.log"),
        )
        .args([
            format!("--etcd-servers={etcd_url}"),
            format!("--bind-address={}", underlay::API_ADDR),
            format!("--advertise-address={}", underlay::API_ADDR),
            format!("--secure-port={API_PORT}"),
            "--insecure-port=0".into(),
            format!("--tls-cert-file={}", p(&pki.server_cert)),
            format!("--tls-private-key-file={}", p(&pki.server_key)),
            format!("--token-auth-file={}", p(&tokens)),
            format!("--service-account-key-file={}", p(&pki.sa_pub)),
            format!("--service-account-signing-key-file={}", p(&pki.sa_key)),
            "--service-account-issuer=https://kubernetes.default.svc".into(),
            format!("--service-cluster-ip-range={SERVICE_CIDR}"),
            "--allow-privileged=true".into(),
            "--profiling=false".into(),
            "--v=1".into(),
        ])
        .args(if real {
            vec![
                "--authorization-mode=Node,RBAC",
                "--enable-admission-plugins=NodeRestriction",
                // `kubectl logs` and `exec` reach the kubelet by the
                // node's address: the bed has no DNS for node names.
                "--kubelet-preferred-address-types=InternalIP,Hostname",
            ]
        } else {
            vec!["--authorization-mode=RBAC"]
        });
        let apiserver_spec = apiserver.clone();
        let apiserver = Daemon::start(apiserver)?;
        resources.with(|r| r.daemons.push(apiserver));

        let runtime = runtime_in_netns(&ns)?;
        let config_path = admin_kubeconfig.clone();
        let client = block_on(&runtime, async move {
            let kubeconfig = Kubeconfig::read_from(&config_path)?;
            let config =
                Config::from_custom_kubeconfig(kubeconfig, &KubeConfigOptions::default()).await?;
            Client::try_from(config)
        })
        .map_err(|e| TestbedError::Kube {
            what: "building the admin client".into(),
            source: Box::new(e),
        })?;

        let cp = ControlPlane {
            runtime: Some(runtime),
            resources,
            netns: ns,
            dir,
            pki,
            kube_bin: opts.kube_bin,
            admin_kubeconfig,
            proxy_kubeconfig,
            node_kubeconfigs,
            client,
            nodes: Mutex::new(Vec::new()),
            apiserver: apiserver_spec,
        };
        cp.wait_ready("kube-apiserver", API_READY_TIMEOUT, |cp| cp.api_ready())?;

        let kcm = DaemonSpec::new(
            "kube-controller-manager",
            &cp.kube_bin.join("kube-controller-manager"),
            &cp.netns,
            &cp.dir.join("kube-controller-manager.log"),
        )
        .args([
            format!("--kubeconfig={}", p(&kcm_kubeconfig)),
            // Real nodes: every default controller (DaemonSets, ReplicaSets,
            // node lifecycle, ...), as a cluster runs them. The flex-volume
            // folder is the bed's: the default would be made on the host.
            if real {
                "--controllers=*".into()
            } else {
                "--controllers=endpoint,endpointslice,endpointslicemirroring,namespace,garbagecollector,serviceaccount,serviceaccount-token".into()
            },
            format!("--flex-volume-plugin-dir={}", p(&cp.dir.join("flex"))),
            "--leader-elect=false".into(),
            "--use-service-account-credentials=true".into(),
            format!("--service-account-private-key-file={}", p(&cp.pki.sa_key)),
            format!("--root-ca-file={}", p(&cp.pki.ca_cert)),
            "--port=0".into(),
            "--secure-port=0".into(),
            "--v=1".into(),
        ]);
        let kcm = Daemon::start(kcm)?;
        cp.resources.with(|r| r.daemons.push(kcm));
        cp.wait_ready("kube-controller-manager", CONTROLLERS_READY_TIMEOUT, |cp| {
            cp.controllers_ready()
        })?;
        if real {
            let scheduler = DaemonSpec::new(
                "kube-scheduler",
                &cp.kube_bin.join("kube-scheduler"),
                &cp.netns,
                &cp.dir.join("kube-scheduler.log"),
            )
            .args([
                format!("--kubeconfig={}", p(&scheduler_kubeconfig)),
                "--leader-elect=false".into(),
                "--port=0".into(),
                "--secure-port=0".into(),
                "--v=1".into(),
            ]);
            let scheduler = Daemon::start(scheduler)?;
            cp.resources.with(|r| r.daemons.push(scheduler));
        }
        Ok(cp)
    }

    /// Waits until `ready` answers `Ok(true)`; fails early, naming the
    /// process and with its log's tail, if any process of the control plane
    /// exits, and after `timeout` with the log of `name`.
    fn wait_ready(
        &self,
        name: &str,
        timeout: Duration,
        mut ready: impl FnMut(&Self) -> Result<bool, String>,
    ) -> Result<(), TestbedError> {
        let mut dead = None;
        let result = daemon::wait_until(
            timeout,
            || {
                self.resources.with(|r| {
                    r.daemons.iter_mut().find_map(|d| {
                        let status = d.exited()?;
                        dead = Some(d.name().to_string());
                        Some(status)
                    })
                })
            },
            || ready(self),
        );
        result.map_err(|reason| {
            let who = dead.unwrap_or_else(|| name.to_string());
            self.resources.with(|r| {
                r.daemons
                    .iter()
                    .find(|d| d.name() == who)
                    .map(|d| d.failure(reason.clone()))
                    .unwrap_or_else(|| TestbedError::Environment {
                        reason: format!("{who}: {reason}"),
                    })
            })
        })
    }

    fn api_ready(&self) -> Result<bool, String> {
        let client = self.client.clone();
        let answer = self.run(async move {
            let request = http::Request::get("/readyz")
                .body(Vec::new())
                .map_err(|e| e.to_string())?;
            client
                .request_text(request)
                .await
                .map_err(|e| e.to_string())
        })?;
        Ok(answer.trim() == "ok")
    }

    fn controllers_ready(&self) -> Result<bool, String> {
        let client = self.client.clone();
        self.run(async move {
            let api: Api<ServiceAccount> = Api::namespaced(client, "default");
            match api.get_opt("default").await {
                Ok(Some(sa)) => Ok(sa.secrets.is_some_and(|s| !s.is_empty())),
                Ok(None) => Ok(false),
                Err(e) => Err(e.to_string()),
            }
        })
    }

    /// Runs `future` on the control plane's runtime (its sockets are made
    /// inside the control-plane namespace) and waits for its output.
    /// Callable from any thread, inside an async runtime or not. A panic
    /// inside `future` is resumed here.
    pub fn run<F>(&self, future: F) -> F::Output
    where
        F: Future + Send + 'static,
        F::Output: Send + 'static,
    {
        match &self.runtime {
            Some(rt) => block_on(rt, future),
            None => unreachable!("the runtime lives until drop"),
        }
    }

    /// The admin client (`system:masters`); use it through [`Self::run`].
    pub fn client(&self) -> Client {
        self.client.clone()
    }

    /// The control-plane namespace (etcd, the API server, the underlay
    /// bridge).
    pub fn netns(&self) -> &str {
        &self.netns
    }

    /// The API server's URL (on the underlay).
    pub fn server(&self) -> String {
        format!("https://{}:{API_PORT}", underlay::API_ADDR)
    }

    /// The CA certificate clients verify the API server with.
    pub fn ca_cert(&self) -> &Path {
        &self.pki.ca_cert
    }

    /// The folder holding credentials, kubeconfigs and logs.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// The admin kubeconfig (for kubectl through [`Self::kubectl`]; the API
    /// server is only reachable from inside the bed's namespaces).
    pub fn admin_kubeconfig(&self) -> &Path {
        &self.admin_kubeconfig
    }

    /// Real node `name`'s kubeconfig (`system:node:<name>`), if the node
    /// was named in [`ControlPlaneOptions::real_nodes`].
    pub fn node_kubeconfig(&self, name: &str) -> Option<&Path> {
        self.node_kubeconfigs.get(name).map(PathBuf::as_path)
    }

    /// kube-proxy's kubeconfig (`system:kube-proxy`).
    pub fn proxy_kubeconfig(&self) -> &Path {
        &self.proxy_kubeconfig
    }

    /// The folder of the Kubernetes binaries in use.
    pub fn kube_bin(&self) -> &Path {
        &self.kube_bin
    }

    /// The last `lines` lines of a control-plane process's log
    /// (`etcd`, `kube-apiserver`, `kube-controller-manager`,
    /// `kube-proxy-<node>`).
    pub fn log_tail(&self, name: &str, lines: usize) -> String {
        crate::daemon::log_tail(&self.dir.join(format!("{name}.log")), lines)
    }

    /// Writes `<name>.kubeconfig` in the data folder for bearer `token`.
    pub fn write_kubeconfig(&self, name: &str, token: &str) -> Result<PathBuf, TestbedError> {
        let path = self.dir.join(format!("{name}.kubeconfig"));
        std::fs::write(
            &path,
            kubeconfig_text(&self.server(), &self.pki.ca_cert, name, token),
        )
        .map_err(io_err(&path))?;
        Ok(path)
    }

    /// A real token of ServiceAccount `namespace/name` (TokenRequest API,
    /// default audiences, valid a day) and a kubeconfig using it, written
    /// to the data folder. The ServiceAccount must exist.
    pub fn service_account_kubeconfig(
        &self,
        namespace: &str,
        name: &str,
    ) -> Result<PathBuf, TestbedError> {
        let client = self.client();
        let (ns, sa) = (namespace.to_string(), name.to_string());
        let request = TokenRequest {
            spec: TokenRequestSpec {
                audiences: Vec::new(),
                expiration_seconds: Some(TOKEN_SECONDS),
                ..Default::default()
            },
            ..Default::default()
        };
        let answer = self
            .run(async move {
                let api: Api<ServiceAccount> = Api::namespaced(client, &ns);
                api.create_token_request(&sa, &PostParams::default(), &request)
                    .await
            })
            .map_err(kube_err(format!(
                "requesting a token for ServiceAccount {namespace}/{name}"
            )))?;
        let token = answer
            .status
            .map(|s| s.token)
            .filter(|t| !t.is_empty())
            .ok_or_else(|| TestbedError::Kube {
                what: format!("requesting a token for ServiceAccount {namespace}/{name}"),
                source: "the TokenRequest answer holds no token".into(),
            })?;
        self.write_kubeconfig(&format!("sa-{namespace}-{name}"), &token)
    }

    /// Runs the 1.20 `kubectl` with `kubeconfig` inside the control-plane
    /// namespace; returns its stdout, or fails with its stderr.
    pub fn kubectl_with(&self, kubeconfig: &Path, args: &[&str]) -> Result<String, TestbedError> {
        let net = format!("--net={}", netns_path(&self.netns).display());
        let kubectl = self.kube_bin.join("kubectl");
        let config = format!("--kubeconfig={}", kubeconfig.display());
        let kubectl = kubectl.display().to_string();
        let mut full = vec![net.as_str(), kubectl.as_str(), config.as_str()];
        full.extend_from_slice(args);
        netns::run("nsenter", &full)
    }

    /// `kubectl auth can-i ARGS` with `kubeconfig` (add `--as=...` to ask
    /// for someone else as the admin): `true` for "yes", `false` for "no"
    /// (which kubectl reports with exit status 1), an error otherwise.
    pub fn can_i(&self, kubeconfig: &Path, args: &[&str]) -> Result<bool, TestbedError> {
        let mut full = vec!["auth", "can-i"];
        full.extend_from_slice(args);
        match self.kubectl_with(kubeconfig, &full) {
            Ok(out) if out.trim() == "yes" => Ok(true),
            Err(TestbedError::Command { status, stderr, .. })
                if status.contains("exit status: 1") && !stderr.contains("error") =>
            {
                Ok(false)
            }
            Ok(other) => Err(TestbedError::Environment {
                reason: format!("kubectl auth can-i {args:?} answered {other:?}"),
            }),
            Err(e) => Err(e),
        }
    }

    /// Runs `policy-agent ARGS` (the binary in `bin_dir`) inside the
    /// control-plane namespace with `KUBECONFIG` set to `kubeconfig`, as a
    /// user runs the CLI from anywhere the API server is reachable, and
    /// returns what it printed and its exit status.
    pub fn policy_agent(
        &self,
        bin_dir: &Path,
        kubeconfig: &Path,
        args: &[&str],
    ) -> Result<std::process::Output, TestbedError> {
        let agent = bin_dir.join(crate::AGENT_BINARY);
        std::process::Command::new("nsenter")
            .arg(format!("--net={}", netns_path(&self.netns).display()))
            .arg(&agent)
            .args(args)
            .env("KUBECONFIG", kubeconfig)
            .output()
            .map_err(|source| TestbedError::Io {
                path: agent.clone(),
                source,
            })
    }

    /// `policy-agent status --kube -o json` (the binary in `bin_dir`) as
    /// the admin, inside the control-plane namespace, as an admin runs it
    /// from anywhere: the JSON it printed (`Null` if none) and whether it
    /// exited 0; fails with its stderr when it wrote no JSON.
    pub fn status_kube(&self, bin_dir: &Path) -> Result<(serde_json::Value, bool), TestbedError> {
        let out = self.policy_agent(
            bin_dir,
            &self.admin_kubeconfig,
            &["status", "--kube", "-o", "json"],
        )?;
        let text = String::from_utf8_lossy(&out.stdout);
        let doc = serde_json::from_str(&text).map_err(|e| TestbedError::Environment {
            reason: format!(
                "policy-agent status --kube: {e}: {text}\n{}",
                String::from_utf8_lossy(&out.stderr)
            ),
        })?;
        Ok((doc, out.status.success()))
    }

    /// [`Self::kubectl_with`] as the admin.
    pub fn kubectl(&self, args: &[&str]) -> Result<String, TestbedError> {
        self.kubectl_with(&self.admin_kubeconfig, args)
    }

    /// `kubectl apply` each path as the admin: `-k` for a folder holding a
    /// `kustomization.yaml` (kubectl's built-in kustomize), `-f` for other
    /// files and folders.
    pub fn apply(&self, paths: &[PathBuf]) -> Result<String, TestbedError> {
        let mut out = String::new();
        for p in paths {
            let flag = if p.join("kustomization.yaml").is_file() {
                "-k"
            } else {
                "-f"
            };
            let path = p.display().to_string();
            out.push_str(&self.kubectl(&["apply", flag, &path])?);
        }
        Ok(out)
    }

    /// Joins node namespace `node_netns` to the underlay as node `name`
    /// (the next free index; see [`underlay`]). The node's agent and
    /// kube-proxy reach the API server through it; the returned link
    /// carries the node's underlay interface and address. Register the
    /// Node object with [`kubelet::register_node`].
    pub fn attach_node(&self, node_netns: &str, name: &str) -> Result<NodeLink, TestbedError> {
        let mut nodes = self.nodes.lock().unwrap_or_else(PoisonError::into_inner);
        let index = u8::try_from(nodes.len()).map_err(|_| TestbedError::Layout {
            reason: "too many nodes for the underlay".into(),
        })?;
        let link = underlay::attach(&self.netns, node_netns, name, index)?;
        nodes.push(link.clone());
        Ok(link)
    }

    /// The nodes attached so far.
    pub fn nodes(&self) -> Vec<NodeLink> {
        self.nodes
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .clone()
    }

    /// Starts kube-proxy (iptables mode) in `node`'s namespace against this
    /// API server and waits until it has programmed its `KUBE-SERVICES`
    /// chain there. It is stopped with the control plane.
    pub fn start_kube_proxy(&self, node: &NodeLink) -> Result<(), TestbedError> {
        let daemon = proxy::start(self, node, &self.proxy_kubeconfig)?;
        let name = daemon.name().to_string();
        self.resources.with(|r| r.daemons.push(daemon));
        self.wait_ready(&name, proxy::READY_TIMEOUT, |_| {
            proxy::services_chain_programmed(&node.netns)
        })
    }

    /// Stops everything now (also done on drop).
    pub fn stop(&mut self) {
        if let Some(rt) = self.runtime.take() {
            rt.shutdown_background();
        }
        self.resources.cleanup();
    }
}

/// Runs `future` on `rt` and waits for it from a helper thread (so that
/// the caller may itself be inside an async runtime); resumes its panic.
fn block_on<F>(rt: &tokio::runtime::Runtime, future: F) -> F::Output
where
    F: Future + Send + 'static,
    F::Output: Send + 'static,
{
    let task = rt.spawn(future);
    let handle = rt.handle().clone();
    let joined = std::thread::scope(|s| {
        s.spawn(move || handle.block_on(task))
            .join()
            .unwrap_or_else(|p| std::panic::resume_unwind(p))
    });
    match joined {
        Ok(out) => out,
        Err(e) if e.is_panic() => std::panic::resume_unwind(e.into_panic()),
        Err(e) => panic!("control-plane task cancelled: {e}"),
    }
}

impl Drop for ControlPlane {
    fn drop(&mut self) {
        self.stop();
    }
}
