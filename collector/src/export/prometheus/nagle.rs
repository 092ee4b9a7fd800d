//! Nagle holds, delayed ACKs and their stalls, per (netns, listener, process): the
//! `listen_addr` label is the listener whose port the connections use locally
//! (server side), empty for connections the process opened (client side).

use super::{
    Family, Labels,
    histogram::{ClassicBuckets, Grid, kernel_histogram},
};
use crate::model::{Snapshot, nagle::SeriesKey};

const HELP_TIMERS: &str = "Delayed-ACK timers by what became of them (timer:timer_start and \
    timer:timer_expire_entry on tcp_delack_timer): armed for a new delayed ACK; fired with the \
    ACK still pending, so the timer sent it (the kernel's DelayedACKs); cancelled, the ACK left \
    earlier with data or at once, or the connection closed.";
const HELP_DELAY: &str = "Time from arming a delayed-ACK timer to the timer sending the ACK, for \
    the ACKs the timer sent (about 40 ms at the kernel's minimum ATO).";
const HELP_HOLD: &str = "How long small writes waited in the send queue because Nagle's \
    algorithm held them while an earlier small segment was unacknowledged \
    (tcp:tcp_sendmsg_locked to the tcp:tcp_probe of the ACK that released them).";
const HELP_STALLS: &str = "Nagle x delayed-ACK stalls: Nagle holds that outlasted the minimum \
    RTT by 10 ms or more and ended with a pure ACK, i.e. the peer held its ACK back while this \
    side held its write. See `sockq events` for the connections.";
const HELP_STALL_SECONDS: &str = "Total time lost to Nagle x delayed-ACK stalls; divided by \
    sockq_nagle_delayed_ack_stalls_total it is the typical stall.";
const HELP_SENDS: &str = "sendmsg calls on TCP sockets of this host, by the socket's Nagle \
    setting (tcp:tcp_sendmsg_locked): nagle (the default), nodelay (TCP_NODELAY) or cork \
    (TCP_CORK). Host-wide: one per-CPU add is all the send path can afford.";

fn labels(k: &SeriesKey) -> Labels {
    Labels::shared([
        ("netns", k.netns.to_string()),
        ("listen_addr", k.listen_addr.clone()),
        (
            "pid",
            if k.pid == 0 {
                String::new()
            } else {
                k.pid.to_string()
            },
        ),
        ("comm", k.comm.clone()),
    ])
}

pub(super) fn families(snapshot: &Snapshot, classic: ClassicBuckets) -> Vec<Family> {
    let mut timers = Family::counter("sockq_delayed_ack_timers_total", HELP_TIMERS);
    let mut delay = Family::histogram("sockq_delayed_ack_delay_seconds", HELP_DELAY);
    let mut hold = Family::histogram("sockq_nagle_hold_seconds", HELP_HOLD);
    let mut stalls = Family::counter("sockq_nagle_delayed_ack_stalls_total", HELP_STALLS);
    let mut stall_seconds = Family::counter(
        "sockq_nagle_delayed_ack_stall_seconds_total",
        HELP_STALL_SECONDS,
    );
    let mut sends = Family::counter("sockq_tcp_sends_total", HELP_SENDS);
    for s in &snapshot.nagle {
        let id = labels(&s.key);
        if s.delack_armed + s.delack_fired + s.delack_cancelled > 0 {
            timers.push(id.with("event", "armed"), s.delack_armed);
            timers.push(id.with("event", "fired"), s.delack_fired);
            timers.push(id.with("event", "cancelled"), s.delack_cancelled);
        }
        if s.delack_delay.count() > 0 {
            delay.push_histogram(
                id.clone(),
                kernel_histogram(&s.delack_delay, Grid::Wait, classic),
            );
        }
        if s.nagle_hold.count() > 0 {
            hold.push_histogram(
                id.clone(),
                kernel_histogram(&s.nagle_hold, Grid::Wait, classic),
            );
            stalls.push(id.clone(), s.stalls);
            stall_seconds.push_float(id.clone(), s.stall_seconds);
        }
    }
    if let Some([nagle, nodelay, cork]) = snapshot.tcp_sends {
        for (mode, n) in [("nagle", nagle), ("nodelay", nodelay), ("cork", cork)] {
            sends.push(vec![("mode", mode.to_owned())], n);
        }
    }
    vec![timers, delay, hold, stalls, stall_seconds, sends]
}
