//! The SYN queue: handshakes whose SYN-ACKs go nowhere, sent as raw SYNs from an
//! address /init routes to the loopback device, against the request sockets the
//! kernel lists in /proc/net/tcp, and the listener's SYN-ACK retransmits against
//! TCPSynRetrans.

use crate::{Ctx, eventually, kernel_counter, measured, metrics, proc_net_tcp, scenario};

/// Where the SYN-queue check's handshakes come from; /init routes 10.9.9.0/24 to
/// the loopback device, so the listener's SYN-ACKs leave and reach no one.
const FAKE_CLIENT: [u8; 4] = [10, 9, 9, 10];

pub(crate) fn syn_queue(ctx: &Ctx) -> Result<String, String> {
    const SYNS: u16 = 4;
    let routes = std::fs::read_to_string("/proc/net/route").map_err(|e| e.to_string())?;
    if !routes
        .lines()
        .any(|l| l.starts_with("lo\t0009090A") || l.starts_with("lo 0009090A"))
    {
        return Err("no route 10.9.9.0/24 dev lo (the VM's /init adds it)".into());
    }
    let _listener = scenario(&ctx.scenario, &["listen", "127.0.0.1:7016"])?;
    let listener = [("listen_addr", "127.0.0.1:7016")];
    let retrans_base = kernel_counter("/proc/net/netstat", "TcpExt.TCPSynRetrans")?;
    send_syns(7016, SYNS)?;
    let requests = || -> Result<usize, String> {
        Ok(proc_net_tcp(7016)?
            .iter()
            .filter(|(s, _)| *s == 0x03)
            .count())
    };
    eventually(15, || {
        let before = requests()?;
        let sockq = metrics()?.one("sockq_listen_syn_queue_length", &listener)?;
        let after = requests()?;
        if before != after || sockq != before as f64 || before != usize::from(SYNS) {
            return Err(format!(
                "sockq SYN queue {sockq}, /proc/net/tcp SYN_RECV {before}/{after}, sent {SYNS}"
            ));
        }
        Ok(())
    })?;
    // The first SYN-ACK retransmit comes after a second, the next two after that.
    let needs = ctx.has("tcp_retransmit_synack");
    let retrans = eventually(20, || {
        let before = kernel_counter("/proc/net/netstat", "TcpExt.TCPSynRetrans")? - retrans_base;
        let m = metrics()?;
        let after = kernel_counter("/proc/net/netstat", "TcpExt.TCPSynRetrans")? - retrans_base;
        let family = "sockq_listen_synack_retransmits_total";
        let Some(sockq) = measured(ctx, needs, &m, family, &listener)? else {
            return Ok(None);
        };
        if before != after || sockq != after as f64 || after < u64::from(2 * SYNS) {
            return Err(format!(
                "sockq {sockq} SYN-ACK retransmits, TCPSynRetrans grew by {before}/{after}"
            ));
        }
        Ok(Some(after))
    })?;
    let retrans = retrans.map_or(
        "SYN-ACK retransmits not measured here, not exported".into(),
        |n| format!("{n} SYN-ACK retransmits = TCPSynRetrans growth"),
    );
    Ok(format!(
        "{SYNS} half-open handshakes = SYN_RECV in /proc/net/tcp; {retrans}"
    ))
}

/// Sends `count` SYNs from FAKE_CLIENT to 127.0.0.1:`port` through a raw socket.
fn send_syns(port: u16, count: u16) -> Result<(), String> {
    // SAFETY: plain socket(2); the descriptor is closed below.
    let fd = unsafe { libc::socket(libc::AF_INET, libc::SOCK_RAW, libc::IPPROTO_RAW) };
    if fd < 0 {
        return Err(format!("raw socket: {}", std::io::Error::last_os_error()));
    }
    let dst = [127, 0, 0, 1];
    let to = libc::sockaddr_in {
        sin_family: libc::AF_INET as libc::sa_family_t,
        sin_port: 0,
        sin_addr: libc::in_addr {
            s_addr: u32::from_ne_bytes(dst),
        },
        sin_zero: [0; 8],
    };
    let mut result = Ok(());
    for i in 0..count {
        let packet = syn_packet(FAKE_CLIENT, dst, 41000 + i, port);
        // SAFETY: the buffer and the address are valid for the lengths given.
        let sent = unsafe {
            libc::sendto(
                fd,
                packet.as_ptr().cast(),
                packet.len(),
                0,
                (&raw const to).cast(),
                std::mem::size_of::<libc::sockaddr_in>() as libc::socklen_t,
            )
        };
        if sent < 0 {
            result = Err(format!("sendto: {}", std::io::Error::last_os_error()));
            break;
        }
    }
    // SAFETY: our own descriptor.
    unsafe { libc::close(fd) };
    result
}

/// An IPv4 + TCP SYN without options, checksums filled in.
fn syn_packet(src: [u8; 4], dst: [u8; 4], sport: u16, dport: u16) -> [u8; 40] {
    let mut p = [0u8; 40];
    p[0] = 0x45;
    p[2..4].copy_from_slice(&40u16.to_be_bytes());
    p[6] = 0x40; // don't fragment
    p[8] = 64;
    p[9] = libc::IPPROTO_TCP as u8;
    p[12..16].copy_from_slice(&src);
    p[16..20].copy_from_slice(&dst);
    let ip = checksum(&p[..20]);
    p[10..12].copy_from_slice(&ip.to_be_bytes());
    p[20..22].copy_from_slice(&sport.to_be_bytes());
    p[22..24].copy_from_slice(&dport.to_be_bytes());
    p[24..28].copy_from_slice(&(0x5000_0000u32 + u32::from(sport)).to_be_bytes());
    p[32] = 5 << 4; // data offset: 20 bytes
    p[33] = 0x02; // SYN
    p[34..36].copy_from_slice(&65535u16.to_be_bytes());
    let mut pseudo = Vec::with_capacity(32);
    pseudo.extend_from_slice(&src);
    pseudo.extend_from_slice(&dst);
    pseudo.extend_from_slice(&[0, libc::IPPROTO_TCP as u8, 0, 20]);
    pseudo.extend_from_slice(&p[20..]);
    let tcp = checksum(&pseudo);
    p[36..38].copy_from_slice(&tcp.to_be_bytes());
    p
}

/// The Internet checksum (RFC 1071) of an even-length buffer.
fn checksum(bytes: &[u8]) -> u16 {
    let mut sum: u32 = bytes
        .chunks(2)
        .map(|w| u32::from(u16::from_be_bytes([w[0], w[1]])))
        .sum();
    while sum > 0xffff {
        sum = (sum & 0xffff) + (sum >> 16);
    }
    !(sum as u16)
}
