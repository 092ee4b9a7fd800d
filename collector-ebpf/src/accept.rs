//! Hooks: `syscalls:sys_exit_accept4` and `syscalls:sys_exit_accept` (and, only on
//! kernels without `bpf_task_pt_regs`, `sys_enter_accept4` / `sys_enter_accept`),
//! classic tracepoints specific to these syscalls. They fire in the accepting thread.
//!
//! On a successful return the new fd, and the listener's (the syscall's first
//! argument, still in its saved registers at the exit: `kernel::SyscallRegs`), are
//! followed through the task's file table to their sockets
//! (task->files->fdt->fd[n]->private_data->sk), one walk to the table for both.
//! [`account_accept`] counts the accept for the listener and the (listener, thread)
//! pair, its wait, and samples it for `READERS` (who reads it). The same accounting
//! serves every accept path (io_uring, fexit).
//!
//! The wait of a TCP connection is read from the child itself: the kernel notes when
//! its handshake completed (`tcp_sock.rcvq_space.time`, `tcp_init_buffer_space`, just
//! before it is queued), and nothing changes it before the application reads from the
//! accepted socket. So no stamp is kept per connection in a map, connections queued
//! before sockq started are timed too, and so are children reset while queued. A Unix
//! connection has no such time: `sk_data_ready` stamps it with its listener
//! (`unix_connect::on_unix_enqueue`: in `UNIX_STAMPS`, else `QUEUED`), and the accept
//! takes the stamp.
//!
//! Where the registers cannot be read (before 5.15), the entry programs keep the
//! listener fd per thread (`ACCEPTING`); `ACCEPT_ENTRY_ON` says they run (userspace
//! sets it once they are attached), so that elsewhere the exit does not look in an
//! empty map. Accepts whose listener cannot be known are counted in
//! `STAT_ACCEPTS_UNATTRIBUTED`.

use aya_ebpf::{
    EbpfContext as _,
    helpers::{bpf_get_current_pid_tgid, bpf_get_prandom_u32, bpf_ktime_get_ns},
    macros::tracepoint,
    programs::TracePointContext,
};
use collector_common::{
    layout::KernelOffsets,
    queue::{AcceptorKey, ReaderTrack, SAMPLE_ALL_FIRST, SAMPLE_ONE_IN, wait_bucket},
    stats::{
        STAT_ACCEPTING_FULL, STAT_ACCEPTS_UNATTRIBUTED, STAT_READERS_FULL, STAT_UNIX_UNSTAMPED,
    },
};

use crate::{
    kernel::{
        FdTable, Kptr, SyscallRegs, is_inet_family, offsets, record_u64, sock_inode,
        tcp_established_ns,
    },
    maps::{
        ACCEPT_ENTRY_ON, ACCEPTING, READERS, atomic_add, count_acceptor, insert_or_count,
        listener_counters, take_unix_stamp,
    },
    stats::count_failure,
};

// How an exit program reaches the file table and the listener's fd:
/// probe reads of the file table; the listener fd from the entry programs.
const UNTYPED: u8 = 0;
/// Typed loads of the file table (`bpf_get_current_task_btf`, 5.11+); the listener
/// fd from the entry programs.
const TYPED: u8 = 1;
/// Typed loads, and the listener fd from the syscall's registers (5.15+).
const REGS: u8 = 2;

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

/// The exits, best first (userspace tries them in this order): registers and typed
/// loads, typed loads, probe reads.
#[tracepoint(category = "syscalls", name = "sys_exit_accept4")]
pub fn sys_exit_accept4_regs(ctx: TracePointContext) -> u32 {
    let _ = on_accept_return::<REGS>(&ctx, offsets().tp_accept4_ret);
    0
}

#[tracepoint(category = "syscalls", name = "sys_exit_accept")]
pub fn sys_exit_accept_regs(ctx: TracePointContext) -> u32 {
    let _ = on_accept_return::<REGS>(&ctx, offsets().tp_accept_ret);
    0
}

#[tracepoint(category = "syscalls", name = "sys_exit_accept4")]
pub fn sys_exit_accept4_btf(ctx: TracePointContext) -> u32 {
    let _ = on_accept_return::<TYPED>(&ctx, offsets().tp_accept4_ret);
    0
}

#[tracepoint(category = "syscalls", name = "sys_exit_accept")]
pub fn sys_exit_accept_btf(ctx: TracePointContext) -> u32 {
    let _ = on_accept_return::<TYPED>(&ctx, offsets().tp_accept_ret);
    0
}

#[tracepoint(category = "syscalls", name = "sys_exit_accept4")]
pub fn sys_exit_accept4(ctx: TracePointContext) -> u32 {
    let _ = on_accept_return::<UNTYPED>(&ctx, offsets().tp_accept4_ret);
    0
}

#[tracepoint(category = "syscalls", name = "sys_exit_accept")]
pub fn sys_exit_accept(ctx: TracePointContext) -> u32 {
    let _ = on_accept_return::<UNTYPED>(&ctx, offsets().tp_accept_ret);
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
fn on_accept_return<const MODE: u8>(ctx: &TracePointContext, ret_offset: u32) -> Result<(), i64> {
    let o = offsets();
    if o.queue_valid == 0 || ret_offset == 0 {
        return Ok(());
    }
    let pid_tgid = bpf_get_current_pid_tgid();
    let tid = pid_tgid as u32;
    let listen_fd = if MODE == REGS {
        None
    } else if ACCEPT_ENTRY_ON.get(0).is_some_and(|on| *on != 0) {
        // Taken whatever the accept returned.
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
    let files = if MODE == UNTYPED {
        FdTable::current::<false>(o)
    } else {
        FdTable::current::<true>(o)
    };
    let Some(files) = files else {
        return Ok(());
    };
    let Some(child) = files.sock(ret as u64, o) else {
        return Ok(());
    };
    // The listener's inode for a TCP child, and for a Unix child only if no enqueue
    // stamped it (the stamp names its listener).
    if is_inet(child) {
        let listener = syscall_listener::<MODE>(files, listen_fd, o);
        count_accept(child, pid_tgid, listener, tcp_established_ns(child, o));
    } else if !account_stamped_unix(child, pid_tgid) {
        unix_unstamped(
            child,
            pid_tgid,
            syscall_listener::<MODE>(files, listen_fd, o),
        );
    }
    Ok(())
}

/// The inode of the listener an accept syscall was given: its first argument, from
/// the registers (`REGS`) or as the entry program noted it (`listen_fd`); 0 if unknown.
#[inline(always)]
fn syscall_listener<const MODE: u8>(
    files: FdTable,
    listen_fd: Option<u64>,
    o: &KernelOffsets,
) -> u64 {
    if MODE == REGS {
        SyscallRegs::current(o).map_or(0, |regs| files.socket_inode(regs.arg(o.pt_regs_arg0), o))
    } else {
        listen_fd.map_or(0, |fd| files.socket_inode(fd, o))
    }
}

/// Counts the accept of `child` by thread `pid_tgid`, with its wait: an `inet`
/// (TCP) child's from the kernel's own note of its handshake's completion, for
/// `listener` (its inode, 0: unknown); a Unix child's from its stamp, which names its
/// listener (`listener`, if known, serves a child no enqueue stamped).
#[inline(always)]
pub fn account_accept(child: *const u8, pid_tgid: u64, inet: bool, listener: u64) {
    if inet {
        count_accept(
            child,
            pid_tgid,
            listener,
            tcp_established_ns(child, offsets()),
        );
    } else if !account_stamped_unix(child, pid_tgid) {
        unix_unstamped(child, pid_tgid, listener);
    }
}

/// Counts the accept of Unix `child` by thread `pid_tgid` from its stamp (listener
/// and wait); false if no enqueue stamped it.
#[inline(always)]
fn account_stamped_unix(child: *const u8, pid_tgid: u64) -> bool {
    let Some(stamp) = take_unix_stamp(child) else {
        return false;
    };
    count_accept(child, pid_tgid, stamp.listener, stamp.enqueued_ns);
    true
}

/// The accept of a Unix `child` no enqueue stamped, from `listener` (0: unknown):
/// one queued before sockq started, or whose enqueue the acceptor overtook (it took
/// the connection between its queueing and `sk_data_ready`'s read of the queue's
/// tail: about 1% of the accepts at saturation, where the acceptor waits on the
/// queue's lock). Its accept is counted where the listener is known; its wait is
/// lost, and counted as lost.
#[inline(always)]
fn unix_unstamped(child: *const u8, pid_tgid: u64, listener: u64) {
    if count_accept(child, pid_tgid, listener, 0) {
        count_failure(STAT_UNIX_UNSTAMPED, 0);
    }
}

/// Counts the accept of `child` from `listener` (0: unknown) by thread `pid_tgid`,
/// with its wait if `queued_ns` (when it was queued; 0: not known, see
/// `tcp_established_ns` for why not an Option); false if it could only be counted
/// as unattributed.
#[inline(always)]
fn count_accept(child: *const u8, pid_tgid: u64, listener: u64, queued_ns: u64) -> bool {
    // A listener older than sockq, whose connections were queued before it started,
    // gets its counters at its first accept.
    let Some(q) = (if listener != 0 {
        listener_counters(listener, child)
    } else {
        None
    }) else {
        count_failure(STAT_ACCEPTS_UNATTRIBUTED, 0);
        return false;
    };
    // SAFETY: a valid map value pointer; counters change through atomics only. The
    // count read before the add is this accept's rank for the sampling (adds of other
    // CPUs in between are not seen: a rank, not a count).
    let accepts = unsafe {
        let before = core::ptr::read_volatile(&raw const (*q).accepts);
        atomic_add(&raw mut (*q).accepts, 1);
        before
    };
    let tid = pid_tgid as u32;
    count_acceptor(&AcceptorKey {
        listener,
        pid: (pid_tgid >> 32) as u32,
        tid,
    });
    if queued_ns != 0 {
        // SAFETY: a helper without preconditions.
        let wait_ns = unsafe { bpf_ktime_get_ns() }.saturating_sub(queued_ns);
        // SAFETY: as above.
        unsafe {
            atomic_add(&raw mut (*q).waits, 1);
            atomic_add(&raw mut (*q).wait_sum_ns, wait_ns);
            if let Some(slot) = (*q).wait_hist.get_mut(wait_bucket(wait_ns / 1000)) {
                atomic_add(slot, 1);
            }
        }
    }
    sample_readers(child, listener, tid, accepts);
    true
}

/// Whether `sk` is an IPv4 or IPv6 socket.
#[inline(always)]
pub fn is_inet(sk: *const u8) -> bool {
    let o = offsets();
    Kptr::new(sk, o.btf_sock)
        .read::<u16>(o.sk_family)
        .is_ok_and(is_inet_family)
}

/// Watches who reads a sample of the accepted connections (`sock_recv_length`): every
/// one of a listener's first `SAMPLE_ALL_FIRST` accepts (`accepts_before`: this
/// accept's rank), then one in `SAMPLE_ONE_IN` (an LRU insert each: the busiest
/// listeners pay it on a few of their connections only).
#[inline(always)]
fn sample_readers(child: *const u8, listener: u64, acceptor_tid: u32, accepts_before: u64) {
    // SAFETY: a helper without preconditions.
    if accepts_before < SAMPLE_ALL_FIRST || unsafe { bpf_get_prandom_u32() } % SAMPLE_ONE_IN == 0 {
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
