//! The daemon's HTTP endpoint: `GET /metrics` (Prometheus text exposition of the
//! current [`Snapshot`]), `GET /events/recent[?after=SEQ]` (notable events as JSON
//! lines, see [`crate::export::event_log`]), `GET /` (the status page, see
//! [`crate::export::status_page`]), `GET /index.txt` (a plain-text pointer to them), 404 for
//! any other path.
//!
//! axum routes; hyper serves. `axum::serve` builds hyper's connection builder itself
//! and gives it no timer, so [`serve`] drives the Router with hyper's HTTP/1
//! connection builder directly, each connection on its own task (a slow or broken
//! client never delays another scrape), with these bounds:
//!
//! - a client has [`HEADER_READ_TIMEOUT`] from its connection's start to send a
//!   whole request head (hyper's header-read timeout: trickling bytes does not
//!   extend it), and at most [`MAX_HEADER_SIZE`] of it (431 beyond);
//! - one request per connection (no keep-alive), so a connection's life is its
//!   head, then one answer; [`CONNECTION_TIME_LIMIT`] bounds the whole of it, which
//!   covers a client that never reads its answer;
//! - at most [`MAX_CONNECTIONS`] connections at once (fewer if the open-file limit
//!   is low); past that, new ones wait in the kernel's listen backlog;
//! - a client that half-closes right after its request still gets its answer
//!   (hyper's `half_close`).
//!
//! On shutdown, the listener closes, idle connections close at once, and the
//! others get [`DRAIN_GRACE`] to finish their answer before [`serve`] closes them.

use std::{
    future::Future,
    io,
    net::SocketAddr,
    sync::{Arc, PoisonError, RwLock},
    time::Duration,
};

use axum::{
    Router,
    extract::{Query, State},
    http::{StatusCode, header},
    response::{IntoResponse, Response},
    routing::get,
};
use hyper::server::conn::http1;
use hyper_util::{
    rt::{TokioIo, TokioTimer},
    server::graceful::GracefulShutdown,
    service::TowerToHyperService,
};
use tokio::{
    net::{TcpListener, TcpStream},
    sync::{OwnedSemaphorePermit, Semaphore},
    task::{JoinError, JoinSet},
};

use super::{
    event_log::EventLog,
    prometheus::{self, BuildInfo, CONTENT_TYPE, ExpositionError},
    status_page,
};
use crate::model::Snapshot;

/// How long a client has, from the start of its connection, to send its whole
/// request head; then the connection is closed. Scrapers send their few hundred
/// bytes at once, in one segment, so 5 s leaves room for several retransmissions
/// (the first comes after 1 s). It also bounds how long idle or slowloris clients
/// hold the slots of [`MAX_CONNECTIONS`]: when they fill them, each frees up within
/// this, so a scrape queued behind them in the listen backlog gets in after about
/// as long, inside Prometheus's default 10 s scrape timeout.
pub const HEADER_READ_TIMEOUT: Duration = Duration::from_secs(5);

/// The longest a connection stays open, its answer included. Past the head (bounded
/// by [`HEADER_READ_TIMEOUT`]) a connection only writes one answer, and no scraper
/// waits longer than its scrape timeout (Prometheus's default is 10 s, rarely set
/// above a minute): an answer still unread after 60 s has nobody waiting for it, and
/// the client that does not read it must not hold a slot and its body forever. A
/// 10,000-listener exposition (about 12 MiB) gets through a 2 Mbit/s link in that.
pub const CONNECTION_TIME_LIMIT: Duration = Duration::from_secs(60);

/// The largest request head (request line and headers) accepted; larger ones get
/// 431. Scrapers send a few hundred bytes, a browser with cookies a few KiB (Tomcat's
/// default limit is 8 KiB). hyper's read buffer grows to about twice this at most,
/// instead of its default ~400 KiB, so [`MAX_CONNECTIONS`] slowloris clients cannot
/// make the daemon hold gigabytes.
pub const MAX_HEADER_SIZE: usize = 16 * 1024;

/// How many connections may be open at once; further ones wait in the listen
/// backlog until a slot frees up. Far above any real number of scrapers, status
/// pages and `sockq top`s, and above the 5,000 idle connections the abuse test
/// holds while a scrape must still answer at once. An idle connection costs the
/// daemon about 11 KiB (measured: hyper's first 8 KiB read buffer, its task), so a
/// full house about 90 MiB; slowloris ones up to twice [`MAX_HEADER_SIZE`] more
/// each. Never more than half the open-file limit, though (see `connection_cap`).
pub const MAX_CONNECTIONS: usize = 8192;

/// How long open connections may take to finish after shutdown is requested.
pub const DRAIN_GRACE: Duration = Duration::from_secs(5);

/// Why the endpoint could not be set up.
#[derive(Debug, thiserror::Error)]
pub enum HttpError {
    #[error("metrics address {addr} is already in use; pick another with --metrics-addr")]
    AddrInUse {
        addr: SocketAddr,
        #[source]
        source: io::Error,
    },
    #[error("cannot listen on metrics address {addr}")]
    Bind {
        addr: SocketAddr,
        #[source]
        source: io::Error,
    },
}

/// Binds the metrics address before the async runtime exists (`SO_REUSEADDR`, as
/// tokio's bind, so a restart binds at once), telling "port in use" apart from other
/// failures. Turn it into a tokio listener with `TcpListener::from_std`.
pub fn bind_std(addr: SocketAddr) -> Result<std::net::TcpListener, HttpError> {
    let error = |source: io::Error| {
        if source.kind() == io::ErrorKind::AddrInUse {
            HttpError::AddrInUse { addr, source }
        } else {
            HttpError::Bind { addr, source }
        }
    };
    let socket = socket2::Socket::new(
        socket2::Domain::for_address(addr),
        socket2::Type::STREAM,
        Some(socket2::Protocol::TCP),
    )
    .map_err(error)?;
    socket.set_reuse_address(true).map_err(error)?;
    socket.bind(&addr.into()).map_err(error)?;
    socket.listen(1024).map_err(error)?;
    socket.set_nonblocking(true).map_err(error)?;
    Ok(socket.into())
}

/// Binds the metrics address, telling "port in use" apart from other failures.
pub async fn bind(addr: SocketAddr) -> Result<TcpListener, HttpError> {
    TcpListener::bind(addr).await.map_err(|source| {
        if source.kind() == io::ErrorKind::AddrInUse {
            HttpError::AddrInUse { addr, source }
        } else {
            HttpError::Bind { addr, source }
        }
    })
}

/// The latest snapshot plus build information, shared between the poller (which
/// [`replace`](Self::replace)s the snapshot) and the HTTP handlers. Cheap to clone.
#[derive(Debug, Clone)]
pub struct SharedState {
    inner: Arc<Inner>,
}

#[derive(Debug)]
struct Inner {
    /// Swapped whole by the poller, under the lock only for the swap; readers clone
    /// the `Arc` and render without holding it.
    snapshot: RwLock<Arc<Snapshot>>,
    build: BuildInfo,
    events: EventLog,
}

impl SharedState {
    /// Starts with an empty snapshot.
    pub fn new(build: BuildInfo) -> Self {
        Self {
            inner: Arc::new(Inner {
                snapshot: RwLock::new(Arc::new(Snapshot::default())),
                build,
                events: EventLog::default(),
            }),
        }
    }

    /// Publishes a new snapshot; the next scrape renders it. The previous one is
    /// freed when the last request still rendering it is done.
    pub fn replace(&self, snapshot: Snapshot) {
        let snapshot = Arc::new(snapshot);
        // A writer that panicked left a whole Arc behind (assignment is not torn), so
        // the poison flag carries no information: ignore it.
        let previous = std::mem::replace(
            &mut *self
                .inner
                .snapshot
                .write()
                .unwrap_or_else(PoisonError::into_inner),
            snapshot,
        );
        // Dropped outside the lock: freeing 10,000 listeners takes a while.
        drop(previous);
    }

    /// The current snapshot, shared: no copy of its listeners.
    pub fn snapshot(&self) -> Arc<Snapshot> {
        Arc::clone(
            &self
                .inner
                .snapshot
                .read()
                .unwrap_or_else(PoisonError::into_inner),
        )
    }

    pub fn build(&self) -> &BuildInfo {
        &self.inner.build
    }

    /// The log of notable events served at `/events/recent`.
    pub fn events(&self) -> &EventLog {
        &self.inner.events
    }

    /// Renders the current snapshot; the lock is held only to clone the `Arc`.
    pub fn render(&self) -> Result<String, ExpositionError> {
        prometheus::render(&self.snapshot(), &self.inner.build)
    }
}

/// Serves the endpoint on `listener` until `shutdown` completes, then stops
/// accepting, lets open connections finish for up to [`DRAIN_GRACE`], closes the
/// rest and returns. Accept errors are logged and retried (running out of file
/// descriptors: after a second), so this returns `Ok` once asked to stop.
pub async fn serve(
    listener: TcpListener,
    state: SharedState,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> Result<(), HttpError> {
    serve_with(listener, state, shutdown, Limits::daemon()).await
}

/// The bounds [`serve`] applies (tests shrink them).
#[derive(Debug, Clone, Copy)]
struct Limits {
    header_read_timeout: Duration,
    connection_time_limit: Duration,
    max_connections: usize,
    drain_grace: Duration,
}

impl Limits {
    fn daemon() -> Self {
        Self {
            header_read_timeout: HEADER_READ_TIMEOUT,
            connection_time_limit: CONNECTION_TIME_LIMIT,
            max_connections: connection_cap(),
            drain_grace: DRAIN_GRACE,
        }
    }
}

/// [`MAX_CONNECTIONS`], or half the open-file limit if that is lower (the daemon
/// raises its soft limit to the hard one first): the poller opens sockets and
/// /proc files too and must find descriptors however many clients connect.
fn connection_cap() -> usize {
    use nix::sys::resource::{Resource, getrlimit};
    let soft = getrlimit(Resource::RLIMIT_NOFILE).map_or(1024, |(soft, _hard)| soft);
    usize::try_from(soft / 2)
        .unwrap_or(usize::MAX)
        .clamp(1, MAX_CONNECTIONS)
}

async fn serve_with(
    mut listener: TcpListener,
    state: SharedState,
    shutdown: impl Future<Output = ()> + Send + 'static,
    limits: Limits,
) -> Result<(), HttpError> {
    let addr = listener
        .local_addr()
        .map_or_else(|_| "an unknown address".to_owned(), |a| a.to_string());
    let http = connection_builder(limits.header_read_timeout);
    let router = router(state);
    // The cap. tower's limit layers count requests in flight through a Service (an
    // idle connection holds none) and hyper-util has no connection limit, so: a
    // semaphore permit taken before each accept and held by the connection's task,
    // as tokio's Semaphore documentation does for this very job.
    let slots = Arc::new(Semaphore::new(limits.max_connections));
    let graceful = GracefulShutdown::new();
    let mut connections = JoinSet::new();
    tokio::pin!(shutdown);

    loop {
        tokio::select! {
            biased;
            () = &mut shutdown => break,
            Some(done) = connections.join_next() => log_if_failed(done),
            accepted = accept(&mut listener, &slots) => {
                let Some((slot, stream)) = accepted else { break };
                let connection = graceful.watch(connection(&http, &router, stream));
                connections.spawn(finish(connection, slot, limits.connection_time_limit));
            }
        }
    }

    // New connections are refused from here on.
    drop(listener);
    if tokio::time::timeout(limits.drain_grace, graceful.shutdown())
        .await
        .is_err()
    {
        tracing::warn!(
            "metrics server on {addr}: connections still open {:?} after shutdown; \
             closing them",
            limits.drain_grace
        );
    }
    connections.shutdown().await;
    Ok(())
}

/// hyper's HTTP/1 connection settings (see the module documentation).
fn connection_builder(header_read_timeout: Duration) -> http1::Builder {
    let mut http = http1::Builder::new();
    http.timer(TokioTimer::new())
        .header_read_timeout(header_read_timeout)
        .max_header_size(MAX_HEADER_SIZE)
        // One request per connection: a scrape every few seconds gains nothing from
        // reuse, and a connection then never waits for a second request.
        .keep_alive(false)
        // Without it hyper reads the client's FIN while the handler runs, takes the
        // request for cut short and closes without answering.
        .half_close(true);
    http
}

/// hyper serving the Router on `stream`.
fn connection(
    http: &http1::Builder,
    router: &Router,
    stream: TcpStream,
) -> http1::Connection<TokioIo<TcpStream>, TowerToHyperService<Router>> {
    http.serve_connection(
        TokioIo::new(stream),
        TowerToHyperService::new(router.clone()),
    )
}

/// Waits for a free slot, then for a connection. `None` if the semaphore was
/// closed (never: nothing closes it).
async fn accept(
    listener: &mut TcpListener,
    slots: &Arc<Semaphore>,
) -> Option<(OwnedSemaphorePermit, TcpStream)> {
    let slot = Arc::clone(slots).acquire_owned().await.ok()?;
    // axum's accept logs and retries errors: at once for a connection reset before
    // it was accepted, after a second for the rest (EMFILE, ENFILE, ENOBUFS, ...).
    let (stream, _peer) = axum::serve::Listener::accept(listener).await;
    Some((slot, stream))
}

/// Drives one connection to its end or to [`CONNECTION_TIME_LIMIT`], then frees
/// its slot.
async fn finish(
    connection: impl Future<Output = Result<(), hyper::Error>>,
    slot: OwnedSemaphorePermit,
    time_limit: Duration,
) {
    match tokio::time::timeout(time_limit, connection).await {
        Ok(Ok(())) => {}
        // Timeouts, malformed requests, resets: the client's business.
        Ok(Err(e)) => tracing::debug!("metrics connection: {e}"),
        Err(_elapsed) => tracing::debug!("metrics connection open for {time_limit:?}: closed"),
    }
    drop(slot);
}

fn log_if_failed(done: Result<(), JoinError>) {
    if let Err(e) = done
        && e.is_panic()
    {
        tracing::error!("metrics connection task panicked: {e}");
    }
}

fn router(state: SharedState) -> Router {
    Router::new()
        .route("/", get(status_page::page))
        .route("/index.txt", get(status_page::index))
        .route("/metrics", get(metrics))
        .route("/events/recent", get(recent_events))
        .route("/api/listeners", get(api_listeners))
        .route("/api/nagle", get(api_nagle))
        .with_state(state)
}

/// Every listener with its accepting threads and execution pattern, as JSON (what
/// `sockq listeners` shows when a daemon runs).
async fn api_listeners(State(state): State<SharedState>) -> Response {
    let rows = crate::model::api::rows_from_snapshot(&state.snapshot());
    match serde_json::to_string(&rows) {
        Ok(json) => ([(header::CONTENT_TYPE, "application/json")], json).into_response(),
        Err(e) => (StatusCode::INTERNAL_SERVER_ERROR, format!("{e}\n")).into_response(),
    }
}

/// Nagle holds, delayed ACKs and stalls per (netns, listener, process), as JSON
/// (what `sockq top` shows below the listeners).
async fn api_nagle(State(state): State<SharedState>) -> Response {
    match serde_json::to_string(&state.snapshot().nagle) {
        Ok(json) => ([(header::CONTENT_TYPE, "application/json")], json).into_response(),
        Err(e) => (StatusCode::INTERNAL_SERVER_ERROR, format!("{e}\n")).into_response(),
    }
}

#[derive(Debug, serde::Deserialize)]
struct EventsQuery {
    #[serde(default)]
    after: u64,
}

async fn recent_events(
    State(state): State<SharedState>,
    Query(query): Query<EventsQuery>,
) -> Response {
    (
        [(header::CONTENT_TYPE, "application/x-ndjson")],
        state.events().since(query.after),
    )
        .into_response()
}

async fn metrics(State(state): State<SharedState>) -> Response {
    match state.render() {
        Ok(body) => ([(header::CONTENT_TYPE, CONTENT_TYPE)], body).into_response(),
        Err(e) => {
            tracing::error!("rendering /metrics: {e}");
            (StatusCode::INTERNAL_SERVER_ERROR, format!("{e}\n")).into_response()
        }
    }
}

#[cfg(test)]
mod tests {
    use std::{
        io::{Read as _, Write as _},
        net::{IpAddr, Ipv4Addr, TcpStream as StdTcpStream},
        time::Duration,
    };

    use tokio::{sync::oneshot, task::JoinHandle};

    use super::*;
    use crate::model::{Listener, Owner};

    fn state() -> SharedState {
        let state = SharedState::new(BuildInfo {
            version: "9.9.9".to_owned(),
            git_commit: "feed".to_owned(),
            kernel_release: "6.1.0-test".to_owned(),
        });
        state.replace(Snapshot {
            listeners: vec![Listener {
                netns: 1,
                addr: IpAddr::V4(Ipv4Addr::LOCALHOST),
                port: 9750,
                inode: 77,
                cookie: 1,
                accept_queue_len: 0,
                accept_queue_limit: 128,
                syn_queue_len: 0,
                drops: 0,
                owners: vec![Owner::new(1, "x")],
                kernel: None,
                queue_full: false,
            }],
            ..Snapshot::default()
        });
        state
    }

    struct Server {
        addr: SocketAddr,
        stop: oneshot::Sender<()>,
        task: JoinHandle<Result<(), HttpError>>,
    }

    /// The daemon's limits, with a fixed connection cap.
    const LIMITS: Limits = Limits {
        header_read_timeout: HEADER_READ_TIMEOUT,
        connection_time_limit: CONNECTION_TIME_LIMIT,
        max_connections: MAX_CONNECTIONS,
        drain_grace: DRAIN_GRACE,
    };

    async fn start(state: SharedState, limits: Limits) -> Server {
        let listener = bind(SocketAddr::from((Ipv4Addr::LOCALHOST, 0)))
            .await
            .expect("bind");
        let addr = listener.local_addr().expect("local addr");
        let (stop, stopped) = oneshot::channel::<()>();
        let shutdown = async move {
            let _ = stopped.await;
        };
        let task = tokio::spawn(serve_with(listener, state, shutdown, limits));
        Server { addr, stop, task }
    }

    /// Sends `request` over a fresh blocking connection and reads until the server
    /// closes it (or 5 s pass).
    async fn exchange(addr: SocketAddr, request: &'static [u8]) -> String {
        tokio::task::spawn_blocking(move || {
            let mut stream = StdTcpStream::connect(addr).expect("connect");
            stream
                .set_read_timeout(Some(Duration::from_secs(5)))
                .expect("timeout");
            stream.write_all(request).expect("write request");
            let mut response = Vec::new();
            // A reset after a 400 is an acceptable end too.
            let _ = stream.read_to_end(&mut response);
            String::from_utf8_lossy(&response).into_owned()
        })
        .await
        .expect("client task")
    }

    const GET_METRICS: &[u8] = b"GET /metrics HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n";

    fn assert_metrics_ok(response: &str) {
        assert!(response.starts_with("HTTP/1.1 200 OK\r\n"), "{response}");
        assert!(
            response
                .to_ascii_lowercase()
                .contains(&format!("content-type: {CONTENT_TYPE}\r\n")),
            "{response}"
        );
        assert!(
            response.contains("sockq_build_info{version=\"9.9.9\""),
            "{response}"
        );
        assert!(
            response.contains("listen_addr=\"127.0.0.1:9750\""),
            "{response}"
        );
    }

    #[tokio::test]
    async fn metrics_index_and_404() {
        let server = start(state(), LIMITS).await;
        assert_metrics_ok(&exchange(server.addr, GET_METRICS).await);

        let index = exchange(
            server.addr,
            b"GET / HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n",
        )
        .await;
        assert!(index.starts_with("HTTP/1.1 200 OK\r\n"), "{index}");
        assert!(index.contains("/metrics"), "{index}");

        let missing = exchange(
            server.addr,
            b"GET /nope HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n",
        )
        .await;
        assert!(missing.starts_with("HTTP/1.1 404 "), "{missing}");

        let _ = server.stop.send(());
        server.task.await.expect("server task").expect("serve");
    }

    #[tokio::test]
    async fn garbage_then_good_request() {
        let server = start(state(), LIMITS).await;
        let garbage = exchange(server.addr, b"\x00\xffGARBAGE {}\r\n\r\n").await;
        assert!(
            garbage.is_empty() || garbage.starts_with("HTTP/1.1 400 "),
            "{garbage:?}"
        );
        assert_metrics_ok(&exchange(server.addr, GET_METRICS).await);
        let _ = server.stop.send(());
        server.task.await.expect("server task").expect("serve");
    }

    #[tokio::test]
    async fn slow_client_does_not_block_and_times_out() {
        let limits = Limits {
            header_read_timeout: Duration::from_millis(300),
            ..LIMITS
        };
        let server = start(state(), limits).await;
        let addr = server.addr;
        // Half a request line, then silence.
        let slow = tokio::task::spawn_blocking(move || {
            let mut stream = StdTcpStream::connect(addr).expect("connect");
            stream
                .set_read_timeout(Some(Duration::from_secs(5)))
                .expect("timeout");
            stream.write_all(b"GET /metr").expect("write");
            stream
        })
        .await
        .expect("slow client");

        assert_metrics_ok(&exchange(server.addr, GET_METRICS).await);

        // The header-read timeout closes the slow connection, well before the 5 s read timeout.
        let closed = tokio::task::spawn_blocking(move || {
            let mut slow = slow;
            let started = std::time::Instant::now();
            let mut rest = Vec::new();
            let _ = slow.read_to_end(&mut rest);
            started.elapsed()
        })
        .await
        .expect("slow reader");
        assert!(
            closed < Duration::from_secs(4),
            "slow connection open for {closed:?}"
        );

        let _ = server.stop.send(());
        server.task.await.expect("server task").expect("serve");
    }

    /// Connects and sends `prefix` (maybe nothing), then waits for the server to
    /// close the connection; how long that took, or `None` after 5 s.
    async fn closed_after(addr: SocketAddr, prefix: &'static [u8]) -> Option<Duration> {
        tokio::task::spawn_blocking(move || {
            let mut stream = StdTcpStream::connect(addr).expect("connect");
            stream
                .set_read_timeout(Some(Duration::from_secs(5)))
                .expect("timeout");
            let started = std::time::Instant::now();
            stream.write_all(prefix).expect("write");
            let mut rest = Vec::new();
            stream
                .read_to_end(&mut rest)
                .ok()
                .map(|_| started.elapsed())
        })
        .await
        .expect("client task")
    }

    #[tokio::test]
    async fn header_read_timeout_closes_a_silent_connection() {
        let limits = Limits {
            header_read_timeout: Duration::from_millis(300),
            ..LIMITS
        };
        let server = start(state(), limits).await;
        let closed = closed_after(server.addr, b"").await;
        assert!(
            closed.is_some_and(|t| t >= Duration::from_millis(250)),
            "a silent connection was closed after {closed:?}, not after the 300 ms header timeout"
        );
        let _ = server.stop.send(());
        server.task.await.expect("server task").expect("serve");
    }

    #[tokio::test]
    async fn trickling_bytes_does_not_extend_the_header_deadline() {
        let limits = Limits {
            header_read_timeout: Duration::from_millis(300),
            ..LIMITS
        };
        let server = start(state(), limits).await;
        let addr = server.addr;
        let open_for = tokio::task::spawn_blocking(move || {
            let mut stream = StdTcpStream::connect(addr).expect("connect");
            let started = std::time::Instant::now();
            stream
                .write_all(b"GET /metrics HTTP/1.1\r\nX-Slow: ")
                .expect("write");
            // A byte every 50 ms, for up to 5 s, until a write fails.
            while started.elapsed() < Duration::from_secs(5) && stream.write_all(b"a").is_ok() {
                std::thread::sleep(Duration::from_millis(50));
            }
            started.elapsed()
        })
        .await
        .expect("trickling client");
        assert!(
            open_for < Duration::from_secs(2),
            "a trickling client kept its connection for {open_for:?}"
        );
        let _ = server.stop.send(());
        server.task.await.expect("server task").expect("serve");
    }

    #[tokio::test]
    async fn a_client_that_half_closes_after_its_request_gets_the_answer() {
        let server = start(state(), LIMITS).await;
        let addr = server.addr;
        let responses = tokio::task::spawn_blocking(move || {
            (0..50)
                .map(|_| {
                    let mut stream = StdTcpStream::connect(addr).expect("connect");
                    stream
                        .set_read_timeout(Some(Duration::from_secs(5)))
                        .expect("timeout");
                    stream.write_all(GET_METRICS).expect("write request");
                    stream
                        .shutdown(std::net::Shutdown::Write)
                        .expect("half-close");
                    let mut response = Vec::new();
                    let _ = stream.read_to_end(&mut response);
                    String::from_utf8_lossy(&response).into_owned()
                })
                .collect::<Vec<_>>()
        })
        .await
        .expect("client task");
        for response in &responses {
            assert_metrics_ok(response);
        }
        let _ = server.stop.send(());
        server.task.await.expect("server task").expect("serve");
    }

    #[tokio::test]
    async fn at_the_cap_a_scrape_waits_for_a_slot_then_gets_its_answer() {
        let limits = Limits {
            header_read_timeout: Duration::from_millis(500),
            max_connections: 2,
            ..LIMITS
        };
        let server = start(state(), limits).await;
        let addr = server.addr;
        let idle: Vec<StdTcpStream> = (0..2)
            .map(|_| StdTcpStream::connect(addr).expect("connect"))
            .collect();
        // Let the server accept both.
        tokio::time::sleep(Duration::from_millis(100)).await;
        let started = std::time::Instant::now();
        assert_metrics_ok(&exchange(addr, GET_METRICS).await);
        let waited = started.elapsed();
        assert!(
            waited >= Duration::from_millis(300),
            "answered after {waited:?} while two idle connections held both slots"
        );
        drop(idle);
        let _ = server.stop.send(());
        server.task.await.expect("server task").expect("serve");
    }

    /// A snapshot whose exposition is several MiB: more than the socket buffers hold.
    fn big_state() -> SharedState {
        let state = state();
        let one = state.snapshot().listeners[0].clone();
        state.replace(Snapshot {
            listeners: (0..20_000u16)
                .map(|i| Listener {
                    port: i,
                    inode: u64::from(i),
                    cookie: u64::from(i),
                    ..one.clone()
                })
                .collect(),
            ..Snapshot::default()
        });
        state
    }

    #[tokio::test]
    async fn a_client_that_never_reads_its_answer_is_closed_at_the_time_limit() {
        let limits = Limits {
            connection_time_limit: Duration::from_millis(500),
            max_connections: 1,
            ..LIMITS
        };
        let server = start(big_state(), limits).await;
        let addr = server.addr;
        let deaf = tokio::task::spawn_blocking(move || {
            let socket = socket2::Socket::new(socket2::Domain::IPV4, socket2::Type::STREAM, None)
                .expect("socket");
            socket.set_recv_buffer_size(4096).expect("SO_RCVBUF");
            socket.connect(&addr.into()).expect("connect");
            let mut stream = StdTcpStream::from(socket);
            stream.write_all(GET_METRICS).expect("write request");
            stream
        })
        .await
        .expect("deaf client");
        // Let the server take it and start answering.
        tokio::time::sleep(Duration::from_millis(100)).await;
        let started = std::time::Instant::now();
        let response = exchange(addr, GET_METRICS).await;
        let waited = started.elapsed();
        assert!(
            response.starts_with("HTTP/1.1 200 OK\r\n"),
            "{:.200}",
            response
        );
        assert!(
            waited >= Duration::from_millis(300),
            "answered after {waited:?}, though a client that reads nothing held the only slot"
        );
        drop(deaf);
        let _ = server.stop.send(());
        server.task.await.expect("server task").expect("serve");
    }

    #[tokio::test]
    async fn shutdown_does_not_wait_for_stuck_clients() {
        let limits = Limits {
            header_read_timeout: Duration::from_secs(60),
            drain_grace: Duration::from_millis(200),
            ..LIMITS
        };
        let server = start(state(), limits).await;
        let addr = server.addr;
        let stuck = tokio::task::spawn_blocking(move || {
            let mut stream = StdTcpStream::connect(addr).expect("connect");
            stream
                .write_all(b"GET /metrics HTTP/1.1\r\nHost:")
                .expect("write");
            stream
        })
        .await
        .expect("stuck client");
        // Let the server accept it before shutting down.
        tokio::time::sleep(Duration::from_millis(100)).await;
        let _ = server.stop.send(());
        let done = tokio::time::timeout(Duration::from_secs(5), server.task).await;
        assert!(matches!(done, Ok(Ok(Ok(())))), "{done:?}");
        drop(stuck);
    }

    #[tokio::test]
    async fn address_in_use_is_explained() {
        let first = bind(SocketAddr::from((Ipv4Addr::LOCALHOST, 0)))
            .await
            .expect("bind");
        let addr = first.local_addr().expect("local addr");
        let err = bind(addr).await.expect_err("second bind must fail");
        assert!(matches!(err, HttpError::AddrInUse { .. }), "{err:?}");
        assert_eq!(
            err.to_string(),
            format!("metrics address {addr} is already in use; pick another with --metrics-addr")
        );
    }

    #[test]
    fn poisoned_lock_still_renders() {
        let state = state();
        let poisoner = state.clone();
        let _ = std::thread::spawn(move || {
            let _guard = poisoner.inner.snapshot.write();
            panic!("poison the snapshot lock");
        })
        .join();
        assert!(state.inner.snapshot.is_poisoned());
        assert!(state.render().expect("render").contains("sockq_build_info"));
        state.replace(Snapshot::default());
        assert!(state.snapshot().listeners.is_empty());
    }
}
