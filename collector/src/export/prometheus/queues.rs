//! The accept queue as sockq's eBPF programs measured it, per listener: enqueues,
//! depth at enqueue, accepts and their wait, SYN-ACK retransmits, the `listen()`
//! backlog, full-queue episodes; SO_REUSEPORT group sizes; accepts per thread.

use std::collections::BTreeMap;

use super::{
    Family, Labels,
    histogram::{ClassicBuckets, Grid, kernel_histogram},
    listener_labels,
};
use crate::model::{Listener, Snapshot};

/// Threads listed per listener in `sockq_acceptor_accepts_total`; the rest are summed
/// into one `tid="other"` series so a thread-per-connection server cannot blow up
/// the series count.
pub const MAX_ACCEPTORS_PER_LISTENER: usize = 32;

const HELP_FULL: &str = "1 while a full-accept-queue episode is in progress on this listener \
    (queue over its limit, or drops growing), 0 otherwise; see `sockq events`.";
const HELP_GROUP: &str = "Listening sockets sharing this address and port in this namespace: \
    an SO_REUSEPORT group whose shards are reported one by one. Only for groups of two \
    sockets or more.";
const HELP_ENQUEUES: &str = "Connections queued for accept() on this listener since sockq \
    started, counted on the sock:sk_data_ready tracepoint.";
const HELP_FULL_ENQUEUES: &str = "Enqueues after which this listener's accept queue held more \
    than its limit (the kernel's sk_acceptq_is_full): from then on new handshakes are dropped.";
const HELP_MAX_DEPTH: &str = "Deepest accept queue seen right after an enqueue since sockq \
    started (sk_ack_backlog at sock:sk_data_ready).";
const HELP_DEPTH: &str = "Accept queue depth right after each enqueue (sk_ack_backlog at \
    sock:sk_data_ready): catches spikes between scrapes.";
const HELP_ACCEPTS: &str = "Connections accept()/accept4() returned from this listener \
    (syscalls:sys_exit_accept4) and io_uring accepts completed \
    (io_uring:io_uring_complete; not counted: accepts into direct descriptors).";
const HELP_WAIT: &str = "Time each accepted connection waited to be accepted: from its \
    handshake completing (the kernel's own time of it in the child, tcp_sock \
    rcvq_space.time, just before it is queued) to the accept()/accept4() that returned it (syscalls:sys_exit_accept4) or \
    the completion of its io_uring accept (io_uring:io_uring_complete).";
const HELP_SYNACK: &str = "SYN-ACKs this listener retransmitted (tcp:tcp_retransmit_synack): \
    handshakes whose final ACK did not arrive in time.";
const HELP_BACKLOG: &str = "The backlog argument the application passed to listen() \
    (syscalls:sys_exit_listen, from the syscall's registers; sys_enter_listen before 5.15), \
    before the kernel caps it at net.core.somaxconn. Only for listen() calls made while \
    sockq ran.";
const HELP_OLDEST: &str = "Seconds the oldest connection still in this listener's accept queue \
    has waited (the head of the queue, read at each poll); reported while connections are \
    queued.";
const HELP_DROP_REASONS: &str = "Packets dropped by this listener, by skb:kfree_skb drop reason \
    (enum skb_drop_reason; TCP_LISTEN_OVERFLOW is a handshake's final ACK refused by a full \
    accept queue; SYNs refused by a full queue carry no reason and show only in \
    sockq_listen_drops_total).";
const HELP_ACCEPTOR_IMBALANCE: &str = "Accept share across the threads accepting from this \
    listener: max / mean accepts per thread (1 is even).";
const HELP_GROUP_IMBALANCE: &str = "Accept share across the sockets of an SO_REUSEPORT group: \
    max / mean accepts per socket (1 is even; N sockets with one doing all the work give N).";
const HELP_TRUNCATED: &str = "1 when this listener has more accepting threads than \
    sockq_acceptor_accepts_total lists (the rest are summed under tid=\"other\").";
const HELP_ACCEPTOR: &str = "Connections accepted from this listener by one thread (pid, tid, \
    comm of the thread). At most 32 threads per listener; the rest are summed under \
    tid=\"other\".";

pub(super) fn families(snapshot: &Snapshot, classic: ClassicBuckets) -> Vec<Family> {
    let mut full = Family::gauge("sockq_listen_accept_queue_full", HELP_FULL);
    let mut enqueues = Family::counter("sockq_listen_enqueues_total", HELP_ENQUEUES);
    let mut full_enqueues = Family::counter(
        "sockq_listen_accept_queue_full_enqueues_total",
        HELP_FULL_ENQUEUES,
    );
    let mut max_depth = Family::gauge("sockq_listen_accept_queue_max_depth", HELP_MAX_DEPTH);
    let mut depth = Family::histogram("sockq_listen_accept_queue_depth", HELP_DEPTH);
    let mut accepts = Family::counter("sockq_listen_accepts_total", HELP_ACCEPTS);
    let mut wait = Family::histogram("sockq_accept_wait_seconds", HELP_WAIT);
    let mut synack = Family::counter("sockq_listen_synack_retransmits_total", HELP_SYNACK);
    let mut backlog = Family::gauge("sockq_listen_backlog", HELP_BACKLOG);
    let mut oldest = Family::gauge("sockq_listen_oldest_wait_seconds", HELP_OLDEST);
    let mut reasons = Family::counter("sockq_listen_drop_reasons_total", HELP_DROP_REASONS);

    let mut listeners: Vec<_> = snapshot.listeners.iter().collect();
    listeners.sort_by_key(|l| (l.netns, l.addr, l.port, l.inode));
    for l in &listeners {
        if l.is_quiet() {
            // Its series here would all be 0, its backlog matters only once it
            // queues (README: "The series each listener costs").
            continue;
        }
        let id = listener_labels(l);
        full.push(id.clone(), l.queue_full);
        let Some(k) = &l.kernel else { continue };
        if let Some(b) = k.backlog_arg {
            backlog.push(id.clone(), b);
        }
        enqueues.push(id.clone(), k.enqueues);
        full_enqueues.push(id.clone(), k.full_enqueues);
        max_depth.push(id.clone(), k.max_depth);
        accepts.push(id.clone(), k.accepts);
        synack.push(id.clone(), k.synack_retransmits);
        if k.enqueues > 0 {
            depth.push_histogram(id.clone(), kernel_histogram(&k.depth, Grid::Depth, classic));
        }
        if k.accept_wait.count() > 0 {
            let value = kernel_histogram(&k.accept_wait, Grid::Wait, classic);
            wait.push_histogram(id.clone(), value);
        }
        if let Some(w) = k.oldest_wait {
            oldest.push_float(id.clone(), w);
        }
        for (reason, n) in &k.drop_reasons {
            reasons.push(id.with("reason", reason.as_str()), *n);
        }
    }
    let (group, group_imbalance) = group_families(&listeners);
    let (acceptors, acceptor_imbalance, truncated) = acceptor_families(snapshot);
    vec![
        full,
        group,
        enqueues,
        full_enqueues,
        max_depth,
        depth,
        accepts,
        wait,
        synack,
        backlog,
        oldest,
        reasons,
        acceptors,
        acceptor_imbalance,
        truncated,
        group_imbalance,
    ]
}

/// Sockets per SO_REUSEPORT group (address and port in a namespace) and how evenly
/// they share the accepts.
fn group_families(listeners: &[&Listener]) -> (Family, Family) {
    let mut group = Family::gauge("sockq_listen_group_sockets", HELP_GROUP);
    let mut group_imbalance = Family::gauge("sockq_listen_group_imbalance", HELP_GROUP_IMBALANCE);
    // Keyed by the address itself: formatted only for the groups exported.
    let mut groups: BTreeMap<(u64, std::net::IpAddr, u16), (&Listener, Vec<u64>)> = BTreeMap::new();
    for l in listeners {
        groups
            .entry((l.netns, l.addr, l.port))
            .or_insert_with(|| (l, Vec::new()))
            .1
            .push(l.kernel.as_ref().map_or(0, |k| k.accepts));
    }
    for (first, accepts) in groups.into_values() {
        if accepts.len() < 2 {
            // A socket alone on its address is no group (README: "The series each
            // listener costs").
            continue;
        }
        let labels = Labels::shared([
            ("netns", first.netns.to_string()),
            ("listen_addr", first.listen_addr()),
        ]);
        if let Some(ratio) = crate::analysis::pattern::imbalance(&accepts) {
            group_imbalance.push_float(labels.clone(), ratio);
        }
        group.push(labels, accepts.len() as u64);
    }
    (group, group_imbalance)
}

/// Accepts per thread (capped per listener), their imbalance, and the truncation flag.
fn acceptor_families(snapshot: &Snapshot) -> (Family, Family, Family) {
    let mut family = Family::counter("sockq_acceptor_accepts_total", HELP_ACCEPTOR);
    let mut imbalance = Family::gauge("sockq_listen_acceptor_imbalance", HELP_ACCEPTOR_IMBALANCE);
    let mut truncated = Family::gauge("sockq_acceptor_series_truncated", HELP_TRUNCATED);
    for l in &snapshot.listeners {
        let mut threads: Vec<_> = snapshot.acceptors.of(l.inode).iter().collect();
        if threads.is_empty() {
            continue;
        }
        // Busiest first, so the cap keeps the threads that matter.
        threads.sort_by(|a, b| b.accepts.cmp(&a.accepts).then(a.tid.cmp(&b.tid)));
        let id = listener_labels(l);
        let mut other = 0u64;
        for (i, a) in threads.iter().enumerate() {
            if i < MAX_ACCEPTORS_PER_LISTENER {
                family.push(
                    thread_labels(&id, a.pid.to_string(), a.tid.to_string(), &a.comm),
                    a.accepts,
                );
            } else {
                other = other.saturating_add(a.accepts);
            }
        }
        let capped = threads.len() > MAX_ACCEPTORS_PER_LISTENER;
        if capped {
            family.push(thread_labels(&id, String::new(), "other".into(), ""), other);
        }
        truncated.push(id.clone(), capped);
        let counts: Vec<u64> = threads.iter().map(|a| a.accepts).collect();
        if let Some(ratio) = crate::analysis::pattern::imbalance(&counts) {
            imbalance.push_float(id, ratio);
        }
    }
    (family, imbalance, truncated)
}

fn thread_labels(id: &Labels, pid: String, tid: String, comm: &str) -> Labels {
    let mut labels = id.clone();
    labels.push("pid", pid);
    labels.push("tid", tid);
    labels.push("comm", comm);
    labels
}
