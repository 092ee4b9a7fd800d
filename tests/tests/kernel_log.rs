//! The eBPF programs' own log, forwarded by the daemon: a map found full is counted
//! (and exported in `sockq_events_lost_total`) and logged once, not per failure.
//!
//! The daemon runs with `LISTENER_QUEUES` sized down (`SOCKQ_TEST_MAP_ENTRIES`, a
//! test-only setting) and a scenario in a namespace of our own opens one listener
//! more than the map holds: each `listen()` creates its listener's entry
//! (`inet_sock_set_state`, CLOSE -> LISTEN), so at least that one fails. The programs log a counter's
//! first failure, then only when its count on a CPU grows sixteenfold: the handful
//! of failures here (ours, plus one per other active listener of the host) is one
//! line.

use std::{
    io::{BufRead as _, BufReader},
    net::SocketAddr,
    process::{Child, Command, Stdio},
    sync::{Arc, Mutex},
    time::{Duration, Instant},
};

use sockq_tests::{Metrics, Netns, free_port, require_root, sockq_bin, try_get};

/// What `LISTENER_QUEUES` holds in this test.
const ENTRIES: usize = 32;

/// `sockq run` with a resized map and its stderr kept, line by line.
struct LoggedDaemon {
    child: Child,
    addr: SocketAddr,
    log: Arc<Mutex<Vec<String>>>,
}

impl LoggedDaemon {
    fn start(map_entries: &str) -> Self {
        require_root();
        let addr: SocketAddr = format!("127.0.0.1:{}", free_port()).parse().expect("addr");
        let mut child = Command::new(sockq_bin())
            .args([
                "run",
                "--metrics-addr",
                &addr.to_string(),
                "--interval",
                "1",
            ])
            .env("RUST_LOG", "info")
            .env("SOCKQ_TEST_MAP_ENTRIES", map_entries)
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap_or_else(|e| panic!("starting {}: {e}", sockq_bin().display()));
        // Drain stderr all along: a full pipe would block the daemon's logging.
        let stderr = child.stderr.take().expect("stderr");
        let log = Arc::new(Mutex::new(Vec::new()));
        let sink = Arc::clone(&log);
        std::thread::spawn(move || {
            for line in BufReader::new(stderr).lines().map_while(Result::ok) {
                sink.lock().expect("log lock").push(line);
            }
        });
        let daemon = Self { child, addr, log };
        daemon.wait_for("sockq to serve /metrics", Duration::from_secs(20), |m| {
            m.one("sockq_probe_attached", &[("probe", "inet_sock_set_state")])
                .ok()
                .filter(|&attached| attached == 1.0)
        });
        daemon
    }

    fn metrics(&self) -> Option<Metrics> {
        try_get(self.addr, "/metrics").map(|body| Metrics::parse(&body))
    }

    fn events_lost(&self) -> f64 {
        let m = self.metrics().expect("GET /metrics");
        m.one("sockq_events_lost_total", &[])
            .unwrap_or_else(|e| panic!("sockq_events_lost_total: {e}"))
    }

    /// The stderr lines that contain `needle`.
    fn lines_with(&self, needle: &str) -> Vec<String> {
        let log = self.log.lock().expect("log lock");
        log.iter().filter(|l| l.contains(needle)).cloned().collect()
    }

    fn wait_for<T>(
        &self,
        what: &str,
        timeout: Duration,
        mut check: impl FnMut(&Metrics) -> Option<T>,
    ) -> T {
        let deadline = Instant::now() + timeout;
        loop {
            if let Some(v) = self.metrics().as_ref().and_then(&mut check) {
                return v;
            }
            assert!(
                Instant::now() < deadline,
                "waited {timeout:?} for {what}; daemon log:\n{}",
                self.log.lock().expect("log lock").join("\n")
            );
            std::thread::sleep(Duration::from_millis(100));
        }
    }
}

impl Drop for LoggedDaemon {
    fn drop(&mut self) {
        sockq_tests::stop(&mut self.child);
    }
}

#[test]
fn a_full_map_is_counted_exported_and_logged_once() {
    let daemon = LoggedDaemon::start(&format!("LISTENER_QUEUES={ENTRIES}"));
    let resized = daemon.lines_with("SOCKQ_TEST_MAP_ENTRIES");
    assert_eq!(
        resized.len(),
        1,
        "the daemon says once that a test setting resized a map: {resized:?}"
    );
    let lost_before = daemon.events_lost();

    let ns = Netns::new("kernel-log");
    let listeners = ns.scenario(&["listeners", &(ENTRIES + 1).to_string()]);
    // At least our last listen() found the map full; other listeners of the host
    // with activity (the daemon's own metrics port) hold entries too. The programs'
    // line is read as it arrives: wait for it, then free the map at once (while it
    // is full, every other listener of the host that sees a connection fails too).
    let full = "eBPF: map LISTENER_QUEUES full";
    let deadline = Instant::now() + Duration::from_secs(10);
    while daemon.lines_with(full).is_empty() && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(20));
    }
    listeners.finish();
    let lost = daemon.wait_for(
        "sockq_events_lost_total to count the full map",
        Duration::from_secs(10),
        |m| {
            m.one("sockq_events_lost_total", &[])
                .ok()
                .filter(|&lost| lost >= lost_before + 1.0)
        },
    );
    // Any second line would have come by now: the failures stopped with our listeners.
    std::thread::sleep(Duration::from_secs(2));

    let logged = daemon.lines_with(full);
    assert_eq!(
        logged.len(),
        1,
        "{} failures of LISTENER_QUEUES (sockq_events_lost_total {lost_before} -> {lost}) \
         should be one forwarded line, got {logged:#?}",
        lost - lost_before
    );
    let line = &logged[0];
    assert!(
        line.contains("WARN") && line.contains("(1 so far on this CPU; error -7)"),
        "the line is a warning about the first failure, with E2BIG from the map: {line}"
    );
    // The same failures, as the programs count them, keep being exported.
    assert!(
        daemon.events_lost() >= lost,
        "sockq_events_lost_total went down"
    );
}
