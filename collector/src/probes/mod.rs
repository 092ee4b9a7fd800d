//! Loading sockq's eBPF object into the kernel, attaching each probe by the cheapest
//! mechanism that works here (probed at run time, never by kernel version), and reading
//! what the programs aggregate.
//!
//! Probes and their mechanisms, best first (see [`table::PROBES`]):
//! - `inet_sock_set_state`: raw tracepoint (Linux 4.17+), else classic tracepoint
//!   `sock/inet_sock_set_state` (4.16+, needs tracefs);
//! - `sk_data_ready`: raw tracepoint (6.3+), else a kprobe on `sock_def_readable`:
//!   accept queue depth at every enqueue and the enqueue time of each connection;
//! - `inet_csk_accept`, `unix_accept`: fexit (kernels with BPF trampolines): every
//!   TCP and Unix accept, by any path, io_uring's direct descriptors included; where
//!   both attach, the accept syscall and io_uring probes below are not needed;
//! - `tcp_retransmit_synack`: raw tracepoint (4.16+);
//! - `kfree_skb`: raw tracepoint with the `rx_sk` argument (Debian's 6.12 has it, 6.1 not): drop reasons per
//!   listener;
//! - `sock_recv_length`: raw tracepoint (6.4+): which threads read a sample of the
//!   accepted connections (the execution pattern);
//! - `sys_exit_accept4`, `sys_exit_accept`, `sys_exit_listen`: classic syscall
//!   tracepoints (need tracefs and `CONFIG_FTRACE_SYSCALLS`), reading the syscall's
//!   arguments from its saved registers (5.15+); the entries (`sys_enter_accept4`,
//!   `sys_enter_accept`, `sys_enter_listen`) only where they cannot: any syscall
//!   tracepoint sends every syscall on the host through the kernel's slow path. Where
//!   the kernel has BPF trampolines, `sys_exit_listen` is an fexit program on the
//!   syscall's own function (`__x64_sys_listen`), given the registers;
//! - `sys_exit_connect` (and `sys_enter_connect` with `--unix-connect-waits`, or
//!   before 5.15): fexit on `__x64_sys_connect` where the kernel has trampolines, else
//!   classic syscall tracepoints: connects to Unix listeners refused with `EAGAIN`
//!   (queue full) or that waited for room. With trampolines, the default set then has
//!   no syscall tracepoint at all;
//! - `io_uring_complete`, `io_uring_submit_req` (`io_uring_submit_sqe` up to 6.1),
//!   `io_uring_task_add` (`Family::IoUring`): raw tracepoints, accepts made through
//!   io_uring (both `io_uring_complete` prototypes, before and since 6.13, chosen
//!   from BTF; kernels whose io_uring tracepoints pass the ring first, 5.10, refused).
//!
//! The Nagle / delayed-ACK family (`Family::Nagle`, off unless `--nagle`: it runs on
//! per-segment and per-timer paths and costs more than 3% of the connection rate,
//! see BENCHMARKS.md):
//! - `timer_start`, `timer_expire_entry`: raw tracepoints on every kernel timer,
//!   filtered on `tcp_delack_timer` (its address from `/proc/kallsyms`);
//! - `tcp_sendmsg_locked` (6.2+) and `tcp_probe`: raw tracepoints on each send and
//!   each segment an established socket receives: Nagle holds and stalls.
//!
//! The programs count their own failures (maps with no room, failed kernel reads) and
//! log the rare ones through aya-log; [`kernel_log`] forwards that log.

pub mod attach;
pub mod events;
pub mod kernel_log;
pub mod maps;
pub mod netns_slots;
pub mod offsets;
pub mod prune;
pub mod rdonly_cast;
pub mod ring;
pub mod table;
pub mod unix;

use std::path::Path;

use aya::{
    Ebpf, EbpfLoader,
    maps::{Array, HashMap, MapData, PerCpuArray, PerCpuHashMap, RingBuf},
};
use collector_common::{
    layout::KERNEL_OFFSETS_SYMBOL,
    nagle::{ConnKey, ConnStats, NAGLE_OFFSETS_SYMBOL, NagleOffsets},
    queue::{AcceptorKey, DropKey, ListenerQueue, QueuedChild, UnixStamp},
    tcp_state::{SlotCounts, SlotKeys, TransitionKey as RawTransitionKey},
    unix::{UNIX_OFFSETS_SYMBOL, UnixConnectKey, UnixConnectStats},
};

use self::{
    kernel_log::KernelLog,
    maps::{map_error, take_map},
};
pub use self::{
    maps::{KernelView, NetTransition, ProgramStats},
    offsets::{KernelInfo, kernel_info},
    table::{Family, PROBES, ProbeSpec},
};
use crate::{kernel::btf_layout::LayoutError, model::ProbeStatus};

/// Test-only: `NAME=ENTRIES[,NAME=ENTRIES]` resizes the named maps, so a privileged
/// test can fill one on purpose. The daemon warns when it is set.
pub const TEST_MAP_ENTRIES_ENV: &str = "SOCKQ_TEST_MAP_ENTRIES";

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
    #[error("the embedded eBPF object is malformed: {0}")]
    Patch(String),
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

/// How to load the probes.
#[derive(Debug, Clone, Copy)]
pub struct LoadOptions {
    pub nagle: bool,
    /// Times blocking Unix connects (the connect entry program, whose syscall
    /// tracepoint slows every syscall on the host).
    pub unix_connect_waits: bool,
    /// Size of the per-connection map of the Nagle family.
    pub conn_track_entries: u32,
}

impl Default for LoadOptions {
    fn default() -> Self {
        Self {
            nagle: false,
            unix_connect_waits: false,
            conn_track_entries: collector_common::nagle::CONNS_MAX_ENTRIES,
        }
    }
}

/// The loaded object and the maps userspace reads.
pub struct Probes {
    // Keeps programs and links alive; dropping it detaches everything.
    _ebpf: Ebpf,
    status: Vec<ProbeStatus>,
    transitions: PerCpuHashMap<MapData, RawTransitionKey, u64>,
    /// The namespaces counted in slots rather than `transitions` (`netns_slots`).
    slot_keys: Array<MapData, SlotKeys>,
    slot_counts: PerCpuArray<MapData, SlotCounts>,
    slots: netns_slots::SlotTable,
    stats: PerCpuArray<MapData, u64>,
    queues: HashMap<MapData, u64, ListenerQueue>,
    queued: HashMap<MapData, u64, QueuedChild>,
    unix_stamps: Array<MapData, UnixStamp>,
    /// Polls until `unix_stamps` is scanned again (`prune`), and the slots in use it
    /// found the last time.
    stamp_scan_countdown: u32,
    slots_in_use: u64,
    /// Listeners `unix_stamps` referred to that the inventory did not list, at the
    /// last scan.
    absent_slot_listeners: std::collections::HashSet<u64>,
    acceptors: HashMap<MapData, AcceptorKey, u64>,
    drops: HashMap<MapData, DropKey, u64>,
    conn_stats: HashMap<MapData, ConnKey, ConnStats>,
    sends: PerCpuArray<MapData, u64>,
    unix_refused: HashMap<MapData, UnixConnectKey, UnixConnectStats>,
    /// Userspace's share of `UNIX_REFUSED`: counts of clients that exited, folded
    /// here (tgid 0) when their entries were removed (`prune_unix`).
    unix_exited: std::collections::HashMap<UnixConnectKey, UnixConnectStats>,
    /// `UNIX_REFUSED` keys that matched no listener at the last poll.
    unix_unmatched: std::collections::HashSet<UnixConnectKey>,
    nagle_on: bool,
    /// Namespaces are keyed by cookie (`KernelOffsets::net_cookie` resolved).
    net_cookies: bool,
    /// Listeners the maps referred to that the last inventory did not list.
    absent_listeners: std::collections::HashSet<u64>,
    /// Accepting threads seen exited, and since when (`CLOCK_MONOTONIC` ns).
    exited_threads: std::collections::HashMap<(u32, u32), u64>,
    drop_reasons: std::collections::HashMap<u32, String>,
    kernel_log: Option<KernelLog>,
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
        let resized = test_map_entries();
        let mut loader = EbpfLoader::new();
        loader
            .override_global(KERNEL_OFFSETS_SYMBOL, offsets, true)
            .override_global(NAGLE_OFFSETS_SYMBOL, &nagle_offsets, true)
            .override_global(UNIX_OFFSETS_SYMBOL, &kernel.unix, true)
            .map_max_entries("CONNS", options.conn_track_entries.max(1));
        for (name, entries) in &resized {
            tracing::warn!("test setting {TEST_MAP_ENTRIES_ENV}: map {name} holds {entries}");
            loader.map_max_entries(name, *entries);
        }
        let cast_call = kernel.struct_reads.cast_call();
        let (object, casts) = rdonly_cast::patch(EBPF_OBJECT, cast_call)
            .map_err(|e| ProbeError::Patch(crate::error_chain(&e)))?;
        tracing::debug!("{casts} bpf_rdonly_cast calls made {cast_call:?}");
        let mut ebpf = loader
            .load(object.bytes())
            .map_err(|source| ProbeError::Load { source })?;
        let kernel_log = kernel_log::init(&mut ebpf);

        // In table order: what attached decides which later probes are needed.
        let mut status: Vec<ProbeStatus> = Vec::with_capacity(PROBES.len());
        let mut programs: Vec<&'static str> = Vec::with_capacity(PROBES.len());
        for spec in &PROBES {
            let s = match not_wanted(spec, kernel, options, &status, &programs) {
                Some(why) => ProbeStatus {
                    name: spec.name,
                    attached: false,
                    detail: why,
                },
                None => {
                    let (s, program) = attach::attach(&mut ebpf, spec, kernel, tracefs_root);
                    programs.extend(program);
                    s
                }
            };
            status.push(s);
        }
        mark_entry(
            &mut ebpf,
            &status,
            "ACCEPT_ENTRY_ON",
            &["sys_enter_accept4", "sys_enter_accept"],
        )?;
        mark_entry(
            &mut ebpf,
            &status,
            "CONNECT_ENTRY_ON",
            &["sys_enter_connect"],
        )?;
        load_oldest_queued(&mut ebpf);
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
        let mut probes = Self::from_loaded(ebpf, status, nagle_offsets.valid != 0, kernel)?;
        probes.kernel_log = kernel_log;
        Ok((probes, events))
    }

    /// The programs' own log, for [`kernel_log::forward`] (once; `None` when it could
    /// not be set up, which was said then).
    pub fn take_kernel_log(&mut self) -> Option<KernelLog> {
        self.kernel_log.take()
    }

    /// Takes the maps userspace reads out of the loaded object.
    fn from_loaded(
        mut ebpf: Ebpf,
        status: Vec<ProbeStatus>,
        nagle_on: bool,
        kernel: &KernelInfo,
    ) -> Result<Self, ProbeError> {
        fn map<T: TryFrom<aya::maps::Map, Error = aya::maps::MapError>>(
            ebpf: &mut Ebpf,
            name: &'static str,
        ) -> Result<T, ProbeError> {
            T::try_from(take_map(ebpf, name)?).map_err(|source| map_error(name, source))
        }
        Ok(Self {
            transitions: map(&mut ebpf, "TRANSITIONS")?,
            slot_keys: map(&mut ebpf, "NETNS_SLOT_KEYS")?,
            slot_counts: map(&mut ebpf, "NETNS_SLOT_COUNTS")?,
            slots: netns_slots::SlotTable::default(),
            stats: map(&mut ebpf, "STATS")?,
            queues: map(&mut ebpf, "LISTENER_QUEUES")?,
            queued: map(&mut ebpf, "QUEUED")?,
            unix_stamps: map(&mut ebpf, "UNIX_STAMPS")?,
            stamp_scan_countdown: 0,
            slots_in_use: 0,
            absent_slot_listeners: std::collections::HashSet::new(),
            acceptors: map(&mut ebpf, "ACCEPTORS")?,
            drops: map(&mut ebpf, "DROP_REASONS")?,
            conn_stats: map(&mut ebpf, "CONN_STATS")?,
            sends: map(&mut ebpf, "SENDS")?,
            unix_refused: map(&mut ebpf, "UNIX_REFUSED")?,
            unix_exited: std::collections::HashMap::new(),
            unix_unmatched: std::collections::HashSet::new(),
            _ebpf: ebpf,
            status,
            nagle_on,
            net_cookies: kernel.offsets.net_cookie != 0,
            absent_listeners: std::collections::HashSet::new(),
            exited_threads: std::collections::HashMap::new(),
            drop_reasons: kernel.drop_reasons.clone(),
            kernel_log: None,
        })
    }
}

/// The program userspace runs to read the oldest wait of a listener's accept queue
/// (never attached).
pub const OLDEST_QUEUED: &str = "oldest_queued";

/// Loads [`OLDEST_QUEUED`]; without it (a kernel that refuses it) there is no oldest
/// wait, said once here.
fn load_oldest_queued(ebpf: &mut Ebpf) {
    let loaded = ebpf
        .program_mut(OLDEST_QUEUED)
        .ok_or_else(|| "missing from the object".to_owned())
        .and_then(|p| <&mut aya::programs::RawTracePoint>::try_from(p).map_err(|e| e.to_string()))
        .and_then(|p| p.load().map_err(|e| crate::error_chain(&e)));
    if let Err(e) = loaded {
        tracing::warn!("no oldest accept-queue wait on this kernel: {OLDEST_QUEUED}: {e}");
    }
}

/// Sets the flag map `name` to whether any of the `entries` probes attached: the
/// exits look in what the entries keep (`ACCEPTING`, `UNIX_CONNECTING`) only then.
fn mark_entry(
    ebpf: &mut Ebpf,
    status: &[ProbeStatus],
    name: &'static str,
    entries: &[&str],
) -> Result<(), ProbeError> {
    let on = status
        .iter()
        .any(|s| s.attached && entries.contains(&s.name));
    let map = ebpf.map_mut(name).ok_or(ProbeError::MissingMap(name))?;
    let mut flag = aya::maps::Array::<_, u32>::try_from(map).map_err(|e| map_error(name, e))?;
    flag.set(0, u32::from(on), 0)
        .map_err(|e| map_error(name, e))
}

/// Why `spec` is not even tried on this kernel with these options, if it is not.
fn not_wanted(
    spec: &ProbeSpec,
    kernel: &KernelInfo,
    options: LoadOptions,
    so_far: &[ProbeStatus],
    programs: &[&str],
) -> Option<String> {
    let attached = |name: &str| so_far.iter().any(|s| s.name == name && s.attached);
    if let Some(r) = spec.replaced_by.iter().find(|r| {
        r.probes.iter().all(|p| attached(p))
            && r.programs.iter().all(|p| programs.contains(p))
            && !(r.wanted_anyway)(&options)
    }) {
        return Some(format!("{NOT_NEEDED}: {}", r.because));
    }
    match (spec.family, &kernel.nagle) {
        (Family::Nagle, _) if !options.nagle => {
            return Some(
                "off by default (per-segment cost); `sockq run --nagle` switches it on".into(),
            );
        }
        (Family::Nagle, Err(why)) => {
            return Some(format!(
                "the Nagle/delayed-ACK probes cannot run here: {why}"
            ));
        }
        _ => {}
    }
    if spec.family == Family::IoUring && kernel.offsets.uring_valid == 0 {
        return Some(
            "no io_uring tracepoints sockq can read here (see the doctor's BTF io_uring \
             fields)"
                .into(),
        );
    }
    if spec.family == Family::UnixConnect && kernel.unix.valid == 0 {
        return Some(
            "the record layout of syscalls:sys_enter_connect / sys_exit_connect is unknown \
             (tracefs not mounted, or no syscall tracepoints)"
                .into(),
        );
    }
    (spec.needs_queue_offsets && kernel.offsets.queue_valid == 0).then(|| {
        "this kernel's BTF lacks a field the accept-queue probes read (`sockq doctor` names it)"
            .into()
    })
}

/// How a probe that is not attached because another one does its work says so.
pub const NOT_NEEDED: &str = "not needed";

/// The map sizes [`TEST_MAP_ENTRIES_ENV`] asks for; malformed pairs are skipped, with a
/// warning.
fn test_map_entries() -> Vec<(String, u32)> {
    std::env::var(TEST_MAP_ENTRIES_ENV)
        .map(|spec| parse_map_entries(&spec))
        .unwrap_or_default()
}

fn parse_map_entries(spec: &str) -> Vec<(String, u32)> {
    spec.split(',')
        .filter(|pair| !pair.trim().is_empty())
        .filter_map(|pair| {
            let parsed = pair
                .split_once('=')
                .and_then(|(name, n)| Some((name.trim().to_owned(), n.trim().parse().ok()?)))
                .filter(|(name, n)| !name.is_empty() && *n > 0);
            if parsed.is_none() {
                tracing::warn!("{TEST_MAP_ENTRIES_ENV}: ignoring {pair:?} (want NAME=ENTRIES)");
            }
            parsed
        })
        .collect()
}

#[cfg(test)]
mod tests {
    #[test]
    fn test_map_sizes_parse_and_skip_nonsense() {
        assert_eq!(
            super::parse_map_entries("LISTENER_QUEUES=8, QUEUED = 16,bad,X=0,=3,Y=z,"),
            vec![("LISTENER_QUEUES".to_owned(), 8), ("QUEUED".to_owned(), 16)]
        );
        assert!(super::parse_map_entries("").is_empty());
    }
}
