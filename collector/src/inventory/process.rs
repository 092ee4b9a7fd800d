//! What a listener owner is, beyond its pid and comm: command line, user, cgroup and
//! container.
//!
//! Kernel interface: procfs. `/proc/PID/cmdline` (NUL-separated arguments, chosen by
//! the process), `/proc/PID/status` (`Uid:` real, effective, ...), `/proc/PID/cgroup`
//! (`0::/path` on cgroup v2, `N:controllers:/path` lines on v1). User names come from
//! `/etc/passwd` (numeric when absent). Container ids are recognised in cgroup paths
//! of the common runtimes (docker, containerd/CRI, CRI-O, podman, Kubernetes pods).

use std::{collections::HashMap, path::Path};

/// Details of one process; empty strings where procfs did not say (the process
/// exited, or we may not look).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ProcessDetails {
    /// Arguments joined by spaces; attacker-controlled.
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

/// Reads `pid`'s details under `proc_root`.
pub fn read_details(proc_root: &Path, pid: u32, users: &Users) -> ProcessDetails {
    let dir = proc_root.join(pid.to_string());
    let cmdline = std::fs::read(dir.join("cmdline"))
        .map(|raw| cmdline_from_bytes(&raw))
        .unwrap_or_default();
    let uid = std::fs::read_to_string(dir.join("status"))
        .ok()
        .and_then(|s| effective_uid(&s));
    let cgroup = std::fs::read_to_string(dir.join("cgroup"))
        .map(|s| cgroup_path(&s))
        .unwrap_or_default();
    ProcessDetails {
        cmdline,
        uid,
        user: uid.map(|u| users.name(u)).unwrap_or_default(),
        container: container_id(&cgroup).unwrap_or_default(),
        cgroup,
    }
}

/// `comm` of the process or thread directory `dir` (`/proc/PID` or
/// `/proc/PID/task/TID`) without its trailing newline; non-UTF-8 bytes are replaced
/// (U+FFFD). `None` once it has exited. The one place sockq reads a task's name.
pub fn read_comm(dir: &Path) -> Option<String> {
    std::fs::read(dir.join("comm"))
        .ok()
        .map(|bytes| comm_from_bytes(&bytes))
}

/// A `comm` file's content: the name without its trailing newline, invalid UTF-8
/// replaced.
pub fn comm_from_bytes(bytes: &[u8]) -> String {
    let bytes = bytes.strip_suffix(b"\n").unwrap_or(bytes);
    String::from_utf8_lossy(bytes).into_owned()
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

/// The effective uid from a `/proc/PID/status` text (`Uid: real effective ...`).
pub fn effective_uid(status: &str) -> Option<u32> {
    status
        .lines()
        .find_map(|l| l.strip_prefix("Uid:"))
        .and_then(|ids| ids.split_whitespace().nth(1)?.parse().ok())
}

/// The cgroup path from `/proc/PID/cgroup`: the v2 entry (`0::/path`) unless it is
/// the root while a v1 hierarchy says more.
pub fn cgroup_path(text: &str) -> String {
    let mut v2 = None;
    let mut v1 = None;
    for line in text.lines() {
        let mut parts = line.splitn(3, ':');
        let (Some(id), Some(controllers), Some(path)) = (parts.next(), parts.next(), parts.next())
        else {
            continue;
        };
        if id == "0" && controllers.is_empty() {
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

#[cfg(test)]
mod tests {
    use super::*;

    const ID: &str = "3f4e5d6c7b8a99887766554433221100ffeeddccbbaa00112233445566778899";

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
            cgroup_path("0::/system.slice/nginx.service\n"),
            "/system.slice/nginx.service"
        );
        assert_eq!(
            cgroup_path("4:memory:/process_api/3188\n1:cpu:/\n0::/\n"),
            "/process_api/3188"
        );
        assert_eq!(cgroup_path("0::/\n"), "/");
        assert_eq!(cgroup_path("garbage"), "");
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
        let d = read_details(Path::new("/proc"), std::process::id(), &Users::load());
        assert!(!d.cmdline.is_empty());
        // SAFETY: geteuid has no preconditions.
        assert_eq!(d.uid, Some(unsafe { libc::geteuid() }));
        assert!(!d.cgroup.is_empty());
    }
}
