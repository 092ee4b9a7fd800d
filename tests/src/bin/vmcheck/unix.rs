//! Unix-domain listeners on another kernel, with the host's `sockq-unixsrv` (put
//! into the VM beside the scenario program): refused connects against the EAGAINs
//! the clients saw (a listener with backlog 2 that never accepts), and accepts and
//! accept waits against the connections made (a listener that accepts everything 1 s
//! after it listens). Abstract names: the VM has no file system to bind in.

use std::{
    io::{BufRead as _, BufReader},
    path::Path,
    process::{Child, Command, Stdio},
};

use crate::{Ctx, eventually, metrics, probes::measured};

/// A running `sockq-unixsrv`, killed when dropped.
struct Program {
    child: Child,
    line: String,
}

impl Drop for Program {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn run(bin: &Path, args: &[&str]) -> Result<Program, String> {
    let mut child = Command::new(bin)
        .args(args)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .map_err(|e| format!("starting {} {args:?}: {e}", bin.display()))?;
    let stdout = child.stdout.take().ok_or("no stdout")?;
    let mut line = String::new();
    BufReader::new(stdout)
        .read_line(&mut line)
        .map_err(|e| format!("{args:?}: {e}"))?;
    Ok(Program { child, line })
}

/// `key=N` in a program's line.
fn field(line: &str, key: &str) -> Result<f64, String> {
    line.split_whitespace()
        .find_map(|w| w.strip_prefix(&format!("{key}=")))
        .and_then(|n| n.parse().ok())
        .ok_or_else(|| format!("no {key}= in {line:?}"))
}

/// The inode a `listen` program reported (`ready INODE`).
fn inode(p: &Program) -> Result<String, String> {
    p.line
        .strip_prefix("ready ")
        .map(|i| i.trim().to_owned())
        .ok_or_else(|| format!("sockq-unixsrv said {:?}", p.line))
}

pub(crate) fn unix_listeners(ctx: &Ctx) -> Result<String, String> {
    let bin = Path::new(&ctx.scenario).with_file_name("sockq-unixsrv");
    if !bin.exists() {
        return Err(format!("{} is not in the VM", bin.display()));
    }
    let refused = refused_connects(ctx, &bin)?;
    let accepted = accepts(ctx, &bin)?;
    Ok(format!("{refused}; {accepted}"))
}

fn refused_connects(ctx: &Ctx, bin: &Path) -> Result<String, String> {
    let server = run(bin, &["listen", "@sockq-vm-full", "2", "stream"])?;
    let socket = inode(&server)?;
    let clients = run(bin, &["connect", "@sockq-vm-full", "8", "stream"])?;
    let eagain = field(&clients.line, "refused")?;
    // The exit alone counts refusals (from the registers; with the entry before 5.15).
    let needs = ctx.has("sys_exit_connect");
    let labels = [("socket", socket.as_str())];
    let seen = eventually(20, || {
        let m = metrics()?;
        match measured(
            ctx,
            needs,
            &m,
            "sockq_unix_listen_refused_connects_total",
            &labels,
        )? {
            Some(n) if n != eagain => Err(format!("{n} refused, the clients saw {eagain}")),
            other => Ok(other),
        }
    })?;
    Ok(match seen {
        Some(n) => format!("{n} refused connects = the clients' {eagain} EAGAINs"),
        None => "refused connects not measured here (no connect probes); no series".into(),
    })
}

fn accepts(ctx: &Ctx, bin: &Path) -> Result<String, String> {
    let server = run(bin, &["listen", "@sockq-vm-accept", "16", "stream", "1000"])?;
    let socket = inode(&server)?;
    let clients = run(bin, &["connect", "@sockq-vm-accept", "6", "stream"])?;
    let connected = field(&clients.line, "connected")?;
    let needs = ctx.has("sk_data_ready")
        && ctx.has_any(&["unix_accept", "sys_exit_accept4", "sys_exit_accept"]);
    let labels = [("socket", socket.as_str())];
    let seen = eventually(30, || {
        let m = metrics()?;
        let Some(accepts) = measured(ctx, needs, &m, "sockq_unix_listen_accepts_total", &labels)?
        else {
            return Ok(None);
        };
        let waits = m.one("sockq_unix_accept_wait_seconds_count", &labels)?;
        let sum = m.one("sockq_unix_accept_wait_seconds_sum", &labels)?;
        if accepts != connected || waits != connected {
            return Err(format!(
                "{accepts} accepts, {waits} accept waits; {connected} connected"
            ));
        }
        Ok(Some((accepts, sum / waits)))
    })?;
    let Some((accepts, mean)) = seen else {
        return Ok("Unix accepts not measured here; no series".into());
    };
    // Each waited from its connect until the accepts began, 1 s after the listen.
    if !(0.5..=3.0).contains(&mean) {
        return Err(format!("mean accept wait {mean:.3} s, expected about 1 s"));
    }
    Ok(format!(
        "{accepts} accepts = the {connected} connections, mean wait {mean:.2} s"
    ))
}
