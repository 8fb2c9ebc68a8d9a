//! User-facing tools on top of the engine: `simulate`, `explain`, `lint`.
//! The CLI wiring lives in `policy-agent`; these are library functions.

pub mod probe;
