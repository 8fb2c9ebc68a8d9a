//! Palisade's policy engine: everything between "what the cluster says" and
//! "what the kernel maps must hold", with no kernel involved.
//!
//! Data flows one way: [`model`] (a cluster snapshot) → `compile` (a pure
//! function) → [`state::MapState`] → [`state::diff`] → the dataplane.
#![deny(missing_docs)]

pub mod manifest;
pub mod model;
pub mod state;
