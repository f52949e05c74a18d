//! Each way a config file can be wrong gives its own clear message, a
//! non-zero exit, and leaves stored data alone.

use std::path::{Path, PathBuf};
use std::process::Command;

fn bin() -> Command {
    Command::new(env!("CARGO_BIN_EXE_edr-agent"))
}

fn fixture(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/fixtures/config")
        .join(name)
}

/// (fixture, substrings the error must contain)
const CASES: &[(&str, &[&str])] = &[
    (
        "unknown_key.yaml",
        &[
            "unknown key `agent.max_event_per_batch`",
            "did you mean `agent.max_events_per_batch`",
        ],
    ),
    (
        "misplaced_key.yaml",
        &[
            "unknown key `retention_days`",
            "did you mean `storage.retention_days`",
        ],
    ),
    (
        "out_of_range.yaml",
        &[
            "`agent.max_events_per_batch` = 0 is not allowed",
            "an integer from 1 to 100000",
        ],
    ),
    (
        "wrong_type.yaml",
        &[
            "`agent.collection_interval_ms`",
            "\"soon\"",
            "expected a whole number",
        ],
    ),
    ("bad_yaml.yaml", &["invalid YAML at line 2"]),
    (
        "negative_size.yaml",
        &[
            "`storage.max_storage_size_gb` = -1",
            "greater than 0 and at most 100000",
        ],
    ),
    (
        "bad_glob.yaml",
        &[
            "`collectors.file_monitor.exclude_paths[0]` = \"[abc\"",
            "a glob pattern",
        ],
    ),
    (
        "ratio_out_of_range.yaml",
        &[
            "`alerts.min_compression_ratio` = 1.5",
            "a number from 0 to 1",
        ],
    ),
    (
        "not_a_mapping.yaml",
        &["expected a mapping of sections", "found a list"],
    ),
    (
        "empty_watch_path.yaml",
        &[
            "`collectors.file_monitor.watch_paths[1]` = \"\"",
            "non-empty directory or file path",
        ],
    ),
    (
        "several_errors.yaml",
        &[
            "`agent.max_events_per_batch` = 0",
            "`agent.collection_interval_ms` = 5",
            "`storage.retention_days` = 0",
        ],
    ),
    (
        "not_a_bool.yaml",
        &["`collectors.process_monitor.enabled`", "expected a boolean"],
    ),
];

#[test]
fn every_bad_fixture_is_refused_with_its_message() {
    for (name, expected) in CASES {
        let out = bin()
            .args(["config", "check"])
            .arg(fixture(name))
            .output()
            .expect("runs");
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(2), "{name}: {stderr}");
        assert!(
            stderr.contains(name),
            "{name}: error does not name the file: {stderr}"
        );
        for e in *expected {
            assert!(stderr.contains(e), "{name}: expected {e:?} in: {stderr}");
        }
    }
}

#[test]
fn missing_file_is_a_clear_error() {
    let out = bin()
        .args(["config", "check", "/nonexistent/edr.yaml"])
        .output()
        .expect("runs");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_ne!(out.status.code(), Some(0));
    assert!(
        stderr.contains("cannot read config file /nonexistent/edr.yaml"),
        "{stderr}"
    );
}

#[test]
fn valid_partial_file_passes() {
    let out = bin()
        .args(["config", "check"])
        .arg(fixture("valid_partial.yaml"))
        .output()
        .expect("runs");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}

#[test]
fn run_with_a_bad_config_touches_no_data() {
    let dir = tempfile::tempdir().expect("tempdir");
    // An existing data dir with a batch in it, and one that does not exist.
    let existing = dir.path().join("existing");
    let batch_dir = existing.join("events/2026-01-01");
    std::fs::create_dir_all(&batch_dir).expect("mkdir");
    let batch = batch_dir.join("20260101T000000000Z-000001.json");
    std::fs::write(&batch, "{\"a\":1}\n").expect("write");
    let before = std::fs::read_dir(&existing).expect("ls").count();
    let fresh = dir.path().join("fresh");
    for data_dir in [&existing, &fresh] {
        let out = bin()
            .args(["run", "--config"])
            .arg(fixture("out_of_range.yaml"))
            .arg("--data-dir")
            .arg(data_dir)
            .output()
            .expect("runs");
        assert_eq!(out.status.code(), Some(2));
    }
    assert!(!fresh.exists(), "a refused config created the data dir");
    assert_eq!(std::fs::read_dir(&existing).expect("ls").count(), before);
    assert_eq!(
        std::fs::read_to_string(&batch).expect("read"),
        "{\"a\":1}\n"
    );
}

#[test]
fn default_command_prints_the_shipped_defaults() {
    let out = bin().args(["config", "default"]).output().expect("runs");
    assert!(out.status.success());
    let text = String::from_utf8_lossy(&out.stdout);
    assert_eq!(text, include_str!("../config/default.yaml"));
}

#[test]
fn unknown_preset_suggests_the_nearest() {
    let out = bin()
        .args(["run", "--preset", "low-mem", "--data-dir", "/nonexistent/x"])
        .output()
        .expect("runs");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2));
    assert!(stderr.contains("did you mean `low-memory`"), "{stderr}");
}
