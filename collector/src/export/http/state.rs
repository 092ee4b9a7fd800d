//! The state the poller and the HTTP handlers share: the latest snapshot, build
//! information and the event log.

use std::sync::{Arc, PoisonError, RwLock};

use crate::{
    export::{
        event_log::EventLog,
        prometheus::{self, BuildInfo, ExpositionError},
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
    events: EventLog,
}

impl SharedState {
    /// Starts with an empty snapshot.
    pub fn new(build: BuildInfo) -> Self {
        Self {
            inner: Arc::new(Inner {
                snapshot: RwLock::new(Arc::new(Snapshot::default())),
                build,
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

    /// Renders the current snapshot; the lock is held only to clone the `Arc`.
    pub fn render(&self) -> Result<String, ExpositionError> {
        prometheus::render(&self.snapshot(), &self.inner.build)
    }
}
