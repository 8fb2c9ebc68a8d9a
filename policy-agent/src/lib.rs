//! Palisade's node agent: sources of cluster state, the reconcile loop, the
//! CNI endpoint server and the kernel dataplane.
#![deny(missing_docs)]

pub mod dataplane;
