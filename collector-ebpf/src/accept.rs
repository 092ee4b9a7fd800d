//! Hooks: `syscalls:sys_exit_accept4` and `syscalls:sys_exit_accept` (and, only on
//! kernels where `sk_data_ready` cannot be attached, `sys_enter_accept4` /
//! `sys_enter_accept`), classic tracepoints specific to these syscalls. They fire in
//! the accepting thread.
//!
//! On a successful return the new fd is followed through the task's file table to its
//! socket (task->files->fdt->fd[n]->private_data->sk). That child was stamped when its
//! handshake completed (`inet_sock_set_state`) and given its listener when it was
//! queued (`sk_data_ready`), so the stamp says which listener it came from and how
//! long it waited: [`account_accept`] counts the accept for the listener and the
//! (listener, thread) pair, its wait, and samples it for `READERS` (who reads it).
//! The same accounting serves every accept path (io_uring too). Where `sk_data_ready`
//! is not attached, the entry programs keep the listener fd per thread (`ACCEPTING`)
//! and the listener is found from it instead, as before; `ACCEPT_ENTRY_ON` says so
//! (userspace sets it once they are attached), so that elsewhere the exit does not
//! look in an empty map.
//!
//! Not timed: connections whose handshake completed before sockq started; accepts
//! whose listener cannot be known are counted in `STAT_ACCEPTS_UNATTRIBUTED`.

use aya_ebpf::{
    EbpfContext as _,
    helpers::{bpf_get_current_pid_tgid, bpf_get_prandom_u32, bpf_ktime_get_ns},
    macros::tracepoint,
    programs::TracePointContext,
};
use collector_common::{
    queue::{AcceptorKey, ReaderTrack, SAMPLE_ONE_IN, wait_bucket},
    stats::{STAT_ACCEPTING_FULL, STAT_ACCEPTS_UNATTRIBUTED, STAT_READERS_FULL},
};

use crate::{
    kernel::{fd_sock, is_inet_family, offsets, read, record_u64, sock_inode},
    maps::{
        ACCEPT_ENTRY_ON, ACCEPTING, LISTENER_QUEUES, QUEUED, READERS, atomic_add, count_acceptor,
        insert_or_count,
    },
    stats::count_failure,
};

#[tracepoint(category = "syscalls", name = "sys_enter_accept4")]
pub fn sys_enter_accept4(ctx: TracePointContext) -> u32 {
    let _ = on_accept_enter(&ctx, offsets().tp_accept4_fd);
    0
}

#[tracepoint(category = "syscalls", name = "sys_enter_accept")]
pub fn sys_enter_accept(ctx: TracePointContext) -> u32 {
    let _ = on_accept_enter(&ctx, offsets().tp_accept_fd);
    0
}

/// The exits walk the file table with typed loads where the kernel has
/// `bpf_get_current_task_btf` (5.11+), else with probe reads (`kernel::fd_sock`'s
/// `TYPED`); userspace tries them in that order.
#[tracepoint(category = "syscalls", name = "sys_exit_accept4")]
pub fn sys_exit_accept4_btf(ctx: TracePointContext) -> u32 {
    let _ = on_accept_return::<true>(&ctx, offsets().tp_accept4_ret);
    0
}

#[tracepoint(category = "syscalls", name = "sys_exit_accept")]
pub fn sys_exit_accept_btf(ctx: TracePointContext) -> u32 {
    let _ = on_accept_return::<true>(&ctx, offsets().tp_accept_ret);
    0
}

#[tracepoint(category = "syscalls", name = "sys_exit_accept4")]
pub fn sys_exit_accept4(ctx: TracePointContext) -> u32 {
    let _ = on_accept_return::<false>(&ctx, offsets().tp_accept4_ret);
    0
}

#[tracepoint(category = "syscalls", name = "sys_exit_accept")]
pub fn sys_exit_accept(ctx: TracePointContext) -> u32 {
    let _ = on_accept_return::<false>(&ctx, offsets().tp_accept_ret);
    0
}

#[inline(always)]
fn on_accept_enter(ctx: &TracePointContext, fd_offset: u32) -> Result<(), i64> {
    if offsets().queue_valid == 0 || fd_offset == 0 {
        return Ok(());
    }
    let fd = record_u64(ctx.as_ptr() as *const u8, fd_offset)?;
    let tid = bpf_get_current_pid_tgid() as u32;
    insert_or_count(&ACCEPTING, &tid, &fd, 0, STAT_ACCEPTING_FULL);
    Ok(())
}

#[inline(always)]
fn on_accept_return<const BTF: bool>(ctx: &TracePointContext, ret_offset: u32) -> Result<(), i64> {
    let o = offsets();
    if o.queue_valid == 0 || ret_offset == 0 {
        return Ok(());
    }
    let pid_tgid = bpf_get_current_pid_tgid();
    let tid = pid_tgid as u32;
    // Only where the entry programs run (no sk_data_ready): the listener's fd.
    let listen_fd = if ACCEPT_ENTRY_ON.get(0).is_some_and(|on| *on != 0) {
        // SAFETY: the value is copied out at once.
        let fd = (unsafe { ACCEPTING.get(&tid) }).copied();
        if fd.is_some() {
            let _ = ACCEPTING.remove(&tid);
        }
        fd
    } else {
        None
    };
    let ret = record_u64(ctx.as_ptr() as *const u8, ret_offset)? as i64;
    if ret < 0 {
        return Ok(());
    }
    let Some(child) = fd_sock::<BTF>(ret as u64, o) else {
        return Ok(());
    };
    account_accept(child, pid_tgid, || {
        let listener = sock_inode(fd_sock::<BTF>(listen_fd?, o)?, o);
        (listener != 0).then_some(listener)
    });
    Ok(())
}

/// Counts the accept of `child` by thread `pid_tgid`: for the listener its stamp names
/// (else the one `fallback` finds), with its wait when it was stamped.
#[inline(always)]
pub fn account_accept(child: *const u8, pid_tgid: u64, fallback: impl FnOnce() -> Option<u64>) {
    let key = child as u64;
    // SAFETY: the value is copied out at once.
    let stamp = (unsafe { QUEUED.get(&key) }).copied();
    let listener = match stamp {
        Some(s) if s.listener != 0 => Some(s.listener),
        _ => fallback(),
    };
    // Only listeners with counters: a Unix listener's accept has neither stamp nor
    // counters, and creates none.
    let Some((listener, q)) =
        listener.and_then(|l| LISTENER_QUEUES.get_ptr_mut(&l).map(|q| (l, q)))
    else {
        // A TCP connection (stamped, or inet: one that completed before sockq
        // started) whose listener is unknown is counted; a Unix one is not sockq's.
        if stamp.is_some() || is_inet(child) {
            count_failure(STAT_ACCEPTS_UNATTRIBUTED, 0);
        }
        return;
    };
    // SAFETY: a valid map value pointer; counters change through atomics only.
    unsafe { atomic_add(&raw mut (*q).accepts, 1) };
    let tid = pid_tgid as u32;
    count_acceptor(&AcceptorKey {
        listener,
        pid: (pid_tgid >> 32) as u32,
        tid,
    });
    if let Some(stamp) = stamp {
        let _ = QUEUED.remove(&key);
        // SAFETY: a helper without preconditions.
        let wait_ns = unsafe { bpf_ktime_get_ns() }.saturating_sub(stamp.enqueued_ns);
        // SAFETY: as above.
        unsafe {
            atomic_add(&raw mut (*q).waits, 1);
            atomic_add(&raw mut (*q).wait_sum_ns, wait_ns);
            if let Some(slot) = (*q).wait_hist.get_mut(wait_bucket(wait_ns / 1000)) {
                atomic_add(slot, 1);
            }
        }
    }
    sample_readers(child, listener, tid);
}

/// Whether `sk` is an IPv4 or IPv6 socket (read only on the rare unattributed path).
#[inline(always)]
fn is_inet(sk: *const u8) -> bool {
    read::<u16>(sk, offsets().sk_family).is_ok_and(is_inet_family)
}

/// Watches who reads a sample of the accepted connections (`sock_recv_length`).
#[inline(always)]
fn sample_readers(child: *const u8, listener: u64, acceptor_tid: u32) {
    // SAFETY: a helper without preconditions.
    if unsafe { bpf_get_prandom_u32() } % SAMPLE_ONE_IN == 0 {
        let track = ReaderTrack {
            socket_inode: sock_inode(child, offsets()),
            listener,
            acceptor_tid,
            first_reader: 0,
            reads: 0,
            by_acceptor: 0,
            by_others_than_first: 0,
            _pad: 0,
        };
        insert_or_count(&READERS, &(child as u64), &track, 0, STAT_READERS_FULL);
    }
}
