//! What the metrics port shows to whom, and with which privileges it runs, against
//! the real daemon: on loopback, requests for foreign host names are refused (DNS
//! rebinding); on any other address the JSON API omits processes' command lines,
//! users and cgroups unless requests authenticate; `--no-api` leaves `/metrics`
//! only; the threads serving HTTP (`sockq-http`, and `sockq-http-pre`, which renders
//! `/metrics` ahead of scrapes) hold no capability (read from
//! `/proc/PID/task/*/status`), with probes and in polling mode.

use std::{
    io::{Read as _, Write as _},
    net::{SocketAddr, TcpStream},
    process::{Child, Command, Stdio},
    time::{Duration, Instant},
};

use sockq_tests::{Daemon, Netns, free_port, is_http_thread, require_root, sockq_bin};

/// One request; the whole answer ("" if the connection failed).
fn request(addr: SocketAddr, path: &str, host: &str, extra: &str) -> String {
    let Ok(mut s) = TcpStream::connect_timeout(&addr, Duration::from_secs(2)) else {
        return String::new();
    };
    s.set_read_timeout(Some(Duration::from_secs(10)))
        .expect("timeout");
    let _ = write!(
        s,
        "GET {path} HTTP/1.1\r\nHost: {host}\r\n{extra}Connection: close\r\n\r\n"
    );
    let mut out = String::new();
    let _ = s.read_to_string(&mut out);
    out
}

#[test]
fn loopback_refuses_requests_for_other_host_names() {
    let daemon = Daemon::start("1");
    let addr = daemon.addr;
    let port = addr.port();
    for host in [
        "attacker.example".to_owned(),
        format!("attacker.example:{port}"),
        format!("127.0.0.1.attacker.example:{port}"),
        "10.1.2.3".to_owned(),
    ] {
        for path in ["/api/listeners", "/events/recent", "/metrics", "/"] {
            let answer = request(addr, path, &host, "");
            assert!(
                answer.starts_with("HTTP/1.1 403 Forbidden\r\n"),
                "{host} {path}: {answer}"
            );
            assert!(!answer.contains("listen_addr"), "{answer}");
        }
    }
    for host in [
        "localhost".to_owned(),
        format!("localhost:{port}"),
        format!("127.0.0.1:{port}"),
        format!("127.0.0.2:{port}"),
        format!("[::1]:{port}"),
    ] {
        let answer = request(addr, "/api/listeners", &host, "");
        assert!(
            answer.starts_with("HTTP/1.1 200 OK\r\n"),
            "{host}: {answer}"
        );
    }
}

/// `sockq run` on `0.0.0.0:PORT` (not loopback) with these extra arguments; reached
/// through 127.0.0.1.
struct Exposed {
    child: Child,
    addr: SocketAddr,
}

impl Exposed {
    fn start(args: &[&str], auth_header: &str) -> Self {
        require_root();
        let port = free_port();
        let child = Command::new(sockq_bin())
            .args(["run", "--interval", "1", "--metrics-addr"])
            .arg(format!("0.0.0.0:{port}"))
            .args(args)
            .stdout(Stdio::null())
            .stderr(Stdio::inherit())
            .spawn()
            .expect("sockq run");
        let addr: SocketAddr = format!("127.0.0.1:{port}").parse().expect("addr");
        let mut exposed = Self { child, addr };
        let deadline = Instant::now() + Duration::from_secs(20);
        while !request(addr, "/metrics", "node1.example", auth_header)
            .contains("sockq_listen_accept_queue_limit")
        {
            if let Ok(Some(status)) = exposed.child.try_wait() {
                panic!("sockq exited with {status}");
            }
            assert!(Instant::now() < deadline, "no metrics within 20 s");
            std::thread::sleep(Duration::from_millis(100));
        }
        exposed
    }

    /// The listener rows of `/api/listeners` once the scenario's is there.
    fn api_until(&self, listen: &str, auth_header: &str) -> (String, serde_json::Value) {
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            let answer = request(self.addr, "/api/listeners", "node1.example", auth_header);
            let (head, body) = answer.split_once("\r\n\r\n").unwrap_or_default();
            if let Ok(rows) = serde_json::from_str::<serde_json::Value>(body)
                && let Some(row) = rows.as_array().into_iter().flatten().find(|r| {
                    format!("{}:{}", r["addr"].as_str().unwrap_or(""), r["port"]) == listen
                })
                && row["owners"].as_array().is_some_and(|o| !o.is_empty())
            {
                return (head.to_ascii_lowercase(), row.clone());
            }
            assert!(
                Instant::now() < deadline,
                "{listen} not in /api/listeners: {answer}"
            );
            std::thread::sleep(Duration::from_millis(100));
        }
    }
}

impl Drop for Exposed {
    fn drop(&mut self) {
        // SAFETY: kill(2) on our own child.
        unsafe { libc::kill(self.child.id() as i32, libc::SIGTERM) };
        let _ = self.child.wait();
    }
}

#[test]
fn off_loopback_process_details_need_authentication() {
    let ns = Netns::new("expose");
    let scenario = ns.scenario(&["listen", "127.0.0.1:7311"]);

    let open = Exposed::start(&[], "");
    let (head, row) = open.api_until("127.0.0.1:7311", "");
    let owner = &row["owners"][0];
    assert!(
        head.contains("sockq-omitted: cmdline, user and cgroup of processes are omitted"),
        "{head}"
    );
    for field in ["cmdline", "user", "cgroup"] {
        assert!(owner.get(field).is_none(), "{field} shown: {owner}");
    }
    assert_eq!(
        owner["omitted"],
        serde_json::json!(["cmdline", "user", "cgroup"])
    );
    assert!(
        owner["comm"]
            .as_str()
            .is_some_and(|c| c.starts_with("sockq-scen")),
        "{owner}"
    );
    let events = request(open.addr, "/events/recent", "node1.example", "");
    assert!(!events.contains("\"cmdline\""), "{events}");
    // /metrics keeps its labels (comm, pid, container).
    let metrics = request(open.addr, "/metrics", "node1.example", "");
    let pid = format!("pid=\"{}\"", scenario.pid());
    assert!(
        metrics
            .lines()
            .any(|l| l.starts_with("sockq_listener_info{") && l.contains(&pid)),
        "no sockq_listener_info with {pid}"
    );
    drop(open);

    // With basic auth (plain HTTP here), authenticated requests see everything.
    let dir = std::env::temp_dir().join(format!("sockq-expose-{}", std::process::id()));
    std::fs::create_dir_all(&dir).expect("dir");
    let hash = Command::new("htpasswd")
        .args(["-nbBC", "10", "", "pw"])
        .output()
        .expect("htpasswd (apache2-utils)");
    let hash = String::from_utf8_lossy(&hash.stdout)
        .trim()
        .trim_start_matches(':')
        .to_owned();
    let config = dir.join("web.yml");
    std::fs::write(&config, format!("basic_auth_users:\n  prom: {hash}\n")).expect("write");
    let config_arg = config.display().to_string();
    // prom:pw
    let auth = "Authorization: Basic cHJvbTpwdw==\r\n";
    let authed = Exposed::start(&["--web-config-file", &config_arg], auth);
    let (head, row) = authed.api_until("127.0.0.1:7311", auth);
    assert!(!head.contains("sockq-omitted"), "{head}");
    let cmdline = row["owners"][0]["cmdline"].as_str().unwrap_or_default();
    assert!(cmdline.contains("listen 127.0.0.1:7311"), "{row}");
    let refused = request(authed.addr, "/api/listeners", "node1.example", "");
    assert!(refused.starts_with("HTTP/1.1 401 "), "{refused}");
    drop(authed);

    // --no-api: /metrics only.
    let metrics_only = Exposed::start(&["--no-api"], "");
    for path in ["/api/listeners", "/api/nagle", "/events/recent"] {
        let answer = request(metrics_only.addr, path, "node1.example", "");
        assert!(answer.starts_with("HTTP/1.1 404 "), "{path}: {answer}");
    }
    drop(metrics_only);
    let _ = std::fs::remove_dir_all(&dir);
    scenario.finish();
}

/// (comm, CapEff, CapPrm, CapBnd) of each thread of `pid`.
fn thread_caps(pid: u32) -> Vec<(String, u64, u64, u64)> {
    let field = |status: &str, name: &str| {
        status
            .lines()
            .find_map(|l| l.strip_prefix(name))
            .and_then(|v| u64::from_str_radix(v.trim(), 16).ok())
            .unwrap_or_else(|| panic!("no {name} in {status}"))
    };
    std::fs::read_dir(format!("/proc/{pid}/task"))
        .expect("tasks")
        .flatten()
        .filter_map(|task| {
            let status = std::fs::read_to_string(task.path().join("status")).ok()?;
            let comm = std::fs::read_to_string(task.path().join("comm")).ok()?;
            Some((
                comm.trim().to_owned(),
                field(&status, "CapEff:"),
                field(&status, "CapPrm:"),
                field(&status, "CapBnd:"),
            ))
        })
        .collect()
}

/// CAP_DAC_READ_SEARCH (2), CAP_SYS_PTRACE (19), CAP_SYS_ADMIN (21).
const KEPT: u64 = (1 << 2) | (1 << 19) | (1 << 21);

/// Waits until `pid` has HTTP threads and returns its threads' capabilities.
fn threads_once_serving(pid: u32, addr: SocketAddr) -> Vec<(String, u64, u64, u64)> {
    // A request or two, so that the HTTP runtime has run; a worker names itself once
    // it runs, so give the second a moment.
    let _ = request(addr, "/metrics", "localhost", "");
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(5);
    let (threads, http) = loop {
        let threads = thread_caps(pid);
        let http = threads.iter().filter(|t| t.0 == "sockq-http").count();
        if http >= 2 || std::time::Instant::now() > deadline {
            break (threads, http);
        }
        std::thread::sleep(std::time::Duration::from_millis(50));
    };
    assert!(http >= 2, "no HTTP worker threads: {threads:?}");
    eprintln!("{} threads, {http} sockq-http: {threads:x?}", threads.len());
    threads
}

#[test]
fn http_threads_hold_no_capability() {
    let daemon = Daemon::start("1");
    let threads = threads_once_serving(daemon.pid(), daemon.addr);
    assert!(
        threads.iter().any(|t| t.0 == "sockq-http-pre"),
        "no pre-render thread: {threads:?}"
    );
    for (comm, eff, prm, bnd) in threads {
        if is_http_thread(&comm) {
            assert_eq!(
                (eff, prm),
                (0, 0),
                "HTTP thread: CapEff {eff:x} CapPrm {prm:x}"
            );
            assert_eq!(bnd, KEPT, "HTTP thread CapBnd");
        } else {
            assert_eq!((eff, prm, bnd), (KEPT, KEPT, KEPT), "thread {comm}");
        }
    }
}

#[test]
fn polling_mode_as_root_drops_capabilities_too() {
    require_root();
    let port = free_port();
    let addr: SocketAddr = format!("127.0.0.1:{port}").parse().expect("addr");
    // Root without CAP_BPF, CAP_PERFMON and CAP_SYS_ADMIN cannot load the probes, so
    // it polls; everything else root has (CAP_NET_ADMIN, CAP_DAC_OVERRIDE, ...) it
    // used to keep.
    let mut child = Command::new("setpriv")
        .arg("--bounding-set=-bpf,-perfmon,-sys_admin")
        .arg(sockq_bin())
        .args([
            "run",
            "--interval",
            "1",
            "--metrics-addr",
            &addr.to_string(),
        ])
        .env("RUST_LOG", "info")
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .expect("setpriv (util-linux)");
    let deadline = Instant::now() + Duration::from_secs(20);
    while !request(addr, "/metrics", "localhost", "").contains("sockq_mode{mode=\"polling\"") {
        if let Ok(Some(status)) = child.try_wait() {
            panic!("sockq exited with {status}");
        }
        assert!(
            Instant::now() < deadline,
            "not serving in polling mode within 20 s"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    // What the inventory can still use: CAP_SYS_PTRACE and CAP_DAC_READ_SEARCH.
    let kept_here = KEPT & !(1 << 21);
    for (comm, eff, prm, bnd) in threads_once_serving(child.id(), addr) {
        if is_http_thread(&comm) {
            assert_eq!(
                (eff, prm),
                (0, 0),
                "HTTP thread: CapEff {eff:x} CapPrm {prm:x}"
            );
        } else {
            assert_eq!((eff, prm), (kept_here, kept_here), "thread {comm}");
        }
        assert_eq!(bnd, kept_here, "thread {comm} CapBnd");
    }
    // SAFETY: kill(2) on our own child.
    unsafe { libc::kill(child.id() as i32, libc::SIGTERM) };
    let out = child.wait_with_output().expect("wait");
    let log = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "exit {}: {log}", out.status);
    assert!(
        log.contains(
            "polling mode; dropped every capability but CAP_SYS_PTRACE, CAP_DAC_READ_SEARCH"
        ),
        "{log}"
    );
}
