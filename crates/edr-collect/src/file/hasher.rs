//! SHA-256 of created and modified files, on its own thread.
//!
//! The worker hands finished events to this thread through a small bounded
//! queue; the hash is filled in and the event sent on. The file is read when
//! the job runs, not when the event happened, so the hash describes the
//! content at hash time (and `file.size` / `file.mtime` are updated to match
//! it). Events for a path that already has a job waiting join that job: one
//! read serves them all, and it happens after every one of their writes.

use std::collections::VecDeque;
use std::ffi::{CString, OsStr};
use std::fs::File;
use std::io::{self, Read};
use std::os::unix::ffi::OsStrExt;
use std::os::unix::io::{AsRawFd, FromRawFd};
use std::path::{Component, Path, PathBuf};
use std::sync::atomic::Ordering::Relaxed;
use std::sync::{Arc, Condvar, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use sha2::{Digest, Sha256};
use tokio_util::sync::CancellationToken;

use edr_model::event::{EdrExt, Event, Hash, Timestamp};
use edr_pipeline::{Counters, EventTx};

/// Events (not jobs) that may wait for a hash. Bounds memory to a few
/// hundred events however fast files change.
pub(super) const QUEUE_EVENTS: usize = 256;
const READ_CHUNK: usize = 64 * 1024;
/// How often an idle hasher looks at the cancellation token.
const IDLE_WAIT: Duration = Duration::from_millis(50);
const MIB: u64 = 1024 * 1024;

/// Why an event carries no hash although hashing is on. The `reason` is
/// what lands in `edr.hash_skipped`.
#[derive(Debug, thiserror::Error)]
pub(super) enum Skip {
    #[error("larger than the hashing size cap")]
    TooLarge,
    #[error("file vanished before it could be hashed")]
    Vanished,
    #[error("file cannot be read: {0}")]
    Unreadable(#[source] io::Error),
    #[error("not a regular file")]
    NotRegular,
    #[error("over the hashing byte-rate cap")]
    RateLimited,
    #[error("hash queue full")]
    QueueFull,
    #[error("collector stopping")]
    Shutdown,
}

impl Skip {
    pub(super) fn reason(&self) -> &'static str {
        match self {
            Skip::TooLarge => "too_large",
            Skip::Vanished => "vanished",
            Skip::Unreadable(_) => "unreadable",
            Skip::NotRegular => "not_regular",
            Skip::RateLimited => "rate_limited",
            Skip::QueueFull => "queue_full",
            Skip::Shutdown => "shutdown",
        }
    }

    /// Classifies a failed `stat`/`open` of a path about to be hashed.
    pub(super) fn from_io(e: io::Error) -> Skip {
        match e.raw_os_error() {
            // O_NOFOLLOW on a symlink.
            Some(libc::ELOOP) => Skip::NotRegular,
            // A socket (or a device without its driver).
            Some(libc::ENXIO) | Some(libc::ENODEV) => Skip::NotRegular,
            Some(libc::ENOENT) | Some(libc::ENOTDIR) => Skip::Vanished,
            _ => Skip::Unreadable(e),
        }
    }
}

/// Marks an event as sent without a hash, and why.
pub(super) fn mark_skipped(event: &mut Event, skip: &Skip) {
    event
        .edr
        .get_or_insert_with(|| Box::new(EdrExt::default()))
        .hash_skipped = Some(skip.reason());
}

struct Job {
    path: PathBuf,
    events: Vec<Event>,
}

#[derive(Default)]
struct Pending {
    jobs: VecDeque<Job>,
    events: usize,
}

/// The bounded queue between the worker and the hasher thread.
#[derive(Default)]
pub(super) struct HashQueue {
    pending: Mutex<Pending>,
    ready: Condvar,
}

impl HashQueue {
    /// Queues an event for hashing, joining a waiting job for the same path.
    /// Gives the event back when the queue is full.
    pub(super) fn submit(&self, path: &Path, event: Event) -> Result<(), Box<Event>> {
        let mut pending = self.lock();
        if pending.events >= QUEUE_EVENTS {
            return Err(Box::new(event));
        }
        pending.events += 1;
        if let Some(job) = pending.jobs.iter_mut().find(|j| j.path == path) {
            job.events.push(event);
            return Ok(());
        }
        pending.jobs.push_back(Job {
            path: path.to_path_buf(),
            events: vec![event],
        });
        drop(pending);
        self.ready.notify_one();
        Ok(())
    }

    fn take(&self, wait: Duration) -> Option<Job> {
        let mut pending = self.lock();
        if pending.jobs.is_empty() {
            pending = match self.ready.wait_timeout(pending, wait) {
                Ok((guard, _)) => guard,
                Err(poisoned) => poisoned.into_inner().0,
            };
        }
        let job = pending.jobs.pop_front()?;
        pending.events -= job.events.len();
        Some(job)
    }

    fn drain(&self) -> Vec<Job> {
        let mut pending = self.lock();
        pending.events = 0;
        pending.jobs.drain(..).collect()
    }

    /// A poisoned lock only means a thread panicked mid-push; the queue
    /// itself is still consistent enough to drain.
    fn lock(&self) -> MutexGuard<'_, Pending> {
        self.pending
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }
}

/// What a hash job found.
struct Hashed {
    sha256: String,
    size: u64,
    mtime: Option<Timestamp>,
}

/// The hasher thread: takes jobs until cancelled, then sends whatever is
/// still queued without a hash so no event is lost on shutdown.
pub(super) fn run(
    queue: Arc<HashQueue>,
    roots: Vec<PathBuf>,
    max_file_size_mb: u64,
    rate_mb_per_sec: u64,
    tx: EventTx,
    counters: Arc<Counters>,
    stop: CancellationToken,
) {
    let mut hasher = Hasher::new(roots, max_file_size_mb, rate_mb_per_sec, Instant::now());
    while !stop.is_cancelled() {
        let Some(job) = queue.take(IDLE_WAIT) else {
            continue;
        };
        let outcome = hasher.hash(&job.path, &stop);
        deliver(job.events, &outcome, &tx, &counters);
    }
    for job in queue.drain() {
        deliver(job.events, &Err(Skip::Shutdown), &tx, &counters);
    }
}

fn deliver(events: Vec<Event>, outcome: &Result<Hashed, Skip>, tx: &EventTx, counters: &Counters) {
    for mut event in events {
        match outcome {
            Ok(hashed) => {
                if let Some(file) = event.file.as_deref_mut() {
                    file.hash = Some(Hash {
                        sha256: hashed.sha256.clone(),
                    });
                    file.size = Some(hashed.size);
                    file.mtime = hashed.mtime.or(file.mtime);
                }
            }
            Err(skip) => {
                tracing::debug!(reason = skip.reason(), "file not hashed: {skip}");
                counters.hash_skipped.fetch_add(1, Relaxed);
                mark_skipped(&mut event, skip);
            }
        }
        tx.send(event);
    }
}

/// Reads and hashes files within a size cap and a byte-rate budget,
/// reusing one read buffer.
struct Hasher {
    /// The watch roots: no symlink below them is followed.
    roots: Vec<PathBuf>,
    max_bytes: u64,
    budget: ByteBudget,
    buf: Vec<u8>,
}

impl Hasher {
    fn new(
        roots: Vec<PathBuf>,
        max_file_size_mb: u64,
        rate_mb_per_sec: u64,
        now: Instant,
    ) -> Hasher {
        Hasher {
            roots,
            max_bytes: max_file_size_mb.saturating_mul(MIB),
            budget: ByteBudget::new(rate_mb_per_sec.max(1).saturating_mul(MIB), now),
            buf: vec![0; READ_CHUNK],
        }
    }

    fn hash(&mut self, path: &Path, stop: &CancellationToken) -> Result<Hashed, Skip> {
        // Checked before opening: opening a device or FIFO can block or
        // have side effects, and a symlink must not be followed.
        let meta = std::fs::symlink_metadata(path).map_err(Skip::from_io)?;
        if !meta.file_type().is_file() {
            return Err(Skip::NotRegular);
        }
        if meta.len() > self.max_bytes {
            return Err(Skip::TooLarge);
        }
        let file = open_beneath(&self.roots, path)?;
        // The path may have been swapped for something else since the
        // check above; what counts is what the descriptor refers to.
        let meta = file.metadata().map_err(Skip::Unreadable)?;
        if !meta.file_type().is_file() {
            return Err(Skip::NotRegular);
        }
        if meta.len() > self.max_bytes {
            return Err(Skip::TooLarge);
        }
        if !self.budget.try_take(meta.len(), Instant::now()) {
            return Err(Skip::RateLimited);
        }
        let (sha256, size) = self.digest(file, stop)?;
        // Bytes appended while we read were not paid for up front.
        self.budget.charge(size.saturating_sub(meta.len()));
        Ok(Hashed {
            sha256,
            size,
            mtime: meta.modified().ok().map(Timestamp::from),
        })
    }

    fn digest(&mut self, mut file: File, stop: &CancellationToken) -> Result<(String, u64), Skip> {
        let mut sha = Sha256::new();
        let mut total = 0u64;
        loop {
            if stop.is_cancelled() {
                return Err(Skip::Shutdown);
            }
            let n = match file.read(&mut self.buf) {
                Ok(0) => break,
                Ok(n) => n,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(e) => return Err(Skip::Unreadable(e)),
            };
            total += n as u64;
            if total > self.max_bytes {
                return Err(Skip::TooLarge);
            }
            sha.update(&self.buf[..n]);
        }
        Ok((hex(&sha.finalize()), total))
    }
}

/// Opens `path` for reading without following a symlink anywhere below the
/// watch root that holds it: a directory swapped for a link between the
/// event and the hash must not lead the hasher out of the watched tree.
/// Never blocks (a FIFO swapped in after the type check would otherwise
/// wait for a writer).
fn open_beneath(roots: &[PathBuf], path: &Path) -> Result<File, Skip> {
    const LAST: libc::c_int = libc::O_NOFOLLOW | libc::O_NONBLOCK;
    let beneath = roots
        .iter()
        .filter_map(|r| Some((r, path.strip_prefix(r).ok()?)))
        .max_by_key(|(r, _)| r.as_os_str().len());
    let Some((root, rel)) = beneath else {
        // notify reports only paths under a root; this is a safe default.
        return open_at(None, path.as_os_str(), LAST).map_err(Skip::from_io);
    };
    let mut parts = rel.components();
    let Some(last) = parts.next_back() else {
        // The root itself, a watched file: the configured path is trusted.
        return open_at(None, path.as_os_str(), LAST).map_err(Skip::from_io);
    };
    // The root may itself be a link: it is what the user configured.
    let mut dir = open_at(None, root.as_os_str(), libc::O_DIRECTORY).map_err(Skip::from_io)?;
    for part in parts {
        let Component::Normal(part) = part else {
            return Err(Skip::NotRegular);
        };
        dir = open_at(Some(&dir), part, libc::O_DIRECTORY | libc::O_NOFOLLOW).map_err(|e| {
            match e.raw_os_error() {
                // A link (or a file) where the directory was.
                Some(libc::ELOOP) | Some(libc::ENOTDIR) => Skip::NotRegular,
                _ => Skip::from_io(e),
            }
        })?;
    }
    let Component::Normal(name) = last else {
        return Err(Skip::NotRegular);
    };
    open_at(Some(&dir), name, LAST).map_err(Skip::from_io)
}

/// `openat(2)` read-only, relative to `dir` (or the working directory).
fn open_at(dir: Option<&File>, name: &OsStr, flags: libc::c_int) -> io::Result<File> {
    // Names from the kernel hold no NUL; EINVAL if one ever did.
    let name =
        CString::new(name.as_bytes()).map_err(|_| io::Error::from_raw_os_error(libc::EINVAL))?;
    let dirfd = dir.map_or(libc::AT_FDCWD, |d| d.as_raw_fd());
    // SAFETY: a NUL-terminated name and a directory fd we hold open.
    let fd = unsafe {
        libc::openat(
            dirfd,
            name.as_ptr(),
            flags | libc::O_RDONLY | libc::O_CLOEXEC,
        )
    };
    if fd < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: a new descriptor that nothing else owns.
    Ok(unsafe { File::from_raw_fd(fd) })
}

fn hex(bytes: &[u8]) -> String {
    const DIGITS: &[u8; 16] = b"0123456789abcdef";
    let mut out = String::with_capacity(bytes.len() * 2);
    for b in bytes {
        out.push(char::from(DIGITS[usize::from(b >> 4)]));
        out.push(char::from(DIGITS[usize::from(b & 0x0f)]));
    }
    out
}

/// A token bucket of bytes, holding at most one second of budget.
///
/// A file larger than the whole bucket could never be paid for at once, so
/// a full bucket admits any file and goes into debt; the debt is paid back
/// before the next file, which keeps the average rate at the cap.
struct ByteBudget {
    per_sec: f64,
    tokens: f64,
    last: Instant,
}

impl ByteBudget {
    fn new(bytes_per_sec: u64, now: Instant) -> ByteBudget {
        let per_sec = bytes_per_sec as f64;
        ByteBudget {
            per_sec,
            tokens: per_sec,
            last: now,
        }
    }

    fn try_take(&mut self, bytes: u64, now: Instant) -> bool {
        let elapsed = now.saturating_duration_since(self.last).as_secs_f64();
        self.tokens = (self.tokens + elapsed * self.per_sec).min(self.per_sec);
        self.last = now;
        let bytes = bytes as f64;
        if bytes <= self.tokens || self.tokens >= self.per_sec {
            self.tokens -= bytes;
            true
        } else {
            false
        }
    }

    fn charge(&mut self, bytes: u64) {
        self.tokens -= bytes as f64;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn budget_admits_up_to_the_rate_then_refills() {
        let t0 = Instant::now();
        let mut b = ByteBudget::new(1000, t0);
        assert!(b.try_take(600, t0));
        assert!(b.try_take(400, t0));
        assert!(!b.try_take(1, t0), "empty bucket refuses");
        assert!(b.try_take(500, t0 + Duration::from_millis(500)));
        assert!(!b.try_take(500, t0 + Duration::from_millis(500)));
    }

    #[test]
    fn full_budget_admits_one_oversized_file_and_pays_it_back() {
        let t0 = Instant::now();
        let mut b = ByteBudget::new(1000, t0);
        assert!(b.try_take(2500, t0), "a full bucket admits a big file");
        // 1500 bytes of debt: 2 s later the bucket holds 500.
        assert!(!b.try_take(600, t0 + Duration::from_secs(2)));
        assert!(b.try_take(500, t0 + Duration::from_secs(2)));
    }

    #[test]
    fn hex_is_lowercase_and_padded() {
        assert_eq!(hex(&[0x00, 0x0f, 0xa0, 0xff]), "000fa0ff");
    }
}
