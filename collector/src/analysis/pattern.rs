//! The backend's execution pattern behind a listener, from what the probes saw:
//!
//! 1. `single_thread`: one thread listens, accepts and reads;
//! 2. `acceptor_handoff`: one acceptor thread hands each connection to a reader thread;
//! 3. `acceptor_message_balancing`: one acceptor, and each connection's messages are
//!    read by several worker threads;
//! 4. `multi_acceptor`: several threads (or processes) accept on one socket;
//! 5. `reuseport_shards`: several sockets sharded with SO_REUSEPORT, each accepted from.
//!
//! Evidence: the threads that accepted from each socket (`ACCEPTORS`), the sockets
//! sharing an address and port, and for a sample of accepted connections which
//! threads read their first messages (`sock:sock_recv_length`). Where the evidence is
//! not enough, the answer is `undetermined`, with what is missing; never a guess.

use std::collections::{BTreeMap, BTreeSet};

use crate::model::{
    Acceptors, Listener,
    pattern::{Pattern, PatternReport},
};

/// Sampled connections needed before 1-3 are told apart.
pub const MIN_SAMPLED: u64 = 3;
/// Share of sampled connections that must agree.
pub const AGREEMENT: f64 = 0.8;

/// Classifies every listener. `acceptors` are all threads seen accepting;
/// `reads_seen`: whether the probe that sees who reads (`sock_recv_length`) runs.
pub fn classify(
    listeners: &[Listener],
    acceptors: &Acceptors,
    reads_seen: bool,
) -> BTreeMap<u64, PatternReport> {
    // Sockets sharing an address and port in a namespace form a group.
    let mut groups: BTreeMap<(u64, String), Vec<u64>> = BTreeMap::new();
    for l in listeners {
        groups
            .entry((l.netns, l.listen_addr()))
            .or_default()
            .push(l.inode);
    }
    let threads_of = |inode: u64| -> BTreeSet<u32> {
        acceptors
            .of(inode)
            .iter()
            .filter(|a| a.accepts > 0)
            .map(|a| a.tid)
            .collect()
    };
    listeners
        .iter()
        .map(|l| {
            let group = &groups[&(l.netns, l.listen_addr())];
            let shards_accepting = group.iter().filter(|&&i| !threads_of(i).is_empty()).count();
            (
                l.inode,
                classify_one(
                    l.kernel.as_ref().map(Reads::of),
                    group.len(),
                    shards_accepting,
                    &threads_of(l.inode),
                    reads_seen,
                ),
            )
        })
        .collect()
}

/// Who read a listener's sampled accepted connections (`sock:sock_recv_length`).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Reads {
    pub by_acceptor: u64,
    pub by_one_other: u64,
    pub by_several: u64,
}

impl Reads {
    fn of(k: &crate::model::ListenerKernelStats) -> Self {
        Self {
            by_acceptor: k.read_by_acceptor,
            by_one_other: k.read_by_one_other,
            by_several: k.read_by_several,
        }
    }
}

/// The pattern of a Unix listener (a socket of its own: no SO_REUSEPORT group);
/// `reads` is `None` without the accept probes.
pub fn classify_unix(
    inode: u64,
    reads: Option<Reads>,
    acceptors: &Acceptors,
    reads_seen: bool,
) -> PatternReport {
    let threads: BTreeSet<u32> = acceptors
        .of(inode)
        .iter()
        .filter(|a| a.accepts > 0)
        .map(|a| a.tid)
        .collect();
    classify_one(reads, 1, 0, &threads, reads_seen)
}

fn classify_one(
    reads: Option<Reads>,
    group_size: usize,
    shards_accepting: usize,
    threads: &BTreeSet<u32>,
    reads_seen: bool,
) -> PatternReport {
    let report = |pattern, evidence: String| PatternReport { pattern, evidence };
    if group_size > 1 && shards_accepting >= 2 {
        return report(
            Pattern::ReuseportShards,
            format!("{group_size} sockets share this address, {shards_accepting} accept"),
        );
    }
    match threads.len() {
        0 => {
            let why = if reads.is_none() {
                "no eBPF probes".to_owned()
            } else {
                "no accept() seen yet".to_owned()
            };
            return report(Pattern::Undetermined, why);
        }
        1 => {}
        n => {
            return report(
                Pattern::MultiAcceptor,
                format!("{n} threads accept on this socket"),
            );
        }
    }
    let Some(k) = reads else {
        return report(Pattern::Undetermined, "no eBPF probes".into());
    };
    if !reads_seen {
        return report(
            Pattern::Undetermined,
            "one acceptor thread; who reads its connections is not seen on this kernel \
             (probe sock_recv_length not attached: see `sockq doctor`)"
                .into(),
        );
    }
    let sampled = k.by_acceptor + k.by_one_other + k.by_several;
    if sampled < MIN_SAMPLED {
        return report(
            Pattern::Undetermined,
            format!(
                "one acceptor thread; {sampled} of {MIN_SAMPLED} sampled connections read so far"
            ),
        );
    }
    let share = |n: u64| n as f64 / sampled as f64;
    let evidence = format!(
        "one acceptor thread; of {sampled} sampled connections, {} read by the acceptor, \
         {} by one other thread, {} by several",
        k.by_acceptor, k.by_one_other, k.by_several
    );
    let pattern = if share(k.by_acceptor) >= AGREEMENT {
        Pattern::SingleThread
    } else if share(k.by_one_other) >= AGREEMENT {
        Pattern::AcceptorHandoff
    } else if share(k.by_several) >= AGREEMENT {
        Pattern::AcceptorMessageBalancing
    } else {
        Pattern::Undetermined
    };
    report(pattern, evidence)
}

/// max / mean of the values (1.0 when perfectly even; `None` without values or when
/// all are zero).
pub fn imbalance(values: &[u64]) -> Option<f64> {
    let max = *values.iter().max()?;
    let total: u64 = values.iter().sum();
    if total == 0 {
        return None;
    }
    Some(max as f64 / (total as f64 / values.len() as f64))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::{Acceptor, ListenerKernelStats};

    fn listener(inode: u64, port: u16, reads: (u64, u64, u64)) -> Listener {
        Listener {
            kernel: Some(ListenerKernelStats {
                read_by_acceptor: reads.0,
                read_by_one_other: reads.1,
                read_by_several: reads.2,
                ..ListenerKernelStats::default()
            }),
            ..Listener::loopback_for_test(1, port, inode)
        }
    }

    fn acceptor(socket: u64, tid: u32, accepts: u64) -> Acceptor {
        Acceptor {
            socket,
            pid: 1,
            tid,
            comm: "t".into(),
            accepts,
            state: "S".into(),
            wchan: String::new(),
        }
    }

    fn one(l: Listener, acceptors: &[Acceptor]) -> Pattern {
        let inode = l.inode;
        classify(&[l], &acceptors.to_vec().into(), true)[&inode].pattern
    }

    #[test]
    fn one_acceptor_by_readers() {
        let a = [acceptor(1, 10, 20)];
        assert_eq!(one(listener(1, 80, (9, 1, 0)), &a), Pattern::SingleThread);
        assert_eq!(
            one(listener(1, 80, (0, 5, 0)), &a),
            Pattern::AcceptorHandoff
        );
        assert_eq!(
            one(listener(1, 80, (0, 1, 6)), &a),
            Pattern::AcceptorMessageBalancing
        );
        assert_eq!(one(listener(1, 80, (3, 3, 3)), &a), Pattern::Undetermined);
        assert_eq!(
            one(listener(1, 80, (1, 0, 0)), &a),
            Pattern::Undetermined,
            "too few"
        );
    }

    #[test]
    fn acceptors_and_shards() {
        let a = [acceptor(1, 10, 5), acceptor(1, 11, 7)];
        assert_eq!(one(listener(1, 80, (0, 0, 0)), &a), Pattern::MultiAcceptor);
        assert_eq!(one(listener(1, 80, (0, 0, 0)), &[]), Pattern::Undetermined);
        // Two shards of one address, each with its acceptor.
        let ls = [listener(1, 80, (0, 0, 0)), listener(2, 80, (0, 0, 0))];
        let a = [acceptor(1, 10, 5), acceptor(2, 11, 7)];
        let r = classify(&ls, &a.to_vec().into(), true);
        assert_eq!(r[&1].pattern, Pattern::ReuseportShards);
        assert_eq!(r[&2].pattern, Pattern::ReuseportShards);
        // A group where only one shard accepts is judged socket by socket.
        let a = [acceptor(1, 10, 5)];
        let r = classify(&ls, &a.to_vec().into(), true);
        assert_eq!(r[&2].pattern, Pattern::Undetermined);
    }

    #[test]
    fn imbalance_is_max_over_mean() {
        assert_eq!(imbalance(&[5, 5, 5, 5]), Some(1.0));
        assert_eq!(imbalance(&[40, 0, 0, 0]), Some(4.0));
        assert_eq!(imbalance(&[]), None);
        assert_eq!(imbalance(&[0, 0]), None);
    }

    #[test]
    fn unix_listeners_are_classified_alone() {
        let acceptors: Acceptors =
            vec![acceptor(9, 1, 5), acceptor(9, 2, 7), acceptor(8, 3, 1)].into();
        let reads = Some(Reads::default());
        assert_eq!(
            classify_unix(9, reads, &acceptors, true).pattern,
            Pattern::MultiAcceptor
        );
        let single = classify_unix(
            8,
            Some(Reads {
                by_acceptor: 4,
                ..Reads::default()
            }),
            &acceptors,
            true,
        );
        assert_eq!(single.pattern, Pattern::SingleThread);
        let none = classify_unix(7, None, &acceptors, true);
        assert_eq!(
            (none.pattern, none.evidence.as_str()),
            (Pattern::Undetermined, "no eBPF probes")
        );
    }
}
