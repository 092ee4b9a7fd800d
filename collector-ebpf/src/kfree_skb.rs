//! Hook: `skb:kfree_skb`, raw tracepoint, `TP_PROTO(struct sk_buff *skb, void
//! *location, enum skb_drop_reason reason, struct sock *rx_sk)` (the `rx_sk` argument
//! present in 6.12: Debian's 6.12.95 attaches; 5.10 and 6.1 refuse the program with EINVAL). Fires for every dropped packet (consumed packets go through
//! `consume_skb` instead), so it leaves at once unless the receiving socket is a
//! listener; then it counts the drop per (listener inode, reason) in `DROP_REASONS`.
//!
//! A full accept queue drops the handshake's final ACK with
//! `SKB_DROP_REASON_TCP_LISTEN_OVERFLOW`; SYNs refused because the queue is full are
//! not freed with a reason (they are counted in the listener's `sk_drops` only).
//! Kernels whose tracepoint has no `rx_sk` cannot attach this program (the kernel
//! rejects reading a fourth argument): the probe reports so.

use aya_ebpf::{macros::raw_tracepoint, programs::RawTracePointContext};
use collector_common::{queue::DropKey, stats::STAT_DROP_REASONS_FULL};

use crate::{
    kernel::{listener_inode, offsets},
    maps::{DROP_REASONS, atomic_add, get_or_insert},
};

#[raw_tracepoint(tracepoint = "kfree_skb")]
pub fn kfree_skb(ctx: RawTracePointContext) -> i32 {
    let reason: u64 = ctx.arg(2);
    let rx_sk: *const u8 = ctx.arg(3);
    let _ = on_drop(rx_sk, reason as u32);
    0
}

#[inline(always)]
fn on_drop(sk: *const u8, reason: u32) -> Result<(), i64> {
    if sk.is_null() {
        return Ok(());
    }
    let o = offsets();
    if o.queue_valid == 0 {
        return Ok(());
    }
    let Some(inode) = listener_inode(sk, &o) else {
        return Ok(());
    };
    let key = DropKey {
        listener: inode,
        reason,
        _pad: 0,
    };
    if let Some(n) = get_or_insert(&DROP_REASONS, &key, STAT_DROP_REASONS_FULL, || Some(0u64)) {
        atomic_add(n, 1);
    }
    Ok(())
}
