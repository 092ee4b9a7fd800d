//! The daemon's own health under hostile churn: a `listen()`/`close()` loop, which
//! any user can run, costs a bounded rate of inventories (listener events are
//! debounced), and the health metrics say when the inventory last completed. Alone in
//! its test binary: it counts the daemon's polls.

use std::time::{Duration, Instant};

use sockq_tests::{Daemon, Metrics, Netns};

/// Listener events trigger at most this many polls a second (`MIN_REFRESH_GAP`).
const MAX_EVENT_POLLS_PER_SECOND: f64 = 10.0;

fn polls(m: &Metrics) -> f64 {
    m.one("sockq_poll_duration_seconds_count", &[])
        .expect("sockq_poll_duration_seconds_count")
}

/// utime + stime of a process, seconds.
fn cpu_seconds(pid: u32) -> f64 {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).expect("daemon stat");
    let after_comm = stat.rsplit_once(')').expect("stat has a comm").1;
    let fields: Vec<&str> = after_comm.split_whitespace().collect();
    // Fields 14 and 15 of stat(5), counted after the comm from field 3.
    let ticks: f64 =
        fields[11].parse::<f64>().expect("utime") + fields[12].parse::<f64>().expect("stime");
    // SAFETY: sysconf has no preconditions.
    ticks / unsafe { libc::sysconf(libc::_SC_CLK_TCK) } as f64
}

#[test]
fn a_listen_close_loop_costs_a_bounded_rate_of_inventories() {
    let ns = Netns::new("churnpoll");
    // A long interval: every poll during the loop is one the events asked for.
    let daemon = Daemon::start("30");
    let before = daemon.metrics();
    let (polls_before, cpu_before) = (polls(&before), cpu_seconds(daemon.pid()));
    let started = Instant::now();
    let churn = ns.scenario(&["listener-churn", "5"]);
    let opened: u64 = churn
        .first_line
        .strip_prefix("done ")
        .and_then(|n| n.parse().ok())
        .expect("listener-churn says how many listeners it opened");
    churn.finish();
    // Let the last debounced poll run.
    std::thread::sleep(Duration::from_millis(600));
    let elapsed = started.elapsed().as_secs_f64();
    let after = daemon.metrics();
    let event_polls = polls(&after) - polls_before;
    let cpu = cpu_seconds(daemon.pid()) - cpu_before;
    eprintln!(
        "{opened} listeners opened and closed in 5 s: {event_polls} polls in {elapsed:.1} s, \
         daemon CPU {cpu:.2} s ({:.0}% of a core)",
        100.0 * cpu / elapsed
    );
    assert!(opened > 1000, "the loop opened only {opened} listeners");
    let bound = (elapsed * MAX_EVENT_POLLS_PER_SECOND).ceil() + 2.0;
    assert!(
        event_polls >= 1.0,
        "no poll at all followed {opened} listener events"
    );
    assert!(
        event_polls <= bound,
        "{event_polls} polls for {opened} listener events in {elapsed:.1} s: more than {bound}"
    );
}

#[test]
fn health_metrics_say_when_the_inventory_last_completed() {
    let daemon = Daemon::start("1");
    let m = daemon.wait_for(Duration::from_secs(10), |m| {
        let n = polls(m);
        (n >= 2.0).then_some(()).ok_or(format!("{n} polls"))?;
        Ok(m.samples.clone())
    });
    let m = Metrics { samples: m };
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .expect("clock")
        .as_secs_f64();
    let last = m
        .one("sockq_inventory_last_complete_timestamp_seconds", &[])
        .expect("last complete inventory");
    assert!(
        (now - last).abs() < 5.0,
        "last inventory at {last}, now {now}"
    );
    assert_eq!(m.one("sockq_inventory_stale", &[]), Ok(0.0));
    assert_eq!(m.one("sockq_inventory_carried_listeners", &[]), Ok(0.0));
    let sum = m.one("sockq_poll_duration_seconds_sum", &[]).expect("sum");
    assert!(sum > 0.0, "polls took no time at all: {sum}");
}
