//! Listeners that were there before sockq started, with connections already queued:
//! neither their `listen()` nor those enqueues ran under sockq's programs, which
//! create a listener's counters at either. Their accepts must still be counted for
//! their listener, not as unattributed; and a fresh daemon's own metrics listener,
//! bound before the programs attach, is no loss either.
//!
//! One test in this file: the loss counters are the daemon's whole, and no other test
//! may run beside it (another file's run in another process, one after another).

use std::time::{Duration, Instant};

use sockq_tests::{Daemon, Netns};

const COUNT: usize = 5;
const TCP_ADDR: &str = "127.0.0.1:7041";
const UNIX_NAME: &str = "@sockq-predating";

/// Recv-Q of the TCP listener on [`TCP_ADDR`] (`ss -ltnH`).
fn ss_tcp_queue(ns: &Netns) -> u32 {
    let out = ns.output("ss", &["-ltnH", "sport", "= :7041"]);
    out.split_whitespace()
        .nth(1)
        .and_then(|q| q.parse().ok())
        .unwrap_or_else(|| panic!("no listener on {TCP_ADDR}: {out:?}"))
}

/// (Recv-Q, inode) of the Unix listener [`UNIX_NAME`] (`ss -xlnH`).
fn ss_unix_listener(ns: &Netns) -> (u32, String) {
    let out = ns.output("ss", &["-xlnH"]);
    out.lines()
        .find_map(|line| {
            let f: Vec<&str> = line.split_whitespace().collect();
            (f.get(4) == Some(&UNIX_NAME)).then(|| (f[2].parse().expect("Recv-Q"), f[5].to_owned()))
        })
        .unwrap_or_else(|| panic!("{UNIX_NAME} not in ss -xln:\n{out}"))
}

#[test]
fn accepts_of_connections_queued_before_sockq_started_are_counted_for_their_listener() {
    let ns = Netns::new("predating");
    let netns = ns.inode().to_string();
    let mut tcp = ns.scenario(&["queued", TCP_ADDR, &COUNT.to_string()]);
    let mut unix = ns.scenario(&["queued", UNIX_NAME, &COUNT.to_string()]);
    let queued = Instant::now();
    // The kernel's view: every connection waits in its listener's queue.
    assert_eq!(ss_tcp_queue(&ns), COUNT as u32, "TCP Recv-Q");
    let (unix_queue, inode) = ss_unix_listener(&ns);
    assert_eq!(unix_queue, COUNT as u32, "Unix Recv-Q");

    let daemon = Daemon::start("0.2");
    let tcp_labels = [("netns", netns.as_str()), ("listen_addr", TCP_ADDR)];
    let unix_labels = [("netns", netns.as_str()), ("socket", inode.as_str())];
    let lost = |m: &sockq_tests::Metrics, cause: &str| {
        m.one("sockq_events_lost_by_cause_total", &[("cause", cause)])
    };
    // Nothing is accepted until a poll listed both, queues full.
    let unstamped_before = daemon.wait_for(Duration::from_secs(10), |m| {
        let tcp_len = m.one("sockq_listen_accept_queue_length", &tcp_labels)?;
        let unix_len = m.one("sockq_unix_listen_queue_length", &unix_labels)?;
        if (tcp_len, unix_len) != (COUNT as f64, COUNT as f64) {
            return Err(format!("queue lengths {tcp_len} and {unix_len}"));
        }
        lost(m, "unix_accept_unstamped")
    });
    let waited = queued.elapsed().as_secs_f64();
    assert_eq!(tcp.tell("accept"), format!("done {COUNT}"));
    assert_eq!(unix.tell("accept"), format!("done {COUNT}"));
    let accepted = queued.elapsed().as_secs_f64();
    assert_eq!(ss_tcp_queue(&ns), 0, "TCP Recv-Q after the accepts");
    assert_eq!(ss_unix_listener(&ns).0, 0, "Unix Recv-Q after the accepts");

    daemon.wait_for(Duration::from_secs(10), |m| {
        // TCP: the accepts, and their waits from the kernel's note of each
        // handshake's end, which predates sockq.
        let accepts = m.one("sockq_listen_accepts_total", &tcp_labels)?;
        let waits = m.one("sockq_accept_wait_seconds_count", &tcp_labels)?;
        if (accepts, waits) != (COUNT as f64, COUNT as f64) {
            return Err(format!(
                "TCP: {accepts} accepts and {waits} waits, want {COUNT}"
            ));
        }
        let mean = m.one("sockq_accept_wait_seconds_sum", &tcp_labels)? / waits;
        assert!(
            (waited..=accepted + 0.05).contains(&mean),
            "TCP mean accept wait {mean} s: queued {waited} s before the daemon was ready, \
             accepted at {accepted} s"
        );
        // Unix: the accepts; their waits are lost (no enqueue stamped them while
        // sockq ran), and counted as lost.
        let accepts = m.one("sockq_unix_listen_accepts_total", &unix_labels)?;
        let unstamped = lost(m, "unix_accept_unstamped")? - unstamped_before;
        if (accepts, unstamped) != (COUNT as f64, COUNT as f64) {
            return Err(format!(
                "Unix: {accepts} accepts, {unstamped} counted unstamped, want {COUNT}"
            ));
        }
        // No accept without a listener: neither these nor the harness's first
        // scrape, queued on the daemon's metrics listener while it attached.
        let unattributed = lost(m, "accept_unattributed")?;
        if unattributed != 0.0 {
            return Err(format!("{unattributed} accepts unattributed"));
        }
        Ok(())
    });
    tcp.finish();
    unix.finish();
}
