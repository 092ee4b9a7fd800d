//! The variants a run compares, and what each runs beside the storm.

use std::path::Path;

use anyhow::Result;

use super::{
    bpftrace::{self, Bpftrace},
    daemon::Daemon,
    floor::{Floor, Hook},
};

#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub enum Variant {
    /// Nothing watching: the reference every ratio is taken against.
    NoSockq,
    /// `sockq run`: the default set (no Nagle / delayed-ACK family).
    Sockq,
    /// `sockq run --nagle`: everything.
    SockqNagle,
    /// Empty programs on the default set's hooks, attached the same way.
    Floor,
    /// bpftrace: the benchmark's original script, far less than sockq computes.
    MinimalPeer,
    /// bpftrace: the default set's metrics, written by hand.
    FairPeer,
}

/// Every variant; the first is the reference.
pub const ALL: [Variant; 6] = [
    Variant::NoSockq,
    Variant::Sockq,
    Variant::SockqNagle,
    Variant::Floor,
    Variant::MinimalPeer,
    Variant::FairPeer,
];

impl Variant {
    pub fn name(self) -> &'static str {
        match self {
            Self::NoSockq => "no sockq",
            Self::Sockq => "sockq (default)",
            Self::SockqNagle => "sockq --nagle",
            Self::Floor => "floor (empty programs)",
            Self::MinimalPeer => "bpftrace minimal peer",
            Self::FairPeer => "bpftrace fair peer",
        }
    }

    /// Position in [`ALL`].
    pub fn index(self) -> usize {
        ALL.iter().position(|&v| v == self).unwrap_or(0)
    }
}

/// What the variants need to start.
pub struct Setup<'a> {
    pub sockq: &'a Path,
    pub floor_hooks: &'a [Hook],
    pub tracefs: &'a Path,
}

/// What runs beside the storm; stopped on drop.
pub enum Watcher {
    Nothing,
    Daemon(Daemon),
    Bpftrace(Bpftrace),
    Floor(
        #[expect(
            dead_code,
            reason = "held for its Drop: closing the descriptors detaches"
        )]
        Floor,
    ),
}

impl Watcher {
    pub fn start(variant: Variant, setup: &Setup<'_>) -> Result<Self> {
        Ok(match variant {
            Variant::NoSockq => Self::Nothing,
            Variant::Sockq => Self::Daemon(Daemon::start(setup.sockq, &[])?),
            Variant::SockqNagle => Self::Daemon(Daemon::start(setup.sockq, &["--nagle"])?),
            Variant::Floor => Self::Floor(Floor::attach(setup.floor_hooks, setup.tracefs)?),
            Variant::MinimalPeer => Self::Bpftrace(Bpftrace::start(bpftrace::MINIMAL_PEER)?),
            Variant::FairPeer => Self::Bpftrace(Bpftrace::start(bpftrace::FAIR_PEER)?),
        })
    }

    /// The user-space process whose own CPU is reported apart, if any.
    pub fn pid(&self) -> Option<u32> {
        match self {
            Self::Daemon(d) => Some(d.pid()),
            Self::Bpftrace(b) => Some(b.pid()),
            Self::Nothing | Self::Floor(_) => None,
        }
    }
}
