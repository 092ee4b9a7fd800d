//! Hook: fexit on `unix_accept` (kernels with BPF trampolines), the `accept` of Unix
//! stream and seqpacket sockets, whichever way it was asked for (`accept()`,
//! `accept4()`, io_uring). With fexit on `inet_csk_accept` it makes the accept
//! syscall and io_uring programs unnecessary.
//!
//! Its first two arguments are the same in every prototype (`struct socket *sock,
//! struct socket *newsock`, then `int flags, bool kern` before 6.10, `struct
//! proto_accept_arg *arg` since), and only those are read: on success the accepted
//! sock is grafted onto `newsock` (`newsock->sk`), which stays NULL otherwise. That
//! sock is the one `sk_data_ready` stamped when the connection was queued (the
//! `skb->sk` of the listener's queue), so [`account_accept`] counts it as any other
//! accept.
//!
//! The kernel: <https://elixir.bootlin.com/linux/v6.12/source/net/unix/af_unix.c>
//! (`unix_accept`).

use aya_ebpf::{helpers::bpf_get_current_pid_tgid, macros::fexit, programs::FExitContext};

use crate::{
    accept::account_accept,
    kernel::{Kptr, offsets, socket_inode},
};

#[fexit(function = "unix_accept")]
pub fn unix_accept_fexit(ctx: FExitContext) -> i32 {
    let listener: *const u8 = ctx.arg(0);
    let newsock: *const u8 = ctx.arg(1);
    let _ = on_accepted(listener, newsock);
    0
}

#[inline(always)]
fn on_accepted(listener: *const u8, newsock: *const u8) -> Result<(), i64> {
    let o = offsets();
    if o.queue_valid == 0 || listener.is_null() || newsock.is_null() {
        return Ok(());
    }
    let child = Kptr::new(newsock, o.btf_socket_alloc).ptr(o.socket_sk);
    if child.is_null() {
        return Ok(()); // nothing accepted
    }
    // Every child here is a Unix one: its stamp names its listener (the socket's
    // inode serves one no enqueue stamped).
    account_accept(
        child,
        bpf_get_current_pid_tgid(),
        false,
        socket_inode(listener, o),
    );
    Ok(())
}
