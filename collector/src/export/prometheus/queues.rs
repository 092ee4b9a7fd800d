//! The accept queue as sockq's eBPF programs measured it, per listener: enqueues,
//! depth at enqueue, accepts and their wait, SYN-ACK retransmits, the `listen()`
//! backlog, full-queue episodes; SO_REUSEPORT group sizes; accepts per thread.

use std::collections::BTreeMap;

use super::{Family, HistogramValue, Labels, listener_labels};
use crate::model::{Histogram, Listener, Snapshot};

/// Accept-wait buckets exported: from 64 µs up, the kernel's bounds of the form 2^k
/// or 3·2^(k-1) microseconds (steps of x1.5 and x1.33). The kernel's own buckets are
/// four times finer; exporting every one would cost ~100 series per listener.
const WAIT_MIN_BOUND: f64 = 64e-6;
/// Threads listed per listener in `sockq_acceptor_accepts_total`; the rest are summed
/// into one `tid="other"` series so a thread-per-connection server cannot blow up
/// the series count.
pub const MAX_ACCEPTORS_PER_LISTENER: usize = 32;

const HELP_FULL: &str = "1 while a full-accept-queue episode is in progress on this listener \
    (queue over its limit, or drops growing), 0 otherwise; see `sockq events`.";
const HELP_GROUP: &str = "Listening sockets sharing this address and port in this namespace \
    (more than 1: an SO_REUSEPORT group whose shards are reported one by one).";
const HELP_ENQUEUES: &str = "Connections queued for accept() on this listener since sockq \
    started, counted on the sock:sk_data_ready tracepoint.";
const HELP_FULL_ENQUEUES: &str = "Enqueues after which this listener's accept queue held more \
    than its limit (the kernel's sk_acceptq_is_full): from then on new handshakes are dropped.";
const HELP_MAX_DEPTH: &str = "Deepest accept queue seen right after an enqueue since sockq \
    started (sk_ack_backlog at sock:sk_data_ready).";
const HELP_DEPTH: &str = "Accept queue depth right after each enqueue (sk_ack_backlog at \
    sock:sk_data_ready): catches spikes between scrapes.";
const HELP_ACCEPTS: &str = "Connections accept()/accept4() returned from this listener \
    (syscalls:sys_enter/exit_accept4) and io_uring accepts completed \
    (io_uring:io_uring_complete; not counted: accepts into direct descriptors).";
const HELP_WAIT: &str = "Time each accepted connection waited to be accepted: from its \
    handshake completing (the child socket created, sock:inet_sock_set_state LISTEN -> \
    SYN_RECV) to the accept()/accept4() that returned it (syscalls:sys_exit_accept4) or \
    the completion of its io_uring accept (io_uring:io_uring_complete).";
const HELP_SYNACK: &str = "SYN-ACKs this listener retransmitted (tcp:tcp_retransmit_synack): \
    handshakes whose final ACK did not arrive in time.";
const HELP_BACKLOG: &str = "The backlog argument the application passed to listen() \
    (syscalls:sys_enter_listen), before the kernel caps it at net.core.somaxconn. Only for \
    listen() calls made while sockq ran.";
const HELP_OLDEST: &str = "Seconds the oldest connection still in this listener's accept queue \
    has waited; reported while the queue is full.";
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

pub(super) fn families(snapshot: &Snapshot) -> Vec<Family> {
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
        let id = listener_labels(l);
        full.push(id.clone(), l.queue_full);
        let Some(k) = &l.kernel else { continue };
        enqueues.push(id.clone(), k.enqueues);
        full_enqueues.push(id.clone(), k.full_enqueues);
        max_depth.push(id.clone(), k.max_depth);
        accepts.push(id.clone(), k.accepts);
        synack.push(id.clone(), k.synack_retransmits);
        if k.enqueues > 0 {
            depth.push_histogram(id.clone(), coarsen(&k.depth, |_| true));
        }
        if k.accept_wait.count() > 0 {
            wait.push_histogram(id.clone(), coarsen(&k.accept_wait, keep_wait_bound));
        }
        if let Some(b) = k.backlog_arg {
            backlog.push(id.clone(), b);
        }
        if let Some(w) = k.oldest_wait {
            oldest.push_float(id.clone(), w);
        }
        for (reason, n) in &k.drop_reasons {
            let mut labels = id.clone();
            labels.push(("reason", reason.clone()));
            reasons.push(labels, *n);
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
    let mut groups: BTreeMap<(u64, String), Vec<u64>> = BTreeMap::new();
    for l in listeners {
        groups
            .entry((l.netns, l.listen_addr()))
            .or_default()
            .push(l.kernel.as_ref().map_or(0, |k| k.accepts));
    }
    for ((netns, listen_addr), accepts) in groups {
        let labels = vec![("netns", netns.to_string()), ("listen_addr", listen_addr)];
        if accepts.len() > 1
            && let Some(ratio) = crate::analysis::pattern::imbalance(&accepts)
        {
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
        if !threads.is_empty() {
            truncated.push(id.clone(), capped);
        }
        let counts: Vec<u64> = threads.iter().map(|a| a.accepts).collect();
        if let Some(ratio) = crate::analysis::pattern::imbalance(&counts) {
            imbalance.push_float(id, ratio);
        }
    }
    (family, imbalance, truncated)
}

fn thread_labels(id: &Labels, pid: String, tid: String, comm: &str) -> Labels {
    let mut labels = id.clone();
    labels.push(("pid", pid));
    labels.push(("tid", tid));
    labels.push(("comm", comm.to_owned()));
    labels
}

/// Whether an accept-wait bound (seconds) is exported: see [`WAIT_MIN_BOUND`].
pub(super) fn keep_wait_bound(seconds: f64) -> bool {
    let us = (seconds * 1e6).round() as u64;
    seconds >= WAIT_MIN_BOUND
        && (us.is_power_of_two() || (us.is_multiple_of(3) && (us / 3).is_power_of_two()))
}

/// Re-buckets a histogram onto the subset of its bounds that `keep` accepts. Counts
/// are exact at the kept bounds (they are bounds of the original).
pub(super) fn coarsen(h: &Histogram, keep: impl Fn(f64) -> bool) -> HistogramValue {
    let kept: Vec<f64> = h.bounds.iter().copied().filter(|&b| keep(b)).collect();
    let mut buckets: Vec<(f64, u64)> = kept.iter().map(|&b| (b, 0)).collect();
    buckets.push((f64::INFINITY, 0));
    for (i, &count) in h.counts.iter().enumerate() {
        let upper = h.bounds.get(i).copied().unwrap_or(f64::INFINITY);
        let slot = buckets
            .iter()
            .position(|&(b, _)| b >= upper)
            .unwrap_or(buckets.len() - 1);
        buckets[slot].1 += count;
    }
    HistogramValue {
        sum: h.sum,
        count: h.count(),
        buckets,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn coarsening_keeps_counts_exact_at_kept_bounds() {
        let h = Histogram {
            bounds: vec![1.0, 2.0, 3.0, 4.0, 6.0, 8.0],
            counts: vec![1, 1, 1, 1, 1, 1, 1],
            sum: 30.0,
        };
        let c = coarsen(&h, |b| b == 2.0 || b == 4.0 || b == 8.0);
        let bounds: Vec<f64> = c.buckets.iter().map(|b| b.0).collect();
        assert_eq!(bounds, [2.0, 4.0, 8.0, f64::INFINITY]);
        let counts: Vec<u64> = c.buckets.iter().map(|b| b.1).collect();
        // <=2: two observations; (2,4]: two; (4,8]: two; above: one.
        assert_eq!(counts, [2, 2, 2, 1]);
        assert_eq!(c.count, 7);
    }

    #[test]
    fn wait_bounds_step_by_a_third_or_a_half() {
        let fine = crate::analysis::queue_stats::wait_histogram(
            &collector_common::queue::ListenerQueue::ZERO,
        );
        let kept: Vec<f64> = fine
            .bounds
            .iter()
            .copied()
            .filter(|&b| keep_wait_bound(b))
            .collect();
        assert_eq!(kept[0], 64e-6);
        assert!(
            kept.contains(&0.196608) && kept.contains(&0.262144),
            "{kept:?}"
        );
        for pair in kept.windows(2) {
            let ratio = pair[1] / pair[0];
            assert!((1.3..=1.5 + 1e-9).contains(&ratio), "{pair:?}");
        }
        assert!(kept.len() < 45, "{} buckets", kept.len());
    }

    #[test]
    fn every_depth_bound_is_kept() {
        let h = Histogram {
            bounds: vec![1.0, 3.0, 7.0],
            counts: vec![5, 0, 1, 2],
            sum: 20.0,
        };
        let c = coarsen(&h, |_| true);
        assert_eq!(c.buckets.len(), 4);
        assert_eq!(c.buckets[3], (f64::INFINITY, 2));
    }
}
