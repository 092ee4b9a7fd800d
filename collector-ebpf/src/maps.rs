//! The maps shared by the programs, and the one way entries are created in them
//! ([`get_or_insert`], [`insert_or_count`]): a map with no room counts the failure
//! under its own `STATS` counter. Names are part of the contract with userspace
//! (`collector::probes`).

use core::{
    borrow::Borrow,
    intrinsics::{AtomicOrdering, atomic_xadd},
};

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
        QUEUED_MAX_ENTRIES, QueuedChild, READERS_MAX_ENTRIES, ReaderTrack, UNIX_STAMP_SLOTS,
        UnixStamp, depth_bucket,
    },
    stats::{STAT_ACCEPTORS_FULL, STAT_LISTENERS_FULL, STAT_QUEUED_FULL},
    tcp_state::{NETNS_SLOTS, SlotCounts, SlotKeys, TRANSITIONS_MAX_ENTRIES, TransitionKey},
};

use crate::{
    kernel::{offsets, pointer_low_bits, sock_netns},
    stats::count_failure,
};

/// TCP state transitions per (netns, from, to); per-CPU, summed by userspace.
#[map]
pub static TRANSITIONS: PerCpuHashMap<TransitionKey, u64> =
    PerCpuHashMap::with_max_entries(TRANSITIONS_MAX_ENTRIES, 0);

/// The namespace each slot of `NETNS_SLOT_COUNTS` counts for (0: free), written by
/// userspace only.
#[map]
pub static NETNS_SLOT_KEYS: Array<SlotKeys> = Array::with_max_entries(1, 0);

/// Transitions of the namespaces in `NETNS_SLOT_KEYS`, per slot and CPU: an array
/// increment instead of a hash update on the busiest path sockq has (six state
/// changes per connection).
#[map]
pub static NETNS_SLOT_COUNTS: PerCpuArray<SlotCounts> =
    PerCpuArray::with_max_entries(NETNS_SLOTS as u32, 0);

/// Rare events for userspace (listener lifecycle).
#[map]
pub static EVENTS: RingBuf = RingBuf::with_byte_size(EVENTS_RING_BYTES, 0);

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

/// Unix connections queued for accept() and not yet accepted, by child socket
/// address, with their listener, whose `UNIX_STAMPS` slot another child held (TCP
/// children need no stamp: `accept.rs`). Removed at accept(); a full map is counted
/// (`STAT_QUEUED_FULL`).
#[map]
pub static QUEUED: HashMap<u64, QueuedChild> = HashMap::with_max_entries(QUEUED_MAX_ENTRIES, 0);

/// Unix connections queued for accept(), in the slot their child address chooses
/// (`UnixStamp::slot`): most stamps live here, written and taken with plain stores
/// and loads (an array lookup is inlined), and only those whose slot another child
/// holds go to `QUEUED`. Slots of children never accepted (their listener closed
/// with them queued) are freed by userspace, with the `QUEUED` rules.
#[map]
pub static UNIX_STAMPS: Array<UnixStamp> = Array::with_max_entries(UNIX_STAMP_SLOTS, 0);

/// Stamps the Unix `child` queued on listener `listener` at `now`: in its
/// `UNIX_STAMPS` slot if free (or already its own, or an earlier child's at its
/// address, which an accept never took: two live children never share one), else
/// in `QUEUED`. With `IF_UNSTAMPED`, only if it is not stamped already (by an enqueue
/// that found it in the queue); returns whether it was.
#[inline(always)]
pub fn stamp_unix_child<const IF_UNSTAMPED: bool>(
    child: *const u8,
    listener: u64,
    now: u64,
) -> bool {
    let low = pointer_low_bits(child);
    let child = child as u64;
    if let Some(slot) = UNIX_STAMPS.get_ptr_mut(UnixStamp::slot(low)) {
        // SAFETY: a valid map value pointer; volatile so the stores stay in this
        // order (the child last: a reader matching it finds the rest written). The
        // `QUEUED` value is read at once.
        unsafe {
            let held = core::ptr::read_volatile(slot);
            // Checked with `low`, not `holds`: LLVM would compute the check from the
            // register holding the pointer, arithmetic the verifier refuses.
            if IF_UNSTAMPED
                && held.child == child
                && held.listener == listener
                && held.check == UnixStamp::check_of(low, listener)
            {
                return true;
            }
            // A child the look-back finds may have its stamp in `QUEUED` (its slot
            // was held when it was stamped, and may have been freed since): it is
            // stamped, and not to be stamped twice. The accept would take the slot's
            // copy and leave the other in `QUEUED` until an inventory found the
            // queue empty, which a queue under load may never be (about 20 a second
            // in a Unix saturation storm, 2026-12-06).
            if IF_UNSTAMPED
                && held.child != child
                && QUEUED.get(&child).is_some_and(|s| s.listener == listener)
            {
                return true;
            }
            if held.child == 0 || held.child == child {
                core::ptr::write_volatile(&raw mut (*slot).enqueued_ns, now);
                core::ptr::write_volatile(&raw mut (*slot).listener, listener);
                core::ptr::write_volatile(
                    &raw mut (*slot).check,
                    UnixStamp::check_of(low, listener),
                );
                core::ptr::write_volatile(&raw mut (*slot).child, child);
                return false;
            }
        }
    }
    // Its slot is held by another child (with `IF_UNSTAMPED`, `QUEUED` was looked in
    // above), or the table had no slot (never: the index is masked). A tail whose
    // stamp went to `QUEUED` and whose slot is free again gets both (a concurrent
    // enqueue found it as its own tail); left, as a `QUEUED` lookup on every tail
    // would cost every connection a hash lookup.
    let stamp = QueuedChild {
        enqueued_ns: now,
        listener,
    };
    insert_or_count(&QUEUED, &child, &stamp, 0, STAT_QUEUED_FULL);
    false
}

/// Takes the stamp of Unix `child` (its listener and when it was queued), from its
/// `UNIX_STAMPS` slot or else `QUEUED`; `None` for a child nobody stamped.
#[inline(always)]
pub fn take_unix_stamp(child: *const u8) -> Option<QueuedChild> {
    let low = pointer_low_bits(child);
    let child = child as u64;
    if let Some(slot) = UNIX_STAMPS.get_ptr_mut(UnixStamp::slot(low)) {
        // SAFETY: a valid map value pointer; the copy is checked whole (`holds`)
        // before use, and the slot freed only if it still names this child.
        unsafe {
            let stamp = core::ptr::read_volatile(slot);
            if stamp.holds(child) {
                core::ptr::write_volatile(&raw mut (*slot).child, 0);
                return Some(QueuedChild {
                    enqueued_ns: stamp.enqueued_ns,
                    listener: stamp.listener,
                });
            }
        }
    }
    // SAFETY: the value is copied out at once.
    let stamp = (unsafe { QUEUED.get(&child) }).copied();
    if stamp.is_some() {
        let _ = QUEUED.remove(&child);
    }
    stamp
}

/// The listener fd of each thread inside accept()/accept4(), by tid.
#[map]
pub static ACCEPTING: HashMap<u32, u64> = HashMap::with_max_entries(ACCEPTING_MAX_ENTRIES, 0);

/// 1 when the accept entry programs run (kernels without `sk_data_ready`): only then
/// is `ACCEPTING` filled and worth a lookup at the exit. Set by userspace after
/// attaching them.
#[map]
pub static ACCEPT_ENTRY_ON: Array<u32> = Array::with_max_entries(1, 0);

/// `struct proto` pointers of TCP sockets (`tcp_prot`, `tcpv6_prot`, a kTLS or
/// sockmap wrapper), each learned from a socket whose `sk_protocol` read TCP: a
/// socket whose `sk_prot` is one of them is TCP without that read
/// (`kernel::tcp_sock_net`). Empty slots are 0.
#[map]
pub static TCP_PROTS: Array<[u64; TCP_PROT_SLOTS]> = Array::with_max_entries(1, 0);

pub const TCP_PROT_SLOTS: usize = 4;

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

/// The hash maps entries are created in (aya-ebpf's map types share no trait).
pub trait KeyedMap<K, V> {
    fn lookup(&self, key: &K) -> Option<*mut V>;
    fn insert_entry(&self, key: &K, value: &V, flags: u64) -> Result<(), i32>;
}

macro_rules! keyed_map {
    ($($map:ident),*) => {$(
        impl<K, V> KeyedMap<K, V> for $map<K, V> {
            #[inline(always)]
            fn lookup(&self, key: &K) -> Option<*mut V> {
                self.get_ptr_mut(key)
            }

            #[inline(always)]
            fn insert_entry(&self, key: &K, value: &V, flags: u64) -> Result<(), i32> {
                self.insert(key, value, flags)
            }
        }
    )*};
}

keyed_map!(HashMap, LruHashMap, PerCpuHashMap);

/// The entry of `key` in `map`, created with the value `init` returns when missing.
///
/// One lookup when the entry exists (the hot path; `init` is not called); the first
/// time, an insert and a second lookup. When the map has no room the failure is
/// counted (and rarely logged) under `full_stat`, and there is no entry. `init`
/// returning `None` (an all-zero template missing) also gives no entry.
#[inline(always)]
pub fn get_or_insert<K, V, I: Borrow<V>>(
    map: &impl KeyedMap<K, V>,
    key: &K,
    full_stat: u32,
    init: impl FnOnce() -> Option<I>,
) -> Option<*mut V> {
    if let Some(entry) = map.lookup(key) {
        return Some(entry);
    }
    let inserted = map.insert_entry(key, init()?.borrow(), BPF_NOEXIST as u64);
    // EEXIST when another CPU created it first: fine, it is there now.
    if let Some(entry) = map.lookup(key) {
        return Some(entry);
    }
    if let Err(err) = inserted {
        count_failure(full_stat, err.into());
    }
    None
}

/// Inserts (or with `flags` 0, replaces) `key`'s entry; a failure is counted (and
/// rarely logged) under `full_stat`.
#[inline(always)]
pub fn insert_or_count<K, V>(
    map: &impl KeyedMap<K, V>,
    key: &K,
    value: &V,
    flags: u64,
    full_stat: u32,
) {
    if let Err(err) = map.insert_entry(key, value, flags) {
        count_failure(full_stat, err.into());
    }
}

/// The counters of listener `inode`, created (zeroed) on first use. `netns` is
/// recorded by the first call that could read it.
#[inline(always)]
pub fn listener_queue(inode: u64, netns: u32) -> Option<*mut ListenerQueue> {
    let q = get_or_insert(&LISTENER_QUEUES, &inode, STAT_LISTENERS_FULL, || {
        ZERO_QUEUE.get(0)
    })?;
    // SAFETY: a valid map value pointer.
    unsafe {
        if (*q).netns == 0 {
            (*q).netns = netns;
        }
    }
    Some(q)
}

/// The counters of listener `inode`, created with `sk`'s namespace (the listener's,
/// or a child's: the same for TCP) if it has none yet. They usually exist since its
/// `listen()`: the namespace is read only to create them, for a listener older than
/// sockq at its first enqueue or accept seen.
#[inline(always)]
pub fn listener_counters(inode: u64, sk: *const u8) -> Option<*mut ListenerQueue> {
    match LISTENER_QUEUES.get_ptr_mut(&inode) {
        Some(q) => Some(q),
        None => listener_queue(inode, sock_netns(sk, offsets())),
    }
}

/// Counts one enqueue of `depth` on the listener `inode` (its counters created, with
/// `sk`'s namespace, if it has none yet): enqueues, depth sum and histogram, max
/// depth. Shared by the TCP and Unix enqueue paths (`sk_data_ready`); returns the
/// counters for what each adds.
#[inline(always)]
pub fn count_enqueue(sk: *const u8, inode: u64, depth: u32) -> Option<*mut ListenerQueue> {
    let q = listener_counters(inode, sk)?;
    // SAFETY: a valid map value pointer; counters change through atomics only,
    // `max_depth` is best-effort (a lost race loses a max).
    unsafe {
        atomic_add(&raw mut (*q).enqueues, 1);
        atomic_add(&raw mut (*q).depth_sum, u64::from(depth));
        if let Some(slot) = (*q).depth_hist.get_mut(depth_bucket(depth)) {
            atomic_add(slot, 1);
        }
        if depth > (*q).max_depth {
            (*q).max_depth = depth;
        }
    }
    Some(q)
}

/// Adds one accept to (listener, thread), creating the entry on first use.
#[inline(always)]
pub fn count_acceptor(key: &AcceptorKey) {
    if let Some(n) = get_or_insert(&ACCEPTORS, key, STAT_ACCEPTORS_FULL, || Some(0u64)) {
        atomic_add(n, 1);
    }
}
