//! The metrics port: raw bytes from a client, through the real server
//! (`sockq::export::http::serve`: hyper's HTTP/1 parser under axum, its bounds, the
//! access layer with its loopback `Host` check, the router, and the `/metrics`,
//! `/events/recent`, `/api/listeners`, `/index.txt` and status page handlers).
//!
//! The server runs once per fuzzing process, on 127.0.0.1:0 in a current-thread
//! tokio runtime on its own thread, serving a snapshot with one listener and one
//! event. Each input is written to a fresh connection, which is then half-closed;
//! the server must close it within `ANSWER_TIMEOUT`, having sent nothing or
//! something that starts with an HTTP/1 status line. (hyper, as axum configures
//! it, may drop the answer to a request whose client half-closed before the answer
//! was written: an empty answer is not a finding.) A panic in the server aborts the
//! process (libfuzzer-sys's panic hook), so it is reported as a crash. Every
//! `HEALTH_EVERY` inputs, a proper `GET /metrics` (not half-closed) must still get
//! 200 and the metrics.

#![no_main]

use std::{
    io::{ErrorKind, Read as _, Write as _},
    net::{Ipv4Addr, Shutdown, SocketAddr, TcpStream},
    sync::{
        OnceLock,
        atomic::{AtomicU64, Ordering},
    },
    time::Duration,
};

use libfuzzer_sys::fuzz_target;
use sockq::{
    export::{
        http::{SharedState, bind, serve},
        prometheus::BuildInfo,
    },
    model::{Listener, Owner, Snapshot},
};

/// How long the server may take to answer or close a half-closed connection. Far
/// above what loopback needs, so that a busy machine does not fail the run; a
/// server that waits for more input is caught all the same.
const ANSWER_TIMEOUT: Duration = Duration::from_secs(10);
const HEALTH_EVERY: u64 = 256;
const GET_METRICS: &[u8] = b"GET /metrics HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n";

fn server() -> SocketAddr {
    static ADDR: OnceLock<SocketAddr> = OnceLock::new();
    *ADDR.get_or_init(|| {
        let (tx, rx) = std::sync::mpsc::channel();
        std::thread::Builder::new()
            .name("sockq-http".into())
            .spawn(move || {
                let runtime = tokio::runtime::Builder::new_current_thread()
                    .enable_all()
                    .build()
                    .expect("tokio runtime");
                runtime.block_on(async move {
                    let listener = bind(SocketAddr::from((Ipv4Addr::LOCALHOST, 0)))
                        .await
                        .expect("bind 127.0.0.1:0");
                    tx.send(listener.local_addr().expect("local address"))
                        .expect("send address");
                    serve(listener, state(), std::future::pending())
                        .await
                        .expect("serve");
                    unreachable!("the server stopped without being asked to");
                });
            })
            .expect("server thread");
        rx.recv().expect("server address")
    })
}

fn state() -> SharedState {
    let state = SharedState::new(BuildInfo {
        version: "0.0.0-fuzz".to_owned(),
        git_commit: "fuzz".to_owned(),
        kernel_release: "fuzz".to_owned(),
    });
    state.replace(Snapshot {
        listeners: vec![Listener {
            netns: 4_026_531_840,
            addr: Ipv4Addr::LOCALHOST.into(),
            port: 9750,
            inode: 77,
            cookie: 1,
            accept_queue_len: 3,
            accept_queue_limit: 128,
            syn_queue_len: 1,
            drops: 2,
            owners: vec![Owner::new(1, "fuzz\"<b>\n")],
            kernel: None,
            queue_full: false,
        }],
        ..Snapshot::default()
    });
    state
        .events()
        .push(serde_json::json!({"event": "queue_full", "port": 9750}));
    state
}

/// Sends `request`, half-closes, and returns what the server sent before closing.
fn exchange(addr: SocketAddr, request: &[u8], half_close: bool) -> Vec<u8> {
    let mut stream = connect(addr);
    stream
        .set_read_timeout(Some(ANSWER_TIMEOUT))
        .expect("read timeout");
    stream
        .set_write_timeout(Some(ANSWER_TIMEOUT))
        .expect("write timeout");
    // The server may answer (400, 431, ...) and close before reading everything:
    // a failed write is a possible outcome, not a finding.
    let _ = stream.write_all(request);
    if half_close {
        let _ = stream.shutdown(Shutdown::Write);
    }
    let mut response = Vec::new();
    match stream.read_to_end(&mut response) {
        Ok(_) => {}
        Err(e) if matches!(e.kind(), ErrorKind::WouldBlock | ErrorKind::TimedOut) => panic!(
            "the server did not close the connection within \
             {ANSWER_TIMEOUT:?} (received {} bytes)",
            response.len()
        ),
        // Reset after an error status: fine.
        Err(_) => {}
    }
    response
}

fn connect(addr: SocketAddr) -> TcpStream {
    let mut last = None;
    for _ in 0..200 {
        match TcpStream::connect_timeout(&addr, ANSWER_TIMEOUT) {
            Ok(stream) => return stream,
            // Out of local ports for a moment (TIME_WAIT): retry.
            Err(e) => last = Some(e),
        }
        std::thread::sleep(Duration::from_millis(10));
    }
    panic!("cannot connect to the metrics server at {addr}: {last:?}");
}

fn check_health(addr: SocketAddr) {
    let response = exchange(addr, GET_METRICS, false);
    let text = String::from_utf8_lossy(&response);
    assert!(
        text.starts_with("HTTP/1.1 200 OK\r\n") && text.contains("sockq_build_info{"),
        "GET /metrics after fuzzed input: {text}"
    );
}

fuzz_target!(|request: &[u8]| {
    static RUNS: AtomicU64 = AtomicU64::new(0);
    let addr = server();
    let response = exchange(addr, request, true);
    assert!(
        response.is_empty() || response.starts_with(b"HTTP/1."),
        "not an HTTP/1 response: {:?}",
        String::from_utf8_lossy(&response)
    );
    if RUNS
        .fetch_add(1, Ordering::Relaxed)
        .is_multiple_of(HEALTH_EVERY)
    {
        check_health(addr);
    }
});
