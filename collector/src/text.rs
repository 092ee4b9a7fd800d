//! Making attacker-controlled text (process names, command lines) safe to print in a
//! terminal or a log line. Prometheus and JSON output rely on their encoders instead.

/// Printable ASCII passes through; backslash, quotes and everything else (control
/// characters, bytes of invalid or non-ASCII UTF-8) become `\\`, `\"`, `\n`, `\xNN`.
/// The result is unambiguous and cannot move a terminal's cursor or forge a log line.
pub fn escape_bytes(bytes: &[u8]) -> String {
    let mut out = String::with_capacity(bytes.len());
    for &b in bytes {
        match b {
            b'\\' => out.push_str("\\\\"),
            b'"' => out.push_str("\\\""),
            b'\n' => out.push_str("\\n"),
            b'\t' => out.push_str("\\t"),
            b'\r' => out.push_str("\\r"),
            0x20..=0x7e => out.push(char::from(b)),
            _ => out.push_str(&format!("\\x{b:02x}")),
        }
    }
    out
}

/// [`escape_bytes`] of a string's UTF-8 bytes.
pub fn escape(s: &str) -> String {
    escape_bytes(s.as_bytes())
}

/// A kernel `comm` buffer: up to the first NUL.
pub fn comm_bytes(comm: &[u8]) -> &[u8] {
    let end = comm.iter().position(|&b| b == 0).unwrap_or(comm.len());
    &comm[..end]
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn escapes_hostile_names() {
        assert_eq!(escape("nginx"), "nginx");
        assert_eq!(escape("a\"b\\c\nd{}"), "a\\\"b\\\\c\\nd{}");
        assert_eq!(escape_bytes(b"\x1b[2J\xff"), "\\x1b[2J\\xff");
        assert_eq!(escape("é"), "\\xc3\\xa9");
    }

    #[test]
    fn comm_stops_at_nul() {
        assert_eq!(comm_bytes(b"redis\0\0\0"), b"redis");
        assert_eq!(comm_bytes(b"0123456789abcdef"), b"0123456789abcdef");
    }
}
