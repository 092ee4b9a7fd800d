//! `sockq run`'s settings, layered as tokio-console layers its own: documented
//! defaults, then the TOML file of `--config`, then each setting's `SOCKQ_*`
//! environment variable, then its flag.
//!
//! Hand-rolled rather than figment or config: clap already reads each setting's
//! flag and environment variable (the flag winning), so the layering left is one
//! `Option::or` per setting onto the file, and the file's errors stay the `toml`
//! crate's own, which name the line and the key.
//!
//! The comments of [`Settings::to_toml`] are the flags' own help (one text to keep
//! true); the README's example configuration is that output with the defaults
//! (`tests::readme_example_is_the_default_configuration`).
//!
//! A new setting of `sockq run` needs an `Option` field with `env` in
//! [`RunArgs`], a field and its default in [`Settings`], one in its file section, a
//! [`Key`] and a line in [`merge`]; `tests::every_setting_is_a_key_of_the_file`
//! fails until it has them all.

use std::{
    fmt::Write as _,
    net::SocketAddr,
    path::{Path, PathBuf},
    time::Duration,
};

use serde::{Deserialize, Deserializer, de::Error as _};

use super::RunArgs;
use crate::{
    analysis::listener_filter::{ListenerFilter, Rule},
    export::http::HEADER_READ_TIMEOUT,
};

/// The most connections `--conn-track-entries` may size the map for.
pub const CONN_TRACK_ENTRIES_MAX: u32 = 4_194_304;

/// Everything `sockq run` is configured with, once the layers are merged.
#[derive(Debug, Clone, PartialEq)]
pub struct Settings {
    pub metrics_addr: SocketAddr,
    pub web_config_file: Option<PathBuf>,
    pub no_api: bool,
    pub http_header_timeout: Duration,
    pub fine_buckets: bool,
    pub interval: Duration,
    pub nagle: bool,
    pub unix_connect_waits: bool,
    pub conn_track_entries: u32,
    pub listeners: ListenerFilter,
}

impl Default for Settings {
    fn default() -> Self {
        Self {
            metrics_addr: SocketAddr::from(([127, 0, 0, 1], 9750)),
            web_config_file: None,
            no_api: false,
            http_header_timeout: HEADER_READ_TIMEOUT,
            fine_buckets: false,
            interval: Duration::from_secs(1),
            nagle: false,
            unix_connect_waits: false,
            conn_track_entries: collector_common::nagle::CONNS_MAX_ENTRIES,
            listeners: ListenerFilter::default(),
        }
    }
}

/// Why the configuration could not be read. `sockq run` exits with status 2, as for
/// a bad flag.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("cannot read the configuration file {}", path.display())]
    Read {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    /// The `toml` crate's message: line, column, the offending key or value.
    #[error("configuration file {}: {message}", path.display())]
    Parse { path: PathBuf, message: String },
}

/// The file's layout: every key optional, unknown keys refused.
#[derive(Debug, Default, Deserialize)]
#[serde(default, deny_unknown_fields)]
struct File {
    http: HttpSection,
    poll: PollSection,
    probes: ProbesSection,
    listeners: ListenersSection,
}

#[derive(Debug, Default, Deserialize)]
#[serde(default, deny_unknown_fields)]
struct HttpSection {
    metrics_addr: Option<SocketAddr>,
    web_config_file: Option<PathBuf>,
    no_api: Option<bool>,
    #[serde(deserialize_with = "header_timeout")]
    http_header_timeout: Option<Duration>,
    fine_buckets: Option<bool>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(default, deny_unknown_fields)]
struct PollSection {
    #[serde(deserialize_with = "interval")]
    interval: Option<Duration>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(default, deny_unknown_fields)]
struct ProbesSection {
    nagle: Option<bool>,
    unix_connect_waits: Option<bool>,
    #[serde(deserialize_with = "conn_track_entries")]
    conn_track_entries: Option<u32>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(default, deny_unknown_fields)]
struct ListenersSection {
    include: Option<Vec<Rule>>,
    exclude: Option<Vec<Rule>>,
}

/// A number of seconds, integer or not, checked as the flag checks it.
fn seconds<'de, D: Deserializer<'de>>(
    d: D,
    check: fn(&str) -> Result<Duration, String>,
) -> Result<Option<Duration>, D::Error> {
    let secs = match toml::Value::deserialize(d)? {
        toml::Value::Integer(n) => n.to_string(),
        toml::Value::Float(f) => f.to_string(),
        other => {
            return Err(D::Error::custom(format!(
                "expected a number of seconds, found a {}",
                other.type_str()
            )));
        }
    };
    check(&secs).map(Some).map_err(D::Error::custom)
}

fn interval<'de, D: Deserializer<'de>>(d: D) -> Result<Option<Duration>, D::Error> {
    seconds(d, super::parse_interval)
}

fn header_timeout<'de, D: Deserializer<'de>>(d: D) -> Result<Option<Duration>, D::Error> {
    seconds(d, super::parse_header_timeout)
}

fn conn_track_entries<'de, D: Deserializer<'de>>(d: D) -> Result<Option<u32>, D::Error> {
    let n = i64::deserialize(d)?;
    u32::try_from(n)
        .ok()
        .filter(|n| (1..=CONN_TRACK_ENTRIES_MAX).contains(n))
        .map(Some)
        .ok_or_else(|| D::Error::custom(format!("{n} is outside 1..={CONN_TRACK_ENTRIES_MAX}")))
}

/// Reads and checks a configuration file.
fn read_file(path: &Path) -> Result<File, ConfigError> {
    let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
        path: path.to_owned(),
        source,
    })?;
    parse_file(&text).map_err(|message| ConfigError::Parse {
        path: path.to_owned(),
        message,
    })
}

fn parse_file(text: &str) -> Result<File, String> {
    toml::from_str(text).map_err(|e| e.to_string().trim_end().to_owned())
}

/// The settings `args` (flags, and the environment through clap) and the file they
/// name make, over the defaults.
pub fn resolve(args: &RunArgs) -> Result<Settings, ConfigError> {
    let file = match &args.config {
        Some(path) => {
            let mut file = read_file(path)?;
            // Relative to the file's directory, as the web configuration's own paths
            // are to it (a unit's working directory is `/`).
            let dir = path.parent().unwrap_or(Path::new(""));
            file.http.web_config_file = file.http.web_config_file.map(|p| dir.join(p));
            file
        }
        None => File::default(),
    };
    Ok(merge(file, args))
}

/// The settings a configuration file's text makes alone (no flag, no environment);
/// the error is the `toml` crate's, with line and key.
pub fn from_toml(text: &str) -> Result<Settings, String> {
    parse_file(text).map(|file| merge(file, &RunArgs::default()))
}

/// Flags (and environment) over the file over the defaults. A list given by a flag
/// or its environment variable replaces the file's.
fn merge(file: File, args: &RunArgs) -> Settings {
    let d = Settings::default();
    let list = |flag: &[Rule], file: Option<Vec<Rule>>, default: Vec<Rule>| {
        if flag.is_empty() {
            file.unwrap_or(default)
        } else {
            flag.to_vec()
        }
    };
    Settings {
        metrics_addr: args
            .metrics_addr
            .or(file.http.metrics_addr)
            .unwrap_or(d.metrics_addr),
        web_config_file: args.web_config_file.clone().or(file.http.web_config_file),
        no_api: args.no_api.or(file.http.no_api).unwrap_or(d.no_api),
        http_header_timeout: args
            .http_header_timeout
            .or(file.http.http_header_timeout)
            .unwrap_or(d.http_header_timeout),
        fine_buckets: args
            .fine_buckets
            .or(file.http.fine_buckets)
            .unwrap_or(d.fine_buckets),
        interval: args.interval.or(file.poll.interval).unwrap_or(d.interval),
        nagle: args.nagle.or(file.probes.nagle).unwrap_or(d.nagle),
        unix_connect_waits: args
            .unix_connect_waits
            .or(file.probes.unix_connect_waits)
            .unwrap_or(d.unix_connect_waits),
        conn_track_entries: args
            .conn_track_entries
            .or(file.probes.conn_track_entries)
            .unwrap_or(d.conn_track_entries),
        listeners: ListenerFilter {
            include: list(
                &args.listeners_include,
                file.listeners.include,
                d.listeners.include,
            ),
            exclude: list(
                &args.listeners_exclude,
                file.listeners.exclude,
                d.listeners.exclude,
            ),
        },
    }
}

/// One key of the file: where it goes, the flag it stands for, and its value.
struct Key {
    section: &'static str,
    key: &'static str,
    /// The clap id of its flag (its help documents the key).
    arg: &'static str,
    /// `None`: no value (the key is printed commented out).
    value: fn(&Settings) -> Option<toml::Value>,
    /// What to show for a key without a value.
    example: &'static str,
}

fn seconds_value(d: Duration) -> toml::Value {
    toml::Value::Float(d.as_secs_f64())
}

fn rules_value(rules: &[Rule]) -> toml::Value {
    toml::Value::Array(
        rules
            .iter()
            .map(|r| toml::Value::String(r.to_string()))
            .collect(),
    )
}

const KEYS: &[Key] = &[
    Key {
        section: "http",
        key: "metrics_addr",
        arg: "metrics_addr",
        value: |s| Some(toml::Value::String(s.metrics_addr.to_string())),
        example: "",
    },
    Key {
        section: "http",
        key: "web_config_file",
        arg: "web_config_file",
        value: |s| {
            let path = s.web_config_file.as_ref()?;
            Some(toml::Value::String(path.display().to_string()))
        },
        example: "\"/etc/sockq/web-config.yml\"",
    },
    Key {
        section: "http",
        key: "no_api",
        arg: "no_api",
        value: |s| Some(toml::Value::Boolean(s.no_api)),
        example: "",
    },
    Key {
        section: "http",
        key: "http_header_timeout",
        arg: "http_header_timeout",
        value: |s| Some(seconds_value(s.http_header_timeout)),
        example: "",
    },
    Key {
        section: "http",
        key: "fine_buckets",
        arg: "fine_buckets",
        value: |s| Some(toml::Value::Boolean(s.fine_buckets)),
        example: "",
    },
    Key {
        section: "poll",
        key: "interval",
        arg: "interval",
        value: |s| Some(seconds_value(s.interval)),
        example: "",
    },
    Key {
        section: "probes",
        key: "nagle",
        arg: "nagle",
        value: |s| Some(toml::Value::Boolean(s.nagle)),
        example: "",
    },
    Key {
        section: "probes",
        key: "unix_connect_waits",
        arg: "unix_connect_waits",
        value: |s| Some(toml::Value::Boolean(s.unix_connect_waits)),
        example: "",
    },
    Key {
        section: "probes",
        key: "conn_track_entries",
        arg: "conn_track_entries",
        value: |s| Some(toml::Value::Integer(i64::from(s.conn_track_entries))),
        example: "",
    },
    Key {
        section: "listeners",
        key: "include",
        arg: "listeners_include",
        value: |s| Some(rules_value(&s.listeners.include)),
        example: "",
    },
    Key {
        section: "listeners",
        key: "exclude",
        arg: "listeners_exclude",
        value: |s| Some(rules_value(&s.listeners.exclude)),
        example: "",
    },
];

/// The first line of the printed configuration.
const HEADER: &str = "sockq run's configuration (`sockq run --config PATH`), as `sockq run \
    --print-config` prints it. Every key is optional. A key's SOCKQ_* environment variable \
    overrides the file, and its flag overrides both.";

/// The default of each key as it reads in `--help` (`[default: ...]`), by clap id.
pub fn defaults_for_help() -> Vec<(&'static str, String)> {
    let d = Settings::default();
    KEYS.iter()
        .map(|k| {
            let shown = match (k.value)(&d) {
                Some(toml::Value::String(s)) => s,
                Some(toml::Value::Array(a)) if a.is_empty() => "none".to_owned(),
                Some(v) => v.to_string(),
                None => "none".to_owned(),
            };
            (k.arg, shown)
        })
        .collect()
}

impl Settings {
    /// This configuration as a TOML file: each key preceded by its flag's help, its
    /// default, its environment variable and its flag.
    pub fn to_toml(&self) -> String {
        let command = <RunArgs as clap::Args>::augment_args(clap::Command::new("run"));
        let defaults = Settings::default();
        let mut out = String::new();
        push_comment(&mut out, HEADER);
        let mut section = "";
        for k in KEYS {
            if k.section != section {
                section = k.section;
                let _ = write!(out, "\n[{section}]\n");
            }
            let arg = command.get_arguments().find(|a| a.get_id() == k.arg);
            let help = arg
                .and_then(|a| a.get_help())
                .map(|h| h.to_string())
                .unwrap_or_default();
            let env = arg
                .and_then(|a| a.get_env())
                .map(|e| e.to_string_lossy().into_owned())
                .unwrap_or_default();
            let flag = arg.and_then(|a| a.get_long()).unwrap_or(k.arg);
            let default = (k.value)(&defaults).map_or_else(|| "none".to_owned(), |v| v.to_string());
            out.push('\n');
            // clap drops the last period of a one-paragraph help.
            push_comment(&mut out, &format!("{}.", help.trim_end_matches('.')));
            push_comment(
                &mut out,
                &format!("Default: {default}. Environment: {env}. Flag: --{flag}."),
            );
            match (k.value)(self) {
                Some(v) => {
                    let _ = writeln!(out, "{} = {v}", k.key);
                }
                None => {
                    let _ = writeln!(out, "# {} = {}", k.key, k.example);
                }
            }
        }
        out
    }
}

/// `text` as `#` comment lines of at most 88 columns.
fn push_comment(out: &mut String, text: &str) {
    let mut line = String::from("#");
    for word in text.split_whitespace() {
        if line.len() > 1 && line.len() + 1 + word.len() > 88 {
            out.push_str(&line);
            out.push('\n');
            line = String::from("#");
        }
        line.push(' ');
        line.push_str(word);
    }
    if line.len() > 1 {
        out.push_str(&line);
        out.push('\n');
    }
}

#[cfg(test)]
mod tests;
