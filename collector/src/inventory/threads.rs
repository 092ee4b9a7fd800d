//! Threads and processes by id: name, scheduler state and wait channel, read from
//! procfs each poll for the threads the probes saw accepting.
//!
//! Kernel interface: `/proc/PID/task/TID/{comm,stat,wchan}` and `/proc/PID/comm`,
//! through the `procfs` crate. Its `stat` parser finds the state after the *last*
//! `)`, so a comm holding parentheses or spaces cannot shift it, and replaces
//! invalid UTF-8 instead of failing.

use std::path::Path;

use procfs::process::Process;

use super::process::read_comm;

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
    // A task directory has the files of a process directory, so it is opened as one:
    // procfs's `Task` has no `wchan`. The path keeps the check that `tid` is a
    // thread of `pid`.
    let Ok(task) = Process::new_with_root(dir) else {
        return ThreadDetails::default();
    };
    ThreadDetails {
        comm: read_comm(&task).unwrap_or_default(),
        state: task
            .stat()
            .map(|stat| stat.state.to_string())
            .unwrap_or_default(),
        wchan: task.wchan().ok().filter(|w| w != "0").unwrap_or_default(),
    }
}

/// Whether thread `tid` of process `pid` still exists.
pub fn exists(pid: u32, tid: u32) -> bool {
    Path::new("/proc")
        .join(pid.to_string())
        .join("task")
        .join(tid.to_string())
        .exists()
}

/// The working directory of a live process (`/proc/PID/cwd`), as raw bytes: what a
/// relative Unix socket path it connects to is resolved against.
pub fn cwd(pid: u32) -> Option<Vec<u8>> {
    use std::os::unix::ffi::OsStringExt as _;
    if pid == 0 {
        return None;
    }
    let link = std::fs::read_link(Path::new("/proc").join(pid.to_string()).join("cwd")).ok()?;
    Some(link.into_os_string().into_vec())
}

/// `/proc/PID/comm` of a live process.
pub fn process_comm(pid: u32) -> Option<String> {
    if pid == 0 {
        return None;
    }
    read_comm(&Process::new(i32::try_from(pid).ok()?).ok()?)
}

#[cfg(test)]
mod tests {
    use procfs::{FromRead as _, process::Stat};

    use super::*;

    /// The state procfs reads from a `stat` line whose comm is `comm`.
    fn state_after(comm: &[u8], state: &str) -> Option<char> {
        let mut line = b"42 (".to_vec();
        line.extend_from_slice(comm);
        line.extend_from_slice(b") ");
        line.extend_from_slice(state.as_bytes());
        // The fields of a 6.x kernel after the state, from `/proc/self/stat`.
        line.extend_from_slice(
            b" 1 2 3 0 -1 4194304 100 0 0 0 0 0 0 0 20 0 1 0 101112 2998272 412 \
              18446744073709551615 94100858355712 94100858379817 140727224950928 0 0 0 0 0 \
              0 0 0 0 17 1 0 0 0 0 0 94100858395664 94100858397280 94101512196096 \
              140727224953546 140727224953574 140727224953574 140727224954858 0\n",
        );
        Stat::from_read(line.as_slice()).ok().map(|stat| stat.state)
    }

    #[test]
    fn state_after_a_hostile_comm() {
        assert_eq!(state_after(b"a) b", "D"), Some('D'));
        assert_eq!(state_after(b"x", "S"), Some('S'));
        assert_eq!(state_after(b"x\xff) (\ny", "R"), Some('R'));
        assert_eq!(Stat::from_read(&b"garbage"[..]).ok().map(|s| s.state), None);
    }

    #[test]
    fn our_own_thread() {
        let pid = std::process::id();
        let tid = u32::try_from(nix::unistd::gettid().as_raw()).expect("tid");
        let details = thread(pid, tid);
        assert_eq!(details.state, "R", "{details:?}");
        assert!(!details.comm.is_empty(), "{details:?}");
        assert_eq!(process_comm(pid).map(|c| c.is_empty()), Some(false));
        assert_eq!(thread(pid, u32::MAX), ThreadDetails::default());
        assert_eq!(process_comm(0), None);
    }
}
