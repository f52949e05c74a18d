//! The batcher: drains the event queue into batch files.
//!
//! Runs on its own blocking thread because every step (serialize,
//! compress, write, fsync) is synchronous CPU or disk work. A batch is
//! committed when it holds `max_events_per_batch` events, when
//! `collection_interval_ms` has passed since its first event, when the
//! settings change, when a flush is requested (pause), and when the queue
//! closes at shutdown. Retention runs after every commit (size cap) and
//! every minute (age).

use std::collections::VecDeque;
use std::sync::atomic::{AtomicBool, Ordering::Relaxed};
use std::sync::mpsc::{Receiver, RecvTimeoutError};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use tokio::sync::watch;

use crate::config::Config;
use crate::event::{Event, EventType, Timestamp};
use crate::pipeline::Counters;
use crate::storage::{Codec, OpenBatch, StorageError, Store};

/// Longest the batcher sleeps with nothing to do, so it notices settings
/// changes and flush requests promptly.
const IDLE_TICK: Duration = Duration::from_secs(1);
const AGE_RETENTION_EVERY: Duration = Duration::from_secs(60);
/// After a failed write, how long events are counted as lost before a new
/// batch is tried: retrying on every event of a flood against a read-only
/// or full disk burns a core.
const STORAGE_RETRY: Duration = Duration::from_secs(1);

/// State the batcher shares with the rest of the engine.
#[derive(Debug, Default)]
pub struct BatcherShared {
    /// Set by pause: commit the open batch at the next wake.
    pub flush_requested: AtomicBool,
    /// The last batch write failed and none has succeeded since.
    pub storage_failing: AtomicBool,
    /// The last storage error, for alerts and status.
    pub storage_error: Mutex<Option<String>>,
    /// Number of batch files on disk.
    pub storage_files: std::sync::atomic::AtomicU64,
    recent: Mutex<VecDeque<Box<str>>>,
    recent_capacity: usize,
}

impl BatcherShared {
    /// `recent_capacity`: how many of the latest stored events to keep in
    /// memory for the app's event table (0 for the headless agent).
    pub fn new(recent_capacity: usize) -> Arc<BatcherShared> {
        Arc::new(BatcherShared {
            recent_capacity,
            recent: Mutex::new(VecDeque::with_capacity(recent_capacity)),
            ..BatcherShared::default()
        })
    }

    /// The latest stored events as JSON lines, newest last.
    pub fn recent_events(&self, limit: usize) -> Vec<String> {
        let q = self.recent.lock().unwrap_or_else(|p| p.into_inner());
        let skip = q.len().saturating_sub(limit);
        q.iter().skip(skip).map(|s| s.to_string()).collect()
    }

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

    fn remember(&self, line: &[u8]) {
        if self.recent_capacity == 0 {
            return;
        }
        let mut q = self.recent.lock().unwrap_or_else(|p| p.into_inner());
        if q.len() == self.recent_capacity {
            q.pop_front();
        }
        q.push_back(String::from_utf8_lossy(line).into());
    }
}

#[derive(Debug, Clone, Copy, PartialEq)]
struct Settings {
    max_events: u32,
    interval: Duration,
    codec: Codec,
    retention: Duration,
    max_bytes: u64,
}

impl Settings {
    fn from(c: &Config) -> Settings {
        Settings {
            max_events: c.agent.max_events_per_batch.max(1),
            interval: Duration::from_millis(c.agent.collection_interval_ms),
            codec: if c.storage.local_storage.compress_events {
                Codec::Gzip { level: 6 }
            } else {
                Codec::None
            },
            retention: Duration::from_secs(u64::from(c.storage.retention_days) * 86_400),
            max_bytes: c.max_storage_bytes(),
        }
    }
}

struct Open {
    batch: OpenBatch,
    per_type: [u64; 3],
    opened: Instant,
}

/// Owns the store and the receiving end of the queue.
pub struct Batcher {
    rx: Receiver<Event>,
    store: Store,
    config: watch::Receiver<Arc<Config>>,
    counters: Arc<Counters>,
    shared: Arc<BatcherShared>,
    settings: Settings,
    open: Option<Open>,
    /// Reused serialization buffer.
    buf: Vec<u8>,
    last_age_check: Instant,
    /// No new batch before this, after a storage failure.
    retry_at: Option<Instant>,
}

impl Batcher {
    pub fn new(
        rx: Receiver<Event>,
        store: Store,
        mut config: watch::Receiver<Arc<Config>>,
        counters: Arc<Counters>,
        shared: Arc<BatcherShared>,
    ) -> Batcher {
        let settings = Settings::from(&config.borrow_and_update());
        Batcher {
            rx,
            store,
            config,
            counters,
            shared,
            settings,
            open: None,
            buf: Vec::with_capacity(4096),
            last_age_check: Instant::now(),
            retry_at: None,
        }
    }

    /// Runs until every sender is dropped, then commits the open batch.
    pub fn run(mut self) {
        self.retention(true);
        loop {
            let timeout = match &self.open {
                Some(o) => self
                    .settings
                    .interval
                    .saturating_sub(o.opened.elapsed())
                    .min(IDLE_TICK),
                None => IDLE_TICK,
            };
            match self.rx.recv_timeout(timeout) {
                Ok(event) => self.append(&event),
                Err(RecvTimeoutError::Timeout) => {}
                Err(RecvTimeoutError::Disconnected) => break,
            }
            self.housekeeping();
        }
        self.commit();
        self.retention(true);
        tracing::debug!("batcher stopped");
    }

    fn housekeeping(&mut self) {
        if self.config.has_changed().unwrap_or(false) {
            let new = Settings::from(&self.config.borrow_and_update());
            if new != self.settings {
                let codec_changed = new.codec != self.settings.codec;
                self.settings = new;
                let over = self
                    .open
                    .as_ref()
                    .is_some_and(|o| o.batch.events >= new.max_events);
                if codec_changed || over {
                    self.commit();
                }
                self.retention(true);
            }
        }
        if let Some(o) = &self.open {
            if o.opened.elapsed() >= self.settings.interval {
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

    fn append(&mut self, event: &Event) {
        let t = event.event_type();
        self.buf.clear();
        if let Err(e) = serde_json::to_writer(&mut self.buf, event) {
            tracing::warn!(error = %e, "event could not be serialized");
            self.counters.store_failed.add(t, 1);
            return;
        }
        self.shared.remember(&self.buf);
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
        if let Err(e) = open.batch.append(&self.buf) {
            self.counters.store_failed.add(t, 1);
            self.abandon(e);
            return;
        }
        open.per_type[t.index()] += 1;
        if open.batch.events >= self.settings.max_events {
            self.commit();
        }
    }

    /// Makes the open batch durable and visible.
    fn commit(&mut self) {
        let Some(open) = self.open.take() else { return };
        let raw = open.batch.raw_bytes;
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
                self.store.add(file);
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

    /// Size cap always; age too when `with_age`.
    fn retention(&mut self, with_age: bool) {
        let retention = if with_age {
            self.last_age_check = Instant::now();
            self.settings.retention
        } else {
            Duration::MAX
        };
        let deleted =
            self.store
                .enforce_retention(Timestamp::now(), retention, self.settings.max_bytes);
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
