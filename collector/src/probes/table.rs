//! Every probe sockq attaches and the mechanisms each can use, best first. The order
//! of the hooks is the fallback order: the first that loads and attaches wins.

use super::LoadOptions;

/// One way to attach a probe.
#[derive(Debug, Clone, Copy)]
pub enum Hook {
    /// `raw_tp/<tracepoint>`.
    Raw {
        program: &'static str,
        tracepoint: &'static str,
    },
    /// `tracepoint/<category>/<name>`; its record layout comes from tracefs.
    Classic {
        program: &'static str,
        category: &'static str,
        name: &'static str,
    },
    /// `kprobe/<function>`: where the kernel lacks the tracepoint but has kprobes.
    KProbe {
        program: &'static str,
        function: &'static str,
    },
    /// `fexit/<function>`, where the kernel has BPF trampolines; `program` reads the
    /// return value after `args` arguments, so it is tried only where BTF shows the
    /// function with that many (0: it reads no return value, only arguments every
    /// prototype shares).
    FExit {
        program: &'static str,
        function: &'static str,
        args: usize,
    },
}

impl Hook {
    /// The program this hook attaches.
    pub fn program(&self) -> &'static str {
        match *self {
            Self::Raw { program, .. }
            | Self::Classic { program, .. }
            | Self::KProbe { program, .. }
            | Self::FExit { program, .. } => program,
        }
    }
}

/// Other probes that, once all attached, do this one's work.
#[derive(Debug, Clone, Copy)]
pub struct Replacement {
    pub probes: &'static [&'static str],
    /// ... and the programs they must have attached with (empty: any).
    pub programs: &'static [&'static str],
    /// Why this one is then not needed (after "not needed: ").
    pub because: &'static str,
    /// Whether these options want this one all the same (it does more than the
    /// others).
    pub wanted_anyway: fn(&LoadOptions) -> bool,
}

/// [`Replacement::wanted_anyway`] of a probe the others replace whatever the options.
const fn never(_: &LoadOptions) -> bool {
    false
}

/// The accept entries keep the listener fd only for exits that cannot read it from
/// the syscall's registers.
const BY_REGS: Replacement = Replacement {
    probes: &["sys_exit_accept4", "sys_exit_accept"],
    programs: &["sys_exit_accept4_regs", "sys_exit_accept_regs"],
    because: "the accept exits read the listener's fd from the syscall's registers",
    wanted_anyway: never,
};

/// The connect entry keeps a connect's arguments for an exit that cannot read them,
/// and its start for the waits of blocking connects (`--unix-connect-waits`).
const BY_CONNECT_REGS: Replacement = Replacement {
    probes: &["sys_exit_connect"],
    programs: &["sys_exit_connect_regs"],
    because: "sys_exit_connect reads refused connects' arguments from the syscall's \
              registers; `--unix-connect-waits` attaches it to time blocking connects (a \
              syscall entry tracepoint slows every syscall on the host)",
    wanted_anyway: |options| options.unix_connect_waits,
};

/// ... or an fexit exit, given the registers.
const BY_CONNECT_FEXIT: Replacement = Replacement {
    programs: &["sys_connect_fexit"],
    ..BY_CONNECT_REGS
};

/// The listen entry keeps the backlog only for an exit that cannot read it.
const BY_LISTEN_REGS: Replacement = Replacement {
    probes: &["sys_exit_listen"],
    programs: &["sys_exit_listen_regs"],
    because: "the listen exit reads the backlog from the syscall's registers",
    wanted_anyway: never,
};

/// ... nor where the exit is an fexit program, given the registers.
const BY_LISTEN_FEXIT: Replacement = Replacement {
    programs: &["sys_listen_fexit"],
    ..BY_LISTEN_REGS
};

/// fexit on `inet_csk_accept` and `unix_accept` sees every accept, TCP and Unix,
/// with its listener and child.
const BY_FEXIT: Replacement = Replacement {
    probes: &["inet_csk_accept", "unix_accept"],
    programs: &[],
    because: "fexit on inet_csk_accept and unix_accept counts every accept, io_uring's included",
    wanted_anyway: never,
};

/// A probe and its mechanisms, best first.
pub struct ProbeSpec {
    pub name: &'static str,
    pub hooks: &'static [Hook],
    /// Reads the accept-queue fields (`KernelOffsets::queue_valid`).
    pub needs_queue_offsets: bool,
    /// Probes (earlier in the table) whose attachment makes this one unnecessary.
    pub replaced_by: &'static [Replacement],
    pub family: Family,
}

/// Probe families, each switchable as a whole.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Family {
    /// Listeners, accept queues, state transitions: always on.
    Core,
    /// Nagle holds, delayed ACKs and their stalls (`--nagle` switches it on).
    Nagle,
    /// Accepts through io_uring: on where this kernel's io_uring layout is one the
    /// programs know (`KernelOffsets::uring_valid`).
    IoUring,
    /// Connects to Unix listeners refused (or kept waiting) by a full queue: on where
    /// tracefs gave the connect tracepoints' record layout (`UnixOffsets::valid`).
    UnixConnect,
}

/// Every probe sockq attaches.
pub const PROBES: [ProbeSpec; 22] = [
    ProbeSpec {
        name: "inet_sock_set_state",
        hooks: &[
            Hook::Raw {
                program: "inet_sock_set_state_raw",
                tracepoint: "inet_sock_set_state",
            },
            Hook::Classic {
                program: "inet_sock_set_state_tp",
                category: "sock",
                name: "inet_sock_set_state",
            },
        ],
        needs_queue_offsets: false,
        replaced_by: &[],
        family: Family::Core,
    },
    ProbeSpec {
        name: "sk_data_ready",
        hooks: &[
            Hook::Raw {
                program: "sk_data_ready",
                tracepoint: "sk_data_ready",
            },
            Hook::KProbe {
                program: "sk_data_ready_kprobe",
                function: "sock_def_readable",
            },
        ],
        needs_queue_offsets: true,
        replaced_by: &[],
        family: Family::Core,
    },
    // Before the accept syscall and io_uring probes, which it makes unnecessary.
    ProbeSpec {
        name: "inet_csk_accept",
        hooks: &[
            Hook::FExit {
                program: "inet_csk_accept_fexit4",
                function: "inet_csk_accept",
                args: 4,
            },
            Hook::FExit {
                program: "inet_csk_accept_fexit2",
                function: "inet_csk_accept",
                args: 2,
            },
        ],
        needs_queue_offsets: true,
        replaced_by: &[],
        family: Family::Core,
    },
    ProbeSpec {
        name: "unix_accept",
        hooks: &[Hook::FExit {
            program: "unix_accept_fexit",
            function: "unix_accept",
            args: 0,
        }],
        needs_queue_offsets: true,
        replaced_by: &[],
        family: Family::Core,
    },
    ProbeSpec {
        name: "tcp_retransmit_synack",
        hooks: &[Hook::Raw {
            program: "tcp_retransmit_synack",
            tracepoint: "tcp_retransmit_synack",
        }],
        needs_queue_offsets: true,
        replaced_by: &[],
        family: Family::Core,
    },
    ProbeSpec {
        name: "kfree_skb",
        hooks: &[Hook::Raw {
            program: "kfree_skb",
            tracepoint: "kfree_skb",
        }],
        needs_queue_offsets: true,
        replaced_by: &[],
        family: Family::Core,
    },
    ProbeSpec {
        name: "sock_recv_length",
        hooks: &[Hook::Raw {
            program: "sock_recv_length",
            tracepoint: "sock_recv_length",
        }],
        needs_queue_offsets: true,
        replaced_by: &[],
        family: Family::Core,
    },
    ProbeSpec {
        name: "sys_exit_accept4",
        // The listener fd from the registers with typed loads (5.15+), typed loads
        // alone (5.11+), probe reads: the first the kernel takes.
        hooks: &[
            Hook::Classic {
                program: "sys_exit_accept4_regs",
                category: "syscalls",
                name: "sys_exit_accept4",
            },
            Hook::Classic {
                program: "sys_exit_accept4_btf",
                category: "syscalls",
                name: "sys_exit_accept4",
            },
            Hook::Classic {
                program: "sys_exit_accept4",
                category: "syscalls",
                name: "sys_exit_accept4",
            },
        ],
        needs_queue_offsets: true,
        replaced_by: &[BY_FEXIT],
        family: Family::Core,
    },
    ProbeSpec {
        name: "sys_exit_accept",
        // The listener fd from the registers with typed loads (5.15+), typed loads
        // alone (5.11+), probe reads: the first the kernel takes.
        hooks: &[
            Hook::Classic {
                program: "sys_exit_accept_regs",
                category: "syscalls",
                name: "sys_exit_accept",
            },
            Hook::Classic {
                program: "sys_exit_accept_btf",
                category: "syscalls",
                name: "sys_exit_accept",
            },
            Hook::Classic {
                program: "sys_exit_accept",
                category: "syscalls",
                name: "sys_exit_accept",
            },
        ],
        needs_queue_offsets: true,
        replaced_by: &[BY_FEXIT],
        family: Family::Core,
    },
    // After the exits, which make them unnecessary where they read the registers.
    ProbeSpec {
        name: "sys_enter_accept4",
        hooks: &[Hook::Classic {
            program: "sys_enter_accept4",
            category: "syscalls",
            name: "sys_enter_accept4",
        }],
        needs_queue_offsets: true,
        replaced_by: &[BY_FEXIT, BY_REGS],
        family: Family::Core,
    },
    ProbeSpec {
        name: "sys_enter_accept",
        hooks: &[Hook::Classic {
            program: "sys_enter_accept",
            category: "syscalls",
            name: "sys_enter_accept",
        }],
        needs_queue_offsets: true,
        replaced_by: &[BY_FEXIT, BY_REGS],
        family: Family::Core,
    },
    ProbeSpec {
        name: "sys_exit_listen",
        // fexit on the syscall's function where the kernel has trampolines (no
        // syscall tracepoint: see `sys_exit_connect`), else the tracepoint.
        hooks: &[
            Hook::FExit {
                program: "sys_listen_fexit",
                function: "__x64_sys_listen",
                args: 1,
            },
            Hook::FExit {
                program: "sys_listen_fexit",
                function: "__arm64_sys_listen",
                args: 1,
            },
            Hook::Classic {
                program: "sys_exit_listen_regs",
                category: "syscalls",
                name: "sys_exit_listen",
            },
        ],
        needs_queue_offsets: true,
        replaced_by: &[],
        family: Family::Core,
    },
    // Only where the exit cannot read the syscall's registers (before 5.15).
    ProbeSpec {
        name: "sys_enter_listen",
        hooks: &[Hook::Classic {
            program: "sys_enter_listen",
            category: "syscalls",
            name: "sys_enter_listen",
        }],
        needs_queue_offsets: true,
        replaced_by: &[BY_LISTEN_REGS, BY_LISTEN_FEXIT],
        family: Family::Core,
    },
    // Unix-domain connects refused by a full listener queue (or that waited for
    // room): the tracepoint records' layout comes from tracefs (`UnixOffsets`).
    ProbeSpec {
        name: "sys_exit_connect",
        // fexit on the syscall's function where the kernel has trampolines: any
        // syscall tracepoint sends every syscall on the host through the kernel's
        // slow path (about 64 ns each, BENCHMARKS.md), and with fexit on the accept
        // functions and on listen, this one was the last. Else refusals from the
        // registers alone (5.15+), else with the entry's help.
        hooks: &[
            Hook::FExit {
                program: "sys_connect_fexit",
                function: "__x64_sys_connect",
                args: 1,
            },
            Hook::FExit {
                program: "sys_connect_fexit",
                function: "__arm64_sys_connect",
                args: 1,
            },
            Hook::Classic {
                program: "sys_exit_connect_regs",
                category: "syscalls",
                name: "sys_exit_connect",
            },
            Hook::Classic {
                program: "sys_exit_connect",
                category: "syscalls",
                name: "sys_exit_connect",
            },
        ],
        needs_queue_offsets: true,
        replaced_by: &[],
        family: Family::UnixConnect,
    },
    // After the exit: needed only where it cannot read the registers, or to time
    // blocking connects.
    ProbeSpec {
        name: "sys_enter_connect",
        hooks: &[Hook::Classic {
            program: "sys_enter_connect",
            category: "syscalls",
            name: "sys_enter_connect",
        }],
        needs_queue_offsets: true,
        replaced_by: &[BY_CONNECT_REGS, BY_CONNECT_FEXIT],
        family: Family::UnixConnect,
    },
    // io_uring accepts. The pre-6.13 prototype of io_uring_complete first: its
    // program reads five arguments, so the kernel refuses it on the three-argument
    // tracepoint of 6.13 on, where the next one attaches.
    ProbeSpec {
        name: "io_uring_complete",
        hooks: &[
            Hook::Raw {
                program: "io_uring_complete_values",
                tracepoint: "io_uring_complete",
            },
            Hook::Raw {
                program: "io_uring_complete",
                tracepoint: "io_uring_complete",
            },
        ],
        needs_queue_offsets: true,
        replaced_by: &[BY_FEXIT],
        family: Family::IoUring,
    },
    ProbeSpec {
        name: "io_uring_submit_req",
        hooks: &[
            Hook::Raw {
                program: "io_uring_submit_req",
                tracepoint: "io_uring_submit_req",
            },
            // Its name up to 6.1 (5.10 passes the ring first: refused from BTF).
            Hook::Raw {
                program: "io_uring_submit_sqe",
                tracepoint: "io_uring_submit_sqe",
            },
        ],
        needs_queue_offsets: true,
        replaced_by: &[BY_FEXIT],
        family: Family::IoUring,
    },
    ProbeSpec {
        name: "io_uring_task_add",
        hooks: &[Hook::Raw {
            program: "io_uring_task_add",
            tracepoint: "io_uring_task_add",
        }],
        needs_queue_offsets: true,
        replaced_by: &[BY_FEXIT],
        family: Family::IoUring,
    },
    ProbeSpec {
        name: "timer_start",
        hooks: &[Hook::Raw {
            program: "timer_start",
            tracepoint: "timer_start",
        }],
        needs_queue_offsets: true,
        replaced_by: &[],
        family: Family::Nagle,
    },
    ProbeSpec {
        name: "timer_expire_entry",
        hooks: &[Hook::Raw {
            program: "timer_expire_entry",
            tracepoint: "timer_expire_entry",
        }],
        needs_queue_offsets: true,
        replaced_by: &[],
        family: Family::Nagle,
    },
    ProbeSpec {
        name: "tcp_sendmsg_locked",
        hooks: &[
            Hook::Raw {
                program: "tcp_sendmsg_locked",
                tracepoint: "tcp_sendmsg_locked",
            },
            Hook::KProbe {
                program: "tcp_sendmsg_locked_kprobe",
                function: "tcp_sendmsg_locked",
            },
        ],
        needs_queue_offsets: true,
        replaced_by: &[],
        family: Family::Nagle,
    },
    ProbeSpec {
        name: "tcp_probe",
        hooks: &[Hook::Raw {
            program: "tcp_probe",
            tracepoint: "tcp_probe",
        }],
        needs_queue_offsets: true,
        replaced_by: &[],
        family: Family::Nagle,
    },
];

/// The kernel functions the fexit hooks name.
pub fn fexit_functions() -> impl Iterator<Item = &'static str> {
    PROBES
        .iter()
        .flat_map(|p| p.hooks)
        .filter_map(|h| match *h {
            Hook::FExit { function, .. } => Some(function),
            _ => None,
        })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_probe_has_a_hook() {
        for p in &PROBES {
            assert!(!p.hooks.is_empty(), "{}", p.name);
        }
    }

    #[test]
    fn replacements_come_first_in_the_table() {
        for (i, p) in PROBES.iter().enumerate() {
            for probe in p.replaced_by.iter().flat_map(|r| r.probes) {
                let at = PROBES.iter().position(|q| q.name == *probe);
                assert!(
                    at.is_some_and(|at| at < i),
                    "{} is replaced by {probe}, which must come before it",
                    p.name,
                );
            }
        }
    }
}
