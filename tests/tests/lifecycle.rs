//! The daemon's life and privileges against the kernel's own view: what bpftool
//! says is loaded before and after SIGTERM, the capability sets /proc shows for
//! every thread, and polling mode when eBPF is out of reach (an unprivileged user).

use std::{
    collections::HashSet,
    process::{Command, Stdio},
    time::{Duration, Instant},
};

use sockq_tests::{Daemon, Metrics, Netns, free_port, is_http_thread, sockq_bin, try_get};

/// Ids of the BPF programs (`kind` "prog") or links ("link") `pid` holds open, from
/// the kernel's `/proc/PID/fdinfo` (`prog_id:` / `link_id:`).
fn bpf_objects_of(kind: &str, pid: u32) -> HashSet<u64> {
    let key = format!("{kind}_id:");
    std::fs::read_dir(format!("/proc/{pid}/fdinfo"))
        .expect("fdinfo")
        .flatten()
        .filter_map(|e| std::fs::read_to_string(e.path()).ok())
        .filter_map(|info| {
            info.lines()
                .find_map(|l| l.strip_prefix(key.as_str()))
                .and_then(|v| v.trim().parse().ok())
        })
        .collect()
}

fn all_bpf_ids(kind: &str) -> HashSet<u64> {
    let out = Command::new("bpftool")
        .args([kind, "show", "--json"])
        .output()
        .expect("bpftool");
    let list: serde_json::Value = serde_json::from_slice(&out.stdout).expect("bpftool JSON");
    list.as_array()
        .into_iter()
        .flatten()
        .filter_map(|o| o["id"].as_u64())
        .collect()
}

#[test]
fn sigterm_detaches_everything_and_a_restart_binds_at_once() {
    let daemon = Daemon::start_with(&["--interval", "1", "--nagle"]);
    let pid = daemon.pid();
    let addr = daemon.addr;
    let programs = bpf_objects_of("prog", pid);
    let links = bpf_objects_of("link", pid);
    eprintln!(
        "sockq holds {} programs and {} links",
        programs.len(),
        links.len()
    );
    // 14 probes; the two accept entries are not loaded where sk_data_ready attaches
    // (the accepted child's stamp names its listener).
    assert!(
        programs.len() >= 12,
        "bpftool shows {programs:?} for pid {pid}"
    );
    // SIGTERM, and wait for the exit (Drop sends SIGTERM and reaps).
    let stopped = Instant::now();
    drop(daemon);
    eprintln!("stopped in {:?}", stopped.elapsed());
    // The kernel frees programs once their last reference goes (deferred a little).
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        let left_programs: Vec<_> = all_bpf_ids("prog")
            .intersection(&programs)
            .copied()
            .collect();
        let left_links: Vec<_> = all_bpf_ids("link").intersection(&links).copied().collect();
        if left_programs.is_empty() && left_links.is_empty() {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "after SIGTERM the kernel still holds programs {left_programs:?}, links {left_links:?}"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    // Restart on the same address right away.
    let restarted = Instant::now();
    let mut child = Command::new(sockq_bin())
        .args([
            "run",
            "--metrics-addr",
            &addr.to_string(),
            "--interval",
            "1",
        ])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("sockq run");
    let served = loop {
        if let Ok(Some(status)) = child.try_wait() {
            panic!("the restarted sockq exited with {status}");
        }
        if try_get(addr, "/metrics").is_some_and(|b| b.contains("sockq_probe_attached")) {
            break restarted.elapsed();
        }
        assert!(
            restarted.elapsed() < Duration::from_secs(20),
            "no /metrics after restart"
        );
        std::thread::sleep(Duration::from_millis(50));
    };
    eprintln!("restarted and serving on {addr} after {served:?}");
    // SAFETY: kill(2) on our own child.
    unsafe { libc::kill(child.id() as i32, libc::SIGTERM) };
    let status = child.wait().expect("wait");
    assert!(status.success(), "sockq exited with {status} on SIGTERM");
}

/// The capability bits of a `/proc/PID/task/TID/status` line such as `CapEff:`.
fn cap_mask(status: &str, field: &str) -> u64 {
    status
        .lines()
        .find_map(|l| l.strip_prefix(field))
        .and_then(|v| u64::from_str_radix(v.trim(), 16).ok())
        .unwrap_or_else(|| panic!("no {field} in {status}"))
}

#[test]
fn capabilities_are_dropped_after_attach_and_what_is_kept_suffices() {
    let ns = Netns::new("caps");
    let daemon = Daemon::start("1");
    let pid = daemon.pid();
    // CAP_DAC_READ_SEARCH (2), CAP_SYS_PTRACE (19), CAP_SYS_ADMIN (21).
    let kept: u64 = (1 << 2) | (1 << 19) | (1 << 21);
    let tasks: Vec<_> = std::fs::read_dir(format!("/proc/{pid}/task"))
        .expect("tasks")
        .flatten()
        .collect();
    assert!(tasks.len() > 1, "the daemon runs several threads");
    let mut http_threads = 0;
    for task in &tasks {
        let status = std::fs::read_to_string(task.path().join("status")).expect("status");
        let comm = std::fs::read_to_string(task.path().join("comm")).unwrap_or_default();
        // The HTTP server's threads hold even less: nothing effective or permitted
        // (tests/exposure.rs has more on that).
        let http = is_http_thread(comm.trim());
        http_threads += usize::from(comm.trim() == "sockq-http");
        for field in ["CapEff:", "CapPrm:", "CapBnd:"] {
            let expected = if http && field != "CapBnd:" { 0 } else { kept };
            assert_eq!(
                cap_mask(&status, field),
                expected,
                "thread {:?} ({}) {field}",
                task.file_name(),
                comm.trim()
            );
        }
        assert_eq!(cap_mask(&status, "CapInh:"), 0);
        assert_eq!(cap_mask(&status, "CapAmb:"), 0);
        assert!(status.contains("NoNewPrivs:\t1"), "{status}");
        assert!(status.contains("Umask:\t0077"), "{status}");
    }
    assert!(
        http_threads >= 2,
        "no sockq-http threads among {}",
        tasks.len()
    );
    // What it kept is enough: a listener in another namespace, with its owner.
    let scenario = ns.scenario(&["listen", "127.0.0.1:7201"]);
    let owner = scenario.pid().to_string();
    let netns = ns.inode().to_string();
    daemon.wait_for(Duration::from_secs(10), |m| {
        m.one(
            "sockq_listener_info",
            &[
                ("netns", netns.as_str()),
                ("listen_addr", "127.0.0.1:7201"),
                ("pid", owner.as_str()),
            ],
        )
    });
    // And nothing sockq loaded writes to memory: no bpf_probe_write_user call in
    // any of its programs as the kernel holds them.
    for id in bpf_objects_of("prog", pid) {
        let out = Command::new("bpftool")
            .args(["prog", "dump", "xlated", "id", &id.to_string()])
            .output()
            .expect("bpftool");
        let text = String::from_utf8_lossy(&out.stdout);
        assert!(!text.is_empty(), "no dump of program {id}");
        assert!(
            !text.contains("probe_write"),
            "program {id} writes memory:\n{text}"
        );
    }
    scenario.finish();
}

#[test]
fn metrics_listen_on_loopback_by_default() {
    let out = Command::new(sockq_bin())
        .args(["run", "--help"])
        .output()
        .expect("sockq run --help");
    let help = String::from_utf8_lossy(&out.stdout);
    assert!(help.contains("[default: 127.0.0.1:9750]"), "{help}");
}

/// `ss -ltnH` in our namespace: (Recv-Q, Send-Q) of the listener on `port`.
fn ss_queue(port: u16) -> (f64, f64) {
    let out = Command::new("ss")
        .args(["-ltnH", "sport", &format!("= :{port}")])
        .output()
        .expect("ss");
    let text = String::from_utf8_lossy(&out.stdout);
    let mut f = text.split_whitespace().skip(1);
    let q = |v: Option<&str>| v.and_then(|v| v.parse().ok()).expect("queue in ss output");
    (q(f.next()), q(f.next()))
}

/// `sockq` as user nobody without any capability (util-linux's setpriv). The binary
/// is copied where nobody may execute it, wherever the checkout lives.
fn unprivileged() -> Command {
    use std::os::unix::fs::PermissionsExt as _;
    let dir = std::env::temp_dir().join(format!("sockq-nobody-{}", std::process::id()));
    std::fs::create_dir_all(&dir).expect("temp dir");
    let bin = dir.join("sockq");
    if !bin.exists() {
        let partial = dir.join(format!("sockq.{:?}", std::thread::current().id()));
        std::fs::copy(sockq_bin(), &partial).expect("copy sockq");
        std::fs::rename(&partial, &bin).expect("rename");
    }
    for path in [&dir, &bin] {
        std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o755)).expect("chmod");
    }
    let mut cmd = Command::new("setpriv");
    cmd.args([
        "--reuid=65534",
        "--regid=65534",
        "--clear-groups",
        "--inh-caps=-all",
    ])
    .arg(bin);
    cmd
}

#[test]
fn without_privileges_it_polls_and_says_why() {
    let port = free_port();
    let listen = format!("127.0.0.1:{port}");
    // A listener in our own namespace, the only one an unprivileged sockq can see.
    let mut scenario = Command::new(sockq_tests::scenario_bin())
        .args(["backlog", &listen, "2", "6"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .expect("scenario");
    let mut ready = String::new();
    std::io::BufRead::read_line(
        &mut std::io::BufReader::new(scenario.stdout.take().expect("stdout")),
        &mut ready,
    )
    .expect("scenario output");
    assert!(ready.starts_with("ready"), "{ready}");
    let metrics_addr: std::net::SocketAddr =
        format!("127.0.0.1:{}", free_port()).parse().expect("addr");
    let child = unprivileged()
        .args([
            "run",
            "--metrics-addr",
            &metrics_addr.to_string(),
            "--interval",
            "1",
        ])
        .env("RUST_LOG", "info")
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .expect("setpriv (util-linux)");
    let labels = [("listen_addr", listen.as_str())];
    let deadline = Instant::now() + Duration::from_secs(20);
    let m = loop {
        if let Some(body) = try_get(metrics_addr, "/metrics") {
            let m = Metrics::parse(&body);
            let len = m.one("sockq_listen_accept_queue_length", &labels);
            if len.is_ok_and(|l| l >= 3.0) {
                break m;
            }
        }
        assert!(
            Instant::now() < deadline,
            "the unprivileged sockq never showed {listen}"
        );
        std::thread::sleep(Duration::from_millis(100));
    };
    // The numbers come from the kernel all the same: compare with ss.
    let (recv_q, send_q) = ss_queue(port);
    assert_eq!(
        m.one("sockq_listen_accept_queue_length", &labels),
        Ok(recv_q)
    );
    assert_eq!(
        m.one("sockq_listen_accept_queue_limit", &labels),
        Ok(send_q)
    );
    let mode = m.find("sockq_mode", &[("mode", "polling")]);
    assert_eq!(mode.len(), 1, "sockq_mode: {:?}", m.find("sockq_mode", &[]));
    let reason = mode[0].labels.get("reason").cloned().unwrap_or_default();
    assert!(
        reason.contains("Operation not permitted"),
        "reason {reason:?}"
    );
    assert_eq!(
        m.one("sockq_probe_attached", &[("probe", "inet_sock_set_state")]),
        Ok(0.0)
    );
    // SAFETY: kill(2) on our own child.
    unsafe { libc::kill(child.id() as i32, libc::SIGTERM) };
    let out = child.wait_with_output().expect("wait");
    let log = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "exit {}: {log}", out.status);
    assert!(log.contains("polling mode"), "{log}");
    assert!(
        log.contains("CAP_BPF"),
        "the log names what is missing: {log}"
    );
    // doctor, unprivileged, says the same and fails.
    let doctor = unprivileged().arg("doctor").output().expect("sockq doctor");
    let text = String::from_utf8_lossy(&doctor.stdout);
    assert!(!doctor.status.success(), "{text}");
    assert!(
        text.contains("CAP_BPF") && text.contains("polling"),
        "{text}"
    );
    drop(scenario.stdin.take());
    let _ = scenario.kill();
    let _ = scenario.wait();
}
