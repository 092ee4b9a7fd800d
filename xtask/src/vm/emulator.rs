//! The QEMU the VMs run on: bookworm-backports' (10.0), unpacked once into
//! `target/vm/qemu/<version>/`, never installed. bookworm's own QEMU 7.2 corrupts
//! Debian's 6.12 kernel under TCG: random oopses during boot (a double fault in
//! `kmem_cache_alloc_noprof`, NULL dereferences in the maple tree, list corruption)
//! in 6 of 8 boots measured, none in 8 with 10.0; 5.10 and 6.1 booted fine on both.
//! The system's `qemu-system-x86` stays installed for the libraries and firmware
//! (SeaBIOS) this one uses.

use std::path::{Path, PathBuf};

use anyhow::{Context as _, Result};

use super::apt::{Apt, deb_field, upstream_version};
use crate::{run, step};

const SUITE: &str = "bookworm-backports";
const PACKAGES: [&str; 3] = ["qemu-system-x86", "qemu-system-common", "qemu-system-data"];

/// An unpacked QEMU.
pub struct Emulator {
    pub binary: PathBuf,
    /// Its firmware and option ROMs (`-L`).
    pub data: PathBuf,
    /// Its loadable modules (`QEMU_MODULE_DIR`).
    pub modules: PathBuf,
    pub version: String,
}

impl Emulator {
    fn at(root: &Path, version: String) -> Self {
        Self {
            binary: root.join("usr/bin/qemu-system-x86_64"),
            data: root.join("usr/share/qemu"),
            modules: root.join("usr/lib/x86_64-linux-gnu/qemu"),
            version,
        }
    }
}

/// The cached QEMU, or downloads and unpacks it.
pub fn fetch(vm_dir: &Path) -> Result<Emulator> {
    let dir = vm_dir.join("qemu");
    if let Some(emulator) = cached(&dir) {
        step(&format!(
            "QEMU {} (cached in {})",
            emulator.version,
            dir.display()
        ));
        return Ok(emulator);
    }
    let apt = Apt::private(vm_dir)?;
    let work = dir.join("download");
    if work.exists() {
        std::fs::remove_dir_all(&work)?;
    }
    std::fs::create_dir_all(&work).with_context(|| format!("creating {}", work.display()))?;
    let debs = match download_all(&apt, &work) {
        Ok(debs) => debs,
        Err(e) => {
            step(&format!("{e:#}: apt-get update (private lists)"));
            apt.update()?;
            download_all(&apt, &work)?
        }
    };
    let version = upstream_version(&deb_field(&debs[0], "Version")?);
    let root = dir.join(&version);
    if root.exists() {
        std::fs::remove_dir_all(&root)?;
    }
    for deb in &debs {
        run(std::process::Command::new("dpkg-deb")
            .arg("-x")
            .arg(deb)
            .arg(&root))?;
    }
    std::fs::write(root.join("version"), format!("{version}\n"))?;
    std::fs::remove_dir_all(&work)?;
    step(&format!("QEMU {version} unpacked in {}", root.display()));
    Ok(Emulator::at(&root, version))
}

fn download_all(apt: &Apt, work: &Path) -> Result<Vec<PathBuf>> {
    PACKAGES
        .iter()
        .map(|p| apt.download(&format!("{p}/{SUITE}"), work))
        .collect()
}

/// The newest complete unpacked QEMU in `dir` (its `version` file is written last).
fn cached(dir: &Path) -> Option<Emulator> {
    let root = std::fs::read_dir(dir)
        .ok()?
        .flatten()
        .map(|e| e.path())
        .filter(|p| p.join("version").exists())
        .max_by_key(|p| super::apt::version_key(&p.to_string_lossy()))?;
    let version = std::fs::read_to_string(root.join("version")).ok()?;
    let emulator = Emulator::at(&root, version.trim().to_owned());
    emulator.binary.exists().then_some(emulator)
}
