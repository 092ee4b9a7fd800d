//! Reading kernel structs through the offsets userspace resolved from BTF.

use aya_ebpf::helpers::bpf_probe_read_kernel;
use collector_common::{layout::KernelOffsets, stats::STAT_READ_ERRORS};

use crate::maps::bump_stat;

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
};

#[inline(always)]
pub fn offsets() -> KernelOffsets {
    // SAFETY: a plain read of a read-only global; volatile so the compiler does not
    // fold the zero initialiser userspace replaces at load time.
    unsafe { core::ptr::read_volatile(&KERNEL_OFFSETS) }
}

/// Reads a `T` at `base + offset` in kernel memory; counts failures.
#[inline(always)]
pub fn read<T>(base: *const u8, offset: u32) -> Result<T, i64> {
    // SAFETY: bpf_probe_read_kernel validates the address; a bad one returns an error.
    match unsafe { bpf_probe_read_kernel(base.wrapping_add(offset as usize).cast::<T>()) } {
        Ok(v) => Ok(v),
        Err(e) => {
            bump_stat(STAT_READ_ERRORS);
            Err(e.into())
        }
    }
}

/// The inode of the socket's network namespace (`sk->__sk_common.skc_net.net->ns.inum`),
/// or 0 when it cannot be read.
#[inline(always)]
pub fn sock_netns(sk: *const u8, o: &KernelOffsets) -> u32 {
    let Ok(net) = read::<*const u8>(sk, o.sk_net) else {
        return 0;
    };
    if net.is_null() {
        return 0;
    }
    read::<u32>(net, o.net_ns_inum).unwrap_or(0)
}

/// `sk->sk_protocol`, or `None` when this kernel's layout does not let us read it.
#[inline(always)]
pub fn sock_protocol(sk: *const u8, o: &KernelOffsets) -> Option<u16> {
    match o.sk_protocol_size {
        2 => read::<u16>(sk, o.sk_protocol).ok(),
        1 => read::<u8>(sk, o.sk_protocol).ok().map(u16::from),
        _ => None,
    }
}
