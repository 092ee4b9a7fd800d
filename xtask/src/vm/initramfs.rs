//! The VM's initramfs: one base archive (static busybox, sockq, the scenario and
//! check programs and the shared libraries they link, an `/init` that runs the
//! checks and powers off) shared by every kernel, followed by a small archive of
//! that kernel's modules. The kernel unpacks concatenated archives in turn.

use std::{
    os::unix::fs::PermissionsExt as _,
    path::{Path, PathBuf},
    process::Command,
};

use anyhow::{Context as _, Result, bail};

use super::kernels::Kernel;
use crate::step;

/// Mounts, loads the sock_diag modules, prints the doctor's report with a
/// `VMDOCTOR ` prefix (xtask builds the kernel matrix from it), runs the checks.
/// 10.9.9.0/24 is routed to the loopback device so that SYN-ACKs to the SYN-queue
/// check's made-up clients leave and reach no one.
const INIT: &str = r#"#!/bin/busybox sh
/bin/busybox --install -s /bin
mount -t proc proc /proc
mount -t sysfs sysfs /sys
mount -t devtmpfs devtmpfs /dev
mount -t tmpfs tmpfs /tmp
mount -t debugfs debugfs /sys/kernel/debug
ip link set lo up
ip route add 10.9.9.0/24 dev lo
# sock_diag for TCP and Unix is modular in Debian's kernels; without modprobe here, load it.
for m in /lib/modules/*.ko; do insmod "$m"; done
echo "VMTEST kernel $(uname -r), $(nproc) CPUs"
/bin/sockq doctor > /tmp/doctor.txt 2>&1
sed 's/^/VMDOCTOR /' /tmp/doctor.txt
if /bin/sockq-vmcheck /bin/sockq /bin/sockq-scenario /tmp/doctor.txt; then
    echo "VMTEST PASS"
else
    echo "VMTEST FAIL"
fi
poweroff -f
"#;

/// Builds `vm_dir/initramfs/base.cpio.gz` from these binaries.
pub fn base(vm_dir: &Path, binaries: &[PathBuf]) -> Result<PathBuf> {
    step("building the initramfs");
    let tree = fresh_tree(&vm_dir.join("initramfs/tree"))?;
    for sub in [
        "bin",
        "proc",
        "sys",
        "dev",
        "tmp",
        "etc",
        "root",
        "lib/modules",
    ] {
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
    std::fs::write(tree.join("etc/passwd"), "root:x:0:0:root:/root:/bin/sh\n")?;
    let init = tree.join("init");
    std::fs::write(&init, INIT)?;
    std::fs::set_permissions(&init, std::fs::Permissions::from_mode(0o755))?;
    let image = vm_dir.join("initramfs/base.cpio.gz");
    cpio(&tree, &image)?;
    let size = std::fs::metadata(&image)?.len();
    step(&format!(
        "initramfs: {} ({:.1} MiB, {} libraries)",
        image.display(),
        size as f64 / (1 << 20) as f64,
        libraries.len()
    ));
    Ok(image)
}

/// The base archive followed by `kernel`'s modules, as `dir/initramfs.cpio.gz`.
pub fn for_kernel(base: &Path, kernel: &Kernel, dir: &Path) -> Result<PathBuf> {
    let tree = fresh_tree(&dir.join("modules-tree"))?;
    let modules = tree.join("lib/modules");
    std::fs::create_dir_all(&modules)?;
    // Numbered: /init loads them in this (dependency) order.
    for (i, module) in kernel.modules.iter().enumerate() {
        let name = module.file_name().context("module without a name")?;
        copy(
            module,
            &modules.join(format!("{i}-{}", name.to_string_lossy())),
        )?;
    }
    let modules_image = dir.join("modules.cpio.gz");
    cpio(&tree, &modules_image)?;
    let image = dir.join("initramfs.cpio.gz");
    let mut bytes = std::fs::read(base).with_context(|| format!("reading {}", base.display()))?;
    bytes.extend(std::fs::read(&modules_image)?);
    std::fs::write(&image, bytes).with_context(|| format!("writing {}", image.display()))?;
    Ok(image)
}

fn fresh_tree(tree: &Path) -> Result<PathBuf> {
    if tree.exists() {
        std::fs::remove_dir_all(tree).with_context(|| format!("removing {}", tree.display()))?;
    }
    std::fs::create_dir_all(tree).with_context(|| format!("creating {}", tree.display()))?;
    Ok(tree.to_path_buf())
}

/// `find . | cpio -o -H newc | gzip` in `tree`.
fn cpio(tree: &Path, image: &Path) -> Result<()> {
    let status = Command::new("sh")
        .arg("-c")
        .arg("find . | cpio -o -H newc --quiet | gzip -1 > \"$0\"")
        .arg(image)
        .current_dir(tree)
        .status()
        .context("running cpio")?;
    if !status.success() {
        bail!("building {} failed: {status}", image.display());
    }
    Ok(())
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
}
