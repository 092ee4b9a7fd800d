//! The daemon's HTTP endpoint: `GET /metrics` (Prometheus text exposition of the
//! current [`Snapshot`](crate::model::Snapshot)), the JSON API (`/api/listeners`,
//! `/api/nagle`, `/events/recent[?after=SEQ]`, see [`crate::export::event_log`]), `GET /`
//! (the status page, see [`crate::export::status_page`]), `GET /index.txt` (a
//! plain-text pointer to them), 404 for any other path (`routes`).
//!
//! axum routes; hyper serves. `axum::serve` builds hyper's connection builder itself
//! and gives it no timer, so [`serve`] drives the Router with hyper's HTTP/1
//! connection builder directly, each connection on its own task (a slow or broken
//! client never delays another scrape), with these bounds:
//!
//! - a client has [`HEADER_READ_TIMEOUT`] (`--http-header-timeout`) from its
//!   connection's start to send a whole request head (hyper's header-read timeout:
//!   trickling bytes does not extend it), and at most [`MAX_HEADER_SIZE`] of it
//!   (431 beyond); on a TLS port the handshake has as long again (`connection`);
//! - one request per connection (no keep-alive), so a connection's life is its
//!   head, then one answer; [`CONNECTION_TIME_LIMIT`] bounds the whole of it, which
//!   covers a client that never reads its answer;
//! - at most [`MAX_CONNECTIONS`] connections at once (fewer if the open-file limit
//!   is low); past that, new ones wait in the kernel's listen backlog;
//! - a client that half-closes right after its request still gets its answer
//!   (hyper's `half_close`).
//!
//! Who may see what: `--web-config-file` (exporter-toolkit's format, parsed by
//! [`crate::export::web_config`]) adds TLS (`tls`), basic authentication and a rate
//! limit (`auth`), held by [`LiveSettings`] and reloaded on SIGHUP or file change
//! (`live`); every request passes `access` (the loopback `Host` check against DNS
//! rebinding, rate limit, authentication, configured headers), and the JSON
//! answers omit process details unless the bind is loopback or requests
//! authenticate (`routes`).
//!
//! Privileges: the daemon runs this server on threads of their own that hold no
//! capability (`cmd::run` builds that runtime; `kernel::capabilities` explains the
//! per-thread layout). Nothing here needs one: the socket is bound before.
//!
//! On shutdown, the listener closes, idle connections close at once, and the
//! others get [`DRAIN_GRACE`] to finish their answer before [`serve`] closes them.

mod access;
mod auth;
mod connection;
mod live;
mod routes;
mod scrape_clock;
mod state;
pub mod tls;

use std::{future::Future, io, net::SocketAddr, sync::Arc, time::Duration};

use hyper::server::conn::http1;
use hyper_util::{rt::TokioTimer, server::graceful::GracefulShutdown};
use tokio::{
    net::{TcpListener, TcpStream},
    sync::{OwnedSemaphorePermit, Semaphore},
    task::{JoinError, JoinSet},
};

pub use self::{
    live::{LiveSettings, MAX_CONFIG_BYTES, WATCH_INTERVAL, WebConfigLoadError, WebSettings, load},
    routes::{Exposure, OMITTED_HEADER},
    state::SharedState,
};

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

/// Serves the endpoint on `listener` until `shutdown` completes, then stops
/// accepting, lets open connections finish for up to [`DRAIN_GRACE`], closes the
/// rest and returns. Accept errors are logged and retried (running out of file
/// descriptors: after a second), so this returns `Ok` once asked to stop. Plain
/// HTTP, the JSON API on, no web configuration: [`serve_with_options`] for more.
pub async fn serve(
    listener: TcpListener,
    state: SharedState,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> Result<(), HttpError> {
    serve_with_options(listener, state, shutdown, ServeOptions::default()).await
}

/// What the server offers beyond `/metrics`.
#[derive(Debug, Clone)]
pub struct ServeOptions {
    /// Serve the JSON API and the status page (`--no-api` turns them off).
    pub api: bool,
    /// TLS, authentication, headers and rate limit in force.
    pub web: Arc<LiveSettings>,
    /// How long a client has to send its request head (`--http-header-timeout`;
    /// [`HEADER_READ_TIMEOUT`] by default).
    pub header_read_timeout: Duration,
}

impl Default for ServeOptions {
    fn default() -> Self {
        Self {
            api: true,
            web: Arc::new(LiveSettings::default()),
            header_read_timeout: HEADER_READ_TIMEOUT,
        }
    }
}

/// [`serve`] with these options.
pub async fn serve_with_options(
    listener: TcpListener,
    state: SharedState,
    shutdown: impl Future<Output = ()> + Send + 'static,
    options: ServeOptions,
) -> Result<(), HttpError> {
    let limits = Limits::daemon(options.header_read_timeout);
    serve_with(listener, state, shutdown, options, limits).await
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
    fn daemon(header_read_timeout: Duration) -> Self {
        Self {
            header_read_timeout,
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
    options: ServeOptions,
    limits: Limits,
) -> Result<(), HttpError> {
    let local = listener.local_addr().ok();
    let addr = local.map_or_else(|| "an unknown address".to_owned(), |a| a.to_string());
    // An unknown address counts as not loopback: process details are then omitted.
    let loopback = local.is_some_and(|a| a.ip().to_canonical().is_loopback());
    let http = connection_builder(limits.header_read_timeout);
    let access = access::Access {
        live: Arc::clone(&options.web),
        loopback,
    };
    // Renders snapshots ahead of the scrapes expected; stopped when this returns.
    // Without it, every scrape renders for itself.
    let _prerender = state
        .start_prerender()
        .inspect_err(|e| tracing::warn!("no thread to render /metrics ahead of scrapes: {e}"))
        .ok();
    let router = routes::router(state, options.api)
        .layer(axum::middleware::from_fn_with_state(access, access::guard));
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
                let Some((slot, stream, peer)) = accepted else { break };
                // The TLS settings in force when the connection arrives.
                let tls = options.web.current().tls.clone();
                let connection = connection::serve(
                    stream,
                    peer,
                    tls,
                    http.clone(),
                    router.clone(),
                    graceful.watcher(),
                    limits.header_read_timeout,
                );
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

/// Waits for a free slot, then for a connection and its client's address. `None`
/// if the semaphore was closed (never: nothing closes it).
async fn accept(
    listener: &mut TcpListener,
    slots: &Arc<Semaphore>,
) -> Option<(OwnedSemaphorePermit, TcpStream, SocketAddr)> {
    let slot = Arc::clone(slots).acquire_owned().await.ok()?;
    // axum's accept logs and retries errors: at once for a connection reset before
    // it was accepted, after a second for the rest (EMFILE, ENFILE, ENOBUFS, ...).
    let (stream, peer) = axum::serve::Listener::accept(listener).await;
    Some((slot, stream, peer))
}

/// Drives one connection to its end or to [`CONNECTION_TIME_LIMIT`], then frees
/// its slot.
async fn finish(
    connection: impl Future<Output = Result<(), connection::ConnectionError>>,
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

#[cfg(test)]
mod tests;
#[cfg(test)]
mod web_tests;
