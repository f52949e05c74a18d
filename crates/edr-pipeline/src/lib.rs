//! The queue between collectors and the batcher, and the counters that make
//! every loss visible.
//!
//! Collectors never block on a full queue: the watcher thread and the scan
//! loops `try_send`, and a refused event is counted under its type in
//! [`Counters::dropped`]. Memory is bounded by [`QUEUE_CAPACITY`] events.

pub mod filter;
pub mod lineage;
pub mod stage;

use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::sync::mpsc::{self, Receiver, SyncSender, TrySendError};
use std::sync::Arc;

use edr_model::event::{Event, EventType};

/// Events that may wait between the collectors and the batcher. The batcher
/// drains far faster than the collectors fill (hundreds of thousands of
/// events per second), so this only absorbs bursts such as a start-up
/// inventory or a `git checkout` in a watched tree.
pub const QUEUE_CAPACITY: usize = 4096;

/// One counter per [`EventType`].
#[derive(Debug, Default)]
pub struct PerType([AtomicU64; 3]);

impl PerType {
    pub fn add(&self, t: EventType, n: u64) {
        self.0[t.index()].fetch_add(n, Relaxed);
    }

    pub fn get(&self, t: EventType) -> u64 {
        self.0[t.index()].load(Relaxed)
    }

    pub fn total(&self) -> u64 {
        EventType::ALL.iter().map(|t| self.get(*t)).sum()
    }

    pub fn snapshot(&self) -> [u64; 3] {
        [
            self.get(EventType::Process),
            self.get(EventType::File),
            self.get(EventType::Network),
        ]
    }
}

/// Monotonic counters shared by every part of the engine. Read by the
/// metrics sampler once a second; written with relaxed atomics on hot paths.
#[derive(Debug, Default)]
pub struct Counters {
    /// Events accepted into the queue.
    pub produced: PerType,
    /// Events refused because the queue was full.
    pub dropped: PerType,
    /// Events removed by the filter stage (exact repeats, coalesced bursts).
    pub filtered: PerType,
    /// Events durably written in a batch file.
    pub stored: PerType,
    /// Events lost because their batch could not be written (disk full,
    /// data dir gone or read-only).
    pub store_failed: PerType,
    /// Uncompressed JSON bytes of stored events.
    pub raw_bytes: AtomicU64,
    /// Bytes of batch files as written to disk.
    pub stored_bytes: AtomicU64,
    pub batches_written: AtomicU64,
    pub batch_failures: AtomicU64,
    /// Time from a batch's first event to its file being durable, last batch.
    pub last_batch_latency_us: AtomicU64,
    /// Bytes of batch files currently on disk (after retention).
    pub storage_used_bytes: AtomicU64,
    /// Batch files deleted by retention (age or size cap).
    pub retention_deleted_files: AtomicU64,
    /// Times the file watcher's kernel queue overflowed (notify `Rescan`).
    pub watcher_overflows: AtomicU64,
    /// Watch paths that could not be watched (missing, permission, limit).
    pub unwatched_paths: AtomicU64,
    /// File hashes not computed: too large, vanished, unreadable, rate cap.
    pub hash_skipped: AtomicU64,
    /// Hash jobs refused because the hash queue was full.
    pub hash_queue_dropped: AtomicU64,
    /// Failed scans (a collector could not read the system this round).
    pub scan_errors: AtomicU64,
    /// Process events the event source lost: kernel buffer overruns (each
    /// counts once, however many events it dropped) and events refused
    /// because the collector fell too far behind.
    pub process_events_lost: AtomicU64,
    /// Processes reported without executable or arguments: gone before
    /// they could be read, or not readable by the agent.
    pub process_partial: AtomicU64,
    /// Processes the reconciling scan found that the event source had not
    /// reported.
    pub process_source_missed: AtomicU64,
}

impl Counters {
    pub fn new() -> Arc<Counters> {
        Arc::new(Counters::default())
    }
}

/// The sending side of the event queue, cheap to clone into each collector.
#[derive(Clone, Debug)]
pub struct EventTx {
    tx: SyncSender<Event>,
    counters: Arc<Counters>,
}

impl EventTx {
    /// Offers an event without blocking. Returns false if it was dropped
    /// (queue full, or the batcher has shut down); the drop is counted.
    pub fn send(&self, event: Event) -> bool {
        let t = event.event_type();
        match self.tx.try_send(event) {
            Ok(()) => {
                self.counters.produced.add(t, 1);
                true
            }
            Err(TrySendError::Full(_)) | Err(TrySendError::Disconnected(_)) => {
                self.counters.dropped.add(t, 1);
                false
            }
        }
    }

    pub fn counters(&self) -> &Arc<Counters> {
        &self.counters
    }
}

/// Creates the bounded queue.
pub fn channel(capacity: usize, counters: Arc<Counters>) -> (EventTx, Receiver<Event>) {
    let (tx, rx) = mpsc::sync_channel(capacity);
    (EventTx { tx, counters }, rx)
}
