//! Making attacker-controlled text (process names, command lines) safe to print in a
//! terminal or a log line (Prometheus and JSON output rely on their encoders instead),
//! and the one time format of events and logs.

use std::time::{SystemTime, UNIX_EPOCH};

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

/// `2026-11-23T03:04:05.678Z`.
pub fn rfc3339(t: SystemTime) -> String {
    let d = t.duration_since(UNIX_EPOCH).unwrap_or_default();
    let secs = d.as_secs();
    let (days, rem) = (secs / 86_400, secs % 86_400);
    let (y, m, day) = civil_from_days(days as i64);
    format!(
        "{y:04}-{m:02}-{day:02}T{:02}:{:02}:{:02}.{:03}Z",
        rem / 3600,
        rem % 3600 / 60,
        rem % 60,
        d.subsec_millis()
    )
}

/// Howard Hinnant's days-to-civil algorithm (proleptic Gregorian calendar).
fn civil_from_days(z: i64) -> (i64, u32, u32) {
    let z = z + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = (doy - (153 * mp + 2) / 5 + 1) as u32;
    let m = if mp < 10 { mp + 3 } else { mp - 9 } as u32;
    let y = yoe + era * 400 + i64::from(m <= 2);
    (y, m, d)
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

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

    #[test]
    fn formats_utc_time() {
        let t = UNIX_EPOCH + Duration::from_millis(1_795_403_045_678);
        assert_eq!(rfc3339(t), "2026-11-23T03:04:05.678Z");
        assert_eq!(
            rfc3339(UNIX_EPOCH + Duration::from_secs(951_782_400)),
            "2000-02-29T00:00:00.000Z"
        );
    }
}
