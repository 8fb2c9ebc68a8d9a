//! `cargo xtask`: Palisade's developer tasks.
//!
//! Every command except `setup` runs `setup` first, so a fresh Debian 12
//! machine needs nothing but `cargo xtask test`.

mod bench;
mod cmd;
mod e2e_upstream;
mod fuzz;
mod image;
mod kind_e2e;
mod kube_build;
mod prereq;
mod setup;
mod tasks;

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand, ValueEnum};

/// Palisade's developer tasks.
#[derive(Parser)]
#[command(name = "cargo xtask", bin_name = "cargo xtask")]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Install the toolchain and system packages (idempotent; needs root only
    /// when something is missing).
    Setup,
    /// Build `policy-agent` and `palisade-cni`; prints the directory holding
    /// them.
    Build {
        /// Build with the release profile.
        #[arg(long)]
        release: bool,
    },
    /// Check formatting and lints, build the binaries, fuzz each target for a
    /// few seconds, run every test of the workspace.
    Test,
    /// Run probes against a cluster manifest in the network-namespace test bed.
    Testbed {
        /// Multi-document YAML of Namespaces, Pods and NetworkPolicies.
        #[arg(long)]
        manifests: PathBuf,
        /// JSON-lines probe file (default: every pod to every pod's ports).
        #[arg(long)]
        probes: Option<PathBuf>,
        /// Output format.
        #[arg(long, value_enum, default_value_t = Format::Table)]
        format: Format,
        /// Run without Palisade: the plain bridge network, as Flannel gives.
        #[arg(long)]
        no_palisade: bool,
        /// Nodes: several are joined by a VXLAN overlay as Flannel joins
        /// them, with an agent each; pods go where `spec.nodeName` says,
        /// else where their address lies, else to the emptiest node.
        #[arg(long, default_value_t = 1)]
        nodes: usize,
        /// Build and run the release binaries.
        #[arg(long)]
        release: bool,
        /// Against a real control plane (etcd, kube-apiserver,
        /// kube-controller-manager, kube-proxy): objects created through
        /// the API, the agent running `--kube` as Palisade's ServiceAccount.
        /// (Without `--runtime containerd` it runs the agent: no
        /// `--no-palisade`.)
        #[arg(long)]
        kube: bool,
        /// With `--kube`, who plays the kubelet: `bed` (the test bed's own
        /// code wires the pods and runs the agent as a process) or
        /// `containerd` (real nodes: the kubelet and containerd in network
        /// namespaces, pods as agnhost containers, Palisade installed from
        /// its image with `kubectl apply -k overlays/testbed`, probes run
        /// inside the client pods).
        #[arg(long, value_enum, default_value_t = Runtime::Bed, requires = "kube")]
        runtime: Runtime,
        /// With `--kube`: ask IPAM for each pod's manifest address
        /// (`status.podIP`) instead of letting it pick one, for policies
        /// whose ipBlocks name those addresses.
        #[arg(long, requires = "kube")]
        manifest_addresses: bool,
        /// With `--kube`: give every pod a ClusterIP Service of its own
        /// (`s-<namespace>-<pod>`) and send every probe to a pod through
        /// it (kube-proxy translates, Palisade judges on the backend).
        #[arg(long, requires = "kube")]
        via_services: bool,
    },
    /// For each example under examples/, on two real nodes: the policies
    /// applied with kubectl on Flannel alone (enforced by nobody), then
    /// Palisade installed with `kubectl apply -k`, and what that changes.
    Demo {
        /// Only this example (a directory name under examples/).
        #[arg(long)]
        example: Option<String>,
        /// `containerd` (default): the story on real nodes, one cluster
        /// per example: a Flannel cluster takes `kubectl apply -f` of the
        /// policies and enforces nothing, then `kubectl apply -k
        /// overlays/testbed` installs Palisade and the same probes are
        /// judged (about 1.5 to 4 minutes per example). `bed`: the quicker
        /// story in the test bed (the plain bridge, then the bed's kubelet
        /// against a real API server with Palisade).
        #[arg(long, value_enum, default_value_t = Runtime::Containerd)]
        runtime: Runtime,
        /// Build and run the release binaries.
        #[arg(long)]
        release: bool,
    },
    /// Build the container image as an OCI archive (no Docker needed): the
    /// static release binaries, loadable with `ctr images import`,
    /// `k3s ctr images import`, `kind load image-archive` and `docker
    /// load`. Prints the archive's path.
    Image {
        /// Image reference the archive names (as the manifests use it).
        #[arg(long, default_value = image::DEFAULT_TAG)]
        tag: String,
        /// Where to write the archive (default: palisade-image.oci.tar in
        /// cargo's target folder).
        #[arg(long)]
        output: Option<PathBuf>,
        /// From the debug build (static too; faster to build, larger):
        /// what `cargo xtask test` installs on the bed's real nodes.
        #[arg(long)]
        debug: bool,
    },
    /// The upstream Kubernetes 1.20.2 e2e NetworkPolicy suite, unmodified,
    /// against two real nodes (containerd and the kubelet in network
    /// namespaces) with Palisade installed from manifests/.
    E2eUpstream(e2e_upstream::Options),
    /// The connectivity matrix on a kind cluster with Flannel and Palisade
    /// (needs Docker, kind and kubectl; says which are missing).
    KindE2e(kind_e2e::Options),
    /// Fuzz every input (CNI plugin, agent socket, manifests, packets)
    /// with cargo-fuzz, one target after another; fails if one finds a
    /// crash or a mismatch (needs root for the packet target).
    Fuzz {
        /// Seconds per target.
        #[arg(long, default_value_t = 600)]
        seconds: u64,
        /// Only this target (cni_input, agent_socket, manifest_simulate,
        /// packet_verdict).
        #[arg(long)]
        target: Option<String>,
    },
    /// Benchmarks: Palisade against no enforcement and iptables/ipset
    /// enforcers (throughput, latency, connection rate, a CIDR sweep, CNI
    /// ADD, a ClusterIP and the control plane), as ratios to a baseline of
    /// the same run; needs root.
    Bench {
        /// Fewer rounds, shorter runs, smaller sweeps and clusters.
        #[arg(long)]
        quick: bool,
        /// Only one section.
        #[arg(long, value_enum)]
        only: Option<bench::Section>,
        /// Write the figures as JSON here (else they are printed).
        #[arg(long)]
        json: Option<PathBuf>,
        /// Write an SVG plot of verdict cost and connection rate against
        /// the number of CIDRs here.
        #[arg(long)]
        plot: Option<PathBuf>,
        /// The kube section in one bed only: `bed` (the played kubelet: the
        /// ClusterIP figures and the control plane's) or `containerd` (the
        /// control plane's on a real node, the agent in its DaemonSet pod).
        /// Both by default, the played one first.
        #[arg(long, value_enum)]
        runtime: Option<Runtime>,
        /// Run the policy engine's criterion benchmarks instead
        /// (`cargo bench -p policy-engine`, arguments after `--`).
        #[arg(long, conflicts_with_all = ["only", "json", "plot", "runtime"])]
        engine: bool,
        /// Arguments passed to the engine's benchmark harness.
        #[arg(
            trailing_var_arg = true,
            allow_hyphen_values = true,
            requires = "engine"
        )]
        args: Vec<String>,
    },
}

/// Who plays the kubelet in `testbed --kube` and `demo`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub enum Runtime {
    /// The test bed's own code.
    Bed,
    /// Real kubelets and containerd.
    Containerd,
}

/// Output formats of `testbed`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub enum Format {
    /// One JSON object per probe and line.
    Json,
    /// A readable table with a summary line.
    Table,
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    cmd::ensure_cargo_bin_on_path();
    let outcome = match cli.command {
        Command::Setup => setup::run().map(|()| ExitCode::SUCCESS),
        Command::Build { release } => tasks::build(release),
        Command::Test => tasks::test(),
        Command::Testbed {
            manifests,
            probes,
            format,
            no_palisade,
            nodes,
            release,
            kube,
            runtime,
            manifest_addresses,
            via_services,
        } => tasks::testbed(tasks::TestbedArgs {
            manifests,
            probes,
            format,
            palisade: !no_palisade,
            nodes,
            release,
            kube,
            runtime,
            manifest_addresses,
            via_services,
        }),
        Command::Demo {
            example,
            release,
            runtime,
        } => tasks::demo(example.as_deref(), release, runtime),
        Command::Bench {
            quick,
            only,
            json,
            plot,
            runtime,
            engine,
            args,
        } => tasks::bench(
            engine,
            &bench::Options {
                quick,
                only,
                json,
                plot,
                runtime,
            },
            &args,
        ),
        Command::Fuzz { seconds, target } => fuzz::run(seconds, target.as_deref()),
        Command::Image { tag, output, debug } => image::run(&tag, output.as_deref(), debug),
        Command::KindE2e(opts) => kind_e2e::run(&opts),
        Command::E2eUpstream(opts) => e2e_upstream::run(&opts),
    };
    match outcome {
        Ok(code) => code,
        Err(e) => {
            eprintln!("xtask: error: {e:#}");
            ExitCode::FAILURE
        }
    }
}

#[cfg(test)]
mod manifests_tests;
