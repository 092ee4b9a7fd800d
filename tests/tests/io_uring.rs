//! Accepts made through io_uring (no accept syscall), against a liburing server of
//! our own (`tests/c/uring_server.c`, built here with `cc -luring`) that accepts each
//! connection a known time after its handshake and prints how many it accepted.
//! Each test in its own network namespace.

use std::{
    io::{BufRead as _, BufReader, Write as _},
    path::{Path, PathBuf},
    process::{Child, ChildStdout, Command, Stdio},
    sync::OnceLock,
    time::Duration,
};

use sockq_tests::{Daemon, Metrics, Netns, histogram_quantile};

/// How long the server leaves each connection queued before accepting it.
const DELAY_MS: u64 = 200;

/// The server binary, compiled once per test run.
fn server_bin() -> &'static Path {
    static BIN: OnceLock<PathBuf> = OnceLock::new();
    BIN.get_or_init(|| {
        let source = Path::new(env!("CARGO_MANIFEST_DIR")).join("c/uring_server.c");
        let bin = Path::new(env!("CARGO_TARGET_TMPDIR")).join("uring_server");
        let out = Command::new("cc")
            .args(["-O2", "-Wall", "-Werror", "-o"])
            .arg(&bin)
            .arg(&source)
            .arg("-luring")
            .output()
            .unwrap_or_else(|e| panic!("running cc: {e}"));
        assert!(
            out.status.success(),
            "compiling {} failed (needs gcc and liburing-dev, `cargo xtask setup --test`): {}",
            source.display(),
            String::from_utf8_lossy(&out.stderr)
        );
        bin
    })
}

/// A run of the server; once it reported, its listener and connections stay open
/// until [`Server::finish`].
struct Server {
    child: Child,
    stdout: BufReader<ChildStdout>,
    accepted: u64,
    pid: String,
    tid: String,
}

impl Server {
    /// Runs `uring_server MODE ADDR N DELAY_MS` in `ns` (under `strace`, logging any
    /// accept/accept4 call to `trace`, when given) and waits for its report.
    fn run(ns: &Netns, mode: &str, addr: &str, n: u64, trace: Option<&Path>) -> Self {
        let mut server = Self::start(ns, &[mode, addr, &n.to_string()], trace);
        server.read_report();
        server
    }

    /// Starts it with `args` and the delay (and `hold`, when in `args`).
    fn start(ns: &Netns, args: &[&str], trace: Option<&Path>) -> Self {
        let mut args: Vec<String> = args.iter().map(|a| (*a).to_owned()).collect();
        args.insert(3, DELAY_MS.to_string());
        let mut cmd = match trace {
            Some(trace) => {
                let mut cmd = ns.command("strace");
                cmd.args(["-f", "-qq", "-e", "trace=accept,accept4", "-o"])
                    .arg(trace)
                    .arg(server_bin());
                cmd
            }
            None => ns.command(server_bin()),
        };
        let mut child = cmd
            .args(&args)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .spawn()
            .unwrap_or_else(|e| panic!("starting uring_server {args:?}: {e}"));
        let stdout = BufReader::new(child.stdout.take().expect("stdout"));
        Self {
            child,
            stdout,
            accepted: 0,
            pid: String::new(),
            tid: String::new(),
        }
    }

    fn line(&mut self) -> String {
        let mut line = String::new();
        self.stdout
            .read_line(&mut line)
            .unwrap_or_else(|e| panic!("reading uring_server: {e}"));
        line
    }

    /// With `hold`: waits until it queued its first connections, then lets it go on.
    fn release_after(&mut self, before: impl FnOnce()) {
        let line = self.line();
        assert_eq!(line.trim(), "queued", "uring_server said {line:?}");
        before();
        let stdin = self.child.stdin.as_mut().expect("stdin");
        stdin.write_all(b"go\n").expect("writing to uring_server");
        stdin.flush().expect("writing to uring_server");
        self.read_report();
    }

    fn read_report(&mut self) {
        let line = self.line();
        let field = |name: &str| -> String {
            line.split_whitespace()
                .find_map(|w| w.strip_prefix(&format!("{name}=")).map(str::to_owned))
                .unwrap_or_else(|| panic!("uring_server said {line:?}"))
        };
        self.accepted = field("accepted").parse().expect("accepted count");
        (self.pid, self.tid) = (field("pid"), field("tid"));
    }

    /// Closes its stdin: it closes everything and exits.
    fn finish(mut self) {
        drop(self.child.stdin.take());
        let status = self.child.wait().expect("waiting for uring_server");
        assert!(status.success(), "uring_server exited with {status}");
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        drop(self.child.stdin.take());
        if !matches!(self.child.try_wait(), Ok(Some(_))) {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}

fn strace_installed() -> bool {
    Command::new("strace")
        .arg("-V")
        .stdout(Stdio::null())
        .status()
        .is_ok_and(|s| s.success())
}

/// sockq's accepts, accept waits and acceptor threads for the server's listener
/// equal what the server did; the server made no accept syscall.
fn accepts_and_waits_match(mode: &str, port: u16, connections: u64) {
    let ns = Netns::new(&format!("uring-{mode}"));
    let netns = ns.inode().to_string();
    // The fine classic buckets: the median below is read to a quarter of an octave.
    let daemon = Daemon::start_with(&["--interval", "0.2", "--fine-buckets"]);
    let addr = format!("127.0.0.1:{port}");
    let trace = strace_installed()
        .then(|| Path::new(env!("CARGO_TARGET_TMPDIR")).join(format!("uring-{mode}.strace")));
    if trace.is_none() {
        eprintln!("strace not installed: not checking for accept syscalls");
    }
    let server = Server::run(&ns, mode, &addr, connections, trace.as_deref());
    assert_eq!(server.accepted, connections, "the server's own count");
    if let Some(trace) = &trace {
        let calls = std::fs::read_to_string(trace).expect("strace log");
        assert!(
            !calls.contains("accept"),
            "the server made accept syscalls:\n{calls}"
        );
    }
    let labels = [("netns", netns.as_str()), ("listen_addr", addr.as_str())];
    let n = connections as f64;
    let (accepts, count, mean, median) = daemon.wait_for(Duration::from_secs(5), |m| {
        let accepts = m.one("sockq_listen_accepts_total", &labels)?;
        let count = m.one("sockq_accept_wait_seconds_count", &labels)?;
        if accepts != n || count != n {
            return Err(format!("{accepts} accepts, {count} waits, want {n}"));
        }
        let mean = m.one("sockq_accept_wait_seconds_sum", &labels)? / count;
        let buckets = m.find("sockq_accept_wait_seconds_bucket", &labels);
        let median = histogram_quantile(0.5, &buckets).ok_or("empty histogram")?;
        check_acceptor(m, &labels, &server, n)?;
        Ok((accepts, count, mean, median))
    });
    eprintln!(
        "{mode}: server accepted {}, sockq {accepts} accepts, {count} waits, \
         mean {mean:.4} s, median {median:.4} s",
        server.accepted
    );
    // The server sleeps DELAY_MS between each handshake and its accept; on a loaded
    // machine its wake-up may come late, never early. The median is interpolated in
    // buckets a quarter of a power of two wide (196.6 to 229.4 ms, then to 262.1).
    let delay = DELAY_MS as f64 / 1000.0;
    assert!(
        (delay - 0.002..=delay + 0.060).contains(&mean),
        "mean accept wait {mean} s, the server accepts {DELAY_MS} ms after each handshake"
    );
    assert!(
        (0.196..=delay + 0.100).contains(&median),
        "median accept wait {median} s, the server accepts {DELAY_MS} ms after each handshake"
    );
    server.finish();
}

/// Every accept came from the server's one thread.
fn check_acceptor(
    m: &Metrics,
    labels: &[(&str, &str); 2],
    server: &Server,
    n: f64,
) -> Result<(), String> {
    let per_thread = m.find(
        "sockq_acceptor_accepts_total",
        &[labels[0], labels[1], ("pid", server.pid.as_str())],
    );
    match per_thread.as_slice() {
        [one]
            if one.value == n
                && one.labels.get("tid") == Some(&server.tid)
                && one.labels.get("comm").map(String::as_str) == Some("uring_server") =>
        {
            Ok(())
        }
        other => Err(format!(
            "acceptor series {other:?}, want one for tid {} with {n}",
            server.tid
        )),
    }
}

#[test]
fn single_shot_accepts_are_counted_with_their_waits() {
    accepts_and_waits_match("single", 7401, 6);
}

#[test]
fn multishot_accepts_are_counted_with_their_waits() {
    accepts_and_waits_match("multi", 7402, 6);
}

/// Whether this kernel's BTF shows the fixed-file table sockq reads (6.13 on:
/// `struct io_rsrc_node` with `file_ptr`), from bpftool's own dump.
fn fixed_file_table_known() -> bool {
    let out = Command::new("bpftool")
        .args([
            "btf",
            "dump",
            "file",
            "/sys/kernel/btf/vmlinux",
            "format",
            "c",
        ])
        .output()
        .unwrap_or_else(|e| panic!("running bpftool (cargo xtask setup --test): {e}"));
    let dump = String::from_utf8_lossy(&out.stdout);
    dump.split("struct io_rsrc_node {")
        .nth(1)
        .and_then(|rest| rest.split("};").next())
        .is_some_and(|body| body.contains("file_ptr"))
}

/// Accepts into direct descriptors (fixed-file slots, the kernel picking the slot):
/// where the ring's fixed-file table has the layout sockq knows, counted like the
/// others, with their waits and acceptor; elsewhere counted lost, never as accepts.
#[test]
fn accepts_into_direct_descriptors_are_counted_or_lost() {
    const CONNECTIONS: u64 = 4;
    if fixed_file_table_known() {
        accepts_and_waits_match("direct", 7403, CONNECTIONS);
        return;
    }
    eprintln!("this kernel's fixed-file table is not the 6.13+ one: direct accepts are lost");
    let ns = Netns::new("uring-direct");
    let netns = ns.inode().to_string();
    let daemon = Daemon::start("0.2");
    let cause = [("cause", "accept_direct_descriptor")];
    let lost_before = daemon
        .metrics()
        .one("sockq_events_lost_by_cause_total", &cause)
        .expect("lost");
    let addr = "127.0.0.1:7403";
    let server = Server::run(&ns, "direct", addr, CONNECTIONS, None);
    assert_eq!(server.accepted, CONNECTIONS, "the server's own count");
    let labels = [("netns", netns.as_str()), ("listen_addr", addr)];
    daemon.wait_for(Duration::from_secs(5), |m| {
        let enqueues = m.one("sockq_listen_enqueues_total", &labels)?;
        let accepts = m.one("sockq_listen_accepts_total", &labels)?;
        let lost = m.one("sockq_events_lost_by_cause_total", &cause)? - lost_before;
        if enqueues != CONNECTIONS as f64 || lost != CONNECTIONS as f64 {
            return Err(format!("{enqueues} enqueues, {lost} more lost"));
        }
        // Slots are not descriptors: nothing counted for any socket.
        assert_eq!(
            accepts, 0.0,
            "accepts into direct descriptors are not counted"
        );
        Ok(())
    });
    server.finish();
}

/// Connections whose handshake completed before sockq started: a TCP child carries
/// the time it was queued, so each is counted and timed, for the listener its request
/// names (a multishot accept's CQEs name none: its request, noted at its wake-up, is
/// read for it). Nothing is lost, nothing silent.
#[test]
fn handshakes_before_sockq_started_are_counted_or_lost_never_silent() {
    const CONNECTIONS: u64 = 4;
    let ns = Netns::new("uring-before");
    let netns = ns.inode().to_string();
    let (single_addr, multi_addr) = ("127.0.0.1:7404", "127.0.0.1:7405");
    let mut single = Server::start(&ns, &["single", single_addr, "4", "hold"], None);
    let mut multi = Server::start(&ns, &["multi", multi_addr, "4", "hold"], None);
    let mut daemon = None;
    single.release_after(|| daemon = Some(Daemon::start("0.2")));
    let daemon = daemon.expect("daemon");
    let cause = [("cause", "accept_unattributed")];
    let lost_before = daemon
        .metrics()
        .one("sockq_events_lost_by_cause_total", &cause)
        .expect("lost");
    multi.release_after(|| ());
    assert_eq!(
        (single.accepted, multi.accepted),
        (CONNECTIONS, CONNECTIONS)
    );
    let n = CONNECTIONS as f64;
    daemon.wait_for(Duration::from_secs(5), |m| {
        let of = |name: &str, addr: &str| {
            m.one(name, &[("netns", netns.as_str()), ("listen_addr", addr)])
        };
        let single_counts = (
            of("sockq_listen_accepts_total", single_addr)?,
            of("sockq_accept_wait_seconds_count", single_addr)?,
        );
        let multi_counts = (
            of("sockq_listen_accepts_total", multi_addr)?,
            of("sockq_accept_wait_seconds_count", multi_addr)?,
        );
        let lost = m.one("sockq_events_lost_by_cause_total", &cause)? - lost_before;
        // One connection of the single-shot server, two of the multishot one's were
        // queued before sockq started. Each request names its listener (a multishot
        // accept's CQEs come without it: the request noted at its submission or
        // wake-up is read), and a TCP child carries its own queueing time: all are
        // counted and timed.
        if single_counts != (n, n) || multi_counts != (n, n) {
            return Err(format!(
                "single {single_counts:?}, multi {multi_counts:?} (accepts, waits), \
                 {lost} more lost"
            ));
        }
        Ok(())
    });
    single.finish();
    multi.finish();
}
