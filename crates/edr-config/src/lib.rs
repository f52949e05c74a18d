//! Typed configuration: defaults, YAML layers (defaults, preset, file),
//! unknown-key detection with suggestions, and range validation.
//!
//! Every field has a serde default equal to `config/default.yaml`; a test
//! holds the two equal. Paths are kept as the user wrote them (`~/...`) so
//! writing a config back does not bake in one user's home directory; they
//! are expanded only when used ([`expand_home`]).
//!
//! [`meta::KEYS`] describes every key (type, range, unit, help, settings
//! form label); validation reads its ranges. [`Config::save`] edits the
//! existing file's YAML document, so the user's comments and key order
//! survive a save.

mod edit;
pub mod meta;

use std::collections::BTreeSet;
use std::fmt;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};
use serde_norway::{Mapping, Value};

pub mod detection;
pub use detection::{DetectionConfig, DetectionException, RuleLevel};
pub mod api;
pub use api::{ApiConfig, ApiEnabled};
pub mod shipping;
pub use shipping::{NatsConfig, NatsTlsConfig, ShipCompression, ShippingConfig};

/// The commented default configuration, shipped inside the binary.
pub const DEFAULT_YAML: &str = include_str!("../../../config/default.yaml");

/// A named partial configuration, merged over the defaults.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Preset {
    /// What `--preset` takes.
    pub name: &'static str,
    /// Shown in the app's preset picker.
    pub title: &'static str,
    /// The partial config; its leading comment describes it.
    pub yaml: &'static str,
}

impl Preset {
    /// The preset's leading comment as one line.
    pub fn summary(&self) -> String {
        self.yaml
            .lines()
            .take_while(|l| l.starts_with('#'))
            .map(|l| l.trim_start_matches('#').trim())
            .collect::<Vec<_>>()
            .join(" ")
    }
}

/// Every preset: the one list the CLI, the loader and the app read.
pub const PRESETS: &[Preset] = &[
    Preset {
        name: "desktop",
        title: "Desktop",
        yaml: include_str!("../../../config/presets/desktop.yaml"),
    },
    Preset {
        name: "dev-server",
        title: "Development server",
        yaml: include_str!("../../../config/presets/dev-server.yaml"),
    },
    Preset {
        name: "production-server",
        title: "Production server",
        yaml: include_str!("../../../config/presets/production-server.yaml"),
    },
    Preset {
        name: "low-memory",
        title: "Low memory",
        yaml: include_str!("../../../config/presets/low-memory.yaml"),
    },
    Preset {
        name: "low-cpu",
        title: "Low CPU",
        yaml: include_str!("../../../config/presets/low-cpu.yaml"),
    },
    Preset {
        name: "low-storage",
        title: "Low storage",
        yaml: include_str!("../../../config/presets/low-storage.yaml"),
    },
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
    pub shipping: ShippingConfig,
    pub api: ApiConfig,
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
    /// Where file changes come from.
    pub source: FileSource,
    /// Directories (watched recursively) and single files, on every OS.
    /// `~` is the user's home. With fanotify each is a prefix filter (a
    /// path not there yet is watched from its nearest existing parent);
    /// with inotify a missing path is skipped and reported as unwatched.
    pub watch_paths: Vec<String>,
    /// Like `watch_paths`, watched only on Linux: where persistence lives.
    pub linux_watch_paths: Vec<String>,
    /// Like `watch_paths`, watched only on macOS: where persistence lives.
    pub macos_watch_paths: Vec<String>,
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

/// `collectors.file_monitor.source`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "lowercase")]
pub enum FileSource {
    /// The kernel's file events where permitted (Linux 5.9+: fanotify,
    /// CAP_SYS_ADMIN; macOS 13+: `eslogger`, root and Full Disk Access),
    /// else inotify (FSEvents on macOS).
    #[default]
    Auto,
    /// The kernel's file events or nothing (fanotify; `eslogger` on
    /// macOS): if they are refused the file collector records nothing
    /// and says why.
    Fanotify,
    /// inotify (FSEvents on macOS) only: no acting process on file events.
    Inotify,
}

fn strings(list: &[&str]) -> Vec<String> {
    list.iter().map(|s| s.to_string()).collect()
}

impl FileMonitorConfig {
    /// The paths watched on this OS: `watch_paths`, then this OS's list.
    /// The one place where the OS picks its persistence locations.
    pub fn paths_for_this_os(&self) -> Vec<String> {
        let own: &[String] = if cfg!(target_os = "macos") {
            &self.macos_watch_paths
        } else if cfg!(target_os = "linux") {
            &self.linux_watch_paths
        } else {
            &[]
        };
        let mut all = self.watch_paths.clone();
        for p in own {
            if !all.contains(p) {
                all.push(p.clone());
            }
        }
        all
    }
}

impl Default for FileMonitorConfig {
    fn default() -> Self {
        FileMonitorConfig {
            enabled: true,
            source: FileSource::Auto,
            watch_paths: strings(&["~/Desktop", "~/Documents", "~/Downloads"]),
            linux_watch_paths: strings(&[
                "~/.bashrc",
                "~/.bash_profile",
                "~/.profile",
                "~/.zshrc",
                "~/.ssh",
                "~/.config/autostart",
                "~/.config/systemd/user",
                "/etc/cron.d",
                "/etc/cron.daily",
                "/etc/cron.hourly",
                "/etc/cron.weekly",
                "/etc/cron.monthly",
                "/etc/crontab",
                "/var/spool/cron",
                "/etc/systemd/system",
                "/etc/profile",
                "/etc/profile.d",
                "/etc/pam.d",
                "/etc/ld.so.preload",
                "/etc/sudoers",
                "/etc/sudoers.d",
                "/etc/passwd",
                "/etc/shadow",
                "/etc/group",
                "/etc/rc.local",
            ]),
            macos_watch_paths: strings(&[
                "~/Library/LaunchAgents",
                "/Library/LaunchAgents",
                "/Library/LaunchDaemons",
                "~/.zshrc",
                "~/.zprofile",
                "/etc/periodic",
                "/etc/sudoers",
            ]),
            exclude_paths: strings(&[
                "**/.git/**",
                "**/node_modules/**",
                "**/.cache/**",
                "**/*.swp",
                "**/*~",
            ]),
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
    /// Where connections come from.
    pub source: NetworkSource,
}

impl Default for NetworkMonitorConfig {
    fn default() -> Self {
        NetworkMonitorConfig {
            enabled: true,
            scan_interval_ms: 1000,
            max_scan_interval_ms: 4000,
            source: NetworkSource::Auto,
        }
    }
}

/// `collectors.network_monitor.source`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "lowercase")]
pub enum NetworkSource {
    /// Kernel events where permitted (Linux: eBPF, as root with BTF), with
    /// one scan for the connections already open; else polling.
    #[default]
    Auto,
    /// Kernel events or nothing: if they are not available the network
    /// collector records nothing and says why.
    Event,
    /// Polling only: connections shorter than the scan interval can be
    /// missed.
    Scan,
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
    /// `event.action` values never stored, e.g. `connection-closed`
    /// (any of `edr_model::event::Action::ALL`). Kept as strings so the
    /// YAML reads and round-trips as written; checked by `validate`.
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
    /// Shipping: the oldest batch not yet acknowledged by the server may
    /// be at most this many seconds old. 1..=31536000.
    pub max_ship_lag_s: u64,
}

impl Default for AlertsConfig {
    fn default() -> Self {
        AlertsConfig {
            max_memory_mb: 200,
            max_cpu_percent: 20.0,
            max_storage_growth_mb_per_day: 1024,
            min_compression_ratio: 0.80,
            max_ship_lag_s: 300,
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
    /// The file could not be edited in place (it is left as it was).
    #[error("cannot update the config file: {message}")]
    Edit { message: String },
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

/// The presets' names, in [`PRESETS`] order.
pub fn preset_names() -> Vec<&'static str> {
    PRESETS.iter().map(|p| p.name).collect()
}

/// The YAML text of a named preset.
pub fn preset(name: &str) -> Result<&'static str, ConfigError> {
    PRESETS
        .iter()
        .find(|p| p.name == name)
        .map(|p| p.yaml)
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

    /// Checks every value: numbers against their range in [`meta::KEYS`],
    /// the rest by the rules listed in [`meta::CHECKED_IN_CODE`].
    pub fn validate(&self) -> Result<(), ConfigError> {
        self.validate_as("config")
    }

    fn validate_as(&self, origin: &str) -> Result<(), ConfigError> {
        let mut errors = Vec::new();
        // Ranges come from the table; the serialized config is walked by
        // the table's dotted keys so no key is typed here again.
        let tree = serde_norway::to_value(self);
        match &tree {
            Ok(tree) => {
                for k in meta::KEYS {
                    let (Some(allowed), Some(v)) = (k.allowed(), lookup(tree, k.key)) else {
                        continue;
                    };
                    let Value::Number(n) = v else { continue };
                    let (as_f64, shown) = match n.as_u64() {
                        Some(u) => (u as f64, u.to_string()),
                        None => {
                            let f = n.as_f64().unwrap_or(f64::NAN);
                            (f, f.to_string())
                        }
                    };
                    if !k.in_range(as_f64) {
                        errors.push(FieldError {
                            key: k.key.to_string(),
                            value: shown,
                            allowed,
                        });
                    }
                }
            }
            Err(e) => errors.push(FieldError {
                key: "(top level)".to_string(),
                value: String::new(),
                allowed: e.to_string(),
            }),
        }
        let c = &self.collectors;
        let fm = &c.file_monitor;
        for (name, list) in [
            ("watch_paths", &fm.watch_paths),
            ("linux_watch_paths", &fm.linux_watch_paths),
            ("macos_watch_paths", &fm.macos_watch_paths),
        ] {
            for (i, p) in list.iter().enumerate() {
                if p.trim().is_empty() {
                    errors.push(FieldError {
                        key: format!("collectors.file_monitor.{name}[{i}]"),
                        value: format!("{p:?}"),
                        allowed: "a non-empty directory or file path".to_string(),
                    });
                }
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
        // Lists whose items come from a fixed set (`exclude_actions`).
        for k in meta::KEYS {
            let (
                meta::Kind::Strings {
                    one_of: Some(values),
                },
                Ok(tree),
            ) = (k.kind, &tree)
            else {
                continue;
            };
            let Some(Value::Sequence(items)) = lookup(tree, k.key) else {
                continue;
            };
            for (i, item) in items.iter().enumerate() {
                let a = item.as_str().unwrap_or_default();
                if !values.contains(&a) {
                    errors.push(FieldError {
                        key: format!("{}[{i}]", k.key),
                        value: format!("{a:?}"),
                        allowed: format!("one of {}", values.join(", ")),
                    });
                }
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
        self.shipping.validate(&mut errors);
        self.api.validate(&mut errors);
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

    /// The commented default document ([`DEFAULT_YAML`]) with this config's
    /// values set in it: every key and its comment, as a new file should be.
    pub fn to_commented_yaml(&self) -> Result<String, ConfigError> {
        edit::edit_document(DEFAULT_YAML, self)
    }

    /// Writes the config to `path` atomically (temporary file, fsync,
    /// rename), readable only by its owner: a crash or a full disk leaves
    /// the previous file intact.
    ///
    /// An existing file is edited, not rewritten: only keys whose values
    /// differ from what it says are set (missing ones are added to their
    /// section), so the user's comments, key order and unmentioned keys
    /// stay. Without a file, the commented defaults ([`DEFAULT_YAML`]) are
    /// written with this config's values set in them. A file that cannot
    /// be edited so that it loads as exactly this config (invalid YAML,
    /// unknown keys) is left alone and an error returned.
    pub fn save(&self, path: &Path) -> Result<(), ConfigError> {
        let base = match std::fs::read_to_string(path) {
            Ok(text) => text,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => DEFAULT_YAML.to_string(),
            Err(source) => {
                return Err(ConfigError::Read {
                    path: path.to_path_buf(),
                    source,
                })
            }
        };
        let text = edit::edit_document(&base, self)?;
        Config::write_atomically(path, &text)
    }

    fn write_atomically(path: &Path, text: &str) -> Result<(), ConfigError> {
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

/// The value at a dotted key in a config tree.
pub(crate) fn lookup<'a>(tree: &'a Value, key: &str) -> Option<&'a Value> {
    key.split('.').try_fold(tree, |node, part| match node {
        Value::Mapping(m) => m.get(part),
        _ => None,
    })
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

    /// Leaf keys (not sections) of the defaults.
    fn leaf_keys() -> Vec<String> {
        let valid = valid_keys();
        valid
            .iter()
            .filter(|k| !is_section(&valid, k))
            .cloned()
            .collect()
    }

    #[test]
    fn the_key_table_describes_every_leaf_key() {
        let table: BTreeSet<&str> = meta::KEYS.iter().map(|k| k.key).collect();
        assert_eq!(table.len(), meta::KEYS.len(), "a key is in the table twice");
        for key in leaf_keys() {
            assert!(
                table.contains(key.as_str()),
                "`{key}` is missing from meta::KEYS"
            );
        }
        let leaves = leaf_keys();
        for k in meta::KEYS {
            assert!(
                leaves.iter().any(|l| l == k.key),
                "`{}` is not a config key",
                k.key
            );
            assert!(!k.doc.is_empty(), "`{}` has no help text", k.key);
            let numeric = matches!(k.kind, meta::Kind::Integer | meta::Kind::Number);
            // A number without a range must be checked by code instead.
            if numeric && k.range.is_none() {
                assert!(
                    meta::CHECKED_IN_CODE.contains(&k.key),
                    "`{}` has neither a range nor a check in code",
                    k.key
                );
            }
        }
        for key in meta::CHECKED_IN_CODE {
            assert!(
                table.contains(key),
                "`{key}` in CHECKED_IN_CODE is not in the table"
            );
        }
    }

    #[test]
    fn the_table_matches_the_defaults_types() {
        let tree = serde_norway::to_value(Config::default()).expect("value");
        for k in meta::KEYS {
            let v = lookup(&tree, k.key).expect("in defaults");
            let ok = match k.kind {
                meta::Kind::Integer => v.as_u64().is_some() || (k.optional && v.is_null()),
                meta::Kind::Number => v.as_f64().is_some(),
                meta::Kind::Bool => v.as_bool().is_some(),
                meta::Kind::Strings { .. } => v.is_sequence(),
                meta::Kind::Enum { values } => v.as_str().is_some_and(|s| values.contains(&s)),
                meta::Kind::Text => v.as_str().is_some() || (k.optional && v.is_null()),
                meta::Kind::Records => v.is_sequence(),
            };
            assert!(ok, "`{}`: default {v:?} is not a {:?}", k.key, k.kind);
            if let (Some(n), Some(_)) = (v.as_f64(), k.range) {
                assert!(
                    k.in_range(n),
                    "`{}`: the default is outside its range",
                    k.key
                );
            }
        }
    }

    /// Text setting one dotted key.
    fn yaml_setting(key: &str, value: &str) -> String {
        let parts: Vec<&str> = key.split('.').collect();
        let mut out = String::new();
        for (depth, p) in parts.iter().enumerate() {
            out.push_str(&"  ".repeat(depth));
            out.push_str(p);
            out.push(':');
            if depth + 1 == parts.len() {
                out.push(' ');
                out.push_str(value);
            }
            out.push('\n');
        }
        out
    }

    #[test]
    fn validation_uses_the_tables_ranges_at_their_edges() {
        for k in meta::KEYS {
            let Some(r) = k.range else { continue };
            let fmt = |v: f64| format!("{v:?}");
            let int = k.kind == meta::Kind::Integer;
            let show = |v: f64| if int { format!("{}", v as u64) } else { fmt(v) };
            let accepted = |v: f64| Config::from_yaml("edge", &yaml_setting(k.key, &show(v)));
            accepted(r.max).unwrap_or_else(|e| panic!("`{}` = max refused: {e}", k.key));
            let above = if int { r.max + 1.0 } else { r.max * 1.5 };
            let e = accepted(above).expect_err(k.key);
            let errors = e.field_errors();
            assert_eq!(errors.len(), 1, "{e}");
            assert_eq!(errors[0].key, k.key);
            assert_eq!(errors[0].value, show(above).trim_end_matches(".0"));
            assert_eq!(Some(errors[0].allowed.clone()), k.allowed());
            if r.min_open {
                assert!(
                    accepted(r.min).is_err(),
                    "`{}` = its open minimum accepted",
                    k.key
                );
            } else {
                accepted(r.min).unwrap_or_else(|e| panic!("`{}` = min refused: {e}", k.key));
                if r.min >= 1.0 {
                    assert!(accepted(r.min - 1.0).is_err(), "`{}` below min", k.key);
                }
            }
        }
    }

    #[test]
    fn the_tables_enum_values_are_the_ones_serde_takes() {
        for k in meta::KEYS {
            let meta::Kind::Enum { values } = k.kind else {
                continue;
            };
            for v in values {
                Config::from_yaml("enum", &yaml_setting(k.key, v))
                    .unwrap_or_else(|e| panic!("`{}` = {v}: {e}", k.key));
            }
            let e = Config::from_yaml("enum", &yaml_setting(k.key, "nonsense")).unwrap_err();
            let text = e.to_string();
            // serde's own list: "expected one of `auto`, `event`, `scan`"
            // or "expected `gzip` or `zstd`".
            let listed: BTreeSet<&str> = text
                .split_once(", expected")
                .map(|(_, rest)| rest.split('`').skip(1).step_by(2).collect())
                .unwrap_or_default();
            assert_eq!(listed, values.iter().copied().collect(), "{text}");
        }
    }

    #[test]
    fn every_preset_has_a_title_and_a_summary() {
        for p in PRESETS {
            assert!(!p.title.is_empty() && !p.summary().is_empty(), "{}", p.name);
        }
        assert_eq!(preset_names().len(), PRESETS.len());
    }

    fn private_mode(path: &Path) -> u32 {
        use std::os::unix::fs::PermissionsExt;
        std::fs::metadata(path).expect("meta").permissions().mode() & 0o777
    }

    const USER_FILE: &str = "\
# My own config. Do not lose this line.
storage:
  retention_days: 9   # a week and a bit
  # where the data goes
  local_storage:
    data_dir: /tmp/edr-data
alerts:
  max_cpu_percent: 15   # laptop
agent:
  # events per file
  max_events_per_batch: 300
filters:
  exclude_actions: [connection-closed]
";

    #[test]
    fn save_keeps_comments_and_order_and_sets_changed_values() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("config.yaml");
        std::fs::write(&path, USER_FILE).expect("write");
        let mut c = Config::from_file(&path).expect("loads");
        c.agent.max_events_per_batch = 42;
        c.save(&path).expect("saved");
        let text = std::fs::read_to_string(&path).expect("read");
        assert_eq!(
            text,
            USER_FILE.replace("max_events_per_batch: 300", "max_events_per_batch: 42")
        );
        assert_eq!(Config::from_file(&path).expect("loads"), c);
        assert_eq!(private_mode(&path), 0o600);

        // Saving the same config again changes nothing.
        c.save(&path).expect("saved");
        assert_eq!(std::fs::read_to_string(&path).expect("read"), text);
    }

    #[test]
    fn save_changes_a_list_and_adds_missing_keys_in_their_section() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("config.yaml");
        std::fs::write(&path, USER_FILE).expect("write");
        let mut c = Config::from_file(&path).expect("loads");
        c.filters.exclude_actions = vec!["file-modified".into(), "connected".into()];
        c.collectors.file_monitor.exclude_paths = vec!["**/x/**".into(), "*.tmp".into()];
        c.alerts.max_memory_mb = 333;
        c.storage.local_storage.compression = Compression::Zstd;
        c.save(&path).expect("saved");
        let text = std::fs::read_to_string(&path).expect("read");
        assert_eq!(Config::from_file(&path).expect("loads"), c, "{text}");
        // Everything the user wrote is still there, in order.
        let kept: Vec<&str> = USER_FILE
            .lines()
            .filter(|l| !l.contains("exclude_actions"))
            .collect();
        let mut at = 0;
        for line in &kept {
            let found = text[at..]
                .find(line)
                .unwrap_or_else(|| panic!("lost {line:?}:\n{text}"));
            at += found + line.len();
        }
        // The new alert is in the alerts section, right after the user's key.
        let alerts = text.find("alerts:").expect("alerts");
        let agent = text.find("agent:").expect("agent");
        let mem = text.find("max_memory_mb: 333").expect("added");
        assert!(alerts < mem && mem < agent, "{text}");
        // After the nearest earlier key of the table (data_dir), else at
        // the section's end (after the CPU alert, with its comment).
        assert!(
            text.find("max_cpu_percent: 15   # laptop").expect("kept") < mem,
            "{text}"
        );
        let compression = text.find("compression: zstd").expect("added");
        assert!(text.find("data_dir").expect("kept") < compression, "{text}");
        assert!(compression < alerts, "{text}");
        // A section the file lacked is added.
        assert!(text.contains("collectors:"), "{text}");
        assert!(
            !text.contains("max_file_size_mb"),
            "unchanged keys stay out: {text}"
        );
    }

    #[test]
    fn save_without_a_file_writes_the_commented_defaults() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("new/config.yaml");
        let mut c = Config::default();
        c.alerts.max_memory_mb = 400;
        c.collectors.file_monitor.watch_paths = vec!["/srv/in".into()];
        c.save(&path).expect("saved");
        let text = std::fs::read_to_string(&path).expect("read");
        assert_eq!(Config::from_file(&path).expect("loads"), c);
        assert_eq!(private_mode(&path), 0o600);
        // Every comment of the defaults is there.
        for line in DEFAULT_YAML
            .lines()
            .filter(|l| l.trim_start().starts_with('#'))
        {
            assert!(text.contains(line), "lost {line:?}");
        }
        assert!(text.contains("max_memory_mb: 400"));
        assert!(!text.contains("~/Desktop"), "{text}");
    }

    #[test]
    fn save_round_trips_every_preset() {
        let dir = tempfile::tempdir().expect("tempdir");
        for p in PRESETS {
            let c = Config::load(&[Layer::preset(p.name).expect("exists")]).expect("loads");
            // Into a fresh file, into the user's file, and into the preset's
            // own text.
            for (i, start) in [None, Some(USER_FILE), Some(p.yaml)]
                .into_iter()
                .enumerate()
            {
                let path = dir.path().join(format!("{}-{i}.yaml", p.name));
                if let Some(t) = start {
                    std::fs::write(&path, t).expect("write");
                }
                c.save(&path).expect("saved");
                let back = Config::from_file(&path).unwrap_or_else(|e| panic!("{}: {e}", p.name));
                assert_eq!(back, c, "preset {} via {i}", p.name);
            }
            // Saving a preset over its own text changes nothing.
            let own = dir.path().join(format!("{}-2.yaml", p.name));
            assert_eq!(std::fs::read_to_string(own).expect("read"), p.yaml);
        }
    }

    #[test]
    fn save_into_an_empty_or_commented_file_keeps_the_comment() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("config.yaml");
        std::fs::write(&path, "# nothing yet\n").expect("write");
        let mut c = Config::default();
        c.storage.retention_days = 5;
        c.save(&path).expect("saved");
        let text = std::fs::read_to_string(&path).expect("read");
        assert!(text.starts_with("# nothing yet\n"), "{text}");
        assert_eq!(Config::from_file(&path).expect("loads"), c);
    }

    #[test]
    fn save_leaves_a_file_it_cannot_edit_alone() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("config.yaml");
        let broken = "agent:\n  max_events_per_batch: [\n";
        std::fs::write(&path, broken).expect("write");
        let e = Config::default().save(&path).unwrap_err();
        assert!(matches!(e, ConfigError::Edit { .. }), "{e}");
        assert_eq!(std::fs::read_to_string(&path).expect("read"), broken);
        let unknown = "agent:\n  max_event_per_batch: 3\n";
        std::fs::write(&path, unknown).expect("write");
        let mut c = Config::default();
        c.agent.max_events_per_batch = 4;
        let e = c.save(&path).unwrap_err();
        assert!(e.to_string().contains("max_event_per_batch"), "{e}");
        assert_eq!(std::fs::read_to_string(&path).expect("read"), unknown);
    }

    #[test]
    fn save_writes_awkward_strings_exactly() {
        let dir = tempfile::tempdir().expect("tempdir");
        let awkward: Vec<String> = [
            "null",
            "true",
            "123",
            "1e3",
            "~",
            "*star",
            "&amp",
            "!tag",
            "# hash",
            "a: b",
            "a #b",
            " lead",
            "trail ",
            "'single'",
            "\"double\"",
            "tab\there",
            "line\nbreak",
            "\ttab first",
            "back\\slash",
            "üñíçødé",
            "-",
            "- dash",
            "[x]",
            "{y}",
            "%pct",
            "@at",
            "`tick`",
            "cr\rhere",
            "\u{7f}del",
            "?q",
        ]
        .into_iter()
        .map(String::from)
        .collect();
        for (i, start) in [None, Some(USER_FILE)].into_iter().enumerate() {
            let path = dir.path().join(format!("awkward-{i}.yaml"));
            if let Some(t) = start {
                std::fs::write(&path, t).expect("write");
            }
            let mut c = Config::default();
            c.collectors.file_monitor.watch_paths = awkward.clone();
            c.storage.local_storage.data_dir = Some("x: \"y\"\n\tz".into());
            c.save(&path).expect("saved");
            assert_eq!(Config::from_file(&path).expect("loads"), c);
            // And edited once more, item by item.
            for (j, item) in awkward.iter().enumerate() {
                c.collectors.file_monitor.watch_paths = vec![item.clone(), format!("{j}")];
                c.save(&path).unwrap_or_else(|e| panic!("{item:?}: {e}"));
                assert_eq!(Config::from_file(&path).expect("loads"), c, "{item:?}");
            }
        }
    }

    #[test]
    fn home_expansion() {
        let home = dirs::home_dir().expect("home");
        assert_eq!(expand_home("~/x/y"), home.join("x/y"));
        assert_eq!(expand_home("/abs"), PathBuf::from("/abs"));
        assert_eq!(expand_home("rel~"), PathBuf::from("rel~"));
    }
}
