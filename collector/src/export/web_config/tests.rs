//! Cases from exporter-toolkit's own testdata (`web/testdata/*.yml`), good and bad.

use super::*;

/// exporter-toolkit's stand-in hash (of "fakepassword", cost 10).
const HASH: &str = "$2y$10$QOauhQNbBCuQDKes6eFzPeMqBSjb7Mr5DUmpZ/VcEd00UAV/LDeSi";

fn ok(text: &str) -> WebConfig {
    parse(text, Path::new("/etc/sockq")).unwrap_or_else(|e| panic!("{text}\n-> {e}"))
}

fn err(text: &str) -> String {
    match parse(text, Path::new("/etc/sockq")) {
        Ok(c) => panic!("{text}\n-> accepted: {c:?}"),
        Err(e) => e.to_string(),
    }
}

#[test]
fn empty_and_comment_only_files_are_plain_http() {
    for text in ["", "\n", "# nothing\n", "---\n", "tls_server_config:\n"] {
        assert_eq!(ok(text), WebConfig::default(), "{text:?}");
    }
}

#[test]
fn tls_with_files_relative_to_the_config_directory() {
    let c = ok("tls_server_config:\n  cert_file: server.crt\n  key_file: /abs/server.key\n");
    let tls = c.tls.clone().expect("tls");
    assert_eq!(tls.cert, Pem::File("/etc/sockq/server.crt".into()));
    assert_eq!(tls.key, Pem::File("/abs/server.key".into()));
    assert_eq!(tls.client_auth, ClientAuth::NoClientCert);
    assert_eq!(
        (tls.min_version, tls.max_version),
        (TlsVersion::Tls12, TlsVersion::Tls13)
    );
    assert!(tls.prefer_server_cipher_suites);
    assert_eq!(
        c.files(),
        [
            PathBuf::from("/etc/sockq/server.crt"),
            "/abs/server.key".into()
        ]
    );
    assert!(!c.authenticates());
}

#[test]
fn inline_pem_and_file_precedence() {
    let c = ok("tls_server_config:\n  cert: |\n    PEM\n  key: KEY\n  cert_file: f.crt\n");
    let tls = c.tls.clone().expect("tls");
    assert_eq!(tls.cert, Pem::File("/etc/sockq/f.crt".into()));
    assert_eq!(tls.key, Pem::Inline("KEY".into()));
    assert_eq!(c.files(), [PathBuf::from("/etc/sockq/f.crt")]);
}

#[test]
fn users_are_bcrypt_hashes() {
    let c = ok(&format!(
        "basic_auth_users:\n  alice: {HASH}\n  bob: '{HASH}'\n"
    ));
    assert_eq!(c.users.len(), 2);
    assert!(c.authenticates());
    assert!(c.tls.is_none());
    let e = err("basic_auth_users:\n  john: doe\n");
    assert!(
        e.contains("\"john\"") && e.contains("not a bcrypt hash"),
        "{e}"
    );
    assert!(
        !e.contains("doe"),
        "the error must not repeat the secret: {e}"
    );
    let e = err(&format!("basic_auth_users:\n  a: {HASH}\n  a: {HASH}\n"));
    assert!(e.contains("duplicate key \"a\""), "{e}");
    let high = HASH.replace("$10$", "$99$");
    assert!(err(&format!("basic_auth_users:\n  a: {high}\n")).contains("cost 99"));
}

#[test]
fn unknown_keys_and_junk_are_refused_with_their_place() {
    let e = err("tls_server_config:\n  cert_filse: server.crt\n");
    assert!(e.contains("unknown field `cert_filse`"), "{e}");
    assert!(e.contains("line 2"), "{e}");
    assert!(err("tls_config:\n  cert_file: a\n").contains("unknown field `tls_config`"));
    assert!(err("junk").contains("not a valid web configuration"));
    assert!(err("[1, 2]").contains("not a valid web configuration"));
    assert!(err("tls_server_config: 7\n").contains("not a valid web configuration"));
    assert!(err("tls_server_config:\n  cert_file: [a]\n").contains("not a valid"));
}

#[test]
fn tls_needs_both_halves() {
    assert!(err("tls_server_config:\n  cert_file: a\n").contains("missing one of key or key_file"));
    assert!(
        err("tls_server_config:\n  key_file: a\n").contains("missing one of cert or cert_file")
    );
    // Setting only client_auth_type enables TLS, as in exporter-toolkit.
    assert!(
        err("tls_server_config:\n  client_auth_type: NoClientCert\n")
            .contains("missing one of cert")
    );
}

const PAIR: &str = "tls_server_config:\n  cert_file: s.crt\n  key_file: s.key\n";

#[test]
fn client_certificates() {
    let c = ok(&format!(
        "{PAIR}  client_auth_type: RequireAndVerifyClientCert\n  client_ca_file: ca.pem\n"
    ));
    assert!(c.authenticates());
    assert_eq!(c.files().len(), 3);
    let c = ok(&format!(
        "{PAIR}  client_auth_type: VerifyClientCertIfGiven\n  client_ca: CA\n"
    ));
    assert!(!c.authenticates());
    assert!(
        err(&format!("{PAIR}  client_ca_file: somefile\n")).contains("without a client_auth_type")
    );
    assert!(
        err(&format!(
            "{PAIR}  client_auth_type: RequireAndVerifyClientCert\n"
        ))
        .contains("needs client_ca_file")
    );
    for any in ["RequireAnyClientCert", "RequestClientCert"] {
        let e = err(&format!(
            "{PAIR}  client_auth_type: {any}\n  client_ca_file: c\n"
        ));
        assert!(e.contains("not supported by sockq"), "{e}");
    }
    assert!(err(&format!("{PAIR}  client_auth_type: Maybe\n")).contains("unknown value \"Maybe\""));
    let e = err(&format!(
        "{PAIR}  client_auth_type: RequireAndVerifyClientCert\n  client_ca_file: c\n  \
         client_allowed_sans: [a.example]\n"
    ));
    assert!(
        e.contains("client_allowed_sans") && e.contains("not supported"),
        "{e}"
    );
}

#[test]
fn versions() {
    let c = ok(&format!("{PAIR}  min_version: TLS13\n"));
    assert_eq!(c.tls.expect("tls").min_version, TlsVersion::Tls13);
    let c = ok(&format!("{PAIR}  min_version: TLS10\n"));
    assert_eq!(c.tls.expect("tls").min_version, TlsVersion::Tls12);
    assert!(c.notes[0].contains("raised to TLS12"), "{:?}", c.notes);
    assert!(err(&format!("{PAIR}  max_version: TLS11\n")).contains("TLS 1.2 and 1.3 only"));
    assert!(err(&format!("{PAIR}  min_version: TLS111\n")).contains("unknown value \"TLS111\""));
    assert!(
        err(&format!(
            "{PAIR}  min_version: TLS13\n  max_version: TLS12\n"
        ))
        .contains("min_version TLS13 is above max_version TLS12")
    );
}

#[test]
fn cipher_suites_and_curves() {
    let c = ok(&format!(
        "{PAIR}  cipher_suites:\n  - TLS_ECDHE_RSA_WITH_AES_128_GCM_SHA256\n  - \
         TLS_AES_128_GCM_SHA256\n  - TLS_ECDHE_RSA_WITH_AES_256_GCM_SHA384\n  \
         prefer_server_cipher_suites: false\n  curve_preferences: [CurveP384, X25519]\n"
    ));
    let tls = c.tls.clone().expect("tls");
    assert_eq!(
        tls.cipher_suites,
        [
            CipherSuite::EcdheRsaAes128Gcm,
            CipherSuite::EcdheRsaAes256Gcm
        ]
    );
    assert!(!tls.prefer_server_cipher_suites);
    assert_eq!(tls.curves, [Curve::P384, Curve::X25519]);
    let e = err(&format!(
        "{PAIR}  cipher_suites: [TLS_ECDHE_RSA_WITH_AES_128_CBC_SHA]\n"
    ));
    assert!(e.contains("AEAD suites"), "{e}");
    assert!(
        err(&format!(
            "{PAIR}  cipher_suites: [TLS_RSA_WITH_RC4_128_SHA]\n"
        ))
        .contains("unknown value")
    );
    assert!(err(&format!("{PAIR}  curve_preferences: [CurveP521]\n")).contains("P-521"));
    assert!(err(&format!("{PAIR}  curve_preferences: [CurveP999]\n")).contains("unknown value"));
    let only13 = format!("{PAIR}  cipher_suites: [TLS_AES_128_GCM_SHA256]\n");
    assert!(ok(&only13).tls.expect("tls").tls12_suites_listed_empty);
    assert!(err(&format!("{only13}  max_version: TLS12\n")).contains("no TLS 1.2 suite"));
}

#[test]
fn headers_as_exporter_toolkit_allows() {
    let c = ok(
        "http_server_config:\n  headers:\n    X-Frame-Options: deny\n    \
                Strict-Transport-Security: max-age=31536000; includeSubDomains\n    \
                X-Content-Type-Options: nosniff\n    X-XSS-Protection: 1\n    \
                Content-Security-Policy: \"default-src 'self'\"\n  http2: true\n",
    );
    assert_eq!(c.headers.len(), 5);
    assert!(
        c.headers.contains(&("X-XSS-Protection".into(), "1".into())),
        "{:?}",
        c.headers
    );
    assert!(c.notes.iter().any(|n| n.contains("HTTP/1.1 only")));
    assert!(ok("http_server_config:\n  http2: false\n").notes.is_empty());
    let e = err("http_server_config:\n  headers:\n    X-Frame-Options: allow\n");
    assert!(e.contains("Expected one of"), "{e}");
    assert!(
        err("http_server_config:\n  headers:\n    X-Content-Type-Options: foo\n")
            .contains("nosniff")
    );
    assert!(
        err("http_server_config:\n  headers:\n    Server: me\n").contains("can not be configured")
    );
    assert!(
        err("http_server_config:\n  headers:\n    X-XSS-Protection: \"1\\r\\nX: y\"\n")
            .contains("control")
    );
    // Blank: unset.
    assert!(
        ok("http_server_config:\n  headers:\n    Content-Security-Policy: ''\n")
            .headers
            .is_empty()
    );
}

#[test]
fn rate_limit() {
    let c = ok("rate_limit:\n  interval: 100ms\n  burst: 5\n");
    assert_eq!(
        c.rate_limit,
        Some(RateLimit {
            interval: Duration::from_millis(100),
            burst: 5
        })
    );
    assert_eq!(
        ok("rate_limit:\n  interval: 0s\n  burst: 0\n").rate_limit,
        None
    );
    assert_eq!(ok("rate_limit:\n  burst: 3\n").rate_limit, None);
    assert!(err("rate_limit:\n  interval: 1s\n  burst: 0\n").contains("at least 1"));
    assert!(err("rate_limit:\n  interval: soon\n  burst: 1\n").contains("invalid duration"));
    assert!(err("rate_limit:\n  interval: 1s\n  burst: -1\n").contains("at least 1"));
}

#[test]
fn go_durations() {
    let d = |s| go_duration(s);
    assert_eq!(d("0"), Ok(Duration::ZERO));
    assert_eq!(d("1m30s"), Ok(Duration::from_secs(90)));
    assert_eq!(d("1.5s"), Ok(Duration::from_millis(1500)));
    assert_eq!(d("250us"), Ok(Duration::from_micros(250)));
    assert_eq!(d("2h"), Ok(Duration::from_secs(7200)));
    for bad in [
        "", "1", "s", "1x", "-1s", "1..2s", "+", "25h", "1e9h", "\u{b5}",
    ] {
        assert!(d(bad).is_err(), "{bad:?}");
    }
}
