//! The central side: a durable JetStream pull consumer that writes every
//! host's shipped batches back into batch files (`edr-agent collect`).
//!
//! `<data_dir>/hosts/<host>/` is a data dir as the agent keeps it
//! (`events/YYYY-MM-DD/<start>-<seq>.json.gz`, written by `edr-store`), so
//! `edr-agent events|stats|alerts --data-dir <data_dir>/hosts/<host>` read
//! it as they read an agent's own. Each central file carries the agent's
//! own start time and sequence number: the file is the same batch, and the
//! number is what makes a redelivery harmless. A message is acknowledged
//! only once the batch file it belongs to is committed (fsynced, renamed);
//! a message whose batch is already on disk (redelivered after a crash of
//! the collector between commit and acknowledgement) is acknowledged
//! without writing anything.
//!
//! A batch split into parts is written when its last part arrives; parts
//! are held, unacknowledged, until then (a crash loses only the holding:
//! the server delivers them again).
//!
//! One agent id per host dir (`source.id`): a host whose agent was
//! reinstalled (a new id, numbers from 1 again) gets
//! `hosts/<host>.<first 8 of its id>`, so its batches never collide with
//! the old ones.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::fs::File;
use std::io::Read;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::sync::Arc;
use std::time::Duration;

use async_nats::jetstream::{self, consumer, message::Acker, AckKind};
use edr_config::NatsConfig;
use edr_model::event::Timestamp;
use edr_store::{Codec, StorageError, Store};
use tokio_util::sync::CancellationToken;

use crate::{ensure_stream, sanitize_host, with_auth, write_atomically, Backoff};
use crate::{HEADER_BATCH_START, HEADER_PARTS};

/// Subdirectory of the central data dir holding one data dir per host.
pub const HOSTS_DIR: &str = "hosts";
/// File in a host dir naming the agent whose batches it holds.
pub const SOURCE_ID_FILE: &str = "source.id";
/// Messages the server hands out before any is acknowledged. Parts of a
/// split batch wait for their siblings unacknowledged, so this must be
/// well above the parts of the batches in flight at once.
const MAX_ACK_PENDING: i64 = 10_000;
/// How long the server waits for an acknowledgement before it delivers a
/// message again.
const ACK_WAIT: Duration = Duration::from_secs(30);
/// Bytes of parts held for incomplete batches at most; beyond it the
/// oldest incomplete batch is let go (unacknowledged: delivered again).
const MAX_HELD_BYTES: usize = 256 << 20;
/// A batch that could not be written is delivered again after this.
const RETRY_WRITE_AFTER: Duration = Duration::from_secs(5);
/// Messages asked for per pull request.
const PULL_BATCH: usize = 256;

/// Why the collector cannot start.
#[derive(Debug, thiserror::Error)]
pub enum CollectError {
    #[error("cannot use the data dir: {0}")]
    Storage(#[from] StorageError),
    #[error("cannot lock {}: {source}", path.display())]
    Lock {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("another collector runs on {}", path.display())]
    AlreadyRunning { path: PathBuf },
}

/// What `edr-agent collect` is told.
#[derive(Debug, Clone)]
pub struct CollectOptions {
    /// Servers, stream, subject prefix, authentication and TLS (the same
    /// settings an agent ships with); `create_stream` creates the stream
    /// if the collector starts before any agent.
    pub nats: NatsConfig,
    /// The durable consumer's name: its position in the stream survives
    /// restarts of the collector and of the server.
    pub durable: String,
    /// The central data dir (`<data_dir>/hosts/<host>/...`).
    pub data_dir: PathBuf,
    /// How central batch files are encoded.
    pub codec: Codec,
}

/// The collector's counters.
#[derive(Debug, Default)]
pub struct CollectStats {
    /// Batch files written.
    pub batches: AtomicU64,
    pub events: AtomicU64,
    /// Messages whose batch was already on disk (acknowledged, nothing
    /// written).
    pub duplicates: AtomicU64,
    /// Messages that are not a batch part of ours (missing headers, a body
    /// that does not decompress): terminated, so never delivered again.
    pub rejected: AtomicU64,
    /// Batch writes that failed (left to be delivered again).
    pub write_failures: AtomicU64,
}

/// A durable pull consumer writing batch files per host.
pub struct Collector {
    opts: CollectOptions,
    stats: Arc<CollectStats>,
    /// Held for the collector's life: two collectors on one dir would race
    /// on the same batches.
    _lock: File,
}

impl Collector {
    /// Creates the central dir and takes its lock (blocking: call before
    /// entering the runtime).
    pub fn new(opts: CollectOptions) -> Result<Collector, CollectError> {
        edr_store::create_private_dir(&opts.data_dir.join(HOSTS_DIR))?;
        let path = opts.data_dir.join("collect.lock");
        let lock = File::create(&path).map_err(|source| CollectError::Lock {
            path: path.clone(),
            source,
        })?;
        match lock.try_lock() {
            Ok(()) => {}
            Err(std::fs::TryLockError::WouldBlock) => {
                return Err(CollectError::AlreadyRunning {
                    path: opts.data_dir.clone(),
                })
            }
            Err(std::fs::TryLockError::Error(source)) => {
                return Err(CollectError::Lock { path, source })
            }
        }
        Ok(Collector {
            opts,
            stats: Arc::new(CollectStats::default()),
            _lock: lock,
        })
    }

    pub fn stats(&self) -> Arc<CollectStats> {
        Arc::clone(&self.stats)
    }

    /// Consumes until `stop` is cancelled; reconnects (with backoff) for
    /// as long as it runs.
    pub async fn run(self, stop: CancellationToken) {
        let mut central = Some(Central::new(&self.opts.data_dir, self.opts.codec));
        let mut backoff = Backoff { attempt: 0 };
        while !stop.is_cancelled() {
            let (client, consumer) = match self.subscribe().await {
                Ok(s) => s,
                Err(e) => {
                    tracing::warn!(error = %e, "collect cannot subscribe; retrying");
                    let d = backoff.next();
                    tokio::select! {
                        _ = tokio::time::sleep(d) => {}
                        _ = stop.cancelled() => {}
                    }
                    continue;
                }
            };
            tracing::info!(
                stream = %self.opts.nats.stream,
                durable = %self.opts.durable,
                "collecting"
            );
            loop {
                let messages = consumer
                    .stream()
                    .max_messages_per_batch(PULL_BATCH)
                    .heartbeat(Duration::from_secs(5))
                    .expires(Duration::from_secs(30))
                    .messages()
                    .await;
                let mut messages = match messages {
                    Ok(m) => m,
                    Err(e) => {
                        tracing::warn!(error = %e, "cannot pull from the consumer");
                        break;
                    }
                };
                let failed = loop {
                    use futures_util::StreamExt as _;
                    let next = tokio::select! {
                        m = messages.next() => m,
                        _ = stop.cancelled() => break false,
                    };
                    match next {
                        Some(Ok(m)) => {
                            backoff.reset();
                            central = Some(self.handle(central.take(), m).await);
                        }
                        Some(Err(e)) => {
                            tracing::warn!(error = %e, "pulling messages failed");
                            break true;
                        }
                        None => break true,
                    }
                };
                if !failed {
                    break;
                }
                let d = backoff.next();
                tokio::select! {
                    _ = tokio::time::sleep(d) => {}
                    _ = stop.cancelled() => break,
                }
            }
            // The acknowledgements sent last must leave before we go.
            let _ = tokio::time::timeout(Duration::from_secs(2), client.flush()).await;
        }
        let s = &self.stats;
        tracing::info!(
            batches = s.batches.load(Relaxed),
            events = s.events.load(Relaxed),
            duplicates = s.duplicates.load(Relaxed),
            rejected = s.rejected.load(Relaxed),
            "collect stopped"
        );
    }

    async fn subscribe(
        &self,
    ) -> Result<
        (
            async_nats::Client,
            consumer::Consumer<consumer::pull::Config>,
        ),
        String,
    > {
        let n = &self.opts.nats;
        let opts = async_nats::ConnectOptions::new()
            .name("edr-agent collect")
            .connection_timeout(Duration::from_secs(5))
            .max_reconnects(None)
            .event_callback(|ev| async move {
                match ev {
                    async_nats::Event::Disconnected => {
                        tracing::warn!("disconnected from the NATS server")
                    }
                    async_nats::Event::Connected => tracing::info!("connected to NATS"),
                    async_nats::Event::ServerError(e) => tracing::warn!("NATS server error: {e}"),
                    _ => {}
                }
            });
        let opts = with_auth(opts, n).await?;
        let urls = n.url.join(", ");
        let client = opts
            .connect(n.url.as_slice())
            .await
            .map_err(|e| format!("cannot connect to {urls}: {e}"))?;
        let js = jetstream::new(client.clone());
        if n.create_stream {
            ensure_stream(&js, n).await?;
        }
        let stream = js
            .get_stream(&n.stream)
            .await
            .map_err(|e| format!("cannot find stream {}: {e}", n.stream))?;
        let config = consumer::pull::Config {
            durable_name: Some(self.opts.durable.clone()),
            description: Some("edr-agent collect: batch files per host".to_string()),
            ack_policy: consumer::AckPolicy::Explicit,
            ack_wait: ACK_WAIT,
            max_ack_pending: MAX_ACK_PENDING,
            deliver_policy: consumer::DeliverPolicy::All,
            filter_subject: format!("{}.*.events", n.subject_prefix),
            ..Default::default()
        };
        let consumer = stream
            .get_or_create_consumer(&self.opts.durable, config)
            .await
            .map_err(|e| format!("cannot create consumer {}: {e}", self.opts.durable))?;
        Ok((client, consumer))
    }

    /// Takes one message: files it (off the runtime), then acknowledges
    /// what is durable.
    async fn handle(&self, central: Option<Central>, m: jetstream::Message) -> Central {
        let (msg, acker) = m.split();
        let subject = msg.subject.to_string();
        let central = central.unwrap_or_else(|| Central::new(&self.opts.data_dir, self.opts.codec));
        let stats = Arc::clone(&self.stats);
        // Decompressing and writing both stay off the runtime threads.
        let joined = tokio::task::spawn_blocking(move || {
            let mut central = central;
            let outcome = match Part::parse(&msg) {
                Ok(p) => central.take(p, acker),
                Err(why) => Outcome::Rejected(why, acker),
            };
            (central, outcome)
        })
        .await;
        let (central, outcome) = match joined {
            Ok(r) => r,
            Err(e) => {
                // The state went with the panicked task; what it held is
                // delivered again.
                tracing::error!(error = %e, "filing a message failed");
                return Central::new(&self.opts.data_dir, self.opts.codec);
            }
        };
        match outcome {
            Outcome::Held => {}
            Outcome::Duplicate(a) => {
                stats.duplicates.fetch_add(1, Relaxed);
                ack(&a, AckKind::Ack).await;
            }
            Outcome::Written { ackers, events } => {
                stats.batches.fetch_add(1, Relaxed);
                stats.events.fetch_add(events, Relaxed);
                for a in &ackers {
                    ack(a, AckKind::Ack).await;
                }
            }
            Outcome::Rejected(why, a) => {
                stats.rejected.fetch_add(1, Relaxed);
                tracing::warn!(%subject, reason = %why, "not a batch part; terminated");
                ack(&a, AckKind::Term).await;
            }
            Outcome::WriteFailed(why, ackers) => {
                stats.write_failures.fetch_add(1, Relaxed);
                tracing::error!(error = %why, "cannot write a central batch; it is delivered again");
                for a in &ackers {
                    ack(a, AckKind::Nak(Some(RETRY_WRITE_AFTER))).await;
                }
            }
        }
        central
    }
}

async fn ack(a: &Acker, kind: AckKind) {
    // A lost acknowledgement means a redelivery, which finds the batch on
    // disk: harmless.
    if let Err(e) = a.ack_with(kind).await {
        tracing::debug!(error = %e, "acknowledgement not sent");
    }
}

/// One event message, parsed.
struct Part {
    host: String,
    agent: String,
    seq: u64,
    part: usize,
    parts: usize,
    started: Timestamp,
    /// NDJSON, decompressed.
    body: Vec<u8>,
}

impl Part {
    fn parse(m: &async_nats::Message) -> Result<Part, String> {
        let h = m.headers.as_ref().ok_or("no headers")?;
        let get = |name: &str| -> Result<&str, String> {
            h.get(name)
                .map(|v| v.as_str())
                .ok_or_else(|| format!("no {name} header"))
        };
        let num = |name: &str| -> Result<u64, String> {
            get(name)?
                .parse()
                .map_err(|_| format!("{name} is not a number"))
        };
        let id = get("Nats-Msg-Id")?;
        // `<agent id>-<batch seq>-<part>`.
        let agent = id.split('-').next().unwrap_or_default();
        if agent.is_empty() || !agent.bytes().all(|b| b.is_ascii_alphanumeric()) {
            return Err(format!("Nats-Msg-Id {id:?} does not name an agent"));
        }
        let seq = num("Edr-Batch-Seq")?;
        let part = usize::try_from(num("Edr-Part")?).map_err(|e| e.to_string())?;
        let parts = usize::try_from(num(HEADER_PARTS)?).map_err(|e| e.to_string())?;
        if seq == 0 || part >= parts {
            return Err(format!("part {part} of {parts} of batch {seq}"));
        }
        let started = Timestamp(num(HEADER_BATCH_START)?);
        let gz = h.get("Content-Encoding").map(|v| v.as_str()) == Some("gzip");
        let body = if gz {
            let mut raw = Vec::with_capacity(m.payload.len() * 8);
            flate2::read::GzDecoder::new(&m.payload[..])
                .read_to_end(&mut raw)
                .map_err(|e| format!("the gzip body does not decompress: {e}"))?;
            raw
        } else {
            m.payload.to_vec()
        };
        Ok(Part {
            // Untrusted: it becomes a directory name.
            host: sanitize_host(get("Edr-Host")?),
            agent: agent.to_string(),
            seq,
            part,
            parts,
            started,
            body,
        })
    }
}

/// What filing a message came to.
enum Outcome {
    /// A part of a batch still missing others.
    Held,
    /// The batch is on disk already.
    Duplicate(Acker),
    /// The batch was committed: every message of it may be acknowledged.
    Written {
        ackers: Vec<Acker>,
        events: u64,
    },
    Rejected(String, Acker),
    WriteFailed(String, Vec<Acker>),
}

/// A host dir and the batches in it.
struct HostDir {
    store: Store,
    seqs: HashSet<u64>,
}

/// Parts of one batch received so far.
struct Incomplete {
    started: Timestamp,
    bodies: BTreeMap<usize, Vec<u8>>,
    ackers: Vec<Acker>,
    bytes: usize,
    /// Arrival order, to let the oldest go first.
    order: u64,
}

/// (host, agent id, batch seq, parts).
type BatchKey = (String, String, u64, usize);

/// The central data dir's state (used on blocking threads only).
struct Central {
    hosts_dir: PathBuf,
    codec: Codec,
    /// By (host, agent id).
    dirs: HashMap<(String, String), HostDir>,
    incomplete: HashMap<BatchKey, Incomplete>,
    held_bytes: usize,
    arrivals: u64,
}

impl Central {
    fn new(data_dir: &Path, codec: Codec) -> Central {
        Central {
            hosts_dir: data_dir.join(HOSTS_DIR),
            codec,
            dirs: HashMap::new(),
            incomplete: HashMap::new(),
            held_bytes: 0,
            arrivals: 0,
        }
    }

    /// The dir of `agent`'s batches from `host`: `hosts/<host>`, or
    /// `hosts/<host>.<id prefix>` when `hosts/<host>` holds another
    /// agent's.
    fn dir(&mut self, host: &str, agent: &str) -> Result<&mut HostDir, String> {
        let key = (host.to_string(), agent.to_string());
        if !self.dirs.contains_key(&key) {
            let short: String = agent.chars().take(8).collect();
            let candidates = [
                self.hosts_dir.join(host),
                self.hosts_dir.join(format!("{host}.{short}")),
                self.hosts_dir.join(format!("{host}.{agent}")),
            ];
            let mut chosen = None;
            for c in &candidates {
                match claim(c, agent) {
                    Ok(true) => {
                        chosen = Some(c.clone());
                        break;
                    }
                    Ok(false) => {}
                    Err(e) => return Err(e),
                }
            }
            let path = chosen.ok_or_else(|| format!("no host dir free for {host} ({agent})"))?;
            if path != candidates[0] {
                tracing::warn!(
                    host,
                    agent,
                    dir = %path.display(),
                    "a second agent id for this host (reinstalled?): its batches go to their own dir"
                );
            }
            let store = Store::open(&path).map_err(|e| e.to_string())?;
            let seqs = store.files().map(|f| f.seq).collect();
            self.dirs.insert(key.clone(), HostDir { store, seqs });
        }
        self.dirs
            .get_mut(&key)
            .ok_or_else(|| "host dir vanished".to_string())
    }

    fn take(&mut self, p: Part, acker: Acker) -> Outcome {
        let dir = match self.dir(&p.host, &p.agent) {
            Ok(d) => d,
            Err(e) => return Outcome::WriteFailed(e, vec![acker]),
        };
        if dir.seqs.contains(&p.seq) {
            return Outcome::Duplicate(acker);
        }
        let key = (p.host.clone(), p.agent.clone(), p.seq, p.parts);
        self.arrivals += 1;
        let order = self.arrivals;
        let inc = self.incomplete.entry(key.clone()).or_insert(Incomplete {
            started: p.started,
            bodies: BTreeMap::new(),
            ackers: Vec::new(),
            bytes: 0,
            order,
        });
        let len = p.body.len();
        if let Some(old) = inc.bodies.insert(p.part, p.body) {
            // Delivered again while held: the same part.
            inc.bytes -= old.len();
            self.held_bytes -= old.len();
        }
        inc.bytes += len;
        self.held_bytes += len;
        inc.ackers.push(acker);
        if inc.bodies.len() < p.parts {
            self.let_go_beyond_cap();
            return Outcome::Held;
        }
        let Some(inc) = self.incomplete.remove(&key) else {
            return Outcome::Held;
        };
        self.held_bytes -= inc.bytes;
        let codec = self.codec;
        let dir = match self.dir(&p.host, &p.agent) {
            Ok(d) => d,
            Err(e) => return Outcome::WriteFailed(e, inc.ackers),
        };
        match write_batch(&mut dir.store, p.seq, inc.started, codec, &inc.bodies) {
            Ok(events) => {
                dir.seqs.insert(p.seq);
                Outcome::Written {
                    ackers: inc.ackers,
                    events,
                }
            }
            Err(e) => Outcome::WriteFailed(e.to_string(), inc.ackers),
        }
    }

    /// Lets the oldest incomplete batches go (unacknowledged: the server
    /// delivers them again) while more than [`MAX_HELD_BYTES`] are held.
    fn let_go_beyond_cap(&mut self) {
        while self.held_bytes > MAX_HELD_BYTES {
            let Some(key) = self
                .incomplete
                .iter()
                .min_by_key(|(_, v)| v.order)
                .map(|(k, _)| k.clone())
            else {
                break;
            };
            if let Some(inc) = self.incomplete.remove(&key) {
                self.held_bytes -= inc.bytes;
                tracing::warn!(
                    host = %key.0,
                    seq = key.2,
                    "too many parts held for incomplete batches; the oldest is left to be delivered again"
                );
            }
        }
    }
}

/// Whether `dir` is (or now becomes) the dir of `agent`.
fn claim(dir: &Path, agent: &str) -> Result<bool, String> {
    let id_file = dir.join(SOURCE_ID_FILE);
    match std::fs::read_to_string(&id_file) {
        Ok(s) => Ok(s.trim() == agent),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            edr_store::create_private_dir(dir).map_err(|e| e.to_string())?;
            write_atomically(&id_file, &format!("{agent}\n")).map_err(|e| e.to_string())?;
            Ok(true)
        }
        Err(e) => Err(format!("cannot read {}: {e}", id_file.display())),
    }
}

/// Writes the parts, in order, as batch `seq` (durable when it returns).
fn write_batch(
    store: &mut Store,
    seq: u64,
    started: Timestamp,
    codec: Codec,
    bodies: &BTreeMap<usize, Vec<u8>>,
) -> Result<u64, StorageError> {
    let mut batch = store.open_batch_numbered(started, seq, codec)?;
    for body in bodies.values() {
        for line in body.split(|b| *b == b'\n').filter(|l| !l.is_empty()) {
            if let Err(e) = batch.append(line) {
                batch.abandon();
                return Err(e);
            }
        }
    }
    let events = u64::from(batch.events);
    let file = batch.commit()?;
    store.add(file);
    Ok(events)
}
