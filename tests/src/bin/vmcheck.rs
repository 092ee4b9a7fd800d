//! `sockq-vmcheck SOCKQ SCENARIO [DOCTOR]`: the core checks `cargo xtask vm-test`
//! runs inside a VM booted on another kernel (no `ss`, no network namespaces there:
//! one loopback, the kernel's own counters in /proc as the oracle). DOCTOR is a file
//! holding the output of `sockq doctor` on the same kernel. Prints one line per
//! check and exits non-zero if any fails. Meant for the VM: the SYN-queue check
//! needs the route its /init adds (`10.9.9.0/24 dev lo`); ports 7011-7018 and 7021-7023
//! are used.
//!
//! Checks: the probes sockq reports (`sockq_probe_attached` against the doctor, a
//! reason for each probe that did not attach, kprobes against the kernel's list);
//! overflow drops exact (the listener's drops against the growth of ListenDrops in
//! /proc/net/netstat, its queue against /proc/net/tcp, the depth seen at enqueue);
//! accept wait (a server that accepts each connection 200 ms late); state
//! transitions (SYN_SENT -> ESTABLISHED against ActiveOpens in /proc/net/snmp);
//! owners (the serving pid); Nagle x delayed-ACK stalls of a write-write-read client
//! (delayed ACKs against DelayedACKs and DelayedACKLocked); the SYN queue
//! (handshakes whose SYN-ACKs go nowhere, against the request sockets in
//! /proc/net/tcp, and SYN-ACK retransmits against TCPSynRetrans); acceptor threads
//! (accepts per thread against the connections made and the server's own threads);
//! the execution pattern; io_uring accepts, single-shot, multishot and into direct
//! descriptors (`uring_server` beside SCENARIO: accepts and accept waits against the
//! server's own count); Unix listeners (`sockq-unixsrv` beside SCENARIO: refused
//! connects against the clients' EAGAINs, accepts and accept waits).
//!
//! Where every probe a number needs is missing on this kernel, the check verifies
//! that sockq exports no series for it at all: a zero would claim a measurement.

use std::{
    collections::BTreeMap,
    io::{BufRead as _, BufReader},
    net::SocketAddr,
    process::{Child, ChildStdin, Command, ExitCode, Stdio},
    time::{Duration, Instant},
};

use sockq_tests::{Metrics, parse_proc_net_pairs, try_get};

// The crate root sits beside its modules' folder, not in it.
#[path = "vmcheck/accept.rs"]
mod accept;
#[path = "vmcheck/probes.rs"]
mod probes;
#[path = "vmcheck/syn.rs"]
mod syn;
#[path = "vmcheck/unix.rs"]
mod unix;
#[path = "vmcheck/uring.rs"]
mod uring;

use accept::{acceptors, patterns};
use probes::{measured, parse_doctor, probes_reported};
use syn::syn_queue;
use unix::unix_listeners;
use uring::io_uring;

const METRICS: &str = "127.0.0.1:9750";
/// Any of them counts accepts (fexit on inet_csk_accept where the kernel has
/// trampolines, else the accept syscalls).
const ACCEPT_PROBES: &[&str] = &["inet_csk_accept", "sys_exit_accept4", "sys_exit_accept"];
const NAGLE_PROBES: &[&str] = &[
    "timer_start",
    "timer_expire_entry",
    "tcp_sendmsg_locked",
    "tcp_probe",
];

/// What a check knows: the scenario program, and the probes as sockq and its doctor
/// report them.
struct Ctx {
    scenario: String,
    /// Probe -> attached, from `sockq_probe_attached`.
    attached: BTreeMap<String, bool>,
    /// Probe -> (attached, detail), from the doctor's `probe NAME` lines.
    doctor: Option<BTreeMap<String, (bool, String)>>,
}

impl Ctx {
    fn has(&self, probe: &str) -> bool {
        self.attached.get(probe).copied().unwrap_or(false)
    }

    fn has_all(&self, probes: &[&str]) -> bool {
        probes.iter().all(|p| self.has(p))
    }

    fn has_any(&self, probes: &[&str]) -> bool {
        probes.iter().any(|p| self.has(p))
    }
}

/// A check: what it verified, or why it failed.
type Check = fn(&Ctx) -> Result<String, String>;

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().collect();
    let (sockq, scenario, doctor) = match args.as_slice() {
        [_, sockq, scenario] => (sockq, scenario, None),
        [_, sockq, scenario, doctor] => (sockq, scenario, Some(doctor)),
        _ => {
            eprintln!("usage: sockq-vmcheck SOCKQ SCENARIO [DOCTOR]");
            return ExitCode::from(2);
        }
    };
    let mut daemon = match Command::new(sockq)
        .args(["run", "--metrics-addr", METRICS])
        .args(["--interval", "1", "--nagle"])
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
    let failed = match wait_for_daemon() {
        Ok(attached) => {
            let doctor =
                doctor.map(|path| parse_doctor(&std::fs::read_to_string(path).unwrap_or_default()));
            let ctx = Ctx {
                scenario: scenario.clone(),
                attached,
                doctor,
            };
            run_checks(&ctx)
        }
        Err(why) => {
            println!("check start: FAIL: {why}");
            1
        }
    };
    // SAFETY: kill(2) on our own child.
    unsafe { libc::kill(daemon.id() as i32, libc::SIGTERM) };
    let _ = daemon.wait();
    if failed == 0 {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    }
}

/// Runs every check in turn; returns how many failed.
fn run_checks(ctx: &Ctx) -> usize {
    let checks: [(&str, Check); 11] = [
        ("probes reported", probes_reported),
        ("overflow drops exact", overflow),
        ("accept wait", accept_wait),
        ("state transitions", transitions),
        ("owners", owners),
        ("Nagle x delayed-ACK stalls", nagle),
        ("SYN queue", syn_queue),
        ("acceptor threads", acceptors),
        ("patterns", patterns),
        ("io_uring accepts", io_uring),
        ("Unix listeners", unix_listeners),
    ];
    let mut failed = 0;
    for (name, check) in checks {
        let started = Instant::now();
        match check(ctx) {
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
    failed
}

fn addr() -> SocketAddr {
    METRICS.parse().expect("metrics address")
}

fn metrics() -> Result<Metrics, String> {
    try_get(addr(), "/metrics")
        .map(|body| Metrics::parse(&body))
        .ok_or_else(|| "no answer on /metrics".to_owned())
}

/// Waits (the VM is slow) for the first inventory; returns the probes and whether
/// each attached.
fn wait_for_daemon() -> Result<BTreeMap<String, bool>, String> {
    let deadline = Instant::now() + Duration::from_secs(180);
    loop {
        if let Ok(m) = metrics() {
            let probes: BTreeMap<String, bool> = m
                .find("sockq_probe_attached", &[])
                .iter()
                .map(|s| {
                    let name = s.labels.get("probe").cloned().unwrap_or_default();
                    (name, s.value == 1.0)
                })
                .collect();
            if !probes.is_empty() {
                let list: Vec<String> = probes
                    .iter()
                    .map(|(p, up)| if *up { p.clone() } else { format!("!{p}") })
                    .collect();
                println!(
                    "check start: ok: probes (! = not attached): {}",
                    list.join(" ")
                );
                return Ok(probes);
            }
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

/// The IPv4 sockets in /proc/net/tcp whose local port is `port`, as (state,
/// rx_queue): for a listener (0A) the rx_queue is its accept queue length; request
/// sockets (the SYN queue) are listed in state SYN_RECV (03).
fn proc_net_tcp(port: u16) -> Result<Vec<(u8, u32)>, String> {
    let text = std::fs::read_to_string("/proc/net/tcp").map_err(|e| e.to_string())?;
    let local = format!(":{port:04X}");
    let mut out = Vec::new();
    for line in text.lines().skip(1) {
        let f: Vec<&str> = line.split_whitespace().collect();
        if f.len() > 4 && f[1].ends_with(&local) {
            let state = u8::from_str_radix(f[3], 16).map_err(|e| e.to_string())?;
            let (_, rx) = f[4].split_once(':').ok_or("bad queue field")?;
            out.push((
                state,
                u32::from_str_radix(rx, 16).map_err(|e| e.to_string())?,
            ));
        }
    }
    Ok(out)
}

fn proc_net_tcp_listener(port: u16) -> Result<u32, String> {
    proc_net_tcp(port)?
        .into_iter()
        .find_map(|(state, rx)| (state == 0x0A).then_some(rx))
        .ok_or_else(|| format!("no listener on port {port} in /proc/net/tcp"))
}

fn overflow(ctx: &Ctx) -> Result<String, String> {
    let listener = [("listen_addr", "127.0.0.1:7011")];
    let base = kernel_counter("/proc/net/netstat", "TcpExt.ListenDrops")?;
    let _backlog = scenario(&ctx.scenario, &["backlog", "127.0.0.1:7011", "2", "8"])?;
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
    let ready = ctx.has("sk_data_ready");
    let enqueues = measured(ctx, ready, &m, "sockq_listen_enqueues_total", &listener)?;
    let deepest = measured(
        ctx,
        ready,
        &m,
        "sockq_listen_accept_queue_max_depth",
        &listener,
    )?;
    if !ctx.has("kfree_skb")
        && !m
            .find("sockq_listen_drop_reasons_total", &listener)
            .is_empty()
    {
        return Err("drop reasons exported although kfree_skb did not attach".into());
    }
    // The backlog listen() asked for, from the listen exit (fexit or tracepoint) or
    // entry: 2.
    let listened = ctx.has_any(&["sys_exit_listen", "sys_enter_listen"]);
    let backlog = match measured(ctx, listened, &m, "sockq_listen_backlog", &listener)? {
        Some(b) if b != 2.0 => return Err(format!("sockq_listen_backlog {b}, listen() said 2")),
        Some(b) => {
            let how = ctx
                .doctor
                .as_ref()
                .and_then(|d| {
                    d.get("sys_exit_listen")
                        .or_else(|| d.get("sys_enter_listen"))
                })
                .map_or(String::new(), |(_, detail)| format!(" ({detail})"));
            format!("; backlog {b} = listen()'s{how}")
        }
        None => "; no backlog series (listen probes absent)".to_owned(),
    };
    let seen = match (enqueues, deepest) {
        (Some(n), Some(d)) if n < f64::from(len) || d != f64::from(len) => {
            return Err(format!(
                "{n} enqueues seen, deepest {d}, for a queue of {len}"
            ));
        }
        (Some(n), Some(d)) => format!("{n} enqueues, deepest {d} at enqueue"),
        _ => "no enqueue series (sk_data_ready absent)".to_owned(),
    };
    Ok(format!(
        "{drops} drops = ListenDrops; queue {len} = /proc/net/tcp, limit {limit}; {seen}{backlog}"
    ))
}

fn accept_wait(ctx: &Ctx) -> Result<String, String> {
    let listener = [("listen_addr", "127.0.0.1:7012")];
    let (count, delay_ms) = (5u32, 200u32);
    let _slow = scenario(
        &ctx.scenario,
        &[
            "slow-accept",
            "127.0.0.1:7012",
            &count.to_string(),
            &delay_ms.to_string(),
        ],
    )?;
    let needs = ctx.has_any(ACCEPT_PROBES) && ctx.has("inet_sock_set_state");
    let waits = eventually(30, || {
        let m = metrics()?;
        let Some(n) = measured(ctx, needs, &m, "sockq_accept_wait_seconds_count", &listener)?
        else {
            return Ok(None);
        };
        let sum = m.one("sockq_accept_wait_seconds_sum", &listener)?;
        if n < f64::from(count) {
            return Err(format!("{n} accept waits of {count}"));
        }
        Ok(Some((n, sum)))
    })?;
    let Some((n, sum)) = waits else {
        return Ok("not measured here (no accept probe); no series exported".into());
    };
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

fn transitions(ctx: &Ctx) -> Result<String, String> {
    // Our namespace only: the kernel's counters are per namespace.
    let netns = own_netns()?;
    let key = [
        ("netns", netns.as_str()),
        ("from", "SYN_SENT"),
        ("to", "ESTABLISHED"),
    ];
    let _server = scenario(&ctx.scenario, &["serve", "single", "127.0.0.1:7013", "1"])?;
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
    drop(scenario(
        &ctx.scenario,
        &["chat", "127.0.0.1:7013", "10", "1"],
    )?);
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

fn owners(ctx: &Ctx) -> Result<String, String> {
    let server = scenario(&ctx.scenario, &["listen", "127.0.0.1:7014"])?;
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

fn nagle(ctx: &Ctx) -> Result<String, String> {
    let netns = own_netns()?;
    let rounds = 20u32;
    let _server = scenario(&ctx.scenario, &["wwr-server", "127.0.0.1:7015"])?;
    let netstat = |name: &str| kernel_counter("/proc/net/netstat", name);
    // Both sides counted from here: sockq's fired timers (the daemon's own scrapes
    // have some since it started) and the kernel's counters.
    let fired_base = fired_timers(&metrics()?, &netns);
    let (delayed_base, locked_base) = (
        netstat("TcpExt.DelayedACKs")?,
        netstat("TcpExt.DelayedACKLocked")?,
    );
    let client = scenario(
        &ctx.scenario,
        &["wwr-client", "127.0.0.1:7015", &rounds.to_string(), "0"],
    )?;
    let pid = client.child.id().to_string();
    drop(client);
    let labels = [("pid", pid.as_str())];
    let needs = ctx.has_all(NAGLE_PROBES);
    // Scrapes are connections too, with delayed ACKs of their own: read the kernel's
    // count next to each scrape. A timer that expires while the application holds
    // the socket (DelayedACKLocked) leaves its ACK to the socket's release, where the
    // application's own ACK may take it first: sockq counts it fired, DelayedACKs
    // may not.
    let found = eventually(15, || {
        let delayed = netstat("TcpExt.DelayedACKs")? - delayed_base;
        let locked = netstat("TcpExt.DelayedACKLocked")? - locked_base;
        let m = metrics()?;
        let family = "sockq_nagle_delayed_ack_stalls_total";
        let Some(stalls) = measured(ctx, needs, &m, family, &labels)? else {
            return Ok(None);
        };
        // Per series: a process forgotten meanwhile takes its old counts along.
        let fired: f64 = fired_timers(&m, &netns)
            .iter()
            .map(|(key, n)| n - fired_base.get(key).copied().unwrap_or(0.0))
            .sum();
        let (low, high) = (delayed as f64 - 2.0, (delayed + locked) as f64 + 2.0);
        if stalls < f64::from(rounds) * 0.9 || fired < low || fired > high {
            return Err(format!(
                "{stalls} stalls in {rounds} round trips; {fired} delayed ACKs, the kernel \
                 counted {delayed} (DelayedACKLocked {locked})"
            ));
        }
        Ok(Some(format!(
            "{stalls} stalls in {rounds} round trips; {fired} delayed ACKs, DelayedACKs \
             grew by {delayed}, DelayedACKLocked by {locked}"
        )))
    })?;
    Ok(found.unwrap_or_else(|| {
        "not measured here (a Nagle probe is missing); no series exported".into()
    }))
}

/// `sockq_delayed_ack_timers_total{event="fired"}` of a namespace, by series.
fn fired_timers(m: &Metrics, netns: &str) -> BTreeMap<String, f64> {
    m.find(
        "sockq_delayed_ack_timers_total",
        &[("netns", netns), ("event", "fired")],
    )
    .iter()
    .map(|s| {
        let mut labels: Vec<_> = s.labels.iter().collect();
        labels.sort();
        (format!("{labels:?}"), s.value)
    })
    .collect()
}
