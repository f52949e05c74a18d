//! Helpers shared by the integration tests.
#![allow(dead_code)] // each test binary uses a different subset

pub mod agent;
pub mod nats;
pub mod root;
pub mod users;

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use edr_config::Config;
use edr_store::{batch_stats, list_batches, open_batch_reader};

/// A config for tests: everything under `root`, file monitor watching
/// `root/watched` only (created), process and network collectors off,
/// hashing off, fixed batch sizes and intervals (adaptive batching would
/// hold a test's few events for `max_interval_ms`). Tests switch on what
/// they need.
pub fn test_config(root: &Path) -> Config {
    let watched = root.join("watched");
    std::fs::create_dir_all(&watched).expect("create watched dir");
    let mut c = Config::default();
    c.storage.local_storage.data_dir = Some(root.join("data").display().to_string());
    c.collectors.file_monitor.watch_paths = vec![watched.display().to_string()];
    // The per-OS persistence lists would add the machine's own changes.
    c.collectors.file_monitor.linux_watch_paths = Vec::new();
    c.collectors.file_monitor.macos_watch_paths = Vec::new();
    c.collectors.file_monitor.calculate_hashes = false;
    c.collectors.process_monitor.enabled = false;
    c.collectors.network_monitor.enabled = false;
    c.agent.adaptive_batching.enabled = false;
    // Fixed scan periods (a maximum at or below the period): tests that
    // switch a scanner on expect it to look at the period they set.
    c.collectors.process_monitor.max_scan_interval_ms = 100;
    c.collectors.network_monitor.max_scan_interval_ms = 100;
    // Tests count the events they cause; alerts would add to them. Tests of
    // detection switch it on.
    c.detection.enabled = false;
    // Test agents run as root, where the API is on by default: they must
    // not take (or fight over) the machine's real socket. Tests of the
    // API switch it on with a socket of their own.
    c.api.enabled = edr_config::ApiEnabled::Off;
    c
}

pub fn watched(root: &Path) -> PathBuf {
    root.join("watched")
}

/// Every stored event of a data dir, oldest batch first.
pub fn read_events(data_dir: &Path) -> Vec<serde_json::Value> {
    let mut out = Vec::new();
    for path in list_batches(data_dir).expect("list batches") {
        let reader = open_batch_reader(&path).expect("open batch");
        for line in std::io::BufRead::lines(reader) {
            let line = line.expect("batch decompresses");
            out.push(serde_json::from_str(&line).expect("each line is JSON"));
        }
    }
    out
}

/// Events per batch file, oldest first.
pub fn batch_sizes(data_dir: &Path) -> Vec<u64> {
    list_batches(data_dir)
        .expect("list batches")
        .iter()
        .map(|p| batch_stats(p).expect("readable batch").events)
        .collect()
}

/// Held by each heavy test (an event flood, a storage fault under a
/// stream of writes, thousands of processes) for its whole run. Cargo runs
/// the test binaries one after another, but the tests of one binary run in
/// parallel threads: two floods at once on a 2-core machine starve each
/// other's agent, and each then fails or measures the other's load. The
/// lock is per binary (each compiles this module), which is all that is
/// needed. A test that panicked poisons it; the next one runs anyway.
pub fn heavy() -> std::sync::MutexGuard<'static, ()> {
    static HEAVY: std::sync::Mutex<()> = std::sync::Mutex::new(());
    HEAVY.lock().unwrap_or_else(|p| p.into_inner())
}

/// Polls `f` until it returns Some or the deadline passes.
pub fn wait_for<T>(timeout: Duration, mut f: impl FnMut() -> Option<T>) -> Option<T> {
    let deadline = Instant::now() + timeout;
    loop {
        if let Some(v) = f() {
            return Some(v);
        }
        if Instant::now() >= deadline {
            return None;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// Async flavour of [`wait_for`].
pub async fn wait_for_async<T>(timeout: Duration, mut f: impl FnMut() -> Option<T>) -> Option<T> {
    let deadline = Instant::now() + timeout;
    loop {
        if let Some(v) = f() {
            return Some(v);
        }
        if Instant::now() >= deadline {
            return None;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Path-valued field of an event, e.g. `file.path`.
pub fn field<'a>(event: &'a serde_json::Value, path: &str) -> Option<&'a serde_json::Value> {
    path.split('.').try_fold(event, |v, k| v.get(k))
}

pub fn str_field<'a>(event: &'a serde_json::Value, path: &str) -> Option<&'a str> {
    field(event, path).and_then(|v| v.as_str())
}

/// One collector running alone: a runtime, a queue roomy enough for the
/// host's whole inventory (so nothing a test looks for is dropped), and the
/// context to hand the collector.
pub struct Harness {
    pub rt: tokio::runtime::Runtime,
    pub rx: edr_pipeline::EventRx,
    pub ctx: edr_collect::CollectorContext,
}

pub fn harness() -> Harness {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("runtime");
    let (ctx, rx) = edr_collect::CollectorContext::standalone(65_536);
    Harness { rt, rx, ctx }
}

/// Starts an engine with default options.
pub fn start_engine(config: Config) -> edr_engine::EngineHandle {
    edr_engine::EngineHandle::start(
        config,
        edr_engine::EngineOptions::default(),
        tokio_util::sync::CancellationToken::new(),
    )
    .expect("engine starts")
}

/// Waits until the file collector's watch is in place.
pub async fn wait_watching(engine: &edr_engine::EngineHandle) {
    let ok = wait_for_async(Duration::from_secs(10), || {
        (!engine.snapshot().coverage.watched_paths.is_empty()).then_some(())
    })
    .await;
    assert!(ok.is_some(), "watch never set up");
}

/// Waits until the process collector reports its source: the kernel
/// subscription (or the fallback) is up. It takes a few ms; 10 s is the
/// margin for a loaded CI machine.
pub async fn wait_process_source(engine: &edr_engine::EngineHandle) {
    let ok = wait_for_async(Duration::from_secs(10), || {
        engine
            .snapshot()
            .coverage
            .process_source
            .is_some()
            .then_some(())
    })
    .await;
    assert!(
        ok.is_some(),
        "the process collector never reported its source"
    );
}

/// Waits until the file collector has stopped (its coverage is cleared).
pub async fn wait_not_watching(engine: &edr_engine::EngineHandle) {
    let ok = wait_for_async(Duration::from_secs(10), || {
        engine
            .snapshot()
            .coverage
            .watched_paths
            .is_empty()
            .then_some(())
    })
    .await;
    assert!(ok.is_some(), "file collector never stopped");
}

/// Writes `n` small files `<prefix>-<i>.txt` into `dir`.
pub fn touch_files(dir: &Path, prefix: &str, n: usize) {
    for i in 0..n {
        std::fs::write(dir.join(format!("{prefix}-{i}.txt")), b"x").expect("write file");
    }
}
