//! Nagle x delayed-ACK series as exported and served (accumulated in
//! [`crate::analysis::nagle`]).

use serde::{Deserialize, Serialize};

use super::Histogram;

/// Who a series is about.
#[derive(Debug, Clone, Default, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct SeriesKey {
    pub netns: u64,
    /// `ip:port` of the listener whose port the connections use locally (server
    /// side), empty for connections this process opened (client side).
    pub listen_addr: String,
    /// The process that last wrote to the connections; 0 when none was seen.
    pub pid: u32,
    /// Its name (attacker-controlled: escape where printed), `other` for the
    /// overflow series.
    pub comm: String,
}

/// Totals of one series.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct NagleSeries {
    pub key: SeriesKey,
    pub delack_armed: u64,
    pub delack_fired: u64,
    pub delack_cancelled: u64,
    /// Arm-to-send time of delayed ACKs sent by their timer, seconds.
    pub delack_delay: Histogram,
    /// How long writes held back by Nagle waited, seconds.
    pub nagle_hold: Histogram,
    pub stalls: u64,
    pub stall_seconds: f64,
}
