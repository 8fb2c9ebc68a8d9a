//! `policy-agent`: Palisade's node agent and the users' policy tools.

use std::net::IpAddr;
use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Args, Parser, Subcommand};

#[derive(Parser)]
#[command(name = "policy-agent", version, about = "Palisade: NetworkPolicy enforcement with eBPF")]
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
        let dataplane = policy_agent::dataplane::open_kernel(&args.bpffs_dir)?;
        tracing::info!(
            bpffs = %args.bpffs_dir.display(),
            node = args.node_name.as_deref().unwrap_or("-"),
            "dataplane ready"
        );
        let opts = policy_agent::run::RunOptions {
            cni_socket: args.cni_socket.clone(),
            node_addrs,
        };
        policy_agent::run::run(opts, dataplane, snapshots).await?;
        Ok(ExitCode::SUCCESS)
    })
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
        Ok(_) => Ok(ExitCode::SUCCESS),
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
