//! `sockq doctor`: what works on this kernel and why. Every answer comes from probing
//! the running kernel (loading and attaching the real programs, dumping sock_diag),
//! never from its version number.

use std::fmt::Write as _;

use aya::{programs::ProgramType, sys::is_program_supported};

use crate::{
    inventory,
    kernel::{btf_layout, capabilities, tracefs},
    probes,
};

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Verdict {
    Ok,
    Warn,
    Fail,
}

/// One finding.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Check {
    pub verdict: Verdict,
    pub topic: String,
    pub detail: String,
}

impl Check {
    fn new(verdict: Verdict, topic: impl Into<String>, detail: impl Into<String>) -> Self {
        Self {
            verdict,
            topic: topic.into(),
            detail: detail.into(),
        }
    }
}

/// Tracepoints sockq uses now or will use, and what each is for.
const TRACEPOINTS: [(&str, &str, &str); 6] = [
    (
        "sock",
        "inet_sock_set_state",
        "TCP state transitions, listener lifecycle",
    ),
    (
        "sock",
        "sk_data_ready",
        "accept queue depth at every enqueue",
    ),
    ("skb", "kfree_skb", "drop reasons"),
    ("tcp", "tcp_retransmit_synack", "SYN-ACK retransmits"),
    (
        "syscalls",
        "sys_exit_accept4",
        "accept wait, acceptor threads",
    ),
    (
        "io_uring",
        "io_uring_complete",
        "accepts made through io_uring",
    ),
];

/// `sockq doctor`: prints the report; fails when a check failed.
pub fn main() -> std::process::ExitCode {
    let checks = run();
    super::emit(&render(&checks));
    if checks.iter().any(|c| c.verdict == Verdict::Fail) {
        std::process::ExitCode::FAILURE
    } else {
        std::process::ExitCode::SUCCESS
    }
}

/// Runs every check. Loading programs needs privileges; without them those checks
/// say so instead of failing the whole report.
pub fn run() -> Vec<Check> {
    let mut checks = Vec::new();
    let release = nix::sys::utsname::uname()
        .map(|u| u.release().to_string_lossy().into_owned())
        .unwrap_or_else(|e| format!("unknown ({e})"));
    checks.push(Check::new(
        Verdict::Ok,
        "kernel",
        format!("Linux {release}"),
    ));
    let privileged = privilege_checks(&mut checks);
    let offsets_ok = btf_checks(&mut checks);
    let tracefs_root = tracefs_checks(&mut checks, privileged);
    if privileged {
        program_type_checks(&mut checks);
    }
    if privileged && offsets_ok {
        probe_checks(&mut checks, tracefs_root.as_deref());
    } else {
        checks.push(Check::new(
            Verdict::Fail,
            "probes",
            if privileged {
                "not loaded: kernel offsets unavailable (see BTF)"
            } else {
                "not loaded: needs the privileges above"
            },
        ));
    }
    checks.extend(inventory_checks(privileged));
    checks.push(memlock_check());
    checks
}

/// Whether this kernel's BTF resolves the offsets the programs need.
fn btf_checks(checks: &mut Vec<Check>) -> bool {
    let layout = btf_layout::Layout::from_running_kernel();
    let resolved = layout
        .as_ref()
        .map_err(|e| e.to_string())
        .and_then(|layout| {
            let o = layout
                .kernel_offsets()
                .map_err(|e| crate::error_chain(&e))?;
            Ok((
                o,
                layout.queue_offsets_error(),
                layout.uring_offsets_error(),
            ))
        });
    match resolved {
        Ok((o, queue_error, uring_error)) => {
            if let Some(e) = uring_error {
                checks.push(Check::new(
                    Verdict::Warn,
                    "BTF io_uring fields",
                    format!(
                        "{}: accepts made through io_uring are not counted",
                        crate::error_chain(&e)
                    ),
                ));
            }
            if let Some(e) = queue_error {
                checks.push(Check::new(
                    Verdict::Warn,
                    "BTF accept-queue fields",
                    format!(
                        "{}: the accept-queue probes stay off",
                        crate::error_chain(&e)
                    ),
                ));
            }
            checks.push(Check::new(
                Verdict::Ok,
                "BTF",
                format!(
                    "{} parsed; struct sock offsets resolved (skc_family at byte {}, \
                     skc_num at {}, skc_net at {})",
                    btf_layout::VMLINUX_BTF,
                    o.sk_family,
                    o.sk_num,
                    o.sk_net
                ),
            ));
            true
        }
        Err(e) => {
            checks.push(Check::new(Verdict::Fail, "BTF", e));
            false
        }
    }
}

/// Where tracefs is (mounting it as `sockq run` does, so the report says what run
/// would get), and which of the tracepoints sockq uses exist.
fn tracefs_checks(checks: &mut Vec<Check>, privileged: bool) -> Option<std::path::PathBuf> {
    let tracefs_root = match (tracefs::find(), privileged) {
        (Some(root), _) => Some(root),
        (None, true) => match tracefs::ensure_mounted() {
            Ok(root) => {
                checks.push(Check::new(
                    Verdict::Ok,
                    "tracefs",
                    format!(
                        "was not mounted; mounted it at {} as `sockq run` does",
                        root.display()
                    ),
                ));
                Some(root)
            }
            Err(e) => {
                checks.push(Check::new(Verdict::Warn, "tracefs", e.to_string()));
                None
            }
        },
        (None, false) => None,
    };
    let Some(root) = &tracefs_root else {
        checks.push(Check::new(
            Verdict::Warn,
            "tracefs",
            "not mounted; `sockq run` mounts it at /sys/kernel/tracing (or run \
             `mount -t tracefs nodev /sys/kernel/tracing`); raw tracepoints do not need it",
        ));
        return None;
    };
    checks.push(Check::new(
        Verdict::Ok,
        "tracefs",
        format!("mounted at {}", root.display()),
    ));
    for (category, name, purpose) in TRACEPOINTS {
        let (verdict, state) = if tracefs::tracepoint_exists(root, category, name) {
            (Verdict::Ok, "present")
        } else {
            (Verdict::Warn, "absent on this kernel")
        };
        checks.push(Check::new(
            verdict,
            format!("tracepoint {category}:{name}"),
            format!("{state} ({purpose})"),
        ));
    }
    tracefs_root
}

/// Loads the real programs (the Nagle family too, to say whether `--nagle` would
/// work) and reports how each probe attaches.
fn probe_checks(checks: &mut Vec<Check>, tracefs_root: Option<&std::path::Path>) {
    let options = probes::LoadOptions {
        nagle: true,
        ..probes::LoadOptions::default()
    };
    let loaded = probes::kernel_info(tracefs_root).and_then(|k| {
        checks.push(struct_reads_check(k.struct_reads));
        probes::Probes::load(&k, tracefs_root, options)
    });
    match loaded {
        Ok((loaded, _events)) => {
            for s in loaded.status() {
                let (verdict, detail) = if s.attached {
                    (Verdict::Ok, format!("attaches as {}", s.detail))
                } else if s.detail.starts_with(probes::NOT_NEEDED) {
                    (Verdict::Ok, s.detail.clone())
                } else {
                    // An older kernel lacks some hooks; sockq runs without them.
                    (
                        Verdict::Warn,
                        format!("does not attach, sockq runs without it: {}", s.detail),
                    )
                };
                checks.push(Check::new(verdict, format!("probe {}", s.name), detail));
            }
        }
        Err(e) => checks.push(Check::new(Verdict::Fail, "probes", crate::error_chain(&e))),
    }
}

/// How the programs read kernel structs here.
fn struct_reads_check(reads: probes::offsets::StructReads) -> Check {
    use probes::offsets::{PROBE_READS_ENV, StructReads};
    let detail = match reads {
        StructReads::Typed { .. } => "plain loads through bpf_rdonly_cast (Linux 6.2+): one \
                                      helper call fewer per read than probe reads"
            .to_owned(),
        StructReads::ProbeReadsAsked => format!(
            "bpf_probe_read_kernel, as {PROBE_READS_ENV} asks (unset it for plain loads where \
             the kernel has bpf_rdonly_cast)"
        ),
        StructReads::ProbeReadsNoKfunc => "bpf_probe_read_kernel: this kernel has no \
                                           bpf_rdonly_cast (Linux 6.2+), so each read is a \
                                           helper call (the connection hooks cost more, \
                                           BENCHMARKS.md)"
            .to_owned(),
    };
    Check::new(Verdict::Ok, "kernel struct reads", detail)
}

/// The inventory: TCP listeners (sock_diag), and Unix ones (unix_diag, a module of
/// its own that some kernels lack).
fn inventory_checks(privileged: bool) -> Vec<Check> {
    let report = match inventory::scan_report() {
        Ok(report) => report,
        Err(e) => {
            return vec![Check::new(
                Verdict::Fail,
                "sock_diag",
                crate::error_chain(&e),
            )];
        }
    };
    let namespaces: std::collections::BTreeSet<_> =
        report.listeners.iter().map(|l| l.netns).collect();
    let tcp = Check::new(
        Verdict::Ok,
        "sock_diag",
        format!(
            "{} TCP listeners in {} network namespaces{}",
            report.listeners.len(),
            namespaces.len(),
            if privileged {
                ""
            } else {
                " (only those this user can enter)"
            }
        ),
    );
    let unix = match &report.unix_error {
        None => Check::new(
            Verdict::Ok,
            "unix_diag",
            format!(
                "{} Unix stream/seqpacket listeners",
                report.unix_listeners.len()
            ),
        ),
        Some(why) => Check::new(
            Verdict::Warn,
            "unix_diag",
            format!(
                "{why}: Unix-domain listeners are not listed (kernel without \
                 CONFIG_UNIX_DIAG, or its unix_diag module cannot be loaded)"
            ),
        ),
    };
    vec![tcp, unix]
}

fn privilege_checks(checks: &mut Vec<Check>) -> bool {
    let eff = match capabilities::effective() {
        Ok(eff) => eff,
        Err(e) => {
            checks.push(Check::new(Verdict::Fail, "privileges", e.to_string()));
            return false;
        }
    };
    let missing = capabilities::missing(eff, &capabilities::FOR_RUN);
    for cap in capabilities::FOR_RUN {
        let has = !missing.contains(&cap);
        checks.push(Check::new(
            if has { Verdict::Ok } else { Verdict::Fail },
            cap.name,
            format!(
                "{} (to {})",
                if has { "present" } else { "MISSING" },
                cap.why
            ),
        ));
    }
    missing.is_empty()
}

fn program_type_checks(checks: &mut Vec<Check>) {
    let types = [
        (
            ProgramType::RawTracePoint,
            "raw_tracepoint",
            "preferred for every probe",
        ),
        (
            ProgramType::TracePoint,
            "tracepoint",
            "fallback where raw tracepoints fail",
        ),
        (
            ProgramType::KProbe,
            "kprobe",
            "alternative for hooks without a tracepoint",
        ),
        (
            ProgramType::Tracing,
            "fentry/tp_btf",
            "cheapest hooks where available",
        ),
    ];
    for (ty, name, purpose) in types {
        let (verdict, mut detail) = match is_program_supported(ty) {
            Ok(true) => (Verdict::Ok, format!("supported ({purpose})")),
            Ok(false) => (
                Verdict::Warn,
                format!("not supported by this kernel ({purpose})"),
            ),
            Err(e) => (
                Verdict::Warn,
                format!(
                    "not available: loading one fails ({}) ({purpose})",
                    crate::error_chain(&e)
                ),
            ),
        };
        // The kprobe program type also serves uprobes, so it loads even where the
        // kernel has no kprobes; attaching needs the kprobe PMU (CONFIG_KPROBE_EVENTS).
        let verdict = if ty == ProgramType::KProbe
            && verdict == Verdict::Ok
            && !std::path::Path::new(KPROBE_PMU).exists()
        {
            detail = format!(
                "the program type loads, but kprobes cannot attach: no {KPROBE_PMU} \
                 (kernel built without CONFIG_KPROBES)"
            );
            Verdict::Warn
        } else {
            verdict
        };
        checks.push(Check::new(verdict, format!("program type {name}"), detail));
    }
}

/// Present when the kernel can create kprobes through perf.
const KPROBE_PMU: &str = "/sys/bus/event_source/devices/kprobe";

fn memlock_check() -> Check {
    use nix::sys::resource::{Resource, getrlimit};
    match getrlimit(Resource::RLIMIT_MEMLOCK) {
        Ok((soft, _)) => Check::new(
            Verdict::Ok,
            "memlock",
            format!(
                "RLIMIT_MEMLOCK {}; kernels 5.11+ charge eBPF memory to the memory cgroup \
                 instead, and where raising the limit is refused sockq only warns",
                if soft == nix::sys::resource::RLIM_INFINITY {
                    "unlimited".to_owned()
                } else {
                    format!("{soft} bytes")
                }
            ),
        ),
        Err(e) => Check::new(Verdict::Warn, "memlock", format!("getrlimit failed: {e}")),
    }
}

/// The report as text, one line per check.
pub fn render(checks: &[Check]) -> String {
    let mut out = String::new();
    for c in checks {
        let tag = match c.verdict {
            Verdict::Ok => "[ ok ]",
            Verdict::Warn => "[warn]",
            Verdict::Fail => "[FAIL]",
        };
        let _ = writeln!(out, "{tag} {:<38} {}", c.topic, c.detail);
    }
    let fails = checks.iter().filter(|c| c.verdict == Verdict::Fail).count();
    let missing_probes = checks
        .iter()
        .filter(|c| c.verdict != Verdict::Ok && c.topic.starts_with("probe "))
        .count();
    let _ = if fails == 0 && missing_probes == 0 {
        writeln!(out, "sockq can run with all its probes on this machine.")
    } else if fails == 0 {
        writeln!(
            out,
            "sockq can run here without {missing_probes} of its probes (see the warnings above)."
        )
    } else if checks
        .iter()
        .any(|c| c.topic == "sock_diag" && c.verdict == Verdict::Fail)
    {
        writeln!(
            out,
            "{fails} problem(s) above; `sockq run` needs them fixed."
        )
    } else {
        writeln!(
            out,
            "{fails} problem(s) above; until they are fixed `sockq run` works in polling \
             mode: listeners, queues, SYN queues and drops from sock_diag and \
             /proc/net/netstat, without accept waits, enqueue depths, acceptors, patterns \
             or Nagle stalls."
        )
    };
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn render_tags_and_summarises() {
        let checks = vec![
            Check::new(Verdict::Ok, "BTF", "fine"),
            Check::new(Verdict::Fail, "CAP_BPF", "MISSING"),
        ];
        let text = render(&checks);
        assert!(text.contains("[ ok ] BTF"), "{text}");
        assert!(text.contains("[FAIL] CAP_BPF"), "{text}");
        assert!(text.contains("1 problem(s)"), "{text}");
    }
}
