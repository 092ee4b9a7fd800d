//! `sockq run`: the daemon. Loads and attaches the probes, keeps the listener
//! inventory current (sock_diag every interval, and at once when a probe reports a
//! listener opening or closing), and serves the snapshot on the metrics port.
//!
//! Order matters: everything privileged happens on the first thread before any other
//! exists (bind, attach, drop capabilities: they are per thread and inherited), then
//! the runtime starts the poller and the ring reader, and a second runtime, whose
//! threads drop every capability as they start, the HTTP server and the reloads of
//! its web configuration (`kernel::capabilities` has the per-thread layout).

use std::{
    net::SocketAddr,
    path::{Path, PathBuf},
    sync::Arc,
    time::Duration,
};

use aya::maps::{MapData, RingBuf};
use tokio::sync::Notify;

use crate::{
    analysis::{
        listener_filter::ListenerFilter,
        poller::{Poll, Poller},
    },
    export::{
        http,
        prometheus::{BuildInfo, ClassicBuckets},
    },
    kernel::{capabilities, tracefs},
    model::Snapshot,
    probes::{self, Family, Probes, ring},
};

/// Settings of `sockq run`.
#[derive(Debug, Clone)]
pub struct RunConfig {
    pub metrics_addr: SocketAddr,
    pub interval: Duration,
    pub probes: probes::LoadOptions,
    /// `--web-config-file`.
    pub web_config_file: Option<PathBuf>,
    /// Serve the JSON API and the status page (not `--no-api`).
    pub api: bool,
    /// `--http-header-timeout`.
    pub http_header_timeout: Duration,
    /// `--fine-buckets`: the classic histogram buckets served.
    pub classic_buckets: ClassicBuckets,
    /// `--listeners-include`, `--listeners-exclude`.
    pub listeners: ListenerFilter,
}

/// Worker threads of the HTTP server's runtime.
const HTTP_THREADS: usize = 2;

/// Stall events waiting for the next poll; more are counted as lost.
const STALL_QUEUE: usize = 4096;

/// Inventories asked for by listener events start at least this long after the
/// previous poll began, and no sooner after it ended than it took: a
/// `listen()`/`close()` loop (any user can run one) then costs at most 10 full
/// inventories a second and at most half the daemon's time, however big the host,
/// and the changes of a burst are read together.
const MIN_REFRESH_GAP: Duration = Duration::from_millis(100);
/// The longest such wait (a poll that took seconds on a huge host).
const MAX_REFRESH_GAP: Duration = Duration::from_secs(5);

#[derive(Debug, thiserror::Error)]
pub enum DaemonError {
    #[error(transparent)]
    Http(#[from] http::HttpError),
    #[error("cannot start the async runtime")]
    Runtime(#[source] std::io::Error),
    #[error("cannot install the signal handler")]
    Signal(#[source] std::io::Error),
    #[error(transparent)]
    WebConfig(#[from] http::WebConfigLoadError),
    #[error("cannot read the web configuration without privileges: {0}")]
    Unprivileged(String),
}

/// What the privileged start-up hands to the runtime.
struct Started {
    listener: std::net::TcpListener,
    probes: Option<Probes>,
    events: Option<RingBuf<MapData>>,
    /// Why there are no probes, in polling mode.
    polling: Option<String>,
    web: Arc<http::LiveSettings>,
}

/// `sockq run`. Without the privileges eBPF needs it still works, in polling mode
/// (sock_diag and /proc); the daemon says so. A configuration that cannot be read
/// exits with status 2, as a bad flag does; `--print-config` prints it and exits.
pub fn main(args: super::RunArgs) -> std::process::ExitCode {
    let settings = match super::config::resolve(&args) {
        Ok(settings) => settings,
        Err(e) => {
            eprintln!("sockq: {}", crate::error_chain(&e));
            return std::process::ExitCode::from(2);
        }
    };
    if args.print_config {
        super::emit(&settings.to_toml());
        return std::process::ExitCode::SUCCESS;
    }
    if let Some(path) = &args.config {
        tracing::info!("configuration file {}", path.display());
    }
    match run(RunConfig::from(settings)) {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("sockq: {}", crate::error_chain(&e));
            std::process::ExitCode::FAILURE
        }
    }
}

impl From<super::config::Settings> for RunConfig {
    fn from(s: super::config::Settings) -> Self {
        Self {
            metrics_addr: s.metrics_addr,
            interval: s.interval,
            probes: probes::LoadOptions {
                nagle: s.nagle,
                unix_connect_waits: s.unix_connect_waits,
                conn_track_entries: s.conn_track_entries,
            },
            web_config_file: s.web_config_file,
            api: !s.no_api,
            http_header_timeout: s.http_header_timeout,
            classic_buckets: if s.fine_buckets {
                ClassicBuckets::Fine
            } else {
                ClassicBuckets::Short
            },
            listeners: s.listeners,
        }
    }
}

/// Starts the daemon. The privileged part runs on this one thread, before any other
/// exists: bind, attach the probes, then drop the capabilities no longer needed
/// (capabilities are per thread, and threads inherit them); only then the runtime.
pub fn run(config: RunConfig) -> Result<(), DaemonError> {
    tune_allocator();
    let started = start_privileged(&config)?;
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .map_err(DaemonError::Runtime)?;
    let http_runtime = http_runtime()?;
    let result = runtime.block_on(run_async(config, started, http_runtime.handle()));
    http_runtime.shutdown_timeout(http::DRAIN_GRACE);
    result
}

/// The HTTP server's runtime: each of its threads, workers and blocking pool alike,
/// empties its capability sets before it runs anything. A thread that cannot is
/// not left to serve: the daemon exits.
fn http_runtime() -> Result<tokio::runtime::Runtime, DaemonError> {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(HTTP_THREADS)
        .max_blocking_threads(4)
        .thread_name("sockq-http")
        .on_thread_start(|| {
            if let Err(e) = capabilities::drop_all_on_this_thread() {
                tracing::error!("cannot drop the capabilities of an HTTP thread ({e}); exiting");
                std::process::exit(1);
            }
        })
        .enable_all()
        .build()
        .map_err(DaemonError::Runtime)
}

/// Loads `--web-config-file` on a thread without capabilities, as every reload
/// will be (on the HTTP threads): what loads at start also reloads.
fn load_web_config(path: Option<&Path>) -> Result<Arc<http::LiveSettings>, DaemonError> {
    let Some(path) = path else {
        return Ok(Arc::new(http::LiveSettings::default()));
    };
    let loaded = std::thread::scope(|scope| {
        let thread = std::thread::Builder::new()
            .name("sockq-webconf".into())
            .spawn_scoped(scope, || {
                capabilities::drop_all_on_this_thread().map_err(DaemonError::Unprivileged)?;
                Ok::<_, DaemonError>(http::load(path)?)
            })
            .map_err(|e| DaemonError::Unprivileged(e.to_string()))?;
        thread
            .join()
            .map_err(|_| DaemonError::Unprivileged("the loading thread panicked".to_owned()))?
    });
    let (settings, notes) = loaded?;
    tracing::info!(
        "web configuration {}: {}, {}",
        path.display(),
        if settings.tls() { "TLS" } else { "no TLS" },
        if settings.authenticates() {
            "every request authenticates"
        } else {
            "no authentication"
        }
    );
    for note in notes {
        tracing::info!("web configuration: {note}");
    }
    Ok(Arc::new(http::LiveSettings::from_file(path, settings)))
}

fn start_privileged(config: &RunConfig) -> Result<Started, DaemonError> {
    // Files sockq might create (none today) are private.
    nix::sys::stat::umask(nix::sys::stat::Mode::from_bits_truncate(0o077));
    raise_fd_limit();
    // A malformed web configuration fails the start, before anything else.
    let web = load_web_config(config.web_config_file.as_deref())?;
    // Bind first: a port in use is the most common start-up failure; say so before
    // touching the kernel.
    let listener = http::bind_std(config.metrics_addr)?;
    if let Some(missing) = capabilities::check(&capabilities::FOR_RUN) {
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
    if let Some(why) = &polling {
        tracing::warn!(
            "polling mode: eBPF probes unavailable ({why}); listeners, queues, SYN queues \
             and drops still come from sock_diag and /proc/net/netstat every {:?}, but not \
             accept waits, enqueue depths, acceptors, patterns or Nagle stalls; `sockq \
             doctor` says what is missing",
            config.interval
        );
    }
    // Polling mode drops too: the inventory needs no more than with probes.
    let stage = if polling.is_some() {
        "polling mode"
    } else {
        "probes attached"
    };
    match capabilities::drop_after_attach() {
        Ok(kept) if kept.is_empty() => tracing::info!("{stage}; no capability kept"),
        Ok(kept) => tracing::info!("{stage}; dropped every capability but {}", kept.join(", ")),
        Err(e) => tracing::warn!("{stage}; could not drop capabilities: {e}"),
    }
    Ok(Started {
        listener,
        probes,
        events,
        polling,
        web,
    })
}

async fn run_async(
    config: RunConfig,
    started: Started,
    http_runtime: &tokio::runtime::Handle,
) -> Result<(), DaemonError> {
    let bind_error = |source| {
        DaemonError::Http(http::HttpError::Bind {
            addr: config.metrics_addr,
            source,
        })
    };
    // The listener and SIGHUP belong to the HTTP runtime, which polls them.
    let (listener, hangup) = {
        let _http = http_runtime.enter();
        let listener = tokio::net::TcpListener::from_std(started.listener).map_err(bind_error)?;
        let hangup = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::hangup())
            .map_err(DaemonError::Signal)?;
        (listener, hangup)
    };
    let local = listener.local_addr().map_err(bind_error)?;

    let (poller, refresh) = start_poller(
        started.probes,
        started.events,
        started.polling.clone(),
        config.interval,
    );
    let mut poller = poller.with_listener_filter(config.listeners.clone());
    let state = http::SharedState::with_options(
        BuildInfo::detect(),
        config.classic_buckets,
        config.interval,
    );
    // Until the first poll: no listeners yet, but which probes are attached.
    state.replace(Snapshot {
        probes: poller.probe_status(),
        polling: started.polling,
        ..Snapshot::default()
    });

    let (stop_tx, stop_rx) = tokio::sync::watch::channel(false);
    let stopped = move || {
        let mut stop_rx = stop_rx.clone();
        async move {
            let _ = stop_rx.wait_for(|stop| *stop).await;
        }
    };
    let scheme = if started.web.current().tls() {
        "https"
    } else {
        "http"
    };
    let options = http::ServeOptions {
        api: config.api,
        web: Arc::clone(&started.web),
        header_read_timeout: config.http_header_timeout,
    };
    let server = http_runtime.spawn(http::serve_with_options(
        listener,
        state.clone(),
        stopped(),
        options,
    ));
    http_runtime.spawn(Arc::clone(&started.web).watch(hangup, stopped()));
    tracing::info!("serving metrics on {scheme}://{local}/metrics");

    poll_until_stopped(&mut poller, &state, &refresh, config.interval).await?;
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

/// Starts the ring reader and the kernel-log forwarder; returns the poller and what
/// the ring reader notifies when a listener opens or closes.
fn start_poller(
    probes: Option<Probes>,
    events: Option<RingBuf<MapData>>,
    polling: Option<String>,
    interval: Duration,
) -> (Poller, Arc<Notify>) {
    let refresh = Arc::new(Notify::new());
    let (stall_tx, stall_rx) = tokio::sync::mpsc::channel(STALL_QUEUE);
    let counters = Arc::new(ring::RingCounters::default());
    if let Some(events) = events {
        tokio::spawn(ring::read_events(
            events,
            Arc::clone(&refresh),
            stall_tx,
            Arc::clone(&counters),
        ));
    }
    let mut loaded = probes;
    if let Some(log) = loaded.as_mut().and_then(Probes::take_kernel_log) {
        tokio::spawn(probes::kernel_log::forward(log));
    }
    let poller = Poller::new(loaded, stall_rx, counters, polling, interval);
    (poller, refresh)
}

/// Polls every `interval`, and when the ring reader asks (debounced: see
/// [`MIN_REFRESH_GAP`]), until SIGINT or SIGTERM; publishes each snapshot and its
/// events.
async fn poll_until_stopped(
    poller: &mut Poller,
    state: &http::SharedState,
    refresh: &Notify,
    interval: Duration,
) -> Result<(), DaemonError> {
    let mut sigterm = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
        .map_err(DaemonError::Signal)?;
    let mut ticker = tokio::time::interval(interval);
    ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut memory = MemoryTrim::default();
    let (mut last_poll, mut last_took) = (tokio::time::Instant::now(), Duration::ZERO);
    loop {
        tokio::select! {
            _ = ticker.tick() => {}
            () = refresh.notified() => {
                // Debounce: notifications meanwhile coalesce into this one poll.
                tokio::select! {
                    () = tokio::time::sleep_until(next_refresh(last_poll, last_took)) => {}
                    _ = tokio::signal::ctrl_c() => return Ok(()),
                    _ = sigterm.recv() => return Ok(()),
                }
            }
            _ = tokio::signal::ctrl_c() => return Ok(()),
            _ = sigterm.recv() => return Ok(()),
        }
        last_poll = tokio::time::Instant::now();
        let poll = poller.poll().await;
        last_took = last_poll.elapsed();
        publish(state, poll);
        memory.after_poll();
    }
}

/// When an event-driven poll may start after a poll that started at `last` and took
/// `took`.
fn next_refresh(last: tokio::time::Instant, took: Duration) -> tokio::time::Instant {
    last + refresh_gap(took)
}

/// How long after the start of a poll that took `took` the next event-driven one
/// may start: as long again as it took, once it ended.
fn refresh_gap(took: Duration) -> Duration {
    (took * 2).clamp(MIN_REFRESH_GAP, MAX_REFRESH_GAP)
}

/// Swaps the snapshot in and logs and records the poll's notable events.
fn publish(state: &http::SharedState, poll: Poll) {
    state.replace(poll.snapshot);
    for notice in poll.stalls {
        tracing::warn!("{}", notice.message);
        record(state, &notice);
    }
    for event in poll.episodes {
        match event.phase {
            "start" => tracing::warn!("{}", event.message),
            _ => tracing::info!("{}", event.message),
        }
        record(state, &event);
    }
}

fn record(state: &http::SharedState, event: &impl serde::Serialize) {
    match serde_json::to_value(event) {
        Ok(json) => {
            state.events().push(json);
        }
        Err(e) => tracing::warn!("encoding an event: {e}"),
    }
}

/// Gives freed heap memory back to the kernel whenever glibc has gained at least
/// [`TRIM_STEP`] of free memory since the last time: whoever freed it (the poller
/// dropping a big snapshot, a scrape finishing, series of gone listeners), and
/// whenever they did. glibc keeps what a peak freed in its arenas; after 10,000
/// listeners come and go, RSS would otherwise stay several times the idle footprint.
/// Checked at most once a second (`mallinfo2` walks the free lists).
#[derive(Debug)]
struct MemoryTrim {
    free_since_trim: usize,
    checked: Option<std::time::Instant>,
}

const TRIM_STEP: usize = 8 << 20;

impl Default for MemoryTrim {
    fn default() -> Self {
        Self {
            free_since_trim: heap_free_bytes(),
            checked: None,
        }
    }
}

impl MemoryTrim {
    fn after_poll(&mut self) {
        if self
            .checked
            .is_some_and(|at| at.elapsed() < Duration::from_secs(1))
        {
            return;
        }
        self.checked = Some(std::time::Instant::now());
        let free = heap_free_bytes();
        if worth_trimming(self.free_since_trim, free) {
            give_memory_back();
            self.free_since_trim = heap_free_bytes();
        } else {
            // Free memory taken again moves the mark down: what is freed next counts.
            self.free_since_trim = self.free_since_trim.min(free);
        }
    }
}

/// Whether glibc gained enough free memory since the last trim to trim again (the
/// pages of free chunks stay counted as free after a trim has returned them).
fn worth_trimming(free_since_trim: usize, free_now: usize) -> bool {
    free_now >= free_since_trim.saturating_add(TRIM_STEP)
}

/// The bytes glibc holds free in its arenas (0 with another allocator).
fn heap_free_bytes() -> usize {
    #[cfg(target_env = "gnu")]
    // SAFETY: mallinfo2 only reads the allocator's statistics.
    unsafe {
        libc::mallinfo2().fordblks
    }
    #[cfg(not(target_env = "gnu"))]
    0
}

/// Returns freed heap memory to the kernel.
fn give_memory_back() {
    #[cfg(target_env = "gnu")]
    // SAFETY: malloc_trim only releases free memory of the allocator's own arenas.
    unsafe {
        libc::malloc_trim(0);
    }
}

/// Keeps glibc from holding on to what a peak freed, before any thread exists.
/// - Two arenas, not eight per core: each thread that allocates under contention
///   would get an arena of its own, and the free memory a peak leaves in each is
///   fragmented apart from the others.
/// - A fixed mmap threshold: glibc raises it to the size of every big block freed
///   (a 13 MB scrape body), after which such blocks come from the arenas and their
///   pages stay behind; at 256 KiB they are mapped and unmapped on their own.
fn tune_allocator() {
    #[cfg(target_env = "gnu")]
    // SAFETY: mallopt only sets glibc's tunables; called before other threads exist.
    unsafe {
        libc::mallopt(libc::M_ARENA_MAX, 2);
        libc::mallopt(libc::M_MMAP_THRESHOLD, 256 * 1024);
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

/// Loads and attaches the probes; the error says why none could be. Probes left off
/// by choice (the Nagle family without `--nagle`) are one info line, not warnings.
fn load_probes(
    tracefs_root: Option<PathBuf>,
    options: probes::LoadOptions,
) -> Result<(Probes, RingBuf<MapData>), String> {
    let (probes, events) = probes::kernel_info(tracefs_root.as_deref())
        .and_then(|kernel| Probes::load(&kernel, tracefs_root.as_deref(), options))
        .map_err(|e| crate::error_chain(&e))?;
    let by_choice = |name: &str| {
        !options.nagle
            && probes::PROBES
                .iter()
                .any(|spec| spec.name == name && spec.family == Family::Nagle)
    };
    for s in probes.status() {
        if s.attached {
            tracing::info!("probe {} attached ({})", s.name, s.detail);
        } else if s.detail.starts_with(probes::NOT_NEEDED) {
            tracing::info!("probe {} {}", s.name, s.detail);
        } else if !by_choice(s.name) {
            tracing::warn!("probe {} not attached: {}", s.name, s.detail);
        }
    }
    if !options.nagle {
        tracing::info!("Nagle / delayed-ACK probes off (`--nagle` switches them on)");
    }
    Ok((probes, events))
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    #[test]
    fn event_polls_leave_the_daemon_half_its_time() {
        use super::refresh_gap;
        assert_eq!(refresh_gap(Duration::ZERO), Duration::from_millis(100));
        assert_eq!(
            refresh_gap(Duration::from_millis(200)),
            Duration::from_millis(400)
        );
        assert_eq!(refresh_gap(Duration::from_secs(60)), Duration::from_secs(5));
    }

    #[test]
    fn memory_goes_back_once_enough_was_freed_since_the_last_trim() {
        use super::{TRIM_STEP, worth_trimming};
        assert!(worth_trimming(0, TRIM_STEP));
        assert!(worth_trimming(1 << 20, (1 << 20) + TRIM_STEP));
        assert!(!worth_trimming(1 << 20, (1 << 20) + TRIM_STEP - 1));
    }
}
