//! Network namespace cookies (`SO_NETNS_COOKIE`, Linux 5.14+; `net->net_cookie` is
//! set when the namespace is created since 5.12). Unlike inode numbers they are never
//! reused, so per-namespace state keyed by cookie cannot pass from a dead namespace to
//! a new one. Between 5.7 and 5.11 `struct net` has a `net_cookie` that stays 0 until
//! something asks for it: sockq keys by cookie only where this socket option works.

use std::os::fd::{AsFd, AsRawFd as _};

/// `SO_NETNS_COOKIE` (asm-generic/socket.h); not in the libc crate.
const SO_NETNS_COOKIE: libc::c_int = 71;

/// The cookie of the network namespace `socket` belongs to; `None` where the kernel
/// has no `SO_NETNS_COOKIE`.
pub fn of_socket(socket: &impl AsFd) -> Option<u64> {
    let mut cookie: u64 = 0;
    let mut len = std::mem::size_of::<u64>() as libc::socklen_t;
    // SAFETY: getsockopt writes at most `len` bytes into `cookie`, a live u64.
    let rc = unsafe {
        libc::getsockopt(
            socket.as_fd().as_raw_fd(),
            libc::SOL_SOCKET,
            SO_NETNS_COOKIE,
            (&raw mut cookie).cast(),
            &mut len,
        )
    };
    (rc == 0 && len as usize == std::mem::size_of::<u64>()).then_some(cookie)
}

/// Whether this kernel tells a socket's namespace cookie (tried on a socket of our
/// own namespace).
pub fn supported() -> bool {
    std::net::UdpSocket::bind("127.0.0.1:0")
        .ok()
        .and_then(|s| of_socket(&s))
        .is_some()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn our_namespace_has_a_stable_cookie_where_the_kernel_tells_it() {
        let a = std::net::UdpSocket::bind("127.0.0.1:0").expect("socket");
        let b = std::net::UdpSocket::bind("127.0.0.1:0").expect("socket");
        assert_eq!(of_socket(&a), of_socket(&b), "one namespace, one cookie");
        assert_eq!(supported(), of_socket(&a).is_some());
    }
}
