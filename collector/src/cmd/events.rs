//! `sockq events`: the running daemon's notable events as JSON lines, read from its
//! metrics endpoint (`/events/recent`), then followed.

use std::{io::Write as _, net::SocketAddr, time::Duration};

#[derive(Debug, thiserror::Error)]
pub enum EventsError {
    #[error(
        "cannot reach the sockq daemon at http://{addr}/events/recent ({source}); \
         is `sockq run` running with this --metrics-addr?"
    )]
    Unreachable {
        addr: SocketAddr,
        #[source]
        source: Box<ureq::Error>,
    },
    #[error("the daemon at {addr} sent an event that is not JSON: {line}")]
    NotJson { addr: SocketAddr, line: String },
}

/// Prints the events after sequence number `after`; returns the last one printed.
fn print_since(addr: SocketAddr, after: u64) -> Result<u64, EventsError> {
    let url = format!("http://{addr}/events/recent?after={after}");
    let body = ureq::get(&url)
        .call()
        .and_then(|mut r| r.body_mut().read_to_string())
        .map_err(|source| EventsError::Unreachable {
            addr,
            source: Box::new(source),
        })?;
    let mut last = after;
    let mut out = std::io::stdout().lock();
    for line in body.lines().filter(|l| !l.trim().is_empty()) {
        let value: serde_json::Value =
            serde_json::from_str(line).map_err(|_| EventsError::NotJson {
                addr,
                line: line.chars().take(200).collect(),
            })?;
        last = last.max(value["seq"].as_u64().unwrap_or(last));
        // A closed pipe ends the command quietly.
        if writeln!(out, "{line}").and_then(|()| out.flush()).is_err() {
            return Ok(u64::MAX);
        }
    }
    Ok(last)
}

/// Prints what the daemon has, then, with `follow`, new events as they come.
pub fn run(addr: SocketAddr, follow: bool) -> Result<(), EventsError> {
    let mut last = print_since(addr, 0)?;
    while follow && last != u64::MAX {
        std::thread::sleep(Duration::from_millis(500));
        last = print_since(addr, last)?;
    }
    Ok(())
}
