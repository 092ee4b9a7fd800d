//! apt-get and apt-cache for vm-test: on the machine's own lists, or on a private
//! configuration in `target/vm/apt` (its own sources file, lists and cache) for the
//! Debian suites the machine does not use. The private sources reuse the archive
//! URI and keyring of the machine's sources; those are never touched.

use std::{
    path::{Path, PathBuf},
    process::Command,
};

use anyhow::{Context as _, Result, bail};

use crate::run;

/// The machine's apt sources: their archive URI and keyring are reused.
const MACHINE_SOURCES: &str = "/etc/apt/sources.list.d/debian.sources";

/// Suites of the private configuration: bullseye (the 5.10 kernel) and
/// bookworm-backports (the 6.12 kernel, a QEMU that runs it).
pub const PRIVATE_SUITES: [&str; 2] = ["bullseye", "bookworm-backports"];

/// apt-get / apt-cache with a fixed set of `-o` options.
pub struct Apt {
    options: Vec<String>,
}

impl Apt {
    pub fn machine() -> Self {
        Self {
            options: Vec::new(),
        }
    }

    /// The private configuration in `vm_dir/apt`.
    pub fn private(vm_dir: &Path) -> Result<Self> {
        let dir = vm_dir.join("apt");
        for sub in ["lists/partial", "cache/archives/partial"] {
            std::fs::create_dir_all(dir.join(sub))?;
        }
        let machine = std::fs::read_to_string(MACHINE_SOURCES)
            .with_context(|| format!("reading {MACHINE_SOURCES}"))?;
        let sources = dir.join("private.sources");
        std::fs::write(&sources, private_sources(&machine, &PRIVATE_SUITES)?)?;
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

    pub fn update(&self) -> Result<()> {
        run(self.command("apt-get").args(["-q", "update"]))
    }

    /// The packages matching `pattern`, newest first.
    pub fn search(&self, pattern: &str) -> Result<Vec<String>> {
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

    /// Downloads `package` (`name` or `name/suite`) into `dir`; the `.deb`'s path.
    pub fn download(&self, package: &str, dir: &Path) -> Result<PathBuf> {
        let name = package.split('/').next().unwrap_or(package);
        run(self
            .command("apt-get")
            .args(["-q", "download", package])
            .current_dir(dir))?;
        std::fs::read_dir(dir)?
            .flatten()
            .map(|e| e.path())
            .find(|p| {
                p.file_name()
                    .and_then(|n| n.to_str())
                    .is_some_and(|n| n.starts_with(&format!("{name}_")) && n.ends_with(".deb"))
            })
            .with_context(|| format!("apt-get download left no {name}_*.deb"))
    }
}

/// A field of a `.deb`'s control file (`Version`, `Depends`).
pub fn deb_field(deb: &Path, field: &str) -> Result<String> {
    let out = Command::new("dpkg-deb")
        .arg("-f")
        .arg(deb)
        .arg(field)
        .output()
        .context("dpkg-deb -f")?;
    if !out.status.success() {
        bail!(
            "dpkg-deb -f {} {field} failed: {}",
            deb.display(),
            out.status
        );
    }
    Ok(String::from_utf8_lossy(&out.stdout).trim().to_owned())
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
pub fn version_key(package: &str) -> Vec<u64> {
    package
        .split(|c: char| !c.is_ascii_digit())
        .filter_map(|n| n.parse().ok())
        .collect()
}

/// The upstream part of a Debian version: `5.10.223-1` -> `5.10.223`,
/// `6.12.95-1~bpo12+1` -> `6.12.95`, `1:10.0.2+ds-2` -> `10.0.2`.
pub fn upstream_version(debian: &str) -> String {
    let without_epoch = debian.split_once(':').map_or(debian, |(_, v)| v);
    without_epoch
        .split(['-', '~', '+'])
        .next()
        .unwrap_or(without_epoch)
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
    fn upstream_versions() {
        assert_eq!(upstream_version("5.10.223-1"), "5.10.223");
        assert_eq!(upstream_version("6.12.95-1~bpo12+1"), "6.12.95");
        assert_eq!(upstream_version("6.1.192-3"), "6.1.192");
        assert_eq!(upstream_version("1:10.0.2+ds-2+deb13u1~bpo12+1"), "10.0.2");
    }
}
