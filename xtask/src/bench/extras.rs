//! The figures beside the cost per connection: the daemon idle, `/metrics` latency
//! with many listeners, RSS with 1,000, scrapes against polls, and listener events
//! through the ring buffer.

use std::{
    io::{BufRead as _, BufReader, Read as _},
    path::Path,
    process::Stdio,
    time::{Duration, Instant},
};

use anyhow::{Context as _, Result, bail};

use super::{
    daemon::{Daemon, http_body_bytes, http_get, http_get_answer, http_get_bytes},
    machine::{self, TempNetns},
    report::fmt_ratio,
    stats::{LEVEL, Rng, mean, quantile, ratio},
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

/// The request header of a scrape as Prometheus sends it.
const GZIP: &str = "Accept-Encoding: gzip\r\n";

/// The value of the unlabelled sample `name` in an exposition.
fn sample(body: &str, name: &str) -> Option<f64> {
    body.lines()
        .find_map(|l| l.strip_prefix(name)?.strip_prefix(' '))
        .and_then(|v| v.trim().parse().ok())
}

/// `count` listeners held open in a namespace by `sockq-scenario listeners` until
/// dropped.
struct Listeners(std::process::Child);

impl Listeners {
    /// Starts them, and returns once the scenario says they all listen.
    fn hold(ns: &TempNetns, scenario: &Path, count: usize) -> Result<Self> {
        let mut child = ns
            .command(scenario)
            .args(["listeners", &count.to_string()])
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .spawn()
            .context("starting the listeners")?;
        let mut line = String::new();
        if let Some(out) = child.stdout.take() {
            BufReader::new(out).read_line(&mut line)?;
        }
        Ok(Self(child))
    }
}

impl Drop for Listeners {
    /// Closing its stdin ends the scenario.
    fn drop(&mut self) {
        drop(self.0.stdin.take());
        let _ = self.0.wait();
    }
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

/// Scrapes wanted that render a snapshot (100, so that the p99 is not the maximum);
/// as many repeats come with them.
const FRESH_SCRAPES: usize = 100;

/// `/metrics` with `listeners` listeners, scraped as Prometheus does (gzip) about
/// three times a poll: each scrape's time, told apart by whether it was the first of
/// its snapshot (the body's poll count changed since the previous scrape), and the
/// body sizes.
pub fn scrape_latency(sockq: &Path, scenario: &Path, listeners: usize) -> Result<Scrapes> {
    let ns = TempNetns::new()?;
    let holder = Listeners::hold(&ns, scenario, listeners)?;
    let d = Daemon::start(sockq, &[])?;
    // Let the daemon inventory them.
    std::thread::sleep(Duration::from_secs(3));
    let (mut fresh, mut repeat) = (Vec::new(), Vec::new());
    let mut last_poll = None;
    let deadline = Instant::now() + Duration::from_secs(240);
    while fresh.len() < FRESH_SCRAPES && Instant::now() < deadline {
        let t = Instant::now();
        let gzipped = http_get_bytes(&d.addr, "/metrics", GZIP)?;
        let took = t.elapsed().as_secs_f64();
        let mut body = String::new();
        flate2::read::GzDecoder::new(&gzipped[..])
            .read_to_string(&mut body)
            .context("a /metrics answer that is not gzip")?;
        let poll = sample(&body, "sockq_poll_duration_seconds_count")
            .context("no poll count in /metrics")?;
        if last_poll == Some(poll) {
            repeat.push(took);
        } else if last_poll.is_some() {
            fresh.push(took);
        }
        last_poll = Some(poll);
        std::thread::sleep(Duration::from_millis(300));
    }
    let text_bytes = http_body_bytes(&d.addr, "/metrics", "")?;
    let gzip_bytes = http_body_bytes(&d.addr, "/metrics", GZIP)?;
    drop(holder);
    if fresh.len() < FRESH_SCRAPES / 2 {
        bail!("only {} scrapes saw a new poll in 240 s", fresh.len());
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

/// One case of [`scrapes_against_polls`] (steady or churn), over its rounds.
pub struct Interference {
    pub case: &'static str,
    /// Per round, the mean poll (seconds) of the block without the scraper and of
    /// the block with it; `None` where a block saw no poll.
    pub without: Vec<Option<f64>>,
    pub with: Vec<Option<f64>>,
    /// The scrapes of the blocks with the scraper (failed ones infinite).
    pub scrapes: Timings,
    /// Those served a body already made (the daemon's `sockq-body` header: `made`
    /// or `previous`): what is left of a scrape's time once renders are taken out.
    pub served: Timings,
    /// How many scrapes were served each way (`sockq-body`; `failed` for none).
    pub ways: std::collections::BTreeMap<String, usize>,
    /// The control's requests: the same body from a static server in this process
    /// ([`StaticServer`]), fetched beside each scrape. What the machine's load alone
    /// does to such a request.
    pub control: Timings,
}

/// Request times of the blocks with the scraper, in seconds.
#[derive(Default)]
pub struct Timings {
    /// The mean of each block (`None`: none in it), for the ratios between cases.
    pub means: Vec<Option<f64>>,
    /// All of them, sorted once [`sort`](Self::sort)ed, for the quantiles.
    pub all: Vec<f64>,
}

impl Timings {
    fn push_block(&mut self, times: impl Iterator<Item = f64> + Clone) {
        self.means.push(mean(times.clone()));
        self.all.extend(times);
    }

    fn sort(&mut self) {
        self.all.sort_by(f64::total_cmp);
    }

    /// "p50 .. ms, p90 .. ms, p99 .. ms, max .. ms".
    fn quantiles_ms(&self) -> String {
        let ms = |q| quantile(&self.all, q) * 1e3;
        format!(
            "p50 {:.1} ms, p90 {:.1} ms, p99 {:.1} ms, max {:.1} ms",
            ms(0.5),
            ms(0.9),
            ms(0.99),
            ms(1.0)
        )
    }
}

/// One scrape of [`scrape_every_100ms`]: its time in seconds (infinite if it
/// failed) and how the daemon said its body came to be.
struct Scrape {
    secs: f64,
    body: String,
}

impl Scrape {
    /// Served a body made before it came.
    fn was_made_before(&self) -> bool {
        matches!(self.body.as_str(), "made" | "previous")
    }
}

/// Rounds of [`scrapes_against_polls`], and the length of each of its blocks.
const INTERFERENCE_ROUNDS: usize = 10;
const BLOCK: Duration = Duration::from_secs(10);
/// The cases of [`scrapes_against_polls`], in the order it returns them.
const CASES: [&str; 2] = ["steady", "churn"];

/// Polls against scrapes with 10,000 listeners, side by side: in each round, for
/// each case (steady, and while `listener-churn` opens and closes listeners) a
/// block without and a block with a scraper starting a gzip scrape every 100 ms
/// (each on its own connection, whether the last one finished or not), cases and
/// blocks in an order shuffled by `rng`. Each block's mean poll comes from the
/// daemon's own `sockq_poll_duration_seconds`.
pub fn scrapes_against_polls(
    sockq: &Path,
    scenario: &Path,
    rng: &mut Rng,
) -> Result<Vec<Interference>> {
    let ns = TempNetns::new()?;
    let holder = Listeners::hold(&ns, scenario, 10000)?;
    let d = Daemon::start(sockq, &[])?;
    std::thread::sleep(Duration::from_secs(5));
    let mut cases = CASES.map(|case| Interference {
        case,
        without: Vec::new(),
        with: Vec::new(),
        scrapes: Timings::default(),
        served: Timings::default(),
        ways: Default::default(),
        control: Timings::default(),
    });
    // The control serves the body the daemon serves, to the same scraper.
    let control = StaticServer::start(http_get_bytes(&d.addr, "/metrics", GZIP)?)?;
    for _ in 0..INTERFERENCE_ROUNDS {
        let mut order = [(0, false), (0, true), (1, false), (1, true)];
        rng.shuffle(&mut order);
        for (case, scraper) in order {
            let churner = if CASES[case] == "churn" {
                let secs = (BLOCK + Duration::from_secs(2)).as_secs_f64().to_string();
                let child = ns
                    .command(scenario)
                    .args(["listener-churn", &secs])
                    .stdout(Stdio::null())
                    .spawn()
                    .context("listener churn")?;
                std::thread::sleep(Duration::from_secs(1));
                Some(child)
            } else {
                None
            };
            let (sum0, count0) = poll_totals(&d.addr)?;
            let (scrapes, controls) = if scraper {
                scrape_every_100ms(&d.addr, &control.addr, BLOCK)
            } else {
                std::thread::sleep(BLOCK);
                (Vec::new(), Vec::new())
            };
            let (sum1, count1) = poll_totals(&d.addr)?;
            if let Some(mut c) = churner {
                let _ = c.wait();
            }
            let polls = count1.saturating_sub(count0);
            let mean_poll = (polls > 0).then(|| (sum1 - sum0) / polls as f64);
            let c = &mut cases[case];
            if scraper {
                c.with.push(mean_poll);
                c.scrapes.push_block(scrapes.iter().map(|s| s.secs));
                c.served.push_block(
                    scrapes
                        .iter()
                        .filter(|s| s.was_made_before())
                        .map(|s| s.secs),
                );
                for s in &scrapes {
                    *c.ways.entry(s.body.clone()).or_default() += 1;
                }
                c.control.push_block(controls.into_iter());
            } else {
                c.without.push(mean_poll);
            }
            std::thread::sleep(Duration::from_secs(1));
        }
    }
    drop(holder);
    for c in &mut cases {
        c.scrapes.sort();
        c.served.sort();
        c.control.sort();
    }
    Ok(cases.into())
}

/// `sockq_poll_duration_seconds` sum and count.
fn poll_totals(addr: &str) -> Result<(f64, u64)> {
    let body = http_get(addr, "/metrics")?;
    let value = |name: &str| sample(&body, name).with_context(|| format!("no {name} in /metrics"));
    Ok((
        value("sockq_poll_duration_seconds_sum")?,
        value("sockq_poll_duration_seconds_count")? as u64,
    ))
}

/// Starts a gzip scrape of the daemon at `addr` every 100 ms for `window`, and the
/// same request to the control at `control` beside it (each on its own thread and
/// connection, in an order that alternates): each scrape's time and how its body
/// came to be (failed scrapes infinite, `failed`), and the control's times.
fn scrape_every_100ms(addr: &str, control: &str, window: Duration) -> (Vec<Scrape>, Vec<f64>) {
    let started = Instant::now();
    let (mut scrapers, mut controls) = (Vec::new(), Vec::new());
    let mut next = started;
    let failed = || Scrape {
        secs: f64::INFINITY,
        body: "failed".to_owned(),
    };
    let mut tick = 0;
    while next < started + window {
        let scrape = {
            let addr = addr.to_owned();
            move || {
                let t = Instant::now();
                match http_get_answer(&addr, "/metrics", GZIP) {
                    Ok((head, _)) => Scrape {
                        secs: t.elapsed().as_secs_f64(),
                        body: header_value(&head, "sockq-body")
                            .unwrap_or("unsaid")
                            .to_owned(),
                    },
                    Err(_) => failed(),
                }
            }
        };
        let fetch = {
            let control = control.to_owned();
            move || {
                let t = Instant::now();
                match http_get_bytes(&control, "/metrics", GZIP) {
                    Ok(_) => t.elapsed().as_secs_f64(),
                    Err(_) => f64::INFINITY,
                }
            }
        };
        if tick % 2 == 0 {
            scrapers.push(std::thread::spawn(scrape));
            controls.push(std::thread::spawn(fetch));
        } else {
            controls.push(std::thread::spawn(fetch));
            scrapers.push(std::thread::spawn(scrape));
        }
        tick += 1;
        next += Duration::from_millis(100);
        std::thread::sleep(next.saturating_duration_since(Instant::now()));
    }
    let scrapes = scrapers
        .into_iter()
        .map(|s| s.join().unwrap_or_else(|_| failed()))
        .collect();
    let controls = controls
        .into_iter()
        .map(|c| c.join().unwrap_or(f64::INFINITY))
        .collect();
    (scrapes, controls)
}

/// An HTTP server in this process that answers every request with one body, a
/// thread per connection as the daemon's server has a task per connection: the
/// control of [`scrapes_against_polls`]. Stops when dropped.
struct StaticServer {
    addr: String,
    stop: std::sync::Arc<std::sync::atomic::AtomicBool>,
}

impl StaticServer {
    fn start(body: Vec<u8>) -> Result<Self> {
        use std::{
            io::Write as _,
            sync::{Arc, atomic::Ordering},
        };
        let listener = std::net::TcpListener::bind("127.0.0.1:0").context("control server")?;
        let addr = listener.local_addr()?.to_string();
        let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
        let answer: Arc<[u8]> = [
            format!(
                "HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\nContent-Encoding: gzip\r\n\
                 Content-Length: {}\r\nConnection: close\r\n\r\n",
                body.len()
            )
            .into_bytes(),
            body,
        ]
        .concat()
        .into();
        let stopping = Arc::clone(&stop);
        std::thread::spawn(move || {
            for stream in listener.incoming() {
                if stopping.load(Ordering::Relaxed) {
                    return;
                }
                let (Ok(mut stream), answer) = (stream, Arc::clone(&answer)) else {
                    continue;
                };
                std::thread::spawn(move || {
                    let mut head = Vec::new();
                    let mut buf = [0u8; 1024];
                    while !head.windows(4).any(|w| w == b"\r\n\r\n") {
                        match stream.read(&mut buf) {
                            Ok(0) | Err(_) => return,
                            Ok(n) => head.extend_from_slice(&buf[..n]),
                        }
                    }
                    let _ = stream.write_all(&answer);
                });
            }
        });
        Ok(Self { addr, stop })
    }
}

impl Drop for StaticServer {
    fn drop(&mut self) {
        self.stop.store(true, std::sync::atomic::Ordering::Relaxed);
        // Wakes the accept loop to see it.
        let _ = std::net::TcpStream::connect(&self.addr);
    }
}

/// The value of header `name` (lowercase) in a lowercased answer head.
fn header_value<'a>(head: &'a str, name: &str) -> Option<&'a str> {
    head.lines()
        .find_map(|l| l.strip_prefix(name)?.trim_start().strip_prefix(':'))
        .map(str::trim)
}

/// The daemon's RSS with 1,000 listeners after five gzip scrapes, KiB: (RSS, peak).
pub fn thousand_listeners_rss(sockq: &Path, scenario: &Path) -> Result<(u64, u64)> {
    let ns = TempNetns::new()?;
    let holder = Listeners::hold(&ns, scenario, 1000)?;
    let d = Daemon::start(sockq, &[])?;
    std::thread::sleep(Duration::from_secs(4));
    for _ in 0..5 {
        http_get_bytes(&d.addr, "/metrics", GZIP)?;
    }
    std::thread::sleep(Duration::from_secs(2));
    let rss = machine::rss_kib(d.pid())?;
    let peak = machine::status_kib(d.pid(), "VmHWM:")?;
    drop(holder);
    Ok((rss, peak))
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
    let lost = sample(&body, "sockq_events_lost_total").map_or(0, |v| v as u64);
    // Each listener opens and closes: two events.
    Ok((2.0 * listens / elapsed, lost))
}

/// Every extra, in turn; `seed` orders the blocks of [`scrapes_against_polls`] and
/// draws its bootstrap.
pub fn print_all(sockq: &Path, scenario: &Path, seconds: f64, seed: u64) -> Result<()> {
    let rng = &mut Rng::new(seed ^ 0xE7_7A5);
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
            "{n:>6} listeners: first scrape of a poll p50 {:.1} ms, p90 {:.1} ms, p99 {:.1} ms, \
             max {:.1} ms ({} scrapes); repeats p50 {:.1} ms, max {:.1} ms ({}); body {} bytes, \
             gzip {} bytes",
            ms(&s.fresh, 0.5),
            ms(&s.fresh, 0.9),
            ms(&s.fresh, 0.99),
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
    println!("== RSS with 1,000 listeners (after five gzip scrapes)");
    let (rss, peak) = thousand_listeners_rss(sockq, scenario)?;
    println!(
        "{:.1} MiB (peak {:.1} MiB)",
        rss as f64 / 1024.0,
        peak as f64 / 1024.0
    );
    println!();
    println!(
        "== scrapes against polls, 10,000 listeners ({INTERFERENCE_ROUNDS} rounds; per case a \
         {} s block with a scraper starting a gzip scrape every 100 ms and one without, \
         shuffled)",
        BLOCK.as_secs()
    );
    let cases = scrapes_against_polls(sockq, scenario, rng)?;
    let mean_ms = |v: &[Option<f64>]| mean(v.iter().flatten().copied()).unwrap_or(f64::NAN) * 1e3;
    for c in &cases {
        println!(
            "{:<7} mean poll {:.1} ms without the scraper, {:.1} ms with it: {} (with/without, \
             {}% interval)",
            c.case,
            mean_ms(&c.without),
            mean_ms(&c.with),
            fmt_ratio(ratio(&c.with, &c.without, rng).as_ref()),
            (LEVEL * 100.0).round()
        );
    }
    for c in &cases {
        let (scrapes, n) = (c.scrapes.quantiles_ms(), c.scrapes.all.len());
        println!("{:<7} scrapes {scrapes} ({n})", c.case);
    }
    for c in &cases {
        let (control, n) = (c.control.quantiles_ms(), c.control.all.len());
        println!(
            "{:<7} control (the same body from a static server in the bench) {control} ({n})",
            c.case
        );
    }
    for c in &cases {
        let ways: Vec<String> = c.ways.iter().map(|(w, n)| format!("{n} {w}")).collect();
        println!(
            "{:<7} bodies: {}; those served a body already made {}",
            c.case,
            ways.join(", "),
            c.served.quantiles_ms()
        );
    }
    if let [steady, churn] = &cases[..] {
        println!(
            "mean scrape, churn against steady: {}",
            fmt_ratio(ratio(&churn.scrapes.means, &steady.scrapes.means, rng).as_ref())
        );
        println!(
            "mean scrape served a body already made, churn against steady: {}",
            fmt_ratio(ratio(&churn.served.means, &steady.served.means, rng).as_ref())
        );
        println!(
            "mean control request, churn against steady: {} (the machine's load alone)",
            fmt_ratio(ratio(&churn.control.means, &steady.control.means, rng).as_ref())
        );
        let over_control = |c: &Interference| -> Vec<Option<f64>> {
            c.served
                .means
                .iter()
                .zip(&c.control.means)
                .map(|(s, k)| Some((*s)? / (*k)?))
                .collect()
        };
        println!(
            "mean scrape served a body already made over the control's, churn against \
             steady: {} (what the daemon adds under churn beyond the machine's load)",
            fmt_ratio(ratio(&over_control(churn), &over_control(steady), rng).as_ref())
        );
    }
    println!();
    println!("== listener events through the ring buffer");
    let (rate, lost) = event_throughput(sockq, scenario, seconds)?;
    println!("{rate:.0} events/s, {lost} lost");
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::sample;

    #[test]
    fn a_header_is_found_by_its_whole_name() {
        let head = "http/1.1 200 ok\r\nsockq-body-x: no\r\nsockq-body:  made \r\n";
        assert_eq!(super::header_value(head, "sockq-body"), Some("made"));
        assert_eq!(super::header_value(head, "content-type"), None);
    }

    #[test]
    fn a_sample_is_found_by_its_whole_name() {
        let body =
            "# HELP x\nsockq_poll_duration_seconds_sum 1.5\nsockq_poll_duration_seconds_count 7\n";
        assert_eq!(sample(body, "sockq_poll_duration_seconds_count"), Some(7.0));
        assert_eq!(sample(body, "sockq_poll_duration_seconds_sum"), Some(1.5));
        assert_eq!(
            sample(body, "sockq_poll_duration_seconds"),
            None,
            "a prefix is not a name"
        );
        assert_eq!(sample(body, "sockq_events_lost_total"), None);
    }
}
