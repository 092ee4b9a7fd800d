//! Which network namespace each kernel transition count belongs to, and which counts
//! belong to namespaces that died.
//!
//! The programs key per-namespace state by the namespace's cookie where the kernel
//! has one (`net->net_cookie`, Linux 5.14+, never reused) and by its inode elsewhere.
//! Inodes are reused as soon as a namespace dies, so keyed by inode a new namespace
//! would inherit a dead one's counts; keyed by cookie it cannot, and the inventory
//! learns each live namespace's cookie (`SO_NETNS_COOKIE` on its sock_diag socket).
//! Counts of a namespace that died are removed; counts under a cookie no inventory
//! has seen (a namespace that lived less than a poll) are not exported and removed
//! after [`UNKNOWN_GRACE`].

use std::{
    collections::{BTreeMap, HashMap, HashSet},
    time::{Duration, Instant},
};

use crate::{
    inventory::VisitedNetns,
    model::{NetnsInode, TransitionKey},
    probes::NetTransition,
};

/// How long counts under a key no inventory has mapped are kept before removal.
pub const UNKNOWN_GRACE: Duration = Duration::from_secs(30);

/// The mapping from kernel keys to namespace inodes, kept across polls.
#[derive(Debug, Default)]
pub struct NetnsKeys {
    inode_of: HashMap<u64, NetnsInode>,
    unknown_since: HashMap<u64, Instant>,
}

/// What [`NetnsKeys::resolve`] decided.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct Resolved {
    /// Counts to export, by namespace inode.
    pub transitions: BTreeMap<TransitionKey, u64>,
    /// Kernel keys whose counts are to be removed.
    pub dead: HashSet<u64>,
}

impl NetnsKeys {
    /// Assigns each kernel count to its namespace. `visited` are the namespaces this
    /// poll's inventory read; `kept` the inodes of namespaces it could not read but
    /// that still exist (their counts stay). `cookies`: the kernel keys by cookie.
    pub fn resolve(
        &mut self,
        now: Instant,
        counts: &[(NetTransition, u64)],
        visited: &[VisitedNetns],
        kept: &HashSet<NetnsInode>,
        cookies: bool,
    ) -> Resolved {
        let live = self.learn(visited, kept, cookies);
        let mut out = Resolved::default();
        for (t, n) in counts {
            let Some(inode) = live.get(&t.net_key) else {
                if self.inode_of.contains_key(&t.net_key) || !cookies {
                    out.dead.insert(t.net_key);
                } else {
                    let since = *self.unknown_since.entry(t.net_key).or_insert(now);
                    if now.duration_since(since) >= UNKNOWN_GRACE {
                        out.dead.insert(t.net_key);
                    }
                }
                continue;
            };
            let key = TransitionKey {
                netns: *inode,
                from: t.from,
                to: t.to,
            };
            let slot = out.transitions.entry(key).or_default();
            *slot = slot.saturating_add(*n);
        }
        for key in &out.dead {
            self.inode_of.remove(key);
            self.unknown_since.remove(key);
        }
        out
    }

    /// The live keys and their inodes; remembers the mapping of every visited one.
    fn learn(
        &mut self,
        visited: &[VisitedNetns],
        kept: &HashSet<NetnsInode>,
        cookies: bool,
    ) -> HashMap<u64, NetnsInode> {
        let mut live = HashMap::new();
        for v in visited {
            let key = if cookies { v.cookie } else { Some(v.netns) };
            if let Some(key) = key {
                self.inode_of.insert(key, v.netns);
                self.unknown_since.remove(&key);
                live.insert(key, v.netns);
            }
        }
        // Namespaces skipped this time but not gone keep the keys learnt earlier.
        for (key, inode) in &self.inode_of {
            if kept.contains(inode) {
                live.insert(*key, *inode);
            }
        }
        if !cookies {
            for inode in kept {
                live.insert(*inode, *inode);
            }
        }
        live
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn t(net_key: u64, n: u64) -> (NetTransition, u64) {
        (
            NetTransition {
                net_key,
                from: 2,
                to: 1,
            },
            n,
        )
    }

    fn visited(netns: u64, cookie: u64) -> VisitedNetns {
        VisitedNetns {
            netns,
            cookie: Some(cookie),
        }
    }

    #[test]
    fn a_reused_inode_does_not_inherit_a_dead_namespaces_counts() {
        let mut keys = NetnsKeys::default();
        let now = Instant::now();
        let none = HashSet::new();
        // Namespace inode 7 with cookie 100 counts 2553 transitions, then dies; a new
        // namespace gets inode 7 with cookie 200 and counts 20.
        let r = keys.resolve(now, &[t(100, 2553)], &[visited(7, 100)], &none, true);
        assert_eq!(r.transitions.values().sum::<u64>(), 2553);
        let r = keys.resolve(
            now,
            &[t(100, 2553), t(200, 20)],
            &[visited(7, 200)],
            &none,
            true,
        );
        assert_eq!(r.transitions.len(), 1);
        assert_eq!(r.transitions.values().sum::<u64>(), 20, "{r:?}");
        assert_eq!(r.dead, HashSet::from([100]));
    }

    #[test]
    fn unknown_cookies_wait_for_the_grace_then_go() {
        let mut keys = NetnsKeys::default();
        let now = Instant::now();
        let none = HashSet::new();
        let r = keys.resolve(now, &[t(300, 5)], &[], &none, true);
        assert!(r.transitions.is_empty() && r.dead.is_empty(), "{r:?}");
        let later = now + UNKNOWN_GRACE;
        let r = keys.resolve(later, &[t(300, 5)], &[], &none, true);
        assert_eq!(r.dead, HashSet::from([300]));
    }

    #[test]
    fn skipped_namespaces_keep_their_counts() {
        let mut keys = NetnsKeys::default();
        let now = Instant::now();
        keys.resolve(now, &[t(100, 1)], &[visited(7, 100)], &HashSet::new(), true);
        let r = keys.resolve(now, &[t(100, 3)], &[], &HashSet::from([7]), true);
        assert_eq!(r.transitions.values().sum::<u64>(), 3);
        assert!(r.dead.is_empty());
    }

    #[test]
    fn without_cookies_inodes_key_and_dead_ones_go_at_once() {
        let mut keys = NetnsKeys::default();
        let now = Instant::now();
        let v = [VisitedNetns {
            netns: 7,
            cookie: None,
        }];
        let r = keys.resolve(now, &[t(7, 4), t(8, 9)], &v, &HashSet::new(), false);
        assert_eq!(r.transitions.values().sum::<u64>(), 4);
        assert_eq!(r.dead, HashSet::from([8]));
    }
}
