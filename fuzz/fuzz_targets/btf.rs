//! Kernel BTF (`/sys/kernel/btf/vmlinux`, read at start-up) through everything
//! sockq resolves from it: the socket and accept-queue offsets, the Nagle /
//! delayed-ACK offsets and the drop-reason names. Malformed BTF must give errors,
//! never a panic or a hang.

#![no_main]

use libfuzzer_sys::fuzz_target;
use sockq::kernel::btf_layout::Layout;

fuzz_target!(|bytes: &[u8]| {
    let Ok(layout) = Layout::from_bytes(bytes) else {
        return;
    };
    let _ = layout.kernel_offsets();
    let _ = layout.nagle_offsets();
    let _ = layout.queue_offsets_error().map(|e| e.to_string());
    let _ = layout.drop_reason_names();
});
