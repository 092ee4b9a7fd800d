//! The built-in status page served at `GET /`: every listener with its accept queue
//! depth against its limit, small charts of recent depth and drops per second, the
//! Unix-domain listeners with their queues and refused connects, and the recent
//! notable events, for a user without Prometheus or Grafana.
//!
//! The page (`status_page.html`) is one self-contained document: inline CSS and
//! JavaScript, no external asset, so it works on an air-gapped host. Its script
//! polls `/api/listeners`, `/api/listeners?family=unix` and `/events/recent?after=SEQ`
//! every second and keeps the charts' history (two minutes) in the browser: the
//! daemon stores nothing for it.
//! The Content-Security-Policy header lets it fetch from its own origin only.
//!
//! Clients that ask for plain text (`Accept: text/plain` without `text/html`) get the
//! plain index of endpoints instead, also always served at `/index.txt`.

use axum::{
    http::{HeaderMap, HeaderValue, header},
    response::{IntoResponse, Response},
};

/// The page, embedded in the binary.
const PAGE: &str = include_str!("status_page.html");

/// Inline script and style are the page's own; data comes from this origin only.
const CONTENT_SECURITY_POLICY: &str = "default-src 'none'; script-src 'unsafe-inline'; \
     style-src 'unsafe-inline'; img-src data:; connect-src 'self'; base-uri 'none'; \
     form-action 'none'; frame-ancestors 'none'";

/// `GET /`: the status page, or the plain-text index for clients that prefer it.
pub async fn page(headers: HeaderMap) -> Response {
    let headers_out = [
        (header::VARY, HeaderValue::from_static("Accept")),
        (header::CACHE_CONTROL, HeaderValue::from_static("no-cache")),
    ];
    if prefers_plain_text(&headers) {
        return (headers_out, INDEX).into_response();
    }
    (
        headers_out,
        [
            (
                header::CONTENT_TYPE,
                HeaderValue::from_static("text/html; charset=utf-8"),
            ),
            (
                header::CONTENT_SECURITY_POLICY,
                HeaderValue::from_static(CONTENT_SECURITY_POLICY),
            ),
            (
                header::X_CONTENT_TYPE_OPTIONS,
                HeaderValue::from_static("nosniff"),
            ),
        ],
        PAGE,
    )
        .into_response()
}

/// The plain-text index (`/index.txt`, and `/` for clients asking for text).
pub async fn index() -> &'static str {
    INDEX
}

const INDEX: &str = "sockq: per-listener socket and kernel-queue observability\n\
     \n\
     Status page (HTML): /\n\
     Prometheus metrics: /metrics\n\
     Notable events (JSON lines): /events/recent?after=SEQ\n\
     Listeners with acceptors and patterns (JSON): /api/listeners\n\
     Unix-domain listeners (JSON): /api/listeners?family=unix\n";

/// Whether the client asked for `text/plain` and not for HTML (browsers always list
/// `text/html`; `curl` sends `*/*` and gets the page).
fn prefers_plain_text(headers: &HeaderMap) -> bool {
    let accept = headers
        .get_all(header::ACCEPT)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .collect::<Vec<_>>()
        .join(",")
        .to_ascii_lowercase();
    accept.contains("text/plain") && !accept.contains("text/html")
}

#[cfg(test)]
mod tests {
    use std::{
        io::{Read as _, Write as _},
        net::{Ipv4Addr, SocketAddr, TcpStream},
        time::Duration,
    };

    use super::*;
    use crate::{
        export::http::{self, SharedState},
        export::prometheus::BuildInfo,
    };

    /// The value of every `src=`, `href=`, `action=`, `url(` and `@import` in `page`.
    fn references(page: &str) -> Vec<String> {
        let mut found = Vec::new();
        for marker in ["src=", "href=", "action=", "url(", "@import"] {
            for (at, _) in page.match_indices(marker) {
                let rest = page[at + marker.len()..].trim_start_matches([' ', '"', '\'']);
                let end = rest
                    .find(['"', '\'', ')', ' ', '>', ';'])
                    .unwrap_or(rest.len());
                found.push(rest[..end].to_owned());
            }
        }
        found
    }

    fn assert_self_contained(page: &str) {
        let refs = references(page);
        assert!(!refs.is_empty(), "the page links its own endpoints");
        for r in &refs {
            assert!(
                (r.starts_with('/') && !r.starts_with("//")) || r.starts_with("data:"),
                "external or relative reference {r:?}"
            );
        }
        // The only absolute URL is the SVG namespace name, which is never fetched.
        let rest = page.replace("\"http://www.w3.org/2000/svg\"", "");
        assert!(
            !rest.contains("http://") && !rest.contains("https://"),
            "absolute URL in the page"
        );
        for tag in ["<script src", "<link rel=\"stylesheet\"", "<img", "<iframe"] {
            assert!(!page.contains(tag), "{tag} in the page");
        }
    }

    #[test]
    fn page_is_self_contained_and_never_parses_data_as_html() {
        assert_self_contained(PAGE);
        for sink in [
            "innerHTML",
            "outerHTML",
            "insertAdjacentHTML",
            "document.write",
            "eval(",
            "new Function",
        ] {
            assert!(!PAGE.contains(sink), "{sink} in the page's script");
        }
        // It polls the endpoints it claims to.
        assert!(PAGE.contains("get(\"/api/listeners\")"));
        assert!(PAGE.contains("get(\"/events/recent?after=\" + lastSeq)"));
    }

    #[test]
    fn reference_scanner_sees_external_assets() {
        let bad = "<script src=\"https://cdn.example/x.js\"></script>\
                   <link rel=\"stylesheet\" href=//cdn.example/x.css>";
        let refs = references(bad);
        assert!(
            refs.contains(&"https://cdn.example/x.js".to_owned()),
            "{refs:?}"
        );
        assert!(refs.contains(&"//cdn.example/x.css".to_owned()), "{refs:?}");
    }

    #[test]
    fn plain_text_only_when_asked_without_html() {
        let accept = |v: &'static str| {
            let mut h = HeaderMap::new();
            h.insert(header::ACCEPT, HeaderValue::from_static(v));
            h
        };
        assert!(!prefers_plain_text(&HeaderMap::new()));
        assert!(!prefers_plain_text(&accept("*/*")));
        assert!(!prefers_plain_text(&accept(
            "text/html,application/xhtml+xml,application/xml;q=0.9,*/*;q=0.8"
        )));
        assert!(prefers_plain_text(&accept("text/plain")));
        assert!(prefers_plain_text(&accept("Text/Plain;q=1, */*;q=0.1")));
    }

    /// Serves the real router on a free port and returns (head, body) of each
    /// request, in order.
    async fn exchange(requests: Vec<&'static str>) -> Vec<(String, String)> {
        let listener = http::bind(SocketAddr::from((Ipv4Addr::LOCALHOST, 0)))
            .await
            .expect("bind");
        let addr = listener.local_addr().expect("local addr");
        let state = SharedState::new(BuildInfo {
            version: "9.9.9".to_owned(),
            git_commit: "feed".to_owned(),
            kernel_release: "6.1.0-test".to_owned(),
        });
        let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
        let server = tokio::spawn(http::serve(listener, state, async move {
            let _ = stopped.await;
        }));
        let responses = tokio::task::spawn_blocking(move || {
            requests
                .into_iter()
                .map(|request| {
                    let mut stream = TcpStream::connect(addr).expect("connect");
                    stream
                        .set_read_timeout(Some(Duration::from_secs(5)))
                        .expect("timeout");
                    stream.write_all(request.as_bytes()).expect("write");
                    let mut response = String::new();
                    stream.read_to_string(&mut response).expect("read");
                    let (head, body) = response.split_once("\r\n\r\n").expect("a response");
                    (head.to_ascii_lowercase(), body.to_owned())
                })
                .collect()
        })
        .await
        .expect("client");
        let _ = stop.send(());
        server.await.expect("server task").expect("serve");
        responses
    }

    #[tokio::test]
    async fn root_serves_the_page_and_the_text_index_stays_reachable() {
        let responses = exchange(vec![
            "GET / HTTP/1.1\r\nHost: localhost\r\nAccept: text/html,*/*;q=0.8\r\nConnection: close\r\n\r\n",
            "GET / HTTP/1.1\r\nHost: localhost\r\nAccept: text/plain\r\nConnection: close\r\n\r\n",
            "GET /index.txt HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n",
            "GET /metrics HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n",
        ])
        .await;
        let [
            (html_head, html),
            (plain_head, plain),
            (txt_head, txt),
            (metrics_head, metrics),
        ] = responses.as_slice()
        else {
            panic!("{responses:?}");
        };

        assert!(html_head.starts_with("http/1.1 200 ok"), "{html_head}");
        assert!(
            html_head.contains("content-type: text/html; charset=utf-8"),
            "{html_head}"
        );
        assert!(
            html_head.contains("content-security-policy: default-src 'none'"),
            "{html_head}"
        );
        assert!(html.starts_with("<!DOCTYPE html>"), "{html}");
        assert_self_contained(html);

        for (head, body) in [(plain_head, plain), (txt_head, txt)] {
            assert!(head.starts_with("http/1.1 200 ok"), "{head}");
            assert!(head.contains("content-type: text/plain"), "{head}");
            assert!(body.contains("Prometheus metrics: /metrics"), "{body}");
        }

        assert!(
            metrics_head.starts_with("http/1.1 200 ok"),
            "{metrics_head}"
        );
        assert!(metrics.contains("sockq_build_info"), "{metrics}");
    }
}
