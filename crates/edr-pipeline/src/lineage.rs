//! Who started whom: a bounded table of recent processes, fed from the
//! process events as they pass the pipeline, so an alert can name the
//! chain of programs that led to what it reports.
//!
//! Events carry only the immediate parent; the chain above it is in the
//! events of earlier starts (and of the inventory taken when the collector
//! started). A process that ended is kept for [`ENDED_GRACE`]: a shell that
//! ran a command and exited is still the command's parent when the
//! command's alert is raised.

use std::collections::{BTreeMap, HashMap, VecDeque};

use edr_model::event::{Event, EventType, Timestamp};

/// Entries kept at most. A busy server has a few thousand live processes;
/// the rest of the room holds those that ended recently.
pub const LINEAGE_CAPACITY: usize = 32_768;

/// How long an ended process stays findable, in event time (ms).
pub const ENDED_GRACE_MS: u64 = 30_000;

/// Ancestors reported at most.
pub const MAX_ANCESTORS: usize = 8;

/// Bytes of a command line kept per entry: enough to recognise what a
/// parent ran, and it bounds the table's memory however long command lines
/// get (the full line is in the parent's own start event).
pub const COMMAND_LINE_KEPT: usize = 2048;

/// One process above the one an alert is about (the alert's own type:
/// the table fills it as the alert stores it). Its command line is at most
/// [`COMMAND_LINE_KEPT`] bytes.
pub use edr_model::event::AlertAncestor as Ancestor;

#[derive(Debug)]
struct Entry {
    ppid: Option<u32>,
    executable: Option<Box<str>>,
    command_line: Option<Box<str>>,
    entity_id: Box<str>,
    start: Option<Timestamp>,
    /// Insertion order, also what tells this entry from a later one on
    /// the same pid in the queues below.
    seq: u64,
    /// Event time of its end, if seen.
    ended_at: Option<u64>,
}

/// The process table as the events tell it.
#[derive(Debug)]
pub struct Lineage {
    by_pid: HashMap<u32, Entry>,
    /// seq -> pid, oldest first.
    order: BTreeMap<u64, u32>,
    /// (pid, seq, ended_at) in the order ends were seen.
    ended: VecDeque<(u32, u64, u64)>,
    capacity: usize,
    next_seq: u64,
    /// The latest event time seen: the clock of the grace period, so the
    /// table behaves the same on live events and on a replay.
    now_ms: u64,
}

impl Default for Lineage {
    fn default() -> Self {
        Lineage::new(LINEAGE_CAPACITY)
    }
}

impl Lineage {
    /// A table of at most `capacity` entries (at least one).
    pub fn new(capacity: usize) -> Lineage {
        Lineage {
            by_pid: HashMap::new(),
            order: BTreeMap::new(),
            ended: VecDeque::new(),
            capacity: capacity.max(1),
            next_seq: 0,
            now_ms: 0,
        }
    }

    pub fn len(&self) -> usize {
        self.by_pid.len()
    }

    pub fn is_empty(&self) -> bool {
        self.by_pid.is_empty()
    }

    /// Learns from one event; anything but a process event is ignored.
    pub fn observe(&mut self, event: &Event) {
        if event.event_type() != EventType::Process {
            return;
        }
        let Some(p) = event.process.as_deref() else {
            return;
        };
        self.now_ms = self.now_ms.max(event.timestamp.as_millis());
        self.expire();
        if event.event.types.contains(&"end") {
            self.end(p.pid, &p.entity_id);
            return;
        }
        if !event
            .event
            .types
            .iter()
            .any(|t| *t == "start" || *t == "info")
        {
            return;
        }
        let command_line = p
            .command_line
            .as_deref()
            .map(|c| Box::from(truncate(c, COMMAND_LINE_KEPT)));
        let executable = p.executable.as_deref().map(Box::from);
        let ppid = p.parent.as_ref().map(|parent| parent.pid);
        if let Some(e) = self.by_pid.get_mut(&p.pid) {
            if *e.entity_id == *p.entity_id {
                // An exec: the same process with a new program.
                e.executable = executable;
                e.command_line = command_line;
                e.ppid = ppid.or(e.ppid);
                e.start = p.start.or(e.start);
                e.ended_at = None;
                return;
            }
        }
        self.remove(p.pid);
        if self.by_pid.len() >= self.capacity {
            self.evict_one();
        }
        let seq = self.next_seq;
        self.next_seq += 1;
        self.order.insert(seq, p.pid);
        self.by_pid.insert(
            p.pid,
            Entry {
                ppid,
                executable,
                command_line,
                entity_id: p.entity_id.as_str().into(),
                start: p.start,
                seq,
                ended_at: None,
            },
        );
    }

    /// The processes above `pid`, its parent first, at most `max_depth`
    /// (and [`MAX_ANCESTORS`]). Stops at pid 1, at a parent not known, at a
    /// parent that started after its child (its pid was reused), and at a
    /// loop.
    pub fn ancestry(&self, pid: u32, max_depth: usize) -> Vec<Ancestor> {
        let max_depth = max_depth.min(MAX_ANCESTORS);
        let mut out = Vec::with_capacity(max_depth);
        let mut visited = vec![pid];
        let Some(mut child) = self.by_pid.get(&pid) else {
            return out;
        };
        while out.len() < max_depth && !visited.contains(&1) {
            let Some(ppid) = child.ppid.filter(|p| *p != 0 && !visited.contains(p)) else {
                break;
            };
            let Some(parent) = self.by_pid.get(&ppid) else {
                break;
            };
            if let (Some(parent_start), Some(child_start)) = (parent.start, child.start) {
                if parent_start > child_start {
                    break;
                }
            }
            out.push(Ancestor {
                pid: ppid,
                executable: parent.executable.as_deref().map(String::from),
                command_line: parent.command_line.as_deref().map(String::from),
                entity_id: parent.entity_id.to_string(),
            });
            visited.push(ppid);
            child = parent;
        }
        out
    }

    fn end(&mut self, pid: u32, entity_id: &str) {
        let now = self.now_ms;
        if let Some(e) = self.by_pid.get_mut(&pid) {
            if *e.entity_id == *entity_id && e.ended_at.is_none() {
                e.ended_at = Some(now);
                self.ended.push_back((pid, e.seq, now));
            }
        }
        // Stale items (entries replaced since) are dropped as they come
        // up; this keeps the queue bounded even if they never do.
        while self.ended.len() > self.capacity {
            self.ended.pop_front();
        }
    }

    /// Removes ended processes whose grace period is over.
    fn expire(&mut self) {
        while let Some(&(pid, seq, at)) = self.ended.front() {
            if at.saturating_add(ENDED_GRACE_MS) > self.now_ms {
                break;
            }
            self.ended.pop_front();
            self.remove_ended(pid, seq);
        }
    }

    /// Makes room: the process that ended first, else the oldest.
    fn evict_one(&mut self) {
        while let Some((pid, seq, _)) = self.ended.pop_front() {
            if self.remove_ended(pid, seq) {
                return;
            }
        }
        if let Some((_, pid)) = self.order.pop_first() {
            self.by_pid.remove(&pid);
        }
    }

    /// Removes the entry on `pid` if it is still the one inserted as `seq`
    /// and still ended (a start seen after its end revives it).
    fn remove_ended(&mut self, pid: u32, seq: u64) -> bool {
        if self
            .by_pid
            .get(&pid)
            .is_some_and(|e| e.seq == seq && e.ended_at.is_some())
        {
            self.remove(pid);
            true
        } else {
            false
        }
    }

    fn remove(&mut self, pid: u32) {
        if let Some(e) = self.by_pid.remove(&pid) {
            self.order.remove(&e.seq);
        }
    }
}

/// The longest prefix of `s` of at most `max` bytes that ends on a
/// character boundary.
fn truncate(s: &str, max: usize) -> &str {
    if s.len() <= max {
        return s;
    }
    let mut end = max;
    while !s.is_char_boundary(end) {
        end -= 1;
    }
    &s[..end]
}

#[cfg(test)]
mod tests {
    use super::*;
    use edr_model::event::{entity_id, Action, EventMeta, Origin, ParentProcess, Process};

    fn event(action: Action, ts: u64, pid: u32, ppid: u32, start: u64, exe: &str) -> Event {
        let types: &'static [&'static str] = match action {
            Action::ProcessEnded => &["end"],
            Action::ProcessInventory => &["info"],
            _ => &["start"],
        };
        let meta = EventMeta {
            kind: "event",
            category: &["process"],
            types,
            action,
            duration: None,
            severity: None,
            risk_score: None,
        };
        let mut e = Event::new(&Origin::detect(), Timestamp(ts), meta);
        e.process = Some(Box::new(Process {
            pid,
            name: exe.rsplit('/').next().unwrap_or(exe).to_string(),
            executable: Some(exe.to_string()),
            command_line: Some(format!("{exe} --pid {pid}")),
            start: Some(Timestamp(start)),
            entity_id: entity_id("h", pid, start),
            parent: Some(ParentProcess {
                pid: ppid,
                ..ParentProcess::default()
            }),
            ..Process::default()
        }));
        e
    }

    fn start(l: &mut Lineage, ts: u64, pid: u32, ppid: u32, exe: &str) {
        l.observe(&event(Action::ProcessStarted, ts, pid, ppid, ts, exe));
    }

    fn end(l: &mut Lineage, ts: u64, pid: u32, started: u64) {
        l.observe(&event(Action::ProcessEnded, ts, pid, 0, started, "/x"));
    }

    #[test]
    fn a_chain_of_ten_gives_eight_ancestors_parent_first() {
        let mut l = Lineage::default();
        // pid 1 <- 101 <- 102 ... <- 110
        start(&mut l, 1_000, 1, 0, "/sbin/init");
        for (i, pid) in (101..=110).enumerate() {
            let ppid = if pid == 101 { 1 } else { pid - 1 };
            start(&mut l, 2_000 + i as u64, pid, ppid, &format!("/bin/p{pid}"));
        }
        let chain = l.ancestry(110, 16);
        let pids: Vec<u32> = chain.iter().map(|a| a.pid).collect();
        assert_eq!(pids, [109, 108, 107, 106, 105, 104, 103, 102]);
        assert_eq!(chain[0].executable.as_deref(), Some("/bin/p109"));
        assert_eq!(
            chain[0].command_line.as_deref(),
            Some("/bin/p109 --pid 109")
        );
        assert_eq!(chain[0].entity_id, entity_id("h", 109, 2_008));
        assert_eq!(l.ancestry(110, 3).len(), 3);
        // A short chain ends at init, which has no parent.
        let top: Vec<u32> = l.ancestry(102, 8).iter().map(|a| a.pid).collect();
        assert_eq!(top, [101, 1]);
        assert!(l.ancestry(1, 8).is_empty());
        assert!(l.ancestry(4242, 8).is_empty());
    }

    #[test]
    fn a_loop_terminates() {
        let mut l = Lineage::default();
        // Impossible in a kernel, possible in hostile or replayed events.
        start(&mut l, 1_000, 10, 11, "/a");
        start(&mut l, 1_000, 11, 12, "/b");
        start(&mut l, 1_000, 12, 10, "/c");
        let pids: Vec<u32> = l.ancestry(10, 8).iter().map(|a| a.pid).collect();
        assert_eq!(pids, [11, 12]);
        start(&mut l, 1_000, 20, 20, "/self");
        assert!(l.ancestry(20, 8).is_empty());
    }

    #[test]
    fn capacity_holds_and_ended_processes_go_first() {
        let mut l = Lineage::new(100);
        for pid in 2..202 {
            start(&mut l, 1_000 + u64::from(pid), pid, 1, "/bin/x");
            assert!(l.len() <= 100);
        }
        assert_eq!(l.len(), 100);
        // The oldest went first: pid 2 is no longer known as a parent.
        start(&mut l, 5_000, 1000, 2, "/bin/child");
        assert!(l.ancestry(1000, 1).is_empty());
        start(&mut l, 5_000, 999, 150, "/bin/child");
        assert_eq!(l.ancestry(999, 1)[0].pid, 150);
        // An ended process is evicted before an older live one.
        end(&mut l, 5_001, 190, 1_190);
        start(&mut l, 5_002, 1001, 104, "/bin/child");
        assert_eq!(l.len(), 100);
        assert_eq!(l.ancestry(1001, 1)[0].pid, 104, "the oldest live stays");
        start(&mut l, 5_003, 1002, 190, "/bin/child");
        assert!(l.ancestry(1002, 1).is_empty(), "the ended one was evicted");
        assert_eq!(l.len(), 100);
    }

    #[test]
    fn an_ended_parent_is_findable_for_the_grace_period() {
        let mut l = Lineage::default();
        start(&mut l, 1_000, 50, 1, "/bin/sh");
        start(&mut l, 1_001, 51, 50, "/bin/curl");
        end(&mut l, 1_002, 50, 1_000);
        assert_eq!(l.ancestry(51, 8)[0].executable.as_deref(), Some("/bin/sh"));
        start(&mut l, 1_002 + ENDED_GRACE_MS, 60, 1, "/bin/other");
        assert!(l.ancestry(51, 8).is_empty());
        assert_eq!(l.len(), 2);
    }

    #[test]
    fn a_pid_reused_after_an_end_gets_the_new_identity() {
        let mut l = Lineage::default();
        start(&mut l, 1_000, 70, 1, "/bin/old");
        start(&mut l, 1_001, 71, 70, "/bin/child");
        end(&mut l, 1_002, 70, 1_000);
        start(&mut l, 1_003, 70, 1, "/bin/new");
        start(&mut l, 1_004, 72, 70, "/bin/child2");
        let a = &l.ancestry(72, 8)[0];
        assert_eq!(a.executable.as_deref(), Some("/bin/new"));
        assert_eq!(a.entity_id, entity_id("h", 70, 1_003));
        // The old child's parent started after it: not its parent.
        assert!(l.ancestry(71, 8).is_empty());
        // The old end does not remove the new process when it expires.
        start(&mut l, 1_003 + ENDED_GRACE_MS, 80, 1, "/bin/later");
        assert_eq!(l.ancestry(72, 8)[0].pid, 70);
    }

    #[test]
    fn an_exec_updates_the_program_and_long_lines_are_cut() {
        let mut l = Lineage::default();
        start(&mut l, 1_000, 90, 1, "/bin/sh");
        let mut exec = event(Action::ProcessExec, 1_100, 90, 1, 1_000, "/usr/bin/python3");
        if let Some(p) = exec.process.as_deref_mut() {
            p.command_line = Some("é".repeat(COMMAND_LINE_KEPT));
        }
        l.observe(&exec);
        start(&mut l, 1_200, 91, 90, "/bin/x");
        let a = &l.ancestry(91, 8)[0];
        assert_eq!(a.executable.as_deref(), Some("/usr/bin/python3"));
        let line = a.command_line.as_deref().expect("line");
        assert!(line.len() <= COMMAND_LINE_KEPT && line.len() >= COMMAND_LINE_KEPT - 1);
        assert_eq!(l.len(), 2);
    }
}
