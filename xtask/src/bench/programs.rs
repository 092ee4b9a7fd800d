//! Each program's own time, from the kernel's BPF statistics, in a storm of its own
//! with sockq's default set: the statistics cost two clock reads per run, so they are
//! never on while rates or CPU are compared.

use std::{collections::BTreeMap, path::Path, process::Command};

use anyhow::{Context as _, Result, bail};

use super::{
    bpf,
    daemon::Daemon,
    floor::{self, Attachment, Floor},
    machine::QuietLimits,
    storm::{self, Kind, Storm},
    variant::Setup,
};

/// One program's runs during the storm.
#[derive(Clone, Debug, PartialEq)]
pub struct ProgramCost {
    /// `raw_tracepoint inet_sock_set_state`, `tracepoint sys_exit_accept4`.
    pub hook: String,
    pub runs: u64,
    pub run_time_ns: u64,
}

impl ProgramCost {
    pub fn mean_ns(&self) -> f64 {
        if self.runs == 0 {
            0.0
        } else {
            self.run_time_ns as f64 / self.runs as f64
        }
    }
}

/// (run_time_ns, run_cnt) per program id, from `bpftool prog show --json`.
pub fn parse_prog_stats(json: &str) -> Result<BTreeMap<u64, (u64, u64)>> {
    let v: serde_json::Value = serde_json::from_str(json).context("bpftool prog json")?;
    Ok(v.as_array()
        .into_iter()
        .flatten()
        .filter_map(|p| {
            Some((
                p["id"].as_u64()?,
                (
                    p["run_time_ns"].as_u64().unwrap_or(0),
                    p["run_cnt"].as_u64().unwrap_or(0),
                ),
            ))
        })
        .collect())
}

/// The attached programs' runs between two readings, one row per program, sorted
/// by hook.
pub fn costs(
    attached: &[Attachment],
    before: &BTreeMap<u64, (u64, u64)>,
    after: &BTreeMap<u64, (u64, u64)>,
) -> Vec<ProgramCost> {
    let mut by_prog: BTreeMap<u64, Vec<String>> = BTreeMap::new();
    for a in attached {
        by_prog
            .entry(a.prog_id)
            .or_default()
            .push(format!("{} {}", a.kind, a.name));
    }
    let mut out: Vec<ProgramCost> = by_prog
        .into_iter()
        .map(|(id, hooks)| {
            let (t0, c0) = before.get(&id).copied().unwrap_or_default();
            let (t1, c1) = after.get(&id).copied().unwrap_or_default();
            ProgramCost {
                hook: hooks.join(", "),
                runs: c1.saturating_sub(c0),
                run_time_ns: t1.saturating_sub(t0),
            }
        })
        .collect();
    out.sort_by(|a, b| a.hook.cmp(&b.hook));
    out
}

/// Every loaded program's statistics, by id.
pub fn prog_stats() -> Result<BTreeMap<u64, (u64, u64)>> {
    let out = Command::new("bpftool")
        .args(["prog", "show", "--json"])
        .output()
        .context("running bpftool prog show")?;
    if !out.status.success() {
        bail!("bpftool prog show failed");
    }
    parse_prog_stats(&String::from_utf8_lossy(&out.stdout))
}

/// The programs' runs during one storm, and that storm.
pub struct StatsRun {
    pub costs: Vec<ProgramCost>,
    pub storm: Storm,
}

/// A saturation storm with the statistics on, for the programs in `attached`.
fn measure_with(
    kind: Kind,
    attached: &[Attachment],
    watcher: Option<u32>,
    scenario: &Path,
    seconds: f64,
    limits: &QuietLimits,
) -> Result<StatsRun> {
    let stats = bpf::enable_stats()?;
    let before = prog_stats()?;
    let storm = storm::run(kind, scenario, seconds, 0.0, watcher, limits)?;
    let after = prog_stats()?;
    drop(stats);
    Ok(StatsRun {
        costs: costs(attached, &before, &after),
        storm,
    })
}

/// sockq's default set under a saturation storm, then the floor's empty programs on
/// the same hooks under another: the statistics' own cost (two clock reads per run,
/// and whatever preempts a program where its hook may be preempted) shows in the
/// floor's figures. `kind`: the storms' sockets.
pub fn measure(
    kind: Kind,
    setup: &Setup<'_>,
    scenario: &Path,
    seconds: f64,
    limits: &QuietLimits,
) -> Result<(StatsRun, StatsRun)> {
    let daemon = Daemon::start(setup.sockq, &[])?;
    let attached = floor::attachments(daemon.pid())?;
    let sockq = measure_with(
        kind,
        &attached,
        Some(daemon.pid()),
        scenario,
        seconds,
        limits,
    )?;
    drop(daemon);
    let empty = Floor::attach(setup.floor_hooks, setup.tracefs)?;
    let floor = measure_with(kind, &empty.attachments()?, None, scenario, seconds, limits)?;
    Ok((sockq, floor))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn costs_are_deltas_per_attached_program() {
        let json = r#"[{"id":1,"type":"raw_tracepoint","name":"inet_sock_set_","run_time_ns":5000,"run_cnt":20},
                       {"id":2,"type":"tracepoint","name":"sys_exit_accept","run_time_ns":900,"run_cnt":3},
                       {"id":3,"type":"kprobe","name":"other"}]"#;
        let after = parse_prog_stats(json).expect("parses");
        assert_eq!(after.get(&3), Some(&(0, 0)), "no stats: zeros");
        let before: BTreeMap<u64, (u64, u64)> = [(1, (1000, 10))].into();
        let attached = [
            Attachment {
                kind: "tracepoint".into(),
                name: "sys_exit_accept4".into(),
                prog_id: 2,
            },
            Attachment {
                kind: "raw_tracepoint".into(),
                name: "inet_sock_set_state".into(),
                prog_id: 1,
            },
        ];
        let c = costs(&attached, &before, &after);
        assert_eq!(
            c,
            vec![
                ProgramCost {
                    hook: "raw_tracepoint inet_sock_set_state".into(),
                    runs: 10,
                    run_time_ns: 4000
                },
                ProgramCost {
                    hook: "tracepoint sys_exit_accept4".into(),
                    runs: 3,
                    run_time_ns: 900
                },
            ]
        );
        assert_eq!(c[0].mean_ns(), 400.0);
    }
}
