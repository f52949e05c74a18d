//! Floods: a burst of 400k file events, a storm of 5,000 short processes,
//! and an exhausted inotify watch limit. The agent's memory stays bounded,
//! losses are counted per type and shown, `status` keeps answering, and
//! collection works again afterwards.

mod common;

use std::collections::HashSet;
use std::path::Path;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use common::agent::{cli, stdout, write_config, Agent, Launch};
use common::{read_events, str_field, wait_for, watched};
use edr_engine::Snapshot;

/// Resident memory the agent stays under during the floods (debug build,
/// as root, so with the eBPF connection source). Peaks seen: 17-28 MB for
/// inotify bursts and process storms, 31-41.6 MB for the fanotify burst
/// (its directory-handle and writer caches fill, each bounded at 4,096
/// entries), idle and loaded alike: every queue and cache is bounded, so
/// load only decides how full they get. The 22 MB above the highest peak
/// are the margin (41.6 MB was 6 MB from the earlier 48 MB bound); an
/// unbounded queue would hold the burst's 400,000 events of about 1 KB
/// each.
const RSS_BOUND: u64 = 64 * 1024 * 1024;
/// Longest `edr-agent status` may take, and the oldest its figures may be,
/// while a flood runs. Idle, status answers in tens of milliseconds with
/// figures at most a second old (the agent rewrites them every second);
/// 30 s is 30 missed rewrites, a margin no load of a 2-core machine eats,
/// so it only catches a hung agent. (A hang shorter than the flood is
/// caught anyway: each test then waits for figures dated after it.) How
/// fast status answers under a flood is a benchmark figure.
const STATUS_DEADLINE: Duration = Duration::from_secs(30);

/// Samples the agent's RSS and runs `edr-agent status` until stopped.
struct Watcher {
    stop: Arc<AtomicBool>,
    thread: Option<std::thread::JoinHandle<Observed>>,
}

#[derive(Debug, Default)]
struct Observed {
    max_rss: u64,
    rss_samples: u64,
    status_calls: u64,
    slowest_status: Duration,
    oldest_status: Duration,
}

impl Watcher {
    fn start(pid: u32, data: &Path) -> Watcher {
        let stop = Arc::new(AtomicBool::new(false));
        let (flag, data) = (Arc::clone(&stop), data.to_path_buf());
        let thread = std::thread::spawn(move || {
            let mut o = Observed::default();
            let mut last_status = Instant::now() - Duration::from_secs(1);
            while !flag.load(Ordering::Relaxed) {
                if let Some(rss) = common::agent::proc_rss_bytes(pid) {
                    o.max_rss = o.max_rss.max(rss);
                    o.rss_samples += 1;
                }
                if last_status.elapsed() >= Duration::from_millis(500) {
                    last_status = Instant::now();
                    let out = cli(&["status", "--json"], &data);
                    let took = last_status.elapsed();
                    o.slowest_status = o.slowest_status.max(took);
                    o.status_calls += 1;
                    let v: serde_json::Value =
                        serde_json::from_slice(&out.stdout).expect("status json");
                    assert_eq!(v["running"], true, "status lost the agent");
                    let snap: Snapshot =
                        serde_json::from_value(v["status"].clone()).expect("snapshot");
                    let age = std::time::SystemTime::now()
                        .duration_since(std::time::SystemTime::from(snap.latest.ts))
                        .unwrap_or_default();
                    o.oldest_status = o.oldest_status.max(age);
                }
                std::thread::sleep(Duration::from_millis(10));
            }
            o
        });
        Watcher {
            stop,
            thread: Some(thread),
        }
    }

    fn finish(mut self) -> Observed {
        self.stop.store(true, Ordering::Relaxed);
        self.thread
            .take()
            .expect("running")
            .join()
            .expect("watcher thread")
    }
}

fn assert_bounded(what: &str, o: &Observed) {
    eprintln!("{what}: {o:?}");
    assert!(o.rss_samples > 0);
    assert!(
        o.max_rss <= RSS_BOUND,
        "{what}: RSS reached {} KB",
        o.max_rss / 1024
    );
    assert!(o.status_calls > 0);
    assert!(
        o.slowest_status <= STATUS_DEADLINE,
        "{what}: status took {:?}",
        o.slowest_status
    );
    assert!(
        o.oldest_status <= STATUS_DEADLINE,
        "{what}: status figures {:?} old",
        o.oldest_status
    );
}

#[test]
fn a_burst_of_400k_file_events_is_survived_counted_and_shown() {
    file_burst(edr_config::FileSource::Inotify);
}

/// The same burst through fanotify, which sees every change on the
/// filesystem (the burst's tmpfs) and filters in user space.
#[test]
fn a_burst_of_400k_file_events_through_fanotify_is_survived_counted_and_shown() {
    file_burst(edr_config::FileSource::Fanotify);
}

fn file_burst(source: edr_config::FileSource) {
    let _heavy = common::heavy(); // a flood; status timed
    const THREADS: u64 = 4;
    const WRITES_PER_THREAD: u64 = 100_000;
    common::root::require_root("the file burst test (tmpfs)");
    let dir = tempfile::tempdir().expect("tempdir");
    let data = dir.path().join("data");
    // On tmpfs the writers are not slowed by the disk journal.
    let _fast = common::root::Mount::tmpfs(&watched(dir.path()), 512 * 1024 * 1024);
    let config = write_config(dir.path(), |c| {
        c.collectors.file_monitor.calculate_hashes = true;
        c.collectors.file_monitor.source = source;
    });
    let mut agent = Agent::spawn(&config, &data);
    let up = agent.wait_watching();
    let name = match source {
        edr_config::FileSource::Fanotify => "fanotify",
        _ => "inotify",
    };
    assert_eq!(up.coverage.file_source.as_deref(), Some(name));
    let rss_idle = agent.rss_bytes().expect("rss");
    let watcher = Watcher::start(agent.pid(), &data);

    // 400k writes; each overwrite is a truncate and a write, two modify
    // events, which inotify coalesces when they queue up unread.
    let started = Instant::now();
    let writers: Vec<_> = (0..THREADS)
        .map(|t| {
            let d = watched(dir.path()).join(format!("burst-{t}"));
            std::fs::create_dir_all(&d).expect("dir");
            std::thread::spawn(move || {
                for i in 0..WRITES_PER_THREAD {
                    std::fs::write(d.join(format!("f{}", i % 5000)), i.to_le_bytes())
                        .expect("write");
                }
            })
        })
        .collect();
    for w in writers {
        w.join().expect("writer");
    }
    let burst = started.elapsed();
    // Let the agent catch up before judging it.
    let settled = agent.wait_status("the burst absorbed", |s| {
        s.latest.events_per_sec[1] < 100.0 && s.totals.produced[1] > 0
    });
    let observed = watcher.finish();
    assert_bounded("file burst", &observed);

    // Losses are counted and shown per type.
    let t = &settled.totals;
    let seen = t.produced[1] + t.dropped[1];
    eprintln!(
        "file burst ({name}): {} writes in {burst:?}; produced {}, dropped {:?}, overflows {}, hash skipped {} (+{} queue full); RSS idle {} KB",
        THREADS * WRITES_PER_THREAD,
        t.produced[1],
        t.dropped,
        t.watcher_overflows,
        t.hash_skipped,
        t.hash_queue_dropped,
        rss_idle / 1024
    );
    assert!(seen > 0);
    let text = stdout(&cli(&["status"], &data));
    assert!(
        text.contains(&format!(
            "dropped:     {} (queue full: process {}, file {}, network {})",
            t.dropped_total(),
            t.dropped[0],
            t.dropped[1],
            t.dropped[2]
        )),
        "{text}"
    );
    if t.watcher_overflows > 0 {
        assert!(text.contains("the kernel queue overflowed"), "{text}");
    }
    assert!(
        t.dropped[1] + t.watcher_overflows + t.hash_queue_dropped > 0,
        "a burst this size was expected to overflow something: {t:?}"
    );

    // Collection works again: a new file is recorded.
    let marker = watched(dir.path()).join("after-the-burst.txt");
    let old_batches: std::collections::HashSet<_> = edr_store::list_batches(&data)
        .expect("list")
        .into_iter()
        .collect();
    std::fs::write(&marker, b"after").expect("marker");
    // Waited for in the store, not in the counters: on a loaded machine
    // the last of the burst may still be counted after `settled`, and a
    // stop before the marker's own event reached the batch would lose it.
    // The batch interval is 5 s; 60 s is the margin for a loaded machine.
    let found = wait_for(Duration::from_secs(60), || {
        agent.assert_alive();
        // Only the batches written since: rereading the burst's every
        // 50 ms would load the machine the agent needs.
        let new: Vec<_> = edr_store::list_batches(&data)
            .expect("list")
            .into_iter()
            .filter(|p| !old_batches.contains(p))
            .collect();
        new.iter()
            .any(|p| {
                let reader = edr_store::open_batch_reader(p).expect("open batch");
                std::io::BufRead::lines(reader).any(|l| {
                    let e: serde_json::Value =
                        serde_json::from_str(&l.expect("decompresses")).expect("JSON");
                    str_field(&e, "file.path") == marker.to_str()
                })
            })
            .then_some(())
    });
    let (status, err) = agent.stop();
    assert_eq!(status.code(), Some(0), "{err}");
    assert!(
        found.is_some(),
        "no event for the file written after the burst: {:?}",
        settled.totals
    );
}

#[test]
fn a_storm_of_5000_short_processes_is_survived() {
    let _heavy = common::heavy(); // a flood; status timed
    const THREADS: usize = 4;
    const PER_THREAD: usize = 1250;
    let dir = tempfile::tempdir().expect("tempdir");
    let data = dir.path().join("data");
    let config = write_config(dir.path(), |c| {
        c.collectors.process_monitor.enabled = true;
        c.collectors.process_monitor.scan_interval_ms = 100;
    });
    let mut agent = Agent::spawn(&config, &data);
    agent.wait_watching();
    let before = agent.wait_status("the process inventory", |s| s.totals.produced[0] > 0);
    let watcher = Watcher::start(agent.pid(), &data);
    let started = Instant::now();
    let spawners: Vec<_> = (0..THREADS)
        .map(|_| {
            std::thread::spawn(|| {
                for _ in 0..PER_THREAD {
                    let status = std::process::Command::new("/bin/true")
                        .status()
                        .expect("spawn /bin/true");
                    assert!(status.success());
                }
            })
        })
        .collect();
    for s in spawners {
        s.join().expect("spawner");
    }
    let storm = started.elapsed();
    std::thread::sleep(Duration::from_secs(1));
    let observed = watcher.finish();
    assert_bounded("process storm", &observed);

    // Collection works again: a new process is recorded.
    let tag = format!("edr-after-storm-{}", std::process::id());
    let mut marker = std::process::Command::new("/bin/sh")
        .args(["-c", "sleep 3; :", &tag])
        .spawn()
        .expect("marker process");
    let after = agent.wait_status("the marker process", |s| {
        s.totals.stored[0] > before.totals.stored[0]
    });
    let seen = wait_for(Duration::from_secs(15), || {
        let out = cli(&["events", "--type", "process", "--grep", &tag], &data);
        (!stdout(&out).is_empty()).then_some(())
    });
    let _ = marker.kill();
    let _ = marker.wait();
    let t = &after.totals;
    eprintln!(
        "process storm: {} processes in {storm:?}; process events produced {}, dropped {}",
        THREADS * PER_THREAD,
        t.produced[0] - before.totals.produced[0],
        t.dropped[0]
    );
    let text = stdout(&cli(&["status"], &data));
    assert!(
        text.contains(&format!("process {}", t.dropped[0])),
        "{text}"
    );
    let (status, err) = agent.stop();
    assert_eq!(status.code(), Some(0), "{err}");
    assert!(
        seen.is_some(),
        "the process started after the storm was not recorded"
    );
    // How many of the storm's processes were recorded depends on the
    // source (the kernel's events as root, else polling, which sees only
    // those alive at a scan) and on the load: printed, not asserted.
    let ours = std::process::id() as i64;
    let (mut started, mut ended) = (HashSet::new(), HashSet::new());
    for e in read_events(&data) {
        let is_true = str_field(&e, "process.executable").is_some_and(|x| x.ends_with("/true"));
        let child = common::field(&e, "process.parent.pid").and_then(|v| v.as_i64()) == Some(ours);
        let pid = common::field(&e, "process.pid").and_then(|v| v.as_i64());
        if let (true, true, Some(pid)) = (is_true, child, pid) {
            match str_field(&e, "event.action") {
                Some("process-started") => started.insert(pid),
                Some("process-ended") => ended.insert(pid),
                _ => false,
            };
        }
    }
    eprintln!(
        "process storm: source {:?}; of the {} /bin/true, {} stored with a start, {} with an end; \
         missed by the source {}, lost by it {}, partial {}",
        before.coverage.process_source,
        THREADS * PER_THREAD,
        started.len(),
        ended.len(),
        t.process_source_missed,
        t.process_events_lost,
        t.process_partial
    );
}

#[test]
fn an_exhausted_inotify_limit_is_partial_coverage_not_a_crash() {
    let _heavy = common::heavy(); // not beside a flood
    common::root::require_root("the inotify limit test (user namespace)");
    const LIMIT: u32 = 40;
    let dir = tempfile::tempdir().expect("tempdir");
    let data = dir.path().join("data");
    // A small tree that fits the limit and a large one that does not.
    let small = dir.path().join("small");
    let large = dir.path().join("large");
    for i in 0..10 {
        std::fs::create_dir_all(small.join(format!("d{i}"))).expect("dir");
    }
    for i in 0..100 {
        std::fs::create_dir_all(large.join(format!("d{i}"))).expect("dir");
    }
    let config = write_config(dir.path(), |c| {
        c.collectors.file_monitor.watch_paths =
            vec![small.display().to_string(), large.display().to_string()];
        c.agent.collection_interval_ms = 200;
    });
    let mut agent = Agent::launch(
        &config,
        &data,
        Launch {
            inotify_watch_limit: Some(LIMIT),
            ..Launch::default()
        },
    );
    let s = agent.wait_watching();
    let small_s = small.display().to_string();
    let large_s = large.display().to_string();
    assert_eq!(s.coverage.watched_paths, vec![small_s.clone()]);
    let unwatched = &s.coverage.unwatched_paths;
    assert_eq!(unwatched.len(), 1, "{unwatched:?}");
    assert_eq!(unwatched[0].path, large_s);
    assert!(
        unwatched[0].reason.contains("inotify watch limit reached"),
        "{unwatched:?}"
    );
    let text = stdout(&cli(&["status"], &data));
    assert!(
        text.contains(&format!(
            "not watched: {large_s} (inotify watch limit reached"
        )),
        "{text}"
    );

    // New directories past the limit are reported too, by path.
    for i in 0..40 {
        std::fs::create_dir_all(small.join(format!("new{i}"))).expect("dir");
    }
    let s = agent.wait_status("new directories reported unwatched", |s| {
        s.coverage
            .unwatched_paths
            .iter()
            .any(|u| u.path.starts_with(&format!("{small_s}/new")))
    });
    eprintln!("inotify limit {LIMIT}: coverage {:?}", s.coverage);
    // The watched part still works.
    let file = small.join("d0").join("still-watched.txt");
    std::fs::write(&file, b"x").expect("write");
    agent.wait_status("the file event", |s| s.totals.stored[1] > 0);
    agent.assert_alive();
    let (status, err) = agent.stop();
    assert_eq!(status.code(), Some(0), "{err}");
    let found = read_events(&data)
        .iter()
        .any(|e| str_field(e, "file.path") == file.to_str());
    assert!(found, "no event from the watched tree");
}
