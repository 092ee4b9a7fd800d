//! Which processes hold a socket.
//!
//! Kernel interface: procfs, through the `procfs` crate. Each `/proc/PID/fd/N` is a
//! magic symlink whose target reads `socket:[INODE]` for a socket
//! (`FDTarget::Socket`); `/proc/PID/comm` is the task name (at most 15 bytes, chosen
//! by the process). Only thread-group leaders (`/proc/PID`, not `/proc/PID/task/TID`)
//! are scanned: threads share their process's descriptor table. Processes and
//! descriptors come and go during the scan; those are skipped quietly, as are
//! processes we may not inspect (not root).
//!
//! Only processes visible in our `/proc` (our PID namespace) can be found.

use std::{
    collections::{HashMap, HashSet},
    path::Path,
    sync::Arc,
};

use procfs::process::{FDTarget, Process};

use super::process::Users;
use crate::model::Owner;

/// The owners of each socket inode of `wanted` that some process holds, sorted by
/// pid, one entry per process. Inodes nobody holds (or only processes we cannot
/// see) are absent from the map. The owners of one process share its command line
/// and cgroup path.
pub fn socket_owners(wanted: &HashSet<u64>) -> HashMap<u64, Vec<Owner>> {
    socket_owners_in(Path::new("/proc"), wanted)
}

/// [`socket_owners`] over another procfs mount (or a fake tree, for tests).
pub fn socket_owners_in(proc_root: &Path, wanted: &HashSet<u64>) -> HashMap<u64, Vec<Owner>> {
    let mut owners: HashMap<u64, Vec<Owner>> = HashMap::new();
    if wanted.is_empty() {
        return owners;
    }
    let processes = match procfs::process::all_processes_with_root(proc_root) {
        Ok(processes) => processes,
        Err(err) => {
            tracing::debug!(path = %proc_root.display(), error = %err, "cannot list processes");
            return owners;
        }
    };
    let users = Users::load();
    // Each `Process` holds a descriptor: read what is needed and drop it before
    // opening the next.
    let mut found: Vec<(Owner, Vec<u64>)> = processes
        .flatten() // an error: it exited between the listing and the open
        .filter_map(|process| {
            let pid = u32::try_from(process.pid).ok()?;
            let held = held_sockets(&process, wanted);
            (!held.is_empty()).then(|| (owner(&process, pid, &users), held))
        })
        .collect();
    found.sort_unstable_by_key(|(owner, _)| owner.pid);
    for (owner, held) in found {
        for inode in held {
            // Sorted by pid, one entry per process: every list stays sorted and free
            // of duplicates. The clones share the long strings.
            owners.entry(inode).or_default().push(owner.clone());
        }
    }
    owners
}

/// The inodes of `wanted` among the sockets `process` holds, sorted, once each.
fn held_sockets(process: &Process, wanted: &HashSet<u64>) -> Vec<u64> {
    let Ok(fds) = process.fd() else {
        return Vec::new(); // exited, a zombie, or not ours to look at
    };
    let mut held: Vec<u64> = fds
        .flatten()
        .filter_map(|fd| match fd.target {
            FDTarget::Socket(inode) if wanted.contains(&inode) => Some(inode),
            _ => None,
        })
        .collect();
    held.sort_unstable();
    held.dedup();
    held
}

fn owner(process: &Process, pid: u32, users: &Users) -> Owner {
    let details = super::process::read_details(process, users);
    Owner {
        pid,
        comm: super::process::read_comm(process).unwrap_or_default(),
        cmdline: Arc::from(details.cmdline),
        user: details.user,
        cgroup: Arc::from(details.cgroup),
        container: details.container,
    }
}

#[cfg(test)]
mod tests {
    use std::net::TcpListener;
    use std::os::unix::fs::MetadataExt;

    use super::super::process::fake::FakeProc;
    use super::*;

    fn pids(owners: &[Owner]) -> Vec<u32> {
        owners.iter().map(|o| o.pid).collect()
    }

    #[test]
    fn socket_links() {
        // Only `socket:[INODE]` targets with a valid inode count.
        let tree = FakeProc::new("socket-links");
        tree.fd(100, 3, "socket:[12345]");
        tree.fd(200, 3, "socket:[]");
        tree.fd(200, 4, "pipe:[12345]");
        tree.fd(200, 5, "/dev/null");
        tree.fd(200, 6, "socket:[99999999999999999999999]");
        let owners = socket_owners_in(&tree.root, &HashSet::from([12345]));
        assert_eq!(owners.len(), 1, "{owners:?}");
        assert_eq!(pids(&owners[&12345]), [100]);
    }

    #[test]
    fn fake_tree_owners_sorted_with_hostile_names() {
        let tree = FakeProc::new("owners");
        for pid in [301, 300, 7] {
            tree.fd(pid, 3, "socket:[500]");
        }
        tree.fd(300, 4, "socket:[501]");
        tree.fd(300, 5, "socket:[500]"); // a duplicate descriptor counts once
        tree.file(300, "comm", b"x\xff) (y\n");
        tree.file(300, "cmdline", b"srv\0-p\0\xfe\0");
        tree.file(300, "cgroup", b"0::/system.slice/srv.service\n");
        // Listed, but no descriptor table to read (a zombie, or gone): skipped.
        std::fs::create_dir_all(tree.root.join("400")).expect("mkdir");
        std::fs::create_dir_all(tree.root.join("self/fd")).expect("mkdir");
        let owners = socket_owners_in(&tree.root, &HashSet::from([500, 501, 502]));
        assert_eq!(owners.len(), 2, "{owners:?}");
        assert_eq!(pids(&owners[&500]), [7, 300, 301]);
        assert_eq!(pids(&owners[&501]), [300]);
        let o = &owners[&501][0];
        assert_eq!(o.comm, "x\u{fffd}) (y");
        assert_eq!(&*o.cmdline, "srv -p \u{fffd}");
        assert_eq!(&*o.cgroup, "/system.slice/srv.service");
        // A process whose other files are missing is still an owner, with empty
        // details.
        assert_eq!(owners[&500][0], Owner::new(7, ""));
    }

    #[test]
    fn one_process_with_a_huge_command_line_and_many_sockets() {
        let tree = FakeProc::new("huge-cmdline");
        let mut cmdline = b"java\0-jar\0".to_vec();
        cmdline.resize(4 << 20, b'a');
        tree.file(42, "cmdline", &cmdline);
        tree.file(42, "cgroup", b"0::/kubepods.slice/pod.slice\n");
        let inodes: HashSet<u64> = (10_000..11_000).collect();
        for (fd, inode) in (3..).zip(&inodes) {
            tree.fd(42, fd, &format!("socket:[{inode}]"));
        }
        let owners = socket_owners_in(&tree.root, &inodes);
        assert_eq!(owners.len(), inodes.len());
        let first = &owners[&10_000][0];
        assert!(first.cmdline.starts_with("java -jar aaa"));
        assert!(first.cmdline.ends_with('…'), "a cut command line is marked");
        assert_eq!(first.cmdline.len(), Owner::CMDLINE_CAP + '…'.len_utf8());
        for found in owners.values() {
            assert_eq!(pids(found), [42]);
            assert!(
                Arc::ptr_eq(&found[0].cmdline, &first.cmdline),
                "cmdline copied"
            );
            assert!(
                Arc::ptr_eq(&found[0].cgroup, &first.cgroup),
                "cgroup copied"
            );
        }
        assert_eq!(Arc::strong_count(&first.cmdline), inodes.len());
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
