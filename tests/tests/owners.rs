//! Who owns a listener, and names chosen by whoever runs the process: they must come
//! out escaped in the Prometheus text and JSON, and parse back to what the kernel
//! holds.

use std::{process::Command, time::Duration};

use sockq_tests::{Daemon, Netns, sockq_bin};

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// `sockq listeners --json`: the owners of the listener on `port` in `netns`.
fn json_owners(netns: u64, port: u16) -> Vec<serde_json::Value> {
    let out = Command::new(sockq_bin())
        .args(["listeners", "--json"])
        .output()
        .expect("sockq listeners");
    let all: Vec<serde_json::Value> = serde_json::from_slice(&out.stdout).expect("JSON");
    all.into_iter()
        .find(|l| l["netns"].as_u64() == Some(netns) && l["port"].as_u64() == Some(port.into()))
        .and_then(|l| l["owners"].as_array().cloned())
        .unwrap_or_default()
}

#[test]
fn hostile_process_names_round_trip() {
    let ns = Netns::new("hostile");
    let netns = ns.inode();
    // Quotes, a backslash, a newline and braces: valid UTF-8, 10 bytes (comm holds 15).
    let name = "a\"b\\c\nd{}";
    let kernel_comm_of = |pid: u32| {
        let raw = std::fs::read(format!("/proc/{pid}/comm")).expect("comm");
        String::from_utf8(raw.strip_suffix(b"\n").unwrap_or(&raw).to_vec()).expect("utf-8")
    };
    let scenario = ns.scenario(&["named-listen", &hex(name.as_bytes()), "127.0.0.1:7021"]);
    assert_eq!(
        kernel_comm_of(scenario.pid()),
        name,
        "the kernel holds the hostile name"
    );

    // JSON carries it exactly, with the owner's command line and user.
    let owners = json_owners(netns, 7021);
    assert_eq!(owners.len(), 1, "{owners:?}");
    assert_eq!(owners[0]["comm"].as_str(), Some(name));
    assert!(
        owners[0]["cmdline"]
            .as_str()
            .is_some_and(|c| c.contains("named-listen")),
        "{owners:?}"
    );
    assert_eq!(owners[0]["user"].as_str(), Some("root"), "{owners:?}");

    // The Prometheus text escapes it; parsed back, it is the kernel's name again,
    // and it forges no line or series.
    let daemon = Daemon::start("0.2");
    let netns_label = netns.to_string();
    let pid = scenario.pid().to_string();
    daemon.wait_for(Duration::from_secs(5), |m| {
        let info = m.find(
            "sockq_listener_info",
            &[("netns", netns_label.as_str()), ("pid", pid.as_str())],
        );
        match info.as_slice() {
            [s] if s.labels["comm"] == name => Ok(()),
            other => Err(format!("{other:?}")),
        }
    });
    let text = daemon.metrics_text();
    assert!(
        text.lines()
            .all(|l| l.starts_with('#') || l.starts_with("sockq_") || l.is_empty()),
        "a line of /metrics does not start a sample:\n{text}"
    );

    // The table escapes it for the terminal.
    let table = Command::new(sockq_bin())
        .arg("listeners")
        .output()
        .expect("table");
    let table = String::from_utf8_lossy(&table.stdout);
    let row = table
        .lines()
        .find(|l| l.contains("127.0.0.1:7021"))
        .unwrap_or_else(|| panic!("no row:\n{table}"));
    assert!(row.contains("a\\\"b\\\\c\\nd{}"), "{row}");
    scenario.finish();
}

#[test]
fn invalid_utf8_names_are_replaced_not_dropped() {
    // Prometheus labels and JSON strings must be UTF-8: bytes that are not come out as
    // U+FFFD, the rest of the name intact.
    let ns = Netns::new("badutf8");
    let scenario = ns.scenario(&["named-listen", &hex(b"x\xffy\"z"), "127.0.0.1:7022"]);
    let owners = json_owners(ns.inode(), 7022);
    assert_eq!(owners.len(), 1, "{owners:?}");
    assert_eq!(owners[0]["comm"].as_str(), Some("x\u{fffd}y\"z"));
    scenario.finish();
}

#[test]
fn a_forked_listener_lists_both_owners_then_the_parent() {
    let ns = Netns::new("fork");
    let netns = ns.inode();
    let scenario = ns.scenario(&["fork-listen", "127.0.0.1:7023", "1500"]);
    let child: u64 = scenario
        .first_line
        .split_whitespace()
        .nth(2)
        .and_then(|p| p.parse().ok())
        .expect("child pid");
    let parent = u64::from(scenario.pid());
    let pids = |owners: Vec<serde_json::Value>| -> Vec<u64> {
        let mut p: Vec<u64> = owners.iter().filter_map(|o| o["pid"].as_u64()).collect();
        p.sort_unstable();
        p
    };
    assert_eq!(pids(json_owners(netns, 7023)), vec![parent, child]);
    // The child exits after 1.5 s; the parent keeps the listener.
    let deadline = std::time::Instant::now() + Duration::from_secs(5);
    loop {
        let now = pids(json_owners(netns, 7023));
        if now == vec![parent] {
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "owners {now:?}, want [{parent}]"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    scenario.finish();
}
