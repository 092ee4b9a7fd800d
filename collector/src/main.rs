//! The `sockq` binary: parses the command line and hands over to the library.

use std::process::ExitCode;

use clap::Parser as _;
use sockq::{
    cli::{Cli, Command, events, listeners, top},
    daemon, doctor, inventory, privileges,
};

fn main() -> ExitCode {
    let cli = Cli::parse();
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info")),
        )
        .with_writer(std::io::stderr)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .init();
    match cli.command {
        Command::Run(args) => {
            // Without the privileges eBPF needs, `run` still works in polling mode
            // (sock_diag and /proc); the daemon says so.
            let config = daemon::RunConfig {
                metrics_addr: args.metrics_addr,
                interval: args.interval,
                probes: sockq::probes::LoadOptions {
                    nagle: args.nagle,
                    conn_track_entries: args.conn_track_entries,
                },
            };
            match daemon::run(config) {
                Ok(()) => ExitCode::SUCCESS,
                Err(e) => {
                    eprintln!("sockq: {}", sockq::error_chain(&e));
                    ExitCode::FAILURE
                }
            }
        }
        Command::Listeners(args) => {
            let from_daemon = if args.no_daemon {
                None
            } else {
                listeners::from_daemon(args.metrics_addr)
            };
            let rows = match from_daemon {
                Some(rows) => rows,
                None => {
                    if let Some(missing) = privileges::check(&privileges::FOR_RUN) {
                        tracing::warn!("{missing}; showing only what this user can see");
                    }
                    match inventory::scan() {
                        Ok(l) => listeners::rows_from_inventory(l),
                        Err(e) => {
                            eprintln!("sockq: {}", sockq::error_chain(&e));
                            return ExitCode::FAILURE;
                        }
                    }
                }
            };
            if args.json {
                match serde_json::to_string_pretty(&rows) {
                    Ok(json) => emit(&format!("{json}\n")),
                    Err(e) => {
                        eprintln!("sockq: {e}");
                        return ExitCode::FAILURE;
                    }
                }
            } else {
                emit(&listeners::render_table(&rows));
            }
            ExitCode::SUCCESS
        }
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
        Command::Doctor => {
            let checks = doctor::run();
            emit(&doctor::render(&checks));
            if checks.iter().any(|c| c.verdict == doctor::Verdict::Fail) {
                ExitCode::FAILURE
            } else {
                ExitCode::SUCCESS
            }
        }
    }
}

/// Writes to stdout; a closed pipe (`sockq listeners | head`) is not an error worth
/// a panic.
fn emit(text: &str) {
    use std::io::Write as _;
    let _ = std::io::stdout().lock().write_all(text.as_bytes());
}
