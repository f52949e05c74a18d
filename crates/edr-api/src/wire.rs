//! What travels over the socket: the JSON bodies of every path, shared by
//! the server and the client so the two cannot drift apart.
//!
//! The engine's in-memory rows (`RecentEvent`, `AlertRecord`) are not
//! serializable on purpose (the engine knows no wire format); they are
//! translated here, field by field.

use std::net::IpAddr;

use serde::{Deserialize, Serialize};

use edr_engine::alerts::{AlertProcess, AlertRecord};
use edr_engine::recent::RecentEvent;
use edr_model::event::{AlertAncestor, Timestamp};

/// `GET /v1/hello`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Hello {
    /// [`crate::PROTOCOL_VERSION`] of the server.
    pub protocol: u32,
    /// The agent's version (`edr-agent --version`).
    pub agent_version: String,
    pub pid: u32,
    /// How processes are captured now, e.g. `netlink proc connector`.
    pub process_source: Option<String>,
    /// Whether process capture is event-driven (`event`) or polling (`scan`).
    pub process_capture: Option<String>,
    /// What the process source implies (e.g. short processes missed).
    pub process_note: Option<String>,
    pub network_source: Option<String>,
    /// Directories under a working file watch.
    pub watched_paths: Vec<String>,
    /// Who the server saw connecting (peer credentials).
    pub peer: PeerInfo,
    /// The data dir the service stores into (and `/v1/stored/*` reads);
    /// None from a server older than the field.
    #[serde(default)]
    pub data_dir: Option<String>,
}

/// The connecting process as the kernel reported it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PeerInfo {
    pub uid: u32,
    pub gid: u32,
    pub pid: Option<i32>,
}

/// Every error body: a sentence, and per-key refusals for config changes.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ErrorBody {
    pub error: String,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub fields: Vec<FieldRefusal>,
}

/// One refused config value (the engine's `FieldError`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct FieldRefusal {
    pub key: String,
    pub value: String,
    pub allowed: String,
}

impl From<&edr_config::FieldError> for FieldRefusal {
    fn from(e: &edr_config::FieldError) -> Self {
        FieldRefusal {
            key: e.key.clone(),
            value: e.value.clone(),
            allowed: e.allowed.clone(),
        }
    }
}

/// `GET /v1/history`: one-second samples, oldest first.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct History {
    pub window_s: u64,
    pub samples: Vec<edr_metrics::MetricsSample>,
}

/// A socket address on the wire.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct Endpoint {
    pub ip: IpAddr,
    pub port: u16,
}

/// The process an event or alert is about.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ProcessRow {
    pub pid: u32,
    pub name: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub executable: Option<String>,
    pub command_line: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub entity_id: Option<String>,
}

/// One recent event (`GET /v1/events`), as a table row shows it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct EventRow {
    pub timestamp: Timestamp,
    /// `process`, `file` or `network`.
    #[serde(rename = "type")]
    pub kind: String,
    /// `event.action`, e.g. `process_started`.
    pub action: String,
    pub process: Option<ProcessRow>,
    pub file_path: Option<String>,
    pub original_path: Option<String>,
    pub transport: Option<String>,
    pub source: Option<Endpoint>,
    pub destination: Option<Endpoint>,
}

impl EventRow {
    pub fn of(e: &RecentEvent) -> EventRow {
        EventRow {
            timestamp: e.timestamp,
            kind: e.kind.as_str().to_string(),
            action: e.action.to_string(),
            process: e.process.as_ref().map(|p| ProcessRow {
                pid: p.pid,
                name: Some(p.name.clone()),
                executable: None,
                command_line: p.command_line.clone(),
                entity_id: None,
            }),
            file_path: e.file_path.clone(),
            original_path: e.original_path.clone(),
            transport: e.transport.map(str::to_string),
            source: e.source.map(|(ip, port)| Endpoint { ip, port }),
            destination: e.destination.map(|(ip, port)| Endpoint { ip, port }),
        }
    }

    /// Whether `needle` occurs in any text of the row (`grep=`).
    pub fn contains(&self, needle: &str) -> bool {
        let p = self.process.as_ref();
        [
            Some(self.action.as_str()),
            p.and_then(|p| p.name.as_deref()),
            p.and_then(|p| p.command_line.as_deref()),
            self.file_path.as_deref(),
            self.original_path.as_deref(),
        ]
        .into_iter()
        .flatten()
        .any(|s| s.contains(needle))
            || [self.source, self.destination]
                .into_iter()
                .flatten()
                .any(|e| format!("{}:{}", e.ip, e.port).contains(needle))
    }
}

/// `GET /v1/events`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Events {
    /// Oldest first.
    pub events: Vec<EventRow>,
}

/// One detection alert (`GET /v1/alerts`, the stream).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct AlertRow {
    /// Numbers every alert since the agent started, from 1.
    pub seq: u64,
    pub timestamp: Timestamp,
    pub level: String,
    pub severity: u8,
    pub rule_id: String,
    pub rule_name: String,
    pub description: Option<String>,
    pub author: Vec<String>,
    pub license: Option<String>,
    pub references: Vec<String>,
    pub falsepositives: Vec<String>,
    pub process: Option<ProcessRow>,
    pub parent: Option<ProcessRow>,
    pub ancestry: Vec<AlertAncestor>,
    pub file_path: Option<String>,
    pub destination: Option<Endpoint>,
    pub user: Option<String>,
    /// ECS field name and the value the rule matched on.
    pub matched_fields: Vec<(String, String)>,
    pub count: u64,
    pub first_seen: Timestamp,
}

fn process_row(p: &AlertProcess) -> ProcessRow {
    ProcessRow {
        pid: p.pid,
        name: p.name.clone(),
        executable: p.executable.clone(),
        command_line: p.command_line.clone(),
        entity_id: p.entity_id.clone(),
    }
}

impl AlertRow {
    pub fn of(a: &AlertRecord) -> AlertRow {
        AlertRow {
            seq: a.seq,
            timestamp: a.timestamp,
            level: a.level.clone(),
            severity: a.severity,
            rule_id: a.rule_id.clone(),
            rule_name: a.rule_name.clone(),
            description: a.description.clone(),
            author: a.author.clone(),
            license: a.license.clone(),
            references: a.references.clone(),
            falsepositives: a.falsepositives.clone(),
            process: a.process.as_ref().map(process_row),
            parent: a.parent.as_ref().map(process_row),
            ancestry: a.ancestry.clone(),
            file_path: a.file_path.clone(),
            destination: a.destination.map(|(ip, port)| Endpoint { ip, port }),
            user: a.user.clone(),
            matched_fields: a.matched_fields.clone(),
            count: a.count,
            first_seen: a.first_seen,
        }
    }
}

/// `GET /v1/alerts`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Alerts {
    /// The newest alert's number: ask for `since=` it next time.
    pub last_seq: u64,
    /// Oldest first.
    pub alerts: Vec<AlertRow>,
}

/// `PUT /v1/config`: applied live; saved when the agent has a config file.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ConfigApplied {
    /// The config now in force.
    pub config: edr_config::Config,
    /// The file the change was written to (None: the agent runs without
    /// one, or saving failed; then the change is lost at restart).
    pub saved_to: Option<String>,
    /// Why saving failed, if it did.
    pub save_error: Option<String>,
}

/// `POST /v1/pause`, `POST /v1/resume`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PauseState {
    pub paused: bool,
}

/// One line of `GET /v1/stream` (NDJSON).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "lowercase")]
pub enum StreamItem {
    /// The engine's state, every `interval_ms`.
    Snapshot { snapshot: Box<edr_engine::Snapshot> },
    /// A detection alert, as soon as it is recorded.
    Alert { alert: Box<AlertRow> },
}

/// One line of `GET /v1/stored/stats`: a batch file of the service's data
/// dir, oldest first, measured by decompressing it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct StoredFileStats {
    /// The file's path (under the service's data dir).
    pub file: String,
    pub stored_bytes: u64,
    /// Decompressed bytes.
    pub raw_bytes: u64,
    pub events: u64,
    /// Why the file could not be measured (the sizes are then 0).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
}
