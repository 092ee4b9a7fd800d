//! The maps shared by the programs. Names are part of the contract with userspace
//! (`collector::probes`).

use core::intrinsics::{AtomicOrdering, atomic_xadd};

use aya_ebpf::{
    bindings::BPF_NOEXIST,
    macros::map,
    maps::{Array, HashMap, LruHashMap, PerCpuArray, PerCpuHashMap, RingBuf},
};
use collector_common::{
    listener::EVENTS_RING_BYTES,
    queue::{
        ACCEPTING_MAX_ENTRIES, ACCEPTORS_MAX_ENTRIES, AcceptorKey, DROP_REASONS_MAX_ENTRIES,
        DropKey, LISTEN_BACKLOG_MAX_ENTRIES, LISTENERS_MAX_ENTRIES, ListenerQueue,
        QUEUED_MAX_ENTRIES, QueuedChild, READERS_MAX_ENTRIES, ReaderTrack,
    },
    stats::{STAT_LISTENERS_FULL, STATS_LEN},
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

/// Accept-queue counters per listener (socket inode), shared by all CPUs. A plain
/// (preallocated) hash: LRU maps cost several times more per lookup on the
/// per-connection path. Entries are removed when the listener closes.
#[map]
pub static LISTENER_QUEUES: HashMap<u64, ListenerQueue> =
    HashMap::with_max_entries(LISTENERS_MAX_ENTRIES, 0);

/// One all-zero `ListenerQueue`, the initial value of new entries (too large for the
/// 512-byte eBPF stack). Never written.
#[map]
static ZERO_QUEUE: Array<ListenerQueue> = Array::with_max_entries(1, 0);

/// Connections queued for accept() and not yet accepted, by child socket address.
/// Removed at accept(), or when a queued child is reset; a full map is counted
/// (`STAT_QUEUED_FULL`).
#[map]
pub static QUEUED: HashMap<u64, QueuedChild> = HashMap::with_max_entries(QUEUED_MAX_ENTRIES, 0);

/// The listener fd of each thread inside accept()/accept4(), by tid.
#[map]
pub static ACCEPTING: HashMap<u32, u64> = HashMap::with_max_entries(ACCEPTING_MAX_ENTRIES, 0);

/// The backlog a thread passed to its last `listen()`, until its socket enters
/// LISTEN (`listen.rs`). LRU: failed calls leave entries nobody removes.
#[map]
pub static LISTEN_BACKLOG: LruHashMap<u32, u32> =
    LruHashMap::with_max_entries(LISTEN_BACKLOG_MAX_ENTRIES, 0);

/// Accepts per (listener, thread). Userspace removes the entries of closed listeners.
#[map]
pub static ACCEPTORS: HashMap<AcceptorKey, u64> =
    HashMap::with_max_entries(ACCEPTORS_MAX_ENTRIES, 0);

/// Sampled accepted connections whose readers are watched, by child socket address.
/// LRU: a connection that never reads ages out.
#[map]
pub static READERS: LruHashMap<u64, ReaderTrack> =
    LruHashMap::with_max_entries(READERS_MAX_ENTRIES, 0);

/// Packets listeners dropped, per (listener, `enum skb_drop_reason`).
#[map]
pub static DROP_REASONS: LruHashMap<DropKey, u64> =
    LruHashMap::with_max_entries(DROP_REASONS_MAX_ENTRIES, 0);

/// Adds `v` to a counter other CPUs may update at the same time.
#[inline(always)]
pub fn atomic_add(counter: *mut u64, v: u64) {
    // The BPF target has no compare-and-swap, so core's AtomicU64 lacks fetch_add;
    // the intrinsic lowers to the BPF atomic add instruction.
    // SAFETY: `counter` points into a map value, valid and 8-byte aligned while the
    // program runs; concurrent updates go through atomics only.
    unsafe { atomic_xadd::<u64, u64, { AtomicOrdering::Relaxed }>(counter, v) };
}

/// The counters of listener `inode`, created (zeroed) on first use.
#[inline(always)]
pub fn listener_queue(inode: u64, netns: u32) -> Option<*mut ListenerQueue> {
    if let Some(q) = LISTENER_QUEUES.get_ptr_mut(&inode) {
        return Some(q);
    }
    let zero = ZERO_QUEUE.get(0)?;
    // EEXIST when another CPU created it first: fine, look it up again.
    if LISTENER_QUEUES
        .insert(&inode, zero, BPF_NOEXIST as u64)
        .is_err()
        && LISTENER_QUEUES.get_ptr_mut(&inode).is_none()
    {
        bump_stat(STAT_LISTENERS_FULL);
        return None;
    }
    let q = LISTENER_QUEUES.get_ptr_mut(&inode)?;
    // SAFETY: a valid map value pointer.
    unsafe { (*q).netns = netns };
    Some(q)
}

/// Adds one accept to (listener, thread), creating the entry on first use.
#[inline(always)]
pub fn count_acceptor(key: &AcceptorKey) {
    if let Some(n) = ACCEPTORS.get_ptr_mut(key) {
        atomic_add(n, 1);
        return;
    }
    if ACCEPTORS.insert(key, &1, BPF_NOEXIST as u64).is_err()
        && let Some(n) = ACCEPTORS.get_ptr_mut(key)
    {
        atomic_add(n, 1);
    }
}
