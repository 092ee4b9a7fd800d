//! The `sockq` binary: parses the command line, sets up logging, and hands over to
//! the library ([`sockq::cmd::dispatch`]).

use std::process::ExitCode;

fn main() -> ExitCode {
    let cli = sockq::cmd::parse();
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info")),
        )
        .with_writer(std::io::stderr)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .init();
    sockq::cmd::dispatch(cli)
}
