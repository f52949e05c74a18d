//! The process collector against real child processes, polling and with
//! the kernel's process events. The event tests run with `source: event`
//! and need root (CI runs as root): without it they fail saying so, rather
//! than pass on a collector that fell back to polling.

mod common;

use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::mpsc::RecvTimeoutError;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use edr_collect::{process, Coverage, ProcessCapture};
use edr_config::{ProcessMonitorConfig, ProcessSource};
use edr_model::event::{Action, Event, Timestamp};
use edr_pipeline::Counters;
use serde_json::Value;
use sha2::{Digest, Sha256};
use tokio_util::sync::CancellationToken;

const DEADLINE: Duration = Duration::from_secs(30);

/// The inventory hashes every distinct executable on the host, which an
/// unoptimized sha2 does at only ~20 MB/s.
const INVENTORY_DEADLINE: Duration = Duration::from_secs(60);

struct Running {
    rt: tokio::runtime::Runtime,
    task: tokio::task::JoinHandle<()>,
    rx: edr_pipeline::EventRx,
    cancel: CancellationToken,
    coverage: Arc<Mutex<Coverage>>,
    counters: Arc<Counters>,
}

fn start(cfg: ProcessMonitorConfig) -> Running {
    let common::Harness { rt, rx, ctx } = common::harness();
    let (counters, coverage, cancel) = (
        Arc::clone(&ctx.counters),
        Arc::clone(&ctx.coverage),
        ctx.cancel.clone(),
    );
    let task = rt.spawn(process::run(cfg, ctx));
    Running {
        rt,
        task,
        rx,
        cancel,
        coverage,
        counters,
    }
}

fn config(source: ProcessSource) -> ProcessMonitorConfig {
    ProcessMonitorConfig {
        enabled: true,
        scan_interval_ms: 100,
        collect_environment: false,
        calculate_hashes: false,
        source,
        // A fixed period: the tests' children must be seen by a scan.
        max_scan_interval_ms: 100,
    }
}

impl Running {
    /// `edr.source` of what this collector reports: `event` when it runs
    /// on the kernel's events, `scan` when it polls.
    fn observer(&self) -> &'static str {
        let until = Instant::now() + DEADLINE;
        loop {
            let cov = self.coverage.lock().expect("coverage lock").clone();
            match cov.process_capture {
                Some(ProcessCapture::Event) => return "event",
                Some(ProcessCapture::Scan) => return "scan",
                // `source: event` without events: it says so and records
                // nothing.
                None if cov.process_source.is_some() => {
                    panic!("the collector captures no processes: {cov:?}")
                }
                None if Instant::now() < until => std::thread::sleep(Duration::from_millis(20)),
                None => panic!("the collector never reported its source"),
            }
        }
    }

    /// The next event matching `pred`, skipping others; panics after the
    /// deadline.
    fn find(&self, what: &str, pred: impl Fn(&Event) -> bool) -> Event {
        self.find_within(DEADLINE, what, pred)
    }

    fn find_within(&self, deadline: Duration, what: &str, pred: impl Fn(&Event) -> bool) -> Event {
        let until = Instant::now() + deadline;
        loop {
            let left = until.saturating_duration_since(Instant::now());
            match self.rx.recv_timeout(left) {
                Ok(e) if pred(&e) => return e,
                Ok(_) => {}
                Err(RecvTimeoutError::Timeout) => panic!("no {what} within {deadline:?}"),
                Err(RecvTimeoutError::Disconnected) => panic!("collector gone before {what}"),
            }
        }
    }

    /// Waits for this test process in the inventory: anything spawned
    /// afterwards is reported as a start, not as inventory.
    fn own_inventory(&self) -> Event {
        let me = std::process::id();
        self.find_within(INVENTORY_DEADLINE, "inventory of this process", |e| {
            e.event.kind == "state" && pid_of(e) == Some(me)
        })
    }

    fn stop(self) {
        self.cancel.cancel();
        let joined = self
            .rt
            .block_on(async { tokio::time::timeout(DEADLINE, self.task).await });
        assert!(
            matches!(joined, Ok(Ok(()))),
            "collector did not stop cleanly"
        );
    }
}

fn pid_of(e: &Event) -> Option<u32> {
    e.process.as_ref().map(|p| p.pid)
}

fn has_arg(e: &Event, arg: &str) -> bool {
    e.process
        .as_ref()
        .is_some_and(|p| p.args.iter().any(|a| a == arg))
}

fn json(e: &Event) -> Value {
    serde_json::to_value(e).expect("serializes")
}

fn unique_marker() -> String {
    static N: AtomicU32 = AtomicU32::new(0);
    let nanos = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.subsec_nanos())
        .unwrap_or(0);
    format!(
        "edr-marker-{}-{}-{nanos}",
        std::process::id(),
        N.fetch_add(1, Ordering::Relaxed)
    )
}

/// `sh -c 'read x' <marker> <extra...>`: the shell lives until its stdin
/// closes, so a scan sees it however long the previous scan took. The
/// marker is `$0`, so it shows in the arguments without changing what runs.
fn spawn_sh(marker: &str, extra: &[&str], env: &[(&str, &str)]) -> Child {
    Command::new("sh")
        .arg("-c")
        .arg("read x")
        .arg(marker)
        .args(extra)
        .envs(env.iter().copied())
        .stdin(Stdio::piped())
        .spawn()
        .expect("spawn sh")
}

/// Ends the shell and reaps it (a zombie still counts as alive).
fn finish(mut child: Child) {
    drop(child.stdin.take());
    child.wait().expect("child exits");
}

fn sha256_hex(path: &str) -> String {
    let bytes = std::fs::read(path).expect("read executable");
    Sha256::digest(bytes)
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

#[test]
fn child_start_and_end_are_reported_with_matching_identity_polling() {
    child_start_and_end_are_reported_with_matching_identity(ProcessSource::Scan);
}

#[test]
fn child_start_and_end_are_reported_with_matching_identity_from_events() {
    child_start_and_end_are_reported_with_matching_identity(ProcessSource::Event);
}

fn child_start_and_end_are_reported_with_matching_identity(source: ProcessSource) {
    let cfg = ProcessMonitorConfig {
        calculate_hashes: true,
        ..config(source)
    };
    let running = start_as(cfg);
    let observer = running.observer();
    let me = running.own_inventory();
    let marker = unique_marker();
    let before = Timestamp::now();
    let child = spawn_sh(&marker, &[], &[("MY_API_TOKEN", "secretvalue")]);
    let after = Timestamp::now();

    let started = running.find("start of the child", |e| {
        e.event.action == Action::ProcessStarted && has_arg(e, &marker)
    });
    let sp = started.process.as_ref().expect("process fields");
    // Dated when it started, to the kernel's 10 ms clock tick (and not a
    // second early, as whole-second boot times would make it).
    let dated = sp.start.expect("start").as_millis();
    assert!(
        dated + 20 >= before.as_millis() && dated <= after.as_millis() + 20,
        "started between {before:?} and {after:?}, dated {dated}"
    );
    assert_eq!(started.timestamp, sp.start.expect("start"));
    assert_eq!(started.event.kind, "event");
    assert_eq!(started.event.category, ["process"]);
    assert_eq!(started.event.types, ["start"]);
    assert_eq!(sp.pid, child.id());
    assert_eq!(sp.args, ["sh", "-c", "read x", marker.as_str()]);
    assert_eq!(sp.command_line.as_deref(), Some(sp.args.join(" ").as_str()));
    let shell = std::fs::canonicalize("/bin/sh").expect("sh exists");
    let shell = shell.to_str().expect("utf-8 path");
    assert_eq!(sp.executable.as_deref(), Some(shell));
    let parent = sp.parent.as_ref().expect("parent");
    assert_eq!(parent.pid, std::process::id());
    let me_entity = &me.process.as_ref().expect("own process").entity_id;
    assert_eq!(parent.entity_id.as_ref(), Some(me_entity));
    // SAFETY: geteuid cannot fail.
    let euid = unsafe { libc::geteuid() }.to_string();
    let user = sp.user.as_ref().expect("user");
    assert_eq!(user.id.as_deref(), Some(euid.as_str()));
    assert_eq!(
        sp.hash.as_ref().map(|h| h.sha256.as_str()),
        Some(sha256_hex(shell).as_str())
    );
    let start_json = json(&started);
    assert!(start_json["process"].get("env_vars").is_none());
    assert_eq!(start_json["edr"]["source"], observer);
    assert!(start_json["process"]["start"].is_string());

    finish(child);
    let ended = running.find("end of the child", |e| {
        e.event.action == Action::ProcessEnded && has_arg(e, &marker)
    });
    let ep = ended.process.as_ref().expect("process fields");
    assert_eq!(ended.event.kind, "event");
    assert_eq!(ended.event.types, ["end"]);
    assert_eq!(ep.entity_id, sp.entity_id);
    assert_eq!(ep.pid, sp.pid);
    assert_eq!(ep.name, sp.name);
    assert_eq!(ep.executable, sp.executable);
    assert_eq!(ep.args, sp.args);
    let (start, end) = (ep.start.expect("start"), ep.end.expect("end"));
    assert!(end > start);
    assert_eq!(
        ended.event.duration,
        Some((end.as_millis() - start.as_millis()) * 1_000_000)
    );
    assert_eq!(json(&ended)["edr"]["source"], observer);
    // Only an event source sees the exit itself: `read` at the end of its
    // input fails, and so does the shell.
    let exit_code = if observer == "event" { Some(1) } else { None };
    assert_eq!(ep.exit_code, exit_code);
    running.stop();
}

#[test]
fn secrets_in_arguments_are_redacted_polling() {
    secrets_in_arguments_are_redacted(ProcessSource::Scan);
}

#[test]
fn secrets_in_arguments_are_redacted_from_events() {
    secrets_in_arguments_are_redacted(ProcessSource::Event);
}

fn secrets_in_arguments_are_redacted(source: ProcessSource) {
    let running = start_as(config(source));
    running.own_inventory();
    let marker = unique_marker();
    let child = spawn_sh(&marker, &["--password=hunter2"], &[]);
    let started = running.find("start of the child", |e| {
        e.event.action == Action::ProcessStarted && has_arg(e, &marker)
    });
    let p = started.process.as_ref().expect("process fields");
    assert!(
        p.args.iter().any(|a| a == "--password=[REDACTED]"),
        "{:?}",
        p.args
    );
    let text = serde_json::to_string(&started).expect("serializes");
    assert!(!text.contains("hunter2"), "{text}");

    finish(child);
    let ended = running.find("end of the child", |e| {
        e.event.action == Action::ProcessEnded && has_arg(e, &marker)
    });
    let text = serde_json::to_string(&ended).expect("serializes");
    assert!(!text.contains("hunter2"), "{text}");
    running.stop();
}

#[test]
fn environment_is_collected_redacted_when_enabled_polling() {
    environment_is_collected_redacted_when_enabled(ProcessSource::Scan);
}

#[test]
fn environment_is_collected_redacted_when_enabled_from_events() {
    environment_is_collected_redacted_when_enabled(ProcessSource::Event);
}

fn environment_is_collected_redacted_when_enabled(source: ProcessSource) {
    let cfg = ProcessMonitorConfig {
        collect_environment: true,
        ..config(source)
    };
    let running = start_as(cfg);
    running.own_inventory();
    let marker = unique_marker();
    let child = spawn_sh(
        &marker,
        &[],
        &[
            ("MY_API_TOKEN", "secretvalue"),
            ("EDR_TEST_HARMLESS", "plain-value"),
        ],
    );
    let started = running.find("start of the child", |e| {
        e.event.action == Action::ProcessStarted && has_arg(e, &marker)
    });
    let env = &started.process.as_ref().expect("process fields").env_vars;
    assert!(
        env.iter().any(|v| v == "MY_API_TOKEN=[REDACTED]"),
        "{env:?}"
    );
    assert!(
        env.iter().any(|v| v == "EDR_TEST_HARMLESS=plain-value"),
        "{env:?}"
    );
    let text = serde_json::to_string(&started).expect("serializes");
    assert!(!text.contains("secretvalue"));
    finish(child);
    running.stop();
}

#[test]
fn first_scan_is_an_inventory_including_this_process() {
    let running = start(config(ProcessSource::Scan));
    let me = running.own_inventory();
    let v = json(&me);
    assert_eq!(v["event"]["kind"], "state");
    assert_eq!(v["event"]["category"], serde_json::json!(["process"]));
    assert_eq!(v["event"]["type"], serde_json::json!(["info"]));
    assert_eq!(v["event"]["action"], "process-inventory");
    let exe = std::env::current_exe().expect("own exe");
    assert_eq!(
        v["process"]["executable"].as_str(),
        exe.to_str(),
        "own executable"
    );
    #[cfg(target_os = "linux")]
    {
        let start_ms = process::process_start_ms(std::process::id()).expect("own start");
        assert_eq!(
            v["process"]["entity_id"],
            edr_model::event::entity_id(&me.host.name, std::process::id(), start_ms)
        );
    }
    {
        let cov = running.coverage.lock().expect("coverage lock");
        assert_eq!(cov.process_source.as_deref(), Some("scan"));
        assert_eq!(cov.process_capture, Some(ProcessCapture::Scan));
        let note = cov.process_note.as_deref().unwrap_or_default();
        assert!(note.contains("polling every 100 ms"), "{note}");
        assert!(note.contains("can be missed"), "{note}");
    }
    assert_eq!(
        running
            .counters
            .scan_errors
            .load(std::sync::atomic::Ordering::Relaxed),
        0
    );
    running.stop();
}

/// Starts the collector with `cfg.source`, and checks that it captures
/// the way it was told to: polling for `scan`, the kernel's events for
/// `event` (which needs root: without it the test fails saying so).
fn start_as(cfg: ProcessMonitorConfig) -> Running {
    let source = cfg.source;
    if source == ProcessSource::Event {
        common::root::require_root(
            "the process event tests (the proc connector is root's before \
             Linux 6.6, and these tests check the events, not polling)",
        );
    }
    let running = start(cfg);
    let expected = match source {
        ProcessSource::Event => "event",
        ProcessSource::Scan => "scan",
        ProcessSource::Auto => panic!("tests name the source they test"),
    };
    assert_eq!(running.observer(), expected, "{:?}", running.coverage);
    running
}

/// Starts the collector on the kernel's events (`source: event`, as root).
fn start_on_events() -> Running {
    start_as(config(ProcessSource::Event))
}

#[test]
fn a_fork_without_exec_is_a_process_with_its_parents_program() {
    let running = start_on_events();
    running.own_inventory();
    let marker = unique_marker();
    // The subshell is a fork of the shell that never execs.
    let mut child = Command::new("sh")
        .arg("-c")
        .arg("(read x); exit 3")
        .arg(&marker)
        .stdin(Stdio::piped())
        .spawn()
        .expect("spawn sh");
    let shell = running.find("start of the shell", |e| {
        e.event.action == Action::ProcessStarted && pid_of(e) == Some(child.id())
    });
    let shell_entity = shell.process.as_ref().expect("fields").entity_id.clone();
    let sub = running.find("start of the subshell", |e| {
        e.event.action == Action::ProcessStarted
            && e.process
                .as_ref()
                .is_some_and(|p| p.parent.as_ref().is_some_and(|pp| pp.pid == child.id()))
    });
    let sp = sub.process.as_ref().expect("fields");
    assert_eq!(sp.args, shell.process.as_ref().expect("fields").args);
    assert_eq!(
        sp.parent.as_ref().and_then(|p| p.entity_id.as_ref()),
        Some(&shell_entity)
    );
    drop(child.stdin.take());
    let status = child.wait().expect("shell exits");
    assert_eq!(status.code(), Some(3));
    let ended = running.find("end of the shell", |e| {
        e.event.action == Action::ProcessEnded && pid_of(e) == Some(child.id())
    });
    let ep = ended.process.as_ref().expect("fields");
    assert_eq!(ep.entity_id, shell_entity);
    assert_eq!(ep.exit_code, Some(3));
    running.stop();
}

#[test]
fn a_process_that_execs_again_keeps_its_identity() {
    let running = start_on_events();
    running.own_inventory();
    let marker = unique_marker();
    // `exec` replaces the shell with sleep in the same process.
    let mut child = Command::new("sh")
        .arg("-c")
        .arg("exec sleep 30")
        .arg(&marker)
        .spawn()
        .expect("spawn sh");
    let shell = running.find("start of the shell", |e| {
        e.event.action == Action::ProcessStarted && pid_of(e) == Some(child.id())
    });
    let sleep = running.find("exec of sleep", |e| {
        e.event.action == Action::ProcessExec && pid_of(e) == Some(child.id())
    });
    let (shp, slp) = (
        shell.process.as_ref().expect("fields"),
        sleep.process.as_ref().expect("fields"),
    );
    assert_eq!(sleep.event.types, ["start"]);
    assert_eq!(slp.entity_id, shp.entity_id);
    assert_eq!(slp.name, "sleep");
    assert_eq!(slp.args, ["sleep", "30"]);
    assert_eq!(slp.parent.as_ref().map(|p| p.pid), Some(std::process::id()));
    child.kill().expect("kill");
    child.wait().expect("reap");
    let ended = running.find("end of sleep", |e| {
        e.event.action == Action::ProcessEnded && pid_of(e) == Some(child.id())
    });
    let ep = ended.process.as_ref().expect("fields");
    assert_eq!(ep.entity_id, shp.entity_id);
    assert_eq!(ep.name, "sleep");
    // Killed by SIGKILL.
    assert_eq!(ep.exit_code, Some(128 + 9));
    running.stop();
}
