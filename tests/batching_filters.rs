//! Adaptive batching, event filtering and zstd storage, through the engine
//! with real file activity in a watched temp dir, and the CLI readers on
//! what it stored.

mod common;

use std::time::Duration;

use common::{
    batch_sizes, read_events, start_engine as start, str_field, test_config, touch_files,
    wait_for_async, wait_watching, watched,
};
use edr_config::Compression;
use edr_engine::{EngineHandle, EngineOptions};
use edr_store::list_batches;
use tokio_util::sync::CancellationToken;

async fn wait_totals(engine: &EngineHandle, what: fn(&edr_engine::Totals) -> u64, n: u64) {
    let ok = wait_for_async(Duration::from_secs(15), || {
        (what(&engine.snapshot().totals) >= n).then_some(())
    })
    .await;
    assert!(
        ok.is_some(),
        "never reached {n}: {:?}",
        engine.snapshot().totals
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_quiet_batch_waits_for_min_events_past_the_interval() {
    let dir = tempfile::tempdir().expect("tempdir");
    let mut c = test_config(dir.path());
    c.agent.collection_interval_ms = 200;
    c.agent.adaptive_batching.enabled = true;
    c.agent.adaptive_batching.min_events = 40;
    c.agent.adaptive_batching.max_interval_ms = 3_600_000;
    let data = c.data_dir();
    let engine = start(c);
    wait_watching(&engine).await;
    touch_files(&watched(dir.path()), "few", 3);
    wait_totals(&engine, |t| t.produced[1], 3).await;
    // Five intervals later, the few events are still in the open batch.
    tokio::time::sleep(Duration::from_millis(1000)).await;
    assert!(batch_sizes(&data).is_empty(), "{:?}", batch_sizes(&data));
    touch_files(&watched(dir.path()), "more", 40);
    let written = wait_for_async(Duration::from_secs(10), || {
        let sizes = batch_sizes(&data);
        (!sizes.is_empty()).then_some(sizes)
    })
    .await
    .expect("a batch once min_events arrived");
    assert!(written[0] >= 40, "{written:?}");
    engine.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_burst_of_writes_to_one_file_is_stored_once_and_counted() {
    let dir = tempfile::tempdir().expect("tempdir");
    let mut c = test_config(dir.path());
    c.filters.coalesce_file_changes_ms = 3_600_000;
    let data = c.data_dir();
    let opts = EngineOptions {
        recent_events: 500,
        ..EngineOptions::default()
    };
    let engine = EngineHandle::start(c, opts, CancellationToken::new()).expect("starts");
    wait_watching(&engine).await;
    let path = watched(dir.path()).join("busy.log");
    for i in 0..50u32 {
        std::fs::write(&path, i.to_le_bytes()).expect("write");
    }
    touch_files(&watched(dir.path()), "other", 3);
    // The queue is in order: once the last file's change is stored, every
    // change of the busy file has been through the filter.
    let last = wait_for_async(Duration::from_secs(15), || {
        engine
            .recent_events(500)
            .iter()
            .any(|r| {
                r.action == edr_model::Action::FileModified
                    && r.file_path
                        .as_deref()
                        .is_some_and(|p| p.ends_with("other-2.txt"))
            })
            .then_some(())
    })
    .await;
    assert!(last.is_some(), "the last write never arrived");
    assert!(engine.snapshot().totals.filtered[1] >= 1);
    engine.shutdown().await;
    let events = read_events(&data);
    let modified_busy = events
        .iter()
        .filter(|e| {
            str_field(e, "event.action") == Some("file-modified")
                && str_field(e, "file.path").is_some_and(|p| p.ends_with("busy.log"))
        })
        .count();
    assert_eq!(modified_busy, 1, "one change per window");
    for i in 0..3 {
        let name = format!("other-{i}.txt");
        assert!(
            events.iter().any(|e| {
                str_field(e, "event.action") == Some("file-modified")
                    && str_field(e, "file.path").is_some_and(|p| p.ends_with(&name))
            }),
            "{name}: other files are not coalesced with it"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn excluded_actions_are_not_stored() {
    let dir = tempfile::tempdir().expect("tempdir");
    let mut c = test_config(dir.path());
    c.filters.exclude_actions = vec!["file-created".into()];
    let data = c.data_dir();
    let engine = start(c);
    wait_watching(&engine).await;
    touch_files(&watched(dir.path()), "x", 5);
    wait_totals(&engine, |t| t.filtered[1], 5).await;
    engine.shutdown().await;
    let events = read_events(&data);
    assert!(!events.is_empty());
    assert!(events
        .iter()
        .all(|e| str_field(e, "event.action") != Some("file-created")));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn zstd_batches_are_read_by_every_cli_reader() {
    let dir = tempfile::tempdir().expect("tempdir");
    let mut c = test_config(dir.path());
    c.storage.local_storage.compression = Compression::Zstd;
    c.storage.local_storage.compression_level = Some(5);
    c.agent.max_events_per_batch = 10;
    let data = c.data_dir();
    let engine = start(c);
    wait_watching(&engine).await;
    touch_files(&watched(dir.path()), "z", 20);
    wait_totals(&engine, |t| t.stored[1], 20).await;
    engine.shutdown().await;
    let files = list_batches(&data).expect("list");
    assert!(files.len() >= 2, "{files:?}");
    assert!(files
        .iter()
        .all(|p| p.to_string_lossy().ends_with(".json.zst")));
    let stored = read_events(&data).len();

    let bin = env!("CARGO_BIN_EXE_edr-agent");
    let out = std::process::Command::new(bin)
        .args(["events", "--data-dir"])
        .arg(&data)
        .output()
        .expect("events runs");
    assert!(out.status.success());
    assert_eq!(String::from_utf8_lossy(&out.stdout).lines().count(), stored);

    let out = std::process::Command::new(bin)
        .args(["stats", "--json", "--summary", "--data-dir"])
        .arg(&data)
        .output()
        .expect("stats runs");
    assert!(out.status.success());
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).expect("json");
    assert_eq!(v["total"]["events"], stored as u64);
    assert_eq!(v["total"]["skipped"], 0);
    assert!(
        v["total"]["reduction"].as_f64().expect("ratio") > 0.5,
        "{v}"
    );
}
