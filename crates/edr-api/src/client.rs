//! A typed client of the API, for the menu-bar app and the CLI: one
//! connection per request (a Unix socket costs nothing to open), every
//! answer decoded into the types the server sent, every failure a
//! sentence a person can act on.

use std::path::{Path, PathBuf};
use std::time::Duration;

use bytes::{Buf, Bytes, BytesMut};
use http_body_util::{BodyExt, Full, Limited};
use hyper::body::Incoming;
use hyper::{Method, Request, StatusCode};
use hyper_util::rt::TokioIo;
use serde::de::DeserializeOwned;

use edr_config::api::API_GROUP;
use edr_config::Config;
use edr_engine::Snapshot;

use edr_metrics::HistoryRow;
use edr_model::event::Timestamp;
use edr_store::query::EventQuery;

use crate::wire::{
    Alerts, ConfigApplied, ErrorBody, Events, FieldRefusal, Hello, History, PauseState,
    StoredFileStats, StreamItem,
};
use crate::PROTOCOL_VERSION;

/// Largest answer read (a thousand events are well under 1 MB).
const MAX_ANSWER: usize = 16 * 1024 * 1024;
/// Longest stream line.
const MAX_LINE: usize = 4 * 1024 * 1024;
const TIMEOUT: Duration = Duration::from_secs(10);

#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    #[error("no edr-agent service at {} (the socket does not exist: is the service installed and running?)", path.display())]
    NotRunning { path: PathBuf },
    #[error("the edr-agent service at {} does not answer (a socket left by a stopped agent?)", path.display())]
    Refused { path: PathBuf },
    #[error("not allowed to connect to {}: only root and members of the group `{API_GROUP}` may use the agent's API (an administrator adds you with `edr-agent service install --operator USER`; log in again afterwards)", path.display())]
    PermissionDenied { path: PathBuf },
    #[error("cannot connect to {}: {source}", path.display())]
    Connect {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("the edr-agent service speaks API protocol {server} and this program speaks {client}: update {} (service: edr-agent {agent_version})", if server > client { "this program" } else { "the service" })]
    ProtocolMismatch {
        server: u32,
        client: u32,
        agent_version: String,
    },
    /// The server refused the request (4xx/5xx) and said why.
    #[error("{message} (HTTP {status})")]
    Refusal {
        status: u16,
        message: String,
        fields: Vec<FieldRefusal>,
    },
    #[error("the edr-agent service did not answer within {} s", TIMEOUT.as_secs())]
    Timeout,
    #[error("talking to the edr-agent service failed: {0}")]
    Http(String),
    #[error("the edr-agent service sent an answer this program does not understand: {0}")]
    Decode(String),
}

impl ClientError {
    /// Whether the service is simply not there (not installed, stopped):
    /// a caller falls back to what it can do alone.
    pub fn is_unavailable(&self) -> bool {
        matches!(
            self,
            ClientError::NotRunning { .. } | ClientError::Refused { .. } | ClientError::Timeout
        )
    }

    /// Whether the service is there but this user may not use it (not in
    /// the group): refused by the socket's mode or by the server (403).
    pub fn is_not_authorized(&self) -> bool {
        matches!(
            self,
            ClientError::PermissionDenied { .. } | ClientError::Refusal { status: 403, .. }
        )
    }
}

/// Query parameters of [`Client::events`].
#[derive(Debug, Clone, Default)]
pub struct EventsQuery {
    /// Only events after this time (ms since the epoch).
    pub since_ms: Option<u64>,
    /// `process`, `file` or `network`.
    pub kind: Option<String>,
    pub grep: Option<String>,
    pub limit: Option<usize>,
}

/// A client of the service at one socket.
#[derive(Debug, Clone)]
pub struct Client {
    socket: PathBuf,
    protocol: u32,
}

impl Client {
    /// A client of `socket`, checked: the service answers `hello` with
    /// the protocol this client speaks.
    pub async fn connect(socket: &Path) -> Result<(Client, Hello), ClientError> {
        Client::connect_speaking(socket, PROTOCOL_VERSION).await
    }

    /// [`Client::connect`] for a client that speaks `protocol` (tests of
    /// the version check; a future client that speaks several).
    #[doc(hidden)]
    pub async fn connect_speaking(
        socket: &Path,
        protocol: u32,
    ) -> Result<(Client, Hello), ClientError> {
        let client = Client {
            socket: socket.to_path_buf(),
            protocol,
        };
        let hello = client.hello().await?;
        if hello.protocol != protocol {
            return Err(ClientError::ProtocolMismatch {
                server: hello.protocol,
                client: protocol,
                agent_version: hello.agent_version,
            });
        }
        Ok((client, hello))
    }

    /// A client without the version check (call [`Client::hello`] yourself).
    pub fn unchecked(socket: &Path) -> Client {
        Client {
            socket: socket.to_path_buf(),
            protocol: PROTOCOL_VERSION,
        }
    }

    pub fn socket(&self) -> &Path {
        &self.socket
    }

    pub async fn hello(&self) -> Result<Hello, ClientError> {
        self.get("/v1/hello").await
    }

    pub async fn status(&self) -> Result<Snapshot, ClientError> {
        self.get("/v1/status").await
    }

    pub async fn history(&self, window: Duration) -> Result<History, ClientError> {
        self.get(&format!("/v1/history?window_s={}", window.as_secs().max(1)))
            .await
    }

    pub async fn events(&self, q: &EventsQuery) -> Result<Events, ClientError> {
        let mut params = Vec::new();
        if let Some(s) = q.since_ms {
            params.push(format!("since={s}"));
        }
        if let Some(k) = &q.kind {
            params.push(format!("type={}", encode(k)));
        }
        if let Some(g) = &q.grep {
            params.push(format!("grep={}", encode(g)));
        }
        if let Some(l) = q.limit {
            params.push(format!("limit={l}"));
        }
        let query = if params.is_empty() {
            String::new()
        } else {
            format!("?{}", params.join("&"))
        };
        self.get(&format!("/v1/events{query}")).await
    }

    /// Alerts numbered above `since` (0: all the service keeps).
    pub async fn alerts(&self, since: u64) -> Result<Alerts, ClientError> {
        self.get(&format!("/v1/alerts?since={since}")).await
    }

    pub async fn config(&self) -> Result<Config, ClientError> {
        self.get("/v1/config").await
    }

    /// Applies a partial config (any subset of the sections, as JSON);
    /// a refusal ([`ClientError::Refusal`]) names each refused key, and
    /// nothing was changed.
    pub async fn set_config(
        &self,
        change: &serde_json::Value,
    ) -> Result<ConfigApplied, ClientError> {
        let body = serde_json::to_vec(change).map_err(|e| ClientError::Decode(e.to_string()))?;
        self.call(Method::PUT, "/v1/config", Bytes::from(body))
            .await
    }

    pub async fn pause(&self) -> Result<PauseState, ClientError> {
        self.call(Method::POST, "/v1/pause", Bytes::new()).await
    }

    pub async fn resume(&self) -> Result<PauseState, ClientError> {
        self.call(Method::POST, "/v1/resume", Bytes::new()).await
    }

    /// The live stream: a snapshot every `interval`, and each new alert.
    pub async fn stream(&self, interval: Duration) -> Result<Stream, ClientError> {
        let path = format!(
            "/v1/stream?interval_ms={}",
            interval.as_millis().clamp(100, 60_000)
        );
        Ok(Stream {
            lines: self.lines(&path).await?,
        })
    }

    /// The events stored in the service's data dir that `q` selects, each
    /// line exactly as stored (ECS JSON), oldest first: what `edr-agent
    /// events` (or, with `q.alerts_only`, `edr-agent alerts`) prints when
    /// reading the data dir itself.
    pub async fn stored_events(&self, q: &EventQuery) -> Result<Lines, ClientError> {
        let mut params = Vec::new();
        if let Some(t) = q.since {
            params.push(format!("since={}", t.as_millis()));
        }
        if let Some(t) = q.until {
            params.push(format!("until={}", t.as_millis()));
        }
        if !q.types.is_empty() {
            let types: Vec<&str> = q.types.iter().map(|t| t.as_str()).collect();
            params.push(format!("type={}", encode(&types.join(","))));
        }
        if let Some(g) = &q.grep {
            params.push(format!("grep={}", encode(g)));
        }
        if let Some(l) = q.limit {
            params.push(format!("limit={l}"));
        }
        let path = if q.alerts_only {
            "/v1/stored/alerts"
        } else {
            "/v1/stored/events"
        };
        let query = if params.is_empty() {
            String::new()
        } else {
            format!("?{}", params.join("&"))
        };
        self.lines(&format!("{path}{query}")).await
    }

    /// Every batch file of the service's data dir, measured (`edr-agent stats`).
    pub async fn stored_stats(&self) -> Result<Vec<StoredFileStats>, ClientError> {
        self.lines("/v1/stored/stats").await?.decode_all().await
    }

    /// The metrics history the service kept on disk since `since`
    /// (`edr-agent report`), oldest first.
    pub async fn stored_history(&self, since: Timestamp) -> Result<Vec<HistoryRow>, ClientError> {
        self.lines(&format!("/v1/stored/history?since={}", since.as_millis()))
            .await?
            .decode_all()
            .await
    }

    /// A GET answered with NDJSON, read a line at a time.
    async fn lines(&self, path: &str) -> Result<Lines, ClientError> {
        let (status, body) =
            tokio::time::timeout(TIMEOUT, self.send(Method::GET, path, Bytes::new()))
                .await
                .map_err(|_| ClientError::Timeout)??;
        if !status.is_success() {
            let bytes = collect(body).await?;
            return Err(refusal(status, &bytes));
        }
        Ok(Lines {
            body,
            buf: BytesMut::new(),
        })
    }

    async fn get<T: DeserializeOwned>(&self, path: &str) -> Result<T, ClientError> {
        self.call(Method::GET, path, Bytes::new()).await
    }

    async fn call<T: DeserializeOwned>(
        &self,
        method: Method,
        path: &str,
        body: Bytes,
    ) -> Result<T, ClientError> {
        let exchange = async {
            let (status, body) = self.send(method, path, body).await?;
            let bytes = collect(body).await?;
            Ok::<_, ClientError>((status, bytes))
        };
        let (status, bytes) = tokio::time::timeout(TIMEOUT, exchange)
            .await
            .map_err(|_| ClientError::Timeout)??;
        if !status.is_success() {
            return Err(refusal(status, &bytes));
        }
        serde_json::from_slice(&bytes).map_err(|e| ClientError::Decode(e.to_string()))
    }

    async fn send(
        &self,
        method: Method,
        path: &str,
        body: Bytes,
    ) -> Result<(StatusCode, Incoming), ClientError> {
        let stream = tokio::net::UnixStream::connect(&self.socket)
            .await
            .map_err(|e| {
                let path = self.socket.clone();
                match e.kind() {
                    std::io::ErrorKind::NotFound => ClientError::NotRunning { path },
                    std::io::ErrorKind::ConnectionRefused => ClientError::Refused { path },
                    std::io::ErrorKind::PermissionDenied => ClientError::PermissionDenied { path },
                    _ => ClientError::Connect { path, source: e },
                }
            })?;
        let (mut sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
            .await
            .map_err(|e| ClientError::Http(e.to_string()))?;
        tokio::spawn(async move {
            if let Err(e) = conn.await {
                tracing::debug!(error = %e, "API client connection ended with an error");
            }
        });
        let mut req = Request::builder()
            .method(method)
            .uri(path)
            .header(hyper::header::HOST, "edr-agent")
            .header("x-edr-protocol", self.protocol.to_string());
        if !body.is_empty() {
            req = req.header(hyper::header::CONTENT_TYPE, "application/json");
        }
        let req = req
            .body(Full::new(body))
            .map_err(|e| ClientError::Http(e.to_string()))?;
        let resp = sender
            .send_request(req)
            .await
            .map_err(|e| ClientError::Http(e.to_string()))?;
        Ok((resp.status(), resp.into_body()))
    }
}

async fn collect(body: Incoming) -> Result<Bytes, ClientError> {
    Limited::new(body, MAX_ANSWER)
        .collect()
        .await
        .map(|c| c.to_bytes())
        .map_err(|e| ClientError::Http(e.to_string()))
}

fn refusal(status: StatusCode, bytes: &[u8]) -> ClientError {
    match serde_json::from_slice::<ErrorBody>(bytes) {
        Ok(e) => ClientError::Refusal {
            status: status.as_u16(),
            message: e.error,
            fields: e.fields,
        },
        Err(_) => ClientError::Refusal {
            status: status.as_u16(),
            message: String::from_utf8_lossy(&bytes[..bytes.len().min(500)]).into_owned(),
            fields: Vec::new(),
        },
    }
}

/// Percent-encodes a query value (everything but unreserved characters).
fn encode(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for b in s.bytes() {
        if b.is_ascii_alphanumeric() || b"-._~".contains(&b) {
            out.push(b as char);
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

/// The live stream of [`Client::stream`].
pub struct Stream {
    lines: Lines,
}

impl Stream {
    /// The next item; `None` when the service ends the stream (it stops).
    pub async fn next(&mut self) -> Option<Result<StreamItem, ClientError>> {
        let line = self.lines.next().await?;
        Some(line.and_then(|l| decode(&l)))
    }
}

fn decode<T: DeserializeOwned>(line: &[u8]) -> Result<T, ClientError> {
    serde_json::from_slice(line).map_err(|e| ClientError::Decode(e.to_string()))
}

/// An NDJSON answer, a line at a time. A body the service cut short (it
/// stopped mid-answer) is an error, not a short answer.
pub struct Lines {
    body: Incoming,
    buf: BytesMut,
}

impl Lines {
    /// Every remaining line, decoded.
    pub async fn decode_all<T: DeserializeOwned>(mut self) -> Result<Vec<T>, ClientError> {
        let mut all = Vec::new();
        while let Some(line) = self.next().await {
            all.push(decode(&line?)?);
        }
        Ok(all)
    }

    /// The next line (without its newline); `None` at the end.
    pub async fn next(&mut self) -> Option<Result<Bytes, ClientError>> {
        loop {
            if let Some(i) = self.buf.iter().position(|&b| b == b'\n') {
                let mut line = self.buf.split_to(i + 1).freeze();
                line.truncate(i);
                if line.is_empty() {
                    continue;
                }
                return Some(Ok(line));
            }
            if self.buf.len() > MAX_LINE {
                return Some(Err(ClientError::Decode(format!(
                    "a stream line longer than {MAX_LINE} bytes"
                ))));
            }
            match self.body.frame().await? {
                Ok(frame) => {
                    if let Ok(mut data) = frame.into_data() {
                        while data.has_remaining() {
                            let chunk = data.chunk();
                            self.buf.extend_from_slice(chunk);
                            let n = chunk.len();
                            data.advance(n);
                        }
                    }
                }
                Err(e) => return Some(Err(ClientError::Http(e.to_string()))),
            }
        }
    }
}
