//! The real `edr-agent` binary as a server operator runs it: SIGTERM
//! commits the open batch and exits 0; SIGKILL during a flood leaves only
//! complete, readable batch files and no counted temporaries; `status` and
//! `stats` tell the truth about what is on disk.

mod common;

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use common::{read_events, str_field, test_config, wait_for, watched};
use edr_store::{batch_stats, list_batches};

fn bin() -> Command {
    Command::new(env!("CARGO_BIN_EXE_edr-agent"))
}

fn write_config(root: &Path, edit: impl FnOnce(&mut edr_config::Config)) -> PathBuf {
    let mut c = test_config(root);
    edit(&mut c);
    let path = root.join("config.yaml");
    c.save(&path).expect("write config");
    path
}

fn spawn_agent(config: &Path) -> Child {
    bin()
        .args(["run", "--log", "warn", "--config"])
        .arg(config)
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .expect("agent starts")
}

fn data_dir(root: &Path) -> PathBuf {
    root.join("data")
}

/// Waits until the status file shows this agent (not an earlier, killed
/// one) running with its watches set.
fn wait_running(root: &Path, agent: &Child) {
    let ok = wait_for(Duration::from_secs(10), || {
        let s = edr_engine::read_status(&data_dir(root))?;
        (s.pid == agent.id() && s.running && !s.coverage.watched_paths.is_empty()).then_some(())
    });
    assert!(ok.is_some(), "agent did not come up");
}

/// The names of the process's threads, from /proc.
fn thread_names(child: &Child) -> Vec<String> {
    let tasks = std::fs::read_dir(format!("/proc/{}/task", child.id())).expect("task dir");
    tasks
        .filter_map(|t| std::fs::read_to_string(t.ok()?.path().join("comm")).ok())
        .map(|n| n.trim().to_string())
        .collect()
}

fn signal(child: &Child, sig: libc::c_int) {
    // SAFETY: kill(2) on our own child's pid.
    let rc = unsafe { libc::kill(child.id() as libc::pid_t, sig) };
    assert_eq!(rc, 0, "kill failed");
}

#[test]
fn sigterm_commits_the_open_batch_and_exits_zero() {
    let dir = tempfile::tempdir().expect("tempdir");
    let config = write_config(dir.path(), |c| c.agent.collection_interval_ms = 3_600_000);
    let mut agent = spawn_agent(&config);
    wait_running(dir.path(), &agent);
    // The status and history writes run on their own thread, beside the
    // async runtime's two named workers.
    let threads = thread_names(&agent);
    assert!(threads.iter().any(|t| t == "edr-metrics"), "{threads:?}");
    assert!(
        threads.iter().filter(|t| *t == "edr-runtime").count() >= 2,
        "{threads:?}"
    );
    for i in 0..7 {
        std::fs::write(watched(dir.path()).join(format!("term-{i}.txt")), b"x").expect("write");
    }
    // The status file (1 s cadence) shows the events queued but unwritten.
    let queued = wait_for(Duration::from_secs(10), || {
        let s = edr_engine::read_status(&data_dir(dir.path()))?;
        (s.totals.produced[1] >= 7).then_some(())
    });
    assert!(queued.is_some());
    assert!(list_batches(&data_dir(dir.path()))
        .expect("list")
        .is_empty());
    signal(&agent, libc::SIGTERM);
    let status = agent.wait().expect("agent exits");
    assert_eq!(status.code(), Some(0));
    let events = read_events(&data_dir(dir.path()));
    for i in 0..7 {
        let name = format!("term-{i}.txt");
        assert!(
            events
                .iter()
                .any(|e| str_field(e, "file.path").is_some_and(|p| p.ends_with(&name))),
            "{name} not stored"
        );
    }
    // The operator's view agrees with the files.
    let out = bin()
        .args(["stats", "--summary", "--data-dir"])
        .arg(data_dir(dir.path()))
        .output()
        .expect("stats runs");
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(text.contains(&format!("{} events", events.len())), "{text}");
    let out = bin()
        .args(["status", "--data-dir"])
        .arg(data_dir(dir.path()))
        .output()
        .expect("status runs");
    assert_eq!(out.status.code(), Some(3), "status of a stopped agent");
    assert!(String::from_utf8_lossy(&out.stdout).contains("not running"));
}

/// Kills the agent with SIGKILL at varied moments of a file flood.
/// `rounds` restarts on the same data dir; after each, every batch file
/// must decompress and parse, and no temporary may survive a restart.
pub fn sigkill_rounds(rounds: usize) {
    let dir = tempfile::tempdir().expect("tempdir");
    let config = write_config(dir.path(), |c| {
        c.agent.max_events_per_batch = 50;
        c.agent.collection_interval_ms = 200;
    });
    let data = data_dir(dir.path());
    let stop = Arc::new(AtomicBool::new(false));
    let flood = {
        let stop = Arc::clone(&stop);
        let w = watched(dir.path());
        std::thread::spawn(move || {
            let mut i = 0u64;
            while !stop.load(Ordering::Relaxed) {
                let _ = std::fs::write(w.join(format!("flood-{}.txt", i % 500)), i.to_le_bytes());
                i += 1;
                if i.is_multiple_of(200) {
                    std::thread::sleep(Duration::from_millis(5));
                }
            }
        })
    };
    for round in 0..rounds {
        let mut agent = spawn_agent(&config);
        wait_running(dir.path(), &agent);
        // Varied kill moments: 100..=700 ms after start-up.
        std::thread::sleep(Duration::from_millis(100 + (round as u64 * 137) % 600));
        signal(&agent, libc::SIGKILL);
        let _ = agent.wait();
        for path in list_batches(&data).expect("list") {
            let stats = batch_stats(&path)
                .unwrap_or_else(|e| panic!("round {round}: {} unreadable: {e}", path.display()));
            assert!(stats.events > 0);
        }
        // Every line of every file parses.
        let _ = read_events(&data);
    }
    stop.store(true, Ordering::Relaxed);
    flood.join().expect("flood thread");
    // A final clean start removes whatever temporaries the kills left.
    let mut agent = spawn_agent(&config);
    wait_running(dir.path(), &agent);
    signal(&agent, libc::SIGTERM);
    assert_eq!(agent.wait().expect("exit").code(), Some(0));
    let leftovers: Vec<_> = walk(&data.join("events"))
        .into_iter()
        .filter(|p| p.to_string_lossy().ends_with(".tmp"))
        .collect();
    assert!(leftovers.is_empty(), "temporaries left: {leftovers:?}");
    assert!(
        !list_batches(&data).expect("list").is_empty(),
        "the flood stored nothing"
    );
}

fn walk(dir: &Path) -> Vec<PathBuf> {
    let mut out = Vec::new();
    if let Ok(rd) = std::fs::read_dir(dir) {
        for e in rd.flatten() {
            let p = e.path();
            if p.is_dir() {
                out.extend(walk(&p));
            } else {
                out.push(p);
            }
        }
    }
    out
}

#[test]
fn sigkill_during_a_flood_leaves_only_complete_batches() {
    sigkill_rounds(3);
}
