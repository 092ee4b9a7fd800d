//! When each scraper's next `/metrics` scrape is due: what lets the HTTP server render
//! a snapshot as soon as the poller publishes it, before the scrape that will want it
//! arrives, so that the scrape is served a body already made.
//!
//! Prometheus scrapes a target at a fixed interval and a fixed phase. A scraper is
//! told by its IP address and the kind of body it asks for (format, gzip): the two
//! servers of an HA pair are two scrapers, and so are a Prometheus and a `curl` on one
//! host. For each, the clock keeps the time of its last scrape and the interval
//! between its last two. When a snapshot is published at `at`, and the next is
//! expected one poll gap later (`at + gap`, the gap between the last two publishes),
//! the kinds of the scrapers whose next scrape falls in `[at, at + gap)` are due: they
//! are rendered at once. A scraper whose next scrape is already past is late (jitter,
//! a slow network) until min(interval / 2, gap) has passed, then taken to have
//! stopped: due no longer.
//!
//! A wrong guess costs one render that no scrape is served from; a scrape nobody
//! predicted renders on its own, as it did before. So the server still renders about
//! once per scrape (a scraper faster than the poll gets each snapshot once), and a
//! scraper that changes its pace or stops costs at most a render or two.

use std::{
    net::IpAddr,
    time::{Duration, Instant},
};

use crate::export::prometheus::Format;

/// What a scraper asks for: the format, and whether gzipped.
pub(super) type Kind = (Format, bool);

/// Scrapers remembered (address and kind); past it, the one seen longest ago is
/// forgotten.
const MAX_SCRAPERS: usize = 16;

#[derive(Debug, Default)]
pub(super) struct ScrapeClock {
    scrapers: Vec<Scraper>,
    last_publish: Option<Instant>,
}

#[derive(Debug)]
struct Scraper {
    who: IpAddr,
    kind: Kind,
    last: Instant,
    /// Between its last two scrapes; `None` after its first.
    interval: Option<Duration>,
}

impl ScrapeClock {
    /// Notes a scrape by `who` for `kind` at `at`.
    pub(super) fn scraped(&mut self, who: IpAddr, kind: Kind, at: Instant) {
        if let Some(s) = self
            .scrapers
            .iter_mut()
            .find(|s| s.who == who && s.kind == kind)
        {
            s.interval = at.checked_duration_since(s.last);
            s.last = at;
            return;
        }
        if self.scrapers.len() >= MAX_SCRAPERS
            && let Some(oldest) = (0..self.scrapers.len()).min_by_key(|&i| self.scrapers[i].last)
        {
            self.scrapers.swap_remove(oldest);
        }
        self.scrapers.push(Scraper {
            who,
            kind,
            last: at,
            interval: None,
        });
    }

    /// Notes a snapshot published at `at`; the kinds a scrape will ask of it before
    /// the next one is published (each once). Nothing at the first publish: the poll
    /// gap is not known yet.
    pub(super) fn published(&mut self, at: Instant) -> Vec<Kind> {
        let gap = self
            .last_publish
            .and_then(|previous| at.checked_duration_since(previous));
        self.last_publish = Some(at);
        let Some(gap) = gap else {
            return Vec::new();
        };
        let mut due = Vec::new();
        for s in &self.scrapers {
            let Some(interval) = s.interval else {
                continue;
            };
            let next = s.last + interval;
            let expected = if next >= at {
                next < at + gap
            } else {
                at - next <= (interval / 2).min(gap)
            };
            if expected && !due.contains(&s.kind) {
                due.push(s.kind);
            }
        }
        due
    }
}

#[cfg(test)]
mod tests {
    use std::net::Ipv4Addr;

    use super::*;

    const TEXT_GZIP: Kind = (Format::Text, true);
    const PROTOBUF: Kind = (Format::Protobuf, true);

    fn ms(n: u64) -> Duration {
        Duration::from_millis(n)
    }

    fn ip(last: u8) -> IpAddr {
        IpAddr::V4(Ipv4Addr::new(10, 0, 0, last))
    }

    /// Publishes every second, and after each tenth of a second's publish scrapes as
    /// `scrapes` says for that tenth, over `tenths`; what each publish found due, by
    /// second.
    fn simulate(
        tenths: u64,
        scrapes: impl Fn(u64) -> Vec<(IpAddr, Kind)>,
    ) -> Vec<(u64, Vec<Kind>)> {
        let t0 = Instant::now();
        let mut clock = ScrapeClock::default();
        let mut dues = Vec::new();
        for tenth in 0..tenths {
            let now = t0 + ms(tenth * 100);
            if tenth % 10 == 0 {
                dues.push((tenth / 10, clock.published(now)));
            }
            for (who, kind) in scrapes(tenth) {
                clock.scraped(who, kind, now);
            }
        }
        dues
    }

    /// Each (second, kind) found due.
    fn flat(dues: Vec<(u64, Vec<Kind>)>) -> Vec<(u64, Kind)> {
        dues.into_iter()
            .flat_map(|(second, kinds)| kinds.into_iter().map(move |k| (second, k)))
            .collect()
    }

    #[test]
    fn a_prometheus_every_15_s_is_due_at_the_publish_before_each_scrape() {
        // Scrapes at 2.3 s, 17.3 s, 32.3 s, ...
        let due = flat(simulate(600, |t| match t % 150 {
            23 => vec![(ip(1), TEXT_GZIP)],
            _ => Vec::new(),
        }));
        // The first interval is known after the second scrape (17.3 s): the
        // snapshots published at 32 s and 47 s serve the scrapes at 32.3 and 47.3.
        assert_eq!(due, [(32, TEXT_GZIP), (47, TEXT_GZIP)]);
    }

    #[test]
    fn a_scraper_faster_than_the_poll_gets_every_snapshot_once() {
        let dues = simulate(100, |t| match t % 3 {
            1 => vec![(ip(1), TEXT_GZIP)],
            _ => Vec::new(),
        });
        // From the second publish on (its interval was known by then), every
        // snapshot, once.
        assert!(dues[0].1.is_empty());
        for (_, due) in &dues[1..] {
            assert_eq!(due, &[TEXT_GZIP]);
        }
    }

    #[test]
    fn a_scraper_that_stops_is_due_no_longer() {
        let t0 = Instant::now();
        let mut clock = ScrapeClock::default();
        clock.scraped(ip(1), TEXT_GZIP, t0);
        clock.scraped(ip(1), TEXT_GZIP, t0 + ms(5000));
        assert!(clock.published(t0 + ms(8000)).is_empty(), "first publish");
        // The gap is 1 s from here; the next scrape is due at 10 s.
        assert!(clock.published(t0 + ms(9000)).is_empty());
        assert_eq!(clock.published(t0 + ms(9900)), [TEXT_GZIP]);
        // Late: a gap (0.9 s, shorter than half the interval) is still waited for.
        assert_eq!(clock.published(t0 + ms(10_800)), [TEXT_GZIP]);
        // Then it has stopped.
        assert!(clock.published(t0 + ms(11_800)).is_empty());
        assert!(clock.published(t0 + ms(12_800)).is_empty());
    }

    #[test]
    fn two_scrapers_each_with_its_phase_and_kind() {
        // Scrapes every 15 s, at 2.3 s and 9.6 s past.
        let due = flat(simulate(600, |t| match t % 150 {
            23 => vec![(ip(1), TEXT_GZIP)],
            96 => vec![(ip(2), PROTOBUF)],
            _ => Vec::new(),
        }));
        assert_eq!(
            due,
            [
                (32, TEXT_GZIP),
                (39, PROTOBUF),
                (47, TEXT_GZIP),
                (54, PROTOBUF)
            ]
        );
    }

    #[test]
    fn another_kind_from_the_same_address_is_another_scraper() {
        // A Prometheus every 300 ms, and a plain `curl` from the same host just
        // before a publish now and then: the Prometheus stays due.
        let dues = simulate(100, |t| {
            let mut scrapes = Vec::new();
            if t % 3 == 1 {
                scrapes.push((ip(1), TEXT_GZIP));
            }
            if t % 30 == 9 {
                scrapes.push((ip(1), (Format::Text, false)));
            }
            scrapes
        });
        for (_, due) in &dues[1..] {
            assert!(due.contains(&TEXT_GZIP), "{dues:?}");
        }
    }

    #[test]
    fn the_table_forgets_the_scraper_seen_longest_ago() {
        let t0 = Instant::now();
        let mut clock = ScrapeClock::default();
        for n in 0..=MAX_SCRAPERS as u8 {
            clock.scraped(ip(n), TEXT_GZIP, t0 + ms(u64::from(n)));
        }
        assert_eq!(clock.scrapers.len(), MAX_SCRAPERS);
        assert!(clock.scrapers.iter().all(|s| s.who != ip(0)));
        assert!(
            clock
                .scrapers
                .iter()
                .any(|s| s.who == ip(MAX_SCRAPERS as u8))
        );
        // Nothing known of the poll yet, nor of any interval: nothing due.
        assert!(clock.published(t0 + ms(100)).is_empty());
        assert!(clock.published(t0 + ms(1100)).is_empty());
    }
}
