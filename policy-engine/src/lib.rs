//! Palisade's policy engine: everything between "what the cluster says" and
//! "what the kernel maps must hold", with no kernel involved.
//!
//! Data flows one way: [`model`] (a cluster snapshot) → [`compile`] (a pure
//! function) → [`state::MapState`] → [`state::diff`] → the dataplane.
//! [`lookup`] is the datapath's decision in user space, and [`tools`] builds
//! `simulate`, `explain` and `lint` on it.
#![deny(missing_docs)]

pub mod compile;
pub mod lookup;
pub mod manifest;
pub mod model;
pub mod state;
#[cfg(any(test, feature = "test-util"))]
pub mod testutil;
pub mod tools;
