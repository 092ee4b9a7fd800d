use clap::Parser as _;

use super::*;
use crate::cmd::{Cli, Command};

fn args(flags: &[&str]) -> RunArgs {
    let argv = ["sockq", "run"].into_iter().chain(flags.iter().copied());
    match Cli::try_parse_from(argv).expect("flags parse").command {
        Command::Run(args) => args,
        _ => panic!("expected run"),
    }
}

fn settings(file: &str, flags: &[&str]) -> Settings {
    let file = parse_file(file).unwrap_or_else(|e| panic!("{file:?}: {e}"));
    merge(file, &args(flags))
}

fn file_error(text: &str) -> String {
    parse_file(text).expect_err(text)
}

fn rules(text: &[&str]) -> Vec<Rule> {
    text.iter().map(|r| r.parse().expect("rule")).collect()
}

#[test]
fn the_default_configuration_reads_back_as_the_defaults() {
    let text = Settings::default().to_toml();
    assert_eq!(settings(&text, &[]), Settings::default(), "{text}");
    assert_eq!(settings("", &[]), Settings::default());
}

#[test]
fn a_printed_configuration_reads_back_as_itself() {
    let custom = Settings {
        metrics_addr: "[::1]:9900".parse().expect("addr"),
        web_config_file: Some("/etc/sockq/web.yml".into()),
        no_api: true,
        http_header_timeout: Duration::from_millis(2500),
        fine_buckets: true,
        interval: Duration::from_millis(250),
        nagle: true,
        unix_connect_waits: true,
        conn_track_entries: 1000,
        listeners: ListenerFilter {
            include: rules(&["netns=web,port=8000-8999", "comm=nginx*"]),
            exclude: rules(&["addr=10.0.0.0/8"]),
        },
    };
    let text = custom.to_toml();
    assert_eq!(settings(&text, &[]), custom, "{text}");
}

#[test]
fn flags_override_the_file_which_overrides_the_defaults() {
    let file = "[poll]\ninterval = 2\n[probes]\nnagle = true\nconn_track_entries = 64\n\
                [listeners]\ninclude = [\"port=80\"]\nexclude = [\"comm=sshd\"]\n";
    let s = settings(file, &["--interval", "3", "--nagle=false"]);
    assert_eq!(s.interval, Duration::from_secs(3), "the flag wins");
    assert!(!s.nagle, "--nagle=false wins over the file's true");
    assert_eq!(s.conn_track_entries, 64, "the file wins over the default");
    assert_eq!(s.listeners.include, rules(&["port=80"]));
    assert_eq!(s.metrics_addr, Settings::default().metrics_addr);
    let s = settings(
        file,
        &[
            "--listeners-include",
            "port=81",
            "--listeners-include",
            "port=82",
        ],
    );
    assert_eq!(
        s.listeners.include,
        rules(&["port=81", "port=82"]),
        "a flag's list replaces"
    );
    assert_eq!(
        s.listeners.exclude,
        rules(&["comm=sshd"]),
        "the other list stays"
    );
    let s = settings("[http]\nno_api = true\n", &[]);
    assert!(s.no_api);
    assert!(!settings("[http]\nno_api = true\n", &["--no-api=false"]).no_api);
}

#[test]
fn unknown_keys_and_sections_name_the_line_and_key() {
    let e = file_error("[http]\nmetrics_addr = \"127.0.0.1:1\"\nmetrics_adr = \"x\"\n");
    assert!(e.contains("line 3") && e.contains("`metrics_adr`"), "{e}");
    let e = file_error("interval = 1\n");
    assert!(e.contains("line 1") && e.contains("`interval`"), "{e}");
    let e = file_error("\n[nope]\n");
    assert!(e.contains("line 2") && e.contains("`nope`"), "{e}");
}

#[test]
fn bad_values_name_the_line_and_say_why() {
    for (text, line, why) in [
        ("[poll]\ninterval = 0\n", "line 2", "outside"),
        (
            "[poll]\ninterval = \"fast\"\n",
            "line 2",
            "expected a number of seconds",
        ),
        ("[http]\nhttp_header_timeout = 0.1\n", "line 2", "outside"),
        (
            "[http]\nmetrics_addr = \"localhost\"\n",
            "line 2",
            "invalid socket address",
        ),
        ("[probes]\nconn_track_entries = 0\n", "line 2", "outside"),
        (
            "[probes]\nnagle = \"yes\"\n",
            "line 2",
            "expected a boolean",
        ),
        (
            "[listeners]\n\ninclude = [\"port=abc\"]\n",
            "line 3",
            "`abc` is not a port",
        ),
        (
            "[listeners]\nexclude = \"port=22\"\n",
            "line 2",
            "expected a sequence",
        ),
        ("[poll\n", "line 1", ""),
    ] {
        let e = file_error(text);
        assert!(e.contains(line) && e.contains(why), "{text:?}: {e}");
    }
}

#[test]
fn a_relative_web_config_file_is_relative_to_the_file() {
    let dir = std::env::temp_dir().join(format!("sockq-config-unit-{}", std::process::id()));
    std::fs::create_dir_all(&dir).expect("temp dir");
    let path = dir.join("sockq.toml");
    std::fs::write(&path, "[http]\nweb_config_file = \"web.yml\"\n").expect("write");
    let config = path.to_str().expect("UTF-8");
    let s = resolve(&args(&["--config", config])).expect("reads");
    assert_eq!(s.web_config_file, Some(dir.join("web.yml")));
    let s = resolve(&args(&[
        "--config",
        config,
        "--web-config-file",
        "flag.yml",
    ]))
    .expect("reads");
    assert_eq!(
        s.web_config_file,
        Some(PathBuf::from("flag.yml")),
        "a flag's is as given"
    );
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn a_missing_file_is_an_error_naming_it() {
    let e = resolve(&args(&["--config", "/nonexistent/sockq.toml"])).expect_err("missing");
    let text = crate::error_chain(&e);
    assert!(text.contains("/nonexistent/sockq.toml"), "{text}");
}

/// Every setting of `sockq run` has a key in the file (a new flag needs one), and
/// every key a flag whose help documents it.
#[test]
fn every_setting_is_a_key_of_the_file() {
    let command = <RunArgs as clap::Args>::augment_args(clap::Command::new("run"));
    let not_settings = ["config", "print_config", "help"];
    for arg in command.get_arguments() {
        let id = arg.get_id().as_str();
        if not_settings.contains(&id) {
            continue;
        }
        assert!(
            KEYS.iter().any(|k| k.arg == id),
            "--{id} has no key in the config file"
        );
        assert!(
            arg.get_env().is_some(),
            "--{id} has no SOCKQ_* environment variable"
        );
    }
    for k in KEYS {
        let arg = command.get_arguments().find(|a| a.get_id() == k.arg);
        assert!(
            arg.and_then(|a| a.get_help()).is_some(),
            "key {} has no documented flag",
            k.key
        );
    }
}

/// README.md's example configuration is what `sockq run --print-config` prints with
/// the defaults.
#[test]
fn readme_example_is_the_default_configuration() {
    const BEGIN: &str = "<!-- config-example:begin -->\n```toml\n";
    const END: &str = "```\n<!-- config-example:end -->";
    let readme = include_str!("../../../../README.md");
    let start = readme
        .find(BEGIN)
        .expect("README.md has a config-example block")
        + BEGIN.len();
    let len = readme[start..].find(END).expect("the block ends");
    let expected = Settings::default().to_toml();
    assert!(
        readme[start..start + len] == expected,
        "README.md's example configuration differs from `sockq run --print-config`; \
         replace it with:\n{expected}"
    );
}
