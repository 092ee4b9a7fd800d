//! The Grafana dashboards in `dashboards/`: two real Prometheus servers (Debian's
//! `prometheus`), one with native histograms (protobuf scrapes) and one without
//! (classic `_bucket` series from the text format), scrape a running sockq while
//! scenarios produce overflows, accept waits, Nagle x delayed-ACK stalls and refused
//! Unix connects, and every query of every panel must return at least one series
//! from each.

use std::{
    path::PathBuf,
    time::{Duration, Instant},
};

use sockq_tests::{Daemon, Netns, prometheus::Prometheus, test_bin};

/// Every panel query of every dashboard, with the template variables set to match all.
fn dashboard_queries() -> Vec<(String, String, String)> {
    let dir = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../dashboards");
    let mut out = Vec::new();
    for entry in std::fs::read_dir(&dir).expect("dashboards/").flatten() {
        let path = entry.path();
        if path.extension().and_then(|e| e.to_str()) != Some("json") {
            continue;
        }
        let d: serde_json::Value =
            serde_json::from_str(&std::fs::read_to_string(&path).expect("read")).expect("JSON");
        let title = d["title"].as_str().expect("dashboard title").to_owned();
        let vars = d["templating"]["list"].as_array().expect("templating");
        assert!(
            vars.iter().any(|v| v["type"] == "datasource"),
            "{title}: the datasource must be a variable"
        );
        for panel in d["panels"].as_array().expect("panels") {
            for target in panel["targets"].as_array().expect("targets") {
                let expr = target["expr"].as_str().expect("expr");
                let expr = expr
                    .replace("$instance", ".*")
                    .replace("$netns", ".*")
                    .replace("$listen_addr", ".*");
                let panel_title = panel["title"].as_str().unwrap_or_default().to_owned();
                out.push((title.clone(), panel_title, expr));
            }
        }
    }
    assert!(out.len() >= 20, "only {} queries found", out.len());
    out
}

#[test]
fn every_panel_query_returns_series() {
    let queries = dashboard_queries();
    let ns = Netns::new("dash");
    let daemon = Daemon::start_with(&["--interval", "1", "--nagle"]);
    let servers = [
        ("native", Prometheus::start(&daemon.addr.to_string(), true)),
        (
            "classic",
            Prometheus::start(&daemon.addr.to_string(), false),
        ),
    ];
    // Overflows and drops; accept waits, acceptors and enqueue depths.
    let backlog = ns.scenario(&["backlog", "127.0.0.1:7051", "2", "8"]);
    let slow = ns.scenario(&["slow-accept", "127.0.0.1:7052", "5", "50"]);
    // Nagle x delayed-ACK stalls, delayed ACKs, Nagle holds (about 4 s).
    let wwr = ns.scenario(&["wwr-server", "127.0.0.1:7053"]);
    // A Unix listener whose full queue refuses connects.
    let unixsrv = test_bin("sockq-unixsrv");
    let unix = ns.program(&unixsrv, &["listen", "@sockq-dash", "2", "stream"]);
    let unix_clients = ns.program(&unixsrv, &["connect", "@sockq-dash", "6", "stream"]);
    ns.scenario(&["wwr-client", "127.0.0.1:7053", "100", "0"])
        .finish();

    let deadline = Instant::now() + Duration::from_secs(60);
    let mut missing = Vec::new();
    loop {
        missing.clear();
        for ((dashboard, panel, expr), (kind, prometheus)) in queries
            .iter()
            .flat_map(|q| servers.iter().map(move |s| (q, s)))
        {
            match prometheus.series(expr) {
                Ok(n) if n > 0 => {}
                Ok(_) => missing.push(format!(
                    "{kind}: {dashboard} / {panel}: no series for {expr}"
                )),
                Err(e) => missing.push(format!("{kind}: {dashboard} / {panel}: {e}")),
            }
        }
        if missing.is_empty() {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "after 60 s:\n{}",
            missing.join("\n")
        );
        std::thread::sleep(Duration::from_secs(2));
    }
    backlog.finish();
    slow.finish();
    wwr.finish();
    unix_clients.finish();
    unix.finish();
}
