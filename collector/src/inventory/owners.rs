//! Which processes hold a socket.
//!
//! Kernel interface: procfs. Each `/proc/PID/fd/N` is a magic symlink whose target
//! reads `socket:[INODE]` for a socket; `/proc/PID/comm` is the task name (at most
//! 15 bytes, chosen by the process). Only thread-group leaders (`/proc/PID`, not
//! `/proc/PID/task/TID`) are scanned: threads share their process's descriptor
//! table. Processes and descriptors come and go during the scan; those are skipped
//! quietly, as are processes we may not inspect (not root).
//!
//! Only processes visible in our `/proc` (our PID namespace) can be found.

use std::{
    collections::{HashMap, HashSet},
    ffi::OsStr,
    os::unix::ffi::OsStrExt,
    path::Path,
};

use crate::model::Owner;

/// The owners of each socket inode of `wanted` that some process holds, sorted by
/// pid, one entry per process. Inodes nobody holds (or only processes we cannot
/// see) are absent from the map.
pub fn socket_owners(wanted: &HashSet<u64>) -> HashMap<u64, Vec<Owner>> {
    socket_owners_in(Path::new("/proc"), wanted)
}

/// [`socket_owners`] over another procfs mount (or a fake tree, for tests).
pub fn socket_owners_in(proc_root: &Path, wanted: &HashSet<u64>) -> HashMap<u64, Vec<Owner>> {
    let mut owners: HashMap<u64, Vec<Owner>> = HashMap::new();
    if wanted.is_empty() {
        return owners;
    }
    let entries = match std::fs::read_dir(proc_root) {
        Ok(entries) => entries,
        Err(err) => {
            tracing::debug!(path = %proc_root.display(), error = %err, "cannot list processes");
            return owners;
        }
    };
    let mut pids: Vec<u32> = entries
        .flatten()
        .filter_map(|entry| entry.file_name().to_str()?.parse().ok())
        .collect();
    pids.sort_unstable();
    let users = super::process::Users::load();

    for pid in pids {
        let process_dir = proc_root.join(pid.to_string());
        let Ok(fds) = std::fs::read_dir(process_dir.join("fd")) else {
            continue; // exited, a zombie, or not ours to look at
        };
        let mut held: Vec<u64> = fds
            .flatten()
            .filter_map(|fd| std::fs::read_link(fd.path()).ok())
            .filter_map(|target| parse_socket_link(target.as_os_str()))
            .filter(|inode| wanted.contains(inode))
            .collect();
        if held.is_empty() {
            continue;
        }
        held.sort_unstable();
        held.dedup();
        let details = super::process::read_details(proc_root, pid, &users);
        let owner = Owner {
            pid,
            comm: super::process::read_comm(&process_dir).unwrap_or_default(),
            cmdline: details.cmdline,
            user: details.user,
            cgroup: details.cgroup,
            container: details.container,
        };
        for inode in held {
            // Pids are visited in increasing order, once each: every list stays
            // sorted by pid and free of duplicates.
            owners.entry(inode).or_default().push(owner.clone());
        }
    }
    owners
}

/// The inode in a `socket:[INODE]` link target.
pub fn parse_socket_link(target: &OsStr) -> Option<u64> {
    let digits = target
        .as_bytes()
        .strip_prefix(b"socket:[")?
        .strip_suffix(b"]")?;
    if digits.is_empty() || !digits.iter().all(u8::is_ascii_digit) {
        return None;
    }
    std::str::from_utf8(digits).ok()?.parse().ok()
}

#[cfg(test)]
mod tests {
    use std::net::TcpListener;
    use std::os::unix::fs::MetadataExt;

    use super::*;

    #[test]
    fn socket_links() {
        assert_eq!(parse_socket_link(OsStr::new("socket:[12345]")), Some(12345));
        assert_eq!(parse_socket_link(OsStr::new("socket:[]")), None);
        assert_eq!(parse_socket_link(OsStr::new("socket:[+1]")), None);
        assert_eq!(parse_socket_link(OsStr::new("pipe:[12345]")), None);
        assert_eq!(parse_socket_link(OsStr::new("/dev/null")), None);
        assert_eq!(
            parse_socket_link(OsStr::new("socket:[99999999999999999999999]")),
            None
        );
    }

    #[test]
    fn finds_our_own_socket() {
        let socket = TcpListener::bind(("127.0.0.1", 0)).expect("bind");
        // The inode of a socket is that of its descriptor's file.
        let fd_path = format!("/proc/self/fd/{}", std::os::fd::AsRawFd::as_raw_fd(&socket));
        let inode = std::fs::metadata(fd_path).expect("stat fd").ino();
        let owners = socket_owners(&HashSet::from([inode]));
        let ours = owners.get(&inode).expect("our socket has owners");
        assert_eq!(ours.len(), 1);
        assert_eq!(ours[0].pid, std::process::id());
        assert!(!ours[0].comm.is_empty());
        assert!(socket_owners(&HashSet::new()).is_empty());
    }

    #[test]
    fn missing_proc_root_is_empty() {
        let owners = socket_owners_in(Path::new("/nonexistent-proc"), &HashSet::from([1]));
        assert!(owners.is_empty());
    }
}
