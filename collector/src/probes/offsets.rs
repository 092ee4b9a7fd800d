//! What the programs need to know about this kernel before they load: struct field
//! offsets from BTF, tracepoint record layouts from tracefs, the delayed-ACK timer's
//! address, the ephemeral port range. Handed to the programs as read-only globals.

use std::path::Path;

use collector_common::{layout::KernelOffsets, nagle::NagleOffsets, unix::UnixOffsets};

use super::ProbeError;
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
}

/// Resolves the offsets the programs need on this kernel: struct layout from BTF,
/// tracepoint record layouts from tracefs when it is mounted.
pub fn kernel_info(tracefs_root: Option<&Path>) -> Result<KernelInfo, ProbeError> {
    let layout = Layout::from_running_kernel()?;
    let mut o = layout.kernel_offsets()?;
    let mut unix = UnixOffsets::default();
    if let (Ok(prev), Ok(qlen), Ok(skb_sk)) = (
        layout.offset("sock", "sk_receive_queue.prev"),
        layout.offset("sock", "sk_receive_queue.qlen"),
        layout.offset("sk_buff", "sk"),
    ) {
        unix.sk_receive_queue_prev = prev;
        unix.sk_receive_queue_qlen = qlen;
        unix.skb_sk = skb_sk;
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
    })
}
