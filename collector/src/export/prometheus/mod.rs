//! Prometheus exposition of a [`Snapshot`]: the text format 0.0.4, or the protobuf
//! format (delimited `io.prometheus.client.MetricFamily`) when the scraper asks for it
//! ([`Format::negotiate`]), which adds native histograms (`histogram`).
//!
//! The prometheus-client crate does the writing, label escaping included (`\`, `"`
//! and newline in a process name chosen by whoever runs it; the crate escapes since
//! 0.25.2, 0.24 wrote them verbatim, and the tests catch a regression; protobuf
//! carries label values as length-prefixed strings, with nothing to escape):
//! [`render_as`] turns the snapshot into owned metric families, registers them as a
//! [`Collector`] in a fresh [`Registry`] and encodes that.
//!
//! Two details keep the text output valid for the Prometheus text format, which is
//! what [`CONTENT_TYPE`] announces and what `promtool check metrics` checks:
//! - the crate's counters follow OpenMetrics, whose family name has no `_total` and
//!   whose samples get `_total` appended; the text format wants one name for both.
//!   Counters here are therefore described under their full `..._total` name and
//!   their sample written without a suffix (see `PlainCounter`); in protobuf, where
//!   the crate appends `_total` to the family name, they are described without it;
//! - the OpenMetrics `# EOF` trailer is not written ([`encode_registry`]).
//!
//! Every label combination appears once: identical series (two unknown TCP states
//! mapping to `UNKNOWN`, an owner listed twice) are merged before encoding.

use std::collections::{BTreeMap, BTreeSet};

mod health;
mod histogram;
mod labels;
mod nagle;
mod netns;
mod protobuf;
mod queues;
mod unix;

use prometheus_client::{
    collector::Collector,
    encoding::{
        DescriptorEncoder, EncodeMetric, MetricEncoder, NativeHistogram, NativeHistogramBuckets,
        NoLabelSet, text::encode_registry,
    },
    metrics::{MetricType, gauge::ConstGauge},
    registry::Registry,
};

pub use self::{
    histogram::ClassicBuckets,
    protobuf::{Format, PROTOBUF_CONTENT_TYPE},
};
use self::{histogram::HistogramValue, labels::Labels};
use crate::model::{Snapshot, tcp_state_name};

/// The `Content-Type` of what [`render`] produces.
pub const CONTENT_TYPE: &str = "text/plain; version=0.0.4; charset=utf-8";

/// What `sockq_build_info` reports.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BuildInfo {
    /// sockq's version (`CARGO_PKG_VERSION`).
    pub version: String,
    /// The commit sockq was built from, or `unknown`.
    pub git_commit: String,
    /// `uname -r` of the running kernel, or `unknown`.
    pub kernel_release: String,
}

impl BuildInfo {
    /// This build, on the kernel it runs on: the version from Cargo, the commit from
    /// `SOCKQ_GIT_COMMIT` at build time (if set), the release from
    /// `/proc/sys/kernel/osrelease`.
    pub fn detect() -> Self {
        let kernel_release = std::fs::read_to_string("/proc/sys/kernel/osrelease")
            .map(|s| s.trim().to_owned())
            .ok()
            .filter(|s| !s.is_empty())
            .unwrap_or_else(|| UNKNOWN.to_owned());
        Self {
            version: env!("CARGO_PKG_VERSION").to_owned(),
            git_commit: option_env!("SOCKQ_GIT_COMMIT")
                .unwrap_or(UNKNOWN)
                .to_owned(),
            kernel_release,
        }
    }
}

const UNKNOWN: &str = "unknown";

/// Why a snapshot could not be rendered.
#[derive(Debug, thiserror::Error)]
pub enum ExpositionError {
    /// The encoder refused a value or label (`std::fmt::Error` carries no detail).
    #[error(
        "encoding the Prometheus text exposition failed ({listeners} listeners, \
         {transitions} transition series)"
    )]
    Encode {
        listeners: usize,
        transitions: usize,
        #[source]
        source: std::fmt::Error,
    },
    /// The protobuf encoder refused a value or a message.
    #[error("encoding the Prometheus protobuf exposition failed ({listeners} listeners)")]
    EncodeProtobuf {
        listeners: usize,
        #[source]
        source: prometheus_client::encoding::prometheus_protobuf::EncodeError,
    },
}

/// Renders `snapshot` and `build` as Prometheus text exposition format 0.0.4, with
/// the short classic buckets.
pub fn render(snapshot: &Snapshot, build: &BuildInfo) -> Result<String, ExpositionError> {
    let collector = SnapshotCollector::new(snapshot, build, ClassicBuckets::Short, Format::Text);
    encode_text(collector, snapshot)
}

/// Renders `snapshot` and `build` in `format` (its `Content-Type` is
/// [`Format::content_type`]), histograms with the `classic` buckets.
pub fn render_as(
    snapshot: &Snapshot,
    build: &BuildInfo,
    classic: ClassicBuckets,
    format: Format,
) -> Result<Vec<u8>, ExpositionError> {
    let collector = SnapshotCollector::new(snapshot, build, classic, format);
    match format {
        Format::Text => encode_text(collector, snapshot).map(String::into_bytes),
        Format::Protobuf => protobuf::encode(collector, snapshot),
    }
}

/// `body` gzipped, for a scraper that sends `Accept-Encoding: gzip`. Level 2: at
/// 10,000 quiet listeners it compresses 3.9 MB into 154 KB in 3 ms, where the default
/// level 6 takes 15 ms for 142 KB; 1,000 busy ones, 4.2 MB into 195 KB in 6 ms
/// against 184 KB in 19 ms (zlib-rs, `exposition_sizes`). Level 1 is no faster and
/// half as large again.
pub fn gzip(body: &[u8]) -> Vec<u8> {
    use std::io::Write as _;
    let mut encoder = flate2::write::GzEncoder::new(
        Vec::with_capacity(body.len() / 16),
        flate2::Compression::new(GZIP_LEVEL),
    );
    // Writing to a Vec cannot fail.
    let _ = encoder.write_all(body);
    encoder.finish().unwrap_or_default()
}

const GZIP_LEVEL: u32 = 2;

fn encode_text(
    collector: SnapshotCollector,
    snapshot: &Snapshot,
) -> Result<String, ExpositionError> {
    let mut registry = Registry::default();
    registry.register_collector(Box::new(collector));
    // About what a quiet listener's series take, so that a large body is not
    // copied again and again as it grows.
    let listeners = snapshot.listeners.len() + snapshot.unix_listeners.len();
    let mut out = String::with_capacity(16 * 1024 + listeners * 300);
    encode_registry(&mut out, &registry).map_err(|source| ExpositionError::Encode {
        listeners: snapshot.listeners.len(),
        transitions: snapshot.transitions.len(),
        source,
    })?;
    Ok(out)
}

/// One sample's value.
#[derive(Debug, Clone)]
enum Value {
    Int(u64),
    Float(f64),
    Histogram(HistogramValue),
}

/// One metric family, owned so that it can live in a `'static` [`Collector`].
#[derive(Debug)]
struct Family {
    name: &'static str,
    help: &'static str,
    kind: MetricType,
    series: Vec<(Labels, Value)>,
}

impl Family {
    fn gauge(name: &'static str, help: &'static str) -> Self {
        let (kind, series) = (MetricType::Gauge, Vec::new());
        Self {
            name,
            help,
            kind,
            series,
        }
    }

    fn counter(name: &'static str, help: &'static str) -> Self {
        Self {
            kind: MetricType::Counter,
            ..Self::gauge(name, help)
        }
    }

    fn histogram(name: &'static str, help: &'static str) -> Self {
        Self {
            kind: MetricType::Histogram,
            ..Self::gauge(name, help)
        }
    }

    fn push(&mut self, labels: impl Into<Labels>, value: impl Into<u64>) {
        self.series.push((labels.into(), Value::Int(value.into())));
    }

    fn push_float(&mut self, labels: impl Into<Labels>, value: f64) {
        self.series.push((labels.into(), Value::Float(value)));
    }

    fn push_histogram(&mut self, labels: impl Into<Labels>, value: HistogramValue) {
        self.series.push((labels.into(), Value::Histogram(value)));
    }
}

/// A counter sample written under the family's own name. The crate's
/// `ConstCounter` would append `_total` to a name that already ends in it
/// (OpenMetrics style), which the Prometheus text format reads as an untyped
/// metric without help.
#[derive(Debug)]
struct PlainCounter(u64);

impl EncodeMetric for PlainCounter {
    fn encode(&self, mut encoder: MetricEncoder) -> Result<(), std::fmt::Error> {
        encoder.encode_gauge(&self.0)
    }

    fn metric_type(&self) -> MetricType {
        MetricType::Counter
    }
}

/// The snapshot as metric families, ready to encode on each call.
#[derive(Debug)]
struct SnapshotCollector {
    families: Vec<Family>,
    format: Format,
}

const HELP_ACCEPT_LEN: &str = "Connections fully established and waiting for accept() on this \
    listening socket: the kernel's sk_ack_backlog, reported by sock_diag as idiag_rqueue \
    (ss -lnt Recv-Q).";
const HELP_ACCEPT_LIMIT: &str = "Longest accept queue this listening socket may have: \
    min(listen() backlog, net.core.somaxconn), the kernel's sk_max_ack_backlog, reported by \
    sock_diag as idiag_wqueue (ss -lnt Send-Q).";
const HELP_SYN_LEN: &str = "Handshakes in progress for this listener: request sockets \
    (state NEW_SYN_RECV, the SYN queue) whose port and namespace match it, counted from a \
    sock_diag dump.";
const HELP_DROPS: &str = "Packets this listening socket dropped since it was created: the \
    kernel's sk_drops (sock_diag INET_DIAG_SKMEMINFO, ss -tm d<N>), raised by \
    tcp_listendrop() when a SYN or handshake ACK is dropped, e.g. because the accept queue \
    is full; the per-socket share of TcpExtListenDrops.";
const HELP_INFO: &str = "Always 1: a process (pid, comm from /proc/PID/comm, container id \
    from its cgroup path) holding a file descriptor of this listening socket, found in \
    /proc/PID/fd, and the backend's execution pattern (single_thread, acceptor_handoff, \
    acceptor_message_balancing, multi_acceptor, reuseport_shards or undetermined). pid and \
    comm are empty when no holder was found.";
const HELP_TRANSITIONS: &str = "TCP state changes of sockets in this network namespace, by \
    old and new state, counted by sockq's eBPF program on the sock:inet_sock_set_state \
    tracepoint since the program was loaded.";
const HELP_LOST: &str = "Events sockq could not record, all causes summed: ring buffer \
    records (listener, queue-full, stall events) that found the ring buffer full, stall \
    events the daemon's queue had no room for, entries the in-kernel maps had no room for, and \
    accepts that could not be counted (sockq_events_lost_by_cause_total says which); they are \
    missing from the other metrics.";
const HELP_LOST_BY_CAUSE: &str = "sockq_events_lost_total by cause: ring_buffer_full (the \
    eBPF ring buffer had no room for an event), stall_queue_full (the daemon's queue of stall \
    events), map_full:<MAP> (an in-kernel map had no room for a new entry; see \
    sockq_map_entries), accept_unattributed (an accepted connection whose listener could not \
    be told), accept_direct_descriptor (an io_uring accept into a fixed-file slot, on a kernel \
    whose fixed-file table sockq cannot read), unix_lookback_short and unix_accept_unstamped \
    (Unix accepts whose wait could not be measured), program_recursion (runs of sockq's \
    programs the kernel skipped because the same program was running on that CPU when an \
    interrupt fired its hook again).";
const HELP_READ_ERRORS: &str = "Kernel reads the eBPF programs could not make \
    (bpf_probe_read_kernel failed): a steady rise means the struct offsets sockq resolved \
    from BTF do not match this kernel.";
const HELP_RING: &str = "Records sockq read from its eBPF ring buffer, by kind (listener: a \
    listener opened or closed; queue_full: an accept queue overflowed; stall: a Nagle x \
    delayed-ACK stall). With sockq_events_lost_total, what the kernel side produced.";
const HELP_MODE: &str = "How sockq gets its numbers: mode=\"ebpf\" (probes attached), or \
    mode=\"polling\" (no eBPF: sock_diag and /proc/net/netstat only; reason says why).";
const HELP_PROBE: &str = "Whether the named eBPF probe is attached to the kernel (1) or not \
    (0); `sockq doctor` says why not.";
const HELP_BUILD: &str = "Always 1: the sockq version and commit, and the release (uname -r) \
    of the kernel it runs on.";

impl SnapshotCollector {
    fn new(
        snapshot: &Snapshot,
        build: &BuildInfo,
        classic: ClassicBuckets,
        format: Format,
    ) -> Self {
        let mut families = inventory_families(snapshot);
        families.extend(queues::families(snapshot, classic));
        families.extend(unix::families(snapshot, classic));
        families.extend(netns::families(snapshot));
        families.extend(nagle::families(snapshot, classic));
        families.push(transition_family(snapshot));
        families.extend(self_families(snapshot, build));
        families.extend(health::families(snapshot));
        Self { families, format }
    }
}

/// What the inventory says of each listener: queue lengths, limits, drops, owners.
fn inventory_families(snapshot: &Snapshot) -> Vec<Family> {
    let mut accept_len = Family::gauge("sockq_listen_accept_queue_length", HELP_ACCEPT_LEN);
    let mut accept_limit = Family::gauge("sockq_listen_accept_queue_limit", HELP_ACCEPT_LIMIT);
    let mut syn_len = Family::gauge("sockq_listen_syn_queue_length", HELP_SYN_LEN);
    let mut drops = Family::counter("sockq_listen_drops_total", HELP_DROPS);
    let mut info = Family::gauge("sockq_listener_info", HELP_INFO);

    let mut listeners: Vec<_> = snapshot.listeners.iter().collect();
    listeners.sort_by_key(|l| (l.netns, l.addr, l.port, l.inode));
    for l in listeners {
        let identity = listener_labels(l);
        accept_limit.push(identity.clone(), l.accept_queue_limit);
        if !l.is_quiet() {
            // A quiet listener's would all be 0 (README: "The series each listener costs").
            accept_len.push(identity.clone(), l.accept_queue_len);
            syn_len.push(identity.clone(), l.syn_queue_len);
            drops.push(identity.clone(), l.drops);
        }

        let pattern = snapshot
            .patterns
            .get(&l.inode)
            .map_or("undetermined", |p| p.pattern.name());
        let owners = distinct_owners(&l.owners);
        if owners.is_empty() {
            info.push(
                owner_labels(&identity, String::new(), "", "", pattern),
                1_u8,
            );
        }
        for (pid, comm, container) in owners {
            let labels = owner_labels(&identity, pid.to_string(), comm, container, pattern);
            info.push(labels, 1_u8);
        }
    }
    vec![accept_len, accept_limit, syn_len, drops, info]
}

/// TCP state transitions per namespace (states with one name summed).
fn transition_family(snapshot: &Snapshot) -> Family {
    let mut transitions = Family::counter("sockq_tcp_state_transitions_total", HELP_TRANSITIONS);
    let mut merged: BTreeMap<(u64, &str, &str), u64> = BTreeMap::new();
    for (key, count) in &snapshot.transitions {
        let slot = merged
            .entry((key.netns, tcp_state_name(key.from), tcp_state_name(key.to)))
            .or_default();
        *slot = slot.saturating_add(*count);
    }
    for ((netns, from, to), count) in merged {
        let labels = vec![
            ("netns", netns.to_string()),
            ("from", from.to_owned()),
            ("to", to.to_owned()),
        ];
        transitions.push(labels, count);
    }
    transitions
}

/// sockq about itself: losses, ring records, mode, probes, build.
fn self_families(snapshot: &Snapshot, build: &BuildInfo) -> Vec<Family> {
    let mut lost = Family::counter("sockq_events_lost_total", HELP_LOST);
    lost.push(Vec::new(), snapshot.events_lost);
    let mut by_cause = Family::counter("sockq_events_lost_by_cause_total", HELP_LOST_BY_CAUSE);
    for (cause, n) in &snapshot.lost_by_cause {
        by_cause.push(vec![("cause", (*cause).to_owned())], *n);
    }
    let mut read_errors = Family::counter("sockq_kernel_read_errors_total", HELP_READ_ERRORS);
    if snapshot.polling.is_none() {
        read_errors.push(Vec::new(), snapshot.read_errors);
    }

    let mut ring = Family::counter("sockq_ring_events_total", HELP_RING);
    for (kind, n) in ["listener", "queue_full", "stall"]
        .into_iter()
        .zip(snapshot.ring_events)
    {
        ring.push(vec![("kind", kind.to_owned())], n);
    }
    let mut mode = Family::gauge("sockq_mode", HELP_MODE);
    mode.push(
        match &snapshot.polling {
            Some(reason) => vec![("mode", "polling".to_owned()), ("reason", reason.clone())],
            None => vec![("mode", "ebpf".to_owned()), ("reason", String::new())],
        },
        1_u8,
    );
    let mut probes = Family::gauge("sockq_probe_attached", HELP_PROBE);
    let mut attached: BTreeMap<&str, bool> = BTreeMap::new();
    for p in &snapshot.probes {
        *attached.entry(p.name).or_default() |= p.attached;
    }
    for (name, up) in attached {
        probes.push(vec![("probe", name.to_owned())], up);
    }

    let mut build_info = Family::gauge("sockq_build_info", HELP_BUILD);
    build_info.push(
        vec![
            ("version", build.version.clone()),
            ("git_commit", build.git_commit.clone()),
            ("kernel_release", build.kernel_release.clone()),
        ],
        1_u8,
    );
    vec![lost, by_cause, read_errors, ring, mode, probes, build_info]
}

/// Each owner's (pid, comm, container), borrowed, sorted and without duplicates:
/// the label values of one `*_info` series each.
fn distinct_owners(owners: &[crate::model::Owner]) -> Vec<(u32, &str, &str)> {
    fn owner(o: &crate::model::Owner) -> (u32, &str, &str) {
        (o.pid, o.comm.as_str(), o.container.as_str())
    }
    match owners {
        // Most listeners have one owner: nothing to merge.
        [o] => vec![owner(o)],
        _ => owners
            .iter()
            .map(owner)
            .collect::<BTreeSet<_>>()
            .into_iter()
            .collect(),
    }
}

fn owner_labels(
    identity: &Labels,
    pid: String,
    comm: &str,
    container: &str,
    pattern: &str,
) -> Labels {
    let mut labels = identity.clone();
    labels.push("pid", pid);
    labels.push("comm", comm);
    labels.push("container", container);
    labels.push("pattern", pattern);
    labels
}

impl Collector for SnapshotCollector {
    fn encode(&self, mut encoder: DescriptorEncoder) -> Result<(), std::fmt::Error> {
        let protobuf = self.format == Format::Protobuf;
        for family in self.families.iter().filter(|f| !f.series.is_empty()) {
            // The protobuf encoder appends `_total` to a counter's family name.
            let name = match (protobuf, family.kind) {
                (true, MetricType::Counter) => {
                    family.name.strip_suffix("_total").unwrap_or(family.name)
                }
                _ => family.name,
            };
            let mut metric_encoder =
                encoder.encode_descriptor(name, family.help, None, family.kind)?;
            // An unlabeled sample goes through the family encoder unwrapped: wrapping
            // it in an empty label set would write `name{} value`.
            if let [(labels, value)] = family.series.as_slice()
                && labels.is_empty()
            {
                encode_value(family.kind, value, protobuf, metric_encoder)?;
                continue;
            }
            for (labels, value) in &family.series {
                let encoder = metric_encoder.encode_family(labels)?;
                encode_value(family.kind, value, protobuf, encoder)?;
            }
        }
        Ok(())
    }
}

/// One sample; `protobuf` selects true counters and native histograms.
fn encode_value(
    kind: MetricType,
    value: &Value,
    protobuf: bool,
    mut encoder: MetricEncoder,
) -> Result<(), std::fmt::Error> {
    match (kind, value, protobuf) {
        (_, Value::Histogram(h), _) => encode_histogram(h, protobuf, encoder),
        (MetricType::Counter, Value::Int(v), true) => {
            encoder.encode_counter::<NoLabelSet, _, u64>(v, None)
        }
        (MetricType::Counter, Value::Float(v), true) => {
            encoder.encode_counter::<NoLabelSet, _, f64>(v, None)
        }
        (MetricType::Counter, Value::Int(v), false) => PlainCounter(*v).encode(encoder),
        (_, Value::Int(v), _) => ConstGauge::new(*v).encode(encoder),
        (_, Value::Float(v), _) => ConstGauge::new(*v).encode(encoder),
    }
}

/// A histogram: its classic buckets, and in protobuf its native buckets too.
fn encode_histogram(
    h: &HistogramValue,
    protobuf: bool,
    mut encoder: MetricEncoder,
) -> Result<(), std::fmt::Error> {
    match (&h.native, protobuf) {
        (Some(native), true) => encoder.encode_histogram_with_native::<NoLabelSet>(
            h.sum,
            h.count,
            &h.buckets,
            None,
            NativeHistogram {
                schema: histogram::SCHEMA,
                zero_threshold: native.zero_threshold,
                zero_count: native.zero_count,
                negative: NativeHistogramBuckets {
                    spans: &[],
                    deltas: &[],
                },
                positive: NativeHistogramBuckets {
                    spans: &native.spans,
                    deltas: &native.deltas,
                },
                created: None,
            },
        ),
        _ => encoder.encode_histogram::<NoLabelSet>(h.sum, h.count, &h.buckets, None),
    }
}

/// The labels that identify a listener.
fn listener_labels(l: &crate::model::Listener) -> Labels {
    Labels::shared([
        ("netns", l.netns.to_string()),
        ("listen_addr", l.listen_addr()),
        ("socket", l.inode.to_string()),
    ])
}

#[cfg(test)]
mod tests {
    use std::{
        io::Write as _,
        net::{IpAddr, Ipv4Addr, Ipv6Addr},
        path::Path,
        process::{Command, Stdio},
    };

    use super::*;
    use crate::model::{Listener, ListenerKernelStats, Owner, ProbeStatus, TransitionKey};

    pub(super) const HOSTILE_COMM: &str = "a\"b\\c\nd{}";

    pub(super) fn build() -> BuildInfo {
        BuildInfo {
            version: "0.1.0".to_owned(),
            git_commit: "abc123".to_owned(),
            kernel_release: "6.1.0-test".to_owned(),
        }
    }

    fn listener(addr: IpAddr, port: u16, inode: u64, owners: Vec<Owner>) -> Listener {
        Listener {
            netns: 4026531840,
            addr,
            port,
            inode,
            cookie: inode * 7,
            accept_queue_len: 3,
            accept_queue_limit: 4096,
            syn_queue_len: 2,
            drops: 17,
            owners,
            kernel: None,
            queue_full: false,
        }
    }

    fn fixture() -> Snapshot {
        let mut snapshot = Snapshot {
            listeners: vec![
                listener(
                    IpAddr::V6(Ipv6Addr::LOCALHOST),
                    8080,
                    222,
                    vec![
                        Owner::new(42, HOSTILE_COMM),
                        Owner::new(43, "nginx\r\t"),
                        Owner::new(42, HOSTILE_COMM),
                    ],
                ),
                listener(IpAddr::V4(Ipv4Addr::UNSPECIFIED), 22, 111, Vec::new()),
            ],
            events_lost: 5,
            probes: vec![
                ProbeStatus {
                    name: "inet_sock_set_state",
                    attached: true,
                    detail: "raw_tracepoint".to_owned(),
                },
                ProbeStatus {
                    name: "listen_overflow",
                    attached: false,
                    detail: "no BTF".to_owned(),
                },
            ],
            ..Snapshot::default()
        };
        for (from, to, count) in [(10, 12, 1), (2, 1, 9), (200, 201, 3), (202, 203, 4)] {
            snapshot.transitions.insert(
                TransitionKey {
                    netns: 4026531840,
                    from,
                    to,
                },
                count,
            );
        }
        snapshot
    }

    /// The fixture with what the eBPF programs add: kernel stats on one listener
    /// (histograms included) and acceptor threads.
    pub(super) fn fixture_with_kernel_stats() -> Snapshot {
        use collector_common::queue::{ListenerQueue, depth_bucket, wait_bucket};
        let mut snapshot = fixture();
        let mut q = ListenerQueue::ZERO;
        for (depth, wait_us) in [(1u32, 150u64), (3, 200_000), (5, 2_000_000)] {
            q.enqueues += 1;
            q.depth_sum += u64::from(depth);
            q.depth_hist[depth_bucket(depth)] += 1;
            q.accepts += 1;
            q.wait_sum_ns += wait_us * 1000;
            q.wait_hist[wait_bucket(wait_us)] += 1;
        }
        q.backlog_arg = 511;
        snapshot.listeners[0].kernel =
            Some(crate::analysis::queue_stats::kernel_stats(&q, Some(0.25)));
        snapshot.listeners[0].queue_full = true;
        snapshot.netns = vec![crate::model::NetnsStats {
            netns: 4026531840,
            counters: [
                ("listen_drops".to_owned(), 17),
                ("tcp_syn_retrans".to_owned(), 3),
            ]
            .into_iter()
            .collect(),
            somaxconn: Some(4096),
            tcp_max_syn_backlog: None,
            tcp_syncookies: Some(1),
            tcp_abort_on_overflow: Some(0),
        }];
        snapshot.acceptors = vec![crate::model::Acceptor {
            socket: 222,
            pid: 42,
            tid: 44,
            comm: HOSTILE_COMM.to_owned(),
            accepts: 3,
            state: "S".to_owned(),
            wchan: String::new(),
        }]
        .into();
        snapshot
    }

    /// The README's metrics reference names every family sockq exports.
    #[test]
    fn every_metric_is_in_the_readme_reference() {
        let mut snapshot = fixture_with_kernel_stats();
        let mut series = crate::analysis::nagle::Accumulator::default();
        let mut stats = collector_common::nagle::ConnStats::ZERO;
        (
            stats.delack_armed,
            stats.delack_fired,
            stats.holds,
            stats.stalls,
        ) = (2, 1, 1, 1);
        stats.delay_hist[3] = 1;
        stats.hold_hist[3] = 1;
        let key = collector_common::nagle::ConnKey {
            netns: 1,
            tgid: 42,
            port: 0,
            _pad: [0; 6],
        };
        series.update(&[(key, stats)], &[], |_| Some("client".into()));
        snapshot.nagle = series.series();
        snapshot.tcp_sends = Some([1, 2, 3]);
        let text = render(&snapshot, &build()).expect("render");
        let readme = include_str!("../../../../README.md");
        let undocumented: Vec<&str> = text
            .lines()
            .filter_map(|l| l.strip_prefix("# HELP "))
            .filter_map(|l| l.split_whitespace().next())
            .filter(|name| !readme.contains(&format!("`{name}")))
            .collect();
        assert!(
            undocumented.is_empty(),
            "missing from README.md's metrics reference: {undocumented:?}"
        );
    }

    #[test]
    fn kernel_stats_pass_promtool() {
        let text = render(&fixture_with_kernel_stats(), &build()).expect("render");
        for expected in [
            "sockq_accept_wait_seconds_count{netns=\"4026531840\",listen_addr=\"[::1]:8080\",socket=\"222\"} 3\n",
            "sockq_listen_accept_queue_depth_bucket{le=\"+Inf\",netns=\"4026531840\",listen_addr=\"[::1]:8080\",socket=\"222\"} 3\n",
            "sockq_listen_backlog{netns=\"4026531840\",listen_addr=\"[::1]:8080\",socket=\"222\"} 511\n",
            "sockq_listen_accept_queue_full{netns=\"4026531840\",listen_addr=\"[::1]:8080\",socket=\"222\"} 1\n",
            "tid=\"44\",comm=\"a\\\"b\\\\c\\nd{}\"} 3\n",
            "sockq_netstat_listen_drops_total{netns=\"4026531840\"} 17\n",
            "sockq_netns_somaxconn{netns=\"4026531840\"} 4096\n",
        ] {
            assert!(text.contains(expected), "{expected:?} not in:\n{text}");
        }
        if let Some((ok, report)) = promtool(&text) {
            assert!(ok, "promtool check metrics failed:\n{report}\n{text}");
        }
    }

    /// Runs `promtool check metrics` on `text`; `None` when promtool is missing.
    fn promtool(text: &str) -> Option<(bool, String)> {
        let promtool = Path::new("/usr/bin/promtool");
        if !promtool.exists() {
            eprintln!("/usr/bin/promtool not installed: skipping the promtool check");
            return None;
        }
        let mut child = Command::new(promtool)
            .args(["check", "metrics"])
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("run promtool");
        child
            .stdin
            .take()
            .expect("promtool stdin")
            .write_all(text.as_bytes())
            .expect("write to promtool");
        let out = child.wait_with_output().expect("wait for promtool");
        let report = format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        Some((out.status.success() && report.trim().is_empty(), report))
    }

    #[test]
    fn fixture_passes_promtool() {
        let text = render(&fixture(), &build()).expect("render");
        if let Some((ok, report)) = promtool(&text) {
            assert!(
                ok,
                "promtool complained:\n{report}\n--- exposition:\n{text}"
            );
        }
    }

    #[test]
    fn empty_snapshot_is_valid() {
        let text = render(&Snapshot::default(), &build()).expect("render");
        assert!(!text.contains("sockq_listen_"), "{text}");
        assert!(!text.contains("# EOF"), "{text}");
        assert!(text.contains("sockq_events_lost_total 0\n"), "{text}");
        assert!(text.contains(
            "sockq_build_info{version=\"0.1.0\",git_commit=\"abc123\",\
             kernel_release=\"6.1.0-test\"} 1\n"
        ));
        if let Some((ok, report)) = promtool(&text) {
            assert!(
                ok,
                "promtool complained:\n{report}\n--- exposition:\n{text}"
            );
        }
    }

    #[test]
    fn hostile_comm_is_escaped() {
        let text = render(&fixture(), &build()).expect("render");
        let expected = r#"comm="a\"b\\c\nd{}""#;
        assert!(text.contains(expected), "{expected} not in:\n{text}");
        // Every line is a comment or a sample: the newline did not split one.
        for line in text.lines() {
            assert!(
                line.starts_with("# ") || line.starts_with("sockq_"),
                "stray line {line:?}"
            );
        }
        // The duplicated owner is one series.
        assert_eq!(text.matches(expected).count(), 1, "{text}");
    }

    #[test]
    fn series_and_names() {
        let text = render(&fixture(), &build()).expect("render");
        let v6 = r#"netns="4026531840",listen_addr="[::1]:8080",socket="222""#;
        let v4 = r#"netns="4026531840",listen_addr="0.0.0.0:22",socket="111""#;
        for expected in [
            "# TYPE sockq_listen_drops_total counter\n".to_owned(),
            "# TYPE sockq_listen_accept_queue_length gauge\n".to_owned(),
            "# TYPE sockq_tcp_state_transitions_total counter\n".to_owned(),
            "# TYPE sockq_events_lost_total counter\n".to_owned(),
            format!("sockq_listen_accept_queue_length{{{v6}}} 3\n"),
            format!("sockq_listen_accept_queue_limit{{{v6}}} 4096\n"),
            format!("sockq_listen_syn_queue_length{{{v4}}} 2\n"),
            format!("sockq_listen_drops_total{{{v4}}} 17\n"),
            format!(
                "sockq_listener_info{{{v4},pid=\"\",comm=\"\",container=\"\",pattern=\"undetermined\"}} 1\n"
            ),
            format!(
                "sockq_listener_info{{{v6},pid=\"43\",comm=\"nginx\r\t\",container=\"\",pattern=\"undetermined\"}} 1\n"
            ),
            "sockq_tcp_state_transitions_total{netns=\"4026531840\",from=\"LISTEN\",\
             to=\"NEW_SYN_RECV\"} 1\n"
                .to_owned(),
            "sockq_tcp_state_transitions_total{netns=\"4026531840\",from=\"SYN_SENT\",\
             to=\"ESTABLISHED\"} 9\n"
                .to_owned(),
            // Two unknown transitions merge into one series.
            "sockq_tcp_state_transitions_total{netns=\"4026531840\",from=\"UNKNOWN\",\
             to=\"UNKNOWN\"} 7\n"
                .to_owned(),
            "sockq_events_lost_total 5\n".to_owned(),
            "sockq_probe_attached{probe=\"inet_sock_set_state\"} 1\n".to_owned(),
            "sockq_probe_attached{probe=\"listen_overflow\"} 0\n".to_owned(),
        ] {
            assert!(text.contains(&expected), "{expected:?} not in:\n{text}");
        }
        assert!(!text.contains("_total_total"), "{text}");
        assert_eq!(text.matches("sockq_listener_info{").count(), 3, "{text}");
        // Every family with series has help and type: the nine above, plus the
        // full-queue gauge (no kernel stats in this snapshot; no SO_REUSEPORT group),
        // the mode, the ring buffer's records, the kernel read errors (with probes),
        // and the inventory's staleness, carried and excluded listeners (always
        // present).
        assert!(
            text.contains("sockq_mode{mode=\"ebpf\",reason=\"\"} 1\n"),
            "{text}"
        );
        assert_eq!(text.matches("# HELP ").count(), 16, "{text}");
        assert_eq!(text.matches("# TYPE ").count(), 16, "{text}");
    }

    /// A listener nothing happened on has its info and limit series only; its first
    /// connection brings the rest, zeros included. A socket alone on its address has
    /// no group series; two sharing it have one.
    #[test]
    fn a_quiet_listener_costs_two_series() {
        let per_listener = |text: &str, socket: &str| -> Vec<String> {
            text.lines()
                .filter(|l| !l.starts_with('#') && l.contains(&format!("socket=\"{socket}\"")))
                .map(|l| l.split('{').next().unwrap_or_default().to_owned())
                .collect()
        };
        let quiet = |port, inode| Listener {
            accept_queue_len: 0,
            syn_queue_len: 0,
            drops: 0,
            kernel: Some(ListenerKernelStats::default()),
            ..listener(
                IpAddr::V4(Ipv4Addr::LOCALHOST),
                port,
                inode,
                vec![Owner::new(7, "idle")],
            )
        };
        let mut snapshot = Snapshot {
            listeners: vec![quiet(80, 1), quiet(81, 2), quiet(81, 3)],
            ..Snapshot::default()
        };
        let text = render(&snapshot, &build()).expect("render");
        assert_eq!(
            per_listener(&text, "1"),
            ["sockq_listen_accept_queue_limit", "sockq_listener_info"],
            "{text}"
        );
        assert!(
            !text.contains("listen_addr=\"127.0.0.1:80\"}"),
            "no group of one: {text}"
        );
        assert!(
            text.contains(
                "sockq_listen_group_sockets{netns=\"4026531840\",listen_addr=\"127.0.0.1:81\"} 2\n"
            ),
            "{text}"
        );

        // One connection queued, nothing accepted yet: every series, zeros too.
        if let Some(k) = snapshot.listeners[0].kernel.as_mut() {
            k.enqueues = 1;
        }
        let text = render(&snapshot, &build()).expect("render");
        let listed = per_listener(&text, "1");
        for name in [
            "sockq_listen_accept_queue_length",
            "sockq_listen_syn_queue_length",
            "sockq_listen_drops_total",
            "sockq_listen_accept_queue_full",
            "sockq_listen_enqueues_total",
            "sockq_listen_accepts_total",
            "sockq_listen_synack_retransmits_total",
        ] {
            assert!(listed.iter().any(|l| l == name), "{name} missing: {text}");
        }
        assert!(text.contains("sockq_listen_accepts_total{netns=\"4026531840\",listen_addr=\"127.0.0.1:80\",socket=\"1\"} 0\n"), "{text}");
        assert_eq!(
            per_listener(&text, "2").len(),
            2,
            "the others stay quiet: {text}"
        );

        // Without the probes, a queued connection or a drop is what tells.
        let mut polled = quiet(90, 9);
        polled.kernel = None;
        assert!(polled.is_quiet());
        polled.drops = 1;
        assert!(!polled.is_quiet());
    }

    #[test]
    fn a_stale_inventory_says_so() {
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .expect("clock")
            .as_secs_f64();
        let mut snapshot = Snapshot::default();
        snapshot.health.stale_after_seconds = 3.0;
        let text = render(&snapshot, &build()).expect("render");
        assert!(
            text.contains("sockq_inventory_stale 1\n"),
            "no inventory yet: {text}"
        );
        snapshot.health.last_inventory_unix = Some(now);
        snapshot.health.skipped_netns.insert("permission", 2);
        let text = render(&snapshot, &build()).expect("render");
        assert!(text.contains("sockq_inventory_stale 0\n"), "{text}");
        assert!(
            text.contains("sockq_inventory_skipped_namespaces{reason=\"permission\"} 2\n"),
            "{text}"
        );
        snapshot.health.last_inventory_unix = Some(now - 10.0);
        let text = render(&snapshot, &build()).expect("render");
        assert!(
            text.contains("sockq_inventory_stale 1\n"),
            "10 s old: {text}"
        );
    }

    #[test]
    fn large_counters_are_exact() {
        let snapshot = Snapshot {
            events_lost: u64::MAX,
            ..Snapshot::default()
        };
        let text = render(&snapshot, &build()).expect("render");
        assert!(
            text.contains(&format!("sockq_events_lost_total {}\n", u64::MAX)),
            "{text}"
        );
    }

    #[test]
    fn detect_fills_every_field() {
        let info = BuildInfo::detect();
        assert_eq!(info.version, env!("CARGO_PKG_VERSION"));
        assert!(!info.git_commit.is_empty());
        assert!(!info.kernel_release.is_empty());
    }
}
