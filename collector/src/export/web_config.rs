//! `--web-config-file`: the web configuration file of Prometheus' exporter-toolkit
//! (its `docs/web-configuration.md`), so that the file a team already uses for
//! node_exporter works for sockq unchanged. This module parses and validates it
//! and does no I/O: the certificate files it names are read when the TLS settings
//! are built (`export::http::tls`). Fuzzed by `fuzz/fuzz_targets/web_config.rs`.
//!
//! Parsing is as strict as exporter-toolkit's (`yaml.UnmarshalStrict`): an unknown
//! key, a duplicate key or a value of the wrong type is an error naming where it is.
//! Relative paths are relative to the file's directory. What sockq does with each key:
//!
//! | key | sockq |
//! | --- | --- |
//! | `tls_server_config.cert_file`, `key_file`, `cert`, `key` | served (a file wins over inline PEM, as in exporter-toolkit) |
//! | `client_auth_type` | `NoClientCert`, `VerifyClientCertIfGiven`, `RequireAndVerifyClientCert`; `RequestClientCert` and `RequireAnyClientCert` (which check nothing) are refused |
//! | `client_ca_file`, `client_ca` | the roots client certificates are verified against |
//! | `client_allowed_sans` | refused (not implemented: pin clients by their CA instead) |
//! | `min_version`, `max_version` | `TLS12`, `TLS13`; a minimum of `TLS10`/`TLS11` is raised to `TLS12` (with a note), a maximum below `TLS12` is refused: rustls has neither |
//! | `cipher_suites` | the six ECDHE AEAD suites (TLS 1.2); TLS 1.3 names are accepted and, as in Go, change nothing; the CBC suites are refused |
//! | `prefer_server_cipher_suites` | served (rustls's `ignore_client_order`) |
//! | `curve_preferences` | `X25519`, `CurveP256`, `CurveP384`; `CurveP521` is refused (not in rustls's ring provider) |
//! | `http_server_config.headers` | the five headers exporter-toolkit allows, with its value checks; added where a handler did not set one |
//! | `http_server_config.http2` | accepted; sockq serves HTTP/1.1 only (a note when it is `true`) |
//! | `basic_auth_users` | bcrypt hashes (`$2a$`, `$2b$`, `$2x$`, `$2y$`, cost 4 to 31) |
//! | `rate_limit.interval`, `burst` | a token bucket in front of every request (429 past it); a Go duration such as `100ms` |

mod raw;

use std::{
    collections::BTreeMap,
    fmt,
    path::{Path, PathBuf},
    time::Duration,
};

use self::raw::{Raw, RawRateLimit, RawTls};

/// Why a web configuration was refused. Messages name the key; never a secret.
#[derive(Debug, thiserror::Error)]
pub enum WebConfigError {
    #[error("not a valid web configuration: {0}")]
    Yaml(#[source] serde_yaml_ng::Error),
    #[error("tls_server_config: missing one of {0}")]
    Missing(&'static str),
    #[error("tls_server_config.{key}: {value:?} is not supported by sockq: {why}")]
    Unsupported {
        key: &'static str,
        value: String,
        why: &'static str,
    },
    #[error("{key}: unknown value {value:?}; expected one of {expected}")]
    Unknown {
        key: &'static str,
        value: String,
        expected: &'static str,
    },
    #[error(
        "tls_server_config: client CAs are configured without a client_auth_type \
         (use RequireAndVerifyClientCert)"
    )]
    CaWithoutClientAuth,
    #[error("tls_server_config.client_auth_type {0}: needs client_ca_file or client_ca")]
    ClientAuthWithoutCa(&'static str),
    #[error("tls_server_config: min_version {min} is above max_version {max}")]
    VersionRange { min: TlsVersion, max: TlsVersion },
    #[error(
        "tls_server_config.cipher_suites: no TLS 1.2 suite is listed, but max_version \
         is TLS12"
    )]
    NoTls12Suite,
    #[error("http_server_config.headers: {0}")]
    Header(String),
    #[error("basic_auth_users: the password of {user:?} is not a bcrypt hash ({why})")]
    Hash { user: String, why: String },
    #[error("basic_auth_users: an empty user name")]
    EmptyUser,
    #[error("rate_limit: {0}")]
    RateLimit(String),
}

/// A validated web configuration.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct WebConfig {
    /// TLS, when any of the certificate or client-CA keys is set (as exporter-toolkit
    /// decides); else plain HTTP.
    pub tls: Option<TlsConfig>,
    /// User name to bcrypt hash; empty: no basic authentication.
    pub users: BTreeMap<String, String>,
    /// Headers added to every answer (validated names and values).
    pub headers: Vec<(String, String)>,
    pub rate_limit: Option<RateLimit>,
    /// What sockq does differently from what the file asks (logged at load).
    pub notes: Vec<String>,
}

/// Where a PEM document comes from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Pem {
    File(PathBuf),
    Inline(String),
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TlsConfig {
    pub cert: Pem,
    pub key: Pem,
    pub client_auth: ClientAuth,
    pub client_ca: Option<Pem>,
    pub min_version: TlsVersion,
    pub max_version: TlsVersion,
    /// TLS 1.2 suites in preference order; empty: rustls's defaults.
    pub cipher_suites: Vec<CipherSuite>,
    /// TLS 1.2 is off because the listed suites were all TLS 1.3 ones (as in Go).
    pub tls12_suites_listed_empty: bool,
    pub prefer_server_cipher_suites: bool,
    /// Key exchange groups in preference order; empty: rustls's defaults.
    pub curves: Vec<Curve>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ClientAuth {
    NoClientCert,
    VerifyClientCertIfGiven,
    RequireAndVerifyClientCert,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum TlsVersion {
    Tls12,
    Tls13,
}

impl fmt::Display for TlsVersion {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Self::Tls12 => "TLS12",
            Self::Tls13 => "TLS13",
        })
    }
}

/// The TLS 1.2 suites rustls implements, by their Go names.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CipherSuite {
    EcdheEcdsaAes128Gcm,
    EcdheEcdsaAes256Gcm,
    EcdheEcdsaChacha20,
    EcdheRsaAes128Gcm,
    EcdheRsaAes256Gcm,
    EcdheRsaChacha20,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Curve {
    X25519,
    P256,
    P384,
}

/// A token bucket: `burst` requests at once, one more every `interval`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RateLimit {
    pub interval: Duration,
    pub burst: u32,
}

impl WebConfig {
    /// Whether every request must authenticate (basic auth, or a verified client
    /// certificate on every connection).
    pub fn authenticates(&self) -> bool {
        !self.users.is_empty()
            || self
                .tls
                .as_ref()
                .is_some_and(|t| t.client_auth == ClientAuth::RequireAndVerifyClientCert)
    }

    /// The files the configuration names (to watch for changes).
    pub fn files(&self) -> Vec<PathBuf> {
        let Some(tls) = &self.tls else {
            return Vec::new();
        };
        [Some(&tls.cert), Some(&tls.key), tls.client_ca.as_ref()]
            .into_iter()
            .flatten()
            .filter_map(|pem| match pem {
                Pem::File(path) => Some(path.clone()),
                Pem::Inline(_) => None,
            })
            .collect()
    }
}

/// Parses and validates a web configuration; relative paths are joined to `dir`
/// (the file's directory). An empty file is valid: plain HTTP, no authentication.
pub fn parse(text: &str, dir: &Path) -> Result<WebConfig, WebConfigError> {
    let raw: Option<Raw> = serde_yaml_ng::from_str(text).map_err(WebConfigError::Yaml)?;
    let raw = raw.unwrap_or_default();
    let mut notes = Vec::new();
    let tls = match raw.tls_server_config {
        Some(t) if t.is_enabled() => Some(tls_config(t, dir, &mut notes)?),
        _ => None,
    };
    let (headers, http2) = raw
        .http_server_config
        .map(|h| (h.headers.map(|m| m.0).unwrap_or_default(), h.http2))
        .unwrap_or_default();
    if http2 == Some(true) {
        notes.push("http_server_config.http2: sockq serves HTTP/1.1 only".to_owned());
    }
    Ok(WebConfig {
        tls,
        users: users(raw.basic_auth_users.map(|m| m.0).unwrap_or_default())?,
        headers: headers_checked(headers)?,
        rate_limit: raw.rate_limit.map(rate_limit).transpose()?.flatten(),
        notes,
    })
}

fn non_empty(s: &Option<String>) -> Option<&str> {
    s.as_deref().filter(|s| !s.is_empty())
}

/// The file if one is named (joined to `dir`), else the inline PEM.
fn pem(file: &Option<String>, inline: &Option<String>, dir: &Path) -> Option<Pem> {
    match (non_empty(file), non_empty(inline)) {
        (Some(file), _) => Some(Pem::File(dir.join(file))),
        (None, Some(inline)) => Some(Pem::Inline(inline.to_owned())),
        (None, None) => None,
    }
}

fn tls_config(
    raw: RawTls,
    dir: &Path,
    notes: &mut Vec<String>,
) -> Result<TlsConfig, WebConfigError> {
    let cert =
        pem(&raw.cert_file, &raw.cert, dir).ok_or(WebConfigError::Missing("cert or cert_file"))?;
    let key =
        pem(&raw.key_file, &raw.key, dir).ok_or(WebConfigError::Missing("key or key_file"))?;
    let client_ca = pem(&raw.client_ca_file, &raw.client_ca, dir);
    let client_auth = client_auth(non_empty(&raw.client_auth_type).unwrap_or("NoClientCert"))?;
    match (client_auth, &client_ca) {
        (ClientAuth::NoClientCert, Some(_)) => return Err(WebConfigError::CaWithoutClientAuth),
        (ClientAuth::VerifyClientCertIfGiven, None) => {
            return Err(WebConfigError::ClientAuthWithoutCa(
                "VerifyClientCertIfGiven",
            ));
        }
        (ClientAuth::RequireAndVerifyClientCert, None) => {
            return Err(WebConfigError::ClientAuthWithoutCa(
                "RequireAndVerifyClientCert",
            ));
        }
        _ => {}
    }
    if raw.client_allowed_sans.is_some() {
        return Err(WebConfigError::Unsupported {
            key: "client_allowed_sans",
            value: raw.client_allowed_sans.unwrap_or_default().join(", "),
            why: "not implemented; accept only the clients your client_ca_file signs",
        });
    }
    let min_version = match non_empty(&raw.min_version) {
        None => TlsVersion::Tls12,
        Some(v @ ("TLS10" | "TLS11")) => {
            notes.push(format!(
                "tls_server_config.min_version {v}: raised to TLS12 (rustls has no TLS 1.0 or 1.1)"
            ));
            TlsVersion::Tls12
        }
        Some(v) => tls_version("min_version", v)?,
    };
    let max_version = match non_empty(&raw.max_version) {
        None => TlsVersion::Tls13,
        Some(v) => tls_version("max_version", v)?,
    };
    if min_version > max_version {
        return Err(WebConfigError::VersionRange {
            min: min_version,
            max: max_version,
        });
    }
    let listed = raw.cipher_suites.unwrap_or_default();
    let cipher_suites = listed
        .iter()
        .filter_map(|name| cipher_suite(name).transpose())
        .collect::<Result<Vec<_>, _>>()?;
    let tls12_suites_listed_empty = !listed.is_empty() && cipher_suites.is_empty();
    if tls12_suites_listed_empty && max_version == TlsVersion::Tls12 {
        return Err(WebConfigError::NoTls12Suite);
    }
    let curves = raw
        .curve_preferences
        .unwrap_or_default()
        .iter()
        .map(|name| curve(name))
        .collect::<Result<Vec<_>, _>>()?;
    Ok(TlsConfig {
        cert,
        key,
        client_auth,
        client_ca,
        min_version,
        max_version,
        cipher_suites,
        tls12_suites_listed_empty,
        prefer_server_cipher_suites: raw.prefer_server_cipher_suites.unwrap_or(true),
        curves,
    })
}

fn client_auth(value: &str) -> Result<ClientAuth, WebConfigError> {
    match value {
        "NoClientCert" => Ok(ClientAuth::NoClientCert),
        "VerifyClientCertIfGiven" => Ok(ClientAuth::VerifyClientCertIfGiven),
        "RequireAndVerifyClientCert" => Ok(ClientAuth::RequireAndVerifyClientCert),
        "RequestClientCert" | "RequireAnyClientCert" | "RequireClientCert" => {
            Err(WebConfigError::Unsupported {
                key: "client_auth_type",
                value: value.to_owned(),
                why: "it accepts any certificate without verifying it; use \
                      RequireAndVerifyClientCert",
            })
        }
        _ => Err(WebConfigError::Unknown {
            key: "tls_server_config.client_auth_type",
            value: value.to_owned(),
            expected: "NoClientCert, VerifyClientCertIfGiven, RequireAndVerifyClientCert",
        }),
    }
}

fn tls_version(key: &'static str, value: &str) -> Result<TlsVersion, WebConfigError> {
    match value {
        "TLS12" => Ok(TlsVersion::Tls12),
        "TLS13" => Ok(TlsVersion::Tls13),
        "TLS10" | "TLS11" => Err(WebConfigError::Unsupported {
            key,
            value: value.to_owned(),
            why: "rustls implements TLS 1.2 and 1.3 only",
        }),
        _ => Err(WebConfigError::Unknown {
            key: if key == "min_version" {
                "tls_server_config.min_version"
            } else {
                "tls_server_config.max_version"
            },
            value: value.to_owned(),
            expected: "TLS12, TLS13",
        }),
    }
}

/// A TLS 1.2 suite by its Go name; `None` for TLS 1.3 names (Go ignores them too).
fn cipher_suite(name: &str) -> Result<Option<CipherSuite>, WebConfigError> {
    use CipherSuite::*;
    Ok(Some(match name {
        "TLS_ECDHE_ECDSA_WITH_AES_128_GCM_SHA256" => EcdheEcdsaAes128Gcm,
        "TLS_ECDHE_ECDSA_WITH_AES_256_GCM_SHA384" => EcdheEcdsaAes256Gcm,
        "TLS_ECDHE_ECDSA_WITH_CHACHA20_POLY1305_SHA256" => EcdheEcdsaChacha20,
        "TLS_ECDHE_RSA_WITH_AES_128_GCM_SHA256" => EcdheRsaAes128Gcm,
        "TLS_ECDHE_RSA_WITH_AES_256_GCM_SHA384" => EcdheRsaAes256Gcm,
        "TLS_ECDHE_RSA_WITH_CHACHA20_POLY1305_SHA256" => EcdheRsaChacha20,
        "TLS_AES_128_GCM_SHA256" | "TLS_AES_256_GCM_SHA384" | "TLS_CHACHA20_POLY1305_SHA256" => {
            return Ok(None);
        }
        "TLS_ECDHE_ECDSA_WITH_AES_128_CBC_SHA"
        | "TLS_ECDHE_ECDSA_WITH_AES_256_CBC_SHA"
        | "TLS_ECDHE_RSA_WITH_AES_128_CBC_SHA"
        | "TLS_ECDHE_RSA_WITH_AES_256_CBC_SHA" => {
            return Err(WebConfigError::Unsupported {
                key: "cipher_suites",
                value: name.to_owned(),
                why: "rustls implements AEAD suites (GCM, ChaCha20-Poly1305) only",
            });
        }
        _ => {
            return Err(WebConfigError::Unknown {
                key: "tls_server_config.cipher_suites",
                value: name.to_owned(),
                expected: "the names of Go's tls.CipherSuites(), e.g. \
                           TLS_ECDHE_RSA_WITH_AES_128_GCM_SHA256",
            });
        }
    }))
}

fn curve(name: &str) -> Result<Curve, WebConfigError> {
    match name {
        "X25519" => Ok(Curve::X25519),
        "CurveP256" => Ok(Curve::P256),
        "CurveP384" => Ok(Curve::P384),
        "CurveP521" => Err(WebConfigError::Unsupported {
            key: "curve_preferences",
            value: name.to_owned(),
            why: "rustls's ring provider has no P-521",
        }),
        _ => Err(WebConfigError::Unknown {
            key: "tls_server_config.curve_preferences",
            value: name.to_owned(),
            expected: "X25519, CurveP256, CurveP384, CurveP521",
        }),
    }
}

/// The headers exporter-toolkit lets a file set, with the values it accepts (none
/// listed: any value).
const HEADERS: [(&str, &[&str]); 5] = [
    ("Strict-Transport-Security", &[]),
    ("X-Content-Type-Options", &["nosniff"]),
    ("X-Frame-Options", &["deny", "sameorigin"]),
    ("X-XSS-Protection", &[]),
    ("Content-Security-Policy", &[]),
];

fn headers_checked(
    headers: BTreeMap<String, Option<String>>,
) -> Result<Vec<(String, String)>, WebConfigError> {
    let mut out = Vec::new();
    for (name, value) in headers {
        let Some((_, allowed)) = HEADERS.iter().find(|(n, _)| *n == name) else {
            return Err(WebConfigError::Header(format!(
                "HTTP header {name:?} can not be configured"
            )));
        };
        let value = value.unwrap_or_default();
        if !allowed.is_empty() && !allowed.contains(&value.as_str()) {
            return Err(WebConfigError::Header(format!(
                "invalid value for {name}. Expected one of: {allowed:?}, but got: {value:?}"
            )));
        }
        if value.bytes().any(|b| b != b'\t' && (b < 0x20 || b == 0x7f)) {
            return Err(WebConfigError::Header(format!(
                "the value of {name} has a control character"
            )));
        }
        // Blank: unset.
        if !value.is_empty() {
            out.push((name, value));
        }
    }
    Ok(out)
}

fn users(users: BTreeMap<String, String>) -> Result<BTreeMap<String, String>, WebConfigError> {
    for (user, hash) in &users {
        if user.is_empty() {
            return Err(WebConfigError::EmptyUser);
        }
        let parts: bcrypt::HashParts =
            hash.parse()
                .map_err(|e: bcrypt::BcryptError| WebConfigError::Hash {
                    user: user.clone(),
                    why: e.to_string(),
                })?;
        let cost = parts.get_cost();
        if !(4..=31).contains(&cost) {
            return Err(WebConfigError::Hash {
                user: user.clone(),
                why: format!("cost {cost} is outside 4..=31"),
            });
        }
    }
    Ok(users)
}

fn rate_limit(raw: RawRateLimit) -> Result<Option<RateLimit>, WebConfigError> {
    let interval = match non_empty(&raw.interval) {
        Some(text) => go_duration(text).map_err(WebConfigError::RateLimit)?,
        None => Duration::ZERO,
    };
    // As in exporter-toolkit: an interval of 0 turns the limiter off.
    if interval.is_zero() {
        return Ok(None);
    }
    let burst = raw.burst.unwrap_or(0);
    let burst = u32::try_from(burst)
        .ok()
        .filter(|b| *b >= 1)
        .ok_or_else(|| WebConfigError::RateLimit(format!("burst {burst} must be at least 1")))?;
    Ok(Some(RateLimit { interval, burst }))
}

/// The longest rate-limit interval accepted: a day.
const MAX_INTERVAL: Duration = Duration::from_secs(86_400);

/// A Go duration (`time.ParseDuration`): `300ms`, `1.5s`, `1m30s`, `0`; not negative
/// and at most [`MAX_INTERVAL`].
pub fn go_duration(text: &str) -> Result<Duration, String> {
    let bad = || format!("invalid duration {text:?} (Go syntax: 300ms, 1.5s, 1m30s)");
    if text == "0" {
        return Ok(Duration::ZERO);
    }
    let mut rest = text.strip_prefix('+').unwrap_or(text);
    if rest.starts_with('-') {
        return Err(format!("duration {text:?} is negative"));
    }
    if rest.is_empty() {
        return Err(bad());
    }
    let mut total = 0.0f64;
    while !rest.is_empty() {
        let number_len = rest
            .find(|c: char| !(c.is_ascii_digit() || c == '.'))
            .unwrap_or(rest.len());
        let (number, after) = rest.split_at(number_len);
        let value: f64 = number.parse().map_err(|_| bad())?;
        let unit_len = after
            .find(|c: char| c.is_ascii_digit() || c == '.')
            .unwrap_or(after.len());
        let (unit, after) = after.split_at(unit_len);
        let seconds = match unit {
            "ns" => 1e-9,
            "us" | "\u{b5}s" | "\u{3bc}s" => 1e-6,
            "ms" => 1e-3,
            "s" => 1.0,
            "m" => 60.0,
            "h" => 3600.0,
            _ => return Err(bad()),
        };
        total += value * seconds;
        rest = after;
    }
    if !total.is_finite() || total > MAX_INTERVAL.as_secs_f64() {
        return Err(format!("duration {text:?} is longer than {MAX_INTERVAL:?}"));
    }
    Ok(Duration::from_secs_f64(total))
}

#[cfg(test)]
mod tests;
