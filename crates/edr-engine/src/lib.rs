//! The engine: wires collectors, the queue, the pipeline (stages and the
//! batch writer), the sinks and the metrics sampler into one cancellation
//! tree, and offers a handle to observe and steer it (snapshot, history,
//! live config, pause, shutdown).
//!
//! Shutdown is ordered so nothing is lost that was already queued:
//! collectors stop first (dropping their senders), the pipeline drains the
//! queue and commits the open batch, the sinks are told the last batch and
//! finish, then the sampler writes a last status and the data-dir lock is
//! released.

pub mod alerts;
pub mod logging;
pub mod pipeline;
pub mod recent;

use std::fs::{File, OpenOptions};
use std::io::{Read, Seek, Write};
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};
use std::sync::atomic::Ordering::Relaxed;
use std::sync::mpsc::{self, Receiver, RecvTimeoutError, SyncSender};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant, SystemTime};

use serde::{Deserialize, Serialize};
use tokio::sync::{oneshot, watch};
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use edr_collect::{self as collectors, CollectorContext, Coverage};
use edr_config::{Config, ConfigError, ConfigSource, FieldError};
use edr_metrics::{
    Alert, AlertChange, AlertInputs, Alerts, DetectionTotals, HistoryWriter, MemoryTrim,
    MetricsSample, Sampler,
};
use edr_model::event::{EventType, Origin, Timestamp};
use edr_pipeline::{Counters, QUEUE_CAPACITY};
use edr_store::sink::Sink;
use edr_store::writer::WriterShared;
use edr_store::{self as storage, StorageError, Store};

use crate::alerts::{AlertRing, AlertTap, AlertsSince, ALERT_RING};
use crate::pipeline::Pipeline;
use crate::recent::{RecentEvent, RecentEvents, RecentTap};

/// File in the data dir holding the running agent's lock (and pid).
pub const LOCK_FILE: &str = "agent.lock";
/// File in the data dir with the latest snapshot, rewritten every second.
pub const STATUS_FILE: &str = "status.json";
const HISTORY_FLUSH_EVERY: u32 = 60;
/// The status file is padded to a multiple of this (a page).
const STATUS_PAGE: usize = 4096;
const STATUS_READ_ATTEMPTS: usize = 3;
const CONFIG_POLL: Duration = Duration::from_secs(2);
const SAMPLE_EVERY: Duration = Duration::from_secs(1);
/// The sampler's thread, named for `top -H` and stack dumps.
const METRICS_THREAD: &str = "edr-metrics";

#[derive(Debug, thiserror::Error)]
pub enum EngineError {
    #[error(transparent)]
    Config(#[from] ConfigError),
    #[error(transparent)]
    Storage(#[from] StorageError),
    #[error("another agent{} is already running on {}", pid.map(|p| format!(" (pid {p})")).unwrap_or_default(), dir.display())]
    AlreadyRunning { dir: PathBuf, pid: Option<u32> },
    #[error("cannot lock {}: {source}", path.display())]
    Lock {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("cannot start the {name} thread: {source}")]
    Thread {
        name: &'static str,
        #[source]
        source: std::io::Error,
    },
}

/// How the engine is embedded.
#[derive(Default)]
pub struct EngineOptions {
    /// Latest stored events kept in memory for display (0: none).
    pub recent_events: usize,
    /// Where the config came from. If it names a file, edits to that file
    /// are re-read (with the same preset and overrides), validated and
    /// applied live.
    pub config_source: ConfigSource,
    /// Consumers of committed batches, each run as its own task.
    pub sinks: Vec<Box<dyn Sink>>,
}

impl std::fmt::Debug for EngineOptions {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("EngineOptions")
            .field("recent_events", &self.recent_events)
            .field("config_source", &self.config_source)
            .field(
                "sinks",
                &self.sinks.iter().map(|s| s.name()).collect::<Vec<_>>(),
            )
            .finish()
    }
}

/// Monotonic totals since the engine started (declared with the counters).
pub use edr_pipeline::Totals;

/// Storage state for status displays.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct StorageStatus {
    pub used_bytes: u64,
    pub cap_bytes: u64,
    pub files: u64,
    pub retention_days: u32,
    pub compress: bool,
    /// The last write error, while writes are failing.
    pub error: Option<String>,
}

/// Everything a status display needs, cheap to take once a second.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Snapshot {
    pub pid: u32,
    pub version: String,
    pub started: Timestamp,
    pub paused: bool,
    /// False in the last status file an agent wrote as it stopped.
    pub running: bool,
    pub data_dir: String,
    pub config_file: Option<String>,
    /// Why the last edit of the config file was not applied.
    pub config_error: Option<String>,
    pub latest: MetricsSample,
    pub totals: Totals,
    pub storage: StorageStatus,
    pub alerts: Vec<Alert>,
    pub coverage: Coverage,
    /// Rules and alerts of the detection stage.
    #[serde(default)]
    pub detection: edr_detect::DetectionStatus,
    /// A shipping sink's state (None: nothing ships).
    #[serde(default)]
    pub shipping: Option<edr_store::sink::ShippingStatus>,
}

/// What an engine is doing, from a [`Snapshot`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum EngineState {
    /// Collecting.
    Running,
    /// Up, its collectors stopped until resumed.
    Paused,
    /// The status an engine wrote as it stopped.
    Stopped,
}

impl Snapshot {
    /// `running` and `paused` read together: an engine that stopped while
    /// paused is stopped.
    pub fn state(&self) -> EngineState {
        match (self.running, self.paused) {
            (false, _) => EngineState::Stopped,
            (true, true) => EngineState::Paused,
            (true, false) => EngineState::Running,
        }
    }
}

struct MetricsState {
    sampler: Sampler,
    alerts: Alerts,
    latest: MetricsSample,
}

struct Shared {
    counters: Arc<Counters>,
    writer: Arc<WriterShared>,
    recent: Option<Arc<RecentEvents>>,
    /// Kept with the recent events (for a live view), not by the agent.
    alerts: Option<Arc<AlertRing>>,
    coverage: Arc<Mutex<Coverage>>,
    metrics: Mutex<MetricsState>,
    started: Timestamp,
    data_dir: PathBuf,
    config_file: Option<PathBuf>,
    config_error: Mutex<Option<String>>,
    detection: Mutex<Option<Arc<edr_detect::DetectionShared>>>,
    shipping: Option<Arc<edr_store::sink::ShipState>>,
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    // A panic elsewhere must not take status reporting down with it.
    m.lock().unwrap_or_else(|p| p.into_inner())
}

/// A running engine. Dropping the handle does not stop it: call
/// [`EngineHandle::shutdown`] or cancel the token passed to `start`.
#[derive(Clone)]
pub struct EngineHandle {
    shared: Arc<Shared>,
    config_tx: Arc<watch::Sender<Arc<Config>>>,
    paused_tx: Arc<watch::Sender<bool>>,
    shutdown: CancellationToken,
    tracker: TaskTracker,
}

impl EngineHandle {
    /// Starts the engine inside the current tokio runtime. It runs until
    /// `shutdown` is cancelled. Fails before touching stored data if the
    /// config is invalid or another agent holds the data dir.
    pub fn start(
        config: Config,
        opts: EngineOptions,
        shutdown: CancellationToken,
    ) -> Result<EngineHandle, EngineError> {
        config.validate()?;
        let data_dir = config.data_dir();
        storage::create_private_dir(&data_dir)?;
        let lock = DataDirLock::acquire(&data_dir)?;
        let store = Store::open(&data_dir)?;
        if store.removed_temporaries > 0 {
            tracing::info!(
                count = store.removed_temporaries,
                "removed incomplete batch files left by an earlier crash"
            );
        }

        let counters = Counters::new();
        let writer_shared = Arc::new(WriterShared::default());
        let recent = (opts.recent_events > 0).then(|| RecentEvents::new(opts.recent_events));
        let alert_ring = (opts.recent_events > 0).then(|| AlertRing::new(ALERT_RING));
        let (config_tx, config_rx) = watch::channel(Arc::new(config));
        let (paused_tx, paused_rx) = watch::channel(false);
        let (tx, rx) = edr_pipeline::channel(QUEUE_CAPACITY, Arc::clone(&counters));
        let shared = Arc::new(Shared {
            counters: Arc::clone(&counters),
            writer: Arc::clone(&writer_shared),
            recent: recent.clone(),
            alerts: alert_ring.clone(),
            coverage: Arc::new(Mutex::new(Coverage::default())),
            metrics: Mutex::new(MetricsState {
                sampler: Sampler::default(),
                alerts: Alerts::default(),
                latest: MetricsSample::default(),
            }),
            started: Timestamp::now(),
            data_dir: data_dir.clone(),
            config_file: opts.config_source.file.clone(),
            config_error: Mutex::new(None),
            detection: Mutex::new(None),
            shipping: opts.sinks.iter().find_map(|s| s.shipping_status()),
        });
        let handle = EngineHandle {
            shared: Arc::clone(&shared),
            config_tx: Arc::new(config_tx),
            paused_tx: Arc::new(paused_tx),
            shutdown: shutdown.clone(),
            tracker: TaskTracker::new(),
        };
        let tracker = &handle.tracker;

        // First, so a thread that cannot start leaves nothing running (its
        // closure, and the lock in it, are dropped).
        let (metrics_stop, metrics_task) = spawn_sampler(
            Arc::clone(&shared),
            config_rx.clone(),
            paused_rx.clone(),
            lock,
            tracker,
        )?;
        // Sinks stop after the pipeline has committed its last batch: their
        // channels close when the writer is dropped.
        let sinks_stop = CancellationToken::new();
        let mut links = Vec::with_capacity(opts.sinks.len());
        let mut sink_tasks = Vec::with_capacity(opts.sinks.len());
        for sink in opts.sinks {
            let (link, ctx) = edr_store::sink::link(
                sink.name(),
                sink.resume_from(),
                &data_dir,
                sinks_stop.clone(),
            );
            tracing::info!(
                sink = sink.name(),
                resume_from = sink.resume_from(),
                "sink starting"
            );
            links.push(link);
            sink_tasks.push(tracker.spawn(sink.run(ctx)));
        }
        let mut taps: Vec<Box<dyn edr_pipeline::stage::Stage>> = Vec::new();
        if let Some(r) = &recent {
            taps.push(Box::new(RecentTap(Arc::clone(r))));
        }
        if let Some(a) = &alert_ring {
            taps.push(Box::new(AlertTap(Arc::clone(a))));
        }
        let pipeline = Pipeline::new(
            rx,
            store,
            config_rx.clone(),
            Arc::clone(&counters),
            writer_shared,
            taps,
            links,
        );
        tracing::debug!(stages = ?pipeline.stages(), "pipeline");
        *crate::lock(&shared.detection) = Some(pipeline.detection());
        let pipeline_task = tracker.spawn_blocking(move || pipeline.run());

        let base = CollectorContext {
            origin: Origin::detect(),
            tx,
            counters,
            coverage: Arc::clone(&shared.coverage),
            cancel: shutdown.clone(),
        };
        let supervisor = tracker.spawn(supervise(
            base,
            config_rx,
            paused_rx,
            shutdown.clone(),
            tracker.clone(),
        ));

        if opts.config_source.file.is_some() {
            tracker.spawn(watch_config_file(
                handle.clone(),
                opts.config_source,
                shutdown.child_token(),
            ));
        }

        // The shutdown order, walked once `shutdown` is cancelled: sources
        // stop, the pipeline drains the queue and commits, the sinks are
        // told the last batch and finish, the sampler writes the final
        // status and hands back the lock, which is released last.
        let order = vec![
            StopStep::tasks("collectors", vec![supervisor]),
            StopStep::tasks("pipeline", vec![pipeline_task]),
            StopStep::new("sinks", move || sinks_stop.cancel(), async move {
                for t in sink_tasks {
                    if let Err(e) = t.await {
                        tracing::error!(error = %e, "sink failed");
                    }
                }
            }),
            StopStep::new(
                "metrics",
                move || {
                    // Never full: this is the only message, and the channel
                    // holds one.
                    let _ = metrics_stop.try_send(());
                },
                async move {
                    // The sampler returns the lock after its final status;
                    // a failed (panicked) sampler has dropped it.
                    match metrics_task.await {
                        Ok(Ok(lock)) => drop(lock),
                        Ok(Err(_)) => tracing::error!("metrics sampler failed"),
                        Err(e) => tracing::error!(error = %e, "metrics sampler failed"),
                    }
                },
            ),
        ];
        tracker.spawn(stop_in_order(shutdown, order));
        tracker.close();
        tracing::info!(data_dir = %data_dir.display(), "engine started");
        Ok(handle)
    }

    /// The current state: latest metrics, totals, alerts, coverage.
    pub fn snapshot(&self) -> Snapshot {
        build_snapshot(&self.shared, &self.config(), *self.paused_tx.borrow(), true)
    }

    /// Metrics samples of the last `window` (at most an hour), oldest first.
    pub fn history(&self, window: Duration) -> Vec<MetricsSample> {
        lock(&self.shared.metrics).sampler.history(window)
    }

    /// The latest stored events as rows, newest last. Empty unless
    /// `EngineOptions::recent_events` > 0.
    pub fn recent_events(&self, limit: usize) -> Vec<RecentEvent> {
        self.shared
            .recent
            .as_ref()
            .map(|r| r.latest(limit))
            .unwrap_or_default()
    }

    /// The alerts numbered above `since_seq` (at most `limit`, the
    /// newest), oldest first. Empty unless `EngineOptions::recent_events`
    /// > 0.
    pub fn alerts(&self, since_seq: u64, limit: usize) -> AlertsSince {
        self.shared
            .alerts
            .as_ref()
            .map(|r| r.since(since_seq, limit))
            .unwrap_or_default()
    }

    /// Changes when a detection alert is recorded (None without the alert
    /// ring, i.e. with `recent_events` 0).
    pub fn alert_raised(&self) -> Option<tokio::sync::watch::Receiver<u64>> {
        self.shared.alerts.as_ref().map(|r| r.subscribe())
    }

    pub fn config(&self) -> Arc<Config> {
        Arc::clone(&self.config_tx.borrow())
    }

    pub fn data_dir(&self) -> &Path {
        &self.shared.data_dir
    }

    /// Validates and applies a new config live: the next batch uses the
    /// new batch settings; collectors whose section changed restart with
    /// it; retention runs at once. Nothing changes if validation fails.
    pub fn apply_config(&self, new: Config) -> Result<(), ConfigError> {
        new.validate()?;
        if new.data_dir() != self.shared.data_dir {
            return Err(ConfigError::Invalid {
                origin: "live config".into(),
                errors: vec![FieldError {
                    key: "storage.local_storage.data_dir".into(),
                    value: new.data_dir().display().to_string(),
                    allowed: format!(
                        "the running data dir ({}); restart the agent to move it",
                        self.shared.data_dir.display()
                    ),
                }],
            });
        }
        *lock(&self.shared.config_error) = None;
        self.config_tx.send_if_modified(|cur| {
            if **cur == new {
                return false;
            }
            *cur = Arc::new(new);
            true
        });
        Ok(())
    }

    /// Stops the collectors and commits the open batch; the engine keeps
    /// its state and resumes with [`EngineHandle::resume`].
    pub fn pause(&self) {
        self.shared.writer.flush_requested.store(true, Relaxed);
        self.paused_tx.send_replace(true);
    }

    /// Restarts the collectors after a pause.
    pub fn resume(&self) {
        self.paused_tx.send_replace(false);
    }

    pub fn is_paused(&self) -> bool {
        *self.paused_tx.borrow()
    }

    /// Asks the engine to stop (same as cancelling the start token).
    pub fn request_shutdown(&self) {
        self.shutdown.cancel();
    }

    /// Waits until the engine has stopped: collectors ended, open batch
    /// committed, final status written, lock released.
    pub async fn stopped(&self) {
        self.tracker.wait().await;
    }

    /// Stops the engine and waits for it.
    pub async fn shutdown(&self) {
        self.request_shutdown();
        self.stopped().await;
    }
}

fn build_snapshot(shared: &Shared, config: &Config, paused: bool, running: bool) -> Snapshot {
    let (latest, alerts) = {
        let m = lock(&shared.metrics);
        (m.latest, m.alerts.active().to_vec())
    };
    Snapshot {
        pid: std::process::id(),
        version: env!("CARGO_PKG_VERSION").to_string(),
        started: shared.started,
        paused,
        running,
        data_dir: shared.data_dir.display().to_string(),
        config_file: shared.config_file.as_ref().map(|p| p.display().to_string()),
        config_error: lock(&shared.config_error).clone(),
        latest,
        totals: shared.counters.totals(),
        storage: StorageStatus {
            used_bytes: shared.counters.storage_used_bytes.load(Relaxed),
            cap_bytes: config.max_storage_bytes(),
            files: shared.writer.storage_files.load(Relaxed),
            retention_days: config.storage.retention_days,
            compress: config.storage.local_storage.compress_events,
            error: shared.writer.storage_error(),
        },
        alerts,
        coverage: lock(&shared.coverage).clone(),
        detection: lock(&shared.detection)
            .as_ref()
            .map(|d| d.status())
            .unwrap_or_default(),
        shipping: shared.shipping.as_ref().map(|s| s.snapshot()),
    }
}

/// The data dir's lock, held for the engine's life.
struct DataDirLock {
    path: PathBuf,
    file: File,
    /// Taking the lock again failed; said once, not every second.
    failing: bool,
}

impl DataDirLock {
    fn acquire(data_dir: &Path) -> Result<DataDirLock, EngineError> {
        Ok(DataDirLock {
            path: data_dir.join(LOCK_FILE),
            file: acquire_lock(data_dir)?,
            failing: false,
        })
    }

    /// Takes the lock again if its file was removed or replaced (the data
    /// dir deleted under the running agent): otherwise `status` would call
    /// the agent stopped and a second agent could start on the same store.
    fn ensure(&mut self, data_dir: &Path) {
        use std::os::unix::fs::MetadataExt;
        let id = |m: std::fs::Metadata| (m.dev(), m.ino());
        let held = self.file.metadata().ok().map(id);
        if held.is_some() && held == std::fs::metadata(&self.path).ok().map(id) {
            return;
        }
        let taken = storage::create_private_dir(data_dir)
            .map_err(EngineError::from)
            .and_then(|()| acquire_lock(data_dir));
        match taken {
            Ok(file) => {
                tracing::warn!(path = %self.path.display(), "the data dir lock file was removed; lock taken again");
                self.file = file;
                self.failing = false;
            }
            Err(e) if !self.failing => {
                tracing::error!(error = %e, "cannot take the data dir lock again");
                self.failing = true;
            }
            Err(e) => tracing::debug!(error = %e, "cannot take the data dir lock again"),
        }
    }
}

/// Takes the data dir's lock so two agents never write the same store.
fn acquire_lock(data_dir: &Path) -> Result<File, EngineError> {
    let path = data_dir.join(LOCK_FILE);
    let lerr = |source| EngineError::Lock {
        path: path.clone(),
        source,
    };
    let mut f = OpenOptions::new()
        .read(true)
        .write(true)
        .create(true)
        .truncate(false)
        .mode(0o600)
        .open(&path)
        .map_err(lerr)?;
    match f.try_lock() {
        Ok(()) => {}
        Err(std::fs::TryLockError::WouldBlock) => {
            let mut s = String::new();
            let _ = f.read_to_string(&mut s);
            return Err(EngineError::AlreadyRunning {
                dir: data_dir.to_path_buf(),
                pid: s.trim().parse().ok(),
            });
        }
        Err(std::fs::TryLockError::Error(e)) => return Err(lerr(e)),
    }
    f.set_len(0).map_err(lerr)?;
    f.rewind().map_err(lerr)?;
    writeln!(f, "{}", std::process::id()).map_err(lerr)?;
    Ok(f)
}

/// Whether an agent holds the lock of `data_dir`, and its pid.
pub fn running_agent(data_dir: &Path) -> Option<Option<u32>> {
    let mut f = File::open(data_dir.join(LOCK_FILE)).ok()?;
    match f.try_lock_shared() {
        Ok(()) => None,
        Err(_) => {
            let mut s = String::new();
            let _ = f.read_to_string(&mut s);
            Some(s.trim().parse().ok())
        }
    }
}

/// Reads the status file an agent writes into its data dir.
pub fn read_status(data_dir: &Path) -> Option<Snapshot> {
    // A status rewritten in place (disk full) can be read half updated;
    // the next read sees it whole.
    for _ in 0..STATUS_READ_ATTEMPTS {
        let bytes = std::fs::read(data_dir.join(STATUS_FILE)).ok()?;
        if let Ok(s) = serde_json::from_slice(&bytes) {
            return Some(s);
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    None
}

/// One step of the shutdown sequence: a signal to stop, and what to wait
/// for before the next step starts.
struct StopStep {
    name: &'static str,
    signal: Box<dyn FnOnce() + Send>,
    done: std::pin::Pin<Box<dyn std::future::Future<Output = ()> + Send>>,
}

impl StopStep {
    fn new(
        name: &'static str,
        signal: impl FnOnce() + Send + 'static,
        done: impl std::future::Future<Output = ()> + Send + 'static,
    ) -> StopStep {
        StopStep {
            name,
            signal: Box::new(signal),
            done: Box::pin(done),
        }
    }

    /// A step whose tasks end on their own once the step before it has.
    fn tasks(name: &'static str, tasks: Vec<JoinHandle<()>>) -> StopStep {
        StopStep::new(name, || {}, async move {
            for t in tasks {
                if let Err(e) = t.await {
                    tracing::error!(step = name, error = %e, "task failed");
                }
            }
        })
    }
}

/// Walks the shutdown steps in order once `shutdown` is cancelled.
async fn stop_in_order(shutdown: CancellationToken, order: Vec<StopStep>) {
    shutdown.cancelled().await;
    tracing::info!(
        order = ?order.iter().map(|s| s.name).collect::<Vec<_>>(),
        "stopping"
    );
    for step in order {
        (step.signal)();
        step.done.await;
        tracing::debug!(step = step.name, "stopped");
    }
    tracing::info!("engine stopped");
}

/// Which collector a running task is, with the settings it runs with.
#[derive(Debug, Clone, PartialEq)]
enum CollectorSettings {
    Process(edr_config::ProcessMonitorConfig),
    File(edr_config::FileMonitorConfig),
    Network(edr_config::NetworkMonitorConfig),
}

impl CollectorSettings {
    /// The wanted settings of collector `t`, or None if it should not run.
    fn wanted(t: EventType, config: &Config, paused: bool) -> Option<CollectorSettings> {
        if paused {
            return None;
        }
        let c = &config.collectors;
        match t {
            EventType::Process => c
                .process_monitor
                .enabled
                .then(|| CollectorSettings::Process(c.process_monitor.clone())),
            EventType::File => c.file_monitor.enabled.then(|| {
                // Writing a batch must never itself be a file event: that
                // loop would fill the disk with reports of filling it.
                let mut fm = c.file_monitor.clone();
                let own = config.data_dir().display().to_string();
                fm.exclude_paths.push(own.clone());
                fm.exclude_paths.push(format!("{own}/**"));
                CollectorSettings::File(fm)
            }),
            EventType::Network => c
                .network_monitor
                .enabled
                .then(|| CollectorSettings::Network(c.network_monitor.clone())),
        }
    }
}

struct Running {
    settings: CollectorSettings,
    cancel: CancellationToken,
    task: JoinHandle<()>,
}

/// Keeps the set of running collectors equal to what the config and the
/// pause switch want. Holds the only long-lived event sender: when it
/// returns, the queue closes and the batcher finishes.
async fn supervise(
    base: CollectorContext,
    mut config: watch::Receiver<Arc<Config>>,
    mut paused: watch::Receiver<bool>,
    shutdown: CancellationToken,
    tracker: TaskTracker,
) {
    let mut running: [Option<Running>; 3] = [None, None, None];
    loop {
        let cfg = Arc::clone(&config.borrow_and_update());
        let is_paused = *paused.borrow_and_update();
        for t in EventType::ALL {
            let wanted = CollectorSettings::wanted(t, &cfg, is_paused);
            let slot = &mut running[t.index()];
            if slot.as_ref().map(|r| &r.settings) == wanted.as_ref() {
                continue;
            }
            if let Some(r) = slot.take() {
                stop_collector(t, r).await;
            }
            if let Some(settings) = wanted {
                *slot = Some(start_collector(t, settings, &base, &tracker));
            }
        }
        if is_paused {
            let mut cov = collectors::coverage(&base);
            *cov = Coverage::default();
        }
        tokio::select! {
            _ = shutdown.cancelled() => break,
            r = config.changed() => if r.is_err() { break },
            r = paused.changed() => if r.is_err() { break },
        }
    }
    for t in EventType::ALL {
        if let Some(r) = running[t.index()].take() {
            stop_collector(t, r).await;
        }
    }
    drop(base);
}

fn start_collector(
    t: EventType,
    settings: CollectorSettings,
    base: &CollectorContext,
    tracker: &TaskTracker,
) -> Running {
    let cancel = base.cancel.child_token();
    let ctx = CollectorContext {
        cancel: cancel.clone(),
        ..base.clone()
    };
    tracing::info!(collector = %t, "collector starting");
    let task = match settings.clone() {
        CollectorSettings::Process(c) => tracker.spawn(collectors::process::run(c, ctx)),
        CollectorSettings::File(c) => tracker.spawn(collectors::file::run(c, ctx)),
        CollectorSettings::Network(c) => tracker.spawn(collectors::network::run(c, ctx)),
    };
    Running {
        settings,
        cancel,
        task,
    }
}

async fn stop_collector(t: EventType, r: Running) {
    r.cancel.cancel();
    if let Err(e) = r.task.await {
        tracing::error!(collector = %t, error = %e, "collector task failed");
    }
    tracing::info!(collector = %t, "collector stopped");
}

/// Ends with the data-dir lock once the sampler thread has stopped; with
/// an error if the thread panicked (it dropped the lock then).
type SamplerDone = JoinHandle<Result<DataDirLock, oneshot::error::RecvError>>;

/// Starts [`sample_loop`] on its own thread: its work is all blocking
/// (reading /proc, writing the status file and the gzip history,
/// `malloc_trim`, checking the lock file), so a slow disk never stalls the
/// runtime's threads. Returns the stop signal and a task, tracked with the
/// engine's others, that ends with the lock when the thread has stopped.
fn spawn_sampler(
    shared: Arc<Shared>,
    config: watch::Receiver<Arc<Config>>,
    paused: watch::Receiver<bool>,
    lock: DataDirLock,
    tracker: &TaskTracker,
) -> Result<(SyncSender<()>, SamplerDone), EngineError> {
    let (stop_tx, stop_rx) = mpsc::sync_channel(1);
    let (done_tx, done_rx) = oneshot::channel();
    std::thread::Builder::new()
        .name(METRICS_THREAD.into())
        .spawn(move || {
            let lock = sample_loop(shared, config, paused, stop_rx, lock);
            // Nobody waits if the engine was dropped unstopped; the lock
            // is released here then.
            let _ = done_tx.send(lock);
        })
        .map_err(|source| EngineError::Thread {
            name: METRICS_THREAD,
            source,
        })?;
    Ok((stop_tx, tracker.spawn(done_rx)))
}

/// Once a second: sample, evaluate alerts, publish the status file, and
/// append to the history. A message on `stop` ends it after a last round
/// (history flushed, status saying `running: false`); the sender dropped
/// without one (the engine dropped, never shut down) ends it at once, as
/// a dropped task would.
fn sample_loop(
    shared: Arc<Shared>,
    config: watch::Receiver<Arc<Config>>,
    paused: watch::Receiver<bool>,
    stop: Receiver<()>,
    mut lock: DataDirLock,
) -> DataDirLock {
    let mut history = HistoryWriter::new(&shared.data_dir);
    let mut next = Instant::now();
    let mut since_flush = 0u32;
    let mut trim = MemoryTrim::default();
    loop {
        let stopping = match stop.recv_timeout(next.saturating_duration_since(Instant::now())) {
            Err(RecvTimeoutError::Timeout) => false,
            Ok(()) => true,
            Err(RecvTimeoutError::Disconnected) => break,
        };
        let cfg = Arc::clone(&config.borrow());
        let sample = sample_once(&shared, &cfg);
        trim.tick(sample.rss_bytes);
        if let Err(e) = history.push(&sample, detection_totals(&shared)) {
            tracing::debug!(error = %e, "metrics history");
        }
        since_flush += 1;
        if stopping || since_flush >= HISTORY_FLUSH_EVERY {
            since_flush = 0;
            if let Err(e) = history.flush() {
                tracing::warn!(error = %e, "cannot write metrics history");
            }
        }
        lock.ensure(&shared.data_dir);
        let snapshot = build_snapshot(&shared, &cfg, *paused.borrow(), !stopping);
        if let Err(e) = write_status(&shared.data_dir, &snapshot) {
            tracing::debug!(error = %e, "cannot write status file");
        }
        if stopping {
            break;
        }
        // A late round (a slow disk) is not made up for with a burst.
        next += SAMPLE_EVERY;
        let now = Instant::now();
        if next <= now {
            next = now + SAMPLE_EVERY;
        }
    }
    lock
}

fn detection_totals(shared: &Shared) -> Option<DetectionTotals> {
    let detection = lock(&shared.detection).clone()?;
    if !detection.enabled() {
        return None;
    }
    let s = &detection.stats;
    let evaluated = s.events_evaluated.load(Relaxed);
    Some(DetectionTotals {
        events_evaluated: evaluated,
        alerts_raised: s.alerts_raised.load(Relaxed),
        alerts_suppressed: s.alerts_suppressed.load(Relaxed),
        eval_ns_mean: s
            .eval_ns_total
            .load(Relaxed)
            .checked_div(evaluated)
            .unwrap_or(0),
    })
}

fn sample_once(shared: &Shared, cfg: &Config) -> MetricsSample {
    let storage_error = shared.writer.storage_error();
    let mut m = lock(&shared.metrics);
    let capture = lock(&shared.coverage).process_capture;
    let ship = shared.shipping.as_ref().map(|s| s.snapshot());
    let sample = m.sampler.sample(&shared.counters, capture, ship.as_ref());
    let inputs = AlertInputs {
        recent_cpu: m.sampler.recent_cpu(),
        window_secs: m.sampler.window_secs(),
        compress: cfg.storage.local_storage.compress_events,
        storage_failing: shared.writer.storage_failing.load(Relaxed),
    };
    for change in m
        .alerts
        .evaluate(&sample, inputs, &cfg.alerts, storage_error.as_deref())
    {
        match change {
            AlertChange::Raised(a) => {
                tracing::warn!(kind = ?a.kind, value = a.value, threshold = a.threshold, "alert: {}", a.message)
            }
            AlertChange::Cleared(kind) => tracing::info!(kind = ?kind, "alert cleared"),
        }
    }
    m.latest = sample;
    sample
}

/// Replaces the status file atomically. On a full disk, where no new file
/// can be written, it is overwritten in place instead: that is when its
/// storage alert matters most. Padding to whole pages lets the rewrite
/// reuse the blocks the file already has.
fn write_status(data_dir: &Path, s: &Snapshot) -> std::io::Result<()> {
    let path = data_dir.join(STATUS_FILE);
    let tmp = data_dir.join(format!(".{STATUS_FILE}.tmp"));
    let mut bytes = serde_json::to_vec(s).map_err(std::io::Error::other)?;
    // Trailing spaces are valid JSON.
    bytes.resize(bytes.len().div_ceil(STATUS_PAGE) * STATUS_PAGE, b' ');
    let atomic = || -> std::io::Result<()> {
        let mut f = OpenOptions::new()
            .write(true)
            .create(true)
            .truncate(true)
            .mode(0o600)
            .open(&tmp)?;
        f.write_all(&bytes)?;
        drop(f);
        std::fs::rename(&tmp, &path)
    };
    match atomic() {
        Err(e) if matches!(e.raw_os_error(), Some(libc::ENOSPC) | Some(libc::EDQUOT)) => {
            let _ = std::fs::remove_file(&tmp);
            let mut f = OpenOptions::new().write(true).open(&path)?;
            let old_len = f.metadata()?.len();
            // Never shorter than before: no truncation, so no torn tail.
            if let Ok(old_len) = usize::try_from(old_len) {
                bytes.resize(bytes.len().max(old_len), b' ');
            }
            f.write_all(&bytes)
        }
        other => other,
    }
}

/// File modification time and size: a cheap sign of an edit.
type Stamp = Option<(SystemTime, u64)>;

fn config_stamp(p: &Path) -> Stamp {
    std::fs::metadata(p)
        .ok()
        .map(|m| (m.modified().unwrap_or(SystemTime::UNIX_EPOCH), m.len()))
}

/// Applies edits of the config file made by hand (or by another program).
/// Stat, read and parse are blocking file work: each poll runs on the
/// blocking pool, tracked with the engine's tasks, and is awaited whole
/// (it is short) so none outlives the engine.
async fn watch_config_file(handle: EngineHandle, source: ConfigSource, stop: CancellationToken) {
    let Some(path) = source.file.clone() else {
        return;
    };
    let source = Arc::new(source);
    let first = {
        let path = path.clone();
        handle.tracker.spawn_blocking(move || config_stamp(&path))
    };
    let mut last = first.await.unwrap_or_else(|e| {
        tracing::error!(error = %e, "config file check failed");
        None
    });
    let mut tick = tokio::time::interval(CONFIG_POLL);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = stop.cancelled() => return,
            _ = tick.tick() => {}
        }
        let poll = {
            let (path, source) = (path.clone(), Arc::clone(&source));
            handle.tracker.spawn_blocking(move || {
                let now = config_stamp(&path);
                if now == last || now.is_none() {
                    return (last, None);
                }
                (now, Some(source.load()))
            })
        };
        let loaded = match poll.await {
            Ok((stamp, changed)) => {
                last = stamp;
                match changed {
                    Some(loaded) => loaded,
                    None => continue,
                }
            }
            Err(e) => {
                tracing::error!(error = %e, "config file check failed");
                continue;
            }
        };
        match loaded.and_then(|c| handle.apply_config(c)) {
            Ok(()) => tracing::info!(path = %path.display(), "config file changed: applied"),
            Err(e) => {
                tracing::warn!(error = %e, "config file changed but was not applied");
                *lock(&handle.shared.config_error) = Some(e.to_string());
            }
        }
    }
}
