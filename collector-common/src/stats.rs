//! Indices of the per-CPU `STATS` array: the programs' own counters, above all every
//! event they could not deliver. Every map the programs create entries in has its own
//! counter of entries it had no room for.

/// A listener event could not be reserved in the ring buffer (full).
pub const STAT_EVENTS_LOST: u32 = 0;
/// A transition could not be counted because `TRANSITIONS` was full.
pub const STAT_TRANSITIONS_FULL: u32 = 1;
/// A kernel read (`bpf_probe_read_kernel`) failed.
pub const STAT_READ_ERRORS: u32 = 2;
/// A listener's accept-queue counters could not be created (`LISTENER_QUEUES` full).
pub const STAT_LISTENERS_FULL: u32 = 3;
/// A queued connection could not be stamped (`QUEUED` full): its accept wait is lost.
pub const STAT_QUEUED_FULL: u32 = 4;
/// A connection's Nagle/delayed-ACK state could not be created (`CONNS`).
pub const STAT_CONNS_FULL: u32 = 5;
/// An accept could not be counted for its (listener, thread) (`ACCEPTORS` full).
pub const STAT_ACCEPTORS_FULL: u32 = 6;
/// A thread entering accept() could not be noted (`ACCEPTING` full): that accept is
/// not counted.
pub const STAT_ACCEPTING_FULL: u32 = 7;
/// A listener's dropped packet could not be counted by reason (`DROP_REASONS`).
pub const STAT_DROP_REASONS_FULL: u32 = 8;
/// A sampled accepted connection could not be watched (`READERS`).
pub const STAT_READERS_FULL: u32 = 9;
/// Nagle/delayed-ACK counters of a (netns, port, process) could not be created
/// (`CONN_STATS`).
pub const STAT_CONN_STATS_FULL: u32 = 10;
/// Accepted connections whose listener could not be known: no handshake stamp naming
/// it (the connection completed before sockq started, or `QUEUED` was full) and no
/// listener fd from `sys_enter_accept*`. Counted nowhere else.
pub const STAT_ACCEPTS_UNATTRIBUTED: u32 = 11;
/// An io_uring accept into a direct descriptor (a fixed-file slot): not counted
/// (the programs follow file descriptors only).
pub const STAT_URING_DIRECT: u32 = 12;
/// A thread entering an `AF_UNIX` connect() could not be noted
/// (`UNIX_CONNECTING` full): a refusal or wait of that connect is not counted.
pub const STAT_UNIX_CONNECTING_FULL: u32 = 13;
/// A refused or waiting Unix connect could not be counted (`UNIX_REFUSED` full).
pub const STAT_UNIX_REFUSED_FULL: u32 = 14;
/// A Unix enqueue stamped [`UNIX_LOOKBACK`](crate::queue::UNIX_LOOKBACK) connections
/// of its listener's queue without reaching one stamped before: connections queued
/// before those may go unstamped (their accepts then have no wait:
/// [`STAT_UNIX_UNSTAMPED`]).
pub const STAT_UNIX_LOOKBACK_SHORT: u32 = 15;
/// A Unix connection accepted before any enqueue stamped it (its connecting thread
/// was preempted between queueing it and `sk_data_ready`, and the acceptor took it
/// meanwhile): its accept is counted, its wait is not.
pub const STAT_UNIX_UNSTAMPED: u32 = 16;
/// Number of slots in `STATS` (room to grow).
pub const STATS_LEN: u32 = 20;
