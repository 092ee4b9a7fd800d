//! Installs what building and testing sockq needs, printing each step. Idempotent:
//! a second run checks and changes nothing.
//!
//! The eBPF crate builds with `-Z build-std=core`, so its toolchain needs the
//! standard library's source. Preference order:
//! 1. `SOCKQ_BPF_TOOLCHAIN` if set (a rustup toolchain name that has rust-src);
//! 2. a rustup `nightly` that already has rust-src;
//! 3. Debian's Rust (rustc-web, cargo-web, rust-web-src: library source under /usr),
//!    linked into rustup as the toolchain `sockq-bpf`.
//!
//! bpf-linker 0.13 is built from crates.io against Debian's LLVM 22.

use std::{path::Path, process::Command};

use anyhow::{Context as _, Result, bail};

use crate::{run, step};

/// The toolchain name rustup knows Debian's Rust by.
const DEBIAN_TOOLCHAIN: &str = "sockq-bpf";
const BPF_LINKER_VERSION: &str = "0.13.0";
const LLVM_PREFIX: &str = "/usr/lib/llvm-22";

/// Packages for building bpf-linker against LLVM 22.
const LLVM_PACKAGES: [&str; 4] = [
    "llvm-22-dev",
    "libpolly-22-dev",
    "libzstd-dev",
    "zlib1g-dev",
];
/// Debian's Rust with its library source (for `-Z build-std=core`).
const RUST_PACKAGES: [&str; 3] = ["rustc-web", "cargo-web", "rust-web-src"];
/// Tools the tests use as oracles and peers: `ss`/`ip` (iproute2), `promtool`
/// (prometheus), `bpftool`, `setpriv` (util-linux), and real servers and load
/// generators: nginx, redis-server (with redis-benchmark), ab (apache2-utils); tmux
/// runs `sockq top` in a terminal; chromium renders the status page headless; hping3
/// floods SYNs between the load tests' own namespaces; gcc and liburing-dev build the
/// io_uring test server, strace shows it makes no accept syscall.
const TEST_PACKAGES: [&str; 18] = [
    "iproute2",
    "prometheus",
    "bpftool",
    "nginx",
    "redis-server",
    "apache2-utils",
    "util-linux",
    "tmux",
    "chromium",
    "hping3",
    // tests/tls.rs, exposure.rs, deploy.rs: HTTPS requests; the venv that holds
    // kubernetes-validate (from PyPI, installed by deploy.rs); systemd-analyze.
    "curl",
    "python3-venv",
    "systemd",
    "gcc",
    "liburing-dev",
    "strace",
    // tests/unix.rs: php-fpm and gunicorn behind nginx over Unix sockets.
    "php-fpm",
    "gunicorn",
];

/// What the build needs to know from the set-up.
pub struct BuildEnv {
    pub bpf_toolchain: String,
}

/// What building and running sockq needs: the eBPF toolchain (and LLVM for
/// bpf-linker). Running needs nothing else.
pub fn ensure() -> Result<BuildEnv> {
    step("checking the eBPF toolchain");
    let (toolchain, need_debian_rust) = choose_toolchain()?;

    let mut packages: Vec<&str> = LLVM_PACKAGES.to_vec();
    if need_debian_rust {
        packages.extend(RUST_PACKAGES);
    }
    install_packages(&packages)?;

    if need_debian_rust {
        link_debian_toolchain()?;
    }
    ensure_bpf_linker()?;
    step(&format!("toolchain ready: eBPF builds with `{toolchain}`"));
    Ok(BuildEnv {
        bpf_toolchain: toolchain,
    })
}

/// What the tests use besides the build: oracles, real servers, load generators, a
/// browser ([`TEST_PACKAGES`]).
pub fn ensure_test_tools() -> Result<()> {
    step("checking the tools the tests use");
    install_packages(&TEST_PACKAGES)
}

fn choose_toolchain() -> Result<(String, bool)> {
    if let Ok(name) = std::env::var("SOCKQ_BPF_TOOLCHAIN") {
        if name != DEBIAN_TOOLCHAIN && !has_rust_src(&name) {
            bail!(
                "SOCKQ_BPF_TOOLCHAIN={name} has no rust-src; run `rustup component add \
                 rust-src --toolchain {name}` or unset SOCKQ_BPF_TOOLCHAIN to use Debian's Rust"
            );
        }
        return Ok((name.clone(), name == DEBIAN_TOOLCHAIN));
    }
    if has_rust_src("nightly") {
        step("using the rustup nightly toolchain (it has rust-src)");
        return Ok(("nightly".into(), false));
    }
    Ok((DEBIAN_TOOLCHAIN.into(), true))
}

/// Whether a rustup toolchain has the standard library source.
fn has_rust_src(toolchain: &str) -> bool {
    let Ok(out) = Command::new("rustup")
        .args(["run", toolchain, "rustc", "--print", "sysroot"])
        .output()
    else {
        return false;
    };
    if !out.status.success() {
        return false;
    }
    let sysroot = String::from_utf8_lossy(&out.stdout).trim().to_owned();
    Path::new(&sysroot)
        .join("lib/rustlib/src/rust/library/core/Cargo.toml")
        .exists()
}

fn is_installed(package: &str) -> bool {
    Command::new("dpkg-query")
        .args(["-W", "-f=${Status}", package])
        .output()
        .map(|o| String::from_utf8_lossy(&o.stdout).contains("install ok installed"))
        .unwrap_or(false)
}

pub fn install_packages(packages: &[&str]) -> Result<()> {
    let missing: Vec<&str> = packages
        .iter()
        .copied()
        .filter(|p| !is_installed(p))
        .collect();
    if missing.is_empty() {
        step("Debian packages: all present");
        return Ok(());
    }
    let command = format!("apt-get update && apt-get install -y {}", missing.join(" "));
    if which::which("apt-get").is_err() {
        bail!(
            "missing packages {} and this is not a Debian/Ubuntu system (no apt-get). \
             Install the equivalents: LLVM 22 development files, a Rust toolchain with \
             rust-src (then set SOCKQ_BPF_TOOLCHAIN to its rustup name), iproute2, \
             prometheus (promtool), bpftool",
            missing.join(" ")
        );
    }
    if !is_root() {
        bail!("missing packages; as root run: {command}   (then rerun this command)");
    }
    step(&format!(
        "installing Debian packages: {}",
        missing.join(" ")
    ));
    run(Command::new("apt-get")
        .arg("update")
        .env("DEBIAN_FRONTEND", "noninteractive"))?;
    run(Command::new("apt-get")
        .args(["install", "-y", "--no-install-recommends"])
        .args(&missing)
        .env("DEBIAN_FRONTEND", "noninteractive"))
}

fn link_debian_toolchain() -> Result<()> {
    if !Path::new("/usr/lib/rustlib/src/rust/library/core/Cargo.toml").exists() {
        bail!("rust-web-src is installed but /usr/lib/rustlib/src/rust/library is missing");
    }
    let list = Command::new("rustup")
        .args(["toolchain", "list"])
        .output()
        .context("running `rustup toolchain list` (is rustup installed?)")?;
    let listed = String::from_utf8_lossy(&list.stdout)
        .lines()
        .any(|l| l.split_whitespace().next() == Some(DEBIAN_TOOLCHAIN));
    if listed {
        return Ok(());
    }
    step(&format!(
        "linking Debian's Rust (/usr) into rustup as `{DEBIAN_TOOLCHAIN}`"
    ));
    run(Command::new("rustup").args(["toolchain", "link", DEBIAN_TOOLCHAIN, "/usr"]))
}

fn ensure_bpf_linker() -> Result<()> {
    let version = Command::new("bpf-linker").arg("--version").output();
    if let Ok(out) = version
        && String::from_utf8_lossy(&out.stdout).contains(BPF_LINKER_VERSION)
    {
        return Ok(());
    }
    step(&format!(
        "building bpf-linker {BPF_LINKER_VERSION} against LLVM 22 (about a minute)"
    ));
    run(Command::new("cargo")
        .args([
            "install",
            &format!("bpf-linker@{BPF_LINKER_VERSION}"),
            "--locked",
            "--no-default-features",
            "--features",
            "llvm-22",
        ])
        .env("LLVM_PREFIX", LLVM_PREFIX))
}

fn is_root() -> bool {
    crate::nix_is_root()
}
