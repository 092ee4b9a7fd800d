//! The ring buffer that carries listener events from the kernel: when the daemon
//! stops reading, the kernel side fills it and counts what it cannot record; every
//! event produced is then either read or counted lost, exactly, and the daemon picks
//! up where it left. Alone in its test binary: it counts every listener event of the
//! host.

use std::time::Duration;

use sockq_tests::{Daemon, Metrics, Netns};

fn received(m: &Metrics) -> Result<f64, String> {
    m.one("sockq_ring_events_total", &[("kind", "listener")])
}

fn lost(m: &Metrics) -> Result<f64, String> {
    m.one("sockq_events_lost_total", &[])
}

#[test]
fn a_full_ring_buffer_loses_countably_and_the_daemon_catches_up() {
    let ns = Netns::new("ring");
    let daemon = Daemon::start("1");
    let pid = daemon.pid() as i32;
    let m = daemon.metrics();
    let (received_before, lost_before) = (received(&m).expect("received"), lost(&m).expect("lost"));

    // The daemon stops reading; each listener opened and closed is two events.
    // SAFETY: kill(2) on our own child.
    unsafe { libc::kill(pid, libc::SIGSTOP) };
    let churn = ns.scenario(&["listener-churn", "2"]);
    let listeners: f64 = churn
        .first_line
        .split_whitespace()
        .nth(1)
        .and_then(|n| n.parse().ok())
        .expect("done LISTENERS");
    churn.finish();
    // SAFETY: as above.
    unsafe { libc::kill(pid, libc::SIGCONT) };
    let produced = 2.0 * listeners;

    let (got, dropped) = daemon.wait_for(Duration::from_secs(30), |m| {
        let got = received(m)? - received_before;
        let dropped = lost(m)? - lost_before;
        if got + dropped != produced {
            return Err(format!(
                "{got} read + {dropped} lost != {produced} produced ({listeners} listeners)"
            ));
        }
        Ok((got, dropped))
    });
    eprintln!("{listeners} listeners: {produced} events, {got} read, {dropped} lost");
    assert!(
        dropped > 0.0,
        "the ring buffer never filled: make the churn longer"
    );
    assert!(got > 0.0, "nothing was read");

    // Caught up: a new listener is read, and inventoried, at once.
    let listener = ns.scenario(&["listen", "127.0.0.1:7301"]);
    let netns = ns.inode().to_string();
    daemon.wait_for(Duration::from_secs(5), |m| {
        let now = received(m)? - received_before - got;
        if now != 1.0 {
            return Err(format!(
                "{now} listener events read since the churn, expected 1"
            ));
        }
        m.one(
            "sockq_listen_accept_queue_length",
            &[("netns", netns.as_str()), ("listen_addr", "127.0.0.1:7301")],
        )
    });
    listener.finish();
}
