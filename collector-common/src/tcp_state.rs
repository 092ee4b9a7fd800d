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
