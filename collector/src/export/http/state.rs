//! The state the poller and the HTTP handlers share: the latest snapshot, build
//! information and the event log.

use std::sync::{Arc, PoisonError, RwLock};

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
            }),
        }
    }

    /// Publishes a new snapshot; the next scrape renders it. The previous one is
    /// freed when the last request still rendering it is done.
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

    /// Renders the current snapshot in `format`; the lock is held only to clone the
    /// `Arc`.
    pub fn render(&self, format: Format) -> Result<Vec<u8>, ExpositionError> {
        let snapshot = self.snapshot();
        prometheus::render_as(&snapshot, &self.inner.build, self.inner.classic, format)
    }
}
