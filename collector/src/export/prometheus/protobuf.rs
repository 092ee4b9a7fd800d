//! The Prometheus protobuf exposition (delimited `io.prometheus.client.MetricFamily`
//! messages), served to scrapers that ask for it: Prometheus with
//! `--enable-feature=native-histograms` (2.40 and later) lists it first in `Accept`.
//! Its histograms carry native buckets and the classic ones, so a consumer that
//! reads only classic buckets from protobuf still has them; a Prometheus without the
//! feature does not ask for protobuf and gets the text format.

use prometheus_client::{encoding::prometheus_protobuf::encode_to_vec, registry::Registry};

use super::{CONTENT_TYPE, ExpositionError, SnapshotCollector};
use crate::model::Snapshot;

/// The `Content-Type` of the protobuf exposition.
pub const PROTOBUF_CONTENT_TYPE: &str =
    "application/vnd.google.protobuf; proto=io.prometheus.client.MetricFamily; encoding=delimited";

/// An exposition format.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Format {
    /// Text format 0.0.4, classic histograms only.
    Text,
    /// Delimited protobuf, native and classic histograms.
    Protobuf,
}

impl Format {
    /// The format an `Accept` header prefers: protobuf when it lists
    /// `application/vnd.google.protobuf` with `proto=io.prometheus.client.MetricFamily`
    /// and `encoding=delimited` at a quality above 0 and at least that of any
    /// text or wildcard type it lists; text otherwise (no header included).
    pub fn negotiate(accept: Option<&str>) -> Self {
        let Some(accept) = accept else {
            return Self::Text;
        };
        let (mut protobuf, mut other) = (0.0f64, 0.0f64);
        for range in accept.split(',') {
            let mut parts = range.split(';').map(str::trim);
            let media = parts.next().unwrap_or_default().to_ascii_lowercase();
            let (mut q, mut proto, mut delimited) = (1.0f64, false, false);
            for param in parts {
                let Some((key, value)) = param.split_once('=') else {
                    continue;
                };
                let value = value.trim().trim_matches('"');
                match key.trim().to_ascii_lowercase().as_str() {
                    "q" => q = value.parse().unwrap_or(0.0),
                    "proto" => proto = value == "io.prometheus.client.MetricFamily",
                    "encoding" => delimited = value == "delimited",
                    _ => {}
                }
            }
            if media == "application/vnd.google.protobuf" && proto && delimited {
                protobuf = protobuf.max(q);
            } else if media.starts_with("text/")
                || media.contains('*')
                || media.contains("openmetrics")
            {
                other = other.max(q);
            }
        }
        if protobuf > 0.0 && protobuf >= other {
            Self::Protobuf
        } else {
            Self::Text
        }
    }

    /// The `Content-Type` of an exposition in this format.
    pub fn content_type(self) -> &'static str {
        match self {
            Self::Text => CONTENT_TYPE,
            Self::Protobuf => PROTOBUF_CONTENT_TYPE,
        }
    }
}

pub(super) fn encode(
    collector: SnapshotCollector,
    snapshot: &Snapshot,
) -> Result<Vec<u8>, ExpositionError> {
    let mut registry = Registry::default();
    registry.register_collector(Box::new(collector));
    encode_to_vec(&registry).map_err(|source| ExpositionError::EncodeProtobuf {
        listeners: snapshot.listeners.len(),
        source,
    })
}

#[cfg(test)]
mod tests {
    use prometheus_client::encoding::prometheus_protobuf::prometheus_data_model::{
        MetricFamily, MetricType,
    };
    use prost::Message as _;

    use super::*;
    use crate::export::prometheus::{
        ClassicBuckets, render, render_as,
        tests::{HOSTILE_COMM, build, fixture_with_kernel_stats},
    };

    fn decode(mut bytes: &[u8]) -> Vec<MetricFamily> {
        let mut families = Vec::new();
        while !bytes.is_empty() {
            families.push(MetricFamily::decode_length_delimited(&mut bytes).expect("decode"));
        }
        families
    }

    #[test]
    fn protobuf_has_the_text_families_true_counters_and_native_histograms() {
        let snapshot = fixture_with_kernel_stats();
        let bytes = render_as(&snapshot, &build(), ClassicBuckets::Short, Format::Protobuf)
            .expect("render");
        let families = decode(&bytes);
        let text = render(&snapshot, &build()).expect("render");
        let text_names: Vec<&str> = text
            .lines()
            .filter_map(|l| l.strip_prefix("# TYPE "))
            .filter_map(|l| l.split_whitespace().next())
            .collect();
        let names: Vec<&str> = families.iter().map(|f| f.name.as_str()).collect();
        assert_eq!(names, text_names);

        let family = |name: &str| {
            families
                .iter()
                .find(|f| f.name == name)
                .unwrap_or_else(|| panic!("{name} missing"))
        };
        let lost = family("sockq_events_lost_total");
        assert_eq!(lost.r#type, MetricType::Counter as i32);
        let counter = lost.metric[0].counter.as_ref().expect("a counter value");
        assert_eq!(counter.value, 5.0);

        let wait = family("sockq_accept_wait_seconds");
        let h = wait.metric[0].histogram.as_ref().expect("histogram");
        assert_eq!((h.sample_count, h.schema), (3, 0));
        assert_eq!(h.zero_threshold, 1e-6);
        let native: i64 = h
            .positive_delta
            .iter()
            .scan(0, |c, d| {
                *c += d;
                Some(*c)
            })
            .sum();
        assert_eq!(native as u64 + h.zero_count, 3, "{h:?}");
        // The classic buckets ride along (the short set and +Inf).
        assert_eq!(h.bucket.len(), 12, "{h:?}");

        // Label values are carried as they are: nothing to escape, nothing split.
        let comms: Vec<&str> = families
            .iter()
            .flat_map(|f| &f.metric)
            .flat_map(|m| &m.label)
            .filter(|l| l.name == "comm")
            .map(|l| l.value.as_str())
            .collect();
        assert!(comms.contains(&HOSTILE_COMM), "{comms:?}");
    }

    #[test]
    fn prometheus_accept_headers() {
        // Prometheus 2.42 with --enable-feature=native-histograms.
        let native = "application/vnd.google.protobuf;proto=io.prometheus.client.MetricFamily;\
            encoding=delimited,application/openmetrics-text;version=1.0.0;q=0.8,\
            application/openmetrics-text;version=0.0.1;q=0.75,text/plain;version=0.0.4;q=0.5,\
            */*;q=0.1";
        assert_eq!(Format::negotiate(Some(native)), Format::Protobuf);
        // Without the feature.
        let classic = "application/openmetrics-text;version=1.0.0,application/openmetrics-text;\
            version=0.0.1;q=0.75,text/plain;version=0.0.4;q=0.5,*/*;q=0.1";
        assert_eq!(Format::negotiate(Some(classic)), Format::Text);
        assert_eq!(Format::negotiate(None), Format::Text);
        assert_eq!(Format::negotiate(Some("*/*")), Format::Text);
        // Another protobuf message, or not delimited: text.
        for other in [
            "application/vnd.google.protobuf;proto=other.Message;encoding=delimited",
            "application/vnd.google.protobuf;proto=io.prometheus.client.MetricFamily",
            "application/vnd.google.protobuf;proto=io.prometheus.client.MetricFamily;\
             encoding=delimited;q=0",
            "text/plain;q=1,application/vnd.google.protobuf;\
             proto=io.prometheus.client.MetricFamily;encoding=delimited;q=0.5",
        ] {
            assert_eq!(Format::negotiate(Some(other)), Format::Text, "{other}");
        }
    }

    /// The exposition's size with `listeners` listeners, each with accept waits and
    /// depths in a few buckets (busy) or quiet: text (short and fine buckets) and
    /// protobuf, plain and gzipped (as the daemon gzips), and
    /// the time to render and to gzip. Run by hand (release: the daemon's build):
    /// `cargo test --release -p collector --lib exposition_sizes -- --ignored --nocapture`.
    #[test]
    #[ignore = "prints figures; renders 10,000 listeners"]
    fn exposition_sizes() {
        let busy = fixture_with_kernel_stats().listeners[0].clone();
        let quiet = crate::model::Listener {
            accept_queue_len: 0,
            syn_queue_len: 0,
            drops: 0,
            queue_full: false,
            kernel: Some(crate::model::ListenerKernelStats::default()),
            ..busy.clone()
        };
        for (n, template, kind) in [
            (1_000u64, &busy, "busy"),
            (10_000, &busy, "busy"),
            (1_000, &quiet, "quiet"),
            (10_000, &quiet, "quiet"),
        ] {
            let listeners = (0..n)
                .map(|i| {
                    let mut l = (*template).clone();
                    l.inode = 1_000_000 + i;
                    l.port = 1024 + (i % 60_000) as u16;
                    l
                })
                .collect();
            let snapshot = crate::model::Snapshot {
                listeners,
                ..crate::model::Snapshot::default()
            };
            for (what, classic, format) in [
                ("text, short buckets", ClassicBuckets::Short, Format::Text),
                ("text, --fine-buckets", ClassicBuckets::Fine, Format::Text),
                ("protobuf", ClassicBuckets::Short, Format::Protobuf),
            ] {
                let started = std::time::Instant::now();
                let body = render_as(&snapshot, &build(), classic, format).expect("render");
                let rendered = started.elapsed();
                let gzipped = super::super::gzip(&body);
                eprintln!(
                    "{n:>6} {kind} listeners, {what:<22}: {:>10} bytes in {:>6.1} ms, gzip {:>9} \
                     bytes in {:>6.1} ms",
                    body.len(),
                    rendered.as_secs_f64() * 1e3,
                    gzipped.len(),
                    (started.elapsed() - rendered).as_secs_f64() * 1e3
                );
            }
        }
    }
}
