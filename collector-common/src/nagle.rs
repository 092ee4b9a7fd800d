//! Nagle holds, delayed ACKs and the stall their interaction causes (one probe
//! family, switchable as a whole).
//!
//! Per connection the programs keep a small [`ConnTrack`] (LRU by socket address):
//! when its delayed-ACK timer was armed, and whether a small write is being held back
//! by Nagle's algorithm. What they measure is aggregated per [`ConnKey`] (network
//! namespace, local port, sending process) in [`ConnStats`]; a stall also sends a
//! [`StallEvent`], at most one a second per connection.

use crate::queue::WAIT_BUCKETS;

/// Name of the global in the eBPF object that holds [`NagleOffsets`].
pub const NAGLE_OFFSETS_SYMBOL: &str = "NAGLE_OFFSETS";

/// Ring buffer record kind of a [`StallEvent`].
pub const EVENT_STALL: u32 = 3;

/// Default size of the per-connection map (`sockq run --conn-track-entries`).
pub const CONNS_MAX_ENTRIES: u32 = 16384;
/// Size of the aggregate map; userspace keeps totals of evicted entries.
pub const CONN_STATS_MAX_ENTRIES: u32 = 2048;

/// A Nagle hold counts as a stall when it outlasts the connection's minimum
/// round-trip time by at least this much and ends with a pure ACK: the peer held its
/// ACK back. (Not the smoothed RTT: its samples include the delayed ACKs themselves.)
pub const STALL_EXCESS_NS: u64 = 10_000_000;
/// At most one [`StallEvent`] per connection per this many nanoseconds.
pub const STALL_EVENT_INTERVAL_NS: u64 = 1_000_000_000;

/// `tcp_sock.nonagle` bits (`include/net/tcp.h`).
pub const TCP_NAGLE_OFF: u8 = 1;
pub const TCP_NAGLE_CORK: u8 = 2;

/// Byte offsets the Nagle/delayed-ACK programs read, resolved from BTF, plus the
/// address of `tcp_delack_timer` from `/proc/kallsyms`. `valid` is 0 when any is
/// missing: the programs then do nothing.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct NagleOffsets {
    pub valid: u32,
    /// `struct timer_list` -> `function`.
    pub timer_function: u32,
    /// `struct timer_list` -> `expires` (jiffies).
    pub timer_expires: u32,
    /// `struct inet_connection_sock` -> `icsk_delack_timer` (the socket is the timer
    /// address minus this).
    pub icsk_delack_timer: u32,
    /// `struct inet_connection_sock` -> `icsk_ack.pending` (u8).
    pub icsk_ack_pending: u32,
    /// The value of `ICSK_ACK_TIMER` (a bit of `icsk_ack.pending`).
    pub ack_timer_bit: u32,
    /// `struct tcp_sock` -> `write_seq`, `snd_nxt`, `snd_una`, `snd_sml`,
    /// `packets_out` (all u32), and the current minimum RTT in microseconds
    /// (`rtt_min.s[0].v`, what `tcp_min_rtt()` reads).
    pub tp_write_seq: u32,
    pub tp_snd_nxt: u32,
    pub tp_snd_una: u32,
    pub tp_snd_sml: u32,
    pub tp_packets_out: u32,
    pub tp_min_rtt_us: u32,
    /// The byte holding the `nonagle:4` bitfield, and the bit it starts at.
    pub tp_nonagle_byte: u32,
    pub tp_nonagle_shift: u32,
    /// `struct sock` -> `__sk_common.skc_daddr`, `skc_dport`, `skc_v6_daddr`.
    pub sk_daddr: u32,
    pub sk_dport: u32,
    pub sk_v6_daddr: u32,
    /// `struct sk_buff` -> `cb`, where `struct tcp_skb_cb` lives.
    pub skb_cb: u32,
    /// `struct tcp_skb_cb` -> `seq`, `end_seq`, `ack_seq`.
    pub tcb_seq: u32,
    pub tcb_end_seq: u32,
    pub tcb_ack_seq: u32,
    /// The ephemeral port range (`net.ipv4.ip_local_port_range`): connections whose
    /// local port is in it are the client side and are aggregated per process
    /// (port 0), so a connection storm does not make one entry per connection.
    pub ephemeral_lo: u16,
    pub ephemeral_hi: u16,
    /// Address of `tcp_delack_timer` (the timer callback that tells delayed-ACK
    /// timers apart from every other timer).
    pub delack_timer_fn: u64,
}

const _: () = assert!(core::mem::size_of::<NagleOffsets>() == 96);

/// Per-connection state, keyed by socket address.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct ConnTrack {
    /// When the delayed-ACK timer was armed (0: no delayed ACK pending).
    pub delack_armed_ns: u64,
    /// Its expiry in jiffies, to tell a re-arm from a new delayed ACK.
    pub delack_expires: u64,
    /// When the held write was made (0: nothing held).
    pub hold_start_ns: u64,
    pub last_event_ns: u64,
    /// `write_seq` when the held write was made: its first byte.
    pub hold_seq: u32,
    /// `snd_sml` then: the end of the small segment whose ACK releases the hold.
    pub hold_sml: u32,
    /// The last process and thread that wrote to the connection.
    pub tgid: u32,
    pub tid: u32,
    pub stalls: u32,
    /// The connection's [`ConnKey`] but for the process: namespace and local port
    /// (0 on the client side), read once when the entry is created.
    pub netns: u32,
    pub port: u16,
    pub nonagle: u8,
    pub _pad: [u8; 5],
    pub comm: [u8; 16],
}

const _: () = assert!(core::mem::size_of::<ConnTrack>() == 80);

/// Slots of the per-CPU `SENDS` array: `sendmsg` calls by the socket's mode. Counted
/// host-wide: one per-CPU add, the cheapest thing on the send path.
pub const SENDS_NAGLE: u32 = 0;
pub const SENDS_NODELAY: u32 = 1;
pub const SENDS_CORK: u32 = 2;
pub const SENDS_LEN: u32 = 3;

/// Aggregation key: connections of one process on one local port of a namespace
/// (port 0: every client-side connection of the process, see `ephemeral_lo`).
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct ConnKey {
    pub netns: u32,
    /// The last process that wrote to the connection (0: none seen).
    pub tgid: u32,
    pub port: u16,
    pub _pad: [u8; 6],
}

const _: () = assert!(core::mem::size_of::<ConnKey>() == 16);

/// What the programs measured for one [`ConnKey`].
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ConnStats {
    /// Delayed-ACK timers armed (a new delayed ACK, not a re-arm of a pending one).
    pub delack_armed: u64,
    /// ... that expired with the ACK still pending: the timer sent it.
    pub delack_fired: u64,
    /// ... whose ACK left earlier (with data, or at once) or whose socket closed.
    pub delack_cancelled: u64,
    /// Arm-to-send time of the ACKs the timer sent: `wait_bucket` microseconds.
    pub delay_sum_ns: u64,
    pub delay_hist: [u64; WAIT_BUCKETS],
    /// Small writes held back by Nagle until the ACK of earlier data arrived.
    pub holds: u64,
    pub hold_sum_ns: u64,
    pub hold_hist: [u64; WAIT_BUCKETS],
    /// Holds that were stalls (see [`STALL_EXCESS_NS`]).
    pub stalls: u64,
    pub stall_sum_ns: u64,
}

impl ConnStats {
    pub const ZERO: Self = Self {
        delack_armed: 0,
        delack_fired: 0,
        delack_cancelled: 0,
        delay_sum_ns: 0,
        delay_hist: [0; WAIT_BUCKETS],
        holds: 0,
        hold_sum_ns: 0,
        hold_hist: [0; WAIT_BUCKETS],
        stalls: 0,
        stall_sum_ns: 0,
    };
}

const _: () = assert!(core::mem::size_of::<ConnStats>() == 8 * (8 + 2 * WAIT_BUCKETS));

/// A Nagle x delayed-ACK stall on one connection.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct StallEvent {
    /// [`EVENT_STALL`].
    pub kind: u32,
    pub netns: u32,
    pub sk: u64,
    pub timestamp_ns: u64,
    /// How long the write was held.
    pub hold_ns: u64,
    pub tgid: u32,
    pub tid: u32,
    /// The connection's minimum RTT.
    pub min_rtt_us: u32,
    /// Stalls on this connection so far (events are rate-limited).
    pub stalls: u32,
    pub family: u16,
    pub sport: u16,
    pub dport: u16,
    pub nonagle: u8,
    pub _pad: u8,
    pub saddr: [u8; 16],
    pub daddr: [u8; 16],
    pub comm: [u8; 16],
}

const _: () = assert!(core::mem::size_of::<StallEvent>() == 104);

#[cfg(feature = "user")]
mod pod {
    // SAFETY (all): repr(C), integer fields with explicit padding; any bit pattern
    // is valid.
    unsafe impl aya::Pod for super::NagleOffsets {}
    unsafe impl aya::Pod for super::ConnTrack {}
    unsafe impl aya::Pod for super::ConnKey {}
    unsafe impl aya::Pod for super::ConnStats {}
    unsafe impl aya::Pod for super::StallEvent {}
}
