//! Builds `collector-ebpf` for the BPF target and leaves the object in `OUT_DIR`,
//! where `probes` embeds it into the `sockq` binary.
//!
//! The eBPF build needs a toolchain whose standard library source is present
//! (`-Z build-std=core`) and `bpf-linker`. `cargo xtask setup` installs both; the
//! toolchain name defaults to `sockq-bpf` (Debian's Rust linked into rustup) and can
//! be overridden with `SOCKQ_BPF_TOOLCHAIN` (for example `nightly` with rust-src).
//! `AYA_BUILD_SKIP=1` skips the eBPF build (an empty object is embedded and sockq
//! reports that its probes are unavailable): useful for editing userspace code on a
//! machine without the eBPF toolchain.

use std::{env, fs, path::PathBuf};

use anyhow::{Context as _, anyhow};
use aya_build::{Package, Toolchain};

fn main() -> anyhow::Result<()> {
    emit_git_commit();
    println!("cargo:rerun-if-env-changed=SOCKQ_BPF_TOOLCHAIN");
    println!("cargo:rerun-if-env-changed=AYA_BUILD_SKIP");
    let out_dir = PathBuf::from(env::var_os("OUT_DIR").ok_or_else(|| anyhow!("OUT_DIR not set"))?);
    let object = out_dir.join("sockq");

    let skip = env::var("AYA_BUILD_SKIP").is_ok_and(|v| v == "1" || v.eq_ignore_ascii_case("true"));
    if skip {
        fs::write(&object, []).context("writing the empty eBPF placeholder")?;
        return Ok(());
    }

    let toolchain = env::var("SOCKQ_BPF_TOOLCHAIN").unwrap_or_else(|_| "sockq-bpf".to_owned());
    // Debian's stable rustc (and any stable toolchain) accepts `-Z build-std` only with
    // RUSTC_BOOTSTRAP; aya-build reads this variable and passes it on to its cargo.
    // SAFETY: build scripts are single-threaded; nothing reads the environment concurrently.
    unsafe { env::set_var("RUSTC_BOOTSTRAP", "1") };

    let manifest_dir = PathBuf::from(env!("CARGO_MANIFEST_DIR"));
    // The eBPF crate also compiles the shared types; rebuild when they change.
    println!(
        "cargo:rerun-if-changed={}",
        manifest_dir.join("../collector-common").display()
    );
    let ebpf_dir = manifest_dir
        .parent()
        .ok_or_else(|| anyhow!("collector has no parent directory"))?
        .join("collector-ebpf");
    let ebpf_dir = ebpf_dir
        .to_str()
        .ok_or_else(|| anyhow!("non-UTF-8 path {}", ebpf_dir.display()))?;
    aya_build::build_ebpf(
        [Package {
            name: "collector-ebpf",
            root_dir: ebpf_dir,
            ..Default::default()
        }],
        Toolchain::Custom(&toolchain),
    )
    .with_context(|| {
        format!(
            "building the eBPF programs with toolchain `{toolchain}` failed; \
             run `cargo xtask setup` to install the eBPF toolchain and bpf-linker, \
             or set AYA_BUILD_SKIP=1 to build without eBPF"
        )
    })
}

/// `SOCKQ_GIT_COMMIT` for `sockq_build_info`, when built from a git checkout.
fn emit_git_commit() {
    let root = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("..");
    for watched in [".git/HEAD", ".git/refs/heads"] {
        let path = root.join(watched);
        if path.exists() {
            println!("cargo:rerun-if-changed={}", path.display());
        }
    }
    let commit = std::process::Command::new("git")
        .args(["rev-parse", "--short=12", "HEAD"])
        .current_dir(&root)
        .output()
        .ok()
        .filter(|o| o.status.success())
        .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_owned())
        .filter(|c| !c.is_empty() && c.chars().all(|ch| ch.is_ascii_hexdigit()));
    if let Some(commit) = commit {
        println!("cargo:rustc-env=SOCKQ_GIT_COMMIT={commit}");
    }
}
