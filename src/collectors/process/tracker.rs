//! The diff between consecutive scans.

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

/// The processes alive at the last scan, each with what its end event needs.
///
/// A scan is `begin`, then `observe` (or `insert` for new keys) for every
/// process listed, then `sweep` to remove those not listed: they ended.
/// Marking by generation avoids building a set of the current keys on
/// every scan.
#[derive(Debug)]
pub(crate) struct Tracker<V> {
    live: HashMap<ProcKey, Entry<V>>,
    generation: u64,
}

#[derive(Debug)]
struct Entry<V> {
    value: V,
    seen: u64,
}

impl<V> Tracker<V> {
    pub fn new() -> Self {
        Tracker {
            live: HashMap::new(),
            generation: 0,
        }
    }

    pub fn begin(&mut self) {
        self.generation += 1;
    }

    /// Marks a listed process as still alive. False if it is new.
    pub fn observe(&mut self, key: ProcKey) -> bool {
        match self.live.get_mut(&key) {
            Some(entry) => {
                entry.seen = self.generation;
                true
            }
            None => false,
        }
    }

    pub fn insert(&mut self, key: ProcKey, value: V) {
        let seen = self.generation;
        self.live.insert(key, Entry { value, seen });
    }

    pub fn get(&self, key: &ProcKey) -> Option<&V> {
        self.live.get(key).map(|e| &e.value)
    }

    pub fn get_mut(&mut self, key: &ProcKey) -> Option<&mut V> {
        self.live.get_mut(key).map(|e| &mut e.value)
    }

    /// Removes the processes not listed in this scan into `gone`.
    pub fn sweep(&mut self, gone: &mut Vec<(ProcKey, V)>) {
        let generation = self.generation;
        gone.extend(
            self.live
                .extract_if(|_, e| e.seen != generation)
                .map(|(k, e)| (k, e.value)),
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
    fn scan(t: &mut Tracker<&'static str>, listed: &[ProcKey]) -> (Vec<ProcKey>, Vec<ProcKey>) {
        t.begin();
        let mut new = Vec::new();
        for k in listed {
            if !t.observe(*k) {
                t.insert(*k, "v");
                new.push(*k);
            }
        }
        let mut gone = Vec::new();
        t.sweep(&mut gone);
        let mut gone: Vec<ProcKey> = gone.into_iter().map(|(k, _)| k).collect();
        new.sort_by_key(|k| (k.pid, k.start));
        gone.sort_by_key(|k| (k.pid, k.start));
        (new, gone)
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
        assert!(t.get(&key(2, 11)).is_none());
        assert!(t.get(&key(3, 12)).is_some());
    }

    #[test]
    fn pid_reuse_is_an_end_and_a_start() {
        let mut t = Tracker::new();
        scan(&mut t, &[key(7, 100)]);
        assert_eq!(
            scan(&mut t, &[key(7, 105)]),
            (vec![key(7, 105)], vec![key(7, 100)])
        );
    }

    #[test]
    fn gone_values_are_handed_back() {
        let mut t = Tracker::new();
        t.begin();
        t.insert(key(1, 1), "kept for the end event");
        t.begin();
        let mut gone = Vec::new();
        t.sweep(&mut gone);
        assert_eq!(gone, vec![(key(1, 1), "kept for the end event")]);
        assert_eq!(t.len(), 0);
    }
}
