//! Reading kernel structs through the offsets userspace resolved from BTF.

use aya_ebpf::helpers::bpf_probe_read_kernel;
use collector_common::{layout::KernelOffsets, stats::STAT_READ_ERRORS, tcp_state::IPPROTO_TCP};

use crate::{
    maps::{TCP_PROT_SLOTS, TCP_PROTS},
    stats::count_failure,
};

/// Filled by userspace before loading (`EbpfLoader::set_global`, read-only).
#[unsafe(no_mangle)]
static KERNEL_OFFSETS: KernelOffsets = KernelOffsets {
    sk_family: 0,
    sk_num: 0,
    sk_rcv_saddr: 0,
    sk_v6_rcv_saddr: 0,
    sk_net: 0,
    net_ns_inum: 0,
    sk_protocol: 0,
    sk_protocol_size: 0,
    tp_state_skaddr: 0,
    tp_state_oldstate: 0,
    tp_state_newstate: 0,
    valid: 0,
    sk_state: 0,
    sk_ack_backlog: 0,
    sk_max_ack_backlog: 0,
    sk_socket: 0,
    socket_ino: 0,
    socket_sk: 0,
    icsk_accept_tail: 0,
    request_sock_sk: 0,
    task_files: 0,
    files_fdt: 0,
    fdt_max_fds: 0,
    fdt_fd: 0,
    file_private_data: 0,
    tp_accept4_ret: 0,
    tp_accept_ret: 0,
    tp_listen_fd: 0,
    tp_listen_backlog: 0,
    queue_valid: 0,
    tp_accept4_fd: 0,
    tp_accept_fd: 0,
    net_cookie: 0,
    sk_ino: 0,
    uring_valid: 0,
    uring_complete_layout: 0,
    req_opcode: 0,
    req_flags: 0,
    req_multishot_bit: 0,
    req_ctx: 0,
    req_user_data: 0,
    req_file: 0,
    req_accept_file_slot: 0,
    ring_fixed_nodes: 0,
    ring_fixed_nr: 0,
    rsrc_node_file_ptr: 0,
    sk_prot: 0,
    tcp_rcvq_time: 0,
    pt_regs_arg0: 0,
    pt_regs_arg1: 0,
    pt_regs_arg2: 0,
    icsk_accept_head: 0,
    tp_listen_ret: 0,
    btf_sock: 0,
    btf_tcp_sock: 0,
    btf_net: 0,
    btf_file: 0,
    btf_socket_alloc: 0,
    btf_sk_buff: 0,
    socket_file: 0,
};

#[inline(always)]
pub fn offsets() -> &'static KernelOffsets {
    let global: *const KernelOffsets = &raw const KERNEL_OFFSETS;
    // SAFETY: a volatile read of a local: it hides where the pointer points, so the
    // compiler cannot fold the zero initialiser userspace replaces at load time, and
    // fields are then loaded one by one when used (no copy of the whole struct).
    let global = unsafe { core::ptr::read_volatile(&global) };
    // SAFETY: a read-only global, valid for the program's life.
    unsafe { &*global }
}

/// Reads a `T` at `base + offset` in kernel memory; counts failures.
#[inline(always)]
pub fn read<T>(base: *const u8, offset: u32) -> Result<T, i64> {
    // SAFETY: bpf_probe_read_kernel validates the address; a bad one returns an error.
    match unsafe { bpf_probe_read_kernel(base.wrapping_add(offset as usize).cast::<T>()) } {
        Ok(v) => Ok(v),
        Err(e) => {
            let e: i64 = e.into();
            count_failure(STAT_READ_ERRORS, e);
            Err(e)
        }
    }
}

/// A pointer to a kernel struct, read with plain loads where `bpf_rdonly_cast` (Linux
/// 6.2+) gave it the struct's BTF type, else with `bpf_probe_read_kernel` ([`read`]).
///
/// A probe read is a helper call (about 50 ns here, `copy_from_kernel_nofault`); a
/// load through a cast pointer is one instruction, which the verifier checks against
/// BTF (the offset must fall in the struct, a pointer member be read whole) and the
/// JIT guards (a faulting load reads 0, like a failed probe read but uncounted).
/// Userspace gives a nonzero BTF id (`KernelOffsets::btf_*`) only where the kfunc
/// exists; the verifier knows the id (read-only data) and checks only the path it
/// selects, so one program serves kernels with and without it.
#[derive(Clone, Copy)]
pub struct Kptr {
    /// The address: as `bpf_rdonly_cast` returned it when `typed`, else untyped.
    ptr: *const u8,
    typed: bool,
}

impl Kptr {
    /// `raw` as a pointer to the struct of BTF id `btf_id` (0: read by probe reads).
    #[inline(always)]
    pub fn new(raw: *const u8, btf_id: u32) -> Self {
        if btf_id == 0 {
            return Self {
                ptr: raw,
                typed: false,
            };
        }
        Self {
            ptr: rdonly_cast(raw, btf_id),
            typed: true,
        }
    }

    /// Reads the `T` at `offset` (a whole scalar or pointer member, or part of a
    /// scalar one).
    #[inline(always)]
    pub fn read<T>(self, offset: u32) -> Result<T, i64> {
        if self.typed {
            // SAFETY: a typed pointer: the verifier checks the load against BTF and the
            // JIT makes a load that faults read 0.
            return Ok(unsafe {
                core::ptr::read_volatile(self.ptr.wrapping_add(offset as usize).cast::<T>())
            });
        }
        read(self.ptr, offset)
    }

    /// A pointer member at `offset`, null when it is null or unreadable.
    #[inline(always)]
    pub fn ptr(self, offset: u32) -> *const u8 {
        self.read::<*const u8>(offset).unwrap_or(core::ptr::null())
    }
}

/// `bpf_rdonly_cast(ptr, btf_id)`: Rust cannot name a kfunc, so the program calls a
/// placeholder helper number that userspace rewrites into the kfunc call before
/// loading (`RDONLY_CAST_PLACEHOLDER`). r1-r5 are clobbered as by any call. Not
/// `pure`: it must not be moved above the test of `btf_id` that guards it.
#[inline(always)]
fn rdonly_cast(ptr: *const u8, btf_id: u32) -> *const u8 {
    let cast: *const u8;
    // SAFETY: the kfunc (or, where the kernel has none, `r0 = r1`) only returns its
    // first argument, typed; it reads and writes nothing.
    unsafe {
        core::arch::asm!(
            "call {placeholder}",
            placeholder = const collector_common::layout::RDONLY_CAST_PLACEHOLDER,
            inlateout("r1") ptr => _,
            inlateout("r2") u64::from(btf_id) => _,
            lateout("r0") cast,
            lateout("r3") _,
            lateout("r4") _,
            lateout("r5") _,
            options(nomem, nostack),
        );
    }
    cast
}

/// The low 32 bits of kernel pointer `p` as a number, to compute with: the verifier
/// refuses arithmetic on a pointer (a typed one is no number to it), but turns a
/// 32-bit copy of one into an unknown scalar for a program allowed to see kernel
/// addresses (`CAP_PERFMON`, which every tracing program needs). A 32-bit move in
/// assembly, so that LLVM emits no mask (an AND on a pointer is refused too).
#[inline(always)]
pub fn pointer_low_bits(p: *const u8) -> u32 {
    let low: u64;
    // SAFETY: a register move; reads and writes no memory.
    unsafe {
        core::arch::asm!(
            "w0 = w1",
            in("r1") p,
            lateout("r0") low,
            options(pure, nomem, nostack),
        );
    }
    low as u32
}

/// The 8-byte field at `offset` of a tracepoint program's record (`ctx`): a plain load
/// at the offsets syscall records put their arguments and return value at (16, 24,
/// 32: after the 8-byte common header and the syscall number), else a probe read.
/// A load of the context must have its offset in the instruction, so each offset has
/// its own arm; `offset` comes from read-only data the verifier knows, and only the
/// arm it selects is checked.
#[inline(always)]
pub fn record_u64(ctx: *const u8, offset: u32) -> Result<u64, i64> {
    let base = ctx.cast::<u64>();
    // SAFETY: a tracepoint's context is its record, readable up to its size; the
    // offsets are those of 8-byte fields userspace found in its tracefs format.
    unsafe {
        match offset {
            16 => Ok(core::ptr::read_volatile(base.add(2))),
            24 => Ok(core::ptr::read_volatile(base.add(3))),
            32 => Ok(core::ptr::read_volatile(base.add(4))),
            _ => read(ctx, offset),
        }
    }
}

/// The inode of the socket's network namespace (`sk->__sk_common.skc_net.net->ns.inum`),
/// or 0 when it cannot be read.
#[inline(always)]
pub fn sock_netns(sk: *const u8, o: &KernelOffsets) -> u32 {
    let net = Kptr::new(sk, o.btf_sock).ptr(o.sk_net);
    if net.is_null() {
        return 0;
    }
    Kptr::new(net, o.btf_net)
        .read::<u32>(o.net_ns_inum)
        .unwrap_or(0)
}

/// The key of `sk`'s network namespace in kernel state: its cookie where the kernel
/// has one (never reused), else its inode; 0 when unreadable.
#[inline(always)]
pub fn sock_net_key(sk: *const u8, o: &KernelOffsets) -> u64 {
    net_key(Kptr::new(sk, o.btf_sock).ptr(o.sk_net), o)
}

/// [`sock_net_key`] of the `struct net` itself.
#[inline(always)]
pub fn net_key(net: *const u8, o: &KernelOffsets) -> u64 {
    if net.is_null() {
        return 0;
    }
    let net = Kptr::new(net, o.btf_net);
    if o.net_cookie != 0 {
        net.read::<u64>(o.net_cookie).unwrap_or(0)
    } else {
        net.read::<u32>(o.net_ns_inum).map_or(0, u64::from)
    }
}

/// `sk->sk_protocol`, or `None` when this kernel's layout does not let us read it.
#[inline(always)]
pub fn sock_protocol(sk: *const u8, o: &KernelOffsets) -> Option<u16> {
    let sk = Kptr::new(sk, o.btf_sock);
    match o.sk_protocol_size {
        2 => sk.read::<u16>(o.sk_protocol).ok(),
        1 => sk.read::<u8>(o.sk_protocol).ok().map(u16::from),
        _ => None,
    }
}

/// `sk->sk_net`, if `sk` is a TCP socket (`None` for the SCTP and MPTCP sockets that
/// report through the same tracepoint; every socket counts when the protocol cannot
/// be read, as before the filter).
///
/// Where `skc_prot` comes right before `skc_net`, one 16-byte read gives both (two
/// loads where the sock is typed, [`Kptr`]), and a
/// `skc_prot` already seen on a TCP socket (`TCP_PROTS`) says TCP without reading
/// `sk_protocol`. A `struct proto` belongs to one protocol: every socket whose
/// `sk_prot` points at `tcp_prot`, `tcpv6_prot` or a TCP wrapper (kTLS, sockmap) is a
/// TCP socket. A pointer is learned only after `sk_protocol` said TCP; racing CPUs
/// may overwrite each other's slot (8-byte stores do not tear), which costs only a
/// later protocol read. Slots are never emptied: a wrapper learned from a module
/// (kTLS) stays after the module unloads, harmless unless another protocol's
/// `struct proto` is later placed at that very address.
#[inline(always)]
pub fn tcp_sock_net(sk: *const u8, o: &KernelOffsets) -> Option<*const u8> {
    let s = Kptr::new(sk, o.btf_sock);
    if o.sk_prot == 0 || (!s.typed && o.sk_prot + 8 != o.sk_net) {
        return is_tcp(sock_protocol(sk, o)).then_some(s.ptr(o.sk_net));
    }
    let (prot, net) = if s.typed {
        (s.read::<u64>(o.sk_prot).unwrap_or(0), s.ptr(o.sk_net))
    } else {
        let [prot, net]: [u64; 2] = read(sk, o.sk_prot).unwrap_or([0, 0]);
        (prot, net as *const u8)
    };
    // One scan: a known pointer answers at once; else the first empty slot is where
    // a pointer the protocol read says is TCP's is learned.
    let mut empty = None;
    if prot != 0
        && let Some(known) = TCP_PROTS.get_ptr_mut(0).map(|p| p.cast::<u64>())
    {
        for i in 0..TCP_PROT_SLOTS {
            // SAFETY: within the map value, an array of TCP_PROT_SLOTS u64s.
            let slot = unsafe { known.add(i) };
            match unsafe { core::ptr::read_volatile(slot) } {
                p if p == prot => return Some(net),
                0 if empty.is_none() => empty = Some(slot),
                _ => {}
            }
        }
    }
    let protocol = sock_protocol(sk, o);
    if protocol == Some(IPPROTO_TCP)
        && let Some(slot) = empty
    {
        // SAFETY: a slot of the map value found above.
        unsafe { core::ptr::write_volatile(slot, prot) };
    }
    is_tcp(protocol).then_some(net)
}

/// Whether a socket whose `sk_protocol` read gave `protocol` counts as TCP: an
/// unreadable or unknown one does, as the doc of [`tcp_sock_net`] says.
#[inline(always)]
fn is_tcp(protocol: Option<u16>) -> bool {
    protocol.is_none_or(|p| p == IPPROTO_TCP)
}

/// The inode number of the socket `sk` belongs to (`SOCK_INODE(sk->sk_socket)->i_ino`),
/// or 0 for a socket without one (a child not yet accepted).
#[inline(always)]
pub fn sock_inode(sk: *const u8, o: &KernelOffsets) -> u64 {
    // Kernels that keep the inode in the sock itself (`sk_ino`, 6.18): one read.
    let s = Kptr::new(sk, o.btf_sock);
    if o.sk_ino != 0 {
        return s.read::<u64>(o.sk_ino).unwrap_or(0);
    }
    socket_inode(s.ptr(o.sk_socket), o)
}

/// The inode number of `struct socket` `socket` (`SOCK_INODE(socket)->i_ino`), or 0.
#[inline(always)]
pub fn socket_inode(socket: *const u8, o: &KernelOffsets) -> u64 {
    if socket.is_null() {
        return 0;
    }
    Kptr::new(socket, o.btf_socket_alloc)
        .read::<u64>(o.socket_ino)
        .unwrap_or(0)
}

/// The `struct sock` behind file descriptor `fd` of the current task
/// (task->files->fdt->fd[fd]->private_data->sk). The caller knows `fd` is a socket
/// (a successful accept() or listen() on it).
///
/// `TYPED`: the first half of the walk as plain loads (see [`FdTable`]).
#[inline(always)]
pub fn fd_sock<const TYPED: bool>(fd: u64, o: &KernelOffsets) -> Option<*const u8> {
    FdTable::current::<TYPED>(o)?.sock(fd, o)
}

/// The current task's open-file table, walked to once for every descriptor a program
/// follows (an accept's child and its listener).
///
/// `TYPED`: the task pointer of `bpf_get_current_task_btf` (Linux 5.11+) is typed, and
/// the verifier lets a program load its fields, and those of the structs they point
/// to, directly (task->files->fdt, the table's size and its array); the array holds
/// untyped `struct file *`, so from there on it is [`Kptr`]'s reads (plain loads only
/// where `bpf_rdonly_cast` exists). A kernel
/// without the helper refuses a program built with `TYPED`: the other one is attached
/// there instead.
#[derive(Clone, Copy)]
pub struct FdTable {
    fd_array: *const u8,
    max_fds: u32,
}

impl FdTable {
    #[inline(always)]
    pub fn current<const TYPED: bool>(o: &KernelOffsets) -> Option<Self> {
        // SAFETY: helpers without preconditions; the untyped pointer is only read
        // through bpf_probe_read_kernel.
        let task = unsafe {
            if TYPED {
                aya_ebpf::helpers::bpf_get_current_task_btf() as *const u8
            } else {
                aya_ebpf::helpers::bpf_get_current_task() as *const u8
            }
        };
        let files: *const u8 = walk::<TYPED, _>(task, o.task_files)?;
        let fdt: *const u8 = walk::<TYPED, _>(files, o.files_fdt)?;
        Some(Self {
            max_fds: walk::<TYPED, _>(fdt, o.fdt_max_fds)?,
            fd_array: walk::<TYPED, _>(fdt, o.fdt_fd)?,
        })
    }

    /// The sock behind descriptor `fd`, if it is an open socket's.
    #[inline(always)]
    pub fn sock(self, fd: u64, o: &KernelOffsets) -> Option<*const u8> {
        file_sock(self.file(fd, o)?, o)
    }

    /// The inode of the socket behind descriptor `fd` (its `struct socket`'s, one read
    /// fewer than through the sock), or 0.
    #[inline(always)]
    pub fn socket_inode(self, fd: u64, o: &KernelOffsets) -> u64 {
        self.file(fd, o).map_or(0, |file| {
            socket_inode(Kptr::new(file, o.btf_file).ptr(o.file_private_data), o)
        })
    }

    #[inline(always)]
    fn file(self, fd: u64, o: &KernelOffsets) -> Option<*const u8> {
        if fd >= u64::from(self.max_fds) || fd > 0x0fff_ffff {
            return None;
        }
        let slot = self.fd_array.wrapping_add((fd * 8) as usize);
        let file = if o.socket_file != 0 && o.btf_socket_alloc != 0 {
            // The array's slots are untyped (`struct file **`); one seen as the `file`
            // member of a `struct socket` around it loads as a typed file pointer: a
            // plain load instead of a probe read ([`Kptr`]: any address may be cast).
            Kptr::new(
                slot.wrapping_sub(o.socket_file as usize),
                o.btf_socket_alloc,
            )
            .ptr(o.socket_file)
        } else {
            read::<*const u8>(slot, 0).ok()?
        };
        (!file.is_null()).then_some(file)
    }
}

/// The registers the current syscall saved at its entry, which its exit still holds
/// (`bpf_task_pt_regs`, Linux 5.15+, on the typed task): its arguments. Or those an
/// fexit program on a syscall's own function (`__x64_sys_listen`...) is given.
#[derive(Clone, Copy)]
pub struct SyscallRegs(*const u8);

impl SyscallRegs {
    /// The registers at `regs`: the one argument of a syscall's function
    /// (`const struct pt_regs *`), typed in an fexit program. `None` as
    /// [`Self::current`], or for a null pointer.
    #[inline(always)]
    pub fn at(regs: *const u8, o: &KernelOffsets) -> Option<Self> {
        if o.pt_regs_arg0 == 0 || o.pt_regs_arg1 == 0 || o.pt_regs_arg2 == 0 || regs.is_null() {
            return None;
        }
        Some(Self(regs))
    }

    /// `None` where this kernel's `struct pt_regs` has no fields sockq knows for the
    /// arguments (`KernelOffsets::pt_regs_arg*`).
    #[inline(always)]
    pub fn current(o: &KernelOffsets) -> Option<Self> {
        if o.pt_regs_arg0 == 0 || o.pt_regs_arg1 == 0 || o.pt_regs_arg2 == 0 {
            return None;
        }
        // SAFETY: helpers without preconditions; bpf_task_pt_regs takes the typed task
        // and returns its (typed) saved registers.
        let regs = unsafe {
            let task = aya_ebpf::helpers::bpf_get_current_task_btf();
            aya_ebpf::helpers::generated::bpf_task_pt_regs(task) as *const u8
        };
        Some(Self(regs))
    }

    /// The argument whose `struct pt_regs` offset is `offset` (one of
    /// `KernelOffsets::pt_regs_arg*`, all nonzero once [`Self::current`] gave `self`).
    /// A plain value rather than an `Option`: LLVM may compute on an `Option`'s
    /// undefined payload where the result does not matter, and the verifier refuses
    /// any read of a register never written ("R9 !read_ok").
    #[inline(always)]
    pub fn arg(self, offset: u32) -> u64 {
        walk::<true, u64>(self.0, offset).unwrap_or(0)
    }
}

/// When TCP socket `sk`'s handshake completed, `CLOCK_MONOTONIC` ns
/// (`tcp_sock.rcvq_space.time`: see [`KernelOffsets::tcp_rcvq_time`]); 0 where
/// unknown. A plain value, not an `Option`: LLVM computed on a `None`'s undefined
/// payload after the failure count's call, and the verifier refused the read of the
/// register the call had clobbered ("R2 !read_ok").
#[inline(always)]
pub fn tcp_established_ns(sk: *const u8, o: &KernelOffsets) -> u64 {
    if o.tcp_rcvq_time == 0 {
        return 0;
    }
    let us: u64 = Kptr::new(sk, o.btf_tcp_sock)
        .read(o.tcp_rcvq_time)
        .unwrap_or(0);
    us.wrapping_mul(1000)
}

/// A field on [`fd_sock`]'s walk: with `TYPED` a plain load (`None` for a null
/// pointer, whose load would read 0), else a probe read.
#[inline(always)]
fn walk<const TYPED: bool, T>(base: *const u8, offset: u32) -> Option<T> {
    if !TYPED {
        return read(base, offset).ok();
    }
    if base.is_null() {
        return None;
    }
    // SAFETY: `base` is the typed task pointer or a pointer loaded from it, so the
    // verifier checks the offset against BTF; a load through a bad pointer reads 0.
    Some(unsafe { core::ptr::read_volatile(base.wrapping_add(offset as usize).cast::<T>()) })
}

/// Whether `family` is IPv4 or IPv6.
#[inline(always)]
pub fn is_inet_family(family: u16) -> bool {
    family == collector_common::listener::AF_INET || family == collector_common::listener::AF_INET6
}

/// The sock behind a socket's `struct file` (`file->private_data`, a `struct socket`,
/// -> `sk`); `None` for a null file or a file without one.
#[inline(always)]
pub fn file_sock(file: *const u8, o: &KernelOffsets) -> Option<*const u8> {
    if file.is_null() {
        return None;
    }
    let socket = Kptr::new(file, o.btf_file).ptr(o.file_private_data);
    if socket.is_null() {
        return None;
    }
    let sk = Kptr::new(socket, o.btf_socket_alloc).ptr(o.socket_sk);
    (!sk.is_null()).then_some(sk)
}

/// The inode of `sk` if it is a listening socket, else `None`: the first test of
/// every hook that also fires for ordinary sockets.
#[inline(always)]
pub fn listener_inode(sk: *const u8, o: &KernelOffsets) -> Option<u64> {
    let family = listening_family(sk, o)?;
    inet_listener_inode(sk, family, o)
}

/// The family of `sk` if it is a listening socket (TCP or Unix stream/seqpacket:
/// both use `TCP_LISTEN`), else `None`: one read where `skc_state` follows
/// `skc_family` (every kernel sockq knows), else one for everything else and two
/// for listeners.
#[inline(always)]
pub fn listening_family(sk: *const u8, o: &KernelOffsets) -> Option<u16> {
    let listen = collector_common::tcp_state::TCP_LISTEN;
    let s = Kptr::new(sk, o.btf_sock);
    if !s.typed && o.sk_state == o.sk_family + 2 {
        let both: u32 = read(sk, o.sk_family).ok()?;
        return ((both >> 16) as u8 == listen).then_some(both as u16);
    }
    let state: u8 = s.read(o.sk_state).ok()?;
    if state != listen {
        return None;
    }
    s.read(o.sk_family).ok()
}

/// `sk_ack_backlog`, `sk_max_ack_backlog` and `sk_ino` as they lie in 6.18's
/// `struct sock`, one after the other.
#[repr(C)]
#[derive(Clone, Copy)]
struct BacklogAndInode {
    depth: u32,
    limit: u32,
    inode: u64,
}

/// A listener's accept-queue depth (`sk_ack_backlog`), limit (`sk_max_ack_backlog`)
/// and socket inode (0: none): one 16-byte read where the kernel keeps them together
/// (6.18), else three.
#[inline(always)]
pub fn backlog_and_inode(sk: *const u8, o: &KernelOffsets) -> Result<(u32, u32, u64), i64> {
    let s = Kptr::new(sk, o.btf_sock);
    if !s.typed
        && o.sk_ino != 0
        && o.sk_max_ack_backlog == o.sk_ack_backlog + 4
        && o.sk_ino == o.sk_ack_backlog + 8
    {
        let b: BacklogAndInode = read(sk, o.sk_ack_backlog)?;
        return Ok((b.depth, b.limit, b.inode));
    }
    let depth: u32 = s.read(o.sk_ack_backlog)?;
    let limit: u32 = s.read(o.sk_max_ack_backlog)?;
    Ok((depth, limit, sock_inode(sk, o)))
}

/// The inode of listener `sk` of `family` if it is a TCP (inet) one.
#[inline(always)]
pub fn inet_listener_inode(sk: *const u8, family: u16, o: &KernelOffsets) -> Option<u64> {
    // Unix stream listeners are in TCP_LISTEN too, and `sk_data_ready` fires for
    // them: they are counted apart (`unix_connect::on_unix_enqueue`).
    if !is_inet_family(family) {
        return None;
    }
    let inode = sock_inode(sk, o);
    (inode != 0).then_some(inode)
}
