//! The execution pattern of the backend behind a listener (classified in
//! [`crate::analysis::pattern`]).

use serde::{Deserialize, Serialize};

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Pattern {
    SingleThread,
    AcceptorHandoff,
    AcceptorMessageBalancing,
    MultiAcceptor,
    ReuseportShards,
    Undetermined,
}

impl Pattern {
    pub fn name(self) -> &'static str {
        match self {
            Self::SingleThread => "single_thread",
            Self::AcceptorHandoff => "acceptor_handoff",
            Self::AcceptorMessageBalancing => "acceptor_message_balancing",
            Self::MultiAcceptor => "multi_acceptor",
            Self::ReuseportShards => "reuseport_shards",
            Self::Undetermined => "undetermined",
        }
    }
}

/// A classification and the evidence behind it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct PatternReport {
    pub pattern: Pattern,
    pub evidence: String,
}
