//! `policy-agent`: Palisade's node agent and the users' policy tools.

use std::net::IpAddr;
use std::path::{Path, PathBuf};
use std::process::ExitCode;

use clap::{Args, Parser, Subcommand};
use policy_agent::dataplane::kernel::{AttachMode, KernelDataplane, KernelOptions, MapSizes};

mod cli;

#[derive(Parser)]
#[command(
    name = "policy-agent",
    version,
    about = "Palisade: NetworkPolicy enforcement with eBPF"
)]
struct Cli {
    /// Log lines as `text` or `json` (one object a line, on stderr).
    #[arg(long, global = true, default_value = "text", value_parser = ["text", "json"])]
    log_format: String,
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Run the node agent: watch cluster state, serve the CNI plugin, enforce.
    Run(Box<RunArgs>),
    /// Would these connections be allowed? Verdicts from the compiled maps.
    Simulate(cli::SimulateArgs),
    /// Why is a connection allowed or denied?
    Explain(cli::ExplainArgs),
    /// Common mistakes in a set of policies, with suggested fixes (exit 1 on
    /// a finding at or above `--fail-on`).
    Lint(cli::LintArgs),
    /// Live verdicts from a running agent, with pod names.
    Flows(FlowsArgs),
    /// Take Palisade off this node: `palisade-cni` out of every conflist
    /// (byte for byte), its binary, then every program and pin. Refuses
    /// while an agent runs. Idempotent.
    Cleanup(CleanupArgs),
    /// What a running agent enforces: each local endpoint, and the pods of
    /// its node it does not enforce or denies because a map is full (exit 1
    /// if there are any).
    Status(cli::StatusArgs),
    /// Mount the BPF filesystem at a folder unless one is there already
    /// (the DaemonSet's init container; needs CAP_SYS_ADMIN). Idempotent.
    MountBpffs(MountBpffsArgs),
}

#[derive(Args)]
struct RunArgs {
    /// Read cluster state from these manifest files or directories (re-read on change).
    #[arg(long, required_unless_present = "kube", conflicts_with = "kube", num_args = 1..)]
    manifests: Vec<PathBuf>,
    /// Read cluster state from the Kubernetes API (in-cluster config or kubeconfig).
    #[arg(long)]
    kube: bool,
    /// Unix socket the CNI plugin talks to.
    #[arg(long, default_value = agent_api::DEFAULT_SOCKET)]
    cni_socket: PathBuf,
    /// bpffs folder for pinned maps and links (adopted on restart).
    #[arg(long, default_value = policy_agent::run::DEFAULT_BPFFS_DIR)]
    bpffs_dir: PathBuf,
    /// The node's own addresses, always allowed to reach local pods
    /// (default: every address in the agent's network namespace, followed
    /// as interfaces gain and lose addresses).
    #[arg(long = "node-addr")]
    node_addrs: Vec<IpAddr>,
    /// Node name (informational in kube mode).
    #[arg(long, env = "NODE_NAME")]
    node_name: Option<String>,
    /// Serve `/healthz`, `/readyz` and `/metrics` on this address, `IP:PORT`
    /// (IPv6 with or without brackets). The DaemonSet binds the node's own
    /// address (downward API `status.hostIP`) on Palisade's port,
    /// `NODE_IP:9969` (9090 is Prometheus's; 9962–9965 Cilium's, 9091
    /// Calico's).
    #[arg(long, value_parser = policy_agent::health::parse_addr)]
    health_addr: Option<std::net::SocketAddr>,
    /// Also report allowed new flows (not only drops) to `flows`.
    #[arg(long)]
    log_allowed: bool,
    /// Tracked connections one pod may hold per direction (flows it
    /// started; flows into it): a new flow over it is dropped and counted
    /// (`palisade_conntrack_refused_total`, drop reason "conntrack
    /// budget"), so one pod cannot evict every other pod's flows from the
    /// shared conntrack map. 0: no bound.
    #[arg(long, default_value_t = policy_agent::dataplane::kernel::ct_budget::DEFAULT_PER_ENDPOINT, value_parser = size_in(0..=4_194_304))]
    conntrack_per_endpoint: u32,
    /// Keep `palisade-cni` chained in this folder's active conflist while
    /// running (a network plugin that rewrites its file drops the entry).
    #[arg(long)]
    cni_conf_dir: Option<PathBuf>,
    /// The CNI bin folder holding `palisade-cni` (removed on uninstall).
    #[arg(long)]
    cni_bin_dir: Option<PathBuf>,
    /// NAMESPACE/NAME of the agent's DaemonSet (`--kube`): when the agent
    /// stops and it is gone or being deleted, take Palisade off the node
    /// (chain entry, binary, programs and pins); otherwise leave all in
    /// place for the next agent.
    #[arg(long, requires = "kube")]
    uninstall_when_deleted: Option<policy_agent::uninstall::Owner>,
    /// The node's overlay device toward other nodes (Flannel: `flannel.1`),
    /// where local pods' egress to Service backends on other nodes is
    /// judged; without one, such Services fail closed for egress-isolated
    /// pods. `auto`: every VXLAN device of the node, followed as they come
    /// and go. Repeatable.
    #[arg(long = "node-device")]
    node_devices: Vec<policy_agent::devices::DeviceArg>,
    /// The node's device toward the world (its uplink, e.g. `eth0`), where
    /// packets from outside the cluster arrive: a NodePort client that
    /// kube-proxy masquerades (`externalTrafficPolicy: Cluster`, backend on
    /// this node) is then judged on its own address. `auto`: the device
    /// holding `--node-ip`. Repeatable.
    #[arg(long = "external-device")]
    external_devices: Vec<policy_agent::devices::DeviceArg>,
    /// The node's own address (its InternalIP; the DaemonSet passes the
    /// downward API's `status.hostIP`), for `--external-device auto`.
    #[arg(long)]
    node_ip: Option<IpAddr>,
    /// How the programs are attached to pods' veths: `tcx` links (kernel
    /// 6.6 or later; a tc user deleting the clsact qdisc cannot remove
    /// them, but each link makes the kernel wait for an RCU grace period,
    /// some 10 ms, twice per CNI ADD), `netlink` cls_bpf filters (well
    /// under a millisecond per ADD), or `auto`: TCX where the kernel has
    /// it. An agent started in another mode than the last re-attaches
    /// each pod it restores the new way, then removes the old way's
    /// programs.
    #[arg(long, value_enum, default_value_t = AttachArg::Auto)]
    attach_mode: AttachArg,
    #[command(flatten)]
    map_sizes: MapSizeArgs,
}

/// `--attach-mode` values.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
enum AttachArg {
    /// TCX where the kernel has it, netlink otherwise.
    Auto,
    /// TCX links only.
    Tcx,
    /// Netlink cls_bpf filters only.
    Netlink,
}

impl From<AttachArg> for AttachMode {
    fn from(a: AttachArg) -> Self {
        match a {
            AttachArg::Auto => AttachMode::Auto,
            AttachArg::Tcx => AttachMode::Tcx,
            AttachArg::Netlink => AttachMode::Netlink,
        }
    }
}

/// A clap parser for a map size within `range`.
fn size_in(range: std::ops::RangeInclusive<u32>) -> clap::builder::RangedI64ValueParser<u32> {
    clap::value_parser!(u32).range(i64::from(*range.start())..=i64::from(*range.end()))
}

/// Map sizes (entries per generation where a map holds both): set when the
/// maps are created; a change restarts the maps and switches over like a
/// map layout upgrade. See docs/install.md ("Map sizes") for how to size them.
#[derive(Args)]
struct MapSizeArgs {
    /// Local pods (veths) the node can enforce.
    #[arg(long, default_value_t = MapSizes::default().endpoints, value_parser = size_in(MapSizes::ENDPOINTS))]
    map_size_endpoints: u32,
    /// Pod addresses of the whole cluster (every pod IP, both families):
    /// too small and no new state is enforced (not ready).
    #[arg(long, default_value_t = MapSizes::default().ipcache, value_parser = size_in(MapSizes::IPCACHE))]
    map_size_ipcache: u32,
    /// ipBlock prefixes (each cidr and except) of every policy.
    #[arg(long, default_value_t = MapSizes::default().cidrs, value_parser = size_in(MapSizes::CIDRS))]
    map_size_cidrs: u32,
    /// Policy entries of all local pods together: a pod whose entries do
    /// not fit is denied all traffic (not ready) until they do.
    #[arg(long, default_value_t = MapSizes::default().policy, value_parser = size_in(MapSizes::POLICY))]
    map_size_policy: u32,
    /// Tracked connections (least recently used ones are evicted).
    #[arg(long, default_value_t = MapSizes::default().conntrack, value_parser = size_in(MapSizes::CONNTRACK))]
    map_size_conntrack: u32,
}

impl MapSizeArgs {
    fn sizes(&self) -> MapSizes {
        MapSizes {
            endpoints: self.map_size_endpoints,
            ipcache: self.map_size_ipcache,
            cidrs: self.map_size_cidrs,
            policy: self.map_size_policy,
            conntrack: self.map_size_conntrack,
            ..MapSizes::default()
        }
    }
}

#[derive(Args)]
struct MountBpffsArgs {
    /// Where the BPF filesystem must be.
    #[arg(long, default_value = "/sys/fs/bpf")]
    path: PathBuf,
}

#[derive(Args)]
struct CleanupArgs {
    /// The runtime's CNI configuration folder to remove `palisade-cni` from.
    #[arg(long)]
    cni_conf_dir: Option<PathBuf>,
    /// The CNI bin folder to remove `palisade-cni` from.
    #[arg(long)]
    cni_bin_dir: Option<PathBuf>,
    #[arg(long, default_value = policy_agent::run::DEFAULT_BPFFS_DIR)]
    bpffs_dir: PathBuf,
    /// The socket of the agent that must not be running (its lock).
    #[arg(long, default_value = agent_api::DEFAULT_SOCKET)]
    cni_socket: PathBuf,
}

#[derive(Args)]
struct FlowsArgs {
    /// The agent's socket.
    #[arg(long, default_value = agent_api::DEFAULT_SOCKET)]
    socket: PathBuf,
    /// Only flows to or from this pod (`namespace/name`).
    #[arg(long)]
    pod: Option<String>,
    /// Only this verdict: `allowed`, `dropped`, or `audit` (the
    /// would-drops of policies in audit mode).
    #[arg(long, value_parser = ["allowed", "dropped", "audit"])]
    verdict: Option<String>,
    /// `table` (one line a flow; counters under a header), `wide`, `json`
    /// (one object a line) or `yaml`.
    #[arg(
        short = 'o',
        long = "output",
        visible_alias = "format",
        default_value = "table"
    )]
    output: policy_engine::tools::Output,
    /// Stop after this many flows.
    #[arg(long)]
    count: Option<usize>,
    /// Print the per-pod, per-direction, per-verdict counters and exit.
    #[arg(long)]
    counters: bool,
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    let logs = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr);
    if cli.log_format == "json" {
        logs.json().init();
    } else {
        logs.init();
    }
    let result = match cli.command {
        Command::Run(args) => run(*args),
        Command::Simulate(args) => Ok(cli::simulate(args)),
        Command::Explain(args) => Ok(cli::explain(args)),
        Command::Lint(args) => Ok(cli::lint(args)),
        Command::Flows(args) => flows(args),
        Command::Cleanup(args) => cleanup(args),
        Command::Status(args) => cli::status(args),
        Command::MountBpffs(args) => mount_bpffs(&args),
    };
    match result {
        Ok(code) => code,
        Err(e) => {
            eprintln!("policy-agent: {e:#}");
            ExitCode::from(1)
        }
    }
}

/// Arenas glibc's allocator may create, unless `MALLOC_ARENA_MAX` says
/// otherwise: by default each thread that allocates may get one of its
/// own, up to eight per core, and the memory freed in one is not reused by
/// the others. The agent's threads (the runtime's workers, the program
/// loads, the watchers' decoding) then hold several megabytes apiece of
/// free pages at the peak of a full sync.
const MALLOC_ARENAS: i32 = 2;

#[cfg(target_env = "gnu")]
fn limit_malloc_arenas() {
    if std::env::var_os("MALLOC_ARENA_MAX").is_none() {
        // SAFETY: sets one parameter of the allocator; called before the
        // agent starts any thread.
        unsafe { libc::mallopt(libc::M_ARENA_MAX, MALLOC_ARENAS) };
    }
}

#[cfg(not(target_env = "gnu"))]
fn limit_malloc_arenas() {
    let _ = MALLOC_ARENAS;
}

fn run(args: RunArgs) -> anyhow::Result<ExitCode> {
    limit_malloc_arenas();
    // Before anything touches the socket or the pins.
    let _lock = policy_agent::lock::acquire(&policy_agent::lock::lock_file_for(&args.cni_socket))?;
    let runtime = tokio::runtime::Runtime::new()?;
    runtime.block_on(async move {
        // Opened now, while RBAC allows it: `kubectl delete -k` deletes the
        // RBAC and the ServiceAccount before the agent stops, and open
        // watches keep streaming (see `uninstall::owner`).
        let mut owner_watch = match &args.uninstall_when_deleted {
            Some(owner) => Some(policy_agent::uninstall::OwnerWatch::spawn(
                kube::Client::try_default().await?,
                owner,
            )),
            None => None,
        };
        let mut kernel_opts = KernelOptions::new(&args.bpffs_dir);
        kernel_opts.sizes = args.map_sizes.sizes();
        kernel_opts.attach_mode = args.attach_mode.into();
        kernel_opts.conntrack_per_endpoint = args.conntrack_per_endpoint;
        let opened = policy_agent::preflight::run(kernel_opts.attach_mode)
            .map_err(anyhow::Error::from)
            .and_then(|facts| {
                tracing::info!(kernel = %facts.release, memlock = ?facts.memlock, "kernel checked");
                policy_agent::source_routes::check();
                KernelDataplane::open(kernel_opts).map_err(anyhow::Error::from)
            });
        match opened {
            Ok(dataplane) => enforce(&args, dataplane).await?,
            // Loud, and harmless to the node's pods: see `unloaded`.
            Err(e) => {
                policy_agent::unloaded::run(format!("{e:#}"), args.health_addr, &args.cni_socket)
                    .await?
            }
        }
        if let Some(owner) = &args.uninstall_when_deleted {
            let side = policy_agent::uninstall::NodeSide {
                conflist_dir: args.cni_conf_dir.clone(),
                cni_bin_dir: args.cni_bin_dir.clone(),
                bpffs_dir: args.bpffs_dir.clone(),
            };
            if let Err(e) =
                policy_agent::uninstall::on_stop(owner, &side, owner_watch.as_mut()).await
            {
                tracing::error!(error = %e, "the node side stays in place");
            }
        }
        Ok(ExitCode::SUCCESS)
    })
}

/// The agent with its programs loaded, until SIGTERM.
async fn enforce(args: &RunArgs, mut dataplane: KernelDataplane) -> anyhow::Result<()> {
    let (snapshots, api_events) = if args.kube {
        let client = kube::Client::try_default().await?;
        // The event writer is a task of its own behind a bounded queue:
        // the reconcile loop never waits for it.
        let api_events = args.node_name.clone().map(|node| {
            let (sender, rx) = policy_agent::events::channel(policy_agent::events::QUEUE);
            tokio::spawn(policy_agent::events::writer::run(
                client.clone(),
                node,
                rx,
                Default::default(),
            ));
            sender
        });
        (policy_agent::source::kube::spawn_with(client), api_events)
    } else {
        (
            policy_agent::source::file::spawn(args.manifests.clone())?,
            None,
        )
    };
    let node_addrs = if args.node_addrs.is_empty() {
        policy_agent::run::local_addresses()
    } else {
        args.node_addrs.clone()
    };
    if args.log_allowed {
        dataplane.set_events_for_allowed(true)?;
    }
    let events = dataplane
        .take_event_reader()
        .map(|r| Box::new(r) as Box<dyn policy_agent::flows::EventSource>);
    tracing::info!(
        bpffs = %args.bpffs_dir.display(),
        node = args.node_name.as_deref().unwrap_or("-"),
        "dataplane ready"
    );
    let opts = policy_agent::run::RunOptions {
        node_devices: args.node_devices.clone(),
        external_devices: args.external_devices.clone(),
        node_ip: args.node_ip,
        cni_socket: args.cni_socket.clone(),
        node_addrs,
        follow_node_addrs: args.node_addrs.is_empty(),
        health_addr: args.health_addr,
        node_name: args.node_name.clone(),
        events: api_events,
        chain: args
            .cni_conf_dir
            .clone()
            .map(|conflist_dir| policy_agent::uninstall::ChainKeeper {
                conflist_dir,
                agent_socket: (args.cni_socket != Path::new(agent_api::DEFAULT_SOCKET))
                    .then(|| args.cni_socket.clone()),
                enforcing: Default::default(),
            }),
    };
    policy_agent::run::run(opts, dataplane, events, snapshots).await
}

fn cleanup(args: CleanupArgs) -> anyhow::Result<ExitCode> {
    let _lock = policy_agent::lock::acquire(&policy_agent::lock::lock_file_for(&args.cni_socket))?;
    let side = policy_agent::uninstall::NodeSide {
        conflist_dir: args.cni_conf_dir,
        cni_bin_dir: args.cni_bin_dir,
        bpffs_dir: args.bpffs_dir,
    };
    let done = policy_agent::uninstall::remove_from_node(&side)?;
    for path in &done.unchained {
        println!("removed palisade-cni from {}", path.display());
    }
    if let Some(binary) = &done.binary {
        println!("removed {}", binary.display());
    }
    println!(
        "programs detached and pins removed under {}",
        side.bpffs_dir.display()
    );
    Ok(ExitCode::SUCCESS)
}

fn mount_bpffs(args: &MountBpffsArgs) -> anyhow::Result<ExitCode> {
    use policy_agent::bpffs::{ensure_mounted, Outcome};
    match ensure_mounted(&args.path)? {
        Outcome::AlreadyMounted => println!("bpffs already at {}", args.path.display()),
        Outcome::Mounted => println!("mounted bpffs at {}", args.path.display()),
    }
    Ok(ExitCode::SUCCESS)
}

fn flows(args: FlowsArgs) -> anyhow::Result<ExitCode> {
    use std::io::Write;
    if let Err(code) = cli::no_html(args.output, "flows") {
        return Ok(code);
    }
    if args.counters {
        let answer = agent_api::call(
            &args.socket,
            &agent_api::Request::Counters,
            std::time::Duration::from_secs(5),
        )?;
        let agent_api::Response::Counters { counters } = answer else {
            anyhow::bail!("the agent did not answer with counters: {answer:?}");
        };
        cli::counters(&counters, args.output);
        return Ok(ExitCode::SUCCESS);
    }
    let request = agent_api::Request::Flows {
        pod: args.pod.clone(),
        verdict: args.verdict.clone(),
    };
    let mut seen = 0usize;
    let stdout = std::io::stdout();
    agent_api::stream_flows(&args.socket, &request, |r| {
        let mut out = stdout.lock();
        let line = if args.output == policy_engine::tools::Output::Json {
            serde_json::to_string(&r).unwrap_or_default()
        } else if args.output == policy_engine::tools::Output::Yaml {
            serde_norway::to_string(&vec![&r])
                .unwrap_or_default()
                .trim_end()
                .to_string()
        } else {
            format!(
                "{} {:<7} {:<7} {} {}:{} -> {}:{} {}{}{}{}",
                r.pod,
                r.direction,
                r.verdict.to_uppercase(),
                r.protocol,
                r.src,
                r.sport,
                r.dst,
                r.dport,
                r.reason,
                r.peer
                    .as_deref()
                    .map(|p| format!(" peer={p}"))
                    .unwrap_or_default(),
                cli::attribution(&r),
                r.service
                    .as_deref()
                    .map(|s| format!(" via Service {s}"))
                    .unwrap_or_default(),
            )
        };
        let ok = writeln!(out, "{line}").and_then(|()| out.flush()).is_ok();
        seen += 1;
        ok && args.count.is_none_or(|n| seen < n)
    })?;
    Ok(ExitCode::SUCCESS)
}
