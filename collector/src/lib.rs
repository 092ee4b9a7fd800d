//! sockq: per-listener socket and kernel-queue observability.
//!
//! The library holds everything; `src/main.rs` is a thin CLI over it. Modules by domain:
//! - [`model`]: the data exchanged between the parts (no I/O);
//! - [`inventory`]: listeners from sock_diag in every network namespace, owners from procfs;
//! - [`exposition`]: Prometheus text exposition of a [`model::Snapshot`];
//! - [`http`]: the metrics endpoint.

pub mod exposition;
pub mod http;
pub mod inventory;
pub mod model;
pub mod kernel_layout;
pub mod probes;
pub mod tracefs;
pub mod privileges;
pub mod doctor;
pub mod cli;
pub mod daemon;
pub mod text;
