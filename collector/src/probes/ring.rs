//! The ring buffer of rare events: listeners opening and closing, queues found full,
//! Nagle stalls. Read as it becomes readable; listener events ask the poller for an
//! inventory at once, stall events are queued for the next poll.

use std::{
    net::SocketAddr,
    sync::{
        Arc,
        atomic::{AtomicU64, Ordering},
    },
};

use aya::maps::{MapData, RingBuf};
use collector_common::{
    listener::{AF_INET, AF_INET6, ListenerEvent},
    nagle::StallEvent,
};
use tokio::{io::unix::AsyncFd, sync::Notify};

use super::events::{Event, decode_event};
use crate::{model::tcp_state_name, text};

/// Records read from the ring buffer, by kind, and stall events the poller's queue
/// had no room for.
#[derive(Debug, Default)]
pub struct RingCounters {
    listener: AtomicU64,
    queue_full: AtomicU64,
    stall: AtomicU64,
    stalls_lost: AtomicU64,
}

impl RingCounters {
    /// Records read so far: listener, queue-full, stall events.
    pub fn snapshot(&self) -> [u64; 3] {
        [
            self.listener.load(Ordering::Relaxed),
            self.queue_full.load(Ordering::Relaxed),
            self.stall.load(Ordering::Relaxed),
        ]
    }

    /// Stall events the poller's queue had no room for.
    pub fn stalls_lost(&self) -> u64 {
        self.stalls_lost.load(Ordering::Relaxed)
    }
}

/// Listener events logged per second at most: a `listen()`/`close()` loop (anyone
/// can run one) must not turn into a log flood. The rest are counted in
/// `sockq_ring_events_total` and summarised in one line.
const LISTENER_LOG_LINES_PER_SECOND: u32 = 20;

/// The log lines left in the current second, and how many were held back.
#[derive(Debug, Default)]
struct LogBudget {
    second: Option<std::time::Instant>,
    used: u32,
    held_back: u64,
}

impl LogBudget {
    /// Whether one more line may be logged now.
    fn take(&mut self, now: std::time::Instant) -> bool {
        let new_second = self
            .second
            .is_none_or(|start| now.duration_since(start).as_secs() >= 1);
        if new_second {
            if self.held_back > 0 {
                tracing::info!(
                    "{} more listener events in the last second were not logged",
                    self.held_back
                );
            }
            *self = Self {
                second: Some(now),
                ..Self::default()
            };
        }
        if self.used < LISTENER_LOG_LINES_PER_SECOND {
            self.used += 1;
            true
        } else {
            self.held_back += 1;
            false
        }
    }
}

/// Reads the ring buffer: logs listener lifecycle events and asks for an inventory
/// refresh; hands stall events to the poller.
pub async fn read_events(
    ring: RingBuf<MapData>,
    refresh: Arc<Notify>,
    stalls: tokio::sync::mpsc::Sender<StallEvent>,
    counters: Arc<RingCounters>,
) {
    // SAFETY: RingBuf owns its map fd for its whole life and always returns that fd.
    let registered =
        unsafe { AsyncFd::register_with_interest(ring, tokio::io::Interest::READABLE) };
    let mut fd = match registered {
        Ok(fd) => fd,
        Err(e) => {
            tracing::warn!("cannot poll the event ring buffer: {e}");
            return;
        }
    };
    let mut log_budget = LogBudget::default();
    loop {
        let mut guard = match fd.readable_mut().await {
            Ok(g) => g,
            Err(e) => {
                tracing::warn!("event ring buffer: {e}");
                return;
            }
        };
        let ring = guard.get_inner_mut();
        let mut any = false;
        while let Some(item) = ring.next() {
            match decode_event(&item) {
                Some(Event::Listener(ev)) => {
                    counters.listener.fetch_add(1, Ordering::Relaxed);
                    if log_budget.take(std::time::Instant::now()) {
                        log_listener_event(&ev);
                    }
                }
                Some(Event::QueueFull(ev)) => {
                    counters.queue_full.fetch_add(1, Ordering::Relaxed);
                    tracing::debug!(
                        "accept queue full: socket {} netns {} depth {} limit {}",
                        ev.listener,
                        ev.netns,
                        ev.depth,
                        ev.limit
                    );
                }
                Some(Event::Stall(ev)) => {
                    counters.stall.fetch_add(1, Ordering::Relaxed);
                    if stalls.try_send(ev).is_err() {
                        counters.stalls_lost.fetch_add(1, Ordering::Relaxed);
                    }
                    continue;
                }
                None => continue,
            }
            any = true;
        }
        guard.clear_ready();
        if any {
            refresh.notify_one();
        }
    }
}

fn log_listener_event(ev: &ListenerEvent) {
    let addr = event_addr(ev);
    let comm = text::escape_bytes(text::comm_bytes(&ev.comm));
    tracing::info!(
        "listener {} ({} -> {}): {} netns {} by pid {} tid {} comm \"{}\"",
        if ev.new_state == collector_common::tcp_state::TCP_LISTEN {
            "opened"
        } else {
            "closed"
        },
        tcp_state_name(ev.old_state),
        tcp_state_name(ev.new_state),
        addr,
        ev.netns,
        ev.pid,
        ev.tid,
        comm
    );
}

fn event_addr(ev: &ListenerEvent) -> String {
    match ev.family {
        AF_INET => {
            let ip = std::net::Ipv4Addr::new(ev.addr[0], ev.addr[1], ev.addr[2], ev.addr[3]);
            SocketAddr::new(ip.into(), ev.port).to_string()
        }
        AF_INET6 => SocketAddr::new(std::net::Ipv6Addr::from(ev.addr).into(), ev.port).to_string(),
        other => format!("family {other} port {}", ev.port),
    }
}

#[cfg(test)]
mod tests {
    use std::time::{Duration, Instant};

    use super::*;

    #[test]
    fn listener_log_lines_are_rate_limited() {
        let mut budget = LogBudget::default();
        let t0 = Instant::now();
        let logged = (0..1000).filter(|_| budget.take(t0)).count();
        assert_eq!(logged, LISTENER_LOG_LINES_PER_SECOND as usize);
        assert_eq!(
            budget.held_back,
            1000 - u64::from(LISTENER_LOG_LINES_PER_SECOND)
        );
        assert!(
            budget.take(t0 + Duration::from_millis(1001)),
            "a new second"
        );
        assert_eq!(budget.held_back, 0);
    }
}
