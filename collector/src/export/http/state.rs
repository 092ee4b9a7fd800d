//! The state the poller and the HTTP handlers share: the latest snapshot, build
//! information, the event log, and the latest snapshot's rendered bodies.
//!
//! A snapshot is rendered at most once per kind of body (format, gzip): by the first
//! scrape that wants it, or, when the [`ScrapeClock`] expects a scrape before the
//! next poll, as soon as it is published ([`SharedState::start_prerender`], on a
//! thread of its own at a lower priority than the poller's), so that the scrape finds
//! its body made. A scrape that comes while its kind is being rendered is served the
//! body of the snapshot before (one poll old) rather than wait; only when there is
//! none does it wait for the render.

use std::{
    net::IpAddr,
    sync::{Arc, Condvar, Mutex, MutexGuard, PoisonError, RwLock, Weak},
    time::Instant,
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
    pub(super) snapshot: RwLock<Arc<Snapshot>>,
    build: BuildInfo,
    /// The classic histogram buckets served (`--fine-buckets`).
    classic: ClassicBuckets,
    events: EventLog,
    /// The bodies made, one per (format, gzip), of the current or the previous
    /// snapshot: every scrape until the next poll is served from them. With 10,000
    /// listeners a render and its gzip take a few hundred ms of CPU; ten scrapers a
    /// second would otherwise queue behind each other and take the CPU the poller
    /// needs. Held only to look and to store, never while rendering.
    bodies: Mutex<Vec<Body>>,
    /// Raised when a render ends, for the scrapes that had no body to be served.
    made: Condvar,
    /// When each scraper is expected next, and what the pre-render thread is asked.
    schedule: Mutex<Schedule>,
    /// Raised when the schedule has work for the pre-render thread, or it is to stop.
    due_changed: Condvar,
}

#[derive(Debug, Default)]
struct Schedule {
    clock: ScrapeClock,
    /// The kinds the clock said are due at the last publish, not yet rendered.
    due: Vec<Kind>,
    /// The server the pre-render thread renders for has stopped.
    stop: bool,
}

/// The niceness of the pre-render thread: below the poller (0), so that a render
/// ahead of a scrape never takes the CPU a poll needs; a scrape that comes meanwhile
/// is served the previous snapshot's body.
const PRERENDER_NICE: libc::c_int = 10;

/// Stops the pre-render thread when dropped (it ends once its render is done).
#[derive(Debug)]
pub(super) struct Prerender(SharedState);

impl Drop for Prerender {
    fn drop(&mut self) {
        lock(&self.0.inner.schedule).stop = true;
        self.0.inner.due_changed.notify_all();
    }
}

/// The body of one kind.
#[derive(Debug)]
struct Body {
    kind: Kind,
    /// The last one made and the snapshot it was made from (a `Weak`: it keeps the
    /// allocation, not the listeners, so a freed snapshot's address is never reused
    /// while compared). Of the current snapshot or the one before (a render that
    /// outlived two polls leaves an older one until the next poll).
    made: Option<(Weak<Snapshot>, Bytes)>,
    /// A render of this kind is under way.
    rendering: bool,
}

impl SharedState {
    /// Starts with an empty snapshot; histograms get the short classic buckets.
    pub fn new(build: BuildInfo) -> Self {
        Self::with_buckets(build, ClassicBuckets::Short)
    }

    /// Starts with an empty snapshot; histograms get the `classic` buckets.
    pub fn with_buckets(build: BuildInfo, classic: ClassicBuckets) -> Self {
        Self {
            inner: Arc::new(Inner {
                snapshot: RwLock::new(Arc::new(Snapshot::default())),
                build,
                classic,
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
        // A writer that panicked left a whole Arc behind (assignment is not torn), so
        // the poison flag carries no information: ignore it.
        let previous = std::mem::replace(
            &mut *self
                .inner
                .snapshot
                .write()
                .unwrap_or_else(PoisonError::into_inner),
            snapshot,
        );
        // Bodies older than the snapshot replaced go: those of the one replaced stay
        // to be served while the new one renders.
        let replaced = Arc::downgrade(&previous);
        for body in lock(&self.inner.bodies).iter_mut() {
            if body
                .made
                .as_ref()
                .is_some_and(|(from, _)| !from.ptr_eq(&replaced))
            {
                body.made = None;
            }
        }
        // Dropped outside the locks: freeing 10,000 listeners takes a while.
        drop(previous);
        let mut schedule = lock(&self.inner.schedule);
        schedule.due = schedule.clock.published(Instant::now());
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
            for (format, gzip) in kinds {
                if let Err(e) = self.render(format, gzip) {
                    tracing::debug!("rendering /metrics ahead of a scrape: {e}");
                }
            }
        }
    }

    /// A scrape by `who` (its IP address): noted on the clock, then served as
    /// [`render`](Self::render) does.
    pub fn scrape(
        &self,
        who: IpAddr,
        format: Format,
        gzip: bool,
    ) -> Result<Bytes, ExpositionError> {
        lock(&self.inner.schedule)
            .clock
            .scraped(who, (format, gzip), Instant::now());
        self.render(format, gzip)
    }

    /// The current snapshot, shared: no copy of its listeners.
    pub fn snapshot(&self) -> Arc<Snapshot> {
        Arc::clone(
            &self
                .inner
                .snapshot
                .read()
                .unwrap_or_else(PoisonError::into_inner),
        )
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
        let kind = (format, gzip);
        let mut bodies = lock(&self.inner.bodies);
        // The snapshot is taken under the bodies' lock, each time round: a render
        // then always starts from a snapshot at least as new as the last one made of
        // its kind (renders of a kind take turns), so no scraper is ever served an
        // older body after a newer one (counters never go back).
        let (snapshot, current) = loop {
            let snapshot = self.snapshot();
            let current = Arc::downgrade(&snapshot);
            let body = body_of(&mut bodies, kind);
            match (&body.made, body.rendering) {
                (Some((from, made)), _) if from.ptr_eq(&current) => return Ok(made.clone()),
                // Under way: the previous snapshot's body rather than a wait.
                (Some((_, made)), true) => return Ok(made.clone()),
                (None, true) => {
                    bodies = self
                        .inner
                        .made
                        .wait(bodies)
                        .unwrap_or_else(PoisonError::into_inner);
                }
                (_, false) => {
                    body.rendering = true;
                    break (snapshot, current);
                }
            }
        };
        drop(bodies);
        // Whatever happens to the render, the flag comes down and waiters wake.
        let _rendering = Rendering { state: self, kind };
        let plain =
            prometheus::render_as(&snapshot, &self.inner.build, self.inner.classic, format)?;
        let made = Bytes::from(if gzip {
            prometheus::gzip(&plain)
        } else {
            plain
        });
        body_of(&mut lock(&self.inner.bodies), kind).made = Some((current, made.clone()));
        Ok(made)
    }
}

/// A render under way: dropped, it lowers its kind's flag and wakes the waiters.
struct Rendering<'a> {
    state: &'a SharedState,
    kind: Kind,
}

impl Drop for Rendering<'_> {
    fn drop(&mut self) {
        body_of(&mut lock(&self.state.inner.bodies), self.kind).rendering = false;
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
                rendering: false,
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
        let current = Arc::downgrade(&self.snapshot());
        lock(&self.inner.bodies)
            .iter()
            .filter(|b| {
                b.made
                    .as_ref()
                    .is_some_and(|(from, _)| from.ptr_eq(&current))
            })
            .map(|b| b.kind)
            .collect()
    }

    /// Marks `kind` as being rendered, or no longer (waking the waiters), as a
    /// render in another thread would.
    pub(super) fn set_rendering(&self, kind: Kind, rendering: bool) {
        body_of(&mut lock(&self.inner.bodies), kind).rendering = rendering;
        if !rendering {
            self.inner.made.notify_all();
        }
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
