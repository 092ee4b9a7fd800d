//! Basic authentication against the web configuration's bcrypt hashes, and its rate
//! limit, as exporter-toolkit does them: an unknown user is checked against a fixed
//! hash (so that timing does not tell which users exist), bcrypt runs one at a time
//! (it is meant to be slow: ~70 ms at cost 10) on a blocking thread, and each
//! (user, hash, password) result is cached, so a scraper pays for bcrypt once. The
//! cache is keyed by a SHA-256 of the three, never the password itself.

use std::{
    collections::{BTreeMap, HashMap},
    sync::{Arc, Mutex, PoisonError},
    time::Instant,
};

use axum::http::{HeaderMap, header};
use base64::Engine as _;
use tokio::sync::Semaphore;

use crate::export::web_config::RateLimit;

/// exporter-toolkit's stand-in hash for unknown users (of "fakepassword", cost 10).
const FAKE_HASH: &str = "$2y$10$QOauhQNbBCuQDKes6eFzPeMqBSjb7Mr5DUmpZ/VcEd00UAV/LDeSi";

/// The most cached results; the cache starts over past it.
const CACHE_ENTRIES: usize = 1024;

/// The longest `Authorization` value looked at (a user name and password of a few
/// hundred bytes each, base64-encoded).
const MAX_AUTHORIZATION: usize = 4096;

#[derive(Debug)]
pub struct BasicAuth {
    users: BTreeMap<String, String>,
    cache: Mutex<HashMap<[u8; 32], bool>>,
    one_at_a_time: Arc<Semaphore>,
}

impl BasicAuth {
    pub fn new(users: BTreeMap<String, String>) -> Self {
        Self {
            users,
            cache: Mutex::new(HashMap::new()),
            one_at_a_time: Arc::new(Semaphore::new(1)),
        }
    }

    /// Whether the request's `Authorization: Basic` credentials match a user.
    pub async fn allows(&self, headers: &HeaderMap) -> bool {
        let Some((user, password)) = credentials(headers) else {
            return false;
        };
        let (hash, known) = match self.users.get(&user) {
            Some(hash) => (hash.clone(), true),
            None => (FAKE_HASH.to_owned(), false),
        };
        let key = cache_key(&user, &hash, &password);
        let cached = self
            .cache
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .get(&key)
            .copied();
        let matches = match cached {
            Some(matches) => matches,
            None => {
                let matches = self.verify(password, hash).await;
                let mut cache = self.cache.lock().unwrap_or_else(PoisonError::into_inner);
                if cache.len() >= CACHE_ENTRIES {
                    cache.clear();
                }
                cache.insert(key, matches);
                matches
            }
        };
        matches && known
    }

    async fn verify(&self, password: String, hash: String) -> bool {
        let Ok(_turn) = Arc::clone(&self.one_at_a_time).acquire_owned().await else {
            return false;
        };
        tokio::task::spawn_blocking(move || bcrypt::verify(password, &hash).unwrap_or(false))
            .await
            .unwrap_or(false)
    }
}

/// User and password of an `Authorization: Basic` header.
fn credentials(headers: &HeaderMap) -> Option<(String, String)> {
    let value = headers.get(header::AUTHORIZATION)?.as_bytes();
    if value.len() > MAX_AUTHORIZATION {
        return None;
    }
    let value = std::str::from_utf8(value).ok()?.trim();
    let (scheme, encoded) = value.split_once(' ')?;
    if !scheme.eq_ignore_ascii_case("basic") {
        return None;
    }
    let decoded = base64::engine::general_purpose::STANDARD
        .decode(encoded.trim())
        .ok()?;
    let decoded = String::from_utf8(decoded).ok()?;
    let (user, password) = decoded.split_once(':')?;
    Some((user.to_owned(), password.to_owned()))
}

fn cache_key(user: &str, hash: &str, password: &str) -> [u8; 32] {
    let mut ctx = ring::digest::Context::new(&ring::digest::SHA256);
    for part in [user, hash, password] {
        ctx.update(&(part.len() as u64).to_le_bytes());
        ctx.update(part.as_bytes());
    }
    let mut key = [0u8; 32];
    key.copy_from_slice(ctx.finish().as_ref());
    key
}

/// A token bucket: `burst` requests at once, one more each `interval`.
#[derive(Debug)]
pub struct RateLimiter {
    limit: RateLimit,
    state: Mutex<(f64, Instant)>,
}

impl RateLimiter {
    pub fn new(limit: RateLimit) -> Self {
        Self {
            limit,
            state: Mutex::new((f64::from(limit.burst), Instant::now())),
        }
    }

    /// Takes a token if there is one.
    pub fn allow(&self) -> bool {
        let mut state = self.state.lock().unwrap_or_else(PoisonError::into_inner);
        let (tokens, last) = &mut *state;
        let now = Instant::now();
        let refill = now.duration_since(*last).as_secs_f64() / self.limit.interval.as_secs_f64();
        *tokens = (*tokens + refill).min(f64::from(self.limit.burst));
        *last = now;
        if *tokens >= 1.0 {
            *tokens -= 1.0;
            true
        } else {
            false
        }
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use axum::http::HeaderValue;

    use super::*;

    fn basic(user_password: &str) -> HeaderMap {
        let mut headers = HeaderMap::new();
        let encoded = base64::engine::general_purpose::STANDARD.encode(user_password);
        headers.insert(
            header::AUTHORIZATION,
            HeaderValue::from_str(&format!("Basic {encoded}")).expect("header"),
        );
        headers
    }

    #[tokio::test]
    async fn checks_bcrypt_and_caches() {
        let hash = bcrypt::hash("s3cret:with colon", 4).expect("hash");
        let auth = BasicAuth::new(BTreeMap::from([("prom".to_owned(), hash)]));
        assert!(auth.allows(&basic("prom:s3cret:with colon")).await);
        assert!(
            auth.allows(&basic("prom:s3cret:with colon")).await,
            "cached"
        );
        assert!(!auth.allows(&basic("prom:wrong")).await);
        assert!(
            !auth.allows(&basic("eve:fakepassword")).await,
            "the stand-in hash is no user"
        );
        assert!(!auth.allows(&HeaderMap::new()).await);
        let mut bearer = HeaderMap::new();
        bearer.insert(
            header::AUTHORIZATION,
            HeaderValue::from_static("Bearer abc"),
        );
        assert!(!auth.allows(&bearer).await);
        let mut junk = HeaderMap::new();
        junk.insert(header::AUTHORIZATION, HeaderValue::from_static("Basic !!!"));
        assert!(!auth.allows(&junk).await);
        assert_eq!(auth.cache.lock().expect("cache").len(), 3);
    }

    #[test]
    fn the_bucket_refills() {
        let limiter = RateLimiter::new(RateLimit {
            interval: Duration::from_millis(50),
            burst: 2,
        });
        assert!(limiter.allow() && limiter.allow());
        assert!(!limiter.allow());
        std::thread::sleep(Duration::from_millis(60));
        assert!(limiter.allow());
        assert!(!limiter.allow());
    }
}
