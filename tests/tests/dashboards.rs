//! The Grafana dashboards in `dashboards/`: a real Prometheus (Debian's `prometheus`)
//! scrapes a running sockq while scenarios produce overflows, accept waits and
//! Nagle x delayed-ACK stalls, and every query of every panel must return at least
//! one series.

use std::{
    io::{Read as _, Write as _},
    net::TcpStream,
    path::PathBuf,
    process::{Child, Command, Stdio},
    time::{Duration, Instant},
};

use sockq_tests::{Daemon, Netns, free_port};

struct Prometheus {
    child: Child,
    port: u16,
    dir: PathBuf,
}

impl Prometheus {
    fn start(target: &str) -> Self {
        let port = free_port();
        let dir = std::env::temp_dir().join(format!("sockq-prom-{}-{port}", std::process::id()));
        std::fs::create_dir_all(&dir).expect("prometheus dir");
        let config = format!(
            "global:\n  scrape_interval: 1s\nscrape_configs:\n  - job_name: sockq\n    \
             static_configs:\n      - targets: ['{target}']\n"
        );
        std::fs::write(dir.join("prometheus.yml"), config).expect("config");
        let child = Command::new("prometheus")
            .arg(format!(
                "--config.file={}",
                dir.join("prometheus.yml").display()
            ))
            .arg(format!(
                "--storage.tsdb.path={}",
                dir.join("data").display()
            ))
            .arg(format!("--web.listen-address=127.0.0.1:{port}"))
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("prometheus (Debian package prometheus, installed by `cargo xtask setup`)");
        Self { child, port, dir }
    }

    /// Instant query through the HTTP API: the number of series returned.
    fn series(&self, query: &str) -> Result<usize, String> {
        let path = format!("/api/v1/query?query={}", percent_encode(query));
        let mut s = TcpStream::connect(("127.0.0.1", self.port)).map_err(|e| e.to_string())?;
        s.set_read_timeout(Some(Duration::from_secs(10)))
            .map_err(|e| e.to_string())?;
        write!(s, "GET {path} HTTP/1.0\r\nHost: localhost\r\n\r\n").map_err(|e| e.to_string())?;
        let mut response = String::new();
        s.read_to_string(&mut response).map_err(|e| e.to_string())?;
        let body = response
            .split_once("\r\n\r\n")
            .map(|(_, b)| b)
            .unwrap_or_default();
        let v: serde_json::Value =
            serde_json::from_str(body).map_err(|e| format!("{e}: {body}"))?;
        if v["status"] != "success" {
            return Err(format!("query failed: {body}"));
        }
        Ok(v["data"]["result"].as_array().map_or(0, Vec::len))
    }
}

impl Drop for Prometheus {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

fn percent_encode(s: &str) -> String {
    s.bytes()
        .map(|b| match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_' | b'.' | b'~' => {
                char::from(b).to_string()
            }
            _ => format!("%{b:02X}"),
        })
        .collect()
}

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
    let prometheus = Prometheus::start(&daemon.addr.to_string());
    // Overflows and drops; accept waits, acceptors and enqueue depths.
    let backlog = ns.scenario(&["backlog", "127.0.0.1:7051", "2", "8"]);
    let slow = ns.scenario(&["slow-accept", "127.0.0.1:7052", "5", "50"]);
    // Nagle x delayed-ACK stalls, delayed ACKs, Nagle holds (about 4 s).
    let wwr = ns.scenario(&["wwr-server", "127.0.0.1:7053"]);
    ns.scenario(&["wwr-client", "127.0.0.1:7053", "100", "0"])
        .finish();

    let deadline = Instant::now() + Duration::from_secs(60);
    let mut missing = Vec::new();
    loop {
        missing.clear();
        for (dashboard, panel, expr) in &queries {
            match prometheus.series(expr) {
                Ok(n) if n > 0 => {}
                Ok(_) => missing.push(format!("{dashboard} / {panel}: no series for {expr}")),
                Err(e) => missing.push(format!("{dashboard} / {panel}: {e}")),
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
}
