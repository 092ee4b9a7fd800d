//! Which listeners the daemon exports (`--listeners-include`, `--listeners-exclude`):
//! rules over a listener's network namespace, port, address and owners' comm.
//!
//! A rule is one or more conditions joined by `,`, all of which must hold
//! (`netns=4026531840,port=22`); a listener is exported when no exclude rule matches
//! it and, if there are include rules, one of them does. Filtering happens when the
//! poller assembles a snapshot, after the kernel's counts were read and pruned: the
//! programs still count every listener, so changing a filter loses no history.
//!
//! Pure matching; the one fact from outside, the inode of a named namespace
//! (`/run/netns/NAME`), is looked up by the caller each poll (a namespace can be
//! re-created under the same name).

use std::{fmt, net::IpAddr, ops::RangeInclusive, str::FromStr};

use std::collections::HashSet;

use crate::model::{Acceptor, Listener, NetnsInode, Snapshot};

/// One condition of a rule.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Condition {
    /// `netns=INODE`.
    NetnsInode(NetnsInode),
    /// `netns=NAME` (`ip netns` name, `/run/netns/NAME`).
    NetnsName(String),
    /// `port=N` or `port=FROM-TO`.
    Port(RangeInclusive<u16>),
    /// `addr=IP` or `addr=IP/PREFIX`.
    Addr { net: IpAddr, prefix: u8 },
    /// `comm=NAME`, `*` and `?` as in a shell glob: any owner's comm.
    Comm(String),
}

/// A conjunction of conditions, as written (`port=8080`, `netns=web,comm=nginx*`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Rule {
    conditions: Vec<Condition>,
    text: String,
}

/// Why a rule does not parse.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum RuleError {
    #[error(
        "empty listener rule (expected KEY=VALUE[,KEY=VALUE...], KEY one of netns, port, addr, comm)"
    )]
    Empty,
    #[error("`{0}` is not KEY=VALUE (KEY one of netns, port, addr, comm)")]
    NotKeyValue(String),
    #[error("unknown key `{0}` (expected netns, port, addr or comm)")]
    UnknownKey(String),
    #[error("`{0}` is not a port or a port range (1-65535, FROM-TO)")]
    Port(String),
    #[error("`{0}` is not an IP address or CIDR block (10.0.0.0/8, ::1, fd00::/8)")]
    Addr(String),
    #[error("`{0}` is not a namespace inode or an `ip netns` name")]
    Netns(String),
    #[error("empty comm pattern")]
    Comm,
}

impl FromStr for Rule {
    type Err = RuleError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let text = s.trim();
        if text.is_empty() {
            return Err(RuleError::Empty);
        }
        let conditions = text
            .split(',')
            .map(str::trim)
            .map(parse_condition)
            .collect::<Result<Vec<_>, _>>()?;
        Ok(Self {
            conditions,
            text: text.to_owned(),
        })
    }
}

impl fmt::Display for Rule {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.text)
    }
}

impl serde::Serialize for Rule {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.serialize_str(&self.text)
    }
}

impl<'de> serde::Deserialize<'de> for Rule {
    fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        let text = String::deserialize(deserializer)?;
        text.parse().map_err(serde::de::Error::custom)
    }
}

fn parse_condition(term: &str) -> Result<Condition, RuleError> {
    if term.is_empty() {
        return Err(RuleError::Empty);
    }
    let Some((key, value)) = term.split_once('=') else {
        return Err(RuleError::NotKeyValue(term.to_owned()));
    };
    let value = value.trim();
    match key.trim() {
        "netns" => parse_netns(value),
        "port" => parse_ports(value).ok_or_else(|| RuleError::Port(value.to_owned())),
        "addr" => parse_net(value).ok_or_else(|| RuleError::Addr(value.to_owned())),
        "comm" if value.is_empty() => Err(RuleError::Comm),
        "comm" => Ok(Condition::Comm(value.to_owned())),
        other => Err(RuleError::UnknownKey(other.to_owned())),
    }
}

fn parse_netns(value: &str) -> Result<Condition, RuleError> {
    if !value.is_empty() && value.bytes().all(|b| b.is_ascii_digit()) {
        return value
            .parse()
            .map(Condition::NetnsInode)
            .map_err(|_| RuleError::Netns(value.to_owned()));
    }
    let valid_name = !value.is_empty() && value != "." && value != ".." && !value.contains('/');
    if valid_name {
        Ok(Condition::NetnsName(value.to_owned()))
    } else {
        Err(RuleError::Netns(value.to_owned()))
    }
}

fn parse_ports(value: &str) -> Option<Condition> {
    let port = |s: &str| s.trim().parse::<u16>().ok().filter(|&p| p > 0);
    let range = match value.split_once('-') {
        Some((from, to)) => port(from)?..=port(to)?,
        None => port(value)?..=port(value)?,
    };
    (!range.is_empty()).then_some(Condition::Port(range))
}

fn parse_net(value: &str) -> Option<Condition> {
    let (ip, prefix) = match value.split_once('/') {
        Some((ip, prefix)) => (ip.parse::<IpAddr>().ok()?, Some(prefix.parse::<u8>().ok()?)),
        None => (value.parse::<IpAddr>().ok()?, None),
    };
    let bits = if ip.is_ipv4() { 32 } else { 128 };
    let prefix = prefix.unwrap_or(bits);
    (prefix <= bits).then_some(Condition::Addr { net: ip, prefix })
}

/// Whether the first `prefix` bits of `addr` and `net` agree (same family only;
/// an IPv4-mapped IPv6 listener address counts as IPv4).
fn in_net(addr: IpAddr, net: IpAddr, prefix: u8) -> bool {
    let mask = |bits: u32, width: u32| -> u128 {
        if bits == 0 {
            0
        } else {
            (u128::MAX << (width - bits)) & (u128::MAX >> (128 - width))
        }
    };
    match (addr.to_canonical(), net) {
        (IpAddr::V4(a), IpAddr::V4(n)) => {
            let m = mask(u32::from(prefix), 32);
            u128::from(u32::from(a)) & m == u128::from(u32::from(n)) & m
        }
        (IpAddr::V6(a), IpAddr::V6(n)) => {
            let m = mask(u32::from(prefix), 128);
            u128::from(a) & m == u128::from(n) & m
        }
        _ => false,
    }
}

/// A shell-style glob: `*` any run of characters, `?` any one; the rest literal.
fn glob_matches(pattern: &str, text: &str) -> bool {
    let (p, t): (Vec<char>, Vec<char>) = (pattern.chars().collect(), text.chars().collect());
    let (mut pi, mut ti) = (0, 0);
    // Where the last `*` was, and the text position it is currently matched up to.
    let mut star: Option<(usize, usize)> = None;
    while ti < t.len() {
        match p.get(pi) {
            Some('*') => {
                star = Some((pi, ti));
                pi += 1;
            }
            Some(&c) if c == '?' || c == t[ti] => {
                pi += 1;
                ti += 1;
            }
            _ => match star {
                Some((sp, st)) => {
                    pi = sp + 1;
                    ti = st + 1;
                    star = Some((sp, st + 1));
                }
                None => return false,
            },
        }
    }
    p[pi..].iter().all(|&c| c == '*')
}

/// The include and exclude rules of `sockq run`.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ListenerFilter {
    pub include: Vec<Rule>,
    pub exclude: Vec<Rule>,
}

impl ListenerFilter {
    /// Whether every listener is exported.
    pub fn is_empty(&self) -> bool {
        self.include.is_empty() && self.exclude.is_empty()
    }

    /// The `ip netns` names the rules use (the caller looks each up once per poll).
    pub fn netns_names(&self) -> Vec<&str> {
        let mut names: Vec<&str> = self
            .include
            .iter()
            .chain(&self.exclude)
            .flat_map(|r| &r.conditions)
            .filter_map(|c| match c {
                Condition::NetnsName(name) => Some(name.as_str()),
                _ => None,
            })
            .collect();
        names.sort_unstable();
        names.dedup();
        names
    }

    /// Whether `listener` is exported; `netns_named` gives the inode of an `ip netns`
    /// name (`None`: no such namespace, and the condition does not hold).
    pub fn keeps(&self, listener: &Listener, netns_named: &impl Fn(&str) -> Option<u64>) -> bool {
        let matches = |rule: &Rule| rule_matches(rule, listener, netns_named);
        let included = self.include.is_empty() || self.include.iter().any(matches);
        included && !self.exclude.iter().any(matches)
    }

    /// Removes from `snapshot` the listeners not exported, with their accepting
    /// threads and the Nagle series of their addresses; returns how many listeners.
    pub fn exclude_from(
        &self,
        snapshot: &mut Snapshot,
        netns_named: &impl Fn(&str) -> Option<u64>,
    ) -> u64 {
        if self.is_empty() {
            return 0;
        }
        let mut excluded: HashSet<u64> = HashSet::new();
        let mut addrs: HashSet<(NetnsInode, String)> = HashSet::new();
        snapshot.listeners.retain(|l| {
            let keep = self.keeps(l, netns_named);
            if !keep {
                excluded.insert(l.inode);
                addrs.insert((l.netns, l.listen_addr()));
            }
            keep
        });
        if excluded.is_empty() {
            return 0;
        }
        // An address some kept socket still listens on (an SO_REUSEPORT group split
        // by the filter) keeps its Nagle series.
        for l in &snapshot.listeners {
            addrs.remove(&(l.netns, l.listen_addr()));
        }
        snapshot
            .nagle
            .retain(|s| !addrs.contains(&(s.key.netns, s.key.listen_addr.clone())));
        let acceptors: Vec<Acceptor> = snapshot
            .acceptors
            .all()
            .iter()
            .filter(|a| !excluded.contains(&a.socket))
            .cloned()
            .collect();
        snapshot.acceptors = acceptors.into();
        excluded.len() as u64
    }
}

fn rule_matches(rule: &Rule, l: &Listener, netns_named: &impl Fn(&str) -> Option<u64>) -> bool {
    rule.conditions.iter().all(|c| match c {
        Condition::NetnsInode(inode) => l.netns == *inode,
        Condition::NetnsName(name) => netns_named(name) == Some(l.netns),
        Condition::Port(range) => range.contains(&l.port),
        Condition::Addr { net, prefix } => in_net(l.addr, *net, *prefix),
        Condition::Comm(pattern) => l.owners.iter().any(|o| glob_matches(pattern, &o.comm)),
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::Owner;

    fn listener(netns: u64, addr: &str, port: u16, comm: &[&str]) -> Listener {
        let mut l = Listener::loopback_for_test(netns, port, u64::from(port));
        l.addr = addr.parse().expect("addr");
        l.owners = comm.iter().map(|c| Owner::new(1, *c)).collect();
        l
    }

    fn filter(include: &[&str], exclude: &[&str]) -> ListenerFilter {
        let rules = |r: &[&str]| r.iter().map(|s| s.parse().expect("rule")).collect();
        ListenerFilter {
            include: rules(include),
            exclude: rules(exclude),
        }
    }

    fn no_names(_: &str) -> Option<u64> {
        None
    }

    #[test]
    fn rules_parse_and_print_as_written() {
        for ok in [
            "port=8080",
            "port=8000-8999",
            "netns=4026531840",
            "netns=web",
            "addr=10.0.0.0/8",
            "addr=::1",
            "addr=fd00::/8",
            "comm=nginx*",
            "netns=web,port=22",
        ] {
            let rule: Rule = ok.parse().unwrap_or_else(|e| panic!("{ok}: {e}"));
            assert_eq!(rule.to_string(), ok);
        }
    }

    #[test]
    fn bad_rules_say_what_is_wrong() {
        let err = |s: &str| s.parse::<Rule>().expect_err(s).to_string();
        assert!(
            err("port=abc").contains("`abc` is not a port"),
            "{}",
            err("port=abc")
        );
        assert!(err("port=0").contains("not a port"));
        assert!(err("port=90-80").contains("not a port"));
        assert!(err("port=70000").contains("not a port"));
        assert!(err("addr=10.0.0.0/33").contains("not an IP address"));
        assert!(err("addr=nginx").contains("not an IP address"));
        assert!(err("netns=../x").contains("not a namespace"));
        assert!(err("pid=1").contains("unknown key `pid`"));
        assert!(err("8080").contains("not KEY=VALUE"));
        assert!(err("").contains("empty"));
        assert!(err("port=80,").contains("empty"));
        assert!(err("comm=").contains("empty comm"));
    }

    #[test]
    fn empty_filter_keeps_everything() {
        let f = ListenerFilter::default();
        let mut snapshot = Snapshot {
            listeners: vec![listener(1, "127.0.0.1", 80, &[])],
            ..Snapshot::default()
        };
        assert_eq!(f.exclude_from(&mut snapshot, &no_names), 0);
        assert_eq!(snapshot.listeners.len(), 1);
    }

    #[test]
    fn include_restricts_and_exclude_wins() {
        let f = filter(&["port=8000-8999", "comm=redis"], &["port=8081"]);
        let keeps = |l: &Listener| f.keeps(l, &no_names);
        assert!(keeps(&listener(1, "0.0.0.0", 8080, &[])));
        assert!(!keeps(&listener(1, "0.0.0.0", 8081, &[])), "exclude wins");
        assert!(keeps(&listener(1, "0.0.0.0", 6379, &["redis"])));
        assert!(!keeps(&listener(1, "0.0.0.0", 22, &["sshd"])));
        let mut snapshot = Snapshot {
            listeners: vec![
                listener(1, "0.0.0.0", 22, &[]),
                listener(1, "0.0.0.0", 8080, &[]),
                listener(1, "0.0.0.0", 8081, &[]),
            ],
            ..Snapshot::default()
        };
        assert_eq!(f.exclude_from(&mut snapshot, &no_names), 2);
        let ports: Vec<u16> = snapshot.listeners.iter().map(|l| l.port).collect();
        assert_eq!(ports, [8080]);
    }

    #[test]
    fn conditions_of_a_rule_all_hold() {
        let f = filter(&[], &["netns=7,port=22"]);
        assert!(!f.keeps(&listener(7, "0.0.0.0", 22, &[]), &no_names));
        assert!(f.keeps(&listener(8, "0.0.0.0", 22, &[]), &no_names));
        assert!(f.keeps(&listener(7, "0.0.0.0", 80, &[]), &no_names));
    }

    #[test]
    fn namespaces_match_by_inode_or_name() {
        let f = filter(&["netns=web", "netns=db,port=5432"], &["netns=web,port=22"]);
        assert_eq!(f.netns_names(), ["db", "web"]);
        let named = |name: &str| (name == "web").then_some(42);
        assert!(f.keeps(&listener(42, "0.0.0.0", 80, &[]), &named));
        assert!(!f.keeps(&listener(43, "0.0.0.0", 80, &[]), &named));
        assert!(
            !f.keeps(&listener(42, "0.0.0.0", 80, &[]), &no_names),
            "a name that does not exist matches nothing"
        );
        let f = filter(&["netns=43"], &[]);
        assert!(f.netns_names().is_empty());
        assert!(f.keeps(&listener(43, "0.0.0.0", 80, &[]), &no_names));
    }

    #[test]
    fn addresses_match_by_cidr_within_a_family() {
        let f = |rule: &str, addr: &str| {
            filter(&[rule], &[]).keeps(&listener(1, addr, 80, &[]), &no_names)
        };
        assert!(f("addr=10.0.0.0/8", "10.1.2.3"));
        assert!(!f("addr=10.0.0.0/8", "11.0.0.1"));
        assert!(f("addr=0.0.0.0/0", "192.168.1.1"));
        assert!(!f("addr=0.0.0.0/0", "::"), "families differ");
        assert!(f("addr=127.0.0.1", "127.0.0.1"));
        assert!(!f("addr=127.0.0.1", "127.0.0.2"));
        assert!(f("addr=::1", "::1"));
        assert!(f("addr=fd00::/8", "fd12::1"));
        assert!(!f("addr=fd00::/8", "fe80::1"));
        assert!(f("addr=::/0", "::"));
        assert!(
            f("addr=10.0.0.0/8", "::ffff:10.0.0.1"),
            "IPv4-mapped is IPv4"
        );
    }

    #[test]
    fn comm_matches_exactly_or_by_glob() {
        for (pattern, comm, expected) in [
            ("nginx", "nginx", true),
            ("nginx", "nginx-worker", false),
            ("nginx*", "nginx-worker", true),
            ("nginx*", "nginx", true),
            ("*worker", "nginx-worker", true),
            ("ng?nx", "nginx", true),
            ("ng?nx", "ngnx", false),
            ("*a*b*", "xxaxxbxx", true),
            ("*a*b", "xxaxxbxx", false),
            ("*", "", true),
        ] {
            assert_eq!(glob_matches(pattern, comm), expected, "{pattern} vs {comm}");
        }
        let f = filter(&["comm=nginx*"], &[]);
        assert!(f.keeps(&listener(1, "0.0.0.0", 80, &["bash", "nginx"]), &no_names));
        assert!(
            !f.keeps(&listener(1, "0.0.0.0", 80, &[]), &no_names),
            "no owner, no match"
        );
    }

    #[test]
    fn excluded_listeners_leave_with_their_acceptors_and_nagle_series() {
        let filter = filter(&[], &["port=22"]);
        let acceptor = |socket| Acceptor {
            socket,
            pid: 1,
            tid: 1,
            comm: "a".into(),
            accepts: 1,
            state: "S".into(),
            wchan: String::new(),
        };
        let nagle = |listen_addr: &str| crate::model::nagle::NagleSeries {
            key: crate::model::nagle::SeriesKey {
                netns: 1,
                listen_addr: listen_addr.into(),
                pid: 1,
                comm: "a".into(),
            },
            delack_armed: 0,
            delack_fired: 0,
            delack_cancelled: 0,
            delack_delay: crate::model::Histogram::default(),
            nagle_hold: crate::model::Histogram::default(),
            stalls: 0,
            stall_seconds: 0.0,
        };
        let mut snapshot = Snapshot {
            listeners: vec![
                Listener::loopback_for_test(1, 22, 10),
                Listener::loopback_for_test(1, 80, 20),
            ],
            acceptors: vec![acceptor(10), acceptor(20)].into(),
            nagle: vec![nagle("127.0.0.1:22"), nagle("127.0.0.1:80"), nagle("")],
            ..Snapshot::default()
        };
        assert_eq!(filter.exclude_from(&mut snapshot, &no_names), 1);
        let ports: Vec<u16> = snapshot.listeners.iter().map(|l| l.port).collect();
        assert_eq!(ports, [80]);
        let sockets: Vec<u64> = snapshot.acceptors.all().iter().map(|a| a.socket).collect();
        assert_eq!(sockets, [20]);
        let addrs: Vec<&str> = snapshot
            .nagle
            .iter()
            .map(|n| n.key.listen_addr.as_str())
            .collect();
        assert_eq!(addrs, ["127.0.0.1:80", ""], "client-side series stay");
    }
}
