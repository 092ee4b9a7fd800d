//! The Prometheus alert rules in `dashboards/`: valid (`promtool check rules`) and
//! firing as their unit tests say (`promtool test rules`), with summaries, owner
//! names and runbooks.

use std::{path::PathBuf, process::Command};

fn dashboards() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../dashboards")
}

fn promtool(args: &[&str]) {
    let out = Command::new("promtool")
        .args(args)
        .current_dir(dashboards())
        .output()
        .expect("promtool (Debian package prometheus, installed by `cargo xtask setup`)");
    assert!(
        out.status.success(),
        "promtool {args:?}:\n{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

#[test]
fn alert_rules_are_valid() {
    promtool(&["check", "rules", "alerts.yml"]);
}

#[test]
fn alert_rules_fire_as_tested() {
    promtool(&["test", "rules", "alerts_test.yml"]);
}
