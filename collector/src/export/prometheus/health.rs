//! sockq's own health: how long polls take, when the inventory last completed and
//! whether it is stale, and which namespaces it could not read.

use std::time::{SystemTime, UNIX_EPOCH};

use super::{Family, histogram::coarsen};
use crate::model::Snapshot;

const HELP_POLL: &str = "Time each poll took (inventory of every namespace, reading the \
    probes' maps, analyses), seconds. Its _count is the number of polls: listener events \
    trigger polls at most ten times a second, leaving the daemon at least half its \
    time.";
const HELP_LAST: &str = "Unix time of the last inventory that could read sockq's own network \
    namespace (sock_diag and /proc).";
const HELP_STALE: &str = "1 when the last complete inventory is older than three poll \
    intervals at the time of the scrape: the listener metrics describe the past.";
const HELP_SKIPPED: &str = "Network namespaces the last inventory could not read, by reason \
    (vanished: it died during the scan; permission: setns refused, sockq lacks \
    CAP_SYS_ADMIN; enter_failed, io, sock_diag, netstat: see the daemon's debug log).";
const HELP_CARRIED: &str = "Listeners of namespaces the last inventory could not read \
    (other than vanished ones), reported as last seen rather than dropped.";

const HELP_EXCLUDED: &str = "Listeners the last inventory found that --listeners-include / \
    --listeners-exclude leave out of the export (no per-listener series, not in the JSON \
    API); the eBPF programs still count them.";

const HELP_MAP_ENTRIES: &str = "Entries in one of sockq's in-kernel maps after the poll's \
    pruning (every entry has an owner that removes it: a listener's counters go when it \
    closes, an acceptor's when its thread exits, a namespace's when it dies).";
const HELP_MAP_CAPACITY: &str = "How many entries one of sockq's in-kernel maps can hold; \
    a full map is counted in sockq_events_lost_total.";

pub(super) fn families(snapshot: &Snapshot) -> Vec<Family> {
    let h = &snapshot.health;
    let mut poll = Family::histogram("sockq_poll_duration_seconds", HELP_POLL);
    if !h.poll_seconds.bounds.is_empty() {
        poll.push_histogram(Vec::new(), coarsen(&h.poll_seconds, |_| true));
    }
    let mut last = Family::gauge("sockq_inventory_last_complete_timestamp_seconds", HELP_LAST);
    let mut stale = Family::gauge("sockq_inventory_stale", HELP_STALE);
    let now = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0.0, |d| d.as_secs_f64());
    match h.last_inventory_unix {
        Some(t) => {
            last.push_float(Vec::new(), t);
            stale.push(Vec::new(), now - t > h.stale_after_seconds);
        }
        None => stale.push(Vec::new(), true),
    }
    let mut skipped = Family::gauge("sockq_inventory_skipped_namespaces", HELP_SKIPPED);
    for (reason, n) in &h.skipped_netns {
        skipped.push(vec![("reason", (*reason).to_owned())], *n);
    }
    let mut carried = Family::gauge("sockq_inventory_carried_listeners", HELP_CARRIED);
    carried.push(Vec::new(), h.carried_listeners);
    let mut excluded = Family::gauge("sockq_listeners_excluded", HELP_EXCLUDED);
    excluded.push(Vec::new(), h.excluded_listeners);
    let mut entries = Family::gauge("sockq_map_entries", HELP_MAP_ENTRIES);
    let mut capacity = Family::gauge("sockq_map_capacity", HELP_MAP_CAPACITY);
    for m in &snapshot.maps {
        entries.push(vec![("map", m.map.to_owned())], m.entries);
        capacity.push(vec![("map", m.map.to_owned())], m.capacity);
    }
    vec![
        poll, last, stale, skipped, carried, excluded, entries, capacity,
    ]
}
