//! What every request goes through before its handler, in this order:
//!
//! 1. on a loopback bind, the `Host` (and an absolute request target's authority)
//!    must name a loopback host: `localhost`, `127.0.0.0/8` or `[::1]`, with or
//!    without a port; else 403. A page of another site that makes a browser on the
//!    host resolve its own name to 127.0.0.1 (DNS rebinding) then reads nothing. A
//!    request without `Host` (HTTP/1.0) cannot come from a browser and passes;
//! 2. the web configuration's rate limit (429 past it);
//! 3. its basic authentication (401, `WWW-Authenticate: Basic`, no body);
//! 4. the handler, told by an [`Exposure`] whether it may show process details
//!    (loopback bind, or every request authenticated);
//! 5. the configured headers, on every answer that does not set them itself.

use std::{net::Ipv4Addr, sync::Arc};

use axum::{
    extract::{Request, State},
    http::{HeaderMap, HeaderValue, StatusCode, header},
    middleware::Next,
    response::{IntoResponse, Response},
};

use super::{LiveSettings, routes::Exposure};

#[derive(Debug, Clone)]
pub(super) struct Access {
    pub(super) live: Arc<LiveSettings>,
    /// The server listens on a loopback address.
    pub(super) loopback: bool,
}

const NOT_LOOPBACK: &str = "sockq listens on a loopback address and answers only requests \
     for localhost, 127.0.0.0/8 or [::1] (DNS rebinding protection)\n";

pub(super) async fn guard(
    State(access): State<Access>,
    mut request: Request,
    next: Next,
) -> Response {
    if access.loopback && !for_loopback(&request) {
        return (StatusCode::FORBIDDEN, NOT_LOOPBACK).into_response();
    }
    let settings = access.live.current();
    let mut response = if settings.rate_limit.as_ref().is_some_and(|l| !l.allow()) {
        (StatusCode::TOO_MANY_REQUESTS, "Too Many Requests\n").into_response()
    } else if let Some(auth) = &settings.auth
        && !auth.allows(request.headers()).await
    {
        unauthorized()
    } else {
        request.extensions_mut().insert(Exposure {
            details: access.loopback || settings.authenticates,
        });
        next.run(request).await
    };
    let headers = response.headers_mut();
    for (name, value) in &settings.headers {
        if !headers.contains_key(name) {
            headers.insert(name.clone(), value.clone());
        }
    }
    response
}

fn unauthorized() -> Response {
    (
        StatusCode::UNAUTHORIZED,
        [(header::WWW_AUTHENTICATE, HeaderValue::from_static("Basic"))],
    )
        .into_response()
}

/// Whether the request names a loopback host (or none).
fn for_loopback(request: &Request) -> bool {
    let authority_ok = request
        .uri()
        .authority()
        .is_none_or(|a| is_loopback_host(a.as_str()));
    authority_ok && host_ok(request.headers())
}

fn host_ok(headers: &HeaderMap) -> bool {
    let mut hosts = headers.get_all(header::HOST).iter();
    match (hosts.next(), hosts.next()) {
        (None, _) => true,
        (Some(host), None) => host.to_str().is_ok_and(is_loopback_host),
        // Two Host headers: a request smuggling attempt, not a browser.
        (Some(_), Some(_)) => false,
    }
}

/// `localhost`, `127.x.y.z` or `[::1]`, each with an optional `:port`.
pub(super) fn is_loopback_host(host: &str) -> bool {
    let host = host.trim();
    let (name, port) = if let Some(rest) = host.strip_prefix('[') {
        let Some((inside, after)) = rest.split_once(']') else {
            return false;
        };
        let port = match after {
            "" => None,
            after => match after.strip_prefix(':') {
                Some(port) => Some(port),
                None => return false,
            },
        };
        return port_ok(port)
            && inside
                .parse::<std::net::Ipv6Addr>()
                .is_ok_and(|ip| ip.is_loopback());
    } else {
        match host.rsplit_once(':') {
            Some((name, port)) => (name, Some(port)),
            None => (host, None),
        }
    };
    port_ok(port)
        && (name.eq_ignore_ascii_case("localhost")
            || name.eq_ignore_ascii_case("localhost.")
            || name.parse::<Ipv4Addr>().is_ok_and(|ip| ip.is_loopback()))
}

fn port_ok(port: Option<&str>) -> bool {
    port.is_none_or(|p| !p.is_empty() && p.len() <= 5 && p.bytes().all(|b| b.is_ascii_digit()))
}

#[cfg(test)]
mod tests {
    use super::is_loopback_host;

    #[test]
    fn loopback_hosts() {
        for good in [
            "localhost",
            "LOCALHOST:9750",
            "localhost.",
            "127.0.0.1",
            "127.0.0.1:9750",
            "127.1.2.3:1",
            "[::1]",
            "[::1]:9750",
            "[0:0:0:0:0:0:0:1]:80",
        ] {
            assert!(is_loopback_host(good), "{good}");
        }
        for bad in [
            "",
            "evil.example",
            "evil.example:9750",
            "localhost.evil.example",
            "127.0.0.1.nip.io",
            "128.0.0.1",
            "0.0.0.0:9750",
            "[::2]:9750",
            "[::1",
            "[::1]x",
            "[::1]:",
            "localhost:",
            "localhost:abc",
            "localhost:123456",
            "::1",
            "10.0.0.1",
        ] {
            assert!(!is_loopback_host(bad), "{bad}");
        }
    }
}
