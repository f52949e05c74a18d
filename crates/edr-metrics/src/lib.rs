//! The agent measuring itself: a sample every second, an in-memory ring of
//! the last hour, alerts on the configured thresholds, and a compact
//! history on disk so reports can plot past runs.

use std::collections::VecDeque;
use std::fs::{self, OpenOptions};
use std::io::{self, BufRead, Write};
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};
use std::sync::atomic::Ordering::Relaxed;
use std::time::Duration;

use flate2::write::GzEncoder;
use serde::{Deserialize, Serialize};

use edr_config::AlertsConfig;
use edr_model::capture::ProcessCapture;
use edr_model::event::{EventType, Timestamp};
use edr_pipeline::Counters;
use edr_store::sink::ShippingStatus;

/// Samples kept in memory: one hour at one per second.
pub const RING_CAPACITY: usize = 3600;
/// Samples the CPU alert averages over.
const CPU_WINDOW: usize = 10;
/// Minimum history before the storage-growth alert may fire: a single
/// batch in the first seconds would extrapolate to absurd daily rates.
const GROWTH_MIN_WINDOW_S: u64 = 60;
/// Minimum raw bytes before the compression alert may fire: tiny batches
/// compress poorly for reasons that do not matter.
const COMPRESSION_MIN_RAW: u64 = 64 * 1024;

/// One second of the agent's life.
#[derive(Debug, Clone, Copy, Default, PartialEq, Serialize, Deserialize)]
pub struct MetricsSample {
    pub ts: Timestamp,
    pub rss_bytes: u64,
    pub vsz_bytes: u64,
    /// Percent of one core over the last second.
    pub cpu_percent: f32,
    /// Events accepted per second, by type (process, file, network).
    pub events_per_sec: [f32; 3],
    /// Events dropped since start, by type (queue full).
    pub dropped_total: [u64; 3],
    /// Events stored since start, by type.
    pub stored_total: [u64; 3],
    /// Events lost since start because a batch could not be written.
    pub store_failed_total: u64,
    /// Uncompressed and stored bytes since start.
    pub raw_bytes_total: u64,
    pub stored_bytes_total: u64,
    /// Size reduction over the last hour, `1 - stored/raw`; 0 without data.
    pub compression_ratio: f32,
    /// Stored bytes per stored event over the last hour; 0 without data.
    pub bytes_per_event: f32,
    /// Batch files on disk now.
    pub storage_used_bytes: u64,
    /// Stored bytes per day, extrapolated from the last hour.
    pub storage_growth_per_day: f64,
    /// Time from a batch's first event to its file being durable, last batch.
    pub batch_latency_ms: f32,
    /// How processes were captured: as events, or by polling (which misses
    /// processes shorter than the scan interval); None with the process
    /// collector off.
    #[serde(default)]
    pub process_capture: Option<ProcessCapture>,
    /// Shipping's state at the sample; None when nothing ships.
    #[serde(default)]
    pub ship: Option<ShipSample>,
}

/// Shipping, as sampled each second (and kept in the history).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ShipSample {
    pub pending_batches: u64,
    pub pending_bytes: u64,
    pub shipped_batches: u64,
    pub shipped_events: u64,
    pub gaps: u64,
    /// Age of the oldest batch not yet acknowledged (0: none pending).
    pub lag_ms: u64,
}

impl ShipSample {
    /// From a shipping sink's status, at `now`.
    pub fn from_status(s: &ShippingStatus, now: Timestamp) -> ShipSample {
        ShipSample {
            pending_batches: s.pending_batches,
            pending_bytes: s.pending_bytes,
            shipped_batches: s.shipped_batches,
            shipped_events: s.shipped_events,
            gaps: s.gaps,
            lag_ms: s
                .oldest_pending_ms
                .map_or(0, |t| now.as_millis().saturating_sub(t)),
        }
    }
}

impl MetricsSample {
    pub fn events_per_sec_total(&self) -> f32 {
        self.events_per_sec.iter().sum()
    }
}

/// What an alert is about.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Hash)]
#[serde(rename_all = "snake_case")]
pub enum AlertKind {
    Memory,
    Cpu,
    StorageGrowth,
    Compression,
    /// Batches cannot be written (disk full, data dir gone or read-only).
    StorageWrite,
    /// The oldest batch not yet shipped is older than `max_ship_lag_s`.
    ShipLag,
}

/// An active alert, with the value that raised it and the threshold.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Alert {
    pub kind: AlertKind,
    pub value: f64,
    pub threshold: f64,
    pub since: Timestamp,
    pub message: String,
}

/// Reads this process's memory and CPU time.
#[derive(Debug, Default)]
pub struct SelfUsage {
    last_cpu: Option<(Duration, std::time::Instant)>,
}

impl SelfUsage {
    /// (rss, vsz, cpu % of one core since the previous call).
    pub fn sample(&mut self) -> (u64, u64, f32) {
        let (rss, vsz) = memory().unwrap_or((0, 0));
        let cpu_now = cpu_time();
        let now = std::time::Instant::now();
        let pct = match self.last_cpu {
            Some((prev_cpu, prev_t)) => {
                let wall = now.duration_since(prev_t).as_secs_f64();
                if wall > 0.0 {
                    (cpu_now.saturating_sub(prev_cpu).as_secs_f64() / wall * 100.0) as f32
                } else {
                    0.0
                }
            }
            None => 0.0,
        };
        self.last_cpu = Some((cpu_now, now));
        (rss, vsz, pct)
    }
}

/// When to give memory freed after a burst back to the system.
///
/// glibc keeps the pages its per-thread arenas freed: after a burst that
/// filled the queue the agent's RSS stayed at its high-water mark for good
/// (~24 MB against ~10 MB at rest in the one-hour soak). Freeing does not
/// lower RSS, so nothing signals the end of a burst; instead, every
/// [`TRIM_CHECK_SECS`], if RSS is at least [`TRIM_ABOVE_REST`] above the
/// agent's resting level, [`release_free_memory`] returns the free pages.
/// The resting level is the lowest RSS seen right after a trim or at a
/// check; the first check (after start-up, whose inventory is a burst of
/// its own) always trims. At rest nothing else is called.
#[derive(Debug, Default)]
pub struct MemoryTrim {
    rest: Option<u64>,
    ticks: u32,
}

/// Seconds between checks.
pub const TRIM_CHECK_SECS: u32 = 30;
/// RSS above the resting level that is worth a trim.
pub const TRIM_ABOVE_REST: u64 = 2 * 1024 * 1024;

impl MemoryTrim {
    /// Called once a second with the current RSS; trims when [`Self::due`].
    pub fn tick(&mut self, rss: u64) {
        if !self.due(rss) {
            return;
        }
        let started = std::time::Instant::now();
        let released = release_free_memory();
        let took_us = started.elapsed().as_micros();
        let (after, _) = memory().unwrap_or((rss, 0));
        self.trimmed(after);
        tracing::debug!(released, before = rss, after, took_us, "allocator trim");
    }

    /// Whether to trim now, given the current RSS (called once a second).
    pub fn due(&mut self, rss: u64) -> bool {
        self.ticks += 1;
        if self.ticks < TRIM_CHECK_SECS {
            return false;
        }
        self.ticks = 0;
        match self.rest {
            None => true,
            Some(rest) if rss >= rest.saturating_add(TRIM_ABOVE_REST) => true,
            Some(rest) => {
                self.rest = Some(rest.min(rss));
                false
            }
        }
    }

    /// RSS right after a trim: what is really in use.
    pub fn trimmed(&mut self, rss: u64) {
        self.rest = Some(self.rest.map_or(rss, |r| r.min(rss)));
    }
}

/// Returns the allocator's free pages to the system (glibc); elsewhere the
/// allocator already does, and this returns false.
pub fn release_free_memory() -> bool {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    {
        // SAFETY: malloc_trim only walks the allocator's own free lists.
        unsafe { libc::malloc_trim(0) };
        true
    }
    #[cfg(not(all(target_os = "linux", target_env = "gnu")))]
    false
}

/// User + system CPU time of the whole process (all threads).
pub fn cpu_time() -> Duration {
    // SAFETY: getrusage writes into the zeroed struct we pass and nothing else.
    let mut ru: libc::rusage = unsafe { std::mem::zeroed() };
    if unsafe { libc::getrusage(libc::RUSAGE_SELF, &mut ru) } != 0 {
        return Duration::ZERO;
    }
    let tv = |t: libc::timeval| Duration::new(t.tv_sec as u64, (t.tv_usec as u32) * 1000);
    tv(ru.ru_utime) + tv(ru.ru_stime)
}

/// (resident, virtual) bytes of this process.
#[cfg(target_os = "linux")]
pub fn memory() -> Option<(u64, u64)> {
    // statm: size resident shared text lib data dt, in pages.
    let s = fs::read_to_string("/proc/self/statm").ok()?;
    let mut it = s.split_ascii_whitespace();
    let vsz: u64 = it.next()?.parse().ok()?;
    let rss: u64 = it.next()?.parse().ok()?;
    // SAFETY: sysconf has no memory effects.
    let page = unsafe { libc::sysconf(libc::_SC_PAGESIZE) };
    let page = u64::try_from(page).ok().filter(|p| *p > 0).unwrap_or(4096);
    Some((rss * page, vsz * page))
}

/// (resident, virtual) bytes of this process.
#[cfg(target_os = "macos")]
pub fn memory() -> Option<(u64, u64)> {
    // SAFETY: proc_pidinfo fills at most `size` bytes of the struct we own.
    let mut info: libc::proc_taskinfo = unsafe { std::mem::zeroed() };
    let size = std::mem::size_of::<libc::proc_taskinfo>() as libc::c_int;
    let n = unsafe {
        libc::proc_pidinfo(
            libc::getpid(),
            libc::PROC_PIDTASKINFO,
            0,
            (&mut info as *mut libc::proc_taskinfo).cast(),
            size,
        )
    };
    (n == size).then_some((info.pti_resident_size, info.pti_virtual_size))
}

/// Turns counters into samples and keeps the last hour of them.
#[derive(Debug)]
pub struct Sampler {
    usage: SelfUsage,
    ring: VecDeque<MetricsSample>,
    last_produced: [u64; 3],
    last_at: Option<std::time::Instant>,
    /// Stored events at each sample (parallel to `ring`), for bytes/event.
    stored_events: VecDeque<u64>,
}

impl Default for Sampler {
    fn default() -> Self {
        Sampler {
            usage: SelfUsage::default(),
            ring: VecDeque::with_capacity(RING_CAPACITY),
            last_produced: [0; 3],
            last_at: None,
            stored_events: VecDeque::with_capacity(RING_CAPACITY),
        }
    }
}

impl Sampler {
    /// Takes a sample now and appends it to the ring.
    pub fn sample(
        &mut self,
        counters: &Counters,
        process_capture: Option<ProcessCapture>,
        ship: Option<&ShippingStatus>,
    ) -> MetricsSample {
        let (rss, vsz, cpu) = self.usage.sample();
        let now = std::time::Instant::now();
        let produced = counters.produced.snapshot();
        let elapsed = self
            .last_at
            .map(|t| now.duration_since(t).as_secs_f32())
            .unwrap_or(0.0);
        let mut rates = [0f32; 3];
        if elapsed > 0.0 {
            for (i, r) in rates.iter_mut().enumerate() {
                *r = produced[i].saturating_sub(self.last_produced[i]) as f32 / elapsed;
            }
        }
        self.last_produced = produced;
        self.last_at = Some(now);

        let stored_total = counters.stored.snapshot();
        let ts = Timestamp::now();
        let mut s = MetricsSample {
            ts,
            rss_bytes: rss,
            vsz_bytes: vsz,
            cpu_percent: cpu,
            events_per_sec: rates,
            dropped_total: counters.dropped.snapshot(),
            stored_total,
            store_failed_total: counters.store_failed.total(),
            raw_bytes_total: counters.raw_bytes.load(Relaxed),
            stored_bytes_total: counters.stored_bytes.load(Relaxed),
            compression_ratio: 0.0,
            bytes_per_event: 0.0,
            storage_used_bytes: counters.storage_used_bytes.load(Relaxed),
            storage_growth_per_day: 0.0,
            batch_latency_ms: counters.last_batch_latency_us.load(Relaxed) as f32 / 1000.0,
            process_capture,
            ship: ship.map(|st| ShipSample::from_status(st, ts)),
        };
        let stored_events: u64 = stored_total.iter().sum();
        if self.ring.len() == RING_CAPACITY {
            self.ring.pop_front();
            self.stored_events.pop_front();
        }
        // Window: from the oldest sample in the ring (up to an hour) to now.
        if let (Some(first), Some(first_events)) = (self.ring.front(), self.stored_events.front()) {
            let raw = s.raw_bytes_total.saturating_sub(first.raw_bytes_total);
            let stored = s
                .stored_bytes_total
                .saturating_sub(first.stored_bytes_total);
            let events = stored_events.saturating_sub(*first_events);
            if raw > 0 {
                s.compression_ratio = (1.0 - stored as f64 / raw as f64) as f32;
            }
            if events > 0 {
                s.bytes_per_event = (stored as f64 / events as f64) as f32;
            }
            let secs = s.ts.as_millis().saturating_sub(first.ts.as_millis()) as f64 / 1000.0;
            if secs > 0.0 {
                s.storage_growth_per_day = stored as f64 / secs * 86_400.0;
            }
        }
        self.ring.push_back(s);
        self.stored_events.push_back(stored_events);
        s
    }

    /// The samples of the last `window`, oldest first.
    pub fn history(&self, window: Duration) -> Vec<MetricsSample> {
        let Some(last) = self.ring.back() else {
            return Vec::new();
        };
        let from = last
            .ts
            .as_millis()
            .saturating_sub(window.as_millis() as u64);
        let start = self.ring.partition_point(|s| s.ts.as_millis() < from);
        self.ring.range(start..).copied().collect()
    }

    /// Seconds covered by the ring.
    pub fn window_secs(&self) -> u64 {
        match (self.ring.front(), self.ring.back()) {
            (Some(a), Some(b)) => b.ts.as_millis().saturating_sub(a.ts.as_millis()) / 1000,
            _ => 0,
        }
    }

    /// Mean CPU over the last few samples.
    pub fn recent_cpu(&self) -> f32 {
        let n = self.ring.len().min(CPU_WINDOW);
        if n == 0 {
            return 0.0;
        }
        self.ring
            .iter()
            .rev()
            .take(n)
            .map(|s| s.cpu_percent)
            .sum::<f32>()
            / n as f32
    }
}

/// Inputs to alert evaluation beyond the latest sample.
#[derive(Debug, Clone, Copy)]
pub struct AlertInputs {
    pub recent_cpu: f32,
    pub window_secs: u64,
    pub compress: bool,
    /// The last batch write failed and none has succeeded since.
    pub storage_failing: bool,
}

/// Active alerts, raised and cleared as values cross thresholds.
#[derive(Debug, Default)]
pub struct Alerts {
    active: Vec<Alert>,
}

/// An alert that changed state, for logging and notifications.
#[derive(Debug, Clone, PartialEq)]
pub enum AlertChange {
    Raised(Alert),
    Cleared(AlertKind),
}

impl Alerts {
    pub fn active(&self) -> &[Alert] {
        &self.active
    }

    /// Re-evaluates every alert; returns what changed.
    pub fn evaluate(
        &mut self,
        s: &MetricsSample,
        inputs: AlertInputs,
        cfg: &AlertsConfig,
        storage_error: Option<&str>,
    ) -> Vec<AlertChange> {
        let mb = 1024.0 * 1024.0;
        // Per alert: (value, threshold, message) when over the threshold.
        type Breach = Option<(f64, f64, String)>;
        let mut checks: Vec<(AlertKind, Breach)> = Vec::with_capacity(5);
        let rss_mb = s.rss_bytes as f64 / mb;
        checks.push((
            AlertKind::Memory,
            (rss_mb > cfg.max_memory_mb as f64).then(|| {
                (
                    rss_mb,
                    cfg.max_memory_mb as f64,
                    format!(
                        "agent memory {rss_mb:.1} MB is above {} MB",
                        cfg.max_memory_mb
                    ),
                )
            }),
        ));
        let cpu = f64::from(inputs.recent_cpu);
        checks.push((
            AlertKind::Cpu,
            (cpu > cfg.max_cpu_percent).then(|| {
                (
                    cpu,
                    cfg.max_cpu_percent,
                    format!(
                        "agent CPU {cpu:.1}% (10 s mean) is above {}%",
                        cfg.max_cpu_percent
                    ),
                )
            }),
        ));
        let growth_mb = s.storage_growth_per_day / mb;
        checks.push((
            AlertKind::StorageGrowth,
            (inputs.window_secs >= GROWTH_MIN_WINDOW_S
                && growth_mb > cfg.max_storage_growth_mb_per_day as f64)
                .then(|| {
                    (
                        growth_mb,
                        cfg.max_storage_growth_mb_per_day as f64,
                        format!(
                            "storage grows {growth_mb:.0} MB/day, above {} MB/day",
                            cfg.max_storage_growth_mb_per_day
                        ),
                    )
                }),
        ));
        let ratio = f64::from(s.compression_ratio);
        checks.push((
            AlertKind::Compression,
            (inputs.compress
                && s.raw_bytes_total >= COMPRESSION_MIN_RAW
                && ratio < cfg.min_compression_ratio)
                .then(|| {
                    (
                        ratio,
                        cfg.min_compression_ratio,
                        format!(
                            "compression reduces size by {:.1}%, below {:.1}%",
                            ratio * 100.0,
                            cfg.min_compression_ratio * 100.0
                        ),
                    )
                }),
        ));
        let lag_s = s.ship.map_or(0.0, |sh| sh.lag_ms as f64 / 1000.0);
        checks.push((
            AlertKind::ShipLag,
            (lag_s > cfg.max_ship_lag_s as f64).then(|| {
                let pending = s.ship.map_or(0, |sh| sh.pending_batches);
                (
                    lag_s,
                    cfg.max_ship_lag_s as f64,
                    format!(
                        "shipping is {lag_s:.0} s behind ({pending} batches pending), more than {} s",
                        cfg.max_ship_lag_s
                    ),
                )
            }),
        ));
        checks.push((
            AlertKind::StorageWrite,
            inputs.storage_failing.then(|| {
                (
                    s.store_failed_total as f64,
                    0.0,
                    format!(
                        "batches cannot be written ({} events lost so far): {}",
                        s.store_failed_total,
                        storage_error.unwrap_or("unknown error")
                    ),
                )
            }),
        ));

        let mut changes = Vec::new();
        for (kind, state) in checks {
            let pos = self.active.iter().position(|a| a.kind == kind);
            match (state, pos) {
                (Some((value, threshold, message)), Some(i)) => {
                    // Still active: keep `since`, refresh the numbers.
                    let a = &mut self.active[i];
                    a.value = value;
                    a.threshold = threshold;
                    a.message = message;
                }
                (Some((value, threshold, message)), None) => {
                    let a = Alert {
                        kind,
                        value,
                        threshold,
                        since: s.ts,
                        message,
                    };
                    changes.push(AlertChange::Raised(a.clone()));
                    self.active.push(a);
                }
                (None, Some(i)) => {
                    self.active.remove(i);
                    changes.push(AlertChange::Cleared(kind));
                }
                (None, None) => {}
            }
        }
        changes
    }
}

/// Subdirectory of the data dir holding metrics history.
pub const METRICS_DIR: &str = "metrics";
/// Columns are only ever appended, so older files (with fewer columns)
/// stay readable.
const HISTORY_HEADER: &str = "ts_ms,rss_bytes,vsz_bytes,cpu_percent,process_eps,file_eps,network_eps,dropped,stored_events,raw_bytes,stored_bytes,storage_used_bytes,growth_bytes_per_day,batch_latency_ms,process_capture,ship_pending_batches,ship_pending_bytes,ship_shipped_batches,ship_shipped_events,ship_gaps,ship_lag_ms,detect_evaluated,detect_alerts_raised,detect_alerts_suppressed,detect_eval_ns_mean\n";
/// Columns of the first history format.
const HISTORY_COLUMNS_V1: usize = 14;

/// The detection stage's totals since start, for the history. Not kept in
/// the in-memory ring (the charts do not plot them), so the hour of samples
/// the ring holds does not grow with them.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct DetectionTotals {
    pub events_evaluated: u64,
    pub alerts_raised: u64,
    pub alerts_suppressed: u64,
    /// Mean evaluation time per event since start, in nanoseconds.
    pub eval_ns_mean: u64,
}

/// Appends samples to `<data_dir>/metrics/YYYY-MM-DD.csv.gz`, one gzip
/// member per flush. Concatenated members are a valid gzip stream (zcat
/// reads the whole day); a member torn by a crash only loses its minute.
#[derive(Debug)]
pub struct HistoryWriter {
    dir: PathBuf,
    pending: String,
    pending_day: Option<String>,
}

impl HistoryWriter {
    pub fn new(data_dir: &Path) -> HistoryWriter {
        HistoryWriter {
            dir: data_dir.join(METRICS_DIR),
            pending: String::new(),
            pending_day: None,
        }
    }

    /// Buffers a sample; a new day flushes the previous day's lines first.
    /// `detection` is None with detection off (its columns are left empty).
    pub fn push(
        &mut self,
        s: &MetricsSample,
        detection: Option<DetectionTotals>,
    ) -> io::Result<()> {
        let day = s.ts.day();
        if self.pending_day.as_deref().is_some_and(|d| d != day) {
            self.flush()?;
        }
        self.pending_day = Some(day);
        use std::fmt::Write as _;
        let _ = write!(
            self.pending,
            "{},{},{},{:.2},{:.2},{:.2},{:.2},{},{},{},{},{},{:.0},{:.2},{},{}",
            s.ts.as_millis(),
            s.rss_bytes,
            s.vsz_bytes,
            s.cpu_percent,
            s.events_per_sec[0],
            s.events_per_sec[1],
            s.events_per_sec[2],
            s.dropped_total.iter().sum::<u64>(),
            s.stored_total.iter().sum::<u64>(),
            s.raw_bytes_total,
            s.stored_bytes_total,
            s.storage_used_bytes,
            s.storage_growth_per_day,
            s.batch_latency_ms,
            s.process_capture
                .map(ProcessCapture::as_str)
                .unwrap_or_default(),
            // Empty columns while nothing ships.
            s.ship.map_or(",,,,,".to_string(), |sh| format!(
                "{},{},{},{},{},{}",
                sh.pending_batches,
                sh.pending_bytes,
                sh.shipped_batches,
                sh.shipped_events,
                sh.gaps,
                sh.lag_ms
            )),
        );
        match detection {
            Some(d) => {
                let _ = writeln!(
                    self.pending,
                    ",{},{},{},{}",
                    d.events_evaluated, d.alerts_raised, d.alerts_suppressed, d.eval_ns_mean
                );
            }
            None => self.pending.push_str(",,,,\n"),
        }
        Ok(())
    }

    /// Writes buffered lines as one gzip member. When that fails (disk
    /// full, data dir gone) the lines stay buffered for the next flush, up
    /// to an hour of them.
    pub fn flush(&mut self) -> io::Result<()> {
        let Some(day) = self.pending_day.clone() else {
            return Ok(());
        };
        if !self.pending.is_empty() {
            if let Err(e) = self.write_member(&day) {
                self.drop_oldest_beyond(RING_CAPACITY);
                return Err(e);
            }
        }
        self.pending.clear();
        self.pending_day = None;
        Ok(())
    }

    fn write_member(&self, day: &str) -> io::Result<()> {
        edr_store::create_private_dir(&self.dir).map_err(io::Error::other)?;
        let path = self.dir.join(format!("{day}.csv.gz"));
        let file = OpenOptions::new()
            .create(true)
            .append(true)
            .mode(0o600)
            .open(&path)?;
        let before = file.metadata()?.len();
        let mut gz = GzEncoder::new(&file, flate2::Compression::new(6));
        let written = (|| {
            if before == 0 {
                gz.write_all(HISTORY_HEADER.as_bytes())?;
            }
            gz.write_all(self.pending.as_bytes())?;
            gz.try_finish()
        })();
        drop(gz);
        if written.is_err() {
            // A torn member would end every later read of the day early.
            let _ = file.set_len(before);
        }
        written
    }

    fn drop_oldest_beyond(&mut self, max_lines: usize) {
        let lines = self.pending.matches('\n').count();
        if lines <= max_lines {
            return;
        }
        let cut = self
            .pending
            .match_indices('\n')
            .nth(lines - max_lines - 1)
            .map_or(0, |(i, _)| i + 1);
        self.pending.drain(..cut);
    }
}

/// A sample read back from history (the columns the CSV keeps).
#[derive(Debug, Clone, Copy, Default, PartialEq, Serialize, Deserialize)]
pub struct HistoryRow {
    pub ts: Timestamp,
    pub rss_bytes: u64,
    pub vsz_bytes: u64,
    pub cpu_percent: f32,
    pub events_per_sec: [f32; 3],
    pub dropped: u64,
    pub stored_events: u64,
    pub raw_bytes: u64,
    pub stored_bytes: u64,
    pub storage_used_bytes: u64,
    pub growth_per_day: f64,
    pub batch_latency_ms: f32,
    /// None in rows written before the column existed, or with the process
    /// collector off.
    pub process_capture: Option<ProcessCapture>,
    /// None in older rows and while nothing shipped.
    pub ship: Option<ShipSample>,
    /// None in rows written before the columns existed, or with detection
    /// off.
    pub detection: Option<DetectionTotals>,
}

impl HistoryRow {
    fn parse(line: &str) -> Option<HistoryRow> {
        let f: Vec<&str> = line.split(',').collect();
        if f.len() < HISTORY_COLUMNS_V1 {
            return None;
        }
        Some(HistoryRow {
            ts: Timestamp(f[0].parse().ok()?),
            rss_bytes: f[1].parse().ok()?,
            vsz_bytes: f[2].parse().ok()?,
            cpu_percent: f[3].parse().ok()?,
            events_per_sec: [f[4].parse().ok()?, f[5].parse().ok()?, f[6].parse().ok()?],
            dropped: f[7].parse().ok()?,
            stored_events: f[8].parse().ok()?,
            raw_bytes: f[9].parse().ok()?,
            stored_bytes: f[10].parse().ok()?,
            storage_used_bytes: f[11].parse().ok()?,
            growth_per_day: f[12].parse().ok()?,
            batch_latency_ms: f[13].parse().ok()?,
            process_capture: f.get(14).and_then(|c| ProcessCapture::parse(c)),
            ship: parse_ship(f.get(15..21)),
            detection: (|| {
                Some(DetectionTotals {
                    events_evaluated: f.get(21)?.parse().ok()?,
                    alerts_raised: f.get(22)?.parse().ok()?,
                    alerts_suppressed: f.get(23)?.parse().ok()?,
                    eval_ns_mean: f.get(24)?.parse().ok()?,
                })
            })(),
        })
    }
}

fn parse_ship(f: Option<&[&str]>) -> Option<ShipSample> {
    let f = f?;
    let n = |i: usize| f[i].parse::<u64>().ok();
    Some(ShipSample {
        pending_batches: n(0)?,
        pending_bytes: n(1)?,
        shipped_batches: n(2)?,
        shipped_events: n(3)?,
        gaps: n(4)?,
        lag_ms: n(5)?,
    })
}

/// Reads the metrics history of a data dir since `since`, oldest first.
/// Torn or corrupt members end that day's file early (with a warning).
pub fn read_history(data_dir: &Path, since: Timestamp) -> Vec<HistoryRow> {
    let dir = data_dir.join(METRICS_DIR);
    let Ok(rd) = fs::read_dir(&dir) else {
        return Vec::new();
    };
    let mut files: Vec<PathBuf> = rd
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.to_string_lossy().ends_with(".csv.gz"))
        .collect();
    files.sort();
    let since_day = since.day();
    let mut rows = Vec::new();
    for path in files {
        let day = path
            .file_name()
            .map(|n| n.to_string_lossy().chars().take(10).collect::<String>())
            .unwrap_or_default();
        if day < since_day {
            continue;
        }
        let Ok(file) = fs::File::open(&path) else {
            continue;
        };
        let reader = io::BufReader::new(flate2::read::MultiGzDecoder::new(file));
        for line in reader.lines() {
            match line {
                Ok(l) => {
                    if let Some(r) = HistoryRow::parse(&l) {
                        if r.ts >= since {
                            rows.push(r);
                        }
                    }
                }
                Err(e) => {
                    tracing::warn!(path = %path.display(), error = %e, "metrics history ends early");
                    break;
                }
            }
        }
    }
    rows
}

/// Per-type array from a closure, in `EventType::ALL` order.
pub fn per_type<T>(f: impl Fn(EventType) -> T) -> [T; 3] {
    EventType::ALL.map(f)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn memory_is_trimmed_while_well_above_rest() {
        const MB: u64 = 1024 * 1024;
        let mut trim = MemoryTrim::default();
        // Trims in TRIM_CHECK_SECS seconds at `rss`, each leaving `after`.
        let mut check = |rss: u64, after: u64| {
            let mut n = 0;
            for _ in 0..TRIM_CHECK_SECS {
                if trim.due(rss) {
                    trim.trimmed(after);
                    n += 1;
                }
            }
            n
        };
        assert_eq!(check(12 * MB, 10 * MB), 1, "after start-up: rest is 10");
        assert_eq!(
            check(11 * MB, 11 * MB),
            0,
            "less than TRIM_ABOVE_REST above"
        );
        assert_eq!(check(9 * MB, 9 * MB), 0, "a lower rest");
        assert_eq!(check(14 * MB, 13 * MB), 1, "a burst's high-water mark");
        assert_eq!(check(13 * MB, 10 * MB), 1, "still above rest: tried again");
        assert_eq!(check(10 * MB, 10 * MB), 0, "back at rest");
    }

    fn sample(ts: u64, rss_mb: u64, cpu: f32) -> MetricsSample {
        MetricsSample {
            ts: Timestamp(ts),
            rss_bytes: rss_mb * 1024 * 1024,
            cpu_percent: cpu,
            ..MetricsSample::default()
        }
    }

    fn inputs(cpu: f32) -> AlertInputs {
        AlertInputs {
            recent_cpu: cpu,
            window_secs: 0,
            compress: true,
            storage_failing: false,
        }
    }

    #[test]
    fn alerts_fire_once_and_clear() {
        let cfg = AlertsConfig::default();
        let mut alerts = Alerts::default();
        let high = sample(1000, 300, 0.0);
        let changes = alerts.evaluate(&high, inputs(0.0), &cfg, None);
        assert!(
            matches!(&changes[..], [AlertChange::Raised(a)] if a.kind == AlertKind::Memory && a.threshold == 200.0)
        );
        // Still high: no new change, still one alert with the first `since`.
        assert!(alerts
            .evaluate(&sample(2000, 310, 0.0), inputs(0.0), &cfg, None)
            .is_empty());
        assert_eq!(alerts.active().len(), 1);
        assert_eq!(alerts.active()[0].since, Timestamp(1000));
        let changes = alerts.evaluate(&sample(3000, 50, 0.0), inputs(0.0), &cfg, None);
        assert_eq!(changes, vec![AlertChange::Cleared(AlertKind::Memory)]);
        assert!(alerts.active().is_empty());
    }

    #[test]
    fn cpu_alert_uses_the_recent_mean() {
        let cfg = AlertsConfig::default();
        let mut alerts = Alerts::default();
        let s = sample(1000, 10, 90.0);
        // A single spike does not count; the 10 s mean does.
        assert!(alerts.evaluate(&s, inputs(5.0), &cfg, None).is_empty());
        assert_eq!(alerts.evaluate(&s, inputs(25.0), &cfg, None).len(), 1);
    }

    #[test]
    fn history_round_trips_through_gzip_members() {
        let dir = tempfile::tempdir().expect("tempdir");
        let mut w = HistoryWriter::new(dir.path());
        let t0 = Timestamp::now().as_millis();
        for i in 0..3 {
            w.push(&sample(t0 + i * 1000, 5, 1.5), None).expect("push");
            w.flush().expect("flush");
        }
        let rows = read_history(dir.path(), Timestamp(t0 - 1));
        assert_eq!(rows.len(), 3);
        assert_eq!(rows[2].ts, Timestamp(t0 + 2000));
        assert_eq!(rows[0].rss_bytes, 5 * 1024 * 1024);
    }

    /// The API sends history rows as JSON (`/v1/history`,
    /// `/v1/stored/history`) and the client parses them: `report` through
    /// the service must draw the same figures as `report` on the data dir.
    /// Without serde_json's exact float parsing about one value in ten came
    /// back a bit off.
    #[test]
    fn history_rows_survive_the_apis_json_unchanged() {
        let mut x: u64 = 0x9E37_79B9_7F4A_7C15;
        let mut next = move || {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            (x >> 11) as f64 / (1u64 << 53) as f64
        };
        for _ in 0..2000 {
            let row = HistoryRow {
                cpu_percent: (next() * 100.0) as f32,
                events_per_sec: [(next() * 1e4) as f32, (next() * 1e5) as f32, next() as f32],
                growth_per_day: next() * 1e10,
                batch_latency_ms: (next() * 1e3) as f32,
                ..HistoryRow::default()
            };
            let text = serde_json::to_string(&row).expect("serialize");
            let back: HistoryRow = serde_json::from_str(&text).expect("parse");
            assert_eq!(back, row, "{text}");
        }
    }

    #[test]
    fn history_records_how_processes_were_captured_and_detection_totals() {
        let dir = tempfile::tempdir().expect("tempdir");
        let mut w = HistoryWriter::new(dir.path());
        let t0 = Timestamp::now().as_millis();
        for (i, capture) in [
            Some(ProcessCapture::Event),
            Some(ProcessCapture::Scan),
            None,
        ]
        .into_iter()
        .enumerate()
        {
            let s = MetricsSample {
                process_capture: capture,
                ..sample(t0 + i as u64 * 1000, 5, 1.0)
            };
            // Detection on in the first two samples, off in the last.
            let detection = (i < 2).then_some(DetectionTotals {
                events_evaluated: 1000 + i as u64,
                alerts_raised: 3,
                alerts_suppressed: 7,
                eval_ns_mean: 1300,
            });
            w.push(&s, detection).expect("push");
        }
        w.flush().expect("flush");
        let rows = read_history(dir.path(), Timestamp(t0 - 1));
        let evaluated: Vec<_> = rows
            .iter()
            .map(|r| r.detection.map(|d| d.events_evaluated))
            .collect();
        assert_eq!(evaluated, [Some(1000), Some(1001), None]);
        assert_eq!(
            rows[0].detection,
            Some(DetectionTotals {
                events_evaluated: 1000,
                alerts_raised: 3,
                alerts_suppressed: 7,
                eval_ns_mean: 1300
            })
        );
        let captures: Vec<_> = rows.iter().map(|r| r.process_capture).collect();
        assert_eq!(
            captures,
            [
                Some(ProcessCapture::Event),
                Some(ProcessCapture::Scan),
                None
            ]
        );
    }

    /// A day file begun by an agent that wrote 14 columns, continued by one
    /// that writes more: every row reads.
    #[test]
    fn older_history_rows_stay_readable() {
        let dir = tempfile::tempdir().expect("tempdir");
        let t0 = Timestamp::now().as_millis();
        let path = dir.path().join(METRICS_DIR);
        std::fs::create_dir_all(&path).expect("mkdir");
        let file = std::fs::File::create(path.join(format!("{}.csv.gz", Timestamp(t0).day())))
            .expect("create");
        let mut gz = GzEncoder::new(file, flate2::Compression::new(6));
        write!(
            gz,
            "ts_ms,rss_bytes,vsz_bytes,cpu_percent,process_eps,file_eps,network_eps,dropped,stored_events,raw_bytes,stored_bytes,storage_used_bytes,growth_bytes_per_day,batch_latency_ms\n\
             {t0},1048576,2097152,1.50,0.00,0.00,0.00,0,0,0,0,0,0,0.00\n"
        )
        .expect("write");
        gz.finish().expect("finish");
        let mut w = HistoryWriter::new(dir.path());
        let s = MetricsSample {
            process_capture: Some(ProcessCapture::Event),
            ..sample(t0 + 1000, 3, 1.0)
        };
        w.push(&s, Some(DetectionTotals::default())).expect("push");
        w.flush().expect("flush");
        let rows = read_history(dir.path(), Timestamp(t0 - 1));
        assert_eq!(rows.len(), 2);
        assert_eq!(rows[0].detection, None);
        assert_eq!(rows[1].detection, Some(DetectionTotals::default()));
        assert_eq!(rows[0].rss_bytes, 1_048_576);
        assert_eq!(rows[0].process_capture, None);
        assert_eq!(rows[1].process_capture, Some(ProcessCapture::Event));
    }

    #[test]
    fn self_usage_reads_this_process() {
        let (rss, vsz) = memory().expect("memory readable");
        assert!(rss > 0 && vsz >= rss);
    }
}
