//! TCP listeners and SYN queues from the kernel's socket diagnostics (Unix-domain
//! listeners: [`super::unix_diag`], over the same socket).
//!
//! Kernel interface: `NETLINK_SOCK_DIAG` with `SOCK_DIAG_BY_FAMILY` dump requests
//! (`struct inet_diag_req_v2`, `net/ipv4/inet_diag.c`, `tcp_diag.c`), for
//! `AF_INET` and `AF_INET6`:
//! - listeners (`TCPF_LISTEN`): `idiag_rqueue` is the accept queue length
//!   (`sk_ack_backlog`), `idiag_wqueue` its limit (`sk_max_ack_backlog`), and the
//!   `INET_DIAG_SKMEMINFO` attribute (`u32 sk_meminfo[]`) carries `sk_drops` at
//!   index `SK_MEMINFO_DROPS` (8);
//! - request sockets, i.e. the SYN queue (`TCPF_SYN_RECV`; the kernel widens it to
//!   `TCPF_NEW_SYN_RECV`): reported with state `SYN_RECV` and inode 0, one per
//!   handshake in progress. A request socket of an IPv4 connection to a dual-stack
//!   `::` listener comes in the `AF_INET6` dump with an IPv4-mapped address.
//!
//! A dump is answered by multipart datagrams ended by `NLMSG_DONE`; a rejected
//! request by `NLMSG_ERROR`. The socket is bound to the namespace it was created in
//! (see [`super::netns`]).

use std::{
    net::{IpAddr, Ipv4Addr, Ipv6Addr},
    os::fd::AsFd,
};

use netlink_packet_core::{
    NLM_F_DUMP, NLM_F_REQUEST, NetlinkHeader, NetlinkMessage, NetlinkPayload,
};
use netlink_packet_sock_diag::{
    AF_INET, AF_INET6, IPPROTO_TCP, SockDiagMessage,
    inet::{ExtensionFlags, InetRequest, InetResponse, SocketId, StateFlags, nlas::Nla},
};
use netlink_sys::{Socket, SocketAddr, protocols::NETLINK_SOCK_DIAG};

use super::InventoryError;

/// Receive buffer: larger than the biggest datagram a dump sends (the kernel caps
/// dump skbs at 32 KiB).
const RECV_BUFFER_LEN: usize = 64 * 1024;
/// A dump that makes no progress for this long is abandoned.
const RECV_TIMEOUT_SECS: i64 = 5;
/// `TCP_NEW_SYN_RECV` (include/net/tcp_states.h): the state of request sockets in
/// the established hash. The kernel adds it itself to a `TCPF_SYN_RECV` request;
/// asking for it too costs nothing.
const TCP_NEW_SYN_RECV: u32 = 12;

/// A listening socket as one sock_diag answer describes it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DiagListener {
    /// Local address as the kernel reports it (`Ipv6Addr` for `AF_INET6` sockets,
    /// including IPv4-mapped ones).
    pub addr: IpAddr,
    pub port: u16,
    pub inode: u64,
    pub cookie: u64,
    pub accept_queue_len: u32,
    pub accept_queue_limit: u32,
    /// `sk_drops`; 0 if the kernel sent no `INET_DIAG_SKMEMINFO`.
    pub drops: u64,
    /// `IPV6_V6ONLY` (`INET_DIAG_SKV6ONLY`); false for IPv4 sockets.
    pub v6only: bool,
}

/// A request socket (a handshake in progress, one SYN queue entry).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DiagRequest {
    /// The local address the client connected to.
    pub addr: IpAddr,
    pub port: u16,
    pub cookie: u64,
}

/// A `NETLINK_SOCK_DIAG` socket, in the namespace of the thread that opened it.
#[derive(Debug)]
pub struct DiagSocket {
    socket: Socket,
    sequence: u32,
    buffer: Vec<u8>,
}

impl DiagSocket {
    /// Opens a sock_diag socket in the calling thread's network namespace.
    pub fn open() -> Result<Self, InventoryError> {
        let netlink = |what| move |source| InventoryError::Netlink { what, source };
        let mut socket =
            Socket::new(NETLINK_SOCK_DIAG).map_err(netlink("socket(NETLINK_SOCK_DIAG)"))?;
        socket.bind_auto().map_err(netlink("bind"))?;
        socket
            .connect(&SocketAddr::new(0, 0))
            .map_err(netlink("connect"))?;
        set_recv_timeout(&socket).map_err(netlink("setsockopt(SO_RCVTIMEO)"))?;
        Ok(Self {
            socket,
            sequence: 0,
            buffer: Vec::with_capacity(RECV_BUFFER_LEN),
        })
    }

    /// The cookie of the socket's network namespace (`SO_NETNS_COOKIE`, Linux 5.14+):
    /// the key the probes count that namespace's state under. `None` on older
    /// kernels, where the inode is the key.
    pub fn netns_cookie(&self) -> Option<u64> {
        crate::kernel::netns_cookie::of_socket(&self.socket)
    }

    /// Every TCP listener (IPv4 then IPv6) with accept queue and drops.
    pub fn listeners(&mut self) -> Result<Vec<DiagListener>, InventoryError> {
        let mut listeners = Vec::new();
        for (family, request) in [
            (AF_INET, "IPv4 TCP listeners"),
            (AF_INET6, "IPv6 TCP listeners"),
        ] {
            self.dump(
                family,
                StateFlags::LISTEN,
                ExtensionFlags::SKMEMINFO,
                request,
                |response| {
                    listeners.push(listener_from_response(response));
                },
            )?;
        }
        Ok(listeners)
    }

    /// Every TCP request socket (IPv4 then IPv6): the SYN queues' contents.
    pub fn requests(&mut self) -> Result<Vec<DiagRequest>, InventoryError> {
        let states = StateFlags::SYN_RECV | StateFlags::from_bits_retain(1 << TCP_NEW_SYN_RECV);
        let mut requests = Vec::new();
        for (family, request) in [
            (AF_INET, "IPv4 TCP request sockets"),
            (AF_INET6, "IPv6 TCP request sockets"),
        ] {
            self.dump(
                family,
                states.clone(),
                ExtensionFlags::empty(),
                request,
                |response| {
                    // Full sockets in SYN_RECV (TCP Fast Open children) have an inode
                    // once accepted; request sockets never do.
                    if response.header.inode == 0 {
                        requests.push(DiagRequest {
                            addr: response.header.socket_id.source_address,
                            port: response.header.socket_id.source_port,
                            cookie: cookie(&response.header.socket_id),
                        });
                    }
                },
            )?;
        }
        Ok(requests)
    }

    /// Every established TCP connection (IPv4 then IPv6): local address, remote
    /// address and socket inode. For naming the local peer of a connection.
    pub fn connections(
        &mut self,
    ) -> Result<Vec<(std::net::SocketAddr, std::net::SocketAddr, u64)>, InventoryError> {
        let mut out = Vec::new();
        for (family, request) in [
            (AF_INET, "IPv4 TCP connections"),
            (AF_INET6, "IPv6 TCP connections"),
        ] {
            self.dump(
                family,
                StateFlags::ESTABLISHED,
                ExtensionFlags::empty(),
                request,
                |response| {
                    let id = &response.header.socket_id;
                    out.push((
                        std::net::SocketAddr::new(id.source_address, id.source_port),
                        std::net::SocketAddr::new(id.destination_address, id.destination_port),
                        u64::from(response.header.inode),
                    ));
                },
            )?;
        }
        Ok(out)
    }

    /// Sends one inet dump request and feeds each answer to `each` until
    /// `NLMSG_DONE`.
    fn dump(
        &mut self,
        family: u8,
        states: StateFlags,
        extensions: ExtensionFlags,
        request: &'static str,
        mut each: impl FnMut(&InetResponse),
    ) -> Result<(), InventoryError> {
        let socket_id = if family == AF_INET {
            SocketId::new_v4()
        } else {
            SocketId::new_v6()
        };
        let message = SockDiagMessage::InetRequest(InetRequest {
            family,
            protocol: IPPROTO_TCP,
            extensions,
            states,
            socket_id,
        });
        self.dump_message(message, request, |answer| {
            if let SockDiagMessage::InetResponse(response) = answer {
                each(response);
            }
        })
    }

    /// Sends one dump request of any family and feeds each answer to `each` until
    /// `NLMSG_DONE`.
    pub(super) fn dump_message(
        &mut self,
        message: SockDiagMessage,
        request: &'static str,
        mut each: impl FnMut(&SockDiagMessage),
    ) -> Result<(), InventoryError> {
        self.sequence = self.sequence.wrapping_add(1);
        let sequence = self.sequence;
        let mut header = NetlinkHeader::default();
        header.flags = NLM_F_REQUEST | NLM_F_DUMP;
        header.sequence_number = sequence;
        let mut packet = NetlinkMessage::new(header, message.into());
        packet.finalize();
        let mut out = vec![0; packet.buffer_len()];
        packet.serialize(&mut out);
        self.socket
            .send(&out, 0)
            .map_err(|source| InventoryError::Netlink {
                what: "send",
                source,
            })?;

        loop {
            self.buffer.clear();
            let received = self.socket.recv(&mut self.buffer, 0).map_err(|source| {
                InventoryError::Netlink {
                    what: "recv",
                    source,
                }
            })?;
            let datagram = self.buffer.get(..received).unwrap_or(&self.buffer);
            if datagram.is_empty() {
                return Err(InventoryError::Netlink {
                    what: "recv",
                    source: std::io::Error::from(std::io::ErrorKind::UnexpectedEof),
                });
            }
            if decode_messages(datagram, sequence, request, &mut each)? == Dump::Done {
                return Ok(());
            }
        }
    }
}

/// Where a dump stands after one datagram of its answer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Dump {
    /// More datagrams follow.
    More,
    /// `NLMSG_DONE` arrived: the dump is complete.
    Done,
}

/// Decodes one datagram of the answer to dump request number `sequence` (named
/// `request` in errors), feeding each `inet_diag_msg` to `each`. Messages of other
/// requests are skipped. Pure, so that it can be fuzzed (`fuzz/`): any bytes give
/// `Ok` or `Err`, never a panic.
pub fn decode_datagram(
    datagram: &[u8],
    sequence: u32,
    request: &'static str,
    each: &mut impl FnMut(&InetResponse),
) -> Result<Dump, InventoryError> {
    decode_messages(datagram, sequence, request, &mut |answer| {
        if let SockDiagMessage::InetResponse(response) = answer {
            each(response);
        }
    })
}

/// [`decode_datagram`] for answers of any family: each sock_diag message of request
/// `sequence` goes to `each`.
pub fn decode_messages(
    datagram: &[u8],
    sequence: u32,
    request: &'static str,
    each: &mut impl FnMut(&SockDiagMessage),
) -> Result<Dump, InventoryError> {
    let mut offset = 0;
    while offset < datagram.len() {
        let rest = datagram.get(offset..).unwrap_or_default();
        let message = NetlinkMessage::<SockDiagMessage>::deserialize(rest)
            .map_err(|source| InventoryError::Decode { request, source })?;
        let length = message.header.length as usize;
        if message.header.sequence_number == sequence {
            match message.payload {
                NetlinkPayload::Done(_) => return Ok(Dump::Done),
                // A code-less NLMSG_ERROR is an ACK, which a dump does not ask for;
                // skip it if it comes anyway.
                NetlinkPayload::Error(error) if error.code.is_some() => {
                    // Not `error.to_io()`: its `abs()` overflows on `i32::MIN`.
                    return Err(InventoryError::DumpRejected {
                        request,
                        source: std::io::Error::from_raw_os_error(
                            error.raw_code().saturating_abs(),
                        ),
                    });
                }
                NetlinkPayload::InnerMessage(answer) => each(&answer),
                _ => {}
            }
        }
        if length == 0 {
            break;
        }
        // Messages are 4-byte aligned inside a datagram.
        offset = offset.saturating_add(length.saturating_add(3) & !3);
    }
    Ok(Dump::More)
}

fn set_recv_timeout(socket: &impl AsFd) -> std::io::Result<()> {
    use nix::sys::{socket::sockopt::ReceiveTimeout, time::TimeVal};
    nix::sys::socket::setsockopt(socket, ReceiveTimeout, &TimeVal::new(RECV_TIMEOUT_SECS, 0))
        .map_err(std::io::Error::from)
}

/// `idiag_cookie` is two host-endian `u32`s, low half first (as `ss` prints it).
fn cookie(id: &SocketId) -> u64 {
    let [a, b, c, d, e, f, g, h] = id.cookie;
    let low = u32::from_ne_bytes([a, b, c, d]);
    let high = u32::from_ne_bytes([e, f, g, h]);
    (u64::from(high) << 32) | u64::from(low)
}

/// The listener an `inet_diag_msg` of a `TCPF_LISTEN` dump describes.
pub fn listener_from_response(response: &InetResponse) -> DiagListener {
    let header = &response.header;
    let mut drops = 0;
    let mut v6only = false;
    for nla in &response.nlas {
        match nla {
            // MemInfo is the sk_meminfo array; its `drops` is SK_MEMINFO_DROPS.
            Nla::MemInfo(meminfo) => drops = u64::from(meminfo.drops),
            Nla::SkV6Only(value) => v6only = *value,
            _ => {}
        }
    }
    DiagListener {
        addr: header.socket_id.source_address,
        port: header.socket_id.source_port,
        inode: u64::from(header.inode),
        cookie: cookie(&header.socket_id),
        accept_queue_len: header.recv_queue,
        accept_queue_limit: header.send_queue,
        drops,
        v6only,
    }
}

/// The listener (index into `listeners`, all of one namespace) that owns a request
/// socket for local `addr:port`, the way the kernel's lookup would choose, best
/// match first:
/// 1. a listener on the same port bound to exactly that address;
/// 2. the same address written the other way (IPv4 vs IPv4-mapped IPv6);
/// 3. a wildcard listener of the request's own family (`0.0.0.0` for IPv4, `::`
///    for IPv6; for an IPv4-mapped request the `::` listener must accept IPv4,
///    i.e. not be `IPV6_V6ONLY`);
/// 4. for IPv4 requests, a `::` listener that is not `IPV6_V6ONLY`;
/// 5. for IPv4-mapped requests, a `0.0.0.0` listener.
///
/// Limitation: with several candidates at the best level (an `SO_REUSEPORT`
/// group, or listeners bound to different devices with `SO_BINDTODEVICE`) the
/// request is attributed to the candidate with the lowest inode: sock_diag does not
/// say which member of the group the kernel picked.
pub fn attribute_request(listeners: &[DiagListener], addr: IpAddr, port: u16) -> Option<usize> {
    let mapped_v4 = match addr {
        IpAddr::V6(v6) => v6.to_ipv4_mapped(),
        IpAddr::V4(_) => None,
    };
    let is_v4 = matches!(addr, IpAddr::V4(_)) || mapped_v4.is_some();
    let accepts_v4 = |l: &DiagListener| !l.v6only;
    let same_in_other_notation = |l: &DiagListener| match (addr, l.addr) {
        (IpAddr::V4(v4), IpAddr::V6(lv6)) => lv6 == v4.to_ipv6_mapped(),
        (IpAddr::V6(_), IpAddr::V4(lv4)) => mapped_v4 == Some(lv4),
        _ => false,
    };
    let tiers: [&dyn Fn(&DiagListener) -> bool; 5] = [
        &|l| l.addr == addr,
        &|l| same_in_other_notation(l),
        &|l| match (addr, l.addr) {
            (IpAddr::V4(_), IpAddr::V4(lv4)) => lv4 == Ipv4Addr::UNSPECIFIED,
            (IpAddr::V6(_), IpAddr::V6(lv6)) => {
                lv6 == Ipv6Addr::UNSPECIFIED && (mapped_v4.is_none() || accepts_v4(l))
            }
            _ => false,
        },
        &|l| is_v4 && l.addr == IpAddr::V6(Ipv6Addr::UNSPECIFIED) && accepts_v4(l),
        &|l| mapped_v4.is_some() && l.addr == IpAddr::V4(Ipv4Addr::UNSPECIFIED),
    ];
    tiers.iter().find_map(|matches| {
        listeners
            .iter()
            .enumerate()
            .filter(|(_, l)| l.port == port && matches(l))
            .min_by_key(|(_, l)| l.inode)
            .map(|(index, _)| index)
    })
}

/// SYN queue length of each listener (same order as `listeners`), from the request
/// sockets of the same namespace. Requests no listener claims (the listener closed
/// meanwhile) are not counted.
pub fn count_syn_queues(listeners: &[DiagListener], requests: &[DiagRequest]) -> Vec<u32> {
    let mut counts = vec![0u32; listeners.len()];
    for request in requests {
        if let Some(count) = attribute_request(listeners, request.addr, request.port)
            .and_then(|index| counts.get_mut(index))
        {
            *count = count.saturating_add(1);
        }
    }
    counts
}

#[cfg(test)]
mod tests {
    use super::*;

    fn listener(addr: &str, port: u16, inode: u64, v6only: bool) -> DiagListener {
        DiagListener {
            addr: addr.parse().expect("address"),
            port,
            inode,
            cookie: inode * 10,
            accept_queue_len: 0,
            accept_queue_limit: 128,
            drops: 0,
            v6only,
        }
    }

    fn attribute(listeners: &[DiagListener], addr: &str, port: u16) -> Option<u64> {
        attribute_request(listeners, addr.parse().expect("address"), port)
            .map(|i| listeners[i].inode)
    }

    #[test]
    fn exact_address_beats_wildcard() {
        let ls = [
            listener("0.0.0.0", 80, 1, false),
            listener("10.0.0.1", 80, 2, false),
        ];
        assert_eq!(attribute(&ls, "10.0.0.1", 80), Some(2));
        assert_eq!(attribute(&ls, "10.0.0.2", 80), Some(1));
        assert_eq!(attribute(&ls, "10.0.0.1", 81), None);
    }

    #[test]
    fn family_wildcards() {
        let ls = [
            listener("::", 443, 7, false),
            listener("0.0.0.0", 443, 9, false),
        ];
        // Exact family first, even though `::` also takes IPv4.
        assert_eq!(attribute(&ls, "192.0.2.1", 443), Some(9));
        assert_eq!(attribute(&ls, "2001:db8::1", 443), Some(7));
        // The kernel reports IPv4 requests to a dual-stack listener IPv4-mapped.
        assert_eq!(attribute(&ls, "::ffff:192.0.2.1", 443), Some(7));
    }

    #[test]
    fn dual_stack_listener_takes_ipv4_unless_v6only() {
        let dual = [listener("::", 22, 3, false)];
        assert_eq!(attribute(&dual, "127.0.0.1", 22), Some(3));
        assert_eq!(attribute(&dual, "::ffff:127.0.0.1", 22), Some(3));
        let v6only = [listener("::", 22, 3, true)];
        assert_eq!(attribute(&v6only, "127.0.0.1", 22), None);
        assert_eq!(attribute(&v6only, "::ffff:127.0.0.1", 22), None);
        assert_eq!(attribute(&v6only, "::1", 22), Some(3));
        let both = [
            listener("::", 22, 3, true),
            listener("0.0.0.0", 22, 4, false),
        ];
        assert_eq!(attribute(&both, "::ffff:127.0.0.1", 22), Some(4));
    }

    #[test]
    fn mapped_and_plain_ipv4_are_the_same_address() {
        let ls = [
            listener("::ffff:10.1.1.1", 8080, 5, false),
            listener("0.0.0.0", 8080, 6, false),
        ];
        assert_eq!(attribute(&ls, "10.1.1.1", 8080), Some(5));
        let ls = [
            listener("10.1.1.1", 8080, 5, false),
            listener("::", 8080, 6, false),
        ];
        assert_eq!(attribute(&ls, "::ffff:10.1.1.1", 8080), Some(5));
    }

    #[test]
    fn reuseport_group_goes_to_lowest_inode() {
        let ls = [
            listener("0.0.0.0", 80, 30, false),
            listener("0.0.0.0", 80, 10, false),
            listener("0.0.0.0", 80, 20, false),
        ];
        assert_eq!(attribute(&ls, "10.0.0.1", 80), Some(10));
    }

    #[test]
    fn counts_per_listener() {
        let ls = [
            listener("0.0.0.0", 80, 1, false),
            listener("127.0.0.1", 80, 2, false),
            listener("::", 80, 3, true),
        ];
        let req = |addr: &str, port| DiagRequest {
            addr: addr.parse().expect("address"),
            port,
            cookie: 0,
        };
        let requests = [
            req("127.0.0.1", 80),
            req("127.0.0.1", 80),
            req("10.0.0.1", 80),
            req("::1", 80),
            req("::1", 81),
        ];
        assert_eq!(count_syn_queues(&ls, &requests), vec![1, 2, 1]);
        assert_eq!(count_syn_queues(&[], &requests), Vec::<u32>::new());
    }

    #[test]
    fn cookie_is_low_half_first() {
        let mut id = SocketId::new_v4();
        let low = 0x1122_3344u32.to_ne_bytes();
        let high = 0x5566_7788u32.to_ne_bytes();
        id.cookie[..4].copy_from_slice(&low);
        id.cookie[4..].copy_from_slice(&high);
        assert_eq!(cookie(&id), 0x5566_7788_1122_3344);
    }

    /// A netlink message of `kind` answering request `seq`, padded to 4 bytes.
    fn nlmsg(kind: u16, seq: u32, payload: &[u8]) -> Vec<u8> {
        let len = u32::try_from(16 + payload.len()).expect("length");
        let mut out = Vec::new();
        out.extend(len.to_ne_bytes());
        out.extend(kind.to_ne_bytes());
        out.extend(2u16.to_ne_bytes()); // NLM_F_MULTI
        out.extend(seq.to_ne_bytes());
        out.extend(0u32.to_ne_bytes());
        out.extend(payload);
        out.resize(out.len().next_multiple_of(4), 0);
        out
    }

    /// `struct inet_diag_msg` of an IPv4 listener on 127.0.0.1:`port`, then a
    /// `INET_DIAG_SKMEMINFO` attribute with `drops`.
    fn listener_msg(port: u16, inode: u32, drops: u32) -> Vec<u8> {
        let mut out = vec![AF_INET, 10, 0, 0];
        out.extend(port.to_be_bytes());
        out.extend([0; 2]);
        out.extend([127, 0, 0, 1]);
        out.extend([0; 12 + 16 + 4]); // rest of src, dst, if
        out.extend([1, 0, 0, 0, 0, 0, 0, 0]); // cookie
        for word in [0u32, 5, 128, 0, inode] {
            out.extend(word.to_ne_bytes()); // expires, rqueue, wqueue, uid, inode
        }
        out.extend(40u16.to_ne_bytes()); // rtattr: 4 + 9 * 4 bytes
        out.extend(7u16.to_ne_bytes()); // INET_DIAG_SKMEMINFO
        for i in 0..9u32 {
            out.extend(if i == 8 { drops } else { 0 }.to_ne_bytes());
        }
        out
    }

    fn decode(datagram: &[u8], seq: u32) -> (Result<Dump, InventoryError>, Vec<DiagListener>) {
        let mut listeners = Vec::new();
        let result = decode_datagram(datagram, seq, "test", &mut |response| {
            listeners.push(listener_from_response(response));
        });
        (result, listeners)
    }

    #[test]
    fn decodes_listeners_until_done_skipping_other_requests() {
        const DIAG: u16 = 20; // SOCK_DIAG_BY_FAMILY
        const DONE: u16 = 3; // NLMSG_DONE
        let datagram = [
            nlmsg(DIAG, 7, &listener_msg(81, 11, 0)),
            nlmsg(DIAG, 7 + 1, &listener_msg(80, 12, 4)),
        ]
        .concat();
        let (result, listeners) = decode(&datagram, 8);
        assert!(matches!(result, Ok(Dump::More)), "{result:?}");
        assert_eq!(
            listeners,
            [DiagListener {
                addr: IpAddr::V4(Ipv4Addr::LOCALHOST),
                port: 80,
                inode: 12,
                cookie: 1,
                accept_queue_len: 5,
                accept_queue_limit: 128,
                drops: 4,
                v6only: false,
            }]
        );
        let done = nlmsg(DONE, 8, &0i32.to_ne_bytes());
        let (result, listeners) = decode(
            &[nlmsg(DIAG, 8, &listener_msg(80, 12, 4)), done].concat(),
            8,
        );
        assert!(matches!(result, Ok(Dump::Done)), "{result:?}");
        assert_eq!(listeners.len(), 1);
        let (result, _) = decode(&datagram[..datagram.len() - 1], 8);
        assert!(
            matches!(result, Err(InventoryError::Decode { .. })),
            "{result:?}"
        );
    }

    #[test]
    fn error_code_i32_min_is_a_rejection_not_an_overflow() {
        // Found by `cargo xtask fuzz` (target sock_diag): netlink-packet-core's
        // `ErrorMessage::to_io` negates the code, which overflows for i32::MIN.
        const ERROR: u16 = 2; // NLMSG_ERROR
        let (result, _) = decode(&nlmsg(ERROR, 1, &i32::MIN.to_ne_bytes()), 1);
        match result {
            Err(InventoryError::DumpRejected { source, .. }) => {
                assert_eq!(source.raw_os_error(), Some(i32::MAX));
            }
            other => panic!("{other:?}"),
        }
        let (result, _) = decode(&nlmsg(ERROR, 1, &(-libc::EPERM).to_ne_bytes()), 1);
        match result {
            Err(InventoryError::DumpRejected { source, .. }) => {
                assert_eq!(source.kind(), std::io::ErrorKind::PermissionDenied);
            }
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn dump_own_namespace() {
        // sock_diag dumps of one's own namespace need no privilege.
        let socket = std::net::TcpListener::bind(("127.0.0.1", 0)).expect("bind");
        let port = socket.local_addr().expect("addr").port();
        let mut diag = DiagSocket::open().expect("open sock_diag");
        let listeners = diag.listeners().expect("dump listeners");
        let ours = listeners
            .iter()
            .find(|l| l.port == port)
            .expect("our listener");
        assert_eq!(ours.addr, IpAddr::V4(Ipv4Addr::LOCALHOST));
        assert_ne!(ours.inode, 0);
        assert!(!ours.v6only);
        diag.requests().expect("dump requests");
        // The socket can be reused for another dump.
        assert!(
            diag.listeners()
                .expect("second dump")
                .iter()
                .any(|l| l.port == port)
        );
    }
}
