//! The figures beside the cost per connection: the daemon idle, `/metrics` latency
//! with many listeners, and listener events through the ring buffer.

use std::{
    io::{BufRead as _, BufReader, Read as _},
    path::Path,
    process::Stdio,
    time::{Duration, Instant},
};

use anyhow::{Context as _, Result, bail};

use super::{
    daemon::{Daemon, http_body_bytes, http_get, http_get_bytes},
    machine::{self, TempNetns},
    stats::quantile,
};

/// The daemon idle for 10 s: (fraction of a core, RSS KiB).
pub fn idle_footprint(sockq: &Path) -> Result<(f64, u64)> {
    let d = Daemon::start(sockq, &[])?;
    std::thread::sleep(Duration::from_secs(2));
    let before = machine::process_cpu_seconds(d.pid())?;
    std::thread::sleep(Duration::from_secs(10));
    let cpu = (machine::process_cpu_seconds(d.pid())? - before) / 10.0;
    Ok((cpu, machine::rss_kib(d.pid())?))
}

/// What [`scrape_latency`] measures.
pub struct Scrapes {
    /// Scrapes that were the first of their snapshot: they rendered and gzipped it
    /// (what a Prometheus scraping every 15 s against a 1 s poll always gets).
    /// Seconds, sorted.
    pub fresh: Vec<f64>,
    /// Scrapes served the body an earlier scrape rendered from the same snapshot.
    pub repeat: Vec<f64>,
    /// Body sizes in bytes: text, text with `Accept-Encoding: gzip`.
    pub text_bytes: usize,
    pub gzip_bytes: usize,
}

/// Scrapes wanted that render a snapshot; as many repeats come with them.
const FRESH_SCRAPES: usize = 40;

/// `/metrics` with `listeners` listeners, scraped as Prometheus does (gzip) about
/// three times a poll: each scrape's time, told apart by whether it was the first of
/// its snapshot (the body's poll count changed since the previous scrape), and the
/// body sizes.
pub fn scrape_latency(sockq: &Path, scenario: &Path, listeners: usize) -> Result<Scrapes> {
    let ns = TempNetns::new()?;
    let mut holder = ns
        .command(scenario)
        .args(["listeners", &listeners.to_string()])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .context("starting the listeners")?;
    let mut line = String::new();
    if let Some(out) = holder.stdout.take() {
        BufReader::new(out).read_line(&mut line)?;
    }
    let d = Daemon::start(sockq, &[])?;
    // Let the daemon inventory them.
    std::thread::sleep(Duration::from_secs(3));
    let (mut fresh, mut repeat) = (Vec::new(), Vec::new());
    let mut last_poll = None;
    let deadline = Instant::now() + Duration::from_secs(120);
    while fresh.len() < FRESH_SCRAPES && Instant::now() < deadline {
        let t = Instant::now();
        let gzipped = http_get_bytes(&d.addr, "/metrics", "Accept-Encoding: gzip\r\n")?;
        let took = t.elapsed().as_secs_f64();
        let mut body = String::new();
        flate2::read::GzDecoder::new(&gzipped[..])
            .read_to_string(&mut body)
            .context("a /metrics answer that is not gzip")?;
        let poll = body
            .lines()
            .find_map(|l| l.strip_prefix("sockq_poll_duration_seconds_count "))
            .context("no poll count in /metrics")?
            .to_owned();
        if last_poll.as_ref() == Some(&poll) {
            repeat.push(took);
        } else if last_poll.is_some() {
            fresh.push(took);
        }
        last_poll = Some(poll);
        std::thread::sleep(Duration::from_millis(300));
    }
    let text_bytes = http_body_bytes(&d.addr, "/metrics", "")?;
    let gzip_bytes = http_body_bytes(&d.addr, "/metrics", "Accept-Encoding: gzip\r\n")?;
    drop(holder.stdin.take());
    let _ = holder.wait();
    if fresh.len() < FRESH_SCRAPES / 2 {
        bail!("only {} scrapes saw a new poll in 120 s", fresh.len());
    }
    fresh.sort_by(f64::total_cmp);
    repeat.sort_by(f64::total_cmp);
    Ok(Scrapes {
        fresh,
        repeat,
        text_bytes,
        gzip_bytes,
    })
}

/// Listener open/close events per second through the ring buffer, and those lost.
pub fn event_throughput(sockq: &Path, scenario: &Path, seconds: f64) -> Result<(f64, u64)> {
    let ns = TempNetns::new()?;
    let d = Daemon::start(sockq, &[])?;
    let started = Instant::now();
    let out = ns
        .command(scenario)
        .args(["listener-churn", &seconds.to_string()])
        .output()
        .context("listener churn")?;
    let elapsed = started.elapsed().as_secs_f64();
    let text = String::from_utf8_lossy(&out.stdout);
    let listens: f64 = text
        .split_whitespace()
        .nth(1)
        .and_then(|w| w.parse().ok())
        .context("churn output")?;
    std::thread::sleep(Duration::from_millis(1500));
    let body = http_get(&d.addr, "/metrics")?;
    let lost = body
        .lines()
        .find_map(|l| l.strip_prefix("sockq_events_lost_total "))
        .and_then(|v| v.trim().parse().ok())
        .unwrap_or(0);
    // Each listener opens and closes: two events.
    Ok((2.0 * listens / elapsed, lost))
}

/// Prints the three.
pub fn print_all(sockq: &Path, scenario: &Path, seconds: f64) -> Result<()> {
    println!();
    println!("== daemon idle (10 s)");
    let (cpu, rss) = idle_footprint(sockq)?;
    println!("{:.2}% of a core, RSS {rss} KiB", cpu * 100.0);
    println!();
    println!("== /metrics latency (gzip, as Prometheus asks)");
    for n in [1000usize, 10000] {
        let s = scrape_latency(sockq, scenario, n)?;
        let ms = |v: &[f64], q| quantile(v, q) * 1e3;
        println!(
            "{n:>6} listeners: first scrape of a poll p50 {:.1} ms, p90 {:.1} ms, max {:.1} ms \
             ({} scrapes); repeats p50 {:.1} ms, max {:.1} ms ({}); body {} bytes, gzip {} bytes",
            ms(&s.fresh, 0.5),
            ms(&s.fresh, 0.9),
            ms(&s.fresh, 1.0),
            s.fresh.len(),
            ms(&s.repeat, 0.5),
            ms(&s.repeat, 1.0),
            s.repeat.len(),
            s.text_bytes,
            s.gzip_bytes
        );
    }
    println!();
    println!("== listener events through the ring buffer");
    let (rate, lost) = event_throughput(sockq, scenario, seconds)?;
    println!("{rate:.0} events/s, {lost} lost");
    Ok(())
}
