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
use std::sync::mpsc::{
    self, Receiver, RecvError, RecvTimeoutError, SyncSender, TryRecvError, TrySendError,
};
use std::sync::Arc;
use std::time::{Duration, Instant};

use edr_model::event::{Event, EventType};
use serde::{Deserialize, Serialize};

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

/// A counter's value as read once: per event type, or one number.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CounterValue {
    /// By type: process, file, network.
    PerType([u64; 3]),
    Scalar(u64),
}

impl CounterValue {
    /// The sum over the types, or the number.
    pub fn total(&self) -> u64 {
        match self {
            CounterValue::PerType(v) => v.iter().sum(),
            CounterValue::Scalar(v) => *v,
        }
    }
}

/// One row of the counters table: for status displays and docs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct CounterField {
    /// The field's name, as in `status.json`.
    pub name: &'static str,
    /// The lines of the field's doc comment.
    pub doc_lines: &'static [&'static str],
    pub value: CounterValue,
}

impl CounterField {
    /// The doc comment as one line.
    pub fn doc(&self) -> String {
        let lines: Vec<&str> = self.doc_lines.iter().map(|l| l.trim()).collect();
        lines.join(" ")
    }
}

/// Declares every counter once and generates from that list the atomic
/// [`Counters`], the serializable copy [`Totals`] (what `status.json`
/// keeps), the copy between them and the tables of both. A counter kind
/// is `per_type` (one per [`EventType`]), `total` (one number, kept in
/// `Totals`) or `gauge` (one number the sampler reads into its metrics
/// instead, so not in `Totals`).
macro_rules! counters {
    (
        per_type { $( $(#[doc = $pdoc:literal])+ $pname:ident, )+ }
        scalar { $( $(#[doc = $sdoc:literal])+ $skind:ident $sname:ident, )+ }
    ) => {
        /// Monotonic counters shared by every part of the engine. Read by
        /// the metrics sampler once a second; written with relaxed atomics
        /// on hot paths.
        #[derive(Debug, Default)]
        pub struct Counters {
            $( $(#[doc = $pdoc])+ pub $pname: PerType, )+
            $( $(#[doc = $sdoc])+ pub $sname: AtomicU64, )+
        }

        counters!(@totals [$( $(#[doc = $pdoc])+ $pname )+] [] $( [$(#[doc = $sdoc])+ $skind $sname] )+);

        impl Counters {
            /// Every counter with its doc and current value, in declaration
            /// order (gauges included).
            pub fn describe(&self) -> Vec<CounterField> {
                vec![
                    $( CounterField {
                        name: stringify!($pname),
                        doc_lines: &[$($pdoc),+],
                        value: CounterValue::PerType(self.$pname.snapshot()),
                    }, )+
                    $( CounterField {
                        name: stringify!($sname),
                        doc_lines: &[$($sdoc),+],
                        value: CounterValue::Scalar(self.$sname.load(Relaxed)),
                    }, )+
                ]
            }
        }
    };

    // Collects the `total` scalars (gauges are left out), then emits
    // `Totals` with them.
    (@totals [$($p:tt)+] [$($t:tt)*] [$(#[doc = $d:literal])+ total $n:ident] $($rest:tt)*) => {
        counters!(@totals [$($p)+] [$($t)* $(#[doc = $d])+ $n] $($rest)*);
    };
    (@totals [$($p:tt)+] [$($t:tt)*] [$(#[doc = $d:literal])+ gauge $n:ident] $($rest:tt)*) => {
        counters!(@totals [$($p)+] [$($t)*] $($rest)*);
    };
    (@totals
        [$( $(#[doc = $pdoc:literal])+ $pname:ident )+]
        [$( $(#[doc = $tdoc:literal])+ $tname:ident )+]
    ) => {
        /// The counters' totals since the engine started, as one plain copy
        /// (the snapshot and `status.json`). Every field defaults, so a
        /// status file written before a counter existed still parses.
        #[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
        pub struct Totals {
            $( $(#[doc = $pdoc])+ #[serde(default)] pub $pname: [u64; 3], )+
            $( $(#[doc = $tdoc])+ #[serde(default)] pub $tname: u64, )+
        }

        impl Counters {
            /// Reads every counter kept in [`Totals`].
            pub fn totals(&self) -> Totals {
                Totals {
                    $( $pname: self.$pname.snapshot(), )+
                    $( $tname: self.$tname.load(Relaxed), )+
                }
            }
        }

        impl Totals {
            /// Every field with its doc and value, in declaration order.
            pub fn fields(&self) -> Vec<CounterField> {
                vec![
                    $( CounterField {
                        name: stringify!($pname),
                        doc_lines: &[$($pdoc),+],
                        value: CounterValue::PerType(self.$pname),
                    }, )+
                    $( CounterField {
                        name: stringify!($tname),
                        doc_lines: &[$($tdoc),+],
                        value: CounterValue::Scalar(self.$tname),
                    }, )+
                ]
            }
        }
    };
}

counters! {
    per_type {
        /// Events accepted into the queue.
        produced,
        /// Events refused because the queue was full.
        dropped,
        /// Events removed by the filter stage (exact repeats, coalesced bursts).
        filtered,
        /// Events durably written in a batch file.
        stored,
        /// Events lost because their batch could not be written (disk full,
        /// data dir gone or read-only).
        store_failed,
    }
    scalar {
        /// Uncompressed JSON bytes of stored events.
        gauge raw_bytes,
        /// Bytes of batch files as written to disk.
        gauge stored_bytes,
        /// Batch files written.
        total batches_written,
        /// Batches that could not be written (their events are in
        /// `store_failed`).
        total batch_failures,
        /// Time from a batch's first event to its file being durable, last batch.
        gauge last_batch_latency_us,
        /// Bytes of batch files currently on disk (after retention).
        gauge storage_used_bytes,
        /// Batch files deleted by retention (age or size cap).
        total retention_deleted_files,
        /// Times the file watcher's kernel queue overflowed (notify `Rescan`).
        total watcher_overflows,
        /// Watch paths that could not be watched (missing, permission, limit).
        total unwatched_paths,
        /// File hashes not computed: too large, vanished, unreadable, rate cap.
        total hash_skipped,
        /// Hash jobs refused because the hash queue was full.
        total hash_queue_dropped,
        /// Failed scans (a collector could not read the system this round).
        total scan_errors,
        /// Process events the event source lost: kernel buffer overruns (each
        /// counts once, however many events it dropped) and events refused
        /// because the collector fell too far behind.
        total process_events_lost,
        /// Processes reported without executable or arguments: gone before
        /// they could be read, or not readable by the agent.
        total process_partial,
        /// Processes the reconciling scan found that the event source had not
        /// reported.
        total process_source_missed,
        /// Connection records the eBPF source lost: its kernel ring buffer
        /// was full (the agent fell behind a burst), or the kernel skipped
        /// the program for a state change on a CPU where it was already
        /// running (its recursion misses).
        total network_events_lost,
    }
}

impl Counters {
    pub fn new() -> Arc<Counters> {
        Arc::new(Counters::default())
    }
}

impl Totals {
    /// Events refused by the full queue, all types.
    pub fn dropped_total(&self) -> u64 {
        self.dropped.iter().sum()
    }
}

/// The sending side of the event queue, cheap to clone into each collector.
#[derive(Clone, Debug)]
pub struct EventTx {
    tx: SyncSender<Box<Event>>,
    counters: Arc<Counters>,
}

impl EventTx {
    /// Offers an event without blocking. Returns false if it was dropped
    /// (queue full, or the batcher has shut down); the drop is counted.
    pub fn send(&self, event: Event) -> bool {
        let t = event.event_type();
        match self.tx.try_send(Box::new(event)) {
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

    /// Offers an event, waiting for room until `deadline`; counted as
    /// dropped if the queue is still full then. For a collector's one-off
    /// burst on a thread that may block, such as the inventory of a
    /// server's sockets at start, which would overflow the queue at once
    /// although the writer drains it in a second.
    pub fn send_by(&self, event: Event, deadline: Instant) -> bool {
        let t = event.event_type();
        let mut event = Box::new(event);
        loop {
            match self.tx.try_send(event) {
                Ok(()) => {
                    self.counters.produced.add(t, 1);
                    return true;
                }
                Err(TrySendError::Full(back)) if Instant::now() < deadline => {
                    event = back;
                    std::thread::sleep(Duration::from_millis(1));
                }
                Err(TrySendError::Full(_)) | Err(TrySendError::Disconnected(_)) => {
                    self.counters.dropped.add(t, 1);
                    return false;
                }
            }
        }
    }

    pub fn counters(&self) -> &Arc<Counters> {
        &self.counters
    }
}

/// The receiving side of the event queue.
///
/// Events travel boxed: the queue allocates and initializes all of its
/// slots up front, and a slot holding an `Event` (about 300 bytes) would
/// make the 4,096-slot queue 1.2 MiB of resident memory however quiet the
/// machine is; a boxed slot is 16 bytes.
#[derive(Debug)]
pub struct EventRx {
    rx: Receiver<Box<Event>>,
}

impl EventRx {
    pub fn recv(&self) -> Result<Event, RecvError> {
        self.rx.recv().map(|e| *e)
    }

    pub fn try_recv(&self) -> Result<Event, TryRecvError> {
        self.rx.try_recv().map(|e| *e)
    }

    pub fn recv_timeout(&self, timeout: Duration) -> Result<Event, RecvTimeoutError> {
        self.rx.recv_timeout(timeout).map(|e| *e)
    }

    /// The events queued now, without waiting.
    pub fn try_iter(&self) -> impl Iterator<Item = Event> + '_ {
        self.rx.try_iter().map(|e| *e)
    }

    /// Every event until all senders are gone.
    pub fn iter(&self) -> impl Iterator<Item = Event> + '_ {
        self.rx.iter().map(|e| *e)
    }
}

/// For a producer of its own that blocks rather than drops (benchmarks).
impl From<Receiver<Box<Event>>> for EventRx {
    fn from(rx: Receiver<Box<Event>>) -> EventRx {
        EventRx { rx }
    }
}

/// Creates the bounded queue.
pub fn channel(capacity: usize, counters: Arc<Counters>) -> (EventTx, EventRx) {
    let (tx, rx) = mpsc::sync_channel(capacity);
    (EventTx { tx, counters }, EventRx { rx })
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The keys `status.json` has always had, in order: readers of older
    /// and newer files depend on them.
    const STATUS_KEYS: [&str; 17] = [
        "produced",
        "dropped",
        "filtered",
        "stored",
        "store_failed",
        "batches_written",
        "batch_failures",
        "retention_deleted_files",
        "watcher_overflows",
        "unwatched_paths",
        "hash_skipped",
        "hash_queue_dropped",
        "scan_errors",
        "process_events_lost",
        "process_partial",
        "process_source_missed",
        "network_events_lost",
    ];

    #[test]
    fn totals_copy_every_kept_counter_under_its_old_name() {
        let c = Counters::default();
        c.stored.add(EventType::File, 5);
        c.dropped.add(EventType::Network, 2);
        c.batches_written.fetch_add(3, Relaxed);
        c.process_source_missed.fetch_add(7, Relaxed);
        c.raw_bytes.fetch_add(1000, Relaxed);
        let t = c.totals();
        assert_eq!(t.stored, [0, 5, 0]);
        assert_eq!(t.dropped_total(), 2);
        assert_eq!(t.batches_written, 3);
        assert_eq!(t.process_source_missed, 7);

        let json = serde_json::to_value(&t).expect("serializes");
        let keys: Vec<&str> = json
            .as_object()
            .expect("object")
            .keys()
            .map(String::as_str)
            .collect();
        let mut want = STATUS_KEYS.to_vec();
        want.sort_unstable();
        let mut got = keys.clone();
        got.sort_unstable();
        assert_eq!(got, want, "gauges stay out of status.json");
        let back: Totals = serde_json::from_value(json).expect("parses");
        assert_eq!(back, t);
    }

    #[test]
    fn older_status_files_still_parse() {
        let old = r#"{"produced":[1,2,3],"dropped":[0,0,0],"batches_written":4}"#;
        let t: Totals = serde_json::from_str(old).expect("parses");
        assert_eq!(t.produced, [1, 2, 3]);
        assert_eq!(t.batches_written, 4);
        assert_eq!(t.scan_errors, 0);
        assert_eq!(
            serde_json::from_str::<Totals>("{}").expect("empty"),
            Totals::default()
        );
    }

    #[test]
    fn tables_list_every_counter_with_its_doc_and_value() {
        let c = Counters::default();
        c.filtered.add(EventType::Process, 4);
        c.storage_used_bytes.store(99, Relaxed);
        let all = c.describe();
        assert_eq!(all.len(), STATUS_KEYS.len() + 4, "17 totals and 4 gauges");
        assert!(all
            .iter()
            .all(|f| !f.doc().is_empty() && !f.doc().contains("  ")));
        let used = all
            .iter()
            .find(|f| f.name == "storage_used_bytes")
            .expect("gauge listed");
        assert_eq!(used.value, CounterValue::Scalar(99));

        let fields = c.totals().fields();
        let names: Vec<&str> = fields.iter().map(|f| f.name).collect();
        assert_eq!(names, STATUS_KEYS);
        assert_eq!(fields[2].value, CounterValue::PerType([4, 0, 0]));
        assert_eq!(fields[2].value.total(), 4);
        assert_eq!(
            fields[2].doc(),
            "Events removed by the filter stage (exact repeats, coalesced bursts)."
        );
    }
}
