//! The poller: builds each [`Snapshot`] from one read of the probes' maps and one
//! inventory after it (every namespace visited once), then runs the analyses over
//! it (queue statistics, episodes, patterns, Nagle series). It owns the state that
//! lives across polls: the episode tracker, the Nagle accumulator, the last
//! inventory.

use std::{
    collections::{BTreeMap, HashMap, HashSet},
    sync::Arc,
    time::{Duration, Instant, SystemTime, UNIX_EPOCH},
};

use collector_common::{
    nagle::StallEvent,
    queue::AcceptorKey,
    unix::{UnixConnectKey, UnixConnectStats},
};

use super::{
    episodes::{EpisodeEvent, EpisodeTracker, Limits},
    listener_filter::ListenerFilter,
    nagle,
    netns_keys::NetnsKeys,
    pattern, queue_stats,
    unix_episodes::UnixEpisodeTracker,
    unix_refusals,
};
use crate::{
    inventory::{self, ScanReport, VisitedNetns, threads},
    model::{
        Acceptor, Health, Histogram, Listener, MapOccupancy, NetnsStats, ProbeStatus, Snapshot,
        unix::{UnixListener, UnixQueueStats},
    },
    probes::{KernelView, ProbeError, Probes, prune::Live, ring::RingCounters},
    text,
};

/// Peers named per poll at most (each costs a sock_diag dump per namespace and a
/// /proc walk, shared by the batch); later stalls of a connection reuse the name.
const PEER_LOOKUPS_PER_POLL: usize = 32;

/// Upper bounds of the poll-duration histogram, seconds.
const POLL_BOUNDS: [f64; 12] = [
    0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 10.0,
];

/// What one poll produced: the snapshot, and the notable events it caused.
pub struct Poll {
    pub snapshot: Snapshot,
    pub episodes: Vec<EpisodeEvent>,
    pub stalls: Vec<nagle::StallNotice>,
}

/// Builds each snapshot; remembers the previous listeners to log changes.
pub struct Poller {
    probes: Option<Probes>,
    known: BTreeMap<(u64, u64), String>,
    first: bool,
    episodes: EpisodeTracker,
    unix_episodes: UnixEpisodeTracker,
    last_listeners: Vec<Listener>,
    last_unix: Vec<UnixListener>,
    /// The inventory's failure to list Unix listeners was logged.
    unix_warned: bool,
    nagle: nagle::Accumulator,
    stalls: tokio::sync::mpsc::Receiver<StallEvent>,
    /// What the ring buffer reader received and dropped.
    ring: Arc<RingCounters>,
    /// Why there are no probes, in polling mode.
    polling: Option<String>,
    health: Health,
    netns_keys: NetnsKeys,
    /// The namespaces the last inventory read, and those it could not read but that
    /// still exist.
    visited: Vec<VisitedNetns>,
    kept: HashSet<u64>,
    /// Which listeners the snapshots carry.
    filter: ListenerFilter,
}

impl Poller {
    pub fn new(
        probes: Option<Probes>,
        stalls: tokio::sync::mpsc::Receiver<StallEvent>,
        ring: Arc<RingCounters>,
        polling: Option<String>,
        interval: Duration,
    ) -> Self {
        Self {
            probes,
            known: BTreeMap::new(),
            first: true,
            episodes: EpisodeTracker::default(),
            unix_episodes: UnixEpisodeTracker::default(),
            last_listeners: Vec::new(),
            last_unix: Vec::new(),
            unix_warned: false,
            nagle: nagle::Accumulator::default(),
            stalls,
            ring,
            polling,
            netns_keys: NetnsKeys::default(),
            visited: Vec::new(),
            kept: HashSet::new(),
            filter: ListenerFilter::default(),
            health: Health {
                poll_seconds: Histogram {
                    bounds: POLL_BOUNDS.to_vec(),
                    counts: vec![0; POLL_BOUNDS.len() + 1],
                    sum: 0.0,
                },
                stale_after_seconds: 3.0 * interval.as_secs_f64(),
                ..Health::default()
            },
        }
    }

    /// Exports only the listeners `filter` keeps (every listener without one).
    pub fn with_listener_filter(mut self, filter: ListenerFilter) -> Self {
        self.filter = filter;
        self
    }

    /// Which probes are attached, and how (all "eBPF unavailable" in polling mode).
    pub fn probe_status(&self) -> Vec<ProbeStatus> {
        probe_status(self.probes.as_ref())
    }

    pub async fn poll(&mut self) -> Poll {
        let started = Instant::now();
        // The kernel's counts are read before the sockets are listed, so each depth a
        // poll reports is at least as new as the counts beside it: an episode that
        // refusals or full enqueues reveal never shows the queue from before them.
        let counted = self.probes.as_ref().map(KernelRead::of);
        let inventory_started_ns = monotonic_ns();
        let (listeners, unix_listeners, netns) = self.inventory().await;
        self.log_changes(&listeners);
        let mut snapshot = Snapshot {
            listeners,
            unix_listeners,
            probes: self.probe_status(),
            polling: self.polling.clone(),
            ..Snapshot::default()
        };
        self.add_kernel_view(&mut snapshot, counted, inventory_started_ns);
        // The whole inventory, before filtering: what the next poll carries over or
        // falls back to, so the kernel's counts of excluded listeners are not pruned.
        self.last_listeners.clone_from(&snapshot.listeners);
        self.last_unix.clone_from(&snapshot.unix_listeners);
        snapshot.nagle = self.nagle.series();
        self.health.excluded_listeners = self.exclude(&mut snapshot);
        let episodes = self.episodes.update(
            Instant::now(),
            SystemTime::now(),
            &snapshot.listeners,
            &snapshot.acceptors,
            limits_of(&netns),
        );
        for l in &mut snapshot.listeners {
            l.queue_full = self.episodes.is_full(l.netns, l.inode);
        }
        let mut episodes = episodes;
        episodes.extend(self.unix_episodes.update(
            Instant::now(),
            SystemTime::now(),
            &snapshot.unix_listeners,
            limits_of(&netns),
        ));
        for l in &mut snapshot.unix_listeners {
            l.queue_full = self.unix_episodes.is_full(l.netns, l.inode);
        }
        let reads_seen = snapshot
            .probes
            .iter()
            .any(|p| p.name == "sock_recv_length" && p.attached);
        snapshot.patterns = pattern::classify(&snapshot.listeners, &snapshot.acceptors, reads_seen);
        for l in &snapshot.unix_listeners {
            let reads = l.queue.as_ref().map(|q| pattern::Reads {
                by_acceptor: q.read_by_acceptor,
                by_one_other: q.read_by_one_other,
                by_several: q.read_by_several,
            });
            let report = pattern::classify_unix(l.inode, reads, &snapshot.acceptors, reads_seen);
            snapshot.patterns.insert(l.inode, report);
        }
        snapshot.netns = netns;
        snapshot.ring_events = self.ring.snapshot();
        let stalls = self.stall_notices().await;
        self.record_duration(started.elapsed());
        snapshot.health = self.health.clone();
        Poll {
            snapshot,
            episodes,
            stalls,
        }
    }

    /// Removes the listeners the filter leaves out; returns how many. Runs after the
    /// kernel's counts were read and pruned.
    fn exclude(&self, snapshot: &mut Snapshot) -> u64 {
        if self.filter.is_empty() {
            return 0;
        }
        // Each name looked up once per poll: a namespace may be re-created under it.
        let inodes_by_name: HashMap<&str, u64> = self
            .filter
            .netns_names()
            .into_iter()
            .filter_map(|name| {
                let path = std::path::Path::new(inventory::netns::NAMED_NETNS_DIR).join(name);
                let netns = inventory::netns::Netns::from_path(path).ok()?;
                Some((name, netns.inode()))
            })
            .collect();
        self.filter
            .exclude_from(snapshot, &|name| inodes_by_name.get(name).copied())
    }

    /// Every listener and every namespace's counters, from one visit per namespace.
    /// When our own namespace cannot be read, the last inventory stands rather than
    /// every listener reported gone; so do the listeners of another namespace that
    /// could not be read for a reason other than its disappearance (their kernel
    /// counts are pruned only once they are really gone).
    async fn inventory(&mut self) -> (Vec<Listener>, Vec<UnixListener>, Vec<NetnsStats>) {
        match tokio::task::spawn_blocking(inventory::scan_report).await {
            Ok(Ok(report)) => {
                if let Some(why) = &report.unix_error
                    && !self.unix_warned
                {
                    tracing::warn!("Unix-domain listeners are not listed: {why}");
                    self.unix_warned = true;
                }
                let report = self.carry_skipped(report);
                (report.listeners, report.unix_listeners, report.netns)
            }
            Ok(Err(e)) => {
                tracing::warn!("listener inventory failed: {}", crate::error_chain(&e));
                (
                    self.last_listeners.clone(),
                    self.last_unix.clone(),
                    Vec::new(),
                )
            }
            Err(e) => {
                tracing::warn!("listener inventory task failed: {e}");
                (
                    self.last_listeners.clone(),
                    self.last_unix.clone(),
                    Vec::new(),
                )
            }
        }
    }

    /// Keeps the last known listeners of namespaces skipped for a reason other than
    /// their disappearance, and records why namespaces were skipped.
    fn carry_skipped(&mut self, mut report: ScanReport) -> ScanReport {
        self.health.last_inventory_unix = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .ok()
            .map(|d| d.as_secs_f64());
        self.health.skipped_netns.clear();
        for skipped in &report.skipped {
            *self
                .health
                .skipped_netns
                .entry(skipped.error.reason())
                .or_default() += 1;
        }
        self.health.carried_listeners = carry_over(&self.last_listeners, &mut report);
        carry_over_unix(&self.last_unix, &mut report);
        self.visited = std::mem::take(&mut report.visited);
        self.kept = report
            .skipped
            .iter()
            .filter(|s| !s.error.is_vanished())
            .map(|s| s.netns)
            .collect();
        report
    }

    fn record_duration(&mut self, took: Duration) {
        let h = &mut self.health.poll_seconds;
        let secs = took.as_secs_f64();
        let bucket = h
            .bounds
            .iter()
            .position(|&b| secs <= b)
            .unwrap_or(h.bounds.len());
        if let Some(slot) = h.counts.get_mut(bucket) {
            *slot += 1;
        }
        h.sum += secs;
    }

    /// What the probes measured, attached to the inventory's listeners.
    fn add_kernel_view(
        &mut self,
        snapshot: &mut Snapshot,
        counted: Option<Result<KernelRead, ProbeError>>,
        inventory_started_ns: u64,
    ) {
        let Some(p) = &mut self.probes else {
            return;
        };
        let queue_len: HashMap<u64, u32> = snapshot
            .listeners
            .iter()
            .map(|l| (l.inode, l.accept_queue_len))
            .chain(
                snapshot
                    .unix_listeners
                    .iter()
                    .map(|l| (l.inode, l.queue_len)),
            )
            .collect();
        let live: HashSet<u64> = queue_len.keys().copied().collect();
        snapshot.maps = p.prune(
            &Live {
                queue_len: &queue_len,
                inventory_started_ns,
                now_ns: monotonic_ns(),
            },
            threads::exists,
        );
        let KernelRead {
            view,
            unix_connects,
        } = match counted {
            Some(Ok(read)) => read,
            Some(Err(e)) => {
                tracing::warn!("reading the probes' maps: {}", crate::error_chain(&e));
                return;
            }
            None => return,
        };
        // One program run per listener with connections waiting (a syscall each).
        let oldest = p.oldest_waits(
            &view.queues,
            snapshot
                .listeners
                .iter()
                .filter(|l| l.accept_queue_len > 0)
                .map(|l| l.inode),
        );
        queue_stats::attach_to_listeners(
            &mut snapshot.listeners,
            &queue_stats::KernelCounters {
                queues: &view.queues,
                oldest_wait_ns: &oldest,
                drops: &view.drops,
                reason_names: p.drop_reason_names(),
            },
        );
        let unix = unix_view(
            p,
            &mut snapshot.unix_listeners,
            &self.visited,
            &view,
            &unix_connects,
        );
        snapshot.maps.push(unix);
        snapshot.lost_by_cause = events_lost(&view, &self.ring);
        snapshot.events_lost = snapshot
            .lost_by_cause
            .iter()
            .fold(0, |sum, (_, n)| sum.saturating_add(*n));
        snapshot.read_errors = view.stats.read_errors;
        self.nagle
            .update(&view.conns, &snapshot.listeners, threads::process_comm);
        snapshot.acceptors = acceptors(&live, &view.acceptors).into();
        let resolved = self.netns_keys.resolve(
            Instant::now(),
            &view.transitions,
            &self.visited,
            &self.kept,
            p.net_keys_are_cookies(),
        );
        if let Err(e) = p.settle_transitions(&resolved.dead, &view.transitions) {
            tracing::warn!("namespace slots: {e}");
        }
        snapshot.transitions = resolved.transitions;
        snapshot.tcp_sends = view.sends;
    }

    /// The stall events since the last poll, with the local peer of each connection
    /// named where there is one.
    async fn stall_notices(&mut self) -> Vec<nagle::StallNotice> {
        let mut pending = Vec::new();
        while let Ok(ev) = self.stalls.try_recv() {
            pending.push(ev);
        }
        if pending.is_empty() {
            return Vec::new();
        }
        let queries: Vec<_> = pending
            .iter()
            .take(PEER_LOOKUPS_PER_POLL)
            .filter_map(|ev| {
                let (local, remote) = nagle::endpoints(ev)?;
                Some((u64::from(ev.netns), local, remote))
            })
            .collect();
        let peers: HashMap<_, _> = tokio::task::spawn_blocking(move || {
            let peers = inventory::local_peers(&queries);
            queries.into_iter().zip(peers).collect()
        })
        .await
        .unwrap_or_default();
        let now = text::rfc3339(SystemTime::now());
        pending
            .iter()
            .filter_map(|ev| {
                let (local, remote) = nagle::endpoints(ev)?;
                let peer = peers
                    .get(&(u64::from(ev.netns), local, remote))
                    .and_then(Option::as_ref)
                    .map(|o| nagle::Peer {
                        pid: o.pid,
                        comm: o.comm.clone(),
                    });
                nagle::notice(ev, now.clone(), peer)
            })
            .collect()
    }

    fn log_changes(&mut self, listeners: &[Listener]) {
        let current: BTreeMap<(u64, u64), String> = listeners
            .iter()
            .map(|l| ((l.netns, l.inode), describe(l)))
            .collect();
        if !self.first {
            for (key, what) in &current {
                if !self.known.contains_key(key) {
                    tracing::info!("listener appeared: {what}");
                }
            }
            for (key, what) in &self.known {
                if !current.contains_key(key) {
                    tracing::info!("listener gone: {what}");
                }
            }
        } else {
            tracing::info!("{} TCP listeners found", current.len());
        }
        self.first = false;
        self.known = current;
    }
}

/// The namespaces `report` skipped for a reason other than their disappearance: their
/// listeners of the last poll still stand.
fn unread_but_alive(report: &ScanReport) -> HashSet<u64> {
    report
        .skipped
        .iter()
        .filter(|s| !s.error.is_vanished())
        .map(|s| s.netns)
        .collect()
}

/// Adds to `report` the `last` listeners of the namespaces it skipped for a reason
/// other than their disappearance; returns how many.
fn carry_over(last: &[Listener], report: &mut ScanReport) -> u64 {
    let kept = unread_but_alive(report);
    let carried: Vec<Listener> = last
        .iter()
        .filter(|l| kept.contains(&l.netns))
        .cloned()
        .collect();
    let n = carried.len() as u64;
    if n > 0 {
        report.listeners.extend(carried);
        inventory::sort_listeners(&mut report.listeners);
    }
    n
}

/// [`carry_over`] for Unix listeners (not added to `carried_listeners`, which keeps
/// its documented TCP meaning).
fn carry_over_unix(last: &[UnixListener], report: &mut ScanReport) {
    let kept = unread_but_alive(report);
    let before = report.unix_listeners.len();
    report
        .unix_listeners
        .extend(last.iter().filter(|l| kept.contains(&l.netns)).cloned());
    if report.unix_listeners.len() > before {
        inventory::unix_diag::sort(&mut report.unix_listeners);
    }
}

/// What the probes' maps held at the start of a poll, before its inventory.
struct KernelRead {
    view: KernelView,
    unix_connects: Vec<(UnixConnectKey, UnixConnectStats)>,
}

impl KernelRead {
    fn of(p: &Probes) -> Result<Self, ProbeError> {
        Ok(Self {
            view: p.read()?,
            unix_connects: p.unix_connects(),
        })
    }
}

/// The Unix listeners' enqueues and accepts, their refused and waiting connects,
/// and the pruning of the refusals' map; returns its occupancy.
fn unix_view(
    p: &mut Probes,
    listeners: &mut [UnixListener],
    visited: &[VisitedNetns],
    view: &KernelView,
    entries: &[(UnixConnectKey, UnixConnectStats)],
) -> MapOccupancy {
    for l in listeners.iter_mut() {
        l.queue = view.queues.get(&l.inode).map(|q| UnixQueueStats {
            enqueues: q.enqueues,
            max_depth: q.max_depth,
            accepts: q.accepts,
            accept_wait: queue_stats::wait_histogram(q),
            read_by_acceptor: q.read_by_acceptor,
            read_by_one_other: q.read_by_one_other,
            read_by_several: q.read_by_several,
        });
    }
    let cookies = p.net_keys_are_cookies();
    let netns_of = |key: u64| {
        if cookies {
            visited
                .iter()
                .find(|v| v.cookie == Some(key))
                .map(|v| v.netns)
        } else {
            Some(key)
        }
    };
    // Without the connect probes, no listener gets counts: zeros would claim that
    // nothing was refused.
    if !p
        .status()
        .iter()
        .any(|s| s.name == "sys_exit_connect" && s.attached)
    {
        return p.prune_unix(std::collections::HashSet::new(), |_| true);
    }
    let unmatched = unix_refusals::attach(listeners, entries, netns_of, threads::cwd);
    p.prune_unix(unmatched, |tgid| threads::exists(tgid, tgid))
}

/// Which probes are attached; without probes, each says eBPF is unavailable.
pub fn probe_status(probes: Option<&Probes>) -> Vec<ProbeStatus> {
    match probes {
        Some(p) => p.status().to_vec(),
        None => crate::probes::table::PROBES
            .iter()
            .map(|spec| ProbeStatus {
                name: spec.name,
                attached: false,
                detail: "eBPF unavailable".into(),
            })
            .collect(),
    }
}

/// Everything that could not be recorded: the ring buffer's losses, full in-kernel
/// maps, stall events the poller's queue had no room for, and io_uring accepts that
/// could not be counted (into direct descriptors).
fn events_lost(view: &KernelView, ring: &RingCounters) -> Vec<(&'static str, u64)> {
    let s = &view.stats;
    vec![
        ("ring_buffer_full", s.events_lost),
        ("stall_queue_full", ring.stalls_lost()),
        ("map_full:TRANSITIONS", s.transitions_full),
        ("map_full:LISTENER_QUEUES", s.listeners_full),
        ("map_full:QUEUED", s.queued_full),
        ("map_full:ACCEPTORS", s.acceptors_full),
        ("map_full:ACCEPTING", s.accepting_full),
        ("map_full:DROP_REASONS", s.drop_reasons_full),
        ("map_full:READERS", s.readers_full),
        ("map_full:CONNS", s.conns_full),
        ("map_full:CONN_STATS", s.conn_stats_full),
        ("map_full:UNIX_CONNECTING", s.unix_connecting_full),
        ("map_full:UNIX_REFUSED", s.unix_refused_full),
        ("accept_unattributed", s.accepts_unattributed),
        ("unix_lookback_short", s.unix_lookback_short),
        ("unix_accept_unstamped", s.unix_unstamped),
        ("accept_direct_descriptor", s.uring_direct),
        ("program_recursion", s.recursion_misses),
    ]
}

/// Each namespace's listener sysctls, for the episodes' diagnosis.
fn limits_of(netns: &[NetnsStats]) -> impl Fn(u64) -> Limits + use<> {
    let limits: HashMap<u64, Limits> = netns
        .iter()
        .map(|n| {
            let limits = Limits {
                somaxconn: n.somaxconn,
                max_syn_backlog: n.tcp_max_syn_backlog,
                syncookies: n.tcp_syncookies,
            };
            (n.netns, limits)
        })
        .collect();
    move |netns| limits.get(&netns).copied().unwrap_or_default()
}

fn describe(l: &Listener) -> String {
    let owners: Vec<String> = l
        .owners
        .iter()
        .map(|o| format!("{}/\"{}\"", o.pid, text::escape(&o.comm)))
        .collect();
    format!(
        "{} netns {} socket {} owners [{}]",
        l.listen_addr(),
        l.netns,
        l.inode,
        owners.join(", ")
    )
}

/// `CLOCK_MONOTONIC` in nanoseconds: the clock of `bpf_ktime_get_ns`.
fn monotonic_ns() -> u64 {
    nix::time::clock_gettime(nix::time::ClockId::CLOCK_MONOTONIC)
        .map(|t| (t.tv_sec() as u64).saturating_mul(1_000_000_000) + t.tv_nsec() as u64)
        .unwrap_or(0)
}

/// The accepting threads of the listeners in the inventory, with their names and
/// scheduler state.
fn acceptors(live: &HashSet<u64>, counts: &[(AcceptorKey, u64)]) -> Vec<Acceptor> {
    counts
        .iter()
        .filter(|(k, _)| live.contains(&k.listener))
        .map(|(k, n)| {
            let t = threads::thread(k.pid, k.tid);
            Acceptor {
                socket: k.listener,
                pid: k.pid,
                tid: k.tid,
                comm: t.comm,
                accepts: *n,
                state: t.state,
                wchan: t.wchan,
            }
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::inventory::{InventoryError, SkippedNetns};

    fn listener(netns: u64, inode: u64) -> Listener {
        Listener::loopback_for_test(netns, 80, inode)
    }

    #[test]
    fn skipped_namespaces_keep_their_listeners_unless_they_died() {
        let last = [listener(1, 10), listener(2, 20), listener(3, 30)];
        let mut report = ScanReport {
            listeners: vec![listener(1, 10)],
            unix_listeners: Vec::new(),
            unix_error: None,
            netns: Vec::new(),
            visited: Vec::new(),
            skipped: vec![
                SkippedNetns {
                    netns: 2,
                    error: InventoryError::Setns {
                        netns: 2,
                        path: "/proc/9/ns/net".into(),
                        source: nix::Error::EMFILE,
                    },
                },
                SkippedNetns {
                    netns: 3,
                    error: InventoryError::NetnsGone { netns: 3 },
                },
            ],
        };
        assert_eq!(carry_over(&last, &mut report), 1);
        let inodes: Vec<u64> = report.listeners.iter().map(|l| l.inode).collect();
        assert_eq!(inodes, [10, 20], "namespace 3 died: its listener is gone");
    }
}
