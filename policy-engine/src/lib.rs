//! Palisade's policy engine: everything between "what the cluster says" and
//! "what the kernel maps must hold", with no kernel involved.
//!
//! Data flows one way: [`model`] (a cluster snapshot, built from the
//! Kubernetes objects or from manifests by [`manifest`]) → [`compile`] (a
//! pure function; [`compile::Engine`] keeps it incremental) →
//! [`state::MapState`] → [`state::diff`] → the dataplane. [`lookup`] is the
//! datapath's decision in user space, and [`tools`] builds `simulate`,
//! `explain` and `lint` on it.
//!
//! # Status
//!
//! NetworkPolicy v1 semantics (design rules 1–8, 10–12) are compiled and
//! checked against the upstream conformance cases, the shared scenarios and
//! an independent reference evaluator (property tests).
//!
//! # Example
//!
//! ```
//! use policy_engine::manifest::{load_str, Loaded};
//! use policy_engine::model::Protocol;
//! use policy_engine::tools::simulate::{Probe, Simulation};
//!
//! let yaml = r#"
//! kind: Pod
//! metadata: {name: web, namespace: shop, labels: {app: web}}
//! status: {podIP: 10.0.0.1}
//! ---
//! kind: Pod
//! metadata: {name: db, namespace: shop, labels: {app: db}}
//! status: {podIP: 10.0.0.2}
//! ---
//! kind: NetworkPolicy
//! metadata: {name: db, namespace: shop}
//! spec:
//!   podSelector: {matchLabels: {app: db}}
//!   ingress: [{from: [{podSelector: {matchLabels: {app: web}}}], ports: [{port: 5432}]}]
//! "#;
//! let mut loaded = Loaded::default();
//! load_str(yaml, "cluster.yaml".as_ref(), &mut loaded).unwrap();
//! let sim = Simulation::new(loaded.snapshot);
//! let probe = |from: &str, to: &str, port| Probe {
//!     from: from.parse().unwrap(),
//!     to: to.parse().unwrap(),
//!     port,
//!     protocol: Protocol::Tcp,
//! };
//! assert!(sim.judge(&probe("shop/web", "shop/db", 5432)).unwrap().connection.allowed());
//! assert!(!sim.judge(&probe("shop/web", "shop/db", 22)).unwrap().connection.allowed());
//! assert!(sim.judge(&probe("shop/db", "shop/web", 80)).unwrap().connection.allowed());
//! ```
#![deny(missing_docs)]

pub mod capacity;
pub mod compile;
pub mod lookup;
pub mod manifest;
pub mod model;
pub mod packet;
pub mod state;
#[cfg(any(test, feature = "test-util"))]
pub mod testutil;
pub mod tools;
