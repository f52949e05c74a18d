//! File collector: created, modified, renamed and deleted files under the
//! configured paths.
//!
//! Two sources (`collectors.file_monitor.source`):
//! - the kernel's file events with the process: fanotify ([`fanotify`],
//!   Linux 5.9+ as root: filesystem-wide marks, `process.*` read from
//!   `/proc` at the event) or, on macOS as root, `eslogger`'s Endpoint
//!   Security events ([`eslogger`]: the process is in the event). The
//!   watch paths are prefix filters and every event names the process
//!   with the process collector's `entity_id`;
//! - inotify on Linux, FSEvents on macOS (through `notify`): one watch
//!   per directory, no process. A watched single file is watched through
//!   its directory, filtered by name.
//!
//! `auto` takes the kernel source when it is granted and says why not
//! otherwise (`coverage.file_source` / `file_note`); `fanotify` names the
//! kernel source on either OS (eslogger on macOS).
//!
//! Three threads keep the kernel queue drained:
//! - the reader: notify's own thread running our callback, which only
//!   timestamps the raw event and `try_send`s it into a bounded channel
//!   (a slow callback lets the kernel queue overflow), or the fanotify
//!   reader, which resolves paths and the process and `try_send`s;
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

#[cfg(target_os = "linux")]
mod actor;
#[cfg(any(target_os = "macos", test))]
mod eslogger;
#[cfg(target_os = "linux")]
mod fanotify;
mod hasher;
mod prefix;
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
use edr_config::{FileMonitorConfig, FileSource};
use edr_model::event::{EventType, Timestamp};
use edr_pipeline::Counters;

use hasher::HashQueue;
use prefix::Prefixes;
use worker::{Hashing, Worker};

/// Raw events that may wait for the worker. The worker handles several
/// hundred thousand a second, so this only absorbs bursts; when it is full
/// the event is counted as dropped rather than stalling notify's thread.
/// Its slots are allocated and written when the channel is made, so they
/// carry boxed events: 16 bytes a slot, 128 KiB resident; slots of the
/// 72-byte events themselves (80 bytes with the slot's stamp) were
/// 640 KiB, on an idle machine too.
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
        cov.file_source = None;
        cov.file_note = None;
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
    cov.file_source = None;
    cov.file_note = None;
}

fn start(
    cfg: FileMonitorConfig,
    ctx: &CollectorContext,
    stop: &CancellationToken,
) -> io::Result<Vec<JoinHandle<()>>> {
    let mut threads = Vec::with_capacity(3);
    let paths = cfg.paths_for_this_os();
    // The hasher's roots depend on the source (fanotify reports resolved
    // paths), which is chosen on the events thread.
    let (roots_tx, roots_rx) = mpsc::sync_channel::<Vec<std::path::PathBuf>>(1);
    let hashing = if cfg.calculate_hashes {
        let queue = Arc::new(HashQueue::default());
        let (q, tx, counters, stop) = (
            Arc::clone(&queue),
            ctx.tx.clone(),
            Arc::clone(&ctx.counters),
            stop.clone(),
        );
        let (max_mb, rate) = (cfg.max_file_size_mb, cfg.hash_rate_limit_mb_per_sec);
        threads.push(
            thread::Builder::new()
                .name("edr-file-hash".into())
                .spawn(move || {
                    let roots = roots_rx.recv().unwrap_or_default();
                    hasher::run(q, roots, max_mb, rate, tx, counters, stop)
                })?,
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
            .spawn(move || {
                let roots = move |r: &Prefixes| {
                    // Nobody listens when hashing is off.
                    let _ = roots_tx.try_send(r.paths().to_vec());
                };
                match cfg.source {
                    FileSource::Inotify => inotify(&paths, &ctx, worker, &stop, &roots, None),
                    FileSource::Auto | FileSource::Fanotify => {
                        if let Err(refused) = try_kernel(&paths, &ctx, worker, &stop, &roots) {
                            let (worker, why) = *refused;
                            if cfg.source == FileSource::Auto {
                                inotify(&paths, &ctx, worker, &stop, &roots, Some(&why));
                            } else {
                                record_none(&ctx, &paths, &why);
                            }
                        }
                    }
                }
            })?,
    );
    Ok(threads)
}

/// The source that names the process, as status shows it.
const KERNEL_NAME: &str = if cfg!(target_os = "macos") {
    "eslogger"
} else {
    "fanotify"
};

/// Runs the fanotify source until cancelled; gives the worker back with
/// the reason when fanotify is refused.
#[cfg(target_os = "linux")]
fn try_kernel(
    paths: &[String],
    ctx: &CollectorContext,
    mut worker: Worker,
    stop: &CancellationToken,
    roots: &dyn Fn(&Prefixes),
) -> Result<(), Box<(Worker, String)>> {
    let prefixes = Prefixes::resolved(paths);
    let (fan, unmarked) = match fanotify::Fanotify::open(&prefixes) {
        Ok(opened) => opened,
        Err(e) => return Err(Box::new((worker, e.to_string()))),
    };
    roots(&prefixes);
    let renames = if fan.whole_renames {
        "renames with both names"
    } else {
        "renames as separate moves out and in (kernel before 5.17)"
    };
    let note = format!(
        "filesystem-wide marks on {} filesystem(s), the watch paths are prefix filters \
         (no watch per directory; paths not created yet are covered); every event names \
         the process that made it; {renames}",
        fan.filesystems
    );
    tracing::info!("file events from fanotify: {note}");
    {
        let mut cov = coverage(ctx);
        cov.file_source = Some("fanotify".into());
        cov.file_note = Some(note);
        for p in prefixes.paths() {
            if unmarked.iter().all(|u| &u.path != p) {
                cov.watched_paths.push(p.to_string_lossy().into_owned());
            }
        }
    }
    for u in &unmarked {
        watch::record_unwatched(ctx, &u.path, &watch::WatchError::Fanotify(u.reason.clone()));
    }
    let (tx, rx) = mpsc::sync_channel(RAW_QUEUE);
    let (host, counters, s) = (
        ctx.origin.host.name.clone(),
        Arc::clone(&ctx.counters),
        stop.clone(),
    );
    let reader = thread::Builder::new()
        .name("edr-fanotify".into())
        .spawn(move || fanotify::read_loop(fan, prefixes, &host, tx, counters, &s));
    match reader {
        Ok(reader) => {
            worker.run_changes(&rx, stop);
            if reader.join().is_err() {
                tracing::warn!("the fanotify reader panicked");
            }
        }
        Err(e) => tracing::error!("file monitor cannot start the fanotify reader: {e}"),
    }
    worker.finish();
    Ok(())
}

/// Runs `eslogger` until cancelled; gives the worker back with the reason
/// when it cannot run (not root, no Full Disk Access, before macOS 13) or
/// stops by itself, so FSEvents takes over and status says why.
#[cfg(target_os = "macos")]
fn try_kernel(
    paths: &[String],
    ctx: &CollectorContext,
    worker: Worker,
    stop: &CancellationToken,
    roots: &dyn Fn(&Prefixes),
) -> Result<(), Box<(Worker, String)>> {
    use crate::eslogger::{ESLOGGER, STARTUP};

    // SAFETY: geteuid cannot fail.
    if unsafe { libc::geteuid() } != 0 {
        let why = "not root; it needs root and Full Disk Access".to_string();
        return Err(Box::new((worker, why)));
    }
    run_eslogger(ESLOGGER, STARTUP, paths, ctx, worker, stop, roots)
}

/// The eslogger source with `program` as eslogger (tested on Linux with a
/// script that plays eslogger's part).
#[cfg(any(target_os = "macos", test))]
fn run_eslogger(
    program: &str,
    startup: std::time::Duration,
    paths: &[String],
    ctx: &CollectorContext,
    mut worker: Worker,
    stop: &CancellationToken,
    roots: &dyn Fn(&Prefixes),
) -> Result<(), Box<(Worker, String)>> {
    use crate::eslogger::{spawn, stop_on_cancel};

    let (child, stdout) = match spawn(program, &eslogger::EVENTS, startup) {
        Ok(running) => running,
        Err(why) => return Err(Box::new((worker, why))),
    };
    // Its own token, so a failed start below can end it too. Should this
    // thread not start, `stdout` is dropped on return and eslogger ends on
    // its next write.
    let es_stop = stop.child_token();
    let s = es_stop.clone();
    let stopper = match thread::Builder::new()
        .name("edr-eslogger-stop".into())
        .spawn(move || stop_on_cancel(child, s))
    {
        Ok(stopper) => stopper,
        Err(e) => {
            let why = format!("cannot start the eslogger watcher: {e}");
            return Err(Box::new((worker, why)));
        }
    };
    let prefixes = Prefixes::resolved(paths);
    roots(&prefixes);
    let note = "Endpoint Security's file events, the watch paths are prefix filters \
                (no watch per directory; paths not created yet are covered); every event \
                names the process that made it";
    tracing::info!("file events from eslogger: {note}");
    {
        let mut cov = coverage(ctx);
        cov.file_source = Some("eslogger".into());
        cov.file_note = Some(note.into());
        cov.watched_paths = prefixes
            .paths()
            .iter()
            .map(|p| p.to_string_lossy().into_owned())
            .collect();
    }
    let (tx, rx) = mpsc::sync_channel(RAW_QUEUE);
    let translator = eslogger::Translator::new(prefixes, &ctx.origin.host.name);
    let counters = Arc::clone(&ctx.counters);
    let reader = thread::Builder::new()
        .name("edr-eslogger-files".into())
        .spawn(move || {
            let output = io::BufReader::new(stdout);
            eslogger::read_loop(output, translator, &tx, &counters)
        });
    let ended = match reader {
        Ok(reader) => {
            worker.run_changes(&rx, stop);
            es_stop.cancel();
            match reader.join() {
                Ok(Ok(())) => "eslogger stopped".to_string(),
                Ok(Err(e)) => format!("eslogger output unreadable: {e}"),
                Err(_) => "the eslogger reader panicked".to_string(),
            }
        }
        Err(e) => {
            es_stop.cancel();
            format!("cannot start the eslogger reader: {e}")
        }
    };
    if stopper.join().is_err() {
        tracing::warn!("the eslogger watcher panicked");
    }
    if stop.is_cancelled() {
        worker.finish();
        return Ok(());
    }
    // eslogger ended by itself (killed, Full Disk Access revoked).
    coverage(ctx).watched_paths.clear();
    Err(Box::new((worker, ended)))
}

#[cfg(not(any(target_os = "linux", target_os = "macos")))]
fn try_kernel(
    _: &[String],
    _: &CollectorContext,
    worker: Worker,
    _: &CancellationToken,
    _: &dyn Fn(&Prefixes),
) -> Result<(), Box<(Worker, String)>> {
    Err(Box::new((
        worker,
        "no kernel file events on this OS".into(),
    )))
}

/// The name status shows for the notify backend.
const NOTIFY_NAME: &str = if cfg!(target_os = "macos") {
    "fsevents"
} else {
    "inotify"
};

/// The worker thread with notify: owns the watcher, so dropping it here
/// stops notify's thread before the collector reports itself stopped.
fn inotify(
    paths: &[String],
    ctx: &CollectorContext,
    mut worker: Worker,
    stop: &CancellationToken,
    roots: &dyn Fn(&Prefixes),
    why_not_kernel: Option<&str>,
) {
    let prefixes = Prefixes::as_configured(paths);
    roots(&prefixes);
    worker.only_under(prefixes);
    let mut note = "one watch per watched directory (a single file is watched through its \
                    directory); events do not name the process that made the change"
        .to_string();
    if let Some(why) = why_not_kernel {
        tracing::warn!("{KERNEL_NAME} unavailable ({why}); file events from {NOTIFY_NAME}");
        note = format!("{KERNEL_NAME} unavailable ({why}); {note}");
    }
    {
        let mut cov = coverage(ctx);
        cov.file_source = Some(NOTIFY_NAME.into());
        cov.file_note = Some(note);
    }
    let (raw_tx, raw_rx) = mpsc::sync_channel(RAW_QUEUE);
    let watcher = match new_watcher(raw_tx, Arc::clone(&ctx.counters)) {
        Ok(mut watcher) => {
            watch::watch_all(&mut watcher, paths, ctx, stop);
            Some(watcher)
        }
        Err(e) => {
            watch::record_no_watcher(ctx, paths, &e);
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

/// `source: fanotify` without the kernel source: nothing is recorded, and
/// status says so.
fn record_none(ctx: &CollectorContext, paths: &[String], why: &str) {
    tracing::error!(
        "{KERNEL_NAME} unavailable ({why}) and {NOTIFY_NAME} is off \
         (collectors.file_monitor.source: fanotify): no file events are recorded"
    );
    {
        let mut cov = coverage(ctx);
        cov.file_source = Some("none".into());
        cov.file_note = Some(format!(
            "{KERNEL_NAME} unavailable ({why}) and {NOTIFY_NAME} is off (source: fanotify): \
             no file events are recorded"
        ));
    }
    let why = watch::WatchError::Fanotify(why.to_string());
    for p in paths {
        watch::record_unwatched(ctx, &edr_config::expand_home(p), &why);
    }
}

fn new_watcher(
    raw_tx: SyncSender<Box<Raw>>,
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
        let raw = Box::new(Raw {
            at: Timestamp::now(),
            res,
        });
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

#[cfg(test)]
mod tests {
    use std::os::unix::fs::PermissionsExt;
    use std::path::Path;
    use std::time::{Duration, Instant};

    use super::*;

    /// A stand-in for eslogger: waits for `go`, writes `lines`, then exits
    /// or keeps running.
    fn fake_eslogger(dir: &Path, then: &str) -> String {
        let script = dir.join("eslogger");
        let d = dir.display();
        std::fs::write(
            &script,
            format!("#!/bin/sh\nwhile [ ! -e '{d}/go' ]; do sleep 0.05; done\ncat '{d}/lines'\n{then}\n"),
        )
        .expect("script");
        std::fs::set_permissions(&script, std::fs::Permissions::from_mode(0o755)).expect("chmod");
        script.display().to_string()
    }

    /// Starts the source on a thread, waits until status names it, then
    /// lets the stand-in write one create under the watch path.
    fn start(
        then: &str,
    ) -> (
        tempfile::TempDir,
        CollectorContext,
        edr_pipeline::EventRx,
        CancellationToken,
        JoinHandle<Option<String>>,
    ) {
        let dir = tempfile::tempdir().expect("tempdir");
        let watched = std::fs::canonicalize(dir.path()).expect("canon").join("w");
        std::fs::create_dir(&watched).expect("mkdir");
        std::fs::write(watched.join("a.plist"), b"x").expect("write");
        let w = watched.display().to_string().replace('/', "\\/");
        let line = format!(
            r#"{{"event_type":13,"global_seq_num":1,"time":"2025-08-07T13:21:36Z","process":{{"audit_token":{{"pid":4242,"euid":0}},"start_time":"2025-08-07T13:21:35Z","executable":{{"path":"\/bin\/cp"}}}},"event":{{"create":{{"destination_type":1,"destination":{{"new_path":{{"dir":{{"path":"{w}"}},"filename":"a.plist","mode":420}}}}}}}}}}"#
        );
        std::fs::write(dir.path().join("lines"), format!("{line}\n")).expect("lines");
        let program = fake_eslogger(dir.path(), then);
        let (ctx, events) = CollectorContext::standalone(64);
        let stop = CancellationToken::new();
        let (c, s) = (ctx.clone(), stop.clone());
        let paths = vec![watched.display().to_string()];
        let source = thread::spawn(move || {
            let worker = Worker::new(c.clone(), &[], None);
            let startup = Duration::from_millis(200);
            run_eslogger(&program, startup, &paths, &c, worker, &s, &|_| {})
                .err()
                .map(|refused| refused.1)
        });
        let began = Instant::now();
        while coverage(&ctx).file_source.as_deref() != Some("eslogger") {
            assert!(!source.is_finished(), "the source ended before running");
            assert!(began.elapsed() < Duration::from_secs(60), "never started");
            thread::sleep(Duration::from_millis(20));
        }
        assert_eq!(
            coverage(&ctx).watched_paths,
            [watched.display().to_string()]
        );
        std::fs::write(dir.path().join("go"), b"").expect("go");
        (dir, ctx, events, stop, source)
    }

    fn assert_the_create(events: &edr_pipeline::EventRx) {
        let ev = events
            .recv_timeout(Duration::from_secs(60))
            .expect("the create is stored");
        assert_eq!(ev.event.action.as_str(), "file-created");
        assert_eq!(
            ev.file.as_ref().map(|f| f.name.as_deref()),
            Some(Some("a.plist"))
        );
        let p = ev.process.as_deref().expect("process");
        assert_eq!((p.pid, p.name.as_str()), (4242, "cp"));
    }

    #[test]
    fn eslogger_ending_by_itself_gives_the_worker_back_with_the_reason() {
        let (_dir, ctx, events, _stop, source) = start("exit 0");
        let why = source.join().expect("source thread");
        assert_eq!(why.as_deref(), Some("eslogger stopped"));
        assert_the_create(&events);
        assert!(coverage(&ctx).watched_paths.is_empty());
    }

    #[test]
    fn cancelling_stops_a_running_eslogger() {
        let (_dir, _ctx, events, stop, source) = start("exec sleep 600");
        assert_the_create(&events);
        stop.cancel();
        assert_eq!(source.join().expect("source thread"), None);
    }
}
