//! The machine around a storm: its load before (wait, bounded, for it to be quiet),
//! the storm's own cgroup (its CPU, and nothing else's), the storm's network
//! namespace (its own counters), and processes' CPU time.

use std::{
    path::{Path, PathBuf},
    process::Command,
    sync::atomic::{AtomicU32, Ordering},
    time::{Duration, Instant},
};

use anyhow::{Context as _, Result, bail};

use super::procfs::{self, CpuTimes, QueueTrouble};

/// What counts as quiet: below these fractions of all CPUs' time, over one sample.
#[derive(Clone, Copy, Debug)]
pub struct QuietLimits {
    pub busy: f64,
    pub steal: f64,
    /// Longest wait for quiet before a storm runs anyway (and says so).
    pub max_wait: Duration,
}

/// The sample window of one quiet check.
const SAMPLE: Duration = Duration::from_millis(250);

/// The machine just before a storm.
#[derive(Clone, Copy, Debug, Default)]
pub struct Load {
    /// Busy (user, system, irq) and steal fractions of all CPUs over the last sample.
    pub busy: f64,
    pub steal: f64,
    pub load1: f64,
    /// Seconds waited for quiet.
    pub waited: f64,
    pub quiet: bool,
}

impl Load {
    pub fn describe(&self) -> String {
        format!(
            "busy {:.0}%, steal {:.1}%, load {:.2}, after {:.1} s",
            self.busy * 100.0,
            self.steal * 100.0,
            self.load1,
            self.waited
        )
    }
}

pub fn cpu_times() -> Result<CpuTimes> {
    let text = std::fs::read_to_string("/proc/stat").context("reading /proc/stat")?;
    procfs::parse_proc_stat(&text).context("parsing /proc/stat")
}

/// Samples the machine until it is quiet or `limits.max_wait` has passed.
pub fn wait_for_quiet(limits: &QuietLimits) -> Result<Load> {
    let started = Instant::now();
    loop {
        let before = cpu_times()?;
        std::thread::sleep(SAMPLE);
        let (busy, steal) = before.fractions_until(&cpu_times()?);
        let load1 = std::fs::read_to_string("/proc/loadavg")
            .ok()
            .and_then(|t| procfs::parse_loadavg(&t))
            .map_or(f64::NAN, |l| l.one_minute);
        let quiet = busy <= limits.busy && steal <= limits.steal;
        let waited = started.elapsed();
        if quiet || waited >= limits.max_wait {
            return Ok(Load {
                busy,
                steal,
                load1,
                waited: waited.as_secs_f64(),
                quiet,
            });
        }
    }
}

fn ticks_per_second() -> f64 {
    // SAFETY: sysconf has no preconditions.
    let t = unsafe { libc::sysconf(libc::_SC_CLK_TCK) };
    if t > 0 { t as f64 } else { 100.0 }
}

/// utime + stime of a process (all its threads), in seconds; clock-tick resolution.
pub fn process_cpu_seconds(pid: u32) -> Result<f64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat"))
        .with_context(|| format!("reading /proc/{pid}/stat"))?;
    let ticks = procfs::parse_pid_cpu_ticks(&stat).context("parsing /proc/PID/stat")?;
    Ok(ticks as f64 / ticks_per_second())
}

pub fn rss_kib(pid: u32) -> Result<u64> {
    status_kib(pid, "VmRSS:")
}

/// A `/proc/PID/status` field in KiB (`VmRSS:`, `VmHWM:`).
pub fn status_kib(pid: u32, field: &str) -> Result<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status"))?;
    procfs::parse_status_kib(&status, field).with_context(|| field.to_owned())
}

static NEXT: AtomicU32 = AtomicU32::new(0);

fn unique_name() -> String {
    let n = NEXT.fetch_add(1, Ordering::Relaxed);
    format!("sockq-bench-{}-{n}", std::process::id())
}

/// A cgroup v2 of its own for one storm's processes, removed on drop.
pub struct StormCgroup {
    path: PathBuf,
}

impl StormCgroup {
    pub fn new() -> Result<Self> {
        let mounts = std::fs::read_to_string("/proc/mounts").context("reading /proc/mounts")?;
        let Some(root) = procfs::cgroup2_mount(&mounts) else {
            bail!("no cgroup v2 hierarchy is mounted (mount -t cgroup2 none /sys/fs/cgroup)");
        };
        let path = root.join(unique_name());
        std::fs::create_dir(&path).with_context(|| format!("creating {}", path.display()))?;
        Ok(Self { path })
    }

    /// `program` run inside this cgroup: a shell moves itself in, then execs it.
    pub fn wrap(&self, program: &Path) -> Command {
        let mut c = Command::new("sh");
        c.arg("-c")
            .arg(r#"echo $$ > "$0/cgroup.procs" && exec "$@""#)
            .arg(&self.path)
            .arg(program);
        c
    }

    /// CPU time of everything that ran in the cgroup, in microseconds.
    pub fn usage_usec(&self) -> Result<u64> {
        let stat = std::fs::read_to_string(self.path.join("cpu.stat"))
            .with_context(|| format!("reading {}/cpu.stat", self.path.display()))?;
        procfs::parse_cpu_stat_usage_usec(&stat).context("usage_usec in cpu.stat")
    }
}

impl Drop for StormCgroup {
    fn drop(&mut self) {
        // Empty once the storm has exited; a cgroup dies with rmdir.
        for _ in 0..50 {
            if std::fs::remove_dir(&self.path).is_ok() {
                return;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        eprintln!("xtask: could not remove {}", self.path.display());
    }
}

/// A network namespace for one measurement, deleted on drop.
pub struct TempNetns {
    name: String,
}

impl TempNetns {
    pub fn new() -> Result<Self> {
        let name = unique_name();
        crate::run(Command::new("ip").args(["netns", "add", &name]))?;
        let ns = Self { name };
        crate::run(Command::new("ip").args(["-n", &ns.name, "link", "set", "lo", "up"]))?;
        Ok(ns)
    }

    /// `program` run inside the namespace (`cmd` is `program` itself or a wrapper).
    pub fn command(&self, program: &Path) -> Command {
        let mut c = Command::new("ip");
        c.args(["netns", "exec", &self.name]).arg(program);
        c
    }

    /// The namespace's own `ip netns exec` prefix, for a wrapper to exec.
    pub fn exec_args(&self) -> [&str; 3] {
        ["netns", "exec", &self.name]
    }

    /// ListenOverflows and TCPSynRetrans of this namespace, read inside it.
    pub fn trouble(&self) -> Result<QueueTrouble> {
        let out = Command::new("ip")
            .args(["netns", "exec", &self.name, "cat", "/proc/net/netstat"])
            .output()
            .context("reading the namespace's /proc/net/netstat")?;
        if !out.status.success() {
            bail!("cat /proc/net/netstat in {} failed", self.name);
        }
        let text = String::from_utf8_lossy(&out.stdout);
        Ok(QueueTrouble::from_netstat(&procfs::parse_netstat(&text)))
    }
}

impl Drop for TempNetns {
    fn drop(&mut self) {
        let _ = Command::new("ip")
            .args(["netns", "del", &self.name])
            .status();
    }
}
