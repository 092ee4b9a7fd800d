//! Every in-kernel entry has an owner that removes it. The programs remove what they
//! can see end (a listener's counters when it closes, a stamp when its connection is
//! accepted); userspace removes the rest at each poll, from the inventory's view:
//! - `LISTENER_QUEUES`: counters of sockets that are not a live listener in two
//!   inventories in a row (a listener opened just after an inventory is spared; the
//!   same rule decides for the other maps' entries of a listener);
//! - `ACCEPTORS`: accept counts of listeners that are gone, and of threads that exited
//!   20 s ago (recycled workers: gunicorn `max_requests`, php-fpm `pm.max_requests`);
//! - `QUEUED`: stamps of Unix children no longer queued: their listener is gone,
//!   or its accept queue was empty at the inventory although they were stamped before
//!   it (accepted by a path sockq did not see), or never queued after a grace period;
//! - `UNIX_STAMPS`: the same, every [`STAMP_SCAN_EVERY`] polls (a read per slot: a
//!   stale slot costs only speed, the stamps that would have used it going to
//!   `QUEUED`), a slot's listener being gone when two scans in a row found it
//!   unlisted;
//! - `TRANSITIONS`: counts of namespaces that died, and their slots (`settle_transitions`).
//!
//! It also counts what remains, for `sockq_map_entries{map}`.

use std::collections::{HashMap, HashSet};

use collector_common::queue::{
    ACCEPTORS_MAX_ENTRIES, AcceptorKey, LISTENERS_MAX_ENTRIES, QUEUED_MAX_ENTRIES, QueuedChild,
    UNIX_STAMP_SLOTS, UnixStamp,
};
use collector_common::tcp_state::TRANSITIONS_MAX_ENTRIES;

use super::Probes;
use crate::model::MapOccupancy;

/// A stamp no `sk_data_ready` gave a listener is dropped after this long.
const UNQUEUED_STAMP_GRACE_NS: u64 = 10_000_000_000;
/// `UNIX_STAMPS` is scanned once in this many polls (10 s at the default interval:
/// 4,096 reads, a few milliseconds).
pub const STAMP_SCAN_EVERY: u32 = 10;
/// The accept counts of a thread that exited are kept this long (its final count
/// stays visible to a few scrapes), then removed.
const EXITED_THREAD_GRACE_NS: u64 = 20_000_000_000;

/// What the inventory says exists, for [`Probes::prune`].
pub struct Live<'a> {
    /// Accept queue length of every listener, by socket inode.
    pub queue_len: &'a HashMap<u64, u32>,
    /// `CLOCK_MONOTONIC` ns at which the inventory started.
    pub inventory_started_ns: u64,
    /// Now, same clock.
    pub now_ns: u64,
}

impl Probes {
    /// Removes what the inventory shows to be dead; returns each map's occupancy.
    pub fn prune(
        &mut self,
        live: &Live<'_>,
        thread_alive: impl Fn(u32, u32) -> bool,
    ) -> Vec<MapOccupancy> {
        let queues: Vec<u64> = self.queues.keys().filter_map(Result::ok).collect();
        let acceptors: Vec<AcceptorKey> = self.acceptors.keys().filter_map(Result::ok).collect();
        let stamps: Vec<(u64, QueuedChild)> = self.queued.iter().filter_map(Result::ok).collect();
        // The slots' stamps join the same rules, tagged with their slot.
        let scan = self.stamp_scan_countdown == 0;
        self.stamp_scan_countdown = if scan {
            STAMP_SCAN_EVERY - 1
        } else {
            self.stamp_scan_countdown - 1
        };
        let slots: Vec<(u32, QueuedChild)> = if scan {
            (0..UNIX_STAMP_SLOTS)
                .filter_map(|i| Some((i, self.unix_stamps.get(&i, 0).ok()?)))
                .filter(|(_, s)| s.child != 0)
                .map(|(i, s)| {
                    let stamp = QueuedChild {
                        enqueued_ns: s.enqueued_ns,
                        listener: s.listener,
                    };
                    (i, stamp)
                })
                .collect()
        } else {
            Vec::new()
        };
        // Listeners any map refers to that the inventory does not list; those not
        // listed the previous time either are gone (one absence may be a listener
        // opened after the inventory ran).
        let absent = unlisted(
            queues
                .iter()
                .copied()
                .chain(acceptors.iter().map(|k| k.listener))
                .chain(stamps.iter().map(|(_, s)| s.listener)),
            live,
        );
        let gone = still_absent(absent, &mut self.absent_listeners);

        let mut left_queues = queues.len() as u64;
        for key in queues.iter().filter(|k| gone.contains(k)) {
            if self.queues.remove(key).is_ok() {
                left_queues -= 1;
            }
        }
        let left_acceptors = self.prune_acceptors(acceptors, &gone, live.now_ns, thread_alive);
        let left_stamps = self.prune_stamps(stamps, &gone, live);
        if scan {
            // Slots are read only at scans: a listener of theirs is gone when no
            // inventory listed it at this scan nor at the previous one.
            let absent = unlisted(slots.iter().map(|(_, s)| s.listener), live);
            let mut gone_too = still_absent(absent, &mut self.absent_slot_listeners);
            gone_too.extend(gone.iter().copied());
            self.slots_in_use = self.prune_slots(slots, &gone_too, live);
        }
        let transitions = self.transitions.keys().filter_map(Result::ok).count() as u64;
        vec![
            occupancy("LISTENER_QUEUES", left_queues, LISTENERS_MAX_ENTRIES),
            occupancy("ACCEPTORS", left_acceptors, ACCEPTORS_MAX_ENTRIES),
            occupancy("QUEUED", left_stamps, QUEUED_MAX_ENTRIES),
            occupancy("UNIX_STAMPS", self.slots_in_use, UNIX_STAMP_SLOTS),
            occupancy("TRANSITIONS", transitions, TRANSITIONS_MAX_ENTRIES),
        ]
    }

    fn prune_acceptors(
        &mut self,
        keys: Vec<AcceptorKey>,
        gone: &HashSet<u64>,
        now_ns: u64,
        thread_alive: impl Fn(u32, u32) -> bool,
    ) -> u64 {
        let mut left = keys.len() as u64;
        let mut exited = HashMap::new();
        for key in keys {
            let thread_gone = !thread_alive(key.pid, key.tid) && {
                let since = self
                    .exited_threads
                    .get(&(key.pid, key.tid))
                    .copied()
                    .unwrap_or(now_ns);
                exited.insert((key.pid, key.tid), since);
                now_ns.saturating_sub(since) >= EXITED_THREAD_GRACE_NS
            };
            if (gone.contains(&key.listener) || thread_gone) && self.acceptors.remove(&key).is_ok()
            {
                left -= 1;
            }
        }
        self.exited_threads = exited;
        left
    }

    fn prune_stamps(
        &mut self,
        stamps: Vec<(u64, QueuedChild)>,
        gone: &HashSet<u64>,
        live: &Live<'_>,
    ) -> u64 {
        remove_stale(stamps, gone, live, |child| {
            self.queued.remove(child).is_ok()
        })
    }

    /// Frees the stale slots of `UNIX_STAMPS` (those in use, as read); returns how
    /// many stay in use. A slot the programs wrote again between the read and the
    /// clear (only a new child at a stale one's address can) loses that stamp: its
    /// accept is counted, its wait not.
    fn prune_slots(
        &mut self,
        slots: Vec<(u32, QueuedChild)>,
        gone: &HashSet<u64>,
        live: &Live<'_>,
    ) -> u64 {
        remove_stale(slots, gone, live, |slot| {
            self.unix_stamps.set(*slot, UnixStamp::default(), 0).is_ok()
        })
    }
}

/// The listeners of `listeners` (0: none) that the inventory does not list.
fn unlisted(listeners: impl Iterator<Item = u64>, live: &Live<'_>) -> HashSet<u64> {
    listeners
        .filter(|l| *l != 0 && !live.queue_len.contains_key(l))
        .collect()
}

/// Those of `absent` that `previous` (the last time's absent, replaced by `absent`)
/// held too: gone, one absence being possibly a listener opened after the inventory.
fn still_absent(absent: HashSet<u64>, previous: &mut HashSet<u64>) -> HashSet<u64> {
    let gone = absent.intersection(previous).copied().collect();
    *previous = absent;
    gone
}

/// Removes (`remove`: whether it did) the stale ones of `stamps`; returns how many
/// are left.
fn remove_stale<K>(
    stamps: Vec<(K, QueuedChild)>,
    gone: &HashSet<u64>,
    live: &Live<'_>,
    mut remove: impl FnMut(&K) -> bool,
) -> u64 {
    let mut left = stamps.len() as u64;
    for (key, stamp) in stamps {
        if stale(&stamp, gone, live) && remove(&key) {
            left -= 1;
        }
    }
    left
}

/// Whether a Unix child's stamp is of a connection no longer queued (see the module
/// doc).
fn stale(stamp: &QueuedChild, gone: &HashSet<u64>, live: &Live<'_>) -> bool {
    match live.queue_len.get(&stamp.listener) {
        // Stamped before an inventory that found the queue empty: not queued.
        Some(0) => stamp.enqueued_ns < live.inventory_started_ns,
        Some(_) => false,
        None if stamp.listener == 0 => {
            live.now_ns.saturating_sub(stamp.enqueued_ns) > UNQUEUED_STAMP_GRACE_NS
        }
        None => gone.contains(&stamp.listener),
    }
}

fn occupancy(map: &'static str, entries: u64, capacity: u32) -> MapOccupancy {
    MapOccupancy {
        map,
        entries,
        capacity: u64::from(capacity),
    }
}
