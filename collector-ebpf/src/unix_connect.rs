//! Hooks: the exit of `connect()`, by fexit on the syscall's own function
//! (`__x64_sys_connect`, `__arm64_sys_connect`) where the kernel has BPF trampolines,
//! else `syscalls:sys_exit_connect`; and, where the waits of blocking clients are
//! asked for (`sockq run --unix-connect-waits`) or the exit cannot read the syscall's
//! registers (before 5.15), `syscalls:sys_enter_connect`. The classic tracepoints
//! need tracefs and `CONFIG_FTRACE_SYSCALLS`; all fire in the connecting thread.
//! `unix_stream_connect` has no tracepoint; the syscall's exit is where a refusal
//! and the caller's arguments meet. The fexit program, given the registers and the
//! return value, does what the tracepoint exit does without a syscall tracepoint:
//! any one of those sends every syscall on the host through the kernel's slow path.
//!
//! By default only the exit runs (`sys_exit_connect_regs`): a connect that returns
//! anything but `-EAGAIN` leaves at once; a refused one has its arguments read from
//! the registers the syscall saved (`kernel::SyscallRegs`), and is counted as below
//! if it was aimed at a Unix address. An entry program on a syscall tracepoint would
//! cost every syscall of every process on the host (the kernel then takes the slow
//! path of each), not only connects: see BENCHMARKS.md.
//!
//! With the entry program, at entry only connects whose `sockaddr` says `AF_UNIX` (one 2-byte user read for
//! every connect) are noted per thread in `UNIX_CONNECTING`: where the name is, its
//! length, the descriptor and the time. At exit the entry is taken; `-EAGAIN` (the
//! listener's queue was full, `unix_stream_connect` with a non-blocking client;
//! datagram connects never return it) counts a refusal in `UNIX_REFUSED` under
//! (namespace, name, tgid); a connect that took 10 ms or more without being refused
//! counts a wait (a blocking client slept in `unix_wait_for_peer` until the queue had
//! room). Only those read the name (from the caller's memory, which the syscall
//! leaves alone) and the client socket's namespace (from the descriptor, through the
//! task's file table): the connects that are neither, almost all, pay for one small
//! map entry. Userspace matches the name with its inventory of Unix listeners.
//!
//! Also here: [`on_unix_enqueue`], called by `sk_data_ready` for Unix listeners, which
//! gives their connections what TCP's get (enqueue counts, a stamp for the accept
//! programs: accepts, accept wait, acceptor threads).

use aya_ebpf::{
    EbpfContext as _,
    helpers::{bpf_get_current_comm, bpf_get_current_pid_tgid, bpf_ktime_get_ns},
    macros::{fexit, map, tracepoint},
    maps::{Array, HashMap},
    programs::{FExitContext, TracePointContext},
};
use collector_common::{
    layout::KernelOffsets,
    queue::UNIX_LOOKBACK,
    stats::{STAT_UNIX_CONNECTING_FULL, STAT_UNIX_LOOKBACK_SHORT, STAT_UNIX_REFUSED_FULL},
    unix::{
        AF_UNIX, BLOCKED_CONNECT_NS, EAGAIN_RET, SUN_PATH_LEN, UNIX_CONNECTING_MAX_ENTRIES,
        UNIX_REFUSED_MAX_ENTRIES, UnixConnectKey, UnixConnectStats, UnixConnecting, UnixOffsets,
    },
};

use crate::{
    kernel::{Kptr, SyscallRegs, backlog_and_inode, fd_sock, offsets, record_u64, sock_net_key},
    maps::{atomic_add, count_enqueue, get_or_insert, insert_or_count, stamp_unix_child},
    stats::count_failure,
};

/// Filled by userspace before loading (read-only); all zero: the programs do nothing.
#[unsafe(no_mangle)]
static UNIX_OFFSETS: UnixOffsets = UnixOffsets {
    tp_connect_fd: 0,
    tp_connect_addr: 0,
    tp_connect_addrlen: 0,
    tp_connect_ret: 0,
    valid: 0,
    sk_receive_queue_prev: 0,
    sk_receive_queue_qlen: 0,
    skb_sk: 0,
    accept_valid: 0,
    sk_receive_queue_head: 0,
    skb_prev: 0,
};

/// Threads inside an `AF_UNIX` connect(), by tid. A plain hash (an LRU map's insert
/// and delete cost several times more, on every Unix connect): every connect that
/// enters returns through `sys_exit_connect`, interrupted ones too, and removes its
/// entry; the few a start-up leaves (connects already inside when the exit program
/// attached) are replaced by their thread's next connect.
#[map]
static UNIX_CONNECTING: HashMap<u32, UnixConnecting> =
    HashMap::with_max_entries(UNIX_CONNECTING_MAX_ENTRIES, 0);

/// Refused and waiting connects per (client namespace, name, client tgid). Userspace
/// removes the entries of exited clients and of names no listener has.
#[map]
pub static UNIX_REFUSED: HashMap<UnixConnectKey, UnixConnectStats> =
    HashMap::with_max_entries(UNIX_REFUSED_MAX_ENTRIES, 0);

#[inline(always)]
pub fn unix_offsets() -> &'static UnixOffsets {
    let global: *const UnixOffsets = &raw const UNIX_OFFSETS;
    // SAFETY: a volatile read of a local hides where the pointer points, so the
    // compiler cannot fold the zero initialiser userspace replaces at load time.
    let global = unsafe { core::ptr::read_volatile(&global) };
    // SAFETY: a read-only global, valid for the program's life.
    unsafe { &*global }
}

#[tracepoint(category = "syscalls", name = "sys_enter_connect")]
pub fn sys_enter_connect(ctx: TracePointContext) -> u32 {
    let _ = on_connect_enter(&ctx);
    0
}

#[tracepoint(category = "syscalls", name = "sys_exit_connect")]
pub fn sys_exit_connect(ctx: TracePointContext) -> u32 {
    let _ = on_connect_exit(&ctx);
    0
}

/// The exit that needs no entry program for refusals (5.15+); with the entry
/// attached (`CONNECT_ENTRY_ON`), it does what [`sys_exit_connect`] does.
#[tracepoint(category = "syscalls", name = "sys_exit_connect")]
pub fn sys_exit_connect_regs(ctx: TracePointContext) -> u32 {
    let u = unix_offsets();
    if u.valid == 0 {
        return 0;
    }
    if let Ok(ret) = record_u64(ctx.as_ptr() as *const u8, u.tp_connect_ret) {
        let _ = connect_exited(ret as i64, core::ptr::null());
    }
    0
}

/// `long __x64_sys_connect(const struct pt_regs *regs)`: the registers, then the
/// return value; what [`sys_exit_connect_regs`] does. Userspace names the function
/// of its architecture.
#[fexit(function = "__x64_sys_connect")]
pub fn sys_connect_fexit(ctx: FExitContext) -> i32 {
    if unix_offsets().valid == 0 {
        return 0;
    }
    let _ = connect_exited(ctx.arg(1), ctx.arg(0));
    0
}

/// A connect returned `ret`: what the entry program noted is taken where it runs,
/// else the arguments are read from `regs`, the registers the syscall saved (null:
/// the current task's, `bpf_task_pt_regs`). Plain values, not an `Option` or a
/// closure for the registers: LLVM may compute on an `Option`'s undefined payload,
/// which the verifier refuses (see `SyscallRegs::arg`).
#[inline(always)]
fn connect_exited(ret: i64, regs: *const u8) -> Result<(), i64> {
    if CONNECT_ENTRY_ON.get(0).is_some_and(|on| *on != 0) {
        return connect_returned(ret);
    }
    // Only a refusal needs the arguments: the registers are not fetched otherwise.
    if ret != EAGAIN_RET {
        return Ok(());
    }
    let o = offsets();
    let regs = if regs.is_null() {
        SyscallRegs::current(o)
    } else {
        SyscallRegs::at(regs, o)
    };
    match regs {
        Some(regs) => refused(ret, regs),
        None => Ok(()),
    }
}

/// 1 when `sys_enter_connect` runs, set by userspace after attaching it.
#[map]
pub static CONNECT_ENTRY_ON: Array<u32> = Array::with_max_entries(1, 0);

/// A connect returned `ret`, its arguments in `regs`: counted if it was refused
/// (`-EAGAIN`) and aimed at a Unix address.
#[inline(always)]
fn refused(ret: i64, regs: SyscallRegs) -> Result<(), i64> {
    if ret != EAGAIN_RET {
        return Ok(());
    }
    let o = offsets();
    let (fd, addr, addrlen) = (
        regs.arg(o.pt_regs_arg0),
        regs.arg(o.pt_regs_arg1),
        regs.arg(o.pt_regs_arg2),
    );
    let addr = addr as *const u8;
    if !is_unix_address(addr, addrlen)? {
        return Ok(());
    }
    let len = (addrlen as u32 - 2).min(SUN_PATH_LEN as u32);
    let mut key = UnixConnectKey::ZERO;
    key.len = len;
    key.tgid = (bpf_get_current_pid_tgid() >> 32) as u32;
    read_name(addr, len, &mut key.path)?;
    if let Some(sk) = fd_sock::<true>(fd, o) {
        key.net = sock_net_key(sk, o);
    }
    count(&key, true, 0);
    Ok(())
}

#[inline(always)]
fn on_connect_enter(ctx: &TracePointContext) -> Result<(), i64> {
    let u = unix_offsets();
    let o = offsets();
    if u.valid == 0 || o.queue_valid == 0 {
        return Ok(());
    }
    let record = ctx.as_ptr() as *const u8;
    let addrlen = record_u64(record, u.tp_connect_addrlen)?;
    let addr = record_u64(record, u.tp_connect_addr)? as *const u8;
    if !is_unix_address(addr, addrlen)? {
        return Ok(());
    }
    let fd = record_u64(record, u.tp_connect_fd)?;
    let entry = UnixConnecting {
        addr: addr as u64,
        // SAFETY: a helper without preconditions.
        started_ns: unsafe { bpf_ktime_get_ns() },
        fd: fd as u32,
        len: (addrlen as u32 - 2).min(SUN_PATH_LEN as u32),
    };
    let tid = bpf_get_current_pid_tgid() as u32;
    insert_or_count(&UNIX_CONNECTING, &tid, &entry, 0, STAT_UNIX_CONNECTING_FULL);
    Ok(())
}

/// Whether the `sockaddr` a connect passed (`addrlen` bytes at `addr`, the caller's
/// memory) is a Unix one with at least one byte of name: one 2-byte user read.
#[inline(always)]
fn is_unix_address(addr: *const u8, addrlen: u64) -> Result<bool, i64> {
    if (addrlen as i32) < 3 || addr.is_null() {
        return Ok(false);
    }
    // SAFETY: bpf_probe_read_user validates the user address; a bad one is an error.
    let family: u16 =
        unsafe { aya_ebpf::helpers::bpf_probe_read_user(addr.cast::<u16>()) }.map_err(i64::from)?;
    Ok(family == AF_UNIX)
}

/// Copies the `len` name bytes after the family from user memory (no more: the
/// client's buffer may end there).
#[inline(always)]
fn read_name(addr: *const u8, len: u32, path: &mut [u8; SUN_PATH_LEN]) -> Result<(), i64> {
    let n = len & 0x7f;
    if n == 0 || n > SUN_PATH_LEN as u32 {
        return Ok(());
    }
    // SAFETY: `path` has room for `n` <= 108 bytes; the helper validates the user
    // address and fails (zeroing the destination) when it is bad.
    let rc = unsafe {
        aya_ebpf::helpers::generated::bpf_probe_read_user(
            path.as_mut_ptr().cast(),
            n,
            addr.wrapping_add(2).cast(),
        )
    };
    if rc < 0 { Err(rc) } else { Ok(()) }
}

#[inline(always)]
fn on_connect_exit(ctx: &TracePointContext) -> Result<(), i64> {
    let u = unix_offsets();
    if u.valid == 0 {
        return Ok(());
    }
    connect_returned(record_u64(ctx.as_ptr() as *const u8, u.tp_connect_ret)? as i64)
}

/// A connect that `sys_enter_connect` noted returned `ret`: a refusal, or a wait if
/// it took long.
#[inline(always)]
fn connect_returned(ret: i64) -> Result<(), i64> {
    let pid_tgid = bpf_get_current_pid_tgid();
    let tid = pid_tgid as u32;
    // SAFETY: the map value is copied out at once.
    let Some(entry) = (unsafe { UNIX_CONNECTING.get(&tid) }).copied() else {
        return Ok(());
    };
    let _ = UNIX_CONNECTING.remove(&tid);
    // SAFETY: a helper without preconditions.
    let took = unsafe { bpf_ktime_get_ns() }.saturating_sub(entry.started_ns);
    let refused = ret == EAGAIN_RET;
    if !refused && took < BLOCKED_CONNECT_NS {
        return Ok(());
    }
    let mut key = UnixConnectKey::ZERO;
    key.len = entry.len;
    key.tgid = (pid_tgid >> 32) as u32;
    read_name(entry.addr as *const u8, entry.len, &mut key.path)?;
    let o = offsets();
    if let Some(sk) = fd_sock::<false>(u64::from(entry.fd), o) {
        key.net = sock_net_key(sk, o);
    }
    count(&key, refused, took);
    Ok(())
}

#[inline(always)]
fn count(key: &UnixConnectKey, refused: bool, took: u64) {
    let Some(stats) = get_or_insert(&UNIX_REFUSED, key, STAT_UNIX_REFUSED_FULL, || {
        let mut fresh = UnixConnectStats::ZERO;
        fresh.comm = bpf_get_current_comm().unwrap_or([0; 16]);
        Some(fresh)
    }) else {
        return;
    };
    // SAFETY: valid map value pointers; the counters are updated atomically.
    unsafe {
        if refused {
            atomic_add(&raw mut (*stats).refused, 1);
        } else {
            atomic_add(&raw mut (*stats).waited, 1);
            atomic_add(&raw mut (*stats).wait_ns, took);
        }
    }
}

/// A connect queued on Unix listener `sk` (`sock:sk_data_ready` in
/// `unix_stream_connect`, after the skb carrying the new socket was queued): counts
/// the enqueue and its depth in `LISTENER_QUEUES`, as for TCP, and stamps the new
/// socket with its listener (`maps::stamp_unix_child`), so the accept programs count
/// its accept, its wait and its thread. The queue's tail is the connection just
/// queued unless other connects queued in between (before this `sk_data_ready`):
/// the connections before it are looked at too, up to `UNIX_LOOKBACK` of them, so
/// that whichever of those enqueues comes first stamps them all. A connection is thus
/// stamped at most a few microseconds after it was queued.
#[inline(always)]
pub fn on_unix_enqueue(sk: *const u8, o: &KernelOffsets) -> Result<(), i64> {
    let u = unix_offsets();
    if u.accept_valid == 0 {
        return Ok(());
    }
    // A Unix listener's accept queue is its receive queue: sk_ack_backlog is unused.
    let (_, limit, inode) = backlog_and_inode(sk, o)?;
    if inode == 0 {
        return Ok(());
    }
    let s = Kptr::new(sk, o.btf_sock);
    let depth: u32 = s.read(u.sk_receive_queue_qlen)?;
    let Some(q) = count_enqueue(sk, inode, depth) else {
        return Ok(());
    };
    if depth > limit {
        // SAFETY: a valid map value pointer; counters change through atomics only.
        unsafe { atomic_add(&raw mut (*q).full_enqueues, 1) };
    }
    // The tail, always (as it is the connection just queued, an earlier stamp at its
    // address is not its own); then, back from it, each connection not yet stamped:
    // the first one already stamped was stamped with those before it. An empty
    // queue's tail, and the first skb's `prev`, is the queue's head; an skb unlinked
    // meanwhile (accepted) has none.
    let head = sk.wrapping_add(u.sk_receive_queue_head as usize);
    // SAFETY: a helper without preconditions.
    let now = unsafe { bpf_ktime_get_ns() };
    let mut skb = s.ptr(u.sk_receive_queue_prev);
    for i in 0..UNIX_LOOKBACK {
        if skb.is_null() || skb == head {
            return Ok(());
        }
        let b = Kptr::new(skb, o.btf_sk_buff);
        let child = b.ptr(u.skb_sk);
        if child.is_null() {
            return Ok(());
        }
        if i == 0 {
            stamp_unix_child::<false>(child, inode, now);
        } else if stamp_unix_child::<true>(child, inode, now) {
            return Ok(());
        }
        skb = b.ptr(u.skb_prev);
    }
    if !skb.is_null() && skb != head {
        count_failure(STAT_UNIX_LOOKBACK_SHORT, 0);
    }
    Ok(())
}
