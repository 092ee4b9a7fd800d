//! Real servers from Debian's packages, observed under real load: nginx with two
//! workers (sharing one listening socket, then with `reuseport`) and redis-server
//! (one thread serving everything). sockq must name their owners, classify their
//! execution pattern and count the accepts of each worker, against the kernel's own
//! PassiveOpens.

use std::{
    path::PathBuf,
    process::{Child, Stdio},
    time::{Duration, Instant},
};

use sockq_tests::{Daemon, Metrics, Netns};

/// A process started inside a namespace, stopped on drop.
struct Server(Child);

impl Drop for Server {
    fn drop(&mut self) {
        // SAFETY: kill(2) on our own child's pid.
        unsafe { libc::kill(self.0.id() as i32, libc::SIGTERM) };
        let _ = self.0.wait();
    }
}

fn wait_listening(ns: &Netns, port: u16, sockets: usize) {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let out = ns.output("ss", &["-ltnH", "sport", &format!("= :{port}")]);
        if out.lines().count() >= sockets {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "nothing listens on {port}: {out}"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
}

fn children_of(pid: u32) -> Vec<u32> {
    let mut out = Vec::new();
    for task in std::fs::read_dir(format!("/proc/{pid}/task"))
        .expect("tasks")
        .flatten()
    {
        let text = std::fs::read_to_string(task.path().join("children")).unwrap_or_default();
        out.extend(
            text.split_whitespace()
                .filter_map(|p| p.parse::<u32>().ok()),
        );
    }
    out.sort_unstable();
    out
}

fn temp_dir(name: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("sockq-{name}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).expect("temp dir");
    dir
}

/// Accepts per pid for the listeners on `listen_addr` in `netns`.
fn accepts_by_pid(m: &Metrics, netns: &str, listen_addr: &str) -> Vec<(u32, f64)> {
    let mut by_pid: std::collections::BTreeMap<u32, f64> = Default::default();
    for s in m.find(
        "sockq_acceptor_accepts_total",
        &[("netns", netns), ("listen_addr", listen_addr)],
    ) {
        if let Ok(pid) = s.labels["pid"].parse() {
            *by_pid.entry(pid).or_default() += s.value;
        }
    }
    by_pid.into_iter().collect()
}

fn nginx(reuseport: bool, port: u16, expected_pattern: &str, sockets: usize) {
    let ns = Netns::new(if reuseport { "nginx-rp" } else { "nginx" });
    let netns = ns.inode().to_string();
    let dir = temp_dir(&format!("nginx-{port}"));
    let d = dir.display();
    let listen = format!(
        "127.0.0.1:{port}{}",
        if reuseport { " reuseport" } else { "" }
    );
    let conf = format!(
        "worker_processes 2;\n\
         pid {d}/nginx.pid;\n\
         error_log {d}/error.log;\n\
         daemon off;\n\
         events {{ worker_connections 512; }}\n\
         http {{\n\
           access_log off;\n\
           client_body_temp_path {d}/body;\n\
           proxy_temp_path {d}/proxy;\n\
           fastcgi_temp_path {d}/fastcgi;\n\
           uwsgi_temp_path {d}/uwsgi;\n\
           scgi_temp_path {d}/scgi;\n\
           server {{ listen {listen}; location / {{ return 200 \"ok\\n\"; }} }}\n\
         }}\n"
    );
    std::fs::write(dir.join("nginx.conf"), conf).expect("nginx.conf");
    let daemon = Daemon::start("0.2");
    let server = Server(
        ns.command("nginx")
            .args([
                "-p",
                &dir.to_string_lossy(),
                "-c",
                &format!("{d}/nginx.conf"),
            ])
            .stdout(Stdio::null())
            .spawn()
            .expect("nginx (Debian package nginx, installed by `cargo xtask setup`)"),
    );
    wait_listening(&ns, port, sockets);
    let master = server.0.id();
    let workers = children_of(master);
    assert_eq!(workers.len(), 2, "nginx workers of {master}: {workers:?}");

    let before = ns.counter("Tcp.PassiveOpens");
    let url = format!("http://127.0.0.1:{port}/");
    let ab = ns.output("ab", &["-q", "-n", "3000", "-c", "20", &url]);
    assert!(ab.contains("Complete requests:      3000"), "{ab}");
    // ab opens a few connections more than requests; the kernel's count is the oracle.
    let connections = (ns.counter("Tcp.PassiveOpens") - before) as f64;
    assert!(connections >= 3000.0, "{connections} passive opens");

    let listen_addr = format!("127.0.0.1:{port}");
    daemon.wait_for(Duration::from_secs(10), |m| {
        // Owners: the master and both workers, named nginx.
        let info = m.find(
            "sockq_listener_info",
            &[
                ("netns", netns.as_str()),
                ("listen_addr", listen_addr.as_str()),
            ],
        );
        let mut pids: Vec<u32> = info
            .iter()
            .filter_map(|s| s.labels["pid"].parse().ok())
            .collect();
        pids.sort_unstable();
        pids.dedup();
        let mut want = workers.clone();
        want.push(master);
        want.sort_unstable();
        if pids != want {
            return Err(format!("owner pids {pids:?}, want {want:?}"));
        }
        if let Some(s) = info.iter().find(|s| s.labels["comm"] != "nginx") {
            return Err(format!("comm {:?}", s.labels["comm"]));
        }
        if let Some(s) = info
            .iter()
            .find(|s| s.labels["pattern"] != expected_pattern)
        {
            return Err(format!(
                "pattern {:?}, want {expected_pattern}",
                s.labels["pattern"]
            ));
        }
        // Every connection accepted, by the workers only, each taking a share.
        let shares = accepts_by_pid(m, &netns, &listen_addr);
        let total: f64 = shares.iter().map(|(_, n)| n).sum();
        let pids: Vec<u32> = shares.iter().map(|(p, _)| *p).collect();
        if total != connections || pids != workers || shares.iter().any(|(_, n)| *n == 0.0) {
            return Err(format!(
                "accept shares {shares:?} ({total} of {connections})"
            ));
        }
        eprintln!("nginx accept shares: {shares:?} of {connections} connections");
        Ok(())
    });
    drop(server);
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn nginx_two_workers_sharing_one_socket() {
    nginx(false, 7041, "multi_acceptor", 1);
}

#[test]
fn nginx_two_workers_with_reuseport() {
    nginx(true, 7042, "reuseport_shards", 2);
}

#[test]
fn redis_serves_everything_from_one_thread() {
    let ns = Netns::new("redis");
    let netns = ns.inode().to_string();
    let dir = temp_dir("redis");
    let daemon = Daemon::start("0.2");
    let server = Server(
        ns.command("redis-server")
            .args([
                "--port",
                "7043",
                "--bind",
                "127.0.0.1",
                "--save",
                "",
                "--appendonly",
                "no",
            ])
            .arg("--dir")
            .arg(&dir)
            .stdout(Stdio::null())
            .spawn()
            .expect("redis-server (Debian package redis-server)"),
    );
    wait_listening(&ns, 7043, 1);
    let before = ns.counter("Tcp.PassiveOpens");
    ns.output(
        "redis-benchmark",
        &["-p", "7043", "-c", "40", "-n", "4000", "-t", "ping", "-q"],
    );
    let connections = (ns.counter("Tcp.PassiveOpens") - before) as f64;
    let pid = server.0.id();
    daemon.wait_for(Duration::from_secs(10), |m| {
        let info = m.find(
            "sockq_listener_info",
            &[("netns", netns.as_str()), ("listen_addr", "127.0.0.1:7043")],
        );
        match info.as_slice() {
            [s] if s.labels["pid"] == pid.to_string()
                && s.labels["comm"] == "redis-server"
                && s.labels["pattern"] == "single_thread" => {}
            other => return Err(format!("{other:?}")),
        }
        // Every connection accepted, all by the main thread.
        let shares = accepts_by_pid(m, &netns, "127.0.0.1:7043");
        let threads = m.find(
            "sockq_acceptor_accepts_total",
            &[("netns", netns.as_str()), ("listen_addr", "127.0.0.1:7043")],
        );
        let seen: f64 = shares.iter().map(|(_, n)| n).sum();
        if shares.len() != 1
            || shares[0].0 != pid
            || threads.len() != 1
            || threads[0].labels["tid"] != pid.to_string()
            || seen != connections
        {
            return Err(format!(
                "accepts {shares:?} by {} threads, want ~{connections} by the main thread",
                threads.len()
            ));
        }
        Ok(())
    });
    drop(server);
    let _ = std::fs::remove_dir_all(&dir);
}
