//! What each collector costs per unit of work, in CPU time of this
//! process (the collector is all it does meanwhile):
//!
//! - `process_scan`: one scan of the process table, as many processes as
//!   the machine has;
//! - `network_scan/N`: one socket scan with N TCP connections of ours open
//!   on 127.0.0.1 (2N sockets), owners cached;
//! - `file_events`: 100 files written in a watched directory and turned
//!   into events, against `file_writes_only` (the same writes, no
//!   collector): the difference is the collector's cost.
//!
//! ```text
//! cargo bench -p edr-bench --bench scan
//! ```
//!
//! Scans are timed by the collectors' own `process scan` / `network scan`
//! debug events, captured by a small tracing layer; each collector runs
//! with a 1 ms interval so scans follow each other.

use std::net::{TcpListener, TcpStream};
use std::path::Path;
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use criterion::{criterion_group, criterion_main, BenchmarkId, Criterion, Throughput};
use edr_collect::{file, network, process, CollectorContext, Coverage};
use edr_config::{FileMonitorConfig, NetworkMonitorConfig, ProcessMonitorConfig};
use edr_pipeline::QUEUE_CAPACITY;
use tokio_util::sync::CancellationToken;
use tracing::field::{Field, Visit};
use tracing_subscriber::layer::{Context, SubscriberExt};
use tracing_subscriber::Layer;

/// Scans seen so far, and the process CPU time at the last one.
static SCANS: AtomicU64 = AtomicU64::new(0);

struct Message(bool);

impl Visit for Message {
    fn record_debug(&mut self, field: &Field, value: &dyn std::fmt::Debug) {
        if field.name() == "message" {
            let m = format!("{value:?}");
            self.0 = m == "process scan" || m == "network scan";
        }
    }
}

struct CountScans;

impl<S: tracing::Subscriber> Layer<S> for CountScans {
    fn on_event(&self, event: &tracing::Event<'_>, _: Context<'_, S>) {
        let mut m = Message(false);
        event.record(&mut m);
        if m.0 {
            SCANS.fetch_add(1, Relaxed);
        }
    }
}

/// User + system CPU of this process.
fn process_cpu() -> Duration {
    // SAFETY: all-zero is a valid `rusage`, filled in by the call.
    let mut ru: libc::rusage = unsafe { std::mem::zeroed() };
    // SAFETY: `ru` is valid for writes for the call.
    unsafe { libc::getrusage(libc::RUSAGE_SELF, &mut ru) };
    let d = |t: libc::timeval| Duration::new(t.tv_sec as u64, t.tv_usec as u32 * 1000);
    d(ru.ru_utime) + d(ru.ru_stime)
}

struct Running {
    rt: tokio::runtime::Runtime,
    cancel: CancellationToken,
    rx: edr_pipeline::EventRx,
    coverage: Arc<Mutex<Coverage>>,
}

fn start<F, Fut>(f: F) -> Running
where
    F: FnOnce(CollectorContext) -> Fut,
    Fut: std::future::Future<Output = ()> + Send + 'static,
{
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .enable_all()
        .build()
        .expect("runtime");
    let (ctx, rx) = CollectorContext::standalone(QUEUE_CAPACITY);
    let (cancel, coverage) = (ctx.cancel.clone(), Arc::clone(&ctx.coverage));
    rt.spawn(f(ctx));
    Running {
        rt,
        cancel,
        rx,
        coverage,
    }
}

impl Running {
    fn drain(&self) {
        while self.rx.try_recv().is_ok() {}
    }

    /// Waits for `n` more scans, draining events; returns the CPU time.
    fn scans(&self, n: u64) -> Duration {
        let target = SCANS.load(Relaxed) + n;
        let cpu = process_cpu();
        while SCANS.load(Relaxed) < target {
            self.drain();
            std::thread::sleep(Duration::from_micros(200));
        }
        process_cpu() - cpu
    }

    fn stop(self) {
        self.cancel.cancel();
        self.rt.shutdown_timeout(Duration::from_secs(5));
    }
}

fn scan_cost(c: &mut Criterion) {
    let mut g = c.benchmark_group("scan_cpu");
    g.throughput(Throughput::Elements(1));
    g.bench_function("process_scan", |b| {
        let cfg = ProcessMonitorConfig {
            scan_interval_ms: 1,
            ..ProcessMonitorConfig::default()
        };
        let r = start(|ctx| process::run(cfg, ctx));
        r.scans(3); // inventory and hashing of every executable
        b.iter_custom(|iters| r.scans(iters));
        r.stop();
    });
    for n in [0usize, 100, 1000] {
        let listener = TcpListener::bind("127.0.0.1:0").expect("listen");
        let held: Vec<(TcpStream, TcpStream)> = (0..n)
            .map(|_| {
                let c = TcpStream::connect(listener.local_addr().expect("addr")).expect("connect");
                (c, listener.accept().expect("accept").0)
            })
            .collect();
        g.bench_function(BenchmarkId::new("network_scan", n), |b| {
            let cfg = NetworkMonitorConfig {
                scan_interval_ms: 1,
                max_scan_interval_ms: 1,
                source: edr_config::NetworkSource::Scan,
                ..NetworkMonitorConfig::default()
            };
            let r = start(|ctx| network::run(cfg, ctx));
            r.scans(3);
            b.iter_custom(|iters| r.scans(iters));
            r.stop();
        });
        drop(held);
    }
    g.finish();
}

fn write_files(dir: &Path, round: u64) {
    for i in 0..100 {
        std::fs::write(dir.join(format!("f{i}.txt")), round.to_le_bytes()).expect("write");
    }
}

fn file_cost(c: &mut Criterion) {
    let dir = tempfile::tempdir().expect("tempdir");
    let mut g = c.benchmark_group("file_cpu");
    g.throughput(Throughput::Elements(100));
    let mut round = 0u64;
    g.bench_function("file_writes_only", |b| {
        b.iter_custom(|iters| {
            let cpu = process_cpu();
            for _ in 0..iters {
                round += 1;
                write_files(dir.path(), round);
            }
            process_cpu() - cpu
        })
    });
    let cfg = FileMonitorConfig {
        watch_paths: vec![dir.path().display().to_string()],
        linux_watch_paths: Vec::new(),
        macos_watch_paths: Vec::new(),
        exclude_paths: Vec::new(),
        ..FileMonitorConfig::default()
    };
    let r = start(|ctx| file::run(cfg, ctx));
    let deadline = Instant::now() + Duration::from_secs(10);
    while r
        .coverage
        .lock()
        .map(|c| c.watched_paths.is_empty())
        .unwrap_or(true)
    {
        assert!(Instant::now() < deadline, "watch never set up");
        std::thread::sleep(Duration::from_millis(10));
    }
    g.bench_function("file_events", |b| {
        b.iter_custom(|iters| {
            let cpu = process_cpu();
            for _ in 0..iters {
                round += 1;
                write_files(dir.path(), round);
                // Each write is at least one event; wait for them.
                let mut got = 0;
                while got < 100 {
                    if r.rx.recv_timeout(Duration::from_secs(10)).is_err() {
                        break;
                    }
                    got += 1;
                }
            }
            let spent = process_cpu() - cpu;
            // Let the hasher finish before the next sample.
            std::thread::sleep(Duration::from_millis(20));
            r.drain();
            spent
        })
    });
    r.stop();
    g.finish();
}

fn short() -> Criterion {
    Criterion::default()
        .sample_size(10)
        .warm_up_time(Duration::from_millis(200))
        .measurement_time(Duration::from_secs(2))
}

fn setup_tracing() {
    let subscriber = tracing_subscriber::registry()
        .with(CountScans.with_filter(tracing_subscriber::filter::LevelFilter::DEBUG));
    let _ = tracing::subscriber::set_global_default(subscriber);
}

fn benches(c: &mut Criterion) {
    setup_tracing();
    scan_cost(c);
    file_cost(c);
}

criterion_group! {
    name = scan;
    config = short();
    targets = benches
}
criterion_main!(scan);
