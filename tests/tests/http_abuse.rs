//! The metrics port under abuse, against the real daemon: hundreds of slowloris
//! clients trickling headers, megabytes of garbage, an oversized header. None of it
//! may block a scrape.

use std::{
    io::{Read as _, Write as _},
    net::TcpStream,
    sync::{
        Arc,
        atomic::{AtomicBool, Ordering},
    },
    time::{Duration, Instant},
};

use sockq_tests::{Daemon, try_get};

/// More than the default soft limit of open files (1024), which sockq raises.
const SLOW_CLIENTS: usize = 1500;

#[test]
fn garbage_oversized_and_slow_clients_never_block_a_scrape() {
    let daemon = Daemon::start("1");
    let addr = daemon.addr;
    // Our side needs the descriptors too.
    // SAFETY: getrlimit/setrlimit on our own process with a valid struct.
    unsafe {
        let mut limit = libc::rlimit {
            rlim_cur: 0,
            rlim_max: 0,
        };
        if libc::getrlimit(libc::RLIMIT_NOFILE, &mut limit) == 0 {
            limit.rlim_cur = limit.rlim_max;
            libc::setrlimit(libc::RLIMIT_NOFILE, &limit);
        }
    }

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
