//! `UNIX_REFUSED` seen from userspace: refused and waiting connects to Unix
//! listeners per (client namespace, name, client process), and their owner here.
//! The programs create entries; this removes them:
//! - a client process that exited: its counts are folded into userspace's own total
//!   for the same (namespace, name) (tgid 0), so a listener's count never goes back;
//! - a name that matched no Unix listener in two polls in a row (the listener closed,
//!   or it cannot be attributed): removed, with its folded total.

use std::collections::HashSet;

use collector_common::unix::{UNIX_REFUSED_MAX_ENTRIES, UnixConnectKey, UnixConnectStats};

use super::Probes;
use crate::model::MapOccupancy;

impl Probes {
    /// Every (namespace, name, client) count: the kernel's entries, then the totals
    /// of exited clients (tgid 0).
    pub fn unix_connects(&self) -> Vec<(UnixConnectKey, UnixConnectStats)> {
        let mut all: Vec<(UnixConnectKey, UnixConnectStats)> =
            self.unix_refused.iter().filter_map(Result::ok).collect();
        all.extend(self.unix_exited.iter().map(|(k, v)| (*k, *v)));
        all
    }

    /// Removes the entries of exited clients (folded into userspace's totals) and of
    /// names `unmatched` now and at the previous poll; returns the map's occupancy.
    pub fn prune_unix(
        &mut self,
        unmatched: HashSet<UnixConnectKey>,
        process_alive: impl Fn(u32) -> bool,
    ) -> MapOccupancy {
        let entries: Vec<(UnixConnectKey, UnixConnectStats)> =
            self.unix_refused.iter().filter_map(Result::ok).collect();
        let gone: HashSet<UnixConnectKey> = unmatched
            .intersection(&self.unix_unmatched)
            .copied()
            .collect();
        let mut left = entries.len() as u64;
        for (key, stats) in entries {
            let dead_name = gone.contains(&key);
            let exited = !dead_name && !process_alive(key.tgid);
            if !(dead_name || exited) || self.unix_refused.remove(&key).is_err() {
                continue;
            }
            left -= 1;
            if exited {
                fold(&mut self.unix_exited, key, &stats);
            }
        }
        self.unix_exited.retain(|k, _| !gone.contains(k));
        self.unix_unmatched = unmatched;
        MapOccupancy {
            map: "UNIX_REFUSED",
            entries: left,
            capacity: u64::from(UNIX_REFUSED_MAX_ENTRIES),
        }
    }
}

/// Adds an exited client's counts to the (namespace, name) total of exited clients.
fn fold(
    totals: &mut std::collections::HashMap<UnixConnectKey, UnixConnectStats>,
    mut key: UnixConnectKey,
    stats: &UnixConnectStats,
) {
    key.tgid = 0;
    let total = totals.entry(key).or_insert(UnixConnectStats {
        comm: stats.comm,
        ..UnixConnectStats::ZERO
    });
    total.refused = total.refused.saturating_add(stats.refused);
    total.waited = total.waited.saturating_add(stats.waited);
    total.wait_ns = total.wait_ns.saturating_add(stats.wait_ns);
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn exited_clients_fold_into_one_total_per_name() {
        let mut totals = std::collections::HashMap::new();
        let mut key = UnixConnectKey::ZERO;
        key.path[0] = b'/';
        key.len = 1;
        for (tgid, refused) in [(10, 3), (11, 4)] {
            key.tgid = tgid;
            let stats = UnixConnectStats {
                refused,
                waited: 1,
                wait_ns: 5,
                comm: *b"nginx\0\0\0\0\0\0\0\0\0\0\0",
            };
            fold(&mut totals, key, &stats);
        }
        assert_eq!(totals.len(), 1);
        let (k, v) = totals.iter().next().expect("one total");
        assert_eq!(k.tgid, 0);
        assert_eq!((v.refused, v.waited, v.wait_ns), (7, 2, 10));
    }
}
