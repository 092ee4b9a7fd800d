//! What leaves the daemon: the Prometheus exposition, the HTTP server (metrics, JSON
//! API, status page), and the event log it serves.

pub mod event_log;
pub mod http;
pub mod prometheus;
pub mod status_page;
pub mod web_config;
