//! The file collector against real files in a temporary directory.
//!
//! Each test runs its own collector on its own tempdir and waits (with a
//! deadline) for the events a user would expect to see.

mod common;

use std::ffi::OsStr;
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};
use std::sync::atomic::Ordering::Relaxed;
use std::sync::mpsc::RecvTimeoutError;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use edr_collect::{file, Coverage};
use edr_config::{FileMonitorConfig, FileSource};
use edr_pipeline::Counters;
use serde_json::Value;
use sha2::{Digest, Sha256};
use tokio_util::sync::CancellationToken;

const DEADLINE: Duration = Duration::from_secs(10);

struct Collector {
    rt: tokio::runtime::Runtime,
    task: Option<tokio::task::JoinHandle<()>>,
    rx: edr_pipeline::EventRx,
    counters: Arc<Counters>,
    coverage: Arc<Mutex<Coverage>>,
    cancel: CancellationToken,
    /// Every event received so far, for "nothing about X" checks.
    seen: Vec<Value>,
}

/// Only `watch`: the per-OS persistence lists are left out, so the events
/// are the test's own.
fn config(source: FileSource, watch: &[&Path]) -> FileMonitorConfig {
    FileMonitorConfig {
        enabled: true,
        source,
        watch_paths: watch.iter().map(|p| p.display().to_string()).collect(),
        linux_watch_paths: Vec::new(),
        macos_watch_paths: Vec::new(),
        exclude_paths: vec!["**/excluded/**".into()],
        max_file_size_mb: 1,
        calculate_hashes: true,
        hash_rate_limit_mb_per_sec: 64,
    }
}

impl Collector {
    /// Starts the collector and waits until `ready` is watched.
    fn start(cfg: FileMonitorConfig, ready: &Path) -> Collector {
        let common::Harness { rt, rx, ctx } = common::harness();
        let (counters, coverage, cancel) = (
            Arc::clone(&ctx.counters),
            Arc::clone(&ctx.coverage),
            ctx.cancel.clone(),
        );
        let task = rt.spawn(file::run(cfg, ctx));
        let c = Collector {
            rt,
            task: Some(task),
            rx,
            counters,
            coverage,
            cancel,
            seen: Vec::new(),
        };
        let ready = ready.display().to_string();
        c.wait_for_coverage(|cov| cov.watched_paths.contains(&ready));
        c
    }

    fn wait_for_coverage(&self, done: impl Fn(&Coverage) -> bool) -> Coverage {
        let end = Instant::now() + DEADLINE;
        loop {
            let cov = self.coverage.lock().expect("coverage").clone();
            if done(&cov) {
                return cov;
            }
            assert!(Instant::now() < end, "coverage never got there: {cov:?}");
            std::thread::sleep(Duration::from_millis(10));
        }
    }

    /// The first event (as a SIEM sees it) that satisfies `want`.
    fn expect(&mut self, what: &str, want: impl Fn(&Value) -> bool) -> Value {
        let end = Instant::now() + DEADLINE;
        loop {
            let left = end.saturating_duration_since(Instant::now());
            match self.rx.recv_timeout(left) {
                Ok(event) => {
                    let v = serde_json::to_value(&event).expect("serializes");
                    self.seen.push(v.clone());
                    if want(&v) {
                        return v;
                    }
                }
                Err(RecvTimeoutError::Timeout) | Err(RecvTimeoutError::Disconnected) => panic!(
                    "no {what} within {DEADLINE:?}; got:\n{}",
                    self.seen
                        .iter()
                        .map(|v| format!("{} {}", v["event"]["action"], v["file"]["path"]))
                        .collect::<Vec<_>>()
                        .join("\n")
                ),
            }
        }
    }

    fn stop(mut self) {
        self.cancel.cancel();
        if let Some(task) = self.task.take() {
            self.rt
                .block_on(async { tokio::time::timeout(DEADLINE, task).await })
                .expect("collector stops after cancel")
                .expect("collector task ends cleanly");
        }
        let cov = self.coverage.lock().expect("coverage");
        assert!(
            cov.watched_paths.is_empty(),
            "stopped collector still claims watches"
        );
    }
}

fn is(v: &Value, action: &str, path: &Path) -> bool {
    v["event"]["action"] == action && v["file"]["path"] == path.to_string_lossy().as_ref()
}

fn sha256_hex(data: &[u8]) -> String {
    Sha256::digest(data)
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

fn create_modify_rename_delete_are_reported_with_their_paths(source: FileSource) {
    let dir = tempfile::tempdir().expect("tempdir");
    let outside = tempfile::tempdir().expect("tempdir");
    let mut c = Collector::start(config(source, &[dir.path()]), dir.path());

    let a = dir.path().join("report.txt");
    std::fs::write(&a, b"v1").expect("write");
    let created = c.expect("file-created", |v| is(v, "file-created", &a));
    assert_eq!(created["event"]["kind"], "event");
    assert_eq!(created["event"]["category"], serde_json::json!(["file"]));
    assert_eq!(created["event"]["type"], serde_json::json!(["creation"]));
    assert_eq!(created["file"]["name"], "report.txt");
    assert_eq!(created["file"]["extension"], "txt");
    assert_eq!(
        created["file"]["directory"],
        dir.path().to_string_lossy().as_ref()
    );
    assert_eq!(created["file"]["type"], "file");

    {
        use std::io::Write;
        let mut f = std::fs::OpenOptions::new()
            .append(true)
            .open(&a)
            .expect("open");
        f.write_all(b" and v2").expect("append");
    }
    let modified = c.expect("file-modified", |v| {
        is(v, "file-modified", &a) && v["file"]["size"] == 9
    });
    assert_eq!(modified["event"]["type"], serde_json::json!(["change"]));

    let b = dir.path().join("renamed.md");
    std::fs::rename(&a, &b).expect("rename");
    let renamed = c.expect("file-renamed", |v| is(v, "file-renamed", &b));
    assert_eq!(renamed["event"]["type"], serde_json::json!(["change"]));
    assert_eq!(
        renamed["edr"]["original_path"],
        a.to_string_lossy().as_ref()
    );
    assert_eq!(renamed["file"]["extension"], "md");

    std::fs::remove_file(&b).expect("delete");
    let deleted = c.expect("file-deleted", |v| is(v, "file-deleted", &b));
    assert_eq!(deleted["event"]["type"], serde_json::json!(["deletion"]));

    // Moving out of and into the watched tree: only one name is known.
    let inside = dir.path().join("leaving.bin");
    std::fs::write(&inside, b"x").expect("write");
    c.expect("file-created", |v| is(v, "file-created", &inside));
    let away = outside.path().join("left.bin");
    std::fs::rename(&inside, &away).expect("rename out");
    let out = c.expect("rename out of the tree", |v| is(v, "file-renamed", &inside));
    assert_eq!(out["event"]["type"], serde_json::json!(["deletion"]));

    let back = dir.path().join("returned.bin");
    std::fs::rename(&away, &back).expect("rename in");
    let into = c.expect("rename into the tree", |v| is(v, "file-renamed", &back));
    assert_eq!(into["event"]["type"], serde_json::json!(["creation"]));
    assert_eq!(into["file"]["hash"]["sha256"], sha256_hex(b"x"));

    assert!(
        !c.seen.iter().any(|v| v["file"]["path"]
            .as_str()
            .is_some_and(|p| p.starts_with(&*outside.path().to_string_lossy()))),
        "an unwatched directory produced events"
    );
    c.stop();
}

fn excluded_subdirectory_produces_nothing(source: FileSource) {
    let dir = tempfile::tempdir().expect("tempdir");
    // Made before the watch starts: files written into a directory in the
    // instant before its new watch is in place are missed anyway, which
    // would hide a broken exclusion.
    let excluded = dir.path().join("excluded");
    std::fs::create_dir(&excluded).expect("mkdir");
    let mut c = Collector::start(config(source, &[dir.path()]), dir.path());
    let secret = excluded.join("secret.txt");
    std::fs::write(&secret, b"hidden").expect("write");
    std::fs::write(excluded.join("other"), b"hidden").expect("write");
    std::fs::remove_file(&secret).expect("delete");

    // Events leave in order (hashed ones through a FIFO queue), so once the
    // hashed event of a later file is out, any event for the excluded
    // files would have been seen.
    let sentinel = dir.path().join("after.txt");
    std::fs::write(&sentinel, b"after").expect("write");
    c.expect("sentinel hash", |v| {
        v["file"]["path"] == sentinel.to_string_lossy().as_ref()
            && v["file"]["hash"]["sha256"] == sha256_hex(b"after")
    });
    let leaked: Vec<_> = c
        .seen
        .iter()
        .filter(|v| {
            v["file"]["path"]
                .as_str()
                .is_some_and(|p| p.starts_with(&format!("{}/", excluded.display())))
        })
        .collect();
    assert!(leaked.is_empty(), "excluded paths leaked: {leaked:?}");
    c.stop();
}

fn created_file_hash_matches_its_final_content(source: FileSource) {
    let dir = tempfile::tempdir().expect("tempdir");
    let mut c = Collector::start(config(source, &[dir.path()]), dir.path());
    let path = dir.path().join("payload.sh");
    let content: Vec<u8> = (0..200_000u32).flat_map(|i| i.to_le_bytes()).collect();
    // Written and closed before we look: the hasher reads the file when its
    // job runs, so the create or a later modify event carries the hash of
    // the content as it is after the last write.
    std::fs::write(&path, &content).expect("write");
    let expected = sha256_hex(&content);
    let hashed = c.expect("event with the final hash", |v| {
        v["file"]["path"] == path.to_string_lossy().as_ref()
            && v["file"]["hash"]["sha256"] == expected.as_str()
    });
    assert!(
        ["file-created", "file-modified"]
            .contains(&hashed["event"]["action"].as_str().unwrap_or("")),
        "{hashed}"
    );
    assert_eq!(hashed["file"]["size"], content.len());
    c.stop();
}

fn file_over_the_size_cap_is_not_hashed(source: FileSource) {
    let dir = tempfile::tempdir().expect("tempdir");
    let mut c = Collector::start(config(source, &[dir.path()]), dir.path());
    let big = dir.path().join("big.iso");
    std::fs::write(&big, vec![7u8; 1024 * 1024 + 1]).expect("write");
    let v = c.expect("too_large", |v| {
        v["file"]["path"] == big.to_string_lossy().as_ref()
            && v["edr"]["hash_skipped"] == "too_large"
    });
    assert!(v["file"]["hash"].is_null(), "{v}");
    assert!(c.counters.hash_skipped.load(Relaxed) >= 1);
    c.stop();
}

fn fifo_is_reported_without_hanging_or_hashing(source: FileSource) {
    let dir = tempfile::tempdir().expect("tempdir");
    let mut c = Collector::start(config(source, &[dir.path()]), dir.path());
    let fifo = dir.path().join("pipe");
    let cpath = std::ffi::CString::new(fifo.as_os_str().as_bytes()).expect("no NUL");
    // SAFETY: a valid NUL-terminated path and a plain mode.
    let rc = unsafe { libc::mkfifo(cpath.as_ptr(), 0o644) };
    assert_eq!(rc, 0, "mkfifo: {}", std::io::Error::last_os_error());
    let v = c.expect("fifo created", |v| is(v, "file-created", &fifo));
    assert!(v["file"]["hash"].is_null(), "{v}");
    assert_eq!(v["edr"]["hash_skipped"], "not_regular");
    assert!(
        v["file"]["type"].is_null(),
        "a FIFO has no ECS file.type: {v}"
    );

    // The hasher is not stuck on the FIFO: a later file still gets hashed.
    let after = dir.path().join("after");
    std::fs::write(&after, b"ok").expect("write");
    c.expect("hash after the fifo", |v| {
        v["file"]["path"] == after.to_string_lossy().as_ref()
            && v["file"]["hash"]["sha256"] == sha256_hex(b"ok")
    });
    c.stop();
}

fn missing_watch_path_is_reported_and_the_others_still_work(source: FileSource) {
    let dir = tempfile::tempdir().expect("tempdir");
    let missing = dir.path().join("does-not-exist");
    let watched = dir.path().join("real");
    std::fs::create_dir(&watched).expect("mkdir");
    let mut c = Collector::start(config(source, &[&missing, &watched]), &watched);

    if source == FileSource::Fanotify {
        // A prefix filter needs no existing directory: the path is
        // watched, and its creation is news.
        let cov = c.wait_for_coverage(|cov| cov.watched_paths.len() == 2);
        assert!(cov.unwatched_paths.is_empty(), "{cov:?}");
        std::fs::create_dir(&missing).expect("mkdir");
        c.expect("the missing path's creation", |v| {
            is(v, "file-created", &missing)
        });
        let inside = missing.join("new");
        std::fs::write(&inside, b"1").expect("write");
        c.expect("a file in it", |v| is(v, "file-created", &inside));
        c.stop();
        return;
    }
    let cov = c.wait_for_coverage(|cov| !cov.unwatched_paths.is_empty());
    assert_eq!(cov.unwatched_paths.len(), 1, "{cov:?}");
    assert_eq!(cov.unwatched_paths[0].path, missing.to_string_lossy());
    assert_eq!(cov.unwatched_paths[0].reason, "does not exist");
    assert_eq!(
        cov.watched_paths,
        vec![watched.to_string_lossy().into_owned()]
    );
    assert_eq!(c.counters.unwatched_paths.load(Relaxed), 1);

    let f = watched.join("still-works");
    std::fs::write(&f, b"1").expect("write");
    c.expect("event from the watched path", |v| is(v, "file-created", &f));
    c.stop();
}

fn odd_names_survive_newlines_and_invalid_utf8(source: FileSource) {
    let dir = tempfile::tempdir().expect("tempdir");
    let mut c = Collector::start(config(source, &[dir.path()]), dir.path());

    let newline = dir.path().join("line one\nline two.txt");
    std::fs::write(&newline, b"n").expect("write");
    let v = c.expect("newline name", |v| is(v, "file-created", &newline));
    assert_eq!(v["file"]["name"], "line one\nline two.txt");

    let invalid = dir.path().join(OsStr::from_bytes(b"caf\xe9.bin"));
    std::fs::write(&invalid, b"i").expect("write");
    let v = c.expect("invalid UTF-8 name", |v| {
        v["event"]["action"] == "file-created" && v["file"]["name"] == "caf\u{fffd}.bin"
    });
    assert_eq!(v["file"]["path"], invalid.to_string_lossy().as_ref());
    // Hashed although its name is not UTF-8: the hasher opens the real path.
    c.expect("hash of the invalid UTF-8 name", |v| {
        v["file"]["name"] == "caf\u{fffd}.bin" && v["file"]["hash"]["sha256"] == sha256_hex(b"i")
    });
    c.stop();
}

fn symlink_is_described_not_followed(source: FileSource) {
    let dir = tempfile::tempdir().expect("tempdir");
    let target = tempfile::NamedTempFile::new().expect("target");
    std::fs::write(target.path(), b"secret outside").expect("write");
    let mut c = Collector::start(config(source, &[dir.path()]), dir.path());
    let link: PathBuf = dir.path().join("link");
    std::os::unix::fs::symlink(target.path(), &link).expect("symlink");
    let v = c.expect("symlink created", |v| is(v, "file-created", &link));
    assert_eq!(v["file"]["type"], "symlink");
    assert!(v["file"]["hash"].is_null(), "{v}");
    assert_eq!(v["edr"]["hash_skipped"], "not_regular");
    c.stop();
}

/// Each test above, once per source: fanotify (root) and inotify.
macro_rules! on_both_sources {
    ($($name:ident),* $(,)?) => {
        mod fanotify {
            $(
                #[test]
                fn $name() {
                    super::common::root::require_root_because("the fanotify source", "CAP_SYS_ADMIN");
                    super::$name(super::FileSource::Fanotify);
                }
            )*
        }
        mod inotify {
            $(
                #[test]
                fn $name() {
                    super::$name(super::FileSource::Inotify);
                }
            )*
        }
    };
}

on_both_sources!(
    create_modify_rename_delete_are_reported_with_their_paths,
    excluded_subdirectory_produces_nothing,
    created_file_hash_matches_its_final_content,
    file_over_the_size_cap_is_not_hashed,
    fifo_is_reported_without_hanging_or_hashing,
    missing_watch_path_is_reported_and_the_others_still_work,
    odd_names_survive_newlines_and_invalid_utf8,
    symlink_is_described_not_followed,
);
