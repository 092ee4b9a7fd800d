//! Sysctls the probes are configured from, read from sockq's own namespace.

/// `net.ipv4.ip_local_port_range` of sockq's namespace (the kernel's default when
/// unreadable).
pub fn ephemeral_ports() -> (u16, u16) {
    std::fs::read_to_string("/proc/sys/net/ipv4/ip_local_port_range")
        .ok()
        .and_then(|text| parse_port_range(&text))
        .unwrap_or((32768, 60999))
}

/// `net.ipv4.ip_local_port_range` (`32768\t60999`).
pub fn parse_port_range(text: &str) -> Option<(u16, u16)> {
    let mut it = text.split_whitespace().map(str::parse::<u16>);
    let (lo, hi) = (it.next()?.ok()?, it.next()?.ok()?);
    (lo <= hi && it.next().is_none()).then_some((lo, hi))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn port_ranges() {
        assert_eq!(parse_port_range("32768\t60999\n"), Some((32768, 60999)));
        assert_eq!(parse_port_range("1024 65535"), Some((1024, 65535)));
        assert_eq!(parse_port_range("60999 32768"), None);
        assert_eq!(parse_port_range("x y"), None);
        assert_eq!(parse_port_range("1 2 3"), None);
        assert_eq!(parse_port_range(""), None);
    }
}
