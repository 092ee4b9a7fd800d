//! What sockq knows at one instant: the plain data the inventory, the probes and the
//! exporters exchange. No I/O here.

use std::{collections::BTreeMap, net::IpAddr};

use serde::Serialize;

/// Inode number of a network namespace (`stat -L /proc/PID/ns/net`), the identity
/// the kernel itself uses (`net->ns.inum`).
pub type NetnsInode = u64;

/// A process holding a file descriptor of a listening socket.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Serialize)]
pub struct Owner {
    pub pid: u32,
    /// `/proc/PID/comm` as the kernel holds it. Chosen by whoever runs the process:
    /// escape it wherever it is printed.
    pub comm: String,
}

/// One TCP listening socket as sock_diag reports it, plus its owners.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
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
}

impl Listener {
    /// `ip:port`, with brackets around IPv6 addresses.
    pub fn listen_addr(&self) -> String {
        std::net::SocketAddr::new(self.addr, self.port).to_string()
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
    pub transitions: BTreeMap<TransitionKey, u64>,
    pub events_lost: u64,
    pub probes: Vec<ProbeStatus>,
}
