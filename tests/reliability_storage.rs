//! Storage faults while the agent runs: a full disk, the size cap under a
//! flood, the data dir removed or made read-only, and file permissions.

mod common;

use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use common::agent::{cli, stdout, temporaries, walk, walk_dirs, write_config, Agent, Launch};
use common::root::{fill_disk, require_root, Mount};
use common::{read_events, str_field, wait_for, watched};
use edr_agent::engine::Snapshot;
use edr_agent::metrics::{read_history, AlertKind};
use edr_agent::storage::{batch_stats, list_batches};

/// Writes files into `dir` until stopped: a steady stream of file events.
struct Writer {
    stop: Arc<AtomicBool>,
    thread: Option<std::thread::JoinHandle<u64>>,
}

impl Writer {
    fn start(dir: &Path, per_pause: u64, pause: Duration) -> Writer {
        let stop = Arc::new(AtomicBool::new(false));
        let (dir, flag) = (dir.to_path_buf(), Arc::clone(&stop));
        let thread = std::thread::spawn(move || {
            let mut i = 0u64;
            while !flag.load(Ordering::Relaxed) {
                let _ = std::fs::write(dir.join(format!("w{}", i % 2000)), i.to_le_bytes());
                i += 1;
                if i.is_multiple_of(per_pause) {
                    std::thread::sleep(pause);
                }
            }
            i
        });
        Writer {
            stop,
            thread: Some(thread),
        }
    }

    fn finish(mut self) -> u64 {
        self.stop.store(true, Ordering::Relaxed);
        self.thread
            .take()
            .and_then(|t| t.join().ok())
            .unwrap_or_default()
    }
}

impl Drop for Writer {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

fn has_alert(s: &Snapshot, kind: AlertKind) -> bool {
    s.alerts.iter().any(|a| a.kind == kind)
}

fn lost(s: &Snapshot) -> u64 {
    s.totals.store_failed.iter().sum()
}

fn stored(s: &Snapshot) -> u64 {
    s.totals.stored.iter().sum()
}

/// Every batch file decompresses and parses, and no temporary is left.
fn assert_no_corrupt_file(data: &Path) {
    for path in list_batches(data).expect("list") {
        batch_stats(&path).unwrap_or_else(|e| panic!("{} unreadable: {e}", path.display()));
    }
    let _ = read_events(data);
}

#[test]
fn disk_full_is_counted_alerted_and_recovered_from() {
    require_root("the disk-full test");
    let dir = tempfile::tempdir().expect("tempdir");
    let data = dir.path().join("data");
    let _mount = Mount::tmpfs(&data, 4 * 1024 * 1024);
    let config = write_config(dir.path(), |c| {
        c.agent.max_events_per_batch = 200;
        c.agent.collection_interval_ms = 300;
    });
    let mut agent = Agent::spawn(&config, &data);
    agent.wait_watching();
    let writer = Writer::start(&watched(dir.path()), 20, Duration::from_millis(10));
    agent.wait_status("events stored", |s| stored(s) > 0);

    let filler = fill_disk(&data);
    let full = agent.wait_status("a storage alert", |s| {
        has_alert(s, AlertKind::StorageWrite) && lost(s) > 0 && s.storage.error.is_some()
    });
    let out = cli(&["status"], &data);
    let text = stdout(&out);
    assert_eq!(out.status.code(), Some(0), "{text}");
    assert!(
        text.contains("ALERT:       batches cannot be written"),
        "{text}"
    );
    assert!(text.contains("No space left on device"), "{text}");
    assert!(text.contains("lost (not writable)"), "{text}");
    // Still running, still collecting, a while later.
    std::thread::sleep(Duration::from_secs(2));
    agent.assert_alive();
    let later = agent.wait_status("more events lost", |s| lost(s) > lost(&full));
    assert!(later.totals.produced[1] > full.totals.produced[1]);
    let rss_full = agent.rss_bytes().expect("rss");

    std::fs::remove_file(&filler).expect("free space");
    let recovered = agent.wait_status("recovery", |s| {
        !has_alert(s, AlertKind::StorageWrite)
            && stored(s) > stored(&later)
            && s.storage.error.is_none()
    });
    let sent = writer.finish();
    let (status, err) = agent.stop();
    assert_eq!(status.code(), Some(0), "{err}");
    assert_no_corrupt_file(&data);
    assert!(temporaries(&data).is_empty(), "{:?}", temporaries(&data));
    // The metrics history survived the full disk and covers the recovery.
    let rows = read_history(&data, recovered.latest.ts);
    assert!(!rows.is_empty(), "no metrics history after recovery");
    eprintln!(
        "disk full: {sent} files written, {} events lost while full, {} stored after; RSS while full {} KB",
        lost(&later),
        stored(&recovered) - stored(&later),
        rss_full / 1024
    );
}
