//! Per network namespace: the kernel's own TCP counters and the sysctls that govern
//! listeners, read from inside the namespace.
//!
//! Kernel interfaces: `/proc/thread-self/net/netstat` and `/proc/thread-self/net/snmp`
//! (the counters of the reading thread's namespace), and `/proc/sys/net/...` (the
//! sysctls of the namespace of the thread that opens them). Both are read from a
//! thread that entered the namespace ([`Netns::run`]).

use std::path::Path;

use super::{
    InventoryError,
    netns::Netns,
    netstat::{self, Netstat},
};
use crate::model::{NetnsInode, NetnsStats};

/// The counters exported per namespace: ("Section.Name" in the kernel's files, the
/// name sockq uses).
pub const COUNTERS: [(&str, &str); 13] = [
    ("TcpExt.ListenOverflows", "listen_overflows"),
    ("TcpExt.ListenDrops", "listen_drops"),
    ("TcpExt.TCPReqQFullDrop", "tcp_req_q_full_drop"),
    ("TcpExt.TCPReqQFullDoCookies", "tcp_req_q_full_do_cookies"),
    ("TcpExt.SyncookiesSent", "syncookies_sent"),
    ("TcpExt.SyncookiesRecv", "syncookies_recv"),
    ("TcpExt.SyncookiesFailed", "syncookies_failed"),
    ("TcpExt.TCPSynRetrans", "tcp_syn_retrans"),
    ("TcpExt.DelayedACKs", "delayed_acks"),
    ("Tcp.ActiveOpens", "tcp_active_opens"),
    ("Tcp.PassiveOpens", "tcp_passive_opens"),
    ("Tcp.AttemptFails", "tcp_attempt_fails"),
    ("Tcp.EstabResets", "tcp_estab_resets"),
];

/// Reads one namespace's counters and sysctls.
pub fn read_netns_stats(ns: &Netns) -> Result<NetnsStats, InventoryError> {
    let netns = ns.inode();
    ns.run(move || read_current(netns))
}

/// The counters and sysctls of the namespace the calling thread is in (`netns`).
pub fn read_current(netns: NetnsInode) -> Result<NetnsStats, InventoryError> {
    let mut all = read_pairs(Path::new("/proc/thread-self/net/netstat"))?;
    all.extend(read_pairs(Path::new("/proc/thread-self/net/snmp"))?);
    Ok(NetnsStats {
        netns,
        counters: select_counters(&all),
        somaxconn: read_sysctl("/proc/sys/net/core/somaxconn"),
        tcp_max_syn_backlog: read_sysctl("/proc/sys/net/ipv4/tcp_max_syn_backlog"),
        tcp_syncookies: read_sysctl("/proc/sys/net/ipv4/tcp_syncookies"),
        tcp_abort_on_overflow: read_sysctl("/proc/sys/net/ipv4/tcp_abort_on_overflow"),
    })
}

fn read_pairs(path: &Path) -> Result<Netstat, InventoryError> {
    let text = std::fs::read_to_string(path).map_err(|source| InventoryError::Io {
        path: path.into(),
        source,
    })?;
    netstat::parse_netstat(&text).map_err(|source| InventoryError::Netstat {
        path: path.into(),
        source,
    })
}

/// The exported counters present in `all` (a kernel without one simply lacks it).
pub fn select_counters(all: &Netstat) -> std::collections::BTreeMap<String, u64> {
    COUNTERS
        .iter()
        .filter_map(|(kernel, ours)| all.get(*kernel).map(|v| ((*ours).to_owned(), *v)))
        .collect()
}

fn read_sysctl(path: &str) -> Option<u32> {
    std::fs::read_to_string(path).ok()?.trim().parse().ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn selects_known_counters_and_skips_signed_fields() {
        let text = "Tcp: RtoAlgorithm MaxConn ActiveOpens PassiveOpens\n\
                    Tcp: 1 -1 12 7\n\
                    TcpExt: ListenOverflows ListenDrops\n\
                    TcpExt: 3 4\n";
        let all = netstat::parse_netstat(text).expect("parses");
        let c = select_counters(&all);
        assert_eq!(c.get("tcp_active_opens"), Some(&12));
        assert_eq!(c.get("listen_drops"), Some(&4));
        assert!(
            !c.contains_key("syncookies_sent"),
            "absent in the input, absent here"
        );
        assert!(!all.contains_key("Tcp.MaxConn"));
    }

    #[test]
    fn reads_the_host_namespace() {
        let Ok(host) = Netns::host() else { return };
        let stats = read_netns_stats(&host).expect("host namespace");
        let somaxconn = std::fs::read_to_string("/proc/sys/net/core/somaxconn")
            .expect("somaxconn")
            .trim()
            .parse::<u32>()
            .expect("number");
        assert_eq!(stats.somaxconn, Some(somaxconn));
        assert!(stats.counters.contains_key("listen_drops"));
    }
}
