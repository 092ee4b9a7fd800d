//! The maps shared by the programs. Names are part of the contract with userspace
//! (`collector::probes`).

use aya_ebpf::{
    macros::map,
    maps::{PerCpuArray, PerCpuHashMap, RingBuf},
};
use collector_common::{
    listener::EVENTS_RING_BYTES,
    stats::STATS_LEN,
    tcp_state::{TRANSITIONS_MAX_ENTRIES, TransitionKey},
};

/// TCP state transitions per (netns, from, to); per-CPU, summed by userspace.
#[map]
pub static TRANSITIONS: PerCpuHashMap<TransitionKey, u64> =
    PerCpuHashMap::with_max_entries(TRANSITIONS_MAX_ENTRIES, 0);

/// Rare events for userspace (listener lifecycle).
#[map]
pub static EVENTS: RingBuf = RingBuf::with_byte_size(EVENTS_RING_BYTES, 0);

/// The programs' own counters (`collector_common::stats`).
#[map]
pub static STATS: PerCpuArray<u64> = PerCpuArray::with_max_entries(STATS_LEN, 0);

#[inline(always)]
pub fn bump_stat(index: u32) {
    if let Some(slot) = STATS.get_ptr_mut(index) {
        // SAFETY: per-CPU slot, only this CPU writes it while the program runs.
        unsafe { *slot += 1 };
    }
}
