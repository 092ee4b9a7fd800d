//! The accept queue, measured in the kernel per listening socket: depth at every
//! enqueue, time from enqueue to `accept()`, SYN-ACK retransmits, the `listen()`
//! backlog, and accepts per thread. Keyed by socket inode, which sock_diag and
//! `/proc/PID/fd` also report, so userspace joins them with its inventory.
//!
//! The histogram bucket functions live here so the eBPF programs and userspace agree
//! on them, and so they are unit-tested on the host.

/// Capacity of `LISTENER_QUEUES` (LRU: the least recently active listener goes first).
pub const LISTENERS_MAX_ENTRIES: u32 = 4096;
/// Capacity of `QUEUED` (LRU): connections queued and not yet accepted.
pub const QUEUED_MAX_ENTRIES: u32 = 65536;
/// Capacity of `ACCEPTING`: threads inside accept()/accept4() at once.
pub const ACCEPTING_MAX_ENTRIES: u32 = 16384;
/// Capacity of `ACCEPTORS` (LRU): (listener, thread) pairs.
pub const ACCEPTORS_MAX_ENTRIES: u32 = 16384;
/// Threads between `listen()` and their socket entering LISTEN (LRU).
pub const LISTEN_BACKLOG_MAX_ENTRIES: u32 = 1024;

/// Buckets of the depth-at-enqueue histogram: bucket `i` holds depths in
/// [2^i, 2^(i+1)), the last one everything above.
pub const DEPTH_BUCKETS: usize = 16;
/// Buckets of the accept-wait histogram (microseconds): 4 per power of two, see
/// [`wait_bucket`].
pub const WAIT_BUCKETS: usize = 104;

/// Per-listener counters, updated with atomic adds from every CPU.
///
/// Two sides, a cache line apart: what the enqueue writes (on the CPU whose softirq
/// queued the connection) and what the accept writes (on the accepting thread's).
/// With them in one line, the line moved between the two CPUs twice per connection.
/// Map values are only 8-byte aligned, so the gap is a whole line: no line can hold
/// fields of both sides.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ListenerQueue {
    /// Connections queued for accept().
    pub enqueues: u64,
    /// Enqueues after which the queue held more than its limit (it was full).
    pub full_enqueues: u64,
    /// Sum of the depths seen at enqueues (the depth histogram's sum).
    pub depth_sum: u64,
    /// `bpf_ktime_get_ns` of the last queue-full event sent (rate limit).
    pub last_full_event_ns: u64,
    /// Deepest queue seen right after an enqueue.
    pub max_depth: u32,
    /// Backlog argument of the last `listen()` on this socket, 0 if unseen.
    pub backlog_arg: u32,
    pub netns: u32,
    pub _pad: u32,
    /// The listener's `struct sock` address, written by its enqueues: what userspace
    /// hands the `oldest_queued` program to read the head of its accept queue.
    pub sk: u64,
    pub depth_hist: [u64; DEPTH_BUCKETS],
    /// Nothing: keeps the accept side's fields off the enqueue side's lines.
    pub _gap: [u64; 8],
    /// Connections accept()/accept4() returned from this listener.
    pub accepts: u64,
    /// Of those, the ones whose handshake completion sockq saw (the accept-wait
    /// histogram's count).
    pub waits: u64,
    /// Sum of accept waits, nanoseconds.
    pub wait_sum_ns: u64,
    /// SYN-ACK retransmits for handshakes of this listener (rare: a timer's).
    pub synack_retransmits: u64,
    /// Sampled accepted connections whose first reads all came from the thread that
    /// accepted them ...
    pub read_by_acceptor: u64,
    /// ... from one other thread ...
    pub read_by_one_other: u64,
    /// ... from several threads (messages spread over workers).
    pub read_by_several: u64,
    pub wait_hist: [u64; WAIT_BUCKETS],
}

impl ListenerQueue {
    pub const ZERO: Self = Self {
        enqueues: 0,
        full_enqueues: 0,
        depth_sum: 0,
        last_full_event_ns: 0,
        max_depth: 0,
        backlog_arg: 0,
        netns: 0,
        _pad: 0,
        sk: 0,
        depth_hist: [0; DEPTH_BUCKETS],
        _gap: [0; 8],
        accepts: 0,
        waits: 0,
        wait_sum_ns: 0,
        synack_retransmits: 0,
        read_by_acceptor: 0,
        read_by_one_other: 0,
        read_by_several: 0,
        wait_hist: [0; WAIT_BUCKETS],
    };
}

const _: () = assert!(
    core::mem::size_of::<ListenerQueue>() == 56 + DEPTH_BUCKETS * 8 + 64 + 56 + WAIT_BUCKETS * 8
);
const _: () = assert!(
    core::mem::offset_of!(ListenerQueue, accepts)
        >= core::mem::offset_of!(ListenerQueue, _gap) + 64
);

/// A connection between handshake completion and accept(), by child socket address.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct QueuedChild {
    /// When the handshake completed (the child was created, LISTEN -> SYN_RECV).
    pub enqueued_ns: u64,
    /// Inode of the listener it was queued on; 0 until `sk_data_ready` saw it.
    pub listener: u64,
}

const _: () = assert!(core::mem::size_of::<QueuedChild>() == 16);

/// How many connections of a Unix listener's queue an enqueue stamps at most, from
/// the tail back to the first one already stamped: connects that queued between
/// another connect's enqueue and its `sk_data_ready` (which then finds theirs at the
/// tail, not its own) are stamped by whichever enqueue comes first.
pub const UNIX_LOOKBACK: usize = 4;

/// Slots of `UNIX_STAMPS`, a power of two (32 bytes each: 128 KiB).
pub const UNIX_STAMP_SLOTS: u32 = 4096;

/// A Unix connection queued for accept(), in the `UNIX_STAMPS` slot its child
/// address chooses ([`UnixStamp::slot`]): what a `QUEUED` entry holds, written and
/// taken with plain stores and loads instead of a hash insert and delete. A slot
/// another child holds sends the stamp to `QUEUED`.
///
/// Two CPUs may write one slot at the same instant: two enqueues stamping one child
/// (each found it in the queue), or two whose children share the slot, both finding
/// it free. The fields may then mix the two stamps. `check`
/// ([`UnixStamp::check_of`]) ties the child to its listener, and a slot whose child
/// and listener do not match is not taken (that accept is counted for the listener
/// its descriptor names, its wait as lost: `STAT_UNIX_UNSTAMPED`).
/// The time is left out of it: two writers stamped at the same instant, so either's
/// time is the connection's to within the race, and a child two enqueues stamped
/// at once keeps its stamp.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct UnixStamp {
    /// The child's `struct sock` address; 0: a free slot.
    pub child: u64,
    pub enqueued_ns: u64,
    /// Inode of the listener it was queued on.
    pub listener: u64,
    pub check: u64,
}

const _: () = assert!(core::mem::size_of::<UnixStamp>() == 32);
const _: () = assert!(UNIX_STAMP_SLOTS.is_power_of_two());

impl UnixStamp {
    /// The slot of a child whose address has `low` as its low 32 bits (what a program
    /// can compute with: the verifier forbids arithmetic on a kernel pointer, and
    /// lets only a 32-bit copy of one become a number), mixed by splitmix64's
    /// finalizer, so objects side by side in a slab spread over the table as at
    /// random.
    #[inline(always)]
    pub fn slot(low: u32) -> u32 {
        let mut x = u64::from(low);
        x = (x ^ (x >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        x = (x ^ (x >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        ((x ^ (x >> 31)) as u32) & (UNIX_STAMP_SLOTS - 1)
    }

    /// What `check` holds for a stamp of the child whose address ends in `low` on
    /// `listener`: the two in different rotations, so fields of two stamps mixed
    /// almost never give their own check.
    #[inline(always)]
    pub fn check_of(low: u32, listener: u64) -> u64 {
        u64::from(low).rotate_left(21) ^ listener.rotate_left(42) ^ 0x5bd1_e995_5bd1_e995
    }

    /// Whether the slot holds a whole stamp of `child`.
    #[inline(always)]
    pub fn holds(&self, child: u64) -> bool {
        child != 0
            && self.child == child
            && self.check == Self::check_of(self.child as u32, self.listener)
    }
}

/// Key of `ACCEPTORS`: one thread accepting on one listener.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct AcceptorKey {
    pub listener: u64,
    pub pid: u32,
    pub tid: u32,
}

const _: () = assert!(core::mem::size_of::<AcceptorKey>() == 16);

/// Sent when an enqueue leaves a listener's queue over its limit (at most once a
/// second per listener): userspace refreshes its inventory at once.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct QueueFullEvent {
    /// [`crate::listener::EVENT_QUEUE_FULL`].
    pub kind: u32,
    pub netns: u32,
    pub listener: u64,
    pub timestamp_ns: u64,
    pub depth: u32,
    pub limit: u32,
}

const _: () = assert!(core::mem::size_of::<QueueFullEvent>() == 32);

#[cfg(feature = "user")]
mod pod {
    // SAFETY (all): repr(C), integer fields with explicit padding; any bit pattern
    // is valid.
    unsafe impl aya::Pod for super::ListenerQueue {}
    unsafe impl aya::Pod for super::QueuedChild {}
    unsafe impl aya::Pod for super::UnixStamp {}
    unsafe impl aya::Pod for super::AcceptorKey {}
    unsafe impl aya::Pod for super::QueueFullEvent {}
}

/// floor(log2(v)) for v >= 1; 0 for 0. Loop-free for the verifier.
#[inline(always)]
pub fn log2(v: u64) -> u32 {
    if v == 0 { 0 } else { 63 - v.leading_zeros() }
}

/// Depth histogram bucket: [2^i, 2^(i+1)).
#[inline(always)]
pub fn depth_bucket(depth: u32) -> usize {
    let b = log2(u64::from(depth)) as usize;
    if b >= DEPTH_BUCKETS {
        DEPTH_BUCKETS - 1
    } else {
        b
    }
}

/// Accept-wait bucket for a wait of `us` microseconds. Values below 4 have a bucket
/// each; above, every power of two is split in 4 equal parts (at most 25% wide), up
/// to the last bucket, which holds everything from about 58 s.
#[inline(always)]
pub fn wait_bucket(us: u64) -> usize {
    if us < 4 {
        return us as usize;
    }
    let k = log2(us) as usize; // >= 2
    let sub = ((us >> (k - 2)) & 3) as usize;
    let b = 4 * (k - 1) + sub;
    if b >= WAIT_BUCKETS {
        WAIT_BUCKETS - 1
    } else {
        b
    }
}

/// Exclusive upper bound, in microseconds, of accept-wait bucket `b` (the last
/// bucket has none: `u64::MAX`).
pub fn wait_bucket_upper_us(b: usize) -> u64 {
    if b + 1 >= WAIT_BUCKETS {
        return u64::MAX;
    }
    if b < 4 {
        return b as u64 + 1;
    }
    let k = b / 4 + 1;
    let sub = (b % 4) as u64;
    (4 + sub + 1) << (k - 2)
}

#[cfg(test)]
mod tests {
    extern crate std;
    use super::*;

    #[test]
    fn unix_stamp_slots_spread_slab_neighbours() {
        // 1,024 unix_sock objects of 1,088 bytes side by side, as a slab lays them.
        let base = 0xffff_8880_1234_0000u64;
        let slots: std::collections::HashSet<u32> = (0..1024)
            .map(|i| UnixStamp::slot((base + i * 1088) as u32))
            .collect();
        assert!(slots.iter().all(|s| *s < UNIX_STAMP_SLOTS));
        // A quarter of the table filled: about as many distinct slots as at random
        // (906 expected), not the 770 of a multiplicative hash.
        assert!(slots.len() > 860, "{} distinct slots", slots.len());
    }

    #[test]
    fn unix_stamp_check_tells_a_mixed_slot() {
        let whole = |child, ns, listener| UnixStamp {
            child,
            enqueued_ns: ns,
            listener,
            check: UnixStamp::check_of(child as u32, listener),
        };
        let a = whole(0xffff_8880_0000_1000, 5_000_000_123, 4242);
        let b = whole(0xffff_8880_0000_5440, 5_000_000_456, 4343);
        assert!(a.holds(a.child) && b.holds(b.child));
        assert!(!a.holds(b.child) && !a.holds(0));
        assert!(!UnixStamp::default().holds(0));
        // A mix of the two stamps' fields is refused unless its child, listener and
        // check are one stamp's: its time is then either's (both taken at once).
        for mask in 1..15u32 {
            let pick = |bit: u32, x: u64, y: u64| if mask & (1 << bit) != 0 { y } else { x };
            let mixed = UnixStamp {
                child: pick(0, a.child, b.child),
                enqueued_ns: pick(1, a.enqueued_ns, b.enqueued_ns),
                listener: pick(2, a.listener, b.listener),
                check: pick(3, a.check, b.check),
            };
            let one_stamps = mask & 0b1101 == 0 || mask & 0b1101 == 0b1101;
            assert_eq!(
                mixed.holds(mixed.child),
                one_stamps,
                "mask {mask:#b}: {mixed:?}"
            );
        }
    }

    #[test]
    fn wait_buckets_are_contiguous_and_ordered() {
        let mut lower = 0u64;
        for b in 0..WAIT_BUCKETS - 1 {
            let upper = wait_bucket_upper_us(b);
            assert!(upper > lower, "bucket {b}");
            assert_eq!(wait_bucket(lower), b, "lower edge {lower} of bucket {b}");
            assert_eq!(
                wait_bucket(upper - 1),
                b,
                "upper edge {upper} of bucket {b}"
            );
            // No bucket is wider than a quarter of its lower bound (beyond the
            // exact ones): quantiles read from it are within 25%.
            if lower >= 4 {
                assert!(
                    (upper - lower) * 4 <= lower,
                    "bucket {b} [{lower}, {upper})"
                );
            }
            lower = upper;
        }
        assert_eq!(wait_bucket(u64::MAX), WAIT_BUCKETS - 1);
        assert!(wait_bucket_upper_us(WAIT_BUCKETS - 2) > 50_000_000);
    }

    #[test]
    fn depth_buckets() {
        assert_eq!(depth_bucket(0), 0);
        assert_eq!(depth_bucket(1), 0);
        assert_eq!(depth_bucket(2), 1);
        assert_eq!(depth_bucket(3), 1);
        assert_eq!(depth_bucket(4), 2);
        assert_eq!(depth_bucket(u32::MAX), DEPTH_BUCKETS - 1);
    }
}

/// Capacity of `DROP_REASONS` (LRU): (listener, reason) pairs.
pub const DROP_REASONS_MAX_ENTRIES: u32 = 4096;

/// Key of `DROP_REASONS`: packets a listener dropped, by `enum skb_drop_reason`.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct DropKey {
    pub listener: u64,
    pub reason: u32,
    pub _pad: u32,
}

const _: () = assert!(core::mem::size_of::<DropKey>() == 16);

#[cfg(feature = "user")]
// SAFETY: repr(C), integers with explicit padding; any bit pattern is valid.
unsafe impl aya::Pod for DropKey {}

/// Capacity of `READERS` (LRU): sampled accepted connections whose readers are
/// being watched.
pub const READERS_MAX_ENTRIES: u32 = 8192;
/// Reads of a sampled connection observed before it is classified.
pub const READS_TO_CLASSIFY: u32 = 4;
/// Every one of a listener's first `SAMPLE_ALL_FIRST` accepted connections is watched
/// for its readers, then one in `SAMPLE_ONE_IN`.
pub const SAMPLE_ALL_FIRST: u64 = 64;
pub const SAMPLE_ONE_IN: u32 = 16;

/// Who reads a sampled accepted connection (value of `READERS`, keyed by the child
/// socket address).
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ReaderTrack {
    pub listener: u64,
    pub acceptor_tid: u32,
    /// The first thread other than the acceptor that read the connection.
    pub first_reader: u32,
    pub reads: u32,
    pub by_acceptor: u32,
    /// Reads by threads other than the acceptor and `first_reader`.
    pub by_others_than_first: u32,
    pub _pad: u32,
    /// Inode of the accepted connection's socket: a socket allocated later at the same
    /// address (the sampled one closed before it was classified) does not match, and
    /// does not inherit the sample.
    pub socket_inode: u64,
}

const _: () = assert!(core::mem::size_of::<ReaderTrack>() == 40);

#[cfg(feature = "user")]
// SAFETY: repr(C), integers with explicit padding; any bit pattern is valid.
unsafe impl aya::Pod for ReaderTrack {}
