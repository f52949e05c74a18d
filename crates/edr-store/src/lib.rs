//! Batch files on disk: writing (streamed, atomic), indexing, retention and
//! reading.
//!
//! Layout: `<data_dir>/events/YYYY-MM-DD/<start>-<seq>.json.gz`, one JSON
//! event per line (NDJSON), gzip-compressed by default, zstd-compressed
//! (`.json.zst`) if configured, plain (`.json`) if `compress_events` is off.
//! Every reader here handles all three, by file name.
//!
//! `<seq>` is the batch's sequence number: persistent and strictly
//! increasing across restarts, clock steps and retention (the high-water
//! mark is kept in `<data_dir>/batch.seq` before any batch is deleted), so
//! a sink can keep its place by it ([`sink`]). The index is ordered by it.
//!
//! A batch is streamed into a hidden temporary file
//! (`.<name>.tmp`) as its events arrive, so a full batch never sits
//! uncompressed in memory; it becomes visible only through `rename` after
//! `fsync`, so a reader never sees a partial file. Temporaries left by a
//! crash are never counted as data and are removed at the next start.

pub mod query;
pub mod sink;
pub mod writer;

use std::collections::VecDeque;
use std::fs::{self, File, OpenOptions};
use std::io::{self, BufRead, BufReader, BufWriter, Read, Write};
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime};

use flate2::read::MultiGzDecoder;
use flate2::write::GzEncoder;
use zstd::stream::read::Decoder as ZstdDecoder;
use zstd::stream::write::Encoder as ZstdEncoder;

use edr_model::event::Timestamp;

/// Subdirectory of the data dir holding batch files.
pub const EVENTS_DIR: &str = "events";
/// File in the data dir holding the highest batch sequence ever used.
pub const SEQ_FILE: &str = "batch.seq";
const TMP_SUFFIX: &str = ".tmp";

/// Errors of the storage layer. Each names the path involved.
#[derive(Debug, thiserror::Error)]
pub enum StorageError {
    #[error("cannot create directory {}: {source}", path.display())]
    CreateDir {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error("cannot write batch file {}: {source}", path.display())]
    Write {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error("cannot read {}: {source}", path.display())]
    Read {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
}

impl StorageError {
    /// Whether the failure is the disk being full (or over quota).
    pub fn is_disk_full(&self) -> bool {
        let source = match self {
            StorageError::CreateDir { source, .. }
            | StorageError::Write { source, .. }
            | StorageError::Read { source, .. } => source,
        };
        matches!(
            source.raw_os_error(),
            Some(libc::ENOSPC) | Some(libc::EDQUOT)
        )
    }
}

/// How batch files are encoded.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Codec {
    /// Plain NDJSON (`.json`).
    None,
    /// Gzip NDJSON (`.json.gz`) at the given level (1..=9).
    Gzip { level: u32 },
    /// Zstandard NDJSON (`.json.zst`) at the given level (1..=19).
    Zstd { level: u32 },
}

/// Zstd's match window, as a power of two. Its default at level 3 (2 MiB)
/// would keep megabytes of window and tables per open batch; event lines
/// repeat within a few KiB, so 128 KiB loses almost nothing in ratio.
const ZSTD_WINDOW_LOG: u32 = 17;

impl Codec {
    pub fn extension(self) -> &'static str {
        match self {
            Codec::None => ".json",
            Codec::Gzip { .. } => ".json.gz",
            Codec::Zstd { .. } => ".json.zst",
        }
    }

    /// The codec of a batch file, from its name; None for anything else.
    pub fn of_path(path: &Path) -> Option<Codec> {
        let name = path.file_name()?.to_str()?;
        if name.starts_with('.') {
            return None;
        }
        if name.ends_with(".json.gz") {
            Some(Codec::Gzip { level: 6 })
        } else if name.ends_with(".json.zst") {
            Some(Codec::Zstd { level: 3 })
        } else if name.ends_with(".json") {
            Some(Codec::None)
        } else {
            None
        }
    }
}

/// Creates a directory (and parents) readable only by its owner.
pub fn create_private_dir(path: &Path) -> Result<(), StorageError> {
    fs::DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(path)
        .map_err(|source| StorageError::CreateDir {
            path: path.to_path_buf(),
            source,
        })?;
    // `mode` is filtered by the umask and ignored for existing directories.
    fs::set_permissions(path, fs::Permissions::from_mode(0o700)).map_err(|source| {
        StorageError::CreateDir {
            path: path.to_path_buf(),
            source,
        }
    })
}

/// A batch file on disk.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StoredFile {
    pub path: PathBuf,
    pub size: u64,
    /// When the batch started (from its name), for age-based retention.
    pub started: Timestamp,
    /// The batch's sequence number (from its name; 0 if it has none).
    pub seq: u64,
}

enum Encoder {
    Plain(BufWriter<File>),
    // Boxed: the encoder's state is large and only one batch is open.
    Gzip(Box<GzEncoder<BufWriter<File>>>),
    Zstd(Box<ZstdEncoder<'static, BufWriter<File>>>),
}

/// Where a batch's lines go: a small staging buffer, handed to the encoder
/// in large pieces (one encoder call per ~32 KiB, not two per event), then
/// the encoder, then the file.
struct Sink {
    stage: Vec<u8>,
    encoder: Encoder,
}

/// Lines collected before they are handed to the encoder.
const STAGE_BYTES: usize = 32 * 1024;
/// Bytes collected before a write to the batch file: compressed output
/// comes in small pieces, and one syscall per piece would dominate.
const FILE_BUFFER: usize = 64 * 1024;

impl Sink {
    fn new(file: File, codec: Codec) -> io::Result<Sink> {
        let buffered = BufWriter::with_capacity(FILE_BUFFER, file);
        let encoder = match codec {
            Codec::None => Encoder::Plain(buffered),
            Codec::Gzip { level } => Encoder::Gzip(Box::new(GzEncoder::new(
                buffered,
                flate2::Compression::new(level.clamp(1, 9)),
            ))),
            Codec::Zstd { level } => {
                let level = i32::try_from(level.clamp(1, 19)).unwrap_or(3);
                let mut z = ZstdEncoder::new(buffered, level)?;
                z.window_log(ZSTD_WINDOW_LOG)?;
                Encoder::Zstd(Box::new(z))
            }
        };
        Ok(Sink {
            stage: Vec::with_capacity(STAGE_BYTES + 4096),
            encoder,
        })
    }

    fn encoder(&mut self) -> &mut dyn Write {
        match &mut self.encoder {
            Encoder::Plain(w) => w,
            Encoder::Gzip(w) => w.as_mut(),
            Encoder::Zstd(w) => w.as_mut(),
        }
    }

    fn write_line(&mut self, line: &[u8]) -> io::Result<()> {
        self.stage.extend_from_slice(line);
        self.stage.push(b'\n');
        if self.stage.len() >= STAGE_BYTES {
            self.hand_over()?;
        }
        Ok(())
    }

    fn hand_over(&mut self) -> io::Result<()> {
        let stage = std::mem::take(&mut self.stage);
        let r = self.encoder().write_all(&stage);
        self.stage = stage;
        self.stage.clear();
        r
    }

    /// Ends the encoding and returns the file, all bytes handed to it.
    fn finish(mut self) -> io::Result<File> {
        self.hand_over()?;
        let buffered = match self.encoder {
            Encoder::Plain(w) => w,
            Encoder::Gzip(w) => w.finish()?,
            Encoder::Zstd(w) => w.finish()?,
        };
        buffered.into_inner().map_err(|e| e.into_error())
    }
}

/// A batch being written: events stream through the encoder into a hidden
/// temporary file.
pub struct OpenBatch {
    sink: Sink,
    tmp_path: PathBuf,
    final_path: PathBuf,
    pub started: Timestamp,
    /// The sequence number this batch will have once committed.
    pub seq: u64,
    pub events: u32,
    pub raw_bytes: u64,
}

impl OpenBatch {
    /// Appends one serialized event (without its newline).
    pub fn append(&mut self, line: &[u8]) -> Result<(), StorageError> {
        self.sink
            .write_line(line)
            .map_err(|source| StorageError::Write {
                path: self.tmp_path.clone(),
                source,
            })?;
        self.events += 1;
        self.raw_bytes += line.len() as u64 + 1;
        Ok(())
    }

    /// Finishes the encoding, makes the file durable and visible. Returns
    /// the stored file. On error the temporary file is removed.
    pub fn commit(self) -> Result<StoredFile, StorageError> {
        let tmp = self.tmp_path.clone();
        let result = self.commit_inner();
        if result.is_err() {
            let _ = fs::remove_file(&tmp);
        }
        result
    }

    fn commit_inner(self) -> Result<StoredFile, StorageError> {
        let werr = |path: &Path| {
            let path = path.to_path_buf();
            move |source| StorageError::Write { path, source }
        };
        let file = self.sink.finish().map_err(werr(&self.tmp_path))?;
        file.sync_all().map_err(werr(&self.tmp_path))?;
        let size = file.metadata().map_err(werr(&self.tmp_path))?.len();
        drop(file);
        fs::rename(&self.tmp_path, &self.final_path).map_err(werr(&self.final_path))?;
        // Make the rename itself durable.
        if let Some(dir) = self.final_path.parent() {
            if let Ok(d) = File::open(dir) {
                let _ = d.sync_all();
            }
        }
        Ok(StoredFile {
            path: self.final_path,
            size,
            started: self.started,
            seq: self.seq,
        })
    }

    /// Drops the batch and its temporary file (used when a write failed).
    pub fn abandon(self) {
        let _ = fs::remove_file(&self.tmp_path);
    }
}

/// The batch files of one data dir, oldest first, with their total size.
#[derive(Debug)]
pub struct Store {
    events_dir: PathBuf,
    seq_file: PathBuf,
    files: VecDeque<StoredFile>,
    total_bytes: u64,
    /// The last sequence number handed out.
    seq: u64,
    /// What `batch.seq` says (or was last written with).
    seq_persisted: u64,
    /// Temporary files removed at open (left by a crash).
    pub removed_temporaries: usize,
}

impl Store {
    /// Opens (creating if needed) the event store under `data_dir`, removes
    /// leftover temporaries and indexes existing batches.
    pub fn open(data_dir: &Path) -> Result<Store, StorageError> {
        create_private_dir(data_dir)?;
        let events_dir = data_dir.join(EVENTS_DIR);
        create_private_dir(&events_dir)?;
        let seq_file = data_dir.join(SEQ_FILE);
        let seq_persisted = read_seq_file(&seq_file);
        let mut store = Store {
            events_dir,
            seq_file,
            files: VecDeque::new(),
            total_bytes: 0,
            seq: seq_persisted,
            seq_persisted,
            removed_temporaries: 0,
        };
        store.rescan()?;
        Ok(store)
    }

    /// The sequence number of the last batch opened (0: none yet, ever).
    pub fn last_seq(&self) -> u64 {
        self.seq
    }

    /// The committed batches, in sequence order.
    pub fn files(&self) -> impl Iterator<Item = &StoredFile> {
        self.files.iter()
    }

    /// Writes the sequence high-water mark before a batch is deleted, so
    /// the numbers never repeat even when retention empties the store.
    fn persist_seq(&mut self) -> Result<(), StorageError> {
        if self.seq_persisted >= self.seq {
            return Ok(());
        }
        let werr = |path: &Path| {
            let path = path.to_path_buf();
            move |source| StorageError::Write { path, source }
        };
        let tmp = self
            .seq_file
            .with_file_name(format!(".{SEQ_FILE}{TMP_SUFFIX}"));
        let mut f = OpenOptions::new()
            .write(true)
            .create(true)
            .truncate(true)
            .mode(0o600)
            .open(&tmp)
            .map_err(werr(&tmp))?;
        writeln!(f, "{}", self.seq).map_err(werr(&tmp))?;
        f.sync_all().map_err(werr(&tmp))?;
        drop(f);
        fs::rename(&tmp, &self.seq_file).map_err(werr(&self.seq_file))?;
        self.seq_persisted = self.seq;
        Ok(())
    }

    /// Rebuilds the index from disk (also removes temporaries).
    pub fn rescan(&mut self) -> Result<(), StorageError> {
        let mut files = Vec::new();
        let mut removed = 0;
        for day in read_dir_sorted(&self.events_dir)? {
            if !day.is_dir() {
                continue;
            }
            for path in read_dir_sorted(&day)? {
                let name = path
                    .file_name()
                    .map(|n| n.to_string_lossy().into_owned())
                    .unwrap_or_default();
                if name.starts_with('.') && name.ends_with(TMP_SUFFIX) {
                    if fs::remove_file(&path).is_ok() {
                        removed += 1;
                    }
                    continue;
                }
                if Codec::of_path(&path).is_none() {
                    continue;
                }
                let Ok(meta) = fs::metadata(&path) else {
                    continue;
                };
                files.push(StoredFile {
                    started: started_from_name(&name).unwrap_or_else(|| {
                        meta.modified().map(Timestamp::from).unwrap_or_default()
                    }),
                    seq: seq_from_name(&name).unwrap_or(0),
                    path,
                    size: meta.len(),
                });
            }
        }
        // Sequence order is commit order, whatever the clock did; names
        // break ties (files of older versions, whose numbers restarted).
        files.sort_by(|a, b| (a.seq, a.path.file_name()).cmp(&(b.seq, b.path.file_name())));
        if let Some(max) = files.iter().map(|f| f.seq).max() {
            self.seq = self.seq.max(max);
        }
        self.total_bytes = files.iter().map(|f| f.size).sum();
        self.files = files.into();
        self.removed_temporaries += removed;
        Ok(())
    }

    pub fn total_bytes(&self) -> u64 {
        self.total_bytes
    }

    pub fn file_count(&self) -> usize {
        self.files.len()
    }

    pub fn events_dir(&self) -> &Path {
        &self.events_dir
    }

    /// Starts a new batch file (a hidden temporary until committed).
    pub fn open_batch(
        &mut self,
        started: Timestamp,
        codec: Codec,
    ) -> Result<OpenBatch, StorageError> {
        let seq = self.seq + 1;
        self.open_batch_numbered(started, seq, codec)
    }

    /// Starts a batch file with a sequence number chosen by the caller: a
    /// copy of another store's batch under its own number (the central
    /// copy `edr-agent collect` keeps). The caller makes sure the number is
    /// not in use; later [`Store::open_batch`] numbers continue above it.
    pub fn open_batch_numbered(
        &mut self,
        started: Timestamp,
        seq: u64,
        codec: Codec,
    ) -> Result<OpenBatch, StorageError> {
        let day_dir = self.events_dir.join(started.day());
        if !day_dir.is_dir() {
            create_private_dir(&day_dir)?;
            // The new day directory's own entry must be durable too, or a
            // crash could lose the batch committed into it.
            if let Ok(d) = File::open(&self.events_dir) {
                let _ = d.sync_all();
            }
        }
        self.seq = self.seq.max(seq);
        let name = format!("{}-{:06}{}", started.compact(), seq, codec.extension());
        let final_path = day_dir.join(&name);
        let tmp_path = day_dir.join(format!(".{name}{TMP_SUFFIX}"));
        let werr = |source| StorageError::Write {
            path: tmp_path.clone(),
            source,
        };
        let file = OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(0o600)
            .open(&tmp_path)
            .map_err(werr)?;
        let sink = Sink::new(file, codec).map_err(|e| {
            let _ = fs::remove_file(&tmp_path);
            werr(e)
        })?;
        Ok(OpenBatch {
            sink,
            tmp_path,
            final_path,
            started,
            seq,
            events: 0,
            raw_bytes: 0,
        })
    }

    /// Records a committed batch in the index.
    pub fn add(&mut self, file: StoredFile) {
        self.total_bytes += file.size;
        self.files.push_back(file);
    }

    /// Deletes batches older than `retention`, then the oldest until the
    /// total is within `max_bytes`, but none from sequence `keep_from` on
    /// (what a sink still needs; `u64::MAX`: nothing is held). Returns how
    /// many files were deleted. A file that cannot be deleted stays indexed
    /// and is retried later.
    pub fn enforce_retention(
        &mut self,
        now: Timestamp,
        retention: Duration,
        max_bytes: u64,
        keep_from: u64,
    ) -> usize {
        let retention_ms = u64::try_from(retention.as_millis()).unwrap_or(u64::MAX);
        let cutoff = now.as_millis().saturating_sub(retention_ms);
        let mut deleted = 0;
        while let Some(oldest) = self.files.front() {
            let too_old = oldest.started.as_millis() < cutoff;
            let over_cap = self.total_bytes > max_bytes;
            if (!too_old && !over_cap) || oldest.seq >= keep_from {
                break;
            }
            if let Err(e) = self.persist_seq() {
                // Deleting now could let a restart hand out a number a
                // sink has already seen; keep the data instead.
                tracing::warn!(error = %e, "cannot record the batch sequence; retention waits");
                break;
            }
            let Some(f) = self.files.pop_front() else {
                break;
            };
            match fs::remove_file(&f.path) {
                Ok(()) => {}
                Err(e) if e.kind() == io::ErrorKind::NotFound => {}
                Err(e) => {
                    tracing::warn!(path = %f.path.display(), error = %e, "retention could not delete batch file");
                    self.files.push_front(f);
                    break;
                }
            }
            self.total_bytes = self.total_bytes.saturating_sub(f.size);
            deleted += 1;
            if let Some(dir) = f.path.parent() {
                // Only succeeds once the day directory is empty.
                let _ = fs::remove_dir(dir);
            }
        }
        deleted
    }

    /// The hard cap on what sinks hold: while the batches from `keep_from`
    /// on (not yet done with by a sink, kept past retention) total more
    /// than `max_held_bytes`, the oldest of them is deleted. Returns how
    /// many were: each is a gap in what the sinks deliver.
    pub fn enforce_held_cap(&mut self, keep_from: u64, max_held_bytes: u64) -> usize {
        let mut held: u64 = self
            .files
            .iter()
            .filter(|f| f.seq >= keep_from)
            .map(|f| f.size)
            .sum();
        let mut deleted = 0;
        while held > max_held_bytes {
            let Some(i) = self.files.iter().position(|f| f.seq >= keep_from) else {
                break;
            };
            if let Err(e) = self.persist_seq() {
                tracing::warn!(error = %e, "cannot record the batch sequence; the unshipped cap waits");
                break;
            }
            let Some(f) = self.files.remove(i) else {
                break;
            };
            match fs::remove_file(&f.path) {
                Ok(()) => {}
                Err(e) if e.kind() == io::ErrorKind::NotFound => {}
                Err(e) => {
                    tracing::warn!(path = %f.path.display(), error = %e, "cannot delete an unshipped batch over the cap");
                    self.files.insert(i, f);
                    break;
                }
            }
            tracing::warn!(
                seq = f.seq,
                bytes = f.size,
                "unshipped data over its cap: oldest unshipped batch deleted (a gap)"
            );
            held = held.saturating_sub(f.size);
            self.total_bytes = self.total_bytes.saturating_sub(f.size);
            deleted += 1;
            if let Some(dir) = f.path.parent() {
                let _ = fs::remove_dir(dir);
            }
        }
        deleted
    }
}

fn read_dir_sorted(dir: &Path) -> Result<Vec<PathBuf>, StorageError> {
    let rd = match fs::read_dir(dir) {
        Ok(rd) => rd,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(Vec::new()),
        Err(source) => {
            return Err(StorageError::Read {
                path: dir.to_path_buf(),
                source,
            })
        }
    };
    let mut out: Vec<PathBuf> = rd.filter_map(|e| e.ok().map(|e| e.path())).collect();
    out.sort();
    Ok(out)
}

/// Parses the start time from `YYYYMMDDTHHMMSSmmmZ-<seq>.json[.gz]`.
pub fn started_from_name(name: &str) -> Option<Timestamp> {
    let stamp = name.get(..19)?;
    let b = stamp.as_bytes();
    if b[8] != b'T' || b[18] != b'Z' {
        return None;
    }
    let num = |r: std::ops::Range<usize>| -> Option<u64> { stamp.get(r)?.parse().ok() };
    let (y, mo, d) = (num(0..4)?, num(4..6)?, num(6..8)?);
    let (h, mi, s, ms) = (num(9..11)?, num(11..13)?, num(13..15)?, num(15..18)?);
    let days = days_from_civil(y as i64, mo as u32, d as u32)?;
    let secs = days.checked_mul(86_400)? + h * 3600 + mi * 60 + s;
    Some(Timestamp(secs * 1000 + ms))
}

/// Parses the sequence number from `YYYYMMDDTHHMMSSmmmZ-<seq>.json[.gz]`.
pub fn seq_from_name(name: &str) -> Option<u64> {
    let rest = name.get(19..)?.strip_prefix('-')?;
    let digits = rest.split('.').next()?;
    if digits.is_empty() || !digits.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    digits.parse().ok()
}

/// The sequence high-water mark of a data dir (0 if never written). A
/// damaged or unreadable file is reported and ignored: the batch names
/// still give the highest number in use, and refusing to start would lose
/// every event from now on.
fn read_seq_file(path: &Path) -> u64 {
    match fs::read_to_string(path) {
        Ok(s) => s.trim().parse().unwrap_or_else(|e| {
            tracing::warn!(path = %path.display(), error = %e, "batch sequence file is damaged; continuing from the batch names");
            0
        }),
        Err(e) if e.kind() == io::ErrorKind::NotFound => 0,
        Err(e) => {
            tracing::warn!(path = %path.display(), error = %e, "cannot read the batch sequence file; continuing from the batch names");
            0
        }
    }
}

/// Inverse of the civil-from-days conversion in `event.rs`.
fn days_from_civil(y: i64, m: u32, d: u32) -> Option<u64> {
    if !(1..=12).contains(&m) || !(1..=31).contains(&d) {
        return None;
    }
    let y = if m <= 2 { y - 1 } else { y };
    let era = if y >= 0 { y } else { y - 399 } / 400;
    let yoe = (y - era * 400) as u64;
    let mp = if m > 2 { m - 3 } else { m + 9 } as u64;
    let doy = (153 * mp + 2) / 5 + u64::from(d) - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    let days = era * 146_097 + doe as i64 - 719_468;
    u64::try_from(days).ok()
}

/// All batch files under a data dir, oldest first (by name).
pub fn list_batches(data_dir: &Path) -> Result<Vec<PathBuf>, StorageError> {
    let events_dir = data_dir.join(EVENTS_DIR);
    let mut out = Vec::new();
    for day in read_dir_sorted(&events_dir)? {
        if day.is_dir() {
            out.extend(
                read_dir_sorted(&day)?
                    .into_iter()
                    .filter(|p| Codec::of_path(p).is_some()),
            );
        }
    }
    out.sort_by(|a, b| a.file_name().cmp(&b.file_name()));
    Ok(out)
}

/// Opens a batch file for reading its NDJSON lines, decompressing as needed.
pub fn open_batch_reader(path: &Path) -> Result<Box<dyn BufRead>, StorageError> {
    let file = File::open(path).map_err(|source| StorageError::Read {
        path: path.to_path_buf(),
        source,
    })?;
    let reader: Box<dyn Read> = match Codec::of_path(path) {
        Some(Codec::Gzip { .. }) => Box::new(MultiGzDecoder::new(file)),
        Some(Codec::Zstd { .. }) => {
            Box::new(ZstdDecoder::new(file).map_err(|source| StorageError::Read {
                path: path.to_path_buf(),
                source,
            })?)
        }
        _ => Box::new(file),
    };
    Ok(Box::new(BufReader::with_capacity(64 * 1024, reader)))
}

/// Size facts of one batch file, read by decompressing it.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct BatchStats {
    pub stored_bytes: u64,
    pub raw_bytes: u64,
    pub events: u64,
}

/// Decompresses a batch, counting raw bytes and events, without parsing.
/// A corrupt or truncated file is an error (callers skip it and warn).
pub fn batch_stats(path: &Path) -> Result<BatchStats, StorageError> {
    let rerr = |source| StorageError::Read {
        path: path.to_path_buf(),
        source,
    };
    let stored_bytes = fs::metadata(path).map_err(rerr)?.len();
    let mut reader = open_batch_reader(path)?;
    let mut stats = BatchStats {
        stored_bytes,
        ..BatchStats::default()
    };
    let mut last = b'\n';
    loop {
        let buf = reader.fill_buf().map_err(rerr)?;
        if buf.is_empty() {
            break;
        }
        stats.raw_bytes += buf.len() as u64;
        stats.events += buf.iter().filter(|b| **b == b'\n').count() as u64;
        last = buf[buf.len() - 1];
        let n = buf.len();
        reader.consume(n);
    }
    if last != b'\n' {
        // A final event without its newline still counts.
        stats.events += 1;
    }
    Ok(stats)
}

/// Age of a file's start, for display.
pub fn age(started: Timestamp, now: SystemTime) -> Duration {
    now.duration_since(SystemTime::from(started))
        .unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_round_trip_their_start_time() {
        let t = Timestamp(1_795_636_035_123);
        let name = format!("{}-000001.json.gz", t.compact());
        assert_eq!(started_from_name(&name), Some(t));
        assert_eq!(started_from_name("junk.json.gz"), None);
    }

    #[test]
    fn committed_batches_are_private_complete_and_indexed() {
        let dir = tempfile::tempdir().expect("tempdir");
        let mut store = Store::open(dir.path()).expect("open");
        let mut b = store
            .open_batch(Timestamp::now(), Codec::Gzip { level: 6 })
            .expect("batch");
        b.append(br#"{"a":1}"#).expect("append");
        b.append(br#"{"a":2}"#).expect("append");
        // Invisible to readers until committed.
        assert!(list_batches(dir.path()).expect("list").is_empty());
        let f = b.commit().expect("commit");
        store.add(f.clone());
        let mode = fs::metadata(&f.path).expect("meta").permissions().mode();
        assert_eq!(mode & 0o777, 0o600);
        let dmode = fs::metadata(dir.path().join(EVENTS_DIR))
            .expect("meta")
            .permissions()
            .mode();
        assert_eq!(dmode & 0o777, 0o700);
        let stats = batch_stats(&f.path).expect("stats");
        assert_eq!(stats.events, 2);
        assert_eq!(stats.raw_bytes, 16);
        assert_eq!(list_batches(dir.path()).expect("list"), vec![f.path]);
    }

    #[test]
    fn leftover_temporaries_are_removed_and_not_counted() {
        let dir = tempfile::tempdir().expect("tempdir");
        let mut store = Store::open(dir.path()).expect("open");
        let mut b = store
            .open_batch(Timestamp::now(), Codec::None)
            .expect("batch");
        b.append(b"{}").expect("append");
        // Simulate a crash: the batch is never committed.
        std::mem::forget(b);
        let store = Store::open(dir.path()).expect("reopen");
        assert_eq!(store.removed_temporaries, 1);
        assert_eq!(store.file_count(), 0);
        assert_eq!(store.total_bytes(), 0);
    }

    #[test]
    fn retention_removes_old_then_oversize() {
        let dir = tempfile::tempdir().expect("tempdir");
        let mut store = Store::open(dir.path()).expect("open");
        let day = 86_400_000;
        let now = Timestamp::now();
        for age_days in [10u64, 5, 1, 0] {
            let mut b = store
                .open_batch(Timestamp(now.0 - age_days * day), Codec::None)
                .expect("batch");
            b.append(&[b'x'; 99]).expect("append");
            let f = b.commit().expect("commit");
            store.add(f);
        }
        assert_eq!(store.total_bytes(), 400);
        // 7 days: the 10-day-old file goes.
        assert_eq!(
            store.enforce_retention(now, Duration::from_secs(7 * 86_400), u64::MAX, u64::MAX),
            1
        );
        // Cap of 150 bytes: the two oldest remaining go.
        assert_eq!(
            store.enforce_retention(now, Duration::from_secs(7 * 86_400), 150, u64::MAX),
            2
        );
        assert_eq!(store.total_bytes(), 100);
        assert_eq!(list_batches(dir.path()).expect("list").len(), 1);
    }

    #[test]
    fn every_codec_round_trips_through_the_readers() {
        let dir = tempfile::tempdir().expect("tempdir");
        let mut store = Store::open(dir.path()).expect("open");
        let lines: Vec<String> = (0..500)
            .map(|i| format!("{{\"event\":{{\"action\":\"file-modified\"}},\"i\":{i}}}"))
            .collect();
        let raw: u64 = lines.iter().map(|l| l.len() as u64 + 1).sum();
        for codec in [
            Codec::None,
            Codec::Gzip { level: 1 },
            Codec::Zstd { level: 3 },
            Codec::Zstd { level: 19 },
        ] {
            let mut b = store.open_batch(Timestamp::now(), codec).expect("batch");
            for l in &lines {
                b.append(l.as_bytes()).expect("append");
            }
            let f = b.commit().expect("commit");
            assert!(f.path.to_string_lossy().ends_with(codec.extension()));
            assert_eq!(
                Codec::of_path(&f.path).map(|c| c.extension()),
                Some(codec.extension())
            );
            let stats = batch_stats(&f.path).expect("stats");
            assert_eq!((stats.events, stats.raw_bytes), (500, raw), "{codec:?}");
            if codec != Codec::None {
                assert!(stats.stored_bytes * 5 < raw, "{codec:?} compresses");
            }
            let back: Vec<String> = open_batch_reader(&f.path)
                .expect("reader")
                .lines()
                .collect::<Result<_, _>>()
                .expect("lines");
            assert_eq!(back, lines, "{codec:?}");
        }
        assert_eq!(list_batches(dir.path()).expect("list").len(), 4);
    }

    #[test]
    fn truncated_batches_are_an_error_not_a_panic() {
        for codec in [Codec::Gzip { level: 6 }, Codec::Zstd { level: 3 }] {
            let dir = tempfile::tempdir().expect("tempdir");
            let mut store = Store::open(dir.path()).expect("open");
            let mut b = store.open_batch(Timestamp::now(), codec).expect("batch");
            for i in 0..1000 {
                b.append(format!("{{\"i\":{i}}}").as_bytes())
                    .expect("append");
            }
            let f = b.commit().expect("commit");
            let bytes = fs::read(&f.path).expect("read");
            fs::write(&f.path, &bytes[..bytes.len() / 2]).expect("truncate");
            assert!(batch_stats(&f.path).is_err(), "{codec:?}");
        }
    }

    fn commit_one(store: &mut Store, started: Timestamp) -> StoredFile {
        let mut b = store.open_batch(started, Codec::None).expect("batch");
        b.append(&[b'x'; 99]).expect("append");
        let f = b.commit().expect("commit");
        store.add(f.clone());
        f
    }

    #[test]
    fn sequence_numbers_survive_restarts_clock_steps_and_retention() {
        let dir = tempfile::tempdir().expect("tempdir");
        let now = Timestamp::now();
        let mut store = Store::open(dir.path()).expect("open");
        let first = commit_one(&mut store, now);
        assert_eq!(first.seq, 1);
        drop(store);
        // A restart continues the numbering; a clock stepped back a day
        // still gets the next number and sorts after, by sequence.
        let mut store = Store::open(dir.path()).expect("reopen");
        let stepped = commit_one(&mut store, Timestamp(now.0 - 86_400_000));
        assert_eq!(stepped.seq, 2);
        let order: Vec<u64> = store.files().map(|f| f.seq).collect();
        assert_eq!(order, [1, 2]);
        // Retention empties the store; the numbers still never repeat.
        assert_eq!(store.enforce_retention(now, Duration::ZERO, 0, u64::MAX), 2);
        assert_eq!(store.file_count(), 0);
        drop(store);
        let mut store = Store::open(dir.path()).expect("reopen");
        assert_eq!(store.last_seq(), 2);
        assert_eq!(commit_one(&mut store, now).seq, 3);
        let mode = fs::metadata(dir.path().join(SEQ_FILE))
            .expect("seq file")
            .permissions()
            .mode();
        assert_eq!(mode & 0o777, 0o600);
    }

    #[test]
    fn a_damaged_sequence_file_falls_back_to_the_batch_names() {
        let dir = tempfile::tempdir().expect("tempdir");
        let mut store = Store::open(dir.path()).expect("open");
        for _ in 0..3 {
            commit_one(&mut store, Timestamp::now());
        }
        drop(store);
        fs::write(dir.path().join(SEQ_FILE), b"\xff garbage").expect("damage");
        let mut store = Store::open(dir.path()).expect("reopen");
        assert_eq!(commit_one(&mut store, Timestamp::now()).seq, 4);
    }

    #[test]
    fn retention_keeps_what_a_sink_still_needs() {
        let dir = tempfile::tempdir().expect("tempdir");
        let mut store = Store::open(dir.path()).expect("open");
        let now = Timestamp::now();
        for _ in 0..4 {
            commit_one(&mut store, now);
        }
        // Over the cap, but a sink needs batch 2 on: only batch 1 may go.
        assert_eq!(store.enforce_retention(now, Duration::MAX, 0, 2), 1);
        let left: Vec<u64> = store.files().map(|f| f.seq).collect();
        assert_eq!(left, [2, 3, 4]);
        // Released: the cap applies again.
        assert_eq!(store.enforce_retention(now, Duration::MAX, 0, u64::MAX), 3);
    }

    #[test]
    fn held_batches_are_capped_oldest_first() {
        let dir = tempfile::tempdir().expect("tempdir");
        let mut store = Store::open(dir.path()).expect("open");
        let now = Timestamp::now();
        for _ in 0..5 {
            commit_one(&mut store, now);
        }
        let size = store.files().next().expect("a file").size;
        // Batch 1 is done with; 2..=5 are held, room for two of them.
        assert_eq!(store.enforce_held_cap(2, 2 * size), 2);
        let left: Vec<u64> = store.files().map(|f| f.seq).collect();
        assert_eq!(left, [1, 4, 5]);
        assert_eq!(list_batches(dir.path()).expect("list").len(), 3);
        assert_eq!(store.total_bytes(), 3 * size);
        // Within the cap: nothing more goes.
        assert_eq!(store.enforce_held_cap(2, 2 * size), 0);
        assert_eq!(store.enforce_held_cap(u64::MAX, 0), 0);
    }

    #[test]
    fn sequence_numbers_parse_from_names() {
        assert_eq!(
            seq_from_name("20261125T194715123Z-000042.json.gz"),
            Some(42)
        );
        assert_eq!(
            seq_from_name("20261125T194715123Z-1234567.json"),
            Some(1_234_567)
        );
        assert_eq!(seq_from_name("20261125T194715123Z.json"), None);
        assert_eq!(seq_from_name("20261125T194715123Z-x1.json"), None);
        assert_eq!(seq_from_name("short"), None);
    }
}
