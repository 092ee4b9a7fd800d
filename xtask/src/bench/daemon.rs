//! `sockq run` as the benchmark starts it, and a minimal HTTP client for its
//! `/metrics`.

use std::{
    io::{Read as _, Write as _},
    net::TcpStream,
    path::Path,
    process::{Child, Command, Stdio},
    time::{Duration, Instant},
};

use anyhow::{Context as _, Result, bail};

/// A running `sockq run`, stopped (SIGTERM, then waited for) on drop.
pub struct Daemon {
    child: Child,
    pub addr: String,
}

impl Daemon {
    /// `sockq run` with `args`, once it serves `/metrics` (its programs are attached).
    pub fn start(sockq: &Path, args: &[&str]) -> Result<Self> {
        let port = std::net::TcpListener::bind("127.0.0.1:0")?
            .local_addr()?
            .port();
        let addr = format!("127.0.0.1:{port}");
        let child = Command::new(sockq)
            .args(["run", "--metrics-addr", &addr])
            .args(args)
            .env("RUST_LOG", "error")
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .context("starting sockq run")?;
        let mut d = Self { child, addr };
        let deadline = Instant::now() + Duration::from_secs(30);
        while http_get(&d.addr, "/metrics").is_err() {
            if let Some(status) = d.child.try_wait()? {
                bail!("sockq run exited before serving /metrics: {status}");
            }
            if Instant::now() > deadline {
                bail!("sockq did not serve /metrics within 30 s");
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        Ok(d)
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }
}

impl Drop for Daemon {
    fn drop(&mut self) {
        // SAFETY: kill(2) on our own child's pid, which wait() below has not reaped.
        unsafe { libc::kill(self.child.id() as libc::pid_t, libc::SIGTERM) };
        let _ = self.child.wait();
    }
}

/// The size in bytes of the body of `GET path` sent with `headers` (each ending in
/// `\r\n`), as it came over the wire (compressed if the answer is).
pub fn http_body_bytes(addr: &str, path: &str, headers: &str) -> Result<usize> {
    http_get_bytes(addr, path, headers).map(|body| body.len())
}

/// The body of a 200 answer to `GET path` with these extra header lines, as sent
/// (still compressed if it was).
pub fn http_get_bytes(addr: &str, path: &str, headers: &str) -> Result<Vec<u8>> {
    http_get_answer(addr, path, headers).map(|(_, body)| body)
}

/// The head (lowercase) and body of a 200 answer to `GET path` with these extra
/// header lines, the body as sent.
pub fn http_get_answer(addr: &str, path: &str, headers: &str) -> Result<(String, Vec<u8>)> {
    let mut s = TcpStream::connect(addr)?;
    s.set_read_timeout(Some(Duration::from_secs(30)))?;
    write!(s, "GET {path} HTTP/1.0\r\nHost: {addr}\r\n{headers}\r\n")?;
    let mut answer = Vec::new();
    s.read_to_end(&mut answer)?;
    if !answer.starts_with(b"HTTP/1.1 200") && !answer.starts_with(b"HTTP/1.0 200") {
        bail!(
            "GET {path}: {}",
            String::from_utf8_lossy(&answer[..answer.len().min(40)])
        );
    }
    let head_end = answer
        .windows(4)
        .position(|w| w == b"\r\n\r\n")
        .with_context(|| format!("GET {path}: no whole head"))?;
    let body = answer.split_off(head_end + 4);
    Ok((String::from_utf8_lossy(&answer).to_ascii_lowercase(), body))
}

pub fn http_get(addr: &str, path: &str) -> Result<String> {
    let mut s = TcpStream::connect(addr)?;
    s.set_read_timeout(Some(Duration::from_secs(30)))?;
    write!(s, "GET {path} HTTP/1.0\r\nHost: {addr}\r\n\r\n")?;
    let mut body = String::new();
    s.read_to_string(&mut body)?;
    if !body.starts_with("HTTP/1.1 200") && !body.starts_with("HTTP/1.0 200") {
        bail!("GET {path}: {}", body.lines().next().unwrap_or_default());
    }
    Ok(body)
}
