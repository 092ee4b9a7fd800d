//! Not attached anywhere: userspace runs it (`BPF_PROG_TEST_RUN`, a raw tracepoint's
//! arguments as input) for a listener whose queue is full, to learn how long the
//! oldest connection still in its accept queue has waited. A TCP child carries the
//! time its handshake completed (`kernel::tcp_established_ns`), and the queue's head
//! (`icsk_accept_queue.rskq_accept_head->sk`) is its oldest child: the oldest wait
//! costs nothing per connection, only this run when it is asked for.
//!
//! Arguments: the listener's `struct sock` address (`ListenerQueue::sk`, written by
//! its enqueues) and its inode; the address is taken for that listener only if its
//! inode still reads the same (a closed listener's memory may hold another socket).
//! Returns the head's wait in microseconds (saturated), 0 when the queue is empty or
//! the address is not that listener's any more.

use aya_ebpf::{helpers::bpf_ktime_get_ns, programs::RawTracePointContext};

use crate::kernel::{offsets, read, sock_inode, tcp_established_ns};

/// Written out rather than with `#[raw_tracepoint]`, whose wrapper returns 0: the
/// return value is this program's answer.
#[unsafe(no_mangle)]
#[unsafe(link_section = "raw_tp/sockq_oldest_queued")]
pub fn oldest_queued(ctx: *mut core::ffi::c_void) -> u32 {
    let ctx = RawTracePointContext::new(ctx);
    let sk: *const u8 = ctx.arg(0);
    let inode: u64 = ctx.arg(1);
    oldest_wait_us(sk, inode).unwrap_or(0)
}

#[inline(always)]
fn oldest_wait_us(sk: *const u8, inode: u64) -> Option<u32> {
    let o = offsets();
    if o.queue_valid == 0 || o.icsk_accept_head == 0 || sk.is_null() || inode == 0 {
        return None;
    }
    if sock_inode(sk, o) != inode {
        return None;
    }
    let req: *const u8 = read(sk, o.icsk_accept_head).ok()?;
    if req.is_null() {
        return None;
    }
    let child: *const u8 = read(req, o.request_sock_sk).ok()?;
    if child.is_null() {
        return None;
    }
    let queued_ns = tcp_established_ns(child, o);
    if queued_ns == 0 {
        return None;
    }
    // SAFETY: a helper without preconditions.
    let us = unsafe { bpf_ktime_get_ns() }.saturating_sub(queued_ns) / 1000;
    // 0 means "none": a wait under a microsecond reads 1.
    Some(us.clamp(1, u64::from(u32::MAX)) as u32)
}
