//! Hook: `syscalls:sys_enter_listen`, classic tracepoint: records the backlog the
//! application asked for. The kernel keeps only min(backlog, somaxconn) as the
//! queue limit; knowing both tells whether the application or the sysctl is the
//! bottleneck when the queue overflows.
//!
//! The syscall has not been validated yet here (the fd may not be a socket, or not a
//! TCP one, or the call may fail), so nothing is created for the socket: the backlog
//! waits per thread in `LISTEN_BACKLOG` until `inet_sock_set_state` sees this thread's
//! socket enter LISTEN (inside the same `listen()` call, after the kernel accepted
//! it) and creates the listener's counters with it. A `listen()` that fails, or one
//! on a Unix socket, leaves only this per-thread value, replaced by the thread's next
//! call (an LRU map bounds them). A second `listen()` on a listening socket (a
//! backlog change without a state change) is not seen.

use aya_ebpf::{
    EbpfContext as _, helpers::bpf_get_current_pid_tgid, macros::tracepoint,
    programs::TracePointContext,
};

use crate::{
    kernel::{offsets, read},
    maps::LISTEN_BACKLOG,
};

#[tracepoint(category = "syscalls", name = "sys_enter_listen")]
pub fn sys_enter_listen(ctx: TracePointContext) -> u32 {
    let _ = try_listen(&ctx);
    0
}

#[inline(always)]
fn try_listen(ctx: &TracePointContext) -> Result<(), i64> {
    let o = offsets();
    if o.queue_valid == 0 || o.tp_listen_backlog == 0 {
        return Ok(());
    }
    let backlog: u64 = read(ctx.as_ptr() as *const u8, o.tp_listen_backlog)?;
    // The kernel reads backlog as an int; negative values mean "the maximum".
    let backlog = backlog as i32;
    let backlog = if backlog < 0 {
        u32::MAX
    } else {
        backlog as u32
    };
    let tid = bpf_get_current_pid_tgid() as u32;
    let _ = LISTEN_BACKLOG.insert(&tid, &backlog, 0);
    Ok(())
}
