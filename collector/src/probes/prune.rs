//! Every in-kernel entry has an owner that removes it. The programs remove what they
//! can see end (a listener's counters when it closes, a stamp when its connection is
//! accepted); userspace removes the rest at each poll, from the inventory's view:
//! - `LISTENER_QUEUES`: counters of sockets that are not a live listener in two
//!   inventories in a row (a listener opened just after an inventory is spared);
//! - `ACCEPTORS`: accept counts of listeners that are gone, and of threads that exited
//!   (recycled workers: gunicorn `max_requests`, php-fpm `pm.max_requests`);
//! - `QUEUED`: handshake stamps of children no longer queued: their listener is gone,
//!   or its accept queue was empty at the inventory although they were stamped before
//!   it (accepted by a path sockq did not see), or never queued after a grace period;
//! - `TRANSITIONS`: counts of namespaces that died (`remove_transitions_of`).
//!
//! It also counts what remains, for `sockq_map_entries{map}`.

use std::collections::{HashMap, HashSet};

use collector_common::queue::{
    ACCEPTORS_MAX_ENTRIES, AcceptorKey, LISTENERS_MAX_ENTRIES, QUEUED_MAX_ENTRIES,
};
use collector_common::tcp_state::TRANSITIONS_MAX_ENTRIES;

use super::Probes;
use crate::model::MapOccupancy;

/// A stamp no `sk_data_ready` gave a listener is dropped after this long.
const UNQUEUED_STAMP_GRACE_NS: u64 = 10_000_000_000;

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
        let listeners = self.prune_listener_queues(live);
        let acceptors = self.prune_acceptors(live, thread_alive);
        let queued = self.prune_queued(live);
        let transitions = self.transitions.keys().filter_map(Result::ok).count() as u64;
        vec![
            occupancy("LISTENER_QUEUES", listeners, LISTENERS_MAX_ENTRIES),
            occupancy("ACCEPTORS", acceptors, ACCEPTORS_MAX_ENTRIES),
            occupancy("QUEUED", queued, QUEUED_MAX_ENTRIES),
            occupancy("TRANSITIONS", transitions, TRANSITIONS_MAX_ENTRIES),
        ]
    }

    fn prune_listener_queues(&mut self, live: &Live<'_>) -> u64 {
        let keys: Vec<u64> = self.queues.keys().filter_map(Result::ok).collect();
        let not_live: HashSet<u64> = keys
            .iter()
            .copied()
            .filter(|k| !live.queue_len.contains_key(k))
            .collect();
        let mut removed = 0;
        for key in not_live.intersection(&self.listener_suspects) {
            if self.queues.remove(key).is_ok() {
                removed += 1;
            }
        }
        self.listener_suspects = not_live;
        keys.len() as u64 - removed
    }

    fn prune_acceptors(&mut self, live: &Live<'_>, thread_alive: impl Fn(u32, u32) -> bool) -> u64 {
        let keys: Vec<AcceptorKey> = self.acceptors.keys().filter_map(Result::ok).collect();
        let mut left = keys.len() as u64;
        for key in keys {
            let dead_listener = !live.queue_len.contains_key(&key.listener)
                && self.listener_suspects.contains(&key.listener);
            if (dead_listener || !thread_alive(key.pid, key.tid))
                && self.acceptors.remove(&key).is_ok()
            {
                left -= 1;
            }
        }
        left
    }

    fn prune_queued(&mut self, live: &Live<'_>) -> u64 {
        let stale: Vec<u64> = self
            .queued
            .iter()
            .filter_map(Result::ok)
            .filter(|(_, stamp)| match live.queue_len.get(&stamp.listener) {
                // Stamped before an inventory that found the queue empty: not queued.
                Some(0) => stamp.enqueued_ns < live.inventory_started_ns,
                Some(_) => false,
                None if stamp.listener == 0 => {
                    live.now_ns.saturating_sub(stamp.enqueued_ns) > UNQUEUED_STAMP_GRACE_NS
                }
                None => self.listener_suspects.contains(&stamp.listener),
            })
            .map(|(child, _)| child)
            .collect();
        let total = self.queued.keys().filter_map(Result::ok).count() as u64;
        let mut removed = 0;
        for child in stale {
            if self.queued.remove(&child).is_ok() {
                removed += 1;
            }
        }
        total.saturating_sub(removed)
    }
}

fn occupancy(map: &'static str, entries: u64, capacity: u32) -> MapOccupancy {
    MapOccupancy {
        map,
        entries,
        capacity: u64::from(capacity),
    }
}
