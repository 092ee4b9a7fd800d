//! Unix-domain scenario programs for `tests/unix.rs`. Each prints one line when its
//! setup is complete, then holds its sockets until stdin is closed.
//!
//! Usage (a NAME starting with `@` is abstract: the rest, after a NUL byte; NAME may
//! be given as `hex:...` to carry any bytes):
//!   sockq-unixsrv listen NAME BACKLOG TYPE [MS]
//!                                            bind, listen(BACKLOG); never accept, or
//!                                            (MS given) accept everything from MS ms
//!                                            on; TYPE stream or seqpacket; prints
//!                                            `ready INODE`
//!   sockq-unixsrv connect NAME COUNT TYPE    COUNT non-blocking connects, one after
//!                                            another; prints `done refused=R
//!                                            connected=C other=O`
//!   sockq-unixsrv storm NAME COUNT THREADS   listen(4096) on a stream socket, accept and
//!                                            close at once, while THREADS threads
//!                                            connect and close COUNT connections in
//!                                            all (the slab hands each new socket a
//!                                            freed one's address); when all are
//!                                            accepted (or after 10 s), prints `done
//!                                            INODE accepted=A connected=C`
//!   sockq-unixsrv block-connect NAME TYPE [TIMEOUT_MS]
//!                                            one blocking connect (SO_SNDTIMEO
//!                                            TIMEOUT_MS if given); prints `done
//!                                            waited_us=US ok=0|1 eagain=0|1`

use std::{io::Read as _, os::fd::AsRawFd as _, process::ExitCode, time::Instant};

use socket2::{Domain, SockAddr, Socket, Type};

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    let result = match args.as_slice() {
        ["listen", name, backlog, kind] => listen(name, backlog, kind, None),
        ["listen", name, backlog, kind, ms] => listen(name, backlog, kind, Some(ms)),
        ["connect", name, count, kind] => connect(name, count, kind),
        ["storm", name, count, threads] => storm(name, count, threads),
        ["block-connect", name, kind] => block_connect(name, kind, None),
        ["block-connect", name, kind, ms] => block_connect(name, kind, Some(ms)),
        _ => Err(format!("usage: see the module docs; got {args:?}")),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("sockq-unixsrv: {e}");
            ExitCode::FAILURE
        }
    }
}

/// The raw `sun_path` bytes NAME stands for.
fn name_bytes(name: &str) -> Result<Vec<u8>, String> {
    let raw = if let Some(hex) = name.strip_prefix("hex:") {
        (0..hex.len())
            .step_by(2)
            .map(|i| {
                hex.get(i..i + 2)
                    .and_then(|h| u8::from_str_radix(h, 16).ok())
                    .ok_or_else(|| format!("bad hex {hex:?}"))
            })
            .collect::<Result<Vec<u8>, String>>()?
    } else {
        name.as_bytes().to_vec()
    };
    Ok(match raw.split_first() {
        Some((b'@', rest)) => std::iter::once(0).chain(rest.iter().copied()).collect(),
        _ => raw,
    })
}

fn address(name: &str) -> Result<SockAddr, String> {
    let raw = name_bytes(name)?;
    // SAFETY: the closure fills a zeroed sockaddr_storage with a sockaddr_un whose
    // path fits (checked), and returns its length.
    let ((), addr) = unsafe {
        SockAddr::try_init(|storage, len| {
            let un = storage.cast::<libc::sockaddr_un>();
            (*un).sun_family = libc::AF_UNIX as libc::sa_family_t;
            if raw.len() > (*un).sun_path.len() {
                return Err(std::io::Error::other("name too long"));
            }
            for (slot, b) in (*un).sun_path.iter_mut().zip(&raw) {
                *slot = *b as libc::c_char;
            }
            // Path names get their NUL counted, as the kernel's own length does;
            // abstract names are exactly their bytes.
            let path_len = if raw.first() == Some(&0) {
                raw.len()
            } else {
                raw.len() + 1
            };
            *len = (std::mem::size_of::<libc::sa_family_t>() + path_len) as libc::socklen_t;
            Ok(())
        })
    }
    .map_err(|e| format!("address {name:?}: {e}"))?;
    Ok(addr)
}

fn socket_type(kind: &str) -> Result<Type, String> {
    match kind {
        "stream" => Ok(Type::STREAM),
        "seqpacket" => Ok(Type::SEQPACKET),
        _ => Err(format!("type {kind:?}: stream or seqpacket")),
    }
}

fn wait_for_stdin_close() {
    let mut sink = Vec::new();
    let _ = std::io::stdin().read_to_end(&mut sink);
}

fn listen(name: &str, backlog: &str, kind: &str, accept_after: Option<&str>) -> Result<(), String> {
    let backlog: i32 = backlog.parse().map_err(|e| format!("backlog: {e}"))?;
    let accept_after = accept_after
        .map(|ms| ms.parse::<u64>().map_err(|e| format!("ms: {e}")))
        .transpose()?;
    let socket = Socket::new(Domain::UNIX, socket_type(kind)?, None).map_err(|e| e.to_string())?;
    socket
        .bind(&address(name)?)
        .map_err(|e| format!("bind {name:?}: {e}"))?;
    socket.listen(backlog).map_err(|e| format!("listen: {e}"))?;
    println!("ready {}", socket_inode(&socket)?);
    if let Some(ms) = accept_after {
        std::thread::spawn(move || {
            std::thread::sleep(std::time::Duration::from_millis(ms));
            let mut held = Vec::new();
            while let Ok((conn, _)) = socket.accept() {
                held.push(conn);
            }
        });
    } else {
        // Keep the listener open until stdin closes.
        std::mem::forget(socket);
    }
    wait_for_stdin_close();
    Ok(())
}

fn storm(name: &str, count: &str, threads: &str) -> Result<(), String> {
    use std::sync::{
        Arc,
        atomic::{AtomicU64, Ordering},
    };
    let count: u64 = count.parse().map_err(|e| format!("count: {e}"))?;
    let threads: u64 = threads.parse().map_err(|e| format!("threads: {e}"))?;
    let addr = address(name)?;
    let socket = Socket::new(Domain::UNIX, Type::STREAM, None).map_err(|e| e.to_string())?;
    socket
        .bind(&addr)
        .map_err(|e| format!("bind {name:?}: {e}"))?;
    socket.listen(4096).map_err(|e| format!("listen: {e}"))?;
    let inode = socket_inode(&socket)?;
    let accepted = Arc::new(AtomicU64::new(0));
    {
        let accepted = Arc::clone(&accepted);
        std::thread::spawn(move || {
            while let Ok((conn, _)) = socket.accept() {
                drop(conn);
                accepted.fetch_add(1, Ordering::SeqCst);
            }
        });
    }
    let connected = Arc::new(AtomicU64::new(0));
    let clients: Vec<_> = (0..threads)
        .map(|t| {
            let (addr, connected) = (addr.clone(), Arc::clone(&connected));
            let share = count / threads + u64::from(t < count % threads);
            std::thread::spawn(move || {
                for _ in 0..share {
                    let Ok(client) = Socket::new(Domain::UNIX, Type::STREAM, None) else {
                        continue;
                    };
                    if client.connect(&addr).is_ok() {
                        connected.fetch_add(1, Ordering::SeqCst);
                    }
                }
            })
        })
        .collect();
    for c in clients {
        let _ = c.join();
    }
    // Every connect returned once its connection was queued; wait for the acceptor.
    let connected = connected.load(Ordering::SeqCst);
    let deadline = Instant::now() + std::time::Duration::from_secs(10);
    while accepted.load(Ordering::SeqCst) < connected && Instant::now() < deadline {
        std::thread::sleep(std::time::Duration::from_millis(10));
    }
    println!(
        "done {inode} accepted={} connected={connected}",
        accepted.load(Ordering::SeqCst)
    );
    wait_for_stdin_close();
    Ok(())
}

fn socket_inode(socket: &Socket) -> Result<String, String> {
    let fd = socket.as_raw_fd();
    let link = std::fs::read_link(format!("/proc/self/fd/{fd}")).map_err(|e| e.to_string())?;
    Ok(link
        .to_string_lossy()
        .trim_start_matches("socket:[")
        .trim_end_matches(']')
        .to_owned())
}

fn connect(name: &str, count: &str, kind: &str) -> Result<(), String> {
    let count: usize = count.parse().map_err(|e| format!("count: {e}"))?;
    let addr = address(name)?;
    let (mut refused, mut other) = (0, 0);
    let mut connected = Vec::new();
    for _ in 0..count {
        let socket =
            Socket::new(Domain::UNIX, socket_type(kind)?, None).map_err(|e| e.to_string())?;
        socket.set_nonblocking(true).map_err(|e| e.to_string())?;
        match socket.connect(&addr) {
            Ok(()) => connected.push(socket),
            Err(e) if e.raw_os_error() == Some(libc::EAGAIN) => refused += 1,
            Err(e) => {
                eprintln!("connect: {e}");
                other += 1;
            }
        }
    }
    println!(
        "done refused={refused} connected={} other={other}",
        connected.len()
    );
    wait_for_stdin_close();
    Ok(())
}

fn block_connect(name: &str, kind: &str, timeout_ms: Option<&str>) -> Result<(), String> {
    let addr = address(name)?;
    let socket = Socket::new(Domain::UNIX, socket_type(kind)?, None).map_err(|e| e.to_string())?;
    if let Some(ms) = timeout_ms {
        let ms: u64 = ms.parse().map_err(|e| format!("timeout: {e}"))?;
        socket
            .set_write_timeout(Some(std::time::Duration::from_millis(ms)))
            .map_err(|e| e.to_string())?;
    }
    let started = Instant::now();
    let result = socket.connect(&addr);
    let waited = started.elapsed().as_micros();
    let eagain = result
        .as_ref()
        .err()
        .is_some_and(|e| e.raw_os_error() == Some(libc::EAGAIN));
    println!(
        "done waited_us={waited} ok={} eagain={}",
        u8::from(result.is_ok()),
        u8::from(eagain)
    );
    wait_for_stdin_close();
    Ok(())
}
