//! `sockq top` in a real terminal: tmux runs it at 80x24 against a running daemon
//! while a scenario overflows a queue; the screen is read with capture-pane and keys
//! are sent with send-keys.

use std::{
    process::Command,
    time::{Duration, Instant},
};

use sockq_tests::{Daemon, Netns, sockq_bin};

fn tmux(args: &[&str]) -> std::process::Output {
    Command::new("tmux")
        .args(args)
        .output()
        .expect("tmux (Debian package tmux)")
}

fn screen(session: &str) -> String {
    String::from_utf8_lossy(&tmux(&["capture-pane", "-p", "-t", session]).stdout).into_owned()
}

fn wait_screen(session: &str, what: &str, check: impl Fn(&str) -> bool) -> String {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let s = screen(session);
        if check(&s) {
            return s;
        }
        assert!(Instant::now() < deadline, "{what} not on screen:\n{s}");
        std::thread::sleep(Duration::from_millis(200));
    }
}

#[test]
fn top_shows_a_full_queue_sorts_and_quits() {
    let ns = Netns::new("top");
    let daemon = Daemon::start_with(&["--interval", "0.2", "--nagle"]);
    let scenario = ns.scenario(&["backlog", "127.0.0.1:7061", "2", "8"]);
    // A write-write-read client without TCP_NODELAY: ~25 Nagle x delayed-ACK stalls a
    // second for about 20 s.
    let wwr = ns.scenario(&["wwr-server", "127.0.0.1:7062"]);
    let mut client = ns
        .command(sockq_tests::scenario_bin())
        .args(["wwr-client", "127.0.0.1:7062", "500", "0"])
        .stdout(std::process::Stdio::null())
        .spawn()
        .expect("wwr-client");
    let session = format!("sockq-top-{}", std::process::id());
    let command = format!(
        "{} top --metrics-addr {} --interval 0.5",
        sockq_bin().display(),
        daemon.addr
    );
    let started = tmux(&[
        "new-session",
        "-d",
        "-s",
        &session,
        "-x",
        "80",
        "-y",
        "24",
        &command,
    ]);
    assert!(
        started.status.success(),
        "{}",
        String::from_utf8_lossy(&started.stderr)
    );

    let s = wait_screen(&session, "the full listener", |s| {
        s.lines().any(|l| {
            l.contains("127.0.0.1:7061") && l.contains("[##########]") && l.contains("3/2")
        })
    });
    assert!(s.contains("sockq top - daemon"), "{s}");
    assert!(
        s.lines().all(|l| l.chars().count() <= 80),
        "wider than 80 columns:\n{s}"
    );

    // The stalled client below the listeners, with its rate and typical stall.
    let s = wait_screen(&session, "the stalled client", |s| {
        s.contains("NAGLE x DELAYED-ACK STALLS/s")
            && s.lines().any(|l| {
                l.contains(&format!("{}/sockq-scenario (client side)", client.id()))
                    && l.split_whitespace()
                        .next()
                        .and_then(|r| r.parse::<f64>().ok())
                        .is_some_and(|rate| (10.0..=30.0).contains(&rate))
                    && l.contains("ms")
            })
    });
    assert!(
        s.lines().all(|l| l.chars().count() <= 80),
        "wider than 80 columns:\n{s}"
    );
    let _ = client.kill();
    let _ = client.wait();

    tmux(&["send-keys", "-t", &session, "s"]);
    wait_screen(&session, "the new sort order", |s| {
        s.contains("sort: drops/s")
    });

    tmux(&["send-keys", "-t", &session, "q"]);
    let deadline = Instant::now() + Duration::from_secs(5);
    while tmux(&["has-session", "-t", &session]).status.success() {
        assert!(Instant::now() < deadline, "sockq top did not quit on q");
        std::thread::sleep(Duration::from_millis(100));
    }
    scenario.finish();
    wwr.finish();
}
