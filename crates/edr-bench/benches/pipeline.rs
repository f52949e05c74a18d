//! The storage path per event: serialize, compress (gzip via flate2 on
//! zlib-rs, zstd), write; a whole batch made durable (fsync); the filter
//! stage; streaming versus the naive batch-in-memory design (throughput and
//! peak heap); and the batcher thread under load with fixed and adaptive
//! batching.
//!
//! ```text
//! cargo bench -p edr-bench --bench pipeline            # all, about a minute
//! cargo bench -p edr-bench --bench pipeline -- encode  # one group
//! ```
//!
//! Events come from `edr_bench::workload::SyntheticEvents` (seeded, the
//! same on every machine). Peak heap is measured by a counting allocator
//! and printed before the timings.

use std::alloc::{GlobalAlloc, Layout, System};
use std::hint::black_box;
use std::io::Write;
use std::sync::atomic::{AtomicUsize, Ordering::Relaxed};
use std::sync::mpsc::sync_channel;
use std::sync::Arc;
use std::time::{Duration, Instant};

use criterion::{criterion_group, criterion_main, BenchmarkId, Criterion, Throughput};
use edr_bench::workload::SyntheticEvents;
use edr_config::{Config, FiltersConfig};
use edr_engine::pipeline::Pipeline;
use edr_model::event::{Event, Origin, Timestamp};
use edr_pipeline::filter::Filter;
use edr_pipeline::{Counters, EventRx, QUEUE_CAPACITY};
use edr_store::writer::WriterShared;
use edr_store::{Codec, Store};
use flate2::write::GzEncoder;

/// Counts live and peak heap bytes.
struct Counting;

static LIVE: AtomicUsize = AtomicUsize::new(0);
static PEAK: AtomicUsize = AtomicUsize::new(0);

// SAFETY: delegates to the system allocator; only adds counting.
unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        let p = unsafe { System.alloc(layout) };
        if !p.is_null() {
            let now = LIVE.fetch_add(layout.size(), Relaxed) + layout.size();
            PEAK.fetch_max(now, Relaxed);
        }
        p
    }

    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        unsafe { System.dealloc(ptr, layout) };
        LIVE.fetch_sub(layout.size(), Relaxed);
    }
}

#[global_allocator]
static ALLOC: Counting = Counting;

const BATCH: usize = 1000;

fn events(n: usize) -> Vec<Event> {
    SyntheticEvents::new(Origin::detect(), 42).take(n)
}

fn codecs() -> [(&'static str, Codec); 5] {
    [
        ("none", Codec::None),
        ("gzip-1", Codec::Gzip { level: 1 }),
        ("gzip-6", Codec::Gzip { level: 6 }),
        ("zstd-1", Codec::Zstd { level: 1 }),
        ("zstd-3", Codec::Zstd { level: 3 }),
    ]
}

/// Each event as one JSON line through `z`, serialized into `line`.
fn write_lines(z: &mut impl Write, evs: &[Event], line: &mut Vec<u8>) {
    for e in evs {
        line.clear();
        serde_json::to_writer(&mut *line, e).expect("serializes");
        line.push(b'\n');
        z.write_all(line).expect("compresses");
    }
}

/// Serialize + compress into memory, per event (no file): the CPU part.
fn encode(c: &mut Criterion) {
    let evs = events(BATCH);
    let mut g = c.benchmark_group("encode");
    g.throughput(Throughput::Elements(BATCH as u64));
    let mut line = Vec::with_capacity(4096);
    g.bench_function("serialize", |b| {
        b.iter(|| {
            for e in &evs {
                line.clear();
                serde_json::to_writer(&mut line, e).expect("serializes");
                black_box(&line);
            }
        })
    });
    for level in [1u32, 6, 9] {
        g.bench_function(BenchmarkId::new("serialize+gzip", level), |b| {
            b.iter(|| {
                let mut z = GzEncoder::new(Vec::new(), flate2::Compression::new(level));
                write_lines(&mut z, &evs, &mut line);
                black_box(z.finish().expect("finishes").len())
            })
        });
    }
    for level in [1i32, 3, 9] {
        g.bench_function(BenchmarkId::new("serialize+zstd", level), |b| {
            b.iter(|| {
                let mut z = zstd::stream::write::Encoder::new(Vec::new(), level).expect("zstd");
                write_lines(&mut z, &evs, &mut line);
                black_box(z.finish().expect("finishes").len())
            })
        });
    }
    g.bench_function("drop_event", |b| {
        b.iter_batched(|| events(BATCH), drop, criterion::BatchSize::LargeInput)
    });
    g.finish();
}

/// One 1000-event batch through the real store: temporary file, encoder,
/// fsync, rename. Per event, fsync included.
fn store(c: &mut Criterion) {
    let evs = events(BATCH);
    let dir = tempfile::tempdir().expect("tempdir");
    let mut store = Store::open(dir.path()).expect("store");
    let mut g = c.benchmark_group("store_batch");
    g.throughput(Throughput::Elements(BATCH as u64));
    let mut line = Vec::with_capacity(4096);
    for (name, codec) in codecs() {
        g.bench_function(name, |b| {
            b.iter(|| {
                let mut batch = store
                    .open_batch(Timestamp::now(), codec)
                    .expect("open batch");
                for e in &evs {
                    line.clear();
                    serde_json::to_writer(&mut line, e).expect("serializes");
                    batch.append(&line).expect("append");
                }
                let f = batch.commit().expect("commit");
                std::fs::remove_file(&f.path).expect("remove");
            })
        });
    }
    g.finish();
}

/// The seed's design: events collected in a Vec, serialized into a fresh
/// buffer, compressed at commit into another, then written.
fn naive_batch(evs: &[Event], path: &std::path::Path) -> usize {
    let held: Vec<Event> = evs.to_vec();
    let mut raw = Vec::new();
    for e in &held {
        serde_json::to_writer(&mut raw, e).expect("serializes");
        raw.push(b'\n');
    }
    let mut z = GzEncoder::new(Vec::new(), flate2::Compression::new(6));
    z.write_all(&raw).expect("compresses");
    let gz = z.finish().expect("finishes");
    std::fs::write(path, &gz).expect("write");
    gz.len()
}

/// Ours: each event serialized into one reused buffer and streamed through
/// the encoder into the file; the event itself is gone once written.
fn streaming_batch(evs: &[Event], path: &std::path::Path, line: &mut Vec<u8>) -> usize {
    let file = std::fs::File::create(path).expect("create");
    let mut z = GzEncoder::new(
        std::io::BufWriter::with_capacity(64 * 1024, file),
        flate2::Compression::new(6),
    );
    for e in evs {
        // A clone stands for the event arriving from the queue.
        let e = e.clone();
        line.clear();
        serde_json::to_writer(&mut *line, &e).expect("serializes");
        line.push(b'\n');
        z.write_all(line).expect("compresses");
    }
    let w = z.finish().expect("finishes");
    w.into_inner()
        .map(|f| f.metadata().map(|m| m.len() as usize))
        .expect("flush")
        .expect("meta")
}

fn peak_heap_of(f: impl FnOnce()) -> usize {
    let base = LIVE.load(Relaxed);
    PEAK.store(base, Relaxed);
    f();
    PEAK.load(Relaxed) - base
}

fn naive_vs_streaming(c: &mut Criterion) {
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("batch.json.gz");
    let mut line = Vec::with_capacity(4096);
    for n in [1000usize, 10_000] {
        let evs = events(n);
        let naive = peak_heap_of(|| {
            naive_batch(&evs, &path);
        });
        let streaming = peak_heap_of(|| {
            streaming_batch(&evs, &path, &mut line);
        });
        println!(
            "peak heap for one {n}-event gzip-6 batch: naive {:.1} KiB, streaming {:.1} KiB",
            naive as f64 / 1024.0,
            streaming as f64 / 1024.0
        );
    }
    let evs = events(BATCH);
    let mut g = c.benchmark_group("batch_design");
    g.throughput(Throughput::Elements(BATCH as u64));
    g.bench_function("naive", |b| b.iter(|| naive_batch(&evs, &path)));
    g.bench_function("streaming", |b| {
        b.iter(|| streaming_batch(&evs, &path, &mut line))
    });
    g.finish();
}

fn filter(c: &mut Criterion) {
    let evs = events(BATCH);
    let lines: Vec<Vec<u8>> = evs
        .iter()
        .map(|e| serde_json::to_vec(e).expect("serializes"))
        .collect();
    let mut g = c.benchmark_group("filter");
    g.throughput(Throughput::Elements(BATCH as u64));
    g.bench_function("default", |b| {
        let mut f = Filter::new(&FiltersConfig::default());
        b.iter(|| {
            let now = Instant::now();
            let mut kept = 0;
            for (e, l) in evs.iter().zip(&lines) {
                if f.admit(e, now) && !f.is_repeat(l, now) {
                    kept += 1;
                }
            }
            black_box(kept)
        })
    });
    g.finish();
}

/// CPU time of the calling thread.
fn thread_cpu() -> Duration {
    // SAFETY: all-zero is a valid timespec, filled in by the call.
    let mut ts: libc::timespec = unsafe { std::mem::zeroed() };
    // SAFETY: `ts` is valid for writes for the call.
    unsafe { libc::clock_gettime(libc::CLOCK_THREAD_CPUTIME_ID, &mut ts) };
    Duration::new(ts.tv_sec as u64, ts.tv_nsec as u32)
}

/// The batcher thread fed as fast as a producer can: CPU time of the
/// batcher thread per event (fsync waits are not CPU), fixed 1000-event
/// batches versus adaptive batching.
fn batcher(c: &mut Criterion) {
    let pool = events(4096);
    let n = 20_000u64;
    let mut g = c.benchmark_group("batcher_cpu");
    g.throughput(Throughput::Elements(n));
    for adaptive in [false, true] {
        let name = if adaptive { "adaptive" } else { "fixed-1000" };
        g.bench_function(name, |b| {
            b.iter_custom(|iters| {
                let mut total = Duration::ZERO;
                for _ in 0..iters {
                    let dir = tempfile::tempdir().expect("tempdir");
                    let mut cfg = Config::default();
                    cfg.storage.local_storage.data_dir = Some(dir.path().display().to_string());
                    cfg.agent.adaptive_batching.enabled = adaptive;
                    cfg.filters.repeat_window_ms = 0;
                    cfg.filters.coalesce_file_changes_ms = 0;
                    let (_keep, rx_cfg) = tokio::sync::watch::channel(Arc::new(cfg));
                    let (tx, rx) = sync_channel(QUEUE_CAPACITY);
                    let pipeline = Pipeline::new(
                        EventRx::from(rx),
                        Store::open(dir.path()).expect("store"),
                        rx_cfg,
                        Counters::new(),
                        Arc::new(WriterShared::default()),
                        Vec::new(),
                        Vec::new(),
                    );
                    let h = std::thread::spawn(move || {
                        let before = thread_cpu();
                        pipeline.run();
                        thread_cpu() - before
                    });
                    for i in 0..n {
                        tx.send(Box::new(pool[i as usize % pool.len()].clone()))
                            .expect("send");
                    }
                    drop(tx);
                    total += h.join().expect("batcher");
                }
                total
            })
        });
    }
    g.finish();
}

fn short() -> Criterion {
    Criterion::default()
        .sample_size(10)
        .warm_up_time(Duration::from_millis(300))
        .measurement_time(Duration::from_secs(2))
}

criterion_group! {
    name = benches;
    config = short();
    targets = encode, store, naive_vs_streaming, filter, batcher
}
criterion_main!(benches);
