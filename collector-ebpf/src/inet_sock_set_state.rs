//! Hook: `sock:inet_sock_set_state` (every TCP state change; since Linux 4.16).
//!
//! Attached as a raw tracepoint (`TP_PROTO(const struct sock *sk, int oldstate,
//! int newstate)`, cheapest) where that loads, else as a classic tracepoint whose record
//! offsets userspace reads from tracefs. Both entry points share [`on_state_change`]:
//! - counts the transition per (namespace cookie, from, to), in the kernel: in the
//!   namespace's slot of `NETNS_SLOT_COUNTS` where userspace gave it one, else in
//!   `TRANSITIONS` (the cookie is never reused, unlike the inode: a new namespace does not
//!   inherit a dead one's counts; userspace removes the entries of dead namespaces);
//! - for a socket entering LISTEN, creates its accept-queue counters (only TCP sockets
//!   whose `listen()` succeeded get one) and removes them when it leaves LISTEN;
//! - for a socket entering LISTEN or going from LISTEN to CLOSE, sends a
//!   `ListenerEvent` with the current thread (the one that called `listen()` or
//!   `close()`) through `EVENTS`. Rare: nothing per connection reaches the ring buffer.
//!
//! Reads from `struct sock`: `skc_prot` and `skc_net` (one read; `sk_protocol` only
//! for a `skc_prot` not yet seen on a TCP socket, `kernel::tcp_sock_net`), and for
//! listeners family and local port/address.
//! The kernel: <https://elixir.bootlin.com/linux/v6.18/source/include/trace/events/sock.h>

use aya_ebpf::{
    EbpfContext as _,
    helpers::{bpf_get_current_comm, bpf_get_current_pid_tgid, bpf_ktime_get_ns},
    macros::{raw_tracepoint, tracepoint},
    programs::{RawTracePointContext, TracePointContext},
};
use collector_common::{
    layout::KernelOffsets,
    listener::{AF_INET, AF_INET6, EVENT_LISTENER, ListenerEvent},
    stats::{STAT_EVENTS_LOST, STAT_TRANSITIONS_FULL},
    tcp_state::{NETNS_SLOTS, SLOT_STATES, TCP_CLOSE, TCP_LISTEN, TransitionKey},
};

use crate::{
    kernel::{net_key, offsets, read, sock_inode, sock_netns, tcp_sock_net},
    maps::{
        EVENTS, LISTEN_BACKLOG, LISTENER_QUEUES, NETNS_SLOT_COUNTS, NETNS_SLOT_KEYS, TRANSITIONS,
        get_or_insert, listener_queue,
    },
    stats::count_failure,
};

#[raw_tracepoint(tracepoint = "inet_sock_set_state")]
pub fn inet_sock_set_state_raw(ctx: RawTracePointContext) -> i32 {
    let sk: *const u8 = ctx.arg(0);
    let old: i32 = ctx.arg(1);
    let new: i32 = ctx.arg(2);
    let _ = on_state_change(sk, old, new);
    0
}

#[tracepoint(category = "sock", name = "inet_sock_set_state")]
pub fn inet_sock_set_state_tp(ctx: TracePointContext) -> u32 {
    let _ = try_tracepoint(&ctx);
    0
}

fn try_tracepoint(ctx: &TracePointContext) -> Result<(), i64> {
    let o = offsets();
    let base = ctx.as_ptr() as *const u8;
    let sk: *const u8 = read(base, o.tp_state_skaddr)?;
    let old: i32 = read(base, o.tp_state_oldstate)?;
    let new: i32 = read(base, o.tp_state_newstate)?;
    on_state_change(sk, old, new)
}

#[inline(always)]
fn on_state_change(sk: *const u8, old: i32, new: i32) -> Result<(), i64> {
    let o = offsets();
    if o.valid == 0 {
        return Ok(());
    }
    // SCTP and MPTCP also report through this tracepoint; keep TCP only.
    let Some(net) = tcp_sock_net(sk, &o) else {
        return Ok(());
    };
    let (from, to) = (old as u8, new as u8);
    count_transition(TransitionKey {
        netns: net_key(net, &o),
        from,
        to,
        _pad: [0; 6],
    });
    if to == TCP_CLOSE {
        crate::nagle::forget_conn(sk);
    }
    // A listener opening (-> LISTEN) or closing (LISTEN -> CLOSE). Children cloned from
    // a listener start as LISTEN -> SYN_RECV: per connection, not an event (their
    // accept wait needs no stamp: `accept.rs`).
    if to == TCP_LISTEN || (from == TCP_LISTEN && to == TCP_CLOSE) {
        let netns = sock_netns(sk, &o);
        if o.queue_valid != 0 {
            let inode = sock_inode(sk, &o);
            if to == TCP_LISTEN {
                // A TCP socket became a listener (listen() succeeded): its counters
                // start here, with the backlog its thread asked for.
                listener_opened(inode, netns);
            } else {
                // The listener closes: its accept-queue counters go with it.
                let _ = LISTENER_QUEUES.remove(&inode);
            }
        }
        send_listener_event(sk, &o, netns, from, to)?;
    }
    Ok(())
}

/// Creates the counters of a new listener, with the `listen()` backlog its thread
/// stashed (`listen.rs`).
#[inline(always)]
fn listener_opened(inode: u64, netns: u32) {
    if inode == 0 {
        return;
    }
    let tid = bpf_get_current_pid_tgid() as u32;
    // SAFETY: the value is copied out at once.
    let backlog = unsafe { LISTEN_BACKLOG.get(&tid) }.copied();
    let _ = LISTEN_BACKLOG.remove(&tid);
    if let Some(q) = listener_queue(inode, netns)
        && let Some(backlog) = backlog
    {
        // SAFETY: a valid map value pointer.
        unsafe { (*q).backlog_arg = backlog };
    }
}

#[inline(always)]
fn count_transition(key: TransitionKey) {
    // A namespace with a slot: an array increment.
    let (from, to) = (key.from as usize, key.to as usize);
    if from < SLOT_STATES
        && to < SLOT_STATES
        && let Some(slot) = netns_slot(key.netns)
        && let Some(counts) = NETNS_SLOT_COUNTS.get_ptr_mut(slot)
    {
        // SAFETY: this CPU's value, written only by this program while it runs here,
        // as the per-CPU hash's counts below are.
        if let Some(count) = unsafe { (*counts).0.get_mut(from * SLOT_STATES + to) } {
            *count += 1;
            return;
        }
    }
    if let Some(count) = get_or_insert(&TRANSITIONS, &key, STAT_TRANSITIONS_FULL, || Some(0u64)) {
        // SAFETY: per-CPU value, written only by this CPU while the program runs.
        unsafe { *count += 1 };
    }
}

/// The slot of `NETNS_SLOT_KEYS` userspace gave namespace `netns`, if any.
#[inline(always)]
fn netns_slot(netns: u64) -> Option<u32> {
    if netns == 0 {
        return None;
    }
    let keys = NETNS_SLOT_KEYS.get_ptr(0)?.cast::<u64>();
    for i in 0..NETNS_SLOTS {
        // SAFETY: within the map value, NETNS_SLOTS u64s; userspace rewrites them
        // whole, and a torn value matches no namespace (the hash then counts).
        if unsafe { core::ptr::read_volatile(keys.add(i)) } == netns {
            return Some(i as u32);
        }
    }
    None
}

#[inline(always)]
fn send_listener_event(
    sk: *const u8,
    o: &KernelOffsets,
    netns: u32,
    from: u8,
    to: u8,
) -> Result<(), i64> {
    let family: u16 = read(sk, o.sk_family)?;
    let port: u16 = read(sk, o.sk_num)?;
    let mut addr = [0u8; 16];
    if family == AF_INET {
        let v4: [u8; 4] = read(sk, o.sk_rcv_saddr)?;
        addr[..4].copy_from_slice(&v4);
    } else if family == AF_INET6 {
        addr = read(sk, o.sk_v6_rcv_saddr)?;
    }
    let pid_tgid = bpf_get_current_pid_tgid();
    let comm = bpf_get_current_comm().unwrap_or([0; 16]);
    let Some(mut entry) = EVENTS.reserve::<ListenerEvent>(0) else {
        count_failure(STAT_EVENTS_LOST, 0);
        return Ok(());
    };
    entry.write(ListenerEvent {
        kind: EVENT_LISTENER,
        _pad0: 0,
        sk: sk as u64,
        // SAFETY: a helper without preconditions.
        timestamp_ns: unsafe { bpf_ktime_get_ns() },
        netns,
        pid: (pid_tgid >> 32) as u32,
        tid: pid_tgid as u32,
        family,
        port,
        addr,
        old_state: from,
        new_state: to,
        _pad: [0; 2],
        comm,
    });
    entry.submit(0);
    Ok(())
}
