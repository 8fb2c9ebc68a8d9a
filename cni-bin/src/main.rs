//! `palisade-cni`: run by the container runtime as a chained CNI plugin (no
//! arguments, `CNI_*` environment), or by the DaemonSet's init container as
//! `palisade-cni install ...` (and removed by `palisade-cni uninstall`).

use std::io::Write;
use std::process::ExitCode;

use clap::{Parser, Subcommand};
use cni_bin::env::ProcessEnv;
use cni_bin::install::{self, InstallOptions, UninstallOptions};
use cni_bin::Streams;

/// Palisade's chained CNI plugin. Run without arguments by the container
/// runtime; the subcommands are for installing it on a node.
#[derive(Parser)]
#[command(name = "palisade-cni", version)]
struct Cli {
    #[command(subcommand)]
    command: Cmd,
}

#[derive(Subcommand)]
enum Cmd {
    /// Copy this binary into the CNI bin dir and chain `palisade-cni` last
    /// into the node's active .conflist (idempotent).
    Install(InstallOptions),
    /// Remove `palisade-cni` from every .conflist, keeping every other byte,
    /// then the binary (idempotent). Pods keep running, unenforced.
    Uninstall(UninstallOptions),
}

fn main() -> ExitCode {
    if std::env::args_os().len() > 1 {
        let (what, result) = match Cli::parse().command {
            Cmd::Install(opts) => ("install", install::run(&opts)),
            Cmd::Uninstall(opts) => ("uninstall", install::run_uninstall(&opts)),
        };
        return match result {
            Ok(()) => ExitCode::SUCCESS,
            Err(e) => {
                eprintln!("palisade-cni {what}: {e:#}");
                ExitCode::FAILURE
            }
        };
    }
    let (stdin, stdout, stderr) = (std::io::stdin(), std::io::stdout(), std::io::stderr());
    let code = cni_bin::run(
        &ProcessEnv,
        Streams {
            stdin: &mut stdin.lock(),
            stdout: &mut stdout.lock(),
            stderr: &mut stderr.lock(),
        },
    );
    let _ = std::io::stdout().flush();
    ExitCode::from(u8::try_from(code).unwrap_or(1))
}
