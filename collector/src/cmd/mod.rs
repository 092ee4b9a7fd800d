//! The command line: one clap definition, one module per subcommand, and
//! [`dispatch`], which `main` hands the parsed command to.

pub mod config;
pub mod doctor;
pub mod events;
pub mod listeners;
pub mod run;
pub mod top;

use std::{net::SocketAddr, path::PathBuf, process::ExitCode, time::Duration};

use clap::{CommandFactory as _, FromArgMatches as _, Parser, Subcommand};

use crate::analysis::listener_filter::Rule;

/// sockq: live, per-listener view of TCP accept queues, SYN backlogs and drops,
/// tied to the processes that own them.
#[derive(Debug, Parser)]
#[command(name = "sockq", version, about, long_about = None)]
pub struct Cli {
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Run the daemon: attach the eBPF probes, poll every listener in every network
    /// namespace, serve Prometheus metrics, and log notable events. Needs root.
    Run(RunArgs),
    /// Print every TCP listener on the host: accept queue length/limit, SYN queue,
    /// drops, owners, and (from a running `sockq run`) accepting threads and the
    /// execution pattern. Run as root to see every network namespace.
    Listeners(ListenersArgs),
    /// Print the running daemon's notable events (full accept queues, ...) as JSON
    /// lines, then follow new ones. Schema: see `sockq run`'s README section.
    Events(EventsArgs),
    /// A live terminal view of the listeners (depth against limit, drops/s, accept
    /// wait, SYN queue, owner, pattern): `s` sorts, `/` filters, `q` quits.
    Top(TopArgs),
    /// Check what works on this kernel and why: privileges, BTF, tracefs, program
    /// types, and whether each probe attaches (by trying it).
    Doctor,
}

#[derive(Debug, clap::Args)]
pub struct TopArgs {
    /// Metrics address of a running `sockq run` (without one, sockq inventories the
    /// listeners itself and shows no acceptors or patterns).
    #[arg(long, env = "SOCKQ_METRICS_ADDR", default_value = "127.0.0.1:9750")]
    pub metrics_addr: SocketAddr,
    /// Seconds between refreshes.
    #[arg(long, default_value = "1", value_parser = parse_interval)]
    pub interval: Duration,
}

#[derive(Debug, clap::Args)]
pub struct EventsArgs {
    /// Metrics address of the running `sockq run`.
    #[arg(long, env = "SOCKQ_METRICS_ADDR", default_value = "127.0.0.1:9750")]
    pub metrics_addr: SocketAddr,
    /// Print the events the daemon holds and exit instead of following.
    #[arg(long)]
    pub no_follow: bool,
}

/// `sockq run`'s options. The settings have no clap defaults: each is `None` unless
/// its flag or environment variable is given, and [`config::resolve`] lays them over
/// the `--config` file and the defaults (which `--help` shows from
/// [`config::Settings::default`]).
#[derive(Debug, Default, clap::Args)]
pub struct RunArgs {
    /// A TOML configuration file with any of the settings below (`--print-config`
    /// prints one with every default). Each setting's SOCKQ_* environment variable
    /// overrides the file, and its flag overrides both. A malformed file or an
    /// unknown key stops sockq with the line and key at fault.
    #[arg(long, env = "SOCKQ_CONFIG", value_name = "PATH")]
    pub config: Option<PathBuf>,
    /// Print the configuration sockq would run with (defaults, then the --config
    /// file, then SOCKQ_* environment variables, then flags) as TOML, each key with
    /// its documentation and default, and exit without starting.
    #[arg(long)]
    pub print_config: bool,
    /// Address of the Prometheus endpoint (`/metrics`). Keep it on loopback unless a
    /// firewall protects it: the metrics name processes and ports.
    #[arg(long, env = "SOCKQ_METRICS_ADDR", value_name = "ADDR")]
    pub metrics_addr: Option<SocketAddr>,
    /// Seconds between listener inventories (sock_diag in every namespace). Listener
    /// changes reported by the probes trigger an inventory at once.
    #[arg(long, env = "SOCKQ_INTERVAL", value_name = "SECONDS", value_parser = parse_interval)]
    pub interval: Option<Duration>,
    /// Switch on the Nagle / delayed-ACK probe family (timer_start,
    /// timer_expire_entry, tcp_sendmsg_locked, tcp_probe): delayed-ACK timers and
    /// delays, Nagle holds, and the stalls they cause together, per process. Off by
    /// default: these probes run on every segment and every timer, and cost more
    /// than 3% of the connection rate (BENCHMARKS.md). `--nagle=false` switches them
    /// off again.
    #[arg(long, env = "SOCKQ_NAGLE", value_name = "BOOL", num_args = 0..=1,
          require_equals = true, default_missing_value = "true",
          value_parser = clap::builder::BoolishValueParser::new())]
    pub nagle: Option<bool>,
    /// Also time blocking connects to Unix listeners that waited for room in a full
    /// queue (`sockq_unix_listen_connect_waits_total`, `..._connect_wait_seconds_total`). Off by
    /// default: it attaches `syscalls:sys_enter_connect`, and any syscall entry
    /// tracepoint makes every syscall of every process on the host take the kernel's
    /// slow path (about 15 ns each here, BENCHMARKS.md). Refused connects are counted
    /// either way. Kernels before 5.15 always attach it.
    #[arg(long, env = "SOCKQ_UNIX_CONNECT_WAITS", value_name = "BOOL", num_args = 0..=1,
          require_equals = true, default_missing_value = "true",
          value_parser = clap::builder::BoolishValueParser::new())]
    pub unix_connect_waits: Option<bool>,
    /// Connections whose Nagle / delayed-ACK state the kernel tracks at once (an LRU
    /// map, about 150 bytes each); the least recently active are forgotten first.
    #[arg(long, env = "SOCKQ_CONN_TRACK_ENTRIES", value_name = "N",
          value_parser = clap::value_parser!(u32).range(1..=i64::from(config::CONN_TRACK_ENTRIES_MAX)))]
    pub conn_track_entries: Option<u32>,
    /// A web configuration file in the format of Prometheus' exporter-toolkit (the
    /// `--web.config.file` of node_exporter): TLS (`tls_server_config`), basic
    /// authentication (`basic_auth_users`, bcrypt hashes), headers and rate limit.
    /// Reloaded on SIGHUP and when it or a certificate it names changes; a reload that
    /// fails keeps the configuration in force. See the README's "Security" section for
    /// what is supported.
    #[arg(long, env = "SOCKQ_WEB_CONFIG_FILE", value_name = "PATH")]
    pub web_config_file: Option<PathBuf>,
    /// Serve only /metrics: no JSON API (/api/*, /events/recent) and no status page.
    /// Without it, on an address other than loopback and without authentication, the
    /// API omits processes' command lines, users and cgroups. `--no-api=false` serves
    /// them again.
    #[arg(long, env = "SOCKQ_NO_API", value_name = "BOOL", num_args = 0..=1,
          require_equals = true, default_missing_value = "true",
          value_parser = clap::builder::BoolishValueParser::new())]
    pub no_api: Option<bool>,
    /// Seconds a metrics client has, from the start of its connection, to send its
    /// whole request head (on a TLS port, the handshake has as long again); then the
    /// connection is closed. It bounds how long idle or slowloris clients hold the
    /// server's connection slots.
    #[arg(long, env = "SOCKQ_HTTP_HEADER_TIMEOUT", value_name = "SECONDS",
          value_parser = parse_header_timeout)]
    pub http_header_timeout: Option<Duration>,
    /// Serve the accept-wait, queue-depth and Nagle histograms with the kernel's fine
    /// classic buckets (44 accept-wait buckets, steps of x1.33 and x1.5) instead of
    /// the short default set (12: powers of 4 of a microsecond). Native histograms
    /// (protobuf scrapes) are the same either way.
    #[arg(long, env = "SOCKQ_FINE_BUCKETS", value_name = "BOOL", num_args = 0..=1,
          require_equals = true, default_missing_value = "true",
          value_parser = clap::builder::BoolishValueParser::new())]
    pub fine_buckets: Option<bool>,
    /// Export only the listeners one of these rules matches (all of them when there
    /// is none). A rule is KEY=VALUE conditions joined by `,`, all of which must hold:
    /// `netns=` a namespace inode or `ip netns` name, `port=` a port or FROM-TO,
    /// `addr=` an IP address or CIDR block, `comm=` an owner's name, exact or a glob
    /// (`*`, `?`). Repeat the flag, or separate rules with `;`. Rules given by the
    /// flag or its environment variable replace the file's.
    #[arg(
        long,
        env = "SOCKQ_LISTENERS_INCLUDE",
        value_name = "RULE",
        value_delimiter = ';'
    )]
    pub listeners_include: Vec<Rule>,
    /// Do not export the listeners one of these rules matches (same syntax as
    /// --listeners-include; exclude wins). Excluded listeners have no series in
    /// /metrics and are not in the JSON API, sockq_listeners_excluded counts them,
    /// and the eBPF programs still count everything they do.
    #[arg(
        long,
        env = "SOCKQ_LISTENERS_EXCLUDE",
        value_name = "RULE",
        value_delimiter = ';'
    )]
    pub listeners_exclude: Vec<Rule>,
}

#[derive(Debug, clap::Args)]
pub struct ListenersArgs {
    /// Print JSON (an array of listeners) instead of a table.
    #[arg(long)]
    pub json: bool,
    /// Metrics address of a running `sockq run`: its view adds the accepting threads
    /// and the execution pattern, which only the probes see.
    #[arg(long, env = "SOCKQ_METRICS_ADDR", default_value = "127.0.0.1:9750")]
    pub metrics_addr: SocketAddr,
    /// Inventory the listeners here even if a daemon answers.
    #[arg(long)]
    pub no_daemon: bool,
    /// Unix-domain (stream and seqpacket) listeners instead of TCP ones: name,
    /// queue length/limit, connects refused because the queue was full (with a
    /// daemon), owners.
    #[arg(long)]
    pub unix: bool,
}

/// The command line definition, with the defaults of `sockq run`'s layered settings
/// added to their help (`[default: ...]`, from [`config::Settings::default`]).
pub fn command() -> clap::Command {
    Cli::command().mut_subcommand("run", |mut run| {
        for (id, shown) in config::defaults_for_help() {
            run = run.mut_arg(id, |arg| {
                let help = arg.get_help().map(ToString::to_string).unwrap_or_default();
                arg.help(format!("{help} [default: {shown}]"))
            });
        }
        run
    })
}

/// Parses the process's arguments; on an error, or `--help`, prints it and exits
/// (status 2 for a usage error, as clap does).
pub fn parse() -> Cli {
    let matches = command().get_matches();
    Cli::from_arg_matches(&matches).unwrap_or_else(|e| e.exit())
}

/// Runs the parsed command; the exit code says whether it worked.
pub fn dispatch(cli: Cli) -> ExitCode {
    match cli.command {
        Command::Run(args) => run::main(args),
        Command::Listeners(args) => listeners::main(&args),
        Command::Events(args) => match events::run(args.metrics_addr, !args.no_follow) {
            Ok(()) => ExitCode::SUCCESS,
            Err(e) => {
                eprintln!("sockq: {e}");
                ExitCode::FAILURE
            }
        },
        Command::Top(args) => match top::run(args.metrics_addr, args.interval) {
            Ok(()) => ExitCode::SUCCESS,
            Err(e) => {
                eprintln!("sockq: the terminal view failed: {e}");
                ExitCode::FAILURE
            }
        },
        Command::Doctor => doctor::main(),
    }
}

/// Writes to stdout; a closed pipe (`sockq listeners | head`) is not an error worth
/// a panic.
pub fn emit(text: &str) {
    use std::io::Write as _;
    let _ = std::io::stdout().lock().write_all(text.as_bytes());
}

fn parse_interval(s: &str) -> Result<Duration, String> {
    parse_seconds(s, 0.05, 3600.0)
}

fn parse_header_timeout(s: &str) -> Result<Duration, String> {
    parse_seconds(s, 0.5, 600.0)
}

/// A number of seconds from `min` to `max`.
fn parse_seconds(s: &str, min: f64, max: f64) -> Result<Duration, String> {
    let secs: f64 = s
        .parse()
        .map_err(|_| format!("`{s}` is not a number of seconds"))?;
    if !(min..=max).contains(&secs) {
        return Err(format!("{secs} s is outside {min}..{max} s"));
    }
    Ok(Duration::from_secs_f64(secs))
}

#[cfg(test)]
mod tests {
    use clap::CommandFactory as _;

    use super::*;

    #[test]
    fn cli_is_consistent() {
        Cli::command().debug_assert();
    }

    #[test]
    fn interval_is_validated() {
        assert_eq!(parse_interval("0.5"), Ok(Duration::from_millis(500)));
        assert!(parse_interval("0").is_err());
        assert!(parse_interval("abc").is_err());
        assert!(parse_interval("NaN").is_err());
    }

    #[test]
    fn defaults_match_the_readme() {
        let cli = Cli::try_parse_from(["sockq", "run"]).expect("parses");
        let Command::Run(args) = cli.command else {
            panic!("expected run");
        };
        let settings = config::resolve(&args).expect("no file: the defaults");
        assert_eq!(settings.metrics_addr.to_string(), "127.0.0.1:9750");
        assert_eq!(settings.interval, Duration::from_secs(1));
        assert_eq!(settings.web_config_file, None);
        assert!(!settings.no_api);
        assert_eq!(
            settings.http_header_timeout,
            crate::export::http::HEADER_READ_TIMEOUT
        );
    }

    #[test]
    fn help_shows_each_layered_default() {
        let mut cmd = command();
        let run = cmd.find_subcommand_mut("run").expect("run");
        let help = run.render_help().to_string();
        for needle in [
            "[default: 127.0.0.1:9750]",
            "[default: 1.0]",
            "[default: 5.0]",
            "[default: false]",
            "[default: none]",
        ] {
            assert!(
                help.contains(needle),
                "`sockq run --help` lacks {needle}:\n{help}"
            );
        }
    }

    #[test]
    fn bad_filter_flags_are_usage_errors() {
        let err = Cli::try_parse_from(["sockq", "run", "--listeners-include", "port=abc"])
            .expect_err("port=abc");
        assert_eq!(err.exit_code(), 2);
        assert!(err.to_string().contains("`abc` is not a port"), "{err}");
        let ok = Cli::try_parse_from([
            "sockq",
            "run",
            "--listeners-exclude",
            "port=22;comm=ssh*",
            "--nagle",
        ])
        .expect("parses");
        let Command::Run(args) = ok.command else {
            panic!("expected run");
        };
        assert_eq!(args.listeners_exclude.len(), 2);
        assert_eq!(args.nagle, Some(true));
    }
}
