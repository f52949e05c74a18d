//! Sinks: consumers of committed batches (shipping is the first).
//!
//! The batch writer tells every registered sink about each batch once it
//! is durable ([`CommittedBatch`], in sequence order, over a bounded
//! channel). A notification is only a wake-up: the batch files are the
//! truth, so a sink that fell behind (its channel was full, counted in
//! [`SinkLink::lagged`]) or restarted catches up from disk by its own
//! durable cursor ([`committed_since`]). Before deleting anything,
//! retention asks every sink what it still needs: each holds a
//! [`RetentionHold`] at the first sequence number it has not finished
//! with.

use std::future::Future;
use std::path::{Path, PathBuf};
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering::Relaxed};
use std::sync::{Arc, Mutex};

use serde::{Deserialize, Serialize};

use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

use edr_model::event::Timestamp;

use crate::{list_batches, seq_from_name, started_from_name, StorageError};

/// Notifications that may wait for one sink; past this the sink is behind
/// and reads the rest from disk.
pub const NOTIFY_CAPACITY: usize = 256;

/// A batch that is durable and visible on disk.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CommittedBatch {
    /// Persistent, strictly increasing across restarts (see the crate doc).
    pub seq: u64,
    pub path: PathBuf,
    /// Events in the batch; None when listed from disk (counting them
    /// means decompressing the file).
    pub events: Option<u32>,
    /// Size of the file as stored.
    pub bytes: u64,
    pub started: Timestamp,
}

/// The first sequence number one sink still needs; retention deletes
/// nothing from there on. `u64::MAX` holds nothing.
#[derive(Debug, Clone)]
pub struct RetentionHold(Arc<AtomicU64>);

impl RetentionHold {
    /// A hold that keeps every batch from `seq` on.
    pub fn new(seq: u64) -> RetentionHold {
        RetentionHold(Arc::new(AtomicU64::new(seq)))
    }

    /// The sink is done with everything before `seq`.
    pub fn keep_from(&self, seq: u64) {
        self.0.store(seq, Relaxed);
    }

    /// The sink needs nothing that is stored.
    pub fn release(&self) {
        self.0.store(u64::MAX, Relaxed);
    }

    pub fn get(&self) -> u64 {
        self.0.load(Relaxed)
    }
}

/// The writer's end of one sink: where it is told of commits, and what it
/// holds back from retention.
#[derive(Debug)]
pub struct SinkLink {
    pub name: &'static str,
    tx: mpsc::Sender<CommittedBatch>,
    pub hold: RetentionHold,
    /// Notifications not delivered because the sink's channel was full.
    pub lagged: Arc<AtomicU64>,
}

impl SinkLink {
    /// Tells the sink, never waiting: the writer must not stall on a slow
    /// sink. A sink that has ended is no longer told.
    pub fn notify(&self, batch: &CommittedBatch) {
        match self.tx.try_send(batch.clone()) {
            Ok(()) => {}
            Err(mpsc::error::TrySendError::Full(_)) => {
                self.lagged.fetch_add(1, Relaxed);
            }
            Err(mpsc::error::TrySendError::Closed(_)) => {}
        }
    }
}

/// What a sink runs with.
pub struct SinkContext {
    /// Committed batches, in order. Closes after the last batch of the
    /// engine's life has been committed: a sink that sees the end has been
    /// told everything.
    pub batches: mpsc::Receiver<CommittedBatch>,
    /// Move it forward as batches are done with.
    pub hold: RetentionHold,
    /// The data dir, to catch up from disk ([`committed_since`]).
    pub data_dir: PathBuf,
    /// Cancelled when the engine stops. The batch channel still delivers
    /// what the writer commits while stopping; the sink then finishes
    /// within its own time limit.
    pub stop: CancellationToken,
}

/// A consumer of committed batches, run as its own task by the engine.
pub trait Sink: Send + 'static {
    /// For logs and status.
    fn name(&self) -> &'static str;

    /// The first sequence number the sink needs when it starts (from its
    /// durable cursor): retention keeps from there until the sink says
    /// otherwise.
    fn resume_from(&self) -> u64;

    /// Runs until `ctx.batches` closes (or the sink gives up within its own
    /// time limit once `ctx.stop` is cancelled).
    fn run(self: Box<Self>, ctx: SinkContext) -> Pin<Box<dyn Future<Output = ()> + Send>>;

    /// A shipping sink's live state, for the engine's status.
    fn shipping_status(&self) -> Option<Arc<ShipState>> {
        None
    }
}

/// What a shipping sink reports, updated as it works (cheap to read once a
/// second).
#[derive(Debug, Default)]
pub struct ShipState {
    pub connected: AtomicBool,
    pub shipped_batches: AtomicU64,
    pub shipped_events: AtomicU64,
    /// Message bytes acknowledged (as sent, after compression).
    pub shipped_bytes: AtomicU64,
    /// Messages the server acknowledged as duplicates (resent after a
    /// crash or an outage, dropped by the server).
    pub duplicates: AtomicU64,
    /// Unshipped batches deleted before they were acknowledged.
    pub gaps: AtomicU64,
    pub pending_batches: AtomicU64,
    pub pending_bytes: AtomicU64,
    /// Start time of the oldest pending batch (ms since the epoch; 0: none).
    pub oldest_pending_ms: AtomicU64,
    /// Last acknowledgement (ms since the epoch; 0: none yet).
    pub last_ack_ms: AtomicU64,
    /// The last error in words, cleared by the next acknowledgement.
    pub last_error: Mutex<Option<String>>,
}

impl ShipState {
    pub fn set_error(&self, e: Option<String>) {
        *self.last_error.lock().unwrap_or_else(|p| p.into_inner()) = e;
    }

    pub fn snapshot(&self) -> ShippingStatus {
        ShippingStatus {
            connected: self.connected.load(Relaxed),
            shipped_batches: self.shipped_batches.load(Relaxed),
            shipped_events: self.shipped_events.load(Relaxed),
            shipped_bytes: self.shipped_bytes.load(Relaxed),
            duplicates: self.duplicates.load(Relaxed),
            gaps: self.gaps.load(Relaxed),
            pending_batches: self.pending_batches.load(Relaxed),
            pending_bytes: self.pending_bytes.load(Relaxed),
            oldest_pending_ms: Some(self.oldest_pending_ms.load(Relaxed)).filter(|v| *v > 0),
            last_ack_ms: Some(self.last_ack_ms.load(Relaxed)).filter(|v| *v > 0),
            last_error: self
                .last_error
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .clone(),
        }
    }
}

/// [`ShipState`] read at one moment, for status files and displays.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default)]
pub struct ShippingStatus {
    pub connected: bool,
    pub shipped_batches: u64,
    pub shipped_events: u64,
    pub shipped_bytes: u64,
    pub duplicates: u64,
    pub gaps: u64,
    pub pending_batches: u64,
    pub pending_bytes: u64,
    pub oldest_pending_ms: Option<u64>,
    pub last_ack_ms: Option<u64>,
    pub last_error: Option<String>,
}

/// Creates the link between the writer and one sink.
pub fn link(
    name: &'static str,
    resume_from: u64,
    data_dir: &Path,
    stop: CancellationToken,
) -> (SinkLink, SinkContext) {
    let (tx, rx) = mpsc::channel(NOTIFY_CAPACITY);
    let hold = RetentionHold::new(resume_from);
    (
        SinkLink {
            name,
            tx,
            hold: hold.clone(),
            lagged: Arc::new(AtomicU64::new(0)),
        },
        SinkContext {
            batches: rx,
            hold,
            data_dir: data_dir.to_path_buf(),
            stop,
        },
    )
}

/// The lowest sequence any sink still needs (`u64::MAX`: none).
pub fn keep_from(links: &[SinkLink]) -> u64 {
    links.iter().map(|l| l.hold.get()).min().unwrap_or(u64::MAX)
}

/// The committed batches of a data dir with sequence `seq` or later, in
/// sequence order: how a sink catches up after lagging or a restart.
pub fn committed_since(data_dir: &Path, seq: u64) -> Result<Vec<CommittedBatch>, StorageError> {
    let mut out = Vec::new();
    for path in list_batches(data_dir)? {
        let Some(name) = path.file_name().and_then(|n| n.to_str()) else {
            continue;
        };
        let Some(batch_seq) = seq_from_name(name).filter(|s| *s >= seq) else {
            continue;
        };
        let started = started_from_name(name).unwrap_or_default();
        // Deleted by retention since it was listed: nothing to catch up.
        let Ok(meta) = std::fs::metadata(&path) else {
            continue;
        };
        out.push(CommittedBatch {
            seq: batch_seq,
            path,
            events: None,
            bytes: meta.len(),
            started,
        });
    }
    out.sort_by_key(|b| b.seq);
    Ok(out)
}
