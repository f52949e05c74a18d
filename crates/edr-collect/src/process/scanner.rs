//! One scan of the process table, diffed against the live view, and the
//! events it yields: the whole story when polling, inventory and a safety
//! net when an event source reports processes as they happen.

use std::collections::HashSet;
use std::sync::atomic::Ordering::Relaxed;
use std::time::{Duration, Instant};

use sysinfo::{
    Pid, Process as SysProcess, ProcessRefreshKind, ProcessStatus, ProcessesToUpdate, System,
    UpdateKind,
};

use super::emit::{process_name, Emitter, LiveProcess, Observer, Start};
use super::tracker::{ProcKey, Tracker};
use edr_model::event::Timestamp;
use edr_model::redact;

#[derive(Debug, thiserror::Error)]
pub(crate) enum ScanError {
    #[error("cannot open the process table: {0}")]
    Unavailable(#[source] sysinfo::Error),
    #[error("the process table read empty")]
    Empty,
}

/// What one scan found.
#[derive(Debug, Clone, Copy)]
pub(crate) struct ScanStats {
    pub processes: usize,
    pub started: usize,
    pub ended: usize,
    pub elapsed: Duration,
}

/// What the scan is for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Role {
    /// Polling is the only source: report every difference at once.
    Alone,
    /// An event source reports starts and ends; the scan reports only what
    /// it missed. A start or end the source may still be delivering is
    /// given one more scan before the scan reports it itself.
    Reconcile,
}

fn read_live(pid: u32, p: &SysProcess) -> LiveProcess {
    let args: Vec<String> = p
        .cmd()
        .iter()
        .map(|a| a.to_string_lossy().into_owned())
        .collect();
    let executable: Option<Box<str>> = p.exe().map(|e| e.to_string_lossy().into());
    LiveProcess {
        start_ms: start_ms(pid, p),
        ppid: p.parent().map(Pid::as_u32),
        parent_start_ms: None,
        // ECS `process.user` is the effective user.
        uid: p.effective_user_id().or(p.user_id()).map(|u| **u),
        name: process_name(&p.name().to_string_lossy(), executable.as_deref()),
        executable,
        executable_id: None,
        args: redact::redact_args(&args).into_boxed_slice(),
        cwd: p.cwd().map(|c| c.to_string_lossy().into()),
        partial: false,
        reported: true,
    }
}

/// The scan's state between scans.
pub(crate) struct Scanner {
    collect_environment: bool,
    /// Created on the first scan and reused: sysinfo keeps each process's
    /// exe, cmd and user, so later scans only read `stat` of known pids.
    sys: Option<System>,
    inventory_done: bool,
    /// New processes left for the next scan (see [`Scanner::defer`]):
    /// those of the previous scan, and those of this one.
    deferred: HashSet<ProcKey>,
    deferring: HashSet<ProcKey>,
    /// Reused buffers.
    new_pids: Vec<u32>,
    gone: Vec<(ProcKey, LiveProcess)>,
}

impl Scanner {
    pub fn new(collect_environment: bool) -> Scanner {
        Scanner {
            collect_environment,
            sys: None,
            inventory_done: false,
            deferred: HashSet::new(),
            deferring: HashSet::new(),
            new_pids: Vec::new(),
            gone: Vec::new(),
        }
    }

    /// Reads the process table and sends the inventory (first scan) or the
    /// starts and ends `live` does not know of yet.
    pub fn scan(
        &mut self,
        live: &mut Tracker<LiveProcess>,
        emit: &mut Emitter,
        role: Role,
    ) -> Result<ScanStats, ScanError> {
        let began = Instant::now();
        let mut sys = match self.sys.take() {
            Some(sys) => sys,
            None => System::new().map_err(ScanError::Unavailable)?,
        };
        let result = self.scan_with(&mut sys, live, emit, role, began);
        self.sys = Some(sys);
        result
    }

    fn scan_with(
        &mut self,
        sys: &mut System,
        live: &mut Tracker<LiveProcess>,
        emit: &mut Emitter,
        role: Role,
        began: Instant,
    ) -> Result<ScanStats, ScanError> {
        sys.refresh_processes_specifics(
            ProcessesToUpdate::All,
            true,
            refresh_kind(self.collect_environment),
        );
        // At least this process is always listed; an empty table means
        // /proc could not be read, not that everything ended.
        if sys.processes().is_empty() {
            return Err(ScanError::Empty);
        }
        let now = Timestamp::now();
        self.find_new(sys, live, role);
        let tolerated = match role {
            Role::Alone => 0,
            Role::Reconcile => 1,
        };
        live.sweep(&mut self.gone, tolerated);
        let (started, ended) = (self.new_pids.len(), self.gone.len());
        self.emit_ends(live, emit, now);
        self.emit_starts(sys, live, emit, now);
        if self.inventory_done && role == Role::Reconcile && started > 0 {
            emit.ctx()
                .counters
                .process_source_missed
                .fetch_add(started as u64, Relaxed);
            tracing::debug!(
                started,
                "the scan found processes the event source did not report"
            );
        }
        self.inventory_done = true;
        Ok(ScanStats {
            processes: live.len(),
            started,
            ended,
            elapsed: began.elapsed(),
        })
    }

    /// Marks listed processes alive and records the new ones.
    fn find_new(&mut self, sys: &System, live: &mut Tracker<LiveProcess>, role: Role) {
        live.begin();
        self.new_pids.clear();
        std::mem::swap(&mut self.deferred, &mut self.deferring);
        self.deferring.clear();
        for (pid, p) in sys.processes() {
            let key = key_of(*pid, p);
            if !is_user_process(*pid, p) || live.observe(key) {
                continue;
            }
            if self.defer(key, p, role) {
                self.deferring.insert(key);
            } else {
                self.new_pids.push(pid.as_u32());
                live.insert(key, read_live(pid.as_u32(), p));
            }
        }
    }

    /// Whether a new process is left for the next scan.
    ///
    /// Alone: during `execve` the kernel shows the new name but an empty
    /// command line (and briefly no executable) for up to a few ms. A
    /// process seen then is left for one scan, by which time sysinfo, which
    /// re-reads an empty command line, has the real one. Zombies never get
    /// one.
    ///
    /// Reconcile: the event source's report of a process this scan sees
    /// may still be on its way; only a process the source has not reported
    /// by the next scan is the scan's to report.
    fn defer(&self, key: ProcKey, p: &SysProcess, role: Role) -> bool {
        if !self.inventory_done || self.deferred.contains(&key) {
            return false;
        }
        match role {
            Role::Alone => p.cmd().is_empty() && p.status() != ProcessStatus::Zombie,
            Role::Reconcile => true,
        }
    }

    fn emit_ends(&mut self, live: &Tracker<LiveProcess>, emit: &mut Emitter, now: Timestamp) {
        let mut gone = std::mem::take(&mut self.gone);
        for (key, rec) in gone.drain(..) {
            if emit.ctx().cancel.is_cancelled() {
                break;
            }
            // A fork whose exec and exit the source both lost.
            if !rec.reported {
                emit.start(key.pid, &rec, Start::New, Observer::Scan, Vec::new(), live);
            }
            // The process exited at some moment between the previous scan
            // and this one; `now` is when its absence was seen, so
            // `process.end` and the duration may overstate its life by up
            // to one scan interval.
            emit.end(key.pid, &rec, now, None, Observer::Scan);
        }
        gone.clear();
        self.gone = gone;
    }

    fn emit_starts(
        &mut self,
        sys: &System,
        live: &mut Tracker<LiveProcess>,
        emit: &mut Emitter,
        now: Timestamp,
    ) {
        let new_pids = std::mem::take(&mut self.new_pids);
        let why = if self.inventory_done {
            Start::New
        } else {
            Start::Inventory(now)
        };
        for &pid in &new_pids {
            if emit.ctx().cancel.is_cancelled() {
                break;
            }
            let Some(p) = sys.process(Pid::from_u32(pid)) else {
                continue;
            };
            let parent_start_ms = p
                .parent()
                .and_then(|ppid| Some(key_of(ppid, sys.process(ppid)?)))
                .and_then(|key| live.get_key(&key))
                .map(|parent| parent.start_ms);
            let key = key_of(Pid::from_u32(pid), p);
            let Some(rec) = live.get_key_mut(&key) else {
                continue;
            };
            rec.parent_start_ms = parent_start_ms;
            let env = if self.collect_environment {
                redacted_env(p)
            } else {
                Vec::new()
            };
            if let Some(rec) = live.get_key(&key) {
                emit.start(pid, rec, why, Observer::Scan, env, live);
            }
        }
        self.new_pids = new_pids;
    }
}

fn redacted_env(p: &SysProcess) -> Vec<String> {
    p.environ()
        .iter()
        .map(|e| redact::redact_env_entry(&e.to_string_lossy()))
        .collect()
}

/// Only what the events need: no CPU, memory or per-thread reads. The
/// `OnlyIfNotSet` parts are read once per process, when it is first seen.
fn refresh_kind(collect_environment: bool) -> ProcessRefreshKind {
    let kind = ProcessRefreshKind::nothing()
        .without_tasks()
        .with_exe(UpdateKind::OnlyIfNotSet)
        .with_cmd(UpdateKind::OnlyIfNotSet)
        .with_cwd(UpdateKind::OnlyIfNotSet)
        .with_user(UpdateKind::OnlyIfNotSet);
    if collect_environment {
        kind.with_environ(UpdateKind::OnlyIfNotSet)
    } else {
        kind
    }
}

pub(crate) fn key_of(pid: Pid, p: &SysProcess) -> ProcKey {
    ProcKey {
        pid: pid.as_u32(),
        start: p.start_time(),
    }
}

/// Kernel threads (and threads listed as tasks) are not processes a user
/// ran; pid 0 is the kernel itself on macOS.
fn is_user_process(pid: Pid, p: &SysProcess) -> bool {
    pid.as_u32() != 0 && p.thread_kind().is_none()
}

/// See [`super::process_start_ms`]. sysinfo's whole seconds guard against
/// the pid having been reused between its read and ours.
#[cfg(target_os = "linux")]
fn start_ms(pid: u32, p: &SysProcess) -> u64 {
    super::process_start_ms(pid)
        .filter(|ms| ms / 1000 == p.start_time())
        .unwrap_or_else(|| p.start_time().saturating_mul(1000))
}

#[cfg(not(target_os = "linux"))]
fn start_ms(_pid: u32, p: &SysProcess) -> u64 {
    p.start_time().saturating_mul(1000)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::CollectorContext;
    use edr_model::event::Event;

    struct Harness {
        scanner: Scanner,
        live: Tracker<LiveProcess>,
        emit: Emitter,
        rx: edr_pipeline::EventRx,
    }

    impl Harness {
        fn new() -> Harness {
            let (ctx, rx) = CollectorContext::standalone(65_536);
            Harness {
                scanner: Scanner::new(false),
                live: Tracker::new(),
                emit: Emitter::new(ctx, false),
                rx,
            }
        }

        fn scan(&mut self, role: Role) -> ScanStats {
            self.scanner
                .scan(&mut self.live, &mut self.emit, role)
                .expect("scan")
        }
    }

    /// Prints scan durations (run with `--nocapture`); asserts only what
    /// the scans report.
    #[test]
    fn repeated_scans_report_inventory_once() {
        let mut h = Harness::new();
        let first = h.scan(Role::Alone);
        let inventory: Vec<Event> = h.rx.try_iter().collect();
        assert_eq!(inventory.len(), first.started);
        assert!(inventory.iter().all(|e| e.event.kind == "state"));
        let me = std::process::id();
        assert!(inventory
            .iter()
            .any(|e| e.process.as_ref().is_some_and(|p| p.pid == me)));

        let mut steady = Vec::new();
        for _ in 0..5 {
            steady.push(h.scan(Role::Alone));
        }
        let later: Vec<Event> = h.rx.try_iter().collect();
        assert!(later.iter().all(|e| e.event.kind == "event"));
        assert!(!later
            .iter()
            .any(|e| e.process.as_ref().is_some_and(|p| p.pid == me)));
        eprintln!(
            "process scan: first (inventory) {:?} for {} processes; steady {:?}",
            first.elapsed,
            first.processes,
            steady.iter().map(|s| s.elapsed).collect::<Vec<_>>()
        );
    }

    /// A scanned process carries its working directory and its parent's
    /// program (this test), from the scan's own view of the table.
    #[test]
    fn scanned_processes_carry_their_parent_and_working_directory() {
        let mut child = std::process::Command::new("sh")
            .args(["-c", "read x"])
            .current_dir("/tmp")
            .stdin(std::process::Stdio::piped())
            .spawn()
            .expect("spawn sh");
        // sysinfo reads an empty command line during the exec: wait it out.
        let deadline = Instant::now() + Duration::from_secs(10);
        while std::fs::read(format!("/proc/{}/cmdline", child.id()))
            .map_or(true, |c| !c.starts_with(b"sh"))
            && Instant::now() < deadline
        {
            std::thread::sleep(Duration::from_millis(5));
        }
        let mut h = Harness::new();
        h.scan(Role::Alone);
        let events: Vec<Event> = h.rx.try_iter().collect();
        drop(child.stdin.take());
        child.wait().expect("reap");
        let sh = events
            .iter()
            .filter_map(|e| e.process.as_deref())
            .find(|p| p.pid == child.id())
            .expect("the shell is in the inventory");
        let tmp = std::fs::canonicalize("/tmp").expect("canonical /tmp");
        assert_eq!(sh.working_directory.as_deref(), tmp.to_str());
        let parent = sh.parent.as_ref().expect("parent");
        assert_eq!(parent.pid, std::process::id());
        let me = std::fs::read_link("/proc/self/exe").expect("own exe");
        assert_eq!(parent.executable.as_deref(), me.to_str());
        let own_args: Vec<String> = std::env::args().collect();
        assert_eq!(
            parent.command_line.as_deref(),
            Some(edr_model::redact::redact_args(&own_args).join(" ").as_str())
        );
        assert_eq!(parent.args, edr_model::redact::redact_args(&own_args));
        assert!(parent.name.is_some());
    }

    /// What an event source already reported is not reported again, and
    /// what it missed is reported one scan late.
    #[test]
    fn reconciling_scans_report_only_what_the_source_missed() {
        let mut h = Harness::new();
        h.scan(Role::Reconcile);
        h.rx.try_iter().for_each(drop);

        let mut known = std::process::Command::new("sleep")
            .arg("30")
            .spawn()
            .expect("spawn sleep");
        let mut missed = std::process::Command::new("sleep")
            .arg("31")
            .spawn()
            .expect("spawn sleep");
        // The source reported `known`; nothing told the tracker of `missed`.
        let start_ms = super::super::process_start_ms(known.id()).expect("alive");
        let rec = LiveProcess {
            start_ms,
            ppid: Some(std::process::id()),
            parent_start_ms: None,
            uid: None,
            name: "sleep".into(),
            executable: None,
            executable_id: None,
            args: Box::new([]),
            cwd: None,
            partial: false,
            reported: true,
        };
        let key = ProcKey {
            pid: known.id(),
            start: start_ms / 1000,
        };
        h.live.insert(key, rec);

        let ours = [known.id(), missed.id()];
        let pids_of = |events: Vec<Event>, kind: &str| -> Vec<u32> {
            events
                .iter()
                .filter(|e| e.event.types == [kind])
                .filter_map(|e| e.process.as_ref().map(|p| p.pid))
                .filter(|pid| ours.contains(pid))
                .collect()
        };
        h.scan(Role::Reconcile);
        assert_eq!(
            pids_of(h.rx.try_iter().collect(), "start"),
            Vec::<u32>::new()
        );
        h.scan(Role::Reconcile);
        assert_eq!(pids_of(h.rx.try_iter().collect(), "start"), [missed.id()]);
        assert_eq!(h.emit.ctx().counters.process_source_missed.load(Relaxed), 1);

        // An end the source missed is reported after a second scan.
        known.kill().expect("kill");
        known.wait().expect("reap");
        h.scan(Role::Reconcile);
        assert_eq!(pids_of(h.rx.try_iter().collect(), "end"), Vec::<u32>::new());
        h.scan(Role::Reconcile);
        assert_eq!(pids_of(h.rx.try_iter().collect(), "end"), [known.id()]);
        missed.kill().expect("kill");
        missed.wait().expect("reap");
    }
}
