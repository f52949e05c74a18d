//! The engine in-process, driven by real file activity in a watched temp
//! dir: batch triggers, live config, pause, shutdown flush, retention,
//! the data-dir lock and the metrics snapshot.

mod common;

use std::time::Duration;

use common::{
    batch_sizes, read_events, start_engine as start, str_field, test_config, touch_files,
    wait_for_async, wait_not_watching, wait_watching, watched,
};
use edr_engine::{EngineError, EngineHandle, EngineOptions, EngineState};
use edr_model::event::EventType;
use tokio_util::sync::CancellationToken;

async fn wait_stored(engine: &EngineHandle, at_least: u64) -> bool {
    wait_for_async(Duration::from_secs(15), || {
        (engine.snapshot().totals.stored.iter().sum::<u64>() >= at_least).then_some(())
    })
    .await
    .is_some()
}

async fn wait_produced(engine: &EngineHandle, at_least: u64) -> bool {
    wait_for_async(Duration::from_secs(15), || {
        (engine.snapshot().totals.produced.iter().sum::<u64>() >= at_least).then_some(())
    })
    .await
    .is_some()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn full_batches_hold_exactly_max_events() {
    let dir = tempfile::tempdir().expect("tempdir");
    let mut c = test_config(dir.path());
    c.agent.max_events_per_batch = 25;
    c.agent.collection_interval_ms = 3_600_000;
    let data = c.data_dir();
    let engine = start(c);
    wait_watching(&engine).await;
    touch_files(&watched(dir.path()), "f", 120);
    assert!(wait_stored(&engine, 100).await, "batches never filled");
    engine.shutdown().await;
    let sizes = batch_sizes(&data);
    let (last, full) = sizes.split_last().expect("some batches");
    assert!(full.len() >= 4, "{sizes:?}");
    assert!(full.iter().all(|n| *n == 25), "{sizes:?}");
    assert!(*last >= 1 && *last <= 25, "{sizes:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn interval_commits_a_partial_batch() {
    let dir = tempfile::tempdir().expect("tempdir");
    let mut c = test_config(dir.path());
    c.agent.max_events_per_batch = 1000;
    c.agent.collection_interval_ms = 300;
    let data = c.data_dir();
    let engine = start(c);
    wait_watching(&engine).await;
    touch_files(&watched(dir.path()), "interval", 3);
    let found = wait_for_async(Duration::from_secs(10), || {
        let events = read_events(&data);
        let paths: Vec<String> = events
            .iter()
            .filter_map(|e| str_field(e, "file.path").map(String::from))
            .collect();
        (0..3)
            .all(|i| {
                paths
                    .iter()
                    .any(|p| p.ends_with(&format!("interval-{i}.txt")))
            })
            .then_some(())
    })
    .await;
    // Still running: the interval, not shutdown, wrote the batch.
    assert!(found.is_some(), "no batch written within the interval");
    engine.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn shutdown_commits_the_open_batch() {
    let dir = tempfile::tempdir().expect("tempdir");
    let mut c = test_config(dir.path());
    c.agent.collection_interval_ms = 3_600_000;
    let data = c.data_dir();
    let engine = start(c);
    wait_watching(&engine).await;
    touch_files(&watched(dir.path()), "late", 5);
    // Each write is a creation and a modification.
    assert!(wait_produced(&engine, 10).await);
    assert!(
        batch_sizes(&data).is_empty(),
        "nothing should be committed yet: {:?}",
        read_events(&data)
    );
    engine.shutdown().await;
    let events = read_events(&data);
    for i in 0..5 {
        let name = format!("late-{i}.txt");
        assert!(
            events
                .iter()
                .any(|e| str_field(e, "file.path").is_some_and(|p| p.ends_with(&name))),
            "{name} missing after shutdown"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn batch_size_change_applies_to_the_next_batches() {
    let dir = tempfile::tempdir().expect("tempdir");
    let mut c = test_config(dir.path());
    c.agent.max_events_per_batch = 1000;
    c.agent.collection_interval_ms = 3_600_000;
    let data = c.data_dir();
    let engine = start(c.clone());
    c.agent.max_events_per_batch = 10;
    engine.apply_config(c).expect("valid change");
    wait_watching(&engine).await;
    touch_files(&watched(dir.path()), "live", 60);
    assert!(wait_stored(&engine, 50).await);
    let sizes = batch_sizes(&data);
    assert!(
        sizes.len() >= 5 && sizes.iter().all(|n| *n == 10),
        "{sizes:?}"
    );
    engine.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn invalid_live_config_changes_nothing() {
    let dir = tempfile::tempdir().expect("tempdir");
    let c = test_config(dir.path());
    let engine = start(c.clone());
    let mut bad = c.clone();
    bad.agent.max_events_per_batch = 0;
    let err = engine.apply_config(bad).expect_err("refused");
    assert!(
        err.to_string().contains("agent.max_events_per_batch"),
        "{err}"
    );
    let mut moved = c.clone();
    moved.storage.local_storage.data_dir = Some("/somewhere/else".into());
    assert!(engine.apply_config(moved).is_err());
    assert_eq!(*engine.config(), c);
    engine.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pause_stops_events_and_resume_restarts_them() {
    let dir = tempfile::tempdir().expect("tempdir");
    let mut c = test_config(dir.path());
    c.agent.collection_interval_ms = 200;
    let engine = start(c);
    wait_watching(&engine).await;
    assert_eq!(engine.snapshot().state(), EngineState::Running);
    engine.pause();
    assert!(engine.snapshot().paused);
    assert_eq!(engine.snapshot().state(), EngineState::Paused);
    wait_not_watching(&engine).await;
    let before = engine.snapshot().totals.produced[1];
    touch_files(&watched(dir.path()), "paused", 10);
    tokio::time::sleep(Duration::from_millis(800)).await;
    assert_eq!(
        engine.snapshot().totals.produced[1],
        before,
        "events while paused"
    );
    engine.resume();
    assert_eq!(engine.snapshot().state(), EngineState::Running);
    wait_watching(&engine).await;
    touch_files(&watched(dir.path()), "resumed", 10);
    assert!(
        wait_produced(&engine, before + 10).await,
        "no events after resume"
    );
    engine.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn disabling_a_collector_live_stops_its_events() {
    let dir = tempfile::tempdir().expect("tempdir");
    let c = test_config(dir.path());
    let engine = start(c.clone());
    wait_watching(&engine).await;
    let mut off = c.clone();
    off.collectors.file_monitor.enabled = false;
    engine.apply_config(off).expect("valid");
    wait_not_watching(&engine).await;
    let before = engine.snapshot().totals.produced[1];
    touch_files(&watched(dir.path()), "off", 10);
    tokio::time::sleep(Duration::from_millis(800)).await;
    assert_eq!(engine.snapshot().totals.produced[1], before);
    engine.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn size_cap_holds_with_one_batch_of_slack() {
    let dir = tempfile::tempdir().expect("tempdir");
    let mut c = test_config(dir.path());
    c.agent.max_events_per_batch = 20;
    c.storage.local_storage.compress_events = false;
    // About 60 KB: a few uncompressed 20-event batches (as root file
    // events carry their writer's process.*, about 1 KB an event).
    c.storage.max_storage_size_gb = 60_000.0 / (1024.0 * 1024.0 * 1024.0);
    let cap = c.max_storage_bytes();
    let data = c.data_dir();
    let engine = start(c);
    wait_watching(&engine).await;
    // Sampled while the events are stored: retention runs after each
    // commit, so the batches on disk may exceed the cap by the batch just
    // committed, never by more.
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let sampler = std::thread::spawn({
        let (stop, data) = (std::sync::Arc::clone(&stop), data.clone());
        move || {
            let (mut worst, mut largest, mut samples) = (0u64, 0u64, 0u64);
            while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                // Files retention deletes between the listing and the stat
                // are no longer on disk: skipped.
                let sizes: Vec<u64> = edr_store::list_batches(&data)
                    .unwrap_or_default()
                    .iter()
                    .filter_map(|p| std::fs::metadata(p).ok().map(|m| m.len()))
                    .collect();
                worst = worst.max(sizes.iter().sum());
                largest = largest.max(sizes.iter().copied().max().unwrap_or(0));
                samples += 1;
                std::thread::sleep(Duration::from_millis(2));
            }
            (worst, largest, samples)
        }
    });
    touch_files(&watched(dir.path()), "cap", 400);
    assert!(wait_stored(&engine, 300).await);
    engine.shutdown().await;
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    let (worst, largest, samples) = sampler.join().expect("sampler");
    assert!(samples > 0 && largest > 0, "nothing sampled");
    assert!(
        worst <= cap + largest,
        "{worst} bytes on disk during the run, over the cap of {cap} plus one batch of {largest}"
    );
    let snap_deleted = edr_store::list_batches(&data).expect("list");
    let total: u64 = snap_deleted
        .iter()
        .map(|p| std::fs::metadata(p).expect("meta").len())
        .sum();
    assert!(total <= cap, "stored {total} bytes over a cap of {cap}");
    assert!(snap_deleted.len() >= 2, "cap too small for the test");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_second_engine_on_the_same_data_dir_is_refused() {
    let dir = tempfile::tempdir().expect("tempdir");
    let c = test_config(dir.path());
    let engine = start(c.clone());
    match EngineHandle::start(c, EngineOptions::default(), CancellationToken::new()) {
        Err(EngineError::AlreadyRunning { pid, .. }) => {
            assert_eq!(pid, Some(std::process::id()))
        }
        Err(e) => panic!("wrong error: {e}"),
        Ok(_) => panic!("second engine started"),
    }
    engine.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn snapshot_reports_the_agent_itself() {
    let dir = tempfile::tempdir().expect("tempdir");
    let mut c = test_config(dir.path());
    c.agent.collection_interval_ms = 200;
    let engine = EngineHandle::start(
        c,
        EngineOptions {
            recent_events: 50,
            ..EngineOptions::default()
        },
        CancellationToken::new(),
    )
    .expect("starts");
    wait_watching(&engine).await;
    touch_files(&watched(dir.path()), "snap", 30);
    assert!(wait_stored(&engine, 30).await);
    let ok = wait_for_async(Duration::from_secs(5), || {
        let s = engine.snapshot();
        (s.latest.rss_bytes > 0 && s.latest.stored_bytes_total > 0 && s.storage.used_bytes > 0)
            .then_some(())
    })
    .await;
    assert!(ok.is_some(), "{:?}", engine.snapshot());
    let recent = engine.recent_events(10);
    assert_eq!(recent.len(), 10);
    assert!(recent.iter().all(|r| r.kind == EventType::File));
    assert!(!engine.history(Duration::from_secs(60)).is_empty());
    engine.shutdown().await;
    // The status file the CLI reads reflects the stop.
    let status = edr_engine::read_status(engine.data_dir()).expect("status file");
    assert!(!status.running);
    assert_eq!(status.state(), EngineState::Stopped);
    assert!(edr_engine::running_agent(engine.data_dir()).is_none());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_data_dir_inside_a_watched_dir_does_not_watch_itself() {
    let dir = tempfile::tempdir().expect("tempdir");
    let mut c = test_config(dir.path());
    // The data dir lives inside the only watched directory.
    let data = watched(dir.path()).join("agent-data");
    c.storage.local_storage.data_dir = Some(data.display().to_string());
    c.agent.collection_interval_ms = 100;
    let engine = start(c);
    wait_watching(&engine).await;
    touch_files(&watched(dir.path()), "one", 1);
    assert!(wait_stored(&engine, 1).await);
    // Batches, status and metrics files keep being written; none of that
    // may come back as file events.
    tokio::time::sleep(Duration::from_millis(1500)).await;
    engine.shutdown().await;
    let events = read_events(&data);
    let own: Vec<_> = events
        .iter()
        .filter_map(|e| str_field(e, "file.path"))
        .filter(|p| p.contains("agent-data"))
        .collect();
    assert!(own.is_empty(), "the agent recorded its own writes: {own:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hand_edits_of_the_config_file_apply_live_and_a_bad_one_is_reported() {
    let dir = tempfile::tempdir().expect("tempdir");
    let mut c = test_config(dir.path());
    c.agent.max_events_per_batch = 7;
    let data = c.data_dir();
    let path = dir.path().join("config.yaml");
    c.save(&path).expect("save");
    let source = edr_config::ConfigSource {
        file: Some(path.clone()),
        ..Default::default()
    };
    let opts = EngineOptions {
        config_source: source.clone(),
        ..EngineOptions::default()
    };
    let engine = EngineHandle::start(
        source.load().expect("loads"),
        opts,
        CancellationToken::new(),
    )
    .expect("starts");
    c.agent.max_events_per_batch = 1234;
    c.save(&path).expect("save");
    let applied = wait_for_async(Duration::from_secs(10), || {
        (engine.config().agent.max_events_per_batch == 1234).then_some(())
    })
    .await;
    assert!(applied.is_some(), "edit not applied");
    assert_eq!(engine.snapshot().config_error, None);

    std::fs::write(&path, "agent:\n  max_events_per_batch: 0\n").expect("write");
    let refused = wait_for_async(Duration::from_secs(10), || engine.snapshot().config_error).await;
    let refused = refused.expect("refusal reported");
    assert!(refused.contains("max_events_per_batch"), "{refused}");
    assert_eq!(engine.config().agent.max_events_per_batch, 1234, "kept");

    engine.shutdown().await;
    let last = edr_engine::read_status(&data).expect("final status");
    assert!(!last.running);
    assert_eq!(edr_engine::running_agent(&data), None, "lock released");
}
