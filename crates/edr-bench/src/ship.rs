//! Shipping to NATS JetStream, against a real `nats-server` started here:
//! the sink's throughput per CPU-second on batches already on disk, and,
//! with a real agent, the lag from an event's time to a consumer's receipt
//! and the agent's memory with shipping on and off.

use std::io::Read as _;
use std::net::{TcpListener, TcpStream};
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::Context as _;
use async_nats::jetstream::{self, consumer};
use edr_bench::workload::SyntheticEvents;
use edr_config::{Config, NatsConfig, ShipCompression};
use edr_model::event::{Origin, Timestamp};
use edr_store::sink::Sink as _;
use edr_store::{Codec, Store};
use tokio_util::sync::CancellationToken;

use crate::agent::{Agent, TimeReport};

/// A `nats-server` with JetStream on a free 127.0.0.1 port, killed on drop.
pub struct NatsServer {
    child: Child,
    pub pid: u32,
    pub url: String,
}

impl NatsServer {
    pub fn start(store: &Path) -> anyhow::Result<NatsServer> {
        let port = TcpListener::bind("127.0.0.1:0")?.local_addr()?.port();
        std::fs::create_dir_all(store)?;
        let child = Command::new("nats-server")
            .args(["-a", "127.0.0.1", "-p", &port.to_string(), "-js", "-sd"])
            .arg(store)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .context("cannot start nats-server (scripts/setup.sh installs it)")?;
        let deadline = Instant::now() + Duration::from_secs(15);
        while TcpStream::connect(("127.0.0.1", port)).is_err() {
            anyhow::ensure!(Instant::now() < deadline, "nats-server did not listen");
            std::thread::sleep(Duration::from_millis(20));
        }
        Ok(NatsServer {
            pid: child.id(),
            child,
            url: format!("nats://127.0.0.1:{port}"),
        })
    }
}

impl Drop for NatsServer {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// User + system CPU time of this process.
fn process_cpu() -> Duration {
    // SAFETY: all-zero is a valid rusage, filled in by the call.
    let mut ru: libc::rusage = unsafe { std::mem::zeroed() };
    // SAFETY: `ru` is valid for writes for the call.
    if unsafe { libc::getrusage(libc::RUSAGE_SELF, &mut ru) } != 0 {
        return Duration::ZERO;
    }
    let t = |tv: libc::timeval| Duration::new(tv.tv_sec as u64, tv.tv_usec as u32 * 1000);
    t(ru.ru_utime) + t(ru.ru_stime)
}

/// CPU time of another process, from `/proc/<pid>/stat`.
pub fn proc_cpu(pid: u32) -> Duration {
    let ticks = std::fs::read_to_string(format!("/proc/{pid}/stat"))
        .ok()
        .and_then(|s| {
            let rest = s.get(s.rfind(')')? + 2..)?.to_string();
            let f: Vec<&str> = rest.split_whitespace().collect();
            Some(f.get(11)?.parse::<u64>().ok()? + f.get(12)?.parse::<u64>().ok()?)
        })
        .unwrap_or(0);
    // SAFETY: sysconf has no memory effects.
    let hz = unsafe { libc::sysconf(libc::_SC_CLK_TCK) }.max(1) as u64;
    Duration::from_millis(ticks * 1000 / hz)
}

/// What one throughput run measured.
#[derive(Debug, Clone, Copy)]
pub struct ThroughputReport {
    pub events: u64,
    pub batches: u64,
    pub messages: u64,
    /// Bytes as sent (after compression).
    pub bytes: u64,
    pub wall: Duration,
    /// CPU of the shipping process (the sink and its blocking threads).
    pub cpu: Duration,
    /// CPU of nats-server meanwhile.
    pub server_cpu: Duration,
}

/// Writes `events` synthetic events as gzip-6 batches of `batch` into a
/// store, then ships them all with the real sink to a fresh server.
pub fn throughput(
    events: usize,
    batch: usize,
    compression: ShipCompression,
    work: &Path,
) -> anyhow::Result<ThroughputReport> {
    let data = work.join(format!("ship-data-{compression:?}"));
    let _ = std::fs::remove_dir_all(&data);
    let mut store = Store::open(&data)?;
    let pool: Vec<Vec<u8>> = SyntheticEvents::new(Origin::detect(), 42)
        .take(4096)
        .iter()
        .map(serde_json::to_vec)
        .collect::<Result<_, _>>()?;
    let mut written = 0;
    while written < events {
        let mut b = store.open_batch(Timestamp::now(), Codec::Gzip { level: 6 })?;
        for _ in 0..batch.min(events - written) {
            b.append(&pool[written % pool.len()])?;
            written += 1;
        }
        let f = b.commit()?;
        store.add(f);
    }
    let nats_store = work.join(format!("nats-{compression:?}"));
    // A fresh stream each run.
    let _ = std::fs::remove_dir_all(&nats_store);
    let server = NatsServer::start(&nats_store)?;
    let config = NatsConfig {
        enabled: true,
        url: vec![server.url.clone()],
        compression,
        ..NatsConfig::default()
    };
    let sink = edr_ship::NatsSink::new(config, &data, "bench-host")?;
    let state = sink.state();
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .enable_all()
        .build()?;
    let stop = CancellationToken::new();
    let (link, ctx) = edr_store::sink::link("nats", sink.resume_from(), &data, stop);
    // No more batches will come: the sink ships what is on disk and ends.
    drop(link);
    let (server_cpu0, cpu0, t0) = (proc_cpu(server.pid), process_cpu(), Instant::now());
    rt.block_on(Box::new(sink).run(ctx));
    let (wall, cpu, server_cpu) = (
        t0.elapsed(),
        process_cpu().saturating_sub(cpu0),
        proc_cpu(server.pid).saturating_sub(server_cpu0),
    );
    let s = state.snapshot();
    anyhow::ensure!(
        s.shipped_events == events as u64 && s.pending_batches == 0,
        "not everything shipped: {s:?}"
    );
    let messages = rt.block_on(async {
        let js = jetstream::new(async_nats::connect(&server.url).await?);
        let mut st = js.get_stream("EDR").await?;
        anyhow::Ok(st.info().await?.state.messages)
    })?;
    let _ = std::fs::remove_dir_all(&data);
    Ok(ThroughputReport {
        events: s.shipped_events,
        batches: s.shipped_batches,
        messages,
        bytes: s.shipped_bytes,
        wall,
        cpu,
        server_cpu,
    })
}

/// What one lag run measured.
#[derive(Debug, Default)]
pub struct LagReport {
    /// Events the consumer received that the load made (after warm-up).
    pub received: u64,
    pub rate: f64,
    /// Event time to receipt, ms: median, p99, max.
    pub lag_ms: Option<(u64, u64, u64)>,
    /// The agent's RSS sampled once a second during the load: median.
    pub rss_median_kb: u64,
    pub time: TimeReport,
}

fn percentile(sorted: &[u64], p: f64) -> u64 {
    if sorted.is_empty() {
        return 0;
    }
    let i = ((sorted.len() - 1) as f64 * p).round() as usize;
    sorted[i.min(sorted.len() - 1)]
}

fn rss_kb(pid: u32) -> Option<u64> {
    let s = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    let line = s.lines().find(|l| l.starts_with("VmRSS:"))?;
    line.split_whitespace().nth(1)?.parse().ok()
}

/// A real agent watching a directory where `rate` files a second are
/// written for `duration`; with `ship`, it ships to a fresh server and a
/// consumer here times every event from its `@timestamp` to receipt.
pub fn lag(
    rate: f64,
    duration: Duration,
    ship: bool,
    use_time: bool,
    work: &Path,
) -> anyhow::Result<LagReport> {
    let root = work.join(if ship { "lag-ship" } else { "lag-local" });
    let _ = std::fs::remove_dir_all(&root);
    let watched = root.join("watched");
    std::fs::create_dir_all(&watched)?;
    let server = NatsServer::start(&root.join("nats"))?;
    let mut c = Config::default();
    c.storage.local_storage.data_dir = Some(root.join("data").display().to_string());
    c.collectors.file_monitor.watch_paths = vec![watched.display().to_string()];
    c.collectors.file_monitor.calculate_hashes = false;
    // Only the files written here: a rate the bench controls.
    c.collectors.process_monitor.enabled = false;
    c.collectors.network_monitor.enabled = false;
    c.shipping.nats.enabled = ship;
    c.shipping.nats.url = vec![server.url.clone()];
    let mut agent = Agent::spawn(&c, &root, use_time, "warn")?;
    let data = agent.data_dir.clone();
    agent.wait_until(Duration::from_secs(30), Duration::from_millis(50), |_| {
        edr_engine::read_status(&data).filter(|s| s.running && !s.coverage.watched_paths.is_empty())
    })?;
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .enable_all()
        .build()?;
    let lags = Arc::new(Mutex::new(Vec::<u64>::new()));
    // Measured: events of [start + 2 s, start + duration]. The load goes
    // on for two collection intervals after that, so the batches holding
    // the measured events close as they do under a steady load (on size),
    // not at the end of the load.
    let measure_from = Timestamp::now().as_millis() + 2000;
    let measure_to = Timestamp::now().as_millis() + duration.as_millis() as u64;
    let settle = Duration::from_millis(c.agent.collection_interval_ms) * 2;
    let stop = CancellationToken::new();
    let consumer_task = ship.then(|| {
        let (url, lags, stop) = (server.url.clone(), Arc::clone(&lags), stop.clone());
        rt.spawn(async move { consume(&url, (measure_from, measure_to), lags, stop).await })
    });
    // The load: one new file per tick, at `rate` a second.
    let start = Instant::now();
    let mut rss = Vec::new();
    let mut next_rss = start;
    let mut i = 0u64;
    while start.elapsed() < duration + settle {
        let due = (start.elapsed().as_secs_f64() * rate) as u64;
        while i < due {
            std::fs::write(watched.join(format!("f-{i}.txt")), b"x")?;
            i += 1;
        }
        if Instant::now() >= next_rss {
            rss.extend(rss_kb(agent.pid));
            next_rss += Duration::from_secs(1);
        }
        std::thread::sleep(Duration::from_millis(1));
    }
    stop.cancel();
    if let Some(t) = consumer_task {
        rt.block_on(t)??;
    }
    let time = agent.stop()?;
    rss.sort_unstable();
    let mut l = lags
        .lock()
        .map_err(|_| anyhow::anyhow!("lag list poisoned"))?
        .clone();
    l.sort_unstable();
    let measured_s = duration.as_secs_f64() - 2.0;
    Ok(LagReport {
        received: l.len() as u64,
        rate: l.len() as f64 / measured_s.max(1e-9),
        lag_ms: (!l.is_empty()).then(|| {
            (
                percentile(&l, 0.5),
                percentile(&l, 0.99),
                *l.last().unwrap_or(&0),
            )
        }),
        rss_median_kb: percentile(&rss, 0.5),
        time,
    })
}

/// Reads the stream from its start and records, for every event with a
/// `@timestamp` in `window` (ms), its receipt time minus that.
async fn consume(
    url: &str,
    window: (u64, u64),
    lags: Arc<Mutex<Vec<u64>>>,
    stop: CancellationToken,
) -> anyhow::Result<()> {
    use futures_util::StreamExt as _;
    let js = jetstream::new(async_nats::connect(url).await?);
    // The agent creates the stream when it connects.
    let stream = loop {
        match js.get_stream("EDR").await {
            Ok(s) => break s,
            Err(_) if !stop.is_cancelled() => tokio::time::sleep(Duration::from_millis(50)).await,
            Err(e) => return Err(e.into()),
        }
    };
    let c = stream
        .create_consumer(consumer::pull::Config {
            ack_policy: consumer::AckPolicy::None,
            filter_subject: "edr.*.events".to_string(),
            ..Default::default()
        })
        .await?;
    let mut messages = c.messages().await?;
    loop {
        let m = tokio::select! {
            m = messages.next() => m,
            _ = stop.cancelled() => break,
        };
        let Some(m) = m else { break };
        let m = m.map_err(|e| anyhow::anyhow!("{e}"))?;
        let now = Timestamp::now().as_millis();
        let gz = m
            .headers
            .as_ref()
            .and_then(|h| h.get("Content-Encoding"))
            .map(|v| v.as_str() == "gzip")
            == Some(true);
        let body = if gz {
            let mut raw = Vec::new();
            flate2::read::GzDecoder::new(&m.payload[..]).read_to_end(&mut raw)?;
            raw
        } else {
            m.payload.to_vec()
        };
        let mut got = Vec::new();
        for line in body.split(|b| *b == b'\n').filter(|l| !l.is_empty()) {
            let v: serde_json::Value = serde_json::from_slice(line)?;
            let Some(ts) = v["@timestamp"].as_str().and_then(Timestamp::parse) else {
                continue;
            };
            if (window.0..=window.1).contains(&ts.as_millis()) {
                got.push(now.saturating_sub(ts.as_millis()));
            }
        }
        lags.lock()
            .map_err(|_| anyhow::anyhow!("lag list poisoned"))?
            .extend(got);
    }
    Ok(())
}

/// Shipped figures for the table.
pub fn shipped(r: &ThroughputReport) -> (f64, f64) {
    (
        r.events as f64 / r.wall.as_secs_f64().max(1e-9),
        r.events as f64 / r.cpu.as_secs_f64().max(1e-9),
    )
}
