//! The sink interface, with a real sink written here: it reads every batch
//! it is told about from disk and keeps a durable cursor in a file, the way
//! a shipping sink does. What a sink relies on: batch sequence numbers that
//! only grow (also across restarts), each batch on disk when it is told of
//! it, the last batch told before its channel closes at shutdown, and
//! retention keeping what it still holds.

mod common;

use std::future::Future;
use std::path::{Path, PathBuf};
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use common::{test_config, touch_files, wait_for_async, wait_watching, watched};
use edr_engine::{EngineHandle, EngineOptions};
use edr_store::sink::{committed_since, CommittedBatch, Sink, SinkContext};
use edr_store::{batch_stats, list_batches, seq_from_name};
use tokio_util::sync::CancellationToken;

/// What the test sink saw, in order.
#[derive(Debug, Default)]
struct Seen {
    /// (sequence, events counted in the file, events the writer said).
    batches: Vec<(u64, u64, Option<u32>)>,
    /// The channel closed (the engine told it everything).
    ended: bool,
}

/// Reads each batch, records it, and advances a cursor file. With `hold`
/// it never lets retention delete what it has read.
struct FileCursorSink {
    cursor: PathBuf,
    seen: Arc<Mutex<Seen>>,
    hold: bool,
}

impl FileCursorSink {
    fn next_seq(cursor: &Path) -> u64 {
        std::fs::read_to_string(cursor)
            .ok()
            .and_then(|s| s.trim().parse::<u64>().ok())
            .map_or(1, |last| last + 1)
    }
}

impl FileCursorSink {
    /// Reads the batch (it must be on disk and whole), remembers it and
    /// moves the cursor past it.
    fn record(&self, b: &CommittedBatch) {
        let stats = batch_stats(&b.path).expect("a told batch is on disk and readable");
        self.seen
            .lock()
            .expect("lock")
            .batches
            .push((b.seq, stats.events, b.events));
        std::fs::write(&self.cursor, b.seq.to_string()).expect("cursor");
    }
}

impl Sink for FileCursorSink {
    fn name(&self) -> &'static str {
        "test-cursor"
    }

    fn resume_from(&self) -> u64 {
        if self.hold {
            1
        } else {
            Self::next_seq(&self.cursor)
        }
    }

    fn run(self: Box<Self>, mut ctx: SinkContext) -> Pin<Box<dyn Future<Output = ()> + Send>> {
        Box::pin(async move {
            // Catch up on what was committed before this run.
            let backlog =
                committed_since(&ctx.data_dir, Self::next_seq(&self.cursor)).expect("list backlog");
            for b in backlog {
                self.record(&b);
            }
            while let Some(b) = ctx.batches.recv().await {
                self.record(&b);
                if !self.hold {
                    ctx.hold.keep_from(b.seq + 1);
                }
            }
            self.seen.lock().expect("lock").ended = true;
        })
    }
}

fn start_with_sink(
    config: edr_config::Config,
    cursor: &Path,
    hold: bool,
) -> (EngineHandle, Arc<Mutex<Seen>>) {
    let seen = Arc::new(Mutex::new(Seen::default()));
    let opts = EngineOptions {
        sinks: vec![Box::new(FileCursorSink {
            cursor: cursor.to_path_buf(),
            seen: Arc::clone(&seen),
            hold,
        })],
        ..EngineOptions::default()
    };
    let engine = EngineHandle::start(config, opts, CancellationToken::new()).expect("starts");
    (engine, seen)
}

fn seqs_on_disk(data: &Path) -> Vec<u64> {
    let mut v: Vec<u64> = list_batches(data)
        .expect("list")
        .iter()
        .filter_map(|p| p.file_name()?.to_str().and_then(seq_from_name))
        .collect();
    v.sort_unstable();
    v
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_sink_is_told_every_batch_in_order_across_restarts() {
    let dir = tempfile::tempdir().expect("tempdir");
    let cursor = dir.path().join("cursor");
    let mut c = test_config(dir.path());
    c.agent.max_events_per_batch = 5;
    let data = c.data_dir();

    for run in 0..2 {
        let (engine, seen) = start_with_sink(c.clone(), &cursor, false);
        wait_watching(&engine).await;
        touch_files(&watched(dir.path()), &format!("run{run}"), 12);
        let told = wait_for_async(Duration::from_secs(15), || {
            (seen.lock().expect("lock").batches.len() >= 2).then_some(())
        })
        .await;
        assert!(told.is_some(), "run {run}: no batches told");
        engine.shutdown().await;
        let seen = seen.lock().expect("lock");
        assert!(seen.ended, "run {run}: the sink's channel never closed");
        // The batch committed at shutdown was told before the end.
        let on_disk = seqs_on_disk(&data);
        assert_eq!(
            seen.batches.last().map(|b| b.0),
            on_disk.last().copied(),
            "run {run}"
        );
        // What the writer said matches the file.
        for (seq, counted, said) in &seen.batches {
            assert_eq!(Some(*counted), said.map(u64::from), "batch {seq}");
        }
    }
    // Over both runs: every batch on disk exactly once, numbers strictly
    // increasing with no gap, the second run continuing the first.
    let all: Vec<u64> = {
        let mut v = seqs_on_disk(&data);
        v.dedup();
        v
    };
    assert_eq!(all.first(), Some(&1));
    assert!(all.windows(2).all(|w| w[1] == w[0] + 1), "{all:?}");
    let cursor_at: u64 = std::fs::read_to_string(&cursor)
        .expect("cursor")
        .trim()
        .parse()
        .expect("number");
    assert_eq!(Some(&cursor_at), all.last());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_restarted_sink_catches_up_from_its_cursor() {
    let dir = tempfile::tempdir().expect("tempdir");
    let cursor = dir.path().join("cursor");
    let mut c = test_config(dir.path());
    c.agent.max_events_per_batch = 4;
    let data = c.data_dir();
    // A first run without the sink writes batches it has never seen.
    let engine = EngineHandle::start(
        c.clone(),
        EngineOptions::default(),
        CancellationToken::new(),
    )
    .expect("starts");
    wait_watching(&engine).await;
    touch_files(&watched(dir.path()), "unseen", 10);
    let written = wait_for_async(Duration::from_secs(15), || {
        (seqs_on_disk(&data).len() >= 2).then_some(())
    })
    .await;
    assert!(written.is_some());
    engine.shutdown().await;
    let before = seqs_on_disk(&data);

    let (engine, seen) = start_with_sink(c, &cursor, false);
    engine.shutdown().await;
    let seen = seen.lock().expect("lock");
    let got: Vec<u64> = seen.batches.iter().map(|b| b.0).collect();
    assert_eq!(&got[..before.len()], &before[..], "backlog in order");
    assert!(seen.batches.iter().all(|(_, n, _)| *n > 0));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn retention_keeps_what_a_sink_holds() {
    let dir = tempfile::tempdir().expect("tempdir");
    let cursor = dir.path().join("cursor");
    let mut c = test_config(dir.path());
    c.agent.max_events_per_batch = 3;
    // A cap far below one batch: without the hold, retention would leave
    // at most the newest file.
    c.storage.max_storage_size_gb = 1e-9;
    let data = c.data_dir();
    let (engine, seen) = start_with_sink(c, &cursor, true);
    wait_watching(&engine).await;
    touch_files(&watched(dir.path()), "held", 15);
    let told = wait_for_async(Duration::from_secs(15), || {
        (seen.lock().expect("lock").batches.len() >= 4).then_some(())
    })
    .await;
    assert!(told.is_some());
    engine.shutdown().await;
    let seen = seen.lock().expect("lock");
    let on_disk = seqs_on_disk(&data);
    let told: Vec<u64> = seen.batches.iter().map(|b| b.0).collect();
    assert_eq!(on_disk, told, "every held batch is still on disk");
    assert!(engine.snapshot().totals.retention_deleted_files == 0);
}
