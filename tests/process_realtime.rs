//! Short-lived processes, as an attacker's tools often are: the real
//! engine with only the process collector, 2,000 runs of `/bin/true`, and
//! what the stored events say about them.
//!
//! As root the kernel's process events must catch at least 99% of them
//! with executable and arguments; without root the agent must say that it
//! polls. Polling's own rate is printed (run with `--nocapture`), not
//! asserted: it depends on timing.

mod common;

use std::collections::HashMap;
use std::process::{Command, Stdio};
use std::time::Duration;

use common::{read_events, str_field, test_config, wait_for_async};
use edr_agent::collectors::{Coverage, ProcessCapture};
use edr_agent::config::ProcessSource;
use edr_agent::engine::{EngineHandle, EngineOptions};
use serde_json::Value;
use tokio_util::sync::CancellationToken;

const RUNS: usize = 2_000;

fn is_root() -> bool {
    // SAFETY: geteuid cannot fail.
    unsafe { libc::geteuid() == 0 }
}

/// What the stored events say about the runs of one marker.
struct Capture {
    coverage: Coverage,
    /// Start events per run index.
    starts: HashMap<usize, Vec<Value>>,
    ends: HashMap<usize, Vec<Value>>,
}

impl Capture {
    /// Runs with a start event naming the executable and the marker.
    fn complete(&self) -> usize {
        self.starts
            .values()
            .filter(|s| {
                s.iter().any(|e| {
                    str_field(e, "process.executable").is_some_and(|x| x.ends_with("/true"))
                })
            })
            .count()
    }

    fn rate(&self) -> f64 {
        self.complete() as f64 / RUNS as f64
    }
}

/// The index of the run an event is about, if it is one of ours.
fn run_index(e: &Value, marker: &str) -> Option<usize> {
    let args = e.get("process")?.get("args")?.as_array()?;
    args.iter()
        .filter_map(Value::as_str)
        .find_map(|a| a.strip_prefix(marker)?.strip_prefix('-')?.parse().ok())
}

/// Starts the engine with only the process collector, runs `/bin/true`
/// `RUNS` times with unique arguments, stops, and reads the store.
async fn capture(source: ProcessSource) -> Capture {
    let dir = tempfile::tempdir().expect("tempdir");
    let mut c = test_config(dir.path());
    c.collectors.file_monitor.enabled = false;
    c.collectors.process_monitor.enabled = true;
    c.collectors.process_monitor.source = source;
    let data = c.data_dir();
    let engine = EngineHandle::start(c, EngineOptions::default(), CancellationToken::new())
        .expect("engine starts");
    let coverage = wait_for_async(Duration::from_secs(10), || {
        let cov = engine.snapshot().coverage;
        cov.process_source.is_some().then_some(cov)
    })
    .await
    .expect("the process collector reports its source");

    let marker = format!("edr-rt-{}-{source:?}", std::process::id());
    tokio::task::spawn_blocking({
        let marker = marker.clone();
        move || {
            for i in 0..RUNS {
                let status = Command::new("/bin/true")
                    .arg(format!("{marker}-{i}"))
                    .stdin(Stdio::null())
                    .status()
                    .expect("run /bin/true");
                assert!(status.success());
            }
        }
    })
    .await
    .expect("runner");
    engine.shutdown().await;

    let mut starts: HashMap<usize, Vec<Value>> = HashMap::new();
    let mut ends: HashMap<usize, Vec<Value>> = HashMap::new();
    for e in read_events(&data) {
        let Some(i) = run_index(&e, &marker) else {
            continue;
        };
        match e["event"]["type"][0].as_str() {
            Some("start") => starts.entry(i).or_default().push(e),
            Some("end") => ends.entry(i).or_default().push(e),
            _ => {}
        }
    }
    Capture {
        coverage,
        starts,
        ends,
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn short_processes_are_captured_with_executable_and_arguments() {
    let cap = capture(ProcessSource::Auto).await;
    if !is_root() {
        // Without the privilege the agent must say it is polling, and why.
        assert_eq!(cap.coverage.process_capture, Some(ProcessCapture::Scan));
        let note = cap.coverage.process_note.clone().unwrap_or_default();
        assert!(note.contains("unavailable"), "{note}");
        assert!(note.contains("can be missed"), "{note}");
        eprintln!(
            "not root: polling caught {:.1}% of {RUNS} short processes",
            cap.rate() * 100.0
        );
        return;
    }
    assert_eq!(
        cap.coverage.process_capture,
        Some(ProcessCapture::Event),
        "{:?}",
        cap.coverage
    );
    assert_eq!(
        cap.coverage.process_source.as_deref(),
        Some("netlink proc connector")
    );
    eprintln!(
        "event source: {} of {RUNS} short processes with executable and arguments ({:.2}%), {} with a start event",
        cap.complete(),
        cap.rate() * 100.0,
        cap.starts.len()
    );
    assert!(
        cap.rate() >= 0.99,
        "only {} of {RUNS} captured with their executable",
        cap.complete()
    );

    // Each run is one process: one start and one end with the same id, the
    // end with its exit code; the scan reported none of them again.
    for (i, starts) in &cap.starts {
        assert_eq!(starts.len(), 1, "run {i} started {} times", starts.len());
        let start = &starts[0];
        assert_eq!(str_field(start, "edr.source"), Some("event"));
        assert_eq!(str_field(start, "event.action"), Some("process-started"));
        let ends = cap.ends.get(i).map(Vec::as_slice).unwrap_or_default();
        assert_eq!(ends.len(), 1, "run {i} ended {} times", ends.len());
        let end = &ends[0];
        assert_eq!(str_field(end, "edr.source"), Some("event"));
        assert_eq!(
            str_field(start, "process.entity_id"),
            str_field(end, "process.entity_id")
        );
        assert_eq!(end["process"]["exit_code"], 0);
        // Started by this test process.
        assert_eq!(
            start["process"]["parent"]["pid"].as_u64(),
            Some(u64::from(std::process::id()))
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn polling_says_what_it_misses() {
    let cap = capture(ProcessSource::Scan).await;
    assert_eq!(cap.coverage.process_capture, Some(ProcessCapture::Scan));
    assert_eq!(cap.coverage.process_source.as_deref(), Some("scan"));
    let note = cap.coverage.process_note.clone().unwrap_or_default();
    assert!(
        note.contains("processes shorter than the scan interval can be missed"),
        "{note}"
    );
    eprintln!(
        "polling every 1000 ms: {} of {RUNS} short processes ({:.2}%)",
        cap.complete(),
        cap.rate() * 100.0
    );
}
