//! Turning the kernel's per-listener accept-queue counters
//! (`collector_common::queue::ListenerQueue`) into the model's
//! [`ListenerKernelStats`], and attaching them to the inventory's listeners.

use std::collections::{BTreeMap, HashMap};

use collector_common::queue::{
    DEPTH_BUCKETS, DropKey, ListenerQueue, WAIT_BUCKETS, wait_bucket_upper_us,
};

use crate::model::{Histogram, Listener, ListenerKernelStats};

/// The depth histogram: bucket i holds [2^i, 2^(i+1)), so its inclusive upper bound is
/// 2^(i+1) - 1.
pub fn depth_histogram(q: &ListenerQueue) -> Histogram {
    let bounds = (0..DEPTH_BUCKETS - 1)
        .map(|i| ((1u64 << (i + 1)) - 1) as f64)
        .collect();
    Histogram {
        bounds,
        counts: q.depth_hist.to_vec(),
        sum: q.depth_sum as f64,
    }
}

/// The accept-wait histogram in seconds.
pub fn wait_histogram(q: &ListenerQueue) -> Histogram {
    let bounds = (0..WAIT_BUCKETS - 1)
        .map(|b| wait_bucket_upper_us(b) as f64 / 1e6)
        .collect();
    Histogram {
        bounds,
        counts: q.wait_hist.to_vec(),
        sum: q.wait_sum_ns as f64 / 1e9,
    }
}

pub fn kernel_stats(q: &ListenerQueue, oldest_wait: Option<f64>) -> ListenerKernelStats {
    ListenerKernelStats {
        enqueues: q.enqueues,
        full_enqueues: q.full_enqueues,
        max_depth: q.max_depth,
        depth: depth_histogram(q),
        accepts: q.accepts,
        accept_wait: wait_histogram(q),
        synack_retransmits: q.synack_retransmits,
        backlog_arg: (q.backlog_arg != 0).then_some(q.backlog_arg),
        oldest_wait,
        read_by_acceptor: q.read_by_acceptor,
        read_by_one_other: q.read_by_one_other,
        read_by_several: q.read_by_several,
        drop_reasons: std::collections::BTreeMap::new(),
    }
}

/// What the probes counted, keyed by listener inode, ready to attach.
pub struct KernelCounters<'a> {
    pub queues: &'a HashMap<u64, ListenerQueue>,
    /// Listener inode -> how long its oldest waiting connection has waited, ns.
    pub oldest_wait_ns: &'a HashMap<u64, u64>,
    /// (listener inode, reason value) -> drops.
    pub drops: &'a [(DropKey, u64)],
    /// `enum skb_drop_reason` value -> name.
    pub reason_names: &'a HashMap<u32, String>,
}

/// Fills `Listener::kernel` for every listener in the inventory.
pub fn attach_to_listeners(listeners: &mut [Listener], k: &KernelCounters<'_>) {
    let mut drops: HashMap<u64, BTreeMap<String, u64>> = HashMap::new();
    for (key, n) in k.drops {
        let name = k
            .reason_names
            .get(&key.reason)
            .cloned()
            .unwrap_or_else(|| format!("reason_{}", key.reason));
        *drops
            .entry(key.listener)
            .or_default()
            .entry(name)
            .or_default() += n;
    }
    let (queues, oldest_wait_ns) = (k.queues, k.oldest_wait_ns);
    for l in listeners.iter_mut() {
        // An idle listener the probes never saw still has zero counters to show.
        let q = queues.get(&l.inode).copied().unwrap_or(ListenerQueue::ZERO);
        let oldest = (l.accept_queue_len > 0)
            .then(|| oldest_wait_ns.get(&l.inode))
            .flatten()
            .map(|&w| w as f64 / 1e9);
        let mut stats = kernel_stats(&q, oldest);
        stats.drop_reasons = drops.remove(&l.inode).unwrap_or_default();
        l.kernel = Some(stats);
    }
}

#[cfg(test)]
mod tests {
    use collector_common::queue::{depth_bucket, wait_bucket};

    use super::*;

    #[test]
    fn depth_bounds_contain_their_values() {
        let mut q = ListenerQueue::ZERO;
        for depth in [1u32, 2, 3, 4, 129] {
            q.depth_hist[depth_bucket(depth)] += 1;
        }
        let h = depth_histogram(&q);
        assert_eq!(h.count(), 5);
        assert_eq!(h.bounds[..3], [1.0, 3.0, 7.0]);
        assert_eq!(h.quantile_bound(0.2), Some(1.0));
        assert_eq!(h.quantile_bound(0.6), Some(3.0));
        assert_eq!(h.quantile_bound(1.0), Some(255.0));
    }

    #[test]
    fn wait_histogram_in_seconds() {
        let mut q = ListenerQueue::ZERO;
        // Two accepts after 200 ms.
        q.wait_hist[wait_bucket(200_000)] += 2;
        q.wait_sum_ns = 400_000_000;
        q.accepts = 2;
        let h = wait_histogram(&q);
        assert_eq!(h.count(), 2);
        assert!((h.sum - 0.4).abs() < 1e-9);
        let bound = h.quantile_bound(0.5).expect("non-empty");
        assert!((0.2..=0.25).contains(&bound), "{bound}");
    }

    #[test]
    fn backlog_zero_means_unseen() {
        let q = ListenerQueue::ZERO;
        assert_eq!(kernel_stats(&q, None).backlog_arg, None);
        let q = ListenerQueue {
            backlog_arg: 511,
            ..ListenerQueue::ZERO
        };
        assert_eq!(kernel_stats(&q, None).backlog_arg, Some(511));
    }
}
