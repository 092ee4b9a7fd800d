//! Decoding the records of the `EVENTS` ring buffer.

use collector_common::{
    listener::{EVENT_LISTENER, EVENT_QUEUE_FULL, ListenerEvent},
    nagle::{EVENT_STALL, StallEvent},
    queue::QueueFullEvent,
};

/// A record from the `EVENTS` ring buffer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Event {
    Listener(ListenerEvent),
    QueueFull(QueueFullEvent),
    Stall(StallEvent),
}

/// Decodes one ring buffer record by its leading kind; `None` for an unknown kind
/// or a record too short for it.
pub fn decode_event(bytes: &[u8]) -> Option<Event> {
    let kind = u32::from_ne_bytes(bytes.get(..4)?.try_into().ok()?);
    match kind {
        EVENT_LISTENER => read_pod::<ListenerEvent>(bytes).map(Event::Listener),
        EVENT_QUEUE_FULL => read_pod::<QueueFullEvent>(bytes).map(Event::QueueFull),
        EVENT_STALL => read_pod::<StallEvent>(bytes).map(Event::Stall),
        _ => None,
    }
}

fn read_pod<T: aya::Pod>(bytes: &[u8]) -> Option<T> {
    if bytes.len() < std::mem::size_of::<T>() {
        return None;
    }
    // SAFETY: the length is checked above, T is Pod (any bit pattern is valid) and
    // read_unaligned imposes no alignment requirement.
    Some(unsafe { std::ptr::read_unaligned(bytes.as_ptr().cast::<T>()) })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn records_decode_by_kind() {
        assert!(decode_event(&[]).is_none());
        assert!(
            decode_event(&[1, 0, 0, 0, 0]).is_none(),
            "too short for a listener event"
        );
        let mut bytes = vec![0u8; std::mem::size_of::<QueueFullEvent>()];
        bytes[..4].copy_from_slice(&EVENT_QUEUE_FULL.to_ne_bytes());
        bytes[24..28].copy_from_slice(&5u32.to_ne_bytes());
        match decode_event(&bytes) {
            Some(Event::QueueFull(e)) => assert_eq!(e.depth, 5),
            other => panic!("{other:?}"),
        }
        bytes[..4].copy_from_slice(&99u32.to_ne_bytes());
        assert!(decode_event(&bytes).is_none());
    }
}
