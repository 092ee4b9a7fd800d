//! `--web-config-file`: arbitrary bytes as a web configuration in exporter-toolkit's
//! format (`sockq::export::web_config::parse`: serde_yaml_ng under strict
//! validation), then, when it parses, the TLS settings built from it
//! (`WebSettings::new`: inline PEM through rustls-pki-types, certificate and key
//! checked by rustls, bcrypt hashes, headers, rate limit). Files the input names are
//! never opened: the reader refuses them all, so the target does no I/O. A panic
//! anywhere is a crash; errors are the expected outcome of most inputs.

#![no_main]

use std::path::Path;

use libfuzzer_sys::fuzz_target;
use sockq::export::{
    http::{WebSettings, tls::TlsError},
    web_config,
};

fn no_files(what: &'static str, path: &Path) -> Result<Vec<u8>, TlsError> {
    Err(TlsError::Read {
        what,
        path: path.to_owned(),
        source: std::io::Error::from(std::io::ErrorKind::NotFound),
    })
}

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    let dir = Path::new("/nonexistent/sockq-fuzz");
    let Ok(config) = web_config::parse(text, dir) else {
        return;
    };
    for file in config.files() {
        assert!(file.is_absolute(), "relative path left: {}", file.display());
    }
    for (name, value) in &config.headers {
        assert!(
            !value.bytes().any(|b| b == b'\r' || b == b'\n'),
            "header {name} with a line break"
        );
    }
    if let Ok(settings) = WebSettings::new(&config, &no_files) {
        assert_eq!(settings.tls(), config.tls.is_some());
        assert_eq!(settings.authenticates(), config.authenticates());
    }
});
