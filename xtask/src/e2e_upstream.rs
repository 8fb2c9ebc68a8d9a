//! `cargo xtask e2e-upstream`: the unmodified upstream Kubernetes 1.20.2
//! e2e NetworkPolicy suite, through ginkgo, against two real nodes
//! (containerd and the kubelet, `testbed::runtime`) with Palisade
//! installed from `manifests/` as a user installs it (`kubectl apply -k`
//! of the `overlays/testbed` overlay, which changes only the image's
//! name and pull policy). Prints ginkgo's own output and summary.

use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::{Context, Result};
use testbed::controlplane::ControlPlaneOptions;
use testbed::runtime::cluster::{RealCluster, RealClusterOptions};
use testbed::runtime::e2e::{self, SuiteOptions};
use testbed::runtime::images::ImageArchive;

use crate::cmd;

/// The DaemonSet the install creates.
pub const AGENT_DAEMONSET: (&str, &str) = ("palisade-system", "palisade-agent");

/// Options of `cargo xtask e2e-upstream`.
#[derive(clap::Args, Debug)]
pub struct Options {
    /// Ginkgo's focus (a regular expression over spec names).
    #[arg(long, default_value = e2e::NETWORK_POLICY_FOCUS)]
    pub focus: String,
    /// More specs to skip (a regular expression); `SCTPConnectivity` is
    /// always skipped (this kernel has no SCTP sockets).
    #[arg(long)]
    pub skip: Option<String>,
    /// Ginkgo's parallel nodes.
    #[arg(long, default_value_t = 4)]
    pub parallel: usize,
    /// Build Palisade's image from the release binaries.
    #[arg(long)]
    pub release: bool,
    /// Run the suite without Palisade (what a Flannel cluster enforces:
    /// nothing).
    #[arg(long)]
    pub no_palisade: bool,
}

/// The name the nodes import Palisade's image as: what the CRI makes of
/// the manifests' `palisade:dev`, and what `overlays/testbed` names.
pub const NODE_IMAGE_NAME: &str = testbed::runtime::images::PALISADE_IMAGE_NAME;

/// Palisade's image as `cargo xtask image` makes it (the static binaries,
/// of the release profile with `release`), as the nodes import it.
pub fn palisade_image(release: bool) -> Result<ImageArchive> {
    let bin_dir = crate::tasks::build_binaries(release)?;
    let path = bin_dir.join(crate::image::ARCHIVE_NAME);
    crate::image::write_archive(&bin_dir, crate::image::DEFAULT_TAG, &path)?;
    Ok(ImageArchive {
        path,
        name: NODE_IMAGE_NAME.into(),
    })
}

/// Runs the suite; exit 0 when every spec that ran passed.
pub fn run(opts: &Options) -> Result<ExitCode> {
    crate::setup::run()?;
    testbed::install_signal_cleanup().context("installing the Ctrl-C cleanup")?;
    let flannel_plugin =
        crate::tasks::build_host_bin("testbed", testbed::runtime::flannel::PLUGIN_BINARY)?;
    let mut images = Vec::new();
    if !opts.no_palisade {
        images.push(palisade_image(opts.release)?);
    }
    let started = std::time::Instant::now();
    let mut cluster = RealCluster::start(RealClusterOptions {
        nodes: 2,
        flannel_plugin,
        images,
        control_plane: ControlPlaneOptions::default(),
    })?;
    eprintln!(
        "e2e-upstream: 2 real nodes Ready in {:.1} s",
        started.elapsed().as_secs_f64()
    );
    if !opts.no_palisade {
        let overlay = cmd::workspace_root().join("overlays").join("testbed");
        let (ns, name) = AGENT_DAEMONSET;
        cluster.install(&overlay, ns, name)?;
        eprintln!(
            "e2e-upstream: Palisade installed and ready on every node at {:.1} s",
            started.elapsed().as_secs_f64()
        );
    }
    let report_dir: PathBuf = cluster.control_plane().dir().join("e2e-report");
    let log = cluster.control_plane().dir().join("ginkgo.log");
    let suite = SuiteOptions {
        focus: opts.focus.clone(),
        skip: opts.skip.clone(),
        parallel: opts.parallel,
        report_dir,
    };
    let result = e2e::run_suite(cluster.control_plane(), 2, &suite, &log);
    // ginkgo's own report, then ours.
    print!("{}", std::fs::read_to_string(&log).unwrap_or_default());
    let result = result?;
    for f in &result.failed {
        println!("FAILED: {f}");
    }
    println!(
        "e2e-upstream: {} passed, {} failed ({:.0} s in all)",
        result.passed,
        result.failed.len(),
        started.elapsed().as_secs_f64()
    );
    Ok(if result.success && result.failed.is_empty() {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    })
}
