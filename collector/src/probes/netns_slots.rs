//! The namespace slots of `inet_sock_set_state`: up to [`NETNS_SLOTS`] namespaces
//! have their TCP state transitions counted in a per-CPU array (`NETNS_SLOT_COUNTS`)
//! instead of the `TRANSITIONS` hash, an array increment instead of a hash update
//! on a path that runs six times per connection. Userspace owns the assignment
//! (`NETNS_SLOT_KEYS`): a slot goes to a namespace the hash counted transitions in
//! (the busiest first), and comes back when that namespace dies.
//!
//! Counts stay exact across the hand-over: a namespace's transitions are the sum of
//! its hash entries (those counted before it had a slot) and its slot. A slot whose
//! namespace died is first unassigned (the programs count nothing more in it), and
//! zeroed one poll later, before another namespace may have it: a program that read
//! the old assignment just before it changed has long finished by then.

use std::collections::HashSet;

use collector_common::tcp_state::{NETNS_SLOTS, SLOT_STATES, SlotKeys};

use super::maps::NetTransition;

/// Userspace's view of the slots.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct SlotTable {
    /// The namespace key each slot counts for, as written to `NETNS_SLOT_KEYS`.
    keys: SlotKeys,
    /// Slots unassigned at the last poll, to zero at this one.
    retiring: [bool; NETNS_SLOTS],
}

/// What [`SlotTable::settle`] asks of the maps.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct Changes {
    /// Slots whose per-CPU counts are to be zeroed (before `keys` is written).
    pub zero: Vec<u32>,
    /// The new assignment, when it changed.
    pub keys: Option<SlotKeys>,
}

impl SlotTable {
    /// The slots assigned, with their namespace keys.
    pub fn assigned(&self) -> impl Iterator<Item = (u32, u64)> + '_ {
        (0u32..).zip(self.keys).filter(|&(_, key)| key != 0)
    }

    /// After a poll: frees the slots unassigned at the previous one, unassigns those
    /// of `dead` namespaces, and gives free slots to the busiest namespaces of
    /// `counted` (this poll's transitions, by kernel namespace key) without one.
    pub fn settle(&mut self, dead: &HashSet<u64>, counted: &[(NetTransition, u64)]) -> Changes {
        let mut changes = Changes::default();
        let before = self.keys;
        for (slot, retiring) in (0u32..).zip(self.retiring.iter_mut()) {
            if std::mem::take(retiring) {
                changes.zero.push(slot);
            }
        }
        for (key, retiring) in self.keys.iter_mut().zip(self.retiring.iter_mut()) {
            if *key != 0 && dead.contains(key) {
                *key = 0;
                *retiring = true;
            }
        }
        let mut busiest: Vec<(u64, u64)> = Vec::new();
        for (t, n) in counted {
            if t.net_key == 0 || dead.contains(&t.net_key) || self.keys.contains(&t.net_key) {
                continue;
            }
            match busiest.iter_mut().find(|(key, _)| *key == t.net_key) {
                Some((_, total)) => *total = total.saturating_add(*n),
                None => busiest.push((t.net_key, *n)),
            }
        }
        busiest.sort_by(|a, b| b.1.cmp(&a.1).then(a.0.cmp(&b.0)));
        let mut candidates = busiest.into_iter().map(|(key, _)| key);
        for (key, retiring) in self.keys.iter_mut().zip(self.retiring) {
            if *key == 0
                && !retiring
                && let Some(next) = candidates.next()
            {
                *key = next;
            }
        }
        if self.keys != before {
            changes.keys = Some(self.keys);
        }
        changes
    }
}

/// A slot's per-CPU counts as transitions of `net_key` (nonzero ones only).
pub fn slot_transitions<'a>(
    net_key: u64,
    per_cpu: impl Iterator<Item = &'a [u64]>,
) -> Vec<(NetTransition, u64)> {
    let mut sums = [0u64; SLOT_STATES * SLOT_STATES];
    for counts in per_cpu {
        for (sum, n) in sums.iter_mut().zip(counts) {
            *sum = sum.wrapping_add(*n);
        }
    }
    (0..SLOT_STATES * SLOT_STATES)
        .filter(|&i| sums[i] != 0)
        .map(|i| {
            let t = NetTransition {
                net_key,
                from: (i / SLOT_STATES) as u8,
                to: (i % SLOT_STATES) as u8,
            };
            (t, sums[i])
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn counted(keys: &[(u64, u64)]) -> Vec<(NetTransition, u64)> {
        keys.iter()
            .map(|&(net_key, n)| {
                let t = NetTransition {
                    net_key,
                    from: 10,
                    to: 3,
                };
                (t, n)
            })
            .collect()
    }

    #[test]
    fn busiest_namespaces_get_slots_and_dead_ones_give_them_back_a_poll_later() {
        let mut table = SlotTable::default();
        let none = HashSet::new();
        let mut many: Vec<(u64, u64)> = (1..=20).map(|k| (k, k * 10)).collect();
        many.push((0, 1_000_000)); // unreadable namespace: never a slot
        let c = table.settle(&none, &counted(&many));
        assert!(c.zero.is_empty());
        assert_eq!(c.keys, Some([20, 19, 18, 17, 16, 15, 14, 13]));
        // Nothing new: nothing to write.
        assert_eq!(table.settle(&none, &counted(&many)), Changes::default());

        // 19 dies: its slot is unassigned, not yet given away (12 waits).
        let dead: HashSet<u64> = [19].into();
        let c = table.settle(&dead, &counted(&many));
        assert_eq!(c.keys, Some([20, 0, 18, 17, 16, 15, 14, 13]));
        assert!(c.zero.is_empty());
        // Next poll (19's hash entries are gone with it): zeroed, then assigned to
        // the busiest without a slot.
        many.retain(|&(k, _)| k != 19);
        let c = table.settle(&none, &counted(&many));
        assert_eq!(c.zero, [1]);
        assert_eq!(c.keys, Some([20, 12, 18, 17, 16, 15, 14, 13]));
        assert_eq!(table.assigned().count(), NETNS_SLOTS);
        assert_eq!(table.assigned().next(), Some((0, 20)));
    }

    #[test]
    fn counts_of_a_key_in_two_entries_are_summed_to_rank_it() {
        let mut table = SlotTable::default();
        let mut c = counted(&[(5, 3), (6, 4), (5, 2)]);
        c[2].0.to = 1;
        assert_eq!(
            table.settle(&HashSet::new(), &c).keys,
            Some([5, 6, 0, 0, 0, 0, 0, 0])
        );
    }

    #[test]
    fn a_slot_reads_as_its_nonzero_transitions_summed_over_cpus() {
        let mut a = vec![0u64; SLOT_STATES * SLOT_STATES];
        let mut b = a.clone();
        a[10 * SLOT_STATES + 3] = 4;
        b[10 * SLOT_STATES + 3] = 5;
        b[SLOT_STATES + 7] = 1;
        let t = slot_transitions(77, [a.as_slice(), b.as_slice()].into_iter());
        assert_eq!(
            t,
            [
                (
                    NetTransition {
                        net_key: 77,
                        from: 1,
                        to: 7
                    },
                    1
                ),
                (
                    NetTransition {
                        net_key: 77,
                        from: 10,
                        to: 3
                    },
                    9
                ),
            ]
        );
    }
}
