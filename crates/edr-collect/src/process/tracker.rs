//! The processes the collector believes alive: one view shared by the
//! scan and the event source, so neither reports what the other already
//! did.

use std::collections::HashMap;

/// What identifies one process across scans. A pid reused by a later
/// process comes with a different start time, so it is a new key and the
/// old process is reported as ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub(crate) struct ProcKey {
    pub pid: u32,
    /// Start time as the scanner sees it on every scan (whole seconds).
    pub start: u64,
}

/// Live processes by pid (the kernel gives a pid to one live process at a
/// time), each with what its events need.
///
/// A scan is `begin`, then `observe` (or `insert` for new keys) for every
/// process listed, then `sweep` to remove those not listed: they ended.
/// Marking by generation avoids building a set of the current keys on
/// every scan. An event source inserts and removes between scans.
#[derive(Debug)]
pub(crate) struct Tracker<V> {
    live: HashMap<u32, Entry<V>>,
    generation: u64,
    /// Entries displaced by a new process on the same pid, handed out by
    /// the next `sweep` as ended.
    replaced: Vec<(ProcKey, V)>,
}

#[derive(Debug)]
struct Entry<V> {
    start: u64,
    value: V,
    seen: u64,
    /// Consecutive scans that did not list it.
    misses: u8,
}

impl<V> Tracker<V> {
    pub fn new() -> Self {
        Tracker {
            live: HashMap::new(),
            generation: 0,
            replaced: Vec::new(),
        }
    }

    pub fn begin(&mut self) {
        self.generation += 1;
    }

    /// Marks a listed process as still alive. False if it is new.
    pub fn observe(&mut self, key: ProcKey) -> bool {
        match self.live.get_mut(&key.pid) {
            Some(entry) if entry.start == key.start => {
                entry.seen = self.generation;
                entry.misses = 0;
                true
            }
            _ => false,
        }
    }

    /// Adds a process. An earlier process on the same pid whose end was not
    /// seen is kept for the next `sweep` to report.
    pub fn insert(&mut self, key: ProcKey, value: V) {
        let entry = Entry {
            start: key.start,
            value,
            seen: self.generation,
            misses: 0,
        };
        if let Some(old) = self.live.insert(key.pid, entry) {
            if old.start != key.start {
                let old_key = ProcKey {
                    pid: key.pid,
                    start: old.start,
                };
                self.replaced.push((old_key, old.value));
            }
        }
    }

    /// The process now holding `pid`, if known.
    pub fn get(&self, pid: u32) -> Option<(ProcKey, &V)> {
        self.live.get(&pid).map(|e| {
            (
                ProcKey {
                    pid,
                    start: e.start,
                },
                &e.value,
            )
        })
    }

    pub fn get_mut(&mut self, pid: u32) -> Option<(ProcKey, &mut V)> {
        self.live.get_mut(&pid).map(|e| {
            (
                ProcKey {
                    pid,
                    start: e.start,
                },
                &mut e.value,
            )
        })
    }

    /// The value of exactly this process (pid and start).
    pub fn get_key(&self, key: &ProcKey) -> Option<&V> {
        self.get(key.pid)
            .filter(|(k, _)| k == key)
            .map(|(_, value)| value)
    }

    pub fn get_key_mut(&mut self, key: &ProcKey) -> Option<&mut V> {
        self.get_mut(key.pid)
            .filter(|(k, _)| k == key)
            .map(|(_, value)| value)
    }

    /// Removes the process holding `pid` (its end was seen).
    pub fn remove(&mut self, pid: u32) -> Option<(ProcKey, V)> {
        self.live.remove(&pid).map(|e| {
            (
                ProcKey {
                    pid,
                    start: e.start,
                },
                e.value,
            )
        })
    }

    /// Moves into `gone` the processes displaced on their pid and those
    /// not listed by the last `tolerated + 1` scans. Tolerating a miss
    /// leaves time for an event source to report an end that is still on
    /// its way.
    pub fn sweep(&mut self, gone: &mut Vec<(ProcKey, V)>, tolerated: u8) {
        gone.append(&mut self.replaced);
        let generation = self.generation;
        for entry in self.live.values_mut() {
            if entry.seen != generation {
                entry.misses = entry.misses.saturating_add(1);
            }
        }
        gone.extend(
            self.live
                .extract_if(|_, e| e.misses > tolerated)
                .map(|(pid, e)| {
                    (
                        ProcKey {
                            pid,
                            start: e.start,
                        },
                        e.value,
                    )
                }),
        );
        // Shed the table's capacity after a burst of short-lived processes.
        if self.live.capacity() > 2 * self.live.len() + 64 {
            self.live.shrink_to_fit();
        }
    }

    pub fn len(&self) -> usize {
        self.live.len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn key(pid: u32, start: u64) -> ProcKey {
        ProcKey { pid, start }
    }

    /// One scan over `listed`; returns (new, gone) keys, sorted.
    fn scan_tolerating(
        t: &mut Tracker<&'static str>,
        listed: &[ProcKey],
        tolerated: u8,
    ) -> (Vec<ProcKey>, Vec<ProcKey>) {
        t.begin();
        let mut new = Vec::new();
        for k in listed {
            if !t.observe(*k) {
                t.insert(*k, "v");
                new.push(*k);
            }
        }
        let mut gone = Vec::new();
        t.sweep(&mut gone, tolerated);
        let mut gone: Vec<ProcKey> = gone.into_iter().map(|(k, _)| k).collect();
        new.sort_by_key(|k| (k.pid, k.start));
        gone.sort_by_key(|k| (k.pid, k.start));
        (new, gone)
    }

    fn scan(t: &mut Tracker<&'static str>, listed: &[ProcKey]) -> (Vec<ProcKey>, Vec<ProcKey>) {
        scan_tolerating(t, listed, 0)
    }

    #[test]
    fn first_scan_is_all_new_and_repeats_are_quiet() {
        let mut t = Tracker::new();
        let all = [key(1, 10), key(2, 11)];
        assert_eq!(scan(&mut t, &all), (all.to_vec(), vec![]));
        assert_eq!(scan(&mut t, &all), (vec![], vec![]));
        assert_eq!(t.len(), 2);
    }

    #[test]
    fn starts_and_ends_are_reported_once() {
        let mut t = Tracker::new();
        scan(&mut t, &[key(1, 10), key(2, 11)]);
        assert_eq!(
            scan(&mut t, &[key(1, 10), key(3, 12)]),
            (vec![key(3, 12)], vec![key(2, 11)])
        );
        assert_eq!(scan(&mut t, &[key(1, 10), key(3, 12)]), (vec![], vec![]));
        assert!(t.get_key(&key(2, 11)).is_none());
        assert!(t.get_key(&key(3, 12)).is_some());
    }

    #[test]
    fn pid_reuse_is_an_end_and_a_start() {
        let mut t = Tracker::new();
        scan(&mut t, &[key(7, 100)]);
        assert_eq!(
            scan(&mut t, &[key(7, 105)]),
            (vec![key(7, 105)], vec![key(7, 100)])
        );
        assert_eq!(t.get(7).map(|(k, _)| k), Some(key(7, 105)));
    }

    #[test]
    fn gone_values_are_handed_back() {
        let mut t = Tracker::new();
        t.begin();
        t.insert(key(1, 1), "kept for the end event");
        t.begin();
        let mut gone = Vec::new();
        t.sweep(&mut gone, 0);
        assert_eq!(gone, vec![(key(1, 1), "kept for the end event")]);
        assert_eq!(t.len(), 0);
    }

    #[test]
    fn a_tolerated_miss_waits_one_more_scan() {
        let mut t = Tracker::new();
        scan_tolerating(&mut t, &[key(1, 1), key(2, 2)], 1);
        assert_eq!(scan_tolerating(&mut t, &[key(1, 1)], 1), (vec![], vec![]));
        // Listed again: the miss is forgiven.
        assert_eq!(
            scan_tolerating(&mut t, &[key(1, 1), key(2, 2)], 1),
            (vec![], vec![])
        );
        scan_tolerating(&mut t, &[key(1, 1)], 1);
        assert_eq!(
            scan_tolerating(&mut t, &[key(1, 1)], 1),
            (vec![], vec![key(2, 2)])
        );
    }

    #[test]
    fn entries_removed_between_scans_are_not_swept() {
        let mut t = Tracker::new();
        scan(&mut t, &[key(1, 1), key(2, 2)]);
        assert_eq!(t.remove(2).map(|(k, _)| k), Some(key(2, 2)));
        assert_eq!(scan(&mut t, &[key(1, 1)]), (vec![], vec![]));
        assert!(t.remove(2).is_none());
    }
}
