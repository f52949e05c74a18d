//! Event filtering between the queue and the batch file: configured
//! exclusions, coalescing of bursts of changes to one file, and exact
//! repeats. The batcher asks before serializing ([`Filter::admit`]) and,
//! for repeats, after ([`Filter::is_repeat`]), so a dropped event costs no
//! compression. Every drop is counted by the caller in
//! `Counters::filtered`.
//!
//! The memory of recent events is bounded ([`MEMORY_ENTRIES`]); when it is
//! full of live entries it is forgotten, so the filter fails open (stores
//! more) rather than growing.

use std::collections::{HashMap, HashSet};
use std::time::{Duration, Instant};

use globset::{Glob, GlobSet, GlobSetBuilder};

use edr_config::FiltersConfig;
use edr_model::event::{Action, Event};

/// Paths and repeat keys remembered at most, each (~40 bytes an entry).
pub const MEMORY_ENTRIES: usize = 4096;

/// How our writer starts every line: the timestamp, which repeats ignore.
const TIMESTAMP_PREFIX: &[u8] = b"{\"@timestamp\":\"";
/// `2026-11-25T19:47:15.123Z",`
const TIMESTAMP_FIELD_LEN: usize = 24 + 2;

/// Keys seen recently, with when; bounded by [`MEMORY_ENTRIES`].
#[derive(Debug, Default)]
struct Recent {
    seen: HashMap<u64, Instant>,
}

impl Recent {
    /// True if `key` was recorded less than `window` ago; otherwise records
    /// it now. A window runs from the event that was kept, so a file that
    /// changes continuously is reported once per window.
    fn hit(&mut self, key: u64, now: Instant, window: Duration) -> bool {
        if let Some(t) = self.seen.get(&key) {
            if now.saturating_duration_since(*t) < window {
                return true;
            }
        }
        if self.seen.len() >= MEMORY_ENTRIES {
            self.seen
                .retain(|_, t| now.saturating_duration_since(*t) < window);
            if self.seen.len() >= MEMORY_ENTRIES {
                self.seen.clear();
            }
            self.seen.shrink_to(MEMORY_ENTRIES);
        }
        self.seen.insert(key, now);
        false
    }

    fn forget(&mut self, key: u64) {
        self.seen.remove(&key);
    }
}

/// The filter stage; rebuilt when `filters.*` changes.
#[derive(Debug)]
pub struct Filter {
    coalesce: Duration,
    repeat: Duration,
    exclude_actions: HashSet<Action>,
    exclude_processes: Option<GlobSet>,
    modified: Recent,
    repeats: Recent,
}

impl Filter {
    /// Builds the filter. Actions and patterns were validated with the
    /// config; one that still does not parse is skipped with a warning.
    pub fn new(cfg: &FiltersConfig) -> Filter {
        Filter {
            coalesce: Duration::from_millis(cfg.coalesce_file_changes_ms),
            repeat: Duration::from_millis(cfg.repeat_window_ms),
            exclude_actions: parse_actions(&cfg.exclude_actions),
            exclude_processes: build_globs(&cfg.exclude_processes),
            modified: Recent::default(),
            repeats: Recent::default(),
        }
    }

    /// Whether an event passes the exclusions and file-change coalescing.
    pub fn admit(&mut self, e: &Event, now: Instant) -> bool {
        if self.exclude_actions.contains(&e.event.action) {
            return false;
        }
        if let (Some(globs), Some(p)) = (&self.exclude_processes, &e.process) {
            let exe = p.executable.as_deref().unwrap_or_default();
            if globs.is_match(&p.name) || (!exe.is_empty() && globs.is_match(exe)) {
                return false;
            }
        }
        if self.coalesce.is_zero() {
            return true;
        }
        let Some(file) = &e.file else { return true };
        let key = hash64(file.path.as_bytes());
        if e.event.action == Action::FileModified {
            return !self.modified.hit(key, now, self.coalesce);
        }
        // A new identity for the path (created, deleted, renamed): its next
        // change is news again.
        self.modified.forget(key);
        if let Some(original) = e.edr.as_ref().and_then(|x| x.original_path.as_ref()) {
            self.modified.forget(hash64(original.as_bytes()));
        }
        true
    }

    /// Whether a serialized event repeats one stored within the window,
    /// ignoring its `@timestamp`. Records it otherwise.
    pub fn is_repeat(&mut self, line: &[u8], now: Instant) -> bool {
        if self.repeat.is_zero() {
            return false;
        }
        self.repeats
            .hit(hash64(without_timestamp(line)), now, self.repeat)
    }
}

fn parse_actions(names: &[String]) -> HashSet<Action> {
    names
        .iter()
        .filter_map(|n| {
            let a = Action::parse(n);
            if a.is_none() {
                tracing::warn!(action = %n, "unknown event action in filters.exclude_actions; skipped");
            }
            a
        })
        .collect()
}

fn build_globs(patterns: &[String]) -> Option<GlobSet> {
    if patterns.is_empty() {
        return None;
    }
    let mut b = GlobSetBuilder::new();
    for p in patterns {
        match Glob::new(p) {
            Ok(g) => {
                b.add(g);
            }
            Err(e) => tracing::warn!(pattern = %p, error = %e, "process exclusion ignored"),
        }
    }
    b.build()
        .map_err(|e| tracing::warn!(error = %e, "process exclusions ignored"))
        .ok()
}

fn without_timestamp(line: &[u8]) -> &[u8] {
    match line.strip_prefix(TIMESTAMP_PREFIX) {
        Some(rest) => rest.get(TIMESTAMP_FIELD_LEN..).unwrap_or(line),
        None => line,
    }
}

/// A fast 64-bit hash of a byte string, eight bytes per step (an event line
/// is hashed in ~60 ns). Not keyed: only our own events are hashed, and a
/// collision costs one event being taken for a repeat, at odds of about
/// 2^-64 per pair.
fn hash64(bytes: &[u8]) -> u64 {
    const K: u64 = 0x9e37_79b9_7f4a_7c15;
    let mut h = (bytes.len() as u64).wrapping_mul(K);
    let mut chunks = bytes.chunks_exact(8);
    for c in &mut chunks {
        let mut w = [0u8; 8];
        w.copy_from_slice(c);
        h = (h.rotate_left(23) ^ u64::from_le_bytes(w)).wrapping_mul(K);
    }
    let mut w = [0u8; 8];
    w[..chunks.remainder().len()].copy_from_slice(chunks.remainder());
    h = (h.rotate_left(23) ^ u64::from_le_bytes(w)).wrapping_mul(K);
    // murmur3's finalizer: spreads the last word into every bit.
    h ^= h >> 33;
    h = h.wrapping_mul(0xff51_afd7_ed55_8ccd);
    h ^= h >> 33;
    h = h.wrapping_mul(0xc4ce_b9fe_1a85_ec53);
    h ^ (h >> 33)
}

#[cfg(test)]
mod tests {
    use super::*;
    use edr_model::event::{EventMeta, File, Origin, Process, Timestamp};

    fn file_event(action: Action, path: &str) -> Event {
        let meta = EventMeta {
            kind: "event",
            category: &["file"],
            types: &["change"],
            action,
            duration: None,
            severity: None,
            risk_score: None,
        };
        let mut e = Event::new(&Origin::detect(), Timestamp(1000), meta);
        e.file = Some(Box::new(File {
            path: path.to_string(),
            ..File::default()
        }));
        e
    }

    fn process_event(name: &str, exe: &str) -> Event {
        let meta = EventMeta {
            kind: "event",
            category: &["process"],
            types: &["start"],
            action: Action::ProcessStarted,
            duration: None,
            severity: None,
            risk_score: None,
        };
        let mut e = Event::new(&Origin::detect(), Timestamp(1000), meta);
        e.process = Some(Box::new(Process {
            name: name.to_string(),
            executable: Some(exe.to_string()),
            ..Process::default()
        }));
        e
    }

    fn config() -> FiltersConfig {
        FiltersConfig {
            coalesce_file_changes_ms: 1000,
            repeat_window_ms: 10_000,
            ..FiltersConfig::default()
        }
    }

    #[test]
    fn a_burst_of_changes_to_one_file_keeps_one_per_window() {
        let mut f = Filter::new(&config());
        let t0 = Instant::now();
        let m = file_event(Action::FileModified, "/w/a.txt");
        let other = file_event(Action::FileModified, "/w/b.txt");
        assert!(f.admit(&m, t0));
        assert!(!f.admit(&m, t0 + Duration::from_millis(10)));
        assert!(f.admit(&other, t0 + Duration::from_millis(20)));
        assert!(!f.admit(&m, t0 + Duration::from_millis(999)));
        // The window runs from the kept event, so a continuous writer is
        // reported once a window, not once at its start.
        assert!(f.admit(&m, t0 + Duration::from_millis(1000)));
        // Deleting and recreating the file makes its next change news.
        assert!(f.admit(
            &file_event(Action::FileDeleted, "/w/a.txt"),
            t0 + Duration::from_millis(1001)
        ));
        assert!(f.admit(&m, t0 + Duration::from_millis(1002)));
    }

    #[test]
    fn coalescing_off_keeps_everything() {
        let mut f = Filter::new(&FiltersConfig {
            coalesce_file_changes_ms: 0,
            ..config()
        });
        let t0 = Instant::now();
        let m = file_event(Action::FileModified, "/w/a.txt");
        assert!((0..5).all(|_| f.admit(&m, t0)));
    }

    #[test]
    fn repeats_ignore_the_timestamp_only() {
        let mut f = Filter::new(&config());
        let t0 = Instant::now();
        let a = br#"{"@timestamp":"2026-11-25T19:47:15.123Z","event":{"action":"x"}}"#;
        let a_later = br#"{"@timestamp":"2026-11-25T19:47:16.456Z","event":{"action":"x"}}"#;
        let b = br#"{"@timestamp":"2026-11-25T19:47:16.456Z","event":{"action":"y"}}"#;
        assert!(!f.is_repeat(a, t0));
        assert!(f.is_repeat(a_later, t0 + Duration::from_secs(1)));
        assert!(!f.is_repeat(b, t0 + Duration::from_secs(1)));
        assert!(!f.is_repeat(a, t0 + Duration::from_secs(11)));
    }

    #[test]
    fn exclusions_drop_actions_and_processes_by_name_or_path() {
        let mut f = Filter::new(&FiltersConfig {
            exclude_actions: vec!["file-deleted".into()],
            exclude_processes: vec!["chrome".into(), "/opt/backup/**".into()],
            ..config()
        });
        let t0 = Instant::now();
        assert!(!f.admit(&file_event(Action::FileDeleted, "/w/a"), t0));
        assert!(f.admit(&file_event(Action::FileCreated, "/w/a"), t0));
        assert!(!f.admit(&process_event("chrome", "/usr/lib/chromium/chrome"), t0));
        assert!(!f.admit(&process_event("agent", "/opt/backup/bin/agent"), t0));
        assert!(f.admit(&process_event("bash", "/usr/bin/bash"), t0));
    }

    #[test]
    fn memory_stays_bounded() {
        let mut f = Filter::new(&config());
        let t0 = Instant::now();
        for i in 0..3 * MEMORY_ENTRIES {
            let line = format!("{{\"i\":{i}}}");
            assert!(!f.is_repeat(line.as_bytes(), t0));
            assert!(f.admit(&file_event(Action::FileModified, &format!("/w/{i}")), t0));
        }
        assert!(f.repeats.seen.len() <= MEMORY_ENTRIES);
        assert!(f.modified.seen.len() <= MEMORY_ENTRIES);
    }

    #[test]
    fn hash_tells_apart_lines_that_differ_anywhere() {
        let base =
            b"{\"event\":{\"action\":\"file-modified\"},\"file\":{\"path\":\"/a/b\"}}".to_vec();
        let h = hash64(&base);
        for i in 0..base.len() {
            let mut v = base.clone();
            v[i] ^= 1;
            assert_ne!(hash64(&v), h, "byte {i}");
        }
        assert_ne!(hash64(&base[..base.len() - 1]), h);
    }
}
