//! Nagle holds, delayed ACKs and their stalls, from the kernel's per-(netns, port,
//! process) aggregates (`CONN_STATS`) and its stall events.
//!
//! The kernel map is an LRU: an entry can age out and come back from zero. The
//! [`Accumulator`] adds each entry's growth since the last poll to totals kept here,
//! so the exported counters never go backwards. Series are keyed by network
//! namespace, listener (when the local port is a listener's: the server side of a
//! connection) and process; at most [`MAX_SERIES`] of them, the rest summed under
//! `comm="other"`.

use std::collections::{BTreeMap, HashMap};

use collector_common::{
    listener::{AF_INET, AF_INET6},
    nagle::{ConnKey, ConnStats, StallEvent, TCP_NAGLE_CORK, TCP_NAGLE_OFF},
    queue::{WAIT_BUCKETS, wait_bucket_upper_us},
};
use serde::Serialize;

use crate::model::{
    Histogram, Listener,
    nagle::{NagleSeries, SeriesKey},
};

/// Series kept per metric; beyond, new (netns, listener, process) keys are summed.
pub const MAX_SERIES: usize = 256;

#[derive(Debug, Clone, Copy)]
struct Totals(ConnStats);

impl Default for Totals {
    fn default() -> Self {
        Self(ConnStats::ZERO)
    }
}

/// Growth of a kernel counter since `prev`; a smaller value means the entry was
/// evicted and created anew, so all of it is new.
fn growth(current: u64, prev: u64) -> u64 {
    if current >= prev {
        current - prev
    } else {
        current
    }
}

impl Totals {
    fn add_growth(&mut self, cur: &ConnStats, prev: &ConnStats) {
        let t = &mut self.0;
        let add = |total: &mut u64, c: u64, p: u64| *total = total.saturating_add(growth(c, p));
        add(&mut t.delack_armed, cur.delack_armed, prev.delack_armed);
        add(&mut t.delack_fired, cur.delack_fired, prev.delack_fired);
        add(
            &mut t.delack_cancelled,
            cur.delack_cancelled,
            prev.delack_cancelled,
        );
        add(&mut t.delay_sum_ns, cur.delay_sum_ns, prev.delay_sum_ns);
        add(&mut t.holds, cur.holds, prev.holds);
        add(&mut t.hold_sum_ns, cur.hold_sum_ns, prev.hold_sum_ns);
        add(&mut t.stalls, cur.stalls, prev.stalls);
        add(&mut t.stall_sum_ns, cur.stall_sum_ns, prev.stall_sum_ns);
        for i in 0..WAIT_BUCKETS {
            add(&mut t.delay_hist[i], cur.delay_hist[i], prev.delay_hist[i]);
            add(&mut t.hold_hist[i], cur.hold_hist[i], prev.hold_hist[i]);
        }
    }
}

/// Keeps the totals across polls.
#[derive(Debug, Default)]
pub struct Accumulator {
    last: HashMap<ConnKey, ConnStats>,
    totals: BTreeMap<SeriesKey, Totals>,
    comms: HashMap<u32, String>,
}

impl Accumulator {
    /// Adds what the kernel counted since the last call. `comm_of` names a process
    /// (`/proc/PID/comm`; `None` once it has exited: the last name seen is kept).
    pub fn update(
        &mut self,
        entries: &[(ConnKey, ConnStats)],
        listeners: &[Listener],
        comm_of: impl Fn(u32) -> Option<String>,
    ) {
        let ports: HashMap<(u64, u16), String> = listeners
            .iter()
            .map(|l| ((l.netns, l.port), l.listen_addr()))
            .collect();
        // A process that exited and has no kernel entries left gives its series up
        // first, so that the cap is shared by the processes that exist (recycled
        // workers would otherwise fill it for good and push newcomers into `other`).
        let writing: std::collections::HashSet<u32> = entries.iter().map(|(k, _)| k.tgid).collect();
        self.totals.retain(|series, _| {
            series.pid == 0 || writing.contains(&series.pid) || comm_of(series.pid).is_some()
        });
        let mut seen = HashMap::with_capacity(entries.len());
        for (key, cur) in entries {
            let prev = self.last.get(key).copied().unwrap_or(ConnStats::ZERO);
            if *cur != prev {
                let comm = match comm_of(key.tgid) {
                    Some(c) => {
                        self.comms.insert(key.tgid, c.clone());
                        c
                    }
                    None => self.comms.get(&key.tgid).cloned().unwrap_or_default(),
                };
                let mut series = SeriesKey {
                    netns: u64::from(key.netns),
                    listen_addr: ports
                        .get(&(u64::from(key.netns), key.port))
                        .cloned()
                        .unwrap_or_default(),
                    pid: key.tgid,
                    comm,
                };
                if !self.totals.contains_key(&series) && self.totals.len() >= MAX_SERIES {
                    series.pid = 0;
                    series.comm = "other".into();
                }
                self.totals
                    .entry(series)
                    .or_default()
                    .add_growth(cur, &prev);
            }
            seen.insert(*key, *cur);
        }
        self.last = seen;
        // Names are only needed while the kernel still has entries of the process:
        // without this the cache would grow with every pid ever seen.
        let live: std::collections::HashSet<u32> = self.last.keys().map(|k| k.tgid).collect();
        self.comms.retain(|tgid, _| live.contains(tgid));
    }

    pub fn series(&self) -> Vec<NagleSeries> {
        self.totals
            .iter()
            .map(|(key, Totals(t))| NagleSeries {
                key: key.clone(),
                delack_armed: t.delack_armed,
                delack_fired: t.delack_fired,
                delack_cancelled: t.delack_cancelled,
                delack_delay: histogram(&t.delay_hist, t.delay_sum_ns),
                nagle_hold: histogram(&t.hold_hist, t.hold_sum_ns),
                stalls: t.stalls,
                stall_seconds: t.stall_sum_ns as f64 / 1e9,
            })
            .collect()
    }
}

/// The kernel's microsecond buckets (`wait_bucket`) in seconds.
pub fn histogram(counts: &[u64; WAIT_BUCKETS], sum_ns: u64) -> Histogram {
    Histogram {
        bounds: (0..WAIT_BUCKETS - 1)
            .map(|b| wait_bucket_upper_us(b) as f64 / 1e6)
            .collect(),
        counts: counts.to_vec(),
        sum: sum_ns as f64 / 1e9,
    }
}

/// A process at one end of a connection.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct Peer {
    pub pid: u32,
    pub comm: String,
}

/// A notable event: Nagle on one side and a delayed ACK on the other stalled a
/// connection (`type` = `nagle_delayed_ack_stall`, schema 1). Fields:
/// `connection` (`local -> remote`), `netns`, `pid`/`tid`/`comm` of the writer,
/// `nodelay`/`cork` (the writer's socket options), `stall_seconds` (this stall),
/// `min_rtt_seconds` (the connection's minimum RTT), `stalls_on_connection` (so far; events are at most one a second
/// per connection), `peer` (the local process at the other end, when there is one),
/// `message` and `fix`.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct StallNotice {
    #[serde(rename = "type")]
    pub kind: &'static str,
    pub schema: u32,
    pub time: String,
    pub netns: u64,
    pub connection: String,
    pub local: String,
    pub remote: String,
    pub pid: u32,
    pub tid: u32,
    pub comm: String,
    pub nodelay: bool,
    pub cork: bool,
    pub stall_seconds: f64,
    pub min_rtt_seconds: f64,
    pub stalls_on_connection: u32,
    pub peer: Option<Peer>,
    pub message: String,
    pub fix: &'static str,
}

pub const FIX: &str = "set TCP_NODELAY on the writing socket, or make each request one \
    write (writev/sendmsg with all parts, or TCP_CORK around the parts), or have the reader \
    acknowledge at once (TCP_QUICKACK)";

/// Local and remote address of the event's connection.
pub fn endpoints(ev: &StallEvent) -> Option<(std::net::SocketAddr, std::net::SocketAddr)> {
    let ip = |bytes: [u8; 16]| -> Option<std::net::IpAddr> {
        match ev.family {
            AF_INET => Some(std::net::Ipv4Addr::new(bytes[0], bytes[1], bytes[2], bytes[3]).into()),
            AF_INET6 => Some(std::net::Ipv6Addr::from(bytes).into()),
            _ => None,
        }
    };
    Some((
        std::net::SocketAddr::new(ip(ev.saddr)?, ev.sport),
        std::net::SocketAddr::new(ip(ev.daddr)?, ev.dport),
    ))
}

pub fn notice(ev: &StallEvent, time: String, peer: Option<Peer>) -> Option<StallNotice> {
    let (local, remote) = endpoints(ev)?;
    let comm = String::from_utf8_lossy(crate::text::comm_bytes(&ev.comm)).into_owned();
    let stall = ev.hold_ns as f64 / 1e9;
    let peer_text = match &peer {
        Some(p) => format!(" (peer pid {} \"{}\")", p.pid, crate::text::escape(&p.comm)),
        None => String::new(),
    };
    let message = format!(
        "Nagle x delayed-ACK stall on {local} -> {remote}{peer_text}: pid {} tid {} \"{}\" \
         wrote a small segment that Nagle held {:.1} ms until the peer's delayed ACK \
         (minimum RTT {:.3} ms); {} stalls on this connection so far",
        ev.tgid,
        ev.tid,
        crate::text::escape(&comm),
        stall * 1e3,
        f64::from(ev.min_rtt_us) / 1e3,
        ev.stalls,
    );
    Some(StallNotice {
        kind: "nagle_delayed_ack_stall",
        schema: 1,
        time,
        netns: u64::from(ev.netns),
        connection: format!("{local} -> {remote}"),
        local: local.to_string(),
        remote: remote.to_string(),
        pid: ev.tgid,
        tid: ev.tid,
        comm,
        nodelay: ev.nonagle & TCP_NAGLE_OFF != 0,
        cork: ev.nonagle & TCP_NAGLE_CORK != 0,
        stall_seconds: stall,
        min_rtt_seconds: f64::from(ev.min_rtt_us) / 1e6,
        stalls_on_connection: ev.stalls,
        peer,
        message,
        fix: FIX,
    })
}

#[cfg(test)]
mod tests {

    use collector_common::queue::wait_bucket;

    use super::*;

    fn key(tgid: u32, port: u16) -> ConnKey {
        ConnKey {
            netns: 7,
            tgid,
            port,
            _pad: [0; 6],
        }
    }

    fn stats(stalls: u64, fired: u64) -> ConnStats {
        let mut s = ConnStats::ZERO;
        s.stalls = stalls;
        s.stall_sum_ns = stalls * 40_000_000;
        s.delack_fired = fired;
        s.delay_hist[wait_bucket(40_000)] = fired;
        s
    }

    fn listener(port: u16) -> Listener {
        Listener::loopback_for_test(7, port, 1)
    }

    #[test]
    fn totals_survive_eviction_and_name_listeners() {
        let mut acc = Accumulator::default();
        let comm = |pid: u32| (pid == 10).then(|| "client".to_owned());
        let server_port = 8080;
        acc.update(
            &[
                (key(10, 40000), stats(3, 0)),
                (key(20, server_port), stats(0, 5)),
            ],
            &[listener(server_port)],
            comm,
        );
        // The client entry was evicted and came back with 2 new stalls; the server's
        // grew by 1; pid 20 has exited (its name stays unknown, not invented).
        acc.update(
            &[
                (key(10, 40000), stats(2, 0)),
                (key(20, server_port), stats(0, 6)),
            ],
            &[listener(server_port)],
            comm,
        );
        let series = acc.series();
        let client = series.iter().find(|s| s.key.pid == 10).expect("client");
        assert_eq!(client.stalls, 5);
        assert_eq!(client.key.listen_addr, "");
        assert_eq!(client.key.comm, "client");
        assert!((client.stall_seconds - 0.2).abs() < 1e-9);
        let server = series.iter().find(|s| s.key.pid == 20).expect("server");
        assert_eq!(server.key.listen_addr, "127.0.0.1:8080");
        assert_eq!(server.delack_fired, 6);
        assert_eq!(server.delack_delay.count(), 6);
        let p50 = server.delack_delay.quantile_bound(0.5).expect("non-empty");
        assert!((0.040..=0.041).contains(&p50), "{p50}");
    }

    #[test]
    fn series_are_bounded() {
        let mut acc = Accumulator::default();
        let entries: Vec<_> = (0..MAX_SERIES as u32 + 50)
            .map(|pid| (key(pid + 1, 1000), stats(1, 0)))
            .collect();
        acc.update(&entries, &[], |pid| Some(format!("p{pid}")));
        let series = acc.series();
        assert_eq!(series.len(), MAX_SERIES + 1);
        let other = series
            .iter()
            .find(|s| s.key.comm == "other")
            .expect("other");
        assert_eq!(other.stalls, 50);
        assert_eq!(
            series.iter().map(|s| s.stalls).sum::<u64>(),
            MAX_SERIES as u64 + 50
        );
    }

    #[test]
    fn exited_processes_give_their_series_up() {
        let mut acc = Accumulator::default();
        let first: Vec<_> = (0..MAX_SERIES as u32)
            .map(|pid| (key(pid + 1, 1000), stats(1, 0)))
            .collect();
        acc.update(&first, &[], |pid| Some(format!("p{pid}")));
        assert_eq!(acc.series().len(), MAX_SERIES);
        // All of them exit and their kernel entries age out; a new process writes.
        let newcomer = [(key(10_000, 1000), stats(2, 0))];
        acc.update(&newcomer, &[], |pid| {
            (pid == 10_000).then(|| "new".to_owned())
        });
        let series = acc.series();
        assert_eq!(series.len(), 1, "{series:?}");
        assert_eq!(series[0].key.comm, "new", "not summed under other");
        assert_eq!(series[0].stalls, 2);
        // A live process without kernel entries keeps its series.
        let mut acc = Accumulator::default();
        acc.update(&first[..1], &[], |pid| Some(format!("p{pid}")));
        acc.update(&[], &[], |pid| Some(format!("p{pid}")));
        assert_eq!(acc.series().len(), 1);
    }

    #[test]
    fn notice_names_both_ends_and_escapes() {
        let mut comm = [0u8; 16];
        comm[..6].copy_from_slice(b"a\"b\nc\x01");
        let ev = StallEvent {
            kind: collector_common::nagle::EVENT_STALL,
            netns: 7,
            sk: 1,
            timestamp_ns: 0,
            hold_ns: 40_500_000,
            tgid: 10,
            tid: 11,
            min_rtt_us: 50,
            stalls: 3,
            family: AF_INET,
            sport: 40000,
            dport: 8080,
            nonagle: 0,
            _pad: 0,
            saddr: [127, 0, 0, 1, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0],
            daddr: [127, 0, 0, 1, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0],
            comm,
        };
        let peer = Peer {
            pid: 20,
            comm: "server".into(),
        };
        let n = notice(&ev, "t".into(), Some(peer)).expect("notice");
        assert_eq!(n.connection, "127.0.0.1:40000 -> 127.0.0.1:8080");
        assert!(!n.nodelay && !n.cork);
        assert!((n.stall_seconds - 0.0405).abs() < 1e-12);
        assert!(n.message.contains("40.5 ms"), "{}", n.message);
        assert!(n.message.contains("peer pid 20"), "{}", n.message);
        assert!(!n.message.contains('\n'), "{}", n.message);
        assert!(n.fix.contains("TCP_NODELAY"));
        let unknown = StallEvent { family: 99, ..ev };
        assert!(notice(&unknown, "t".into(), None).is_none());
    }
}
