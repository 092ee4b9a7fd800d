//! Full-queue episodes of Unix-domain listeners, in the event schema of the TCP ones
//! ([`EpisodeEvent`], type `accept_queue_full`), with `listen_addr` written as nginx
//! writes the upstream (`unix:/run/php/php-fpm.sock`, `unix:@name`) and
//! `drops_since_start` counting the connects the kernel refused with `EAGAIN`.
//!
//! The kernel refuses a connect when the listener's queue holds more than its limit
//! (`unix_recvq_full`: `skb_queue_len > sk_max_ack_backlog`). An episode **starts**
//! at the first poll that finds the queue over its limit, or refused connects grown
//! since the previous poll (at a listener's first sight: any counted, since the
//! probes count only from sockq's start); it **ends** at the first poll with no new refusal and the
//! queue drained (empty or at most half its limit), or the listener gone. Found at
//! each poll (`--interval`): no probe wakes the daemon for a Unix queue.
//!
//! Pure logic: the caller passes the clock in.

use std::{
    collections::HashMap,
    time::{Instant, SystemTime},
};

use super::episodes::{EpisodeEvent, Limits, SCHEMA};
use crate::{
    model::{NetnsInode, unix::UnixListener},
    text,
};

#[derive(Debug, Clone)]
struct Tracked {
    refused: u64,
    last: UnixListener,
    /// When the episode started and the refusals counted before it.
    episode: Option<(Instant, u64)>,
}

/// Tracks every Unix listener's episode across polls.
#[derive(Debug, Default)]
pub struct UnixEpisodeTracker {
    tracked: HashMap<(NetnsInode, u64), Tracked>,
}

impl UnixEpisodeTracker {
    /// Feeds one poll; returns the events it causes.
    pub fn update(
        &mut self,
        now: Instant,
        wall: SystemTime,
        listeners: &[UnixListener],
        limits: impl Fn(NetnsInode) -> Limits,
    ) -> Vec<EpisodeEvent> {
        let time = text::rfc3339(wall);
        let mut events = Vec::new();
        let mut seen = std::collections::HashSet::new();
        for l in listeners {
            let key = (l.netns, l.inode);
            seen.insert(key);
            let refused = refused(l);
            let limits = limits(l.netns);
            let Some(t) = self.tracked.get_mut(&key) else {
                // First sight: the probes count from sockq's start, so refusals
                // already counted are recent and open an episode, as does a queue
                // over its limit.
                let episode = (is_over_limit(l) || refused > 0).then_some((now, 0));
                if let Some(ep) = episode {
                    events.push(event("start", &time, l, &limits, ep, now));
                }
                let last = l.clone();
                self.tracked.insert(
                    key,
                    Tracked {
                        refused,
                        last,
                        episode,
                    },
                );
                continue;
            };
            let grew = refused > t.refused;
            match t.episode {
                None if grew || is_over_limit(l) => {
                    let ep = (now, t.refused);
                    events.push(event("start", &time, l, &limits, ep, now));
                    t.episode = Some(ep);
                }
                Some(ep) if !grew && is_drained(l) => {
                    events.push(event("end", &time, l, &limits, ep, now));
                    t.episode = None;
                }
                _ => {}
            }
            t.refused = refused;
            t.last = l.clone();
        }
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
                let mut e = event("end", &time, &t.last, &limits(key.0), ep, now);
                e.diagnosis = "the listener was closed while its queue was full".into();
                e.message = format!("{} (listener closed)", e.message);
                events.push(e);
            }
        }
        events
    }

    /// Whether Unix listener (netns, inode) is in an episode now.
    pub fn is_full(&self, netns: NetnsInode, inode: u64) -> bool {
        self.tracked
            .get(&(netns, inode))
            .is_some_and(|t| t.episode.is_some())
    }
}

fn refused(l: &UnixListener) -> u64 {
    l.kernel.as_ref().map_or(0, |k| k.refused)
}

fn is_over_limit(l: &UnixListener) -> bool {
    l.queue_len > l.queue_limit
}

fn is_drained(l: &UnixListener) -> bool {
    l.queue_len == 0 || l.queue_len.saturating_mul(2) <= l.queue_limit
}

/// `unix:` and the name, as nginx names the upstream.
pub fn upstream(l: &UnixListener) -> String {
    format!("unix:{}", l.name)
}

fn event(
    phase: &'static str,
    time: &str,
    l: &UnixListener,
    limits: &Limits,
    (started, refused_at_start): (Instant, u64),
    now: Instant,
) -> EpisodeEvent {
    let refused = refused(l).saturating_sub(refused_at_start);
    let duration = (phase == "end").then(|| now.saturating_duration_since(started));
    let (diagnosis, fix) = diagnose(l, limits);
    let owners = if l.owners.is_empty() {
        "no known owner".to_owned()
    } else {
        l.owners
            .iter()
            .map(|o| format!("{}/\"{}\"", o.pid, text::escape(&o.comm)))
            .collect::<Vec<_>>()
            .join(", ")
    };
    let shown = text::escape(&upstream(l));
    let message = match duration {
        None => format!(
            "unix listener queue full on {shown} (netns {}, socket {}, owners {owners}): \
             depth {}/{}, {refused} connects refused; {diagnosis}; fix: {fix}",
            l.netns, l.inode, l.queue_len, l.queue_limit
        ),
        Some(d) => format!(
            "unix listener queue drained on {shown} (netns {}, socket {}, owners {owners}) \
             after {:.1} s, {refused} connects refused in the episode",
            l.netns,
            l.inode,
            d.as_secs_f64()
        ),
    };
    EpisodeEvent {
        schema: SCHEMA,
        kind: "accept_queue_full",
        phase,
        time: time.to_owned(),
        netns: l.netns,
        listen_addr: upstream(l),
        socket: l.inode,
        owners: l.owners.clone(),
        depth: l.queue_len,
        limit: l.queue_limit,
        drops_since_start: refused,
        duration_seconds: duration.map(|d| d.as_secs_f64()),
        oldest_wait_seconds: None,
        accepts_during_episode: None,
        backlog_arg: None,
        somaxconn: limits.somaxconn,
        acceptors: Vec::new(),
        diagnosis,
        fix,
        message,
    }
}

/// The backlog settings of the servers that commonly listen on Unix sockets, the
/// owner's first when it is one of them.
const SERVERS: [(&str, &str); 3] = [
    (
        "php-fpm",
        "php-fpm `listen.backlog` (and `pm.max_children` for workers)",
    ),
    ("gunicorn", "gunicorn `--backlog` (and `--workers`)"),
    ("uwsgi", "uwsgi `--listen` (and `--processes`)"),
];

/// Why the queue is full and what to do about it.
pub fn diagnose(l: &UnixListener, limits: &Limits) -> (String, String) {
    let owner = l.owners.first().map(|o| o.comm.to_lowercase());
    let mut settings: Vec<&str> = SERVERS
        .iter()
        .filter(|(name, _)| owner.as_deref().is_some_and(|c| c.contains(name)))
        .map(|(_, s)| *s)
        .collect();
    if settings.is_empty() {
        settings = SERVERS.iter().map(|(_, s)| *s).collect();
    }
    let mut diagnosis = vec![format!(
        "the backend does not accept() as fast as clients connect (queue limit {}): each \
         connect beyond it fails with EAGAIN (nginx: `Resource temporarily unavailable`, 502)",
        l.queue_limit
    )];
    let mut fix = vec![format!(
        "add workers or make them faster; raise the listen backlog for bursts: {}",
        settings.join(", ")
    )];
    if let Some(max) = limits.somaxconn {
        if l.queue_limit >= max {
            diagnosis.push(format!("the queue is capped by net.core.somaxconn = {max}"));
        }
        // A value above both: raising the backlog alone is capped at somaxconn.
        let raise_to = max.max(l.queue_limit).saturating_mul(2).max(4096);
        fix.push(format!(
            "the backlog is capped by net.core.somaxconn = {max} (sysctl -w \
             net.core.somaxconn={raise_to} to raise it with the server's backlog)"
        ));
    } else {
        fix.push("the backlog is capped by net.core.somaxconn".to_owned());
    }
    (diagnosis.join("; "), fix.join("; "))
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;
    use crate::model::{
        Owner,
        unix::{UnixKernelStats, UnixSocketType, display_name},
    };

    fn listener(len: u32, refused: u64, comm: &str) -> UnixListener {
        let (name, name_kind) = display_name(b"/run/php/php-fpm.sock");
        UnixListener {
            netns: 1,
            name,
            name_kind,
            socket_type: UnixSocketType::Stream,
            inode: 42,
            cookie: 0,
            queue_len: len,
            queue_limit: 4,
            owners: vec![Owner::new(7, comm)],
            address: Vec::new(),
            kernel: Some(UnixKernelStats {
                refused,
                ..UnixKernelStats::default()
            }),
            queue: None,
            queue_full: false,
        }
    }

    #[test]
    fn refusals_open_an_episode_a_drained_queue_ends_it() {
        let mut t = UnixEpisodeTracker::default();
        let t0 = Instant::now();
        let limits = |_| Limits {
            somaxconn: Some(4096),
            ..Limits::default()
        };
        let wall = SystemTime::UNIX_EPOCH;
        assert!(
            t.update(t0, wall, &[listener(0, 0, "php-fpm8.2")], limits)
                .is_empty()
        );
        // Refusals counted by the next poll open an episode (the queue emptied in
        // between); a poll without new ones, the queue drained, ends it.
        let first = t.update(t0, wall, &[listener(0, 3, "php-fpm8.2")], limits);
        assert_eq!(first.len(), 1, "{first:?}");
        assert_eq!((first[0].phase, first[0].drops_since_start), ("start", 3));
        let end = t.update(t0, wall, &[listener(0, 3, "php-fpm8.2")], limits);
        assert_eq!(end.len(), 1, "{end:?}");
        assert_eq!(end[0].phase, "end");
        // The queue filled and emptied between polls, but refusals grew.
        let start = t.update(t0, wall, &[listener(1, 10, "php-fpm8.2")], limits);
        assert_eq!(start.len(), 1, "{start:?}");
        let e = &start[0];
        assert_eq!((e.phase, e.drops_since_start), ("start", 7));
        assert_eq!(e.listen_addr, "unix:/run/php/php-fpm.sock");
        assert_eq!(e.owners[0].comm, "php-fpm8.2");
        assert!(e.fix.starts_with("add workers"), "{}", e.fix);
        assert!(e.fix.contains("listen.backlog"), "{}", e.fix);
        assert!(
            !e.fix.contains("gunicorn"),
            "the owner's setting only: {}",
            e.fix
        );
        assert!(e.fix.contains("net.core.somaxconn = 4096"), "{}", e.fix);
        assert!(t.is_full(1, 42));
        // Still refusing: no new event.
        let t1 = t0 + Duration::from_secs(2);
        assert!(
            t.update(t1, wall, &[listener(5, 12, "php-fpm8.2")], limits)
                .is_empty()
        );
        let end = t.update(t1, wall, &[listener(0, 12, "php-fpm8.2")], limits);
        assert_eq!(end.len(), 1);
        // Refusals since the last poll before the episode: 10 - 3, then 12 - 10.
        assert_eq!((end[0].phase, end[0].drops_since_start), ("end", 9));
        assert_eq!(end[0].duration_seconds, Some(2.0));
        assert!(!t.is_full(1, 42));
    }

    #[test]
    fn unknown_servers_get_every_setting_and_a_closed_listener_ends_its_episode() {
        let mut t = UnixEpisodeTracker::default();
        let now = Instant::now();
        let wall = SystemTime::UNIX_EPOCH;
        let start = t.update(now, wall, &[listener(5, 0, "app")], |_| Limits::default());
        assert_eq!(start.len(), 1, "over its limit at first sight");
        let mut other = listener(0, 2, "app");
        other.inode = 43;
        let counted = t.update(now, wall, &[listener(5, 0, "app"), other], |_| {
            Limits::default()
        });
        assert_eq!(
            counted.len(),
            1,
            "refusals counted at first sight: {counted:?}"
        );
        assert_eq!(counted[0].drops_since_start, 2);
        for setting in ["listen.backlog", "--backlog", "--listen", "somaxconn"] {
            assert!(start[0].fix.contains(setting), "{}", start[0].fix);
        }
        let end = t.update(now, wall, &[], |_| Limits::default());
        assert_eq!(end.len(), 2, "both were in an episode: {end:?}");
        for e in &end {
            assert!(e.message.ends_with("(listener closed)"), "{}", e.message);
        }
    }
}
