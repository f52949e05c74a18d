//! Property tests of the config loader: every valid config survives a
//! round trip through YAML text and through a saved file unchanged, and no
//! input text makes the loader panic or accept an invalid config.

use std::os::unix::fs::PermissionsExt;

use edr_config::Config;
use edr_config::{
    AdaptiveBatchingConfig, AgentConfig, AlertsConfig, CollectorsConfig, Compression,
    FileMonitorConfig, FiltersConfig, LocalStorageConfig, NetworkMonitorConfig,
    ProcessMonitorConfig, ProcessSource, StorageConfig,
};
use edr_model::event::Action;
use proptest::prelude::*;

/// Paths with the characters YAML treats specially: quotes, `#`, `:`,
/// leading `~`, `-` and spaces, backslashes, tabs, newlines, non-ASCII.
fn path() -> impl Strategy<Value = String> {
    "[~/ a-zA-Z0-9_.:#'\"\\\\\t\n\u{e9}\u{4e2d}*-]{1,24}"
        .prop_filter("non-empty", |p| !p.trim().is_empty())
}

fn glob() -> impl Strategy<Value = String> {
    prop_oneof![
        "\\*\\*/[a-z0-9_.-]{1,10}/\\*\\*",
        "\\*\\*/\\*\\.[a-z]{1,4}",
        "/[a-z0-9_/.-]{1,16}",
        "[a-z]{1,8}\\*",
    ]
}

fn positive_f64(max: f64) -> impl Strategy<Value = f64> {
    prop_oneof![
        (f64::MIN_POSITIVE..=max),
        Just(max),
        Just(1e-9),
        (1u32..=1000).prop_map(|n| f64::from(n) / 7.0),
    ]
}

fn config() -> impl Strategy<Value = Config> {
    let adaptive = (
        any::<bool>(),
        1u32..=100_000,
        100u64..=3_600_000,
        1u32..=1_000_000,
    )
        .prop_map(|(enabled, min_events, max_interval_ms, max_events)| {
            AdaptiveBatchingConfig {
                enabled,
                min_events,
                max_interval_ms,
                max_events,
            }
        });
    let agent = (1u32..=100_000, 100u64..=3_600_000, adaptive).prop_map(|(m, i, a)| AgentConfig {
        max_events_per_batch: m,
        collection_interval_ms: i,
        adaptive_batching: a,
    });
    let process = (
        any::<bool>(),
        100u64..=3_600_000,
        any::<bool>(),
        any::<bool>(),
        prop_oneof![
            Just(ProcessSource::Auto),
            Just(ProcessSource::Event),
            Just(ProcessSource::Scan)
        ],
        100u64..=3_600_000,
    )
        .prop_map(
            |(enabled, scan, env, hashes, source, max_scan)| ProcessMonitorConfig {
                enabled,
                scan_interval_ms: scan,
                collect_environment: env,
                calculate_hashes: hashes,
                source,
                max_scan_interval_ms: max_scan,
            },
        );
    let file = (
        any::<bool>(),
        prop::collection::vec(path(), 0..4),
        prop::collection::vec(glob(), 0..4),
        1u64..=10_240,
        any::<bool>(),
        1u64..=10_240,
    )
        .prop_map(
            |(enabled, watch, exclude, size, hashes, rate)| FileMonitorConfig {
                enabled,
                watch_paths: watch,
                exclude_paths: exclude,
                max_file_size_mb: size,
                calculate_hashes: hashes,
                hash_rate_limit_mb_per_sec: rate,
                ..FileMonitorConfig::default()
            },
        );
    let network = (any::<bool>(), 100u64..=3_600_000, 100u64..=3_600_000).prop_map(
        |(enabled, scan, max_scan)| NetworkMonitorConfig {
            enabled,
            scan_interval_ms: scan,
            max_scan_interval_ms: max_scan,
            ..NetworkMonitorConfig::default()
        },
    );
    let storage = (
        prop::option::of(path()),
        any::<bool>(),
        1u32..=3650,
        positive_f64(100_000.0),
        prop_oneof![Just(Compression::Gzip), Just(Compression::Zstd)],
        // Levels 1..=9 are valid for both codecs.
        prop::option::of(1u32..=9),
    )
        .prop_map(
            |(dir, compress, days, gb, compression, level)| StorageConfig {
                local_storage: LocalStorageConfig {
                    data_dir: dir,
                    compress_events: compress,
                    compression,
                    compression_level: level,
                },
                retention_days: days,
                max_storage_size_gb: gb,
            },
        );
    let alerts = (
        1u64..=1_048_576,
        positive_f64(1000.0),
        1u64..=10_485_760,
        prop_oneof![0.0..=1.0, Just(0.0), Just(1.0)],
        1u64..=31_536_000,
    )
        .prop_map(|(mem, cpu, growth, ratio, lag)| AlertsConfig {
            max_memory_mb: mem,
            max_cpu_percent: cpu,
            max_storage_growth_mb_per_day: growth,
            min_compression_ratio: ratio,
            max_ship_lag_s: lag,
        });
    let filters = (
        0u64..=3_600_000,
        0u64..=3_600_000,
        prop::sample::subsequence(Action::ALL.to_vec(), 0..4),
        prop::collection::vec(glob(), 0..3),
    )
        .prop_map(|(coalesce, repeat, actions, processes)| FiltersConfig {
            coalesce_file_changes_ms: coalesce,
            repeat_window_ms: repeat,
            exclude_actions: actions.iter().map(|a| a.as_str().to_string()).collect(),
            exclude_processes: processes,
        });
    (agent, process, file, network, storage, alerts, filters).prop_map(
        |(agent, process_monitor, file_monitor, network_monitor, storage, alerts, filters)| {
            Config {
                agent,
                collectors: CollectorsConfig {
                    process_monitor,
                    file_monitor,
                    network_monitor,
                },
                storage,
                alerts,
                filters,
                detection: Default::default(),
                shipping: Default::default(),
                api: Default::default(),
            }
        },
    )
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(512))]

    #[test]
    fn valid_configs_round_trip_through_yaml(c in config()) {
        prop_assert!(c.validate().is_ok(), "generated an invalid config: {:?}", c.validate());
        let yaml = c.to_yaml();
        let back = Config::from_yaml("round trip", &yaml);
        prop_assert!(back.is_ok(), "{:?}\n{yaml}", back.err().map(|e| e.to_string()));
        prop_assert_eq!(back.ok(), Some(c));
    }

    #[test]
    fn saved_configs_load_back_unchanged_and_private(c in config()) {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("config.yaml");
        c.save(&path).expect("save");
        let mode = std::fs::metadata(&path).expect("meta").permissions().mode() & 0o777;
        prop_assert_eq!(mode, 0o600);
        prop_assert_eq!(Config::from_file(&path).ok(), Some(c));
    }

    #[test]
    fn any_text_is_loaded_or_refused_never_a_panic(text in "(?s).{0,200}") {
        if let Ok(c) = Config::from_yaml("any", &text) {
            prop_assert!(c.validate().is_ok());
            prop_assert_eq!(Config::from_yaml("again", &c.to_yaml()).ok(), Some(c));
        }
    }

    #[test]
    fn yaml_shaped_text_is_loaded_or_refused_never_a_panic(
        section in prop_oneof![Just("agent"), Just("collectors"), Just("storage"), Just("alerts"), Just("x")],
        key in "[a-z_]{1,30}",
        value in prop_oneof![
            Just("null".to_string()), Just("~".to_string()), Just("[]".to_string()),
            Just("{}".to_string()), Just("-1".to_string()), Just(".nan".to_string()),
            Just("1e999".to_string()), Just("18446744073709551616".to_string()),
            "[ -~]{0,20}",
        ],
    ) {
        let text = format!("{section}:\n  {key}: {value}\n");
        if let Ok(c) = Config::from_yaml("shaped", &text) {
            prop_assert!(c.validate().is_ok());
        }
    }
}
