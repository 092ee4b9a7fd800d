//! Unix-domain listeners (#16) against the kernel: queue length and limit against
//! `ss -xl` (sock_diag), refused connects against the `EAGAIN`s the clients saw,
//! names (path, abstract, hostile bytes) through /metrics and the JSON API. Each test
//! in its own network namespace; the listeners and clients are `sockq-unixsrv`.

use std::time::{Duration, Instant};

use sockq_tests::{Daemon, Netns, test_bin, try_get};

/// A directory of our own under /tmp for socket paths, removed on drop.
struct TempDir(std::path::PathBuf);

impl TempDir {
    fn new(test: &str) -> Self {
        let dir = std::env::temp_dir().join(format!("sockq-unix-{test}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap_or_else(|e| panic!("mkdir {}: {e}", dir.display()));
        Self(dir)
    }

    fn path(&self, name: &str) -> String {
        self.0.join(name).to_string_lossy().into_owned()
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// One line of `ss -xlnpH` in the namespace: (Recv-Q, Send-Q, name) of socket `inode`.
fn ss_listener(ns: &Netns, inode: &str) -> (u32, u32, String) {
    let out = ns.output("ss", &["-xlnpH"]);
    out.lines()
        .find_map(|line| {
            let f: Vec<&str> = line.split_whitespace().collect();
            (f.get(5) == Some(&inode)).then(|| {
                let recv: u32 = f[2].parse().expect("Recv-Q");
                let send: u32 = f[3].parse().expect("Send-Q");
                (recv, send, f[4].to_owned())
            })
        })
        .unwrap_or_else(|| panic!("socket {inode} not in ss -xlnp:\n{out}"))
}

/// `ready INODE` -> INODE.
fn inode_of(first_line: &str) -> String {
    first_line
        .strip_prefix("ready ")
        .unwrap_or_else(|| panic!("listener said {first_line:?}"))
        .to_owned()
}

/// `done refused=R connected=C other=O` -> (R, C, O).
fn connect_result(first_line: &str) -> (u64, u64, u64) {
    let field = |key: &str| -> u64 {
        first_line
            .split_whitespace()
            .find_map(|w| w.strip_prefix(key)?.parse().ok())
            .unwrap_or_else(|| panic!("no {key} in {first_line:?}"))
    };
    (field("refused="), field("connected="), field("other="))
}

fn m_one(daemon: &Daemon, name: &str, labels: &[(&str, &str)]) -> f64 {
    daemon
        .metrics()
        .one(name, labels)
        .unwrap_or_else(|e| panic!("{e}"))
}

fn unix_rows(daemon: &Daemon) -> Vec<serde_json::Value> {
    let body = try_get(daemon.addr, "/api/listeners?family=unix").expect("GET unix listeners");
    serde_json::from_str(&body).unwrap_or_else(|e| panic!("unix listeners JSON: {e}: {body}"))
}

#[test]
fn full_queue_matches_ss_and_refused_connects_match_the_clients() {
    let ns = Netns::new("unixq");
    let netns = ns.inode().to_string();
    let dir = TempDir::new("queue");
    let path = dir.path("backend.sock");
    let daemon = Daemon::start("1");
    let bin = test_bin("sockq-unixsrv");
    let server = ns.program(&bin, &["listen", &path, "4", "stream"]);
    let inode = inode_of(&server.first_line);
    let clients = ns.program(&bin, &["connect", &path, "12", "stream"]);
    let (refused, connected, other) = connect_result(&clients.first_line);
    eprintln!("clients: {refused} refused (EAGAIN), {connected} connected, {other} other");
    assert_eq!(other, 0, "{}", clients.first_line);
    assert!(
        refused > 0,
        "the queue never filled: {}",
        clients.first_line
    );

    let (ss_len, ss_limit, ss_name) = ss_listener(&ns, &inode);
    eprintln!("ss -xl: Recv-Q {ss_len} Send-Q {ss_limit} {ss_name}");
    assert_eq!(ss_name, path);
    assert_eq!(u64::from(ss_len), connected, "ss counts the queued clients");
    let labels = [("netns", netns.as_str()), ("socket", inode.as_str())];
    let (len, limit) = daemon.wait_for(Duration::from_secs(10), |m| {
        let len = m.one("sockq_unix_listen_queue_length", &labels)?;
        let limit = m.one("sockq_unix_listen_queue_limit", &labels)?;
        if (len, limit) == (f64::from(ss_len), f64::from(ss_limit)) {
            Ok((len, limit))
        } else {
            Err(format!("sockq {len}/{limit}, ss {ss_len}/{ss_limit}"))
        }
    });
    eprintln!("sockq: queue {len} limit {limit}");
    let m = daemon.metrics();
    let info = m.find("sockq_unix_listener_info", &labels);
    assert_eq!(info.len(), 1, "{info:?}");
    assert_eq!(info[0].labels["path"], path);
    assert_eq!(info[0].labels["pid"], server.pid().to_string());
    assert_eq!(info[0].labels["comm"], "sockq-unixsrv");
    assert_eq!(info[0].labels["type"], "stream");

    // The refusals, counted in the kernel, equal the EAGAINs the clients saw.
    let counted = daemon.wait_for(Duration::from_secs(10), |m| {
        let n = m.one("sockq_unix_listen_refused_connects_total", &labels)?;
        if n == refused as f64 {
            Ok(n)
        } else {
            Err(format!(
                "sockq counted {n} refused connects, the clients saw {refused}"
            ))
        }
    });
    let client_pid = clients.pid().to_string();
    let by_client = m_one(
        &daemon,
        "sockq_unix_listen_refused_connects_by_client_total",
        &[
            ("socket", inode.as_str()),
            ("client_pid", client_pid.as_str()),
            ("client_comm", "sockq-unixsrv"),
        ],
    );
    eprintln!("sockq: {counted} refused connects, {by_client} of them by client {client_pid}");
    assert_eq!(by_client, refused as f64);

    // The episode names the listener's owner and the backlog settings.
    let upstream = format!("unix:{path}");
    let start = Instant::now();
    let episode = loop {
        if let Some(e) = daemon
            .recent_events()
            .into_iter()
            .find(|e| e["listen_addr"] == upstream.as_str() && e["phase"] == "start")
        {
            break e;
        }
        assert!(
            start.elapsed() < Duration::from_secs(5),
            "no episode for {upstream}"
        );
        std::thread::sleep(Duration::from_millis(100));
    };
    eprintln!("episode: {}", episode["message"]);
    assert_eq!(episode["type"], "accept_queue_full");
    assert_eq!(episode["owners"][0]["comm"], "sockq-unixsrv", "{episode}");
    assert_eq!(
        episode["owners"][0]["pid"].as_u64(),
        Some(u64::from(server.pid())),
        "{episode}"
    );
    // A poll reads the kernel's counts before it lists the sockets, so the depth an
    // episode starts with is never older than its refusals: it is the full queue.
    assert_eq!(episode["depth"], u64::from(ss_len), "{episode}");
    assert_eq!(episode["limit"], u64::from(ss_limit), "{episode}");
    // The 12 connects take well under a millisecond: the poll that starts the episode
    // counted all of the refusals, or none of them when they came between its read
    // of the counts and its listing (the full queue revealed the episode).
    let at_start = episode["drops_since_start"].as_u64();
    assert!(
        at_start == Some(refused) || at_start == Some(0),
        "{refused} refused, {episode}"
    );
    let fix = episode["fix"].as_str().expect("fix");
    for setting in [
        "listen.backlog",
        "--backlog",
        "--listen",
        "net.core.somaxconn",
    ] {
        assert!(fix.contains(setting), "{setting} not in the fix: {fix}");
    }
    let full = m_one(&daemon, "sockq_unix_listen_queue_full", &labels);
    assert_eq!(full, 1.0);
    // The client exits: its in-kernel entry is removed and its count folded into
    // the exited clients' total (pid 0); the listener's count does not move.
    drop(clients);
    daemon.wait_for(Duration::from_secs(10), |m| {
        let total = m.one("sockq_unix_listen_refused_connects_total", &labels)?;
        let exited = m.one(
            "sockq_unix_listen_refused_connects_by_client_total",
            &[("socket", inode.as_str()), ("client_pid", "0")],
        )?;
        let live = m
            .find(
                "sockq_unix_listen_refused_connects_by_client_total",
                &[
                    ("socket", inode.as_str()),
                    ("client_pid", client_pid.as_str()),
                ],
            )
            .len();
        // Only this test refuses Unix connects on the machine: the kernel entry
        // was the map's only one.
        let entries = m.one("sockq_map_entries", &[("map", "UNIX_REFUSED")])?;
        if (total, exited, live, entries) == (refused as f64, refused as f64, 0, 0.0) {
            Ok(())
        } else {
            Err(format!(
                "total {total}, exited clients {exited}, live series {live}, \
                 UNIX_REFUSED entries {entries}"
            ))
        }
    });
    // The listener closes: its series go.
    drop(server);
    daemon.wait_for(Duration::from_secs(10), |m| {
        match m
            .find("sockq_unix_listen_refused_connects_total", &labels)
            .len()
        {
            0 => Ok(()),
            n => Err(format!("{n} series left for a closed listener")),
        }
    });
}

#[test]
fn abstract_seqpacket_and_other_namespace_listeners() {
    let ns = Netns::new("unixabs");
    let other_ns = Netns::new("unixother");
    let daemon = Daemon::start("1");
    let bin = test_bin("sockq-unixsrv");
    let name = format!("@sockq-test-{}", std::process::id());
    // The same abstract name in two namespaces: two listeners, one per namespace.
    let here = ns.program(&bin, &["listen", &name, "3", "seqpacket"]);
    let there = other_ns.program(&bin, &["listen", &name, "7", "stream"]);
    let clients = ns.program(&bin, &["connect", &name, "2", "seqpacket"]);
    assert_eq!(connect_result(&clients.first_line), (0, 2, 0));
    // Listen(3) holds 4 (the kernel refuses once more than the limit are queued):
    // 5 more clients, 2 fit, 3 refused; in the other namespace, the same name
    // refuses nothing.
    let more = ns.program(&bin, &["connect", &name, "5", "seqpacket"]);
    let (refused_here, connected_here, _) = connect_result(&more.first_line);
    eprintln!("abstract seqpacket: {refused_here} refused, {connected_here} connected");
    assert!(refused_here > 0, "{}", more.first_line);
    let other_clients = other_ns.program(&bin, &["connect", &name, "3", "stream"]);
    assert_eq!(connect_result(&other_clients.first_line), (0, 3, 0));
    for (ns, server, len, limit, kind, refused) in [
        (
            &ns,
            &here,
            2 + connected_here as u32,
            3,
            "seqpacket",
            refused_here,
        ),
        (&other_ns, &there, 3, 7, "stream", 0),
    ] {
        let inode = inode_of(&server.first_line);
        let (ss_len, ss_limit, ss_name) = ss_listener(ns, &inode);
        assert_eq!(
            (ss_len, ss_limit, ss_name.as_str()),
            (len, limit, name.as_str())
        );
        let netns = ns.inode().to_string();
        let labels = [("netns", netns.as_str()), ("path", name.as_str())];
        daemon.wait_for(Duration::from_secs(10), |m| {
            let got = (
                m.one("sockq_unix_listen_queue_length", &labels)?,
                m.one("sockq_unix_listen_queue_limit", &labels)?,
            );
            let counted = m.one("sockq_unix_listen_refused_connects_total", &labels)?;
            if counted != refused as f64 {
                return Err(format!(
                    "{counted} refused counted, {refused} seen in {netns}"
                ));
            }
            let info = m.find("sockq_unix_listener_info", &labels);
            let kind_ok = info.iter().any(|s| {
                s.labels["type"] == kind
                    && s.labels["kind"] == "abstract"
                    && s.labels["socket"] == inode
            });
            if got == (f64::from(ss_len), f64::from(ss_limit)) && kind_ok {
                Ok(())
            } else {
                Err(format!(
                    "{name} in {netns}: {got:?} {info:?}, ss {ss_len}/{ss_limit}"
                ))
            }
        });
        eprintln!(
            "{name} ({kind}) in netns {netns}: queue {ss_len}/{ss_limit} as ss, {refused} refused"
        );
    }
}

#[test]
fn hostile_path_round_trips_through_metrics_and_json() {
    let ns = Netns::new("unixpath");
    let dir = TempDir::new("hostile");
    let path = dir.path("q\"uo\\te\nnew line {x=\"1\"}.sock");
    let hex: String = path.bytes().map(|b| format!("{b:02x}")).collect();
    let daemon = Daemon::start("1");
    let server = ns.program(
        &test_bin("sockq-unixsrv"),
        &["listen", &format!("hex:{hex}"), "8", "stream"],
    );
    let inode = inode_of(&server.first_line);
    assert!(
        std::fs::symlink_metadata(&path).is_ok(),
        "the socket file {path:?} exists"
    );
    let netns = ns.inode().to_string();
    let labels = [("netns", netns.as_str()), ("socket", inode.as_str())];
    let started = Instant::now();
    let from_metrics = daemon.wait_for(Duration::from_secs(10), |m| {
        let s = m.find("sockq_unix_listen_queue_limit", &labels);
        match s.as_slice() {
            [one] => Ok(one.labels["path"].clone()),
            _ => Err(format!("{} samples", s.len())),
        }
    });
    assert_eq!(from_metrics, path, "/metrics path label, unescaped");
    let text = daemon.metrics_text();
    for line in text.lines() {
        assert!(
            line.starts_with("# ") || line.starts_with("sockq_"),
            "the path split a line of /metrics: {line:?}"
        );
    }
    let rows = unix_rows(&daemon);
    let row = rows
        .iter()
        .find(|r| r["inode"].as_u64().map(|i| i.to_string()) == Some(inode.clone()))
        .unwrap_or_else(|| panic!("socket {inode} not in /api/listeners?family=unix: {rows:?}"));
    assert_eq!(row["name"], path.as_str(), "JSON name: {row}");
    assert_eq!(row["name_kind"], "path");
    assert_eq!(row["queue_limit"], 8);
    eprintln!("{path:?} round-tripped in {:?}", started.elapsed());
    let table = std::process::Command::new(sockq_tests::sockq_bin())
        .args([
            "listeners",
            "--unix",
            "--metrics-addr",
            &daemon.addr.to_string(),
        ])
        .output()
        .expect("sockq listeners --unix");
    let table = String::from_utf8_lossy(&table.stdout);
    let line = table
        .lines()
        .find(|l| l.contains(&inode))
        .unwrap_or_else(|| panic!("socket {inode} not in the table:\n{table}"));
    assert!(
        line.contains(r#"q\"uo\\te\nnew line {x=\"1\"}.sock"#),
        "escaped on one line: {line}"
    );
}

/// `done waited_us=US ok=0|1 eagain=0|1` -> (seconds, ok, eagain).
fn block_result(first_line: &str) -> (f64, bool, bool) {
    let field = |key: &str| -> u64 {
        first_line
            .split_whitespace()
            .find_map(|w| w.strip_prefix(key)?.parse().ok())
            .unwrap_or_else(|| panic!("no {key} in {first_line:?}"))
    };
    (
        field("waited_us=") as f64 / 1e6,
        field("ok=") == 1,
        field("eagain=") == 1,
    )
}

#[test]
fn blocking_connects_wait_for_room_or_time_out_refused() {
    let ns = Netns::new("unixwait");
    let netns = ns.inode().to_string();
    // Blocking connects are timed only with the connect entry program; a daemon
    // without it, beside, counts the refusal all the same and shows no waits.
    let daemon = Daemon::start_with(&["--interval", "1", "--unix-connect-waits"]);
    let plain = Daemon::start("1");
    let bin = test_bin("sockq-unixsrv");
    let name = format!("@sockq-wait-{}", std::process::id());
    // listen(0): one queued connection fills the queue; the server accepts from
    // 1.5 s on.
    let server = ns.program(&bin, &["listen", &name, "0", "stream", "1500"]);
    let inode = inode_of(&server.first_line);
    let filler = ns.program(&bin, &["connect", &name, "1", "stream"]);
    assert_eq!(connect_result(&filler.first_line), (0, 1, 0));
    // A blocking client with SO_SNDTIMEO 200 ms: the kernel gives up with EAGAIN,
    // a refusal like a non-blocking one's.
    let timed_out = ns.program(&bin, &["block-connect", &name, "stream", "200"]);
    let (t_wait, t_ok, t_eagain) = block_result(&timed_out.first_line);
    assert!(!t_ok && t_eagain, "{}", timed_out.first_line);
    // A blocking client without timeout sleeps until the server accepts.
    let blocked = ns.program(&bin, &["block-connect", &name, "stream"]);
    let (waited, ok, _) = block_result(&blocked.first_line);
    eprintln!(
        "timed out after {t_wait:.3} s (EAGAIN); blocked client connected after {waited:.3} s"
    );
    assert!(ok && waited > 0.5, "{}", blocked.first_line);
    let labels = [("netns", netns.as_str()), ("socket", inode.as_str())];
    let (refused, waits, wait_seconds) = daemon.wait_for(Duration::from_secs(10), |m| {
        let got = (
            m.one("sockq_unix_listen_refused_connects_total", &labels)?,
            m.one("sockq_unix_listen_connect_waits_total", &labels)?,
            m.one("sockq_unix_listen_connect_wait_seconds_total", &labels)?,
        );
        if got.0 == 1.0 && got.1 == 1.0 {
            Ok(got)
        } else {
            Err(format!("refused, waits, wait seconds: {got:?}"))
        }
    });
    eprintln!("sockq: {refused} refused, {waits} wait of {wait_seconds:.3} s");
    plain.wait_for(Duration::from_secs(10), |m| {
        let refused = m.one("sockq_unix_listen_refused_connects_total", &labels)?;
        let waits = m.find("sockq_unix_listen_connect_waits_total", &labels);
        if refused == 1.0 && waits.is_empty() {
            Ok(())
        } else {
            Err(format!(
                "without --unix-connect-waits: {refused} refused, {waits:?}"
            ))
        }
    });
    // The kernel-side wait is inside the client's own measurement of connect().
    assert!(
        wait_seconds <= waited && wait_seconds > waited - 0.05,
        "sockq measured {wait_seconds} s, the client {waited} s"
    );
}

/// A process started inside a namespace, stopped (SIGTERM, then reaped) on drop.
struct Server(std::process::Child);

impl Drop for Server {
    fn drop(&mut self) {
        // SAFETY: kill(2) on our own child's pid.
        unsafe { libc::kill(self.0.id() as i32, libc::SIGTERM) };
        let _ = self.0.wait();
    }
}

/// Debian's php-fpm binary (`php-fpm8.2` on bookworm).
fn php_fpm_bin() -> std::path::PathBuf {
    std::fs::read_dir("/usr/sbin")
        .expect("/usr/sbin")
        .flatten()
        .map(|e| e.path())
        .find(|p| {
            p.file_name()
                .is_some_and(|n| n.to_string_lossy().starts_with("php-fpm"))
        })
        .expect("php-fpm (Debian package php-fpm, installed by `cargo xtask setup`)")
}

#[test]
fn php_fpm_behind_nginx_refusals_equal_nginx_errors() {
    let ns = Netns::new("phpfpm");
    let netns = ns.inode().to_string();
    let dir = TempDir::new("phpfpm");
    let d = dir.0.display().to_string();
    let sock = dir.path("php.sock");
    std::fs::create_dir_all(dir.0.join("www")).expect("www");
    std::fs::write(
        dir.0.join("www/sleep.php"),
        "<?php usleep(200000); echo \"ok\\n\";\n",
    )
    .expect("sleep.php");
    std::fs::write(
        dir.0.join("fpm.conf"),
        format!(
            "[global]\npid = {d}/fpm.pid\nerror_log = {d}/fpm.log\ndaemonize = no\n\
             [www]\nuser = root\ngroup = root\nlisten = {sock}\nlisten.backlog = 2\n\
             listen.mode = 0666\npm = static\npm.max_children = 1\n"
        ),
    )
    .expect("fpm.conf");
    let port = sockq_tests::free_port();
    std::fs::write(
        dir.0.join("nginx.conf"),
        format!(
            "worker_processes 1;\npid {d}/nginx.pid;\nerror_log {d}/error.log;\n\
             daemon off;\nevents {{ worker_connections 512; }}\n\
             http {{\n access_log off;\n client_body_temp_path {d}/body;\n\
             proxy_temp_path {d}/proxy;\n fastcgi_temp_path {d}/fastcgi;\n\
             uwsgi_temp_path {d}/uwsgi;\n scgi_temp_path {d}/scgi;\n\
             server {{ listen 127.0.0.1:{port};\n location / {{\n\
             fastcgi_pass unix:{sock};\n\
             fastcgi_param SCRIPT_FILENAME {d}/www$fastcgi_script_name;\n }} }}\n}}\n"
        ),
    )
    .expect("nginx.conf");
    let daemon = Daemon::start("1");
    let fpm = Server(
        ns.command(php_fpm_bin())
            .args(["-R", "-F", "-y", &format!("{d}/fpm.conf")])
            .stdout(std::process::Stdio::null())
            .spawn()
            .expect("php-fpm"),
    );
    let nginx = Server(
        ns.command("nginx")
            .args(["-p", &d, "-c", &format!("{d}/nginx.conf")])
            .stdout(std::process::Stdio::null())
            .spawn()
            .expect("nginx (Debian package nginx)"),
    );
    let deadline = Instant::now() + Duration::from_secs(10);
    let (inode, limit) = loop {
        let out = ns.output("ss", &["-xlnH"]);
        let ready = ns.output("ss", &["-ltnH"]).contains(&format!(":{port}"));
        if let Some(line) = out.lines().find(|l| l.contains(&sock))
            && ready
        {
            let f: Vec<&str> = line.split_whitespace().collect();
            break (f[5].to_owned(), f[3].parse::<u32>().expect("Send-Q"));
        }
        assert!(
            Instant::now() < deadline,
            "php-fpm or nginx not listening: {out}"
        );
        std::thread::sleep(Duration::from_millis(100));
    };
    assert_eq!(limit, 2, "ss -xl: listen.backlog 2");

    let url = format!("http://127.0.0.1:{port}/sleep.php");
    let ab = ns.output("ab", &["-q", "-n", "100", "-c", "30", &url]);
    assert!(ab.contains("Complete requests:      100"), "{ab}");
    let log = std::fs::read_to_string(dir.0.join("error.log")).expect("nginx error.log");
    let eagain = log
        .lines()
        .filter(|l| l.contains("Resource temporarily unavailable") && l.contains(&sock))
        .count() as f64;
    eprintln!("nginx logged {eagain} `Resource temporarily unavailable` for {sock}");
    assert!(eagain > 0.0, "the backlog never filled:\n{log}\n{ab}");

    let labels = [("netns", netns.as_str()), ("socket", inode.as_str())];
    let counted = daemon.wait_for(Duration::from_secs(10), |m| {
        let n = m.one("sockq_unix_listen_refused_connects_total", &labels)?;
        if n == eagain {
            Ok(n)
        } else {
            Err(format!("sockq counted {n}, nginx logged {eagain}"))
        }
    });
    let m = daemon.metrics();
    let by_nginx: f64 = m
        .find(
            "sockq_unix_listen_refused_connects_by_client_total",
            &[("socket", inode.as_str()), ("client_comm", "nginx")],
        )
        .iter()
        .map(|s| s.value)
        .sum();
    assert_eq!(by_nginx, eagain, "refusals attributed to the nginx worker");
    let info = m.find("sockq_unix_listener_info", &labels);
    assert!(
        !info.is_empty() && info.iter().all(|s| s.labels["comm"].starts_with("php-fpm")),
        "owners: {info:?}"
    );
    let episode = daemon
        .recent_events()
        .into_iter()
        .find(|e| e["listen_addr"] == format!("unix:{sock}").as_str() && e["phase"] == "start")
        .unwrap_or_else(|| panic!("no episode for unix:{sock}"));
    eprintln!(
        "sockq: {counted} refused, by nginx {by_nginx}; episode: {}",
        episode["message"]
    );
    let comm = episode["owners"][0]["comm"].as_str().unwrap_or_default();
    assert!(comm.starts_with("php-fpm"), "{episode}");
    let fix = episode["fix"].as_str().unwrap_or_default();
    assert!(
        fix.contains("listen.backlog") && !fix.contains("gunicorn"),
        "{fix}"
    );
    drop(nginx);
    drop(fpm);
}

#[test]
fn accepts_waits_and_acceptor_of_a_unix_listener() {
    let ns = Netns::new("unixacc");
    let netns = ns.inode().to_string();
    let dir = TempDir::new("accepts");
    let path = dir.path("app.sock");
    let daemon = Daemon::start("1");
    let bin = test_bin("sockq-unixsrv");
    // The server accepts everything from 1 s after it listens.
    let server = ns.program(&bin, &["listen", &path, "16", "stream", "1000"]);
    let ready = Instant::now();
    let inode = inode_of(&server.first_line);
    let clients = ns.program(&bin, &["connect", &path, "6", "stream"]);
    let connected_by = ready.elapsed().as_secs_f64();
    assert_eq!(connect_result(&clients.first_line), (0, 6, 0));
    let labels = [("netns", netns.as_str()), ("socket", inode.as_str())];
    let accepts = daemon.wait_for(Duration::from_secs(10), |m| {
        let enqueues = m.one("sockq_unix_listen_enqueues_total", &labels)?;
        let accepts = m.one("sockq_unix_listen_accepts_total", &labels)?;
        if (enqueues, accepts) == (6.0, 6.0) {
            Ok(accepts)
        } else {
            Err(format!(
                "{enqueues} enqueues, {accepts} accepts; 6 connected"
            ))
        }
    });
    let m = daemon.metrics();
    let threads = m.find("sockq_unix_acceptor_accepts_total", &labels);
    let pid = server.pid().to_string();
    assert!(
        !threads.is_empty() && threads.iter().all(|s| s.labels["pid"] == pid),
        "acceptors: {threads:?}"
    );
    let by_threads: f64 = threads.iter().map(|s| s.value).sum();
    assert_eq!(by_threads, 6.0);
    let count = m
        .one("sockq_unix_accept_wait_seconds_count", &labels)
        .expect("wait count");
    let sum = m
        .one("sockq_unix_accept_wait_seconds_sum", &labels)
        .expect("wait sum");
    eprintln!(
        "sockq: {accepts} accepts by {} thread(s); waits: {count} totalling {sum:.3} s \
         (clients connected within {connected_by:.3} s of the listen, accepts from 1 s)",
        threads.len()
    );
    assert_eq!(count, 6.0);
    // Each connection waited from its connect (at most `connected_by` after the
    // listen) until the accepts began 1 s after it.
    let mean = sum / 6.0;
    assert!(
        mean >= 1.0 - connected_by - 0.01 && mean <= 1.2,
        "mean wait {mean} s"
    );
}

#[test]
fn gunicorn_workers_accept_shares_sum_to_requests_served() {
    let ns = Netns::new("gunicorn");
    let netns = ns.inode().to_string();
    let dir = TempDir::new("gunicorn");
    let d = dir.0.display().to_string();
    let sock = dir.path("app.sock");
    std::fs::write(
        dir.0.join("app.py"),
        "def app(environ, start_response):\n    \
         start_response('200 OK', [('Content-Type', 'text/plain')])\n    \
         return [b'ok\\n']\n",
    )
    .expect("app.py");
    let port = sockq_tests::free_port();
    std::fs::write(
        dir.0.join("nginx.conf"),
        format!(
            "worker_processes 1;\npid {d}/nginx.pid;\nerror_log {d}/error.log;\n\
             daemon off;\nevents {{ worker_connections 512; }}\n\
             http {{\n access_log off;\n client_body_temp_path {d}/body;\n\
             proxy_temp_path {d}/proxy;\n fastcgi_temp_path {d}/fastcgi;\n\
             uwsgi_temp_path {d}/uwsgi;\n scgi_temp_path {d}/scgi;\n\
             server {{ listen 127.0.0.1:{port};\n\
             location / {{ proxy_pass http://unix:{sock}:/; }} }}\n}}\n"
        ),
    )
    .expect("nginx.conf");
    let daemon = Daemon::start("1");
    let access_log = format!("{d}/access.log");
    let gunicorn = Server(
        ns.command("gunicorn")
            .args([
                "--chdir",
                &d,
                "--bind",
                &format!("unix:{sock}"),
                "--workers",
                "3",
                "--access-logfile",
                &access_log,
                "app:app",
            ])
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .spawn()
            .expect("gunicorn (Debian package gunicorn)"),
    );
    let _nginx = Server(
        ns.command("nginx")
            .args(["-p", &d, "-c", &format!("{d}/nginx.conf")])
            .stdout(std::process::Stdio::null())
            .spawn()
            .expect("nginx"),
    );
    let deadline = Instant::now() + Duration::from_secs(20);
    let inode = loop {
        let out = ns.output("ss", &["-xlnH"]);
        let ready = ns.output("ss", &["-ltnH"]).contains(&format!(":{port}"));
        if let Some(line) = out.lines().find(|l| l.contains(&sock))
            && ready
        {
            break line.split_whitespace().nth(5).expect("inode").to_owned();
        }
        assert!(
            Instant::now() < deadline,
            "gunicorn or nginx not listening: {out}"
        );
        std::thread::sleep(Duration::from_millis(200));
    };
    // Workers boot after the master binds: wait for three children.
    std::thread::sleep(Duration::from_secs(2));
    let url = format!("http://127.0.0.1:{port}/");
    let ab = ns.output("ab", &["-q", "-n", "600", "-c", "12", &url]);
    assert!(ab.contains("Complete requests:      600"), "{ab}");
    let deadline = Instant::now() + Duration::from_secs(5);
    let served = loop {
        let n = std::fs::read_to_string(&access_log)
            .unwrap_or_default()
            .lines()
            .count() as f64;
        if n >= 600.0 || Instant::now() > deadline {
            break n;
        }
        std::thread::sleep(Duration::from_millis(100));
    };
    let labels = [("netns", netns.as_str()), ("socket", inode.as_str())];
    let by_pid = daemon.wait_for(Duration::from_secs(10), |m| {
        let accepts = m.one("sockq_unix_listen_accepts_total", &labels)?;
        let threads = m.find("sockq_unix_acceptor_accepts_total", &labels);
        let mut by_pid: std::collections::BTreeMap<String, f64> = Default::default();
        for t in &threads {
            *by_pid.entry(t.labels["pid"].clone()).or_default() += t.value;
        }
        let shares: f64 = by_pid.values().sum();
        if accepts == served && shares == served {
            Ok(by_pid)
        } else {
            Err(format!(
                "{accepts} accepts, shares {by_pid:?}; gunicorn served {served}"
            ))
        }
    });
    eprintln!("gunicorn served {served} requests; sockq's accepts by worker pid: {by_pid:?}");
    assert!(by_pid.len() >= 2, "several workers accept: {by_pid:?}");
    assert!(
        !by_pid.contains_key(&gunicorn.0.id().to_string()),
        "the master does not accept"
    );
    let m = daemon.metrics();
    let info = m.find("sockq_unix_listener_info", &labels);
    assert!(
        !info.is_empty() && info.iter().all(|s| s.labels["pattern"] == "multi_acceptor"),
        "gunicorn's workers all accept: {info:?}"
    );
}

/// A storm of Unix connections, each accepted and closed at once by the server while
/// two threads connect: the slab hands each new socket the address of one just freed,
/// so the children fall in the same few `UNIX_STAMPS` slots again and again, and two
/// connects often meet on the listener's queue (the second queued before the first's
/// `sk_data_ready`). sockq counts every accept the server made; each has its wait,
/// but for those the acceptor took before any enqueue stamped them, which are
/// counted as lost (`unix_accept_unstamped`); no wait is longer than the storm.
#[test]
fn a_unix_storm_counts_every_accept_the_server_made() {
    let ns = Netns::new("unixstorm");
    let netns = ns.inode().to_string();
    let daemon = Daemon::start("1");
    let bin = test_bin("sockq-unixsrv");
    let started = Instant::now();
    let storm = ns.program(&bin, &["storm", "@sockq-test-storm", "20000", "2"]);
    let took = started.elapsed().as_secs_f64();
    // "done INODE accepted=A connected=C"
    let words: Vec<&str> = storm.first_line.split_whitespace().collect();
    let number = |key: &str| -> f64 {
        words
            .iter()
            .find_map(|w| w.strip_prefix(key))
            .and_then(|v| v.parse().ok())
            .unwrap_or_else(|| panic!("no {key} in {:?}", storm.first_line))
    };
    let (accepted, connected) = (number("accepted="), number("connected="));
    assert_eq!(accepted, connected, "the server: {}", storm.first_line);
    let inode = words.get(1).copied().unwrap_or_default().to_owned();
    let labels = [("netns", netns.as_str()), ("socket", inode.as_str())];
    let lost = |m: &sockq_tests::Metrics, cause: &str| {
        m.one("sockq_events_lost_by_cause_total", &[("cause", cause)])
    };
    let (count, sum, unstamped) = daemon.wait_for(Duration::from_secs(10), |m| {
        let accepts = m.one("sockq_unix_listen_accepts_total", &labels)?;
        let count = m.one("sockq_unix_accept_wait_seconds_count", &labels)?;
        let sum = m.one("sockq_unix_accept_wait_seconds_sum", &labels)?;
        let unstamped = lost(m, "unix_accept_unstamped")?;
        if accepts == accepted && count + unstamped == accepted {
            Ok((count, sum, unstamped))
        } else {
            Err(format!(
                "{accepts} accepts, {count} waits, {unstamped} accepted unstamped; the server \
                 accepted {accepted}; look-back short {:?}, unattributed {:?}",
                lost(m, "unix_lookback_short"),
                lost(m, "accept_unattributed")
            ))
        }
    });
    eprintln!(
        "{accepted} connections in {took:.3} s: {count} waits, mean {:.1} us; {unstamped} \
         accepted before their enqueue stamped them",
        sum / count * 1e6
    );
    assert!(
        sum / count < took,
        "mean wait {} s, storm {took} s",
        sum / count
    );
    let le_took = daemon
        .metrics()
        .find("sockq_unix_accept_wait_seconds_bucket", &labels)
        .iter()
        .filter(|b| b.labels["le"].parse::<f64>().is_ok_and(|le| le >= took))
        .map(|b| b.value)
        .fold(f64::INFINITY, f64::min);
    assert_eq!(le_took, count, "waits longer than the storm ({took:.3} s)");
    storm.finish();
}
