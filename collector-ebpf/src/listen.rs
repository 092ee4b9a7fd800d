//! Hook: `syscalls:sys_enter_listen`, classic tracepoint: records the backlog the
//! application asked for. The kernel keeps only min(backlog, somaxconn) as the
//! queue limit; knowing both tells whether the application or the sysctl is the
//! bottleneck when the queue overflows.

use aya_ebpf::{EbpfContext as _, macros::tracepoint, programs::TracePointContext};

use crate::{
    kernel::{fd_sock, offsets, read, sock_inode, sock_netns},
    maps::listener_queue,
};

#[tracepoint(category = "syscalls", name = "sys_enter_listen")]
pub fn sys_enter_listen(ctx: TracePointContext) -> u32 {
    let _ = try_listen(&ctx);
    0
}

#[inline(always)]
fn try_listen(ctx: &TracePointContext) -> Result<(), i64> {
    let o = offsets();
    if o.queue_valid == 0 || o.tp_listen_fd == 0 {
        return Ok(());
    }
    let base = ctx.as_ptr() as *const u8;
    let fd: u64 = read(base, o.tp_listen_fd)?;
    let backlog: u64 = read(base, o.tp_listen_backlog)?;
    let Some(sk) = fd_sock(fd, &o) else {
        return Ok(());
    };
    let inode = sock_inode(sk, &o);
    if inode == 0 {
        return Ok(());
    }
    if let Some(q) = listener_queue(inode, sock_netns(sk, &o)) {
        // The kernel reads backlog as an int; negative values mean "the maximum".
        let backlog = backlog as i32;
        // SAFETY: a valid map value pointer.
        unsafe {
            (*q).backlog_arg = if backlog < 0 {
                u32::MAX
            } else {
                backlog as u32
            }
        };
    }
    Ok(())
}
