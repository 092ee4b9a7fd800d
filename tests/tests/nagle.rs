//! Nagle holds, delayed ACKs and the stall they cause together, against ground
//! truth: a write-write-read client whose round trips the kernel stretches to
//! ~40 ms without TCP_NODELAY (and not with it), and the namespace's own
//! DelayedACKs counter (`/proc/net/netstat`). Each test in its own namespace.

use std::time::Duration;

use sockq_tests::{Daemon, Metrics, Netns};

const ROUNDS: u64 = 50;

/// `done ROUNDS MS` of a wwr-client run.
fn elapsed_ms(first_line: &str) -> u64 {
    first_line
        .split_whitespace()
        .nth(2)
        .and_then(|v| v.parse().ok())
        .unwrap_or_else(|| panic!("no elapsed time in {first_line:?}"))
}

/// The sum of every sample of `name` matching.
fn sum(m: &Metrics, name: &str, matching: &[(&str, &str)]) -> f64 {
    m.find(name, matching).iter().map(|s| s.value).sum()
}

#[test]
fn write_write_read_without_nodelay_stalls_every_round() {
    let ns = Netns::new("nagle-stall");
    let netns = ns.inode().to_string();
    let daemon = Daemon::start_with(&["--interval", "1", "--nagle"]);
    let server = ns.scenario(&["wwr-server", "127.0.0.1:7101"]);
    let delayed_before = ns.counter("TcpExt.DelayedACKs");

    let client = ns.scenario(&["wwr-client", "127.0.0.1:7101", &ROUNDS.to_string(), "0"]);
    let client_pid = client.pid().to_string();
    let ms = elapsed_ms(&client.first_line);
    client.finish();
    // The ground truth of the stall: the kernel stretched each round trip.
    let per_round = ms as f64 / ROUNDS as f64;
    eprintln!("{ROUNDS} round trips took {ms} ms ({per_round:.1} ms each)");
    assert!(
        (30.0..60.0).contains(&per_round),
        "without TCP_NODELAY each round trip should take ~40 ms here, took {per_round:.1} ms"
    );
    let delayed_acks = ns.counter("TcpExt.DelayedACKs") - delayed_before;

    let client_labels = [("netns", netns.as_str()), ("pid", client_pid.as_str())];
    let (stalls, typical) = daemon.wait_for(Duration::from_secs(10), |m| {
        let stalls = m.one("sockq_nagle_delayed_ack_stalls_total", &client_labels)?;
        let seconds = m.one(
            "sockq_nagle_delayed_ack_stall_seconds_total",
            &client_labels,
        )?;
        let comm = m
            .find("sockq_nagle_delayed_ack_stalls_total", &client_labels)
            .first()
            .and_then(|s| s.labels.get("comm").cloned())
            .unwrap_or_default();
        if comm != "sockq-scenario" {
            return Err(format!("stalls named after {comm:?}"));
        }
        if stalls < (ROUNDS as f64) * 0.9 {
            return Err(format!("{stalls} stalls of {ROUNDS} round trips"));
        }
        Ok((stalls, seconds / stalls))
    });
    eprintln!("sockq: {stalls} stalls, typical {:.1} ms", typical * 1e3);
    assert!(
        stalls <= ROUNDS as f64,
        "{stalls} stalls in {ROUNDS} round trips"
    );
    assert!(
        (0.030..=0.060).contains(&typical),
        "typical stall {typical} s, outside [30 ms, 60 ms]"
    );

    // Delayed ACKs the timer sent, in the namespace, against the kernel's count.
    let m = daemon.metrics();
    let fired = sum(
        &m,
        "sockq_delayed_ack_timers_total",
        &[("netns", netns.as_str()), ("event", "fired")],
    );
    eprintln!("delayed ACKs: sockq {fired}, kernel DelayedACKs delta {delayed_acks}");
    assert!(
        delayed_acks >= ROUNDS - 5,
        "the kernel saw {delayed_acks} delayed ACKs"
    );
    assert!(
        (fired - delayed_acks as f64).abs() <= 2.0,
        "sockq counted {fired} delayed ACKs sent by their timer, the kernel {delayed_acks}"
    );
    // Their delay: armed to sent, about the kernel's 40 ms minimum ATO.
    let server_labels = [
        ("netns", netns.as_str()),
        ("listen_addr", "127.0.0.1:7101"),
        ("pid", &server.pid().to_string()),
    ];
    let count = m
        .one("sockq_delayed_ack_delay_seconds_count", &server_labels)
        .expect("the server's delayed-ACK delays");
    let total = m
        .one("sockq_delayed_ack_delay_seconds_sum", &server_labels)
        .expect("the server's delayed-ACK delays");
    let mean = total / count;
    assert!(
        (0.030..=0.060).contains(&mean),
        "mean delayed-ACK delay {mean} s over {count}"
    );

    // The notable event names the connection, both processes and the fix.
    let events = daemon.recent_events();
    let event = events
        .iter()
        .find(|e| {
            e["type"] == "nagle_delayed_ack_stall"
                && e["netns"].as_u64().map(|n| n.to_string()) == Some(netns.clone())
        })
        .unwrap_or_else(|| panic!("no stall event in {events:?}"));
    eprintln!("{event}");
    assert_eq!(event["schema"], 1, "{event}");
    assert_eq!(
        event["pid"].as_u64().map(|p| p.to_string()),
        Some(client_pid.clone()),
        "{event}"
    );
    assert_eq!(event["comm"], "sockq-scenario", "{event}");
    assert_eq!(event["remote"], "127.0.0.1:7101", "{event}");
    assert_eq!(event["nodelay"], false, "{event}");
    assert_eq!(
        event["peer"]["pid"].as_u64(),
        Some(u64::from(server.pid())),
        "the peer is the local server: {event}"
    );
    let stall = event["stall_seconds"].as_f64().unwrap_or_default();
    assert!((0.030..=0.060).contains(&stall), "{event}");
    assert!(
        event["fix"]
            .as_str()
            .is_some_and(|f| f.contains("TCP_NODELAY")),
        "{event}"
    );
    server.finish();
}

#[test]
fn nodelay_and_bulk_transfers_do_not_stall() {
    let ns = Netns::new("nagle-none");
    let netns = ns.inode().to_string();
    let daemon = Daemon::start_with(&["--interval", "1", "--nagle"]);
    let server = ns.scenario(&["wwr-server", "127.0.0.1:7102"]);

    let client = ns.scenario(&["wwr-client", "127.0.0.1:7102", &ROUNDS.to_string(), "1"]);
    let client_pid = client.pid().to_string();
    let ms = elapsed_ms(&client.first_line);
    client.finish();
    assert!(
        ms < ROUNDS * 10,
        "with TCP_NODELAY {ROUNDS} round trips took {ms} ms: the kernel stalled them"
    );
    let delayed_before = ns.counter("TcpExt.DelayedACKs");
    let bulk = ns.scenario(&["bulk", "127.0.0.1:7103", "64"]);
    let bulk_pid = bulk.pid().to_string();
    bulk.finish();
    let delayed_acks = ns.counter("TcpExt.DelayedACKs") - delayed_before;

    // sockq has seen both clients' writes once its count of TCP_NODELAY sends (host
    // wide) holds the client's 2 x ROUNDS and a poll has passed since.
    daemon.wait_for(Duration::from_secs(10), |m| {
        let sends = m.one("sockq_tcp_sends_total", &[("mode", "nodelay")])?;
        if sends < (2 * ROUNDS) as f64 {
            return Err(format!("{sends} TCP_NODELAY sends seen"));
        }
        Ok(())
    });
    std::thread::sleep(Duration::from_millis(1500));
    let m = daemon.metrics();
    // The bulk sender wrote with Nagle on and held data: Nagle holds, but none of
    // them a stall.
    let holds = sum(
        &m,
        "sockq_nagle_hold_seconds_count",
        &[("netns", netns.as_str()), ("pid", bulk_pid.as_str())],
    );
    let stalls = |pid: &str| {
        sum(
            &m,
            "sockq_nagle_delayed_ack_stalls_total",
            &[("netns", netns.as_str()), ("pid", pid)],
        )
    };
    let bulk_stalls = stalls(&bulk_pid);
    eprintln!(
        "bulk sender: {holds} Nagle holds, {bulk_stalls} stalls; kernel DelayedACKs delta \
         {delayed_acks}"
    );
    // TCP_NODELAY data is never held.
    assert_eq!(stalls(&client_pid), 0.0, "the TCP_NODELAY client stalled");
    // A bulk transfer's full segments are ACKed at once, but its last, partial one can
    // wait for a delayed ACK when the receiver is slow (a busy machine): a real
    // stall, which the kernel then counts as a delayed ACK. Never more than those.
    assert!(
        bulk_stalls <= delayed_acks as f64,
        "the bulk sender: {bulk_stalls} stalls, but the kernel fired {delayed_acks} delayed ACKs"
    );
    if delayed_acks == 0 {
        assert!(
            !daemon
                .recent_events()
                .iter()
                .any(|e| e["type"] == "nagle_delayed_ack_stall"
                    && e["netns"].as_u64().map(|n| n.to_string()) == Some(netns.clone())),
            "a stall event in a namespace where no delayed ACK fired"
        );
    }
    server.finish();
}

#[test]
fn the_family_is_off_by_default() {
    let ns = Netns::new("nagle-off");
    let netns = ns.inode().to_string();
    let daemon = Daemon::start("1");
    let server = ns.scenario(&["wwr-server", "127.0.0.1:7104"]);
    let client = ns.scenario(&["wwr-client", "127.0.0.1:7104", "5", "0"]);
    client.finish();
    let m = daemon.wait_for(Duration::from_secs(5), |m| {
        m.one("sockq_probe_attached", &[("probe", "tcp_probe")])?;
        Ok(m.clone())
    });
    for probe in [
        "timer_start",
        "timer_expire_entry",
        "tcp_sendmsg_locked",
        "tcp_probe",
    ] {
        assert_eq!(
            m.one("sockq_probe_attached", &[("probe", probe)]),
            Ok(0.0),
            "{probe}"
        );
    }
    assert_eq!(
        m.one("sockq_probe_attached", &[("probe", "sk_data_ready")]),
        Ok(1.0)
    );
    assert!(
        m.find("sockq_tcp_sends_total", &[]).is_empty()
            && m.find(
                "sockq_nagle_hold_seconds_count",
                &[("netns", netns.as_str())]
            )
            .is_empty()
    );
    server.finish();
}
