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
                    log_listener_event(&ev);
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
