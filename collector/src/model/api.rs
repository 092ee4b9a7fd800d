//! The JSON API's wire types: what `GET /api/listeners` serves and `sockq listeners`
//! and `sockq top` read back.

use serde::{Deserialize, Serialize};

use super::{Acceptor, Listener, Snapshot, pattern::PatternReport};

/// One listener with what the daemon knows about who accepts from it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ListenerRow {
    #[serde(flatten)]
    pub listener: Listener,
    /// Threads that accepted from it (with the daemon's probes only).
    #[serde(default)]
    pub acceptors: Vec<Acceptor>,
    /// The backend's execution pattern (with the daemon's probes only).
    #[serde(default)]
    pub pattern: Option<PatternReport>,
}

/// The rows of a daemon's snapshot (served at `/api/listeners`).
pub fn rows_from_snapshot(snapshot: &Snapshot) -> Vec<ListenerRow> {
    snapshot
        .listeners
        .iter()
        .map(|l| ListenerRow {
            listener: l.clone(),
            acceptors: snapshot.acceptors.of(l.inode).to_vec(),
            pattern: snapshot.patterns.get(&l.inode).cloned(),
        })
        .collect()
}

/// Rows of a one-shot inventory: no acceptors, no pattern.
pub fn rows_from_inventory(listeners: Vec<Listener>) -> Vec<ListenerRow> {
    listeners
        .into_iter()
        .map(|listener| ListenerRow {
            listener,
            acceptors: Vec::new(),
            pattern: None,
        })
        .collect()
}
