//! The kernels vm-test boots: Debian's cloud kernel of each series production runs.
//! Each package is downloaded once and kept, reduced to what the VM needs (`vmlinuz`,
//! the TCP sock_diag modules, uncompressed), in `target/vm/<series>/<package>/`.
//! bookworm's 6.1 comes from the machine's own apt lists; 5.10 (bullseye) and 6.12
//! (bookworm-backports) from a private apt configuration in `target/vm/apt` that
//! reuses the machine's archive URI and keyring and never touches its sources.

use std::{
    path::{Path, PathBuf},
    process::Command,
};

use anyhow::{Context as _, Result, bail};

use super::apt::{Apt, deb_field, upstream_version, version_key};
use crate::{run, step};

/// A kernel series and where its package comes from.
pub struct Series {
    /// `5.10`.
    pub name: &'static str,
    /// `apt-cache search --names-only` pattern of its packages.
    pattern: &'static str,
    /// The Debian suite of the private apt configuration, or `None` for the
    /// machine's own lists.
    suite: Option<&'static str>,
}

/// The series production runs (besides the host's own kernel).
pub const SERIES: [Series; 3] = [
    Series {
        name: "5.10",
        pattern: r"^linux-image-5\.10\.0-[0-9]+-cloud-amd64-unsigned$",
        suite: Some("bullseye"),
    },
    Series {
        name: "6.1",
        pattern: r"^linux-image-6\.1\.0-[0-9]+-cloud-amd64-unsigned$",
        suite: None,
    },
    Series {
        name: "6.12",
        pattern: r"^linux-image-6\.12\.[0-9]+\+deb12-cloud-amd64-unsigned$",
        suite: Some("bookworm-backports"),
    },
];

/// The sock_diag modules sockq's inventory needs (modular in Debian's kernels), in
/// load order, with their folder under `kernel/net`: TCP's, then Unix's.
const DIAG_MODULES: [(&str, &str); 3] = [
    ("inet_diag", "ipv4"),
    ("tcp_diag", "ipv4"),
    ("unix_diag", "unix"),
];
/// Written beside a cached kernel once it holds every module of [`DIAG_MODULES`] it
/// has; a cache of another format (before `unix_diag`) is downloaded again.
const CACHE_FORMAT: &str = "2: inet_diag tcp_diag unix_diag";
/// Packages tried, newest first, when a download fails (a mirror may list a
/// package it does not serve).
const CANDIDATES_TRIED: usize = 3;

/// A kernel ready to boot.
pub struct Kernel {
    pub series: &'static str,
    pub package: String,
    /// Upstream version, from the package's (`5.10.223-1` -> `5.10.223`).
    pub version: String,
    pub vmlinuz: PathBuf,
    /// The sock_diag modules, uncompressed, in load order.
    pub modules: Vec<PathBuf>,
}

/// The series named (all when none is).
pub fn select(names: &[String]) -> Result<Vec<&'static Series>> {
    if names.is_empty() {
        return Ok(SERIES.iter().collect());
    }
    names
        .iter()
        .map(|n| {
            SERIES.iter().find(|s| s.name == n).with_context(|| {
                let known: Vec<&str> = SERIES.iter().map(|s| s.name).collect();
                format!("unknown kernel series {n} (known: {})", known.join(", "))
            })
        })
        .collect()
}

/// The newest kernel of `series`, from the cache or downloaded into it.
pub fn fetch(vm_dir: &Path, series: &Series) -> Result<Kernel> {
    let dir = vm_dir.join(series.name);
    if let Some(kernel) = cached(&dir, series)? {
        step(&format!(
            "kernel {}: {} {} (cached in {})",
            series.name,
            kernel.package,
            kernel.version,
            dir.display()
        ));
        return Ok(kernel);
    }
    let apt = match series.suite {
        None => Apt::machine(),
        Some(_) => Apt::private(vm_dir)?,
    };
    let mut candidates = apt.search(series.pattern)?;
    if candidates.is_empty() {
        step(&format!(
            "no {} kernel in the apt lists: apt-get update",
            series.name
        ));
        apt.update()?;
        candidates = apt.search(series.pattern)?;
    }
    if candidates.is_empty() {
        bail!("no package matches {} after apt-get update", series.pattern);
    }
    let mut failures = Vec::new();
    for package in candidates.iter().take(CANDIDATES_TRIED) {
        match download(&apt, &dir, package, series) {
            Ok(kernel) => return Ok(kernel),
            Err(e) => {
                step(&format!("{package}: {e:#}; trying an older one"));
                failures.push(format!("{package}: {e:#}"));
            }
        }
    }
    bail!(
        "no {} kernel could be downloaded: {}",
        series.name,
        failures.join("; ")
    )
}

/// The newest complete kernel in `dir` (its `version` file is written last).
fn cached(dir: &Path, series: &Series) -> Result<Option<Kernel>> {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return Ok(None);
    };
    let newest = entries
        .flatten()
        .filter(|e| e.path().join("version").exists() && e.path().join("vmlinuz").exists())
        .filter(|e| {
            std::fs::read_to_string(e.path().join("format")).is_ok_and(|f| f.trim() == CACHE_FORMAT)
        })
        .filter_map(|e| e.file_name().into_string().ok())
        .max_by_key(|name| version_key(name));
    let Some(package) = newest else {
        return Ok(None);
    };
    let unpacked = dir.join(&package);
    let version = std::fs::read_to_string(unpacked.join("version"))?
        .trim()
        .to_owned();
    Ok(Some(Kernel {
        series: series.name,
        vmlinuz: unpacked.join("vmlinuz"),
        modules: DIAG_MODULES
            .iter()
            .map(|(m, _)| unpacked.join(format!("{m}.ko")))
            .filter(|p| p.exists())
            .collect(),
        package,
        version,
    }))
}

/// Downloads `package`, keeps its `vmlinuz` and sock_diag modules in
/// `dir/<package>/`, and removes the rest.
fn download(apt: &Apt, dir: &Path, package: &str, series: &Series) -> Result<Kernel> {
    step(&format!("downloading {package}"));
    let work = dir.join("download");
    if work.exists() {
        std::fs::remove_dir_all(&work)?;
    }
    std::fs::create_dir_all(&work).with_context(|| format!("creating {}", work.display()))?;
    let deb = apt.download(package, &work)?;
    let version = upstream_version(&deb_field(&deb, "Version")?);
    let tree = work.join("tree");
    run(Command::new("dpkg-deb").arg("-x").arg(&deb).arg(&tree))?;

    let kept = dir.join(package);
    if kept.exists() {
        std::fs::remove_dir_all(&kept)?;
    }
    std::fs::create_dir_all(&kept)?;
    let vmlinuz = find_file(&tree.join("boot"), |n| n.starts_with("vmlinuz-"))
        .with_context(|| format!("no boot/vmlinuz-* in {}", deb.display()))?;
    std::fs::copy(&vmlinuz, kept.join("vmlinuz"))?;
    let mut modules = Vec::new();
    for (name, folder) in DIAG_MODULES {
        if let Some(module) = diag_module(&tree, folder, name)? {
            let target = kept.join(format!("{name}.ko"));
            unpack_module(&module, &target)?;
            modules.push(target);
        }
    }
    std::fs::write(kept.join("format"), format!("{CACHE_FORMAT}\n"))?;
    std::fs::write(kept.join("version"), format!("{version}\n"))?;
    std::fs::remove_dir_all(&work)?;
    step(&format!(
        "kernel {}: {package} {version} in {}",
        series.name,
        kept.display()
    ));
    Ok(Kernel {
        series: series.name,
        package: package.to_owned(),
        version,
        vmlinuz: kept.join("vmlinuz"),
        modules,
    })
}

/// `lib/modules/<release>/kernel/net/<folder>/<name>.ko[.xz]` in an unpacked
/// package; `None` when the kernel has it built in.
fn diag_module(tree: &Path, folder: &str, name: &str) -> Result<Option<PathBuf>> {
    let Some(release) = std::fs::read_dir(tree.join("lib/modules"))
        .ok()
        .and_then(|mut d| d.next())
        .and_then(Result::ok)
    else {
        return Ok(None);
    };
    let dir = release.path().join("kernel/net").join(folder);
    Ok(find_file(&dir, |n| {
        n == format!("{name}.ko") || n.starts_with(&format!("{name}.ko."))
    }))
}

/// Copies a module, decompressing `.ko.xz` (busybox's insmod reads plain ELF).
fn unpack_module(module: &Path, target: &Path) -> Result<()> {
    if module.extension().is_some_and(|x| x == "xz") {
        let file = std::fs::File::create(target)?;
        let status = Command::new("xz")
            .arg("-dc")
            .arg(module)
            .stdout(file)
            .status()
            .context("running xz")?;
        if !status.success() {
            bail!("xz -dc {} failed: {status}", module.display());
        }
        return Ok(());
    }
    std::fs::copy(module, target)
        .map(|_| ())
        .with_context(|| format!("copying {}", module.display()))
}

fn find_file(dir: &Path, matches: impl Fn(&str) -> bool) -> Option<PathBuf> {
    std::fs::read_dir(dir)
        .ok()?
        .flatten()
        .map(|e| e.path())
        .find(|p| p.file_name().and_then(|n| n.to_str()).is_some_and(&matches))
}

#[cfg(test)]
mod tests {
    use super::super::apt::PRIVATE_SUITES;
    use super::*;

    #[test]
    fn private_series_are_in_the_private_sources() {
        for s in SERIES.iter().filter_map(|s| s.suite) {
            assert!(PRIVATE_SUITES.contains(&s), "{s}");
        }
    }

    #[test]
    fn series_by_name() {
        assert_eq!(select(&[]).unwrap().len(), SERIES.len());
        assert_eq!(select(&["6.12".into()]).unwrap()[0].name, "6.12");
        assert!(select(&["4.19".into()]).is_err());
    }
}
