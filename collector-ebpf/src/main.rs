//! sockq's eBPF programs. Built for `bpfel-unknown-none` in release mode by
//! `collector/build.rs` and embedded into the `sockq` binary.
//!
//! One module per hook, named after it. Programs only read kernel memory through
//! offsets resolved from BTF by userspace (`collector_common::layout`), aggregate in
//! maps, and send rare events through a ring buffer; nothing here can panic. Their
//! own failures are counted and, rarely, logged (`stats`).
#![cfg_attr(target_arch = "bpf", no_std)]
#![cfg_attr(target_arch = "bpf", no_main)]
// Atomic adds on shared map values (`maps::atomic_add`); the eBPF build runs with
// RUSTC_BOOTSTRAP for -Z build-std anyway.
#![cfg_attr(target_arch = "bpf", feature(core_intrinsics, asm_experimental_arch))]
#![cfg_attr(target_arch = "bpf", expect(internal_features, reason = "atomic_xadd"))]

#[cfg(target_arch = "bpf")]
mod accept;
#[cfg(target_arch = "bpf")]
mod inet_csk_accept;
#[cfg(target_arch = "bpf")]
mod inet_sock_set_state;
#[cfg(target_arch = "bpf")]
mod io_uring;
#[cfg(target_arch = "bpf")]
mod kernel;
#[cfg(target_arch = "bpf")]
mod kfree_skb;
#[cfg(target_arch = "bpf")]
mod listen;
#[cfg(target_arch = "bpf")]
mod maps;
#[cfg(target_arch = "bpf")]
mod nagle;
#[cfg(target_arch = "bpf")]
mod oldest_queued;
#[cfg(target_arch = "bpf")]
mod sk_data_ready;
#[cfg(target_arch = "bpf")]
mod sock_recv_length;
#[cfg(target_arch = "bpf")]
mod stats;
#[cfg(target_arch = "bpf")]
mod tcp_retransmit_synack;
#[cfg(target_arch = "bpf")]
mod unix_accept;
#[cfg(target_arch = "bpf")]
mod unix_connect;

#[cfg(target_arch = "bpf")]
#[unsafe(link_section = "license")]
#[unsafe(no_mangle)]
static LICENSE: [u8; 13] = *b"Dual MIT/GPL\0";

#[cfg(target_arch = "bpf")]
#[panic_handler]
fn panic(_info: &core::panic::PanicInfo) -> ! {
    loop {}
}

/// Host builds (clippy, `cargo build --workspace`) see an empty binary.
#[cfg(not(target_arch = "bpf"))]
fn main() {}
