//! The floor: an empty program (`r0 = 0; exit`) on each hook sockq's default set
//! attached, by the same mechanism sockq used for it, so what is left between sockq
//! and the floor is the programs' own work, not the price of being called.
//!
//! The hooks are read from the kernel while `sockq run` runs (the fdinfo of each of
//! its BPF links names the link's kind and tracepoint; `bpftool perf show` covers
//! perf events without a link), so the floor follows sockq when its probe table
//! changes. The programs are
//! loaded and attached here with the bpf(2) and perf_event_open(2) syscalls, as aya
//! does: `BPF_RAW_TRACEPOINT_OPEN` for raw tracepoints; a tracepoint perf event with
//! the program set on it for classic ones. (bpftrace 0.17 has no `rawtracepoint:`
//! probes, so it cannot be the floor of a raw-tracepoint program.)

use std::{os::fd::OwnedFd, path::Path, process::Command};

use anyhow::{Context as _, Result, bail};

use super::bpf;

/// One attachment point.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub enum Hook {
    /// `raw_tp/<name>`.
    Raw(String),
    /// `tracepoint/<category>/<name>`.
    Classic { category: String, name: String },
}

impl std::fmt::Display for Hook {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::Raw(name) => write!(f, "raw_tp/{name}"),
            Self::Classic { category, name } => write!(f, "tracepoint/{category}/{name}"),
        }
    }
}

/// One attachment of a process, as `bpftool perf show` reports it.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub struct Attachment {
    /// `raw_tracepoint`, `tracepoint`, `kprobe`, ...
    pub kind: String,
    /// The tracepoint's name (or the kprobe's function).
    pub name: String,
    pub prog_id: u64,
}

/// The attachments of process `pid` in `bpftool perf show --json`, sorted, each
/// (kind, name, program) once.
pub fn attachments_of(perf_json: &str, pid: u32) -> Result<Vec<Attachment>> {
    let v: serde_json::Value = serde_json::from_str(perf_json).context("bpftool perf json")?;
    let mut out: Vec<Attachment> = v
        .as_array()
        .into_iter()
        .flatten()
        .filter(|e| e["pid"].as_u64() == Some(u64::from(pid)))
        .map(|e| Attachment {
            kind: e["fd_type"].as_str().unwrap_or_default().to_owned(),
            name: e["tracepoint"]
                .as_str()
                .or_else(|| e["func"].as_str())
                .unwrap_or_default()
                .to_owned(),
            prog_id: e["prog_id"].as_u64().unwrap_or(0),
        })
        .collect();
    out.sort();
    out.dedup();
    Ok(out)
}

/// The attachment a BPF link's `/proc/PID/fdinfo` describes (Linux 6.x prints the
/// tracepoint of raw-tracepoint and perf-event links), or `None` for another fd.
pub fn parse_link_fdinfo(fdinfo: &str) -> Option<Attachment> {
    let field = |name: &str| {
        fdinfo.lines().find_map(|l| {
            let (k, v) = l.split_once(':')?;
            (k.trim() == name).then(|| v.trim().to_owned())
        })
    };
    let prog_id = field("prog_id")?.parse().ok()?;
    let kind = match field("link_type")?.as_str() {
        "raw_tracepoint" => "raw_tracepoint".to_owned(),
        "perf" => field("event_type")?,
        other => other.to_owned(),
    };
    let name = field("tp_name").or_else(|| field("func_name"))?;
    Some(Attachment {
        kind,
        name,
        prog_id,
    })
}

/// What process `pid` has attached, now: its BPF links (from their fdinfo) and
/// the perf events it holds with a program set on them (`bpftool perf show`, for
/// kernels without perf links).
pub fn attachments(pid: u32) -> Result<Vec<Attachment>> {
    let mut found = Vec::new();
    let dir = format!("/proc/{pid}/fdinfo");
    for entry in std::fs::read_dir(&dir).with_context(|| dir.clone())? {
        if let Ok(text) = std::fs::read_to_string(entry?.path())
            && let Some(a) = parse_link_fdinfo(&text)
        {
            found.push(a);
        }
    }
    let out = Command::new("bpftool")
        .args(["perf", "show", "--json"])
        .output()
        .context("running bpftool perf show")?;
    if out.status.success() {
        found.extend(attachments_of(&String::from_utf8_lossy(&out.stdout), pid)?);
    }
    found.sort();
    found.dedup();
    Ok(found)
}

/// The hooks process `pid` attached, classic tracepoints resolved to their category
/// under `tracefs/events`.
pub fn hooks_of(pid: u32, tracefs: &Path) -> Result<Vec<Hook>> {
    let mut hooks = Vec::new();
    for a in attachments(pid)? {
        let hook = match a.kind.as_str() {
            "raw_tracepoint" => Hook::Raw(a.name),
            "tracepoint" => Hook::Classic {
                category: tracepoint_category(tracefs, &a.name)?,
                name: a.name,
            },
            other => bail!(
                "sockq attached {} as {other}: the floor has no such hook",
                a.name
            ),
        };
        hooks.push(hook);
    }
    hooks.sort();
    hooks.dedup();
    if hooks.is_empty() {
        bail!("bpftool perf show lists no attachment of pid {pid}");
    }
    Ok(hooks)
}

fn tracepoint_category(tracefs: &Path, name: &str) -> Result<String> {
    let events = tracefs.join("events");
    let mut found = Vec::new();
    for entry in std::fs::read_dir(&events).with_context(|| events.display().to_string())? {
        let entry = entry?;
        if entry.path().join(name).join("id").exists() {
            found.push(entry.file_name().to_string_lossy().into_owned());
        }
    }
    match found.as_slice() {
        [one] => Ok(one.clone()),
        [] => bail!("no tracepoint {name} under {}", events.display()),
        many => bail!("tracepoint {name} is in several categories: {many:?}"),
    }
}

/// Empty programs on every hook; dropping it closes the descriptors, which detaches.
pub struct Floor {
    programs: Vec<(Hook, OwnedFd)>,
    _attachments: Vec<OwnedFd>,
}

impl Floor {
    pub fn attach(hooks: &[Hook], tracefs: &Path) -> Result<Self> {
        let mut programs = Vec::new();
        let mut attachments = Vec::new();
        for hook in hooks {
            let (prog, attachment) = match hook {
                Hook::Raw(name) => {
                    let prog = bpf::load_empty(bpf::ProgramType::RawTracepoint, name)?;
                    let link = bpf::raw_tracepoint_open(name, &prog)?;
                    (prog, link)
                }
                Hook::Classic { category, name } => {
                    let id_path = tracefs.join("events").join(category).join(name).join("id");
                    let id: u64 = std::fs::read_to_string(&id_path)
                        .with_context(|| id_path.display().to_string())?
                        .trim()
                        .parse()
                        .context("tracepoint id")?;
                    let prog = bpf::load_empty(bpf::ProgramType::Tracepoint, name)?;
                    let event =
                        bpf::tracepoint_event(id, &prog).with_context(|| hook.to_string())?;
                    (prog, event)
                }
            };
            programs.push((hook.clone(), prog));
            attachments.push(attachment);
        }
        Ok(Self {
            programs,
            _attachments: attachments,
        })
    }

    /// Each program as an attachment (its kernel id from our own fdinfo).
    pub fn attachments(&self) -> Result<Vec<Attachment>> {
        use std::os::fd::AsRawFd as _;
        self.programs
            .iter()
            .map(|(hook, fd)| {
                let path = format!("/proc/self/fdinfo/{}", fd.as_raw_fd());
                let info = std::fs::read_to_string(&path).with_context(|| path.clone())?;
                let prog_id = info
                    .lines()
                    .find_map(|l| l.strip_prefix("prog_id:"))
                    .and_then(|v| v.trim().parse().ok())
                    .with_context(|| format!("prog_id in {path}"))?;
                let (kind, name) = match hook {
                    Hook::Raw(name) => ("raw_tracepoint", name),
                    Hook::Classic { name, .. } => ("tracepoint", name),
                };
                Ok(Attachment {
                    kind: kind.to_owned(),
                    name: name.clone(),
                    prog_id,
                })
            })
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn attachments_of_one_process_sorted_and_deduplicated() {
        let json = r#"[
            {"pid":10,"fd":7,"prog_id":3,"fd_type":"tracepoint","tracepoint":"sys_exit_accept4"},
            {"pid":10,"fd":5,"prog_id":1,"fd_type":"raw_tracepoint","tracepoint":"inet_sock_set_state"},
            {"pid":11,"fd":5,"prog_id":9,"fd_type":"raw_tracepoint","tracepoint":"sched_switch"},
            {"pid":10,"fd":9,"prog_id":1,"fd_type":"raw_tracepoint","tracepoint":"inet_sock_set_state"},
            {"pid":10,"fd":8,"prog_id":4,"fd_type":"kprobe","func":"sock_def_readable","offset":0}
        ]"#;
        let got = attachments_of(json, 10).expect("parses");
        let want = [
            ("kprobe", "sock_def_readable", 4),
            ("raw_tracepoint", "inet_sock_set_state", 1),
            ("tracepoint", "sys_exit_accept4", 3),
        ];
        let want: Vec<Attachment> = want
            .iter()
            .map(|&(kind, name, prog_id)| Attachment {
                kind: kind.to_owned(),
                name: name.to_owned(),
                prog_id,
            })
            .collect();
        assert_eq!(got, want);
        assert!(attachments_of("[]", 10).expect("parses").is_empty());
        assert!(attachments_of("not json", 10).is_err());
    }

    #[test]
    fn link_fdinfo_of_raw_and_perf_links() {
        let raw = "pos:\t0\nflags:\t02000000\nmnt_id:\t17\nino:\t1044\nlink_type:\traw_tracepoint\n\
                   link_id:\t1009\nprog_tag:\t5186fbf05ce8d627\nprog_id:\t1486\n\
                   tp_name:\tinet_sock_set_state\ncookie:\t0\n";
        assert_eq!(
            parse_link_fdinfo(raw),
            Some(Attachment {
                kind: "raw_tracepoint".into(),
                name: "inet_sock_set_state".into(),
                prog_id: 1486
            })
        );
        let perf = "link_type:\tperf\nlink_id:\t1050\nprog_tag:\t8258f03039d59709\n\
                    prog_id:\t1539\ntp_name:\tsys_exit_accept4\nevent_type:\ttracepoint\ncookie:\t0\n";
        assert_eq!(
            parse_link_fdinfo(perf),
            Some(Attachment {
                kind: "tracepoint".into(),
                name: "sys_exit_accept4".into(),
                prog_id: 1539
            })
        );
        // A map or a socket.
        assert_eq!(
            parse_link_fdinfo("pos:\t0\nflags:\t02\nmap_type:\t1\n"),
            None
        );
    }

    #[test]
    fn hooks_print_as_aya_section_names() {
        assert_eq!(
            Hook::Raw("sk_data_ready".into()).to_string(),
            "raw_tp/sk_data_ready"
        );
        let classic = Hook::Classic {
            category: "syscalls".into(),
            name: "sys_enter_accept4".into(),
        };
        assert_eq!(classic.to_string(), "tracepoint/syscalls/sys_enter_accept4");
    }
}
