//! Hook: `sock:sock_recv_length` (Linux 6.4+), raw tracepoint, `TP_PROTO(struct sock
//! *sk, int ret, int flags)`: every `recvmsg` on every socket. Most calls leave after
//! one lookup miss in `READERS`, which holds only a sample of accepted connections
//! (`accept.rs`). For those, it notes which threads read the first
//! `READS_TO_CLASSIFY` messages, then classifies the connection for its listener:
//! read by the accepting thread only, by one other thread (whatever the acceptor read
//! first), or by several others; that is the evidence for the backend's execution
//! pattern.

use aya_ebpf::{
    helpers::bpf_get_current_pid_tgid, macros::raw_tracepoint, programs::RawTracePointContext,
};
use collector_common::queue::READS_TO_CLASSIFY;

use crate::{
    kernel::{offsets, sock_inode},
    maps::{LISTENER_QUEUES, READERS, atomic_add},
};

#[raw_tracepoint(tracepoint = "sock_recv_length")]
pub fn sock_recv_length(ctx: RawTracePointContext) -> i32 {
    let sk: *const u8 = ctx.arg(0);
    let ret: i64 = ctx.arg(1);
    if (ret as i32) <= 0 || offsets().queue_valid == 0 {
        return 0;
    }
    let key = sk as u64;
    let Some(track) = READERS.get_ptr_mut(&key) else {
        return 0;
    };
    // SAFETY: a valid map value pointer; one connection is read by one thread at a
    // time in practice, and a lost update only blurs the sample.
    let t = unsafe { &mut *track };
    // A socket at the address of a sampled one that closed unclassified. A sample
    // taken before the child had its inode (at fexit on `inet_csk_accept`, before
    // the accept grafts it onto a socket, on kernels without `sk_ino`) takes the
    // inode of its first read.
    let inode = sock_inode(sk, offsets());
    if t.socket_inode == 0 {
        t.socket_inode = inode;
    } else if inode != t.socket_inode {
        let _ = READERS.remove(&key);
        return 0;
    }
    let tid = bpf_get_current_pid_tgid() as u32;
    // Reads by the acceptor (an acceptor that peeks at a request before passing the
    // descriptor on) do not make a second reader: only threads other than the
    // acceptor count towards "read by several".
    if tid == t.acceptor_tid {
        t.by_acceptor += 1;
    } else if t.first_reader == 0 {
        t.first_reader = tid;
    } else if tid != t.first_reader {
        t.by_others_than_first += 1;
    }
    t.reads += 1;
    if t.reads < READS_TO_CLASSIFY {
        return 0;
    }
    let (reads, by_acceptor, spread, listener) =
        (t.reads, t.by_acceptor, t.by_others_than_first, t.listener);
    let _ = READERS.remove(&key);
    if let Some(q) = LISTENER_QUEUES.get_ptr_mut(&listener) {
        // SAFETY: a valid map value pointer; counters change through atomics only.
        unsafe {
            if by_acceptor == reads {
                atomic_add(&raw mut (*q).read_by_acceptor, 1);
            } else if spread == 0 {
                atomic_add(&raw mut (*q).read_by_one_other, 1);
            } else {
                atomic_add(&raw mut (*q).read_by_several, 1);
            }
        }
    }
    0
}
