//! File collector: created, modified, renamed and deleted files under the
//! configured directories, from the kernel's change notifications (inotify
//! on Linux, FSEvents on macOS, through `notify`).
//!
//! Three threads keep the kernel queue drained:
//! - notify's own thread runs our callback, which only timestamps the raw
//!   event and `try_send`s it into a bounded channel (a slow callback lets
//!   the kernel queue overflow and lose most events);
//! - the worker ([`worker`]) stats, filters and pairs renames, and builds
//!   the ECS events;
//! - the hasher ([`hasher`]) reads files for `file.hash.sha256` under a size
//!   cap and a byte-rate cap.
//!
//! Every loss is counted: a full raw channel in `dropped.file`, kernel queue
//! overflows in `watcher_overflows`, skipped hashes in `hash_skipped` and
//! `hash_queue_dropped`, failed watch paths in `unwatched_paths`.
//!
//! Known gap of inotify: files created inside a new directory before its
//! watch is in place produce no events.

mod hasher;
mod watch;
mod worker;

use std::io;
use std::sync::atomic::Ordering::Relaxed;
use std::sync::mpsc::{self, SyncSender, TrySendError};
use std::sync::Arc;
use std::thread::{self, JoinHandle};

use notify::{RecommendedWatcher, Watcher};
use tokio_util::sync::CancellationToken;

use crate::{coverage, CollectorContext};
use edr_config::{expand_home, FileMonitorConfig};
use edr_model::event::{EventType, Timestamp};
use edr_pipeline::Counters;

use hasher::HashQueue;
use worker::{Hashing, Worker};

/// Raw events that may wait for the worker. The worker handles several
/// hundred thousand a second, so this only absorbs bursts; when it is full
/// the event is counted as dropped rather than stalling notify's thread.
const RAW_QUEUE: usize = 8192;

/// A notify event as the callback saw it, stamped with when it arrived.
struct Raw {
    at: Timestamp,
    res: notify::Result<notify::Event>,
}

/// Runs the file collector until `ctx.cancel` fires.
pub async fn run(cfg: FileMonitorConfig, ctx: CollectorContext) {
    // Threads stop on this token; it also fires if this future is dropped
    // without a cancellation, so they never outlive the collector.
    let stop = ctx.cancel.child_token();
    let _stop_on_drop = stop.clone().drop_guard();
    {
        let mut cov = coverage(&ctx);
        cov.watched_paths.clear();
        cov.unwatched_paths.clear();
    }
    let threads = match start(cfg, &ctx, &stop) {
        Ok(threads) => threads,
        Err(e) => {
            tracing::error!("file monitor cannot start a thread: {e}");
            Vec::new()
        }
    };
    stop.cancelled().await;
    let joined = tokio::task::spawn_blocking(move || {
        for t in threads {
            if t.join().is_err() {
                tracing::warn!("a file monitor thread panicked");
            }
        }
    })
    .await;
    if let Err(e) = joined {
        tracing::warn!("file monitor shutdown: {e}");
    }
    let mut cov = coverage(&ctx);
    cov.watched_paths.clear();
    cov.unwatched_paths.clear();
}

fn start(
    cfg: FileMonitorConfig,
    ctx: &CollectorContext,
    stop: &CancellationToken,
) -> io::Result<Vec<JoinHandle<()>>> {
    let mut threads = Vec::with_capacity(2);
    let hashing = if cfg.calculate_hashes {
        let queue = Arc::new(HashQueue::default());
        let (q, tx, counters, stop) = (
            Arc::clone(&queue),
            ctx.tx.clone(),
            Arc::clone(&ctx.counters),
            stop.clone(),
        );
        let (max_mb, rate) = (cfg.max_file_size_mb, cfg.hash_rate_limit_mb_per_sec);
        // As notify resolves them: home expanded, relative to the cwd.
        let roots = cfg
            .watch_paths
            .iter()
            .map(|p| {
                let p = expand_home(p);
                std::path::absolute(&p).unwrap_or(p)
            })
            .collect();
        threads.push(
            thread::Builder::new()
                .name("edr-file-hash".into())
                .spawn(move || hasher::run(q, roots, max_mb, rate, tx, counters, stop))?,
        );
        Some(Hashing {
            queue,
            max_bytes: cfg.max_file_size_mb.saturating_mul(1024 * 1024),
        })
    } else {
        None
    };
    let worker = Worker::new(ctx.clone(), &cfg.exclude_paths, hashing);
    let (ctx, stop) = (ctx.clone(), stop.clone());
    threads.push(
        thread::Builder::new()
            .name("edr-file-events".into())
            .spawn(move || watch_and_translate(&cfg, &ctx, worker, &stop))?,
    );
    Ok(threads)
}

/// The worker thread: owns the watcher, so dropping it here stops notify's
/// thread before the collector reports itself stopped.
fn watch_and_translate(
    cfg: &FileMonitorConfig,
    ctx: &CollectorContext,
    mut worker: Worker,
    stop: &CancellationToken,
) {
    let (raw_tx, raw_rx) = mpsc::sync_channel(RAW_QUEUE);
    let watcher = match new_watcher(raw_tx, Arc::clone(&ctx.counters)) {
        Ok(mut watcher) => {
            watch::watch_all(&mut watcher, &cfg.watch_paths, ctx, stop);
            Some(watcher)
        }
        Err(e) => {
            watch::record_no_watcher(ctx, &cfg.watch_paths, &e);
            None
        }
    };
    if watcher.is_some() {
        worker.run(&raw_rx, stop);
    }
    drop(watcher);
    worker.drain(&raw_rx);
    worker.finish();
}

fn new_watcher(
    raw_tx: SyncSender<Raw>,
    counters: Arc<Counters>,
) -> notify::Result<RecommendedWatcher> {
    let callback = move |res: notify::Result<notify::Event>| {
        if is_overflow(&res) {
            // Counted here, not in the worker: the channel may be full
            // exactly when the kernel queue overflows.
            counters.watcher_overflows.fetch_add(1, Relaxed);
            tracing::warn!("file watcher queue overflowed: file events were lost");
            return;
        }
        // Opens and closes are most of what inotify reports (our own
        // hasher's reads included) and become no event.
        if matches!(&res, Ok(e) if e.kind.is_access()) {
            return;
        }
        let raw = Raw {
            at: Timestamp::now(),
            res,
        };
        if let Err(TrySendError::Full(_)) = raw_tx.try_send(raw) {
            counters.dropped.add(EventType::File, 1);
        }
    };
    let config = notify::Config::default().with_follow_symlinks(false);
    RecommendedWatcher::new(callback, config)
}

/// The kernel (or FSEvents) dropped events: notify flags a rescan.
fn is_overflow(res: &notify::Result<notify::Event>) -> bool {
    match res {
        Ok(event) => event.need_rescan(),
        Err(e) => {
            matches!(&e.kind, notify::ErrorKind::Generic(msg) if msg.to_ascii_lowercase().contains("overflow"))
        }
    }
}
