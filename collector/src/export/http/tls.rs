//! The metrics port's TLS: a rustls `ServerConfig` (ring provider) built from the
//! web configuration's `tls_server_config` (see `export::web_config` for what is
//! supported), and reading the PEM files it names. Files are opened without
//! blocking and must be regular files of at most [`MAX_PEM_BYTES`], so a path such
//! as `/dev/zero` or a FIFO is an error, not a hang.

use std::{
    io::{self, Read as _},
    os::unix::fs::OpenOptionsExt as _,
    path::{Path, PathBuf},
    sync::Arc,
};

use rustls::{
    RootCertStore, ServerConfig, SupportedCipherSuite,
    crypto::{CryptoProvider, SupportedKxGroup, ring},
    server::{VerifierBuilderError, WebPkiClientVerifier},
    version::{TLS12, TLS13},
};
use rustls_pki_types::{CertificateDer, PrivateKeyDer, pem::PemObject as _};

use crate::export::web_config::{CipherSuite, ClientAuth, Curve, Pem, TlsConfig, TlsVersion};

/// The largest PEM file read: a long chain is a few tens of KiB.
pub const MAX_PEM_BYTES: u64 = 1024 * 1024;

/// Why the TLS settings could not be built.
#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    #[error("cannot read the {what} {}", path.display())]
    Read {
        what: &'static str,
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error("the {what} ({place}) holds no PEM {kind}")]
    Empty {
        what: &'static str,
        place: String,
        kind: &'static str,
    },
    #[error("the {what} ({place}) is not valid PEM")]
    Pem {
        what: &'static str,
        place: String,
        #[source]
        source: rustls_pki_types::pem::Error,
    },
    #[error("the client CA ({place}) holds no usable CA certificate")]
    ClientCa { place: String },
    #[error("the client certificate verifier")]
    Verifier(#[source] VerifierBuilderError),
    #[error("the server certificate and key ({place}) are unusable or do not match")]
    KeyPair {
        place: String,
        #[source]
        source: rustls::Error,
    },
    #[error("the TLS versions")]
    Versions(#[source] rustls::Error),
}

/// Reads a small regular file (see the module documentation for what is refused).
pub fn read_small_file(path: &Path, max: u64) -> io::Result<Vec<u8>> {
    let file = std::fs::OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_NONBLOCK | libc::O_NOCTTY)
        .open(path)?;
    if !file.metadata()?.is_file() {
        return Err(io::Error::new(
            io::ErrorKind::InvalidInput,
            "not a regular file",
        ));
    }
    let mut bytes = Vec::new();
    file.take(max + 1).read_to_end(&mut bytes)?;
    if bytes.len() as u64 > max {
        return Err(io::Error::new(
            io::ErrorKind::InvalidInput,
            format!("larger than {max} bytes"),
        ));
    }
    Ok(bytes)
}

/// Reads a PEM file of at most [`MAX_PEM_BYTES`].
pub fn read_pem_file(what: &'static str, path: &Path) -> Result<Vec<u8>, TlsError> {
    read_small_file(path, MAX_PEM_BYTES).map_err(|source| TlsError::Read {
        what,
        path: path.to_owned(),
        source,
    })
}

/// A reader of the PEM files a configuration names.
pub type ReadPem<'a> = &'a dyn Fn(&'static str, &Path) -> Result<Vec<u8>, TlsError>;

/// The PEM bytes and where they came from (for messages).
fn pem_bytes(
    what: &'static str,
    pem: &Pem,
    read: ReadPem<'_>,
) -> Result<(Vec<u8>, String), TlsError> {
    match pem {
        Pem::File(path) => Ok((read(what, path)?, path.display().to_string())),
        Pem::Inline(text) => Ok((text.as_bytes().to_vec(), "inline".to_owned())),
    }
}

fn certificates(
    what: &'static str,
    bytes: &[u8],
    place: &str,
) -> Result<Vec<CertificateDer<'static>>, TlsError> {
    let certs = CertificateDer::pem_slice_iter(bytes)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|source| TlsError::Pem {
            what,
            place: place.to_owned(),
            source,
        })?;
    if certs.is_empty() {
        return Err(TlsError::Empty {
            what,
            place: place.to_owned(),
            kind: "CERTIFICATE",
        });
    }
    Ok(certs)
}

/// The ring provider cut down to the configured suites and groups.
fn provider(tls: &TlsConfig) -> CryptoProvider {
    use ring::cipher_suite as cs;
    let mut provider = ring::default_provider();
    let tls13: Vec<SupportedCipherSuite> = provider
        .cipher_suites
        .iter()
        .copied()
        .filter(|s| s.version() == &TLS13)
        .collect();
    let tls12: Vec<SupportedCipherSuite> = if tls.cipher_suites.is_empty() {
        provider
            .cipher_suites
            .iter()
            .copied()
            .filter(|s| s.version() == &TLS12)
            .collect()
    } else {
        tls.cipher_suites
            .iter()
            .map(|suite| match suite {
                CipherSuite::EcdheEcdsaAes128Gcm => cs::TLS_ECDHE_ECDSA_WITH_AES_128_GCM_SHA256,
                CipherSuite::EcdheEcdsaAes256Gcm => cs::TLS_ECDHE_ECDSA_WITH_AES_256_GCM_SHA384,
                CipherSuite::EcdheEcdsaChacha20 => {
                    cs::TLS_ECDHE_ECDSA_WITH_CHACHA20_POLY1305_SHA256
                }
                CipherSuite::EcdheRsaAes128Gcm => cs::TLS_ECDHE_RSA_WITH_AES_128_GCM_SHA256,
                CipherSuite::EcdheRsaAes256Gcm => cs::TLS_ECDHE_RSA_WITH_AES_256_GCM_SHA384,
                CipherSuite::EcdheRsaChacha20 => cs::TLS_ECDHE_RSA_WITH_CHACHA20_POLY1305_SHA256,
            })
            .collect()
    };
    provider.cipher_suites = tls13.into_iter().chain(tls12).collect();
    if !tls.curves.is_empty() {
        provider.kx_groups = tls
            .curves
            .iter()
            .map(|curve| -> &'static dyn SupportedKxGroup {
                match curve {
                    Curve::X25519 => ring::kx_group::X25519,
                    Curve::P256 => ring::kx_group::SECP256R1,
                    Curve::P384 => ring::kx_group::SECP384R1,
                }
            })
            .collect();
    }
    provider
}

/// Builds the rustls settings, reading the files through `read`.
pub fn server_config(tls: &TlsConfig, read: ReadPem<'_>) -> Result<Arc<ServerConfig>, TlsError> {
    let provider = Arc::new(provider(tls));
    let versions: Vec<&'static rustls::SupportedProtocolVersion> =
        [(TlsVersion::Tls12, &TLS12), (TlsVersion::Tls13, &TLS13)]
            .into_iter()
            .filter(|(v, _)| (tls.min_version..=tls.max_version).contains(v))
            .filter(|(v, _)| !(*v == TlsVersion::Tls12 && tls.tls12_suites_listed_empty))
            .map(|(_, version)| version)
            .collect();
    let builder = ServerConfig::builder_with_provider(Arc::clone(&provider))
        .with_protocol_versions(&versions)
        .map_err(TlsError::Versions)?;
    let builder = match (&tls.client_ca, tls.client_auth) {
        (
            Some(ca),
            ClientAuth::VerifyClientCertIfGiven | ClientAuth::RequireAndVerifyClientCert,
        ) => {
            let (bytes, place) = pem_bytes("client CA", ca, read)?;
            let mut roots = RootCertStore::empty();
            let (added, _ignored) =
                roots.add_parsable_certificates(certificates("client CA", &bytes, &place)?);
            if added == 0 {
                return Err(TlsError::ClientCa { place });
            }
            let mut verifier =
                WebPkiClientVerifier::builder_with_provider(Arc::new(roots), Arc::clone(&provider));
            if tls.client_auth == ClientAuth::VerifyClientCertIfGiven {
                verifier = verifier.allow_unauthenticated();
            }
            builder.with_client_cert_verifier(verifier.build().map_err(TlsError::Verifier)?)
        }
        // The parser refuses client auth without a CA and a CA without client auth.
        _ => builder.with_no_client_auth(),
    };
    let (cert_bytes, cert_place) = pem_bytes("server certificate", &tls.cert, read)?;
    let certs = certificates("server certificate", &cert_bytes, &cert_place)?;
    let (key_bytes, key_place) = pem_bytes("server key", &tls.key, read)?;
    let key = PrivateKeyDer::from_pem_slice(&key_bytes).map_err(|source| match source {
        rustls_pki_types::pem::Error::NoItemsFound => TlsError::Empty {
            what: "server key",
            place: key_place.clone(),
            kind: "PRIVATE KEY",
        },
        source => TlsError::Pem {
            what: "server key",
            place: key_place.clone(),
            source,
        },
    })?;
    let mut config = builder
        .with_single_cert(certs, key)
        .map_err(|source| TlsError::KeyPair {
            place: format!("{cert_place}, {key_place}"),
            source,
        })?;
    config.ignore_client_order = tls.prefer_server_cipher_suites;
    config.alpn_protocols = vec![b"http/1.1".to_vec()];
    Ok(Arc::new(config))
}
