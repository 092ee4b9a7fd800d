//! The poller: builds each [`Snapshot`] from one inventory (every namespace visited
//! once) and one read of the probes' maps, then runs the analyses over it (queue
//! statistics, episodes, patterns, Nagle series). It owns the state that lives across
//! polls: the episode tracker, the Nagle accumulator, the last inventory.

use std::{
    collections::{BTreeMap, HashMap, HashSet},
    sync::Arc,
    time::{Instant, SystemTime},
};

use collector_common::{nagle::StallEvent, queue::AcceptorKey};

use super::{
    episodes::{EpisodeEvent, EpisodeTracker, Limits},
    nagle, pattern, queue_stats,
};
use crate::{
    inventory::{self, threads},
    model::{Acceptor, Listener, NetnsStats, ProbeStatus, Snapshot},
    probes::{KernelView, Probes, ring::RingCounters},
    text,
};

/// Peers named per poll at most (each costs a sock_diag dump per namespace and a
/// /proc walk, shared by the batch); later stalls of a connection reuse the name.
const PEER_LOOKUPS_PER_POLL: usize = 32;

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
    last_listeners: Vec<Listener>,
    nagle: nagle::Accumulator,
    stalls: tokio::sync::mpsc::Receiver<StallEvent>,
    /// What the ring buffer reader received and dropped.
    ring: Arc<RingCounters>,
    /// Why there are no probes, in polling mode.
    polling: Option<String>,
}

impl Poller {
    pub fn new(
        probes: Option<Probes>,
        stalls: tokio::sync::mpsc::Receiver<StallEvent>,
        ring: Arc<RingCounters>,
        polling: Option<String>,
    ) -> Self {
        Self {
            probes,
            known: BTreeMap::new(),
            first: true,
            episodes: EpisodeTracker::default(),
            last_listeners: Vec::new(),
            nagle: nagle::Accumulator::default(),
            stalls,
            ring,
            polling,
        }
    }

    /// Which probes are attached, and how (all "eBPF unavailable" in polling mode).
    pub fn probe_status(&self) -> Vec<ProbeStatus> {
        probe_status(self.probes.as_ref())
    }

    pub async fn poll(&mut self) -> Poll {
        let (listeners, netns) = self.inventory().await;
        self.log_changes(&listeners);
        let mut snapshot = Snapshot {
            listeners,
            probes: self.probe_status(),
            polling: self.polling.clone(),
            ..Snapshot::default()
        };
        self.add_kernel_view(&mut snapshot);
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
        snapshot.patterns = pattern::classify(&snapshot.listeners, &snapshot.acceptors);
        snapshot.netns = netns;
        snapshot.nagle = self.nagle.series();
        snapshot.ring_events = self.ring.snapshot();
        self.last_listeners.clone_from(&snapshot.listeners);
        let stalls = self.stall_notices().await;
        Poll {
            snapshot,
            episodes,
            stalls,
        }
    }

    /// Every listener and every namespace's counters, from one visit per namespace.
    /// When our own namespace cannot be read, the last inventory stands rather than
    /// every listener reported gone.
    async fn inventory(&self) -> (Vec<Listener>, Vec<NetnsStats>) {
        match tokio::task::spawn_blocking(inventory::scan_report).await {
            Ok(Ok(report)) => (report.listeners, report.netns),
            Ok(Err(e)) => {
                tracing::warn!("listener inventory failed: {}", crate::error_chain(&e));
                (self.last_listeners.clone(), Vec::new())
            }
            Err(e) => {
                tracing::warn!("listener inventory task failed: {e}");
                (self.last_listeners.clone(), Vec::new())
            }
        }
    }

    /// What the probes measured, attached to the inventory's listeners.
    fn add_kernel_view(&mut self, snapshot: &mut Snapshot) {
        let Some(p) = &mut self.probes else {
            return;
        };
        let live: HashSet<u64> = snapshot.listeners.iter().map(|l| l.inode).collect();
        p.prune_acceptors(&live);
        let view = match p.read() {
            Ok(view) => view,
            Err(e) => {
                tracing::warn!("reading the probes' maps: {}", crate::error_chain(&e));
                return;
            }
        };
        // Walking the queued connections costs a syscall per entry: only when some
        // queue is full, where the oldest wait matters.
        let any_full = snapshot
            .listeners
            .iter()
            .any(|l| l.accept_queue_len > l.accept_queue_limit);
        let oldest = if any_full {
            p.oldest_queued()
        } else {
            HashMap::new()
        };
        queue_stats::attach_to_listeners(
            &mut snapshot.listeners,
            &queue_stats::KernelCounters {
                queues: &view.queues,
                oldest_enqueue_ns: &oldest,
                now_ns: monotonic_ns(),
                drops: &view.drops,
                reason_names: p.drop_reason_names(),
            },
        );
        snapshot.events_lost = events_lost(&view, &self.ring);
        self.nagle
            .update(&view.conns, &snapshot.listeners, threads::process_comm);
        snapshot.acceptors = acceptors(&live, &view.acceptors).into();
        snapshot.transitions = view.transitions;
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
/// maps, and stall events the poller's queue had no room for.
fn events_lost(view: &KernelView, ring: &RingCounters) -> u64 {
    let s = &view.stats;
    s.events_lost
        + s.transitions_full
        + s.listeners_full
        + s.queued_full
        + s.conns_full
        + s.acceptors_full
        + s.accepting_full
        + s.drop_reasons_full
        + s.readers_full
        + s.conn_stats_full
        + ring.stalls_lost()
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
