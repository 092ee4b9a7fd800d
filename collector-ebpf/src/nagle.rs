//! Hooks of the Nagle / delayed-ACK family (switchable as a whole: userspace leaves
//! `NAGLE_OFFSETS.valid` at 0 and does not attach them):
//! - `timer:timer_start` and `timer:timer_expire_entry` (raw tracepoints, every
//!   timer of the kernel): a delayed-ACK timer is one whose callback is
//!   `tcp_delack_timer`; it is embedded in the socket, so the socket is the timer
//!   address minus `icsk_delack_timer`. Armed when a new delayed ACK starts; at
//!   expiry, if `icsk_ack.pending` still has `ICSK_ACK_TIMER`, the timer sends the ACK
//!   (what the kernel counts as DelayedACKs) and the arm-to-send time is measured;
//!   otherwise the ACK left earlier. (The kernel does not stop the timer when an ACK
//!   leaves with data: it lets it expire with nothing to do.)
//! - `tcp:tcp_sendmsg_locked` (raw, 6.2+; a kprobe on the function before; process
//!   context): notes the writing
//!   process and thread, counts sends by mode (Nagle, TCP_NODELAY, TCP_CORK), and
//!   starts a hold when Nagle's algorithm keeps this write back: nothing unsent
//!   before it, data in flight, and a small segment unacknowledged (Linux's Minshall
//!   variant of Nagle: `snd_sml` after `snd_una`).
//! - `tcp:tcp_probe` (raw, every segment an established socket receives): ends a
//!   hold when the segment acknowledges that small segment (the held data then
//!   leaves during this segment's processing). A hold that outlasted the minimum
//!   RTT by `STALL_EXCESS_NS` and was released by a pure ACK is a stall: the peer
//!   held its ACK back while this side held its write.
//!
//! `inet_sock_set_state` forgets a connection when it closes (`forget_conn`).

use aya_ebpf::{
    helpers::{bpf_get_current_comm, bpf_get_current_pid_tgid, bpf_ktime_get_ns},
    macros::{kprobe, map, raw_tracepoint},
    maps::{Array, LruHashMap, PerCpuArray},
    programs::{ProbeContext, RawTracePointContext},
};
use collector_common::{
    layout::KernelOffsets,
    listener::{AF_INET, AF_INET6},
    nagle::{
        CONN_STATS_MAX_ENTRIES, CONNS_MAX_ENTRIES, ConnKey, ConnStats, ConnTrack, EVENT_STALL,
        NagleOffsets, SENDS_CORK, SENDS_LEN, SENDS_NAGLE, SENDS_NODELAY, STALL_EVENT_INTERVAL_NS,
        STALL_EXCESS_NS, StallEvent, TCP_NAGLE_CORK, TCP_NAGLE_OFF,
    },
    queue::wait_bucket,
    stats::{STAT_CONN_STATS_FULL, STAT_CONNS_FULL, STAT_EVENTS_LOST},
    tcp_state::{TCP_CLOSE, TCP_LISTEN},
};

use crate::{
    kernel::{offsets, read, sock_netns},
    maps::{EVENTS, atomic_add, get_or_insert},
    stats::count_failure,
};

/// Filled by userspace before loading when the family is on.
#[unsafe(no_mangle)]
static NAGLE_OFFSETS: NagleOffsets = NagleOffsets {
    valid: 0,
    timer_function: 0,
    timer_expires: 0,
    icsk_delack_timer: 0,
    icsk_ack_pending: 0,
    ack_timer_bit: 0,
    tp_write_seq: 0,
    tp_snd_nxt: 0,
    tp_snd_una: 0,
    tp_snd_sml: 0,
    tp_packets_out: 0,
    tp_min_rtt_us: 0,
    tp_nonagle_byte: 0,
    tp_nonagle_shift: 0,
    sk_daddr: 0,
    sk_dport: 0,
    sk_v6_daddr: 0,
    skb_cb: 0,
    tcb_seq: 0,
    tcb_end_seq: 0,
    tcb_ack_seq: 0,
    ephemeral_lo: 0,
    ephemeral_hi: 0,
    delack_timer_fn: 0,
};

/// Per-connection state by socket address (LRU; its size is set by userspace).
#[map]
static CONNS: LruHashMap<u64, ConnTrack> = LruHashMap::with_max_entries(CONNS_MAX_ENTRIES, 0);

/// Measurements per (netns, local port, process). LRU: userspace keeps the totals
/// of entries that age out.
#[map]
static CONN_STATS: LruHashMap<ConnKey, ConnStats> =
    LruHashMap::with_max_entries(CONN_STATS_MAX_ENTRIES, 0);

/// `sendmsg` calls by socket mode (`SENDS_*`), host-wide.
#[map]
static SENDS: PerCpuArray<u64> = PerCpuArray::with_max_entries(SENDS_LEN, 0);

/// One all-zero `ConnStats`, the initial value of new entries. Never written.
#[map]
static ZERO_CONN_STATS: Array<ConnStats> = Array::with_max_entries(1, 0);

#[inline(always)]
fn nagle_offsets() -> NagleOffsets {
    // SAFETY: a plain read of a read-only global, volatile so the zero initialiser
    // userspace replaces is not folded.
    unsafe { core::ptr::read_volatile(&NAGLE_OFFSETS) }
}

#[inline(always)]
fn now_ns() -> u64 {
    // SAFETY: a helper without preconditions.
    unsafe { bpf_ktime_get_ns() }
}

/// `a` after `b` in sequence-number space.
#[inline(always)]
fn seq_after(a: u32, b: u32) -> bool {
    (a.wrapping_sub(b) as i32) > 0
}

/// The socket of a delayed-ACK timer, or `None` for any other timer.
#[inline(always)]
fn delack_sock(timer: *const u8, n: &NagleOffsets) -> Option<*const u8> {
    if n.valid == 0 {
        return None;
    }
    let function: u64 = read(timer, n.timer_function).ok()?;
    (function == n.delack_timer_fn).then(|| timer.wrapping_sub(n.icsk_delack_timer as usize))
}

/// The state of connection `sk`, created on first use with its namespace and
/// aggregation port (0 for a local port in the ephemeral range: the client side).
#[inline(always)]
fn conn_track(sk: *const u8, n: &NagleOffsets) -> Option<*mut ConnTrack> {
    // An LRU map evicts instead of failing when full; an error here is rare.
    get_or_insert(&CONNS, &(sk as u64), STAT_CONNS_FULL, || {
        let o = offsets();
        let port: u16 = read(sk, o.sk_num).unwrap_or(0);
        Some(ConnTrack {
            netns: sock_netns(sk, &o),
            port: if (n.ephemeral_lo..=n.ephemeral_hi).contains(&port) {
                0
            } else {
                port
            },
            ..ConnTrack::default()
        })
    })
}

/// The counters of `t`'s (netns, port, process), created on first use.
#[inline(always)]
fn conn_stats(t: &ConnTrack) -> Option<*mut ConnStats> {
    let key = ConnKey {
        netns: t.netns,
        tgid: t.tgid,
        port: t.port,
        _pad: [0; 6],
    };
    get_or_insert(&CONN_STATS, &key, STAT_CONN_STATS_FULL, || {
        ZERO_CONN_STATS.get(0)
    })
}

#[raw_tracepoint(tracepoint = "timer_start")]
pub fn timer_start(ctx: RawTracePointContext) -> i32 {
    let timer: *const u8 = ctx.arg(0);
    let n = nagle_offsets();
    let Some(sk) = delack_sock(timer, &n) else {
        return 0;
    };
    let Ok(expires) = read::<u64>(timer, n.timer_expires) else {
        return 0;
    };
    let Some(t) = conn_track(sk, &n) else {
        return 0;
    };
    // SAFETY: a valid map value pointer; a socket's timer is armed under its lock.
    let t = unsafe { &mut *t };
    let mut early = false;
    if t.delack_armed_ns != 0 {
        // A pending delayed ACK re-armed with the same or an earlier expiry is the
        // same ACK; a later expiry means the pending one left before its timer.
        if (expires.wrapping_sub(t.delack_expires) as i64) <= 0 {
            t.delack_expires = expires;
            return 0;
        }
        early = true;
    }
    t.delack_armed_ns = now_ns();
    t.delack_expires = expires;
    if let Some(s) = conn_stats(t) {
        // SAFETY: a valid map value pointer; counters change through atomics only.
        unsafe {
            atomic_add(&raw mut (*s).delack_armed, 1);
            if early {
                atomic_add(&raw mut (*s).delack_cancelled, 1);
            }
        }
    }
    0
}

#[raw_tracepoint(tracepoint = "timer_expire_entry")]
pub fn timer_expire_entry(ctx: RawTracePointContext) -> i32 {
    let timer: *const u8 = ctx.arg(0);
    let n = nagle_offsets();
    let Some(sk) = delack_sock(timer, &n) else {
        return 0;
    };
    let Some(t) = CONNS.get_ptr_mut(&(sk as u64)) else {
        return 0; // armed before sockq attached
    };
    // SAFETY: a valid map value pointer.
    let t = unsafe { &mut *t };
    if t.delack_armed_ns == 0 {
        return 0;
    }
    let now = now_ns();
    let delay = now.saturating_sub(t.delack_armed_ns);
    t.delack_armed_ns = 0;
    let pending: u8 = read(sk, n.icsk_ack_pending).unwrap_or(0);
    let state: u8 = read(sk, offsets().sk_state).unwrap_or(TCP_CLOSE);
    // tcp_delack_timer_handler() sends the ACK only while ICSK_ACK_TIMER is set and
    // the socket is neither closed nor listening.
    let fired =
        u32::from(pending) & n.ack_timer_bit != 0 && state != TCP_CLOSE && state != TCP_LISTEN;
    let Some(s) = conn_stats(t) else {
        return 0;
    };
    // SAFETY: a valid map value pointer; counters change through atomics only.
    unsafe {
        if fired {
            atomic_add(&raw mut (*s).delack_fired, 1);
            atomic_add(&raw mut (*s).delay_sum_ns, delay);
            let b = wait_bucket(delay / 1000);
            if let Some(slot) = (*s).delay_hist.get_mut(b) {
                atomic_add(slot, 1);
            }
        } else {
            atomic_add(&raw mut (*s).delack_cancelled, 1);
        }
    }
    0
}

#[raw_tracepoint(tracepoint = "tcp_sendmsg_locked")]
pub fn tcp_sendmsg_locked(ctx: RawTracePointContext) -> i32 {
    let sk: *const u8 = ctx.arg(0);
    let n = nagle_offsets();
    if n.valid == 0 {
        return 0;
    }
    let _ = on_send(sk, &n);
    0
}

/// Kernels without the tracepoint (before 6.2): a kprobe on `tcp_sendmsg_locked`
/// itself (the tracepoint sits inside it, per chunk; once per call is enough here).
#[kprobe]
pub fn tcp_sendmsg_locked_kprobe(ctx: ProbeContext) -> u32 {
    let n = nagle_offsets();
    if n.valid == 0 {
        return 0;
    }
    if let Some(sk) = ctx.arg::<*const u8>(0) {
        let _ = on_send(sk, &n);
    }
    0
}

#[inline(always)]
fn on_send(sk: *const u8, n: &NagleOffsets) -> Result<(), i64> {
    let nonagle = (read::<u8>(sk, n.tp_nonagle_byte)? >> n.tp_nonagle_shift) & 0x0f;
    let mode = if nonagle & TCP_NAGLE_CORK != 0 {
        SENDS_CORK
    } else if nonagle & TCP_NAGLE_OFF != 0 {
        SENDS_NODELAY
    } else {
        SENDS_NAGLE
    };
    if let Some(count) = SENDS.get_ptr_mut(mode) {
        // SAFETY: per-CPU slot, written only by this CPU while the program runs.
        unsafe { *count += 1 };
    }
    if mode != SENDS_NAGLE {
        // Nothing is held back by Nagle on this socket: the cheapest way out.
        return Ok(());
    }
    let t = conn_track(sk, n).ok_or(0i64)?;
    // SAFETY: a valid map value pointer; sendmsg runs under the socket lock.
    let t = unsafe { &mut *t };
    let pid_tgid = bpf_get_current_pid_tgid();
    let (tgid, tid) = ((pid_tgid >> 32) as u32, pid_tgid as u32);
    if t.tid != tid || t.tgid != tgid {
        t.tgid = tgid;
        t.tid = tid;
        t.comm = bpf_get_current_comm().unwrap_or([0; 16]);
    }
    t.nonagle = nonagle;
    let snd_nxt: u32 = read(sk, n.tp_snd_nxt)?;
    if t.hold_start_ns != 0 {
        if !seq_after(snd_nxt, t.hold_seq) {
            return Ok(()); // more data behind a write still held
        }
        t.hold_start_ns = 0; // it left without our seeing the release
    }
    let write_seq: u32 = read(sk, n.tp_write_seq)?;
    if write_seq != snd_nxt {
        return Ok(()); // unsent data already queued (window, cork): not Nagle
    }
    let packets_out: u32 = read(sk, n.tp_packets_out)?;
    let snd_sml: u32 = read(sk, n.tp_snd_sml)?;
    let snd_una: u32 = read(sk, n.tp_snd_una)?;
    if packets_out == 0 || !seq_after(snd_sml, snd_una) {
        return Ok(()); // nothing small in flight: this write leaves at once
    }
    t.hold_start_ns = now_ns();
    t.hold_seq = write_seq;
    t.hold_sml = snd_sml;
    Ok(())
}

#[raw_tracepoint(tracepoint = "tcp_probe")]
pub fn tcp_probe(ctx: RawTracePointContext) -> i32 {
    let sk: *const u8 = ctx.arg(0);
    let skb: *const u8 = ctx.arg(1);
    let n = nagle_offsets();
    if n.valid == 0 {
        return 0;
    }
    // Most busy sockets (servers, RPC) set TCP_NODELAY and never hold a write: one
    // read, cheaper than the map lookup, lets them leave at once.
    match read::<u8>(sk, n.tp_nonagle_byte) {
        Ok(byte) if (byte >> n.tp_nonagle_shift) & (TCP_NAGLE_OFF | TCP_NAGLE_CORK) == 0 => {}
        _ => return 0,
    }
    let Some(t) = CONNS.get_ptr_mut(&(sk as u64)) else {
        return 0;
    };
    // SAFETY: a valid map value pointer; segments are processed under the socket
    // lock.
    let t = unsafe { &mut *t };
    if t.hold_start_ns == 0 {
        return 0;
    }
    let _ = on_ack(sk, skb, t, &n);
    0
}

#[inline(always)]
fn on_ack(sk: *const u8, skb: *const u8, t: &mut ConnTrack, n: &NagleOffsets) -> Result<(), i64> {
    let cb = skb.wrapping_add(n.skb_cb as usize);
    let ack_seq: u32 = read(cb, n.tcb_ack_seq)?;
    if seq_after(t.hold_sml, ack_seq) {
        return Ok(()); // the small segment is still unacknowledged
    }
    let now = now_ns();
    let hold = now.saturating_sub(t.hold_start_ns);
    t.hold_start_ns = 0;
    let snd_nxt: u32 = read(sk, n.tp_snd_nxt)?;
    if seq_after(snd_nxt, t.hold_seq) {
        return Ok(()); // the write had left already (a full segment formed)
    }
    let seq: u32 = read(cb, n.tcb_seq)?;
    let end_seq: u32 = read(cb, n.tcb_end_seq)?;
    let min_rtt_us: u32 = read(sk, n.tp_min_rtt_us)?;
    let stall = seq == end_seq && hold >= u64::from(min_rtt_us) * 1000 + STALL_EXCESS_NS;
    if let Some(s) = conn_stats(t) {
        // SAFETY: a valid map value pointer; counters change through atomics only.
        unsafe {
            atomic_add(&raw mut (*s).holds, 1);
            atomic_add(&raw mut (*s).hold_sum_ns, hold);
            if let Some(slot) = (*s).hold_hist.get_mut(wait_bucket(hold / 1000)) {
                atomic_add(slot, 1);
            }
            if stall {
                atomic_add(&raw mut (*s).stalls, 1);
                atomic_add(&raw mut (*s).stall_sum_ns, hold);
            }
        }
    }
    if !stall {
        return Ok(());
    }
    t.stalls = t.stalls.wrapping_add(1);
    if t.last_event_ns != 0 && now.saturating_sub(t.last_event_ns) < STALL_EVENT_INTERVAL_NS {
        return Ok(());
    }
    t.last_event_ns = now;
    send_stall(sk, t, hold, min_rtt_us, now, n, &offsets())
}

#[inline(always)]
fn send_stall(
    sk: *const u8,
    t: &ConnTrack,
    hold: u64,
    min_rtt_us: u32,
    now: u64,
    n: &NagleOffsets,
    o: &KernelOffsets,
) -> Result<(), i64> {
    let family: u16 = read(sk, o.sk_family)?;
    let mut saddr = [0u8; 16];
    let mut daddr = [0u8; 16];
    if family == AF_INET {
        let s: [u8; 4] = read(sk, o.sk_rcv_saddr)?;
        let d: [u8; 4] = read(sk, n.sk_daddr)?;
        saddr[..4].copy_from_slice(&s);
        daddr[..4].copy_from_slice(&d);
    } else if family == AF_INET6 {
        saddr = read(sk, o.sk_v6_rcv_saddr)?;
        daddr = read(sk, n.sk_v6_daddr)?;
    }
    let sport: u16 = read(sk, o.sk_num)?;
    let dport = u16::from_be(read::<u16>(sk, n.sk_dport)?);
    let Some(mut entry) = EVENTS.reserve::<StallEvent>(0) else {
        count_failure(STAT_EVENTS_LOST, 0);
        return Ok(());
    };
    entry.write(StallEvent {
        kind: EVENT_STALL,
        netns: t.netns,
        sk: sk as u64,
        timestamp_ns: now,
        hold_ns: hold,
        tgid: t.tgid,
        tid: t.tid,
        min_rtt_us,
        stalls: t.stalls,
        family,
        sport,
        dport,
        nonagle: t.nonagle,
        _pad: 0,
        saddr,
        daddr,
        comm: t.comm,
    });
    entry.submit(0);
    Ok(())
}

/// Called by `inet_sock_set_state` when a socket closes: a delayed ACK still
/// pending is cancelled with it, and its state goes.
#[inline(always)]
pub fn forget_conn(sk: *const u8) {
    if nagle_offsets().valid == 0 {
        return;
    }
    let key = sk as u64;
    let Some(t) = CONNS.get_ptr_mut(&key) else {
        return;
    };
    // SAFETY: a valid map value pointer.
    let t = unsafe { &*t };
    if t.delack_armed_ns != 0
        && let Some(s) = conn_stats(t)
    {
        // SAFETY: a valid map value pointer; counters change through atomics only.
        unsafe { atomic_add(&raw mut (*s).delack_cancelled, 1) };
    }
    let _ = CONNS.remove(&key);
}
