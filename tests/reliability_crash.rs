//! Crashes: SIGKILL at random moments of an event flood, and a second agent
//! started on a data dir that is in use.

mod common;

use std::collections::HashSet;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime};

use common::agent::{cli, stderr, stdout, temporaries, walk, write_config, Agent};
use common::{wait_for, watched};
use edr_store::{batch_stats, list_batches, open_batch_reader};

/// Kill rounds on one data dir.
const ROUNDS: u64 = 20;
/// Batch interval of the agent under test.
const INTERVAL_MS: u64 = 500;

/// File names written by the flood, with when each write returned.
type WriteLog = Arc<Mutex<Vec<(u64, SystemTime)>>>;

fn start_flood(dir: &Path, stop: &Arc<AtomicBool>, log: &WriteLog) -> std::thread::JoinHandle<()> {
    let (dir, stop, log) = (dir.to_path_buf(), Arc::clone(stop), Arc::clone(log));
    std::thread::spawn(move || {
        let mut i = 0u64;
        while !stop.load(Ordering::Relaxed) {
            std::fs::write(dir.join(format!("f{i}")), i.to_le_bytes()).expect("write");
            log.lock().expect("log").push((i, SystemTime::now()));
            i += 1;
            // At most 2,000 files (4,000 stored events, 6,000 inotify
            // events) a second, whatever the machine's load: a flood, but
            // one the agent's queues hold in full for a whole round (see
            // the test), so every loss is the kill's.
            if i.is_multiple_of(10) {
                std::thread::sleep(Duration::from_millis(5));
            }
        }
    })
}

/// The fields of a stored event this test reads.
#[derive(serde::Deserialize)]
struct Stored {
    file: Option<StoredFile>,
}

#[derive(serde::Deserialize)]
struct StoredFile {
    name: Option<String>,
}

/// Adds the flood's file numbers found in batches not read before.
fn stored_names(data: &Path, seen: &mut HashSet<PathBuf>, names: &mut HashSet<u64>) {
    for path in list_batches(data).expect("list") {
        if !seen.insert(path.clone()) {
            continue;
        }
        let reader = open_batch_reader(&path).expect("open batch");
        for line in std::io::BufRead::lines(reader) {
            let line = line.unwrap_or_else(|e| panic!("{} decompresses: {e}", path.display()));
            let event: Stored = serde_json::from_str(&line)
                .unwrap_or_else(|e| panic!("{} has a bad line: {e}", path.display()));
            let name = event.file.and_then(|f| f.name).unwrap_or_default();
            if let Some(i) = name.strip_prefix('f').and_then(|n| n.parse().ok()) {
                names.insert(i);
            }
        }
    }
}

/// Kills land 200 ms to 1.4 s after the spawn (start-up included), and in
/// every fourth round just after the agent's status shows a stored batch,
/// so some rounds store part of the flood however slowly the machine runs.
///
/// What is asserted does not depend on timing: every visible batch is
/// complete, half-written ones are hidden temporaries removed by the next
/// start, and what a kill loses is the tail of the flood, never a write
/// older than one stored: the writes of a round up to its newest stored
/// one are all stored. Nothing is dropped for want of room instead: the
/// kernel queue (16,384), the raw queue (8,192) and the pipeline queue
/// (4,096) hold 4.7 s of the flood's capped 6,000 inotify events a second
/// with the agent stalled outright, and a round lasts 1.4 s, or (every
/// fourth) until the agent has shown that it stores, and so keeps up, plus
/// at most a status period. How much a kill lost, and how old the oldest
/// lost write was, are printed: those are benchmark figures.
#[test]
fn sigkill_during_a_flood_loses_at_most_the_open_batch() {
    let _heavy = common::heavy(); // a flood of writes
    let dir = tempfile::tempdir().expect("tempdir");
    let config = write_config(dir.path(), |c| {
        c.agent.max_events_per_batch = 1000;
        c.agent.collection_interval_ms = INTERVAL_MS;
    });
    let data = dir.path().join("data");
    let stop = Arc::new(AtomicBool::new(false));
    let log: WriteLog = Arc::default();
    let flood = start_flood(&watched(dir.path()), &stop, &log);

    let mut seen = HashSet::new();
    let mut stored = HashSet::new();
    let mut left_by_kill: Vec<PathBuf> = Vec::new();
    let mut checked = 0usize;
    let mut temporaries_seen = 0usize;
    // Age at the kill of the oldest write that was lost, per round.
    let mut worst_age = Duration::ZERO;
    let mut max_lost = 0usize;
    for round in 0..ROUNDS {
        let spawned = SystemTime::now();
        let mut agent = Agent::spawn(&config, &data);
        if round % 4 == 3 {
            agent.wait_status("a stored batch", |s| s.totals.batches_written > 0);
        } else {
            // Varied moments, start-up included: 200 ms to 1.4 s after spawn.
            std::thread::sleep(Duration::from_millis(200 + (round * 331) % 1200));
        }
        let killed_at = SystemTime::now();
        agent.sigkill();

        // Every visible batch is complete: it decompresses and each line
        // parses.
        for path in list_batches(&data).expect("list") {
            batch_stats(&path)
                .unwrap_or_else(|e| panic!("round {round}: {} unreadable: {e}", path.display()));
        }
        let batches_before = seen.len();
        stored_names(&data, &mut seen, &mut stored);
        if seen.len() > batches_before {
            // This agent wrote, so it opened the store, which removes what
            // the previous kill left half written.
            for t in &left_by_kill {
                assert!(
                    !t.exists(),
                    "round {round}: {} survived a start",
                    t.display()
                );
            }
        }

        // Half-written batches exist only as hidden temporaries, which no
        // reader counts.
        left_by_kill = temporaries(&data);
        temporaries_seen += left_by_kill.len();
        let listed = list_batches(&data).expect("list");
        assert!(listed.iter().all(|p| !left_by_kill.contains(p)));
        let out = cli(&["stats", "--json", "--summary"], &data);
        let total: serde_json::Value = serde_json::from_slice(&out.stdout).expect("stats json");
        assert_eq!(
            total["total"]["files"].as_u64(),
            Some(listed.len() as u64),
            "{}",
            stdout(&out)
        );

        // The watch of a flat directory starts at once: every write after
        // the first one this agent recorded happened under the watch.
        let writes = log.lock().expect("log").clone();
        let in_round: Vec<_> = writes
            .iter()
            .filter(|(_, at)| *at >= spawned && *at <= killed_at)
            .skip_while(|(i, _)| !stored.contains(i))
            .collect();
        if round % 4 == 3 {
            assert!(
                !in_round.is_empty(),
                "round {round}: a batch was written, yet no write of this round is stored"
            );
        }
        if in_round.is_empty() {
            continue;
        }
        let newest_stored = in_round
            .iter()
            .rev()
            .find(|(i, _)| stored.contains(i))
            .map(|(i, _)| *i)
            .expect("the round starts with a stored write");
        let lost: Vec<_> = in_round
            .iter()
            .filter(|(i, _)| !stored.contains(i))
            .collect();
        // Only the tail is lost: nothing written before the newest stored
        // write of the round.
        let holes: Vec<u64> = lost
            .iter()
            .map(|(i, _)| *i)
            .filter(|i| *i < newest_stored)
            .collect();
        assert!(
            holes.is_empty(),
            "round {round}: {} writes older than the stored f{newest_stored} are lost, first f{}",
            holes.len(),
            holes[0]
        );
        max_lost = max_lost.max(lost.len());
        if let Some((_, at)) = lost.first() {
            worst_age = worst_age.max(killed_at.duration_since(*at).unwrap_or_default());
        }
        checked += in_round.len();
    }
    stop.store(true, Ordering::Relaxed);
    flood.join().expect("flood thread");
    eprintln!(
        "{ROUNDS} kills: {checked} files checked; at most {max_lost} lost in one kill; \
         oldest lost write {worst_age:?} before its kill; {temporaries_seen} temporaries left by kills"
    );
    assert!(checked > 0, "no round recorded anything");

    // A clean start and stop leaves no temporary anywhere.
    let mut agent = Agent::spawn(&config, &data);
    agent.wait_watching();
    let (status, err) = agent.stop();
    assert_eq!(status.code(), Some(0), "{err}");
    let leftovers: Vec<_> = walk(&data)
        .into_iter()
        .filter(|p| p.to_string_lossy().ends_with(".tmp"))
        .collect();
    assert!(leftovers.is_empty(), "temporaries left: {leftovers:?}");
}

#[test]
fn a_second_agent_on_the_same_data_dir_refuses_to_start() {
    let _heavy = common::heavy(); // its 10 s exit deadline, not beside the flood
    let dir = tempfile::tempdir().expect("tempdir");
    let config = write_config(dir.path(), |_| {});
    let data = dir.path().join("data");
    let mut first = Agent::spawn(&config, &data);
    first.wait_watching();

    // The same dir, named directly and through a symlink.
    let link = dir.path().join("data-link");
    std::os::unix::fs::symlink(&data, &link).expect("symlink");
    let second_config = write_config(&dir.path().join("second"), |c| {
        c.storage.local_storage.data_dir = Some(link.display().to_string());
    });
    for (name, cfg) in [("same path", &config), ("symlinked path", &second_config)] {
        let mut second = common::agent::bin()
            .args(["run", "--log", "warn", "--config"])
            .arg(cfg)
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::piped())
            .spawn()
            .expect("second agent spawns");
        let started = Instant::now();
        let code = wait_for(Duration::from_secs(10), || second.try_wait().ok().flatten());
        let code = code.unwrap_or_else(|| {
            let _ = second.kill();
            panic!("{name}: the second agent did not exit")
        });
        let mut err = String::new();
        if let Some(mut e) = second.stderr.take() {
            std::io::Read::read_to_string(&mut e, &mut err).expect("stderr");
        }
        assert_eq!(code.code(), Some(1), "{name}: {err}");
        assert!(
            err.contains(&format!(
                "another agent (pid {}) is already running on",
                first.pid()
            )),
            "{name}: unclear message: {err}"
        );
        eprintln!("{name}: refused in {:?}: {}", started.elapsed(), err.trim());
    }
    // The first agent is untouched: still running, still the lock holder.
    first.assert_alive();
    let out = cli(&["status"], &data);
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    assert!(
        stdout(&out).contains(&format!("running (pid {})", first.pid())),
        "{}",
        stdout(&out)
    );
    let (status, err) = first.stop();
    assert_eq!(status.code(), Some(0), "{err}");
}
