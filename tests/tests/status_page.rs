//! The status page at `/` in Debian's headless Chromium, against the real daemon and
//! the real kernel, with `ss` in the scenario's namespace as the oracle:
//! - a one-shot load (`--dump-dom` after some virtual seconds of polling) shows each
//!   listener's accept queue depth and limit as the kernel reports them, the full
//!   queue's event, and a process name made of markup as text;
//! - a live page (driven over `--remote-debugging-pipe`) follows the kernel when
//!   more connections queue, without reloading;
//! - a 1200x800 screenshot renders (checked pixel by pixel, and kept for a look).
//!
//! The daemon listens on 127.0.0.1 in the host's namespace, where Chromium runs too;
//! the daemon sees the test namespace's listeners from there.

use std::{
    fs::File,
    io::{BufRead as _, BufReader, Write as _},
    os::{fd::FromRawFd as _, unix::process::CommandExt as _},
    path::{Path, PathBuf},
    process::{Child, Command, Stdio},
    sync::{
        atomic::{AtomicU32, Ordering},
        mpsc,
    },
    time::{Duration, Instant},
};

use serde_json::{Value, json};
use sockq_tests::{Daemon, Netns, test_bin};

/// Backlog 2, eight clients: full (3/2 in `ss`), dropping the rest's handshakes.
const FULL: &str = "127.0.0.1:7081";
/// Backlog 8, three clients queued (3/8), two more during the live check (5/8).
const PARTIAL: &str = "127.0.0.1:7082";
/// A listener whose owner renamed itself to markup.
const NAMED: &str = "127.0.0.1:7083";
const MARKUP_COMM: &str = "<b>sq</b>";
/// A Unix listener (abstract name) with backlog 2 that never accepts, and six
/// non-blocking clients: 3/2 in `ss -xl`, the rest refused.
const UNIX_NAME: &str = "@sockq-status-unix";

/// Debian's `chromium` on PATH; the test fails (never skips) without it.
fn chromium() -> PathBuf {
    std::env::var_os("PATH")
        .iter()
        .flat_map(std::env::split_paths)
        .map(|dir| dir.join("chromium"))
        .find(|p| p.is_file())
        .unwrap_or_else(|| {
            panic!(
                "chromium not found on PATH: this test needs Debian's chromium \
                 (`apt-get install chromium`; `cargo xtask setup` installs it)"
            )
        })
}

/// A fresh, empty Chromium profile directory, removed on drop.
struct Profile(PathBuf);

impl Profile {
    fn new() -> Self {
        static NEXT: AtomicU32 = AtomicU32::new(0);
        let dir = std::env::temp_dir().join(format!(
            "sockq-chromium-{}-{}",
            std::process::id(),
            NEXT.fetch_add(1, Ordering::Relaxed)
        ));
        std::fs::create_dir_all(&dir).expect("chromium profile directory");
        Self(dir)
    }
}

impl Drop for Profile {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// Headless Chromium as root (hence no sandbox), in its own profile.
fn chromium_command(profile: &Profile) -> Command {
    let mut cmd = Command::new(chromium());
    cmd.args([
        "--headless",
        "--no-sandbox",
        "--disable-gpu",
        "--disable-dev-shm-usage",
        "--disable-extensions",
        "--no-first-run",
        "--no-default-browser-check",
        "--hide-scrollbars",
        "--force-device-scale-factor=1",
    ])
    .arg(format!("--user-data-dir={}", profile.0.display()))
    .stdin(Stdio::null());
    cmd
}

/// Runs a one-shot Chromium (`--dump-dom`, `--screenshot`), killed after 120 s.
fn chromium_once(args: &[String]) -> String {
    let profile = Profile::new();
    let chromium = chromium_command(&profile);
    let out = Command::new("timeout")
        .args(["--kill-after=5", "120"])
        .arg(chromium.get_program())
        .args(chromium.get_args())
        .args(args)
        .stdin(Stdio::null())
        .output()
        .expect("running timeout(1) chromium");
    assert!(
        out.status.success(),
        "chromium {args:?} failed with {}: {}",
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// The DOM after `budget_ms` virtual milliseconds of the page's life: its timers
/// run without waiting, its fetches are real.
fn dump_dom(url: &str, budget_ms: u32) -> String {
    chromium_once(&[
        format!("--virtual-time-budget={budget_ms}"),
        "--dump-dom".to_owned(),
        url.to_owned(),
    ])
}

/// `ss -ltnH` in the namespace: (Recv-Q, Send-Q) of the listener on `addr`, which is
/// (queued connections, limit) for a listening socket.
fn ss_queue(ns: &Netns, addr: &str) -> (u32, u32) {
    let port = addr.rsplit_once(':').map(|(_, p)| p).expect("port");
    let out = ns.output("ss", &["-ltnH", "sport", &format!("= :{port}")]);
    let lines: Vec<&str> = out.lines().collect();
    let [line] = lines.as_slice() else {
        panic!("ss shows {} listeners on {addr}:\n{out}", lines.len());
    };
    recv_send_q(line, 1)
}

/// The two numbers after the first `skip` fields of an `ss` line: Recv-Q and Send-Q.
fn recv_send_q(line: &str, skip: usize) -> (u32, u32) {
    let mut fields = line.split_whitespace().skip(skip);
    let mut next = || -> u32 {
        fields
            .next()
            .and_then(|v| v.parse().ok())
            .unwrap_or_else(|| panic!("ss line {line:?}"))
    };
    (next(), next())
}

/// Recv-Q and Send-Q of the Unix listener `name` as `ss -xl` shows them in `ns`.
fn ss_unix_queue(ns: &Netns, name: &str) -> (u32, u32) {
    let out = ns.output("ss", &["-xlnH"]);
    let line = out
        .lines()
        .find(|l| l.split_whitespace().nth(4) == Some(name))
        .unwrap_or_else(|| panic!("ss -xl shows no {name}:\n{out}"));
    recv_send_q(line, 2)
}

fn between<'a>(text: &'a str, start: &str, end: &str) -> Option<&'a str> {
    let from = text.find(start)? + start.len();
    let len = text[from..].find(end)?;
    Some(&text[from..from + len])
}

/// One listener's row as the dumped DOM shows it.
#[derive(Debug)]
struct Row {
    depth: u32,
    limit: u32,
    full: bool,
    owner: String,
    depth_history: Vec<u32>,
}

fn row(dom: &str, netns: u64, addr: &str) -> Option<Row> {
    let start = dom.find(&format!("<tr data-netns=\"{netns}\" data-addr=\"{addr}\""))?;
    let html = &dom[start..];
    let html = &html[..html.find("</tr>")?];
    let number = |class: &str| -> Option<u32> {
        between(html, &format!("<span class=\"{class}\">"), "</span>")?
            .parse()
            .ok()
    };
    let owner_cell = between(html, "<td class=\"owner\"", "</td>")?;
    let depth_chart = &html[html.find("class=\"spark depth\"")?..];
    Some(Row {
        depth: number("depth")?,
        limit: number("limit")?,
        full: html[..html.find('>')?].contains("class=\"full\""),
        owner: owner_cell[owner_cell.find('>')? + 1..].to_owned(),
        depth_history: between(depth_chart, "data-values=\"", "\"")?
            .split(',')
            .map(|v| v.parse().ok())
            .collect::<Option<_>>()?,
    })
}

fn expect_row(dom: &str, netns: u64, addr: &str) -> Row {
    row(dom, netns, addr).unwrap_or_else(|| panic!("no row for {addr} in netns {netns}:\n{dom}"))
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// A headless Chromium driven over the DevTools protocol on fds 3 and 4
/// (`--remote-debugging-pipe`: JSON messages, each ended by a NUL byte).
struct Browser {
    child: Child,
    to_browser: File,
    from_browser: mpsc::Receiver<Value>,
    next_id: u64,
    _profile: Profile,
}

fn cloexec_pipe() -> (i32, i32) {
    let mut fds = [0; 2];
    // SAFETY: pipe2 writes two descriptors into a 2-element array.
    let rc = unsafe { libc::pipe2(fds.as_mut_ptr(), libc::O_CLOEXEC) };
    assert_eq!(rc, 0, "pipe2: {}", std::io::Error::last_os_error());
    (fds[0], fds[1])
}

impl Browser {
    fn launch() -> Self {
        let profile = Profile::new();
        let (browser_reads, we_write) = cloexec_pipe();
        let (we_read, browser_writes) = cloexec_pipe();
        let mut cmd = chromium_command(&profile);
        cmd.args(["--remote-debugging-pipe", "about:blank"])
            .stdout(Stdio::null())
            .stderr(Stdio::null());
        // SAFETY: only async-signal-safe calls (fcntl, dup2) between fork and exec.
        unsafe {
            cmd.pre_exec(move || {
                // Copies at 10 and up first, so that moving them to 3 and 4 cannot
                // overwrite the other; dup2 clears close-on-exec on 3 and 4.
                let reads = libc::fcntl(browser_reads, libc::F_DUPFD, 10);
                let writes = libc::fcntl(browser_writes, libc::F_DUPFD, 10);
                if reads < 0 || writes < 0 || libc::dup2(reads, 3) < 0 || libc::dup2(writes, 4) < 0
                {
                    return Err(std::io::Error::last_os_error());
                }
                Ok(())
            });
        }
        let child = cmd.spawn().expect("starting chromium");
        // SAFETY: the descriptors are ours; each is wrapped (and closed) once.
        let (to_browser, from_browser_file) = unsafe {
            libc::close(browser_reads);
            libc::close(browser_writes);
            (File::from_raw_fd(we_write), File::from_raw_fd(we_read))
        };
        let (tx, from_browser) = mpsc::channel();
        std::thread::spawn(move || {
            let mut reader = BufReader::new(from_browser_file);
            let mut message = Vec::new();
            while reader.read_until(0, &mut message).is_ok_and(|n| n > 0) {
                message.pop_if(|b| *b == 0);
                if let Ok(value) = serde_json::from_slice(&message)
                    && tx.send(value).is_err()
                {
                    break;
                }
                message.clear();
            }
        });
        Self {
            child,
            to_browser,
            from_browser,
            next_id: 0,
            _profile: profile,
        }
    }

    /// Sends one command (to a page's session, if given) and returns its result.
    fn call(&mut self, method: &str, params: Value, session: Option<&str>) -> Value {
        self.next_id += 1;
        let id = self.next_id;
        let mut message = json!({ "id": id, "method": method, "params": params });
        if let Some(session) = session {
            message["sessionId"] = json!(session);
        }
        let mut bytes = message.to_string().into_bytes();
        bytes.push(0);
        self.to_browser
            .write_all(&bytes)
            .unwrap_or_else(|e| panic!("sending {method} to chromium: {e}"));
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            let reply = self
                .from_browser
                .recv_timeout(left)
                .unwrap_or_else(|e| panic!("no answer from chromium to {method}: {e}"));
            if reply["id"] == id {
                assert!(reply.get("error").is_none(), "{method}: {reply}");
                return reply["result"].clone();
            }
        }
    }

    /// Opens `url` in a new page; returns the page's session.
    fn open(&mut self, url: &str) -> String {
        let target = self.call("Target.createTarget", json!({ "url": url }), None);
        let attached = self.call(
            "Target.attachToTarget",
            json!({ "targetId": target["targetId"], "flatten": true }),
            None,
        );
        attached["sessionId"]
            .as_str()
            .unwrap_or_else(|| panic!("no session in {attached}"))
            .to_owned()
    }

    /// The value of a JavaScript expression in the page; `Null` if it threw.
    fn eval(&mut self, session: &str, expression: &str) -> Value {
        let result = self.call(
            "Runtime.evaluate",
            json!({ "expression": expression, "returnByValue": true }),
            Some(session),
        );
        if result.get("exceptionDetails").is_some() {
            return Value::Null;
        }
        result["result"]["value"].clone()
    }
}

impl Drop for Browser {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// What the live page shows for one listener, and since when the document lives.
fn live_row_expression(netns: u64, addr: &str) -> String {
    format!(
        r#"(() => {{
            const tr = document.querySelector('tr[data-netns="{netns}"][data-addr="{addr}"]');
            if (!tr) return null;
            return {{
                depth: Number(tr.querySelector(".depth").textContent),
                limit: Number(tr.querySelector(".limit").textContent),
                history: tr.querySelector("svg.depth").getAttribute("data-values"),
                polls: Number(document.getElementById("polls").textContent),
                origin: performance.timeOrigin,
            }};
        }})()"#
    )
}

/// Polls the live page until `check` accepts what it shows for the listener.
fn wait_live(
    browser: &mut Browser,
    session: &str,
    expression: &str,
    what: &str,
    check: impl Fn(&Value) -> bool,
) -> Value {
    let deadline = Instant::now() + Duration::from_secs(15);
    loop {
        let shown = browser.eval(session, expression);
        if check(&shown) {
            return shown;
        }
        assert!(
            Instant::now() < deadline,
            "the page never showed {what}: {shown}"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
}

fn check_screenshot(path: &Path) {
    let file = File::open(path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    let mut reader = png::Decoder::new(BufReader::new(file))
        .read_info()
        .expect("a PNG");
    let mut pixels = vec![0; reader.output_buffer_size().expect("buffer size")];
    let frame = reader.next_frame(&mut pixels).expect("PNG pixels");
    assert_eq!((frame.width, frame.height), (1200, 800), "screenshot size");
    assert_eq!(frame.bit_depth, png::BitDepth::Eight, "{frame:?}");
    let channels = frame.color_type.samples();
    assert!(channels >= 3, "{frame:?}");
    let rgb: Vec<[u8; 3]> = pixels[..frame.buffer_size()]
        .chunks_exact(channels)
        .map(|p| [p[0], p[1], p[2]])
        .collect();
    let colours: std::collections::HashSet<[u8; 3]> = rgb.iter().copied().collect();
    assert!(
        colours.len() > 16,
        "the screenshot has {} colours: not a rendered page",
        colours.len()
    );
    // The full queue's bar, address and drops chart are drawn in the page's red.
    let red = rgb.iter().filter(|p| **p == [0xd3, 0x2f, 0x2f]).count();
    assert!(red > 400, "{red} pixels of the full-queue red");
}

#[test]
fn status_page_shows_the_kernels_queues_and_follows_them() {
    chromium();
    let ns = Netns::new("status");
    let netns = ns.inode();
    let daemon = Daemon::start("0.2");
    let url = format!("http://{}/", daemon.addr);

    let full = ns.scenario(&["backlog", FULL, "2", "8"]);
    let partial = ns.scenario(&["backlog", PARTIAL, "8", "3"]);
    let named = ns.scenario(&["named-listen", &hex(MARKUP_COMM.as_bytes()), NAMED]);
    let unixsrv = test_bin("sockq-unixsrv");
    let unix = ns.program(&unixsrv, &["listen", UNIX_NAME, "2", "stream"]);
    let unix_clients = ns.program(&unixsrv, &["connect", UNIX_NAME, "6", "stream"]);
    let refused: u32 = unix_clients
        .first_line
        .split_whitespace()
        .find_map(|w| w.strip_prefix("refused=")?.parse().ok())
        .unwrap_or_else(|| panic!("clients said {:?}", unix_clients.first_line));
    assert_eq!(ss_queue(&ns, PARTIAL), (3, 8), "the scenario's queue");
    assert_eq!(ss_queue(&ns, FULL), (3, 2), "the scenario's full queue");

    // Only to know the page can show them: the daemon has polled the namespace
    // since the scenarios started and reported the overflow.
    let netns_label = netns.to_string();
    daemon.wait_for(Duration::from_secs(10), |m| {
        let labels = [("netns", netns_label.as_str()), ("listen_addr", PARTIAL)];
        let depth = m.one("sockq_listen_accept_queue_length", &labels)?;
        let owner = m.find("sockq_listener_info", &[("comm", MARKUP_COMM)]);
        if depth != 3.0 || owner.is_empty() {
            return Err(format!("depth {depth}, {} named owners", owner.len()));
        }
        let unix = [("netns", netns_label.as_str()), ("path", UNIX_NAME)];
        let seen = m.one("sockq_unix_listen_refused_connects_total", &unix)?;
        if seen != f64::from(refused) {
            return Err(format!(
                "{seen} Unix connects refused, the clients saw {refused}"
            ));
        }
        Ok(())
    });
    let deadline = Instant::now() + Duration::from_secs(10);
    while !daemon
        .recent_events()
        .iter()
        .any(|e| e["type"] == "accept_queue_full" && e["listen_addr"] == FULL)
    {
        assert!(
            Instant::now() < deadline,
            "no accept_queue_full event for {FULL}"
        );
        std::thread::sleep(Duration::from_millis(100));
    }

    // (a) One load, five virtual seconds of polling.
    let dom = dump_dom(&url, 5000);
    for addr in [PARTIAL, FULL] {
        let (queued, limit) = ss_queue(&ns, addr);
        let shown = expect_row(&dom, netns, addr);
        eprintln!("{addr}: ss {queued}/{limit}, page {shown:?}");
        assert_eq!((shown.depth, shown.limit), (queued, limit), "{addr}");
        assert_eq!(shown.full, queued > limit, "{addr} marked full: {shown:?}");
    }
    let polls: u32 = between(&dom, "<span id=\"polls\" class=\"num\">", "</span>")
        .and_then(|p| p.parse().ok())
        .unwrap_or_else(|| panic!("no poll count in\n{dom}"));
    assert!(polls >= 3, "{polls} polls in 5 virtual seconds");
    let partial_row = expect_row(&dom, netns, PARTIAL);
    assert_eq!(
        partial_row.depth_history,
        vec![3; polls as usize],
        "one depth sample per poll"
    );
    assert!(
        dom.contains("<div id=\"error\" role=\"alert\" hidden=\"\">"),
        "error banner shown:\n{dom}"
    );
    assert!(
        dom.contains(&format!(
            "<li class=\"event\" data-type=\"accept_queue_full\" data-addr=\"{FULL}\""
        )),
        "no event for {FULL}:\n{dom}"
    );
    // The Unix listener: its queue as `ss -xl` shows it, the refused connects as the
    // clients saw them (EAGAIN), marked full.
    let unix_row = dom
        .find(&format!(
            "<tr data-netns=\"{netns}\" data-addr=\"{UNIX_NAME}\""
        ))
        .map(|at| &dom[at..])
        .and_then(|html| html.get(..html.find("</tr>")?))
        .unwrap_or_else(|| panic!("no row for {UNIX_NAME}:\n{dom}"));
    let (queued, limit) = ss_unix_queue(&ns, UNIX_NAME);
    let number = |start: &str| -> Option<u32> { between(unix_row, start, "<")?.parse().ok() };
    let shown = (
        number("<span class=\"depth\">"),
        number("<span class=\"limit\">"),
        number("<td class=\"refused num\">"),
    );
    eprintln!("{UNIX_NAME}: ss {queued}/{limit}, {refused} refused; page {shown:?}");
    assert_eq!(
        shown,
        (Some(queued), Some(limit), Some(refused)),
        "{unix_row}"
    );
    assert!(
        refused > 0 && queued > limit,
        "the scenario's Unix queue: {queued}/{limit}"
    );
    assert!(
        unix_row.contains("class=\"full\""),
        "not marked full: {unix_row}"
    );

    let owner = expect_row(&dom, netns, NAMED).owner;
    assert_eq!(owner, format!("&lt;b&gt;sq&lt;/b&gt;/{}", named.pid()));
    assert!(!dom.contains(MARKUP_COMM), "a process name became markup");

    // (b) A live page follows the kernel: two more clients queue on PARTIAL.
    let mut browser = Browser::launch();
    let session = browser.open(&url);
    let expression = live_row_expression(netns, PARTIAL);
    let before = wait_live(&mut browser, &session, &expression, "3/8", |v| {
        v["depth"] == 3 && v["limit"] == 8
    });
    let more = ns.scenario(&["connect", PARTIAL, "2"]);
    let deadline = Instant::now() + Duration::from_secs(5);
    while ss_queue(&ns, PARTIAL) != (5, 8) {
        assert!(
            Instant::now() < deadline,
            "ss: {:?}",
            ss_queue(&ns, PARTIAL)
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    let after = wait_live(&mut browser, &session, &expression, "5/8", |v| {
        v["depth"] == 5 && v["limit"] == 8
    });
    eprintln!("live page before: {before}\nafter: {after}");
    assert_eq!(before["origin"], after["origin"], "the page was reloaded");
    assert!(
        after["polls"].as_u64() > before["polls"].as_u64(),
        "{after}"
    );
    let history = after["history"].as_str().unwrap_or_default();
    assert!(
        history.starts_with('3') && history.ends_with('5'),
        "depth chart {history:?}"
    );
    drop(browser);

    // (c) A screenshot after ten virtual seconds, kept for a human to look at.
    let shot = std::env::temp_dir().join(format!("sockq-status-page-{}.png", std::process::id()));
    chromium_once(&[
        "--virtual-time-budget=10000".to_owned(),
        "--window-size=1200,800".to_owned(),
        format!("--screenshot={}", shot.display()),
        url.clone(),
    ]);
    check_screenshot(&shot);
    eprintln!("screenshot: {}", shot.display());

    more.finish();
    unix_clients.finish();
    unix.finish();
    named.finish();
    partial.finish();
    full.finish();
}
