//! The web configuration in force, and its reloads. [`LiveSettings`] holds the
//! current [`WebSettings`] behind an `Arc` swapped whole (as the snapshot is): each
//! new connection takes the TLS settings in force when it is accepted, each request
//! the authentication, headers and rate limit. [`LiveSettings::watch`] reloads on
//! SIGHUP and when the file, or a certificate or key it names, changes (their
//! device, inode, size and times are compared every [`WATCH_INTERVAL`]: this also
//! sees Kubernetes swapping a Secret volume's symlinks, which an inotify watch on
//! the file itself misses). A reload that fails (malformed file, unreadable or
//! mismatched certificate, or one that would switch TLS on or off) is logged and
//! changes nothing: the previous settings stay in force.

use std::{
    future::Future,
    io,
    os::unix::fs::MetadataExt as _,
    path::{Path, PathBuf},
    sync::{Arc, Mutex, PoisonError, RwLock},
    time::Duration,
};

use axum::http::{HeaderName, HeaderValue};
use rustls::ServerConfig;

use super::{
    auth::{BasicAuth, RateLimiter},
    tls::{self, TlsError},
};
use crate::export::web_config::{self, WebConfig, WebConfigError};

/// How often the files are checked for changes.
pub const WATCH_INTERVAL: Duration = Duration::from_secs(2);

/// The largest web configuration file read.
pub const MAX_CONFIG_BYTES: u64 = 1024 * 1024;

/// What the server applies to connections and requests.
#[derive(Debug, Default)]
pub struct WebSettings {
    pub(super) tls: Option<Arc<ServerConfig>>,
    pub(super) auth: Option<BasicAuth>,
    /// Every request authenticates (basic auth, or a verified client certificate).
    pub(super) authenticates: bool,
    pub(super) headers: Vec<(HeaderName, HeaderValue)>,
    pub(super) rate_limit: Option<RateLimiter>,
    files: Vec<PathBuf>,
}

impl WebSettings {
    /// The settings of a parsed configuration, reading the files it names.
    pub fn new(config: &WebConfig, read: tls::ReadPem<'_>) -> Result<Self, TlsError> {
        let tls = config
            .tls
            .as_ref()
            .map(|t| tls::server_config(t, read))
            .transpose()?;
        let headers = config
            .headers
            .iter()
            .filter_map(|(name, value)| {
                // Both were validated by the parser.
                Some((
                    HeaderName::from_bytes(name.as_bytes()).ok()?,
                    HeaderValue::from_str(value).ok()?,
                ))
            })
            .collect();
        Ok(Self {
            tls,
            auth: (!config.users.is_empty()).then(|| BasicAuth::new(config.users.clone())),
            authenticates: config.authenticates(),
            headers,
            rate_limit: config.rate_limit.map(RateLimiter::new),
            files: config.files(),
        })
    }

    /// Whether connections are TLS.
    pub fn tls(&self) -> bool {
        self.tls.is_some()
    }

    /// Whether every request authenticates.
    pub fn authenticates(&self) -> bool {
        self.authenticates
    }
}

/// Why a web configuration file could not be loaded.
#[derive(Debug, thiserror::Error)]
pub enum WebConfigLoadError {
    #[error("cannot read the web configuration {}", path.display())]
    Read {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error("web configuration {}", path.display())]
    Invalid {
        path: PathBuf,
        #[source]
        source: WebConfigError,
    },
    #[error("web configuration {}", path.display())]
    Tls {
        path: PathBuf,
        #[source]
        source: TlsError,
    },
    #[error(
        "web configuration {}: a reload cannot switch TLS {}; restart sockq for that",
        path.display(),
        if *on { "on" } else { "off" }
    )]
    TlsSwitch { path: PathBuf, on: bool },
}

/// Reads, parses and builds the settings of the file at `path`; also returns the
/// parser's notes.
pub fn load(path: &Path) -> Result<(WebSettings, Vec<String>), WebConfigLoadError> {
    let read = |source| WebConfigLoadError::Read {
        path: path.to_owned(),
        source,
    };
    let bytes = tls::read_small_file(path, MAX_CONFIG_BYTES).map_err(read)?;
    let text = String::from_utf8(bytes)
        .map_err(|e| read(io::Error::new(io::ErrorKind::InvalidData, e)))?;
    let dir = path.parent().unwrap_or(Path::new("."));
    let config = web_config::parse(&text, dir).map_err(|source| WebConfigLoadError::Invalid {
        path: path.to_owned(),
        source,
    })?;
    let settings = WebSettings::new(&config, &tls::read_pem_file).map_err(|source| {
        WebConfigLoadError::Tls {
            path: path.to_owned(),
            source,
        }
    })?;
    Ok((settings, config.notes))
}

/// Identity and times of a file, `None` when it cannot be read.
type Fingerprint = Vec<Option<(u64, u64, u64, i64, i64, i64, i64)>>;

fn fingerprint(paths: &[PathBuf]) -> Fingerprint {
    paths
        .iter()
        .map(|p| {
            std::fs::metadata(p).ok().map(|m| {
                (
                    m.dev(),
                    m.ino(),
                    m.size(),
                    m.mtime(),
                    m.mtime_nsec(),
                    m.ctime(),
                    m.ctime_nsec(),
                )
            })
        })
        .collect()
}

/// The web settings in force; see the module documentation.
#[derive(Debug, Default)]
pub struct LiveSettings {
    /// The configuration file, if there is one.
    path: Option<PathBuf>,
    current: RwLock<Arc<WebSettings>>,
    /// What the files looked like at the last load attempt.
    seen: Mutex<Fingerprint>,
}

impl LiveSettings {
    /// Fixed settings (plain HTTP without a file; tests).
    pub fn fixed(settings: WebSettings) -> Self {
        Self {
            path: None,
            current: RwLock::new(Arc::new(settings)),
            seen: Mutex::default(),
        }
    }

    /// Settings loaded from `path` (see [`load`]), to be reloaded by [`Self::watch`].
    pub fn from_file(path: &Path, settings: WebSettings) -> Self {
        let live = Self {
            path: Some(path.to_owned()),
            current: RwLock::new(Arc::new(settings)),
            seen: Mutex::default(),
        };
        *live.seen.lock().unwrap_or_else(PoisonError::into_inner) = fingerprint(&live.watched());
        live
    }

    /// The settings in force.
    pub fn current(&self) -> Arc<WebSettings> {
        Arc::clone(&self.current.read().unwrap_or_else(PoisonError::into_inner))
    }

    /// The file and the files its settings name.
    fn watched(&self) -> Vec<PathBuf> {
        let mut paths: Vec<PathBuf> = self.path.iter().cloned().collect();
        paths.extend(self.current().files.iter().cloned());
        paths
    }

    /// Loads the file again and, if it is good, puts it in force. Returns the
    /// parser's notes; on error the settings in force stay. `Ok(None)` without a file.
    pub fn reload(&self) -> Result<Option<Vec<String>>, WebConfigLoadError> {
        let Some(path) = &self.path else {
            return Ok(None);
        };
        let result = load(path);
        *self.seen.lock().unwrap_or_else(PoisonError::into_inner) = fingerprint(&self.watched());
        let (settings, notes) = result?;
        let was_tls = self.current().tls();
        if settings.tls() != was_tls {
            return Err(WebConfigLoadError::TlsSwitch {
                path: path.clone(),
                on: settings.tls(),
            });
        }
        let previous = std::mem::replace(
            &mut *self.current.write().unwrap_or_else(PoisonError::into_inner),
            Arc::new(settings),
        );
        drop(previous);
        // The new settings may name other files.
        *self.seen.lock().unwrap_or_else(PoisonError::into_inner) = fingerprint(&self.watched());
        Ok(Some(notes))
    }

    /// Whether a watched file changed since the last load attempt.
    pub(super) fn changed(&self) -> bool {
        let now = fingerprint(&self.watched());
        *self.seen.lock().unwrap_or_else(PoisonError::into_inner) != now
    }

    /// Reloads on each SIGHUP (`hangup`) and file change until `shutdown`.
    pub async fn watch(
        self: Arc<Self>,
        mut hangup: tokio::signal::unix::Signal,
        shutdown: impl Future<Output = ()>,
    ) {
        tokio::pin!(shutdown);
        // Without a file there is nothing to look at, only SIGHUP to answer.
        let watching = self.path.is_some();
        let mut ticker = tokio::time::interval(WATCH_INTERVAL);
        ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            let why = tokio::select! {
                () = &mut shutdown => return,
                _ = hangup.recv() => "SIGHUP",
                _ = ticker.tick(), if watching => {
                    let live = Arc::clone(&self);
                    let changed = tokio::task::spawn_blocking(move || live.changed()).await;
                    if !changed.unwrap_or(false) {
                        continue;
                    }
                    "a file changed"
                }
            };
            let live = Arc::clone(&self);
            match tokio::task::spawn_blocking(move || live.reload()).await {
                Ok(Ok(None)) => tracing::info!("{why}: no --web-config-file to reload"),
                Ok(Ok(Some(notes))) => {
                    tracing::info!("{why}: web configuration reloaded");
                    for note in notes {
                        tracing::info!("web configuration: {note}");
                    }
                }
                Ok(Err(e)) => tracing::error!(
                    "{why}: {}; the previous web configuration stays in force",
                    crate::error_chain(&e)
                ),
                Err(e) => tracing::error!("{why}: reloading the web configuration: {e}"),
            }
        }
    }
}
