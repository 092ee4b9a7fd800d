//! Unix-domain listeners from the kernel's socket diagnostics.
//!
//! Kernel interface: `NETLINK_SOCK_DIAG` with a `struct unix_diag_req` dump
//! (`net/unix/diag.c`, Linux 3.3+) for `TCPF_LISTEN`, asking for `UDIAG_SHOW_NAME`
//! and `UDIAG_SHOW_RQLEN`. For a listener, `UNIX_DIAG_RQLEN` is the number of
//! connections queued for `accept()` (`sk_receive_queue.qlen`) and the backlog limit
//! (`sk_max_ack_backlog`), what `ss -xl` shows as Recv-Q and Send-Q. The dump holds
//! the sockets of the namespace the diag socket was created in; datagram sockets
//! never listen, so stream and seqpacket listeners are all there is.

use netlink_packet_sock_diag::{
    SOCK_SEQPACKET, SOCK_STREAM, SockDiagMessage,
    unix::{
        ShowFlags, StateFlags, UnixRequest, UnixResponse,
        nlas::{Nla, UnixDiagName},
    },
};

use super::{InventoryError, sock_diag::DiagSocket};
use crate::model::{NetnsInode, unix::UnixListener, unix::UnixSocketType, unix::display_name};

const REQUEST: &str = "Unix listeners";

impl DiagSocket {
    /// Every Unix stream and seqpacket listener of the socket's namespace, without
    /// owners.
    pub fn unix_listeners(
        &mut self,
        netns: NetnsInode,
    ) -> Result<Vec<UnixListener>, InventoryError> {
        let message = SockDiagMessage::UnixRequest(UnixRequest {
            state_flags: StateFlags::LISTEN,
            inode: 0,
            show_flags: ShowFlags::NAME | ShowFlags::RQLEN,
            cookie: [0xff; 8],
        });
        let mut listeners = Vec::new();
        self.dump_message(message, REQUEST, |answer| {
            if let SockDiagMessage::UnixResponse(response) = answer
                && let Some(listener) = listener_from_response(netns, response)
            {
                listeners.push(listener);
            }
        })?;
        Ok(listeners)
    }
}

/// The listener one `unix_diag_msg` describes; `None` for a socket type that does
/// not listen.
pub fn listener_from_response(netns: NetnsInode, response: &UnixResponse) -> Option<UnixListener> {
    let socket_type = match response.header.kind {
        SOCK_STREAM => UnixSocketType::Stream,
        SOCK_SEQPACKET => UnixSocketType::Seqpacket,
        _ => return None,
    };
    let address = match response.name() {
        Some(UnixDiagName::Pathname(path)) => path.as_encoded_bytes().to_vec(),
        Some(UnixDiagName::Abstract(name)) => {
            let mut raw = Vec::with_capacity(name.len() + 1);
            raw.push(0);
            raw.extend_from_slice(name);
            raw
        }
        None => Vec::new(),
    };
    let (queue_len, queue_limit) = response
        .nlas
        .iter()
        .find_map(|nla| match nla {
            Nla::ReceiveQueueLength(len, limit) => Some((*len, *limit)),
            _ => None,
        })
        .unwrap_or_default();
    let (name, name_kind) = display_name(&address);
    Some(UnixListener {
        netns,
        name,
        name_kind,
        socket_type,
        inode: u64::from(response.header.inode),
        cookie: u64::from_ne_bytes(response.header.cookie),
        queue_len,
        queue_limit,
        owners: Vec::new(),
        address,
        kernel: None,
        queue: None,
        queue_full: false,
    })
}

/// The inventory's order for Unix listeners: (netns, name, inode).
pub fn sort(listeners: &mut [UnixListener]) {
    listeners.sort_by(|a, b| (a.netns, &a.name, a.inode).cmp(&(b.netns, &b.name, b.inode)));
}

#[cfg(test)]
mod tests {
    use netlink_packet_sock_diag::unix::UnixResponseHeader;

    use super::*;
    use crate::model::unix::UnixNameKind;

    fn response(kind: u8, nlas: Vec<Nla>) -> UnixResponse {
        UnixResponse {
            header: UnixResponseHeader {
                kind,
                state: 10,
                inode: 4242,
                cookie: 7u64.to_ne_bytes(),
            },
            nlas: nlas.into(),
        }
    }

    #[test]
    fn decodes_name_queue_and_limit() {
        let r = response(
            SOCK_STREAM,
            vec![
                Nla::Name(UnixDiagName::Abstract(b"sockq\0x".to_vec())),
                Nla::ReceiveQueueLength(5, 4),
            ],
        );
        let l = listener_from_response(9, &r).expect("a stream listener");
        assert_eq!(
            (l.netns, l.inode, l.cookie, l.queue_len, l.queue_limit),
            (9, 4242, 7, 5, 4)
        );
        assert_eq!(l.name, "@sockq@x");
        assert_eq!(l.name_kind, UnixNameKind::Abstract);
        assert_eq!(l.address, b"\0sockq\0x");
        assert_eq!(l.socket_type, UnixSocketType::Stream);
    }

    #[test]
    fn path_unnamed_and_datagram_sockets() {
        let path = response(
            SOCK_SEQPACKET,
            vec![Nla::Name(UnixDiagName::Pathname("/run/a \"b\"\n".into()))],
        );
        let l = listener_from_response(1, &path).expect("seqpacket listener");
        assert_eq!(l.name, "/run/a \"b\"\n");
        assert_eq!((l.queue_len, l.queue_limit), (0, 0), "no RQLEN: zeros");
        assert_eq!(l.socket_type, UnixSocketType::Seqpacket);
        let unnamed =
            listener_from_response(1, &response(SOCK_STREAM, vec![])).expect("unnamed listener");
        assert_eq!(unnamed.name_kind, UnixNameKind::Unnamed);
        let dgram = response(libc::SOCK_DGRAM as u8, vec![]);
        assert!(listener_from_response(1, &dgram).is_none());
    }

    /// The bytes the kernel sends, through the same decoder the dump uses.
    #[test]
    fn decodes_a_datagram_of_unix_answers() {
        use netlink_packet_core::{NetlinkHeader, NetlinkMessage, NetlinkPayload};

        let mut datagram = Vec::new();
        let answers = [
            response(
                SOCK_STREAM,
                vec![
                    Nla::Name(UnixDiagName::Pathname("/run/php/php-fpm.sock".into())),
                    Nla::ReceiveQueueLength(3, 511),
                ],
            ),
            response(libc::SOCK_DGRAM as u8, vec![]),
        ];
        for answer in answers {
            let mut header = NetlinkHeader::default();
            header.sequence_number = 5;
            let mut message = NetlinkMessage::new(
                header,
                NetlinkPayload::InnerMessage(SockDiagMessage::UnixResponse(Box::new(answer))),
            );
            message.finalize();
            let mut bytes = vec![0; message.buffer_len()];
            message.serialize(&mut bytes);
            datagram.extend_from_slice(&bytes);
        }
        let mut found = Vec::new();
        let dump = crate::inventory::sock_diag::decode_messages(&datagram, 5, REQUEST, &mut |m| {
            if let SockDiagMessage::UnixResponse(r) = m {
                found.extend(listener_from_response(3, r));
            }
        })
        .expect("decodes");
        assert_eq!(dump, crate::inventory::sock_diag::Dump::More);
        assert_eq!(found.len(), 1, "the datagram socket is no listener");
        assert_eq!(
            (
                found[0].name.as_str(),
                found[0].queue_len,
                found[0].queue_limit
            ),
            ("/run/php/php-fpm.sock", 3, 511)
        );
        // Garbage is an error, never a panic.
        assert!(
            crate::inventory::sock_diag::decode_messages(&[0xff; 40], 5, REQUEST, &mut |_| {})
                .is_err()
        );
    }
}
