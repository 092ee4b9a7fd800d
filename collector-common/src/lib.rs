//! Types shared by sockq's eBPF programs (`collector-ebpf`) and its userspace
//! collector. One module per feature; every struct is `#[repr(C)]` with its padding
//! written out (implicit padding trips the verifier and can leak kernel memory) and a
//! compile-time size assertion, so both sides agree on the layout byte for byte.
#![no_std]

pub mod io_uring;
pub mod layout;
pub mod listener;
pub mod nagle;
pub mod queue;
pub mod stats;
pub mod tcp_state;
pub mod unix;
