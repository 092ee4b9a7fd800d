//! Network namespaces of the host.
//!
//! Kernel interfaces: the nsfs links `/proc/PID/ns/net` (whose `stat -L` inode is
//! the namespace identity, `net->ns.inum`), the bind mounts `ip netns add` leaves
//! in `/run/netns/`, `/proc/thread-self/ns/net`, and `setns(2)` with
//! `CLONE_NEWNET`.
//!
//! Entering a namespace: `setns(CLONE_NEWNET)` moves only the calling thread, so
//! [`Netns::run`] does it in a short-lived helper thread and never moves the
//! caller. A socket created in there stays in that namespace for its whole life,
//! so the closure usually just opens a socket and returns it.

use std::{
    collections::BTreeMap,
    fs::File,
    io,
    os::unix::fs::MetadataExt,
    path::{Path, PathBuf},
};

use nix::sched::CloneFlags;

use super::InventoryError;
use crate::model::NetnsInode;

/// Our own (the host's, for a daemon started in it) network namespace.
pub const HOST_NETNS_PATH: &str = "/proc/self/ns/net";
/// The calling thread's network namespace.
const THREAD_NETNS_PATH: &str = "/proc/thread-self/ns/net";
/// Where `ip netns add NAME` bind-mounts named namespaces.
pub const NAMED_NETNS_DIR: &str = "/run/netns";

/// One network namespace, and the nsfs paths through which it can be opened.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Netns {
    inode: NetnsInode,
    dev: u64,
    /// Candidate paths, tried in order: the process holding the namespace may exit
    /// between the enumeration and the visit, so all known paths are kept.
    paths: Vec<PathBuf>,
}

impl Netns {
    /// The namespace `path` (an nsfs file: `/proc/PID/ns/net`, `/run/netns/NAME`)
    /// refers to.
    pub fn from_path(path: impl Into<PathBuf>) -> Result<Self, InventoryError> {
        let path = path.into();
        let meta = std::fs::metadata(&path).map_err(|source| InventoryError::Io {
            path: path.clone(),
            source,
        })?;
        Ok(Self {
            inode: meta.ino(),
            dev: meta.dev(),
            paths: vec![path],
        })
    }

    /// Our process's namespace, `/proc/self/ns/net`.
    pub fn host() -> Result<Self, InventoryError> {
        Self::from_path(HOST_NETNS_PATH)
    }

    /// The namespace inode (`NetnsInode`).
    pub fn inode(&self) -> NetnsInode {
        self.inode
    }

    /// The device of nsfs; all namespace files share it.
    pub fn dev(&self) -> u64 {
        self.dev
    }

    /// The paths through which the namespace was found, best first.
    pub fn paths(&self) -> &[PathBuf] {
        &self.paths
    }

    /// Opens the namespace file through the first path that still refers to this
    /// namespace (checked on the open descriptor, so a reused PID cannot send us
    /// into another namespace).
    pub fn open(&self) -> Result<(File, &Path), InventoryError> {
        let mut last_error = None;
        for path in &self.paths {
            let file = match File::open(path) {
                Ok(file) => file,
                Err(err) => {
                    last_error = Some((path, err));
                    continue;
                }
            };
            match file.metadata() {
                Ok(meta) if meta.ino() == self.inode && meta.dev() == self.dev => {
                    return Ok((file, path));
                }
                Ok(_) => {}
                Err(err) => last_error = Some((path, err)),
            }
        }
        match last_error {
            Some((path, source)) if !is_vanished_io(&source) => Err(InventoryError::Io {
                path: path.clone(),
                source,
            }),
            _ => Err(InventoryError::NetnsGone { netns: self.inode }),
        }
    }

    /// Runs `f` with the calling thread's view of the network being this namespace:
    /// directly when the caller is already in it, else in a helper thread that
    /// `setns`es into it first. Sockets `f` creates belong to this namespace.
    pub fn run<T, F>(&self, f: F) -> Result<T, InventoryError>
    where
        T: Send,
        F: FnOnce() -> Result<T, InventoryError> + Send,
    {
        if current_thread_netns().is_ok_and(|(ino, dev)| ino == self.inode && dev == self.dev) {
            return f();
        }
        let (file, path) = self.open()?;
        let netns = self.inode;
        std::thread::scope(|scope| {
            let handle = std::thread::Builder::new()
                .name("sockq-netns".into())
                .spawn_scoped(scope, || {
                    nix::sched::setns(&file, CloneFlags::CLONE_NEWNET).map_err(|source| {
                        InventoryError::Setns {
                            netns,
                            path: path.to_path_buf(),
                            source,
                        }
                    })?;
                    f()
                })
                .map_err(|source| InventoryError::NetnsThread {
                    netns,
                    source: Some(source),
                })?;
            handle
                .join()
                .map_err(|_panic| InventoryError::NetnsThread {
                    netns,
                    source: None,
                })?
        })
    }
}

/// The calling thread's namespace (inode, nsfs device).
fn current_thread_netns() -> io::Result<(u64, u64)> {
    let meta = std::fs::metadata(THREAD_NETNS_PATH)?;
    Ok((meta.ino(), meta.dev()))
}

/// Errors meaning "the process or namespace disappeared" (or we may not look at
/// it): expected while scanning a live `/proc`, never worth more than a debug line.
pub fn is_vanished_io(error: &io::Error) -> bool {
    matches!(
        error.raw_os_error(),
        Some(libc::ENOENT | libc::ESRCH | libc::ENOTDIR)
    )
}

/// Every network namespace reachable from `/proc/*/ns/net` and `/run/netns/*`,
/// deduplicated by inode, sorted by inode. `nsfs_dev` is the device of nsfs
/// (from [`Netns::host`]); files on another device (a stale `/run/netns` entry
/// whose mount is gone) are skipped.
///
/// Processes that exit during the scan, or whose namespace we may not see (not
/// root), are skipped quietly. Only failing to list `/proc` is an error.
pub fn enumerate(nsfs_dev: u64) -> Result<Vec<Netns>, InventoryError> {
    let mut found: BTreeMap<NetnsInode, Netns> = BTreeMap::new();
    let mut add = |path: PathBuf| match std::fs::metadata(&path) {
        Ok(meta) if meta.dev() == nsfs_dev => {
            found
                .entry(meta.ino())
                .or_insert_with(|| Netns {
                    inode: meta.ino(),
                    dev: meta.dev(),
                    paths: Vec::new(),
                })
                .paths
                .push(path);
        }
        Ok(_) => tracing::debug!(path = %path.display(), "not an nsfs file, skipped"),
        Err(err) if is_vanished_io(&err) || err.raw_os_error() == Some(libc::EACCES) => {}
        Err(err) => tracing::debug!(path = %path.display(), error = %err, "cannot stat namespace"),
    };

    // Named namespaces first: their paths live as long as the namespace does.
    match std::fs::read_dir(NAMED_NETNS_DIR) {
        Ok(entries) => {
            for entry in entries.flatten() {
                add(entry.path());
            }
        }
        Err(err) if err.kind() == io::ErrorKind::NotFound => {}
        Err(err) => tracing::debug!(error = %err, "cannot list {NAMED_NETNS_DIR}"),
    }

    let proc_dir = Path::new("/proc");
    let entries = std::fs::read_dir(proc_dir).map_err(|source| InventoryError::Io {
        path: proc_dir.to_path_buf(),
        source,
    })?;
    let mut pids: Vec<u32> = entries
        .flatten()
        .filter_map(|entry| entry.file_name().to_str()?.parse().ok())
        .collect();
    pids.sort_unstable();
    for pid in pids {
        add(proc_dir.join(pid.to_string()).join("ns/net"));
    }
    Ok(found.into_values().collect())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn host_is_enumerated() {
        let host = Netns::host().expect("stat /proc/self/ns/net");
        assert_ne!(host.inode(), 0);
        let all = enumerate(host.dev()).expect("enumerate");
        assert!(all.iter().any(|ns| ns.inode() == host.inode()));
        assert!(all.windows(2).all(|w| w[0].inode() < w[1].inode()));
        assert!(all.iter().all(|ns| !ns.paths().is_empty()));
    }

    #[test]
    fn run_in_own_netns_stays_on_thread() {
        let host = Netns::host().expect("host");
        let caller = std::thread::current().id();
        let ran_on = host.run(|| Ok(std::thread::current().id())).expect("run");
        assert_eq!(ran_on, caller);
    }

    #[test]
    fn gone_namespace_is_reported_as_vanished() {
        let host = Netns::host().expect("host");
        let ghost = Netns {
            inode: host.inode(),
            dev: host.dev(),
            paths: vec![PathBuf::from("/proc/4294967294/ns/net")],
        };
        let err = ghost.open().expect_err("no such process");
        assert!(err.is_vanished(), "{err:?}");
    }

    #[test]
    fn setns_moves_only_the_helper_thread() {
        if !nix::unistd::geteuid().is_root() {
            eprintln!("setns_moves_only_the_helper_thread: skipped, needs root");
            return;
        }
        // A fresh namespace held by a child thread that unshared it.
        let (tx, rx) = std::sync::mpsc::channel();
        let (done_tx, done_rx) = std::sync::mpsc::channel::<()>();
        let holder = std::thread::spawn(move || {
            nix::sched::unshare(CloneFlags::CLONE_NEWNET).expect("unshare");
            let path = PathBuf::from(format!("/proc/self/task/{}/ns/net", nix::unistd::gettid()));
            tx.send(Netns::from_path(path).expect("stat new netns"))
                .expect("send");
            let _ = done_rx.recv();
        });
        let other = rx.recv().expect("recv");
        let host = Netns::host().expect("host");
        assert_ne!(other.inode(), host.inode());
        let seen = other
            .run(|| {
                let (ino, _) = current_thread_netns().map_err(|source| InventoryError::Io {
                    path: THREAD_NETNS_PATH.into(),
                    source,
                })?;
                Ok(ino)
            })
            .expect("run in other netns");
        assert_eq!(seen, other.inode());
        assert_eq!(current_thread_netns().expect("self").0, host.inode());
        drop(done_tx);
        holder.join().expect("holder");
    }
}
