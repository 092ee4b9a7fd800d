//! What the programs need to know about this kernel before they load: struct field
//! offsets from BTF, tracepoint record layouts from tracefs, the delayed-ACK timer's
//! address, the ephemeral port range. Handed to the programs as read-only globals.

use std::path::Path;

use collector_common::{layout::KernelOffsets, nagle::NagleOffsets, unix::UnixOffsets};

use super::{ProbeError, rdonly_cast::CastCall};
use crate::kernel::{btf_layout::Layout, kallsyms, netns_cookie, sysctl, tracefs};

/// What the programs and their readers need to know about this kernel, from one
/// parse of its BTF.
pub struct KernelInfo {
    pub offsets: KernelOffsets,
    /// `enum skb_drop_reason` value -> name.
    pub drop_reasons: std::collections::HashMap<u32, String>,
    /// The Nagle family's offsets, or why it cannot run here.
    pub nagle: Result<NagleOffsets, String>,
    /// How many arguments each kernel function an fexit hook names takes, where BTF
    /// has it (the hook's program must match: [`super::table::Hook::FExit`]).
    pub function_args: std::collections::HashMap<&'static str, usize>,
    /// The connect tracepoints' record layout (all zero without tracefs).
    pub unix: UnixOffsets,
    /// How the programs read kernel structs here.
    pub struct_reads: StructReads,
}

/// How the programs read kernel structs on this kernel, and why.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum StructReads {
    /// Plain loads through `bpf_rdonly_cast`, the kfunc of this BTF id.
    Typed { kfunc: u32 },
    /// Probe reads: [`PROBE_READS_ENV`] asks for them.
    ProbeReadsAsked,
    /// Probe reads: the kernel has no `bpf_rdonly_cast` (before 6.2).
    ProbeReadsNoKfunc,
}

impl StructReads {
    /// What the programs' `bpf_rdonly_cast` calls become (`rdonly_cast`).
    pub fn cast_call(self) -> CastCall {
        match self {
            Self::Typed { kfunc } => CastCall::Kfunc(kfunc),
            Self::ProbeReadsAsked | Self::ProbeReadsNoKfunc => CastCall::Identity,
        }
    }
}

/// Set (to anything) in the environment, the programs read kernel structs with probe
/// reads even where the kernel has `bpf_rdonly_cast`: the way to compare the two, and
/// a way out should a kernel's verifier refuse the typed loads.
pub const PROBE_READS_ENV: &str = "SOCKQ_PROBE_READS";

/// Where the kernel has `bpf_rdonly_cast` (Linux 6.2+), the BTF ids of the structs the
/// programs read (`KernelOffsets::btf_*`: their reads become plain loads) and the
/// kfunc; else probe reads, and the ids left 0.
fn typed_reads(layout: &Layout, o: &mut KernelOffsets) -> StructReads {
    if std::env::var_os(PROBE_READS_ENV).is_some() {
        tracing::info!("{PROBE_READS_ENV} is set: kernel structs are read with probe reads");
        return StructReads::ProbeReadsAsked;
    }
    let Some(kfunc) = layout.function_id("bpf_rdonly_cast") else {
        tracing::debug!(
            "no bpf_rdonly_cast (Linux 6.2+): kernel structs are read with probe reads"
        );
        return StructReads::ProbeReadsNoKfunc;
    };
    let id = |name: &str| layout.struct_id(name).unwrap_or(0);
    o.btf_sock = id("sock");
    o.btf_tcp_sock = id("tcp_sock");
    o.btf_net = id("net");
    o.btf_file = id("file");
    // The programs read a socket through `struct socket_alloc` at the offsets of its
    // `struct socket`: only where that comes first, as in every kernel so far.
    if layout
        .offset("socket_alloc", "socket")
        .is_ok_and(|at| at == 0)
    {
        o.btf_socket_alloc = id("socket_alloc");
        o.socket_file = layout.offset("socket", "file").unwrap_or(0);
    }
    o.btf_sk_buff = id("sk_buff");
    StructReads::Typed { kfunc }
}

/// Resolves the offsets the programs need on this kernel: struct layout from BTF,
/// tracepoint record layouts from tracefs when it is mounted.
pub fn kernel_info(tracefs_root: Option<&Path>) -> Result<KernelInfo, ProbeError> {
    let layout = Layout::from_running_kernel()?;
    let mut o = layout.kernel_offsets()?;
    let struct_reads = typed_reads(&layout, &mut o);
    let mut unix = UnixOffsets::default();
    if let (Ok(head), Ok(prev), Ok(qlen), Ok(skb_sk), Ok(skb_prev)) = (
        layout.offset("sock", "sk_receive_queue"),
        layout.offset("sock", "sk_receive_queue.prev"),
        layout.offset("sock", "sk_receive_queue.qlen"),
        layout.offset("sk_buff", "sk"),
        layout.offset("sk_buff", "prev"),
    ) {
        unix.sk_receive_queue_head = head;
        unix.sk_receive_queue_prev = prev;
        unix.sk_receive_queue_qlen = qlen;
        unix.skb_sk = skb_sk;
        unix.skb_prev = skb_prev;
        unix.accept_valid = 1;
    }
    // Between 5.7 and 5.11 `net_cookie` exists but stays 0 until asked for, and the
    // inventory cannot learn it: key by inode there.
    if o.net_cookie != 0 && !netns_cookie::supported() {
        o.net_cookie = 0;
    }
    if let Some(root) = tracefs_root {
        let field = |category: &str, name: &str, field: &str| -> u32 {
            match tracefs::field_offsets(root, category, name) {
                Ok(fields) => fields.get(field).copied().unwrap_or(0),
                Err(e) => {
                    tracing::debug!("no classic tracepoint layout for {category}:{name}: {e}");
                    0
                }
            }
        };
        o.tp_state_skaddr = field("sock", "inet_sock_set_state", "skaddr");
        o.tp_state_oldstate = field("sock", "inet_sock_set_state", "oldstate");
        o.tp_state_newstate = field("sock", "inet_sock_set_state", "newstate");
        o.tp_accept4_ret = field("syscalls", "sys_exit_accept4", "ret");
        o.tp_accept_ret = field("syscalls", "sys_exit_accept", "ret");
        o.tp_accept4_fd = field("syscalls", "sys_enter_accept4", "fd");
        o.tp_accept_fd = field("syscalls", "sys_enter_accept", "fd");
        o.tp_listen_fd = field("syscalls", "sys_enter_listen", "fd");
        o.tp_listen_backlog = field("syscalls", "sys_enter_listen", "backlog");
        o.tp_listen_ret = field("syscalls", "sys_exit_listen", "ret");
        unix.tp_connect_fd = field("syscalls", "sys_enter_connect", "fd");
        unix.tp_connect_addr = field("syscalls", "sys_enter_connect", "uservaddr");
        unix.tp_connect_addrlen = field("syscalls", "sys_enter_connect", "addrlen");
        unix.tp_connect_ret = field("syscalls", "sys_exit_connect", "ret");
        unix.valid = u32::from(
            unix.tp_connect_fd != 0
                && unix.tp_connect_addr != 0
                && unix.tp_connect_addrlen != 0
                && unix.tp_connect_ret != 0,
        );
    }
    let nagle = layout
        .nagle_offsets()
        .map_err(|e| crate::error_chain(&e))
        .and_then(|mut n| {
            n.delack_timer_fn = kallsyms::lookup("tcp_delack_timer")?;
            (n.ephemeral_lo, n.ephemeral_hi) = sysctl::ephemeral_ports();
            Ok(n)
        });
    let function_args = super::table::fexit_functions()
        .filter_map(|f| Some((f, layout.function_args(f)?)))
        .collect();
    Ok(KernelInfo {
        offsets: o,
        drop_reasons: layout.drop_reason_names(),
        nagle,
        function_args,
        unix,
        struct_reads,
    })
}
