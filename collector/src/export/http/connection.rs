//! One connection: plain HTTP/1.1 through hyper, or a TLS handshake first. The
//! handshake shares the header-read deadline (a client that opens a connection and
//! sends nothing, or half a ClientHello, is closed after [`super::HEADER_READ_TIMEOUT`]
//! as on a plain port). A client that speaks plain HTTP to the TLS port gets a bare
//! 400 saying so (as Go's servers answer, so exporter users recognize it) and
//! nothing else.

use std::{
    io,
    net::{IpAddr, SocketAddr},
    sync::Arc,
    time::Duration,
};

use axum::{Extension, Router};
use hyper::server::conn::http1;
use hyper_util::{rt::TokioIo, server::graceful::Watcher, service::TowerToHyperService};
use rustls::ServerConfig;
use tokio::{io::AsyncWriteExt as _, net::TcpStream};

#[derive(Debug, thiserror::Error)]
pub(super) enum ConnectionError {
    #[error(transparent)]
    Http(#[from] hyper::Error),
    #[error("TLS handshake")]
    Handshake(#[source] io::Error),
    #[error("no TLS handshake within {0:?}")]
    HandshakeTimeout(Duration),
    #[error("plain HTTP on the TLS port")]
    PlainHttp,
}

/// The first byte of a TLS record carrying a handshake message.
const TLS_HANDSHAKE: u8 = 0x16;

const PLAIN_ON_TLS: &[u8] = b"HTTP/1.0 400 Bad Request\r\nContent-Type: text/plain\r\n\
    Connection: close\r\n\r\nClient sent an HTTP request to an HTTPS server.\n";

/// The IP address of the client a request came from, in its extensions (every
/// connection's requests have it).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) struct Peer(pub(super) IpAddr);

/// Serves `stream`, from `peer`, to its end.
pub(super) async fn serve(
    stream: TcpStream,
    peer: SocketAddr,
    tls: Option<Arc<ServerConfig>>,
    http: http1::Builder,
    router: Router,
    watcher: Watcher,
    handshake_timeout: Duration,
) -> Result<(), ConnectionError> {
    let peer = Peer(peer.ip().to_canonical());
    let service = TowerToHyperService::new(tower_layer::Layer::layer(&Extension(peer), router));
    let Some(tls) = tls else {
        return Ok(watcher
            .watch(http.serve_connection(TokioIo::new(stream), service))
            .await?);
    };
    let deadline = tokio::time::Instant::now() + handshake_timeout;
    let timed_out = |_| ConnectionError::HandshakeTimeout(handshake_timeout);
    let mut first = [0u8; 1];
    let peeked = tokio::time::timeout_at(deadline, stream.peek(&mut first))
        .await
        .map_err(timed_out)?
        .map_err(ConnectionError::Handshake)?;
    if peeked == 1 && first[0] != TLS_HANDSHAKE {
        let mut stream = stream;
        if first[0].is_ascii_uppercase() {
            let _ = tokio::time::timeout_at(deadline, stream.write_all(PLAIN_ON_TLS)).await;
        }
        let _ = stream.shutdown().await;
        return Err(ConnectionError::PlainHttp);
    }
    let stream = tokio::time::timeout_at(
        deadline,
        tokio_rustls::TlsAcceptor::from(tls).accept(stream),
    )
    .await
    .map_err(timed_out)?
    .map_err(ConnectionError::Handshake)?;
    Ok(watcher
        .watch(http.serve_connection(TokioIo::new(stream), service))
        .await?)
}
