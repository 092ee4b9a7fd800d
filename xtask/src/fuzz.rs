//! `cargo xtask fuzz`: runs every cargo-fuzz target in `fuzz/` for a bounded time.
//!
//! Installs cargo-fuzz if missing, writes the seed inputs into each target's corpus
//! (`fuzz/corpus/TARGET/seed-*`), builds the targets once, then runs each for
//! `--seconds`. Any crash fails the task; libFuzzer leaves the input that caused it
//! in `fuzz/artifacts/TARGET/`, and the message says how to reproduce it.
//!
//! cargo-fuzz needs a nightly compiler (`-Zsanitizer=address`). It uses rustup's
//! `nightly` toolchain when there is one; otherwise the default toolchain with
//! `RUSTC_BOOTSTRAP=1` (as the eBPF build does), which works because rustup's
//! stable standard library ships the sanitizer runtimes too.

use std::{
    fs,
    path::{Path, PathBuf},
    process::Command,
    time::Instant,
};

use anyhow::{Context as _, Result, bail};

use crate::step;

/// The targets, in the order they run (`fuzz/fuzz_targets/NAME.rs`).
pub const TARGETS: [&str; 6] = ["sock_diag", "btf", "cli", "http", "web_config", "config"];

/// The cargo-fuzz release installed when none is.
const CARGO_FUZZ_VERSION: &str = "0.13.2";

/// A single input running longer than this is reported as a hang (libFuzzer's
/// `-timeout`; its default is 20 minutes).
const INPUT_TIMEOUT_SECS: u64 = 30;

pub struct Options {
    /// Seconds of fuzzing per target.
    pub seconds: u64,
    /// Targets to run; all of [`TARGETS`] when empty.
    pub targets: Vec<String>,
}

pub fn run(root: &Path, options: &Options) -> Result<()> {
    let started = Instant::now();
    let targets: Vec<&str> = if options.targets.is_empty() {
        TARGETS.to_vec()
    } else {
        for t in &options.targets {
            if !TARGETS.contains(&t.as_str()) {
                bail!(
                    "unknown fuzz target `{t}`; the targets are {}",
                    TARGETS.join(", ")
                );
            }
        }
        options.targets.iter().map(String::as_str).collect()
    };
    ensure_cargo_fuzz()?;
    let toolchain = Toolchain::find();
    let fuzz_dir = root.join("fuzz");

    step("writing the seed inputs (fuzz/corpus/TARGET/seed-*)");
    write_seeds(&fuzz_dir)?;

    step(&format!(
        "building the fuzz targets ({}; the first build takes minutes)",
        toolchain.describe()
    ));
    let build_started = Instant::now();
    // `cargo fuzz build` without a target builds them all, sharing the compiled
    // sockq library; a subset is built one by one.
    let builds: Vec<Option<&str>> = if targets.len() == TARGETS.len() {
        vec![None]
    } else {
        targets.iter().copied().map(Some).collect()
    };
    for target in builds {
        let mut build = toolchain.cargo_fuzz(&fuzz_dir);
        build.arg("build").args(target);
        crate::run(&mut build).context("building the fuzz targets")?;
    }
    let build_secs = build_started.elapsed().as_secs_f64();

    let mut timings = Vec::new();
    for target in &targets {
        step(&format!(
            "fuzzing `{target}` for {} s (fuzz/fuzz_targets/{target}.rs)",
            options.seconds
        ));
        let target_started = Instant::now();
        let corpus = fuzz_dir.join("corpus").join(target);
        let mut cmd = toolchain.cargo_fuzz(&fuzz_dir);
        cmd.args(["run", target])
            .arg(&corpus)
            .arg("--")
            .arg(format!("-max_total_time={}", options.seconds))
            .arg(format!("-timeout={INPUT_TIMEOUT_SECS}"))
            // Progress lines only now and then, not one per new input.
            .arg("-print_final_stats=1")
            .arg("-verbosity=0");
        if let Err(e) = crate::run(&mut cmd) {
            bail!(
                "fuzz target `{target}` failed ({e:#}); the input that crashed it is in {}, \
                 reproduce with `cd fuzz && AYA_BUILD_SKIP=1 cargo +nightly fuzz run {target} \
                 artifacts/{target}/<file>`",
                fuzz_dir.join("artifacts").join(target).display()
            );
        }
        timings.push((*target, target_started.elapsed().as_secs_f64()));
    }

    println!("fuzz: build {build_secs:.0} s");
    for (target, secs) in &timings {
        println!("fuzz: {target}: no crash in {secs:.0} s");
    }
    println!(
        "fuzz: {} targets, no crash, {:.0} s in all",
        timings.len(),
        started.elapsed().as_secs_f64()
    );
    Ok(())
}

/// How cargo-fuzz gets a nightly compiler here.
enum Toolchain {
    /// rustup's `nightly`.
    Nightly,
    /// The default toolchain, with `RUSTC_BOOTSTRAP=1`.
    Bootstrap,
}

impl Toolchain {
    fn find() -> Self {
        let nightly = Command::new("rustup")
            .args(["run", "nightly", "rustc", "--version"])
            .output()
            .is_ok_and(|o| o.status.success());
        if nightly {
            Self::Nightly
        } else {
            Self::Bootstrap
        }
    }

    fn describe(&self) -> &'static str {
        match self {
            Self::Nightly => "rustup's nightly toolchain",
            Self::Bootstrap => "no nightly toolchain: the default one with RUSTC_BOOTSTRAP=1",
        }
    }

    /// `cargo [+nightly] fuzz` in `fuzz/`, building sockq without its eBPF object.
    fn cargo_fuzz(&self, fuzz_dir: &Path) -> Command {
        // The rustup proxy from PATH, not $CARGO: only the proxy understands `+nightly`.
        let mut cmd = Command::new("cargo");
        cmd.current_dir(fuzz_dir);
        match self {
            Self::Nightly => {
                cmd.arg("+nightly");
            }
            Self::Bootstrap => {
                cmd.env("RUSTC_BOOTSTRAP", "1");
            }
        }
        cmd.arg("fuzz");
        // The fuzz targets use the userspace library only.
        cmd.env("AYA_BUILD_SKIP", "1");
        // `cargo xtask` runs under the workspace's toolchain; let `+nightly` decide.
        cmd.env_remove("RUSTUP_TOOLCHAIN");
        cmd
    }
}

fn ensure_cargo_fuzz() -> Result<()> {
    let installed = Command::new("cargo")
        .args(["fuzz", "--version"])
        .output()
        .is_ok_and(|o| o.status.success());
    if installed {
        return Ok(());
    }
    step(&format!(
        "installing cargo-fuzz {CARGO_FUZZ_VERSION} (cargo install --locked)"
    ));
    crate::run(Command::new("cargo").args([
        "install",
        "cargo-fuzz",
        "--version",
        CARGO_FUZZ_VERSION,
        "--locked",
    ]))
}

/// Writes each target's seeds as `fuzz/corpus/TARGET/seed-NAME` (idempotent).
fn write_seeds(fuzz_dir: &Path) -> Result<()> {
    let mut seeds: Vec<(&str, String, Vec<u8>)> = Vec::new();
    for (name, bytes) in sock_diag_seeds() {
        seeds.push(("sock_diag", name.to_owned(), bytes));
    }
    seeds.push(("btf", "synthetic".to_owned(), synthetic_btf()));
    match vmlinux_prefix(Path::new("/sys/kernel/btf/vmlinux"), 4096) {
        Ok(bytes) => seeds.push(("btf", "vmlinux-prefix".to_owned(), bytes)),
        Err(e) => println!("fuzz: no vmlinux BTF seed ({e:#})"),
    }
    for (name, args) in CLI_SEEDS {
        seeds.push((
            "cli",
            (*name).to_owned(),
            args.replace(' ', "\0").into_bytes(),
        ));
    }
    for (name, request) in HTTP_SEEDS {
        seeds.push(("http", (*name).to_owned(), request.as_bytes().to_vec()));
    }
    for (name, config) in web_config_seeds(&fuzz_dir.join("../collector/src/export/http/testdata"))?
    {
        seeds.push(("web_config", name.to_owned(), config.into_bytes()));
    }
    for (name, config) in CONFIG_SEEDS {
        seeds.push(("config", (*name).to_owned(), config.as_bytes().to_vec()));
    }
    for (target, name, bytes) in seeds {
        let dir: PathBuf = fuzz_dir.join("corpus").join(target);
        fs::create_dir_all(&dir).with_context(|| format!("creating {}", dir.display()))?;
        let path = dir.join(format!("seed-{name}"));
        fs::write(&path, bytes).with_context(|| format!("writing {}", path.display()))?;
    }
    Ok(())
}

/// Command lines, arguments separated by spaces (NULs in the seed).
const CLI_SEEDS: &[(&str, &str)] = &[
    ("run", "run"),
    (
        "run-all",
        "run --metrics-addr [::1]:9750 --interval 0.5 --no-nagle --conn-track-entries 4096",
    ),
    (
        "listeners",
        "listeners --json --no-daemon --metrics-addr 127.0.0.1:1",
    ),
    ("events", "events --no-follow"),
    ("top", "top --interval 2.5"),
    ("doctor", "doctor"),
    ("help", "run --help"),
    (
        "run-filters",
        "run --config /nonexistent.toml --print-config --nagle=false --listeners-include \
         netns=web,port=8000-8999;comm=nginx* --listeners-exclude addr=10.0.0.0/8",
    ),
];

/// `sockq run --config` files: every section and key, lists of rules, and a few
/// errors (an unknown key, a bad rule, a value out of range).
const CONFIG_SEEDS: &[(&str, &str)] = &[
    (
        "all",
        "[http]\nmetrics_addr = \"[::1]:9750\"\nweb_config_file = \"web.yml\"\nno_api = true\n\
         http_header_timeout = 2.5\n\n[poll]\ninterval = 1\n\n[probes]\nnagle = false\n\
         conn_track_entries = 16384\n\n[listeners]\ninclude = [\"netns=4026531840,port=80\", \
         \"comm=nginx*\", \"addr=fd00::/8\"]\nexclude = [\"port=22\", \"netns=web\"]\n",
    ),
    ("interval", "[poll]\ninterval = 0.25\n"),
    ("unknown-key", "[http]\nmetric_addr = \"127.0.0.1:1\"\n"),
    ("bad-rule", "[listeners]\ninclude = [\"port=abc\"]\n"),
    ("out-of-range", "[probes]\nconn_track_entries = 0\n"),
];

const HTTP_SEEDS: &[(&str, &str)] = &[
    (
        "metrics",
        "GET /metrics HTTP/1.1\r\nHost: localhost\r\n\r\n",
    ),
    (
        "status-page",
        "GET / HTTP/1.1\r\nHost: localhost\r\nAccept: text/html,*/*;q=0.8\r\n\r\n",
    ),
    (
        "index-text",
        "GET / HTTP/1.1\r\nHost: localhost\r\nAccept: text/plain\r\n\r\n",
    ),
    ("index-txt", "GET /index.txt HTTP/1.0\r\n\r\n"),
    (
        "events",
        "GET /events/recent?after=0 HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n",
    ),
    (
        "api",
        "GET /api/listeners HTTP/1.1\r\nHost: localhost\r\n\r\n",
    ),
    (
        "pipelined",
        "HEAD /metrics HTTP/1.1\r\nHost: localhost\r\n\r\nGET /nope HTTP/1.1\r\nHost: localhost\r\n\r\n",
    ),
    (
        "chunked-post",
        "POST /metrics HTTP/1.1\r\nHost: localhost\r\nTransfer-Encoding: chunked\r\n\r\n4\r\nabcd\r\n0\r\n\r\n",
    ),
];

/// exporter-toolkit web configurations: its documented keys, good and bad values, and
/// one with the unit tests' certificate and key inline (so that rustls gets real PEM
/// to mutate).
fn web_config_seeds(testdata: &Path) -> Result<Vec<(&'static str, String)>> {
    let read = |name: &str| -> Result<String> {
        let path = testdata.join(name);
        fs::read_to_string(&path).with_context(|| format!("reading {}", path.display()))
    };
    let indent = |pem: String| {
        pem.lines()
            .map(|l| format!("    {l}\n"))
            .collect::<String>()
    };
    let inline = format!(
        "tls_server_config:\n  cert: |\n{}  key: |\n{}  client_auth_type: \
         VerifyClientCertIfGiven\n  client_ca: |\n{}",
        indent(read("server.pem")?),
        indent(read("server.key")?),
        indent(read("ca.pem")?)
    );
    let hash = "$2y$10$QOauhQNbBCuQDKes6eFzPeMqBSjb7Mr5DUmpZ/VcEd00UAV/LDeSi";
    Ok(vec![
        ("inline-tls", inline),
        (
            "files",
            "tls_server_config:\n  cert_file: server.crt\n  key_file: server.key\n  \
             min_version: TLS12\n  max_version: TLS13\n  cipher_suites:\n  - \
             TLS_ECDHE_RSA_WITH_AES_128_GCM_SHA256\n  - TLS_AES_128_GCM_SHA256\n  \
             prefer_server_cipher_suites: true\n  curve_preferences: [X25519, CurveP256]\n"
                .to_owned(),
        ),
        (
            "users",
            format!("basic_auth_users:\n  alice: {hash}\n  'bob': \"{hash}\"\n"),
        ),
        (
            "headers",
            "http_server_config:\n  http2: false\n  headers:\n    X-Frame-Options: deny\n    \
             X-Content-Type-Options: nosniff\n    Content-Security-Policy: \"default-src 'self'\"\n"
                .to_owned(),
        ),
        (
            "rate-limit",
            "rate_limit:\n  interval: 1m30.5s\n  burst: 10\n".to_owned(),
        ),
        (
            "anchors",
            "x: &a {cert_file: a, key_file: b}\ntls_server_config: *a\n".to_owned(),
        ),
        ("empty", String::new()),
    ])
}

/// sock_diag answers to dump request 1 (the sequence number the target uses).
fn sock_diag_seeds() -> Vec<(&'static str, Vec<u8>)> {
    const SEQ: u32 = 1;
    let done = nlmsg(libc::NLMSG_DONE as u16, 0x2, SEQ, &0i32.to_ne_bytes());
    let mut listener4 = inet_diag_msg(libc::AF_INET as u8, [127, 0, 0, 1], 9750, 77);
    // INET_DIAG_SKMEMINFO (7): u32 sk_meminfo[9], drops last.
    let meminfo: Vec<u8> = (0u32..9).flat_map(|i| (i * 10).to_ne_bytes()).collect();
    listener4.extend(rtattr(7, &meminfo));
    let mut listener6 = inet_diag_msg(libc::AF_INET6 as u8, [0; 4], 443, 78);
    // INET_DIAG_SKV6ONLY (11): u8.
    listener6.extend(rtattr(11, &[1]));
    let request = inet_diag_msg(libc::AF_INET as u8, [10, 0, 0, 1], 80, 0);
    // SOCK_DIAG_BY_FAMILY (20), NLM_F_MULTI (2).
    let multi = |payload: &[u8], seq| nlmsg(20, 0x2, seq, payload);
    let mut nlmsgerr = (-libc::EPERM).to_ne_bytes().to_vec();
    nlmsgerr.extend(nlmsg(20, 0x301, SEQ, &[]));
    vec![
        (
            "listeners",
            [multi(&listener4, SEQ), multi(&listener6, SEQ), done.clone()].concat(),
        ),
        ("request", multi(&request, SEQ)),
        ("other-seq", [multi(&listener4, 7), done.clone()].concat()),
        ("error", nlmsg(libc::NLMSG_ERROR as u16, 0, SEQ, &nlmsgerr)),
        ("done", done),
    ]
}

/// A netlink message (`struct nlmsghdr` + payload), padded to 4 bytes.
fn nlmsg(kind: u16, flags: u16, seq: u32, payload: &[u8]) -> Vec<u8> {
    let len = u32::try_from(16 + payload.len()).unwrap_or(u32::MAX);
    let mut out = Vec::new();
    out.extend(len.to_ne_bytes());
    out.extend(kind.to_ne_bytes());
    out.extend(flags.to_ne_bytes());
    out.extend(seq.to_ne_bytes());
    out.extend(4242u32.to_ne_bytes());
    out.extend(payload);
    pad4(&mut out);
    out
}

/// `struct inet_diag_msg` of a TCP listener (state 10) on `addr:port`.
fn inet_diag_msg(family: u8, addr: [u8; 4], port: u16, inode: u32) -> Vec<u8> {
    let mut out = vec![family, 10, 0, 0];
    out.extend(port.to_be_bytes()); // idiag_sport
    out.extend(0u16.to_be_bytes()); // idiag_dport
    let mut src = [0u8; 16];
    src[..4].copy_from_slice(&addr);
    out.extend(src);
    out.extend([0u8; 16]); // idiag_dst
    out.extend(0u32.to_ne_bytes()); // idiag_if
    out.extend([1, 2, 3, 4, 5, 6, 7, 8]); // idiag_cookie
    out.extend(0u32.to_ne_bytes()); // idiag_expires
    out.extend(3u32.to_ne_bytes()); // idiag_rqueue
    out.extend(128u32.to_ne_bytes()); // idiag_wqueue
    out.extend(1000u32.to_ne_bytes()); // idiag_uid
    out.extend(inode.to_ne_bytes()); // idiag_inode
    out
}

/// A netlink attribute (`struct rtattr`), padded to 4 bytes.
fn rtattr(kind: u16, payload: &[u8]) -> Vec<u8> {
    let len = u16::try_from(4 + payload.len()).unwrap_or(u16::MAX);
    let mut out = Vec::new();
    out.extend(len.to_ne_bytes());
    out.extend(kind.to_ne_bytes());
    out.extend(payload);
    pad4(&mut out);
    out
}

fn pad4(out: &mut Vec<u8>) {
    while !out.len().is_multiple_of(4) {
        out.push(0);
    }
}

/// The start of the running kernel's BTF: its header, whole type records up to
/// `budget` bytes, and the first `budget` bytes of its strings, with the header
/// rewritten to match. Real type records for the fuzzer to mutate.
fn vmlinux_prefix(path: &Path, budget: usize) -> Result<Vec<u8>> {
    let btf = fs::read(path).with_context(|| format!("reading {}", path.display()))?;
    let word = |at: usize| -> Result<usize> {
        let bytes = btf.get(at..at + 4).context("BTF shorter than its header")?;
        let value = u32::from_le_bytes(bytes.try_into()?);
        Ok(usize::try_from(value)?)
    };
    if btf.get(..2) != Some(&[0x9f, 0xeb][..]) {
        bail!("{} is not little-endian BTF", path.display());
    }
    let hdr_len = word(4)?;
    let (type_off, type_len, str_off, str_len) = (word(8)?, word(12)?, word(16)?, word(20)?);
    let types = btf
        .get(hdr_len + type_off..hdr_len + type_off + type_len)
        .context("type section out of bounds")?;
    let strings = btf
        .get(hdr_len + str_off..hdr_len + str_off + str_len)
        .context("string section out of bounds")?;
    // Walk the type records (12-byte `struct btf_type` + kind-specific data).
    let mut cut = 0;
    while cut < types.len() && cut < budget {
        let info = types
            .get(cut + 4..cut + 8)
            .map(|b| u32::from_le_bytes([b[0], b[1], b[2], b[3]]))
            .context("truncated type record")?;
        let vlen = (info & 0xffff) as usize;
        let extra = match (info >> 24) & 0x1f {
            1 | 14 | 17 => 4,             // INT, VAR, DECL_TAG
            3 => 12,                      // ARRAY
            4 | 5 | 15 | 19 => 12 * vlen, // STRUCT, UNION, DATASEC, ENUM64
            6 | 13 => 8 * vlen,           // ENUM, FUNC_PROTO
            _ => 0,
        };
        cut += 12 + extra;
    }
    let types = types.get(..cut).context("type walk past the section")?;
    // Whole strings only: cut after the last NUL within the budget.
    let end = strings
        .iter()
        .take(budget)
        .rposition(|&b| b == 0)
        .map_or(0, |at| at + 1);
    let strings = &strings[..end];
    Ok(btf_file(types, strings))
}

/// A BTF blob: 24-byte header, then the type and string sections.
fn btf_file(types: &[u8], strings: &[u8]) -> Vec<u8> {
    let len = |s: &[u8]| u32::try_from(s.len()).unwrap_or(u32::MAX);
    let mut out = vec![0x9f, 0xeb, 1, 0];
    out.extend(24u32.to_le_bytes()); // hdr_len
    out.extend(0u32.to_le_bytes()); // type_off
    out.extend(len(types).to_le_bytes());
    out.extend(len(types).to_le_bytes()); // str_off
    out.extend(len(strings).to_le_bytes());
    out.extend(types);
    out.extend(strings);
    out
}

/// A small BTF with every struct, member and enumerator sockq resolves (at made-up
/// offsets), so that the fuzzer starts from input that reaches every lookup.
fn synthetic_btf() -> Vec<u8> {
    let mut b = BtfBuilder::default();
    let int = b.int("int", 4);
    let u8_ = b.int("unsigned char", 1);
    let void_ptr = b.push(0, 2, 0, int, &[]); // PTR
    let int_const = b.push(0, 10, 0, int, &[]); // CONST
    // possible_net_t: a typedef of a struct holding `net`.
    let net_holder = b.composite(false, None, 8, &[("net", void_ptr, 0, 0)]);
    let possible_net = b.typedef("possible_net_t", net_holder);
    // skc_num in an anonymous struct in an anonymous union, as in the kernel.
    let ports = b.composite(
        false,
        None,
        4,
        &[("skc_dport", int, 0, 0), ("skc_num", int, 16, 0)],
    );
    let portpair = b.composite(
        true,
        None,
        4,
        &[("skc_portpair", int, 0, 0), ("", ports, 0, 0)],
    );
    let sock_common = b.composite(
        false,
        Some("sock_common"),
        136,
        &[
            ("skc_daddr", int, 0, 0),
            ("skc_rcv_saddr", int, 32, 0),
            ("", portpair, 96, 0),
            ("skc_family", int, 128, 0),
            ("skc_state", u8_, 144, 0),
            ("skc_net", possible_net, 192, 0),
            ("skc_v6_daddr", int, 256, 0),
            ("skc_v6_rcv_saddr", int, 384, 0),
        ],
    );
    let sock = b.composite(
        false,
        Some("sock"),
        760,
        &[
            ("__sk_common", sock_common, 0, 0),
            ("sk_protocol", int, 2048, 0),
            ("sk_ack_backlog", int_const, 2080, 0),
            ("sk_max_ack_backlog", int, 2112, 0),
            ("sk_socket", void_ptr, 2176, 0),
        ],
    );
    let ns_common = b.composite(false, Some("ns_common"), 24, &[("inum", int, 128, 0)]);
    b.composite(false, Some("net"), 4096, &[("ns", ns_common, 1024, 0)]);
    let socket = b.composite(false, Some("socket"), 128, &[("sk", void_ptr, 256, 0)]);
    let inode = b.composite(false, Some("inode"), 600, &[("i_ino", int, 512, 0)]);
    b.composite(
        false,
        Some("socket_alloc"),
        768,
        &[("socket", socket, 0, 0), ("vfs_inode", inode, 1024, 0)],
    );
    let accept_queue = b.composite(
        false,
        Some("request_sock_queue"),
        80,
        &[("rskq_accept_tail", void_ptr, 192, 0)],
    );
    let timer_list = b.composite(
        false,
        Some("timer_list"),
        40,
        &[("expires", int, 128, 0), ("function", void_ptr, 192, 0)],
    );
    let icsk_ack = b.composite(false, None, 32, &[("pending", u8_, 8, 0)]);
    let icsk = b.composite(
        false,
        Some("inet_connection_sock"),
        1400,
        &[
            ("icsk_inet", sock, 0, 0),
            ("icsk_accept_queue", accept_queue, 8192, 0),
            ("icsk_delack_timer", timer_list, 9216, 0),
            ("icsk_ack", icsk_ack, 10240, 0),
        ],
    );
    let minmax_sample = b.composite(
        false,
        Some("minmax_sample"),
        8,
        &[("t", int, 0, 0), ("v", int, 32, 0)],
    );
    b.composite(
        false,
        Some("tcp_sock"),
        2200,
        &[
            ("inet_conn", icsk, 0, 0),
            ("nonagle", u8_, 12004, 4),
            ("write_seq", int, 12032, 0),
            ("snd_nxt", int, 12064, 0),
            ("snd_una", int, 12096, 0),
            ("snd_sml", int, 12128, 0),
            ("packets_out", int, 12160, 0),
            ("rtt_min", minmax_sample, 12224, 0),
        ],
    );
    b.composite(false, Some("request_sock"), 80, &[("sk", void_ptr, 384, 0)]);
    b.composite(
        false,
        Some("task_struct"),
        9000,
        &[("files", void_ptr, 16384, 0)],
    );
    b.composite(
        false,
        Some("files_struct"),
        700,
        &[("fdt", void_ptr, 256, 0)],
    );
    b.composite(
        false,
        Some("fdtable"),
        56,
        &[("max_fds", int, 0, 0), ("fd", void_ptr, 64, 0)],
    );
    b.composite(
        false,
        Some("file"),
        232,
        &[("private_data", void_ptr, 1600, 0)],
    );
    b.composite(false, Some("sk_buff"), 232, &[("cb", int, 320, 0)]);
    b.composite(
        false,
        Some("tcp_skb_cb"),
        48,
        &[
            ("seq", int, 0, 0),
            ("end_seq", int, 32, 0),
            ("ack_seq", int, 288, 0),
        ],
    );
    b.enumeration(
        "inet_csk_ack_state_t",
        &[("ICSK_ACK_SCHED", 1), ("ICSK_ACK_TIMER", 2)],
    );
    b.enumeration(
        "skb_drop_reason",
        &[
            ("SKB_NOT_DROPPED_YET", 0),
            ("SKB_DROP_REASON_NOT_SPECIFIED", 2),
            ("SKB_DROP_REASON_TCP_LISTEN_OVERFLOW", 40),
        ],
    );
    b.finish()
}

/// Writes BTF type records (`struct btf_type`, kernel `include/uapi/linux/btf.h`).
#[derive(Default)]
struct BtfBuilder {
    types: Vec<u8>,
    /// Starts with the empty name at offset 0.
    strings: Vec<u8>,
    count: u32,
}

impl BtfBuilder {
    fn name(&mut self, name: &str) -> u32 {
        if self.strings.is_empty() {
            self.strings.push(0);
        }
        if name.is_empty() {
            return 0;
        }
        let offset = u32::try_from(self.strings.len()).unwrap_or(u32::MAX);
        self.strings.extend(name.as_bytes());
        self.strings.push(0);
        offset
    }

    /// One record: name offset, info (`kind << 24 | kflag << 31 | vlen`), size or
    /// type, then the kind's extra words. Returns the new type's id.
    fn record(&mut self, name_off: u32, info: u32, size_or_type: u32, extra: &[u32]) -> u32 {
        for word in [name_off, info, size_or_type].iter().chain(extra) {
            self.types.extend(word.to_le_bytes());
        }
        self.count += 1;
        self.count
    }

    /// A record of `kind` with `vlen` entries in `extra`.
    fn push(
        &mut self,
        name_off: u32,
        kind: u32,
        vlen: u32,
        size_or_type: u32,
        extra: &[u32],
    ) -> u32 {
        self.record(name_off, (kind << 24) | vlen, size_or_type, extra)
    }

    fn typedef(&mut self, name: &str, target: u32) -> u32 {
        let name_off = self.name(name);
        self.push(name_off, 8, 0, target, &[])
    }

    fn int(&mut self, name: &str, size: u32) -> u32 {
        let name_off = self.name(name);
        self.push(name_off, 1, 0, size, &[size * 8])
    }

    /// A struct (or union), members as (name, type, bit offset, bitfield bits).
    fn composite(
        &mut self,
        union: bool,
        name: Option<&str>,
        size: u32,
        members: &[(&str, u32, u32, u32)],
    ) -> u32 {
        let name_off = self.name(name.unwrap_or(""));
        let kflag = members.iter().any(|m| m.3 != 0);
        let mut extra = Vec::new();
        for &(member, ty, bit_offset, bits) in members {
            extra.push(self.name(member));
            extra.push(ty);
            extra.push(if kflag {
                (bits << 24) | bit_offset
            } else {
                bit_offset
            });
        }
        let kind = if union { 5 } else { 4 };
        let vlen = u32::try_from(members.len()).unwrap_or(0);
        self.record(
            name_off,
            (u32::from(kflag) << 31) | (kind << 24) | vlen,
            size,
            &extra,
        )
    }

    fn enumeration(&mut self, name: &str, values: &[(&str, i32)]) -> u32 {
        let name_off = self.name(name);
        let mut extra = Vec::new();
        for &(enumerator, value) in values {
            extra.push(self.name(enumerator));
            extra.push(value.cast_unsigned());
        }
        let vlen = u32::try_from(values.len()).unwrap_or(0);
        self.push(name_off, 6, vlen, 4, &extra)
    }

    fn finish(mut self) -> Vec<u8> {
        self.name("");
        btf_file(&self.types, &self.strings)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn synthetic_btf_is_well_formed() {
        let btf = synthetic_btf();
        assert_eq!(&btf[..4], &[0x9f, 0xeb, 1, 0]);
        let word = |at: usize| u32::from_le_bytes(btf[at..at + 4].try_into().unwrap()) as usize;
        assert_eq!(24 + word(12) + word(20), btf.len());
        // The strings section starts with the empty name and ends with a NUL.
        assert_eq!(btf[24 + word(16)], 0);
        assert_eq!(btf.last(), Some(&0));
    }

    #[test]
    fn vmlinux_prefix_is_cut_at_a_record() {
        let Ok(btf) = vmlinux_prefix(Path::new("/sys/kernel/btf/vmlinux"), 4096) else {
            return;
        };
        let word = |at: usize| u32::from_le_bytes(btf[at..at + 4].try_into().unwrap()) as usize;
        assert_eq!(24 + word(12) + word(20), btf.len());
        assert!(
            word(12) >= 4096 && word(12) < 4096 + 12 * 1024,
            "{}",
            word(12)
        );
    }

    #[test]
    fn sock_diag_seeds_have_consistent_lengths() {
        for (name, bytes) in sock_diag_seeds() {
            let mut at = 0;
            while at < bytes.len() {
                let len = u32::from_ne_bytes(bytes[at..at + 4].try_into().unwrap()) as usize;
                assert!(len >= 16, "{name}");
                at += len.next_multiple_of(4);
            }
            assert_eq!(at, bytes.len(), "{name}");
        }
    }
}
