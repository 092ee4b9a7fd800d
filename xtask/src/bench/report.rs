//! From the rounds' storms to the figures and the Markdown tables of a run, pure.

use super::{
    programs::ProgramCost,
    stats::{self, Estimate, Rng},
    storm::{Kind, Storm},
    variant::{ALL, Variant},
};

/// One kind's storms, each indexed `[variant index][round]`; `None` where the storm
/// was discarded (every attempt saw listen overflows or SYN retransmits).
#[derive(Default)]
pub struct Storms {
    pub saturation: Vec<Vec<Option<Storm>>>,
    pub half: Vec<Vec<Option<Storm>>>,
}

impl Storms {
    fn new(rounds: usize) -> Self {
        let n = ALL.len();
        Self {
            saturation: vec![vec![None; rounds]; n],
            half: vec![vec![None; rounds]; n],
        }
    }
}

/// Everything the rounds measured; the storms indexed by [`Kind::index`], the
/// request/response workload (TCP) `[variant index][round]`.
#[derive(Default)]
pub struct Measurements {
    pub storms: [Storms; 2],
    pub pingpong: Vec<Vec<Option<f64>>>,
    /// Storms discarded, per variant.
    pub discarded: Vec<usize>,
    /// Storms kept although the machine was not quiet before them, per variant.
    pub not_quiet: Vec<usize>,
}

impl Measurements {
    pub fn new(rounds: usize) -> Self {
        let n = ALL.len();
        Self {
            storms: [Storms::new(rounds), Storms::new(rounds)],
            pingpong: vec![vec![None; rounds]; n],
            discarded: vec![0; n],
            not_quiet: vec![0; n],
        }
    }
}

/// One line of the summary.
#[derive(Clone, Debug)]
pub struct Row {
    pub variant: Variant,
    /// Median saturation rate over the kept storms.
    pub saturation: Option<f64>,
    pub ratio: Option<Estimate>,
    /// CPU per connection at half load (the cgroup's), no sockq's for the reference.
    pub half_cpu_ns: Option<f64>,
    /// Added CPU per connection at half load against no sockq, in ns.
    pub added_ns: Option<Estimate>,
    pub floor_multiple: Option<Estimate>,
    /// The watcher's own process (sockq or bpftrace) per connection at half load.
    pub own_ns: Option<f64>,
    pub pingpong_ratio: Option<Estimate>,
}

pub fn median(mut v: Vec<f64>) -> Option<f64> {
    if v.is_empty() {
        return None;
    }
    v.sort_by(f64::total_cmp);
    let n = v.len();
    Some(if n % 2 == 1 {
        v[n / 2]
    } else {
        (v[n / 2 - 1] + v[n / 2]) / 2.0
    })
}

fn series(storms: &[Option<Storm>], f: impl Fn(&Storm) -> f64) -> Vec<Option<f64>> {
    storms.iter().map(|s| s.as_ref().map(&f)).collect()
}

/// The summary of one kind's storms; the request/response ratio with TCP's only.
pub fn rows(m: &Measurements, kind: Kind, rng: &mut Rng) -> Vec<Row> {
    let base = Variant::NoSockq.index();
    let floor = Variant::Floor.index();
    let storms = &m.storms[kind.index()];
    let rate = |i: usize| series(&storms.saturation[i], Storm::rate);
    let cpu = |i: usize| series(&storms.half[i], Storm::cpu_ns_per_connection);
    ALL.iter()
        .map(|&variant| {
            let i = variant.index();
            let reference = i == base;
            Row {
                variant,
                saturation: median(rate(i).into_iter().flatten().collect()),
                ratio: stats::ratio(&rate(i), &rate(base), rng),
                half_cpu_ns: median(cpu(i).into_iter().flatten().collect()),
                added_ns: (!reference)
                    .then(|| stats::difference(&cpu(i), &cpu(base), rng))
                    .flatten(),
                floor_multiple: (!reference && i != floor)
                    .then(|| stats::multiple(&cpu(i), &cpu(floor), &cpu(base), rng))
                    .flatten(),
                own_ns: median(
                    storms.half[i]
                        .iter()
                        .flatten()
                        .filter_map(Storm::watcher_ns_per_connection)
                        .collect(),
                ),
                pingpong_ratio: (kind == Kind::Tcp)
                    .then(|| stats::ratio(&m.pingpong[i], &m.pingpong[base], rng))
                    .flatten(),
            }
        })
        .collect()
}

/// 12345.6 -> "12,346".
pub fn thousands(v: f64) -> String {
    let n = v.round() as i64;
    let digits = n.unsigned_abs().to_string();
    let mut out = String::new();
    for (i, c) in digits.chars().enumerate() {
        if i > 0 && (digits.len() - i).is_multiple_of(3) {
            out.push(',');
        }
        out.push(c);
    }
    if n < 0 { format!("-{out}") } else { out }
}

pub fn fmt_ratio(e: Option<&Estimate>) -> String {
    e.map_or("n/a".into(), |e| {
        format!("x{:.3} [{:.3}, {:.3}]", e.point, e.low, e.high)
    })
}

fn signed(v: f64) -> String {
    if v.round() > 0.0 {
        format!("+{}", thousands(v))
    } else {
        thousands(v)
    }
}

pub fn fmt_ns(e: Option<&Estimate>) -> String {
    e.map_or("n/a".into(), |e| {
        format!(
            "{} [{}, {}]",
            signed(e.point),
            signed(e.low),
            signed(e.high)
        )
    })
}

pub fn fmt_multiple(e: Option<&Estimate>) -> String {
    e.map_or("n/a".into(), |e| {
        format!("x{:.1} [{:.1}, {:.1}]", e.point, e.low, e.high)
    })
}

fn cell(row: &Row) -> [String; 7] {
    let reference = row.variant == Variant::NoSockq;
    let or_na = |v: Option<f64>, f: &dyn Fn(f64) -> String| v.map_or("n/a".into(), f);
    [
        row.variant.name().to_owned(),
        or_na(row.saturation, &|r| format!("{}/s", thousands(r))),
        if reference {
            "1".into()
        } else {
            fmt_ratio(row.ratio.as_ref())
        },
        if reference {
            or_na(row.half_cpu_ns, &|c| {
                format!("0 (reference: {} ns)", thousands(c))
            })
        } else {
            fmt_ns(row.added_ns.as_ref())
        },
        match row.variant {
            Variant::NoSockq => String::new(),
            Variant::Floor => "1".into(),
            _ => fmt_multiple(row.floor_multiple.as_ref()),
        },
        or_na(row.own_ns, &|c| format!("{} ns", thousands(c))),
        if reference {
            "1".into()
        } else {
            fmt_ratio(row.pingpong_ratio.as_ref())
        },
    ]
}

/// The summary as a Markdown table, ready for BENCHMARKS.md.
pub fn markdown_table(rows: &[Row]) -> String {
    let mut out = String::from(
        "| variant | saturation | ratio [90%] | added CPU/conn at half load, ns [90%] | \
         x floor [90%] | own process CPU/conn | request/response ratio [90%] |\n\
         | --- | --- | --- | --- | --- | --- | --- |\n",
    );
    for row in rows {
        out.push_str(&format!("| {} |\n", cell(row).join(" | ")));
    }
    out
}

/// Where an estimate stands against a target: `met` when the whole interval is on
/// the target's good side, `missed` when it is all on the bad side, else `not
/// resolved`: this run cannot tell (also when there is no estimate: too many storms
/// discarded, or a floor whose cost is not above the noise).
pub fn verdict(e: Option<&Estimate>, target: f64, at_least: bool) -> &'static str {
    match e {
        None => "not resolved",
        Some(e) if at_least && e.low >= target => "met",
        Some(e) if at_least && e.high < target => "missed",
        Some(e) if !at_least && e.high <= target => "met",
        Some(e) if !at_least && e.low > target => "missed",
        Some(_) => "not resolved",
    }
}

/// Issue 13's targets (and issue 16's: the same budget for the Unix storm), each
/// with its estimate and verdict, as a Markdown table; `rows` and `unix` from
/// [`rows`] for each kind.
pub fn targets_table(m: &Measurements, rows: &[Row], unix: &[Row], rng: &mut Rng) -> String {
    let sockq = &rows[Variant::Sockq.index()];
    let unix_sockq = &unix[Variant::Sockq.index()];
    let (s, fair) = (Variant::Sockq.index(), Variant::FairPeer.index());
    let tcp = &m.storms[Kind::Tcp.index()];
    let rate = |i: usize| series(&tcp.saturation[i], Storm::rate);
    let cpu = |i: usize| series(&tcp.half[i], Storm::cpu_ns_per_connection);
    let vs_fair_rate = stats::ratio(&rate(s), &rate(fair), rng);
    let vs_fair_cpu = stats::difference(&cpu(s), &cpu(fair), rng);
    let lines = [
        (
            "sockq (default) saturation rate >= x0.97 of no sockq",
            fmt_ratio(sockq.ratio.as_ref()),
            verdict(sockq.ratio.as_ref(), 0.97, true),
        ),
        (
            "sockq (default) added CPU at half load <= 1,000 ns/conn",
            fmt_ns(sockq.added_ns.as_ref()),
            verdict(sockq.added_ns.as_ref(), 1000.0, false),
        ),
        (
            "sockq (default) added CPU <= x2 the floor's",
            fmt_multiple(sockq.floor_multiple.as_ref()),
            verdict(sockq.floor_multiple.as_ref(), 2.0, false),
        ),
        (
            "request/response >= x0.99 of no sockq",
            fmt_ratio(sockq.pingpong_ratio.as_ref()),
            verdict(sockq.pingpong_ratio.as_ref(), 0.99, true),
        ),
        (
            "saturation rate above the fair peer's (sockq / fair peer > 1)",
            fmt_ratio(vs_fair_rate.as_ref()),
            verdict(vs_fair_rate.as_ref(), 1.0, true),
        ),
        (
            "CPU at half load below the fair peer's (sockq - fair peer < 0)",
            fmt_ns(vs_fair_cpu.as_ref()),
            verdict(vs_fair_cpu.as_ref(), 0.0, false),
        ),
        (
            "Unix storm: sockq (default) saturation rate >= x0.97 of no sockq",
            fmt_ratio(unix_sockq.ratio.as_ref()),
            verdict(unix_sockq.ratio.as_ref(), 0.97, true),
        ),
        (
            "Unix storm: sockq (default) added CPU at half load <= 1,000 ns/conn",
            fmt_ns(unix_sockq.added_ns.as_ref()),
            verdict(unix_sockq.added_ns.as_ref(), 1000.0, false),
        ),
    ];
    let mut out = String::from("| target | measured [90%] | |\n| --- | --- | --- |\n");
    for (target, measured, verdict) in lines {
        out.push_str(&format!("| {target} | {measured} | {verdict} |\n"));
    }
    out
}

/// The per-program table of the statistics storms: sockq's programs beside the
/// floor's empty programs on the same hooks, with totals per connection.
pub fn programs_table(
    sockq: &[ProgramCost],
    conns: u64,
    floor: &[ProgramCost],
    floor_conns: u64,
) -> String {
    let (conns, floor_conns) = (conns.max(1) as f64, floor_conns.max(1) as f64);
    let mut out = String::from(
        "| program (hook) | runs/conn | mean ns/run | floor's ns/run | ns/conn | floor's ns/conn |\n\
         | --- | --- | --- | --- | --- | --- |\n",
    );
    let (mut total, mut floor_total) = (0.0, 0.0);
    for c in sockq {
        let per_conn = c.run_time_ns as f64 / conns;
        total += per_conn;
        let empty = floor.iter().find(|f| f.hook == c.hook);
        let empty_per_conn = empty.map(|f| f.run_time_ns as f64 / floor_conns);
        floor_total += empty_per_conn.unwrap_or(0.0);
        out.push_str(&format!(
            "| {} | {:.2} | {} | {} | {} | {} |\n",
            c.hook,
            c.runs as f64 / conns,
            thousands(c.mean_ns()),
            empty.map_or("n/a".into(), |f| thousands(f.mean_ns())),
            thousands(per_conn),
            empty_per_conn.map_or("n/a".into(), thousands),
        ));
    }
    out.push_str(&format!(
        "| all programs | | | | {} | {} |\n",
        thousands(total),
        thousands(floor_total)
    ));
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::bench::{machine::Load, procfs::QueueTrouble};

    fn storm(connections: u64, cgroup_usec: u64, watcher_cpu: Option<f64>) -> Option<Storm> {
        Some(Storm {
            connections,
            elapsed: 1.0,
            cgroup_usec,
            watcher_cpu,
            trouble: QueueTrouble::default(),
            load: Load::default(),
            steal: 0.0,
        })
    }

    #[test]
    fn thousands_separators() {
        assert_eq!(thousands(0.0), "0");
        assert_eq!(thousands(999.4), "999");
        assert_eq!(thousands(1000.0), "1,000");
        assert_eq!(thousands(58_429.0), "58,429");
        assert_eq!(thousands(1_234_567.0), "1,234,567");
        assert_eq!(thousands(-1500.0), "-1,500");
    }

    #[test]
    fn medians() {
        assert_eq!(median(vec![]), None);
        assert_eq!(median(vec![3.0, 1.0, 2.0]), Some(2.0));
        assert_eq!(median(vec![4.0, 1.0, 2.0, 3.0]), Some(2.5));
    }

    #[test]
    fn estimates_format_with_their_intervals() {
        let e = Estimate {
            point: 0.9621,
            low: 0.95,
            high: 0.9751,
            rounds: 10,
        };
        assert_eq!(fmt_ratio(Some(&e)), "x0.962 [0.950, 0.975]");
        let ns = Estimate {
            point: 812.4,
            low: -40.0,
            high: 1990.0,
            rounds: 10,
        };
        assert_eq!(fmt_ns(Some(&ns)), "+812 [-40, +1,990]");
        let m = Estimate {
            point: 3.12,
            low: 2.4,
            high: 4.04,
            rounds: 10,
        };
        assert_eq!(fmt_multiple(Some(&m)), "x3.1 [2.4, 4.0]");
        assert_eq!(fmt_ratio(None), "n/a");
    }

    #[test]
    fn rows_and_table_from_measurements() {
        let rounds = 4;
        let mut m = Measurements::new(rounds);
        // 10,000 connections per storm; no sockq costs 50 µs each, the floor 50.1 µs,
        // sockq 50.4 µs; sockq's own process 10 ms per storm (1 µs per connection).
        for r in 0..rounds {
            for v in ALL {
                let i = v.index();
                let (rate, usec, own) = match v {
                    Variant::NoSockq => (10_000, 500_000, None),
                    Variant::Floor => (9_900, 501_000, None),
                    Variant::Sockq => (9_500, 504_000, Some(0.01)),
                    _ => (9_000, 510_000, Some(0.005)),
                };
                for kind in Kind::ALL {
                    let storms = &mut m.storms[kind.index()];
                    storms.saturation[i][r] = storm(rate, usec, own);
                    storms.half[i][r] = storm(5_000, usec / 2, own);
                }
                m.pingpong[i][r] = Some(if v == Variant::NoSockq {
                    80_000.0
                } else {
                    76_000.0
                });
            }
        }
        m.storms[Kind::Tcp.index()].saturation[Variant::Sockq.index()][2] = None;
        m.discarded[Variant::Sockq.index()] = 3;
        let unix = rows(&m, Kind::Unix, &mut Rng::new(1));
        assert_eq!(
            unix[Variant::Sockq.index()].ratio.expect("a ratio").rounds,
            4
        );
        assert!(
            unix[Variant::Sockq.index()].pingpong_ratio.is_none(),
            "the request/response workload is TCP's"
        );
        let rows = rows(&m, Kind::Tcp, &mut Rng::new(1));
        let sockq = &rows[Variant::Sockq.index()];
        let ratio = sockq.ratio.expect("a ratio");
        assert!(
            (ratio.point - 0.95).abs() < 1e-12 && ratio.rounds == 3,
            "{ratio:?}"
        );
        let added = sockq.added_ns.expect("added CPU");
        assert!((added.point - 400.0).abs() < 1e-9, "{added:?}");
        let multiple = sockq.floor_multiple.expect("a floor multiple");
        assert!((multiple.point - 4.0).abs() < 1e-9, "{multiple:?}");
        assert!((sockq.own_ns.expect("own CPU") - 2000.0).abs() < 1e-9);
        assert!(rows[Variant::NoSockq.index()].added_ns.is_none());

        let table = markdown_table(&rows);
        let lines: Vec<&str> = table.lines().collect();
        assert_eq!(lines.len(), 2 + ALL.len(), "{table}");
        assert!(lines[0].starts_with("| variant | saturation | ratio [90%] |"));
        assert_eq!(
            lines[2],
            "| no sockq | 10,000/s | 1 | 0 (reference: 50,000 ns) |  | n/a | 1 |"
        );
        assert_eq!(
            lines[3],
            "| sockq (default) | 9,500/s | x0.950 [0.950, 0.950] | +400 [+400, +400] | \
             x4.0 [4.0, 4.0] | 2,000 ns | x0.950 [0.950, 0.950] |"
        );
        assert!(lines[5].starts_with("| floor (empty programs) | 9,900/s |"));
        assert!(lines[5].contains("| 1 | n/a |"), "{}", lines[5]);
    }

    #[test]
    fn verdicts_need_the_whole_interval() {
        let e = |low, high| Estimate {
            point: (low + high) / 2.0,
            low,
            high,
            rounds: 10,
        };
        assert_eq!(verdict(Some(&e(0.98, 0.99)), 0.97, true), "met");
        assert_eq!(verdict(Some(&e(0.95, 0.96)), 0.97, true), "missed");
        assert_eq!(verdict(Some(&e(0.96, 0.98)), 0.97, true), "not resolved");
        assert_eq!(verdict(Some(&e(400.0, 900.0)), 1000.0, false), "met");
        assert_eq!(verdict(Some(&e(1100.0, 1900.0)), 1000.0, false), "missed");
        assert_eq!(
            verdict(Some(&e(900.0, 1100.0)), 1000.0, false),
            "not resolved"
        );
        assert_eq!(verdict(None, 1.0, true), "not resolved");
    }

    #[test]
    fn programs_table_with_a_total() {
        let cost = |hook: &str, runs, run_time_ns| ProgramCost {
            hook: hook.into(),
            runs,
            run_time_ns,
        };
        let sockq = [
            cost("raw_tracepoint inet_sock_set_state", 60_000, 24_000_000),
            cost("tracepoint sys_exit_accept4", 10_000, 15_000_000),
        ];
        let floor = [cost(
            "raw_tracepoint inet_sock_set_state",
            120_000,
            2_400_000,
        )];
        let t = programs_table(&sockq, 10_000, &floor, 20_000);
        assert!(
            t.contains("| raw_tracepoint inet_sock_set_state | 6.00 | 400 | 20 | 2,400 | 120 |"),
            "{t}"
        );
        assert!(
            t.contains("| tracepoint sys_exit_accept4 | 1.00 | 1,500 | n/a | 1,500 | n/a |"),
            "{t}"
        );
        assert!(t.contains("| all programs | | | | 3,900 | 120 |"), "{t}");
    }
}
