//! Hooks: `syscalls:sys_exit_accept4` and `syscalls:sys_exit_accept`, classic
//! tracepoints (specific to these syscalls, unlike the raw `sys_exit` that fires for
//! every syscall). They fire in the accepting thread.
//!
//! The returned fd is followed through the task's file table to its socket
//! (task->files->fdt->fd[ret]->private_data->sk). If `sk_data_ready` stamped that
//! socket when it was queued, the difference is the true time the connection waited
//! in the accept queue; it goes into the listener's accept-wait histogram, and the
//! accept is counted for the (listener, thread) pair.
//!
//! Not seen: accepts through io_uring, and connections queued before sockq started.

use aya_ebpf::{
    EbpfContext as _,
    helpers::{bpf_get_current_pid_tgid, bpf_get_prandom_u32, bpf_ktime_get_ns},
    macros::tracepoint,
    programs::TracePointContext,
};
use collector_common::queue::{AcceptorKey, ReaderTrack, SAMPLE_ONE_IN, wait_bucket};

use crate::{
    kernel::{fd_sock, offsets, read},
    maps::{LISTENER_QUEUES, QUEUED, READERS, atomic_add, count_acceptor},
};

#[tracepoint(category = "syscalls", name = "sys_exit_accept4")]
pub fn sys_exit_accept4(ctx: TracePointContext) -> u32 {
    let o = offsets();
    let _ = on_accept_return(&ctx, o.tp_accept4_ret);
    0
}

#[tracepoint(category = "syscalls", name = "sys_exit_accept")]
pub fn sys_exit_accept(ctx: TracePointContext) -> u32 {
    let o = offsets();
    let _ = on_accept_return(&ctx, o.tp_accept_ret);
    0
}

#[inline(always)]
fn on_accept_return(ctx: &TracePointContext, ret_offset: u32) -> Result<(), i64> {
    let o = offsets();
    if o.queue_valid == 0 || ret_offset == 0 {
        return Ok(());
    }
    let ret: i64 = read(ctx.as_ptr() as *const u8, ret_offset)?;
    if ret < 0 {
        return Ok(());
    }
    let Some(child) = fd_sock(ret as u64, &o) else {
        return Ok(());
    };
    let key = child as u64;
    // SAFETY: the value is copied out at once.
    let Some(stamp) = (unsafe { QUEUED.get(&key) }).copied() else {
        return Ok(());
    };
    let _ = QUEUED.remove(&key);
    // SAFETY: a helper without preconditions.
    let wait_ns = unsafe { bpf_ktime_get_ns() }.saturating_sub(stamp.enqueued_ns);
    if let Some(q) = LISTENER_QUEUES.get_ptr_mut(&stamp.listener) {
        // SAFETY: a valid map value pointer; counters change through atomics only.
        unsafe {
            atomic_add(&raw mut (*q).accepts, 1);
            atomic_add(&raw mut (*q).wait_sum_ns, wait_ns);
            if let Some(slot) = (*q).wait_hist.get_mut(wait_bucket(wait_ns / 1000)) {
                atomic_add(slot, 1);
            }
        }
    }
    let pid_tgid = bpf_get_current_pid_tgid();
    let tid = pid_tgid as u32;
    count_acceptor(&AcceptorKey {
        listener: stamp.listener,
        pid: (pid_tgid >> 32) as u32,
        tid,
    });
    // Watch who reads a sample of the accepted connections (sock_recv_length).
    // SAFETY: a helper without preconditions.
    if unsafe { bpf_get_prandom_u32() } % SAMPLE_ONE_IN == 0 {
        let track = ReaderTrack {
            listener: stamp.listener,
            acceptor_tid: tid,
            first_reader: 0,
            reads: 0,
            by_acceptor: 0,
            by_others_than_first: 0,
            _pad: 0,
        };
        let _ = READERS.insert(&key, &track, 0);
    }
    Ok(())
}
