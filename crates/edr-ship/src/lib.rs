//! Shipping: every committed batch published to a NATS JetStream stream.
//!
//! [`NatsSink`] is a [`Sink`]: it is told of each committed batch, reads
//! the file, and publishes its NDJSON lines as one message (or several, on
//! line boundaries, when the batch is larger than the server's
//! `max_payload`). Only a JetStream acknowledgement counts: a durable
//! cursor (`<data_dir>/ship.cursor`) moves over contiguous acknowledged
//! batches, and the sink holds retention at the first batch that is not
//! acknowledged. Every message carries a deterministic `Nats-Msg-Id`
//! (agent id, batch sequence, part), so whatever is resent after an outage
//! or a crash is dropped by the server's duplicate window.

use std::collections::hash_map::RandomState;
use std::collections::VecDeque;
use std::future::Future;
use std::hash::{BuildHasher, Hasher};
use std::io::{BufRead, Read, Write};
use std::path::{Path, PathBuf};
use std::pin::Pin;
use std::sync::atomic::Ordering::Relaxed;
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use async_nats::jetstream::{self, message::PublishMessage, stream};
use async_nats::HeaderMap;
use edr_config::{NatsConfig, ShipCompression};
use edr_store::sink::{committed_since, CommittedBatch, ShipState, Sink, SinkContext};
use tokio::time::Instant;

pub mod collect;

/// Batches published before waiting for their acknowledgements.
const MAX_IN_FLIGHT_BATCHES: usize = 32;
/// Messages awaiting an acknowledgement at most.
const MAX_IN_FLIGHT_MESSAGES: usize = 256;
/// How long one acknowledgement may take before the publish counts as
/// failed (and everything unacknowledged is sent again).
const ACK_TIMEOUT: Duration = Duration::from_secs(10);
/// Room left in `max_payload` for the headers.
const HEADER_ROOM: usize = 512;
const BACKOFF_FIRST: Duration = Duration::from_millis(250);
const BACKOFF_CAP: Duration = Duration::from_secs(60);

/// Header of event messages: how many parts the batch was cut into.
pub const HEADER_PARTS: &str = "Edr-Parts";
/// Header of event messages: the batch's start time (ms since the epoch),
/// the `<start>` of its file name.
pub const HEADER_BATCH_START: &str = "Edr-Batch-Start";

/// Why the sink could not be set up.
#[derive(Debug, thiserror::Error)]
pub enum ShipError {
    #[error("cannot read or write {}: {source}", path.display())]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("{} does not hold a batch sequence number: {text:?}", path.display())]
    BadCursor { path: PathBuf, text: String },
    #[error("cannot create the data dir: {0}")]
    DataDir(#[from] edr_store::StorageError),
}

fn io_err(path: &Path) -> impl FnOnce(std::io::Error) -> ShipError + '_ {
    move |source| ShipError::Io {
        path: path.to_path_buf(),
        source,
    }
}

/// Ships committed batches to NATS JetStream.
pub struct NatsSink {
    config: NatsConfig,
    host: String,
    agent_id: String,
    data_dir: PathBuf,
    /// The last acknowledged batch (0: none).
    cursor: u64,
    state: Arc<ShipState>,
}

impl NatsSink {
    /// Reads (or creates) the agent id and the cursor of `data_dir`.
    /// `host` names the machine in subjects and headers.
    pub fn new(config: NatsConfig, data_dir: &Path, host: &str) -> Result<NatsSink, ShipError> {
        edr_store::create_private_dir(data_dir)?;
        let agent_id = agent_id(data_dir)?;
        let cursor = read_cursor(&cursor_path(data_dir))?;
        Ok(NatsSink {
            config,
            host: sanitize_host(host),
            agent_id,
            data_dir: data_dir.to_path_buf(),
            cursor,
            state: Arc::new(ShipState::default()),
        })
    }

    /// The live state, for status displays.
    pub fn state(&self) -> Arc<ShipState> {
        Arc::clone(&self.state)
    }

    /// The agent id in every `Nats-Msg-Id`.
    pub fn agent_id(&self) -> &str {
        &self.agent_id
    }

    /// The host as it appears in subjects.
    pub fn host(&self) -> &str {
        &self.host
    }
}

/// Where the cursor of a data dir lives.
pub fn cursor_path(data_dir: &Path) -> PathBuf {
    data_dir.join("ship.cursor")
}

/// The last acknowledged batch recorded in `path` (0 without a file).
pub fn read_cursor(path: &Path) -> Result<u64, ShipError> {
    match std::fs::read_to_string(path) {
        Ok(text) => text.trim().parse().map_err(|_| ShipError::BadCursor {
            path: path.to_path_buf(),
            text,
        }),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(0),
        Err(e) => Err(io_err(path)(e)),
    }
}

/// Writes `text` to `path` so that a crash leaves the old or the new
/// content, never a torn one: temporary file, fsync, rename, fsync of the
/// directory.
fn write_atomically(path: &Path, text: &str) -> Result<(), ShipError> {
    use std::os::unix::fs::OpenOptionsExt;
    let tmp = path.with_extension("tmp");
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(0o600)
        .open(&tmp)
        .map_err(io_err(&tmp))?;
    f.write_all(text.as_bytes()).map_err(io_err(&tmp))?;
    f.sync_all().map_err(io_err(&tmp))?;
    std::fs::rename(&tmp, path).map_err(io_err(path))?;
    if let Some(dir) = path.parent() {
        std::fs::File::open(dir)
            .and_then(|d| d.sync_all())
            .map_err(io_err(dir))?;
    }
    Ok(())
}

/// A random id written once per data dir: message ids stay the same across
/// restarts (so resends are deduplicated) and differ between agents.
fn agent_id(data_dir: &Path) -> Result<String, ShipError> {
    let path = data_dir.join("agent.id");
    match std::fs::read_to_string(&path) {
        Ok(s) if !s.trim().is_empty() => return Ok(s.trim().to_string()),
        Ok(_) => {}
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
        Err(e) => return Err(io_err(&path)(e)),
    }
    let mut raw = [0u8; 12];
    std::fs::File::open("/dev/urandom")
        .and_then(|mut f| f.read_exact(&mut raw))
        .map_err(io_err(Path::new("/dev/urandom")))?;
    let id: String = raw.iter().map(|b| format!("{b:02x}")).collect();
    write_atomically(&path, &format!("{id}\n"))?;
    Ok(id)
}

/// The host as a subject token: `[A-Za-z0-9_-]`, anything else `_`.
pub fn sanitize_host(host: &str) -> String {
    let s: String = host
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || c == '_' || c == '-' {
                c
            } else {
                '_'
            }
        })
        .collect();
    if s.is_empty() {
        "unknown".to_string()
    } else {
        s
    }
}

fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
}

/// Exponential backoff with jitter, so a fleet does not reconnect in step.
struct Backoff {
    attempt: u32,
}

impl Backoff {
    fn next(&mut self) -> Duration {
        let base = BACKOFF_FIRST
            .saturating_mul(1u32 << self.attempt.min(16))
            .min(BACKOFF_CAP);
        self.attempt = self.attempt.saturating_add(1);
        // Between half and all of the base delay.
        let r = RandomState::new().build_hasher().finish() % 1000;
        base.mul_f64(0.5 + r as f64 / 2000.0)
    }

    fn reset(&mut self) {
        self.attempt = 0;
    }
}

/// One message to publish.
struct Outgoing {
    subject: String,
    headers: HeaderMap,
    payload: Vec<u8>,
}

/// A batch read and cut into messages.
struct Prepared {
    messages: Vec<Outgoing>,
    events: u64,
}

/// What reading a batch gave.
enum Loaded {
    Ready(Prepared),
    /// The file is gone (deleted before it was shipped) or unreadable: it
    /// can never ship, and is reported as a gap.
    Lost(String),
}

struct Names<'a> {
    prefix: &'a str,
    host: &'a str,
    agent_id: &'a str,
}

fn gzip(data: &[u8]) -> std::io::Result<Vec<u8>> {
    let mut enc = flate2::write::GzEncoder::new(
        Vec::with_capacity(data.len() / 4),
        flate2::Compression::fast(),
    );
    enc.write_all(data)?;
    enc.finish()
}

fn headers(names: &Names<'_>, id: &str, seq: u64, part: &str, events: usize) -> HeaderMap {
    let mut h = HeaderMap::new();
    h.insert(async_nats::header::NATS_MESSAGE_ID, id);
    h.insert("Edr-Host", names.host);
    h.insert("Edr-Batch-Seq", seq.to_string().as_str());
    h.insert("Edr-Part", part);
    h.insert("Edr-Events", events.to_string().as_str());
    h
}

/// Whether an NDJSON line is an alert (`event.kind == "alert"`).
fn is_alert(line: &[u8]) -> bool {
    // Most lines are not alerts: parse only those that could be.
    if !line.windows(7).any(|w| w == b"\"alert\"") {
        return false;
    }
    serde_json::from_slice::<serde_json::Value>(line)
        .ok()
        .is_some_and(|v| v["event"]["kind"] == "alert")
}

/// A message body and the number of lines in it.
type Part = (Vec<u8>, usize);

/// Cuts the lines into bodies of at most `budget` bytes (as sent, after
/// compression), on line boundaries. A single line that does not fit even
/// alone is left out and counted.
fn split_parts(lines: &[Vec<u8>], budget: usize, gz: bool) -> std::io::Result<(Vec<Part>, usize)> {
    let mut out = Vec::new();
    let mut too_big = 0;
    let mut stack: Vec<&[Vec<u8>]> = Vec::new();
    // Greedy by raw size first; gzip only shrinks NDJSON, but a group that
    // still does not fit is halved.
    let mut start = 0;
    let mut size = 0;
    for (i, l) in lines.iter().enumerate() {
        if size + l.len() > budget && i > start {
            stack.push(&lines[start..i]);
            start = i;
            size = 0;
        }
        size += l.len();
    }
    if start < lines.len() {
        stack.push(&lines[start..]);
    }
    stack.reverse();
    while let Some(group) = stack.pop() {
        let raw: Vec<u8> = group.concat();
        let body = if gz { gzip(&raw)? } else { raw };
        if body.len() <= budget {
            out.push((body, group.len()));
        } else if group.len() == 1 {
            too_big += 1;
        } else {
            let (a, b) = group.split_at(group.len() / 2);
            stack.push(b);
            stack.push(a);
        }
    }
    Ok((out, too_big))
}

/// Reads a batch and builds its messages (blocking: run off the runtime).
fn prepare(
    batch: &CommittedBatch,
    names: &Names<'_>,
    max_payload: usize,
    compression: ShipCompression,
) -> Loaded {
    let mut reader = match edr_store::open_batch_reader(&batch.path) {
        Ok(r) => r,
        Err(e) => return Loaded::Lost(e.to_string()),
    };
    let mut lines = Vec::new();
    loop {
        let mut line = Vec::new();
        match reader.read_until(b'\n', &mut line) {
            Ok(0) => break,
            Ok(_) => {
                if line.iter().all(u8::is_ascii_whitespace) {
                    continue;
                }
                if line.last() != Some(&b'\n') {
                    line.push(b'\n');
                }
                lines.push(line);
            }
            Err(e) => {
                return Loaded::Lost(format!("{}: {e}", batch.path.display()));
            }
        }
    }
    let gz = compression == ShipCompression::Gzip;
    let budget = max_payload.saturating_sub(HEADER_ROOM).max(64);
    let (parts, too_big) = match split_parts(&lines, budget, gz) {
        Ok(p) => p,
        Err(e) => return Loaded::Lost(format!("compressing {}: {e}", batch.path.display())),
    };
    if too_big > 0 {
        tracing::error!(
            seq = batch.seq,
            lines = too_big,
            max_payload,
            "events larger than the server's max_payload are not shipped"
        );
    }
    let events_subject = format!("{}.{}.events", names.prefix, names.host);
    let mut messages = Vec::with_capacity(parts.len());
    let count = parts.len().to_string();
    let started = batch.started.as_millis().to_string();
    for (i, (body, n)) in parts.into_iter().enumerate() {
        let part = i.to_string();
        let id = format!("{}-{}-{part}", names.agent_id, batch.seq);
        let mut h = headers(names, &id, batch.seq, &part, n);
        // What a consumer needs to rebuild the batch file as stored: when
        // it has every part, and the time in the file's name.
        h.insert(HEADER_PARTS, count.as_str());
        h.insert(HEADER_BATCH_START, started.as_str());
        if gz {
            h.insert("Content-Encoding", "gzip");
        }
        messages.push(Outgoing {
            subject: events_subject.clone(),
            headers: h,
            payload: body,
        });
    }
    let alerts_subject = format!("{}.{}.alerts", names.prefix, names.host);
    for (i, line) in lines.iter().filter(|l| is_alert(l)).enumerate() {
        if line.len() > budget {
            continue;
        }
        let part = format!("a{i}");
        let id = format!("{}-{}-{part}", names.agent_id, batch.seq);
        messages.push(Outgoing {
            subject: alerts_subject.clone(),
            headers: headers(names, &id, batch.seq, &part, 1),
            payload: line.clone(),
        });
    }
    Loaded::Ready(Prepared {
        messages,
        events: lines.len() as u64,
    })
}

/// A connection and its JetStream context.
struct Session {
    client: async_nats::Client,
    js: jetstream::Context,
}

async fn read_secret(path: &str) -> Result<String, String> {
    tokio::fs::read_to_string(path)
        .await
        .map(|s| s.trim().to_string())
        .map_err(|e| format!("cannot read {path}: {e}"))
}

async fn connect(config: &NatsConfig, state: &Arc<ShipState>) -> Result<Session, String> {
    let st = Arc::clone(state);
    let mut opts = async_nats::ConnectOptions::new()
        .name("edr-agent")
        .connection_timeout(Duration::from_secs(5))
        // The client reconnects by itself for as long as it lives.
        .max_reconnects(None)
        .event_callback(move |ev| {
            let st = Arc::clone(&st);
            async move {
                match ev {
                    async_nats::Event::Connected => st.connected.store(true, Relaxed),
                    async_nats::Event::Disconnected => {
                        st.connected.store(false, Relaxed);
                        st.set_error(Some("disconnected from the NATS server".to_string()));
                    }
                    // Closed by us, as the sink stops: not an error.
                    async_nats::Event::Closed => st.connected.store(false, Relaxed),
                    async_nats::Event::ServerError(e) => {
                        st.set_error(Some(format!("NATS server error: {e}")));
                    }
                    async_nats::Event::ClientError(e) => {
                        st.set_error(Some(format!("NATS client error: {e}")));
                    }
                    _ => {}
                }
            }
        });
    opts = with_auth(opts, config).await?;
    let urls = config.url.join(", ");
    let client = opts
        .connect(config.url.as_slice())
        .await
        .map_err(|e| format!("cannot connect to {urls}: {e}"))?;
    state.connected.store(true, Relaxed);
    let mut js = jetstream::new(client.clone());
    js.set_timeout(ACK_TIMEOUT);
    if config.create_stream {
        ensure_stream(&js, config).await?;
    }
    Ok(Session { client, js })
}

/// Adds the configured authentication and TLS to `opts`.
async fn with_auth(
    mut opts: async_nats::ConnectOptions,
    config: &NatsConfig,
) -> Result<async_nats::ConnectOptions, String> {
    if let Some(path) = &config.credentials_file {
        opts = opts
            .credentials_file(path)
            .await
            .map_err(|e| format!("cannot load credentials {path}: {e}"))?;
    }
    if let (Some(user), Some(pw)) = (&config.user, &config.password_file) {
        opts = opts.user_and_password(user.clone(), read_secret(pw).await?);
    }
    if let Some(path) = &config.token_file {
        opts = opts.token(read_secret(path).await?);
    }
    if let Some(ca) = &config.tls.ca_file {
        opts = opts.add_root_certificates(PathBuf::from(ca));
    }
    if let (Some(cert), Some(key)) = (&config.tls.cert_file, &config.tls.key_file) {
        opts = opts.add_client_certificate(PathBuf::from(cert), PathBuf::from(key));
    }
    if config.url.iter().any(|u| u.starts_with("tls://")) {
        opts = opts.require_tls(true);
    }
    Ok(opts)
}

/// Creates the stream if it is missing; warns if an existing one differs.
async fn ensure_stream(js: &jetstream::Context, config: &NatsConfig) -> Result<(), String> {
    let want = stream::Config {
        name: config.stream.clone(),
        subjects: vec![format!("{}.>", config.subject_prefix)],
        max_age: Duration::from_secs(u64::from(config.stream_max_age_days) * 86_400),
        max_bytes: (config.stream_max_gb * (1u64 << 30) as f64) as i64,
        duplicate_window: Duration::from_secs(config.duplicate_window_s),
        storage: stream::StorageType::File,
        ..Default::default()
    };
    let s = js.get_or_create_stream(want.clone()).await.map_err(|e| {
        let hint = match e.kind() {
            // The server reserves max_bytes when it creates the stream, and by
            // default has 75% of its disk's free space to give: a small
            // server or a full disk refuses the default 10 GiB.
            jetstream::context::CreateStreamErrorKind::JetStream(j)
                if j.error_code() == jetstream::ErrorCode::STORAGE_RESOURCES_EXCEEDED =>
            {
                format!(
                    " (the server has less JetStream storage than the {} GiB that \
                         shipping.nats.stream_max_gb asks for: lower it, or raise the \
                         server's jetstream max_file_store or free its disk)",
                    config.stream_max_gb
                )
            }
            _ => String::new(),
        };
        format!("cannot get or create stream {}: {e}{hint}", config.stream)
    })?;
    let have = &s.cached_info().config;
    if have.subjects != want.subjects
        || have.max_age != want.max_age
        || have.max_bytes != want.max_bytes
        || have.duplicate_window != want.duplicate_window
        || have.storage != want.storage
    {
        tracing::warn!(
            stream = %config.stream,
            subjects = ?have.subjects,
            max_age = ?have.max_age,
            max_bytes = have.max_bytes,
            duplicate_window = ?have.duplicate_window,
            "the stream exists with other settings than shipping.nats asks for; keeping it"
        );
    }
    Ok(())
}

/// The sink's working state.
struct Worker {
    sink: NatsSink,
    ctx: SinkContext,
    /// Known batches after the cursor, in order.
    pending: VecDeque<CommittedBatch>,
    /// The highest sequence known (queued or shipped).
    last_known: u64,
    channel_open: bool,
    deadline: Option<Instant>,
}

impl Worker {
    fn names(&self) -> Names<'_> {
        Names {
            prefix: &self.sink.config.subject_prefix,
            host: &self.sink.host,
            agent_id: &self.sink.agent_id,
        }
    }

    /// Adds batches from `from` on, as listed on disk.
    async fn catch_up(&mut self, from: u64) {
        let dir = self.ctx.data_dir.clone();
        match tokio::task::spawn_blocking(move || committed_since(&dir, from)).await {
            Ok(Ok(list)) => {
                for b in list {
                    self.enqueue_one(b);
                }
            }
            Ok(Err(e)) => tracing::warn!(error = %e, "cannot list batches to ship"),
            Err(e) => tracing::warn!(error = %e, "listing batches failed"),
        }
    }

    fn enqueue_one(&mut self, b: CommittedBatch) {
        // Numbers missing on disk after something was shipped: deleted
        // unshipped (the `max_unshipped_gb` cap). Before the first
        // shipment, older batches are simply from before shipping.
        if self.last_known > 0 && b.seq > self.last_known + 1 {
            let missing = b.seq - self.last_known - 1;
            self.sink.state.gaps.fetch_add(missing, Relaxed);
            tracing::warn!(
                from = self.last_known + 1,
                to = b.seq - 1,
                "batches deleted before they were shipped (a gap)"
            );
        }
        if b.seq > self.last_known {
            self.last_known = b.seq;
            self.pending.push_back(b);
        }
    }

    /// Takes a notification; one that skips numbers means notifications
    /// were dropped (the channel was full): the rest is read from disk.
    async fn told(&mut self, b: CommittedBatch) {
        if b.seq > self.last_known + 1 {
            self.catch_up(self.last_known + 1).await;
        }
        self.enqueue_one(b);
    }

    fn update_pending(&self) {
        let st = &self.sink.state;
        st.pending_batches.store(self.pending.len() as u64, Relaxed);
        st.pending_bytes
            .store(self.pending.iter().map(|b| b.bytes).sum(), Relaxed);
        st.oldest_pending_ms.store(
            self.pending.front().map_or(0, |b| b.started.as_millis()),
            Relaxed,
        );
    }

    /// Takes every notification that is waiting, without waiting.
    async fn drain_notifications(&mut self) {
        while self.channel_open {
            match self.ctx.batches.try_recv() {
                Ok(b) => self.told(b).await,
                Err(tokio::sync::mpsc::error::TryRecvError::Empty) => break,
                Err(tokio::sync::mpsc::error::TryRecvError::Disconnected) => {
                    self.channel_open = false;
                }
            }
        }
    }

    fn note_stop(&mut self) {
        if self.deadline.is_none() && self.ctx.stop.is_cancelled() {
            let limit = Duration::from_millis(self.sink.config.shutdown_timeout_ms);
            self.deadline = Some(Instant::now() + limit);
            tracing::info!(
                pending = self.pending.len(),
                ?limit,
                "engine stopping; shipping what is pending"
            );
        }
    }

    /// Sleeps `d`, or less if the deadline comes first (then false).
    async fn sleep_within_deadline(&mut self, d: Duration) -> bool {
        let until = Instant::now() + d;
        match self.deadline {
            Some(dl) if dl <= until => {
                tokio::time::sleep_until(dl).await;
                false
            }
            Some(_) => {
                tokio::time::sleep_until(until).await;
                true
            }
            None => {
                tokio::select! {
                    _ = tokio::time::sleep_until(until) => {}
                    _ = self.ctx.stop.cancelled() => {}
                }
                true
            }
        }
    }

    fn past_deadline(&self) -> bool {
        self.deadline.is_some_and(|d| Instant::now() >= d)
    }

    async fn run(mut self) {
        let from = self.sink.cursor + 1;
        self.last_known = self.sink.cursor;
        self.catch_up(from).await;
        let mut backoff = Backoff { attempt: 0 };
        let mut session: Option<Session> = None;
        let mut checked = false;
        loop {
            self.drain_notifications().await;
            self.note_stop();
            self.update_pending();
            if self.pending.is_empty() && !self.channel_open {
                break;
            }
            if self.past_deadline() {
                break;
            }
            // Connected also while idle, so the status says so (and the
            // cursor is checked against the stream at once); not anew
            // while stopping with nothing to ship.
            if session.is_none() && (!self.pending.is_empty() || self.deadline.is_none()) {
                let config = self.sink.config.clone();
                let state = Arc::clone(&self.sink.state);
                let attempt = connect(&config, &state);
                let result = match self.deadline {
                    Some(dl) => tokio::select! {
                        r = attempt => Some(r),
                        _ = tokio::time::sleep_until(dl) => None,
                    },
                    None => Some(attempt.await),
                };
                match result {
                    None => break,
                    Some(Ok(s)) => {
                        tracing::info!(
                            urls = ?self.sink.config.url,
                            max_payload = s.client.server_info().max_payload,
                            "connected to NATS"
                        );
                        if !checked {
                            checked = true;
                            if let Some(w) = check_cursor(
                                &s.js,
                                &self.names(),
                                &self.sink.config.stream,
                                self.sink.cursor,
                            )
                            .await
                            {
                                tracing::warn!("{w}");
                                self.sink.state.set_error(Some(w));
                            }
                        }
                        session = Some(s);
                    }
                    Some(Err(e)) => {
                        tracing::warn!(error = %e, "shipping cannot connect");
                        self.sink.state.connected.store(false, Relaxed);
                        self.sink.state.set_error(Some(e));
                        let d = backoff.next();
                        if !self.sleep_within_deadline(d).await {
                            break;
                        }
                        continue;
                    }
                }
            }
            if self.pending.is_empty() {
                // Nothing to ship: wait for a batch or for the stop.
                let deadline = self.deadline;
                tokio::select! {
                    b = self.ctx.batches.recv() => match b {
                        Some(b) => self.told(b).await,
                        None => self.channel_open = false,
                    },
                    _ = self.ctx.stop.cancelled(), if deadline.is_none() => {}
                    _ = sleep_until_opt(deadline) => break,
                }
                continue;
            }
            let Some(s) = &session else { continue };
            let s = Session {
                client: s.client.clone(),
                js: s.js.clone(),
            };
            let shipped = match self.deadline {
                Some(dl) => tokio::select! {
                    r = self.ship_window(&s) => Some(r),
                    _ = tokio::time::sleep_until(dl) => None,
                },
                None => Some(self.ship_window(&s).await),
            };
            match shipped {
                None => break,
                Some(Ok(())) => backoff.reset(),
                Some(Err(e)) => {
                    tracing::warn!(error = %e, "shipping failed; retrying");
                    self.sink.state.set_error(Some(e));
                    let d = backoff.next();
                    if !self.sleep_within_deadline(d).await {
                        break;
                    }
                }
            }
        }
        self.update_pending();
        if let Some(s) = session {
            // Let the client send what it buffered (acks are not awaited).
            let _ = tokio::time::timeout(Duration::from_secs(1), s.client.flush()).await;
        }
        self.sink.state.connected.store(false, Relaxed);
        tracing::info!(
            cursor = self.sink.cursor,
            pending = self.pending.len(),
            "shipping stopped"
        );
    }

    /// Publishes up to [`MAX_IN_FLIGHT_BATCHES`] pending batches and
    /// advances the cursor over those acknowledged. Any failure ends the
    /// window: what is not acknowledged is sent again later.
    async fn ship_window(&mut self, s: &Session) -> Result<(), String> {
        let max_payload = s.client.server_info().max_payload;
        if max_payload == 0 {
            return Err("not connected to the NATS server yet".to_string());
        }
        let batches: Vec<CommittedBatch> = self
            .pending
            .iter()
            .take(MAX_IN_FLIGHT_BATCHES)
            .cloned()
            .collect();
        // (batch index, last message of the batch, acknowledgement).
        let mut in_flight: VecDeque<(usize, bool, u64, jetstream::context::PublishAckFuture)> =
            VecDeque::new();
        let mut events = vec![0u64; batches.len()];
        let mut lost: Vec<Option<String>> = vec![None; batches.len()];
        for (i, b) in batches.iter().enumerate() {
            let names = self.names();
            let names = (
                names.prefix.to_string(),
                names.host.to_string(),
                names.agent_id.to_string(),
            );
            let batch = b.clone();
            let compression = self.sink.config.compression;
            let loaded = tokio::task::spawn_blocking(move || {
                let names = Names {
                    prefix: &names.0,
                    host: &names.1,
                    agent_id: &names.2,
                };
                prepare(&batch, &names, max_payload, compression)
            })
            .await
            .map_err(|e| format!("reading batch {}: {e}", b.seq))?;
            let prepared = match loaded {
                Loaded::Ready(p) => p,
                Loaded::Lost(why) => {
                    lost[i] = Some(why);
                    Prepared {
                        messages: Vec::new(),
                        events: 0,
                    }
                }
            };
            events[i] = prepared.events;
            if prepared.messages.is_empty() {
                // Nothing to send: done once everything before it is.
                while let Some((j, last, bytes, fut)) = in_flight.pop_front() {
                    self.acked(&batches, j, last, bytes, fut, &events, &lost)
                        .await?;
                }
                self.batch_done(&batches[i], 0, lost[i].as_deref()).await?;
                continue;
            }
            let n = prepared.messages.len();
            for (k, m) in prepared.messages.into_iter().enumerate() {
                while in_flight.len() >= MAX_IN_FLIGHT_MESSAGES {
                    if let Some((j, last, bytes, fut)) = in_flight.pop_front() {
                        self.acked(&batches, j, last, bytes, fut, &events, &lost)
                            .await?;
                    }
                }
                let bytes = m.payload.len() as u64;
                let fut =
                    s.js.send_publish(
                        m.subject,
                        PublishMessage::build()
                            .headers(m.headers)
                            .payload(m.payload.into()),
                    )
                    .await
                    .map_err(|e| publish_error(&e))?;
                in_flight.push_back((i, k + 1 == n, bytes, fut));
            }
        }
        while let Some((j, last, bytes, fut)) = in_flight.pop_front() {
            self.acked(&batches, j, last, bytes, fut, &events, &lost)
                .await?;
        }
        Ok(())
    }

    #[allow(clippy::too_many_arguments)]
    async fn acked(
        &mut self,
        batches: &[CommittedBatch],
        i: usize,
        last: bool,
        bytes: u64,
        fut: jetstream::context::PublishAckFuture,
        events: &[u64],
        lost: &[Option<String>],
    ) -> Result<(), String> {
        let ack = fut.await.map_err(|e| publish_error(&e))?;
        let st = &self.sink.state;
        if ack.duplicate {
            st.duplicates.fetch_add(1, Relaxed);
        }
        st.shipped_bytes.fetch_add(bytes, Relaxed);
        st.last_ack_ms.store(now_ms(), Relaxed);
        st.set_error(None);
        st.connected.store(true, Relaxed);
        if last {
            self.batch_done(&batches[i], events[i], lost[i].as_deref())
                .await?;
        }
        Ok(())
    }

    /// Every message of `b` is acknowledged (or it was lost): the cursor
    /// moves past it.
    async fn batch_done(
        &mut self,
        b: &CommittedBatch,
        events: u64,
        lost: Option<&str>,
    ) -> Result<(), String> {
        let path = cursor_path(&self.sink.data_dir);
        let seq = b.seq;
        tokio::task::spawn_blocking(move || write_atomically(&path, &seq.to_string()))
            .await
            .map_err(|e| format!("writing the cursor: {e}"))?
            .map_err(|e| e.to_string())?;
        self.sink.cursor = seq;
        if self.pending.front().map(|p| p.seq) == Some(seq) {
            self.pending.pop_front();
        }
        self.ctx.hold.keep_from(seq + 1);
        let st = &self.sink.state;
        match lost {
            Some(why) => {
                st.gaps.fetch_add(1, Relaxed);
                tracing::warn!(
                    seq,
                    reason = why,
                    "batch deleted or unreadable before it was shipped (a gap)"
                );
            }
            None => {
                st.shipped_batches.fetch_add(1, Relaxed);
                st.shipped_events.fetch_add(events, Relaxed);
            }
        }
        self.update_pending();
        Ok(())
    }
}

/// Compares the cursor with the newest message of this agent in the
/// stream: a stream that holds less than the cursor says was shipped has
/// lost data (deleted, purged, recreated). Returns the warning.
async fn check_cursor(
    js: &jetstream::Context,
    names: &Names<'_>,
    stream: &str,
    cursor: u64,
) -> Option<String> {
    if cursor == 0 {
        return None;
    }
    let subject = format!("{}.{}.events", names.prefix, names.host);
    let stream = js.get_stream(stream).await.ok()?;
    let newest = match stream.get_last_raw_message_by_subject(&subject).await {
        Ok(m) => m
            .headers
            .get(async_nats::header::NATS_MESSAGE_ID)
            .and_then(|id| {
                let rest = id
                    .as_str()
                    .strip_prefix(names.agent_id)?
                    .strip_prefix('-')?;
                rest.split('-').next()?.parse::<u64>().ok()
            }),
        Err(e) => {
            use jetstream::stream::LastRawMessageErrorKind as K;
            if e.kind() != K::NoMessageFound {
                return None;
            }
            Some(0)
        }
    };
    // The newest message is another agent's (same host name): no verdict.
    let newest = newest?;
    (newest < cursor).then(|| {
        format!(
            "the stream {} holds this agent's batches up to {newest}, but {cursor} were acknowledged: batches {}..={cursor} were lost by the server",
            stream.cached_info().config.name,
            newest + 1
        )
    })
}

async fn sleep_until_opt(deadline: Option<Instant>) {
    match deadline {
        Some(d) => tokio::time::sleep_until(d).await,
        None => std::future::pending().await,
    }
}

fn publish_error(e: &jetstream::context::PublishError) -> String {
    use jetstream::context::PublishErrorKind as K;
    match e.kind() {
        K::StreamNotFound => "no stream takes the subject (no responders)".to_string(),
        K::TimedOut => "timed out waiting for the server's acknowledgement".to_string(),
        // "publish failed: <the server's reason>".
        _ => e.to_string(),
    }
}

impl Sink for NatsSink {
    fn name(&self) -> &'static str {
        "nats"
    }

    fn resume_from(&self) -> u64 {
        self.cursor + 1
    }

    fn shipping_status(&self) -> Option<Arc<ShipState>> {
        Some(Arc::clone(&self.state))
    }

    fn run(self: Box<Self>, ctx: SinkContext) -> Pin<Box<dyn Future<Output = ()> + Send>> {
        Box::pin(async move {
            let worker = Worker {
                sink: *self,
                ctx,
                pending: VecDeque::new(),
                last_known: 0,
                channel_open: true,
                deadline: None,
            };
            worker.run().await;
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hosts_become_subject_tokens() {
        assert_eq!(sanitize_host("web-01.example.com"), "web-01_example_com");
        assert_eq!(sanitize_host("a b*>"), "a_b__");
        assert_eq!(sanitize_host(""), "unknown");
    }

    #[test]
    fn parts_fit_and_keep_every_line_in_order() {
        let lines: Vec<Vec<u8>> = (0..200)
            .map(|i| format!("{{\"n\":{i},\"pad\":\"{}\"}}\n", "x".repeat(i % 50)).into_bytes())
            .collect();
        for gz in [false, true] {
            let (parts, too_big) = split_parts(&lines, 700, gz).expect("split");
            assert_eq!(too_big, 0);
            assert!(parts.len() > 1);
            let mut joined = Vec::new();
            for (body, n) in &parts {
                assert!(body.len() <= 700);
                let raw = if gz {
                    let mut out = Vec::new();
                    flate2::read::GzDecoder::new(&body[..])
                        .read_to_end(&mut out)
                        .expect("gunzip");
                    out
                } else {
                    body.clone()
                };
                assert_eq!(raw.iter().filter(|b| **b == b'\n').count(), *n);
                joined.extend(raw);
            }
            assert_eq!(joined, lines.concat());
        }
    }

    #[test]
    fn a_batch_becomes_event_parts_and_one_message_per_alert() {
        let dir = tempfile::tempdir().expect("tempdir");
        let mut store = edr_store::Store::open(dir.path()).expect("store");
        let mut b = store
            .open_batch(
                edr_model::event::Timestamp::now(),
                edr_store::Codec::Gzip { level: 6 },
            )
            .expect("batch");
        let lines = [
            r#"{"event":{"kind":"event","action":"file-created"},"n":1}"#,
            r#"{"event":{"kind":"alert"},"rule":{"name":"x"},"n":2}"#,
            r#"{"event":{"kind":"event"},"note":"\"alert\" in text","n":3}"#,
        ];
        for l in lines {
            b.append(l.as_bytes()).expect("append");
        }
        let f = b.commit().expect("commit");
        let batch = CommittedBatch {
            seq: f.seq,
            path: f.path.clone(),
            events: Some(3),
            bytes: f.size,
            started: f.started,
        };
        let names = Names {
            prefix: "edr",
            host: "h1",
            agent_id: "abc",
        };
        let Loaded::Ready(p) = prepare(&batch, &names, 1 << 20, ShipCompression::None) else {
            panic!("batch not readable");
        };
        assert_eq!(p.events, 3);
        assert_eq!(p.messages.len(), 2);
        let ev = &p.messages[0];
        assert_eq!(ev.subject, "edr.h1.events");
        assert_eq!(ev.payload, format!("{}\n", lines.join("\n")).into_bytes());
        let id = format!("abc-{}-0", f.seq);
        assert_eq!(
            ev.headers.get("Nats-Msg-Id").map(|v| v.as_str()),
            Some(id.as_str())
        );
        assert_eq!(ev.headers.get("Edr-Events").map(|v| v.as_str()), Some("3"));
        let al = &p.messages[1];
        assert_eq!(al.subject, "edr.h1.alerts");
        assert_eq!(al.payload, format!("{}\n", lines[1]).into_bytes());
        let id = format!("abc-{}-a0", f.seq);
        assert_eq!(
            al.headers.get("Nats-Msg-Id").map(|v| v.as_str()),
            Some(id.as_str())
        );
    }

    #[test]
    fn the_agent_id_and_cursor_persist() {
        let dir = tempfile::tempdir().expect("tempdir");
        let a = agent_id(dir.path()).expect("id");
        assert_eq!(a, agent_id(dir.path()).expect("again"));
        assert_eq!(read_cursor(&cursor_path(dir.path())).expect("none"), 0);
        write_atomically(&cursor_path(dir.path()), "42").expect("write");
        assert_eq!(read_cursor(&cursor_path(dir.path())).expect("read"), 42);
    }

    #[test]
    fn backoff_grows_to_its_cap() {
        let mut b = Backoff { attempt: 0 };
        let first = b.next();
        assert!(first <= BACKOFF_FIRST && first >= BACKOFF_FIRST / 2);
        for _ in 0..30 {
            assert!(b.next() <= BACKOFF_CAP);
        }
        assert!(b.next() >= BACKOFF_CAP / 2);
    }
}
