//! `policy-agent`: Palisade's node agent and the users' policy tools.

use std::net::IpAddr;
use std::path::{Path, PathBuf};
use std::process::ExitCode;

use clap::{Args, Parser, Subcommand};

#[derive(Parser)]
#[command(
    name = "policy-agent",
    version,
    about = "Palisade: NetworkPolicy enforcement with eBPF"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Run the node agent: watch cluster state, serve the CNI plugin, enforce.
    Run(RunArgs),
    /// Would these connections be allowed? Verdicts from the compiled maps.
    Simulate(SimulateArgs),
    /// Why is a connection allowed or denied?
    Explain(ExplainArgs),
    /// Common mistakes in a set of policies, with suggested fixes.
    Lint(LintArgs),
    /// Live verdicts from a running agent, with pod names.
    Flows(FlowsArgs),
    /// Take Palisade off this node: `palisade-cni` out of every conflist
    /// (byte for byte), its binary, then every program and pin. Refuses
    /// while an agent runs. Idempotent.
    Cleanup(CleanupArgs),
}

#[derive(Args)]
struct LintArgs {
    /// Manifest files or directories.
    #[arg(long, required = true, num_args = 1..)]
    manifests: Vec<PathBuf>,
}

#[derive(Args)]
struct SimulateArgs {
    /// Manifest files (YAML/JSON, multi-document, List) or directories.
    #[arg(long, required = true, num_args = 1..)]
    manifests: Vec<PathBuf>,
    /// Probes, one JSON object a line (`-` for stdin); default: every pod
    /// pair on every declared port.
    #[arg(long)]
    probes: Option<PathBuf>,
    /// `json` (one object a line) or `table`.
    #[arg(long, default_value = "table")]
    format: policy_engine::tools::simulate::Format,
}

#[derive(Args)]
struct ExplainArgs {
    /// Manifest files or directories.
    #[arg(long, required = true, num_args = 1..)]
    manifests: Vec<PathBuf>,
    /// Source: `namespace/pod` or an IP address.
    #[arg(long)]
    from: String,
    /// Destination: `namespace/pod` or an IP address.
    #[arg(long)]
    to: String,
    /// Destination port and protocol: `80`, `80/TCP`, `53/UDP`, `9/SCTP`.
    #[arg(long)]
    port: String,
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
    /// (default: every address in the agent's network namespace).
    #[arg(long = "node-addr")]
    node_addrs: Vec<IpAddr>,
    /// Node name (informational in kube mode).
    #[arg(long, env = "NODE_NAME")]
    node_name: Option<String>,
    /// Serve `/healthz`, `/readyz` and `/metrics` on this address (e.g. `0.0.0.0:9090`).
    #[arg(long)]
    health_addr: Option<std::net::SocketAddr>,
    /// Also report allowed new flows (not only drops) to `flows`.
    #[arg(long)]
    log_allowed: bool,
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
    /// Only this verdict.
    #[arg(long, value_parser = ["allowed", "dropped"])]
    verdict: Option<String>,
    /// `text` (one line a flow) or `json` (one object a line).
    #[arg(long, default_value = "text", value_parser = ["text", "json"])]
    format: String,
    /// Stop after this many flows.
    #[arg(long)]
    count: Option<usize>,
    /// Print the per-pod, per-direction, per-verdict counters and exit.
    #[arg(long)]
    counters: bool,
}

fn main() -> ExitCode {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info")),
        )
        .with_writer(std::io::stderr)
        .init();
    let cli = Cli::parse();
    let result = match cli.command {
        Command::Run(args) => run(args),
        Command::Simulate(args) => simulate(args),
        Command::Explain(args) => explain(args),
        Command::Lint(args) => lint(args),
        Command::Flows(args) => flows(args),
        Command::Cleanup(args) => cleanup(args),
    };
    match result {
        Ok(code) => code,
        Err(e) => {
            eprintln!("policy-agent: {e:#}");
            ExitCode::from(1)
        }
    }
}

fn run(args: RunArgs) -> anyhow::Result<ExitCode> {
    // Before anything touches the socket or the pins.
    let _lock = policy_agent::lock::acquire(&policy_agent::lock::lock_file_for(&args.cni_socket))?;
    let runtime = tokio::runtime::Runtime::new()?;
    runtime.block_on(async move {
        let snapshots = if args.kube {
            policy_agent::source::kube::spawn().await?
        } else {
            policy_agent::source::file::spawn(args.manifests.clone())?
        };
        let node_addrs = if args.node_addrs.is_empty() {
            policy_agent::run::local_addresses()
        } else {
            args.node_addrs.clone()
        };
        let mut dataplane = policy_agent::dataplane::open_kernel(&args.bpffs_dir)?;
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
            cni_socket: args.cni_socket.clone(),
            node_addrs,
            health_addr: args.health_addr,
            node_name: args.node_name.clone(),
            chain: args.cni_conf_dir.clone().map(|conflist_dir| {
                policy_agent::uninstall::ChainKeeper {
                    conflist_dir,
                    agent_socket: (args.cni_socket != Path::new(agent_api::DEFAULT_SOCKET))
                        .then(|| args.cni_socket.clone()),
                }
            }),
        };
        policy_agent::run::run(opts, dataplane, events, snapshots).await?;
        if let Some(owner) = &args.uninstall_when_deleted {
            let side = policy_agent::uninstall::NodeSide {
                conflist_dir: args.cni_conf_dir.clone(),
                cni_bin_dir: args.cni_bin_dir.clone(),
                bpffs_dir: args.bpffs_dir.clone(),
            };
            if let Err(e) = policy_agent::uninstall::on_stop(owner, &side).await {
                tracing::error!(error = %e, "the node side stays in place");
            }
        }
        Ok(ExitCode::SUCCESS)
    })
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

/// Exit code of a tool error (2 = bad input), after printing it.
fn tool_failure(e: &policy_engine::tools::ToolError) -> ExitCode {
    eprintln!("policy-agent: {e}");
    ExitCode::from(u8::try_from(e.exit_code()).unwrap_or(1))
}

fn simulate(args: SimulateArgs) -> anyhow::Result<ExitCode> {
    let opts = policy_engine::tools::simulate::Options {
        manifests: args.manifests,
        probes: args.probes,
        format: args.format,
    };
    let stdout = std::io::stdout();
    match policy_engine::tools::simulate::run(&opts, &mut stdout.lock()) {
        Ok(outcome) => {
            for w in &outcome.warnings {
                eprintln!("policy-agent: warning: {w}");
            }
            Ok(ExitCode::SUCCESS)
        }
        Err(e) => Ok(tool_failure(&e)),
    }
}

fn explain(args: ExplainArgs) -> anyhow::Result<ExitCode> {
    let opts = policy_engine::tools::explain::Options {
        manifests: args.manifests,
        from: args.from,
        to: args.to,
        port: args.port,
    };
    let stdout = std::io::stdout();
    match policy_engine::tools::explain::run(&opts, &mut stdout.lock()) {
        Ok(_) => Ok(ExitCode::SUCCESS),
        Err(e) => Ok(tool_failure(&e)),
    }
}

fn lint(args: LintArgs) -> anyhow::Result<ExitCode> {
    let opts = policy_engine::tools::lint::Options {
        manifests: args.manifests,
    };
    let stdout = std::io::stdout();
    match policy_engine::tools::lint::run(&opts, &mut stdout.lock()) {
        Ok(_) => Ok(ExitCode::SUCCESS),
        Err(e) => Ok(tool_failure(&e)),
    }
}

fn flows(args: FlowsArgs) -> anyhow::Result<ExitCode> {
    use std::io::Write;
    if args.counters {
        let answer = agent_api::call(
            &args.socket,
            &agent_api::Request::Counters,
            std::time::Duration::from_secs(5),
        )?;
        let agent_api::Response::Counters { counters } = answer else {
            anyhow::bail!("the agent did not answer with counters: {answer:?}");
        };
        for c in counters {
            if args.format == "json" {
                println!("{}", serde_json::to_string(&c)?);
            } else {
                println!(
                    "{:<40} {:<8} {:<8} {}",
                    c.pod, c.direction, c.verdict, c.count
                );
            }
        }
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
        let line = if args.format == "json" {
            serde_json::to_string(&r).unwrap_or_default()
        } else {
            format!(
                "{} {:<7} {:<7} {} {}:{} -> {}:{} {}{}{}",
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
                r.rule
                    .as_deref()
                    .map(|p| format!(" by {p}"))
                    .unwrap_or_default(),
            )
        };
        let ok = writeln!(out, "{line}").and_then(|()| out.flush()).is_ok();
        seen += 1;
        ok && args.count.is_none_or(|n| seen < n)
    })?;
    Ok(ExitCode::SUCCESS)
}
