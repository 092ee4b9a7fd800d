//! Hooks: fexit on the syscall's own function (`__x64_sys_listen`, `__arm64_sys_listen`)
//! where the kernel has BPF trampolines, else `syscalls:sys_exit_listen` (5.15+), else
//! `syscalls:sys_enter_listen`, classic tracepoints: record the backlog the
//! application asked for (`inet_listen` is given it clamped to somaxconn, so not
//! there). The kernel
//! keeps only min(backlog, somaxconn) as the queue limit; knowing both tells whether
//! the application or the sysctl is the bottleneck when the queue overflows.
//!
//! At the exit of a `listen()` that succeeded, its arguments (fd, backlog) are read
//! from the registers the syscall saved, and the backlog is written into the
//! counters `inet_sock_set_state` created for the socket when it entered LISTEN
//! (Unix listeners have none yet: nothing). A second `listen()` changing the backlog
//! is seen too. No entry program: a syscall entry tracepoint would slow every
//! syscall on the host (`unix_connect.rs`), and so does any syscall tracepoint: the
//! fexit program, given the registers and the return value, does the exit's work
//! without one.
//!
//! Where the registers cannot be read, the entry program does it. The syscall has not
//! been validated yet there (the fd may not be a socket, or not a TCP one, or the call
//! may fail), so nothing is created for the socket: the backlog
//! waits per thread in `LISTEN_BACKLOG` until `inet_sock_set_state` sees this thread's
//! socket enter LISTEN (inside the same `listen()` call, after the kernel accepted
//! it) and creates the listener's counters with it. A `listen()` that fails, or one
//! on a Unix socket, leaves only this per-thread value, replaced by the thread's next
//! call (an LRU map bounds them). A second `listen()` on a listening socket (a
//! backlog change without a state change) is not seen.

use aya_ebpf::{
    EbpfContext as _,
    helpers::bpf_get_current_pid_tgid,
    macros::{fexit, tracepoint},
    programs::{FExitContext, TracePointContext},
};

use collector_common::layout::KernelOffsets;

use crate::{
    kernel::{FdTable, SyscallRegs, offsets, read, record_u64},
    maps::{LISTEN_BACKLOG, LISTENER_QUEUES},
};

#[tracepoint(category = "syscalls", name = "sys_exit_listen")]
pub fn sys_exit_listen_regs(ctx: TracePointContext) -> u32 {
    let _ = on_listen_exit(&ctx);
    0
}

/// `long __x64_sys_listen(const struct pt_regs *regs)`: the registers, then the
/// return value. Userspace names the function of its architecture.
#[fexit(function = "__x64_sys_listen")]
pub fn sys_listen_fexit(ctx: FExitContext) -> i32 {
    let o = offsets();
    let regs: *const u8 = ctx.arg(0);
    let ret: i64 = ctx.arg(1);
    if let Some(regs) = SyscallRegs::at(regs, o) {
        let _ = listened(ret, regs, o);
    }
    0
}

#[inline(always)]
fn on_listen_exit(ctx: &TracePointContext) -> Result<(), i64> {
    let o = offsets();
    if o.tp_listen_ret == 0 {
        return Ok(());
    }
    let ret = record_u64(ctx.as_ptr() as *const u8, o.tp_listen_ret)? as i64;
    let Some(regs) = SyscallRegs::current(o) else {
        return Ok(());
    };
    listened(ret, regs, o)
}

/// A `listen()` returned `ret`, its arguments in `regs`: on success, its backlog goes
/// into the listener's counters.
#[inline(always)]
fn listened(ret: i64, regs: SyscallRegs, o: &KernelOffsets) -> Result<(), i64> {
    if o.queue_valid == 0 || ret != 0 {
        return Ok(());
    }
    let (fd, backlog) = (regs.arg(o.pt_regs_arg0), regs.arg(o.pt_regs_arg1));
    let Some(files) = FdTable::current::<true>(o) else {
        return Ok(());
    };
    let inode = files.socket_inode(fd, o);
    if let Some(q) = LISTENER_QUEUES.get_ptr_mut(&inode) {
        // SAFETY: a valid map value pointer.
        unsafe { (*q).backlog_arg = backlog_value(backlog) };
    }
    Ok(())
}

/// The kernel reads backlog as an int; negative values mean "the maximum".
#[inline(always)]
fn backlog_value(arg: u64) -> u32 {
    let backlog = arg as i32;
    if backlog < 0 {
        u32::MAX
    } else {
        backlog as u32
    }
}

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
    let backlog = backlog_value(read(ctx.as_ptr() as *const u8, o.tp_listen_backlog)?);
    let tid = bpf_get_current_pid_tgid() as u32;
    let _ = LISTEN_BACKLOG.insert(&tid, &backlog, 0);
    Ok(())
}
