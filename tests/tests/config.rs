//! `sockq run --config`: the file, the environment and the flags layered in that
//! order (`--print-config` shows the result), bad configurations refused with status
//! 2, and the listener filters against the kernel's own list (`ss -ltn` in a network
//! namespace of the test's own).

use std::{
    collections::BTreeMap,
    path::PathBuf,
    process::{Command, Output},
    time::Duration,
};

use sockq_tests::{Daemon, Metrics, Netns, sockq_bin, try_get};

/// A file in the temporary directory, removed when dropped.
struct TempFile(PathBuf);

impl TempFile {
    fn new(name: &str, text: &str) -> Self {
        let path = std::env::temp_dir().join(format!("sockq-config-{}-{name}", std::process::id()));
        std::fs::write(&path, text).unwrap_or_else(|e| panic!("writing {}: {e}", path.display()));
        Self(path)
    }

    fn path(&self) -> &str {
        self.0.to_str().expect("UTF-8 temp path")
    }
}

impl Drop for TempFile {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.0);
    }
}

/// `sockq run ARGS` with only the `SOCKQ_*` variables given here.
fn sockq_run(args: &[&str], env: &[(&str, &str)]) -> Output {
    let mut cmd = Command::new(sockq_bin());
    cmd.arg("run").args(args);
    for (key, _) in std::env::vars() {
        if key.starts_with("SOCKQ_") {
            cmd.env_remove(key);
        }
    }
    cmd.envs(env.iter().copied());
    cmd.output()
        .unwrap_or_else(|e| panic!("running {}: {e}", sockq_bin().display()))
}

fn stdout(out: &Output) -> String {
    String::from_utf8_lossy(&out.stdout).into_owned()
}

fn stderr(out: &Output) -> String {
    String::from_utf8_lossy(&out.stderr).into_owned()
}

#[test]
fn print_config_layers_file_then_environment_then_flags() {
    let file = TempFile::new(
        "layers.toml",
        "[http]\nmetrics_addr = \"127.0.0.1:9001\"\n[poll]\ninterval = 2\n\
         [probes]\nnagle = true\nconn_track_entries = 512\n\
         [listeners]\nexclude = [\"port=22\"]\n",
    );
    let out = sockq_run(&["--config", file.path(), "--print-config"], &[]);
    assert!(out.status.success(), "{}", stderr(&out));
    let text = stdout(&out);
    for line in [
        "metrics_addr = \"127.0.0.1:9001\"\n",
        "interval = 2.0\n",
        "nagle = true\n",
        "conn_track_entries = 512\n",
        "exclude = [\"port=22\"]\n",
        "include = []\n",
    ] {
        assert!(text.contains(line), "the file's {line:?} not in:\n{text}");
    }

    let env = [
        ("SOCKQ_INTERVAL", "3"),
        ("SOCKQ_NAGLE", "false"),
        ("SOCKQ_LISTENERS_EXCLUDE", "port=23;comm=ssh*"),
    ];
    let out = sockq_run(
        &[
            "--config",
            file.path(),
            "--print-config",
            "--interval",
            "4",
            "--metrics-addr",
            "127.0.0.1:9002",
        ],
        &env,
    );
    assert!(out.status.success(), "{}", stderr(&out));
    let text = stdout(&out);
    for line in [
        "metrics_addr = \"127.0.0.1:9002\"\n", // flag over file
        "interval = 4.0\n",                    // flag over environment over file
        "nagle = false\n",                     // environment over file
        "conn_track_entries = 512\n",          // file over default
        "exclude = [\"port=23\", \"comm=ssh*\"]\n",
    ] {
        assert!(text.contains(line), "{line:?} not in:\n{text}");
    }

    // The file SOCKQ_CONFIG names, and what it prints reads back the same.
    let printed = TempFile::new("printed.toml", &text);
    let again = sockq_run(&["--print-config"], &[("SOCKQ_CONFIG", printed.path())]);
    assert!(again.status.success(), "{}", stderr(&again));
    assert_eq!(
        stdout(&again),
        text,
        "a printed configuration reads back as itself"
    );
}

#[test]
fn bad_configurations_stop_sockq_with_status_2() {
    let unknown = TempFile::new(
        "unknown.toml",
        "[http]\nno_api = true\nmetric_addr = \"x\"\n",
    );
    let malformed = TempFile::new("malformed.toml", "[poll]\ninterval = \n");
    let bad_rule = TempFile::new("rule.toml", "[listeners]\ninclude = [\"port=abc\"]\n");
    for (args, expected) in [
        (
            vec!["--config", unknown.path()],
            vec![unknown.path(), "line 3", "`metric_addr`"],
        ),
        (
            vec!["--config", malformed.path()],
            vec![malformed.path(), "line 2"],
        ),
        (
            vec!["--config", bad_rule.path()],
            vec![bad_rule.path(), "line 2", "`abc` is not a port"],
        ),
        (
            vec!["--config", "/nonexistent/sockq.toml"],
            vec!["/nonexistent/sockq.toml"],
        ),
        (
            vec!["--listeners-include", "port=abc"],
            vec!["`abc` is not a port"],
        ),
        (
            vec!["--listeners-exclude", "pid=1"],
            vec!["unknown key `pid`"],
        ),
        (vec!["--nagle=maybe"], vec!["maybe"]),
    ] {
        // Each would bind this port if it started: it must not.
        let port = sockq_tests::free_port().to_string();
        let addr = format!("127.0.0.1:{port}");
        let mut all = args.clone();
        all.extend(["--metrics-addr", &addr]);
        let out = sockq_run(&all, &[]);
        let err = stderr(&out);
        eprintln!("sockq run {args:?}: {:?}\n{err}", out.status.code());
        assert_eq!(out.status.code(), Some(2), "sockq run {args:?}: {err}");
        for needle in expected {
            assert!(
                err.contains(needle),
                "sockq run {args:?}: {needle:?} not in {err}"
            );
        }
    }
}

/// `ss -ltnH` in the namespace: (listen address, Send-Q: the accept queue limit).
fn ss_listeners(ns: &Netns) -> Vec<(String, u32)> {
    ns.output("ss", &["-ltnH"])
        .lines()
        .map(|line| {
            let f: Vec<&str> = line.split_whitespace().collect();
            let limit = f
                .get(2)
                .and_then(|v| v.parse().ok())
                .unwrap_or_else(|| panic!("Send-Q in {line:?}"));
            let addr = f.get(3).unwrap_or_else(|| panic!("address in {line:?}"));
            ((*addr).to_owned(), limit)
        })
        .collect()
}

/// Every sample about the listener `listen_addr` of namespace `netns`.
fn series_of(m: &Metrics, netns: &str, listen_addr: &str) -> usize {
    m.samples
        .iter()
        .filter(|s| {
            s.labels.get("netns").map(String::as_str) == Some(netns)
                && s.labels.get("listen_addr").map(String::as_str) == Some(listen_addr)
        })
        .count()
}

/// How many samples of each metric are about that listener.
fn series_by_name(m: &Metrics, netns: &str, listen_addr: &str) -> BTreeMap<String, usize> {
    let mut by_name = BTreeMap::new();
    for s in &m.samples {
        if s.labels.get("netns").map(String::as_str) == Some(netns)
            && s.labels.get("listen_addr").map(String::as_str) == Some(listen_addr)
        {
            *by_name.entry(s.name.clone()).or_insert(0) += 1;
        }
    }
    by_name
}

/// The `addr:port` of each `/api/listeners` row of namespace `netns`.
fn api_listeners(daemon: &Daemon, netns: u64) -> Vec<String> {
    let body = try_get(daemon.addr, "/api/listeners").expect("GET /api/listeners");
    let rows: serde_json::Value =
        serde_json::from_str(&body).unwrap_or_else(|e| panic!("{e}: {body}"));
    rows.as_array()
        .into_iter()
        .flatten()
        .filter(|r| r["netns"].as_u64() == Some(netns))
        .map(|r| format!("{}:{}", r["addr"].as_str().unwrap_or(""), r["port"]))
        .collect()
}

/// Checks the daemon's view of the namespace against `ss`: each listener `expected`
/// keeps is exported with the kernel's queue limit, the others have no series and
/// no API row. Returns the series of the first listener kept, by metric.
fn check_against_ss(
    daemon: &Daemon,
    ns: &Netns,
    expected: impl Fn(&str) -> bool,
    excluded: impl Fn(f64) -> bool,
) -> BTreeMap<String, usize> {
    let netns = ns.inode().to_string();
    let listeners = ss_listeners(ns);
    assert_eq!(
        listeners.len(),
        5,
        "the scenarios' listeners in ss: {listeners:?}"
    );
    let m = daemon.wait_for(Duration::from_secs(10), |m| {
        for (addr, limit) in &listeners {
            let labels = [("netns", netns.as_str()), ("listen_addr", addr.as_str())];
            let series = series_of(m, &netns, addr);
            if expected(addr) {
                let exported = m.one("sockq_listen_accept_queue_limit", &labels)?;
                if exported != f64::from(*limit) {
                    return Err(format!("{addr}: limit {exported}, ss says {limit}"));
                }
            } else if series > 0 {
                return Err(format!("{addr} is excluded but has {series} series"));
            }
        }
        let n = m.one("sockq_listeners_excluded", &[])?;
        if !excluded(n) {
            return Err(format!("sockq_listeners_excluded is {n}"));
        }
        Ok(m.clone())
    });
    let api = api_listeners(daemon, ns.inode());
    for (addr, _) in &listeners {
        assert_eq!(
            api.contains(addr),
            expected(addr),
            "{addr} in /api/listeners {api:?}"
        );
    }
    let first = listeners
        .iter()
        .find(|(a, _)| expected(a))
        .expect("one listener kept");
    series_by_name(&m, &netns, &first.0)
}

#[test]
fn listener_filters_follow_ss() {
    let ns = Netns::new("config");
    let inode = ns.inode();
    let _scenarios: Vec<_> = [
        ("127.0.0.1:7301", "5"),
        ("127.0.0.1:7302", "7"),
        ("127.0.0.1:7303", "9"),
        ("127.0.0.1:7304", "11"),
        ("127.0.0.2:7305", "13"),
    ]
    .iter()
    .map(|(addr, backlog)| ns.scenario(&["backlog", addr, backlog, "0"]))
    .collect();

    // Exclude only, scoped to the namespace: exactly two listeners are left out.
    let file = TempFile::new(
        "exclude.toml",
        &format!(
            "[poll]\ninterval = 0.2\n[listeners]\nexclude = [\"netns={},port=7302\", \"netns={inode},addr=127.0.0.2/32\"]\n",
            ns.name
        ),
    );
    let daemon = Daemon::start_with(&["--config", file.path()]);
    let kept = |a: &str| !a.ends_with(":7302") && !a.starts_with("127.0.0.2:");
    let series = check_against_ss(&daemon, &ns, kept, |n| n == 2.0);
    eprintln!(
        "an idle listener (no connection yet) has {} series in /metrics: {series:?}",
        series.values().sum::<usize>()
    );
    // README, "The series each listener costs": a quiet listener has two.
    assert_eq!(
        series.keys().map(String::as_str).collect::<Vec<_>>(),
        ["sockq_listen_accept_queue_limit", "sockq_listener_info"],
        "an idle listener's series"
    );
    // What a listener costs once it has served: one owner, one accepting thread.
    let server = ns.scenario(&["serve", "single", "127.0.0.1:7306", "1"]);
    ns.scenario(&["chat", "127.0.0.1:7306", "4", "2"]).finish();
    let netns = inode.to_string();
    let labels = [("netns", netns.as_str()), ("listen_addr", "127.0.0.1:7306")];
    let busy = daemon.wait_for(Duration::from_secs(10), |m| {
        let accepted = m.one("sockq_accept_wait_seconds_count", &labels)?;
        let acceptors = m.find("sockq_acceptor_accepts_total", &labels).len();
        if accepted < 4.0 || acceptors != 1 {
            return Err(format!("{accepted} accept waits, {acceptors} acceptors"));
        }
        Ok(series_by_name(m, &netns, "127.0.0.1:7306"))
    });
    eprintln!(
        "a listener that accepted 4 connections (one owner, one accepting thread) has \
         {} series in /metrics: {busy:?}",
        busy.values().sum::<usize>()
    );
    drop(server);
    drop(daemon);

    // Include rules (by inode, and by name with a comm glob), an exclude flag that
    // replaces the file's list: 7301, 7303 and 127.0.0.2:7305 are kept.
    let file = TempFile::new(
        "include.toml",
        &format!(
            "[listeners]\ninclude = [\"netns={inode},port=7301-7303\", \"netns={},comm=sockq-scen*,addr=127.0.0.2\"]\n\
             exclude = [\"port=7303\"]\n",
            ns.name
        ),
    );
    let daemon = Daemon::start_with(&[
        "--config",
        file.path(),
        "--interval",
        "0.2",
        "--listeners-exclude",
        "netns=web-nonexistent;port=7302",
    ]);
    let kept = |a: &str| a.ends_with(":7301") || a.ends_with(":7303") || a == "127.0.0.2:7305";
    // Every listener outside the namespace is excluded too: at least the two here.
    check_against_ss(&daemon, &ns, kept, |n| n >= 2.0);
}
