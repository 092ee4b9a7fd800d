//! Which Unix listener each counted connect was aimed at. The programs count by the
//! name the client passed (`UNIX_REFUSED`); the inventory knows each listener's name
//! and namespace. An abstract name is looked up in the client's namespace (abstract
//! names are per namespace); a path anywhere (a socket file is reachable from any
//! namespace that sees the file: a bind-mounted php-fpm socket), preferring a
//! listener of the client's namespace. A relative path is resolved against the
//! client's working directory when it still runs.
//!
//! Limitation: a path is compared as bytes, not as a file: a path through a symlink,
//! `..`, or another mount namespace's view of the file matches nothing (counted
//! nowhere, and pruned after two polls).

use std::collections::{BTreeMap, HashSet};

use collector_common::unix::{UnixConnectKey, UnixConnectStats};

use crate::{
    model::unix::{UnixClient, UnixKernelStats, UnixListener},
    text,
};

/// Refused connects by (client pid, comm).
type RefusedBy = BTreeMap<(u32, String), u64>;

/// Gives every listener its counts (zero when none) and returns the keys that
/// matched no listener. `netns_of` maps a key's namespace key to the inode the
/// inventory uses; `cwd_of` a client's working directory.
pub fn attach(
    listeners: &mut [UnixListener],
    entries: &[(UnixConnectKey, UnixConnectStats)],
    netns_of: impl Fn(u64) -> Option<u64>,
    cwd_of: impl Fn(u32) -> Option<Vec<u8>>,
) -> HashSet<UnixConnectKey> {
    let mut unmatched = HashSet::new();
    let mut per_listener: Vec<(UnixKernelStats, RefusedBy)> =
        vec![(UnixKernelStats::default(), BTreeMap::new()); listeners.len()];
    for (key, stats) in entries {
        let Some(index) = target(listeners, key, &netns_of, &cwd_of) else {
            unmatched.insert(*key);
            continue;
        };
        let Some((totals, clients)) = per_listener.get_mut(index) else {
            continue;
        };
        totals.refused = totals.refused.saturating_add(stats.refused);
        totals.waited = totals.waited.saturating_add(stats.waited);
        totals.wait_seconds += stats.wait_ns as f64 / 1e9;
        if stats.refused > 0 {
            let comm = String::from_utf8_lossy(text::comm_bytes(&stats.comm)).into_owned();
            *clients.entry((key.tgid, comm)).or_default() += stats.refused;
        }
    }
    for (listener, (mut totals, clients)) in listeners.iter_mut().zip(per_listener) {
        totals.refused_by = clients
            .into_iter()
            .map(|((pid, comm), refused)| UnixClient { pid, comm, refused })
            .collect();
        totals
            .refused_by
            .sort_by(|a, b| b.refused.cmp(&a.refused).then(a.pid.cmp(&b.pid)));
        listener.kernel = Some(totals);
    }
    unmatched
}

/// The index of the listener `key` was aimed at.
fn target(
    listeners: &[UnixListener],
    key: &UnixConnectKey,
    netns_of: &impl Fn(u64) -> Option<u64>,
    cwd_of: &impl Fn(u32) -> Option<Vec<u8>>,
) -> Option<usize> {
    let name = key.name();
    let client_netns = netns_of(key.net);
    match name.first()? {
        0 => listeners
            .iter()
            .position(|l| l.address == name && Some(l.netns) == client_netns),
        _ => {
            let find = |path: &[u8]| {
                let same: Vec<usize> = listeners
                    .iter()
                    .enumerate()
                    .filter(|(_, l)| l.address == path)
                    .map(|(i, _)| i)
                    .collect();
                same.iter()
                    .copied()
                    .find(|&i| Some(listeners[i].netns) == client_netns)
                    .or_else(|| same.first().copied())
            };
            find(name).or_else(|| {
                if name.first() == Some(&b'/') {
                    return None;
                }
                let mut absolute = cwd_of(key.tgid)?;
                absolute.push(b'/');
                absolute.extend_from_slice(name.strip_prefix(b"./").unwrap_or(name));
                find(&absolute)
            })
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::unix::{UnixSocketType, display_name};

    fn listener(netns: u64, address: &[u8], inode: u64) -> UnixListener {
        let (name, name_kind) = display_name(address);
        UnixListener {
            netns,
            name,
            name_kind,
            socket_type: UnixSocketType::Stream,
            inode,
            cookie: 0,
            queue_len: 0,
            queue_limit: 4,
            owners: Vec::new(),
            address: address.to_vec(),
            kernel: None,
            queue: None,
            queue_full: false,
        }
    }

    fn entry(
        net: u64,
        tgid: u32,
        raw: &[u8],
        len: u32,
        refused: u64,
    ) -> (UnixConnectKey, UnixConnectStats) {
        let mut key = UnixConnectKey::ZERO;
        key.net = net;
        key.tgid = tgid;
        key.len = len;
        key.path[..raw.len()].copy_from_slice(raw);
        let mut comm = [0; 16];
        comm[..5].copy_from_slice(b"nginx");
        (
            key,
            UnixConnectStats {
                refused,
                waited: 0,
                wait_ns: 0,
                comm,
            },
        )
    }

    #[test]
    fn abstract_names_are_per_namespace_paths_are_not() {
        let mut listeners = vec![
            listener(1, b"\0app", 10),
            listener(2, b"\0app", 20),
            listener(1, b"/run/php.sock", 30),
            listener(3, b"/srv/rel.sock", 40),
        ];
        // Client namespace key 100 is inode 2, 200 is inode 5 (no listener there).
        let netns_of = |k: u64| match k {
            100 => Some(2),
            200 => Some(5),
            _ => None,
        };
        let entries = [
            entry(100, 7, b"\0app", 4, 3),
            entry(200, 8, b"\0app", 4, 9),
            entry(200, 8, b"/run/php.sock\0", 108, 5),
            entry(200, 9, b"/run/php.sock\0", 108, 1),
            entry(100, 7, b"rel.sock", 8, 2),
            entry(100, 7, b"/nowhere", 8, 2),
        ];
        let unmatched = attach(&mut listeners, &entries, netns_of, |pid| {
            (pid == 7).then(|| b"/srv".to_vec())
        });
        let refused: Vec<u64> = listeners
            .iter()
            .map(|l| l.kernel.as_ref().map_or(u64::MAX, |k| k.refused))
            .collect();
        assert_eq!(refused, [0, 3, 6, 2]);
        let php = listeners[2].kernel.as_ref().expect("stats");
        assert_eq!(
            php.refused_by,
            [
                UnixClient {
                    pid: 8,
                    comm: "nginx".into(),
                    refused: 5
                },
                UnixClient {
                    pid: 9,
                    comm: "nginx".into(),
                    refused: 1
                },
            ]
        );
        assert_eq!(
            unmatched.len(),
            2,
            "the abstract name of namespace 5 and /nowhere"
        );
    }

    #[test]
    fn a_path_prefers_the_clients_namespace() {
        let mut listeners = vec![listener(1, b"/s", 10), listener(2, b"/s", 20)];
        let entries = [entry(2, 7, b"/s", 2, 1)];
        attach(&mut listeners, &entries, Some, |_| None);
        assert_eq!(listeners[1].kernel.as_ref().map(|k| k.refused), Some(1));
        assert_eq!(listeners[0].kernel.as_ref().map(|k| k.refused), Some(0));
    }
}
