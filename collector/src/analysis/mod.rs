//! What the numbers mean: per-listener queue statistics from the kernel's counters,
//! full-accept-queue episodes with their diagnosis, execution patterns, Nagle x
//! delayed-ACK stalls, the listener filter (which listeners are exported), and the
//! poller that assembles each snapshot from the probes and the inventory.

pub mod episodes;
pub mod listener_filter;
pub mod nagle;
pub mod netns_keys;
pub mod pattern;
pub mod poller;
pub mod queue_stats;
pub mod unix_episodes;
pub mod unix_refusals;
