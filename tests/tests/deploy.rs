//! The manifests in `deploy/`, checked by the tools that would run them rather than
//! read: the Kubernetes objects against the API's schemas (`kubernetes-validate
//! --strict` from PyPI, installed into a venv under the target directory on first
//! use), the Prometheus scrape configuration by `promtool check config` (Debian's
//! prometheus package), the systemd unit by `systemd-analyze verify`, and the example
//! web configuration by sockq itself: it must start with it and answer over TLS.

use std::{
    path::{Path, PathBuf},
    process::{Command, Output, Stdio},
    time::{Duration, Instant},
};

use sockq_tests::{free_port, require_root, sockq_bin};

/// The validator's version: its schemas are those of Kubernetes 1.37 and older.
const KUBERNETES_VALIDATE: &str = "kubernetes-validate==1.37.0";

fn deploy(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../deploy")
        .join(name)
}

fn run(cmd: &mut Command) -> Output {
    cmd.output()
        .unwrap_or_else(|e| panic!("running {cmd:?}: {e}"))
}

fn text(out: &Output) -> String {
    format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    )
}

/// A venv with kubernetes-validate (and so PyYAML), made once: the tests of this file
/// run on parallel threads and share it (`OnceLock` makes the others wait), and a
/// venv a failed run left half made is recreated (`--clear`).
fn venv() -> PathBuf {
    static VENV: std::sync::OnceLock<PathBuf> = std::sync::OnceLock::new();
    VENV.get_or_init(make_venv).clone()
}

fn make_venv() -> PathBuf {
    let venv = Path::new(env!("CARGO_TARGET_TMPDIR")).join("deploy-venv");
    let bin = venv.join("bin/kubernetes-validate");
    if !bin.exists() {
        let out = run(Command::new("python3")
            .args(["-m", "venv", "--clear"])
            .arg(&venv));
        assert!(out.status.success(), "python3 -m venv: {}", text(&out));
        let out = run(Command::new(venv.join("bin/pip")).args([
            "install",
            "--quiet",
            "--disable-pip-version-check",
            KUBERNETES_VALIDATE,
        ]));
        assert!(
            out.status.success(),
            "pip install {KUBERNETES_VALIDATE}: {}",
            text(&out)
        );
    }
    venv
}

#[test]
fn kubernetes_manifests_match_the_api_schemas() {
    let venv = venv();
    let files = [deploy("daemonset.yaml"), deploy("web-config-secret.yaml")];
    let out = run(Command::new(venv.join("bin/kubernetes-validate"))
        .arg("--strict")
        .args(&files));
    let report = text(&out);
    assert!(out.status.success(), "{report}");
    for resource in [
        "daemonset/sockq",
        "service/sockq",
        "secret/sockq-web-config",
    ] {
        assert!(
            report.contains(&format!("passed for resource {resource}")),
            "{report}"
        );
    }
    // And the validator does catch a mistake.
    let bad = Path::new(env!("CARGO_TARGET_TMPDIR")).join("daemonset-bad.yaml");
    let manifest = std::fs::read_to_string(&files[0]).expect("daemonset.yaml");
    std::fs::write(
        &bad,
        manifest.replace("hostNetwork: true", "hostNetwrk: true"),
    )
    .expect("write");
    let out = run(Command::new(venv.join("bin/kubernetes-validate"))
        .arg("--strict")
        .arg(&bad));
    assert!(
        !out.status.success(),
        "a misspelt field passed: {}",
        text(&out)
    );
}

#[test]
fn the_scrape_config_is_valid_for_prometheus() {
    let out = run(Command::new("promtool")
        .args(["check", "config"])
        .arg(deploy("prometheus-scrape.yml")));
    assert!(out.status.success(), "promtool: {}", text(&out));
    let config = std::fs::read_to_string(deploy("prometheus-scrape.yml")).expect("read");
    for needed in ["scheme: https", "basic_auth:", "password_file:", "ca_file:"] {
        assert!(config.contains(needed), "the scrape config lacks {needed}");
    }
}

#[test]
fn the_systemd_unit_verifies() {
    // The unit names /usr/local/bin/sockq, which systemd-analyze wants to exist.
    let unit = std::fs::read_to_string(deploy("sockq.service")).expect("sockq.service");
    assert!(
        unit.contains("--web-config-file /etc/sockq/web-config.yml"),
        "{unit}"
    );
    assert!(
        unit.contains("ExecReload=/bin/kill -HUP $MAINPID"),
        "{unit}"
    );
    let dir = Path::new(env!("CARGO_TARGET_TMPDIR")).join("unit");
    std::fs::create_dir_all(&dir).expect("dir");
    let copy = dir.join("sockq.service");
    let bin = sockq_bin();
    std::fs::write(
        &copy,
        unit.replace("/usr/local/bin/sockq", &bin.display().to_string()),
    )
    .expect("write");
    let out = run(Command::new("systemd-analyze").arg("verify").arg(&copy));
    let report = text(&out);
    assert!(out.status.success(), "systemd-analyze verify: {report}");
    assert!(
        !report.contains("sockq.service:"),
        "systemd-analyze has remarks on the unit: {report}"
    );
}

/// The Secret's `web-config.yml`, through PyYAML.
fn secret_web_config(venv: &Path) -> String {
    let script = "import sys, yaml\n\
                  doc = yaml.safe_load(open(sys.argv[1]))\n\
                  sys.stdout.write(doc['stringData']['web-config.yml'])\n";
    let out = run(Command::new(venv.join("bin/python"))
        .args(["-c", script])
        .arg(deploy("web-config-secret.yaml")));
    assert!(out.status.success(), "{}", text(&out));
    String::from_utf8_lossy(&out.stdout).into_owned()
}

#[test]
fn sockq_starts_with_the_example_web_config() {
    require_root();
    let venv = venv();
    let dir =
        Path::new(env!("CARGO_TARGET_TMPDIR")).join(format!("webconf-{}", std::process::id()));
    std::fs::create_dir_all(&dir).expect("dir");
    // As the DaemonSet mounts it: the config beside tls.crt and tls.key.
    let testdata =
        Path::new(env!("CARGO_MANIFEST_DIR")).join("../collector/src/export/http/testdata");
    std::fs::copy(testdata.join("server.pem"), dir.join("tls.crt")).expect("copy cert");
    std::fs::copy(testdata.join("server.key"), dir.join("tls.key")).expect("copy key");
    std::fs::write(dir.join("web-config.yml"), secret_web_config(&venv)).expect("write");
    let port = free_port();
    let mut child = Command::new(sockq_bin())
        .args([
            "run",
            "--metrics-addr",
            &format!("127.0.0.1:{port}"),
            "--web-config-file",
        ])
        .arg(dir.join("web-config.yml"))
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .expect("sockq run");
    let deadline = Instant::now() + Duration::from_secs(20);
    let status = loop {
        if let Ok(Some(status)) = child.try_wait() {
            let out = child.wait_with_output().expect("output");
            panic!("sockq exited with {status}: {}", text(&out));
        }
        // Nobody knows the example's password: 401 is the answer that proves it
        // loaded (TLS up, basic auth on).
        let out = run(Command::new("curl")
            .args([
                "-s",
                "-o",
                "/dev/null",
                "-w",
                "%{http_code}",
                "--max-time",
                "5",
            ])
            .arg("--cacert")
            .arg(testdata.join("ca.pem"))
            .args(["--resolve", &format!("localhost:{port}:127.0.0.1")])
            .args(["-u", "prometheus:guess"])
            .arg(format!("https://localhost:{port}/metrics")));
        let status = String::from_utf8_lossy(&out.stdout).into_owned();
        if status != "000" {
            break status;
        }
        assert!(Instant::now() < deadline, "no HTTPS answer within 20 s");
        std::thread::sleep(Duration::from_millis(100));
    };
    // SAFETY: kill(2) on our own child.
    unsafe { libc::kill(child.id() as i32, libc::SIGTERM) };
    let _ = child.wait();
    let _ = std::fs::remove_dir_all(&dir);
    assert_eq!(
        status, "401",
        "the example web config must require the password"
    );
}
