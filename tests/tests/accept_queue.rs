//! The accept queue and SYN backlog, per listener, against the kernel's own
//! accounting: sock_diag (`ss`), the namespace's `/proc/net/netstat`, and the
//! scenario programs' known behaviour. Each test in its own network namespace.

use std::time::{Duration, Instant};

use sockq_tests::{Daemon, Netns, histogram_quantile};

/// `ss -ltneH` in the namespace: (inode, Recv-Q) of each listener on `port`.
fn ss_listeners(ns: &Netns, port: u16) -> Vec<(u64, u32)> {
    let out = ns.output("ss", &["-ltneH", "sport", &format!("= :{port}")]);
    out.lines()
        .map(|line| {
            let mut f = line.split_whitespace();
            let _state = f.next();
            let recv_q: u32 = f.next().and_then(|v| v.parse().ok()).expect("Recv-Q");
            let inode = line
                .split_whitespace()
                .find_map(|w| w.strip_prefix("ino:").and_then(|i| i.parse().ok()))
                .unwrap_or_else(|| panic!("no ino: in {line:?}"));
            (inode, recv_q)
        })
        .collect()
}

#[test]
fn overflow_is_one_episode_within_a_second_with_exact_drops() {
    let ns = Netns::new("episode");
    let netns = ns.inode().to_string();
    let daemon = Daemon::start("1");
    let base = ns.counter("TcpExt.ListenDrops");

    let started = Instant::now();
    let scenario = ns.scenario(&["backlog", "127.0.0.1:7011", "2", "8"]);
    let is_mine = |e: &serde_json::Value| {
        e["type"] == "accept_queue_full"
            && e["netns"].as_u64().map(|n| n.to_string()) == Some(netns.clone())
            && e["listen_addr"] == "127.0.0.1:7011"
    };
    let start_event = loop {
        if let Some(e) = daemon
            .recent_events()
            .into_iter()
            .find(|e| is_mine(e) && e["phase"] == "start")
        {
            break e;
        }
        assert!(
            started.elapsed() < Duration::from_secs(1),
            "no accept_queue_full start event within 1 s of the overflow"
        );
        std::thread::sleep(Duration::from_millis(20));
    };
    eprintln!(
        "episode reported after {:?}: {start_event}",
        started.elapsed()
    );
    assert_eq!(start_event["schema"], 1, "{start_event}");
    assert_eq!(start_event["limit"], 2, "{start_event}");
    assert_eq!(
        start_event["owners"][0]["pid"].as_u64(),
        Some(u64::from(scenario.pid())),
        "{start_event}"
    );
    assert!(
        start_event["fix"].as_str().is_some_and(|f| !f.is_empty()),
        "{start_event}"
    );

    // The clients keep retransmitting SYNs into the full queue: the drops keep
    // growing, the episode must not be reported again, and sockq's drop count must
    // equal the kernel's at a moment the kernel's holds still.
    let labels = [("netns", netns.as_str()), ("listen_addr", "127.0.0.1:7011")];
    std::thread::sleep(Duration::from_secs(2));
    daemon.wait_for(Duration::from_secs(10), |m| {
        let before = ns.counter("TcpExt.ListenDrops");
        let drops = m.one("sockq_listen_drops_total", &labels)?;
        let full = m.one("sockq_listen_accept_queue_full", &labels)?;
        let after = ns.counter("TcpExt.ListenDrops");
        let expected = (after - base) as f64;
        if before != after || drops != expected || full != 1.0 {
            return Err(format!(
                "drops {drops} vs ListenDrops delta {expected}, full {full}"
            ));
        }
        Ok(())
    });
    let starts = daemon
        .recent_events()
        .into_iter()
        .filter(|e| is_mine(e) && e["phase"] == "start")
        .count();
    assert_eq!(starts, 1, "one episode, one start event");

    // Ending the scenario closes the listener: the episode ends.
    scenario.finish();
    daemon.wait_for(Duration::from_secs(5), |_| {
        let ends = daemon
            .recent_events()
            .into_iter()
            .filter(|e| is_mine(e) && e["phase"] == "end")
            .count();
        if ends == 1 {
            Ok(())
        } else {
            Err(format!("{ends} end events"))
        }
    });
}

#[test]
fn accept_wait_is_the_time_spent_queued() {
    const CONNECTIONS: u64 = 10;
    let ns = Netns::new("acceptwait");
    let netns = ns.inode().to_string();
    // The fine classic buckets: the median below is read to a quarter of an octave.
    let daemon = Daemon::start_with(&["--interval", "0.2", "--fine-buckets"]);
    let scenario = ns.scenario(&[
        "slow-accept",
        "127.0.0.1:7012",
        &CONNECTIONS.to_string(),
        "200",
    ]);
    let labels = [("netns", netns.as_str()), ("listen_addr", "127.0.0.1:7012")];
    let pid = scenario.pid().to_string();
    daemon.wait_for(Duration::from_secs(5), |m| {
        let count = m.one("sockq_accept_wait_seconds_count", &labels)?;
        let accepts = m.one("sockq_listen_accepts_total", &labels)?;
        if count != CONNECTIONS as f64 || accepts != CONNECTIONS as f64 {
            return Err(format!(
                "{count} waits, {accepts} accepts, want {CONNECTIONS}"
            ));
        }
        let buckets = m.find("sockq_accept_wait_seconds_bucket", &labels);
        let median = histogram_quantile(0.5, &buckets).ok_or("empty histogram")?;
        assert!(
            (0.200..=0.260).contains(&median),
            "accept wait median {median} s, the server sleeps 200 ms before each accept"
        );
        let mean = m.one("sockq_accept_wait_seconds_sum", &labels)? / count;
        assert!((0.195..=0.260).contains(&mean), "mean accept wait {mean} s");
        // Every accept came from the scenario's one server thread.
        let per_thread = m.find(
            "sockq_acceptor_accepts_total",
            &[labels[0], labels[1], ("pid", pid.as_str())],
        );
        assert_eq!(per_thread.len(), 1, "{per_thread:?}");
        assert_eq!(per_thread[0].value, CONNECTIONS as f64);
        assert_ne!(
            per_thread[0].labels["tid"], pid,
            "accepts come from the server thread"
        );
        Ok(())
    });
    scenario.finish();
}

/// The oldest wait is the age of the connection at the head of the queue: connects
/// that nobody accepts are as old as the time since they were made, and grow with it.
#[test]
fn oldest_wait_is_the_age_of_the_queue_head() {
    let ns = Netns::new("oldest");
    let netns = ns.inode().to_string();
    let daemon = Daemon::start("0.2");
    let started = Instant::now();
    // Three connects that fit in a backlog of 4; the server never accepts.
    let scenario = ns.scenario(&["backlog", "127.0.0.1:7013", "4", "3"]);
    let made = started.elapsed().as_secs_f64();
    assert_eq!(
        ss_listeners(&ns, 7013)
            .iter()
            .map(|l| l.1)
            .collect::<Vec<_>>(),
        [3],
        "ss: three connections queued"
    );
    let labels = [("netns", netns.as_str()), ("listen_addr", "127.0.0.1:7013")];
    let mut seen = Vec::new();
    for wait_until in [1.5, 3.0] {
        std::thread::sleep(Duration::from_secs_f64(
            (wait_until - started.elapsed().as_secs_f64()).max(0.0),
        ));
        let oldest = daemon.wait_for(Duration::from_secs(5), |m| {
            m.one("sockq_listen_oldest_wait_seconds", &labels)
        });
        let now = started.elapsed().as_secs_f64();
        // Queued after `started`, before the scenario said ready; measured by a poll
        // at most 0.2 s (and a render) before this scrape.
        assert!(
            oldest <= now && oldest >= now - made - 0.6,
            "oldest wait {oldest} s, {now} s after the connects began ({made} s to make them)"
        );
        seen.push(oldest);
    }
    assert!(seen[1] > seen[0] + 1.0, "the oldest wait grows: {seen:?}");
    scenario.finish();
}

#[test]
fn syn_queue_matches_ss_and_synack_retransmits_grow() {
    const HANDSHAKES: usize = 5;
    // A client in another namespace whose handshakes never complete: the server's
    // route back to it goes through a neighbour that does not exist, so every
    // SYN-ACK is lost, the request sockets stay in the SYN queue and the listener
    // keeps retransmitting SYN-ACKs.
    let server = Netns::new("synq-server");
    let client = Netns::new("synq-client");
    let (server_ip, _, _, _) = server.link_with_lost_replies(&client);
    let netns = server.inode().to_string();
    let daemon = Daemon::start("0.2");
    let listen_addr = format!("{server_ip}:7013");
    let listener = server.scenario(&["listen", &listen_addr]);
    let clients = client.scenario(&["connect", &listen_addr, &HANDSHAKES.to_string()]);
    let labels = [
        ("netns", netns.as_str()),
        ("listen_addr", listen_addr.as_str()),
    ];

    // `ss state syn-recv` lists the request sockets: the kernel's SYN queue.
    let ss_syn_recv = || {
        server
            .output("ss", &["-tnH", "state", "syn-recv", "sport", "= :7013"])
            .lines()
            .count()
    };
    daemon.wait_for(Duration::from_secs(5), |m| {
        let before = ss_syn_recv();
        let sockq = m.one("sockq_listen_syn_queue_length", &labels)?;
        let after = ss_syn_recv();
        if before != after || sockq != before as f64 || before != HANDSHAKES {
            return Err(format!(
                "sockq SYN queue {sockq}, ss syn-recv {before}/{after}"
            ));
        }
        Ok(())
    });
    // Every retransmitted SYN-ACK is counted for this listener, and the namespace's
    // own TCPSynRetrans (which counts nothing else here) agrees.
    daemon.wait_for(Duration::from_secs(6), |m| {
        let before = server.counter("TcpExt.TCPSynRetrans");
        let retrans = m.one("sockq_listen_synack_retransmits_total", &labels)?;
        let after = server.counter("TcpExt.TCPSynRetrans");
        if retrans >= (2 * HANDSHAKES) as f64 && before == after && retrans == after as f64 {
            Ok(())
        } else {
            Err(format!(
                "SYN-ACK retransmits {retrans}, TCPSynRetrans {before}/{after}"
            ))
        }
    });
    clients.finish();
    listener.finish();
}

#[test]
fn reuseport_shards_are_reported_one_by_one() {
    const CONNECTS: usize = 40;
    let ns = Netns::new("reuseport");
    let netns = ns.inode().to_string();
    let daemon = Daemon::start("0.2");
    let scenario = ns.scenario(&["reuseport", "127.0.0.1:7014", "4", &CONNECTS.to_string()]);
    let addr = [("netns", netns.as_str()), ("listen_addr", "127.0.0.1:7014")];
    daemon.wait_for(Duration::from_secs(5), |m| {
        let ss = ss_listeners(&ns, 7014);
        if ss.len() != 4 {
            return Err(format!("ss shows {} shards", ss.len()));
        }
        if m.one("sockq_listen_group_sockets", &addr)? != 4.0 {
            return Err("group size is not 4".into());
        }
        let mut busy = 0;
        let mut idle_queued = 0;
        for (inode, recv_q) in &ss {
            let socket = inode.to_string();
            let labels = [addr[0], addr[1], ("socket", socket.as_str())];
            let depth = m.one("sockq_listen_accept_queue_length", &labels)?;
            if depth != f64::from(*recv_q) {
                return Err(format!(
                    "shard {inode}: sockq depth {depth}, ss Recv-Q {recv_q}"
                ));
            }
            let accepts = m.one("sockq_listen_accepts_total", &labels)?;
            if accepts > 0.0 {
                busy += 1;
                assert!(
                    depth <= 1.0,
                    "the accepting shard stays near empty: {depth}"
                );
            } else {
                idle_queued += *recv_q as usize;
            }
        }
        if busy != 1 {
            return Err(format!("{busy} shards accepted"));
        }
        // Whatever the busy shard did not take waits in the idle shards' queues.
        assert!(
            idle_queued > 0 && idle_queued < CONNECTS,
            "{idle_queued} queued"
        );
        Ok(())
    });
    scenario.finish();
}

#[test]
fn final_ack_overflows_are_counted_by_drop_reason() {
    // Two handshakes wait in the SYN queue while the server's SYN-ACKs to their client
    // address are lost; three other connections then fill the accept queue (limit 2,
    // so 3 fit). When the way back opens, the retransmitted SYN-ACKs are answered and
    // the final ACKs find the queue full: the kernel refuses them with
    // SKB_DROP_REASON_TCP_LISTEN_OVERFLOW and counts each in ListenOverflows. SYNs
    // refused by a full queue (ListenOverflows' other path, without a drop reason) do
    // not happen: the clients' retransmitted SYNs hit their existing request sockets.
    let server = Netns::new("ovf-server");
    let client = Netns::new("ovf-client");
    let (server_ip, client_ip, client_dev, route) = server.link_with_lost_replies(&client);
    let [a, b, c, _] = server_ip.octets();
    let other_client = std::net::Ipv4Addr::new(a, b, c, 3);
    client.ip(&[
        "addr",
        "add",
        &format!("{other_client}/24"),
        "dev",
        &client_dev,
    ]);
    let netns = server.inode().to_string();
    let daemon = Daemon::start("0.2");
    let listen_addr = format!("{server_ip}:7015");
    let listener = server.scenario(&["backlog", &listen_addr, "2", "0"]);
    let base = server.counter("TcpExt.ListenOverflows");
    let pending = client.scenario(&["connect", &listen_addr, "2", &client_ip.to_string()]);
    let fillers = client.scenario(&["connect", &listen_addr, "3", &other_client.to_string()]);
    std::thread::sleep(Duration::from_millis(300));
    let (len, limit, _) = ss_listener_queue(&server, 7015);
    assert_eq!(
        (len, limit),
        (3, 2),
        "the accept queue is full before the route opens"
    );
    assert_eq!(
        server.counter("TcpExt.ListenOverflows"),
        base,
        "no overflow yet"
    );
    server.ip(&["route", "del", &route]);

    let labels = [
        ("netns", netns.as_str()),
        ("listen_addr", listen_addr.as_str()),
        ("reason", "TCP_LISTEN_OVERFLOW"),
    ];
    daemon.wait_for(Duration::from_secs(8), |m| {
        let before = server.counter("TcpExt.ListenOverflows") - base;
        let sockq = m.one("sockq_listen_drop_reasons_total", &labels)?;
        let after = server.counter("TcpExt.ListenOverflows") - base;
        if sockq > 0.0 && before == after && sockq == after as f64 {
            Ok(())
        } else {
            Err(format!(
                "TCP_LISTEN_OVERFLOW drops {sockq}, ListenOverflows delta {before}/{after}"
            ))
        }
    });
    pending.finish();
    fillers.finish();
    listener.finish();
}

/// `ss -ltnH` in the namespace: (Recv-Q, Send-Q, 0) of the listener on `port`.
fn ss_listener_queue(ns: &Netns, port: u16) -> (u32, u32, u32) {
    let out = ns.output("ss", &["-ltnH", "sport", &format!("= :{port}")]);
    let mut f = out.split_whitespace().skip(1);
    let recv_q = f.next().and_then(|v| v.parse().ok()).expect("Recv-Q");
    let send_q = f.next().and_then(|v| v.parse().ok()).expect("Send-Q");
    (recv_q, send_q, 0)
}

/// Linux returns connections their clients reset while queued from accept(): their
/// accept wait is counted like any other, so waits equal accepts.
#[test]
fn children_reset_while_queued_have_their_wait_counted() {
    let ns = Netns::new("chreset");
    let daemon = Daemon::start("0.5");
    let held = ns.scenario(&["reset-queued", "127.0.0.1:7103", "25"]);
    let netns = ns.inode().to_string();
    let listener = [("netns", netns.as_str()), ("listen_addr", "127.0.0.1:7103")];
    daemon.wait_for(Duration::from_secs(10), |m| {
        let accepts = m.one("sockq_listen_accepts_total", &listener)?;
        let waits = m
            .one("sockq_accept_wait_seconds_count", &listener)
            .unwrap_or(0.0);
        if accepts == 25.0 && waits == 25.0 {
            Ok(())
        } else {
            Err(format!(
                "accepts {accepts}, accept waits {waits}: both must be 25"
            ))
        }
    });
    held.finish();
}
