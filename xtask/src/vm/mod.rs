//! `cargo xtask vm-test`: sockq's core scenarios on the kernels production runs,
//! Debian's 5.10, 6.1 and 6.12 cloud kernels, each booted in qemu (TCG: no KVM
//! here) from an initramfs holding busybox, sockq, the scenario programs and
//! `sockq-vmcheck`, which runs the checks inside the VM against the kernel's own
//! counters and prints `VMTEST PASS` or `VMTEST FAIL` (on bookworm-backports' QEMU:
//! see `emulator`). The VMs run side by side (`--jobs`), each with a timeout; one
//! verdict line per kernel. From the doctor's report in each VM and on the host, the
//! kernel x probe matrix in README.md.

mod apt;
mod emulator;
mod initramfs;
mod kernels;
mod matrix;
mod qemu;

use std::{
    collections::VecDeque,
    path::{Path, PathBuf},
    process::Command,
    sync::Mutex,
    time::{Duration, Instant},
};

use anyhow::{Context as _, Result, bail};

use crate::{setup, step};

/// How to run the VMs.
pub struct Options {
    /// Kernel series to boot; all when empty.
    pub kernels: Vec<String>,
    /// VMs at once.
    pub jobs: usize,
    /// vCPUs per VM.
    pub smp: u32,
    /// Per VM, boot to verdict.
    pub timeout: Duration,
    /// Rewrite README.md's kernel matrix instead of failing when it differs.
    pub update_readme: bool,
}

/// Boots each kernel with these binaries (sockq first, then the scenario and check
/// programs) and runs the checks; fails if any kernel fails or README.md's matrix
/// differs from what they showed.
pub fn run_vm_test(root: &Path, binaries: &[PathBuf], options: &Options) -> Result<()> {
    if !crate::nix_is_root() {
        bail!("vm-test installs qemu and downloads kernel packages: run it as root");
    }
    setup::install_packages(&["qemu-system-x86", "busybox-static", "cpio", "xz-utils"])?;
    let series = kernels::select(&options.kernels)?;
    let vm_dir = root.join("target/vm");
    std::fs::create_dir_all(&vm_dir).with_context(|| format!("creating {}", vm_dir.display()))?;
    let kernels = series
        .iter()
        .map(|s| kernels::fetch(&vm_dir, s))
        .collect::<Result<Vec<_>>>()?;
    let emulator = emulator::fetch(&vm_dir)?;
    let base = initramfs::base(&vm_dir, binaries)?;
    let mut jobs = Vec::new();
    for kernel in kernels {
        let dir = vm_dir.join(kernel.series);
        let image = initramfs::for_kernel(&base, &kernel, &dir)?;
        jobs.push((kernel, image, dir.join("console.log")));
    }
    let host = host_column(&binaries[0])?;

    step(&format!(
        "booting {} kernel(s) in QEMU {} (TCG), {} at a time, {} vCPU each, {} s timeout each",
        jobs.len(),
        emulator.version,
        options.jobs.clamp(1, jobs.len().max(1)),
        options.smp,
        options.timeout.as_secs()
    ));
    let started = Instant::now();
    let outcomes = run_all(&emulator, jobs, options);
    let wall = started.elapsed();

    let mut columns: Vec<matrix::Column> = outcomes
        .iter()
        .map(|o| matrix::Column::from_doctor(o.series, &o.doctor))
        .collect();
    columns.push(host);
    let table = matrix::render(&columns);
    println!("\nkernel x probe -> mechanism, from `sockq doctor` in each VM and on the host:\n");
    println!("{table}");
    for o in &outcomes {
        println!("{}", o.verdict_line());
    }
    println!(
        "vm-test: {} kernel(s) in {:.0} s",
        outcomes.len(),
        wall.as_secs_f64()
    );

    let failed: Vec<&str> = outcomes
        .iter()
        .filter(|o| o.verdict != qemu::Verdict::Pass)
        .map(|o| o.series)
        .collect();
    // Only a full, passing set of runs speaks for README.md.
    let complete = series.len() == kernels::SERIES.len()
        && failed.is_empty()
        && outcomes.iter().all(has_report);
    let readme = if complete {
        matrix::check_readme(root, &table, options.update_readme)
    } else {
        step("not every kernel ran and passed: README.md's matrix is not compared");
        Ok(())
    };
    if !failed.is_empty() {
        bail!(
            "vm-test failed on {} (consoles in target/vm/<series>/console.log)",
            failed.join(", ")
        );
    }
    readme
}

fn has_report(o: &qemu::Outcome) -> bool {
    o.doctor.iter().any(|l| l.contains(" probe "))
}

/// Runs the VMs, `options.jobs` at a time; outcomes in the order given.
fn run_all(
    emulator: &emulator::Emulator,
    jobs: Vec<(kernels::Kernel, PathBuf, PathBuf)>,
    options: &Options,
) -> Vec<qemu::Outcome> {
    let count = jobs.len();
    let queue = Mutex::new(jobs.into_iter().enumerate().collect::<VecDeque<_>>());
    let done = Mutex::new(Vec::with_capacity(count));
    let boot = qemu::BootOptions {
        smp: options.smp,
        timeout: options.timeout,
    };
    std::thread::scope(|s| {
        for _ in 0..options.jobs.clamp(1, count.max(1)) {
            s.spawn(|| {
                loop {
                    let next = queue.lock().map(|mut q| q.pop_front());
                    let Ok(Some((i, (kernel, image, log)))) = next else {
                        break;
                    };
                    let outcome = qemu::boot(emulator, &kernel, &image, boot, &log);
                    step(&outcome.verdict_line());
                    if let Ok(mut d) = done.lock() {
                        d.push((i, outcome));
                    }
                }
            });
        }
    });
    let mut done = done.into_inner().unwrap_or_default();
    done.sort_by_key(|(i, _)| *i);
    done.into_iter().map(|(_, o)| o).collect()
}

/// The host's column: `sockq doctor` here, headed by the kernel's series.
fn host_column(sockq: &Path) -> Result<matrix::Column> {
    step("sockq doctor on the host, for the matrix");
    let out = Command::new(sockq)
        .arg("doctor")
        .output()
        .with_context(|| format!("running {} doctor", sockq.display()))?;
    let report: Vec<String> = String::from_utf8_lossy(&out.stdout)
        .lines()
        .map(str::to_owned)
        .collect();
    let release = std::fs::read_to_string("/proc/sys/kernel/osrelease").unwrap_or_default();
    let series: Vec<&str> = release.trim().split(['.', '-']).take(2).collect();
    Ok(matrix::Column::from_doctor(
        format!("{} (host)", series.join(".")),
        &report,
    ))
}
