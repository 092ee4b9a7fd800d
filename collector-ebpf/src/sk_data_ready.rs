//! Hook: `sock:sk_data_ready` (Linux 6.3+), raw tracepoint, `TP_PROTO(const struct
//! sock *sk)`.
//!
//! Fires whenever a socket is told data is ready: for a listener, each time a
//! connection that completed its handshake is queued for `accept()`. It also fires
//! for every data segment on established sockets, so the first thing read is the
//! socket's state, and everything that is not a listener leaves at once.
//!
//! For a listener, reads `sk_ack_backlog` (depth after the enqueue) and
//! `sk_max_ack_backlog` (limit), with its inode in the same read where they lie
//! together, and aggregates them in `LISTENER_QUEUES`: depth
//! histogram, maximum, full enqueues (depth > limit, the kernel's
//! `sk_acceptq_is_full`), and the listener's address (for `oldest_queued`). A full
//! queue sends one `QueueFullEvent` per listener per second.
//!
//! A Unix stream or seqpacket listener (also in `TCP_LISTEN`) is told the same when a
//! connect queues on it (`unix_stream_connect`, in the client's context): it is
//! counted by `unix_connect::on_unix_enqueue`.
//!
//! Kernels without this tracepoint (6.1) get the same from a kprobe on
//! `sock_def_readable`, the `sk_data_ready` callback of TCP listeners and the
//! tracepoint's own call site, where kprobes exist (userspace tries the raw
//! tracepoint first).

use aya_ebpf::{
    helpers::bpf_ktime_get_ns,
    macros::{kprobe, raw_tracepoint},
    programs::{ProbeContext, RawTracePointContext},
};
use collector_common::{
    listener::EVENT_QUEUE_FULL, queue::QueueFullEvent, stats::STAT_EVENTS_LOST,
};

use crate::{
    kernel::{backlog_and_inode, is_inet_family, listening_family, offsets, sock_netns},
    maps::{EVENTS, atomic_add, count_enqueue},
    stats::count_failure,
};

/// Minimum time between two queue-full events of one listener.
const FULL_EVENT_INTERVAL_NS: u64 = 1_000_000_000;

#[raw_tracepoint(tracepoint = "sk_data_ready")]
pub fn sk_data_ready(ctx: RawTracePointContext) -> i32 {
    let sk: *const u8 = ctx.arg(0);
    let _ = try_sk_data_ready(sk);
    0
}

#[kprobe]
pub fn sk_data_ready_kprobe(ctx: ProbeContext) -> u32 {
    if let Some(sk) = ctx.arg::<*const u8>(0) {
        let _ = try_sk_data_ready(sk);
    }
    0
}

#[inline(always)]
fn try_sk_data_ready(sk: *const u8) -> Result<(), i64> {
    let o = offsets();
    if o.queue_valid == 0 {
        return Ok(());
    }
    let Some(family) = listening_family(sk, o) else {
        return Ok(());
    };
    if family == collector_common::unix::AF_UNIX {
        return crate::unix_connect::on_unix_enqueue(sk, o);
    }
    // Unix listeners left above: only inet ones have the accept queue read here.
    if !is_inet_family(family) {
        return Ok(());
    }
    let (depth, limit, inode) = backlog_and_inode(sk, o)?;
    if inode == 0 {
        return Ok(());
    }
    let Some(q) = count_enqueue(sk, inode, depth) else {
        return Ok(());
    };
    // SAFETY: a valid map value pointer; the address of a listener's sock does not
    // change while it listens.
    unsafe { (*q).sk = sk as u64 };
    if depth > limit {
        // SAFETY: a helper without preconditions.
        let now = unsafe { bpf_ktime_get_ns() };
        // SAFETY: a valid map value pointer; counters change through atomics only.
        let last = unsafe {
            atomic_add(&raw mut (*q).full_enqueues, 1);
            (*q).last_full_event_ns
        };
        if now.wrapping_sub(last) >= FULL_EVENT_INTERVAL_NS || last == 0 {
            // SAFETY: as above.
            unsafe { (*q).last_full_event_ns = now };
            send_full_event(sock_netns(sk, o), inode, now, depth, limit);
        }
    }
    Ok(())
}

#[inline(always)]
fn send_full_event(netns: u32, listener: u64, now: u64, depth: u32, limit: u32) {
    let Some(mut entry) = EVENTS.reserve::<QueueFullEvent>(0) else {
        count_failure(STAT_EVENTS_LOST, 0);
        return;
    };
    entry.write(QueueFullEvent {
        kind: EVENT_QUEUE_FULL,
        netns,
        listener,
        timestamp_ns: now,
        depth,
        limit,
    });
    entry.submit(0);
}
