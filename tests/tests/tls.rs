//! The metrics port with `--web-config-file` (exporter-toolkit's format), against the
//! real daemon: a real Prometheus (Debian's 2.42) scrapes it over TLS with basic auth
//! and gets its series, a wrong password gets 401 and no body, plain HTTP to the TLS
//! port gets nothing of sockq's, a malformed file fails the start with a clear
//! message, and a reload (SIGHUP or a changed file) that fails keeps the settings
//! in force while one that works takes over, the probes attached throughout.
//!
//! Certificates: the unit tests' (`collector/src/export/http/testdata`, a CA and a
//! server certificate for localhost and 127.0.0.1); hashes from `htpasswd` (apache2-utils);
//! HTTPS requests through `curl`.

use std::{
    io::{Read as _, Write as _},
    net::{SocketAddr, TcpStream},
    path::{Path, PathBuf},
    process::{Child, Command, Stdio},
    time::{Duration, Instant},
};

use sockq_tests::{free_port, require_root, sockq_bin};

fn testdata(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../collector/src/export/http/testdata")
        .join(name)
}

/// A fresh directory for one test's files, removed on drop.
struct TempDir(PathBuf);

impl TempDir {
    fn new(test: &str) -> Self {
        let dir = std::env::temp_dir().join(format!("sockq-tls-{test}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).expect("temp dir");
        Self(dir)
    }

    fn path(&self, name: &str) -> PathBuf {
        self.0.join(name)
    }

    fn write(&self, name: &str, text: &str) -> PathBuf {
        let path = self.path(name);
        // Whole files at once: write then rename, as editors and Kubernetes do.
        let partial = self.path(&format!(".{name}.partial"));
        std::fs::write(&partial, text).expect("write");
        std::fs::rename(&partial, &path).expect("rename");
        path
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// A bcrypt hash of `password` from htpasswd (`$2y$`, as exporter-toolkit documents).
fn bcrypt(password: &str) -> String {
    let out = Command::new("htpasswd")
        .args(["-nbBC", "10", "", password])
        .output()
        .expect("htpasswd (Debian package apache2-utils)");
    assert!(out.status.success(), "htpasswd: {out:?}");
    String::from_utf8_lossy(&out.stdout)
        .trim()
        .trim_start_matches(':')
        .to_owned()
}

/// The web configuration: TLS with the test certificate, and these users.
fn web_config(users: &[(&str, &str)]) -> String {
    let mut text = format!(
        "tls_server_config:\n  cert_file: {}\n  key_file: {}\nbasic_auth_users:\n",
        testdata("server.pem").display(),
        testdata("server.key").display()
    );
    for (user, password) in users {
        text.push_str(&format!("  {user}: {}\n", bcrypt(password)));
    }
    text
}

/// `sockq run` with a web configuration, its log in a file.
struct Daemon {
    child: Child,
    addr: SocketAddr,
    log: PathBuf,
}

impl Daemon {
    /// Starts it and waits until `user:password` gets the metrics over HTTPS.
    fn start(dir: &TempDir, config: &Path, credentials: &str) -> Self {
        require_root();
        let addr: SocketAddr = format!("127.0.0.1:{}", free_port()).parse().expect("addr");
        let log = dir.path("sockq.log");
        let child = Command::new(sockq_bin())
            .args([
                "run",
                "--interval",
                "1",
                "--metrics-addr",
                &addr.to_string(),
            ])
            .arg("--web-config-file")
            .arg(config)
            .env("RUST_LOG", "info")
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(&log).expect("log file"))
            .spawn()
            .expect("sockq run");
        let mut daemon = Self { child, addr, log };
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            if let Ok(Some(status)) = daemon.child.try_wait() {
                panic!("sockq exited with {status}: {}", daemon.log_text());
            }
            let answer = curl(addr, "/metrics", Some(credentials));
            if answer.status == 200 && answer.body.contains("sockq_listen_accept_queue_length") {
                return daemon;
            }
            assert!(
                Instant::now() < deadline,
                "no metrics over HTTPS within 20 s: {answer:?}\n{}",
                daemon.log_text()
            );
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    fn log_text(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    fn signal(&self, signal: i32) {
        // SAFETY: kill(2) on our own child.
        unsafe { libc::kill(self.child.id() as i32, signal) };
    }
}

impl Drop for Daemon {
    fn drop(&mut self) {
        sockq_tests::stop(&mut self.child);
    }
}

#[derive(Debug)]
struct Answer {
    status: u16,
    body: String,
}

/// GET over HTTPS (the test CA, host name localhost) with curl.
fn curl(addr: SocketAddr, path: &str, credentials: Option<&str>) -> Answer {
    let port = addr.port();
    let mut cmd = Command::new("curl");
    cmd.args(["-s", "--max-time", "10", "--cacert"])
        .arg(testdata("ca.pem"))
        .args(["--resolve", &format!("localhost:{port}:127.0.0.1")])
        .args(["-w", "\n%{http_code}"]);
    if let Some(credentials) = credentials {
        cmd.args(["-u", credentials]);
    }
    let out = cmd
        .arg(format!("https://localhost:{port}{path}"))
        .output()
        .expect("curl (Debian package curl)");
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    let (body, status) = text.rsplit_once('\n').unwrap_or(("", &text));
    Answer {
        status: status.trim().parse().unwrap_or(0),
        body: body.to_owned(),
    }
}

/// A real Prometheus scraping `target` twice: job `sockq` with the right password,
/// job `sockq-wrong` with a wrong one.
struct Prometheus {
    child: Child,
    port: u16,
}

impl Prometheus {
    fn start(dir: &TempDir, target: SocketAddr, user: &str, password: &str) -> Self {
        let port = free_port();
        std::fs::write(dir.path("password"), password).expect("password file");
        std::fs::write(dir.path("wrong"), "not-the-password").expect("password file");
        let job = |name: &str, password_file: &str| {
            format!(
                "  - job_name: {name}\n    scheme: https\n    tls_config:\n      ca_file: {}\n      \
                 server_name: localhost\n    basic_auth:\n      username: {user}\n      \
                 password_file: {}\n    static_configs:\n      - targets: ['{target}']\n",
                testdata("ca.pem").display(),
                dir.path(password_file).display()
            )
        };
        let config = format!(
            "global:\n  scrape_interval: 1s\n  scrape_timeout: 1s\nscrape_configs:\n{}{}",
            job("sockq", "password"),
            job("sockq-wrong", "wrong")
        );
        let config_path = dir.write("prometheus.yml", &config);
        let child = Command::new("prometheus")
            .arg(format!("--config.file={}", config_path.display()))
            .arg(format!(
                "--storage.tsdb.path={}",
                dir.path("data").display()
            ))
            .arg(format!("--web.listen-address=127.0.0.1:{port}"))
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("prometheus (Debian package prometheus, installed by `cargo xtask setup`)");
        Self { child, port }
    }

    /// GET on Prometheus's HTTP API: the JSON `data`.
    fn api(&self, path_and_query: &str) -> Result<serde_json::Value, String> {
        let mut s = TcpStream::connect(("127.0.0.1", self.port)).map_err(|e| e.to_string())?;
        s.set_read_timeout(Some(Duration::from_secs(10)))
            .map_err(|e| e.to_string())?;
        write!(
            s,
            "GET {path_and_query} HTTP/1.0\r\nHost: localhost\r\n\r\n"
        )
        .map_err(|e| e.to_string())?;
        let mut response = String::new();
        s.read_to_string(&mut response).map_err(|e| e.to_string())?;
        let body = response.split_once("\r\n\r\n").map_or("", |(_, b)| b);
        let v: serde_json::Value =
            serde_json::from_str(body).map_err(|e| format!("{e}: {body}"))?;
        if v["status"] != "success" {
            return Err(format!("query failed: {body}"));
        }
        Ok(v["data"].clone())
    }

    /// The value of the instant query `query`'s single series, if there is one.
    fn value(&self, query: &str) -> Option<f64> {
        let data = self.api(&format!("/api/v1/query?query={query}")).ok()?;
        let series = data["result"].as_array()?;
        (series.len() == 1)
            .then(|| series[0]["value"][1].as_str()?.parse().ok())
            .flatten()
    }

    /// The last scrape error of job `job`'s target.
    fn last_error(&self, job: &str) -> Option<String> {
        let data = self.api("/api/v1/targets").ok()?;
        data["activeTargets"]
            .as_array()?
            .iter()
            .find(|t| t["labels"]["job"] == job)
            .and_then(|t| t["lastError"].as_str().map(str::to_owned))
    }
}

impl Drop for Prometheus {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

#[test]
fn prometheus_scrapes_over_tls_with_basic_auth() {
    let dir = TempDir::new("prom");
    let config = dir.write("web.yml", &web_config(&[("prom", "s3cret")]));
    let daemon = Daemon::start(&dir, &config, "prom:s3cret");
    let prometheus = Prometheus::start(&dir, daemon.addr, "prom", "s3cret");

    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let up = prometheus.value("up%7Bjob%3D%22sockq%22%7D");
        let series =
            prometheus.value("count(%7Bjob%3D%22sockq%22%2C__name__%3D~%22sockq_.%2B%22%7D)");
        let wrong_up = prometheus.value("up%7Bjob%3D%22sockq-wrong%22%7D");
        let wrong_error = prometheus.last_error("sockq-wrong").unwrap_or_default();
        if up == Some(1.0)
            && series.is_some_and(|n| n >= 20.0)
            && wrong_up == Some(0.0)
            && wrong_error.contains("401")
        {
            eprintln!(
                "Prometheus over TLS + basic auth: up 1, {} sockq series; wrong password: \
                 up 0, {wrong_error:?}",
                series.unwrap_or_default()
            );
            break;
        }
        assert!(
            Instant::now() < deadline,
            "after 30 s: up {up:?}, series {series:?}, wrong password: up {wrong_up:?}, \
             error {wrong_error:?}"
        );
        std::thread::sleep(Duration::from_millis(500));
    }
    let scraped = prometheus.value("sockq_build_info%7Bjob%3D%22sockq%22%7D");
    assert_eq!(scraped, Some(1.0), "sockq_build_info did not arrive");
}

#[test]
fn wrong_password_gets_401_and_plain_http_gets_nothing_useful() {
    let dir = TempDir::new("refusals");
    let config = dir.write("web.yml", &web_config(&[("prom", "s3cret")]));
    let daemon = Daemon::start(&dir, &config, "prom:s3cret");
    for credentials in [Some("prom:wrong"), Some("nobody:s3cret"), None] {
        let answer = curl(daemon.addr, "/metrics", credentials);
        assert_eq!(answer.status, 401, "{credentials:?}: {answer:?}");
        assert_eq!(answer.body, "", "{credentials:?}: a 401 has no body");
    }
    let api = curl(daemon.addr, "/api/listeners", Some("prom:wrong"));
    assert_eq!((api.status, api.body.as_str()), (401, ""));

    // Plain HTTP to the TLS port: Go's "HTTP request to an HTTPS server", no data.
    let mut s = TcpStream::connect(daemon.addr).expect("connect");
    s.set_read_timeout(Some(Duration::from_secs(10)))
        .expect("timeout");
    s.write_all(b"GET /metrics HTTP/1.1\r\nHost: localhost\r\nAuthorization: Basic cHJvbTpzM2NyZXQ=\r\n\r\n")
        .expect("write");
    let mut response = Vec::new();
    let _ = s.read_to_end(&mut response);
    let response = String::from_utf8_lossy(&response);
    assert!(
        response.starts_with("HTTP/1.0 400 Bad Request\r\n"),
        "{response}"
    );
    assert!(
        !response.contains("sockq_") && !response.contains("listen_addr"),
        "{response}"
    );
}

#[test]
fn a_malformed_web_config_fails_the_start_clearly() {
    require_root();
    let dir = TempDir::new("malformed");
    let cases = [
        (
            "tls_server_config:\n  cert_filse: server.crt\n",
            "unknown field `cert_filse`",
        ),
        (
            "basic_auth_users:\n  prom: hunter2\n",
            "is not a bcrypt hash",
        ),
        (
            "tls_server_config:\n  cert_file: missing.crt\n  key_file: missing.key\n",
            "missing.crt",
        ),
        (
            "tls_server_config:\n  cert_file: a\n  key_file: b\n  min_version: TLS10\n  \
             max_version: TLS11\n",
            "TLS 1.2 and 1.3 only",
        ),
    ];
    for (text, expected) in cases {
        let config = dir.write("web.yml", text);
        let started = Instant::now();
        let out = Command::new(sockq_bin())
            .args([
                "run",
                "--metrics-addr",
                &format!("127.0.0.1:{}", free_port()),
            ])
            .arg("--web-config-file")
            .arg(&config)
            .output()
            .expect("sockq run");
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(!out.status.success(), "{text}: started anyway");
        assert!(
            stderr.contains("web configuration") && stderr.contains(expected),
            "{text}: {stderr}"
        );
        assert!(
            started.elapsed() < Duration::from_secs(5),
            "{text}: took {:?} to fail",
            started.elapsed()
        );
    }
}

/// `sockq_probe_attached` series at 1.
fn attached_probes(daemon: &Daemon, credentials: &str) -> usize {
    curl(daemon.addr, "/metrics", Some(credentials))
        .body
        .lines()
        .filter(|l| l.starts_with("sockq_probe_attached{") && l.ends_with(" 1"))
        .count()
}

#[test]
fn reloads_keep_the_old_settings_on_error_and_take_good_ones() {
    let dir = TempDir::new("reload");
    let config = dir.write("web.yml", &web_config(&[("prom", "s3cret")]));
    let daemon = Daemon::start(&dir, &config, "prom:s3cret");
    let probes = attached_probes(&daemon, "prom:s3cret");
    assert!(probes > 0, "no probe attached");

    // A malformed file, then SIGHUP: logged, the old settings stay.
    dir.write("web.yml", "basic_auth_users:\n  prom: [not a hash\n");
    daemon.signal(libc::SIGHUP);
    let deadline = Instant::now() + Duration::from_secs(10);
    while !daemon
        .log_text()
        .contains("previous web configuration stays in force")
    {
        assert!(
            Instant::now() < deadline,
            "no reload error logged: {}",
            daemon.log_text()
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    assert_eq!(
        curl(daemon.addr, "/metrics", Some("prom:s3cret")).status,
        200
    );
    assert!(
        daemon.log_text().contains("SIGHUP"),
        "{}",
        daemon.log_text()
    );

    // A good file with another password, no signal: the change is noticed.
    dir.write("web.yml", &web_config(&[("prom", "n3w-pass")]));
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        if curl(daemon.addr, "/metrics", Some("prom:n3w-pass")).status == 200 {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "the new password was not taken within 10 s: {}",
            daemon.log_text()
        );
        std::thread::sleep(Duration::from_millis(200));
    }
    assert_eq!(
        curl(daemon.addr, "/metrics", Some("prom:s3cret")).status,
        401
    );
    assert!(
        daemon
            .log_text()
            .contains("a file changed: web configuration reloaded")
    );
    // The probes were not touched.
    assert_eq!(
        attached_probes(&daemon, "prom:n3w-pass"),
        probes,
        "probes attached before and after the reloads"
    );
}
