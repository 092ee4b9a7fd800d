//! `cargo xtask bench`: the cost of watching, measured side by side in one run.
//!
//! A loopback connect/accept/close storm (our own client and server, in a fresh
//! network namespace per run) without sockq, with sockq, and with an equivalent
//! bpftrace script on the same tracepoints; the variants alternate over several
//! rounds and the medians are compared. Also: each sockq program's mean run time from
//! the kernel's BPF statistics, the daemon's CPU and memory, `/metrics` latency with
//! many listeners, and listener events through the ring buffer without loss.
//! Results are printed; `BENCHMARKS.md` records a run.

use std::{
    io::{BufRead as _, BufReader, Read as _, Write as _},
    net::TcpStream,
    path::{Path, PathBuf},
    process::{Child, Command, Stdio},
    time::{Duration, Instant},
};

use anyhow::{Context as _, Result, bail};

use crate::step;

/// The bpftrace peer: what someone would write by hand for the same signals.
const BPFTRACE_PEER: &str = r#"
tracepoint:sock:inet_sock_set_state { @transitions[args->oldstate, args->newstate] = count(); }
tracepoint:sock:sk_data_ready
/((struct sock *)args->skaddr)->__sk_common.skc_state == 10/
{ @depth = hist(((struct sock *)args->skaddr)->sk_ack_backlog); }
tracepoint:syscalls:sys_exit_accept4 /args->ret >= 0/ { @accepts[tid] = count(); }
tracepoint:tcp:tcp_retransmit_synack { @synack = count(); }
"#;

pub struct Options {
    pub seconds: f64,
    pub rounds: usize,
}

#[derive(Clone, Copy, PartialEq, Eq, Debug)]
enum Variant {
    Baseline,
    Sockq,
    Bpftrace,
    /// sockq as it runs by default: without the Nagle / delayed-ACK family.
    SockqCore,
}

impl Variant {
    fn name(self) -> &'static str {
        match self {
            Self::Baseline => "no sockq",
            Self::Sockq => "sockq --nagle (all)",
            Self::Bpftrace => "bpftrace peer",
            Self::SockqCore => "sockq (default)",
        }
    }
}

/// One storm's result.
#[derive(Clone, Copy, Debug, Default)]
struct Storm {
    rate: f64,
    /// Machine CPU seconds (user + system, all cores) per connection.
    cpu_per_conn: f64,
}

pub fn run(root: &Path, sockq: &Path, opts: &Options) -> Result<()> {
    let scenario = root.join("target/release/sockq-scenario");
    if !scenario.exists() {
        bail!("{} is missing", scenario.display());
    }
    let variants = [
        Variant::Baseline,
        Variant::Sockq,
        Variant::Bpftrace,
        Variant::SockqCore,
    ];
    let mut sat: Vec<Vec<Storm>> = vec![Vec::new(); variants.len()];
    let mut half: Vec<Vec<Storm>> = vec![Vec::new(); variants.len()];
    // Request/response round trips (per-packet paths): no sockq, core, all.
    let pingpong_variants = [Variant::Baseline, Variant::SockqCore, Variant::Sockq];
    let mut pingpong: Vec<Vec<f64>> = vec![Vec::new(); pingpong_variants.len()];
    let mut daemon_cpu = Vec::new();
    let mut daemon_rss = 0u64;

    for round in 0..opts.rounds {
        // Rotate the order each round so drift does not favour one variant.
        let order: Vec<usize> = (0..variants.len())
            .map(|i| (i + round) % variants.len())
            .collect();
        step(&format!("round {}/{}: saturation", round + 1, opts.rounds));
        for &v in &order {
            let (storm, extra) = measure(sockq, &scenario, variants[v], opts.seconds, 0.0)?;
            println!(
                "    {:<20} {:>9.0} connections/s",
                variants[v].name(),
                storm.rate
            );
            sat[v].push(storm);
            if let Some(e) = extra {
                daemon_cpu.push(e.cpu_fraction);
                daemon_rss = daemon_rss.max(e.rss_kib);
            }
        }
        let target = median(sat[0].iter().map(|s| s.rate).collect()) / 2.0;
        step(&format!(
            "round {}/{}: half load ({target:.0}/s)",
            round + 1,
            opts.rounds
        ));
        for &v in &order {
            let (storm, _) = measure(sockq, &scenario, variants[v], opts.seconds, target)?;
            println!(
                "    {:<20} {:>9.0} connections/s, {:.2} µs CPU per connection",
                variants[v].name(),
                storm.rate,
                storm.cpu_per_conn * 1e6
            );
            half[v].push(storm);
        }
        step(&format!(
            "round {}/{}: request/response (TCP_NODELAY ping-pong, 4 connections)",
            round + 1,
            opts.rounds
        ));
        for i in 0..pingpong_variants.len() {
            let v = (i + round) % pingpong_variants.len();
            let rate = measure_pingpong(sockq, &scenario, pingpong_variants[v], opts.seconds)?;
            println!(
                "    {:<20} {:>9.0} round trips/s",
                pingpong_variants[v].name(),
                rate
            );
            pingpong[v].push(rate);
        }
    }

    println!();
    println!(
        "== connection rate (median of {} rounds, {} s each)",
        opts.rounds, opts.seconds
    );
    let base_sat = median(sat[0].iter().map(|s| s.rate).collect());
    let base_half_cpu = median(half[0].iter().map(|s| s.cpu_per_conn).collect());
    let base_half_rate = median(half[0].iter().map(|s| s.rate).collect());
    for (i, v) in variants.iter().enumerate() {
        let s = median(sat[i].iter().map(|s| s.rate).collect());
        let h = median(half[i].iter().map(|s| s.rate).collect());
        let c = median(half[i].iter().map(|s| s.cpu_per_conn).collect());
        println!(
            "{:<20} saturation {:>8.0}/s (x{:.3})   half load {:>8.0}/s (x{:.3}), CPU/conn x{:.3}",
            v.name(),
            s,
            s / base_sat,
            h,
            h / base_half_rate,
            c / base_half_cpu
        );
    }
    let core_sat = median(sat[3].iter().map(|s| s.rate).collect());
    let all_sat = median(sat[1].iter().map(|s| s.rate).collect());
    println!(
        "Nagle / delayed-ACK family: connection rate with it / without it x{:.3} \
         ({:.1}% overhead; on by default only at 3% or less)",
        all_sat / core_sat,
        (1.0 - all_sat / core_sat) * 100.0
    );
    println!();
    println!(
        "== request/response round trips (median of {} rounds)",
        opts.rounds
    );
    let base_pp = median(pingpong[0].clone());
    for (i, v) in pingpong_variants.iter().enumerate() {
        let r = median(pingpong[i].clone());
        println!(
            "{:<20} {:>9.0} round trips/s (x{:.3})",
            v.name(),
            r,
            r / base_pp
        );
    }
    let core_pp = median(pingpong[1].clone());
    let all_pp = median(pingpong[2].clone());
    println!(
        "Nagle / delayed-ACK family: round-trip rate with it / without it x{:.3}",
        all_pp / core_pp
    );
    // The kernel's BPF statistics time every program run (two clock reads each), so
    // they are on only for this separate storm, never while rates are compared.
    step("per-program cost: one more storm with kernel.bpf_stats_enabled=1");
    let program_costs = {
        let ns = TempNetns::new()?;
        let d = Daemon::start_with(sockq, &["--nagle"])?;
        set_bpf_stats(true)?;
        let storm = ns
            .command(&scenario)
            .args([
                "storm",
                "127.0.0.1:7100",
                &opts.seconds.to_string(),
                "2",
                "0",
            ])
            .output();
        let stats = program_stats();
        set_bpf_stats(false)?;
        drop(d);
        storm.context("running the storm")?;
        stats?
    };
    println!();
    println!("== sockq programs during the storm (kernel.bpf_stats_enabled)");
    for (name, run_ns, cnt) in &program_costs {
        let mean = if *cnt > 0 {
            *run_ns as f64 / *cnt as f64
        } else {
            0.0
        };
        println!("{name:<24} {cnt:>12} runs  {mean:>8.1} ns mean");
    }
    println!();
    println!("== daemon footprint");
    println!(
        "under the storm: {:.1}% of a core (median), RSS {} KiB (max)",
        median(daemon_cpu) * 100.0,
        daemon_rss
    );
    let idle = idle_footprint(sockq)?;
    println!(
        "idle (10 s): {:.2}% of a core, RSS {} KiB",
        idle.cpu_fraction * 100.0,
        idle.rss_kib
    );
    println!();
    println!("== /metrics latency");
    for n in [1000usize, 10000] {
        let (p50, p99) = scrape_latency(sockq, &scenario, n)?;
        println!(
            "{n:>6} listeners: p50 {:.1} ms, p99 {:.1} ms",
            p50 * 1e3,
            p99 * 1e3
        );
    }
    println!();
    println!("== listener events through the ring buffer");
    let (rate, lost) = event_throughput(sockq, &scenario, opts.seconds)?;
    println!("{rate:.0} events/s, {lost} lost");
    Ok(())
}

/// Round trips per second of the ping-pong workload under `variant`.
fn measure_pingpong(sockq: &Path, scenario: &Path, variant: Variant, seconds: f64) -> Result<f64> {
    let ns = TempNetns::new()?;
    let daemon = match variant {
        Variant::Sockq => Some(Daemon::start_with(sockq, &["--nagle"])?),
        Variant::SockqCore => Some(Daemon::start(sockq)?),
        Variant::Baseline | Variant::Bpftrace => None,
    };
    let out = ns
        .command(scenario)
        .args(["pingpong", "127.0.0.1:7100", &seconds.to_string(), "4"])
        .output()
        .context("running the ping-pong")?;
    drop(daemon);
    let text = String::from_utf8_lossy(&out.stdout);
    let mut words = text.split_whitespace().skip(1);
    let trips: f64 = words
        .next()
        .and_then(|w| w.parse().ok())
        .with_context(|| format!("ping-pong output {text:?}"))?;
    let elapsed: f64 = words
        .next()
        .and_then(|w| w.parse().ok())
        .with_context(|| format!("ping-pong output {text:?}"))?;
    Ok(trips / elapsed)
}

/// What the daemon cost during a measurement.
struct DaemonCost {
    cpu_fraction: f64,
    rss_kib: u64,
}

fn measure(
    sockq: &Path,
    scenario: &Path,
    variant: Variant,
    seconds: f64,
    rate: f64,
) -> Result<(Storm, Option<DaemonCost>)> {
    let ns = TempNetns::new()?;
    let mut daemon = None;
    let mut peer = None;
    match variant {
        Variant::Baseline => {}
        Variant::Sockq => daemon = Some(Daemon::start_with(sockq, &["--nagle"])?),
        Variant::SockqCore => daemon = Some(Daemon::start(sockq)?),
        Variant::Bpftrace => peer = Some(start_bpftrace()?),
    }
    let cpu_before = machine_cpu_seconds()?;
    let daemon_before = daemon
        .as_ref()
        .map(|d| process_cpu_seconds(d.pid()))
        .transpose()?;
    let started = Instant::now();
    let out = ns
        .command(scenario)
        .args([
            "storm",
            "127.0.0.1:7100",
            &seconds.to_string(),
            "2",
            &format!("{rate}"),
        ])
        .output()
        .context("running the storm")?;
    let wall = started.elapsed().as_secs_f64();
    let cpu = machine_cpu_seconds()? - cpu_before;
    let text = String::from_utf8_lossy(&out.stdout);
    let mut words = text.split_whitespace().skip(1);
    let conns: f64 = words
        .next()
        .and_then(|w| w.parse().ok())
        .context("storm output")?;
    let elapsed: f64 = words
        .next()
        .and_then(|w| w.parse().ok())
        .context("storm output")?;
    let storm = Storm {
        rate: conns / elapsed,
        cpu_per_conn: cpu / conns.max(1.0),
    };
    let cost = match (&daemon, daemon_before) {
        (Some(d), Some(before)) => Some(DaemonCost {
            cpu_fraction: (process_cpu_seconds(d.pid())? - before) / wall,
            rss_kib: rss_kib(d.pid())?,
        }),
        _ => None,
    };
    drop(daemon);
    if let Some(mut p) = peer {
        let _ = p.kill();
        let _ = p.wait();
    }
    Ok((storm, cost))
}

fn idle_footprint(sockq: &Path) -> Result<DaemonCost> {
    let d = Daemon::start(sockq)?;
    std::thread::sleep(Duration::from_secs(2));
    let before = process_cpu_seconds(d.pid())?;
    std::thread::sleep(Duration::from_secs(10));
    Ok(DaemonCost {
        cpu_fraction: (process_cpu_seconds(d.pid())? - before) / 10.0,
        rss_kib: rss_kib(d.pid())?,
    })
}

fn scrape_latency(sockq: &Path, scenario: &Path, listeners: usize) -> Result<(f64, f64)> {
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
    let d = Daemon::start(sockq)?;
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
    drop(holder.stdin.take());
    let _ = holder.wait();
    times.sort_by(f64::total_cmp);
    Ok((percentile(&times, 0.5), percentile(&times, 0.99)))
}

fn event_throughput(sockq: &Path, scenario: &Path, seconds: f64) -> Result<(f64, u64)> {
    let ns = TempNetns::new()?;
    let d = Daemon::start(sockq)?;
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

struct Daemon {
    child: Child,
    addr: String,
}

impl Daemon {
    fn start(sockq: &Path) -> Result<Self> {
        Self::start_with(sockq, &[])
    }

    fn start_with(sockq: &Path, args: &[&str]) -> Result<Self> {
        let port = std::net::TcpListener::bind("127.0.0.1:0")?
            .local_addr()?
            .port();
        let addr = format!("127.0.0.1:{port}");
        let child = Command::new(sockq)
            .args(["run", "--metrics-addr", &addr])
            .args(args)
            .env("RUST_LOG", "error")
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .context("starting sockq run")?;
        let d = Self { child, addr };
        let deadline = Instant::now() + Duration::from_secs(20);
        while http_get(&d.addr, "/metrics").is_err() {
            if Instant::now() > deadline {
                bail!("sockq did not serve /metrics");
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        Ok(d)
    }

    fn pid(&self) -> u32 {
        self.child.id()
    }
}

impl Drop for Daemon {
    fn drop(&mut self) {
        let _ = Command::new("kill")
            .arg(self.child.id().to_string())
            .status();
        let _ = self.child.wait();
    }
}

fn start_bpftrace() -> Result<Child> {
    let mut child = Command::new("bpftrace")
        .args(["-e", BPFTRACE_PEER])
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .context("starting bpftrace (Debian package bpftrace)")?;
    let mut line = String::new();
    if let Some(out) = child.stdout.as_mut() {
        let mut reader = BufReader::new(out);
        reader.read_line(&mut line)?;
    }
    if !line.contains("Attaching") {
        bail!("bpftrace did not attach: {line}");
    }
    std::thread::sleep(Duration::from_millis(500));
    Ok(child)
}

/// A network namespace for one measurement, deleted on drop.
struct TempNetns {
    name: String,
}

impl TempNetns {
    fn new() -> Result<Self> {
        static NEXT: std::sync::atomic::AtomicU32 = std::sync::atomic::AtomicU32::new(0);
        let n = NEXT.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let name = format!("sockq-bench-{}-{n}", std::process::id());
        crate::run(Command::new("ip").args(["netns", "add", &name]))?;
        crate::run(Command::new("ip").args(["-n", &name, "link", "set", "lo", "up"]))?;
        Ok(Self { name })
    }

    fn command(&self, program: &Path) -> Command {
        let mut c = Command::new("ip");
        c.args(["netns", "exec", &self.name]).arg(program);
        c
    }
}

impl Drop for TempNetns {
    fn drop(&mut self) {
        let _ = Command::new("ip")
            .args(["netns", "del", &self.name])
            .status();
    }
}

fn http_get(addr: &str, path: &str) -> Result<String> {
    let mut s = TcpStream::connect(addr)?;
    s.set_read_timeout(Some(Duration::from_secs(30)))?;
    write!(s, "GET {path} HTTP/1.0\r\nHost: {addr}\r\n\r\n")?;
    let mut body = String::new();
    s.read_to_string(&mut body)?;
    if !body.starts_with("HTTP/1.1 200") && !body.starts_with("HTTP/1.0 200") {
        bail!("GET {path}: {}", body.lines().next().unwrap_or_default());
    }
    Ok(body)
}

fn set_bpf_stats(on: bool) -> Result<()> {
    std::fs::write(
        "/proc/sys/kernel/bpf_stats_enabled",
        if on { "1" } else { "0" },
    )
    .context("kernel.bpf_stats_enabled")
}

/// (name, run_time_ns, run_cnt) of the loaded programs sockq owns.
fn program_stats() -> Result<Vec<(String, u64, u64)>> {
    let out = Command::new("bpftool")
        .args(["prog", "show", "--json"])
        .output()?;
    let progs: serde_json::Value = serde_json::from_slice(&out.stdout).context("bpftool json")?;
    // The kernel keeps 15 characters of a program's name.
    let ours = [
        "inet_sock_set_",
        "sk_data_ready",
        "tcp_retransmit_",
        "kfree_skb",
        "sock_recv_lengt",
        "sys_enter_accep",
        "sys_exit_accept",
        "sys_enter_liste",
        "timer_start",
        "timer_expire_en",
        "tcp_sendmsg_loc",
        "tcp_probe",
    ];
    let mut stats = Vec::new();
    for p in progs.as_array().into_iter().flatten() {
        let name = p["name"].as_str().unwrap_or_default();
        if ours.iter().any(|o| name.starts_with(o)) {
            stats.push((
                name.to_owned(),
                p["run_time_ns"].as_u64().unwrap_or(0),
                p["run_cnt"].as_u64().unwrap_or(0),
            ));
        }
    }
    stats.sort();
    Ok(stats)
}

fn ticks_per_second() -> f64 {
    // SAFETY: sysconf has no preconditions.
    let t = unsafe { libc::sysconf(libc::_SC_CLK_TCK) };
    if t > 0 { t as f64 } else { 100.0 }
}

/// User + system CPU seconds of the whole machine (`/proc/stat`).
fn machine_cpu_seconds() -> Result<f64> {
    let stat = std::fs::read_to_string("/proc/stat")?;
    let cpu = stat.lines().next().context("/proc/stat")?;
    let fields: Vec<u64> = cpu
        .split_whitespace()
        .skip(1)
        .filter_map(|f| f.parse().ok())
        .collect();
    // user nice system (idle iowait) irq softirq steal
    let busy: u64 = [0usize, 1, 2, 5, 6, 7]
        .iter()
        .filter_map(|&i| fields.get(i))
        .sum();
    Ok(busy as f64 / ticks_per_second())
}

/// utime + stime of a process, in seconds.
fn process_cpu_seconds(pid: u32) -> Result<f64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat"))?;
    let after = stat.rsplit_once(')').map(|(_, r)| r).context("stat")?;
    let f: Vec<&str> = after.split_whitespace().collect();
    let utime: u64 = f.get(11).and_then(|v| v.parse().ok()).context("utime")?;
    let stime: u64 = f.get(12).and_then(|v| v.parse().ok()).context("stime")?;
    Ok((utime + stime) as f64 / ticks_per_second())
}

fn rss_kib(pid: u32) -> Result<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status"))?;
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.split_whitespace().next()?.parse().ok())
        .context("VmRSS")
}

fn median(mut v: Vec<f64>) -> f64 {
    if v.is_empty() {
        return 0.0;
    }
    v.sort_by(f64::total_cmp);
    v[v.len() / 2]
}

fn percentile(sorted: &[f64], q: f64) -> f64 {
    if sorted.is_empty() {
        return 0.0;
    }
    let i = ((sorted.len() as f64 - 1.0) * q).round() as usize;
    sorted[i.min(sorted.len() - 1)]
}

/// Path of the release `sockq` binary.
pub fn release_bin(root: &Path) -> PathBuf {
    root.join("target/release/sockq")
}
