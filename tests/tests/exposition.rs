//! What a scraper gets from the real daemon: gzip when it asks for it, native
//! histograms when a Prometheus with `--enable-feature=native-histograms` scrapes
//! (protobuf), classic `_bucket` series for one without the feature (text).

use std::{
    collections::BTreeSet,
    io::{Read as _, Write as _},
    net::{SocketAddr, TcpStream},
    time::{Duration, Instant},
};

use sockq_tests::{Daemon, Netns, prometheus::Prometheus};

/// One HTTP/1.0 GET of /metrics (HTTP/1.0: the body is never chunked): the head,
/// lowercased, and the body.
fn get_metrics(addr: SocketAddr, extra_headers: &str) -> (String, Vec<u8>) {
    let mut s = TcpStream::connect(addr).expect("connect to sockq");
    s.set_read_timeout(Some(Duration::from_secs(10)))
        .expect("timeout");
    write!(
        s,
        "GET /metrics HTTP/1.0\r\nHost: localhost\r\n{extra_headers}\r\n"
    )
    .expect("write request");
    let mut answer = Vec::new();
    s.read_to_end(&mut answer).expect("read answer");
    let end = answer
        .windows(4)
        .position(|w| w == b"\r\n\r\n")
        .expect("a whole head");
    let head = String::from_utf8_lossy(&answer[..end]).to_ascii_lowercase();
    (head, answer[end + 4..].to_vec())
}

/// The series (name and labels, no value) of `text` whose labels contain `needle`.
fn series_with(text: &str, needle: &str) -> BTreeSet<String> {
    text.lines()
        .filter(|l| !l.starts_with('#') && l.contains(needle))
        .filter_map(|l| l.rsplit_once(' ').map(|(series, _)| series.to_owned()))
        .collect()
}

#[test]
fn gzip_body_has_the_plain_body_series() {
    let ns = Netns::new("gzip");
    let daemon = Daemon::start("0.5");
    // Accepted while the probes watch: the accept-wait histogram has counts.
    let _slow = ns.scenario(&["slow-accept", "127.0.0.1:7061", "3", "20"]);
    let netns = format!("netns=\"{}\"", ns.inode());
    let wait = format!("sockq_accept_wait_seconds_count{{{netns}");
    daemon.wait_for(Duration::from_secs(10), |_| {
        let (_, body) = get_metrics(daemon.addr, "");
        String::from_utf8_lossy(&body)
            .contains(&wait)
            .then_some(())
            .ok_or("no accept waits yet".to_owned())
    });

    let (head, gzipped) = get_metrics(daemon.addr, "Accept-Encoding: gzip\r\n");
    assert!(head.starts_with("http/1.0 200 ok\r\n"), "{head}");
    assert!(head.contains("\r\ncontent-encoding: gzip\r\n"), "{head}");
    assert!(head.contains("\r\nvary: accept-encoding\r\n"), "{head}");
    // How the body came to be: one of the four the README lists.
    let body_said = head
        .lines()
        .find_map(|l| l.strip_prefix("sockq-body: "))
        .unwrap_or_else(|| panic!("no sockq-body header: {head}"));
    assert!(
        ["made", "previous", "rendered", "waited"].contains(&body_said),
        "sockq-body: {body_said}"
    );
    let mut text = String::new();
    flate2::read::GzDecoder::new(gzipped.as_slice())
        .read_to_string(&mut text)
        .expect("a gzip body");
    let (plain_head, plain) = get_metrics(daemon.addr, "");
    assert!(!plain_head.contains("content-encoding"), "{plain_head}");
    let plain = String::from_utf8(plain).expect("UTF-8 text");
    eprintln!(
        "/metrics: {} bytes plain, {} bytes gzip",
        plain.len(),
        gzipped.len()
    );
    // Other namespaces' listeners come and go between the two scrapes; ours do not.
    let ours = series_with(&text, &netns);
    assert!(
        ours.iter()
            .any(|s| s.starts_with("sockq_accept_wait_seconds_bucket"))
    );
    assert_eq!(ours, series_with(&plain, &netns));
    let families = |t: &str| -> BTreeSet<String> {
        t.lines()
            .filter(|l| l.starts_with("# TYPE "))
            .map(str::to_owned)
            .collect()
    };
    assert_eq!(families(&text), families(&plain));

    // The text exposition, histograms with the short buckets included, is valid.
    let mut promtool = std::process::Command::new("promtool")
        .args(["check", "metrics"])
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("promtool (Debian package prometheus, installed by `cargo xtask setup`)");
    promtool
        .stdin
        .take()
        .expect("stdin")
        .write_all(plain.as_bytes())
        .expect("write to promtool");
    let out = promtool.wait_with_output().expect("promtool");
    let report = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        out.status.success() && report.trim().is_empty(),
        "promtool check metrics: {report}"
    );
}

/// Waits until `query` has a value satisfying `ok`, for up to 60 s; the value.
fn wait_for_value(prometheus: &Prometheus, query: &str, ok: impl Fn(f64) -> bool) -> f64 {
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let last = match prometheus.value(query) {
            Ok(Some(v)) if ok(v) => return v,
            other => other,
        };
        assert!(
            Instant::now() < deadline,
            "after 60 s, {query} gave {last:?}"
        );
        std::thread::sleep(Duration::from_millis(500));
    }
}

#[test]
fn native_and_classic_medians_from_real_prometheus() {
    let ns = Netns::new("native");
    let daemon = Daemon::start("1");
    let target = daemon.addr.to_string();
    let native = Prometheus::start(&target, true);
    let classic = Prometheus::start(&target, false);
    for p in [&native, &classic] {
        wait_for_value(p, "up", |v| v == 1.0);
    }
    // 40 connections, each accepted 150 ms after it was queued (about 6 s in all,
    // so several scrapes see the counts grow).
    let slow = ns.scenario(&["slow-accept", "127.0.0.1:7062", "40", "150"]);
    let netns = ns.inode();
    let selector = format!("{{netns=\"{netns}\",listen_addr=\"127.0.0.1:7062\"}}");

    // Native: 150 ms is in the kernel bucket [131072, 163840) µs, counted whole in the
    // native bucket (0.125, 0.25] s; the estimate lies in that bucket.
    let median =
        format!("histogram_quantile(0.5, sum(rate(sockq_accept_wait_seconds{selector}[1m])))");
    let native_median = wait_for_value(&native, &median, |v| v > 0.0);
    // Classic: the short buckets around 150 ms are le=0.065536 and le=0.262144.
    let classic_median = wait_for_value(
        &classic,
        &format!(
            "histogram_quantile(0.5, sum by (le) \
             (rate(sockq_accept_wait_seconds_bucket{selector}[1m])))"
        ),
        |v| v > 0.0,
    );
    eprintln!(
        "accept-wait median: known 0.150 s; native histogram {native_median:.4} s, \
         classic buckets {classic_median:.4} s"
    );
    assert!(
        (0.125..=0.25).contains(&native_median),
        "native median {native_median} outside the native bucket (0.125, 0.25] holding 150 ms"
    );
    assert!(
        (0.065536..=0.262144).contains(&classic_median),
        "classic median {classic_median} outside (0.065536, 0.262144]"
    );
    // The feature-less Prometheus has classic series; the native one ingested the
    // histogram as native (no _bucket series).
    let buckets = format!("sockq_accept_wait_seconds_bucket{selector}");
    assert!(classic.series(&buckets).expect("query") > 0);
    assert_eq!(native.series(&buckets).expect("query"), 0);
    // A histogram served with classic buckets only (the poll duration) reaches the
    // native Prometheus from protobuf as classic series.
    assert!(
        native
            .series("sockq_poll_duration_seconds_bucket")
            .expect("query")
            > 0,
        "no classic series from the protobuf exposition"
    );
    slow.finish();
}
