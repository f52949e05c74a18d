//! The storage pipeline alone: synthetic mixed events through the real
//! batcher (serialize, compress, write, fsync, rename) into a real store,
//! at a set rate or as fast as it goes.

use std::path::Path;
use std::sync::atomic::Ordering::Relaxed;
use std::sync::mpsc::sync_channel;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::Context as _;
use edr_bench::workload::SyntheticEvents;
use edr_config::{Compression, Config};
use edr_engine::pipeline::Pipeline;
use edr_model::event::{Event, Origin};
use edr_pipeline::{Counters, EventRx, QUEUE_CAPACITY};
use edr_store::writer::WriterShared;
use edr_store::Store;

/// Distinct events cycled through by the producer.
const POOL: usize = 4096;
/// Events of an as-fast-as-possible run (about 600 MB while queued).
const MAX_RATE_EVENTS: usize = 400_000;

#[derive(Debug, Clone)]
pub struct PipelineRun {
    /// Events per second offered; 0: as fast as the batcher takes them
    /// (a fixed number of events, not `duration`).
    pub rate: f64,
    pub duration: Duration,
    pub compression: Option<Compression>,
    pub level: Option<u32>,
    pub batch: u32,
    pub adaptive: bool,
    /// The detection stage (built-in rules), as the default config has it.
    pub detection: bool,
    /// Leave the batch files in `<work>/data`, a data dir the agent can
    /// read (for measuring readers of stored data).
    pub keep_data: bool,
}

#[derive(Debug, Clone, Copy, Default)]
pub struct PipelineReport {
    pub offered: u64,
    pub stored: u64,
    pub batches: u64,
    pub wall: Duration,
    /// CPU time of the batcher's thread.
    pub batcher_cpu: Duration,
    pub raw_bytes: u64,
    pub stored_bytes: u64,
}

impl PipelineReport {
    pub fn per_sec_wall(&self) -> f64 {
        self.stored as f64 / self.wall.as_secs_f64().max(1e-9)
    }

    /// Events stored per second of the batcher thread's CPU: the
    /// throughput of one core.
    pub fn per_cpu_sec(&self) -> f64 {
        self.stored as f64 / self.batcher_cpu.as_secs_f64().max(1e-9)
    }

    pub fn batcher_cpu_percent(&self) -> f64 {
        self.batcher_cpu.as_secs_f64() / self.wall.as_secs_f64().max(1e-9) * 100.0
    }

    pub fn bytes_per_event(&self) -> f64 {
        self.stored_bytes as f64 / self.stored.max(1) as f64
    }

    pub fn reduction(&self) -> f64 {
        1.0 - self.stored_bytes as f64 / self.raw_bytes.max(1) as f64
    }
}

fn config(run: &PipelineRun, data_dir: &Path) -> Config {
    let mut c = Config::default();
    c.storage.local_storage.data_dir = Some(data_dir.display().to_string());
    c.agent.max_events_per_batch = run.batch;
    c.agent.adaptive_batching.enabled = run.adaptive;
    c.detection.enabled = run.detection;
    let ls = &mut c.storage.local_storage;
    match run.compression {
        Some(codec) => {
            ls.compression = codec;
            ls.compression_level = run.level;
        }
        None => ls.compress_events = false,
    }
    // The producer cycles through a pool: repeats would be filtered.
    c.filters.repeat_window_ms = 0;
    c.filters.coalesce_file_changes_ms = 0;
    c
}

/// CPU time of the calling thread.
pub(crate) fn thread_cpu() -> Duration {
    // SAFETY: all-zero is a valid timespec, filled in by the call.
    let mut ts: libc::timespec = unsafe { std::mem::zeroed() };
    // SAFETY: `ts` is valid for writes for the call.
    if unsafe { libc::clock_gettime(libc::CLOCK_THREAD_CPUTIME_ID, &mut ts) } != 0 {
        return Duration::ZERO;
    }
    Duration::new(ts.tv_sec as u64, ts.tv_nsec as u32)
}

/// Runs the pipeline into `<work>/data` and reports.
pub fn run(r: &PipelineRun, work: &Path) -> anyhow::Result<PipelineReport> {
    let data = work.join("data");
    let cfg = config(r, &data);
    cfg.validate()?;
    let store = Store::open(&data)?;
    let counters = Counters::new();
    let (_config_tx, config_rx) = tokio::sync::watch::channel(Arc::new(cfg));
    let (tx, rx) = sync_channel::<Box<Event>>(QUEUE_CAPACITY);
    let pool = SyntheticEvents::new(Origin::detect(), 42).take(POOL);
    // As fast as it goes: the events are built before the clock starts, so
    // the producer's allocations do not compete with the batcher's frees.
    let prebuilt: Vec<Event> = if r.rate > 0.0 {
        Vec::new()
    } else {
        (0..MAX_RATE_EVENTS)
            .map(|i| pool[i % POOL].clone())
            .collect()
    };
    let pipeline = Pipeline::new(
        EventRx::from(rx),
        store,
        config_rx,
        Arc::clone(&counters),
        Arc::new(WriterShared::default()),
        Vec::new(),
        Vec::new(),
    );
    let started = Instant::now();
    let consumer = std::thread::spawn(move || {
        pipeline.run();
        thread_cpu()
    });
    let mut offered = 0u64;
    if r.rate > 0.0 {
        let end = started + r.duration;
        while Instant::now() < end {
            let due = (started.elapsed().as_secs_f64() * r.rate) as u64;
            while offered < due {
                if tx
                    .send(Box::new(pool[offered as usize % POOL].clone()))
                    .is_err()
                {
                    break;
                }
                offered += 1;
            }
            std::thread::sleep(Duration::from_millis(1));
        }
    } else {
        for e in prebuilt {
            if tx.send(Box::new(e)).is_err() {
                break;
            }
            offered += 1;
        }
    }
    drop(tx);
    let batcher_cpu = consumer
        .join()
        .map_err(|_| anyhow::anyhow!("the batcher panicked"))?;
    let wall = started.elapsed();
    let report = PipelineReport {
        offered,
        stored: counters.stored.total(),
        batches: counters.batches_written.load(Relaxed),
        wall,
        batcher_cpu,
        raw_bytes: counters.raw_bytes.load(Relaxed),
        stored_bytes: counters.stored_bytes.load(Relaxed),
    };
    if !r.keep_data {
        std::fs::remove_dir_all(&data)
            .with_context(|| format!("cannot remove {}", data.display()))?;
    }
    Ok(report)
}
