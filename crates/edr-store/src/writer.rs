//! The batch writer: the last stage of the pipeline, turning serialized
//! events into durable batch files and telling the sinks about each one.
//!
//! It runs on the pipeline's own thread (every step is synchronous CPU or
//! disk work) and streams each line through the encoder into the open
//! batch's temporary file, so no batch is ever held whole in memory.
//!
//! A batch is committed when it reaches its size target, when it is due by
//! age, when the settings change, when a flush is requested (pause), and
//! at shutdown. Without adaptive batching the size target is
//! `max_events_per_batch` and a batch is due after
//! `collection_interval_ms`. With it, the size target follows the event
//! rate (about [`BUSY_BATCH_SPAN`] of events, within
//! [`max_events_per_batch`, `adaptive_batching.max_events`]) and a batch
//! smaller than `adaptive_batching.min_events` stays open up to
//! `adaptive_batching.max_interval_ms`. Retention runs after every commit
//! (size cap) and every minute (age), and keeps what a sink still needs.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering::Relaxed};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use edr_config::{Compression, Config};
use edr_model::event::{EventType, Timestamp};
use edr_pipeline::Counters;

use crate::sink::{self, CommittedBatch, SinkLink};
use crate::{Codec, OpenBatch, StorageError, Store};

const AGE_RETENTION_EVERY: Duration = Duration::from_secs(60);
/// A busy agent's batches hold about this much time of events: a few
/// large files a second instead of hundreds of small ones, each of which
/// costs an fsync (~12 ms on this project's test disk).
pub const BUSY_BATCH_SPAN: Duration = Duration::from_secs(1);
/// Weight of the latest batch in the event-rate estimate.
const RATE_WEIGHT: f64 = 0.5;
/// After a failed write, how long events are counted as lost before a new
/// batch is tried: retrying on every event of a flood against a read-only
/// or full disk burns a core.
const STORAGE_RETRY: Duration = Duration::from_secs(1);

/// What the writer shares with the rest of the engine.
#[derive(Debug, Default)]
pub struct WriterShared {
    /// Set by pause: commit the open batch at the next wake.
    pub flush_requested: AtomicBool,
    /// The last batch write failed and none has succeeded since.
    pub storage_failing: AtomicBool,
    /// The last storage error, for alerts and status.
    storage_error: Mutex<Option<String>>,
    /// Number of batch files on disk.
    pub storage_files: AtomicU64,
    /// Sequence number of the last committed batch (0: none yet).
    pub last_committed_seq: AtomicU64,
}

impl WriterShared {
    pub fn storage_error(&self) -> Option<String> {
        self.storage_error
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }

    fn set_error(&self, e: Option<String>) {
        self.storage_failing.store(e.is_some(), Relaxed);
        *self.storage_error.lock().unwrap_or_else(|p| p.into_inner()) = e;
    }
}

#[derive(Debug, Clone, Copy, PartialEq)]
struct Adaptive {
    min_events: u32,
    max_interval: Duration,
    max_events: u32,
}

#[derive(Debug, Clone, Copy, PartialEq)]
struct Settings {
    max_events: u32,
    interval: Duration,
    adaptive: Option<Adaptive>,
    codec: Codec,
    retention: Duration,
    max_bytes: u64,
    /// What sinks hold is kept past retention up to this (shipping's
    /// `max_unshipped_gb`; no cap without shipping).
    max_held_bytes: u64,
}

impl Settings {
    fn from(c: &Config) -> Settings {
        let max_events = c.agent.max_events_per_batch.max(1);
        let interval = Duration::from_millis(c.agent.collection_interval_ms);
        let ab = &c.agent.adaptive_batching;
        let ls = &c.storage.local_storage;
        Settings {
            max_events,
            interval,
            adaptive: ab.enabled.then(|| Adaptive {
                min_events: ab.min_events,
                max_interval: Duration::from_millis(ab.max_interval_ms).max(interval),
                max_events: ab.max_events.max(max_events),
            }),
            codec: match (ls.compress_events, ls.compression) {
                (false, _) => Codec::None,
                (true, c @ Compression::Gzip) => Codec::Gzip {
                    level: ls.compression_level.unwrap_or(c.levels().2),
                },
                (true, c @ Compression::Zstd) => Codec::Zstd {
                    level: ls.compression_level.unwrap_or(c.levels().2),
                },
            },
            retention: Duration::from_secs(u64::from(c.storage.retention_days) * 86_400),
            max_bytes: c.max_storage_bytes(),
            max_held_bytes: if c.shipping.nats.enabled {
                c.shipping.nats.max_unshipped_bytes()
            } else {
                u64::MAX
            },
        }
    }

    /// Events at which a batch is written, given the event rate.
    fn size_target(&self, rate_per_sec: f64) -> u32 {
        match self.adaptive {
            None => self.max_events,
            Some(a) => {
                let span = rate_per_sec * BUSY_BATCH_SPAN.as_secs_f64();
                span.clamp(f64::from(self.max_events), f64::from(a.max_events)) as u32
            }
        }
    }

    /// Time left until a batch of this age and size is due (zero: now).
    fn due_in(&self, age: Duration, events: u32) -> Duration {
        match self.adaptive {
            Some(a) if events < a.min_events => a.max_interval.saturating_sub(age),
            _ => self.interval.saturating_sub(age),
        }
    }
}

struct Open {
    batch: OpenBatch,
    per_type: [u64; 3],
    opened: Instant,
}

/// Owns the store: opens, fills and commits batch files, runs retention.
pub struct BatchWriter {
    store: Store,
    counters: std::sync::Arc<Counters>,
    shared: std::sync::Arc<WriterShared>,
    sinks: Vec<SinkLink>,
    settings: Settings,
    open: Option<Open>,
    /// Events per second, from recent batches (adaptive batching).
    rate: f64,
    size_target: u32,
    last_age_check: Instant,
    /// No new batch before this, after a storage failure.
    retry_at: Option<Instant>,
}

impl BatchWriter {
    pub fn new(
        store: Store,
        config: &Config,
        counters: std::sync::Arc<Counters>,
        shared: std::sync::Arc<WriterShared>,
        sinks: Vec<SinkLink>,
    ) -> BatchWriter {
        let settings = Settings::from(config);
        shared
            .last_committed_seq
            .store(store.files().last().map_or(0, |f| f.seq), Relaxed);
        let mut w = BatchWriter {
            store,
            counters,
            shared,
            sinks,
            settings,
            open: None,
            rate: 0.0,
            size_target: settings.size_target(0.0),
            last_age_check: Instant::now(),
            retry_at: None,
        };
        w.retention(true);
        w
    }

    /// How long until the open batch is due (at most `idle`).
    pub fn due_in(&self, idle: Duration) -> Duration {
        match &self.open {
            Some(o) => self
                .settings
                .due_in(o.opened.elapsed(), o.batch.events)
                .min(idle),
            None => idle,
        }
    }

    /// Applies new settings: a changed codec, or a size target the open
    /// batch already reaches, commits it; retention runs with the new
    /// limits.
    pub fn reconfigure(&mut self, config: &Config) {
        let new = Settings::from(config);
        if new == self.settings {
            return;
        }
        let codec_changed = new.codec != self.settings.codec;
        self.settings = new;
        self.size_target = new.size_target(self.rate);
        let over = self
            .open
            .as_ref()
            .is_some_and(|o| o.batch.events >= self.size_target);
        if codec_changed || over {
            self.commit();
        }
        self.retention(true);
    }

    /// Commits what is due (age, a requested flush) and runs age retention
    /// once a minute.
    pub fn tick(&mut self) {
        if let Some(o) = &self.open {
            if self
                .settings
                .due_in(o.opened.elapsed(), o.batch.events)
                .is_zero()
            {
                self.commit();
            }
        }
        if self.shared.flush_requested.swap(false, Relaxed) {
            self.commit();
        }
        if self.last_age_check.elapsed() >= AGE_RETENTION_EVERY {
            self.retention(true);
        }
    }

    /// Appends one serialized event of type `t` (without its newline).
    pub fn append(&mut self, t: EventType, line: &[u8]) {
        if self.open.is_none() {
            if self.retry_at.is_some_and(|at| Instant::now() < at) {
                self.counters.store_failed.add(t, 1);
                return;
            }
            match self.store.open_batch(Timestamp::now(), self.settings.codec) {
                Ok(batch) => {
                    self.open = Some(Open {
                        batch,
                        per_type: [0; 3],
                        opened: Instant::now(),
                    })
                }
                Err(e) => {
                    self.counters.store_failed.add(t, 1);
                    self.fail(e);
                    return;
                }
            }
        }
        let Some(open) = self.open.as_mut() else {
            return;
        };
        if let Err(e) = open.batch.append(line) {
            self.counters.store_failed.add(t, 1);
            self.abandon(e);
            return;
        }
        open.per_type[t.index()] += 1;
        if open.batch.events >= self.size_target {
            self.commit();
        }
    }

    /// Commits the open batch and runs retention one last time. Dropping
    /// the writer then closes every sink's channel: they have been told
    /// everything.
    pub fn finish(mut self) {
        self.commit();
        self.retention(true);
    }

    /// Folds a finished batch into the event-rate estimate and sets the
    /// size of the next batches from it.
    fn learn_rate(&mut self, events: u32, age: Duration) {
        let observed = f64::from(events) / age.as_secs_f64().max(0.001);
        self.rate = RATE_WEIGHT * observed + (1.0 - RATE_WEIGHT) * self.rate;
        self.size_target = self.settings.size_target(self.rate);
    }

    /// Makes the open batch durable and visible, and tells the sinks.
    pub fn commit(&mut self) {
        let Some(open) = self.open.take() else { return };
        let raw = open.batch.raw_bytes;
        let events = open.batch.events;
        self.learn_rate(events, open.opened.elapsed());
        match open.batch.commit() {
            Ok(file) => {
                for t in EventType::ALL {
                    self.counters.stored.add(t, open.per_type[t.index()]);
                }
                self.counters.raw_bytes.fetch_add(raw, Relaxed);
                self.counters.stored_bytes.fetch_add(file.size, Relaxed);
                self.counters.batches_written.fetch_add(1, Relaxed);
                self.counters
                    .last_batch_latency_us
                    .store(open.opened.elapsed().as_micros() as u64, Relaxed);
                if self.shared.storage_failing.load(Relaxed) {
                    tracing::info!("batch files are being written again");
                }
                self.shared.set_error(None);
                self.shared.last_committed_seq.store(file.seq, Relaxed);
                let committed = CommittedBatch {
                    seq: file.seq,
                    path: file.path.clone(),
                    events: Some(events),
                    bytes: file.size,
                    started: file.started,
                };
                self.store.add(file);
                for s in &self.sinks {
                    s.notify(&committed);
                }
                self.retention(false);
            }
            Err(e) => {
                for t in EventType::ALL {
                    self.counters.store_failed.add(t, open.per_type[t.index()]);
                }
                self.fail(e);
            }
        }
    }

    fn abandon(&mut self, e: StorageError) {
        if let Some(open) = self.open.take() {
            for t in EventType::ALL {
                self.counters.store_failed.add(t, open.per_type[t.index()]);
            }
            open.batch.abandon();
        }
        self.fail(e);
    }

    fn fail(&mut self, e: StorageError) {
        self.retry_at = Some(Instant::now() + STORAGE_RETRY);
        self.counters.batch_failures.fetch_add(1, Relaxed);
        if !self.shared.storage_failing.load(Relaxed) {
            tracing::error!(error = %e, "cannot store events; they are counted as lost until storage recovers");
        }
        self.shared.set_error(Some(e.to_string()));
        // The data dir may have been removed or replaced: re-read it so the
        // size accounting matches what is on disk when writes resume.
        if let Err(e) = self.store.rescan() {
            tracing::debug!(error = %e, "rescan after storage failure");
        }
    }

    /// Size cap always; age too when `with_age`. Never deletes what a sink
    /// still needs.
    fn retention(&mut self, with_age: bool) {
        let retention = if with_age {
            self.last_age_check = Instant::now();
            self.settings.retention
        } else {
            Duration::MAX
        };
        let deleted = self.store.enforce_retention(
            Timestamp::now(),
            retention,
            self.settings.max_bytes,
            sink::keep_from(&self.sinks),
        );
        let deleted = deleted
            + self
                .store
                .enforce_held_cap(sink::keep_from(&self.sinks), self.settings.max_held_bytes);
        if deleted > 0 {
            self.counters
                .retention_deleted_files
                .fetch_add(deleted as u64, Relaxed);
            tracing::info!(deleted, "retention removed batch files");
        }
        self.counters
            .storage_used_bytes
            .store(self.store.total_bytes(), Relaxed);
        self.shared
            .storage_files
            .store(self.store.file_count() as u64, Relaxed);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn settings(adaptive: bool) -> Settings {
        let mut c = Config::default();
        c.agent.max_events_per_batch = 1000;
        c.agent.collection_interval_ms = 5000;
        c.agent.adaptive_batching.enabled = adaptive;
        c.agent.adaptive_batching.min_events = 500;
        c.agent.adaptive_batching.max_interval_ms = 30_000;
        c.agent.adaptive_batching.max_events = 50_000;
        Settings::from(&c)
    }

    #[test]
    fn fixed_batching_ignores_the_rate() {
        let s = settings(false);
        assert_eq!(s.size_target(0.0), 1000);
        assert_eq!(s.size_target(1e6), 1000);
        assert_eq!(s.due_in(Duration::from_secs(5), 3), Duration::ZERO);
    }

    #[test]
    fn busy_batches_grow_to_a_second_of_events_within_bounds() {
        let s = settings(true);
        assert_eq!(s.size_target(10.0), 1000);
        assert_eq!(s.size_target(8000.0), 8000);
        assert_eq!(s.size_target(1e6), 50_000);
    }

    #[test]
    fn quiet_batches_stay_open_until_min_events_or_max_interval() {
        let s = settings(true);
        let secs = Duration::from_secs;
        assert_eq!(s.due_in(secs(5), 499), secs(25));
        assert_eq!(s.due_in(secs(5), 500), Duration::ZERO);
        assert_eq!(s.due_in(secs(2), 800), secs(3));
        assert_eq!(s.due_in(secs(30), 1), Duration::ZERO);
    }

    #[test]
    fn bounds_below_the_base_settings_mean_the_base_settings() {
        let mut c = Config::default();
        c.agent.collection_interval_ms = 10_000;
        c.agent.adaptive_batching.max_interval_ms = 1000;
        c.agent.adaptive_batching.max_events = 10;
        let s = Settings::from(&c);
        assert_eq!(s.size_target(1e6), c.agent.max_events_per_batch);
        assert_eq!(s.due_in(Duration::ZERO, 1), Duration::from_secs(10));
    }

    #[test]
    fn codec_follows_compression_and_level() {
        let mut c = Config::default();
        assert_eq!(Settings::from(&c).codec, Codec::Gzip { level: 6 });
        c.storage.local_storage.compression = Compression::Zstd;
        assert_eq!(Settings::from(&c).codec, Codec::Zstd { level: 3 });
        c.storage.local_storage.compression_level = Some(9);
        assert_eq!(Settings::from(&c).codec, Codec::Zstd { level: 9 });
        c.storage.local_storage.compress_events = false;
        assert_eq!(Settings::from(&c).codec, Codec::None);
    }
}
