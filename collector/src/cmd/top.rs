//! `sockq top`: a live terminal view of the listeners, refreshed every interval from
//! the running daemon (`/api/listeners`, and `?family=unix` for the Unix-domain ones,
//! shown as `unix:NAME` with the connects refused per second in the DROP/s column),
//! or from a local inventory without one. Fits 80 columns; keys: `s`
//! cycles the sort column, `/` filters by address or owner (Enter applies, Esc
//! clears), `q` or Ctrl-C quits.

use std::{
    collections::HashMap,
    fmt::Write as _,
    io::Write as _,
    net::SocketAddr,
    time::{Duration, Instant},
};

use crossterm::{
    cursor,
    event::{self, Event, KeyCode, KeyEvent, KeyModifiers},
    execute, queue,
    terminal::{self, ClearType},
};

use super::listeners::{from_daemon, nagle_from_daemon, unix_from_daemon};
use crate::{
    inventory,
    model::{
        api::{ListenerRow, rows_from_inventory},
        nagle::{NagleSeries, SeriesKey},
        unix::UnixListener,
    },
    text::escape,
};

/// Sort orders `s` cycles through.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SortBy {
    Fill,
    Drops,
    Wait,
    Address,
}

impl SortBy {
    fn next(self) -> Self {
        match self {
            Self::Fill => Self::Drops,
            Self::Drops => Self::Wait,
            Self::Wait => Self::Address,
            Self::Address => Self::Fill,
        }
    }

    fn name(self) -> &'static str {
        match self {
            Self::Fill => "queue fill",
            Self::Drops => "drops/s",
            Self::Wait => "accept wait p99",
            Self::Address => "address",
        }
    }
}

/// One row of the view, computed from two successive samples.
#[derive(Debug, Clone, PartialEq)]
pub struct Line {
    pub listen_addr: String,
    pub fill: f64,
    pub depth: u32,
    pub limit: u32,
    pub drops_per_s: f64,
    pub wait_p99: Option<f64>,
    pub syn: u32,
    pub owner: String,
    pub pattern: String,
}

/// Rows -> lines; `previous` holds each socket's drop count at the last refresh.
pub fn lines(
    rows: &[ListenerRow],
    previous: &HashMap<u64, u64>,
    elapsed: Duration,
    filter: &str,
    sort: SortBy,
) -> Vec<Line> {
    let mut out: Vec<Line> = rows
        .iter()
        .map(|r| {
            let l = &r.listener;
            let owner = first_owner(&l.owners);
            Line {
                listen_addr: l.listen_addr(),
                fill: f64::from(l.accept_queue_len) / f64::from(l.accept_queue_limit.max(1)),
                depth: l.accept_queue_len,
                limit: l.accept_queue_limit,
                drops_per_s: per_second(previous, l.inode, l.drops, elapsed),
                wait_p99: l
                    .kernel
                    .as_ref()
                    .and_then(|k| k.accept_wait.quantile_bound(0.99)),
                syn: l.syn_queue_len,
                owner,
                pattern: r
                    .pattern
                    .as_ref()
                    .map_or("-", |p| p.pattern.name())
                    .to_owned(),
            }
        })
        .collect();
    filter_and_sort(&mut out, filter, sort);
    out
}

/// Unix listeners -> lines (`unix:NAME`, escaped; DROP/s is connects refused per
/// second); `previous` holds each socket's refused count at the last refresh.
pub fn unix_lines(
    rows: &[UnixListener],
    previous: &HashMap<u64, u64>,
    elapsed: Duration,
    filter: &str,
    sort: SortBy,
) -> Vec<Line> {
    let mut out: Vec<Line> = rows
        .iter()
        .map(|l| {
            let refused = l.kernel.as_ref().map_or(0, |k| k.refused);
            Line {
                listen_addr: format!("unix:{}", escape(&l.name)),
                fill: f64::from(l.queue_len) / f64::from(l.queue_limit.max(1)),
                depth: l.queue_len,
                limit: l.queue_limit,
                drops_per_s: per_second(previous, l.inode, refused, elapsed),
                wait_p99: l
                    .queue
                    .as_ref()
                    .and_then(|q| q.accept_wait.quantile_bound(0.99)),
                syn: 0,
                owner: first_owner(&l.owners),
                pattern: "-".into(),
            }
        })
        .collect();
    filter_and_sort(&mut out, filter, sort);
    out
}

/// How fast socket `inode`'s counter rose from its count at the last refresh
/// (`previous`; none: a socket new since then counts from now) to `now`.
fn per_second(previous: &HashMap<u64, u64>, inode: u64, now: u64, elapsed: Duration) -> f64 {
    let since = previous
        .get(&inode)
        .map_or(0, |&before| now.saturating_sub(before));
    since as f64 / elapsed.as_secs_f64().max(1e-3)
}

/// The first owner as `PID/COMM` (escaped), or `-`.
fn first_owner(owners: &[crate::model::Owner]) -> String {
    owners
        .first()
        .map_or_else(|| "-".into(), |o| format!("{}/{}", o.pid, escape(&o.comm)))
}

/// Keeps the lines whose address or owner contains `filter`, in `sort` order.
pub fn filter_and_sort(out: &mut Vec<Line>, filter: &str, sort: SortBy) {
    out.retain(|line| {
        filter.is_empty() || line.listen_addr.contains(filter) || line.owner.contains(filter)
    });
    out.sort_by(|a, b| match sort {
        SortBy::Fill => b.fill.total_cmp(&a.fill),
        SortBy::Drops => b.drops_per_s.total_cmp(&a.drops_per_s),
        SortBy::Wait => b
            .wait_p99
            .unwrap_or(0.0)
            .total_cmp(&a.wait_p99.unwrap_or(0.0)),
        SortBy::Address => a.listen_addr.cmp(&b.listen_addr),
    });
}

/// A process stalled by Nagle x delayed ACKs, with its rate since the last refresh.
#[derive(Debug, Clone, PartialEq)]
pub struct Stalls {
    pub key: SeriesKey,
    pub per_s: f64,
    /// Mean stall since sockq started, seconds.
    pub typical: f64,
}

/// The processes whose stall count grew since `previous`, busiest first.
pub fn stalls(
    series: &[NagleSeries],
    previous: &HashMap<SeriesKey, u64>,
    elapsed: Duration,
) -> Vec<Stalls> {
    let secs = elapsed.as_secs_f64().max(1e-3);
    let mut out: Vec<Stalls> = series
        .iter()
        .filter_map(|s| {
            let before = previous.get(&s.key).copied().unwrap_or(s.stalls);
            let grew = s.stalls.saturating_sub(before);
            (grew > 0).then(|| Stalls {
                key: s.key.clone(),
                per_s: grew as f64 / secs,
                typical: s.stall_seconds / s.stalls.max(1) as f64,
            })
        })
        .collect();
    out.sort_by(|a, b| b.per_s.total_cmp(&a.per_s));
    out
}

/// The screen, at most `width` columns and `height` lines: the listeners, then
/// (when any) the processes Nagle x delayed-ACK stalls are slowing down.
pub fn render(
    lines: &[Line],
    stalled: &[Stalls],
    source: &str,
    sort: SortBy,
    filter: &str,
    width: usize,
    height: usize,
) -> String {
    let mut out = String::new();
    let title = format!(
        "sockq top - {source} - sort: {} (s) - filter: {} (/) - q quits",
        sort.name(),
        if filter.is_empty() { "none" } else { filter }
    );
    let _ = writeln!(out, "{}", truncate(&title, width));
    let header = format!(
        "{:<21} {:<12} {:>9} {:>7} {:>8} {:>4} OWNER PATTERN",
        "LISTEN", "QUEUE", "DEPTH", "DROP/s", "WAIT99", "SYNQ"
    );
    let _ = writeln!(out, "{}", truncate(&header, width));
    // Up to three stalled processes, below the listeners.
    let footer = if stalled.is_empty() {
        0
    } else {
        1 + stalled.len().min(3)
    };
    for line in lines.iter().take(height.saturating_sub(3 + footer)) {
        let bar_len = 10usize;
        let filled = ((line.fill.min(1.0)) * bar_len as f64).round() as usize;
        let bar = format!("[{}{}]", "#".repeat(filled), ".".repeat(bar_len - filled));
        let wait = line.wait_p99.map_or("-".to_owned(), |w| {
            if w.is_finite() {
                format!("{:.0}ms", w * 1e3)
            } else {
                ">58s".into()
            }
        });
        let row = format!(
            "{:<21} {:<12} {:>9} {:>7.1} {:>8} {:>4} {} {}",
            truncate(&line.listen_addr, 21),
            bar,
            format!("{}/{}", line.depth, line.limit),
            line.drops_per_s,
            wait,
            line.syn,
            line.owner,
            line.pattern
        );
        let _ = writeln!(out, "{}", truncate(&row, width));
    }
    if footer > 0 {
        let _ = writeln!(
            out,
            "{}",
            truncate(
                "NAGLE x DELAYED-ACK STALLS/s  TYPICAL  PROCESS (listener)",
                width
            )
        );
        for s in stalled.iter().take(3) {
            let listener = if s.key.listen_addr.is_empty() {
                "client side".to_owned()
            } else {
                s.key.listen_addr.clone()
            };
            let row = format!(
                "{:>28.1} {:>6.0}ms  {}/{} ({listener})",
                s.per_s,
                s.typical * 1e3,
                s.key.pid,
                escape(&s.key.comm)
            );
            let _ = writeln!(out, "{}", truncate(&row, width));
        }
    }
    out
}

fn truncate(s: &str, width: usize) -> String {
    s.chars().take(width).collect()
}

/// What one refresh shows: listeners, Unix listeners and Nagle series (only from a
/// daemon), source.
struct Sample {
    rows: Vec<ListenerRow>,
    unix: Vec<UnixListener>,
    nagle: Vec<NagleSeries>,
    source: &'static str,
}

fn fetch(addr: SocketAddr) -> Sample {
    match from_daemon(addr) {
        Some(rows) => Sample {
            rows,
            unix: unix_from_daemon(addr).unwrap_or_default(),
            nagle: nagle_from_daemon(addr).unwrap_or_default(),
            source: "daemon",
        },
        None => {
            let report = inventory::scan_report().unwrap_or_default();
            Sample {
                rows: rows_from_inventory(report.listeners),
                unix: report.unix_listeners,
                nagle: Vec::new(),
                source: "local inventory (no daemon: no acceptors or patterns)",
            }
        }
    }
}

/// Runs the view until `q`.
pub fn run(addr: SocketAddr, interval: Duration) -> std::io::Result<()> {
    let mut stdout = std::io::stdout();
    terminal::enable_raw_mode()?;
    execute!(stdout, terminal::EnterAlternateScreen, cursor::Hide)?;
    let result = event_loop(addr, interval, &mut stdout);
    let _ = execute!(stdout, cursor::Show, terminal::LeaveAlternateScreen);
    let _ = terminal::disable_raw_mode();
    result
}

/// What the user typed so far: the sort order and the filter.
struct Controls {
    sort: SortBy,
    filter: String,
    /// The filter being typed after `/`, until Enter or Esc.
    editing: Option<String>,
}

impl Controls {
    /// Applies one key; `true` when it asks to quit.
    fn on_key(&mut self, code: KeyCode, modifiers: KeyModifiers) -> bool {
        match (&mut self.editing, code) {
            (Some(typed), KeyCode::Enter) => {
                self.filter = std::mem::take(typed);
                self.editing = None;
            }
            (Some(_), KeyCode::Esc) => {
                self.filter.clear();
                self.editing = None;
            }
            (Some(typed), KeyCode::Backspace) => {
                typed.pop();
            }
            (Some(typed), KeyCode::Char(c)) => typed.push(c),
            (None, KeyCode::Char('q')) => return true,
            (None, KeyCode::Char('c')) if modifiers.contains(KeyModifiers::CONTROL) => {
                return true;
            }
            (None, KeyCode::Char('s')) => self.sort = self.sort.next(),
            (None, KeyCode::Char('/')) => self.editing = Some(String::new()),
            _ => {}
        }
        false
    }
}

fn event_loop(
    addr: SocketAddr,
    interval: Duration,
    stdout: &mut std::io::Stdout,
) -> std::io::Result<()> {
    let mut controls = Controls {
        sort: SortBy::Fill,
        filter: String::new(),
        editing: None,
    };
    let mut previous: HashMap<u64, u64> = HashMap::new();
    let mut previous_stalls: HashMap<SeriesKey, u64> = HashMap::new();
    // Rates are over the time between the two samples compared, not until now.
    let mut fetched = Instant::now();
    let mut between = Duration::from_secs(1);
    let mut sample = fetch(addr);
    loop {
        let (width, height) = terminal::size().unwrap_or((80, 24));
        let mut shown = lines(
            &sample.rows,
            &previous,
            between,
            &controls.filter,
            controls.sort,
        );
        shown.extend(unix_lines(
            &sample.unix,
            &previous,
            between,
            &controls.filter,
            controls.sort,
        ));
        filter_and_sort(&mut shown, &controls.filter, controls.sort);
        let stalled = stalls(&sample.nagle, &previous_stalls, between);
        let mut screen = render(
            &shown,
            &stalled,
            sample.source,
            controls.sort,
            &controls.filter,
            usize::from(width),
            usize::from(height),
        );
        if let Some(typed) = &controls.editing {
            let _ = write!(screen, "filter: {typed}_");
        }
        draw(stdout, &screen)?;

        if event::poll(interval)? {
            if let Event::Key(KeyEvent {
                code, modifiers, ..
            }) = event::read()?
                && controls.on_key(code, modifiers)
            {
                return Ok(());
            }
            continue;
        }
        // Drops of TCP listeners, refused connects of Unix ones, by socket inode.
        previous = sample
            .rows
            .iter()
            .map(|r| (r.listener.inode, r.listener.drops))
            .chain(
                sample
                    .unix
                    .iter()
                    .map(|u| (u.inode, u.kernel.as_ref().map_or(0, |k| k.refused))),
            )
            .collect();
        previous_stalls = sample
            .nagle
            .iter()
            .map(|s| (s.key.clone(), s.stalls))
            .collect();
        let now = Instant::now();
        between = now - fetched;
        fetched = now;
        sample = fetch(addr);
    }
}

/// Replaces the terminal's content with `screen`.
fn draw(stdout: &mut std::io::Stdout, screen: &str) -> std::io::Result<()> {
    queue!(
        stdout,
        terminal::Clear(ClearType::All),
        cursor::MoveTo(0, 0)
    )?;
    for line in screen.lines() {
        queue!(
            stdout,
            crossterm::style::Print(line),
            cursor::MoveToNextLine(1)
        )?;
    }
    stdout.flush()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::{Listener, Owner};

    fn row(port: u16, len: u32, drops: u64) -> ListenerRow {
        ListenerRow {
            listener: Listener {
                netns: 1,
                addr: "127.0.0.1".parse().expect("ip"),
                port,
                inode: u64::from(port),
                cookie: 0,
                accept_queue_len: len,
                accept_queue_limit: 4,
                syn_queue_len: 0,
                drops,
                owners: vec![Owner::new(7, "evil\n\x1b[2J")],
                kernel: None,
                queue_full: false,
            },
            acceptors: Vec::new(),
            pattern: None,
        }
    }

    #[test]
    fn unix_listeners_show_refused_connects_per_second_escaped() {
        use crate::model::unix::{UnixKernelStats, UnixNameKind, UnixSocketType};
        let unix = UnixListener {
            netns: 1,
            name: "/run/php\n\x1b[2J.sock".into(),
            name_kind: UnixNameKind::Path,
            socket_type: UnixSocketType::Stream,
            inode: 900,
            cookie: 0,
            queue_len: 5,
            queue_limit: 4,
            owners: vec![Owner::new(8, "php-fpm")],
            address: Vec::new(),
            kernel: Some(UnixKernelStats {
                refused: 7,
                ..UnixKernelStats::default()
            }),
            queue: None,
            queue_full: true,
        };
        let previous = HashMap::from([(900, 3)]);
        let mut shown = lines(
            &[row(80, 1, 0)],
            &previous,
            Duration::from_secs(2),
            "",
            SortBy::Fill,
        );
        shown.extend(unix_lines(
            std::slice::from_ref(&unix),
            &previous,
            Duration::from_secs(2),
            "",
            SortBy::Fill,
        ));
        filter_and_sort(&mut shown, "", SortBy::Fill);
        // The full Unix queue first; 4 refused in 2 s.
        assert_eq!(shown[0].listen_addr, "unix:/run/php\\n\\x1b[2J.sock");
        assert_eq!((shown[0].depth, shown[0].limit), (5, 4));
        assert!((shown[0].drops_per_s - 2.0).abs() < 1e-9, "{:?}", shown[0]);
        let screen = render(&shown, &[], "daemon", SortBy::Fill, "", 80, 24);
        assert_eq!(screen.lines().count(), 4, "{screen}");
        assert!(!screen.contains('\x1b'), "{screen}");
        assert_eq!(
            unix_lines(
                &[unix],
                &previous,
                Duration::from_secs(2),
                "nginx",
                SortBy::Fill
            ),
            []
        );
    }

    #[test]
    fn sorts_filters_and_fits_80_columns() {
        let rows = [row(80, 1, 10), row(81, 4, 50)];
        let previous = HashMap::from([(80, 0), (81, 48)]);
        let by_fill = lines(&rows, &previous, Duration::from_secs(2), "", SortBy::Fill);
        assert_eq!(by_fill[0].listen_addr, "127.0.0.1:81");
        let by_drops = lines(&rows, &previous, Duration::from_secs(2), "", SortBy::Drops);
        assert_eq!(by_drops[0].listen_addr, "127.0.0.1:80");
        assert!((by_drops[0].drops_per_s - 5.0).abs() < 1e-9);
        assert_eq!(
            lines(
                &rows,
                &previous,
                Duration::from_secs(1),
                ":81",
                SortBy::Fill
            )
            .len(),
            1
        );
        let screen = render(&by_fill, &[], "daemon", SortBy::Fill, "", 80, 24);
        assert!(screen.lines().all(|l| l.chars().count() <= 80), "{screen}");
        assert!(screen.contains("[##########]"), "{screen}");
        assert!(screen.contains("7/evil\\n\\x1b["), "{screen}");
        assert!(
            !screen.contains('\x1b'),
            "no raw escape from a process name"
        );
    }

    fn series(pid: u32, comm: &str, stalls: u64) -> NagleSeries {
        NagleSeries {
            key: SeriesKey {
                netns: 1,
                listen_addr: String::new(),
                pid,
                comm: comm.into(),
            },
            delack_armed: 0,
            delack_fired: 0,
            delack_cancelled: 0,
            delack_delay: crate::model::Histogram::default(),
            nagle_hold: crate::model::Histogram::default(),
            stalls,
            stall_seconds: stalls as f64 * 0.04,
        }
    }

    #[test]
    fn stalled_processes_below_the_listeners() {
        let before = [series(10, "client", 100), series(11, "quiet", 5)];
        let previous: HashMap<SeriesKey, u64> =
            before.iter().map(|s| (s.key.clone(), s.stalls)).collect();
        let now = [
            series(10, "client", 150),
            series(11, "quiet", 5),
            series(12, "bad\x1b[2J", 3),
        ];
        let stalled = stalls(&now, &previous, Duration::from_secs(2));
        // pid 11 did not stall since; pid 12 is new: its count so far is the baseline.
        assert_eq!(stalled.len(), 1, "{stalled:?}");
        assert!((stalled[0].per_s - 25.0).abs() < 1e-9);
        let rows = [row(80, 1, 10)];
        let shown = lines(
            &rows,
            &HashMap::new(),
            Duration::from_secs(2),
            "",
            SortBy::Fill,
        );
        let screen = render(&shown, &stalled, "daemon", SortBy::Fill, "", 80, 24);
        assert!(screen.contains("NAGLE x DELAYED-ACK"), "{screen}");
        assert!(screen.contains("25.0"), "{screen}");
        assert!(screen.contains("40ms  10/client (client side)"), "{screen}");
        assert!(screen.lines().all(|l| l.chars().count() <= 80), "{screen}");
        let hostile = HashMap::from([(now[2].key.clone(), 0)]);
        let hostile = stalls(&now, &hostile, Duration::from_secs(1));
        assert_eq!(hostile.len(), 1);
        let escaped = render(&shown, &hostile, "daemon", SortBy::Fill, "", 80, 24);
        assert!(escaped.contains("12/bad\\x1b[2J"), "{escaped}");
        assert!(!escaped.contains('\x1b'), "{escaped}");
    }
}
