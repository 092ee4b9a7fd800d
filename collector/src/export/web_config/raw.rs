//! The web configuration's keys as serde reads them: every key exporter-toolkit
//! knows, each value optional (a YAML null leaves the default, as in Go), unknown and
//! duplicate keys refused (as `yaml.UnmarshalStrict` does).

use std::{collections::BTreeMap, fmt, marker::PhantomData};

use serde::{Deserialize, Deserializer, de};

/// The file's keys, as exporter-toolkit names them. Every value may be null (as in Go,
/// where null leaves the default).
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct Raw {
    #[serde(default)]
    pub(super) tls_server_config: Option<RawTls>,
    #[serde(default)]
    pub(super) http_server_config: Option<RawHttp>,
    #[serde(default)]
    pub(super) basic_auth_users: Option<UniqueMap<String>>,
    #[serde(default)]
    pub(super) rate_limit: Option<RawRateLimit>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawTls {
    #[serde(default)]
    pub(super) cert: Option<String>,
    #[serde(default)]
    pub(super) key: Option<String>,
    #[serde(default)]
    pub(super) client_ca: Option<String>,
    #[serde(default)]
    pub(super) cert_file: Option<String>,
    #[serde(default)]
    pub(super) key_file: Option<String>,
    #[serde(default)]
    pub(super) client_auth_type: Option<String>,
    #[serde(default)]
    pub(super) client_ca_file: Option<String>,
    #[serde(default)]
    pub(super) client_allowed_sans: Option<Vec<String>>,
    #[serde(default)]
    pub(super) min_version: Option<String>,
    #[serde(default)]
    pub(super) max_version: Option<String>,
    #[serde(default)]
    pub(super) cipher_suites: Option<Vec<String>>,
    #[serde(default)]
    pub(super) prefer_server_cipher_suites: Option<bool>,
    #[serde(default)]
    pub(super) curve_preferences: Option<Vec<String>>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawHttp {
    #[serde(default)]
    pub(super) http2: Option<bool>,
    #[serde(default)]
    pub(super) headers: Option<UniqueMap<Option<String>>>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawRateLimit {
    #[serde(default)]
    pub(super) interval: Option<String>,
    #[serde(default)]
    pub(super) burst: Option<i64>,
}

/// A string-keyed mapping that refuses duplicate keys (yaml.v2's strict mode does).
#[derive(Debug, Default)]
pub(super) struct UniqueMap<V>(pub(super) BTreeMap<String, V>);

impl<'de, V: Deserialize<'de>> Deserialize<'de> for UniqueMap<V> {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct Visit<V>(PhantomData<V>);
        impl<'de, V: Deserialize<'de>> de::Visitor<'de> for Visit<V> {
            type Value = UniqueMap<V>;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a mapping with string keys")
            }
            fn visit_unit<E: de::Error>(self) -> Result<Self::Value, E> {
                Ok(UniqueMap(BTreeMap::new()))
            }
            fn visit_map<A: de::MapAccess<'de>>(self, mut map: A) -> Result<Self::Value, A::Error> {
                let mut out = BTreeMap::new();
                while let Some((key, value)) = map.next_entry::<String, V>()? {
                    if out.contains_key(&key) {
                        return Err(de::Error::custom(format!("duplicate key {key:?}")));
                    }
                    out.insert(key, value);
                }
                Ok(UniqueMap(out))
            }
        }
        deserializer.deserialize_map(Visit(PhantomData))
    }
}

impl RawTls {
    /// exporter-toolkit's `TLSConfig.IsEnabled`: any certificate, key or client-CA
    /// key set.
    pub(super) fn is_enabled(&self) -> bool {
        [
            &self.cert,
            &self.key,
            &self.client_ca,
            &self.cert_file,
            &self.key_file,
            &self.client_ca_file,
            &self.client_auth_type,
        ]
        .into_iter()
        .any(|v| super::non_empty(v).is_some())
    }
}
