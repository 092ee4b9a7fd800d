//! Unix-domain listeners (`SOCK_STREAM` and `SOCK_SEQPACKET`): the sockets behind
//! php-fpm, gunicorn, uwsgi. Their own type rather than a variant of [`Listener`]:
//! they have a name instead of an address and port, no SYN queue and no `sk_drops`,
//! and what the kernel refuses them is a connect's `EAGAIN`, counted by sockq alone.
//!
//! [`Listener`]: super::Listener

use serde::{Deserialize, Serialize};

use super::{NetnsInode, Owner};

/// How a Unix socket is named (`man 7 unix`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum UnixNameKind {
    /// A filesystem path.
    Path,
    /// The abstract namespace (Linux): a name whose first byte is NUL, per
    /// network namespace.
    Abstract,
    /// Not bound to any name (a listener needs a name to be reached, unless it was
    /// inherited or autobound).
    Unnamed,
}

/// `SOCK_STREAM` or `SOCK_SEQPACKET`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum UnixSocketType {
    Stream,
    Seqpacket,
}

impl UnixSocketType {
    pub fn name(self) -> &'static str {
        match self {
            Self::Stream => "stream",
            Self::Seqpacket => "seqpacket",
        }
    }
}

/// One listening Unix socket as sock_diag (`UNIX_DIAG`) reports it, plus its owners.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct UnixListener {
    pub netns: NetnsInode,
    /// The name as `ss -x` prints it: the path, `@` and the abstract name (NUL bytes
    /// inside it as `@`), or empty when unnamed. Attacker-chosen: escape it wherever
    /// it is printed (the Prometheus and JSON encoders do; terminals use
    /// `text::escape`). Bytes that are not UTF-8 are replaced by U+FFFD.
    pub name: String,
    pub name_kind: UnixNameKind,
    pub socket_type: UnixSocketType,
    /// Socket inode (`socket:[N]` in `/proc/PID/fd`).
    pub inode: u64,
    /// The kernel's socket cookie (`udiag_cookie`).
    pub cookie: u64,
    /// Connections waiting for `accept()` (`UNIX_DIAG_RQLEN`, `ss -xl` Recv-Q).
    pub queue_len: u32,
    /// The backlog limit (`sk_max_ack_backlog`: min(backlog, somaxconn); `ss -xl`
    /// Send-Q). The kernel refuses a connect once the queue holds more than this.
    pub queue_limit: u32,
    pub owners: Vec<Owner>,
    /// The name's raw bytes as a client passes them in `sun_path` (abstract names
    /// with their leading NUL): what the probes' counts are matched on.
    #[serde(skip)]
    pub address: Vec<u8>,
    /// What the connect probes counted for this listener, when they are attached.
    #[serde(default)]
    pub kernel: Option<UnixKernelStats>,
    /// Enqueues and accepts the accept probes counted (`sock:sk_data_ready` on the
    /// listener, the accept syscalls), when they are attached.
    #[serde(default)]
    pub queue: Option<UnixQueueStats>,
    /// A full-queue episode is in progress.
    #[serde(default)]
    pub queue_full: bool,
}

impl UnixListener {
    /// Nothing has happened on this listener that sockq can see: an empty queue, and
    /// the probes counted no connect refused or waited and no enqueue or accept.
    /// The exposition gives a quiet listener only its info and limit series (see
    /// [`super::Listener::is_quiet`]).
    pub fn is_quiet(&self) -> bool {
        self.queue_len == 0
            && !self.queue_full
            && self
                .kernel
                .as_ref()
                .is_none_or(|k| k.refused == 0 && k.waited == 0)
            && self
                .queue
                .as_ref()
                .is_none_or(|q| q.enqueues == 0 && q.max_depth == 0 && q.accepts == 0)
    }
}

/// What the eBPF programs counted for connects aimed at one Unix listener.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct UnixKernelStats {
    /// `connect()` calls that failed with `EAGAIN`: a non-blocking client found the
    /// queue full.
    pub refused: u64,
    /// The clients refused, by process (most refused first), with their counts;
    /// clients that exited are summed under pid 0.
    pub refused_by: Vec<UnixClient>,
    /// Blocking connects that waited 10 ms or more for room in the queue.
    #[serde(default)]
    pub waited: u64,
    /// Their total wait, seconds.
    #[serde(default)]
    pub wait_seconds: f64,
}

/// A Unix listener's queue as the accept probes measured it since sockq started.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct UnixQueueStats {
    /// Connections queued for `accept()` (`sock:sk_data_ready` on the listener).
    pub enqueues: u64,
    /// Deepest queue seen right after an enqueue.
    pub max_depth: u32,
    /// Connections `accept()`/`accept4()` returned from this listener.
    pub accepts: u64,
    /// Seconds from each connection's enqueue to the accept that returned it.
    pub accept_wait: super::Histogram,
    /// Sampled accepted connections read only by the accepting thread, by one other
    /// thread, by several (`sock:sock_recv_length`; the execution pattern).
    #[serde(default)]
    pub read_by_acceptor: u64,
    #[serde(default)]
    pub read_by_one_other: u64,
    #[serde(default)]
    pub read_by_several: u64,
}

/// A client process and how many of its connects were refused.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
pub struct UnixClient {
    pub pid: u32,
    /// The process's name; attacker-controlled.
    pub comm: String,
    pub refused: u64,
}

/// The display form of a Unix socket name from its raw address bytes (`sun_path`
/// without the family; abstract names start with NUL): what `ss -x` prints, with
/// the kind.
pub fn display_name(address: &[u8]) -> (String, UnixNameKind) {
    match address.split_first() {
        None => (String::new(), UnixNameKind::Unnamed),
        Some((0, rest)) => {
            let shown: Vec<u8> = rest
                .iter()
                .map(|&b| if b == 0 { b'@' } else { b })
                .collect();
            (
                format!("@{}", String::from_utf8_lossy(&shown)),
                UnixNameKind::Abstract,
            )
        }
        Some(_) => (
            String::from_utf8_lossy(address).into_owned(),
            UnixNameKind::Path,
        ),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_display_as_ss_prints_them() {
        assert_eq!(
            display_name(b"/run/php/php-fpm.sock"),
            ("/run/php/php-fpm.sock".to_owned(), UnixNameKind::Path)
        );
        assert_eq!(
            display_name(b"\0sockq\0x"),
            ("@sockq@x".to_owned(), UnixNameKind::Abstract)
        );
        assert_eq!(display_name(b""), (String::new(), UnixNameKind::Unnamed));
        let (shown, kind) = display_name(b"/tmp/\xff\"q\\\n");
        assert_eq!(kind, UnixNameKind::Path);
        assert_eq!(shown, "/tmp/\u{fffd}\"q\\\n");
    }
}
