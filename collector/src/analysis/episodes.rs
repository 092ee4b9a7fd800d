//! Full-accept-queue episodes: when a listener's accept queue overflows, one notable
//! event when it starts and one when it ends, each with a diagnosis an SRE can act on.
//!
//! The kernel considers an accept queue full when it holds more than its limit
//! (`sk_acceptq_is_full`: `sk_ack_backlog > sk_max_ack_backlog`); from then on, new
//! handshakes are dropped and counted in the listener's `sk_drops`. An episode
//! **starts** at the first poll that finds the queue over its limit, or finds that it
//! was full since the previous poll: with the eBPF probes, an enqueue that left the
//! queue over its limit (`full_enqueues`); without them, grown drops. (`sk_drops` also
//! counts other discards, such as retransmitted SYNs for handshakes already in
//! progress, so the probes' signal is preferred.) It **ends** at the first poll that
//! finds the queue drained (empty, or at most half its limit) and no new sign of
//! overflow, or the listener gone. What a listener dropped before sockq first saw it
//! does not open an episode.
//!
//! Pure logic: the caller passes the clock in.

use std::{
    collections::HashMap,
    time::{Duration, Instant, SystemTime},
};

use serde::Serialize;

use crate::{
    model::{Acceptor, Acceptors, Listener, NetnsInode, Owner},
    text,
};

/// Version of the event schema (`sockq events`). Bump on incompatible changes.
pub const SCHEMA: u32 = 1;

/// The namespace's limits that govern its listeners' queues.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Limits {
    /// `net.core.somaxconn`: the cap on every `listen()` backlog.
    pub somaxconn: Option<u32>,
    /// `net.ipv4.tcp_max_syn_backlog`.
    pub max_syn_backlog: Option<u32>,
    /// `net.ipv4.tcp_syncookies` (0 off, 1 when the SYN queue overflows, 2 always).
    pub syncookies: Option<u32>,
}

/// One notable event, the JSON schema of `sockq events` (one object per line).
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct EpisodeEvent {
    pub schema: u32,
    /// Always `accept_queue_full`.
    #[serde(rename = "type")]
    pub kind: &'static str,
    /// `start` or `end`.
    pub phase: &'static str,
    /// UTC, RFC 3339 with milliseconds.
    pub time: String,
    pub netns: NetnsInode,
    /// `ip:port`.
    pub listen_addr: String,
    /// Socket inode.
    pub socket: u64,
    pub owners: Vec<Owner>,
    /// Accept queue length at this poll, listed after the poll read the kernel's
    /// counts: never older than `drops_since_start`.
    pub depth: u32,
    pub limit: u32,
    /// Drops counted since the episode began (at the start: those that revealed it).
    pub drops_since_start: u64,
    /// Seconds the episode lasted (end events).
    pub duration_seconds: Option<f64>,
    /// Seconds the oldest connection in the queue had waited, when the probes know.
    pub oldest_wait_seconds: Option<f64>,
    /// Connections accepted during the episode, when the probes know.
    pub accepts_during_episode: Option<u64>,
    /// The backlog the application passed to `listen()`, when seen.
    pub backlog_arg: Option<u32>,
    pub somaxconn: Option<u32>,
    /// Threads that accepted from this listener, with their scheduler state and
    /// wait channel at this poll (with the eBPF probes).
    pub acceptors: Vec<Acceptor>,
    pub diagnosis: String,
    pub fix: String,
    /// One line for logs; process names escaped.
    pub message: String,
}

#[derive(Debug, Clone)]
struct Episode {
    started: Instant,
    drops_at_start: u64,
    accepts_at_start: Option<u64>,
}

#[derive(Debug, Clone)]
struct Tracked {
    drops: u64,
    full_enqueues: u64,
    last: Listener,
    episode: Option<Episode>,
}

/// Tracks every listener's episode across polls.
#[derive(Debug, Default)]
pub struct EpisodeTracker {
    tracked: HashMap<(NetnsInode, u64), Tracked>,
}

impl Tracked {
    /// First sight of a listener: a baseline. Only a queue over its limit now opens
    /// an episode; earlier drops do not.
    fn first_sight<F: Fn(NetnsInode) -> Limits>(
        l: &Listener,
        ctx: &EventContext<'_, F>,
    ) -> (Self, Option<EpisodeEvent>) {
        let mut t = Self {
            drops: l.drops,
            full_enqueues: full_enqueues(l),
            last: l.clone(),
            episode: None,
        };
        let mut start = None;
        if is_over_limit(l) {
            let episode = Episode {
                started: ctx.now,
                drops_at_start: l.drops,
                accepts_at_start: accepts(l),
            };
            start = Some(ctx.start(l, &episode));
            t.episode = Some(episode);
        }
        (t, start)
    }

    /// The listener's state at this poll: the start or end of an episode, if any.
    fn update<F: Fn(NetnsInode) -> Limits>(
        &mut self,
        l: &Listener,
        ctx: &EventContext<'_, F>,
    ) -> Option<EpisodeEvent> {
        let full_enqueues = full_enqueues(l);
        // Was the queue full at some point since the previous poll?
        let overflowed = match &l.kernel {
            Some(_) => full_enqueues > self.full_enqueues,
            None => l.drops > self.drops,
        };
        let event = match &self.episode {
            None if is_over_limit(l) || overflowed => {
                let episode = Episode {
                    started: ctx.now,
                    drops_at_start: self.drops,
                    accepts_at_start: accepts(&self.last),
                };
                let start = ctx.start(l, &episode);
                self.episode = Some(episode);
                Some(start)
            }
            Some(ep) if !overflowed && is_drained(l) => {
                let end = ctx.end(l, ep);
                self.episode = None;
                Some(end)
            }
            _ => None,
        };
        self.drops = l.drops;
        self.full_enqueues = full_enqueues;
        self.last = l.clone();
        event
    }
}

fn full_enqueues(l: &Listener) -> u64 {
    l.kernel.as_ref().map_or(0, |k| k.full_enqueues)
}

impl EpisodeTracker {
    /// Feeds one poll; returns the events it causes.
    pub fn update(
        &mut self,
        now: Instant,
        wall: SystemTime,
        listeners: &[Listener],
        acceptors: &Acceptors,
        limits: impl Fn(NetnsInode) -> Limits,
    ) -> Vec<EpisodeEvent> {
        let ctx = EventContext {
            now,
            time: text::rfc3339(wall),
            acceptors,
            limits: &limits,
        };
        let mut events = Vec::new();
        let mut seen = std::collections::HashSet::new();
        for l in listeners {
            let key = (l.netns, l.inode);
            seen.insert(key);
            match self.tracked.get_mut(&key) {
                Some(t) => events.extend(t.update(l, &ctx)),
                None => {
                    let (t, start) = Tracked::first_sight(l, &ctx);
                    events.extend(start);
                    self.tracked.insert(key, t);
                }
            }
        }
        // Listeners gone: their episodes end with them.
        let gone: Vec<_> = self
            .tracked
            .keys()
            .filter(|k| !seen.contains(k))
            .copied()
            .collect();
        for key in gone {
            if let Some(t) = self.tracked.remove(&key)
                && let Some(ep) = t.episode
            {
                events.push(ctx.closed_while_full(&t.last, ep));
            }
        }
        events
    }

    /// Whether listener (netns, inode) is in an episode now.
    pub fn is_full(&self, netns: NetnsInode, inode: u64) -> bool {
        self.tracked
            .get(&(netns, inode))
            .is_some_and(|t| t.episode.is_some())
    }
}

/// What every event of one poll shares.
struct EventContext<'a, F: Fn(NetnsInode) -> Limits> {
    now: Instant,
    time: String,
    acceptors: &'a Acceptors,
    limits: &'a F,
}

impl<F: Fn(NetnsInode) -> Limits> EventContext<'_, F> {
    fn start(&self, l: &Listener, ep: &Episode) -> EpisodeEvent {
        self.build("start", l, ep, None)
    }

    fn end(&self, l: &Listener, ep: &Episode) -> EpisodeEvent {
        let duration = self.now.saturating_duration_since(ep.started);
        self.build("end", l, ep, Some(duration))
    }

    /// The end of an episode whose listener closed: its last known state; accepts
    /// after it are unknown.
    fn closed_while_full(&self, last: &Listener, ep: Episode) -> EpisodeEvent {
        let mut e = self.end(
            last,
            &Episode {
                accepts_at_start: None,
                ..ep
            },
        );
        e.diagnosis = "the listener was closed while its queue was full".into();
        e.message = format!("{} (listener closed)", e.message);
        e
    }

    fn build(
        &self,
        phase: &'static str,
        l: &Listener,
        ep: &Episode,
        duration: Option<Duration>,
    ) -> EpisodeEvent {
        let drops = l.drops.saturating_sub(ep.drops_at_start);
        let during = accepts_since(l, ep.accepts_at_start);
        let mut e = event(
            phase,
            &self.time,
            l,
            &(self.limits)(l.netns),
            drops,
            duration,
            during,
        );
        let threads = self.acceptors.of(l.inode).to_vec();
        with_acceptors(&mut e, threads);
        e
    }
}

fn is_over_limit(l: &Listener) -> bool {
    l.accept_queue_len > l.accept_queue_limit
}

fn is_drained(l: &Listener) -> bool {
    l.accept_queue_len == 0 || l.accept_queue_len.saturating_mul(2) <= l.accept_queue_limit
}

fn accepts(l: &Listener) -> Option<u64> {
    l.kernel.as_ref().map(|k| k.accepts)
}

fn accepts_since(l: &Listener, start: Option<u64>) -> Option<u64> {
    Some(accepts(l)?.saturating_sub(start?))
}

fn event(
    phase: &'static str,
    time: &str,
    l: &Listener,
    limits: &Limits,
    drops_since_start: u64,
    duration: Option<Duration>,
    accepts_during: Option<u64>,
) -> EpisodeEvent {
    let backlog_arg = l.kernel.as_ref().and_then(|k| k.backlog_arg);
    let (diagnosis, fix) = diagnose(l, limits, accepts_during);
    let owners = if l.owners.is_empty() {
        "no known owner".to_owned()
    } else {
        l.owners
            .iter()
            .map(|o| format!("{}/\"{}\"", o.pid, text::escape(&o.comm)))
            .collect::<Vec<_>>()
            .join(", ")
    };
    let message = match phase {
        "start" => format!(
            "accept queue full on {} (netns {}, socket {}, owners {owners}): depth {}/{}, \
             {drops_since_start} drops; {diagnosis}; fix: {fix}",
            l.listen_addr(),
            l.netns,
            l.inode,
            l.accept_queue_len,
            l.accept_queue_limit
        ),
        _ => format!(
            "accept queue drained on {} (netns {}, socket {}, owners {owners}) after {:.1} s, \
             {drops_since_start} drops in the episode",
            l.listen_addr(),
            l.netns,
            l.inode,
            duration.unwrap_or_default().as_secs_f64()
        ),
    };
    EpisodeEvent {
        schema: SCHEMA,
        kind: "accept_queue_full",
        phase,
        time: time.to_owned(),
        netns: l.netns,
        listen_addr: l.listen_addr(),
        socket: l.inode,
        owners: l.owners.clone(),
        depth: l.accept_queue_len,
        limit: l.accept_queue_limit,
        drops_since_start,
        duration_seconds: duration.map(|d| d.as_secs_f64()),
        oldest_wait_seconds: l.kernel.as_ref().and_then(|k| k.oldest_wait),
        accepts_during_episode: accepts_during,
        backlog_arg,
        somaxconn: limits.somaxconn,
        acceptors: Vec::new(),
        diagnosis,
        fix,
        message,
    }
}

/// Attaches the listener's acceptor threads to an event, and says so in the
/// diagnosis when every one of them sleeps uninterruptibly (state D).
fn with_acceptors(e: &mut EpisodeEvent, threads: Vec<Acceptor>) {
    if e.phase == "start" && !threads.is_empty() && threads.iter().all(|t| t.state == "D") {
        let where_ = threads
            .iter()
            .map(|t| {
                let wchan = if t.wchan.is_empty() {
                    "?"
                } else {
                    t.wchan.as_str()
                };
                format!("tid {} in {}", t.tid, text::escape(wchan))
            })
            .collect::<Vec<_>>()
            .join(", ");
        let note = format!(
            "every acceptor thread is in uninterruptible sleep (state D: {where_}), \
             typically blocked on disk or a lock"
        );
        e.diagnosis = format!("{note}; {}", e.diagnosis);
        e.message = format!("{} [{note}]", e.message);
    }
    e.acceptors = threads;
}

/// Why the queue overflowed and what to do about it, from what is known.
pub fn diagnose(l: &Listener, limits: &Limits, accepts_during: Option<u64>) -> (String, String) {
    let limit = l.accept_queue_limit;
    let backlog = l.kernel.as_ref().and_then(|k| k.backlog_arg);
    let mut diagnosis = Vec::new();
    let mut fix = Vec::new();

    match accepts_during {
        Some(0) => {
            diagnosis.push(
                "no accept() returned a connection from this listener during the episode: \
                 the accepting thread is blocked or busy"
                    .to_owned(),
            );
            fix.push(
                "check the acceptor thread (`sockq listeners` shows the owners); keep \
                 blocking work off the accept loop"
                    .to_owned(),
            );
        }
        Some(n) => {
            diagnosis.push(format!(
                "accept() runs ({n} connections accepted during the episode) but slower than \
                 connections arrive"
            ));
            fix.push(
                "add acceptor threads or SO_REUSEPORT shards; a larger backlog only absorbs \
                 bursts"
                    .to_owned(),
            );
        }
        None => diagnosis.push(format!(
            "the application is not accepting as fast as connections arrive (queue limit \
             {limit})"
        )),
    }

    match (backlog, limits.somaxconn) {
        (Some(b), Some(max)) if b < max && limit <= b => {
            diagnosis.push(format!(
                "the application passed backlog {b} to listen() while net.core.somaxconn \
                 allows {max}"
            ));
            fix.push(format!(
                "raise the listen() backlog toward {max} (e.g. nginx `listen ... \
                 backlog={max}`)"
            ));
        }
        (_, Some(max)) if limit >= max && max < 4096 => {
            diagnosis.push(format!("the queue is capped by net.core.somaxconn = {max}"));
            fix.push(
                "raise net.core.somaxconn (sysctl -w net.core.somaxconn=4096) together with \
                 the application's backlog"
                    .to_owned(),
            );
        }
        _ => {}
    }

    if limits.syncookies == Some(0) {
        diagnosis.push(
            "SYN cookies are off: once the SYN queue fills too, new SYNs are dropped outright"
                .to_owned(),
        );
    }
    if fix.is_empty() {
        fix.push(
            "make the acceptor keep up (more threads or SO_REUSEPORT shards), then size the \
             backlog for bursts"
                .to_owned(),
        );
    }
    (diagnosis.join("; "), fix.join("; "))
}

#[cfg(test)]
mod tests {
    use std::time::UNIX_EPOCH;

    use super::*;
    use crate::model::ListenerKernelStats;

    fn listener(len: u32, limit: u32, drops: u64) -> Listener {
        Listener {
            netns: 1,
            addr: "127.0.0.1".parse().expect("ip"),
            port: 80,
            inode: 7,
            cookie: 1,
            accept_queue_len: len,
            accept_queue_limit: limit,
            syn_queue_len: 0,
            drops,
            owners: vec![Owner::new(9, "a\"b\\c\nd")],
            kernel: None,
            queue_full: false,
        }
    }

    fn with_accepts(mut l: Listener, accepts: u64) -> Listener {
        l.kernel = Some(ListenerKernelStats {
            accepts,
            ..ListenerKernelStats::default()
        });
        l
    }

    struct Clock {
        tracker: EpisodeTracker,
        start: Instant,
        t: u64,
        acceptors: Acceptors,
    }

    impl Clock {
        fn new() -> Self {
            Self {
                tracker: EpisodeTracker::default(),
                start: Instant::now(),
                t: 0,
                acceptors: Acceptors::default(),
            }
        }

        fn poll(&mut self, l: &[Listener]) -> Vec<EpisodeEvent> {
            self.t += 1;
            let now = self.start + Duration::from_secs(self.t);
            self.tracker
                .update(now, UNIX_EPOCH, l, &self.acceptors, |_| Limits::default())
        }
    }

    fn phases(events: &[EpisodeEvent]) -> Vec<&str> {
        events.iter().map(|e| e.phase).collect()
    }

    #[test]
    fn a_full_queue_is_one_episode() {
        let mut c = Clock::new();
        assert!(c.poll(&[listener(0, 2, 0)]).is_empty());
        let start = c.poll(&[listener(3, 2, 4)]);
        assert_eq!(phases(&start), ["start"]);
        assert_eq!(start[0].drops_since_start, 4);
        assert!(c.tracker.is_full(1, 7));
        for drops in [9, 15, 20] {
            assert!(
                c.poll(&[listener(3, 2, drops)]).is_empty(),
                "no second start"
            );
        }
        // Drained but still dropping: not over.
        assert!(c.poll(&[listener(0, 2, 21)]).is_empty());
        let end = c.poll(&[listener(0, 2, 21)]);
        assert_eq!(phases(&end), ["end"]);
        assert_eq!(end[0].drops_since_start, 21);
        assert_eq!(end[0].duration_seconds, Some(5.0));
        assert!(!c.tracker.is_full(1, 7));
        // A new overflow is a new episode.
        assert_eq!(phases(&c.poll(&[listener(3, 2, 22)])), ["start"]);
    }

    #[test]
    fn drops_between_polls_start_an_episode() {
        let mut c = Clock::new();
        c.poll(&[listener(0, 128, 0)]);
        let e = c.poll(&[listener(0, 128, 3)]);
        assert_eq!(phases(&e), ["start"]);
        assert_eq!(e[0].drops_since_start, 3);
        // Drained and no more drops: the next poll ends it.
        assert_eq!(phases(&c.poll(&[listener(0, 128, 3)])), ["end"]);
    }

    #[test]
    fn with_probes_full_enqueues_not_drops_signal_overflow() {
        let probed = |len, drops, full_enqueues| {
            let mut l = with_accepts(listener(len, 128, drops), 0);
            if let Some(k) = l.kernel.as_mut() {
                k.full_enqueues = full_enqueues;
            }
            l
        };
        let mut c = Clock::new();
        c.poll(&[probed(0, 0, 0)]);
        // Retransmitted SYNs for handshakes in progress raise sk_drops: no episode.
        assert!(c.poll(&[probed(0, 5, 0)]).is_empty());
        // An enqueue found the queue over its limit since the last poll: episode.
        assert_eq!(phases(&c.poll(&[probed(0, 9, 1)])), ["start"]);
        assert_eq!(phases(&c.poll(&[probed(0, 12, 1)])), ["end"]);
    }

    #[test]
    fn old_drops_do_not_open_an_episode() {
        let mut c = Clock::new();
        assert!(c.poll(&[listener(0, 128, 500)]).is_empty());
        assert!(c.poll(&[listener(1, 128, 500)]).is_empty());
        // But a queue over its limit at first sight does.
        let mut c = Clock::new();
        assert_eq!(phases(&c.poll(&[listener(3, 2, 500)])), ["start"]);
    }

    #[test]
    fn a_closed_listener_ends_its_episode() {
        let mut c = Clock::new();
        c.poll(&[listener(3, 2, 0)]);
        let e = c.poll(&[]);
        assert_eq!(phases(&e), ["end"]);
        assert!(e[0].message.contains("listener closed"), "{}", e[0].message);
        assert!(c.poll(&[]).is_empty());
    }

    #[test]
    fn accepts_during_the_episode_are_counted() {
        let mut c = Clock::new();
        c.poll(&[with_accepts(listener(0, 2, 0), 10)]);
        let start = c.poll(&[with_accepts(listener(3, 2, 1), 10)]);
        assert_eq!(start[0].accepts_during_episode, Some(0));
        assert!(
            start[0].diagnosis.contains("no accept()"),
            "{}",
            start[0].diagnosis
        );
        c.poll(&[with_accepts(listener(3, 2, 2), 14)]);
        let end = c.poll(&[with_accepts(listener(0, 2, 2), 15)]);
        assert_eq!(end[0].accepts_during_episode, Some(5));
    }

    #[test]
    fn acceptors_in_state_d_are_named() {
        let mut c = Clock::new();
        c.acceptors = vec![Acceptor {
            socket: 7,
            pid: 9,
            tid: 10,
            comm: "acceptor".into(),
            accepts: 4,
            state: "D".into(),
            wchan: "io_schedule".into(),
        }]
        .into();
        let e = c.poll(&[listener(3, 2, 0)]).remove(0);
        assert_eq!(e.acceptors.len(), 1);
        assert!(
            e.diagnosis
                .starts_with("every acceptor thread is in uninterruptible sleep"),
            "{}",
            e.diagnosis
        );
        assert!(e.message.contains("tid 10 in io_schedule"), "{}", e.message);
        // A sleeping-but-interruptible acceptor is not blamed.
        let mut c = Clock::new();
        c.acceptors = vec![Acceptor {
            state: "S".into(),
            ..e.acceptors[0].clone()
        }]
        .into();
        let e = c.poll(&[listener(3, 2, 0)]).remove(0);
        assert!(!e.diagnosis.contains("uninterruptible"), "{}", e.diagnosis);
    }

    #[test]
    fn json_schema_and_hostile_names() {
        let mut c = Clock::new();
        let e = c.poll(&[listener(3, 2, 0)]).remove(0);
        let v = serde_json::to_value(&e).expect("json");
        assert_eq!(v["schema"], 1);
        assert_eq!(v["type"], "accept_queue_full");
        assert_eq!(v["phase"], "start");
        assert_eq!(v["listen_addr"], "127.0.0.1:80");
        assert_eq!(v["time"], "1970-01-01T00:00:00.000Z");
        for key in [
            "depth",
            "limit",
            "drops_since_start",
            "diagnosis",
            "fix",
            "owners",
        ] {
            assert!(v.get(key).is_some(), "{key} missing: {v}");
        }
        // JSON carries the name exactly; the log line escapes it.
        let back: serde_json::Value =
            serde_json::from_str(&serde_json::to_string(&e).expect("text")).expect("parse");
        assert_eq!(back["owners"][0]["comm"], "a\"b\\c\nd");
        assert!(e.message.contains("9/\"a\\\"b\\\\c\\nd\""), "{}", e.message);
        assert!(!e.message.contains('\n'));
    }

    #[test]
    fn diagnoses() {
        let mut l = with_accepts(listener(129, 128, 1), 0);
        if let Some(k) = l.kernel.as_mut() {
            k.backlog_arg = Some(128);
        }
        let limits = Limits {
            somaxconn: Some(4096),
            max_syn_backlog: Some(512),
            syncookies: Some(0),
        };
        let (d, f) = diagnose(&l, &limits, Some(0));
        assert!(d.contains("backlog 128") && d.contains("4096"), "{d}");
        assert!(d.contains("SYN cookies are off"), "{d}");
        assert!(f.contains("backlog=4096"), "{f}");

        let l = listener(129, 128, 1);
        let low = Limits {
            somaxconn: Some(128),
            ..Limits::default()
        };
        let (d, f) = diagnose(&l, &low, Some(7));
        assert!(
            d.contains("somaxconn = 128") && d.contains("7 connections"),
            "{d}"
        );
        assert!(
            f.contains("sysctl -w net.core.somaxconn") && f.contains("SO_REUSEPORT"),
            "{f}"
        );

        let (d, f) = diagnose(&l, &Limits::default(), None);
        assert!(d.contains("not accepting as fast"), "{d}");
        assert!(!f.is_empty());
    }
}
