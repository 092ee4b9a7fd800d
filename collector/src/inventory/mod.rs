//! Listener inventory: every TCP listening socket of the host (and every Unix stream
//! and seqpacket one), in every network namespace, with its queues, drops and owning
//! processes.
//!
//! Kernel interfaces, by submodule:
//! - [`netns`]: `/proc/PID/ns/net`, `/run/netns/*` (nsfs) and `setns(2)`;
//! - [`sock_diag`]: `NETLINK_SOCK_DIAG` / `inet_diag` dumps of TCP sockets;
//! - [`unix_diag`]: `unix_diag` dumps of Unix stream and seqpacket listeners;
//! - [`owners`]: `/proc/PID/fd/*` symlinks (`socket:[INODE]`) and `/proc/PID/comm`;
//! - [`netstat`]: `/proc/PID/net/netstat` (per-namespace SNMP extension counters).
//!
//! The entry point is [`scan`]; [`scan_netns`] does the same for one namespace.

pub mod netns;
pub mod netns_stats;
pub mod netstat;
pub mod owners;
pub mod process;
pub mod sock_diag;
pub mod threads;
pub mod unix_diag;

use std::{collections::HashSet, path::PathBuf};

use crate::model::{Listener, NetnsInode, NetnsStats, unix::UnixListener};

pub use netns::Netns;
pub use netstat::{Netstat, NetstatParseError, parse_netstat, read_netstat};
pub use sock_diag::{DiagListener, DiagRequest, DiagSocket};

/// Everything that can go wrong while taking the inventory.
#[derive(Debug, thiserror::Error)]
pub enum InventoryError {
    /// A procfs / nsfs file or directory could not be read.
    #[error("cannot read {}", path.display())]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },

    /// No path of the namespace could still be opened (its processes exited and
    /// it is not bind-mounted), or a PID was reused and now points elsewhere.
    #[error("network namespace {netns} is gone")]
    NetnsGone { netns: NetnsInode },

    /// `setns(2)` into the namespace failed; `EPERM` means sockq lacks
    /// `CAP_SYS_ADMIN` (run it as root).
    #[error("cannot enter network namespace {netns} ({}): setns failed", path.display())]
    Setns {
        netns: NetnsInode,
        path: PathBuf,
        #[source]
        source: nix::Error,
    },

    /// The helper thread that enters a namespace could not be started or died.
    #[error("helper thread for network namespace {netns} failed")]
    NetnsThread {
        netns: NetnsInode,
        #[source]
        source: Option<std::io::Error>,
    },

    /// A netlink socket operation failed (`what` says which one).
    #[error("sock_diag netlink: {what}")]
    Netlink {
        what: &'static str,
        #[source]
        source: std::io::Error,
    },

    /// The kernel answered a dump request with `NLMSG_ERROR`.
    #[error("kernel rejected the sock_diag dump of {request}")]
    DumpRejected {
        request: &'static str,
        #[source]
        source: std::io::Error,
    },

    /// A message of a sock_diag dump could not be decoded.
    #[error("malformed sock_diag answer to the dump of {request}")]
    Decode {
        request: &'static str,
        #[source]
        source: netlink_packet_core::DecodeError,
    },

    /// `/proc/PID/net/netstat` did not have the expected format.
    #[error("cannot parse {}", path.display())]
    Netstat {
        path: PathBuf,
        #[source]
        source: NetstatParseError,
    },
}

impl InventoryError {
    /// A short label for metrics: why a namespace was skipped.
    pub fn reason(&self) -> &'static str {
        match self {
            _ if self.is_vanished() => "vanished",
            Self::Setns { source, .. } if *source == nix::Error::EPERM => "permission",
            Self::Setns { .. } | Self::NetnsThread { .. } => "enter_failed",
            Self::Io { .. } => "io",
            Self::Netlink { .. } | Self::DumpRejected { .. } | Self::Decode { .. } => "sock_diag",
            Self::NetnsGone { .. } | Self::Netstat { .. } => "netstat",
        }
    }

    /// True when the error only means that the namespace (or the process through
    /// which it was reached) disappeared during the scan.
    pub fn is_vanished(&self) -> bool {
        match self {
            Self::NetnsGone { .. } => true,
            Self::Io { source, .. } => netns::is_vanished_io(source),
            _ => false,
        }
    }
}

/// One namespace that [`scan_report`] skipped, and why.
#[derive(Debug)]
pub struct SkippedNetns {
    pub netns: NetnsInode,
    pub error: InventoryError,
}

/// The result of [`scan_report`]: the listeners and each namespace's own counters,
/// plus the namespaces that could not be inspected (e.g. all of them but our own when
/// not running as root).
#[derive(Debug, Default)]
pub struct ScanReport {
    /// Sorted by (netns, port, addr, inode).
    pub listeners: Vec<Listener>,
    /// Unix stream and seqpacket listeners, sorted by (netns, name, inode).
    pub unix_listeners: Vec<UnixListener>,
    /// Counters and sysctls of each namespace that could be read.
    pub netns: Vec<NetnsStats>,
    pub skipped: Vec<SkippedNetns>,
    /// Every namespace read, with its cookie where the kernel has one.
    pub visited: Vec<VisitedNetns>,
    /// Why Unix listeners could not be dumped (the first namespace that failed), if
    /// one could not: kernels without `CONFIG_UNIX_DIAG` (or whose `unix_diag`
    /// module cannot be loaded) answer `ENOENT`. TCP listeners are listed anyway.
    pub unix_error: Option<String>,
}

/// A namespace the inventory read.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct VisitedNetns {
    pub netns: NetnsInode,
    /// `SO_NETNS_COOKIE`; `None` before Linux 5.14.
    pub cookie: Option<u64>,
}

/// Every TCP listener in every network namespace of the host, sorted by
/// (netns, port, addr, inode), with SYN queue lengths and owners filled in.
///
/// A namespace other than our own that vanishes or cannot be entered is skipped
/// (logged at debug level); a failure in our own namespace (`/proc/self/ns/net`)
/// is returned.
pub fn scan() -> Result<Vec<Listener>, InventoryError> {
    scan_report().map(|report| report.listeners)
}

/// Like [`scan`], but also reads each namespace's counters in the same visit (one
/// `setns` per namespace) and tells which namespaces were skipped and why.
pub fn scan_report() -> Result<ScanReport, InventoryError> {
    let mut report = ScanReport::default();
    for (index, ns) in host_first_namespaces()?.iter().enumerate() {
        match visit(ns) {
            Ok(Visit {
                listeners,
                unix_listeners,
                stats,
                cookie,
            }) => {
                let unix_listeners = match unix_listeners {
                    Ok(l) => l,
                    Err(e) => {
                        tracing::debug!(
                            netns = ns.inode(),
                            "no Unix listeners: {}",
                            crate::error_chain(&e)
                        );
                        report
                            .unix_error
                            .get_or_insert_with(|| crate::error_chain(&e));
                        Vec::new()
                    }
                };
                report.visited.push(VisitedNetns {
                    netns: ns.inode(),
                    cookie,
                });
                report.listeners.extend(listeners);
                report.unix_listeners.extend(unix_listeners);
                match stats {
                    Ok(stats) => report.netns.push(stats),
                    Err(e) => tracing::debug!(
                        netns = ns.inode(),
                        "no namespace counters: {}",
                        crate::error_chain(&e)
                    ),
                }
            }
            Err(error) if index == 0 => return Err(error),
            Err(error) => {
                tracing::debug!(netns = ns.inode(), error = %crate::error_chain(&error), "skipping network namespace");
                report.skipped.push(SkippedNetns {
                    netns: ns.inode(),
                    error,
                });
            }
        }
    }
    fill_owners(&mut report.listeners, &mut report.unix_listeners);
    sort_listeners(&mut report.listeners);
    unix_diag::sort(&mut report.unix_listeners);
    Ok(report)
}

/// Every network namespace of the host, ours first whatever the enumeration found.
pub fn host_first_namespaces() -> Result<Vec<Netns>, InventoryError> {
    let host = Netns::host()?;
    let mut namespaces = netns::enumerate(host.dev())?;
    namespaces.retain(|ns| ns.inode() != host.inode());
    namespaces.insert(0, host);
    Ok(namespaces)
}

/// What one visit of a namespace read.
struct Visit {
    listeners: Vec<Listener>,
    /// Its own result: a kernel without `unix_diag` still has its TCP listeners.
    unix_listeners: Result<Vec<UnixListener>, InventoryError>,
    stats: Result<NetnsStats, InventoryError>,
    cookie: Option<u64>,
}

/// One namespace, entered once: its TCP and Unix listeners (no owners yet), its
/// counters and its cookie.
fn visit(ns: &Netns) -> Result<Visit, InventoryError> {
    let netns = ns.inode();
    let (mut socket, stats) =
        ns.run(move || Ok((DiagSocket::open()?, netns_stats::read_current(netns))))?;
    let cookie = socket.netns_cookie();
    let listeners = listeners_from(netns, &mut socket)?;
    Ok(Visit {
        listeners,
        unix_listeners: socket.unix_listeners(netns),
        stats,
        cookie,
    })
}

/// The listeners of one namespace, with SYN queue lengths and owners, sorted like
/// [`scan`]'s.
pub fn scan_netns(ns: &Netns) -> Result<Vec<Listener>, InventoryError> {
    let mut listeners = scan_netns_sockets(ns)?;
    fill_owners(&mut listeners, &mut []);
    sort_listeners(&mut listeners);
    Ok(listeners)
}

/// The listeners of one namespace with their SYN queue lengths, but no owners.
pub fn scan_netns_sockets(ns: &Netns) -> Result<Vec<Listener>, InventoryError> {
    // Only the socket is created inside the namespace; it stays bound to it, so the
    // dumps run on the calling thread.
    listeners_from(ns.inode(), &mut ns.run(DiagSocket::open)?)
}

/// The listeners a sock_diag socket of namespace `netns` dumps, with SYN queues.
fn listeners_from(
    netns: NetnsInode,
    socket: &mut DiagSocket,
) -> Result<Vec<Listener>, InventoryError> {
    let diag_listeners = socket.listeners()?;
    // Taken after the listeners: a listener opened in between has no entry here,
    // and its first requests are attributed to a wildcard listener or dropped.
    let requests = socket.requests()?;
    let syn_queues = sock_diag::count_syn_queues(&diag_listeners, &requests);
    Ok(diag_listeners
        .into_iter()
        .zip(syn_queues)
        .map(|(l, syn_queue_len)| Listener {
            netns,
            addr: l.addr,
            port: l.port,
            inode: l.inode,
            cookie: l.cookie,
            accept_queue_len: l.accept_queue_len,
            accept_queue_limit: l.accept_queue_limit,
            syn_queue_len,
            drops: l.drops,
            owners: Vec::new(),
            kernel: None,
            queue_full: false,
        })
        .collect())
}

/// For each connection `(netns, local, remote)`, the process holding the other end
/// when it is on this host: the socket in the same namespace whose local address is
/// `remote` and whose remote address is `local`. One sock_diag dump per namespace
/// and one /proc walk for the whole batch.
pub fn local_peers(
    connections: &[(u64, std::net::SocketAddr, std::net::SocketAddr)],
) -> Vec<Option<crate::model::Owner>> {
    let mut dumps: std::collections::HashMap<
        u64,
        Vec<(std::net::SocketAddr, std::net::SocketAddr, u64)>,
    > = std::collections::HashMap::new();
    if let Ok(host) = Netns::host()
        && let Ok(all) = netns::enumerate(host.dev())
    {
        let wanted: HashSet<u64> = connections.iter().map(|c| c.0).collect();
        for ns in all.iter().chain(std::iter::once(&host)) {
            if !wanted.contains(&ns.inode()) || dumps.contains_key(&ns.inode()) {
                continue;
            }
            let dump = ns
                .run(DiagSocket::open)
                .and_then(|mut socket| socket.connections());
            match dump {
                Ok(conns) => {
                    dumps.insert(ns.inode(), conns);
                }
                Err(e) => {
                    tracing::debug!(netns = ns.inode(), error = %crate::error_chain(&e), "no connection dump")
                }
            }
        }
    }
    let peer_inodes: Vec<Option<u64>> = connections
        .iter()
        .map(|(netns, local, remote)| {
            dumps.get(netns)?.iter().find_map(|(l, r, inode)| {
                (same_endpoint(l, remote) && same_endpoint(r, local) && *inode != 0)
                    .then_some(*inode)
            })
        })
        .collect();
    let wanted: HashSet<u64> = peer_inodes.iter().flatten().copied().collect();
    let owners = owners::socket_owners(&wanted);
    peer_inodes
        .into_iter()
        .map(|inode| owners.get(&inode?)?.first().cloned())
        .collect()
}

/// Equal addresses, where sock_diag may report an IPv4 peer of an IPv6 socket as
/// IPv4-mapped.
fn same_endpoint(a: &std::net::SocketAddr, b: &std::net::SocketAddr) -> bool {
    a.port() == b.port() && a.ip().to_canonical() == b.ip().to_canonical()
}

/// Owners of TCP and Unix listeners, from one /proc walk.
fn fill_owners(listeners: &mut [Listener], unix_listeners: &mut [UnixListener]) {
    let inodes: HashSet<u64> = listeners
        .iter()
        .map(|l| l.inode)
        .chain(unix_listeners.iter().map(|l| l.inode))
        .filter(|&i| i != 0)
        .collect();
    let owners = owners::socket_owners(&inodes);
    for listener in listeners.iter_mut() {
        if let Some(found) = owners.get(&listener.inode) {
            listener.owners = found.clone();
        }
    }
    for listener in unix_listeners.iter_mut() {
        if let Some(found) = owners.get(&listener.inode) {
            listener.owners = found.clone();
        }
    }
}

/// The inventory's order: (netns, port, addr, inode).
pub fn sort_listeners(listeners: &mut [Listener]) {
    listeners.sort_by(|a, b| {
        (a.netns, a.port, a.addr, a.inode).cmp(&(b.netns, b.port, b.addr, b.inode))
    });
}

#[cfg(test)]
mod tests {
    use std::net::{IpAddr, Ipv4Addr, TcpListener};

    use super::*;

    fn is_root() -> bool {
        nix::unistd::geteuid().is_root()
    }

    #[test]
    fn scan_finds_our_listener() {
        if !is_root() {
            eprintln!("scan_finds_our_listener: skipped, needs root");
            return;
        }
        let socket = TcpListener::bind((Ipv4Addr::LOCALHOST, 0)).expect("bind");
        let port = socket.local_addr().expect("local_addr").port();
        let listeners = scan().expect("scan");
        let host = Netns::host().expect("host netns").inode();
        let ours = listeners
            .iter()
            .find(|l| {
                l.netns == host && l.port == port && l.addr == IpAddr::V4(Ipv4Addr::LOCALHOST)
            })
            .expect("our listener is in the inventory");
        assert_ne!(ours.inode, 0);
        assert_ne!(ours.cookie, 0);
        assert_eq!(ours.accept_queue_len, 0);
        assert_eq!(ours.syn_queue_len, 0);
        // std listens with a backlog of 128; the kernel caps it at somaxconn.
        let somaxconn: u32 = std::fs::read_to_string("/proc/sys/net/core/somaxconn")
            .expect("somaxconn")
            .trim()
            .parse()
            .expect("somaxconn number");
        assert_eq!(ours.accept_queue_limit, 128.min(somaxconn));
        let pid = std::process::id();
        assert!(
            ours.owners
                .iter()
                .any(|o| o.pid == pid && !o.comm.is_empty()),
            "owners {:?} lack our pid {pid}",
            ours.owners
        );
        let sorted = listeners.windows(2).all(|w| {
            (w[0].netns, w[0].port, w[0].addr, w[0].inode)
                <= (w[1].netns, w[1].port, w[1].addr, w[1].inode)
        });
        assert!(sorted);
        drop(socket);
    }

    #[test]
    fn scan_netns_of_host_sees_syn_queue() {
        if !is_root() {
            eprintln!("scan_netns_of_host_sees_syn_queue: skipped, needs root");
            return;
        }
        // With TCP_DEFER_ACCEPT, a connection whose client sends no data stays a
        // request socket (SYN_RECV) after the handshake: a SYN queue entry that a
        // test can create without a firewall.
        let socket = TcpListener::bind((Ipv4Addr::LOCALHOST, 0)).expect("bind");
        let seconds: libc::c_int = 30;
        // SAFETY: the descriptor is a live TCP socket owned by `socket`, and the
        // option value points to a c_int of the length passed.
        let rc = unsafe {
            libc::setsockopt(
                std::os::fd::AsRawFd::as_raw_fd(&socket),
                libc::IPPROTO_TCP,
                libc::TCP_DEFER_ACCEPT,
                std::ptr::from_ref(&seconds).cast(),
                std::mem::size_of::<libc::c_int>() as libc::socklen_t,
            )
        };
        assert_eq!(
            rc,
            0,
            "TCP_DEFER_ACCEPT: {}",
            std::io::Error::last_os_error()
        );
        let port = socket.local_addr().expect("local_addr").port();
        let _client = std::net::TcpStream::connect((Ipv4Addr::LOCALHOST, port)).expect("connect");
        let host = Netns::host().expect("host netns");
        let mut found = None;
        for _ in 0..50 {
            let listeners = scan_netns(&host).expect("scan_netns");
            found = listeners.into_iter().find(|l| l.port == port);
            if found.as_ref().is_some_and(|l| l.syn_queue_len == 1) {
                break;
            }
            std::thread::sleep(std::time::Duration::from_millis(20));
        }
        let ours = found.expect("listener found");
        assert_eq!(ours.syn_queue_len, 1);
        assert_eq!(ours.accept_queue_len, 0);
    }
}
