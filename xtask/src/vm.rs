//! `cargo xtask vm-test`: sockq's core scenarios on another kernel, Debian's 6.1
//! cloud kernel, booted in qemu (TCG: no KVM here) from an initramfs holding
//! busybox, sockq, the scenario programs and `sockq-vmcheck`, which runs the checks
//! inside the VM against the kernel's own counters and prints `VMTEST PASS` or
//! `VMTEST FAIL`. 6.1 lacks tracepoints sockq prefers (`sock:sk_data_ready`,
//! `tcp:tcp_sendmsg_locked`), so this also proves the fallbacks.

use std::{
    io::{BufRead as _, BufReader, Write as _},
    os::unix::fs::PermissionsExt as _,
    path::{Path, PathBuf},
    process::{Command, Stdio},
    sync::mpsc,
    time::{Duration, Instant},
};

use anyhow::{Context as _, Result, bail};

use crate::{run, setup, step};

/// The kernel series booted: Debian bookworm's LTS kernel.
const KERNEL_PACKAGE_PATTERN: &str = r"^linux-image-6\.1\.0-[0-9]+-cloud-amd64-unsigned$";
/// The whole VM run, boot to power-off.
const VM_TIMEOUT: Duration = Duration::from_secs(900);

const INIT: &str = r#"#!/bin/busybox sh
/bin/busybox --install -s /bin
mount -t proc proc /proc
mount -t sysfs sysfs /sys
mount -t devtmpfs devtmpfs /dev
mount -t tmpfs tmpfs /tmp
ip link set lo up
# sock_diag for TCP is modular in Debian's kernels; without modprobe here, load it.
for m in /lib/modules/*.ko; do insmod "$m"; done
echo "VMTEST kernel $(uname -r), $(nproc) CPUs"
/bin/sockq doctor
if /bin/sockq-vmcheck /bin/sockq /bin/sockq-scenario; then
    echo "VMTEST PASS"
else
    echo "VMTEST FAIL"
fi
poweroff -f
"#;

/// Boots the VM with these binaries and runs the checks.
pub fn run_vm_test(root: &Path, binaries: &[PathBuf]) -> Result<()> {
    if !crate::nix_is_root() {
        bail!("vm-test installs qemu and downloads a kernel package: run it as root");
    }
    setup::install_packages(&["qemu-system-x86", "busybox-static", "cpio"])?;
    let dir = root.join("target/vm");
    std::fs::create_dir_all(&dir).with_context(|| format!("creating {}", dir.display()))?;
    let kernel = fetch_kernel(&dir)?;
    let modules = diag_modules(&kernel)?;
    let initramfs = build_initramfs(&dir, binaries, &modules)?;
    boot(&kernel, &initramfs)
}

/// Downloads and unpacks the newest 6.1 cloud kernel package (once; kept in
/// `target/vm`). Returns the path of its `vmlinuz`.
fn fetch_kernel(dir: &Path) -> Result<PathBuf> {
    let mut package = newest_kernel_package()?;
    if package.is_none() {
        step("no 6.1 kernel package in the apt lists: apt-get update");
        run(Command::new("apt-get").arg("update"))?;
        package = newest_kernel_package()?;
    }
    let package = package.context("Debian has no linux-image-6.1.0-*-cloud-amd64-unsigned")?;
    let unpacked = dir.join(&package);
    if let Some(vmlinuz) = find_vmlinuz(&unpacked) {
        step(&format!("kernel: {} (cached)", vmlinuz.display()));
        return Ok(vmlinuz);
    }
    step(&format!("downloading {package}"));
    run(Command::new("apt-get")
        .args(["download", &package])
        .current_dir(dir))?;
    let deb = std::fs::read_dir(dir)?
        .flatten()
        .map(|e| e.path())
        .find(|p| {
            p.file_name()
                .and_then(|n| n.to_str())
                .is_some_and(|n| n.starts_with(&format!("{package}_")) && n.ends_with(".deb"))
        })
        .with_context(|| format!("apt-get download left no {package}_*.deb"))?;
    run(Command::new("dpkg-deb").arg("-x").arg(&deb).arg(&unpacked))?;
    let _ = std::fs::remove_file(&deb);
    find_vmlinuz(&unpacked).with_context(|| format!("no boot/vmlinuz-* in {}", deb.display()))
}

fn newest_kernel_package() -> Result<Option<String>> {
    let out = Command::new("apt-cache")
        .args(["search", "--names-only", KERNEL_PACKAGE_PATTERN])
        .output()
        .context("apt-cache search")?;
    let text = String::from_utf8_lossy(&out.stdout);
    Ok(text
        .lines()
        .filter_map(|l| l.split_whitespace().next())
        .max_by_key(|name| abi_number(name))
        .map(str::to_owned))
}

/// `linux-image-6.1.0-50-cloud-amd64-unsigned` -> 50.
fn abi_number(package: &str) -> u32 {
    package
        .strip_prefix("linux-image-6.1.0-")
        .and_then(|rest| rest.split('-').next())
        .and_then(|n| n.parse().ok())
        .unwrap_or(0)
}

fn find_vmlinuz(unpacked: &Path) -> Option<PathBuf> {
    std::fs::read_dir(unpacked.join("boot"))
        .ok()?
        .flatten()
        .map(|e| e.path())
        .find(|p| {
            p.file_name()
                .and_then(|n| n.to_str())
                .is_some_and(|n| n.starts_with("vmlinuz-"))
        })
}

/// An initramfs: static busybox, the binaries in `/bin` and the shared libraries
/// they link (from `ldd`), an `/init` that runs the checks and powers off.
fn build_initramfs(dir: &Path, binaries: &[PathBuf], modules: &[PathBuf]) -> Result<PathBuf> {
    step("building the initramfs");
    let tree = dir.join("initramfs");
    if tree.exists() {
        std::fs::remove_dir_all(&tree)?;
    }
    for sub in ["bin", "proc", "sys", "dev", "tmp", "etc", "root"] {
        std::fs::create_dir_all(tree.join(sub))?;
    }
    copy(Path::new("/bin/busybox"), &tree.join("bin/busybox"))?;
    let mut libraries = Vec::new();
    for bin in binaries {
        let name = bin.file_name().context("binary without a name")?;
        copy(bin, &tree.join("bin").join(name))?;
        libraries.extend(shared_libraries(bin)?);
    }
    libraries.sort();
    libraries.dedup();
    for lib in &libraries {
        let target = tree.join(lib.strip_prefix("/").unwrap_or(lib));
        if let Some(parent) = target.parent() {
            std::fs::create_dir_all(parent)?;
        }
        // Copy the file a symlink points to, under the link's name.
        copy(&std::fs::canonicalize(lib)?, &target)?;
    }
    std::fs::create_dir_all(tree.join("lib/modules"))?;
    // Numbered: /init loads them in this (dependency) order.
    for (i, module) in modules.iter().enumerate() {
        let name = module.file_name().context("module without a name")?;
        let target = format!("{i}-{}", name.to_string_lossy());
        copy(module, &tree.join("lib/modules").join(target))?;
    }
    std::fs::write(tree.join("etc/passwd"), "root:x:0:0:root:/root:/bin/sh\n")?;
    let init = tree.join("init");
    std::fs::write(&init, INIT)?;
    std::fs::set_permissions(&init, std::fs::Permissions::from_mode(0o755))?;

    let image = dir.join("initramfs.cpio.gz");
    let status = Command::new("sh")
        .arg("-c")
        .arg("find . | cpio -o -H newc --quiet | gzip -1 > \"$0\"")
        .arg(&image)
        .current_dir(&tree)
        .status()
        .context("running cpio")?;
    if !status.success() {
        bail!("building {} failed: {status}", image.display());
    }
    let size = std::fs::metadata(&image)?.len();
    step(&format!(
        "initramfs: {} ({:.1} MiB, {} libraries)",
        image.display(),
        size as f64 / (1 << 20) as f64,
        libraries.len()
    ));
    Ok(image)
}

/// The kernel's TCP sock_diag modules, in load order (`inet_diag`, then
/// `tcp_diag`), from the unpacked package `vmlinuz` came with. Missing ones are
/// built in.
fn diag_modules(vmlinuz: &Path) -> Result<Vec<PathBuf>> {
    let unpacked = vmlinuz
        .parent()
        .and_then(Path::parent)
        .context("vmlinuz outside an unpacked package")?;
    let modules = unpacked.join("lib/modules");
    let Some(release) = std::fs::read_dir(&modules)
        .ok()
        .and_then(|mut d| d.next())
        .and_then(Result::ok)
    else {
        return Ok(Vec::new());
    };
    Ok(["inet_diag.ko", "tcp_diag.ko"]
        .iter()
        .map(|m| release.path().join("kernel/net/ipv4").join(m))
        .filter(|p| p.exists())
        .collect())
}

fn copy(from: &Path, to: &Path) -> Result<()> {
    std::fs::copy(from, to)
        .map(|_| ())
        .with_context(|| format!("copying {} to {}", from.display(), to.display()))
}

/// The absolute paths `ldd` lists for a dynamically linked binary.
fn shared_libraries(bin: &Path) -> Result<Vec<PathBuf>> {
    let out = Command::new("ldd")
        .arg(bin)
        .output()
        .with_context(|| format!("ldd {}", bin.display()))?;
    Ok(parse_ldd(&String::from_utf8_lossy(&out.stdout)))
}

/// `libc.so.6 => /lib/x86_64-linux-gnu/libc.so.6 (0x..)` and
/// `/lib64/ld-linux-x86-64.so.2 (0x..)` -> their paths; `linux-vdso.so.1` has none.
fn parse_ldd(text: &str) -> Vec<PathBuf> {
    text.lines()
        .filter_map(|line| {
            let line = line.trim();
            let path = match line.split_once("=>") {
                Some((_, rest)) => rest.split_whitespace().next()?,
                None => line.split_whitespace().next()?,
            };
            path.starts_with('/').then(|| PathBuf::from(path))
        })
        .collect()
}

/// Boots the kernel with the initramfs, echoes the console, and waits for the verdict.
fn boot(kernel: &Path, initramfs: &Path) -> Result<()> {
    step(&format!(
        "booting {} in qemu (TCG; the checks print as they run)",
        kernel.display()
    ));
    let mut child = Command::new("qemu-system-x86_64")
        .args([
            "-accel",
            "tcg",
            "-m",
            "2048",
            "-smp",
            "2",
            "-nographic",
            "-no-reboot",
        ])
        .arg("-kernel")
        .arg(kernel)
        .arg("-initrd")
        .arg(initramfs)
        .args(["-append", "console=ttyS0 panic=-1 quiet"])
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()
        .context("starting qemu-system-x86_64")?;
    let stdout = child.stdout.take().context("qemu stdout")?;
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(stdout).lines() {
            let Ok(line) = line else { break };
            if tx.send(line).is_err() {
                break;
            }
        }
    });
    let started = Instant::now();
    let mut verdict = None;
    let mut out = std::io::stdout().lock();
    while verdict.is_none() {
        let left = VM_TIMEOUT.saturating_sub(started.elapsed());
        match rx.recv_timeout(left) {
            Ok(line) => {
                let _ = writeln!(out, "    vm| {line}");
                let line = line.trim();
                if line == "VMTEST PASS" {
                    verdict = Some(true);
                } else if line == "VMTEST FAIL" {
                    verdict = Some(false);
                }
            }
            Err(mpsc::RecvTimeoutError::Timeout) => break,
            Err(mpsc::RecvTimeoutError::Disconnected) => break,
        }
    }
    // It powers itself off after the verdict; do not wait for a stuck VM.
    let deadline = Instant::now() + Duration::from_secs(30);
    while Instant::now() < deadline && matches!(child.try_wait(), Ok(None)) {
        std::thread::sleep(Duration::from_millis(200));
    }
    let _ = child.kill();
    let _ = child.wait();
    let elapsed = started.elapsed().as_secs_f64();
    match verdict {
        Some(true) => {
            step(&format!("vm-test passed in {elapsed:.0} s"));
            Ok(())
        }
        Some(false) => bail!("vm-test: checks failed in the VM (see its console above)"),
        None => bail!(
            "vm-test: no verdict from the VM after {elapsed:.0} s (timeout {} s, or it crashed)",
            VM_TIMEOUT.as_secs()
        ),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ldd_paths() {
        let text = "\tlinux-vdso.so.1 (0x00007ffd)\n\
                    \tlibgcc_s.so.1 => /lib/x86_64-linux-gnu/libgcc_s.so.1 (0x00007f)\n\
                    \tlibc.so.6 => /lib/x86_64-linux-gnu/libc.so.6 (0x00007f)\n\
                    \t/lib64/ld-linux-x86-64.so.2 (0x00007f)\n\
                    \tnot a dynamic executable\n";
        assert_eq!(
            parse_ldd(text),
            [
                PathBuf::from("/lib/x86_64-linux-gnu/libgcc_s.so.1"),
                PathBuf::from("/lib/x86_64-linux-gnu/libc.so.6"),
                PathBuf::from("/lib64/ld-linux-x86-64.so.2"),
            ]
        );
    }

    #[test]
    fn newest_abi_wins() {
        assert_eq!(abi_number("linux-image-6.1.0-50-cloud-amd64-unsigned"), 50);
        assert_eq!(abi_number("linux-image-6.1.0-9-cloud-amd64-unsigned"), 9);
        assert_eq!(abi_number("something-else"), 0);
    }
}
