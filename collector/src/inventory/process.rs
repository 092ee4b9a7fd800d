//! What a listener owner is, beyond its pid and comm: command line, user, cgroup and
//! container.
//!
//! Kernel interface: procfs, through the `procfs` crate's [`Process`], which holds a
//! descriptor of `/proc/PID` (or of `/proc/PID/task/TID`): a file read through it
//! after the process exited fails instead of describing whoever reuses the pid.
//! `/proc/PID/cgroup` (`0::/path` on cgroup v2, `N:controllers:/path` lines on v1) is
//! parsed by procfs. Three files are read by hand through the same descriptor, where
//! procfs's reader does not do what sockq needs:
//! - `comm` (the task name, chosen by the process): procfs has no reader of the file
//!   itself, only the name inside `stat` and `status`, each a second file to parse.
//! - `cmdline` (NUL-separated arguments, chosen by the process): `Process::cmdline`
//!   reads all of it (a process decides how much that is), fails on invalid UTF-8
//!   and drops empty arguments; sockq reads at most [`Owner::CMDLINE_CAP`] bytes and
//!   replaces invalid UTF-8.
//! - `status` (`Uid:` real, effective, ...): `Process::status` fails on the whole file
//!   when its `Name:` line, the raw bytes of the comm, is not UTF-8, which would lose
//!   the user of exactly the processes that pick hostile names.
//!
//! User names come from `/etc/passwd` (numeric when absent). Container ids are
//! recognised in cgroup paths of the common runtimes (docker, containerd/CRI, CRI-O,
//! podman, Kubernetes pods).

use std::{collections::HashMap, io::Read as _};

use procfs::{ProcessCGroups, process::Process};

use crate::model::Owner;

/// Details of one process; empty strings where procfs did not say (the process
/// exited, or we may not look).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ProcessDetails {
    /// Arguments joined by spaces, capped as [`Owner::cmdline`] says; attacker-controlled.
    pub cmdline: String,
    /// Effective uid.
    pub uid: Option<u32>,
    pub user: String,
    /// The process's cgroup path (v2 if present, else the first named v1 hierarchy
    /// that is not the root).
    pub cgroup: String,
    /// Short (12 hex digits) container id, when the cgroup path names one.
    pub container: String,
}

/// Reads the details of `process`.
pub fn read_details(process: &Process, users: &Users) -> ProcessDetails {
    let uid = read_effective_uid(process);
    let cgroup = process
        .cgroups()
        .map(|groups| cgroup_path(&groups))
        .unwrap_or_default();
    ProcessDetails {
        cmdline: read_cmdline(process),
        uid,
        user: uid.map(|u| users.name(u)).unwrap_or_default(),
        container: container_id(&cgroup).unwrap_or_default(),
        cgroup,
    }
}

/// `comm` of `process` (a process, or a thread opened at `/proc/PID/task/TID`)
/// without its trailing newline; non-UTF-8 bytes are replaced (U+FFFD). `None` once
/// it has exited. The one place sockq reads a task's name.
pub fn read_comm(process: &Process) -> Option<String> {
    let mut bytes = Vec::new();
    process
        .open_relative("comm")
        .ok()?
        .read_to_end(&mut bytes)
        .ok()?;
    Some(comm_from_bytes(&bytes))
}

/// A `comm` file's content: the name without its trailing newline, invalid UTF-8
/// replaced.
pub fn comm_from_bytes(bytes: &[u8]) -> String {
    let bytes = bytes.strip_suffix(b"\n").unwrap_or(bytes);
    String::from_utf8_lossy(bytes).into_owned()
}

/// The command line of `process`, capped (see [`cap_cmdline`]); empty when it
/// cannot be read.
fn read_cmdline(process: &Process) -> String {
    // Two bytes past the cap: a command line of exactly `CMDLINE_CAP` bytes comes
    // with its final NUL, so only a longer one fills the buffer (and, joined, still
    // exceeds the cap).
    let limit = u64::try_from(Owner::CMDLINE_CAP + 2).unwrap_or(u64::MAX);
    let mut raw = Vec::new();
    let read = process
        .open_relative("cmdline")
        .and_then(|file| Ok(file.take(limit).read_to_end(&mut raw)?));
    match read {
        Ok(_) => cap_cmdline(cmdline_from_bytes(&raw)),
        Err(_) => String::new(),
    }
}

/// NUL-separated arguments, joined by spaces (trailing NULs dropped); invalid UTF-8
/// replaced.
pub fn cmdline_from_bytes(raw: &[u8]) -> String {
    let trimmed = raw.strip_suffix(b"\0").unwrap_or(raw);
    trimmed
        .split(|&b| b == 0)
        .map(String::from_utf8_lossy)
        .collect::<Vec<_>>()
        .join(" ")
}

/// `cmdline` cut to at most [`Owner::CMDLINE_CAP`] bytes at a character boundary,
/// then marked with `…`, when it is longer.
pub fn cap_cmdline(mut cmdline: String) -> String {
    if cmdline.len() > Owner::CMDLINE_CAP {
        cmdline.truncate(cmdline.floor_char_boundary(Owner::CMDLINE_CAP));
        cmdline.push('…');
    }
    cmdline
}

/// The effective uid of `process`, from its `status`.
fn read_effective_uid(process: &Process) -> Option<u32> {
    // `Uid:` is among the first lines, after `Name:` (at most 64 bytes of name,
    // escaped); the `Groups:` line after it can be long.
    let mut head = Vec::new();
    process
        .open_relative("status")
        .ok()?
        .take(4096)
        .read_to_end(&mut head)
        .ok()?;
    effective_uid(&String::from_utf8_lossy(&head))
}

/// The effective uid from a `/proc/PID/status` text (`Uid: real effective ...`).
pub fn effective_uid(status: &str) -> Option<u32> {
    status
        .lines()
        .find_map(|l| l.strip_prefix("Uid:"))
        .and_then(|ids| ids.split_whitespace().nth(1)?.parse().ok())
}

/// The cgroup path of a process: the v2 entry (`0::/path`) unless it is the root
/// while a v1 hierarchy says more.
pub fn cgroup_path(groups: &ProcessCGroups) -> String {
    let mut v2 = None;
    let mut v1 = None;
    for group in groups {
        let path = group.pathname.as_str();
        if group.hierarchy == 0 && group.controllers.is_empty() {
            v2 = Some(path);
        } else if path != "/" && v1.is_none() {
            v1 = Some(path);
        }
    }
    match (v2, v1) {
        (Some(p), _) if p != "/" => p.to_owned(),
        (_, Some(p)) => p.to_owned(),
        (Some(p), None) => p.to_owned(),
        (None, None) => String::new(),
    }
}

/// A container id in a cgroup path: a 64-hex-digit segment, alone or wrapped as
/// `docker-ID.scope`, `cri-containerd-ID.scope`, `crio-ID.scope`, `libpod-ID.scope`.
/// Returns its first 12 digits, as `docker ps` shows it.
pub fn container_id(cgroup: &str) -> Option<String> {
    cgroup.split('/').rev().find_map(|segment| {
        let core = segment.strip_suffix(".scope").unwrap_or(segment);
        let id = ["docker-", "cri-containerd-", "crio-", "libpod-"]
            .iter()
            .find_map(|p| core.strip_prefix(p))
            .unwrap_or(core);
        (id.len() == 64 && id.bytes().all(|b| b.is_ascii_hexdigit())).then(|| id[..12].to_owned())
    })
}

/// uid -> user name, from `/etc/passwd`.
#[derive(Debug, Default)]
pub struct Users {
    names: HashMap<u32, String>,
}

impl Users {
    /// Reads `/etc/passwd`; an unreadable file leaves every name numeric.
    pub fn load() -> Self {
        std::fs::read_to_string("/etc/passwd")
            .map(|s| Self::parse(&s))
            .unwrap_or_default()
    }

    pub fn parse(passwd: &str) -> Self {
        let names = passwd
            .lines()
            .filter_map(|l| {
                let mut f = l.split(':');
                let name = f.next()?;
                let uid = f.nth(1)?.parse().ok()?;
                Some((uid, name.to_owned()))
            })
            .collect();
        Self { names }
    }

    /// The name of `uid`, or the number itself.
    pub fn name(&self, uid: u32) -> String {
        self.names
            .get(&uid)
            .cloned()
            .unwrap_or_else(|| uid.to_string())
    }
}

/// A fake procfs tree under the temporary directory, removed on drop.
#[cfg(test)]
pub mod fake {
    use std::path::{Path, PathBuf};

    pub struct FakeProc {
        pub root: PathBuf,
    }

    impl FakeProc {
        pub fn new(test: &str) -> Self {
            let root =
                std::env::temp_dir().join(format!("sockq-fake-proc-{test}-{}", std::process::id()));
            let _ = std::fs::remove_dir_all(&root);
            std::fs::create_dir_all(&root).expect("create the fake /proc");
            Self { root }
        }

        /// `/proc/PID`, created with an empty `fd/`.
        pub fn process(&self, pid: u32) -> PathBuf {
            let dir = self.root.join(pid.to_string());
            std::fs::create_dir_all(dir.join("fd")).expect("create a fake process");
            dir
        }

        /// Writes `/proc/PID/NAME`.
        pub fn file(&self, pid: u32, name: &str, content: &[u8]) {
            let path = self.process(pid).join(name);
            std::fs::write(&path, content).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
        }

        /// `/proc/PID/fd/FD`, a link to `target`.
        pub fn fd(&self, pid: u32, fd: u32, target: &str) {
            let link = self.process(pid).join("fd").join(fd.to_string());
            std::os::unix::fs::symlink(Path::new(target), &link)
                .unwrap_or_else(|e| panic!("{}: {e}", link.display()));
        }
    }

    impl Drop for FakeProc {
        fn drop(&mut self) {
            let _ = std::fs::remove_dir_all(&self.root);
        }
    }
}

#[cfg(test)]
mod tests {
    use procfs::FromRead as _;

    use super::{fake::FakeProc, *};

    const ID: &str = "3f4e5d6c7b8a99887766554433221100ffeeddccbbaa00112233445566778899";

    /// What `read_details` makes of a `/proc/PID/cgroup` text.
    fn cgroup_of(text: &str) -> String {
        ProcessCGroups::from_read(text.as_bytes())
            .map(|groups| cgroup_path(&groups))
            .unwrap_or_default()
    }

    #[test]
    fn comm_keeps_content() {
        assert_eq!(comm_from_bytes(b"nginx\n"), "nginx");
        assert_eq!(comm_from_bytes(b"a b\n\n"), "a b\n");
        assert_eq!(comm_from_bytes(b"x\xffy\n"), "x\u{fffd}y");
        assert_eq!(comm_from_bytes(b""), "");
    }

    #[test]
    fn container_ids_of_common_runtimes() {
        for path in [
            format!("/system.slice/docker-{ID}.scope"),
            format!("/docker/{ID}"),
            format!(
                "/kubepods.slice/kubepods-burstable.slice/kubepods-pod1.slice/cri-containerd-{ID}.scope"
            ),
            format!("/kubepods/besteffort/pod1234/{ID}"),
            format!("/machine.slice/libpod-{ID}.scope/container"),
            format!("/crio-{ID}.scope"),
        ] {
            assert_eq!(container_id(&path).as_deref(), Some(&ID[..12]), "{path}");
        }
        for path in [
            "/",
            "/user.slice/user-0.slice/session-1.scope",
            "/docker/abc",
            "",
        ] {
            assert_eq!(container_id(path), None, "{path}");
        }
    }

    #[test]
    fn cgroup_v2_then_v1() {
        assert_eq!(
            cgroup_of("0::/system.slice/nginx.service\n"),
            "/system.slice/nginx.service"
        );
        assert_eq!(
            cgroup_of("4:memory:/process_api/3188\n1:cpu:/\n0::/\n"),
            "/process_api/3188"
        );
        assert_eq!(cgroup_of("0::/\n"), "/");
        assert_eq!(cgroup_of("garbage"), "");
    }

    #[test]
    fn cmdline_uid_and_users() {
        assert_eq!(
            cmdline_from_bytes(b"nginx: master\0-g\0daemon off;\0"),
            "nginx: master -g daemon off;"
        );
        assert_eq!(cmdline_from_bytes(b"a\xffb\0"), "a\u{fffd}b");
        assert_eq!(cmdline_from_bytes(b""), "");
        assert_eq!(
            effective_uid("Name:\tx\nUid:\t1000\t33\t33\t33\n"),
            Some(33)
        );
        assert_eq!(effective_uid("Uid:\n"), None);
        let users = Users::parse(
            "root:x:0:0:root:/root:/bin/bash\nwww-data:x:33:33::/var/www:/usr/sbin/nologin\nbad line\n",
        );
        assert_eq!(users.name(33), "www-data");
        assert_eq!(users.name(4242), "4242");
    }

    #[test]
    fn reads_our_own_process() {
        let myself = Process::myself().expect("/proc/self");
        let d = read_details(&myself, &Users::load());
        assert!(!d.cmdline.is_empty());
        // SAFETY: geteuid has no preconditions.
        assert_eq!(d.uid, Some(unsafe { libc::geteuid() }));
        assert!(!d.cgroup.is_empty());
        assert!(read_comm(&myself).is_some_and(|comm| !comm.is_empty()));
    }

    #[test]
    fn long_command_lines_are_cut_and_marked() {
        let cap = Owner::CMDLINE_CAP;
        let exact = "a".repeat(cap);
        assert_eq!(cap_cmdline(exact.clone()), exact);
        let cut = cap_cmdline("a".repeat(cap + 1));
        assert_eq!(cut, format!("{exact}…"));
        // A character across the cap is dropped whole, not split.
        let wide = cap_cmdline(format!("{}é", "a".repeat(cap - 1)));
        assert_eq!(wide, format!("{}…", "a".repeat(cap - 1)));

        let tree = FakeProc::new("cmdline-cap");
        let mut at_cap = "b".repeat(cap).into_bytes();
        at_cap.push(0);
        tree.file(10, "cmdline", &at_cap);
        let mut huge = b"server\0--flag\0".to_vec();
        huge.resize(3 << 20, b'x');
        tree.file(11, "cmdline", &huge);
        let read = |pid: u32| {
            let process = Process::new_with_root(tree.root.join(pid.to_string())).expect("open");
            read_details(&process, &Users::default()).cmdline
        };
        assert_eq!(read(10), "b".repeat(cap), "exactly at the cap: kept whole");
        let capped = read(11);
        assert!(capped.starts_with("server --flag xxx"), "{}", &capped[..40]);
        assert!(capped.ends_with('…'), "a cut command line is marked");
        assert_eq!(capped.len(), cap + '…'.len_utf8());
    }

    #[test]
    fn user_survives_an_invalid_utf8_name() {
        // `status` carries the comm's raw bytes on its `Name:` line: procfs's parser
        // rejects the whole file then (the reason sockq reads `Uid:` itself).
        let real = std::fs::read_to_string("/proc/self/status").expect("status");
        let (_, after_name) = real.split_once('\n').expect("a Name: line first");
        let mut hostile = b"Name:\tx\xff)y\n".to_vec();
        hostile.extend_from_slice(after_name.as_bytes());
        assert!(procfs::process::Status::from_read(real.as_bytes()).is_ok());
        assert!(procfs::process::Status::from_read(hostile.as_slice()).is_err());

        let tree = FakeProc::new("status-utf8");
        tree.file(20, "status", &hostile);
        tree.file(20, "comm", b"x\xff)y\n");
        let process = Process::new_with_root(tree.root.join("20")).expect("open");
        let details = read_details(&process, &Users::load());
        // SAFETY: geteuid has no preconditions.
        assert_eq!(details.uid, Some(unsafe { libc::geteuid() }));
        assert_eq!(read_comm(&process).as_deref(), Some("x\u{fffd})y"));
    }

    #[test]
    fn a_process_without_files_has_empty_details() {
        let tree = FakeProc::new("empty-details");
        let dir = tree.process(30);
        let process = Process::new_with_root(dir.clone()).expect("open");
        assert_eq!(
            read_details(&process, &Users::load()),
            ProcessDetails::default()
        );
        assert_eq!(read_comm(&process), None);
        // Gone after it was opened: still empty, never an error.
        std::fs::remove_dir_all(&dir).expect("remove");
        assert_eq!(
            read_details(&process, &Users::load()),
            ProcessDetails::default()
        );
        assert_eq!(read_comm(&process), None);
    }
}
