//! Hooks: `io_uring:io_uring_complete`, `io_uring:io_uring_submit_req` (named
//! `io_uring_submit_sqe` up to 6.1) and `io_uring:io_uring_task_add`, raw
//! tracepoints. Accepts made through io_uring (`IORING_OP_ACCEPT`, single-shot and
//! multishot) make no accept syscall: this counts them as `accept.rs` counts
//! accept()/accept4() ones.
//!
//! Prototypes (`include/trace/events/io_uring.h`, checked in the kernel's BTF by
//! userspace, `uring_complete_layout`):
//! - `io_uring_complete(struct io_ring_ctx *ctx, void *req, struct io_uring_cqe *cqe)`
//!   since 6.13 ([`io_uring_complete`]); `(void *ctx, void *req, u64 user_data,
//!   int res, unsigned cflags, u64 extra1, u64 extra2)` before (6.1, 6.12)
//!   ([`io_uring_complete_values`], which reads five arguments, so the kernel refuses
//!   to attach it where there are three: userspace tries it first);
//! - `io_uring_submit_req(struct io_kiocb *req)` (6.2 on; `io_uring_submit_sqe(req,
//!   bool force_nonblock)` before), after the request was prepared;
//! - `io_uring_task_add(struct io_kiocb *req, int mask)`: a polled request woke up.
//!
//! A CQE whose `req` is set (`io_fill_cqe_req`) names its request: its opcode tells
//! an accept at once, the only read every other completion on the host pays. The
//! CQEs a multishot accept posts while it stays armed come through
//! `io_fill_cqe_aux` with `req` NULL and `IORING_CQE_F_MORE`: those are recognised
//! by (ring, user_data) in `URING_ACCEPTS`, filled when such a request is submitted
//! or wakes up (so a multishot accept armed before sockq started is seen from its
//! next wake-up), emptied by its last CQE (a request CQE). Only hosts where a
//! multishot accept was seen pay that lookup for other requests' such CQEs.
//!
//! A successful accept's `res` is the new descriptor in the current task's file
//! table (the submitter's, which io-wq and SQPOLL threads share). The accept is
//! counted for the request's listener (a Unix child's stamp names its own) and for
//! the current thread, with its wait, and a sample is watched for its readers:
//! `accept::account_accept`, the accounting of every accept path.
//!
//! An accept into a direct descriptor (a fixed-file slot, `file_index`) has a slot
//! for `res` (or names one): its socket is found in the ring's fixed-file table
//! ([`fixed_file_sock`], the 6.13+ layout; on others such accepts are counted in
//! `STAT_URING_DIRECT`, not counted as accepts). Accepts whose listener is unknown go
//! to `STAT_ACCEPTS_UNATTRIBUTED`. CQEs that overflow the completion ring and requests
//! with `IOSQE_CQE_SKIP_SUCCESS` fire no `io_uring_complete`: unseen. Two multishot accepts with the same `user_data` on
//! one ring share an entry: when one ends, the other's CQEs are recognised again
//! from its next wake-up.

use aya_ebpf::{
    EbpfContext as _,
    helpers::bpf_get_current_pid_tgid,
    macros::{map, raw_tracepoint},
    maps::{Array, LruHashMap},
    programs::RawTracePointContext,
};
use collector_common::{
    io_uring::{
        COMPLETE_CQE, COMPLETE_VALUES, CQE_FLAGS, CQE_RES, CQE_USER_DATA, IORING_CQE_F_MORE,
        IORING_OP_ACCEPT, URING_ACCEPTS_MAX_ENTRIES, UringAccept, UringReqKey, fixed_file_index,
    },
    layout::KernelOffsets,
    stats::STAT_URING_DIRECT,
};

use crate::{
    accept::{account_accept, is_inet},
    kernel::{fd_sock, file_sock, offsets, read, sock_inode},
    stats::count_failure,
};

/// Multishot accept requests, by the (ring, user_data) their CQEs carry. LRU: a ring
/// torn down with its requests armed leaves entries nobody removes.
#[map]
static URING_ACCEPTS: LruHashMap<UringReqKey, UringAccept> =
    LruHashMap::with_max_entries(URING_ACCEPTS_MAX_ENTRIES, 0);

/// Slot 0 is nonzero once a multishot accept was seen: until then CQEs without a
/// request leave without a hash lookup.
#[map]
static URING_SEEN: Array<u32> = Array::with_max_entries(1, 0);

#[raw_tracepoint(tracepoint = "io_uring_complete")]
pub fn io_uring_complete(ctx: RawTracePointContext) -> i32 {
    let ring: u64 = ctx.arg(0);
    let req: *const u8 = ctx.arg(1);
    let cqe: *const u8 = ctx.arg(2);
    let _ = try_complete_cqe(ring, req, cqe);
    0
}

#[raw_tracepoint(tracepoint = "io_uring_complete")]
pub fn io_uring_complete_values(ctx: RawTracePointContext) -> i32 {
    // All five read first, volatile so none moves behind the layout test (which the
    // verifier resolves from the read-only offsets): the kernel refuses to attach a
    // program that reads more arguments than the tracepoint has, and that is what
    // keeps this one off the three-argument tracepoint of 6.13 on.
    let args = ctx.as_ptr() as *const u64;
    // SAFETY: reads of the raw tracepoint's argument array, checked by the verifier
    // and, against the tracepoint's argument count, when attaching.
    let arg = |i: usize| unsafe { core::ptr::read_volatile(args.add(i)) };
    let ring = arg(0);
    let req = arg(1) as *const u8;
    let user_data = arg(2);
    let res = arg(3) as i32;
    let cflags = arg(4) as u32;
    let o = offsets();
    if o.uring_valid == 0 || o.uring_complete_layout != COMPLETE_VALUES {
        return 0;
    }
    let _ = on_complete(o, ring, req, user_data, res, cflags);
    0
}

#[raw_tracepoint(tracepoint = "io_uring_submit_req")]
pub fn io_uring_submit_req(ctx: RawTracePointContext) -> i32 {
    let _ = on_request(ctx.arg(0));
    0
}

#[raw_tracepoint(tracepoint = "io_uring_submit_sqe")]
pub fn io_uring_submit_sqe(ctx: RawTracePointContext) -> i32 {
    let _ = on_request(ctx.arg(0));
    0
}

#[raw_tracepoint(tracepoint = "io_uring_task_add")]
pub fn io_uring_task_add(ctx: RawTracePointContext) -> i32 {
    let _ = on_request(ctx.arg(0));
    0
}

/// The 6.13+ layout: the CQE's fields are read only once it may be an accept's.
#[inline(always)]
fn try_complete_cqe(ring: u64, req: *const u8, cqe: *const u8) -> Result<(), i64> {
    let o = offsets();
    if o.uring_valid == 0 || o.uring_complete_layout != COMPLETE_CQE {
        return Ok(());
    }
    if req.is_null() {
        if !multishot_seen() {
            return Ok(());
        }
        let cflags: u32 = read(cqe, CQE_FLAGS)?;
        if cflags & IORING_CQE_F_MORE == 0 {
            return Ok(());
        }
    } else if read::<u8>(req, o.req_opcode)? != IORING_OP_ACCEPT {
        return Ok(());
    }
    let user_data: u64 = read(cqe, CQE_USER_DATA)?;
    let res: i32 = read(cqe, CQE_RES)?;
    let cflags: u32 = read(cqe, CQE_FLAGS)?;
    on_complete(o, ring, req, user_data, res, cflags)
}

#[inline(always)]
fn multishot_seen() -> bool {
    URING_SEEN.get(0).is_some_and(|seen| *seen != 0)
}

/// One CQE: an accept's, when its request says so (`req` set) or when it belongs to
/// a multishot accept in `URING_ACCEPTS` (`req` NULL).
#[inline(always)]
fn on_complete(
    o: &KernelOffsets,
    ring: u64,
    req: *const u8,
    user_data: u64,
    res: i32,
    cflags: u32,
) -> Result<(), i64> {
    if o.queue_valid == 0 {
        return Ok(());
    }
    let key = UringReqKey {
        ctx: ring,
        user_data,
    };
    let (listener, file_slot) = if req.is_null() {
        if cflags & IORING_CQE_F_MORE == 0 || !multishot_seen() {
            return Ok(());
        }
        let Some(accept) = URING_ACCEPTS.get_ptr_mut(&key) else {
            return Ok(());
        };
        // SAFETY: a valid map value pointer.
        let (mut listener, slot, armed) =
            unsafe { ((*accept).listener, (*accept).file_slot, (*accept).req) };
        if listener == 0 && armed != 0 {
            // CQEs before the request's file was seen: read it from the request,
            // which posts them, once.
            listener = req_listener(armed as *const u8, o);
            // SAFETY: as above.
            unsafe { (*accept).listener = listener };
        }
        (listener, slot)
    } else {
        if read::<u8>(req, o.req_opcode)? != IORING_OP_ACCEPT {
            return Ok(());
        }
        // A request CQE is the request's last: a multishot accept ends here.
        if is_multishot(req, o)? {
            let _ = URING_ACCEPTS.remove(&key);
        }
        let slot: u32 = read(req, o.req_accept_file_slot)?;
        (req_listener(req, o), slot)
    };
    if res < 0 {
        return Ok(());
    }
    let child = if file_slot == 0 {
        fd_sock::<false>(res as u64, o)
    } else {
        let child = fixed_file_index(file_slot, res).and_then(|i| fixed_file_sock(ring, i, o));
        if child.is_none() {
            count_failure(STAT_URING_DIRECT, 0);
        }
        child
    };
    let Some(child) = child else {
        return Ok(());
    };
    // The request names the child's listener. With no listener (a multishot accept
    // armed before its file was seen) a TCP accept is counted unattributed; a Unix
    // child's stamp names its own.
    account_accept(child, bpf_get_current_pid_tgid(), is_inet(child), listener);
    Ok(())
}

/// A request seen at submission or wake-up: a multishot accept is recorded for the
/// CQEs it will post without its request.
#[inline(always)]
fn on_request(req: *const u8) -> Result<(), i64> {
    let o = offsets();
    if o.uring_valid == 0 || o.queue_valid == 0 {
        return Ok(());
    }
    if read::<u8>(req, o.req_opcode)? != IORING_OP_ACCEPT || !is_multishot(req, o)? {
        return Ok(());
    }
    let key = UringReqKey {
        ctx: read(req, o.req_ctx)?,
        user_data: read(req, o.req_user_data)?,
    };
    if let Some(known) = URING_ACCEPTS.get_ptr_mut(&key) {
        // SAFETY: a valid map value pointer; only the listener is filled in late.
        if unsafe { (*known).listener } == 0 {
            let listener = req_listener(req, o);
            // SAFETY: as above.
            unsafe { (*known).listener = listener };
        }
        return Ok(());
    }
    let accept = UringAccept {
        listener: req_listener(req, o),
        file_slot: read(req, o.req_accept_file_slot)?,
        _pad: 0,
        req: req as u64,
    };
    let _ = URING_ACCEPTS.insert(&key, &accept, 0);
    if let Some(seen) = URING_SEEN.get_ptr_mut(0) {
        // SAFETY: a valid map value pointer; every writer stores the same value.
        unsafe { *seen = 1 };
    }
    Ok(())
}

/// `req->flags & REQ_F_APOLL_MULTISHOT`.
#[inline(always)]
fn is_multishot(req: *const u8, o: &KernelOffsets) -> Result<bool, i64> {
    let flags: u32 = read(req, o.req_flags)?;
    Ok(flags & (1u32 << (o.req_multishot_bit & 31)) != 0)
}

/// The socket in slot `index` of `ring`'s fixed-file table (6.13+ layout:
/// `ctx->file_table.data.nodes[index]->file_ptr`, flags in its two low bits, then
/// `file->private_data`, a `struct socket`, -> `sk`); `None` on other layouts.
#[inline(always)]
fn fixed_file_sock(ring: u64, index: u32, o: &KernelOffsets) -> Option<*const u8> {
    if o.ring_fixed_nodes == 0 {
        return None;
    }
    let ring = ring as *const u8;
    let nr: u32 = read(ring, o.ring_fixed_nr).ok()?;
    if index >= nr {
        return None;
    }
    let nodes: *const u8 = read(ring, o.ring_fixed_nodes).ok()?;
    let node: *const u8 = read(nodes, index.checked_mul(8)?).ok()?;
    if node.is_null() {
        return None;
    }
    let file_ptr: u64 = read(node, o.rsrc_node_file_ptr).ok()?;
    file_sock((file_ptr & !3) as *const u8, o)
}

/// The inode of the socket an accept request reads from (`req->file`), or 0 while the
/// request has no file yet (it is assigned when the request is issued).
#[inline(always)]
fn req_listener(req: *const u8, o: &KernelOffsets) -> u64 {
    read::<*const u8>(req, o.req_file)
        .ok()
        .and_then(|file| file_sock(file, o))
        .map_or(0, |sk| sock_inode(sk, o))
}
