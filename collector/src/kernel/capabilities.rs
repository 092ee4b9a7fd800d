//! What sockq needs from the kernel's permission model, checked up front so a missing
//! privilege is one clear line rather than an obscure EPERM later.
//!
//! Capabilities come from `CapEff` in `/proc/self/status` (capabilities(7)).
//!
//! # Who holds what, thread by thread
//!
//! Capabilities belong to threads, not processes: `capset(2)` changes the calling
//! thread's sets only, and a new thread starts with a copy of its creator's.
//! `sockq run` uses that:
//!
//! - the main thread starts with whatever it was given, binds, loads and attaches
//!   the probes, then [`drop_after_attach`] leaves it (effective and permitted)
//!   only [`KEPT_AFTER_ATTACH`], empties its bounding set of the rest when it may
//!   (`CAP_SETPCAP`), and sets `no_new_privs`. Polling mode (no probes) drops the
//!   same way;
//! - the threads created after that inherit those sets: the poller's tokio runtime,
//!   its blocking pool (where the inventory runs and `setns`es into each network
//!   namespace, `CAP_SYS_ADMIN`, and reads other processes' `/proc/PID/fd`,
//!   `CAP_SYS_PTRACE` and `CAP_DAC_READ_SEARCH`), and the `sockq-netns` helpers
//!   those spawn;
//! - the HTTP server runs on a runtime of its own whose threads (`sockq-http`,
//!   workers and blocking pool alike) call [`drop_all_on_this_thread`] as they
//!   start, before running any task: no effective nor permitted capability, so
//!   nothing a client sends runs with a privilege, and those threads can never
//!   take one back. Their bounding set is the main thread's (an emptied bounding
//!   set only matters at `execve`, which sockq never calls, and `no_new_privs`
//!   holds).

/// A capability sockq uses, and what for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Capability {
    pub name: &'static str,
    pub bit: u32,
    pub why: &'static str,
}

pub const CAP_DAC_READ_SEARCH: Capability = Capability {
    name: "CAP_DAC_READ_SEARCH",
    bit: 2,
    why: "read other users' /proc/PID/fd to find listener owners",
};
pub const CAP_SYS_PTRACE: Capability = Capability {
    name: "CAP_SYS_PTRACE",
    bit: 19,
    why: "read other processes' /proc/PID/fd and /proc/PID/ns/net",
};
pub const CAP_SYS_ADMIN: Capability = Capability {
    name: "CAP_SYS_ADMIN",
    bit: 21,
    why: "enter every network namespace (setns) to list its listeners, mount tracefs",
};
pub const CAP_PERFMON: Capability = Capability {
    name: "CAP_PERFMON",
    bit: 38,
    why: "attach tracing eBPF programs",
};
pub const CAP_BPF: Capability = Capability {
    name: "CAP_BPF",
    bit: 39,
    why: "load eBPF programs and maps",
};

/// Everything `sockq run` needs. (`CAP_SYS_ADMIN` also covers BPF and PERFMON on
/// kernels older than 5.8; requiring all of them keeps the message simple.)
pub const FOR_RUN: [Capability; 5] = [
    CAP_BPF,
    CAP_PERFMON,
    CAP_SYS_ADMIN,
    CAP_SYS_PTRACE,
    CAP_DAC_READ_SEARCH,
];

/// The effective capability set of this process.
pub fn effective() -> Result<u64, std::io::Error> {
    let status = std::fs::read_to_string("/proc/self/status")?;
    parse_cap_eff(&status).ok_or_else(|| {
        std::io::Error::new(
            std::io::ErrorKind::InvalidData,
            "no parsable CapEff line in /proc/self/status",
        )
    })
}

/// Parses the `CapEff:` hex mask out of a `/proc/PID/status` text.
pub fn parse_cap_eff(status: &str) -> Option<u64> {
    status
        .lines()
        .find_map(|line| line.strip_prefix("CapEff:"))
        .and_then(|hex| u64::from_str_radix(hex.trim(), 16).ok())
}

/// The capabilities of `needed` missing from the mask `effective`.
pub fn missing(effective: u64, needed: &[Capability]) -> Vec<Capability> {
    needed
        .iter()
        .copied()
        .filter(|c| effective & (1u64 << c.bit) == 0)
        .collect()
}

/// One line naming what is missing, or `None` when everything is there.
pub fn check(needed: &[Capability]) -> Option<String> {
    let eff = match effective() {
        Ok(eff) => eff,
        Err(e) => return Some(format!("cannot read this process's capabilities: {e}")),
    };
    let missing = missing(eff, needed);
    if missing.is_empty() {
        return None;
    }
    let names: Vec<&str> = missing.iter().map(|c| c.name).collect();
    let root = if nix::unistd::geteuid().is_root() {
        "running as root but"
    } else {
        "not running as root:"
    };
    Some(format!(
        "sockq needs root privileges; {root} missing {} (run it with sudo, or grant these \
         capabilities; `sockq doctor` explains each)",
        names.join(", ")
    ))
}

/// What the daemon keeps once its probes are attached: the inventory still enters
/// namespaces (setns: `CAP_SYS_ADMIN`) and reads other processes' `/proc/PID/fd`
/// and `/proc/PID/ns/net` (`CAP_SYS_PTRACE`, `CAP_DAC_READ_SEARCH`). Loading and
/// attaching programs (`CAP_BPF`, `CAP_PERFMON`) is done by then, and reading the
/// maps through their file descriptors needs no capability.
pub const KEPT_AFTER_ATTACH: [Capability; 3] = [CAP_SYS_ADMIN, CAP_SYS_PTRACE, CAP_DAC_READ_SEARCH];

/// Drops every capability but [`KEPT_AFTER_ATTACH`] from the calling thread's
/// effective, permitted, inheritable and ambient sets, from its bounding set too
/// when it holds `CAP_SETPCAP` (dropping from the bounding set needs it; a
/// container or systemd unit that grants only what sockq lists does not), and sets
/// `no_new_privs`. Capabilities are per thread: call it before starting any other.
/// Returns the names of the capabilities kept. Used after attaching the probes and
/// in polling mode alike.
pub fn drop_after_attach() -> Result<Vec<&'static str>, String> {
    use caps::{CapSet, CapsHashSet};
    let keep: CapsHashSet = KEPT_AFTER_ATTACH
        .iter()
        .filter_map(|c| c.name.parse::<caps::Capability>().ok())
        .collect();
    let err = |what: &str, e: caps::errors::CapsError| format!("{what}: {e}");
    // The bounding set first: dropping from it needs CAP_SETPCAP, which goes next.
    if caps::has_cap(None, CapSet::Effective, caps::Capability::CAP_SETPCAP).unwrap_or(false) {
        for cap in caps::all() {
            if !keep.contains(&cap) && caps::has_cap(None, CapSet::Bounding, cap).unwrap_or(false) {
                caps::drop(None, CapSet::Bounding, cap).map_err(|e| err("bounding set", e))?;
            }
        }
    }
    caps::clear(None, CapSet::Ambient).map_err(|e| err("ambient set", e))?;
    caps::clear(None, CapSet::Inheritable).map_err(|e| err("inheritable set", e))?;
    let permitted = caps::read(None, CapSet::Permitted).map_err(|e| err("permitted set", e))?;
    let kept: CapsHashSet = keep.intersection(&permitted).copied().collect();
    caps::set(None, CapSet::Effective, &kept).map_err(|e| err("effective set", e))?;
    caps::set(None, CapSet::Permitted, &kept).map_err(|e| err("permitted set", e))?;
    nix::sys::prctl::set_no_new_privs().map_err(|e| format!("no_new_privs: {e}"))?;
    Ok(KEPT_AFTER_ATTACH
        .iter()
        .filter(|c| {
            c.name
                .parse::<caps::Capability>()
                .is_ok_and(|cap| kept.contains(&cap))
        })
        .map(|c| c.name)
        .collect())
}

/// Empties the calling thread's effective, permitted, inheritable and ambient
/// sets (only this thread's: see the module documentation). Lowering never needs
/// a privilege, so an error here means the kernel refused something unexpected.
pub fn drop_all_on_this_thread() -> Result<(), String> {
    use caps::CapSet;
    for (set, name) in [
        (CapSet::Ambient, "ambient"),
        (CapSet::Inheritable, "inheritable"),
        (CapSet::Effective, "effective"),
        (CapSet::Permitted, "permitted"),
    ] {
        caps::clear(None, set).map_err(|e| format!("{name} set: {e}"))?;
    }
    Ok(())
}

/// This thread's effective set, from `/proc/thread-self/status`.
pub fn effective_of_this_thread() -> Result<u64, std::io::Error> {
    let status = std::fs::read_to_string("/proc/thread-self/status")?;
    parse_cap_eff(&status).ok_or_else(|| {
        std::io::Error::new(
            std::io::ErrorKind::InvalidData,
            "no parsable CapEff line in /proc/thread-self/status",
        )
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn dropping_on_one_thread_leaves_the_others() {
        let before = effective_of_this_thread().expect("CapEff");
        let on_thread = std::thread::spawn(|| {
            drop_all_on_this_thread().expect("drop");
            effective_of_this_thread().expect("CapEff")
        })
        .join()
        .expect("thread");
        assert_eq!(on_thread, 0);
        assert_eq!(effective_of_this_thread().expect("CapEff"), before);
    }

    const STATUS: &str = "Name:\tcat\nCapInh:\t0000000000000000\nCapPrm:\t000001ffffffffff\n\
                          CapEff:\t000001fffeffffff\nCapBnd:\t000001ffffffffff\n";

    #[test]
    fn parses_cap_eff() {
        assert_eq!(parse_cap_eff(STATUS), Some(0x0000_01ff_feff_ffff));
        assert_eq!(parse_cap_eff("CapEff:\tzz\n"), None);
        assert_eq!(parse_cap_eff(""), None);
    }

    #[test]
    fn names_what_is_missing() {
        // Everything but CAP_SYS_RESOURCE (bit 24): nothing sockq needs is missing.
        assert!(missing(0x0000_01ff_feff_ffff, &FOR_RUN).is_empty());
        // An unprivileged user: all missing, in order.
        let names: Vec<_> = missing(0, &FOR_RUN).iter().map(|c| c.name).collect();
        assert_eq!(
            names,
            [
                "CAP_BPF",
                "CAP_PERFMON",
                "CAP_SYS_ADMIN",
                "CAP_SYS_PTRACE",
                "CAP_DAC_READ_SEARCH"
            ]
        );
        // Only CAP_BPF missing.
        let only_bpf = !(1u64 << 39) & 0x0000_01ff_ffff_ffff;
        let names: Vec<_> = missing(only_bpf, &FOR_RUN).iter().map(|c| c.name).collect();
        assert_eq!(names, ["CAP_BPF"]);
    }
}
