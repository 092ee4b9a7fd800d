//! Listener lifecycle: a socket entering or leaving LISTEN, sent to userspace through
//! the `EVENTS` ring buffer with the thread that caused it. Rare by nature.

/// Ring buffer size in bytes (a power of two, multiple of the page size).
pub const EVENTS_RING_BYTES: u32 = 256 * 1024;

/// `AF_INET` / `AF_INET6` as stored in `skc_family`.
pub const AF_INET: u16 = 2;
pub const AF_INET6: u16 = 10;

/// Every record in `EVENTS` starts with a `u32` kind.
pub const EVENT_LISTENER: u32 = 1;
/// A [`crate::queue::QueueFullEvent`].
pub const EVENT_QUEUE_FULL: u32 = 2;

#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ListenerEvent {
    /// [`EVENT_LISTENER`].
    pub kind: u32,
    pub _pad0: u32,
    /// Kernel address of the socket: identifies it while it lives (never exported).
    pub sk: u64,
    /// `bpf_ktime_get_ns` at the transition.
    pub timestamp_ns: u64,
    pub netns: u32,
    /// Thread group id (the process) and thread id of the current task.
    pub pid: u32,
    pub tid: u32,
    pub family: u16,
    /// Local port, host byte order.
    pub port: u16,
    /// Local address: IPv4 in the first 4 bytes (network order) or IPv6.
    pub addr: [u8; 16],
    pub old_state: u8,
    pub new_state: u8,
    pub _pad: [u8; 2],
    /// `current->comm`, NUL-padded; attacker-controlled.
    pub comm: [u8; 16],
}

const _: () = assert!(core::mem::size_of::<ListenerEvent>() == 80);

#[cfg(feature = "user")]
// SAFETY: repr(C) with explicit padding; any bit pattern is valid.
unsafe impl aya::Pod for ListenerEvent {}
