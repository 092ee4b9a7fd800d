//! TCP states with the kernel's numbering (`include/net/tcp_states.h`), and the key
//! under which state transitions are counted per network namespace.

pub const TCP_ESTABLISHED: u8 = 1;
pub const TCP_SYN_RECV: u8 = 3;
pub const TCP_CLOSE: u8 = 7;
pub const TCP_CLOSE_WAIT: u8 = 8;
pub const TCP_LISTEN: u8 = 10;

/// `IPPROTO_TCP`.
pub const IPPROTO_TCP: u16 = 6;

/// Key of the in-kernel map of state transitions (`TRANSITIONS`).
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub struct TransitionKey {
    /// The network namespace: its cookie (`net->net_cookie`, never reused) where the
    /// kernel has one, else its inode (`net->ns.inum`, reused after the namespace
    /// dies); 0 when it could not be read.
    pub netns: u64,
    pub from: u8,
    pub to: u8,
    pub _pad: [u8; 6],
}

const _: () = assert!(core::mem::size_of::<TransitionKey>() == 16);

#[cfg(feature = "user")]
// SAFETY: repr(C) with explicit padding; any bit pattern is valid.
unsafe impl aya::Pod for TransitionKey {}

/// Capacity of the `TRANSITIONS` map: namespaces x observed (from, to) pairs. About 15
/// pairs occur in practice, so this covers some 270 namespaces; past that, increments
/// are counted as lost (`stats::STAT_TRANSITIONS_FULL`).
pub const TRANSITIONS_MAX_ENTRIES: u32 = 16384;

/// Network namespaces whose transitions the programs count in a per-CPU array
/// (`NETNS_SLOT_COUNTS`, one entry per slot) instead of the `TRANSITIONS` hash:
/// userspace gives the slots to namespaces it saw transitions in
/// (`NETNS_SLOT_KEYS`), and takes them back when the namespace dies.
pub const NETNS_SLOTS: usize = 8;

/// States per side of a slot's table (TCP states are 1 to 13): a transition from
/// `from` to `to` is counted at `from * SLOT_STATES + to`.
pub const SLOT_STATES: usize = 16;

/// One namespace slot's transition counts (per CPU).
#[repr(C)]
#[derive(Clone, Copy, Debug)]
pub struct SlotCounts(pub [u64; SLOT_STATES * SLOT_STATES]);

impl SlotCounts {
    pub const ZERO: Self = Self([0; SLOT_STATES * SLOT_STATES]);
}

#[cfg(feature = "user")]
// SAFETY: repr(C), u64s only; any bit pattern is valid.
unsafe impl aya::Pod for SlotCounts {}

/// The namespace key (as in [`TransitionKey::netns`]) each slot counts for; 0: free.
pub type SlotKeys = [u64; NETNS_SLOTS];
