//! Exact for weeks on a busy host: after namespaces, listeners, bad `listen()` calls
//! and acceptor threads come and go, every in-kernel map is back near its baseline,
//! nothing is counted lost that was not, and a fresh listener in a fresh namespace is
//! measured exactly (against the scenario's own counts and the namespace's counters).
//! Alone in its test binary: it reads host-wide map occupancy.

use std::time::Duration;

use sockq_tests::{Daemon, Metrics, Netns, test_bin};

fn entries(m: &Metrics, map: &str) -> f64 {
    m.one("sockq_map_entries", &[("map", map)])
        .unwrap_or_else(|e| panic!("sockq_map_entries{{map={map}}}: {e}"))
}

fn lost(m: &Metrics) -> f64 {
    m.one("sockq_events_lost_total", &[]).expect("events lost")
}

/// 150 namespaces, each with 5 connections, created and destroyed one after the
/// other (the kernel hands their inode numbers out again).
fn namespace_churn() {
    for i in 0..150 {
        let ns = Netns::new(&format!("chns{i}"));
        ns.scenario(&["churn", "127.0.0.1:7100", "5"]);
    }
}

#[test]
fn maps_return_to_baseline_and_a_fresh_namespace_is_exact() {
    let daemon = Daemon::start("0.5");
    // The baseline once the daemon's start has settled: the harness's own first
    // connections (to the metrics port, accepted before any poll) may be counted
    // unattributed a poll after the first scrape, so the loss count must have stayed
    // the same for a second (two polls).
    let mut earlier: Option<f64> = None;
    let base = daemon.wait_for(Duration::from_secs(10), |m| {
        m.one("sockq_map_entries", &[("map", "TRANSITIONS")])?;
        let now = lost(m);
        let settled = earlier == Some(now);
        earlier = Some(now);
        if settled {
            Ok(m.samples.clone())
        } else {
            std::thread::sleep(Duration::from_secs(1));
            Err(format!(
                "events lost {now}, not yet the same a second apart"
            ))
        }
    });
    let base = Metrics { samples: base };

    namespace_churn();
    let dir = tempdir();
    unix_listener_closed_with_queued_children(&daemon, &base, &dir);
    let bad = Netns::new("chbad");
    bad.scenario(&["bad-listen", &dir, "300"]);
    // Thousands of listeners opened and closed, in bursts the ring buffer holds
    // (a flood beyond it is counted lost, exactly: tests/tests/ringbuf.rs).
    for round in 0..3 {
        let port = (20_000 + round * 1000).to_string();
        bad.scenario(&["many-listeners", "1000", &port]).finish();
        std::thread::sleep(Duration::from_millis(500));
    }
    let threads = Netns::new("chthreads");
    let recycled = threads.scenario(&["thread-accepts", "127.0.0.1:7101", "400"]);

    // A fresh namespace after all that: 20 connections, each accepted 10 ms after it
    // was queued, the listener held.
    let fresh = Netns::new("chfresh");
    let opens_before = fresh.counter("Tcp.ActiveOpens");
    let held = fresh.scenario(&["slow-accept", "127.0.0.1:7102", "20", "10"]);
    let opens = fresh.counter("Tcp.ActiveOpens") - opens_before;
    assert_eq!(opens, 20, "the namespace's own count");
    let netns = fresh.inode().to_string();
    let listener = [("netns", netns.as_str()), ("listen_addr", "127.0.0.1:7102")];
    daemon.wait_for(Duration::from_secs(10), |m| {
        let n = m.one(
            "sockq_tcp_state_transitions_total",
            &[
                ("netns", netns.as_str()),
                ("from", "SYN_SENT"),
                ("to", "ESTABLISHED"),
            ],
        )?;
        let enqueues = m.one("sockq_listen_enqueues_total", &listener)?;
        let accepts = m.one("sockq_listen_accepts_total", &listener)?;
        let waits = m.one("sockq_accept_wait_seconds_count", &listener)?;
        if [n, enqueues, accepts, waits] == [opens as f64; 4] {
            Ok(())
        } else {
            Err(format!(
                "fresh namespace (inode {netns}): SYN_SENT -> ESTABLISHED {n}, enqueues \
                 {enqueues}, accepts {accepts}, accept waits {waits}; its ActiveOpens grew \
                 by {opens}"
            ))
        }
    });
    held.finish();

    // The recycled acceptor threads are gone: their per-thread counts too (20 s after
    // they exited), while the listener's accepts stay exact.
    let tnetns = threads.inode().to_string();
    let labels = [
        ("netns", tnetns.as_str()),
        ("listen_addr", "127.0.0.1:7101"),
    ];
    daemon.wait_for(Duration::from_secs(45), |m| {
        let accepts = m.one("sockq_listen_accepts_total", &labels)?;
        let waits = m
            .one("sockq_accept_wait_seconds_count", &labels)
            .unwrap_or(0.0);
        let threads_listed = m.find("sockq_acceptor_accepts_total", &labels).len();
        if accepts == 400.0 && waits == 400.0 && threads_listed == 0 {
            Ok(())
        } else {
            Err(format!(
                "accepts {accepts}, waits {waits} (both must be 400), {threads_listed} \
                 exited threads still listed"
            ))
        }
    });
    recycled.finish();

    // Dead namespaces' transitions go (those that lived less than a poll after a
    // grace of 30 s), bad listen() calls left nothing, stamps were all taken.
    let after = daemon.wait_for(Duration::from_secs(45), |m| {
        let grown: Vec<String> = ["TRANSITIONS", "LISTENER_QUEUES", "ACCEPTORS", "QUEUED"]
            .iter()
            .filter_map(|map| {
                let (b, a) = (entries(&base, map), entries(m, map));
                // The fresh namespace and the threads' namespace may still hold up
                // to ~20 transition pairs each; the listeners still open a few.
                (a > b + 40.0).then(|| format!("{map}: {b} -> {a}"))
            })
            .collect();
        if grown.is_empty() {
            Ok(m.samples.clone())
        } else {
            Err(format!("maps not back near their baseline: {grown:?}"))
        }
    });
    let after = Metrics { samples: after };
    assert_eq!(
        lost(&after),
        lost(&base),
        "events counted lost during the churn"
    );
    eprintln!(
        "map entries before/after: {:?}",
        [
            "TRANSITIONS",
            "LISTENER_QUEUES",
            "ACCEPTORS",
            "QUEUED",
            "UNIX_STAMPS"
        ]
        .map(|m| (m, entries(&base, m), entries(&after, m)))
    );
    drop(dir_guard(dir));
}

/// A Unix listener (backlog 4) that never accepts, 12 clients: the connections it
/// queued (as many as `ss -xl` shows) are stamped, and once it closes with them
/// queued their stamps are freed: `UNIX_STAMPS` and `QUEUED` back to their baseline.
fn unix_listener_closed_with_queued_children(daemon: &Daemon, base: &Metrics, dir: &str) {
    let stamps = |m: &Metrics| entries(m, "UNIX_STAMPS") + entries(m, "QUEUED");
    let ns = Netns::new("chunix");
    let bin = test_bin("sockq-unixsrv");
    let path = format!("{dir}/never-accepts.sock");
    let server = ns.program(&bin, &["listen", &path, "4", "stream"]);
    let clients = ns.program(&bin, &["connect", &path, "12", "stream"]);
    let queued: f64 = clients
        .first_line
        .split_whitespace()
        .find_map(|w| w.strip_prefix("connected=")?.parse().ok())
        .unwrap_or_else(|| panic!("clients said {:?}", clients.first_line));
    // Netid State Recv-Q Send-Q Local ...: Recv-Q is the queue.
    let out = ns.output("ss", &["-xlnH"]);
    let ss_queued: f64 = out
        .lines()
        .map(|l| l.split_whitespace().collect::<Vec<_>>())
        .find(|f| f.get(4) == Some(&path.as_str()))
        .and_then(|f| f[2].parse().ok())
        .unwrap_or_else(|| panic!("{path} not in ss -xlnH: {out:?}"));
    assert_eq!(ss_queued, queued, "ss counts the queued clients");
    // Stamped, seen by a scan (every tenth poll: 5 s here).
    daemon.wait_for(Duration::from_secs(15), |m| {
        let (b, a) = (stamps(base), stamps(m));
        if a >= b + queued {
            Ok(())
        } else {
            Err(format!("stamps {b} -> {a}, {queued} connections queued"))
        }
    });
    drop(clients);
    server.finish();
    daemon.wait_for(Duration::from_secs(30), |m| {
        let (b, a) = (stamps(base), stamps(m));
        if a <= b {
            Ok(())
        } else {
            Err(format!("stamps {b} -> {a} after the listener closed"))
        }
    });
}

/// A fresh directory for Unix socket paths.
fn tempdir() -> String {
    let dir = std::env::temp_dir().join(format!("sockq-churn-{}", std::process::id()));
    std::fs::create_dir_all(&dir).expect("temp dir");
    dir.to_string_lossy().into_owned()
}

struct DirGuard(String);

impl Drop for DirGuard {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

fn dir_guard(dir: String) -> DirGuard {
    DirGuard(dir)
}
