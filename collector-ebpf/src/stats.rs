//! The programs' own failure counters (`STATS`, indices in `collector_common::stats`)
//! and their log (aya-log's `AYA_LOGS` ring buffer, forwarded to the daemon's log by
//! `collector::probes::kernel_log`).
//!
//! A failure (a map with no room, a failed kernel read, a full ring buffer) can happen
//! on every event once it starts, so it is never logged per event: a counter logs its
//! first failure, then each time its count on one CPU grows sixteenfold (1, 16, 256,
//! ...). The threshold is shared by the CPUs, so the first failure is one line however
//! many CPUs hit it.

use aya_ebpf::{macros::map, maps::PerCpuArray};
use aya_log_ebpf::warn;
use collector_common::stats::{
    STAT_ACCEPTING_FULL, STAT_ACCEPTORS_FULL, STAT_CONN_STATS_FULL, STAT_CONNS_FULL,
    STAT_DROP_REASONS_FULL, STAT_EVENTS_LOST, STAT_LISTENERS_FULL, STAT_QUEUED_FULL,
    STAT_READ_ERRORS, STAT_READERS_FULL, STAT_TRANSITIONS_FULL, STATS_LEN,
};

/// The programs' own counters (`collector_common::stats`), summed by userspace.
#[map]
pub static STATS: PerCpuArray<u64> = PerCpuArray::with_max_entries(STATS_LEN, 0);

/// Per counter, the per-CPU count at which its next log line is due (0: its first
/// failure). Shared by all CPUs and updated without atomics: a race costs a line more
/// or less, nothing else.
static mut LOG_AT: [u64; STATS_LEN as usize] = [0; STATS_LEN as usize];

/// How much a counter grows between two of its log lines.
const LOG_GROWTH: u64 = 16;

/// Counts a failure under `stat` (`err`: the helper's error code, 0 if none) and logs
/// it when it is the counter's first or its count reached the next threshold.
///
/// Not inlined: it runs only when something failed, and one copy per program keeps
/// the many call sites (every kernel read) small.
#[inline(never)]
pub fn count_failure(stat: u32, err: i64) {
    let Some(slot) = STATS.get_ptr_mut(stat) else {
        return;
    };
    // SAFETY: a per-CPU slot, written only by this CPU while the program runs.
    let count = unsafe {
        *slot += 1;
        *slot
    };
    if stat >= STATS_LEN {
        return;
    }
    // SAFETY: `stat` is in bounds (checked above); plain loads and stores of a u64 of
    // our own global, volatile because other CPUs update it.
    unsafe {
        let at = (&raw mut LOG_AT).cast::<u64>().add(stat as usize);
        if count < core::ptr::read_volatile(at) {
            return;
        }
        core::ptr::write_volatile(at, count.saturating_mul(LOG_GROWTH));
    }
    report(stat, count, err);
}

/// One line for the daemon's log: what failed, how often so far.
#[inline(always)]
fn report(stat: u32, count: u64, err: i64) {
    // aya-log's macros take a context they do not use (their ring buffer needs none).
    // One statement for every counter keeps the object small: each is several
    // hundred instructions.
    warn!(
        &(),
        "{} ({} so far on this CPU; error {})",
        what_failed(stat),
        count,
        err
    );
}

/// What a failure counted under `stat` means.
#[inline(always)]
fn what_failed(stat: u32) -> &'static str {
    match stat {
        STAT_EVENTS_LOST => "ring buffer EVENTS full: an event was dropped",
        STAT_READ_ERRORS => "a kernel read failed",
        STAT_TRANSITIONS_FULL => "map TRANSITIONS full: a TCP state change was not counted",
        STAT_LISTENERS_FULL => {
            "map LISTENER_QUEUES full: a listener's accept-queue counters were not created"
        }
        STAT_QUEUED_FULL => "map QUEUED full: a queued connection's accept wait is lost",
        STAT_ACCEPTING_FULL => "map ACCEPTING full: an accept() was not counted",
        STAT_ACCEPTORS_FULL => "map ACCEPTORS full: an accept was not counted for its thread",
        STAT_DROP_REASONS_FULL => "map DROP_REASONS (LRU) refused an entry: a drop was not counted",
        STAT_READERS_FULL => {
            "map READERS (LRU) refused an entry: a sampled connection is not watched"
        }
        STAT_CONNS_FULL => "map CONNS (LRU) refused an entry: a connection's Nagle state is lost",
        STAT_CONN_STATS_FULL => {
            "map CONN_STATS (LRU) refused an entry: Nagle/delayed-ACK counters were not created"
        }
        _ => "a STATS counter without a name",
    }
}
