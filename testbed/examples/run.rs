//! Runs probes through the test bed by hand:
//!
//! ```sh
//! cargo run -p testbed --example run -- CLUSTER.yaml PROBES.jsonl [BIN_DIR] [--hold]
//! ```
//!
//! With `BIN_DIR` (holding `policy-agent` and `palisade-cni`) Palisade is
//! on, otherwise the plain bridge. `--hold` keeps the namespaces until
//! Ctrl-C (to poke at them with `ip netns`). Exit status: 0, 1 on a
//! mismatch or failure, 2 on bad input.

use std::path::PathBuf;
use std::process::ExitCode;

use testbed::{report, Testbed, TestbedOptions};

fn main() -> ExitCode {
    let mut args: Vec<String> = std::env::args().skip(1).collect();
    let hold = args.iter().any(|a| a == "--hold");
    args.retain(|a| a != "--hold");
    let [cluster, probes, rest @ ..] = args.as_slice() else {
        eprintln!("usage: run CLUSTER.yaml PROBES.jsonl [BIN_DIR] [--hold]");
        return ExitCode::from(2);
    };
    if let Err(e) = testbed::install_signal_cleanup() {
        eprintln!("cannot install the signal handler: {e}");
        return ExitCode::FAILURE;
    }
    let result = testbed::read_probes(probes.as_ref())
        .map_err(testbed::TestbedError::from)
        .and_then(|probes| {
            let bed = Testbed::start(TestbedOptions {
                manifests: vec![PathBuf::from(cluster)],
                palisade: !rest.is_empty(),
                bin_dir: rest.first().map(PathBuf::from).unwrap_or_default(),
                probes: probes.clone(),
                nodes: 1,
                agent_args: Vec::new(),
            })?;
            Ok((bed, probes))
        });
    match result {
        Err(e) => {
            eprintln!("error: {e}");
            ExitCode::from(e.exit_code() as u8)
        }
        Ok((bed, probes)) => {
            let seen = bed.probe(&probes);
            print!("{}", report::table(&seen));
            if hold {
                eprintln!(
                    "holding; node namespace {} — Ctrl-C to clean up",
                    bed.node_netns()
                );
                loop {
                    std::thread::park();
                }
            }
            ExitCode::from(u8::from(report::mismatches(&seen) > 0))
        }
    }
}
