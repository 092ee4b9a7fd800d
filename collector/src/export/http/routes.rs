//! The endpoints: `GET /metrics`, `/events/recent[?after=SEQ]`,
//! `/api/listeners[?family=unix]`,
//! `/api/nagle`, the status page at `/` and `/index.txt`; 404 for any other path.
//!
//! Process details (each owner's `cmdline`, `user` and `cgroup`) leave the JSON
//! answers only when [`Exposure::details`] says so (a loopback bind, or every request
//! authenticated: see `access`); otherwise they are omitted, each owner says which
//! fields are missing (`"omitted": [...]`), and the answer carries an
//! [`OMITTED_HEADER`] saying why. `/metrics` has none of these fields and keeps its
//! labels. With the JSON API off (`--no-api`), only `/metrics` and the index remain.

use axum::{
    Extension, Router,
    extract::{Query, State},
    http::{HeaderMap, HeaderValue, StatusCode, header},
    response::{IntoResponse, Response},
    routing::get,
};
use tower_http::compression::CompressionLayer;

use super::{SharedState, connection::Peer, state::SERVED_HEADER};
use crate::export::{prometheus::Format, status_page};

/// Whether this request may see process details; set by the access layer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Exposure {
    pub details: bool,
}

/// The answer header that explains omitted process details.
pub const OMITTED_HEADER: &str = "sockq-omitted";

/// Why they are omitted.
const OMITTED_WHY: &str = "cmdline, user and cgroup of processes are omitted: the metrics \
     address is not loopback and no authentication is configured (see --web-config-file)";

/// The fields of an owner that only loopback or authenticated clients see.
const DETAIL_FIELDS: [&str; 3] = ["cmdline", "user", "cgroup"];

pub(super) fn router(state: SharedState, api: bool) -> Router {
    // gzip when the request accepts it (Prometheus always does), plain otherwise;
    // `Vary: Accept-Encoding` either way. Only /metrics: it is the large answer
    // scraped every few seconds, and the access layer's refusals stay plain.
    let metrics = get(metrics).layer(CompressionLayer::new().gzip(true));
    let router = Router::new().route("/metrics", metrics);
    let router = if api {
        router
            .route("/", get(status_page::page))
            .route("/index.txt", get(status_page::index))
            .route("/events/recent", get(recent_events))
            .route("/api/listeners", get(api_listeners))
            .route("/api/nagle", get(api_nagle))
    } else {
        router
            .route("/", get(index_without_api))
            .route("/index.txt", get(index_without_api))
    };
    router.with_state(state)
}

/// The index when the JSON API (and so the status page, which reads it) is off.
async fn index_without_api() -> &'static str {
    "sockq: per-listener socket and kernel-queue observability\n\
     \n\
     Prometheus metrics: /metrics\n\
     (the JSON API and the status page are off: --no-api)\n"
}

/// What a handler was told, defaulting to no details when the access layer did not
/// run.
fn details(exposure: Option<Extension<Exposure>>) -> bool {
    exposure.is_some_and(|Extension(e)| e.details)
}

/// Removes the detail fields from every object that has one, recording which in
/// `"omitted"`. Returns whether anything was removed.
fn redact(value: &mut serde_json::Value) -> bool {
    match value {
        serde_json::Value::Object(map) => {
            let mut removed = Vec::new();
            for field in DETAIL_FIELDS {
                if map.remove(field).is_some() {
                    removed.push(serde_json::Value::from(field));
                }
            }
            let mut any = !removed.is_empty();
            if any {
                map.insert("omitted".to_owned(), removed.into());
            }
            for v in map.values_mut() {
                any |= redact(v);
            }
            any
        }
        serde_json::Value::Array(items) => items.iter_mut().fold(false, |any, v| redact(v) | any),
        _ => false,
    }
}

fn json_answer(body: String, omitted: bool, content_type: &'static str) -> Response {
    let mut response = ([(header::CONTENT_TYPE, content_type)], body).into_response();
    if omitted {
        response
            .headers_mut()
            .insert(OMITTED_HEADER, HeaderValue::from_static(OMITTED_WHY));
    }
    response
}

/// `value` as JSON, redacted unless `details`: the answer.
fn json_of(value: &impl serde::Serialize, details: bool) -> Response {
    let encoded = if details {
        serde_json::to_string(value).map(|s| (s, false))
    } else {
        serde_json::to_value(value).map(|mut tree| {
            let omitted = redact(&mut tree);
            (tree.to_string(), omitted)
        })
    };
    match encoded {
        Ok((json, omitted)) => json_answer(json, omitted, "application/json"),
        Err(e) => (StatusCode::INTERNAL_SERVER_ERROR, format!("{e}\n")).into_response(),
    }
}

#[derive(Debug, serde::Deserialize)]
struct ListenersQuery {
    /// `unix` for the Unix-domain listeners; the default is TCP.
    #[serde(default)]
    family: Option<String>,
}

/// Every TCP listener with its accepting threads and execution pattern, as JSON (what
/// `sockq listeners` shows when a daemon runs); with `?family=unix` the Unix-domain
/// listeners instead (their own rows: the TCP rows' readers stay unchanged).
async fn api_listeners(
    State(state): State<SharedState>,
    exposure: Option<Extension<Exposure>>,
    Query(query): Query<ListenersQuery>,
) -> Response {
    let snapshot = state.snapshot();
    match query.family.as_deref() {
        None | Some("tcp" | "inet") => json_of(
            &crate::model::api::rows_from_snapshot(&snapshot),
            details(exposure),
        ),
        Some("unix") => json_of(&snapshot.unix_listeners, details(exposure)),
        Some(_) => (
            StatusCode::BAD_REQUEST,
            "family must be tcp or unix\n".to_owned(),
        )
            .into_response(),
    }
}

/// Nagle holds, delayed ACKs and stalls per (netns, listener, process), as JSON
/// (what `sockq top` shows below the listeners).
async fn api_nagle(
    State(state): State<SharedState>,
    exposure: Option<Extension<Exposure>>,
) -> Response {
    json_of(&state.snapshot().nagle, details(exposure))
}

#[derive(Debug, serde::Deserialize)]
struct EventsQuery {
    #[serde(default)]
    after: u64,
}

async fn recent_events(
    State(state): State<SharedState>,
    Query(query): Query<EventsQuery>,
    exposure: Option<Extension<Exposure>>,
) -> Response {
    let lines = state.events().since(query.after);
    if details(exposure) {
        return json_answer(lines, false, "application/x-ndjson");
    }
    let mut out = String::with_capacity(lines.len());
    let mut omitted = false;
    for line in lines.lines() {
        // The log holds JSON objects it encoded itself; a line that does not parse
        // is dropped rather than served unredacted.
        if let Ok(mut event) = serde_json::from_str::<serde_json::Value>(line) {
            omitted |= redact(&mut event);
            out.push_str(&event.to_string());
            out.push('\n');
        }
    }
    json_answer(out, omitted, "application/x-ndjson")
}

/// The exposition, in the format the `Accept` header prefers (`Format::negotiate`),
/// gzipped when `Accept-Encoding` accepts it; rendered once per snapshot
/// ([`SharedState::scrape`]), so the compression layer passes these through.
async fn metrics(
    State(state): State<SharedState>,
    Extension(Peer(who)): Extension<Peer>,
    headers: HeaderMap,
) -> Response {
    let accept = headers.get(header::ACCEPT).and_then(|v| v.to_str().ok());
    let format = Format::negotiate(accept);
    let gzip = super::state::accepts_gzip(
        headers
            .get(header::ACCEPT_ENCODING)
            .and_then(|v| v.to_str().ok()),
    );
    match state.scrape(who, format, gzip) {
        Ok((body, served)) => {
            let mut response =
                ([(header::CONTENT_TYPE, format.content_type())], body).into_response();
            let headers = response.headers_mut();
            headers.insert(
                SERVED_HEADER,
                header::HeaderValue::from_static(served.as_str()),
            );
            // The answer depends on both: caches must not serve one scraper's answer
            // to another.
            headers.append(header::VARY, header::HeaderValue::from_static("Accept"));
            headers.append(
                header::VARY,
                header::HeaderValue::from_static("Accept-Encoding"),
            );
            if gzip {
                headers.insert(
                    header::CONTENT_ENCODING,
                    header::HeaderValue::from_static("gzip"),
                );
            }
            response
        }
        Err(e) => {
            tracing::error!("rendering /metrics: {e}");
            (StatusCode::INTERNAL_SERVER_ERROR, format!("{e}\n")).into_response()
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn redaction_removes_details_wherever_they_are() {
        let mut v = serde_json::json!([
            {"port": 80, "owners": [{"pid": 1, "comm": "srv", "cmdline": "srv --secret",
              "user": "root", "cgroup": "/a", "container": "c"}]},
            {"port": 81, "owners": []}
        ]);
        assert!(redact(&mut v));
        assert_eq!(
            v[0]["owners"][0],
            serde_json::json!({"pid": 1, "comm": "srv", "container": "c",
                               "omitted": ["cmdline", "user", "cgroup"]})
        );
        let mut none = serde_json::json!({"seq": 1, "message": "cmdline"});
        assert!(!redact(&mut none));
    }
}
