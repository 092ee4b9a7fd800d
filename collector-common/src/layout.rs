//! Kernel struct field offsets, resolved by userspace from the running kernel's BTF
//! (`/sys/kernel/btf/vmlinux`) and handed to the eBPF programs as the read-only global
//! [`KERNEL_OFFSETS_SYMBOL`]. Rust eBPF programs have no CO-RE field relocations; this
//! keeps one object portable across kernels whose `struct sock` differs.

/// Name of the global in the eBPF object that holds [`KernelOffsets`].
pub const KERNEL_OFFSETS_SYMBOL: &str = "KERNEL_OFFSETS";

/// Byte offsets into kernel structs and tracepoint records. A size of 0 means
/// "not available on this kernel": the program skips what depends on it.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct KernelOffsets {
    /// `struct sock` -> `__sk_common.skc_family` (u16).
    pub sk_family: u32,
    /// `struct sock` -> `__sk_common.skc_num` (u16, local port, host byte order).
    pub sk_num: u32,
    /// `struct sock` -> `__sk_common.skc_rcv_saddr` (IPv4 local address, network order).
    pub sk_rcv_saddr: u32,
    /// `struct sock` -> `__sk_common.skc_v6_rcv_saddr` (16 bytes).
    pub sk_v6_rcv_saddr: u32,
    /// `struct sock` -> `__sk_common.skc_net.net` (`struct net *`).
    pub sk_net: u32,
    /// `struct net` -> `ns.inum` (u32): the namespace inode userspace sees.
    pub net_ns_inum: u32,
    /// `struct sock` -> `sk_protocol`.
    pub sk_protocol: u32,
    /// Size in bytes of `sk_protocol` (2 on current kernels, 1 where it is an 8-bit
    /// bitfield on a byte boundary, 0 when it cannot be read: no protocol filter).
    pub sk_protocol_size: u32,
    /// Classic tracepoint `sock/inet_sock_set_state` record: offset of `skaddr`.
    pub tp_state_skaddr: u32,
    /// ... of `oldstate` (int).
    pub tp_state_oldstate: u32,
    /// ... of `newstate` (int).
    pub tp_state_newstate: u32,
    /// Nonzero once userspace has filled this struct; programs do nothing before.
    pub valid: u32,
    /// `struct sock` -> `__sk_common.skc_state` (u8).
    pub sk_state: u32,
    /// `struct sock` -> `sk_ack_backlog` (u32): accept queue length.
    pub sk_ack_backlog: u32,
    /// `struct sock` -> `sk_max_ack_backlog` (u32): accept queue limit.
    pub sk_max_ack_backlog: u32,
    /// `struct sock` -> `sk_socket` (`struct socket *`).
    pub sk_socket: u32,
    /// `struct socket` -> the inode number of the socket (`socket_alloc.vfs_inode.i_ino`
    /// relative to `socket_alloc.socket`; u64).
    pub socket_ino: u32,
    /// `struct socket` -> `sk`.
    pub socket_sk: u32,
    /// `struct sock` (as `inet_connection_sock`) -> `icsk_accept_queue.rskq_accept_tail`.
    pub icsk_accept_tail: u32,
    /// `struct request_sock` -> `sk` (the child socket).
    pub request_sock_sk: u32,
    /// `struct task_struct` -> `files`.
    pub task_files: u32,
    /// `struct files_struct` -> `fdt`.
    pub files_fdt: u32,
    /// `struct fdtable` -> `max_fds` (u32).
    pub fdt_max_fds: u32,
    /// `struct fdtable` -> `fd` (`struct file **`).
    pub fdt_fd: u32,
    /// `struct file` -> `private_data` (a `struct socket *` for sockets).
    pub file_private_data: u32,
    /// Classic tracepoint `syscalls/sys_exit_accept4` record: offset of `ret`.
    pub tp_accept4_ret: u32,
    /// ... `syscalls/sys_exit_accept`: `ret`.
    pub tp_accept_ret: u32,
    /// ... `syscalls/sys_enter_listen`: `fd`.
    pub tp_listen_fd: u32,
    /// ... `syscalls/sys_enter_listen`: `backlog`.
    pub tp_listen_backlog: u32,
    /// Nonzero when every accept-queue offset above (from `sk_state` on) resolved;
    /// the accept-queue programs do nothing otherwise.
    pub queue_valid: u32,
    /// ... `syscalls/sys_enter_accept4`: `fd` (the listener).
    pub tp_accept4_fd: u32,
    /// ... `syscalls/sys_enter_accept`: `fd`.
    pub tp_accept_fd: u32,
    /// `struct net` -> `net_cookie` (u64, never reused, unlike the inode); 0 where the
    /// kernel has none (before 5.14): state is then keyed by the inode.
    pub net_cookie: u32,
    /// `struct sock` -> `sk_ino` (unsigned long: the socket's inode, 0 while no
    /// `struct socket` holds it), on kernels that keep it there (6.18); 0 elsewhere:
    /// the inode is then read through `sk_socket`.
    pub sk_ino: u32,
    /// Nonzero when every io_uring field below resolved and `io_uring_complete` has a
    /// layout the programs know; the io_uring programs do nothing otherwise.
    pub uring_valid: u32,
    /// The `io_uring:io_uring_complete` prototype (`io_uring::COMPLETE_*`).
    pub uring_complete_layout: u32,
    /// `struct io_kiocb` -> `opcode` (u8).
    pub req_opcode: u32,
    /// `struct io_kiocb` -> `flags` (u32 up to 6.9, u64 since; the bits read are in
    /// the low 32, read as u32 on this little-endian target).
    pub req_flags: u32,
    /// The bit of `REQ_F_APOLL_MULTISHOT` in `flags` (`REQ_F_APOLL_MULTISHOT_BIT`).
    pub req_multishot_bit: u32,
    /// `struct io_kiocb` -> `ctx`.
    pub req_ctx: u32,
    /// `struct io_kiocb` -> `cqe.user_data` (u64).
    pub req_user_data: u32,
    /// `struct io_kiocb` -> `file` (the listener of an accept, once assigned).
    pub req_file: u32,
    /// `struct io_kiocb` -> `cmd` as `struct io_accept` -> `file_slot` (u32, nonzero:
    /// accept into a direct descriptor).
    pub req_accept_file_slot: u32,
    /// The ring's fixed-file table, where an accept into a direct descriptor puts its
    /// file (6.13+ layout; all three 0 where BTF shows another, and such accepts are
    /// then counted lost): `struct io_ring_ctx` -> `file_table.data.nodes` (`struct
    /// io_rsrc_node **`)...
    pub ring_fixed_nodes: u32,
    /// ... -> `file_table.data.nr` (u32, the table's size) ...
    pub ring_fixed_nr: u32,
    /// ... and `struct io_rsrc_node` -> `file_ptr` (the `struct file *`, flags in its
    /// two low bits).
    pub rsrc_node_file_ptr: u32,
    /// `struct sock` -> `__sk_common.skc_prot` (`struct proto *`: `tcp_prot` or
    /// `tcpv6_prot` for a TCP socket, unless a ULP or sockmap wrapped it). Read together
    /// with `sk_net` in one 16-byte read where it comes right before it (every kernel
    /// since 2.6.24); 0 when BTF lacks it.
    pub sk_prot: u32,
    /// `struct tcp_sock` -> `rcvq_space.time` (u64, `tcp_clock_us()`): set when the
    /// handshake completes (`tcp_init_buffer_space`, just before the child is queued)
    /// and next only by the reads of an accepted socket, so at accept() it says when
    /// the connection was queued: the accept wait without a stamp of sockq's. 0 where
    /// BTF lacks it (no TCP accept wait).
    pub tcp_rcvq_time: u32,
    /// `struct pt_regs` -> the syscall's first argument as it stays at the exit: `di`
    /// (x86_64), `orig_x0` (arm64); 0 elsewhere. At `sys_exit_accept4` it is the
    /// listener's fd.
    pub pt_regs_arg0: u32,
    /// ... the second (`si`; arm64: `regs[1]`) and third (`dx`; `regs[2]`), 0 where the
    /// first is.
    pub pt_regs_arg1: u32,
    pub pt_regs_arg2: u32,
    /// `struct sock` (as `inet_connection_sock`) -> `icsk_accept_queue.rskq_accept_head`
    /// (the oldest child still queued).
    pub icsk_accept_head: u32,
    /// Classic tracepoint `syscalls/sys_exit_listen` record: offset of `ret`.
    pub tp_listen_ret: u32,
    /// BTF type ids of the structs the programs read, for `bpf_rdonly_cast` (Linux
    /// 6.2+): with one, reads of that struct are plain loads (the verifier checks
    /// them against BTF; the JIT makes a faulting one read 0) instead of
    /// `bpf_probe_read_kernel` calls. 0 where the kernel has no such kfunc, or sockq
    /// was told to use probe reads: the programs read as before.
    /// `struct sock`.
    pub btf_sock: u32,
    /// `struct tcp_sock`.
    pub btf_tcp_sock: u32,
    /// `struct net`.
    pub btf_net: u32,
    /// `struct file`.
    pub btf_file: u32,
    /// `struct socket_alloc` (a `struct socket` and its inode).
    pub btf_socket_alloc: u32,
    /// `struct sk_buff`.
    pub btf_sk_buff: u32,
    /// `struct socket` -> `file` (`struct file *`): a slot of the descriptor array,
    /// seen as this member of a `struct socket` (`btf_socket_alloc`), is loaded as a
    /// typed file pointer. 0: probe reads.
    pub socket_file: u32,
}

const _: () = assert!(core::mem::size_of::<KernelOffsets>() == 240);

/// The immediate of the placeholder call (`call RDONLY_CAST_PLACEHOLDER`, a helper
/// number no kernel has) the programs make where they cast a pointer with
/// `bpf_rdonly_cast`. Userspace rewrites each before loading: into the kfunc call
/// where the kernel has it, else into `r0 = r1`, never reached then (the programs
/// cast only with a nonzero BTF id, `KernelOffsets::btf_*`).
pub const RDONLY_CAST_PLACEHOLDER: i32 = 0x5c0c_ca57;

#[cfg(feature = "user")]
// SAFETY: repr(C), only u32 fields, no padding; any bit pattern is valid.
unsafe impl aya::Pod for KernelOffsets {}
