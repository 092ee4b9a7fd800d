//! Reading what the programs aggregated, and removing what userspace owns: the
//! per-thread accept counts of listeners that closed.

use aya::{Ebpf, maps::MapError};
use collector_common::{
    nagle::{ConnKey, ConnStats, SENDS_CORK, SENDS_NAGLE, SENDS_NODELAY},
    queue::{AcceptorKey, DropKey, ListenerQueue},
    stats::{
        STAT_ACCEPTING_FULL, STAT_ACCEPTORS_FULL, STAT_ACCEPTS_UNATTRIBUTED, STAT_CONN_STATS_FULL,
        STAT_CONNS_FULL, STAT_DROP_REASONS_FULL, STAT_EVENTS_LOST, STAT_LISTENERS_FULL,
        STAT_QUEUED_FULL, STAT_READ_ERRORS, STAT_READERS_FULL, STAT_TRANSITIONS_FULL,
        STAT_UNIX_CONNECTING_FULL, STAT_UNIX_LOOKBACK_SHORT, STAT_UNIX_REFUSED_FULL,
        STAT_UNIX_UNSTAMPED, STAT_URING_DIRECT,
    },
};

use super::{OLDEST_QUEUED, ProbeError, Probes};
use crate::model::ProbeStatus;

/// Counters the programs keep about themselves.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct ProgramStats {
    /// Events that found the ring buffer full.
    pub events_lost: u64,
    /// Transitions not counted because the transition map was full.
    pub transitions_full: u64,
    /// Listeners whose accept-queue counters could not be created (map full).
    pub listeners_full: u64,
    /// Queued connections whose accept wait could not be measured (map full).
    pub queued_full: u64,
    /// Failed kernel reads.
    pub read_errors: u64,
    /// Connections whose Nagle/delayed-ACK state could not be created.
    pub conns_full: u64,
    /// Accepts not counted for their (listener, thread) (map full).
    pub acceptors_full: u64,
    /// Threads entering accept() that could not be noted (map full): accepts missed.
    pub accepting_full: u64,
    /// Listener drops not counted by reason (the LRU map refused an entry).
    pub drop_reasons_full: u64,
    /// Sampled connections whose readers could not be watched (LRU refused).
    pub readers_full: u64,
    /// Nagle/delayed-ACK counters of a (netns, port, process) that could not be
    /// created (LRU refused).
    pub conn_stats_full: u64,
    /// Accepts whose listener could not be known (`STAT_ACCEPTS_UNATTRIBUTED`).
    pub accepts_unattributed: u64,
    /// io_uring accepts into direct descriptors, which are not counted.
    pub uring_direct: u64,
    /// Unix connects whose thread could not be noted (`UNIX_CONNECTING` refused).
    pub unix_connecting_full: u64,
    /// Refused or waiting Unix connects not counted (`UNIX_REFUSED` full).
    pub unix_refused_full: u64,
    /// Unix enqueues that stamped as many connections as they look back over and
    /// left some unchecked (`STAT_UNIX_LOOKBACK_SHORT`).
    pub unix_lookback_short: u64,
    /// Unix accepts of connections no enqueue had stamped yet: counted, their waits
    /// not (`STAT_UNIX_UNSTAMPED`).
    pub unix_unstamped: u64,
    /// Runs of sockq's programs the kernel skipped, all programs summed: a hook that
    /// fires on a CPU where the same program is running (an interrupt or a softirq
    /// inside it) does not run it again, and the kernel counts the run it skipped
    /// (`recursion_misses` in the program's fdinfo, Linux 5.12+; 0 before). Each is an
    /// event no counter saw.
    pub recursion_misses: u64,
}

/// A TCP state transition as the kernel counts it: per namespace *key*, the
/// namespace's cookie where [`Probes::net_keys_are_cookies`], else its inode.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct NetTransition {
    pub net_key: u64,
    pub from: u8,
    pub to: u8,
}

/// What userspace reads from the kernel at each poll.
pub struct KernelView {
    pub transitions: Vec<(NetTransition, u64)>,
    /// Accept-queue counters by listener socket inode.
    pub queues: std::collections::HashMap<u64, ListenerQueue>,
    /// Accepts by (listener inode, pid, tid).
    pub acceptors: Vec<(AcceptorKey, u64)>,
    /// Drops by (listener inode, `enum skb_drop_reason`).
    pub drops: Vec<(DropKey, u64)>,
    /// Nagle / delayed-ACK measurements (empty with the family off).
    pub conns: Vec<(ConnKey, ConnStats)>,
    /// `sendmsg` calls by mode (`SENDS_*`), when the family runs.
    pub sends: Option<[u64; 3]>,
    pub stats: ProgramStats,
}

impl Probes {
    pub fn status(&self) -> &[ProbeStatus] {
        &self.status
    }

    /// This kernel's `enum skb_drop_reason` names, by value.
    pub fn drop_reason_names(&self) -> &std::collections::HashMap<u32, String> {
        &self.drop_reasons
    }

    /// Everything the programs aggregated, read in one go.
    pub fn read(&self) -> Result<KernelView, ProbeError> {
        let mut transitions = Vec::new();
        for entry in self.transitions.iter() {
            let (key, per_cpu) = entry.map_err(|source| map_error("TRANSITIONS", source))?;
            let total: u64 = per_cpu.iter().copied().fold(0, u64::wrapping_add);
            let key = NetTransition {
                net_key: key.netns,
                from: key.from,
                to: key.to,
            };
            transitions.push((key, total));
        }
        for (slot, net_key) in self.slots.assigned() {
            let per_cpu = self
                .slot_counts
                .get(&slot, 0)
                .map_err(|source| map_error("NETNS_SLOT_COUNTS", source))?;
            transitions.extend(super::netns_slots::slot_transitions(
                net_key,
                per_cpu.iter().map(|c| c.0.as_slice()),
            ));
        }
        // An entry evicted between get_next_key and lookup is simply skipped.
        let queues = self.queues.iter().flatten().collect();
        let acceptors = self.acceptors.iter().filter_map(Result::ok).collect();
        let drops = self.drops.iter().filter_map(Result::ok).collect();
        let conns = self.conn_stats.iter().filter_map(Result::ok).collect();
        let sends = if self.nagle_on {
            let mode = |index: u32| -> u64 {
                self.sends
                    .get(&index, 0)
                    .map(|per_cpu| per_cpu.iter().copied().fold(0, u64::wrapping_add))
                    .unwrap_or(0)
            };
            Some([mode(SENDS_NAGLE), mode(SENDS_NODELAY), mode(SENDS_CORK)])
        } else {
            None
        };
        Ok(KernelView {
            transitions,
            queues,
            acceptors,
            drops,
            conns,
            sends,
            stats: self.program_stats()?,
        })
    }

    /// For each of `listeners` (inodes) with counters in `queues`, how long the oldest
    /// connection still in its accept queue has waited, nanoseconds: the
    /// `oldest_queued` program run once per listener on its sock (`BPF_PROG_TEST_RUN`,
    /// a syscall each; no per-connection state). Listeners it cannot tell (a Unix
    /// listener, an empty queue, a listener closed meanwhile) are left out.
    pub fn oldest_waits(
        &self,
        queues: &std::collections::HashMap<u64, ListenerQueue>,
        listeners: impl Iterator<Item = u64>,
    ) -> std::collections::HashMap<u64, u64> {
        use aya::programs::{RawTracePoint, RawTracePointRunOptions, TestRun as _};
        let mut waits = std::collections::HashMap::new();
        let Some(program) = self
            ._ebpf
            .program(OLDEST_QUEUED)
            .and_then(|p| <&RawTracePoint>::try_from(p).ok())
        else {
            return waits;
        };
        for inode in listeners {
            let Some(sk) = queues.get(&inode).map(|q| q.sk).filter(|&sk| sk != 0) else {
                continue;
            };
            let mut args = [0u64; 12];
            args[0] = sk;
            args[1] = inode;
            match program.test_run(RawTracePointRunOptions { args, cpu: None }) {
                Ok(r) if r.return_value != 0 => {
                    waits.insert(inode, u64::from(r.return_value) * 1000);
                }
                Ok(_) => {}
                Err(e) => {
                    tracing::debug!("oldest_queued: {e}");
                    break;
                }
            }
        }
        waits
    }

    /// Whether the programs key namespaces by cookie (never reused) rather than inode.
    pub fn net_keys_are_cookies(&self) -> bool {
        self.net_cookies
    }

    /// After a poll: removes the transition counts of namespaces that no longer exist
    /// (`dead`), and hands namespace slots over (`netns_slots`) from the dead to the
    /// busiest of `counted` (this poll's transitions).
    pub fn settle_transitions(
        &mut self,
        dead: &std::collections::HashSet<u64>,
        counted: &[(NetTransition, u64)],
    ) -> Result<(), ProbeError> {
        self.remove_transitions_of(dead);
        // The table changes only once the maps say so: a failed write is retried at
        // the next poll.
        let mut slots = self.slots.clone();
        let changes = slots.settle(dead, counted);
        for slot in changes.zero {
            self.zero_slot(slot)?;
        }
        if let Some(keys) = changes.keys {
            self.slot_keys
                .set(0, keys, 0)
                .map_err(|source| map_error("NETNS_SLOT_KEYS", source))?;
        }
        self.slots = slots;
        Ok(())
    }

    /// Sets every CPU's counts of namespace slot `slot` to zero.
    fn zero_slot(&mut self, slot: u32) -> Result<(), ProbeError> {
        let error = |source| map_error("NETNS_SLOT_COUNTS", source);
        // As many values as the map has CPUs (the one length `try_from` takes).
        let cpus = self.slot_counts.get(&slot, 0).map_err(error)?.len();
        let zeros = aya::maps::PerCpuValues::try_from(vec![
            collector_common::tcp_state::SlotCounts::ZERO;
            cpus
        ])
        .map_err(|e| error(e.into()))?;
        self.slot_counts.set(slot, zeros, 0).map_err(error)
    }

    /// Removes the transition counts of namespaces that no longer exist.
    fn remove_transitions_of(&mut self, dead: &std::collections::HashSet<u64>) {
        if dead.is_empty() {
            return;
        }
        let keys: Vec<_> = self
            .transitions
            .keys()
            .filter_map(Result::ok)
            .filter(|k| dead.contains(&k.netns))
            .collect();
        for key in keys {
            let _ = self.transitions.remove(&key);
        }
    }

    pub fn program_stats(&self) -> Result<ProgramStats, ProbeError> {
        let read = |index: u32| -> Result<u64, ProbeError> {
            let per_cpu = self
                .stats
                .get(&index, 0)
                .map_err(|source| map_error("STATS", source))?;
            Ok(per_cpu.iter().copied().fold(0, u64::wrapping_add))
        };
        Ok(ProgramStats {
            events_lost: read(STAT_EVENTS_LOST)?,
            transitions_full: read(STAT_TRANSITIONS_FULL)?,
            listeners_full: read(STAT_LISTENERS_FULL)?,
            queued_full: read(STAT_QUEUED_FULL)?,
            read_errors: read(STAT_READ_ERRORS)?,
            accepts_unattributed: read(STAT_ACCEPTS_UNATTRIBUTED)?,
            conns_full: read(STAT_CONNS_FULL)?,
            acceptors_full: read(STAT_ACCEPTORS_FULL)?,
            accepting_full: read(STAT_ACCEPTING_FULL)?,
            drop_reasons_full: read(STAT_DROP_REASONS_FULL)?,
            readers_full: read(STAT_READERS_FULL)?,
            conn_stats_full: read(STAT_CONN_STATS_FULL)?,
            uring_direct: read(STAT_URING_DIRECT)?,
            unix_connecting_full: read(STAT_UNIX_CONNECTING_FULL)?,
            unix_refused_full: read(STAT_UNIX_REFUSED_FULL)?,
            unix_lookback_short: read(STAT_UNIX_LOOKBACK_SHORT)?,
            unix_unstamped: read(STAT_UNIX_UNSTAMPED)?,
            recursion_misses: self.recursion_misses(),
        })
    }

    /// The runs the kernel skipped, summed over the programs sockq loaded (one
    /// fdinfo read each; a program that failed to load has no descriptor).
    fn recursion_misses(&self) -> u64 {
        use std::os::fd::{AsFd as _, AsRawFd as _};
        self._ebpf
            .programs()
            .filter_map(|(_, program)| program.fd().ok())
            .filter_map(|fd| {
                let path = format!("/proc/self/fdinfo/{}", fd.as_fd().as_raw_fd());
                std::fs::read_to_string(path).ok()
            })
            .map(|info| fdinfo_recursion_misses(&info))
            .fold(0, u64::saturating_add)
    }
}

/// The `recursion_misses` a BPF program's fdinfo reports (0 where the kernel prints
/// none).
fn fdinfo_recursion_misses(fdinfo: &str) -> u64 {
    fdinfo
        .lines()
        .find_map(|line| line.strip_prefix("recursion_misses:"))
        .and_then(|n| n.trim().parse().ok())
        .unwrap_or(0)
}

pub(super) fn map_error(name: &'static str, source: MapError) -> ProbeError {
    ProbeError::Map { name, source }
}

pub(super) fn take_map(ebpf: &mut Ebpf, name: &'static str) -> Result<aya::maps::Map, ProbeError> {
    ebpf.take_map(name).ok_or(ProbeError::MissingMap(name))
}

#[cfg(test)]
mod tests {
    use super::fdinfo_recursion_misses;

    #[test]
    fn recursion_misses_are_read_from_a_programs_fdinfo() {
        // As 6.18 prints it for a raw tracepoint program.
        let fdinfo = "pos:\t0\nflags:\t02000002\nmnt_id:\t16\nino:\t1057\n\
            prog_type:\t17\nprog_jited:\t1\nprog_tag:\t1b2c3d4e5f607182\n\
            memlock:\t4096\nprog_id:\t173\nrun_time_ns:\t0\nrun_cnt:\t0\n\
            recursion_misses:\t42\nverified_insns:\t301\n";
        assert_eq!(fdinfo_recursion_misses(fdinfo), 42);
        // Before 5.12 there is no such line.
        assert_eq!(
            fdinfo_recursion_misses("prog_type:\t17\nprog_id:\t9\nrun_cnt:\t3\n"),
            0
        );
        assert_eq!(fdinfo_recursion_misses("recursion_misses:\tmany\n"), 0);
    }
}
