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

/// The machine's apt sources: their archive URI and keyring are reused.
const MACHINE_SOURCES: &str = "/etc/apt/sources.list.d/debian.sources";
/// The TCP sock_diag modules (modular in Debian's kernels), in load order.
const DIAG_MODULES: [&str; 2] = ["inet_diag", "tcp_diag"];
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
            .map(|m| unpacked.join(format!("{m}.ko")))
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
    let mut cmd = apt.command("apt-get");
    run(cmd.args(["download", package]).current_dir(&work))?;
    let deb = std::fs::read_dir(&work)?
        .flatten()
        .map(|e| e.path())
        .find(|p| p.extension().is_some_and(|x| x == "deb"))
        .with_context(|| format!("apt-get download left no {package}_*.deb"))?;
    let out = Command::new("dpkg-deb")
        .args(["-f"])
        .arg(&deb)
        .arg("Version")
        .output()
        .context("dpkg-deb -f")?;
    let version = upstream_version(String::from_utf8_lossy(&out.stdout).trim());
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
    for name in DIAG_MODULES {
        if let Some(module) = diag_module(&tree, name)? {
            let target = kept.join(format!("{name}.ko"));
            unpack_module(&module, &target)?;
            modules.push(target);
        }
    }
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

/// `lib/modules/<release>/kernel/net/ipv4/<name>.ko[.xz]` in an unpacked package;
/// `None` when the kernel has it built in.
fn diag_module(tree: &Path, name: &str) -> Result<Option<PathBuf>> {
    let Some(release) = std::fs::read_dir(tree.join("lib/modules"))
        .ok()
        .and_then(|mut d| d.next())
        .and_then(Result::ok)
    else {
        return Ok(None);
    };
    let ipv4 = release.path().join("kernel/net/ipv4");
    Ok(find_file(&ipv4, |n| {
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

/// apt-get / apt-cache, on the machine's lists or on the private configuration.
struct Apt {
    options: Vec<String>,
}

impl Apt {
    fn machine() -> Self {
        Self {
            options: Vec::new(),
        }
    }

    /// The private configuration in `vm_dir/apt`: one sources file with every
    /// private suite, its own lists and cache.
    fn private(vm_dir: &Path) -> Result<Self> {
        let dir = vm_dir.join("apt");
        for sub in ["lists/partial", "cache/archives/partial"] {
            std::fs::create_dir_all(dir.join(sub))?;
        }
        let machine = std::fs::read_to_string(MACHINE_SOURCES)
            .with_context(|| format!("reading {MACHINE_SOURCES}"))?;
        let suites: Vec<&str> = SERIES.iter().filter_map(|s| s.suite).collect();
        let sources = dir.join("private.sources");
        std::fs::write(&sources, private_sources(&machine, &suites)?)?;
        let opt = |key: &str, value: &Path| format!("{key}={}", value.display());
        Ok(Self {
            options: vec![
                opt("Dir::Etc::sourcelist", &sources),
                "Dir::Etc::sourceparts=/nonexistent".into(),
                opt("Dir::State::Lists", &dir.join("lists")),
                opt("Dir::Cache", &dir.join("cache")),
                // The files are root's, in root's tree: no sandbox user to fall back from.
                "APT::Sandbox::User=root".into(),
            ],
        })
    }

    fn command(&self, program: &str) -> Command {
        let mut cmd = Command::new(program);
        for o in &self.options {
            cmd.args(["-o", o]);
        }
        cmd
    }

    fn update(&self) -> Result<()> {
        run(self.command("apt-get").args(["-q", "update"]))
    }

    /// The packages matching `pattern`, newest first.
    fn search(&self, pattern: &str) -> Result<Vec<String>> {
        let out = self
            .command("apt-cache")
            .args(["search", "--names-only", pattern])
            .output()
            .context("apt-cache search")?;
        let mut names: Vec<String> = String::from_utf8_lossy(&out.stdout)
            .lines()
            .filter_map(|l| l.split_whitespace().next())
            .map(str::to_owned)
            .collect();
        names.sort_by_key(|n| std::cmp::Reverse(version_key(n)));
        names.dedup();
        Ok(names)
    }
}

/// A deb822 sources file for `suites`, with the URI and keyring of the machine's
/// stanza for Debian's main archive (the one serving `bookworm`).
fn private_sources(machine: &str, suites: &[&str]) -> Result<String> {
    for stanza in machine.split("\n\n") {
        let field = |name: &str| {
            stanza
                .lines()
                .filter(|l| !l.trim_start().starts_with('#'))
                .find_map(|l| l.strip_prefix(name)?.strip_prefix(':'))
                .map(str::trim)
        };
        let serves_bookworm =
            field("Suites").is_some_and(|s| s.split_whitespace().any(|suite| suite == "bookworm"));
        if let (true, Some(uris), Some(keyring)) =
            (serves_bookworm, field("URIs"), field("Signed-By"))
        {
            return Ok(format!(
                "Types: deb\nURIs: {uris}\nSuites: {}\nComponents: main\nSigned-By: {keyring}\n",
                suites.join(" ")
            ));
        }
    }
    bail!("{MACHINE_SOURCES} has no stanza for bookworm with URIs and Signed-By")
}

/// The numbers in a package name, to order them: `linux-image-5.10.0-32-...` ->
/// [5, 10, 0, 32, 64].
fn version_key(package: &str) -> Vec<u64> {
    package
        .split(|c: char| !c.is_ascii_digit())
        .filter_map(|n| n.parse().ok())
        .collect()
}

/// `5.10.223-1` -> `5.10.223`; `6.12.95-1~bpo12+1` -> `6.12.95`.
fn upstream_version(debian: &str) -> String {
    debian
        .split(['-', '~', '+'])
        .next()
        .unwrap_or(debian)
        .to_owned()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn newest_package_first() {
        let mut names = [
            "linux-image-6.1.0-9-cloud-amd64-unsigned",
            "linux-image-6.1.0-57-cloud-amd64-unsigned",
            "linux-image-6.1.0-50-cloud-amd64-unsigned",
        ];
        names.sort_by_key(|n| std::cmp::Reverse(version_key(n)));
        assert_eq!(names[0], "linux-image-6.1.0-57-cloud-amd64-unsigned");
        assert_eq!(names[2], "linux-image-6.1.0-9-cloud-amd64-unsigned");
        assert!(
            version_key("linux-image-6.12.95+deb12-cloud-amd64-unsigned")
                > version_key("linux-image-6.12.9+deb12-cloud-amd64-unsigned")
        );
    }

    #[test]
    fn upstream_versions() {
        assert_eq!(upstream_version("5.10.223-1"), "5.10.223");
        assert_eq!(upstream_version("6.12.95-1~bpo12+1"), "6.12.95");
        assert_eq!(upstream_version("6.1.192-3"), "6.1.192");
    }

    #[test]
    fn private_sources_reuse_the_main_archive() {
        let machine = "Types: deb\n# a comment\nURIs: http://archive.example/debian\n\
                       Suites: bookworm bookworm-updates\nComponents: main\n\
                       Signed-By: /usr/share/keyrings/k.gpg\n\n\
                       Types: deb\nURIs: http://archive.example/debian-security\n\
                       Suites: bookworm-security\nComponents: main\n\
                       Signed-By: /usr/share/keyrings/k.gpg\n";
        let text = private_sources(machine, &["bullseye", "bookworm-backports"]).unwrap();
        assert_eq!(
            text,
            "Types: deb\nURIs: http://archive.example/debian\n\
             Suites: bullseye bookworm-backports\nComponents: main\n\
             Signed-By: /usr/share/keyrings/k.gpg\n"
        );
        assert!(private_sources("Types: deb\n", &["bullseye"]).is_err());
    }

    #[test]
    fn series_by_name() {
        assert_eq!(select(&[]).unwrap().len(), SERIES.len());
        assert_eq!(select(&["6.12".into()]).unwrap()[0].name, "6.12");
        assert!(select(&["4.19".into()]).is_err());
    }
}
