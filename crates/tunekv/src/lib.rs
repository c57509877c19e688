//! Library half of the `tunekv` binary: running a local cluster of node processes, shared by
//! `tunekv dev` and the integration tests.

pub mod local_cluster;
