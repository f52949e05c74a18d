//! The fanotify file source (Linux 5.9+, CAP_SYS_ADMIN).
//!
//! One notification group in FID mode (`FAN_REPORT_DFID_NAME |
//! FAN_REPORT_FID`) with a `FAN_MARK_FILESYSTEM` mark on each filesystem
//! that holds a watch path: every create, close-after-write, attribute
//! change, delete and rename on those filesystems is reported with the
//! acting pid, and `watch_paths` are prefix filters applied here, so a
//! watched path costs no kernel watch and a path that does not exist yet
//! is watched all the same.
//!
//! An event names its directory by file handle plus the entry's name; the
//! directory's path is found with `open_by_handle_at` on a descriptor of
//! the same filesystem and a `readlink` of the result, cached per handle
//! (the cache is dropped whenever a directory is renamed or deleted).
//!
//! The reader thread does the parsing, the path resolution, the prefix
//! filter and the process lookup, and hands [`Change`]s to the worker
//! through a bounded channel (full: counted in `dropped.file`); it never
//! waits for the worker or the hasher. Kernel queue overflows
//! (`FAN_Q_OVERFLOW`) are counted in `watcher_overflows`.

use std::collections::HashMap;
use std::ffi::{CString, OsStr};
use std::io;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};
use std::sync::atomic::Ordering::Relaxed;
use std::sync::mpsc::{SyncSender, TrySendError};
use std::sync::Arc;

use tokio_util::sync::CancellationToken;

use super::actor::Actors;
use super::prefix::{anchor_dir, Prefixes};
use super::worker::{Change, What};
use edr_model::event::{EventType, Timestamp};
use edr_pipeline::Counters;

const METADATA_LEN: usize = 24;
const METADATA_VERSION: u8 = 3;
/// Directory paths cached by handle; past this the cache starts over.
const MAX_DIRS: usize = 4096;
/// How often the reader looks at the cancellation token.
const POLL_MS: libc::c_int = 100;
/// Events per read: the kernel fills as many as fit.
const READ_BUF: usize = 64 * 1024;

/// The kernel's events, as the watch needs them. Renames come as one
/// `FAN_RENAME` (5.17+) with both names, else as unpaired moves.
const BASE_MASK: u64 = libc::FAN_CREATE
    | libc::FAN_DELETE
    | libc::FAN_CLOSE_WRITE
    | libc::FAN_ATTRIB
    | libc::FAN_ONDIR;

/// Why fanotify cannot be used; the text is what status shows.
#[derive(Debug, thiserror::Error)]
pub(super) enum Refused {
    #[error("fanotify_init: not permitted (needs root or CAP_SYS_ADMIN)")]
    NotPermitted,
    #[error("fanotify_init: this kernel has no fanotify (ENOSYS)")]
    NoFanotify,
    #[error("fanotify_init: FAN_REPORT_DFID_NAME is not supported (needs Linux 5.9+)")]
    TooOld,
    #[error("fanotify_init: {0}")]
    Other(io::Error),
    #[error("fanotify_mark: filesystem-wide marks not permitted (needs root or CAP_SYS_ADMIN)")]
    MarkNotPermitted,
    #[error("no watch path is on a filesystem fanotify can mark")]
    NothingMarked,
}

/// A notification group with its marks, ready to read.
pub(super) struct Fanotify {
    fd: OwnedFd,
    /// A descriptor on each marked filesystem, by fsid, for
    /// `open_by_handle_at`.
    mounts: HashMap<[i32; 2], OwnedFd>,
    /// The filesystems marked, for the coverage note.
    pub(super) filesystems: usize,
    /// Renames arrive whole (`FAN_RENAME`).
    pub(super) whole_renames: bool,
}

/// A watch path that could not be covered, with the reason.
pub(super) struct Unmarked {
    pub(super) path: PathBuf,
    pub(super) reason: String,
}

impl Fanotify {
    /// Creates the group and marks the filesystems of `prefixes`.
    pub(super) fn open(prefixes: &Prefixes) -> Result<(Fanotify, Vec<Unmarked>), Refused> {
        let flags = libc::FAN_CLASS_NOTIF
            | libc::FAN_CLOEXEC
            | libc::FAN_NONBLOCK
            | libc::FAN_REPORT_DFID_NAME
            | libc::FAN_REPORT_FID;
        let event_flags = (libc::O_RDONLY | libc::O_LARGEFILE | libc::O_CLOEXEC) as libc::c_uint;
        // SAFETY: plain syscall; the result is checked.
        let raw = unsafe { libc::fanotify_init(flags, event_flags) };
        if raw < 0 {
            let e = io::Error::last_os_error();
            return Err(match e.raw_os_error() {
                Some(libc::EPERM) => Refused::NotPermitted,
                Some(libc::ENOSYS) => Refused::NoFanotify,
                Some(libc::EINVAL) => Refused::TooOld,
                _ => Refused::Other(e),
            });
        }
        // SAFETY: `raw` is a descriptor we own from here on.
        let fd = unsafe { OwnedFd::from_raw_fd(raw) };
        let mut fan = Fanotify {
            fd,
            mounts: HashMap::new(),
            filesystems: 0,
            whole_renames: true,
        };
        let mut unmarked = Vec::new();
        let mut refused = false;
        for path in prefixes.paths() {
            if let Err((reason, eperm)) = fan.mark(path) {
                refused |= eperm;
                unmarked.push(Unmarked {
                    path: path.clone(),
                    reason,
                });
            }
        }
        if fan.mounts.is_empty() {
            // Since 5.13 anyone may create a group, but only
            // CAP_SYS_ADMIN may mark a whole filesystem.
            return Err(if refused {
                Refused::MarkNotPermitted
            } else {
                Refused::NothingMarked
            });
        }
        Ok((fan, unmarked))
    }

    /// Marks the filesystem holding `path` (once per filesystem). The
    /// error says why, and whether the kernel refused permission.
    fn mark(&mut self, path: &Path) -> Result<(), (String, bool)> {
        let Some(dir) = anchor_dir(path) else {
            return Err(("does not exist, nor does any parent".into(), false));
        };
        let c_dir = CString::new(dir.as_os_str().as_bytes())
            .map_err(|_| ("path holds a NUL byte".to_string(), false))?;
        // SAFETY: a zeroed statfs is a valid out-parameter.
        let mut st: libc::statfs = unsafe { std::mem::zeroed() };
        // SAFETY: valid C string and out-pointer.
        if unsafe { libc::statfs(c_dir.as_ptr(), &mut st) } != 0 {
            let e = io::Error::last_os_error();
            return Err((format!("cannot read {}: {e}", dir.display()), false));
        }
        // SAFETY: fsid_t is two ints in every libc layout.
        let fsid: [i32; 2] = unsafe { std::mem::transmute(st.f_fsid) };
        if self.mounts.contains_key(&fsid) {
            return Ok(());
        }
        let mut mask = BASE_MASK | libc::FAN_RENAME;
        let mut rc = self.fanotify_mark(mask, &c_dir);
        if rc.as_ref().err().and_then(io::Error::raw_os_error) == Some(libc::EINVAL) {
            // Before 5.17: moves come as two halves without a cookie.
            mask = BASE_MASK | libc::FAN_MOVED_FROM | libc::FAN_MOVED_TO;
            rc = self.fanotify_mark(mask, &c_dir);
            if rc.is_ok() {
                self.whole_renames = false;
            }
        }
        rc.map_err(|e| match e.raw_os_error() {
            Some(libc::ENODEV) | Some(libc::EOPNOTSUPP) | Some(libc::EXDEV) => (
                format!(
                    "its filesystem cannot be watched by fanotify ({e}); \
                     `collectors.file_monitor.source: inotify` can watch it"
                ),
                false,
            ),
            Some(libc::EPERM) => (format!("fanotify_mark {}: {e}", dir.display()), true),
            _ => (format!("fanotify_mark {}: {e}", dir.display()), false),
        })?;
        // SAFETY: valid C string; the result is checked.
        let mfd = unsafe {
            libc::open(
                c_dir.as_ptr(),
                libc::O_RDONLY | libc::O_DIRECTORY | libc::O_CLOEXEC,
            )
        };
        if mfd < 0 {
            let e = io::Error::last_os_error();
            return Err((format!("cannot open {}: {e}", dir.display()), false));
        }
        // SAFETY: a descriptor we own from here on.
        self.mounts
            .insert(fsid, unsafe { OwnedFd::from_raw_fd(mfd) });
        self.filesystems += 1;
        Ok(())
    }

    fn fanotify_mark(&self, mask: u64, path: &CString) -> io::Result<()> {
        // SAFETY: valid descriptor and C string; the result is checked.
        let rc = unsafe {
            libc::fanotify_mark(
                self.fd.as_raw_fd(),
                libc::FAN_MARK_ADD | libc::FAN_MARK_FILESYSTEM,
                mask,
                libc::AT_FDCWD,
                path.as_ptr(),
            )
        };
        if rc == 0 {
            Ok(())
        } else {
            Err(io::Error::last_os_error())
        }
    }
}

/// One record of file identity that follows an event's metadata.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) struct FidRecord<'a> {
    pub(super) info_type: u8,
    pub(super) fsid: [i32; 2],
    pub(super) handle_type: i32,
    pub(super) handle: &'a [u8],
    /// The entry's name, for the `*_DFID_NAME` types.
    pub(super) name: Option<&'a [u8]>,
}

/// One event as read from the group.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) struct RawEvent<'a> {
    pub(super) mask: u64,
    pub(super) pid: i32,
    pub(super) records: Vec<FidRecord<'a>>,
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub(super) enum ParseError {
    #[error("event truncated at byte {0}")]
    Truncated(usize),
    #[error("event metadata version {0}, expected {METADATA_VERSION}")]
    Version(u8),
    #[error("info record of length {len} at byte {at} does not fit its event")]
    BadRecord { at: usize, len: usize },
}

fn u16_at(b: &[u8], at: usize) -> Option<u16> {
    Some(u16::from_ne_bytes(b.get(at..at + 2)?.try_into().ok()?))
}

fn u32_at(b: &[u8], at: usize) -> Option<u32> {
    Some(u32::from_ne_bytes(b.get(at..at + 4)?.try_into().ok()?))
}

fn i32_at(b: &[u8], at: usize) -> Option<i32> {
    Some(i32::from_ne_bytes(b.get(at..at + 4)?.try_into().ok()?))
}

fn u64_at(b: &[u8], at: usize) -> Option<u64> {
    Some(u64::from_ne_bytes(b.get(at..at + 8)?.try_into().ok()?))
}

/// Parses what one `read` returned: whole events, each with its info
/// records. Stops at the first malformed event (the rest of the buffer
/// cannot be framed).
pub(super) fn parse(buf: &[u8]) -> (Vec<RawEvent<'_>>, Option<ParseError>) {
    let mut out = Vec::new();
    let mut at = 0;
    while at < buf.len() {
        match parse_one(buf, at) {
            Ok((event, len)) => {
                out.push(event);
                at += len;
            }
            Err(e) => return (out, Some(e)),
        }
    }
    (out, None)
}

fn parse_one(buf: &[u8], at: usize) -> Result<(RawEvent<'_>, usize), ParseError> {
    let truncated = ParseError::Truncated(at);
    let event_len = u32_at(buf, at).ok_or_else(|| truncated.clone())? as usize;
    let vers = *buf.get(at + 4).ok_or_else(|| truncated.clone())?;
    if vers != METADATA_VERSION {
        return Err(ParseError::Version(vers));
    }
    let meta_len = u16_at(buf, at + 6).ok_or_else(|| truncated.clone())? as usize;
    if event_len < METADATA_LEN || meta_len < METADATA_LEN || meta_len > event_len {
        return Err(truncated);
    }
    let event = buf
        .get(at..at + event_len)
        .ok_or_else(|| truncated.clone())?;
    let mask = u64_at(event, 8).ok_or_else(|| truncated.clone())?;
    let pid = i32_at(event, 20).ok_or(truncated)?;
    let mut records = Vec::new();
    let mut r = meta_len;
    while r < event_len {
        let bad = |len| ParseError::BadRecord { at: at + r, len };
        let info_type = *event.get(r).ok_or_else(|| bad(0))?;
        let len = u16_at(event, r + 2).ok_or_else(|| bad(0))? as usize;
        if len < 4 {
            return Err(bad(len));
        }
        let rec = event.get(r..r + len).ok_or_else(|| bad(len))?;
        if let Some(fid) = parse_fid(info_type, rec) {
            records.push(fid);
        } else if is_fid_type(info_type) {
            return Err(bad(len));
        }
        r += len;
    }
    Ok((RawEvent { mask, pid, records }, event_len))
}

fn is_fid_type(t: u8) -> bool {
    matches!(
        t,
        libc::FAN_EVENT_INFO_TYPE_FID
            | libc::FAN_EVENT_INFO_TYPE_DFID
            | libc::FAN_EVENT_INFO_TYPE_DFID_NAME
            | libc::FAN_EVENT_INFO_TYPE_OLD_DFID_NAME
            | libc::FAN_EVENT_INFO_TYPE_NEW_DFID_NAME
    )
}

/// header (4) | fsid (8) | handle_bytes (4) | handle_type (4) | handle |
/// NUL-terminated name (the `*_NAME` types) | padding.
fn parse_fid(info_type: u8, rec: &[u8]) -> Option<FidRecord<'_>> {
    if !is_fid_type(info_type) {
        return None;
    }
    let fsid = [i32_at(rec, 4)?, i32_at(rec, 8)?];
    let bytes = u32_at(rec, 12)? as usize;
    let handle_type = i32_at(rec, 16)?;
    let handle = rec.get(20..20usize.checked_add(bytes)?)?;
    let with_name = matches!(
        info_type,
        libc::FAN_EVENT_INFO_TYPE_DFID_NAME
            | libc::FAN_EVENT_INFO_TYPE_OLD_DFID_NAME
            | libc::FAN_EVENT_INFO_TYPE_NEW_DFID_NAME
    );
    let name = if with_name {
        let tail = rec.get(20 + bytes..)?;
        let end = tail.iter().position(|b| *b == 0)?;
        Some(&tail[..end])
    } else {
        None
    };
    Some(FidRecord {
        info_type,
        fsid,
        handle_type,
        handle,
        name,
    })
}

/// What one event means for the watch, before paths are resolved.
#[derive(Debug, PartialEq, Eq)]
pub(super) enum Meaning {
    Overflow,
    /// Changes of one entry, in the order they are reported.
    Entry(Vec<What>),
    Rename,
}

/// The kernel merges events on one object into one mask; each bit is a
/// change of its own. A create implies its first write, so a merged
/// `CREATE | CLOSE_WRITE` is one creation (the hash covers the content).
pub(super) fn meaning(mask: u64) -> Meaning {
    if mask & libc::FAN_Q_OVERFLOW != 0 {
        return Meaning::Overflow;
    }
    if mask & libc::FAN_RENAME != 0 {
        return Meaning::Rename;
    }
    let mut whats = Vec::new();
    if mask & libc::FAN_MOVED_TO != 0 {
        whats.push(What::RenamedIn);
    }
    if mask & libc::FAN_CREATE != 0 {
        whats.push(What::Created);
    } else if mask & libc::FAN_CLOSE_WRITE != 0 {
        whats.push(What::Modified { data: true });
    } else if mask & libc::FAN_ATTRIB != 0 {
        whats.push(What::Modified { data: false });
    }
    if mask & libc::FAN_MOVED_FROM != 0 {
        whats.push(What::RenamedOut);
    }
    if mask & libc::FAN_DELETE != 0 {
        whats.push(What::Deleted);
    }
    Meaning::Entry(whats)
}

/// A directory's identity: handle bytes, handle type, fsid.
type DirKey = (Box<[u8]>, i32, [i32; 2]);

/// Turns file handles into paths.
struct Resolver {
    mounts: HashMap<[i32; 2], OwnedFd>,
    dirs: HashMap<DirKey, PathBuf>,
    /// Reused `struct file_handle` buffer (u32-aligned).
    handle_buf: Vec<u32>,
}

impl Resolver {
    /// The path of the object `rec` names: its directory's path joined
    /// with the entry's name (`.` is the directory itself). None if the
    /// directory is gone or on a filesystem we did not mark.
    fn path(&mut self, rec: &FidRecord<'_>) -> Option<PathBuf> {
        let dir = self.dir_path(rec)?;
        match rec.name {
            None | Some(b".") => Some(dir),
            Some(name) => Some(dir.join(OsStr::from_bytes(name))),
        }
    }

    fn dir_path(&mut self, rec: &FidRecord<'_>) -> Option<PathBuf> {
        let key = (Box::<[u8]>::from(rec.handle), rec.handle_type, rec.fsid);
        if let Some(p) = self.dirs.get(&key) {
            return Some(p.clone());
        }
        let mount = self.mounts.get(&rec.fsid)?.as_raw_fd();
        // struct file_handle { u32 handle_bytes; i32 handle_type; u8 f_handle[]; }
        let words = 2 + rec.handle.len().div_ceil(4);
        self.handle_buf.clear();
        self.handle_buf.resize(words, 0);
        self.handle_buf[0] = rec.handle.len() as u32;
        self.handle_buf[1] = rec.handle_type as u32;
        // SAFETY: the buffer holds 8 + handle.len() bytes; the byte view
        // covers only the words just sized.
        let bytes = unsafe {
            std::slice::from_raw_parts_mut(self.handle_buf.as_mut_ptr().cast::<u8>(), words * 4)
        };
        bytes[8..8 + rec.handle.len()].copy_from_slice(rec.handle);
        // SAFETY: the buffer is a valid, aligned file_handle; O_PATH opens
        // nothing for reading.
        let fd = unsafe {
            libc::open_by_handle_at(
                mount,
                self.handle_buf.as_mut_ptr().cast::<libc::file_handle>(),
                libc::O_PATH | libc::O_CLOEXEC,
            )
        };
        if fd < 0 {
            return None;
        }
        // SAFETY: a descriptor we own, closed at the end of this scope.
        let fd = unsafe { OwnedFd::from_raw_fd(fd) };
        let path = std::fs::read_link(format!("/proc/self/fd/{}", fd.as_raw_fd())).ok()?;
        if path.as_os_str().as_bytes().ends_with(b" (deleted)") || !path.is_absolute() {
            return None;
        }
        if self.dirs.len() >= MAX_DIRS {
            self.dirs.clear();
        }
        self.dirs.insert(key, path.clone());
        Some(path)
    }
}

/// Reads the group until cancelled, sending the changes under `prefixes`
/// to the worker.
pub(super) fn read_loop(
    fan: Fanotify,
    prefixes: Prefixes,
    host: &str,
    tx: SyncSender<Box<Change>>,
    counters: Arc<Counters>,
    stop: &CancellationToken,
) {
    let Fanotify { fd, mounts, .. } = fan;
    let mut resolver = Resolver {
        mounts,
        dirs: HashMap::new(),
        handle_buf: Vec::new(),
    };
    let mut actors = Actors::new(host);
    // u64 words: the kernel writes 8-byte-aligned metadata.
    let mut buf = vec![0u64; READ_BUF / 8];
    let mut warned_parse = false;
    while !stop.is_cancelled() {
        let mut pfd = libc::pollfd {
            fd: fd.as_raw_fd(),
            events: libc::POLLIN,
            revents: 0,
        };
        // SAFETY: one valid pollfd.
        let ready = unsafe { libc::poll(&mut pfd, 1, POLL_MS) };
        if ready <= 0 {
            continue;
        }
        // SAFETY: the buffer is valid for its length in bytes.
        let n = unsafe { libc::read(fd.as_raw_fd(), buf.as_mut_ptr().cast(), READ_BUF) };
        if n <= 0 {
            let e = io::Error::last_os_error();
            if n < 0 && !matches!(e.raw_os_error(), Some(libc::EAGAIN) | Some(libc::EINTR)) {
                tracing::warn!("fanotify read failed: {e}");
                std::thread::sleep(std::time::Duration::from_millis(POLL_MS as u64));
            }
            continue;
        }
        let at = Timestamp::now();
        // SAFETY: the kernel wrote `n` bytes into the buffer.
        let bytes = unsafe { std::slice::from_raw_parts(buf.as_ptr().cast::<u8>(), n as usize) };
        let (events, err) = parse(bytes);
        if let Some(e) = err {
            counters.dropped.add(EventType::File, 1);
            if !warned_parse {
                warned_parse = true;
                tracing::warn!("fanotify: unreadable event, rest of the read skipped: {e}");
            }
        }
        for ev in events {
            handle(
                &ev,
                at,
                &prefixes,
                &mut resolver,
                &mut actors,
                &tx,
                &counters,
            );
        }
    }
}

#[allow(clippy::too_many_arguments)]
fn handle(
    ev: &RawEvent<'_>,
    at: Timestamp,
    prefixes: &Prefixes,
    resolver: &mut Resolver,
    actors: &mut Actors,
    tx: &SyncSender<Box<Change>>,
    counters: &Counters,
) {
    let meaning = meaning(ev.mask);
    if meaning == Meaning::Overflow {
        counters.watcher_overflows.fetch_add(1, Relaxed);
        tracing::warn!("fanotify queue overflowed: file events were lost");
        return;
    }
    let dir_changed = ev.mask & libc::FAN_ONDIR != 0
        && ev.mask & (libc::FAN_RENAME | libc::FAN_MOVED_FROM | libc::FAN_DELETE) != 0;
    let record = |t: u8| ev.records.iter().find(|r| r.info_type == t);
    let mut changes: Vec<Change> = Vec::with_capacity(1);
    match meaning {
        Meaning::Overflow => {}
        Meaning::Rename => {
            let old =
                record(libc::FAN_EVENT_INFO_TYPE_OLD_DFID_NAME).and_then(|r| resolver.path(r));
            let new =
                record(libc::FAN_EVENT_INFO_TYPE_NEW_DFID_NAME).and_then(|r| resolver.path(r));
            let old = old.filter(|p| prefixes.covers(p));
            let new = new.filter(|p| prefixes.covers(p));
            let (what, path, original) = match (old, new) {
                (Some(o), Some(n)) => (What::Renamed, n, Some(o)),
                (None, Some(n)) => (What::RenamedIn, n, None),
                (Some(o), None) => (What::RenamedOut, o, None),
                (None, None) => (What::Renamed, PathBuf::new(), None),
            };
            if !path.as_os_str().is_empty() {
                changes.push(Change {
                    at,
                    what,
                    path,
                    original,
                    actor: None,
                });
            }
        }
        Meaning::Entry(whats) => {
            let path = record(libc::FAN_EVENT_INFO_TYPE_DFID_NAME)
                .or_else(|| record(libc::FAN_EVENT_INFO_TYPE_FID))
                .and_then(|r| resolver.path(r))
                .filter(|p| prefixes.covers(p));
            if let Some(path) = path {
                for what in whats {
                    changes.push(Change {
                        at,
                        what,
                        path: path.clone(),
                        original: None,
                        actor: None,
                    });
                }
            }
        }
    }
    if dir_changed {
        // Paths below a moved or deleted directory are no longer valid.
        resolver.dirs.clear();
    }
    if changes.is_empty() {
        return;
    }
    let pid = u32::try_from(ev.pid).unwrap_or(0);
    let (process, partial) = actors.describe(pid);
    if partial {
        counters.process_partial.fetch_add(1, Relaxed);
    }
    let n = changes.len();
    let mut process = Some(process);
    for (i, mut change) in changes.into_iter().enumerate() {
        change.actor = if i + 1 == n {
            process.take()
        } else {
            process.clone()
        };
        if let Err(TrySendError::Full(_)) = tx.try_send(Box::new(change)) {
            counters.dropped.add(EventType::File, 1);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// An event as the kernel lays it out: metadata, then records.
    fn event(mask: u64, pid: i32, records: &[Vec<u8>]) -> Vec<u8> {
        let body: usize = records.iter().map(Vec::len).sum();
        let mut b = Vec::new();
        b.extend_from_slice(&((METADATA_LEN + body) as u32).to_ne_bytes());
        b.push(METADATA_VERSION);
        b.push(0);
        b.extend_from_slice(&(METADATA_LEN as u16).to_ne_bytes());
        b.extend_from_slice(&mask.to_ne_bytes());
        b.extend_from_slice(&libc::FAN_NOFD.to_ne_bytes());
        b.extend_from_slice(&pid.to_ne_bytes());
        for r in records {
            b.extend_from_slice(r);
        }
        b
    }

    fn record(info_type: u8, handle: &[u8], name: Option<&[u8]>) -> Vec<u8> {
        let mut r = vec![info_type, 0, 0, 0];
        r.extend_from_slice(&7i32.to_ne_bytes());
        r.extend_from_slice(&9i32.to_ne_bytes());
        r.extend_from_slice(&(handle.len() as u32).to_ne_bytes());
        r.extend_from_slice(&1i32.to_ne_bytes());
        r.extend_from_slice(handle);
        if let Some(n) = name {
            r.extend_from_slice(n);
            r.push(0);
        }
        while r.len() % 4 != 0 {
            r.push(0);
        }
        let len = r.len() as u16;
        r[2..4].copy_from_slice(&len.to_ne_bytes());
        r
    }

    #[test]
    fn parses_events_with_name_and_fid_records() {
        let dfid = record(
            libc::FAN_EVENT_INFO_TYPE_DFID_NAME,
            &[1, 2, 3, 4, 5, 6, 7, 8],
            Some(b"job"),
        );
        let fid = record(libc::FAN_EVENT_INFO_TYPE_FID, &[9; 8], None);
        let mut buf = event(libc::FAN_CREATE, 42, &[dfid, fid]);
        buf.extend(event(libc::FAN_Q_OVERFLOW, -1, &[]));
        let (events, err) = parse(&buf);
        assert_eq!(err, None);
        assert_eq!(events.len(), 2);
        let e = &events[0];
        assert_eq!((e.mask, e.pid), (libc::FAN_CREATE, 42));
        assert_eq!(e.records.len(), 2);
        let r = &e.records[0];
        assert_eq!(r.info_type, libc::FAN_EVENT_INFO_TYPE_DFID_NAME);
        assert_eq!(r.fsid, [7, 9]);
        assert_eq!(r.handle_type, 1);
        assert_eq!(r.handle, &[1, 2, 3, 4, 5, 6, 7, 8]);
        assert_eq!(r.name, Some(&b"job"[..]));
        assert_eq!(e.records[1].name, None);
        assert_eq!(meaning(events[1].mask), Meaning::Overflow);
    }

    #[test]
    fn renames_carry_both_names() {
        let old = record(
            libc::FAN_EVENT_INFO_TYPE_OLD_DFID_NAME,
            &[1; 8],
            Some(b"a.tmp"),
        );
        let new = record(
            libc::FAN_EVENT_INFO_TYPE_NEW_DFID_NAME,
            &[2; 8],
            Some(b"evil.service"),
        );
        let buf = event(libc::FAN_RENAME, 5, &[old, new]);
        let (events, err) = parse(&buf);
        assert_eq!(err, None);
        let names: Vec<_> = events[0].records.iter().map(|r| r.name).collect();
        assert_eq!(names, [Some(&b"a.tmp"[..]), Some(&b"evil.service"[..])]);
        assert_eq!(meaning(events[0].mask), Meaning::Rename);
    }

    #[test]
    fn unknown_records_are_skipped_and_bad_ones_stop_the_read() {
        // A pidfd record (type 4) is not ours to parse.
        let mut pidfd = vec![libc::FAN_EVENT_INFO_TYPE_PIDFD, 0, 8, 0];
        pidfd.extend_from_slice(&3i32.to_ne_bytes());
        let dfid = record(libc::FAN_EVENT_INFO_TYPE_DFID_NAME, &[1; 8], Some(b"x"));
        let buf = event(libc::FAN_DELETE, 1, &[pidfd, dfid]);
        let (events, err) = parse(&buf);
        assert_eq!(err, None);
        assert_eq!(events[0].records.len(), 1);

        // A record claiming more bytes than its event has.
        let mut bad = record(libc::FAN_EVENT_INFO_TYPE_DFID_NAME, &[1; 8], Some(b"x"));
        bad[2..4].copy_from_slice(&200u16.to_ne_bytes());
        let good = event(libc::FAN_CREATE, 1, &[]);
        let mut buf = good.clone();
        buf.extend(event(libc::FAN_CREATE, 1, &[bad]));
        let (events, err) = parse(&buf);
        assert_eq!(events.len(), 1);
        assert!(matches!(err, Some(ParseError::BadRecord { .. })), "{err:?}");

        // A handle longer than its record; a name without its NUL.
        let mut long = record(libc::FAN_EVENT_INFO_TYPE_FID, &[1; 8], None);
        long[12..16].copy_from_slice(&64u32.to_ne_bytes());
        assert!(parse(&event(libc::FAN_ATTRIB, 1, &[long])).1.is_some());
        let mut unterminated = record(libc::FAN_EVENT_INFO_TYPE_DFID_NAME, &[1; 8], Some(b"abc"));
        let n = unterminated.len();
        unterminated[n - 4..].copy_from_slice(b"abcd");
        assert!(parse(&event(libc::FAN_ATTRIB, 1, &[unterminated]))
            .1
            .is_some());
    }

    #[test]
    fn truncated_reads_and_other_versions_are_errors_not_panics() {
        let buf = event(
            libc::FAN_CREATE,
            1,
            &[record(libc::FAN_EVENT_INFO_TYPE_FID, &[1; 8], None)],
        );
        for cut in 1..buf.len() {
            let (events, err) = parse(&buf[..cut]);
            assert!(events.is_empty() && err.is_some(), "cut at {cut}");
        }
        let mut v2 = buf.clone();
        v2[4] = 2;
        assert_eq!(parse(&v2).1, Some(ParseError::Version(2)));
        let mut short = buf;
        short[0..4].copy_from_slice(&8u32.to_ne_bytes());
        assert!(parse(&short).1.is_some());
    }

    #[test]
    fn merged_masks_become_ordered_changes() {
        use libc::*;
        assert_eq!(
            meaning(FAN_CREATE | FAN_CLOSE_WRITE | FAN_ATTRIB),
            Meaning::Entry(vec![What::Created])
        );
        assert_eq!(
            meaning(FAN_CLOSE_WRITE | FAN_ATTRIB),
            Meaning::Entry(vec![What::Modified { data: true }])
        );
        assert_eq!(
            meaning(FAN_CREATE | FAN_DELETE),
            Meaning::Entry(vec![What::Created, What::Deleted])
        );
        assert_eq!(
            meaning(FAN_MOVED_FROM | FAN_ONDIR),
            Meaning::Entry(vec![What::RenamedOut])
        );
    }
}
