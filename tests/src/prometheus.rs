//! A real Prometheus (Debian's `prometheus` package) scraping a sockq every second,
//! with or without `--enable-feature=native-histograms`, queried through its HTTP API.

use std::{
    io::{Read as _, Write as _},
    net::TcpStream,
    path::PathBuf,
    process::{Child, Command, Stdio},
    time::Duration,
};

use crate::free_port;

/// A Prometheus process with its own data directory, killed and removed on drop.
pub struct Prometheus {
    child: Child,
    port: u16,
    dir: PathBuf,
}

impl Prometheus {
    /// Starts Prometheus scraping `target` (`host:port`) every second; `native`
    /// turns on native histograms (it then asks for the protobuf exposition).
    pub fn start(target: &str, native: bool) -> Self {
        let port = free_port();
        let dir = std::env::temp_dir().join(format!("sockq-prom-{}-{port}", std::process::id()));
        std::fs::create_dir_all(&dir).expect("prometheus dir");
        let config = format!(
            "global:\n  scrape_interval: 1s\nscrape_configs:\n  - job_name: sockq\n    \
             static_configs:\n      - targets: ['{target}']\n"
        );
        std::fs::write(dir.join("prometheus.yml"), config).expect("config");
        let mut command = Command::new("prometheus");
        command
            .arg(format!(
                "--config.file={}",
                dir.join("prometheus.yml").display()
            ))
            .arg(format!(
                "--storage.tsdb.path={}",
                dir.join("data").display()
            ))
            .arg(format!("--web.listen-address=127.0.0.1:{port}"))
            .stdout(Stdio::null())
            .stderr(Stdio::null());
        if native {
            command.arg("--enable-feature=native-histograms");
        }
        let child = command
            .spawn()
            .expect("prometheus (Debian package prometheus, installed by `cargo xtask setup`)");
        Self { child, port, dir }
    }

    /// Instant query through the HTTP API: the result vector.
    pub fn query(&self, query: &str) -> Result<Vec<serde_json::Value>, String> {
        let path = format!("/api/v1/query?query={}", percent_encode(query));
        let mut s = TcpStream::connect(("127.0.0.1", self.port)).map_err(|e| e.to_string())?;
        s.set_read_timeout(Some(Duration::from_secs(10)))
            .map_err(|e| e.to_string())?;
        write!(s, "GET {path} HTTP/1.0\r\nHost: localhost\r\n\r\n").map_err(|e| e.to_string())?;
        let mut response = String::new();
        s.read_to_string(&mut response).map_err(|e| e.to_string())?;
        let body = response
            .split_once("\r\n\r\n")
            .map(|(_, b)| b)
            .unwrap_or_default();
        let v: serde_json::Value =
            serde_json::from_str(body).map_err(|e| format!("{e}: {body}"))?;
        if v["status"] != "success" {
            return Err(format!("query failed: {body}"));
        }
        Ok(v["data"]["result"].as_array().cloned().unwrap_or_default())
    }

    /// The number of series `query` returns.
    pub fn series(&self, query: &str) -> Result<usize, String> {
        self.query(query).map(|r| r.len())
    }

    /// The value of the one float sample `query` returns (`None`: no series, or a
    /// NaN).
    pub fn value(&self, query: &str) -> Result<Option<f64>, String> {
        let result = self.query(query)?;
        let Some(first) = result.first() else {
            return Ok(None);
        };
        let value = first["value"][1]
            .as_str()
            .ok_or_else(|| format!("no float value in {first}"))?;
        let v: f64 = value.parse().map_err(|e| format!("{value}: {e}"))?;
        Ok((!v.is_nan()).then_some(v))
    }
}

impl Drop for Prometheus {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

fn percent_encode(s: &str) -> String {
    s.bytes()
        .map(|b| match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_' | b'.' | b'~' => {
                char::from(b).to_string()
            }
            _ => format!("%{b:02X}"),
        })
        .collect()
}
