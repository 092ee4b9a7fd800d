//! Loading sockq's eBPF object into the kernel, attaching each probe by the cheapest
//! mechanism that works here (probed at run time, never by kernel version), and reading
//! what the programs aggregate.
//!
//! Probes and their mechanisms, best first (see [`PROBES`]):
//! - `inet_sock_set_state`: raw tracepoint (Linux 4.17+), else classic tracepoint
//!   `sock/inet_sock_set_state` (4.16+, needs tracefs);
//! - `sk_data_ready`: raw tracepoint (6.3+), else a kprobe on `sock_def_readable`:
//!   accept queue depth at every enqueue and the enqueue time of each connection;
//! - `tcp_retransmit_synack`: raw tracepoint (4.16+);
//! - `kfree_skb`: raw tracepoint with the `rx_sk` argument (6.13+): drop reasons per
//!   listener;
//! - `sock_recv_length`: raw tracepoint (6.4+): which threads read a sample of the
//!   accepted connections (the execution pattern);
//! - `sys_enter_accept4`/`sys_exit_accept4`, `sys_enter_accept`/`sys_exit_accept`,
//!   `sys_enter_listen`: classic syscall tracepoints (need tracefs and
//!   `CONFIG_FTRACE_SYSCALLS`).
//!
//! The Nagle / delayed-ACK family (`Family::Nagle`, off unless `--nagle`: it runs on
//! per-segment and per-timer paths and costs more than 3% of the connection rate,
//! see BENCHMARKS.md):
//! - `timer_start`, `timer_expire_entry`: raw tracepoints on every kernel timer,
//!   filtered on `tcp_delack_timer` (its address from `/proc/kallsyms`);
//! - `tcp_sendmsg_locked` (6.2+) and `tcp_probe`: raw tracepoints on each send and
//!   each segment an established socket receives: Nagle holds and stalls.

use std::{collections::BTreeMap, path::Path};

use aya::{
    Ebpf, EbpfLoader,
    maps::{HashMap, MapData, PerCpuArray, PerCpuHashMap, RingBuf},
    programs::{KProbe, RawTracePoint, TracePoint},
};
use collector_common::{
    layout::{KERNEL_OFFSETS_SYMBOL, KernelOffsets},
    listener::{EVENT_LISTENER, EVENT_QUEUE_FULL, ListenerEvent},
    nagle::{
        ConnKey, ConnStats, EVENT_STALL, NAGLE_OFFSETS_SYMBOL, NagleOffsets, SENDS_CORK,
        SENDS_NAGLE, SENDS_NODELAY, StallEvent,
    },
    queue::{AcceptorKey, DropKey, ListenerQueue, QueueFullEvent, QueuedChild},
    stats::{
        STAT_CONNS_FULL, STAT_EVENTS_LOST, STAT_LISTENERS_FULL, STAT_QUEUED_FULL, STAT_READ_ERRORS,
        STAT_TRANSITIONS_FULL,
    },
    tcp_state::TransitionKey as RawTransitionKey,
};

use crate::{
    kernel_layout::{Layout, LayoutError},
    model::{ProbeStatus, TransitionKey},
    tracefs,
};

/// The eBPF object built by `build.rs`; empty when built with `AYA_BUILD_SKIP=1`.
static EBPF_OBJECT: &[u8] = aya::include_bytes_aligned!(concat!(env!("OUT_DIR"), "/sockq"));

#[derive(Debug, thiserror::Error)]
pub enum ProbeError {
    #[error(
        "this sockq binary was built without its eBPF programs (AYA_BUILD_SKIP); \
         rebuild with `cargo xtask build`"
    )]
    NoObject,
    #[error(transparent)]
    Layout(#[from] LayoutError),
    #[error("loading the eBPF object into the kernel failed")]
    Load {
        #[source]
        source: aya::EbpfError,
    },
    #[error("the eBPF object has no map `{0}`")]
    MissingMap(&'static str),
    #[error("eBPF map `{name}`")]
    Map {
        name: &'static str,
        #[source]
        source: aya::maps::MapError,
    },
    #[error("no probe could be attached: {0}")]
    NothingAttached(String),
}

/// Counters the programs keep about themselves.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct ProgramStats {
    /// Events that found the ring buffer full.
    pub events_lost: u64,
    /// Transitions not counted because the transition map was full.
    pub transitions_full: u64,
    /// Listeners whose accept-queue counters could not be created (map full).
    pub listeners_full: u64,
    /// Queued connections whose accept wait could not be measured (map full).
    pub queued_full: u64,
    /// Failed kernel reads.
    pub read_errors: u64,
    /// Connections whose Nagle/delayed-ACK state or counters could not be created.
    pub conns_full: u64,
}

/// One way to attach a probe.
#[derive(Debug, Clone, Copy)]
enum Hook {
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
}

/// A probe and its mechanisms, best first.
pub struct ProbeSpec {
    pub name: &'static str,
    hooks: &'static [Hook],
    /// Reads the accept-queue fields (`KernelOffsets::queue_valid`).
    needs_queue_offsets: bool,
    pub family: Family,
}

/// Probe families, each switchable as a whole.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Family {
    /// Listeners, accept queues, state transitions: always on.
    Core,
    /// Nagle holds, delayed ACKs and their stalls (`--nagle` switches it on).
    Nagle,
}

/// How to load the probes.
#[derive(Debug, Clone, Copy)]
pub struct LoadOptions {
    pub nagle: bool,
    /// Size of the per-connection map of the Nagle family.
    pub conn_track_entries: u32,
}

impl Default for LoadOptions {
    fn default() -> Self {
        Self {
            nagle: false,
            conn_track_entries: collector_common::nagle::CONNS_MAX_ENTRIES,
        }
    }
}

/// Every probe sockq attaches.
pub const PROBES: [ProbeSpec; 14] = [
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
        family: Family::Core,
    },
    ProbeSpec {
        name: "tcp_retransmit_synack",
        hooks: &[Hook::Raw {
            program: "tcp_retransmit_synack",
            tracepoint: "tcp_retransmit_synack",
        }],
        needs_queue_offsets: true,
        family: Family::Core,
    },
    ProbeSpec {
        name: "kfree_skb",
        hooks: &[Hook::Raw {
            program: "kfree_skb",
            tracepoint: "kfree_skb",
        }],
        needs_queue_offsets: true,
        family: Family::Core,
    },
    ProbeSpec {
        name: "sock_recv_length",
        hooks: &[Hook::Raw {
            program: "sock_recv_length",
            tracepoint: "sock_recv_length",
        }],
        needs_queue_offsets: true,
        family: Family::Core,
    },
    ProbeSpec {
        name: "sys_enter_accept4",
        hooks: &[Hook::Classic {
            program: "sys_enter_accept4",
            category: "syscalls",
            name: "sys_enter_accept4",
        }],
        needs_queue_offsets: true,
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
        family: Family::Core,
    },
    ProbeSpec {
        name: "sys_exit_accept4",
        hooks: &[Hook::Classic {
            program: "sys_exit_accept4",
            category: "syscalls",
            name: "sys_exit_accept4",
        }],
        needs_queue_offsets: true,
        family: Family::Core,
    },
    ProbeSpec {
        name: "sys_exit_accept",
        hooks: &[Hook::Classic {
            program: "sys_exit_accept",
            category: "syscalls",
            name: "sys_exit_accept",
        }],
        needs_queue_offsets: true,
        family: Family::Core,
    },
    ProbeSpec {
        name: "sys_enter_listen",
        hooks: &[Hook::Classic {
            program: "sys_enter_listen",
            category: "syscalls",
            name: "sys_enter_listen",
        }],
        needs_queue_offsets: true,
        family: Family::Core,
    },
    ProbeSpec {
        name: "timer_start",
        hooks: &[Hook::Raw {
            program: "timer_start",
            tracepoint: "timer_start",
        }],
        needs_queue_offsets: true,
        family: Family::Nagle,
    },
    ProbeSpec {
        name: "timer_expire_entry",
        hooks: &[Hook::Raw {
            program: "timer_expire_entry",
            tracepoint: "timer_expire_entry",
        }],
        needs_queue_offsets: true,
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
        family: Family::Nagle,
    },
    ProbeSpec {
        name: "tcp_probe",
        hooks: &[Hook::Raw {
            program: "tcp_probe",
            tracepoint: "tcp_probe",
        }],
        needs_queue_offsets: true,
        family: Family::Nagle,
    },
];

/// What userspace reads from the kernel at each poll.
pub struct KernelView {
    pub transitions: BTreeMap<TransitionKey, u64>,
    /// Accept-queue counters by listener socket inode.
    pub queues: std::collections::HashMap<u64, ListenerQueue>,
    /// Accepts by (listener inode, pid, tid).
    pub acceptors: Vec<(AcceptorKey, u64)>,
    /// Drops by (listener inode, `enum skb_drop_reason`).
    pub drops: Vec<(DropKey, u64)>,
    /// Nagle / delayed-ACK measurements (empty with the family off).
    pub conns: Vec<(ConnKey, ConnStats)>,
    /// `sendmsg` calls by mode (`SENDS_*`), when the family runs.
    pub sends: Option<[u64; 3]>,
    pub stats: ProgramStats,
}

/// The loaded object and the maps userspace reads.
pub struct Probes {
    // Keeps programs and links alive; dropping it detaches everything.
    _ebpf: Ebpf,
    status: Vec<ProbeStatus>,
    transitions: PerCpuHashMap<MapData, RawTransitionKey, u64>,
    stats: PerCpuArray<MapData, u64>,
    queues: HashMap<MapData, u64, ListenerQueue>,
    queued: HashMap<MapData, u64, QueuedChild>,
    acceptors: HashMap<MapData, AcceptorKey, u64>,
    drops: HashMap<MapData, DropKey, u64>,
    conn_stats: HashMap<MapData, ConnKey, ConnStats>,
    sends: PerCpuArray<MapData, u64>,
    nagle_on: bool,
    drop_reasons: std::collections::HashMap<u32, String>,
}

/// What the programs and their readers need to know about this kernel, from one
/// parse of its BTF.
pub struct KernelInfo {
    pub offsets: KernelOffsets,
    /// `enum skb_drop_reason` value -> name.
    pub drop_reasons: std::collections::HashMap<u32, String>,
    /// The Nagle family's offsets, or why it cannot run here.
    pub nagle: Result<NagleOffsets, String>,
}

/// Resolves the offsets the programs need on this kernel: struct layout from BTF,
/// tracepoint record layouts from tracefs when it is mounted.
pub fn kernel_info(tracefs_root: Option<&Path>) -> Result<KernelInfo, ProbeError> {
    let layout = Layout::from_running_kernel()?;
    let mut o = layout.kernel_offsets()?;
    if let Some(root) = tracefs_root {
        let field = |category: &str, name: &str, field: &str| -> u32 {
            match tracefs::field_offsets(root, category, name) {
                Ok(fields) => fields.get(field).copied().unwrap_or(0),
                Err(e) => {
                    tracing::debug!("no classic tracepoint layout for {category}:{name}: {e}");
                    0
                }
            }
        };
        o.tp_state_skaddr = field("sock", "inet_sock_set_state", "skaddr");
        o.tp_state_oldstate = field("sock", "inet_sock_set_state", "oldstate");
        o.tp_state_newstate = field("sock", "inet_sock_set_state", "newstate");
        o.tp_accept4_ret = field("syscalls", "sys_exit_accept4", "ret");
        o.tp_accept_ret = field("syscalls", "sys_exit_accept", "ret");
        o.tp_accept4_fd = field("syscalls", "sys_enter_accept4", "fd");
        o.tp_accept_fd = field("syscalls", "sys_enter_accept", "fd");
        o.tp_listen_fd = field("syscalls", "sys_enter_listen", "fd");
        o.tp_listen_backlog = field("syscalls", "sys_enter_listen", "backlog");
    }
    let nagle = layout
        .nagle_offsets()
        .map_err(|e| crate::error_chain(&e))
        .and_then(|mut n| {
            n.delack_timer_fn = crate::kallsyms::lookup("tcp_delack_timer")?;
            (n.ephemeral_lo, n.ephemeral_hi) = ephemeral_ports();
            Ok(n)
        });
    Ok(KernelInfo {
        offsets: o,
        drop_reasons: layout.drop_reason_names(),
        nagle,
    })
}

/// `net.ipv4.ip_local_port_range` of sockq's namespace (the kernel's default when
/// unreadable).
fn ephemeral_ports() -> (u16, u16) {
    std::fs::read_to_string("/proc/sys/net/ipv4/ip_local_port_range")
        .ok()
        .and_then(|text| crate::nagle::parse_port_range(&text))
        .unwrap_or((32768, 60999))
}

impl Probes {
    /// Loads the object, attaches every probe it can, and takes the ring buffer of
    /// events. Fails only when nothing at all can be attached.
    pub fn load(
        kernel: &KernelInfo,
        tracefs_root: Option<&Path>,
        options: LoadOptions,
    ) -> Result<(Self, RingBuf<MapData>), ProbeError> {
        let offsets = &kernel.offsets;
        if EBPF_OBJECT.is_empty() {
            return Err(ProbeError::NoObject);
        }
        // With the family off (or unavailable) its offsets stay zero: its programs,
        // and its cleanup in inet_sock_set_state, do nothing.
        let nagle_offsets = match (&kernel.nagle, options.nagle) {
            (Ok(n), true) => *n,
            _ => NagleOffsets::default(),
        };
        let mut loader = EbpfLoader::new();
        loader
            .override_global(KERNEL_OFFSETS_SYMBOL, offsets, true)
            .override_global(NAGLE_OFFSETS_SYMBOL, &nagle_offsets, true)
            .map_max_entries("CONNS", options.conn_track_entries.max(1));
        let mut ebpf = loader
            .load(EBPF_OBJECT)
            .map_err(|source| ProbeError::Load { source })?;

        let status: Vec<ProbeStatus> = PROBES
            .iter()
            .map(|spec| {
                if spec.family == Family::Nagle && !options.nagle {
                    ProbeStatus {
                        name: spec.name,
                        attached: false,
                        detail:
                            "off by default (per-segment cost); `sockq run --nagle` switches it on"
                                .into(),
                    }
                } else if let (Family::Nagle, Err(why)) = (spec.family, &kernel.nagle) {
                    ProbeStatus {
                        name: spec.name,
                        attached: false,
                        detail: format!("the Nagle/delayed-ACK probes cannot run here: {why}"),
                    }
                } else if spec.needs_queue_offsets && offsets.queue_valid == 0 {
                    ProbeStatus {
                        name: spec.name,
                        attached: false,
                        detail: "this kernel's BTF lacks a field the accept-queue probes \
                                 read (`sockq doctor` names it)"
                            .into(),
                    }
                } else {
                    attach(&mut ebpf, spec, tracefs_root)
                }
            })
            .collect();
        if status.iter().all(|s| !s.attached) {
            let why = status
                .iter()
                .map(|s| format!("{}: {}", s.name, s.detail))
                .collect::<Vec<_>>()
                .join("; ");
            return Err(ProbeError::NothingAttached(why));
        }

        let events = RingBuf::try_from(take_map(&mut ebpf, "EVENTS")?)
            .map_err(|source| map_error("EVENTS", source))?;
        let transitions = PerCpuHashMap::try_from(take_map(&mut ebpf, "TRANSITIONS")?)
            .map_err(|source| map_error("TRANSITIONS", source))?;
        let stats = PerCpuArray::try_from(take_map(&mut ebpf, "STATS")?)
            .map_err(|source| map_error("STATS", source))?;
        let queues = HashMap::try_from(take_map(&mut ebpf, "LISTENER_QUEUES")?)
            .map_err(|source| map_error("LISTENER_QUEUES", source))?;
        let queued = HashMap::try_from(take_map(&mut ebpf, "QUEUED")?)
            .map_err(|source| map_error("QUEUED", source))?;
        let acceptors = HashMap::try_from(take_map(&mut ebpf, "ACCEPTORS")?)
            .map_err(|source| map_error("ACCEPTORS", source))?;
        let drops = HashMap::try_from(take_map(&mut ebpf, "DROP_REASONS")?)
            .map_err(|source| map_error("DROP_REASONS", source))?;
        let conn_stats = HashMap::try_from(take_map(&mut ebpf, "CONN_STATS")?)
            .map_err(|source| map_error("CONN_STATS", source))?;
        let sends = PerCpuArray::try_from(take_map(&mut ebpf, "SENDS")?)
            .map_err(|source| map_error("SENDS", source))?;
        let nagle_on = nagle_offsets.valid != 0;
        Ok((
            Self {
                _ebpf: ebpf,
                status,
                transitions,
                stats,
                queues,
                queued,
                acceptors,
                drops,
                conn_stats,
                sends,
                nagle_on,
                drop_reasons: kernel.drop_reasons.clone(),
            },
            events,
        ))
    }

    pub fn status(&self) -> &[ProbeStatus] {
        &self.status
    }

    /// This kernel's `enum skb_drop_reason` names, by value.
    pub fn drop_reason_names(&self) -> &std::collections::HashMap<u32, String> {
        &self.drop_reasons
    }

    /// Everything the programs aggregated, read in one go.
    pub fn read(&self) -> Result<KernelView, ProbeError> {
        let mut transitions = BTreeMap::new();
        for entry in self.transitions.iter() {
            let (key, per_cpu) = entry.map_err(|source| map_error("TRANSITIONS", source))?;
            let total: u64 = per_cpu.iter().copied().fold(0, u64::wrapping_add);
            transitions.insert(
                TransitionKey {
                    netns: u64::from(key.netns),
                    from: key.from,
                    to: key.to,
                },
                total,
            );
        }
        // An entry evicted between get_next_key and lookup is simply skipped.
        let queues = self.queues.iter().flatten().collect();
        let acceptors = self.acceptors.iter().filter_map(Result::ok).collect();
        let drops = self.drops.iter().filter_map(Result::ok).collect();
        let conns = self.conn_stats.iter().filter_map(Result::ok).collect();
        let sends = if self.nagle_on {
            let mode = |index: u32| -> u64 {
                self.sends
                    .get(&index, 0)
                    .map(|per_cpu| per_cpu.iter().copied().fold(0, u64::wrapping_add))
                    .unwrap_or(0)
            };
            Some([mode(SENDS_NAGLE), mode(SENDS_NODELAY), mode(SENDS_CORK)])
        } else {
            None
        };
        Ok(KernelView {
            transitions,
            queues,
            acceptors,
            drops,
            conns,
            sends,
            stats: self.program_stats()?,
        })
    }

    /// For each listener inode, the enqueue time (`CLOCK_MONOTONIC` nanoseconds) of
    /// its oldest connection still waiting for accept(). Walks the whole `QUEUED`
    /// map: call it only when some queue is full.
    pub fn oldest_queued(&self) -> std::collections::HashMap<u64, u64> {
        let mut oldest = std::collections::HashMap::new();
        for (_, child) in self.queued.iter().filter_map(Result::ok) {
            oldest
                .entry(child.listener)
                .and_modify(|t: &mut u64| *t = (*t).min(child.enqueued_ns))
                .or_insert(child.enqueued_ns);
        }
        oldest
    }

    /// Removes the per-thread accept counts of listeners that no longer exist.
    pub fn prune_acceptors(&mut self, live: &std::collections::HashSet<u64>) {
        let dead: Vec<AcceptorKey> = self
            .acceptors
            .keys()
            .filter_map(Result::ok)
            .filter(|k| !live.contains(&k.listener))
            .collect();
        for key in dead {
            let _ = self.acceptors.remove(&key);
        }
    }

    pub fn program_stats(&self) -> Result<ProgramStats, ProbeError> {
        let read = |index: u32| -> Result<u64, ProbeError> {
            let per_cpu = self
                .stats
                .get(&index, 0)
                .map_err(|source| map_error("STATS", source))?;
            Ok(per_cpu.iter().copied().fold(0, u64::wrapping_add))
        };
        Ok(ProgramStats {
            events_lost: read(STAT_EVENTS_LOST)?,
            transitions_full: read(STAT_TRANSITIONS_FULL)?,
            listeners_full: read(STAT_LISTENERS_FULL)?,
            queued_full: read(STAT_QUEUED_FULL)?,
            read_errors: read(STAT_READ_ERRORS)?,
            conns_full: read(STAT_CONNS_FULL)?,
        })
    }
}

fn map_error(name: &'static str, source: aya::maps::MapError) -> ProbeError {
    ProbeError::Map { name, source }
}

fn take_map(ebpf: &mut Ebpf, name: &'static str) -> Result<aya::maps::Map, ProbeError> {
    ebpf.take_map(name).ok_or(ProbeError::MissingMap(name))
}

/// Tries each hook of `spec` in order; the first that loads and attaches wins.
fn attach(ebpf: &mut Ebpf, spec: &ProbeSpec, tracefs_root: Option<&Path>) -> ProbeStatus {
    let mut failures = Vec::new();
    for hook in spec.hooks {
        let result = match *hook {
            Hook::Raw {
                program,
                tracepoint,
            } => attach_raw(ebpf, program, tracepoint).map(|()| "raw_tracepoint"),
            Hook::Classic {
                program,
                category,
                name,
            } => match tracefs_root {
                None => Err("tracefs is not mounted".to_owned()),
                Some(root) if !tracefs::tracepoint_exists(root, category, name) => {
                    Err(format!("this kernel has no tracepoint {category}:{name}"))
                }
                Some(_) => attach_classic(ebpf, program, category, name).map(|()| "tracepoint"),
            },
            Hook::KProbe { program, function } => {
                attach_kprobe(ebpf, program, function).map(|()| "kprobe")
            }
        };
        match result {
            Ok(mechanism) => {
                return ProbeStatus {
                    name: spec.name,
                    attached: true,
                    detail: mechanism.to_owned(),
                };
            }
            Err(e) => {
                let kind = match hook {
                    Hook::Raw { .. } => "raw tracepoint",
                    Hook::Classic { .. } => "tracepoint",
                    Hook::KProbe { .. } => "kprobe",
                };
                tracing::debug!("probe {}: {kind}: {e}", spec.name);
                failures.push(format!("{kind}: {e}"));
            }
        }
    }
    ProbeStatus {
        name: spec.name,
        attached: false,
        detail: failures.join("; "),
    }
}

/// Program `program` of the object, as the program type `T` its hook needs.
fn program<'a, T>(ebpf: &'a mut Ebpf, program: &str) -> Result<&'a mut T, String>
where
    &'a mut T: TryFrom<&'a mut aya::programs::Program, Error = aya::programs::ProgramError>,
{
    ebpf.program_mut(program)
        .ok_or_else(|| format!("program {program} missing from the object"))?
        .try_into()
        .map_err(|e| format!("{e}"))
}

fn attach_raw(ebpf: &mut Ebpf, name: &str, tracepoint: &str) -> Result<(), String> {
    let prog: &mut RawTracePoint = program(ebpf, name)?;
    prog.load().map_err(|e| crate::error_chain(&e))?;
    prog.attach(tracepoint)
        .map_err(|e| crate::error_chain(&e))?;
    Ok(())
}

fn attach_kprobe(ebpf: &mut Ebpf, name: &str, function: &str) -> Result<(), String> {
    let prog: &mut KProbe = program(ebpf, name)?;
    prog.load().map_err(|e| crate::error_chain(&e))?;
    prog.attach(function, 0)
        .map_err(|e| crate::error_chain(&e))?;
    Ok(())
}

fn attach_classic(
    ebpf: &mut Ebpf,
    name: &str,
    category: &str,
    tracepoint: &str,
) -> Result<(), String> {
    let prog: &mut TracePoint = program(ebpf, name)?;
    prog.load().map_err(|e| crate::error_chain(&e))?;
    prog.attach(category, tracepoint)
        .map_err(|e| crate::error_chain(&e))?;
    Ok(())
}

/// A record from the `EVENTS` ring buffer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Event {
    Listener(ListenerEvent),
    QueueFull(QueueFullEvent),
    Stall(StallEvent),
}

/// Decodes one ring buffer record by its leading kind; `None` for an unknown kind
/// or a record too short for it.
pub fn decode_event(bytes: &[u8]) -> Option<Event> {
    let kind = u32::from_ne_bytes(bytes.get(..4)?.try_into().ok()?);
    match kind {
        EVENT_LISTENER => read_pod::<ListenerEvent>(bytes).map(Event::Listener),
        EVENT_QUEUE_FULL => read_pod::<QueueFullEvent>(bytes).map(Event::QueueFull),
        EVENT_STALL => read_pod::<StallEvent>(bytes).map(Event::Stall),
        _ => None,
    }
}

fn read_pod<T: aya::Pod>(bytes: &[u8]) -> Option<T> {
    if bytes.len() < std::mem::size_of::<T>() {
        return None;
    }
    // SAFETY: the length is checked above, T is Pod (any bit pattern is valid) and
    // read_unaligned imposes no alignment requirement.
    Some(unsafe { std::ptr::read_unaligned(bytes.as_ptr().cast::<T>()) })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn records_decode_by_kind() {
        assert!(decode_event(&[]).is_none());
        assert!(
            decode_event(&[1, 0, 0, 0, 0]).is_none(),
            "too short for a listener event"
        );
        let mut bytes = vec![0u8; std::mem::size_of::<QueueFullEvent>()];
        bytes[..4].copy_from_slice(&EVENT_QUEUE_FULL.to_ne_bytes());
        bytes[24..28].copy_from_slice(&5u32.to_ne_bytes());
        match decode_event(&bytes) {
            Some(Event::QueueFull(e)) => assert_eq!(e.depth, 5),
            other => panic!("{other:?}"),
        }
        bytes[..4].copy_from_slice(&99u32.to_ne_bytes());
        assert!(decode_event(&bytes).is_none());
    }

    #[test]
    fn every_probe_has_a_hook() {
        for p in &PROBES {
            assert!(!p.hooks.is_empty(), "{}", p.name);
        }
    }
}
