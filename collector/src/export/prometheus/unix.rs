//! Unix-domain listeners: their own families (`sockq_unix_*`), labelled by `path`
//! (the name as `ss -x` prints it: a path, `@abstract`, or empty) instead of
//! `listen_addr`. Parallel families rather than `family="unix"` on the TCP ones: the
//! TCP families keep their labels (no existing query or dashboard changes), and a
//! Unix listener has neither a SYN queue nor `sk_drops`, so half of the TCP families
//! would have no Unix series anyway.

use super::{
    Family, Labels,
    histogram::{ClassicBuckets, Grid, kernel_histogram},
    queues::MAX_ACCEPTORS_PER_LISTENER,
};
use crate::model::{Snapshot, unix::UnixListener};

const HELP_LEN: &str = "Connections waiting for accept() on this Unix listener (sock_diag \
    UNIX_DIAG_RQLEN, the listener's receive queue; `ss -xl` Recv-Q).";
const HELP_LIMIT: &str = "This Unix listener's backlog limit, min(backlog, net.core.somaxconn) \
    (UNIX_DIAG_RQLEN, sk_max_ack_backlog; `ss -xl` Send-Q); connects are refused once the \
    queue holds more.";
const HELP_INFO: &str = "Always 1: the owners of each Unix listener (procfs, by socket inode), \
    its socket type (stream, seqpacket) and name kind (path, abstract, unnamed).";
const HELP_FULL: &str = "1 while a full-queue episode is in progress on this Unix listener \
    (queue over its limit, or connects refused), 0 otherwise; see `sockq events`.";
const HELP_REFUSED: &str = "connect() calls aimed at this Unix listener that failed with \
    EAGAIN because its queue was full (syscalls:sys_enter_connect / sys_exit_connect): \
    the `Resource temporarily unavailable` of nginx's `connect() to unix:` errors. The \
    kernel counts these nowhere.";
const HELP_REFUSED_BY: &str = "The same refused connects by client process (client_pid, \
    client_comm); at most 16 clients per listener, the rest under client_comm=\"other\".";

const HELP_WAITS: &str = "Blocking connect() calls aimed at this Unix listener that took 10 ms \
    or more without being refused: they slept until its queue had room \
    (syscalls:sys_enter_connect / sys_exit_connect; only with sockq run --unix-connect-waits).";
const HELP_WAIT_SECONDS: &str = "Total time those blocking connects waited, seconds (divided by \
    sockq_unix_listen_connect_waits_total: the typical wait).";

const HELP_ENQUEUES: &str = "Connections queued on this Unix listener since sockq started \
    (sock:sk_data_ready on the listener, in unix_stream_connect).";
const HELP_MAX_DEPTH: &str = "Deepest queue seen on this Unix listener right after an enqueue \
    (sk_receive_queue.qlen at sock:sk_data_ready).";
const HELP_ACCEPTS: &str = "Connections accept()/accept4() returned from this Unix listener \
    (syscalls:sys_exit_accept4, the child stamped at its enqueue).";
const HELP_WAIT: &str = "Time each accepted connection waited in this Unix listener's queue: \
    from its enqueue (sock:sk_data_ready) to the accept()/accept4() that returned it.";
const HELP_ACCEPTOR: &str = "Connections accepted from this Unix listener by one thread (pid, \
    tid, comm). At most 32 threads per listener; the rest are summed under tid=\"other\".";

/// Clients listed per listener in the by-client family.
pub const MAX_CLIENTS_PER_LISTENER: usize = 16;

pub(super) fn families(snapshot: &Snapshot, classic: ClassicBuckets) -> Vec<Family> {
    let mut len = Family::gauge("sockq_unix_listen_queue_length", HELP_LEN);
    let mut limit = Family::gauge("sockq_unix_listen_queue_limit", HELP_LIMIT);
    let mut info = Family::gauge("sockq_unix_listener_info", HELP_INFO);
    let mut full = Family::gauge("sockq_unix_listen_queue_full", HELP_FULL);
    let mut refused = Family::counter("sockq_unix_listen_refused_connects_total", HELP_REFUSED);
    let mut refused_by = Family::counter(
        "sockq_unix_listen_refused_connects_by_client_total",
        HELP_REFUSED_BY,
    );
    let mut waits = Family::counter("sockq_unix_listen_connect_waits_total", HELP_WAITS);
    let mut wait_seconds = Family::counter(
        "sockq_unix_listen_connect_wait_seconds_total",
        HELP_WAIT_SECONDS,
    );
    let mut queue = QueueFamilies::new();
    // Blocking connects are timed only with the connect entry program attached
    // (`--unix-connect-waits`): without it their series would say 0 for "unknown".
    let waits_timed = snapshot
        .probes
        .iter()
        .any(|p| p.name == "sys_enter_connect" && p.attached);
    let mut listeners: Vec<&UnixListener> = snapshot.unix_listeners.iter().collect();
    listeners.sort_by(|a, b| (a.netns, &a.name, a.inode).cmp(&(b.netns, &b.name, b.inode)));
    for l in listeners {
        let id = labels(l);
        limit.push(id.clone(), l.queue_limit);
        push_info(&mut info, snapshot, l, &id);
        if l.is_quiet() {
            // Its other series would all be 0 (README: "The series each listener costs").
            continue;
        }
        len.push(id.clone(), l.queue_len);
        full.push(id.clone(), l.queue_full);
        queue.push(snapshot, l, &id, classic);
        let Some(k) = &l.kernel else { continue };
        refused.push(id.clone(), k.refused);
        if waits_timed {
            waits.push(id.clone(), k.waited);
            wait_seconds.push_float(id.clone(), k.wait_seconds);
        }
        let (listed, rest) = k
            .refused_by
            .split_at(k.refused_by.len().min(MAX_CLIENTS_PER_LISTENER));
        for c in listed {
            let mut labels = id.clone();
            labels.push("client_pid", c.pid.to_string());
            labels.push("client_comm", c.comm.as_str());
            refused_by.push(labels, c.refused);
        }
        if !rest.is_empty() {
            let mut labels = id.clone();
            labels.push("client_pid", String::new());
            labels.push("client_comm", "other");
            refused_by.push(labels, rest.iter().map(|c| c.refused).sum::<u64>());
        }
    }
    let mut out = vec![
        len,
        limit,
        info,
        full,
        refused,
        refused_by,
        waits,
        wait_seconds,
    ];
    out.extend(queue.into_families());
    out
}

/// What the accept probes measured on Unix listeners.
struct QueueFamilies {
    enqueues: Family,
    max_depth: Family,
    accepts: Family,
    wait: Family,
    acceptors: Family,
}

impl QueueFamilies {
    fn new() -> Self {
        Self {
            enqueues: Family::counter("sockq_unix_listen_enqueues_total", HELP_ENQUEUES),
            max_depth: Family::gauge("sockq_unix_listen_queue_max_depth", HELP_MAX_DEPTH),
            accepts: Family::counter("sockq_unix_listen_accepts_total", HELP_ACCEPTS),
            wait: Family::histogram("sockq_unix_accept_wait_seconds", HELP_WAIT),
            acceptors: Family::counter("sockq_unix_acceptor_accepts_total", HELP_ACCEPTOR),
        }
    }

    fn push(
        &mut self,
        snapshot: &Snapshot,
        l: &UnixListener,
        id: &Labels,
        classic: ClassicBuckets,
    ) {
        let Some(q) = &l.queue else { return };
        self.enqueues.push(id.clone(), q.enqueues);
        self.max_depth.push(id.clone(), q.max_depth);
        self.accepts.push(id.clone(), q.accepts);
        if q.accept_wait.count() > 0 {
            let value = kernel_histogram(&q.accept_wait, Grid::Wait, classic);
            self.wait.push_histogram(id.clone(), value);
        }
        let mut threads: Vec<_> = snapshot.acceptors.of(l.inode).iter().collect();
        threads.sort_by(|a, b| b.accepts.cmp(&a.accepts).then(a.tid.cmp(&b.tid)));
        let mut other = 0u64;
        for (i, a) in threads.iter().enumerate() {
            if i < MAX_ACCEPTORS_PER_LISTENER {
                let mut labels = id.clone();
                labels.push("pid", a.pid.to_string());
                labels.push("tid", a.tid.to_string());
                labels.push("comm", a.comm.as_str());
                self.acceptors.push(labels, a.accepts);
            } else {
                other = other.saturating_add(a.accepts);
            }
        }
        if threads.len() > MAX_ACCEPTORS_PER_LISTENER {
            let mut labels = id.clone();
            labels.push("pid", String::new());
            labels.push("tid", "other");
            labels.push("comm", String::new());
            self.acceptors.push(labels, other);
        }
    }

    fn into_families(self) -> [Family; 5] {
        [
            self.enqueues,
            self.max_depth,
            self.accepts,
            self.wait,
            self.acceptors,
        ]
    }
}

/// One `sockq_unix_listener_info` series per owner (one with empty owner labels when
/// none is known).
fn push_info(info: &mut Family, snapshot: &Snapshot, l: &UnixListener, id: &Labels) {
    let distinct = super::distinct_owners(&l.owners);
    let owners: Vec<(Option<u32>, &str, &str)> = if distinct.is_empty() {
        vec![(None, "", "")]
    } else {
        distinct
            .into_iter()
            .map(|(p, c, k)| (Some(p), c, k))
            .collect()
    };
    let pattern = snapshot
        .patterns
        .get(&l.inode)
        .map_or("undetermined", |p| p.pattern.name());
    for (pid, comm, container) in owners {
        let mut labels = id.clone();
        labels.push("type", l.socket_type.name());
        labels.push("kind", kind_name(l));
        labels.push("pid", pid.map(|p| p.to_string()).unwrap_or_default());
        labels.push("comm", comm);
        labels.push("container", container);
        labels.push("pattern", pattern);
        info.push(labels, 1_u8);
    }
}

fn kind_name(l: &UnixListener) -> &'static str {
    match l.name_kind {
        crate::model::unix::UnixNameKind::Path => "path",
        crate::model::unix::UnixNameKind::Abstract => "abstract",
        crate::model::unix::UnixNameKind::Unnamed => "unnamed",
    }
}

/// The labels that identify a Unix listener.
fn labels(l: &UnixListener) -> Labels {
    Labels::shared([
        ("netns", l.netns.to_string()),
        ("path", l.name.clone()),
        ("socket", l.inode.to_string()),
    ])
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{
        export::prometheus::{BuildInfo, render},
        model::{
            Owner,
            unix::{UnixClient, UnixKernelStats, UnixSocketType, display_name},
        },
    };

    const HOSTILE: &[u8] = b"/tmp/a\"b\\c\nd{}=,";

    fn listener(address: &[u8], inode: u64) -> UnixListener {
        let (name, name_kind) = display_name(address);
        UnixListener {
            netns: 4026531840,
            name,
            name_kind,
            socket_type: UnixSocketType::Stream,
            inode,
            cookie: 1,
            queue_len: 5,
            queue_limit: 4,
            owners: vec![Owner::new(7, "php-fpm8.2")],
            address: address.to_vec(),
            kernel: Some(UnixKernelStats {
                refused: 8,
                refused_by: vec![UnixClient {
                    pid: 9,
                    comm: "nginx".into(),
                    refused: 8,
                }],
                waited: 2,
                wait_seconds: 0.5,
            }),
            queue_full: true,
            queue: Some(crate::model::unix::UnixQueueStats {
                enqueues: 13,
                max_depth: 5,
                accepts: 4,
                accept_wait: crate::model::Histogram {
                    bounds: vec![0.001, 0.002],
                    counts: vec![1, 3, 0],
                    sum: 0.007,
                },
                ..crate::model::unix::UnixQueueStats::default()
            }),
        }
    }

    fn text() -> String {
        let snapshot = Snapshot {
            unix_listeners: vec![listener(HOSTILE, 11), listener(b"\0sockq", 12)],
            ..Snapshot::default()
        };
        let build = BuildInfo {
            version: "0".into(),
            git_commit: "x".into(),
            kernel_release: "y".into(),
        };
        render(&snapshot, &build).expect("render")
    }

    /// Undoes the text format's label-value escaping (`\\`, `\"`, `\n`).
    fn unescape(value: &str) -> String {
        let mut out = String::new();
        let mut chars = value.chars();
        while let Some(c) = chars.next() {
            if c == '\\' {
                match chars.next() {
                    Some('n') => out.push('\n'),
                    Some(other) => out.push(other),
                    None => out.push('\\'),
                }
            } else {
                out.push(c);
            }
        }
        out
    }

    /// The `path` label value of each sample of `family`, unescaped.
    fn paths(text: &str, family: &str) -> Vec<String> {
        text.lines()
            .filter_map(|l| l.strip_prefix(family)?.strip_prefix('{'))
            .filter_map(|l| {
                let start = l.find("path=\"")? + "path=\"".len();
                let rest = &l[start..];
                let mut end = None;
                let mut escaped = false;
                for (i, c) in rest.char_indices() {
                    match (escaped, c) {
                        (false, '\\') => escaped = true,
                        (false, '"') => {
                            end = Some(i);
                            break;
                        }
                        _ => escaped = false,
                    }
                }
                Some(unescape(&rest[..end?]))
            })
            .collect()
    }

    #[test]
    fn hostile_path_round_trips() {
        let text = text();
        for line in text.lines() {
            assert!(
                line.starts_with("# ") || line.starts_with("sockq_"),
                "a path split a line: {line:?}"
            );
        }
        let hostile = String::from_utf8(HOSTILE.to_vec()).expect("utf-8");
        for family in [
            "sockq_unix_listen_queue_length",
            "sockq_unix_listen_refused_connects_total",
            "sockq_unix_listener_info",
        ] {
            assert_eq!(
                paths(&text, family),
                [hostile.clone(), "@sockq".to_owned()],
                "{family} in:\n{text}"
            );
        }
    }

    #[test]
    fn series_values() {
        let text = text();
        for expected in [
            "sockq_unix_listen_queue_length{netns=\"4026531840\",path=\"@sockq\",socket=\"12\"} 5",
            "sockq_unix_listen_queue_limit{netns=\"4026531840\",path=\"@sockq\",socket=\"12\"} 4",
            "sockq_unix_listen_refused_connects_total{netns=\"4026531840\",path=\"@sockq\",socket=\"12\"} 8",
            "sockq_unix_listen_refused_connects_by_client_total{netns=\"4026531840\",path=\"@sockq\",socket=\"12\",client_pid=\"9\",client_comm=\"nginx\"} 8",
            "sockq_unix_listener_info{netns=\"4026531840\",path=\"@sockq\",socket=\"12\",type=\"stream\",kind=\"abstract\",pid=\"7\",comm=\"php-fpm8.2\",container=\"\",pattern=\"undetermined\"} 1",
            "sockq_unix_listen_queue_full{netns=\"4026531840\",path=\"@sockq\",socket=\"12\"} 1",
        ] {
            assert!(text.contains(expected), "{expected} not in:\n{text}");
        }
    }

    #[test]
    fn every_family_is_in_the_readme() {
        let readme = include_str!("../../../../README.md");
        let text = text();
        let missing: Vec<&str> = text
            .lines()
            .filter_map(|l| l.strip_prefix("# HELP sockq_unix"))
            .filter_map(|l| l.split_whitespace().next())
            .filter(|rest| !readme.contains(&format!("`sockq_unix{rest}")))
            .collect();
        assert!(missing.is_empty(), "not in README.md: {missing:?}");
    }
}
