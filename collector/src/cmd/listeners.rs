//! `sockq listeners`: a table (or JSON) of every TCP listener on the host.
//!
//! When a `sockq run` answers on the metrics address, its view is shown: it adds what
//! only the probes can see (accepting threads, the execution pattern). Otherwise the
//! listeners are inventoried once, here.

use std::{fmt::Write as _, net::SocketAddr, process::ExitCode, time::Duration};

use crate::{
    inventory,
    kernel::capabilities,
    model::{
        Acceptor,
        api::{ListenerRow, rows_from_inventory},
        nagle::NagleSeries,
        unix::UnixListener,
    },
    text::escape,
};

/// `sockq listeners`: the daemon's view if one answers, else a one-shot inventory.
pub fn main(args: &super::ListenersArgs) -> ExitCode {
    if args.unix {
        return unix_main(args);
    }
    let from_daemon = if args.no_daemon {
        None
    } else {
        from_daemon(args.metrics_addr)
    };
    let rows = match from_daemon {
        Some(rows) => rows,
        None => {
            if let Some(missing) = capabilities::check(&capabilities::FOR_RUN) {
                tracing::warn!("{missing}; showing only what this user can see");
            }
            match inventory::scan() {
                Ok(l) => rows_from_inventory(l),
                Err(e) => {
                    eprintln!("sockq: {}", crate::error_chain(&e));
                    return ExitCode::FAILURE;
                }
            }
        }
    };
    if args.json {
        match serde_json::to_string_pretty(&rows) {
            Ok(json) => super::emit(&format!("{json}\n")),
            Err(e) => {
                eprintln!("sockq: {e}");
                return ExitCode::FAILURE;
            }
        }
    } else {
        super::emit(&render_table(&rows));
    }
    ExitCode::SUCCESS
}

/// `sockq listeners --unix`.
fn unix_main(args: &super::ListenersArgs) -> ExitCode {
    let from_daemon: Option<Vec<UnixListener>> = if args.no_daemon {
        None
    } else {
        unix_from_daemon(args.metrics_addr)
    };
    let listeners = match from_daemon {
        Some(l) => l,
        None => match inventory::scan_report() {
            Ok(report) => report.unix_listeners,
            Err(e) => {
                eprintln!("sockq: {}", crate::error_chain(&e));
                return ExitCode::FAILURE;
            }
        },
    };
    if args.json {
        match serde_json::to_string_pretty(&listeners) {
            Ok(json) => super::emit(&format!("{json}\n")),
            Err(e) => {
                eprintln!("sockq: {e}");
                return ExitCode::FAILURE;
            }
        }
    } else {
        super::emit(&render_unix_table(&listeners));
    }
    ExitCode::SUCCESS
}

/// The Unix listeners' table: names and owners escaped (a path may hold newlines
/// and terminal escapes).
pub fn render_unix_table(listeners: &[UnixListener]) -> String {
    let header = [
        "NETNS", "TYPE", "QUEUE", "REFUSED", "SOCKET", "OWNERS", "NAME",
    ];
    let cells: Vec<[String; 7]> = listeners
        .iter()
        .map(|l| {
            [
                l.netns.to_string(),
                l.socket_type.name().to_owned(),
                format!("{}/{}", l.queue_len, l.queue_limit),
                l.kernel
                    .as_ref()
                    .map_or("-".to_owned(), |k| k.refused.to_string()),
                l.inode.to_string(),
                owners_cell(&l.owners),
                if l.name.is_empty() {
                    "(unnamed)".to_owned()
                } else {
                    escape(&l.name)
                },
            ]
        })
        .collect();
    let mut widths = header.map(str::len);
    for row in &cells {
        for (w, cell) in widths.iter_mut().zip(row) {
            *w = (*w).max(cell.len());
        }
    }
    let mut out = String::new();
    for row in std::iter::once(header.map(str::to_owned)).chain(cells) {
        let mut text = String::new();
        for (i, (cell, w)) in row.iter().zip(widths).enumerate() {
            if i + 1 == row.len() {
                text.push_str(cell);
            } else {
                let _ = write!(text, "{cell:<w$}  ");
            }
        }
        out.push_str(text.trim_end());
        out.push('\n');
    }
    out
}

fn owners_cell(owners: &[crate::model::Owner]) -> String {
    if owners.is_empty() {
        return "-".to_owned();
    }
    owners
        .iter()
        .map(|o| format!("{}/{}", o.pid, escape(&o.comm)))
        .collect::<Vec<_>>()
        .join(",")
}

/// The running daemon's rows, if one answers at `addr` within a second.
pub fn from_daemon(addr: SocketAddr) -> Option<Vec<ListenerRow>> {
    get_json(addr, "/api/listeners")
}

/// The running daemon's Unix listeners (`/api/listeners?family=unix`), if it answers.
pub fn unix_from_daemon(addr: SocketAddr) -> Option<Vec<UnixListener>> {
    get_json(addr, "/api/listeners?family=unix")
}

/// The running daemon's Nagle / delayed-ACK series (`/api/nagle`), if it answers.
pub fn nagle_from_daemon(addr: SocketAddr) -> Option<Vec<NagleSeries>> {
    get_json(addr, "/api/nagle")
}

/// GET `path` from the daemon and decode its JSON; `None` when it does not answer
/// within a second or answers something else.
fn get_json<T: serde::de::DeserializeOwned>(addr: SocketAddr, path: &str) -> Option<T> {
    let agent = ureq::Agent::config_builder()
        .timeout_global(Some(Duration::from_secs(1)))
        .build()
        .new_agent();
    let body = agent
        .get(&format!("http://{addr}{path}"))
        .call()
        .ok()?
        .body_mut()
        .read_to_string()
        .ok()?;
    serde_json::from_str(&body).ok()
}

/// The table, one line per listener, widths fitted to the content.
pub fn render_table(rows: &[ListenerRow]) -> String {
    let header = [
        "NETNS",
        "LISTEN",
        "ACCEPTQ",
        "SYNQ",
        "DROPS",
        "SOCKET",
        "PATTERN",
        "ACCEPTORS",
        "OWNERS",
    ];
    let cells: Vec<[String; 9]> = rows
        .iter()
        .map(|row| {
            let l = &row.listener;
            let owners = if l.owners.is_empty() {
                "-".to_owned()
            } else {
                l.owners
                    .iter()
                    .map(|o| format!("{}/{}", o.pid, escape(&o.comm)))
                    .collect::<Vec<_>>()
                    .join(",")
            };
            let mut threads: Vec<&Acceptor> = row.acceptors.iter().collect();
            threads.sort_by_key(|a| std::cmp::Reverse(a.accepts));
            let mut acceptors: Vec<String> = threads
                .iter()
                .take(3)
                .map(|a| format!("{}:{}", a.tid, a.accepts))
                .collect();
            if threads.len() > 3 {
                acceptors.push(format!("+{}", threads.len() - 3));
            }
            [
                l.netns.to_string(),
                l.listen_addr(),
                format!("{}/{}", l.accept_queue_len, l.accept_queue_limit),
                l.syn_queue_len.to_string(),
                l.drops.to_string(),
                l.inode.to_string(),
                row.pattern
                    .as_ref()
                    .map_or("-", |p| p.pattern.name())
                    .to_owned(),
                if acceptors.is_empty() {
                    "-".to_owned()
                } else {
                    acceptors.join(",")
                },
                owners,
            ]
        })
        .collect();
    let mut widths = header.map(str::len);
    for row in &cells {
        for (w, cell) in widths.iter_mut().zip(row) {
            *w = (*w).max(cell.len());
        }
    }
    let mut out = String::new();
    let mut line = |cells: &[&str]| {
        let mut text = String::new();
        for (i, (cell, w)) in cells.iter().zip(widths).enumerate() {
            if i + 1 == cells.len() {
                text.push_str(cell);
            } else {
                let _ = write!(text, "{cell:<w$}  ");
            }
        }
        out.push_str(text.trim_end());
        out.push('\n');
    };
    line(&header);
    for row in &cells {
        line(&row.each_ref().map(String::as_str));
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::{Listener, Owner};

    #[test]
    fn table_escapes_owner_names() {
        let l = Listener {
            netns: 4026531840,
            addr: "::".parse().expect("addr"),
            port: 80,
            inode: 123,
            cookie: 1,
            accept_queue_len: 3,
            accept_queue_limit: 2,
            syn_queue_len: 0,
            drops: 15,
            owners: vec![Owner::new(7, "evil\n\x1b[2J")],
            kernel: None,
            queue_full: false,
        };
        let t = render_table(&rows_from_inventory(vec![l]));
        assert!(t.starts_with("NETNS"), "{t}");
        assert!(t.contains("[::]:80"), "{t}");
        assert!(t.contains("3/2"), "{t}");
        assert!(t.contains("7/evil\\n\\x1b[2J"), "{t}");
        assert_eq!(t.lines().count(), 2, "{t}");
    }

    #[test]
    fn unix_table_escapes_paths() {
        let (name, name_kind) = crate::model::unix::display_name(b"/tmp/x\n\x1b[2J\"q");
        let l = UnixListener {
            netns: 1,
            name,
            name_kind,
            socket_type: crate::model::unix::UnixSocketType::Seqpacket,
            inode: 99,
            cookie: 0,
            queue_len: 5,
            queue_limit: 4,
            owners: vec![Owner::new(3, "gunicorn")],
            address: Vec::new(),
            kernel: None,
            queue: None,
            queue_full: false,
        };
        let t = render_unix_table(&[l]);
        assert_eq!(t.lines().count(), 2, "{t}");
        assert!(t.contains("/tmp/x\\n\\x1b[2J\\\"q"), "{t}");
        assert!(t.contains("seqpacket  5/4"), "{t}");
        assert!(t.contains("3/gunicorn"), "{t}");
    }
}
