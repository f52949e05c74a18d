//! Typed configuration: defaults, YAML layers (defaults, preset, file),
//! unknown-key detection with suggestions, and range validation.
//!
//! Every field has a serde default equal to `config/default.yaml`; a test
//! holds the two equal. Paths are kept as the user wrote them (`~/...`) so
//! writing a config back does not bake in one user's home directory; they
//! are expanded only when used ([`expand_home`]).

use std::collections::BTreeSet;
use std::fmt;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};
use serde_norway::{Mapping, Value};

pub mod detection;
pub use detection::{DetectionConfig, DetectionException, RuleLevel};

/// The commented default configuration, shipped inside the binary.
pub const DEFAULT_YAML: &str = include_str!("../../../config/default.yaml");

/// Named partial configurations, merged over the defaults.
pub const PRESETS: &[(&str, &str)] = &[
    (
        "desktop",
        include_str!("../../../config/presets/desktop.yaml"),
    ),
    (
        "dev-server",
        include_str!("../../../config/presets/dev-server.yaml"),
    ),
    (
        "production-server",
        include_str!("../../../config/presets/production-server.yaml"),
    ),
    (
        "low-memory",
        include_str!("../../../config/presets/low-memory.yaml"),
    ),
    (
        "low-cpu",
        include_str!("../../../config/presets/low-cpu.yaml"),
    ),
    (
        "low-storage",
        include_str!("../../../config/presets/low-storage.yaml"),
    ),
];

/// The whole agent configuration.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, Default)]
#[serde(default)]
pub struct Config {
    pub agent: AgentConfig,
    pub collectors: CollectorsConfig,
    pub filters: FiltersConfig,
    pub storage: StorageConfig,
    pub alerts: AlertsConfig,
    pub detection: DetectionConfig,
}

/// `agent.*`: batching.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct AgentConfig {
    /// A batch is written once it holds this many events. 1..=100000.
    pub max_events_per_batch: u32,
    /// A batch is written at the latest this long after its first event,
    /// in milliseconds. 100..=3600000.
    pub collection_interval_ms: u64,
    pub adaptive_batching: AdaptiveBatchingConfig,
}

impl Default for AgentConfig {
    fn default() -> Self {
        AgentConfig {
            max_events_per_batch: 1000,
            collection_interval_ms: 5000,
            adaptive_batching: AdaptiveBatchingConfig::default(),
        }
    }
}

/// `agent.adaptive_batching.*`: the batch size follows the event rate.
///
/// Quiet machine: a batch holding fewer than `min_events` when
/// `collection_interval_ms` has passed stays open, up to `max_interval_ms`,
/// because a batch of a few dozen events compresses to several times the
/// bytes per event of a full one. Busy machine: the size at which a batch
/// is written grows from `max_events_per_batch` to about one second of
/// events, up to `max_events`, so a flood writes (and fsyncs) a few large
/// files a second instead of hundreds of small ones.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct AdaptiveBatchingConfig {
    /// Off (the default): batches are written at exactly
    /// `max_events_per_batch` events or `collection_interval_ms`, as the
    /// settings say. On, the batch size follows the event rate.
    pub enabled: bool,
    /// A batch smaller than this stays open past `collection_interval_ms`.
    /// 1..=100000.
    pub min_events: u32,
    /// ...but is written at the latest this long after its first event, in
    /// milliseconds. 100..=3600000; a value below `collection_interval_ms`
    /// means `collection_interval_ms`.
    pub max_interval_ms: u64,
    /// Largest batch on a busy machine. 1..=1000000; a value below
    /// `max_events_per_batch` means `max_events_per_batch`.
    pub max_events: u32,
}

impl Default for AdaptiveBatchingConfig {
    fn default() -> Self {
        AdaptiveBatchingConfig {
            enabled: false,
            min_events: 500,
            max_interval_ms: 30_000,
            max_events: 50_000,
        }
    }
}

/// `collectors.*`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, Default)]
#[serde(default)]
pub struct CollectorsConfig {
    pub process_monitor: ProcessMonitorConfig,
    pub file_monitor: FileMonitorConfig,
    pub network_monitor: NetworkMonitorConfig,
}

/// `collectors.process_monitor.*`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct ProcessMonitorConfig {
    pub enabled: bool,
    /// Milliseconds between process table scans. 100..=3600000.
    pub scan_interval_ms: u64,
    /// Record each new process's environment (credential-looking values
    /// are redacted). Off by default: environments are large and personal.
    pub collect_environment: bool,
    /// SHA-256 of each new process's executable, cached by path, mtime and
    /// size so a binary is hashed once.
    pub calculate_hashes: bool,
    /// Where process starts and ends come from.
    pub source: ProcessSource,
    /// Adaptive scanning: each scan that finds no start or end doubles the
    /// interval up to this many milliseconds; any change returns it to
    /// `scan_interval_ms`. 100..=3600000; a value at or below
    /// `scan_interval_ms` scans at a fixed interval.
    pub max_scan_interval_ms: u64,
}

impl Default for ProcessMonitorConfig {
    fn default() -> Self {
        ProcessMonitorConfig {
            enabled: true,
            scan_interval_ms: 1000,
            collect_environment: false,
            calculate_hashes: true,
            source: ProcessSource::Auto,
            max_scan_interval_ms: 4000,
        }
    }
}

/// `collectors.process_monitor.source`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "lowercase")]
pub enum ProcessSource {
    /// The kernel's process events where permitted (Linux: the netlink
    /// proc connector, root or CAP_NET_ADMIN; macOS: `eslogger`, root and
    /// Full Disk Access), else polling.
    #[default]
    Auto,
    /// Process events or nothing: if they are not available the process
    /// collector records nothing and says why.
    Event,
    /// Polling only: processes shorter than the scan interval can be
    /// missed.
    Scan,
}

/// `collectors.file_monitor.*`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct FileMonitorConfig {
    pub enabled: bool,
    /// Directories watched recursively. `~` is the user's home. Paths that
    /// do not exist are skipped and reported as unwatched.
    pub watch_paths: Vec<String>,
    /// Glob patterns (`**/node_modules/**`, `*.swp`); matching paths
    /// produce no events.
    pub exclude_paths: Vec<String>,
    /// Files larger than this many MiB are not hashed. 1..=10240.
    pub max_file_size_mb: u64,
    /// SHA-256 of created and modified files, computed off the watcher
    /// thread.
    pub calculate_hashes: bool,
    /// At most this many MiB per second are read for hashing; the rest are
    /// skipped and counted. 1..=10240.
    pub hash_rate_limit_mb_per_sec: u64,
}

impl Default for FileMonitorConfig {
    fn default() -> Self {
        FileMonitorConfig {
            enabled: true,
            watch_paths: [
                "~/Desktop",
                "~/Documents",
                "~/Downloads",
                "~/.ssh",
                "~/.config/autostart",
                "~/Library/LaunchAgents",
            ]
            .into_iter()
            .map(String::from)
            .collect(),
            exclude_paths: [
                "**/.git/**",
                "**/node_modules/**",
                "**/.cache/**",
                "**/*.swp",
                "**/*~",
            ]
            .into_iter()
            .map(String::from)
            .collect(),
            max_file_size_mb: 100,
            calculate_hashes: true,
            hash_rate_limit_mb_per_sec: 64,
        }
    }
}

/// `collectors.network_monitor.*`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct NetworkMonitorConfig {
    pub enabled: bool,
    /// Milliseconds between socket table scans while sockets open and
    /// close. 100..=3600000.
    pub scan_interval_ms: u64,
    /// Adaptive scanning: each scan that finds no change doubles the
    /// interval up to this many milliseconds; any change returns it to
    /// `scan_interval_ms`. 100..=3600000; a value at or below
    /// `scan_interval_ms` scans at a fixed interval.
    pub max_scan_interval_ms: u64,
}

impl Default for NetworkMonitorConfig {
    fn default() -> Self {
        NetworkMonitorConfig {
            enabled: true,
            scan_interval_ms: 1000,
            max_scan_interval_ms: 4000,
        }
    }
}

/// `filters.*`: events removed between the queue and the batch file,
/// counted as filtered (per type) in `edr-agent status`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct FiltersConfig {
    /// Keep one `file-modified` event per file per this many milliseconds:
    /// an editor's save or a download in progress reports the first change
    /// of each window, not every write. A creation, deletion or rename of
    /// the file starts a new window. 0 (off)..=3600000.
    pub coalesce_file_changes_ms: u64,
    /// Drop an event identical to one stored within this many milliseconds
    /// (every field but `@timestamp`). 0 (off)..=3600000.
    pub repeat_window_ms: u64,
    /// `event.action` values never stored, e.g. `connection-closed`.
    pub exclude_actions: Vec<String>,
    /// Glob patterns on `process.name` or `process.executable`: process
    /// events of matching processes, and network events they own, are not
    /// stored.
    pub exclude_processes: Vec<String>,
}

impl Default for FiltersConfig {
    fn default() -> Self {
        FiltersConfig {
            coalesce_file_changes_ms: 1000,
            repeat_window_ms: 10_000,
            exclude_actions: Vec::new(),
            exclude_processes: Vec::new(),
        }
    }
}

/// Every `event.action` the collectors emit, for validating
/// `filters.exclude_actions`.
pub const EVENT_ACTIONS: &[&str] = &[
    "process-started",
    "process-ended",
    "process-exec",
    "process-inventory",
    "file-created",
    "file-modified",
    "file-deleted",
    "file-renamed",
    "listening",
    "connected",
    "listen-started",
    "listen-stopped",
    "connection-opened",
    "connection-closed",
];

/// `storage.*`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct StorageConfig {
    pub local_storage: LocalStorageConfig,
    /// Batch files older than this many days are deleted. 1..=3650.
    pub retention_days: u32,
    /// When the batch files total more than this many GiB, the oldest are
    /// deleted. Fractions allowed. (0, 100000].
    pub max_storage_size_gb: f64,
}

impl Default for StorageConfig {
    fn default() -> Self {
        StorageConfig {
            local_storage: LocalStorageConfig::default(),
            retention_days: 30,
            max_storage_size_gb: 10.0,
        }
    }
}

/// `storage.local_storage.*`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct LocalStorageConfig {
    /// Where batches, metrics history and the status file live. Empty or
    /// null: the platform's per-user data directory
    /// (`~/.local/share/edr-agent`, `~/Library/Application Support/edr-agent`).
    pub data_dir: Option<String>,
    /// Compress each batch (see `compression`); otherwise plain `.json`.
    pub compress_events: bool,
    /// `gzip` (`.json.gz`, readable by every tool) or `zstd` (`.json.zst`:
    /// faster and smaller; needs `zstd` or a recent library to read).
    pub compression: Compression,
    /// gzip 1..=9, zstd 1..=19; null: the codec's usual default (gzip 6,
    /// zstd 3).
    pub compression_level: Option<u32>,
}

impl Default for LocalStorageConfig {
    fn default() -> Self {
        LocalStorageConfig {
            data_dir: None,
            compress_events: true,
            compression: Compression::Gzip,
            compression_level: None,
        }
    }
}

/// `storage.local_storage.compression`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Compression {
    Gzip,
    Zstd,
}

impl Compression {
    /// The levels a codec accepts and the one used when none is set.
    pub fn levels(self) -> (u32, u32, u32) {
        match self {
            Compression::Gzip => (1, 9, 6),
            Compression::Zstd => (1, 19, 3),
        }
    }
}

/// `alerts.*`: thresholds on the agent's own measurements.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct AlertsConfig {
    /// Resident memory of the agent, MiB. 1..=1048576.
    pub max_memory_mb: u64,
    /// CPU of the agent, percent of one core, averaged over 10 s. (0, 1000].
    pub max_cpu_percent: f64,
    /// Stored bytes per day, extrapolated from the last hour, MiB. 1..=10485760.
    pub max_storage_growth_mb_per_day: u64,
    /// Minimum size reduction of stored batches (1 - stored/raw). [0, 1].
    pub min_compression_ratio: f64,
}

impl Default for AlertsConfig {
    fn default() -> Self {
        AlertsConfig {
            max_memory_mb: 200,
            max_cpu_percent: 20.0,
            max_storage_growth_mb_per_day: 1024,
            min_compression_ratio: 0.80,
        }
    }
}

/// One rejected value.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct FieldError {
    /// Dotted key path, e.g. `agent.max_events_per_batch`.
    pub key: String,
    /// The rejected value as the user wrote it.
    pub value: String,
    /// What would be accepted.
    pub allowed: String,
}

impl fmt::Display for FieldError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "`{}` = {} is not allowed: {}",
            self.key, self.value, self.allowed
        )
    }
}

/// A key no config struct has.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UnknownKey {
    pub key: String,
    pub suggestion: Option<String>,
}

impl fmt::Display for UnknownKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "unknown key `{}`", self.key)?;
        if let Some(s) = &self.suggestion {
            write!(f, " (did you mean `{s}`?)")?;
        }
        Ok(())
    }
}

fn join_lines<T: fmt::Display>(items: &[T]) -> String {
    items
        .iter()
        .map(|i| i.to_string())
        .collect::<Vec<_>>()
        .join("; ")
}

/// Why a configuration was refused. `origin` names the file or preset.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("cannot read config file {}: {source}", path.display())]
    Read {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("cannot write config file {}: {source}", path.display())]
    Write {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("{origin}: invalid YAML{location}: {message}")]
    Syntax {
        origin: String,
        location: String,
        message: String,
    },
    #[error("{origin}: {}", join_lines(keys))]
    UnknownKeys {
        origin: String,
        keys: Vec<UnknownKey>,
    },
    #[error("{origin}: `{key}`: {message}")]
    Type {
        origin: String,
        key: String,
        message: String,
    },
    #[error("{origin}: {}", join_lines(errors))]
    Invalid {
        origin: String,
        errors: Vec<FieldError>,
    },
    #[error("unknown preset `{name}`: expected one of {}{}", preset_names().join(", "), suggestion.as_ref().map(|s| format!(" (did you mean `{s}`?)")).unwrap_or_default())]
    UnknownPreset {
        name: String,
        suggestion: Option<String>,
    },
}

impl ConfigError {
    /// Per-field errors, for a settings form that shows each next to its
    /// field. Unknown keys and type errors map to their key too.
    pub fn field_errors(&self) -> Vec<FieldError> {
        match self {
            ConfigError::Invalid { errors, .. } => errors.clone(),
            ConfigError::Type { key, message, .. } => vec![FieldError {
                key: key.clone(),
                value: String::new(),
                allowed: message.clone(),
            }],
            ConfigError::UnknownKeys { keys, .. } => keys
                .iter()
                .map(|k| FieldError {
                    key: k.key.clone(),
                    value: String::new(),
                    allowed: k.to_string(),
                })
                .collect(),
            _ => Vec::new(),
        }
    }
}

pub fn preset_names() -> Vec<&'static str> {
    PRESETS.iter().map(|(n, _)| *n).collect()
}

/// The YAML text of a named preset.
pub fn preset(name: &str) -> Result<&'static str, ConfigError> {
    PRESETS
        .iter()
        .find(|(n, _)| *n == name)
        .map(|(_, y)| *y)
        .ok_or_else(|| ConfigError::UnknownPreset {
            name: name.to_string(),
            suggestion: nearest(name, preset_names().into_iter()),
        })
}

/// A source of configuration text, applied in order over the defaults.
#[derive(Debug, Clone)]
pub struct Layer {
    /// Shown in errors: a file path or `preset desktop`.
    pub origin: String,
    pub yaml: String,
}

impl Layer {
    pub fn from_file(path: &Path) -> Result<Layer, ConfigError> {
        let yaml = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
            path: path.to_path_buf(),
            source,
        })?;
        Ok(Layer {
            origin: path.display().to_string(),
            yaml,
        })
    }

    pub fn preset(name: &str) -> Result<Layer, ConfigError> {
        Ok(Layer {
            origin: format!("preset {name}"),
            yaml: preset(name)?.to_string(),
        })
    }

    pub fn text(origin: impl Into<String>, yaml: impl Into<String>) -> Layer {
        Layer {
            origin: origin.into(),
            yaml: yaml.into(),
        }
    }
}

impl Config {
    /// Builds a config from layers merged over the defaults, then validates
    /// it. Errors name the layer that introduced the problem.
    pub fn load(layers: &[Layer]) -> Result<Config, ConfigError> {
        let valid = valid_keys();
        let mut merged = Value::Mapping(Mapping::new());
        let mut config = Config::default();
        let mut last_origin = "defaults".to_string();
        for layer in layers {
            let value = parse_yaml(&layer.origin, &layer.yaml)?;
            let mut unknown = Vec::new();
            collect_unknown(&value, "", &valid, &mut unknown);
            if !unknown.is_empty() {
                return Err(ConfigError::UnknownKeys {
                    origin: layer.origin.clone(),
                    keys: unknown,
                });
            }
            merge(&mut merged, value);
            config = deserialize(&layer.origin, merged.clone())?;
            last_origin = layer.origin.clone();
        }
        config.validate_as(&last_origin)?;
        Ok(config)
    }

    /// Loads one file over the defaults.
    pub fn from_file(path: &Path) -> Result<Config, ConfigError> {
        Config::load(&[Layer::from_file(path)?])
    }

    /// Parses YAML text over the defaults (used by the UI and tests).
    pub fn from_yaml(origin: &str, yaml: &str) -> Result<Config, ConfigError> {
        Config::load(&[Layer::text(origin, yaml)])
    }

    /// Checks every value against its allowed range.
    pub fn validate(&self) -> Result<(), ConfigError> {
        self.validate_as("config")
    }

    fn validate_as(&self, origin: &str) -> Result<(), ConfigError> {
        let mut errors = Vec::new();
        let mut int = |key: &str, v: u64, lo: u64, hi: u64| {
            if v < lo || v > hi {
                errors.push(FieldError {
                    key: key.to_string(),
                    value: v.to_string(),
                    allowed: format!("an integer from {lo} to {hi}"),
                });
            }
        };
        int(
            "agent.max_events_per_batch",
            u64::from(self.agent.max_events_per_batch),
            1,
            100_000,
        );
        int(
            "agent.collection_interval_ms",
            self.agent.collection_interval_ms,
            100,
            3_600_000,
        );
        let c = &self.collectors;
        int(
            "collectors.process_monitor.scan_interval_ms",
            c.process_monitor.scan_interval_ms,
            100,
            3_600_000,
        );
        int(
            "collectors.network_monitor.scan_interval_ms",
            c.network_monitor.scan_interval_ms,
            100,
            3_600_000,
        );
        int(
            "collectors.process_monitor.max_scan_interval_ms",
            c.process_monitor.max_scan_interval_ms,
            100,
            3_600_000,
        );
        int(
            "collectors.network_monitor.max_scan_interval_ms",
            c.network_monitor.max_scan_interval_ms,
            100,
            3_600_000,
        );
        let ab = &self.agent.adaptive_batching;
        int(
            "agent.adaptive_batching.min_events",
            u64::from(ab.min_events),
            1,
            100_000,
        );
        int(
            "agent.adaptive_batching.max_interval_ms",
            ab.max_interval_ms,
            100,
            3_600_000,
        );
        int(
            "agent.adaptive_batching.max_events",
            u64::from(ab.max_events),
            1,
            1_000_000,
        );
        let f = &self.filters;
        int(
            "filters.coalesce_file_changes_ms",
            f.coalesce_file_changes_ms,
            0,
            3_600_000,
        );
        int("filters.repeat_window_ms", f.repeat_window_ms, 0, 3_600_000);
        int(
            "collectors.file_monitor.max_file_size_mb",
            c.file_monitor.max_file_size_mb,
            1,
            10_240,
        );
        int(
            "collectors.file_monitor.hash_rate_limit_mb_per_sec",
            c.file_monitor.hash_rate_limit_mb_per_sec,
            1,
            10_240,
        );
        int(
            "storage.retention_days",
            u64::from(self.storage.retention_days),
            1,
            3650,
        );
        int(
            "alerts.max_memory_mb",
            self.alerts.max_memory_mb,
            1,
            1_048_576,
        );
        int(
            "alerts.max_storage_growth_mb_per_day",
            self.alerts.max_storage_growth_mb_per_day,
            1,
            10_485_760,
        );
        let mut float = |key: &str, v: f64, lo: f64, lo_open: bool, hi: f64| {
            let ok = v.is_finite() && (if lo_open { v > lo } else { v >= lo }) && v <= hi;
            if !ok {
                errors.push(FieldError {
                    key: key.to_string(),
                    value: v.to_string(),
                    allowed: if lo_open {
                        format!("a number greater than {lo} and at most {hi}")
                    } else {
                        format!("a number from {lo} to {hi}")
                    },
                });
            }
        };
        float(
            "storage.max_storage_size_gb",
            self.storage.max_storage_size_gb,
            0.0,
            true,
            100_000.0,
        );
        float(
            "alerts.max_cpu_percent",
            self.alerts.max_cpu_percent,
            0.0,
            true,
            1000.0,
        );
        float(
            "alerts.min_compression_ratio",
            self.alerts.min_compression_ratio,
            0.0,
            false,
            1.0,
        );
        for (i, p) in c.file_monitor.watch_paths.iter().enumerate() {
            if p.trim().is_empty() {
                errors.push(FieldError {
                    key: format!("collectors.file_monitor.watch_paths[{i}]"),
                    value: format!("{p:?}"),
                    allowed: "a non-empty directory path".to_string(),
                });
            }
        }
        let ls = &self.storage.local_storage;
        if let Some(level) = ls.compression_level {
            let (lo, hi, _) = ls.compression.levels();
            if level < lo || level > hi {
                errors.push(FieldError {
                    key: "storage.local_storage.compression_level".to_string(),
                    value: level.to_string(),
                    allowed: format!(
                        "an integer from {lo} to {hi} for {}, or null",
                        serde_norway::to_string(&ls.compression)
                            .unwrap_or_default()
                            .trim()
                    ),
                });
            }
        }
        for (i, a) in self.filters.exclude_actions.iter().enumerate() {
            if !EVENT_ACTIONS.contains(&a.as_str()) {
                errors.push(FieldError {
                    key: format!("filters.exclude_actions[{i}]"),
                    value: format!("{a:?}"),
                    allowed: format!("one of {}", EVENT_ACTIONS.join(", ")),
                });
            }
        }
        for (i, p) in self.filters.exclude_processes.iter().enumerate() {
            if let Err(e) = globset::Glob::new(p) {
                errors.push(FieldError {
                    key: format!("filters.exclude_processes[{i}]"),
                    value: format!("{p:?}"),
                    allowed: format!("a glob pattern ({})", e.kind()),
                });
            }
        }
        for (i, p) in c.file_monitor.exclude_paths.iter().enumerate() {
            if let Err(e) = globset::Glob::new(p) {
                errors.push(FieldError {
                    key: format!("collectors.file_monitor.exclude_paths[{i}]"),
                    value: format!("{p:?}"),
                    allowed: format!("a glob pattern ({})", e.kind()),
                });
            }
        }
        if let Some(d) = &self.storage.local_storage.data_dir {
            if d.contains('\0') {
                errors.push(FieldError {
                    key: "storage.local_storage.data_dir".to_string(),
                    value: format!("{d:?}"),
                    allowed: "a directory path without NUL bytes".to_string(),
                });
            }
        }
        self.detection.validate(&mut errors);
        if errors.is_empty() {
            Ok(())
        } else {
            Err(ConfigError::Invalid {
                origin: origin.to_string(),
                errors,
            })
        }
    }

    /// The config as YAML (every key, no comments).
    pub fn to_yaml(&self) -> String {
        serde_norway::to_string(self).unwrap_or_default()
    }

    /// Writes the config to `path` atomically (temporary file, fsync,
    /// rename), readable only by its owner: a crash or a full disk leaves
    /// the previous file intact.
    pub fn save(&self, path: &Path) -> Result<(), ConfigError> {
        use std::io::Write;
        use std::os::unix::fs::OpenOptionsExt;
        let werr = |source| ConfigError::Write {
            path: path.to_path_buf(),
            source,
        };
        if let Some(dir) = path.parent() {
            std::fs::create_dir_all(dir).map_err(werr)?;
        }
        let name = path
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_else(|| "config.yaml".into());
        let tmp = path.with_file_name(format!(".{name}.tmp"));
        let text = format!(
            "# edr-agent configuration (written by edr-agent; see `edr-agent config default` for every key with comments)\n{}",
            self.to_yaml()
        );
        let write = || -> std::io::Result<()> {
            let mut f = std::fs::OpenOptions::new()
                .write(true)
                .create(true)
                .truncate(true)
                .mode(0o600)
                .open(&tmp)?;
            // `mode` only applies to a new file; a temporary left by an
            // interrupted save keeps whatever mode it had.
            f.set_permissions(std::os::unix::fs::PermissionsExt::from_mode(0o600))?;
            f.write_all(text.as_bytes())?;
            f.sync_all()?;
            std::fs::rename(&tmp, path)
        };
        write().map_err(|e| {
            let _ = std::fs::remove_file(&tmp);
            werr(e)
        })
    }

    /// The data directory, resolved: the configured one with `~` expanded,
    /// or the platform's per-user data directory.
    pub fn data_dir(&self) -> PathBuf {
        match self.storage.local_storage.data_dir.as_deref() {
            Some(d) if !d.trim().is_empty() => expand_home(d),
            _ => default_data_dir(),
        }
    }

    /// The storage cap in bytes.
    pub fn max_storage_bytes(&self) -> u64 {
        (self.storage.max_storage_size_gb * 1024.0 * 1024.0 * 1024.0) as u64
    }
}

/// Where a running agent's config comes from, so an edit of the file can be
/// re-read with the same preset and overrides.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct ConfigSource {
    pub preset: Option<String>,
    pub file: Option<PathBuf>,
    /// Overrides `storage.local_storage.data_dir` (the `--data-dir` flag).
    pub data_dir: Option<PathBuf>,
}

impl ConfigSource {
    /// Defaults, then the preset, then the file, then the override.
    pub fn load(&self) -> Result<Config, ConfigError> {
        let mut layers = Vec::new();
        if let Some(p) = &self.preset {
            layers.push(Layer::preset(p)?);
        }
        if let Some(f) = &self.file {
            layers.push(Layer::from_file(f)?);
        }
        let mut config = Config::load(&layers)?;
        if let Some(d) = &self.data_dir {
            config.storage.local_storage.data_dir = Some(d.display().to_string());
        }
        Ok(config)
    }
}

/// The platform's per-user data directory for the agent.
pub fn default_data_dir() -> PathBuf {
    dirs::data_dir()
        .map(|d| d.join("edr-agent"))
        .unwrap_or_else(|| PathBuf::from("/var/lib/edr-agent"))
}

/// The platform's per-user config file path for the agent (used by the app).
pub fn default_config_file() -> PathBuf {
    dirs::config_dir()
        .map(|d| d.join("edr-agent").join("config.yaml"))
        .unwrap_or_else(|| PathBuf::from("/etc/edr-agent/config.yaml"))
}

/// Expands a leading `~` to the home directory.
pub fn expand_home(p: &str) -> PathBuf {
    if p == "~" {
        return dirs::home_dir().unwrap_or_else(|| PathBuf::from("/"));
    }
    if let Some(rest) = p.strip_prefix("~/") {
        if let Some(home) = dirs::home_dir() {
            return home.join(rest);
        }
    }
    PathBuf::from(p)
}

fn parse_yaml(origin: &str, yaml: &str) -> Result<Value, ConfigError> {
    let value: Value = serde_norway::from_str(yaml).map_err(|e| ConfigError::Syntax {
        origin: origin.to_string(),
        location: e
            .location()
            .map(|l| format!(" at line {}, column {}", l.line(), l.column()))
            .unwrap_or_default(),
        message: e.to_string(),
    })?;
    match value {
        // An empty file (or one holding only comments) means "no changes".
        Value::Null => Ok(Value::Mapping(Mapping::new())),
        Value::Mapping(_) => Ok(value),
        other => Err(ConfigError::Type {
            origin: origin.to_string(),
            key: "(top level)".to_string(),
            message: format!(
                "expected a mapping of sections (agent, collectors, filters, storage, alerts), found {}",
                kind_of(&other)
            ),
        }),
    }
}

fn kind_of(v: &Value) -> &'static str {
    match v {
        Value::Null => "null",
        Value::Bool(_) => "a boolean",
        Value::Number(_) => "a number",
        Value::String(_) => "a string",
        Value::Sequence(_) => "a list",
        Value::Mapping(_) => "a mapping",
        Value::Tagged(_) => "a tagged value",
    }
}

fn deserialize(origin: &str, value: Value) -> Result<Config, ConfigError> {
    serde_path_to_error::deserialize(value).map_err(|e| {
        let key = e.path().to_string();
        ConfigError::Type {
            origin: origin.to_string(),
            key: if key == "." {
                "(top level)".into()
            } else {
                key
            },
            message: plain_types(&e.into_inner().to_string()),
        }
    })
}

/// Serde names Rust types (`u64`); users wrote YAML.
fn plain_types(message: &str) -> String {
    message
        .replace("expected u64", "expected a whole number")
        .replace("expected u32", "expected a whole number")
        .replace("expected f64", "expected a number")
}

/// Every dotted key path a config may contain, from the defaults' shape.
/// Leaves and sections both count.
fn valid_keys() -> BTreeSet<String> {
    let mut out = BTreeSet::new();
    if let Ok(v) = serde_norway::to_value(Config::default()) {
        fn walk(v: &Value, prefix: &str, out: &mut BTreeSet<String>) {
            if let Value::Mapping(m) = v {
                for (k, child) in m {
                    if let Some(k) = k.as_str() {
                        let path = join_key(prefix, k);
                        walk(child, &path, out);
                        out.insert(path);
                    }
                }
            }
        }
        walk(&v, "", &mut out);
    }
    out
}

/// Whether a valid key is a section (a mapping in the defaults).
fn is_section(valid: &BTreeSet<String>, path: &str) -> bool {
    let prefix = format!("{path}.");
    valid
        .range(prefix.clone()..)
        .next()
        .is_some_and(|k| k.starts_with(&prefix))
}

fn join_key(prefix: &str, k: &str) -> String {
    if prefix.is_empty() {
        k.to_string()
    } else {
        format!("{prefix}.{k}")
    }
}

fn collect_unknown(v: &Value, prefix: &str, valid: &BTreeSet<String>, out: &mut Vec<UnknownKey>) {
    let Value::Mapping(m) = v else { return };
    for (k, child) in m {
        let name = match k {
            Value::String(s) => s.clone(),
            other => serde_norway::to_string(other)
                .unwrap_or_default()
                .trim()
                .to_string(),
        };
        let path = join_key(prefix, &name);
        if valid.contains(&path) {
            if is_section(valid, &path) {
                collect_unknown(child, &path, valid, out);
            }
            continue;
        }
        // Prefer a sibling (a typo), then any key (a misplaced one).
        let siblings = valid
            .iter()
            .filter(|k| k.rsplit_once('.').map(|(p, _)| p).unwrap_or("") == prefix);
        let suggestion =
            nearest(&path, siblings.map(String::as_str)).or_else(|| nearest_by_leaf(&name, valid));
        out.push(UnknownKey {
            key: path,
            suggestion,
        });
    }
}

/// The candidate closest to `word`, if it is close enough to be a likely typo.
fn nearest<'a>(word: &str, candidates: impl Iterator<Item = &'a str>) -> Option<String> {
    candidates
        .map(|c| (strsim::jaro_winkler(word, c), c))
        .filter(|(score, _)| *score >= 0.85)
        .max_by(|a, b| a.0.total_cmp(&b.0))
        .map(|(_, c)| c.to_string())
}

/// A valid key whose last segment matches `leaf` closely: catches a right
/// key in the wrong section (`retention_days` at the top level).
fn nearest_by_leaf(leaf: &str, valid: &BTreeSet<String>) -> Option<String> {
    valid
        .iter()
        .map(|k| {
            let last = k.rsplit('.').next().unwrap_or(k);
            (strsim::jaro_winkler(leaf, last), k)
        })
        .filter(|(score, _)| *score >= 0.9)
        .max_by(|a, b| a.0.total_cmp(&b.0))
        .map(|(_, k)| k.clone())
}

/// Deep merge: mappings merge key by key; anything else is replaced.
fn merge(base: &mut Value, over: Value) {
    match (base, over) {
        (Value::Mapping(b), Value::Mapping(o)) => {
            for (k, v) in o {
                match b.get_mut(&k) {
                    Some(existing) => merge(existing, v),
                    None => {
                        b.insert(k, v);
                    }
                }
            }
        }
        (slot, v) => *slot = v,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn default_yaml_equals_builtin_defaults() {
        let parsed: Config = serde_norway::from_str(DEFAULT_YAML).expect("default.yaml parses");
        assert_eq!(parsed, Config::default());
        // And through the strict loader (unknown keys, validation).
        assert_eq!(
            Config::from_yaml("default.yaml", DEFAULT_YAML).expect("loads"),
            Config::default()
        );
    }

    #[test]
    fn default_yaml_names_every_key() {
        let v: Value = serde_norway::from_str(DEFAULT_YAML).expect("parses");
        let mut found = BTreeSet::new();
        fn walk(v: &Value, prefix: &str, out: &mut BTreeSet<String>) {
            if let Value::Mapping(m) = v {
                for (k, child) in m {
                    let path = join_key(prefix, k.as_str().unwrap_or_default());
                    walk(child, &path, out);
                    out.insert(path);
                }
            }
        }
        walk(&v, "", &mut found);
        assert_eq!(found, valid_keys());
    }

    #[test]
    fn every_preset_loads_and_differs_from_defaults() {
        for name in preset_names() {
            let c = Config::load(&[Layer::preset(name).expect("exists")])
                .unwrap_or_else(|e| panic!("preset {name}: {e}"));
            assert_ne!(c, Config::default(), "preset {name} changes nothing");
        }
    }

    #[test]
    fn later_layers_override_earlier_ones() {
        let c = Config::load(&[
            Layer::preset("low-memory").expect("exists"),
            Layer::text("file", "agent:\n  max_events_per_batch: 42\n"),
        ])
        .expect("loads");
        assert_eq!(c.agent.max_events_per_batch, 42);
        // From the preset, untouched by the file.
        assert_eq!(c.agent.collection_interval_ms, 10_000);
    }

    #[test]
    fn typo_gets_a_suggestion() {
        let e = Config::from_yaml("f.yaml", "agent:\n  max_event_per_batch: 10\n").unwrap_err();
        assert_eq!(
            e.to_string(),
            "f.yaml: unknown key `agent.max_event_per_batch` (did you mean `agent.max_events_per_batch`?)"
        );
    }

    #[test]
    fn misplaced_key_gets_its_real_place() {
        let e = Config::from_yaml("f.yaml", "retention_days: 3\n").unwrap_err();
        assert!(
            e.to_string()
                .contains("did you mean `storage.retention_days`"),
            "{e}"
        );
    }

    #[test]
    fn unknown_preset_suggests() {
        let e = preset("low-mem").unwrap_err();
        assert!(e.to_string().contains("did you mean `low-memory`"), "{e}");
    }

    #[test]
    fn empty_text_is_the_defaults() {
        assert_eq!(Config::from_yaml("e", "").expect("ok"), Config::default());
        assert_eq!(
            Config::from_yaml("e", "# only a comment\n").expect("ok"),
            Config::default()
        );
    }

    #[test]
    fn yaml_round_trip_preserves_config() {
        let c = Config::load(&[Layer::preset("production-server").expect("exists")]).expect("ok");
        let back = Config::from_yaml("rt", &c.to_yaml()).expect("round trip");
        assert_eq!(back, c);
    }

    #[test]
    fn readme_documents_every_key() {
        let readme = include_str!("../../../README.md");
        for key in valid_keys() {
            if is_section(&valid_keys(), &key) {
                continue;
            }
            assert!(
                readme.contains(&format!("`{key}`")),
                "README.md's config table lacks `{key}`"
            );
        }
    }

    #[test]
    fn process_source_takes_one_of_three_values() {
        let c = Config::from_yaml(
            "f.yaml",
            "collectors:\n  process_monitor:\n    source: scan\n",
        )
        .expect("valid");
        assert_eq!(c.collectors.process_monitor.source, ProcessSource::Scan);
        let e = Config::from_yaml(
            "f.yaml",
            "collectors:\n  process_monitor:\n    source: ebpf\n",
        )
        .unwrap_err();
        let text = e.to_string();
        assert!(text.contains("collectors.process_monitor.source"), "{text}");
        assert!(text.contains("`auto`, `event`, `scan`"), "{text}");
    }

    #[test]
    fn new_keys_are_range_checked_with_their_key() {
        let e = Config::from_yaml(
            "f.yaml",
            "storage:\n  local_storage:\n    compression: zstd\n    compression_level: 20\n\
             filters:\n  exclude_actions: [file-touched]\n  exclude_processes: ['[']\n\
             agent:\n  adaptive_batching:\n    min_events: 0\n",
        )
        .unwrap_err();
        let keys: Vec<String> = e.field_errors().into_iter().map(|f| f.key).collect();
        assert_eq!(
            keys,
            [
                "agent.adaptive_batching.min_events",
                "storage.local_storage.compression_level",
                "filters.exclude_actions[0]",
                "filters.exclude_processes[0]",
            ],
            "{e}"
        );
        assert!(e.to_string().contains("from 1 to 19 for zstd"), "{e}");
        // Level 9 is fine for gzip and for zstd.
        for codec in ["gzip", "zstd"] {
            let c = Config::from_yaml(
                "f",
                &format!("storage:\n  local_storage:\n    compression: {codec}\n    compression_level: 9\n"),
            )
            .expect("valid");
            assert_eq!(c.storage.local_storage.compression_level, Some(9));
        }
        let e = Config::from_yaml("f", "storage:\n  local_storage:\n    compression: lz4\n")
            .unwrap_err();
        assert!(
            e.to_string().contains("storage.local_storage.compression")
                && e.to_string().contains("zstd"),
            "{e}"
        );
    }

    #[test]
    fn home_expansion() {
        let home = dirs::home_dir().expect("home");
        assert_eq!(expand_home("~/x/y"), home.join("x/y"));
        assert_eq!(expand_home("/abs"), PathBuf::from("/abs"));
        assert_eq!(expand_home("rel~"), PathBuf::from("rel~"));
    }
}
