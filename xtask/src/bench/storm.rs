//! One storm: the scenario's connect/accept/close client and server (one process,
//! `sockq-scenario storm`) in a network namespace and a cgroup of their own, after a
//! (bounded) wait for a quiet machine; over loopback TCP or a Unix stream socket.
//! Also the request/response workload.

use std::path::Path;

use anyhow::{Context as _, Result, bail};

use super::{
    machine::{self, Load, QuietLimits, StormCgroup, TempNetns},
    procfs::QueueTrouble,
};

/// Client threads of every storm.
const CLIENT_THREADS: &str = "2";

/// The storm's sockets.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Kind {
    /// Loopback TCP, closed with RST.
    Tcp,
    /// A Unix stream listener on an abstract name (the namespace's own).
    Unix,
}

impl Kind {
    pub const ALL: [Kind; 2] = [Kind::Tcp, Kind::Unix];

    fn addr(self) -> &'static str {
        match self {
            Kind::Tcp => "127.0.0.1:7100",
            Kind::Unix => "@sockq-bench-storm",
        }
    }

    pub fn name(self) -> &'static str {
        match self {
            Kind::Tcp => "TCP",
            Kind::Unix => "Unix",
        }
    }

    pub fn index(self) -> usize {
        self as usize
    }
}

/// What a storm measured.
#[derive(Clone, Copy, Debug)]
pub struct Storm {
    pub connections: u64,
    /// The storm's own clock, from its first connect to its last.
    pub elapsed: f64,
    /// CPU of the storm's cgroup (client, server, and the kernel work done on their
    /// behalf, eBPF programs included), in microseconds.
    pub cgroup_usec: u64,
    /// CPU seconds of the watcher's own process (sockq or bpftrace) over the storm.
    pub watcher_cpu: Option<f64>,
    /// The namespace's ListenOverflows and TCPSynRetrans during the storm.
    pub trouble: QueueTrouble,
    /// The machine before the storm.
    pub load: Load,
    /// Steal fraction of all CPUs during the storm.
    pub steal: f64,
}

impl Storm {
    pub fn rate(&self) -> f64 {
        self.connections as f64 / self.elapsed.max(1e-9)
    }

    /// CPU of the storm's cgroup per connection, in ns.
    pub fn cpu_ns_per_connection(&self) -> f64 {
        self.cgroup_usec as f64 * 1000.0 / (self.connections.max(1) as f64)
    }

    /// CPU of the watcher's process per connection, in ns.
    pub fn watcher_ns_per_connection(&self) -> Option<f64> {
        self.watcher_cpu
            .map(|s| s * 1e9 / (self.connections.max(1) as f64))
    }
}

/// `done COUNT SECONDS`, the last line the scenario prints.
pub fn parse_done(stdout: &str) -> Option<(u64, f64)> {
    let line = stdout.lines().rev().find(|l| l.starts_with("done "))?;
    let mut words = line.split_whitespace().skip(1);
    let count = words.next()?.parse().ok()?;
    let seconds = words.next()?.parse().ok()?;
    Some((count, seconds))
}

/// A storm of `seconds`, at most `rate` connections/s (0: as fast as it goes).
pub fn run(
    kind: Kind,
    scenario: &Path,
    seconds: f64,
    rate: f64,
    watcher: Option<u32>,
    limits: &QuietLimits,
) -> Result<Storm> {
    let ns = TempNetns::new()?;
    let cgroup = StormCgroup::new()?;
    let trouble_before = ns.trouble()?;
    let load = machine::wait_for_quiet(limits)?;
    let watcher_before = watcher.map(machine::process_cpu_seconds).transpose()?;
    let cpu_before = machine::cpu_times()?;
    let out = cgroup
        .wrap(Path::new("ip"))
        .args(ns.exec_args())
        .arg(scenario)
        .args([
            "storm",
            kind.addr(),
            &seconds.to_string(),
            CLIENT_THREADS,
            &format!("{rate:.0}"),
        ])
        .output()
        .context("running the storm")?;
    let (_, steal) = cpu_before.fractions_until(&machine::cpu_times()?);
    let watcher_cpu = match (watcher, watcher_before) {
        (Some(pid), Some(before)) => Some(machine::process_cpu_seconds(pid)? - before),
        _ => None,
    };
    let stdout = String::from_utf8_lossy(&out.stdout);
    if !out.status.success() {
        bail!(
            "the storm failed ({}): {}",
            out.status,
            String::from_utf8_lossy(&out.stderr)
        );
    }
    let (connections, elapsed) =
        parse_done(&stdout).with_context(|| format!("storm output {stdout:?}"))?;
    Ok(Storm {
        connections,
        elapsed,
        cgroup_usec: cgroup.usage_usec()?,
        watcher_cpu,
        trouble: ns.trouble()?.since(&trouble_before),
        load,
        steal,
    })
}

/// Round trips per second of 4 TCP_NODELAY connections exchanging 64-byte messages.
pub fn pingpong(scenario: &Path, seconds: f64, limits: &QuietLimits) -> Result<(f64, Load)> {
    let ns = TempNetns::new()?;
    let load = machine::wait_for_quiet(limits)?;
    let out = ns
        .command(scenario)
        .args(["pingpong", "127.0.0.1:7100", &seconds.to_string(), "4"])
        .output()
        .context("running the ping-pong")?;
    let stdout = String::from_utf8_lossy(&out.stdout);
    let (trips, elapsed) =
        parse_done(&stdout).with_context(|| format!("ping-pong output {stdout:?}"))?;
    Ok((trips as f64 / elapsed.max(1e-9), load))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn done_lines() {
        assert_eq!(parse_done("done 12345 2.001\n"), Some((12345, 2.001)));
        assert_eq!(parse_done("ready\ndone 7 0.5\n"), Some((7, 0.5)));
        assert_eq!(parse_done("ready 7100\n"), None);
        assert_eq!(parse_done("done x 1\n"), None);
    }

    #[test]
    fn per_connection_figures() {
        let s = Storm {
            connections: 20_000,
            elapsed: 2.0,
            cgroup_usec: 1_000_000,
            watcher_cpu: Some(0.02),
            trouble: QueueTrouble::default(),
            load: Load::default(),
            steal: 0.0,
        };
        assert_eq!(s.rate(), 10_000.0);
        assert_eq!(s.cpu_ns_per_connection(), 50_000.0);
        assert!((s.watcher_ns_per_connection().unwrap() - 1000.0).abs() < 1e-9);
    }
}
