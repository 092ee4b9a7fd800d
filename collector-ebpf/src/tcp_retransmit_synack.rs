//! Hook: `tcp:tcp_retransmit_synack` (Linux 4.16+), raw tracepoint,
//! `TP_PROTO(const struct sock *sk, const struct request_sock *req)`: `sk` is the
//! listener whose handshake needed another SYN-ACK, a sign the client's final ACK is
//! not arriving (loss, a SYN flood, or a full accept queue dropping it).

use aya_ebpf::{macros::raw_tracepoint, programs::RawTracePointContext};

use crate::{
    kernel::{offsets, sock_inode, sock_netns},
    maps::{atomic_add, listener_queue},
};

#[raw_tracepoint(tracepoint = "tcp_retransmit_synack")]
pub fn tcp_retransmit_synack(ctx: RawTracePointContext) -> i32 {
    let sk: *const u8 = ctx.arg(0);
    let o = offsets();
    if o.queue_valid == 0 {
        return 0;
    }
    let inode = sock_inode(sk, &o);
    if inode == 0 {
        return 0;
    }
    if let Some(q) = listener_queue(inode, sock_netns(sk, &o)) {
        // SAFETY: a valid map value pointer; the counter changes through atomics only.
        unsafe { atomic_add(&raw mut (*q).synack_retransmits, 1) };
    }
    0
}
