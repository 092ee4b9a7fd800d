//! Scenario programs for the integration tests: precise socket behaviour the tests
//! then observe through sockq and through the kernel's own accounting. Each prints
//! one line (`ready ...` or `done ...`) on stdout when its setup is complete, then
//! (where it keeps sockets open) waits until stdin is closed.
//!
//! Usage:
//!   sockq-scenario backlog ADDR BACKLOG CONNECTS  listen(BACKLOG), CONNECTS
//!                                                 non-blocking connects, never accept
//!   sockq-scenario listen ADDR                    listen and hold until stdin closes
//!   sockq-scenario serve MODE ADDR THREADS        an echo server in one of the backend
//!                                                 execution patterns: single, handoff,
//!                                                 balance, multi, reuseport; or fdpass:
//!                                                 an acceptor process passing each
//!                                                 connection (SCM_RIGHTS over a Unix
//!                                                 socket) to one of THREADS reader
//!                                                 processes, as prefork/cluster servers do;
//!                                                 fdpass-peek: the same, the acceptor
//!                                                 first peeking at the request (MSG_PEEK)
//!                                                 to choose, as protocol-routing
//!                                                 acceptors do
//!   sockq-scenario fork-listen ADDR MS            listen, fork: the child holds the
//!                                                 listener for MS ms then exits; prints
//!                                                 `ready ADDR CHILD_PID`
//!   sockq-scenario chat ADDR CONNS MSGS           CONNS connections in turn, each sending
//!                                                 MSGS messages and reading each echo
//!   sockq-scenario named-listen HEX ADDR          rename the process (comm) to the bytes
//!                                                 HEX encodes, then listen and hold
//!   sockq-scenario churn ADDR COUNT               COUNT connections: connect, accept,
//!                                                 client closes, server reads EOF, closes
//!   sockq-scenario slow-accept ADDR COUNT MS      accept each connection after MS ms;
//!                                                 ready when all are accepted, then hold
//!   sockq-scenario reuseport ADDR SHARDS CONNECTS SO_REUSEPORT group, one shard accepts
//!   sockq-scenario syn-queue ADDR CONNECTS        TCP_DEFER_ACCEPT: handshakes stay in the
//!                                                 SYN queue
//!   sockq-scenario storm ADDR SECONDS THREADS RATE  connect/accept/close storm for
//!                                                 SECONDS with THREADS clients, at most
//!                                                 RATE connections/s (0: unbounded);
//!                                                 prints `done CONNECTIONS ELAPSED_S`;
//!                                                 ADDR `@NAME`: a Unix stream listener
//!                                                 on the abstract name NAME
//!   sockq-scenario listeners COUNT                COUNT listeners on 127.0.0.1, held
//!   sockq-scenario listener-churn SECONDS         open and close listeners for SECONDS;
//!                                                 prints `done LISTENERS`
//!   sockq-scenario connect ADDR CONNECTS [FROM]   CONNECTS non-blocking connects to a
//!                                                 remote ADDR (from source address FROM),
//!                                                 held until stdin closes
//!   sockq-scenario wwr-server ADDR                per connection: read 200 bytes, reply
//!                                                 100; until stdin closes
//!   sockq-scenario wwr-client ADDR ROUNDS NODELAY write 100 bytes twice, read the 100-byte
//!                                                 reply, ROUNDS times (TCP_NODELAY if
//!                                                 NODELAY is 1); prints `done ROUNDS MS`
//!   sockq-scenario pingpong ADDR SECONDS CONNS    CONNS TCP_NODELAY connections exchanging
//!                                                 64-byte messages with an echo server of
//!                                                 its own for SECONDS; `done ROUND_TRIPS S`
//!   sockq-scenario bulk ADDR MBYTES               send MBYTES MiB in 64 KiB writes to a
//!                                                 sink of its own on ADDR; `done MBYTES`
//!   sockq-scenario many-listeners COUNT PORT      COUNT listeners on 127.0.0.1, ports
//!                                                 PORT.. (explicit ports bind in constant
//!                                                 time), RLIMIT_NOFILE raised to fit; held
//!   sockq-scenario listen-burst COUNT MS          fork COUNT children at once, each
//!                                                 listening on 127.0.0.1 for MS ms then
//!                                                 exiting; reaps them all, then prints
//!                                                 `done LISTENED` (children that listened)
//!   sockq-scenario bad-listen DIR COUNT           COUNT times: listen() on a Unix socket in
//!                                                 DIR (and accept one connection on it),
//!                                                 on a UDP socket (fails), on a closed fd
//!                                                 (fails), on a pipe (fails); `done COUNT`
//!   sockq-scenario reset-queued ADDR COUNT        COUNT clients connect and reset
//!                                                 (SO_LINGER 0) while queued; then the
//!                                                 server accepts all COUNT (Linux returns
//!                                                 them); ready when done, then hold
//!   sockq-scenario thread-accepts ADDR COUNT      COUNT threads in turn, each accepting one
//!                                                 connection (its own client's) and exiting;
//!                                                 ready when done, then hold
//!   sockq-scenario queued ADDR COUNT              listen(4096), COUNT connects left queued
//!                                                 (ADDR `@NAME`: Unix stream, abstract);
//!                                                 `ready`; on a line from stdin accepts
//!                                                 all COUNT, `done ACCEPTED`; then holds
//!                                                 everything until stdin closes
//!   sockq-scenario accept-every ADDR MS           listen(128); a thread accepts one
//!                                                 connection every MS ms (blocked in
//!                                                 accept while none is queued), keeping
//!                                                 them; until stdin closes

use std::{
    io::{Read as _, Write as _},
    net::{SocketAddr, TcpStream},
    process::ExitCode,
    time::Duration,
};

use socket2::{Domain, Protocol, SockAddr, Socket, Type};

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let result = match args
        .iter()
        .map(String::as_str)
        .collect::<Vec<_>>()
        .as_slice()
    {
        ["backlog", addr, backlog, connects] => backlog_scenario(addr, backlog, connects),
        ["listen", addr] => listen_scenario(addr),
        ["named-listen", name_hex, addr] => named_listen_scenario(name_hex, addr),
        ["serve", mode, addr, threads] => serve_scenario(mode, addr, threads),
        ["fork-listen", addr, child_ms] => fork_listen_scenario(addr, child_ms),
        ["chat", addr, conns, msgs] => chat_scenario(addr, conns, msgs),
        ["churn", addr, count] => churn_scenario(addr, count),
        ["slow-accept", addr, count, delay_ms] => slow_accept_scenario(addr, count, delay_ms),
        ["reuseport", addr, shards, connects] => reuseport_scenario(addr, shards, connects),
        ["syn-queue", addr, connects] => syn_queue_scenario(addr, connects),
        ["storm", addr, seconds, threads, rate] => storm_scenario(addr, seconds, threads, rate),
        ["listeners", count] => many_listeners_scenario(count),
        ["listener-churn", seconds] => listener_churn_scenario(seconds),
        ["connect", addr, connects] => connect_scenario(addr, connects, None),
        ["connect", addr, connects, from] => connect_scenario(addr, connects, Some(from)),
        ["wwr-server", addr] => wwr_server_scenario(addr),
        ["wwr-client", addr, rounds, nodelay] => wwr_client_scenario(addr, rounds, nodelay),
        ["bulk", addr, mbytes] => bulk_scenario(addr, mbytes),
        ["pingpong", addr, seconds, conns] => pingpong_scenario(addr, seconds, conns),
        ["many-listeners", count, port] => many_ports_scenario(count, port),
        ["listen-burst", count, ms] => listen_burst_scenario(count, ms),
        ["accept-every", addr, ms] => accept_every_scenario(addr, ms),
        ["bad-listen", dir, count] => bad_listen_scenario(dir, count),
        ["thread-accepts", addr, count] => thread_accepts_scenario(addr, count),
        ["reset-queued", addr, count] => reset_queued_scenario(addr, count),
        ["queued", addr, count] => queued_scenario(addr, count),
        _ => Err(format!("usage: see the module docs; got {args:?}")),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("sockq-scenario: {e}");
            ExitCode::FAILURE
        }
    }
}

fn parse<T: std::str::FromStr>(s: &str, what: &str) -> Result<T, String> {
    s.parse().map_err(|_| format!("bad {what}: {s}"))
}

fn listener(addr: &str, backlog: i32) -> Result<(Socket, SocketAddr), String> {
    let addr: SocketAddr = parse(addr, "address")?;
    let socket = Socket::new(Domain::for_address(addr), Type::STREAM, Some(Protocol::TCP))
        .map_err(|e| format!("socket: {e}"))?;
    socket
        .set_reuse_address(true)
        .map_err(|e| format!("SO_REUSEADDR: {e}"))?;
    socket
        .bind(&addr.into())
        .map_err(|e| format!("bind {addr}: {e}"))?;
    socket.listen(backlog).map_err(|e| format!("listen: {e}"))?;
    let local = socket
        .local_addr()
        .ok()
        .and_then(|a| a.as_socket())
        .ok_or("no local address")?;
    Ok((socket, local))
}

fn say(line: &str) {
    let mut out = std::io::stdout().lock();
    let _ = writeln!(out, "{line}");
    let _ = out.flush();
}

fn wait_for_stdin_close() {
    let mut buf = [0u8; 64];
    while let Ok(n) = std::io::stdin().read(&mut buf) {
        if n == 0 {
            break;
        }
    }
}

fn backlog_scenario(addr: &str, backlog: &str, connects: &str) -> Result<(), String> {
    let backlog: i32 = parse(backlog, "backlog")?;
    let connects: usize = parse(connects, "connect count")?;
    let (_listener, local) = listener(addr, backlog)?;
    let mut clients = Vec::new();
    for _ in 0..connects {
        let c = nonblocking_connect(local, None)?;
        clients.push(c);
    }
    // Let the handshakes that can complete do so before reporting ready.
    std::thread::sleep(Duration::from_millis(300));
    say(&format!("ready {local}"));
    wait_for_stdin_close();
    Ok(())
}

fn connect_scenario(addr: &str, connects: &str, from: Option<&str>) -> Result<(), String> {
    let addr: SocketAddr = parse(addr, "address")?;
    let connects: usize = parse(connects, "connect count")?;
    let from: Option<std::net::IpAddr> = from.map(|f| parse(f, "source address")).transpose()?;
    let mut clients = Vec::new();
    for _ in 0..connects {
        let c = nonblocking_connect(addr, from)?;
        clients.push(c);
    }
    say(&format!("ready {addr} {connects}"));
    wait_for_stdin_close();
    Ok(())
}

fn listen_scenario(addr: &str) -> Result<(), String> {
    let (_listener, local) = listener(addr, 128)?;
    say(&format!("ready {local}"));
    wait_for_stdin_close();
    Ok(())
}

/// listen() calls that must leave no TCP listener state behind in the kernel.
fn bad_listen_scenario(dir: &str, count: &str) -> Result<(), String> {
    use std::os::fd::AsRawFd as _;
    let count: usize = parse(count, "count")?;
    for i in 0..count {
        let path = std::path::Path::new(dir).join(format!("l{i}.sock"));
        let unix = std::os::unix::net::UnixListener::bind(&path)
            .map_err(|e| format!("unix bind {i}: {e}"))?;
        let client = std::os::unix::net::UnixStream::connect(&path)
            .map_err(|e| format!("unix connect {i}: {e}"))?;
        let (conn, _) = unix.accept().map_err(|e| format!("unix accept {i}: {e}"))?;
        drop((conn, client, unix));
        let _ = std::fs::remove_file(&path);
        let udp = std::net::UdpSocket::bind("127.0.0.1:0").map_err(|e| format!("udp: {e}"))?;
        // SAFETY: listen(2) on descriptors we own or on a number nobody owns; each
        // fails without side effects.
        unsafe {
            libc::listen(udp.as_raw_fd(), 16);
            libc::listen(1_000_000, 16);
        }
        let (r, w) = {
            let mut fds = [0; 2];
            // SAFETY: pipe(2) writes two descriptors into the array.
            if unsafe { libc::pipe(fds.as_mut_ptr()) } != 0 {
                return Err(format!("pipe: {}", std::io::Error::last_os_error()));
            }
            (fds[0], fds[1])
        };
        // SAFETY: as above; the pipe's descriptors are closed right after.
        unsafe {
            libc::listen(r, 16);
            libc::close(r);
            libc::close(w);
        }
    }
    say(&format!("done {count}"));
    Ok(())
}

/// Connections reset by their clients while still in the accept queue, accepted
/// afterwards all the same.
fn reset_queued_scenario(addr: &str, count: &str) -> Result<(), String> {
    let count: usize = parse(count, "count")?;
    let (listener, local) = listener(addr, 1024)?;
    let listener: std::net::TcpListener = listener.into();
    for i in 0..count {
        let client = Socket::new(Domain::IPV4, Type::STREAM, Some(Protocol::TCP))
            .map_err(|e| format!("socket {i}: {e}"))?;
        client
            .connect(&SockAddr::from(local))
            .map_err(|e| format!("connect {i}: {e}"))?;
        client
            .set_linger(Some(Duration::ZERO))
            .map_err(|e| format!("linger {i}: {e}"))?;
        drop(client); // RST while the connection waits for accept()
    }
    std::thread::sleep(Duration::from_millis(100));
    let mut kept = Vec::new();
    for i in 0..count {
        let (c, _) = listener.accept().map_err(|e| format!("accept {i}: {e}"))?;
        kept.push(c);
    }
    say(&format!("ready {local} {count}"));
    wait_for_stdin_close();
    Ok(())
}

/// Short-lived acceptor threads, as servers that recycle workers have.
fn thread_accepts_scenario(addr: &str, count: &str) -> Result<(), String> {
    let count: usize = parse(count, "count")?;
    let (listener, local) = listener(addr, 128)?;
    let listener: std::net::TcpListener = listener.into();
    let listener = std::sync::Arc::new(listener);
    let mut kept = Vec::new();
    for i in 0..count {
        let client = TcpStream::connect(local).map_err(|e| format!("connect {i}: {e}"))?;
        let l = std::sync::Arc::clone(&listener);
        let accepted = std::thread::spawn(move || l.accept().map(|(c, _)| c))
            .join()
            .map_err(|_| format!("acceptor thread {i} panicked"))?
            .map_err(|e| format!("accept {i}: {e}"))?;
        kept.push((client, accepted));
    }
    say(&format!("ready {local} {count}"));
    wait_for_stdin_close();
    Ok(())
}

fn churn_scenario(addr: &str, count: &str) -> Result<(), String> {
    let count: usize = parse(count, "count")?;
    let (listener, local) = listener(addr, 128)?;
    let listener: std::net::TcpListener = listener.into();
    for i in 0..count {
        let client = TcpStream::connect(local).map_err(|e| format!("connect {i}: {e}"))?;
        let (mut server, _) = listener.accept().map_err(|e| format!("accept {i}: {e}"))?;
        drop(client); // the client closes first: FIN_WAIT1 -> FIN_WAIT2 -> (TIME_WAIT)
        let mut buf = [0u8; 16];
        loop {
            match server.read(&mut buf) {
                Ok(0) => break,
                Ok(_) => {}
                Err(e) => return Err(format!("read {i}: {e}")),
            }
        }
        drop(server); // CLOSE_WAIT -> LAST_ACK -> CLOSE
    }
    drop(listener);
    say(&format!("done {local} {count}"));
    Ok(())
}

/// Accepts each connection DELAY_MS after it was queued: the client connects again
/// only after the previous connection was accepted, so each waits DELAY_MS.
fn slow_accept_scenario(addr: &str, count: &str, delay_ms: &str) -> Result<(), String> {
    let count: usize = parse(count, "count")?;
    let delay = Duration::from_millis(parse(delay_ms, "delay")?);
    let (listener, local) = listener(addr, 128)?;
    let listener: std::net::TcpListener = listener.into();
    let server = std::thread::spawn(move || -> Result<std::net::TcpListener, String> {
        for i in 0..count {
            // Wait until a connection is queued, then let it wait DELAY_MS.
            wait_readable(&listener).map_err(|e| format!("poll {i}: {e}"))?;
            std::thread::sleep(delay);
            let (mut conn, _) = listener.accept().map_err(|e| format!("accept {i}: {e}"))?;
            conn.write_all(b"x")
                .map_err(|e| format!("write {i}: {e}"))?;
        }
        Ok(listener)
    });
    for i in 0..count {
        let mut client = TcpStream::connect(local).map_err(|e| format!("connect {i}: {e}"))?;
        let mut byte = [0u8; 1];
        client
            .read_exact(&mut byte)
            .map_err(|e| format!("read {i}: {e}"))?;
    }
    let listener = server
        .join()
        .map_err(|_| "server thread panicked".to_owned())??;
    // Keep the listener open so its counters stay observable.
    say(&format!("ready {local} {count}"));
    wait_for_stdin_close();
    drop(listener);
    Ok(())
}

/// SHARDS listeners on ADDR with SO_REUSEPORT; only the first accepts (and keeps
/// accepting), the others never do. CONNECTS clients connect and stay connected.
fn reuseport_scenario(addr: &str, shards: &str, connects: &str) -> Result<(), String> {
    let shards: usize = parse(shards, "shards")?;
    let connects: usize = parse(connects, "connects")?;
    let addr: SocketAddr = parse(addr, "address")?;
    let mut listeners = Vec::new();
    for _ in 0..shards {
        let s = Socket::new(Domain::for_address(addr), Type::STREAM, Some(Protocol::TCP))
            .map_err(|e| format!("socket: {e}"))?;
        s.set_reuse_port(true)
            .map_err(|e| format!("SO_REUSEPORT: {e}"))?;
        s.bind(&addr.into())
            .map_err(|e| format!("bind {addr}: {e}"))?;
        s.listen(1024).map_err(|e| format!("listen: {e}"))?;
        listeners.push(s);
    }
    let busy: std::net::TcpListener = listeners.remove(0).into();
    std::thread::spawn(move || {
        let mut accepted = Vec::new();
        while let Ok((conn, _)) = busy.accept() {
            accepted.push(conn);
        }
    });
    let mut clients = Vec::new();
    for i in 0..connects {
        // Each connection from a new source port: the group's hash spreads them.
        clients.push(TcpStream::connect(addr).map_err(|e| format!("connect {i}: {e}"))?);
    }
    std::thread::sleep(Duration::from_millis(200));
    say(&format!("ready {addr} {connects}"));
    wait_for_stdin_close();
    drop(listeners);
    Ok(())
}

/// A listener with TCP_DEFER_ACCEPT: handshakes whose client sends no data stay
/// request sockets (the SYN queue) and the listener keeps retransmitting SYN-ACKs.
/// CONNECTS clients connect and never send.
fn syn_queue_scenario(addr: &str, connects: &str) -> Result<(), String> {
    let connects: usize = parse(connects, "connects")?;
    let (socket, local) = listener(addr, 128)?;
    set_defer_accept(&socket, 30)?;
    let mut clients = Vec::new();
    for i in 0..connects {
        clients.push(TcpStream::connect(local).map_err(|e| format!("connect {i}: {e}"))?);
    }
    say(&format!("ready {local} {connects}"));
    wait_for_stdin_close();
    drop(socket);
    Ok(())
}

fn set_defer_accept(socket: &Socket, seconds: libc::c_int) -> Result<(), String> {
    use std::os::fd::AsRawFd as _;
    // SAFETY: setsockopt on a valid socket with a c_int value of the right size.
    let rc = unsafe {
        libc::setsockopt(
            socket.as_raw_fd(),
            libc::IPPROTO_TCP,
            libc::TCP_DEFER_ACCEPT,
            (&raw const seconds).cast(),
            std::mem::size_of::<libc::c_int>() as libc::socklen_t,
        )
    };
    if rc != 0 {
        return Err(format!(
            "TCP_DEFER_ACCEPT: {}",
            std::io::Error::last_os_error()
        ));
    }
    Ok(())
}

/// Blocks until `listener` has a connection to accept.
fn wait_readable(listener: &std::net::TcpListener) -> std::io::Result<()> {
    use std::os::fd::AsRawFd as _;
    let mut pfd = libc::pollfd {
        fd: listener.as_raw_fd(),
        events: libc::POLLIN,
        revents: 0,
    };
    // SAFETY: one valid pollfd, infinite timeout.
    if unsafe { libc::poll(&raw mut pfd, 1, -1) } < 0 {
        return Err(std::io::Error::last_os_error());
    }
    Ok(())
}

fn storm_scenario(addr: &str, seconds: &str, threads: &str, rate: &str) -> Result<(), String> {
    use std::sync::{
        Arc,
        atomic::{AtomicBool, AtomicU64, Ordering},
    };
    let seconds: f64 = parse(seconds, "seconds")?;
    let threads: usize = parse(threads, "threads")?;
    let rate: f64 = parse(rate, "rate")?;
    let (acceptor, target) = StormTarget::listen(addr)?;
    let stop = Arc::new(AtomicBool::new(false));
    let server = {
        let stop = Arc::clone(&stop);
        std::thread::spawn(move || {
            while !stop.load(Ordering::Relaxed) {
                acceptor.accept_and_close();
            }
        })
    };
    let done = Arc::new(AtomicU64::new(0));
    let start = std::time::Instant::now();
    let deadline = start + Duration::from_secs_f64(seconds);
    let per_thread = if rate > 0.0 {
        rate / threads as f64
    } else {
        0.0
    };
    let clients: Vec<_> = (0..threads)
        .map(|_| {
            let done = Arc::clone(&done);
            let target = target.clone();
            std::thread::spawn(move || {
                let mut n = 0u64;
                loop {
                    let now = std::time::Instant::now();
                    if now >= deadline {
                        break;
                    }
                    if per_thread > 0.0 {
                        let due = start + Duration::from_secs_f64(n as f64 / per_thread);
                        if due > now {
                            std::thread::sleep(due - now);
                        }
                    }
                    if target.connect_and_close() {
                        n += 1;
                    }
                }
                done.fetch_add(n, Ordering::Relaxed);
            })
        })
        .collect();
    for c in clients {
        let _ = c.join();
    }
    let elapsed = start.elapsed().as_secs_f64();
    stop.store(true, Ordering::Relaxed);
    // Unblock the acceptor.
    target.connect_and_close();
    let _ = server.join();
    say(&format!(
        "done {} {elapsed:.3}",
        done.load(Ordering::Relaxed)
    ));
    Ok(())
}

/// Connections queued before the test starts its daemon, accepted when the test says
/// so: what a listener that predates sockq holds.
fn queued_scenario(addr: &str, count: &str) -> Result<(), String> {
    let count: usize = parse(count, "count")?;
    let (acceptor, target) = StormTarget::listen(addr)?;
    let clients: Vec<Box<dyn std::any::Any>> = (0..count)
        .map(|i| target.connect().map_err(|e| format!("connect {i}: {e}")))
        .collect::<Result<_, _>>()?;
    say("ready");
    let mut line = String::new();
    std::io::stdin()
        .read_line(&mut line)
        .map_err(|e| format!("stdin: {e}"))?;
    let accepted: Vec<Box<dyn std::any::Any>> = (0..count)
        .map(|i| acceptor.accept().map_err(|e| format!("accept {i}: {e}")))
        .collect::<Result<_, _>>()?;
    say(&format!("done {}", accepted.len()));
    wait_for_stdin_close();
    drop((clients, accepted));
    Ok(())
}

/// The storm's listener: TCP, or Unix stream on an abstract name (`@NAME`, so that
/// nothing is left in the filesystem; abstract names belong to the namespace).
enum StormAcceptor {
    Tcp(std::net::TcpListener),
    Unix(std::os::unix::net::UnixListener),
}

/// Where the storm's clients connect.
#[derive(Clone)]
enum StormTarget {
    Tcp(SocketAddr),
    Unix(std::os::unix::net::SocketAddr),
}

impl StormTarget {
    fn listen(addr: &str) -> Result<(StormAcceptor, Self), String> {
        if let Some(name) = addr.strip_prefix('@') {
            use std::os::linux::net::SocketAddrExt as _;
            let at = std::os::unix::net::SocketAddr::from_abstract_name(name)
                .map_err(|e| format!("abstract name {name:?}: {e}"))?;
            let listener = std::os::unix::net::UnixListener::bind_addr(&at)
                .map_err(|e| format!("bind @{name}: {e}"))?;
            // As the TCP storm's: std's 128 would make the clients wait for room.
            let listener = Socket::from(std::os::fd::OwnedFd::from(listener));
            listener.listen(4096).map_err(|e| format!("listen: {e}"))?;
            let listener =
                std::os::unix::net::UnixListener::from(std::os::fd::OwnedFd::from(listener));
            return Ok((StormAcceptor::Unix(listener), Self::Unix(at)));
        }
        let (listener, local) = listener(addr, 4096)?;
        Ok((StormAcceptor::Tcp(listener.into()), Self::Tcp(local)))
    }

    /// One connection, kept.
    fn connect(&self) -> std::io::Result<Box<dyn std::any::Any>> {
        Ok(match self {
            Self::Tcp(local) => Box::new(std::net::TcpStream::connect(local)?),
            Self::Unix(at) => Box::new(std::os::unix::net::UnixStream::connect_addr(at)?),
        })
    }

    /// One connection, closed at once; whether the connect succeeded.
    fn connect_and_close(&self) -> bool {
        match self {
            Self::Tcp(local) => {
                let Ok(s) = Socket::new(Domain::for_address(*local), Type::STREAM, None) else {
                    return false;
                };
                let connected = s.connect(&(*local).into()).is_ok();
                if connected {
                    // Close with RST: no TIME_WAIT, so ports never run out.
                    let _ = s.set_linger(Some(Duration::ZERO));
                }
                connected
            }
            Self::Unix(at) => std::os::unix::net::UnixStream::connect_addr(at).is_ok(),
        }
    }
}

impl StormAcceptor {
    /// One connection, kept.
    fn accept(&self) -> std::io::Result<Box<dyn std::any::Any>> {
        Ok(match self {
            Self::Tcp(l) => Box::new(l.accept()?.0),
            Self::Unix(l) => Box::new(l.accept()?.0),
        })
    }

    fn accept_and_close(&self) {
        match self {
            Self::Tcp(l) => drop(l.accept()),
            Self::Unix(l) => drop(l.accept()),
        }
    }
}

fn many_listeners_scenario(count: &str) -> Result<(), String> {
    let count: usize = parse(count, "count")?;
    let mut held = Vec::with_capacity(count);
    for i in 0..count {
        held.push(
            std::net::TcpListener::bind("127.0.0.1:0").map_err(|e| format!("listener {i}: {e}"))?,
        );
    }
    say(&format!("ready {count}"));
    wait_for_stdin_close();
    Ok(())
}

fn listener_churn_scenario(seconds: &str) -> Result<(), String> {
    let seconds: f64 = parse(seconds, "seconds")?;
    let deadline = std::time::Instant::now() + Duration::from_secs_f64(seconds);
    let mut n = 0u64;
    while std::time::Instant::now() < deadline {
        for _ in 0..100 {
            let l = std::net::TcpListener::bind("127.0.0.1:0").map_err(|e| format!("bind: {e}"))?;
            drop(l);
            n += 1;
        }
    }
    say(&format!("done {n}"));
    Ok(())
}

fn named_listen_scenario(name_hex: &str, addr: &str) -> Result<(), String> {
    let name: Vec<u8> = (0..name_hex.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(name_hex.get(i..i + 2).unwrap_or("zz"), 16))
        .collect::<Result<_, _>>()
        .map_err(|_| format!("bad hex name {name_hex}"))?;
    let mut buf = [0u8; 16];
    let n = name.len().min(15);
    buf[..n].copy_from_slice(&name[..n]);
    // SAFETY: PR_SET_NAME reads a NUL-terminated buffer of at most 16 bytes.
    if unsafe { libc::prctl(libc::PR_SET_NAME, buf.as_ptr()) } != 0 {
        return Err(format!("PR_SET_NAME: {}", std::io::Error::last_os_error()));
    }
    listen_scenario(addr)
}

/// Echoes every message of `conn` until it closes.
fn echo_until_eof(mut conn: TcpStream) {
    let mut buf = [0u8; 64];
    while let Ok(n) = conn.read(&mut buf) {
        if n == 0 || conn.write_all(&buf[..n]).is_err() {
            break;
        }
    }
}

/// Forks `n` reader processes, each echoing the connections it receives over its
/// Unix socket until EOF; returns the acceptor's ends. The readers exit when their
/// socket closes (the acceptor exits).
fn fork_fd_readers(n: usize) -> Result<Vec<std::os::unix::net::UnixStream>, String> {
    let mut ends = Vec::new();
    for _ in 0..n {
        let (ours, theirs) =
            std::os::unix::net::UnixStream::pair().map_err(|e| format!("socketpair: {e}"))?;
        // SAFETY: fork in a process with one thread so far (the readers start first);
        // the child only uses async-signal-safe calls and std I/O on its own fds.
        match unsafe { libc::fork() } {
            -1 => return Err(format!("fork: {}", std::io::Error::last_os_error())),
            0 => {
                drop(ours);
                while let Some(conn) = recv_fd(&theirs) {
                    echo_until_eof(conn);
                }
                // SAFETY: leaving the child without running the parent's destructors.
                unsafe { libc::_exit(0) };
            }
            _ => {
                drop(theirs);
                ends.push(ours);
            }
        }
    }
    Ok(ends)
}

/// The one-byte data buffer and the control buffer of a message carrying one fd.
fn rights_buffers(byte: &mut [u8; 1]) -> (libc::iovec, Vec<u8>) {
    // SAFETY: CMSG_SPACE is a pure computation.
    let space = unsafe { libc::CMSG_SPACE(std::mem::size_of::<libc::c_int>() as u32) } as usize;
    let iov = libc::iovec {
        iov_base: byte.as_mut_ptr().cast(),
        iov_len: 1,
    };
    (iov, vec![0u8; space])
}

/// A msghdr over those buffers.
fn rights_msghdr(iov: &mut libc::iovec, control: &mut [u8]) -> libc::msghdr {
    // SAFETY: msghdr is plain data; zeroed is a valid value.
    let mut msg: libc::msghdr = unsafe { std::mem::zeroed() };
    msg.msg_iov = iov;
    msg.msg_iovlen = 1;
    msg.msg_control = control.as_mut_ptr().cast();
    msg.msg_controllen = control.len() as _;
    msg
}

/// Sends `conn`'s descriptor over `to` (one byte of data, the fd as SCM_RIGHTS).
fn send_fd(to: &std::os::unix::net::UnixStream, conn: &TcpStream) -> std::io::Result<()> {
    use std::os::fd::AsRawFd as _;
    let fd = conn.as_raw_fd();
    let mut byte = [0u8; 1];
    let (mut iov, mut control) = rights_buffers(&mut byte);
    let msg = rights_msghdr(&mut iov, &mut control);
    // SAFETY: the control buffer has room for one cmsg carrying one int.
    unsafe {
        let cmsg = libc::CMSG_FIRSTHDR(&msg);
        (*cmsg).cmsg_level = libc::SOL_SOCKET;
        (*cmsg).cmsg_type = libc::SCM_RIGHTS;
        (*cmsg).cmsg_len = libc::CMSG_LEN(std::mem::size_of::<libc::c_int>() as u32) as _;
        std::ptr::write_unaligned(libc::CMSG_DATA(cmsg).cast::<libc::c_int>(), fd);
    }
    // SAFETY: msg points at live buffers for the call.
    if unsafe { libc::sendmsg(to.as_raw_fd(), &msg, 0) } < 0 {
        return Err(std::io::Error::last_os_error());
    }
    Ok(())
}

/// Receives one descriptor sent by [`send_fd`]; `None` at EOF or on error.
fn recv_fd(from: &std::os::unix::net::UnixStream) -> Option<TcpStream> {
    use std::os::fd::{AsRawFd as _, FromRawFd as _};
    let mut byte = [0u8; 1];
    let (mut iov, mut control) = rights_buffers(&mut byte);
    let mut msg = rights_msghdr(&mut iov, &mut control);
    // SAFETY: msg points at live buffers for the call.
    if unsafe { libc::recvmsg(from.as_raw_fd(), &mut msg, 0) } <= 0 {
        return None;
    }
    // SAFETY: the kernel filled the control buffer; a cmsg of SCM_RIGHTS holds an fd
    // that is now ours.
    unsafe {
        let cmsg = libc::CMSG_FIRSTHDR(&msg);
        if cmsg.is_null() || (*cmsg).cmsg_type != libc::SCM_RIGHTS {
            return None;
        }
        let fd = std::ptr::read_unaligned(libc::CMSG_DATA(cmsg).cast::<libc::c_int>());
        Some(TcpStream::from_raw_fd(fd))
    }
}

fn serve_scenario(mode: &str, addr: &str, threads: &str) -> Result<(), String> {
    use std::sync::{Arc, Mutex};
    let threads: usize = parse(threads, "threads")?;
    match mode {
        // 1: one thread listens, accepts and reads.
        "single" => {
            let (l, local) = listener(addr, 128)?;
            let l: std::net::TcpListener = l.into();
            std::thread::spawn(move || {
                while let Ok((c, _)) = l.accept() {
                    echo_until_eof(c);
                }
            });
            say(&format!("ready {local}"));
        }
        // 2: one acceptor thread hands each connection to a reader thread.
        "handoff" => {
            let (l, local) = listener(addr, 128)?;
            let l: std::net::TcpListener = l.into();
            std::thread::spawn(move || {
                while let Ok((c, _)) = l.accept() {
                    std::thread::spawn(move || echo_until_eof(c));
                }
            });
            say(&format!("ready {local}"));
        }
        // 2 across processes: the acceptor passes each descriptor to a reader process.
        "fdpass" | "fdpass-peek" => {
            let (l, local) = listener(addr, 128)?;
            let l: std::net::TcpListener = l.into();
            let readers = fork_fd_readers(threads.max(1))?;
            let peek = mode == "fdpass-peek";
            std::thread::spawn(move || {
                let mut next = 0;
                while let Ok((c, _)) = l.accept() {
                    if peek {
                        let _ = c.peek(&mut [0u8; 64]);
                    }
                    let _ = send_fd(&readers[next % readers.len()], &c);
                    next += 1;
                    drop(c);
                }
            });
            say(&format!("ready {local}"));
        }
        // 3: one acceptor; THREADS workers take turns reading messages from any
        // connection, so one connection's messages go to different workers.
        "balance" => {
            let (l, local) = listener(addr, 128)?;
            let l: std::net::TcpListener = l.into();
            let shared: Arc<Mutex<(Vec<TcpStream>, usize)>> = Arc::default();
            let acceptor_shared = Arc::clone(&shared);
            std::thread::spawn(move || {
                while let Ok((c, _)) = l.accept() {
                    let _ = c.set_nonblocking(true);
                    if let Ok(mut g) = acceptor_shared.lock() {
                        g.0.push(c);
                    }
                }
            });
            for me in 0..threads.max(2) {
                let shared = Arc::clone(&shared);
                let n = threads.max(2);
                std::thread::spawn(move || {
                    loop {
                        let handled = match shared.lock() {
                            Ok(mut g) if g.1 % n == me => {
                                let mut done = false;
                                let mut closed = Vec::new();
                                for (i, c) in g.0.iter_mut().enumerate() {
                                    let mut buf = [0u8; 64];
                                    match c.read(&mut buf) {
                                        Ok(0) => closed.push(i),
                                        Ok(k) => {
                                            let _ = c.set_nonblocking(false);
                                            let _ = c.write_all(&buf[..k]);
                                            let _ = c.set_nonblocking(true);
                                            done = true;
                                            break;
                                        }
                                        Err(_) => {}
                                    }
                                }
                                for i in closed.into_iter().rev() {
                                    g.0.swap_remove(i);
                                }
                                if done {
                                    g.1 += 1;
                                }
                                done
                            }
                            Ok(_) => false,
                            Err(_) => return,
                        };
                        if !handled {
                            std::thread::sleep(Duration::from_micros(200));
                        }
                    }
                });
            }
            say(&format!("ready {local}"));
        }
        // 4: THREADS threads accept on one socket, each reading its connections.
        "multi" => {
            let (l, local) = listener(addr, 128)?;
            let l: std::net::TcpListener = l.into();
            for _ in 0..threads.max(2) {
                let l = l.try_clone().map_err(|e| format!("clone: {e}"))?;
                std::thread::spawn(move || {
                    while let Ok((c, _)) = l.accept() {
                        echo_until_eof(c);
                    }
                });
            }
            say(&format!("ready {local}"));
        }
        // 5: THREADS SO_REUSEPORT sockets, one accepting and reading thread each.
        "reuseport" => {
            let addr: SocketAddr = parse(addr, "address")?;
            for _ in 0..threads.max(2) {
                let s = Socket::new(Domain::for_address(addr), Type::STREAM, Some(Protocol::TCP))
                    .map_err(|e| format!("socket: {e}"))?;
                s.set_reuse_port(true)
                    .map_err(|e| format!("SO_REUSEPORT: {e}"))?;
                s.bind(&addr.into())
                    .map_err(|e| format!("bind {addr}: {e}"))?;
                s.listen(128).map_err(|e| format!("listen: {e}"))?;
                let l: std::net::TcpListener = s.into();
                std::thread::spawn(move || {
                    while let Ok((c, _)) = l.accept() {
                        echo_until_eof(c);
                    }
                });
            }
            say(&format!("ready {addr}"));
        }
        other => return Err(format!("unknown mode {other}")),
    }
    wait_for_stdin_close();
    Ok(())
}

fn chat_scenario(addr: &str, conns: &str, msgs: &str) -> Result<(), String> {
    let addr: SocketAddr = parse(addr, "address")?;
    let conns: usize = parse(conns, "connections")?;
    let msgs: usize = parse(msgs, "messages")?;
    for i in 0..conns {
        let mut c = TcpStream::connect(addr).map_err(|e| format!("connect {i}: {e}"))?;
        for _ in 0..msgs {
            c.write_all(b"ping\n")
                .map_err(|e| format!("write {i}: {e}"))?;
            let mut echo = [0u8; 5];
            c.read_exact(&mut echo)
                .map_err(|e| format!("read {i}: {e}"))?;
        }
    }
    say(&format!("done {conns}"));
    Ok(())
}

fn fork_listen_scenario(addr: &str, child_ms: &str) -> Result<(), String> {
    let child_ms: u64 = parse(child_ms, "milliseconds")?;
    let (listener, local) = listener(addr, 128)?;
    // SAFETY: single-threaded at this point; the child only sleeps and exits.
    let pid = unsafe { libc::fork() };
    if pid < 0 {
        return Err(format!("fork: {}", std::io::Error::last_os_error()));
    }
    if pid == 0 {
        std::thread::sleep(Duration::from_millis(child_ms));
        drop(listener);
        // SAFETY: ends the child without running the parent's exit handlers.
        unsafe { libc::_exit(0) };
    }
    say(&format!("ready {local} {pid}"));
    wait_for_stdin_close();
    // SAFETY: reaps our own child.
    unsafe { libc::waitpid(pid, std::ptr::null_mut(), 0) };
    drop(listener);
    Ok(())
}

/// Starts a connect to `addr` (from source address `from`) without waiting for it.
fn nonblocking_connect(addr: SocketAddr, from: Option<std::net::IpAddr>) -> Result<Socket, String> {
    let c = Socket::new(Domain::for_address(addr), Type::STREAM, Some(Protocol::TCP))
        .map_err(|e| format!("socket: {e}"))?;
    if let Some(ip) = from {
        c.bind(&SocketAddr::new(ip, 0).into())
            .map_err(|e| format!("bind {ip}: {e}"))?;
    }
    c.set_nonblocking(true)
        .map_err(|e| format!("nonblocking: {e}"))?;
    match c.connect(&SockAddr::from(addr)) {
        Ok(()) => {}
        Err(e) if e.raw_os_error() == Some(libc::EINPROGRESS) => {}
        Err(e) => return Err(format!("connect: {e}")),
    }
    Ok(c)
}

/// The server side of the write-write-read exchange: a request is 200 bytes, the
/// reply 100. Replies only once the whole request is in, as request/response
/// servers do, so a held second write stalls the exchange.
fn wwr_server_scenario(addr: &str) -> Result<(), String> {
    let (socket, local) = listener(addr, 128)?;
    let listener: std::net::TcpListener = socket.into();
    std::thread::spawn(move || {
        for conn in listener.incoming() {
            let Ok(mut conn) = conn else { return };
            std::thread::spawn(move || {
                let mut request = [0u8; 200];
                while conn.read_exact(&mut request).is_ok() {
                    if conn.write_all(&[b'r'; 100]).is_err() {
                        return;
                    }
                }
            });
        }
    });
    say(&format!("ready {local}"));
    wait_for_stdin_close();
    Ok(())
}

fn wwr_client_scenario(addr: &str, rounds: &str, nodelay: &str) -> Result<(), String> {
    let addr: SocketAddr = parse(addr, "address")?;
    let rounds: usize = parse(rounds, "rounds")?;
    let mut c = TcpStream::connect(addr).map_err(|e| format!("connect: {e}"))?;
    c.set_nodelay(nodelay == "1")
        .map_err(|e| format!("TCP_NODELAY: {e}"))?;
    let start = std::time::Instant::now();
    let mut reply = [0u8; 100];
    for i in 0..rounds {
        c.write_all(&[b'a'; 100])
            .and_then(|()| c.write_all(&[b'b'; 100]))
            .and_then(|()| c.read_exact(&mut reply))
            .map_err(|e| format!("round {i}: {e}"))?;
    }
    say(&format!("done {rounds} {}", start.elapsed().as_millis()));
    Ok(())
}

fn bulk_scenario(addr: &str, mbytes: &str) -> Result<(), String> {
    let mbytes: usize = parse(mbytes, "MiB")?;
    let (socket, local) = listener(addr, 16)?;
    let listener: std::net::TcpListener = socket.into();
    let sink = std::thread::spawn(move || -> std::io::Result<u64> {
        let (mut conn, _) = listener.accept()?;
        std::io::copy(&mut conn, &mut std::io::sink())
    });
    let mut c = TcpStream::connect(local).map_err(|e| format!("connect: {e}"))?;
    let chunk = vec![b'x'; 64 * 1024];
    for i in 0..mbytes * 16 {
        c.write_all(&chunk).map_err(|e| format!("write {i}: {e}"))?;
    }
    drop(c);
    let received = sink
        .join()
        .map_err(|_| "sink panicked".to_owned())?
        .map_err(|e| format!("sink: {e}"))?;
    say(&format!("done {mbytes} {received}"));
    Ok(())
}

fn pingpong_scenario(addr: &str, seconds: &str, conns: &str) -> Result<(), String> {
    let seconds: f64 = parse(seconds, "seconds")?;
    let conns: usize = parse(conns, "connections")?;
    let (socket, local) = listener(addr, 128)?;
    let listener: std::net::TcpListener = socket.into();
    std::thread::spawn(move || {
        for conn in listener.incoming() {
            let Ok(mut conn) = conn else { return };
            let _ = conn.set_nodelay(true);
            std::thread::spawn(move || {
                let mut msg = [0u8; 64];
                while conn.read_exact(&mut msg).is_ok() && conn.write_all(&msg).is_ok() {}
            });
        }
    });
    let deadline = std::time::Instant::now() + Duration::from_secs_f64(seconds);
    let start = std::time::Instant::now();
    let clients: Vec<_> = (0..conns)
        .map(|_| {
            std::thread::spawn(move || -> Result<u64, String> {
                let mut c = TcpStream::connect(local).map_err(|e| format!("connect: {e}"))?;
                c.set_nodelay(true)
                    .map_err(|e| format!("TCP_NODELAY: {e}"))?;
                let mut msg = [7u8; 64];
                let mut n = 0u64;
                while std::time::Instant::now() < deadline {
                    c.write_all(&msg)
                        .and_then(|()| c.read_exact(&mut msg))
                        .map_err(|e| format!("round trip {n}: {e}"))?;
                    n += 1;
                }
                Ok(n)
            })
        })
        .collect();
    let mut total = 0u64;
    for client in clients {
        total += client.join().map_err(|_| "client panicked".to_owned())??;
    }
    say(&format!(
        "done {total} {:.3}",
        start.elapsed().as_secs_f64()
    ));
    Ok(())
}

/// Raises RLIMIT_NOFILE (soft and hard, as root may) to fit COUNT descriptors more.
fn raise_nofile(count: &str) -> Result<(), String> {
    let count: libc::rlim_t = parse(count, "count")?;
    let want = count + 256;
    let mut lim = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: getrlimit fills the struct we pass.
    if unsafe { libc::getrlimit(libc::RLIMIT_NOFILE, &raw mut lim) } != 0 {
        return Err(format!("getrlimit: {}", std::io::Error::last_os_error()));
    }
    if lim.rlim_cur >= want {
        return Ok(());
    }
    lim.rlim_cur = want;
    lim.rlim_max = lim.rlim_max.max(want);
    // SAFETY: setrlimit reads the struct we pass.
    if unsafe { libc::setrlimit(libc::RLIMIT_NOFILE, &raw const lim) } != 0 {
        return Err(format!(
            "setrlimit RLIMIT_NOFILE {want}: {}",
            std::io::Error::last_os_error()
        ));
    }
    Ok(())
}

fn many_ports_scenario(count: &str, first_port: &str) -> Result<(), String> {
    raise_nofile(count)?;
    let count: u16 = parse(count, "count")?;
    let first: u16 = parse(first_port, "port")?;
    let last = first
        .checked_add(count)
        .ok_or_else(|| format!("{count} ports from {first} do not fit"))?;
    let held = (first..last)
        .map(|port| {
            std::net::TcpListener::bind((std::net::Ipv4Addr::LOCALHOST, port))
                .map_err(|e| format!("listener on port {port}: {e}"))
        })
        .collect::<Result<Vec<_>, _>>()?;
    say(&format!("ready {}", held.len()));
    wait_for_stdin_close();
    Ok(())
}

/// Forks COUNT children as fast as it can; each listens on 127.0.0.1 (an ephemeral
/// port) for MS ms and exits, 0 when its listen succeeded. Reaps them all and
/// reports how many listened.
fn listen_burst_scenario(count: &str, ms: &str) -> Result<(), String> {
    let count: usize = parse(count, "count")?;
    let hold = Duration::from_millis(parse(ms, "milliseconds")?);
    let mut children = Vec::with_capacity(count);
    for i in 0..count {
        // SAFETY: single-threaded; the child only binds, sleeps and _exits.
        let pid = unsafe { libc::fork() };
        if pid < 0 {
            return Err(format!("fork {i}: {}", std::io::Error::last_os_error()));
        }
        if pid == 0 {
            let code = match std::net::TcpListener::bind("127.0.0.1:0") {
                Ok(l) => {
                    std::thread::sleep(hold);
                    drop(l);
                    0
                }
                Err(_) => 1,
            };
            // SAFETY: ends the child without running the parent's exit handlers.
            unsafe { libc::_exit(code) };
        }
        children.push(pid);
    }
    let mut listened = 0usize;
    for pid in children {
        let mut status = 0;
        // SAFETY: reaps our own child.
        if unsafe { libc::waitpid(pid, &raw mut status, 0) } == pid
            && libc::WIFEXITED(status)
            && libc::WEXITSTATUS(status) == 0
        {
            listened += 1;
        }
    }
    say(&format!("done {listened}"));
    Ok(())
}

fn accept_every_scenario(addr: &str, ms: &str) -> Result<(), String> {
    let every = Duration::from_millis(parse(ms, "milliseconds")?);
    let (socket, local) = listener(addr, 128)?;
    let listener: std::net::TcpListener = socket.into();
    std::thread::spawn(move || {
        let mut accepted = Vec::new();
        loop {
            std::thread::sleep(every);
            match listener.accept() {
                Ok((conn, _)) => accepted.push(conn),
                Err(_) => return,
            }
        }
    });
    say(&format!("ready {local}"));
    wait_for_stdin_close();
    Ok(())
}
