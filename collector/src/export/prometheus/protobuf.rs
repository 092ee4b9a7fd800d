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
    use super::*;

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
}
