//! The event model: one [`Event`] per observation, serialized as ECS JSON.
//!
//! Field names and types follow the Elastic Common Schema so SIEMs and Sigma
//! pipelines read our batches without a mapping step. Anything ECS has no
//! field for lives under our own `edr.*` namespace.
//!
//! Strings that repeat on every event (host, agent) are shared through `Arc`
//! so building an event never copies them.

use std::fmt;
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use serde::ser::{Serialize, Serializer};

/// The ECS version our field set is checked against (`ecs.version`).
pub const ECS_VERSION: &str = "8.11.0";

/// Which collector produced an event; the unit of per-type counters.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum EventType {
    Process,
    File,
    Network,
}

impl EventType {
    pub const ALL: [EventType; 3] = [EventType::Process, EventType::File, EventType::Network];

    /// Dense index for per-type counter arrays.
    pub const fn index(self) -> usize {
        match self {
            EventType::Process => 0,
            EventType::File => 1,
            EventType::Network => 2,
        }
    }

    pub const fn as_str(self) -> &'static str {
        match self {
            EventType::Process => "process",
            EventType::File => "file",
            EventType::Network => "network",
        }
    }

    /// Parses the `--type` spelling (also the ECS `event.category`).
    pub fn parse(s: &str) -> Option<EventType> {
        EventType::ALL.into_iter().find(|t| t.as_str() == s)
    }
}

impl fmt::Display for EventType {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// `event.action`: what a collector observed. The spellings are stored in
/// every batch and named in `filters.exclude_actions`, so they never change.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Action {
    ProcessStarted,
    ProcessEnded,
    ProcessExec,
    /// A process found running when the collector started.
    ProcessInventory,
    FileCreated,
    FileModified,
    FileDeleted,
    FileRenamed,
    /// A listening socket found when the collector started.
    Listening,
    /// A connection found when the collector started.
    Connected,
    ListenStarted,
    ListenStopped,
    ConnectionOpened,
    ConnectionClosed,
}

impl Action {
    /// Every action, grouped by event type.
    pub const ALL: [Action; 14] = [
        Action::ProcessStarted,
        Action::ProcessEnded,
        Action::ProcessExec,
        Action::ProcessInventory,
        Action::FileCreated,
        Action::FileModified,
        Action::FileDeleted,
        Action::FileRenamed,
        Action::Listening,
        Action::Connected,
        Action::ListenStarted,
        Action::ListenStopped,
        Action::ConnectionOpened,
        Action::ConnectionClosed,
    ];

    /// The spellings of [`Action::ALL`], in the same order.
    pub const NAMES: [&'static str; 14] = {
        let mut out = [""; 14];
        let mut i = 0;
        while i < Action::ALL.len() {
            out[i] = Action::ALL[i].as_str();
            i += 1;
        }
        out
    };

    /// The stored spelling.
    pub const fn as_str(self) -> &'static str {
        match self {
            Action::ProcessStarted => "process-started",
            Action::ProcessEnded => "process-ended",
            Action::ProcessExec => "process-exec",
            Action::ProcessInventory => "process-inventory",
            Action::FileCreated => "file-created",
            Action::FileModified => "file-modified",
            Action::FileDeleted => "file-deleted",
            Action::FileRenamed => "file-renamed",
            Action::Listening => "listening",
            Action::Connected => "connected",
            Action::ListenStarted => "listen-started",
            Action::ListenStopped => "listen-stopped",
            Action::ConnectionOpened => "connection-opened",
            Action::ConnectionClosed => "connection-closed",
        }
    }

    /// The collector that emits this action.
    pub const fn event_type(self) -> EventType {
        match self {
            Action::ProcessStarted
            | Action::ProcessEnded
            | Action::ProcessExec
            | Action::ProcessInventory => EventType::Process,
            Action::FileCreated
            | Action::FileModified
            | Action::FileDeleted
            | Action::FileRenamed => EventType::File,
            Action::Listening
            | Action::Connected
            | Action::ListenStarted
            | Action::ListenStopped
            | Action::ConnectionOpened
            | Action::ConnectionClosed => EventType::Network,
        }
    }

    /// Parses the stored spelling.
    pub fn parse(s: &str) -> Option<Action> {
        Action::ALL.into_iter().find(|a| a.as_str() == s)
    }
}

impl fmt::Display for Action {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl Serialize for Action {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(self.as_str())
    }
}

impl<'de> serde::Deserialize<'de> for Action {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = <std::borrow::Cow<'de, str>>::deserialize(d)?;
        Action::parse(&s).ok_or_else(|| {
            serde::de::Error::custom(format!(
                "unknown event action {s:?}, expected one of {}",
                Action::ALL.map(Action::as_str).join(", ")
            ))
        })
    }
}

/// Milliseconds since the Unix epoch. Serialized as RFC 3339 UTC
/// (`2026-11-25T19:47:15.123Z`), the ECS `date` form every SIEM parses.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Default)]
pub struct Timestamp(pub u64);

impl Timestamp {
    pub fn now() -> Timestamp {
        Timestamp::from(SystemTime::now())
    }

    pub fn as_millis(self) -> u64 {
        self.0
    }

    /// Formats into a fixed 24-byte buffer without allocating.
    pub fn format(self, buf: &mut [u8; 24]) -> &str {
        let secs = self.0 / 1000;
        let millis = (self.0 % 1000) as u32;
        let days = (secs / 86_400) as i64;
        let rem = (secs % 86_400) as u32;
        let (y, m, d) = civil_from_days(days);
        let (hh, mm, ss) = (rem / 3600, (rem / 60) % 60, rem % 60);
        let put = |buf: &mut [u8; 24], at: usize, v: u32, width: usize| {
            let mut v = v;
            for i in (0..width).rev() {
                buf[at + i] = b'0' + (v % 10) as u8;
                v /= 10;
            }
        };
        put(buf, 0, y.clamp(0, 9999) as u32, 4);
        buf[4] = b'-';
        put(buf, 5, m, 2);
        buf[7] = b'-';
        put(buf, 8, d, 2);
        buf[10] = b'T';
        put(buf, 11, hh, 2);
        buf[13] = b':';
        put(buf, 14, mm, 2);
        buf[16] = b':';
        put(buf, 17, ss, 2);
        buf[19] = b'.';
        put(buf, 20, millis, 3);
        buf[23] = b'Z';
        // Every byte written above is ASCII.
        std::str::from_utf8(buf).unwrap_or("1970-01-01T00:00:00.000Z")
    }

    /// `YYYY-MM-DD` of this instant in UTC: the name of its day directory.
    pub fn day(self) -> String {
        let mut buf = [0u8; 24];
        self.format(&mut buf)[..10].to_string()
    }

    /// `YYYYMMDDTHHMMSSmmmZ`: sortable and safe in file names.
    pub fn compact(self) -> String {
        let mut buf = [0u8; 24];
        let s = self.format(&mut buf);
        let mut out = String::with_capacity(19);
        for c in s.chars() {
            if c != '-' && c != ':' && c != '.' {
                out.push(c);
            }
        }
        out
    }
}

impl From<SystemTime> for Timestamp {
    fn from(t: SystemTime) -> Self {
        Timestamp(
            t.duration_since(UNIX_EPOCH)
                .map(|d| d.as_millis() as u64)
                .unwrap_or(0),
        )
    }
}

impl From<Timestamp> for SystemTime {
    fn from(t: Timestamp) -> Self {
        UNIX_EPOCH + Duration::from_millis(t.0)
    }
}

impl Serialize for Timestamp {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        let mut buf = [0u8; 24];
        s.serialize_str(self.format(&mut buf))
    }
}

impl<'de> serde::Deserialize<'de> for Timestamp {
    /// Accepts the RFC 3339 form we write, or milliseconds since the epoch.
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl serde::de::Visitor<'_> for V {
            type Value = Timestamp;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("an RFC 3339 timestamp or milliseconds since the epoch")
            }
            fn visit_u64<E: serde::de::Error>(self, v: u64) -> Result<Timestamp, E> {
                Ok(Timestamp(v))
            }
            fn visit_str<E: serde::de::Error>(self, v: &str) -> Result<Timestamp, E> {
                Timestamp::parse(v).ok_or_else(|| E::custom(format!("bad timestamp {v:?}")))
            }
        }
        d.deserialize_any(V)
    }
}

impl Timestamp {
    /// Parses an RFC 3339 timestamp (as written by [`Timestamp::format`]).
    pub fn parse(s: &str) -> Option<Timestamp> {
        humantime::parse_rfc3339_weak(s.trim_end_matches('Z'))
            .ok()
            .map(Timestamp::from)
    }
}

impl fmt::Display for Timestamp {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mut buf = [0u8; 24];
        f.write_str(self.format(&mut buf))
    }
}

/// Howard Hinnant's days-to-civil algorithm (proleptic Gregorian, UTC).
fn civil_from_days(z: i64) -> (i64, u32, u32) {
    let z = z + 719_468;
    let era = if z >= 0 { z } else { z - 146_096 } / 146_097;
    let doe = (z - era * 146_097) as u64;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let y = yoe as i64 + era * 400;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = (doy - (153 * mp + 2) / 5 + 1) as u32;
    let m = if mp < 10 { mp + 3 } else { mp - 9 } as u32;
    (if m <= 2 { y + 1 } else { y }, m, d)
}

/// `host.*`: identical on every event of a run, so shared.
#[derive(Debug, Clone, serde::Serialize)]
pub struct Host {
    pub name: String,
    pub os: HostOs,
}

#[derive(Debug, Clone, serde::Serialize)]
pub struct HostOs {
    /// ECS `host.os.type`: `linux` or `macos`.
    #[serde(rename = "type")]
    pub kind: &'static str,
    pub kernel: String,
}

impl Host {
    /// Reads the host name and kernel version of the machine we run on.
    pub fn detect() -> Host {
        let name = sysinfo::System::host_name()
            .ok()
            .filter(|n| !n.is_empty())
            .unwrap_or_else(|| "unknown".to_string());
        let kernel = sysinfo::System::kernel_version().unwrap_or_default();
        Host {
            name,
            os: HostOs {
                kind: if cfg!(target_os = "macos") {
                    "macos"
                } else {
                    "linux"
                },
                kernel,
            },
        }
    }
}

/// `agent.*` and `ecs.*`: who wrote the event.
#[derive(Debug, Clone, serde::Serialize)]
pub struct Agent {
    #[serde(rename = "type")]
    pub kind: &'static str,
    pub version: &'static str,
}

impl Default for Agent {
    fn default() -> Self {
        Agent {
            kind: "edr-agent",
            version: env!("CARGO_PKG_VERSION"),
        }
    }
}

#[derive(Debug, Clone, serde::Serialize)]
pub struct Ecs {
    pub version: &'static str,
}

/// What the collectors share with every event they build.
#[derive(Debug, Clone)]
pub struct Origin {
    pub host: Arc<Host>,
    pub agent: Arc<Agent>,
}

impl Origin {
    pub fn detect() -> Origin {
        Origin {
            host: Arc::new(Host::detect()),
            agent: Arc::new(Agent::default()),
        }
    }
}

/// `event.*`: the ECS categorization fields.
#[derive(Debug, Clone, serde::Serialize)]
pub struct EventMeta {
    /// `event` for something that happened, `state` for inventory taken
    /// when a collector starts.
    pub kind: &'static str,
    pub category: &'static [&'static str],
    #[serde(rename = "type")]
    pub types: &'static [&'static str],
    pub action: Action,
    /// Nanoseconds; on `end` events, how long the process or connection lived.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub duration: Option<u64>,
    /// On alerts: the rule's level as a number (ECS `event.severity`).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub severity: Option<u8>,
    /// On alerts: the rule's level on ECS's 0..100 risk scale.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub risk_score: Option<f32>,
}

/// One observation, ready to serialize.
#[derive(Debug, Clone, serde::Serialize)]
pub struct Event {
    #[serde(rename = "@timestamp")]
    pub timestamp: Timestamp,
    pub event: EventMeta,
    pub host: Arc<Host>,
    pub agent: Arc<Agent>,
    pub ecs: Ecs,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub process: Option<Box<Process>>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub file: Option<Box<File>>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub source: Option<Endpoint>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub destination: Option<Endpoint>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub network: Option<Network>,
    /// On alerts: the user the matched process ran as (ECS `user.*`).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub user: Option<User>,
    /// On alerts: the detection rule that matched.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub rule: Option<Box<Rule>>,
    /// On alerts: the ATT&CK tactics and techniques the rule names.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub threat: Option<Box<Threat>>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub edr: Option<Box<EdrExt>>,
}

impl Event {
    /// A bare event of the given categorization; collectors fill the rest.
    pub fn new(origin: &Origin, timestamp: Timestamp, meta: EventMeta) -> Event {
        Event {
            timestamp,
            event: meta,
            host: Arc::clone(&origin.host),
            agent: Arc::clone(&origin.agent),
            ecs: Ecs {
                version: ECS_VERSION,
            },
            process: None,
            file: None,
            source: None,
            destination: None,
            network: None,
            user: None,
            rule: None,
            threat: None,
            edr: None,
        }
    }

    /// The collector type, from `event.category`.
    pub fn event_type(&self) -> EventType {
        match self.event.category.first().copied() {
            Some("file") => EventType::File,
            Some("network") => EventType::Network,
            _ => EventType::Process,
        }
    }
}

/// `process.*`.
#[derive(Debug, Clone, Default, serde::Serialize)]
pub struct Process {
    pub pid: u32,
    pub name: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub executable: Option<String>,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub args: Vec<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub command_line: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub start: Option<Timestamp>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub end: Option<Timestamp>,
    /// On `end` events from an event source: the exit status, or 128 plus
    /// the signal number for a process killed by a signal (as shells
    /// report it).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub exit_code: Option<i64>,
    /// Empty when the process's start time could not be read (it exited
    /// before a file event naming it was read); then it is not stored.
    #[serde(skip_serializing_if = "String::is_empty")]
    pub entity_id: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub parent: Option<ParentProcess>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub user: Option<User>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub hash: Option<Hash>,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub env_vars: Vec<String>,
    /// Where the process was started from (Sigma's `CurrentDirectory`).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub working_directory: Option<String>,
}

/// `process.parent.*`: who started the process, as detection rules match
/// it (Sigma's `ParentImage`, `ParentCommandLine`).
#[derive(Debug, Clone, Default, serde::Serialize)]
pub struct ParentProcess {
    pub pid: u32,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub entity_id: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub executable: Option<String>,
    /// Redacted like the process's own arguments.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub args: Vec<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub command_line: Option<String>,
}

#[derive(Debug, Clone, Default, serde::Serialize)]
pub struct User {
    #[serde(skip_serializing_if = "Option::is_none")]
    pub id: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
}

#[derive(Debug, Clone, Default, serde::Serialize)]
pub struct Hash {
    pub sha256: String,
}

/// `file.*`.
#[derive(Debug, Clone, Default, serde::Serialize)]
pub struct File {
    pub path: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub directory: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub extension: Option<String>,
    /// `file`, `dir` or `symlink`.
    #[serde(rename = "type", skip_serializing_if = "Option::is_none")]
    pub kind: Option<&'static str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub size: Option<u64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub mtime: Option<Timestamp>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub hash: Option<Hash>,
}

/// `source.*` / `destination.*`.
#[derive(Debug, Clone, serde::Serialize)]
pub struct Endpoint {
    pub ip: std::net::IpAddr,
    pub port: u16,
}

/// `network.*`.
#[derive(Debug, Clone, serde::Serialize)]
pub struct Network {
    /// `tcp` or `udp`.
    pub transport: &'static str,
    /// `ipv4` or `ipv6`.
    #[serde(rename = "type")]
    pub kind: &'static str,
    /// ECS `network.direction`: `inbound`, `outbound` or `unknown`.
    pub direction: &'static str,
}

/// Our own namespace, for what ECS has no field for.
#[derive(Debug, Clone, Default, serde::Serialize)]
pub struct EdrExt {
    /// On renames: where the file was before.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub original_path: Option<String>,
    /// Why `file.hash` / `process.hash` is absent although hashing is on:
    /// `too_large`, `vanished`, `unreadable`, `not_regular`, `rate_limited`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub hash_skipped: Option<&'static str>,
    /// TCP state name for network events (`LISTEN`, `ESTABLISHED`, ...).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub socket_state: Option<&'static str>,
    /// How the process was observed: `scan` or `event`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub source: Option<&'static str>,
    /// `partial` when the executable or arguments could not be read (the
    /// process exited first, or the agent may not read it): the event holds
    /// what the source itself reported.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub enrichment: Option<&'static str>,
    /// On alerts: what ECS has no field for.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub alert: Option<Box<AlertExt>>,
}

/// `rule.*` (ECS): the detection rule an alert comes from.
#[derive(Debug, Clone, Default, serde::Serialize)]
pub struct Rule {
    pub id: String,
    pub name: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub description: Option<String>,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub author: Vec<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub license: Option<String>,
    /// The first of the rule's references (all are in
    /// `edr.alert.references`).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub reference: Option<String>,
    /// `builtin`, or the configured rule path the rule was loaded from.
    pub ruleset: String,
    /// The rule's `modified` date, else its `date`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub version: Option<String>,
}

/// `threat.*` (ECS).
#[derive(Debug, Clone, Default, serde::Serialize)]
pub struct Threat {
    pub framework: &'static str,
    #[serde(skip_serializing_if = "ThreatNames::is_empty")]
    pub tactic: ThreatNames,
    #[serde(skip_serializing_if = "ThreatIds::is_empty")]
    pub technique: ThreatIds,
}

/// `threat.tactic.name[]`.
#[derive(Debug, Clone, Default, serde::Serialize)]
pub struct ThreatNames {
    pub name: Vec<String>,
}

impl ThreatNames {
    pub fn is_empty(&self) -> bool {
        self.name.is_empty()
    }
}

/// `threat.technique.id[]`.
#[derive(Debug, Clone, Default, serde::Serialize)]
pub struct ThreatIds {
    pub id: Vec<String>,
}

impl ThreatIds {
    pub fn is_empty(&self) -> bool {
        self.id.is_empty()
    }
}

/// `edr.alert.*`: the parts of an alert ECS has no field for.
#[derive(Debug, Clone, Default, serde::Serialize)]
pub struct AlertExt {
    /// The rule's level: `informational`, `low`, `medium`, `high`, `critical`.
    pub level: &'static str,
    /// Field (ECS name) to the value the rule matched on.
    pub matched_fields: std::collections::BTreeMap<String, String>,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub falsepositives: Vec<String>,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub references: Vec<String>,
    /// Matches this alert stands for: 1, plus the repeats suppressed since
    /// the previous alert of the same rule, program and parent.
    pub count: u64,
    /// When the first of those matches happened.
    pub first_seen: Timestamp,
    /// When the last of them happened (this alert's event).
    pub last_seen: Timestamp,
    /// The processes above the matched one, its parent first (at most 8).
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub ancestors: Vec<AlertAncestor>,
}

/// One process above the one an alert is about.
#[derive(Debug, Clone, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct AlertAncestor {
    pub pid: u32,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub executable: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub command_line: Option<String>,
    pub entity_id: String,
}

/// Derives `process.entity_id` from what identifies a process across its
/// life: host, pid and start time. Deterministic, so start and end events
/// (and restarts of the agent) agree without storing a random id per event.
pub fn entity_id(host: &str, pid: u32, start_ms: u64) -> String {
    // FNV-1a, 64 bit: stable across builds and platforms, unlike SipHash
    // with random keys.
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    let mut feed = |bytes: &[u8]| {
        for b in bytes {
            h ^= u64::from(*b);
            h = h.wrapping_mul(0x0000_0100_0000_01b3);
        }
    };
    feed(host.as_bytes());
    feed(&[0]);
    feed(&pid.to_le_bytes());
    feed(&start_ms.to_le_bytes());
    format!("{h:016x}")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn timestamps_format_as_rfc3339_utc() {
        assert_eq!(Timestamp(0).to_string(), "1970-01-01T00:00:00.000Z");
        // 2026-11-25T19:47:15.123Z
        assert_eq!(
            Timestamp(1_795_636_035_123).to_string(),
            "2026-11-25T19:47:15.123Z"
        );
        assert_eq!(Timestamp(951_782_400_000).day(), "2000-02-29");
        assert_eq!(
            Timestamp(1_795_636_035_123).compact(),
            "20261125T194715123Z"
        );
    }

    #[test]
    fn timestamps_agree_with_humantime() {
        for ms in [1u64, 86_399_999, 1_234_567_890_123, 4_102_444_799_999] {
            let ours = Timestamp(ms).to_string();
            let theirs = humantime::format_rfc3339_millis(UNIX_EPOCH + Duration::from_millis(ms))
                .to_string();
            assert_eq!(ours, theirs);
        }
    }

    #[test]
    fn actions_round_trip_their_stored_spelling() {
        for a in Action::ALL {
            assert_eq!(Action::parse(a.as_str()), Some(a));
            assert_eq!(
                serde_json::to_string(&a).expect("serialize"),
                format!("\"{}\"", a.as_str())
            );
            let back: Action = serde_json::from_str(&format!("\"{a}\"")).expect("deserialize");
            assert_eq!(back, a);
        }
        // `ALL` lists the variants in declaration order, none left out.
        for (i, a) in Action::ALL.into_iter().enumerate() {
            assert_eq!(a as usize, i);
        }
        let spellings: std::collections::BTreeSet<_> =
            Action::ALL.iter().map(|a| a.as_str()).collect();
        assert_eq!(spellings.len(), Action::ALL.len());
        assert_eq!(Action::ProcessInventory.event_type(), EventType::Process);
        assert_eq!(Action::FileRenamed.event_type(), EventType::File);
        assert_eq!(Action::FileModified.as_str(), "file-modified");
        assert_eq!(Action::Listening.event_type(), EventType::Network);
        assert_eq!(Action::parse("file-touched"), None);
        assert!(serde_json::from_str::<Action>("\"file-touched\"").is_err());
    }

    #[test]
    fn entity_id_is_stable_and_distinguishes_pid_reuse() {
        let a = entity_id("h", 42, 1000);
        assert_eq!(a, entity_id("h", 42, 1000));
        assert_ne!(a, entity_id("h", 42, 2000));
        assert_ne!(a, entity_id("other", 42, 1000));
        assert_eq!(a.len(), 16);
    }
}
