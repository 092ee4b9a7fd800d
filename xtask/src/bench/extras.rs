//! The figures beside the cost per connection: the daemon idle, `/metrics` latency
//! with many listeners, and listener events through the ring buffer.

use std::{
    io::{BufRead as _, BufReader},
    path::Path,
    process::Stdio,
    time::{Duration, Instant},
};

use anyhow::{Context as _, Result, bail};

use super::{
    daemon::{Daemon, http_body_bytes, http_get},
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
    /// p50 and p99 of the scrapes, in seconds.
    pub p50: f64,
    pub p99: f64,
    /// Body sizes in bytes: text, text with `Accept-Encoding: gzip`.
    pub text_bytes: usize,
    pub gzip_bytes: usize,
}

/// 100 scrapes of `/metrics` with `listeners` listeners: latency and body sizes.
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
    let mut times = Vec::new();
    for _ in 0..100 {
        let t = Instant::now();
        let body = http_get(&d.addr, "/metrics")?;
        times.push(t.elapsed().as_secs_f64());
        if body.len() < 100 {
            bail!("short /metrics answer");
        }
    }
    let text_bytes = http_body_bytes(&d.addr, "/metrics", "")?;
    let gzip_bytes = http_body_bytes(&d.addr, "/metrics", "Accept-Encoding: gzip\r\n")?;
    drop(holder.stdin.take());
    let _ = holder.wait();
    times.sort_by(f64::total_cmp);
    Ok(Scrapes {
        p50: quantile(&times, 0.5),
        p99: quantile(&times, 0.99),
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
    println!("== /metrics latency");
    for n in [1000usize, 10000] {
        let s = scrape_latency(sockq, scenario, n)?;
        println!(
            "{n:>6} listeners: p50 {:.1} ms, p99 {:.1} ms, body {} bytes, gzip {} bytes",
            s.p50 * 1e3,
            s.p99 * 1e3,
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
