//! One scan of the process table, diffed against the previous one, and the
//! events it yields.

use std::path::PathBuf;
use std::sync::atomic::Ordering::Relaxed;
use std::time::{Duration, Instant};

use sysinfo::{
    Pid, Process as SysProcess, ProcessRefreshKind, ProcessStatus, ProcessesToUpdate, System,
    UpdateKind,
};

use super::hash::{self, HashCache, CACHE_ENTRIES};
use super::tracker::{ProcKey, Tracker};
use super::users::UserNames;
use crate::collectors::CollectorContext;
use crate::config::ProcessMonitorConfig;
use crate::event::{self, EdrExt, Event, EventMeta, Hash, ParentProcess, Process, Timestamp, User};
use crate::redact;

const CATEGORY: &[&str] = &["process"];

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

/// What the end event of a live process needs: a compact copy instead of
/// sysinfo's whole record, which may be refreshed away before the end.
#[derive(Debug)]
pub(crate) struct LiveProcess {
    start_ms: u64,
    ppid: Option<u32>,
    /// Known once the parent is in the table (it may be new in the same scan).
    parent_start_ms: Option<u64>,
    uid: Option<u32>,
    name: Box<str>,
    executable: Option<Box<str>>,
    /// Already redacted.
    args: Box<[String]>,
}

impl LiveProcess {
    fn read(pid: u32, p: &SysProcess) -> LiveProcess {
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
            args: redact::redact_args(&args).into_boxed_slice(),
        }
    }
}

/// The kernel keeps only the first 15 bytes of a process name (`comm`); a
/// truncated name that starts the executable's file name is completed from
/// it, so `process.name` matches what rules expect.
fn process_name(comm: &str, exe: Option<&str>) -> Box<str> {
    const COMM_MAX: usize = 15;
    let base = exe.and_then(|e| e.rsplit('/').next()).unwrap_or_default();
    if comm.len() == COMM_MAX && base.len() > COMM_MAX && base.starts_with(comm) {
        base.into()
    } else {
        comm.into()
    }
}

/// The collector's state between scans; moved onto a blocking thread for
/// each scan.
pub(crate) struct Scanner {
    cfg: ProcessMonitorConfig,
    ctx: CollectorContext,
    /// Created on the first scan and reused: sysinfo keeps each process's
    /// exe, cmd and user, so later scans only read `stat` of known pids.
    sys: Option<System>,
    tracker: Tracker<LiveProcess>,
    hashes: HashCache,
    users: UserNames,
    inventory_done: bool,
    /// New processes whose command line read empty, left for the next scan
    /// (see [`Scanner::caught_mid_exec`]): those of the previous scan, and
    /// those of this one.
    deferred: Vec<ProcKey>,
    deferring: Vec<ProcKey>,
    /// Reused buffers.
    new_pids: Vec<u32>,
    gone: Vec<(ProcKey, LiveProcess)>,
}

impl Scanner {
    pub fn new(cfg: ProcessMonitorConfig, ctx: CollectorContext) -> Scanner {
        Scanner {
            cfg,
            ctx,
            sys: None,
            tracker: Tracker::new(),
            hashes: HashCache::new(CACHE_ENTRIES),
            users: UserNames::default(),
            inventory_done: false,
            deferred: Vec::new(),
            deferring: Vec::new(),
            new_pids: Vec::new(),
            gone: Vec::new(),
        }
    }

    /// Reads the process table and sends the inventory (first scan) or the
    /// starts and ends since the previous scan.
    pub fn scan(&mut self) -> Result<ScanStats, ScanError> {
        let began = Instant::now();
        let mut sys = match self.sys.take() {
            Some(sys) => sys,
            None => System::new().map_err(ScanError::Unavailable)?,
        };
        let result = self.scan_with(&mut sys, began);
        self.sys = Some(sys);
        result
    }

    fn scan_with(&mut self, sys: &mut System, began: Instant) -> Result<ScanStats, ScanError> {
        sys.refresh_processes_specifics(ProcessesToUpdate::All, true, refresh_kind(&self.cfg));
        // At least this process is always listed; an empty table means
        // /proc could not be read, not that everything ended.
        if sys.processes().is_empty() {
            return Err(ScanError::Empty);
        }
        let now = Timestamp::now();
        self.find_new(sys);
        self.tracker.sweep(&mut self.gone);
        let (started, ended) = (self.new_pids.len(), self.gone.len());
        self.emit_ends(now);
        self.emit_starts(sys, now);
        self.inventory_done = true;
        Ok(ScanStats {
            processes: self.tracker.len(),
            started,
            ended,
            elapsed: began.elapsed(),
        })
    }

    /// Marks listed processes alive and records the new ones.
    fn find_new(&mut self, sys: &System) {
        self.tracker.begin();
        self.new_pids.clear();
        std::mem::swap(&mut self.deferred, &mut self.deferring);
        self.deferring.clear();
        for (pid, p) in sys.processes() {
            let key = key_of(*pid, p);
            if !is_user_process(*pid, p) || self.tracker.observe(key) {
                continue;
            }
            if self.caught_mid_exec(key, p) {
                self.deferring.push(key);
            } else {
                self.new_pids.push(pid.as_u32());
                self.tracker.insert(key, LiveProcess::read(pid.as_u32(), p));
            }
        }
    }

    /// During `execve` the kernel shows the new name but an empty command
    /// line (and briefly no executable) for up to a few ms. A process seen
    /// then is left for one scan, by which time sysinfo, which re-reads an
    /// empty command line, has the real one. Zombies never get one.
    fn caught_mid_exec(&self, key: ProcKey, p: &SysProcess) -> bool {
        self.inventory_done
            && p.cmd().is_empty()
            && p.status() != ProcessStatus::Zombie
            && !self.deferred.contains(&key)
    }

    fn emit_ends(&mut self, now: Timestamp) {
        let mut gone = std::mem::take(&mut self.gone);
        for (key, rec) in gone.drain(..) {
            if self.ctx.cancel.is_cancelled() {
                break;
            }
            let event = end_event(&self.ctx, &mut self.users, key.pid, &rec, now);
            self.ctx.tx.send(event);
        }
        gone.clear();
        self.gone = gone;
    }

    fn emit_starts(&mut self, sys: &System, now: Timestamp) {
        let new_pids = std::mem::take(&mut self.new_pids);
        for &pid in &new_pids {
            if self.ctx.cancel.is_cancelled() {
                break;
            }
            if let Some(event) = self.start_event(sys, pid, now) {
                self.ctx.tx.send(event);
            }
        }
        self.new_pids = new_pids;
    }

    fn start_event(&mut self, sys: &System, pid: u32, now: Timestamp) -> Option<Event> {
        let spid = Pid::from_u32(pid);
        let p = sys.process(spid)?;
        let parent_start_ms = p
            .parent()
            .and_then(|ppid| Some(key_of(ppid, sys.process(ppid)?)))
            .and_then(|key| self.tracker.get(&key))
            .map(|parent| parent.start_ms);
        let rec = self.tracker.get_mut(&key_of(spid, p))?;
        rec.parent_start_ms = parent_start_ms;

        let (timestamp, meta) = start_meta(self.inventory_done, rec.start_ms, now);
        let mut event = Event::new(&self.ctx.origin, timestamp, meta);
        let mut process = process_fields(&self.ctx, &mut self.users, pid, rec);
        let mut edr = scan_ext();
        if self.cfg.calculate_hashes {
            if let Some(exe) = rec.executable.as_deref() {
                match executable_hash(&mut self.hashes, &self.ctx, pid, exe) {
                    Ok(hash) => process.hash = Some(hash),
                    Err(skip) => edr.hash_skipped = Some(skip),
                }
            }
        }
        if self.cfg.collect_environment {
            process.env_vars = redacted_env(p);
        }
        event.process = Some(Box::new(process));
        event.edr = Some(Box::new(edr));
        Some(event)
    }
}

/// Inventory is what runs now; a start is dated when the process started,
/// which the kernel records to the clock tick.
fn start_meta(inventory_done: bool, start_ms: u64, now: Timestamp) -> (Timestamp, EventMeta) {
    let (timestamp, kind, types, action): (_, _, &'static [&'static str], _) = if inventory_done {
        (Timestamp(start_ms), "event", &["start"], "process-started")
    } else {
        (now, "state", &["info"], "process-inventory")
    };
    let meta = EventMeta {
        kind,
        category: CATEGORY,
        types,
        action,
        duration: None,
    };
    (timestamp, meta)
}

/// The digest, or why there is none (counted).
fn executable_hash(
    hashes: &mut HashCache,
    ctx: &CollectorContext,
    pid: u32,
    exe: &str,
) -> Result<Hash, &'static str> {
    match hashes.digest(exe, &exe_handle(pid, exe), &ctx.cancel) {
        Ok(d) => Ok(Hash {
            sha256: hash::hex(&d),
        }),
        Err(skip) => {
            ctx.counters.hash_skipped.fetch_add(1, Relaxed);
            Err(skip.as_str())
        }
    }
}

fn redacted_env(p: &SysProcess) -> Vec<String> {
    p.environ()
        .iter()
        .map(|e| redact::redact_env_entry(&e.to_string_lossy()))
        .collect()
}

fn end_event(
    ctx: &CollectorContext,
    users: &mut UserNames,
    pid: u32,
    rec: &LiveProcess,
    now: Timestamp,
) -> Event {
    // The process exited at some moment between the previous scan and this
    // one; `now` is when its absence was seen, so `process.end` and the
    // duration may overstate its life by up to one scan interval.
    let lifetime_ms = now.as_millis().saturating_sub(rec.start_ms);
    let mut event = Event::new(
        &ctx.origin,
        now,
        EventMeta {
            kind: "event",
            category: CATEGORY,
            types: &["end"],
            action: "process-ended",
            duration: Some(lifetime_ms.saturating_mul(1_000_000)),
        },
    );
    let mut process = process_fields(ctx, users, pid, rec);
    process.end = Some(now);
    event.process = Some(Box::new(process));
    event.edr = Some(Box::new(scan_ext()));
    event
}

/// The fields start and end events share, so a SIEM can join them.
fn process_fields(
    ctx: &CollectorContext,
    users: &mut UserNames,
    pid: u32,
    rec: &LiveProcess,
) -> Process {
    let host = &ctx.origin.host.name;
    Process {
        pid,
        name: rec.name.to_string(),
        executable: rec.executable.as_deref().map(String::from),
        args: rec.args.to_vec(),
        command_line: (!rec.args.is_empty()).then(|| rec.args.join(" ")),
        start: Some(Timestamp(rec.start_ms)),
        end: None,
        entity_id: event::entity_id(host, pid, rec.start_ms),
        parent: rec.ppid.map(|ppid| ParentProcess {
            pid: ppid,
            entity_id: rec
                .parent_start_ms
                .map(|ms| event::entity_id(host, ppid, ms)),
        }),
        user: rec.uid.map(|uid| User {
            id: Some(uid.to_string()),
            name: users.name(uid).map(String::from),
        }),
        hash: None,
        env_vars: Vec::new(),
    }
}

fn scan_ext() -> EdrExt {
    EdrExt {
        source: Some("scan"),
        ..EdrExt::default()
    }
}

/// Only what the events need: no CPU, memory or per-thread reads. The
/// `OnlyIfNotSet` parts are read once per process, when it is first seen.
fn refresh_kind(cfg: &ProcessMonitorConfig) -> ProcessRefreshKind {
    let kind = ProcessRefreshKind::nothing()
        .without_tasks()
        .with_exe(UpdateKind::OnlyIfNotSet)
        .with_cmd(UpdateKind::OnlyIfNotSet)
        .with_user(UpdateKind::OnlyIfNotSet);
    if cfg.collect_environment {
        kind.with_environ(UpdateKind::OnlyIfNotSet)
    } else {
        kind
    }
}

fn key_of(pid: Pid, p: &SysProcess) -> ProcKey {
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

/// What to read for the hash: on Linux the binary the process actually
/// runs, even if its path was replaced or deleted since.
#[cfg(target_os = "linux")]
fn exe_handle(pid: u32, _exe: &str) -> PathBuf {
    PathBuf::from(format!("/proc/{pid}/exe"))
}

#[cfg(not(target_os = "linux"))]
fn exe_handle(_pid: u32, exe: &str) -> PathBuf {
    PathBuf::from(exe)
}

#[cfg(test)]
mod tests {
    use std::sync::{Arc, Mutex};

    use tokio_util::sync::CancellationToken;

    use super::*;
    use crate::collectors::Coverage;
    use crate::event::Origin;
    use crate::pipeline::{self, Counters};

    fn scanner(cfg: ProcessMonitorConfig) -> (Scanner, std::sync::mpsc::Receiver<Event>) {
        let counters = Counters::new();
        let (tx, rx) = pipeline::channel(65_536, Arc::clone(&counters));
        let ctx = CollectorContext {
            origin: Origin::detect(),
            tx,
            counters,
            coverage: Arc::new(Mutex::new(Coverage::default())),
            cancel: CancellationToken::new(),
        };
        (Scanner::new(cfg, ctx), rx)
    }

    #[test]
    fn truncated_names_are_completed_from_the_executable() {
        let exe = Some("/opt/x/network_scan_cost");
        assert_eq!(&*process_name("network_scan_co", exe), "network_scan_cost");
        // Renamed on purpose (prctl) or a different program: kept.
        assert_eq!(&*process_name("worker", exe), "worker");
        assert_eq!(&*process_name("other_name_abcd", exe), "other_name_abcd");
        assert_eq!(&*process_name("network_scan_co", None), "network_scan_co");
    }

    /// Prints scan durations (run with `--nocapture`); asserts only what
    /// the scans report.
    #[test]
    fn repeated_scans_report_inventory_once() {
        let cfg = ProcessMonitorConfig {
            calculate_hashes: false,
            ..ProcessMonitorConfig::default()
        };
        let (mut s, rx) = scanner(cfg);
        let first = s.scan().expect("first scan");
        let inventory: Vec<Event> = rx.try_iter().collect();
        assert_eq!(inventory.len(), first.started);
        assert!(inventory.iter().all(|e| e.event.kind == "state"));
        let me = std::process::id();
        assert!(inventory
            .iter()
            .any(|e| e.process.as_ref().is_some_and(|p| p.pid == me)));

        let mut steady = Vec::new();
        for _ in 0..5 {
            steady.push(s.scan().expect("scan"));
        }
        let later: Vec<Event> = rx.try_iter().collect();
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
}
