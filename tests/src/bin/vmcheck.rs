//! `sockq-vmcheck SOCKQ SCENARIO`: the core checks `cargo xtask vm-test` runs inside
//! a VM booted on another kernel (no `ss`, no network namespaces there: one loopback,
//! the kernel's own counters in /proc as the oracle). Prints one line per check and
//! exits non-zero if any fails. Runs on the host too (as root; ports 7011-7013 must
//! be free).
//!
//! Checks: overflow drops exact (the listener's drops against the growth of
//! ListenDrops in /proc/net/netstat, its queue against /proc/net/tcp), enqueues seen
//! (`sk_data_ready`, by whatever mechanism this kernel offers), accept wait (a server
//! that accepts each connection 200 ms late), state transitions (SYN_SENT ->
//! ESTABLISHED against ActiveOpens in /proc/net/snmp), owners (the serving pid),
//! Nagle x delayed-ACK stalls of a write-write-read client (delayed ACKs against
//! DelayedACKs in /proc/net/netstat).

use std::{
    io::{BufRead as _, BufReader},
    net::SocketAddr,
    process::{Child, ChildStdin, Command, ExitCode, Stdio},
    time::{Duration, Instant},
};

use sockq_tests::{Metrics, parse_proc_net_pairs, try_get};

const METRICS: &str = "127.0.0.1:9750";

/// A check: given the scenario program, what it verified, or why it failed.
type Check = fn(&str) -> Result<String, String>;

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().collect();
    let [_, sockq, scenario] = args.as_slice() else {
        eprintln!("usage: sockq-vmcheck SOCKQ SCENARIO");
        return ExitCode::from(2);
    };
    let mut daemon = match Command::new(sockq)
        .args([
            "run",
            "--metrics-addr",
            METRICS,
            "--interval",
            "1",
            "--nagle",
        ])
        .env("RUST_LOG", "info")
        .stdout(Stdio::null())
        .spawn()
    {
        Ok(d) => d,
        Err(e) => {
            println!("check start: FAIL: {e}");
            return ExitCode::FAILURE;
        }
    };
    let checks: [(&str, Check); 5] = [
        ("overflow drops exact", overflow),
        ("accept wait", accept_wait),
        ("state transitions", transitions),
        ("owners", owners),
        ("Nagle x delayed-ACK stalls", nagle),
    ];
    let mut failed = 0;
    match wait_for_daemon() {
        Ok(probes) => {
            println!("check start: ok: {probes}");
            for (name, check) in checks {
                let started = Instant::now();
                match check(scenario) {
                    Ok(detail) => println!(
                        "check {name}: ok ({:.1} s): {detail}",
                        started.elapsed().as_secs_f64()
                    ),
                    Err(why) => {
                        failed += 1;
                        println!("check {name}: FAIL: {why}");
                    }
                }
            }
        }
        Err(why) => {
            failed += 1;
            println!("check start: FAIL: {why}");
        }
    }
    // SAFETY: kill(2) on our own child.
    unsafe { libc::kill(daemon.id() as i32, libc::SIGTERM) };
    let _ = daemon.wait();
    if failed == 0 {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    }
}

fn addr() -> SocketAddr {
    METRICS.parse().expect("metrics address")
}

fn metrics() -> Result<Metrics, String> {
    try_get(addr(), "/metrics")
        .map(|body| Metrics::parse(&body))
        .ok_or_else(|| "no answer on /metrics".to_owned())
}

/// Waits (the VM is slow) for the first inventory; returns the attached probes.
fn wait_for_daemon() -> Result<String, String> {
    let deadline = Instant::now() + Duration::from_secs(180);
    loop {
        if let Ok(m) = metrics()
            && !m.find("sockq_probe_attached", &[]).is_empty()
        {
            let mut probes: Vec<String> = m
                .find("sockq_probe_attached", &[])
                .iter()
                .map(|s| {
                    let name = s.labels.get("probe").cloned().unwrap_or_default();
                    if s.value == 1.0 {
                        name
                    } else {
                        format!("!{name}")
                    }
                })
                .collect();
            probes.sort();
            return Ok(format!("probes (! = not attached): {}", probes.join(" ")));
        }
        if Instant::now() > deadline {
            return Err("sockq did not serve /metrics within 180 s".into());
        }
        std::thread::sleep(Duration::from_millis(500));
    }
}

/// Polls `check` for up to `seconds`.
fn eventually<T>(seconds: u64, mut check: impl FnMut() -> Result<T, String>) -> Result<T, String> {
    let deadline = Instant::now() + Duration::from_secs(seconds);
    loop {
        match check() {
            Ok(v) => return Ok(v),
            Err(why) if Instant::now() > deadline => return Err(why),
            Err(_) => std::thread::sleep(Duration::from_millis(300)),
        }
    }
}

struct Scenario {
    child: Child,
    _stdin: ChildStdin,
    line: String,
}

impl Drop for Scenario {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn scenario(bin: &str, args: &[&str]) -> Result<Scenario, String> {
    let mut child = Command::new(bin)
        .args(args)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .map_err(|e| format!("starting scenario {args:?}: {e}"))?;
    let stdin = child.stdin.take().ok_or("no stdin")?;
    let stdout = child.stdout.take().ok_or("no stdout")?;
    let mut line = String::new();
    BufReader::new(stdout)
        .read_line(&mut line)
        .map_err(|e| format!("scenario {args:?}: {e}"))?;
    if !(line.starts_with("ready") || line.starts_with("done")) {
        return Err(format!("scenario {args:?} said {line:?}"));
    }
    Ok(Scenario {
        child,
        _stdin: stdin,
        line,
    })
}

fn kernel_counter(file: &str, name: &str) -> Result<u64, String> {
    let text = std::fs::read_to_string(file).map_err(|e| format!("{file}: {e}"))?;
    parse_proc_net_pairs(&text)
        .get(name)
        .copied()
        .ok_or_else(|| format!("no {name} in {file}"))
}

/// rx_queue of the IPv4 listener on `port` in /proc/net/tcp: for a listener, its
/// accept queue length (`sk_ack_backlog`).
fn proc_net_tcp_listener(port: u16) -> Result<u32, String> {
    let text = std::fs::read_to_string("/proc/net/tcp").map_err(|e| e.to_string())?;
    let local = format!(":{port:04X}");
    for line in text.lines().skip(1) {
        let f: Vec<&str> = line.split_whitespace().collect();
        if f.len() > 4 && f[1].ends_with(&local) && f[3] == "0A" {
            let (_, rx) = f[4].split_once(':').ok_or("bad queue field")?;
            return u32::from_str_radix(rx, 16).map_err(|e| e.to_string());
        }
    }
    Err(format!("no listener on port {port} in /proc/net/tcp"))
}

fn overflow(bin: &str) -> Result<String, String> {
    let listener = [("listen_addr", "127.0.0.1:7011")];
    let base = kernel_counter("/proc/net/netstat", "TcpExt.ListenDrops")?;
    let _backlog = scenario(bin, &["backlog", "127.0.0.1:7011", "2", "8"])?;
    // SYNs keep being retransmitted into the full queue: compare at a moment the
    // kernel's counter holds still.
    let drops = eventually(60, || {
        let before = kernel_counter("/proc/net/netstat", "TcpExt.ListenDrops")?;
        let m = metrics()?;
        let after = kernel_counter("/proc/net/netstat", "TcpExt.ListenDrops")?;
        let sockq = m.one("sockq_listen_drops_total", &listener)?;
        let kernel = after - base;
        if before != after || kernel == 0 || sockq != kernel as f64 {
            return Err(format!(
                "sockq {sockq} drops, kernel ListenDrops grew by {kernel}"
            ));
        }
        Ok(kernel)
    })?;
    let len = proc_net_tcp_listener(7011)?;
    let m = metrics()?;
    let sockq_len = m.one("sockq_listen_accept_queue_length", &listener)?;
    let limit = m.one("sockq_listen_accept_queue_limit", &listener)?;
    // listen(2): the queue holds limit + 1 before refusing.
    if sockq_len != f64::from(len) || limit != 2.0 {
        return Err(format!(
            "queue {sockq_len}/{limit}, /proc/net/tcp says {len}, listen() said 2"
        ));
    }
    let enqueues = m.one("sockq_listen_enqueues_total", &listener)?;
    if enqueues < f64::from(len) {
        return Err(format!("{enqueues} enqueues seen for a queue of {len}"));
    }
    Ok(format!(
        "{drops} drops = ListenDrops; queue {len} = /proc/net/tcp, limit {limit}; {enqueues} enqueues"
    ))
}

fn accept_wait(bin: &str) -> Result<String, String> {
    let listener = [("listen_addr", "127.0.0.1:7012")];
    let (count, delay_ms) = (5u32, 200u32);
    let _slow = scenario(
        bin,
        &[
            "slow-accept",
            "127.0.0.1:7012",
            &count.to_string(),
            &delay_ms.to_string(),
        ],
    )?;
    let (n, sum) = eventually(30, || {
        let m = metrics()?;
        let n = m.one("sockq_accept_wait_seconds_count", &listener)?;
        let sum = m.one("sockq_accept_wait_seconds_sum", &listener)?;
        if n < f64::from(count) {
            return Err(format!("{n} accept waits of {count}"));
        }
        Ok((n, sum))
    })?;
    let mean = sum / n;
    let expected = f64::from(delay_ms) / 1000.0;
    if n != f64::from(count) || mean < expected * 0.95 || mean > expected * 3.0 {
        return Err(format!(
            "{n} waits, mean {mean:.3} s; expected {count} of about {expected} s"
        ));
    }
    Ok(format!(
        "{n} waits, mean {:.1} ms (each delayed {delay_ms} ms)",
        mean * 1e3
    ))
}

fn transitions(bin: &str) -> Result<String, String> {
    // Our namespace only: the kernel's counters are per namespace.
    let netns = own_netns()?;
    let key = [
        ("netns", netns.as_str()),
        ("from", "SYN_SENT"),
        ("to", "ESTABLISHED"),
    ];
    let _server = scenario(bin, &["serve", "single", "127.0.0.1:7013", "1"])?;
    // Every scrape is a connection too. Let a poll pass with nothing connecting,
    // read the kernel's counter, then sockq's (its snapshot predates this scrape):
    // both then count the same connections, this scrape's included, from here on.
    let quiet = Duration::from_millis(2500);
    std::thread::sleep(quiet);
    let kernel_before = kernel_counter("/proc/net/snmp", "Tcp.ActiveOpens")?;
    let sum = |m: &Metrics| -> f64 {
        m.find("sockq_tcp_state_transitions_total", &key)
            .iter()
            .map(|s| s.value)
            .sum()
    };
    let sockq_before = sum(&metrics()?);
    drop(scenario(bin, &["chat", "127.0.0.1:7013", "10", "1"])?);
    std::thread::sleep(quiet);
    let kernel = kernel_counter("/proc/net/snmp", "Tcp.ActiveOpens")? - kernel_before;
    let sockq = sum(&metrics()?) - sockq_before;
    if sockq != kernel as f64 || kernel < 10 {
        return Err(format!(
            "sockq saw {sockq} SYN_SENT -> ESTABLISHED, ActiveOpens grew by {kernel} \
             (exact only when nothing else on this kernel connects meanwhile)"
        ));
    }
    Ok(format!(
        "{sockq} SYN_SENT -> ESTABLISHED = ActiveOpens growth"
    ))
}

fn owners(bin: &str) -> Result<String, String> {
    let server = scenario(bin, &["listen", "127.0.0.1:7014"])?;
    let pid = server.child.id().to_string();
    let labels = [("listen_addr", "127.0.0.1:7014"), ("pid", pid.as_str())];
    eventually(15, || {
        let m = metrics()?;
        m.one("sockq_listener_info", &labels)?;
        Ok(())
    })?;
    Ok(format!(
        "127.0.0.1:7014 owned by pid {pid} ({})",
        server.line.trim()
    ))
}

/// The inode of our network namespace, as sockq's `netns` label shows it.
fn own_netns() -> Result<String, String> {
    let link = std::fs::read_link("/proc/self/ns/net").map_err(|e| e.to_string())?;
    Ok(link
        .to_string_lossy()
        .trim_start_matches("net:[")
        .trim_end_matches(']')
        .to_owned())
}

fn nagle(bin: &str) -> Result<String, String> {
    let netns = own_netns()?;
    let rounds = 20u32;
    let _server = scenario(bin, &["wwr-server", "127.0.0.1:7015"])?;
    let delayed_before = kernel_counter("/proc/net/netstat", "TcpExt.DelayedACKs")?;
    let client = scenario(
        bin,
        &["wwr-client", "127.0.0.1:7015", &rounds.to_string(), "0"],
    )?;
    let pid = client.child.id().to_string();
    drop(client);
    let labels = [("pid", pid.as_str())];
    // Scrapes are connections too, with delayed ACKs of their own: read the kernel's
    // count next to each scrape.
    let (stalls, fired, delayed) = eventually(15, || {
        let delayed = kernel_counter("/proc/net/netstat", "TcpExt.DelayedACKs")? - delayed_before;
        let m = metrics()?;
        let stalls = m.one("sockq_nagle_delayed_ack_stalls_total", &labels)?;
        let fired: f64 = m
            .find(
                "sockq_delayed_ack_timers_total",
                &[("netns", netns.as_str()), ("event", "fired")],
            )
            .iter()
            .map(|s| s.value)
            .sum();
        if stalls < f64::from(rounds) * 0.9 || (fired - delayed as f64).abs() > 2.0 {
            return Err(format!(
                "{stalls} stalls in {rounds} round trips; {fired} delayed ACKs, the kernel \
                 counted {delayed}"
            ));
        }
        Ok((stalls, fired, delayed))
    })?;
    Ok(format!(
        "{stalls} stalls in {rounds} round trips; {fired} delayed ACKs, DelayedACKs grew by {delayed}"
    ))
}
