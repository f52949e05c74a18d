//! What a process event source reports (the Linux proc connector, macOS
//! `eslogger`), and how its reports update the live view and become
//! events. Platform code only produces [`SourceEvent`]s; everything here is
//! shared and tested on Linux.
//!
//! A fork is not reported at once: most forks exec within microseconds,
//! and one start event with the new program says more than a start with
//! the parent's program followed by an exec. A fork that has not exec'd
//! after [`FORK_GRACE`] is reported as what it is, a copy of its parent.

use std::collections::VecDeque;
use std::sync::atomic::{AtomicUsize, Ordering::Relaxed};
use std::sync::mpsc::{self, Receiver, RecvTimeoutError, Sender};
use std::sync::Arc;
use std::time::{Duration, Instant};

use super::emit::{process_name, Emitter, LiveProcess, Observer, Start};
use super::hash::FileId;
use super::tracker::{ProcKey, Tracker};
use edr_model::event::Timestamp;
use edr_model::redact;
use edr_pipeline::Counters;

/// Bytes of source events that may wait for the collector. Thousands of
/// events: a burst of execs, or the collector hashing a large new binary.
const QUEUE_BYTES: usize = 4 * 1024 * 1024;

/// How long a new fork may take to exec before it is reported as a copy
/// of its parent. Most exec within a millisecond; on a loaded machine the
/// exec may take longer to arrive, and a start reported this much later is
/// still dated when the process started (batches take seconds anyway).
pub(crate) const FORK_GRACE: Duration = Duration::from_millis(500);

/// One report of an event source, enriched as far as the source could.
#[derive(Debug)]
pub(crate) enum SourceEvent {
    Fork(Fork),
    Exec(Box<Exec>),
    Exit(Exit),
    /// Events were lost (kernel buffer overrun, or the collector fell
    /// behind): the scan should reconcile soon.
    Lost,
    /// The source stopped for good, for this reason.
    Stopped(String),
}

impl SourceEvent {
    /// Roughly the heap bytes the event holds, for bounding the queue.
    pub fn weight(&self) -> usize {
        const BASE: usize = 64;
        match self {
            SourceEvent::Exec(x) => {
                let strings = |v: &[String]| v.iter().map(|s| s.len() + 24).sum::<usize>();
                BASE + std::mem::size_of::<Exec>()
                    + x.executable.as_ref().map_or(0, String::len)
                    + x.comm.as_ref().map_or(0, String::len)
                    + x.cwd.as_ref().map_or(0, String::len)
                    + x.args.as_deref().map_or(0, strings)
                    + strings(&x.env)
            }
            SourceEvent::Stopped(reason) => BASE + reason.len(),
            _ => BASE,
        }
    }
}

/// A new process (not a new thread).
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct Fork {
    pub pid: u32,
    pub ppid: u32,
    /// The source's start time, possibly an estimate (the Linux reader
    /// does not stop to read `/proc` for a fork: the exec that usually
    /// follows is what must be read fast). An exec, or a fresh read when
    /// the fork is reported, replaces it with the exact value.
    pub start_ms: u64,
}

/// An estimated start time names the same process as an exact one this
/// close to it: a pid is only reused after its holder exited.
const SAME_START_MS: u64 = 1000;

/// A process that replaced its program, with what could be read of it.
#[derive(Debug, Clone, Default, PartialEq)]
pub(crate) struct Exec {
    pub pid: u32,
    pub ppid: Option<u32>,
    pub start_ms: Option<u64>,
    /// Effective user.
    pub uid: Option<u32>,
    /// The kernel's (possibly truncated) process name.
    pub comm: Option<String>,
    pub executable: Option<String>,
    /// The executable file as it was while the process ran it, so its
    /// hash can be taken (or found cached) after the process exited.
    pub executable_id: Option<FileId>,
    /// Not yet redacted. None if they could not be read (an empty list is
    /// a program run without arguments).
    pub args: Option<Vec<String>>,
    /// The working directory (`process.working_directory`).
    pub cwd: Option<String>,
    /// Not yet redacted; empty unless the environment is collected.
    pub env: Vec<String>,
    pub at: Timestamp,
}

impl Exec {
    /// The process was gone before its program could be read.
    fn partial(&self) -> bool {
        self.executable.is_none() || self.args.is_none()
    }
}

#[derive(Debug, Clone, PartialEq)]
pub(crate) struct Exit {
    pub pid: u32,
    pub exit_code: Option<i64>,
    pub at: Timestamp,
}

/// The sending side of the queue from a source's reading thread to the
/// collector. It never blocks the reader: past [`QUEUE_BYTES`] events are
/// dropped, counted, and followed by [`SourceEvent::Lost`] once there is
/// room again.
pub(crate) struct SourceTx {
    tx: Sender<SourceEvent>,
    queued: Arc<AtomicUsize>,
    counters: Arc<Counters>,
    owe_lost: bool,
}

/// The collector's side of the queue.
pub(crate) struct SourceRx {
    rx: Receiver<SourceEvent>,
    queued: Arc<AtomicUsize>,
}

pub(crate) fn source_queue(counters: Arc<Counters>) -> (SourceTx, SourceRx) {
    let (tx, rx) = mpsc::channel();
    let queued = Arc::new(AtomicUsize::new(0));
    let tx = SourceTx {
        tx,
        queued: Arc::clone(&queued),
        counters,
        owe_lost: false,
    };
    (tx, SourceRx { rx, queued })
}

impl SourceTx {
    /// Queues an event, or counts it lost. False once the collector is gone.
    pub fn send(&mut self, event: SourceEvent) -> bool {
        if self.owe_lost && self.offer(SourceEvent::Lost) == Offer::Sent {
            self.owe_lost = false;
        }
        match self.offer(event) {
            Offer::Sent => true,
            Offer::Full => {
                self.lost();
                true
            }
            Offer::Closed => false,
        }
    }

    /// Records that events were lost before reaching this queue (a kernel
    /// buffer overrun).
    pub fn lost(&mut self) {
        self.counters.process_events_lost.fetch_add(1, Relaxed);
        self.owe_lost = true;
    }

    fn offer(&self, event: SourceEvent) -> Offer {
        let weight = event.weight();
        if self.queued.fetch_add(weight, Relaxed) + weight > QUEUE_BYTES {
            self.queued.fetch_sub(weight, Relaxed);
            return Offer::Full;
        }
        match self.tx.send(event) {
            Ok(()) => Offer::Sent,
            Err(_) => {
                self.queued.fetch_sub(weight, Relaxed);
                Offer::Closed
            }
        }
    }
}

#[derive(Debug, PartialEq, Eq)]
enum Offer {
    Sent,
    Full,
    Closed,
}

impl SourceRx {
    pub fn recv_timeout(&self, timeout: Duration) -> Result<SourceEvent, RecvTimeoutError> {
        let event = self.rx.recv_timeout(timeout)?;
        self.queued.fetch_sub(event.weight(), Relaxed);
        Ok(event)
    }

    pub fn try_recv(&self) -> Option<SourceEvent> {
        let event = self.rx.try_recv().ok()?;
        self.queued.fetch_sub(event.weight(), Relaxed);
        Some(event)
    }
}

/// `process.exit_code` from a wait(2) status: the exit status, or 128 plus
/// the signal that killed the process (as shells report it).
pub(crate) fn exit_code_from_wait_status(status: i32) -> i64 {
    let signal = status & 0x7f;
    if signal == 0 {
        i64::from((status >> 8) & 0xff)
    } else {
        128 + i64::from(signal)
    }
}

/// Reads a live process afresh (a fork whose parent is unknown); None
/// where the platform's source carries everything itself.
pub(crate) type Reread = fn(u32, Timestamp) -> Option<Exec>;

/// Applies source events to the live view, holding back forks that may
/// exec.
pub(crate) struct EventSide {
    pending: VecDeque<(ProcKey, Instant)>,
    reread: Option<Reread>,
}

impl EventSide {
    pub fn new(reread: Option<Reread>) -> EventSide {
        EventSide {
            pending: VecDeque::new(),
            reread,
        }
    }

    pub fn fork(&mut self, f: Fork, live: &mut Tracker<LiveProcess>, now: Instant) {
        // Already known: listed by the inventory scan that ran while this
        // event waited.
        if live
            .get(f.pid)
            .is_some_and(|(_, rec)| rec.start_ms.abs_diff(f.start_ms) <= SAME_START_MS)
        {
            return;
        }
        let key = ProcKey {
            pid: f.pid,
            start: f.start_ms / 1000,
        };
        let rec = match live.get(f.ppid) {
            Some((_, parent)) => LiveProcess {
                start_ms: f.start_ms,
                ppid: Some(f.ppid),
                parent_start_ms: Some(parent.start_ms),
                reported: false,
                ..parent.clone()
            },
            None => LiveProcess {
                start_ms: f.start_ms,
                ppid: Some(f.ppid),
                parent_start_ms: None,
                uid: None,
                name: "".into(),
                executable: None,
                executable_id: None,
                args: Box::new([]),
                cwd: None,
                partial: true,
                reported: false,
            },
        };
        live.insert(key, rec);
        self.pending.push_back((key, now + FORK_GRACE));
    }

    pub fn exec(&mut self, x: Exec, live: &mut Tracker<LiveProcess>, emit: &mut Emitter) {
        if x.partial() {
            emit.ctx().counters.process_partial.fetch_add(1, Relaxed);
        }
        let env: Vec<String> = x.env.iter().map(|e| redact::redact_env_entry(e)).collect();
        // A fork still waiting for its exec is this process, whatever the
        // fork's estimate of its start.
        let known = live.get(x.pid).is_some_and(|(key, rec)| {
            !rec.reported || x.start_ms.is_none_or(|ms| ms / 1000 == key.start)
        });
        if known {
            if let Some((_, rec)) = live.remove(x.pid) {
                let mut updated = rec.clone();
                apply_image(&mut updated, &x);
                if !rec.reported {
                    updated.start_ms = x.start_ms.unwrap_or(rec.start_ms);
                }
                let why = if !rec.reported {
                    Some(Start::New)
                } else if rec.same_image(&updated) {
                    // The inventory already read the new program.
                    None
                } else {
                    Some(Start::Exec(x.at))
                };
                if let Some(why) = why {
                    updated.reported = true;
                    emit.start(x.pid, &updated, why, Observer::Event, env, live);
                }
                insert(live, x.pid, updated);
            }
            return;
        }
        // The fork was lost (or preceded the source), or the pid was
        // reused after an exit that was lost.
        let start_ms = x.start_ms.unwrap_or(x.at.as_millis());
        let parent_start_ms = x
            .ppid
            .and_then(|ppid| live.get(ppid))
            .map(|(_, parent)| parent.start_ms);
        let mut rec = LiveProcess {
            start_ms,
            ppid: x.ppid,
            parent_start_ms,
            uid: None,
            name: "".into(),
            executable: None,
            executable_id: None,
            args: Box::new([]),
            cwd: None,
            partial: true,
            reported: true,
        };
        apply_image(&mut rec, &x);
        emit.start(x.pid, &rec, Start::New, Observer::Event, env, live);
        insert(live, x.pid, rec);
    }

    pub fn exit(&mut self, e: Exit, live: &mut Tracker<LiveProcess>, emit: &mut Emitter) {
        // Unknown: ended before the inventory scan listed it.
        let Some((key, rec)) = live.remove(e.pid) else {
            return;
        };
        if !rec.reported {
            emit.start(key.pid, &rec, Start::New, Observer::Event, Vec::new(), live);
        }
        emit.end(key.pid, &rec, e.at, e.exit_code, Observer::Event);
    }

    /// Reports forks that have not exec'd within [`FORK_GRACE`].
    pub fn flush(&mut self, live: &mut Tracker<LiveProcess>, emit: &mut Emitter, now: Instant) {
        while let Some(&(key, due)) = self.pending.front() {
            if due > now {
                break;
            }
            self.pending.pop_front();
            if live.get_key(&key).is_none_or(|rec| rec.reported) {
                continue;
            }
            let Some((_, mut rec)) = live.remove(key.pid) else {
                continue;
            };
            // Still there: read its exact start, and its program if the
            // parent's was unknown.
            if let Some(x) = self.reread.and_then(|r| r(key.pid, Timestamp::now())) {
                rec.start_ms = x.start_ms.unwrap_or(rec.start_ms);
                if rec.partial {
                    apply_image(&mut rec, &x);
                } else if x.cwd.is_some() {
                    // The parent's, copied at the fork, may have changed.
                    rec.cwd = x.cwd.as_deref().map(Box::from);
                }
            }
            rec.reported = true;
            emit.start(key.pid, &rec, Start::New, Observer::Event, Vec::new(), live);
            insert(live, key.pid, rec);
        }
        if self.pending.is_empty() && self.pending.capacity() > 1024 {
            self.pending.shrink_to_fit();
        }
    }

    /// When the oldest waiting fork is due.
    pub fn next_due(&self) -> Option<Instant> {
        self.pending.front().map(|(_, due)| *due)
    }
}

/// Tracks `rec` under its (possibly corrected) start time.
fn insert(live: &mut Tracker<LiveProcess>, pid: u32, rec: LiveProcess) {
    let key = ProcKey {
        pid,
        start: rec.start_ms / 1000,
    };
    live.insert(key, rec);
}

/// Records the program an exec loaded. What could not be read is left
/// empty rather than kept from before the exec, which was another program.
fn apply_image(rec: &mut LiveProcess, x: &Exec) {
    let comm = x.comm.as_deref().unwrap_or_default();
    rec.name = process_name(comm, x.executable.as_deref());
    if rec.name.is_empty() {
        if let Some(exe) = x.executable.as_deref() {
            rec.name = exe.rsplit('/').next().unwrap_or(exe).into();
        }
    }
    rec.executable = x.executable.as_deref().map(Box::from);
    rec.executable_id = x.executable_id;
    rec.args = x
        .args
        .as_deref()
        .map(|a| redact::redact_args(a).into_boxed_slice())
        .unwrap_or_default();
    rec.cwd = x.cwd.as_deref().map(Box::from);
    if x.uid.is_some() {
        rec.uid = x.uid;
    }
    rec.partial = x.partial();
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use super::*;
    use crate::CollectorContext;
    use edr_model::event::{entity_id, Action, Event};

    const T0: u64 = 1_700_000_000_000;

    struct Harness {
        side: EventSide,
        live: Tracker<LiveProcess>,
        emit: Emitter,
        rx: edr_pipeline::EventRx,
        now: Instant,
    }

    impl Harness {
        /// With a shell (pid 100) already known, as if from the inventory.
        fn new() -> Harness {
            let (ctx, rx) = CollectorContext::standalone(1024);
            let mut live = Tracker::new();
            live.insert(
                ProcKey {
                    pid: 100,
                    start: T0 / 1000,
                },
                LiveProcess {
                    start_ms: T0,
                    ppid: Some(1),
                    parent_start_ms: None,
                    uid: Some(1000),
                    name: "bash".into(),
                    executable: Some("/usr/bin/bash".into()),
                    executable_id: None,
                    args: Box::new(["bash".to_string()]),
                    cwd: Some("/home/me".into()),
                    partial: false,
                    reported: true,
                },
            );
            Harness {
                side: EventSide::new(None),
                live,
                emit: Emitter::new(ctx, false),
                rx,
                now: Instant::now(),
            }
        }

        fn fork(&mut self, ppid: u32, pid: u32, start_ms: u64) {
            let f = Fork {
                pid,
                ppid,
                start_ms,
            };
            self.side.fork(f, &mut self.live, self.now);
        }

        fn exec(&mut self, x: Exec) {
            self.side.exec(x, &mut self.live, &mut self.emit);
        }

        fn exit(&mut self, pid: u32, exit_code: i64, at: u64) {
            let e = Exit {
                pid,
                exit_code: Some(exit_code),
                at: Timestamp(at),
            };
            self.side.exit(e, &mut self.live, &mut self.emit);
        }

        fn later(&mut self, by: Duration) {
            self.now += by;
            self.side.flush(&mut self.live, &mut self.emit, self.now);
        }

        fn events(&self) -> Vec<Event> {
            self.rx.try_iter().collect()
        }

        fn host(&self) -> String {
            self.emit.ctx().origin.host.name.clone()
        }
    }

    fn exec_of(pid: u32, start_ms: u64, exe: &str, args: &[&str]) -> Exec {
        Exec {
            pid,
            ppid: Some(100),
            start_ms: Some(start_ms),
            uid: Some(1000),
            comm: exe.rsplit('/').next().map(String::from),
            executable: Some(exe.to_string()),
            args: Some(args.iter().map(|a| a.to_string()).collect()),
            at: Timestamp(start_ms + 1),
            ..Exec::default()
        }
    }

    fn process(e: &Event) -> &edr_model::event::Process {
        e.process.as_deref().expect("process fields")
    }

    #[test]
    fn fork_then_exec_is_one_start_with_the_new_program_and_right_parent() {
        let mut h = Harness::new();
        h.fork(100, 200, T0 + 5_000);
        h.exec(exec_of(200, T0 + 5_000, "/usr/bin/true", &["true", "x"]));
        h.later(FORK_GRACE * 2);
        let events = h.events();
        assert_eq!(events.len(), 1, "{events:?}");
        let e = &events[0];
        assert_eq!(e.event.action, Action::ProcessStarted);
        assert_eq!(e.event.types, ["start"]);
        // Dated from the start the kernel recorded; identified by it too.
        assert_eq!(
            e.timestamp,
            Timestamp(super::super::wall_start_ms(T0 + 5_000))
        );
        let p = process(e);
        assert_eq!(p.executable.as_deref(), Some("/usr/bin/true"));
        assert_eq!(p.args, ["true", "x"]);
        assert_eq!(p.name, "true");
        assert_eq!(p.entity_id, entity_id(&h.host(), 200, T0 + 5_000));
        let parent = p.parent.as_ref().expect("parent");
        assert_eq!(parent.pid, 100);
        assert_eq!(
            parent.entity_id.as_deref(),
            Some(entity_id(&h.host(), 100, T0).as_str())
        );
        assert_eq!(e.edr.as_ref().and_then(|x| x.source), Some("event"));
    }

    #[test]
    fn the_exec_corrects_the_forks_estimated_start() {
        let mut h = Harness::new();
        // The fork's clock read 10 ms past a second boundary the kernel's
        // start time had not crossed.
        h.fork(100, 210, T0 + 5_002);
        h.exec(exec_of(210, T0 + 4_995, "/usr/bin/true", &["true"]));
        h.exit(210, 0, T0 + 5_100);
        let events = h.events();
        assert_eq!(events.len(), 2, "{events:?}");
        let expected = entity_id(&h.host(), 210, T0 + 4_995);
        assert!(events.iter().all(|e| process(e).entity_id == expected));
        assert!(h.live.get(210).is_none());
    }

    #[test]
    fn start_and_end_share_the_entity_id_and_the_end_has_the_exit_code() {
        let mut h = Harness::new();
        h.fork(100, 200, T0 + 5_000);
        h.exec(exec_of(200, T0 + 5_000, "/usr/bin/false", &["false"]));
        let started = super::super::wall_start_ms(T0 + 5_000);
        h.exit(200, exit_code_from_wait_status(1 << 8), started + 250);
        let events = h.events();
        assert_eq!(events.len(), 2, "{events:?}");
        let (start, end) = (process(&events[0]), process(&events[1]));
        assert_eq!(start.entity_id, end.entity_id);
        assert_eq!(events[1].event.types, ["end"]);
        assert_eq!(end.exit_code, Some(1));
        assert_eq!(end.end, Some(Timestamp(started + 250)));
        assert_eq!(events[1].event.duration, Some(250_000_000));
        assert_eq!(end.executable.as_deref(), Some("/usr/bin/false"));
        assert!(h.live.get(200).is_none());
    }

    #[test]
    fn a_fork_without_exec_is_reported_as_a_copy_of_its_parent() {
        let mut h = Harness::new();
        h.fork(100, 201, T0 + 6_000);
        h.later(FORK_GRACE / 2);
        assert!(h.events().is_empty());
        h.later(FORK_GRACE);
        let events = h.events();
        assert_eq!(events.len(), 1);
        let p = process(&events[0]);
        assert_eq!(p.executable.as_deref(), Some("/usr/bin/bash"));
        assert_eq!(p.parent.as_ref().map(|x| x.pid), Some(100));
        // A later exec is a second start of the same process.
        h.exec(exec_of(201, T0 + 6_000, "/usr/bin/ls", &["ls"]));
        let events = h.events();
        assert_eq!(events.len(), 1);
        assert_eq!(events[0].event.action, Action::ProcessExec);
        assert_eq!(events[0].event.types, ["start"]);
        assert_eq!(events[0].timestamp, Timestamp(T0 + 6_001));
        assert_eq!(process(&events[0]).entity_id, p.entity_id);
    }

    #[test]
    fn a_fork_that_exits_before_exec_gets_a_start_and_an_end() {
        let mut h = Harness::new();
        h.fork(100, 202, T0 + 7_000);
        h.exit(202, 0, T0 + 7_010);
        let events = h.events();
        let actions: Vec<Action> = events.iter().map(|e| e.event.action).collect();
        assert_eq!(actions, [Action::ProcessStarted, Action::ProcessEnded]);
        h.later(FORK_GRACE * 2);
        assert!(h.events().is_empty());
    }

    #[test]
    fn the_parent_is_kept_when_it_exits_before_the_child_execs() {
        let mut h = Harness::new();
        h.fork(100, 300, T0 + 8_000);
        h.exec(exec_of(300, T0 + 8_000, "/usr/bin/sh", &["sh", "-c", "x"]));
        h.fork(300, 301, T0 + 8_100);
        h.exit(300, 0, T0 + 8_150);
        let mut x = exec_of(301, T0 + 8_100, "/usr/bin/curl", &["curl"]);
        // /proc already shows init as the orphan's parent.
        x.ppid = Some(1);
        h.exec(x);
        let events = h.events();
        let curl = events
            .iter()
            .find(|e| process(e).pid == 301)
            .expect("curl started");
        let parent = process(curl).parent.as_ref().expect("parent");
        assert_eq!(parent.pid, 300);
        assert_eq!(
            parent.entity_id.as_deref(),
            Some(entity_id(&h.host(), 300, T0 + 8_000).as_str())
        );
    }

    #[test]
    fn a_start_carries_its_parents_program_and_its_working_directory() {
        let mut h = Harness::new();
        h.fork(100, 600, T0 + 11_000);
        let mut x = exec_of(600, T0 + 11_000, "/usr/bin/sh", &["sh", "-c", "x"]);
        x.cwd = Some("/srv/work".into());
        h.exec(x);
        let events = h.events();
        assert_eq!(events.len(), 1, "{events:?}");
        let p = process(&events[0]);
        assert_eq!(p.working_directory.as_deref(), Some("/srv/work"));
        let parent = p.parent.as_ref().expect("parent");
        assert_eq!(parent.pid, 100);
        assert_eq!(parent.name.as_deref(), Some("bash"));
        assert_eq!(parent.executable.as_deref(), Some("/usr/bin/bash"));
        assert_eq!(parent.args, ["bash"]);
        assert_eq!(parent.command_line.as_deref(), Some("bash"));
        // A fork that does not exec runs where its parent did.
        h.fork(600, 601, T0 + 11_100);
        h.later(FORK_GRACE * 2);
        let events = h.events();
        assert_eq!(events.len(), 1, "{events:?}");
        let p = process(&events[0]);
        assert_eq!(p.working_directory.as_deref(), Some("/srv/work"));
        let parent = p.parent.as_ref().expect("parent");
        assert_eq!(parent.executable.as_deref(), Some("/usr/bin/sh"));
        assert_eq!(parent.command_line.as_deref(), Some("sh -c x"));
        // End events stay as they were.
        h.exit(601, 0, T0 + 11_200);
        let end = h.events();
        let p = process(&end[0]);
        assert_eq!(p.working_directory, None);
        assert_eq!(
            p.parent.as_ref().and_then(|x| x.executable.as_deref()),
            None
        );
    }

    #[test]
    fn a_parent_that_ended_first_is_still_described_and_redacted() {
        let mut h = Harness::new();
        h.fork(100, 700, T0 + 12_000);
        h.exec(exec_of(
            700,
            T0 + 12_000,
            "/usr/bin/mysql",
            &["mysql", "--password=hunter2", "-e", "x"],
        ));
        h.fork(700, 701, T0 + 12_100);
        h.exit(700, 0, T0 + 12_150);
        let mut x = exec_of(701, T0 + 12_100, "/usr/bin/curl", &["curl"]);
        x.ppid = Some(1);
        h.exec(x);
        let events = h.events();
        let curl = events
            .iter()
            .find(|e| process(e).pid == 701 && e.event.types == ["start"])
            .expect("curl started");
        let parent = process(curl).parent.as_ref().expect("parent");
        assert_eq!(parent.pid, 700);
        assert_eq!(parent.executable.as_deref(), Some("/usr/bin/mysql"));
        assert_eq!(parent.args, ["mysql", "--password=[REDACTED]", "-e", "x"]);
        assert_eq!(
            parent.command_line.as_deref(),
            Some("mysql --password=[REDACTED] -e x")
        );
        assert!(!serde_json::to_string(curl)
            .expect("json")
            .contains("hunter2"));
    }

    #[test]
    fn an_exec_of_what_the_inventory_read_is_not_reported_again() {
        let mut h = Harness::new();
        let mut x = exec_of(100, T0, "/usr/bin/bash", &["bash"]);
        x.ppid = Some(1);
        h.exec(x);
        assert!(h.events().is_empty());
        // A fork the inventory already listed is not new either.
        h.fork(1, 100, T0);
        h.later(FORK_GRACE * 2);
        assert!(h.events().is_empty());
    }

    #[test]
    fn a_process_gone_before_it_was_read_is_reported_partial_and_counted() {
        let mut h = Harness::new();
        h.fork(100, 400, T0 + 9_000);
        h.exec(Exec {
            pid: 400,
            at: Timestamp(T0 + 9_001),
            ..Exec::default()
        });
        h.exit(400, 0, T0 + 9_002);
        let events = h.events();
        assert_eq!(events.len(), 2);
        for e in &events {
            let p = process(e);
            assert_eq!(p.pid, 400);
            assert_eq!(p.executable, None);
            // Not the parent's program, which the exec replaced.
            assert!(p.args.is_empty());
            assert_eq!(p.parent.as_ref().map(|x| x.pid), Some(100));
            assert_eq!(p.entity_id, entity_id(&h.host(), 400, T0 + 9_000));
            assert_eq!(e.edr.as_ref().and_then(|x| x.enrichment), Some("partial"));
        }
        assert_eq!(h.emit.ctx().counters.process_partial.load(Relaxed), 1);
    }

    #[test]
    fn an_exec_without_a_fork_is_still_a_start() {
        let mut h = Harness::new();
        h.exec(exec_of(
            500,
            T0 + 10_000,
            "/usr/bin/id",
            &["id", "--password=x"],
        ));
        let events = h.events();
        assert_eq!(events.len(), 1);
        let p = process(&events[0]);
        assert_eq!(p.args, ["id", "--password=[REDACTED]"]);
        assert_eq!(p.parent.as_ref().map(|x| x.pid), Some(100));
        assert!(h.live.get(500).is_some());
    }

    #[test]
    fn a_full_queue_counts_losses_and_says_so_once_there_is_room() {
        let counters = Counters::new();
        let (mut tx, rx) = source_queue(Arc::clone(&counters));
        let big = || {
            SourceEvent::Exec(Box::new(Exec {
                args: Some(vec!["x".repeat(QUEUE_BYTES / 3)]),
                ..Exec::default()
            }))
        };
        for _ in 0..4 {
            assert!(tx.send(big()));
        }
        assert_eq!(counters.process_events_lost.load(Relaxed), 2);
        assert!(matches!(rx.try_recv(), Some(SourceEvent::Exec(_))));
        assert!(matches!(rx.try_recv(), Some(SourceEvent::Exec(_))));
        // The third was refused, then the loss fit before the fourth.
        assert!(matches!(rx.try_recv(), Some(SourceEvent::Lost)));
        assert!(rx.try_recv().is_none());
        let exit = Exit {
            pid: 1,
            exit_code: None,
            at: Timestamp(0),
        };
        assert!(tx.send(SourceEvent::Exit(exit.clone())));
        assert!(matches!(rx.try_recv(), Some(SourceEvent::Lost)));
        assert!(matches!(rx.try_recv(), Some(SourceEvent::Exit(e)) if e == exit));
        drop(rx);
        assert!(!tx.send(SourceEvent::Lost));
    }

    #[test]
    fn wait_statuses_become_exit_codes() {
        assert_eq!(exit_code_from_wait_status(0), 0);
        assert_eq!(exit_code_from_wait_status(3 << 8), 3);
        // Killed by SIGKILL (9), and by SIGSEGV (11) with a core dump.
        assert_eq!(exit_code_from_wait_status(9), 137);
        assert_eq!(exit_code_from_wait_status(0x80 | 11), 139);
    }
}
