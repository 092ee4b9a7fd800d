//! Indices of the per-CPU `STATS` array: the programs' own counters, above all every
//! event they could not deliver.

/// A listener event could not be reserved in the ring buffer (full).
pub const STAT_EVENTS_LOST: u32 = 0;
/// A transition could not be counted because `TRANSITIONS` was full.
pub const STAT_TRANSITIONS_FULL: u32 = 1;
/// A kernel read (`bpf_probe_read_kernel`) failed.
pub const STAT_READ_ERRORS: u32 = 2;
/// A listener's accept-queue counters could not be created (map full).
pub const STAT_LISTENERS_FULL: u32 = 3;
/// A queued connection could not be stamped (`QUEUED` full): its accept wait is lost.
pub const STAT_QUEUED_FULL: u32 = 4;
/// A connection's Nagle/delayed-ACK state or counters could not be created.
pub const STAT_CONNS_FULL: u32 = 5;
/// An io_uring accept into a direct descriptor (a fixed-file slot): not counted
/// (the programs follow file descriptors only).
pub const STAT_URING_DIRECT: u32 = 6;
/// An io_uring accept whose listener could not be told: no handshake stamp (the
/// connection completed before sockq started) and no request to read it from.
pub const STAT_URING_UNATTRIBUTED: u32 = 7;
/// Number of slots in `STATS`.
pub const STATS_LEN: u32 = 8;
