//! The foundation's promises, checked against the kernel's own accounting: real eBPF
//! programs loaded by the real `sockq` binary, real sockets, one network namespace per
//! test so the namespace's counters belong to the test alone.

use std::{
    collections::BTreeMap,
    process::Command,
    time::{Duration, Instant},
};

use sockq_tests::{Daemon, Netns, require_root, sockq_bin};

/// `ss -ltnmH` inside the namespace: (Recv-Q, Send-Q, drops) of the listener on `port`.
fn ss_listener(ns: &Netns, port: u16) -> (u32, u32, u64) {
    let out = ns.output("ss", &["-ltnmH", "sport", &format!("= :{port}")]);
    let mut fields = out.split_whitespace();
    let _state = fields.next().expect("ss state");
    let recv_q: u32 = fields.next().and_then(|f| f.parse().ok()).expect("Recv-Q");
    let send_q: u32 = fields.next().and_then(|f| f.parse().ok()).expect("Send-Q");
    // skmem:(r0,rb131072,t0,tb16384,f0,w0,o0,bl0,d15)
    let drops = out
        .split(['(', ',', ')'])
        .find_map(|f| f.strip_prefix('d').and_then(|d| d.parse::<u64>().ok()))
        .unwrap_or_else(|| panic!("no d<N> in ss output {out:?}"));
    (recv_q, send_q, drops)
}

/// `sockq listeners --json`, the listener on `port` in namespace `netns`.
fn sockq_listener(netns: u64, port: u16) -> serde_json::Value {
    let out = Command::new(sockq_bin())
        .args(["listeners", "--json"])
        .output()
        .expect("running sockq listeners");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let all: Vec<serde_json::Value> = serde_json::from_slice(&out.stdout).expect("JSON array");
    let mine: Vec<_> = all
        .into_iter()
        .filter(|l| l["netns"].as_u64() == Some(netns) && l["port"].as_u64() == Some(port.into()))
        .collect();
    assert_eq!(
        mine.len(),
        1,
        "listeners on port {port} in netns {netns}: {mine:?}"
    );
    mine.into_iter().next().expect("one")
}

#[test]
fn accept_queue_and_drops_match_the_kernel() {
    let ns = Netns::new("backlog");
    let netns = ns.inode();
    let base_drops = ns.counter("TcpExt.ListenDrops");
    let scenario = ns.scenario(&["backlog", "127.0.0.1:7001", "2", "8"]);

    // The clients keep retransmitting SYNs, so drops grow in steps: compare while
    // the kernel's counter holds still around our reading.
    let deadline = Instant::now() + Duration::from_secs(15);
    loop {
        let before = ns.counter("TcpExt.ListenDrops");
        let (recv_q, send_q, ss_drops) = ss_listener(&ns, 7001);
        let l = sockq_listener(netns, 7001);
        let after = ns.counter("TcpExt.ListenDrops");
        if before == after && ss_drops == after - base_drops {
            assert_eq!(l["accept_queue_len"].as_u64(), Some(recv_q.into()), "{l}");
            assert_eq!(recv_q, 3, "listen(2) holds limit + 1 on this kernel");
            assert_eq!(l["accept_queue_limit"].as_u64(), Some(send_q.into()), "{l}");
            assert_eq!(send_q, 2);
            let drops = l["drops"].as_u64().expect("drops");
            assert!(drops > 0, "8 connects into listen(2) must drop: {l}");
            assert_eq!(drops, after - base_drops, "drops vs ListenDrops delta: {l}");
            let owners = l["owners"].as_array().expect("owners");
            assert_eq!(owners.len(), 1, "{l}");
            assert_eq!(
                owners[0]["pid"].as_u64(),
                Some(scenario.pid().into()),
                "{l}"
            );
            assert_eq!(owners[0]["comm"].as_str(), Some("sockq-scenario"), "{l}");
            break;
        }
        assert!(Instant::now() < deadline, "ListenDrops never held still");
        std::thread::sleep(Duration::from_millis(100));
    }

    // The daemon's metrics tell the same story.
    let daemon = Daemon::start("0.2");
    let netns_label = netns.to_string();
    let labels = [
        ("netns", netns_label.as_str()),
        ("listen_addr", "127.0.0.1:7001"),
    ];
    daemon.wait_for(Duration::from_secs(15), |m| {
        let before = ns.counter("TcpExt.ListenDrops");
        let len = m.one("sockq_listen_accept_queue_length", &labels)?;
        let limit = m.one("sockq_listen_accept_queue_limit", &labels)?;
        let drops = m.one("sockq_listen_drops_total", &labels)?;
        let after = ns.counter("TcpExt.ListenDrops");
        let expected = (after - base_drops) as f64;
        if (len, limit) != (3.0, 2.0) || before != after || drops != expected {
            return Err(format!(
                "length {len} limit {limit} drops {drops}, kernel ListenDrops delta {expected}"
            ));
        }
        let pid = scenario.pid().to_string();
        m.one(
            "sockq_listener_info",
            &[
                labels[0],
                labels[1],
                ("pid", pid.as_str()),
                ("comm", "sockq-scenario"),
            ],
        )?;
        Ok(())
    });
    scenario.finish();
}

#[test]
fn state_transitions_count_exactly_what_connections_cause() {
    const K: u64 = 25;
    let ns = Netns::new("churn");
    let netns = ns.inode().to_string();
    let daemon = Daemon::start("0.2");
    let active = ns.counter("Tcp.ActiveOpens");
    let passive = ns.counter("Tcp.PassiveOpens");

    ns.scenario(&["churn", "127.0.0.1:7002", &K.to_string()])
        .finish();

    // RFC 793's state machine for a connection the client closes first, both ends
    // in this namespace, plus the listener opening and closing once.
    let mut expected: BTreeMap<(&str, &str), u64> = [
        ("CLOSE", "SYN_SENT"),
        ("SYN_SENT", "ESTABLISHED"),
        ("LISTEN", "SYN_RECV"),
        ("SYN_RECV", "ESTABLISHED"),
        ("ESTABLISHED", "FIN_WAIT1"),
        ("FIN_WAIT1", "FIN_WAIT2"),
        ("FIN_WAIT2", "CLOSE"),
        ("ESTABLISHED", "CLOSE_WAIT"),
        ("CLOSE_WAIT", "LAST_ACK"),
        ("LAST_ACK", "CLOSE"),
    ]
    .into_iter()
    .map(|pair| (pair, K))
    .collect();
    expected.insert(("CLOSE", "LISTEN"), 1);
    expected.insert(("LISTEN", "CLOSE"), 1);

    // The kernel's MIB agrees on the openings: ActiveOpens counts CLOSE -> SYN_SENT,
    // PassiveOpens counts children created from the listener.
    assert_eq!(ns.counter("Tcp.ActiveOpens") - active, K);
    assert_eq!(ns.counter("Tcp.PassiveOpens") - passive, K);

    daemon.wait_for(Duration::from_secs(10), |m| {
        let mut seen = BTreeMap::new();
        for s in m.find("sockq_tcp_state_transitions_total", &[("netns", &netns)]) {
            seen.insert(
                (s.labels["from"].clone(), s.labels["to"].clone()),
                s.value as u64,
            );
        }
        let want: BTreeMap<(String, String), u64> = expected
            .iter()
            .map(|((f, t), n)| ((f.to_string(), t.to_string()), *n))
            .collect();
        if seen == want {
            Ok(())
        } else {
            Err(format!(
                "transitions in netns {netns}: got {seen:?}, want {want:?}"
            ))
        }
    });
}

#[test]
fn a_listener_is_seen_appearing_and_disappearing_within_one_poll() {
    let ns = Netns::new("appear");
    let netns = ns.inode().to_string();
    let daemon = Daemon::start("1");
    let labels = [("netns", netns.as_str()), ("listen_addr", "127.0.0.1:7003")];
    assert!(
        daemon
            .metrics()
            .find("sockq_listen_accept_queue_limit", &labels)
            .is_empty()
    );

    let scenario = ns.scenario(&["listen", "127.0.0.1:7003"]);
    let started = Instant::now();
    daemon.wait_for(Duration::from_secs(1), |m| {
        m.one("sockq_listen_accept_queue_limit", &labels)
            .map(|_| ())
    });
    eprintln!("listener appeared after {:?}", started.elapsed());

    scenario.finish();
    let stopped = Instant::now();
    daemon.wait_for(Duration::from_secs(1), |m| {
        match m.find("sockq_listen_accept_queue_limit", &labels).len() {
            0 => Ok(()),
            n => Err(format!("{n} series still present")),
        }
    });
    eprintln!("listener gone after {:?}", stopped.elapsed());
}

#[test]
fn metrics_are_valid_exposition() {
    require_root();
    let ns = Netns::new("promtool");
    let _scenario = ns.scenario(&["backlog", "[::1]:7004", "2", "4"]);
    let daemon = Daemon::start("0.2");
    let netns = ns.inode().to_string();
    // The scenario connected before sockq started, so the first transitions counted
    // are those of the scrapes themselves, seen from the poll after the first.
    daemon.wait_for(Duration::from_secs(5), |m| {
        m.one(
            "sockq_listen_accept_queue_length",
            &[("netns", &netns), ("listen_addr", "[::1]:7004")],
        )?;
        if m.find("sockq_tcp_state_transitions_total", &[]).is_empty() {
            return Err("no transition counted yet".into());
        }
        Ok(())
    });
    let text = daemon.metrics_text();
    for name in [
        "sockq_listen_accept_queue_length",
        "sockq_listen_accept_queue_limit",
        "sockq_listen_syn_queue_length",
        "sockq_listen_drops_total",
        "sockq_tcp_state_transitions_total",
        "sockq_listener_info",
        "sockq_events_lost_total",
        "sockq_probe_attached",
        "sockq_build_info",
    ] {
        assert!(
            text.contains(&format!("\n{name}")),
            "{name} missing from /metrics"
        );
    }
    assert!(
        text.contains("sockq_probe_attached{probe=\"inet_sock_set_state\"} 1"),
        "probe not attached:\n{text}"
    );
    let mut child = Command::new("promtool")
        .args(["check", "metrics"])
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("promtool (Debian package prometheus) is installed by `cargo xtask setup`");
    use std::io::Write as _;
    child
        .stdin
        .take()
        .expect("stdin")
        .write_all(text.as_bytes())
        .expect("write to promtool");
    let out = child.wait_with_output().expect("promtool");
    assert!(
        out.status.success(),
        "promtool check metrics: {}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

#[test]
fn doctor_reports_what_attaches_here() {
    require_root();
    let out = Command::new(sockq_bin())
        .arg("doctor")
        .output()
        .expect("sockq doctor");
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        text.contains("probe inet_sock_set_state") && text.contains("attaches as raw_tracepoint"),
        "{text}"
    );
    assert!(text.contains("[ ok ] BTF"), "{text}");
    assert!(out.status.success(), "doctor failed:\n{text}");
}

#[test]
fn metrics_port_in_use_is_a_clear_error() {
    require_root();
    let taken = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
    let addr = taken.local_addr().expect("addr").to_string();
    let out = Command::new(sockq_bin())
        .args(["run", "--metrics-addr", &addr])
        .output()
        .expect("sockq run");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{stderr}");
    assert!(stderr.contains("already in use"), "{stderr}");
}
