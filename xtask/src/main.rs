//! `cargo xtask`: set-up, build, run and test sockq on a fresh machine.
//!
//! - `setup`: installs what the eBPF build needs (Debian's Rust with its library
//!   source, LLVM 22, bpf-linker) and the tools the tests use, printing each step;
//! - `build`: setup, then builds sockq (eBPF in release mode, embedded);
//! - `run`: build, then `sockq run` as root with defaults;
//! - `test`: setup, then every test: unit tests, then the privileged integration
//!   tests that load the real programs into the real kernel;
//! - `vm-test`: the core scenarios on Debian's 5.10, 6.1 and 6.12 kernels in qemu;
//! - `bench`: the cost of watching, side by side;
//! - `soak`: the churn test in a loop against one long-running daemon.

mod bench;
mod fuzz;
mod setup;
mod soak;
mod vm;

use std::{
    path::{Path, PathBuf},
    process::Command,
};

use anyhow::{Context as _, Result, bail};
use clap::{Parser, Subcommand};

#[derive(Parser)]
#[command(about = "Set-up, build, run and test sockq", version)]
struct Cli {
    #[command(subcommand)]
    command: Task,
}

#[derive(clap::Args)]
struct BenchArgs {
    /// Seconds per storm (default 4; 0.5 with --quick).
    #[arg(long)]
    seconds: Option<f64>,
    /// Paired rounds, each running every variant in a shuffled order (default 10;
    /// 3 with --quick).
    #[arg(long)]
    rounds: Option<usize>,
    /// A developer's run of about a minute: fewer rounds, shorter storms, still with
    /// intervals; skips the footprint, scrape and event figures.
    #[arg(long)]
    quick: bool,
    /// Only the figures beside the storms (a few minutes): the daemon idle, /metrics
    /// latency and size with 1,000 and 10,000 listeners, RSS with 1,000, scrapes
    /// against polls, listener events through the ring buffer.
    #[arg(long, conflicts_with = "quick")]
    extras: bool,
    /// Seed of the variants' order and the bootstrap (printed by every run).
    #[arg(long)]
    seed: Option<u64>,
}

#[derive(Subcommand)]
enum Task {
    /// Install the eBPF toolchain and the test tools if missing (Debian/Ubuntu, as root).
    Setup,
    /// Set up, then build sockq with its eBPF programs embedded.
    Build {
        /// Build in release mode.
        #[arg(long)]
        release: bool,
    },
    /// Set up, build (release), then run `sockq run` with the given arguments.
    Run {
        /// Arguments passed to `sockq run` (after `--`).
        #[arg(trailing_var_arg = true, allow_hyphen_values = true)]
        args: Vec<String>,
    },
    /// Set up, then run all tests: unit tests and privileged integration tests.
    Test {
        /// Only run tests whose name contains this string.
        filter: Option<String>,
    },
    /// cargo fmt --check and cargo clippy -D warnings over the workspace.
    Lint,
    /// Boot Debian's 5.10, 6.1 and 6.12 cloud kernels in qemu (TCG) and run sockq's
    /// core checks on each against the kernel's own counters, with the fallbacks each
    /// needs; check README.md's kernel x probe matrix against what they showed.
    /// Downloads each kernel package once (target/vm/<series>).
    VmTest {
        /// Only these kernel series (default: all; the README is then not compared).
        kernels: Vec<String>,
        /// VMs run at once (all three at once was fastest on 2 host CPUs: the checks
        /// mostly wait).
        #[arg(long, default_value = "3")]
        jobs: usize,
        /// vCPUs per VM.
        #[arg(long, default_value = "2")]
        smp: u32,
        /// Seconds each VM may take, boot to verdict (a run takes about a minute).
        #[arg(long, default_value = "300")]
        timeout: u64,
        /// Rewrite README.md's kernel matrix when it differs, instead of failing.
        #[arg(long)]
        update_readme: bool,
    },
    /// Measure the cost of watching: paired rounds of connection storms without
    /// sockq, with sockq (default, --nagle), with the floor (empty programs on sockq's
    /// hooks) and with two bpftrace peers, with 90% bootstrap intervals; each program's
    /// run time; in a full run also the daemon's footprint, scrape latency and events.
    Bench(BenchArgs),
    /// Soak sockq (for nights, not CI): one daemon stays up while the churn test runs
    /// against it in a loop; fails on the first broken invariant or growing memory.
    Soak {
        /// How long to soak.
        #[arg(long, default_value = "60")]
        minutes: u64,
    },
    /// Run each cargo-fuzz target (fuzz/: sock_diag, btf, cli, http) for a bounded
    /// time, installing cargo-fuzz if missing; fails on any crash.
    Fuzz {
        /// Seconds of fuzzing per target.
        #[arg(long, default_value = "20")]
        seconds: u64,
        /// Only these targets (default: all).
        targets: Vec<String>,
    },
}

fn main() {
    let cli = Cli::parse();
    if let Err(e) = dispatch(cli.command) {
        eprintln!("xtask: error: {e:#}");
        std::process::exit(1);
    }
}

fn dispatch(task: Task) -> Result<()> {
    let root = workspace_root()?;
    match task {
        Task::Setup => setup::ensure().and_then(|_| setup::ensure_test_tools()),
        Task::Build { release } => {
            let env = setup::ensure()?;
            build(&root, &env, release).map(|_| ())
        }
        Task::Run { args } => {
            let env = setup::ensure()?;
            let bin = build(&root, &env, true)?;
            step(&format!(
                "starting {} run {}",
                bin.display(),
                args.join(" ")
            ));
            let err = exec(Command::new(&bin).arg("run").args(&args));
            Err(err).context("starting sockq")
        }
        Task::Test { filter } => {
            let env = setup::ensure()?;
            setup::ensure_test_tools()?;
            test(&root, &env, filter.as_deref())
        }
        Task::Lint => lint(&root),
        Task::VmTest {
            kernels,
            jobs,
            smp,
            timeout,
            update_readme,
        } => vm_task(
            &root,
            vm::Options {
                kernels,
                jobs,
                smp,
                timeout: std::time::Duration::from_secs(timeout),
                update_readme,
            },
        ),
        Task::Bench(args) => bench_task(&root, args),
        Task::Soak { minutes } => soak_task(&root, minutes),
        Task::Fuzz { seconds, targets } => fuzz::run(&root, &fuzz::Options { seconds, targets }),
    }
}

/// Builds sockq and the scenario and check programs (release), then boots the VMs.
fn vm_task(root: &Path, options: vm::Options) -> Result<()> {
    let env = setup::ensure()?;
    let sockq = build(root, &env, true)?;
    step("building the scenario and check programs (release)");
    run(cargo(root, &env).args(["build", "--release", "--package", "sockq-tests", "--bins"]))?;
    let release = root.join("target/release");
    // The io_uring server of the host's tests, for the VMs' io_uring check.
    setup::ensure_test_tools()?;
    let uring_server = release.join("uring_server");
    run(Command::new("cc")
        .args(["-O2", "-Wall", "-Werror", "-o"])
        .arg(&uring_server)
        .arg(root.join("tests/c/uring_server.c"))
        .arg("-luring"))?;
    vm::run_vm_test(
        root,
        &[
            sockq,
            release.join("sockq-scenario"),
            release.join("sockq-vmcheck"),
            release.join("sockq-unixsrv"),
            uring_server,
        ],
        &options,
    )
}

/// Builds sockq (debug, as the tests use it), then soaks it.
fn soak_task(root: &Path, minutes: u64) -> Result<()> {
    let env = setup::ensure()?;
    setup::ensure_test_tools()?;
    let sockq = build(root, &env, false)?;
    if !nix_is_root() {
        bail!("the soak loads eBPF programs and creates network namespaces: run it as root");
    }
    soak::run(root, &sockq, minutes)
}

/// Builds sockq and the scenario programs (release), then runs the benchmark.
fn bench_task(root: &Path, args: BenchArgs) -> Result<()> {
    let env = setup::ensure()?;
    setup::install_packages(&["bpftrace", "bpftool", "iproute2"])?;
    build(root, &env, true)?;
    step("building the scenario programs (release)");
    run(cargo(root, &env).args([
        "build",
        "--release",
        "--package",
        "sockq-tests",
        "--bin",
        "sockq-scenario",
    ]))?;
    if !nix_is_root() {
        bail!("the benchmark loads eBPF programs and creates network namespaces: run it as root");
    }
    bench::run(
        root,
        &bench::release_bin(root),
        &bench::Options {
            seconds: args.seconds,
            rounds: args.rounds,
            quick: args.quick,
            extras_only: args.extras,
            seed: args.seed,
        },
    )
}

/// Prints a step of long work so the user sees progress.
pub fn step(what: &str) {
    println!("==> {what}");
}

fn workspace_root() -> Result<PathBuf> {
    let manifest = PathBuf::from(env!("CARGO_MANIFEST_DIR"));
    manifest
        .parent()
        .map(Path::to_path_buf)
        .context("xtask has no parent directory")
}

fn cargo(root: &Path, env: &setup::BuildEnv) -> Command {
    let mut cmd = Command::new(std::env::var("CARGO").unwrap_or_else(|_| "cargo".into()));
    cmd.current_dir(root);
    cmd.env("SOCKQ_BPF_TOOLCHAIN", &env.bpf_toolchain);
    cmd
}

fn build(root: &Path, env: &setup::BuildEnv, release: bool) -> Result<PathBuf> {
    step(&format!(
        "building sockq ({}; eBPF toolchain `{}`)",
        if release { "release" } else { "debug" },
        env.bpf_toolchain
    ));
    let mut cmd = cargo(root, env);
    cmd.args(["build", "--package", "collector", "--bin", "sockq"]);
    if release {
        cmd.arg("--release");
    }
    run(&mut cmd)?;
    let bin = root
        .join("target")
        .join(if release { "release" } else { "debug" })
        .join("sockq");
    if !bin.exists() {
        bail!("build finished but {} is missing", bin.display());
    }
    Ok(bin)
}

fn test(root: &Path, env: &setup::BuildEnv, filter: Option<&str>) -> Result<()> {
    let bin = build(root, env, false)?;
    let mut totals = TestTotals::default();

    step("unit tests (no privileges needed)");
    let mut cmd = cargo(root, env);
    cmd.args([
        "test",
        "--workspace",
        "--exclude",
        "sockq-tests",
        "--exclude",
        "collector-ebpf",
    ]);
    if let Some(f) = filter {
        cmd.args(["--", f]);
    }
    let unit = run_tests(&mut cmd, &mut totals);

    if !nix_is_root() {
        bail!(
            "the integration tests load eBPF programs and create network namespaces: \
             run `sudo -E cargo xtask test` (or as root)"
        );
    }
    if let Err(e) = &unit {
        eprintln!("xtask: unit tests failed ({e:#}); running the integration tests anyway");
    }
    step("integration tests (real eBPF programs, real kernel, own network namespaces)");
    let mut cmd = cargo(root, env);
    cmd.env("SOCKQ_BIN", &bin);
    cmd.args(["test", "--package", "sockq-tests", "--"]);
    if let Some(f) = filter {
        cmd.arg(f);
    }
    let integration = run_tests(&mut cmd, &mut totals);
    println!("tests: {} passed, {} failed", totals.passed, totals.failed);
    unit.and(integration)
}

/// Test counts summed over every `test result:` line cargo printed.
#[derive(Default)]
struct TestTotals {
    passed: u64,
    failed: u64,
}

impl TestTotals {
    /// Adds `test result: ok. 7 passed; 0 failed; ...`.
    fn add_line(&mut self, line: &str) {
        let Some(rest) = line.trim().strip_prefix("test result: ") else {
            return;
        };
        for part in rest.split([';', '.']) {
            let mut words = part.split_whitespace();
            if let (Some(n), Some(what)) = (words.next(), words.next())
                && let Ok(n) = n.parse::<u64>()
            {
                match what {
                    "passed" => self.passed += n,
                    "failed" => self.failed += n,
                    _ => {}
                }
            }
        }
    }
}

/// Runs a `cargo test`, echoing its output live and counting its results.
fn run_tests(cmd: &mut Command, totals: &mut TestTotals) -> Result<()> {
    use std::io::BufRead as _;
    let mut child = cmd
        .stdout(std::process::Stdio::piped())
        .spawn()
        .with_context(|| format!("failed to start {cmd:?}"))?;
    if let Some(stdout) = child.stdout.take() {
        for line in std::io::BufReader::new(stdout).lines() {
            let line = line.context("reading cargo test output")?;
            println!("{line}");
            totals.add_line(&line);
        }
    }
    let status = child.wait().context("waiting for cargo test")?;
    if !status.success() {
        bail!("{cmd:?} failed: {status}");
    }
    Ok(())
}

fn lint(root: &Path) -> Result<()> {
    step("cargo fmt --check");
    run(Command::new("cargo")
        .current_dir(root)
        .args(["fmt", "--all", "--check"]))?;
    step("cargo clippy -D warnings");
    run(Command::new("cargo").current_dir(root).args([
        "clippy",
        "--workspace",
        "--all-targets",
        "--exclude",
        "collector-ebpf",
        "--",
        "-D",
        "warnings",
    ]))
}

fn nix_is_root() -> bool {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find_map(|l| l.strip_prefix("Uid:"))
                .and_then(|l| l.split_whitespace().nth(1).map(|euid| euid == "0"))
        })
        .unwrap_or(false)
}

/// Runs a command, failing with its command line when it fails.
pub fn run(cmd: &mut Command) -> Result<()> {
    let status = cmd
        .status()
        .with_context(|| format!("failed to start {cmd:?}"))?;
    if !status.success() {
        bail!("{cmd:?} failed: {status}");
    }
    Ok(())
}

fn exec(cmd: &mut Command) -> std::io::Error {
    use std::os::unix::process::CommandExt as _;
    cmd.exec()
}
