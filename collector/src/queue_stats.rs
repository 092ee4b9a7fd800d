//! Turning the kernel's per-listener accept-queue counters
//! (`collector_common::queue::ListenerQueue`) into the model's
//! [`ListenerKernelStats`], and attaching them to the inventory's listeners.

use std::collections::HashMap;

use collector_common::queue::{DEPTH_BUCKETS, ListenerQueue, WAIT_BUCKETS, wait_bucket_upper_us};

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
    }
}

/// Fills `Listener::kernel` for every listener the kernel has counters for.
/// `oldest_enqueue_ns` maps listener inodes to the enqueue time of their oldest
/// waiting connection; `now_ns` is `CLOCK_MONOTONIC`, the programs' clock.
pub fn attach_to_listeners(
    listeners: &mut [Listener],
    queues: &HashMap<u64, ListenerQueue>,
    oldest_enqueue_ns: &HashMap<u64, u64>,
    now_ns: u64,
) {
    for l in listeners.iter_mut() {
        // An idle listener the probes never saw still has zero counters to show.
        let q = queues.get(&l.inode).copied().unwrap_or(ListenerQueue::ZERO);
        let oldest = (l.accept_queue_len > 0)
            .then(|| oldest_enqueue_ns.get(&l.inode))
            .flatten()
            .map(|&t| now_ns.saturating_sub(t) as f64 / 1e9);
        l.kernel = Some(kernel_stats(&q, oldest));
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
