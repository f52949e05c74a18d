//! `edr-bench` as a user runs it: each subcommand completes, prints
//! its table and leaves no agent behind. Numbers are not judged against
//! targets here (benchmarks are benchmarks); only that they are measured,
//! and, where the table's columns follow each other in time, in order.

use std::path::PathBuf;
use std::process::Command;
use std::sync::OnceLock;

/// The `edr-agent` binary the benches start, built beside `edr-bench`
/// (`cargo test --workspace` has built it already; `cargo test -p
/// edr-bench` alone builds it here).
fn agent_binary() -> &'static PathBuf {
    static AGENT: OnceLock<PathBuf> = OnceLock::new();
    AGENT.get_or_init(|| {
        let agent = PathBuf::from(env!("CARGO_BIN_EXE_edr-bench")).with_file_name("edr-agent");
        if !agent.exists() {
            let status = Command::new(env!("CARGO"))
                .args(["build", "--bin", "edr-agent", "-p", "edr-agent"])
                .status()
                .expect("cargo runs");
            assert!(status.success(), "cannot build edr-agent");
        }
        agent
    })
}

/// The first line of `out` that starts (after its indent) with `prefix`.
fn row<'a>(out: &'a str, prefix: &str) -> &'a str {
    out.lines()
        .find(|l| l.trim_start().starts_with(prefix))
        .unwrap_or_else(|| panic!("no line starting {prefix:?}:\n{out}"))
}

fn bench(args: &[&str]) -> String {
    let out = Command::new(env!("CARGO_BIN_EXE_edr-bench"))
        .env("EDR_AGENT_BIN", agent_binary())
        .args(args)
        .output()
        .expect("bench runs");
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    assert!(
        out.status.success(),
        "bench {args:?} failed:\n{stdout}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    stdout
}

/// The numbers of the first line after the header row.
fn first_row(table: &str) -> Vec<String> {
    table
        .lines()
        .nth(2)
        .expect("a row")
        .split_whitespace()
        .map(String::from)
        .collect()
}

#[test]
fn pipeline_stores_every_offered_event() {
    let out = bench(&["pipeline", "--rates", "2000", "--duration", "1s"]);
    let row = first_row(&out);
    assert_eq!(row[0], "2000", "{out}");
    let (offered, stored): (u64, u64) = (row[1].parse().expect("n"), row[2].parse().expect("n"));
    assert!(offered > 0 && stored == offered, "{out}");
}

#[test]
fn startup_reports_a_first_batch() {
    let out = bench(&["startup", "--runs", "1"]);
    assert!(out.contains("first batch on disk"), "{out}");
    // Each row and the median: engine started, first event, first batch,
    // in ms after the spawn, each measured and in the order they happen.
    // The first event's time comes from its `@timestamp`, whole
    // milliseconds, and the spawn is timed on two clocks taken in a row:
    // 1 ms of slack between the columns.
    for label in ["1", "med"] {
        let row: Vec<&str> = out
            .lines()
            .map(str::split_whitespace)
            .map(Iterator::collect::<Vec<_>>)
            .find(|w| w.first() == Some(&label))
            .unwrap_or_else(|| panic!("no row {label}:\n{out}"));
        assert_eq!(row.len(), 4, "row {label}:\n{out}");
        let ms: Vec<f64> = row[1..]
            .iter()
            .map(|v| {
                v.parse()
                    .unwrap_or_else(|_| panic!("{v} is not a figure (row {label}):\n{out}"))
            })
            .collect();
        assert!(ms.iter().all(|v| *v > 0.0), "row {label}:\n{out}");
        assert!(
            ms[0] <= ms[1] + 1.0 && ms[1] <= ms[2] + 1.0,
            "engine started, first event, first batch out of order (row {label}):\n{out}"
        );
    }
}

#[test]
fn workload_counts_what_the_agent_captured() {
    let dir = tempfile::tempdir().expect("tempdir");
    let out = bench(&[
        "workload",
        "--level",
        "light",
        "--duration",
        "3s",
        "--warmup",
        "0s",
        "--no-time",
        "--work-dir",
        &dir.path().display().to_string(),
    ]);
    for needle in ["RSS (MiB", "CPU (% of one core", "files created", "B/event"] {
        assert!(out.contains(needle), "{needle} missing:\n{out}");
    }
    let files_created: Vec<u64> = row(&out, "files created")
        .split_whitespace()
        .filter_map(|w| w.parse().ok())
        .collect();
    // Generated and captured: inotify misses none of our files.
    assert!(files_created[0] > 0, "{out}");
    assert_eq!(files_created[0], files_created[1], "{out}");
    // What the agent counted as not stored is printed beside the shares;
    // a few events a second cannot fill its 4,096-event queue.
    let counted = row(&out, "counted by the agent:");
    assert!(
        counted.contains("dropped at the queue 0,"),
        "{counted}\n{out}"
    );
    // The agent was stopped: its lock is free.
    let data = dir.path().join("data");
    assert!(edr_engine::running_agent(&data).is_none());
}

#[test]
fn pipeline_keep_data_leaves_a_data_dir_the_agent_reads() {
    let dir = tempfile::tempdir().expect("tempdir");
    let out = bench(&[
        "pipeline",
        "--rates",
        "2000",
        "--duration",
        "1s",
        "--batch",
        "500",
        "--detection",
        "off",
        "--keep-data",
        "--work-dir",
        &dir.path().display().to_string(),
    ]);
    let stored: u64 = row(&out, "2000 ")
        .split_whitespace()
        .nth(2)
        .and_then(|w| w.parse().ok())
        .unwrap_or_else(|| panic!("no stored column:\n{out}"));
    assert!(stored > 0, "{out}");
    let data = dir.path().join("data");
    let events = Command::new(agent_binary())
        .args(["events", "--data-dir"])
        .arg(&data)
        .output()
        .expect("edr-agent runs");
    assert!(
        events.status.success(),
        "{}",
        String::from_utf8_lossy(&events.stderr)
    );
    let lines = String::from_utf8_lossy(&events.stdout).lines().count() as u64;
    assert_eq!(
        lines, stored,
        "edr-agent events read {lines} of the {stored} stored:\n{out}"
    );
}
