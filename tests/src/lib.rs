//! Harness for sockq's privileged integration tests: network namespaces of our own,
//! scenario programs run inside them, the real `sockq` binary, and the kernel's own
//! accounting (`ss`, `/proc/net/netstat`, `/proc/net/snmp`) as the oracle.
//!
//! Every helper panics with a message naming what failed: these run only in tests.
#![expect(
    clippy::missing_panics_doc,
    reason = "test harness: panicking is how it reports"
)]

pub mod prometheus;

use std::{
    collections::HashMap,
    io::{BufRead as _, BufReader, Read as _, Write as _},
    net::{SocketAddr, TcpStream},
    os::unix::fs::MetadataExt as _,
    path::PathBuf,
    process::{Child, ChildStdin, ChildStdout, Command, Stdio},
    sync::atomic::{AtomicU32, Ordering},
    time::{Duration, Instant},
};

/// The `sockq` binary under test (`SOCKQ_BIN`, set by `cargo xtask test`), else the
/// debug build in the workspace's target directory.
pub fn sockq_bin() -> PathBuf {
    std::env::var_os("SOCKQ_BIN").map_or_else(
        || PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../target/debug/sockq"),
        PathBuf::from,
    )
}

/// The scenario program, which cargo builds next to the test executables
/// (`target/<profile>/sockq-scenario`, the tests live in `target/<profile>/deps`).
pub fn scenario_bin() -> PathBuf {
    test_bin("sockq-scenario")
}

/// A program of this crate (`sockq-scenario`, `sockq-unixsrv`), built next to the
/// test executables.
pub fn test_bin(name: &str) -> PathBuf {
    let exe = std::env::current_exe().expect("test executable path");
    let profile_dir = exe
        .parent()
        .and_then(std::path::Path::parent)
        .expect("test executable inside target/<profile>/deps");
    let bin = profile_dir.join(name);
    assert!(bin.exists(), "{} not built", bin.display());
    bin
}

/// Whether a daemon thread named `comm` is one of the HTTP server's, which hold no
/// capability: its workers (`sockq-http`) and the thread that renders `/metrics`
/// ahead of scrapes (`sockq-http-pre`). The rule `lifecycle` and `exposure` check.
pub fn is_http_thread(comm: &str) -> bool {
    comm.starts_with("sockq-http")
}

pub fn require_root() {
    // SAFETY: geteuid has no preconditions.
    assert_eq!(
        unsafe { libc::geteuid() },
        0,
        "integration tests load eBPF programs and create network namespaces: run as root \
         (`cargo xtask test`)"
    );
}

/// A network namespace created for one test (`ip netns add`), deleted on drop.
pub struct Netns {
    pub name: String,
}

static NEXT: AtomicU32 = AtomicU32::new(0);

impl Netns {
    pub fn new(test: &str) -> Self {
        require_root();
        let name = format!(
            "sockq-{test}-{}-{}",
            std::process::id(),
            NEXT.fetch_add(1, Ordering::Relaxed)
        );
        run_ok(Command::new("ip").args(["netns", "add", &name]));
        run_ok(Command::new("ip").args(["-n", &name, "link", "set", "lo", "up"]));
        let ns = Self { name };
        watched::netns_created(ns.inode());
        ns
    }

    /// Connects this namespace to `other` with a veth pair: this side gets
    /// `10.77.N.1/24`, the other `10.77.N.2/24` (N distinct per pair in this process).
    /// Returns (this side's address, the other's, the other side's device).
    pub fn link(&self, other: &Netns) -> (std::net::Ipv4Addr, std::net::Ipv4Addr, String) {
        let n = NEXT.fetch_add(1, Ordering::Relaxed) % 250 + 1;
        let (a, b) = (format!("sqa{n}"), format!("sqb{n}"));
        run_ok(Command::new("ip").args([
            "link",
            "add",
            &a,
            "netns",
            &self.name,
            "type",
            "veth",
            "peer",
            "name",
            &b,
            "netns",
            &other.name,
        ]));
        let here = std::net::Ipv4Addr::new(10, 77, n as u8, 1);
        let there = std::net::Ipv4Addr::new(10, 77, n as u8, 2);
        for (ns, dev, ip) in [(self, &a, here), (other, &b, there)] {
            run_ok(Command::new("ip").args([
                "-n",
                &ns.name,
                "addr",
                "add",
                &format!("{ip}/24"),
                "dev",
                dev,
            ]));
            run_ok(Command::new("ip").args(["-n", &ns.name, "link", "set", dev, "up"]));
        }
        (here, there, b)
    }

    /// Links this (server) namespace to `client` and routes the way back to the
    /// client's address through a neighbour that does not exist: every packet the
    /// server sends it (SYN-ACKs) is lost until the route is deleted. Returns the
    /// server address, the client address, the client's device and the route.
    pub fn link_with_lost_replies(
        &self,
        client: &Netns,
    ) -> (std::net::Ipv4Addr, std::net::Ipv4Addr, String, String) {
        let (server_ip, client_ip, client_dev) = self.link(client);
        let [a, b, c, _] = server_ip.octets();
        let dead_end = std::net::Ipv4Addr::new(a, b, c, 99).to_string();
        let route = format!("{client_ip}/32");
        self.ip(&["route", "add", &route, "via", &dead_end]);
        (server_ip, client_ip, client_dev, route)
    }

    /// Runs `ip ARGS` inside this namespace (`ip -n NAME ARGS`).
    pub fn ip(&self, args: &[&str]) {
        run_ok(Command::new("ip").args(["-n", &self.name]).args(args));
    }

    /// The namespace's inode, as sockq labels it.
    pub fn inode(&self) -> u64 {
        std::fs::metadata(format!("/run/netns/{}", self.name))
            .unwrap_or_else(|e| panic!("stat /run/netns/{}: {e}", self.name))
            .ino()
    }

    /// A command that runs inside this namespace.
    pub fn command(&self, program: impl AsRef<std::ffi::OsStr>) -> Command {
        let mut cmd = Command::new("ip");
        cmd.args(["netns", "exec", &self.name]).arg(program);
        cmd
    }

    /// Runs a command inside the namespace and returns its stdout.
    pub fn output(&self, program: &str, args: &[&str]) -> String {
        let out = self
            .command(program)
            .args(args)
            .output()
            .unwrap_or_else(|e| panic!("running {program} in {}: {e}", self.name));
        assert!(
            out.status.success(),
            "{program} {args:?} in {} failed: {}",
            self.name,
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    /// The namespace's `/proc/net/netstat` and `/proc/net/snmp` counters as
    /// "TcpExt.ListenDrops" -> value.
    pub fn counters(&self) -> HashMap<String, u64> {
        let mut all = parse_proc_net_pairs(&self.output("cat", &["/proc/net/netstat"]));
        all.extend(parse_proc_net_pairs(
            &self.output("cat", &["/proc/net/snmp"]),
        ));
        all
    }

    pub fn counter(&self, name: &str) -> u64 {
        *self
            .counters()
            .get(name)
            .unwrap_or_else(|| panic!("no counter {name} in {}", self.name))
    }

    /// Starts a scenario program inside the namespace and waits for its first line.
    pub fn scenario(&self, args: &[&str]) -> Scenario {
        self.program(&scenario_bin(), args)
    }

    /// Starts a program of the test crate inside the namespace and waits for its
    /// first line (`ready ...` or `done ...`).
    pub fn program(&self, bin: &std::path::Path, args: &[&str]) -> Scenario {
        let mut child = self
            .command(bin)
            .args(args)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .spawn()
            .unwrap_or_else(|e| panic!("starting scenario {args:?}: {e}"));
        let mut stdout = BufReader::new(child.stdout.take().expect("scenario stdout"));
        let mut line = String::new();
        stdout
            .read_line(&mut line)
            .unwrap_or_else(|e| panic!("reading scenario {args:?}: {e}"));
        assert!(
            line.starts_with("ready") || line.starts_with("done"),
            "scenario {args:?} said {line:?}"
        );
        let stdin = child.stdin.take();
        Scenario {
            watch: watched::scenario_started(self.inode()),
            child,
            stdin,
            stdout,
            first_line: line.trim().to_owned(),
        }
    }
}

impl Drop for Netns {
    fn drop(&mut self) {
        let checked = std::fs::metadata(format!("/run/netns/{}", self.name))
            .map_or(Ok(()), |meta| watched::netns_ending(meta.ino()));
        let _ = Command::new("ip")
            .args(["netns", "del", &self.name])
            .status();
        if let Err(why) = checked {
            panic!("{why}");
        }
    }
}

/// A running scenario program; closing its stdin ends it.
pub struct Scenario {
    /// Its place in [`watched`] (the invariant is checked before it ends).
    watch: u64,
    child: Child,
    stdin: Option<ChildStdin>,
    stdout: BufReader<ChildStdout>,
    pub first_line: String,
}

impl Scenario {
    /// The scenario's pid (`ip netns exec` execs the program in place).
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Writes `line` to the program's stdin and returns the next line it prints.
    pub fn tell(&mut self, line: &str) -> String {
        let stdin = self.stdin.as_mut().expect("scenario stdin still open");
        writeln!(stdin, "{line}")
            .and_then(|()| stdin.flush())
            .expect("writing to the scenario");
        let mut answer = String::new();
        self.stdout
            .read_line(&mut answer)
            .expect("reading the scenario");
        answer.trim().to_owned()
    }

    /// Closes stdin and waits for the program to exit.
    pub fn finish(mut self) {
        let checked = watched::scenario_ending(self.watch);
        drop(self.stdin.take());
        let status = self.child.wait().expect("waiting for scenario");
        if let Err(why) = checked {
            panic!("{why}");
        }
        assert!(status.success(), "scenario exited with {status}");
    }
}

impl Drop for Scenario {
    fn drop(&mut self) {
        let checked = watched::scenario_ending(self.watch);
        drop(self.stdin.take());
        if !matches!(self.child.try_wait(), Ok(Some(_))) {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
        if let Err(why) = checked {
            panic!("{why}");
        }
    }
}

/// Parses `/proc/net/netstat` / `/proc/net/snmp`: pairs of header and value lines.
pub fn parse_proc_net_pairs(text: &str) -> HashMap<String, u64> {
    let mut out = HashMap::new();
    let lines: Vec<&str> = text.lines().collect();
    for pair in lines.chunks(2) {
        let [names, values] = pair else { continue };
        let (Some((prefix, names)), Some((_, values))) =
            (names.split_once(':'), values.split_once(':'))
        else {
            continue;
        };
        for (n, v) in names.split_whitespace().zip(values.split_whitespace()) {
            if let Ok(v) = v.parse::<i64>() {
                out.insert(format!("{prefix}.{n}"), v.max(0) as u64);
            }
        }
    }
    out
}

/// A free TCP port on 127.0.0.1 in this (the host's) namespace.
pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("free port")
}

/// A running `sockq run`, stopped with SIGTERM on drop.
pub struct Daemon {
    /// `None` when the tests use a daemon started elsewhere (`cargo xtask soak`).
    child: Option<Child>,
    pid: u32,
    pub addr: SocketAddr,
}

impl Daemon {
    pub fn start(interval: &str) -> Self {
        Self::start_with(&["--interval", interval])
    }

    /// Starts `sockq run` with these arguments (besides `--metrics-addr`). With
    /// `SOCKQ_DAEMON_ADDR` and `SOCKQ_DAEMON_PID` set (by `cargo xtask soak`), uses
    /// that long-running daemon instead; `args` are then ignored.
    pub fn start_with(args: &[&str]) -> Self {
        require_root();
        if let (Some(addr), Some(pid)) = (
            std::env::var("SOCKQ_DAEMON_ADDR")
                .ok()
                .and_then(|a| a.parse().ok()),
            std::env::var("SOCKQ_DAEMON_PID")
                .ok()
                .and_then(|p| p.parse().ok()),
        ) {
            watched::daemon_started(addr);
            return Self {
                child: None,
                pid,
                addr,
            };
        }
        let addr: SocketAddr = format!("127.0.0.1:{}", free_port()).parse().expect("addr");
        let child = Command::new(sockq_bin())
            .args(["run", "--metrics-addr", &addr.to_string()])
            .args(args)
            .env("RUST_LOG", "info")
            .stdout(Stdio::null())
            .stderr(Stdio::inherit())
            .spawn()
            .unwrap_or_else(|e| panic!("starting {}: {e}", sockq_bin().display()));
        let pid = child.id();
        let mut daemon = Self {
            child: Some(child),
            pid,
            addr,
        };
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            if let Some(Ok(Some(status))) = daemon.child.as_mut().map(Child::try_wait) {
                panic!("sockq run exited early with {status}");
            }
            if let Some(body) = try_get(addr, "/metrics")
                && body.contains("sockq_probe_attached")
                && body.contains("sockq_listen_accept_queue_limit")
            {
                break;
            }
            assert!(
                Instant::now() < deadline,
                "sockq did not serve /metrics within 20 s"
            );
            std::thread::sleep(Duration::from_millis(100));
        }
        watched::daemon_started(addr);
        daemon
    }

    /// The daemon's pid.
    pub fn pid(&self) -> u32 {
        self.pid
    }

    pub fn metrics(&self) -> Metrics {
        let body = try_get(self.addr, "/metrics").expect("GET /metrics");
        Metrics::parse(&body)
    }

    /// The daemon's recent notable events (`GET /events/recent`), one JSON object each.
    pub fn recent_events(&self) -> Vec<serde_json::Value> {
        let body = try_get(self.addr, "/events/recent").expect("GET /events/recent");
        body.lines()
            .filter(|l| !l.trim().is_empty())
            .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("event {l:?}: {e}")))
            .collect()
    }

    pub fn metrics_text(&self) -> String {
        try_get(self.addr, "/metrics").expect("GET /metrics")
    }

    /// Polls until `check` accepts the metrics, or panics with the last failure.
    pub fn wait_for<T>(
        &self,
        timeout: Duration,
        mut check: impl FnMut(&Metrics) -> Result<T, String>,
    ) -> T {
        let deadline = Instant::now() + timeout;
        loop {
            let m = self.metrics();
            match check(&m) {
                Ok(v) => return v,
                Err(why) if Instant::now() >= deadline => {
                    panic!("after {timeout:?}: {why}")
                }
                Err(_) => std::thread::sleep(Duration::from_millis(50)),
            }
        }
    }
}

impl Drop for Daemon {
    fn drop(&mut self) {
        let checked = watched::daemon_ending(self.addr);
        if let Some(child) = &mut self.child {
            stop(child);
        } // else not ours to stop
        if let Err(why) = checked {
            panic!("{why}");
        }
    }
}

/// The invariant every test checks, whatever it is about (#14): for every listener
/// in the namespaces `netns`, as the daemon at `addr` exports them, accept waits
/// (`sockq_accept_wait_seconds_count`) equal accepts (`sockq_listen_accepts_total`):
/// every accepted connection was stamped and its wait measured, on every accept path
/// (resets while queued included). [`watched`] runs it whenever a scenario, a test
/// namespace or a daemon goes away, for the daemons that were running before the
/// scenario or namespace began (so that none of its connections predates the probes).
///
/// A scrape may fall between an accept's two counters, and the daemon exports what its
/// last poll read: a difference must persist for 5 s to fail. Daemons that do not
/// answer plain unauthenticated scrapes (TLS, auth, stopped) are not checked. Does
/// nothing while the thread panics (the test already failed).
pub fn check_accept_waits(addr: SocketAddr, netns: &[u64]) -> Result<(), String> {
    if std::thread::panicking() || netns.is_empty() {
        return Ok(());
    }
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        let Some(body) = try_get(addr, "/metrics").filter(|b| b.contains("sockq_probe_attached"))
        else {
            return Ok(());
        };
        let differences = accept_wait_differences(&Metrics::parse(&body), netns);
        if differences.is_empty() {
            return Ok(());
        }
        if Instant::now() >= deadline {
            return Err(format!(
                "accept waits differ from accepts (sockq at {addr}): {}",
                differences.join("; ")
            ));
        }
        std::thread::sleep(Duration::from_millis(200));
    }
}

/// Listeners in `netns` whose accept-wait count is not their accept count.
fn accept_wait_differences(m: &Metrics, netns: &[u64]) -> Vec<String> {
    let wanted: Vec<String> = netns.iter().map(u64::to_string).collect();
    m.samples
        .iter()
        .filter(|s| s.name == "sockq_listen_accepts_total")
        .filter(|s| s.labels.get("netns").is_some_and(|n| wanted.contains(n)))
        .filter_map(|accepts| {
            let labels: Vec<(&str, &str)> = accepts
                .labels
                .iter()
                .map(|(k, v)| (k.as_str(), v.as_str()))
                .collect();
            // A listener that has measured no wait exports no histogram.
            let waits = match m
                .find("sockq_accept_wait_seconds_count", &labels)
                .as_slice()
            {
                [] => 0.0,
                [s] => s.value,
                more => return Some(format!("{labels:?}: {} accept-wait counts", more.len())),
            };
            (waits != accepts.value)
                .then(|| format!("{labels:?}: {} accepts, {waits} waits", accepts.value))
        })
        .collect()
}

/// Who watches what in this process, for [`check_accept_waits`]: the daemons running,
/// the test namespaces and scenarios alive, each with the order it began in.
mod watched {
    use std::{
        net::SocketAddr,
        sync::{Mutex, MutexGuard, PoisonError},
    };

    use super::check_accept_waits;

    #[derive(Default)]
    struct Watched {
        next: u64,
        daemons: Vec<(u64, SocketAddr)>,
        /// (order, netns inode, is a scenario): the scenarios' netns and the test
        /// namespaces themselves.
        watched: Vec<(u64, u64, bool)>,
    }

    static WATCHED: Mutex<Watched> = Mutex::new(Watched {
        next: 0,
        daemons: Vec::new(),
        watched: Vec::new(),
    });

    fn lock() -> MutexGuard<'static, Watched> {
        WATCHED.lock().unwrap_or_else(PoisonError::into_inner)
    }

    fn begin(netns: u64, scenario: bool) -> u64 {
        let mut w = lock();
        w.next += 1;
        let order = w.next;
        w.watched.push((order, netns, scenario));
        order
    }

    /// Checks `netns` (begun at `order`) with every daemon that began before it.
    fn end(order: u64, netns: u64) -> Result<(), String> {
        let daemons: Vec<SocketAddr> = {
            let mut w = lock();
            w.watched.retain(|&(o, _, _)| o != order);
            w.daemons
                .iter()
                .filter(|&&(o, _)| o < order)
                .map(|&(_, a)| a)
                .collect()
        };
        daemons
            .into_iter()
            .try_for_each(|addr| check_accept_waits(addr, &[netns]))
    }

    pub(super) fn netns_created(inode: u64) {
        begin(inode, false);
    }

    pub(super) fn netns_ending(inode: u64) -> Result<(), String> {
        let order = lock()
            .watched
            .iter()
            .find(|&&(_, n, scenario)| n == inode && !scenario)
            .map(|&(o, _, _)| o);
        order.map_or(Ok(()), |order| end(order, inode))
    }

    pub(super) fn scenario_started(netns: u64) -> u64 {
        begin(netns, true)
    }

    /// Idempotent: `finish` and then `drop` both call it.
    pub(super) fn scenario_ending(order: u64) -> Result<(), String> {
        let netns = lock()
            .watched
            .iter()
            .find(|&&(o, _, _)| o == order)
            .map(|&(_, n, _)| n);
        netns.map_or(Ok(()), |netns| end(order, netns))
    }

    pub(super) fn daemon_started(addr: SocketAddr) {
        let mut w = lock();
        w.next += 1;
        let order = w.next;
        w.daemons.push((order, addr));
    }

    /// Checks what began after this daemon, then forgets it.
    pub(super) fn daemon_ending(addr: SocketAddr) -> Result<(), String> {
        let netns: Vec<u64> = {
            let mut w = lock();
            let Some(at) = w.daemons.iter().position(|&(_, a)| a == addr) else {
                return Ok(());
            };
            let (order, _) = w.daemons.remove(at);
            let mut netns: Vec<u64> = w
                .watched
                .iter()
                .filter(|&&(o, _, _)| o > order)
                .map(|&(_, n, _)| n)
                .collect();
            netns.sort_unstable();
            netns.dedup();
            netns
        };
        check_accept_waits(addr, &netns)
    }
}

/// Stops a daemon the test started: SIGTERM, up to 5 s to exit, then SIGKILL; reaped.
pub fn stop(child: &mut Child) {
    // SAFETY: kill(2) on our own child's pid.
    unsafe { libc::kill(child.id() as i32, libc::SIGTERM) };
    let deadline = Instant::now() + Duration::from_secs(5);
    while Instant::now() < deadline {
        if let Ok(Some(_)) = child.try_wait() {
            return;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    let _ = child.kill();
    let _ = child.wait();
}

/// A minimal HTTP/1.0 GET; `None` when nothing answers.
pub fn try_get(addr: SocketAddr, path: &str) -> Option<String> {
    let mut s = TcpStream::connect_timeout(&addr, Duration::from_secs(2)).ok()?;
    s.set_read_timeout(Some(Duration::from_secs(10))).ok()?;
    write!(s, "GET {path} HTTP/1.0\r\nHost: {addr}\r\n\r\n").ok()?;
    let mut response = String::new();
    s.read_to_string(&mut response).ok()?;
    let (head, body) = response.split_once("\r\n\r\n")?;
    head.starts_with("HTTP/1.").then(|| body.to_owned())
}

/// One sample of the exposition.
#[derive(Debug, Clone)]
pub struct Sample {
    pub name: String,
    pub labels: HashMap<String, String>,
    pub value: f64,
}

/// The `q` quantile of a Prometheus histogram from its cumulative `_bucket` samples,
/// interpolated linearly inside the bucket as PromQL's `histogram_quantile` does.
pub fn histogram_quantile(q: f64, buckets: &[&Sample]) -> Option<f64> {
    let mut points: Vec<(f64, f64)> = buckets
        .iter()
        .map(|s| {
            let le = s.labels.get("le").map(String::as_str).unwrap_or("+Inf");
            let le = if le == "+Inf" {
                f64::INFINITY
            } else {
                le.parse().ok()?
            };
            Some((le, s.value))
        })
        .collect::<Option<_>>()?;
    points.sort_by(|a, b| a.0.total_cmp(&b.0));
    let total = points.last()?.1;
    if total == 0.0 {
        return None;
    }
    let rank = q * total;
    let (mut prev_le, mut prev_count) = (0.0, 0.0);
    for (le, count) in points {
        if count >= rank {
            if le.is_infinite() {
                return Some(prev_le);
            }
            let inside = count - prev_count;
            let frac = if inside > 0.0 {
                (rank - prev_count) / inside
            } else {
                1.0
            };
            return Some(prev_le + (le - prev_le) * frac);
        }
        (prev_le, prev_count) = (le, count);
    }
    None
}

/// A parsed Prometheus text exposition (enough for our own output: no timestamps).
#[derive(Debug, Clone, Default)]
pub struct Metrics {
    pub samples: Vec<Sample>,
}

impl Metrics {
    pub fn parse(text: &str) -> Self {
        let mut samples = Vec::new();
        for line in text.lines() {
            if line.starts_with('#') || line.trim().is_empty() {
                continue;
            }
            let (series, value) = line.rsplit_once(' ').expect("sample line has a value");
            let value: f64 = value
                .parse()
                .unwrap_or_else(|_| panic!("value in {line:?}"));
            let (name, labels) = match series.split_once('{') {
                Some((name, rest)) => (name, parse_labels(rest.trim_end_matches('}'))),
                None => (series, HashMap::new()),
            };
            samples.push(Sample {
                name: name.to_owned(),
                labels,
                value,
            });
        }
        Self { samples }
    }

    /// Samples of `name` whose labels include every `(key, value)` in `matching`.
    pub fn find(&self, name: &str, matching: &[(&str, &str)]) -> Vec<&Sample> {
        self.samples
            .iter()
            .filter(|s| {
                s.name == name
                    && matching
                        .iter()
                        .all(|(k, v)| s.labels.get(*k).map(String::as_str) == Some(*v))
            })
            .collect()
    }

    /// The single sample matching, or an error saying how many matched. A quiet
    /// listener's series are absent and mean 0 (README: "The series each listener costs"): for
    /// those families, a listener whose limit series matches and that has none of
    /// them reads 0.
    pub fn one(&self, name: &str, matching: &[(&str, &str)]) -> Result<f64, String> {
        match self.find(name, matching).as_slice() {
            [s] => Ok(s.value),
            [] if self.is_quiet(name, matching) => Ok(0.0),
            other => Err(format!("{} samples of {name}{matching:?}", other.len())),
        }
    }

    /// Whether `name` is a family quiet listeners leave out and exactly one listener
    /// matching has its limit series but none of those families.
    fn is_quiet(&self, name: &str, matching: &[(&str, &str)]) -> bool {
        let Some((anchor, family)) = QUIET_FAMILIES
            .iter()
            .find(|(_, family)| family.contains(&name))
        else {
            return false;
        };
        let limits = self.find(anchor, matching);
        let [limit] = limits.as_slice() else {
            return false;
        };
        let identity: Vec<(&str, &str)> = limit
            .labels
            .iter()
            .map(|(k, v)| (k.as_str(), v.as_str()))
            .collect();
        family.iter().all(|f| self.find(f, &identity).is_empty())
    }
}

/// The families a quiet listener leaves out, by the limit series every listener has.
const QUIET_FAMILIES: [(&str, &[&str]); 2] = [
    (
        "sockq_listen_accept_queue_limit",
        &[
            "sockq_listen_accept_queue_length",
            "sockq_listen_syn_queue_length",
            "sockq_listen_drops_total",
            "sockq_listen_accept_queue_full",
            "sockq_listen_enqueues_total",
            "sockq_listen_accept_queue_full_enqueues_total",
            "sockq_listen_accept_queue_max_depth",
            "sockq_listen_accepts_total",
            "sockq_listen_synack_retransmits_total",
        ],
    ),
    (
        "sockq_unix_listen_queue_limit",
        &[
            "sockq_unix_listen_queue_length",
            "sockq_unix_listen_queue_full",
            "sockq_unix_listen_refused_connects_total",
            "sockq_unix_listen_connect_waits_total",
            "sockq_unix_listen_connect_wait_seconds_total",
            "sockq_unix_listen_enqueues_total",
            "sockq_unix_listen_queue_max_depth",
            "sockq_unix_listen_accepts_total",
        ],
    ),
];

/// Parses `a="x",b="y\"z"` with Prometheus escapes (`\\`, `\"`, `\n`).
fn parse_labels(s: &str) -> HashMap<String, String> {
    let mut out = HashMap::new();
    let mut chars = s.chars().peekable();
    loop {
        let name: String = chars.by_ref().take_while(|&c| c != '=').collect();
        if name.is_empty() {
            break;
        }
        assert_eq!(chars.next(), Some('"'), "label {name} in {s:?}");
        let mut value = String::new();
        while let Some(c) = chars.next() {
            match c {
                '\\' => match chars.next() {
                    Some('n') => value.push('\n'),
                    Some(other) => value.push(other),
                    None => break,
                },
                '"' => break,
                c => value.push(c),
            }
        }
        out.insert(name.trim_start_matches(',').to_owned(), value);
        if chars.peek() == Some(&',') {
            chars.next();
        }
    }
    out
}

pub fn run_ok(cmd: &mut Command) {
    let out = cmd
        .output()
        .unwrap_or_else(|e| panic!("running {cmd:?}: {e}"));
    assert!(
        out.status.success(),
        "{cmd:?} failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_netstat_pairs() {
        let text =
            "TcpExt: SyncookiesSent ListenDrops\nTcpExt: 0 15\nIpExt: InNoRoutes\nIpExt: 3\n";
        let m = parse_proc_net_pairs(text);
        assert_eq!(m.get("TcpExt.ListenDrops"), Some(&15));
        assert_eq!(m.get("IpExt.InNoRoutes"), Some(&3));
    }

    #[test]
    fn parses_exposition_with_escapes() {
        let m = Metrics::parse(
            "# HELP x y\nsockq_listener_info{netns=\"1\",comm=\"a\\\"b\\\\c\\nd\"} 1\nsockq_build_info 1\n",
        );
        assert_eq!(m.samples.len(), 2);
        assert_eq!(
            m.samples[0].labels.get("comm").map(String::as_str),
            Some("a\"b\\c\nd")
        );
        assert_eq!(
            m.samples[0].labels.get("netns").map(String::as_str),
            Some("1")
        );
    }

    #[test]
    fn a_quiet_listener_reads_zero_and_only_a_quiet_one() {
        let m = Metrics::parse(concat!(
            "sockq_listen_accept_queue_limit{netns=\"1\",listen_addr=\"a:1\",socket=\"10\"} 128\n",
            "sockq_listen_accept_queue_limit{netns=\"1\",listen_addr=\"a:2\",socket=\"11\"} 128\n",
            "sockq_listen_enqueues_total{netns=\"1\",listen_addr=\"a:2\",socket=\"11\"} 4\n",
        ));
        let quiet = [("listen_addr", "a:1")];
        assert_eq!(m.one("sockq_listen_drops_total", &quiet), Ok(0.0));
        assert!(
            m.one("sockq_listener_info", &quiet).is_err(),
            "not a quiet family"
        );
        let busy = [("listen_addr", "a:2")];
        assert!(
            m.one("sockq_listen_drops_total", &busy).is_err(),
            "a listener with some series must have them all"
        );
        assert!(
            m.one("sockq_listen_drops_total", &[("listen_addr", "a:3")])
                .is_err()
        );
    }

    #[test]
    fn accept_waits_must_equal_accepts_in_the_namespaces_asked_about() {
        let m = Metrics::parse(concat!(
            "sockq_listen_accepts_total{netns=\"7\",listen_addr=\"a:1\",socket=\"10\"} 3\n",
            "sockq_accept_wait_seconds_count{netns=\"7\",listen_addr=\"a:1\",socket=\"10\"} 3\n",
            "sockq_listen_accepts_total{netns=\"7\",listen_addr=\"a:2\",socket=\"11\"} 3\n",
            "sockq_accept_wait_seconds_count{netns=\"7\",listen_addr=\"a:2\",socket=\"11\"} 2\n",
            "sockq_listen_accepts_total{netns=\"7\",listen_addr=\"a:3\",socket=\"12\"} 0\n",
            "sockq_listen_accepts_total{netns=\"7\",listen_addr=\"a:4\",socket=\"13\"} 2\n",
            "sockq_listen_accepts_total{netns=\"8\",listen_addr=\"a:5\",socket=\"14\"} 5\n",
        ));
        let differences = accept_wait_differences(&m, &[7]);
        assert_eq!(differences.len(), 2, "{differences:?}");
        assert!(differences[0].contains("a:2") && differences[0].contains("3 accepts, 2 waits"));
        assert!(differences[1].contains("a:4") && differences[1].contains("2 accepts, 0 waits"));
        assert!(accept_wait_differences(&m, &[9]).is_empty());
    }
}
