//! Load and faults (issue #7), bounded and only inside network namespaces of our
//! own: a SYN flood between two namespaces, ten thousand listeners coming and going,
//! a burst of short-lived listening processes, and a server killed with connections
//! queued. sockq must keep answering quickly, stay bounded in memory, count what the
//! kernel counts, and leave no series behind.
//!
//! Every daemon sees every namespace and these tests measure latency and memory, so
//! they take turns (one lock) rather than load each other.

use std::{
    io::Read as _,
    net::Ipv4Addr,
    process::{Child, Stdio},
    sync::{Mutex, MutexGuard, PoisonError},
    time::{Duration, Instant},
};

use sockq_tests::{Daemon, Metrics, Netns, Sample, parse_proc_net_pairs, try_get};

static SERIAL: Mutex<()> = Mutex::new(());

fn one_at_a_time() -> MutexGuard<'static, ()> {
    SERIAL.lock().unwrap_or_else(PoisonError::into_inner)
}

/// KiB in a MiB (RSS is read in KiB).
const MIB: u64 = 1024;

/// VmRSS of `pid` in KiB, from /proc/PID/status.
fn rss_kib(pid: u32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status"))
        .unwrap_or_else(|e| panic!("/proc/{pid}/status: {e}"));
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .unwrap_or_else(|| panic!("no VmRSS in /proc/{pid}/status"))
}

/// Whether `pid` is still running (not gone, not a zombie).
fn alive(pid: u32) -> bool {
    std::fs::read_to_string(format!("/proc/{pid}/stat")).is_ok_and(|stat| {
        stat.rsplit_once(')')
            .and_then(|(_, rest)| rest.split_whitespace().next())
            .is_some_and(|state| state != "Z" && state != "X")
    })
}

/// A TcpExt/Tcp counter of the namespace `pid` lives in, read directly from
/// /proc/PID/net (cheaper than `ip netns exec cat` while flooding).
fn counter_of(pid: u32, name: &str) -> u64 {
    let mut text = std::fs::read_to_string(format!("/proc/{pid}/net/netstat"))
        .unwrap_or_else(|e| panic!("/proc/{pid}/net/netstat: {e}"));
    text.push_str(
        &std::fs::read_to_string(format!("/proc/{pid}/net/snmp"))
            .unwrap_or_else(|e| panic!("/proc/{pid}/net/snmp: {e}")),
    );
    *parse_proc_net_pairs(&text)
        .get(name)
        .unwrap_or_else(|| panic!("no counter {name} for pid {pid}"))
}

/// Per-listener series (every family labelled with a listener address) of `netns`.
fn listener_series<'m>(m: &'m Metrics, netns: &str) -> Vec<&'m Sample> {
    m.samples
        .iter()
        .filter(|s| {
            s.labels.get("netns").map(String::as_str) == Some(netns)
                && (s.labels.contains_key("listen_addr") || s.labels.contains_key("socket"))
        })
        .collect()
}

fn transitions(m: &Metrics, netns: &str, from: &str, to: &str) -> f64 {
    m.one(
        "sockq_tcp_state_transitions_total",
        &[("netns", netns), ("from", from), ("to", to)],
    )
    .unwrap_or(0.0)
}

/// Waits up to 3 s for the daemon to report `want` transitions `from` -> `to` in
/// `netns` (the poll that lists a change first may have read the counts before it).
fn wait_for_transitions(daemon: &Daemon, netns: &str, (from, to): (&str, &str), want: usize) {
    daemon.wait_for(Duration::from_secs(3), |m| {
        let n = transitions(m, netns, from, to);
        if n == want as f64 {
            Ok(())
        } else {
            Err(format!("{n} {from} -> {to} transitions, want {want}"))
        }
    });
}

fn assert_daemon_healthy(daemon: &Daemon) {
    assert!(alive(daemon.pid()), "sockq run (pid {}) died", daemon.pid());
    let m = daemon.metrics();
    assert_eq!(
        m.one("sockq_probe_attached", &[("probe", "inet_sock_set_state")]),
        Ok(1.0),
        "inet_sock_set_state no longer attached"
    );
}

fn percentile(sorted: &[Duration], q: f64) -> Duration {
    assert!(!sorted.is_empty(), "no samples");
    let rank = ((q * sorted.len() as f64).ceil() as usize).clamp(1, sorted.len());
    sorted[rank - 1]
}

/// When, after `since`, sockq stopped showing per-listener series of `netns` that
/// `keep` selects: polls every 20 ms and returns the interval it happened in (start
/// of the last scrape that still showed some, start of the first that showed none).
/// Panics if a scrape that started more than `limit` after `since` still shows some.
fn gone_within(
    daemon: &Daemon,
    netns: &str,
    since: Instant,
    limit: Duration,
    keep: impl Fn(&Sample) -> bool,
) -> Gone {
    let mut last_seen = None;
    loop {
        let started = since.elapsed();
        let m = daemon.metrics();
        let left: Vec<String> = listener_series(&m, netns)
            .into_iter()
            .filter(|s| keep(s))
            .map(|s| format!("{}{:?}", s.name, s.labels))
            .collect();
        if left.is_empty() {
            return Gone {
                last_seen,
                clean: started,
            };
        }
        assert!(
            started <= limit,
            "{} series of netns {netns} still present in a scrape started {started:?} \
             after the listeners went (limit {limit:?}), e.g. {:?}",
            left.len(),
            &left[..left.len().min(5)]
        );
        last_seen = Some(started);
        std::thread::sleep(Duration::from_millis(20));
    }
}

struct Gone {
    last_seen: Option<Duration>,
    clean: Duration,
}

impl std::fmt::Display for Gone {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self.last_seen {
            Some(seen) => write!(
                f,
                "still shown by a scrape started {seen:?} after, none by one started {:?} after",
                self.clean
            ),
            None => write!(f, "none shown by the first scrape, {:?} after", self.clean),
        }
    }
}

/// hping3 flooding inside a namespace; killed if the test ends early.
struct Flood(Child);

impl Drop for Flood {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// `ss` in the namespace: how many request sockets (SYN_RECV) are on `port`.
fn ss_syn_recv(ns: &Netns, port: u16) -> usize {
    ns.output(
        "ss",
        &["-tnH", "state", "syn-recv", "sport", &format!("= :{port}")],
    )
    .lines()
    .count()
}

#[test]
fn syn_flood_keeps_sockq_responsive() {
    const PORT: u16 = 7101;
    const BACKLOG: u32 = 128;
    const FLOOD: Duration = Duration::from_secs(60);
    let _turn = one_at_a_time();
    // The flooder's namespace gets no SYN-ACK back (the server's route to it leads to
    // a neighbour that does not exist), as with spoofed sources: request sockets stay
    // in the SYN queue until it is full, then the kernel answers with SYN cookies.
    let server = Netns::new("flood-srv");
    let client = Netns::new("flood-cli");
    let (server_ip, _, _, _) = server.link_with_lost_replies(&client);
    let netns = server.inode().to_string();
    let daemon = Daemon::start("1");
    let listen_addr = format!("{server_ip}:{PORT}");
    let listener = server.scenario(&["backlog", &listen_addr, &BACKLOG.to_string(), "0"]);
    let labels = [
        ("netns", netns.as_str()),
        ("listen_addr", listen_addr.as_str()),
    ];
    daemon.wait_for(Duration::from_secs(5), |m| {
        m.one("sockq_listen_syn_queue_length", &labels).map(|_| ())
    });
    let in_server_ns = listener.pid();
    let cookies_before = counter_of(in_server_ns, "TcpExt.SyncookiesSent");
    let rss_before = rss_kib(daemon.pid());

    let mut flood = Flood(
        client
            .command("hping3")
            .args(["-S", "-p", &PORT.to_string(), "--flood"])
            .arg(server_ip.to_string())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .expect("hping3 (Debian package hping3, installed by `cargo xtask setup`)"),
    );
    let started = Instant::now();
    let mut latencies = Vec::new();
    let mut failed_scrapes = 0;
    let mut rss_max = rss_before;
    let mut syn_queue_max = 0.0f64;
    // (comparisons while ss held still, of which sockq agreed)
    let mut syn_queue_vs_ss = (0u32, 0u32);
    let mut slow_scrapes = Vec::new();
    let mut cookie_overshoots = Vec::new();
    let mut last_cookies = 0.0f64;
    let mut i = 0u64;
    while started.elapsed() < FLOOD {
        if let Ok(Some(status)) = flood.0.try_wait() {
            let mut err = String::new();
            if let Some(mut e) = flood.0.stderr.take() {
                let _ = e.read_to_string(&mut err);
            }
            panic!("hping3 exited early with {status}: {err}");
        }
        i += 1;
        // Every 20th round: is sockq's SYN queue the one `ss` shows while it holds still?
        let ss_before = i.is_multiple_of(20).then(|| ss_syn_recv(&server, PORT));
        let t0 = Instant::now();
        let Some(body) = try_get(daemon.addr, "/metrics") else {
            failed_scrapes += 1;
            std::thread::sleep(Duration::from_millis(100));
            continue;
        };
        let latency = t0.elapsed();
        latencies.push(latency);
        if latency > Duration::from_millis(200) {
            slow_scrapes.push((t0.duration_since(started), latency));
        }
        let kernel_cookies_after = counter_of(in_server_ns, "TcpExt.SyncookiesSent");
        let ss_after = ss_before.map(|_| ss_syn_recv(&server, PORT));
        rss_max = rss_max.max(rss_kib(daemon.pid()));
        let m = Metrics::parse(&body);
        let syn_queue = m
            .one("sockq_listen_syn_queue_length", &labels)
            .unwrap_or_else(|e| panic!("during the flood: {e}"));
        syn_queue_max = syn_queue_max.max(syn_queue);
        if let (Some(before), Some(after)) = (ss_before, ss_after)
            && before == after
        {
            syn_queue_vs_ss.0 += 1;
            if syn_queue == before as f64 {
                syn_queue_vs_ss.1 += 1;
            } else {
                eprintln!("SYN queue: sockq {syn_queue}, ss syn-recv {before}");
            }
        }
        let cookies = m
            .one("sockq_netstat_syncookies_sent_total", &[labels[0]])
            .unwrap_or_else(|e| panic!("during the flood: {e}"));
        // sockq reports the kernel's counter as of its last poll: never more than the
        // kernel counts right after the scrape, never going back.
        if cookies > kernel_cookies_after as f64 || cookies < last_cookies {
            cookie_overshoots.push((cookies, last_cookies, kernel_cookies_after));
        }
        last_cookies = cookies;
        std::thread::sleep(Duration::from_millis(100).saturating_sub(t0.elapsed()));
    }
    // SIGINT: hping3 prints its statistics (on stderr) and exits.
    // SAFETY: kill(2) on our own child's pid (`ip netns exec` execs hping3 in place).
    unsafe { libc::kill(flood.0.id() as i32, libc::SIGINT) };
    let _ = flood.0.wait();
    let mut hping = String::new();
    if let Some(mut e) = flood.0.stderr.take() {
        let _ = e.read_to_string(&mut hping);
    }
    let sent = hping
        .lines()
        .find(|l| l.contains("packets transmitted"))
        .unwrap_or("(no statistics)")
        .to_owned();

    latencies.sort();
    let (p50, p99) = (percentile(&latencies, 0.5), percentile(&latencies, 0.99));
    let cookies_kernel = counter_of(in_server_ns, "TcpExt.SyncookiesSent") - cookies_before;
    let full_do_cookies = server.counter("TcpExt.TCPReqQFullDoCookies");
    eprintln!(
        "SYN flood {FLOOD:?}: hping3 {sent}; kernel SyncookiesSent +{cookies_kernel}, \
         TCPReqQFullDoCookies {full_do_cookies}"
    );
    eprintln!(
        "/metrics during the flood: {} scrapes, {failed_scrapes} failed, p50 {p50:?}, \
         p99 {p99:?}, max {:?}",
        latencies.len(),
        latencies.last().copied().unwrap_or_default()
    );
    eprintln!("sockq RSS: {rss_before} KiB before the flood, at most {rss_max} KiB during it");
    eprintln!(
        "sockq SYN queue at most {syn_queue_max}; equal to ss's syn-recv count in {} of {} \
         comparisons while ss held still",
        syn_queue_vs_ss.1, syn_queue_vs_ss.0
    );
    eprintln!("scrapes slower than 200 ms (when, how long): {slow_scrapes:?}");

    assert_eq!(failed_scrapes, 0, "scrapes that got no answer");
    assert!(
        latencies.len() >= 300,
        "{} scrapes in 60 s",
        latencies.len()
    );
    assert!(p99 < Duration::from_secs(1), "p99 scrape latency {p99:?}");
    assert!(rss_max < 150 * MIB, "RSS {rss_max} KiB during the flood");
    assert!(
        cookies_kernel > 0,
        "the flood never overflowed the SYN queue (no SYN cookies): {sent}"
    );
    // The kernel caps the SYN queue at the backlog (+1 on this kernel's check).
    assert!(
        syn_queue_max > 0.0 && syn_queue_max <= f64::from(BACKLOG + 1),
        "sockq SYN queue at most {syn_queue_max}, backlog {BACKLOG}"
    );
    assert!(
        syn_queue_vs_ss.0 > 0 && syn_queue_vs_ss.1 * 2 > syn_queue_vs_ss.0,
        "sockq's SYN queue equalled ss's syn-recv count in only {} of {} comparisons",
        syn_queue_vs_ss.1,
        syn_queue_vs_ss.0
    );
    assert!(
        cookie_overshoots.is_empty(),
        "sockq's SyncookiesSent ran ahead of the kernel's or went back \
         (sockq, previous, kernel): {cookie_overshoots:?}"
    );
    // The flood is over: the kernel's counter holds still and sockq's must equal it.
    daemon.wait_for(Duration::from_secs(5), |m| {
        let before = counter_of(in_server_ns, "TcpExt.SyncookiesSent");
        let sockq = m.one("sockq_netstat_syncookies_sent_total", &[labels[0]])?;
        let after = counter_of(in_server_ns, "TcpExt.SyncookiesSent");
        if before == after && sockq == after as f64 {
            Ok(())
        } else {
            Err(format!(
                "sockq SyncookiesSent {sockq}, kernel {before}/{after}"
            ))
        }
    });
    assert_daemon_healthy(&daemon);
    listener.finish();
}

#[test]
fn ten_thousand_listeners_come_and_go() {
    const COUNT: usize = 10_000;
    let _turn = one_at_a_time();
    let ns = Netns::new("10k");
    let netns = ns.inode().to_string();
    let daemon = Daemon::start("1");
    std::thread::sleep(Duration::from_secs(3));
    let baseline = rss_kib(daemon.pid());

    let started = Instant::now();
    let scenario = ns.scenario(&["many-listeners", &COUNT.to_string(), "10000"]);
    let opened = started.elapsed();
    let seen = daemon.wait_for(Duration::from_secs(60), |m| {
        let n = m
            .find("sockq_listen_accept_queue_limit", &[("netns", &netns)])
            .len();
        if n == COUNT {
            Ok(started.elapsed())
        } else {
            Err(format!("{n} listeners reported, want {COUNT}"))
        }
    });
    // Each listener's opening went through the probe once: the kernel made exactly
    // COUNT CLOSE -> LISTEN transitions in this namespace. A poll reads the kernel's
    // counts before its inventory, so the poll that first lists all COUNT listeners
    // may have counted only the ones open when it began (6,148 of 10,000 once, on
    // CI): the next poll has them all.
    wait_for_transitions(&daemon, &netns, ("CLOSE", "LISTEN"), COUNT);
    let t0 = Instant::now();
    let body = daemon.metrics_text();
    let scrape = t0.elapsed();
    let rss_full = rss_kib(daemon.pid());
    eprintln!(
        "{COUNT} listeners opened in {opened:?}, all reported after {seen:?}; one scrape \
         {scrape:?}, {} KiB; sockq RSS {rss_full} KiB",
        body.len() / 1024
    );

    scenario.finish();
    let closed = Instant::now();
    // At most two polls at a 1 s interval (10 % slack for the scrape itself).
    let after = gone_within(&daemon, &netns, closed, Duration::from_millis(2200), |_| {
        true
    });
    eprintln!("the {COUNT} listeners' series after the process exited: {after}");
    // The poll whose inventory found them gone read the kernel's counts first, maybe
    // while the last ones were still closing: the next one has them all.
    wait_for_transitions(&daemon, &netns, ("LISTEN", "CLOSE"), COUNT);

    // Memory comes back: the daemon keeps nothing of the listeners that went, and
    // gives glibc's free memory back whenever enough was freed (33-34 MB after a
    // 173-179 MB peak from a 35 MB baseline, in runs on 2026-12-01). The limit
    // leaves room for fragmentation; a daemon that kept the listeners' state would
    // stay near the peak.
    let limit = baseline + (16 * MIB).max(rss_full.saturating_sub(baseline) / 10);
    let deadline = Instant::now() + Duration::from_secs(10);
    let rss_after = loop {
        let rss = rss_kib(daemon.pid());
        if rss <= limit || Instant::now() >= deadline {
            break rss;
        }
        std::thread::sleep(Duration::from_millis(500));
    };
    eprintln!(
        "sockq RSS: baseline {baseline} KiB, {rss_full} KiB with {COUNT} listeners, \
         {rss_after} KiB after they went"
    );
    assert!(
        rss_after <= limit,
        "RSS {rss_after} KiB 10 s after the listeners went (peak {rss_full} KiB), baseline \
         {baseline} KiB: the memory they took was not given back"
    );
    assert_daemon_healthy(&daemon);
}

#[test]
fn a_burst_of_short_lived_listeners_leaves_nothing_behind() {
    const COUNT: usize = 2000;
    let _turn = one_at_a_time();
    let ns = Netns::new("burst");
    let netns = ns.inode().to_string();
    let daemon = Daemon::start("1");

    // Scrape all along the burst: every scrape must be answered, and some must show
    // the short-lived listeners (else their absence afterwards would prove nothing).
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let scraper = {
        let stop = std::sync::Arc::clone(&stop);
        let (addr, netns) = (daemon.addr, netns.clone());
        std::thread::spawn(move || {
            let (mut ok, mut failed, mut slowest, mut most) = (0u32, 0u32, Duration::ZERO, 0);
            while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                let t0 = Instant::now();
                match try_get(addr, "/metrics") {
                    Some(body) => {
                        ok += 1;
                        let m = Metrics::parse(&body);
                        let n = m
                            .find("sockq_listen_accept_queue_limit", &[("netns", &netns)])
                            .len();
                        most = most.max(n);
                    }
                    None => failed += 1,
                }
                slowest = slowest.max(t0.elapsed());
                std::thread::sleep(Duration::from_millis(50));
            }
            (ok, failed, slowest, most)
        })
    };
    let started = Instant::now();
    // COUNT processes forked at once, each listening for 100 ms and exiting.
    let burst = ns.scenario(&["listen-burst", &COUNT.to_string(), "100"]);
    let took = started.elapsed();
    let listened: usize = burst
        .first_line
        .strip_prefix("done ")
        .and_then(|n| n.parse().ok())
        .unwrap_or_else(|| panic!("scenario said {:?}", burst.first_line));
    burst.finish();
    let done = Instant::now();
    assert_eq!(listened, COUNT, "children that listened");

    let after = gone_within(&daemon, &netns, done, Duration::from_millis(2200), |_| true);
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    let (ok, failed, slowest, most) = scraper.join().expect("scraper");
    eprintln!(
        "{COUNT} short-lived listening processes in {took:?}, at most {most} listed at once; \
         their series after the last exited: {after}; {ok} scrapes meanwhile, {failed} \
         failed, slowest {slowest:?}"
    );
    assert!(
        most > 0,
        "no scrape showed any of the short-lived listeners"
    );
    assert_eq!(failed, 0, "scrapes during the burst that got no answer");
    assert_daemon_healthy(&daemon);
    // The probe saw every one of them open and close.
    daemon.wait_for(Duration::from_secs(3), |m| {
        let opened = transitions(m, &netns, "CLOSE", "LISTEN");
        let closed = transitions(m, &netns, "LISTEN", "CLOSE");
        if (opened, closed) == (COUNT as f64, COUNT as f64) {
            Ok(())
        } else {
            Err(format!(
                "CLOSE->LISTEN {opened}, LISTEN->CLOSE {closed}, want {COUNT} each"
            ))
        }
    });
}

#[test]
fn server_killed_mid_accept_leaves_no_stale_series() {
    const PORT: u16 = 7103;
    const CLIENTS: usize = 20;
    let _turn = one_at_a_time();
    let ns = Netns::new("killed");
    let netns = ns.inode().to_string();
    let daemon = Daemon::start("1");
    let listen_addr = format!("{}:{PORT}", Ipv4Addr::LOCALHOST);
    // The server accepts one connection every 500 ms; the rest wait in its queue.
    let server = ns.scenario(&["accept-every", &listen_addr, "500"]);
    let clients = ns.scenario(&["connect", &listen_addr, &CLIENTS.to_string()]);
    let labels = [
        ("netns", netns.as_str()),
        ("listen_addr", listen_addr.as_str()),
    ];
    let pid = server.pid().to_string();
    let queued = daemon.wait_for(Duration::from_secs(10), |m| {
        let accepted = m.one("sockq_listen_accepts_total", &labels)?;
        let depth = m.one("sockq_listen_accept_queue_length", &labels)?;
        let acceptors = m
            .find(
                "sockq_acceptor_accepts_total",
                &[labels[0], labels[1], ("pid", pid.as_str())],
            )
            .len();
        if accepted >= 2.0 && depth >= 5.0 && acceptors == 1 {
            Ok(depth)
        } else {
            Err(format!(
                "{accepted} accepted, {depth} queued, {acceptors} acceptor series"
            ))
        }
    });
    let before = listener_series(&daemon.metrics(), &netns).len();

    // SAFETY: kill(2) on our own child's pid (`ip netns exec` execs in place).
    assert_eq!(
        unsafe { libc::kill(server.pid() as i32, libc::SIGKILL) },
        0,
        "SIGKILL the server"
    );
    let killed = Instant::now();
    // The kernel agrees the listener is gone.
    let deadline = Instant::now() + Duration::from_secs(2);
    while !ns
        .output("ss", &["-ltnH", "sport", &format!("= :{PORT}")])
        .trim()
        .is_empty()
    {
        assert!(
            Instant::now() < deadline,
            "the listener outlived its process"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    let after = gone_within(&daemon, &netns, killed, Duration::from_millis(2200), |s| {
        s.labels.get("listen_addr").map(String::as_str) == Some(listen_addr.as_str())
    });
    eprintln!(
        "server killed with {queued} connections queued; its {before} series after the \
         SIGKILL: {after}"
    );
    assert_daemon_healthy(&daemon);
    drop(server);
    clients.finish();
}
