//! Per network namespace: the kernel's own TCP counters (`/proc/net/netstat`,
//! `/proc/net/snmp`) and the sysctls that govern listeners, labelled by `netns` only.

use super::Family;
use crate::model::Snapshot;

/// sockq's counter name -> (metric name, help).
const COUNTERS: [(&str, &str, &str); 13] = [
    (
        "listen_overflows",
        "sockq_netstat_listen_overflows_total",
        "TcpExt ListenOverflows of this namespace (/proc/net/netstat): handshakes that completed while the listener's accept queue was full.",
    ),
    (
        "listen_drops",
        "sockq_netstat_listen_drops_total",
        "TcpExt ListenDrops of this namespace (/proc/net/netstat): SYNs and handshake ACKs dropped by listeners, the sum of their sk_drops.",
    ),
    (
        "tcp_req_q_full_drop",
        "sockq_netstat_tcp_req_q_full_drop_total",
        "TcpExt TCPReqQFullDrop (/proc/net/netstat): SYNs dropped because the SYN queue was full and SYN cookies were off.",
    ),
    (
        "tcp_req_q_full_do_cookies",
        "sockq_netstat_tcp_req_q_full_do_cookies_total",
        "TcpExt TCPReqQFullDoCookies (/proc/net/netstat): SYNs answered with a SYN cookie because the SYN queue was full.",
    ),
    (
        "syncookies_sent",
        "sockq_netstat_syncookies_sent_total",
        "TcpExt SyncookiesSent (/proc/net/netstat): SYN cookies sent.",
    ),
    (
        "syncookies_recv",
        "sockq_netstat_syncookies_recv_total",
        "TcpExt SyncookiesRecv (/proc/net/netstat): valid SYN cookies received back.",
    ),
    (
        "syncookies_failed",
        "sockq_netstat_syncookies_failed_total",
        "TcpExt SyncookiesFailed (/proc/net/netstat): ACKs whose SYN cookie did not validate.",
    ),
    (
        "tcp_syn_retrans",
        "sockq_netstat_tcp_syn_retrans_total",
        "TcpExt TCPSynRetrans (/proc/net/netstat): SYN and SYN-ACK retransmits.",
    ),
    (
        "delayed_acks",
        "sockq_netstat_delayed_acks_total",
        "TcpExt DelayedACKs (/proc/net/netstat): delayed ACKs sent when their timer fired.",
    ),
    (
        "tcp_active_opens",
        "sockq_netstat_tcp_active_opens_total",
        "Tcp ActiveOpens (/proc/net/snmp): connections opened by connect() (CLOSE -> SYN_SENT).",
    ),
    (
        "tcp_passive_opens",
        "sockq_netstat_tcp_passive_opens_total",
        "Tcp PassiveOpens (/proc/net/snmp): connections created by listeners.",
    ),
    (
        "tcp_attempt_fails",
        "sockq_netstat_tcp_attempt_fails_total",
        "Tcp AttemptFails (/proc/net/snmp): connection attempts that failed.",
    ),
    (
        "tcp_estab_resets",
        "sockq_netstat_tcp_estab_resets_total",
        "Tcp EstabResets (/proc/net/snmp): established connections reset.",
    ),
];

pub(super) fn families(snapshot: &Snapshot) -> Vec<Family> {
    let mut families: Vec<Family> = COUNTERS
        .iter()
        .map(|(_, name, help)| Family::counter(name, help))
        .collect();
    let mut somaxconn = Family::gauge(
        "sockq_netns_somaxconn",
        "net.core.somaxconn of this namespace: the cap on every listen() backlog.",
    );
    let mut syn_backlog = Family::gauge(
        "sockq_netns_tcp_max_syn_backlog",
        "net.ipv4.tcp_max_syn_backlog of this namespace: bounds the SYN queue.",
    );
    let mut syncookies = Family::gauge(
        "sockq_netns_tcp_syncookies",
        "net.ipv4.tcp_syncookies of this namespace: 0 off, 1 when the SYN queue overflows, 2 always.",
    );
    let mut abort = Family::gauge(
        "sockq_netns_tcp_abort_on_overflow",
        "net.ipv4.tcp_abort_on_overflow of this namespace: 1 resets connections a full accept queue cannot take.",
    );
    let mut namespaces: Vec<_> = snapshot.netns.iter().collect();
    namespaces.sort_by_key(|n| n.netns);
    for ns in namespaces {
        let labels = || vec![("netns", ns.netns.to_string())];
        for ((key, _, _), family) in COUNTERS.iter().zip(families.iter_mut()) {
            if let Some(v) = ns.counters.get(*key) {
                family.push(labels(), *v);
            }
        }
        for (value, family) in [
            (ns.somaxconn, &mut somaxconn),
            (ns.tcp_max_syn_backlog, &mut syn_backlog),
            (ns.tcp_syncookies, &mut syncookies),
            (ns.tcp_abort_on_overflow, &mut abort),
        ] {
            if let Some(v) = value {
                family.push(labels(), v);
            }
        }
    }
    families.extend([somaxconn, syn_backlog, syncookies, abort]);
    families
}
