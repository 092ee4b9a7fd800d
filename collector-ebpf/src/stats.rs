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
    STAT_ACCEPTING_FULL, STAT_ACCEPTORS_FULL, STAT_ACCEPTS_UNATTRIBUTED, STAT_CONN_STATS_FULL,
    STAT_CONNS_FULL, STAT_DROP_REASONS_FULL, STAT_EVENTS_LOST, STAT_LISTENERS_FULL,
    STAT_QUEUED_FULL, STAT_READ_ERRORS, STAT_READERS_FULL, STAT_TRANSITIONS_FULL,
    STAT_UNIX_CONNECTING_FULL, STAT_UNIX_LOOKBACK_SHORT, STAT_UNIX_REFUSED_FULL,
    STAT_UNIX_UNSTAMPED, STAT_URING_DIRECT, STATS_LEN,
};

use crate::maps::atomic_add;

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
#[inline(always)]
pub fn count_failure(stat: u32, err: i64) {
    let _ = sockq_count_failure(stat, err);
}

/// [`count_failure`] as a global BPF function (BTF linkage global, Linux 5.6+; aya
/// makes it static where the kernel lacks them): the verifier checks it once per
/// program, with any arguments (about 3,500 instructions), not again at each call
/// site (every kernel read has one: about 80,000 instructions per program as a
/// static function). Not inlined: it runs only when something failed. A global
/// function must return a scalar; this one means nothing.
#[inline(never)]
#[unsafe(no_mangle)]
pub extern "C" fn sockq_count_failure(stat: u32, err: i64) -> i32 {
    let Some(slot) = STATS.get_ptr_mut(stat) else {
        return 0;
    };
    // An atomic add although the slot is this CPU's: a program in process context
    // (a syscall's exit) can be interrupted on its CPU by one in softirq context (a
    // ring buffer full for both), and a plain load-add-store would then lose one of
    // the two counts.
    atomic_add(slot, 1);
    // SAFETY: a valid map value pointer.
    let count = unsafe { core::ptr::read_volatile(slot) };
    if stat >= STATS_LEN {
        return 0;
    }
    // SAFETY: `stat` is in bounds (checked above); plain loads and stores of a u64 of
    // our own global, volatile because other CPUs update it.
    unsafe {
        let at = (&raw mut LOG_AT).cast::<u64>().add(stat as usize);
        if count < core::ptr::read_volatile(at) {
            return 0;
        }
        core::ptr::write_volatile(at, count.saturating_mul(LOG_GROWTH));
    }
    report(stat, count, err);
    0
}

/// One line for the daemon's log: what failed, how often so far.
#[inline(always)]
fn report(stat: u32, count: u64, err: i64) {
    let Some(what) = WHAT_FAILED.get(stat as usize) else {
        return;
    };
    // SAFETY: every entry is ASCII (`padded` accepts nothing else).
    let what = unsafe { core::str::from_utf8_unchecked(what) };
    // aya-log's macros take a context they do not use (their ring buffer needs none).
    warn!(
        &(),
        "{} ({} so far on this CPU; error {})", what, count, err
    );
}

/// Width of the [`WHAT_FAILED`] entries.
const WHAT_WIDTH: usize = 40;

/// What a failure counted under each `STATS` index means, padded with spaces to one
/// width: the log statement then copies a constant length from a table instead of a
/// length chosen per counter, which cost the verifier thousands of instructions per
/// counter. The daemon's forwarder drops the padding.
static WHAT_FAILED: [[u8; WHAT_WIDTH]; STATS_LEN as usize] = {
    let mut what = [padded("a STATS counter without a name"); STATS_LEN as usize];
    what[STAT_EVENTS_LOST as usize] = padded("ring buffer EVENTS full, event dropped");
    what[STAT_TRANSITIONS_FULL as usize] = padded("map TRANSITIONS full");
    what[STAT_READ_ERRORS as usize] = padded("a kernel read failed");
    what[STAT_LISTENERS_FULL as usize] = padded("map LISTENER_QUEUES full");
    what[STAT_QUEUED_FULL as usize] = padded("map QUEUED full");
    what[STAT_CONNS_FULL as usize] = padded("map CONNS (LRU) refused an entry");
    what[STAT_ACCEPTORS_FULL as usize] = padded("map ACCEPTORS full");
    what[STAT_ACCEPTING_FULL as usize] = padded("map ACCEPTING full");
    what[STAT_DROP_REASONS_FULL as usize] = padded("map DROP_REASONS (LRU) refused an entry");
    what[STAT_READERS_FULL as usize] = padded("map READERS (LRU) refused an entry");
    what[STAT_CONN_STATS_FULL as usize] = padded("map CONN_STATS (LRU) refused an entry");
    what[STAT_ACCEPTS_UNATTRIBUTED as usize] = padded("an accept whose listener is unknown");
    what[STAT_URING_DIRECT as usize] = padded("io_uring accept into a direct descriptor");
    what[STAT_UNIX_CONNECTING_FULL as usize] = padded("map UNIX_CONNECTING (LRU) refused entry");
    what[STAT_UNIX_REFUSED_FULL as usize] = padded("map UNIX_REFUSED full");
    what[STAT_UNIX_LOOKBACK_SHORT as usize] = padded("Unix queue longer than the look-back");
    what[STAT_UNIX_UNSTAMPED as usize] = padded("a Unix accept before its stamp");
    what
};

/// `text` followed by spaces up to [`WHAT_WIDTH`]; a compile error if it is longer or
/// not ASCII.
const fn padded(text: &str) -> [u8; WHAT_WIDTH] {
    let bytes = text.as_bytes();
    assert!(bytes.len() <= WHAT_WIDTH, "WHAT_FAILED entry too long");
    let mut out = [b' '; WHAT_WIDTH];
    let mut i = 0;
    while i < bytes.len() {
        assert!(bytes[i].is_ascii(), "WHAT_FAILED entry not ASCII");
        out[i] = bytes[i];
        i += 1;
    }
    out
}
