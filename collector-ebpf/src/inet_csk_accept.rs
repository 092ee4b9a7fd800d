//! Hook: fexit on `inet_csk_accept` (kernels with BPF trampolines, fentry/fexit: 5.5+
//! on x86_64, where the kernel allows `BPF_PROG_TYPE_TRACING`), the function every
//! TCP accept goes through, whichever way it was asked for: `accept()`, `accept4()`,
//! io_uring's `IORING_OP_ACCEPT` (single-shot, multishot, into a direct descriptor or
//! not). It runs in the thread that made the accept, returns the listener (the first
//! argument) and the child (the return value) directly: no file table to walk.
//!
//! Two prototypes, one program each (the return value follows the arguments, and a
//! tracing program's context is read at constant offsets the verifier checks against
//! the function's BTF): before 6.10
//! `struct sock *inet_csk_accept(struct sock *sk, int flags, int *err, bool kern)`,
//! since `struct sock *inet_csk_accept(struct sock *sk, struct proto_accept_arg *arg)`.
//! Userspace loads the one whose argument count this kernel's BTF shows.
//!
//! Where it attaches, the accept syscall programs and the io_uring programs are not
//! needed; where it does not (no trampolines, as on this project's 6.18 machines),
//! they do the same job (`accept.rs`, `io_uring.rs`).
//!
//! The kernel: <https://elixir.bootlin.com/linux/v6.12/source/net/ipv4/inet_connection_sock.c>
//! (`inet_csk_accept`).

use aya_ebpf::{helpers::bpf_get_current_pid_tgid, macros::fexit, programs::FExitContext};

use crate::{
    accept::account_accept,
    kernel::{offsets, sock_inode},
};

/// Up to 6.9: four arguments, the child is the fifth word.
#[fexit(function = "inet_csk_accept")]
pub fn inet_csk_accept_fexit4(ctx: FExitContext) -> i32 {
    let listener: *const u8 = ctx.arg(0);
    let child: *const u8 = ctx.arg(4);
    on_accepted(listener, child);
    0
}

/// 6.10 on: two arguments, the child is the third word.
#[fexit(function = "inet_csk_accept")]
pub fn inet_csk_accept_fexit2(ctx: FExitContext) -> i32 {
    let listener: *const u8 = ctx.arg(0);
    let child: *const u8 = ctx.arg(2);
    on_accepted(listener, child);
    0
}

#[inline(always)]
fn on_accepted(listener: *const u8, child: *const u8) {
    let o = offsets();
    if o.queue_valid == 0 || child.is_null() {
        return; // nothing accepted (EAGAIN, a signal, an error)
    }
    // Every child here is TCP.
    account_accept(
        child,
        bpf_get_current_pid_tgid(),
        true,
        sock_inode(listener, o),
    );
}
