//! The state the poller and the HTTP handlers share: the latest snapshot, build
//! information, the event log, and the latest snapshot's rendered bodies.
//!
//! A snapshot is rendered once per kind of body (format, gzip) by the first scrape
//! that wants it, or, when the [`ScrapeClock`] expects a scrape before the next
//! poll, as soon as it is published ([`SharedState::start_prerender`], on a thread
//! of its own at the lowest priority, so that it takes only CPU the poller does not
//! want), so that the scrape finds its body made. A scrape that comes while its kind
//! is being rendered, or is asked of the pre-render thread and not started yet, is
//! served the newest body made rather than wait, if still servable: that of the
//! snapshot before, or of one replaced at most a poll interval ago
//! ([`Published::servable`]). When there is none, it waits for another scrape's
//! render, never for the pre-render thread's (which a busy machine may leave without
//! CPU for long): it renders itself. Bodies are kept newest first: a render that ends after a newer
//! snapshot's was kept is served to its scrape and dropped, so no scraper is served
//! an older body after a newer one (counters never go back). Each answer says which
//! of these it was ([`Served`], in the [`SERVED_HEADER`] header).

use std::{
    collections::VecDeque,
    net::IpAddr,
    sync::{Arc, Condvar, Mutex, MutexGuard, PoisonError, RwLock},
    time::{Duration, Instant},
};

use axum::body::Bytes;

use super::scrape_clock::{Kind, ScrapeClock};
use crate::{
    export::{
        event_log::EventLog,
        prometheus::{self, BuildInfo, ClassicBuckets, ExpositionError, Format},
    },
    model::Snapshot,
};

/// The latest snapshot plus build information, shared between the poller (which
/// [`replace`](Self::replace)s the snapshot) and the HTTP handlers. Cheap to clone.
#[derive(Debug, Clone)]
pub struct SharedState {
    pub(super) inner: Arc<Inner>,
}

#[derive(Debug)]
pub(super) struct Inner {
    /// Swapped whole by the poller, under the lock only for the swap; readers clone
    /// the `Arc` and render without holding it.
    pub(super) snapshot: RwLock<Published>,
    build: BuildInfo,
    /// The classic histogram buckets served (`--fine-buckets`).
    classic: ClassicBuckets,
    /// How long after its snapshot was replaced a body may still be served while
    /// the current one's is made (the poll interval: [`with_options`]).
    ///
    /// [`with_options`]: SharedState::with_options
    stale_for: Duration,
    events: EventLog,
    /// The bodies made, one per (format, gzip), of the current snapshot or of one
    /// still [`servable`](Published::servable): every scrape until the next poll is
    /// served from them. With 10,000 listeners a render and its gzip take a few
    /// hundred ms of CPU; ten scrapers a second would otherwise queue behind each
    /// other and take the CPU the poller needs. Held only to look and to store, never
    /// while rendering; taken before `snapshot`'s lock when both are held, and after
    /// `schedule`'s.
    bodies: Mutex<Vec<Body>>,
    /// Raised when a render ends, for the scrapes that had no body to be served.
    made: Condvar,
    /// When each scraper is expected next, and what the pre-render thread is asked.
    schedule: Mutex<Schedule>,
    /// Raised when the schedule has work for the pre-render thread, or it is to stop.
    due_changed: Condvar,
}

/// A snapshot and its rank among those published (0: the empty one of the start).
#[derive(Debug)]
pub(super) struct Published {
    snapshot: Arc<Snapshot>,
    number: u64,
    /// The numbers of the last [`SUPERSEDED_KEPT`] snapshots replaced, each with
    /// when it was, newest last.
    superseded: VecDeque<(u64, Instant)>,
}

/// How many replaced snapshots [`Published`] remembers the time of.
const SUPERSEDED_KEPT: usize = 16;

impl Published {
    /// Whether a body of snapshot `number` may be served now while the current
    /// one's is made: it is the one just before the current one (whenever that was
    /// replaced), or one replaced at most `stale_for` ago. On a busy machine the
    /// event-driven polls can come faster than the pre-render thread renders: the
    /// time bound keeps scrapes served at once without serving older data than a
    /// poll interval's worth.
    fn servable(&self, number: u64, now: Instant, stale_for: Duration) -> bool {
        number + 1 == self.number
            || self.superseded.iter().any(|&(replaced, at)| {
                replaced == number && now.saturating_duration_since(at) <= stale_for
            })
    }
}

#[derive(Debug, Default)]
struct Schedule {
    clock: ScrapeClock,
    /// The kinds the clock said are due at the last publish, not yet rendered.
    due: Vec<Kind>,
    /// The server the pre-render thread renders for has stopped.
    stop: bool,
    /// A pre-render thread is running: publishes mark the kinds due as asked of it.
    running: bool,
}

/// The niceness of the pre-render thread: the lowest, far below the poller (0), so
/// that a render ahead of a scrape takes only the CPU a poll leaves (at 19 a thread
/// weighs 15 against a normal one's 1,024). Nothing waits for it: a scrape that
/// comes meanwhile is served the previous snapshot's body, or renders itself.
const PRERENDER_NICE: libc::c_int = 19;

/// Stops the pre-render thread when dropped (it ends once its render is done).
#[derive(Debug)]
pub(super) struct Prerender(SharedState);

impl Drop for Prerender {
    fn drop(&mut self) {
        {
            let mut schedule = lock(&self.0.inner.schedule);
            schedule.stop = true;
            schedule.running = false;
        }
        self.0.inner.due_changed.notify_all();
        // What was asked of it will not be done: scrapes render for themselves.
        for body in lock(&self.0.inner.bodies).iter_mut() {
            body.asked = false;
        }
    }
}

/// The body of one kind.
#[derive(Debug)]
struct Body {
    kind: Kind,
    /// The last one made and the number of the snapshot it was made from: of the
    /// current snapshot or of one still servable ([`Published::servable`]; a render
    /// that outlived that leaves an unservable one until the next poll).
    made: Option<(u64, Bytes)>,
    /// The number of the newest snapshot a body of this kind was kept of (it stays
    /// when `made` goes): a render of an older one is not kept.
    newest: u64,
    /// A scrape's render of this kind is under way: scrapes with no body wait for it.
    rendering: bool,
    /// The pre-render thread's render of this kind is under way: nothing waits for
    /// it.
    ahead: bool,
    /// The pre-render thread was asked for this kind of the current snapshot at its
    /// publish and has not started it yet (at niceness 19 on a busy machine, that
    /// can take long): scrapes are served the previous body meanwhile, as while it
    /// renders.
    asked: bool,
}

/// The longest [`Inner::stale_for`], and its value unless told: the daemon's
/// default poll interval. With `--interval 30` and listener events asking for polls
/// every few hundred ms, a body 30 s old would otherwise be served.
const MAX_STALE_FOR: Duration = Duration::from_secs(1);

/// Who renders a body.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Renderer {
    Scrape,
    Ahead,
}

/// How a scrape's body came to be, told to the scraper in the [`SERVED_HEADER`]
/// header: only [`Rendered`](Self::Rendered) and [`Waited`](Self::Waited) scrapes
/// spent time on a render.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Served {
    /// The current snapshot's body, made before (ahead, or by an earlier scrape).
    Made,
    /// The body of an earlier snapshot (one still servable), while the current one's
    /// is being made.
    Previous,
    /// Made by another scrape's render, which this one waited for.
    Waited,
    /// Rendered by this scrape.
    Rendered,
}

impl Served {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Made => "made",
            Self::Previous => "previous",
            Self::Waited => "waited",
            Self::Rendered => "rendered",
        }
    }
}

/// The response header that says how a `/metrics` body came to be ([`Served`]):
/// what tells a scrape slowed by a render from one slowed by anything else.
pub const SERVED_HEADER: &str = "sockq-body";

impl SharedState {
    /// Starts with an empty snapshot; histograms get the short classic buckets.
    pub fn new(build: BuildInfo) -> Self {
        Self::with_buckets(build, ClassicBuckets::Short)
    }

    /// Starts with an empty snapshot; histograms get the `classic` buckets.
    pub fn with_buckets(build: BuildInfo, classic: ClassicBuckets) -> Self {
        Self::with_options(build, classic, MAX_STALE_FOR)
    }

    /// Starts with an empty snapshot; histograms get the `classic` buckets; a body
    /// is served up to `stale_for` (at most [`MAX_STALE_FOR`]) after its snapshot was
    /// replaced, while the new one's is made (the daemon passes its poll interval).
    pub fn with_options(build: BuildInfo, classic: ClassicBuckets, stale_for: Duration) -> Self {
        Self {
            inner: Arc::new(Inner {
                snapshot: RwLock::new(Published {
                    snapshot: Arc::new(Snapshot::default()),
                    number: 0,
                    superseded: VecDeque::new(),
                }),
                build,
                classic,
                stale_for: stale_for.min(MAX_STALE_FOR),
                events: EventLog::default(),
                bodies: Mutex::new(Vec::new()),
                made: Condvar::new(),
                schedule: Mutex::new(Schedule::default()),
                due_changed: Condvar::new(),
            }),
        }
    }

    /// Publishes a new snapshot; the next scrape renders it, unless the pre-render
    /// thread ([`start_prerender`](Self::start_prerender)) was told to first. The
    /// previous one is freed when the last request still rendering it is done.
    pub fn replace(&self, snapshot: Snapshot) {
        let snapshot = Arc::new(snapshot);
        let previous = {
            // A writer that panicked left a whole value behind (assignments are not
            // torn), so the poison flag carries no information: ignore it.
            let mut published = self
                .inner
                .snapshot
                .write()
                .unwrap_or_else(PoisonError::into_inner);
            let replaced = published.number;
            if published.superseded.len() == SUPERSEDED_KEPT {
                published.superseded.pop_front();
            }
            published.superseded.push_back((replaced, Instant::now()));
            published.number += 1;
            std::mem::replace(&mut published.snapshot, snapshot)
        };
        // Bodies no longer servable go: that of the one replaced stays to be served
        // while the new one renders, and any other still fresh enough. The bodies'
        // lock is taken before the snapshot's, as a scrape does.
        {
            let mut bodies = lock(&self.inner.bodies);
            let published = self.read_published();
            let now = Instant::now();
            for body in bodies.iter_mut() {
                if body
                    .made
                    .as_ref()
                    .is_some_and(|&(of, _)| !published.servable(of, now, self.inner.stale_for))
                {
                    body.made = None;
                }
            }
        }
        // Dropped outside the locks: freeing 10,000 listeners takes a while.
        drop(previous);
        let mut schedule = lock(&self.inner.schedule);
        schedule.due = schedule.clock.published(Instant::now());
        // Marked before the pre-render thread can take them (the schedule's lock is
        // held: it is only ever taken before the bodies'); what was asked of the
        // snapshot replaced is asked no longer.
        let mut bodies = lock(&self.inner.bodies);
        for kind in &schedule.due {
            body_of(&mut bodies, *kind);
        }
        for body in bodies.iter_mut() {
            body.asked = schedule.running && schedule.due.contains(&body.kind);
        }
        drop(bodies);
        if !schedule.due.is_empty() {
            self.inner.due_changed.notify_all();
        }
    }

    /// Starts the thread that renders each snapshot the clock expects a scrape of, as
    /// soon as it is published, at niceness [`PRERENDER_NICE`]. It inherits the
    /// capabilities of the calling thread (the HTTP server's: none). Stops when the
    /// returned guard is dropped; one per state (the stop is the state's).
    pub(super) fn start_prerender(&self) -> std::io::Result<Prerender> {
        let state = self.clone();
        std::thread::Builder::new()
            .name("sockq-http-pre".to_owned())
            .spawn(move || state.prerender_loop())?;
        lock(&self.inner.schedule).running = true;
        Ok(Prerender(self.clone()))
    }

    fn prerender_loop(&self) {
        // SAFETY: plain syscalls on this thread (a tid names one thread to
        // setpriority on Linux); raising one's own niceness needs no privilege.
        let reniced =
            unsafe { libc::setpriority(libc::PRIO_PROCESS, libc::gettid() as _, PRERENDER_NICE) };
        if reniced != 0 {
            tracing::debug!(
                "pre-render thread at normal priority: {}",
                std::io::Error::last_os_error()
            );
        }
        loop {
            let mut schedule = lock(&self.inner.schedule);
            while schedule.due.is_empty() && !schedule.stop {
                schedule = self
                    .inner
                    .due_changed
                    .wait(schedule)
                    .unwrap_or_else(PoisonError::into_inner);
            }
            if schedule.stop {
                return;
            }
            let kinds = std::mem::take(&mut schedule.due);
            drop(schedule);
            for kind in kinds {
                if let Err(e) = self.render_ahead(kind) {
                    tracing::debug!("rendering /metrics ahead of a scrape: {e}");
                }
            }
        }
    }

    /// A scrape by `who` (its IP address): noted on the clock, then served as
    /// [`render`](Self::render) does; with how its body came to be.
    pub fn scrape(
        &self,
        who: IpAddr,
        format: Format,
        gzip: bool,
    ) -> Result<(Bytes, Served), ExpositionError> {
        lock(&self.inner.schedule)
            .clock
            .scraped(who, (format, gzip), Instant::now());
        self.serve((format, gzip))
    }

    /// The current snapshot, shared: no copy of its listeners.
    pub fn snapshot(&self) -> Arc<Snapshot> {
        self.published().0
    }

    /// The current snapshot and its number.
    fn published(&self) -> (Arc<Snapshot>, u64) {
        let published = self.read_published();
        (Arc::clone(&published.snapshot), published.number)
    }

    fn read_published(&self) -> std::sync::RwLockReadGuard<'_, Published> {
        self.inner
            .snapshot
            .read()
            .unwrap_or_else(PoisonError::into_inner)
    }

    /// The current snapshot, its number, and whether the body of `kind` kept in
    /// `bodies`, if not of it, may be served meanwhile.
    fn published_servable(&self, bodies: &[Body], kind: Kind) -> (Arc<Snapshot>, u64, bool) {
        let published = self.read_published();
        let servable = bodies
            .iter()
            .find(|b| b.kind == kind)
            .and_then(|b| b.made.as_ref())
            .is_some_and(|&(of, _)| published.servable(of, Instant::now(), self.inner.stale_for));
        (Arc::clone(&published.snapshot), published.number, servable)
    }

    pub fn build(&self) -> &BuildInfo {
        &self.inner.build
    }

    /// The log of notable events served at `/events/recent`.
    pub fn events(&self) -> &EventLog {
        &self.inner.events
    }

    /// The current snapshot in `format`, gzipped if `gzip`: rendered once per
    /// snapshot and kind, then served from memory. The snapshot lock is held only to
    /// clone the `Arc`.
    pub fn render(&self, format: Format, gzip: bool) -> Result<Bytes, ExpositionError> {
        self.serve((format, gzip)).map(|(body, _)| body)
    }

    /// The body of `kind` for a scrape, and how it came to be.
    fn serve(&self, kind: Kind) -> Result<(Bytes, Served), ExpositionError> {
        let mut bodies = lock(&self.inner.bodies);
        let mut waited = false;
        // The snapshot is taken under the bodies' lock, each time round: a scrape that
        // waited renders the snapshot current when it wakes.
        let (snapshot, number) = loop {
            let (snapshot, number, servable) = self.published_servable(&bodies, kind);
            let body = body_of(&mut bodies, kind);
            let under_way = body.rendering || body.ahead || body.asked;
            let served = |as_made| if waited { Served::Waited } else { as_made };
            match &body.made {
                Some((of, made)) if *of == number => {
                    return Ok((made.clone(), served(Served::Made)));
                }
                // Under way: an earlier snapshot's body rather than a wait.
                Some((_, made)) if under_way && servable => {
                    return Ok((made.clone(), served(Served::Previous)));
                }
                _ if body.rendering => {
                    waited = true;
                    bodies = self
                        .inner
                        .made
                        .wait(bodies)
                        .unwrap_or_else(PoisonError::into_inner);
                }
                // Nothing under way, or only the pre-render thread: this scrape renders.
                _ => {
                    body.rendering = true;
                    break (snapshot, number);
                }
            }
        };
        drop(bodies);
        // Whatever happens to the render, the flag comes down and waiters wake.
        let _rendering = Rendering {
            state: self,
            kind,
            by: Renderer::Scrape,
        };
        self.make(kind, &snapshot, number)
            .map(|body| (body, Served::Rendered))
    }

    /// Renders the current snapshot as `kind` ahead of a scrape, unless it is made
    /// already or a scrape is rendering it.
    fn render_ahead(&self, kind: Kind) -> Result<(), ExpositionError> {
        let (snapshot, number) = {
            let mut bodies = lock(&self.inner.bodies);
            let (snapshot, number) = self.published();
            let body = body_of(&mut bodies, kind);
            body.asked = false;
            let made = body.made.as_ref().is_some_and(|&(of, _)| of == number);
            if made || body.rendering || body.ahead {
                return Ok(());
            }
            body.ahead = true;
            (snapshot, number)
        };
        let _rendering = Rendering {
            state: self,
            kind,
            by: Renderer::Ahead,
        };
        self.make(kind, &snapshot, number).map(drop)
    }

    /// `snapshot` (number `number`) rendered as `kind`; kept to be served unless a
    /// body of a newer snapshot was kept meanwhile.
    fn make(
        &self,
        kind: Kind,
        snapshot: &Arc<Snapshot>,
        number: u64,
    ) -> Result<Bytes, ExpositionError> {
        let (format, gzip) = kind;
        let plain = prometheus::render_as(snapshot, &self.inner.build, self.inner.classic, format)?;
        let made = Bytes::from(if gzip {
            prometheus::gzip(&plain)
        } else {
            plain
        });
        let mut bodies = lock(&self.inner.bodies);
        let body = body_of(&mut bodies, kind);
        if number >= body.newest {
            body.newest = number;
            body.made = Some((number, made.clone()));
        }
        Ok(made)
    }
}

/// A render under way: dropped, it lowers its kind's flag and wakes the waiters.
struct Rendering<'a> {
    state: &'a SharedState,
    kind: Kind,
    by: Renderer,
}

impl Drop for Rendering<'_> {
    fn drop(&mut self) {
        let mut bodies = lock(&self.state.inner.bodies);
        let body = body_of(&mut bodies, self.kind);
        match self.by {
            Renderer::Scrape => body.rendering = false,
            Renderer::Ahead => body.ahead = false,
        }
        drop(bodies);
        self.state.inner.made.notify_all();
    }
}

/// The entry of `kind`, added if missing.
fn body_of(bodies: &mut Vec<Body>, kind: Kind) -> &mut Body {
    let index = match bodies.iter().position(|b| b.kind == kind) {
        Some(index) => index,
        None => {
            bodies.push(Body {
                kind,
                made: None,
                newest: 0,
                rendering: false,
                ahead: false,
                asked: false,
            });
            bodies.len() - 1
        }
    };
    &mut bodies[index]
}

#[cfg(test)]
impl SharedState {
    /// The kinds of body made from the current snapshot.
    pub(super) fn rendered_kinds(&self) -> Vec<Kind> {
        let current = self.number();
        lock(&self.inner.bodies)
            .iter()
            .filter(|b| b.made.as_ref().is_some_and(|&(of, _)| of == current))
            .map(|b| b.kind)
            .collect()
    }

    /// Marks `kind` as being rendered, or no longer (waking the waiters), as a
    /// scrape's render in another thread would.
    pub(super) fn set_rendering(&self, kind: Kind, rendering: bool) {
        body_of(&mut lock(&self.inner.bodies), kind).rendering = rendering;
        if !rendering {
            self.inner.made.notify_all();
        }
    }

    /// Has publishes ask a pre-render thread that never comes (one that gets no CPU).
    pub(super) fn pretend_prerender_thread(&self) {
        lock(&self.inner.schedule).running = true;
    }

    /// Marks `kind` as being rendered by the pre-render thread, or no longer.
    pub(super) fn set_rendering_ahead(&self, kind: Kind, ahead: bool) {
        body_of(&mut lock(&self.inner.bodies), kind).ahead = ahead;
    }

    /// The current snapshot, rendered as `kind` by the pre-render thread.
    pub(super) fn render_ahead_now(&self, kind: Kind) {
        self.render_ahead(kind).expect("render ahead");
    }

    /// Renders `snapshot`, number `number`, as `kind`, as a render that started
    /// before later publishes would when it ends.
    pub(super) fn make_of(&self, kind: Kind, snapshot: &Arc<Snapshot>, number: u64) -> Bytes {
        self.make(kind, snapshot, number).expect("render")
    }

    /// The current snapshot's number.
    pub(super) fn number(&self) -> u64 {
        self.published().1
    }

    /// Whether a body of `kind`, of any snapshot, is kept.
    pub(super) fn keeps(&self, kind: Kind) -> bool {
        lock(&self.inner.bodies)
            .iter()
            .any(|b| b.kind == kind && b.made.is_some())
    }
}

/// `mutex`, locked. A holder that panicked left whole values behind (each is
/// assigned whole): the poison flag carries no information.
fn lock<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    mutex.lock().unwrap_or_else(PoisonError::into_inner)
}

/// Whether an `Accept-Encoding` header accepts gzip: `gzip` (or `x-gzip`) at a
/// quality above 0, else `*` at a quality above 0.
pub fn accepts_gzip(accept_encoding: Option<&str>) -> bool {
    let (mut gzip, mut any) = (None, None);
    for coding in accept_encoding.unwrap_or_default().split(',') {
        let mut parts = coding.split(';').map(str::trim);
        let name = parts.next().unwrap_or_default().to_ascii_lowercase();
        let q = parts
            .filter_map(|p| p.split_once('='))
            .find(|(k, _)| k.trim().eq_ignore_ascii_case("q"))
            .map_or(1.0, |(_, v)| v.trim().parse::<f64>().unwrap_or(0.0));
        match name.as_str() {
            "gzip" | "x-gzip" => gzip = Some(q),
            "*" => any = Some(q),
            _ => {}
        }
    }
    gzip.or(any).is_some_and(|q| q > 0.0)
}
