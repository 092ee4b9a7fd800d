//! Threads and processes by id: name, scheduler state and wait channel, read from
//! procfs each poll for the threads the probes saw accepting.
//!
//! Kernel interface: `/proc/PID/task/TID/{comm,stat,wchan}` and `/proc/PID/comm`.

use std::path::Path;

/// What procfs says of one thread; empty strings once it has exited.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ThreadDetails {
    /// The thread's name; attacker-controlled.
    pub comm: String,
    /// Scheduler state letter (`R`, `S`, `D`, ...).
    pub state: String,
    /// Where it sleeps in the kernel, if it does.
    pub wchan: String,
}

/// Thread `tid` of process `pid`.
pub fn thread(pid: u32, tid: u32) -> ThreadDetails {
    let dir = Path::new("/proc")
        .join(pid.to_string())
        .join("task")
        .join(tid.to_string());
    ThreadDetails {
        comm: super::process::read_comm(&dir).unwrap_or_default(),
        state: std::fs::read_to_string(dir.join("stat"))
            .ok()
            .and_then(|s| thread_state(&s))
            .unwrap_or_default(),
        wchan: std::fs::read_to_string(dir.join("wchan"))
            .ok()
            .filter(|w| w != "0")
            .unwrap_or_default(),
    }
}

/// `/proc/PID/comm` of a live process.
pub fn process_comm(pid: u32) -> Option<String> {
    if pid == 0 {
        return None;
    }
    super::process::read_comm(&Path::new("/proc").join(pid.to_string()))
}

/// The state letter of a `/proc/PID/task/TID/stat` line (the field after the
/// parenthesised comm, which may itself contain spaces and parentheses).
fn thread_state(stat: &str) -> Option<String> {
    let (_, rest) = stat.rsplit_once(')')?;
    rest.split_whitespace().next().map(str::to_owned)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn state_after_a_hostile_comm() {
        assert_eq!(thread_state("42 (a) b) D 1 2 3").as_deref(), Some("D"));
        assert_eq!(thread_state("42 (x) S 1").as_deref(), Some("S"));
        assert_eq!(thread_state("garbage"), None);
    }
}
