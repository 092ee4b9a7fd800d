//! `sockq run`: the daemon. Loads and attaches the probes, keeps the listener
//! inventory current (sock_diag every interval, and at once when a probe reports a
//! listener opening or closing), and serves the snapshot on the metrics port.

use std::{
    collections::{BTreeMap, HashMap},
    net::SocketAddr,
    path::PathBuf,
    sync::Arc,
    time::Duration,
};

use std::sync::atomic::{AtomicU64, Ordering};

use aya::maps::{MapData, RingBuf};
use collector_common::{
    listener::{AF_INET, AF_INET6, ListenerEvent},
    nagle::StallEvent,
    queue::AcceptorKey,
};
use tokio::{io::unix::AsyncFd, sync::Notify};

use crate::{
    episodes::{EpisodeEvent, EpisodeTracker, Limits},
    exposition::BuildInfo,
    http, inventory,
    model::{Acceptor, Listener, ProbeStatus, Snapshot, tcp_state_name},
    nagle,
    probes::{self, Event, Probes},
    queue_stats, text, tracefs,
};

/// Settings of `sockq run`.
#[derive(Debug, Clone)]
pub struct RunConfig {
    pub metrics_addr: SocketAddr,
    pub interval: Duration,
    pub probes: probes::LoadOptions,
}

/// Stall events waiting for the next poll; more are counted as lost.
const STALL_QUEUE: usize = 4096;

#[derive(Debug, thiserror::Error)]
pub enum DaemonError {
    #[error(transparent)]
    Http(#[from] http::HttpError),
    #[error("cannot start the async runtime")]
    Runtime(#[source] std::io::Error),
    #[error("cannot install the signal handler")]
    Signal(#[source] std::io::Error),
}

/// Starts the daemon. The privileged part runs on this one thread, before any other
/// exists: bind, attach the probes, then drop the capabilities no longer needed
/// (capabilities are per thread, and threads inherit them); only then the runtime.
pub fn run(config: RunConfig) -> Result<(), DaemonError> {
    // Files sockq might create (none today) are private.
    nix::sys::stat::umask(nix::sys::stat::Mode::from_bits_truncate(0o077));
    raise_fd_limit();
    // Bind first: a port in use is the most common start-up failure; say so before
    // touching the kernel.
    let listener = http::bind_std(config.metrics_addr)?;
    let missing = crate::privileges::check(&crate::privileges::FOR_RUN);
    if let Some(missing) = &missing {
        tracing::warn!("{missing}");
    }
    let tracefs_root = match tracefs::ensure_mounted() {
        Ok(root) => Some(root),
        Err(e) => {
            tracing::warn!("{e}; classic tracepoint fallbacks are unavailable");
            None
        }
    };
    // Try even with a capability missing: a container may grant just what eBPF needs.
    let (probes, events, polling) = match load_probes(tracefs_root, config.probes) {
        Ok((probes, events)) => (Some(probes), Some(events), None),
        Err(why) => (None, None, Some(why)),
    };
    match &polling {
        Some(why) => tracing::warn!(
            "polling mode: eBPF probes unavailable ({why}); listeners, queues, SYN queues \
             and drops still come from sock_diag and /proc/net/netstat every {:?}, but not \
             accept waits, enqueue depths, acceptors, patterns or Nagle stalls; `sockq \
             doctor` says what is missing",
            config.interval
        ),
        None => match crate::privileges::drop_after_attach() {
            Ok(kept) => tracing::info!(
                "probes attached; dropped every capability but {}",
                kept.join(", ")
            ),
            Err(e) => tracing::warn!("could not drop capabilities after attaching: {e}"),
        },
    }
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .map_err(DaemonError::Runtime)?;
    runtime.block_on(run_async(config, listener, probes, events, polling))
}

async fn run_async(
    config: RunConfig,
    listener: std::net::TcpListener,
    probes: Option<Probes>,
    events: Option<RingBuf<MapData>>,
    polling: Option<String>,
) -> Result<(), DaemonError> {
    let bind_error = |source| {
        DaemonError::Http(http::HttpError::Bind {
            addr: config.metrics_addr,
            source,
        })
    };
    let listener = tokio::net::TcpListener::from_std(listener).map_err(bind_error)?;
    let local = listener.local_addr().map_err(bind_error)?;

    let state = http::SharedState::new(BuildInfo::detect());
    // Until the first poll: no listeners yet, but which probes are attached.
    state.replace(Snapshot {
        probes: probe_status(probes.as_ref()),
        polling: polling.clone(),
        ..Snapshot::default()
    });

    let refresh = Arc::new(Notify::new());
    let (stall_tx, stall_rx) = tokio::sync::mpsc::channel(STALL_QUEUE);
    let ring = Arc::new(RingCounters::default());
    if let Some(events) = events {
        tokio::spawn(read_events(
            events,
            Arc::clone(&refresh),
            stall_tx,
            Arc::clone(&ring),
        ));
    }

    let (stop_tx, stop_rx) = tokio::sync::watch::channel(false);
    let server = {
        let state = state.clone();
        let mut stop_rx = stop_rx.clone();
        tokio::spawn(async move {
            let shutdown = async move {
                let _ = stop_rx.wait_for(|stop| *stop).await;
            };
            http::serve(listener, state, shutdown).await
        })
    };
    tracing::info!("serving metrics on http://{local}/metrics");

    let mut sigterm = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
        .map_err(DaemonError::Signal)?;
    let mut poller = Poller::new(probes, stall_rx, ring, polling);
    let mut ticker = tokio::time::interval(config.interval);
    let (mut peak_listeners, mut trims_left) = (0usize, 0u8);
    ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = ticker.tick() => {}
            () = refresh.notified() => {}
            _ = tokio::signal::ctrl_c() => break,
            _ = sigterm.recv() => break,
        }
        let (snapshot, events, stalls) = poller.poll().await;
        let listeners = snapshot.listeners.len();
        state.replace(snapshot);
        // After a big shrink, give the memory back once the old snapshot is gone, and
        // again over the next polls (a scrape may still have held a copy).
        if shrank_a_lot(peak_listeners, listeners) {
            trims_left = 3;
            peak_listeners = listeners;
        }
        peak_listeners = peak_listeners.max(listeners);
        if trims_left > 0 {
            trims_left -= 1;
            give_memory_back();
        }
        for notice in stalls {
            tracing::warn!("{}", notice.message);
            match serde_json::to_value(&notice) {
                Ok(json) => {
                    state.events().push(json);
                }
                Err(e) => tracing::warn!("encoding an event: {e}"),
            }
        }
        for event in events {
            match event.phase {
                "start" => tracing::warn!("{}", event.message),
                _ => tracing::info!("{}", event.message),
            }
            match serde_json::to_value(&event) {
                Ok(json) => {
                    state.events().push(json);
                }
                Err(e) => tracing::warn!("encoding an event: {e}"),
            }
        }
    }
    tracing::info!("shutting down; detaching probes");
    let _ = stop_tx.send(true);
    match server.await {
        Ok(Err(e)) => tracing::warn!("metrics server: {e}"),
        Err(e) => tracing::warn!("metrics server task: {e}"),
        Ok(Ok(())) => {}
    }
    drop(poller); // detaches the programs
    Ok(())
}

/// Whether the inventory shrank enough that the memory of the bigger one is worth
/// returning to the system (thousands of listeners cost ~20 KiB each at the peak).
fn shrank_a_lot(before: usize, now: usize) -> bool {
    before >= 1000 && now <= before / 2
}

/// Returns freed heap memory to the kernel. glibc keeps what a peak freed in its
/// arenas; after 10,000 listeners come and go, RSS would otherwise stay ~5x the idle
/// footprint.
fn give_memory_back() {
    #[cfg(target_env = "gnu")]
    // SAFETY: malloc_trim only releases free memory of the allocator's own arenas.
    unsafe {
        libc::malloc_trim(0);
    }
}

/// Raises the soft limit on open files to the hard one: every metrics client and
/// every namespace entered holds a descriptor, and 1024 is easy to reach when a
/// port is flooded with idle connections.
fn raise_fd_limit() {
    use nix::sys::resource::{Resource, getrlimit, setrlimit};
    match getrlimit(Resource::RLIMIT_NOFILE) {
        Ok((soft, hard)) if soft < hard => {
            if let Err(e) = setrlimit(Resource::RLIMIT_NOFILE, hard, hard) {
                tracing::warn!("cannot raise the open-file limit from {soft} to {hard}: {e}");
            }
        }
        Ok(_) => {}
        Err(e) => tracing::warn!("cannot read the open-file limit: {e}"),
    }
}

/// Loads and attaches the probes; the error says why none could be.
fn load_probes(
    tracefs_root: Option<PathBuf>,
    options: probes::LoadOptions,
) -> Result<(Probes, RingBuf<MapData>), String> {
    let (probes, events) = probes::kernel_info(tracefs_root.as_deref())
        .and_then(|kernel| Probes::load(&kernel, tracefs_root.as_deref(), options))
        .map_err(|e| crate::error_chain(&e))?;
    for s in probes.status() {
        if s.attached {
            tracing::info!("probe {} attached ({})", s.name, s.detail);
        } else {
            tracing::warn!("probe {} not attached: {}", s.name, s.detail);
        }
    }
    Ok((probes, events))
}

fn probe_status(probes: Option<&Probes>) -> Vec<ProbeStatus> {
    match probes {
        Some(p) => p.status().to_vec(),
        None => probes::PROBES
            .iter()
            .map(|spec| ProbeStatus {
                name: spec.name,
                attached: false,
                detail: "eBPF unavailable".into(),
            })
            .collect(),
    }
}

/// Builds each snapshot; remembers the previous listeners to log changes.
struct Poller {
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

/// Peers named per poll at most (each costs a sock_diag dump per namespace and a
/// /proc walk, shared by the batch); later stalls of a connection reuse the name.
const PEER_LOOKUPS_PER_POLL: usize = 32;

impl Poller {
    fn new(
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

    async fn poll(&mut self) -> (Snapshot, Vec<EpisodeEvent>, Vec<nagle::StallNotice>) {
        let scanned = tokio::task::spawn_blocking(|| {
            (
                inventory::scan(),
                inventory::netns_stats::scan_netns_stats(),
            )
        })
        .await;
        let (listeners, netns) = match scanned {
            Ok((Ok(listeners), netns)) => (listeners, netns),
            Ok((Err(e), netns)) => {
                // Keep the last inventory rather than report every listener gone.
                tracing::warn!("listener inventory failed: {}", crate::error_chain(&e));
                (self.last_listeners.clone(), netns)
            }
            Err(e) => {
                tracing::warn!("listener inventory task failed: {e}");
                (self.last_listeners.clone(), Vec::new())
            }
        };
        self.log_changes(&listeners);
        let mut snapshot = Snapshot {
            listeners,
            probes: probe_status(self.probes.as_ref()),
            polling: self.polling.clone(),
            ..Snapshot::default()
        };
        if let Some(p) = &mut self.probes {
            let live: std::collections::HashSet<u64> =
                snapshot.listeners.iter().map(|l| l.inode).collect();
            p.prune_acceptors(&live);
            match p.read() {
                Ok(view) => {
                    // Walking the queued connections costs a syscall per entry: only
                    // when some queue is full, where the oldest wait matters.
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
                    snapshot.acceptors = acceptors(&snapshot.listeners, &view.acceptors);
                    snapshot.transitions = view.transitions;
                    self.nagle
                        .update(&view.conns, &snapshot.listeners, process_comm);
                    snapshot.tcp_sends = view.sends;
                    let s = view.stats;
                    snapshot.events_lost = s.events_lost
                        + s.transitions_full
                        + s.listeners_full
                        + s.queued_full
                        + s.conns_full
                        + self.ring.stalls_lost.load(Ordering::Relaxed);
                }
                Err(e) => tracing::warn!("reading the probes' maps: {}", crate::error_chain(&e)),
            }
        }
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
        let events = self.episodes.update(
            std::time::Instant::now(),
            std::time::SystemTime::now(),
            &snapshot.listeners,
            &snapshot.acceptors,
            |netns| limits.get(&netns).copied().unwrap_or_default(),
        );
        for l in &mut snapshot.listeners {
            l.queue_full = self.episodes.is_full(l.netns, l.inode);
        }
        snapshot.patterns = crate::pattern::classify(&snapshot.listeners, &snapshot.acceptors);
        snapshot.netns = netns;
        snapshot.nagle = self.nagle.series();
        snapshot.ring_events = self.ring.snapshot();
        self.last_listeners.clone_from(&snapshot.listeners);
        let stalls = self.stall_notices().await;
        (snapshot, events, stalls)
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
        let peers = tokio::task::spawn_blocking(move || {
            let peers = inventory::local_peers(&queries);
            queries.into_iter().zip(peers).collect::<Vec<_>>()
        })
        .await
        .unwrap_or_default();
        let now = crate::episodes::rfc3339(std::time::SystemTime::now());
        pending
            .iter()
            .filter_map(|ev| {
                let (local, remote) = nagle::endpoints(ev)?;
                let peer = peers
                    .iter()
                    .find(|((netns, l, r), _)| {
                        *netns == u64::from(ev.netns) && *l == local && *r == remote
                    })
                    .and_then(|(_, owner)| owner.as_ref())
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

/// The accepting threads of the listeners in the inventory, with their names.
fn acceptors(listeners: &[Listener], counts: &[(AcceptorKey, u64)]) -> Vec<Acceptor> {
    let inodes: std::collections::HashSet<u64> = listeners.iter().map(|l| l.inode).collect();
    let mut out: Vec<Acceptor> = counts
        .iter()
        .filter(|(k, _)| inodes.contains(&k.listener))
        .map(|(k, n)| Acceptor {
            socket: k.listener,
            pid: k.pid,
            tid: k.tid,
            comm: std::fs::read(format!("/proc/{}/task/{}/comm", k.pid, k.tid))
                .map(|c| String::from_utf8_lossy(c.strip_suffix(b"\n").unwrap_or(&c)).into_owned())
                .unwrap_or_default(),
            accepts: *n,
            state: std::fs::read_to_string(format!("/proc/{}/task/{}/stat", k.pid, k.tid))
                .ok()
                .and_then(|s| thread_state(&s))
                .unwrap_or_default(),
            wchan: std::fs::read_to_string(format!("/proc/{}/task/{}/wchan", k.pid, k.tid))
                .ok()
                .filter(|w| w != "0")
                .unwrap_or_default(),
        })
        .collect();
    out.sort();
    out
}

/// The state letter of a `/proc/PID/task/TID/stat` line (the field after the
/// parenthesised comm, which may itself contain spaces and parentheses).
fn thread_state(stat: &str) -> Option<String> {
    let (_, rest) = stat.rsplit_once(')')?;
    rest.split_whitespace().next().map(str::to_owned)
}

/// `/proc/PID/comm` of a live process.
fn process_comm(pid: u32) -> Option<String> {
    if pid == 0 {
        return None;
    }
    let raw = std::fs::read(format!("/proc/{pid}/comm")).ok()?;
    Some(String::from_utf8_lossy(raw.strip_suffix(b"\n").unwrap_or(&raw)).into_owned())
}

/// Records read from the ring buffer, by kind, and stall events the poller's queue
/// had no room for.
#[derive(Debug, Default)]
struct RingCounters {
    listener: AtomicU64,
    queue_full: AtomicU64,
    stall: AtomicU64,
    stalls_lost: AtomicU64,
}

impl RingCounters {
    fn snapshot(&self) -> [u64; 3] {
        [
            self.listener.load(Ordering::Relaxed),
            self.queue_full.load(Ordering::Relaxed),
            self.stall.load(Ordering::Relaxed),
        ]
    }
}

/// Reads the ring buffer: logs listener lifecycle events and asks for an inventory
/// refresh; hands stall events to the poller.
async fn read_events(
    ring: RingBuf<MapData>,
    refresh: Arc<Notify>,
    stalls: tokio::sync::mpsc::Sender<StallEvent>,
    counters: Arc<RingCounters>,
) {
    // SAFETY: RingBuf owns its map fd for its whole life and always returns that fd.
    let registered =
        unsafe { AsyncFd::register_with_interest(ring, tokio::io::Interest::READABLE) };
    let mut fd = match registered {
        Ok(fd) => fd,
        Err(e) => {
            tracing::warn!("cannot poll the event ring buffer: {e}");
            return;
        }
    };
    loop {
        let mut guard = match fd.readable_mut().await {
            Ok(g) => g,
            Err(e) => {
                tracing::warn!("event ring buffer: {e}");
                return;
            }
        };
        let ring = guard.get_inner_mut();
        let mut any = false;
        while let Some(item) = ring.next() {
            match probes::decode_event(&item) {
                Some(Event::Listener(ev)) => {
                    counters.listener.fetch_add(1, Ordering::Relaxed);
                    log_listener_event(&ev);
                }
                Some(Event::QueueFull(ev)) => {
                    counters.queue_full.fetch_add(1, Ordering::Relaxed);
                    tracing::debug!(
                        "accept queue full: socket {} netns {} depth {} limit {}",
                        ev.listener,
                        ev.netns,
                        ev.depth,
                        ev.limit
                    );
                }
                Some(Event::Stall(ev)) => {
                    counters.stall.fetch_add(1, Ordering::Relaxed);
                    if stalls.try_send(ev).is_err() {
                        counters.stalls_lost.fetch_add(1, Ordering::Relaxed);
                    }
                    continue;
                }
                None => continue,
            }
            any = true;
        }
        guard.clear_ready();
        if any {
            refresh.notify_one();
        }
    }
}

fn log_listener_event(ev: &ListenerEvent) {
    let addr = event_addr(ev);
    let comm = text::escape_bytes(text::comm_bytes(&ev.comm));
    tracing::info!(
        "listener {} ({} -> {}): {} netns {} by pid {} tid {} comm \"{}\"",
        if ev.new_state == collector_common::tcp_state::TCP_LISTEN {
            "opened"
        } else {
            "closed"
        },
        tcp_state_name(ev.old_state),
        tcp_state_name(ev.new_state),
        addr,
        ev.netns,
        ev.pid,
        ev.tid,
        comm
    );
}

fn event_addr(ev: &ListenerEvent) -> String {
    match ev.family {
        AF_INET => {
            let ip = std::net::Ipv4Addr::new(ev.addr[0], ev.addr[1], ev.addr[2], ev.addr[3]);
            SocketAddr::new(ip.into(), ev.port).to_string()
        }
        AF_INET6 => SocketAddr::new(std::net::Ipv6Addr::from(ev.addr).into(), ev.port).to_string(),
        other => format!("family {other} port {}", ev.port),
    }
}

#[cfg(test)]
mod tests {
    use super::thread_state;

    #[test]
    fn memory_goes_back_after_a_big_shrink_only() {
        assert!(super::shrank_a_lot(10_000, 0));
        assert!(super::shrank_a_lot(2_000, 1_000));
        assert!(!super::shrank_a_lot(2_000, 1_001));
        assert!(
            !super::shrank_a_lot(999, 0),
            "small inventories are not worth a trim"
        );
    }

    #[test]
    fn state_after_a_hostile_comm() {
        assert_eq!(thread_state("42 (a) b) D 1 2 3").as_deref(), Some("D"));
        assert_eq!(thread_state("42 (x) S 1").as_deref(), Some("S"));
        assert_eq!(thread_state("garbage"), None);
    }
}
