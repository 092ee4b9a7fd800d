//! The state the poller and the HTTP handlers share: the latest snapshot, build
//! information, the event log, and the latest snapshot's rendered bodies.
//!
//! A snapshot is rendered at most once per kind of body (format, gzip): by the first
//! scrape that wants it, or, when the [`ScrapeClock`] expects a scrape before the
//! next poll, as soon as it is published ([`SharedState::prerender`], on the HTTP
//! runtime), so that the scrape finds its body made.

use std::{
    net::IpAddr,
    sync::{Arc, Mutex, PoisonError, RwLock, Weak},
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
    /// The bodies rendered from the current snapshot, one per (format, gzip): every
    /// scrape until the next poll is served from them. With 10,000 listeners a
    /// render and its gzip take a few hundred ms of CPU; ten scrapers a second would
    /// otherwise queue behind each other and take the CPU the poller needs. Held
    /// while rendering, so scrapes that arrive meanwhile wait for that one render.
    rendered: Mutex<Vec<Rendered>>,
    /// When each scraper is expected next.
    clock: Mutex<ScrapeClock>,
    /// The kinds the clock said are due at the last publish, not yet rendered.
    due: Mutex<Vec<Kind>>,
    /// Raised when `due` was filled.
    published: tokio::sync::Notify,
}

/// One body rendered from the snapshot `from` (a `Weak`: it keeps the allocation,
/// not the listeners, so a freed snapshot's address is never reused while compared).
#[derive(Debug)]
struct Rendered {
    from: Weak<Snapshot>,
    format: Format,
    gzip: bool,
    body: Bytes,
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
                rendered: Mutex::new(Vec::new()),
                clock: Mutex::new(ScrapeClock::default()),
                due: Mutex::new(Vec::new()),
                published: tokio::sync::Notify::new(),
            }),
        }
    }

    /// Publishes a new snapshot; the next scrape renders it, unless
    /// [`prerender`](Self::prerender) was told to first. The previous one is freed
    /// when the last request still rendering it is done.
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
        // Dropped outside the lock: freeing 10,000 listeners takes a while.
        drop(previous);
        // The old snapshot's bodies go now, unless a scrape is rendering: the poller
        // never waits for one (the next scrape drops them then).
        if let Ok(mut rendered) = self.inner.rendered.try_lock() {
            rendered.clear();
        }
        let due = lock(&self.inner.clock).published(Instant::now());
        if !due.is_empty() {
            *lock(&self.inner.due) = due;
            self.inner.published.notify_one();
        }
    }

    /// Renders each snapshot the clock expects a scrape of, as soon as it is
    /// published, on a blocking thread of the runtime it runs on (the HTTP server's:
    /// no capabilities). Runs until dropped.
    pub(super) async fn prerender(self) {
        loop {
            self.inner.published.notified().await;
            let due = std::mem::take(&mut *lock(&self.inner.due));
            if due.is_empty() {
                continue;
            }
            let state = self.clone();
            let rendered = tokio::task::spawn_blocking(move || {
                for (format, gzip) in due {
                    if let Err(e) = state.render(format, gzip) {
                        tracing::debug!("rendering /metrics ahead of a scrape: {e}");
                    }
                }
            });
            if let Err(e) = rendered.await
                && e.is_panic()
            {
                tracing::error!("rendering /metrics ahead of a scrape panicked: {e}");
            }
        }
    }

    /// A scrape by `who` (its IP address, when known): noted on the clock, then
    /// served as [`render`](Self::render) does.
    pub fn scrape(
        &self,
        who: Option<IpAddr>,
        format: Format,
        gzip: bool,
    ) -> Result<Bytes, ExpositionError> {
        lock(&self.inner.clock).scraped(who, (format, gzip), Instant::now());
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
        let snapshot = self.snapshot();
        let current = Arc::downgrade(&snapshot);
        let mut rendered = lock(&self.inner.rendered);
        rendered.retain(|r| r.from.ptr_eq(&current));
        if let Some(r) = rendered
            .iter()
            .find(|r| r.format == format && r.gzip == gzip)
        {
            return Ok(r.body.clone());
        }
        let plain =
            prometheus::render_as(&snapshot, &self.inner.build, self.inner.classic, format)?;
        let body = Bytes::from(if gzip {
            prometheus::gzip(&plain)
        } else {
            plain
        });
        rendered.push(Rendered {
            from: current,
            format,
            gzip,
            body: body.clone(),
        });
        Ok(body)
    }
}

#[cfg(test)]
impl SharedState {
    /// The kinds of body made from the current snapshot.
    pub(super) fn rendered_kinds(&self) -> Vec<Kind> {
        let current = Arc::downgrade(&self.snapshot());
        lock(&self.inner.rendered)
            .iter()
            .filter(|r| r.from.ptr_eq(&current))
            .map(|r| (r.format, r.gzip))
            .collect()
    }
}

/// `mutex`, locked. A holder that panicked left whole values behind (each is
/// assigned whole): the poison flag carries no information.
fn lock<T>(mutex: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
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
