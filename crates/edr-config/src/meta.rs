//! One table describing every user-facing config key: its type, allowed
//! range, unit, a one-line help text and whether the app's settings form
//! edits it. Range validation ([`crate::Config::validate`]), the app's form
//! and its hints all read this table, so a range is written down once.

use edr_model::event::Action;
use serde::Serialize;

/// What a key holds.
#[derive(Debug, Clone, Copy, PartialEq, Serialize)]
#[serde(tag = "type", rename_all = "camelCase")]
pub enum Kind {
    /// A whole number (never negative).
    Integer,
    /// A number; fractions allowed.
    Number,
    Bool,
    /// A list of strings; `one_of`, if given, are the only values allowed.
    Strings {
        one_of: Option<&'static [&'static str]>,
    },
    /// One of a fixed set of words.
    Enum {
        values: &'static [&'static str],
    },
    /// Free text (a path).
    Text,
    /// A list of mappings, each checked in code (`detection.exceptions`).
    Records,
}

/// The allowed values of a number. `min_open`: `min` itself is refused.
#[derive(Debug, Clone, Copy, PartialEq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Range {
    pub min: f64,
    pub max: f64,
    pub min_open: bool,
}

/// Where a key appears on the app's settings form.
#[derive(Debug, Clone, Copy, PartialEq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct FormField {
    /// Short label next to the input.
    pub label: &'static str,
    /// Shown under the input after the range, if any (so it starts in
    /// lower case when the key has a range); empty for none.
    pub hint: &'static str,
}

/// One config key.
#[derive(Debug, Clone, Copy, PartialEq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct KeyMeta {
    /// Dotted path, e.g. `agent.max_events_per_batch`.
    pub key: &'static str,
    pub kind: Kind,
    /// `null` is allowed (and means "the built-in choice").
    pub optional: bool,
    /// Checked by [`crate::Config::validate`]; `None` for keys without a
    /// fixed range (see [`CHECKED_IN_CODE`]).
    pub range: Option<Range>,
    /// Unit of a number, empty if none.
    pub unit: &'static str,
    /// One line of help.
    pub doc: &'static str,
    /// On the settings form, with its label.
    pub form: Option<FormField>,
}

impl KeyMeta {
    /// What the range accepts, in the words of a refusal: "an integer from
    /// 1 to 100000". `None` without a range.
    pub fn allowed(&self) -> Option<String> {
        let r = self.range?;
        Some(match (self.kind, r.min_open) {
            (Kind::Integer, _) => format!("an integer from {} to {}", r.min, r.max),
            (_, true) => format!("a number greater than {} and at most {}", r.min, r.max),
            (_, false) => format!("a number from {} to {}", r.min, r.max),
        })
    }

    /// Whether `v` is inside the range (always, without one). NaN and
    /// infinities are outside every range.
    pub fn in_range(&self, v: f64) -> bool {
        let Some(r) = self.range else { return true };
        v.is_finite() && (if r.min_open { v > r.min } else { v >= r.min }) && v <= r.max
    }
}

/// Keys whose values are checked by code in [`crate::Config::validate`]
/// rather than by a range in the table, because the rule is not a range:
///
/// - `watch_paths`: each path non-empty;
/// - `exclude_paths`, `exclude_processes`: each a valid glob;
/// - `exclude_actions`: each one of [`Action::NAMES`] (the table
///   lists them as `one_of`, the check walks the list);
/// - `data_dir`: no NUL byte;
/// - `compression_level`: the range depends on `compression`;
/// - `source`, `compression`, `detection.min_level`: serde refuses other
///   words, naming them;
/// - `detection.rule_paths`: each non-empty, without NUL bytes;
/// - `detection.exceptions`: each names at least one of its keys, and its
///   `executable` is a valid glob (see `detection.rs`);
/// - `api.enabled`: serde takes true, false or auto; `api.socket`: an
///   absolute path that fits a socket address (see `api.rs`);
/// - `shipping.nats.url`: each nats:// or tls://; `stream`,
///   `subject_prefix`: valid NATS names; the secret files exist and are
///   mode 0600, the certificate files exist (see `shipping.rs`).
pub const CHECKED_IN_CODE: &[&str] = &[
    "collectors.file_monitor.watch_paths",
    "collectors.file_monitor.linux_watch_paths",
    "collectors.file_monitor.macos_watch_paths",
    "collectors.file_monitor.source",
    "collectors.file_monitor.exclude_paths",
    "filters.exclude_processes",
    "filters.exclude_actions",
    "storage.local_storage.data_dir",
    "storage.local_storage.compression_level",
    "collectors.process_monitor.source",
    "collectors.network_monitor.source",
    "storage.local_storage.compression",
    "detection.rule_paths",
    "detection.min_level",
    "detection.exceptions",
    "shipping.nats.url",
    "shipping.nats.stream",
    "shipping.nats.subject_prefix",
    "shipping.nats.compression",
    "shipping.nats.credentials_file",
    "shipping.nats.password_file",
    "shipping.nats.token_file",
    "shipping.nats.tls.ca_file",
    "shipping.nats.tls.cert_file",
    "shipping.nats.tls.key_file",
    "api.enabled",
    "api.socket",
];

const fn int(min: u64, max: u64) -> Option<Range> {
    Some(Range {
        min: min as f64,
        max: max as f64,
        min_open: false,
    })
}

const INTERVAL: Option<Range> = int(100, 3_600_000);

const fn key(
    key: &'static str,
    kind: Kind,
    range: Option<Range>,
    unit: &'static str,
    doc: &'static str,
) -> KeyMeta {
    KeyMeta {
        key,
        kind,
        optional: false,
        range,
        unit,
        doc,
        form: None,
    }
}

const fn on_form(mut k: KeyMeta, label: &'static str, hint: &'static str) -> KeyMeta {
    k.form = Some(FormField { label, hint });
    k
}

const fn optional(mut k: KeyMeta) -> KeyMeta {
    k.optional = true;
    k
}

const STRINGS: Kind = Kind::Strings { one_of: None };

/// Every leaf key of the config, in the order of `config/default.yaml`
/// (which is also the form's order and the order of range refusals).
pub const KEYS: &[KeyMeta] = &[
    on_form(
        key("agent.max_events_per_batch", Kind::Integer, int(1, 100_000), "events",
            "A batch file is written once it holds this many events."),
        "Events per batch", ""),
    on_form(
        key("agent.collection_interval_ms", Kind::Integer, INTERVAL, "ms",
            "A batch is written at the latest this long after its first event."),
        "Batch interval (ms)", "a batch is written at the latest this long after its first event"),
    on_form(
        key("agent.adaptive_batching.enabled", Kind::Bool, None, "",
            "The batch size follows the event rate."),
        "Adaptive batching (size follows the event rate; the limits above are then not exact)", ""),
    key("agent.adaptive_batching.min_events", Kind::Integer, int(1, 100_000), "events",
        "A batch smaller than this stays open past collection_interval_ms."),
    key("agent.adaptive_batching.max_interval_ms", Kind::Integer, INTERVAL, "ms",
        "...but is written at the latest this long after its first event."),
    key("agent.adaptive_batching.max_events", Kind::Integer, int(1, 1_000_000), "events",
        "Largest batch on a busy machine."),
    on_form(
        key("collectors.process_monitor.enabled", Kind::Bool, None, "", "Collect process events."),
        "Collect process events", ""),
    on_form(
        key("collectors.process_monitor.scan_interval_ms", Kind::Integer, INTERVAL, "ms",
            "Time between process table scans."),
        "Scan interval (ms)", ""),
    on_form(
        key("collectors.process_monitor.collect_environment", Kind::Bool, None, "",
            "Record each new process's environment (credentials redacted)."),
        "Record environment variables (secrets redacted)", ""),
    on_form(
        key("collectors.process_monitor.calculate_hashes", Kind::Bool, None, "",
            "SHA-256 of each new process's executable."),
        "SHA-256 of executables", ""),
    key("collectors.process_monitor.source", Kind::Enum { values: &["auto", "event", "scan"] }, None, "",
        "Where process starts and ends come from."),
    key("collectors.process_monitor.max_scan_interval_ms", Kind::Integer, INTERVAL, "ms",
        "Adaptive scanning: quiet scans stretch the interval up to this."),
    on_form(
        key("collectors.file_monitor.enabled", Kind::Bool, None, "", "Collect file events."),
        "Collect file events", ""),
    key("collectors.file_monitor.source", Kind::Enum { values: &["auto", "fanotify", "inotify"] }, None, "",
        "Where file changes come from: auto, the kernel's events with the process where permitted \
         (fanotify; eslogger on macOS); fanotify, those or nothing; inotify, inotify/FSEvents only."),
    on_form(
        key("collectors.file_monitor.watch_paths", STRINGS, None, "",
            "Directories (recursively) and files watched on every OS; `~` is the user's home."),
        "Watched folders", "One per line, watched recursively; ~ is your home"),
    key("collectors.file_monitor.linux_watch_paths", STRINGS, None, "",
        "Directories and files watched on Linux only (persistence locations)."),
    key("collectors.file_monitor.macos_watch_paths", STRINGS, None, "",
        "Directories and files watched on macOS only (persistence locations)."),
    on_form(
        key("collectors.file_monitor.exclude_paths", STRINGS, None, "",
            "Glob patterns; matching paths produce no events."),
        "Excluded patterns", "One glob per line, e.g. **/node_modules/**"),
    on_form(
        key("collectors.file_monitor.max_file_size_mb", Kind::Integer, int(1, 10_240), "MiB",
            "Files larger than this are not hashed."),
        "Largest file hashed (MB)", ""),
    on_form(
        key("collectors.file_monitor.calculate_hashes", Kind::Bool, None, "",
            "SHA-256 of created and modified files."),
        "SHA-256 of created and changed files", ""),
    key("collectors.file_monitor.hash_rate_limit_mb_per_sec", Kind::Integer, int(1, 10_240), "MiB/s",
        "At most this much is read per second for hashing."),
    on_form(
        key("collectors.network_monitor.enabled", Kind::Bool, None, "",
            "Collect connections and listeners."),
        "Collect connections and listeners", ""),
    on_form(
        key("collectors.network_monitor.scan_interval_ms", Kind::Integer, INTERVAL, "ms",
            "Time between socket table scans while sockets change."),
        "Scan interval (ms)", ""),
    key("collectors.network_monitor.max_scan_interval_ms", Kind::Integer, INTERVAL, "ms",
        "Adaptive scanning: quiet scans stretch the interval up to this."),
    key("collectors.network_monitor.source", Kind::Enum { values: &["auto", "event", "scan"] }, None, "",
        "Where connections come from (event: eBPF on Linux)."),
    key("filters.coalesce_file_changes_ms", Kind::Integer, int(0, 3_600_000), "ms",
        "Keep one file-modified event per file per this long (0: off)."),
    key("filters.repeat_window_ms", Kind::Integer, int(0, 3_600_000), "ms",
        "Drop an event identical to one stored this recently (0: off)."),
    key("filters.exclude_actions", Kind::Strings { one_of: Some(&Action::NAMES) }, None, "",
        "event.action values never stored."),
    key("filters.exclude_processes", STRINGS, None, "",
        "Glob patterns on process name or executable whose events are not stored."),
    optional(key("storage.local_storage.data_dir", Kind::Text, None, "",
        "Where batches, metrics history and the status file live; null: the platform's data directory.")),
    on_form(
        key("storage.local_storage.compress_events", Kind::Bool, None, "",
            "Compress each batch; otherwise plain .json."),
        "Compress batches (gzip)", ""),
    key("storage.local_storage.compression", Kind::Enum { values: &["gzip", "zstd"] }, None, "",
        "Codec of compressed batches."),
    optional(key("storage.local_storage.compression_level", Kind::Integer, None, "",
        "gzip 1..=9, zstd 1..=19; null: the codec's usual default.")),
    on_form(
        key("storage.retention_days", Kind::Integer, int(1, 3650), "days",
            "Batch files older than this are deleted."),
        "Keep events for (days)", ""),
    on_form(
        key("storage.max_storage_size_gb", Kind::Number,
            Some(Range { min: 0.0, max: 100_000.0, min_open: true }), "GiB",
            "Above this total the oldest batch files are deleted."),
        "Storage cap (GB)", "above it the oldest batches are deleted"),
    on_form(
        key("alerts.max_memory_mb", Kind::Integer, int(1, 1_048_576), "MiB",
            "Alert when the agent's resident memory is above this."),
        "Memory above (MB)", "resident memory of this app, engine included"),
    on_form(
        key("alerts.max_cpu_percent", Kind::Number,
            Some(Range { min: 0.0, max: 1000.0, min_open: true }), "%",
            "Alert when the agent's CPU (percent of one core, 10 s mean) is above this."),
        "CPU above (%)", "10 s mean, % of one core"),
    on_form(
        key("alerts.max_storage_growth_mb_per_day", Kind::Integer, int(1, 10_485_760), "MiB/day",
            "Alert when stored bytes per day, extrapolated from the last hour, are above this."),
        "Storage growth above (MB/day)", "extrapolated from the last hour"),
    on_form(
        key("alerts.min_compression_ratio", Kind::Number,
            Some(Range { min: 0.0, max: 1.0, min_open: false }), "",
            "Alert when stored batches are reduced by less than this (1 - stored/raw)."),
        "Compression below", "size saved (0.8 = 80%)"),
    key("alerts.max_ship_lag_s", Kind::Integer, int(1, 31_536_000), "s",
        "Alert when the oldest batch not yet shipped (shipping.nats) is older than this."),
    key("detection.enabled", Kind::Bool, None, "",
        "Evaluate Sigma rules on every event; a match is stored as an alert."),
    key("detection.builtin_rules", Kind::Bool, None, "",
        "Load the rules built into the agent."),
    key("detection.rule_paths", STRINGS, None, "",
        "Files or directories of Sigma YAML, loaded besides the built-in rules and reloaded when they change."),
    key("detection.min_level", Kind::Enum {
            values: &["informational", "low", "medium", "high", "critical"],
        }, None, "",
        "Rules below this level are not loaded."),
    key("detection.suppress_window_ms", Kind::Integer,
        int(0, crate::detection::MAX_SUPPRESS_WINDOW_MS), "ms",
        "The same rule on the same program and parent within this window is one alert (0: every match)."),
    key("detection.exceptions", Kind::Records, None, "",
        "Matches that raise no alert: entries of rule_id, executable (a glob) and command_line_contains."),
    key("shipping.nats.enabled", Kind::Bool, None, "",
        "Publish every committed batch to a NATS JetStream stream."),
    key("shipping.nats.url", STRINGS, None, "",
        "Server URLs, nats:// or tls:// (a string or a list, for a cluster)."),
    key("shipping.nats.stream", Kind::Text, None, "",
        "The JetStream stream that stores the messages."),
    key("shipping.nats.subject_prefix", Kind::Text, None, "",
        "Subjects are <prefix>.<host>.events and <prefix>.<host>.alerts."),
    key("shipping.nats.create_stream", Kind::Bool, None, "",
        "Create the stream if it is missing; warn if it exists with other settings."),
    key("shipping.nats.stream_max_age_days", Kind::Integer, int(1, 3650), "days",
        "A created stream drops messages older than this."),
    key("shipping.nats.stream_max_gb", Kind::Number,
        Some(Range { min: 0.0, max: 100_000.0, min_open: true }), "GiB",
        "A created stream's size cap."),
    key("shipping.nats.duplicate_window_s", Kind::Integer, int(1, 86_400), "s",
        "The server drops a resent message (same Nats-Msg-Id) within this window."),
    key("shipping.nats.compression", Kind::Enum { values: &["none", "gzip"] }, None, "",
        "Message body encoding."),
    key("shipping.nats.max_unshipped_gb", Kind::Number,
        Some(Range { min: 0.0, max: 100_000.0, min_open: true }), "GiB",
        "Unshipped data is kept past retention up to this; past it the oldest is deleted (a gap)."),
    key("shipping.nats.shutdown_timeout_ms", Kind::Integer, int(0, 600_000), "ms",
        "At shutdown, pending batches keep shipping for at most this long."),
    optional(key("shipping.nats.credentials_file", Kind::Text, None, "",
        "A NATS .creds file (mode 0600).")),
    optional(key("shipping.nats.user", Kind::Text, None, "",
        "User name, with password_file.")),
    optional(key("shipping.nats.password_file", Kind::Text, None, "",
        "A file holding the user's password (mode 0600).")),
    optional(key("shipping.nats.token_file", Kind::Text, None, "",
        "A file holding an authentication token (mode 0600).")),
    optional(key("shipping.nats.tls.ca_file", Kind::Text, None, "",
        "CA certificate(s) the server must chain to; null: the system's roots.")),
    optional(key("shipping.nats.tls.cert_file", Kind::Text, None, "",
        "Client certificate (PEM), with key_file.")),
    optional(key("shipping.nats.tls.key_file", Kind::Text, None, "",
        "The client certificate's private key (PEM, mode 0600).")),
    key("api.enabled", Kind::Enum { values: &["auto", "true", "false"] }, None, "",
        "Serve the local API on a Unix socket: auto (when running as root), true or false."),
    optional(key("api.socket", Kind::Text, None, "",
        "The API's Unix socket; null: /run/edr-agent/api.sock (Linux), /var/run/edr-agent/api.sock (macOS).")),
];

/// The table's entry for a dotted key.
pub fn get(key: &str) -> Option<&'static KeyMeta> {
    KEYS.iter().find(|k| k.key == key)
}

/// The keys on the settings form, in form order.
pub fn form_keys() -> impl Iterator<Item = &'static KeyMeta> {
    KEYS.iter().filter(|k| k.form.is_some())
}
