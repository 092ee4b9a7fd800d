//! The metrics port under abuse, against the real daemon: hundreds of slowloris
//! clients trickling headers, megabytes of garbage, an oversized header, thousands
//! of connections that send nothing. None of it may block a scrape.

use std::{
    io::{Read as _, Write as _},
    net::TcpStream,
    sync::{
        Arc, Mutex,
        atomic::{AtomicBool, Ordering},
    },
    time::{Duration, Instant},
};

use sockq_tests::{Daemon, try_get};

/// More than the default soft limit of open files (1024), which sockq raises.
const SLOW_CLIENTS: usize = 1500;

/// Connections that send nothing: well past the default soft limit of open files,
/// below sockq's connection cap (`MAX_CONNECTIONS`, 8192).
const IDLE_CLIENTS: usize = 5000;

/// The `--http-header-timeout` the idle-connection test gives its daemon: how long
/// a connection may go without a request. Opening all the idle connections and
/// scraping must fit in it (about 3 s on a quiet 2-vCPU machine; CI machines are
/// slower, and the default 5 s once was not enough).
const HEADER_READ_TIMEOUT: Duration = Duration::from_secs(20);

/// The tests here run one at a time: each floods its own daemon with thousands of
/// clients, and the two floods side by side only measure each other.
static ONE_AT_A_TIME: Mutex<()> = Mutex::new(());

/// Raises our soft limit of open files to the hard one (our side needs the
/// descriptors too) and returns it.
fn raise_our_fd_limit() -> u64 {
    let mut limit = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: getrlimit/setrlimit on our own process with a valid struct.
    unsafe {
        if libc::getrlimit(libc::RLIMIT_NOFILE, &mut limit) == 0 {
            limit.rlim_cur = limit.rlim_max;
            libc::setrlimit(libc::RLIMIT_NOFILE, &limit);
        }
    }
    limit.rlim_cur
}

#[test]
fn garbage_oversized_and_slow_clients_never_block_a_scrape() {
    let _alone = ONE_AT_A_TIME.lock().unwrap_or_else(|e| e.into_inner());
    let daemon = Daemon::start("1");
    let addr = daemon.addr;
    raise_our_fd_limit();

    // Slowloris: a request line and one header, then a byte every 200 ms, forever.
    let mut slow: Vec<TcpStream> = (0..SLOW_CLIENTS)
        .map(|i| {
            let mut s = TcpStream::connect(addr).unwrap_or_else(|e| panic!("slow client {i}: {e}"));
            s.write_all(b"GET /metrics HTTP/1.1\r\nHost: x\r\nX-Slow: ")
                .expect("slow client write");
            s
        })
        .collect();
    let stop = Arc::new(AtomicBool::new(false));
    let trickle = {
        let stop = Arc::clone(&stop);
        std::thread::spawn(move || {
            while !stop.load(Ordering::Relaxed) {
                for s in &mut slow {
                    let _ = s.write_all(b"a");
                }
                std::thread::sleep(Duration::from_millis(200));
            }
        })
    };

    // Garbage: 4 MiB that is not HTTP.
    let garbage = std::thread::spawn(move || {
        let Ok(mut s) = TcpStream::connect(addr) else {
            return;
        };
        let chunk: Vec<u8> = (0..65536u32)
            .map(|i| (i.wrapping_mul(2_654_435_761) >> 24) as u8)
            .collect();
        for _ in 0..64 {
            if s.write_all(&chunk).is_err() {
                break; // the server closed it: fine
            }
        }
    });

    // An oversized header: answered with an error or closed, never left hanging.
    let oversized = std::thread::spawn(move || -> String {
        let mut s = TcpStream::connect(addr).expect("connect");
        s.set_read_timeout(Some(Duration::from_secs(10)))
            .expect("timeout");
        let mut request = b"GET /metrics HTTP/1.1\r\nHost: x\r\nX-Big: ".to_vec();
        request.extend(std::iter::repeat_n(b'a', 1 << 20));
        request.extend_from_slice(b"\r\n\r\n");
        let _ = s.write_all(&request);
        let mut response = Vec::new();
        let started = Instant::now();
        let _ = s.read_to_end(&mut response);
        assert!(
            started.elapsed() < Duration::from_secs(10),
            "the oversized request was left hanging"
        );
        String::from_utf8_lossy(&response)
            .lines()
            .next()
            .unwrap_or("")
            .to_owned()
    });

    // Meanwhile, scrapes.
    let mut latencies = Vec::new();
    for i in 0..30 {
        let started = Instant::now();
        let body = try_get(addr, "/metrics").unwrap_or_else(|| panic!("scrape {i} failed"));
        latencies.push(started.elapsed());
        assert!(body.contains("sockq_probe_attached"), "scrape {i}: {body}");
        std::thread::sleep(Duration::from_millis(100));
    }
    latencies.sort();
    let worst = latencies[latencies.len() - 1];
    eprintln!(
        "{SLOW_CLIENTS} slow clients, 4 MiB of garbage, a 1 MiB header: scrape p50 {:?}, max {worst:?}",
        latencies[latencies.len() / 2]
    );
    assert!(worst < Duration::from_secs(1), "a scrape took {worst:?}");
    let first_line = oversized.join().expect("oversized client");
    eprintln!("oversized header answered with {first_line:?}");
    assert!(
        first_line.is_empty() || first_line.contains(" 4"),
        "an oversized header must be refused: {first_line:?}"
    );
    garbage.join().expect("garbage client");
    stop.store(true, Ordering::Relaxed);
    trickle.join().expect("trickle");
}

/// How many descriptors `pid` has open.
fn open_fds(pid: u32) -> usize {
    std::fs::read_dir(format!("/proc/{pid}/fd"))
        .unwrap_or_else(|e| panic!("/proc/{pid}/fd: {e}"))
        .count()
}

/// VmRSS of `pid` in KiB.
fn rss_kib(pid: u32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status"))
        .unwrap_or_else(|e| panic!("/proc/{pid}/status: {e}"));
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .unwrap_or_else(|| panic!("no VmRSS in /proc/{pid}/status"))
}

/// Waits up to `within` for `check` to hold; whether it did.
fn eventually(within: Duration, mut check: impl FnMut() -> bool) -> bool {
    let deadline = Instant::now() + within;
    while !check() {
        if Instant::now() >= deadline {
            return false;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    true
}

#[test]
fn five_thousand_idle_connections_do_not_delay_a_scrape() {
    let _alone = ONE_AT_A_TIME.lock().unwrap_or_else(|e| e.into_inner());
    let timeout = format!("{}", HEADER_READ_TIMEOUT.as_secs());
    let daemon = Daemon::start_with(&["--interval", "1", "--http-header-timeout", &timeout]);
    let (addr, pid) = (daemon.addr, daemon.pid());
    let limit = raise_our_fd_limit();
    assert!(
        limit >= 2 * IDLE_CLIENTS as u64 + 1000,
        "this test needs an open-file hard limit of at least {} (sockq's cap is half of \
         it), not {limit}",
        2 * IDLE_CLIENTS + 1000
    );
    // The daemon's own descriptors, without the transient ones of a poll (a netlink
    // socket, a namespace or /proc file held for a moment): the fewest seen over a
    // poll interval. One sample taken during a poll once made 5,000 open connections
    // look like 4,999.
    let fds_before = {
        let sampled = Instant::now();
        let mut fewest = open_fds(pid);
        while sampled.elapsed() < Duration::from_millis(1200) {
            fewest = fewest.min(open_fds(pid));
            std::thread::sleep(Duration::from_millis(20));
        }
        fewest
    };
    let rss_before = rss_kib(pid);

    // Connect, send nothing. In steps of 500, each accepted before the next, so
    // that the listen backlog never overflows (a dropped handshake would only be
    // accepted after a SYN-ACK retransmission, a second later).
    let opened = Instant::now();
    let mut idle = Vec::with_capacity(IDLE_CLIENTS);
    while idle.len() < IDLE_CLIENTS {
        for _ in 0..500 {
            let i = idle.len();
            idle.push(TcpStream::connect(addr).unwrap_or_else(|e| panic!("idle client {i}: {e}")));
        }
        let want = fds_before + idle.len();
        assert!(
            eventually(Duration::from_secs(5), || open_fds(pid) >= want),
            "sockq did not accept {} connections within 5 s (has {} descriptors, had {fds_before})",
            idle.len(),
            open_fds(pid)
        );
    }
    let all_open = opened.elapsed();
    let per_connection = rss_kib(pid).saturating_sub(rss_before) as f64 / IDLE_CLIENTS as f64;

    let mut latencies = Vec::new();
    for i in 0..20 {
        let started = Instant::now();
        let body = try_get(addr, "/metrics").unwrap_or_else(|| panic!("scrape {i} failed"));
        latencies.push(started.elapsed());
        assert!(body.contains("sockq_probe_attached"), "scrape {i}: {body}");
    }
    let scraped = opened.elapsed();
    let still_open = open_fds(pid).saturating_sub(fds_before);
    latencies.sort();
    let worst = latencies[latencies.len() - 1];
    eprintln!(
        "{IDLE_CLIENTS} idle connections (accepted within {all_open:?}, ~{per_connection:.1} KiB \
         of sockq's RSS each, {still_open} still open after the scrapes): scrape p50 {:?}, \
         max {worst:?}",
        latencies[latencies.len() / 2]
    );
    assert!(
        scraped < HEADER_READ_TIMEOUT,
        "opening the idle connections and scraping took {scraped:?}: the first ones may have \
         been closed before the scrapes"
    );
    assert!(
        still_open >= IDLE_CLIENTS,
        "only {still_open} of the {IDLE_CLIENTS} idle connections were open during the scrapes"
    );
    assert!(
        worst < Duration::from_millis(100),
        "a scrape took {worst:?} with {IDLE_CLIENTS} idle connections open"
    );

    // The header-read timeout gives their descriptors back.
    assert!(
        eventually(HEADER_READ_TIMEOUT + Duration::from_secs(3), || open_fds(
            pid
        ) < fds_before
            + 100),
        "sockq still has {} descriptors (had {fds_before}) {:?} after the idle connections \
         opened",
        open_fds(pid),
        opened.elapsed()
    );
    drop(idle);
}
