//! Palisade's node agent.
//!
//! Data flows one way: a [`source`] publishes cluster snapshots →
//! [`reconcile::Agent`] compiles them (`policy_engine`) for the local
//! [`endpoints`] the CNI plugin reported through [`cni_server`] → the
//! [`dataplane`] writes the result into the kernel maps.
#![deny(missing_docs)]

pub mod accept;
pub mod bpffs;
pub mod cni_server;
pub mod coverage;
pub mod dataplane;
pub mod devices;
pub mod endpoints;
pub mod events;
pub mod flows;
pub mod health;
pub mod links;
pub mod lock;
pub mod node_addrs;
pub mod preflight;
pub mod reconcile;
pub mod run;
pub mod shared;
pub mod source;
pub mod source_routes;
pub mod status;
pub mod uninstall;
pub mod unloaded;
