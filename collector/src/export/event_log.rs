//! The daemon's notable events (`sockq events`): kept in a bounded in-memory log,
//! each a JSON object with a sequence number `seq`, served as JSON lines by
//! `GET /events/recent[?after=SEQ]`. The schema of each event type is documented
//! where it is built (`episodes::EpisodeEvent`, schema 1).

use std::{
    collections::VecDeque,
    sync::{Mutex, PoisonError},
};

/// How many events the log keeps; older ones are dropped first.
pub const CAPACITY: usize = 1024;

#[derive(Debug, Default)]
pub struct EventLog {
    inner: Mutex<Inner>,
}

#[derive(Debug, Default)]
struct Inner {
    next_seq: u64,
    events: VecDeque<(u64, String)>,
}

impl EventLog {
    /// Appends an event (a JSON object; anything else is wrapped as `{"event": ...}`)
    /// and returns its sequence number, starting at 1.
    pub fn push(&self, event: serde_json::Value) -> u64 {
        let mut inner = self.inner.lock().unwrap_or_else(PoisonError::into_inner);
        inner.next_seq += 1;
        let seq = inner.next_seq;
        let mut object = match event {
            serde_json::Value::Object(map) => map,
            other => {
                let mut map = serde_json::Map::new();
                map.insert("event".into(), other);
                map
            }
        };
        object.insert("seq".into(), seq.into());
        let line = serde_json::Value::Object(object).to_string();
        if inner.events.len() == CAPACITY {
            inner.events.pop_front();
        }
        inner.events.push_back((seq, line));
        seq
    }

    /// The events after `after` (all with 0), oldest first, one JSON object a line.
    pub fn since(&self, after: u64) -> String {
        let inner = self.inner.lock().unwrap_or_else(PoisonError::into_inner);
        let mut out = String::new();
        for (_, line) in inner.events.iter().filter(|(seq, _)| *seq > after) {
            out.push_str(line);
            out.push('\n');
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn numbers_and_filters_events() {
        let log = EventLog::default();
        assert_eq!(log.push(serde_json::json!({"type": "a"})), 1);
        assert_eq!(log.push(serde_json::json!("bare")), 2);
        let all = log.since(0);
        assert_eq!(all.lines().count(), 2);
        let first: serde_json::Value =
            serde_json::from_str(all.lines().next().unwrap_or_default()).expect("json");
        assert_eq!(first["seq"], 1);
        assert_eq!(first["type"], "a");
        assert_eq!(log.since(1).lines().count(), 1);
        assert!(log.since(2).is_empty());
    }

    #[test]
    fn keeps_only_the_newest() {
        let log = EventLog::default();
        for i in 0..CAPACITY + 10 {
            log.push(serde_json::json!({ "i": i }));
        }
        let all = log.since(0);
        assert_eq!(all.lines().count(), CAPACITY);
        assert!(all.starts_with("{\"i\":10,"), "{}", &all[..20]);
    }
}
