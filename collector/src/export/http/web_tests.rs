//! The server with a web configuration: TLS (rustls on both ends, the test
//! certificates in `testdata/`), basic auth, client certificates, the loopback
//! `Host` check, redaction off loopback, reloads, `--no-api`.

use std::{
    net::{Ipv4Addr, SocketAddr},
    path::{Path, PathBuf},
    sync::Arc,
    time::Duration,
};

use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName, pem::PemObject as _};
use tokio::{
    io::{AsyncReadExt as _, AsyncWriteExt as _},
    net::TcpStream,
    sync::oneshot,
};

use super::*;
use crate::{
    export::{prometheus::BuildInfo, web_config},
    model::{Listener, Owner, Snapshot},
};

fn testdata(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("src/export/http/testdata")
        .join(name)
}

/// A snapshot whose one owner has every detail set.
fn state() -> SharedState {
    let state = SharedState::new(BuildInfo {
        version: "9.9.9".to_owned(),
        git_commit: "feed".to_owned(),
        kernel_release: "6.1.0-test".to_owned(),
    });
    let mut owner = Owner::new(42, "srv");
    owner.cmdline = Arc::from("srv --token=s3cret");
    owner.user = "alice".to_owned();
    owner.cgroup = Arc::from("/system.slice/srv.service");
    state.replace(Snapshot {
        listeners: vec![Listener {
            netns: 1,
            addr: Ipv4Addr::LOCALHOST.into(),
            port: 8080,
            inode: 77,
            cookie: 1,
            accept_queue_len: 0,
            accept_queue_limit: 128,
            syn_queue_len: 0,
            drops: 0,
            owners: vec![owner.clone()],
            kernel: None,
            queue_full: false,
        }],
        ..Snapshot::default()
    });
    state
        .events()
        .push(serde_json::json!({"type": "queue_full", "owners": [owner]}));
    state
}

/// `text` as a web configuration in a fresh directory beside the test data.
fn settings(text: &str) -> WebSettings {
    let text = text.replace("@", &testdata("").display().to_string());
    let config = web_config::parse(&text, Path::new("/")).expect("web config");
    WebSettings::new(&config, &tls::read_pem_file).expect("settings")
}

const TLS: &str = "tls_server_config:\n  cert_file: @/server.pem\n  key_file: @/server.key\n";

/// `prom:s3cret`, cost 4.
fn users() -> String {
    let hash = bcrypt::hash("s3cret", 4).expect("hash");
    format!("basic_auth_users:\n  prom: '{hash}'\n")
}

struct Server {
    addr: SocketAddr,
    stop: oneshot::Sender<()>,
    task: tokio::task::JoinHandle<Result<(), HttpError>>,
}

impl Server {
    async fn start(bind: Ipv4Addr, web: LiveSettings, api: bool) -> Self {
        let listener = super::bind(SocketAddr::from((bind, 0)))
            .await
            .expect("bind");
        let port = listener.local_addr().expect("addr").port();
        let (stop, stopped) = oneshot::channel::<()>();
        let options = ServeOptions {
            api,
            web: Arc::new(web),
            ..ServeOptions::default()
        };
        let task = tokio::spawn(serve_with_options(
            listener,
            state(),
            async move {
                let _ = stopped.await;
            },
            options,
        ));
        Self {
            addr: SocketAddr::from((Ipv4Addr::LOCALHOST, port)),
            stop,
            task,
        }
    }

    async fn stop(self) {
        let _ = self.stop.send(());
        self.task.await.expect("server task").expect("serve");
    }
}

async fn plain(addr: SocketAddr, request: String) -> String {
    let mut stream = TcpStream::connect(addr).await.expect("connect");
    stream.write_all(request.as_bytes()).await.expect("write");
    let mut out = Vec::new();
    let _ = tokio::time::timeout(Duration::from_secs(5), stream.read_to_end(&mut out)).await;
    String::from_utf8_lossy(&out).into_owned()
}

fn client_config(with_cert: bool) -> Arc<rustls::ClientConfig> {
    let mut roots = rustls::RootCertStore::empty();
    for cert in CertificateDer::pem_file_iter(testdata("ca.pem")).expect("ca") {
        roots.add(cert.expect("ca cert")).expect("add root");
    }
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let builder = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .expect("versions")
        .with_root_certificates(roots);
    let config = if with_cert {
        let chain = CertificateDer::pem_file_iter(testdata("client.pem"))
            .expect("client.pem")
            .collect::<Result<Vec<_>, _>>()
            .expect("client chain");
        let key = PrivateKeyDer::from_pem_file(testdata("client.key")).expect("client.key");
        builder
            .with_client_auth_cert(chain, key)
            .expect("client auth")
    } else {
        builder.with_no_client_auth()
    };
    Arc::new(config)
}

/// One request over TLS; the whole answer, or the error.
async fn https(addr: SocketAddr, request: String, with_cert: bool) -> std::io::Result<String> {
    let out = https_bytes(addr, request, with_cert).await?;
    Ok(String::from_utf8_lossy(&out).into_owned())
}

/// [`https`], the answer as bytes.
async fn https_bytes(
    addr: SocketAddr,
    request: String,
    with_cert: bool,
) -> std::io::Result<Vec<u8>> {
    let connector = tokio_rustls::TlsConnector::from(client_config(with_cert));
    let tcp = TcpStream::connect(addr).await?;
    let name = ServerName::try_from("localhost").expect("name");
    let mut stream = connector.connect(name, tcp).await?;
    stream.write_all(request.as_bytes()).await?;
    let mut out = Vec::new();
    stream.read_to_end(&mut out).await?;
    Ok(out)
}

fn get(path: &str, auth: Option<&str>) -> String {
    let auth = auth.map_or_else(String::new, |a| {
        use base64::Engine as _;
        format!(
            "Authorization: Basic {}\r\n",
            base64::engine::general_purpose::STANDARD.encode(a)
        )
    });
    format!("GET {path} HTTP/1.1\r\nHost: localhost\r\n{auth}Connection: close\r\n\r\n")
}

fn body(response: &str) -> &str {
    response.split_once("\r\n\r\n").map_or("", |(_, b)| b)
}

#[tokio::test]
async fn tls_with_basic_auth() {
    let web = LiveSettings::fixed(settings(&format!("{TLS}{}", users())));
    let server = Server::start(Ipv4Addr::LOCALHOST, web, true).await;
    let ok = https(server.addr, get("/metrics", Some("prom:s3cret")), false)
        .await
        .expect("https");
    assert!(ok.starts_with("HTTP/1.1 200 OK\r\n"), "{ok}");
    assert!(ok.contains("sockq_build_info{"), "{ok}");

    for auth in [Some("prom:wrong"), Some("eve:s3cret"), None] {
        let refused = https(server.addr, get("/metrics", auth), false)
            .await
            .expect("https");
        assert!(
            refused.starts_with("HTTP/1.1 401 Unauthorized\r\n"),
            "{refused}"
        );
        assert!(
            refused
                .to_ascii_lowercase()
                .contains("www-authenticate: basic\r\n"),
            "{refused}"
        );
        assert!(
            refused
                .to_ascii_lowercase()
                .contains("content-length: 0\r\n"),
            "{refused}"
        );
        assert_eq!(body(&refused), "", "{auth:?}");
    }

    // Plain HTTP on the TLS port: a bare 400, nothing of sockq's.
    let plain_answer = plain(server.addr, get("/metrics", Some("prom:s3cret"))).await;
    assert!(
        plain_answer.starts_with("HTTP/1.0 400 Bad Request\r\n"),
        "{plain_answer}"
    );
    assert!(!plain_answer.contains("sockq"), "{plain_answer}");
    server.stop().await;
}

#[tokio::test]
async fn client_certificates_are_verified() {
    let web = LiveSettings::fixed(settings(&format!(
        "{TLS}  client_auth_type: RequireAndVerifyClientCert\n  client_ca_file: @/ca.pem\n"
    )));
    let server = Server::start(Ipv4Addr::LOCALHOST, web, true).await;
    let ok = https(server.addr, get("/api/listeners", None), true)
        .await
        .expect("https");
    assert!(ok.starts_with("HTTP/1.1 200 OK\r\n"), "{ok}");
    let refused = https(server.addr, get("/metrics", None), false).await;
    assert!(
        refused.as_ref().map_or(true, |r| r.is_empty()),
        "served without a client certificate: {refused:?}"
    );
    server.stop().await;
}

#[tokio::test]
async fn a_silent_client_on_the_tls_port_is_closed_at_the_header_deadline() {
    let web = Arc::new(LiveSettings::fixed(settings(TLS)));
    let listener = super::bind(SocketAddr::from((Ipv4Addr::LOCALHOST, 0)))
        .await
        .expect("bind");
    let addr = listener.local_addr().expect("addr");
    let limits = Limits {
        header_read_timeout: Duration::from_millis(300),
        ..Limits::daemon(HEADER_READ_TIMEOUT)
    };
    let (stop, stopped) = oneshot::channel::<()>();
    let options = ServeOptions {
        api: true,
        web,
        ..ServeOptions::default()
    };
    let task = tokio::spawn(serve_with(
        listener,
        state(),
        async move {
            let _ = stopped.await;
        },
        options,
        limits,
    ));
    let started = std::time::Instant::now();
    let mut silent = TcpStream::connect(addr).await.expect("connect");
    let mut rest = Vec::new();
    let read = tokio::time::timeout(Duration::from_secs(5), silent.read_to_end(&mut rest)).await;
    assert!(read.is_ok(), "still open after 5 s");
    assert!(
        started.elapsed() < Duration::from_secs(2),
        "{:?}",
        started.elapsed()
    );
    let _ = stop.send(());
    task.await.expect("task").expect("serve");
}

#[tokio::test]
async fn loopback_refuses_foreign_host_names() {
    let server = Server::start(Ipv4Addr::LOCALHOST, LiveSettings::default(), true).await;
    for host in ["evil.example", "evil.example:9750", "127.0.0.1.nip.io"] {
        let refused = plain(
            server.addr,
            format!("GET /api/listeners HTTP/1.1\r\nHost: {host}\r\nConnection: close\r\n\r\n"),
        )
        .await;
        assert!(
            refused.starts_with("HTTP/1.1 403 Forbidden\r\n"),
            "{host}: {refused}"
        );
        assert!(
            !refused.contains("s3cret") && !refused.contains("listen_addr"),
            "{refused}"
        );
    }
    let absolute = plain(
        server.addr,
        "GET http://evil.example/metrics HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n"
            .to_owned(),
    )
    .await;
    assert!(absolute.starts_with("HTTP/1.1 403 "), "{absolute}");
    let port = server.addr.port();
    for host in [
        "localhost".to_owned(),
        format!("127.0.0.1:{port}"),
        format!("[::1]:{port}"),
    ] {
        let ok = plain(
            server.addr,
            format!("GET /metrics HTTP/1.1\r\nHost: {host}\r\nConnection: close\r\n\r\n"),
        )
        .await;
        assert!(ok.starts_with("HTTP/1.1 200 OK\r\n"), "{host}: {ok}");
    }
    // On loopback, the details are there.
    let api = plain(server.addr, get("/api/listeners", None)).await;
    assert!(api.contains("srv --token=s3cret"), "{api}");
    server.stop().await;
}

#[tokio::test]
async fn off_loopback_details_are_omitted_unless_requests_authenticate() {
    // Any address but loopback; the test talks to it through 127.0.0.1.
    let server = Server::start(Ipv4Addr::UNSPECIFIED, LiveSettings::default(), true).await;
    for path in ["/api/listeners", "/events/recent"] {
        let answer = plain(
            server.addr,
            format!("GET {path} HTTP/1.1\r\nHost: node1.example:9750\r\nConnection: close\r\n\r\n"),
        )
        .await;
        assert!(answer.starts_with("HTTP/1.1 200 OK\r\n"), "{answer}");
        assert!(
            answer.contains(&format!("{OMITTED_HEADER}: cmdline, user and cgroup")),
            "{answer}"
        );
        for secret in ["s3cret", "alice", "srv.service"] {
            assert!(!answer.contains(secret), "{path} shows {secret}: {answer}");
        }
        assert!(
            answer.contains(r#""omitted":["cmdline","user","cgroup"]"#),
            "{answer}"
        );
        assert!(answer.contains(r#""comm":"srv""#), "{answer}");
    }
    let metrics = plain(server.addr, get("/metrics", None)).await;
    assert!(
        metrics.contains("comm=\"srv\""),
        "/metrics keeps its labels: {metrics}"
    );
    server.stop().await;

    let web = LiveSettings::fixed(settings(&users()));
    let server = Server::start(Ipv4Addr::UNSPECIFIED, web, true).await;
    let answer = plain(server.addr, get("/api/listeners", Some("prom:s3cret"))).await;
    assert!(
        answer.contains("srv --token=s3cret") && answer.contains("alice"),
        "{answer}"
    );
    assert!(!answer.contains(OMITTED_HEADER), "{answer}");
    server.stop().await;
}

#[tokio::test]
async fn no_api_serves_metrics_only() {
    let server = Server::start(Ipv4Addr::LOCALHOST, LiveSettings::default(), false).await;
    for path in ["/api/listeners", "/api/nagle", "/events/recent"] {
        let answer = plain(server.addr, get(path, None)).await;
        assert!(answer.starts_with("HTTP/1.1 404 "), "{path}: {answer}");
    }
    let index = plain(server.addr, get("/", None)).await;
    assert!(
        index.contains("--no-api") && !index.contains("/api/"),
        "{index}"
    );
    let metrics = plain(server.addr, get("/metrics", None)).await;
    assert!(metrics.starts_with("HTTP/1.1 200 OK\r\n"), "{metrics}");
    server.stop().await;
}

#[tokio::test]
async fn configured_headers_and_rate_limit() {
    let web = LiveSettings::fixed(settings(
        "http_server_config:\n  headers:\n    X-Frame-Options: deny\n    \
         Content-Security-Policy: \"default-src 'self'\"\nrate_limit:\n  interval: 1h\n  \
         burst: 2\n",
    ));
    let server = Server::start(Ipv4Addr::LOCALHOST, web, true).await;
    let metrics = plain(server.addr, get("/metrics", None))
        .await
        .to_ascii_lowercase();
    assert!(metrics.contains("x-frame-options: deny\r\n"), "{metrics}");
    assert!(
        metrics.contains("content-security-policy: default-src 'self'\r\n"),
        "{metrics}"
    );
    // The status page keeps its own, stricter policy.
    let page = plain(server.addr, get("/", None))
        .await
        .to_ascii_lowercase();
    assert!(
        page.contains("content-security-policy: default-src 'none'"),
        "{page}"
    );
    let third = plain(server.addr, get("/metrics", None)).await;
    assert!(third.starts_with("HTTP/1.1 429 "), "{third}");
    server.stop().await;
}

#[test]
fn a_bad_reload_keeps_the_settings_in_force() {
    let dir = std::env::temp_dir().join(format!("sockq-webconf-{}", std::process::id()));
    std::fs::create_dir_all(&dir).expect("dir");
    let path = dir.join("web.yml");
    let write = |text: &str| {
        let text = text.replace("@", &testdata("").display().to_string());
        std::fs::write(&path, text).expect("write");
    };
    write(&format!("{TLS}{}", users()));
    let (settings, _) = load(&path).expect("load");
    let live = LiveSettings::from_file(&path, settings);
    assert!(!live.changed());
    let before = live.current();

    for bad in [
        format!("{TLS}basic_auth_users:\n  prom: not-a-hash\n"),
        "tls_server_config: [".to_owned(),
        "tls_server_config:\n  cert_file: @/server.pem\n  key_file: @/client.key\n".to_owned(),
        "tls_server_config:\n  cert_file: /nonexistent.pem\n  key_file: /nonexistent.key\n"
            .to_owned(),
        // Switching TLS off by a reload is refused too.
        users(),
    ] {
        write(&bad);
        assert!(live.changed(), "{bad}");
        let err = live.reload().expect_err(&bad);
        assert!(Arc::ptr_eq(&before, &live.current()), "{bad}: {err}");
        assert!(
            !live.changed(),
            "a failed load is not retried until the next change"
        );
    }
    let err = live.reload().expect_err("TLS off");
    assert!(err.to_string().contains("cannot switch TLS off"), "{err}");

    write(&format!("{TLS}  min_version: TLS13\n"));
    assert_eq!(
        live.reload().expect("good reload").map(|n| n.len()),
        Some(0)
    );
    assert!(!Arc::ptr_eq(&before, &live.current()));
    assert!(live.current().auth.is_none());
    std::fs::remove_dir_all(&dir).expect("cleanup");
}

#[test]
fn files_that_are_no_pem_files_are_errors_not_hangs() {
    for path in ["/dev/zero", "/proc/self", "/nonexistent"] {
        let err = tls::read_pem_file("server key", Path::new(path)).expect_err(path);
        assert!(err.to_string().contains(path), "{err}");
    }
}

#[tokio::test]
async fn gzip_over_tls_after_authentication_and_refusals_stay_plain() {
    let web = LiveSettings::fixed(settings(&format!("{TLS}{}", users())));
    let server = Server::start(Ipv4Addr::LOCALHOST, web, true).await;
    let request = |auth: &str| {
        use base64::Engine as _;
        let auth = base64::engine::general_purpose::STANDARD.encode(auth);
        format!(
            "GET /metrics HTTP/1.0\r\nHost: localhost\r\nAuthorization: Basic {auth}\r\n\
             Accept-Encoding: gzip\r\n\r\n"
        )
    };
    let ok = https_bytes(server.addr, request("prom:s3cret"), false)
        .await
        .expect("https");
    let (head, body) = super::tests::split_answer(&ok);
    assert!(head.starts_with("http/1.0 200 ok\r\n"), "{head}");
    assert!(head.contains("\r\ncontent-encoding: gzip"), "{head}");
    assert!(super::tests::gunzip(body).contains("sockq_build_info{"));

    let refused = https_bytes(server.addr, request("prom:wrong"), false)
        .await
        .expect("https");
    let (head, _) = super::tests::split_answer(&refused);
    assert!(head.starts_with("http/1.0 401 unauthorized\r\n"), "{head}");
    assert!(!head.contains("content-encoding"), "{head}");
    server.stop().await;
}
