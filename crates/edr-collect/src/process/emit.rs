//! Process events, built the same way whichever source observed the
//! process, so start and end events share `process.entity_id` and a SIEM
//! can join them.

use std::collections::VecDeque;
use std::path::PathBuf;
use std::sync::atomic::Ordering::Relaxed;

use super::hash::{self, FileId, HashCache, Skip, CACHE_ENTRIES};
use super::tracker::Tracker;
use super::users::UserNames;
use crate::CollectorContext;
use edr_model::event::{
    self, Action, EdrExt, Event, EventMeta, Hash, ParentProcess, Process, Timestamp, User,
};

const CATEGORY: &[&str] = &["process"];

/// Ended processes whose program is kept for children that report after
/// them (a shell that ran a command in the background and exited before
/// the command's exec was applied). Bounded by count and by bytes, since
/// a command line may be 64 KiB.
const ENDED_KEPT: usize = 128;
const ENDED_KEPT_BYTES: usize = 256 * 1024;

/// A start time this close to the one a child recorded for its parent
/// names the same process (the child may have recorded a fork's estimate).
const SAME_START_MS: u64 = 1000;

/// What the events of a live process need: a compact copy of what was
/// read when it started, since it cannot be read again once it ended.
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct LiveProcess {
    /// See [`super::process_start_ms`]: the input of `process.entity_id`.
    pub start_ms: u64,
    pub ppid: Option<u32>,
    /// Known once the parent is known (it may be new in the same scan).
    pub parent_start_ms: Option<u64>,
    /// Effective user, as ECS `process.user` means.
    pub uid: Option<u32>,
    pub name: Box<str>,
    pub executable: Option<Box<str>>,
    /// See [`super::source::Exec::executable_id`]; None from a scan.
    pub executable_id: Option<FileId>,
    /// Already redacted.
    pub args: Box<[String]>,
    /// The working directory when its program was read.
    pub cwd: Option<Box<str>>,
    /// The executable or arguments could not be read (the process exited
    /// first, or the agent may not read it): its events carry only what
    /// the source itself reported.
    pub partial: bool,
    /// A start (or inventory) event was sent. False while a new fork waits
    /// to see whether an exec follows.
    pub reported: bool,
}

impl LiveProcess {
    /// Whether an exec changed what `self` recorded.
    pub fn same_image(&self, other: &LiveProcess) -> bool {
        self.executable == other.executable && self.args == other.args
    }
}

/// Who observed what an event reports: `edr.source`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Observer {
    Scan,
    Event,
}

impl Observer {
    fn as_str(self) -> &'static str {
        match self {
            Observer::Scan => "scan",
            Observer::Event => "event",
        }
    }
}

/// Why a start event is sent.
#[derive(Debug, Clone, Copy)]
pub(crate) enum Start {
    /// Running when the collector started, seen at the given time.
    Inventory(Timestamp),
    /// A new process (dated by its start time).
    New,
    /// A reported process replaced its program at the given time.
    Exec(Timestamp),
}

/// The kernel keeps only the first 15 bytes of a process name (`comm`); a
/// truncated name that starts the executable's file name is completed from
/// it, so `process.name` matches what rules expect.
pub(crate) fn process_name(comm: &str, exe: Option<&str>) -> Box<str> {
    const COMM_MAX: usize = 15;
    let base = exe.and_then(|e| e.rsplit('/').next()).unwrap_or_default();
    if comm.len() == COMM_MAX && base.len() > COMM_MAX && base.starts_with(comm) {
        base.into()
    } else {
        comm.into()
    }
}

/// What a start event says of the parent's program.
#[derive(Debug, Clone)]
struct ParentImage {
    start_ms: u64,
    name: Box<str>,
    executable: Option<Box<str>>,
    /// Already redacted.
    args: Box<[String]>,
}

impl ParentImage {
    fn of(rec: &LiveProcess) -> ParentImage {
        ParentImage {
            start_ms: rec.start_ms,
            name: rec.name.clone(),
            executable: rec.executable.clone(),
            args: rec.args.clone(),
        }
    }

    fn bytes(&self) -> usize {
        self.name.len()
            + self.executable.as_ref().map_or(0, |e| e.len())
            + self.args.iter().map(|a| a.len() + 24).sum::<usize>()
            + 64
    }

    fn fill(&self, parent: &mut ParentProcess) {
        fill_parent(parent, &self.name, self.executable.as_deref(), &self.args);
    }
}

fn fill_parent(parent: &mut ParentProcess, name: &str, exe: Option<&str>, args: &[String]) {
    parent.name = (!name.is_empty()).then(|| name.to_string());
    parent.executable = exe.map(String::from);
    parent.args = args.to_vec();
    parent.command_line = (!args.is_empty()).then(|| args.join(" "));
}

/// Builds and sends process events; owns the caches they draw on.
pub(crate) struct Emitter {
    ctx: CollectorContext,
    calculate_hashes: bool,
    users: UserNames,
    hashes: HashCache,
    /// Programs of recently ended processes, by pid, oldest first.
    ended: VecDeque<(u32, ParentImage)>,
    ended_bytes: usize,
}

impl Emitter {
    pub fn new(ctx: CollectorContext, calculate_hashes: bool) -> Emitter {
        Emitter {
            ctx,
            calculate_hashes,
            users: UserNames::default(),
            hashes: HashCache::new(CACHE_ENTRIES),
            ended: VecDeque::new(),
            ended_bytes: 0,
        }
    }

    pub fn ctx(&self) -> &CollectorContext {
        &self.ctx
    }

    /// Sends the start (or inventory) event of `rec`; `env` is already
    /// redacted. The parent's program is looked up in `live`.
    pub fn start(
        &mut self,
        pid: u32,
        rec: &LiveProcess,
        why: Start,
        by: Observer,
        env: Vec<String>,
        live: &Tracker<LiveProcess>,
    ) {
        let (timestamp, meta) = start_meta(why, rec.start_ms);
        let mut event = Event::new(&self.ctx.origin, timestamp, meta);
        let mut process = self.process_fields(pid, rec);
        process.working_directory = rec.cwd.as_deref().map(String::from);
        if let Some(parent) = process.parent.as_mut() {
            self.describe_parent(rec, parent, live);
        }
        let mut edr = ext(by, rec);
        if self.calculate_hashes {
            if let Some(exe) = rec.executable.as_deref() {
                match self.executable_hash(pid, exe, rec.executable_id) {
                    Ok(hash) => process.hash = Some(hash),
                    Err(skip) => edr.hash_skipped = Some(skip),
                }
            }
        }
        process.env_vars = env;
        event.process = Some(Box::new(process));
        event.edr = Some(Box::new(edr));
        self.ctx.tx.send(event);
    }

    /// Sends the end event of `rec`. `end` is when the exit happened (an
    /// event source) or was noticed (a scan).
    pub fn end(
        &mut self,
        pid: u32,
        rec: &LiveProcess,
        end: Timestamp,
        exit_code: Option<i64>,
        by: Observer,
    ) {
        let lifetime_ms = end
            .as_millis()
            .saturating_sub(super::wall_start_ms(rec.start_ms));
        let mut event = Event::new(
            &self.ctx.origin,
            end,
            EventMeta {
                kind: "event",
                category: CATEGORY,
                types: &["end"],
                action: Action::ProcessEnded,
                duration: Some(lifetime_ms.saturating_mul(1_000_000)),
                severity: None,
                risk_score: None,
            },
        );
        let mut process = self.process_fields(pid, rec);
        process.end = Some(end);
        process.exit_code = exit_code;
        event.process = Some(Box::new(process));
        event.edr = Some(Box::new(ext(by, rec)));
        self.ctx.tx.send(event);
        self.remember_ended(pid, rec);
    }

    /// Keeps the program of an ended process for children reported after
    /// it ended.
    fn remember_ended(&mut self, pid: u32, rec: &LiveProcess) {
        let image = ParentImage::of(rec);
        let bytes = image.bytes();
        if bytes > ENDED_KEPT_BYTES / 4 {
            return;
        }
        self.ended_bytes += bytes;
        self.ended.push_back((pid, image));
        while self.ended.len() > ENDED_KEPT || self.ended_bytes > ENDED_KEPT_BYTES {
            let Some((_, old)) = self.ended.pop_front() else {
                break;
            };
            self.ended_bytes = self.ended_bytes.saturating_sub(old.bytes());
        }
    }

    /// Fills the parent's program: from the live view (the parent was read
    /// when it started), else from the recently ended, else (Linux) from
    /// `/proc`. Each is taken only if it is the process `rec` recorded as
    /// its parent, by start time: a pid may have been reused since.
    fn describe_parent(
        &mut self,
        rec: &LiveProcess,
        parent: &mut ParentProcess,
        live: &Tracker<LiveProcess>,
    ) {
        let ppid = parent.pid;
        let is_parent = |start_ms: u64| match rec.parent_start_ms {
            Some(ms) => ms.abs_diff(start_ms) <= SAME_START_MS,
            // Unknown: any process older than the child may be it.
            None => start_ms <= rec.start_ms.saturating_add(SAME_START_MS),
        };
        if let Some((_, p)) = live.get(ppid).filter(|(_, p)| is_parent(p.start_ms)) {
            fill_parent(parent, &p.name, p.executable.as_deref(), &p.args);
            return;
        }
        if let Some((_, image)) = self
            .ended
            .iter()
            .rev()
            .find(|(pid, image)| *pid == ppid && is_parent(image.start_ms))
        {
            image.fill(parent);
            return;
        }
        if ppid == 0 {
            return;
        }
        if let Some(image) = read_parent(ppid).filter(|image| is_parent(image.start_ms)) {
            if parent.entity_id.is_none() {
                let host = &self.ctx.origin.host.name;
                parent.entity_id = Some(event::entity_id(host, ppid, image.start_ms));
            }
            image.fill(parent);
        }
    }

    /// The fields start and end events share, so a SIEM can join them.
    fn process_fields(&mut self, pid: u32, rec: &LiveProcess) -> Process {
        let host = &self.ctx.origin.host.name;
        Process {
            pid,
            name: rec.name.to_string(),
            executable: rec.executable.as_deref().map(String::from),
            args: rec.args.to_vec(),
            command_line: (!rec.args.is_empty()).then(|| rec.args.join(" ")),
            start: Some(Timestamp(super::wall_start_ms(rec.start_ms))),
            end: None,
            exit_code: None,
            entity_id: event::entity_id(host, pid, rec.start_ms),
            parent: rec.ppid.map(|ppid| ParentProcess {
                pid: ppid,
                entity_id: rec
                    .parent_start_ms
                    .map(|ms| event::entity_id(host, ppid, ms)),
                ..ParentProcess::default()
            }),
            user: rec.uid.map(|uid| User {
                id: Some(uid.to_string()),
                name: self.users.name(uid).map(String::from),
            }),
            hash: None,
            env_vars: Vec::new(),
            working_directory: None,
        }
    }

    /// The digest, or why there is none (counted). A process that already
    /// exited is hashed by the identity of the file it ran, if known.
    fn executable_hash(
        &mut self,
        pid: u32,
        exe: &str,
        id: Option<FileId>,
    ) -> Result<Hash, &'static str> {
        let cancel = &self.ctx.cancel;
        let digest = match (self.hashes.digest(exe, &exe_handle(pid, exe), cancel), id) {
            (Err(Skip::Vanished), Some(id)) => self.hashes.digest_of(exe, id, cancel),
            (result, _) => result,
        };
        match digest {
            Ok(d) => Ok(Hash {
                sha256: hash::hex(&d),
            }),
            Err(skip) => {
                self.ctx.counters.hash_skipped.fetch_add(1, Relaxed);
                Err(skip.as_str())
            }
        }
    }
}

/// Inventory is what runs now; a start is dated when the process started,
/// which the kernel records to the clock tick; an exec when it happened.
fn start_meta(why: Start, start_ms: u64) -> (Timestamp, EventMeta) {
    let (timestamp, kind, types, action): (_, _, &'static [&'static str], _) = match why {
        Start::Inventory(now) => (now, "state", &["info"], Action::ProcessInventory),
        Start::New => (
            Timestamp(super::wall_start_ms(start_ms)),
            "event",
            &["start"],
            Action::ProcessStarted,
        ),
        Start::Exec(at) => (at, "event", &["start"], Action::ProcessExec),
    };
    let meta = EventMeta {
        kind,
        category: CATEGORY,
        types,
        action,
        duration: None,
        severity: None,
        risk_score: None,
    };
    (timestamp, meta)
}

/// A parent the live view does not know, read from `/proc` (its arguments
/// redacted like every process's).
#[cfg(target_os = "linux")]
fn read_parent(ppid: u32) -> Option<ParentImage> {
    let x = super::procfs::reread(ppid, Timestamp::now())?;
    let comm = x.comm.as_deref().unwrap_or_default();
    Some(ParentImage {
        start_ms: x.start_ms?,
        name: process_name(comm, x.executable.as_deref()),
        executable: x.executable.as_deref().map(Box::from),
        args: x
            .args
            .as_deref()
            .map(|a| edr_model::redact::redact_args(a).into_boxed_slice())
            .unwrap_or_default(),
    })
}

#[cfg(not(target_os = "linux"))]
fn read_parent(_ppid: u32) -> Option<ParentImage> {
    None
}

fn ext(by: Observer, rec: &LiveProcess) -> EdrExt {
    EdrExt {
        source: Some(by.as_str()),
        enrichment: rec.partial.then_some("partial"),
        ..EdrExt::default()
    }
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
    use super::*;

    #[test]
    fn truncated_names_are_completed_from_the_executable() {
        let exe = Some("/opt/x/network_scan_cost");
        assert_eq!(&*process_name("network_scan_co", exe), "network_scan_cost");
        // Renamed on purpose (prctl) or a different program: kept.
        assert_eq!(&*process_name("worker", exe), "worker");
        assert_eq!(&*process_name("other_name_abcd", exe), "other_name_abcd");
        assert_eq!(&*process_name("network_scan_co", None), "network_scan_co");
    }
}
