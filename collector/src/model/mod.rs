//! What sockq knows at one instant: the plain data the inventory, the probes and the
//! exporters exchange. No I/O here.

use std::{collections::BTreeMap, net::IpAddr, sync::Arc};

use serde::{Deserialize, Serialize};

pub mod api;
pub mod nagle;
pub mod pattern;
pub mod unix;

/// Inode number of a network namespace (`stat -L /proc/PID/ns/net`), the identity
/// the kernel itself uses (`net->ns.inum`).
pub type NetnsInode = u64;

/// A process holding a file descriptor of a listening socket.
///
/// One process holding many sockets appears once per socket: the long, per-process
/// strings (`cmdline`, `cgroup`) are shared between those copies (and between the
/// snapshots that clone them), not duplicated. They serialize as plain strings.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
pub struct Owner {
    pub pid: u32,
    /// `/proc/PID/comm` as the kernel holds it. Chosen by whoever runs the process:
    /// escape it wherever it is printed.
    pub comm: String,
    /// `/proc/PID/cmdline`, arguments joined by spaces; attacker-controlled too. At
    /// most [`Owner::CMDLINE_CAP`] bytes: a longer one is cut at a character boundary
    /// and ends with `…` (U+2026), so a process cannot make each copy of a snapshot
    /// cost what its (unbounded) command line weighs.
    #[serde(default)]
    pub cmdline: Arc<str>,
    /// Effective user name (or uid).
    #[serde(default)]
    pub user: String,
    /// cgroup path.
    #[serde(default)]
    pub cgroup: Arc<str>,
    /// Short container id when the cgroup path names one, else empty.
    #[serde(default)]
    pub container: String,
}

impl Owner {
    /// The most bytes of `cmdline` kept, before the `…` that marks a cut.
    pub const CMDLINE_CAP: usize = 4096;

    /// An owner known only by pid and comm.
    pub fn new(pid: u32, comm: impl Into<String>) -> Self {
        Self {
            pid,
            comm: comm.into(),
            cmdline: Arc::default(),
            user: String::new(),
            cgroup: Arc::default(),
            container: String::new(),
        }
    }
}

/// One TCP listening socket as sock_diag reports it, plus its owners.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Listener {
    pub netns: NetnsInode,
    pub addr: IpAddr,
    pub port: u16,
    /// Socket inode (`socket:[N]` in `/proc/PID/fd`).
    pub inode: u64,
    /// The kernel's socket cookie (`idiag_cookie`), unique while the socket lives.
    pub cookie: u64,
    /// Connections waiting for `accept()` (`ss -lnt` Recv-Q).
    pub accept_queue_len: u32,
    /// The accept queue limit: min(backlog, somaxconn) (`ss -lnt` Send-Q).
    pub accept_queue_limit: u32,
    /// Request sockets (handshakes in progress) attributed to this listener.
    pub syn_queue_len: u32,
    /// The listener's `sk_drops` (`INET_DIAG_SKMEMINFO`, `ss -m` `d<N>`).
    pub drops: u64,
    pub owners: Vec<Owner>,
    /// What the eBPF programs measured on this listener, when they are attached.
    #[serde(default)]
    pub kernel: Option<ListenerKernelStats>,
    /// A full-accept-queue episode is in progress (see `episodes`).
    #[serde(default)]
    pub queue_full: bool,
}

impl Listener {
    /// A listener on 127.0.0.1 with an empty queue of limit 128, no owners and no
    /// kernel statistics: the fixture unit tests start from.
    #[cfg(test)]
    pub fn loopback_for_test(netns: NetnsInode, port: u16, inode: u64) -> Self {
        Self {
            netns,
            addr: IpAddr::V4(std::net::Ipv4Addr::LOCALHOST),
            port,
            inode,
            cookie: 0,
            accept_queue_len: 0,
            accept_queue_limit: 128,
            syn_queue_len: 0,
            drops: 0,
            owners: Vec::new(),
            kernel: None,
            queue_full: false,
        }
    }

    /// Nothing has happened on this listener that sockq can see: its queues are
    /// empty, it never dropped, and the probes counted nothing on it (no enqueue,
    /// accept or SYN-ACK retransmit since sockq started). The exposition gives a quiet
    /// listener only its info and limit series: on a host with thousands of idle
    /// listeners their zeros would be most of the body. A listener stops being quiet
    /// at its first connection and, with the probes attached, never becomes quiet
    /// again (their counters only grow).
    pub fn is_quiet(&self) -> bool {
        self.accept_queue_len == 0
            && self.syn_queue_len == 0
            && self.drops == 0
            && !self.queue_full
            && self.kernel.as_ref().is_none_or(|k| {
                k.enqueues == 0
                    && k.full_enqueues == 0
                    && k.max_depth == 0
                    && k.accepts == 0
                    && k.synack_retransmits == 0
                    && k.drop_reasons.values().all(|&n| n == 0)
            })
    }

    /// `ip:port`, with brackets around IPv6 addresses.
    pub fn listen_addr(&self) -> String {
        std::net::SocketAddr::new(self.addr, self.port).to_string()
    }
}

/// Counts per bucket of a histogram. `bounds[i]` is bucket i's upper bound
/// (inclusive); `counts` has one more entry than `bounds`, for values above the last
/// bound. Not cumulative: exporters accumulate.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct Histogram {
    pub bounds: Vec<f64>,
    pub counts: Vec<u64>,
    pub sum: f64,
}

impl Histogram {
    pub fn count(&self) -> u64 {
        self.counts.iter().sum()
    }

    /// The smallest bucket bound below which at least `q` of the observations fall
    /// (`None` for an empty histogram, +Inf when it is in the overflow bucket).
    pub fn quantile_bound(&self, q: f64) -> Option<f64> {
        let total = self.count();
        if total == 0 {
            return None;
        }
        let wanted = (q.clamp(0.0, 1.0) * total as f64).ceil().max(1.0) as u64;
        let mut seen = 0;
        for (i, c) in self.counts.iter().enumerate() {
            seen += c;
            if seen >= wanted {
                return Some(self.bounds.get(i).copied().unwrap_or(f64::INFINITY));
            }
        }
        Some(f64::INFINITY)
    }
}

/// What sockq's eBPF programs measured on one listener since they were loaded.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct ListenerKernelStats {
    /// Connections queued for `accept()` (`sock:sk_data_ready` on the listener).
    pub enqueues: u64,
    /// Enqueues after which the queue was over its limit: the queue was full.
    pub full_enqueues: u64,
    /// Deepest accept queue seen at an enqueue.
    pub max_depth: u32,
    /// Accept queue depth right after each enqueue.
    pub depth: Histogram,
    /// Connections taken by `accept()`/`accept4()` whose queueing was seen.
    pub accepts: u64,
    /// Seconds from enqueue (handshake complete) to the `accept()` that returned it.
    pub accept_wait: Histogram,
    /// SYN-ACKs the listener retransmitted (`tcp:tcp_retransmit_synack`).
    pub synack_retransmits: u64,
    /// The backlog the application passed to `listen()`, when sockq saw the call.
    pub backlog_arg: Option<u32>,
    /// Seconds the oldest connection still in the accept queue has waited, when
    /// known.
    pub oldest_wait: Option<f64>,
    /// Sampled accepted connections read only by the accepting thread, by one other
    /// thread, by several threads (`sock:sock_recv_length`; see `pattern`).
    pub read_by_acceptor: u64,
    pub read_by_one_other: u64,
    pub read_by_several: u64,
    /// Packets the listener dropped by `skb:kfree_skb` reason (`TCP_LISTEN_OVERFLOW`:
    /// a handshake's final ACK refused by a full accept queue).
    pub drop_reasons: BTreeMap<String, u64>,
}

/// Accepts by one thread on one listener.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
pub struct Acceptor {
    /// Socket inode of the listener.
    pub socket: u64,
    pub pid: u32,
    pub tid: u32,
    /// The thread's name; attacker-controlled.
    pub comm: String,
    pub accepts: u64,
    /// Scheduler state at the last poll (`R`, `S`, `D`, ...; `/proc/PID/task/TID/stat`).
    pub state: String,
    /// Where the thread sleeps in the kernel (`/proc/PID/task/TID/wchan`), if it does.
    pub wchan: String,
}

/// Every accepting thread, sorted by listener socket: the order is the index by
/// listener ([`Acceptors::of`] is a binary search), built once per snapshot.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(from = "Vec<Acceptor>", into = "Vec<Acceptor>")]
pub struct Acceptors(Vec<Acceptor>);

impl Acceptors {
    /// The threads that accepted from listener `socket`.
    pub fn of(&self, socket: u64) -> &[Acceptor] {
        let start = self.0.partition_point(|a| a.socket < socket);
        let end = self.0.partition_point(|a| a.socket <= socket);
        &self.0[start..end]
    }

    pub fn all(&self) -> &[Acceptor] {
        &self.0
    }
}

impl From<Vec<Acceptor>> for Acceptors {
    fn from(mut threads: Vec<Acceptor>) -> Self {
        threads.sort();
        Self(threads)
    }
}

impl From<Acceptors> for Vec<Acceptor> {
    fn from(a: Acceptors) -> Self {
        a.0
    }
}

/// TCP states with the kernel's numbering (`include/net/tcp_states.h`).
pub fn tcp_state_name(state: u8) -> &'static str {
    match state {
        1 => "ESTABLISHED",
        2 => "SYN_SENT",
        3 => "SYN_RECV",
        4 => "FIN_WAIT1",
        5 => "FIN_WAIT2",
        6 => "TIME_WAIT",
        7 => "CLOSE",
        8 => "CLOSE_WAIT",
        9 => "LAST_ACK",
        10 => "LISTEN",
        11 => "CLOSING",
        12 => "NEW_SYN_RECV",
        13 => "BOUND_INACTIVE",
        _ => "UNKNOWN",
    }
}

/// Count of TCP state transitions in one network namespace.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize)]
pub struct TransitionKey {
    pub netns: NetnsInode,
    pub from: u8,
    pub to: u8,
}

/// Whether each probe is attached, and by which mechanism.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct ProbeStatus {
    pub name: &'static str,
    pub attached: bool,
    /// "raw_tracepoint", "tracepoint", or why it is not attached.
    pub detail: String,
}

/// Everything an exporter needs for one scrape.
#[derive(Debug, Clone, Default, Serialize)]
pub struct Snapshot {
    pub listeners: Vec<Listener>,
    /// Unix stream and seqpacket listeners.
    pub unix_listeners: Vec<unix::UnixListener>,
    pub transitions: BTreeMap<TransitionKey, u64>,
    pub events_lost: u64,
    pub probes: Vec<ProbeStatus>,
    /// Threads that accepted connections, by listener.
    pub acceptors: Acceptors,
    /// Per-namespace kernel counters and sysctls.
    pub netns: Vec<NetnsStats>,
    /// Execution pattern per listener socket inode.
    pub patterns: BTreeMap<u64, pattern::PatternReport>,
    /// Nagle holds, delayed ACKs and stalls per (netns, listener, process).
    pub nagle: Vec<nagle::NagleSeries>,
    /// `sendmsg` calls host-wide by mode (Nagle, TCP_NODELAY, TCP_CORK), when the
    /// Nagle family runs.
    pub tcp_sends: Option<[u64; 3]>,
    /// Polling mode (no eBPF probes) and why.
    pub polling: Option<String>,
    /// Records read from the eBPF ring buffer: listener, queue-full, stall events.
    pub ring_events: [u64; 3],
    /// How the daemon itself is doing.
    pub health: Health,
    /// Occupancy of the in-kernel maps (empty without probes).
    pub maps: Vec<MapOccupancy>,
    /// `events_lost` by cause: `ring_buffer_full`, `stall_queue_full`,
    /// `map_full:<MAP>` (empty without probes).
    pub lost_by_cause: Vec<(&'static str, u64)>,
    /// Kernel reads the programs could not make (wrong BTF offsets, or memory gone).
    pub read_errors: u64,
}

/// Entries and capacity of one in-kernel map, after the poll's pruning.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub struct MapOccupancy {
    pub map: &'static str,
    pub entries: u64,
    pub capacity: u64,
}

/// The daemon's own health, for `sockq_poll_*` and `sockq_inventory_*`.
#[derive(Debug, Clone, Default, Serialize)]
pub struct Health {
    /// How long each poll (inventory, map reads, analyses) took, seconds.
    pub poll_seconds: Histogram,
    /// Unix time of the last inventory that could read our own namespace; `None`
    /// before the first.
    pub last_inventory_unix: Option<f64>,
    /// Namespaces the last inventory could not read, by reason
    /// ([`crate::inventory::InventoryError::reason`] labels).
    pub skipped_netns: BTreeMap<&'static str, u64>,
    /// Listeners of skipped namespaces (other than vanished ones) reported as last
    /// seen rather than dropped.
    pub carried_listeners: u64,
    /// Listeners the last inventory found that `--listeners-include` /
    /// `--listeners-exclude` leave out of this snapshot.
    pub excluded_listeners: u64,
    /// An inventory older than this (seconds) is stale: three poll intervals.
    pub stale_after_seconds: f64,
}

/// One network namespace's own TCP counters and listener-related sysctls.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct NetnsStats {
    pub netns: NetnsInode,
    /// Counters from the namespace's `/proc/net/netstat` and `/proc/net/snmp`, by
    /// sockq's snake_case name (`listen_drops` for TcpExt ListenDrops).
    pub counters: BTreeMap<String, u64>,
    pub somaxconn: Option<u32>,
    pub tcp_max_syn_backlog: Option<u32>,
    pub tcp_syncookies: Option<u32>,
    pub tcp_abort_on_overflow: Option<u32>,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn shared_owner_strings_serialize_as_plain_strings() {
        let owner = Owner {
            cmdline: Arc::from("srv -p 80"),
            cgroup: Arc::from("/system.slice/srv.service"),
            ..Owner::new(7, "srv")
        };
        let json = serde_json::to_value(&owner).expect("serialize");
        assert_eq!(
            json,
            serde_json::json!({
                "pid": 7,
                "comm": "srv",
                "cmdline": "srv -p 80",
                "user": "",
                "cgroup": "/system.slice/srv.service",
                "container": "",
            })
        );
        let back: Owner = serde_json::from_value(json).expect("deserialize");
        assert_eq!(back, owner);
        let minimal: Owner = serde_json::from_str(r#"{"pid":1,"comm":"x"}"#).expect("defaults");
        assert_eq!(minimal, Owner::new(1, "x"));
    }
}
