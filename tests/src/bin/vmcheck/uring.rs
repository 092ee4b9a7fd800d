//! io_uring accepts on another kernel: the liburing server of the host's
//! `tests/tests/io_uring.rs` (`uring_server`, put into the VM beside the scenario
//! program by `cargo xtask vm-test`) accepts each connection 100 ms after its
//! handshake, single-shot, multishot and into direct descriptors, and says how many
//! it accepted. Where fexit on `inet_csk_accept` attached, every mode must be counted
//! exactly (accepts and accept waits); where only the io_uring tracepoints did, the
//! single-shot and multishot ones. A mode the kernel lacks (the server sets up its
//! ring with `IORING_SETUP_DEFER_TASKRUN`, 6.1+) is reported as such.

use std::{
    io::{BufRead as _, BufReader, Read as _},
    path::Path,
    process::{Child, Command, Stdio},
};

use crate::{Ctx, eventually, metrics};

const URING_PROBES: &[&str] = &[
    "io_uring_complete",
    "io_uring_submit_req",
    "io_uring_task_add",
];

/// The server, killed when dropped (its stdin closing ends it too).
struct Server(Child);

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

pub(crate) fn io_uring(ctx: &Ctx) -> Result<String, String> {
    let bin = Path::new(&ctx.scenario).with_file_name("uring_server");
    if !bin.exists() {
        return Err(format!("{} is not in the VM", bin.display()));
    }
    let fexit = ctx.has("inet_csk_accept");
    let tracepoints = ctx.has_all(URING_PROBES);
    let mut seen = Vec::new();
    for (mode, port) in [("single", 7021), ("multi", 7022), ("direct", 7023)] {
        let counted = fexit || (tracepoints && mode != "direct");
        seen.push(format!("{mode}: {}", one_mode(&bin, mode, port, counted)?));
    }
    Ok(seen.join("; "))
}

/// Runs the server in `mode` on `port`; when sockq should count its accepts
/// (`counted`), checks them and their waits against what the server accepted.
fn one_mode(bin: &Path, mode: &str, port: u16, counted: bool) -> Result<String, String> {
    let addr = format!("127.0.0.1:{port}");
    let mut child = Command::new(bin)
        .args([mode, &addr, "6", "100"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .map_err(|e| format!("starting {}: {e}", bin.display()))?;
    let stdout = child.stdout.take().ok_or("no stdout")?;
    let mut stderr = child.stderr.take().ok_or("no stderr")?;
    let server = Server(child);
    let mut line = String::new();
    BufReader::new(stdout)
        .read_line(&mut line)
        .map_err(|e| format!("reading uring_server: {e}"))?;
    let Some(accepted) = line
        .split_whitespace()
        .find_map(|w| w.strip_prefix("accepted="))
        .and_then(|n| n.parse::<f64>().ok())
    else {
        drop(server);
        let mut why = String::new();
        let _ = stderr.read_to_string(&mut why);
        // The kernel refusing the ring's set-up or the operation (EINVAL) is the
        // kernel's limit; anything else is a broken check.
        if why.contains("Invalid argument") {
            return Ok(format!("this kernel cannot run it ({})", why.trim()));
        }
        return Err(format!(
            "uring_server {mode} said {line:?}, {:?}",
            why.trim()
        ));
    };
    if !counted {
        return Ok(format!("{accepted} accepted, not counted here (no fexit)"));
    }
    let listener = [("listen_addr", addr.as_str())];
    let (accepts, mean_wait) = eventually(30, || {
        let m = metrics()?;
        let accepts = m.one("sockq_listen_accepts_total", &listener)?;
        let waits = m.one("sockq_accept_wait_seconds_count", &listener)?;
        let sum = m.one("sockq_accept_wait_seconds_sum", &listener)?;
        if accepts != accepted || waits != accepted {
            return Err(format!(
                "{accepts} accepts and {waits} accept waits, the server accepted {accepted}"
            ));
        }
        Ok((accepts, sum / waits))
    })?;
    // Each connection waited DELAY_MS (100 ms) in the queue, at least.
    if !(0.095..0.5).contains(&mean_wait) {
        return Err(format!(
            "mean accept wait {mean_wait:.3} s, expected about 0.1 s"
        ));
    }
    drop(server);
    Ok(format!(
        "{accepts} accepts = the server's, mean wait {:.0} ms",
        mean_wait * 1e3
    ))
}
