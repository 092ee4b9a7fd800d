//! Hooks: `syscalls:sys_enter_accept4`/`sys_exit_accept4` and
//! `syscalls:sys_enter_accept`/`sys_exit_accept`, classic tracepoints (specific to
//! these syscalls, unlike the raw `sys_enter`/`sys_exit` that fire for every
//! syscall). They fire in the accepting thread.
//!
//! On entry the listener's fd is kept for the thread (`ACCEPTING`). On a successful
//! return both fds are followed through the task's file table to their sockets
//! (task->files->fdt->fd[n]->private_data->sk): the accept is counted for the
//! listener and the (listener, thread) pair, and if `inet_sock_set_state` stamped the
//! child when its handshake completed, the difference is the true time it waited
//! to be accepted. A sample of the accepted connections is kept in `READERS` to see
//! which threads read them.
//!
//! Not seen: accepts through io_uring, and the wait of connections whose handshake
//! completed before sockq started (they are counted, not timed).

use aya_ebpf::{
    EbpfContext as _,
    helpers::{bpf_get_current_pid_tgid, bpf_get_prandom_u32, bpf_ktime_get_ns},
    macros::tracepoint,
    programs::TracePointContext,
};
use collector_common::{
    queue::{AcceptorKey, ReaderTrack, SAMPLE_ONE_IN, wait_bucket},
    stats::{STAT_ACCEPTING_FULL, STAT_READERS_FULL},
};

use crate::{
    kernel::{fd_sock, offsets, read, sock_inode, sock_netns},
    maps::{
        ACCEPTING, QUEUED, READERS, atomic_add, count_acceptor, insert_or_count, listener_queue,
    },
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

#[tracepoint(category = "syscalls", name = "sys_exit_accept4")]
pub fn sys_exit_accept4(ctx: TracePointContext) -> u32 {
    let _ = on_accept_return(&ctx, offsets().tp_accept4_ret);
    0
}

#[tracepoint(category = "syscalls", name = "sys_exit_accept")]
pub fn sys_exit_accept(ctx: TracePointContext) -> u32 {
    let _ = on_accept_return(&ctx, offsets().tp_accept_ret);
    0
}

#[inline(always)]
fn on_accept_enter(ctx: &TracePointContext, fd_offset: u32) -> Result<(), i64> {
    if offsets().queue_valid == 0 || fd_offset == 0 {
        return Ok(());
    }
    let fd: u64 = read(ctx.as_ptr() as *const u8, fd_offset)?;
    let tid = bpf_get_current_pid_tgid() as u32;
    insert_or_count(&ACCEPTING, &tid, &fd, 0, STAT_ACCEPTING_FULL);
    Ok(())
}

#[inline(always)]
fn on_accept_return(ctx: &TracePointContext, ret_offset: u32) -> Result<(), i64> {
    let o = offsets();
    if o.queue_valid == 0 || ret_offset == 0 {
        return Ok(());
    }
    let pid_tgid = bpf_get_current_pid_tgid();
    let tid = pid_tgid as u32;
    // SAFETY: the value is copied out at once.
    let Some(listen_fd) = (unsafe { ACCEPTING.get(&tid) }).copied() else {
        return Ok(());
    };
    let _ = ACCEPTING.remove(&tid);
    let ret: i64 = read(ctx.as_ptr() as *const u8, ret_offset)?;
    if ret < 0 {
        return Ok(());
    }
    let Some(listener_sk) = fd_sock(listen_fd, &o) else {
        return Ok(());
    };
    let listener = sock_inode(listener_sk, &o);
    if listener == 0 {
        return Ok(());
    }
    let Some(q) = listener_queue(listener, sock_netns(listener_sk, &o)) else {
        return Ok(());
    };
    // SAFETY: a valid map value pointer; counters change through atomics only.
    unsafe { atomic_add(&raw mut (*q).accepts, 1) };
    count_acceptor(&AcceptorKey {
        listener,
        pid: (pid_tgid >> 32) as u32,
        tid,
    });
    let Some(child) = fd_sock(ret as u64, &o) else {
        return Ok(());
    };
    let key = child as u64;
    // SAFETY: the value is copied out at once.
    if let Some(stamp) = (unsafe { QUEUED.get(&key) }).copied() {
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
    // Watch who reads a sample of the accepted connections (sock_recv_length).
    // SAFETY: a helper without preconditions.
    if unsafe { bpf_get_prandom_u32() } % SAMPLE_ONE_IN == 0 {
        let track = ReaderTrack {
            listener,
            acceptor_tid: tid,
            first_reader: 0,
            reads: 0,
            by_acceptor: 0,
            by_others_than_first: 0,
            _pad: 0,
        };
        insert_or_count(&READERS, &key, &track, 0, STAT_READERS_FULL);
    }
    Ok(())
}
