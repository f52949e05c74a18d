//! The server: a Unix socket made safely (as root mode 0660, group
//! `edr-agent`; run by a user, mode 0600 for that user alone; a stale
//! socket replaced, a live one left alone), one task per
//! connection, the peer authorized once per connection by its kernel
//! credentials, and every path a thin call into the [`EngineHandle`].

use std::collections::VecDeque;
use std::convert::Infallible;
use std::fs::{File, OpenOptions};
use std::os::unix::fs::{DirBuilderExt, FileTypeExt, MetadataExt, OpenOptionsExt, PermissionsExt};
use std::os::unix::net::UnixListener as StdUnixListener;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use axum::body::{Body, Bytes};
use axum::extract::rejection::{BytesRejection, QueryRejection};
use axum::extract::{DefaultBodyLimit, Query, Request, State};
use axum::http::{header, StatusCode};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Extension, Json, Router};
use hyper_util::rt::{TokioIo, TokioTimer};
use serde::Deserialize;
use tokio::sync::{OwnedSemaphorePermit, Semaphore};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use edr_config::api::API_GROUP;
use edr_config::{Config, ConfigError, FieldError, Layer};
use edr_engine::alerts::ALERT_RING;
use edr_engine::EngineHandle;
use edr_model::event::{EventType, Timestamp};

use crate::peer::{self, Access, Peer};
use crate::wire::{
    AlertRow, Alerts, ConfigApplied, ErrorBody, EventRow, Events, FieldRefusal, Hello, History,
    PauseState, PeerInfo, StoredFileStats, StreamItem,
};
use crate::PROTOCOL_VERSION;

/// Connections served at once; more wait in the kernel's backlog.
pub const MAX_CONNECTIONS: usize = 32;
/// Live streams at once (each holds a connection).
pub const MAX_STREAMS: usize = 8;
/// Largest request body (a config change is a few KB).
pub const MAX_BODY: usize = 64 * 1024;
/// Largest request head (line and headers).
const MAX_HEAD: usize = 16 * 1024;
/// Time to send a request's head, on a new or kept-alive connection.
pub const HEADER_TIMEOUT: Duration = Duration::from_secs(10);
/// Time to answer one request (a stream's body excepted).
pub const REQUEST_TIMEOUT: Duration = Duration::from_secs(10);
/// Requests a second over all connections (a burst of twice that).
pub const RATE_PER_S: f64 = 100.0;
/// Recent events the engine keeps for `GET /v1/events`.
pub const RECENT_EVENTS: usize = 1000;
/// Longest `grep=`.
const MAX_GREP: usize = 256;
/// How long open connections get to finish at shutdown.
const DRAIN: Duration = Duration::from_secs(2);
/// Reads of the data dir (`/v1/stored/*`) at once: each holds a blocking
/// thread decompressing files for as long as its client reads.
pub const MAX_STORE_READS: usize = 2;
/// Longest `grep=` of `/v1/stored/events` (the CLI's `--grep`).
const MAX_STORED_GREP: usize = 4096;
/// Bytes of NDJSON gathered before a chunk is sent.
const CHUNK: usize = 64 * 1024;

#[derive(Debug, thiserror::Error)]
pub enum ServeError {
    #[error("another agent serves the API on {} (it answered a connection)", path.display())]
    InUse { path: PathBuf },
    #[error("{} exists and is not a socket; refusing to replace it", path.display())]
    NotASocket { path: PathBuf },
    #[error("cannot {what} {}: {source}", path.display())]
    Io {
        what: &'static str,
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
}

fn io<'a>(what: &'static str, path: &'a Path) -> impl FnOnce(std::io::Error) -> ServeError + 'a {
    move |source| ServeError::Io {
        what,
        path: path.to_path_buf(),
        source,
    }
}

/// A bound socket, before serving. Made with blocking calls (call it
/// before the runtime starts, or on a blocking thread); dropping it
/// removes the socket it made.
#[derive(Debug)]
pub struct BoundSocket {
    listener: Option<StdUnixListener>,
    path: PathBuf,
    /// (dev, inode) of our socket: we only ever remove that one.
    id: (u64, u64),
    /// Held for the server's life: two agents starting at once cannot
    /// both decide a socket is stale.
    _lock: File,
    /// The group that owns the socket, if it exists (root's socket only).
    pub group: Option<u32>,
    /// Who besides root may use it.
    pub access: Access,
}

impl BoundSocket {
    /// Makes the socket at `path`: its directory if missing (0755 as root,
    /// 0700 as any other user), a lock
    /// beside it (`<socket>.lock`), a stale socket from a crash removed
    /// (one nobody answers on), a live one left alone ([`ServeError::InUse`]).
    /// The socket is made under a temporary name, given its mode (as root
    /// 0660 and the group `edr-agent`, if it exists, else only root can
    /// connect; as any other user 0600, [`Access::Owner`]), then renamed
    /// into place, so it is never reachable with other modes.
    pub fn bind(path: &Path) -> Result<BoundSocket, ServeError> {
        let access = Access::for_this_process();
        let (dir_mode, socket_mode) = match access {
            Access::Group => (0o755, 0o660),
            Access::Owner(_) => (0o700, 0o600),
        };
        let dir = match path.parent() {
            Some(d) if !d.as_os_str().is_empty() => d.to_path_buf(),
            _ => PathBuf::from("."),
        };
        if !dir.exists() {
            std::fs::DirBuilder::new()
                .recursive(true)
                .mode(dir_mode)
                .create(&dir)
                .map_err(io("create the directory", &dir))?;
            // The umask may have taken bits off.
            std::fs::set_permissions(&dir, std::fs::Permissions::from_mode(dir_mode))
                .map_err(io("set the mode of", &dir))?;
        }
        let name = path
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_else(|| "api.sock".into());
        let lock_path = dir.join(format!("{name}.lock"));
        let lock = OpenOptions::new()
            .create(true)
            .truncate(false)
            .write(true)
            .mode(0o600)
            .open(&lock_path)
            .map_err(io("open", &lock_path))?;
        // SAFETY: flock on an open descriptor we own.
        if unsafe {
            libc::flock(
                std::os::fd::AsRawFd::as_raw_fd(&lock),
                libc::LOCK_EX | libc::LOCK_NB,
            )
        } != 0
        {
            return Err(ServeError::InUse {
                path: path.to_path_buf(),
            });
        }
        match std::fs::symlink_metadata(path) {
            Ok(m) if m.file_type().is_socket() => {
                match std::os::unix::net::UnixStream::connect(path) {
                    Ok(_) => {
                        return Err(ServeError::InUse {
                            path: path.to_path_buf(),
                        })
                    }
                    Err(_) => {
                        tracing::info!(path = %path.display(), "replacing a stale API socket");
                        std::fs::remove_file(path).map_err(io("remove the stale socket", path))?;
                    }
                }
            }
            Ok(_) => {
                return Err(ServeError::NotASocket {
                    path: path.to_path_buf(),
                })
            }
            Err(_) => {}
        }
        let tmp = dir.join(format!(".{name}.{}.tmp", std::process::id()));
        let _ = std::fs::remove_file(&tmp);
        let listener = StdUnixListener::bind(&tmp).map_err(io("bind", &tmp))?;
        let group = match access {
            Access::Group => peer::group_gid(API_GROUP),
            Access::Owner(_) => None,
        };
        let placed = (|| {
            std::fs::set_permissions(&tmp, std::fs::Permissions::from_mode(socket_mode))?;
            if let Some(gid) = group {
                std::os::unix::fs::lchown(&tmp, None, Some(gid))?;
            }
            std::fs::rename(&tmp, path)?;
            listener.set_nonblocking(true)?;
            std::fs::symlink_metadata(path)
        })();
        let meta = match placed {
            Ok(m) => m,
            Err(e) => {
                let _ = std::fs::remove_file(&tmp);
                return Err(ServeError::Io {
                    what: "set up the socket",
                    path: path.to_path_buf(),
                    source: e,
                });
            }
        };
        if group.is_none() && access == Access::Group {
            tracing::warn!(
                path = %path.display(),
                "group `{API_GROUP}` does not exist: only root can use the API \
                 (`edr-agent service install` creates it)"
            );
        }
        Ok(BoundSocket {
            listener: Some(listener),
            path: path.to_path_buf(),
            id: (meta.dev(), meta.ino()),
            _lock: lock,
            group,
            access,
        })
    }

    pub fn path(&self) -> &Path {
        &self.path
    }
}

impl Drop for BoundSocket {
    fn drop(&mut self) {
        if let Ok(m) = std::fs::symlink_metadata(&self.path) {
            if (m.dev(), m.ino()) == self.id {
                let _ = std::fs::remove_file(&self.path);
            }
        }
    }
}

/// A token bucket over all connections: [`RATE_PER_S`], bursts of twice that.
struct Bucket {
    tokens: f64,
    at: Instant,
}

impl Bucket {
    fn new(now: Instant) -> Bucket {
        Bucket {
            tokens: 2.0 * RATE_PER_S,
            at: now,
        }
    }

    /// Whether one more request is admitted at `now`.
    fn take(&mut self, now: Instant) -> bool {
        let refill = now.saturating_duration_since(self.at).as_secs_f64() * RATE_PER_S;
        self.tokens = (self.tokens + refill).min(2.0 * RATE_PER_S);
        self.at = now;
        if self.tokens >= 1.0 {
            self.tokens -= 1.0;
            true
        } else {
            false
        }
    }
}

struct ApiState {
    engine: EngineHandle,
    limiter: Mutex<Bucket>,
    streams: Arc<Semaphore>,
    store_reads: Arc<Semaphore>,
    /// One config change at a time: each is validated over the config it
    /// replaces.
    config_change: tokio::sync::Mutex<()>,
    shutdown: CancellationToken,
}

/// Serves the API on `bound` until `shutdown` is cancelled, then lets
/// open connections finish (streams end) for a moment and removes the
/// socket. Needs the engine to keep recent events
/// ([`RECENT_EVENTS`] in `EngineOptions::recent_events`) for
/// `/v1/events` and `/v1/alerts`.
pub async fn serve(
    mut bound: BoundSocket,
    engine: EngineHandle,
    shutdown: CancellationToken,
) -> Result<(), ServeError> {
    let Some(std_listener) = bound.listener.take() else {
        return Ok(());
    };
    let listener =
        tokio::net::UnixListener::from_std(std_listener).map_err(io("listen on", &bound.path))?;
    let access = bound.access;
    let state = Arc::new(ApiState {
        engine,
        limiter: Mutex::new(Bucket::new(Instant::now())),
        streams: Arc::new(Semaphore::new(MAX_STREAMS)),
        store_reads: Arc::new(Semaphore::new(MAX_STORE_READS)),
        config_change: tokio::sync::Mutex::new(()),
        shutdown: shutdown.clone(),
    });
    let allowed = routes(Arc::clone(&state));
    let refused = Router::new()
        .fallback(refuse)
        .layer(middleware::from_fn_with_state(Arc::clone(&state), guard));
    let connections = Arc::new(Semaphore::new(MAX_CONNECTIONS));
    let tracker = TaskTracker::new();
    tracing::info!(socket = %bound.path.display(), "API listening");
    loop {
        let permit = tokio::select! {
            _ = shutdown.cancelled() => break,
            p = Arc::clone(&connections).acquire_owned() => match p {
                Ok(p) => p,
                Err(_) => break,
            },
        };
        let stream = tokio::select! {
            _ = shutdown.cancelled() => break,
            r = listener.accept() => match r {
                Ok((s, _)) => s,
                Err(e) => {
                    // Out of descriptors, say: wait instead of spinning.
                    tracing::warn!(error = %e, "API accept failed");
                    tokio::time::sleep(Duration::from_millis(100)).await;
                    continue;
                }
            },
        };
        let (allowed, refused) = (allowed.clone(), refused.clone());
        tracker.spawn(connection(
            stream,
            access,
            allowed,
            refused,
            shutdown.clone(),
            permit,
        ));
    }
    drop(listener);
    tracker.close();
    if tokio::time::timeout(DRAIN + Duration::from_secs(1), tracker.wait())
        .await
        .is_err()
    {
        tracing::warn!("API connections still open at shutdown were dropped");
    }
    drop(bound);
    Ok(())
}

async fn connection(
    stream: tokio::net::UnixStream,
    access: Access,
    allowed: Router,
    refused: Router,
    shutdown: CancellationToken,
    _permit: OwnedSemaphorePermit,
) {
    let info = match stream.peer_cred() {
        Ok(c) => PeerInfo {
            uid: c.uid(),
            gid: c.gid(),
            pid: c.pid(),
        },
        Err(e) => {
            tracing::debug!(error = %e, "no peer credentials; connection dropped");
            return;
        }
    };
    // The user database may be remote (NSS): not on a runtime thread.
    let peer = match tokio::task::spawn_blocking(move || peer::authorize(info, access)).await {
        Ok(p) => p,
        Err(_) => return,
    };
    if !peer.authorized {
        tracing::info!(uid = peer.info.uid, pid = ?peer.info.pid, "API connection refused");
    }
    let router = if peer.authorized { allowed } else { refused }.layer(Extension(peer));
    let service = hyper_util::service::TowerToHyperService::new(router);
    let conn = hyper::server::conn::http1::Builder::new()
        .timer(TokioTimer::new())
        .header_read_timeout(HEADER_TIMEOUT)
        .max_buf_size(MAX_HEAD)
        .serve_connection(TokioIo::new(stream), service);
    tokio::pin!(conn);
    tokio::select! {
        r = conn.as_mut() => {
            if let Err(e) = r {
                tracing::debug!(error = %e, "API connection ended with an error");
            }
        }
        _ = shutdown.cancelled() => {
            conn.as_mut().graceful_shutdown();
            let _ = tokio::time::timeout(DRAIN, conn).await;
        }
    }
}

fn routes(state: Arc<ApiState>) -> Router {
    Router::new()
        .route("/v1/hello", get(hello))
        .route("/v1/status", get(status))
        .route("/v1/history", get(history))
        .route("/v1/events", get(events))
        .route("/v1/alerts", get(alerts))
        .route("/v1/config", get(get_config).put(put_config))
        .route("/v1/pause", post(pause))
        .route("/v1/resume", post(resume))
        .route("/v1/stream", get(stream))
        .route("/v1/stored/events", get(stored_events))
        .route("/v1/stored/alerts", get(stored_alerts))
        .route("/v1/stored/stats", get(stored_stats))
        .route("/v1/stored/history", get(stored_history))
        .fallback(not_found)
        .method_not_allowed_fallback(method_not_allowed)
        .layer(DefaultBodyLimit::max(MAX_BODY))
        .layer(middleware::from_fn_with_state(Arc::clone(&state), guard))
        .with_state(state)
}

/// The JSON error every refusal is.
pub(crate) fn error(status: StatusCode, message: impl Into<String>) -> Response {
    refusal(status, message, Vec::new())
}

fn refusal(status: StatusCode, message: impl Into<String>, fields: Vec<FieldRefusal>) -> Response {
    (
        status,
        Json(ErrorBody {
            error: message.into(),
            fields,
        }),
    )
        .into_response()
}

/// Rate and time limits of every request.
async fn guard(State(state): State<Arc<ApiState>>, req: Request, next: Next) -> Response {
    let admitted = state
        .limiter
        .lock()
        .unwrap_or_else(|p| p.into_inner())
        .take(Instant::now());
    if !admitted {
        return error(
            StatusCode::TOO_MANY_REQUESTS,
            format!("too many requests: at most {RATE_PER_S} a second"),
        );
    }
    match tokio::time::timeout(REQUEST_TIMEOUT, next.run(req)).await {
        Ok(r) => r,
        Err(_) => error(
            StatusCode::REQUEST_TIMEOUT,
            format!(
                "the request was not complete within {} s",
                REQUEST_TIMEOUT.as_secs()
            ),
        ),
    }
}

async fn refuse(Extension(peer): Extension<Peer>) -> Response {
    error(StatusCode::FORBIDDEN, peer.refusal())
}

async fn not_found(req: Request) -> Response {
    error(
        StatusCode::NOT_FOUND,
        format!(
            "no such path: {} (paths: /v1/hello, /v1/status, /v1/history, /v1/events, /v1/alerts, \
             /v1/config, /v1/pause, /v1/resume, /v1/stream, /v1/stored/events, \
             /v1/stored/alerts, /v1/stored/stats, /v1/stored/history)",
            req.uri().path()
        ),
    )
}

async fn method_not_allowed(req: Request) -> Response {
    error(
        StatusCode::METHOD_NOT_ALLOWED,
        format!("{} is not allowed on {}", req.method(), req.uri().path()),
    )
}

fn bad_query(e: QueryRejection) -> Response {
    error(StatusCode::BAD_REQUEST, e.body_text())
}

async fn hello(State(s): State<Arc<ApiState>>, Extension(peer): Extension<Peer>) -> Response {
    let snap = s.engine.snapshot();
    let c = snap.coverage;
    Json(Hello {
        protocol: PROTOCOL_VERSION,
        agent_version: snap.version,
        pid: snap.pid,
        process_source: c.process_source,
        process_capture: c.process_capture.map(|p| p.as_str().to_string()),
        process_note: c.process_note,
        network_source: c.network_source,
        watched_paths: c.watched_paths,
        peer: peer.info,
        data_dir: Some(snap.data_dir),
    })
    .into_response()
}

async fn status(State(s): State<Arc<ApiState>>) -> Response {
    Json(s.engine.snapshot()).into_response()
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct HistoryQuery {
    window_s: Option<String>,
}

/// Parses a whole number in `lo..=hi` or answers 400 naming the parameter.
#[allow(clippy::result_large_err)]
fn number(name: &str, v: Option<&str>, default: u64, lo: u64, hi: u64) -> Result<u64, Response> {
    let Some(v) = v else { return Ok(default) };
    match v.parse::<u64>() {
        Ok(n) if (lo..=hi).contains(&n) => Ok(n),
        _ => Err(error(
            StatusCode::BAD_REQUEST,
            format!("`{name}` = {v:?}: expected a whole number from {lo} to {hi}"),
        )),
    }
}

async fn history(
    State(s): State<Arc<ApiState>>,
    q: Result<Query<HistoryQuery>, QueryRejection>,
) -> Response {
    let q = match q {
        Ok(Query(q)) => q,
        Err(e) => return bad_query(e),
    };
    let window_s = match number("window_s", q.window_s.as_deref(), 300, 1, 3600) {
        Ok(n) => n,
        Err(r) => return r,
    };
    Json(History {
        window_s,
        samples: s.engine.history(Duration::from_secs(window_s)),
    })
    .into_response()
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct EventsQuery {
    since: Option<String>,
    #[serde(rename = "type")]
    kind: Option<String>,
    grep: Option<String>,
    limit: Option<String>,
}

/// `since=`: milliseconds since the epoch, or RFC 3339.
#[allow(clippy::result_large_err)]
fn since_time(v: Option<&str>) -> Result<Option<Timestamp>, Response> {
    let Some(v) = v else { return Ok(None) };
    if let Ok(ms) = v.parse::<u64>() {
        return Ok(Some(Timestamp(ms)));
    }
    serde_json::from_value::<Timestamp>(serde_json::Value::String(v.to_string()))
        .map(Some)
        .map_err(|_| {
            error(
                StatusCode::BAD_REQUEST,
                format!(
                    "`since` = {v:?}: expected milliseconds since the epoch or an RFC 3339 time \
                     (2026-01-31T12:00:00Z)"
                ),
            )
        })
}

async fn events(
    State(s): State<Arc<ApiState>>,
    q: Result<Query<EventsQuery>, QueryRejection>,
) -> Response {
    let q = match q {
        Ok(Query(q)) => q,
        Err(e) => return bad_query(e),
    };
    let limit = match number("limit", q.limit.as_deref(), 100, 1, RECENT_EVENTS as u64) {
        Ok(n) => n as usize,
        Err(r) => return r,
    };
    let since = match since_time(q.since.as_deref()) {
        Ok(t) => t,
        Err(r) => return r,
    };
    let kind = match q.kind.as_deref() {
        None => None,
        Some(t) => match EventType::parse(t) {
            Some(k) => Some(k),
            None => {
                return error(
                    StatusCode::BAD_REQUEST,
                    format!("`type` = {t:?}: expected one of process, file, network"),
                )
            }
        },
    };
    if q.grep.as_ref().is_some_and(|g| g.len() > MAX_GREP) {
        return error(
            StatusCode::BAD_REQUEST,
            format!("`grep` is longer than {MAX_GREP} bytes"),
        );
    }
    let rows: Vec<EventRow> = s
        .engine
        .recent_events(RECENT_EVENTS)
        .iter()
        .filter(|e| since.is_none_or(|t| e.timestamp > t))
        .filter(|e| kind.is_none_or(|k| e.kind == k))
        .map(EventRow::of)
        .filter(|r| q.grep.as_deref().is_none_or(|g| r.contains(g)))
        .collect();
    let skip = rows.len().saturating_sub(limit);
    Json(Events {
        events: rows.into_iter().skip(skip).collect(),
    })
    .into_response()
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct AlertsQuery {
    since: Option<String>,
    limit: Option<String>,
}

async fn alerts(
    State(s): State<Arc<ApiState>>,
    q: Result<Query<AlertsQuery>, QueryRejection>,
) -> Response {
    let q = match q {
        Ok(Query(q)) => q,
        Err(e) => return bad_query(e),
    };
    let (since, limit) = match (
        number("since", q.since.as_deref(), 0, 0, u64::MAX),
        number(
            "limit",
            q.limit.as_deref(),
            ALERT_RING as u64,
            1,
            ALERT_RING as u64,
        ),
    ) {
        (Ok(s), Ok(l)) => (s, l as usize),
        (Err(r), _) | (_, Err(r)) => return r,
    };
    let a = s.engine.alerts(since, limit);
    Json(Alerts {
        last_seq: a.last_seq,
        alerts: a.alerts.iter().map(AlertRow::of).collect(),
    })
    .into_response()
}

async fn get_config(State(s): State<Arc<ApiState>>) -> Response {
    Json(&*s.engine.config()).into_response()
}

fn config_refusal(e: &ConfigError) -> Response {
    refusal(
        StatusCode::UNPROCESSABLE_ENTITY,
        format!("nothing was changed: {e}"),
        e.field_errors().iter().map(FieldRefusal::from).collect(),
    )
}

/// A partial config (JSON, any subset of the sections) merged over the
/// running one by `Config::load` — the engine's merging, validation and
/// messages, as the app's settings form does — then applied with
/// `EngineHandle::apply_config` and saved into the agent's config file.
async fn put_config(
    State(s): State<Arc<ApiState>>,
    body: Result<Bytes, BytesRejection>,
) -> Response {
    let body = match body {
        Ok(b) => b,
        Err(e) => {
            let status = e.status();
            let message = if status == StatusCode::PAYLOAD_TOO_LARGE {
                format!("the request body is larger than {MAX_BODY} bytes")
            } else {
                e.body_text()
            };
            return error(status, message);
        }
    };
    let change: serde_json::Value = match serde_json::from_slice(&body) {
        Ok(v) => v,
        Err(e) => return error(StatusCode::BAD_REQUEST, format!("malformed JSON: {e}")),
    };
    if !change.is_object() {
        return error(
            StatusCode::BAD_REQUEST,
            "expected a JSON object of config sections, e.g. {\"agent\": {\"max_events_per_batch\": 500}}",
        );
    }
    let _one_at_a_time = s.config_change.lock().await;
    let current = s.engine.config();
    let engine = s.engine.clone();
    let file = engine.snapshot().config_file;
    let result = tokio::task::spawn_blocking(move || {
        let new = Config::load(&[
            Layer::text("current settings", current.to_yaml()),
            Layer::text("PUT /v1/config", change.to_string()),
        ])?;
        if new.api != current.api {
            return Err(ConfigError::Invalid {
                origin: "PUT /v1/config".into(),
                errors: vec![FieldError {
                    key: "api".into(),
                    value: serde_json::to_string(&new.api).unwrap_or_default(),
                    allowed: "the running API settings: `api.*` is read at start; edit the \
                              config file and restart the agent"
                        .into(),
                }],
            });
        }
        engine.apply_config(new.clone())?;
        let saved = file.map(|f| new.save(Path::new(&f)).map(|()| f));
        Ok((new, saved))
    })
    .await;
    match result {
        Err(e) => error(
            StatusCode::INTERNAL_SERVER_ERROR,
            format!("the config change failed: {e}"),
        ),
        Ok(Err(e)) => config_refusal(&e),
        Ok(Ok((config, saved))) => {
            let (saved_to, save_error) = match saved {
                None => (None, None),
                Some(Ok(f)) => (Some(f), None),
                Some(Err(e)) => (
                    None,
                    Some(format!("applied, but not saved (lost at restart): {e}")),
                ),
            };
            tracing::info!(saved_to = ?saved_to, "config changed over the API");
            Json(ConfigApplied {
                config,
                saved_to,
                save_error,
            })
            .into_response()
        }
    }
}

async fn pause(State(s): State<Arc<ApiState>>) -> Response {
    s.engine.pause();
    tracing::info!("paused over the API");
    Json(PauseState { paused: true }).into_response()
}

async fn resume(State(s): State<Arc<ApiState>>) -> Response {
    s.engine.resume();
    tracing::info!("resumed over the API");
    Json(PauseState { paused: false }).into_response()
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct StreamQuery {
    interval_ms: Option<String>,
    since: Option<String>,
}

struct Streaming {
    engine: EngineHandle,
    ticker: tokio::time::Interval,
    /// Wakes the stream when an alert is recorded, so it goes out at
    /// once rather than at the next tick.
    raised: Option<tokio::sync::watch::Receiver<u64>>,
    last_seq: u64,
    pending: VecDeque<Bytes>,
    shutdown: CancellationToken,
    _permit: OwnedSemaphorePermit,
}

fn line(item: &StreamItem) -> Bytes {
    let mut v = serde_json::to_vec(item).unwrap_or_default();
    v.push(b'\n');
    Bytes::from(v)
}

/// NDJSON: a snapshot every `interval_ms` (the first at once) and each
/// new alert (numbered above `since`; default: only alerts raised from
/// now on) before the snapshot that follows it. Ends at shutdown.
async fn stream(
    State(s): State<Arc<ApiState>>,
    q: Result<Query<StreamQuery>, QueryRejection>,
) -> Response {
    let q = match q {
        Ok(Query(q)) => q,
        Err(e) => return bad_query(e),
    };
    let interval = match number("interval_ms", q.interval_ms.as_deref(), 1000, 100, 60_000) {
        Ok(n) => Duration::from_millis(n),
        Err(r) => return r,
    };
    let current = s.engine.alerts(u64::MAX, 1).last_seq;
    let since = match number("since", q.since.as_deref(), current, 0, u64::MAX) {
        Ok(n) => n,
        Err(r) => return r,
    };
    let Ok(permit) = Arc::clone(&s.streams).try_acquire_owned() else {
        return error(
            StatusCode::SERVICE_UNAVAILABLE,
            format!("at most {MAX_STREAMS} streams at once"),
        );
    };
    let mut ticker = tokio::time::interval(interval);
    ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let state = Streaming {
        engine: s.engine.clone(),
        ticker,
        raised: s.engine.alert_raised(),
        last_seq: since,
        pending: VecDeque::new(),
        shutdown: s.shutdown.clone(),
        _permit: permit,
    };
    let body = futures_util::stream::unfold(state, |mut st| async move {
        loop {
            if let Some(l) = st.pending.pop_front() {
                return Some((Ok::<_, Infallible>(l), st));
            }
            let tick = tokio::select! {
                _ = st.shutdown.cancelled() => return None,
                _ = st.ticker.tick() => true,
                open = async {
                    match st.raised.as_mut() {
                        Some(r) => r.changed().await.is_ok(),
                        None => std::future::pending().await,
                    }
                } => {
                    if !open {
                        st.raised = None;
                    }
                    false
                }
            };
            let a = st.engine.alerts(st.last_seq, ALERT_RING);
            st.last_seq = a.last_seq;
            for alert in &a.alerts {
                st.pending.push_back(line(&StreamItem::Alert {
                    alert: Box::new(AlertRow::of(alert)),
                }));
            }
            if tick {
                st.pending.push_back(line(&StreamItem::Snapshot {
                    snapshot: Box::new(st.engine.snapshot()),
                }));
            }
        }
    });
    (
        [(header::CONTENT_TYPE, "application/x-ndjson")],
        Body::from_stream(body),
    )
        .into_response()
}

/// The NDJSON body of a `/v1/stored/*` answer, filled on a blocking thread
/// through a bounded channel: a slow client slows the reading, a gone one
/// ends it. A read cut short (shutdown) aborts the body, so the client
/// sees an error rather than a short answer that looks complete.
struct LineSink {
    tx: tokio::sync::mpsc::Sender<Result<Bytes, std::io::Error>>,
    buf: Vec<u8>,
    shutdown: CancellationToken,
    gone: bool,
}

impl LineSink {
    fn stopped(&self) -> bool {
        self.gone || self.shutdown.is_cancelled()
    }

    fn line(&mut self, line: &[u8]) -> std::ops::ControlFlow<()> {
        self.buf.extend_from_slice(line);
        self.buf.push(b'\n');
        if self.buf.len() >= CHUNK {
            self.flush();
        }
        if self.stopped() {
            std::ops::ControlFlow::Break(())
        } else {
            std::ops::ControlFlow::Continue(())
        }
    }

    fn json(&mut self, item: &impl serde::Serialize) -> std::ops::ControlFlow<()> {
        match serde_json::to_vec(item) {
            Ok(v) => self.line(&v),
            Err(e) => {
                self.fail(format!("cannot encode an answer line: {e}"));
                std::ops::ControlFlow::Break(())
            }
        }
    }

    fn flush(&mut self) {
        if self.gone || self.buf.is_empty() {
            return;
        }
        let chunk = Bytes::from(std::mem::take(&mut self.buf));
        self.gone = self.tx.blocking_send(Ok(chunk)).is_err();
    }

    fn fail(&mut self, why: String) {
        self.buf.clear();
        if !self.gone {
            let _ = self.tx.blocking_send(Err(std::io::Error::other(why)));
            self.gone = true;
        }
    }

    /// The end: the rest sent, or the body aborted if cut short.
    fn finish(mut self) {
        if self.shutdown.is_cancelled() {
            self.fail("the agent is stopping".into());
        } else {
            self.flush();
        }
    }
}

/// A permit for one read of the data dir, or 503.
#[allow(clippy::result_large_err)]
fn store_read(s: &ApiState) -> Result<OwnedSemaphorePermit, Response> {
    Arc::clone(&s.store_reads).try_acquire_owned().map_err(|_| {
        error(
            StatusCode::SERVICE_UNAVAILABLE,
            format!("busy: at most {MAX_STORE_READS} reads of the stored data at once; try again"),
        )
    })
}

/// Answers NDJSON lines that `produce` writes on a blocking thread.
fn ndjson(
    s: &ApiState,
    permit: OwnedSemaphorePermit,
    produce: impl FnOnce(&mut LineSink) + Send + 'static,
) -> Response {
    let (tx, mut rx) = tokio::sync::mpsc::channel(8);
    let mut sink = LineSink {
        tx,
        buf: Vec::with_capacity(CHUNK + 4096),
        shutdown: s.shutdown.clone(),
        gone: false,
    };
    tokio::task::spawn_blocking(move || {
        let _permit = permit;
        produce(&mut sink);
        sink.finish();
    });
    let body = futures_util::stream::poll_fn(move |cx| rx.poll_recv(cx));
    (
        [(header::CONTENT_TYPE, "application/x-ndjson")],
        Body::from_stream(body),
    )
        .into_response()
}

/// The batch files of the service's data dir, listed off the runtime.
async fn batch_files(s: &ApiState) -> Result<Vec<PathBuf>, Response> {
    let data_dir = PathBuf::from(s.engine.snapshot().data_dir);
    match tokio::task::spawn_blocking(move || edr_store::list_batches(&data_dir)).await {
        Ok(Ok(files)) => Ok(files),
        Ok(Err(e)) => Err(error(StatusCode::INTERNAL_SERVER_ERROR, e.to_string())),
        Err(e) => Err(error(StatusCode::INTERNAL_SERVER_ERROR, e.to_string())),
    }
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct StoredQuery {
    since: Option<String>,
    until: Option<String>,
    /// Comma-separated: `process,file`.
    #[serde(rename = "type")]
    types: Option<String>,
    grep: Option<String>,
    limit: Option<String>,
}

#[allow(clippy::result_large_err)]
fn stored_query(
    q: StoredQuery,
    alerts_only: bool,
) -> Result<edr_store::query::EventQuery, Response> {
    let limit = match q.limit.as_deref() {
        None => None,
        Some(l) => Some(number("limit", Some(l), 0, 1, u64::MAX)?),
    };
    let mut types = Vec::new();
    for t in q.types.iter().flat_map(|t| t.split(',')) {
        match EventType::parse(t) {
            Some(k) => types.push(k),
            None => {
                return Err(error(
                    StatusCode::BAD_REQUEST,
                    format!("`type` = {t:?}: expected process, file or network (comma-separated)"),
                ))
            }
        }
    }
    if q.grep.as_ref().is_some_and(|g| g.len() > MAX_STORED_GREP) {
        return Err(error(
            StatusCode::BAD_REQUEST,
            format!("`grep` is longer than {MAX_STORED_GREP} bytes"),
        ));
    }
    Ok(edr_store::query::EventQuery {
        since: since_time(q.since.as_deref())?,
        until: since_time(q.until.as_deref())?,
        types,
        grep: q.grep,
        alerts_only,
        limit,
    })
}

/// Stored events of the service's data dir, exactly as stored (one ECS
/// JSON line each), selected as `edr-agent events` selects them.
async fn stored_events(
    State(s): State<Arc<ApiState>>,
    q: Result<Query<StoredQuery>, QueryRejection>,
) -> Response {
    stored_lines(s, q, false).await
}

/// Stored detection alerts, exactly as stored, as `edr-agent alerts` reads them.
async fn stored_alerts(
    State(s): State<Arc<ApiState>>,
    q: Result<Query<StoredQuery>, QueryRejection>,
) -> Response {
    stored_lines(s, q, true).await
}

// The same Response errors as the handlers above.
#[allow(clippy::result_large_err)]
async fn stored_lines(
    s: Arc<ApiState>,
    q: Result<Query<StoredQuery>, QueryRejection>,
    alerts_only: bool,
) -> Response {
    let q = match q
        .map_err(bad_query)
        .and_then(|Query(q)| stored_query(q, alerts_only))
    {
        Ok(q) => q,
        Err(r) => return r,
    };
    let permit = match store_read(&s) {
        Ok(p) => p,
        Err(r) => return r,
    };
    let files = match batch_files(&s).await {
        Ok(f) => f,
        Err(r) => return r,
    };
    ndjson(&s, permit, move |sink| {
        let shutdown = sink.shutdown.clone();
        edr_store::query::scan_files(
            &files,
            &q,
            |line| sink.line(line.as_bytes()),
            |w| tracing::warn!("{w}"),
            || shutdown.is_cancelled(),
        );
    })
}

/// Each batch file's sizes and events (`edr-agent stats`), one line each.
async fn stored_stats(State(s): State<Arc<ApiState>>) -> Response {
    let permit = match store_read(&s) {
        Ok(p) => p,
        Err(r) => return r,
    };
    let files = match batch_files(&s).await {
        Ok(f) => f,
        Err(r) => return r,
    };
    // One file at a time: the service does not take every core for a reader.
    ndjson(&s, permit, move |sink| {
        for path in files {
            let row = match edr_store::batch_stats(&path) {
                Ok(b) => StoredFileStats {
                    file: path.display().to_string(),
                    stored_bytes: b.stored_bytes,
                    raw_bytes: b.raw_bytes,
                    events: b.events,
                    error: None,
                },
                Err(e) => StoredFileStats {
                    file: path.display().to_string(),
                    stored_bytes: 0,
                    raw_bytes: 0,
                    events: 0,
                    error: Some(e.to_string()),
                },
            };
            if sink.json(&row).is_break() {
                return;
            }
        }
    })
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct StoredHistoryQuery {
    since: Option<String>,
}

/// The metrics history the service kept on disk since `since` (default:
/// an hour ago), one row a line, oldest first (`edr-agent report`).
// The same Response errors as the handlers above.
#[allow(clippy::result_large_err)]
async fn stored_history(
    State(s): State<Arc<ApiState>>,
    q: Result<Query<StoredHistoryQuery>, QueryRejection>,
) -> Response {
    let since = match q
        .map_err(bad_query)
        .and_then(|Query(q)| since_time(q.since.as_deref()))
    {
        Ok(t) => t.unwrap_or_else(|| {
            Timestamp::from(
                std::time::SystemTime::now()
                    .checked_sub(Duration::from_secs(3600))
                    .unwrap_or(std::time::SystemTime::UNIX_EPOCH),
            )
        }),
        Err(r) => return r,
    };
    let permit = match store_read(&s) {
        Ok(p) => p,
        Err(r) => return r,
    };
    let data_dir = PathBuf::from(s.engine.snapshot().data_dir);
    ndjson(&s, permit, move |sink| {
        for row in edr_metrics::read_history(&data_dir, since) {
            if sink.json(&row).is_break() {
                return;
            }
        }
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_bucket_admits_a_burst_then_the_rate() {
        let t0 = Instant::now();
        let mut b = Bucket::new(t0);
        let burst = (2.0 * RATE_PER_S) as usize;
        assert_eq!((0..burst * 2).filter(|_| b.take(t0)).count(), burst);
        // A tenth of a second refills a tenth of the rate.
        let later = t0 + Duration::from_millis(100);
        let refilled = (RATE_PER_S / 10.0) as usize;
        assert_eq!((0..burst).filter(|_| b.take(later)).count(), refilled);
        // Long idle refills no more than a burst.
        let much_later = t0 + Duration::from_secs(3600);
        assert_eq!((0..burst * 2).filter(|_| b.take(much_later)).count(), burst);
    }
}
