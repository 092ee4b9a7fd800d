//! The labels of one series: the labels many series carry (a listener's identity,
//! on each of its series) shared behind one reference count, then the series' own.
//! With 10,000 listeners, cloning the identity as strings for every series was a
//! fifth of a render, in malloc and free.

use std::sync::Arc;

use prometheus_client::encoding::{EncodeLabelSet, LabelSetEncoder};

/// One label: its name and its value, escaped when encoded.
pub(super) type Label = (&'static str, String);

/// A series' labels, in output order: the shared ones, then its own.
#[derive(Debug, Clone, Default)]
pub(super) struct Labels {
    shared: Option<Arc<[Label]>>,
    own: Vec<Label>,
}

impl Labels {
    /// Labels that many series will carry: a clone costs a reference count.
    pub(super) fn shared(labels: impl Into<Arc<[Label]>>) -> Self {
        Self {
            shared: Some(labels.into()),
            own: Vec::new(),
        }
    }

    /// These labels followed by `name="value"`.
    pub(super) fn with(&self, name: &'static str, value: impl Into<String>) -> Self {
        let mut labels = self.clone();
        labels.push(name, value);
        labels
    }

    /// Appends `name="value"`.
    pub(super) fn push(&mut self, name: &'static str, value: impl Into<String>) {
        self.own.push((name, value.into()));
    }

    pub(super) fn is_empty(&self) -> bool {
        self.own.is_empty() && self.shared.as_ref().is_none_or(|s| s.is_empty())
    }
}

impl From<Vec<Label>> for Labels {
    fn from(own: Vec<Label>) -> Self {
        Self { shared: None, own }
    }
}

impl EncodeLabelSet for Labels {
    fn encode(&self, encoder: &mut LabelSetEncoder) -> Result<(), std::fmt::Error> {
        if let Some(shared) = &self.shared {
            (&shared[..]).encode(encoder)?;
        }
        self.own.as_slice().encode(encoder)
    }
}

#[cfg(test)]
mod tests {
    use prometheus_client::{
        collector::Collector,
        encoding::{DescriptorEncoder, EncodeMetric as _, text::encode_registry},
        metrics::{MetricType, gauge::ConstGauge},
        registry::Registry,
    };

    use super::*;

    #[derive(Debug)]
    struct One(Labels);

    impl Collector for One {
        fn encode(&self, mut encoder: DescriptorEncoder) -> Result<(), std::fmt::Error> {
            let mut family = encoder.encode_descriptor("x", "help", None, MetricType::Gauge)?;
            ConstGauge::new(1_i64).encode(family.encode_family(&self.0)?)
        }
    }

    fn text(labels: Labels) -> String {
        let mut registry = Registry::default();
        registry.register_collector(Box::new(One(labels)));
        let mut out = String::new();
        encode_registry(&mut out, &registry).expect("encode");
        out.lines()
            .find(|l| l.starts_with("x{"))
            .unwrap_or_default()
            .to_owned()
    }

    #[test]
    fn shared_then_own_labels_in_order_and_escaped() {
        let id = Labels::shared([("a", "1".to_owned()), ("b", "q\"\\\n".to_owned())]);
        let series = id.with("c", "3").with("d", String::new());
        assert_eq!(text(series), r#"x{a="1",b="q\"\\\n",c="3",d=""} 1"#);
        assert_eq!(text(id.clone()), r#"x{a="1",b="q\"\\\n"} 1"#);
        assert_eq!(text(vec![("e", "5".to_owned())].into()), r#"x{e="5"} 1"#);
        assert!(Labels::default().is_empty());
        assert!(Labels::shared([]).is_empty());
        assert!(!id.is_empty());
    }
}
