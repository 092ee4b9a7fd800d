//! Connects to Unix-domain listeners refused because the listener's queue was full
//! (`connect()` returning `EAGAIN` to a non-blocking client), and blocking connects
//! that had to wait for room, counted in the kernel per (client namespace, target
//! name, client process). Userspace attributes each entry to the listener whose name
//! it carries: the kernel keeps no count of these anywhere.

/// Name of the global in the eBPF object that holds [`UnixOffsets`].
pub const UNIX_OFFSETS_SYMBOL: &str = "UNIX_OFFSETS";

/// Bytes of `sun_path` in `struct sockaddr_un`.
pub const SUN_PATH_LEN: usize = 108;
/// `AF_UNIX`.
pub const AF_UNIX: u16 = 1;
/// `-EAGAIN`, what `sys_exit_connect` returns for a full listener queue.
pub const EAGAIN_RET: i64 = -11;
/// A connect that took at least this long without being refused waited for room in
/// the listener's queue (`unix_wait_for_peer`): a connect to a listener with room
/// returns in microseconds. 10 ms, above a few scheduler time slices, so that a
/// client merely preempted on a busy machine is not counted.
pub const BLOCKED_CONNECT_NS: u64 = 10_000_000;

/// Capacity of `UNIX_CONNECTING`: threads inside an `AF_UNIX` connect() at once.
pub const UNIX_CONNECTING_MAX_ENTRIES: u32 = 4096;
/// Capacity of `UNIX_REFUSED`: (client namespace, target name, client process)
/// triples. Userspace removes the entries of exited clients (folding their counts
/// into its own total) and of names no listener has any more.
pub const UNIX_REFUSED_MAX_ENTRIES: u32 = 4096;

/// Record offsets of the connect tracepoints, from tracefs. Zero: not available;
/// `valid` is nonzero once all four are known and the programs may run.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct UnixOffsets {
    /// `syscalls/sys_enter_connect`: `fd`.
    pub tp_connect_fd: u32,
    /// ... `uservaddr` (`struct sockaddr *`, user memory).
    pub tp_connect_addr: u32,
    /// ... `addrlen`.
    pub tp_connect_addrlen: u32,
    /// `syscalls/sys_exit_connect`: `ret`.
    pub tp_connect_ret: u32,
    pub valid: u32,
    /// `struct sock` -> `sk_receive_queue.prev` (the tail `sk_buff`): a Unix
    /// listener queues each connection as an skb whose `sk` is the new socket.
    pub sk_receive_queue_prev: u32,
    /// `struct sock` -> `sk_receive_queue.qlen` (u32): a Unix listener's queue length.
    pub sk_receive_queue_qlen: u32,
    /// `struct sk_buff` -> `sk`.
    pub skb_sk: u32,
    /// Nonzero when the fields around resolved: `sk_data_ready` then counts a Unix
    /// listener's enqueues and stamps its children for the accept programs.
    pub accept_valid: u32,
    /// `struct sock` -> `sk_receive_queue`: the queue's head, which an empty queue's
    /// `prev` and its first skb's `prev` point at.
    pub sk_receive_queue_head: u32,
    /// `struct sk_buff` -> `prev`: the connection queued before.
    pub skb_prev: u32,
}

const _: () = assert!(core::mem::size_of::<UnixOffsets>() == 44);

/// Who connected to which name: the key of `UNIX_REFUSED`.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct UnixConnectKey {
    /// The client socket's namespace key (cookie, else inode): abstract names are
    /// per namespace.
    pub net: u64,
    /// The client's process (tgid); 0 in userspace's total of exited clients.
    pub tgid: u32,
    /// Bytes of `path` the client passed (`addrlen` minus the family, at most 108).
    pub len: u32,
    /// `sun_path` as the client passed it: a path (up to its first NUL) or, starting
    /// with NUL, an abstract name of exactly `len` bytes. Bytes past `len` are zero.
    pub path: [u8; SUN_PATH_LEN],
    pub _pad: [u8; 4],
}

const _: () = assert!(core::mem::size_of::<UnixConnectKey>() == 128);

impl UnixConnectKey {
    pub const ZERO: Self = Self {
        net: 0,
        tgid: 0,
        len: 0,
        path: [0; SUN_PATH_LEN],
        _pad: [0; 4],
    };

    /// The name's bytes as the kernel resolves them: an abstract name whole, a path
    /// up to its first NUL.
    pub fn name(&self) -> &[u8] {
        let len = (self.len as usize).min(SUN_PATH_LEN);
        let raw = self.path.get(..len).unwrap_or(&[]);
        match raw.first() {
            Some(0) => raw,
            _ => {
                let end = raw.iter().position(|&b| b == 0).unwrap_or(raw.len());
                raw.get(..end).unwrap_or(raw)
            }
        }
    }
}

/// A thread inside an `AF_UNIX` connect(): `UNIX_CONNECTING`'s value, by tid. Only
/// what the exit needs to find the name and the socket again: almost every connect
/// is neither refused nor slow, and its name is never read.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct UnixConnecting {
    /// The client's `sockaddr_un` (user memory, still the caller's at the exit).
    pub addr: u64,
    /// `bpf_ktime_get_ns` at `sys_enter_connect`.
    pub started_ns: u64,
    /// The client socket's descriptor.
    pub fd: u32,
    /// Bytes of name after the family (`addrlen` minus 2, at most 108).
    pub len: u32,
}

const _: () = assert!(core::mem::size_of::<UnixConnecting>() == 24);

/// What happened to one client's connects to one name.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct UnixConnectStats {
    /// connect() returned `-EAGAIN`: the listener's queue was full.
    pub refused: u64,
    /// Blocking connects that took [`BLOCKED_CONNECT_NS`] or more and were not
    /// refused: they waited for room in the queue.
    pub waited: u64,
    /// Sum of those waits, nanoseconds.
    pub wait_ns: u64,
    /// The client thread's name at its first counted connect.
    pub comm: [u8; 16],
}

const _: () = assert!(core::mem::size_of::<UnixConnectStats>() == 40);

impl UnixConnectStats {
    pub const ZERO: Self = Self {
        refused: 0,
        waited: 0,
        wait_ns: 0,
        comm: [0; 16],
    };
}

#[cfg(feature = "user")]
mod pod {
    // SAFETY: repr(C), integer fields and byte arrays only, padding written out;
    // any bit pattern is valid.
    unsafe impl aya::Pod for super::UnixOffsets {}
    // SAFETY: as above.
    unsafe impl aya::Pod for super::UnixConnectKey {}
    // SAFETY: as above.
    unsafe impl aya::Pod for super::UnixConnectStats {}
}

#[cfg(test)]
mod tests {
    use super::*;

    fn key(raw: &[u8], len: u32) -> UnixConnectKey {
        let mut k = UnixConnectKey::ZERO;
        k.path[..raw.len()].copy_from_slice(raw);
        k.len = len;
        k
    }

    #[test]
    fn names_resolve_as_the_kernel_does() {
        // sizeof(sockaddr_un) - 2 with a NUL-terminated path: the path.
        assert_eq!(key(b"/run/php.sock\0junk", 108).name(), b"/run/php.sock");
        // A path without its NUL, addrlen exact.
        assert_eq!(key(b"/run/a", 6).name(), b"/run/a");
        // Abstract: exactly len bytes, NULs included.
        assert_eq!(key(b"\0ab\0c", 5).name(), b"\0ab\0c");
        assert_eq!(key(b"\0ab", 3).name(), b"\0ab");
        assert_eq!(key(b"", 0).name(), b"");
        assert_eq!(key(b"/x", 500).name(), b"/x");
    }
}
