//! Palisade's network-namespace test bed: a cluster's pods as network
//! namespaces on a bridge in a "node" namespace, wired by the real CNI
//! plugins (`bridge` + `host-local` from /usr/lib/cni) invoked the way a
//! container runtime invokes them, optionally with `palisade-cni` chained
//! after them and `policy-agent` enforcing; hosts outside the cluster in an
//! "outside" namespace routed through the node without NAT; TCP and UDP echo
//! servers everywhere; and probes made with real sockets.
//!
//! Several nodes (`nodes: 2`): node namespaces joined as Flannel's vxlan
//! backend joins nodes (see [`overlay`]), a /24 of 10.244.0.0/16 and an
//! agent each, pods placed by `spec.nodeName`, their address, or load (see
//! [`placement`]).
//!
//! Status: IPv4, and dual-stack IPv4 + IPv6 when some pod has an IPv6
//! address in `status.podIPs` or some probe names an IPv6 address (then
//! every wired pod gets one address of each family from a two-range
//! host-local IPAM, outside hosts may have IPv6 documentation addresses,
//! and servers listen on both families). A probe runs over the family of
//! the address it names (`{"from": "ns/a", "to": "fd00:10:244::11", ...}`
//! is IPv6, pod names alone mean IPv4); [`default_probes_v6`] is the pod
//! matrix over IPv6. hostNetwork pods are not wired, they share the node
//! namespace and the node's addresses; SCTP probes are reported as skipped
//! (this kernel has no SCTP sockets). Needs root.
//!
//! ```no_run
//! use testbed::{read_probes, report, Testbed, TestbedOptions};
//! # fn main() -> Result<(), testbed::TestbedError> {
//! let probes = read_probes("probes.jsonl".as_ref())?;
//! let bed = Testbed::start(TestbedOptions {
//!     manifests: vec!["cluster.yaml".into()],
//!     palisade: true,
//!     bin_dir: "target/debug".into(),
//!     probes: probes.clone(),
//!     nodes: 1,
//!     agent_args: Vec::new(),
//! })?;
//! let seen = bed.probe(&probes);
//! print!("{}", report::table(&seen));
//! std::process::exit(i32::from(report::mismatches(&seen) > 0));
//! # }
//! ```
//!
//! Cleanup: dropping the [`Testbed`] deletes its namespaces (and with them
//! the bridge and veths), runs CNI DEL, stops the agent and removes its
//! bpffs folder; so does an error half-way through [`Testbed::start`]. CLIs
//! call [`install_signal_cleanup`] so that Ctrl-C cleans up too.
#![deny(missing_docs)]

mod agent;
mod bed;
mod cleanup;
pub mod cni;
pub mod controlplane;
mod daemon;
pub mod dns;
mod echo;
mod error;
pub mod layout;
mod netns;
mod node;
pub mod overlay;
pub mod placement;
pub mod probe;
mod prober;
pub mod report;
pub mod runtime;
pub mod scenario;

pub use bed::{
    load_snapshot, Testbed, TestbedOptions, WiredPod, AGENT_BINARY, BPFFS_ROOT, PLUGIN_BINARY,
};
pub use cleanup::{cleanup_all, install_signal_cleanup};
pub use error::TestbedError;
pub use node::BedNode;
pub use probe::{
    default_probes, default_probes_v6, parse_probes, read_probes, read_probes_without_services,
    validate_probes, End, Observation, PodRef, Probe, ProbeError, Protocol,
};
pub use prober::PROBE_TIMEOUT;
pub use report::mismatches;
