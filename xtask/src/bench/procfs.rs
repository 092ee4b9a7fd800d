//! Parsing the kernel's text files the benchmark reads, pure: `/proc/stat`,
//! `/proc/loadavg`, `/proc/PID/stat` and `status`, `/proc/net/netstat`, a cgroup's
//! `cpu.stat`, `/proc/mounts`. The reading is in `machine`.

use std::{collections::BTreeMap, path::PathBuf};

/// The machine's CPU time since boot (first line of `/proc/stat`), in clock ticks.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct CpuTimes {
    /// user + nice + system + irq + softirq (guest time is inside user).
    pub busy: u64,
    pub steal: u64,
    /// Everything: busy + idle + iowait + steal.
    pub total: u64,
}

impl CpuTimes {
    /// The busy and steal fractions of the time between `self` and `later`.
    pub fn fractions_until(&self, later: &Self) -> (f64, f64) {
        let total = later.total.saturating_sub(self.total);
        if total == 0 {
            return (0.0, 0.0);
        }
        (
            later.busy.saturating_sub(self.busy) as f64 / total as f64,
            later.steal.saturating_sub(self.steal) as f64 / total as f64,
        )
    }
}

/// `cpu  user nice system idle iowait irq softirq steal guest guest_nice`.
pub fn parse_proc_stat(text: &str) -> Option<CpuTimes> {
    let line = text.lines().find(|l| l.starts_with("cpu "))?;
    let f: Vec<u64> = line
        .split_whitespace()
        .skip(1)
        .map(|v| v.parse().ok())
        .collect::<Option<_>>()?;
    let at = |i: usize| f.get(i).copied().unwrap_or(0);
    if f.len() < 4 {
        return None;
    }
    let busy = at(0) + at(1) + at(2) + at(5) + at(6);
    let steal = at(7);
    Some(CpuTimes {
        busy,
        steal,
        total: busy + at(3) + at(4) + steal,
    })
}

/// `/proc/loadavg`: `0.52 0.58 0.59 2/116 1628`.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct LoadAvg {
    pub one_minute: f64,
    /// Runnable tasks right now (the reader itself is one).
    pub running: u32,
}

pub fn parse_loadavg(text: &str) -> Option<LoadAvg> {
    let mut f = text.split_whitespace();
    let one_minute = f.next()?.parse().ok()?;
    let running = f.nth(2)?.split_once('/')?.0.parse().ok()?;
    Some(LoadAvg {
        one_minute,
        running,
    })
}

/// utime + stime of `/proc/PID/stat`, in clock ticks (all the process's threads).
pub fn parse_pid_cpu_ticks(stat: &str) -> Option<u64> {
    // The command name may hold spaces and parentheses: fields start after the last ')'.
    let (_, after) = stat.rsplit_once(')')?;
    let f: Vec<&str> = after.split_whitespace().collect();
    // After the name: state(3) ... utime(14) stime(15), i.e. indices 11 and 12 here.
    let utime: u64 = f.get(11)?.parse().ok()?;
    let stime: u64 = f.get(12)?.parse().ok()?;
    Some(utime + stime)
}

/// A `/proc/PID/status` field in kB (`VmRSS:`, `VmHWM:`).
pub fn parse_status_kib(status: &str, field: &str) -> Option<u64> {
    status
        .lines()
        .find_map(|l| l.strip_prefix(field))
        .and_then(|v| v.split_whitespace().next()?.parse().ok())
}

/// `/proc/net/netstat` (and `snmp`): pairs of lines, names then values, each starting
/// with the same `Prefix:`. Keys are `Prefix:Name`, e.g. `TcpExt:ListenOverflows`.
pub fn parse_netstat(text: &str) -> BTreeMap<String, u64> {
    let mut out = BTreeMap::new();
    let lines: Vec<&str> = text.lines().collect();
    for pair in lines.chunks(2) {
        let [names, values] = pair else { continue };
        let (Some((p1, names)), Some((p2, values))) =
            (names.split_once(':'), values.split_once(':'))
        else {
            continue;
        };
        if p1 != p2 {
            continue;
        }
        for (n, v) in names.split_whitespace().zip(values.split_whitespace()) {
            if let Ok(v) = v.parse() {
                out.insert(format!("{p1}:{n}"), v);
            }
        }
    }
    out
}

/// The counters that say a storm saturated its accept queue or lost handshakes.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct QueueTrouble {
    pub listen_overflows: u64,
    pub syn_retransmits: u64,
}

impl QueueTrouble {
    pub fn from_netstat(counters: &BTreeMap<String, u64>) -> Self {
        let get = |k: &str| counters.get(k).copied().unwrap_or(0);
        Self {
            listen_overflows: get("TcpExt:ListenOverflows"),
            syn_retransmits: get("TcpExt:TCPSynRetrans"),
        }
    }

    pub fn since(&self, before: &Self) -> Self {
        Self {
            listen_overflows: self
                .listen_overflows
                .saturating_sub(before.listen_overflows),
            syn_retransmits: self.syn_retransmits.saturating_sub(before.syn_retransmits),
        }
    }

    pub fn any(&self) -> bool {
        self.listen_overflows > 0 || self.syn_retransmits > 0
    }
}

/// `usage_usec` of a cgroup v2 `cpu.stat` (present without the cpu controller).
pub fn parse_cpu_stat_usage_usec(text: &str) -> Option<u64> {
    text.lines()
        .find_map(|l| l.strip_prefix("usage_usec "))
        .and_then(|v| v.trim().parse().ok())
}

/// Where cgroup v2 is mounted: `/sys/fs/cgroup` on a unified system, often
/// `/sys/fs/cgroup/unified` on a hybrid one (this project's VMs).
pub fn cgroup2_mount(mounts: &str) -> Option<PathBuf> {
    let points: Vec<&str> = mounts
        .lines()
        .filter_map(|l| {
            let f: Vec<&str> = l.split_whitespace().collect();
            (f.get(2) == Some(&"cgroup2"))
                .then(|| f.get(1).copied())
                .flatten()
        })
        .collect();
    points
        .iter()
        .find(|p| **p == "/sys/fs/cgroup")
        .or_else(|| points.iter().find(|p| p.starts_with("/sys/fs/cgroup")))
        .or(points.first())
        .map(PathBuf::from)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn proc_stat_busy_steal_and_total() {
        let text = "cpu  100 5 20 800 10 1 4 7 3 0\ncpu0 50 2 10 400 5 1 2 3 0 0\nintr 1\n";
        let t = parse_proc_stat(text).expect("parses");
        assert_eq!(
            t,
            CpuTimes {
                busy: 130,
                steal: 7,
                total: 947
            }
        );
        let later = CpuTimes {
            busy: 130 + 30,
            steal: 7 + 10,
            total: 947 + 100,
        };
        let (busy, steal) = t.fractions_until(&later);
        assert!((busy - 0.3).abs() < 1e-12 && (steal - 0.1).abs() < 1e-12);
        assert_eq!(t.fractions_until(&t), (0.0, 0.0));
        assert!(parse_proc_stat("intr 1\n").is_none());
    }

    #[test]
    fn loadavg_one_minute_and_running() {
        let l = parse_loadavg("2.03 1.73 1.17 2/116 1628\n").expect("parses");
        assert_eq!(
            l,
            LoadAvg {
                one_minute: 2.03,
                running: 2
            }
        );
        assert!(parse_loadavg("2.03 1.73").is_none());
    }

    #[test]
    fn pid_stat_with_a_hostile_name() {
        // comm "a) b (c" must not shift the fields.
        let stat = "1234 (a) b (c) S 1 1234 1234 0 -1 4194560 100 0 0 0 37 5 0 0 20 0 8 0 99 0 0";
        assert_eq!(parse_pid_cpu_ticks(stat), Some(42));
        assert_eq!(parse_pid_cpu_ticks("1234 (x) S 1"), None);
    }

    #[test]
    fn rss_from_status() {
        let status = "Name:\tsockq\nVmPeak:\t 100 kB\nVmRSS:\t   34560 kB\n";
        assert_eq!(parse_status_kib(status, "VmRSS:"), Some(34560));
        assert_eq!(parse_status_kib("Name: x\n", "VmRSS:"), None);
    }

    #[test]
    fn netstat_pairs_and_trouble() {
        let text = "TcpExt: SyncookiesSent ListenOverflows ListenDrops TCPSynRetrans\n\
                    TcpExt: 0 15 15 3\n\
                    IpExt: InNoRoutes InOctets\n\
                    IpExt: 1 2000\n";
        let c = parse_netstat(text);
        assert_eq!(c.get("TcpExt:ListenOverflows"), Some(&15));
        assert_eq!(c.get("IpExt:InOctets"), Some(&2000));
        let after = QueueTrouble::from_netstat(&c);
        let before = QueueTrouble {
            listen_overflows: 10,
            syn_retransmits: 3,
        };
        let d = after.since(&before);
        assert_eq!(
            d,
            QueueTrouble {
                listen_overflows: 5,
                syn_retransmits: 0
            }
        );
        assert!(d.any());
        assert!(!QueueTrouble::default().any());
        assert!(!QueueTrouble::from_netstat(&parse_netstat("")).any());
    }

    #[test]
    fn cgroup_usage() {
        let text = "usage_usec 123456\nuser_usec 100000\nsystem_usec 23456\nnice_usec 0\n";
        assert_eq!(parse_cpu_stat_usage_usec(text), Some(123_456));
        assert_eq!(parse_cpu_stat_usage_usec("user_usec 1\n"), None);
    }

    #[test]
    fn cgroup2_on_hybrid_and_unified_systems() {
        let hybrid = "tmpfs /sys/fs/cgroup tmpfs rw 0 0\n\
                      cgroup /sys/fs/cgroup/cpu cgroup rw,cpu 0 0\n\
                      cgroup2 /sys/fs/cgroup/unified cgroup2 rw 0 0\n";
        assert_eq!(
            cgroup2_mount(hybrid),
            Some(PathBuf::from("/sys/fs/cgroup/unified"))
        );
        let unified = "cgroup2 /sys/fs/cgroup cgroup2 rw,nsdelegate 0 0\n";
        assert_eq!(
            cgroup2_mount(unified),
            Some(PathBuf::from("/sys/fs/cgroup"))
        );
        assert_eq!(cgroup2_mount("proc /proc proc rw 0 0\n"), None);
    }
}
