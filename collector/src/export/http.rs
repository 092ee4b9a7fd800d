//! The daemon's HTTP endpoint: `GET /metrics` (Prometheus text exposition of the
//! current [`Snapshot`]), `GET /events/recent[?after=SEQ]` (notable events as JSON
//! lines, see [`crate::export::event_log`]), `GET /` (the status page, see
//! [`crate::export::status_page`]), `GET /index.txt` (a plain-text pointer to them), 404 for
//! any other path.
//!
//! axum serves each connection on its own task, so a slow or broken client never
//! delays another scrape. What it does not bound is how long such a client may hold
//! its connection (axum 0.8 builds hyper's connection builder itself and gives it no
//! timer, so hyper's header-read timeout is off): every connection is therefore
//! wrapped in `IdleTimeout`, which fails reads and writes that make no progress for
//! [`IDLE_TIMEOUT`]. A client trickling one byte at a time still resets it; the cost
//! of such a client is one idle task and one socket. On shutdown, open connections
//! get [`DRAIN_GRACE`] to finish before [`serve`] returns regardless.

use std::{
    future::{Future, IntoFuture},
    io,
    net::SocketAddr,
    pin::Pin,
    sync::{Arc, PoisonError, RwLock},
    task::{Context, Poll},
    time::Duration,
};

use axum::{
    Router,
    extract::{Query, State},
    http::{StatusCode, header},
    response::{IntoResponse, Response},
    routing::get,
};
use tokio::{
    io::{AsyncRead, AsyncWrite, ReadBuf},
    net::{TcpListener, TcpStream},
    sync::Notify,
    time::{Instant, Sleep},
};

use super::{
    event_log::EventLog,
    prometheus::{self, BuildInfo, CONTENT_TYPE, ExpositionError},
    status_page,
};
use crate::model::Snapshot;

/// How long a connection may make no progress (no byte read or written) before it
/// is closed: bounds slow or silent clients, including idle keep-alive connections.
pub const IDLE_TIMEOUT: Duration = Duration::from_secs(30);

/// How long open connections may take to finish after shutdown is requested.
pub const DRAIN_GRACE: Duration = Duration::from_secs(5);

/// Why the endpoint could not be set up or run.
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
    #[error("metrics server on {addr} stopped")]
    Serve {
        addr: String,
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
/// accepting, lets open connections finish for up to [`DRAIN_GRACE`], and returns.
pub async fn serve(
    listener: TcpListener,
    state: SharedState,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> Result<(), HttpError> {
    serve_with(listener, state, shutdown, IDLE_TIMEOUT, DRAIN_GRACE).await
}

async fn serve_with(
    listener: TcpListener,
    state: SharedState,
    shutdown: impl Future<Output = ()> + Send + 'static,
    idle_timeout: Duration,
    drain_grace: Duration,
) -> Result<(), HttpError> {
    let addr = listener
        .local_addr()
        .map_or_else(|_| "an unknown address".to_owned(), |a| a.to_string());
    let listener = IdleTimeoutListener {
        inner: listener,
        idle_timeout,
    };

    // axum owns the shutdown future; learn when it fires to bound the drain.
    let fired = Arc::new(Notify::new());
    let signal = {
        let fired = Arc::clone(&fired);
        async move {
            shutdown.await;
            // notify_one keeps a permit if nobody waits yet.
            fired.notify_one();
        }
    };
    let server = axum::serve(listener, router(state))
        .with_graceful_shutdown(signal)
        .into_future();
    tokio::pin!(server);

    let result = tokio::select! {
        result = &mut server => result,
        () = fired.notified() => match tokio::time::timeout(drain_grace, &mut server).await {
            Ok(result) => result,
            Err(_elapsed) => {
                tracing::warn!(
                    "metrics server on {addr}: connections still open {drain_grace:?} after \
                     shutdown; abandoning them"
                );
                Ok(())
            }
        },
    };
    result.map_err(|source| HttpError::Serve { addr, source })
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

/// A [`TcpListener`] whose connections close after [`IDLE_TIMEOUT`] without progress.
#[derive(Debug)]
struct IdleTimeoutListener {
    inner: TcpListener,
    idle_timeout: Duration,
}

impl axum::serve::Listener for IdleTimeoutListener {
    type Io = IdleTimeout<TcpStream>;
    type Addr = SocketAddr;

    async fn accept(&mut self) -> (Self::Io, Self::Addr) {
        // axum's impl for TcpListener logs and retries accept errors (EMFILE, ...).
        let (stream, addr) = axum::serve::Listener::accept(&mut self.inner).await;
        (IdleTimeout::new(stream, self.idle_timeout), addr)
    }

    fn local_addr(&self) -> io::Result<Self::Addr> {
        self.inner.local_addr()
    }
}

/// Wraps a stream so that an operation left pending longer than `timeout` after
/// the last completed one fails with [`io::ErrorKind::TimedOut`].
#[derive(Debug)]
struct IdleTimeout<T> {
    inner: T,
    timeout: Duration,
    deadline: Pin<Box<Sleep>>,
}

impl<T> IdleTimeout<T> {
    fn new(inner: T, timeout: Duration) -> Self {
        Self {
            inner,
            timeout,
            deadline: Box::pin(tokio::time::sleep(timeout)),
        }
    }

    /// Passes a completed operation through and pushes the deadline back; on a
    /// pending one, fails if the deadline has passed (else waits for it too).
    fn check<R>(&mut self, cx: &mut Context<'_>, poll: Poll<io::Result<R>>) -> Poll<io::Result<R>> {
        match poll {
            Poll::Ready(result) => {
                let next = Instant::now() + self.timeout;
                self.deadline.as_mut().reset(next);
                Poll::Ready(result)
            }
            Poll::Pending => match self.deadline.as_mut().poll(cx) {
                Poll::Ready(()) => Poll::Ready(Err(io::Error::new(
                    io::ErrorKind::TimedOut,
                    format!("no progress on the connection for {:?}", self.timeout),
                ))),
                Poll::Pending => Poll::Pending,
            },
        }
    }
}

impl<T: AsyncRead + Unpin> AsyncRead for IdleTimeout<T> {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        let poll = Pin::new(&mut this.inner).poll_read(cx, buf);
        this.check(cx, poll)
    }
}

impl<T: AsyncWrite + Unpin> AsyncWrite for IdleTimeout<T> {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        let this = self.get_mut();
        let poll = Pin::new(&mut this.inner).poll_write(cx, buf);
        this.check(cx, poll)
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        let this = self.get_mut();
        let poll = Pin::new(&mut this.inner).poll_write_vectored(cx, bufs);
        this.check(cx, poll)
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        let poll = Pin::new(&mut this.inner).poll_flush(cx);
        this.check(cx, poll)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        let poll = Pin::new(&mut this.inner).poll_shutdown(cx);
        this.check(cx, poll)
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

    async fn start(state: SharedState, idle: Duration, drain: Duration) -> Server {
        let listener = bind(SocketAddr::from((Ipv4Addr::LOCALHOST, 0)))
            .await
            .expect("bind");
        let addr = listener.local_addr().expect("local addr");
        let (stop, stopped) = oneshot::channel::<()>();
        let shutdown = async move {
            let _ = stopped.await;
        };
        let task = tokio::spawn(serve_with(listener, state, shutdown, idle, drain));
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
        let server = start(state(), IDLE_TIMEOUT, DRAIN_GRACE).await;
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
        let server = start(state(), IDLE_TIMEOUT, DRAIN_GRACE).await;
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
        let server = start(state(), Duration::from_millis(300), DRAIN_GRACE).await;
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

        // The idle timeout closes the slow connection, well before the 5 s read timeout.
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

    #[tokio::test]
    async fn shutdown_does_not_wait_for_stuck_clients() {
        let server = start(state(), Duration::from_secs(60), Duration::from_millis(200)).await;
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
