//! One VM: boots a kernel with its initramfs in qemu (TCG: no KVM here), echoes
//! the console with the series as prefix and keeps it in a log, and collects the
//! verdict, the first failing check and the doctor's report. A VM that gives no
//! verdict within its timeout is killed.

use std::{
    io::{BufRead as _, BufReader, Write as _},
    path::{Path, PathBuf},
    process::{Child, Command, Stdio},
    sync::mpsc,
    time::{Duration, Instant},
};

use anyhow::{Context as _, Result};

use super::{emulator::Emulator, kernels::Kernel};

/// How each VM runs.
#[derive(Debug, Clone, Copy)]
pub struct BootOptions {
    /// vCPUs of the VM.
    pub smp: u32,
    /// Boot to verdict.
    pub timeout: Duration,
}

/// What a VM run showed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Verdict {
    Pass,
    /// The checks failed: the first failing check's line.
    Fail(String),
    /// No verdict: timeout, crash or qemu failing to start.
    None(String),
}

/// One kernel's run.
pub struct Outcome {
    pub series: &'static str,
    pub version: String,
    /// `uname -r` in the VM.
    pub release: Option<String>,
    pub verdict: Verdict,
    pub elapsed: Duration,
    /// The doctor's report, without the `VMDOCTOR ` prefix.
    pub doctor: Vec<String>,
    pub log: PathBuf,
}

impl Outcome {
    /// `VMTEST 5.10.223: PASS in 41 s`, or FAIL with the first failing check.
    pub fn verdict_line(&self) -> String {
        let secs = self.elapsed.as_secs_f64();
        match &self.verdict {
            Verdict::Pass => format!("VMTEST {}: PASS in {secs:.0} s", self.version),
            Verdict::Fail(check) => {
                format!("VMTEST {}: FAIL in {secs:.0} s: {check}", self.version)
            }
            Verdict::None(why) => format!("VMTEST {}: FAIL in {secs:.0} s: {why}", self.version),
        }
    }
}

/// Boots `kernel` and waits for its verdict; never fails, the outcome says why.
pub fn boot(
    emulator: &Emulator,
    kernel: &Kernel,
    initramfs: &Path,
    options: BootOptions,
    log: &Path,
) -> Outcome {
    let started = Instant::now();
    let mut outcome = Outcome {
        series: kernel.series,
        version: kernel.version.clone(),
        release: None,
        verdict: Verdict::None(String::new()),
        elapsed: Duration::ZERO,
        doctor: Vec::new(),
        log: log.to_path_buf(),
    };
    if let Err(e) = watch(emulator, kernel, initramfs, options, &mut outcome) {
        outcome.verdict = Verdict::None(format!("{e:#}"));
    }
    outcome.elapsed = started.elapsed();
    outcome
}

/// The VM: no default devices (no NIC, no VGA), its serial console on stdout.
fn spawn(emulator: &Emulator, kernel: &Kernel, initramfs: &Path, smp: u32) -> Result<Child> {
    Command::new(&emulator.binary)
        .env("QEMU_MODULE_DIR", &emulator.modules)
        .arg("-L")
        .arg(&emulator.data)
        .args(["-accel", "tcg", "-m", "1024", "-no-reboot"])
        .args(["-nodefaults", "-display", "none", "-serial", "stdio"])
        .args(["-smp", &smp.to_string()])
        .arg("-kernel")
        .arg(&kernel.vmlinuz)
        .arg("-initrd")
        .arg(initramfs)
        .args(["-append", "console=ttyS0 panic=-1 quiet"])
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .with_context(|| format!("starting {}", emulator.binary.display()))
}

/// Reads the console until the verdict or the timeout, then stops the VM.
fn watch(
    emulator: &Emulator,
    kernel: &Kernel,
    initramfs: &Path,
    options: BootOptions,
    out: &mut Outcome,
) -> Result<()> {
    let mut child = spawn(emulator, kernel, initramfs, options.smp)?;
    let (tx, rx) = mpsc::channel();
    for stream in [
        child
            .stdout
            .take()
            .map(|s| Box::new(s) as Box<dyn std::io::Read + Send>),
        child
            .stderr
            .take()
            .map(|s| Box::new(s) as Box<dyn std::io::Read + Send>),
    ]
    .into_iter()
    .flatten()
    {
        let tx = tx.clone();
        std::thread::spawn(move || {
            for line in BufReader::new(stream).lines() {
                let Ok(line) = line else { break };
                if tx.send(line).is_err() {
                    break;
                }
            }
        });
    }
    drop(tx);
    let mut log = std::fs::File::create(&out.log)
        .with_context(|| format!("creating {}", out.log.display()))?;
    let started = Instant::now();
    let mut first_failure = None;
    let mut verdict = None;
    while verdict.is_none() {
        let left = options.timeout.saturating_sub(started.elapsed());
        let Ok(line) = rx.recv_timeout(left) else {
            break;
        };
        let line = line.trim_end_matches('\r');
        let _ = writeln!(log, "{line}");
        println!("    {}| {line}", kernel.series);
        let line = line.trim();
        if let Some(report) = line.strip_prefix("VMDOCTOR ") {
            out.doctor.push(report.to_owned());
        } else if let Some(rest) = line.strip_prefix("VMTEST kernel ") {
            out.release = rest.split(',').next().map(str::to_owned);
        } else if line.starts_with("check ") && line.contains(": FAIL") {
            first_failure.get_or_insert_with(|| line.to_owned());
        } else if line == "VMTEST PASS" {
            verdict = Some(Verdict::Pass);
        } else if line == "VMTEST FAIL" {
            verdict = Some(Verdict::Fail(
                first_failure
                    .clone()
                    .unwrap_or_else(|| "no check named".into()),
            ));
        }
    }
    // After its verdict the VM powers itself off; without one, do not wait for it.
    let grace = Duration::from_secs(if verdict.is_some() { 30 } else { 2 });
    let exited = stop(&mut child, grace);
    out.verdict = verdict.unwrap_or_else(|| {
        Verdict::None(if started.elapsed() >= options.timeout {
            format!("no verdict within {} s: killed", options.timeout.as_secs())
        } else {
            format!(
                "qemu ended without a verdict ({}), see {}",
                exited.map_or("killed".into(), |s| s.to_string()),
                out.log.display()
            )
        })
    });
    Ok(())
}

/// Waits up to `grace` for qemu to exit, then kills it; its status if it exited.
fn stop(child: &mut Child, grace: Duration) -> Option<std::process::ExitStatus> {
    let deadline = Instant::now() + grace;
    while Instant::now() < deadline {
        match child.try_wait() {
            Ok(Some(status)) => return Some(status),
            Ok(None) => std::thread::sleep(Duration::from_millis(200)),
            Err(_) => break,
        }
    }
    let _ = child.kill();
    let _ = child.wait();
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn verdict_lines() {
        let mut o = Outcome {
            series: "5.10",
            version: "5.10.223".into(),
            release: None,
            verdict: Verdict::Pass,
            elapsed: Duration::from_secs_f64(40.6),
            doctor: Vec::new(),
            log: PathBuf::new(),
        };
        assert_eq!(o.verdict_line(), "VMTEST 5.10.223: PASS in 41 s");
        o.verdict = Verdict::Fail("check owners: FAIL: no listener".into());
        assert_eq!(
            o.verdict_line(),
            "VMTEST 5.10.223: FAIL in 41 s: check owners: FAIL: no listener"
        );
    }
}
