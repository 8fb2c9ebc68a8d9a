//! `palisade-cni`: Palisade's chained CNI plugin (CNI spec up to 1.1.0).
//!
//! It runs last in a node's plugin chain (for example Flannel → portmap →
//! palisade-cni). On `ADD` it tells the node agent which host-side veth and
//! which addresses the new pod got, waits until the agent answers that the
//! pod's policy is enforced, and only then hands the previous plugin's result
//! back to the runtime unchanged. If the agent cannot be reached or refuses,
//! `ADD` fails, so a pod never starts unprotected (fail closed).
//!
//! Status: ADD, DEL, CHECK, STATUS, GC and VERSION are implemented. STATUS
//! succeeds only while the agent is ready (its cluster state in sync, its
//! last apply done); GC hands the runtime's `cni.dev/valid-attachments` to
//! the agent, which forgets every other endpoint.
//!
//! The process environment and the standard streams are passed in
//! ([`Environment`], [`Streams`]), so every command is tested without a
//! container runtime:
//!
//! ```
//! use std::collections::HashMap;
//! use cni_bin::{run, Streams};
//!
//! let env: HashMap<String, String> = [("CNI_COMMAND".to_string(), "VERSION".to_string())].into();
//! let (mut out, mut err) = (Vec::new(), Vec::new());
//! let code = run(&env, Streams { stdin: &mut &b"{}"[..], stdout: &mut out, stderr: &mut err });
//! assert_eq!(code, 0);
//! assert!(String::from_utf8(out).unwrap().contains("1.1.0"));
//! ```
#![deny(missing_docs)]

pub mod config;
pub mod env;
pub mod error;
pub mod install;
pub mod plugin;

pub use env::Environment;
pub use error::PluginError;
pub use plugin::{run, run_with, AgentClient, SocketAgent, Streams};
