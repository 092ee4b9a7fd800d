//! `cargo xtask bench`: the cost of watching, measured so that a few percent can be
//! told from noise.
//!
//! A loopback connect/accept/close storm (our own client and server, one process, in
//! a network namespace and a cgroup v2 of its own), over TCP and over a Unix socket,
//! under six variants: no sockq,
//! sockq (default set), sockq --nagle, the floor (empty programs on the default set's
//! hooks), and two bpftrace peers (minimal, fair). Paired rounds, each running every
//! variant in a shuffled order (seeded PRNG, seed printed); per variant and round a
//! saturation storm, a half-load storm (paced at half the no-sockq saturation rate)
//! and a request/response workload. Storms with listen overflows or SYN retransmits in
//! their namespace are discarded and counted; before each storm the machine is given
//! a bounded wait to be quiet, and storms that ran on a busy machine are counted.
//! Ratios and added CPU per connection come with bootstrap 90% intervals over the
//! rounds. Then each program's own time (kernel BPF statistics, a storm of each kind),
//! and, in a full run, the daemon idle, `/metrics` latency and ring-buffer events.
//! The output ends with Markdown tables for `BENCHMARKS.md`.

mod bpf;
mod bpftrace;
mod daemon;
mod extras;
mod floor;
mod machine;
mod procfs;
mod programs;
mod report;
mod rounds;
mod stats;
mod storm;
mod variant;

use std::{
    path::{Path, PathBuf},
    process::Command,
    time::{Duration, Instant},
};

use anyhow::{Result, bail};

use crate::step;
use machine::QuietLimits;
use storm::Kind;
use variant::{Setup, Variant};

/// What the command line asked for; unset fields take the mode's defaults.
pub struct Options {
    pub seconds: Option<f64>,
    pub rounds: Option<usize>,
    /// A developer's run: about a minute, fewer rounds, shorter storms, no extras.
    pub quick: bool,
    /// Only the extras (no storms).
    pub extras_only: bool,
    /// Repeat a run's order (and its bootstrap draws).
    pub seed: Option<u64>,
}

/// The run's settings once defaults are applied.
struct Settings {
    seconds: f64,
    rounds: usize,
    attempts: usize,
    limits: QuietLimits,
    extras: bool,
    seed: u64,
}

impl Settings {
    fn from(opts: &Options) -> Result<Self> {
        // Quick: one load sample before each storm, no waiting (a developer's machine
        // is rarely quiet; the storms that were not are still counted).
        let (seconds, rounds, wait) = if opts.quick {
            (0.5, 3, 0.0)
        } else {
            (4.0, 10, 10.0)
        };
        let s = Self {
            seconds: opts.seconds.unwrap_or(seconds),
            rounds: opts.rounds.unwrap_or(rounds),
            attempts: if opts.quick { 2 } else { 3 },
            limits: QuietLimits {
                busy: 0.15,
                steal: 0.02,
                max_wait: Duration::from_secs_f64(wait),
            },
            extras: !opts.quick,
            seed: opts.seed.unwrap_or_else(stats::seed_from_clock),
        };
        if s.rounds < 2 {
            bail!("--rounds must be at least 2: the intervals resample rounds");
        }
        if s.seconds <= 0.0 {
            bail!("--seconds must be positive");
        }
        Ok(s)
    }
}

pub fn run(root: &Path, sockq: &Path, opts: &Options) -> Result<()> {
    let scenario = root.join("target/release/sockq-scenario");
    if !scenario.exists() {
        bail!("{} is missing", scenario.display());
    }
    let s = Settings::from(opts)?;
    if opts.extras_only {
        println!("seed {} (repeat this order with --seed {})", s.seed, s.seed);
        let started = Instant::now();
        extras::print_all(sockq, &scenario, s.seconds, s.seed)?;
        println!();
        println!("the run took {:.0} s", started.elapsed().as_secs_f64());
        return Ok(());
    }
    println!(
        "seed {} (repeat this order with --seed {}); {} rounds, {} s storms; quiet means \
         under {:.0}% busy and {:.0}% steal, waited for up to {} s",
        s.seed,
        s.seed,
        s.rounds,
        s.seconds,
        s.limits.busy * 100.0,
        s.limits.steal * 100.0,
        s.limits.max_wait.as_secs_f64()
    );
    let started = Instant::now();
    let (hooks, tracefs) = discover_floor(sockq)?;
    let setup = Setup {
        sockq,
        floor_hooks: &hooks,
        tracefs: &tracefs,
    };
    fair_peer_sanity(&scenario, &s.limits)?;
    let half_rate = calibrate(&scenario, &s)?;
    let plan = rounds::Plan {
        rounds: s.rounds,
        seconds: s.seconds,
        half_rate,
        attempts: s.attempts,
        limits: s.limits,
    };
    let mut rng = stats::Rng::new(s.seed);
    let m = rounds::run(&setup, &scenario, &plan, &mut rng)?;
    step("per-program cost: storms of their own with the kernel's BPF statistics on");
    let mut program_stats = Vec::new();
    for kind in Kind::ALL {
        program_stats.push((
            kind,
            programs::measure(kind, &setup, &scenario, s.seconds, &s.limits)?,
        ));
    }
    if s.extras {
        extras::print_all(sockq, &scenario, s.seconds, s.seed)?;
    }
    println!();
    println!("the run took {:.0} s", started.elapsed().as_secs_f64());
    let mut boot = stats::Rng::new(s.seed ^ 0x5EED_B007);
    print_summary(root, &s, half_rate, &m, &mut boot);
    for (kind, (sockq_stats, floor_stats)) in &program_stats {
        println!();
        println!(
            "Programs of sockq's default set during a {} saturation storm with the statistics \
             on ({}/s), beside the floor's empty programs on the same hooks ({}/s):",
            kind.name(),
            report::thousands(sockq_stats.storm.rate()),
            report::thousands(floor_stats.storm.rate())
        );
        println!();
        print!(
            "{}",
            report::programs_table(
                &sockq_stats.costs,
                sockq_stats.storm.connections,
                &floor_stats.costs,
                floor_stats.storm.connections
            )
        );
    }
    Ok(())
}

/// The hooks sockq's default set attaches here, read while it runs, and tracefs.
fn discover_floor(sockq: &Path) -> Result<(Vec<floor::Hook>, PathBuf)> {
    step("the floor: reading which hooks `sockq run` attaches, and how");
    let daemon = daemon::Daemon::start(sockq, &[])?;
    let Some(tracefs) = ["/sys/kernel/tracing", "/sys/kernel/debug/tracing"]
        .into_iter()
        .map(PathBuf::from)
        .find(|p| p.join("events").is_dir())
    else {
        bail!("tracefs is not mounted (sockq run mounts it at /sys/kernel/tracing)");
    };
    let hooks = floor::hooks_of(daemon.pid(), &tracefs)?;
    drop(daemon);
    let names: Vec<String> = hooks.iter().map(ToString::to_string).collect();
    println!("    {} hooks: {}", hooks.len(), names.join(", "));
    // Load and attach it once now: a floor that cannot load fails before the rounds.
    drop(floor::Floor::attach(&hooks, &tracefs)?);
    Ok((hooks, tracefs))
}

/// One sample of the machine's load, no waiting.
fn no_wait(limits: &QuietLimits) -> QuietLimits {
    QuietLimits {
        max_wait: Duration::ZERO,
        ..*limits
    }
}

/// Loads the fair peer, runs a short paced storm under it and prints its maps: the
/// proof that it loads on this kernel and computes what it claims.
fn fair_peer_sanity(scenario: &Path, limits: &QuietLimits) -> Result<()> {
    step("sanity: the fair bpftrace peer's maps after a short paced storm");
    let peer = bpftrace::Bpftrace::start(bpftrace::FAIR_PEER)?;
    let storm = storm::run(Kind::Tcp, scenario, 0.5, 2000.0, None, &no_wait(limits))?;
    let maps = peer.stop_and_print()?;
    print!("{}", bpftrace::condense_maps(&maps, 6));
    for map in ["@accepts[", "@accept_wait_us[", "@depth[", "@transitions["] {
        if !maps.contains(map) {
            bail!(
                "the fair peer printed no {map} after {} connections",
                storm.connections
            );
        }
    }
    Ok(())
}

/// Half the no-sockq saturation rate (median of two storms) of each kind, by
/// [`Kind::index`]: the half-load paces.
fn calibrate(scenario: &Path, s: &Settings) -> Result<[f64; 2]> {
    step("calibration: no-sockq saturation, for the half-load paces");
    let mut half = [0.0; 2];
    for kind in Kind::ALL {
        let mut rates = Vec::new();
        for _ in 0..2 {
            rates.push(storm::run(kind, scenario, s.seconds, 0.0, None, &s.limits)?.rate());
        }
        half[kind.index()] = report::median(rates.clone()).unwrap_or(0.0) / 2.0;
        println!(
            "    {}: {} /s: half load is {}/s",
            kind.name(),
            rates
                .iter()
                .map(|r| report::thousands(*r))
                .collect::<Vec<_>>()
                .join(" and "),
            report::thousands(half[kind.index()])
        );
    }
    Ok(half)
}

fn print_summary(
    root: &Path,
    s: &Settings,
    half_rate: [f64; 2],
    m: &report::Measurements,
    rng: &mut stats::Rng,
) {
    let rows = report::rows(m, Kind::Tcp, rng);
    let unix = report::rows(m, Kind::Unix, rng);
    println!();
    println!("== storms discarded (listen overflows or SYN retransmits) and run on a busy machine");
    for v in variant::ALL {
        let i = v.index();
        println!(
            "{:<24} {} discarded, {} of the kept ones not quiet",
            v.name(),
            m.discarded[i],
            m.not_quiet[i]
        );
    }
    let tcp = &m.storms[Kind::Tcp.index()];
    let sockq = &tcp.saturation[Variant::Sockq.index()];
    let nagle = &tcp.saturation[Variant::SockqNagle.index()];
    let rate = |v: &[Option<storm::Storm>]| -> Vec<Option<f64>> {
        v.iter()
            .map(|s| s.as_ref().map(storm::Storm::rate))
            .collect()
    };
    println!();
    println!(
        "Nagle / delayed-ACK family: saturation rate with it / without it {}",
        report::fmt_ratio(stats::ratio(&rate(nagle), &rate(sockq), rng).as_ref())
    );
    println!();
    println!(
        "commit {}, kernel {}, seed {}, {} rounds of {} s, half load {}/s (TCP) and {}/s \
         (Unix):",
        command_line(root, "git", &["rev-parse", "--short", "HEAD"]),
        command_line(root, "uname", &["-r"]),
        s.seed,
        s.rounds,
        s.seconds,
        report::thousands(half_rate[Kind::Tcp.index()]),
        report::thousands(half_rate[Kind::Unix.index()])
    );
    println!();
    print!("{}", report::targets_table(m, &rows, &unix, rng));
    println!();
    println!("TCP storms:");
    println!();
    print!("{}", report::markdown_table(&rows));
    println!();
    println!("Unix storms (no request/response workload):");
    println!();
    print!("{}", report::markdown_table(&unix));
}

fn command_line(root: &Path, program: &str, args: &[&str]) -> String {
    Command::new(program)
        .args(args)
        .current_dir(root)
        .output()
        .ok()
        .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_owned())
        .unwrap_or_else(|| "?".into())
}

/// Path of the release `sockq` binary.
pub fn release_bin(root: &Path) -> PathBuf {
    root.join("target/release/sockq")
}
