//! Measures what a network scan costs with many TCP connections open on
//! 127.0.0.1 (both ends in this process, so twice as many sockets).
//!
//! The first scan finds every owner by walking /proc; steady scans hit the
//! inode cache; then one new connection per scan makes each scan search
//! /proc again (processes that already own sockets first).
//!
//! ```text
//! cargo run --release -p edr-bench --example network_scan_cost -- [connections]
//! ```
//!
//! Numbers come from the collector's own debug events (`network scan`,
//! `socket owners searched in /proc`), captured by a small tracing layer.
//! CPU per scan is the whole process's CPU time between the ends of two
//! scans: the collector is all this process does meanwhile.

use std::net::{TcpListener, TcpStream};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use edr_collect::{network, CollectorContext, Coverage};
use edr_config::NetworkMonitorConfig;
use edr_model::event::Origin;
use edr_pipeline::{self as pipeline, Counters};
use tokio_util::sync::CancellationToken;
use tracing::field::{Field, Visit};
use tracing_subscriber::layer::{Context, SubscriberExt};
use tracing_subscriber::Layer;

const STEADY_SCANS: usize = 5;
const SCANS_WITH_A_NEW_CONNECTION: usize = 5;

#[derive(Debug, Default, Clone)]
struct Record {
    message: String,
    elapsed_us: u64,
    sockets: u64,
    processes: u64,
    /// CPU time of the whole process when the event was logged.
    cpu_us: u64,
}

impl Visit for Record {
    fn record_u64(&mut self, field: &Field, value: u64) {
        match field.name() {
            "elapsed_us" => self.elapsed_us = value,
            "sockets" => self.sockets = value,
            "processes" => self.processes = value,
            _ => {}
        }
    }

    fn record_debug(&mut self, field: &Field, value: &dyn std::fmt::Debug) {
        if field.name() == "message" {
            self.message = format!("{value:?}");
        }
    }
}

struct Capture(Arc<Mutex<Vec<Record>>>);

impl<S: tracing::Subscriber> Layer<S> for Capture {
    fn on_event(&self, event: &tracing::Event<'_>, _: Context<'_, S>) {
        let mut r = Record {
            cpu_us: process_cpu_us(),
            ..Record::default()
        };
        event.record(&mut r);
        if let Ok(mut v) = self.0.lock() {
            v.push(r);
        }
    }
}

/// User + system CPU of this process, in microseconds.
fn process_cpu_us() -> u64 {
    // SAFETY: all-zero is a valid `rusage`, filled in by the call.
    let mut ru: libc::rusage = unsafe { std::mem::zeroed() };
    // SAFETY: `ru` is valid for writes for the call.
    if unsafe { libc::getrusage(libc::RUSAGE_SELF, &mut ru) } != 0 {
        return 0;
    }
    let us = |t: libc::timeval| t.tv_sec as u64 * 1_000_000 + t.tv_usec as u64;
    us(ru.ru_utime) + us(ru.ru_stime)
}

fn connect(listener: &TcpListener, held: &mut Vec<TcpStream>) -> std::io::Result<()> {
    held.push(TcpStream::connect(listener.local_addr()?)?);
    held.push(listener.accept()?.0);
    Ok(())
}

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let connections: usize = std::env::args()
        .nth(1)
        .map(|a| a.parse())
        .transpose()?
        .unwrap_or(1000);
    let records = Arc::new(Mutex::new(Vec::new()));
    let subscriber = tracing_subscriber::registry().with(
        Capture(Arc::clone(&records)).with_filter(tracing_subscriber::filter::LevelFilter::DEBUG),
    );
    tracing::subscriber::set_global_default(subscriber)?;

    let listener = TcpListener::bind("127.0.0.1:0")?;
    let mut held = Vec::with_capacity(2 * connections);
    for _ in 0..connections {
        connect(&listener, &mut held)?;
    }

    let rt = tokio::runtime::Runtime::new()?;
    let counters = Counters::new();
    let (tx, rx) = pipeline::channel(pipeline::QUEUE_CAPACITY, Arc::clone(&counters));
    let drain = std::thread::spawn(move || rx.iter().count());
    let cancel = CancellationToken::new();
    let ctx = CollectorContext {
        origin: Origin::detect(),
        tx,
        counters: Arc::clone(&counters),
        coverage: Arc::new(Mutex::new(Coverage::default())),
        cancel: cancel.clone(),
    };
    // A fixed interval: adaptive scanning would stretch the steady scans.
    let cfg = NetworkMonitorConfig {
        max_scan_interval_ms: NetworkMonitorConfig::default().scan_interval_ms,
        source: edr_config::NetworkSource::Scan,
        ..NetworkMonitorConfig::default()
    };
    let interval = cfg.scan_interval_ms;
    let mut cpu_before = process_cpu_us();
    let task = rt.spawn(network::run(cfg, ctx));

    // Open the new connections half-way between scans.
    std::thread::sleep(Duration::from_millis(
        interval * (1 + STEADY_SCANS as u64) - interval / 2,
    ));
    for _ in 0..SCANS_WITH_A_NEW_CONNECTION {
        connect(&listener, &mut held)?;
        std::thread::sleep(Duration::from_millis(interval));
    }
    cancel.cancel();
    rt.block_on(task)?;
    drop(rt);
    let events = drain.join().map_err(|_| "drain thread panicked")?;

    let procs = std::fs::read_dir("/proc")?
        .flatten()
        .filter(|e| e.file_name().to_string_lossy().parse::<u32>().is_ok())
        .count();
    println!(
        "{connections} connections ({} sockets of ours), {procs} processes, {events} events",
        held.len() + 1
    );
    let records = records.lock().map_err(|_| "poisoned")?;
    let mut walk: Option<Record> = None;
    let mut scan = 0;
    for r in records.iter() {
        if r.message == "socket owners searched in /proc" {
            walk = Some(r.clone());
            continue;
        }
        if r.message != "network scan" {
            continue;
        }
        scan += 1;
        let w = walk.take();
        println!(
            "scan {scan:2}: {:6} us wall, {:6} us CPU, {} sockets{}",
            r.elapsed_us,
            r.cpu_us.saturating_sub(cpu_before),
            r.sockets,
            w.map(|w| format!(
                "; /proc search {} us over {} processes",
                w.elapsed_us, w.processes
            ))
            .unwrap_or_default()
        );
        cpu_before = r.cpu_us;
    }
    Ok(())
}
