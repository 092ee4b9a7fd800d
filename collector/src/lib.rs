//! sockq: per-listener socket and kernel-queue observability.
//!
//! The library holds everything; `src/main.rs` is a thin CLI over it. Modules by domain:
//! - kernel side: [`kernel_layout`] (struct offsets from BTF), [`tracefs`],
//!   [`probes`] (load, attach with fallbacks, read the in-kernel aggregates),
//!   [`privileges`];
//! - inventory: [`inventory`] (listeners from sock_diag in every network namespace,
//!   owners from procfs, `/proc/net/netstat`);
//! - the data exchanged between the parts: [`model`] (no I/O);
//! - export: [`exposition`] (Prometheus text), [`http`] (the metrics endpoint);
//! - the commands: [`daemon`] (`sockq run`), [`doctor`], [`cli`]; [`text`] escapes
//!   attacker-controlled names for terminals and logs.

pub mod cli;
pub mod daemon;
pub mod doctor;
pub mod episodes;
pub mod event_log;
pub mod exposition;
pub mod http;
pub mod inventory;
pub mod kallsyms;
pub mod kernel_layout;
pub mod model;
pub mod nagle;
pub mod pattern;
pub mod privileges;
pub mod probes;
pub mod queue_stats;
pub mod status_page;
pub mod text;
pub mod tracefs;

/// An error and its sources on one line, for logs and one-line CLI errors.
pub fn error_chain(error: &dyn std::error::Error) -> String {
    let mut text = error.to_string();
    let mut source = error.source();
    while let Some(cause) = source {
        text.push_str(": ");
        text.push_str(&cause.to_string());
        source = cause.source();
    }
    text
}
