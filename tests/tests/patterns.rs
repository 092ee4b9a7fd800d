//! The backend execution patterns, each served by a scenario program of ours, and
//! classified by sockq from what the kernel shows (who accepts, who reads).

use std::time::Duration;

use sockq_tests::{Daemon, Netns, sockq_bin};

/// Runs `serve MODE` in its own namespace, chats with it, and waits until sockq
/// classifies every socket on the port as `expected`.
fn classified(mode: &str, port: u16, threads: &str, expected: &str) {
    let ns = Netns::new(&format!("pat-{mode}"));
    let netns = ns.inode().to_string();
    let daemon = Daemon::start("0.2");
    let addr = format!("127.0.0.1:{port}");
    let server = ns.scenario(&["serve", mode, &addr, threads]);
    // 60 connections: about 15 are sampled for their readers (1 in 4).
    ns.scenario(&["chat", &addr, "60", "4"]);
    let pid = server.pid().to_string();
    daemon.wait_for(Duration::from_secs(10), |m| {
        let info = m.find(
            "sockq_listener_info",
            &[
                ("netns", netns.as_str()),
                ("listen_addr", addr.as_str()),
                ("pid", pid.as_str()),
            ],
        );
        if info.is_empty() {
            return Err("no listener_info for the server".into());
        }
        let patterns: Vec<&str> = info.iter().map(|s| s.labels["pattern"].as_str()).collect();
        if patterns.iter().all(|p| *p == expected) {
            Ok(())
        } else {
            Err(format!("{mode}: patterns {patterns:?}, want {expected}"))
        }
    });
    // `sockq listeners` shows the daemon's view: pattern and accepting threads.
    let out = std::process::Command::new(sockq_bin())
        .args([
            "listeners",
            "--json",
            "--metrics-addr",
            &daemon.addr.to_string(),
        ])
        .output()
        .expect("sockq listeners");
    let rows: Vec<serde_json::Value> = serde_json::from_slice(&out.stdout).expect("JSON");
    let mine: Vec<_> = rows
        .iter()
        .filter(|r| {
            r["netns"].as_u64().map(|n| n.to_string()) == Some(netns.clone())
                && r["port"].as_u64() == Some(port.into())
        })
        .collect();
    assert!(!mine.is_empty(), "no rows for port {port}");
    for row in mine {
        assert_eq!(row["pattern"]["pattern"], expected, "{row}");
        assert!(
            row["pattern"]["evidence"]
                .as_str()
                .is_some_and(|e| !e.is_empty()),
            "{row}"
        );
        if mode != "reuseport" || row["acceptors"].as_array().is_some_and(|a| !a.is_empty()) {
            assert!(
                row["acceptors"].as_array().is_some_and(|a| !a.is_empty()),
                "{row}"
            );
        }
    }
    let table = std::process::Command::new(sockq_bin())
        .args(["listeners", "--metrics-addr", &daemon.addr.to_string()])
        .output()
        .expect("sockq listeners");
    let table = String::from_utf8_lossy(&table.stdout);
    assert!(
        table
            .lines()
            .any(|l| l.contains(&addr) && l.contains(expected)),
        "{table}"
    );
    server.finish();
}

#[test]
fn one_thread_accepts_and_reads() {
    classified("single", 7031, "1", "single_thread");
}

#[test]
fn one_acceptor_hands_connections_to_readers() {
    classified("handoff", 7032, "1", "acceptor_handoff");
}

/// Prefork and cluster servers: the acceptor process passes each connection's
/// descriptor to a reader process over a Unix socket.
#[test]
fn an_acceptor_process_passing_descriptors_to_readers_is_a_handoff() {
    classified("fdpass", 7036, "3", "acceptor_handoff");
}

/// The same, the acceptor peeking at each request first (to route it): a read by the
/// acceptor before the handoff does not make the connection's messages "balanced".
#[test]
fn an_acceptor_peeking_before_passing_descriptors_is_a_handoff() {
    classified("fdpass-peek", 7037, "3", "acceptor_handoff");
}

#[test]
fn one_acceptor_balances_messages_over_workers() {
    classified("balance", 7033, "3", "acceptor_message_balancing");
}

#[test]
fn several_threads_accept_on_one_socket() {
    classified("multi", 7034, "3", "multi_acceptor");
}

#[test]
fn sockets_sharded_with_reuseport() {
    classified("reuseport", 7035, "3", "reuseport_shards");
}
