//! Accepts made through io_uring (`IORING_OP_ACCEPT`, single-shot and multishot):
//! the kernel ABI constants the programs compare against, the layouts of the
//! `io_uring:io_uring_complete` tracepoint they recognise, and the key and value of
//! the map of multishot accept requests (`collector-ebpf/src/io_uring.rs`).

/// `IORING_OP_ACCEPT` (`enum io_uring_op`, UAPI: numbers never change).
pub const IORING_OP_ACCEPT: u8 = 13;
/// `IORING_CQE_F_MORE`: the request will post more CQEs (UAPI).
pub const IORING_CQE_F_MORE: u32 = 1 << 1;
/// `struct io_uring_cqe` (UAPI): `user_data` at 0, `res` at 8, `flags` at 12.
pub const CQE_USER_DATA: u32 = 0;
pub const CQE_RES: u32 = 8;
pub const CQE_FLAGS: u32 = 12;

/// `io_uring_complete(struct io_ring_ctx *ctx, void *req, struct io_uring_cqe *cqe)`
/// (Linux 6.13 on): `KernelOffsets::uring_complete_layout`.
pub const COMPLETE_CQE: u32 = 1;
/// `io_uring_complete(void *ctx, void *req, u64 user_data, int res, unsigned cflags,
/// u64 extra1, u64 extra2)` before (seen on 6.1 and 6.12).
pub const COMPLETE_VALUES: u32 = 2;

/// Capacity of `URING_ACCEPTS` (LRU): multishot accept requests alive at once.
pub const URING_ACCEPTS_MAX_ENTRIES: u32 = 4096;

/// Key of `URING_ACCEPTS`: a request as its CQEs name it (a ring and the
/// application's `user_data`).
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct UringReqKey {
    /// `struct io_ring_ctx *`.
    pub ctx: u64,
    pub user_data: u64,
}

const _: () = assert!(core::mem::size_of::<UringReqKey>() == 16);

/// What the CQEs of a multishot accept (posted without their request) need to know.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct UringAccept {
    /// Inode of the listening socket, 0 until the request's file was seen (it is
    /// assigned after submission).
    pub listener: u64,
    /// The request's `file_slot`: nonzero when it accepts into direct descriptors
    /// (fixed-file slots; see [`fixed_file_index`]), whose results are not file
    /// descriptors.
    pub file_slot: u32,
    pub _pad: u32,
    /// The request (`struct io_kiocb *`), alive while it posts CQEs: where the
    /// listener is read when its CQEs come before the file was seen.
    pub req: u64,
}

const _: () = assert!(core::mem::size_of::<UringAccept>() == 24);

#[cfg(feature = "user")]
mod pod {
    // SAFETY (all): repr(C), integer fields with explicit padding; any bit pattern
    // is valid.
    unsafe impl aya::Pod for super::UringReqKey {}
    unsafe impl aya::Pod for super::UringAccept {}
}

/// `file_slot` asking the kernel to pick a free slot (`IORING_FILE_INDEX_ALLOC`):
/// the CQE's result is then the slot.
pub const IORING_FILE_INDEX_ALLOC: u32 = u32::MAX;

/// The fixed-file slot an accept into direct descriptors filled: the CQE's result
/// `res` when the kernel picked it, else the one the request named (`file_slot` is
/// that index plus one, as `io_accept_prep` takes it from `sqe->file_index`).
/// `None` for an accept into an ordinary descriptor (`file_slot` 0) or a failed one.
#[must_use]
pub const fn fixed_file_index(file_slot: u32, res: i32) -> Option<u32> {
    if file_slot == 0 || res < 0 {
        None
    } else if file_slot == IORING_FILE_INDEX_ALLOC {
        Some(res as u32)
    } else {
        Some(file_slot - 1)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fixed_file_slots() {
        assert_eq!(fixed_file_index(0, 5), None, "an ordinary descriptor");
        assert_eq!(fixed_file_index(IORING_FILE_INDEX_ALLOC, 3), Some(3));
        assert_eq!(
            fixed_file_index(1, 0),
            Some(0),
            "sqe->file_index 1 is slot 0"
        );
        assert_eq!(fixed_file_index(8, 0), Some(7));
        assert_eq!(fixed_file_index(IORING_FILE_INDEX_ALLOC, -23), None);
    }
}
