//! Turns raw notify events, and the fanotify reader's changes, into ECS
//! file events.
//!
//! Runs on its own thread, fed by the watcher callback (or the fanotify
//! reader) through a bounded channel. This is where the slow parts live
//! (stat, glob matching, rename pairing); the callback only queues.

use std::collections::VecDeque;
use std::fs::Metadata;
use std::io;
use std::path::{Path, PathBuf};
use std::sync::atomic::Ordering::Relaxed;
use std::sync::mpsc::{Receiver, RecvTimeoutError};
use std::sync::Arc;
use std::time::{Duration, Instant};

use globset::{Glob, GlobSet, GlobSetBuilder};
use notify::event::{ModifyKind, RenameMode};
use notify::EventKind;
use tokio_util::sync::CancellationToken;

use super::hasher::{mark_skipped, HashQueue, Skip};
use super::prefix::Prefixes;
use super::Raw;
use crate::CollectorContext;
use edr_config::expand_home;
use edr_model::event::{Action, EdrExt, Event, EventMeta, File, Process, Timestamp};

/// How long a rename's "from" half waits for its "to" half. inotify queues
/// the two back to back, so this only expires for moves out of the tree.
const RENAME_WAIT: Duration = Duration::from_millis(100);
/// Unpaired "from" halves kept at once; the oldest is reported first.
const MAX_PENDING_RENAMES: usize = 256;
/// How often an idle worker looks at the cancellation token.
const IDLE_WAIT: Duration = Duration::from_millis(50);
const FILE_CATEGORY: &[&str] = &["file"];

/// What happened to a path, once rename halves are paired.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum What {
    Created,
    Modified {
        data: bool,
    },
    Deleted,
    /// Both names are inside the watched tree.
    Renamed,
    /// Moved somewhere we do not watch: only the old name is known.
    RenamedOut,
    /// Moved in from somewhere we do not watch: only the new name is known.
    RenamedIn,
}

impl What {
    fn types(self) -> &'static [&'static str] {
        match self {
            What::Created | What::RenamedIn => &["creation"],
            What::Modified { .. } | What::Renamed => &["change"],
            What::Deleted | What::RenamedOut => &["deletion"],
        }
    }

    fn action(self) -> Action {
        match self {
            What::Created => Action::FileCreated,
            What::Modified { .. } => Action::FileModified,
            What::Deleted => Action::FileDeleted,
            What::Renamed | What::RenamedOut | What::RenamedIn => Action::FileRenamed,
        }
    }

    fn path_exists_after(self) -> bool {
        !matches!(self, What::Deleted | What::RenamedOut)
    }

    /// Content may be new. Metadata-only changes (chmod, touch) are not
    /// rehashed; renames are, because downloads land by rename.
    fn may_change_content(self) -> bool {
        matches!(
            self,
            What::Created | What::Modified { data: true } | What::Renamed | What::RenamedIn
        )
    }
}

#[derive(Debug)]
pub(super) struct Change {
    pub(super) at: Timestamp,
    pub(super) what: What,
    pub(super) path: PathBuf,
    pub(super) original: Option<PathBuf>,
    /// The process that made the change, where the source names it
    /// (fanotify, eslogger).
    pub(super) actor: Option<Box<Process>>,
}

struct PendingFrom {
    tracker: usize,
    path: PathBuf,
    at: Timestamp,
    seen: Instant,
}

/// Pairs notify's rename halves by tracker (the inotify cookie).
///
/// notify sends `From`, then `To` and `Both` back to back when it saw both
/// halves. We report the pair at `To` and ignore the `Both` that follows;
/// a `From` nobody claims within [`RENAME_WAIT`] left the tree.
#[derive(Default)]
struct Renames {
    pending: VecDeque<PendingFrom>,
    last_to: Option<usize>,
}

impl Renames {
    fn from(
        &mut self,
        tracker: usize,
        path: PathBuf,
        at: Timestamp,
        now: Instant,
        out: &mut Vec<Change>,
    ) {
        if self.pending.len() >= MAX_PENDING_RENAMES {
            if let Some(oldest) = self.pending.pop_front() {
                out.push(oldest.into_out());
            }
        }
        self.pending.push_back(PendingFrom {
            tracker,
            path,
            at,
            seen: now,
        });
    }

    fn to(&mut self, tracker: usize, path: PathBuf, at: Timestamp) -> Change {
        self.last_to = Some(tracker);
        match self.take(tracker) {
            Some(from) => Change {
                at,
                what: What::Renamed,
                path,
                original: Some(from.path),
                actor: None,
            },
            None => Change {
                at,
                what: What::RenamedIn,
                path,
                original: None,
                actor: None,
            },
        }
    }

    fn both(
        &mut self,
        tracker: usize,
        old: PathBuf,
        new: PathBuf,
        at: Timestamp,
    ) -> Option<Change> {
        self.take(tracker);
        if self.last_to == Some(tracker) {
            return None;
        }
        Some(Change {
            at,
            what: What::Renamed,
            path: new,
            original: Some(old),
            actor: None,
        })
    }

    fn take(&mut self, tracker: usize) -> Option<PendingFrom> {
        let i = self.pending.iter().position(|p| p.tracker == tracker)?;
        self.pending.remove(i)
    }

    fn expire(&mut self, now: Instant, out: &mut Vec<Change>) {
        while let Some(p) = self.pending.front() {
            if now.saturating_duration_since(p.seen) < RENAME_WAIT {
                break;
            }
            if let Some(p) = self.pending.pop_front() {
                out.push(p.into_out());
            }
        }
    }

    fn next_deadline(&self) -> Option<Instant> {
        self.pending.front().map(|p| p.seen + RENAME_WAIT)
    }

    fn flush(&mut self, out: &mut Vec<Change>) {
        out.extend(self.pending.drain(..).map(PendingFrom::into_out));
    }
}

impl PendingFrom {
    fn into_out(self) -> Change {
        Change {
            at: self.at,
            what: What::RenamedOut,
            path: self.path,
            original: None,
            actor: None,
        }
    }
}

/// Where hashable events go.
pub(super) struct Hashing {
    pub(super) queue: Arc<HashQueue>,
    pub(super) max_bytes: u64,
}

pub(super) struct Worker {
    ctx: CollectorContext,
    /// Only changes covered by these are reported: a watched single file
    /// is watched through its directory, whose other entries are not news.
    only: Option<Prefixes>,
    exclude: GlobSet,
    hashing: Option<Hashing>,
    renames: Renames,
    /// Reused between raw events.
    changes: Vec<Change>,
}

impl Worker {
    pub(super) fn new(
        ctx: CollectorContext,
        exclude_paths: &[String],
        hashing: Option<Hashing>,
    ) -> Worker {
        Worker {
            ctx,
            only: None,
            exclude: build_excludes(exclude_paths),
            hashing,
            renames: Renames::default(),
            changes: Vec::new(),
        }
    }

    /// Reports only changes under `prefixes` (inotify watching a single
    /// file through its directory).
    pub(super) fn only_under(&mut self, prefixes: Prefixes) {
        self.only = Some(prefixes);
    }

    /// Reports changes a kernel source already translated (fanotify,
    /// eslogger), until cancelled or the source is gone; then what is
    /// still queued.
    #[cfg(any(target_os = "linux", target_os = "macos"))]
    pub(super) fn run_changes(&mut self, rx: &Receiver<Box<Change>>, stop: &CancellationToken) {
        while !stop.is_cancelled() {
            match rx.recv_timeout(IDLE_WAIT) {
                Ok(c) => self.emit(*c),
                Err(RecvTimeoutError::Timeout) => {}
                Err(RecvTimeoutError::Disconnected) => return,
            }
        }
        while let Ok(c) = rx.recv_timeout(Duration::from_secs(1)) {
            self.emit(*c);
        }
    }

    /// Translates raw events until cancelled or the watcher is gone.
    pub(super) fn run(&mut self, raw: &Receiver<Box<Raw>>, stop: &CancellationToken) {
        while !stop.is_cancelled() {
            let now = Instant::now();
            let wait = self.renames.next_deadline().map_or(IDLE_WAIT, |d| {
                d.saturating_duration_since(now).min(IDLE_WAIT)
            });
            match raw.recv_timeout(wait) {
                Ok(r) => self.handle(*r),
                Err(RecvTimeoutError::Timeout) => {}
                Err(RecvTimeoutError::Disconnected) => break,
            }
            let mut changes = std::mem::take(&mut self.changes);
            self.renames.expire(Instant::now(), &mut changes);
            self.emit_all(&mut changes);
            self.changes = changes;
        }
    }

    /// Translates what is still queued once the watcher is dropped, so a
    /// shutdown keeps events that already happened. notify's thread drops
    /// its sender as it exits; the timeout guards against it lingering.
    pub(super) fn drain(&mut self, raw: &Receiver<Box<Raw>>) {
        while let Ok(r) = raw.recv_timeout(Duration::from_secs(1)) {
            self.handle(*r);
        }
    }

    /// Reports renames still waiting for their other half.
    pub(super) fn finish(&mut self) {
        let mut changes = std::mem::take(&mut self.changes);
        self.renames.flush(&mut changes);
        self.emit_all(&mut changes);
    }

    fn handle(&mut self, raw: Raw) {
        match raw.res {
            Ok(event) => {
                let mut changes = std::mem::take(&mut self.changes);
                self.translate(event, raw.at, &mut changes);
                self.emit_all(&mut changes);
                self.changes = changes;
            }
            Err(e) => super::watch::handle_runtime_error(&self.ctx, e),
        }
    }

    fn translate(&mut self, event: notify::Event, at: Timestamp, out: &mut Vec<Change>) {
        let simple = |what: What, out: &mut Vec<Change>, paths: Vec<PathBuf>| {
            out.extend(paths.into_iter().map(|path| Change {
                at,
                what,
                path,
                original: None,
                actor: None,
            }));
        };
        let tracker = event.tracker();
        match event.kind {
            EventKind::Create(_) => simple(What::Created, out, event.paths),
            EventKind::Remove(_) => simple(What::Deleted, out, event.paths),
            EventKind::Modify(ModifyKind::Name(mode)) => {
                self.rename(mode, tracker, event.paths, at, out)
            }
            EventKind::Modify(ModifyKind::Metadata(_)) => {
                simple(What::Modified { data: false }, out, event.paths)
            }
            EventKind::Modify(_) => simple(What::Modified { data: true }, out, event.paths),
            EventKind::Access(_) | EventKind::Any | EventKind::Other => {}
        }
    }

    fn rename(
        &mut self,
        mode: RenameMode,
        tracker: Option<usize>,
        paths: Vec<PathBuf>,
        at: Timestamp,
        out: &mut Vec<Change>,
    ) {
        let mut paths = paths.into_iter();
        let single = |what: What, path: PathBuf| Change {
            at,
            what,
            path,
            original: None,
            actor: None,
        };
        match (mode, tracker) {
            (RenameMode::From, Some(t)) => {
                if let Some(path) = paths.next() {
                    self.renames.from(t, path, at, Instant::now(), out);
                }
            }
            // A watched directory itself moved (inotify MOVE_SELF): where to
            // is unknown.
            (RenameMode::From, None) => out.extend(paths.map(|p| single(What::RenamedOut, p))),
            (RenameMode::To, Some(t)) => {
                if let Some(path) = paths.next() {
                    out.push(self.renames.to(t, path, at));
                }
            }
            (RenameMode::To, None) => out.extend(paths.map(|p| single(What::RenamedIn, p))),
            (RenameMode::Both, _) => {
                if let (Some(old), Some(new)) = (paths.next(), paths.next()) {
                    let change = match tracker {
                        Some(t) => self.renames.both(t, old, new, at),
                        None => Some(Change {
                            at,
                            what: What::Renamed,
                            path: new,
                            original: Some(old),
                            actor: None,
                        }),
                    };
                    out.extend(change);
                }
            }
            // FSEvents reports each name of a rename on its own, unpaired:
            // whether the name still exists says which side it was.
            (RenameMode::Any | RenameMode::Other, _) => out.extend(paths.map(|p| {
                let what = if p.symlink_metadata().is_ok() {
                    What::RenamedIn
                } else {
                    What::RenamedOut
                };
                single(what, p)
            })),
        }
    }

    fn emit_all(&self, changes: &mut Vec<Change>) {
        for change in changes.drain(..) {
            self.emit(change);
        }
    }

    fn emit(&self, mut change: Change) {
        if let Some(only) = &self.only {
            if !narrow(only, &mut change) {
                return;
            }
        }
        if self.excluded(&change) {
            return;
        }
        let meta = change
            .what
            .path_exists_after()
            .then(|| std::fs::symlink_metadata(&change.path));
        let mut event = build_event(
            &self.ctx,
            &mut change,
            meta.as_ref().and_then(|m| m.as_ref().ok()),
        );
        let Some(hashing) = self
            .hashing
            .as_ref()
            .filter(|_| change.what.may_change_content())
        else {
            self.ctx.tx.send(event);
            return;
        };
        match hash_plan(meta, hashing.max_bytes) {
            HashPlan::None => {
                self.ctx.tx.send(event);
            }
            HashPlan::Skip(skip) => {
                self.ctx.counters.hash_skipped.fetch_add(1, Relaxed);
                mark_skipped(&mut event, &skip);
                self.ctx.tx.send(event);
            }
            HashPlan::Queue => {
                if let Err(mut event) = hashing.queue.submit(&change.path, event) {
                    self.ctx.counters.hash_queue_dropped.fetch_add(1, Relaxed);
                    mark_skipped(&mut event, &Skip::QueueFull);
                    self.ctx.tx.send(*event);
                }
            }
        }
    }

    /// A rename is dropped only when both of its names are excluded: a file
    /// moving out of an excluded directory is news.
    fn excluded(&self, change: &Change) -> bool {
        self.exclude.is_match(&change.path)
            && change
                .original
                .as_ref()
                .is_none_or(|o| self.exclude.is_match(o))
    }
}

enum HashPlan {
    None,
    Skip(Skip),
    Queue,
}

/// The cheap checks before a hash job: the type and size as `lstat` sees
/// them (the hasher checks again on the open descriptor).
fn hash_plan(meta: Option<io::Result<Metadata>>, max_bytes: u64) -> HashPlan {
    let meta = match meta {
        None => return HashPlan::None,
        Some(Err(e)) => return HashPlan::Skip(Skip::from_io(e)),
        Some(Ok(m)) => m,
    };
    let kind = meta.file_type();
    if kind.is_dir() {
        HashPlan::None
    } else if !kind.is_file() {
        HashPlan::Skip(Skip::NotRegular)
    } else if meta.len() > max_bytes {
        HashPlan::Skip(Skip::TooLarge)
    } else {
        HashPlan::Queue
    }
}

/// Keeps a change if `only` covers it; a rename with one name outside
/// becomes a move in or out. False: not reported.
fn narrow(only: &Prefixes, change: &mut Change) -> bool {
    let new_in = only.covers(&change.path);
    let old_in = change.original.as_ref().is_some_and(|o| only.covers(o));
    if change.what != What::Renamed {
        return new_in;
    }
    match (new_in, old_in) {
        (true, true) => true,
        (true, false) => {
            change.what = What::RenamedIn;
            change.original = None;
            true
        }
        (false, true) => {
            change.what = What::RenamedOut;
            if let Some(old) = change.original.take() {
                change.path = old;
            }
            true
        }
        (false, false) => false,
    }
}

fn build_event(ctx: &CollectorContext, change: &mut Change, meta: Option<&Metadata>) -> Event {
    let mut event = Event::new(
        &ctx.origin,
        change.at,
        EventMeta {
            kind: "event",
            category: FILE_CATEGORY,
            types: change.what.types(),
            action: change.what.action(),
            duration: None,
            severity: None,
            risk_score: None,
        },
    );
    event.file = Some(Box::new(describe(&change.path, meta)));
    event.process = change.actor.take();
    if let Some(original) = &change.original {
        event.edr = Some(Box::new(EdrExt {
            original_path: Some(original.to_string_lossy().into_owned()),
            ..EdrExt::default()
        }));
    }
    event
}

/// `file.*` from the path and, when the path still exists, its `lstat`.
fn describe(path: &Path, meta: Option<&Metadata>) -> File {
    let lossy = |s: &std::ffi::OsStr| s.to_string_lossy().into_owned();
    let mut file = File {
        path: path.to_string_lossy().into_owned(),
        name: path.file_name().map(lossy),
        directory: path
            .parent()
            .filter(|p| !p.as_os_str().is_empty())
            .map(|p| lossy(p.as_os_str())),
        extension: path.extension().map(lossy),
        ..File::default()
    };
    if let Some(meta) = meta {
        let kind = meta.file_type();
        file.kind = if kind.is_file() {
            Some("file")
        } else if kind.is_dir() {
            Some("dir")
        } else if kind.is_symlink() {
            Some("symlink")
        } else {
            // FIFOs, sockets and devices have no ECS `file.type` value.
            None
        };
        file.size = kind.is_file().then_some(meta.len());
        file.mtime = meta.modified().ok().map(Timestamp::from);
    }
    file
}

/// Compiles the exclude globs. Config validation rejects bad patterns; one
/// that slips through is skipped with a warning rather than disabling the
/// collector.
fn build_excludes(patterns: &[String]) -> GlobSet {
    let mut builder = GlobSetBuilder::new();
    for pattern in patterns {
        let expanded = if pattern.starts_with('~') {
            expand_home(pattern).to_string_lossy().into_owned()
        } else {
            pattern.clone()
        };
        match Glob::new(&expanded) {
            Ok(glob) => {
                builder.add(glob);
            }
            Err(e) => tracing::warn!("ignoring file_monitor exclude pattern {pattern:?}: {e}"),
        }
    }
    builder.build().unwrap_or_else(|e| {
        tracing::warn!("file_monitor exclude patterns unusable, excluding nothing: {e}");
        GlobSet::empty()
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn at() -> Timestamp {
        Timestamp(1)
    }

    #[test]
    fn paired_rename_is_reported_once_at_to() {
        let mut r = Renames::default();
        let mut out = Vec::new();
        let now = Instant::now();
        r.from(7, "/w/a".into(), at(), now, &mut out);
        let c = r.to(7, "/w/b".into(), at());
        assert_eq!(c.what, What::Renamed);
        assert_eq!(c.path, PathBuf::from("/w/b"));
        assert_eq!(c.original, Some(PathBuf::from("/w/a")));
        assert!(r.both(7, "/w/a".into(), "/w/b".into(), at()).is_none());
        r.expire(now + RENAME_WAIT * 2, &mut out);
        assert!(out.is_empty());
    }

    #[test]
    fn unclaimed_from_expires_as_moved_out() {
        let mut r = Renames::default();
        let mut out = Vec::new();
        let now = Instant::now();
        r.from(9, "/w/gone".into(), at(), now, &mut out);
        r.expire(now, &mut out);
        assert!(out.is_empty(), "not before the wait");
        r.expire(now + RENAME_WAIT, &mut out);
        assert_eq!(out.len(), 1);
        assert_eq!(out[0].what, What::RenamedOut);
        assert_eq!(r.to(3, "/w/new".into(), at()).what, What::RenamedIn);
    }

    #[test]
    fn globs_match_full_paths_with_invalid_utf8() {
        use std::os::unix::ffi::OsStrExt;
        let set = build_excludes(&["**/excluded/**".into(), "**/*.swp".into()]);
        assert!(set.is_match("/home/u/excluded/x"));
        assert!(set.is_match("/home/u/a/.notes.swp"));
        assert!(!set.is_match("/home/u/excluded"));
        let odd = Path::new(std::ffi::OsStr::from_bytes(b"/home/u/excluded/\xff"));
        assert!(set.is_match(odd));
    }
}
