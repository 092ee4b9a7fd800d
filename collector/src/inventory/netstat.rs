//! Per-namespace TCP/IP extension counters.
//!
//! Kernel interface: `/proc/PID/net/netstat` (`net/ipv4/proc.c`,
//! `netstat_seq_show`), which shows the counters of PID's network namespace. The
//! format is pairs of lines sharing a prefix, names then values:
//!
//! ```text
//! TcpExt: SyncookiesSent SyncookiesRecv ... ListenOverflows ListenDrops ...
//! TcpExt: 0 0 ... 3 3 ...
//! IpExt: InNoRoutes ...
//! IpExt: 0 ...
//! MPTcpExt: MPCapableSYNRX ...
//! MPTcpExt: 0 ...
//! ```
//!
//! Counters are parsed as `u64` (the kernel prints `unsigned long`).

use std::{collections::BTreeMap, path::PathBuf};

use super::InventoryError;

/// Counters keyed `"Section.Name"`, e.g. `"TcpExt.ListenDrops"`.
pub type Netstat = BTreeMap<String, u64>;

/// What is wrong with a `netstat` file; `line` is 1-based.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum NetstatParseError {
    #[error("line {line}: no `Section:` prefix")]
    NoPrefix { line: usize },
    #[error("line {line}: names line for {section} has no values line")]
    MissingValues { line: usize, section: String },
    #[error("line {line}: values line is for {found}, names were for {expected}")]
    SectionMismatch {
        line: usize,
        expected: String,
        found: String,
    },
    #[error("line {line}: {section} has {names} names but {values} values")]
    CountMismatch {
        line: usize,
        section: String,
        names: usize,
        values: usize,
    },
    #[error("line {line}: {section}.{name} is not a counter: {value:?}")]
    NotANumber {
        line: usize,
        section: String,
        name: String,
        value: String,
    },
}

/// Reads `/proc/PID/net/netstat`: the counters of `pid`'s network namespace.
pub fn read_netstat(pid: u32) -> Result<Netstat, InventoryError> {
    let path = PathBuf::from(format!("/proc/{pid}/net/netstat"));
    let text = std::fs::read_to_string(&path).map_err(|source| InventoryError::Io {
        path: path.clone(),
        source,
    })?;
    parse_netstat(&text).map_err(|source| InventoryError::Netstat { path, source })
}

/// Parses the `/proc/net/netstat` format (also that of `/proc/net/snmp`, whose
/// negative fields are skipped). Blank lines are ignored; a section appearing twice
/// keeps the last values.
pub fn parse_netstat(text: &str) -> Result<Netstat, NetstatParseError> {
    let mut counters = Netstat::new();
    let mut lines = text
        .lines()
        .enumerate()
        .map(|(index, line)| (index + 1, line))
        .filter(|(_, line)| !line.trim().is_empty());
    while let Some((names_line, names)) = lines.next() {
        let (section, names) =
            split_section(names).ok_or(NetstatParseError::NoPrefix { line: names_line })?;
        let Some((values_line, values)) = lines.next() else {
            return Err(NetstatParseError::MissingValues {
                line: names_line,
                section: section.to_owned(),
            });
        };
        let (values_section, values) =
            split_section(values).ok_or(NetstatParseError::NoPrefix { line: values_line })?;
        if values_section != section {
            return Err(NetstatParseError::SectionMismatch {
                line: values_line,
                expected: section.to_owned(),
                found: values_section.to_owned(),
            });
        }
        let names: Vec<&str> = names.split_whitespace().collect();
        let values: Vec<&str> = values.split_whitespace().collect();
        if names.len() != values.len() {
            return Err(NetstatParseError::CountMismatch {
                line: values_line,
                section: section.to_owned(),
                names: names.len(),
                values: values.len(),
            });
        }
        for (name, value) in names.into_iter().zip(values) {
            // /proc/net/snmp has signed fields (`Tcp: MaxConn -1`): not counters.
            if value.starts_with('-') && value.parse::<i64>().is_ok() {
                continue;
            }
            let number = value
                .parse::<u64>()
                .map_err(|_| NetstatParseError::NotANumber {
                    line: values_line,
                    section: section.to_owned(),
                    name: name.to_owned(),
                    value: value.to_owned(),
                })?;
            counters.insert(format!("{section}.{name}"), number);
        }
    }
    Ok(counters)
}

/// `"TcpExt: a b"` -> `("TcpExt", " a b")`. The section must be one word.
fn split_section(line: &str) -> Option<(&str, &str)> {
    let (section, rest) = line.split_once(':')?;
    let section = section.trim();
    if section.is_empty() || section.contains(char::is_whitespace) {
        return None;
    }
    Some((section, rest))
}

#[cfg(test)]
mod tests {
    use super::*;

    const SAMPLE: &str = "\
TcpExt: SyncookiesSent SyncookiesRecv ListenOverflows ListenDrops
TcpExt: 1 2 3 18446744073709551615
IpExt: InNoRoutes InOctets
IpExt: 0 123456789012
MPTcpExt: MPCapableSYNRX
MPTcpExt: 7
";

    #[test]
    fn parses_sections() {
        let counters = parse_netstat(SAMPLE).expect("valid");
        assert_eq!(counters.len(), 7);
        assert_eq!(counters["TcpExt.SyncookiesSent"], 1);
        assert_eq!(counters["TcpExt.ListenOverflows"], 3);
        assert_eq!(counters["TcpExt.ListenDrops"], u64::MAX);
        assert_eq!(counters["IpExt.InOctets"], 123_456_789_012);
        assert_eq!(counters["MPTcpExt.MPCapableSYNRX"], 7);
    }

    #[test]
    fn empty_and_blank_input() {
        assert!(parse_netstat("").expect("empty").is_empty());
        assert_eq!(
            parse_netstat("\nA: x\n\nA: 1\n").expect("blank lines")["A.x"],
            1
        );
    }

    #[test]
    fn malformed_input_is_an_error() {
        assert_eq!(
            parse_netstat("TcpExt: A B\nTcpExt: 1\n"),
            Err(NetstatParseError::CountMismatch {
                line: 2,
                section: "TcpExt".into(),
                names: 2,
                values: 1
            })
        );
        assert_eq!(
            parse_netstat("TcpExt: A B\nTcpExt: 1 x\n"),
            Err(NetstatParseError::NotANumber {
                line: 2,
                section: "TcpExt".into(),
                name: "B".into(),
                value: "x".into()
            })
        );
        // A signed field (`Tcp: MaxConn -1` in /proc/net/snmp) is not a counter: skipped.
        assert_eq!(parse_netstat("TcpExt: A\nTcpExt: -1\n"), Ok(Netstat::new()));
        assert!(matches!(
            parse_netstat("TcpExt: A\nTcpExt: -x\n"),
            Err(NetstatParseError::NotANumber { .. })
        ));
        assert_eq!(
            parse_netstat("TcpExt: A\n"),
            Err(NetstatParseError::MissingValues {
                line: 1,
                section: "TcpExt".into()
            })
        );
        assert_eq!(
            parse_netstat("TcpExt: A\nIpExt: 1\n"),
            Err(NetstatParseError::SectionMismatch {
                line: 2,
                expected: "TcpExt".into(),
                found: "IpExt".into()
            })
        );
        assert_eq!(
            parse_netstat("garbage\n1\n"),
            Err(NetstatParseError::NoPrefix { line: 1 })
        );
        assert_eq!(
            parse_netstat("A: x\n1\n"),
            Err(NetstatParseError::NoPrefix { line: 2 })
        );
    }

    #[test]
    fn reads_our_namespace() {
        let counters = read_netstat(std::process::id()).expect("read /proc/PID/net/netstat");
        assert!(counters.contains_key("TcpExt.ListenDrops"));
        assert!(counters.contains_key("TcpExt.ListenOverflows"));
        assert!(matches!(
            read_netstat(u32::MAX),
            Err(InventoryError::Io { .. })
        ));
    }
}
