//! `cargo xtask soak --minutes N`: sockq for nights, not CI. One `sockq run` stays up
//! while the churn test (`tests/tests/churn.rs`: namespaces, listeners, bad
//! `listen()` calls and acceptor threads coming and going, then a fresh listener
//! measured exactly) runs against it again and again; after each round its
//! invariants hold (every map back near its baseline, nothing lost, exact counts),
//! and the daemon's memory is printed and must not keep growing.

use std::{
    path::Path,
    process::{Child, Command, Stdio},
    time::{Duration, Instant},
};

use anyhow::{Context as _, Result, bail};

use crate::step;

/// Where the soaked daemon serves.
const ADDR: &str = "127.0.0.1:9761";
/// RSS growth over the first round's that fails the soak.
const RSS_GROWTH_LIMIT: f64 = 1.5;

pub fn run(root: &Path, sockq: &Path, minutes: u64) -> Result<()> {
    let mut daemon = Command::new(sockq)
        .args(["run", "--interval", "1", "--metrics-addr", ADDR])
        .env("RUST_LOG", "warn")
        .stdout(Stdio::null())
        .spawn()
        .with_context(|| format!("starting {}", sockq.display()))?;
    let result = soak(root, sockq, &mut daemon, minutes);
    let _ = Command::new("kill").arg(daemon.id().to_string()).status();
    let _ = daemon.wait();
    result
}

fn soak(root: &Path, sockq: &Path, daemon: &mut Child, minutes: u64) -> Result<()> {
    std::thread::sleep(Duration::from_secs(3));
    let deadline = Instant::now() + Duration::from_secs(minutes * 60);
    let (mut round, mut first_rss) = (0u32, None);
    while Instant::now() < deadline {
        round += 1;
        if let Ok(Some(status)) = daemon.try_wait() {
            bail!("the soaked daemon exited with {status} before round {round}");
        }
        let started = Instant::now();
        let status = Command::new("cargo")
            .current_dir(root)
            .args([
                "test",
                "--quiet",
                "--package",
                "sockq-tests",
                "--test",
                "churn",
            ])
            .env("SOCKQ_BIN", sockq)
            .env("SOCKQ_DAEMON_ADDR", ADDR)
            .env("SOCKQ_DAEMON_PID", daemon.id().to_string())
            .status()
            .context("running the churn test")?;
        if !status.success() {
            bail!("round {round}: the churn test failed against the soaked daemon");
        }
        let rss = rss_kib(daemon.id())?;
        let baseline = *first_rss.get_or_insert(rss);
        step(&format!(
            "soak round {round} passed in {:.0} s; daemon RSS {:.1} MiB (first round {:.1})",
            started.elapsed().as_secs_f64(),
            rss as f64 / 1024.0,
            baseline as f64 / 1024.0
        ));
        if rss as f64 > baseline as f64 * RSS_GROWTH_LIMIT {
            bail!("the daemon's RSS grew from {baseline} KiB to {rss} KiB over {round} rounds");
        }
    }
    step(&format!(
        "soak: {round} rounds in {minutes} min, every invariant held"
    ));
    Ok(())
}

fn rss_kib(pid: u32) -> Result<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status"))
        .with_context(|| format!("reading the daemon's status (pid {pid})"))?;
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches(" kB").trim().parse().ok())
        .context("no VmRSS in the daemon's status")
}
