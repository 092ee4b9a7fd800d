//! The paired rounds: in each, every variant in an order of its own (shuffled), and
//! for each variant a saturation storm and a half-load storm over TCP, the same over
//! a Unix socket, and the request/response workload, under one start of its watcher.

use std::path::Path;

use anyhow::{Context as _, Result};

use super::{
    machine::{Load, QuietLimits},
    report::{Measurements, thousands},
    stats::Rng,
    storm::{self, Kind, Storm},
    variant::{ALL, Setup, Variant, Watcher},
};

/// What every round runs.
pub struct Plan {
    pub rounds: usize,
    pub seconds: f64,
    /// The half-load pace per [`Kind::index`]: half the no-sockq saturation rate of
    /// the calibration.
    pub half_rate: [f64; 2],
    /// Storms tried per measurement before it is given up as discarded.
    pub attempts: usize,
    pub limits: QuietLimits,
}

pub fn run(setup: &Setup<'_>, scenario: &Path, plan: &Plan, rng: &mut Rng) -> Result<Measurements> {
    let mut m = Measurements::new(plan.rounds);
    for round in 0..plan.rounds {
        let mut order = ALL;
        rng.shuffle(&mut order);
        let names: Vec<&str> = order.iter().map(|v| v.name()).collect();
        crate::step(&format!(
            "round {}/{}: {}",
            round + 1,
            plan.rounds,
            names.join(", ")
        ));
        for variant in order {
            measure_variant(variant, round, setup, scenario, plan, &mut m)
                .with_context(|| format!("round {}, {}", round + 1, variant.name()))?;
        }
    }
    Ok(m)
}

fn measure_variant(
    variant: Variant,
    round: usize,
    setup: &Setup<'_>,
    scenario: &Path,
    plan: &Plan,
    m: &mut Measurements,
) -> Result<()> {
    let i = variant.index();
    let watcher = Watcher::start(variant, setup)?;
    for kind in Kind::ALL {
        let half_rate = plan.half_rate[kind.index()];
        for rate in [0.0, half_rate] {
            let storm = kept_storm(kind, variant, rate, watcher.pid(), scenario, plan, m)?;
            if let Some(s) = &storm {
                print_storm(variant, label(kind, rate), s);
                if !s.load.quiet {
                    m.not_quiet[i] += 1;
                }
            }
            let storms = &mut m.storms[kind.index()];
            if rate == 0.0 {
                storms.saturation[i][round] = storm;
            } else {
                storms.half[i][round] = storm;
            }
        }
    }
    let (trips, load) = storm::pingpong(scenario, plan.seconds, &plan.limits)?;
    println!(
        "    {:<24} ping-pong  {:>8} round trips/s{}",
        variant.name(),
        thousands(trips),
        load_note(&load)
    );
    m.pingpong[i][round] = Some(trips);
    drop(watcher);
    Ok(())
}

/// A storm without listen overflows or SYN retransmits, trying `plan.attempts` times;
/// `None` (and every attempt counted as discarded) if none was clean.
fn kept_storm(
    kind: Kind,
    variant: Variant,
    rate: f64,
    watcher: Option<u32>,
    scenario: &Path,
    plan: &Plan,
    m: &mut Measurements,
) -> Result<Option<Storm>> {
    for attempt in 1..=plan.attempts {
        let s = storm::run(kind, scenario, plan.seconds, rate, watcher, &plan.limits)?;
        if !s.trouble.any() {
            return Ok(Some(s));
        }
        m.discarded[variant.index()] += 1;
        let label = label(kind, rate);
        println!(
            "    {:<24} {label:<10} discarded: {} listen overflows, {} SYN retransmits \
             ({}/s; attempt {attempt} of {})",
            variant.name(),
            s.trouble.listen_overflows,
            s.trouble.syn_retransmits,
            thousands(s.rate()),
            plan.attempts
        );
    }
    Ok(None)
}

/// How the rounds name a storm (`rate` 0: saturation).
fn label(kind: Kind, rate: f64) -> &'static str {
    match (kind, rate == 0.0) {
        (Kind::Tcp, true) => "saturation",
        (Kind::Tcp, false) => "half load",
        (Kind::Unix, true) => "Unix sat.",
        (Kind::Unix, false) => "Unix half",
    }
}

fn load_note(load: &Load) -> String {
    if load.quiet {
        String::new()
    } else {
        format!("  [not quiet: {}]", load.describe())
    }
}

fn print_storm(variant: Variant, label: &str, s: &Storm) {
    let own = s
        .watcher_ns_per_connection()
        .map(|ns| format!("  own {:>6} ns/conn", thousands(ns)))
        .unwrap_or_default();
    let steal = if s.steal > 0.01 {
        format!("  steal {:.1}% during", s.steal * 100.0)
    } else {
        String::new()
    };
    println!(
        "    {:<24} {label:<10} {:>8}/s  cgroup {:>7} ns/conn{own}{steal}{}",
        variant.name(),
        thousands(s.rate()),
        thousands(s.cpu_ns_per_connection()),
        load_note(&s.load)
    );
}
