use std::{
    io::{Read as _, Write as _},
    net::{IpAddr, Ipv4Addr, TcpStream as StdTcpStream},
    time::Duration,
};

use tokio::{sync::oneshot, task::JoinHandle};

use super::*;
use crate::{
    export::prometheus::{BuildInfo, CONTENT_TYPE, Format},
    model::{Listener, Owner, Snapshot},
};

fn state() -> SharedState {
    state_stale_for(Duration::from_secs(1))
}

/// [`state`], with bodies servable `stale_for` after their snapshot was replaced.
fn state_stale_for(stale_for: Duration) -> SharedState {
    let state = SharedState::with_options(
        BuildInfo {
            version: "9.9.9".to_owned(),
            git_commit: "feed".to_owned(),
            kernel_release: "6.1.0-test".to_owned(),
        },
        crate::export::prometheus::ClassicBuckets::Short,
        stale_for,
    );
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
    let task = tokio::spawn(serve_with(
        listener,
        state,
        shutdown,
        ServeOptions::default(),
        limits,
    ));
    Server { addr, stop, task }
}

/// Sends `request` over a fresh blocking connection and reads until the server
/// closes it (or 5 s pass).
async fn exchange(addr: SocketAddr, request: &'static [u8]) -> String {
    String::from_utf8_lossy(&exchange_bytes(addr, request).await).into_owned()
}

/// [`exchange`], the answer as bytes.
async fn exchange_bytes(addr: SocketAddr, request: &'static [u8]) -> Vec<u8> {
    tokio::task::spawn_blocking(move || {
        let mut stream = StdTcpStream::connect(addr).expect("connect");
        stream
            .set_read_timeout(Some(Duration::from_secs(5)))
            .expect("timeout");
        stream.write_all(request).expect("write request");
        let mut response = Vec::new();
        // A reset after a 400 is an acceptable end too.
        let _ = stream.read_to_end(&mut response);
        response
    })
    .await
    .expect("client task")
}

const GET_METRICS: &[u8] = b"GET /metrics HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n";

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
        b"GET / HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n",
    )
    .await;
    assert!(index.starts_with("HTTP/1.1 200 OK\r\n"), "{index}");
    assert!(index.contains("/metrics"), "{index}");

    let missing = exchange(
        server.addr,
        b"GET /nope HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n",
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
    let state = big_state();
    // Rendered before the clients come (as a scrape before them would): in this
    // single-threaded runtime a render blocks everything, the clock of the time
    // limit included, and the wait measured must be the deaf client's alone.
    let _ = state.render(Format::Text, false).expect("render");
    let server = start(state, limits).await;
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
    let text = state.render(Format::Text, false).expect("render");
    assert!(String::from_utf8_lossy(&text).contains("sockq_build_info"));
    state.replace(Snapshot::default());
    assert!(state.snapshot().listeners.is_empty());
}

const GET_METRICS_GZIP: &[u8] =
    b"GET /metrics HTTP/1.1\r\nHost: localhost\r\nAccept-Encoding: gzip\r\nConnection: close\r\n\r\n";

/// Whether the current snapshot of `state` gets a gzipped text body within 2 s.
async fn prerendered(state: &SharedState) -> bool {
    for _ in 0..40 {
        if state.rendered_kinds().contains(&(Format::Text, true)) {
            return true;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    false
}

#[tokio::test]
async fn a_snapshot_a_scrape_is_expected_of_is_rendered_when_published() {
    let state = state();
    let server = start(state.clone(), LIMITS).await;
    // No scraper yet: a publish renders nothing.
    tokio::time::sleep(Duration::from_millis(100)).await;
    state.replace(Snapshot::default());
    assert!(!prerendered(&state).await, "rendered with nobody scraping");
    // A scraper every 300 ms, against publishes 2 s apart: due at each.
    for _ in 0..2 {
        let answer = exchange_bytes(server.addr, GET_METRICS_GZIP).await;
        assert!(answer.starts_with(b"HTTP/1.1 200 OK\r\n"));
        tokio::time::sleep(Duration::from_millis(300)).await;
    }
    state.replace(Snapshot::default());
    assert!(
        prerendered(&state).await,
        "not rendered ahead of the scrape"
    );
    // The scrape is served that body.
    let ahead = state.render(Format::Text, true).expect("render");
    let answer = exchange_bytes(server.addr, GET_METRICS_GZIP).await;
    assert!(
        answer.ends_with(&ahead),
        "the scrape was not served the body rendered ahead"
    );
    let (head, _) = split_answer(&answer);
    assert!(head.contains("\r\nsockq-body: made\r\n"), "{head}");
    let _ = server.stop.send(());
    server.task.await.expect("server task").expect("serve");
}

#[test]
fn a_scrape_while_its_kind_renders_is_served_the_previous_snapshot() {
    let state = state_stale_for(Duration::ZERO);
    let kind = (Format::Text, false);
    let before = state.render(kind.0, kind.1).expect("render");
    state.replace(Snapshot::default());
    // Another thread is rendering the new snapshot: no wait, the body before.
    state.set_rendering(kind, true);
    let during = state.render(kind.0, kind.1).expect("render");
    assert_eq!(during.as_ptr(), before.as_ptr(), "not the previous body");
    state.set_rendering(kind, false);
    let after = state.render(kind.0, kind.1).expect("render");
    assert_ne!(
        after, before,
        "the new snapshot renders once the other is done"
    );
    assert_eq!(state.rendered_kinds(), [kind]);
    // Two polls without a scrape: nothing older than the snapshot before is kept.
    state.replace(Snapshot::default());
    assert!(
        state.keeps(kind),
        "the previous snapshot's body goes too soon"
    );
    state.replace(Snapshot::default());
    assert!(!state.keeps(kind), "a body two polls old is kept");
}

#[test]
fn a_body_is_served_while_rendering_up_to_the_poll_interval_after_its_snapshot_went() {
    use super::state::Served;
    let state = state_stale_for(Duration::from_millis(300));
    let kind = (Format::Text, false);
    let who = IpAddr::V4(Ipv4Addr::LOCALHOST);
    let (old, _) = state.scrape(who, kind.0, kind.1).expect("scrape");
    // Two polls in quick succession (event-driven ones under churn), while the
    // render is under way: the body of two snapshots back is still served.
    state.replace(Snapshot::default());
    state.replace(Snapshot::default());
    assert!(state.keeps(kind), "dropped within the interval");
    state.set_rendering(kind, true);
    let (during, served) = state.scrape(who, kind.0, kind.1).expect("scrape");
    assert_eq!((during.as_ptr(), served), (old.as_ptr(), Served::Previous));
    // Once it went more than the interval ago, it is not: the scrape waits for the
    // render under way, then renders the current snapshot (the other made nothing).
    std::thread::sleep(Duration::from_millis(400));
    let waiter = {
        let state = state.clone();
        std::thread::spawn(move || state.scrape(who, kind.0, kind.1))
    };
    std::thread::sleep(Duration::from_millis(100));
    assert!(!waiter.is_finished(), "served a body older than allowed");
    state.set_rendering(kind, false);
    let (after, served) = waiter.join().expect("waiter").expect("scrape");
    assert_eq!(served, Served::Rendered);
    assert!(!String::from_utf8_lossy(&after).contains("127.0.0.1:9750"));
    // The body of the snapshot just before is served however long ago that went;
    // a publish drops what is no longer servable.
    state.replace(Snapshot::default());
    std::thread::sleep(Duration::from_millis(400));
    state.set_rendering(kind, true);
    let (during, served) = state.scrape(who, kind.0, kind.1).expect("scrape");
    assert_eq!(
        (during.as_ptr(), served),
        (after.as_ptr(), Served::Previous)
    );
    state.set_rendering(kind, false);
    state.replace(Snapshot::default());
    assert!(!state.keeps(kind), "a body replaced 400 ms ago was kept");
}

#[test]
fn a_scrape_while_the_prerender_thread_is_asked_is_served_the_previous_snapshot() {
    use super::state::Served;
    let state = state();
    state.pretend_prerender_thread();
    let kind = (Format::Text, true);
    let who = std::net::IpAddr::from([127, 0, 0, 1]);
    let (first, served) = state.scrape(who, kind.0, kind.1).expect("scrape");
    assert_eq!(served, Served::Rendered);
    let (again, served) = state.scrape(who, kind.0, kind.1).expect("scrape");
    assert_eq!((again.as_ptr(), served), (first.as_ptr(), Served::Made));
    // A publish (the clock has the poll gap from `state()`'s): a scrape is expected
    // before the next, so it asks the pre-render thread, which (starved) has not
    // started: the scrape gets the body before, at once.
    let before = again;
    state.replace(Snapshot::default());
    let (during, served) = state.scrape(who, kind.0, kind.1).expect("scrape");
    assert_eq!(
        (during.as_ptr(), served),
        (before.as_ptr(), Served::Previous),
        "not served the previous body while the pre-render thread was asked"
    );
    // The pre-render thread makes it: served as made.
    state.render_ahead_now(kind);
    let (made, served) = state.scrape(who, kind.0, kind.1).expect("scrape");
    assert_ne!(made.as_ptr(), before.as_ptr());
    assert_eq!(served, Served::Made);
    // A publish with no scrape expected (the scraper stopped) asks nothing: the
    // next scrape renders the current snapshot rather than be served an old body.
    std::thread::sleep(Duration::from_millis(200));
    state.replace(Snapshot::default());
    let (_, served) = state.scrape(who, kind.0, kind.1).expect("scrape");
    assert_eq!(served, Served::Rendered, "a stale ask was kept");
}

#[test]
fn publishes_and_scrapes_at_once_never_deadlock() {
    use std::sync::{
        Arc,
        atomic::{AtomicBool, Ordering},
    };
    let state = state();
    state.pretend_prerender_thread();
    let stop = Arc::new(AtomicBool::new(false));
    let who = IpAddr::V4(Ipv4Addr::LOCALHOST);
    let mut workers = Vec::new();
    for worker in 0..4 {
        let (state, stop) = (state.clone(), Arc::clone(&stop));
        workers.push(std::thread::spawn(move || {
            let mut rounds = 0u64;
            while !stop.load(Ordering::Relaxed) {
                if worker == 0 {
                    state.replace(Snapshot::default());
                } else if worker == 1 {
                    state.render_ahead_now((Format::Text, worker % 2 == 0));
                } else {
                    let _ = state.scrape(who, Format::Text, worker % 2 == 0);
                }
                rounds += 1;
            }
            rounds
        }));
    }
    std::thread::sleep(Duration::from_millis(700));
    stop.store(true, Ordering::Relaxed);
    let deadline = std::time::Instant::now() + Duration::from_secs(5);
    while !workers.iter().all(|w| w.is_finished()) {
        assert!(
            std::time::Instant::now() < deadline,
            "publishes, renders ahead and scrapes deadlocked"
        );
        std::thread::sleep(Duration::from_millis(10));
    }
    for w in workers {
        assert!(w.join().expect("worker") > 0, "a worker never ran");
    }
}

#[test]
fn a_scrape_with_no_body_waits_then_renders_the_snapshot_current_when_it_wakes() {
    let state = state();
    let kind = (Format::Text, true);
    state.set_rendering(kind, true);
    let waiter = {
        let state = state.clone();
        std::thread::spawn(move || state.render(kind.0, kind.1))
    };
    std::thread::sleep(Duration::from_millis(200));
    assert!(!waiter.is_finished(), "served though nothing was made");
    // A poll publishes while it waits; then the render under way ends (made
    // nothing, as if it failed): the waiter renders itself.
    state.replace(Snapshot::default());
    state.set_rendering(kind, false);
    let deadline = std::time::Instant::now() + Duration::from_secs(5);
    while !waiter.is_finished() {
        assert!(
            std::time::Instant::now() < deadline,
            "the waiter never woke"
        );
        std::thread::sleep(Duration::from_millis(10));
    }
    let body = gunzip(&waiter.join().expect("waiter").expect("render"));
    assert!(body.contains("sockq_build_info"));
    assert!(
        !body.contains("127.0.0.1:9750"),
        "the waiter rendered the snapshot of before it waited"
    );
    assert_eq!(state.rendered_kinds(), [kind]);
}

#[test]
fn a_scrape_with_no_body_renders_itself_rather_than_wait_for_the_prerender_thread() {
    let state = state();
    let kind = (Format::Text, true);
    // The pre-render thread is at it (and, on a busy machine, may get no CPU for
    // long): the scrape does not wait for it.
    state.set_rendering_ahead(kind, true);
    let scrape = {
        let state = state.clone();
        std::thread::spawn(move || state.render(kind.0, kind.1))
    };
    let deadline = std::time::Instant::now() + Duration::from_secs(5);
    while !scrape.is_finished() {
        assert!(
            std::time::Instant::now() < deadline,
            "the scrape waited for the pre-render thread"
        );
        std::thread::sleep(Duration::from_millis(10));
    }
    let body = scrape.join().expect("scrape").expect("render");
    assert!(gunzip(&body).contains("sockq_build_info"));
    assert_eq!(state.rendered_kinds(), [kind], "the scrape's body is kept");
    // The pre-render thread renders nothing already made.
    state.set_rendering_ahead(kind, false);
    state.render_ahead_now(kind);
    let again = state.render(kind.0, kind.1).expect("render");
    assert_eq!(again.as_ptr(), body.as_ptr(), "rendered again ahead");
}

#[test]
fn a_render_that_ends_after_a_newer_one_is_served_but_not_kept() {
    let state = state_stale_for(Duration::ZERO);
    let kind = (Format::Text, false);
    let (old, old_number) = (state.snapshot(), state.number());
    state.replace(Snapshot::default());
    let newer = state.render(kind.0, kind.1).expect("render");
    // A render of the snapshot before, started before the publish, ends now.
    let late = state.make_of(kind, &old, old_number);
    assert!(String::from_utf8_lossy(&late).contains("127.0.0.1:9750"));
    let served = state.render(kind.0, kind.1).expect("render");
    assert_eq!(
        served.as_ptr(),
        newer.as_ptr(),
        "an older body replaced a newer one"
    );
    // Nor once the newer body is gone (two polls later): nothing older comes back.
    state.replace(Snapshot::default());
    state.replace(Snapshot::default());
    assert!(!state.keeps(kind));
    let _ = state.make_of(kind, &old, old_number);
    assert!(!state.keeps(kind), "a body older than one served was kept");
}

#[test]
fn a_snapshot_is_rendered_once_per_kind_and_again_after_a_poll() {
    let state = state();
    let first = state.render(Format::Text, false).expect("render");
    let again = state.render(Format::Text, false).expect("render");
    assert_eq!(first.as_ptr(), again.as_ptr(), "served from the one render");
    let gzipped = state.render(Format::Text, true).expect("render gzip");
    assert_eq!(
        gunzip(&gzipped).as_bytes(),
        &first[..],
        "the same exposition"
    );
    let protobuf = state
        .render(Format::Protobuf, false)
        .expect("render protobuf");
    assert_ne!(protobuf, first);

    let series = "sockq_listen_accept_queue_limit{";
    assert!(String::from_utf8_lossy(&first).contains(series));
    state.replace(Snapshot::default());
    let after = state.render(Format::Text, false).expect("render");
    assert!(
        !String::from_utf8_lossy(&after).contains(series),
        "the listener that went is gone: a new snapshot renders anew"
    );
}

#[test]
fn gzip_is_what_accept_encoding_accepts() {
    use super::state::accepts_gzip;
    assert!(accepts_gzip(Some("gzip")));
    assert!(accepts_gzip(Some("deflate, GZIP;q=0.5")));
    assert!(accepts_gzip(Some("*")));
    assert!(accepts_gzip(Some("x-gzip")));
    assert!(!accepts_gzip(None));
    assert!(!accepts_gzip(Some("identity")));
    assert!(!accepts_gzip(Some("gzip;q=0")));
    assert!(
        !accepts_gzip(Some("gzip;q=0, *")),
        "an explicit refusal wins"
    );
    assert!(!accepts_gzip(Some("br, *;q=0.0")));
    assert!(!accepts_gzip(Some("gzip;q=nonsense")));
}

/// An HTTP/1.0 answer's head (lowercase) and body (HTTP/1.0: never chunked).
pub(super) fn split_answer(answer: &[u8]) -> (String, &[u8]) {
    let end = answer
        .windows(4)
        .position(|w| w == b"\r\n\r\n")
        .unwrap_or_else(|| panic!("no head end in {:?}", String::from_utf8_lossy(answer)));
    let head = String::from_utf8_lossy(&answer[..end]).to_ascii_lowercase();
    (head, &answer[end + 4..])
}

pub(super) fn gunzip(body: &[u8]) -> String {
    let mut text = String::new();
    flate2::read::GzDecoder::new(body)
        .read_to_string(&mut text)
        .unwrap_or_else(|e| panic!("not gzip ({e}): {} bytes", body.len()));
    text
}

#[tokio::test]
async fn metrics_are_gzipped_when_the_client_accepts_it() {
    let server = start(state(), LIMITS).await;
    let gzipped = exchange_bytes(
        server.addr,
        b"GET /metrics HTTP/1.0\r\nHost: localhost\r\nAccept-Encoding: gzip\r\n\r\n",
    )
    .await;
    let (head, body) = split_answer(&gzipped);
    assert!(head.starts_with("http/1.0 200 ok\r\n"), "{head}");
    assert!(head.contains("\r\ncontent-encoding: gzip"), "{head}");
    assert!(head.contains("\r\nvary: accept-encoding"), "{head}");
    assert!(head.contains("\r\nvary: accept\r\n"), "{head}");
    let text = gunzip(body);

    let plain = exchange_bytes(
        server.addr,
        b"GET /metrics HTTP/1.0\r\nHost: localhost\r\n\r\n",
    )
    .await;
    let (plain_head, plain_body) = split_answer(&plain);
    assert!(!plain_head.contains("content-encoding"), "{plain_head}");
    assert!(
        plain_head.contains("\r\nvary: accept-encoding"),
        "{plain_head}"
    );
    assert_eq!(text.as_bytes(), plain_body, "gzip and plain bodies differ");
    assert_metrics_ok(&format!(
        "HTTP/1.1 200 OK\r\ncontent-type: {CONTENT_TYPE}\r\n\r\n{text}"
    ));

    // A HEAD has the headers and no body, compressed or not.
    let head_only = exchange_bytes(
        server.addr,
        b"HEAD /metrics HTTP/1.0\r\nHost: localhost\r\nAccept-Encoding: gzip\r\n\r\n",
    )
    .await;
    let (head, body) = split_answer(&head_only);
    assert!(head.starts_with("http/1.0 200 ok\r\n"), "{head}");
    assert!(body.is_empty(), "HEAD answered {} body bytes", body.len());

    // Errors stay as they were: an unknown path is a plain 404.
    let missing = exchange(
        server.addr,
        b"GET /nope HTTP/1.0\r\nHost: localhost\r\nAccept-Encoding: gzip\r\n\r\n",
    )
    .await;
    assert!(missing.starts_with("HTTP/1.0 404 "), "{missing}");
    assert!(
        !missing.to_ascii_lowercase().contains("content-encoding"),
        "{missing}"
    );

    let _ = server.stop.send(());
    server.task.await.expect("server task").expect("serve");
}

#[tokio::test]
async fn protobuf_when_the_scraper_asks_for_it() {
    let server = start(state(), LIMITS).await;
    let answer = exchange_bytes(
        server.addr,
        b"GET /metrics HTTP/1.0\r\nHost: localhost\r\nAccept-Encoding: gzip\r\nAccept: \
          application/vnd.google.protobuf;proto=io.prometheus.client.MetricFamily;\
          encoding=delimited,text/plain;version=0.0.4;q=0.5\r\n\r\n",
    )
    .await;
    let (head, body) = split_answer(&answer);
    assert!(head.starts_with("http/1.0 200 ok\r\n"), "{head}");
    let expected = crate::export::prometheus::PROTOBUF_CONTENT_TYPE.to_ascii_lowercase();
    assert!(
        head.contains(&format!("content-type: {expected}\r\n")),
        "{head}"
    );
    assert!(head.contains("\r\ncontent-encoding: gzip"), "{head}");
    let mut bytes = Vec::new();
    flate2::read::GzDecoder::new(body)
        .read_to_end(&mut bytes)
        .expect("gzip");
    let mut rest = bytes.as_slice();
    let mut names = Vec::new();
    while !rest.is_empty() {
        use prost::Message as _;
        let family = prometheus_client::encoding::prometheus_protobuf::prometheus_data_model::MetricFamily::decode_length_delimited(&mut rest)
            .expect("a delimited MetricFamily");
        names.push(family.name);
    }
    assert!(names.iter().any(|n| n == "sockq_build_info"), "{names:?}");
    let _ = server.stop.send(());
    server.task.await.expect("server task").expect("serve");
}
